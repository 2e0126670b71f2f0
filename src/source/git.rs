//! Git repositories through gix: open a local repo or clone/fetch a remote
//! into a cache, resolve a branch/tag/sha, read a commit into a [`Snapshot`].
//!
//! Commits are read straight from the object database: no work tree is
//! checked out, so nothing in a commit can touch the host file system.
//!
//! Remote caches are bare repositories under `cache_dir/<hash of the url>`,
//! opened *isolated* (no system/user git config, no `GIT_*` environment), so
//! the daemon behaves the same on every machine. Their refs mirror the
//! remote: `refs/heads/*` and `refs/tags/*` are force-updated on every fetch,
//! and the remote's `HEAD` is kept as `refs/remotes/origin/HEAD`.
//!
//! Authentication:
//! - [`Auth::Token`]: the token is read from an environment variable at each
//!   fetch and handed to gix through a credentials callback. It is never put
//!   into a URL, the repo config, or an error message.
//! - [`Auth::SshKey`]: gix runs the `ssh` program with `-i <key> -o
//!   IdentitiesOnly=yes -o BatchMode=yes`. Host keys: **trust on first use**
//!   (`StrictHostKeyChecking=accept-new`), pinned in `cache_dir/known_hosts`;
//!   a key that changes later fails the fetch. The system-wide
//!   `/etc/ssh/ssh_known_hosts` is consulted as well, so operators can pin
//!   host keys in advance.
//!
//! Fetching `file://` URLs and plain paths runs `git upload-pack`, so the
//! `git` program must be installed for those.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use gix::bstr::{BStr, ByteSlice};
use gix::remote::Direction;
use sha2::{Digest, Sha256};

use super::tree::RawTree;
use super::{Limits, Revision, Snapshot, SourceError};
use crate::diag::error_chain as chain;

/// How to authenticate to a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials (public `https://`, `file://`, plain paths).
    None,
    /// An `https://` token, read from the named environment variable at each
    /// fetch. The URL's user name is used when it has one, else
    /// `x-access-token` (GitHub; GitLab and Gitea accept any name).
    Token { env_var: String },
    /// An `ssh://` (or `user@host:path`) deploy key file.
    SshKey { path: PathBuf },
}

/// Where a cached clone fetches from.
#[derive(Debug, Clone)]
struct Origin {
    url: String,
    auth: Auth,
    /// Known-hosts file for ssh (in the cache directory).
    known_hosts: PathBuf,
}

/// A Git repository: a local one, or the cached bare clone of a remote.
/// Cheap to clone and `Send + Sync`; each call works on a thread-local handle.
#[derive(Clone)]
pub struct Repo {
    repo: gix::ThreadSafeRepository,
    origin: Option<Origin>,
}

impl fmt::Debug for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repo")
            .field("path", &self.repo.path())
            .field("origin", &self.origin.as_ref().map(|o| redact(&o.url)))
            .finish()
    }
}

/// Name of the remote in cached clones.
const ORIGIN: &str = "origin";

/// A tag that leads to a commit ([`Repo::tags_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagAt {
    /// The short name (`v1.4`).
    pub name: String,
    /// The raw annotated tag object; `None`: a lightweight tag.
    pub object: Option<Vec<u8>>,
}

/// What a fetch maps, remote → cache.
const FETCH_REFSPECS: [&str; 3] = [
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    "+HEAD:refs/remotes/origin/HEAD",
];

impl Repo {
    /// Opens a local repo (bare or with a work tree) at `path`.
    pub fn open(path: &Path) -> Result<Repo, SourceError> {
        let repo = gix::open(path)
            .map_err(|e| git_error(format!("open repository {}", path.display()), &e))?;
        Ok(Repo {
            repo: repo.into_sync(),
            origin: None,
        })
    }

    /// Opens the cached clone of a remote: `file://`, a plain path,
    /// `https://` (with [`Auth::Token`]) or `ssh://` (with [`Auth::SshKey`]).
    /// A missing cache is created by a bare clone into
    /// `cache_dir/<stable hash of url>` (cloned into a temporary directory
    /// first, then renamed, so a failed clone leaves nothing behind); an
    /// existing one is opened without network access.
    pub fn open_remote(url: &str, cache_dir: &Path, auth: &Auth) -> Result<Repo, SourceError> {
        let url = checked_url(url, auth)?;
        check_auth(&url, auth)?;
        let origin = Origin {
            url: url.clone(),
            auth: auth.clone(),
            known_hosts: absolute(cache_dir)?.join("known_hosts"),
        };
        let dir = cache_dir.join(cache_key(&url));
        if dir.exists() {
            let repo = gix::open_opts(&dir, gix::open::Options::isolated()).map_err(|e| {
                git_error(
                    format!(
                        "open cached clone {} of {}; delete it to clone again",
                        dir.display(),
                        redact(&url)
                    ),
                    &e,
                )
            })?;
            return Ok(Repo {
                repo: repo.into_sync(),
                origin: Some(origin),
            });
        }
        std::fs::create_dir_all(cache_dir).map_err(|source| SourceError::Io {
            path: cache_dir.display().to_string(),
            source,
        })?;
        let tmp = cache_dir.join(format!(
            "{}.clone-{}-{}",
            cache_key(&url),
            std::process::id(),
            unique_suffix()
        ));
        if let Err(e) = clone_into(&tmp, &origin) {
            std::fs::remove_dir_all(&tmp).ok();
            return Err(e);
        }
        if let Err(source) = std::fs::rename(&tmp, &dir) {
            std::fs::remove_dir_all(&tmp).ok();
            // Another process won the race: use its clone.
            if !dir.exists() {
                return Err(SourceError::Io {
                    path: dir.display().to_string(),
                    source,
                });
            }
        }
        let repo = gix::open_opts(&dir, gix::open::Options::isolated())
            .map_err(|e| git_error(format!("open cached clone {}", dir.display()), &e))?;
        Ok(Repo {
            repo: repo.into_sync(),
            origin: Some(origin),
        })
    }

