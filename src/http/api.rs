//! The JSON API under `/api/v1`.
//!
//! Reads (who may: `api.reads`, see [`super::read_allowed`]):
//! - `GET /api/v1/environments` — every driven environment: current commit,
//!   last good commit, last reconcile and outcome, health, drift, pin and
//!   suspension, worker state;
//! - `GET /api/v1/environments/{env}` — one of them;
//! - `GET /api/v1/history?env=&outcome=&limit=&before=` — reconciles newest
//!   first, without plans; `next_before` is the cursor of the next page;
//! - `GET /api/v1/reconciles/{id}` — one reconcile with its plan and diff.
//!
//! Mutations (bearer token, [`super::authorized`]): `POST
//! /api/v1/environments/{env}/reconcile`, `…/rollback` (`{"commit": REV}`,
//! default the last good commit: pins the environment), `…/suspend`
//! (`{"reason": …}`), `…/resume` (`{"retry_failed": bool}`). They write the
//! store's control rows — this process holds the environment's lock — and
//! mark the environment dirty; the worker does the rest.
//!
//! Every answer is masked ([`reply`]).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, CanRead, EnvEntry, answer, authorized};
use crate::source::CommitId;
use crate::store::{HistoryQuery, Outcome, Trigger};

/// Most rows one history page returns.
pub const MAX_PAGE: u32 = 500;

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/api/v1/environments", get(environments))
        .route("/api/v1/environments/{env}", get(environment))
        .route("/api/v1/history", get(history))
        .route("/api/v1/reconciles/{id}", get(reconcile))
        .route("/api/v1/environments/{env}/reconcile", post(trigger))
        .route("/api/v1/environments/{env}/rollback", post(rollback))
        .route("/api/v1/environments/{env}/suspend", post(suspend))
        .route("/api/v1/environments/{env}/resume", post(resume))
}

/// A JSON answer with every secret value masked.
pub fn reply(s: &AppState, code: StatusCode, mut body: Value) -> Response {
    s.masker.mask_json(&mut body);
    answer(code, body)
}

fn store_error(s: &AppState, e: crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "API: state store");
    reply(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": e.to_string()}),
    )
}

fn unknown_env(s: &AppState, env: &str) -> Response {
    reply(
        s,
        StatusCode::NOT_FOUND,
        json!({"error": format!("this daemon does not drive environment `{env}`"), "environments": s.envs.keys().collect::<Vec<_>>()}),
    )
}

/// The status of one environment as the API shows it: its summary from
/// the store and its worker's state.
pub fn env_status(summary: &crate::store::EnvSummary, entry: &EnvEntry) -> Value {
    let mut v = serde_json::to_value(summary).expect("plain data");
    v["drift"] = json!({
        "resources_out_of_sync": summary.out_of_sync,
        "in_sync": summary.out_of_sync == 0,
    });
    v["last_outcome"] = json!(summary.last_reconcile.as_ref().map(|r| r.outcome));
    v["worker"] = serde_json::to_value(entry.stats.snapshot()).expect("plain data");
    v["pending"] = json!(entry.dirty.is_pending());
    v
}

async fn environments(State(s): State<Arc<AppState>>, _: CanRead) -> Response {
    let snap = match s.status().await {
        Ok(snap) => snap,
        Err(e) => return store_error(&s, e),
    };
    let out: Vec<Value> = s
        .envs
        .iter()
        .filter_map(|(name, entry)| snap.summaries.get(name).map(|sum| env_status(sum, entry)))
        .collect();
    reply(&s, StatusCode::OK, json!({"environments": out}))
}

async fn environment(
    State(s): State<Arc<AppState>>,
    Path(env): Path<String>,
    _: CanRead,
) -> Response {
    let Some(entry) = s.envs.get(&env) else {
        return unknown_env(&s, &env);
    };
    let name = env.clone();
    let images = match s.store.call(move |st| st.images_status(&name)).await {
        Ok(i) => i,
        Err(e) => return store_error(&s, e),
    };
    match s.status().await {
        Ok(snap) => match snap.summaries.get(&env) {
            Some(sum) => {
                let mut v = env_status(sum, entry);
                // Per followed service: the policy, the newest digest the
                // registry named, the running one, the last check and error.
                v["images"] = serde_json::to_value(images).expect("plain data");
                reply(&s, StatusCode::OK, v)
            }
            None => unknown_env(&s, &env),
        },
        Err(e) => store_error(&s, e),
    }
}

