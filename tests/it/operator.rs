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
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use driftless::daemon::config::{ReadAccess, Secret};
use driftless::daemon::worker::{Dirty, WorkerStats};
use driftless::http::server::{Limits, serve as serve_http};
use driftless::http::{AppState, EnvEntry, RateLimiter, router};
use driftless::secrets::Masker;
use driftless::source::CommitId;
use driftless::store::{Finish, ImageIds, Kind, Outcome, Store, Timings, Trigger};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

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
        let commit: CommitId = format!("{i:040}").into();
        let id = store
            .begin(
                "dev",
                &commit,
                Trigger::Poll,
                Kind::Deploy,
                None,
                at(i * 10),
            )
            .unwrap();
        let finish = Finish {
            commit: Some(commit),
            outcome: outcomes[i as usize % 3],
            plan: Some(
                json!({"changes": [{"target": "local", "resource": {"kind": "service", "name": "p/web"}, "action": {"type": "update"}, "diff": format!("-TOKEN: old\n+TOKEN: {CANARY}\n")}]}),
            ),
            diff: Some(format!(
                "plan for dev\n~ local: service p/web  update\n    --- live\n    +++ desired\n    -TOKEN: old\n    +TOKEN: {CANARY}\n"
            )),
            changes: Some(1),
            error: None,
            image_ids: ImageIds::new(),
            digests: Default::default(),
            timings: Timings {
                plan_ms: Some(12),
                ..Timings::default()
            },
        };
        store.finish(id, &finish, at(i * 10 + 1)).unwrap();
        ids.push(id);
    }
    store
        .begin(
            "prod",
            &format!("{:040}", 100).into(),
            Trigger::Startup,
            Kind::Deploy,
            None,
            at(100),
        )
        .unwrap();
    store
        .set_last_good(
            "dev",
            &format!("{:040}", 6).into(),
            &ImageIds::new(),
            None,
            at(61),
        )
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
    serve_on(store, token, reads, None, "0.0.0.0:0", Limits::default()).await
}

/// [`serve`] with a webhook secret, a listen address and the listener's
/// limits: the daemon's own accept loop.
async fn serve_on(
    store: Arc<Store>,
    token: Option<&str>,
    reads: ReadAccess,
    webhook: Option<&str>,
    listen: &str,
    limits: Limits,
) -> Served {
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
        webhook_secret: webhook.map(Secret::new),
        api_token: token.map(Secret::new),
        // With a webhook: a small bucket, 1/s with bursts of 50, so a test
        // can empty it.
        limiter: RateLimiter::new(1, if webhook.is_some() { 50 } else { 1000 }),
        unsigned_limiter: RateLimiter::new(1, if webhook.is_some() { 50 } else { 1000 }),
        ready: true.into(),
        masker: Masker::from_values([CANARY.to_owned(), TOKEN.to_owned()]),
        metrics: Arc::new(driftless::http::metrics::Metrics::new(&names)),
        reads,
        repo: None,
        pages: Default::default(),
        cache: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = router(state.clone(), 1024 * 1024);
    let task = tokio::spawn(serve_http(listener, app, limits, CancellationToken::new()));
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

    // prod has no last good commit: a rollback must name one.
    let (code, body) = s
        .post("/api/v1/environments/prod/rollback", Some(TOKEN), "{}")
        .await;
    assert_eq!(code, 409, "{body}");

    // Trigger, and the first API's path: an alias with the same answer
    // and the same checks.
    let (code, v1) = s
        .post("/api/v1/environments/dev/reconcile", Some(TOKEN), "")
        .await;
    assert_eq!(code, 202, "{v1}");
    assert_eq!(v1, json!({"status": "accepted", "environment": "dev"}));
    assert_eq!(dev.marks(), 1);
    let (code, old) = s
        .post("/api/environments/dev/reconcile", Some(TOKEN), "")
        .await;
    assert_eq!((code, &old), (202, &v1));
    assert_eq!(dev.marks(), 2);
    for (path, token, want) in [
        ("/api/environments/dev/reconcile", None, 401),
        ("/api/environments/nope/reconcile", Some(TOKEN), 404),
    ] {
        let (code, old) = s.post(path, token, "").await;
        let (v1_code, v1) = s.post(&path.replace("/api/", "/api/v1/"), token, "").await;
        assert_eq!((code, &old), (want, &v1), "{path}");
        assert_eq!(v1_code, want, "{path}");
    }
    assert_eq!(dev.marks(), 2);

    // Suspend with a reason; a secret in it is masked.
    let (_, page) = s.get(&s.base, "/", None).await;
    assert!(!page.contains("Suspended:"), "{page}");
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
    // Reads see it at once (the status cache follows the store's writes)…
    let dev_status = s.json("/api/v1/environments/dev").await;
    assert_eq!(dev_status["control"]["suspended"], "maintenance ******");
    let (_, page) = s.get(&s.base, "/", None).await;
    assert!(page.contains("Suspended: maintenance ******"), "{page}");
    // …and another process's writes (a CLI on the state directory).
    let before = s.json("/api/v1/environments/prod").await;
    assert!(before["last_good"].is_null(), "{before}");
    Store::open(dir.path())
        .unwrap()
        .set_last_good(
            "prod",
            &format!("{:040}", 9).into(),
            &ImageIds::new(),
            None,
            at(300),
        )
        .unwrap();
    let after = s.json("/api/v1/environments/prod").await;
    assert_eq!(
        after["last_good"]["commit"],
        format!("{:040}", 9),
        "{after}"
    );

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

    // Resume, forgetting failed commits.
    store
        .mark_failed("dev", &"bad".into(), "unhealthy", at(500))
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
    assert_eq!(dev.marks(), 6, "every accepted mutation wakes the worker");
    assert_eq!(s.state.envs["prod"].dirty.marks(), 0);
}