    /// Fetches all branches and tags from the remote (blocking: run it in
    /// `spawn_blocking`). A no-op for repos opened with [`Repo::open`].
    /// Two fetches of the same cache must not run at once (the second fails
    /// on the ref locks).
    pub fn fetch(&self) -> Result<(), SourceError> {
        match &self.origin {
            Some(origin) => fetch_into(self.repo.to_thread_local(), origin),
            None => Ok(()),
        }
    }

    /// Resolves `rev` to a full commit id: a branch (`main` → `refs/heads/main`,
    /// else the fetched `refs/remotes/origin/main`), a tag (annotated tags
    /// peeled to their commit), a full or short sha, a full ref name, or
    /// any other revision git understands (`main~1`). Branches win over tags
    /// of the same name.
    pub fn resolve(&self, rev: &str) -> Result<String, SourceError> {
        let repo = self.local();
        let fail = |why: String| SourceError::Git(format!("resolve `{rev}`: {why}"));
        if rev.trim().is_empty() {
            return Err(fail("empty revision".to_owned()));
        }
        let names: Vec<String> = if rev.starts_with("refs/") || rev == "HEAD" {
            vec![rev.to_owned()]
        } else {
            vec![
                format!("refs/heads/{rev}"),
                format!("refs/remotes/{ORIGIN}/{rev}"),
                format!("refs/tags/{rev}"),
            ]
        };
        for name in &names {
            match repo.try_find_reference(name.as_str()) {
                Ok(Some(mut reference)) => {
                    let commit = reference.peel_to_commit().map_err(|e| {
                        fail(format!("`{name}` does not lead to a commit: {}", chain(&e)))
                    })?;
                    return Ok(commit.id.to_string());
                }
                Ok(None) => {}
                // Reading the refs failed (out of descriptors, a vanished
                // file): say so, never "no such branch".
                Err(e) if io_cause(&e).is_some() => {
                    return Err(fail(format!("cannot read `{name}`: {}", chain(&e))));
                }
                // An invalid ref name (`a..b`) is simply not a ref.
                Err(_) => {}
            }
        }
        let id = repo
            .rev_parse_single(rev)
            .map_err(|e| SourceError::NoSuchRevision {
                rev: rev.to_owned(),
                why: chain(&e),
            })?;
        let commit = id
            .object()
            .and_then(|o| o.peel_to_commit())
            .map_err(|e| fail(format!("not a commit: {}", chain(&e))))?;
        Ok(commit.id.to_string())
    }

