//! Which backups go with which deploy: the `before_apply` backups recorded
//! with a reconcile (shown by `history`), and the backups matching a commit
//! a rollback returns to — those taken before a deploy while that commit
//! was running, so their data fits it.

use std::sync::Arc;

use serde::Serialize;

use super::Context;
use super::codec::Identities;
use super::runner;
use crate::model::{BackupJob, DesiredState};
use crate::secrets::Masker;
use crate::store::{BackupRun, BackupTrigger, Store, StoreError};

/// A backup taken before a deploy, as `history` and `rollback` name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployBackup {
    pub job: String,
    /// The id `driftless backup restore --id` takes.
    pub id: String,
    pub location: Option<String>,
    pub verified: bool,
    /// The reconcile (deploy) it ran before.
    pub reconcile_id: Option<i64>,
}

/// A backup's id: its start time, as the runner names the object.
pub fn backup_id(started_at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(started_at_ms)
        .unwrap_or_default()
        .format("%Y%m%dT%H%M%S%.3fZ")
        .to_string()
}

impl From<&BackupRun> for DeployBackup {
    fn from(run: &BackupRun) -> Self {
        DeployBackup {
            job: run.job.clone(),
            id: backup_id(run.started_at),
            location: run.location.clone(),
            verified: run.verified == Some(true),
            reconcile_id: run.reconcile_id,
        }
    }
}

/// The `before_apply` backups of each of `reconcile_ids` that has some.
pub fn of_reconciles(
    store: &Store,
    reconcile_ids: &[i64],
) -> Result<Vec<(i64, Vec<DeployBackup>)>, StoreError> {
    let mut out: Vec<(i64, Vec<DeployBackup>)> = Vec::new();
    for (rid, run) in store.before_apply_runs(reconcile_ids)? {
        match out.last_mut() {
            Some((last, list)) if *last == rid => list.push((&run).into()),
            _ => out.push((rid, vec![(&run).into()])),
        }
    }
    Ok(out)
}

/// How many `before_apply` runs [`matching`] looks back through.
const LOOK_BACK: usize = 500;

/// The backups matching a rollback to `commit`: the `before_apply` backups
/// of the newest deploy that ran while `commit` was running (one per job).
/// Empty when none was taken (no `before_apply` job, or none recorded).
pub fn matching(store: &Store, env: &str, commit: &str) -> Result<Vec<DeployBackup>, StoreError> {
    let runs = store.before_apply_runs_with_running_commit(env, LOOK_BACK)?;
    let Some(reconcile) = runs
        .iter()
        .find(|(running, _)| running.as_deref() == Some(commit))
        .and_then(|(_, run)| run.reconcile_id)
    else {
        return Ok(Vec::new());
    };
    let mut out: Vec<DeployBackup> = runs
        .iter()
        .filter(|(_, run)| run.reconcile_id == Some(reconcile))
        .map(|(_, run)| run.into())
        .collect();
    out.reverse();
    Ok(out)
}

/// One line naming `backups` and how to restore them, for `rollback`'s
/// output and the daemon's rollback notification; `None` when empty.
pub fn describe(env: &str, backups: &[DeployBackup]) -> Option<String> {
    if backups.is_empty() {
        return None;
    }
    let parts: Vec<String> = backups
        .iter()
        .map(|b| {
            format!(
                "job {} id {}{}; restore with `driftless backup restore {} --env {env} --id {}`",
                b.job,
                b.id,
                if b.verified { "" } else { " (not verified)" },
                b.job,
                b.id
            )
        })
        .collect();
    Some(format!("matching backup: {}", parts.join("; ")))
}

/// Adds `backups` (its `before_apply` backups) to each reconcile in
/// `records` (JSON objects with an `id`) that has some.
pub fn annotate(store: &Store, records: &mut [serde_json::Value]) -> Result<(), StoreError> {
    let ids: Vec<i64> = records.iter().filter_map(|r| r["id"].as_i64()).collect();
    for (rid, backups) in of_reconciles(store, &ids)? {
        if let Some(r) = records.iter_mut().find(|r| r["id"].as_i64() == Some(rid)) {
            r["backups"] = serde_json::to_value(backups).expect("plain data");
        }
    }
    Ok(())
}

/// Connects a backup context for `desired`: its Docker target, the
/// rendered files (the `config` source), and the identities that decrypt
/// backups for verification when the host has them.
pub async fn connect(
    desired: &DesiredState,
    files: Vec<(String, Vec<u8>)>,
    masker: Masker,
) -> Result<Context, String> {
    let identities = Identities::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "backup identity not usable: encrypted backups are verified by checksum only");
        None
    });
    Ok(Context::connect(desired, files, masker)
        .await
        .map_err(|e| e.to_string())?
        .with_identities(identities))
}

