//! The daemon's HTTP surface (axum, one listener): the GitHub webhook,
//! `/healthz`, `/readyz`, `/metrics` ([`metrics`]), the JSON API under
//! `/api/v1` ([`api`]), the status page at `/` ([`status`]), and the first
//! API (`GET /api/environments`, and `POST /api/environments/{env}/reconcile`
//! as an alias of `/api/v1`'s trigger; kept for existing callers).
//!
//! Handlers are thin: they check the request, read the store or mark
//! environments dirty, and answer. None of them fetches, renders or applies
//! anything. Reads never write; every body passes the daemon's [`Masker`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

use crate::daemon::config::{ReadAccess, Secret};
use crate::daemon::worker::{Dirty, WorkerStats};
use crate::secrets::Masker;
use crate::store::Store;

pub mod api;
pub mod client;
pub mod metrics;
pub mod server;
pub mod status;
pub mod webhook;

/// One driven environment, as the HTTP side sees it.
#[derive(Debug, Clone)]
pub struct EnvEntry {
    pub dirty: Arc<Dirty>,
    pub stats: Arc<WorkerStats>,
}

/// Shared state of every handler.
#[derive(Debug)]
pub struct AppState {
    pub envs: BTreeMap<String, EnvEntry>,
    /// Branch → the driven environments that follow it (refreshed by the
    /// poll loop from the root manifest).
    pub branches: Arc<RwLock<BTreeMap<String, Vec<String>>>>,
    pub store: Arc<Store>,
    pub webhook_secret: Option<Secret>,
    pub api_token: Option<Secret>,
    /// Signed webhook deliveries.
    pub limiter: RateLimiter,
    /// Webhook requests whose signature fails: a bucket of their own, so
    /// forgeries never spend the signed deliveries' budget.
    pub unsigned_limiter: RateLimiter,
    pub ready: AtomicBool,
    pub masker: Masker,
    /// Counters the workers and handlers update; `/metrics` shows them.
    pub metrics: Arc<metrics::Metrics>,
    /// Who may read the page, `/metrics` and the API's GET routes.
    pub reads: ReadAccess,
    /// The repo, to resolve a rollback's commit (`None`: full ids only).
    pub repo: Option<Arc<crate::daemon::repo::RepoHandle>>,
    /// The status page's templates.
    pub pages: status::Pages,
    /// What reads derive from the store, kept until the store changes.
    pub cache: StatusCache,
}

/// Answers of read routes (`GET /`, `GET /api/v1/…`), masked, by URI; kept
/// while the store generation, the workers' states and the second (the
/// page shows the time) are unchanged. Under load, each distinct read costs
/// one build per change, not one per request.
#[derive(Debug, Default)]
pub struct BodyCache {
    inner: Mutex<(Option<ReadKey>, Answers)>,
}

/// Cached answers by URI: headers and body.
type Answers = std::collections::HashMap<String, (HeaderMap, axum::body::Bytes)>;

/// Most answers the [`BodyCache`] keeps per key.
const BODY_CACHE_ENTRIES: usize = 256;

/// What every read answer depends on besides its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReadKey {
    generation: Generation,
    /// Per environment: the worker's status, and whether a pass is pending.
    workers: Vec<(crate::daemon::worker::WorkerStatus, bool)>,
    second: i64,
}

async fn read_key(s: &AppState) -> Option<ReadKey> {
    Some(ReadKey {
        generation: s.store.call(|s| s.generation()).await.ok()?,
        workers: s
            .envs
            .values()
            .map(|e| (e.stats.snapshot(), e.dirty.is_pending()))
            .collect(),
        second: crate::store::millis(std::time::SystemTime::now()) / 1000,
    })
}

