//! The schema: migrations applied in order, `user_version` counting those
//! applied. A database written by a newer driftless (a higher version) is
//! refused rather than guessed at.

use rusqlite::Connection;

use super::{Result, Store, StoreError};

/// Schema migrations, applied in order; `user_version` is the count applied.
/// Released migrations never change: a new one goes at the end.
pub const MIGRATIONS: &[&str] = &[
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
    // 2: the plan's change count as a column (summaries read it instead of
    // parsing every stored plan), filled in for the rows already there.
    r#"
    ALTER TABLE reconciles ADD COLUMN changes INTEGER;
    UPDATE reconciles SET changes = (
        SELECT count(*) FROM json_each(plan_json, '$.changes')
        WHERE json_extract(value, '$.action.type') IS NOT 'unchanged'
    ) WHERE plan_json IS NOT NULL AND json_valid(plan_json);
    "#,
    // 3: a delivery's `outcome` was always `received`: a delivery id is
    // only the webhook's replay guard.
    r#"
    ALTER TABLE deliveries DROP COLUMN outcome;
    "#,
    // 4: the store's random id, which the state directory's marker file
    // repeats (see `identity`): a lost store is told from a new one.
    r#"
    CREATE TABLE store_id (id TEXT NOT NULL);
    "#,
    // 5: revisions — a commit plus the digest of each followed image: the
    // digests a reconcile deployed and the last good one ran, digests that
    // failed (never tried again by themselves), and what the image poller
    // last found in each followed service's registry.
    r#"
    ALTER TABLE reconciles ADD COLUMN digests TEXT;
    ALTER TABLE last_good ADD COLUMN digests TEXT;
    CREATE TABLE failed_images (
        env          TEXT NOT NULL,
        service      TEXT NOT NULL,
        digest       TEXT NOT NULL,
        reason       TEXT NOT NULL,
        failed_at    INTEGER NOT NULL,
        PRIMARY KEY (env, service, digest)
    );
    CREATE TABLE followed_images (
        env          TEXT NOT NULL,
        service      TEXT NOT NULL,
        reference    TEXT NOT NULL,
        policy       TEXT NOT NULL,
        newest       TEXT,
        found_at     INTEGER,
        checked_at   INTEGER,
        error        TEXT,
        PRIMARY KEY (env, service)
    );
    "#,
];

/// Applies the migrations `c` has not had yet, each in its own transaction.
pub(super) fn migrate(c: &mut Connection) -> Result<()> {
    // One write transaction, the version read inside it: a second process
    // opening the same store at the same moment (the CLI beside a starting
    // daemon) waits for the lock and then finds the migrations applied,
    // instead of running them again ("table reconciles already exists").
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for sql in MIGRATIONS.iter().skip(version as usize) {
        tx.execute_batch(sql)?;
    }
    if version < known {
        tx.pragma_update(None, "user_version", known)?;
    }
    tx.commit()?;
    Ok(())
}

impl Store {
    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64> {
        self.with(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
    }

    /// Checks the database file (`PRAGMA integrity_check`); `Ok(())` when sound.
    pub fn integrity_check(&self) -> Result<std::result::Result<(), String>> {
        self.with(|c| {
            let result: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            Ok(if result == "ok" { Ok(()) } else { Err(result) })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    #[test]
    fn stores_opened_at_the_same_moment_migrate_once() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let opened: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| Store::open(dir.path()).map(|st| st.schema_version())))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for o in opened {
                assert_eq!(o.unwrap().unwrap(), MIGRATIONS.len() as i64);
            }
        }
    }

    /// A state directory written by the release before the store became a
    /// folder (schema 1, WAL mode): reconciles of both kinds and most
    /// outcomes, a running row, last good, a failed commit, a pin with a
    /// suspension, a delivery and two backup runs. Made with that release's
    /// `Store` API; see `tests/fixtures/README.md`.
    const V1: &[u8] = include_bytes!("../../tests/fixtures/state-v1.db");

