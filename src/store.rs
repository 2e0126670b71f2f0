//! The state store: one SQLite file (`state.db`) in the daemon's state
//! directory — the record stage of the pipeline.
//!
//! It owns: every reconcile (environment, commit, trigger, masked plan and
//! diff, outcome, timings per phase, error, image ids), the last good commit
//! of each environment with the image ids it ran, commits marked failed,
//! operator pins and suspensions, webhook delivery ids (the replay guard),
//! and a `backup_runs` table for the backup scheduler.
//!
//! The database runs in WAL mode with `synchronous=NORMAL` (a crash loses at
//! most the last transactions, never consistency), a busy timeout so the CLI
//! and the daemon can share it, and migrations keyed on `user_version`.
//! Callers mask secrets before anything reaches the store: it stores what it
//! is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// The database file name inside the state directory.
pub const FILE: &str = "state.db";

/// Store failures. SQLite's own message says what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Open { path: String, message: String },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "state store: schema version {found} is newer than this driftless knows ({known}); upgrade driftless"
    )]
    TooNew { found: i64, known: i64 },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Schema migrations, applied in order; `user_version` is the count applied.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE reconciles (
        id           INTEGER PRIMARY KEY,
        env          TEXT NOT NULL,
        commit_id    TEXT,
        trigger      TEXT NOT NULL,
        kind         TEXT NOT NULL,
        rollback_of  TEXT,
        outcome      TEXT NOT NULL,
        plan_json    TEXT,
        diff         TEXT,
        error        TEXT,
        image_ids    TEXT,
        timings      TEXT,
        started_at   INTEGER NOT NULL,
        finished_at  INTEGER
    );
    CREATE INDEX reconciles_env_id ON reconciles (env, id);
    CREATE INDEX reconciles_started ON reconciles (started_at);
    CREATE TABLE last_good (
        env          TEXT PRIMARY KEY,
        commit_id    TEXT NOT NULL,
        image_ids    TEXT NOT NULL,
        reconcile_id INTEGER,
        recorded_at  INTEGER NOT NULL
    );
    CREATE TABLE failed_commits (
        env          TEXT NOT NULL,
        commit_id    TEXT NOT NULL,
        reason       TEXT NOT NULL,
        failed_at    INTEGER NOT NULL,
        PRIMARY KEY (env, commit_id)
    );
    CREATE TABLE env_control (
        env          TEXT PRIMARY KEY,
        pinned       TEXT,
        suspended    TEXT,
        updated_at   INTEGER NOT NULL
    );
    CREATE TABLE deliveries (
        delivery_id  TEXT PRIMARY KEY,
        event        TEXT NOT NULL,
        outcome      TEXT NOT NULL,
        received_at  INTEGER NOT NULL
    );
    CREATE INDEX deliveries_received ON deliveries (received_at);
    CREATE TABLE backup_runs (
        id           INTEGER PRIMARY KEY,
        env          TEXT NOT NULL,
        job          TEXT NOT NULL,
        trigger      TEXT NOT NULL,
        outcome      TEXT NOT NULL,
        location     TEXT,
        bytes        INTEGER,
        sha256       TEXT,
        verified     INTEGER,
        error        TEXT,
        reconcile_id INTEGER,
        started_at   INTEGER NOT NULL,
        finished_at  INTEGER
    );
    CREATE INDEX backup_runs_env_job ON backup_runs (env, job, id);
    "#,
];

/// Why a reconcile ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The daemon started (first pass of every environment).
    Startup,
    Poll,
    Webhook,
    /// A local repo's refs changed (file watch).
    Watch,
    /// The drift timer: re-plan without a new commit.
    Drift,
    /// An operator asked (API or CLI).
    Manual,
    /// A retry after a failure (backoff).
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Poll => "poll",
            Trigger::Webhook => "webhook",
            Trigger::Watch => "watch",
            Trigger::Drift => "drift",
            Trigger::Manual => "manual",
            Trigger::Retry => "retry",
        }
    }
}

/// What a reconcile applied: the commit it was asked for, or the last good
/// commit after that one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Deploy,
    Rollback,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Rollback => "rollback",
        }
    }
}

/// How a reconcile ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still running (or the daemon died during it: see `Interrupted`).
    Running,
    /// Nothing to change and everything healthy.
    Unchanged,
    /// Applied and verified healthy.
    Healthy,
    /// Render or check failed: nothing was applied.
    Invalid,
    /// Connecting, planning or applying failed.
    Failed,
    /// Applied, but verify found it unhealthy.
    Unhealthy,
    /// Skipped on purpose (the commit is marked failed, or the environment
    /// is suspended).
    Skipped,
    /// The daemon stopped (or was killed) before the reconcile ended.
    Interrupted,
}

