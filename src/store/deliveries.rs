//! Webhook delivery ids (`X-GitHub-Delivery`): the replay guard. A delivery
//! seen before is refused; retention forgets them after a week.

use std::time::SystemTime;

use rusqlite::params;

use super::{Result, Store, millis};

impl Store {
    /// Records a delivery id; `false` when it was seen before (a replay).
    pub fn record_delivery(&self, delivery_id: &str, event: &str, at: SystemTime) -> Result<bool> {
        self.with(|c| {
            let n = c.execute(
                "INSERT INTO deliveries (delivery_id, event, received_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![delivery_id, event, millis(at)],
            )?;
            Ok(n == 1)
        })
    }

    /// Number of delivery ids remembered.
    pub fn delivery_count(&self) -> Result<i64> {
        self.with(|c| Ok(c.query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))?))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn deliveries_are_a_replay_guard() {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        let s = Store::open_in_memory().unwrap();
        assert!(s.record_delivery("d1", "push", t(1)).unwrap());
        assert!(!s.record_delivery("d1", "push", t(2)).unwrap());
        assert!(s.record_delivery("d2", "ping", t(2)).unwrap());
        assert_eq!(s.delivery_count().unwrap(), 2);
    }

    #[test]
    fn a_write_failing_at_the_disk_marks_the_store_unwritable_until_one_succeeds() {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.writable());
        // query_only makes SQLite refuse writes as it does on a read-only disk.
        s.with(|c| Ok(c.execute_batch("PRAGMA query_only = 1")?))
            .unwrap();
        let err = s.record_delivery("d1", "push", t(1)).unwrap_err();
        assert!(err.is_disk_failure(), "{err}");
        assert!(!s.writable());
        // Reads that work do not make it writable again; a write that works does.
        assert_eq!(s.delivery_count().unwrap(), 0);
        assert!(!s.writable());
        s.with(|c| Ok(c.execute_batch("PRAGMA query_only = 0")?))
            .unwrap();
        assert!(s.record_delivery("d1", "push", t(2)).unwrap());
        assert!(s.writable());
    }
}
