//! One reconcile pass of one environment, as the daemon runs it:
//! source → render → check → plan → apply → verify → record, and on failure
//! the rollback — which is the same pass over the last good commit, pinned
//! to the image ids it ran. A plan is never inverted.
//!
//! [`run`] decides what the environment should run now (an operator's pin,
//! the head of its branch, or — when the head is marked failed — its last
//! good commit), skips work when a poll finds neither the commit nor the
//! live state changed, and hands transient failures (repo or engine
//! unreachable) back to the worker to retry with backoff. A bad commit is
//! marked failed and not tried again until a newer commit arrives or an
//! operator forces it; a failed rollback or first deploy suspends the
//! environment. Everything recorded, logged or sent is masked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::alert::{Event, EventKind, Notifier};
use super::probe;
use super::repo::{Head, Lookup, RepoHandle};
use crate::backend::{Backend, BackendError, Context, Driver, DriverLive, Health, Verdict};
use crate::model::{DesiredState, Resources};
use crate::reconcile::{self, RenderOptions};
use crate::secrets::Masker;
use crate::source::CommitId;
use crate::store::{Effects, Finish, ImageIds, Kind, Outcome, Store, Timings, Trigger};

/// Everything a pass of one environment needs; shared by its worker.
#[derive(Debug, Clone)]
pub struct EnvContext {
    pub name: String,
    pub repo: Arc<RepoHandle>,
    pub store: Arc<Store>,
    pub render: RenderOptions,
    /// Every secret value the daemon knows (secrets directory, environment,
    /// webhook secret, API token): masked everywhere.
    pub masker: Masker,
    pub notifier: Notifier,
    pub http: reqwest::Client,
    /// This daemon's identity (in notifications).
    pub identity: String,
    /// How often verify polls the backends.
    pub verify_poll: Duration,
    /// The environment's Lease when replicas elect a leader per
    /// environment: every apply is fenced by it.
    pub lease: Option<Arc<super::lease::Elector>>,
    /// The daemon's counters (`/metrics`).
    pub metrics: Arc<crate::http::metrics::Metrics>,
}

/// What a worker remembers between passes.
#[derive(Debug, Default)]
pub struct Memo {
    applied: Option<Applied>,
    removed: bool,
    last_invalid_manifest: Option<String>,
}

impl Memo {
    /// The drift interval of the environment as last loaded.
    pub fn drift_interval(&self) -> Option<Duration> {
        self.applied
            .as_ref()
            .map(|a| a.desired.environment.drift_interval)
    }
}

/// The last state this environment was brought to.
#[derive(Debug)]
struct Applied {
    key: Key,
    desired: DesiredState,
    drivers: Vec<Driver>,
    fingerprint: Vec<u8>,
    masker: Masker,
}

/// What a pass applies: a commit, optionally pinned to image ids.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    commit: CommitId,
    pinned_images: bool,
}

/// How a pass ended, for the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassEnd {
    /// Wait for the next trigger.
    Done,
    /// Something outside was unreachable; try again after a backoff.
    Retry(String),
}

/// How one deploy attempt ended.
#[derive(Debug)]
enum Attempt {
    /// In the desired state and healthy.
    Good,
    /// Render or check failed: nothing was applied.
    Invalid(String),
    /// A backend refused the plan: nothing was applied.
    Refused(String),
    /// Applying failed or the result is unhealthy.
    Bad(String),
    /// Repo or engine unreachable.
    Transient(String),
}

