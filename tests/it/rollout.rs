//! Zero-downtime updates against the real engine: two httpd replicas
//! behind their service alias, a client container on the same network
//! requesting it in a bounded loop (about 20 a second) while the image
//! changes, and the failed requests counted from the client's log.

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::query_parameters::LogsOptionsBuilder;
use driftless::backend::Backend;
use driftless::backend::compose::{ComposeBackend, labels};
use driftless::manifest::Allow;
use driftless::model::compose::{Dependency, DependencyCondition, Healthcheck, Project, Service};
use driftless::plan::Action;
use driftless::secrets::Masker;
use futures_util::StreamExt;

use crate::compose_backend::{ctx, desired, dry_run, reconcile};
use crate::compose_build::image_id;
use crate::docker_support::{
    BUSYBOX, BUSYBOX_2, Cleanup, containers, engine, force_remove, project_name,
};

/// httpd serving `/` (the image's `/variant` file says which image
/// answers), healthy once it answers itself.
pub(crate) fn web(image: &str) -> Service {
    Service {
        image: image.into(),
        command: Some(
            ["httpd", "-f", "-p", "80", "-h", "/"]
                .map(String::from)
                .to_vec(),
        ),
        healthcheck: Some(Healthcheck {
            test: vec![
                "CMD-SHELL".into(),
                "wget -q -O- http://127.0.0.1/variant >/dev/null".into(),
            ],
            interval: Some(Duration::from_millis(300)),
            timeout: Some(Duration::from_secs(2)),
            retries: Some(3),
            start_period: None,
            start_interval: None,
            disable: false,
        }),
        // PID 1 ignores SIGTERM: keep the stop wait short.
        stop_grace_period: Some(Duration::from_secs(1)),
        replicas: 2,
        ..Service::default()
    }
}

/// One line per request to `web`: the variant that answered, or `FAIL`
/// (no `wget -T`: this busybox build crashes with it; `timeout` makes a
/// request that hangs — sent to a container cut off mid-request — count
/// as failed instead of stalling the loop).
/// Bounded: at most 3,000 requests (2.5 minutes).
fn client() -> Service {
    let script = "i=0; while [ $i -lt 3000 ]; do \
                  if v=$(busybox timeout 5 wget -q -O- http://web/variant); then echo \"ok $v\"; \
                  else echo FAIL; fi; i=$((i+1)); sleep 0.05; done";
    Service {
        image: BUSYBOX.into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        depends_on: [(
            "web".to_owned(),
            Dependency {
                condition: DependencyCondition::ServiceHealthy,
                restart: false,
                required: true,
            },
        )]
        .into(),
        stop_grace_period: Some(Duration::from_secs(1)),
        replicas: 1,
        ..Service::default()
    }
}

fn project(name: &str, web: Service) -> Project {
    Project {
        name: name.into(),
        services: [("web".to_owned(), web), ("client".to_owned(), client())].into(),
        networks: BTreeMap::new(),
        volumes: BTreeMap::new(),
        disabled_services: Default::default(),
        origin: Default::default(),
    }
}

/// The client's answers so far.
async fn answers(b: &ComposeBackend, project: &str) -> Vec<String> {
    let options = LogsOptionsBuilder::default().stdout(true).build();
    let mut stream = b
        .docker()
        .logs(&format!("{project}-client-1"), Some(options));
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&chunk.expect("client logs").to_string());
    }
    text.lines().map(str::to_owned).collect()
}

