//! The Compose backend: Docker Compose v2 semantics over the Docker Engine
//! API (bollard), so stacks run the same on a local or a remote engine.
//!
//! read live ([`live`], four list calls) → plan ([`plan`], pure) → apply
//! ([`apply`], dependency order, builds and pulls first) → health
//! ([`health`]). [`build`] decides what is built and builds it.
//! [`hash`] decides what is recreated, [`rollout`] how (start-first or
//! stop-first); [`spec`] maps the model onto the
//! engine's container config; [`archive`] carries config files into
//! containers; [`binds`] delivers bound repo directories through volumes;
//! [`image`] resolves references and registry auth; [`registry`] asks a
//! registry which digest a tag names, without pulling.
//!
//! What it creates carries the labels `docker compose` v2 writes
//! ([`labels`]), so `docker ps --filter label=com.docker.compose.project=…`
//! and Compose itself recognise driftless's stacks.

use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;

use crate::backend::{ApplyReport, Backend, BackendError, Context, Verdict};
use crate::manifest::DockerTarget;
use crate::model::compose::Project;
use crate::model::{Resources, TargetState};
use crate::plan::Change;

pub mod apply;
pub mod archive;
pub mod binds;
pub mod build;
pub mod connect;
pub mod hash;
pub mod health;
pub mod hooks;
pub mod image;
pub mod live;
pub mod plan;
pub mod project;
pub mod registry;
pub mod rollout;
pub mod spec;
pub mod subnets;

pub use live::Live;

/// Label keys: Compose v2's, plus driftless's own under `io.driftless.`.
pub mod labels {
    pub const PROJECT: &str = "com.docker.compose.project";
    pub const SERVICE: &str = "com.docker.compose.service";
    pub const CONTAINER_NUMBER: &str = "com.docker.compose.container-number";
    pub const CONFIG_HASH: &str = "com.docker.compose.config-hash";
    pub const ONEOFF: &str = "com.docker.compose.oneoff";
    pub const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
    pub const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
    pub const VERSION: &str = "com.docker.compose.version";
    pub const IMAGE: &str = "com.docker.compose.image";
    pub const DEPENDS_ON: &str = "com.docker.compose.depends_on";
    pub const NETWORK: &str = "com.docker.compose.network";
    pub const VOLUME: &str = "com.docker.compose.volume";
    /// The driftless environment that deployed the resource (informative;
    /// ownership is [`INSTANCE`], this only for what came before it).
    pub const ENVIRONMENT: &str = "io.driftless.environment";
    /// The ownership id of the desired state that deployed the resource
    /// ([`crate::manifest::instance`]): only what carries the
    /// environment's own is its to change or prune, so two repos' `dev`
    /// on one engine never touch each other's projects.
    pub const INSTANCE: &str = "io.driftless.instance";
    /// The masked readable definition a container was created from, so the
    /// next plan can diff against it without a call per container.
    pub const DEFINITION: &str = "io.driftless.definition";
    /// On an image built from `build:`: the hash of its context and
    /// options (`backend::compose::build`), compared on the next plan.
    pub const BUILD: &str = "io.driftless.build";
    /// On a built image: the hash of its build options alone.
    pub const BUILD_OPTIONS: &str = "io.driftless.build.options";
    /// On a built image of a small context: `path digest` per file.
    pub const BUILD_FILES: &str = "io.driftless.build.files";
    /// On a start-first replacement: the temporary name it was created
    /// under. A container still named so is a leftover of an interrupted
    /// replacement ([`super::rollout::is_temporary`]).
    pub const TEMPORARY: &str = "io.driftless.temporary-name";
    /// On the volume of a bound repo directory: the directory's repo path.
    pub const BIND_SOURCE: &str = "io.driftless.bind";
    /// What goes into `com.docker.compose.version`: driftless's version,
    /// a bare version number, because docker-compose 1.x parses the label
    /// as one (`driftless-0.1.0` made `docker-compose up` crash on a
    /// driftless project). Who deployed a resource is told by
    /// [`ENVIRONMENT`].
    pub const VERSION_VALUE: &str = env!("CARGO_PKG_VERSION");
}

/// The socket used when neither the target nor `DOCKER_HOST` names one.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long a dependency or a gated replica may take to turn healthy
/// unless the environment's health deadline is longer.
pub const DEFAULT_DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to one Docker engine, driving Compose projects on it.
#[derive(Debug, Clone)]
pub struct ComposeBackend {
    docker: Docker,
    host: String,
    settle: Duration,
    dependency_timeout: Duration,
    docker_config: Option<PathBuf>,
}

