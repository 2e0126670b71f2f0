//! Source: the desired-state repo's files at one revision.
//!
//! A [`Snapshot`] is plain data: every file of a commit (read straight from the
//! Git object database by [`git`]) or of a local work tree (read by
//! [`worktree`]), with paths normalised and symlinks already resolved inside
//! the snapshot. Nothing downstream touches the file system of the host.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

mod commit;
pub mod git;
mod identity;
mod origin;
mod tree;
pub mod verify;
pub mod worktree;

pub use commit::{CommitId, short};
pub use git::{Auth, Repo};
pub use identity::identity;
pub use origin::Source;

/// Which revision a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revision {
    /// A commit of the repo (full hex id).
    Commit { id: String },
    /// A local work tree as it is, uncommitted edits included.
    /// `head` is the commit checked out, when there is one; `dirty` tells
    /// whether the tree differs from it.
    WorkTree { head: Option<String>, dirty: bool },
}

impl Revision {
    /// The commit id when this revision is exactly a commit (a clean work
    /// tree counts as its HEAD commit).
    pub fn commit(&self) -> Option<&str> {
        match self {
            Revision::Commit { id } => Some(id),
            Revision::WorkTree {
                head: Some(id),
                dirty: false,
            } => Some(id),
            Revision::WorkTree { .. } => None,
        }
    }

    /// Short human form: `0123456789ab`, `0123456789ab+dirty` or
    /// `worktree` (commit ids shortened by [`short`]).
    pub fn short(&self) -> String {
        match self {
            Revision::Commit { id } => short(id).to_owned(),
            Revision::WorkTree {
                head: Some(id),
                dirty,
            } => {
                let short = short(id);
                if *dirty {
                    format!("{short}+dirty")
                } else {
                    short.to_owned()
                }
            }
            Revision::WorkTree { head: None, .. } => "worktree".to_owned(),
        }
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// Limits that protect the daemon from hostile or broken repos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file, in bytes (default 5 MiB).
    pub max_file_bytes: u64,
    /// Most files in one snapshot (default 20,000).
    pub max_files: usize,
    /// Longest repo path, in bytes (default 4,096, Linux's `PATH_MAX`).
    pub max_path_bytes: usize,
    /// Deepest directory nesting (default 64).
    pub max_depth: usize,
    /// Most bytes of all paths of a snapshot together, symlinked copies
    /// included (default 16 MiB). Git stores a directory's name once, however
    /// deep it is and however often it is referenced; a snapshot stores every
    /// full path, so without this bound a small commit costs gigabytes.
    pub max_path_bytes_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 5 * 1024 * 1024,
            max_files: 20_000,
            max_path_bytes: 4096,
            max_depth: 64,
            max_path_bytes_total: 16 * 1024 * 1024,
        }
    }
}

/// `path` cut to its first 120 bytes for a message, with its full length:
/// an over-long path is itself too long to print.
pub(crate) fn abbreviate(path: &str) -> String {
    const SHOWN: usize = 120;
    if path.len() <= SHOWN {
        return path.to_owned();
    }
    let mut end = SHOWN;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &path[..end], path.len())
}

