//! A local work tree read as it is (uncommitted edits included), for
//! `render`, `validate` and `reconcile --dry-run` during development.
//!
//! What is in the snapshot is what `git add -A` would commit: tracked and
//! untracked files, minus those ignored by `.gitignore` (plus
//! `.git/info/exclude` and the user's global excludes, as git does), minus
//! `.git` and nested repositories (submodules). A directory outside any git
//! repository is read whole, honouring its `.gitignore` files.
//!
//! Symlinks are never followed on the host: the walk reads each link's text
//! and resolves it inside the snapshot, and files are opened with
//! `O_NOFOLLOW`, so a link swapped in during the walk is not read through.
//!
//! `dirty` compares the files (content, execute bit and symlink targets)
//! with `HEAD`'s tree. It compares bytes as they are on disk: a repo whose
//! `.gitattributes` convert line endings on checkout looks dirty.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gix::bstr::{BStr, ByteSlice};

use super::tree::{Node, RawTree};
use super::{Limits, Revision, Snapshot, SourceError};

/// Reads the work tree at `root` into a [`Snapshot`] with
/// [`Revision::WorkTree`]: uncommitted edits and untracked (non-ignored) files
/// included; `.git`, ignored files and submodules excluded; symlinks resolved
/// inside the snapshot. `root` may be a repo's work tree, a directory inside
/// one (its paths are then relative to `root`, compared with the same
/// directory of `HEAD`), or a plain directory (`head: None, dirty: true`).
pub fn snapshot(root: &Path, limits: Limits) -> Result<Snapshot, SourceError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SourceError::Io { path, source }
    };
    let root = std::fs::canonicalize(root).map_err(io(root))?;
    let context = RepoContext::discover(&root)?;
    let mut ignore = match &context {
        Some(ctx) => Ignore::Repo {
            stack: ctx
                .repo
                .excludes(
                    &ctx.index,
                    None,
                    gix::worktree::stack::state::ignore::Source::WorktreeThenIdMappingIfNotSkipped,
                )
                .map_err(|e| super::git::git_error("read ignore rules", &e))?,
            index: &ctx.index,
            prefix: &ctx.prefix,
        },
        None => Ignore::Plain(plain_ignore_stack(&root)),
    };
    let raw = walk(&root, &mut ignore, limits)?;
    drop(ignore);

    let files = raw.resolve(&limits)?;
    let mut loaded: HashMap<&str, Arc<[u8]>> = HashMap::with_capacity(raw.file_count());
    let mut out = Vec::with_capacity(files.len());
    let mut executable = Vec::new();
    for (path, real) in &files {
        if raw.is_executable(real) {
            executable.push(path.clone());
        }
        let content = match loaded.get(real.as_str()) {
            Some(content) => Arc::clone(content),
            None => {
                let Some(size) = raw.file(real) else {
                    continue;
                };
                if *size > limits.max_file_bytes {
                    return Err(too_large(real, *size, limits));
                }
                let content: Arc<[u8]> = read_file(&root.join(real), real, limits)?.into();
                loaded.insert(real, Arc::clone(&content));
                content
            }
        };
        out.push((path.clone(), content));
    }

    let revision = match &context {
        None => Revision::WorkTree {
            head: None,
            dirty: true,
        },
        Some(ctx) => match ctx.head(limits) {
            None => Revision::WorkTree {
                head: None,
                dirty: true,
            },
            Some((head, head_tree)) => {
                let dirty = match head_tree {
                    Some(head_tree) => differs(&ctx.repo, &raw, &loaded, &head_tree),
                    None => true,
                };
                Revision::WorkTree {
                    head: Some(head),
                    dirty,
                }
            }
        },
    };
    Ok(Snapshot::from_shared(revision, out)
        .with_executable(executable)
        .with_links(raw.links()))
}

/// The repository `root` lives in.
struct RepoContext {
    repo: gix::Repository,
    index: gix::worktree::Index,
    /// `root` relative to the work tree (`""` at the top, else `a/b/`).
    prefix: String,
}

