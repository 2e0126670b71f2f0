//! The registry's HTTP API (distribution v2), read only: which digest a tag
//! names now, found with one `HEAD /v2/<name>/manifests/<tag>` — never a
//! pull. Credentials are the ones pulls use (the Docker client config's
//! `auths`, [`super::image::credentials`]); a registry that answers 401
//! with a `Bearer` challenge gets the token flow (realm, service, scope;
//! anonymous when there is no login), a `Basic` one the login. The token
//! is kept per registry and repository until the registry refuses it.
//!
//! A check is one request (two or three when a token is fetched first);
//! nothing is retried here: a 429 comes back as
//! [`RegistryError::RateLimited`] with the wait the registry asked for, and
//! the caller (the daemon's image poller) backs off.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use sha2::{Digest as _, Sha256};

use super::image;

/// The manifest types a digest may name: a multi-platform index (OCI or
/// Docker's manifest list) first, as the engine pulls them, then the
/// single-image manifests.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.image.manifest.v1+json";

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// What a registry check can end with besides a digest. Messages name the
/// registry and the reference, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("`{reference}` is not a reference to a tag in a registry")]
    Reference { reference: String },
    #[error("registry {registry} is unreachable")]
    Unreachable {
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "registry {registry} refused access to {name} (401){}",
        if *.with_login { "; check the login in the Docker client config" } else { "; add a login for it to the Docker client config" }
    )]
    Unauthorized {
        registry: String,
        name: String,
        with_login: bool,
    },
    #[error("{reference}: the registry has no such tag (404)")]
    NotFound { reference: String },
    #[error("registry {registry} is rate limiting (429); next check in {}s", .retry_after.as_secs())]
    RateLimited {
        registry: String,
        retry_after: Duration,
    },
    #[error("registry {registry} answered {status} for {reference}")]
    Status {
        registry: String,
        reference: String,
        status: u16,
    },
    #[error("registry {registry} answered {reference} without a valid digest")]
    NoDigest { registry: String, reference: String },
    #[error("token service {realm}: {why}")]
    Token { realm: String, why: String },
    #[error("registry login: {0}")]
    Credentials(String),
}

impl RegistryError {
    /// How long the registry asked to be left alone, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A reference split into what the API needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The registry as the Docker client config keys it (`docker.io`,
    /// `127.0.0.1:5000`).
    pub registry: String,
    /// Where its API is (`https://registry-1.docker.io`).
    pub base: String,
    /// The repository (`library/redis`).
    pub name: String,
    pub tag: String,
}

impl Target {
    /// `reference` with its tag (`:latest` when it has none); `None` for a
    /// digest reference or an image id, which never move.
    pub fn parse(reference: &str) -> Option<Target> {
        if reference.contains('@') || reference.starts_with("sha256:") {
            return None;
        }
        let normalized = image::normalize(reference);
        let registry = image::registry(reference).to_owned();
        let (repo, tag) = normalized.rsplit_once(':')?;
        let path = match repo.strip_prefix(&format!("{registry}/")) {
            Some(rest) => rest.to_owned(),
            // Docker Hub: `normalize` dropped the prefix.
            None if registry == "docker.io" => {
                if repo.contains('/') {
                    repo.to_owned()
                } else {
                    format!("library/{repo}")
                }
            }
            None => return None,
        };
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry.as_str()
        };
        // As the engine does: loopback registries speak plain HTTP.
        let plain = {
            let h = host.rsplit_once(':').map_or(host, |(h, _)| h);
            h == "localhost" || h.starts_with("127.") || h == "[::1]"
        };
        Some(Target {
            base: format!("{}://{host}", if plain { "http" } else { "https" }),
            registry,
            name: path,
            tag: tag.to_owned(),
        })
    }

    fn manifest_url(&self) -> String {
        format!("{}/v2/{}/manifests/{}", self.base, self.name, self.tag)
    }
}

