//! The Kubernetes backend: server-side apply through kube, a server-side
//! diff, a labelled inventory with safe prune, and Argo CD-style health.
//!
//! read live ([`live`]: one label-selected LIST per kind and namespace) →
//! plan ([`plan`]: unchanged by hash without a call, otherwise a
//! `dryRun=All` apply diffed against live) → apply ([`apply`]: Namespaces,
//! CRDs — waited on until Established —, the inventory, everything else,
//! then prunes) → health ([`health`]). [`discovery`] maps apiVersion/kind
//! to resources; [`rest`] is every request's rate limit ([`ratelimit`]) and
//! retry; [`object`] is how objects are labelled, hashed, compared and shown.
//!
//! Objects stay dynamic (`serde_json::Value` / `DynamicObject`): manifests
//! hold any kind, CRDs included, and a round trip through k8s-openapi's
//! typed structs would drop fields the typed API version does not know.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

use crate::backend::{ApplyReport, Backend, BackendError, Context, Verdict};
use crate::manifest::KubernetesTarget;
use crate::model::{KubeObject, Resources, TargetState};
use crate::plan::Change;
use crate::secrets::Masker;

pub mod apply;
pub mod discovery;
pub mod health;
pub mod live;
pub mod object;
pub mod plan;
pub mod ratelimit;
pub mod rest;

pub use live::Live;
pub use rest::RetryPolicy;

use discovery::{Discovery, Resolved};
use rest::Rest;

/// A connection to one cluster (one Kubernetes target).
#[derive(Debug)]
pub struct KubeBackend {
    target: String,
    namespace: String,
    rest: Rest,
    discovery: Discovery,
    concurrency: usize,
    crd_timeout: Duration,
}

impl KubeBackend {
    /// Connects to the target's cluster: its `kubeconfig` file (context
    /// `context`, else the file's current one); without a file, the
    /// default search (`KUBECONFIG`, `~/.kube/config`) or, failing that,
    /// the in-cluster service account. No request is sent yet.
    pub async fn connect(name: &str, target: &KubernetesTarget) -> Result<Self, BackendError> {
        let unavailable = |message: String| BackendError::Unavailable {
            target: name.to_owned(),
            message,
        };
        let options = KubeConfigOptions {
            context: target.context.clone(),
            ..Default::default()
        };
        let config = match &target.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| unavailable(format!("cannot read kubeconfig {path}: {e}")))?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| unavailable(format!("kubeconfig {path}: {e}")))?
            }
            None if target.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| unavailable(format!("kubeconfig: {e}")))?,
            None => Config::infer().await.map_err(|e| {
                unavailable(format!(
                    "no kubeconfig and not running in a cluster: {e}; set the target's `kubeconfig`"
                ))
            })?,
        };
        Self::from_config(name, target, config)
    }

    /// A backend over an explicit kube [`Config`].
    pub fn from_config(
        name: &str,
        target: &KubernetesTarget,
        mut config: Config,
    ) -> Result<Self, BackendError> {
        // Retries are ours (rest.rs): bounded, and 5xx included.
        config.default_retry = false;
        let client = Client::try_from(config).map_err(|e| BackendError::Unavailable {
            target: name.to_owned(),
            message: format!("cannot build a Kubernetes client: {}", rest::message(&e)),
        })?;
        Ok(KubeBackend {
            target: name.to_owned(),
            namespace: target.namespace.clone(),
            rest: Rest::new(client, target.qps, target.burst),
            discovery: Discovery::default(),
            concurrency: 16,
            crd_timeout: Duration::from_secs(60),
        })
    }

    /// How 429, 5xx and transport errors are retried (default: five
    /// retries, 200 ms doubling to 5 s).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.rest.set_retry(retry);
        self
    }

    /// How many dry-run applies a plan runs at once (default 16; the rate
    /// limit still applies).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long apply waits for a CRD to be Established (default 60 s).
    pub fn with_crd_timeout(mut self, timeout: Duration) -> Self {
        self.crd_timeout = timeout;
        self
    }

    /// HTTP requests sent so far, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.rest.attempts()
    }

    /// The target's default namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn unavailable(&self, what: &str, e: &kube::Error) -> BackendError {
        BackendError::Unavailable {
            target: self.target.clone(),
            message: format!("{what}: {}", rest::message(e)),
        }
    }

    fn refused(&self, message: String) -> BackendError {
        BackendError::Refused {
            target: self.target.clone(),
            message,
        }
    }
}

/// The Kubernetes objects of a target's desired state.
fn objects(desired: &TargetState) -> Result<&[KubeObject], BackendError> {
    match &desired.resources {
        Resources::Kubernetes(objects) => Ok(objects),
        _ => Err(BackendError::Refused {
            target: desired.target.name.clone(),
            message: "the Kubernetes backend was given non-Kubernetes resources".to_owned(),
        }),
    }
}

/// The masker for this target: the environment's secrets plus every value
/// of the desired Secrets, so server error messages quoting one are clean.
fn masker_for(objects: &[KubeObject], base: &Masker) -> Masker {
    let mut m = base.clone();
    for o in objects {
        for v in object::secret_values(&o.body) {
            m.add(&v);
        }
    }
    crate::secrets::mask_logs_of(&m);
    m
}

