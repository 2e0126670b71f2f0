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
    // The CLI records each reconcile: in a state directory of the test's
    // own, never the user's default one.
    let state = tempfile::tempdir().unwrap();

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
            .arg("--state-dir")
            .arg(state.path())
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

/// A password holding every character an encoding treats differently, and a
/// canary to find pieces of it.
const HOSTILE: &str = "Pw/7~k&<'\"Qz+9=LEAKME";

/// What a template can do to a secret: each construct as a Compose
/// environment variable (most through `tojson`, so YAML reads them back).
const CONSTRUCTS: &[(&str, &str)] = &[
    ("RAW", "s | tojson"),
    ("UPPER", "s | upper | tojson"),
    ("LOWER", "s | lower | tojson"),
    ("TITLE", "s | title | tojson"),
    ("CAPITALIZE", "s | capitalize | tojson"),
    ("REPLACE", "s | replace('/', '_') | tojson"),
    ("TRIM", "(' ' ~ s ~ ' ') | trim | tojson"),
    ("REVERSE", "s | reverse | tojson"),
    ("TOJSON", "s | tojson | tojson"),
    ("ESCAPE", "s | escape | string | tojson"),
    ("FORMAT", "'%s!' | format(s) | tojson"),
    ("SLICE", "s[2:-2] | tojson"),
    ("CONCAT", "('pre-' ~ s ~ '-post') | tojson"),
    ("JOIN", "s | list | join('.') | tojson"),
    ("B64", "s | b64encode | tojson"),
    ("SHA256", "s | sha256 | tojson"),
    ("MACRO", "wrap(s) | tojson"),
    ("PY_UPPER", "s.upper() | tojson"),
    ("PY_REPLACE", "s.replace('&', 'and') | tojson"),
    ("PY_FORMAT", "'{}:{}'.format('u', s) | tojson"),
];

