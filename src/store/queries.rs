//! The reads of the operator surface (HTTP API, status page, metrics, CLI):
//! history pages, one reconcile, the last plan, and an environment's
//! summary. They only read; a summary is one read transaction, so its parts
//! agree with each other.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::control::{self, Control, FailedCommit, LastGood};
use super::reconciles::{RECORD_COLUMNS, RECORD_COLUMNS_BRIEF, row};
use super::{Outcome, ReconcileRecord, Result, Store};

/// A page of history: filters and a cursor (ids are increasing, so
/// `before` is the smallest id of the previous page).
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryQuery<'a> {
    pub env: Option<&'a str>,
    pub outcome: Option<Outcome>,
    /// Only rows with a smaller id.
    pub before: Option<i64>,
    pub limit: u32,
}

/// The live state of an environment as the newest reconcile that touched
/// it found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvHealth {
    Healthy,
    Unhealthy,
    /// Connecting, planning or applying failed.
    Failed,
    /// Nothing has touched it yet, or the newest reconcile was interrupted.
    Unknown,
}

impl EnvHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvHealth::Healthy => "healthy",
            EnvHealth::Unhealthy => "unhealthy",
            EnvHealth::Failed => "failed",
            EnvHealth::Unknown => "unknown",
        }
    }
}

/// What the operator surface shows of one environment, read in one
/// transaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvSummary {
    pub env: String,
    /// The commit of the newest reconcile that ended healthy: what runs.
    pub current_commit: Option<crate::source::CommitId>,
    pub last_good: Option<LastGood>,
    /// The newest reconcile (without plan and diff).
    pub last_reconcile: Option<ReconcileRecord>,
    pub health: EnvHealth,
    /// Resources the newest deploy's plan changes that are not known to be
    /// applied: 0 when that deploy ended healthy.
    pub out_of_sync: u64,
    pub control: Control,
    pub failed_commits: Vec<FailedCommit>,
}

