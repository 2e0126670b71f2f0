//! The state store: one SQLite file (`state.db`) in the daemon's state
//! directory — the record stage of the pipeline.
//!
//! It owns: every reconcile (environment, commit, trigger, masked plan and
//! diff, the plan's change count, outcome, timings per phase, error, image
//! ids), the last good commit of each environment with the image ids it
//! ran, commits marked failed, operator pins and suspensions, webhook
//! delivery ids (the replay guard), and the backup scheduler's runs.
//!
//! The folder follows the tables: [`schema`] (migrations keyed on
//! `user_version`), [`reconciles`] (history rows and how a pass is
//! recorded), [`control`] (last good, failed commits and image digests,
//! pins, suspensions), [`images`] (what the image poller found),
//! [`backups`], [`deliveries`], [`retention`], and [`queries`] (the
//! operator surface's reads). Columns with a closed set of values are
//! domain enums here ([`Trigger`], [`Kind`], [`Outcome`], [`BackupTrigger`],
//! …), stored as their snake_case names.
//!
//! The database runs in WAL mode with `synchronous=NORMAL` (a crash loses at
//! most the last transactions, never consistency), a busy timeout so the CLI
//! and the daemon can share it. Every method is a blocking SQLite call on
//! one connection behind a mutex; async code goes through [`Store::call`],
//! which runs it on tokio's blocking pool, never on the runtime's workers.
//! Callers mask secrets before anything reaches the store: it stores what
//! it is given.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

pub mod backups;
pub mod control;
pub mod deliveries;
pub mod identity;
pub mod images;
pub mod queries;
pub mod reconciles;
pub mod retention;
pub mod schema;

pub use backups::{BackupJobStats, BackupOutcome, BackupRun, BackupTrigger};
pub use control::{Control, EnvState, FailedCommit, FailedImage, LastGood};
pub use identity::{Lost, LostKind, OnLost};
pub use images::{FollowedImage, ImageStatus};
pub use queries::{EnvHealth, EnvSummary, HistoryQuery};
pub use reconciles::{
    Digests, Effects, Finish, ImageIds, Kind, Outcome, ReconcileRecord, Timings, Trigger,
};
pub use retention::{Pruned, Retention};

/// Commit ids are stored as their text.
impl rusqlite::types::ToSql for crate::source::CommitId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
    }
}

impl rusqlite::types::FromSql for crate::source::CommitId {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Ok(crate::source::CommitId::new(v.as_str()?))
    }
}

/// The database file name inside the state directory.
pub const FILE: &str = "state.db";

