//! `deploy.update_config` on a 4-replica service against the real engine:
//! `parallelism`, `delay`, `failure_action` and `max_failure_ratio` change
//! which replicas are replaced, which keep running and what the deploy
//! reports, as Swarm documents them.
//!
//! Which new replicas fail is made deterministic with tokens: the new
//! definition's command takes the first free token (a directory in a
//! shared volume) and serves, or exits 1 when none is left; replicas are
//! replaced in number order.

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use driftless::backend::Backend;
use driftless::backend::compose::ComposeBackend;
use driftless::manifest::Allow;
use driftless::model::compose::{
    ConfigFrom, FailureAction, Mount, Project, Service, UpdateConfig, UpdateOrder, Volume,
};
use driftless::secrets::Masker;

use crate::compose_backend::{ctx, desired, dry_run, reconcile};
use crate::compose_build::image_id;
use crate::docker_support::{BUSYBOX, BUSYBOX_2, Cleanup, engine, project_name};
use crate::rollout::{web, web_replicas};

/// Four replicas of the v1 httpd.
fn v1() -> Service {
    Service {
        replicas: 4,
        ..web(BUSYBOX)
    }
}

/// v2: serves only with one of `tokens` tokens, replaced as `u` says
/// (start-first unless it names an order).
fn v2(tokens: u32, u: UpdateConfig) -> Service {
    let list: Vec<String> = (1..=tokens).map(|i| i.to_string()).collect();
    let script = format!(
        "for i in {}; do mkdir /t/$i 2>/dev/null && exec httpd -f -p 80 -h /; done; exit 1",
        list.join(" ")
    );
    Service {
        command: Some(vec!["sh".into(), "-c".into(), script]),
        // Written by one new replica at a time: asked for explicitly.
        volumes: vec![Mount::Volume {
            subpath: None,
            source: Some("tokens".into()),
            target: "/t".into(),
            read_only: false,
            no_copy: false,
        }],
        update_config: UpdateConfig {
            order: u.order.or(Some(UpdateOrder::StartFirst)),
            from: ConfigFrom::Compose,
            ..u
        },
        replicas: 4,
        ..web(BUSYBOX_2)
    }
}

fn project(name: &str, web: Service) -> Project {
    Project {
        name: name.into(),
        services: [("web".to_owned(), web)].into(),
        networks: BTreeMap::new(),
        volumes: [(
            "tokens".to_owned(),
            Volume {
                name: format!("{name}_tokens"),
                ..Volume::default()
            },
        )]
        .into(),
        disabled_services: Default::default(),
        origin: Default::default(),
    }
}

/// Deploys v1, then applies v2 with `tokens` and `u`: the apply's result,
/// and per replica (by number) whether it now runs v2 and, if not, whether
/// it is the same container as before.
async fn update(
    b: &ComposeBackend,
    name: &str,
    tokens: u32,
    u: UpdateConfig,
) -> (Result<(), String>, Vec<&'static str>) {
    reconcile(b, name, &desired(vec![project(name, v1())])).await;
    let before = web_replicas(b, name).await;
    let d = desired(vec![project(name, v2(tokens, u))]);
    let changes = dry_run(b, name, &d, &Allow::default()).await.unwrap();
    let masker = Masker::default();
    let allow = Allow::default();
    let result = b
        .apply(&d, &changes, ctx(name, &masker, &allow))
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let v2_id = image_id(b, BUSYBOX_2).await;
    let after = web_replicas(b, name).await;
    let states = states(&after, &before, &v2_id);
    (result, states)
}

/// Per replica (by number) of `after`: `new` when it runs `v2_id`, `old`
/// when it is the same container as in `before`, `other` otherwise.
fn states(
    after: &[(String, String, String)],
    before: &[(String, String, String)],
    v2_id: &str,
) -> Vec<&'static str> {
    assert_eq!(
        after.iter().map(|r| &r.0).collect::<Vec<_>>(),
        before.iter().map(|r| &r.0).collect::<Vec<_>>(),
        "exactly the replicas, under their canonical names"
    );
    after
        .iter()
        .zip(before)
        .map(|(now, was)| {
            if now.2 == v2_id {
                "new"
            } else if now.1 == was.1 {
                "old"
            } else {
                "other"
            }
        })
        .collect()
}

