//! The raw shape of a revision before it becomes a [`Snapshot`]: its files,
//! directories and symlinks, and the symlink resolution both readers share.
//!
//! Symlinks are resolved here, against this tree only, the way a kernel would
//! walk a path (component by component, a link's text relative to the
//! directory holding it), but never touching the host file system. A link
//! whose text leaves the root (absolute, or `..` past it) is an error even
//! when nothing reads it, so a repo cannot smuggle a host path into a render.
//!
//! [`Snapshot`]: super::Snapshot

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use super::{Limits, SourceError, abbreviate};

/// Most links followed to resolve one path, and most nested directory links
/// expanded inside each other; the same bound Linux uses (`MAXSYMLINKS`).
const MAX_HOPS: usize = 40;

/// One non-directory entry of a [`RawTree`].
#[derive(Debug)]
pub(crate) enum Node<T> {
    /// A regular file and what the reader needs to load it later.
    File(T),
    /// A symlink and its target text.
    Link(String),
}

/// Files, symlinks and directories of a revision, keyed by normalised path.
#[derive(Debug)]
pub(crate) struct RawTree<T> {
    nodes: BTreeMap<String, Node<T>>,
    dirs: BTreeSet<String>,
    /// Regular files with the executable bit (git mode 100755).
    executable: BTreeSet<String>,
    files: usize,
    /// Bytes of all paths admitted so far (see [`RawTree::admit`]).
    path_bytes: usize,
}

/// Where a symlink leads inside the tree.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    File(String),
    Dir(String),
    /// Dangling: no such file or directory in the tree.
    Missing,
}

/// Files under one directory, expanded through nested directory links:
/// (path relative to that directory, real path of the file).
type Expansion = Rc<Vec<(String, String)>>;

impl<T> RawTree<T> {
    pub(crate) fn new() -> Self {
        RawTree {
            nodes: BTreeMap::new(),
            dirs: BTreeSet::new(),
            executable: BTreeSet::new(),
            files: 0,
            path_bytes: 0,
        }
    }

    /// Checks that entry `name` of directory `dir` (`""` for the root) keeps
    /// within the path limits of `limits`, and charges its path to the
    /// tree's budget. Readers call it before building the path, so a deep or
    /// wide tree is refused before it costs memory.
    pub(crate) fn admit(
        &mut self,
        dir: &str,
        name: &str,
        limits: &Limits,
    ) -> Result<(), SourceError> {
        let (len, depth) = if dir.is_empty() {
            (name.len(), 1)
        } else {
            (dir.len() + 1 + name.len(), dir.matches('/').count() + 2)
        };
        let shown = || {
            if dir.is_empty() {
                abbreviate(name)
            } else {
                abbreviate(&format!("{dir}/{name}"))
            }
        };
        if depth > limits.max_depth {
            return Err(SourceError::TooDeep {
                path: shown(),
                limit: limits.max_depth,
            });
        }
        if len > limits.max_path_bytes {
            return Err(SourceError::PathTooLong {
                path: shown(),
                limit: limits.max_path_bytes,
            });
        }
        self.path_bytes += len;
        if self.path_bytes > limits.max_path_bytes_total {
            return Err(SourceError::PathsTooLarge {
                limit: limits.max_path_bytes_total,
            });
        }
        Ok(())
    }

    /// Number of regular files added so far.
    pub(crate) fn file_count(&self) -> usize {
        self.files
    }

    /// Number of files and symlinks added so far.
    pub(crate) fn entry_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of directories added so far.
    pub(crate) fn dir_count(&self) -> usize {
        self.dirs.len()
    }

    /// Adds a regular file; `executable` is its execute bit as git records
    /// it (mode 100755 rather than 100644).
    pub(crate) fn add_file(&mut self, path: String, file: T, executable: bool) {
        self.files += 1;
        if executable {
            self.executable.insert(path.clone());
        }
        self.nodes.insert(path, Node::File(file));
    }

    /// Whether the regular file at real path `path` is executable.
    pub(crate) fn is_executable(&self, path: &str) -> bool {
        self.executable.contains(path)
    }

    pub(crate) fn add_link(&mut self, path: String, target: String) {
        self.nodes.insert(path, Node::Link(target));
    }

    /// Records a directory; readers add every directory they descend into,
    /// so links to it (even when it holds no files) resolve.
    pub(crate) fn add_dir(&mut self, path: String) {
        self.dirs.insert(path);
    }

