//! One reconcile of one environment, as `driftless reconcile` and the
//! daemon's pass both run it: load → plan → `before_apply` backups → apply
//! → verify (backend verdicts, then the environment's probes) → record, and
//! what [`decide::after`] says follows — a rollback runs through the very
//! same stages over the last good commit, pinned to its image ids.
//!
//! The callers differ only in what they pass in: the [`Env`] (store,
//! secrets, identity), and [`Hooks`] — where a commit is read from, the
//! fence before an apply (the daemon's Lease), what is said when (the
//! daemon's notifications and metrics, the CLI's printed plan). A dry-run
//! is [`prepare`] alone: the same load and plan, nothing applied or
//! recorded. [`reconcile`] returns a typed [`Report`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::decide::{self, Ended, Key, Next, Origin, Policy, Run, Suspension};
use super::{Loaded, RenderOptions, probe};
use crate::backend::{BackendError, Driver, DriverLive, Health, Verdict};
use crate::model::{DesiredState, Resources};
use crate::plan::Plan;
use crate::secrets::Masker;
use crate::source::{CommitId, Source};
use crate::store::{
    Digests, Effects, Finish, ImageIds, Kind, LastGood, Outcome, Store, Timings, Trigger,
};

/// The environment a reconcile drives and what it reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub name: &'a str,
    /// The state store the reconcile is recorded in.
    pub store: &'a Arc<Store>,
    pub render: &'a RenderOptions,
    pub scope: Scope<'a>,
    /// The client HTTP probes use.
    pub http: &'a reqwest::Client,
    /// How often verify polls the backends.
    pub verify_poll: Duration,
    /// Where the apply shows the services it is replacing (the daemon's
    /// status); `None` when nobody watches.
    pub progress: Option<&'a crate::backend::progress::Progress>,
}

impl Env<'_> {
    fn masker(&self) -> &Masker {
        self.scope.masker
    }
}

/// What a plan covers and how it is masked: the part of [`Env`] a dry-run
/// needs too.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// Every secret value the caller knows: masked everywhere.
    pub masker: &'a Masker,
    pub targets: Claim<'a>,
    /// Allow a plan removing most of what is deployed, as the
    /// environment's `allow.mass_removal` does (the CLI's flag).
    pub allow_mass_removal: bool,
    /// Adopt a project of the same name that another tool or another
    /// driftless instance deployed (the CLI's `--adopt`).
    pub adopt: bool,
}

/// Which of an environment's targets a reconcile drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// Those this daemon identity claims: it owns them or nobody does
    /// (`None`: only those nobody owns). An environment can span several
    /// daemons; each applies and verifies its own part.
    Identity(Option<&'a str>),
    /// Every target, whoever owns it.
    All,
}

/// What a reconcile says, for whoever listens (the daemon notifies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// A bad commit was rolled back to the last good one.
    RolledBack,
    /// The rollback itself failed: the environment is suspended.
    RollbackFailed,
    /// The first deploy failed (no last good commit): suspended.
    FirstDeployFailed,
    /// A commit failed and was not rolled back.
    DeployFailed,
    /// A commit did not render or check: nothing was applied.
    Invalid,
}

/// One thing worth telling people; the message is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// The commit that failed.
    pub commit: CommitId,
    /// The commit rolled back to.
    pub to: Option<CommitId>,
    pub message: String,
}

/// Why the caller's fence refused an apply (the daemon's Lease), with
/// its cause.
pub type Fenced = Box<dyn std::error::Error + Send + Sync>;

/// Where the callers of [`reconcile`] differ.
pub trait Hooks: Sync {
    /// The source that reads `commit`.
    fn source_at(&self, commit: &CommitId) -> Result<Source, String>;

    /// `run` already loaded by the caller (the CLI's checked work tree, so
    /// the apply executes exactly what was read); `None` loads it from
    /// [`Hooks::source_at`].
    fn loaded(&self, _run: &Run) -> Option<Loaded> {
        None
    }

    /// Checked before a head or pinned commit that is not the last good one
    /// is read: the daemon's signature check. A refusal ends the run as
    /// [`Ended::Unverified`] (recorded as invalid, marked failed, notified;
    /// nothing is read from the commit or applied).
    fn admit(&self, _commit: &CommitId) -> impl Future<Output = Result<(), Admission>> + Send {
        async { Ok(()) }
    }

