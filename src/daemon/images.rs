//! The image poller, one task per environment beside its worker: every
//! `image_poll_interval` (jittered by up to a tenth) it asks each followed
//! service's registry which digest its tag names now — a `HEAD` of the
//! manifest, never a pull ([`crate::backend::compose::registry`]) — and
//! records the answer in the store (`followed_images`). A digest it has
//! not seen before marks the environment dirty (trigger `image`); the pass
//! then decides the revision ([`crate::reconcile::decide::what_to_run`]),
//! which skips digests marked failed. The poller itself deploys nothing.
//!
//! Which services are followed comes from the worker: after each pass it
//! publishes the followed services of what it applied ([`Followed`]).
//! Errors back off per service — doubling from the interval up to an hour,
//! or as long as a `429`'s `Retry-After` asks — and are shown as the
//! service's last error; the newest digest found before stays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pass::EnvContext;
use super::worker::Dirty;
use crate::backend::compose::registry;
use crate::model::{DesiredState, Resources};
use crate::store::Trigger;

/// The followed services of what an environment last applied, and how
/// often to check them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    pub services: Vec<FollowedService>,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedService {
    /// `project/service`.
    pub service: String,
    /// The tag followed (`registry/app:stable`).
    pub reference: String,
    pub policy: String,
}

impl Followed {
    /// Every followed service of `desired`.
    pub fn of(desired: &DesiredState) -> Followed {
        let mut services = Vec::new();
        for t in &desired.targets {
            let Resources::Compose(projects) = &t.resources else {
                continue;
            };
            for p in projects {
                for (name, s) in &p.services {
                    if let Some(f) = &s.follow {
                        services.push(FollowedService {
                            service: format!("{}/{name}", p.name),
                            reference: f.reference.clone(),
                            policy: f.policy.as_str().to_owned(),
                        });
                    }
                }
            }
        }
        Followed {
            services,
            interval: desired.environment.image_poll_interval,
        }
    }
}

/// The longest wait after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// `interval` plus up to a tenth of it, so daemons started together do
/// not ask a registry at the same moment.
fn jittered(interval: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    interval + interval.mul_f64(f64::from(nanos % 1000) / 10_000.0)
}

/// How long to leave a service alone after its `failures`-th error in a
/// row: the registry's `Retry-After`, else the interval doubled per
/// failure, at most an hour (never less than the interval).
pub fn backoff(interval: Duration, failures: u32, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(wait) => wait.max(interval),
        None => interval
            .saturating_mul(1 << failures.clamp(1, 12))
            .min(MAX_BACKOFF.max(interval)),
    }
}

/// The poller of one environment; returns when `cancel` fires.
pub async fn run(
    ctx: EnvContext,
    dirty: Arc<Dirty>,
    client: Arc<registry::Client>,
    mut followed: watch::Receiver<Followed>,
    cancel: CancellationToken,
) {
    // Per service: errors in a row, and no check before this instant.
    let mut errors: HashMap<String, (u32, Instant)> = HashMap::new();
    loop {
        let current = followed.borrow_and_update().clone();
        let leader = ctx.lease.as_ref().is_none_or(|l| l.is_leader());
        if !current.services.is_empty() && leader {
            round(&ctx, &dirty, &client, &current, &mut errors).await;
        }
        let wait = if current.services.is_empty() {
            MAX_BACKOFF
        } else {
            jittered(current.interval)
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            changed = followed.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
}

/// One check of every followed service not backing off.
async fn round(
    ctx: &EnvContext,
    dirty: &Dirty,
    client: &registry::Client,
    followed: &Followed,
    errors: &mut HashMap<String, (u32, Instant)>,
) {
    let mut news = false;
    for f in &followed.services {
        if errors
            .get(&f.service)
            .is_some_and(|(_, until)| Instant::now() < *until)
        {
            continue;
        }
        let found = client.digest(&f.reference).await;
        let message = found
            .as_ref()
            .err()
            .map(|e| ctx.masker.mask(&crate::diag::error_chain(e)).into_owned());
        match &found {
            Ok(digest) => {
                errors.remove(&f.service);
                tracing::debug!(service = %f.service, reference = %f.reference, digest = %digest, "registry checked");
            }
            Err(e) => {
                let outcome = if e.retry_after().is_some() {
                    "rate_limited"
                } else {
                    "error"
                };
                ctx.metrics.image_check(&ctx.name, outcome);
                let failures = errors.get(&f.service).map_or(1, |(n, _)| n + 1);
                let wait = backoff(followed.interval, failures, e.retry_after());
                tracing::warn!(
                    service = %f.service,
                    reference = %f.reference,
                    error = message.as_deref().unwrap_or(""),
                    next_check_in = ?wait,
                    "registry check failed"
                );
                errors.insert(f.service.clone(), (failures, Instant::now() + wait));
            }
        }
        let (env, f2) = (ctx.name.clone(), f.clone());
        let digest = found.ok();
        let recorded = ctx
            .store
            .call(move |s| {
                let result = match (&digest, &message) {
                    (Some(d), _) => Ok(d.as_str()),
                    (None, m) => Err(m.as_deref().unwrap_or("registry check failed")),
                };
                s.record_image_check(
                    &env,
                    &f2.service,
                    &f2.reference,
                    &f2.policy,
                    result,
                    SystemTime::now(),
                )
            })
            .await;
        match recorded {
            Ok(true) => {
                tracing::info!(service = %f.service, reference = %f.reference, "new image digest found");
                ctx.metrics.image_check(&ctx.name, "new");
                news = true;
            }
            Ok(false) if errors.contains_key(&f.service) => {}
            Ok(false) => ctx.metrics.image_check(&ctx.name, "unchanged"),
            Err(e) => tracing::error!(error = %e, "cannot record an image check"),
        }
    }
    let env = ctx.name.clone();
    let services: Vec<String> = followed
        .services
        .iter()
        .map(|f| f.service.clone())
        .collect();
    if let Err(e) = ctx
        .store
        .call(move |s| s.retain_followed(&env, &services))
        .await
    {
        tracing::error!(error = %e, "cannot forget services no longer followed");
    }
    if news {
        dirty.mark(Trigger::Image);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_back_off_doubling_to_an_hour_or_as_the_registry_asks() {
        let i = Duration::from_secs(60);
        assert_eq!(backoff(i, 1, None), Duration::from_secs(120));
        assert_eq!(backoff(i, 2, None), Duration::from_secs(240));
        assert_eq!(backoff(i, 30, None), MAX_BACKOFF);
        assert_eq!(
            backoff(i, 1, Some(Duration::from_secs(600))),
            Duration::from_secs(600)
        );
        // Never sooner than the interval, whatever Retry-After says.
        assert_eq!(backoff(i, 1, Some(Duration::from_secs(1))), i);
        let j = jittered(i);
        assert!(j >= i && j <= i + i / 10, "{j:?}");
    }
}
