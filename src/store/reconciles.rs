//! The `reconciles` table: one row per reconcile, written when it starts
//! ([`Store::begin`], so a pass cut short stays visible as `running`, later
//! `interrupted`) and once more when it ends ([`Store::record`]) — the row
//! and everything the outcome changes (last good commit, failed mark,
//! suspension) in one transaction.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Result, Store, millis, text_enum};
use crate::source::CommitId;

text_enum! {
    /// Why a reconcile ran.
    pub enum Trigger in "reconciles.trigger" {
        /// The daemon started (first pass of every environment).
        Startup = "startup",
        Poll = "poll",
        Webhook = "webhook",
        /// A local repo's refs changed (file watch).
        Watch = "watch",
        /// The drift timer: re-plan without a new commit.
        Drift = "drift",
        /// An operator asked (API or CLI).
        Manual = "manual",
        /// A retry after a failure (backoff).
        Retry = "retry",
        /// The image poller found a new digest of a followed image.
        Image = "image",
    }
}

text_enum! {
    /// What a reconcile applied: the commit it was asked for, or the last
    /// good commit after that one failed.
    pub enum Kind in "reconciles.kind" {
        Deploy = "deploy",
        Rollback = "rollback",
    }
}

text_enum! {
    /// How a reconcile ended.
    pub enum Outcome in "reconciles.outcome" {
        /// Still running (or the daemon died during it: see `Interrupted`).
        Running = "running",
        /// Nothing to change and everything healthy.
        Unchanged = "unchanged",
        /// Applied and verified healthy.
        Healthy = "healthy",
        /// Render or check failed: nothing was applied.
        Invalid = "invalid",
        /// Connecting, planning or applying failed.
        Failed = "failed",
        /// Applied, but verify found it unhealthy.
        Unhealthy = "unhealthy",
        /// The daemon stopped (or was killed) before the reconcile ended.
        Interrupted = "interrupted",
    }
}

impl Outcome {
    /// Whether the environment is in the desired state after this outcome.
    pub fn is_good(self) -> bool {
        matches!(self, Outcome::Unchanged | Outcome::Healthy)
    }
}

/// Milliseconds spent in each phase of a reconcile (absent: not reached).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_ms: Option<u64>,
}

/// Image ids per service (`project/service` → `sha256:…`).
pub type ImageIds = BTreeMap<String, String>;

/// Registry digests per followed service (`project/service` →
/// `sha256:…`): with a commit, what a revision is.
pub type Digests = BTreeMap<String, String>;

/// How a reconcile ended, as recorded. Every text here must already be masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finish {
    pub commit: Option<CommitId>,
    pub outcome: Outcome,
    /// The plan's JSON form ([`crate::plan::Plan::to_json`]).
    pub plan: Option<serde_json::Value>,
    /// The plan as text (diffs included).
    pub diff: Option<String>,
    /// How many of the plan's resources change (absent without a plan).
    pub changes: Option<u32>,
    pub error: Option<String>,
    pub image_ids: ImageIds,
    /// The followed services' registry digests it deployed.
    pub digests: Digests,
    pub timings: Timings,
}

/// What a reconcile's end changes besides its row, written in the same
/// transaction: a pass's record is all there or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// The reconcile's commit, with its image ids, becomes the
    /// environment's last good.
    pub last_good: bool,
    /// The reconcile's commit is marked failed, for this (masked) reason.
    pub failed: Option<String>,
    /// These digests of followed services are marked failed (for the
    /// reason in `failed_reason`): not deployed again by themselves.
    pub failed_images: Digests,
    pub failed_images_reason: String,
    /// The environment is suspended, for this (masked) reason; a pin stays.
    pub suspend: Option<String>,
    /// The row is not worth keeping (an unchanged re-plan by a timer): it is
    /// deleted instead, and the other effects still apply.
    pub discard: bool,
    /// A retry: when it ended as the environment's previous reconcile did
    /// (same commit, outcome and error), its row is deleted, so an outage
    /// leaves one row in history, not one per retry.
    pub collapse_repeat: bool,
}

