//! What history the store keeps: reconciles by age and by rows per
//! environment, delivery ids by age. Backup runs stay (they are few and
//! retention of the backups themselves is the backup module's).

use std::time::{Duration, SystemTime};

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Outcome, Result, Store, millis};

/// What retention keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl Store {
    /// Deletes history and delivery ids that retention no longer keeps.
    pub fn prune(&self, retention: &Retention, now: SystemTime) -> Result<Pruned> {
        let history_cutoff = millis(now) - retention.history_age.as_millis() as i64;
        let deliveries_cutoff = millis(now) - retention.deliveries_age.as_millis() as i64;
        self.transaction(|tx| {
            let mut reconciles = tx.execute(
                "DELETE FROM reconciles WHERE started_at < ?1 AND outcome != ?2",
                params![history_cutoff, Outcome::Running],
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
            Ok(Pruned {
                reconciles,
                deliveries,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::super::{Kind, Trigger};
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retention_by_age_and_by_rows_per_environment() {
        let s = Store::open_in_memory().unwrap();
        let day = 86_400;
        for i in 0..5 {
            s.begin(
                "dev",
                &"c0".into(),
                Trigger::Poll,
                Kind::Deploy,
                None,
                t(i * day),
            )
            .unwrap();
        }
        for i in 0..3 {
            s.begin(
                "prod",
                &"c0".into(),
                Trigger::Poll,
                Kind::Deploy,
                None,
                t(100 * day + i),
            )
            .unwrap();
        }
        s.with(|c| Ok(c.execute("UPDATE reconciles SET outcome = 'healthy'", [])?))
            .unwrap();
        s.record_delivery("old", "push", t(0)).unwrap();
        s.record_delivery("new", "push", t(100 * day)).unwrap();
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
            s.record_delivery("new", "push", t(0))
                .is_ok_and(|fresh| !fresh)
        );
    }
}