impl RepoContext {
    fn discover(root: &Path) -> Result<Option<RepoContext>, SourceError> {
        let repo = match gix::discover(root) {
            Ok(repo) => repo,
            Err(e) => {
                tracing::debug!(root = %root.display(), error = %e, "not in a git repository");
                return Ok(None);
            }
        };
        let Some(workdir) = repo.workdir() else {
            return Ok(None);
        };
        let workdir = std::fs::canonicalize(workdir).map_err(|source| SourceError::Io {
            path: workdir.display().to_string(),
            source,
        })?;
        let Ok(rel) = root.strip_prefix(&workdir) else {
            return Ok(None);
        };
        let mut prefix = String::new();
        for part in rel.components() {
            let part = part
                .as_os_str()
                .to_str()
                .ok_or_else(|| SourceError::BadPath {
                    path: rel.display().to_string(),
                    reason: "file name is not valid UTF-8",
                })?;
            prefix.push_str(part);
            prefix.push('/');
        }
        let index = repo
            .index_or_empty()
            .map_err(|e| super::git::git_error("read the git index", &e))?;
        Ok(Some(RepoContext {
            repo,
            index,
            prefix,
        }))
    }

    /// `HEAD`'s commit id and its tree at `prefix` (`None` when the
    /// directory is not in `HEAD` or cannot be read); `None` when unborn.
    fn head(&self, limits: Limits) -> Option<(String, Option<RawTree<gix::ObjectId>>)> {
        let commit = self.repo.head_commit().ok()?;
        let id = commit.id.to_string();
        let tree = commit.tree().ok()?;
        let tree_id = if self.prefix.is_empty() {
            Some(tree.id)
        } else {
            tree.lookup_entry_by_path(self.prefix.trim_end_matches('/'))
                .ok()
                .flatten()
                .filter(|e| e.mode().is_tree())
                .map(|e| e.object_id())
        };
        let raw = tree_id.and_then(|tree_id| {
            match super::git::read_tree(&self.repo, tree_id, limits) {
                Ok(raw) => Some(raw),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read HEAD's tree; work tree counts as dirty");
                    None
                }
            }
        });
        Some((id, raw))
    }
}

/// Whether the work tree's files differ from `head`'s: another set of paths,
/// another symlink target, or other content.
fn differs(
    repo: &gix::Repository,
    work: &RawTree<u64>,
    loaded: &HashMap<&str, Arc<[u8]>>,
    head: &RawTree<gix::ObjectId>,
) -> bool {
    if work.entry_count() != head.entry_count() {
        return true;
    }
    for ((path, node), (head_path, head_node)) in work.nodes().zip(head.nodes()) {
        if path != head_path {
            return true;
        }
        let same = match (node, head_node) {
            (Node::Link(a), Node::Link(b)) => a == b,
            (Node::File(_), Node::File(oid)) => {
                work.is_executable(path) == head.is_executable(path)
                    && loaded.get(path).is_some_and(|content| {
                        gix::objs::compute_hash(repo.object_hash(), gix::objs::Kind::Blob, content)
                            .is_ok_and(|id| id == *oid)
                    })
            }
            _ => false,
        };
        if !same {
            return true;
        }
    }
    false
}

/// Decides what the walk leaves out.
enum Ignore<'a> {
    /// Inside a repo: git's rules, and tracked files are never ignored.
    Repo {
        stack: gix::AttributeStack<'a>,
        index: &'a gix::index::State,
        prefix: &'a str,
    },
    /// A plain directory: its `.gitignore` files only.
    Plain(gix::worktree::Stack),
}

impl Ignore<'_> {
    /// Whether `path` (relative to the snapshot root) is left out.
    fn skips(&mut self, path: &str, mode: gix::index::entry::Mode) -> Result<bool, SourceError> {
        let failed =
            |e: &dyn std::fmt::Display| SourceError::Git(format!("{path}: read ignore rules: {e}"));
        match self {
            Ignore::Repo {
                stack,
                index,
                prefix,
            } => {
                let rel = format!("{prefix}{path}");
                let excluded = stack
                    .at_entry(BStr::new(&rel), Some(mode))
                    .map_err(|e| failed(&e))?
                    .is_excluded();
                if !excluded {
                    return Ok(false);
                }
                let tracked = if mode == gix::index::entry::Mode::DIR {
                    index
                        .prefixed_entries(format!("{rel}/").as_bytes().as_bstr())
                        .is_some_and(|entries| !entries.is_empty())
                } else {
                    index.entry_by_path(rel.as_bytes().as_bstr()).is_some()
                };
                Ok(!tracked)
            }
            Ignore::Plain(stack) => Ok(stack
                .at_entry(BStr::new(path), Some(mode), &gix::objs::find::Never)
                .map_err(|e| failed(&e))?
                .is_excluded()),
        }
    }
}