impl Outcome {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Unchanged => "unchanged",
            Outcome::Healthy => "healthy",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
            Outcome::Unhealthy => "unhealthy",
            Outcome::Skipped => "skipped",
            Outcome::Interrupted => "interrupted",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "running" => Outcome::Running,
            "unchanged" => Outcome::Unchanged,
            "healthy" => Outcome::Healthy,
            "invalid" => Outcome::Invalid,
            "failed" => Outcome::Failed,
            "unhealthy" => Outcome::Unhealthy,
            "skipped" => Outcome::Skipped,
            _ => Outcome::Interrupted,
        }
    }

    /// Whether the environment is in the desired state after this outcome.
    pub fn is_good(self) -> bool {
        matches!(self, Outcome::Unchanged | Outcome::Healthy)
    }
}

/// Milliseconds spent in each phase of a reconcile (absent: not reached).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
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

/// How a reconcile ended, as recorded. Every text here must already be masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finish {
    pub commit: Option<String>,
    pub outcome: Outcome,
    /// The plan's JSON form ([`crate::plan::Plan::to_json`]).
    pub plan: Option<serde_json::Value>,
    /// The plan as text (diffs included).
    pub diff: Option<String>,
    pub error: Option<String>,
    pub image_ids: ImageIds,
    pub timings: Timings,
}

/// One row of history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconcileRecord {
    pub id: i64,
    pub env: String,
    pub commit: Option<String>,
    pub trigger: String,
    pub kind: String,
    /// For a rollback: the commit that failed.
    pub rollback_of: Option<String>,
    pub outcome: Outcome,
    pub plan: Option<serde_json::Value>,
    pub diff: Option<String>,
    pub error: Option<String>,
    pub image_ids: ImageIds,
    pub timings: Timings,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// The last commit an environment ran healthy, with the image ids it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastGood {
    pub commit: String,
    pub image_ids: ImageIds,
    pub reconcile_id: Option<i64>,
    pub recorded_at: i64,
}

/// Operator control of an environment. Survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Control {
    /// Commit the environment is pinned to (`driftless rollback --to`).
    pub pinned: Option<String>,
    /// Why automatic reconciles are stopped (`driftless suspend`, or a
    /// failed rollback / first deploy).
    pub suspended: Option<String>,
}

/// A commit that failed in an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedCommit {
    pub commit: String,
    pub reason: String,
    pub failed_at: i64,
}

/// What retention keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Retention {
    /// Reconciles older than this are deleted (default 90 days).
    #[serde(with = "crate::duration::serde_go")]
    pub history_age: Duration,
    /// At most this many reconciles per environment (default 10,000).
    pub history_rows: u32,
    /// Webhook delivery ids older than this are forgotten (default 7 days).
    #[serde(with = "crate::duration::serde_go")]
    pub deliveries_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            history_age: Duration::from_secs(90 * 86_400),
            history_rows: 10_000,
            deliveries_age: Duration::from_secs(7 * 86_400),
        }
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub reconciles: usize,
    pub deliveries: usize,
}

/// A backup run, as the backup scheduler records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackupRun {
    pub env: String,
    pub job: String,
    pub trigger: String,
    pub outcome: String,
    pub location: Option<String>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    pub verified: Option<bool>,
    pub error: Option<String>,
    pub reconcile_id: Option<i64>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// One backup job's latest results, for metrics and status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackupJobStats {
    pub env: String,
    pub job: String,
    /// Outcome and start (unix ms) of the newest run.
    pub last_outcome: String,
    pub last_run_at: i64,
    /// Finish time (unix ms), duration and stored size of the newest successful run.
    pub last_success_at: Option<i64>,
    pub last_success_duration_ms: Option<i64>,
    pub last_success_bytes: Option<i64>,
    /// Runs that did not succeed, over the recorded history.
    pub failed_runs: i64,
}

