//! One worker per environment: a loop that waits to be marked dirty, then
//! runs one [`pass`](super::pass) at a time.
//!
//! Triggers never run anything themselves: they call [`Dirty::mark`], which
//! sets one pending slot and wakes the worker. However many triggers arrive
//! while a pass runs, they leave exactly one pass pending — at most one
//! running and one pending per environment. The worker's own timers (drift
//! re-plan, retry after a transient failure) mark the same slot.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::lock::{LockError, OpLock};
use super::pass::{self, EnvContext, Memo, PassEnd};
use crate::backend::progress::{Progress, Replacing};
use crate::store::Trigger;

/// The dirty flag of one environment.
#[derive(Debug, Default)]
pub struct Dirty {
    notify: Notify,
    pending: Mutex<Option<(Trigger, Instant)>>,
    /// Triggers received (for status and tests).
    marks: AtomicU64,
}

impl Dirty {
    /// Marks the environment dirty. Cheap and never blocks on a pass: a
    /// webhook handler calls this and returns.
    pub fn mark(&self, trigger: Trigger) {
        self.marks.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let keep = match *pending {
                // The strongest reason wins (a manual or webhook trigger
                // runs the full pipeline where a poll may skip it).
                Some((old, _)) if rank(old) > rank(trigger) => old,
                _ => trigger,
            };
            // The latest time: a fetch must start after it to cover it.
            *pending = Some((keep, Instant::now()));
        }
        self.notify.notify_one();
    }

    /// Waits until the environment is dirty and takes the pending trigger
    /// with the time of its latest mark (what a worker does; benchmarks
    /// use it to stand in for one).
    pub async fn next(&self) -> (Trigger, Instant) {
        loop {
            if let Some(t) = self.take() {
                return t;
            }
            self.notify.notified().await;
        }
    }

    fn take(&self) -> Option<(Trigger, Instant)> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Whether a pass is pending.
    pub fn is_pending(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    pub fn marks(&self) -> u64 {
        self.marks.load(Ordering::Relaxed)
    }
}

/// A pass that must plan against the live state outranks one that may end
/// at the fingerprint, so a poll arriving while a drift check is pending
/// does not turn it into a poll.
fn rank(t: Trigger) -> u8 {
    match t {
        Trigger::Poll | Trigger::Watch => 0,
        Trigger::Webhook | Trigger::Image => 1,
        Trigger::Drift | Trigger::Retry => 2,
        Trigger::Startup | Trigger::Manual => 3,
    }
}

/// What the status API shows of a worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub passes: AtomicU64,
    /// Passes that compared the whole live state with the commit (start-up,
    /// the drift timer, retries, operators), as opposed to polls and
    /// webhooks that may end at the live state's fingerprint.
    pub drift_checks: AtomicU64,
    pub running: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    /// The services the running pass's apply is replacing (written by the
    /// backend through the apply's context).
    pub replacing: Arc<Progress>,
}

