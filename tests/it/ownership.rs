//! Which live Compose projects an environment may touch, on the real
//! engine: two repos with a `dev` each never plan to change each other's
//! projects, and a project docker-compose started is refused until it is
//! adopted, then reconciled like any other.

use std::path::Path;
use std::process::Command;

use crate::docker_support::{BUSYBOX, Cleanup, containers, engine, project_name};
use crate::support::{RepoBuilder, Run, driftless, git};

/// A committed repo whose environment `dev` deploys one Compose file,
/// with a state directory of its own (as two daemons, or two CI jobs,
/// would have).
struct Repo {
    repo: RepoBuilder,
    state: tempfile::TempDir,
}

impl Repo {
    /// `compose/<file>` holds `stack`; `dev` sets `extra` (indented
    /// environment keys) if given.
    fn new(file: &str, stack: &str, extra: &str) -> Repo {
        let manifest = format!(
            "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  dev:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n{extra}"
        );
        let repo = RepoBuilder::new()
            .file("driftless.yaml", manifest)
            .file("environments/values.yaml", "{}\n")
            .file(&format!("compose/{file}"), stack);
        git(repo.path(), &["init", "-q"]);
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "v1"]);
        Repo {
            repo,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn reconcile(&self, args: &[&str]) -> Run {
        let mut all = vec![
            "reconcile",
            "--env",
            "dev",
            "--state-dir",
            self.state.path().to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        driftless(self.repo.path(), &all)
    }

    /// `driftless history` of `dev` in the repo's state directory.
    fn history(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
            .args(["history", "--env", "dev", "--output", "json", "--state-dir"])
            .arg(self.state.path())
            .env_remove("DRIFTLESS_DAEMON")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }
}

/// A one-service stack named `project` that sleeps.
fn sleeper(project: &str) -> String {
    format!(
        "name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n"
    )
}

fn labels_of(c: &bollard::models::ContainerSummary, key: &str) -> Option<String> {
    c.labels.as_ref().and_then(|l| l.get(key).cloned())
}

#[tokio::test]
async fn two_repos_with_dev_on_one_engine_never_plan_to_touch_each_others_project() {
    let Some(engine) = engine().await else {
        return;
    };
    let (pa, pb) = (project_name("own-a"), project_name("own-b"));
    let _cleanup = Cleanup::new(&[&pa, &pb]);
    let a = Repo::new("stack.yaml", &sleeper(&pa), "");
    let b = Repo::new("stack.yaml", &sleeper(&pb), "");

    assert_eq!(a.reconcile(&[]).code, 0, "repo a deploys");
    assert_eq!(b.reconcile(&[]).code, 0, "repo b deploys");
    // Each repo sees only its own project: nothing to do, nothing to
    // remove, even with removals allowed.
    for repo in [&a, &b] {
        let dry = repo.reconcile(&["--dry-run", "--detailed-exitcode", "--allow-mass-prune"]);
        assert_eq!(dry.code, 0, "{dry:?}");
        assert!(
            dry.stdout
                .contains("0 to create, 0 to update, 0 to recreate, 0 to delete, 2 unchanged"),
            "{dry:?}"
        );
    }
    let instance = |p: &str| {
        let p = p.to_owned();
        let engine = &engine;
        async move {
            let listed = containers(engine, &p).await;
            assert_eq!(listed.len(), 1, "{listed:?}");
            labels_of(&listed[0], "io.driftless.instance").expect("instance label")
        }
    };
    let (ia, ib) = (instance(&pa).await, instance(&pb).await);
    assert_ne!(ia, ib);
    assert!(ia.starts_with("dev@"), "{ia}");

    // A third repo rendering repo a's project by name is refused, naming
    // the instance that owns it; its apply changes nothing.
    let c = Repo::new("stack.yaml", &sleeper(&pa), "");
    let refused = c.reconcile(&[]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains(&format!("by another driftless instance, `{ia}`")),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("--adopt"), "{refused:?}");
    assert_eq!(instance(&pa).await, ia, "repo a's container untouched");

    // Were it repo a moved elsewhere, naming a's instance keeps the
    // project as it runs: nothing to do.
    let moved = Repo::new(
        "stack.yaml",
        &sleeper(&pa),
        &format!("    instance: \"{ia}\"\n"),
    );
    let dry = moved.reconcile(&["--dry-run", "--detailed-exitcode"]);
    assert_eq!(dry.code, 0, "{dry:?}");
}

/// `docker-compose -p <project> up -d` of `<dir>/<file>`.
fn compose_up(dir: &Path, project: &str, file: &str) {
    let out = Command::new("docker-compose")
        .current_dir(dir)
        .args(["-p", project, "-f", file, "up", "-d"])
        .output()
        .expect("docker-compose is installed (Debian's docker-compose 1.29.2)");
    assert!(
        out.status.success(),
        "docker-compose up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_project_docker_compose_started_is_refused_then_adopted_then_a_no_op() {
    let Some(engine) = engine().await else {
        return;
    };
    let project = project_name("own-compose");
    let _cleanup = Cleanup::new(&[&project]);
    // No `name:` (docker-compose 1.29.2 does not know it): the project
    // name comes from `.env`, as both tools read it.
    let stack = format!(
        "services:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n  web:\n    image: {BUSYBOX}\n    command: [httpd, -f, -p, \"8080\", -h, /www]\n"
    );
    let repo = Repo::new("docker-compose.yml", &stack, "");
    std::fs::write(
        repo.repo.path().join("compose/.env"),
        format!("COMPOSE_PROJECT_NAME={project}\n"),
    )
    .unwrap();
    git(repo.repo.path(), &["add", "-A"]);
    git(repo.repo.path(), &["commit", "-q", "-m", "env"]);
    compose_up(
        &repo.repo.path().join("compose"),
        &project,
        "docker-compose.yml",
    );
    let before = containers(&engine, &project).await;
    assert_eq!(before.len(), 2, "{before:?}");

    // Not adopted: refused, saying how to adopt; nothing is changed.
    for args in [&["--dry-run"][..], &[]] {
        let refused = repo.reconcile(args);
        assert_eq!(refused.code, 1, "{refused:?}");
        assert!(
            refused.stderr.contains(&format!(
                "project `{project}` is deployed on this engine by docker-compose 1.29.2"
            )),
            "{refused:?}"
        );
        assert!(
            refused.stderr.contains("adopt: true") && refused.stderr.contains("--adopt"),
            "{refused:?}"
        );
    }
    let ids = |list: &[bollard::models::ContainerSummary]| {
        let mut ids: Vec<String> = list.iter().filter_map(|c| c.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&containers(&engine, &project).await), ids(&before));

    // The dry-run with --adopt names each container and why it is
    // recreated; the apply adopts and records it.
    let dry = repo.reconcile(&["--dry-run", "--adopt"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    for service in ["app", "web"] {
        assert!(
            dry.stdout.contains(&format!(
                "service {project}/{service}  recreate (adopted) — adopt {project}_{service}_1 from docker-compose 1.29.2: the same image"
            )),
            "{dry:?}"
        );
    }
    let applied = repo.reconcile(&["--adopt"]);
    assert_eq!(applied.code, 0, "{applied:?}");
    let after = containers(&engine, &project).await;
    assert_eq!(after.len(), 2, "{after:?}");
    for c in &after {
        assert!(
            labels_of(c, "io.driftless.instance").is_some_and(|i| i.starts_with("dev@")),
            "{c:?}"
        );
    }
    let history = repo.history();
    // (docker-compose 1.29.2 made its network attachable, the file does not
    // ask for it: that network is recreated too, for that reason.)
    let reasons: Vec<&str> = history["reconciles"][0]["plan"]["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["resource"]["kind"] == "service")
        .filter_map(|c| c["action"]["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["adopted", "adopted"], "{history}");

    // From now on it is the environment's like any other: no adopt needed,
    // nothing to do.
    let again = repo.reconcile(&["--dry-run", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again
            .stdout
            .contains("0 to create, 0 to update, 0 to recreate, 0 to delete"),
        "{again:?}"
    );
}

#[tokio::test]
async fn adopt_true_in_the_manifest_adopts_what_docker_compose_started() {
    let Some(engine) = engine().await else {
        return;
    };
    let project = project_name("own-adopt");
    let _cleanup = Cleanup::new(&[&project]);
    let repo = Repo::new("stack.yaml", &sleeper(&project), "    adopt: true\n");
    // docker-compose 1.29.2 does not know `name:`: give it the file
    // without it, outside the repo.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(
        elsewhere.path().join("plain.yml"),
        sleeper(&project).replace(&format!("name: {project}\n"), ""),
    )
    .unwrap();
    compose_up(elsewhere.path(), &project, "plain.yml");
    let applied = repo.reconcile(&[]);
    assert_eq!(applied.code, 0, "{applied:?}");
    let after = containers(&engine, &project).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        labels_of(&after[0], "io.driftless.instance").is_some(),
        "{after:?}"
    );
}

/// Replaces `project`'s one container by a copy labelled as a release from
/// before instance labels: everything but `io.driftless.instance`, on the
/// same image id and network.
async fn relabel_as_before_instances(
    engine: &driftless::backend::compose::ComposeBackend,
    project: &str,
) {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{
        CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
    };
    let docker = engine.docker();
    let listed = containers(engine, project).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let old = listed[0].id.clone().unwrap();
    let inspect = docker
        .inspect_container(&old, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let config = inspect.config.unwrap_or_default();
    let mut labels = config.labels.unwrap_or_default();
    assert!(labels.remove("io.driftless.instance").is_some());
    let name = inspect.name.unwrap().trim_start_matches('/').to_owned();
    let network = inspect.host_config.and_then(|h| h.network_mode);
    docker
        .remove_container(
            &old,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .unwrap();
    let body = ContainerCreateBody {
        image: inspect.image,
        cmd: config.cmd,
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: network,
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .unwrap();
    docker.start_container(&created.id, None).await.unwrap();
}

#[tokio::test]
async fn a_deployment_from_before_instance_labels_stays_the_environments_without_a_recreate() {
    let Some(engine) = engine().await else {
        return;
    };
    let project = project_name("own-legacy");
    let _cleanup = Cleanup::new(&[&project]);
    let repo = Repo::new("stack.yaml", &sleeper(&project), "");
    assert_eq!(repo.reconcile(&[]).code, 0, "first deploy");
    relabel_as_before_instances(&engine, &project).await;
    let before = containers(&engine, &project).await;
    assert!(labels_of(&before[0], "io.driftless.instance").is_none());

    let dry = repo.reconcile(&["--dry-run", "--detailed-exitcode"]);
    assert_eq!(dry.code, 0, "nothing to do: {dry:?}");
    assert_eq!(repo.reconcile(&[]).code, 0);
    let after = containers(&engine, &project).await;
    assert_eq!(after[0].id, before[0].id, "not recreated");
}
