//! The Kubernetes backend driven through the real kube client over HTTP
//! against the fake API server (`fake_apiserver`): plan, apply, prune,
//! conflicts, Secrets, health, retries, CRDs from the corpus.

use std::time::{Duration, Instant};

use driftless::backend::kube::{KubeBackend, RetryPolicy};
use driftless::backend::{Backend, BackendError, Context, Driver, Health};
use driftless::manifest::{Allow, TargetKind};
use driftless::model::{KubeObject, Resources, TargetState};
use driftless::plan::{Action, Change};
use driftless::reconcile::{self, RenderOptions};
use driftless::render::SecretMode;
use driftless::secrets::{Masker, SecretSource};
use driftless::source::{Auth, Limits, Source};
use serde_json::{Value, json};

use crate::fake_apiserver::FakeApiServer;
use crate::support::{corpus, example_repo};

/// rustls needs its one crypto provider installed, as main.rs does.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The example's prod environment, loaded (secrets as placeholders).
pub fn prod() -> driftless::model::DesiredState {
    let repo = example_repo();
    let source = Source::open(
        repo.to_str().unwrap(),
        None,
        &std::env::temp_dir(),
        &Auth::None,
    )
    .unwrap();
    let options = RenderOptions {
        secrets: SecretSource::default(),
        mode: SecretMode::Placeholder,
        limits: Limits::default(),
    };
    reconcile::load(&source, "prod", &options)
        .unwrap_or_else(|d| panic!("prod:\n{d}"))
        .checked
        .state
}

struct Fixture {
    server: FakeApiServer,
    _dir: tempfile::TempDir,
    target: TargetState,
    masker: Masker,
}

impl Fixture {
    /// The fake server and prod's Kubernetes target pointed at it.
    async fn new() -> Fixture {
        install_crypto();
        let server = FakeApiServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.kubeconfig(dir.path());
        let mut target = prod()
            .targets
            .into_iter()
            .find(|t| matches!(t.resources, Resources::Kubernetes(_)))
            .expect("prod has a Kubernetes target");
        let TargetKind::Kubernetes(k) = &mut target.target.kind else {
            unreachable!()
        };
        k.kubeconfig = Some(kubeconfig.to_str().unwrap().to_owned());
        k.context = None;
        Fixture {
            server,
            _dir: dir,
            target,
            masker: Masker::default(),
        }
    }

    fn objects(&mut self) -> &mut Vec<KubeObject> {
        match &mut self.target.resources {
            Resources::Kubernetes(o) => o,
            _ => unreachable!(),
        }
    }

    fn object(&mut self, kind: &str, name: &str) -> &mut KubeObject {
        self.objects()
            .iter_mut()
            .find(|o| o.kind == kind && o.name == name)
            .unwrap_or_else(|| panic!("{kind}/{name} in prod"))
    }

    fn set_qps(&mut self, qps: f32, burst: u32) {
        let TargetKind::Kubernetes(k) = &mut self.target.target.kind else {
            unreachable!()
        };
        k.qps = qps;
        k.burst = burst;
    }

    async fn backend(&self) -> KubeBackend {
        let TargetKind::Kubernetes(k) = &self.target.target.kind else {
            unreachable!()
        };
        KubeBackend::connect(&self.target.target.name, k)
            .await
            .unwrap()
    }

    fn ctx<'a>(&'a self, allow: &'a Allow) -> Context<'a> {
        Context {
            environment: "prod",
            masker: &self.masker,
            allow,
            owner: driftless::backend::Owner::new("prod@test"),
            progress: None,
        }
    }

    async fn plan_with(&self, b: &KubeBackend, allow: &Allow) -> Result<Vec<Change>, BackendError> {
        let ctx = self.ctx(allow);
        let live = b.read_live(&self.target, ctx).await?;
        b.plan(&self.target, &live, ctx).await
    }

