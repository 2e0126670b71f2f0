//! The backup scheduler: one task per environment runs the backup jobs of
//! the commit last deployed good, on their cron schedules in their time
//! zones; reports runs missed while the daemon was down (and runs them once
//! when the job says `run_missed`); raises an alert for a failed run and
//! for a job that has not succeeded within twice its interval. The jobs a
//! deploy runs first are `backup::deploys::before_apply`, run by the
//! pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::alert::{Event, EventKind};
use super::lock::{LockError, OpLock};
use super::pass::EnvContext;
use super::repo::Lookup;
use crate::backup::Context;
use crate::backup::runner::{self, RunReport};
use crate::check::schedule::Schedule;
use crate::model::BackupJob;
use crate::source::CommitId;
use crate::store::BackupTrigger;

/// How often the scheduler looks for a new last good commit (one query).
const RELOAD: Duration = Duration::from_secs(5);
/// How often a due job looks again at an operation lock someone holds.
const OP_LOCK_RETRY: Duration = Duration::from_millis(250);

/// The scheduled time that passed unrun since `last_run` (unix ms), if any.
pub fn missed(
    schedule: &Schedule,
    tz: &str,
    last_run: Option<i64>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let last = DateTime::<Utc>::from_timestamp_millis(last_run?)?;
    schedule.next_in(tz, &last).filter(|t| *t <= now)
}

/// Whether a job has gone more than twice its interval without success:
/// counted from its last success, or from `since` (when the scheduler
/// started) for a job that never succeeded.
pub fn overdue(
    schedule: &Schedule,
    tz: &str,
    last_success: Option<i64>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    let Some(interval) = schedule.interval_in(tz, &now) else {
        return false;
    };
    let reference = last_success
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or(since);
    (now - reference)
        .to_std()
        .is_ok_and(|age| age > interval * 2)
}

struct Loaded {
    commit: CommitId,
    ctx: Context,
    jobs: Vec<(BackupJob, Schedule)>,
}

/// Runs the scheduler of one environment until `cancel`.
pub async fn run(env: EnvContext, cancel: CancellationToken) {
    let since = Utc::now();
    let mut loaded: Option<Loaded> = None;
    let mut next: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let mut alerted: BTreeSet<String> = BTreeSet::new();
    let mut checked_missed = false;
    loop {
        // With leases only the environment's holder runs its backups.
        if env.lease.as_ref().is_some_and(|l| !l.is_leader()) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RELOAD) => continue,
            }
        }
        let name = env.name.clone();
        let last_good = env
            .store
            .call(move |s| s.last_good(&name))
            .await
            .ok()
            .flatten();
        if let Some(lg) = last_good
            && loaded.as_ref().is_none_or(|l| l.commit != lg.commit)
        {
            match load(&env, &lg.commit).await {
                Ok(l) => {
                    let now = Utc::now();
                    next = l
                        .jobs
                        .iter()
                        .filter_map(|(j, s)| Some((j.name.clone(), s.next_in(&j.timezone, &now)?)))
                        .collect();
                    tracing::info!(env = %env.name, jobs = l.jobs.len(), commit = %l.commit.short(), "backup schedules loaded");
                    loaded = Some(l);
                }
                Err(e) => {
                    tracing::warn!(env = %env.name, error = %env.masker.mask(&e), "cannot load backup jobs")
                }
            }
        }
        if let Some(l) = &loaded {
            if !checked_missed {
                checked_missed = true;
                for (job, schedule) in &l.jobs {
                    let (name, job_name) = (env.name.clone(), job.name.clone());
                    let last_run = env
                        .store
                        .call(move |s| s.backup_runs(&name, Some(&job_name), 1))
                        .await
                        .ok()
                        .and_then(|r| r.first().map(|(_, run)| run.started_at));
                    if let Some(at) = missed(schedule, &job.timezone, last_run, Utc::now()) {
                        let message = format!(
                            "backup job {} missed its run at {} while the daemon was down{}",
                            job.name,
                            at.to_rfc3339(),
                            if job.run_missed {
                                "; running it now"
                            } else {
                                ""
                            }
                        );
                        tracing::warn!(env = %env.name, job = %job.name, "{message}");
                        notify(&env, EventKind::BackupMissed, message).await;
                        if job.run_missed {
                            run_job(&env, l, job, BackupTrigger::Missed).await;
                        }
                    }
                }
            }
            let now = Utc::now();
            for (job, schedule) in &l.jobs {
                if next.get(&job.name).is_some_and(|t| *t <= now) {
                    run_job(&env, l, job, BackupTrigger::Schedule).await;
                    if let Some(t) = schedule.next_in(&job.timezone, &Utc::now()) {
                        next.insert(job.name.clone(), t);
                    }
                }
            }
            let stats = env
                .store
                .call(|s| s.backup_job_stats())
                .await
                .unwrap_or_default();
            for (job, schedule) in &l.jobs {
                let last_success = stats
                    .iter()
                    .find(|s| s.env == env.name && s.job == job.name)
                    .and_then(|s| s.last_success_at);
                let is_overdue = overdue(schedule, &job.timezone, last_success, since, Utc::now());
                env.metrics.backup_overdue(&env.name, &job.name, is_overdue);
                if is_overdue {
                    if alerted.insert(job.name.clone()) {
                        let message = format!(
                            "backup job {} has not succeeded within twice its interval ({})",
                            job.name, job.schedule
                        );
                        tracing::error!(env = %env.name, job = %job.name, "{message}");
                        notify(&env, EventKind::BackupOverdue, message).await;
                    }
                } else {
                    alerted.remove(&job.name);
                }
            }
        }
        let now = Utc::now();
        let wait = next
            .values()
            .min()
            .and_then(|t| (*t - now).to_std().ok())
            .map_or(RELOAD, |d| d.min(RELOAD));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn run_job(
    env: &EnvContext,
    l: &Loaded,
    job: &BackupJob,
    trigger: BackupTrigger,
) -> RunReport {
    // Not while a pass or a CLI restore changes the containers.
    let holder = format!(
        "the daemon's backup job {} (pid {})",
        job.name,
        std::process::id()
    );
    let _op = loop {
        match OpLock::try_acquire(&env.state_dir, &env.name, &holder) {
            Err(LockError::Held { .. }) => tokio::time::sleep(OP_LOCK_RETRY).await,
            Err(e) => {
                tracing::warn!(env = %env.name, job = %job.name, error = %e, "running without the operation lock");
                break None;
            }
            Ok(op) => break Some(op),
        }
    };
    let report = runner::run(&l.ctx, job, trigger, Some(&env.store)).await;
    if let Some(e) = &report.error {
        notify(
            env,
            EventKind::BackupFailed,
            format!("backup job {} failed: {e}", job.name),
        )
        .await;
    }
    report
}

