//! Which stored backups a job's retention removes. Pure: the runner calls
//! it only after a new backup was written and verified.
//!
//! Invariant: the newest verified backup is never selected for deletion.

use std::time::Duration;

use super::destination::Manifest;
use crate::model::Retention;

/// The manifests to delete, given every manifest of the job and `now`
/// (unix ms). A backup goes when it is older than `max_age` or not among
/// the newest `keep_last` — both limits hold — except the newest verified
/// one, which always stays.
pub fn select<'a>(retention: &Retention, manifests: &'a [Manifest], now: i64) -> Vec<&'a Manifest> {
    let mut newest_first: Vec<&Manifest> = manifests.iter().collect();
    newest_first.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
    let last_verified = newest_first
        .iter()
        .find(|m| m.verified_at.is_some())
        .map(|m| m.id.clone());
    let Some(last_verified) = last_verified else {
        // Nothing verified: deleting could leave no usable backup at all.
        return Vec::new();
    };
    let too_old = |m: &Manifest| {
        retention
            .max_age
            .is_some_and(|age: Duration| now.saturating_sub(m.started_at) > age.as_millis() as i64)
    };
    newest_first
        .into_iter()
        .enumerate()
        .filter(|(i, m)| {
            let beyond_count = retention.keep_last.is_some_and(|n| *i >= n as usize);
            m.id != last_verified && (beyond_count || too_old(m))
        })
        .map(|(_, m)| m)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::codec::Encoding;

    const DAY: i64 = 86_400_000;

    fn m(id: &str, day: i64, verified: bool) -> Manifest {
        Manifest {
            id: id.to_owned(),
            job: "db".into(),
            env: "dev".into(),
            commit: None,
            source: "exec".into(),
            format: "dump".into(),
            encoding: Encoding {
                compression: "zstd".into(),
                encrypted: false,
            },
            object: format!("{id}.dump.zst"),
            raw_bytes: 1,
            stored_bytes: 1,
            sha256: String::new(),
            started_at: day * DAY,
            finished_at: day * DAY,
            verified_at: verified.then_some(day * DAY),
        }
    }

    fn ids(v: Vec<&Manifest>) -> Vec<&str> {
        v.into_iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let all: Vec<Manifest> = (1..=5).map(|d| m(&format!("b{d}"), d, true)).collect();
        let r = Retention {
            keep_last: Some(3),
            max_age: None,
        };
        assert_eq!(ids(select(&r, &all, 6 * DAY)), ["b2", "b1"]);
    }

    #[test]
    fn max_age_removes_old_ones_but_never_the_last_verified() {
        let all = vec![m("b1", 1, true), m("b2", 2, true), m("b3", 3, false)];
        let r = Retention {
            keep_last: None,
            max_age: Some(Duration::from_secs(86_400)),
        };
        // Everything is older than a day; b2 is the newest verified: it stays.
        assert_eq!(ids(select(&r, &all, 100 * DAY)), ["b3", "b1"]);
        let r = Retention {
            keep_last: Some(1),
            max_age: None,
        };
        assert_eq!(ids(select(&r, &all, 4 * DAY)), ["b1"]);
    }

    #[test]
    fn nothing_is_deleted_without_a_verified_backup() {
        let all = vec![m("b1", 1, false), m("b2", 2, false)];
        let r = Retention {
            keep_last: Some(1),
            max_age: Some(Duration::from_secs(1)),
        };
        assert!(select(&r, &all, 100 * DAY).is_empty());
    }
}