    async fn plan(&self, b: &KubeBackend) -> Vec<Change> {
        self.plan_with(b, &Allow::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn apply_with(
        &self,
        b: &KubeBackend,
        changes: &[Change],
        allow: &Allow,
    ) -> Result<(), BackendError> {
        b.apply(&self.target, changes, self.ctx(allow))
            .await
            .map(|_| ())
    }

    /// Plan and apply with no opt-ins.
    async fn converge(&self, b: &KubeBackend) -> Vec<Change> {
        let plan = self.plan(b).await;
        self.apply_with(b, &plan, &Allow::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        plan
    }
}

fn changed(plan: &[Change]) -> Vec<String> {
    plan.iter()
        .filter(|c| c.action != Action::Unchanged)
        .map(|c| format!("{:?} {} {}", c.action, c.resource.kind, c.resource.name))
        .collect()
}

/// The +/- lines of a diff, headers left out.
fn diff_lines(c: &Change) -> Vec<String> {
    c.diff
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .map(|l| l.trim_end().to_owned())
        .collect()
}

#[tokio::test]
async fn first_apply_of_the_prod_manifests_then_healthy_and_unchanged() {
    let f = Fixture::new().await;
    let b = f.backend().await;
    let plan = f.plan(&b).await;
    let order: Vec<String> = plan
        .iter()
        .map(|c| format!("{} {}", c.resource.kind, c.resource.name))
        .collect();
    assert_eq!(
        order,
        [
            "Namespace aiops",
            "ConfigMap aiops/driftless-inventory-prod-k8s-prod",
            "NetworkPolicy.networking.k8s.io aiops/default-deny-all",
            "NetworkPolicy.networking.k8s.io aiops/ai-engine",
            "PodDisruptionBudget.policy aiops/ai-engine",
            "ConfigMap aiops/ai-engine-config",
            "Service aiops/ai-engine",
            "Deployment.apps aiops/ai-engine",
            "HorizontalPodAutoscaler.autoscaling aiops/ai-engine",
            "Ingress.networking.k8s.io aiops/ai-engine",
        ]
    );
    assert!(plan.iter().all(|c| c.action == Action::Create), "{plan:#?}");
    let deployment = &plan[7];
    let diff = deployment.diff.as_deref().unwrap();
    assert!(
        diff.contains("+    app.kubernetes.io/managed-by: driftless"),
        "{diff}"
    );
    assert!(
        diff.contains("+    driftless.io/environment: prod"),
        "{diff}"
    );
    assert!(
        !diff.contains("managedFields") && !diff.contains("uid:"),
        "{diff}"
    );

    f.apply_with(&b, &plan, &Allow::default()).await.unwrap();
    assert_eq!(f.server.count(), 10, "nine objects and the inventory");
    let d = f
        .server
        .get("apps/v1", "Deployment", Some("aiops"), "ai-engine")
        .unwrap();
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "driftless"
    );
    assert!(
        d["metadata"]["annotations"]["driftless.io/applied-hash"]
            .as_str()
            .unwrap()
            .len()
            == 64
    );
    assert_eq!(d["metadata"]["managedFields"][0]["manager"], "driftless");
    let inventory = f
        .server
        .get(
            "v1",
            "ConfigMap",
            Some("aiops"),
            "driftless-inventory-prod-k8s-prod",
        )
        .unwrap();
    assert_eq!(
        inventory["data"]["kinds"],
        "ConfigMap aiops\nDeployment.apps aiops\nHorizontalPodAutoscaler.autoscaling aiops\n\
         Ingress.networking.k8s.io aiops\nNamespace\nNetworkPolicy.networking.k8s.io aiops\n\
         PodDisruptionBudget.policy aiops\nService aiops\n"
    );

    // Nothing has rolled out yet: the Deployment is progressing.
    let verdicts = b.health(&f.target, f.ctx(&Allow::default())).await.unwrap();
    let dv = verdicts
        .iter()
        .find(|v| v.resource.kind == "Deployment.apps")
        .unwrap();
    assert_eq!(dv.health, Health::Progressing, "{dv:?}");
    f.server.finish_rollouts();
    let verdicts = b.health(&f.target, f.ctx(&Allow::default())).await.unwrap();
    assert_eq!(verdicts.len(), 9);
    assert!(
        verdicts.iter().all(|v| v.health == Health::Healthy),
        "{verdicts:#?}"
    );

    let again = f.plan(&b).await;
    assert!(changed(&again).is_empty(), "{:?}", changed(&again));
}

#[tokio::test]
async fn a_no_op_plan_sends_lists_only() {
    let f = Fixture::new().await;
    f.converge(&f.backend().await).await;
    f.server.finish_rollouts();

    // A fresh backend discovers once, then only lists.
    let b = f.backend().await;
    f.server.clear_log();
    let plan = f.plan(&b).await;
    assert!(changed(&plan).is_empty(), "{:?}", changed(&plan));
    let log = f.server.requests();
    assert!(
        log.iter().all(|r| r.is_discovery() || r.is_list()),
        "{log:#?}"
    );

    f.server.clear_log();
    let plan = f.plan(&b).await;
    assert!(changed(&plan).is_empty());
    let log = f.server.requests();
    assert!(log.iter().all(|r| r.is_list()), "{log:#?}");
    // One LIST per kind and namespace: eight kinds, the ConfigMaps once.
    assert_eq!(log.len(), 8, "{log:#?}");
    assert!(log.iter().all(|r| r.query["labelSelector"]
        == "app.kubernetes.io/managed-by=driftless,driftless.io/environment=prod,driftless.io/target=k8s-prod"));
}

#[tokio::test]
async fn a_changed_deployment_shows_exactly_that_diff() {
    let mut f = Fixture::new().await;
    let b = f.backend().await;
    f.converge(&b).await;
    let d = f.object("Deployment", "ai-engine");
    let image = d.body["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    d.body["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("registry.example.com/aiops/ai-engine:2.0.0");

    f.server.clear_log();
    let plan = f.plan(&b).await;
    assert_eq!(changed(&plan), ["Update Deployment.apps aiops/ai-engine"]);
    let c = plan.iter().find(|c| c.action == Action::Update).unwrap();
    assert_eq!(
        diff_lines(c),
        [
            format!("-        image: {image}"),
            "+        image: registry.example.com/aiops/ai-engine:2.0.0".to_owned(),
        ],
        "{}",
        c.diff.as_deref().unwrap()
    );
    let log = f.server.requests();
    let patches: Vec<_> = log.iter().filter(|r| r.is_patch()).collect();
    assert_eq!(
        patches.len(),
        1,
        "one dry-run for the one changed object: {log:#?}"
    );
    assert!(patches[0].is_dry_run());
    assert_eq!(patches[0].query["fieldManager"], "driftless");
    assert!(log.iter().all(|r| r.is_list() || r.is_patch()));

    let generation = |f: &Fixture| {
        f.server
            .get("apps/v1", "Deployment", Some("aiops"), "ai-engine")
            .unwrap()["metadata"]["generation"]
            .clone()
    };
    assert_eq!(generation(&f), 1, "a dry run stores nothing");
    f.apply_with(&b, &plan, &Allow::default()).await.unwrap();
    assert_eq!(generation(&f), 2);
    assert!(changed(&f.plan(&b).await).is_empty());
}

#[tokio::test]
async fn a_conflict_with_another_field_manager_is_reported_and_forced_only_when_allowed() {
    let f = Fixture::new().await;
    let b = f.backend().await;
    f.converge(&b).await;
    // Someone runs `kubectl edit` on a field driftless applies.
    f.server.update_as(
        "kubectl-edit",
        "apps/v1",
        "Deployment",
        Some("aiops"),
        "ai-engine",
        |d| {
            d["spec"]["revisionHistoryLimit"] = json!(10);
        },
    );

    let plan = f.plan(&b).await;
    assert_eq!(changed(&plan), ["Update Deployment.apps aiops/ai-engine"]);
    let c = plan.iter().find(|c| c.action == Action::Update).unwrap();
    assert_eq!(
        diff_lines(c),
        ["-  revisionHistoryLimit: 10", "+  revisionHistoryLimit: 5"]
    );
    let detail = c.detail.as_deref().unwrap();
    assert!(
        detail.contains("conflict")
            && detail.contains("kubectl-edit")
            && detail.contains("allow.force_conflicts"),
        "{detail}"
    );

    let err = f
        .apply_with(&b, &plan, &Allow::default())
        .await
        .unwrap_err();
    let BackendError::Apply {
        resource, message, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(resource, "Deployment.apps aiops/ai-engine");
    assert!(
        message.contains("409") && message.contains(".spec.revisionHistoryLimit"),
        "{message}"
    );
    assert!(message.contains("allow.force_conflicts"), "{message}");
    let live = f
        .server
        .get("apps/v1", "Deployment", Some("aiops"), "ai-engine")
        .unwrap();
    assert_eq!(live["spec"]["revisionHistoryLimit"], 10, "nothing forced");

    let allow = Allow {
        force_conflicts: true,
        ..Allow::default()
    };
    let plan = f.plan_with(&b, &allow).await.unwrap();
    f.apply_with(&b, &plan, &allow).await.unwrap();
    let live = f
        .server
        .get("apps/v1", "Deployment", Some("aiops"), "ai-engine")
        .unwrap();
    assert_eq!(live["spec"]["revisionHistoryLimit"], 5);
    assert!(changed(&f.plan(&b).await).is_empty());
}

#[tokio::test]
async fn removed_objects_are_pruned_even_when_their_kind_is_gone() {
    let mut f = Fixture::new().await;
    let b = f.backend().await;
    f.converge(&b).await;
    // One of two NetworkPolicies, and the only HPA (its kind is then known
    // only from the inventory).
    f.objects().retain(|o| {
        !(o.kind == "NetworkPolicy" && o.name == "ai-engine") && o.kind != "HorizontalPodAutoscaler"
    });
    let plan = f.plan(&b).await;
    assert_eq!(
        changed(&plan),
        [
            "Delete HorizontalPodAutoscaler.autoscaling aiops/ai-engine",
            "Delete NetworkPolicy.networking.k8s.io aiops/ai-engine",
        ]
    );
    f.server.clear_log();
    f.apply_with(&b, &plan, &Allow::default()).await.unwrap();
    let deletes = f.server.requests().iter().filter(|r| r.is_delete()).count();
    assert_eq!(deletes, 2);
    assert!(
        f.server
            .get(
                "networking.k8s.io/v1",
                "NetworkPolicy",
                Some("aiops"),
                "ai-engine"
            )
            .is_none()
    );
    assert!(
        f.server
            .get(
                "networking.k8s.io/v1",
                "NetworkPolicy",
                Some("aiops"),
                "default-deny-all"
            )
            .is_some()
    );
    assert!(f.server.all("HorizontalPodAutoscaler").is_empty());
    // The next pass forgets the kind that has no objects left.
    let plan = f.plan(&b).await;
    assert_eq!(
        changed(&plan),
        ["Update ConfigMap aiops/driftless-inventory-prod-k8s-prod"]
    );
    f.apply_with(&b, &plan, &Allow::default()).await.unwrap();
    assert!(changed(&f.plan(&b).await).is_empty());
}

#[tokio::test]
async fn a_mass_prune_is_refused_unless_allowed() {
    let mut f = Fixture::new().await;
    let b = f.backend().await;
    f.converge(&b).await;
    f.objects()
        .retain(|o| o.kind == "Namespace" || o.kind == "ConfigMap");
    let before = f.server.count();
    let err = f.plan_with(&b, &Allow::default()).await.unwrap_err();
    let BackendError::Refused { message, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        message.contains("deletes 7 of the 9") && message.contains("allow.mass_removal"),
        "{message}"
    );
    assert_eq!(f.server.count(), before);

    let allow = Allow {
        mass_removal: true,
        ..Allow::default()
    };
    let plan = f.plan_with(&b, &allow).await.unwrap();
    assert_eq!(
        plan.iter().filter(|c| c.action == Action::Delete).count(),
        7
    );
    f.apply_with(&b, &plan, &allow).await.unwrap();
    assert_eq!(f.server.count(), 3, "namespace, config map, inventory");
}

fn pvc(name: &str) -> KubeObject {
    KubeObject {
        api_version: "v1".into(),
        kind: "PersistentVolumeClaim".into(),
        name: name.into(),
        namespace: Some("aiops".into()),
        body: json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "aiops"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}),
        origin: Default::default(),
    }
}

#[tokio::test]
async fn pvcs_and_namespaces_are_never_pruned_without_the_annotation() {
    let mut f = Fixture::new().await;
    let b = f.backend().await;
    f.objects().push(pvc("models"));
    f.converge(&b).await;
    f.objects().retain(|o| o.kind != "PersistentVolumeClaim");

    let kept = |plan: &[Change]| -> String {
        let c = plan
            .iter()
            .find(|c| c.resource.kind == "PersistentVolumeClaim")
            .expect("listed");
        assert_eq!(c.action, Action::Unchanged, "{c:?}");
        c.detail.clone().unwrap()
    };
    let all = Allow {
        prune_volumes: true,
        mass_removal: true,
        ..Allow::default()
    };
    let plan = f.plan_with(&b, &all).await.unwrap();
    assert!(
        kept(&plan).contains("driftless.io/prune: \"true\""),
        "{}",
        kept(&plan)
    );
    assert!(changed(&plan).is_empty(), "{:?}", changed(&plan));

    f.server.update_as(
        "kubectl-annotate",
        "v1",
        "PersistentVolumeClaim",
        Some("aiops"),
        "models",
        |p| {
            p["metadata"]["annotations"]["driftless.io/prune"] = json!("true");
        },
    );
    let plan = f.plan(&b).await;
    assert!(
        kept(&plan).contains("allow.prune_volumes"),
        "{}",
        kept(&plan)
    );
    let plan = f.plan_with(&b, &all).await.unwrap();
    assert_eq!(
        changed(&plan),
        ["Delete PersistentVolumeClaim aiops/models"]
    );

    // A Namespace gone from the repo stays too (with what is in it).
    f.objects().retain(|o| o.kind != "Namespace");
    let plan = f.plan_with(&b, &all).await.unwrap();
    let ns = plan
        .iter()
        .find(|c| c.resource.kind == "Namespace")
        .unwrap();
    assert_eq!(ns.action, Action::Unchanged);
    assert!(ns.detail.as_deref().unwrap().starts_with("kept"));
}

fn secret(value: &str) -> KubeObject {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    KubeObject {
        api_version: "v1".into(),
        kind: "Secret".into(),
        name: "ai-engine-keys".into(),
        namespace: Some("aiops".into()),
        body: json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "ai-engine-keys", "namespace": "aiops"},
            "data": {"API_KEY": b64, "REGION": "ZXUtd2VzdA=="},
            "stringData": {"TOKEN": format!("token-{value}")}}),
        origin: Default::default(),
    }
}

