//! The pipeline end to end — load → plan → apply → verify — driven through
//! the `Backend` trait by a fake Compose-like backend that keeps "live" state
//! in memory. Real engines are exercised by the backend issues' tests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use driftless::backend::{ApplyReport, Backend, BackendError, Context, Health, Verdict};
use driftless::model::{DesiredState, Resources, TargetState};
use driftless::plan::{Action, Change, Resource, unified_diff};
use driftless::reconcile;
use driftless::render::SecretMode;

use crate::support::RepoBuilder;

/// Live state: `project/service` → the service's definition as JSON text.
#[derive(Default)]
struct FakeEngine {
    live: Mutex<BTreeMap<String, String>>,
    /// Services that never become healthy.
    stuck: Vec<String>,
    applies: Mutex<usize>,
}

fn desired_services(target: &TargetState) -> BTreeMap<String, String> {
    let Resources::Compose(projects) = &target.resources else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for p in projects {
        for (name, svc) in &p.services {
            out.insert(
                format!("{}/{}", p.name, name),
                serde_json::to_string_pretty(svc).unwrap() + "\n",
            );
        }
    }
    out
}

impl Backend for FakeEngine {
    type Live = BTreeMap<String, String>;

    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn read_live(&self, _: &TargetState, _: Context<'_>) -> Result<Self::Live, BackendError> {
        Ok(self.live.lock().unwrap().clone())
    }

    async fn plan(
        &self,
        desired: &TargetState,
        live: &Self::Live,
        ctx: Context<'_>,
    ) -> Result<Vec<Change>, BackendError> {
        let want = desired_services(desired);
        let mut changes = Vec::new();
        let change = |name: &str, action, diff| Change {
            target: desired.target.name.clone(),
            resource: Resource::new("service", name),
            action,
            detail: None,
            diff,
        };
        for (name, def) in &want {
            match live.get(name) {
                None => changes.push(change(
                    name,
                    Action::Create,
                    unified_diff("", def, ctx.masker),
                )),
                Some(old) if old == def => changes.push(change(name, Action::Unchanged, None)),
                Some(old) => changes.push(change(
                    name,
                    Action::Recreate {
                        reason: "config changed".into(),
                    },
                    unified_diff(old, def, ctx.masker),
                )),
            }
        }
        for name in live.keys().filter(|n| !want.contains_key(*n)) {
            changes.push(change(name, Action::Delete, None));
        }
        Ok(changes)
    }

    async fn apply_live(
        &self,
        desired: &TargetState,
        changes: &[Change],
        _: &Self::Live,
        _: Context<'_>,
    ) -> Result<ApplyReport, BackendError> {
        *self.applies.lock().unwrap() += 1;
        let want = desired_services(desired);
        let mut live = self.live.lock().unwrap();
        let mut report = ApplyReport::default();
        for c in changes {
            match c.action {
                Action::Unchanged => continue,
                Action::Delete => {
                    live.remove(&c.resource.name);
                }
                _ => {
                    live.insert(c.resource.name.clone(), want[&c.resource.name].clone());
                    report
                        .image_ids
                        .insert(c.resource.name.clone(), "sha256:fake".into());
                }
            }
            report.applied.push(c.clone());
        }
        Ok(report)
    }

    async fn health(
        &self,
        desired: &TargetState,
        _: Context<'_>,
    ) -> Result<Vec<Verdict>, BackendError> {
        Ok(desired_services(desired)
            .keys()
            .map(|name| {
                let stuck = self.stuck.iter().any(|s| name.ends_with(&format!("/{s}")));
                Verdict {
                    target: desired.target.name.clone(),
                    resource: Resource::new("service", name),
                    health: if stuck {
                        Health::Progressing
                    } else {
                        Health::Healthy
                    },
                    reason: if stuck {
                        "starting".into()
                    } else {
                        "running".into()
                    },
                }
            })
            .collect())
    }
}

const STACK: &str = "name: shop\nservices:\n  web:\n    image: busybox:1.36\n    environment:\n      GREETING: \"{{ greeting }}\"\n      TOKEN: \"{{ secret('api_token') }}\"\n  db:\n    image: postgres:16.4\n";