/// Runs one pass; `since` is when the trigger fired (fetches that started
/// later already cover it).
pub async fn run(ctx: &EnvContext, memo: &mut Memo, trigger: Trigger, since: Instant) -> PassEnd {
    let t = Instant::now();
    let fetched = ctx.repo.fetch(since).await;
    ctx.metrics.fetched(&ctx.name, t.elapsed(), fetched.is_ok());
    if let Err(e) = fetched {
        return PassEnd::Retry(ctx.masker.mask(&format!("fetch: {e}")).into_owned());
    }
    let name = ctx.name.clone();
    let state = match ctx.store.call(move |s| s.env_state(&name)).await {
        Ok(s) => s,
        Err(e) => return PassEnd::Retry(e.to_string()),
    };
    let control = &state.control;
    if let Some(reason) = &control.suspended {
        tracing::info!(reason = %reason, "suspended: not reconciling (driftless resume --env {} lifts it)", ctx.name);
        return PassEnd::Done;
    }
    let head = match ctx.repo.head(&ctx.name).await {
        Ok(Lookup::Found(head)) => {
            memo.removed = false;
            head
        }
        Ok(Lookup::Removed { prune }) => {
            removed(ctx, memo, prune).await;
            return PassEnd::Done;
        }
        Err(e) => {
            let e = ctx.masker.mask(&e).into_owned();
            if memo.last_invalid_manifest.as_deref() != Some(e.as_str()) {
                tracing::error!(error = %e, "the root manifest cannot be read; nothing is applied");
                memo.last_invalid_manifest = Some(e);
            }
            return PassEnd::Done;
        }
    };
    memo.last_invalid_manifest = None;
    let env = &head.environment;

    // What should run now.
    let last_good = state.last_good.clone();
    let (commit, pin, kind, rollback_of, forced) = if let Some(pinned) = &control.pinned {
        let pin = last_good
            .as_ref()
            .filter(|lg| &lg.commit == pinned)
            .map(|lg| lg.image_ids.clone());
        (pinned.clone(), pin, Kind::Deploy, None, true)
    } else {
        match state.failed.iter().any(|f| f.commit == head.commit) {
            false => (head.commit.clone(), None, Kind::Deploy, None, false),
            true => match &last_good {
                Some(lg) if lg.commit != head.commit && env.rollback.automatic => (
                    lg.commit.clone(),
                    Some(lg.image_ids.clone()),
                    Kind::Rollback,
                    Some(head.commit.clone()),
                    false,
                ),
                _ => {
                    tracing::debug!(commit = %head.commit, "head is marked failed; waiting for a newer commit");
                    return PassEnd::Done;
                }
            },
        }
    };
    let key = Key {
        commit: commit.clone(),
        pinned_images: pin.is_some(),
    };
    tracing::Span::current().record("commit", commit.short());

    // A poll, a ref change or a repeated webhook with nothing new: compare
    // the live state's fingerprint instead of running the pipeline.
    if matches!(trigger, Trigger::Poll | Trigger::Watch | Trigger::Webhook)
        && let Some(applied) = &memo.applied
        && applied.key == key
    {
        match fingerprint(&applied.drivers, &applied.desired, &applied.masker).await {
            Ok(fp) if fp == applied.fingerprint => {
                tracing::debug!("neither the commit nor the live state changed");
                return PassEnd::Done;
            }
            Ok(_) => tracing::info!("live state changed since the last reconcile"),
            Err(e) => return PassEnd::Retry(ctx.masker.mask(&e.to_string()).into_owned()),
        }
    }

    let (first, pending) = deploy(
        ctx,
        memo,
        &key,
        pin.as_ref(),
        kind,
        rollback_of.as_ref(),
        trigger,
    )
    .await;
    let mask = |r: String| ctx.masker.mask(&r).into_owned();
    match first {
        Attempt::Good => {
            // A rollback state stays on the last good record; anything else
            // healthy becomes the last good commit.
            let effects = Effects {
                last_good: kind == Kind::Deploy,
                ..Effects::default()
            };
            record(ctx, pending, effects).await;
            PassEnd::Done
        }
        Attempt::Transient(e) => {
            record(ctx, pending, Effects::default()).await;
            PassEnd::Retry(e)
        }
        Attempt::Invalid(e) => {
            let effects = Effects {
                failed: (!forced).then(|| mask(format!("invalid: {e}"))),
                ..Effects::default()
            };
            record(ctx, pending, effects).await;
            notify(
                ctx,
                &head,
                EventKind::Invalid,
                &commit,
                None,
                format!(
                    "commit {} does not render or check; nothing was applied: {e}",
                    commit.short()
                ),
            )
            .await;
            PassEnd::Done
        }
        Attempt::Refused(e) => {
            let effects = Effects {
                failed: (!forced).then(|| mask(format!("refused: {e}"))),
                ..Effects::default()
            };
            record(ctx, pending, effects).await;
            notify(
                ctx,
                &head,
                EventKind::DeployFailed,
                &commit,
                None,
                format!(
                    "commit {} was refused; nothing was applied: {e}",
                    commit.short()
                ),
            )
            .await;
            PassEnd::Done
        }
        Attempt::Bad(e) if kind == Kind::Rollback => {
            // Running the last good commit failed: stop, no flapping.
            // A rollback always names the commit it replaces.
            let failed = rollback_of.as_ref().unwrap_or(&commit);
            let reason = mask(format!("rollback to {} failed: {e}", commit.short()));
            suspended(&reason);
            let effects = Effects {
                suspend: Some(reason.clone()),
                ..Effects::default()
            };
            record(ctx, pending, effects).await;
            notify(
                ctx,
                &head,
                EventKind::RollbackFailed,
                failed,
                Some(&commit),
                reason,
            )
            .await;
            PassEnd::Done
        }
        Attempt::Bad(e) => {
            failed_deploy(
                ctx,
                memo,
                &head,
                Failure {
                    commit: &commit,
                    forced,
                    last_good,
                    trigger,
                    error: e,
                    pending,
                },
            )
            .await
        }
    }
}

