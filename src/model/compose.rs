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
    /// Compose `secrets:`, delivered like [`Service::files`] (at
    /// `/run/secrets/<target>` by default) but never shown: the config hash
    /// and the readable definition carry a digest of each value, and every
    /// value is masked in output.
    pub secrets: Vec<FileMount>,
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
    /// `deploy.update_config`: how replicas are replaced on a recreate.
    #[serde(skip_serializing_if = "UpdateConfig::is_default")]
    pub update_config: UpdateConfig,
    /// `deploy.rollback_config`: the same for a rollback's recreate.
    #[serde(skip_serializing_if = "UpdateConfig::is_default")]
    pub rollback_config: UpdateConfig,
    pub profiles: Vec<String>,
    /// `tmpfs:` (`/run` or `/run:size=64m,mode=1777`): container path →
    /// mount options, as the engine's `HostConfig.Tmpfs` takes them.
    pub tmpfs: BTreeMap<String, String>,
    pub sysctls: BTreeMap<String, String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_opt: Vec<String>,
    pub domainname: Option<String>,
    /// The container's MAC address on its first network (`mac_address`).
    pub mac_address: Option<String>,
    /// `ipc`, `pid`, `uts`, `userns_mode` and `cgroup` (`host`, `private`,
    /// `shareable`, `service:<name>`, `container:<name>`).
    pub namespaces: Namespaces,
    pub cgroup_parent: Option<String>,
    pub group_add: Vec<String>,
    pub runtime: Option<String>,
    pub storage_opt: BTreeMap<String, String>,
    pub tty: bool,
    pub stdin_open: bool,
    /// `links` to services of the project, as (service, alias).
    pub links: Vec<(String, String)>,
    /// `external_links` to containers outside the project, as (container, alias).
    pub external_links: Vec<(String, String)>,
    pub volumes_from: Vec<VolumesFrom>,
    pub annotations: BTreeMap<String, String>,
    /// `platform` (`linux/amd64`): the image variant to pull and run.
    pub platform: Option<String>,
    pub pull_policy: PullPolicy,
    /// Commands run in each new container after it starts (`post_start`).
    pub post_start: Vec<Hook>,
    /// Commands run in a container before it is stopped (`pre_stop`).
    pub pre_stop: Vec<Hook>,
    /// Size of `/dev/shm` in bytes.
    pub shm_size: Option<u64>,
    pub oom_score_adj: Option<i64>,
    /// `build:`: the image is built from the commit, not pulled; `image`
    /// is then the name it is tagged with (`<project>-<service>` unless
    /// the file gives `image:`).
    pub build: Option<Build>,
    /// How the image follows its registry (`driftless.io/image-update`, or
    /// the environment's `image_updates`); `None`: it runs what its
    /// reference names, as pulled once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow: Option<Follow>,
    pub origin: Origin,
}

/// A service whose image follows its registry: the reference the repo
/// gives (`registry/app:stable`) and the policy. A revision pins the
/// service to one digest of it (`registry/app@sha256:…`), so [`Service::image`]
/// may name that digest while `reference` keeps the tag being followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Follow {
    pub policy: ImageUpdate,
    pub reference: String,
}

/// An image update policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageUpdate {
    /// The same tag, a new digest (Watchtower's and Komodo's meaning).
    Digest,
}

impl ImageUpdate {
    /// Parses a policy as the label and `image_updates` write it:
    /// `digest`; `semver:RANGE` and `regex:PATTERN` are refused as not
    /// supported yet, anything else as unknown.
    pub fn parse(text: &str) -> Result<ImageUpdate, String> {
        let text = text.trim();
        match text {
            "digest" => Ok(ImageUpdate::Digest),
            _ if text.starts_with("semver:") || text.starts_with("regex:") => Err(format!(
                "image update policy `{text}` is not supported yet: only `digest` (follow the tag's new digest) is"
            )),
            _ => Err(format!(
                "`{text}` is not an image update policy: use `digest` (follow the tag's new digest)"
            )),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ImageUpdate::Digest => "digest",
        }
    }
}

/// The label that sets a service's image update policy.
pub const IMAGE_UPDATE_LABEL: &str = "driftless.io/image-update";

