//! The bundled example repo (`examples/repo-layout`): every environment
//! validates, renders to the reviewed snapshot, and differs from the others
//! in the ways the example promises.

use driftless::model::Resources;
use driftless::reconcile::{self, Loaded, RenderOptions};
use driftless::render::SecretMode;
use driftless::secrets::SecretSource;
use driftless::source::{Auth, Limits, Source};

use crate::support::{driftless, example_repo};

fn load(env: &str) -> Loaded {
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
    reconcile::load(&source, env, &options).unwrap_or_else(|d| panic!("{env}:\n{d}"))
}

/// The rendered files of an environment as `driftless render` prints them.
fn rendered(loaded: &Loaded) -> String {
    let mut out = String::new();
    for (path, file) in &loaded.checked.files {
        out.push_str(&format!("# ---- {path} (from {})\n", file.source));
        out.push_str(&String::from_utf8_lossy(&file.content));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[test]
fn every_environment_validates_with_the_cli() {
    let run = driftless(&example_repo(), &["validate", "--all"]);
    assert_eq!(run.code, 0, "{run:?}");
    for env in ["dev", "staging", "prod"] {
        assert!(run.stdout.contains(&format!("{env}: ok")), "{run:?}");
    }
}

#[test]
fn rendered_environments_match_their_snapshots() {
    for env in ["dev", "staging", "prod"] {
        let loaded = load(env);
        insta::assert_snapshot!(format!("example-{env}"), rendered(&loaded));
    }
}

#[test]
fn environments_differ_in_replicas_and_kubernetes() {
    let services = |l: &Loaded, name: &str| -> u32 {
        l.checked
            .state
            .targets
            .iter()
            .find_map(|t| match &t.resources {
                Resources::Compose(p) => p[0].services.get(name).map(|s| s.replicas),
                _ => None,
            })
            .unwrap_or(0)
    };
    let objects = |l: &Loaded| -> usize {
        l.checked
            .state
            .targets
            .iter()
            .map(|t| match &t.resources {
                Resources::Kubernetes(o) => o.len(),
                _ => 0,
            })
            .sum()
    };
    let (dev, staging, prod) = (load("dev"), load("staging"), load("prod"));
    assert_eq!(services(&dev, "api-gateway"), 1);
    assert_eq!(services(&staging, "api-gateway"), 2);
    assert_eq!(services(&prod, "api-gateway"), 3);
    assert_eq!(objects(&dev), 0);
    assert_eq!(objects(&staging), 0);
    assert!(objects(&prod) >= 7, "prod has the ai-engine manifests");
    let hpa = prod
        .checked
        .state
        .targets
        .iter()
        .find_map(|t| match &t.resources {
            Resources::Kubernetes(o) => o
                .iter()
                .find(|o| o.kind == "HorizontalPodAutoscaler")
                .cloned(),
            _ => None,
        })
        .expect("prod has an HPA");
    assert_eq!(hpa.api_version, "autoscaling/v2");
    assert_eq!(hpa.body["spec"]["minReplicas"], 2);
    assert_eq!(hpa.body["spec"]["maxReplicas"], 10);
}

#[test]
fn no_image_uses_latest_and_every_service_has_limits() {
    for env in ["dev", "staging", "prod"] {
        let loaded = load(env);
        for t in &loaded.checked.state.targets {
            let Resources::Compose(projects) = &t.resources else {
                continue;
            };
            for p in projects {
                for (name, s) in &p.services {
                    assert!(
                        !s.image.ends_with(":latest") && s.image.contains(':'),
                        "{env}/{name}: {}",
                        s.image
                    );
                    assert!(
                        s.resources.limits.memory.is_some() && s.resources.limits.cpus.is_some(),
                        "{env}/{name} limits"
                    );
                }
            }
        }
    }
}

#[test]
fn secrets_are_placeholders_without_a_secrets_dir() {
    let loaded = load("prod");
    let missing = loaded.renderer.missing_secrets();
    assert!(
        missing.contains(&"postgres_password".to_owned()),
        "{missing:?}"
    );
    assert!(rendered(&loaded).contains("<secret:postgres_password>"));
}

/// Prod's PagerDuty key is in Git, SOPS-encrypted for the prod daemon's age
/// key (a test key here): with that key in the secrets directory it
/// decrypts into the Alertmanager config, and `render` shows it masked.
#[test]
fn prod_reads_its_pagerduty_key_from_a_sops_file() {
    const KEY: &str = "R0UT1NG-example-prod-5f0c2a9e7d41b3c8";
    let secrets = secrets_but(&[]);
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sops/example-prod.age.key");
    std::fs::copy(&fixture, secrets.path().join("age.key")).unwrap();
    let source = Source::open(
        example_repo().to_str().unwrap(),
        None,
        &std::env::temp_dir(),
        &Auth::None,
    )
    .unwrap();
    let options = RenderOptions {
        secrets: SecretSource {
            dir: Some(secrets.path().to_owned()),
            from_env: false,
        },
        mode: SecretMode::Require,
        limits: Limits::default(),
    };
    let loaded = reconcile::load(&source, "prod", &options).unwrap_or_else(|d| panic!("{d}"));
    let alertmanager = &loaded.checked.files["compose/alertmanager/alertmanager.yml"];
    let text = String::from_utf8_lossy(&alertmanager.content);
    assert!(text.contains(&format!("routing_key: \"{KEY}\"")), "{text}");

    let dir = secrets.path().to_str().unwrap();
    let run = driftless(
        &example_repo(),
        &["render", "--env", "prod", "--secrets-dir", dir],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("routing_key: \"******\""),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(KEY) && !run.stderr.contains(KEY));
    assert!(
        run.stderr.contains(
            "note: values from SOPS file environments/prod.sops.yaml (decrypted, shown masked): pagerduty_routing_key"
        ),
        "{}",
        run.stderr
    );

    // Where the key is not (CI), validate checks prod with placeholders
    // and says so.
    let run = driftless(&example_repo(), &["validate", "--env", "prod"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(
            "SOPS files not decrypted (no age identity, checked with placeholders): environments/prod.sops.yaml"
        ),
        "{}",
        run.stdout
    );
}

/// Every secret the example's templates read.
const SECRETS: &[&str] = &[
    "alertmanager_webhook_token",
    "elastic_password",
    "grafana_admin_password",
    "jwt_secret",
    "kibana_system_password",
    "logstash_writer_password",
    "mongodb_app_password",
    "mongodb_root_password",
    "postgres_password",
    "redis_password",
    "slack_webhook_url",
];

/// A secrets directory holding every secret of the example but `except`.
fn secrets_but(except: &[&str]) -> tempfile::TempDir {
    let secrets = tempfile::tempdir().unwrap();
    for name in SECRETS.iter().filter(|n| !except.contains(n)) {
        std::fs::write(secrets.path().join(name), format!("s3cret-{name}\n")).unwrap();
    }
    secrets
}

/// `reconcile --dry-run` of `dev` as its daemon identity, with the secrets
/// in `secrets_dir`.
fn dry_run_dev(secrets_dir: &str) -> crate::support::Run {
    let args = [
        "reconcile",
        "--env",
        "dev",
        "--dry-run",
        "--identity",
        "ops-dev",
        "--secrets-dir",
        secrets_dir,
    ];
    driftless(&example_repo(), &args)
}

/// One run says everything that is missing, and nothing that only follows
/// from it (the backup jobs of a stack that did not render).
#[test]
fn a_dry_run_names_every_missing_secret_once_and_no_consequences() {
    let missing = ["postgres_password", "redis_password", "jwt_secret"];
    let secrets = secrets_but(&missing);
    let dir = secrets.path().to_str().unwrap();
    let run = dry_run_dev(dir);
    assert_eq!(run.code, 1, "{run:?}");
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    for name in missing {
        assert!(
            errors[0].contains(&format!("`{name}`")),
            "{name}: {}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("backup job"), "{}", run.stderr);

    // `validate` renders placeholders, and says which secrets it lacked.
    let run = driftless(
        &example_repo(),
        &["validate", "--env", "dev", "--secrets-dir", dir],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("secrets not set (checked with placeholders, `reconcile` needs them): jwt_secret, postgres_password, redis_password"),
        "{}",
        run.stdout
    );
}

/// A newcomer's first command against their engine: nothing of the
/// example is deployed yet, and the rule files go into a Prometheus
/// container the same plan creates.
#[test]
fn the_first_dry_run_of_dev_plans_every_service_and_the_rule_files_after_them() {
    let secrets = secrets_but(&[]);
    let dir = secrets.path().to_str().unwrap();
    let run = dry_run_dev(dir);
    assert_eq!(run.code, 0, "{run:?}");
    for service in ["traefik", "postgres", "prometheus", "grafana", "kibana"] {
        let line = format!("+ docker-local: service aiops-dev/{service}  create");
        assert!(run.stdout.contains(&line), "{line}\n{}", run.stdout);
    }
    for file in ["aiops-alerts.yml", "aiops-records.yml"] {
        let line = format!("+ prometheus-dev: rule-file {file}  create");
        assert!(run.stdout.contains(&line), "{line}\n{}", run.stdout);
    }
    assert!(
        run.stdout
            .contains("written once container aiops-dev-prometheus-1 exists"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("s3cret-"), "{}", run.stdout);
}