    /// Checked right before each apply; an error stops the reconcile as
    /// transient, nothing applied (the daemon's Lease fence).
    fn fence(&self) -> impl Future<Output = Result<(), Fenced>> + Send {
        async { Ok(()) }
    }

    /// A run's plan, before anything is applied.
    fn planned(&self, _run: &Run, _plan: &Plan) {}

    /// A run ended (recorded or about to be).
    fn ended(&self, _run: &Run, _outcome: Outcome, _timings: &Timings) {}

    /// Something worth telling people happened.
    fn notify(&self, _notice: Notice) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Why [`Hooks::admit`] did not admit a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The commit is refused (unsigned, bad signature, signer not allowed).
    Refused(String),
    /// The check could not run (the allowed signers unreadable): retry.
    Transient(String),
}

/// What a reconcile did.
#[derive(Debug)]
pub struct Report {
    /// Every run in order: the one asked for, then the rollback if any.
    pub runs: Vec<RunReport>,
    pub end: End,
}

/// How a [`reconcile`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Nothing more to do until the next trigger; `healthy` when the commit
    /// asked for runs healthy.
    Done { healthy: bool },
    /// Something was unreachable (repo, engine, store, Lease), or the last
    /// good commit is unhealthy again: try again after a backoff.
    Retry(String),
}

/// One run of the stages over one commit.
#[derive(Debug)]
pub struct RunReport {
    /// Its history row (absent when the store could not be written).
    pub id: Option<i64>,
    pub run: Run,
    pub outcome: Outcome,
    /// Masked.
    pub error: Option<String>,
    pub plan: Option<Plan>,
    pub image_ids: ImageIds,
    /// The registry digests of the followed services it deployed.
    pub digests: Digests,
    /// Backend verdicts and probe results, when verify ran.
    pub verdicts: Vec<Verdict>,
    /// The `before_apply` backups taken (`job/id`).
    pub backups: Vec<String>,
}

impl RunReport {
    fn new(run: &Run) -> RunReport {
        RunReport {
            id: None,
            run: run.clone(),
            outcome: Outcome::Running,
            error: None,
            plan: None,
            image_ids: ImageIds::new(),
            digests: Digests::new(),
            verdicts: Vec::new(),
            backups: Vec::new(),
        }
    }
}

/// What a caller remembers between reconciles of one environment (the
/// daemon's worker keeps one; the CLI starts empty).
#[derive(Debug, Default)]
pub struct Memo {
    applied: Option<Applied>,
}

/// The last state the environment was brought to, good or bad.
#[derive(Debug)]
pub struct Applied {
    pub key: Key,
    pub desired: DesiredState,
    pub drivers: Vec<Driver>,
    /// The live state's digest after a healthy run; empty after a bad one.
    pub fingerprint: Vec<u8>,
    pub masker: Masker,
}

impl Memo {
    pub fn applied(&self) -> Option<&Applied> {
        self.applied.as_ref()
    }

    /// Forgets what was applied (the environment is no longer driven).
    pub fn forget(&mut self) {
        self.applied = None;
    }

    /// Removes every Compose resource the environment deployed (the plan of
    /// an empty desired state: deletes, named volumes kept unless allowed).
    pub async fn remove_all(&self) -> Result<(), BackendError> {
        let Some(applied) = &self.applied else {
            return Ok(());
        };
        let mut empty = applied.desired.clone();
        empty.environment.allow.mass_removal = true;
        for t in &mut empty.targets {
            if let Resources::Compose(projects) = &mut t.resources {
                projects.clear();
            }
        }
        let lives = super::read_live(&applied.drivers, &empty, &applied.masker).await?;
        let plan = super::plan_live(&applied.drivers, &empty, &lives, &applied.masker).await?;
        super::apply_live(
            &applied.drivers,
            &empty,
            &plan,
            &lives,
            &applied.masker,
            None,
        )
        .await
        .map(|_| ())
    }
}

