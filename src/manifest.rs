//! `driftless.yaml`, the repo's root manifest: raw serde types that mirror
//! the file (unknown keys are errors) turned into validated types in one place,
//! [`Manifest::parse`].
//!
//! Every later stage reads settings from the validated [`Manifest`]; nothing
//! else parses `driftless.yaml`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::diag::{Diagnostic, Diagnostics};
use crate::duration;
use crate::model::compose::{ConfigFrom, FailureAction, UpdateConfig, UpdateOrder};
use crate::yaml;

/// The manifest's file name at the repo root.
pub const FILE: &str = "driftless.yaml";
/// The one supported `apiVersion`.
pub const API_VERSION: &str = "driftless/v1";

// ---------------------------------------------------------------------------
// Raw types: exactly the file's shape.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(rename = "apiVersion")]
    api_version: Spanned<String>,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<RawTarget>>,
    environments: BTreeMap<String, Spanned<RawEnvironment>>,
    #[serde(default)]
    policies: BTreeMap<String, PolicyMode>,
    #[serde(default)]
    notifications: BTreeMap<String, Spanned<RawNotification>>,
    #[serde(default)]
    daemons: Vec<Spanned<String>>,
    #[serde(default)]
    prune_removed_environments: bool,
    #[serde(default)]
    limits: RawLimits,
}

/// `limits:` — parser limits a repo may raise.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    yaml_alias_expansion: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    stacks: Option<Vec<String>>,
    manifests: Option<Vec<String>>,
    rules: Option<Vec<String>>,
    backups: Option<Vec<String>>,
    policies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    owner: Option<String>,
    docker: Option<DockerTarget>,
    kubernetes: Option<RawKubernetesTarget>,
    prometheus: Option<RawPrometheusTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetesTarget {
    kubeconfig: Option<String>,
    context: Option<String>,
    namespace: String,
    qps: Option<f32>,
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheusTarget {
    rules_dir: String,
    container: Option<String>,
    docker_target: Option<String>,
    url: String,
    version: Option<u8>,
    lint_fatal: Option<bool>,
    enable_features: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    branch: Option<String>,
    values: Option<String>,
    #[serde(default)]
    targets: Vec<Spanned<String>>,
    paths: Option<RawPaths>,
    #[serde(default)]
    policies: BTreeMap<String, PolicyMode>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    rollback: RawRollback,
    #[serde(default)]
    allow: Allow,
    drift_interval: Option<String>,
    notify: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    placement: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    compose: RawCompose,
    instance: Option<Spanned<String>>,
    #[serde(default)]
    adopt: bool,
    #[serde(default)]
    decrypt: Vec<String>,
    update_config: Option<RawUpdateConfig>,
    rollback_config: Option<RawUpdateConfig>,
    #[serde(default)]
    image_updates: BTreeMap<String, Spanned<String>>,
    image_poll_interval: Option<String>,
}

/// `environments.<env>.update_config` / `rollback_config`: the default for
/// services whose Compose file sets none, Compose's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpdateConfig {
    order: Option<Spanned<String>>,
    parallelism: Option<Spanned<i64>>,
    delay: Option<Spanned<String>>,
    failure_action: Option<Spanned<String>>,
    monitor: Option<Spanned<String>>,
    max_failure_ratio: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompose {
    profiles: Option<Spanned<Vec<String>>>,
    overrides: Option<Spanned<BTreeMap<String, Vec<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    deadline: Option<String>,
    settle: Option<String>,
    #[serde(default)]
    probes: Vec<RawProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: String,
    http: Option<RawHttpProbe>,
    tcp: Option<String>,
    interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpProbe {
    url: String,
    status: Option<u16>,
    contains: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollback {
    automatic: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotification {
    webhook: Option<String>,
    alertmanager: Option<String>,
}

// ---------------------------------------------------------------------------
// Validated types.

/// The validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub targets: BTreeMap<String, Target>,
    pub environments: BTreeMap<String, Environment>,
    pub notifications: BTreeMap<String, Notification>,
    /// Daemon identities known to this repo (for `validate`'s ownership report).
    pub daemons: Vec<String>,
    /// Whether resources of an environment removed from the manifest are pruned.
    pub prune_removed_environments: bool,
    /// YAML limits for the Compose files and Kubernetes manifests the repo
    /// renders (`limits.yaml_alias_expansion`).
    pub yaml: crate::yaml::Limits,
}

/// Where each kind of desired state lives in the repo: globs over the
/// *rendered* paths (a `compose/stack.yaml.j2` is matched as `compose/stack.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Paths {
    /// Compose files; each file is one Compose project.
    pub stacks: Vec<String>,
    /// Kubernetes manifests (multi-document YAML).
    pub manifests: Vec<String>,
    /// Prometheus rule files.
    pub rules: Vec<String>,
    /// Backup job files.
    pub backups: Vec<String>,
    /// The repo's own Rego policies, added to the built-in ones.
    pub policies: Vec<String>,
}

impl Default for Paths {
    fn default() -> Self {
        let v = |globs: &[&str]| globs.iter().map(|g| (*g).to_owned()).collect();
        Paths {
            stacks: v(&["compose/*.yaml", "compose/*.yml"]),
            manifests: v(&["kubernetes/**/*.yaml", "kubernetes/**/*.yml"]),
            rules: v(&["rules/**/*.yaml", "rules/**/*.yml"]),
            backups: v(&["backups/**/*.yaml", "backups/**/*.yml"]),
            policies: v(&["policies/**/*.rego"]),
        }
    }
}

impl Paths {
    fn overlay(&self, raw: &RawPaths) -> Paths {
        Paths {
            stacks: raw.stacks.clone().unwrap_or_else(|| self.stacks.clone()),
            manifests: raw
                .manifests
                .clone()
                .unwrap_or_else(|| self.manifests.clone()),
            rules: raw.rules.clone().unwrap_or_else(|| self.rules.clone()),
            backups: raw.backups.clone().unwrap_or_else(|| self.backups.clone()),
            policies: raw
                .policies
                .clone()
                .unwrap_or_else(|| self.policies.clone()),
        }
    }
}

/// A live system driftless changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub name: String,
    /// The daemon identity that drives this target (`None`: any daemon).
    pub owner: Option<String>,
    pub kind: TargetKind,
}

impl Target {
    /// Whether the daemon `identity` drives this target: it owns it, or
    /// nobody does.
    pub fn claimed_by(&self, identity: Option<&str>) -> bool {
        self.owner.is_none() || self.owner.as_deref() == identity
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetKind {
    Docker(DockerTarget),
    Kubernetes(KubernetesTarget),
    Prometheus(PrometheusTarget),
}

impl TargetKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetKind::Docker(_) => "docker",
            TargetKind::Kubernetes(_) => "kubernetes",
            TargetKind::Prometheus(_) => "prometheus",
        }
    }
}

