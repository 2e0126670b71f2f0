//! Prometheus rules: the rule check against Prometheus's own fixtures
//! (`corpus/rules/EXPECTED.tsv`) under 2.x and 3.x semantics, and the
//! rules backend against a real Prometheus.

use driftless::check::rules::{self, Options};

use crate::support::corpus;

/// What a file must do under one Prometheus version.
#[derive(Debug, PartialEq)]
enum Want {
    Accept,
    AcceptWithWarning,
    Reject(String),
}

/// The verdict of one EXPECTED.tsv row under `version`, as issue 8 maps it.
fn want(file: &str, class: &str, note: &str, version: u8) -> Want {
    let utf8_file = matches!(
        file,
        "prometheus-rulefmt/utf-8_lname.good.yaml"
            | "prometheus-rulefmt/utf-8_annotation.good.yaml"
    );
    // Where the note is prose, the substring that carries its meaning.
    let substring = match file {
        "prometheus-rulefmt/bad_field.bad.yaml" => "unknown field `annotation`".to_owned(),
        "promtool/rules-bad.yml" => "undefined variable \"$label\"".to_owned(),
        "promtool/bad-rules-syntax.yml" => "could not parse expression: parse error".to_owned(),
        "promtool/rules_extrafields.yml" => "unknown field `namespace`".to_owned(),
        "promtool/features.yml" => "could not parse expression".to_owned(),
        _ => note.to_owned(),
    };
    match class {
        "valid" if utf8_file && version == 2 => Want::Reject(
            if file.contains("lname") {
                "invalid label name: ins-tance"
            } else {
                "invalid annotation name: ins-tance"
            }
            .to_owned(),
        ),
        "valid" | "valid syntax; runtime error" => Want::Accept,
        "invalid (LegacyValidation only)" if version == 3 => Want::Accept,
        "invalid"
        | "invalid (LegacyValidation only)"
        | "invalid unless --ignore-unknown-fields"
        | "needs feature flags" => Want::Reject(substring),
        "valid but lint warning" | "lint-fatal" => Want::AcceptWithWarning,
        other => panic!("unknown class `{other}` for {file}"),
    }
}

fn verdict(file: &str, text: &str, options: &Options) -> Result<usize, String> {
    match rules::load(file, text, options) {
        Ok((_, warnings)) => Ok(warnings.len()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn corpus_rules_match_expected_under_prometheus_2_and_3() {
    let dir = corpus().join("rules");
    let table = std::fs::read_to_string(dir.join("EXPECTED.tsv")).unwrap();
    let mut rows = 0;
    let mut failures = Vec::new();
    for line in table.lines().skip_while(|l| l.starts_with('#')).skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, class, note) = (cols[0], cols[1], cols.get(2).copied().unwrap_or(""));
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        rows += 1;
        for version in [2u8, 3] {
            let expected = want(file, class, note, version);
            let got = verdict(file, &text, &Options::version(version));
            let ok = match (&expected, &got) {
                (Want::Accept, Ok(_)) => true,
                (Want::AcceptWithWarning, Ok(n)) => *n > 0,
                (Want::Reject(s), Err(e)) => e.contains(s.as_str()),
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{file} (v{version}): want {expected:?}, got {got:?}"
                ));
            }
        }
    }
    assert_eq!(rows, 26, "EXPECTED.tsv rows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lint_fatal_rejects_the_lint_rows() {
    let dir = corpus().join("rules");
    let fatal = Options {
        lint_fatal: true,
        ..Options::version(2)
    };
    for file in [
        "promtool/prometheus-rules.lint.yml",
        "promtool/rules_duplicates.yml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let e = verdict(file, &text, &fatal).unwrap_err();
        assert!(e.contains("duplicate rule"), "{file}: {e}");
    }
}

#[test]
fn awesome_prometheus_alerts_pass_under_both_versions() {
    let dir = corpus().join("rules");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.starts_with("awesome-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for version in [2u8, 3] {
            if let Err(e) = verdict(&name, &text, &Options::version(version)) {
                panic!("{name} (v{version}): {e}");
            }
        }
        n += 1;
    }
    assert!(n >= 10, "{n} files");
}

// ---------------------------------------------------------------------------
// The rules backend against a real Prometheus (Debian's `prometheus`).

pub(crate) mod live {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use driftless::backend::rules::{self as backend, RulesBackend};
    use driftless::backend::{Backend, Context, Health};
    use driftless::check::rules::{self, Options};
    use driftless::manifest::{Allow, PrometheusTarget, Target, TargetKind};
    use driftless::model::{Resources, RuleFile, TargetState};
    use driftless::plan::{Action, Change};
    use driftless::secrets::Masker;

