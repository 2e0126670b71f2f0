//! How Compose projects are put together, from the user's side through
//! `driftless validate`: profiles and the project name from driftless.yaml,
//! the values and `.env`.

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
