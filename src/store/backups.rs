//! The `backup_runs` table: every run of a backup job, scheduled, missed,
//! before a deploy or from the CLI; `before_apply` runs carry the id of the
//! reconcile they ran before. Metrics and status read the per-job stats.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Outcome, Result, Store, text_enum};

text_enum! {
    /// Why a backup ran.
    pub enum BackupTrigger in "backup_runs.trigger" {
        /// Its cron schedule came due.
        Schedule = "schedule",
        /// A scheduled time passed while the daemon was down (`run_missed`).
        Missed = "missed",
        /// A deploy that changes something runs it first.
        BeforeApply = "before_apply",
        /// `driftless backup run`.
        Cli = "cli",
    }
}

text_enum! {
    /// How a backup run ended.
    pub enum BackupOutcome in "backup_runs.outcome" {
        /// Stored and, where the job verifies, verified.
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

/// A backup run, as the backup scheduler records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupRun {
    pub env: String,
    pub job: String,
    pub trigger: BackupTrigger,
    pub outcome: BackupOutcome,
    pub location: Option<String>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    pub verified: Option<bool>,
    pub error: Option<String>,
    pub reconcile_id: Option<i64>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

impl Default for BackupRun {
    fn default() -> Self {
        BackupRun {
            env: String::new(),
            job: String::new(),
            trigger: BackupTrigger::Schedule,
            outcome: BackupOutcome::Failed,
            location: None,
            bytes: None,
            sha256: None,
            verified: None,
            error: None,
            reconcile_id: None,
            started_at: 0,
            finished_at: None,
        }
    }
}

/// One backup job's latest results, for metrics and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupJobStats {
    pub env: String,
    pub job: String,
    /// Outcome and start (unix ms) of the newest run.
    pub last_outcome: BackupOutcome,
    pub last_run_at: i64,
    /// Finish time (unix ms), duration and stored size of the newest successful run.
    pub last_success_at: Option<i64>,
    pub last_success_duration_ms: Option<i64>,
    pub last_success_bytes: Option<i64>,
    /// Runs that did not succeed, over the recorded history.
    pub failed_runs: i64,
}

/// The columns [`run`] reads, in its order (`b` is `backup_runs`).
const RUN_COLUMNS: &str = "b.id, b.env, b.job, b.trigger, b.outcome, b.location, b.bytes, b.sha256, b.verified, b.error, b.reconcile_id, b.started_at, b.finished_at";

fn run(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, BackupRun)> {
    Ok((
        r.get(0)?,
        BackupRun {
            env: r.get(1)?,
            job: r.get(2)?,
            trigger: r.get(3)?,
            outcome: r.get(4)?,
            location: r.get(5)?,
            bytes: r.get(6)?,
            sha256: r.get(7)?,
            verified: r.get(8)?,
            error: r.get(9)?,
            reconcile_id: r.get(10)?,
            started_at: r.get(11)?,
            finished_at: r.get(12)?,
        },
    ))
}

/// Backup runs matching `filter` (an SQL condition on `b`, with its order
/// and limit), with their ids.
fn runs_where(
    c: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<(i64, BackupRun)>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM backup_runs b WHERE {filter}"
    ))?;
    let rows = stmt.query_map(args, run)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