/// A Docker engine. Credentials are paths on the daemon's host, never repo content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerTarget {
    /// `unix:///var/run/docker.sock`, `tcp://host:2376`, `ssh://user@host`;
    /// unset: `DOCKER_HOST` or the local socket.
    pub host: Option<String>,
    /// Directory with `ca.pem`, `cert.pem`, `key.pem` (the `DOCKER_CERT_PATH` layout)
    /// for `tcp://` with TLS.
    pub tls_cert_path: Option<String>,
    /// Private key file for `ssh://` hosts.
    pub ssh_key_file: Option<String>,
    /// IPv4 ranges project networks without `ipam` get their subnets from,
    /// instead of the engine's default pools (about 30 networks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address_pools: Vec<crate::pools::AddressPool>,
}

impl DockerTarget {
    /// What is wrong with the target's connection settings, checked at
    /// parse time: credential paths must be absolute (on the daemon's
    /// host), so a relative path can never point into the desired-state
    /// repo; the host names a scheme driftless connects with.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("tls_cert_path", &self.tls_cert_path),
            ("ssh_key_file", &self.ssh_key_file),
        ] {
            if let Some(v) = value
                && !std::path::Path::new(v).is_absolute()
            {
                problems.push(format!(
                    "`{key}: {v}` must be an absolute path on the daemon's host (credentials never come from the repo)"
                ));
            }
        }
        let mut pools: Vec<crate::pools::Pool> = Vec::new();
        for pool in &self.address_pools {
            match pool.check() {
                Ok(p) => pools.push(p),
                Err(e) => problems.push(format!("`address_pools`: {e}")),
            }
        }
        for (i, a) in pools.iter().enumerate() {
            if let Some(b) = pools[i + 1..].iter().find(|b| a.overlaps(b)) {
                problems.push(format!(
                    "`address_pools`: {a} overlaps {b}; give each pool its own range"
                ));
            }
        }
        if let Some(host) = &self.host {
            let known = ["unix://", "tcp://", "ssh://"];
            if !known.iter().any(|p| host.starts_with(p)) {
                problems.push(format!(
                    "`host: {host}` must start with unix://, tcp:// or ssh://"
                ));
            }
            if self.tls_cert_path.is_some() && !host.starts_with("tcp://") {
                problems.push("`tls_cert_path` is only used with a tcp:// host".to_owned());
            }
            if self.ssh_key_file.is_some() && !host.starts_with("ssh://") {
                problems.push("`ssh_key_file` is only used with an ssh:// host".to_owned());
            }
        }
        problems
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubernetesTarget {
    /// Kubeconfig file on the daemon's host (unset: the default search, or in-cluster).
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
    /// Namespace for namespaced objects that do not name one.
    pub namespace: String,
    /// Client-side rate limit (default 50 requests/s, burst 100, as Argo CD and Flux).
    pub qps: f32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrometheusTarget {
    /// Directory Prometheus loads rule files from (on the Docker host, or in `container`).
    pub rules_dir: String,
    /// Container holding `rules_dir`, when Prometheus runs in Docker.
    pub container: Option<String>,
    /// Docker target that runs `container`.
    pub docker_target: Option<String>,
    /// Base URL of Prometheus (`/-/reload` and `/api/v1/rules` are under it).
    pub url: String,
    /// Prometheus major version, which decides name validation (2 or 3).
    pub version: u8,
    /// Treat rule lint warnings (duplicates) as errors.
    pub lint_fatal: bool,
    /// Prometheus feature flags (`--enable-feature`) the rule check allows,
    /// e.g. `promql-experimental-functions`.
    pub enable_features: Vec<String>,
    /// The connection settings of `docker_target`, resolved at parse time so
    /// the rules backend can reach `container` without the whole manifest.
    #[serde(skip)]
    pub docker: Option<DockerTarget>,
}

/// One environment: what to render, where to apply it, how to judge health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Environment {
    pub name: String,
    /// Branch whose head this environment follows (default `main`).
    pub branch: String,
    /// Values file, repo path (default `environments/<name>.yaml`).
    pub values: String,
    /// Target names, in manifest order.
    pub targets: Vec<String>,
    /// Effective paths (manifest defaults overlaid with the environment's).
    pub paths: Paths,
    /// Policy modes: manifest-wide modes overlaid with the environment's.
    pub policies: BTreeMap<String, PolicyMode>,
    pub health: Health,
    pub rollback: Rollback,
    pub allow: Allow,
    /// Re-plan without a new commit this often, to correct drift (default 5 min).
    pub drift_interval: Duration,
    /// Notification names to send to.
    pub notify: Vec<String>,
    /// Which Compose files go to which docker target (target → globs over
    /// rendered paths), for an environment spanning several Docker hosts.
    /// Empty: every docker target gets every Compose file.
    pub placement: BTreeMap<String, Vec<String>>,
    /// How the environment's Compose projects are put together.
    pub compose: ComposeSettings,
    /// The ownership id its resources are labelled with, when set
    /// (`instance:`); `None`: derived from the repo and the environment
    /// ([`instance`]).
    pub instance: Option<String>,
    /// What a plan may adopt of a project of the same name it does not own
    /// (`adopt: true`: projects no driftless deployed).
    pub adopt: Adopt,
    /// Globs over repo paths of SOPS files whose top-level keys are merged
    /// into the values (`decrypt:`), decrypted at render time.
    pub decrypt: Vec<String>,
    /// `update_config`: how a service whose Compose file has no
    /// `deploy.update_config` replaces its replicas. Its `order:
    /// start-first` still yields to the safety rules (only a Compose file
    /// can overrule them for its service).
    pub update_config: Option<UpdateConfig>,
    /// `rollback_config`: the same for a rollback to the last good commit.
    pub rollback_config: Option<UpdateConfig>,
    /// `image_updates`: service (`name` or `project/name`) → the image
    /// update policy, for services whose Compose file sets no
    /// `driftless.io/image-update` label.
    pub image_updates: BTreeMap<String, crate::model::compose::ImageUpdate>,
    /// How often followed images are checked in their registries
    /// (default 5 min; each check is jittered by up to a tenth).
    pub image_poll_interval: Duration,
}

