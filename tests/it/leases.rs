//! driftless replicas electing one leader per environment with
//! `coordination.k8s.io/v1` Leases on the fake API server: environments
//! spread over replicas, a dead replica's environment moves with its state,
//! a paused leader that lost its Lease applies nothing, and — read from
//! the server's request log — no environment is ever applied by two
//! replicas in the same window.
//!
//! The replicas are real `driftless daemon` processes; each sends its own
//! bearer token, which the fake server logs. Nothing here asserts a time:
//! the tests wait for events (the benchmark measures how long they take).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::daemon_support::{Bare, Daemon, Options};
use crate::fake_apiserver::FakeApiServer;

const LEASE_NS: &str = "driftless";
/// Long enough for a slow CI machine to wait for events, never a verdict.
const PATIENCE: Duration = Duration::from_secs(90);

fn manifest(envs: &[&str]) -> String {
    let mut m = String::from("apiVersion: driftless/v1\ntargets:\n");
    for e in envs {
        m.push_str(&format!("  k-{e}:\n    kubernetes: {{ namespace: {e} }}\n"));
    }
    m.push_str("environments:\n");
    for e in envs {
        m.push_str(&format!(
            "  {e}:\n    targets: [k-{e}]\n    paths: {{ manifests: [\"kubernetes/{e}/*.yaml\"] }}\n    health: {{ deadline: 30s, settle: 1s }}\n"
        ));
    }
    m
}

fn config_map(env: &str, version: &str) -> (String, String) {
    (
        format!("kubernetes/{env}/app.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  version: \"{version}\"\n"
        ),
    )
}

fn files(envs: &[&str], version: &str) -> Vec<(String, String)> {
    let mut f = vec![("driftless.yaml".to_owned(), manifest(envs))];
    for e in envs {
        f.push((format!("environments/{e}.yaml"), "{}\n".to_owned()));
        f.push(config_map(e, version));
    }
    f
}

fn as_refs(files: &[(String, String)]) -> Vec<(&str, String)> {
    files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect()
}

/// A replica: its own kubeconfig (bearer token = its name), state dir and
/// lease settings (3 s leases, renewed every 500 ms).
struct Replica {
    name: &'static str,
    daemon: Daemon,
    state: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

fn start(name: &'static str, server: &FakeApiServer, repo: &Path, envs: &[&str]) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: {name}\n  user:\n    token: {name}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {name}\ncurrent-context: fake\n",
            server.addr
        ),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let daemon = Daemon::start(&Options {
        repo: repo.to_owned(),
        env: envs.join(", "),
        state_dir: state.path().to_owned(),
        secrets_dir: secrets,
        poll: "1s",
        watch: true,
        extra: format!(
            "leases:\n  namespace: {LEASE_NS}\n  holder: {name}\n  duration: 3s\n  renew_deadline: 2s\n  retry_period: 500ms\n"
        ),
        vars: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
    });
    Replica {
        name,
        daemon,
        state,
        _dir: dir,
    }
}

fn lease(server: &FakeApiServer, env: &str) -> Option<Value> {
    server.get(
        "coordination.k8s.io/v1",
        "Lease",
        Some(LEASE_NS),
        &format!("driftless-env-{env}"),
    )
}