/// A deploy that applied something bad, not yet recorded.
struct Failure<'a> {
    commit: &'a CommitId,
    /// An operator pinned the commit.
    forced: bool,
    last_good: Option<crate::store::LastGood>,
    trigger: Trigger,
    error: String,
    pending: Option<Pending>,
}

/// A deploy applied something and it is bad: mark the commit, roll back.
async fn failed_deploy(ctx: &EnvContext, memo: &mut Memo, head: &Head, f: Failure<'_>) -> PassEnd {
    let Failure {
        commit,
        forced,
        last_good,
        trigger,
        error,
        pending,
    } = f;
    let env = &head.environment;
    let mask = |r: String| ctx.masker.mask(&r).into_owned();
    if forced {
        // An operator pinned this commit: do not undo their choice, stop.
        let reason = mask(format!("pinned commit {} failed: {error}", commit.short()));
        suspended(&reason);
        let effects = Effects {
            suspend: Some(reason.clone()),
            ..Effects::default()
        };
        record(ctx, pending, effects).await;
        notify(ctx, head, EventKind::DeployFailed, commit, None, reason).await;
        return PassEnd::Done;
    }
    let failed = Effects {
        failed: Some(mask(error.clone())),
        ..Effects::default()
    };
    match last_good {
        None => {
            let mut reason = format!("first deploy of {} failed: {error}", commit.short());
            if env.allow.remove_on_failed_first_deploy {
                match remove_all(memo).await {
                    Ok(()) => reason.push_str("; what it created was removed"),
                    Err(e) => reason.push_str(&format!("; removing what it created failed: {e}")),
                }
            }
            let reason = mask(reason);
            suspended(&reason);
            let effects = Effects {
                suspend: Some(reason.clone()),
                ..failed
            };
            record(ctx, pending, effects).await;
            notify(
                ctx,
                head,
                EventKind::FirstDeployFailed,
                commit,
                None,
                reason,
            )
            .await;
            PassEnd::Done
        }
        Some(lg) if lg.commit == *commit => {
            // The last good commit itself went bad (on a drift re-apply):
            // there is nothing older to return to. Say so; the next drift
            // pass tries again.
            record(ctx, pending, failed).await;
            notify(
                ctx,
                head,
                EventKind::DeployFailed,
                commit,
                None,
                format!("last good commit {} is unhealthy: {error}", commit.short()),
            )
            .await;
            PassEnd::Done
        }
        Some(_) if !env.rollback.automatic => {
            record(ctx, pending, failed).await;
            notify(
                ctx,
                head,
                EventKind::DeployFailed,
                commit,
                None,
                format!(
                    "commit {} failed and automatic rollback is off: {error}",
                    commit.short()
                ),
            )
            .await;
            PassEnd::Done
        }
        Some(lg) => {
            record(ctx, pending, failed).await;
            // The backups taken while the last good commit ran (before the
            // failed deploy), named in the log and the notification.
            let (name, to) = (ctx.name.clone(), lg.commit.clone());
            let matching = ctx
                .store
                .call(move |s| crate::backup::deploys::matching(s, &name, &to))
                .await
                .map(|b| crate::backup::deploys::describe(&ctx.name, &b))
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot look up the matching backup");
                    None
                });
            tracing::warn!(failed = %commit.short(), to = %lg.commit.short(), matching = matching.as_deref().unwrap_or("none"), "rolling back to the last good commit");
            let matching = matching.map(|m| format!("; {m}")).unwrap_or_default();
            let key = Key {
                commit: lg.commit.clone(),
                pinned_images: true,
            };
            let (rollback, pending) = deploy(
                ctx,
                memo,
                &key,
                Some(&lg.image_ids),
                Kind::Rollback,
                Some(commit),
                trigger,
            )
            .await;
            match rollback {
                Attempt::Good => {
                    record(ctx, pending, Effects::default()).await;
                    notify(
                        ctx,
                        head,
                        EventKind::RolledBack,
                        commit,
                        Some(&lg.commit),
                        format!(
                            "commit {} failed ({error}); rolled back to {}{matching}",
                            commit.short(),
                            lg.commit.short()
                        ),
                    )
                    .await;
                    PassEnd::Done
                }
                // The next pass finds the head failed and runs the last good
                // commit again: the same rollback.
                Attempt::Transient(e) => {
                    record(ctx, pending, Effects::default()).await;
                    PassEnd::Retry(e)
                }
                Attempt::Invalid(e) | Attempt::Refused(e) | Attempt::Bad(e) => {
                    let reason = mask(format!(
                        "commit {} failed ({error}) and the rollback to {} failed: {e}",
                        commit.short(),
                        lg.commit.short()
                    ));
                    suspended(&reason);
                    let effects = Effects {
                        suspend: Some(reason.clone()),
                        ..Effects::default()
                    };
                    record(ctx, pending, effects).await;
                    notify(
                        ctx,
                        head,
                        EventKind::RollbackFailed,
                        commit,
                        Some(&lg.commit),
                        reason,
                    )
                    .await;
                    PassEnd::Done
                }
            }
        }
    }
}