/// The ownership id of `env` deployed from the repo known as `repo`
/// ([`crate::source::Source::identity`]): the explicit `instance:`, else
/// `<env>@<repo>`, so two repos' `dev` never share one.
pub fn instance(env: &Environment, repo: &str) -> String {
    match &env.instance {
        Some(explicit) => explicit.clone(),
        None => format!("{}@{repo}", env.name),
    }
}

/// `environments.<env>.compose`: what docker compose would take from its
/// command line and shell (`COMPOSE_PROFILES`), per environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ComposeSettings {
    /// The active profiles of every Compose project of the environment
    /// (`COMPOSE_PROFILES`); `None`: the project's variables decide.
    pub profiles: Option<Vec<String>>,
    /// Line of `profiles` in the manifest, for diagnostics.
    pub profiles_line: u32,
    /// Files merged over a Compose file, in order (docker compose's further
    /// `-f` files): main file → override files, rendered repo paths. A main
    /// file listed here does not get its default `compose.override.yaml`.
    pub overrides: BTreeMap<String, Vec<String>>,
    /// Line of `overrides` in the manifest, for diagnostics.
    pub overrides_line: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    Deny,
    Warn,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// How long verify waits for everything to be healthy (default 2 min).
    pub deadline: Duration,
    /// How long containers must run without restarting (default 10 s).
    pub settle: Duration,
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    pub name: String,
    pub check: ProbeCheck,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeCheck {
    Http {
        url: String,
        status: u16,
        contains: Option<String>,
    },
    Tcp {
        address: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollback {
    /// Roll back to the last good commit when verify fails (default true).
    pub automatic: bool,
}

/// Opt-ins for destructive actions. All default to off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// Delete named volumes and PVCs that are no longer desired.
    #[serde(default)]
    pub prune_volumes: bool,
    /// Apply a plan that removes most of what is deployed.
    #[serde(default)]
    pub mass_removal: bool,
    /// Force server-side apply over other field managers.
    #[serde(default)]
    pub force_conflicts: bool,
    /// Remove what a failed first deploy created.
    #[serde(default)]
    pub remove_on_failed_first_deploy: bool,
}

/// What a plan may take over of a project of the same name that this
/// environment does not own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Adopt {
    /// Nothing: such a project is refused, with how to adopt it.
    #[default]
    No,
    /// Projects no driftless deployed (docker compose's, another tool's):
    /// the environment's `adopt: true`.
    Unmanaged,
    /// Those, and projects of another driftless instance: `reconcile
    /// --adopt`, a one-time act (a standing setting would let two
    /// instances take the project from each other on every pass).
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notification {
    /// A generic JSON POST.
    Webhook { url: String },
    /// Alertmanager's `/api/v2/alerts`.
    Alertmanager { url: String },
}

// ---------------------------------------------------------------------------
// Raw → validated.

impl Manifest {
    /// Parses and validates `driftless.yaml`. All problems are returned at
    /// once, each with the manifest's file name and a line where known.
    pub fn parse(text: &str) -> Result<Manifest, Diagnostics> {
        let raw: RawManifest =
            yaml::from_str(text).map_err(|e| Diagnostics::from(e.into_diagnostic(FILE)))?;
        let mut diags = Diagnostics::new();
        let err =
            |message: String, line: u64| Diagnostic::error(message).file(FILE).line(line as u32);

        if raw.api_version.value != API_VERSION {
            diags.push(
                err(
                    format!(
                        "apiVersion is `{}`, expected `{API_VERSION}`",
                        raw.api_version.value
                    ),
                    raw.api_version.referenced.line(),
                )
                .hint(format!(
                    "set `apiVersion: {API_VERSION}` at the top of {FILE}"
                )),
            );
        }

        let paths = Paths::default().overlay(&raw.paths);
        let mut globs_ok = true;
        for glob in paths_globs(&paths) {
            if let Err(e) = crate::glob::Glob::new(glob) {
                diags.push(err(format!("paths: invalid glob `{glob}`: {e}"), 0));
                globs_ok = false;
            }
        }

        let mut targets = BTreeMap::new();
        let mut target_lines = BTreeMap::new();
        for (name, raw_target) in raw.targets {
            let line = raw_target.referenced.line();
            target_lines.insert(name.clone(), line);
            let raw_target = raw_target.value;
            if !valid_name(&name) {
                diags.push(err(
                    format!("target name `{name}` must be lowercase letters, digits and `-`"),
                    line,
                ));
            }
            let mut kinds = Vec::new();
            if let Some(d) = raw_target.docker {
                for problem in d.problems() {
                    diags.push(err(format!("targets.{name}.docker: {problem}"), line));
                }
                kinds.push(TargetKind::Docker(d));
            }
            if let Some(k) = raw_target.kubernetes {
                kinds.push(TargetKind::Kubernetes(KubernetesTarget {
                    kubeconfig: k.kubeconfig,
                    context: k.context,
                    namespace: k.namespace,
                    qps: k.qps.unwrap_or(50.0),
                    burst: k.burst.unwrap_or(100),
                }));
            }
            if let Some(p) = raw_target.prometheus {
                let version = p.version.unwrap_or(3);
                if version != 2 && version != 3 {
                    diags.push(err(
                        format!("targets.{name}.prometheus.version is {version}; supported: 2, 3"),
                        line,
                    ));
                }
                kinds.push(TargetKind::Prometheus(PrometheusTarget {
                    rules_dir: p.rules_dir,
                    container: p.container,
                    docker_target: p.docker_target,
                    url: p.url,
                    version,
                    lint_fatal: p.lint_fatal.unwrap_or(false),
                    enable_features: p.enable_features.unwrap_or_default(),
                    docker: None,
                }));
            }
            if kinds.len() != 1 {
                diags.push(
                    err(format!("target `{name}` must have exactly one of `docker`, `kubernetes`, `prometheus` (it has {})", kinds.len()), line),
                );
                continue;
            }
            let kind = kinds.pop().expect("checked len");
            if let TargetKind::Kubernetes(k) = &kind
                && (k.qps <= 0.0 || !k.qps.is_finite() || k.burst == 0)
            {
                diags.push(err(
                    format!("targets.{name}.kubernetes: qps and burst must be positive"),
                    line,
                ));
            }
            targets.insert(
                name.clone(),
                Target {
                    name,
                    owner: raw_target.owner,
                    kind,
                },
            );
        }

        let mut notifications = BTreeMap::new();
        for (name, n) in raw.notifications {
            let line = n.referenced.line();
            match (n.value.webhook, n.value.alertmanager) {
                (Some(url), None) => {
                    notifications.insert(name, Notification::Webhook { url });
                }
                (None, Some(url)) => {
                    notifications.insert(name, Notification::Alertmanager { url });
                }
                _ => diags.push(err(
                    format!(
                        "notification `{name}` must have exactly one of `webhook`, `alertmanager`"
                    ),
                    line,
                )),
            }
        }

        // Prometheus targets that point at a Docker target must name one that
        // exists; its connection settings are copied in.
        let dockers: BTreeMap<String, DockerTarget> = targets
            .iter()
            .filter_map(|(name, t)| match &t.kind {
                TargetKind::Docker(d) => Some((name.clone(), d.clone())),
                _ => None,
            })
            .collect();
        for target in targets.values_mut() {
            if let TargetKind::Prometheus(p) = &mut target.kind
                && let Some(d) = &p.docker_target
            {
                match dockers.get(d) {
                    Some(docker) => p.docker = Some(docker.clone()),
                    None => diags.push(err(
                        format!(
                            "targets.{}.prometheus.docker_target `{d}` is not a docker target",
                            target.name
                        ),
                        0,
                    )),
                }
            }
        }

        if raw.environments.is_empty() {
            diags.push(err(
                "no environments defined; add at least one under `environments:`".to_owned(),
                0,
            ));
        }
        let mut environments = BTreeMap::new();
        let mut env_lines = BTreeMap::new();
        for (name, raw_env) in raw.environments {
            let line = raw_env.referenced.line();
            env_lines.insert(name.clone(), line);
            let env = raw_env.value;
            if !valid_name(&name) {
                diags.push(err(
                    format!("environment name `{name}` must be lowercase letters, digits and `-`"),
                    line,
                ));
            }
            let mut env_targets = Vec::new();
            let mut seen = BTreeSet::new();
            for t in &env.targets {
                if !targets.contains_key(&t.value) {
                    diags.push(
                        err(
                            format!("environments.{name}.targets: unknown target `{}`", t.value),
                            t.referenced.line(),
                        )
                        .hint(format!(
                            "define it under `targets:`; known: {}",
                            join_keys(&targets)
                        )),
                    );
                } else if !seen.insert(t.value.clone()) {
                    diags.push(err(
                        format!("environments.{name}.targets: `{}` listed twice", t.value),
                        t.referenced.line(),
                    ));
                } else {
                    env_targets.push(t.value.clone());
                }
            }
            let notify = match env.notify {
                Some(list) => {
                    let mut out = Vec::new();
                    for n in list {
                        if notifications.contains_key(&n.value) {
                            out.push(n.value);
                        } else {
                            diags.push(err(
                                format!(
                                    "environments.{name}.notify: unknown notification `{}`",
                                    n.value
                                ),
                                n.referenced.line(),
                            ));
                        }
                    }
                    out
                }
                None => notifications.keys().cloned().collect(),
            };
            let env_paths = match &env.paths {
                Some(p) => paths.overlay(p),
                None => paths.clone(),
            };
            for glob in &env.decrypt {
                if let Err(e) = crate::glob::Glob::new(glob) {
                    diags.push(err(
                        format!("environments.{name}.decrypt: invalid glob `{glob}`: {e}"),
                        line,
                    ));
                }
            }
            if globs_ok {
                for glob in paths_globs(&env_paths) {
                    if let Err(e) = crate::glob::Glob::new(glob) {
                        diags.push(err(
                            format!("environments.{name}.paths: invalid glob `{glob}`: {e}"),
                            line,
                        ));
                    }
                }
            }
            let dur = |field: &str,
                       value: &Option<String>,
                       default: Duration,
                       diags: &mut Diagnostics| match value {
                None => default,
                Some(s) => duration::parse(s).unwrap_or_else(|e| {
                    diags.push(err(format!("environments.{name}.{field}: {e}"), line));
                    default
                }),
            };
            let deadline = dur(
                "health.deadline",
                &env.health.deadline,
                Duration::from_secs(120),
                &mut diags,
            );
            let settle = dur(
                "health.settle",
                &env.health.settle,
                Duration::from_secs(10),
                &mut diags,
            );
            let drift_interval = dur(
                "drift_interval",
                &env.drift_interval,
                Duration::from_secs(300),
                &mut diags,
            );
            let image_poll_interval = dur(
                "image_poll_interval",
                &env.image_poll_interval,
                Duration::from_secs(300),
                &mut diags,
            );
            let mut image_updates = BTreeMap::new();
            for (service, policy) in env.image_updates {
                match crate::model::compose::ImageUpdate::parse(&policy.value) {
                    Ok(p) => {
                        image_updates.insert(service, p);
                    }
                    Err(e) => diags.push(err(
                        format!("environments.{name}.image_updates.{service}: {e}"),
                        policy.referenced.line(),
                    )),
                }
            }
            let mut probes = Vec::new();
            for p in env.health.probes {
                let field = format!("health.probes.{}.interval", p.name);
                let interval = dur(&field, &p.interval, Duration::from_secs(2), &mut diags);
                let check = match (p.http, p.tcp) {
                    (Some(h), None) => ProbeCheck::Http {
                        url: h.url,
                        status: h.status.unwrap_or(200),
                        contains: h.contains,
                    },
                    (None, Some(address)) => ProbeCheck::Tcp { address },
                    _ => {
                        diags.push(err(format!("environments.{name}.health.probes.{}: needs exactly one of `http`, `tcp`", p.name), line));
                        continue;
                    }
                };
                probes.push(Probe {
                    name: p.name,
                    check,
                    interval,
                });
            }
            let mut policies = raw.policies.clone();
            policies.extend(env.policies);
            environments.insert(
                name.clone(),
                Environment {
                    branch: env.branch.unwrap_or_else(|| "main".to_owned()),
                    values: env
                        .values
                        .unwrap_or_else(|| format!("environments/{name}.yaml")),
                    targets: env_targets,
                    paths: env_paths,
                    policies,
                    health: Health {
                        deadline,
                        settle,
                        probes,
                    },
                    rollback: Rollback {
                        automatic: env.rollback.automatic.unwrap_or(true),
                    },
                    allow: env.allow,
                    drift_interval,
                    notify,
                    placement: env.placement,
                    compose: compose_settings(&name, env.compose, &mut diags),
                    instance: env.instance.and_then(|i| {
                        let ok = !i.value.trim().is_empty()
                            && i.value.len() <= 200
                            && !i.value.chars().any(char::is_control);
                        if !ok {
                            diags.push(err(
                                format!("environments.{name}.instance: must be 1 to 200 characters without control characters"),
                                i.referenced.line(),
                            ).hint("it is the label value that marks what this environment owns; leave it out to derive it from the repo"));
                        }
                        ok.then_some(i.value)
                    }),
                    adopt: if env.adopt { Adopt::Unmanaged } else { Adopt::No },
                    decrypt: env.decrypt,
                    update_config: env.update_config.map(|u| {
                        update_config(&format!("environments.{name}.update_config"), u, line, &mut diags)
                    }),
                    rollback_config: env.rollback_config.map(|u| UpdateConfig {
                        rollback: true,
                        ..update_config(&format!("environments.{name}.rollback_config"), u, line, &mut diags)
                    }),
                    image_updates,
                    image_poll_interval,
                    name,
                },
            );
        }

        let daemons: Vec<String> = raw.daemons.iter().map(|d| d.value.clone()).collect();
        for (target, problem) in claim_problems(&targets, &environments, &daemons) {
            diags.push(err(
                problem,
                target_lines.get(&target).copied().unwrap_or(1),
            ));
        }
        for (name, env) in &environments {
            // Projects are found by their instance label, one per
            // environment, so two docker targets of one environment on one
            // engine would prune each other's: they must be different engines.
            let mut hosts: BTreeMap<Option<&String>, &String> = BTreeMap::new();
            for t in &env.targets {
                if let Some(Target {
                    kind: TargetKind::Docker(d),
                    ..
                }) = targets.get(t)
                    && let Some(other) = hosts.insert(d.host.as_ref(), t)
                {
                    diags.push(err(
                        format!("environments.{name}: docker targets `{other}` and `{t}` are the same engine ({}); an environment's docker targets must be different hosts", d.host.as_deref().unwrap_or("DOCKER_HOST or the local socket")),
                        env_lines.get(name).copied().unwrap_or(1),
                    ));
                }
            }
            let unplaced = env.targets.iter().filter(|t| {
                !env.placement.is_empty()
                    && !env.placement.contains_key(*t)
                    && targets
                        .get(*t)
                        .is_some_and(|t| matches!(t.kind, TargetKind::Docker(_)))
            });
            for t in unplaced {
                diags.push(err(
                    format!("environments.{name}.placement: docker target `{t}` is not placed; with `placement`, every docker target of the environment names the Compose files it runs"),
                    env_lines.get(name).copied().unwrap_or(1),
                ));
            }
            for (target, globs) in &env.placement {
                let is_docker = targets
                    .get(target)
                    .is_some_and(|t| matches!(t.kind, TargetKind::Docker(_)));
                if !env.targets.contains(target) || !is_docker {
                    diags.push(err(
                        format!("environments.{name}.placement: `{target}` is not one of the environment's docker targets"),
                        env_lines.get(name).copied().unwrap_or(1),
                    ));
                }
                for g in globs {
                    if let Err(e) = crate::glob::Glob::new(g) {
                        diags.push(err(
                            format!("environments.{name}.placement.{target}: {e}"),
                            env_lines.get(name).copied().unwrap_or(1),
                        ));
                    }
                }
            }
        }
        let mut yaml_limits = crate::yaml::Limits::default();
        if let Some(n) = &raw.limits.yaml_alias_expansion {
            let max = crate::yaml::MAX_ALIAS_EXPANSION as u64;
            if n.value == 0 || n.value > max {
                diags.push(err(
                    format!(
                        "limits.yaml_alias_expansion: {} is not between 1 and {max}",
                        n.value
                    ),
                    n.referenced.line(),
                ));
            } else {
                yaml_limits.alias_expansion = n.value as usize;
            }
        }
        if diags.has_errors() {
            return Err(diags);
        }
        Ok(Manifest {
            targets,
            environments,
            notifications,
            daemons,
            prune_removed_environments: raw.prune_removed_environments,
            yaml: yaml_limits,
        })
    }

    /// The environment by name, or a diagnostic listing the known ones.
    pub fn environment(&self, name: &str) -> Result<&Environment, Diagnostic> {
        self.environments.get(name).ok_or_else(|| {
            Diagnostic::error(format!("no environment `{name}` in {FILE}"))
                .file(FILE)
                .hint(format!(
                    "known environments: {}",
                    join_keys(&self.environments)
                ))
        })
    }

    /// The targets of an environment, in its order.
    pub fn targets_of<'a>(&'a self, env: &'a Environment) -> impl Iterator<Item = &'a Target> + 'a {
        env.targets.iter().filter_map(|t| self.targets.get(t))
    }
}