/// Runs the `before_apply` jobs of `desired` ahead of a deploy of `env`,
/// recorded with reconcile `reconcile_id`; returns the backups taken
/// (`job/id`). An error names the failed job: the deploy must not go ahead
/// without its backup. A job whose service has no running container yet
/// (a first deploy) is skipped.
pub async fn before_apply(
    store: &Arc<Store>,
    env: &str,
    desired: &DesiredState,
    files: Vec<(String, Vec<u8>)>,
    masker: &Masker,
    reconcile_id: i64,
) -> Result<Vec<String>, String> {
    let jobs: Vec<&BackupJob> = desired.backups.iter().filter(|j| j.before_apply).collect();
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = connect(desired, files, masker.clone()).await?;
    let mut ids = Vec::new();
    for job in jobs {
        let report = runner::run_for(
            &ctx,
            job,
            BackupTrigger::BeforeApply,
            None,
            Some(reconcile_id),
        )
        .await;
        // Nothing deployed yet is no failed run: there was nothing to lose.
        if !report.nothing_to_back_up {
            runner::record(
                store,
                &ctx.env,
                job,
                BackupTrigger::BeforeApply,
                Some(reconcile_id),
                &report,
            )
            .await;
        }
        match (&report.error, report.nothing_to_back_up) {
            (None, _) => ids.push(format!("{}/{}", job.name, report.id.unwrap_or_default())),
            (Some(e), true) => {
                tracing::info!(env = %env, job = %job.name, error = %e, "before_apply backup skipped: nothing deployed to back up yet")
            }
            (Some(e), false) => {
                return Err(format!(
                    "before_apply backup job {} failed, nothing applied: {e}",
                    job.name
                ));
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Finish, ImageIds, Kind, Outcome, Timings, Trigger};
    use std::time::{Duration, SystemTime};

    fn reconcile(s: &Store, kind: Kind, commit: &str, outcome: Outcome) -> i64 {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let id = s
            .begin("prod", &commit.into(), Trigger::Poll, kind, None, at)
            .unwrap();
        let finish = Finish {
            commit: Some(commit.into()),
            outcome,
            plan: None,
            diff: None,
            changes: None,
            error: None,
            image_ids: ImageIds::new(),
            digests: Default::default(),
            timings: Timings::default(),
        };
        s.finish(id, &finish, at).unwrap();
        id
    }

    fn before_apply(s: &Store, job: &str, reconcile_id: i64, started_at: i64) {
        s.record_backup_run(&BackupRun {
            env: "prod".into(),
            job: job.into(),
            trigger: crate::store::BackupTrigger::BeforeApply,
            outcome: crate::store::BackupOutcome::Succeeded,
            verified: Some(true),
            reconcile_id: Some(reconcile_id),
            started_at,
            ..BackupRun::default()
        })
        .unwrap();
    }

    #[test]
    fn a_rollback_matches_the_backups_taken_while_its_commit_ran() {
        let s = Store::open_in_memory().unwrap();
        reconcile(&s, Kind::Deploy, "a", Outcome::Healthy);
        // Deploying b backs up (two jobs) what ran under a; b fails and the
        // daemon rolls back to a.
        let b = reconcile(&s, Kind::Deploy, "b", Outcome::Unhealthy);
        before_apply(&s, "pg", b, 1_000);
        before_apply(&s, "redis", b, 2_000);
        reconcile(&s, Kind::Rollback, "a", Outcome::Healthy);
        let m = matching(&s, "prod", "a").unwrap();
        let jobs: Vec<(&str, &str)> = m.iter().map(|b| (b.job.as_str(), b.id.as_str())).collect();
        assert_eq!(
            jobs,
            [
                ("pg", "19700101T000001.000Z"),
                ("redis", "19700101T000002.000Z")
            ]
        );
        // Later, a deploy of c from a: a rollback to a now matches that newer
        // backup; nothing was taken while b or c ran.
        let c = reconcile(&s, Kind::Deploy, "c", Outcome::Healthy);
        before_apply(&s, "pg", c, 3_000);
        let m = matching(&s, "prod", "a").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].job.as_str(), m[0].reconcile_id), ("pg", Some(c)));
        assert!(matching(&s, "prod", "c").unwrap().is_empty());
        assert!(describe("prod", &[]).is_none());
        let line = describe("prod", &m).unwrap();
        assert!(
            line.contains(
                "restore with `driftless backup restore pg --env prod --id 19700101T000003.000Z`"
            ),
            "{line}"
        );
        // history: each reconcile with its backups.
        let mut rows = vec![
            serde_json::json!({"id": b}),
            serde_json::json!({"id": c + 1}),
        ];
        annotate(&s, &mut rows).unwrap();
        assert_eq!(rows[0]["backups"].as_array().unwrap().len(), 2);
        assert!(rows[1].get("backups").is_none());
    }
}
