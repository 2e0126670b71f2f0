//! `driftless validate` and `render` on broken repos: every kind of bad
//! input is a clear error naming the environment, the file and the line,
//! exit code 1, and never a panic.

use crate::support::{RepoBuilder, Run};

const STACK_HEAD: &str = "services:\n  web:\n    image: busybox:1.36\n";

fn assert_clear_error(run: &Run, needles: &[&str]) {
    assert_eq!(
        run.code, 1,
        "exit code\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "panic:\n{}", run.stderr);
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "stderr lacks {n:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn valid_minimal_repo_passes() {
    let repo = RepoBuilder::minimal().file("compose/stack.yaml", STACK_HEAD);
    let run = repo.driftless(&["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("dev: ok"), "{run:?}");
    assert!(run.stdout.contains("1 services"), "{run:?}");
}

#[test]
fn a_bare_repo_without_rev_is_read_at_its_head() {
    let repo = RepoBuilder::minimal().file("compose/stack.yaml", STACK_HEAD);
    crate::support::git(repo.path(), &["init", "-q"]);
    crate::support::git(repo.path(), &["add", "-A"]);
    crate::support::git(repo.path(), &["commit", "-q", "-m", "one service"]);
    let bare = tempfile::tempdir().unwrap();
    let bare_path = bare.path().join("desired.git");
    let from = repo.path().to_str().unwrap();
    crate::support::git(bare.path(), &["clone", "-q", "--bare", from, "desired.git"]);
    // A later edit of the work tree is not in the bare repo.
    let repo = repo.file("compose/stack.yaml", "services: [\n");
    assert_eq!(repo.driftless(&["validate"]).code, 1);
    let run = crate::support::driftless(&bare_path, &["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("dev: ok"), "{run:?}");
    assert!(run.stdout.contains("1 services"), "{run:?}");
}

#[test]
fn template_syntax_error() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml.j2",
        "services:\n  web:\n    image: {{ image \n",
    );
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["error[dev]", "compose/stack.yaml.j2:3"],
    );
}

#[test]
fn undefined_variable() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml.j2",
        "services:\n  web:\n    image: busybox:{{ tag }}\n",
    );
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["error[dev]", "compose/stack.yaml.j2:3", "tag"],
    );
}

#[test]
fn include_escaping_the_repo() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml.j2",
        "services:\n  web:\n    image: busybox:1\n{% include \"../../etc/passwd\" %}\n",
    );
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["error[dev]", "compose/stack.yaml.j2:4", "repository"],
    );
}

#[test]
fn symlink_escaping_the_repo() {
    let repo = RepoBuilder::minimal()
        .file("compose/stack.yaml", STACK_HEAD)
        .symlink("compose/secret.yaml", "/etc/passwd");
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["compose/secret.yaml", "outside"],
    );
}

#[test]
fn invalid_yaml() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml",
        "services:\n  web:\n    image: [busybox\n    ports: 1\n",
    );
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["error[dev]", "compose/stack.yaml:"],
    );
}

#[test]
fn billion_laughs_alias_bomb() {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let text = format!(
        "x-bomb:\n  {}\nservices:\n  web:\n    image: busybox:1\n",
        bomb.trim_end().replace('\n', "\n  ")
    );
    let repo = RepoBuilder::minimal().file("compose/stack.yaml", text);
    // `&e` (66,430 nodes) is the anchor whose copies cross the budget; the
    // error is at its line and says how to raise the limit.
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &[
            "error[dev]: compose/stack.yaml:6:",
            "anchor `&e`",
            "limits.yaml_alias_expansion",
        ],
    );
}

#[test]
fn the_alias_budget_is_raised_in_driftless_yaml() {
    // 300 copies of a 1,001-node anchor: 300,300 nodes, over the default.
    let mut stack = format!(
        "x-big: &big [{}]\nservices:\n  web:\n    image: busybox:1\nx-copies:\n",
        vec!["x"; 1000].join(", ")
    );
    for _ in 0..300 {
        stack.push_str("  - *big\n");
    }
    let manifest = |limits: &str| {
        format!(
            "apiVersion: driftless/v1\n{limits}targets:\n  local:\n    docker: {{}}\nenvironments:\n  dev:\n    targets: [local]\n"
        )
    };
    let refused = RepoBuilder::minimal().file("compose/stack.yaml", &stack);
    assert_clear_error(
        &refused.driftless(&["validate"]),
        &[
            "compose/stack.yaml:1:",
            "anchor `&big`",
            "limits.yaml_alias_expansion",
        ],
    );
    let raised = RepoBuilder::minimal()
        .file("compose/stack.yaml", &stack)
        .file(
            "driftless.yaml",
            manifest("limits:\n  yaml_alias_expansion: 400000\n"),
        );
    let run = raised.driftless(&["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    let absurd = RepoBuilder::minimal().file(
        "driftless.yaml",
        manifest("limits:\n  yaml_alias_expansion: 0\n"),
    );
    assert_clear_error(
        &absurd.driftless(&["validate"]),
        &["driftless.yaml:3", "limits.yaml_alias_expansion"],
    );
}

#[test]
fn ten_thousand_deep_nesting() {
    let text = format!(
        "services:\n  web:\n    image: busybox:1\n    labels: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let repo = RepoBuilder::minimal().file("compose/stack.yaml", text);
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["error[dev]", "compose/stack.yaml"],
    );
}

#[test]
fn oversize_file() {
    let repo = RepoBuilder::minimal()
        .file("compose/stack.yaml", STACK_HEAD)
        .file("compose/big.bin", vec![b'x'; 2048]);
    let run = repo.driftless(&["validate", "--max-file-bytes", "1024"]);
    assert_clear_error(&run, &["compose/big.bin", "1024"]);
}

#[test]
fn unknown_manifest_key() {
    let repo = RepoBuilder::new()
        .file(
            "driftless.yaml",
            "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n    replica: 2\n",
        )
        .file("environments/dev.yaml", "{}\n");
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["driftless.yaml:8", "replica"],
    );
}

