//! Opt-in: the Kubernetes backend against a real cluster.
//!
//! Set `DRIFTLESS_E2E_KUBECONFIG` to the kubeconfig of a disposable cluster
//! (kind, k3d; its current context is used) and run
//! `cargo test --test it kube_e2e`. Unset, each test prints that it was
//! skipped and passes: no cluster can run on the CI machine. Each test
//! works in its own namespace `driftless-e2e-<n>` and deletes it at the end.
//! `DRIFTLESS_E2E_IMAGE` overrides the image that must start
//! (default `registry.k8s.io/pause:3.10`).
//!
//! The scenarios are the fake API server's (`kube_backend`), where a real
//! server differs: defaulting, quantities in canonical form, real
//! controllers rolling out, real ownership of list items.

use std::time::Duration;

use driftless::backend::kube::KubeBackend;
use driftless::backend::{Backend, BackendError, Context, Driver, Health};
use driftless::manifest::{Allow, KubernetesTarget, Target, TargetKind};
use driftless::model::{KubeObject, Origin, Resources, TargetState};
use driftless::plan::{Action, Change};
use driftless::reconcile;
use driftless::secrets::Masker;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

use crate::kube_backend::{install_crypto, prod};

const ENV: &str = "e2e";

fn kubeconfig() -> Option<String> {
    match std::env::var("DRIFTLESS_E2E_KUBECONFIG") {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            eprintln!(
                "skipped: set DRIFTLESS_E2E_KUBECONFIG to the kubeconfig of a disposable cluster \
                 (kind, k3d) to run the Kubernetes end-to-end suite"
            );
            None
        }
    }
}

fn object(body: Value) -> KubeObject {
    KubeObject {
        api_version: body["apiVersion"].as_str().unwrap().to_owned(),
        kind: body["kind"].as_str().unwrap().to_owned(),
        name: body["metadata"]["name"].as_str().unwrap().to_owned(),
        namespace: body["metadata"]["namespace"].as_str().map(str::to_owned),
        body,
        origin: Origin::default(),
    }
}

fn image() -> String {
    std::env::var("DRIFTLESS_E2E_IMAGE").unwrap_or_else(|_| "registry.k8s.io/pause:3.10".into())
}

/// A namespace (opted into pruning, so cleanup can go through driftless),
/// a ConfigMap, a Secret, a Deployment of `image` and its Service.
fn app(ns: &str, image: &str, secret: &str) -> Vec<KubeObject> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    vec![
        object(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "annotations": {"driftless.io/prune": "true"}}})),
        object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "web-config", "namespace": ns}, "data": {"LOG_LEVEL": "info"}})),
        object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "web-keys", "namespace": ns}, "data": {"API_KEY": b64}})),
        object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"progressDeadlineSeconds": 20, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image,
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}})),
        object(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})),
    ]
}

struct E2e {
    ns: String,
    target: TargetState,
    masker: Masker,
    backend: KubeBackend,
}

impl E2e {
    async fn new(kubeconfig: &str, objects: impl FnOnce(&str) -> Vec<KubeObject>) -> E2e {
        install_crypto();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let ns = format!("driftless-e2e-{}-{nanos}", std::process::id());
        let k = KubernetesTarget {
            kubeconfig: Some(kubeconfig.to_owned()),
            context: None,
            namespace: ns.clone(),
            qps: 50.0,
            burst: 100,
        };
        let backend = KubeBackend::connect("e2e", &k).await.unwrap();
        let target = TargetState {
            target: Target {
                name: "e2e".into(),
                owner: None,
                kind: TargetKind::Kubernetes(k),
            },
            resources: Resources::Kubernetes(objects(&ns)),
        };
        E2e {
            ns,
            target,
            masker: Masker::default(),
            backend,
        }
    }

    fn objects(&mut self) -> &mut Vec<KubeObject> {
        match &mut self.target.resources {
            Resources::Kubernetes(o) => o,
            _ => unreachable!(),
        }
    }

    async fn plan(&self, allow: &Allow) -> Result<Vec<Change>, BackendError> {
        let ctx = Context {
            environment: ENV,
            masker: &self.masker,
            allow,
            owner: driftless::backend::Owner::new(ENV),
            progress: None,
        };
        let live = self.backend.read_live(&self.target, ctx).await?;
        self.backend.plan(&self.target, &live, ctx).await
    }

    async fn apply(&self, plan: &[Change], allow: &Allow) -> Result<(), BackendError> {
        let ctx = Context {
            environment: ENV,
            masker: &self.masker,
            allow,
            owner: driftless::backend::Owner::new(ENV),
            progress: None,
        };
        self.backend
            .apply(&self.target, plan, ctx)
            .await
            .map(|_| ())
    }

    async fn converge(&self) {
        let plan = self.plan(&Allow::default()).await.unwrap();
        self.apply(&plan, &Allow::default()).await.unwrap();
    }

    async fn verify(&self, deadline: Duration) -> Vec<driftless::backend::Verdict> {
        let mut desired = prod();
        desired.environment.name = ENV.into();
        desired.environment.health.deadline = deadline;
        desired.targets = vec![self.target.clone()];
        let TargetKind::Kubernetes(k) = &self.target.target.kind else {
            unreachable!()
        };
        let drivers = [Driver::Kube(KubeBackend::connect("e2e", k).await.unwrap())];
        reconcile::verify(&drivers, &desired, &self.masker, Duration::from_secs(2))
            .await
            .unwrap()
    }

