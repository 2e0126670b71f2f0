//! The Kubernetes backend against the in-process fake API server
//! (`tests/it/fake_apiserver.rs`): a no-op plan of 1,000 unchanged objects
//! (target: under 1 s), and a plan where all 1,000 changed — 1,000 dry-run
//! applies — at the default 50 QPS / burst 100 and with the limit lifted.
//! Before the criterion runs it prints the client-side CPU time of one plan
//! of each kind (the client runs on its own thread; the fake server on
//! another, so its work is not counted).
//!
//! Run: `cargo bench --bench kube` (the 50 QPS group takes about 4 min).

#[path = "../tests/it/fake_apiserver.rs"]
#[allow(dead_code)]
mod fake_apiserver;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use driftless::backend::kube::KubeBackend;
use driftless::backend::{Backend, Context};
use driftless::manifest::{Allow, KubernetesTarget, Target, TargetKind};
use driftless::model::{KubeObject, Origin, Resources, TargetState};
use driftless::plan::Action;
use driftless::secrets::Masker;
use fake_apiserver::FakeApiServer;
use serde_json::json;

const OBJECTS: usize = 1000;

/// 1,000 objects in namespace `bench`: ConfigMaps, Secrets, Services and
/// Deployments, a quarter each; `version` goes into each of them.
fn objects(version: u32) -> Vec<KubeObject> {
    let mut out = vec![KubeObject {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        name: "bench".into(),
        namespace: None,
        body: json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
        origin: Origin::default(),
    }];
    for i in 0..OBJECTS - 1 {
        let name = format!("app-{i:04}");
        let (api_version, kind, body) = match i % 4 {
            0 => (
                "v1",
                "ConfigMap",
                json!({"data": {"VERSION": version.to_string(), "LOG_LEVEL": "info"}}),
            ),
            1 => (
                "v1",
                "Secret",
                json!({"data": {"TOKEN": format!("dG9rZW4t{version}")}}),
            ),
            2 => (
                "v1",
                "Service",
                json!({"spec": {"selector": {"app": name}, "ports": [
                {"name": "http", "port": 80 + version, "targetPort": 8080}]}}),
            ),
            _ => (
                "apps/v1",
                "Deployment",
                json!({"spec": {"selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                    {"name": "app", "image": format!("registry.example.com/app:{version}"),
                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}}}),
            ),
        };
        let mut body = body;
        body["apiVersion"] = json!(api_version);
        body["kind"] = json!(kind);
        body["metadata"] = json!({"name": name, "namespace": "bench", "labels": {"app": name}});
        out.push(KubeObject {
            api_version: api_version.into(),
            kind: kind.into(),
            name,
            namespace: Some("bench".into()),
            body,
            origin: Origin::default(),
        });
    }
    out
}

fn target(kubeconfig: &str, qps: f32, burst: u32, objects: Vec<KubeObject>) -> TargetState {
    TargetState {
        target: Target {
            name: "bench".into(),
            owner: None,
            kind: TargetKind::Kubernetes(KubernetesTarget {
                kubeconfig: Some(kubeconfig.into()),
                context: None,
                namespace: "bench".into(),
                qps,
                burst,
            }),
        },
        resources: Resources::Kubernetes(objects),
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Bench {
    client: tokio::runtime::Runtime,
    _server_rt: tokio::runtime::Runtime,
    _server: FakeApiServer,
    _dir: tempfile::TempDir,
    kubeconfig: String,
}

impl Bench {
    fn new() -> Bench {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = server_rt.block_on(FakeApiServer::start());
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.kubeconfig(dir.path()).to_str().unwrap().to_owned();
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bench = Bench {
            client,
            _server_rt: server_rt,
            _server: server,
            _dir: dir,
            kubeconfig,
        };
        // Apply version 1 of everything with no rate limit.
        let t = target(&bench.kubeconfig, 0.0, 1, objects(1));
        bench.client.block_on(async {
            let b = backend(&t).await;
            let allow = Allow::default();
            let masker = Masker::default();
            let ctx = Context {
                environment: "bench",
                masker: &masker,
                allow: &allow,
                owner: driftless::backend::Owner::new("bench@test"),
                progress: None,
            };
            let live = b.read_live(&t, ctx).await.unwrap();
            let plan = b.plan(&t, &live, ctx).await.unwrap();
            b.apply(&t, &plan, ctx).await.unwrap();
        });
        bench
    }

    /// One read-live + plan; returns (changed objects, requests sent).
    fn plan(&self, t: &TargetState, b: &KubeBackend) -> (usize, u64) {
        self.client.block_on(async {
            let before = b.requests_sent();
            let allow = Allow::default();
            let masker = Masker::default();
            let ctx = Context {
                environment: "bench",
                masker: &masker,
                allow: &allow,
                owner: driftless::backend::Owner::new("bench@test"),
                progress: None,
            };
            let live = b.read_live(t, ctx).await.unwrap();
            let plan = b.plan(t, &live, ctx).await.unwrap();
            let changed = plan
                .iter()
                .filter(|c| c.action != Action::Unchanged)
                .count();
            (changed, b.requests_sent() - before)
        })
    }
}

async fn backend(t: &TargetState) -> KubeBackend {
    let TargetKind::Kubernetes(k) = &t.target.kind else {
        unreachable!()
    };
    KubeBackend::connect(&t.target.name, k).await.unwrap()
}

fn report(bench: &Bench, label: &str, t: &TargetState) {
    let b = bench.client.block_on(backend(t));
    bench.plan(t, &b); // discovery warm, bucket drained as it would be
    std::thread::sleep(Duration::from_secs(3)); // let the bucket refill
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let (changed, requests) = bench.plan(t, &b);
    eprintln!(
        "{label}: {changed} changed, {requests} requests, {:.3} s wall, {:.3} s client CPU",
        wall.elapsed().as_secs_f64(),
        (thread_cpu() - cpu).as_secs_f64()
    );
}

fn kube(c: &mut Criterion) {
    let bench = Bench::new();
    let unchanged = target(&bench.kubeconfig, 50.0, 100, objects(1));
    let changed_default = target(&bench.kubeconfig, 50.0, 100, objects(2));
    let changed_raised = target(&bench.kubeconfig, 0.0, 1, objects(2));
    report(&bench, "no-op plan, 1,000 objects, 50 QPS", &unchanged);
    report(
        &bench,
        "all changed, 1,000 objects, no limit",
        &changed_raised,
    );
    report(
        &bench,
        "all changed, 1,000 objects, 50 QPS burst 100",
        &changed_default,
    );

    let mut g = c.benchmark_group("kube");
    g.sample_size(20);
    let b = bench.client.block_on(backend(&unchanged));
    g.bench_function("noop_plan_1000_objects", |it| {
        it.iter(|| assert_eq!(bench.plan(&unchanged, &b).0, 0))
    });
    let b = bench.client.block_on(backend(&changed_raised));
    g.sample_size(10);
    g.bench_function("all_changed_plan_1000_objects_unlimited", |it| {
        it.iter(|| assert_eq!(bench.plan(&changed_raised, &b).0, OBJECTS - 1))
    });
    g.measurement_time(Duration::from_secs(200));
    let b = bench.client.block_on(backend(&changed_default));
    g.bench_function("all_changed_plan_1000_objects_50qps", |it| {
        it.iter(|| assert_eq!(bench.plan(&changed_default, &b).0, OBJECTS - 1))
    });
    g.finish();
}

criterion_group!(benches, kube);
criterion_main!(benches);