#[test]
fn unsupported_compose_key() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml",
        format!("{STACK_HEAD}    credential_spec: {{file: spec.json}}\n"),
    );
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &[
            "error[dev]",
            "compose/stack.yaml:4",
            "credential_spec",
            "Windows",
        ],
    );
}

#[test]
fn build_without_a_dockerfile_names_the_missing_file() {
    let repo =
        RepoBuilder::minimal().file("compose/stack.yaml", "services:\n  web:\n    build: .\n");
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &[
            "error[dev]",
            "compose/stack.yaml:3",
            "Dockerfile `compose/Dockerfile` is not in the repository",
        ],
    );
}

#[test]
fn duplicate_service_names() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml",
        format!("{STACK_HEAD}  web:\n    image: busybox:2\n"),
    );
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["error[dev]", "compose/stack.yaml:4", "web"],
    );
}

#[test]
fn extends_cycle() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml",
        "services:\n  a:\n    image: busybox:1\n    extends: b\n  b:\n    image: busybox:1\n    extends: a\n",
    );
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["error[dev]", "compose/stack.yaml", "cycle"],
    );
}

#[test]
fn all_errors_are_listed_not_only_the_first() {
    let repo = RepoBuilder::minimal()
        .file("compose/a.yaml", "services:\n  web:\n    build: .\n")
        .file(
            "compose/b.yaml",
            "services:\n  db:\n    image: postgres:16\n    credential_spec: {file: spec.json}\n",
        );
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &["compose/a.yaml:3", "compose/b.yaml:4"],
    );
}

#[test]
fn unknown_environment_lists_the_known_ones() {
    let repo = RepoBuilder::minimal().file("compose/stack.yaml", STACK_HEAD);
    assert_clear_error(
        &repo.driftless(&["validate", "--env", "prod"]),
        &["no environment `prod`", "dev"],
    );
}

#[test]
fn render_masks_secrets_and_lists_missing_ones() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml.j2",
        "services:\n  web:\n    image: busybox:1\n    environment:\n      A: \"{{ secret('api_token') }}\"\n      B: \"{{ secret('db_password') }}\"\n",
    );
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("api_token"), "tok-SUPERSECRET-123\n").unwrap();
    let run = repo.driftless(&[
        "render",
        "--env",
        "dev",
        "--secrets-dir",
        secrets.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("SUPERSECRET"), "{}", run.stdout);
    assert!(run.stdout.contains("A: \"******\""), "{}", run.stdout);
    assert!(
        run.stdout.contains("<secret:db_password>"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("db_password"), "{}", run.stderr);
}

#[test]
fn read_only_service_with_a_config_file_is_caught_at_validate() {
    let repo = RepoBuilder::minimal()
        .file(
            "compose/stack.yaml",
            "services:\n  web:\n    image: busybox:1\n    read_only: true\n    volumes:\n      - ./web.conf:/etc/web.conf:ro\n",
        )
        .file("compose/web.conf", "listen 80\n");
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &[
            "error[dev]",
            "compose/stack.yaml",
            "services.web",
            "read_only",
        ],
    );
}

#[test]
fn static_address_outside_its_subnet() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml",
        "services:\n  web:\n    image: busybox:1.36\n    networks:\n      back:\n        ipv4_address: 10.9.0.5\nnetworks:\n  back:\n    ipam:\n      config:\n        - subnet: 172.28.0.0/16\n",
    );
    assert_clear_error(
        &repo.driftless(&["validate"]),
        &[
            "error[dev]",
            "compose/stack.yaml:6",
            "static address `10.9.0.5` is outside the subnet of network `back` (172.28.0.0/16)",
        ],
    );
}