impl Store {
    /// Records a backup run; returns its id.
    pub fn record_backup_run(&self, run: &BackupRun) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO backup_runs (env, job, trigger, outcome, location, bytes, sha256, verified, error, reconcile_id, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![run.env, run.job, run.trigger, run.outcome, run.location, run.bytes, run.sha256, run.verified, run.error, run.reconcile_id, run.started_at, run.finished_at],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Recorded backup runs of an environment (one job, or all), newest
    /// first, with their ids.
    pub fn backup_runs(
        &self,
        env: &str,
        job: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(i64, BackupRun)>> {
        self.with(|c| {
            runs_where(
                c,
                "b.env = ?1 AND (?2 IS NULL OR b.job = ?2) ORDER BY b.id DESC LIMIT ?3",
                params![env, job, limit as i64],
            )
        })
    }

    /// Succeeded `before_apply` runs recorded with the given reconciles,
    /// as `(reconcile id, run)`, in the order of `reconcile_ids`, each
    /// reconcile's runs oldest first.
    pub fn before_apply_runs(&self, reconcile_ids: &[i64]) -> Result<Vec<(i64, BackupRun)>> {
        self.transaction(|tx| {
            let mut out = Vec::new();
            for &rid in reconcile_ids {
                for (_, run) in runs_where(
                    tx,
                    "b.trigger = ?1 AND b.outcome = ?2 AND b.reconcile_id = ?3 ORDER BY b.id",
                    params![BackupTrigger::BeforeApply, BackupOutcome::Succeeded, rid],
                )? {
                    out.push((rid, run));
                }
            }
            Ok(out)
        })
    }

    /// An environment's succeeded `before_apply` runs, newest first, each
    /// with the commit that was running (the newest healthy or unchanged
    /// reconcile before its deploy): the backups a rollback to that commit
    /// matches. One query.
    pub fn before_apply_runs_with_running_commit(
        &self,
        env: &str,
        limit: usize,
    ) -> Result<Vec<(Option<crate::source::CommitId>, BackupRun)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS},
                    (SELECT r.commit_id FROM reconciles r WHERE r.env = b.env AND r.id < b.reconcile_id
                        AND r.outcome IN (?4, ?5) ORDER BY r.id DESC LIMIT 1)
                 FROM backup_runs b
                 WHERE b.env = ?1 AND b.trigger = ?2 AND b.outcome = ?3 AND b.reconcile_id IS NOT NULL
                 ORDER BY b.id DESC LIMIT ?6"
            ))?;
            let rows = stmt.query_map(
                params![
                    env,
                    BackupTrigger::BeforeApply,
                    BackupOutcome::Succeeded,
                    Outcome::Healthy,
                    Outcome::Unchanged,
                    limit as i64
                ],
                |r| Ok((r.get(13)?, run(r)?.1)),
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Per environment and job: the last run and the last successful one
    /// (what `/metrics` exports: last success time, duration, size).
    pub fn backup_job_stats(&self) -> Result<Vec<BackupJobStats>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT b.env, b.job,
                    (SELECT outcome FROM backup_runs l WHERE l.env = b.env AND l.job = b.job ORDER BY id DESC LIMIT 1),
                    (SELECT started_at FROM backup_runs l WHERE l.env = b.env AND l.job = b.job ORDER BY id DESC LIMIT 1),
                    s.finished_at, s.finished_at - s.started_at, s.bytes,
                    (SELECT count(*) FROM backup_runs f WHERE f.env = b.env AND f.job = b.job AND f.outcome != ?1)
                 FROM (SELECT DISTINCT env, job FROM backup_runs) b
                 LEFT JOIN backup_runs s ON s.id = (
                     SELECT id FROM backup_runs x WHERE x.env = b.env AND x.job = b.job AND x.outcome = ?1 ORDER BY id DESC LIMIT 1)
                 ORDER BY b.env, b.job",
            )?;
            let rows = stmt.query_map(params![BackupOutcome::Succeeded], |r| {
                Ok(BackupJobStats {
                    env: r.get(0)?,
                    job: r.get(1)?,
                    last_outcome: r.get(2)?,
                    last_run_at: r.get(3)?,
                    last_success_at: r.get(4)?,
                    last_success_duration_ms: r.get(5)?,
                    last_success_bytes: r.get(6)?,
                    failed_runs: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::super::{Finish, Kind, Timings, Trigger};
    use super::*;

    fn run(outcome: BackupOutcome, at: i64, bytes: i64) -> BackupRun {
        BackupRun {
            env: "dev".into(),
            job: "db".into(),
            trigger: BackupTrigger::Schedule,
            outcome,
            bytes: Some(bytes),
            started_at: at,
            finished_at: Some(at + 5),
            ..BackupRun::default()
        }
    }

    #[test]
    fn backup_stats_name_the_last_success() {
        let s = Store::open_in_memory().unwrap();
        s.record_backup_run(&run(BackupOutcome::Succeeded, 100, 10))
            .unwrap();
        s.record_backup_run(&run(BackupOutcome::Succeeded, 200, 20))
            .unwrap();
        s.record_backup_run(&run(BackupOutcome::Failed, 300, 0))
            .unwrap();
        let stats = s.backup_job_stats().unwrap();
        assert_eq!(stats.len(), 1);
        let st = &stats[0];
        assert_eq!(st.last_outcome, BackupOutcome::Failed);
        assert_eq!(st.last_run_at, 300);
        assert_eq!(st.last_success_at, Some(205));
        assert_eq!(st.last_success_duration_ms, Some(5));
        assert_eq!(st.last_success_bytes, Some(20));
        assert_eq!(st.failed_runs, 1);
        let runs = s.backup_runs("dev", Some("db"), 2).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].1.outcome, BackupOutcome::Failed);
        assert!(runs[0].0 > runs[1].0);
    }

    #[test]
    fn before_apply_runs_name_the_commit_that_was_running() {
        let s = Store::open_in_memory().unwrap();
        let t = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let reconcile = |commit: &str, outcome| {
            let id = s
                .begin("dev", &"c0".into(), Trigger::Poll, Kind::Deploy, None, t(1))
                .unwrap();
            let end = Finish {
                commit: Some(commit.into()),
                outcome,
                plan: None,
                diff: None,
                changes: None,
                error: None,
                image_ids: Default::default(),
                digests: Default::default(),
                timings: Timings::default(),
            };
            s.finish(id, &end, SystemTime::now()).unwrap();
            id
        };
        reconcile("c1", Outcome::Healthy);
        let deploy = reconcile("c2", Outcome::Unhealthy);
        let backup = BackupRun {
            trigger: BackupTrigger::BeforeApply,
            reconcile_id: Some(deploy),
            ..run(BackupOutcome::Succeeded, 10, 1)
        };
        s.record_backup_run(&backup).unwrap();
        // A failed before_apply run matches nothing.
        s.record_backup_run(&BackupRun {
            outcome: BackupOutcome::Failed,
            ..backup.clone()
        })
        .unwrap();
        let found = s.before_apply_runs_with_running_commit("dev", 10).unwrap();
        assert_eq!(found, [(Some("c1".into()), backup.clone())]);
        assert_eq!(s.before_apply_runs(&[deploy]).unwrap(), [(deploy, backup)]);
    }
}
