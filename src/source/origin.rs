//! Where the desired-state repo is: a local work tree, a local repo pinned
//! to a revision, or a remote cloned into a cache. [`Source`] answers the two
//! questions the pipeline asks: "which snapshot lists the environments?" and
//! "which snapshot does this environment's branch hold?".

use std::path::{Path, PathBuf};

use super::git::{Auth, Repo};
use super::{CommitId, Limits, Revision, Snapshot, SourceError, worktree};

/// The commit whose `driftless.yaml` lists the environments: the pinned
/// one (resolved when the source was opened), else the default branch
/// (`HEAD`, else `main`).
fn root_commit(repo: &Repo, pinned: &Option<String>) -> Result<String, SourceError> {
    match pinned {
        Some(commit) => Ok(commit.clone()),
        None => repo.resolve("HEAD").or_else(|_| repo.resolve("main")),
    }
}

/// The repo at `path` when it is a bare one (`HEAD` and `objects/` at its
/// top, no work tree).
fn bare_repo(path: &Path) -> Option<Repo> {
    if !(path.join("HEAD").is_file() && path.join("objects").is_dir()) {
        return None;
    }
    Repo::open(path).ok().filter(|r| r.work_dir().is_none())
}

/// An opened desired-state repo.
pub enum Source {
    /// A local directory read as it is, uncommitted edits included.
    WorkTree { root: PathBuf },
    /// A Git repo; `pinned` is a revision every environment is read at
    /// (`--rev`), else each environment reads its own branch.
    Git {
        repo: Box<Repo>,
        pinned: Option<String>,
    },
}

impl Source {
    /// Opens `--repo` (a path or URL) with an optional `--rev`. A local path
    /// without a revision is read as a work tree, or, when it is a bare repo,
    /// at its `HEAD` (environments at their branches), as a remote is.
    pub fn open(
        repo: &str,
        rev: Option<&str>,
        cache_dir: &Path,
        auth: &Auth,
    ) -> Result<Source, SourceError> {
        let is_url = repo.contains("://")
            || (repo.contains('@') && repo.contains(':') && !Path::new(repo).exists());
        if !is_url {
            let path = Path::new(repo);
            if !path.exists() {
                return Err(SourceError::Io {
                    path: repo.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                });
            }
            return match rev {
                None => match bare_repo(path) {
                    // A bare repo has no files to read as they are: it is
                    // read as a remote is, `HEAD` and each environment's
                    // branch.
                    Some(repo) => Ok(Source::Git {
                        repo: Box::new(repo),
                        pinned: None,
                    }),
                    None => Ok(Source::WorkTree {
                        root: path.to_owned(),
                    }),
                },
                Some(rev) => {
                    let repo = Repo::open(path)?;
                    let commit = repo.resolve(rev)?;
                    Ok(Source::Git {
                        repo: Box::new(repo),
                        pinned: Some(commit),
                    })
                }
            };
        }
        let repo = Repo::open_remote(repo, cache_dir, auth)?;
        repo.fetch()?;
        let pinned = rev.map(|r| repo.resolve(r)).transpose()?;
        Ok(Source::Git {
            repo: Box::new(repo),
            pinned,
        })
    }

    /// The same repo pinned to `commit`: every environment is read at it
    /// (a work tree through its Git repository).
    pub fn at(&self, commit: &CommitId) -> Result<Source, SourceError> {
        let repo = match self {
            Source::WorkTree { root } => Repo::open(root)?,
            Source::Git { repo, .. } => (**repo).clone(),
        };
        Ok(Source::Git {
            repo: Box::new(repo),
            pinned: Some(commit.to_string()),
        })
    }

    /// What the repo is known as ([`super::identity`]): the same for a
    /// clone on a laptop and the URL a daemon follows.
    pub fn identity(&self) -> String {
        match self {
            Source::WorkTree { root } => match Repo::open(root) {
                Ok(repo) => repo.identity(),
                Err(_) => super::identity(None, root),
            },
            Source::Git { repo, .. } => repo.identity(),
        }
    }

    /// The snapshot whose `driftless.yaml` lists the environments: the work
    /// tree, the pinned commit, or the default branch (`HEAD`, else `main`).
    pub fn root_snapshot(&self, limits: Limits) -> Result<Snapshot, SourceError> {
        match self {
            Source::WorkTree { root } => worktree::snapshot(root, limits),
            Source::Git { repo, pinned } => repo.snapshot(&root_commit(repo, pinned)?, limits),
        }
    }

    /// A snapshot holding what is needed to read `path` at the root
    /// revision: for a Git repo whose root holds `path` as a regular file,
    /// only that file (one tree and one blob read, whatever else the commit
    /// holds); otherwise the whole [`Source::root_snapshot`].
    pub fn root_file_snapshot(&self, path: &str, limits: Limits) -> Result<Snapshot, SourceError> {
        let Source::Git { repo, pinned } = self else {
            return self.root_snapshot(limits);
        };
        let commit = root_commit(repo, pinned)?;
        match repo.root_file(&commit, path, limits)? {
            Some(content) => Ok(Snapshot::from_files(
                Revision::Commit { id: commit },
                [(path.to_owned(), content)],
            )),
            None => repo.snapshot(&commit, limits),
        }
    }

    /// The snapshot of an environment's branch, or `None` when the root
    /// snapshot is the one to use (work tree or pinned revision).
    pub fn snapshot_for_branch(
        &self,
        branch: &str,
        limits: Limits,
    ) -> Result<Option<Snapshot>, SourceError> {
        match self {
            Source::WorkTree { .. }
            | Source::Git {
                pinned: Some(_), ..
            } => Ok(None),
            Source::Git { repo, pinned: None } => {
                let commit = repo.resolve(branch)?;
                repo.snapshot(&commit, limits).map(Some)
            }
        }
    }
}