/// How a service's image is built (`build:`), fully resolved: the context's
/// files are read from the commit's snapshot with `.dockerignore` applied,
/// so what is built is what is committed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Build {
    pub context: BuildContext,
    /// The Dockerfile's path in the context sent to the engine (a
    /// Dockerfile outside the context, or `dockerfile_inline`, is added to
    /// it under a generated `.dockerfile.<hash>` name, as the docker CLI does).
    pub dockerfile: String,
    /// Build arguments; an `args` entry without a value takes the project's
    /// variable of that name, and is left out when there is none.
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Network mode for `RUN` steps (`host`, `none`, `default`).
    pub network: Option<String>,
    pub extra_hosts: Vec<String>,
    /// More names for the built image (`build.tags`), besides `image`.
    pub tags: Vec<String>,
    pub shm_size: Option<u64>,
    pub cache_from: Vec<String>,
    pub no_cache: bool,
    /// Pull a newer base image even when one is present.
    pub pull: bool,
}

impl Build {
    /// A build of `context` with `dockerfile` and every option unset.
    pub fn new(context: BuildContext, dockerfile: impl Into<String>) -> Build {
        Build {
            context,
            dockerfile: dockerfile.into(),
            args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
            network: None,
            extra_hosts: Vec::new(),
            tags: Vec::new(),
            shm_size: None,
            cache_from: Vec::new(),
            no_cache: false,
            pull: false,
        }
    }
}

/// Where a build's context comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildContext {
    /// A directory of the commit (repo path, `""` for the root) and the
    /// files sent from it, paths relative to it.
    Snapshot {
        dir: String,
        #[serde(serialize_with = "serialize_context_files")]
        files: Vec<ContextFile>,
    },
    /// A git URL the engine fetches itself (the build API's `remote`).
    Remote { url: String },
}

/// One file of a build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    /// Path inside the context, `/`-separated.
    pub path: String,
    /// Unix mode the file is sent with: 0755 or 0644, or [`SYMLINK_MODE`]
    /// for a symlink, whose `content` is then its target text (as git
    /// stores a link).
    pub mode: u32,
    pub content: std::sync::Arc<[u8]>,
}

/// The mode of a symlink in a build context (`S_IFLNK | 0777`).
pub const SYMLINK_MODE: u32 = 0o120777;

impl ContextFile {
    /// The target text of a symlink; `None` for a regular file.
    pub fn link_target(&self) -> Option<&str> {
        (self.mode == SYMLINK_MODE)
            .then(|| std::str::from_utf8(&self.content).ok())
            .flatten()
    }
}

/// A context serialises as its file count and digest, never its contents.
fn serialize_context_files<S: serde::Serializer>(
    files: &[ContextFile],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!(
        "{} files, sha256:{}",
        files.len(),
        context_digest(files)
    ))
}

/// SHA-256 over a context's paths, modes and contents (hex).
pub fn context_digest(files: &[ContextFile]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in files {
        h.update((f.path.len() as u64).to_le_bytes());
        h.update(f.path.as_bytes());
        h.update(f.mode.to_le_bytes());
        h.update((f.content.len() as u64).to_le_bytes());
        h.update(&f.content);
    }
    hex::encode(h.finalize())
}

/// The namespaces a container shares or gets (`ipc`, `pid`, `uts`,
/// `userns_mode`, `cgroup`); `None` is the engine's default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Namespaces {
    pub ipc: Option<String>,
    pub pid: Option<String>,
    pub uts: Option<String>,
    pub userns_mode: Option<String>,
    /// `host` or `private` (the cgroup namespace).
    pub cgroup: Option<String>,
}

impl Namespaces {
    pub fn is_default(&self) -> bool {
        *self == Namespaces::default()
    }

    /// The services whose containers these namespaces join (`service:x`).
    pub fn services(&self) -> impl Iterator<Item = &str> {
        [&self.ipc, &self.pid]
            .into_iter()
            .flatten()
            .filter_map(|m| m.strip_prefix("service:"))
    }
}

/// `volumes_from`: the volumes of another service's first container, or of
/// a container outside the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumesFrom {
    /// A service of the project, or (`container: true`) a container name.
    pub source: String,
    pub container: bool,
    pub read_only: bool,
}

/// When to pull a service's image (`pull_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Pull when the image is not present (`missing`, `if_not_present`).
    #[default]
    Missing,
    /// Check the registry on every plan; pull when it holds another image.
    Always,
    /// Never pull: the image must be present.
    Never,
    /// Built by the project (`build`), never pulled.
    Build,
    /// Check the registry once the local image is older than this
    /// (`daily`, `weekly`, `every_12h`).
    #[serde(serialize_with = "serialize_refresh")]
    Refresh(Duration),
}