/// The state store. Cheap to share behind an `Arc`; every call is one short
/// transaction on one connection.
pub struct Store {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Unix milliseconds of `t`.
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) `dir/state.db` and migrates it.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let path = dir.join(FILE);
        let conn = Connection::open(&path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let store = Store::setup(conn, Some(path))?;
        Ok(store)
    }

    /// An in-memory store (tests).
    pub fn open_in_memory() -> Result<Store> {
        Store::setup(Connection::open_in_memory()?, None)
    }

    fn setup(conn: Connection, path: Option<PathBuf>) -> Result<Store> {
        conn.busy_timeout(Duration::from_secs(10))?;
        // `journal_mode` answers with a row; an in-memory database stays `memory`.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
        let store = Store {
            conn: Mutex::new(conn),
            path,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Marks reconciles of `env` left `running` by a previous process as
    /// interrupted. Only the holder of the environment's lock calls this
    /// (the daemon at start), so a CLI opening the store never touches a
    /// running daemon's rows.
    pub fn mark_interrupted(&self, env: &str) -> Result<usize> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE reconciles SET outcome = 'interrupted', finished_at = ?2 WHERE outcome = 'running' AND env = ?1",
                params![env, millis(SystemTime::now())],
            )?)
        })
    }

    /// The database file (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        // A panic while holding the lock leaves a consistent database
        // (transactions roll back on drop), so a poisoned lock is usable.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn)
    }

    fn migrate(&self) -> Result<()> {
        self.with(|c| {
            let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let known = MIGRATIONS.len() as i64;
            if version > known {
                return Err(StoreError::TooNew {
                    found: version,
                    known,
                });
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                let tx = c.transaction()?;
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", (i + 1) as i64)?;
                tx.commit()?;
            }
            Ok(())
        })
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64> {
        self.with(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
    }

    // -- reconciles ---------------------------------------------------------

    /// Records the start of a reconcile; returns its id.
    pub fn begin(
        &self,
        env: &str,
        trigger: Trigger,
        kind: Kind,
        rollback_of: Option<&str>,
        started: SystemTime,
    ) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO reconciles (env, trigger, kind, rollback_of, outcome, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
                params![env, trigger.as_str(), kind.as_str(), rollback_of, millis(started)],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Records how reconcile `id` ended.
    pub fn finish(&self, id: i64, finish: &Finish, finished: SystemTime) -> Result<()> {
        let plan = finish.plan.as_ref().map(|p| p.to_string());
        let images = serde_json::to_string(&finish.image_ids).expect("plain map");
        let timings = serde_json::to_string(&finish.timings).expect("plain struct");
        self.with(|c| {
            c.execute(
                "UPDATE reconciles SET commit_id = ?2, outcome = ?3, plan_json = ?4, diff = ?5, error = ?6, image_ids = ?7, timings = ?8, finished_at = ?9 WHERE id = ?1",
                params![id, finish.commit, finish.outcome.as_str(), plan, finish.diff, finish.error, images, timings, millis(finished)],
            )?;
            Ok(())
        })
    }

    /// Deletes the row of a reconcile that turned out not worth keeping
    /// (an unchanged re-plan by a timer).
    pub fn discard(&self, id: i64) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM reconciles WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    /// Newest first; `env` filters; at most `limit` rows.
    pub fn history(&self, env: Option<&str>, limit: u32) -> Result<Vec<ReconcileRecord>> {
        let q = HistoryQuery {
            env,
            limit,
            ..HistoryQuery::default()
        };
        self.records(RECORD_COLUMNS, &q)
    }

    // -- last good, failed commits ------------------------------------------

    /// The environment's last good commit.
    pub fn last_good(&self, env: &str) -> Result<Option<LastGood>> {
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT commit_id, image_ids, reconcile_id, recorded_at FROM last_good WHERE env = ?1",
                    params![env],
                    |r| {
                        let images: String = r.get(1)?;
                        Ok(LastGood {
                            commit: r.get(0)?,
                            image_ids: serde_json::from_str(&images).unwrap_or_default(),
                            reconcile_id: r.get(2)?,
                            recorded_at: r.get(3)?,
                        })
                    },
                )
                .optional()?;
            Ok(row)
        })
    }

    /// Records `commit` (with the image ids it ran) as the environment's last good.
    pub fn set_last_good(
        &self,
        env: &str,
        commit: &str,
        image_ids: &ImageIds,
        reconcile_id: Option<i64>,
        at: SystemTime,
    ) -> Result<()> {
        let images = serde_json::to_string(image_ids).expect("plain map");
        self.with(|c| {
            c.execute(
                "INSERT INTO last_good (env, commit_id, image_ids, reconcile_id, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (env) DO UPDATE SET commit_id = ?2, image_ids = ?3, reconcile_id = ?4, recorded_at = ?5",
                params![env, commit, images, reconcile_id, millis(at)],
            )?;
            Ok(())
        })
    }

    /// Marks `commit` failed in `env`: automatic reconciles skip it.
    pub fn mark_failed(&self, env: &str, commit: &str, reason: &str, at: SystemTime) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO failed_commits (env, commit_id, reason, failed_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (env, commit_id) DO UPDATE SET reason = ?3, failed_at = ?4",
                params![env, commit, reason, millis(at)],
            )?;
            Ok(())
        })
    }

    /// The failure recorded for `commit` in `env`, if any.
    pub fn failed(&self, env: &str, commit: &str) -> Result<Option<FailedCommit>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT commit_id, reason, failed_at FROM failed_commits WHERE env = ?1 AND commit_id = ?2",
                params![env, commit],
                |r| {
                    Ok(FailedCommit {
                        commit: r.get(0)?,
                        reason: r.get(1)?,
                        failed_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Every failed commit of `env`, newest first.
    pub fn failed_commits(&self, env: &str) -> Result<Vec<FailedCommit>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT commit_id, reason, failed_at FROM failed_commits WHERE env = ?1 ORDER BY failed_at DESC",
            )?;
            let rows = stmt.query_map(params![env], |r| {
                Ok(FailedCommit {
                    commit: r.get(0)?,
                    reason: r.get(1)?,
                    failed_at: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }

    /// Forgets the failed marks of `env` (an operator forces a retry).
    pub fn clear_failed(&self, env: &str) -> Result<usize> {
        self.with(|c| Ok(c.execute("DELETE FROM failed_commits WHERE env = ?1", params![env])?))
    }

    // -- pins and suspensions -----------------------------------------------

    /// The operator control of `env` (default: neither pinned nor suspended).
    pub fn control(&self, env: &str) -> Result<Control> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT pinned, suspended FROM env_control WHERE env = ?1",
                params![env],
                |r| {
                    Ok(Control {
                        pinned: r.get(0)?,
                        suspended: r.get(1)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
        })
    }

    /// Sets the control of `env` as a whole.
    pub fn set_control(&self, env: &str, control: &Control, at: SystemTime) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO env_control (env, pinned, suspended, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (env) DO UPDATE SET pinned = ?2, suspended = ?3, updated_at = ?4",
                params![env, control.pinned, control.suspended, millis(at)],
            )?;
            Ok(())
        })
    }

    /// Pins `env` to `commit` and lifts a suspension: the daemon applies that
    /// commit and nothing else until [`Store::resume`].
    pub fn pin(&self, env: &str, commit: &str, at: SystemTime) -> Result<()> {
        self.set_control(
            env,
            &Control {
                pinned: Some(commit.to_owned()),
                suspended: None,
            },
            at,
        )
    }

    /// Stops automatic reconciles of `env`, keeping a pin.
    pub fn suspend(&self, env: &str, reason: &str, at: SystemTime) -> Result<()> {
        let mut control = self.control(env)?;
        control.suspended = Some(reason.to_owned());
        self.set_control(env, &control, at)
    }

    /// Lifts both pin and suspension.
    pub fn resume(&self, env: &str, at: SystemTime) -> Result<()> {
        self.set_control(env, &Control::default(), at)
    }

    /// Every environment with a pin or a suspension.
    pub fn controls(&self) -> Result<BTreeMap<String, Control>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT env, pinned, suspended FROM env_control WHERE pinned IS NOT NULL OR suspended IS NOT NULL",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Control {
                        pinned: r.get(1)?,
                        suspended: r.get(2)?,
                    },
                ))
            })?;
            Ok(rows.collect::<std::result::Result<BTreeMap<_, _>, _>>()?)
        })
    }

    // -- webhook deliveries -------------------------------------------------

    /// Records a delivery id; `false` when it was seen before (a replay).
    pub fn record_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        outcome: &str,
        at: SystemTime,
    ) -> Result<bool> {
        self.with(|c| {
            let n = c.execute(
                "INSERT INTO deliveries (delivery_id, event, outcome, received_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![delivery_id, event, outcome, millis(at)],
            )?;
            Ok(n == 1)
        })
    }

    /// Number of delivery ids remembered.
    pub fn delivery_count(&self) -> Result<i64> {
        self.with(|c| Ok(c.query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))?))
    }

    // -- backups ------------------------------------------------------------

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
        self.runs_where(
            "env = ?1 AND (?2 IS NULL OR job = ?2) ORDER BY id DESC LIMIT ?3",
            params![env, job, limit as i64],
        )
    }

    /// Succeeded `before_apply` runs recorded with the given reconciles,
    /// as `(reconcile id, run)`, oldest first.
    pub fn before_apply_runs(&self, reconcile_ids: &[i64]) -> Result<Vec<(i64, BackupRun)>> {
        let mut out = Vec::new();
        for &rid in reconcile_ids {
            for (_, run) in self.runs_where("trigger = 'before_apply' AND outcome = 'succeeded' AND reconcile_id = ?1 ORDER BY id", params![rid])? {
                out.push((rid, run));
            }
        }
        Ok(out)
    }

    /// An environment's succeeded `before_apply` runs, newest first, each
    /// with the commit that was running (the newest healthy or unchanged
    /// reconcile before its deploy): the backups a rollback to that commit
    /// matches.
    pub fn before_apply_runs_with_running_commit(
        &self,
        env: &str,
        limit: usize,
    ) -> Result<Vec<(Option<String>, BackupRun)>> {
        let runs = self.runs_where(
            "env = ?1 AND trigger = 'before_apply' AND outcome = 'succeeded' AND reconcile_id IS NOT NULL ORDER BY id DESC LIMIT ?2",
            params![env, limit as i64],
        )?;
        let mut out = Vec::with_capacity(runs.len());
        for (_, run) in runs {
            let running = self.with(|c| {
                Ok(c.query_row(
                    "SELECT commit_id FROM reconciles WHERE env = ?1 AND id < ?2 AND outcome IN ('healthy', 'unchanged') ORDER BY id DESC LIMIT 1",
                    params![env, run.reconcile_id],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()?
                .flatten())
            })?;
            out.push((running, run));
        }
        Ok(out)
    }

    /// Backup runs matching `filter` (an SQL condition, with its order and
    /// limit), with their ids.
    fn runs_where(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<(i64, BackupRun)>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT id, env, job, trigger, outcome, location, bytes, sha256, verified, error, reconcile_id, started_at, finished_at
                 FROM backup_runs WHERE {filter}"
            ))?;
            let rows = stmt.query_map(args, |r| {
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
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Per environment and job: the last run and the last successful one
    /// (what `/metrics` exports: last success time, duration, size).
    pub fn backup_job_stats(&self) -> Result<Vec<BackupJobStats>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT b.env, b.job,
                    (SELECT outcome FROM backup_runs l WHERE l.env = b.env AND l.job = b.job ORDER BY id DESC LIMIT 1),
                    (SELECT started_at FROM backup_runs l WHERE l.env = b.env AND l.job = b.job ORDER BY id DESC LIMIT 1),
                    s.finished_at, s.finished_at - s.started_at, s.bytes,
                    (SELECT count(*) FROM backup_runs f WHERE f.env = b.env AND f.job = b.job AND f.outcome != 'succeeded')
                 FROM (SELECT DISTINCT env, job FROM backup_runs) b
                 LEFT JOIN backup_runs s ON s.id = (
                     SELECT id FROM backup_runs x WHERE x.env = b.env AND x.job = b.job AND x.outcome = 'succeeded' ORDER BY id DESC LIMIT 1)
                 ORDER BY b.env, b.job",
            )?;
            let rows = stmt.query_map([], |r| {
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

    // -- retention ----------------------------------------------------------

    /// Deletes history and delivery ids that retention no longer keeps.
    pub fn prune(&self, retention: &Retention, now: SystemTime) -> Result<Pruned> {
        let history_cutoff = millis(now) - retention.history_age.as_millis() as i64;
        let deliveries_cutoff = millis(now) - retention.deliveries_age.as_millis() as i64;
        self.with(|c| {
            let tx = c.transaction()?;
            let mut reconciles = tx.execute(
                "DELETE FROM reconciles WHERE started_at < ?1 AND outcome != 'running'",
                params![history_cutoff],
            )?;
            // Per environment, keep the newest `history_rows`.
            reconciles += tx.execute(
                "DELETE FROM reconciles WHERE id IN (
                     SELECT id FROM (
                         SELECT id, row_number() OVER (PARTITION BY env ORDER BY id DESC) AS n FROM reconciles
                     ) WHERE n > ?1)",
                params![retention.history_rows],
            )?;
            let deliveries = tx.execute(
                "DELETE FROM deliveries WHERE received_at < ?1",
                params![deliveries_cutoff],
            )?;
            tx.commit()?;
            Ok(Pruned {
                reconciles,
                deliveries,
            })
        })
    }

    /// Checks the database file (`PRAGMA integrity_check`); `Ok(())` when sound.
    pub fn integrity_check(&self) -> Result<std::result::Result<(), String>> {
        self.with(|c| {
            let result: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            Ok(if result == "ok" { Ok(()) } else { Err(result) })
        })
    }
}

/// The columns [`record`] reads, in its order.
const RECORD_COLUMNS: &str = "id, env, commit_id, trigger, kind, rollback_of, outcome, plan_json, diff, error, image_ids, timings, started_at, finished_at";

/// The same columns with the plan and diff left out (list views).
const RECORD_COLUMNS_BRIEF: &str = "id, env, commit_id, trigger, kind, rollback_of, outcome, NULL, NULL, error, image_ids, timings, started_at, finished_at";

/// One `reconciles` row, selected as [`RECORD_COLUMNS`].
fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReconcileRecord> {
    let plan: Option<String> = r.get(7)?;
    let images: Option<String> = r.get(10)?;
    let timings: Option<String> = r.get(11)?;
    let outcome: String = r.get(6)?;
    Ok(ReconcileRecord {
        id: r.get(0)?,
        env: r.get(1)?,
        commit: r.get(2)?,
        trigger: r.get(3)?,
        kind: r.get(4)?,
        rollback_of: r.get(5)?,
        outcome: Outcome::parse(&outcome),
        plan: plan.and_then(|p| serde_json::from_str(&p).ok()),
        diff: r.get(8)?,
        error: r.get(9)?,
        image_ids: images
            .and_then(|i| serde_json::from_str(&i).ok())
            .unwrap_or_default(),
        timings: timings
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        started_at: r.get(12)?,
        finished_at: r.get(13)?,
    })
}

/// A page of history: filters and a cursor (ids are increasing, so
/// `before` is the smallest id of the previous page).
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryQuery<'a> {
    pub env: Option<&'a str>,
    /// A stored outcome (`healthy`, `failed`, …).
    pub outcome: Option<&'a str>,
    /// Only rows with a smaller id.
    pub before: Option<i64>,
    pub limit: u32,
}

