//! Policies: each built-in fires on a small bad repo, an exception on the
//! object silences it (and is reported), modes and the repo's own policies.

use driftless::diag::{Diagnostic, Diagnostics};
use driftless::render::SecretMode;

use crate::support::RepoBuilder;

const MANIFEST: &str = "apiVersion: driftless/v1
targets:
  local:
    docker: {}
  k8s:
    kubernetes: {namespace: apps}
policies:
  pinned-images: deny
  healthchecks: deny
  readiness-probes: deny
  resource-limits: deny
  non-root: deny
  no-privileged: deny
  prod-replicas: deny
  no-secret-literals: deny
environments:
  prod:
    targets: [local, k8s]
";

/// A Compose service that passes every built-in, with `overrides`
/// (top-level key → YAML after `key:`, nested lines indented six spaces)
/// and `labels` (one `key: value` each).
fn service(name: &str, overrides: &[(&str, &str)], labels: &[&str]) -> String {
    let mut keys: Vec<(&str, String)> = vec![
        ("image", " busybox:1.36".to_owned()),
        ("user", " \"1000\"".to_owned()),
        ("restart", " unless-stopped".to_owned()),
        (
            "healthcheck",
            "\n      test: [\"CMD\", \"true\"]".to_owned(),
        ),
        (
            "deploy",
            "\n      replicas: 2\n      resources:\n        limits: {cpus: \"0.5\", memory: 64M}"
                .to_owned(),
        ),
    ];
    for (k, v) in overrides {
        match keys.iter_mut().find(|(key, _)| key == k) {
            Some(entry) => entry.1 = (*v).to_owned(),
            None => keys.push((k, (*v).to_owned())),
        }
    }
    let mut s = format!("  {name}:\n");
    for (k, v) in keys {
        s.push_str(&format!("    {k}:{v}\n"));
    }
    if !labels.is_empty() {
        s.push_str("    labels:\n");
        for l in labels {
            s.push_str(&format!("      {l}\n"));
        }
    }
    s
}

/// A Deployment that passes every built-in; `container_extra` is added to
/// its container, `replicas` set unless `None`.
fn deployment(name: &str, replicas: Option<u32>, probe: bool, annotations: &[&str]) -> String {
    let mut d = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: apps\n"
    );
    if !annotations.is_empty() {
        d.push_str("  annotations:\n");
        for a in annotations {
            d.push_str(&format!("    {a}\n"));
        }
    }
    d.push_str("spec:\n");
    if let Some(r) = replicas {
        d.push_str(&format!("  replicas: {r}\n"));
    }
    d.push_str(&format!("  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      securityContext: {{runAsNonRoot: true, runAsUser: 1000}}\n      containers:\n        - name: app\n          image: registry.example.com/{name}:1.0\n          resources: {{limits: {{cpu: 500m, memory: 128Mi}}}}\n"));
    if probe {
        d.push_str("          readinessProbe: {httpGet: {path: /health, port: 8080}}\n");
    }
    d
}

