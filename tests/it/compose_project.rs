//! How Compose projects are put together, from the user's side through
//! `driftless validate`: profiles and the project name from driftless.yaml,
//! the values and `.env`; included and override files; what is refused.

use driftless::model::Resources;
use driftless::model::compose::Project;
use driftless::render::SecretMode;

use crate::support::{RepoBuilder, Run};

/// The Compose projects environment `dev` of `repo` deploys.
pub fn projects(repo: &RepoBuilder) -> Vec<Project> {
    let loaded = repo
        .load("dev", None, SecretMode::Placeholder)
        .unwrap_or_else(|d| panic!("{d}"));
    match &loaded.checked.state.targets[0].resources {
        Resources::Compose(p) => p.clone(),
        other => panic!("not Compose: {other:?}"),
    }
}

fn manifest(compose: &str) -> String {
    format!(
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  dev:\n    targets: [local]\n{compose}"
    )
}

const STACK: &str = "services:
  web:
    image: busybox:1.36
  debug:
    image: busybox:1.36
    profiles: [debug]
";

fn ok(run: &Run) -> &str {
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    &run.stdout
}

fn refused<'r>(run: &'r Run, needles: &[&str]) -> &'r str {
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "stderr lacks {n:?}:\n{}",
            run.stderr
        );
    }
    &run.stderr
}

#[test]
fn environment_profiles_select_services_and_unknown_ones_are_refused() {
    let base = || {
        RepoBuilder::new()
            .file("environments/dev.yaml", "{}\n")
            .file("compose/stack.yaml", STACK)
    };
    let repo = base().file("driftless.yaml", manifest(""));
    assert!(ok(&repo.driftless(&["validate"])).contains("1 services"));

    let repo = base().file(
        "driftless.yaml",
        manifest("    compose:\n      profiles: [debug]\n"),
    );
    assert!(ok(&repo.driftless(&["validate"])).contains("2 services"));

    let repo = base().file(
        "driftless.yaml",
        manifest("    compose:\n      profiles: [debug, typo]\n"),
    );
    refused(
        &repo.driftless(&["validate"]),
        &[
            "driftless.yaml:9",
            "profile `typo` set by `compose.profiles` in driftless.yaml is not used by any service of environment `dev`",
            "`debug`",
        ],
    );

    // COMPOSE_PROFILES in the values file works like the shell variable.
    let repo = base()
        .file("driftless.yaml", manifest(""))
        .file("environments/dev.yaml", "COMPOSE_PROFILES: debug\n");
    assert!(ok(&repo.driftless(&["validate"])).contains("2 services"));

    let repo = base().file(
        "driftless.yaml",
        manifest("    compose:\n      profiles: [\"no way\"]\n"),
    );
    refused(
        &repo.driftless(&["validate"]),
        &["driftless.yaml:9", "`no way` is not a profile name"],
    );
}

#[test]
fn dotenv_sets_profiles_and_the_project_name_as_for_docker_compose() {
    let repo = RepoBuilder::new()
        .file("driftless.yaml", manifest(""))
        .file("environments/dev.yaml", "{}\n")
        .file("compose/stack.yaml", STACK)
        .file(
            "compose/.env",
            "COMPOSE_PROJECT_NAME=shop\nCOMPOSE_PROFILES=debug\n",
        );
    let p = projects(&repo);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].name, "shop");
    let services: Vec<&str> = p[0].services.keys().map(String::as_str).collect();
    assert_eq!(services, ["debug", "web"]);
    assert!(ok(&repo.driftless(&["validate"])).contains("2 services"));
}

#[test]
fn includes_and_override_files_make_one_project() {
    let repo = RepoBuilder::new()
        .file(
            "driftless.yaml",
            manifest("    paths:\n      stacks: [\"compose/**/*.yaml\"]\n    compose:\n      overrides:\n        compose/shop/compose.yaml: [compose/shop/prod.yaml]\n"),
        )
        .file("environments/dev.yaml", "{}\n")
        .file(
            "compose/shop/compose.yaml",
            "name: shop\ninclude: [../db/compose.yaml]\nservices:\n  web: {image: 'busybox:1.36'}\n",
        )
        .file("compose/shop/prod.yaml", "services:\n  web: {restart: always}\n")
        // Not merged: driftless.yaml lists the files for this project.
        .file("compose/shop/compose.override.yaml", "services:\n  web: {restart: 'no'}\n")
        .file("compose/db/compose.yaml", "services:\n  db: {image: 'busybox:1.36'}\n");
    let p = projects(&repo);
    // The included file and the override files are no projects of their own.
    assert_eq!(p.len(), 1, "{p:#?}");
    let services: Vec<&str> = p[0].services.keys().map(String::as_str).collect();
    assert_eq!(services, ["db", "web"]);
    assert_eq!(p[0].services["web"].restart.as_deref(), Some("always"));
}