fn config(parallelism: u32, failure_action: FailureAction, max_failure_ratio: f64) -> UpdateConfig {
    UpdateConfig {
        parallelism,
        failure_action,
        max_failure_ratio,
        ..UpdateConfig::default()
    }
}

/// `pause` and `rollback` both stop at the first replica past the ratio
/// and fail the deploy; what `rollback` adds is the environment's: a failed
/// deploy takes its normal failure path, the rollback to the last good
/// commit (replaced as `rollback_config` says).
#[tokio::test]
async fn pause_and_rollback_stop_at_the_first_failed_replica() {
    let Some(b) = engine().await else { return };
    for action in [FailureAction::Pause, FailureAction::Rollback] {
        let name = project_name(&format!("batch-{action:?}").to_lowercase());
        let _cleanup = Cleanup::new(&[&name]);
        let (result, states) = update(&b, &name, 2, config(1, action, 0.0)).await;
        // 1 and 2 took the tokens; 3 failed, so 4 was never tried.
        assert_eq!(states, ["new", "new", "old", "old"], "{action:?}");
        let err = result.unwrap_err();
        assert!(
            err.contains(&format!("{name}/web")) && err.contains("(1 of 4 replicas)"),
            "{err}"
        );
        assert!(
            err.contains(&format!("{name}-web-3")) && err.contains("exited with code 1"),
            "{err}"
        );
        assert!(!err.contains(&format!("{name}-web-4")), "{err}");
    }
}

#[tokio::test]
async fn continue_tries_every_replica_then_fails() {
    let Some(b) = engine().await else { return };
    let name = project_name("batch-continue");
    let _cleanup = Cleanup::new(&[&name]);
    let (result, states) = update(&b, &name, 2, config(1, FailureAction::Continue, 0.0)).await;
    // 3 and 4 were both tried, both failed, both kept their old container.
    assert_eq!(states, ["new", "new", "old", "old"]);
    let err = result.unwrap_err();
    assert!(err.contains("(2 of 4 replicas)"), "{err}");
    assert!(err.contains(&format!("{name}-web-4")), "{err}");
}

#[tokio::test]
async fn failures_within_max_failure_ratio_do_not_fail_the_deploy() {
    let Some(b) = engine().await else { return };
    let name = project_name("batch-ratio");
    let _cleanup = Cleanup::new(&[&name]);
    // Two failures of four are a ratio of 0.5: tolerated, and the update
    // went on past the first.
    let (result, states) = update(&b, &name, 2, config(1, FailureAction::Pause, 0.5)).await;
    assert_eq!(result, Ok(()));
    assert_eq!(states, ["new", "new", "old", "old"]);
}

#[tokio::test]
async fn parallelism_is_how_many_replicas_are_tried_at_once() {
    let Some(b) = engine().await else { return };
    // No token: every new replica fails; with `pause` the update stops
    // after the first batch, so the count of failures is the batch size.
    for (parallelism, failed) in [(2, 2), (0, 4)] {
        let name = project_name(&format!("batch-par{parallelism}"));
        let _cleanup = Cleanup::new(&[&name]);
        let (result, states) =
            update(&b, &name, 0, config(parallelism, FailureAction::Pause, 0.0)).await;
        assert_eq!(states, ["old"; 4], "parallelism {parallelism}");
        let err = result.unwrap_err();
        assert!(err.contains(&format!("({failed} of 4 replicas)")), "{err}");
    }
}

/// stop-first batches obey the same settings: each old replica is stopped,
/// its new one started and gated, `parallelism` at a time; a new replica
/// that fails stays as it is (its old one is gone), so it counts as
/// running the new definition.
fn stop_first(parallelism: u32, failure_action: FailureAction, ratio: f64) -> UpdateConfig {
    UpdateConfig {
        order: Some(UpdateOrder::StopFirst),
        ..config(parallelism, failure_action, ratio)
    }
}

