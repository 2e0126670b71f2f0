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
use crate::reconcile::decide::{self, Decision, Ended, Key, Next, Policy, Run, Suspension};
use crate::reconcile::{self, RenderOptions};
use crate::secrets::Masker;
use crate::source::CommitId;
use crate::store::{Effects, Finish, ImageIds, Kind, LastGood, Outcome, Store, Timings, Trigger};

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

/// How a pass ended, for the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassEnd {
    /// Wait for the next trigger.
    Done,
    /// Something outside was unreachable; try again after a backoff.
    Retry(String),
}

/// How one deploy attempt ended, with its (masked) error.
#[derive(Debug)]
struct Attempt {
    ended: Ended,
    error: Option<String>,
}

impl Attempt {
    fn transient(error: String) -> Attempt {
        Attempt {
            ended: Ended::Transient,
            error: Some(error),
        }
    }
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
    let run = match decide::what_to_run(&state, &head.commit, env.rollback.automatic) {
        Decision::Run(run) => run,
        Decision::Wait { failed } => {
            tracing::debug!(commit = %failed, "head is marked failed; waiting for a newer commit");
            return PassEnd::Done;
        }
    };
    let key = run.key();
    tracing::Span::current().record("commit", run.commit.short());

    // A poll, a ref change or a repeated webhook with nothing new: compare
    // the live state's fingerprint instead of running the pipeline.
    if let Some(applied) = &memo.applied
        && decide::may_skip(trigger, Some(&applied.key), &key)
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

    let policy = Policy {
        automatic_rollback: env.rollback.automatic,
        remove_on_failed_first_deploy: env.allow.remove_on_failed_first_deploy,
    };
    act(
        ctx,
        memo,
        &head,
        run,
        trigger,
        state.last_good.as_ref(),
        policy,
    )
    .await
}

/// The deploy that went bad before a rollback, for the rollback's messages.
struct RolledFrom {
    error: String,
    /// The backups taken while the last good commit ran, described.
    matching: String,
}

/// Runs `run` and does what [`decide::after`] says follows: record, retry,
/// mark failed, roll back (running the rollback the same way), suspend.
async fn act(
    ctx: &EnvContext,
    memo: &mut Memo,
    head: &Head,
    mut run: Run,
    trigger: Trigger,
    last_good: Option<&LastGood>,
    policy: Policy,
) -> PassEnd {
    let mask = |r: String| ctx.masker.mask(&r).into_owned();
    let mut rolled_from: Option<RolledFrom> = None;
    loop {
        let (attempt, pending) = deploy(ctx, memo, &run, trigger).await;
        let error = attempt.error.unwrap_or_default();
        let commit = &run.commit;
        match decide::after(&run, attempt.ended, last_good, policy) {
            Next::Record { last_good } => {
                let effects = Effects {
                    last_good,
                    ..Effects::default()
                };
                record(ctx, pending, effects).await;
                return PassEnd::Done;
            }
            Next::RolledBack { failed } => {
                record(ctx, pending, Effects::default()).await;
                let (why, matching) = rolled_from
                    .map(|r| (r.error, r.matching))
                    .unwrap_or_default();
                notify(
                    ctx,
                    head,
                    EventKind::RolledBack,
                    &failed,
                    Some(commit),
                    format!(
                        "commit {} failed ({why}); rolled back to {}{matching}",
                        failed.short(),
                        commit.short()
                    ),
                )
                .await;
                return PassEnd::Done;
            }
            // For a rollback: the next pass finds the head failed and runs
            // the last good commit again, the same rollback.
            Next::Retry => {
                record(ctx, pending, Effects::default()).await;
                return PassEnd::Retry(error);
            }
            Next::Reject { mark_failed } => {
                let (label, kind, what) = match attempt.ended {
                    Ended::Invalid => ("invalid", EventKind::Invalid, "does not render or check"),
                    _ => ("refused", EventKind::DeployFailed, "was refused"),
                };
                let effects = Effects {
                    failed: mark_failed.then(|| mask(format!("{label}: {error}"))),
                    ..Effects::default()
                };
                record(ctx, pending, effects).await;
                let message = format!(
                    "commit {} {what}; nothing was applied: {error}",
                    commit.short()
                );
                notify(ctx, head, kind, commit, None, message).await;
                return PassEnd::Done;
            }
            Next::LastGoodUnhealthy => {
                // There is nothing older to return to. Say so; the next
                // drift pass tries again.
                record(ctx, pending, failed_effects(&mask, &error)).await;
                let message = format!("last good commit {} is unhealthy: {error}", commit.short());
                notify(ctx, head, EventKind::DeployFailed, commit, None, message).await;
                return PassEnd::Done;
            }
            Next::MarkFailed => {
                record(ctx, pending, failed_effects(&mask, &error)).await;
                let message = format!(
                    "commit {} failed and automatic rollback is off: {error}",
                    commit.short()
                );
                notify(ctx, head, EventKind::DeployFailed, commit, None, message).await;
                return PassEnd::Done;
            }
            Next::RollBack(rollback) => {
                record(ctx, pending, failed_effects(&mask, &error)).await;
                let matching = matching_backups(ctx, &rollback.commit).await;
                tracing::warn!(failed = %commit.short(), to = %rollback.commit.short(), matching = matching.as_deref().unwrap_or("none"), "rolling back to the last good commit");
                rolled_from = Some(RolledFrom {
                    error,
                    matching: matching.map(|m| format!("; {m}")).unwrap_or_default(),
                });
                run = rollback;
            }
            Next::Suspend {
                why,
                mark_failed,
                remove_created,
            } => {
                let (kind, failed, to, mut reason) = match &why {
                    Suspension::PinnedFailed => (
                        EventKind::DeployFailed,
                        commit,
                        None,
                        format!("pinned commit {} failed: {error}", commit.short()),
                    ),
                    Suspension::FirstDeployFailed => (
                        EventKind::FirstDeployFailed,
                        commit,
                        None,
                        format!("first deploy of {} failed: {error}", commit.short()),
                    ),
                    Suspension::RollbackFailed { failed } => {
                        let reason = match &rolled_from {
                            Some(from) => format!(
                                "commit {} failed ({}) and the rollback to {} failed: {error}",
                                failed.short(),
                                from.error,
                                commit.short()
                            ),
                            None => format!("rollback to {} failed: {error}", commit.short()),
                        };
                        (EventKind::RollbackFailed, failed, Some(commit), reason)
                    }
                };
                if remove_created {
                    match remove_all(memo).await {
                        Ok(()) => reason.push_str("; what it created was removed"),
                        Err(e) => {
                            reason.push_str(&format!("; removing what it created failed: {e}"))
                        }
                    }
                }
                let reason = mask(reason);
                suspended(&reason);
                let effects = Effects {
                    suspend: Some(reason.clone()),
                    failed: mark_failed.then(|| mask(error.clone())),
                    ..Effects::default()
                };
                record(ctx, pending, effects).await;
                notify(ctx, head, kind, failed, to, reason).await;
                return PassEnd::Done;
            }
        }
    }
}

