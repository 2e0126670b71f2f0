//! Backends: the only code that reads or changes live systems.
//!
//! Each backend has the same shape — read live → plan(desired, live) →
//! apply(plan) → health — expressed by [`Backend`]. The daemon and the CLI
//! drive every backend through this trait; tests drive the pipeline with a
//! fake one.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::manifest::{Adopt, Allow};
use crate::model::TargetState;
use crate::plan::Change;
use crate::secrets::Masker;

pub mod compose;
pub mod kube;
pub mod progress;
pub mod rules;

/// What a backend needs besides the desired state to plan and apply.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub environment: &'a str,
    pub masker: &'a Masker,
    /// The environment's opt-ins for destructive actions.
    pub allow: &'a Allow,
    /// Which live resources the environment owns, and which it may adopt.
    pub owner: Owner<'a>,
    /// Where an apply shows the services it is replacing (the daemon's
    /// status reads it); `None` when nobody watches.
    pub progress: Option<&'a progress::Progress>,
}

/// The ownership of what an environment deploys: every resource it creates
/// carries `instance` (unique to the desired state: repo and environment,
/// or the environment's explicit `instance:`), and only what carries it is
/// the environment's to change or prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub instance: &'a str,
    pub adopt: Adopt,
}

impl<'a> Owner<'a> {
    /// Owns what carries `instance`, adopts nothing.
    pub fn new(instance: &'a str) -> Owner<'a> {
        Owner {
            instance,
            adopt: Adopt::No,
        }
    }
}

/// A backend failure, with what to do when there is something to say.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The live system could not be reached or answered with an error.
    #[error("{target}: {message}")]
    Unavailable { target: String, message: String },
    /// The plan is refused by a safety rule (mass removal, volume deletion).
    #[error("{target}: {message}")]
    Refused { target: String, message: String },
    /// Applying a change failed; earlier changes were applied.
    #[error("{target}: {resource}: {message}")]
    Apply {
        target: String,
        resource: String,
        message: String,
    },
    /// An update stopped part-way because the resource asks for it
    /// (`failure_action: pause`): what was replaced stays, the rest keeps
    /// its old definition, and nothing is rolled back automatically.
    #[error("{target}: {resource}: {message}")]
    Paused {
        target: String,
        resource: String,
        message: String,
    },
}

impl BackendError {
    /// Puts the manifest's target name in front of the connection detail
    /// (`docker-b (tcp://h:2376)`), so an error says which target to fix.
    pub fn naming_target(self, name: &str) -> BackendError {
        match self {
            BackendError::Unavailable { target, message } if target != name => {
                BackendError::Unavailable {
                    target: format!("target `{name}` ({target})"),
                    message,
                }
            }
            other => other,
        }
    }
}

/// The health of one resource after an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub target: String,
    pub resource: crate::plan::Resource,
    pub health: Health,
    /// Why, in words: `container restarted 3 times`, `1/2 replicas available`.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// Not there yet; verify keeps waiting until its deadline.
    Progressing,
    /// Failed; verify gives up and the daemon rolls back.
    Degraded,
}

/// What an apply did, resource by resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Changes applied, in order.
    pub applied: Vec<Change>,
    /// Resolved image ids per service (`project/service` → `sha256:…`), so a
    /// rollback can pin exactly what ran.
    pub image_ids: std::collections::BTreeMap<String, String>,
}

/// A kind of live system. `Live` is the backend's snapshot of live state.
pub trait Backend: Send + Sync {
    type Live: Send + Sync;

    /// The target kind this backend drives (`docker`, `kubernetes`,
    /// `prometheus`, as [`crate::manifest::TargetKind::as_str`]).
    fn kind(&self) -> &'static str;

    /// Reads the live state relevant to `desired` (one list call per kind).
    fn read_live(
        &self,
        desired: &TargetState,
        ctx: Context<'_>,
    ) -> impl Future<Output = Result<Self::Live, BackendError>> + Send;

    /// Compares desired with live. Returns every resource with its action,
    /// unchanged ones included, in apply order.
    fn plan(
        &self,
        desired: &TargetState,
        live: &Self::Live,
        ctx: Context<'_>,
    ) -> impl Future<Output = Result<Vec<Change>, BackendError>> + Send;

    /// Executes `changes` (as returned by `plan` from `live`) against the
    /// target, stopping at the first hard error. `live` is the state the
    /// plan read: the apply does not read it again.
    fn apply_live(
        &self,
        desired: &TargetState,
        changes: &[Change],
        live: &Self::Live,
        ctx: Context<'_>,
    ) -> impl Future<Output = Result<ApplyReport, BackendError>> + Send;