/// Errors reading a repo into a snapshot. Each names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "{path}: file is {size} bytes, over the {limit}-byte limit; keep large files out of the desired-state repo"
    )]
    FileTooLarge { path: String, size: u64, limit: u64 },
    #[error("repository has more than {limit} files; raise the limit or split the repo")]
    TooManyFiles { limit: usize },
    #[error("{path}: path is over the {limit}-byte limit; shorten the directory and file names")]
    PathTooLong { path: String, limit: usize },
    #[error("{path}: directories nest deeper than {limit} levels; flatten the layout")]
    TooDeep { path: String, limit: usize },
    #[error(
        "the repository's paths add up to more than {limit} bytes (directory links and deep trees count every full path); shorten names or flatten the layout"
    )]
    PathsTooLarge { limit: usize },
    #[error(
        "{path}: symlink points to `{target}`, outside the repository; symlinks must stay inside the repo"
    )]
    SymlinkEscapes { path: String, target: String },
    #[error("{path}: symlink loop or chain too long")]
    SymlinkLoop { path: String },
    #[error("{path}: path is not allowed: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{path}: not found in the snapshot")]
    NotFound { path: String },
    #[error("{path}: file is not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("resolve `{rev}`: no branch, tag or commit of that name ({why})")]
    NoSuchRevision { rev: String, why: String },
    #[error("{0}")]
    Git(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The files of a repo at one revision. Cheap to share (`Arc` inside).
#[derive(Debug, Clone)]
pub struct Snapshot {
    revision: Revision,
    files: Arc<BTreeMap<String, Arc<[u8]>>>,
    /// Paths whose file is executable: git's mode 100755 for a commit, the
    /// owner's execute bit for a work tree (as git records it). A symlink's
    /// path takes the bit of the file it resolves to.
    executable: Arc<BTreeSet<String>>,
    /// The symlinks of the tree (path → target text, as git stores them),
    /// for readers that send a link as a link (build contexts). Their
    /// paths are not files of the snapshot unless the link resolves to a
    /// file; a directory link's files appear under its path.
    links: Arc<BTreeMap<String, String>>,
}

impl Snapshot {
    /// Builds a snapshot from already-resolved files (used by the readers,
    /// tests and benchmarks). Paths must be normalised (see [`normalize`]).
    pub fn from_files(
        revision: Revision,
        files: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Self {
        let files = files
            .into_iter()
            .map(|(path, content)| (path, Arc::from(content)))
            .collect();
        Snapshot {
            revision,
            files: Arc::new(files),
            executable: Arc::default(),
            links: Arc::default(),
        }
    }

    /// Like [`Snapshot::from_files`], with contents that may already be
    /// shared (a symlinked file appears under several paths, stored once).
    pub fn from_shared(
        revision: Revision,
        files: impl IntoIterator<Item = (String, Arc<[u8]>)>,
    ) -> Self {
        Snapshot {
            revision,
            files: Arc::new(files.into_iter().collect()),
            executable: Arc::default(),
            links: Arc::default(),
        }
    }

    /// The snapshot with `paths` marked executable (paths not in the
    /// snapshot are ignored).
    pub fn with_executable(mut self, paths: impl IntoIterator<Item = String>) -> Self {
        let set: BTreeSet<String> = paths
            .into_iter()
            .filter(|p| self.files.contains_key(p))
            .collect();
        self.executable = Arc::new(set);
        self
    }

    /// Whether the file at `path` is executable (git mode 100755).
    pub fn is_executable(&self, path: &str) -> bool {
        self.executable.contains(path)
    }

    /// The snapshot with the tree's symlinks (path → target text).
    pub fn with_links(mut self, links: impl IntoIterator<Item = (String, String)>) -> Self {
        self.links = Arc::new(links.into_iter().collect());
        self
    }

    /// The symlinks at or under directory `dir` (`""`: the root), with
    /// their target text, sorted by path.
    pub fn links_under(&self, dir: &str) -> Vec<(&str, &str)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{}/", dir.trim_end_matches('/'))
        };
        self.links
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect()
    }

    pub fn revision(&self) -> &Revision {
        &self.revision
    }

    /// File content by normalised repo path.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(|c| &c[..])
    }

    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    /// File content as UTF-8 text.
    pub fn text(&self, path: &str) -> Result<&str, SourceError> {
        let bytes = self.get(path).ok_or_else(|| SourceError::NotFound {
            path: path.to_owned(),
        })?;
        std::str::from_utf8(bytes).map_err(|_| SourceError::NotUtf8 {
            path: path.to_owned(),
        })
    }

    /// All file paths, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Normalises a repo-relative path: `/`-separated, no `.` or empty parts.
/// Rejects absolute paths and any `..` that would leave the repo root.
pub fn normalize(path: &str) -> Result<String, SourceError> {
    let bad = |reason| SourceError::BadPath {
        path: path.to_owned(),
        reason,
    };
    if path.starts_with('/') || path.starts_with('\\') || path.contains(':') && cfg!(windows) {
        return Err(bad(
            "absolute paths are not allowed; use a path relative to the repo root",
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(bad("it leaves the repository"));
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(bad("empty path"));
    }
    Ok(parts.join("/"))
}

/// Joins `rel` onto the directory of `base` (both repo paths) and normalises.
pub fn join_relative(base_file: &str, rel: &str) -> Result<String, SourceError> {
    if rel.starts_with('/') {
        return normalize(rel);
    }
    match base_file.rsplit_once('/') {
        Some((dir, _)) => normalize(&format!("{dir}/{rel}")),
        None => normalize(rel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_keeps_paths_inside_the_repo() {
        assert_eq!(normalize("a/./b//c").unwrap(), "a/b/c");
        assert_eq!(normalize("a/b/../c").unwrap(), "a/c");
        assert!(matches!(
            normalize("../etc/passwd"),
            Err(SourceError::BadPath { .. })
        ));
        assert!(matches!(
            normalize("a/../../x"),
            Err(SourceError::BadPath { .. })
        ));
        assert!(matches!(
            normalize("/etc/passwd"),
            Err(SourceError::BadPath { .. })
        ));
    }

    #[test]
    fn join_relative_resolves_against_the_files_directory() {
        assert_eq!(
            join_relative("compose/stack.yaml", "./prometheus/prometheus.yml").unwrap(),
            "compose/prometheus/prometheus.yml"
        );
        assert_eq!(join_relative("stack.yaml", "x.env").unwrap(), "x.env");
        assert!(join_relative("compose/stack.yaml", "../../x").is_err());
    }

    #[test]
    fn revision_short_forms() {
        let id = "0123456789abcdef0123456789abcdef01234567".to_owned();
        assert_eq!(Revision::Commit { id: id.clone() }.short(), "0123456789ab");
        let dirty = Revision::WorkTree {
            head: Some(id.clone()),
            dirty: true,
        };
        assert_eq!(dirty.short(), "0123456789ab+dirty");
        assert_eq!(dirty.commit(), None);
        assert_eq!(
            Revision::WorkTree {
                head: Some(id.clone()),
                dirty: false
            }
            .commit(),
            Some(id.as_str())
        );
    }
}
