//! What drives an environment besides its branch: the last good commit
//! (with the image ids it ran), commits marked failed, and an operator's
//! pin or suspension. [`EnvState`] is all of it, read and replaced in one
//! transaction (the hand-over state of a Lease).

use std::collections::BTreeMap;
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Digests, ImageIds, Result, Store, millis};
use crate::source::CommitId;

/// The last commit an environment ran healthy, with the image ids it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastGood {
    pub commit: CommitId,
    pub image_ids: ImageIds,
    /// The registry digests of its followed services: with the commit,
    /// the revision that ran healthy.
    pub digests: Digests,
    pub reconcile_id: Option<i64>,
    pub recorded_at: i64,
}

/// Operator control of an environment. Survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Control {
    /// Commit the environment is pinned to (`driftless rollback --to`).
    pub pinned: Option<CommitId>,
    /// Why automatic reconciles are stopped (`driftless suspend`, or a
    /// failed rollback / first deploy).
    pub suspended: Option<String>,
}

/// A commit that failed in an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedCommit {
    pub commit: CommitId,
    pub reason: String,
    pub failed_at: i64,
}

/// Everything the store holds that decides what an environment runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvState {
    pub last_good: Option<LastGood>,
    /// Newest first.
    pub failed: Vec<FailedCommit>,
    /// Digests of followed services that failed, newest first.
    pub failed_images: Vec<FailedImage>,
    pub control: Control,
}

/// A digest of a followed service that failed in an environment: the
/// poller may keep finding it, it is not deployed again by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FailedImage {
    /// `project/service`.
    pub service: String,
    pub digest: String,
    pub reason: String,
    pub failed_at: i64,
}

impl EnvState {
    /// Whether `digest` of `service` is marked failed.
    pub fn image_failed(&self, service: &str, digest: &str) -> bool {
        self.failed_images
            .iter()
            .any(|f| f.service == service && f.digest == digest)
    }
}

pub(super) fn last_good(c: &Connection, env: &str) -> Result<Option<LastGood>> {
    Ok(c.query_row(
        "SELECT commit_id, image_ids, reconcile_id, recorded_at, digests FROM last_good WHERE env = ?1",
        params![env],
        |r| {
            let images: String = r.get(1)?;
            let digests: Option<String> = r.get(4)?;
            Ok(LastGood {
                commit: r.get(0)?,
                image_ids: serde_json::from_str(&images).unwrap_or_default(),
                digests: digests
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or_default(),
                reconcile_id: r.get(2)?,
                recorded_at: r.get(3)?,
            })
        },
    )
    .optional()?)
}

pub(super) fn set_last_good(
    c: &Connection,
    env: &str,
    commit: &CommitId,
    image_ids: &ImageIds,
    digests: &Digests,
    reconcile_id: Option<i64>,
    at: SystemTime,
) -> Result<()> {
    let images = serde_json::to_string(image_ids).expect("plain map");
    let digests = serde_json::to_string(digests).expect("plain map");
    c.execute(
        "INSERT INTO last_good (env, commit_id, image_ids, reconcile_id, recorded_at, digests) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (env) DO UPDATE SET commit_id = ?2, image_ids = ?3, reconcile_id = ?4, recorded_at = ?5, digests = ?6",
        params![env, commit, images, reconcile_id, millis(at), digests],
    )?;
    Ok(())
}

pub(super) fn mark_image_failed(
    c: &Connection,
    env: &str,
    service: &str,
    digest: &str,
    reason: &str,
    at: SystemTime,
) -> Result<()> {
    c.execute(
        "INSERT INTO failed_images (env, service, digest, reason, failed_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (env, service, digest) DO UPDATE SET reason = ?4, failed_at = ?5",
        params![env, service, digest, reason, millis(at)],
    )?;
    Ok(())
}