    /// [`Backend::apply_live`] on the live state as read now.
    fn apply(
        &self,
        desired: &TargetState,
        changes: &[Change],
        ctx: Context<'_>,
    ) -> impl Future<Output = Result<ApplyReport, BackendError>> + Send {
        async move {
            let live = self.read_live(desired, ctx).await?;
            self.apply_live(desired, changes, &live, ctx).await
        }
    }

    /// One verdict per desired resource, as of now (verify polls this until
    /// its deadline).
    fn health(
        &self,
        desired: &TargetState,
        ctx: Context<'_>,
    ) -> impl Future<Output = Result<Vec<Verdict>, BackendError>> + Send;
}

/// The backend for one target, chosen by the target's kind: the closed set
/// of live systems driftless drives.
#[derive(Debug)]
pub enum Driver {
    Compose(compose::ComposeBackend),
    Kube(kube::KubeBackend),
    Rules(rules::RulesBackend),
}

/// Live state read by a [`Driver`].
#[derive(Debug)]
pub enum DriverLive {
    Compose(compose::Live),
    Kube(kube::Live),
    Rules(rules::Live),
}

impl Driver {
    /// Connects to a target of an environment.
    pub async fn connect(
        target: &crate::manifest::Target,
        env: &crate::manifest::Environment,
    ) -> Result<Driver, BackendError> {
        use crate::manifest::TargetKind;
        match &target.kind {
            TargetKind::Docker(d) => Ok(Driver::Compose(
                compose::ComposeBackend::connect(d)
                    .await
                    .map_err(|e| e.naming_target(&target.name))?
                    .with_settle(env.health.settle)
                    // A replica gated during an update, or a dependency
                    // waited on, may take as long as the environment
                    // gives its health (a slow database), never less
                    // than the backend's own 120 s.
                    .with_dependency_timeout(
                        env.health.deadline.max(compose::DEFAULT_DEPENDENCY_TIMEOUT),
                    ),
            )),
            TargetKind::Kubernetes(k) => Ok(Driver::Kube(
                kube::KubeBackend::connect(&target.name, k).await?,
            )),
            TargetKind::Prometheus(p) => Ok(Driver::Rules(
                rules::RulesBackend::connect(&target.name, p).await?,
            )),
        }
    }
}

impl Backend for Driver {
    type Live = DriverLive;

    fn kind(&self) -> &'static str {
        match self {
            Driver::Compose(b) => b.kind(),
            Driver::Kube(b) => b.kind(),
            Driver::Rules(b) => b.kind(),
        }
    }

    async fn read_live(
        &self,
        desired: &TargetState,
        ctx: Context<'_>,
    ) -> Result<DriverLive, BackendError> {
        match self {
            Driver::Compose(b) => b.read_live(desired, ctx).await.map(DriverLive::Compose),
            Driver::Kube(b) => b.read_live(desired, ctx).await.map(DriverLive::Kube),
            Driver::Rules(b) => b.read_live(desired, ctx).await.map(DriverLive::Rules),
        }
    }

    async fn plan(
        &self,
        desired: &TargetState,
        live: &DriverLive,
        ctx: Context<'_>,
    ) -> Result<Vec<Change>, BackendError> {
        match (self, live) {
            (Driver::Compose(b), DriverLive::Compose(l)) => b.plan(desired, l, ctx).await,
            (Driver::Kube(b), DriverLive::Kube(l)) => b.plan(desired, l, ctx).await,
            (Driver::Rules(b), DriverLive::Rules(l)) => b.plan(desired, l, ctx).await,
            (b, _) => Err(BackendError::Refused {
                target: desired.target.name.clone(),
                message: format!(
                    "live state of another kind given to the {} backend",
                    b.kind()
                ),
            }),
        }
    }

    async fn apply_live(
        &self,
        desired: &TargetState,
        changes: &[Change],
        live: &DriverLive,
        ctx: Context<'_>,
    ) -> Result<ApplyReport, BackendError> {
        match (self, live) {
            (Driver::Compose(b), DriverLive::Compose(l)) => {
                b.apply_live(desired, changes, l, ctx).await
            }
            (Driver::Kube(b), DriverLive::Kube(l)) => b.apply_live(desired, changes, l, ctx).await,
            (Driver::Rules(b), DriverLive::Rules(l)) => {
                b.apply_live(desired, changes, l, ctx).await
            }
            (b, _) => Err(BackendError::Refused {
                target: desired.target.name.clone(),
                message: format!(
                    "live state of another kind given to the {} backend",
                    b.kind()
                ),
            }),
        }
    }

    async fn health(
        &self,
        desired: &TargetState,
        ctx: Context<'_>,
    ) -> Result<Vec<Verdict>, BackendError> {
        match self {
            Driver::Compose(b) => b.health(desired, ctx).await,
            Driver::Kube(b) => b.health(desired, ctx).await,
            Driver::Rules(b) => b.health(desired, ctx).await,
        }
    }
}