/// Loads, plans, applies and verifies `key`, recording it. Updates the memo
/// with what was applied.
#[allow(clippy::too_many_arguments)]
async fn deploy(
    ctx: &EnvContext,
    memo: &mut Memo,
    key: &Key,
    pin: Option<&ImageIds>,
    kind: Kind,
    rollback_of: Option<&CommitId>,
    trigger: Trigger,
) -> (Attempt, Option<Pending>) {
    let started = SystemTime::now();
    if kind == Kind::Rollback {
        ctx.metrics.rollback(&ctx.name);
    }
    let (name, failed) = (ctx.name.clone(), rollback_of.cloned());
    let begun = ctx
        .store
        .call(move |s| s.begin(&name, trigger, kind, failed.as_ref(), started))
        .await;
    let id = match begun {
        Ok(id) => id,
        Err(e) => return (Attempt::Transient(e.to_string()), None),
    };
    let mut rec = Recorder {
        ctx,
        id,
        finish: Finish {
            commit: Some(key.commit.clone()),
            outcome: Outcome::Running,
            plan: None,
            diff: None,
            changes: None,
            error: None,
            image_ids: ImageIds::new(),
            timings: Timings::default(),
        },
        discard: false,
    };

    // source → render → check
    let t = Instant::now();
    let source = ctx.repo.at(&key.commit);
    let env = ctx.name.clone();
    let options = ctx.render.clone();
    let loaded =
        tokio::task::spawn_blocking(move || reconcile::load(&source, &env, &options)).await;
    rec.finish.timings.load_ms = Some(ms(t));
    let loaded = match loaded {
        Ok(Ok(l)) => l,
        Ok(Err(diags)) => {
            let e = ctx.masker.mask(&diags.to_string()).into_owned();
            return rec.end(Outcome::Invalid, Some(e.clone()), Attempt::Invalid(e));
        }
        Err(e) => {
            return rec.end(
                Outcome::Failed,
                Some(e.to_string()),
                Attempt::Transient(e.to_string()),
            );
        }
    };
    let mut masker = ctx.masker.clone();
    masker.merge(&loaded.renderer.masker());
    // The rendered files, for a `before_apply` job backing up the config.
    let backup_files = if loaded.checked.state.backups.iter().any(|j| j.before_apply) {
        crate::backup::runner::rendered_files(&loaded.checked.files)
    } else {
        Vec::new()
    };
    let mut desired = loaded.checked.state;
    // An environment can span several daemons: apply and verify only the
    // targets this daemon's identity claims.
    let identity = Some(ctx.identity.as_str()).filter(|i| !i.is_empty());
    desired.targets.retain(|t| t.target.claimed_by(identity));

    // plan
    let t = Instant::now();
    let drivers = match reconcile::connect(&desired).await {
        Ok(d) => d,
        Err(e) => return rec.backend_error(&masker, e, false),
    };
    if let Some(ids) = pin {
        match live_images(&drivers, &desired, &masker).await {
            Ok(live) => pin_images(&mut desired, ids, &live),
            Err(e) => return rec.backend_error(&masker, e, false),
        }
    }
    let plan = match reconcile::plan(&drivers, &desired, &masker).await {
        Ok(p) => p,
        Err(e) => return rec.backend_error(&masker, e, false),
    };
    rec.finish.timings.plan_ms = Some(ms(t));
    let mut plan_json = plan.to_json();
    masker.mask_json(&mut plan_json);
    rec.finish.plan = Some(plan_json);
    rec.finish.diff = Some(masker.mask(&plan.render_text(false, false)).into_owned());
    rec.finish.changes = Some(u32::try_from(plan.summary().changed()).unwrap_or(u32::MAX));
    let changed = plan.has_changes();
    if changed {
        let s = plan.summary();
        tracing::info!(
            create = s.create,
            update = s.update,
            recreate = s.recreate,
            delete = s.delete,
            "applying"
        );
    }

    // before_apply backups: a deploy that changes something waits for them
    // (recorded with this reconcile's id); a rollback does not.
    if changed && kind == Kind::Deploy && desired.backups.iter().any(|j| j.before_apply) {
        match super::backups::before_apply(ctx, &desired, backup_files, &masker, id).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(backups = ?ids, "before_apply backups taken")
            }
            Ok(_) => {}
            Err(e) => {
                let e = masker.mask(&e).into_owned();
                return rec.end(Outcome::Failed, Some(e.clone()), Attempt::Transient(e));
            }
        }
    }

    // apply (a no-op plan only lists images, for the ids) — only while this
    // replica still holds the environment's Lease, checked on the server.
    if let Some(lease) = &ctx.lease
        && let Err(e) = lease.fence().await
    {
        return rec.end(Outcome::Failed, Some(e.clone()), Attempt::Transient(e));
    }
    let t = Instant::now();
    let applied = reconcile::apply(&drivers, &desired, &plan, &masker).await;
    rec.finish.timings.apply_ms = Some(ms(t));
    // From here on the memo describes what is live, good or bad.
    let report = match applied {
        Ok(r) => r,
        Err(e) => {
            memo.applied = Some(Applied {
                key: key.clone(),
                desired,
                drivers,
                fingerprint: Vec::new(),
                masker: masker.clone(),
            });
            return rec.backend_error(&masker, e, true);
        }
    };
    rec.finish.image_ids = report.image_ids.clone();

    // verify: after changes, and whenever this state is not known good.
    let known_good = !changed
        && (memo
            .applied
            .as_ref()
            .is_some_and(|a| a.key == *key && !a.fingerprint.is_empty())
            || kind == Kind::Deploy && last_good_is(ctx, &key.commit).await);
    if !known_good {
        let t = Instant::now();
        let deadline = Instant::now() + desired.environment.health.deadline;
        let verdicts = match reconcile::verify(&drivers, &desired, &masker, ctx.verify_poll).await {
            Ok(v) => v,
            Err(e) => return rec.backend_error(&masker, e, true),
        };
        let mut verdicts = verdicts;
        if verdicts.iter().all(|v| v.health == Health::Healthy) {
            verdicts.extend(
                probe::run_all(
                    &ctx.http,
                    "probes",
                    &desired.environment.health.probes,
                    deadline,
                )
                .await,
            );
        }
        rec.finish.timings.verify_ms = Some(ms(t));
        let bad: Vec<&Verdict> = verdicts
            .iter()
            .filter(|v| v.health != Health::Healthy)
            .collect();
        if !bad.is_empty() {
            let reason = bad
                .iter()
                .map(|v| format!("{} {}: {}", v.resource.kind, v.resource.name, v.reason))
                .collect::<Vec<_>>()
                .join("; ");
            let reason = masker.mask(&format!("unhealthy: {reason}")).into_owned();
            memo.applied = Some(Applied {
                key: key.clone(),
                desired,
                drivers,
                fingerprint: Vec::new(),
                masker,
            });
            return rec.end(
                Outcome::Unhealthy,
                Some(reason.clone()),
                Attempt::Bad(reason),
            );
        }
    }
    let fp = fingerprint(&drivers, &desired, &masker)
        .await
        .unwrap_or_default();
    memo.applied = Some(Applied {
        key: key.clone(),
        desired,
        drivers,
        fingerprint: fp,
        masker,
    });
    let outcome = if changed {
        Outcome::Healthy
    } else {
        Outcome::Unchanged
    };
    // An unchanged re-plan by a timer is not history worth keeping.
    if outcome == Outcome::Unchanged
        && matches!(trigger, Trigger::Drift | Trigger::Poll | Trigger::Retry)
    {
        rec.discard = true;
    } else {
        tracing::info!(outcome = outcome.as_str(), "reconciled");
    }
    rec.end(outcome, None, Attempt::Good)
}