#[tokio::test]
async fn a_secret_change_is_shown_masked() {
    use base64::Engine as _;
    let mut f = Fixture::new().await;
    let b = f.backend().await;
    f.objects().push(secret("old-api-key-value"));
    let plan = f.converge(&b).await;
    let create = plan.iter().find(|c| c.resource.kind == "Secret").unwrap();
    let text = create.diff.as_deref().unwrap();
    assert!(text.contains("API_KEY: (masked, changed)"), "{text}");
    assert!(!text.contains("old-api-key-value"), "{text}");

    *f.objects().iter_mut().find(|o| o.kind == "Secret").unwrap() = secret("new-api-key-value");
    let plan = f.plan(&b).await;
    assert_eq!(changed(&plan), ["Update Secret aiops/ai-engine-keys"]);
    let c = plan.iter().find(|c| c.resource.kind == "Secret").unwrap();
    let text = c.diff.as_deref().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in ["old-api-key-value", "new-api-key-value"] {
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains(&b64.encode(secret)), "{text}");
    }
    assert!(!text.contains("ZXUtd2VzdA=="), "{text}");
    assert_eq!(
        diff_lines(c),
        [
            "-  API_KEY: (masked)",
            "+  API_KEY: (masked, changed)",
            "-  TOKEN: (masked)",
            "+  TOKEN: (masked, changed)",
        ],
        "{text}"
    );
    // Errors quoting a Secret's value are masked too.
    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains("new-api-key-value"));
}