#[test]
fn include_cycles_missing_files_and_unvalued_secrets_are_refused_with_their_line() {
    let base = || {
        RepoBuilder::new()
            .file("environments/dev.yaml", "{}\n")
            .file("driftless.yaml", manifest(""))
    };
    let repo = base()
        .file(
            "compose/stack.yaml",
            "services:\n  web: {image: 'busybox:1.36'}\ninclude:\n  - ../lib/a.yaml\n",
        )
        .file("lib/a.yaml", "include:\n  - ../compose/stack.yaml\n");
    refused(
        &repo.driftless(&["validate"]),
        &[
            "lib/a.yaml:2",
            "`include` cycle: compose/stack.yaml -> lib/a.yaml -> compose/stack.yaml",
        ],
    );
    let repo = base().file(
        "compose/stack.yaml",
        "services:\n  web: {image: 'busybox:1.36'}\ninclude:\n  - db.yaml\n",
    );
    refused(
        &repo.driftless(&["validate"]),
        &[
            "compose/stack.yaml:4",
            "`compose/db.yaml` is not in the repository",
        ],
    );
    let repo = base().file("compose/stack.yaml", STACK).file(
        "driftless.yaml",
        manifest(
            "    compose:\n      overrides:\n        compose/stack.yaml: [compose/prod.yaml]\n",
        ),
    );
    refused(
        &repo.driftless(&["validate"]),
        &[
            "driftless.yaml:10",
            "`compose/prod.yaml` (merged over `compose/stack.yaml`) is not in the repository",
        ],
    );
    // A secret from the secret source: `validate` works without it, as
    // for `secret()`; `reconcile` needs it, even for a dry run.
    let repo = base().file(
        "compose/stack.yaml",
        "services:\n  web:\n    image: busybox:1.36\n    secrets: [token]\nsecrets:\n  token:\n    x-driftless-secret: shop_token\n",
    );
    ok(&repo.driftless(&["validate"]));
    let run = repo.driftless(&["reconcile", "--env", "dev", "--dry-run"]);
    refused(
        &run,
        &[
            "compose/stack.yaml:7",
            "secret `token` has no value",
            "DRIFTLESS_SECRET_SHOP_TOKEN",
        ],
    );
}

#[test]
fn an_environment_update_config_is_the_default_and_the_compose_file_wins() {
    use driftless::model::compose::{FailureAction, UpdateOrder};
    use std::time::Duration;
    let stack = "services:
  web:
    image: busybox:1.36
  api:
    image: busybox:1.36
    deploy:
      update_config: {parallelism: 3}
";
    let settings = "    update_config:
      order: stop-first
      parallelism: 2
      delay: 5s
      failure_action: continue
      monitor: 2s
      max_failure_ratio: 0.5
    rollback_config: {parallelism: 0}
";
    let repo = RepoBuilder::new()
        .file("environments/dev.yaml", "{}\n")
        .file("compose/stack.yaml", stack)
        .file("driftless.yaml", manifest(settings));
    let p = &projects(&repo)[0];
    let web = &p.services["web"].update_config;
    assert_eq!(
        (
            web.order,
            web.parallelism,
            web.delay,
            web.failure_action,
            web.monitor,
            web.max_failure_ratio
        ),
        (
            Some(UpdateOrder::StopFirst),
            2,
            Duration::from_secs(5),
            FailureAction::Continue,
            Duration::from_secs(2),
            0.5
        )
    );
    assert_eq!(p.services["web"].rollback_config.parallelism, 0);
    // The Compose file's own update_config wins whole: Swarm's defaults for
    // what it leaves out, not the environment's.
    let api = &p.services["api"].update_config;
    assert_eq!(
        (api.order, api.parallelism, api.delay),
        (None, 3, Duration::ZERO)
    );
    assert_eq!(p.services["api"].rollback_config.parallelism, 0);

    let bad = "    update_config:
      order: blue-green
      parallelism: -1
      delay: soon
      failure_action: retry
      max_failure_ratio: 2
";
    let repo = RepoBuilder::new()
        .file("environments/dev.yaml", "{}\n")
        .file("compose/stack.yaml", stack)
        .file("driftless.yaml", manifest(bad));
    refused(
        &repo.driftless(&["validate"]),
        &[
            "driftless.yaml:9: environments.dev.update_config.order: `blue-green` is not an update order",
            "driftless.yaml:10: environments.dev.update_config.parallelism: -1 is not a number of replicas",
            "driftless.yaml:11: environments.dev.update_config.delay:",
            "driftless.yaml:12: environments.dev.update_config.failure_action: `retry` is not a failure action",
            "driftless.yaml:13: environments.dev.update_config.max_failure_ratio: 2 is not a ratio",
        ],
    );
}
