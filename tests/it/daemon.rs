//! `driftless daemon` end to end: a local bare repo, the real Docker
//! engine, the daemon as a process. Pushed commits are applied (file watch,
//! poll, webhook); bad commits roll back to the last good config and image
//! ids; a template error applies nothing; the CLI pins, suspends, resumes and
//! is refused while the daemon drives the environment; kill -9 and an
//! unreachable engine are survived; no secret leaks anywhere.

use std::time::Duration;

use base64::Engine as _;
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, TagImageOptionsBuilder,
};

use crate::daemon_support::{API_TOKEN, Bare, Daemon, Options, Receiver, cli, free_port, sign};
use crate::docker_support::{BUSYBOX, BUSYBOX_2, Cleanup, engine, project_name};

const SECRET: &str = "tok-DAEMON-LEAK-CANARY-4242";
const GOOD_CHECK: &str = r#"["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]"#;
const BAD_CHECK: &str = r#"["CMD", "false"]"#;

/// A stack repo for one uniquely named environment: one `web` service
/// (busybox httpd) on a published port, probed over HTTP for "good".
struct Stack {
    env: String,
    project: String,
    port: u16,
    image: String,
    notify_url: String,
    deadline: &'static str,
}

impl Stack {
    fn new(test: &str, image: &str, notify_url: &str) -> Stack {
        let project = project_name(test);
        Stack {
            env: format!("e{}", project.trim_start_matches("dlt-").replace('_', "-")),
            project,
            port: free_port(),
            image: image.to_owned(),
            notify_url: notify_url.to_owned(),
            deadline: "20s",
        }
    }

    /// The repo's files; `page` is served, `check` is the healthcheck,
    /// `extra` is added to the service's environment (template errors).
    fn files(&self, page: &str, check: &str, extra: &str) -> Vec<(&'static str, String)> {
        let manifest = format!(
            "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health:\n      deadline: {deadline}\n      settle: 2s\n      probes:\n        - name: page\n          http: {{ url: \"http://127.0.0.1:{port}/index.html\", contains: good }}\n          interval: 500ms\n    drift_interval: 1h\nnotifications:\n  hook: {{ webhook: \"{notify}/notify\" }}\n  am: {{ alertmanager: \"{notify}/am\" }}\n",
            env = self.env,
            deadline = self.deadline,
            port = self.port,
            notify = self.notify_url,
        );
        let stack = format!(
            "name: {project}\nservices:\n  web:\n    image: {image}\n    command: [httpd, -f, -p, \"8080\", -h, /www]\n    ports: [\"127.0.0.1:{port}:8080\"]\n    environment:\n      TOKEN: \"{{{{ secret('api_token') }}}}\"\n      EXTRA: \"{extra}\"\n    volumes:\n      - ./www/index.html:/www/index.html:ro\n    healthcheck:\n      test: {check}\n      interval: 1s\n      retries: 2\n",
            project = self.project,
            image = self.image,
            port = self.port,
        );
        vec![
            ("driftless.yaml", manifest),
            ("environments/values.yaml", "greeting: hi\n".to_owned()),
            ("compose/stack.yaml.j2", stack),
            ("compose/www/index.html", format!("{page}\n")),
        ]
    }

    fn options(&self, bare: &Bare, state: &std::path::Path, secrets: &std::path::Path) -> Options {
        Options {
            repo: bare.path(),
            env: self.env.clone(),
            state_dir: state.to_owned(),
            secrets_dir: secrets.to_owned(),
            poll: "1h",
            watch: true,
            extra: String::new(),
            vars: vec![],
        }
    }

    async fn page(&self) -> String {
        match reqwest::get(format!("http://127.0.0.1:{}/index.html", self.port)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("unreachable: {e}"),
        }
    }
}

fn secrets_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("api_token"), format!("{SECRET}\n")).unwrap();
    d
}

fn last_good_is(commit: &str) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |s| s["last_good"]["commit"] == commit
}

fn failed(commit: &str) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |s| {
        s["failed_commits"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f["commit"] == commit))
    }
}

