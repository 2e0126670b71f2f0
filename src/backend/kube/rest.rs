//! Every request driftless sends to an API server goes through [`Rest::call`]:
//! it takes a token from the target's [`TokenBucket`] for each attempt and
//! retries 429 (Too Many Requests), 5xx and transport errors with
//! exponential backoff, honouring the server's `retryAfterSeconds`.
//!
//! kube's own retry layer is switched off (`Config::default_retry`): it
//! retries only 429/503/504, for up to 15 attempts and 1,000 s, which is
//! longer than a reconcile should hang on a sick API server.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::Client;

use super::ratelimit::TokenBucket;

/// How often and how patiently a failed request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff; each further one doubles, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Five retries, 200 ms doubling to 5 s: about 6 s before giving up.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32, server: Option<Duration>) -> Duration {
        let backoff = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max_delay);
        match server {
            Some(s) => s.min(self.max_delay.max(self.base_delay)).max(backoff),
            None => backoff,
        }
    }
}

/// A kube client behind the target's rate limit and retry policy.
pub struct Rest {
    pub(crate) client: Client,
    limiter: TokenBucket,
    retry: RetryPolicy,
    attempts: AtomicU64,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("limiter", &self.limiter)
            .field("retry", &self.retry)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Rest {
    pub fn new(client: Client, qps: f32, burst: u32) -> Self {
        Rest {
            client,
            limiter: TokenBucket::new(qps, burst),
            retry: RetryPolicy::default(),
            attempts: AtomicU64::new(0),
        }
    }

    pub fn set_retry(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    /// HTTP requests sent so far, retries included.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Runs one API request (`f` builds it afresh for each attempt) under
    /// the rate limit, retrying what is worth retrying.
    pub async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 0;
        loop {
            self.limiter.acquire().await;
            self.attempts.fetch_add(1, Ordering::Relaxed);
            match f().await {
                Err(e) if attempt < self.retry.max_retries => match retryable(&e) {
                    Some(server) => {
                        let delay = self.retry.delay(attempt, server);
                        tracing::debug!(attempt, ?delay, error = %message(&e), "retrying API request");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }
}

/// `Some(server's retry-after)` when `e` is worth another attempt.
fn retryable(e: &kube::Error) -> Option<Option<Duration>> {
    match e {
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => Some(
            s.details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s))),
        ),
        kube::Error::HyperError(_) | kube::Error::Service(_) => Some(None),
        _ => None,
    }
}

/// The HTTP status of an API error (`None` for transport errors).
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// One line for humans: the server's message, or the transport error.
pub fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
        kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.reason),
        other => {
            // Walk the source chain: hyper's top-level text alone
            // ("client error (Connect)") says nothing useful.
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0, None), Duration::from_millis(200));
        assert_eq!(p.delay(1, None), Duration::from_millis(400));
        assert_eq!(p.delay(10, None), Duration::from_secs(5));
        // The server's hint wins when longer, within the cap.
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(600))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn what_is_retried() {
        let api = |code| {
            kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(retryable(&api(429)).is_some());
        assert!(retryable(&api(500)).is_some());
        assert!(retryable(&api(503)).is_some());
        assert!(retryable(&api(409)).is_none());
        assert!(retryable(&api(404)).is_none());
        assert!(retryable(&api(422)).is_none());
    }
}
