//! A remote Docker engine as a `tcp://` target with mutual TLS: the real
//! local engine behind a TLS-terminating proxy that demands a client
//! certificate signed by its CA (`tls_proxy`); and the same engine as an
//! `ssh://` target through Debian's sshd on a loopback address (`sshd`).

use std::process::Command;

use driftless::backend::compose::ComposeBackend;

use crate::docker_support::{BUSYBOX, Cleanup, containers, engine, project_name};
use crate::sshd::Sshd;
use crate::support::{RepoBuilder, Run};
use crate::tls_proxy::{Pki, TlsProxy};

/// A committed repo whose one environment deploys one busybox service to
/// the docker target `remote` at `host` (with `extra` target keys).
fn repo(env: &str, project: &str, host: &str, extra: &str) -> RepoBuilder {
    let stack = format!(
        "name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    init: true\n"
    );
    RepoBuilder::one_stack(
        "remote",
        &format!("{{ host: \"{host}\"{extra} }}"),
        env,
        &stack,
    )
}

/// Runs the CLI off the async runtime (the proxy lives on it).
pub(crate) async fn cli(repo: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
    cmd.args(args).arg("--repo").arg(repo);
    cmd.env_remove("DOCKER_CERT_PATH").env_remove("DOCKER_HOST");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run driftless"))
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `reconcile --dry-run --detailed-exitcode` (0 nothing to do, 2 changes).
async fn dry_run(repo: &std::path::Path, env: &str, envs: &[(&str, &str)]) -> Run {
    let args = [
        "reconcile",
        "--env",
        env,
        "--dry-run",
        "--detailed-exitcode",
    ];
    cli(repo, &args, envs).await
}

/// Plans `env` (one create of `project`'s app), applies it, finds the
/// container on the `local` engine, and plans again: nothing left to do.
async fn plan_apply_replan(
    local: &ComposeBackend,
    repo: &std::path::Path,
    env: &str,
    project: &str,
    envs: &[(&str, &str)],
) {
    let dry = dry_run(repo, env, envs).await;
    assert_eq!(dry.code, 2, "a create is planned: {dry:?}");
    assert!(dry.stdout.contains(&format!("{project}/app")), "{dry:?}");

    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap();
    let apply = cli(
        repo,
        &["reconcile", "--env", env, "--state-dir", state],
        envs,
    )
    .await;
    assert_eq!(apply.code, 0, "{apply:?}");
    let running = containers(local, project).await;
    assert_eq!(running.len(), 1, "{running:?}");

    let again = dry_run(repo, env, envs).await;
    assert_eq!(again.code, 0, "nothing left to do: {again:?}");
}

/// Applies `env` and checks it fails before planning, naming the target
/// `remote` and its `host`; returns the run for the transport's own words.
async fn refused(repo: &std::path::Path, env: &str, host: &str) -> Run {
    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap();
    let run = cli(
        repo,
        &["reconcile", "--env", env, "--state-dir", state],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("target `remote`"),
        "names the target: {}",
        run.stderr
    );
    assert!(run.stderr.contains(host), "names the host: {}", run.stderr);
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_target_with_the_client_certificate_from_docker_cert_path_plans_and_applies() {
    let Some(local) = engine().await else { return };
    let project = project_name("tls-ok");
    let _cleanup = Cleanup::new(&[&project]);
    let pki = Pki::new();
    let proxy = TlsProxy::start(&pki).await;
    // The repo names only the host; the credentials are the daemon's
    // DOCKER_CERT_PATH, as the Docker CLI reads them.
    let env = "remote-ok";
    let repo = repo(env, &project, &proxy.host, "");
    let certs = pki.client_dir();
    let certs = [("DOCKER_CERT_PATH", certs.to_str().unwrap())];

    // The container runs on the engine behind the proxy.
    plan_apply_replan(&local, repo.path(), env, &project, &certs).await;
    assert_eq!(proxy.refused(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_the_engine_does_not_trust_is_refused_naming_the_target() {
    let Some(local) = engine().await else { return };
    let project = project_name("tls-wrong");
    let _cleanup = Cleanup::new(&[&project]);
    let pki = Pki::new();
    let proxy = TlsProxy::start(&pki).await;
    let env = "remote-wrong";
    let wrong = pki.wrong_client_dir();
    let extra = format!(", tls_cert_path: \"{}\"", wrong.display());
    let repo = repo(env, &project, &proxy.host, &extra);

    let run = refused(repo.path(), env, &proxy.host).await;
    assert!(run.stderr.contains("TLS"), "says it is TLS: {}", run.stderr);
    assert!(
        run.stderr.contains(wrong.to_str().unwrap()),
        "names the cert dir: {}",
        run.stderr
    );
    assert!(proxy.refused() >= 1, "the proxy refused the handshake");
    let created = containers(&local, &project).await;
    assert!(created.is_empty(), "nothing applied: {created:?}");
}

#[tokio::test]
async fn relative_credential_paths_and_plain_tcp_are_refused() {
    let repo = repo("e", "p", "tcp://127.0.0.1:1", ", tls_cert_path: certs");
    let run = cli(repo.path(), &["validate"], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("must be an absolute path")
            || run.stderr.contains("must be an absolute path"),
        "{run:?}"
    );
    let repo = self::repo("e2", "p", "tcp://127.0.0.1:1", "");
    let run = cli(
        repo.path(),
        &["reconcile", "--env", "e2", "--dry-run"],
        &[("HOME", "/nonexistent")],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("plain tcp:// is refused"), "{run:?}");
}

/// The target's `ssh_key_file` for `key`.
fn ssh_key(key: &std::path::Path) -> String {
    format!(", ssh_key_file: \"{}\"", key.display())
}

/// Over ssh:// the real `ssh` client logs in to sshd with the target's key
/// and runs `docker system dial-stdio` there. Side effect: the running
/// user's ~/.ssh/known_hosts gets (once) an entry for 127.77.0.1 (`sshd`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_target_with_its_key_file_plans_and_applies() {
    let Some(local) = engine().await else { return };
    let project = project_name("ssh-ok");
    let _cleanup = Cleanup::new(&[&project]);
    let sshd = Sshd::start(1);
    let env = "remote-ssh";
    let repo = repo(env, &project, &sshd.host(), &ssh_key(&sshd.key));

    plan_apply_replan(&local, repo.path(), env, &project, &[]).await;
    // Every run went through sshd, as root with the target's key (sshd
    // logs the acceptance before it tells the client).
    let log = sshd.log();
    assert!(
        log.matches("Accepted publickey for root").count() >= 3,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_key_the_host_does_not_authorize_is_refused_naming_the_target() {
    let Some(local) = engine().await else { return };
    let project = project_name("ssh-wrong");
    let _cleanup = Cleanup::new(&[&project]);
    let sshd = Sshd::start(2);
    let env = "remote-ssh-wrong";
    let repo = repo(env, &project, &sshd.host(), &ssh_key(&sshd.wrong_key));

    let run = refused(repo.path(), env, &sshd.host()).await;
    assert!(
        run.stderr.contains(sshd.wrong_key.to_str().unwrap()),
        "names the key file: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Permission denied (publickey)"),
        "says why, in ssh's words: {}",
        run.stderr
    );
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
    let created = containers(&local, &project).await;
    assert!(created.is_empty(), "nothing applied: {created:?}");
}