/// History rows matching `q`, newest first, with `columns`.
pub(super) fn records(
    c: &Connection,
    columns: &str,
    q: &HistoryQuery<'_>,
) -> Result<Vec<ReconcileRecord>> {
    // Only the filters given: `(?1 IS NULL OR env = ?1)` would keep
    // SQLite from using the (env, id) index and scan the table.
    let mut filters = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(env) = q.env {
        filters.push("env = ?");
        values.push(env.to_owned().into());
    }
    if let Some(outcome) = q.outcome {
        filters.push("outcome = ?");
        values.push(outcome.as_str().to_owned().into());
    }
    if let Some(before) = q.before {
        filters.push("id < ?");
        values.push(before.into());
    }
    values.push(i64::from(q.limit).into());
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    };
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {columns} FROM reconciles {filter} ORDER BY id DESC LIMIT ?"
    ))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values), row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The summary of `env`, on one connection (the caller's transaction).
fn env_summary(c: &Connection, env: &str) -> Result<EnvSummary> {
    let good = [Outcome::Healthy, Outcome::Unchanged];
    let current: Option<Option<crate::source::CommitId>> = c
        .query_row(
            "SELECT commit_id FROM reconciles WHERE env = ?1 AND outcome IN (?2, ?3) ORDER BY id DESC LIMIT 1",
            params![env, good[0], good[1]],
            |r| r.get(0),
        )
        .optional()?;
    let touched: Option<Outcome> = c
        .query_row(
            "SELECT outcome FROM reconciles WHERE env = ?1 AND outcome NOT IN (?2, ?3) ORDER BY id DESC LIMIT 1",
            params![env, Outcome::Running, Outcome::Invalid],
            |r| r.get(0),
        )
        .optional()?;
    let health = match touched {
        Some(o) if o.is_good() => EnvHealth::Healthy,
        Some(Outcome::Unhealthy) => EnvHealth::Unhealthy,
        Some(Outcome::Failed) => EnvHealth::Failed,
        // An interrupted reconcile left the live state unknown.
        _ => EnvHealth::Unknown,
    };
    // Out of sync with what the environment is held at: the changes of
    // the last planned reconcile when it did not end good. A healthy
    // rollback puts the live state back in sync with the last good commit.
    let planned: Option<(Outcome, u32)> = c
        .query_row(
            "SELECT outcome, changes FROM reconciles WHERE env = ?1 AND changes IS NOT NULL AND outcome NOT IN (?2, ?3) ORDER BY id DESC LIMIT 1",
            params![env, Outcome::Running, Outcome::Invalid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let out_of_sync = match planned {
        Some((outcome, changes)) if !outcome.is_good() => u64::from(changes),
        _ => 0,
    };
    let last_reconcile = records(
        c,
        RECORD_COLUMNS_BRIEF,
        &HistoryQuery {
            env: Some(env),
            limit: 1,
            ..HistoryQuery::default()
        },
    )?
    .pop();
    Ok(EnvSummary {
        env: env.to_owned(),
        current_commit: current.flatten(),
        last_good: control::last_good(c, env)?,
        last_reconcile,
        health,
        out_of_sync,
        control: control::control(c, env)?,
        failed_commits: control::failed_commits(c, env)?,
    })
}

impl Store {
    /// A value that changes whenever the database does: this connection's
    /// row changes, or a commit by another connection (a CLI). Readers
    /// cache what they derive from the store under it.
    pub fn generation(&self) -> Result<(i64, i64)> {
        self.with(|c| {
            let other: i64 = c.query_row("PRAGMA data_version", [], |r| r.get(0))?;
            let own: i64 = c.query_row("SELECT total_changes()", [], |r| r.get(0))?;
            Ok((other, own))
        })
    }

    /// One reconcile with its plan and diff.
    pub fn reconcile(&self, id: i64) -> Result<Option<ReconcileRecord>> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM reconciles WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()?)
        })
    }

    /// A page of history, newest first, without plans and diffs.
    pub fn history_page(&self, q: &HistoryQuery<'_>) -> Result<Vec<ReconcileRecord>> {
        self.with(|c| records(c, RECORD_COLUMNS_BRIEF, q))
    }

    /// The newest reconcile of `env` that has a diff, with it.
    pub fn last_plan(&self, env: &str) -> Result<Option<ReconcileRecord>> {
        self.with(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM reconciles WHERE env = ?1 AND diff IS NOT NULL ORDER BY id DESC LIMIT 1"
                ),
                params![env],
                row,
            )
            .optional()?)
        })
    }

    /// Every environment the store knows of (history, last good, control).
    pub fn environments(&self) -> Result<Vec<String>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT env FROM reconciles UNION SELECT env FROM last_good UNION SELECT env FROM env_control ORDER BY 1",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// The status of `env`, read in one transaction.
    pub fn env_summary(&self, env: &str) -> Result<EnvSummary> {
        self.transaction(|tx| env_summary(tx, env))
    }

    /// The status of each of `envs`, read in one transaction.
    pub fn env_summaries(&self, envs: &[String]) -> Result<Vec<EnvSummary>> {
        self.transaction(|tx| envs.iter().map(|e| env_summary(tx, e)).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::super::{Finish, ImageIds, Kind, Timings, Trigger};
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn history_pages_filter_and_summaries() {
        let s = Store::open_in_memory().unwrap();
        let plan = |action: &str| {
            serde_json::json!({"changes": [
                {"target": "t", "resource": {"kind": "service", "name": "a"}, "action": {"type": action}},
                {"target": "t", "resource": {"kind": "service", "name": "b"}, "action": {"type": "unchanged"}},
            ]})
        };
        let mut ids = Vec::new();
        for (i, outcome) in [Outcome::Healthy, Outcome::Unhealthy, Outcome::Healthy]
            .into_iter()
            .enumerate()
        {
            let id = s
                .begin(
                    "dev",
                    &"c0".into(),
                    Trigger::Poll,
                    Kind::Deploy,
                    None,
                    t(i as u64),
                )
                .unwrap();
            let finish = Finish {
                commit: Some(format!("c{i}").into()),
                outcome,
                plan: Some(plan("update")),
                diff: Some(format!("diff {i}")),
                changes: Some(1),
                error: None,
                image_ids: ImageIds::new(),
                digests: Default::default(),
                timings: Timings::default(),
            };
            s.finish(id, &finish, t(i as u64 + 1)).unwrap();
            ids.push(id);
        }
        s.begin(
            "prod",
            &"c0".into(),
            Trigger::Poll,
            Kind::Deploy,
            None,
            t(9),
        )
        .unwrap();
        let page = s
            .history_page(&HistoryQuery {
                env: Some("dev"),
                limit: 2,
                ..HistoryQuery::default()
            })
            .unwrap();
        assert_eq!(
            page.iter().map(|r| r.id).collect::<Vec<_>>(),
            [ids[2], ids[1]]
        );
        assert!(page[0].plan.is_none() && page[0].diff.is_none());
        assert_eq!(page[0].changes, Some(1));
        let next = s
            .history_page(&HistoryQuery {
                env: Some("dev"),
                before: Some(ids[1]),
                limit: 2,
                ..HistoryQuery::default()
            })
            .unwrap();
        assert_eq!(next.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[0]]);
        let bad = s
            .history_page(&HistoryQuery {
                outcome: Some(Outcome::Unhealthy),
                limit: 10,
                ..HistoryQuery::default()
            })
            .unwrap();
        assert_eq!(bad.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[1]]);
        assert_eq!(
            s.reconcile(ids[1]).unwrap().unwrap().diff.as_deref(),
            Some("diff 1")
        );
        assert!(s.reconcile(999).unwrap().is_none());
        assert_eq!(s.environments().unwrap(), ["dev", "prod"]);

        let sum = s.env_summary("dev").unwrap();
        assert_eq!(sum.current_commit.as_deref(), Some("c2"));
        assert_eq!((sum.health, sum.out_of_sync), (EnvHealth::Healthy, 0));
        // A later unhealthy deploy: one resource out of sync, unhealthy.
        let id = s
            .begin(
                "dev",
                &"c0".into(),
                Trigger::Poll,
                Kind::Deploy,
                None,
                t(20),
            )
            .unwrap();
        let finish = Finish {
            commit: Some("c3".into()),
            outcome: Outcome::Unhealthy,
            plan: Some(plan("recreate")),
            diff: Some("diff 3".into()),
            changes: Some(1),
            error: Some("unhealthy".into()),
            image_ids: ImageIds::new(),
            digests: Default::default(),
            timings: Timings::default(),
        };
        s.finish(id, &finish, t(21)).unwrap();
        let sum = s.env_summary("dev").unwrap();
        assert_eq!(sum.current_commit.as_deref(), Some("c2"));
        assert_eq!((sum.health, sum.out_of_sync), (EnvHealth::Unhealthy, 1));
        assert_eq!(s.last_plan("dev").unwrap().unwrap().id, id);
        // Rolled back to c2, healthy: in sync with what dev is held at.
        let back = s
            .begin(
                "dev",
                &"c2".into(),
                Trigger::Poll,
                Kind::Rollback,
                Some(&"c3".into()),
                t(22),
            )
            .unwrap();
        let finish = Finish {
            commit: Some("c2".into()),
            outcome: Outcome::Healthy,
            changes: Some(1),
            error: None,
            ..finish
        };
        s.finish(back, &finish, t(23)).unwrap();
        let sum = s.env_summary("dev").unwrap();
        assert_eq!((sum.health, sum.out_of_sync), (EnvHealth::Healthy, 0));
        assert_eq!(s.env_summary("prod").unwrap().health, EnvHealth::Unknown);
        assert_eq!(
            s.env_summaries(&["dev".into(), "prod".into()]).unwrap(),
            [
                s.env_summary("dev").unwrap(),
                s.env_summary("prod").unwrap()
            ]
        );
        // The generation moves with every write, and only then.
        let g = s.generation().unwrap();
        s.env_summary("dev").unwrap();
        assert_eq!(s.generation().unwrap(), g);
        s.suspend("dev", "x", t(30)).unwrap();
        assert_ne!(s.generation().unwrap(), g);
    }
}