/// Every built-in violated once, by one object each; `except` adds the
/// matching exception to each of those objects.
fn bad_repo(except: bool) -> RepoBuilder {
    let ex = |id: &str| -> Vec<String> {
        if except {
            vec![format!(
                "driftless.io/policy-exception.{id}: \"test exception for {id}\""
            )]
        } else {
            Vec::new()
        }
    };
    let refs = |v: &[String]| -> Vec<String> { v.to_vec() };
    let labels = |id: &str| refs(&ex(id));
    let mut stack = String::from("name: app-prod\nservices:\n");
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 9] = [
        ("good", &[], ""),
        ("untagged", &[("image", " busybox")], "pinned-images"),
        (
            "latest",
            &[("image", " registry.example.com:5000/tools:latest")],
            "pinned-images",
        ),
        (
            "unhealthy",
            &[("healthcheck", "\n      disable: true")],
            "healthchecks",
        ),
        (
            "unlimited",
            &[("deploy", "\n      replicas: 2")],
            "resource-limits",
        ),
        ("rooted", &[("user", " root")], "non-root"),
        ("privileged", &[("privileged", " true")], "no-privileged"),
        (
            "single",
            &[(
                "deploy",
                "\n      replicas: 1\n      resources:\n        limits: {cpus: \"0.5\", memory: 64M}",
            )],
            "prod-replicas",
        ),
        (
            "leaky",
            &[(
                "environment",
                "\n      DB_PASSWORD: hunter2hunter2\n      API_TOKEN: \"{{ secret('api_token') }}\"\n      GREETING: hello",
            )],
            "no-secret-literals",
        ),
    ];
    for (name, extra, id) in cases {
        let l = if id.is_empty() {
            Vec::new()
        } else {
            labels(id)
        };
        let l: Vec<&str> = l.iter().map(String::as_str).collect();
        stack.push_str(&service(name, extra, &l));
    }
    // A one-shot job and a database need neither a healthcheck nor 2 replicas.
    stack.push_str("  migrate:\n    image: busybox:1.36\n    user: \"1000\"\n    restart: \"no\"\n    deploy:\n      resources:\n        limits: {cpus: \"0.5\", memory: 64M}\n");
    stack.push_str("  db:\n    image: postgres:16.4\n    user: postgres\n    restart: unless-stopped\n    healthcheck:\n      test: [\"CMD\", \"pg_isready\"]\n    volumes:\n      - db-data:/var/lib/postgresql/data\n    deploy:\n      resources:\n        limits: {cpus: \"1\", memory: 1G}\nvolumes:\n  db-data: {}\n");
    let ann = |id: &str| ex(id);
    let a1 = ann("readiness-probes");
    let a2 = ann("prod-replicas");
    let k8s = [
        deployment("web", Some(2), true, &[]),
        deployment("noprobe", Some(2), false, &a1.iter().map(String::as_str).collect::<Vec<_>>()),
        deployment("lonely", Some(1), true, &a2.iter().map(String::as_str).collect::<Vec<_>>()),
        // No replicas: the HPA's minReplicas (2) decides.
        deployment("scaled", None, true, &[]),
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: scaled\n  namespace: apps\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: scaled}\n  minReplicas: 2\n  maxReplicas: 4\n".to_owned(),
    ]
    .join("---\n");
    RepoBuilder::new()
        .file("driftless.yaml", MANIFEST)
        .file("environments/prod.yaml", "{}\n")
        .file("compose/stack.yaml.j2", stack)
        .file("kubernetes/apps.yaml", k8s)
}

fn check(repo: &RepoBuilder, env: &str) -> Result<Vec<Diagnostic>, Diagnostics> {
    repo.load(env, None, SecretMode::Placeholder)
        .map(|l| l.checked.warnings)
}