impl WorkerStats {
    pub fn snapshot(&self) -> WorkerStatus {
        WorkerStatus {
            passes: self.passes.load(Ordering::Relaxed),
            drift_checks: self.drift_checks.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            replacing: self.replacing.now(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    /// Passes run since the daemon started.
    pub passes: u64,
    /// Of those, the passes that planned against the whole live state.
    pub drift_checks: u64,
    pub running: bool,
    /// The transient failure being retried, if any.
    pub last_error: Option<String>,
    /// Services whose replicas are being replaced now: order, replicas
    /// done of total, and the phase of the current batch.
    pub replacing: Vec<Replacing>,
}

/// Retry timing after transient failures: doubling from `initial` to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn next(&self, previous: Option<Duration>) -> Duration {
        match previous {
            None => self.initial,
            Some(d) => (d * 2).min(self.max),
        }
    }
}

/// The worker loop. Returns when `cancel` fires — never during a pass, so
/// an apply that has started finishes (the daemon bounds how long it waits).
pub async fn run(
    ctx: EnvContext,
    dirty: Arc<Dirty>,
    stats: Arc<WorkerStats>,
    cancel: CancellationToken,
    backoff: Backoff,
    default_drift: Duration,
) {
    let mut memo = Memo::default();
    let mut retry: Option<(Duration, Instant)> = None;
    let mut drift_interval = default_drift;
    let mut next_drift = Instant::now() + drift_interval;
    dirty.mark(Trigger::Startup);
    loop {
        let retry_at = retry.map(|(_, at)| at);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = dirty.notify.notified() => {}
            _ = tokio::time::sleep_until(retry_at.unwrap_or(next_drift)), if retry_at.is_some() => {
                dirty.mark(Trigger::Retry);
            }
            _ = tokio::time::sleep_until(next_drift) => dirty.mark(Trigger::Drift),
        }
        let Some((trigger, since)) = dirty.take() else {
            continue;
        };
        // With leader election, only the Lease holder reconciles; becoming
        // the holder marks the environment dirty again.
        if ctx.lease.as_ref().is_some_and(|l| !l.is_leader()) {
            tracing::debug!(env = %ctx.name, "not the lease holder; trigger ignored");
            retry = None;
            continue;
        }
        stats.running.store(true, Ordering::Relaxed);
        stats.passes.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "reconcile",
            env = %ctx.name,
            trigger = trigger.as_str(),
            commit = tracing::field::Empty
        );
        // A CLI backup or restore (or a scheduled backup) changing the
        // containers holds the operation lock: the pass waits for it
        // instead of judging the commit by a container someone stopped.
        let holder = format!("the daemon's pass (pid {})", std::process::id());
        let end = match OpLock::try_acquire(&ctx.state_dir, &ctx.name, &holder) {
            Ok(_op) => {
                pass::run(&ctx, &mut memo, trigger, since)
                    .instrument(span)
                    .await
            }
            Err(LockError::Held { holder, .. }) => PassEnd::Retry(format!(
                "{holder} is changing the environment; the pass runs when it is done"
            )),
            Err(e) => PassEnd::Retry(e.to_string()),
        };
        stats.running.store(false, Ordering::Relaxed);
        if let Some(lease) = &ctx.lease {
            lease.state_changed();
        }
        if let Some(d) = memo.drift_interval() {
            drift_interval = d;
        }
        if let Some(followed) = memo.followed() {
            ctx.followed.send_if_modified(|f| {
                let changed = *f != followed;
                *f = followed;
                changed
            });
        }
        // A pass that may have ended at the fingerprint is no drift check:
        // with polls more frequent than the drift interval, resetting the
        // timer after each of them kept drift correction from ever running.
        let drift_check = crate::reconcile::decide::always_plans(trigger);
        if drift_check {
            next_drift = Instant::now() + drift_interval;
        }
        match end {
            PassEnd::Done => {
                if drift_check {
                    stats.drift_checks.fetch_add(1, Ordering::Relaxed);
                }
                retry = None;
                *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            PassEnd::Retry(error) => {
                let wait = backoff.next(retry.map(|(d, _)| d));
                tracing::warn!(env = %ctx.name, error = %error, retry_in = ?wait, "reconcile could not run; retrying");
                *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                retry = Some((wait, Instant::now() + wait));
            }
        }
    }
    tracing::info!(env = %ctx.name, "worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_thousand_marks_leave_one_pending_pass_with_the_strongest_trigger() {
        let d = Dirty::default();
        for i in 0..1000 {
            d.mark(if i == 500 {
                Trigger::Webhook
            } else {
                Trigger::Poll
            });
        }
        assert_eq!(d.marks(), 1000);
        // One permit is stored however many notifications were sent.
        d.notify.notified().await;
        assert_eq!(d.take().map(|(t, _)| t), Some(Trigger::Webhook));
        assert!(d.take().is_none());
        let again = tokio::time::timeout(Duration::from_millis(20), d.notify.notified()).await;
        assert!(again.is_err(), "a second permit was stored");
    }

    #[test]
    fn a_poll_does_not_turn_a_pending_drift_check_into_a_poll() {
        let d = Dirty::default();
        d.mark(Trigger::Drift);
        d.mark(Trigger::Poll);
        d.mark(Trigger::Webhook);
        assert_eq!(d.take().map(|(t, _)| t), Some(Trigger::Drift));
        d.mark(Trigger::Retry);
        d.mark(Trigger::Manual);
        assert_eq!(d.take().map(|(t, _)| t), Some(Trigger::Manual));
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
        };
        let mut d = None;
        let mut seen = vec![];
        for _ in 0..5 {
            let n = b.next(d);
            seen.push(n.as_secs());
            d = Some(n);
        }
        assert_eq!(seen, [1, 2, 4, 5, 5]);
    }
}