    /// Reads every file of `commit`'s tree from the object database into a
    /// [`Snapshot`], enforcing `limits`. `commit` is a full id, or anything
    /// [`Repo::resolve`] accepts. Symlinks are resolved inside the snapshot;
    /// submodules are skipped.
    pub fn snapshot(&self, commit: &str, limits: Limits) -> Result<Snapshot, SourceError> {
        let repo = self.local();
        let id = match gix::ObjectId::from_hex(commit.as_bytes()) {
            Ok(id) => id,
            Err(_) => gix::ObjectId::from_hex(self.resolve(commit)?.as_bytes())
                .map_err(|e| SourceError::Git(format!("resolve `{commit}`: {e}")))?,
        };
        let commit_obj = repo
            .find_object(id)
            .and_then(|o| o.peel_to_commit())
            .map_err(|e| git_error(format!("read commit {id}"), &e))?;
        let tree_id = commit_obj
            .tree_id()
            .map_err(|e| git_error(format!("read commit {id}"), &e))?;
        let raw = read_tree(&repo, tree_id.detach(), limits)?;
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
                    let Some(oid) = raw.file(real) else {
                        continue;
                    };
                    let content: Arc<[u8]> = read_blob(&repo, *oid, real, limits)?.into();
                    loaded.insert(real, Arc::clone(&content));
                    content
                }
            };
            out.push((path.clone(), content));
        }
        Ok(
            Snapshot::from_shared(Revision::Commit { id: id.to_string() }, out)
                .with_executable(executable)
                .with_links(raw.links()),
        )
    }

    /// The full id and the raw object (without the `commit <len>\0`
    /// header) of the commit `rev` resolves to, as a signature covers it.
    pub fn commit_object(&self, rev: &str) -> Result<(String, Vec<u8>), SourceError> {
        let id = self.resolve(rev)?;
        let oid = gix::ObjectId::from_hex(id.as_bytes())
            .map_err(|e| SourceError::Git(format!("resolve `{rev}`: {e}")))?;
        let repo = self.local();
        let object = repo
            .find_object(oid)
            .map_err(|e| git_error(format!("read commit {id}"), &e))?;
        Ok((id, object.data.clone()))
    }

    /// The tags (`refs/tags/*`) that lead to `commit`, by short name, each
    /// with its raw tag object as stored (`None`: a lightweight tag, which
    /// can carry no signature). Sorted by name.
    pub fn tags_at(&self, commit: &str) -> Result<Vec<TagAt>, SourceError> {
        let want = gix::ObjectId::from_hex(commit.as_bytes())
            .map_err(|e| SourceError::Git(format!("tags of `{commit}`: {e}")))?;
        let repo = self.local();
        let fail = |e: &(dyn std::error::Error + 'static)| git_error("list tags", e);
        let platform = repo.references().map_err(|e| fail(&e))?;
        let mut out = Vec::new();
        for reference in platform.tags().map_err(|e| fail(&e))? {
            let mut reference = reference.map_err(|e| fail(&e))?;
            let name = reference.name().shorten().to_string();
            // Before peeling: peeling rewrites the reference's target.
            let Some(direct) = reference.target().try_id().map(ToOwned::to_owned) else {
                continue;
            };
            // A tag that leads to no commit (a tree, a blob) is not this one.
            let Ok(peeled) = reference.peel_to_commit() else {
                continue;
            };
            if peeled.id != want {
                continue;
            }
            let object = repo
                .find_object(direct)
                .map_err(|e| git_error(format!("read tag `{name}`"), &e))?;
            let data = (object.kind == gix::object::Kind::Tag).then(|| object.data.clone());
            out.push(TagAt { name, object: data });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The content of regular file `name` in the root directory of
    /// `commit`, reading that one tree and blob only; `None` when the root
    /// holds no regular file of that name (absent, or a symlink that needs
    /// the whole tree to resolve).
    pub fn root_file(
        &self,
        commit: &str,
        name: &str,
        limits: Limits,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let repo = self.local();
        let id = gix::ObjectId::from_hex(commit.as_bytes())
            .map_err(|e| SourceError::Git(format!("read commit `{commit}`: {e}")))?;
        let tree = repo
            .find_object(id)
            .and_then(|o| o.peel_to_tree())
            .map_err(|e| git_error(format!("read commit {id}"), &e))?;
        let decoded = tree
            .decode()
            .map_err(|e| git_error(format!("decode tree `.` of {id}"), &e))?;
        let Some(entry) = decoded.entries.iter().find(|e| e.filename == name) else {
            return Ok(None);
        };
        match entry.mode.kind() {
            gix::objs::tree::EntryKind::Blob | gix::objs::tree::EntryKind::BlobExecutable => {
                read_blob(&repo, entry.oid.to_owned(), name, limits).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The work tree directory, when the repo has one.
    pub fn work_dir(&self) -> Option<PathBuf> {
        self.repo.work_dir().map(Path::to_path_buf)
    }

    /// The commit `HEAD` points to (for a cached clone: the remote's `HEAD`
    /// as of the last fetch); `None` when unborn.
    pub fn head_commit(&self) -> Option<String> {
        let repo = self.local();
        if self.origin.is_some()
            && let Ok(Some(mut r)) = repo.try_find_reference("refs/remotes/origin/HEAD")
            && let Ok(c) = r.peel_to_commit()
        {
            return Some(c.id.to_string());
        }
        let mut head = repo.head().ok()?;
        head.peel_to_commit().ok().map(|c| c.id.to_string())
    }

    /// The repository's git directory (for a cached clone: the cache entry).
    pub fn git_dir(&self) -> &Path {
        self.repo.path()
    }

    /// What the repo is known as wherever it is checked out
    /// ([`super::identity`]): the URL of its `origin` (the URL a cached
    /// clone was made from), else its own location.
    pub fn identity(&self) -> String {
        let origin = match &self.origin {
            Some(o) => Some(o.url.clone()),
            None => self.local().find_remote(ORIGIN).ok().and_then(|r| {
                r.url(Direction::Fetch)
                    .map(|u| u.to_bstring().to_str_lossy().into_owned())
            }),
        };
        let location = self.work_dir().unwrap_or_else(|| self.git_dir().to_owned());
        super::identity(origin.as_deref(), &location)
    }

    /// A handle for this thread. No object cache: a snapshot reads each
    /// object once (measured: no faster with one), and the pack delta cache
    /// of `max-performance` is on regardless.
    fn local(&self) -> gix::Repository {
        self.repo.to_thread_local()
    }
}

/// Reads the tree `tree_id` (recursively, without recursion on the stack)
/// into a [`RawTree`] of blob ids; symlink targets are read here. Fails when
/// it holds more than `limits.max_files` files or directories, or breaks a
/// path limit (checked before each path is built).
pub(crate) fn read_tree(
    repo: &gix::Repository,
    tree_id: gix::ObjectId,
    limits: Limits,
) -> Result<RawTree<gix::ObjectId>, SourceError> {
    let mut raw = RawTree::new();
    let mut pending: Vec<(gix::ObjectId, String)> = vec![(tree_id, String::new())];
    while let Some((id, dir)) = pending.pop() {
        let tree = repo.find_tree(id).map_err(|e| {
            git_error(
                format!("read tree `{}`", if dir.is_empty() { "." } else { &dir }),
                &e,
            )
        })?;
        let decoded = tree.decode().map_err(|e| {
            git_error(
                format!("decode tree `{}`", if dir.is_empty() { "." } else { &dir }),
                &e,
            )
        })?;
        for entry in &decoded.entries {
            raw.admit(&dir, &entry.filename.to_str_lossy(), &limits)?;
            let path = entry_path(&dir, entry.filename)?;
            match entry.mode.kind() {
                gix::objs::tree::EntryKind::Tree => {
                    raw.add_dir(path.clone());
                    pending.push((entry.oid.to_owned(), path));
                }
                gix::objs::tree::EntryKind::Blob => {
                    raw.add_file(path, entry.oid.to_owned(), false);
                }
                gix::objs::tree::EntryKind::BlobExecutable => {
                    raw.add_file(path, entry.oid.to_owned(), true);
                }
                gix::objs::tree::EntryKind::Link => {
                    let text = read_blob(repo, entry.oid.to_owned(), &path, limits)?;
                    let text = String::from_utf8(text).map_err(|_| SourceError::BadPath {
                        path: path.clone(),
                        reason: "symlink target is not valid UTF-8",
                    })?;
                    raw.add_link(path, text);
                }
                // Submodules are not part of the desired state.
                gix::objs::tree::EntryKind::Commit => {}
            }
        }
        if raw.entry_count() > limits.max_files || raw.dir_count() > limits.max_files {
            return Err(SourceError::TooManyFiles {
                limit: limits.max_files,
            });
        }
    }
    Ok(raw)
}

/// The repo path of entry `name` in directory `dir`; rejects names that
/// could not come from a sane checkout.
fn entry_path(dir: &str, name: &BStr) -> Result<String, SourceError> {
    let join = |name: &str| {
        if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        }
    };
    let Ok(name) = name.to_str() else {
        return Err(SourceError::BadPath {
            path: join(&name.to_str_lossy()),
            reason: "file name is not valid UTF-8",
        });
    };
    let reason = if name.is_empty() || name == "." || name == ".." {
        Some("file name is empty, `.` or `..`")
    } else if name.contains(['/', '\\', '\0']) {
        Some("file name contains `/`, `\\` or NUL")
    } else if name.eq_ignore_ascii_case(".git") {
        Some("`.git` is reserved")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SourceError::BadPath {
            path: join(name),
            reason,
        }),
        None => Ok(join(name)),
    }
}

/// Reads blob `oid` of `path`, checking its size from the object header
/// before loading it.
fn read_blob(
    repo: &gix::Repository,
    oid: gix::ObjectId,
    path: &str,
    limits: Limits,
) -> Result<Vec<u8>, SourceError> {
    let header = repo
        .find_header(oid)
        .map_err(|e| git_error(format!("read `{path}`"), &e))?;
    if header.size() > limits.max_file_bytes {
        return Err(SourceError::FileTooLarge {
            path: path.to_owned(),
            size: header.size(),
            limit: limits.max_file_bytes,
        });
    }
    let mut blob = repo
        .find_blob(oid)
        .map_err(|e| git_error(format!("read `{path}`"), &e))?;
    Ok(blob.take_data())
}

/// Initialises a bare repo at `dir`, records `origin` in its config and
/// fetches into it.
fn clone_into(dir: &Path, origin: &Origin) -> Result<(), SourceError> {
    let context = || format!("clone {}", redact(&origin.url));
    let repo = gix::ThreadSafeRepository::init_opts(
        dir,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        gix::open::Options::isolated(),
    )
    .map_err(|e| git_error(context(), &e))?
    .to_thread_local();
    save_origin(&repo, &origin.url).map_err(|e| git_error(context(), &*e))?;
    fetch_into(repo, origin)
}

/// The commit `reference` names on the remote at `url` now — a branch, a
/// tag (peeled), a full ref name, or the remote's `HEAD` when `None` —
/// asked with one ref listing, as `git ls-remote` does, fetching nothing
/// (blocking: run it in `spawn_blocking`). gix needs a repository to
/// talk through: an empty bare one in the temp directory, removed after.
/// ssh runs in batch mode (no prompt); no credentials are sent over https.
pub fn ls_remote(url: &str, reference: Option<&str>) -> Result<String, SourceError> {
    let context = || format!("list the refs of {}", redact(url));
    let dir = std::env::temp_dir().join(format!(
        "driftless-ls-remote-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    let result = (|| {
        let mut repo = gix::ThreadSafeRepository::init_opts(
            &dir,
            gix::create::Kind::Bare,
            gix::create::Options::default(),
            gix::open::Options::isolated(),
        )
        .map_err(|e| git_error(context(), &e))?
        .to_thread_local();
        let mut config = repo.config_snapshot_mut();
        config
            .set_value(
                &gix::config::tree::Core::SSH_COMMAND,
                "ssh -o BatchMode=yes",
            )
            .map_err(|e| git_error(context(), &e))?;
        config.commit().map_err(|e| git_error(context(), &e))?;
        let remote = repo
            .remote_at(url)
            .and_then(|r| r.with_refspecs(FETCH_REFSPECS, Direction::Fetch))
            .map_err(|e| git_error(context(), &e))?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| git_error(context(), &e))?
            .with_credentials(credentials(None, None));
        let (map, _) = connection
            .ref_map(
                gix::progress::Discard,
                gix::remote::ref_map::Options {
                    prefix_from_spec_as_filter_on_remote: false,
                    ..Default::default()
                },
            )
            .map_err(|e| git_error(context(), &e))?;
        pick_ref(&map.remote_refs, reference).ok_or_else(|| {
            SourceError::Git(format!(
                "{}: no branch or tag `{}`",
                context(),
                reference.unwrap_or("HEAD")
            ))
        })
    })();
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// The commit `reference` names among a remote's refs: `refs/heads/<r>`
/// before `refs/tags/<r>` (an annotated tag peeled), a full name as it is,
/// `HEAD` for `None`.
fn pick_ref(refs: &[gix::protocol::handshake::Ref], reference: Option<&str>) -> Option<String> {
    use gix::protocol::handshake::Ref;
    let names: Vec<String> = match reference {
        None => vec!["HEAD".to_owned()],
        Some(r) if r.starts_with("refs/") || r == "HEAD" => vec![r.to_owned()],
        Some(r) => vec![format!("refs/heads/{r}"), format!("refs/tags/{r}")],
    };
    names.iter().find_map(|name| {
        refs.iter().find_map(|r| {
            let (full, commit) = match r {
                Ref::Peeled {
                    full_ref_name,
                    object,
                    ..
                }
                | Ref::Direct {
                    full_ref_name,
                    object,
                }
                | Ref::Symbolic {
                    full_ref_name,
                    object,
                    ..
                } => (full_ref_name, Some(object)),
                Ref::Unborn { full_ref_name, .. } => (full_ref_name, None),
            };
            (full.as_slice() == name.as_bytes()).then(|| commit.map(ToString::to_string))?
        })
    })
}

/// Writes `[remote "origin"]` (url and refspecs, never credentials) to the
/// repo's config file, so `git -C <cache> remote -v` tells what it is.
fn save_origin(
    repo: &gix::Repository,
    url: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = repo.path().join("config");
    let mut config =
        gix::config::File::from_path_no_includes(path.clone(), gix::config::Source::Local)?;
    let mut remote = repo
        .remote_at(url)?
        .with_refspecs(FETCH_REFSPECS, Direction::Fetch)?
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    remote.save_as_to(ORIGIN, &mut config)?;
    let mut file = std::fs::File::create(&path)?;
    config.write_to(&mut file)?;
    Ok(())
}

/// Fetches `origin` into `repo` with its authentication.
fn fetch_into(mut repo: gix::Repository, origin: &Origin) -> Result<(), SourceError> {
    let url = redact(&origin.url);
    let context = || format!("fetch {ORIGIN} ({url})");
    let token = match &origin.auth {
        Auth::Token { env_var } => Some(read_token(env_var, &origin.url)?),
        Auth::SshKey { path } => {
            let command = ssh_command(path, &origin.known_hosts)?;
            let mut config = repo.config_snapshot_mut();
            config
                .set_value(&gix::config::tree::Core::SSH_COMMAND, command.as_str())
                .and_then(|_| config.set_value(&gix::config::tree::Ssh::VARIANT, "ssh"))
                .map_err(|e| git_error(format!("{}: configure ssh", context()), &e))?;
            config
                .commit()
                .map_err(|e| git_error(format!("{}: configure ssh", context()), &e))?;
            None
        }
        Auth::None => None,
    };
    let remote = repo
        .remote_at(origin.url.as_str())
        .and_then(|r| r.with_refspecs(FETCH_REFSPECS, Direction::Fetch))
        .map_err(|e| git_error(context(), &e))?
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    let connection = remote
        .connect(Direction::Fetch)
        .map_err(|e| git_error(context(), &e))?;
    let connection = connection.with_credentials(credentials(token, url_user(&origin.url)));
    let interrupt = AtomicBool::new(false);
    connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| git_error(context(), &e))?
        .receive(gix::progress::Discard, &interrupt)
        .map_err(|e| git_error(context(), &e))?;
    Ok(())
}

/// The credentials callback of a fetch: the token (or nothing) is the only
/// answer ever given. Never the configured helpers, never a prompt: the
/// daemon has no terminal.
fn credentials(
    token: Option<String>,
    default_user: Option<String>,
) -> impl FnMut(
    gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    use gix::credentials::helper::{Action, NextAction};
    use gix::credentials::protocol::Outcome;
    move |action| match (action, &token) {
        (Action::Get(ctx), Some(token)) => {
            let username = ctx
                .username
                .clone()
                .or_else(|| default_user.clone())
                .unwrap_or_else(|| "x-access-token".to_owned());
            Ok(Some(Outcome {
                identity: gix::sec::identity::Account {
                    username,
                    password: token.clone(),
                    oauth_refresh_token: None,
                },
                next: NextAction::from(ctx),
            }))
        }
        _ => Ok(None),
    }
}

/// Validates `url` for [`Repo::open_remote`] and returns the form that is
/// hashed and stored: plain paths made absolute, no password.
fn checked_url(url: &str, auth: &Auth) -> Result<String, SourceError> {
    let bad = |why: &str| SourceError::Git(format!("remote url `{}`: {why}", redact(url)));
    let parsed = gix::url::parse(url.as_bytes().as_bstr()).map_err(|e| bad(&chain(&e)))?;
    if parsed.password().is_some() {
        return Err(bad(
            "holds a password; put the token in an environment variable and use `token_env`",
        ));
    }
    let url = match parsed.scheme {
        gix::url::Scheme::File if !url.starts_with("file://") => {
            let path = absolute(Path::new(url))?;
            path.to_str()
                .ok_or_else(|| bad("path is not valid UTF-8"))?
                .to_owned()
        }
        _ => url.to_owned(),
    };
    match (&parsed.scheme, auth) {
        (gix::url::Scheme::Https, Auth::Token { .. })
        | (gix::url::Scheme::Ssh, Auth::SshKey { .. }) => {}
        (_, Auth::None) => {}
        (gix::url::Scheme::Http, Auth::Token { .. }) => {
            return Err(bad("a token is only sent over https, never plain http"));
        }
        (_, Auth::Token { .. }) => return Err(bad("token authentication needs an https url")),
        (_, Auth::SshKey { .. }) => return Err(bad("an ssh key needs an ssh url")),
    }
    Ok(url)
}

/// Fails early, with a message naming what is missing, when `auth` cannot work.
fn check_auth(url: &str, auth: &Auth) -> Result<(), SourceError> {
    match auth {
        Auth::None => Ok(()),
        Auth::Token { env_var } => read_token(env_var, url).map(drop),
        Auth::SshKey { path } => match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => Err(SourceError::Git(format!(
                "ssh key {} for {}: not a file",
                path.display(),
                redact(url)
            ))),
            Err(source) => Err(SourceError::Io {
                path: format!("ssh key {}", path.display()),
                source,
            }),
        },
    }
}

fn read_token(env_var: &str, url: &str) -> Result<String, SourceError> {
    match std::env::var(env_var) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        Ok(_) => Err(SourceError::Git(format!(
            "environment variable `{env_var}` is empty; it must hold the token for {}",
            redact(url)
        ))),
        Err(_) => Err(SourceError::Git(format!(
            "environment variable `{env_var}` is not set; it must hold the token for {}",
            redact(url)
        ))),
    }
}