/// A secret passed through filters, methods, slices, concatenation and a
/// macro is masked in every output: `render`, a dry-run's plan diff, the
/// `io.driftless.definition` label, the state store, the status page,
/// `/metrics`, the API and a config backup — each checked for the clear
/// text as deployed, HTML-escaped and JSON-escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_through_any_template_construct_is_masked_in_every_output() {
    use crate::daemon_support::{Bare, Daemon, Options, cli};
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    let project = project_name("secret-derived");
    let env = format!("e{}", project.trim_start_matches("dlt-").replace('_', "-"));
    let _cleanup = Cleanup::new(&[&project]);
    let manifest = format!(
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n"
    );
    let stack = |extra: &str| {
        let mut s = format!(
            "{{% macro wrap(v) %}}<{{{{ v | upper | urlencode }}}}>{{% endmacro %}}{{% set s = secret('db_pw') %}}name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    environment:\n      URL: postgres://app:{{{{ s | urlencode }}}}@db/app\n"
        );
        for (name, expr) in CONSTRUCTS {
            s.push_str(&format!("      {name}: {{{{ {expr} }}}}\n"));
        }
        s.push_str(extra);
        s
    };
    // A config backup: the rendered files, uncompressed so a leak is
    // readable in what the destination holds.
    let backups = tempfile::tempdir().unwrap();
    let backup_job = format!(
        "jobs:\n  - name: config\n    schedule: \"@daily\"\n    source: {{ config: {{}} }}\n    compression: none\n    destination: {{ local: {} }}\n",
        backups.path().display()
    );
    let files = |extra: &str| {
        vec![
            ("driftless.yaml", manifest.clone()),
            ("environments/values.yaml", "{}\n".to_owned()),
            ("compose/stack.yaml.j2", stack(extra)),
            ("backups/config.yaml", backup_job.clone()),
        ]
    };
    let bare = Bare::new(&files(""));
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("db_pw"), HOSTILE).unwrap();
    let state = tempfile::tempdir().unwrap();
    let repo = bare.path().to_str().unwrap().to_owned();
    let secrets_arg = secrets.path().to_str().unwrap().to_owned();
    let state_arg = state.path().to_str().unwrap().to_owned();
    let mut outputs: Vec<(String, String)> = Vec::new();

    let repo_args = [
        "--repo",
        &repo,
        "--rev",
        "main",
        "--secrets-dir",
        &secrets_arg,
    ];
    let mut render = vec!["render", "--env", &env];
    render.extend(repo_args);
    let (code, out, err) = cli(&render);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("URL: postgres://app:******@db/app"), "{out}");
    outputs.push(("render".into(), out + &err));
    let mut dry = vec![
        "reconcile",
        "--env",
        &env,
        "--dry-run",
        "--state-dir",
        &state_arg,
    ];
    dry.extend(repo_args);
    let (code, out, err) = cli(&dry);
    assert_eq!(code, 0, "{err}");
    outputs.push(("dry-run before the deploy".into(), out + &err));

    let mut d = Daemon::start(&Options {
        repo: bare.path(),
        env: env.clone(),
        state_dir: state.path().to_owned(),
        secrets_dir: secrets.path().to_owned(),
        poll: "1h",
        watch: false,
        extra: String::new(),
        vars: vec![],
    });
    d.ready().await;
    let status = d
        .wait(
            &env,
            "the deploy",
            std::time::Duration::from_secs(120),
            |s| s["last_good"]["commit"].is_string(),
        )
        .await;

    // What the container really got: the clear text of every construct.
    let filter = std::collections::HashMap::from([(
        "label",
        vec![format!("com.docker.compose.project={project}")],
    )]);
    let list = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let inspect = docker
        .inspect_container(
            list[0].id.as_deref().unwrap(),
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let config = inspect.config.unwrap();
    let clear: Vec<(String, String)> = config
        .env
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "URL" || CONSTRUCTS.iter().any(|(n, _)| n == k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(clear.len(), CONSTRUCTS.len() + 1, "{clear:?}");
    assert!(
        clear.contains(&(
            "URL".into(),
            "postgres://app:Pw/7%7Ek%26%3C%27%22Qz%2B9%3DLEAKME@db/app".into()
        )),
        "{clear:?}"
    );
    let labels = config.labels.unwrap_or_default();
    assert!(labels.contains_key("io.driftless.definition"), "{labels:?}");
    outputs.push(("labels".into(), format!("{labels:?}")));

    let page = d.client().get(d.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    outputs.push(("status page".into(), page.text().await.unwrap()));
    let metrics = d.client().get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    outputs.push(("/metrics".into(), metrics.text().await.unwrap()));
    let reconcile_id = status["last_reconcile"]["id"].as_i64().unwrap();
    for path in [
        "/api/v1/history".to_owned(),
        format!("/api/v1/environments/{env}"),
        format!("/api/v1/reconciles/{reconcile_id}"),
    ] {
        let r = d
            .client()
            .get(d.url(&path))
            .bearer_auth(crate::daemon_support::API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        outputs.push((path, r.text().await.unwrap()));
    }

    // A new commit changes the definition: the dry-run diffs the label's
    // masked definition against the new one.
    bare.commit(
        &files("      NEW: {{ (s | lower ~ '-new') | tojson }}\n"),
        "v2",
    );
    let (code, out, err) = cli(&dry);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("+      NEW") || out.contains("NEW"), "{out}");
    outputs.push(("dry-run of a change".into(), out + &err));

    d.signal("TERM");
    assert_eq!(
        d.wait_exit(std::time::Duration::from_secs(60)).await,
        Some(0)
    );
    outputs.push(("daemon log".into(), d.log_text()));
    let mut run = vec![
        "backup",
        "run",
        "config",
        "--env",
        &env,
        "--state-dir",
        &state_arg,
    ];
    run.extend(repo_args);
    let (code, out, err) = cli(&run);
    assert_eq!(code, 0, "{err}");
    outputs.push(("backup run".into(), out + &err));
    let mut stored = 0;
    let mut dirs = vec![backups.path().to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().is_dir() {
                dirs.push(entry.path());
            } else {
                let bytes = std::fs::read(entry.path()).unwrap();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                stored += usize::from(text.contains("postgres://app:******@db/app"));
                outputs.push((entry.path().display().to_string(), text));
            }
        }
    }
    // The backup holds the rendered stack, masked.
    assert_eq!(stored, 1, "no masked stack in the config backup");
    for entry in std::fs::read_dir(state.path()).unwrap().flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            outputs.push((
                entry.path().display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }

    let html = |v: &str| {
        v.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#x27;")
            .replace('/', "&#x2f;")
    };
    let json = |v: &str| {
        let j = serde_json::to_string(v).unwrap();
        j[1..j.len() - 1].to_owned()
    };
    for (what, text) in &outputs {
        assert!(
            !text.contains("LEAKME") && !text.contains("leakme"),
            "{what}: {text}"
        );
        for (name, value) in &clear {
            for form in [value.clone(), html(value), json(value)] {
                assert!(!text.contains(&form), "{name} ({form}) in {what}:\n{text}");
            }
        }
    }
}
