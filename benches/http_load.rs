//! Status page and API latency under 200 concurrent clients, outside CI:
//! `cargo bench --bench http_load`.
//!
//! Serves the daemon's real router (file-backed SQLite store in WAL mode,
//! the masker, minijinja page) on 127.0.0.1 over a store holding a
//! realistic history: 3 environments × 2,000 reconciles, each with a plan
//! of 20 services and a diff. The load: Debian's `wrk` when installed
//! (`wrk -t2 -c200 -d10s --latency`: 200 connections, each keeping one
//! request in flight), else 200 tokio client tasks doing `PER_CLIENT`
//! requests each — either on the same 2 cores as the server. Prints p50 /
//! p99 latency and throughput per route.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use driftless::daemon::config::{ReadAccess, Secret};
use driftless::daemon::worker::{Dirty, WorkerStats};
use driftless::http::{AppState, EnvEntry, RateLimiter, router};
use driftless::secrets::Masker;
use driftless::store::{Finish, ImageIds, Kind, Outcome, Store, Timings, Trigger};

const CLIENTS: usize = 200;
const PER_CLIENT: usize = 25;
const ENVS: &[&str] = &["dev", "staging", "prod"];
const ROWS: u64 = 2000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn seed(store: &Store) {
    let services = 20;
    let diff: String = (0..services)
        .map(|i| {
            format!(
                "± local: service app/svc{i}  recreate (config changed)\n    --- live\n    +++ desired\n    @@ -1,3 +1,3 @@\n     image: registry/svc{i}:1\n    -  LEVEL: info\n    +  LEVEL: debug\n       TOKEN: ******\n"
            )
        })
        .collect();
    let plan = serde_json::json!({"changes": (0..services).map(|i| serde_json::json!({
        "target": "local", "resource": {"kind": "service", "name": format!("app/svc{i}")},
        "action": {"type": "recreate", "reason": "config changed"}, "diff": "-  LEVEL: info\n+  LEVEL: debug\n"
    })).collect::<Vec<_>>()});
    for env in ENVS {
        for i in 0..ROWS {
            let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i * 60);
            let commit: driftless::source::CommitId = format!("{i:040x}").into();
            let id = store
                .begin(env, &commit, Trigger::Poll, Kind::Deploy, None, t)
                .unwrap();
            let finish = Finish {
                commit: Some(commit),
                outcome: if i % 10 == 3 {
                    Outcome::Unhealthy
                } else {
                    Outcome::Healthy
                },
                plan: Some(plan.clone()),
                diff: Some(format!("plan for {env}\n{diff}")),
                changes: plan["changes"].as_array().map(|c| c.len() as u32),
                error: None,
                image_ids: ImageIds::new(),
                digests: Default::default(),
                timings: Timings {
                    plan_ms: Some(40),
                    apply_ms: Some(900),
                    ..Timings::default()
                },
            };
            store
                .finish(id, &finish, t + Duration::from_secs(2))
                .unwrap();
        }
        store
            .set_last_good(
                env,
                &format!("{:040x}", ROWS - 1).into(),
                &ImageIds::new(),
                None,
                SystemTime::now(),
            )
            .unwrap();
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        seed(&store);
        let envs: BTreeMap<String, EnvEntry> = ENVS
            .iter()
            .map(|e| {
                (
                    (*e).to_owned(),
                    EnvEntry {
                        dirty: Arc::new(Dirty::default()),
                        stats: Arc::new(WorkerStats::default()),
                    },
                )
            })
            .collect();
        let names: Vec<String> = envs.keys().cloned().collect();
        let state = Arc::new(AppState {
            envs,
            branches: Arc::new(RwLock::new(BTreeMap::new())),
            store,
            webhook_secret: None,
            api_token: Some(Secret::new("bench-api-token-123")),
            limiter: RateLimiter::new(1000, 1000),
            unsigned_limiter: RateLimiter::new(1000, 1000),
            ready: true.into(),
            // The daemon always has some secrets to mask.
            masker: Masker::from_values(
                (0..20).map(|i| format!("bench-secret-value-{i:04}")),
            ),
            metrics: Arc::new(driftless::http::metrics::Metrics::new(&names)),
            reads: ReadAccess::Loopback,
            repo: None,
            pages: Default::default(),
        cache: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let app = router(state, 1024 * 1024).into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).await.unwrap();
        });
        for path in [
            "/",
            "/api/v1/environments",
            "/api/v1/history?limit=50",
            "/api/v1/reconciles/1000",
            "/metrics",
        ] {
            let url = format!("{base}{path}");
            if let Some(line) = wrk(&url).await {
                println!("{path:<28} {line}");
                continue;
            }
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(CLIENTS)
                .build()
                .unwrap();
            // Warm up: connections, statement cache.
            for _ in 0..20 {
                client.get(&url).send().await.unwrap().bytes().await.unwrap();
            }
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..CLIENTS {
                let (client, url) = (client.clone(), url.clone());
                tasks.spawn(async move {
                    let mut took = Vec::with_capacity(PER_CLIENT);
                    for _ in 0..PER_CLIENT {
                        let t = Instant::now();
                        let r = client.get(&url).send().await.unwrap();
                        assert!(r.status().is_success(), "{url}: {}", r.status());
                        let body = r.bytes().await.unwrap();
                        assert!(!body.is_empty());
                        took.push(t.elapsed());
                    }
                    took
                });
            }
            let mut all = Vec::with_capacity(CLIENTS * PER_CLIENT);
            while let Some(t) = tasks.join_next().await {
                all.extend(t.unwrap());
            }
            let wall = started.elapsed();
            all.sort();
            println!(
                "{path:<28} p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}  {:>6.0} req/s  (n={}, {CLIENTS} concurrent)",
                percentile(&all, 0.5),
                percentile(&all, 0.99),
                all[all.len() - 1],
                all.len() as f64 / wall.as_secs_f64(),
                all.len()
            );
        }
    });
}

/// Runs `wrk` on `url` (`None` when it is not installed); returns its
/// p50, p99 and requests per second.
async fn wrk(url: &str) -> Option<String> {
    let url = url.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("wrk")
            .args(["-t2", "-c200", "-d10s", "--latency", &url])
            .output()
    })
    .await
    .unwrap()
    .ok()?;
    assert!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no `{prefix}` in wrk's output:\n{text}"))
    };
    assert!(!text.contains("Non-2xx"), "errors:\n{text}");
    Some(format!(
        "p50 {:>8}  p99 {:>8}  {:>9} req/s  (wrk, 200 connections, 10 s)",
        field("50%"),
        field("99%"),
        field("Requests/sec:")
    ))
}