#[tokio::test]
async fn a_deployment_that_never_becomes_available_is_unhealthy_within_the_deadline() {
    let f = Fixture::new().await;
    let b = f.backend().await;
    f.converge(&b).await;
    f.server.finish_rollouts();
    let d = f
        .server
        .get("apps/v1", "Deployment", Some("aiops"), "ai-engine")
        .unwrap();
    f.server.set_status(
        "apps/v1",
        "Deployment",
        Some("aiops"),
        "ai-engine",
        json!({
        "observedGeneration": d["metadata"]["generation"], "replicas": 1,
        "updatedReplicas": 1, "availableReplicas": 0, "unavailableReplicas": 1}),
    );

    let mut desired = prod();
    desired.targets = vec![f.target.clone()];
    desired.environment.health.deadline = Duration::from_secs(1);
    let drivers = [Driver::Kube(b)];
    let start = Instant::now();
    let verdicts = reconcile::verify(&drivers, &desired, &f.masker, Duration::from_millis(100))
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let v = verdicts
        .iter()
        .find(|v| v.resource.kind == "Deployment.apps")
        .unwrap();
    assert_eq!(v.health, Health::Degraded);
    assert_eq!(v.reason, "not healthy within 1s: 0/1 replicas available");
    assert!(
        verdicts
            .iter()
            .filter(|v| v.resource.kind != "Deployment.apps")
            .all(|v| v.health == Health::Healthy)
    );

    // A controller that gave up is degraded at once.
    f.server.set_status("apps/v1", "Deployment", Some("aiops"), "ai-engine", json!({
        "observedGeneration": d["metadata"]["generation"], "replicas": 1, "updatedReplicas": 1,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"ai-engine-7d9\" has timed out progressing."}]}));
    desired.environment.health.deadline = Duration::from_secs(60);
    let start = Instant::now();
    let verdicts = reconcile::verify(&drivers, &desired, &f.masker, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    let v = verdicts
        .iter()
        .find(|v| v.resource.kind == "Deployment.apps")
        .unwrap();
    assert_eq!(v.health, Health::Degraded);
    assert!(v.reason.contains("timed out progressing"), "{}", v.reason);
}