/// An environment loaded, its targets connected and planned: what a
/// dry-run shows and an apply executes.
#[derive(Debug)]
pub struct Prepared {
    pub desired: DesiredState,
    pub drivers: Vec<Driver>,
    pub plan: Plan,
    /// The caller's masker with the render's secrets added.
    pub masker: Masker,
    /// The live state the plan was made from, per target (the apply's too).
    pub lives: Vec<DriverLive>,
    /// Its digest ([`fingerprint`]).
    pub fingerprint: Vec<u8>,
    /// The followed services pinned to a registry digest, as applied.
    pub digests: Digests,
}

/// Connects and plans a loaded environment: drops the targets `identity`
/// does not claim, runs each followed service at its digest in `images`,
/// pins services to `pin`'s image ids where their references moved, plans
/// every target. The dry-run and every run of [`reconcile`] go through here.
pub async fn prepare(
    loaded: Loaded,
    scope: Scope<'_>,
    pin: Option<&ImageIds>,
    images: &Digests,
) -> Result<Prepared, BackendError> {
    let mut masker = scope.masker.clone();
    masker.merge(&loaded.renderer.masker());
    let mut desired = loaded.checked.state;
    if let Claim::Identity(identity) = scope.targets {
        desired.targets.retain(|t| t.target.claimed_by(identity));
    }
    if scope.allow_mass_removal {
        desired.environment.allow.mass_removal = true;
    }
    if scope.adopt {
        desired.environment.adopt = crate::manifest::Adopt::Any;
    }
    let digests = follow_images(&mut desired, images);
    let drivers = super::connect(&desired).await?;
    // One read of the live state: pinning, the plan and (when nothing
    // changes) the pass's fingerprint all come from it — unless services
    // were pinned to image ids, which that read did not resolve (a pinned
    // rollback reads once more).
    let mut lives = super::read_live(&drivers, &desired, &masker).await?;
    if let Some(ids) = pin
        && pin_images(&mut desired, ids, &live_images(&lives)) > 0
    {
        lives = super::read_live(&drivers, &desired, &masker).await?;
    }
    let plan = super::plan_live(&drivers, &desired, &lives, &masker).await?;
    Ok(Prepared {
        fingerprint: super::digest(&lives),
        lives,
        desired,
        drivers,
        plan,
        masker,
        digests,
    })
}