/// With `daemons:` listing the known identities, every target an
/// environment uses must be claimed by exactly one of them: an owner that
/// is not a known identity claims nothing, an unowned target is claimed by
/// every identity (a conflict once there are two).
fn claim_problems(
    targets: &BTreeMap<String, Target>,
    environments: &BTreeMap<String, Environment>,
    daemons: &[String],
) -> Vec<(String, String)> {
    if daemons.is_empty() {
        return Vec::new();
    }
    let used: BTreeSet<&String> = environments.values().flat_map(|e| &e.targets).collect();
    let mut problems = Vec::new();
    for (name, t) in targets.iter().filter(|(n, _)| used.contains(n)) {
        match &t.owner {
            Some(o) if !daemons.contains(o) => problems.push((name.clone(), format!(
                "target `{name}`: no daemon identity claims it (owner `{o}` is not in `daemons`: {}); nothing would apply it",
                daemons.join(", ")
            ))),
            None if daemons.len() > 1 => problems.push((name.clone(), format!(
                "target `{name}` has no `owner`, so every daemon identity ({}) claims it and they would fight over it; set `owner`",
                daemons.join(", ")
            ))),
            _ => {}
        }
    }
    problems
}

/// Validates `environments.<name>.compose`.
/// An environment's default `update_config` / `rollback_config` at `path`,
/// each bad value an error on its line (`line`: the environment's, where
/// the value has none).
fn update_config(
    path: &str,
    raw: RawUpdateConfig,
    line: u64,
    diags: &mut Diagnostics,
) -> UpdateConfig {
    let mut u = UpdateConfig {
        from: ConfigFrom::Environment,
        ..UpdateConfig::default()
    };
    let mut bad = |key: &str, at: u64, problem: String, hint: &str| {
        diags.push(
            Diagnostic::error(format!("{path}.{key}: {problem}"))
                .file(FILE)
                .line(if at == 0 { line } else { at } as u32)
                .hint(hint.to_owned()),
        );
    };
    if let Some(order) = raw.order {
        match order.value.as_str() {
            "stop-first" => u.order = Some(UpdateOrder::StopFirst),
            "start-first" => u.order = Some(UpdateOrder::StartFirst),
            other => bad(
                "order",
                order.referenced.line(),
                format!("`{other}` is not an update order"),
                "stop-first or start-first",
            ),
        }
    }
    if let Some(n) = raw.parallelism {
        match u32::try_from(n.value) {
            Ok(p) if p <= 10_000 => u.parallelism = p,
            _ => bad(
                "parallelism",
                n.referenced.line(),
                format!("{} is not a number of replicas", n.value),
                "0 (all at once) to 10000",
            ),
        }
    }
    for (key, raw, field) in [
        ("delay", raw.delay, &mut u.delay),
        ("monitor", raw.monitor, &mut u.monitor),
    ] {
        if let Some(d) = raw {
            match duration::parse(&d.value) {
                Ok(v) => *field = v,
                Err(e) => bad(
                    key,
                    d.referenced.line(),
                    e.to_string(),
                    "a duration such as `10s` or `1m30s`",
                ),
            }
        }
    }
    if let Some(action) = raw.failure_action {
        match action.value.as_str() {
            "pause" => u.failure_action = FailureAction::Pause,
            "continue" => u.failure_action = FailureAction::Continue,
            "rollback" => u.failure_action = FailureAction::Rollback,
            other => bad(
                "failure_action",
                action.referenced.line(),
                format!("`{other}` is not a failure action"),
                "pause, continue or rollback",
            ),
        }
    }
    if let Some(r) = raw.max_failure_ratio {
        if (0.0..=1.0).contains(&r.value) {
            u.max_failure_ratio = r.value;
        } else {
            bad(
                "max_failure_ratio",
                r.referenced.line(),
                format!("{} is not a ratio", r.value),
                "a share of the replicas between 0 and 1",
            );
        }
    }
    u
}

