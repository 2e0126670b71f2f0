//! The client-side rate limit of one Kubernetes target: a token bucket that
//! refills at `qps` tokens a second up to `burst`, as client-go's (and so
//! Argo CD's and Flux's) default limiter does.
//!
//! Callers reserve a token and sleep until it is theirs, so concurrent
//! requests queue in order instead of spinning. Time is tokio's, so tests
//! run it under `tokio::time::pause()`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket shared by every request to one target.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Tokens available; negative when requests are queued behind the bucket.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `qps` of zero or less (or not finite) means no limit.
    pub fn new(qps: f32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            qps: f64::from(qps),
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    fn unlimited(&self) -> bool {
        !(self.qps.is_finite() && self.qps > 0.0)
    }

    /// Takes a token and returns how long the caller must wait before using it.
    pub fn reserve(&self) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.qps).min(self.burst);
        s.last = now;
        s.tokens -= 1.0;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / self.qps)
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_qps() {
        let bucket = TokenBucket::new(50.0, 100);
        let start = Instant::now();
        for _ in 0..100 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..50 {
            bucket.acquire().await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!(
            (took - 1.0).abs() < 0.01,
            "50 more at 50 QPS take 1 s, took {took}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refills_while_idle_up_to_burst() {
        let bucket = TokenBucket::new(10.0, 5);
        for _ in 0..5 {
            assert_eq!(bucket.reserve(), Duration::ZERO);
        }
        assert!(bucket.reserve() > Duration::ZERO);
        tokio::time::advance(Duration::from_secs(60)).await;
        // Refilled to the burst, no further.
        for _ in 0..5 {
            assert_eq!(bucket.reserve(), Duration::ZERO);
        }
        assert!(bucket.reserve() > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_qps_is_unlimited() {
        let bucket = TokenBucket::new(0.0, 1);
        for _ in 0..1000 {
            assert_eq!(bucket.reserve(), Duration::ZERO);
        }
    }
}
