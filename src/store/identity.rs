//! Which store a state directory holds, so a lost one is never mistaken
//! for a new one.
//!
//! Every store carries a random id (table `store_id`), and the state
//! directory holds the same id in a second file, [`MARKER`], written when
//! the store is first opened. A directory whose marker names a store that
//! is not there — `state.db` deleted, truncated to nothing, replaced by
//! another store, or damaged past reading — has lost its suspensions,
//! pins, failed-commit marks, last good commits and history: opening it is
//! refused ([`StoreError::Lost`]) unless the caller accepts the loss
//! ([`OnLost::Accept`]), and then the loss is reported ([`Lost`]) so the
//! daemon can say so.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use super::{Result, StoreError};

/// The marker file in the state directory: the id of the store it holds.
pub const MARKER: &str = "state.id";

/// What to do when a used state directory's store is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLost {
    /// Refuse to open ([`StoreError::Lost`]).
    Refuse,
    /// Start from an empty store (a damaged file is moved aside first).
    Accept,
}

/// How the store of a used state directory was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostKind {
    /// `state.db` is not there.
    Missing,
    /// `state.db` is there but holds no schema (truncated to nothing).
    Empty,
    /// `state.db` is another store than the one the directory held.
    Replaced,
    /// SQLite cannot read `state.db` (truncated or overwritten part-way).
    Damaged,
}

impl std::fmt::Display for LostKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LostKind::Missing => "the file is missing",
            LostKind::Empty => "the file is empty",
            LostKind::Replaced => "the file is another store than the one this directory held",
            LostKind::Damaged => "the file is damaged",
        })
    }
}

/// A loss that was accepted: what was lost, and where a damaged file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub kind: LostKind,
    /// The damaged file, moved aside (only for [`LostKind::Damaged`]).
    pub moved_to: Option<PathBuf>,
}

/// The id the state directory's marker holds (`None`: no marker, a
/// directory never used or used by a release before markers).
pub(super) fn read_marker(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(MARKER);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(open_error(&path, &e)),
    }
}

/// Writes the marker atomically (temporary file, fsync, rename, directory
/// fsync): a crash leaves the old marker or the new one, never half.
pub(super) fn write_marker(dir: &Path, id: &str) -> Result<()> {
    let path = dir.join(MARKER);
    // Unique per process and per call: two threads of one process (or two
    // opens in a row) never share a temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{MARKER}.tmp-{}-{n}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        open_error(&path, &e)
    })
}

/// The store's id, created when it has none yet. Two processes opening a
/// new store at once agree on one id.
pub(super) fn store_id(c: &Connection) -> Result<String> {
    c.execute(
        "INSERT INTO store_id (id) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM store_id)",
        [new_id()],
    )?;
    Ok(c.query_row("SELECT id FROM store_id LIMIT 1", [], |r| r.get(0))?)
}

/// The store's id when it has one (before any is created).
pub(super) fn existing_id(c: &Connection) -> Result<Option<String>> {
    Ok(
        c.query_row("SELECT id FROM store_id LIMIT 1", [], |r| r.get(0))
            .optional()?,
    )
}