/// A registry client: one HTTP client, the Docker client config to read
/// logins from, and the bearer tokens it was given.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    docker_config: Option<PathBuf>,
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl Client {
    pub fn new(http: reqwest::Client, docker_config: Option<PathBuf>) -> Client {
        Client {
            http,
            docker_config,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The digest `reference` (a tag) names in its registry now.
    pub async fn digest(&self, reference: &str) -> Result<String, RegistryError> {
        let target = Target::parse(reference).ok_or_else(|| RegistryError::Reference {
            reference: reference.to_owned(),
        })?;
        let login = match &self.docker_config {
            Some(path) => image::credentials(path, &target.registry)
                .map_err(RegistryError::Credentials)?
                .and_then(|c| Some((c.username?, c.password?))),
            None => None,
        };
        let key = (target.registry.clone(), target.name.clone());
        let cached = self.token(&key).map(|t| format!("Bearer {t}"));
        let first = self.head(&target, cached.as_deref()).await?;
        let answer = if first.status() == StatusCode::UNAUTHORIZED {
            let auth = match challenge(first.headers()) {
                Some(Challenge::Bearer(params)) => {
                    let token = self.fetch_token(&target, &params, login.as_ref()).await?;
                    self.tokens
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone(), token.clone());
                    format!("Bearer {token}")
                }
                Some(Challenge::Basic) if login.is_some() => basic(login.as_ref()),
                _ => {
                    return Err(RegistryError::Unauthorized {
                        registry: target.registry,
                        name: target.name,
                        with_login: login.is_some(),
                    });
                }
            };
            self.head(&target, Some(&auth)).await?
        } else {
            first
        };
        self.read_digest(&target, reference, answer, login.is_some())
            .await
    }

    fn token(&self, key: &(String, String)) -> Option<String> {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    async fn head(
        &self,
        target: &Target,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut req = self
            .http
            .head(target.manifest_url())
            .header(ACCEPT, MANIFEST_TYPES)
            .timeout(TIMEOUT);
        if let Some(auth) = auth {
            req = req.header(AUTHORIZATION, auth);
        }
        req.send()
            .await
            .map_err(|source| RegistryError::Unreachable {
                registry: target.registry.clone(),
                source,
            })
    }

    async fn read_digest(
        &self,
        target: &Target,
        reference: &str,
        answer: reqwest::Response,
        with_login: bool,
    ) -> Result<String, RegistryError> {
        let status = answer.status();
        match status {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                // A token that stopped working is not used again.
                self.tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(target.registry.clone(), target.name.clone()));
                return Err(RegistryError::Unauthorized {
                    registry: target.registry.clone(),
                    name: target.name.clone(),
                    with_login,
                });
            }
            StatusCode::NOT_FOUND => {
                return Err(RegistryError::NotFound {
                    reference: reference.to_owned(),
                });
            }
            StatusCode::TOO_MANY_REQUESTS => {
                return Err(RegistryError::RateLimited {
                    registry: target.registry.clone(),
                    retry_after: retry_after(answer.headers()),
                });
            }
            _ => {
                return Err(RegistryError::Status {
                    registry: target.registry.clone(),
                    reference: reference.to_owned(),
                    status: status.as_u16(),
                });
            }
        }
        let header = answer
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match header {
            Some(d) if is_digest(&d) => Ok(d),
            Some(_) => Err(RegistryError::NoDigest {
                registry: target.registry.clone(),
                reference: reference.to_owned(),
            }),
            // Some registries leave the header out of a HEAD answer: the
            // digest is the SHA-256 of the manifest's bytes.
            None => self.digest_of_body(target, reference).await,
        }
    }

    async fn digest_of_body(
        &self,
        target: &Target,
        reference: &str,
    ) -> Result<String, RegistryError> {
        let mut req = self
            .http
            .get(target.manifest_url())
            .header(ACCEPT, MANIFEST_TYPES)
            .timeout(TIMEOUT);
        let key = (target.registry.clone(), target.name.clone());
        if let Some(t) = self.token(&key) {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let unreachable = |source| RegistryError::Unreachable {
            registry: target.registry.clone(),
            source,
        };
        let answer = req.send().await.map_err(unreachable)?;
        if !answer.status().is_success() {
            return Err(RegistryError::Status {
                registry: target.registry.clone(),
                reference: reference.to_owned(),
                status: answer.status().as_u16(),
            });
        }
        let body = answer.bytes().await.map_err(unreachable)?;
        if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
            return Err(RegistryError::NoDigest {
                registry: target.registry.clone(),
                reference: reference.to_owned(),
            });
        }
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body))))
    }

    /// The bearer-token flow: `GET realm?service=…&scope=…`, with the login
    /// as basic auth when there is one.
    async fn fetch_token(
        &self,
        target: &Target,
        params: &HashMap<String, String>,
        login: Option<&(String, String)>,
    ) -> Result<String, RegistryError> {
        let realm = params.get("realm").cloned().unwrap_or_default();
        let bad = |why: String| RegistryError::Token {
            realm: realm.clone(),
            why,
        };
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(bad("the challenge names no http(s) realm".into()));
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", target.name));
        let mut query = vec![("scope", scope)];
        if let Some(service) = params.get("service") {
            query.push(("service", service.clone()));
        }
        let url = reqwest::Url::parse_with_params(&realm, &query)
            .map_err(|e| bad(format!("the realm is not a URL: {e}")))?;
        let mut req = self.http.get(url).timeout(TIMEOUT);
        if login.is_some() {
            req = req.header(AUTHORIZATION, basic(login));
        }
        let answer = req.send().await.map_err(|e| bad(e.to_string()))?;
        if answer.status() == StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Unauthorized {
                registry: target.registry.clone(),
                name: target.name.clone(),
                with_login: login.is_some(),
            });
        }
        if !answer.status().is_success() {
            return Err(bad(format!("answered {}", answer.status().as_u16())));
        }
        let body = answer.bytes().await.map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| bad("the answer is not JSON".into()))?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| bad("the answer holds no token".into()))
    }
}

fn basic(login: Option<&(String, String)>) -> String {
    let (user, password) = login
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .unwrap_or(("", ""));
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Bearer(HashMap<String, String>),
    Basic,
}

