//! One reconcile pass of one environment, as the daemon runs it: fetch,
//! read the recorded state and the branch head, [`decide`] what runs, skip
//! it when a poll finds neither the commit nor the live state changed, and
//! hand the rest to the one [`pipeline`] — the same one `driftless
//! reconcile` runs — with the daemon's [`Hooks`]: the commit read from the
//! daemon's repo, every apply fenced by the environment's Lease, metrics,
//! notifications. Transient failures (repo or engine unreachable) go back
//! to the worker to retry with backoff. Everything logged or sent is masked.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::alert::{Event, EventKind, Notifier};
use super::repo::{Head, HeadError, Lookup, RepoHandle};
use crate::reconcile::RenderOptions;
use crate::reconcile::decide::{self, Decision, Policy, Run};
use crate::reconcile::pipeline::{self, Admission, End, Fenced, Hooks, Notice, NoticeKind};
use crate::secrets::Masker;
use crate::source::{CommitId, Source};
use crate::store::{Outcome, Store, Timings, Trigger};

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
    /// The state directory (for the environment's operation lock).
    pub state_dir: std::path::PathBuf,
    /// The daemon's `verify:` policy for this environment: every head or
    /// pinned commit must carry a good signature.
    pub signatures: Option<super::config::SignaturePolicy>,
    /// Where the apply shows the services it is replacing: the worker's
    /// [`WorkerStats::replacing`](super::worker::WorkerStats::replacing).
    pub progress: Arc<crate::backend::progress::Progress>,
    /// Where the worker publishes the followed images of what it applied,
    /// for the image poller.
    pub followed: Arc<tokio::sync::watch::Sender<super::images::Followed>>,
}

impl EnvContext {
    /// What the pipeline reads and writes for this environment.
    fn pipeline(&self) -> pipeline::Env<'_> {
        pipeline::Env {
            name: &self.name,
            store: &self.store,
            render: &self.render,
            scope: pipeline::Scope {
                masker: &self.masker,
                targets: pipeline::Claim::Identity(
                    Some(self.identity.as_str()).filter(|i| !i.is_empty()),
                ),
                allow_mass_removal: false,
                adopt: false,
            },
            http: &self.http,
            verify_poll: self.verify_poll,
            progress: Some(&self.progress),
        }
    }
}

/// What a worker remembers between passes.
#[derive(Debug, Default)]
pub struct Memo {
    pipeline: pipeline::Memo,
    removed: bool,
    last_invalid_manifest: Option<String>,
    /// The environment as the root manifest last listed it.
    last_head: Option<Head>,
}

impl Memo {
    /// The drift interval of the environment as last loaded.
    pub fn drift_interval(&self) -> Option<Duration> {
        self.pipeline
            .applied()
            .map(|a| a.desired.environment.drift_interval)
    }

    /// The followed images of what was last applied.
    pub fn followed(&self) -> Option<super::images::Followed> {
        self.pipeline
            .applied()
            .map(|a| super::images::Followed::of(&a.desired))
    }
}

/// How a pass ended, for the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassEnd {
    /// Wait for the next trigger.
    Done,
    /// Something outside was unreachable; try again after a backoff.
    Retry(String),
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
    let read = ctx
        .store
        .call(move |s| Ok((s.env_state(&name)?, s.newest_digests(&name)?)))
        .await;
    let (state, newest) = match read {
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
            memo.last_head = Some((*head).clone());
            head
        }
        Ok(Lookup::Removed { prune }) => {
            removed(ctx, memo, prune).await;
            return PassEnd::Done;
        }
        // The default branch's commit is refused before any environment
        // could be read from it: it is recorded against that commit like
        // any invalid commit, with the environment as last seen, so the
        // last good commit keeps being driven (drift, rollback).
        Err(HeadError::Invalid { commit, message }) => match &memo.last_head {
            Some(last) => Box::new(Head {
                commit,
                ..last.clone()
            }),
            None => {
                say_once(
                    memo,
                    ctx,
                    &message,
                    "the root manifest cannot be read; nothing is applied",
                );
                return PassEnd::Done;
            }
        },
        Err(HeadError::NoBranch(e)) => {
            say_once(
                memo,
                ctx,
                &e,
                "the environment's branch does not exist; nothing is applied",
            );
            return PassEnd::Done;
        }
        Err(HeadError::Unreadable(e)) => {
            return PassEnd::Retry(ctx.masker.mask(&format!("read the repo: {e}")).into_owned());
        }
    };
    memo.last_invalid_manifest = None;
    let env = &head.environment;

    // What should run now.
    let run = match decide::what_to_run(&state, &head.commit, env.rollback.automatic, &newest) {
        Decision::Run(run) => run,
        Decision::Wait { failed } => {
            tracing::debug!(commit = %failed, "head is marked failed; waiting for a newer commit");
            return PassEnd::Done;
        }
    };
    tracing::Span::current().record("commit", run.commit.short());

    // A poll, a ref change or a repeated webhook with nothing new: compare
    // the live state's fingerprint instead of running the pipeline.
    if let Some(applied) = memo.pipeline.applied()
        && decide::may_skip(trigger, Some(&applied.key), &run.key())
    {
        match pipeline::fingerprint(&applied.drivers, &applied.desired, &applied.masker).await {
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
    let hooks = DaemonHooks { ctx, head: &head };
    let report = pipeline::reconcile(
        ctx.pipeline(),
        &hooks,
        &mut memo.pipeline,
        run,
        trigger,
        state.last_good.as_ref(),
        policy,
    )
    .await;
    match report.end {
        End::Done { .. } => PassEnd::Done,
        End::Retry(e) => PassEnd::Retry(e),
    }
}

/// The daemon's side of the pipeline.
struct DaemonHooks<'a> {
    ctx: &'a EnvContext,
    head: &'a Head,
}