fn serialize_refresh<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("every {}", crate::duration::format(*d)))
}

/// A `post_start` / `pre_stop` hook: a command exec'd in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub command: Vec<String>,
    pub user: Option<String>,
    pub privileged: bool,
    pub working_dir: Option<String>,
    pub environment: BTreeMap<String, String>,
}

impl Service {
    /// Every image the service runs on: its own, then the sources of its
    /// `type: image` mounts, which the engine must have as well (docker
    /// compose pulls them like the service's image).
    pub fn images(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.image.as_str()).chain(self.volumes.iter().filter_map(|m| match m {
            Mount::Image { source, .. } => Some(source.as_str()),
            _ => None,
        }))
    }

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
                }
                | Mount::RepoDir {
                    target,
                    read_only: false,
                    ..
                } => Some(target.as_str()),
                _ => None,
            })
            .collect();
        self.files
            .iter()
            .chain(&self.secrets)
            .map(|f| f.target.as_str())
            .find(|t| {
                !mounts.iter().any(|m| {
                    t.strip_prefix(m.trim_end_matches('/'))
                        .is_some_and(|rest| rest.starts_with('/'))
                })
            })
    }
}

impl Mount {
    /// The files of a bound repo directory (none for other mounts).
    pub fn repo_files(&self) -> &[ContextFile] {
        match self {
            Mount::RepoDir { files, .. } => files,
            _ => &[],
        }
    }
}

/// `deploy.update_config` / `deploy.rollback_config`, with Swarm's meaning
/// on one engine. Not part of the config hash: changing how a service is
/// replaced does not replace it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateConfig {
    /// `None`: the plan chooses (start-first where two containers of the
    /// service can run side by side, stop-first otherwise).
    pub order: Option<UpdateOrder>,
    /// Replicas replaced at once; 0: all at once (default 1).
    pub parallelism: u32,
    /// Wait between two batches of replicas.
    #[serde(serialize_with = "crate::duration::serde_go::serialize")]
    pub delay: Duration,
    pub failure_action: FailureAction,
    /// How long a new container without a healthcheck must keep running
    /// (with no restart) to count as healthy (default 5s).
    #[serde(serialize_with = "crate::duration::serde_go::serialize")]
    pub monitor: Duration,
    /// Share of replicas that may fail before the update fails (0..=1).
    pub max_failure_ratio: f64,
    /// Who set it: Swarm's defaults, the Compose file, or the environment's
    /// default in driftless.yaml (the Compose file's own wins).
    #[serde(skip)]
    pub from: ConfigFrom,
    /// It is a `rollback_config`: what replaces replicas when the
    /// environment rolls back.
    #[serde(skip)]
    pub rollback: bool,
}

/// Where an [`UpdateConfig`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfigFrom {
    /// Nobody set it: Swarm's defaults.
    #[default]
    Defaults,
    /// The service's `deploy.update_config` / `deploy.rollback_config`.
    Compose,
    /// The environment's `update_config` / `rollback_config` in driftless.yaml.
    Environment,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            order: None,
            parallelism: 1,
            delay: Duration::ZERO,
            failure_action: FailureAction::Pause,
            monitor: Duration::from_secs(5),
            max_failure_ratio: 0.0,
            from: ConfigFrom::Defaults,
            rollback: false,
        }
    }
}

impl UpdateConfig {
    pub fn is_default(&self) -> bool {
        *self == UpdateConfig::default()
    }

    /// The key that set `order`, as the plan names it.
    pub fn order_key(&self) -> String {
        let key = if self.rollback {
            "rollback_config"
        } else {
            "update_config"
        };
        match self.from {
            ConfigFrom::Environment => format!("the environment's `{key}.order` in driftless.yaml"),
            ConfigFrom::Compose | ConfigFrom::Defaults => format!("`deploy.{key}.order`"),
        }
    }
}

/// `update_config.order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old container, then start the new one.
    StopFirst,
    /// Start the new container, wait until it is healthy, then stop the old.
    StartFirst,
}