fn challenge(headers: &HeaderMap) -> Option<Challenge> {
    let text = headers.get(WWW_AUTHENTICATE)?.to_str().ok()?.trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(Challenge::Bearer(auth_params(rest)))
}

/// `key="value",key=value` pairs; commas inside quotes belong to the value
/// (a scope listing several actions: `repository:a:pull,push`).
fn auth_params(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// `Retry-After` in seconds (the form registries send); an HTTP date or
/// a missing header counts as a minute. At most an hour.
fn retry_after(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(60);
    Duration::from_secs(secs.min(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_become_api_targets() {
        let t = Target::parse("127.0.0.1:5000/team/app:stable").unwrap();
        assert_eq!(t.base, "http://127.0.0.1:5000");
        assert_eq!((t.name.as_str(), t.tag.as_str()), ("team/app", "stable"));
        assert_eq!(
            t.manifest_url(),
            "http://127.0.0.1:5000/v2/team/app/manifests/stable"
        );
        let hub = Target::parse("redis").unwrap();
        assert_eq!(hub.registry, "docker.io");
        assert_eq!(hub.base, "https://registry-1.docker.io");
        assert_eq!(
            (hub.name.as_str(), hub.tag.as_str()),
            ("library/redis", "latest")
        );
        let org = Target::parse("grafana/grafana:11").unwrap();
        assert_eq!(org.name, "grafana/grafana");
        let remote = Target::parse("ghcr.io/o/a:1").unwrap();
        assert_eq!(remote.base, "https://ghcr.io");
        assert!(Target::parse("a/b@sha256:00").is_none());
        assert!(Target::parse("sha256:00").is_none());
    }

    #[test]
    fn bearer_challenges_keep_commas_inside_quotes() {
        let p = auth_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let mut h = HeaderMap::new();
        h.insert(WWW_AUTHENTICATE, r#"Basic realm="x""#.parse().unwrap());
        assert_eq!(challenge(&h), Some(Challenge::Basic));
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(7));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Duration::from_secs(60));
        assert!(is_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_digest("sha256:xyz"));
    }

    /// A registry behind a token service, as Docker Hub and GHCR are: the
    /// first HEAD is refused with a challenge, the token is fetched
    /// anonymously with the challenge's scope and kept for the next check;
    /// then a 429 comes back with its `Retry-After`.
    #[tokio::test]
    async fn the_bearer_flow_is_followed_and_a_429_carries_its_wait() {
        use axum::extract::State;
        use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
        use axum::response::IntoResponse;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};

        #[derive(Clone)]
        struct S {
            log: Arc<Mutex<Vec<String>>>,
            heads: Arc<AtomicU32>,
            addr: String,
        }
        let digest = format!("sha256:{}", "b".repeat(64));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = S {
            log: Arc::default(),
            heads: Arc::default(),
            addr: addr.clone(),
        };
        let d = digest.clone();
        let app = axum::Router::new()
            .route(
                "/v2/o/app/manifests/stable",
                axum::routing::head(move |State(s): State<S>, h: AxHeaders| {
                    let d = d.clone();
                    async move {
                        let n = s.heads.fetch_add(1, Ordering::SeqCst);
                        let auth = h
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        s.log.lock().unwrap().push(format!("HEAD {auth}"));
                        if n >= 2 {
                            return (AxStatus::TOO_MANY_REQUESTS, [("retry-after", "9")])
                                .into_response();
                        }
                        if auth != "Bearer tok-1" {
                            let c = format!(
                                r#"Bearer realm="http://{}/token",service="reg",scope="repository:o/app:pull""#,
                                s.addr
                            );
                            return (AxStatus::UNAUTHORIZED, [("www-authenticate", c)])
                                .into_response();
                        }
                        (AxStatus::OK, [("docker-content-digest", d)]).into_response()
                    }
                }),
            )
            .route(
                "/token",
                axum::routing::get(
                    |State(s): State<S>, q: axum::extract::RawQuery| async move {
                        s.log
                            .lock()
                            .unwrap()
                            .push(format!("TOKEN {}", q.0.unwrap_or_default()));
                        axum::Json(serde_json::json!({"token": "tok-1"}))
                    },
                ),
            )
            .with_state(state.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(reqwest::Client::new(), None);
        let reference = format!("{addr}/o/app:stable");
        assert_eq!(client.digest(&reference).await.unwrap(), digest);
        let log = state.log.lock().unwrap().clone();
        assert_eq!(log.len(), 3, "{log:?}");
        assert_eq!(log[0], "HEAD ");
        assert!(
            log[1].contains("scope=repository%3Ao%2Fapp%3Apull"),
            "{log:?}"
        );
        assert!(log[1].contains("service=reg"), "{log:?}");
        assert_eq!(log[2], "HEAD Bearer tok-1");
        // The token is kept: the next check is one request, and a 429
        // comes back with the registry's wait.
        let e = client.digest(&reference).await.unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(9)), "{e}");
        assert_eq!(state.log.lock().unwrap().len(), 4);
        server.abort();
    }
}