async fn load(env: &EnvContext, commit: &CommitId) -> Result<Loaded, String> {
    let source = env.repo.at(commit);
    let name = env.name.clone();
    let options = env.render.clone();
    let loaded =
        tokio::task::spawn_blocking(move || crate::reconcile::load(&source, &name, &options))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|d| d.to_string())?;
    let mut masker = env.masker.clone();
    masker.merge(&loaded.renderer.masker());
    let files = runner::rendered_files(&loaded.checked.files);
    let jobs = loaded
        .checked
        .state
        .backups
        .iter()
        .filter_map(|j| Schedule::parse(&j.schedule).ok().map(|s| (j.clone(), s)))
        .collect();
    let ctx = crate::backup::deploys::connect(&loaded.checked.state, files, masker).await?;
    Ok(Loaded {
        commit: commit.clone(),
        ctx,
        jobs,
    })
}

async fn notify(env: &EnvContext, kind: EventKind, message: String) {
    let Ok(Lookup::Found(head)) = env.repo.head(&env.name).await else {
        return;
    };
    let event = Event {
        environment: env.name.clone(),
        kind,
        commit: None,
        rolled_back_to: None,
        message: env.masker.mask(&message).into_owned(),
        daemon: env.identity.clone(),
    };
    env.notifier.send(&head.notifications, &event).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_run_missed_while_down_is_found() {
        let daily = Schedule::parse("0 3 * * *").unwrap();
        let last = at("2026-11-25T03:00:05Z").timestamp_millis();
        assert_eq!(
            missed(&daily, "UTC", Some(last), at("2026-11-26T09:00:00Z")),
            Some(at("2026-11-26T03:00:00Z"))
        );
        assert_eq!(
            missed(&daily, "UTC", Some(last), at("2026-11-26T02:00:00Z")),
            None
        );
        assert_eq!(
            missed(&daily, "UTC", None, at("2026-11-26T09:00:00Z")),
            None
        );
    }

    #[test]
    fn overdue_after_twice_the_interval() {
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let start = at("2026-11-26T00:00:00Z");
        let success = at("2026-11-26T06:00:00Z").timestamp_millis();
        assert!(!overdue(
            &hourly,
            "UTC",
            Some(success),
            start,
            at("2026-11-26T07:59:00Z")
        ));
        assert!(overdue(
            &hourly,
            "UTC",
            Some(success),
            start,
            at("2026-11-26T08:01:00Z")
        ));
        // Never succeeded: counted from the scheduler's start.
        assert!(!overdue(
            &hourly,
            "UTC",
            None,
            start,
            at("2026-11-26T01:30:00Z")
        ));
        assert!(overdue(
            &hourly,
            "UTC",
            None,
            start,
            at("2026-11-26T02:30:00Z")
        ));
    }
}