fn load(
    repo: &RepoBuilder,
    secrets: &std::path::Path,
) -> (DesiredState, driftless::secrets::Masker) {
    let loaded = repo
        .load("dev", Some(secrets), SecretMode::Require)
        .unwrap_or_else(|d| panic!("{d}"));
    (loaded.checked.state, loaded.renderer.masker())
}

fn repo(greeting: &str) -> RepoBuilder {
    RepoBuilder::minimal()
        .file("environments/dev.yaml", format!("greeting: {greeting}\n"))
        .file("compose/stack.yaml.j2", STACK)
}

fn secrets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api_token"), "tok-VERY-SECRET-42").unwrap();
    dir
}

#[tokio::test]
async fn first_apply_then_dry_run_shows_no_changes() {
    let engine = FakeEngine::default();
    let secrets = secrets();
    let (desired, masker) = load(&repo("hello"), secrets.path());

    let plan = reconcile::plan(std::slice::from_ref(&engine), &desired, &masker)
        .await
        .unwrap();
    let s = plan.summary();
    assert_eq!((s.create, s.unchanged), (2, 0));
    let text = plan.render_text(false, false);
    assert!(text.contains("+ local: service shop/web  create"), "{text}");
    assert!(
        !text.contains("VERY-SECRET"),
        "secret in plan text:\n{text}"
    );
    assert!(!plan.to_json().to_string().contains("VERY-SECRET"));

    let report = reconcile::apply(std::slice::from_ref(&engine), &desired, &plan, &masker)
        .await
        .unwrap();
    // The apply executes exactly the plan the dry-run showed.
    let planned: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .cloned()
        .collect();
    assert_eq!(report.applied, planned);

    let again = reconcile::plan(std::slice::from_ref(&engine), &desired, &masker)
        .await
        .unwrap();
    assert!(!again.has_changes(), "{}", again.render_text(false, true));
}

#[tokio::test]
async fn a_changed_value_recreates_only_its_service_with_a_diff() {
    let engine = FakeEngine::default();
    let secrets = secrets();
    let (v1, masker) = load(&repo("hello"), secrets.path());
    let plan = reconcile::plan(std::slice::from_ref(&engine), &v1, &masker)
        .await
        .unwrap();
    reconcile::apply(std::slice::from_ref(&engine), &v1, &plan, &masker)
        .await
        .unwrap();

    let (v2, masker) = load(&repo("bonjour"), secrets.path());
    let plan = reconcile::plan(std::slice::from_ref(&engine), &v2, &masker)
        .await
        .unwrap();
    let changed: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .collect();
    assert_eq!(changed.len(), 1, "{}", plan.render_text(false, true));
    assert_eq!(changed[0].resource.name, "shop/web");
    assert_eq!(
        changed[0].action,
        Action::Recreate {
            reason: "config changed".into()
        }
    );
    let diff = changed[0].diff.as_deref().unwrap();
    assert!(
        diff.contains("-    \"GREETING\": \"hello\",\n+    \"GREETING\": \"bonjour\","),
        "{diff}"
    );
    assert!(
        diff.contains("\"TOKEN\": \"******\""),
        "secret masked in the diff:\n{diff}"
    );
}

#[tokio::test(start_paused = true)]
async fn verify_waits_until_the_deadline_then_reports_the_stuck_service() {
    let engine = FakeEngine {
        stuck: vec!["db".into()],
        ..FakeEngine::default()
    };
    let secrets = secrets();
    let (desired, masker) = load(&repo("hello"), secrets.path());
    let started = tokio::time::Instant::now();
    let verdicts = reconcile::verify(
        std::slice::from_ref(&engine),
        &desired,
        &masker,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert!(started.elapsed() >= desired.environment.health.deadline);
    let db = verdicts
        .iter()
        .find(|v| v.resource.name == "shop/db")
        .unwrap();
    assert_eq!(db.health, Health::Degraded);
    assert!(db.reason.contains("not healthy within 2m"), "{}", db.reason);
    let web = verdicts
        .iter()
        .find(|v| v.resource.name == "shop/web")
        .unwrap();
    assert_eq!(web.health, Health::Healthy);
}