/// `update_config.failure_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Stop replacing and fail the deploy (what is replaced stays).
    #[default]
    Pause,
    /// Fail the deploy; the environment rolls back.
    Rollback,
    /// Go on with the next replicas.
    Continue,
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
        /// `nocopy`: the engine does not copy the image's files at
        /// `target` into an empty volume.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        no_copy: bool,
        /// `volume.subpath`: the directory of the volume mounted at
        /// `target` (Engine API 1.45).
        #[serde(skip_serializing_if = "Option::is_none")]
        subpath: Option<String>,
    },
    /// A bind mount of a host path: absolute, or `~`/`~/…` (the home of the
    /// user running driftless, expanded when the container is created).
    /// Relative paths of the repo become [`Mount::RepoDir`] (directories)
    /// or [`FileMount`]s (files).
    Bind {
        source: String,
        target: String,
        read_only: bool,
        /// `z` (shared) or `Z` (private): the engine relabels the host path
        /// for SELinux.
        #[serde(skip_serializing_if = "Option::is_none")]
        selinux: Option<String>,
        /// `rprivate`, `private`, `rshared`, `shared`, `rslave`, `slave`.
        #[serde(skip_serializing_if = "Option::is_none")]
        propagation: Option<String>,
        /// `bind.recursive` other than `enabled`: `disabled` (submounts
        /// not bound), `writable` (submounts left writable under a
        /// read-only bind) or `readonly` (read-only forced on submounts).
        #[serde(skip_serializing_if = "Option::is_none")]
        recursive: Option<String>,
        /// Create a missing host path (the short syntax always does, the
        /// long one with `bind.create_host_path`). Left out of the config
        /// hash: it changes nothing for a container whose path exists.
        #[serde(skip)]
        create_host_path: bool,
    },
    /// A directory of the repo bound into the container (`./shared:/shared`),
    /// delivered as docker compose shares a host directory: through one
    /// volume per project and directory, filled from the commit and
    /// mounted by every service that binds it, so what one container
    /// writes the others see, and it survives a redeploy. Its files are not
    /// in the config hash: a new commit updates the volume in place and
    /// recreates nothing, as containers see a host directory change live.
    RepoDir {
        /// Repo path of the directory (`""` for the repo's root).
        source: String,
        target: String,
        read_only: bool,
        /// The directory's files at this commit, paths relative to it
        /// (empty when the repo has no such directory: docker compose
        /// creates a missing host path).
        #[serde(skip)]
        files: std::sync::Arc<[ContextFile]>,
    },
    /// `type: image`: the files of image `source` mounted at `target`, as
    /// docker compose mounts them (Engine API 1.48, Docker 28).
    Image {
        /// The image reference, as written.
        source: String,
        target: String,
        read_only: bool,
        /// `image.subpath`: the directory of the image mounted at `target`.
        #[serde(skip_serializing_if = "Option::is_none")]
        subpath: Option<String>,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
        /// Permission bits of the mount's root (`tmpfs.mode`); left out of
        /// the config hash when unset, so a hash from before it was
        /// supported still matches.
        #[serde(skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
}

/// The file driftless keeps in the volume of a bound repo directory
/// ([`Mount::RepoDir`]): the digest and the files it wrote, so a later
/// commit removes only those. A repo file of that name is refused.
pub const BIND_LISTING: &str = ".driftless-bind";

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
    /// Owner (`configs[].uid` / `gid`), root by default.
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ServiceNetwork {
    pub aliases: Vec<String>,
    pub ipv4_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link_local_ips: Vec<String>,
    /// MAC address on this network (engine API 1.44 and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Higher first: the network the container is created on, and the
    /// gateway it prefers (`priority`, `gw_priority`).
    #[serde(skip_serializing_if = "is_zero")]
    pub priority: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gw_priority: i64,
    /// Interface name in the container (engine API 1.50 and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
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

/// The engine's resource controls. `limits` and `reservations` hold both
/// the service keys and `deploy.resources` (Compose requires the two to
/// agree). Fields added after the first release are left out of the
/// canonical form while unset, so the config hash of a service that does
/// not use them stays what it was.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Resources {
    pub limits: ResourceSet,
    pub reservations: ResourceSet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_rt_runtime: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_rt_period: Option<i64>,
    /// CPUs the container may run on (`0-3`, `0,1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// Windows engines only; a Linux engine discards it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<i64>,
    /// Windows engines only; a Linux engine discards it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Memory plus swap in bytes; `-1`: unlimited swap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memswap_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_swappiness: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub oom_kill_disable: bool,
    #[serde(skip_serializing_if = "Blkio::is_empty")]
    pub blkio: Blkio,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    /// `gpus` and `deploy.resources.reservations.devices`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_requests: Vec<DeviceRequest>,
}

