//! Project structure and Compose secrets on the real engine, through
//! `driftless reconcile`: an included file, an override pair and profiles
//! deploy as `docker compose up -d` would; a secret is a file at
//! `/run/secrets/<target>` with its mode and owner, masked in the dry-run
//! diff, and a changed value recreates only the services using it.

use std::collections::BTreeMap;

use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use driftless::backend::compose::ComposeBackend;
use futures_util::StreamExt;

use crate::docker_support::{BUSYBOX, Cleanup, containers, engine, project_name};
use crate::support::{RepoBuilder, Run, driftless, git};

/// A committed repo with one uniquely named environment whose stacks are
/// every Compose file under `compose/`.
struct Fixture {
    repo: RepoBuilder,
    env: String,
    project: String,
    secrets: tempfile::TempDir,
}

impl Fixture {
    fn new(test: &str, files: &[(&str, String)]) -> Fixture {
        let project = project_name(test);
        let env = format!("e{}", project.trim_start_matches("dlt-").replace('_', "-"));
        let mut repo = RepoBuilder::new()
            .file("driftless.yaml", manifest(&env, ""))
            .file("environments/values.yaml", "{}\n");
        for (path, content) in files {
            repo = repo.file(path, content);
        }
        git(repo.path(), &["init", "-q"]);
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "v1"]);
        Fixture {
            repo,
            env,
            project,
            secrets: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut all = vec![
            "reconcile",
            "--env",
            &self.env,
            "--secrets-dir",
            self.secrets.path().to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        driftless(self.repo.path(), &all)
    }

    fn apply(&self) -> Run {
        let run = self.run(&[]);
        assert_eq!(run.code, 0, "{run:?}");
        run
    }

    fn commit(&self, path: &str, content: &str) {
        std::fs::write(self.repo.path().join(path), content).unwrap();
        git(self.repo.path(), &["commit", "-q", "-am", "change"]);
    }

    fn set_secret(&self, name: &str, value: &str) {
        std::fs::write(self.secrets.path().join(name), value).unwrap();
    }
}

fn manifest(env: &str, compose: &str) -> String {
    format!(
        "apiVersion: driftless/v1\npaths:\n  stacks: [\"compose/**/*.yaml\"]\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n{compose}"
    )
}

/// Container id per service of `project`.
async fn services(engine: &ComposeBackend, project: &str) -> BTreeMap<String, String> {
    containers(engine, project)
        .await
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            (
                labels["com.docker.compose.service"].clone(),
                c.id.unwrap_or_default(),
            )
        })
        .collect()
}

/// One file read out of a container with the archive API: its content,
/// mode and owner.
async fn file_in(engine: &ComposeBackend, container: &str, path: &str) -> (String, u32, u64) {
    let mut stream = engine.docker().download_from_container(
        container,
        Some(
            DownloadFromContainerOptionsBuilder::default()
                .path(path)
                .build(),
        ),
    );
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("archive download"));
    }
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let mode = entry.header().mode().unwrap() & 0o7777;
    let uid = entry.header().uid().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut entry, &mut out).unwrap();
    (out, mode, uid)
}

async fn env_of(engine: &ComposeBackend, container: &str) -> Vec<String> {
    engine
        .docker()
        .inspect_container(container, None)
        .await
        .unwrap()
        .config
        .and_then(|c| c.env)
        .unwrap_or_default()
}