    /// The payload of the regular file at `path`.
    pub(crate) fn file(&self, path: &str) -> Option<&T> {
        match self.nodes.get(path) {
            Some(Node::File(file)) => Some(file),
            _ => None,
        }
    }

    /// The symlinks (path, target text), sorted by path.
    pub(crate) fn links(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.nodes.iter().filter_map(|(path, node)| match node {
            Node::Link(text) => Some((path.clone(), text.clone())),
            Node::File(_) => None,
        })
    }

    /// Iterates regular files and symlinks (with their target text).
    pub(crate) fn nodes(&self) -> impl Iterator<Item = (&str, &Node<T>)> {
        self.nodes.iter().map(|(path, node)| (path.as_str(), node))
    }

    /// Resolves every symlink and returns the snapshot's files as
    /// `(snapshot path, real path of the regular file holding the content)`.
    ///
    /// A link to a file appears as that file; a link to a directory makes the
    /// directory's files appear under the link path; a dangling link is left
    /// out (and logged). Fails on a link leaving the root, on loops, when
    /// the result has more than `max_files` files, and when the paths that
    /// directory links add break the path limits.
    pub(crate) fn resolve(&self, limits: &Limits) -> Result<Vec<(String, String)>, SourceError> {
        let max_files = limits.max_files;
        let too_many = || SourceError::TooManyFiles { limit: max_files };
        let mut budget = Budget {
            used: self.path_bytes,
            limits,
        };
        let mut out = Vec::with_capacity(self.files);
        let mut memo: HashMap<String, Expansion> = HashMap::new();
        for (path, node) in &self.nodes {
            match node {
                Node::File(_) => out.push((path.clone(), path.clone())),
                Node::Link(_) => match self.follow(path)? {
                    Target::File(real) => out.push((path.clone(), real)),
                    Target::Dir(real) => {
                        if is_ancestor_or_self(&real, path) {
                            return Err(SourceError::SymlinkLoop { path: path.clone() });
                        }
                        let mut chain = vec![real.clone()];
                        let files = self.expand(&real, path, &mut chain, &mut memo, &mut budget)?;
                        if out.len() + files.len() > max_files {
                            return Err(too_many());
                        }
                        for (rel, real) in files.iter() {
                            out.push((budget.join(path, rel)?, real.clone()));
                        }
                    }
                    Target::Missing => dangling(path, node),
                },
            }
            if out.len() > max_files {
                return Err(too_many());
            }
        }
        Ok(out)
    }

