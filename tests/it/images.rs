//! Followed images against a real registry: Debian's `docker-registry` on
//! loopback (htpasswd login, the daemon reading it from the Docker client
//! config as pulls do), busybox fixture images pushed under one tag, and
//! the daemon as a process with `image_poll_interval: 1s`. A new digest
//! under the tag is deployed with no commit made; a broken one (its
//! healthcheck fails) is rolled back to the previous digest and not tried
//! again on the following polls; a fixed one is deployed.

use std::time::Duration;

use crate::daemon_support::{Bare, Daemon, Options, git};
use crate::docker_support::{Cleanup, Registry, build_busybox, engine, project_name};

const LONG: Duration = Duration::from_secs(120);

/// The repo: one service following `image` by digest; healthy unless the
/// image's `/variant` file says `bad`.
fn files(env: &str, project: &str, image: &str) -> Vec<(&'static str, String)> {
    let manifest = format!(
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health:\n      deadline: 20s\n      settle: 1s\n    drift_interval: 1h\n    image_poll_interval: 1s\n"
    );
    let stack = format!(
        "name: {project}\nservices:\n  web:\n    image: {image}\n    command: [sleep, \"86400\"]\n    stop_signal: SIGKILL\n    labels:\n      driftless.io/image-update: digest\n    healthcheck:\n      test: [\"CMD\", \"sh\", \"-c\", \"test \\\"$$(cat /variant)\\\" != bad\"]\n      interval: 1s\n      retries: 2\n"
    );
    vec![
        ("driftless.yaml", manifest),
        ("environments/values.yaml", "{}\n".to_owned()),
        ("compose/stack.yaml", stack),
    ]
}