async fn last_good_is(ctx: &EnvContext, commit: &CommitId) -> bool {
    let name = ctx.name.clone();
    ctx.store
        .call(move |s| s.last_good(&name))
        .await
        .ok()
        .flatten()
        .is_some_and(|lg| lg.commit == *commit)
}

/// The end of an attempt, not yet written: the pass records it together
/// with what follows from it ([`record`]).
struct Pending {
    id: i64,
    finish: Finish,
    discard: bool,
}

/// Writes an attempt's end and its effects in one transaction.
async fn record(ctx: &EnvContext, pending: Option<Pending>, effects: Effects) {
    let Some(p) = pending else {
        return;
    };
    let name = ctx.name.clone();
    let effects = Effects {
        discard: p.discard,
        ..effects
    };
    let written = ctx
        .store
        .call(move |s| s.record(&name, p.id, &p.finish, &effects, SystemTime::now()))
        .await;
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot record the reconcile");
    }
}

/// Collects the end of one attempt.
struct Recorder<'a> {
    ctx: &'a EnvContext,
    id: i64,
    finish: Finish,
    discard: bool,
}

impl Recorder<'_> {
    fn end(
        mut self,
        outcome: Outcome,
        error: Option<String>,
        attempt: Attempt,
    ) -> (Attempt, Option<Pending>) {
        self.finish.outcome = outcome;
        self.finish.error = error;
        self.ctx
            .metrics
            .reconciled(&self.ctx.name, outcome, &self.finish.timings);
        if outcome != Outcome::Unchanged && outcome != Outcome::Healthy {
            tracing::warn!(
                outcome = outcome.as_str(),
                error = self.finish.error.as_deref().unwrap_or(""),
                "reconcile failed"
            );
        }
        let pending = Pending {
            id: self.id,
            finish: self.finish,
            discard: self.discard,
        };
        (attempt, Some(pending))
    }

    /// A backend error: unreachable is transient, a refusal applied
    /// nothing, an apply error (or anything after changes) is bad.
    fn backend_error(
        self,
        masker: &Masker,
        e: BackendError,
        applying: bool,
    ) -> (Attempt, Option<Pending>) {
        let text = masker.mask(&e.to_string()).into_owned();
        match e {
            BackendError::Unavailable { .. } => self.end(
                Outcome::Failed,
                Some(text.clone()),
                Attempt::Transient(text),
            ),
            BackendError::Refused { .. } => {
                self.end(Outcome::Failed, Some(text.clone()), Attempt::Refused(text))
            }
            BackendError::Apply { .. } if applying => {
                self.end(Outcome::Failed, Some(text.clone()), Attempt::Bad(text))
            }
            BackendError::Apply { .. } => {
                self.end(Outcome::Failed, Some(text.clone()), Attempt::Refused(text))
            }
        }
    }
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Logs a suspension (recorded with the attempt that caused it).
fn suspended(reason: &str) {
    tracing::error!(reason = %reason, "environment suspended");
}