/// The user name in an https url, if any.
fn url_user(url: &str) -> Option<String> {
    gix::url::parse(url.as_bytes().as_bstr())
        .ok()
        .and_then(|u| u.user().map(str::to_owned))
}

/// The `core.sshCommand` for a deploy key. gix runs it through `sh -c`, so
/// every word is single-quoted.
fn ssh_command(key: &Path, known_hosts: &Path) -> Result<String, SourceError> {
    let key = absolute(key)?;
    let utf8 = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| SourceError::BadPath {
                path: p.display().to_string(),
                reason: "ssh key and cache paths must be valid UTF-8",
            })
    };
    let key = utf8(&key)?;
    let known_hosts = utf8(known_hosts)?;
    if known_hosts.contains(['"', '\n']) {
        return Err(SourceError::BadPath {
            path: known_hosts,
            reason: "cache directory path must not contain `\"` or a newline",
        });
    }
    let words = [
        "ssh".to_owned(),
        "-i".to_owned(),
        key,
        "-o".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
        "-o".to_owned(),
        "BatchMode=yes".to_owned(),
        "-o".to_owned(),
        "StrictHostKeyChecking=accept-new".to_owned(),
        "-o".to_owned(),
        // ssh splits this value on spaces unless it is double-quoted.
        format!("UserKnownHostsFile=\"{known_hosts}\""),
    ];
    Ok(words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" "))
}