/// What the operator surface shows of one environment, read in one go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvSummary {
    pub env: String,
    /// The commit of the newest reconcile that ended healthy: what runs.
    pub current_commit: Option<String>,
    pub last_good: Option<LastGood>,
    /// The newest reconcile (without plan and diff).
    pub last_reconcile: Option<ReconcileRecord>,
    /// The live state as the newest reconcile that touched it found it:
    /// `healthy`, `unhealthy`, `failed`, or `unknown`.
    pub health: &'static str,
    /// Resources the newest deploy's plan changes that are not known to be
    /// applied: 0 when that deploy ended healthy.
    pub out_of_sync: u64,
    pub control: Control,
    pub failed_commits: Vec<FailedCommit>,
}

/// Queries of the operator surface (HTTP API, status page, metrics, CLI).
/// They only read.
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
                record,
            )
            .optional()?)
        })
    }

    /// A page of history, newest first, without plans and diffs.
    pub fn history_page(&self, q: &HistoryQuery<'_>) -> Result<Vec<ReconcileRecord>> {
        self.records(RECORD_COLUMNS_BRIEF, q)
    }

    fn records(&self, columns: &str, q: &HistoryQuery<'_>) -> Result<Vec<ReconcileRecord>> {
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
            values.push(outcome.to_owned().into());
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
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {columns} FROM reconciles {filter} ORDER BY id DESC LIMIT ?"
            ))?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), record)?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }

    /// The newest reconcile of `env` that has a diff, with it.
    pub fn last_plan(&self, env: &str) -> Result<Option<ReconcileRecord>> {
        self.with(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM reconciles WHERE env = ?1 AND diff IS NOT NULL ORDER BY id DESC LIMIT 1"
                ),
                params![env],
                record,
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
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }

    /// The status of `env`.
    pub fn env_summary(&self, env: &str) -> Result<EnvSummary> {
        let (current_commit, health, out_of_sync) = self.with(|c| {
            let current: Option<Option<String>> = c
                .query_row(
                    "SELECT commit_id FROM reconciles WHERE env = ?1 AND outcome IN ('healthy', 'unchanged') ORDER BY id DESC LIMIT 1",
                    params![env],
                    |r| r.get(0),
                )
                .optional()?;
            let touched: Option<String> = c
                .query_row(
                    "SELECT outcome FROM reconciles WHERE env = ?1 AND outcome IN ('healthy', 'unchanged', 'unhealthy', 'failed', 'interrupted') ORDER BY id DESC LIMIT 1",
                    params![env],
                    |r| r.get(0),
                )
                .optional()?;
            let health = match touched.as_deref().map(Outcome::parse) {
                Some(Outcome::Healthy | Outcome::Unchanged) => "healthy",
                Some(Outcome::Unhealthy) => "unhealthy",
                Some(Outcome::Failed) => "failed",
                _ => "unknown",
            };
            let deploy: Option<(String, Option<String>)> = c
                .query_row(
                    "SELECT outcome, plan_json FROM reconciles WHERE env = ?1 AND kind = 'deploy' AND plan_json IS NOT NULL AND outcome != 'running' ORDER BY id DESC LIMIT 1",
                    params![env],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let out_of_sync = match deploy {
                Some((outcome, _)) if Outcome::parse(&outcome).is_good() => 0,
                Some((_, Some(plan))) => changes_in(&plan),
                _ => 0,
            };
            Ok((current.flatten(), health, out_of_sync))
        })?;
        Ok(EnvSummary {
            env: env.to_owned(),
            current_commit,
            last_good: self.last_good(env)?,
            last_reconcile: self
                .history_page(&HistoryQuery {
                    env: Some(env),
                    limit: 1,
                    ..HistoryQuery::default()
                })?
                .pop(),
            health,
            out_of_sync,
            control: self.control(env)?,
            failed_commits: self.failed_commits(env)?,
        })
    }
}

