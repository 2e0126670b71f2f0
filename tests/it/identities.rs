//! Several daemons on one desired-state repo: each identity claims its own
//! targets (`owner`), `validate` reports targets no known identity claims
//! or that several do, and an environment spanning several Docker hosts
//! places each Compose file on one of them.

use std::time::Duration;

use crate::daemon_support::{Bare, Daemon, Options};
use crate::docker_support::{BUSYBOX, Cleanup, containers, engine, project_name};
use crate::support::RepoBuilder;

#[test]
fn validate_reports_targets_no_identity_claims_or_several_do() {
    let manifest = "apiVersion: driftless/v1\ndaemons: [ops-a, ops-b]\ntargets:\n  a:\n    owner: ops-a\n    docker: {}\n  stray:\n    owner: ops-c\n    docker: { host: \"tcp://10.0.0.9:2376\", tls_cert_path: /etc/d }\n  shared:\n    kubernetes: { namespace: x }\nenvironments:\n  dev:\n    targets: [a, stray, shared]\n";
    let run = RepoBuilder::new()
        .file("driftless.yaml", manifest)
        .file("environments/dev.yaml", "{}\n")
        .driftless(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains("target `stray`: no daemon identity claims it (owner `ops-c` is not in `daemons`: ops-a, ops-b)"),
        "{out}"
    );
    assert!(
        out.contains("driftless.yaml:8"),
        "names the target's line: {out}"
    );
    assert!(
        out.contains(
            "target `shared` has no `owner`, so every daemon identity (ops-a, ops-b) claims it"
        ),
        "{out}"
    );
    assert!(!out.contains("target `a`"), "{out}");
}