fn holder(server: &FakeApiServer, env: &str) -> Option<String> {
    lease(server, env).and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn version(server: &FakeApiServer, env: &str) -> Option<String> {
    server
        .get("v1", "ConfigMap", Some(env), "app")
        .and_then(|c| c["data"]["version"].as_str().map(str::to_owned))
}

/// Waits until `cond` holds; panics with `what` and the replicas' logs.
async fn until(what: &str, replicas: &[&Replica], cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = replicas
                .iter()
                .map(|r| format!("--- {} ---\n{}", r.name, r.daemon.log_text()))
                .collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per namespace, the replicas that applied (server-side apply, not dry
/// runs) in request order, consecutive repeats folded: `["a", "b"]` is
/// one hand-over, `["a", "b", "a"]` two replicas applying in one window.
fn appliers(server: &FakeApiServer, ns: &str) -> Vec<String> {
    let mut seq: Vec<String> = Vec::new();
    for r in server.requests() {
        let applied = r.is_patch() && !r.is_dry_run() && r.status < 300;
        if applied && r.namespace() == Some(ns) && seq.last() != Some(&r.who) {
            seq.push(r.who.clone());
        }
    }
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_spread_and_a_dead_replicas_environment_moves_with_its_state() {
    let envs = ["one", "two"];
    let server = FakeApiServer::start().await;
    for e in envs {
        server.insert(
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": e}}),
        );
    }
    let repo = Bare::new(&as_refs(&files(&envs, "1")));
    let a = start("replica-a", &server, &repo.path(), &envs);
    let b = start("replica-b", &server, &repo.path(), &envs);
    let replicas = [&a, &b];

    // One environment each, both applied.
    until(
        "each replica to hold one environment",
        &replicas,
        || matches!((holder(&server, "one"), holder(&server, "two")), (Some(x), Some(y)) if x != y),
    )
    .await;
    until("both environments applied", &replicas, || {
        envs.iter()
            .all(|e| version(&server, e).as_deref() == Some("1"))
    })
    .await;
    let (dead, survivor) = if holder(&server, "one").as_deref() == Some(a.name) {
        (a, b)
    } else {
        (b, a)
    };

    // The holder of `one` records a suspension; it reaches the Lease.
    let (code, _, err) = crate::daemon_support::cli(&[
        "suspend",
        "--env",
        "one",
        "--reason",
        "frozen by hand",
        "--state-dir",
        dead.state.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    until("the suspension on the Lease", &[&dead, &survivor], || {
        lease(&server, "one").is_some_and(|l| {
            l["metadata"]["annotations"]["driftless.io/state"]
                .as_str()
                .is_some_and(|s| s.contains("frozen by hand"))
        })
    })
    .await;

    // kill -9 the holder of `one`; push v2 for both environments.
    let mut dead = dead;
    dead.daemon.kill9();
    repo.commit(&as_refs(&files(&envs, "2")), "v2");
    until("the survivor to take over `one`", &[&survivor], || {
        holder(&server, "one").as_deref() == Some(survivor.name)
    })
    .await;
    until("v2 applied to `two`", &[&survivor], || {
        version(&server, "two").as_deref() == Some("2")
    })
    .await;
    // The suspension came with the Lease: the survivor says so and leaves
    // `one` alone.
    until(
        "the survivor to honour the suspension",
        &[&survivor],
        || {
            survivor
                .daemon
                .log_text()
                .contains("suspended: not reconciling")
        },
    )
    .await;
    assert_eq!(
        version(&server, "one").as_deref(),
        Some("1"),
        "a suspended environment was applied"
    );

    // Never two appliers in one window: each namespace was applied by one
    // replica, then (for `one`, at most) by the next.
    assert_eq!(
        appliers(&server, "two").len(),
        1,
        "{:?}",
        appliers(&server, "two")
    );
    let one = appliers(&server, "one");
    assert_eq!(one, [dead.name], "only the first holder applied `one`");
    // Renewals happened, and a lost race is a 409, never a second holder.
    let lease_writes = server
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/leases/"))
        .count();
    assert!(lease_writes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_that_lost_its_lease_applies_nothing_when_it_resumes() {
    let envs = ["solo"];
    let server = FakeApiServer::start().await;
    server.insert(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "solo"}}),
    );
    let repo = Bare::new(&as_refs(&files(&envs, "1")));
    let a = start("replica-a", &server, &repo.path(), &envs);
    until("a to hold and apply", &[&a], || {
        holder(&server, "solo").as_deref() == Some("replica-a")
            && version(&server, "solo").as_deref() == Some("1")
    })
    .await;
    let b = start("replica-b", &server, &repo.path(), &envs);

    // Freeze a (a long GC pause, a swapped-out VM): it cannot renew.
    a.daemon.signal("STOP");
    until("b to take the lease", &[&a, &b], || {
        holder(&server, "solo").as_deref() == Some("replica-b")
    })
    .await;
    repo.commit(&as_refs(&files(&envs, "2")), "v2");
    until("b to apply v2", &[&a, &b], || {
        version(&server, "solo").as_deref() == Some("2")
    })
    .await;
    // b stops applying (suspended) and v3 arrives: a, whose cache knows
    // nothing of the suspension, finds a change to make when it resumes.
    let (code, _, err) = crate::daemon_support::cli(&[
        "suspend",
        "--env",
        "solo",
        "--state-dir",
        b.state.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    until("b to stop reconciling", &[&a, &b], || {
        b.daemon.log_text().contains("suspended: not reconciling")
    })
    .await;
    repo.commit(&as_refs(&files(&envs, "3")), "v3");

    // a resumes with v3 waiting for it (its file watch and poll fire) and
    // a lease it believes it held.
    a.daemon.signal("CONT");
    until("a to find it lost the lease", &[&a, &b], || {
        let log = a.daemon.log_text();
        log.contains("lost the environment's lease") || log.contains("changed hands")
    })
    .await;
    // And a few more rounds, for any pass it might still run.
    let before = server.requests().len();
    until("a few more lease rounds", &[&a, &b], || {
        server.requests()[before..]
            .iter()
            .filter(|r| r.who == "replica-a" && r.path.contains("/leases/"))
            .count()
            >= 4
    })
    .await;

    assert_eq!(
        version(&server, "solo").as_deref(),
        Some("2"),
        "v3 was applied"
    );
    assert_eq!(appliers(&server, "solo"), ["replica-a", "replica-b"]);
    assert_eq!(holder(&server, "solo").as_deref(), Some("replica-b"));
}

/// Electors over the fake server, as a replica builds them.
async fn electors(
    server: &FakeApiServer,
    holders: &[(&str, Duration)],
) -> Vec<driftless::daemon::lease::Elector> {
    use driftless::daemon::lease::{Elector, LeaseSettings, Replica};
    use std::sync::Arc;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path());
    let mut out = Vec::new();
    for (holder, renew_deadline) in holders {
        let file = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .unwrap();
        let settings = Arc::new(LeaseSettings {
            namespace: LEASE_NS.into(),
            kubeconfig: None,
            holder: (*holder).into(),
            duration: Duration::from_secs(1),
            renew_deadline: *renew_deadline,
            retry_period: Duration::from_millis(50),
        });
        out.push(Elector::new(
            "prod",
            kube::Client::try_from(config).unwrap(),
            settings,
            Arc::new(driftless::store::Store::open_in_memory().unwrap()),
            Arc::new(Replica::default()),
        ));
    }
    out
}

/// A graceful shutdown hands the Lease on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_at_once() {
    use driftless::daemon::lease::Step;
    let server = FakeApiServer::start().await;
    let short = Duration::from_millis(500);
    let e = electors(&server, &[("a", short), ("b", short)]).await;
    assert_eq!(e[0].step().await.unwrap(), Step::Acquired);
    assert_eq!(e[1].step().await.unwrap(), Step::Follower);
    e[0].release().await;
    assert!(!e[0].is_leader());
    assert_eq!(holder(&server, "prod"), None);
    // b holds nothing, so it takes a free Lease on its first look.
    assert_eq!(e[1].step().await.unwrap(), Step::Acquired);
    assert_eq!(holder(&server, "prod").as_deref(), Some("b"));
}

/// The fence itself: a replica whose own clock still says it leads (here:
/// a renew deadline of an hour, as a frozen clock would) is stopped by the
/// server-side check — the Lease has another holder and resourceVersion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_reads_the_lease_even_when_the_local_clock_says_leader() {
    use driftless::daemon::lease::{LeaseError, Step};
    let server = FakeApiServer::start().await;
    let e = electors(
        &server,
        &[
            ("a", Duration::from_secs(3600)),
            ("b", Duration::from_millis(500)),
        ],
    )
    .await;
    let (a, b) = (&e[0], &e[1]);
    assert_eq!(a.step().await.unwrap(), Step::Acquired);
    a.fence().await.expect("the holder passes its fence");
    assert_eq!(b.step().await.unwrap(), Step::Follower);
    // a stops renewing; b takes the Lease once it has stayed unchanged for
    // a lease duration on b's clock.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while b.step().await.unwrap() != Step::Acquired {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.is_leader(), "a's local clock still says leader");
    let err = a.fence().await.unwrap_err();
    assert!(
        matches!(&err, LeaseError::ChangedHands { by, .. } if by == "b"),
        "{err}"
    );
    assert!(!a.is_leader(), "a failed fence ends a's leadership");
    b.fence().await.expect("the new holder passes");
    // a's next renewal loses the race instead of overwriting b.
    assert_eq!(a.step().await.unwrap(), Step::Follower);
    assert_eq!(holder(&server, "prod").as_deref(), Some("b"));
}
