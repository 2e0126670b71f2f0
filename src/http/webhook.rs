//! `POST /hooks/github`: GitHub's webhook.
//!
//! The signature (`X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the
//! raw body under the configured secret) is checked first, in constant time
//! (`Mac::verify_slice`), and unsigned requests are rate-limited apart from
//! signed ones; then the payload is read; then the delivery id is recorded
//! (a replay is acknowledged and ignored); then the event decides: `ping` → 200, a
//! `push` to a tracked branch → 202 and its environments marked dirty,
//! anything else → 202 with the reason. Both content types GitHub offers
//! are read (`application/json`, and form-encoded `payload=`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use hmac::{KeyInit, Mac};
use serde_json::json;

use super::{AppState, answer};
use crate::store::Trigger;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn signature_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// What a push asks for, read from its payload.
#[derive(Debug, PartialEq, Eq)]
pub enum PushDecision {
    /// A push to `branch`.
    Branch(String),
    /// Ignored, with the reason.
    Ignored(String),
}

/// Reads a push payload: branch pushes count; tags and deletions do not.
pub fn decide_push(payload: &serde_json::Value) -> Result<PushDecision, String> {
    let Some(reference) = payload.get("ref").and_then(|r| r.as_str()) else {
        return Err("push payload has no `ref`".to_owned());
    };
    if payload.get("deleted").and_then(|d| d.as_bool()) == Some(true) {
        return Ok(PushDecision::Ignored(format!("{reference} was deleted")));
    }
    if let Some(tag) = reference.strip_prefix("refs/tags/") {
        return Ok(PushDecision::Ignored(format!(
            "tag {tag}: environments follow branches"
        )));
    }
    match reference.strip_prefix("refs/heads/") {
        Some(branch) => Ok(PushDecision::Branch(branch.to_owned())),
        None => Ok(PushDecision::Ignored(format!(
            "{reference} is not a branch"
        ))),
    }
}

/// The JSON document of a body: the body itself, or the `payload` field of
/// a form-encoded one.
pub fn payload(content_type: &str, body: &[u8]) -> Result<serde_json::Value, String> {
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let field = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or("form body has no `payload` field")?;
        return serde_json::from_str(&field).map_err(|e| format!("payload is not JSON: {e}"));
    }
    serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Counts the request by outcome (`driftless_webhook_requests_total`) and answers.
fn done(s: &AppState, outcome: &str, code: StatusCode, body: serde_json::Value) -> Response {
    s.metrics.webhook(outcome);
    answer(code, body)
}

/// The handler. Never fetches or applies: it marks environments dirty.
///
/// The signature is checked before anything else counts: requests that
/// fail it spend the unauthenticated bucket ([`AppState::unsigned_limiter`]),
/// so a flood of forgeries never rate-limits a correctly signed push. A
/// delivery id is recorded only once the payload has been read, so a
/// redelivery of a delivery that was refused as malformed is read again.
pub async fn github(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &s.webhook_secret else {
        return done(
            &s,
            "disabled",
            StatusCode::NOT_FOUND,
            json!({"error": "webhook not configured"}),
        );
    };
    if !signature_valid(
        secret.expose().as_bytes(),
        &body,
        header(&headers, "x-hub-signature-256"),
    ) {
        if !s.unsigned_limiter.allow() {
            return rate_limited(&s);
        }
        tracing::warn!("webhook: missing or wrong signature");
        return done(
            &s,
            "unauthorized",
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong X-Hub-Signature-256"}),
        );
    }
    if !s.limiter.allow() {
        return rate_limited(&s);
    }
    let event = header(&headers, "x-github-event").unwrap_or("").to_owned();
    let push = match event.as_str() {
        "" => {
            return done(
                &s,
                "bad_request",
                StatusCode::BAD_REQUEST,
                json!({"error": "missing X-GitHub-Event"}),
            );
        }
        "push" => {
            let content_type = header(&headers, "content-type").unwrap_or("application/json");
            match payload(content_type, &body).and_then(|doc| decide_push(&doc)) {
                Ok(decision) => Some(decision),
                Err(e) => {
                    return done(
                        &s,
                        "bad_request",
                        StatusCode::BAD_REQUEST,
                        json!({"error": e}),
                    );
                }
            }
        }
        _ => None,
    };
    if let Some(delivery) = header(&headers, "x-github-delivery") {
        let (id, kind) = (delivery.to_owned(), event.clone());
        let recorded = s
            .store
            .call(move |store| store.record_delivery(&id, &kind, SystemTime::now()))
            .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => {
                return done(
                    &s,
                    "replay",
                    StatusCode::OK,
                    json!({"status": "ignored", "reason": "delivery already received"}),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "webhook: cannot record the delivery");
                return done(
                    &s,
                    "error",
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "state store unavailable"}),
                );
            }
        }
    }
    match (event.as_str(), push) {
        ("ping", _) => done(&s, "pong", StatusCode::OK, json!({"status": "pong"})),
        (_, Some(PushDecision::Ignored(reason))) => done(
            &s,
            "ignored",
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": reason}),
        ),
        (_, Some(PushDecision::Branch(branch))) => push_to(&s, branch),
        (other, None) => done(
            &s,
            "ignored",
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": format!("event `{other}` is not handled")}),
        ),
    }
}

