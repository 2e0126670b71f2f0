//! A client of the daemon's `/api/v1`, for the CLI's `--daemon URL`
//! (`status`, `history`, `rollback`, `suspend`, `resume`).
//!
//! Answers are JSON; an answer that is not 2xx becomes an error carrying
//! the daemon's own `error` text and the status code.

use std::time::Duration;

use serde_json::Value;

use crate::daemon::config::Secret;

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the daemon answered {status}: {message}")]
    Refused { status: u16, message: String },
}

/// A daemon's API: its base URL and the bearer token, if any.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<Secret>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<Secret>) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("driftless-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// `GET path` (with `query` pairs).
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let req = self.http.get(self.url(path, query));
        self.send(req).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let req = self
            .http
            .post(self.url(path, &[]))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(req).await
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())))
                .finish();
            url.push('?');
            url.push_str(&q);
        }
        url
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unreachable)?;
        let doc: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(doc)
        } else {
            Err(ClientError::Refused {
                status: status.as_u16(),
                message: doc["error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| doc.to_string()),
            })
        }
    }
}
