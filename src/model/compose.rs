//! The Compose model: a project with every service fully resolved
//! (interpolated, `extends` merged, `env_file` read, short syntax expanded),
//! so the backend never reads the repo again and the config hash is a pure
//! function of this data.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::Origin;

/// One Compose project: a Compose file with what it includes and the
/// files merged over it.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Project {
    /// Project name (`COMPOSE_PROJECT_NAME`, `name:` in the file, else
    /// derived from the file name and the environment); `[a-z0-9][a-z0-9_-]*`.
    pub name: String,
    /// The enabled services: those with no `profiles`, or one that is active.
    pub services: BTreeMap<String, Service>,
    /// Services whose profiles are all inactive, with those profiles: never
    /// created, and their containers never pruned as orphans (as Compose).
    pub disabled_services: BTreeMap<String, Vec<String>>,
    pub networks: BTreeMap<String, Network>,
    pub volumes: BTreeMap<String, Volume>,
    pub origin: Origin,
}

impl Project {
    /// Every profile a service of the project names, enabled or not.
    pub fn defined_profiles(&self) -> std::collections::BTreeSet<&str> {
        self.services
            .values()
            .flat_map(|s| s.profiles.iter())
            .chain(self.disabled_services.values().flatten())
            .map(String::as_str)
            .collect()
    }
}

/// A fully resolved service.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Service {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `None` value: passed through from the engine's environment (`KEY` alone).
    pub environment: BTreeMap<String, Option<String>>,
    pub ports: Vec<Port>,
    pub expose: Vec<String>,
    pub volumes: Vec<Mount>,
    /// Files from the repo delivered into the container before it starts
    /// (relative bind mounts of files, and `configs`).
    pub files: Vec<FileMount>,
    /// Network name (project-level key) → attachment. Empty with no
    /// `network_mode`: the project's `default` network.
    pub networks: BTreeMap<String, ServiceNetwork>,
    pub network_mode: Option<String>,
    pub depends_on: BTreeMap<String, Dependency>,
    pub healthcheck: Option<Healthcheck>,
    pub restart: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub container_name: Option<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub hostname: Option<String>,
    pub extra_hosts: Vec<String>,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub privileged: bool,
    pub init: Option<bool>,
    pub stop_signal: Option<String>,
    #[serde(serialize_with = "crate::duration::serialize_opt")]
    pub stop_grace_period: Option<Duration>,
    pub ulimits: BTreeMap<String, Ulimit>,
    pub logging: Option<Logging>,
    pub resources: Resources,
    /// `deploy.replicas` (default 1).
    pub replicas: u32,
    pub profiles: Vec<String>,
    pub origin: Origin,
}

impl Service {
    /// A config file the engine cannot deliver: the service is `read_only`
    /// and the file is not under a writable volume or bind mount (the
    /// engine's archive API refuses to write to a read-only root file system).
    pub fn unwritable_file(&self) -> Option<&str> {
        if !self.read_only {
            return None;
        }
        let mounts: Vec<&str> = self
            .volumes
            .iter()
            .filter_map(|m| match m {
                Mount::Volume {
                    target,
                    read_only: false,
                    ..
                }
                | Mount::Bind {
                    target,
                    read_only: false,
                    ..
                } => Some(target.as_str()),
                _ => None,
            })
            .collect();
        self.files.iter().map(|f| f.target.as_str()).find(|t| {
            !mounts.iter().any(|m| {
                t.strip_prefix(m.trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// Host IP to bind (`None`: all interfaces).
    pub host_ip: Option<String>,
    /// Published host port or range (`None`: ephemeral).
    pub published: Option<String>,
    pub target: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mount {
    /// A named volume (project-level key) or an anonymous one (`source: None`).
    Volume {
        source: Option<String>,
        target: String,
        read_only: bool,
    },
    /// A bind mount of an absolute host path (relative paths become
    /// [`FileMount`]s, delivered through the API).
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

/// A file from the repo placed into the container at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileMount {
    /// Absolute path in the container.
    pub target: String,
    /// Rendered repo path it came from (or `configs.<name>` for inline content).
    pub source: String,
    /// Content (part of the config hash).
    #[serde(with = "content")]
    pub content: Vec<u8>,
    /// Unix mode, default 0o444.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ServiceNetwork {
    pub aliases: Vec<String>,
    pub ipv4_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub condition: DependencyCondition,
    pub restart: bool,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    #[serde(serialize_with = "crate::duration::serialize_opt")]
    pub interval: Option<Duration>,
    #[serde(serialize_with = "crate::duration::serialize_opt")]
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    #[serde(serialize_with = "crate::duration::serialize_opt")]
    pub start_period: Option<Duration>,
    #[serde(serialize_with = "crate::duration::serialize_opt")]
    pub start_interval: Option<Duration>,
    pub disable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logging {
    pub driver: Option<String>,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Resources {
    pub limits: ResourceSet,
    pub reservations: ResourceSet,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ResourceSet {
    /// CPUs as a fraction (`0.5`).
    pub cpus: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Network {
    /// Name on the engine (default `<project>_<key>`).
    pub name: String,
    pub external: bool,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Volume {
    /// Name on the engine (default `<project>_<key>`).
    pub name: String,
    pub external: bool,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// File contents serialise as UTF-8 text when they are text, else base64, so
/// the canonical JSON (and the config hash) is stable and readable.
mod content {
    use base64::Engine as _;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_str(&format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )),
        }
    }
}