/// The ids (container, image) of the project's containers.
async fn containers(docker: &bollard::Docker, project: &str) -> Vec<(String, String)> {
    let filter = std::collections::HashMap::from([(
        "label",
        vec![format!("com.docker.compose.project={project}")],
    )]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap();
    list.into_iter()
        .map(|c| (c.id.unwrap_or_default(), c.image_id.unwrap_or_default()))
        .collect()
}

async fn image_id(docker: &bollard::Docker, reference: &str) -> String {
    docker.inspect_image(reference).await.unwrap().id.unwrap()
}

async fn tag(docker: &bollard::Docker, source: &str, target: &str) {
    let (repo, tag) = target.rsplit_once(':').unwrap();
    docker
        .tag_image(
            source,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(repo)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .unwrap();
}

/// Rows of `history --output json` for `commit`.
fn rows_for(history: &serde_json::Value, commit: &str) -> Vec<serde_json::Value> {
    history["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["commit"] == commit || r["rollback_of"] == commit)
        .cloned()
        .collect()
}

/// A daemon driving a [`Stack`] that has deployed its first commit.
struct Deployed {
    stack: Stack,
    bare: Bare,
    c1: String,
    d: Daemon,
    secrets: tempfile::TempDir,
    state: tempfile::TempDir,
    _cleanup: Cleanup,
    _receiver: Receiver,
}

impl Deployed {
    async fn start(test: &str) -> Deployed {
        let receiver = Receiver::start().await;
        let stack = Stack::new(test, BUSYBOX, &receiver.url);
        let cleanup = Cleanup::new(&[&stack.project]);
        let secrets = secrets_dir();
        let state = tempfile::tempdir().unwrap();
        let bare = Bare::new(&stack.files("good v1", GOOD_CHECK, ""));
        let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
        let mut d = Daemon::start(&stack.options(&bare, state.path(), secrets.path()));
        d.ready().await;
        d.wait(&stack.env, "first deploy", LONG, last_good_is(&c1))
            .await;
        Deployed {
            stack,
            bare,
            c1,
            d,
            secrets,
            state,
            _cleanup: cleanup,
            _receiver: receiver,
        }
    }

    fn options(&self) -> Options {
        self.stack
            .options(&self.bare, self.state.path(), self.secrets.path())
    }

    fn state_arg(&self) -> String {
        self.state.path().to_str().unwrap().to_owned()
    }

    /// `driftless suspend` on the state directory, seen by the daemon.
    async fn suspend(&mut self, reason: &str) {
        let (code, _, err) = cli(&[
            "suspend",
            "--env",
            &self.stack.env,
            "--reason",
            reason,
            "--state-dir",
            &self.state_arg(),
        ]);
        assert_eq!(code, 0, "{err}");
        self.d
            .wait(&self.stack.env, "suspended", LONG, |s| {
                s["control"]["suspended"] == reason
            })
            .await;
    }
}

/// How long a deploy may take in these tests.
const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_deploy_bad_commits_roll_back_to_pinned_images_and_nothing_leaks() {
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    let receiver = Receiver::start().await;
    let image = format!("driftless-test/pin-{}:live", std::process::id());
    tag(docker, BUSYBOX, &image).await;
    let mut stack = Stack::new("daemon-e2e", &image, &receiver.url);
    stack.deadline = "10s";
    let _cleanup = Cleanup::new(&[&stack.project]).image(&image);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let bare = Bare::new(&stack.files("good v1", GOOD_CHECK, ""));
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let mut d = Daemon::start(&stack.options(&bare, state.path(), secrets.path()));
    d.ready().await;
    let env = stack.env.clone();
    let long = Duration::from_secs(120);

    // The daemon deploys the head at start.
    d.wait(&env, "first deploy", long, last_good_is(&c1)).await;
    assert_eq!(stack.page().await.trim(), "good v1");
    let v1_id = image_id(docker, BUSYBOX).await;

    // A pushed commit is applied at once: the file watch on the bare repo.
    let c2 = bare.commit(&stack.files("good v2", GOOD_CHECK, ""), "v2");
    d.wait(&env, "c2 applied", long, last_good_is(&c2)).await;
    assert_eq!(stack.page().await.trim(), "good v2");
    let h = Daemon::history(state.path(), &env);
    assert_eq!(rows_for(&h, &c2)[0]["trigger"], "watch", "{h:#}");

    // The tag moves, and the next commit's container fails its healthcheck:
    // rolled back to c2's config and to the image id c2 ran, not the tag.
    tag(docker, BUSYBOX_2, &image).await;
    let c3 = bare.commit(&stack.files("good v3", BAD_CHECK, ""), "bad healthcheck");
    d.wait(&env, "c3 failed and rolled back", long, |s| {
        failed(&c3)(s)
            && s["last_reconcile"]["kind"] == "rollback"
            && s["last_reconcile"]["outcome"] == "healthy"
    })
    .await;
    let live = containers(docker, &stack.project).await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].1, v1_id, "the rollback runs the recorded image id");
    assert_eq!(stack.page().await.trim(), "good v2");
    let s = d.status(&env).await.unwrap();
    assert_eq!(s["last_good"]["commit"], c2.as_str());
    let h = Daemon::history(state.path(), &env);
    let rows = rows_for(&h, &c3);
    // The published port makes it stop-first: the new container is gated
    // on its healthcheck as it replaces the old, so the apply itself fails.
    assert!(
        rows.iter().any(|r| r["kind"] == "deploy"
            && r["outcome"] == "failed"
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("stop-first update failed")
                    && e.contains("failed its healthcheck"))),
        "{rows:#?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["kind"] == "rollback" && r["commit"] == c2.as_str()),
        "{rows:#?}"
    );

    // The bad commit is not retried, even when asked to reconcile.
    manual_pass(&mut d, &env).await;
    let h = Daemon::history(state.path(), &env);
    let deploys_of_c3 = h["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["commit"] == c3.as_str() && r["kind"] == "deploy")
        .count();
    assert_eq!(deploys_of_c3, 1, "{h:#}");

    // A template error applies nothing and leaves the last good state running.
    let running = containers(docker, &stack.project).await;
    let c4 = bare.commit(
        &stack.files("good v4", GOOD_CHECK, "{{ no_such_value }}"),
        "template error",
    );
    d.wait(&env, "c4 invalid", long, failed(&c4)).await;
    let h = Daemon::history(state.path(), &env);
    assert_eq!(rows_for(&h, &c4)[0]["outcome"], "invalid", "{h:#}");
    assert_eq!(containers(docker, &stack.project).await, running);
    assert_eq!(stack.page().await.trim(), "good v2");

    // The tag moves back to the image the rollback pinned: the service is
    // named by its tag again, and the container stays (same image id).
    tag(docker, BUSYBOX, &image).await;
    manual_pass(&mut d, &env).await;
    assert_eq!(containers(docker, &stack.project).await, running);
    // One rollback so far, however many passes found it in place.
    let metrics = d.client().get(d.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let rollbacks = format!("driftless_rollbacks_total{{env=\"{env}\"}} 1\n");
    assert!(metrics.contains(&rollbacks), "{metrics}");
    // Healthy at the last good commit: nothing is out of sync with it.
    let s = d
        .client()
        .get(d.url(&format!("/api/v1/environments/{env}")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&s.text().await.unwrap()).unwrap();
    assert_eq!(s["drift"]["resources_out_of_sync"], 0, "{s:#}");
    assert_eq!(s["drift"]["in_sync"], true, "{s:#}");

    // A page the probe rejects (the container itself is healthy): rolled back.
    let c5 = bare.commit(&stack.files("broken page", GOOD_CHECK, ""), "probe fails");
    d.wait(&env, "c5 failed and rolled back", long, |s| {
        failed(&c5)(s)
            && s["last_reconcile"]["kind"] == "rollback"
            && s["last_reconcile"]["rollback_of"] == c5.as_str()
            && s["last_reconcile"]["outcome"] != "running"
    })
    .await;
    let s = d.status(&env).await.unwrap();
    assert!(
        s["failed_commits"].to_string().contains("probe page"),
        "{s:#}"
    );
    assert_eq!(stack.page().await.trim(), "good v2");

    // Notifications went out in both formats.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = receiver.all();
    assert!(
        sent.iter().any(|b| b.contains("\"rolled_back\"")),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(|b| b.contains("DriftlessRolledBack")),
        "{sent:?}"
    );
    assert!(sent.iter().any(|b| b.contains("\"invalid\"")), "{sent:?}");

    // SIGTERM: a clean exit.
    let api = d.status(&env).await.unwrap().to_string();
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)).await, Some(0));

    // No secret anywhere: logs, the store, API answers, notifications.
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let mut haystacks = vec![
        ("logs".to_owned(), d.log_text().into_bytes()),
        ("api".to_owned(), api.into_bytes()),
    ];
    for entry in std::fs::read_dir(state.path()).unwrap().flatten() {
        if entry.path().is_file() {
            haystacks.push((
                entry.path().display().to_string(),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    for (i, b) in sent.iter().enumerate() {
        haystacks.push((format!("notification {i}"), b.clone().into_bytes()));
    }
    let h = cli(&[
        "history",
        "--env",
        &env,
        "--output",
        "json",
        "--state-dir",
        state.path().to_str().unwrap(),
    ]);
    haystacks.push(("history".to_owned(), h.1.into_bytes()));
    for (name, hay) in &haystacks {
        let text = String::from_utf8_lossy(hay);
        assert!(!text.contains(SECRET), "secret in {name}");
        assert!(!text.contains(&b64), "base64 secret in {name}");
        assert!(
            !text.contains("DAEMON-LEAK-CANARY"),
            "part of the secret in {name}"
        );
    }
    // The logs do carry one span per reconcile with env, trigger and commit.
    let logs = d.log_text();
    assert!(
        logs.lines().any(|l| l.contains("\"name\":\"reconcile\"")
            && l.contains(&format!("\"env\":\"{env}\""))
            && l.contains("\"trigger\":\"watch\"")
            && l.contains("\"commit\"")),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_and_webhook_trigger_deploys_and_sigterm_lets_the_apply_finish() {
    let Some(_engine) = engine().await else {
        return;
    };
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-poll", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let bare = Bare::new(&stack.files("good v1", GOOD_CHECK, ""));
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let env = stack.env.clone();
    let long = Duration::from_secs(120);

    // Poll path: no watch, a short poll interval.
    let mut o = stack.options(&bare, state.path(), secrets.path());
    o.watch = false;
    o.poll = "1s";
    let mut d = Daemon::start(&o);
    d.ready().await;
    d.wait(&env, "first deploy", long, last_good_is(&c1)).await;
    let c2 = bare.commit(&stack.files("good v2", GOOD_CHECK, ""), "v2");
    d.wait(&env, "c2 by poll", long, last_good_is(&c2)).await;
    let h = Daemon::history(state.path(), &env);
    assert_eq!(rows_for(&h, &c2)[0]["trigger"], "poll", "{h:#}");

    // SIGTERM during an apply: the apply finishes, then the daemon exits 0.
    let c3 = bare.commit(&stack.files("good v3", GOOD_CHECK, ""), "v3");
    d.wait(&env, "c3 running", long, |s| s["worker"]["running"] == true)
        .await;
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(90)).await, Some(0));
    let h = Daemon::history(state.path(), &env);
    let c3_rows = rows_for(&h, &c3);
    assert!(
        c3_rows
            .iter()
            .all(|r| r["outcome"] != "running" && r["outcome"] != "interrupted"),
        "{c3_rows:#?}"
    );

    // Webhook path: neither watch nor poll can see the push.
    o.poll = "1h";
    let mut d = Daemon::start(&o);
    d.ready().await;
    d.wait(&env, "restart settles", long, |s| {
        s["worker"]["passes"].as_u64() >= Some(1) && s["worker"]["running"] == false
    })
    .await;
    let c4 = bare.commit(&stack.files("good v4", GOOD_CHECK, ""), "v4");
    let body =
        serde_json::json!({"ref": "refs/heads/main", "after": c4, "deleted": false}).to_string();
    let r = d
        .client()
        .post(d.url("/hooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", format!("d-{c4}"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign(body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["environments"][0], env.as_str());
    d.wait(&env, "c4 by webhook", long, last_good_is(&c4)).await;
    let h = Daemon::history(state.path(), &env);
    assert_eq!(rows_for(&h, &c4)[0]["trigger"], "webhook", "{h:#}");
    assert_eq!(stack.page().await.trim(), "good v4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_is_refused_while_the_daemon_drives_and_pin_suspend_resume_work() {
    let Some(engine) = engine().await else {
        return;
    };
    let mut run = Deployed::start("daemon-ctl").await;
    let (stack, bare, c1) = (&run.stack, &run.bare, run.c1.clone());
    let env = stack.env.clone();
    let state_arg = run.state_arg();
    let long = LONG;
    let d = &mut run.d;
    let c2 = bare.commit(&stack.files("good v2", GOOD_CHECK, ""), "v2");
    d.wait(&env, "c2", long, last_good_is(&c2)).await;

    // A CLI apply is refused; a dry-run is allowed.
    let repo = bare.path().to_str().unwrap().to_owned();
    let secrets_arg = run.secrets.path().to_str().unwrap().to_owned();
    let base = [
        "reconcile",
        "--env",
        &env,
        "--repo",
        &repo,
        "--rev",
        "main",
        "--secrets-dir",
        &secrets_arg,
        "--state-dir",
        &state_arg,
    ];
    let (code, _, err) = cli(&base);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("driven by driftless daemon pid")
            && err.contains("--dry-run is always allowed"),
        "{err}"
    );
    let mut dry = base.to_vec();
    dry.push("--dry-run");
    let (code, out, err) = cli(&dry);
    assert_eq!(code, 0, "{out}{err}");

    // Pin to c1: the daemon applies it at once and keeps it.
    let (code, out, err) = cli(&[
        "rollback",
        "--env",
        &env,
        "--to",
        &c1,
        "--state-dir",
        &state_arg,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    d.wait(&env, "pinned to c1", long, |s| {
        s["control"]["pinned"] == c1.as_str()
            && s["last_reconcile"]["commit"] == c1.as_str()
            && s["last_reconcile"]["outcome"] == "healthy"
    })
    .await;
    assert_eq!(stack.page().await.trim(), "good v1");
    let c3 = bare.commit(&stack.files("good v3", GOOD_CHECK, ""), "v3");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.page().await.trim(),
        "good v1",
        "a pin holds against new commits"
    );

    // Suspend: nothing changes, even when drifted; the status shows it.
    run.suspend("maintenance").await;
    let (stack, d) = (&run.stack, &mut run.d);

    // The pin and suspension survive a restart.
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)).await, Some(0));
    let mut d = Daemon::start(&run.options());
    d.ready().await;
    let s = d
        .wait(&env, "status after restart", long, |s| {
            s["worker"]["passes"].as_u64() >= Some(1) && s["worker"]["running"] == false
        })
        .await;
    assert_eq!(s["control"]["suspended"], "maintenance");
    assert_eq!(stack.page().await.trim(), "good v1");

    // Resume: the branch head (c3) is deployed.
    let (code, _, err) = cli(&["resume", "--env", &env, "--state-dir", &state_arg]);
    assert_eq!(code, 0, "{err}");
    d.wait(&env, "c3 after resume", long, last_good_is(&c3))
        .await;
    assert_eq!(stack.page().await.trim(), "good v3");
    let _ = engine;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_an_apply_then_restart_converges_with_an_intact_store() {
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-kill", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let bare = Bare::new(&stack.files("good v1", GOOD_CHECK, ""));
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let env = stack.env.clone();
    let long = Duration::from_secs(120);
    let mut d = Daemon::start(&stack.options(&bare, state.path(), secrets.path()));
    d.ready().await;
    d.wait(&env, "first deploy", long, last_good_is(&c1)).await;

    let c2 = bare.commit(&stack.files("good v2", GOOD_CHECK, ""), "v2");
    d.wait(&env, "c2 running", long, |s| s["worker"]["running"] == true)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.kill9();

    let mut d = Daemon::start(&stack.options(&bare, state.path(), secrets.path()));
    d.ready().await;
    d.wait(&env, "c2 after restart", long, last_good_is(&c2))
        .await;
    assert_eq!(stack.page().await.trim(), "good v2");
    let live = containers(docker, &stack.project).await;
    assert_eq!(live.len(), 1, "no duplicate containers: {live:?}");
    let inspect = docker
        .inspect_container(&live[0].0, None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(inspect.state.unwrap().running, Some(true));
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)).await, Some(0));
    let store = driftless::store::Store::open(state.path()).unwrap();
    assert_eq!(store.integrity_check().unwrap(), Ok(()));
    let h = store.history(Some(&env), 100).unwrap();
    assert!(
        h.iter()
            .all(|r| r.outcome != driftless::store::Outcome::Running),
        "{h:#?}"
    );
}

/// A state directory whose `state.db` was truncated to nothing, then
/// deleted: the daemon refuses to start (exit 2, naming the file and the
/// flag) and touches nothing — it would otherwise forget the suspension
/// and deploy the commit pushed while suspended. `--accept-lost-state`
/// starts it, with a warning, from nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_or_deleted_store_refuses_to_start_unless_the_loss_is_accepted() {
    let Some(engine) = engine().await else {
        return;
    };
    let mut run = Deployed::start("daemon-lost").await;
    run.suspend("maintenance").await;
    let (stack, env, state_arg) = (&run.stack, run.stack.env.clone(), run.state_arg());
    let c2 = run
        .bare
        .commit(&stack.files("good v2", GOOD_CHECK, ""), "v2");
    run.d.signal("TERM");
    assert_eq!(run.d.wait_exit(Duration::from_secs(60)).await, Some(0));
    let options = run.options();
    let long = LONG;

    let db = run.state.path().join("state.db");
    let truncate = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(0)
            .unwrap()
    };
    let delete = |p: &std::path::Path| std::fs::remove_file(p).unwrap();
    for (damage, what, how) in [
        (
            &truncate as &dyn Fn(&std::path::Path),
            "truncated",
            "the file is empty",
        ),
        (&delete, "deleted", "the file is missing"),
    ] {
        damage(&db);
        let mut d = Daemon::start(&options);
        assert_eq!(
            d.wait_exit(Duration::from_secs(60)).await,
            Some(2),
            "{what}"
        );
        let log = d.log_text();
        assert!(
            log.contains(&format!("{}: {how}", db.display()))
                && log.contains("suspensions, pins, failed-commit marks")
                && log.contains("--accept-lost-state"),
            "{what}: {log}"
        );
        assert_eq!(
            stack.page().await.trim(),
            "good v1",
            "{what}: nothing deployed"
        );
        // The CLI refuses the directory too, rather than starting it afresh.
        let (code, _, err) = cli(&["history", "--env", &env, "--state-dir", &state_arg]);
        assert_ne!(code, 0, "{what}: {err}");
        assert!(err.contains("--accept-lost-state"), "{what}: {err}");
    }

    // Accepted: the daemon starts from nothing, says so, and (the
    // suspension forgotten) deploys the branch head.
    let mut d = Daemon::start_with_flags(&options, &["--accept-lost-state"]);
    d.ready().await;
    d.wait(&env, "c2 after the accepted loss", long, last_good_is(&c2))
        .await;
    let warned = d.log_text().lines().any(|l| {
        l.contains("\"level\":\"WARN\"")
            && l.contains("--accept-lost-state")
            && l.contains("the file is missing")
    });
    assert!(warned, "{}", d.log_text());
    assert_eq!(stack.page().await.trim(), "good v2");
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)).await, Some(0));
    // The new store is the directory's store now: a plain start works.
    let mut d = Daemon::start(&options);
    d.ready().await;
    let _ = engine;
}