fn plain_ignore_stack(root: &Path) -> gix::worktree::Stack {
    use gix::worktree::stack::state::{Ignore, ignore::Source};
    let ignore = Ignore::new(
        Default::default(),
        Default::default(),
        None,
        Source::WorktreeThenIdMappingIfNotSkipped,
        Default::default(),
    );
    gix::worktree::Stack::new(
        root,
        gix::worktree::stack::State::IgnoreStack(ignore),
        gix::glob::pattern::Case::Sensitive,
        Vec::new(),
        Vec::new(),
    )
}

/// Walks `root` without following symlinks into a [`RawTree`] of file sizes.
fn walk(root: &Path, ignore: &mut Ignore<'_>, limits: Limits) -> Result<RawTree<u64>, SourceError> {
    use gix::index::entry::Mode;
    let mut raw = RawTree::new();
    let mut pending: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = pending.pop() {
        let shown = if rel_dir.is_empty() { "." } else { &rel_dir };
        let io = |source| SourceError::Io {
            path: shown.to_owned(),
            source,
        };
        let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(&dir)
            .map_err(io)?
            .collect::<Result<_, _>>()
            .map_err(io)?;
        // Sorted, so errors and logs come out the same on every run.
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(SourceError::BadPath {
                    path: format!("{rel_dir}/{}", name.to_string_lossy()),
                    reason: "file name is not valid UTF-8",
                });
            };
            if name == ".git" {
                continue;
            }
            raw.admit(&rel_dir, name, &limits)?;
            let path = if rel_dir.is_empty() {
                name.to_owned()
            } else {
                format!("{rel_dir}/{name}")
            };
            if name.contains('\\') {
                return Err(SourceError::BadPath {
                    path,
                    reason: "file name contains `\\`",
                });
            }
            let file_type = entry.file_type().map_err(|source| SourceError::Io {
                path: path.clone(),
                source,
            })?;
            if file_type.is_dir() {
                // A nested repository (submodule or not) is not ours to read.
                if std::fs::symlink_metadata(entry.path().join(".git")).is_ok()
                    || ignore.skips(&path, Mode::DIR)?
                {
                    continue;
                }
                raw.add_dir(path.clone());
                pending.push((entry.path(), path));
            } else if file_type.is_symlink() {
                if ignore.skips(&path, Mode::SYMLINK)? {
                    continue;
                }
                let target =
                    std::fs::read_link(entry.path()).map_err(|source| SourceError::Io {
                        path: path.clone(),
                        source,
                    })?;
                let Some(target) = target.to_str() else {
                    return Err(SourceError::BadPath {
                        path,
                        reason: "symlink target is not valid UTF-8",
                    });
                };
                raw.add_link(path, target.to_owned());
            } else if file_type.is_file() {
                if ignore.skips(&path, Mode::FILE)? {
                    continue;
                }
                let meta = entry.metadata().map_err(|source| SourceError::Io {
                    path: path.clone(),
                    source,
                })?;
                raw.add_file(path, meta.len(), executable(&meta));
            }
            // Sockets, FIFOs and devices are not content: skipped, like git.
            if raw.entry_count() > limits.max_files || raw.dir_count() > limits.max_files {
                return Err(SourceError::TooManyFiles {
                    limit: limits.max_files,
                });
            }
        }
    }
    Ok(raw)
}

/// Whether git would record the file as executable (mode 100755): the
/// owner's execute bit, as git reads it with `core.fileMode` on.
fn executable(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o100 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// Reads the regular file `abs` (snapshot path `rel`) without following a
/// symlink and without reading more than the limit allows.
fn read_file(abs: &Path, rel: &str, limits: Limits) -> Result<Vec<u8>, SourceError> {
    let io = |source| SourceError::Io {
        path: rel.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A symlink swapped in after the walk fails with ELOOP; a FIFO does
        // not block the open.
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file: File = options.open(abs).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other(
            "no longer a regular file (changed during the read)",
        )));
    }
    if meta.len() > limits.max_file_bytes {
        return Err(too_large(rel, meta.len(), limits));
    }
    let mut content = Vec::with_capacity(meta.len() as usize);
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut content)
        .map_err(io)?;
    if content.len() as u64 > limits.max_file_bytes {
        return Err(too_large(rel, content.len() as u64, limits));
    }
    Ok(content)
}

fn too_large(path: &str, size: u64, limits: Limits) -> SourceError {
    SourceError::FileTooLarge {
        path: path.to_owned(),
        size,
        limit: limits.max_file_bytes,
    }
}