    fn v1_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(super::super::FILE), V1).unwrap();
        dir
    }

    #[test]
    fn a_state_directory_of_the_previous_release_opens_and_reads_the_same() {
        let dir = v1_dir();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(s.integrity_check().unwrap(), Ok(()));

        let h = s.history(None, 10).unwrap();
        let rows: Vec<(i64, &str, Trigger, Kind, Outcome)> = h
            .iter()
            .map(|r| (r.id, r.env.as_str(), r.trigger, r.kind, r.outcome))
            .collect();
        assert_eq!(
            rows,
            [
                (6, "prod", Trigger::Drift, Kind::Deploy, Outcome::Running),
                (5, "prod", Trigger::Manual, Kind::Deploy, Outcome::Unchanged),
                (4, "prod", Trigger::Poll, Kind::Deploy, Outcome::Invalid),
                (3, "dev", Trigger::Webhook, Kind::Rollback, Outcome::Healthy),
                (2, "dev", Trigger::Webhook, Kind::Deploy, Outcome::Unhealthy),
                (1, "dev", Trigger::Startup, Kind::Deploy, Outcome::Healthy),
            ]
        );
        // The change count was filled in from each stored plan: two of the
        // three resources change; none for an unchanged plan or no plan.
        let changes: Vec<Option<u32>> = h.iter().map(|r| r.changes).collect();
        assert_eq!(changes, [None, Some(0), None, Some(2), Some(2), Some(2)]);
        let c1 = "1111111111111111111111111111111111111111";
        let c2 = "2222222222222222222222222222222222222222";
        assert_eq!(h[3].rollback_of.as_deref(), Some(c2));
        assert_eq!(h[5].timings.apply_ms, Some(900));
        assert_eq!(h[5].image_ids["p/web"], "sha256:aaa");

        let lg = s.last_good("dev").unwrap().unwrap();
        assert_eq!(lg.commit, c1);
        assert_eq!(
            s.failed("dev", &c2.into()).unwrap().unwrap().reason,
            "unhealthy: service p/web: exited"
        );
        let control = s.control("prod").unwrap();
        assert_eq!(control.pinned.as_deref(), Some(c1));
        assert_eq!(
            control.suspended.as_deref(),
            Some("suspended by an operator")
        );
        assert!(
            !s.record_delivery("delivery-1", "push", std::time::SystemTime::now())
                .unwrap()
        );

        let runs = s.backup_runs("dev", Some("db"), 10).unwrap();
        let runs: Vec<(BackupTrigger, BackupOutcome)> =
            runs.iter().map(|(_, r)| (r.trigger, r.outcome)).collect();
        assert_eq!(
            runs,
            [
                (BackupTrigger::Schedule, BackupOutcome::Failed),
                (BackupTrigger::BeforeApply, BackupOutcome::Succeeded)
            ]
        );
        assert_eq!(s.before_apply_runs(&[2]).unwrap().len(), 1);

        // The summary reads the new column: the newest deploy with a plan
        // in dev ended unhealthy with two changes, but the healthy rollback
        // since put dev back in sync with its last good commit.
        let dev = s.env_summary("dev").unwrap();
        assert_eq!(dev.current_commit.as_deref(), Some(c1));
        assert_eq!((dev.health, dev.out_of_sync), (EnvHealth::Healthy, 0));
        let prod = s.env_summary("prod").unwrap();
        assert_eq!((prod.health, prod.out_of_sync), (EnvHealth::Healthy, 0));
    }

    #[test]
    fn a_migrated_directory_opens_again_without_migrating() {
        let dir = v1_dir();
        drop(Store::open(dir.path()).unwrap());
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(s.history(None, 10).unwrap().len(), 6);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join(super::super::FILE)).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let e = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(e, StoreError::TooNew { found: 99, known } if known == MIGRATIONS.len() as i64),
            "{e}"
        );
    }
}