/// Waits (polling the log) until the client has made `n` more requests
/// than `seen`.
async fn requests_after(b: &ComposeBackend, project: &str, seen: usize, n: usize) -> Vec<String> {
    loop {
        let lines = answers(b, project).await;
        if lines.len() >= seen + n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The web replicas' names, container ids and image ids.
pub(crate) async fn web_replicas(
    b: &ComposeBackend,
    project: &str,
) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = containers(b, project)
        .await
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(labels::SERVICE))
                .is_some_and(|s| s == "web")
        })
        .map(|c| {
            (
                c.names.unwrap_or_default()[0]
                    .trim_start_matches('/')
                    .to_owned(),
                c.id.unwrap_or_default(),
                c.image_id.unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn start_first_keeps_the_service_answering_through_an_update() {
    let Some(b) = engine().await else { return };
    let name = project_name("rollout");
    let _cleanup = Cleanup::new(&[&name]);
    reconcile(&b, &name, &desired(vec![project(&name, web(BUSYBOX))])).await;
    let before = requests_after(&b, &name, 0, 20).await;

    let d = desired(vec![project(&name, web(BUSYBOX_2))]);
    let changes = dry_run(&b, &name, &d, &Allow::default()).await.unwrap();
    let change = changes
        .iter()
        .find(|c| c.resource.name == format!("{name}/web"))
        .unwrap();
    assert_eq!(
        change.action,
        Action::Recreate {
            reason: "image changed".into()
        }
    );
    assert!(
        change
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("start-first, 1 at a time")),
        "{change:?}"
    );
    let masker = Masker::default();
    let allow = Allow::default();
    b.apply(&d, &changes, ctx(&name, &masker, &allow))
        .await
        .unwrap_or_else(|e| panic!("apply failed: {e}"));
    let updated = answers(&b, &name).await.len();
    let lines = requests_after(&b, &name, updated, 20).await;

    // Not one request failed: a new container gets the service's alias
    // only once healthy, and an old one leaves DNS (keeping its address, so
    // a request in flight to it completes) before it stops. A request that
    // resolved to the old one just as it rejoins its network without
    // aliases is delayed about 1 s (TCP resends its SYN), within the
    // client's 5 s bound; a bound under 1 s would count it (measured in
    // benches/rollout_vs_compose.sh).
    assert!(
        lines.iter().all(|l| l != "FAIL"),
        "failed requests during the update: {lines:?}"
    );
    assert!(before.iter().all(|l| l == "ok 1"), "{before:?}");
    assert!(
        lines[updated..].iter().all(|l| l == "ok 2"),
        "after the update only the new version answers: {:?}",
        &lines[updated..]
    );
    // Exactly the desired replicas, under their canonical names.
    let v2 = image_id(&b, BUSYBOX_2).await;
    let now: Vec<(String, String)> = web_replicas(&b, &name)
        .await
        .into_iter()
        .map(|(name, _, image)| (name, image))
        .collect();
    assert_eq!(
        now,
        [
            (format!("{name}-web-1"), v2.clone()),
            (format!("{name}-web-2"), v2)
        ]
    );
    // Converged: the next plan changes nothing.
    let again = dry_run(&b, &name, &d, &Allow::default()).await.unwrap();
    assert!(
        again.iter().all(|c| c.action == Action::Unchanged),
        "{again:#?}"
    );
}

#[tokio::test]
async fn a_new_replica_failing_health_leaves_the_old_ones_serving() {
    let Some(b) = engine().await else { return };
    let name = project_name("rollout-bad");
    let _cleanup = Cleanup::new(&[&name]);
    reconcile(&b, &name, &desired(vec![project(&name, web(BUSYBOX))])).await;
    requests_after(&b, &name, 0, 10).await;
    let old = web_replicas(&b, &name).await;

    let mut broken = web(BUSYBOX_2);
    if let Some(h) = broken.healthcheck.as_mut() {
        h.test = vec!["CMD".into(), "false".into()];
        h.retries = Some(1);
    }
    let d = desired(vec![project(&name, broken)]);
    let changes = dry_run(&b, &name, &d, &Allow::default()).await.unwrap();
    let masker = Masker::default();
    let allow = Allow::default();
    let err = b
        .apply(&d, &changes, ctx(&name, &masker, &allow))
        .await
        .expect_err("the new replica never becomes healthy");
    // No `update_config`: a failed deploy (the environment rolls back),
    // not Swarm's default `pause`.
    assert!(
        matches!(err, driftless::backend::BackendError::Apply { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("{name}/web")) && text.contains("failed its healthcheck"),
        "{text}"
    );
    let failed_at = answers(&b, &name).await.len();
    let lines = requests_after(&b, &name, failed_at, 10).await;
    // The new replica never had the service's alias (it is given only to
    // a healthy one): the old replicas answered every request, and only
    // they answer after.
    assert!(
        lines.iter().all(|l| l != "FAIL"),
        "the old replicas kept serving: {lines:?}"
    );
    assert!(
        lines[failed_at..].iter().all(|l| l != "ok 2"),
        "{:?}",
        &lines[failed_at..]
    );
    // Nothing left behind: the two old replicas, the same containers.
    assert_eq!(web_replicas(&b, &name).await, old);
    let v1 = image_id(&b, BUSYBOX).await;
    assert!(old.iter().all(|(_, _, image)| *image == v1), "{old:?}");
}

/// Stands in for an apply killed mid-replacement: a copy of `replica`
/// (its labels, image and command) under its temporary name, running.
async fn leftover_replacement(b: &ComposeBackend, replica: &str) -> String {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{CreateContainerOptionsBuilder, InspectContainerOptions};
    let inspect = b
        .docker()
        .inspect_container(replica, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let config = inspect.config.unwrap();
    let temporary = format!("{replica}-driftless-next");
    let mut labels = config.labels.unwrap_or_default();
    labels.insert(labels::TEMPORARY.to_owned(), temporary.clone());
    let body = ContainerCreateBody {
        image: config.image,
        cmd: config.cmd,
        labels: Some(labels),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default()
        .name(&temporary)
        .build();
    b.docker()
        .create_container(Some(options), body)
        .await
        .unwrap();
    b.docker().start_container(&temporary, None).await.unwrap();
    temporary
}

#[tokio::test]
async fn a_pass_after_an_interrupted_replacement_converges() {
    let Some(b) = engine().await else { return };
    let name = project_name("rollout-crash");
    let _cleanup = Cleanup::new(&[&name]);
    let d = desired(vec![project(&name, web(BUSYBOX))]);
    reconcile(&b, &name, &d).await;
    // Killed after the new web-2 started, and (second case) after the old
    // web-2 was removed, before the rename.
    leftover_replacement(&b, &format!("{name}-web-1")).await;
    let gone = format!("{name}-web-2");
    leftover_replacement(&b, &gone).await;
    force_remove(b.docker(), &gone).await;

    let (changes, _) = reconcile(&b, &name, &d).await;
    let web = changes
        .iter()
        .find(|c| c.resource.name == format!("{name}/web"))
        .unwrap();
    assert_eq!(
        web.action,
        Action::Recreate {
            reason: "replacement interrupted".into()
        },
        "{web:?}"
    );
    let names: Vec<String> = web_replicas(&b, &name)
        .await
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names, [format!("{name}-web-1"), format!("{name}-web-2")]);
    let again = dry_run(&b, &name, &d, &Allow::default()).await.unwrap();
    assert!(
        again.iter().all(|c| c.action == Action::Unchanged),
        "{again:#?}"
    );
}

/// The real binary killed with SIGKILL at a named instant of a start-first
/// replacement — the new web-1 started under its temporary name, the old
/// web-1 still running — seen by watching the engine's container list.
/// The next `reconcile` converges: exactly the two replicas, under their
/// canonical names, on the new image; nothing runs twice.
#[tokio::test]
async fn kill_9_mid_replacement_then_reconcile_converges() {
    use crate::support::{RepoBuilder, git};
    let Some(b) = engine().await else { return };
    let name = project_name("rollout-kill");
    let _cleanup = Cleanup::new(&[&name]);
    let env = format!("e{}", name.trim_start_matches("dlt-").replace('_', "-"));
    let manifest = format!(
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n"
    );
    let stack = |image: &str| {
        format!(
            "name: {name}\nservices:\n  web:\n    image: {image}\n    command: [httpd, -f, -p, \"80\", -h, /]\n    deploy: {{ replicas: 2 }}\n    stop_grace_period: 1s\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1/variant\"]\n      interval: 1s\n      retries: 30\n"
        )
    };
    let repo = RepoBuilder::new()
        .file("driftless.yaml", manifest)
        .file("environments/values.yaml", "{}\n")
        .file("compose/stack.yaml", stack(BUSYBOX));
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "v1"]);
    let state = tempfile::tempdir().unwrap();
    let command = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_driftless"));
        cmd.args(["reconcile", "--env", &env, "--state-dir"])
            .arg(state.path())
            .arg("--repo")
            .arg(repo.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("DRIFTLESS_") {
                cmd.env_remove(k);
            }
        }
        cmd
    };
    let first = command().output().unwrap();
    assert!(first.status.success(), "{first:?}");
    let old = web_replicas(&b, &name).await;

    std::fs::write(repo.path().join("compose/stack.yaml"), stack(BUSYBOX_2)).unwrap();
    git(repo.path(), &["commit", "-q", "-am", "v2"]);
    let mut child = command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let temporary = format!("{name}-web-1-driftless-next");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let live = containers(&b, &name).await;
        let running = |c: &&bollard::models::ContainerSummary| {
            c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
        };
        let new_started = live.iter().filter(running).any(|c| {
            c.names
                .as_ref()
                .is_some_and(|n| n.iter().any(|n| n.trim_start_matches('/') == temporary))
        });
        let old_running = live
            .iter()
            .filter(running)
            .any(|c| c.id.as_deref() == Some(&old[0].1));
        if new_started && old_running {
            break;
        }
        let live: Vec<_> = live.iter().map(|c| (&c.names, &c.state)).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "never saw the new web-1 beside the old one: {live:?}"
        );
        assert!(child.try_wait().unwrap().is_none(), "reconcile ended first");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Both are there, as the kill left them.
    let left = web_replicas(&b, &name).await;
    assert_eq!(left.len(), 3, "{left:?}");

    let again = command().output().unwrap();
    assert!(again.status.success(), "{again:?}");
    let v2 = image_id(&b, BUSYBOX_2).await;
    let now: Vec<(String, String)> = web_replicas(&b, &name)
        .await
        .into_iter()
        .map(|(name, _, image)| (name, image))
        .collect();
    assert_eq!(
        now,
        [
            (format!("{name}-web-1"), v2.clone()),
            (format!("{name}-web-2"), v2)
        ]
    );
    let dry = command()
        .args(["--dry-run", "--detailed-exitcode"])
        .output()
        .unwrap();
    assert_eq!(dry.status.code(), Some(0), "{dry:?}");
}

