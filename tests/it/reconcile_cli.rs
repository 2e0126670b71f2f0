//! `driftless reconcile` from the command line against the real Docker
//! engine: the dry-run plan is the plan that is applied, a second dry-run
//! shows nothing to do, exit codes gate CI, and unsafe inputs are refused.

use std::process::Command;

use crate::daemon_support::{Daemon, free_port};
use crate::docker_support::{BUSYBOX, Cleanup, CountingProxy, engine, project_name};
use crate::support::{RepoBuilder, Run, driftless, driftless_with_env, git};

/// A committed repo with one environment (named uniquely: an environment
/// owns every project it deployed) and a two-service stack.
struct Fixture {
    repo: RepoBuilder,
    env: String,
    project: String,
    secrets: tempfile::TempDir,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
        let project = project_name(test);
        let env = format!("e{}", project.trim_start_matches("dlt-").replace('_', "-"));
        let manifest = format!(
            "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n"
        );
        let stack = format!(
            "name: {project}\nservices:\n  web:\n    image: {BUSYBOX}\n    command: [httpd, -f, -p, \"8080\", -h, /www]\n    environment:\n      GREETING: \"{{{{ greeting }}}}\"\n      TOKEN: \"{{{{ secret('api_token') }}}}\"\n    volumes:\n      - ./www/index.html:/www/index.html:ro\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/\"]\n      interval: 1s\n      retries: 30\n  worker:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    depends_on:\n      web: {{ condition: service_healthy }}\n"
        );
        let repo = RepoBuilder::new()
            .file("driftless.yaml", manifest)
            .file("environments/values.yaml", "greeting: hello\n")
            .file("compose/stack.yaml.j2", stack)
            .file("compose/www/index.html", "<h1>v1</h1>\n");
        git(repo.path(), &["init", "-q"]);
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "v1"]);
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("api_token"), "tok-CLI-SECRET-9000\n").unwrap();
        Fixture {
            repo,
            env,
            project,
            secrets,
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

    fn commit(&self, path: &str, content: &str) {
        std::fs::write(self.repo.path().join(path), content).unwrap();
        git(self.repo.path(), &["commit", "-q", "-am", "change"]);
    }
}

/// How many times the calls in `lines` read the whole live state: the
/// volume list (`GET /volumes?…`, `/v1.NN/` in front when versioned) is
/// sent by that read only.
fn live_reads(lines: &[String]) -> usize {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("GET "))
        .map(|p| match p.strip_prefix("/v1.") {
            Some(rest) => rest.split_once('/').map_or("", |(_, r)| r),
            None => p.trim_start_matches('/'),
        })
        .filter(|rest| rest.starts_with("volumes?") || rest.starts_with("volumes "))
        .count()
}