/// The commit is marked failed for `error`.
fn failed_effects(mask: &impl Fn(String) -> String, error: &str) -> Effects {
    Effects {
        failed: Some(mask(error.to_owned())),
        ..Effects::default()
    }
}

/// The backups taken while `to` last ran (before the failed deploy), as
/// the rollback's log and notification name them.
async fn matching_backups(ctx: &EnvContext, to: &CommitId) -> Option<String> {
    let (name, to) = (ctx.name.clone(), to.clone());
    ctx.store
        .call(move |s| crate::backup::deploys::matching(s, &name, &to))
        .await
        .map(|b| crate::backup::deploys::describe(&ctx.name, &b))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot look up the matching backup");
            None
        })
}

/// Loads, plans, applies and verifies `run`, recording it. Updates the memo
/// with what was applied.
async fn deploy(
    ctx: &EnvContext,
    memo: &mut Memo,
    run: &Run,
    trigger: Trigger,
) -> (Attempt, Option<Pending>) {
    let started = SystemTime::now();
    let (key, pin, kind) = (&run.key(), run.pin.as_ref(), run.kind());
    if kind == Kind::Rollback {
        ctx.metrics.rollback(&ctx.name);
    }
    let (name, failed) = (ctx.name.clone(), run.rollback_of().cloned());
    let begun = ctx
        .store
        .call(move |s| s.begin(&name, trigger, kind, failed.as_ref(), started))
        .await;
    let id = match begun {
        Ok(id) => id,
        Err(e) => return (Attempt::transient(e.to_string()), None),
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
            return rec.end(Outcome::Invalid, Ended::Invalid, Some(e.clone()));
        }
        Err(e) => {
            return rec.end(Outcome::Failed, Ended::Transient, Some(e.to_string()));
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
                return rec.end(Outcome::Failed, Ended::Transient, Some(e.clone()));
            }
        }
    }

    // apply (a no-op plan only lists images, for the ids) — only while this
    // replica still holds the environment's Lease, checked on the server.
    if let Some(lease) = &ctx.lease
        && let Err(e) = lease.fence().await
    {
        return rec.end(Outcome::Failed, Ended::Transient, Some(e.clone()));
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
            return rec.end(Outcome::Unhealthy, Ended::Bad, Some(reason.clone()));
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
    rec.end(outcome, Ended::Good, None)
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
        ended: Ended,
        error: Option<String>,
    ) -> (Attempt, Option<Pending>) {
        self.finish.outcome = outcome;
        self.finish.error = error.clone();
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
        (Attempt { ended, error }, Some(pending))
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
            BackendError::Unavailable { .. } => {
                self.end(Outcome::Failed, Ended::Transient, Some(text.clone()))
            }
            BackendError::Refused { .. } => {
                self.end(Outcome::Failed, Ended::Refused, Some(text.clone()))
            }
            BackendError::Apply { .. } if applying => {
                self.end(Outcome::Failed, Ended::Bad, Some(text.clone()))
            }
            BackendError::Apply { .. } => {
                self.end(Outcome::Failed, Ended::Refused, Some(text.clone()))
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
