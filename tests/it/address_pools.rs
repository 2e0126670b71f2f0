//! Address pools on the real engine: a Docker target's `address_pools`
//! give each project network without `ipam` a subnet of its own, shown in
//! the plan, skipping subnets other networks hold, kept when the network
//! is recreated; a plan needing more subnets than the pools have left is
//! refused before anything is created.

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};

use crate::docker_support::{BUSYBOX, Cleanup, containers, engine, project_name};
use crate::support::{RepoBuilder, Run, driftless, git};

/// Four /24s; the first is taken by a network of the test's own.
const POOL: &str = "{base: 10.231.40.0/22, size: 24}";

/// A committed repo whose `dev` deploys `stack` to a target with [`POOL`].
fn repo(stack: &str) -> (RepoBuilder, tempfile::TempDir) {
    let docker = format!("{{ address_pools: [{POOL}] }}");
    let repo = RepoBuilder::one_stack("local", &docker, "dev", stack);
    (repo, tempfile::tempdir().unwrap())
}

fn reconcile(repo: &RepoBuilder, state: &tempfile::TempDir, args: &[&str]) -> Run {
    let mut all = vec![
        "reconcile",
        "--env",
        "dev",
        "--state-dir",
        state.path().to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    driftless(repo.path(), &all)
}

/// A stack whose `app` joins the default network and `back` (neither with
/// `ipam`), and whose `db` joins `fixed`, which has a subnet of its own.
fn stack(project: &str, back_labels: &str) -> String {
    format!(
        "name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    networks: [default, back]\n  db:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    networks: [fixed]\nnetworks:\n  back:{back_labels}\n  fixed:\n    ipam:\n      config: [{{subnet: 10.231.60.0/24}}]\n"
    )
}

async fn subnet(docker: &bollard::Docker, network: &str) -> String {
    let n = docker
        .inspect_network(
            network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .unwrap_or_else(|e| panic!("network {network}: {e}"));
    n.ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.subnet)
        .unwrap_or_default()
}

#[tokio::test]
async fn project_networks_get_subnets_from_the_targets_address_pools() {
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    let (p, q) = (project_name("pool-a"), project_name("pool-b"));
    let _cleanup = Cleanup::new(&[&p, &q]);
    // Someone else's network holds the pool's first subnet.
    let squatter = format!("{p}-squatter");
    docker
        .create_network(NetworkCreateRequest {
            name: squatter.clone(),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some("10.231.40.0/24".into()),
                    ..IpamConfig::default()
                }]),
                ..Ipam::default()
            }),
            ..NetworkCreateRequest::default()
        })
        .await
        .unwrap();
    struct Gone<'a>(&'a bollard::Docker, String);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            let (docker, name) = (self.0.clone(), self.1.clone());
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(docker.remove_network(&name))
            })
            .join();
        }
    }
    let _squatter = Gone(docker, squatter);

    let (a, a_state) = repo(&stack(&p, ""));
    let dry = reconcile(&a, &a_state, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    for line in [
        format!("{p}_back"),
        "subnet 10.231.41.0/24 from the target's address pools".to_owned(),
        format!("{p}_default"),
        "subnet 10.231.42.0/24 from the target's address pools".to_owned(),
    ] {
        assert!(dry.stdout.contains(&line), "{line}: {dry:?}");
    }
    assert_eq!(
        dry.stdout
            .matches("from the target's address pools")
            .count(),
        2,
        "`fixed` has its own subnet: {dry:?}"
    );

    let applied = reconcile(&a, &a_state, &[]);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert_eq!(subnet(docker, &format!("{p}_back")).await, "10.231.41.0/24");
    assert_eq!(
        subnet(docker, &format!("{p}_default")).await,
        "10.231.42.0/24"
    );
    assert_eq!(
        subnet(docker, &format!("{p}_fixed")).await,
        "10.231.60.0/24"
    );
    let again = reconcile(&a, &a_state, &["--dry-run", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "the given subnets are no change: {again:?}");

    // A second project needs two subnets where one is left: refused at
    // plan time, naming the pools and what to do; nothing of it created.
    let (b, b_state) = repo(&stack(&q, ""));
    let refused = reconcile(&b, &b_state, &[]);
    assert_eq!(refused.code, 1, "{refused:?}");
    for want in [
        format!(
            "network `{q}_default` needs a subnet, and all 4 of the address pools 10.231.40.0/22 (size 24) are in use"
        ),
        "widen `address_pools` of target `local`".to_owned(),
    ] {
        assert!(refused.stderr.contains(&want), "{want}: {refused:?}");
    }
    assert!(
        containers(&engine, &q).await.is_empty(),
        "nothing of {q} created"
    );

    // A recreated network (its labels changed) keeps its subnet.
    std::fs::write(
        a.path().join("compose/stack.yaml"),
        stack(&p, "\n    labels: {tier: back}"),
    )
    .unwrap();
    git(a.path(), &["commit", "-q", "-am", "label back"]);
    let recreated = reconcile(&a, &a_state, &[]);
    assert_eq!(recreated.code, 0, "{recreated:?}");
    assert!(
        recreated.stdout.contains("recreate") && recreated.stdout.contains(&format!("{p}_back")),
        "{recreated:?}"
    );
    assert_eq!(subnet(docker, &format!("{p}_back")).await, "10.231.41.0/24");
}