impl Hooks for DaemonHooks<'_> {
    fn source_at(&self, commit: &CommitId) -> Result<Source, String> {
        Ok(self.ctx.repo.at(commit))
    }

    /// With `verify: { signatures: required }`: a good signature by an
    /// allowed signer, or the commit is refused.
    async fn admit(&self, commit: &CommitId) -> Result<(), Admission> {
        let Some(policy) = &self.ctx.signatures else {
            return Ok(());
        };
        let verdict = self
            .ctx
            .repo
            .verify(commit, policy.clone())
            .await
            .map_err(|e| Admission::Transient(format!("signature check: {e}")))?;
        match verdict {
            Ok(accepted) => {
                for a in accepted {
                    tracing::info!(commit = commit.short(), verdict = %a, "signature verified");
                }
                Ok(())
            }
            Err(refusal) => Err(Admission::Refused(format!("signature check: {refusal}"))),
        }
    }

    /// Only while this replica still holds the environment's Lease,
    /// checked on the server.
    async fn fence(&self) -> Result<(), Fenced> {
        match &self.ctx.lease {
            Some(lease) => Ok(lease.fence().await?),
            None => Ok(()),
        }
    }

    fn ended(&self, run: &Run, outcome: Outcome, timings: &Timings) {
        if decide::rolled_back(run, outcome) {
            self.ctx.metrics.rollback(&self.ctx.name);
        }
        self.ctx
            .metrics
            .reconciled(&self.ctx.name, outcome, timings);
    }

    fn notify(&self, notice: Notice) -> impl Future<Output = ()> + Send {
        let kind = match notice.kind {
            NoticeKind::RolledBack => EventKind::RolledBack,
            NoticeKind::RollbackFailed => EventKind::RollbackFailed,
            NoticeKind::FirstDeployFailed => EventKind::FirstDeployFailed,
            NoticeKind::DeployFailed => EventKind::DeployFailed,
            NoticeKind::Invalid => EventKind::Invalid,
        };
        let event = Event {
            environment: self.ctx.name.clone(),
            kind,
            commit: Some(notice.commit),
            rolled_back_to: notice.to,
            message: self.ctx.masker.mask(&notice.message).into_owned(),
            daemon: self.ctx.identity.clone(),
        };
        async move {
            self.ctx
                .notifier
                .send(&self.head.notifications, &event)
                .await
        }
    }
}

/// Logs `error` unless the previous pass logged the same.
fn say_once(memo: &mut Memo, ctx: &EnvContext, error: &str, what: &str) {
    let e = ctx.masker.mask(error).into_owned();
    if memo.last_invalid_manifest.as_deref() != Some(e.as_str()) {
        tracing::error!(error = %e, "{what}");
        memo.last_invalid_manifest = Some(e);
    }
}

/// The environment left the manifest: stop driving it, and remove what it
/// deployed only when the manifest opts into pruning removed environments.
async fn removed(ctx: &EnvContext, memo: &mut Memo, prune: bool) {
    if memo.removed {
        return;
    }
    memo.removed = true;
    if prune {
        match memo.pipeline.remove_all().await {
            Ok(()) => {
                tracing::warn!(env = %ctx.name, "environment removed from the manifest; its resources were pruned")
            }
            Err(e) => {
                tracing::error!(env = %ctx.name, error = %ctx.masker.mask(&e.to_string()), "environment removed from the manifest; pruning failed")
            }
        }
    } else {
        tracing::warn!(env = %ctx.name, "environment removed from the manifest; no longer driven, its resources stay");
    }
    memo.pipeline.forget();
}