/// Runs `run` and whatever [`decide::after`] says follows (a rollback runs
/// the same way), recording each run with what its end changes (last good,
/// failed mark, suspension) in one transaction. `last_good` is the
/// environment's last good commit as recorded before the reconcile.
pub async fn reconcile<H: Hooks>(
    env: Env<'_>,
    hooks: &H,
    memo: &mut Memo,
    run: Run,
    trigger: Trigger,
    last_good: Option<&LastGood>,
    policy: Policy,
) -> Report {
    let mask = |r: String| env.masker().mask(&r).into_owned();
    let mut runs: Vec<RunReport> = Vec::new();
    let mut run = run;
    // The bad deploy a rollback replaces: its error and matching backups.
    let mut rolled_from: Option<(String, String, String)> = None;
    let end = loop {
        let Attempt {
            report,
            ended,
            pending,
        } = deploy(env, hooks, memo, &run, trigger, last_good).await;
        let error = report.error.clone().unwrap_or_default();
        let commit = run.commit.clone();
        runs.push(report);
        let next = decide::after(&run, ended, last_good, policy);
        let say = |kind, to: Option<&CommitId>, failed: &CommitId, message: String| Notice {
            kind,
            commit: failed.clone(),
            to: to.cloned(),
            message: mask(message),
        };
        match next {
            Next::Record { last_good } => {
                let effects = Effects {
                    last_good,
                    ..Effects::default()
                };
                record(env, pending, effects).await;
                break End::Done {
                    healthy: rolled_from.is_none(),
                };
            }
            Next::RolledBack { failed } => {
                record(env, pending, Effects::default()).await;
                let (why, matching, what) = rolled_from.take().unwrap_or_else(|| {
                    (
                        String::new(),
                        String::new(),
                        format!("commit {}", failed.short()),
                    )
                });
                let message = format!(
                    "{what} failed ({why}); rolled back to {}{matching}",
                    commit.short()
                );
                hooks
                    .notify(say(NoticeKind::RolledBack, Some(&commit), &failed, message))
                    .await;
                break End::Done { healthy: false };
            }
            // For a rollback: the next pass finds the head failed and runs
            // the last good commit again, the same rollback.
            Next::Retry => {
                let effects = Effects {
                    collapse_repeat: true,
                    ..Effects::default()
                };
                record(env, pending, effects).await;
                break End::Retry(error);
            }
            Next::Reject { mark_failed } => {
                let (label, kind, what) = match ended {
                    Ended::Invalid => ("invalid", NoticeKind::Invalid, "does not render or check"),
                    Ended::Unverified => ("invalid", NoticeKind::Invalid, "is refused"),
                    _ => ("refused", NoticeKind::DeployFailed, "was refused"),
                };
                let effects = Effects {
                    failed: mark_failed.then(|| mask(format!("{label}: {error}"))),
                    ..Effects::default()
                };
                record(env, pending, effects).await;
                let message = format!(
                    "commit {} {what}; nothing was applied: {error}",
                    commit.short()
                );
                hooks.notify(say(kind, None, &commit, message)).await;
                break End::Done { healthy: false };
            }
            Next::RetryLastGood => {
                // Nothing older to return to, and not marked failed: the
                // retry (with backoff) applies it again.
                record(env, pending, Effects::default()).await;
                let message = format!(
                    "last good commit {} is unhealthy: {error}; retrying with backoff",
                    commit.short()
                );
                hooks
                    .notify(say(
                        NoticeKind::DeployFailed,
                        None,
                        &commit,
                        message.clone(),
                    ))
                    .await;
                break End::Retry(mask(message));
            }
            Next::MarkFailed => {
                record(env, pending, failed_effects(&mask, &error, &run, last_good)).await;
                let message = format!(
                    "{} failed and automatic rollback is off: {error}",
                    failed_what(&run, last_good)
                );
                hooks
                    .notify(say(NoticeKind::DeployFailed, None, &commit, message))
                    .await;
                break End::Done { healthy: false };
            }
            Next::RollBack(rollback) => {
                record(env, pending, failed_effects(&mask, &error, &run, last_good)).await;
                let matching = matching_backups(env, &rollback.commit).await;
                let what = failed_what(&run, last_good);
                tracing::warn!(failed = %what, to = %rollback.commit.short(), matching = matching.as_deref().unwrap_or("none"), "rolling back to the last good revision");
                let matching = matching.map(|m| format!("; {m}")).unwrap_or_default();
                rolled_from = Some((error, matching, what));
                run = rollback;
            }
            Next::Suspend {
                why,
                mark_failed,
                remove_created,
            } => {
                let (kind, failed, to, mut reason) = match &why {
                    Suspension::PinnedFailed => (
                        NoticeKind::DeployFailed,
                        &commit,
                        None,
                        format!("pinned commit {} failed: {error}", commit.short()),
                    ),
                    Suspension::FirstDeployFailed => (
                        NoticeKind::FirstDeployFailed,
                        &commit,
                        None,
                        format!("first deploy of {} failed: {error}", commit.short()),
                    ),
                    Suspension::UpdatePaused => (
                        NoticeKind::DeployFailed,
                        &commit,
                        None,
                        format!(
                            "update to {} paused, not rolled back: {error}; \
                             `driftless resume --env {}` continues it with the branch's head \
                             (push a fix first), `driftless rollback --env {} --to <sha>` goes back",
                            commit.short(),
                            env.name,
                            env.name
                        ),
                    ),
                    Suspension::RollbackFailed { failed } => {
                        let reason = match &rolled_from {
                            Some((first, _, what)) => format!(
                                "{what} failed ({first}) and the rollback to {} failed: {error}",
                                commit.short()
                            ),
                            None => format!("rollback to {} failed: {error}", commit.short()),
                        };
                        (NoticeKind::RollbackFailed, failed, Some(&commit), reason)
                    }
                };
                if remove_created {
                    match memo.remove_all().await {
                        Ok(()) => reason.push_str("; what it created was removed"),
                        Err(e) => {
                            reason.push_str(&format!("; removing what it created failed: {e}"))
                        }
                    }
                }
                let reason = mask(reason);
                tracing::error!(reason = %reason, "environment suspended");
                let marks = if mark_failed {
                    failed_effects(&mask, &error, &run, last_good)
                } else {
                    Effects::default()
                };
                let effects = Effects {
                    suspend: Some(reason.clone()),
                    ..marks
                };
                record(env, pending, effects).await;
                hooks.notify(say(kind, to, failed, reason)).await;
                break End::Done { healthy: false };
            }
        }
    };
    Report { runs, end }
}