/// #13: a pass reads the live state at most twice — once for pinning, the
/// plan and the apply, once for the fingerprint after an apply; a dry-run
/// and a no-op once. Counted through a proxy on the engine's socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_reads_the_live_state_at_most_twice() {
    let Some(_engine) = engine().await else {
        return;
    };
    let f = Fixture::new("cli-reads");
    let _cleanup = Cleanup::new(&[&f.project]);
    let proxy = CountingProxy::start();
    let run = |args: &[&str]| {
        let mut all = vec![
            "reconcile",
            "--env",
            &f.env,
            "--secrets-dir",
            f.secrets.path().to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let run = driftless_with_env(f.repo.path(), &all, &[("DOCKER_HOST", &proxy.host)]);
        assert!(matches!(run.code, 0 | 2), "{run:?}");
        live_reads(&proxy.take_lines())
    };
    let dry = run(&["--dry-run"]);
    let first = run(&[]);
    let noop = run(&[]);
    f.commit("compose/www/index.html", "<h1>v2</h1>\n");
    let change = run(&[]);
    eprintln!("live reads: dry-run {dry}, first deploy {first}, no-op {noop}, change {change}");
    assert_eq!(dry, 1, "dry-run");
    assert_eq!(noop, 1, "no-op");
    // The plan's read (the apply uses it), the fingerprint after it.
    assert_eq!(first, 2, "first deploy");
    assert_eq!(change, 2, "a change");
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

#[tokio::test]
async fn dry_run_plan_is_what_apply_executes_and_then_nothing_is_left() {
    let Some(_engine) = engine().await else {
        return;
    };
    let f = Fixture::new("cli-apply");
    let _cleanup = Cleanup::new(&[&f.project]);

    let dry = f.run(&["--dry-run", "--output", "json", "--detailed-exitcode"]);
    assert_eq!(dry.code, 2, "changes present: {dry:?}");
    let planned = json(&dry);
    assert!(
        !dry.stdout.contains("CLI-SECRET"),
        "secret in dry-run output"
    );

    let applied = f.run(&["--output", "json"]);
    assert_eq!(applied.code, 0, "{applied:?}");
    let applied = json(&applied);
    assert_eq!(
        applied["plan"], planned,
        "apply executed a different plan than the dry-run showed"
    );
    assert!(
        applied["image_ids"]
            .as_object()
            .is_some_and(|m| m.len() == 2),
        "{applied}"
    );

    let again = f.run(&["--dry-run", "--detailed-exitcode"]);
    assert_eq!(
        again.code, 0,
        "a dry-run after a successful apply shows zero changes: {again:?}"
    );
    assert!(
        again
            .stdout
            .contains("0 to create, 0 to update, 0 to recreate, 0 to delete, 3 unchanged"),
        "{again:?}"
    );

    // Docker's own tools recognise the project.
    let ps = Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={}", f.project),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&ps.stdout);
    assert!(
        names.contains(&format!("{}-web-1", f.project))
            && names.contains(&format!("{}-worker-1", f.project)),
        "{names}"
    );

    // A committed change recreates only the service it touches, and shows the diff.
    f.commit("compose/www/index.html", "<h1>v2</h1>\n");
    let dry = f.run(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("1 to recreate"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains(&format!(
            "service {}/web  recreate (config changed)",
            f.project
        )),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("-<h1>v1</h1>") && dry.stdout.contains("+<h1>v2</h1>"),
        "{}",
        dry.stdout
    );
    assert!(
        !dry.stdout
            .contains(&format!("{}/worker  recreate", f.project)),
        "{}",
        dry.stdout
    );
}

#[tokio::test]
async fn applying_an_uncommitted_work_tree_is_refused_but_dry_run_is_allowed() {
    let Some(_engine) = engine().await else {
        return;
    };
    let f = Fixture::new("cli-dirty");
    let _cleanup = Cleanup::new(&[&f.project]);
    std::fs::write(
        f.repo.path().join("environments/values.yaml"),
        "greeting: uncommitted\n",
    )
    .unwrap();

    let apply = f.run(&[]);
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(
        apply.stderr.contains("uncommitted changes") && apply.stderr.contains("commit first"),
        "{apply:?}"
    );
    let dry = f.run(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("3 to create"), "{dry:?}"); // two services and the default network
}

#[test]
fn reconcile_needs_every_secret_even_for_a_dry_run() {
    let f = Fixture::new("cli-secret");
    std::fs::remove_file(f.secrets.path().join("api_token")).unwrap();
    let run = f.run(&["--dry-run"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("api_token") && run.stderr.contains("DRIFTLESS_SECRET_API_TOKEN"),
        "{run:?}"
    );
}

#[tokio::test]
async fn removing_everything_is_refused_unless_allowed_on_the_command_line() {
    let Some(_engine) = engine().await else {
        return;
    };
    let f = Fixture::new("cli-mass");
    let _cleanup = Cleanup::new(&[&f.project]);
    assert_eq!(f.run(&[]).code, 0, "first deploy");
    git(f.repo.path(), &["rm", "-q", "compose/stack.yaml.j2"]);
    git(f.repo.path(), &["commit", "-qm", "remove the stack"]);

    let refused = f.run(&["--dry-run"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("mass_removal") || refused.stderr.contains("mass removal"),
        "{refused:?}"
    );
    let allowed = f.run(&["--dry-run", "--allow-mass-prune"]);
    assert_eq!(allowed.code, 0, "{allowed:?}");
    assert!(
        allowed
            .stdout
            .contains(&format!("service {}/web  delete", f.project)),
        "{allowed:?}"
    );
}

/// A repo whose one `web` service serves a page that an HTTP probe wants to
/// contain "good" (the container's own healthcheck passes either way), with
/// `rollback.automatic: true`.
struct Probed {
    repo: RepoBuilder,
    env: String,
    project: String,
    port: u16,
    state: tempfile::TempDir,
}

impl Probed {
    fn new(test: &str) -> Probed {
        let project = project_name(test);
        let env = format!("e{}", project.trim_start_matches("dlt-").replace('_', "-"));
        let port = free_port();
        let manifest = format!(
            "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health:\n      deadline: 20s\n      settle: 1s\n      probes:\n        - name: page\n          http: {{ url: \"http://127.0.0.1:{port}/index.html\", contains: good }}\n          interval: 500ms\n    rollback: {{ automatic: true }}\n"
        );
        let stack = format!(
            "name: {project}\nservices:\n  web:\n    image: {BUSYBOX}\n    command: [httpd, -f, -p, \"8080\", -h, /www]\n    ports: [\"127.0.0.1:{port}:8080\"]\n    volumes:\n      - ./www/index.html:/www/index.html:ro\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/\"]\n      interval: 1s\n      retries: 30\n"
        );
        let repo = RepoBuilder::new()
            .file("driftless.yaml", manifest)
            .file("environments/values.yaml", "{}\n")
            .file("compose/stack.yaml", stack)
            .file("compose/www/index.html", "good v1\n");
        git(repo.path(), &["init", "-q"]);
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "v1"]);
        Probed {
            repo,
            env,
            project,
            port,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn reconcile(&self, args: &[&str]) -> Run {
        let mut all = vec![
            "reconcile",
            "--env",
            &self.env,
            "--state-dir",
            self.state.path().to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        driftless(self.repo.path(), &all)
    }

    fn commit_page(&self, page: &str) -> String {
        std::fs::write(self.repo.path().join("compose/www/index.html"), page).unwrap();
        git(self.repo.path(), &["commit", "-q", "-am", "page"]);
        git(self.repo.path(), &["rev-parse", "HEAD"])
    }

    async fn page(&self) -> String {
        match reqwest::get(format!("http://127.0.0.1:{}/index.html", self.port)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("unreachable: {e}"),
        }
    }
}

#[tokio::test]
async fn a_failing_probe_rolls_the_cli_back_to_the_last_good_commit_recorded_in_history() {
    let Some(_engine) = engine().await else {
        return;
    };
    // reqwest (the test's page reads) needs the one rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let f = Probed::new("cli-probe");
    let _cleanup = Cleanup::new(&[&f.project]);
    let good = git(f.repo.path(), &["rev-parse", "HEAD"]);

    let first = f.reconcile(&[]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(f.page().await, "good v1\n");

    // The container is healthy; only the probe sees the page is wrong.
    let bad = f.commit_page("broken\n");
    let second = f.reconcile(&[]);
    assert_eq!(second.code, 1, "a rolled-back reconcile fails: {second:?}");
    assert!(
        second
            .stdout
            .contains(&format!("rolled back to {}", &good[..12])),
        "{second:?}"
    );
    assert!(
        second.stdout.contains("unhealthy: probes page"),
        "{second:?}"
    );
    assert_eq!(
        f.page().await,
        "good v1\n",
        "the last good page is served again"
    );

    let history = Daemon::history(f.state.path(), &f.env);
    let rows: Vec<(String, String, String)> = history["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or("").to_owned(),
                r["commit"].as_str().unwrap_or("").to_owned(),
                r["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let row = |kind: &str, commit: &str, outcome: &str| {
        (kind.to_owned(), commit.to_owned(), outcome.to_owned())
    };
    assert_eq!(
        rows,
        [
            row("rollback", &good, "healthy"),
            row("deploy", &bad, "unhealthy"),
            row("deploy", &good, "healthy"),
        ],
        "{history}"
    );
    assert_eq!(history["reconciles"][0]["trigger"], "manual", "{history}");
    assert_eq!(
        history["reconciles"][0]["rollback_of"],
        bad.as_str(),
        "{history}"
    );
    assert_eq!(history["last_good"]["commit"], good.as_str(), "{history}");
    assert!(
        history["failed_commits"]
            .as_array()
            .is_some_and(|f| f.iter().any(|c| c["commit"] == bad.as_str())),
        "{history}"
    );

    // Without the rollback, the bad commit stays and is still a failure.
    let third = f.reconcile(&["--rollback-on-failure=false"]);
    assert_eq!(third.code, 1, "{third:?}");
    assert!(!third.stdout.contains("rolled back"), "{third:?}");
    assert_eq!(f.page().await, "broken\n");
}

#[test]
fn a_target_owned_by_another_identity_is_refused_naming_the_owner() {
    let repo = RepoBuilder::new()
        .file(
            "driftless.yaml",
            "apiVersion: driftless/v1\ndaemons: [ops-edge]\ntargets:\n  edge:\n    owner: ops-edge\n    docker: {}\nenvironments:\n  prod:\n    targets: [edge]\n",
        )
        .file("environments/prod.yaml", "{}\n")
        .file(
            "compose/stack.yaml",
            format!("name: dlt-owned\nservices:\n  web:\n    image: {BUSYBOX}\n"),
        );
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "v1"]);
    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap();

    let refused = driftless(
        repo.path(),
        &["reconcile", "--env", "prod", "--state-dir", state],
    );
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("target `edge` is owned by daemon identity `ops-edge`"),
        "{refused:?}"
    );
    assert!(
        refused.stderr.contains("--identity ops-edge"),
        "{refused:?}"
    );

    let other = driftless(
        repo.path(),
        &[
            "reconcile",
            "--env",
            "prod",
            "--identity",
            "ops-core",
            "--state-dir",
            state,
        ],
    );
    assert_eq!(other.code, 1, "{other:?}");
    assert!(
        other.stderr.contains("identity `ops-core` claims none of")
            && other.stderr.contains("`edge` (owner `ops-edge`)"),
        "{other:?}"
    );
    let history = Daemon::history(std::path::Path::new(state), "prod");
    assert_eq!(
        history["reconciles"],
        serde_json::json!([]),
        "nothing ran: {history}"
    );
}