/// While the daemon replaces a service, its status says so — the API's
/// `worker.replacing` (order, replicas done of total, phase), the status
/// page and `driftless status --daemon` — and says nothing once the
/// rollout is over. The new image's healthcheck turns healthy only after
/// a few seconds, so each new replica is seen waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_status_shows_a_service_being_replaced() {
    use crate::daemon_support::{API_TOKEN, Bare, Daemon, Options, git};
    let Some(_b) = engine().await else { return };
    let name = project_name("rollout-status");
    let _cleanup = Cleanup::new(&[&name]);
    let env = format!("e{}", name.trim_start_matches("dlt-").replace('_', "-"));
    let manifest = format!(
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n    drift_interval: 1h\n"
    );
    // Healthy once /tmp/ready exists: at once for v1, after 3 s for v2.
    let stack = |image: &str, wait: u32| {
        format!(
            "name: {name}\nservices:\n  web:\n    image: {image}\n    command: [sh, -c, \"sleep {wait}; touch /tmp/ready; exec httpd -f -p 80 -h /\"]\n    deploy: {{ replicas: 2 }}\n    stop_grace_period: 1s\n    healthcheck:\n      test: [CMD-SHELL, \"test -f /tmp/ready\"]\n      interval: 500ms\n      retries: 30\n"
        )
    };
    let files = |image: &str, wait: u32| {
        vec![
            ("driftless.yaml", manifest.clone()),
            ("environments/values.yaml", "{}\n".to_owned()),
            ("compose/stack.yaml", stack(image, wait)),
        ]
    };
    let bare = Bare::new(&files(BUSYBOX, 0));
    let c1 = git(&bare.path(), &["rev-parse", "main"]);
    let state = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&Options::watching(
        &bare,
        &env,
        state.path(),
        secrets.path(),
    ));
    d.ready().await;
    d.wait(&env, "first deploy", LONG, |s| {
        s["last_good"]["commit"] == c1
    })
    .await;
    let service = format!("{name}/web");
    let replacing = |s: &serde_json::Value| -> Option<serde_json::Value> {
        s["worker"]["replacing"]
            .as_array()?
            .iter()
            .find(|r| r["service"] == service.as_str())
            .cloned()
    };

    let c2 = bare.commit(&files(BUSYBOX_2, 3)[2..], "v2");
    let first = api_until(&d, &env, "web-1 waiting healthy", |s| {
        replacing(s).is_some_and(|r| r["phase"] == "waiting-healthy" && r["done"] == 0)
    })
    .await;
    let r = replacing(&first).unwrap();
    assert_eq!(
        (&r["target"], &r["order"], &r["total"]),
        (&"local".into(), &"start-first".into(), &2.into()),
        "{first:#}"
    );
    assert_eq!(first["worker"]["running"], true, "{first:#}");
    // The replica takes 3 s to turn healthy: the page and the CLI see it
    // meanwhile.
    let page = d.client().get(d.url("/")).send().await.unwrap();
    let page = page.text().await.unwrap();
    // As the template escapes it (`/` too).
    let escaped = service.replace('/', "&#x2f;");
    assert!(
        page.contains(&format!(
            "Replacing local: {escaped} start-first, 0 of 2 replicas done, waiting healthy"
        )),
        "{page}"
    );
    let token = secrets.path().join("token");
    std::fs::write(&token, API_TOKEN).unwrap();
    let (code, out, err) = crate::daemon_support::cli(&[
        "status",
        "--env",
        &env,
        "--daemon",
        &d.url(""),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "replacing local: {service} start-first, 0 of 2 replicas done, waiting healthy"
        )),
        "{out}"
    );

    api_until(&d, &env, "web-2 waiting healthy", |s| {
        replacing(s).is_some_and(|r| r["phase"] == "waiting-healthy" && r["done"] == 1)
    })
    .await;
    let end = api_until(&d, &env, "the rollout's end", |s| {
        s["last_good"]["commit"] == c2.as_str()
    })
    .await;
    assert_eq!(end["worker"]["replacing"], serde_json::json!([]), "{end:#}");
    let page = d.client().get(d.url("/")).send().await.unwrap();
    assert!(!page.text().await.unwrap().contains("Replacing"));
}

/// Polls `GET /api/v1/environments/{env}` — the versioned API, as a
/// dashboard reads it — until `pred` holds; panics with the daemon's logs
/// after [`LONG`].
async fn api_until(
    d: &crate::daemon_support::Daemon,
    env: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let s = match d
            .client()
            .get(d.url(&format!("/api/v1/environments/{env}")))
            .bearer_auth(crate::daemon_support::API_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => r
                .text()
                .await
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok()),
            Err(_) => None,
        };
        if let Some(s) = s.as_ref().filter(|s| pred(s)) {
            return s.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {what}; status: {s:#?}\nlogs:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a deploy may take in the daemon test.
const LONG: Duration = Duration::from_secs(120);