/// One row of history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconcileRecord {
    pub id: i64,
    pub env: String,
    pub commit: Option<CommitId>,
    pub trigger: Trigger,
    pub kind: Kind,
    /// For a rollback: the commit that failed.
    pub rollback_of: Option<CommitId>,
    pub outcome: Outcome,
    pub plan: Option<serde_json::Value>,
    pub diff: Option<String>,
    /// How many of the plan's resources change (absent without a plan).
    pub changes: Option<u32>,
    pub error: Option<String>,
    pub image_ids: ImageIds,
    /// The followed services' registry digests it deployed.
    #[serde(skip_serializing_if = "Digests::is_empty")]
    pub digests: Digests,
    pub timings: Timings,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// The columns [`row`] reads, in its order.
pub(super) const RECORD_COLUMNS: &str = "id, env, commit_id, trigger, kind, rollback_of, outcome, plan_json, diff, changes, error, image_ids, timings, started_at, finished_at, digests";

/// The same columns with the plan and diff left out (list views).
pub(super) const RECORD_COLUMNS_BRIEF: &str = "id, env, commit_id, trigger, kind, rollback_of, outcome, NULL, NULL, changes, error, image_ids, timings, started_at, finished_at, digests";

/// One `reconciles` row, selected as [`RECORD_COLUMNS`].
pub(super) fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReconcileRecord> {
    let plan: Option<String> = r.get(7)?;
    let images: Option<String> = r.get(11)?;
    let timings: Option<String> = r.get(12)?;
    let digests: Option<String> = r.get(15)?;
    Ok(ReconcileRecord {
        id: r.get(0)?,
        env: r.get(1)?,
        commit: r.get(2)?,
        trigger: r.get(3)?,
        kind: r.get(4)?,
        rollback_of: r.get(5)?,
        outcome: r.get(6)?,
        plan: plan.and_then(|p| serde_json::from_str(&p).ok()),
        diff: r.get(8)?,
        changes: r.get(9)?,
        error: r.get(10)?,
        image_ids: images
            .and_then(|i| serde_json::from_str(&i).ok())
            .unwrap_or_default(),
        timings: timings
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        started_at: r.get(13)?,
        finished_at: r.get(14)?,
        digests: digests
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or_default(),
    })
}

/// Writes the end of reconcile `id`.
fn finish(c: &Connection, id: i64, finish: &Finish, at: SystemTime) -> Result<()> {
    let plan = finish.plan.as_ref().map(|p| p.to_string());
    let images = serde_json::to_string(&finish.image_ids).expect("plain map");
    let timings = serde_json::to_string(&finish.timings).expect("plain struct");
    let digests = serde_json::to_string(&finish.digests).expect("plain map");
    c.execute(
        "UPDATE reconciles SET commit_id = ?2, outcome = ?3, plan_json = ?4, diff = ?5, changes = ?6, error = ?7, image_ids = ?8, timings = ?9, finished_at = ?10, digests = ?11 WHERE id = ?1",
        params![
            id,
            finish.commit,
            finish.outcome,
            plan,
            finish.diff,
            finish.changes,
            finish.error,
            images,
            timings,
            millis(at),
            digests
        ],
    )?;
    Ok(())
}