/// The digest `repo:tag` names in `registry`, asked over its API with its
/// login (what `docker push` printed).
async fn registry_digest(registry: &Registry, repo: &str, tag: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new()
        .head(format!(
            "http://{}/v2/{repo}/manifests/{tag}",
            registry.address
        ))
        .basic_auth(&registry.user, Some(&registry.password))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The image id of the project's one container.
async fn running_image(
    engine: &driftless::backend::compose::ComposeBackend,
    project: &str,
) -> Vec<String> {
    crate::docker_support::containers(engine, project)
        .await
        .into_iter()
        .map(|c| c.image_id.unwrap_or_default())
        .collect()
}

async fn image_id(docker: &bollard::Docker, reference: &str) -> String {
    docker.inspect_image(reference).await.unwrap().id.unwrap()
}

/// Rows of the environment's history.
fn rows(state: &std::path::Path, env: &str) -> Vec<serde_json::Value> {
    Daemon::history(state, env)["reconciles"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_followed_tag_deploys_new_digests_and_a_rolled_back_digest_stays_rolled_back() {
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    let registry = Registry::start().await;
    let project = project_name("images");
    let env = format!("e{}", project.trim_start_matches("dlt-").replace('_', "-"));
    let repo = format!("{project}/web");
    let local = |v: &str| format!("driftless-test/{project}:{v}");
    let mut cleanup = Cleanup::new(&[&project]);
    for v in ["v1", "v2", "bad", "fixed"] {
        build_busybox(docker, &local(v), v).await;
        cleanup = cleanup.image(&local(v));
    }
    let _cleanup = cleanup;
    let reference = registry.push(docker, &local("v1"), &repo, "stable").await;
    let d1 = registry_digest(&registry, &repo, "stable").await;
    let service = format!("{project}/web");

    let bare = Bare::new(&files(&env, &project, &reference));
    let c1 = git(&bare.path(), &["rev-parse", "main"]);
    let state = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&Options {
        repo: bare.path(),
        env: env.clone(),
        state_dir: state.path().to_owned(),
        secrets_dir: secrets.path().to_owned(),
        poll: "1h",
        watch: true,
        extra: String::new(),
        vars: vec![(
            "DOCKER_CONFIG".into(),
            registry
                .docker_config()
                .parent()
                .unwrap()
                .display()
                .to_string(),
        )],
    });
    d.ready().await;
    let good_digest = |digest: String| {
        let service = service.clone();
        move |s: &serde_json::Value| s["last_good"]["digests"][&service] == digest.as_str()
    };

    // The first check pins the service to the digest its tag names.
    d.wait(&env, "v1 followed by digest", LONG, good_digest(d1.clone()))
        .await;
    let v1 = image_id(docker, &local("v1")).await;
    assert_eq!(running_image(&engine, &project).await, [v1]);

    // A new image under the same tag: deployed within a poll, no commit.
    registry.push(docker, &local("v2"), &repo, "stable").await;
    let d2 = registry_digest(&registry, &repo, "stable").await;
    assert_ne!(d1, d2);
    d.wait(&env, "v2 deployed", LONG, good_digest(d2.clone()))
        .await;
    let v2 = image_id(docker, &local("v2")).await;
    assert_eq!(
        running_image(&engine, &project).await,
        std::slice::from_ref(&v2)
    );
    let h = rows(state.path(), &env);
    let update = h
        .iter()
        .find(|r| r["digests"][&service] == d2.as_str() && r["kind"] == "deploy")
        .unwrap_or_else(|| panic!("no deploy of {d2}: {h:#?}"));
    assert_eq!(update["trigger"], "image", "{update:#}");
    assert_eq!(update["commit"], c1.as_str(), "{update:#}");
    assert!(
        update["diff"].as_str().unwrap().contains(&d2),
        "the plan shows the new digest: {update:#}"
    );

    // A broken image: rolled back to v2's digest, the digest marked failed.
    registry.push(docker, &local("bad"), &repo, "stable").await;
    let bad = registry_digest(&registry, &repo, "stable").await;
    d.wait(&env, "bad digest rolled back", LONG, |s| {
        s["failed_images"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["digest"] == bad.as_str()))
            && s["last_reconcile"]["kind"] == "rollback"
            // The start-first update kept the old replica running: the
            // rollback may find nothing to change.
            && (s["last_reconcile"]["outcome"] == "healthy"
                || s["last_reconcile"]["outcome"] == "unchanged")
    })
    .await;
    assert_eq!(
        running_image(&engine, &project).await,
        std::slice::from_ref(&v2)
    );
    let s = d.status(&env).await.unwrap();
    assert_eq!(s["last_good"]["digests"][&service], d2.as_str(), "{s:#}");
    assert!(
        s["failed_commits"].as_array().unwrap().is_empty(),
        "the commit is not blamed for the image: {s:#}"
    );

    // The next polls keep finding the bad digest and deploy nothing: the
    // registry is asked (the check time moves on), history gains no row.
    let checked = |s: &serde_json::Value| s["images"][0]["checked_at"].as_i64().unwrap_or(0);
    let since = checked(&d.status(&env).await.unwrap());
    d.wait(&env, "three more polls", LONG, |s| {
        checked(s) >= since + 3_000
    })
    .await;
    let h = rows(state.path(), &env);
    let tries = h
        .iter()
        .filter(|r| r["digests"][&service] == bad.as_str() && r["kind"] == "deploy")
        .count();
    assert_eq!(tries, 1, "the failed digest was tried again: {h:#?}");
    assert_eq!(
        running_image(&engine, &project).await,
        std::slice::from_ref(&v2)
    );
    let s = d.status(&env).await.unwrap();
    assert_eq!(s["images"][0]["newest"], bad.as_str(), "{s:#}");
    assert_eq!(s["images"][0]["running"], d2.as_str(), "{s:#}");
    assert_eq!(s["images"][0]["policy"], "digest", "{s:#}");
    assert_eq!(s["images"][0]["failed"][0], bad.as_str(), "{s:#}");

    // A fixed image under the tag: deployed.
    registry
        .push(docker, &local("fixed"), &repo, "stable")
        .await;
    let fixed = registry_digest(&registry, &repo, "stable").await;
    d.wait(&env, "fixed deployed", LONG, good_digest(fixed.clone()))
        .await;
    let fixed_id = image_id(docker, &local("fixed")).await;
    assert_eq!(running_image(&engine, &project).await, [fixed_id]);

    // No commit was made for any of it; every row ran c1.
    assert_eq!(git(&bare.path(), &["rev-parse", "main"]), c1);
    for r in rows(state.path(), &env) {
        assert_eq!(r["commit"], c1.as_str(), "{r:#}");
    }
    // The API shows the followed service.
    let answer = d
        .client()
        .get(d.url(&format!("/api/v1/environments/{env}")))
        .send()
        .await
        .unwrap();
    let v1_status: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    let img = &v1_status["images"][0];
    assert_eq!(img["service"], service.as_str(), "{v1_status:#}");
    assert_eq!(img["reference"], reference.as_str(), "{v1_status:#}");
    assert_eq!(img["running"], fixed.as_str(), "{v1_status:#}");
    assert!(img["error"].is_null(), "{v1_status:#}");
    // Each digest was news once; the other checks found nothing new.
    let metrics = d.client().get(d.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let new = format!("driftless_image_checks_total{{env=\"{env}\",outcome=\"new\"}} 4\n");
    assert!(metrics.contains(&new), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "driftless_image_checks_total{{env=\"{env}\",outcome=\"unchanged\"}}"
        )),
        "{metrics}"
    );
    for digest in [&d1, &d2, &bad, &fixed] {
        let _ = docker
            .remove_image(
                &format!("{}/{repo}@{digest}", registry.address),
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
}