fn rate_limited(s: &AppState) -> Response {
    done(
        s,
        "rate_limited",
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": "too many requests"}),
    )
}

/// A push to `branch`: marks the environments that follow it dirty.
fn push_to(s: &AppState, branch: String) -> Response {
    let envs = s
        .branches
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&branch)
        .cloned()
        .unwrap_or_default();
    if envs.is_empty() {
        return done(
            s,
            "ignored",
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": format!("branch {branch} is not followed by an environment this daemon drives")}),
        );
    }
    for env in &envs {
        if let Some(e) = s.envs.get(env) {
            e.dirty.mark(Trigger::Webhook);
        }
    }
    tracing::info!(branch = %branch, environments = ?envs, "webhook: push accepted");
    done(
        s,
        "accepted",
        StatusCode::ACCEPTED,
        json!({"status": "accepted", "environments": envs}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_published_test_vector() {
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_valid(secret, b"Hello, World!", Some(good)));
        assert!(!signature_valid(secret, b"Hello, World?", Some(good)));
        assert!(!signature_valid(b"other", b"Hello, World!", Some(good)));
        assert!(!signature_valid(secret, b"Hello, World!", None));
        assert!(!signature_valid(
            secret,
            b"Hello, World!",
            Some("sha1=757107")
        ));
        assert!(!signature_valid(
            secret,
            b"Hello, World!",
            Some("sha256=zz")
        ));
        assert!(!signature_valid(
            secret,
            b"Hello, World!",
            Some(&good[..good.len() - 2])
        ));
    }

    #[test]
    fn push_decisions() {
        let d = |v: serde_json::Value| decide_push(&v).unwrap();
        assert_eq!(
            d(json!({"ref": "refs/heads/main"})),
            PushDecision::Branch("main".into())
        );
        assert!(
            matches!(d(json!({"ref": "refs/tags/v1"})), PushDecision::Ignored(r) if r.contains("tag v1"))
        );
        assert!(
            matches!(d(json!({"ref": "refs/heads/x", "deleted": true})), PushDecision::Ignored(r) if r.contains("deleted"))
        );
        assert!(decide_push(&json!({"zen": "x"})).is_err());
    }

    #[test]
    fn form_and_json_payloads() {
        let v = payload(
            "application/x-www-form-urlencoded",
            b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D",
        )
        .unwrap();
        assert_eq!(v["ref"], "refs/heads/main");
        assert!(payload("application/json", b"not json").is_err());
        assert!(payload("application/x-www-form-urlencoded", b"other=1").is_err());
    }
}