/// Quotes `word` for `sh`: inside single quotes nothing is special except
/// the single quote itself.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The cache directory name of `url`: 32 hex digits of its SHA-256.
fn cache_key(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    // scheme://user:password@host/… : blank out between the first `:` after
    // `//` and the last `@` before the path.
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..rest_start],
            &userinfo[..colon],
            &url[rest_start + at..]
        ),
        None => url.to_owned(),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, SourceError> {
    std::path::absolute(path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// `context: error: cause: …`, skipping a cause that repeats its parent.
pub(crate) fn git_error(
    context: impl fmt::Display,
    err: &(dyn std::error::Error + 'static),
) -> SourceError {
    SourceError::Git(format!("{context}: {}", chain(err)))
}

/// The I/O error somewhere in `e`'s chain of causes, if any.
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_ref_finds_branches_before_tags_and_peels_annotated_tags() {
        use gix::protocol::handshake::Ref;
        let id = |c: char| gix::ObjectId::from_hex(c.to_string().repeat(40).as_bytes()).unwrap();
        let refs = vec![
            Ref::Symbolic {
                full_ref_name: "HEAD".into(),
                target: "refs/heads/main".into(),
                tag: None,
                object: id('a'),
            },
            Ref::Direct {
                full_ref_name: "refs/heads/main".into(),
                object: id('a'),
            },
            Ref::Direct {
                full_ref_name: "refs/heads/v1".into(),
                object: id('b'),
            },
            Ref::Peeled {
                full_ref_name: "refs/tags/v1".into(),
                tag: id('c'),
                object: id('d'),
            },
            Ref::Peeled {
                full_ref_name: "refs/tags/v2".into(),
                tag: id('e'),
                object: id('f'),
            },
        ];
        let pick = |r: Option<&str>| pick_ref(&refs, r).map(|c| c[..1].to_owned());
        assert_eq!(pick(None).as_deref(), Some("a"));
        assert_eq!(pick(Some("main")).as_deref(), Some("a"));
        assert_eq!(pick(Some("v1")).as_deref(), Some("b"), "the branch wins");
        assert_eq!(pick(Some("refs/tags/v1")).as_deref(), Some("d"), "peeled");
        assert_eq!(pick(Some("v2")).as_deref(), Some("f"));
        assert_eq!(pick(Some("gone")), None);
    }

    #[test]
    fn repo_can_move_into_spawn_blocking() {
        fn send_sync_static<T: Send + Sync + 'static>() {}
        send_sync_static::<Repo>();
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("https://bob:s3cret@example.com/x.git"),
            "https://bob:***@example.com/x.git"
        );
        assert_eq!(
            redact("https://bob@example.com/x.git"),
            "https://bob@example.com/x.git"
        );
        assert_eq!(redact("/srv/repo.git"), "/srv/repo.git");
        assert_eq!(redact("https://example.com/a@b"), "https://example.com/a@b");
    }

    #[test]
    fn urls_with_passwords_are_refused_without_echoing_them() {
        let err = checked_url("https://bob:s3cret@example.com/x.git", &Auth::None).unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(msg.contains("password"), "{msg}");
    }

    #[test]
    fn auth_must_match_the_url_scheme() {
        let token = Auth::Token {
            env_var: "X".into(),
        };
        assert!(checked_url("https://example.com/x.git", &token).is_ok());
        assert!(checked_url("http://example.com/x.git", &token).is_err());
        assert!(checked_url("ssh://git@example.com/x.git", &token).is_err());
        let key = Auth::SshKey { path: "/k".into() };
        assert!(checked_url("ssh://git@example.com/x.git", &key).is_ok());
        assert!(checked_url("git@example.com:x.git", &key).is_ok());
        assert!(checked_url("https://example.com/x.git", &key).is_err());
    }

    #[test]
    fn plain_paths_are_made_absolute() {
        let url = checked_url("some/relative.git", &Auth::None).unwrap();
        assert!(Path::new(&url).is_absolute(), "{url}");
        assert!(url.ends_with("some/relative.git"));
    }

    #[test]
    fn missing_or_empty_token_variable_is_a_clear_error() {
        let var = "DRIFTLESS_TEST_TOKEN_THAT_IS_NEVER_SET";
        let err = read_token(var, "https://example.com/x.git").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(var) && msg.contains("not set"), "{msg}");
        let err = Repo::open_remote(
            "https://example.com/x.git",
            Path::new("/nonexistent/cache"),
            &Auth::Token {
                env_var: var.into(),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains(var), "{err}");
    }

    #[test]
    fn missing_ssh_key_is_a_clear_error() {
        let err = Repo::open_remote(
            "ssh://git@example.com/x.git",
            Path::new("/nonexistent/cache"),
            &Auth::SshKey {
                path: "/nonexistent/deploy_key".into(),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/deploy_key"), "{err}");
    }

    #[test]
    fn ssh_command_quotes_every_word() {
        let cmd = ssh_command(
            Path::new("/keys/it's key"),
            Path::new("/cache dir/known_hosts"),
        )
        .unwrap();
        assert_eq!(
            cmd,
            r#"'ssh' '-i' '/keys/it'\''s key' '-o' 'IdentitiesOnly=yes' '-o' 'BatchMode=yes' '-o' 'StrictHostKeyChecking=accept-new' '-o' 'UserKnownHostsFile="/cache dir/known_hosts"'"#
        );
        // And `sh` turns it back into exactly those words.
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf '%s\\n' {cmd}")])
            .output()
            .unwrap();
        let words: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(words[2], "/keys/it's key");
        assert_eq!(words[10], "UserKnownHostsFile=\"/cache dir/known_hosts\"");
    }

    #[test]
    fn cache_key_is_stable_and_filename_safe() {
        let a = cache_key("https://example.com/x.git");
        assert_eq!(a, cache_key("https://example.com/x.git"));
        assert_ne!(a, cache_key("https://example.com/y.git"));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    /// Answers every request with `401 Basic`, as a server wanting a token.
    fn http_server_wanting_auth() -> u16 {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(6) {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let response = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                stream.write_all(response.as_bytes()).ok();
            }
        });
        port
    }

    #[test]
    fn a_server_asking_for_credentials_gets_the_token_from_the_callback() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A variable every test process has, standing in for the token.
        let env_var = "PATH";
        let token = std::env::var(env_var).unwrap();
        let port = http_server_wanting_auth();
        let tmp = tempfile::TempDir::new().unwrap();
        let repo = gix::ThreadSafeRepository::init_opts(
            tmp.path(),
            gix::create::Kind::Bare,
            gix::create::Options::default(),
            gix::open::Options::isolated(),
        )
        .unwrap()
        .to_thread_local();
        // Plain http, to a local fake server: gix asks our callback for
        // credentials, gets the token, then refuses to send it in clear
        // text (as `open_remote` would have refused the url).
        let origin = Origin {
            url: format!("http://127.0.0.1:{port}/team/state.git"),
            auth: Auth::Token {
                env_var: env_var.into(),
            },
            known_hosts: tmp.path().join("known_hosts"),
        };
        let err = fetch_into(repo, &origin).unwrap_err().to_string();
        assert!(err.starts_with("fetch origin (http://127.0.0.1:"), "{err}");
        assert!(err.contains("clear text"), "{err}");
        assert!(!err.contains(&token), "{err}");
        let config = std::fs::read_to_string(tmp.path().join("config")).unwrap();
        assert!(!config.contains(&token), "{config}");
    }

    #[test]
    fn the_credentials_callback_answers_with_the_token() {
        use gix::credentials::helper::Action;
        let mut callback = credentials(Some("t0ken".into()), None);
        let ctx = gix::credentials::protocol::Context {
            url: Some("https://example.com/x.git".into()),
            ..Default::default()
        };
        let outcome = callback(Action::Get(ctx.clone())).unwrap().unwrap();
        assert_eq!(outcome.identity.username, "x-access-token");
        assert_eq!(outcome.identity.password, "t0ken");
        // The user name from the url wins over the default.
        let mut callback = credentials(Some("t0ken".into()), Some("oauth2".into()));
        let outcome = callback(Action::Get(ctx.clone())).unwrap().unwrap();
        assert_eq!(outcome.identity.username, "oauth2");
        // Store/erase are no-ops, and without a token nothing is offered.
        assert!(callback(Action::Store("x".into())).unwrap().is_none());
        let mut none = credentials(None, None);
        assert!(none(Action::Get(ctx)).unwrap().is_none());
    }

    #[test]
    fn ssh_fetch_runs_ssh_with_the_deploy_key() {
        let tmp = tempfile::TempDir::new().unwrap();
        let key = tmp.path().join("deploy key");
        std::fs::write(&key, "not really a key").unwrap();
        let auth = Auth::SshKey { path: key };
        // Port 1 on localhost: nothing listens, ssh fails at once.
        let err = Repo::open_remote(
            "ssh://git@127.0.0.1:1/state.git",
            &tmp.path().join("cache"),
            &auth,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("fetch origin (ssh://git@127.0.0.1:1/state.git)"),
            "{err}"
        );
        assert!(
            err.contains("ssh: connect to host 127.0.0.1 port 1"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("cache"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn odd_tree_entry_names_are_rejected() {
        assert_eq!(entry_path("a", "b".into()).unwrap(), "a/b");
        assert_eq!(entry_path("", "b".into()).unwrap(), "b");
        for name in ["..", ".", "", "a\\b", ".git", ".GIT"] {
            assert!(
                matches!(
                    entry_path("d", name.into()),
                    Err(SourceError::BadPath { .. })
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            entry_path("d", b"\xff".as_bstr()),
            Err(SourceError::BadPath { .. })
        ));
    }
}