/// The read cache as a layer: checks read access first (a cached answer is
/// never served to a caller who may not read), then answers from the cache
/// or runs the handler and keeps a 200 answer.
async fn read_cache(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.method() != axum::http::Method::GET {
        return next.run(req).await;
    }
    if let Err(r) = read_allowed(&s, caller, req.headers()) {
        return r;
    }
    let uri = req.uri().to_string();
    let key = read_key(&s).await;
    {
        let cache = s
            .cache
            .bodies
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if key.is_some()
            && cache.0 == key
            && let Some((headers, body)) = cache.1.get(&uri)
        {
            return (StatusCode::OK, headers.clone(), body.clone()).into_response();
        }
    }
    let resp = next.run(req).await;
    let Some(key) = key.filter(|_| resp.status() == StatusCode::OK) else {
        return resp;
    };
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "answer too large\n").into_response();
    };
    {
        let mut cache = s
            .cache
            .bodies
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.0.as_ref() != Some(&key) {
            *cache = (Some(key), Default::default());
        }
        if cache.1.len() < BODY_CACHE_ENTRIES {
            cache.1.insert(uri, (parts.headers.clone(), bytes.clone()));
        }
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The store-derived status of every driven environment: its summary and
/// last plan. Rebuilt only when [`Store::generation`] moves, so the page,
/// the API and `/metrics` cost a few queries per store change, not per
/// request.
#[derive(Debug, Default)]
pub struct StatusCache {
    inner: Mutex<Option<(Generation, Arc<Snapshot>)>>,
    bodies: BodyCache,
}

/// [`Store::generation`]'s value.
type Generation = (i64, i64);

/// One build of the [`StatusCache`].
#[derive(Debug)]
pub struct Snapshot {
    pub summaries: BTreeMap<String, crate::store::EnvSummary>,
    /// The newest reconcile with a diff, per environment.
    pub last_plans: BTreeMap<String, Option<crate::store::ReconcileRecord>>,
}

impl AppState {
    /// The status of every driven environment, as the store holds it now.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, crate::store::StoreError> {
        // Read the generation first: a write during the build leaves a
        // snapshot under the older generation, rebuilt on the next read.
        let generation = self.store.generation()?;
        if let Some((g, snap)) = &*self.cache.inner.lock().unwrap_or_else(|e| e.into_inner())
            && *g == generation
        {
            return Ok(snap.clone());
        }
        let envs: Vec<String> = self.envs.keys().cloned().collect();
        let summaries = envs
            .iter()
            .cloned()
            .zip(self.store.env_summaries(&envs)?)
            .collect();
        let mut last_plans = BTreeMap::new();
        for env in envs {
            let plan = self.store.last_plan(&env)?;
            last_plans.insert(env, plan);
        }
        let snap = Arc::new(Snapshot {
            summaries,
            last_plans,
        });
        *self.cache.inner.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((generation, snap.clone()));
        Ok(snap)
    }

    /// [`AppState::snapshot`] from async code: on the blocking pool.
    pub async fn status(self: &Arc<Self>) -> Result<Arc<Snapshot>, crate::store::StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.snapshot()).await?
    }
}

/// The router. The webhook route exists only when a secret is configured.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> axum::Router {
    let mut app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/environments", get(environments))
        // The first API's trigger, kept as an alias of /api/v1's: one
        // handler, so both answer with the same body and the same checks.
        .route("/api/environments/{env}/reconcile", post(api::trigger))
        .route("/metrics", get(metrics_text))
        .merge(
            axum::Router::new()
                .route("/", get(status::page))
                .merge(api::routes())
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    read_cache,
                )),
        );
    if state.webhook_secret.is_some() {
        app = app.route(
            "/hooks/github",
            post(webhook::github).layer(DefaultBodyLimit::max(max_body_bytes)),
        );
    }
    app.layer(axum::middleware::map_response(nosniff))
        .with_state(state)
}