impl ComposeBackend {
    /// Connects to the target's engine (`host`, else `DOCKER_HOST`, else the
    /// local socket) and agrees on an API version with it: a local
    /// `unix://` socket, `tcp://` over mutual TLS, or `ssh://` (see
    /// [`connect`]). A missing socket, missing credentials or a refused
    /// handshake is an error naming the host.
    pub async fn connect(target: &DockerTarget) -> Result<Self, BackendError> {
        let host = match &target.host {
            Some(h) => h.clone(),
            None => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| DEFAULT_HOST.to_owned()),
        };
        let unavailable = |message: String| BackendError::Unavailable {
            target: host.clone(),
            message,
        };
        let cert_env = std::env::var("DOCKER_CERT_PATH").ok();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let endpoint =
            connect::Endpoint::resolve(&host, target, cert_env.as_deref(), home.as_deref())
                .map_err(unavailable)?;
        let docker = endpoint.client().map_err(unavailable)?;
        // bollard speaks the newest API by default; an older engine rejects
        // that, so agree on the engine's version first (one call).
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unavailable(endpoint.no_answer(&e)))?;
        Ok(ComposeBackend {
            docker,
            host,
            settle: Duration::from_secs(10),
            dependency_timeout: DEFAULT_DEPENDENCY_TIMEOUT,
            docker_config: image::docker_config_path(),
        })
    }

    /// How long a container must run without a restart to count as healthy
    /// (the environment's `health.settle`, default 10 s).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// How long apply waits for a `service_healthy` or
    /// `service_completed_successfully` dependency (default 120 s).
    pub fn with_dependency_timeout(mut self, timeout: Duration) -> Self {
        self.dependency_timeout = timeout;
        self
    }

    /// The Docker client config whose `auths` hold registry credentials
    /// (default `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    pub fn with_docker_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.docker_config = Some(path.into());
        self
    }

    /// The engine's host URL, as connected.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The underlying client (for tests and backups).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable {
            target: self.host.clone(),
            message: e.to_string(),
        }
    }
}

/// The Compose projects of a target's desired state.
fn projects(desired: &TargetState) -> Result<&[Project], BackendError> {
    match &desired.resources {
        Resources::Compose(projects) => Ok(projects),
        _ => Err(BackendError::Refused {
            target: desired.target.name.clone(),
            message: "the Compose backend was given non-Compose resources".to_owned(),
        }),
    }
}

impl Backend for ComposeBackend {
    type Live = Live;

    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn read_live(
        &self,
        desired: &TargetState,
        ctx: Context<'_>,
    ) -> Result<Live, BackendError> {
        let projects = projects(desired)?;
        let mut live = live::read(&self.docker, ctx, projects)
            .await
            .map_err(|e| self.unavailable(e))?;
        // `pull_policy: always` and refresh periods: one registry question
        // per such image (the clock is read here, not in the plan).
        live::check_registry(
            &self.docker,
            projects,
            &mut live,
            self.docker_config.as_deref(),
            chrono::Utc::now(),
        )
        .await
        .map_err(|e| self.unavailable(format!("pull_policy: {e}")))?;
        // Git URL build contexts: one ref listing per remote.
        live::resolve_git_contexts(projects, &mut live).await;
        Ok(live)
    }

    async fn plan(
        &self,
        desired: &TargetState,
        live: &Live,
        ctx: Context<'_>,
    ) -> Result<Vec<Change>, BackendError> {
        let projects = projects(desired)?;
        let mut changes = plan::plan(&desired.target.name, projects, live, ctx)?;
        subnets::plan(&self.docker, desired, projects, live, &mut changes).await?;
        Ok(changes)
    }

    async fn apply_live(
        &self,
        desired: &TargetState,
        changes: &[Change],
        live: &Live,
        ctx: Context<'_>,
    ) -> Result<ApplyReport, BackendError> {
        apply::Applier::new(self, desired, ctx)?
            .run(changes, live)
            .await
    }

    async fn health(
        &self,
        desired: &TargetState,
        ctx: Context<'_>,
    ) -> Result<Vec<Verdict>, BackendError> {
        health::health(self, desired, projects(desired)?, ctx).await
    }
}