#[derive(Debug, Deserialize)]
struct HistoryParams {
    env: Option<String>,
    outcome: Option<String>,
    limit: Option<u32>,
    before: Option<i64>,
}

async fn history(
    State(s): State<Arc<AppState>>,
    _: CanRead,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => {
            return reply(
                &s,
                StatusCode::BAD_REQUEST,
                json!({"error": format!("bad query: {}", e.body_text()), "hint": "env=NAME&outcome=OUTCOME&limit=N&before=ID"}),
            );
        }
    };
    let outcome = match p.outcome.as_deref().map(str::parse::<Outcome>) {
        None => None,
        Some(Ok(o)) => Some(o),
        Some(Err(_)) => {
            return reply(
                &s,
                StatusCode::BAD_REQUEST,
                json!({"error": format!("unknown outcome `{}`", p.outcome.as_deref().unwrap_or_default()), "outcomes": Outcome::ALL.iter().map(|o| o.as_str()).collect::<Vec<_>>()}),
            );
        }
    };
    let limit = p.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return reply(
            &s,
            StatusCode::BAD_REQUEST,
            json!({"error": format!("limit must be between 1 and {MAX_PAGE}")}),
        );
    }
    let page = s
        .store
        .call(move |store| {
            let query = HistoryQuery {
                env: p.env.as_deref(),
                outcome,
                before: p.before,
                limit,
            };
            let rows = store.history_page(&query)?;
            let next = (rows.len() == limit as usize)
                .then(|| rows.last().map(|r| r.id))
                .flatten();
            let mut rows = match serde_json::to_value(rows) {
                Ok(serde_json::Value::Array(a)) => a,
                _ => Vec::new(),
            };
            crate::backup::deploys::annotate(store, &mut rows)?;
            Ok((rows, next))
        })
        .await;
    match page {
        Ok((rows, next)) => reply(
            &s,
            StatusCode::OK,
            json!({"reconciles": rows, "next_before": next}),
        ),
        Err(e) => store_error(&s, e),
    }
}

async fn reconcile(State(s): State<Arc<AppState>>, Path(id): Path<String>, _: CanRead) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return reply(
            &s,
            StatusCode::BAD_REQUEST,
            json!({"error": format!("`{id}` is not a reconcile id (a number from /api/v1/history)")}),
        );
    };
    let found = s
        .store
        .call(move |store| {
            let Some(r) = store.reconcile(id)? else {
                return Ok(None);
            };
            let mut r = [json!(r)];
            crate::backup::deploys::annotate(store, &mut r)?;
            let [r] = r;
            Ok(Some(r))
        })
        .await;
    match found {
        Ok(Some(r)) => reply(&s, StatusCode::OK, json!({"reconcile": r})),
        Ok(None) => reply(
            &s,
            StatusCode::NOT_FOUND,
            json!({"error": format!("no reconcile {id} (retention may have removed it)")}),
        ),
        Err(e) => store_error(&s, e),
    }
}

/// A mutating call, checked: the bearer token, an environment this daemon
/// drives, and an optional JSON object body.
pub struct Mutation {
    env: String,
    entry: EnvEntry,
    doc: Value,
}

impl axum::extract::FromRequest<Arc<AppState>> for Mutation {
    type Rejection = Response;

    async fn from_request(
        req: axum::extract::Request,
        s: &Arc<AppState>,
    ) -> Result<Self, Response> {
        use axum::extract::FromRequestParts as _;
        let (mut parts, body) = req.into_parts();
        authorized(s, &parts.headers)?;
        let Path(env) = Path::<String>::from_request_parts(&mut parts, s)
            .await
            .map_err(|e| reply(s, StatusCode::BAD_REQUEST, json!({"error": e.body_text()})))?;
        let entry = s
            .envs
            .get(&env)
            .cloned()
            .ok_or_else(|| unknown_env(s, &env))?;
        let body = axum::body::to_bytes(body, 64 * 1024).await.map_err(|_| {
            reply(
                s,
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "the body is larger than 64 KiB"}),
            )
        })?;
        let doc = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice::<Value>(&body)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    reply(
                        s,
                        StatusCode::BAD_REQUEST,
                        json!({"error": "the body must be a JSON object (or empty)"}),
                    )
                })?
        };
        Ok(Mutation { env, entry, doc })
    }
}