#[tokio::test]
async fn throttled_and_failing_requests_are_retried_with_backoff() {
    let f = Fixture::new().await;
    let b = f.backend().await;
    f.server.fail_next(&[429, 429, 503]);
    let start = Instant::now();
    let plan = f.plan(&b).await;
    assert_eq!(plan.len(), 10);
    // 200 + 400 + 800 ms of backoff.
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        start.elapsed()
    );
    let statuses: Vec<u16> = f
        .server
        .requests()
        .iter()
        .take(4)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 429, 503, 200]);

    // Retries are bounded: a server that keeps failing is an error.
    let b = f.backend().await.with_retry(RetryPolicy {
        max_retries: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
    });
    f.server.fail_next(&[500; 3]);
    let err = f.plan_with(&b, &Allow::default()).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("injected failure 500"), "{err}");
}

#[tokio::test]
async fn the_client_side_rate_limit_holds() {
    let mut f = Fixture::new().await;
    f.set_qps(20.0, 1);
    let b = f.backend().await;
    let start = Instant::now();
    f.plan(&b).await;
    let sent = b.requests_sent();
    let floor = Duration::from_secs_f64((sent - 1) as f64 / 20.0);
    assert!(sent > 15, "{sent}");
    assert!(
        start.elapsed() >= floor,
        "{sent} requests in {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn objects_made_by_hand_are_adopted_and_other_environments_objects_refused() {
    let f = Fixture::new().await;
    let b = f.backend().await;
    f.server
        .insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "aiops"}}));
    f.server.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ai-engine-config", "namespace": "aiops"}, "data": {"LOG_LEVEL": "debug"}}));
    let plan = f.plan(&b).await;
    let cm = plan
        .iter()
        .find(|c| c.resource.name == "aiops/ai-engine-config")
        .unwrap();
    assert_eq!(cm.action, Action::Update);
    assert!(cm.detail.as_deref().unwrap().contains("adopts"), "{cm:?}");
    assert!(
        diff_lines(cm).contains(&"-  LOG_LEVEL: debug".to_owned()),
        "{:?}",
        cm.diff
    );

    f.server.insert(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ai-engine", "namespace": "aiops",
            "labels": {"app.kubernetes.io/managed-by": "driftless", "driftless.io/environment": "staging"}}}));
    let err = f.plan_with(&b, &Allow::default()).await.unwrap_err();
    assert!(
        err.to_string().contains("managed by environment `staging`"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_kinds_without_a_crd_are_refused_with_their_origin() {
    let mut f = Fixture::new().await;
    let b = f.backend().await;
    let mut o = pvc("x");
    o.api_version = "example.com/v1".into();
    o.kind = "Widget".into();
    o.body = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}});
    o.origin.file = "kubernetes/widget.yaml".into();
    o.origin.line = 3;
    f.objects().push(o);
    let err = f.plan_with(&b, &Allow::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("Widget/aiops/x (kubernetes/widget.yaml:3)")
            && text.contains("no CustomResourceDefinition"),
        "{text}"
    );
}