    /// Prunes everything through driftless (the namespace is opted in).
    async fn cleanup(mut self) {
        self.objects().clear();
        let allow = Allow {
            mass_removal: true,
            prune_volumes: true,
            ..Allow::default()
        };
        let plan = self.plan(&allow).await.unwrap();
        self.apply(&plan, &allow).await.unwrap();
    }
}

fn changed(plan: &[Change]) -> Vec<String> {
    plan.iter()
        .filter(|c| c.action != Action::Unchanged)
        .map(|c| format!("{:?} {} {}", c.action, c.resource.kind, c.resource.name))
        .collect()
}

#[tokio::test]
async fn e2e_apply_noop_change_prune_and_health() {
    let Some(kc) = kubeconfig() else { return };
    let mut e = E2e::new(&kc, |ns| app(ns, &image(), "first-secret-value")).await;
    let plan = e.plan(&Allow::default()).await.unwrap();
    assert_eq!(
        plan.iter().filter(|c| c.action == Action::Create).count(),
        6,
        "{plan:#?}"
    );
    e.apply(&plan, &Allow::default()).await.unwrap();
    let verdicts = e.verify(Duration::from_secs(180)).await;
    assert!(
        verdicts.iter().all(|v| v.health == Health::Healthy),
        "{verdicts:#?}"
    );

    // No-op: nothing changes, and a second pass sends LISTs only.
    let before = e.backend.requests_sent();
    assert!(changed(&e.plan(&Allow::default()).await.unwrap()).is_empty());
    let lists = e.backend.requests_sent() - before;
    assert!(lists <= 6, "{lists} requests for a no-op plan");

    // One changed field, one changed line (the server's defaults on both sides).
    let ns = e.ns.clone();
    let cm = e
        .objects()
        .iter_mut()
        .find(|o| o.kind == "ConfigMap")
        .unwrap();
    cm.body["data"]["LOG_LEVEL"] = json!("debug");
    let plan = e.plan(&Allow::default()).await.unwrap();
    assert_eq!(
        changed(&plan),
        [format!("Update ConfigMap {ns}/web-config")]
    );
    let diff = plan
        .iter()
        .find(|c| c.action == Action::Update)
        .unwrap()
        .diff
        .clone()
        .unwrap();
    assert!(
        diff.contains("-  LOG_LEVEL: info\n+  LOG_LEVEL: debug"),
        "{diff}"
    );
    e.apply(&plan, &Allow::default()).await.unwrap();

    // Prune the Service.
    e.objects().retain(|o| o.kind != "Service");
    let plan = e.plan(&Allow::default()).await.unwrap();
    assert_eq!(changed(&plan), [format!("Delete Service {ns}/web")]);
    e.apply(&plan, &Allow::default()).await.unwrap();
    assert!(changed(&e.plan(&Allow::default()).await.unwrap()).is_empty());
    e.cleanup().await;
}

#[tokio::test]
async fn e2e_conflict_and_masked_secret() {
    let Some(kc) = kubeconfig() else { return };
    let mut e = E2e::new(&kc, |ns| app(ns, &image(), "first-secret-value")).await;
    e.converge().await;

    // Another manager takes a field driftless applies.
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kc).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let cms: Api<DynamicObject> = Api::namespaced_with(
        client,
        &e.ns,
        &ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
        },
    );
    let patch = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"},
        "data": {"LOG_LEVEL": "trace"}});
    cms.patch(
        "web-config",
        &PatchParams::apply("e2e-other").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
    let plan = e.plan(&Allow::default()).await.unwrap();
    let c = plan
        .iter()
        .find(|c| c.resource.kind == "ConfigMap" && c.action == Action::Update)
        .unwrap();
    assert!(c.detail.as_deref().unwrap().contains("e2e-other"), "{c:?}");
    let err = e.apply(&plan, &Allow::default()).await.unwrap_err();
    assert!(err.to_string().contains("allow.force_conflicts"), "{err}");
    let allow = Allow {
        force_conflicts: true,
        ..Allow::default()
    };
    let plan = e.plan(&allow).await.unwrap();
    e.apply(&plan, &allow).await.unwrap();

    // A changed Secret shows which key changed, never the value.
    *e.objects().iter_mut().find(|o| o.kind == "Secret").unwrap() =
        app(&e.ns.clone(), &image(), "second-secret-value").remove(2);
    let plan = e.plan(&Allow::default()).await.unwrap();
    let c = plan.iter().find(|c| c.resource.kind == "Secret").unwrap();
    let diff = c.diff.as_deref().unwrap();
    assert!(diff.contains("+  API_KEY: (masked, changed)"), "{diff}");
    assert!(
        !diff.contains("secret-value") && !diff.contains("c2Vjb25k"),
        "{diff}"
    );
    let _ = cms.delete("absent", &DeleteParams::default()).await;
    e.cleanup().await;
}

#[tokio::test]
async fn e2e_a_deployment_that_never_starts_is_degraded() {
    let Some(kc) = kubeconfig() else { return };
    let e = E2e::new(&kc, |ns| {
        app(ns, "registry.invalid/driftless/none:1", "secret-value")
    })
    .await;
    e.converge().await;
    let verdicts = e.verify(Duration::from_secs(60)).await;
    let d = verdicts
        .iter()
        .find(|v| v.resource.kind == "Deployment.apps")
        .unwrap();
    assert_eq!(d.health, Health::Degraded, "{d:?}");
    e.cleanup().await;
}