pub(super) fn failed_images(c: &Connection, env: &str) -> Result<Vec<FailedImage>> {
    let mut stmt = c.prepare_cached(
        "SELECT service, digest, reason, failed_at FROM failed_images WHERE env = ?1 ORDER BY failed_at DESC",
    )?;
    let rows = stmt.query_map(params![env], |r| {
        Ok(FailedImage {
            service: r.get(0)?,
            digest: r.get(1)?,
            reason: r.get(2)?,
            failed_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(super) fn mark_failed(
    c: &Connection,
    env: &str,
    commit: &CommitId,
    reason: &str,
    at: SystemTime,
) -> Result<()> {
    c.execute(
        "INSERT INTO failed_commits (env, commit_id, reason, failed_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (env, commit_id) DO UPDATE SET reason = ?3, failed_at = ?4",
        params![env, commit, reason, millis(at)],
    )?;
    Ok(())
}

/// A `failed_commits` row, selected as `commit_id, reason, failed_at`.
fn failed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FailedCommit> {
    Ok(FailedCommit {
        commit: r.get(0)?,
        reason: r.get(1)?,
        failed_at: r.get(2)?,
    })
}

pub(super) fn failed_commits(c: &Connection, env: &str) -> Result<Vec<FailedCommit>> {
    let mut stmt = c.prepare_cached(
        "SELECT commit_id, reason, failed_at FROM failed_commits WHERE env = ?1 ORDER BY failed_at DESC",
    )?;
    let rows = stmt.query_map(params![env], failed_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(super) fn control(c: &Connection, env: &str) -> Result<Control> {
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
}

fn set_control(c: &Connection, env: &str, control: &Control, at: SystemTime) -> Result<()> {
    c.execute(
        "INSERT INTO env_control (env, pinned, suspended, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (env) DO UPDATE SET pinned = ?2, suspended = ?3, updated_at = ?4",
        params![env, control.pinned, control.suspended, millis(at)],
    )?;
    Ok(())
}

/// Suspends `env`, keeping a pin: one statement, no read first.
pub(super) fn suspend(c: &Connection, env: &str, reason: &str, at: SystemTime) -> Result<()> {
    c.execute(
        "INSERT INTO env_control (env, pinned, suspended, updated_at) VALUES (?1, NULL, ?2, ?3)
         ON CONFLICT (env) DO UPDATE SET suspended = ?2, updated_at = ?3",
        params![env, reason, millis(at)],
    )?;
    Ok(())
}

impl Store {
    /// The environment's last good commit.
    pub fn last_good(&self, env: &str) -> Result<Option<LastGood>> {
        self.with(|c| last_good(c, env))
    }

    /// Records `commit` (with the image ids it ran) as the environment's last good.
    pub fn set_last_good(
        &self,
        env: &str,
        commit: &CommitId,
        image_ids: &ImageIds,
        reconcile_id: Option<i64>,
        at: SystemTime,
    ) -> Result<()> {
        let digests = Digests::new();
        self.with(|c| set_last_good(c, env, commit, image_ids, &digests, reconcile_id, at))
    }

    /// Marks `commit` failed in `env`: automatic reconciles skip it.
    pub fn mark_failed(
        &self,
        env: &str,
        commit: &CommitId,
        reason: &str,
        at: SystemTime,
    ) -> Result<()> {
        self.with(|c| mark_failed(c, env, commit, reason, at))
    }

    /// The failure recorded for `commit` in `env`, if any.
    pub fn failed(&self, env: &str, commit: &CommitId) -> Result<Option<FailedCommit>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT commit_id, reason, failed_at FROM failed_commits WHERE env = ?1 AND commit_id = ?2",
                params![env, commit],
                failed_row,
            )
            .optional()?)
        })
    }

    /// Every failed commit of `env`, newest first.
    pub fn failed_commits(&self, env: &str) -> Result<Vec<FailedCommit>> {
        self.with(|c| failed_commits(c, env))
    }

    /// Forgets the failed marks of `env`, commits and image digests (an
    /// operator forces a retry: `resume --retry-failed`).
    pub fn clear_failed(&self, env: &str) -> Result<usize> {
        self.transaction(|tx| {
            let commits = tx.execute("DELETE FROM failed_commits WHERE env = ?1", params![env])?;
            let images = tx.execute("DELETE FROM failed_images WHERE env = ?1", params![env])?;
            Ok(commits + images)
        })
    }

    /// The operator control of `env` (default: neither pinned nor suspended).
    pub fn control(&self, env: &str) -> Result<Control> {
        self.with(|c| control(c, env))
    }

    /// Sets the control of `env` as a whole.
    pub fn set_control(&self, env: &str, control: &Control, at: SystemTime) -> Result<()> {
        self.with(|c| set_control(c, env, control, at))
    }

    /// Pins `env` to `commit` and lifts a suspension: the daemon applies that
    /// commit and nothing else until [`Store::resume`].
    pub fn pin(&self, env: &str, commit: &CommitId, at: SystemTime) -> Result<()> {
        let control = Control {
            pinned: Some(commit.clone()),
            suspended: None,
        };
        self.set_control(env, &control, at)
    }

    /// Stops automatic reconciles of `env`, keeping a pin.
    pub fn suspend(&self, env: &str, reason: &str, at: SystemTime) -> Result<()> {
        self.with(|c| suspend(c, env, reason, at))
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
            Ok(rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()?)
        })
    }

    /// The last good commit, failed commits and control of `env`, read in
    /// one transaction.
    pub fn env_state(&self, env: &str) -> Result<EnvState> {
        self.transaction(|tx| {
            Ok(EnvState {
                last_good: last_good(tx, env)?,
                failed: failed_commits(tx, env)?,
                failed_images: failed_images(tx, env)?,
                control: control(tx, env)?,
            })
        })
    }

    /// Makes the store hold exactly `state` for `env`, in one transaction
    /// (history rows stay). An absent last good leaves the stored one.
    pub fn replace_env_state(&self, env: &str, state: &EnvState, at: SystemTime) -> Result<()> {
        self.transaction(|tx| {
            if let Some(lg) = &state.last_good {
                set_last_good(
                    tx,
                    env,
                    &lg.commit,
                    &lg.image_ids,
                    &lg.digests,
                    lg.reconcile_id,
                    at,
                )?;
            }
            tx.execute("DELETE FROM failed_images WHERE env = ?1", params![env])?;
            for f in &state.failed_images {
                tx.execute(
                    "INSERT INTO failed_images (env, service, digest, reason, failed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![env, f.service, f.digest, f.reason, f.failed_at],
                )?;
            }
            tx.execute("DELETE FROM failed_commits WHERE env = ?1", params![env])?;
            for f in &state.failed {
                tx.execute(
                    "INSERT INTO failed_commits (env, commit_id, reason, failed_at) VALUES (?1, ?2, ?3, ?4)",
                    params![env, f.commit, f.reason, f.failed_at],
                )?;
            }
            set_control(tx, env, &state.control, at)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn last_good_failed_commits_and_control() {
        let s = Store::open_in_memory().unwrap();
        assert!(s.last_good("dev").unwrap().is_none());
        let ids: ImageIds = [("p/a".to_owned(), "sha256:a".to_owned())].into();
        s.set_last_good("dev", &"c1".into(), &ids, Some(1), t(5))
            .unwrap();
        s.set_last_good("dev", &"c2".into(), &ids, Some(2), t(6))
            .unwrap();
        let lg = s.last_good("dev").unwrap().unwrap();
        assert_eq!((lg.commit.as_str(), lg.reconcile_id), ("c2", Some(2)));
        assert_eq!(lg.image_ids, ids);

        assert!(s.failed("dev", &"c3".into()).unwrap().is_none());
        s.mark_failed("dev", &"c3".into(), "unhealthy", t(7))
            .unwrap();
        s.mark_failed("dev", &"c3".into(), "unhealthy again", t(8))
            .unwrap();
        assert_eq!(
            s.failed("dev", &"c3".into()).unwrap().unwrap().reason,
            "unhealthy again"
        );
        assert!(s.failed("prod", &"c3".into()).unwrap().is_none());
        assert_eq!(s.failed_commits("dev").unwrap().len(), 1);
        assert_eq!(s.clear_failed("dev").unwrap(), 1);

        assert_eq!(s.control("dev").unwrap(), Control::default());
        s.suspend("dev", "operator", t(9)).unwrap();
        s.pin("dev", &"c1".into(), t(10)).unwrap();
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
    fn env_state_is_replaced_as_a_whole() {
        let s = Store::open_in_memory().unwrap();
        s.mark_failed("dev", &"old".into(), "bad", t(1)).unwrap();
        s.suspend("dev", "x", t(1)).unwrap();
        let state = EnvState {
            last_good: Some(LastGood {
                commit: "c1".into(),
                image_ids: ImageIds::new(),
                digests: Digests::new(),
                reconcile_id: None,
                recorded_at: 0,
            }),
            failed: vec![FailedCommit {
                commit: "c2".into(),
                reason: "unhealthy".into(),
                failed_at: 5_000,
            }],
            failed_images: vec![FailedImage {
                service: "p/web".into(),
                digest: "sha256:bad".into(),
                reason: "unhealthy".into(),
                failed_at: 5_000,
            }],
            control: Control {
                pinned: Some("c1".into()),
                suspended: None,
            },
        };
        s.replace_env_state("dev", &state, t(9)).unwrap();
        let read = s.env_state("dev").unwrap();
        assert_eq!(read.last_good.as_ref().unwrap().commit, "c1");
        assert_eq!(read.failed, state.failed);
        assert_eq!(read.failed_images, state.failed_images);
        assert!(read.image_failed("p/web", "sha256:bad"));
        assert_eq!(s.clear_failed("dev").unwrap(), 2);
        assert_eq!(read.control, state.control);
    }
}