/// Whether `end` repeats how `env`'s reconcile before `id` ended.
fn repeats(c: &Connection, env: &str, id: i64, end: &Finish) -> Result<bool> {
    let previous = c
        .query_row(
            "SELECT commit_id, outcome, error FROM reconciles WHERE env = ?1 AND id < ?2 ORDER BY id DESC LIMIT 1",
            params![env, id],
            |r| {
                Ok((
                    r.get::<_, Option<CommitId>>(0)?,
                    r.get::<_, Outcome>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            },
        )
        .optional()?;
    Ok(previous.is_some_and(|(commit, outcome, error)| {
        commit == end.commit && outcome == end.outcome && error == end.error
    }))
}

impl Store {
    /// Records the start of a reconcile of `commit`; returns its id. A
    /// reconcile interrupted before its end keeps the commit it was running.
    pub fn begin(
        &self,
        env: &str,
        commit: &CommitId,
        trigger: Trigger,
        kind: Kind,
        rollback_of: Option<&CommitId>,
        started: SystemTime,
    ) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO reconciles (env, commit_id, trigger, kind, rollback_of, outcome, started_at) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
                params![env, commit, trigger, kind, rollback_of, millis(started)],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Records how reconcile `id` of `env` ended and what that changes, in
    /// one transaction.
    pub fn record(
        &self,
        env: &str,
        id: i64,
        end: &Finish,
        effects: &Effects,
        at: SystemTime,
    ) -> Result<()> {
        self.transaction(|tx| {
            let drop = effects.discard || (effects.collapse_repeat && repeats(tx, env, id, end)?);
            if drop {
                tx.execute("DELETE FROM reconciles WHERE id = ?1", params![id])?;
            } else {
                finish(tx, id, end, at)?;
            }
            let kept = (!drop).then_some(id);
            if let Some(commit) = &end.commit {
                if effects.last_good {
                    super::control::set_last_good(
                        tx,
                        env,
                        commit,
                        &end.image_ids,
                        &end.digests,
                        kept,
                        at,
                    )?;
                }
                if let Some(reason) = &effects.failed {
                    super::control::mark_failed(tx, env, commit, reason, at)?;
                }
                for (service, digest) in &effects.failed_images {
                    super::control::mark_image_failed(
                        tx,
                        env,
                        service,
                        digest,
                        &effects.failed_images_reason,
                        at,
                    )?;
                }
            }
            if let Some(reason) = &effects.suspend {
                super::control::suspend(tx, env, reason, at)?;
            }
            Ok(())
        })
    }

    /// Records how reconcile `id` ended, changing nothing else.
    pub fn finish(&self, id: i64, end: &Finish, at: SystemTime) -> Result<()> {
        self.with(|c| finish(c, id, end, at))
    }

    /// Marks reconciles of `env` left `running` by a previous process as
    /// interrupted. Only the holder of the environment's lock calls this
    /// (the daemon at start), so a CLI opening the store never touches a
    /// running daemon's rows.
    pub fn mark_interrupted(&self, env: &str) -> Result<usize> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE reconciles SET outcome = ?3, finished_at = ?2 WHERE outcome = ?4 AND env = ?1",
                params![
                    env,
                    millis(SystemTime::now()),
                    Outcome::Interrupted,
                    Outcome::Running
                ],
            )?)
        })
    }

    /// Newest first, with plans and diffs; `env` filters; at most `limit` rows.
    pub fn history(&self, env: Option<&str>, limit: u32) -> Result<Vec<ReconcileRecord>> {
        let q = super::HistoryQuery {
            env,
            limit,
            ..super::HistoryQuery::default()
        };
        self.with(|c| super::queries::records(c, RECORD_COLUMNS, &q))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    pub(crate) fn finish(commit: &str, outcome: Outcome) -> Finish {
        Finish {
            commit: Some(commit.into()),
            outcome,
            plan: Some(serde_json::json!({"changes": []})),
            diff: Some("plan for dev".into()),
            changes: Some(0),
            error: None,
            image_ids: [("p/web".to_owned(), "sha256:1".to_owned())].into(),
            digests: Default::default(),
            timings: Timings {
                plan_ms: Some(3),
                ..Timings::default()
            },
        }
    }

    #[test]
    fn reconciles_round_trip_newest_first() {
        let s = Store::open_in_memory().unwrap();
        let a = s
            .begin(
                "dev",
                &"c0".into(),
                Trigger::Poll,
                Kind::Deploy,
                None,
                t(10),
            )
            .unwrap();
        let end = finish("abc", Outcome::Healthy);
        s.finish(a, &end, t(11)).unwrap();
        let b = s
            .begin(
                "dev",
                &"c1".into(),
                Trigger::Webhook,
                Kind::Rollback,
                Some(&"bad".into()),
                t(12),
            )
            .unwrap();
        let h = s.history(Some("dev"), 10).unwrap();
        assert_eq!(h.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(h[0].outcome, Outcome::Running);
        assert_eq!(h[0].kind, Kind::Rollback);
        assert_eq!(h[0].rollback_of.as_deref(), Some("bad"));
        assert_eq!(h[1].outcome, Outcome::Healthy);
        assert_eq!(h[1].image_ids["p/web"], "sha256:1");
        assert_eq!(h[1].timings.plan_ms, Some(3));
        assert_eq!(h[1].plan, end.plan);
        assert_eq!(h[1].changes, Some(0));
        assert_eq!(h[1].finished_at, Some(11_000));
        assert!(s.history(Some("prod"), 10).unwrap().is_empty());
        // Serialised as the names they are stored under.
        let json = serde_json::to_value(&h[0]).unwrap();
        assert_eq!(
            (&json["trigger"], &json["kind"], &json["outcome"]),
            (&"webhook".into(), &"rollback".into(), &"running".into())
        );
    }

    #[test]
    fn retries_that_fail_alike_leave_one_row() {
        let s = Store::open_in_memory().unwrap();
        let retry = Effects {
            collapse_repeat: true,
            ..Effects::default()
        };
        let failing = |commit: &str, error: &str| Finish {
            error: Some(error.into()),
            ..finish(commit, Outcome::Failed)
        };
        let mut ids = Vec::new();
        for (i, (commit, error)) in [
            ("c1", "engine unreachable"),
            ("c1", "engine unreachable"),
            ("c1", "engine unreachable"),
            ("c1", "store is read-only"),
            ("c2", "store is read-only"),
        ]
        .into_iter()
        .enumerate()
        {
            let at = t(i as u64 + 1);
            let id = s
                .begin(
                    "dev",
                    &commit.into(),
                    Trigger::Retry,
                    Kind::Deploy,
                    None,
                    at,
                )
                .unwrap();
            s.record("dev", id, &failing(commit, error), &retry, at)
                .unwrap();
            ids.push(id);
        }
        let kept: Vec<i64> = s
            .history(Some("dev"), 10)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        // The first of the outage, then each new error or commit.
        assert_eq!(kept, vec![ids[4], ids[3], ids[0]]);
    }

    #[test]
    fn a_record_writes_the_row_and_its_effects_together() {
        let s = Store::open_in_memory().unwrap();
        let a = s
            .begin("dev", &"c0".into(), Trigger::Poll, Kind::Deploy, None, t(1))
            .unwrap();
        let effects = Effects {
            last_good: true,
            ..Effects::default()
        };
        s.record("dev", a, &finish("c1", Outcome::Healthy), &effects, t(2))
            .unwrap();
        let lg = s.last_good("dev").unwrap().unwrap();
        assert_eq!((lg.commit.as_str(), lg.reconcile_id), ("c1", Some(a)));
        assert_eq!(lg.image_ids["p/web"], "sha256:1");

        let b = s
            .begin("dev", &"c0".into(), Trigger::Poll, Kind::Deploy, None, t(3))
            .unwrap();
        let effects = Effects {
            failed: Some("unhealthy".into()),
            suspend: Some("first deploy failed".into()),
            ..Effects::default()
        };
        s.record("dev", b, &finish("c2", Outcome::Unhealthy), &effects, t(4))
            .unwrap();
        assert_eq!(
            s.failed("dev", &"c2".into()).unwrap().unwrap().reason,
            "unhealthy"
        );
        assert_eq!(
            s.control("dev").unwrap().suspended.as_deref(),
            Some("first deploy failed")
        );
        assert_eq!(s.last_good("dev").unwrap().unwrap().commit, "c1");

        // A discarded row goes; its effects stay.
        let d = s
            .begin(
                "dev",
                &"c0".into(),
                Trigger::Drift,
                Kind::Deploy,
                None,
                t(4),
            )
            .unwrap();
        let effects = Effects {
            last_good: true,
            discard: true,
            ..Effects::default()
        };
        s.record("dev", d, &finish("c4", Outcome::Unchanged), &effects, t(4))
            .unwrap();
        assert!(s.reconcile(d).unwrap().is_none());
        let lg = s.last_good("dev").unwrap().unwrap();
        assert_eq!((lg.commit.as_str(), lg.reconcile_id), ("c4", None));

        // A record whose row cannot be written changes nothing: the failed
        // mark is rolled back with it.
        s.with(|c| {
            c.execute_batch(
                "CREATE TRIGGER no_finish BEFORE UPDATE ON reconciles BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )?;
            Ok(())
        })
        .unwrap();
        let c = s
            .begin("dev", &"c0".into(), Trigger::Poll, Kind::Deploy, None, t(5))
            .unwrap();
        let effects = Effects {
            failed: Some("bad".into()),
            ..Effects::default()
        };
        assert!(
            s.record("dev", c, &finish("c3", Outcome::Failed), &effects, t(6))
                .is_err()
        );
        assert!(s.failed("dev", &"c3".into()).unwrap().is_none());
    }

    #[test]
    fn reopening_keeps_everything_and_the_lock_holder_marks_running_rows_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.begin(
                "dev",
                &"c0".into(),
                Trigger::Startup,
                Kind::Deploy,
                None,
                t(1),
            )
            .unwrap();
            s.set_last_good("dev", &"c1".into(), &ImageIds::new(), None, t(1))
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), schema::MIGRATIONS.len() as i64);
        // Opening alone changes nothing: another process may be mid-reconcile.
        assert_eq!(s.history(None, 5).unwrap()[0].outcome, Outcome::Running);
        // The holder of the environment's lock marks what it finds running.
        assert_eq!(s.mark_interrupted("dev").unwrap(), 1);
        let row = &s.history(None, 5).unwrap()[0];
        assert_eq!(row.outcome, Outcome::Interrupted);
        // It still says which commit was being deployed.
        assert_eq!(row.commit.as_ref().map(|c| c.as_str()), Some("c0"));
        assert_eq!(s.last_good("dev").unwrap().unwrap().commit, "c1");
        assert_eq!(s.integrity_check().unwrap(), Ok(()));
        let mode: String = s
            .with(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn an_unknown_stored_name_is_an_error_naming_the_column() {
        let s = Store::open_in_memory().unwrap();
        s.with(|c| {
            c.execute(
                "INSERT INTO reconciles (env, trigger, kind, outcome, started_at) VALUES ('dev', 'cosmic-ray', 'deploy', 'running', 0)",
                [],
            )?;
            Ok(())
        })
        .unwrap();
        let e = s.history(None, 1).unwrap_err();
        let StoreError::Sql(rusqlite::Error::FromSqlConversionFailure(_, _, cause)) = &e else {
            panic!("{e:?}");
        };
        assert!(
            matches!(
                cause.downcast_ref::<StoreError>(),
                Some(StoreError::Unknown { column: "reconciles.trigger", value }) if value == "cosmic-ray"
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn async_callers_go_through_the_blocking_pool() {
        let s = std::sync::Arc::new(Store::open_in_memory().unwrap());
        let id = s
            .call(|s| {
                s.begin(
                    "dev",
                    &"c0".into(),
                    Trigger::Manual,
                    Kind::Deploy,
                    None,
                    t(1),
                )
            })
            .await
            .unwrap();
        let rows = s.call(|s| s.history(Some("dev"), 1)).await.unwrap();
        assert_eq!(rows[0].id, id);
    }
}