// ---------------------------------------------------------------------------
// A real daemon on a fixture repo, the real Docker engine.

mod e2e {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    use base64::Engine as _;
    use serde_json::Value;

    use super::outside_ip;
    use crate::daemon_support::{API_TOKEN, Bare, Daemon, Options, cli, sign};
    use crate::docker_support::{BUSYBOX, Cleanup, engine, project_name};

    const SECRET: &str = "tok-OPS-LEAK-CANARY-6061";

    /// Two environments, each its own Compose project from one template;
    /// `extras` per environment land in the service's environment, `broken`
    /// adds a template error.
    fn files(
        envs: &[(String, String)],
        extras: &[&str],
        broken: bool,
    ) -> Vec<(&'static str, String)> {
        let mut manifest =
            "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n"
                .to_owned();
        let mut out = Vec::new();
        for (i, (env, project)) in envs.iter().enumerate() {
            manifest.push_str(&format!(
                "  {env}:\n    values: environments/{env}.yaml\n    targets: [local]\n    health:\n      deadline: 30s\n      settle: 1s\n    drift_interval: 1h\n"
            ));
            let path: &'static str = Box::leak(format!("environments/{env}.yaml").into_boxed_str());
            out.push((path, format!("project: {project}\nextra: {}\n", extras[i])));
        }
        out.push(("driftless.yaml", manifest));
        out.push((
            "compose/stack.yaml.j2",
            format!(
                "name: {{{{ project }}}}\nservices:\n  web:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    environment:\n      TOKEN: \"{{{{ secret('api_token') }}}}\"\n      EXTRA: \"{{{{ extra }}}}{}\"\n",
                if broken { "{{ no_such_value }}" } else { "" }
            ),
        ));
        out
    }

    /// A parsed exposition: family → type, and every sample.
    #[derive(Debug, Default)]
    struct Exposition {
        types: BTreeMap<String, String>,
        samples: Vec<(String, BTreeMap<String, String>, f64)>,
    }

