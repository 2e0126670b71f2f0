//! The operator surface: `/api/v1`, `/metrics`, the status page and the
//! CLI's `--daemon` mode.
//!
//! Two kinds of tests: the daemon's real router served in-process over a
//! real SQLite store (every route's answers, 401/403 by `api.reads` and
//! token, paging and filters, masking of what the store holds), and a real
//! daemon reconciling a fixture repo against the Docker engine (metrics
//! parsed by `promtool` and by a text-format parser here, the page loaded
//! in headless Chromium with a screenshot, the CLI through the API, and no
//! secret in any answer).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use driftless::daemon::config::{ReadAccess, Secret};
use driftless::daemon::worker::{Dirty, WorkerStats};
use driftless::http::{AppState, EnvEntry, RateLimiter, router};
use driftless::secrets::Masker;
use driftless::store::{Finish, ImageIds, Kind, Outcome, Store, Timings, Trigger};
use serde_json::{Value, json};

const TOKEN: &str = "operator-api-token-5521";
const CANARY: &str = "op-LEAK-CANARY-secret-9173";

/// A non-loopback address of this machine (the one its default route
/// uses): requests from it are not loopback to the server.
fn outside_ip() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("203.0.113.1:9")
        .expect("a default route (to find a non-loopback address)");
    let ip = s.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "this machine has no non-loopback address; the loopback-only read test needs one"
    );
    ip
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// A store with history: `dev` has 7 reconciles (outcomes cycling),
/// `prod` one; one diff holds the canary raw, as if a caller forgot to mask.
fn seeded_store(dir: &std::path::Path) -> (Arc<Store>, Vec<i64>) {
    let store = Store::open(dir).unwrap();
    let outcomes = [Outcome::Healthy, Outcome::Unhealthy, Outcome::Invalid];
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let id = store
            .begin("dev", Trigger::Poll, Kind::Deploy, None, at(i * 10))
            .unwrap();
        let finish = Finish {
            commit: Some(format!("{i:040}")),
            outcome: outcomes[i as usize % 3],
            plan: Some(
                json!({"changes": [{"target": "local", "resource": {"kind": "service", "name": "p/web"}, "action": {"type": "update"}, "diff": format!("-TOKEN: old\n+TOKEN: {CANARY}\n")}]}),
            ),
            diff: Some(format!(
                "plan for dev\n~ local: service p/web  update\n--- live\n+++ desired\n-TOKEN: old\n+TOKEN: {CANARY}\n"
            )),
            error: None,
            image_ids: ImageIds::new(),
            timings: Timings {
                plan_ms: Some(12),
                ..Timings::default()
            },
        };
        store.finish(id, &finish, at(i * 10 + 1)).unwrap();
        ids.push(id);
    }
    store
        .begin("prod", Trigger::Startup, Kind::Deploy, None, at(100))
        .unwrap();
    store
        .set_last_good("dev", &format!("{:040}", 6), &ImageIds::new(), None, at(61))
        .unwrap();
    (Arc::new(store), ids)
}

struct Served {
    base: String,
    outside: String,
    state: Arc<AppState>,
    client: reqwest::Client,
    _task: tokio::task::JoinHandle<()>,
}

async fn serve(store: Arc<Store>, token: Option<&str>, reads: ReadAccess) -> Served {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let envs: BTreeMap<String, EnvEntry> = ["dev", "prod"]
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
        api_token: token.map(Secret::new),
        limiter: RateLimiter::new(1000, 1000),
        ready: true.into(),
        masker: Masker::from_values([CANARY.to_owned(), TOKEN.to_owned()]),
        metrics: Arc::new(driftless::http::metrics::Metrics::new(&names)),
        reads,
        repo: None,
        pages: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app =
        router(state.clone(), 1024 * 1024).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Served {
        base: format!("http://127.0.0.1:{port}"),
        outside: format!("http://{}:{port}", outside_ip()),
        state,
        client: reqwest::Client::new(),
        _task: task,
    }
}