/// A unix-socket proxy to the engine that the test stops and starts.
struct Proxy {
    path: std::path::PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn new() -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proxy {
            path: dir.path().join("docker.sock"),
            task: None,
            _dir: dir,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let upstream = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
            .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).unwrap();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        }));
    }

    /// Stops listening and drops open connections (the socket file goes too).
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_engine_is_retried_with_backoff_and_recovers() {
    let Some(_engine) = engine().await else {
        return;
    };
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-proxy", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let bare = Bare::new(&stack.files("good v1", GOOD_CHECK, ""));
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let env = stack.env.clone();
    let long = Duration::from_secs(120);
    let mut proxy = Proxy::new();
    let mut o = stack.options(&bare, state.path(), secrets.path());
    o.vars.push((
        "DOCKER_HOST".into(),
        format!("unix://{}", proxy.path.display()),
    ));
    let mut d = Daemon::start(&o);
    d.ready().await;
    d.wait(&env, "first deploy", long, last_good_is(&c1)).await;

    proxy.stop();
    let c2 = bare.commit(&stack.files("good v2", GOOD_CHECK, ""), "v2");
    let s = d
        .wait(&env, "a transient failure", long, |s| {
            s["worker"]["last_error"].is_string()
        })
        .await;
    assert!(
        s["worker"]["last_error"]
            .as_str()
            .unwrap()
            .contains("Docker socket"),
        "{s:#}"
    );
    // Retries keep failing while the engine is away; the commit is not marked failed.
    let passes = s["worker"]["passes"].as_u64().unwrap();
    d.wait(&env, "retries", long, |s| {
        s["worker"]["passes"].as_u64() >= Some(passes + 2)
    })
    .await;
    let s = d.status(&env).await.unwrap();
    assert!(!failed(&c2)(&s), "{s:#}");
    assert_eq!(s["last_good"]["commit"], c1.as_str());

    proxy.start();
    let s = d.wait(&env, "recovered", long, last_good_is(&c2)).await;
    assert!(s["worker"]["last_error"].is_null(), "{s:#}");
    assert_eq!(stack.page().await.trim(), "good v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_checks_signatures_replays_sizes_and_coalesces_a_thousand_deliveries() {
    let Some(_engine) = engine().await else {
        return;
    };
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-hook", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let bare = Bare::new(&stack.files("good v1", GOOD_CHECK, ""));
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let env = stack.env.clone();
    let long = Duration::from_secs(120);
    let mut o = stack.options(&bare, state.path(), secrets.path());
    o.watch = false;
    let mut d = Daemon::start(&o);
    d.ready().await;
    d.wait(&env, "first deploy", long, last_good_is(&c1)).await;

    let client = d.client().clone();
    let url = d.url("/hooks/github");
    let post = |event: &str,
                delivery: &str,
                content_type: &str,
                body: Vec<u8>,
                signature: Option<String>| {
        let mut r = client
            .post(&url)
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("content-type", content_type)
            .body(body);
        if let Some(s) = signature {
            r = r.header("x-hub-signature-256", s);
        }
        r.send()
    };
    let json = "application/json";

    // GitHub's published test vector.
    let r = post(
        "ping",
        "vector",
        json,
        b"Hello, World!".to_vec(),
        Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".into()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // Every corpus payload with its recorded signature.
    let dir = crate::support::corpus().join("webhooks");
    let sigs = std::fs::read_to_string(dir.join("SIGNATURES.tsv")).unwrap();
    let mut n = 0;
    for line in sigs
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("file\t"))
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, signature) = (cols[0], cols[2]);
        let body = std::fs::read(dir.join(file)).unwrap();
        let event = if file.contains("ping") {
            "ping"
        } else if file.starts_with("create--") {
            "create"
        } else if file.starts_with("delete--") {
            "delete"
        } else {
            "push"
        };
        let r = post(
            event,
            &format!("corpus-{file}"),
            json,
            body,
            Some(signature.to_owned()),
        )
        .await
        .unwrap();
        let want = if event == "ping" { 200 } else { 202 };
        assert_eq!(
            r.status(),
            want,
            "{file}: {}",
            r.text().await.unwrap_or_default()
        );
        n += 1;
    }
    assert!(n >= 20, "{n} corpus payloads");

    // Wrong and missing signatures.
    let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
    let r = post(
        "push",
        "bad-sig",
        json,
        body.clone(),
        Some(sign(b"other body")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = post("push", "no-sig", json, body.clone(), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A replayed delivery is acknowledged and ignored.
    let r = post("push", "replayed", json, body.clone(), Some(sign(&body)))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = post("push", "replayed", json, body.clone(), Some(sign(&body)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("already received"));

    // Oversize, non-JSON, form-encoded.
    let big = vec![b' '; 1024 * 1024 + 1];
    let r = post("push", "big", json, big.clone(), Some(sign(&big)))
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = post(
        "push",
        "not-json",
        json,
        b"hello".to_vec(),
        Some(sign(b"hello")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let form = format!("payload={}", "%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D").into_bytes();
    let r = post(
        "push",
        "form",
        "application/x-www-form-urlencoded",
        form.clone(),
        Some(sign(&form)),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.text().await.unwrap().contains(&env));
    let tag = br#"{"ref":"refs/tags/v1"}"#.to_vec();
    let r = post("push", "tag", json, tag.clone(), Some(sign(&tag)))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.text().await.unwrap().contains("ignored"));

    // 1,000 concurrent deliveries for a new commit: at most one running and
    // one pending reconcile, so at most two passes, one deploy.
    d.wait(&env, "idle", long, |s| {
        s["worker"]["running"] == false && s["pending"] == false
    })
    .await;
    let before = d.status(&env).await.unwrap()["worker"]["passes"]
        .as_u64()
        .unwrap();
    let c2 = bare.commit(&stack.files("good v2", GOOD_CHECK, ""), "v2");
    let push = serde_json::json!({"ref": "refs/heads/main", "after": c2})
        .to_string()
        .into_bytes();
    let signature = sign(&push);
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let f = post(
            "push",
            &format!("burst-{i}"),
            json,
            push.clone(),
            Some(signature.clone()),
        );
        burst.spawn(f);
    }
    let mut accepted = 0;
    while let Some(r) = burst.join_next().await {
        let r = r.unwrap().unwrap();
        assert_eq!(r.status(), 202);
        accepted += 1;
    }
    assert_eq!(accepted, 1000);
    d.wait(&env, "c2 by webhook", long, last_good_is(&c2)).await;
    let s = d
        .wait(&env, "burst settled", long, |s| {
            s["worker"]["running"] == false && s["pending"] == false
        })
        .await;
    let passes = s["worker"]["passes"].as_u64().unwrap() - before;
    assert!(
        (1..=2).contains(&passes),
        "{passes} passes for 1,000 deliveries"
    );
    let h = Daemon::history(state.path(), &env);
    assert_eq!(rows_for(&h, &c2).len(), 1, "{h:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_first_deploy_suspends_and_removes_what_it_created_when_allowed() {
    let Some(engine) = engine().await else {
        return;
    };
    let receiver = Receiver::start().await;
    let mut stack = Stack::new("daemon-first", BUSYBOX, &receiver.url);
    stack.deadline = "15s";
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let mut files = stack.files("good v1", BAD_CHECK, "");
    files[0].1 = files[0].1.replace(
        "    drift_interval: 1h\n",
        "    drift_interval: 1h\n    allow: { remove_on_failed_first_deploy: true }\n",
    );
    let bare = Bare::new(&files);
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let env = stack.env.clone();
    let mut d = Daemon::start(&stack.options(&bare, state.path(), secrets.path()));
    d.ready().await;
    let s = d
        .wait(&env, "suspended", Duration::from_secs(120), |s| {
            s["control"]["suspended"].is_string()
        })
        .await;
    let reason = s["control"]["suspended"].as_str().unwrap();
    assert!(
        reason.contains("first deploy") && reason.contains("removed"),
        "{reason}"
    );
    assert!(failed(&c1)(&s), "{s:#}");
    assert!(s["last_good"].is_null(), "{s:#}");
    assert!(containers(engine.docker(), &stack.project).await.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver
            .all()
            .iter()
            .any(|b| b.contains("first_deploy_failed")),
        "{:?}",
        receiver.all()
    );
}

#[test]
fn an_invalid_daemon_configuration_exits_2_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftless-daemon.yaml");
    std::fs::write(
        &config,
        "poll_interval: often\nlisten: nowhere\nunknown_key: 1\n",
    )
    .unwrap();
    let (code, out, err) = cli(&["daemon", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("unknown_key"), "{err}");
    std::fs::write(&config, "poll_interval: often\nlisten: nowhere\n").unwrap();
    let (code, _, err) = cli(&["daemon", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    for needle in ["poll_interval", "listen", "no repo"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    // An environment the repo does not have is a usage error too.
    let bare = Bare::new(&[(
        "driftless.yaml",
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n".to_owned(),
    )]);
    let (code, _, err) = cli(&[
        "daemon",
        "--repo",
        bare.path().to_str().unwrap(),
        "--env",
        "nope",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`nope` is not in driftless.yaml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_is_corrected_and_a_removed_environment_keeps_its_resources() {
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-drift", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let mut files = stack.files("good v1", GOOD_CHECK, "");
    files[0].1 = files[0]
        .1
        .replace("drift_interval: 1h", "drift_interval: 2s");
    let bare = Bare::new(&files);
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let env = stack.env.clone();
    let long = Duration::from_secs(120);
    let mut d = Daemon::start(&stack.options(&bare, state.path(), secrets.path()));
    d.ready().await;
    d.wait(&env, "first deploy", long, last_good_is(&c1)).await;

    // Someone removes the container by hand: the drift timer puts it back.
    let before = containers(docker, &stack.project).await;
    assert_eq!(before.len(), 1);
    docker
        .remove_container(
            &before[0].0,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await
        .unwrap();
    d.wait(&env, "drift corrected", long, |s| {
        s["last_reconcile"]["trigger"] == "drift" && s["last_reconcile"]["outcome"] == "healthy"
    })
    .await;
    let after = containers(docker, &stack.project).await;
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].0, before[0].0);
    assert_eq!(stack.page().await.trim(), "good v1");

    // The environment leaves driftless.yaml: no longer driven, resources stay.
    let manifest = "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  someone-else:\n    targets: [local]\n    paths: { stacks: [] }\n".to_owned();
    bare.commit(&[("driftless.yaml", manifest)], "drop the environment");
    let deadline = tokio::time::Instant::now() + long;
    while !d
        .log_text()
        .contains("environment removed from the manifest")
    {
        assert!(tokio::time::Instant::now() < deadline, "{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(containers(docker, &stack.project).await, after);
    assert_eq!(stack.page().await.trim(), "good v1");
}

/// #20: polls more frequent than the drift interval do not keep the drift
/// timer from firing. A poll that finds the head unchanged may end at the
/// live state's fingerprint; only the timer's passes compare the whole live
/// state, and the status counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_drift_timer_fires_while_polls_run_more_often() {
    let Some(_engine) = engine().await else {
        return;
    };
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-drift-timer", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let mut files = stack.files("good v1", GOOD_CHECK, "");
    files[0].1 = files[0]
        .1
        .replace("drift_interval: 1h", "drift_interval: 3s");
    let bare = Bare::new(&files);
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let env = stack.env.clone();
    let long = Duration::from_secs(120);
    let mut options = stack.options(&bare, state.path(), secrets.path());
    options.poll = "1s";
    options.watch = false;
    let mut d = Daemon::start(&options);
    d.ready().await;
    let s = d.wait(&env, "first deploy", long, last_good_is(&c1)).await;
    let (passes, checks) = (
        s["worker"]["passes"].as_u64().unwrap(),
        s["worker"]["drift_checks"].as_u64().unwrap(),
    );
    // Two drift checks later, polls ran in between (about three a check).
    let s = d
        .wait(&env, "two drift checks", long, |s| {
            s["worker"]["drift_checks"].as_u64().unwrap_or(0) >= checks + 2
        })
        .await;
    let polls = s["worker"]["passes"].as_u64().unwrap() - passes - 2;
    assert!(polls >= 2, "no polls between the drift checks: {s}");
    assert!(last_good_is(&c1)(&s), "{s}");
}

/// #20.7: on a host with the usual 1,024 descriptors (soft and hard), 1,100
/// idle sockets neither keep the page from answering nor stop drift
/// correction: past its connection cap (half the descriptors) the daemon
/// leaves connections waiting instead of spending the descriptors the
/// engine, Git and the store need.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_descriptor_limit_of_1024_and_1100_idle_sockets_keep_drift_correction_going() {
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    // The test's own end of 1,100 sockets needs more than 1,024.
    driftless::http::server::raise_nofile_limit();
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-nofile", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let mut files = stack.files("good v1", GOOD_CHECK, "");
    files[0].1 = files[0]
        .1
        .replace("drift_interval: 1h", "drift_interval: 2s");
    let bare = Bare::new(&files);
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let env = stack.env.clone();
    let long = Duration::from_secs(120);
    let mut d =
        Daemon::start_with_nofile(&stack.options(&bare, state.path(), secrets.path()), 1024);
    d.ready().await;
    d.wait(&env, "first deploy", long, last_good_is(&c1)).await;

    let addr = format!("127.0.0.1:{}", d.port);
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // The page answers (once the header timeout frees a slot at the latest).
    let page = d
        .client()
        .get(d.url("/"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the page answers under 1,100 idle sockets");
    assert_eq!(page.status(), 200);
    // Drift correction still reaches the engine.
    let before = containers(docker, &stack.project).await;
    assert_eq!(before.len(), 1);
    std::process::Command::new("docker")
        .args(["rm", "-f", &before[0].0])
        .output()
        .unwrap();
    d.wait(&env, "drift corrected", long, |s| {
        s["last_reconcile"]["trigger"] == "drift" && s["last_reconcile"]["outcome"] == "healthy"
    })
    .await;
    assert_eq!(stack.page().await.trim(), "good v1");
    drop(idle);
    let log = d.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
}

/// #20.5: the drift timer re-applies the last good commit and it fails
/// again inside the settle window (it exits at start while its volume
/// holds a marker). The last good commit is never marked failed: the
/// status says it is being retried, and the retry that finds it able to
/// run puts it back.
#[tokio::test]
async fn a_crash_looping_drift_reapply_is_retried_and_never_marks_the_last_good_commit_failed() {
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-crashloop", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let mut files = stack.files("good v1", GOOD_CHECK, "");
    files[0].1 = files[0]
        .1
        .replace("drift_interval: 1h", "drift_interval: 2s");
    files[2].1 = files[2]
        .1
        .replace(
            "command: [httpd, -f, -p, \"8080\", -h, /www]",
            "command: [sh, -c, \"test ! -e /data/broken && exec httpd -f -p 8080 -h /www\"]",
        )
        .replace("    volumes:\n", "    volumes:\n      - data:/data\n")
        + "volumes:\n  data: {}\n";
    let bare = Bare::new(&files);
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let env = stack.env.clone();
    let long = Duration::from_secs(120);
    let mut d = Daemon::start(&stack.options(&bare, state.path(), secrets.path()));
    d.ready().await;
    d.wait(&env, "first deploy", long, last_good_is(&c1)).await;
    assert_eq!(stack.page().await.trim(), "good v1");

    // The volume now stops the service from starting; the container goes:
    // the drift timer's re-apply crash-loops.
    let before = containers(docker, &stack.project).await;
    assert_eq!(before.len(), 1);
    let docker_cli = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "docker {args:?}: {out:?}");
    };
    docker_cli(&["exec", &before[0].0, "sh", "-c", "echo > /data/broken"]);
    docker_cli(&["rm", "-f", &before[0].0]);
    let retrying = |s: &serde_json::Value| {
        s["worker"]["last_error"].as_str().is_some_and(|e| {
            e.contains(&format!("last good commit {} is unhealthy", &c1[..12]))
                && e.contains("retrying")
        })
    };
    let s = d.wait(&env, "the re-apply retried", long, retrying).await;
    let passes = s["worker"]["passes"].as_u64().unwrap();
    // Retried again and again, never marked failed, never suspended.
    let s = d
        .wait(&env, "more retries", long, |s| {
            s["worker"]["passes"].as_u64().unwrap_or(0) >= passes + 2
        })
        .await;
    assert!(
        !failed(&c1)(&s),
        "the last good commit was marked failed: {s}"
    );
    assert!(s["control"]["suspended"].is_null(), "{s}");
    assert!(last_good_is(&c1)(&s), "{s}");

    // The marker goes: the next retry brings the service back.
    let volume = format!("{}_data:/data", stack.project);
    docker_cli(&["run", "--rm", "-v", &volume, BUSYBOX, "rm", "/data/broken"]);
    let s = d
        .wait(&env, "recovered", long, |s| {
            s["worker"]["last_error"].is_null() && s["last_reconcile"]["outcome"] == "healthy"
        })
        .await;
    assert!(!failed(&c1)(&s), "{s}");
    assert!(last_good_is(&c1)(&s), "{s}");
    assert_eq!(stack.page().await.trim(), "good v1");
}

/// Asks the daemon for a pass of `env` and waits until it has run.
async fn manual_pass(d: &mut Daemon, env: &str) {
    let before = d.status(env).await.unwrap()["worker"]["passes"]
        .as_u64()
        .unwrap();
    let r = d
        .client()
        .post(d.url(&format!("/api/environments/{env}/reconcile")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    d.wait(env, "manual pass", Duration::from_secs(120), |s| {
        s["worker"]["passes"].as_u64() > Some(before) && s["worker"]["running"] == false
    })
    .await;
}

/// An ed25519 key made by `ssh-keygen` and an allowed_signers file
/// listing it, in `dir`.
fn signing_key(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join("signer");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "signer", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let allowed = dir.join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("ops@example.com namespaces=\"git\" {}", public.trim()),
    )
    .unwrap();
    (key, allowed)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_signatures_required_an_unsigned_push_is_refused_and_a_signed_one_applies() {
    let Some(_engine) = engine().await else {
        return;
    };
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-signed", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (key, allowed) = signing_key(keys.path());
    // The initial commit is unsigned.
    let bare = Bare::new(&stack.files("good v1", GOOD_CHECK, ""));
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let mut options = stack.options(&bare, state.path(), secrets.path());
    options.extra = format!(
        "verify:\n  {}:\n    signatures: required\n    allowed_signers: {}\n",
        stack.env,
        allowed.display()
    );
    let mut d = Daemon::start(&options);
    d.ready().await;
    let env = stack.env.clone();
    let long = Duration::from_secs(120);

    // Not applied: refused against the commit, with the reason.
    d.wait(&env, "c1 refused", long, failed(&c1)).await;
    let s = d.status(&env).await.unwrap();
    assert!(s["last_good"].is_null(), "{s:#}");
    assert_eq!(s["last_reconcile"]["outcome"], "invalid", "{s:#}");
    let error = s["last_reconcile"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("the commit is not signed"), "{s:#}");
    assert!(stack.page().await.starts_with("unreachable"));

    // Every later commit of the clone is signed with the key.
    let work = bare.work();
    let git = |args: &[&str]| crate::daemon_support::git(&work, args);
    git(&["config", "gpg.format", "ssh"]);
    git(&["config", "user.signingkey", key.to_str().unwrap()]);
    git(&["config", "commit.gpgsign", "true"]);
    let c2 = bare.commit(&stack.files("good v2", GOOD_CHECK, ""), "signed v2");
    d.wait(&env, "c2 applied", long, last_good_is(&c2)).await;
    assert_eq!(stack.page().await.trim(), "good v2");

    // An unsigned push: nothing applied, the last good commit keeps running.
    git(&["config", "commit.gpgsign", "false"]);
    let c3 = bare.commit(&stack.files("good v3", GOOD_CHECK, ""), "unsigned v3");
    d.wait(&env, "c3 refused", long, failed(&c3)).await;
    assert_eq!(stack.page().await.trim(), "good v2");
    let s = d.status(&env).await.unwrap();
    assert_eq!(s["last_good"]["commit"], c2.as_str(), "{s:#}");
    let h = Daemon::history(state.path(), &env);
    let row = &rows_for(&h, &c3)[0];
    assert_eq!(row["outcome"], "invalid", "{h:#}");
    assert!(
        row["error"].as_str().unwrap().contains("signature check"),
        "{row:#}"
    );
    let metrics = d.client().get(d.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let invalid = format!("driftless_reconciles_total{{env=\"{env}\",outcome=\"invalid\"}} 2\n");
    assert!(metrics.contains(&invalid), "{metrics}");
    let page = status_page(&d, &env).await;
    assert!(page.contains("the commit is not signed"), "{page}");
    assert!(
        receiver
            .all()
            .iter()
            .any(|b| b.contains(&c3[..12]) && b.contains("not signed")),
        "{:?}",
        receiver.all()
    );

    // The next signed commit applies.
    git(&["config", "commit.gpgsign", "true"]);
    let c4 = bare.commit(&stack.files("good v4", GOOD_CHECK, ""), "signed v4");
    d.wait(&env, "c4 applied", long, last_good_is(&c4)).await;
    assert_eq!(stack.page().await.trim(), "good v4");
}

/// `mode: tag` with GnuPG keys: a commit applies only when a signed
/// annotated tag points at it (the commit itself unsigned), and an unsigned
/// tag is refused by name, through the same status and metrics as any
/// refusal.
#[tokio::test(flavor = "multi_thread")]
async fn in_tag_mode_only_a_commit_with_a_gnupg_signed_tag_applies() {
    let Some(_engine) = engine().await else {
        return;
    };
    let receiver = Receiver::start().await;
    let stack = Stack::new("daemon-tagged", BUSYBOX, &receiver.url);
    let _cleanup = Cleanup::new(&[&stack.project]);
    let secrets = secrets_dir();
    let state = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let gpg = crate::signatures::Gpg::new(keys.path(), "Release Team <release@example.com>");
    let asc = keys.path().join("release-team.asc");
    std::fs::write(&asc, gpg.export("release@example.com")).unwrap();
    let bare = Bare::new(&stack.files("good v1", GOOD_CHECK, ""));
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let mut options = stack.options(&bare, state.path(), secrets.path());
    options.extra = format!(
        "verify:\n  {}:\n    signatures: required\n    openpgp_keys: [{}]\n    mode: tag\n",
        stack.env,
        asc.display()
    );
    let mut d = Daemon::start(&options);
    d.ready().await;
    let env = stack.env.clone();
    let long = Duration::from_secs(120);

    // Untagged: refused.
    d.wait(&env, "c1 refused", long, failed(&c1)).await;
    let s = d.status(&env).await.unwrap();
    let error = s["last_reconcile"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no tag points to the commit"), "{s:#}");
    assert!(stack.page().await.starts_with("unreachable"));

    // An unsigned commit with a signed tag, the tag pushed first: applied.
    let work = bare.work();
    let git = |args: &[&str]| crate::daemon_support::git(&work, args);
    git(&["config", "gpg.program", gpg.program.to_str().unwrap()]);
    git(&["config", "user.signingkey", "release@example.com"]);
    let c2 = bare.commit_unpushed(&stack.files("good v2", GOOD_CHECK, ""), "v2");
    git(&["tag", "-s", "-m", "release 2", "v2"]);
    git(&["push", "-q", "origin", "v2"]);
    git(&["push", "-q", "origin", "HEAD:main"]);
    d.wait(&env, "c2 applied", long, last_good_is(&c2)).await;
    assert_eq!(stack.page().await.trim(), "good v2");

    // An unsigned annotated tag: refused by name, v2 keeps running.
    let c3 = bare.commit_unpushed(&stack.files("good v3", GOOD_CHECK, ""), "v3");
    git(&["tag", "-a", "-m", "release 3", "v3"]);
    git(&["push", "-q", "origin", "v3"]);
    git(&["push", "-q", "origin", "HEAD:main"]);
    d.wait(&env, "c3 refused", long, failed(&c3)).await;
    assert_eq!(stack.page().await.trim(), "good v2");
    let s = d.status(&env).await.unwrap();
    assert_eq!(s["last_good"]["commit"], c2.as_str(), "{s:#}");
    let error = s["last_reconcile"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("signature check: no tag pointing to the commit has a good signature: `v3`: the tag is not signed"),
        "{s:#}"
    );
    let metrics = d.client().get(d.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let invalid = format!("driftless_reconciles_total{{env=\"{env}\",outcome=\"invalid\"}} 2\n");
    assert!(metrics.contains(&invalid), "{metrics}");
}

/// The daemon's status page, as a browser gets it from loopback.
async fn status_page(d: &Daemon, env: &str) -> String {
    let r = d.client().get(d.url("/")).send().await.unwrap();
    let page = r.text().await.unwrap();
    assert!(page.contains(env), "{page}");
    page
}