/// How many changes of a stored plan are not `unchanged`.
fn changes_in(plan_json: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(plan_json)
        .ok()
        .and_then(|p| {
            p["changes"].as_array().map(|a| {
                a.iter()
                    .filter(|c| c["action"]["type"] != "unchanged")
                    .count() as u64
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn reconciles_round_trip_newest_first() {
        let s = Store::open_in_memory().unwrap();
        let a = s
            .begin("dev", Trigger::Poll, Kind::Deploy, None, t(10))
            .unwrap();
        let finish = Finish {
            commit: Some("abc".into()),
            outcome: Outcome::Healthy,
            plan: Some(serde_json::json!({"changes": []})),
            diff: Some("plan for dev".into()),
            error: None,
            image_ids: [("p/web".to_owned(), "sha256:1".to_owned())].into(),
            timings: Timings {
                plan_ms: Some(3),
                ..Timings::default()
            },
        };
        s.finish(a, &finish, t(11)).unwrap();
        let b = s
            .begin("dev", Trigger::Webhook, Kind::Rollback, Some("bad"), t(12))
            .unwrap();
        let h = s.history(Some("dev"), 10).unwrap();
        assert_eq!(h.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(h[0].outcome, Outcome::Running);
        assert_eq!(h[0].kind, "rollback");
        assert_eq!(h[0].rollback_of.as_deref(), Some("bad"));
        assert_eq!(h[1].outcome, Outcome::Healthy);
        assert_eq!(h[1].image_ids["p/web"], "sha256:1");
        assert_eq!(h[1].timings.plan_ms, Some(3));
        assert_eq!(h[1].plan, finish.plan);
        assert_eq!(h[1].finished_at, Some(11_000));
        assert!(s.history(Some("prod"), 10).unwrap().is_empty());
    }

    #[test]
    fn reopening_keeps_everything_and_the_lock_holder_marks_running_rows_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.begin("dev", Trigger::Startup, Kind::Deploy, None, t(1))
                .unwrap();
            s.set_last_good("dev", "c1", &ImageIds::new(), None, t(1))
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        // Opening alone changes nothing: another process may be mid-reconcile.
        assert_eq!(s.history(None, 5).unwrap()[0].outcome, Outcome::Running);
        // The holder of the environment's lock marks what it finds running.
        assert_eq!(s.mark_interrupted("dev").unwrap(), 1);
        assert_eq!(s.history(None, 5).unwrap()[0].outcome, Outcome::Interrupted);
        assert_eq!(s.last_good("dev").unwrap().unwrap().commit, "c1");
        assert_eq!(s.integrity_check().unwrap(), Ok(()));
        let mode: String = s
            .with(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join(FILE)).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let e = Store::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("schema version 99"), "{e}");
    }

    #[test]
    fn last_good_failed_commits_and_control() {
        let s = Store::open_in_memory().unwrap();
        assert!(s.last_good("dev").unwrap().is_none());
        let ids: ImageIds = [("p/a".to_owned(), "sha256:a".to_owned())].into();
        s.set_last_good("dev", "c1", &ids, Some(1), t(5)).unwrap();
        s.set_last_good("dev", "c2", &ids, Some(2), t(6)).unwrap();
        let lg = s.last_good("dev").unwrap().unwrap();
        assert_eq!((lg.commit.as_str(), lg.reconcile_id), ("c2", Some(2)));
        assert_eq!(lg.image_ids, ids);

        assert!(s.failed("dev", "c3").unwrap().is_none());
        s.mark_failed("dev", "c3", "unhealthy", t(7)).unwrap();
        s.mark_failed("dev", "c3", "unhealthy again", t(8)).unwrap();
        assert_eq!(
            s.failed("dev", "c3").unwrap().unwrap().reason,
            "unhealthy again"
        );
        assert!(s.failed("prod", "c3").unwrap().is_none());
        assert_eq!(s.failed_commits("dev").unwrap().len(), 1);
        assert_eq!(s.clear_failed("dev").unwrap(), 1);

        assert_eq!(s.control("dev").unwrap(), Control::default());
        s.suspend("dev", "operator", t(9)).unwrap();
        s.pin("dev", "c1", t(10)).unwrap();
        assert_eq!(
            s.control("dev").unwrap(),
            Control {
                pinned: Some("c1".into()),
                suspended: None
            }
        );
        s.suspend("dev", "rollback failed", t(11)).unwrap();
        let c = s.control("dev").unwrap();
        assert_eq!(c.pinned.as_deref(), Some("c1"));
        assert_eq!(c.suspended.as_deref(), Some("rollback failed"));
        assert_eq!(s.controls().unwrap().len(), 1);
        s.resume("dev", t(12)).unwrap();
        assert_eq!(s.control("dev").unwrap(), Control::default());
        assert!(s.controls().unwrap().is_empty());
    }

    #[test]
    fn deliveries_are_a_replay_guard() {
        let s = Store::open_in_memory().unwrap();
        assert!(s.record_delivery("d1", "push", "accepted", t(1)).unwrap());
        assert!(!s.record_delivery("d1", "push", "accepted", t(2)).unwrap());
        assert!(s.record_delivery("d2", "ping", "pong", t(2)).unwrap());
        assert_eq!(s.delivery_count().unwrap(), 2);
    }

    #[test]
    fn retention_by_age_and_by_rows_per_environment() {
        let s = Store::open_in_memory().unwrap();
        let day = 86_400;
        for i in 0..5 {
            s.begin("dev", Trigger::Poll, Kind::Deploy, None, t(i * day))
                .unwrap();
        }
        for i in 0..3 {
            s.begin("prod", Trigger::Poll, Kind::Deploy, None, t(100 * day + i))
                .unwrap();
        }
        s.with(|c| Ok(c.execute("UPDATE reconciles SET outcome = 'healthy'", [])?))
            .unwrap();
        s.record_delivery("old", "push", "accepted", t(0)).unwrap();
        s.record_delivery("new", "push", "accepted", t(100 * day))
            .unwrap();
        let retention = Retention {
            history_age: Duration::from_secs(98 * day),
            history_rows: 2,
            deliveries_age: Duration::from_secs(7 * day),
        };
        let pruned = s.prune(&retention, t(100 * day + 10)).unwrap();
        // dev: days 0–2 are too old; prod: one row over the limit.
        assert_eq!(pruned.reconciles, 3 + 1);
        assert_eq!(pruned.deliveries, 1);
        assert_eq!(s.history(Some("dev"), 10).unwrap().len(), 2);
        assert_eq!(s.history(Some("prod"), 10).unwrap().len(), 2);
        assert!(
            s.record_delivery("new", "push", "x", t(0))
                .is_ok_and(|fresh| !fresh)
        );
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
                .begin("dev", Trigger::Poll, Kind::Deploy, None, t(i as u64))
                .unwrap();
            let finish = Finish {
                commit: Some(format!("c{i}")),
                outcome,
                plan: Some(plan("update")),
                diff: Some(format!("diff {i}")),
                error: None,
                image_ids: ImageIds::new(),
                timings: Timings::default(),
            };
            s.finish(id, &finish, t(i as u64 + 1)).unwrap();
            ids.push(id);
        }
        s.begin("prod", Trigger::Poll, Kind::Deploy, None, t(9))
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
                outcome: Some("unhealthy"),
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
        assert_eq!((sum.health, sum.out_of_sync), ("healthy", 0));
        // A later unhealthy deploy: one resource out of sync, unhealthy.
        let id = s
            .begin("dev", Trigger::Poll, Kind::Deploy, None, t(20))
            .unwrap();
        let finish = Finish {
            commit: Some("c3".into()),
            outcome: Outcome::Unhealthy,
            plan: Some(plan("recreate")),
            diff: Some("diff 3".into()),
            error: Some("unhealthy".into()),
            image_ids: ImageIds::new(),
            timings: Timings::default(),
        };
        s.finish(id, &finish, t(21)).unwrap();
        let sum = s.env_summary("dev").unwrap();
        assert_eq!(sum.current_commit.as_deref(), Some("c2"));
        assert_eq!((sum.health, sum.out_of_sync), ("unhealthy", 1));
        assert_eq!(s.last_plan("dev").unwrap().unwrap().id, id);
        assert_eq!(s.env_summary("prod").unwrap().health, "unknown");
        // The generation moves with every write, and only then.
        let g = s.generation().unwrap();
        s.env_summary("dev").unwrap();
        assert_eq!(s.generation().unwrap(), g);
        s.suspend("dev", "x", t(30)).unwrap();
        assert_ne!(s.generation().unwrap(), g);
    }

    #[test]
    fn backup_stats_name_the_last_success() {
        let s = Store::open_in_memory().unwrap();
        let run = |outcome: &str, at: i64, bytes: i64| BackupRun {
            env: "dev".into(),
            job: "db".into(),
            trigger: "schedule".into(),
            outcome: outcome.into(),
            bytes: Some(bytes),
            started_at: at,
            finished_at: Some(at + 5),
            ..BackupRun::default()
        };
        s.record_backup_run(&run("succeeded", 100, 10)).unwrap();
        s.record_backup_run(&run("succeeded", 200, 20)).unwrap();
        s.record_backup_run(&run("failed", 300, 0)).unwrap();
        let stats = s.backup_job_stats().unwrap();
        assert_eq!(stats.len(), 1);
        let st = &stats[0];
        assert_eq!(st.last_outcome, "failed");
        assert_eq!(st.last_run_at, 300);
        assert_eq!(st.last_success_at, Some(205));
        assert_eq!(st.last_success_duration_ms, Some(5));
        assert_eq!(st.last_success_bytes, Some(20));
        assert_eq!(st.failed_runs, 1);
        let runs = s.backup_runs("dev", Some("db"), 2).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].1.outcome, "failed");
    }

    #[test]
    fn backup_runs_are_recorded() {
        let s = Store::open_in_memory().unwrap();
        let id = s
            .record_backup_run(&BackupRun {
                env: "dev".into(),
                job: "pg".into(),
                trigger: "schedule".into(),
                outcome: "ok".into(),
                started_at: 1,
                ..BackupRun::default()
            })
            .unwrap();
        assert!(id > 0);
    }
}