impl Served {
    async fn get(&self, base: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.client.get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> Value {
        let (code, body) = self.get(&self.base, path, None).await;
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(!text.contains(CANARY), "{path}: {text}");
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

const READS: &[&str] = &[
    "/",
    "/metrics",
    "/api/v1/environments",
    "/api/v1/environments/dev",
    "/api/v1/history",
    "/api/v1/reconciles/1",
];

#[tokio::test]
async fn reads_follow_api_reads_and_every_answer_is_masked() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = seeded_store(dir.path());

    // loopback (the default): loopback reads freely; from outside, 403
    // without a token, 401 with a wrong one, 200 with the right one.
    let s = serve(store.clone(), Some(TOKEN), ReadAccess::Loopback).await;
    for path in READS {
        let (code, body) = s.get(&s.base, path, None).await;
        assert_eq!(code, 200, "{path}: {body}");
        assert!(!body.contains(CANARY), "{path} leaks: {body}");
        assert!(!body.contains(TOKEN), "{path} leaks the token");
        let (code, body) = s.get(&s.outside, path, None).await;
        assert_eq!(code, 403, "{path} from outside: {body}");
        assert!(body.contains("loopback"), "{body}");
        let (code, _) = s.get(&s.outside, path, Some("wrong-token-123456")).await;
        assert_eq!(code, 401, "{path} from outside, wrong token");
        let (code, body) = s.get(&s.outside, path, Some(TOKEN)).await;
        assert_eq!(code, 200, "{path} from outside with the token: {body}");
    }
    // healthz is for probes: always open.
    assert_eq!(s.get(&s.outside, "/healthz", None).await.0, 200);

    // token: every read needs it, loopback or not.
    let s = serve(store.clone(), Some(TOKEN), ReadAccess::Token).await;
    for path in READS {
        assert_eq!(s.get(&s.base, path, None).await.0, 401, "{path}");
        assert_eq!(s.get(&s.base, path, Some(TOKEN)).await.0, 200, "{path}");
    }
    // token, but none configured: the API is off (403), reads and writes.
    let s = serve(store.clone(), None, ReadAccess::Token).await;
    for path in READS {
        assert_eq!(s.get(&s.base, path, Some(TOKEN)).await.0, 403, "{path}");
    }
    let (code, body) = s
        .post("/api/v1/environments/dev/suspend", Some(TOKEN), "")
        .await;
    assert_eq!(code, 403, "{body}");
    // open: anyone who reaches the listener reads.
    let s = serve(store.clone(), Some(TOKEN), ReadAccess::Open).await;
    for path in READS {
        assert_eq!(s.get(&s.outside, path, None).await.0, 200, "{path}");
    }
}

#[tokio::test]
async fn history_pages_filters_and_one_reconcile_with_its_plan() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = seeded_store(dir.path());
    let s = serve(store, Some(TOKEN), ReadAccess::Loopback).await;

    // Pages of 3, newest first, following next_before to the end.
    let mut seen = Vec::new();
    let mut path = "/api/v1/history?env=dev&limit=3".to_owned();
    loop {
        let page = s.json(&path).await;
        let rows = page["reconciles"].as_array().unwrap();
        assert!(rows.len() <= 3);
        for r in rows {
            assert_eq!(r["env"], "dev");
            assert!(r["plan"].is_null() && r["diff"].is_null(), "{r}");
            seen.push(r["id"].as_i64().unwrap());
        }
        match page["next_before"].as_i64() {
            Some(b) => path = format!("/api/v1/history?env=dev&limit=3&before={b}"),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    // Filters: outcome, env; both environments without env.
    let bad = s.json("/api/v1/history?outcome=unhealthy").await;
    let got: Vec<i64> = bad["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [ids[4], ids[1]]);
    let all = s.json("/api/v1/history").await;
    assert_eq!(all["reconciles"].as_array().unwrap().len(), 8);
    assert_eq!(all["reconciles"][0]["env"], "prod");
    assert_eq!(all["reconciles"][0]["outcome"], "running");
    let none = s.json("/api/v1/history?env=prod&outcome=healthy").await;
    assert_eq!(none["reconciles"], json!([]));
    assert!(none["next_before"].is_null());

    // Bad queries say what is wrong.
    for (q, needle) in [
        ("limit=0", "limit must be between"),
        ("limit=100000", "limit must be between"),
        ("outcome=great", "unknown outcome"),
        ("before=yesterday", "bad query"),
    ] {
        let (code, body) = s.get(&s.base, &format!("/api/v1/history?{q}"), None).await;
        assert_eq!(code, 400, "{q}: {body}");
        assert!(body.contains(needle), "{q}: {body}");
    }

    // One reconcile: its plan and diff, the canary masked in both.
    let one = s.json(&format!("/api/v1/reconciles/{}", ids[1])).await;
    let r = &one["reconcile"];
    assert_eq!(r["outcome"], "unhealthy");
    assert_eq!(r["timings"]["plan_ms"], 12);
    let diff = r["diff"].as_str().unwrap();
    assert!(diff.contains("+TOKEN: ******"), "{diff}");
    assert!(
        r["plan"]["changes"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+TOKEN: ******"),
        "{r}"
    );
    assert_eq!(s.get(&s.base, "/api/v1/reconciles/9999", None).await.0, 404);
    assert_eq!(s.get(&s.base, "/api/v1/reconciles/abc", None).await.0, 400);

    // Environments: the summary of each.
    let envs = s.json("/api/v1/environments").await;
    let dev = &envs["environments"][0];
    assert_eq!(dev["env"], "dev");
    assert_eq!(dev["current_commit"], format!("{:040}", 6));
    assert_eq!(dev["last_good"]["commit"], format!("{:040}", 6));
    assert_eq!(dev["last_outcome"], "healthy");
    assert_eq!(dev["health"], "healthy");
    assert_eq!(dev["drift"]["in_sync"], true);
    assert_eq!(envs["environments"][1]["env"], "prod");
    assert_eq!(envs["environments"][1]["health"], "unknown");
    let (code, body) = s.get(&s.base, "/api/v1/environments/nope", None).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("does not drive environment `nope`"), "{body}");

    // The page: both environments, the last diff (masked), the history.
    let (_, page) = s.get(&s.base, "/", None).await;
    assert!(page.contains("id=\"env-dev\"") && page.contains("id=\"env-prod\""));
    assert!(page.contains("+TOKEN: ******"), "{page}");
    assert!(!page.contains("<script"), "{page}");
    let (_, older) = s
        .get(&s.base, &format!("/?env=dev&before={}", ids[2]), None)
        .await;
    assert!(older.contains(&format!(">{}</td>", ids[1])), "{older}");
    assert!(!older.contains(&format!(">{}</td>", ids[3])), "{older}");
}

#[tokio::test]
async fn mutations_need_the_token_write_the_control_and_wake_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = seeded_store(dir.path());
    let s = serve(store.clone(), Some(TOKEN), ReadAccess::Loopback).await;
    let dev = s.state.envs["dev"].dirty.clone();
    let routes = ["reconcile", "rollback", "suspend", "resume"];

    // Missing or wrong token: 401, nothing changes, nothing is marked.
    for route in routes {
        let path = format!("/api/v1/environments/dev/{route}");
        assert_eq!(s.post(&path, None, "").await.0, 401, "{route}");
        assert_eq!(s.post(&path, Some("not-the-token-000"), "").await.0, 401);
    }
    assert_eq!(dev.marks(), 0);
    assert_eq!(store.control("dev").unwrap(), Default::default());

    // Unknown environment, bad body.
    let (code, body) = s
        .post("/api/v1/environments/nope/suspend", Some(TOKEN), "")
        .await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = s
        .post("/api/v1/environments/dev/suspend", Some(TOKEN), "[1]")
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = s
        .post(
            "/api/v1/environments/dev/rollback",
            Some(TOKEN),
            r#"{"commit": "abc"}"#,
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("40-character"),
        "{body}"
    );

    // Trigger.
    let (code, _) = s
        .post("/api/v1/environments/dev/reconcile", Some(TOKEN), "")
        .await;
    assert_eq!(code, 202);
    assert_eq!(dev.marks(), 1);

    // Suspend with a reason; a secret in it is masked.
    let (code, body) = s
        .post(
            "/api/v1/environments/dev/suspend",
            Some(TOKEN),
            &json!({"reason": format!("maintenance {CANARY}")}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let c = store.control("dev").unwrap();
    assert_eq!(c.suspended.as_deref(), Some("maintenance ******"));

    // Rollback without a commit: the last good one; with one: that one.
    let (code, body) = s
        .post("/api/v1/environments/dev/rollback", Some(TOKEN), "")
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["commit"], format!("{:040}", 6));
    let target = format!("{:040}", 3);
    let (code, _) = s
        .post(
            "/api/v1/environments/dev/rollback",
            Some(TOKEN),
            &json!({ "commit": target }).to_string(),
        )
        .await;
    assert_eq!(code, 200);
    let c = store.control("dev").unwrap();
    assert_eq!(c.pinned.as_deref(), Some(target.as_str()));
    assert!(c.suspended.is_none(), "a pin lifts the suspension");
    // prod has no last good commit: a rollback must name one.
    let (code, body) = s
        .post("/api/v1/environments/prod/rollback", Some(TOKEN), "{}")
        .await;
    assert_eq!(code, 409, "{body}");

    // Resume, forgetting failed commits.
    store
        .mark_failed("dev", "bad", "unhealthy", at(500))
        .unwrap();
    let (code, _) = s
        .post(
            "/api/v1/environments/dev/resume",
            Some(TOKEN),
            r#"{"retry_failed": true}"#,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(store.control("dev").unwrap(), Default::default());
    assert!(store.failed_commits("dev").unwrap().is_empty());
    assert_eq!(dev.marks(), 5, "every accepted mutation wakes the worker");
    assert_eq!(s.state.envs["prod"].dirty.marks(), 0);
}