/// What `run` is marked failed for ([`decide::blame`]): its commit, the
/// new digests of followed services, or both, for `error`.
fn failed_effects(
    mask: &impl Fn(String) -> String,
    error: &str,
    run: &Run,
    last_good: Option<&LastGood>,
) -> Effects {
    let blame = decide::blame(run, last_good);
    let reason = mask(error.to_owned());
    Effects {
        failed: blame.commit.then(|| reason.clone()),
        failed_images: blame.images,
        failed_images_reason: reason,
        ..Effects::default()
    }
}

/// How a failed run is named in messages: the commit, or the new image
/// digests when the commit is the last good one's.
fn failed_what(run: &Run, last_good: Option<&LastGood>) -> String {
    let blame = decide::blame(run, last_good);
    let images: Vec<String> = blame
        .images
        .iter()
        .map(|(s, d)| format!("{s}@{}", &d[..d.len().min(19)]))
        .collect();
    match (blame.commit, images.is_empty()) {
        (_, true) => format!("commit {}", run.commit.short()),
        (false, false) => format!("image {}", images.join(", ")),
        (true, false) => format!(
            "commit {} with image {}",
            run.commit.short(),
            images.join(", ")
        ),
    }
}

/// The backups taken while `to` last ran (before the failed deploy), as
/// the rollback's log and notification name them.
async fn matching_backups(env: Env<'_>, to: &CommitId) -> Option<String> {
    let (name, to) = (env.name.to_owned(), to.clone());
    env.store
        .call(move |s| crate::backup::deploys::matching(s, &name, &to))
        .await
        .map(|b| crate::backup::deploys::describe(env.name, &b))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot look up the matching backup");
            None
        })
}

/// One run's end, not yet recorded.
struct Attempt {
    report: RunReport,
    ended: Ended,
    pending: Option<Pending>,
}

