//! The `followed_images` table: per environment and followed service, the
//! reference and policy followed, the newest digest its registry named,
//! when it was found and last checked, and the last check's error. The
//! daemon's image poller writes it; a pass reads the newest digests to
//! decide the revision it runs; the status API shows it.

use std::time::SystemTime;

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Digests, Result, Store, millis};

/// What the poller knows of one followed service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowedImage {
    /// `project/service`.
    pub service: String,
    /// The reference followed (`registry/app:stable`).
    pub reference: String,
    pub policy: String,
    /// The newest digest the registry named (`sha256:…`).
    pub newest: Option<String>,
    /// When `newest` was first seen (Unix milliseconds).
    pub found_at: Option<i64>,
    /// When the registry was last asked (Unix milliseconds).
    pub checked_at: Option<i64>,
    /// The last check's error (masked), cleared by a check that succeeds.
    pub error: Option<String>,
}

/// One followed service as the status API shows it: what the poller
/// found, what runs, what the last good revision ran, what failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageStatus {
    #[serde(flatten)]
    pub followed: FollowedImage,
    /// The digest the newest applied reconcile deployed (healthy or not).
    pub running: Option<String>,
    /// The digest of the last good revision.
    pub last_good: Option<String>,
    /// Digests marked failed, newest first.
    pub failed: Vec<String>,
}

fn followed(c: &Connection, env: &str) -> Result<Vec<FollowedImage>> {
    let mut stmt = c.prepare_cached(
        "SELECT service, reference, policy, newest, found_at, checked_at, error FROM followed_images WHERE env = ?1 ORDER BY service",
    )?;
    let rows = stmt.query_map(params![env], |r| {
        Ok(FollowedImage {
            service: r.get(0)?,
            reference: r.get(1)?,
            policy: r.get(2)?,
            newest: r.get(3)?,
            found_at: r.get(4)?,
            checked_at: r.get(5)?,
            error: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

impl Store {
    /// Records one registry check of `service`: its digest, or the error
    /// (which keeps the newest digest found before). Returns whether the
    /// newest digest changed. A service whose reference changed starts
    /// over: a digest of another reference is not news about this one.
    pub fn record_image_check(
        &self,
        env: &str,
        service: &str,
        reference: &str,
        policy: &str,
        found: std::result::Result<&str, &str>,
        at: SystemTime,
    ) -> Result<bool> {
        self.transaction(|tx| {
            let before: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT reference, newest FROM followed_images WHERE env = ?1 AND service = ?2",
                    params![env, service],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?;
            let old = before.and_then(|(r, n)| (r == reference).then_some(n).flatten());
            let now = millis(at);
            let (newest, error, changed) = match found {
                Ok(d) => (Some(d.to_owned()), None, old.as_deref() != Some(d)),
                Err(e) => (old.clone(), Some(e.to_owned()), false),
            };
            tx.execute(
                "INSERT INTO followed_images (env, service, reference, policy, newest, found_at, checked_at, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)
                 ON CONFLICT (env, service) DO UPDATE SET reference = ?3, policy = ?4, newest = ?5,
                   found_at = CASE WHEN ?8 THEN ?6 ELSE found_at END, checked_at = ?6, error = ?7",
                params![env, service, reference, policy, newest, now, error, changed],
            )?;
            Ok(changed)
        })
    }

    /// Every followed service of `env` the poller checked.
    pub fn followed_images(&self, env: &str) -> Result<Vec<FollowedImage>> {
        self.with(|c| followed(c, env))
    }

    /// The newest digest found per followed service of `env`.
    pub fn newest_digests(&self, env: &str) -> Result<Digests> {
        Ok(self
            .followed_images(env)?
            .into_iter()
            .filter_map(|f| Some((f.service, f.newest?)))
            .collect())
    }

    /// Every followed service of `env` with what runs and what failed, in
    /// one read transaction.
    pub fn images_status(&self, env: &str) -> Result<Vec<ImageStatus>> {
        self.transaction(|tx| {
            let running: Digests = tx
                .query_row(
                    "SELECT digests FROM reconciles WHERE env = ?1 AND digests IS NOT NULL
                     AND outcome IN ('healthy', 'unchanged', 'unhealthy') ORDER BY id DESC LIMIT 1",
                    params![env],
                    |r| r.get::<_, String>(0),
                )
                .ok()
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or_default();
            let good = super::control::last_good(tx, env)?
                .map(|lg| lg.digests)
                .unwrap_or_default();
            let failed = super::control::failed_images(tx, env)?;
            Ok(followed(tx, env)?
                .into_iter()
                .map(|f| ImageStatus {
                    running: running.get(&f.service).cloned(),
                    last_good: good.get(&f.service).cloned(),
                    failed: failed
                        .iter()
                        .filter(|x| x.service == f.service)
                        .map(|x| x.digest.clone())
                        .collect(),
                    followed: f,
                })
                .collect())
        })
    }

    /// Forgets services of `env` no longer followed.
    pub fn retain_followed(&self, env: &str, services: &[String]) -> Result<usize> {
        self.with(|c| {
            let mut gone = 0;
            for f in followed(c, env)? {
                if !services.contains(&f.service) {
                    gone += c.execute(
                        "DELETE FROM followed_images WHERE env = ?1 AND service = ?2",
                        params![env, f.service],
                    )?;
                }
            }
            Ok(gone)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_check_reports_a_new_digest_once_and_an_error_keeps_the_last_one() {
        let s = Store::open_in_memory().unwrap();
        let check = |found, at| {
            s.record_image_check("dev", "p/web", "r/app:stable", "digest", found, t(at))
                .unwrap()
        };
        assert!(check(Ok("sha256:1"), 1));
        assert!(!check(Ok("sha256:1"), 2));
        assert!(!check(Err("registry down"), 3));
        let f = &s.followed_images("dev").unwrap()[0];
        assert_eq!(f.newest.as_deref(), Some("sha256:1"));
        assert_eq!(f.error.as_deref(), Some("registry down"));
        assert_eq!((f.found_at, f.checked_at), (Some(1000), Some(3000)));
        assert!(check(Ok("sha256:2"), 4));
        let f = &s.followed_images("dev").unwrap()[0];
        assert_eq!((f.error.as_deref(), f.found_at), (None, Some(4000)));
        assert_eq!(s.newest_digests("dev").unwrap()["p/web"], "sha256:2");
        // Another reference starts over.
        assert!(
            s.record_image_check("dev", "p/web", "r/app:v2", "digest", Ok("sha256:2"), t(5))
                .unwrap()
        );
        assert_eq!(s.retain_followed("dev", &[]).unwrap(), 1);
        assert!(s.newest_digests("dev").unwrap().is_empty());
    }
}