fn compose_settings(name: &str, raw: RawCompose, diags: &mut Diagnostics) -> ComposeSettings {
    let mut settings = ComposeSettings::default();
    if let Some(profiles) = raw.profiles {
        let line = profiles.referenced.line() as u32;
        for p in &profiles.value {
            if !valid_profile_name(p) {
                diags.push(
                    Diagnostic::error(format!(
                        "environments.{name}.compose.profiles: `{p}` is not a profile name"
                    ))
                    .file(FILE)
                    .line(line)
                    .hint("profile names are letters, digits, `_`, `.` and `-`, starting with a letter or digit; `*` activates every profile"),
                );
            }
        }
        settings.profiles = Some(profiles.value);
        settings.profiles_line = line;
    }
    if let Some(overrides) = raw.overrides {
        let line = overrides.referenced.line() as u32;
        for (main, list) in &overrides.value {
            let mut seen = BTreeSet::new();
            for file in std::iter::once(main).chain(list) {
                let bad = file.starts_with('/')
                    || file
                        .split('/')
                        .any(|c| c == ".." || c == "." || c.is_empty());
                let problem = if bad {
                    Some(format!("`{file}` is not a repo path"))
                } else if !seen.insert(file.as_str()) {
                    Some(format!("`{file}` is listed twice for `{main}`"))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    diags.push(
                        Diagnostic::error(format!(
                            "environments.{name}.compose.overrides: {problem}"
                        ))
                        .file(FILE)
                        .line(line)
                        .hint("map a Compose file's repo path to the files merged over it, e.g. `compose/app.yaml: [compose/app.prod.yaml]`"),
                    );
                }
            }
        }
        settings.overrides = overrides.value;
        settings.overrides_line = line;
    }
    settings
}