fn policy_diags<'a>(diags: impl IntoIterator<Item = &'a Diagnostic>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = diags
        .into_iter()
        .filter_map(|d| {
            let id = d
                .message
                .strip_prefix("policy ")?
                .split(':')
                .next()?
                .to_owned();
            Some((id, d.object.clone().unwrap_or_default()))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn each_builtin_fires_on_a_bad_repo() {
    let errors = check(&bad_repo(false), "prod").unwrap_err();
    let found = policy_diags(errors.iter());
    let want: Vec<(String, String)> = [
        ("healthchecks", "service app-prod/unhealthy"),
        ("no-privileged", "service app-prod/privileged"),
        ("no-secret-literals", "service app-prod/leaky"),
        ("non-root", "service app-prod/rooted"),
        ("pinned-images", "service app-prod/latest"),
        ("pinned-images", "service app-prod/untagged"),
        ("prod-replicas", "Deployment apps/lonely"),
        ("prod-replicas", "service app-prod/single"),
        ("readiness-probes", "Deployment apps/noprobe"),
        ("resource-limits", "service app-prod/unlimited"),
        ("resource-limits", "service app-prod/unlimited"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(found, want, "{errors}");
    // Every error names the environment, the file and the object.
    for d in errors.iter() {
        assert_eq!(d.env.as_deref(), Some("prod"), "{d}");
        assert!(d.file.is_some() && d.object.is_some(), "{d}");
    }
    let text = errors.to_string();
    assert!(
        text.contains("error[prod]: compose/stack.yaml.j2:"),
        "{text}"
    );
    assert!(text.contains("environment variable DB_PASSWORD"), "{text}");
    assert!(
        !text.contains("API_TOKEN"),
        "a secret() value is not a literal: {text}"
    );
}

#[test]
fn an_exception_silences_each_builtin_and_is_reported() {
    let warnings = check(&bad_repo(true), "prod").unwrap_or_else(|e| panic!("{e}"));
    let excepted: Vec<&Diagnostic> = warnings
        .iter()
        .filter(|w| w.message.contains("exception (test exception for"))
        .collect();
    assert_eq!(
        policy_diags(excepted.iter().copied()).len(),
        11,
        "{warnings:#?}"
    );
    for id in driftless::check::policy::builtin_ids() {
        assert!(
            excepted
                .iter()
                .any(|w| w.message.starts_with(&format!("policy {id}: exception"))),
            "{id} not excepted: {warnings:#?}"
        );
    }
}

#[test]
fn warn_mode_reports_and_off_mode_is_silent() {
    let manifest = MANIFEST
        .replace("non-root: deny", "non-root: warn")
        .replace(
            "    targets: [local, k8s]\n",
            "    targets: [local, k8s]\n    policies:\n      pinned-images: \"off\"\n",
        );
    let repo = bad_repo(false).file("driftless.yaml", manifest);
    let errors = check(&repo, "prod").unwrap_err();
    let ids: Vec<String> = policy_diags(errors.iter())
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        !ids.iter().any(|i| i == "non-root" || i == "pinned-images"),
        "{ids:?}"
    );
    assert!(ids.iter().any(|i| i == "healthchecks"), "{ids:?}");
}

#[test]
fn unmentioned_policies_warn_by_default() {
    let manifest = "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n";
    let repo = RepoBuilder::new()
        .file("driftless.yaml", manifest)
        .file("environments/dev.yaml", "{}\n")
        .file(
            "compose/stack.yaml",
            "services:\n  web:\n    image: nginx\n",
        );
    let warnings = check(&repo, "dev").unwrap();
    let ids: Vec<String> = policy_diags(warnings.iter())
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for id in [
        "pinned-images",
        "healthchecks",
        "resource-limits",
        "non-root",
    ] {
        assert!(ids.iter().any(|i| i == id), "{id} missing: {ids:?}");
    }
}

#[test]
fn unknown_policy_ids_are_errors() {
    let manifest = MANIFEST.replace(
        "  non-root: deny\n",
        "  non-root: deny\n  no-such-policy: warn\n",
    );
    let repo = bad_repo(true).file("driftless.yaml", manifest);
    let e = check(&repo, "prod").unwrap_err().to_string();
    assert!(e.contains("unknown policy `no-such-policy`"), "{e}");
    assert!(e.contains("driftless.yaml"), "{e}");
}

#[test]
fn repo_policies_add_to_the_builtins() {
    let rego = "package driftless.policies.no_busybox\n\nviolation contains {\"object\": s.id, \"msg\": \"busybox is for tests\"} if {\n\tsome s in input.services\n\tstartswith(s.image, \"busybox\")\n}\n";
    let manifest = MANIFEST.replace(
        "  non-root: deny\n",
        "  non-root: deny\n  no-busybox: deny\n",
    );
    let repo = bad_repo(true)
        .file("driftless.yaml", manifest)
        .file("policies/no-busybox.rego", rego);
    let e = check(&repo, "prod").unwrap_err();
    let hits = policy_diags(e.iter())
        .into_iter()
        .filter(|(id, _)| id == "no-busybox")
        .count();
    assert!(hits >= 9, "{e}");
    assert!(e.to_string().contains("busybox is for tests"), "{e}");

    // A package that does not match the file name is an error naming the file.
    let repo = bad_repo(true).file("policies/other.rego", rego);
    let e = check(&repo, "prod").unwrap_err().to_string();
    assert!(
        e.contains("policies/other.rego") && e.contains("driftless.policies.other"),
        "{e}"
    );
}

#[test]
fn validate_prints_environment_file_object_and_message() {
    let run = bad_repo(false).driftless(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("error[prod]: compose/stack.yaml.j2:")
            && run
                .stderr
                .contains("service app-prod/rooted: policy non-root: runs as root"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("prod: failed"), "{run:?}");
}