#[tokio::test]
async fn stop_first_pauses_after_the_batch_that_failed() {
    let Some(b) = engine().await else { return };
    let name = project_name("batch-stop-pause");
    let _cleanup = Cleanup::new(&[&name]);
    // No token: both new replicas of the first batch fail; 3 and 4 are
    // never touched.
    let (result, states) = update(&b, &name, 0, stop_first(2, FailureAction::Pause, 0.0)).await;
    assert_eq!(states, ["new", "new", "old", "old"]);
    let err = result.unwrap_err();
    for words in [
        "stop-first update failed (2 of 4 replicas)",
        &format!("new replica {name}-web-1 exited with code 1"),
        "its old container was already removed",
        "update paused: 0 of 4 replicas run the new definition, 2 failed it",
        "2 the old",
    ] {
        assert!(err.contains(words), "{words:?} in {err}");
    }
    assert!(!err.contains(&format!("{name}-web-3")), "{err}");
}

#[tokio::test]
async fn stop_first_continue_replaces_every_replica_then_fails() {
    let Some(b) = engine().await else { return };
    for (ratio, fails) in [(0.0, true), (0.5, false)] {
        let name = project_name(&format!("batch-stop-cont{}", ratio > 0.0));
        let _cleanup = Cleanup::new(&[&name]);
        // Two tokens: 1 and 2 serve, 3 and 4 fail; `continue` went on past 3.
        let (result, states) =
            update(&b, &name, 2, stop_first(1, FailureAction::Continue, ratio)).await;
        assert_eq!(states, ["new"; 4], "ratio {ratio}");
        match result {
            // Past the ratio: the deploy fails (and the environment takes
            // its failure path), as with start-first.
            Err(err) if fails => {
                assert!(
                    err.contains("stop-first update failed (2 of 4 replicas)"),
                    "{err}"
                );
                assert!(err.contains(&format!("{name}-web-4")), "{err}");
            }
            Ok(()) if !fails => {}
            other => panic!("ratio {ratio}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn delay_separates_the_batches() {
    let Some(b) = engine().await else { return };
    let name = project_name("batch-delay");
    let _cleanup = Cleanup::new(&[&name]);
    let delay = Duration::from_secs(3);
    let u = UpdateConfig {
        delay,
        ..config(2, FailureAction::Pause, 0.0)
    };
    let (result, states) = update(&b, &name, 4, u).await;
    assert_eq!(result, Ok(()));
    assert_eq!(states, ["new"; 4]);
    let mut started = Vec::new();
    for n in 1..=4 {
        let inspect = b
            .docker()
            .inspect_container(&format!("{name}-web-{n}"), None::<InspectContainerOptions>)
            .await
            .unwrap();
        let at = inspect.state.and_then(|s| s.started_at).unwrap();
        started.push(chrono::DateTime::parse_from_rfc3339(&at).unwrap());
    }
    // Two batches of two: each pair started together, the second pair at
    // least `delay` after the first.
    let apart = |a: usize, b: usize| (started[b] - started[a]).to_std().unwrap_or_default();
    assert!(
        apart(0, 1) < Duration::from_secs(1) || apart(1, 0) < Duration::from_secs(1),
        "{started:?}"
    );
    let first = started[0].max(started[1]);
    let second = started[2].min(started[3]);
    assert!(
        (second - first).to_std().unwrap_or_default() >= delay,
        "{started:?}"
    );
}

/// `driftless` run against a one-environment repo and state dir, as a
/// user runs it (no `DRIFTLESS_*` from the test's environment).
struct Cli {
    env: String,
    repo: crate::support::RepoBuilder,
    state: tempfile::TempDir,
}

impl Cli {
    fn new(name: &str, stack: &str) -> Cli {
        let env = format!("e{}", name.trim_start_matches("dlt-").replace('_', "-"));
        let repo = crate::support::RepoBuilder::one_stack("local", "{}", &env, stack);
        Cli {
            env,
            repo,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// Commits `stack` as the head; its id.
    fn commit(&self, stack: &str, message: &str) -> String {
        use crate::support::git;
        std::fs::write(self.repo.path().join("compose/stack.yaml"), stack).unwrap();
        git(self.repo.path(), &["commit", "-q", "-am", message]);
        git(self.repo.path(), &["rev-parse", "HEAD"])
            .trim()
            .to_owned()
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_driftless"));
        cmd.args(args)
            .args(["--env", &self.env, "--state-dir"])
            .arg(self.state.path());
        if args[0] == "reconcile" {
            cmd.arg("--repo").arg(self.repo.path());
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("DRIFTLESS_") {
                cmd.env_remove(k);
            }
        }
        cmd.output().unwrap()
    }

    fn history(&self) -> serde_json::Value {
        let out = self.run(&["history", "--output", "json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A 4-replica httpd on `image` with the extra `deploy:` keys `deploy`;
/// with `tokens`, the v2 of [`v2`] (two tokens).
fn token_stack(name: &str, image: &str, tokens: bool, deploy: &str) -> String {
    let (command, volumes) = if tokens {
        (
            "[sh, -c, \"for i in 1 2; do mkdir /t/$$i 2>/dev/null && exec httpd -f -p 80 -h /; done; exit 1\"]\n    volumes: [tokens:/t]",
            "volumes:\n  tokens: {}\n",
        )
    } else {
        ("[httpd, -f, -p, \"80\", -h, /]", "")
    };
    format!(
        "name: {name}\nservices:\n  web:\n    image: {image}\n    stop_grace_period: 1s\n    command: {command}\n    deploy:\n      replicas: 4\n{deploy}{volumes}"
    )
}

/// Swarm's `pause` through the whole pipeline: the update stops at the
/// first failed replica, the two replaced keep the new definition and the
/// two not yet replaced their old containers; the commit is not marked
/// failed and nothing is rolled back (automatic rollback is on), the
/// environment is suspended with a reason saying so and how to continue.
/// After `driftless resume` the next pass tries the head's update again
/// and, as Swarm continues a paused update, replaces only the replicas not
/// yet updated: first with the fixture's tokens all taken (it pauses again
/// at web-3), then with two tokens freed (web-3 and web-4 take them); the
/// replicas updated before the pause keep their containers throughout.
#[tokio::test]
async fn a_paused_update_stays_half_updated_until_resumed() {
    let Some(b) = engine().await else { return };
    let name = project_name("batch-paused");
    let _cleanup = Cleanup::new(&[&name]);
    let cli = Cli::new(&name, &token_stack(&name, BUSYBOX, false, ""));
    let first = cli.run(&["reconcile"]);
    assert!(first.status.success(), "{first:?}");
    let v1 = crate::support::git(cli.repo.path(), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    let before = web_replicas(&b, &name).await;
    assert_eq!(before.len(), 4, "{before:?}");
    cli.commit(
        &token_stack(
            &name,
            BUSYBOX_2,
            true,
            "      update_config: { parallelism: 1, failure_action: pause, order: start-first, monitor: 1s }\n",
        ),
        "v2",
    );

    let paused = cli.run(&["reconcile"]);
    assert!(!paused.status.success(), "{paused:?}");
    let v2_id = image_id(&b, BUSYBOX_2).await;
    let half = web_replicas(&b, &name).await;
    assert_eq!(states(&half, &before, &v2_id), ["new", "new", "old", "old"]);

    let doc = cli.history();
    let suspended = doc["control"]["suspended"].as_str().unwrap_or_default();
    for words in [
        "paused, not rolled back",
        "2 of 4 replicas run the new definition, 2 the old",
        &format!("{name}-web-3"),
        &format!("driftless resume --env {}", cli.env),
    ] {
        assert!(suspended.contains(words), "{words:?} in {doc:#}");
    }
    assert_eq!(doc["last_good"]["commit"], v1.as_str(), "{doc:#}");
    assert_eq!(doc["failed_commits"], serde_json::json!([]), "{doc:#}");
    let kinds: Vec<(&str, &str)> = doc["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("deploy", "failed"), ("deploy", "healthy")],
        "{doc:#}"
    );
    let error = doc["reconciles"][0]["error"].as_str().unwrap();
    assert!(error.contains("update paused"), "{error}");

    // Suspended: another reconcile changes nothing.
    let again = cli.run(&["reconcile"]);
    assert!(!again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is suspended"),
        "{again:?}"
    );
    assert_eq!(web_replicas(&b, &name).await, half);

    // Resumed with the tokens all taken: the update goes on at web-3 (the
    // one replica it tries, out of the two not yet updated), which fails,
    // so it pauses again; still no rollback.
    let resumed = cli.run(&["resume"]);
    assert!(resumed.status.success(), "{resumed:?}");
    let on = cli.run(&["reconcile"]);
    assert!(!on.status.success(), "{on:?}");
    assert_eq!(web_replicas(&b, &name).await, half);
    let doc = cli.history();
    let error = doc["reconciles"][0]["error"].as_str().unwrap();
    assert!(error.contains("update paused"), "{error}");
    assert!(error.contains("(1 of 2 replicas)"), "{error}");
    assert!(
        error.contains("2 of 4 replicas run the new definition, 2 the old"),
        "{error}"
    );
    assert!(error.contains(&format!("{name}-web-3")), "{error}");
    assert_eq!(doc["reconciles"][0]["kind"], "deploy", "{doc:#}");
    assert_eq!(doc["failed_commits"], serde_json::json!([]), "{doc:#}");
    assert!(doc["control"]["suspended"].is_string(), "{doc:#}");

    // Two tokens freed (the fix a user would push): resumed, the update
    // replaces web-3 and web-4 only and the deploy succeeds.
    crate::backup_support::exec(
        b.docker(),
        &format!("{name}-web-1"),
        &["busybox", "rmdir", "/t/1", "/t/2"],
    )
    .await
    .unwrap();
    assert!(cli.run(&["resume"]).status.success());
    let done = cli.run(&["reconcile"]);
    assert!(done.status.success(), "{done:?}");
    let now = web_replicas(&b, &name).await;
    assert_eq!(&now[..2], &half[..2], "updated before the pause: kept");
    assert_eq!(states(&now, &before, &v2_id), ["new"; 4]);
    let doc = cli.history();
    assert_eq!(doc["reconciles"][0]["outcome"], "healthy", "{doc:#}");
    let plan = doc["reconciles"][0]["diff"].as_str().unwrap_or_default();
    assert!(
        plan.contains("2 of 4 replicas already run it and are kept"),
        "{plan}"
    );
    assert_eq!(
        doc["control"]["suspended"],
        serde_json::Value::Null,
        "{doc:#}"
    );
}

/// The automatic rollback after a failed update replaces replicas as
/// `rollback_config` says, not `update_config`: the update went
/// start-first one at a time (two replaced, the third failed), the
/// rollback stop-first all at once, as the history's plans say; after it
/// every replica runs the last good image again.
#[tokio::test]
async fn an_automatic_rollback_replaces_as_rollback_config_says() {
    let Some(b) = engine().await else { return };
    let name = project_name("batch-rollback");
    let _cleanup = Cleanup::new(&[&name]);
    // The Compose file's deploy keys, the same in both commits (the
    // rollback applies the last good commit's definition).
    let deploy = "      update_config: { parallelism: 1, failure_action: rollback, order: start-first, monitor: 1s }\n      rollback_config: { parallelism: 0, order: stop-first }\n";
    let cli = Cli::new(&name, &token_stack(&name, BUSYBOX, false, deploy));
    let first = cli.run(&["reconcile"]);
    assert!(first.status.success(), "{first:?}");
    cli.commit(&token_stack(&name, BUSYBOX_2, true, deploy), "v2");
    let failed = cli.run(&["reconcile"]);
    assert!(!failed.status.success(), "{failed:?}");

    let v1_id = image_id(&b, BUSYBOX).await;
    let now = web_replicas(&b, &name).await;
    assert_eq!(now.len(), 4, "{now:?}");
    assert!(now.iter().all(|r| r.2 == v1_id), "{now:?}");
    let doc = cli.history();
    let runs: Vec<(&str, &str, &str)> = doc["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["diff"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let [
        (rb_kind, rb_outcome, rb_plan),
        (up_kind, up_outcome, up_plan),
        _,
    ] = runs[..]
    else {
        panic!("{doc:#}")
    };
    assert_eq!((rb_kind, rb_outcome), ("rollback", "healthy"), "{doc:#}");
    assert_eq!((up_kind, up_outcome), ("deploy", "failed"), "{doc:#}");
    assert!(
        up_plan.contains("start-first, 1 at a time (asked for by `deploy.update_config.order`)"),
        "{up_plan}"
    );
    assert!(
        rb_plan.contains("stop-first, all at once (asked for by `deploy.rollback_config.order`)"),
        "{rb_plan}"
    );
    let error = doc["reconciles"][1]["error"].as_str().unwrap();
    assert!(error.contains("(1 of 4 replicas)"), "{error}");
}