/// Whether `e` says the file is not a readable database.
pub(super) fn is_damage(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Sql(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Moves a damaged `state.db` (and its WAL and shared-memory files) aside
/// as `state.db.lost-<unix ms>`; returns the new name of the database.
pub(super) fn move_aside(path: &Path) -> Result<PathBuf> {
    let stamp = super::millis(std::time::SystemTime::now());
    let to = |p: &Path| PathBuf::from(format!("{}.lost-{stamp}", p.display()));
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::rename(&side, to(&side)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(open_error(&side, &e)),
        }
    }
    let dest = to(path);
    std::fs::rename(path, &dest).map_err(|e| open_error(path, &e))?;
    Ok(dest)
}

fn open_error(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// 128 random bits as hex, from the operating system's generator (through
/// std's hasher seeds, which draw on it) mixed with the time and the pid.
fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(now);
        h.write_u32(std::process::id());
        h.write_u64(salt);
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

#[cfg(test)]
mod tests {
    use super::super::{FILE, Store};
    use super::*;

    /// A used state directory: a store with a suspension in it, closed.
    fn used() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.suspend("dev", "maintenance", std::time::SystemTime::now())
            .unwrap();
        drop(s);
        dir
    }

    fn lost_kind(e: StoreError) -> LostKind {
        match e {
            StoreError::Lost { kind, .. } => kind,
            other => panic!("not a lost store: {other}"),
        }
    }

    #[test]
    fn a_new_directory_gets_a_marker_naming_its_store_and_reopens() {
        let dir = used();
        let marker = read_marker(dir.path()).unwrap().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.with(|c| existing_id(c)).unwrap(), Some(marker));
        assert_eq!(
            s.control("dev").unwrap().suspended.as_deref(),
            Some("maintenance")
        );
    }

    #[test]
    fn a_deleted_store_is_refused_and_nothing_is_created() {
        let dir = used();
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("--accept-lost-state"), "{e}");
        assert_eq!(lost_kind(e), LostKind::Missing);
        assert!(!dir.path().join(FILE).exists());
        let (s, lost) = Store::open_with(dir.path(), OnLost::Accept).unwrap();
        assert_eq!(lost.map(|l| l.kind), Some(LostKind::Missing));
        assert_eq!(s.control("dev").unwrap().suspended, None);
        drop(s);
        // Accepted once: the new store is the directory's store now.
        let (_, lost) = Store::open_with(dir.path(), OnLost::Refuse).unwrap();
        assert_eq!(lost, None);
    }

    #[test]
    fn a_store_truncated_to_nothing_is_refused_and_left_as_it_is() {
        let dir = used();
        std::fs::File::create(dir.path().join(FILE)).unwrap();
        assert_eq!(
            lost_kind(Store::open(dir.path()).unwrap_err()),
            LostKind::Empty
        );
        assert_eq!(std::fs::metadata(dir.path().join(FILE)).unwrap().len(), 0);
        let (_, lost) = Store::open_with(dir.path(), OnLost::Accept).unwrap();
        assert_eq!(lost.map(|l| l.kind), Some(LostKind::Empty));
    }

    #[test]
    fn a_store_truncated_part_way_is_refused_and_moved_aside_when_accepted() {
        let dir = used();
        let path = dir.path().join(FILE);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(100).unwrap();
        drop(f);
        assert_eq!(
            lost_kind(Store::open(dir.path()).unwrap_err()),
            LostKind::Damaged
        );
        let (s, lost) = Store::open_with(dir.path(), OnLost::Accept).unwrap();
        let lost = lost.unwrap();
        assert_eq!(lost.kind, LostKind::Damaged);
        let moved = lost.moved_to.unwrap();
        assert_eq!(std::fs::metadata(&moved).unwrap().len(), 100, "{moved:?}");
        assert_eq!(s.control("dev").unwrap().suspended, None);
    }

    #[test]
    fn another_store_in_its_place_is_refused() {
        let dir = used();
        let other = tempfile::tempdir().unwrap();
        drop(Store::open(other.path()).unwrap());
        std::fs::copy(other.path().join(FILE), dir.path().join(FILE)).unwrap();
        assert_eq!(
            lost_kind(Store::open(dir.path()).unwrap_err()),
            LostKind::Replaced
        );
    }

    #[test]
    fn a_lost_marker_is_written_again_from_the_intact_store() {
        let dir = used();
        let id = read_marker(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(MARKER)).unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(read_marker(dir.path()).unwrap(), id);
        assert_eq!(
            s.control("dev").unwrap().suspended.as_deref(),
            Some("maintenance")
        );
    }

    #[test]
    fn a_store_of_the_release_before_markers_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            include_bytes!("../../tests/fixtures/state-v1.db"),
        )
        .unwrap();
        let (s, lost) = Store::open_with(dir.path(), OnLost::Refuse).unwrap();
        assert_eq!(lost, None);
        assert_eq!(
            read_marker(dir.path()).unwrap(),
            s.with(|c| existing_id(c)).unwrap()
        );
    }

    #[test]
    fn ids_differ() {
        assert_ne!(new_id(), new_id());
        assert_eq!(new_id().len(), 32);
    }
}