/// kube-prometheus from the corpus: CRDs and the objects of their kinds in
/// one commit, a Secret with `stringData`, a RoleBindingList.
#[tokio::test]
async fn corpus_kube_prometheus_with_its_crds_applies_in_one_pass() {
    let mut f = Fixture::new().await;
    let root = corpus().join("k8s/kube-prometheus/manifests");
    let mut files: Vec<_> = std::fs::read_dir(root.join("setup"))
        .unwrap()
        .chain(std::fs::read_dir(&root).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path
            .strip_prefix(corpus())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        objects
            .extend(driftless::check::kube::load(&name, &text).unwrap_or_else(|d| panic!("{d}")));
    }
    *f.objects() = objects;
    f.server
        .insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}));
    f.server.insert(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
    );
    f.server
        .insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "aiops"}}));
    let b = f.backend().await;

    // The corpus has an Alertmanager without its CRD: refused, named.
    let err = f.plan_with(&b, &Allow::default()).await.unwrap_err();
    assert!(
        err.to_string().contains("Alertmanager/monitoring/main"),
        "{err}"
    );
    f.objects().retain(|o| o.kind != "Alertmanager");
    let count = f.objects().len();

    f.server.set_crd_delay(Duration::from_millis(400));
    let plan = f.plan(&b).await;
    let pending: Vec<&Change> = plan
        .iter()
        .filter(|c| {
            c.detail
                .as_deref()
                .is_some_and(|d| d.contains("defined by CustomResourceDefinition"))
        })
        .collect();
    assert_eq!(
        pending.len(),
        4,
        "Prometheus, two PrometheusRules, a ServiceMonitor: {plan:#?}"
    );
    assert_eq!(plan[0].resource.kind, "Namespace");
    assert!(
        plan[1..4]
            .iter()
            .all(|c| c.resource.kind == "CustomResourceDefinition.apiextensions.k8s.io")
    );
    let secret = plan.iter().find(|c| c.resource.kind == "Secret").unwrap();
    let text = secret.diff.as_deref().unwrap();
    assert!(
        text.contains("alertmanager.yaml: (masked, changed)") && !text.contains("resolve_timeout"),
        "{text}"
    );

    let start = Instant::now();
    f.apply_with(&b, &plan, &Allow::default()).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "waited for Established"
    );
    assert!(
        f.server
            .get(
                "monitoring.coreos.com/v1",
                "Prometheus",
                Some("monitoring"),
                "k8s"
            )
            .is_some()
    );
    assert_eq!(
        f.server.count(),
        count + 4,
        "plus three namespaces and the inventory"
    );

    let b = f.backend().await;
    f.server.clear_log();
    let plan = f.plan(&b).await;
    assert!(changed(&plan).is_empty(), "{:?}", changed(&plan));
    assert!(
        f.server
            .requests()
            .iter()
            .all(|r| r.is_discovery() || r.is_list())
    );
}

