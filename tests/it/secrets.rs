//! Secret values never leave driftless unmasked: not in debug logs from any
//! crate (bollard logs request and response bodies), on the real engine.

use std::process::Command;

use crate::docker_support::{BUSYBOX, Cleanup, engine, project_name};
use crate::support::{RepoBuilder, git};

/// A value holding `/` and `~`, as a random base64 or URL-safe password does.
const SECRET: &str = "pw/LOG~SECRET+7731";

#[tokio::test]
async fn a_debug_log_of_a_deploy_carries_no_secret() {
    let Some(_engine) = engine().await else {
        return;
    };
    let project = project_name("secret-log");
    let env = format!("e{}", project.trim_start_matches("dlt-").replace('_', "-"));
    let _cleanup = Cleanup::new(&[&project]);
    let manifest = format!(
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n"
    );
    let stack = format!(
        "name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    environment:\n      TOKEN: \"{{{{ secret('db_pw') }}}}\"\n"
    );
    let repo = RepoBuilder::new()
        .file("driftless.yaml", manifest)
        .file("environments/values.yaml", "{}\n")
        .file("compose/stack.yaml.j2", stack);
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "v1"]);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("db_pw"), SECRET).unwrap();

    for format in ["text", "json"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
        for (k, _) in std::env::vars() {
            if k.starts_with("DRIFTLESS_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .env("DRIFTLESS_LOG", "trace")
            .args(["--log-format", format, "reconcile", "--env", &env])
            .arg("--secrets-dir")
            .arg(secrets.path())
            .arg("--repo")
            .arg(repo.path())
            .output()
            .expect("run driftless");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{format}: {stderr}");
        // The log did see the deploy's request bodies, masked.
        assert!(
            stderr.contains("******"),
            "{format}: nothing masked: {stderr}"
        );
        for needle in ["LOG~SECRET", "LOG%7ESECRET", "LOG\\u007eSECRET"] {
            assert!(
                !stderr.contains(needle),
                "{format}: `{needle}` in the debug log"
            );
        }
    }
}
