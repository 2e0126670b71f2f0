//! The desired state of one environment at one revision: plain data, no IO.
//!
//! [`crate::check`] builds a [`DesiredState`] from rendered files; backends
//! compare it with live systems. Everything here serialises to stable JSON
//! (maps are ordered) so it can be hashed, stored and diffed.

use serde::Serialize;

use crate::manifest::{Environment, Target};
use crate::source::Revision;

/// Everything one environment should be, at one revision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredState {
    pub environment: Environment,
    /// The ownership id every resource it deploys is labelled with
    /// ([`crate::manifest::instance`]; set by [`crate::reconcile::load`],
    /// which knows the repo, empty before).
    pub instance: String,
    pub revision: Revision,
    /// One entry per target of the environment, in manifest order.
    pub targets: Vec<TargetState>,
    /// Backup jobs of the environment (run by the daemon's scheduler).
    pub backups: Vec<BackupJob>,
}

/// What one target should hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetState {
    pub target: Target,
    pub resources: Resources,
}

/// The resources of a target; the variant matches the target's kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "items", rename_all = "snake_case")]
pub enum Resources {
    Compose(Vec<compose::Project>),
    Kubernetes(Vec<KubeObject>),
    Rules(Vec<RuleFile>),
}

impl Resources {
    /// Number of top-level resources (services, objects, rule files).
    pub fn count(&self) -> usize {
        match self {
            Resources::Compose(projects) => projects.iter().map(|p| p.services.len()).sum(),
            Resources::Kubernetes(objects) => objects.len(),
            Resources::Rules(files) => files.len(),
        }
    }
}

/// Where a piece of desired state came from, for error messages and the UI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// Rendered path (`.j2` dropped).
    pub file: String,
    /// 1-based line where the object starts (0 when unknown).
    pub line: u32,
}

/// One Kubernetes object from a manifest file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubeObject {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// Namespace as written; `None` for cluster-scoped objects or where the
    /// target's default namespace applies (decided by discovery).
    pub namespace: Option<String>,
    /// The whole object as written (after rendering).
    pub body: serde_json::Value,
    pub origin: Origin,
}

impl KubeObject {
    /// `Kind/namespace/name` or `Kind/name`.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.kind, ns, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

/// A Prometheus rule file, content as rendered, groups as parsed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleFile {
    /// File name in the target's rules directory.
    pub name: String,
    pub content: String,
    pub groups: Vec<String>,
    pub origin: Origin,
}

/// A backup job declared in the repo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupJob {
    pub name: String,
    /// Cron as the user wrote it (5, 6 or 7 fields, or `@daily`-style).
    pub schedule: String,
    /// IANA time zone name (default `UTC`).
    pub timezone: String,
    pub source: BackupSource,
    pub consistency: Consistency,
    pub compression: Compression,
    /// age recipients (public keys); empty: not encrypted.
    pub encryption_recipients: Vec<String>,
    pub destination: Destination,
    pub retention: Retention,
    pub verify: Verify,
    /// Run before each apply of the environment; its id is recorded with the deploy.
    pub before_apply: bool,
    /// Run once at start when a run was missed while the daemon was down.
    pub run_missed: bool,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupSource {
    /// A command run inside a service's container; its stdout is the backup.
    Exec {
        project: Option<String>,
        service: String,
        command: Vec<String>,
        /// Command that restores from the dump on stdin.
        restore_command: Option<Vec<String>>,
    },
    /// A named volume, archived as tar.
    Volume {
        project: Option<String>,
        volume: String,
        /// Service whose containers are paused/stopped for consistency.
        service: Option<String>,
    },
    /// A path inside a service's container, archived as tar.
    Path {
        project: Option<String>,
        service: String,
        path: String,
    },
    /// The rendered configuration of the environment.
    Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    None,
    Pause,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Destination {
    /// A directory on the daemon's host.
    Local { path: String },
    /// An S3-compatible bucket; credentials come from the daemon's environment.
    S3 {
        endpoint: String,
        bucket: String,
        prefix: String,
        region: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub keep_last: Option<u32>,
    #[serde(serialize_with = "crate::duration::serialize_opt")]
    pub max_age: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verify {
    /// Read back, check the checksum, decompress (default true).
    pub read_back: bool,
    /// Restore into a throwaway container and run this check.
    pub restore_test: Option<RestoreTest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreTest {
    pub image: String,
    pub command: Vec<String>,
    pub check: Vec<String>,
}

pub mod compose;