async fn notify(
    ctx: &EnvContext,
    head: &Head,
    kind: EventKind,
    commit: &CommitId,
    to: Option<&CommitId>,
    message: String,
) {
    let event = Event {
        environment: ctx.name.clone(),
        kind,
        commit: Some(commit.clone()),
        rolled_back_to: to.cloned(),
        message: ctx.masker.mask(&message).into_owned(),
        daemon: ctx.identity.clone(),
    };
    ctx.notifier.send(&head.notifications, &event).await;
}

/// The environment left the manifest: stop driving it, and remove what it
/// deployed only when the manifest opts into pruning removed environments.
async fn removed(ctx: &EnvContext, memo: &mut Memo, prune: bool) {
    if memo.removed {
        return;
    }
    memo.removed = true;
    if prune {
        match remove_all(memo).await {
            Ok(()) => {
                tracing::warn!(env = %ctx.name, "environment removed from the manifest; its resources were pruned")
            }
            Err(e) => {
                tracing::error!(env = %ctx.name, error = %ctx.masker.mask(&e), "environment removed from the manifest; pruning failed")
            }
        }
    } else {
        tracing::warn!(env = %ctx.name, "environment removed from the manifest; no longer driven, its resources stay");
    }
    memo.applied = None;
}

/// Removes every Compose resource the environment deployed (the plan of an
/// empty desired state: deletes, named volumes kept unless allowed).
async fn remove_all(memo: &Memo) -> Result<(), String> {
    let Some(applied) = &memo.applied else {
        return Ok(());
    };
    let mut empty = applied.desired.clone();
    empty.environment.allow.mass_removal = true;
    for t in &mut empty.targets {
        if let Resources::Compose(projects) = &mut t.resources {
            projects.clear();
        }
    }
    let plan = reconcile::plan(&applied.drivers, &empty, &applied.masker)
        .await
        .map_err(|e| e.to_string())?;
    reconcile::apply(&applied.drivers, &empty, &plan, &applied.masker)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Reference → image id on each target, as the engine resolves them now.
async fn live_images(
    drivers: &[Driver],
    desired: &DesiredState,
    masker: &Masker,
) -> Result<BTreeMap<String, String>, BackendError> {
    let ctx = Context {
        environment: &desired.environment.name,
        masker,
        allow: &desired.environment.allow,
    };
    let mut out = BTreeMap::new();
    // Only Compose targets run images driftless pins; others are not read.
    for (d, t) in drivers.iter().zip(&desired.targets) {
        if matches!(d, Driver::Compose(_))
            && let DriverLive::Compose(live) = d.read_live(t, ctx).await?
        {
            out.extend(live.images);
        }
    }
    Ok(out)
}

/// Pins each service to the image id its last good run recorded, where the
/// reference no longer resolves to that id (a moved tag, a removed image).
/// A service whose reference still resolves to the recorded id keeps it, so
/// a rollback recreates only what the bad commit changed; the engine then
/// creates containers from `sha256:` ids for the rest.
pub fn pin_images(desired: &mut DesiredState, ids: &ImageIds, live: &BTreeMap<String, String>) {
    for t in &mut desired.targets {
        let Resources::Compose(projects) = &mut t.resources else {
            continue;
        };
        for p in projects {
            for (name, s) in p.services.iter_mut() {
                let key = format!("{}/{name}", p.name);
                if let Some(id) = ids.get(&key)
                    && live.get(&s.image) != Some(id)
                {
                    tracing::info!(service = %key, image = %s.image, id = %id, "pinned to the recorded image id");
                    s.image = id.clone();
                }
            }
        }
    }
}

/// A digest of the live state of every target: equal digests mean nothing
/// changed on the engine since the last pass.
async fn fingerprint(
    drivers: &[Driver],
    desired: &DesiredState,
    masker: &Masker,
) -> Result<Vec<u8>, BackendError> {
    let ctx = Context {
        environment: &desired.environment.name,
        masker,
        allow: &desired.environment.allow,
    };
    let mut hasher = Sha256::new();
    for (d, t) in drivers.iter().zip(&desired.targets) {
        let live = d.read_live(t, ctx).await?;
        // The live types are plain data with ordered maps; their debug form
        // is a faithful, stable rendering of everything the planner reads.
        hasher.update(format!("{live:?}").as_bytes());
    }
    Ok(hasher.finalize().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_only_services_whose_reference_moved() {
        let text = "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n";
        let manifest = crate::manifest::Manifest::parse(text).unwrap();
        let mut p = crate::model::compose::Project {
            disabled_services: Default::default(),
            name: "p".into(),
            services: BTreeMap::new(),
            networks: BTreeMap::new(),
            volumes: BTreeMap::new(),
            origin: Default::default(),
        };
        for (s, image) in [("a", "img:1"), ("b", "img:2"), ("c", "img:3")] {
            p.services.insert(
                s.into(),
                crate::model::compose::Service {
                    image: image.into(),
                    ..Default::default()
                },
            );
        }
        let mut desired = DesiredState {
            environment: manifest.environments["dev"].clone(),
            revision: crate::source::Revision::Commit { id: "c".into() },
            targets: vec![crate::model::TargetState {
                target: manifest.targets["local"].clone(),
                resources: Resources::Compose(vec![p]),
            }],
            backups: vec![],
        };
        let ids: ImageIds = [
            ("p/a".to_owned(), "sha256:a".to_owned()),
            ("p/b".to_owned(), "sha256:b".to_owned()),
        ]
        .into();
        // img:1 still resolves to a's id; img:2 moved; c has no record.
        let live: BTreeMap<String, String> = [
            ("img:1".to_owned(), "sha256:a".to_owned()),
            ("img:2".to_owned(), "sha256:new".to_owned()),
        ]
        .into();
        pin_images(&mut desired, &ids, &live);
        let Resources::Compose(projects) = &desired.targets[0].resources else {
            unreachable!()
        };
        let images: Vec<&str> = projects[0]
            .services
            .values()
            .map(|s| s.image.as_str())
            .collect();
        assert_eq!(images, ["img:1", "sha256:b", "img:3"]);
    }
}