    /// The files under real directory `dir`, following directory links
    /// inside it. `chain` holds the directories being expanded: a link back
    /// to one of them (or to a directory containing one) would repeat
    /// forever. `via` is the link that led here, named in errors.
    fn expand(
        &self,
        dir: &str,
        via: &str,
        chain: &mut Vec<String>,
        memo: &mut HashMap<String, Expansion>,
        budget: &mut Budget<'_>,
    ) -> Result<Expansion, SourceError> {
        let max_files = budget.limits.max_files;
        if let Some(done) = memo.get(dir) {
            return Ok(Rc::clone(done));
        }
        if chain.len() > MAX_HOPS {
            return Err(SourceError::SymlinkLoop {
                path: via.to_owned(),
            });
        }
        let prefix = format!("{dir}/");
        let mut files = Vec::new();
        let inside = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix));
        for (path, node) in inside {
            let rel = &path[prefix.len()..];
            match node {
                Node::File(_) => {
                    budget.charge(rel.len())?;
                    files.push((rel.to_owned(), path.clone()));
                }
                Node::Link(_) => match self.follow(path)? {
                    Target::File(real) => {
                        budget.charge(rel.len())?;
                        files.push((rel.to_owned(), real));
                    }
                    Target::Dir(real) => {
                        if chain.iter().any(|open| is_ancestor_or_self(&real, open)) {
                            return Err(SourceError::SymlinkLoop { path: path.clone() });
                        }
                        chain.push(real.clone());
                        let nested = self.expand(&real, path, chain, memo, budget);
                        chain.pop();
                        for (sub, real) in nested?.iter() {
                            files.push((budget.join(rel, sub)?, real.clone()));
                        }
                    }
                    Target::Missing => dangling(path, node),
                },
            }
            if files.len() > max_files {
                return Err(SourceError::TooManyFiles { limit: max_files });
            }
        }
        let files = Rc::new(files);
        memo.insert(dir.to_owned(), Rc::clone(&files));
        Ok(files)
    }

    /// Follows the link at `link` (a real path) to a file or directory.
    fn follow(&self, link: &str) -> Result<Target, SourceError> {
        let Some(Node::Link(text)) = self.nodes.get(link) else {
            return Ok(Target::Missing);
        };
        // The link being followed right now: errors name it and its text.
        let (mut at, mut text): (&str, &str) = (link, text);
        let escapes = |at: &str, text: &str| SourceError::SymlinkEscapes {
            path: at.to_owned(),
            target: text.to_owned(),
        };
        // Resolved real directory so far, and components still to walk
        // (reversed, so the next one is at the end).
        let mut dir: Vec<&str> = parent(link).map_or_else(Vec::new, |p| p.split('/').collect());
        if leaves_root(dir.len(), text) {
            return Err(escapes(at, text));
        }
        let mut hops = 1;
        let mut rest: Vec<&str> = text.split('/').rev().collect();
        while let Some(part) = rest.pop() {
            match part {
                "" | "." => {}
                ".." => {
                    if dir.pop().is_none() {
                        return Err(escapes(at, text));
                    }
                }
                name => {
                    dir.push(name);
                    let candidate = dir.join("/");
                    match self.nodes.get_key_value(&candidate) {
                        Some((key, Node::Link(next))) => {
                            dir.pop();
                            hops += 1;
                            if hops > MAX_HOPS {
                                return Err(SourceError::SymlinkLoop {
                                    path: link.to_owned(),
                                });
                            }
                            // Errors name the link whose own text leaves the root.
                            (at, text) = (key.as_str(), next.as_str());
                            if leaves_root(dir.len(), text) {
                                return Err(escapes(at, text));
                            }
                            rest.extend(text.split('/').rev());
                        }
                        Some((_, Node::File(_))) => {
                            // Anything after a file (even `/` or `/.`) is
                            // "not a directory": the link dangles.
                            return Ok(if rest.is_empty() {
                                Target::File(candidate)
                            } else {
                                Target::Missing
                            });
                        }
                        None => {
                            if !self.dirs.contains(&candidate) {
                                return Ok(Target::Missing);
                            }
                        }
                    }
                }
            }
        }
        Ok(Target::Dir(dir.join("/")))
    }
}

/// The path bytes a resolution may still allocate: directory links make
/// new, longer paths out of the tree's own.
struct Budget<'a> {
    used: usize,
    limits: &'a Limits,
}

impl Budget<'_> {
    fn charge(&mut self, bytes: usize) -> Result<(), SourceError> {
        self.used += bytes;
        if self.used > self.limits.max_path_bytes_total {
            return Err(SourceError::PathsTooLarge {
                limit: self.limits.max_path_bytes_total,
            });
        }
        Ok(())
    }

    /// `dir/rel`, checked against the length limit and charged.
    fn join(&mut self, dir: &str, rel: &str) -> Result<String, SourceError> {
        let len = dir.len() + 1 + rel.len();
        if len > self.limits.max_path_bytes {
            return Err(SourceError::PathTooLong {
                path: abbreviate(&format!("{dir}/{rel}")),
                limit: self.limits.max_path_bytes,
            });
        }
        self.charge(len)?;
        Ok(format!("{dir}/{rel}"))
    }
}

/// Whether link text `text`, read in a directory `depth` levels below the
/// root, is absolute or climbs above the root when read as written. This
/// is stricter than the walk in [`RawTree::follow`] (which stops early at a
/// missing component): `missing/../../etc/passwd` is an escape too.
fn leaves_root(depth: usize, text: &str) -> bool {
    if text.starts_with('/') {
        return true;
    }
    let mut depth = depth;
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

/// The directory part of a repo path, `None` at the root.
fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(dir, _)| dir)
}