/// Loads, plans, backs up, applies and verifies `run`, recording its start
/// at once and returning its end to record with what follows from it.
/// Updates the memo with what was applied.
async fn deploy<H: Hooks>(
    env: Env<'_>,
    hooks: &H,
    memo: &mut Memo,
    run: &Run,
    trigger: Trigger,
    last_good: Option<&LastGood>,
) -> Attempt {
    let started = SystemTime::now();
    let (key, kind) = (run.key(), run.kind());
    let (name, commit, failed) = (
        env.name.to_owned(),
        run.commit.clone(),
        run.rollback_of().cloned(),
    );
    let begun = env
        .store
        .call(move |s| s.begin(&name, &commit, trigger, kind, failed.as_ref(), started))
        .await;
    let mut rec = Recorder {
        hooks,
        masker: env.masker().clone(),
        report: RunReport::new(run),
        id: None,
        timings: Timings::default(),
        plan_json: None,
        diff: None,
        changes: None,
        discard: false,
    };
    match begun {
        Ok(id) => rec.id = Some(id),
        Err(e) => return rec.end(Outcome::Failed, Ended::Transient, Some(e.to_string())),
    }

    // A commit that already ran as the last good one was admitted then.
    let admitted_before = last_good.is_some_and(|lg| lg.commit == run.commit);
    if matches!(run.origin, Origin::Head | Origin::Pinned) && !admitted_before {
        match hooks.admit(&run.commit).await {
            Ok(()) => {}
            Err(Admission::Refused(why)) => {
                return rec.end(Outcome::Invalid, Ended::Unverified, Some(why));
            }
            Err(Admission::Transient(why)) => {
                return rec.end(Outcome::Failed, Ended::Transient, Some(why));
            }
        }
    }

    // source → render → check
    let t = Instant::now();
    let loaded = match hooks.loaded(run) {
        Some(loaded) => Ok(Ok(loaded)),
        None => {
            let source = match hooks.source_at(&run.commit) {
                Ok(s) => s,
                Err(e) => return rec.end(Outcome::Failed, Ended::Transient, Some(e)),
            };
            let (name, options) = (env.name.to_owned(), env.render.clone());
            tokio::task::spawn_blocking(move || super::load(&source, &name, &options)).await
        }
    };
    rec.timings.load_ms = Some(ms(t));
    let mut loaded = match loaded {
        Ok(Ok(l)) => l,
        Ok(Err(diags)) => {
            return rec.end(Outcome::Invalid, Ended::Invalid, Some(diags.to_string()));
        }
        Err(e) => return rec.end(Outcome::Failed, Ended::Transient, Some(e.to_string())),
    };
    rec.masker.merge(&loaded.renderer.masker());
    // The rendered files, for a `before_apply` job backing up the config.
    let backup_files = if loaded.checked.state.backups.iter().any(|j| j.before_apply) {
        crate::backup::runner::rendered_files(&loaded.checked.files)
    } else {
        Vec::new()
    };

    // plan
    let t = Instant::now();
    if run.kind() == Kind::Rollback {
        use_rollback_config(&mut loaded.checked.state);
    }
    let prepared = prepare(loaded, env.scope, run.pin.as_ref(), &run.images).await;
    rec.timings.plan_ms = Some(ms(t));
    let Prepared {
        desired,
        drivers,
        plan,
        masker,
        fingerprint: planned_fingerprint,
        lives,
        digests,
    } = match prepared {
        Ok(p) => p,
        Err(e) => return rec.backend_error(e, false),
    };
    rec.report.digests = digests;
    let mut plan_json = plan.to_json();
    masker.mask_json(&mut plan_json);
    rec.plan_json = Some(plan_json);
    rec.diff = Some(masker.mask(&plan.render_text(false, false)).into_owned());
    rec.changes = Some(u32::try_from(plan.summary().changed()).unwrap_or(u32::MAX));
    hooks.planned(run, &plan);
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
    rec.report.plan = Some(plan.clone());

    // before_apply backups: a deploy that changes something waits for them
    // (recorded with this reconcile's id); a rollback does not.
    if changed && kind == Kind::Deploy && desired.backups.iter().any(|j| j.before_apply) {
        let id = rec.id.unwrap_or_default();
        match crate::backup::deploys::before_apply(
            env.store,
            env.name,
            &desired,
            backup_files,
            &masker,
            id,
        )
        .await
        {
            Ok(ids) => {
                if !ids.is_empty() {
                    tracing::info!(backups = ?ids, "before_apply backups taken");
                }
                rec.report.backups = ids;
            }
            Err(e) => {
                let e = masker.mask(&e).into_owned();
                return rec.end(Outcome::Failed, Ended::Transient, Some(e));
            }
        }
    }

    // apply (a no-op plan only lists images, for the ids) — only past the
    // caller's fence (the daemon's Lease, checked on the server).
    if let Err(e) = hooks.fence().await {
        let e = crate::diag::error_chain(&*e);
        return rec.end(Outcome::Failed, Ended::Transient, Some(e));
    }
    let t = Instant::now();
    let applied = super::apply_live(&drivers, &desired, &plan, &lives, &masker, env.progress).await;
    rec.timings.apply_ms = Some(ms(t));
    // From here on the memo describes what is live, good or bad.
    let report = match applied {
        Ok(r) => r,
        Err(e) => {
            memo.applied = Some(Applied {
                key,
                desired,
                drivers,
                fingerprint: Vec::new(),
                masker,
            });
            return rec.backend_error(e, true);
        }
    };
    rec.report.image_ids = report.image_ids;

    // verify: after changes, and whenever this state is not known good.
    // A state the memo saw go bad is verified again, last good or not.
    let known_good = !changed
        && match memo.applied.as_ref().filter(|a| a.key == key) {
            Some(a) => !a.fingerprint.is_empty(),
            None => kind == Kind::Deploy && last_good.is_some_and(|lg| lg.commit == key.commit),
        };
    if !known_good {
        let t = Instant::now();
        let deadline = Instant::now() + desired.environment.health.deadline;
        let mut verdicts = match super::verify(&drivers, &desired, &masker, env.verify_poll).await {
            Ok(v) => v,
            Err(e) => return rec.backend_error(e, true),
        };
        if verdicts.iter().all(|v| v.health == Health::Healthy) {
            let probes = &desired.environment.health.probes;
            verdicts.extend(probe::run_all(env.http, "probes", probes, deadline).await);
        }
        rec.timings.verify_ms = Some(ms(t));
        let bad: Vec<&Verdict> = verdicts
            .iter()
            .filter(|v| v.health != Health::Healthy)
            .collect();
        let reason = (!bad.is_empty()).then(|| {
            let reasons: Vec<String> = bad
                .iter()
                .map(|v| format!("{} {}: {}", v.resource.kind, v.resource.name, v.reason))
                .collect();
            masker
                .mask(&format!("unhealthy: {}", reasons.join("; ")))
                .into_owned()
        });
        rec.report.verdicts = verdicts;
        if let Some(reason) = reason {
            memo.applied = Some(Applied {
                key,
                desired,
                drivers,
                fingerprint: Vec::new(),
                masker,
            });
            return rec.end(Outcome::Unhealthy, Ended::Bad, Some(reason));
        }
    }
    // Nothing applied: the live state is the one the plan read.
    let fp = if changed {
        fingerprint(&drivers, &desired, &masker)
            .await
            .unwrap_or_default()
    } else {
        planned_fingerprint
    };
    memo.applied = Some(Applied {
        key,
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

/// The end of a run, not yet written: [`reconcile`] records it together
/// with what follows from it.
struct Pending {
    id: i64,
    finish: Finish,
    discard: bool,
}

/// Writes a run's end and its effects in one transaction.
async fn record(env: Env<'_>, pending: Option<Pending>, effects: Effects) {
    let Some(p) = pending else {
        return;
    };
    let name = env.name.to_owned();
    let effects = Effects {
        discard: p.discard,
        ..effects
    };
    let written = env
        .store
        .call(move |s| s.record(&name, p.id, &p.finish, &effects, SystemTime::now()))
        .await;
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot record the reconcile");
    }
}

/// Collects the end of one run.
struct Recorder<'a, H> {
    hooks: &'a H,
    /// Masks the run's errors: the caller's secrets, and the render's
    /// once loaded.
    masker: Masker,
    report: RunReport,
    id: Option<i64>,
    timings: Timings,
    plan_json: Option<serde_json::Value>,
    diff: Option<String>,
    changes: Option<u32>,
    discard: bool,
}

impl<H: Hooks> Recorder<'_, H> {
    /// Ends the run; `error` is masked here.
    fn end(mut self, outcome: Outcome, ended: Ended, error: Option<String>) -> Attempt {
        let error = error.map(|e| self.masker.mask(&e).into_owned());
        self.hooks.ended(&self.report.run, outcome, &self.timings);
        if !outcome.is_good() {
            tracing::warn!(
                outcome = outcome.as_str(),
                error = error.as_deref().unwrap_or(""),
                "reconcile failed"
            );
        }
        let pending = self.id.map(|id| Pending {
            id,
            finish: Finish {
                commit: Some(self.report.run.commit.clone()),
                outcome,
                plan: self.plan_json,
                diff: self.diff,
                changes: self.changes,
                error: error.clone(),
                image_ids: self.report.image_ids.clone(),
                digests: self.report.digests.clone(),
                timings: self.timings,
            },
            discard: self.discard,
        });
        self.report.id = self.id;
        self.report.outcome = outcome;
        self.report.error = error;
        Attempt {
            report: self.report,
            ended,
            pending,
        }
    }

    /// A backend error: unreachable is transient, a refusal applied
    /// nothing, an apply error (or anything after changes) is bad.
    fn backend_error(self, e: BackendError, applying: bool) -> Attempt {
        let text = e.to_string();
        let ended = match e {
            BackendError::Unavailable { .. } => Ended::Transient,
            BackendError::Refused { .. } => Ended::Refused,
            BackendError::Apply { .. } if applying => Ended::Bad,
            BackendError::Apply { .. } => Ended::Refused,
            BackendError::Paused { .. } if applying => Ended::Paused,
            BackendError::Paused { .. } => Ended::Refused,
        };
        self.end(Outcome::Failed, ended, Some(text))
    }
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Reference → image id on each target, as the engine resolved them when
/// `lives` was read. Only Compose targets run images driftless pins.
fn live_images(lives: &[DriverLive]) -> BTreeMap<String, String> {
    lives
        .iter()
        .filter_map(|l| match l {
            DriverLive::Compose(live) => Some(live.images.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Runs each followed service of `desired` at its digest in `images`
/// (`registry/app@sha256:…`, the tag it follows dropped: the engine lists
/// a pulled digest under that name); returns the digests applied. A
/// service no longer followed keeps its reference.
pub fn follow_images(desired: &mut DesiredState, images: &Digests) -> Digests {
    let mut applied = Digests::new();
    for (key, s) in services_mut(desired) {
        if let (Some(follow), Some(digest)) = (&s.follow, images.get(&key)) {
            let (repo, _tag) = crate::backend::compose::image::pull_parts(&follow.reference);
            s.image = format!("{repo}@{digest}");
            applied.insert(key, digest.clone());
        }
    }
    applied
}

/// Every Compose service of `desired`, with its `project/service` key.
fn services_mut(
    desired: &mut DesiredState,
) -> impl Iterator<Item = (String, &mut crate::model::compose::Service)> {
    desired
        .targets
        .iter_mut()
        .filter_map(|t| match &mut t.resources {
            Resources::Compose(projects) => Some(projects),
            _ => None,
        })
        .flatten()
        .flat_map(|p| {
            let project = p.name.clone();
            p.services
                .iter_mut()
                .map(move |(name, s)| (format!("{project}/{name}"), s))
        })
}

/// Pins each service to the image id its last good run recorded, where the
/// reference no longer resolves to that id (a moved tag, a removed image).
/// A service whose reference still resolves to the recorded id keeps it, so
/// a rollback recreates only what the bad commit changed; the engine then
/// creates containers from `sha256:` ids for the rest.
pub fn pin_images(
    desired: &mut DesiredState,
    ids: &ImageIds,
    live: &BTreeMap<String, String>,
) -> usize {
    let mut pinned = 0;
    for (key, s) in services_mut(desired) {
        if let Some(id) = ids.get(&key)
            && live.get(&s.image) != Some(id)
        {
            tracing::info!(service = %key, image = %s.image, id = %id, "pinned to the recorded image id");
            s.image = id.clone();
            pinned += 1;
        }
    }
    pinned
}

/// A rollback replaces replicas as each service's `rollback_config` says
/// (Swarm's meaning), not its `update_config`.
pub fn use_rollback_config(desired: &mut DesiredState) {
    for t in &mut desired.targets {
        if let Resources::Compose(projects) = &mut t.resources {
            for s in projects.iter_mut().flat_map(|p| p.services.values_mut()) {
                s.update_config = crate::model::compose::UpdateConfig {
                    rollback: true,
                    ..s.rollback_config.clone()
                };
            }
        }
    }
}

/// A digest of the live state of every target, read now: equal digests
/// mean nothing changed on the engine since the last pass.
pub async fn fingerprint(
    drivers: &[Driver],
    desired: &DesiredState,
    masker: &Masker,
) -> Result<Vec<u8>, BackendError> {
    let lives = super::read_live(drivers, desired, masker).await?;
    Ok(super::digest(&lives))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Environment `dev` on one Compose target holding project `p` with
    /// services `a`, `b`, `c` on images `img:1..3`.
    fn three_services() -> DesiredState {
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
        DesiredState {
            environment: manifest.environments["dev"].clone(),
            instance: "dev@test".into(),
            revision: crate::source::Revision::Commit { id: "c".into() },
            targets: vec![crate::model::TargetState {
                target: manifest.targets["local"].clone(),
                resources: Resources::Compose(vec![p]),
            }],
            backups: vec![],
        }
    }

    #[test]
    fn a_rollback_replaces_replicas_as_rollback_config_says() {
        let mut desired = three_services();
        let Resources::Compose(projects) = &mut desired.targets[0].resources else {
            unreachable!()
        };
        let a = projects[0].services.get_mut("a").unwrap();
        a.update_config.parallelism = 1;
        a.rollback_config.parallelism = 0;
        use_rollback_config(&mut desired);
        let Resources::Compose(projects) = &desired.targets[0].resources else {
            unreachable!()
        };
        let u = &projects[0].services["a"].update_config;
        assert_eq!((u.parallelism, u.rollback), (0, true));
    }

    #[test]
    fn pins_only_services_whose_reference_moved() {
        let mut desired = three_services();
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
        assert_eq!(pin_images(&mut desired, &ids, &live), 1);
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