#[tokio::test]
async fn the_driver_connects_kubernetes_targets() {
    let f = Fixture::new().await;
    let desired = {
        let mut d = prod();
        d.targets = vec![f.target.clone()];
        d
    };
    let drivers = reconcile::connect(&desired).await.unwrap();
    assert_eq!(drivers[0].kind(), "kubernetes");
    let plan = reconcile::plan(&drivers, &desired, &f.masker)
        .await
        .unwrap();
    assert_eq!(plan.summary().create, 10);
    reconcile::apply(&drivers, &desired, &plan, &f.masker)
        .await
        .unwrap();
    assert_eq!(f.server.count(), 10);
    let _: Value = f.server.get("v1", "Namespace", None, "aiops").unwrap();
}

#[tokio::test]
async fn two_targets_of_one_environment_on_one_cluster_never_prune_each_other() {
    let a = Fixture::new().await;
    let ba = a.backend().await;
    a.converge(&ba).await;

    // A second target of prod on the same cluster, with a cluster-scoped object.
    // (b's own fake server stays unused: its target points at a's.)
    let mut b = Fixture::new().await;
    b.target = a.target.clone();
    b.target.target.name = "k8s-tools".into();
    let TargetKind::Kubernetes(k) = &mut b.target.target.kind else {
        unreachable!()
    };
    k.namespace = "tools".into();
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "tools-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
    *b.objects() = vec![
        KubeObject {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            name: "tools".into(),
            namespace: None,
            body: json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tools"}}),
            origin: Default::default(),
        },
        KubeObject {
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: "ClusterRole".into(),
            name: "tools-reader".into(),
            namespace: None,
            body: role,
            origin: Default::default(),
        },
    ];
    let bb = b.backend().await;
    b.converge(&bb).await;
    assert!(
        a.server
            .get(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                None,
                "tools-reader"
            )
            .is_some()
    );

    let plan = a.plan(&ba).await;
    assert!(changed(&plan).is_empty(), "{:?}", changed(&plan));
    assert!(
        plan.iter().all(|c| !c.resource.name.contains("tools")),
        "{plan:#?}"
    );
    let plan = b.plan(&bb).await;
    assert!(changed(&plan).is_empty(), "{:?}", changed(&plan));
}