/// A Compose profile name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), or `*` for all.
pub fn valid_profile_name(name: &str) -> bool {
    let mut chars = name.chars();
    name == "*"
        || chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn paths_globs(p: &Paths) -> impl Iterator<Item = &String> {
    p.stacks
        .iter()
        .chain(&p.manifests)
        .chain(&p.rules)
        .chain(&p.backups)
        .chain(&p.policies)
}

fn join_keys<V>(map: &BTreeMap<String, V>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names used in labels, project names and file names: `[a-z0-9][a-z0-9-]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    #[test]
    fn relative_credential_paths_and_unknown_schemes_are_refused() {
        let target = |host: &str, certs: Option<&str>| super::DockerTarget {
            host: Some(host.into()),
            tls_cert_path: certs.map(Into::into),
            ..super::DockerTarget::default()
        };
        let problems = target("tcp://h:2376", Some("certs")).problems();
        assert!(problems[0].contains("absolute path"), "{problems:?}");
        assert!(target("http://h", None).problems()[0].contains("must start with"));
        assert!(
            target("tcp://h:2376", Some("/etc/certs"))
                .problems()
                .is_empty()
        );
    }

    use super::*;

    const MINIMAL: &str = "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n";

    #[test]
    fn image_updates_and_their_poll_interval_are_parsed_and_bad_policies_named_at_their_line() {
        let m = Manifest::parse(MINIMAL).unwrap();
        let dev = m.environment("dev").unwrap();
        assert!(dev.image_updates.is_empty());
        assert_eq!(dev.image_poll_interval, Duration::from_secs(300));
        let text = format!(
            "{MINIMAL}    image_poll_interval: 30s\n    image_updates:\n      web: digest\n      shop/api: digest\n"
        );
        let m = Manifest::parse(&text).unwrap();
        let dev = m.environment("dev").unwrap();
        assert_eq!(dev.image_poll_interval, Duration::from_secs(30));
        assert_eq!(
            dev.image_updates.keys().collect::<Vec<_>>(),
            ["shop/api", "web"]
        );
        let bad =
            format!("{MINIMAL}    image_updates:\n      web: digest\n      api: \"semver:^2\"\n");
        let e = Manifest::parse(&bad).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("image_updates.api"), "{text}");
        assert!(text.contains("not supported yet"), "{text}");
        assert!(text.contains(":10"), "the line of the policy: {text}");
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = Manifest::parse(MINIMAL).unwrap();
        let dev = m.environment("dev").unwrap();
        assert_eq!(dev.branch, "main");
        assert_eq!(dev.values, "environments/dev.yaml");
        assert_eq!(dev.targets, vec!["local"]);
        assert_eq!(dev.health.deadline, Duration::from_secs(120));
        assert!(dev.rollback.automatic);
        assert!(!dev.allow.prune_volumes);
        assert_eq!(dev.paths, Paths::default());
    }

    #[test]
    fn the_instance_is_derived_from_the_repo_unless_set_and_adopt_is_opt_in() {
        let m = Manifest::parse(MINIMAL).unwrap();
        let dev = m.environment("dev").unwrap();
        assert_eq!(dev.adopt, Adopt::No);
        assert_eq!(
            instance(dev, "github.com/acme/ops"),
            "dev@github.com/acme/ops"
        );

        let text = format!("{MINIMAL}    instance: shop-dev\n    adopt: true\n");
        let m = Manifest::parse(&text).unwrap();
        let dev = m.environment("dev").unwrap();
        assert_eq!(dev.adopt, Adopt::Unmanaged);
        assert_eq!(instance(dev, "github.com/acme/ops"), "shop-dev");

        let text = format!("{MINIMAL}    instance: \"\"\n");
        let diags = Manifest::parse(&text).unwrap_err();
        let d = diags.errors().next().unwrap();
        assert!(d.message.contains("environments.dev.instance"), "{d}");
        assert_eq!(d.line, Some(8), "{d}");
    }

    #[test]
    fn address_pools_are_checked_with_the_target_line() {
        let pools = |list: &str| {
            format!(
                "apiVersion: driftless/v1\ntargets:\n  local:\n    docker:\n      address_pools: {list}\nenvironments:\n  dev:\n    targets: [local]\n"
            )
        };
        let m = Manifest::parse(&pools("[{base: 10.231.0.0/16, size: 24}]")).unwrap();
        let TargetKind::Docker(d) = &m.targets["local"].kind else {
            panic!("a docker target");
        };
        assert_eq!(d.address_pools[0].base, "10.231.0.0/16");
        let diags = Manifest::parse(&pools(
            "[{base: 10.231.0.1/16, size: 24}, {base: 10.232.0.0/16, size: 12}, {base: 10.0.0.0/8, size: 24}, {base: 10.3.0.0/16, size: 24}]",
        ))
        .unwrap_err();
        let all = diags.to_string();
        for want in [
            "host bits set",
            "must be between the base's prefix (16) and 30",
            "10.0.0.0/8 (size 24) overlaps 10.3.0.0/16 (size 24)",
        ] {
            assert!(all.contains(want), "{want}: {all}");
        }
        assert!(diags.errors().all(|d| d.line == Some(4)), "{all}");
    }

    #[test]
    fn unknown_key_is_an_error_with_a_line() {
        let text = format!("{MINIMAL}    replicas: 3\n");
        let diags = Manifest::parse(&text).unwrap_err();
        let d = diags.errors().next().unwrap();
        assert_eq!(d.file.as_deref(), Some(FILE));
        assert!(d.message.contains("replicas"), "{d}");
        assert_eq!(d.line, Some(8), "{d}");
    }

    #[test]
    fn all_semantic_errors_are_reported_together() {
        let text = "apiVersion: driftless/v2\ntargets:\n  a:\n    docker: {}\n    kubernetes: {namespace: x}\nenvironments:\n  Dev:\n    targets: [nope]\n    health: {deadline: soon}\n";
        let diags = Manifest::parse(text).unwrap_err();
        let all = diags.to_string();
        assert!(all.contains("apiVersion is `driftless/v2`"), "{all}");
        assert!(all.contains("exactly one of `docker`"), "{all}");
        assert!(all.contains("environment name `Dev`"), "{all}");
        assert!(all.contains("unknown target `nope`"), "{all}");
        assert!(all.contains("health.deadline"), "{all}");
        assert!(diags.len() >= 5);
    }

    #[test]
    fn unknown_environment_lists_known_ones() {
        let m = Manifest::parse(MINIMAL).unwrap();
        let d = m.environment("prod").unwrap_err();
        assert!(d.to_string().contains("known environments: dev"), "{d}");
    }
}