#[tokio::test]
async fn include_override_pair_and_profiles_deploy_as_docker_compose_would() {
    let Some(engine) = engine().await else {
        return;
    };
    let project = project_name("structure");
    let main = format!(
        "name: {project}\ninclude:\n  - ../db/compose.yaml\nservices:\n  web:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    environment: {{TIER: base}}\n    depends_on: [db]\n  debug:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    profiles: [debug]\n"
    );
    let f = Fixture::new(
        "structure",
        &[
            ("compose/shop/compose.yaml", main),
            (
                "compose/shop/compose.override.yaml",
                "services:\n  web:\n    environment: {TIER: override}\n".to_owned(),
            ),
            (
                "compose/db/compose.yaml",
                format!(
                    "services:\n  db:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    env_file: db.env\n"
                ),
            ),
            ("compose/db/db.env", "FROM_INCLUDE=yes\n".to_owned()),
        ],
    );
    let f = Fixture { project, ..f };
    let _cleanup = Cleanup::new(&[&f.project]);

    // One project: the override merged over the main file, the included
    // file's service in it, the profile service left out.
    let dry = f.run(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("3 to create") && !dry.stdout.contains("/debug"),
        "the default network, db and web: {}",
        dry.stdout
    );
    f.apply();
    let running = services(&engine, &f.project).await;
    assert_eq!(
        running.keys().map(String::as_str).collect::<Vec<_>>(),
        ["db", "web"],
        "{running:?}"
    );
    assert!(
        env_of(&engine, &running["web"])
            .await
            .contains(&"TIER=override".to_owned())
    );
    assert!(
        env_of(&engine, &running["db"])
            .await
            .contains(&"FROM_INCLUDE=yes".to_owned())
    );

    // The profile activated in driftless.yaml: its service is created,
    // nothing else is touched.
    f.commit(
        "driftless.yaml",
        &manifest(&f.env, "    compose:\n      profiles: [debug]\n"),
    );
    f.apply();
    let with_debug = services(&engine, &f.project).await;
    assert_eq!(with_debug.len(), 3, "{with_debug:?}");
    assert_eq!(with_debug["web"], running["web"]);
    assert_eq!(with_debug["db"], running["db"]);

    // Deactivated again: the service is disabled, not pruned by surprise.
    f.commit("driftless.yaml", &manifest(&f.env, ""));
    let dry = f.run(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("0 to delete"), "{}", dry.stdout);
    let json = f.run(&["--dry-run", "--output", "json"]);
    assert!(
        json.stdout.contains("disabled (profiles debug not active)"),
        "{}",
        json.stdout
    );
    f.apply();
    assert_eq!(services(&engine, &f.project).await, with_debug);
    let again = f.run(&["--dry-run", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "nothing left to do: {again:?}");
}

#[tokio::test]
async fn a_secret_is_a_file_in_run_secrets_masked_and_recreates_only_its_users() {
    let Some(engine) = engine().await else {
        return;
    };
    let project = project_name("secrets");
    let stack = format!(
        "name: {project}\nsecrets:\n  token:\n    x-driftless-secret: shop_token\n  cert:\n    file: ./cert.pem\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    secrets:\n      - source: token\n        target: api_token\n        mode: 0400\n        uid: \"1000\"\n      - cert\n  other:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n"
    );
    let f = Fixture::new(
        "secrets",
        &[
            ("compose/shop.yaml", stack),
            ("compose/cert.pem", "CERT-FROM-THE-REPO\n".to_owned()),
        ],
    );
    let f = Fixture { project, ..f };
    let _cleanup = Cleanup::new(&[&f.project]);
    const V1: &str = "tok-FIRST-secret-4242";
    const V2: &str = "tok-SECOND-secret-8484";
    f.set_secret("shop_token", V1);

    let dry = f.run(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("/run/secrets/api_token"),
        "{}",
        dry.stdout
    );
    assert!(
        !dry.stdout.contains(V1) && !dry.stderr.contains(V1),
        "{dry:?}"
    );
    f.apply();
    let before = services(&engine, &f.project).await;
    let (content, mode, uid) = file_in(&engine, &before["app"], "/run/secrets/api_token").await;
    assert_eq!((content.as_str(), mode, uid), (V1, 0o400, 1000));
    let (content, mode, _) = file_in(&engine, &before["app"], "/run/secrets/cert").await;
    assert_eq!((content.as_str(), mode), ("CERT-FROM-THE-REPO\n", 0o444));

    // A new value: only `app` is recreated, the reason names `secrets`,
    // and neither value is printed.
    f.set_secret("shop_token", V2);
    let dry = f.run(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("1 to recreate"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains(&format!(
            "service {}/app  recreate (config changed: secrets",
            f.project
        )),
        "{}",
        dry.stdout
    );
    for v in [V1, V2] {
        assert!(
            !dry.stdout.contains(v) && !dry.stderr.contains(v),
            "{dry:?}"
        );
    }
    let json = f.run(&["--dry-run", "--output", "json"]);
    for v in [V1, V2] {
        assert!(!json.stdout.contains(v), "{}", json.stdout);
    }
    let applied = f.apply();
    for v in [V1, V2] {
        assert!(
            !applied.stdout.contains(v) && !applied.stderr.contains(v),
            "{applied:?}"
        );
    }
    let after = services(&engine, &f.project).await;
    assert_eq!(after["other"], before["other"]);
    assert_ne!(after["app"], before["app"]);
    let (content, _, _) = file_in(&engine, &after["app"], "/run/secrets/api_token").await;
    assert_eq!(content, V2);
}