/// Whether directory `dir` is `path` itself or one of its ancestors
/// (the root, `""`, is everyone's ancestor).
fn is_ancestor_or_self(dir: &str, path: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

fn dangling<T>(path: &str, node: &Node<T>) {
    if let Node::Link(target) = node {
        tracing::warn!(
            path,
            target = target.as_str(),
            "symlink target is not in the repository; left out of the snapshot"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree from `(path, Some(link text))` / `(path, None)` for files;
    /// parent directories are added as the readers would.
    fn tree(entries: &[(&str, Option<&str>)]) -> RawTree<()> {
        let mut t = RawTree::new();
        for (path, link) in entries {
            let mut dir = *path;
            while let Some(p) = parent(dir) {
                t.add_dir(p.to_owned());
                dir = p;
            }
            match link {
                Some(target) => t.add_link((*path).to_owned(), (*target).to_owned()),
                None => t.add_file((*path).to_owned(), (), false),
            }
        }
        t
    }

    fn max_files(n: usize) -> Limits {
        Limits {
            max_files: n,
            ..Limits::default()
        }
    }

    fn resolved(t: &RawTree<()>) -> Vec<(String, String)> {
        let mut v = t.resolve(&max_files(1000)).unwrap();
        v.sort();
        v
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn file_links_resolve_relative_to_their_directory() {
        let t = tree(&[
            ("a/f.txt", None),
            ("a/same", Some("f.txt")),
            ("b/up", Some("../a/./f.txt")),
            ("b/chain", Some("up")),
        ]);
        assert_eq!(
            resolved(&t),
            pairs(&[
                ("a/f.txt", "a/f.txt"),
                ("a/same", "a/f.txt"),
                ("b/chain", "a/f.txt"),
                ("b/up", "a/f.txt"),
            ])
        );
    }

    #[test]
    fn directory_links_expand_including_nested_links() {
        let t = tree(&[
            ("real/x", None),
            ("real/sub/y", None),
            ("real/sub/ln", Some("../x")),
            ("alias", Some("real")),
            ("other/deep", Some("../alias/sub")),
        ]);
        assert_eq!(
            resolved(&t),
            pairs(&[
                ("alias/sub/ln", "real/x"),
                ("alias/sub/y", "real/sub/y"),
                ("alias/x", "real/x"),
                ("other/deep/ln", "real/x"),
                ("other/deep/y", "real/sub/y"),
                ("real/sub/ln", "real/x"),
                ("real/sub/y", "real/sub/y"),
                ("real/x", "real/x"),
            ])
        );
    }

    #[test]
    fn a_path_through_a_directory_link_uses_the_links_target() {
        // `alias/../f` is `real`'s parent, not `alias`'s: like the kernel.
        let t = tree(&[
            ("top/real/in", None),
            ("top/f", None),
            ("alias", Some("top/real")),
            ("via", Some("alias/../f")),
        ]);
        let got = resolved(&t);
        assert!(got.contains(&("via".to_owned(), "top/f".to_owned())));
    }

    #[test]
    fn links_leaving_the_root_are_errors_naming_the_link() {
        for target in [
            "/etc/passwd",
            "../../outside",
            "missing/../../../x",
            "./../..",
        ] {
            let t = tree(&[("f", None), ("d/ln", Some(target))]);
            match t.resolve(&max_files(100)) {
                Err(SourceError::SymlinkEscapes { path, target: got }) => {
                    assert_eq!(path, "d/ln");
                    assert_eq!(got, target);
                }
                other => panic!("{target}: {other:?}"),
            }
        }
        // One level up from `d` is the root: inside, found or dangling.
        for target in ["../f", "../outside", "x/../../f"] {
            let t = tree(&[("f", None), ("d/ln", Some(target))]);
            assert!(t.resolve(&max_files(100)).is_ok(), "{target}");
        }
        // Through a chain, the error names the link that leaves.
        let t = tree(&[("a", Some("b")), ("b", Some("/etc/passwd"))]);
        match t.resolve(&max_files(100)) {
            Err(SourceError::SymlinkEscapes { path, .. }) => assert_eq!(path, "b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn loops_and_long_chains_are_errors() {
        let cases: Vec<RawTree<()>> = vec![
            tree(&[("a", Some("a"))]),
            tree(&[("a", Some("b")), ("b", Some("a"))]),
            tree(&[("d/f", None), ("d/self", Some("."))]),
            tree(&[("d/f", None), ("d/up", Some(".."))]),
            tree(&[("root", Some("."))]),
            tree(&[("a/f", None), ("a/x", Some("../b")), ("b/y", Some("../a"))]),
        ];
        for t in cases {
            assert!(
                matches!(
                    t.resolve(&max_files(1000)),
                    Err(SourceError::SymlinkLoop { .. })
                ),
                "{t:?}"
            );
        }
        let mut chain: Vec<(String, Option<String>)> = vec![("l0".into(), None)];
        for i in 1..=45 {
            chain.push((format!("l{i}"), Some(format!("l{}", i - 1))));
        }
        let entries: Vec<(&str, Option<&str>)> = chain
            .iter()
            .map(|(p, l)| (p.as_str(), l.as_deref()))
            .collect();
        assert!(matches!(
            tree(&entries).resolve(&max_files(1000)),
            Err(SourceError::SymlinkLoop { .. })
        ));
    }

    #[test]
    fn dangling_links_are_left_out() {
        let t = tree(&[
            ("f", None),
            ("gone", Some("nothing")),
            ("notdir", Some("f/x")),
            ("slash", Some("f/")),
        ]);
        assert_eq!(resolved(&t), pairs(&[("f", "f")]));
    }

    #[test]
    fn fan_out_of_directory_links_is_bounded_by_max_files() {
        // Each level links twice to the next: 2^30 paths without the bound.
        let mut entries = vec![("l30/f".to_owned(), None)];
        for i in 0..30 {
            entries.push((format!("l{i}/a"), Some(format!("../l{}", i + 1))));
            entries.push((format!("l{i}/b"), Some(format!("../l{}", i + 1))));
        }
        let entries: Vec<(&str, Option<&str>)> = entries
            .iter()
            .map(|(p, l)| (p.as_str(), l.as_deref()))
            .collect();
        assert!(matches!(
            tree(&entries).resolve(&max_files(10_000)),
            Err(SourceError::TooManyFiles { limit: 10_000 })
        ));
    }

    #[test]
    fn ancestor_test_respects_component_boundaries() {
        assert!(is_ancestor_or_self("", "a"));
        assert!(is_ancestor_or_self("a", "a"));
        assert!(is_ancestor_or_self("a", "a/b"));
        assert!(!is_ancestor_or_self("a", "ab"));
        assert!(!is_ancestor_or_self("a/b", "a"));
    }

    #[test]
    fn deep_long_and_wide_paths_are_refused_before_they_are_built() {
        let limits = Limits {
            max_path_bytes: 20,
            max_depth: 3,
            max_path_bytes_total: 40,
            ..Limits::default()
        };
        let mut t: RawTree<()> = RawTree::new();
        t.admit("", "a", &limits).unwrap();
        t.admit("a", "b", &limits).unwrap();
        t.admit("a/b", "c", &limits).unwrap();
        assert!(matches!(
            t.admit("a/b/c", "d", &limits),
            Err(SourceError::TooDeep { limit: 3, .. })
        ));
        let long = "n".repeat(300);
        match t.admit("a", &long, &limits) {
            Err(SourceError::PathTooLong { path, limit: 20 }) => {
                // The message names the path without printing all of it.
                assert!(
                    path.starts_with("a/nnn") && path.ends_with("(302 bytes)"),
                    "{path}"
                );
                assert!(path.len() < 200, "{path}");
            }
            other => panic!("{other:?}"),
        }
        let mut t: RawTree<()> = RawTree::new();
        for i in 0..4 {
            t.admit("", &format!("file-{i}-xx"), &limits).unwrap();
        }
        assert!(matches!(
            t.admit("", "one-more", &limits),
            Err(SourceError::PathsTooLarge { limit: 40 })
        ));
    }

    #[test]
    fn paths_made_by_directory_links_count_against_the_limits() {
        // Ten links to a directory holding a hundred files: 1,000 new paths.
        let mut entries = Vec::new();
        for i in 0..100 {
            entries.push((format!("real/file-{i:03}"), None));
        }
        for i in 0..10 {
            entries.push((format!("alias-{i}"), Some("real".to_owned())));
        }
        let entries: Vec<(&str, Option<&str>)> = entries
            .iter()
            .map(|(p, l)| (p.as_str(), l.as_deref()))
            .collect();
        let t = tree(&entries);
        assert_eq!(t.resolve(&Limits::default()).unwrap().len(), 1100);
        let tight = Limits {
            max_path_bytes_total: 10_000,
            ..Limits::default()
        };
        assert!(matches!(
            t.resolve(&tight),
            Err(SourceError::PathsTooLarge { limit: 10_000 })
        ));
        // A link nested in itself through a long name breaks the length limit.
        let long = "l".repeat(3000);
        let t = tree(&[
            ("d/f", None),
            (&format!("d/{long}"), Some("../e")),
            ("e/x", Some("../d/f")),
            ("e2", Some("d")),
        ]);
        let short = Limits {
            max_path_bytes: 3000,
            ..Limits::default()
        };
        assert!(
            matches!(
                t.resolve(&short),
                Err(SourceError::PathTooLong { limit: 3000, .. })
            ),
            "{:?}",
            t.resolve(&short)
        );
    }
}