/// Every answer says what it is: browsers must not sniff a JSON or text
/// answer into HTML.
async fn nosniff(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: started, the store reads and its last write did not fail at the
/// disk, and no environment is waiting out a backoff because something it
/// needs (the engine, the repo) is unreachable. The body says which.
async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let not_ready =
        |why: String| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    if !s.ready.load(Ordering::Relaxed) {
        return not_ready("starting".to_owned());
    }
    if s.store.call(|s| s.schema_version()).await.is_err() {
        return not_ready("the state store cannot be read".to_owned());
    }
    if !s.store.writable() {
        return not_ready("the state store cannot write (disk full or failing)".to_owned());
    }
    let stuck: Vec<&str> = s
        .envs
        .iter()
        .filter(|(_, e)| e.stats.snapshot().last_error.is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    if !stuck.is_empty() {
        return not_ready(format!(
            "unreachable, retrying with backoff: {}",
            stuck.join(", ")
        ));
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// A JSON answer `{"status": …, …}` with a status code.
pub fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    (code, Json(body)).into_response()
}

/// The peer address of a request, when the server was started with
/// connect info (`into_make_service_with_connect_info`); unknown callers
/// are never taken for loopback.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

impl Caller {
    /// Whether the peer is on loopback; an IPv4 peer of a dual-stack
    /// listener (`::ffff:127.0.0.1`) counts as the IPv4 address it is.
    fn is_loopback(&self) -> bool {
        self.0.is_some_and(|a| a.ip().to_canonical().is_loopback())
    }
}

/// Whether a request's `Host` names this machine's loopback: `localhost`
/// (or a name under `.localhost`) or a loopback address, with or without a
/// port. A page a browser loaded from another name (DNS rebinding:
/// `rebind.attacker.example` resolving to 127.0.0.1) sends that name, and is
/// refused a token-less read. No `Host` at all (HTTP/1.0) is no browser's.
fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(axum::http::header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Whether a read (page, `/metrics`, API GET) is allowed, by `api.reads`:
/// a valid bearer token always reads; `loopback` lets loopback callers in
/// without one (others: 403, or 401 for a wrong token); `token` needs it
/// (401, or 403 when none is configured); `open` lets everyone in.
pub fn read_allowed(s: &AppState, caller: Caller, headers: &HeaderMap) -> Result<(), Response> {
    match s.reads {
        ReadAccess::Open => Ok(()),
        ReadAccess::Token => authorized(s, headers),
        ReadAccess::Loopback if caller.is_loopback() && host_is_loopback(headers) => Ok(()),
        ReadAccess::Loopback => match authorized(s, headers) {
            Ok(()) => Ok(()),
            Err(r) if headers.contains_key("authorization") => Err(r),
            Err(_) => Err(answer(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": "reads are open to loopback callers that name a loopback host only (api.reads: loopback); send the API bearer token"}),
            )),
        },
    }
}

/// Proof that the request may read ([`read_allowed`]); rejects with its
/// 401/403 answer otherwise.
#[derive(Debug, Clone, Copy)]
pub struct CanRead;

impl axum::extract::FromRequestParts<Arc<AppState>> for CanRead {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &Arc<AppState>,
    ) -> Result<Self, Response> {
        let Ok(caller) = Caller::from_request_parts(parts, s).await;
        read_allowed(s, caller, &parts.headers).map(|()| CanRead)
    }
}

async fn metrics_text(State(s): State<Arc<AppState>>, _: CanRead) -> Response {
    let st = s.clone();
    let text = tokio::task::spawn_blocking(move || st.metrics.render(&st))
        .await
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Checks the bearer token of a mutating call: 403 when no token is
/// configured (the API is off), 401 when it is missing or wrong. Compared
/// in constant time.
pub fn authorized(s: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &s.api_token else {
        return Err(answer(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "the API is disabled: no API token is configured"}),
        ));
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests in constant time: no early exit on the first byte.
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(token.expose().as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    if diff == 0 {
        Ok(())
    } else {
        Err(answer(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "missing or wrong bearer token"}),
        ))
    }
}

async fn environments(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let mut out = serde_json::Map::new();
    for (name, entry) in &s.envs {
        let env = name.clone();
        let read = s
            .store
            .call(move |store| {
                let mut last = store.history(Some(&env), 1)?;
                if let Some(r) = last.first_mut() {
                    r.plan = None;
                }
                Ok((
                    last.pop(),
                    store.env_state(&env)?,
                    store.images_status(&env)?,
                ))
            })
            .await;
        let status = read.map(|(last, state, images)| {
            serde_json::json!({
                "control": state.control,
                "last_good": state.last_good,
                "failed_commits": state.failed,
                "failed_images": state.failed_images,
                "images": images,
                "last_reconcile": last,
                "worker": entry.stats.snapshot(),
                "pending": entry.dirty.is_pending(),
                "triggers": entry.dirty.marks(),
            })
        });
        let mut value = match status {
            Ok(v) => v,
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        s.masker.mask_json(&mut value);
        out.insert(name.clone(), value);
    }
    answer(StatusCode::OK, serde_json::json!({"environments": out}))
}

/// A token bucket: `rate` requests per second on average, `burst` at once.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            state: Mutex::new((f64::from(burst.max(1)), Instant::now())),
        }
    }

    /// Takes a token; `false` when the bucket is empty.
    pub fn allow(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
        st.0 = (st.0 + refill).min(self.burst);
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::HOST, value.parse().unwrap());
        h
    }

    #[test]
    fn only_loopback_host_names_read_without_a_token() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "status.localhost:1",
            "127.0.0.1:9000",
            "127.3.2.1",
            "[::1]:9000",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(host_is_loopback(&host(ok)), "{ok}");
        }
        for bad in [
            "rebind.attacker.example",
            "rebind.attacker.example:9000",
            "localhost.attacker.example",
            "10.0.0.1:80",
            "[2001:db8::1]:80",
            "",
        ] {
            assert!(!host_is_loopback(&host(bad)), "{bad}");
        }
        assert!(host_is_loopback(&HeaderMap::new()));
    }

    #[test]
    fn a_v4_mapped_loopback_peer_is_loopback() {
        let mapped: std::net::SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert!(Caller(Some(mapped)).is_loopback());
        let remote: std::net::SocketAddr = "[::ffff:10.1.2.3]:5000".parse().unwrap();
        assert!(!Caller(Some(remote)).is_loopback());
        assert!(!Caller(None).is_loopback());
    }

    #[test]
    fn rate_limiter_allows_the_burst_then_refuses() {
        let l = RateLimiter::new(1, 3);
        assert!((0..3).all(|_| l.allow()));
        assert!(!l.allow());
    }
}