#[test]
fn placement_puts_each_compose_file_on_exactly_one_host() {
    let manifest = "apiVersion: driftless/v1\ntargets:\n  east:\n    docker: { host: \"tcp://east:2376\", tls_cert_path: /etc/e }\n  west:\n    docker: { host: \"tcp://west:2376\", tls_cert_path: /etc/w }\nenvironments:\n  prod:\n    targets: [east, west]\n    placement: { east: [\"compose/web*.yaml\"], west: [\"compose/db.yaml\"] }\n";
    let stack = |name: &str| {
        format!(
            "name: {name}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"1\"]\n"
        )
    };
    let repo = || {
        RepoBuilder::new()
            .file("driftless.yaml", manifest)
            .file("environments/prod.yaml", "{}\n")
            .file("compose/web.yaml", stack("web"))
            .file("compose/db.yaml", stack("db"))
    };
    let run = repo().driftless(&["validate"]);
    assert_eq!(run.code, 0, "{run:?}");

    let run = repo()
        .file("compose/cache.yaml", stack("cache"))
        .driftless(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains("compose/cache.yaml")
            && out.contains("matches no target in `environments.prod.placement`"),
        "{out}"
    );

    // Two docker targets of one environment on one engine would prune each
    // other's projects: refused.
    let same = manifest.replace("tcp://west:2376", "tcp://east:2376");
    let run = RepoBuilder::new()
        .file("driftless.yaml", same)
        .file("environments/prod.yaml", "{}\n")
        .driftless(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("are the same engine"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_with_different_identities_apply_only_their_own_targets() {
    let Some(local) = engine().await else { return };
    let (east, west) = (project_name("id-east"), project_name("id-west"));
    let _cleanup = Cleanup::new(&[&east, &west]);
    // Both targets are the local engine here (on real hosts they differ);
    // each belongs to one identity, and each environment uses one.
    let manifest = "apiVersion: driftless/v1\ndaemons: [ops-east, ops-west]\ntargets:\n  docker-east:\n    owner: ops-east\n    docker: {}\n  docker-west:\n    owner: ops-west\n    docker: {}\nenvironments:\n  east:\n    targets: [docker-east]\n    paths: { stacks: [compose/east.yaml] }\n    health: { deadline: 60s, settle: 1s }\n  west:\n    targets: [docker-west]\n    paths: { stacks: [compose/west.yaml] }\n    health: { deadline: 60s, settle: 1s }\n";
    let stack = |name: &str| {
        format!(
            "name: {name}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    init: true\n"
        )
    };
    let repo = Bare::new(&[
        ("driftless.yaml", manifest.to_owned()),
        ("environments/east.yaml", "{}\n".to_owned()),
        ("environments/west.yaml", "{}\n".to_owned()),
        ("compose/east.yaml", stack(&east)),
        ("compose/west.yaml", stack(&west)),
    ]);
    let start = |identity: &str, state: &std::path::Path, secrets: &std::path::Path| {
        Daemon::start(&Options {
            repo: repo.path(),
            env: String::new(),
            state_dir: state.to_owned(),
            secrets_dir: secrets.to_owned(),
            poll: "1s",
            watch: true,
            extra: format!("identity: {identity}\n"),
            vars: vec![],
        })
    };
    let secrets = tempfile::tempdir().unwrap();
    let (state_e, state_w) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let mut daemon_east = start("ops-east", state_e.path(), secrets.path());
    daemon_east.ready().await;
    daemon_east
        .wait(
            "east",
            "east applied and healthy",
            Duration::from_secs(90),
            |s| s["last_good"]["commit"].is_string(),
        )
        .await;
    assert_eq!(containers(&local, &east).await.len(), 1);
    assert_eq!(
        containers(&local, &west).await.len(),
        0,
        "ops-east applied a target of ops-west"
    );
    assert!(
        daemon_east.status("west").await.unwrap().is_null(),
        "ops-east drives only east"
    );

    let mut daemon_west = start("ops-west", state_w.path(), secrets.path());
    daemon_west.ready().await;
    daemon_west
        .wait(
            "west",
            "west applied and healthy",
            Duration::from_secs(90),
            |s| s["last_good"]["commit"].is_string(),
        )
        .await;
    assert_eq!(containers(&local, &west).await.len(), 1);
    assert!(
        daemon_west.status("east").await.unwrap().is_null(),
        "ops-west drives only west"
    );
    // Each one's history holds only its own environment.
    let east_rows = Daemon::history(state_w.path(), "east");
    assert_eq!(
        east_rows["reconciles"].as_array().map(Vec::len),
        Some(0),
        "{east_rows:#}"
    );
    let west_rows = Daemon::history(state_w.path(), "west");
    assert!(
        !west_rows["reconciles"].as_array().unwrap().is_empty(),
        "{west_rows:#}"
    );
}

/// One environment spanning two daemons: a Docker host owned by one
/// identity and a cluster (the fake API server) owned by the other. Each
/// applies its own part and never touches the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_spanning_two_daemons_is_applied_part_by_part() {
    let Some(local) = engine().await else { return };
    let project = project_name("id-span");
    let _cleanup = Cleanup::new(&[&project]);
    let server = crate::fake_apiserver::FakeApiServer::start().await;
    server.insert(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "span"}}),
    );
    let manifest = "apiVersion: driftless/v1\ndaemons: [ops-host, ops-cluster]\ntargets:\n  host:\n    owner: ops-host\n    docker: {}\n  cluster:\n    owner: ops-cluster\n    kubernetes: { namespace: span }\nenvironments:\n  span:\n    targets: [host, cluster]\n    health: { deadline: 60s, settle: 1s }\n";
    let repo = Bare::new(&[
        ("driftless.yaml", manifest.to_owned()),
        ("environments/span.yaml", "{}\n".to_owned()),
        (
            "compose/app.yaml",
            format!(
                "name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    init: true\n"
            ),
        ),
        (
            "kubernetes/app.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  k: v\n".to_owned(),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path());
    let secrets = tempfile::tempdir().unwrap();
    let (state_h, state_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |identity: &str, state: &std::path::Path, vars: Vec<(String, String)>| {
        Daemon::start(&Options {
            repo: repo.path(),
            env: String::new(),
            state_dir: state.to_owned(),
            secrets_dir: secrets.path().to_owned(),
            poll: "1s",
            watch: true,
            extra: format!("identity: {identity}\n"),
            vars,
        })
    };

    // The host's daemon has no kubeconfig at all: it never needs one.
    let mut host = start(
        "ops-host",
        state_h.path(),
        vec![("KUBECONFIG".into(), "/nonexistent".into())],
    );
    host.ready().await;
    host.wait(
        "span",
        "the host part applied and healthy",
        Duration::from_secs(90),
        |s| s["last_good"]["commit"].is_string(),
    )
    .await;
    assert_eq!(containers(&local, &project).await.len(), 1);
    assert!(
        server.requests().is_empty(),
        "ops-host talked to the cluster: {:?}",
        server.requests()
    );

    let mut cluster = start(
        "ops-cluster",
        state_c.path(),
        vec![
            ("KUBECONFIG".into(), kubeconfig.display().to_string()),
            // The cluster's daemon cannot reach the Docker engine.
            (
                "DOCKER_HOST".into(),
                "unix:///nonexistent/docker.sock".into(),
            ),
        ],
    );
    cluster.ready().await;
    cluster
        .wait(
            "span",
            "the cluster part applied and healthy",
            Duration::from_secs(90),
            |s| s["last_good"]["commit"].is_string(),
        )
        .await;
    assert!(server.get("v1", "ConfigMap", Some("span"), "app").is_some());
    assert_eq!(
        containers(&local, &project).await.len(),
        1,
        "the host part is unchanged"
    );
}