    /// The text format as Prometheus reads it: `# TYPE` lines, samples
    /// `name{label="value",…} value` with `\\`, `\"`, `\n` escapes.
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    e.types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{name} typed twice"
                );
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => panic!("bad sample line {line:?}"),
            };
            let mut labels = BTreeMap::new();
            let mut rest = rest;
            if let Some(r) = rest.strip_prefix('{') {
                let mut chars = r.char_indices().peekable();
                let mut key = String::new();
                let end;
                loop {
                    let (i, c) = chars.next().expect("unterminated labels");
                    match c {
                        '}' => {
                            end = i;
                            break;
                        }
                        ',' => {}
                        '=' => {
                            assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
                            let mut value = String::new();
                            loop {
                                match chars.next().expect("unterminated value").1 {
                                    '\\' => match chars.next().unwrap().1 {
                                        'n' => value.push('\n'),
                                        other => value.push(other),
                                    },
                                    '"' => break,
                                    c => value.push(c),
                                }
                            }
                            labels.insert(std::mem::take(&mut key), value);
                        }
                        c => key.push(c),
                    }
                }
                rest = &r[end + 1..];
            }
            let value = match rest.trim() {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            e.samples.push((name.to_owned(), labels, value));
        }
        e
    }

    impl Exposition {
        fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            self.samples
                .iter()
                .find(|(n, l, _)| {
                    n == name
                        && labels
                            .iter()
                            .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|s| s.2)
        }
    }

    fn chromium() -> &'static str {
        let found = Command::new("chromium").arg("--version").output();
        match found {
            Ok(o) if o.status.success() => "chromium",
            _ => panic!(
                "chromium is required for the status page test and is not installed (apt-get install chromium; .ci/run installs it)"
            ),
        }
    }

    /// Runs headless Chromium on `url` with `args`; returns stdout.
    fn browse(url: &str, args: &[&str], profile: &Path) -> String {
        let out = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn promtool_check(text: &str) {
        use std::io::Write as _;
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package; .ci/run installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_daemon_serves_metrics_the_api_the_page_and_the_cli_without_leaking() {
        let Some(_engine) = engine().await else {
            return;
        };
        let base = project_name("ops");
        let envs: Vec<(String, String)> = ["a", "b"]
            .iter()
            .map(|s| {
                (
                    format!("e{}-{s}", base.trim_start_matches("dlt-")),
                    format!("{base}-{s}"),
                )
            })
            .collect();
        let (a, b) = (envs[0].0.clone(), envs[1].0.clone());
        let _cleanup = Cleanup::new(&[&envs[0].1, &envs[1].1]);
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("api_token"), format!("{SECRET}\n")).unwrap();
        let state = tempfile::tempdir().unwrap();
        let bare = Bare::new(&files(&envs, &["one", "one"], false));
        let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
        let mut d = Daemon::start_on(
            &Options {
                repo: bare.path(),
                env: format!("{a}, {b}"),
                state_dir: state.path().to_owned(),
                secrets_dir: secrets.path().to_owned(),
                poll: "1h",
                watch: true,
                extra: String::new(),
                vars: vec![],
            },
            "0.0.0.0",
        );
        d.ready().await;
        let long = Duration::from_secs(120);
        for env in [&a, &b] {
            d.wait(env, "first deploy", long, |s| {
                s["last_good"]["commit"] == c1.as_str()
            })
            .await;
        }
        // b changes; then a commit that does not render (both invalid).
        let c2 = bare.commit(&files(&envs, &["one", "two"], false), "b: two");
        d.wait(&b, "c2 applied", long, |s| {
            s["last_good"]["commit"] == c2.as_str()
        })
        .await;
        let c3 = bare.commit(&files(&envs, &["one", "two"], true), "broken");
        for env in [&a, &b] {
            d.wait(env, "c3 invalid", long, |s| {
                s["last_reconcile"]["commit"] == c3.as_str()
                    && s["last_reconcile"]["outcome"] == "invalid"
            })
            .await;
        }
        // One webhook request (a signed ping) and one successful backup run.
        let ping = d
            .client()
            .post(d.url("/hooks/github"))
            .header("x-github-event", "ping")
            .header("x-hub-signature-256", sign(b"{}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(ping.status(), 200);
        driftless::store::Store::open(state.path())
            .unwrap()
            .record_backup_run(&driftless::store::BackupRun {
                env: a.clone(),
                job: "db".into(),
                trigger: driftless::store::BackupTrigger::Schedule,
                outcome: driftless::store::BackupOutcome::Succeeded,
                started_at: 1_700_000_000_000,
                finished_at: Some(1_700_000_060_000),
                bytes: Some(4096),
                ..Default::default()
            })
            .unwrap();

        let mut bodies: Vec<(String, String)> = Vec::new();
        let get = |path: String| {
            let c = d.client().clone();
            let url = d.url(&path);
            async move {
                let r = c.get(url).send().await.unwrap();
                let code = r.status().as_u16();
                (code, r.text().await.unwrap())
            }
        };

        // /metrics: promtool accepts it; names, types and labels.
        let (code, text) = get("/metrics".into()).await;
        assert_eq!(code, 200);
        promtool_check(&text);
        let m = parse(&text);
        for (name, kind) in [
            ("driftless_reconciles_total", "counter"),
            ("driftless_reconcile_duration_seconds", "histogram"),
            ("driftless_resources_out_of_sync", "gauge"),
            ("driftless_last_good_commit_info", "gauge"),
            ("driftless_rollbacks_total", "counter"),
            ("driftless_webhook_requests_total", "counter"),
            ("driftless_git_fetch_errors_total", "counter"),
            ("driftless_backup_last_success_timestamp_seconds", "gauge"),
            ("driftless_backup_last_success_duration_seconds", "gauge"),
            ("driftless_backup_last_success_size_bytes", "gauge"),
            ("driftless_backup_overdue", "gauge"),
        ] {
            assert_eq!(
                m.types.get(name).map(String::as_str),
                Some(kind),
                "{name}\n{text}"
            );
        }
        for env in [&a, &b] {
            assert!(
                m.get(
                    "driftless_reconciles_total",
                    &[("env", env), ("outcome", "healthy")]
                ) >= Some(1.0),
                "{text}"
            );
            assert!(
                m.get(
                    "driftless_reconciles_total",
                    &[("env", env), ("outcome", "invalid")]
                ) >= Some(1.0),
                "{text}"
            );
            for phase in ["fetch", "render", "plan", "apply", "verify"] {
                let count = m.get(
                    "driftless_reconcile_duration_seconds_count",
                    &[("env", env), ("phase", phase)],
                );
                assert!(count >= Some(1.0), "{env} {phase}: {text}");
                assert_eq!(
                    m.get(
                        "driftless_reconcile_duration_seconds_bucket",
                        &[("env", env), ("phase", phase), ("le", "+Inf")]
                    ),
                    count
                );
            }
            assert_eq!(
                m.get("driftless_resources_out_of_sync", &[("env", env)]),
                Some(0.0)
            );
            // The invalid commit applied nothing, so later passes that
            // find the last good commit in place roll nothing back.
            assert_eq!(
                m.get("driftless_rollbacks_total", &[("env", env)]),
                Some(0.0),
                "{text}"
            );
        }
        assert_eq!(
            m.get(
                "driftless_last_good_commit_info",
                &[("env", &b), ("commit", &c2)]
            ),
            Some(1.0)
        );
        // a did not change at c2: its last good is c1, or c2 when its
        // worker ran c2 (unchanged) before c3 arrived.
        let a_good: Vec<&String> = m
            .samples
            .iter()
            .filter(|(n, l, _)| n == "driftless_last_good_commit_info" && l["env"] == a)
            .map(|(_, l, _)| &l["commit"])
            .collect();
        assert!(a_good == [&c1] || a_good == [&c2], "{a_good:?}");
        assert_eq!(
            m.get("driftless_webhook_requests_total", &[("outcome", "pong")]),
            Some(1.0)
        );
        assert_eq!(m.get("driftless_git_fetch_errors_total", &[]), Some(0.0));
        assert_eq!(
            m.get(
                "driftless_backup_last_success_timestamp_seconds",
                &[("backup_job", "db"), ("env", &a)]
            ),
            Some(1_700_000_060.0)
        );
        let job = [("backup_job", "db"), ("env", a.as_str())];
        assert_eq!(
            m.get("driftless_backup_last_success_duration_seconds", &job),
            Some(60.0)
        );
        assert_eq!(
            m.get("driftless_backup_last_success_size_bytes", &job),
            Some(4096.0)
        );
        bodies.push(("/metrics".into(), text));
        // A real Prometheus scrapes it.
        let prom = crate::rules::live::Prometheus::start_with(&format!(
            "scrape_configs:\n  - job_name: driftless\n    scrape_interval: 1s\n    static_configs: [{{ targets: [\"127.0.0.1:{}\"] }}]\n",
            d.port
        ));
        let query = format!(
            "{}/api/v1/query?query=driftless_last_good_commit_info%7Benv%3D%22{b}%22%7D",
            prom.url
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let text = d
                .client()
                .get(&query)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let r: Value = serde_json::from_str(&text).unwrap();
            if let Some(series) = r["data"]["result"].as_array().filter(|a| !a.is_empty()) {
                assert_eq!(series[0]["metric"]["commit"], c2.as_str(), "{r}");
                assert_eq!(series[0]["metric"]["job"], "driftless", "{r}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus never scraped the daemon: {r}\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        drop(prom);

        // The API: both environments as they are.
        let (code, text) = get("/api/v1/environments".into()).await;
        assert_eq!(code, 200, "{text}");
        let doc: Value = serde_json::from_str(&text).unwrap();
        let eb = doc["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["env"] == b.as_str())
            .unwrap()
            .clone();
        assert_eq!(eb["current_commit"], c2.as_str(), "{eb:#}");
        assert_eq!(eb["last_good"]["commit"], c2.as_str());
        // invalid, or unchanged when a second trigger re-applied c2.
        assert!(
            eb["last_outcome"] == "invalid" || eb["last_outcome"] == "unchanged",
            "{eb:#}"
        );
        assert_eq!(eb["health"], "healthy");
        assert_eq!(eb["drift"]["in_sync"], true);
        bodies.push(("/api/v1/environments".into(), text));
        for env in [&a, &b] {
            let (code, text) = get(format!("/api/v1/environments/{env}")).await;
            assert_eq!(code, 200);
            bodies.push((format!("/api/v1/environments/{env}"), text));
        }
        let (_, text) = get(format!("/api/v1/history?env={b}&outcome=invalid")).await;
        let page: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(page["reconciles"].as_array().unwrap().len(), 1, "{page:#}");
        assert_eq!(page["reconciles"][0]["commit"], c3.as_str());
        let (_, text) = get("/api/v1/history?limit=500".into()).await;
        let all: Value = serde_json::from_str(&text).unwrap();
        bodies.push(("/api/v1/history".into(), text));
        let deploy_c2 = all["reconciles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["env"] == b.as_str() && r["commit"] == c2.as_str())
            .expect("c2's reconcile")["id"]
            .clone();
        for r in all["reconciles"].as_array().unwrap() {
            let (code, text) = get(format!("/api/v1/reconciles/{}", r["id"])).await;
            assert_eq!(code, 200);
            bodies.push((format!("/api/v1/reconciles/{}", r["id"]), text));
        }
        let (_, text) = get(format!("/api/v1/reconciles/{deploy_c2}")).await;
        let one: Value = serde_json::from_str(&text).unwrap();
        let diff = one["reconcile"]["diff"].as_str().unwrap().to_owned();
        assert!(diff.contains("two"), "{diff}");
        assert!(
            one["reconcile"]["plan"]["changes"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        );
        // From a non-loopback address reads need the token.
        let outside = format!("http://{}:{}/api/v1/environments", outside_ip(), d.port);
        let r = d.client().get(&outside).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let r = d
            .client()
            .get(&outside)
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = d
            .client()
            .post(d.url(&format!("/api/v1/environments/{a}/suspend")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        // The page in a real browser: every environment, the last diff.
        let (code, text) = get("/".into()).await;
        assert_eq!(code, 200);
        bodies.push(("/".into(), text));
        let profile = tempfile::tempdir().unwrap();
        let dom = browse(&d.url("/"), &["--dump-dom"], profile.path());
        for env in [&a, &b] {
            assert!(
                dom.contains(&format!("id=\"env-{env}\"")),
                "{env} missing:\n{dom}"
            );
        }
        assert!(dom.contains("Last plan"), "{dom}");
        let added: Vec<&str> = dom
            .lines()
            .filter(|l| l.contains("class=\"add\""))
            .collect();
        assert!(
            added
                .iter()
                .any(|l| l.contains("EXTRA") && l.contains("two")),
            "{added:#?}\n{dom}"
        );
        assert!(dom.contains(&c2[..12]), "{dom}");
        bodies.push(("chromium DOM".into(), dom));
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
        std::fs::create_dir_all(&shots).unwrap();
        for (name, size) in [("phone", "390,1400"), ("desktop", "1280,1000")] {
            let png = shots.join(format!("{name}.png"));
            let _ = std::fs::remove_file(&png);
            browse(
                &d.url("/"),
                &[
                    &format!("--screenshot={}", png.display()),
                    &format!("--window-size={size}"),
                ],
                profile.path(),
            );
            let bytes = std::fs::read(&png)
                .unwrap_or_else(|e| panic!("no screenshot {}: {e}", png.display()));
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
                "{}",
                png.display()
            );
            eprintln!("status page screenshot: {}", png.display());
        }

        // The CLI through the API.
        let token_dir = tempfile::tempdir().unwrap();
        let token_file = token_dir.path().join("token");
        std::fs::write(&token_file, format!("{API_TOKEN}\n")).unwrap();
        let url = d.url("");
        let tf = token_file.to_str().unwrap();
        let (code, out, err) = cli(&["status", "--daemon", &url, "--token-file", tf]);
        assert_eq!(code, 0, "{err}");
        for env in [&a, &b] {
            assert!(out.contains(&format!("{env}: healthy at ")), "{out}");
        }
        bodies.push(("cli status".into(), out));
        let (code, out, err) = cli(&["history", "--daemon", &url, "--env", &b, "--output", "json"]);
        assert_eq!(code, 0, "{err}");
        let h: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(h["last_good"]["commit"], c2.as_str());
        assert!(
            h["reconciles"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["commit"] == c2.as_str())
        );
        bodies.push(("cli history".into(), out));
        // Without the token a mutation is refused, and says why.
        let (code, _, err) = cli(&["suspend", "--daemon", &url, "--env", &a]);
        assert_eq!(code, 1);
        assert!(err.contains("401"), "{err}");
        let (code, out, err) = cli(&[
            "suspend",
            "--daemon",
            &url,
            "--token-file",
            tf,
            "--env",
            &a,
            "--reason",
            "maintenance",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("suspended"), "{out}");
        d.wait(&a, "suspended", long, |s| {
            s["control"]["suspended"] == "maintenance"
        })
        .await;
        // Roll b back to c1 by its short id (the daemon resolves it).
        let (code, out, err) = cli(&[
            "rollback",
            "--daemon",
            &url,
            "--token-file",
            tf,
            "--env",
            &b,
            "--to",
            &c1[..8],
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&c1), "{out}");
        d.wait(&b, "pinned c1 applied", long, |s| {
            s["control"]["pinned"] == c1.as_str()
                && s["last_reconcile"]["commit"] == c1.as_str()
                && s["last_reconcile"]["outcome"] == "healthy"
        })
        .await;
        for env in [&a, &b] {
            let (code, _, err) =
                cli(&["resume", "--daemon", &url, "--token-file", tf, "--env", env]);
            assert_eq!(code, 0, "{err}");
            d.wait(env, "resumed", long, |s| {
                s["control"]["pinned"].is_null() && s["control"]["suspended"].is_null()
            })
            .await;
        }
        // Without --daemon, the state directory (reads need no lock).
        let (code, out, err) = cli(&[
            "status",
            "--state-dir",
            state.path().to_str().unwrap(),
            "--output",
            "json",
        ]);
        assert_eq!(code, 0, "{err}");
        let st: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(st["environments"].as_array().unwrap().len(), 2, "{st:#}");
        bodies.push(("cli status (state dir)".into(), out));

        // No secret in any answer, page, DOM or CLI output.
        let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        for (name, body) in &bodies {
            assert!(!body.contains(SECRET), "secret in {name}");
            assert!(!body.contains(&b64), "base64 secret in {name}");
            assert!(
                !body.contains("OPS-LEAK-CANARY"),
                "part of the secret in {name}"
            );
        }
        assert!(
            bodies
                .iter()
                .any(|(_, b)| b.contains("TOKEN") && b.contains("******")),
            "the masked secret shows as ******"
        );
        d.signal("TERM");
        assert_eq!(d.wait_exit(Duration::from_secs(60)).await, Some(0));
    }
}

/// The CLI finds the daemon and the token in `DRIFTLESS_DAEMON` and
/// `DRIFTLESS_TOKEN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_daemon_and_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = seeded_store(dir.path());
    let s = serve(store.clone(), Some(TOKEN), ReadAccess::Loopback).await;
    let run = |args: &'static [&'static str], token: Option<&'static str>| {
        let base = s.base.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(crate::daemon_support::binary());
            cmd.args(args);
            for (k, _) in std::env::vars() {
                if k.starts_with("DRIFTLESS_") {
                    cmd.env_remove(k);
                }
            }
            cmd.env("DRIFTLESS_DAEMON", base);
            if let Some(t) = token {
                cmd.env("DRIFTLESS_TOKEN", t);
            }
            let out = cmd.output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (code, out, err) = run(&["status", "--output", "json"], None).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["environments"].as_array().unwrap().len(), 2, "{doc}");
    let (code, _, err) = run(&["suspend", "--env", "dev"], None).await.unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
    let (code, out, err) = run(
        &["suspend", "--env", "dev", "--reason", "db upgrade"],
        Some(TOKEN),
    )
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("dev: suspended"), "{out}");
    assert_eq!(
        store.control("dev").unwrap().suspended.as_deref(),
        Some("db upgrade")
    );
    let (code, out, err) = run(&["history", "--env", "dev", "--limit", "2"], None)
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("suspended: db upgrade"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with('#')).count(),
        2,
        "{out}"
    );
}

const HOOK: &str = "operator-hook-secret-4411";

/// The seeded store served with the token and `api.reads: loopback`, the
/// daemon's defaults, on `listen` with `limits` (and a webhook secret).
async fn loopback_server(
    webhook: Option<&str>,
    listen: &str,
    limits: Limits,
) -> (tempfile::TempDir, Served) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = seeded_store(dir.path());
    let s = serve_on(
        store,
        Some(TOKEN),
        ReadAccess::Loopback,
        webhook,
        listen,
        limits,
    )
    .await;
    (dir, s)
}

fn hook_signature(body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn hook(s: &Served, event: &str, delivery: &str, body: &str, signed: bool) -> u16 {
    let mut req = s
        .client
        .post(format!("{}/hooks/github", s.base))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .body(body.to_owned());
    if signed {
        req = req.header("x-hub-signature-256", hook_signature(body.as_bytes()));
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn forged_webhooks_never_rate_limit_a_signed_push() {
    let (_dir, s) = loopback_server(Some(HOOK), "127.0.0.1:0", Limits::default()).await;
    // 300 unsigned requests: refused, and once their own bucket is empty, 429.
    let mut codes = BTreeMap::new();
    for i in 0..300 {
        let code = hook(&s, "ping", &format!("forged-{i}"), "{}", false).await;
        *codes.entry(code).or_insert(0) += 1;
    }
    assert_eq!(
        codes.keys().copied().collect::<Vec<_>>(),
        [401, 429],
        "{codes:?}"
    );
    // A correctly signed delivery right after still gets through.
    assert_eq!(hook(&s, "ping", "signed-1", "{}", true).await, 200);
}

#[tokio::test]
async fn a_delivery_refused_as_malformed_is_read_again_when_redelivered() {
    let (_dir, s) = loopback_server(Some(HOOK), "127.0.0.1:0", Limits::default()).await;
    s.state
        .branches
        .write()
        .unwrap()
        .insert("main".into(), vec!["dev".into()]);
    assert_eq!(hook(&s, "push", "d-1", "{not json", true).await, 400);
    let push = r#"{"ref": "refs/heads/main"}"#;
    assert_eq!(hook(&s, "push", "d-1", push, true).await, 202);
    assert!(s.state.envs["dev"].dirty.is_pending());
    // The same delivery a second time is the replay.
    assert_eq!(hook(&s, "push", "d-1", push, true).await, 200);
}

#[tokio::test]
async fn token_less_reads_need_a_loopback_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = seeded_store(dir.path());
    let s = serve(store, Some(TOKEN), ReadAccess::Loopback).await;
    for path in READS {
        // A browser page from a rebinding name reaches 127.0.0.1 with its Host.
        let r = s
            .client
            .get(format!("{}{path}", s.base))
            .header("host", "rebind.attacker.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
        let r = s
            .client
            .get(format!("{}{path}", s.base))
            .header("host", "rebind.attacker.example")
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} with the token");
        let r = s
            .client
            .get(format!("{}{path}", s.base))
            .header("host", "localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} as localhost");
    }
}

#[tokio::test]
async fn a_dual_stack_listener_serves_ipv4_loopback_as_loopback() {
    let (_dir, s) = loopback_server(None, "[::]:0", Limits::default()).await;
    for path in READS {
        let (code, body) = s.get(&s.base, path, None).await;
        assert_eq!(code, 200, "{path} from 127.0.0.1 on [::]: {body}");
    }
}

#[tokio::test]
async fn every_answer_forbids_content_sniffing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = seeded_store(dir.path());
    let s = serve(store, Some(TOKEN), ReadAccess::Loopback).await;
    for path in READS
        .iter()
        .chain(&["/healthz", "/readyz", "/no-such-route"])
    {
        let r = s
            .client
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}"
        );
    }
    let r = s
        .client
        .get(format!("{}/", s.outside))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().contains_key("x-content-type-options"));
}

/// Reads a connection until the server closes it; `None` if it stays open
/// for `patience`.
async fn closed_within(stream: &mut tokio::net::TcpStream, patience: Duration) -> Option<()> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(patience, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_and_the_page_still_answers() {
    use tokio::io::AsyncWriteExt;
    driftless::http::server::raise_nofile_limit();
    let limits = Limits {
        header_read: Duration::from_secs(2),
        request: Duration::from_secs(2),
        connections: 2048,
    };
    let (_dir, s) = loopback_server(None, "127.0.0.1:0", limits).await;
    let addr = s.base.trim_start_matches("http://").to_owned();

    // 1,100 sockets that never send a byte: the page still answers.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let (code, _) = s.get(&s.base, "/", None).await;
    assert_eq!(code, 200);
    // A slow-loris head, and a body trickled after a whole head.
    let mut loris = tokio::net::TcpStream::connect(&addr).await.unwrap();
    loris
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(b"POST /api/v1/environments/dev/suspend HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nx")
        .await
        .unwrap();
    // The server closes every one of them (a generous bound: the limits are 2 s).
    let patience = Duration::from_secs(30);
    assert!(
        closed_within(&mut loris, patience).await.is_some(),
        "slow head kept open"
    );
    assert!(
        closed_within(&mut trickle, patience).await.is_some(),
        "trickled body kept open"
    );
    for (i, c) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(c, patience).await.is_some(),
            "idle socket {i} kept open"
        );
    }
}

#[tokio::test]
async fn past_the_connection_cap_a_request_waits_for_a_slot_and_is_answered() {
    let limits = Limits {
        header_read: Duration::from_secs(1),
        request: Duration::from_secs(5),
        connections: 4,
    };
    let (_dir, s) = loopback_server(None, "127.0.0.1:0", limits).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // All four slots are held by idle sockets: the request is answered once
    // the header timeout frees one, not refused and not left hanging.
    let (code, _) = s.get(&s.base, "/healthz", None).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn readyz_says_not_ready_while_an_environment_waits_out_an_unreachable_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = seeded_store(dir.path());
    let s = serve(store, Some(TOKEN), ReadAccess::Loopback).await;
    assert_eq!(s.get(&s.base, "/readyz", None).await.0, 200);
    *s.state.envs["prod"].stats.last_error.lock().unwrap() =
        Some("Docker engine unreachable".into());
    let (code, body) = s.get(&s.base, "/readyz", None).await;
    assert_eq!(code, 503);
    assert!(body.contains("prod") && !body.contains("dev"), "{body}");
    *s.state.envs["prod"].stats.last_error.lock().unwrap() = None;
    assert_eq!(s.get(&s.base, "/readyz", None).await.0, 200);
}