    use crate::support::{corpus, example_repo};

    const PROMETHEUS: &str = "/usr/bin/prometheus";

    /// A Prometheus on a free loopback port, its rule_files glob pointing
    /// into a temporary directory; killed (by its process handle) on drop.
    pub(crate) struct Prometheus {
        child: Child,
        dir: tempfile::TempDir,
        pub(crate) url: String,
    }

    impl Prometheus {
        fn start() -> Prometheus {
            Prometheus::start_with("")
        }

        /// A Prometheus whose configuration file ends with `extra` (a
        /// `scrape_configs:` section, say).
        pub(crate) fn start_with(extra: &str) -> Prometheus {
            assert!(
                Path::new(PROMETHEUS).exists(),
                "{PROMETHEUS} is needed for the rules backend tests (apt-get install prometheus)"
            );
            let dir = tempfile::tempdir().unwrap();
            let rules = dir.path().join("rules");
            std::fs::create_dir(&rules).unwrap();
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  evaluation_interval: 1s\nrule_files:\n  - {0}/*.yml\n  - {0}/*.yaml\n{extra}",
                    rules.display()
                ),
            )
            .unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-lifecycle")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            let prom = Prometheus {
                child,
                dir,
                url: format!("http://127.0.0.1:{port}"),
            };
            prom.wait_ready();
            prom
        }

        fn wait_ready(&self) {
            let deadline = Instant::now() + Duration::from_secs(60);
            let addr = self.url.trim_start_matches("http://").to_owned();
            while Instant::now() < deadline {
                if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                    use std::io::{Read, Write};
                    let _ = s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n");
                    let mut answer = String::new();
                    let _ = s.read_to_string(&mut answer);
                    if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            panic!("prometheus not ready: {}", self.log());
        }

        fn rules_dir(&self) -> PathBuf {
            self.dir.path().join("rules")
        }

        pub(crate) fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
        }

        fn target(&self) -> TargetState {
            TargetState {
                target: Target {
                    name: "prom".into(),
                    owner: None,
                    kind: TargetKind::Prometheus(PrometheusTarget {
                        rules_dir: self.rules_dir().display().to_string(),
                        container: None,
                        docker_target: None,
                        url: self.url.clone(),
                        version: 2,
                        lint_fatal: false,
                        enable_features: Vec::new(),
                        docker: None,
                    }),
                },
                resources: Resources::Rules(Vec::new()),
            }
        }
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn with_files(mut t: TargetState, files: Vec<RuleFile>) -> TargetState {
        t.resources = Resources::Rules(files);
        t
    }

    fn example_rule(name: &str) -> RuleFile {
        let path = example_repo().join("rules").join(name);
        let text = std::fs::read_to_string(path).unwrap();
        rules::load(&format!("rules/{name}"), &text, &Options::version(2))
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    async fn connect(t: &TargetState) -> RulesBackend {
        let TargetKind::Prometheus(p) = &t.target.kind else {
            unreachable!()
        };
        RulesBackend::connect(&t.target.name, p).await.unwrap()
    }

    async fn plan(b: &RulesBackend, t: &TargetState, ctx: Context<'_>) -> Vec<Change> {
        let live = b.read_live(t, ctx).await.unwrap();
        b.plan(t, &live, ctx).await.unwrap()
    }

    fn actions(changes: &[Change]) -> Vec<(String, Action)> {
        changes
            .iter()
            .map(|c| (c.resource.name.clone(), c.action.clone()))
            .collect()
    }

    /// Polls health until every file is healthy (the example's records
    /// group evaluates every 30 s, so this can take that long).
    async fn wait_healthy(b: &RulesBackend, t: &TargetState, ctx: Context<'_>, prom: &Prometheus) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let verdicts = b.health(t, ctx).await.unwrap();
            if verdicts.iter().all(|v| v.health == Health::Healthy) {
                return;
            }
            assert!(
                verdicts.iter().all(|v| v.health != Health::Degraded),
                "{verdicts:?}"
            );
            if Instant::now() > deadline {
                panic!("not healthy: {verdicts:?}\n{}", prom.log());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn loaded_group_names(b: &RulesBackend) -> Vec<String> {
        let mut names: Vec<String> = b
            .loaded_groups()
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.name)
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn apply_change_remove_and_a_rejected_file_is_rolled_back() {
        let prom = Prometheus::start();
        let (masker, allow) = (Masker::default(), Allow::default());
        let ctx = Context {
            environment: "dev",
            masker: &masker,
            allow: &allow,
            owner: driftless::backend::Owner::new("dev@test"),
            progress: None,
        };
        // A file someone put there by hand: never touched.
        let theirs = prom.rules_dir().join("hand-made.yml");
        std::fs::write(&theirs, "groups: []\n").unwrap();

        // 1. The example's rules: two files created, loaded, evaluating.
        let alerts = example_rule("aiops-alerts.yml");
        let records = example_rule("aiops-records.yml");
        let t1 = with_files(prom.target(), vec![alerts.clone(), records.clone()]);
        let b = connect(&t1).await;
        let p1 = plan(&b, &t1, ctx).await;
        assert_eq!(
            actions(&p1),
            vec![
                ("aiops-alerts.yml".into(), Action::Create),
                ("aiops-records.yml".into(), Action::Create)
            ]
        );
        let report = b.apply(&t1, &p1, ctx).await.unwrap();
        assert_eq!(report.applied.len(), 2);
        let on_disk = std::fs::read_to_string(prom.rules_dir().join("aiops-alerts.yml")).unwrap();
        assert_eq!(
            backend::parse_header(&on_disk),
            Some(("dev", alerts.content.as_str()))
        );
        wait_healthy(&b, &t1, ctx, &prom).await;
        assert_eq!(
            loaded_group_names(&b).await,
            vec!["aiops.records", "aiops.rules"]
        );
        // Nothing left to do.
        let again = plan(&b, &t1, ctx).await;
        assert!(
            again.iter().all(|c| c.action == Action::Unchanged),
            "{again:?}"
        );

        // 2. Change one, remove the other.
        let mut changed = alerts.clone();
        changed.content = alerts.content.replace("for: 5m", "for: 10m");
        assert_ne!(changed.content, alerts.content);
        let t2 = with_files(prom.target(), vec![changed.clone()]);
        let p2 = plan(&b, &t2, ctx).await;
        assert_eq!(
            actions(&p2),
            vec![
                ("aiops-alerts.yml".into(), Action::Update),
                ("aiops-records.yml".into(), Action::Delete)
            ]
        );
        let diff = p2[0].diff.as_deref().unwrap();
        assert!(diff.contains("-    for: 5m\n+    for: 10m"), "{diff}");
        b.apply(&t2, &p2, ctx).await.unwrap();
        assert!(!prom.rules_dir().join("aiops-records.yml").exists());
        assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "groups: []\n");
        assert_eq!(loaded_group_names(&b).await, vec!["aiops.rules"]);
        let for_10m = b.loaded_groups().await.unwrap();
        assert!(format!("{for_10m:?}").contains("aiops.rules"));
        wait_healthy(&b, &t2, ctx, &prom).await;

        // 3. A file this Prometheus (2.42) rejects but a 3.x check lets
        //    through: the target claims version 3. Apply fails with
        //    Prometheus's error; the previous files are back and loaded.
        let utf8 = std::fs::read_to_string(
            corpus().join("rules/prometheus-rulefmt/utf-8_lname.good.yaml"),
        )
        .unwrap();
        let (bad, _) = rules::load("rules/utf8.yml", &utf8, &Options::version(3)).unwrap();
        let mut broken_change = changed.clone();
        broken_change.content = changed.content.replace("for: 10m", "for: 15m");
        let t3 = with_files(prom.target(), vec![broken_change, bad]);
        let p3 = plan(&b, &t3, ctx).await;
        assert_eq!(
            actions(&p3),
            vec![
                ("aiops-alerts.yml".into(), Action::Update),
                ("utf8.yml".into(), Action::Create)
            ]
        );
        let err = b.apply(&t3, &p3, ctx).await.unwrap_err().to_string();
        assert!(err.contains("previous files were restored"), "{err}");
        // Prometheus 2.42 answers a failed reload with this (the file and
        // the reason go to its log).
        assert!(
            err.contains("500") && err.contains("failed to reload config"),
            "Prometheus's error is reported: {err}"
        );
        assert!(prom.log().contains("invalid label name"), "{}", prom.log());
        assert!(!prom.rules_dir().join("utf8.yml").exists());
        let on_disk = std::fs::read_to_string(prom.rules_dir().join("aiops-alerts.yml")).unwrap();
        assert_eq!(
            backend::parse_header(&on_disk),
            Some(("dev", changed.content.as_str()))
        );
        assert_eq!(loaded_group_names(&b).await, vec!["aiops.rules"]);
        // Live is as before: the last good state plans as unchanged.
        let after = plan(&b, &t2, ctx).await;
        assert!(
            after.iter().all(|c| c.action == Action::Unchanged),
            "{after:?}"
        );
        wait_healthy(&b, &t2, ctx, &prom).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reload_that_cannot_reach_prometheus_leaves_no_files_behind() {
        // No Prometheus at all on the URL: the reload error names it and the
        // files are put back as they were (none).
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut t = TargetState {
            target: Target {
                name: "prom".into(),
                owner: None,
                kind: TargetKind::Prometheus(PrometheusTarget {
                    rules_dir: dir.path().display().to_string(),
                    container: None,
                    docker_target: None,
                    url: format!("http://127.0.0.1:{port}"),
                    version: 2,
                    lint_fatal: false,
                    enable_features: Vec::new(),
                    docker: None,
                }),
            },
            resources: Resources::Rules(vec![example_rule("aiops-records.yml")]),
        };
        let (masker, allow) = (Masker::default(), Allow::default());
        let ctx = Context {
            environment: "dev",
            masker: &masker,
            allow: &allow,
            owner: driftless::backend::Owner::new("dev@test"),
            progress: None,
        };
        let b = connect(&t).await;
        let p = plan(&b, &t, ctx).await;
        let err = b.apply(&t, &p, ctx).await.unwrap_err().to_string();
        assert!(err.contains("/-/reload"), "{err}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "files left behind"
        );
        t.resources = Resources::Rules(Vec::new());
        assert!(b.health(&t, ctx).await.is_err());
    }

    /// The rules directory inside a container (bind-mounted from the
    /// directory the host Prometheus loads), written through the Docker API.
    #[tokio::test(flavor = "multi_thread")]
    async fn rules_inside_a_container_through_the_docker_api() {
        use crate::docker_support::{Cleanup, engine, local_target, project_name};
        let Some(compose) = engine().await else {
            return;
        };
        let docker = compose.docker().clone();
        let prom = Prometheus::start();
        let project = project_name("rules");
        let _cleanup = Cleanup::new(&[&project]);
        let name = format!("{project}-prometheus-1");
        let body = bollard::models::ContainerCreateBody {
            image: Some(crate::docker_support::BUSYBOX.to_owned()),
            cmd: Some(vec!["sleep".to_owned(), "3600".to_owned()]),
            labels: Some(std::collections::HashMap::from([(
                driftless::backend::compose::labels::PROJECT.to_owned(),
                project.clone(),
            )])),
            host_config: Some(bollard::models::HostConfig {
                binds: Some(vec![format!(
                    "{}:/etc/prometheus/rules",
                    prom.rules_dir().display()
                )]),
                ..Default::default()
            }),
            ..Default::default()
        };
        docker
            .create_container(
                Some(
                    bollard::query_parameters::CreateContainerOptionsBuilder::default()
                        .name(&name)
                        .build(),
                ),
                body,
            )
            .await
            .unwrap();
        docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .unwrap();

        let mut target = prom.target();
        if let TargetKind::Prometheus(p) = &mut target.target.kind {
            p.rules_dir = "/etc/prometheus/rules".into();
            p.container = Some(name.clone());
            p.docker = Some(local_target());
        }
        let (masker, allow) = (Masker::default(), Allow::default());
        let ctx = Context {
            environment: "dev",
            masker: &masker,
            allow: &allow,
            owner: driftless::backend::Owner::new("dev@test"),
            progress: None,
        };
        let t1 = with_files(
            target.clone(),
            vec![
                example_rule("aiops-alerts.yml"),
                example_rule("aiops-records.yml"),
            ],
        );
        let b = connect(&t1).await;
        let p1 = plan(&b, &t1, ctx).await;
        assert_eq!(p1.len(), 2);
        assert!(p1.iter().all(|c| c.action == Action::Create), "{p1:?}");
        b.apply(&t1, &p1, ctx).await.unwrap();
        assert!(prom.rules_dir().join("aiops-records.yml").exists());
        assert_eq!(
            loaded_group_names(&b).await,
            vec!["aiops.records", "aiops.rules"]
        );
        // Read back through the container: nothing to do.
        let again = plan(&b, &t1, ctx).await;
        assert!(
            again.iter().all(|c| c.action == Action::Unchanged),
            "{again:?}"
        );

        // Remove one: deleted inside the container (exec rm), unloaded.
        let t2 = with_files(target, vec![example_rule("aiops-alerts.yml")]);
        let p2 = plan(&b, &t2, ctx).await;
        assert_eq!(
            actions(&p2),
            vec![
                ("aiops-alerts.yml".into(), Action::Unchanged),
                ("aiops-records.yml".into(), Action::Delete)
            ]
        );
        b.apply(&t2, &p2, ctx).await.unwrap();
        assert!(!prom.rules_dir().join("aiops-records.yml").exists());
        assert_eq!(loaded_group_names(&b).await, vec!["aiops.rules"]);
    }
}
