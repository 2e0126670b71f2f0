//! The daemon's view of the desired-state repo: a local Git repo (bare or
//! not, read from its object database) or a remote one cloned into a cache,
//! with fetches serialised and coalesced.
//!
//! Every Git call blocks (gix), so each runs in `spawn_blocking`.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;

use super::config::SignaturePolicy;
use crate::manifest;
use crate::reconcile;
use crate::source::{Auth, CommitId, Limits, Repo, Source, SourceError, verify};

/// The repo a daemon follows.
#[derive(Debug)]
pub struct RepoHandle {
    repo: Repo,
    /// `true` for a cached clone of a URL: a pass fetches first.
    remote: bool,
    /// Start time of the last successful fetch; the lock serialises fetches.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    limits: Limits,
}

/// What the head of an environment's branch is, with the root manifest's
/// view of the environment.
#[derive(Debug, Clone)]
pub struct Head {
    pub commit: CommitId,
    pub environment: crate::manifest::Environment,
    /// The notifications the environment names, from the root manifest.
    pub notifications: Vec<(String, crate::manifest::Notification)>,
    pub prune_removed: bool,
}

/// Why the head of an environment could not be looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The repo could not be read (I/O, object database): try again.
    #[error("{0}")]
    Unreadable(String),
    /// The environment's branch does not exist (yet): nothing to deploy.
    #[error("{0}")]
    NoBranch(String),
    /// The default branch's `commit` holds a root manifest that does not
    /// load (it does not parse, or the commit breaks the source limits):
    /// a refusal of that commit, recorded like any invalid commit.
    #[error("commit {}: {message}", commit.short())]
    Invalid { commit: CommitId, message: String },
}

/// The outcome of looking an environment up at the head of the repo.
#[derive(Debug)]
pub enum Lookup {
    Found(Box<Head>),
    /// The root manifest no longer lists the environment.
    Removed {
        prune: bool,
    },
}

impl RepoHandle {
    /// Opens `location`: a local path is opened in place, a URL is cloned
    /// (or its cache opened) under `cache_dir`.
    pub fn open(
        location: &str,
        cache_dir: &std::path::Path,
        auth: &Auth,
        limits: Limits,
    ) -> Result<RepoHandle, SourceError> {
        let is_url = location.contains("://");
        let repo = if is_url {
            Repo::open_remote(location, cache_dir, auth)?
        } else {
            Repo::open(std::path::Path::new(location))?
        };
        Ok(RepoHandle {
            repo,
            remote: is_url,
            fetched: tokio::sync::Mutex::new(None),
            limits,
        })
    }

    /// The Git directory (watched for ref changes when local).
    pub fn git_dir(&self) -> PathBuf {
        self.repo.git_dir().to_owned()
    }

    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Fetches unless a fetch that started at or after `not_before` already
    /// succeeded (many triggers, one fetch). A no-op for local repos.
    pub async fn fetch(self: &Arc<Self>, not_before: Instant) -> Result<(), SourceError> {
        if !self.remote {
            return Ok(());
        }
        let mut last = self.fetched.lock().await;
        if last.is_some_and(|t| t >= not_before) {
            return Ok(());
        }
        let started = Instant::now();
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.repo.fetch())
            .await
            .map_err(|e| SourceError::Git(format!("fetch task: {e}")))??;
        *last = Some(started);
        Ok(())
    }

    /// A source that reads every environment at `commit`.
    pub fn at(&self, commit: &CommitId) -> Source {
        Source::Git {
            repo: Box::new(self.repo.clone()),
            pinned: Some(commit.to_string()),
        }
    }

    /// Resolves a revision (sha, short sha, branch, tag) to a commit id.
    pub async fn resolve(self: &Arc<Self>, rev: &str) -> Result<CommitId, SourceError> {
        let me = self.clone();
        let rev = rev.to_owned();
        tokio::task::spawn_blocking(move || me.repo.resolve(&rev).map(CommitId::new))
            .await
            .map_err(|e| SourceError::Git(format!("resolve task: {e}")))?
    }

    /// Reads the root manifest at the default branch (that file only, not
    /// the whole commit) and resolves `env`'s branch head.
    pub async fn head(self: &Arc<Self>, env: &str) -> Result<Lookup, HeadError> {
        let me = self.clone();
        let env = env.to_owned();
        tokio::task::spawn_blocking(move || {
            let unreadable = |e: SourceError| HeadError::Unreadable(e.to_string());
            let root = me
                .repo
                .resolve("HEAD")
                .or_else(|_| me.repo.resolve("main"))
                .map_err(unreadable)?;
            let source = Source::Git {
                repo: Box::new(me.repo.clone()),
                pinned: Some(root.clone()),
            };
            let invalid = |message: String| HeadError::Invalid {
                commit: CommitId::new(root.as_str()),
                message,
            };
            let snapshot = match source.root_file_snapshot(manifest::FILE, me.limits) {
                Ok(s) => s,
                Err(e @ (SourceError::Io { .. } | SourceError::Git(_))) => {
                    return Err(unreadable(e));
                }
                Err(e) => return Err(invalid(e.to_string())),
            };
            let manifest = reconcile::manifest_of(&snapshot).map_err(|d| invalid(d.to_string()))?;
            let Some(environment) = manifest.environments.get(&env) else {
                return Ok(Lookup::Removed {
                    prune: manifest.prune_removed_environments,
                });
            };
            let commit = match me.repo.resolve(&environment.branch) {
                Ok(c) => CommitId::new(c),
                Err(e @ SourceError::NoSuchRevision { .. }) => {
                    return Err(HeadError::NoBranch(e.to_string()));
                }
                Err(e) => return Err(unreadable(e)),
            };
            let notifications = environment
                .notify
                .iter()
                .filter_map(|n| {
                    manifest
                        .notifications
                        .get(n)
                        .map(|x| (n.clone(), x.clone()))
                })
                .collect();
            Ok(Lookup::Found(Box::new(Head {
                commit,
                environment: environment.clone(),
                notifications,
                prune_removed: manifest.prune_removed_environments,
            })))
        })
        .await
        .map_err(|e| HeadError::Unreadable(format!("manifest task: {e}")))?
    }

    /// Checks `commit` under `policy`: its own signature, a signed tag
    /// pointing at it, or both, against the policy's key files (read now,
    /// so a rotated file applies at once). The outer error is a check that
    /// could not run; the inner one the refusal, in words.
    pub async fn verify(
        self: &Arc<Self>,
        commit: &CommitId,
        policy: SignaturePolicy,
    ) -> Result<Result<Vec<verify::Accepted>, String>, String> {
        let me = self.clone();
        let commit = commit.to_string();
        tokio::task::spawn_blocking(move || {
            let keys = verify::Keys::load(policy.allowed_signers.as_deref(), &policy.openpgp_keys)
                .map_err(|e| e.to_string())?;
            let now = chrono::Utc::now().timestamp();
            verify::check(&me.repo, &commit, &keys, policy.mode, now).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("signature task: {e}"))?
    }

    /// The root manifest at the default branch.
    pub async fn root_manifest(self: &Arc<Self>) -> Result<crate::manifest::Manifest, String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let source = Source::Git {
                repo: Box::new(me.repo.clone()),
                pinned: None,
            };
            reconcile::manifest_only(&source, me.limits).map_err(|d| d.to_string())
        })
        .await
        .map_err(|e| format!("manifest task: {e}"))?
    }
}