/// Store failures. SQLite's own message says what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Open { path: String, message: String },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The state directory was used before (its marker names a store) but
    /// that store is gone: starting from nothing would forget suspensions,
    /// pins, failed commits and last good commits without a word.
    #[error(
        "state store {path}: {kind}, but this state directory held a store before ({marker} names it): its suspensions, pins, failed-commit marks, last good commits and history are gone; restore state.db from a backup, or start the daemon once with --accept-lost-state to begin from nothing"
    )]
    Lost {
        path: String,
        kind: LostKind,
        marker: &'static str,
    },
    #[error(
        "state store: schema version {found} is newer than this driftless knows ({known}); upgrade driftless"
    )]
    TooNew { found: i64, known: i64 },
    /// A column holds a value this driftless does not know.
    #[error("state store: column {column} holds unknown value `{value}`")]
    Unknown { column: &'static str, value: String },
    /// The blocking task running a store call panicked or was cancelled.
    #[error("state store task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl StoreError {
    /// Whether SQLite failed at the disk: full, an I/O error, read-only, or
    /// the file cannot be opened.
    pub fn is_disk_failure(&self) -> bool {
        use rusqlite::ErrorCode::*;
        matches!(
            self,
            StoreError::Sql(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, DiskFull | SystemIoFailure | ReadOnly | CannotOpen)
        )
    }
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The state store. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
    /// Whether the last call that tried to write failed at the disk (full,
    /// I/O error, read-only): `/readyz` answers 503 until a write succeeds.
    write_failed: std::sync::atomic::AtomicBool,
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
    /// Opens (creating if needed) `dir/state.db` and migrates it; refuses a
    /// used state directory whose store is gone ([`StoreError::Lost`]).
    pub fn open(dir: &Path) -> Result<Store> {
        Ok(Store::open_with(dir, OnLost::Refuse)?.0)
    }

    /// [`Store::open`], with the choice of what a lost store means: with
    /// [`OnLost::Accept`] an empty store is started (a damaged file moved
    /// aside first) and the loss is returned.
    pub fn open_with(dir: &Path, on_lost: OnLost) -> Result<(Store, Option<Lost>)> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let path = dir.join(FILE);
        let marker = identity::read_marker(dir)?;
        let refuse = |kind| StoreError::Lost {
            path: path.display().to_string(),
            kind,
            marker: identity::MARKER,
        };
        let mut found = None;
        if marker.is_some() && !path.exists() {
            if on_lost == OnLost::Refuse {
                return Err(refuse(LostKind::Missing));
            }
            found = Some(LostKind::Missing);
        }
        let store = match Store::open_file(&path, marker.is_some(), on_lost) {
            Ok((store, empty)) => {
                if empty {
                    found = found.or(Some(LostKind::Empty));
                }
                store
            }
            Err(e)
                if identity::is_damage(&e) && (marker.is_some() || on_lost == OnLost::Accept) =>
            {
                if on_lost == OnLost::Refuse {
                    return Err(refuse(LostKind::Damaged));
                }
                let moved = identity::move_aside(&path)?;
                let (store, _) = Store::open_with(dir, OnLost::Accept)?;
                let lost = Lost {
                    kind: LostKind::Damaged,
                    moved_to: Some(moved),
                };
                return Ok((store, Some(lost)));
            }
            Err(e) => return Err(e),
        };
        // A store under a marker naming another id — or no id at all, which
        // a store of a release before markers never has under a marker — is
        // not the store the directory held.
        let existing = store.with(|c| identity::existing_id(c))?;
        if found.is_none() && marker.is_some() && existing != marker {
            if on_lost == OnLost::Refuse {
                return Err(refuse(LostKind::Replaced));
            }
            found = Some(LostKind::Replaced);
        }
        let id = store.with(|c| identity::store_id(c))?;
        if marker.as_deref() != Some(id.as_str()) {
            identity::write_marker(dir, &id)?;
        }
        let lost = found.map(|kind| Lost {
            kind,
            moved_to: None,
        });
        Ok((store, lost))
    }

    /// Opens and migrates the file; `true` when a marked directory's file
    /// held no schema (it was lost). With `marked` and [`OnLost::Refuse`],
    /// an empty file is refused before anything is written to it.
    fn open_file(path: &Path, marked: bool, on_lost: OnLost) -> Result<(Store, bool)> {
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let empty = marked && version == 0;
        if empty && on_lost == OnLost::Refuse {
            return Err(StoreError::Lost {
                path: path.display().to_string(),
                kind: LostKind::Empty,
                marker: identity::MARKER,
            });
        }
        Ok((Store::setup(conn, Some(path.to_owned()))?, empty))
    }

    /// An in-memory store (tests).
    pub fn open_in_memory() -> Result<Store> {
        Store::setup(Connection::open_in_memory()?, None)
    }

    fn setup(conn: Connection, path: Option<PathBuf>) -> Result<Store> {
        conn.busy_timeout(Duration::from_secs(10))?;
        // `journal_mode` answers with a row; an in-memory database stays `memory`.
        // Switching a new file to WAL takes an exclusive lock without
        // calling the busy handler: when another process opens the same new
        // store at that moment, wait for it here as the busy timeout would.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let _mode: String = loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => break other?,
            }
        };
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
        let store = Store {
            conn: Mutex::new(conn),
            path,
            write_failed: Default::default(),
        };
        store.with(schema::migrate)?;
        Ok(store)
    }

    /// The database file (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` on the connection.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        // A panic while holding the lock leaves a consistent database
        // (transactions roll back on drop), so a poisoned lock is usable.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let before = conn.total_changes();
        let out = f(&mut conn);
        use std::sync::atomic::Ordering::Relaxed;
        match &out {
            Err(e) if e.is_disk_failure() => self.write_failed.store(true, Relaxed),
            Ok(_) if conn.total_changes() != before => self.write_failed.store(false, Relaxed),
            _ => {}
        }
        out
    }

    /// Whether the store can write, as far as its last write shows: `false`
    /// after a write failed at the disk, until one succeeds.
    pub fn writable(&self) -> bool {
        !self.write_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` in one transaction: it commits when `f` succeeds and rolls
    /// back otherwise.
    fn transaction<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        self.with(|c| {
            let tx = c.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Runs blocking store calls from async code: on tokio's blocking pool,
    /// so SQLite (and the wait for the connection's mutex) never holds up a
    /// runtime worker.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me)).await?
    }
}

/// Declares an enum for a column with a closed set of values: stored (and
/// serialised) as the given names, read back strictly — a name this
/// driftless does not know is an error naming the column, never a guess.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident in $column:literal {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored (and serialised) name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::store::StoreError;
            fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::store::StoreError::Unknown {
                        column: $column,
                        value: s.to_owned(),
                    })
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?
                    .parse()
                    .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    };
}
use text_enum;