/// `POST /api/v1/environments/{env}/reconcile`, and its alias of the first
/// API, `POST /api/environments/{env}/reconcile`.
pub(super) async fn trigger(
    State(s): State<Arc<AppState>>,
    Mutation { env, entry, .. }: Mutation,
) -> Response {
    entry.dirty.mark(Trigger::Manual);
    reply(
        &s,
        StatusCode::ACCEPTED,
        json!({"status": "accepted", "environment": env}),
    )
}

async fn rollback(
    State(s): State<Arc<AppState>>,
    Mutation { env, entry, doc }: Mutation,
) -> Response {
    let commit = match doc.get("commit") {
        None | Some(Value::Null) => match s.store.call(last_good(&env)).await {
            Ok(Some(lg)) => lg.commit,
            Ok(None) => {
                return reply(
                    &s,
                    StatusCode::CONFLICT,
                    json!({"error": format!("{env} has no last good commit; name one: {{\"commit\": \"SHA\"}}")}),
                );
            }
            Err(e) => return store_error(&s, e),
        },
        Some(Value::String(rev)) => match resolve(&s, rev).await {
            Ok(c) => c,
            Err(e) => return reply(&s, StatusCode::BAD_REQUEST, json!({"error": e})),
        },
        Some(_) => {
            return reply(
                &s,
                StatusCode::BAD_REQUEST,
                json!({"error": "`commit` must be a string"}),
            );
        }
    };
    let (e2, c2) = (env.clone(), commit.clone());
    let pinned = s
        .store
        .call(move |store| store.pin(&e2, &c2, SystemTime::now()))
        .await;
    if let Err(e) = pinned {
        return store_error(&s, e);
    }
    tracing::warn!(env = %env, commit = %commit, "API: pinned (rollback)");
    entry.dirty.mark(Trigger::Manual);
    reply(
        &s,
        StatusCode::OK,
        json!({"status": "pinned", "environment": env, "commit": commit, "hint": format!("POST /api/v1/environments/{env}/resume lifts the pin")}),
    )
}

/// A store call reading `env`'s last good commit.
fn last_good(
    env: &str,
) -> impl FnOnce(&crate::store::Store) -> crate::store::Result<Option<crate::store::LastGood>>
+ Send
+ 'static {
    let env = env.to_owned();
    move |store| store.last_good(&env)
}

/// A commit id for `rev`: resolved in the repo when the daemon has it
/// (short ids, tags, branches), else only a full 40-character id.
async fn resolve(s: &AppState, rev: &str) -> Result<CommitId, String> {
    let full = rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit());
    match &s.repo {
        Some(repo) => repo
            .resolve(rev)
            .await
            .map_err(|e| format!("cannot resolve `{rev}` in the repo: {e}")),
        None if full => Ok(CommitId::new(rev.to_lowercase())),
        None => Err(format!("`{rev}` is not a full 40-character commit id")),
    }
}

async fn suspend(
    State(s): State<Arc<AppState>>,
    Mutation { env, entry, doc }: Mutation,
) -> Response {
    let reason = doc["reason"]
        .as_str()
        .unwrap_or("suspended by an operator (API)");
    let reason = s.masker.mask(reason).into_owned();
    let (e2, r2) = (env.clone(), reason.clone());
    let suspended = s
        .store
        .call(move |store| store.suspend(&e2, &r2, SystemTime::now()))
        .await;
    if let Err(e) = suspended {
        return store_error(&s, e);
    }
    tracing::warn!(env = %env, reason = %reason, "API: suspended");
    entry.dirty.mark(Trigger::Manual);
    reply(
        &s,
        StatusCode::OK,
        json!({"status": "suspended", "environment": env, "reason": reason}),
    )
}

async fn resume(
    State(s): State<Arc<AppState>>,
    Mutation { env, entry, doc }: Mutation,
) -> Response {
    let retry_failed = doc["retry_failed"].as_bool().unwrap_or(false);
    let e2 = env.clone();
    let done = s
        .store
        .call(move |store| {
            store.resume(&e2, SystemTime::now())?;
            if retry_failed {
                store.clear_failed(&e2)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = done {
        return store_error(&s, e);
    }
    tracing::info!(env = %env, retry_failed, "API: resumed");
    entry.dirty.mark(Trigger::Manual);
    reply(
        &s,
        StatusCode::OK,
        json!({"status": "resumed", "environment": env, "retry_failed": retry_failed}),
    )
}