/// One desired object as the cluster will see it.
#[derive(Debug, Clone)]
pub struct Desired<'a> {
    pub object: &'a KubeObject,
    /// `Kind` / `Kind.group`.
    pub group_kind: String,
    /// `None` while the kind waits for a CRD of the same commit.
    pub resolved: Option<Resolved>,
    /// Effective namespace (`None`: cluster-scoped).
    pub namespace: Option<String>,
    /// The body to apply (labels, namespace and hash annotation set).
    pub body: Value,
    pub hash: String,
    /// The CRD of this commit that defines the kind, when not served yet.
    pub pending_crd: Option<String>,
}

impl Desired<'_> {
    /// The plan's resource for this object.
    pub fn resource(&self) -> crate::plan::Resource {
        crate::plan::Resource::new(
            &self.group_kind,
            qualified(self.namespace.as_deref(), &self.object.name),
        )
    }
}

/// `namespace/name` or `name`.
pub fn qualified(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// The (group, kind, scope, versions) a CRD body defines.
fn crd_defines(crd: &KubeObject, group_kind: &str, api_version: &str) -> bool {
    if crd.kind != "CustomResourceDefinition"
        || !crd.api_version.starts_with("apiextensions.k8s.io/")
    {
        return false;
    }
    let spec = &crd.body["spec"];
    let (group, kind) = discovery::split_group_kind(group_kind);
    let version = api_version.rsplit('/').next().unwrap_or_default();
    spec["group"] == group
        && spec["names"]["kind"] == kind
        && spec["versions"]
            .as_array()
            .is_some_and(|vs| vs.iter().any(|v| v["name"] == version))
}

/// Resolves and prepares every desired object, in manifest order.
async fn desired_objects<'a>(
    backend: &KubeBackend,
    objects: &'a [KubeObject],
    environment: &str,
) -> Result<Vec<Desired<'a>>, BackendError> {
    let mut out = Vec::with_capacity(objects.len());
    for o in objects {
        let group_kind = discovery::group_kind(&o.api_version, &o.kind);
        let resolved = backend
            .discovery
            .resolve(&backend.rest, &o.api_version, &o.kind)
            .await
            .map_err(|e| backend.unavailable("discovery", &e))?;
        let mut pending_crd = None;
        let namespaced = match &resolved {
            Some(r) => r.namespaced,
            None => {
                let crd = objects
                    .iter()
                    .find(|c| crd_defines(c, &group_kind, &o.api_version))
                    .ok_or_else(|| {
                        backend.refused(format!(
                            "{} ({}:{}): the cluster does not serve kind {} in {}, and no \
                             CustomResourceDefinition in this commit defines it",
                            o.key(),
                            o.origin.file,
                            o.origin.line,
                            o.kind,
                            o.api_version
                        ))
                    })?;
                pending_crd = Some(crd.name.clone());
                crd.body["spec"]["scope"] != "Cluster"
            }
        };
        let namespace = namespaced.then(|| {
            o.namespace
                .clone()
                .unwrap_or_else(|| backend.namespace.clone())
        });
        let (body, hash) =
            object::prepare(&o.body, environment, &backend.target, namespace.as_deref());
        out.push(Desired {
            object: o,
            group_kind,
            resolved,
            namespace,
            body,
            hash,
            pending_crd,
        });
    }
    Ok(out)
}

/// Apply order of a kind: Namespaces, then CRDs, then what others refer to
/// before what refers to it (Helm's install order), custom kinds last.
pub fn kind_rank(group_kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "Namespace",
        "CustomResourceDefinition.apiextensions.k8s.io",
        "NetworkPolicy.networking.k8s.io",
        "ResourceQuota",
        "LimitRange",
        "PodDisruptionBudget.policy",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "StorageClass.storage.k8s.io",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "ClusterRole.rbac.authorization.k8s.io",
        "ClusterRoleBinding.rbac.authorization.k8s.io",
        "Role.rbac.authorization.k8s.io",
        "RoleBinding.rbac.authorization.k8s.io",
        "Service",
        "DaemonSet.apps",
        "Pod",
        "ReplicaSet.apps",
        "Deployment.apps",
        "HorizontalPodAutoscaler.autoscaling",
        "StatefulSet.apps",
        "Job.batch",
        "CronJob.batch",
        "IngressClass.networking.k8s.io",
        "Ingress.networking.k8s.io",
    ];
    ORDER
        .iter()
        .position(|k| *k == group_kind)
        .unwrap_or(ORDER.len())
}

impl Backend for KubeBackend {
    type Live = Live;

    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn read_live(
        &self,
        desired: &TargetState,
        ctx: Context<'_>,
    ) -> Result<Live, BackendError> {
        live::read(self, objects(desired)?, ctx.environment).await
    }

    async fn plan(
        &self,
        desired: &TargetState,
        live: &Live,
        ctx: Context<'_>,
    ) -> Result<Vec<Change>, BackendError> {
        plan::plan(self, objects(desired)?, live, ctx).await
    }

    /// Server-side apply needs no live state: `live` is not read.
    async fn apply_live(
        &self,
        desired: &TargetState,
        changes: &[Change],
        _live: &Self::Live,
        ctx: Context<'_>,
    ) -> Result<ApplyReport, BackendError> {
        apply::apply(self, objects(desired)?, changes, ctx).await
    }

    async fn apply(
        &self,
        desired: &TargetState,
        changes: &[Change],
        ctx: Context<'_>,
    ) -> Result<ApplyReport, BackendError> {
        apply::apply(self, objects(desired)?, changes, ctx).await
    }

    async fn health(
        &self,
        desired: &TargetState,
        ctx: Context<'_>,
    ) -> Result<Vec<Verdict>, BackendError> {
        health::health(self, objects(desired)?, ctx).await
    }
}