/// `blkio_config`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Blkio {
    pub weight: Option<u16>,
    /// (device path, weight).
    pub weight_device: Vec<(String, u16)>,
    /// (device path, rate) in bytes or operations per second.
    pub device_read_bps: Vec<(String, u64)>,
    pub device_write_bps: Vec<(String, u64)>,
    pub device_read_iops: Vec<(String, u64)>,
    pub device_write_iops: Vec<(String, u64)>,
}

impl Blkio {
    pub fn is_empty(&self) -> bool {
        *self == Blkio::default()
    }
}

/// A host device made available in the container (`devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub source: String,
    pub target: String,
    /// Cgroup permissions (`rwm`).
    pub permissions: String,
}

/// A fully qualified CDI device name (`vendor.com/class=name`): such a
/// `devices` entry is requested from the engine's CDI driver, not mapped.
pub fn is_cdi_name(name: &str) -> bool {
    let Some((kind, device)) = name.split_once('=') else {
        return false;
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    !vendor.is_empty()
        && vendor.contains('.')
        && !class.is_empty()
        && !device.is_empty()
        && !name.starts_with('/')
}

/// A request for devices by driver and capability (`gpus`, and
/// `deploy.resources.reservations.devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRequest {
    pub driver: Option<String>,
    /// `-1`: all devices.
    pub count: i64,
    pub device_ids: Vec<String>,
    /// Each inner list is a set of capabilities a device must have all of.
    pub capabilities: Vec<Vec<String>>,
    pub options: BTreeMap<String, String>,
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
    pub attachable: bool,
    pub enable_ipv6: Option<bool>,
    /// `enable_ipv4: false` makes an IPv6-only network (engine API 1.47+).
    pub enable_ipv4: Option<bool>,
    pub ipam: Ipam,
}

/// A network's address management (`ipam`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Ipam {
    pub driver: Option<String>,
    pub config: Vec<IpamPool>,
    pub options: BTreeMap<String, String>,
}

impl Ipam {
    pub fn is_empty(&self) -> bool {
        *self == Ipam::default()
    }
}

/// One address pool of a network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct IpamPool {
    /// CIDR (`172.28.0.0/16`).
    pub subnet: Option<String>,
    pub ip_range: Option<String>,
    pub gateway: Option<String>,
    pub aux_addresses: BTreeMap<String, String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_without_the_new_options_serialise_as_before() {
        // The config hash is over this form: a bind or volume that sets
        // none of the options added later keeps its hash, so upgrading
        // driftless recreates nothing.
        let bind = Mount::Bind {
            recursive: None,
            source: "/srv".into(),
            target: "/srv".into(),
            read_only: true,
            selinux: None,
            propagation: None,
            create_host_path: true,
        };
        assert_eq!(
            serde_json::to_string(&bind).unwrap(),
            r#"{"type":"bind","source":"/srv","target":"/srv","read_only":true}"#
        );
        let volume = Mount::Volume {
            subpath: None,
            source: Some("data".into()),
            target: "/data".into(),
            read_only: false,
            no_copy: false,
        };
        assert_eq!(
            serde_json::to_string(&volume).unwrap(),
            r#"{"type":"volume","source":"data","target":"/data","read_only":false}"#
        );
        // A bound directory's files are not in it: they change in place.
        let dir = Mount::RepoDir {
            source: "compose/shared".into(),
            target: "/shared".into(),
            read_only: false,
            files: vec![ContextFile {
                path: "a".into(),
                mode: 0o644,
                content: std::sync::Arc::from(&b"a"[..]),
            }]
            .into(),
        };
        assert_eq!(
            serde_json::to_string(&dir).unwrap(),
            r#"{"type":"repo_dir","source":"compose/shared","target":"/shared","read_only":false}"#
        );
    }

    #[test]
    fn cdi_names_are_vendor_class_and_device() {
        assert!(is_cdi_name("nvidia.com/gpu=all"));
        assert!(is_cdi_name("vendor.example/class=dev0"));
        assert!(!is_cdi_name("/dev/sda"));
        assert!(!is_cdi_name("gpu=all"));
        assert!(!is_cdi_name("nvidia.com/gpu"));
    }
}
