//! `build:` from the user's side: both forms, the context read from the
//! repo with `.dockerignore`, the image name Compose gives, and every
//! refusal located at its line.

use super::tests::{Repo, single_error};
use crate::model::compose::{Build, BuildContext};

const DOCKERFILE: &str = "FROM driftless-test/busybox:1\nCOPY . /app\nCMD [\"sh\"]\n";

fn build_of(repo: &Repo, service: &str) -> Build {
    let (p, _) = repo.ok("compose/stack.yaml");
    p.services[service].build.clone().expect("a build")
}

fn files(b: &Build) -> Vec<(&str, u32)> {
    match &b.context {
        BuildContext::Snapshot { files, .. } => {
            files.iter().map(|f| (f.path.as_str(), f.mode)).collect()
        }
        BuildContext::Remote { url } => panic!("remote {url}"),
    }
}

#[test]
fn the_short_form_builds_the_directory_and_names_the_image_after_the_project() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            "name: shop\nservices:\n  Web:\n    build: ./web\n",
        ),
        ("compose/web/Dockerfile", DOCKERFILE),
        ("compose/web/run.sh", "#!/bin/sh\necho hi\n"),
        ("compose/web/tool", "no interpreter line\n"),
        ("compose/web/lib.sh", "#!/bin/sh\n# sourced, never run\n"),
        ("compose/web/index.html", "hello\n"),
        ("compose/other.txt", "not in the context\n"),
    ])
    .executable("compose/web/run.sh")
    .executable("compose/web/tool");
    let (p, _) = repo.ok("compose/stack.yaml");
    let web = &p.services["Web"];
    assert_eq!(web.image, "shop-web", "`<project>-<service>`, lowercase");
    let b = web.build.as_ref().unwrap();
    assert_eq!(b.dockerfile, "Dockerfile");
    assert_eq!(
        files(b),
        [
            ("Dockerfile", 0o644),
            ("index.html", 0o644),
            ("lib.sh", 0o644),
            ("run.sh", 0o755),
            ("tool", 0o755),
        ],
        "modes as git records them, whatever the content"
    );
    let BuildContext::Snapshot { dir, .. } = &b.context else {
        unreachable!()
    };
    assert_eq!(dir, "compose/web");
}

/// A symlink goes as a link, as the docker CLI sends it: not the file it
/// names, not the files of the directory it names (which the snapshot
/// shows under its path); `.dockerignore` applies to its path.
#[test]
fn symlinks_in_a_context_are_sent_as_links() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            "name: shop\nservices:\n  web:\n    build: ./web\n",
        ),
        ("compose/web/Dockerfile", DOCKERFILE),
        ("compose/web/.dockerignore", "skipped\n"),
        ("compose/web/tool", "echo hi\n"),
        // The snapshot resolves links: `run` reads as `tool`, `current/`
        // holds the files of `releases/v2/`.
        ("compose/web/run", "echo hi\n"),
        ("compose/web/releases/v2/a.txt", "a\n"),
        ("compose/web/current/a.txt", "a\n"),
        ("compose/web/skipped", "echo hi\n"),
    ])
    .executable("compose/web/tool")
    .executable("compose/web/run")
    .link("compose/web/run", "tool")
    .link("compose/web/current", "releases/v2")
    .link("compose/web/skipped", "tool")
    .link("compose/other-link", "web");
    let b = build_of(&repo, "web");
    let BuildContext::Snapshot { files, .. } = &b.context else {
        unreachable!()
    };
    let got: Vec<(&str, u32, Option<&str>)> = files
        .iter()
        .map(|f| (f.path.as_str(), f.mode, f.link_target()))
        .collect();
    assert_eq!(
        got,
        [
            (".dockerignore", 0o644, None),
            ("Dockerfile", 0o644, None),
            ("current", 0o120777, Some("releases/v2")),
            ("releases/v2/a.txt", 0o644, None),
            ("run", 0o120777, Some("tool")),
            ("tool", 0o755, None),
        ]
    );
}

#[test]
fn the_long_form_takes_every_classic_build_option() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            r#"
services:
  api:
    image: registry.example/api:2
    build:
      context: .
      dockerfile: docker/api.Dockerfile
      args:
        VERSION: "2"
        FROM_VARS:
        NOT_SET:
      target: prod
      labels: [team=core]
      network: host
      extra_hosts: ["db:10.0.0.2", "cache=10.0.0.3"]
      tags: [registry.example/api:latest, registry.example/api:latest, api-local]
      shm_size: 64m
      cache_from: [registry.example/api:1]
      no_cache: true
      pull: true
"#,
        ),
        ("compose/docker/api.Dockerfile", DOCKERFILE),
        ("compose/main.py", "print('hi')\n"),
    ])
    .var("FROM_VARS", "yes");
    let (p, _) = repo.ok("compose/stack.yaml");
    assert_eq!(p.services["api"].image, "registry.example/api:2");
    let b = build_of(&repo, "api");
    assert_eq!(b.dockerfile, "docker/api.Dockerfile");
    assert_eq!(
        b.args,
        [
            ("FROM_VARS".to_owned(), "yes".to_owned()),
            ("VERSION".to_owned(), "2".to_owned())
        ]
        .into()
    );
    assert_eq!(b.target.as_deref(), Some("prod"));
    assert_eq!(b.labels["team"], "core");
    assert_eq!(b.network.as_deref(), Some("host"));
    assert_eq!(b.extra_hosts, ["db:10.0.0.2", "cache:10.0.0.3"]);
    assert_eq!(b.tags, ["registry.example/api:latest", "api-local"]);
    assert_eq!(b.shm_size, Some(64 * 1024 * 1024));
    assert_eq!(b.cache_from, ["registry.example/api:1"]);
    assert!(b.no_cache && b.pull);
    assert_eq!(
        files(&b),
        [
            ("docker/api.Dockerfile", 0o644),
            ("main.py", 0o644),
            ("stack.yaml", 0o644)
        ]
    );
}

#[test]
fn dockerignore_is_honoured_but_never_drops_the_dockerfile() {
    let repo = Repo::new(&[
        ("stack.yaml", "services:\n  app:\n    build: .\n"),
        ("Dockerfile", DOCKERFILE),
        (".dockerignore", "*\n!src\n"),
        ("src/main.c", "int main;\n"),
        ("README.md", "docs\n"),
        ("node_modules/x/index.js", "x\n"),
    ]);
    let (p, _) = repo.ok("stack.yaml");
    let names: Vec<&str> = files(p.services["app"].build.as_ref().unwrap())
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(names, [".dockerignore", "Dockerfile", "src/main.c"]);
}

#[test]
fn a_dockerfile_outside_the_context_or_inline_is_sent_under_a_generated_name() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            "services:\n  a:\n    build: {context: app, dockerfile: ../Dockerfile}\n  b:\n    build:\n      context: app\n      dockerfile_inline: |\n        FROM scratch\n        COPY x /x\n",
        ),
        ("compose/Dockerfile", DOCKERFILE),
        ("compose/app/x", "x\n"),
    ]);
    let a = build_of(&repo, "a");
    assert!(a.dockerfile.starts_with(".dockerfile."), "{}", a.dockerfile);
    assert_eq!(files(&a), [(a.dockerfile.as_str(), 0o644), ("x", 0o644)]);
    let b = build_of(&repo, "b");
    assert!(b.dockerfile.starts_with(".dockerfile."));
    assert_ne!(a.dockerfile, b.dockerfile, "named by content");
}

#[test]
fn a_git_url_context_is_left_to_the_engine() {
    let repo = Repo::new(&[(
        "compose/stack.yaml",
        "services:\n  a:\n    build: https://github.com/docker/rootfs.git#main:docker\n",
    )]);
    let b = build_of(&repo, "a");
    assert_eq!(
        b.context,
        BuildContext::Remote {
            url: "https://github.com/docker/rootfs.git#main:docker".into()
        }
    );
    assert_eq!(b.dockerfile, "Dockerfile");
}

#[test]
fn a_context_outside_the_repository_is_refused_at_its_line() {
    for context in ["../../elsewhere", "/srv/app"] {
        let e = single_error(
            &Repo::new(&[(
                "compose/stack.yaml",
                &format!("services:\n  a:\n    image: a:1\n    build:\n      context: {context}\n"),
            )]),
            5,
            "services.a.build.context",
        );
        assert!(
            e.message.starts_with(&format!(
                "build context `{context}` is outside the repository"
            )),
            "{e}"
        );
    }
    let e = single_error(
        &Repo::new(&[("compose/stack.yaml", "services:\n  a:\n    build: ./nope\n")]),
        3,
        "services.a.build.context",
    );
    assert!(
        e.message.contains("is not a directory in the repository"),
        "{e}"
    );
    let e = single_error(
        &Repo::new(&[(
            "compose/stack.yaml",
            "services:\n  a:\n    build: {context: ., dockerfile: ../../x}\n",
        )]),
        3,
        "services.a.build.dockerfile",
    );
    assert!(e.message.contains("outside the repository"), "{e}");
}

#[test]
fn buildkit_only_dockerfiles_are_refused_naming_the_dockerfile_line() {
    let repo = Repo::new(&[
        ("compose/stack.yaml", "services:\n  a:\n    build: app\n"),
        (
            "compose/app/Dockerfile",
            "FROM driftless-test/busybox:1\nRUN --mount=type=cache,target=/c echo\n",
        ),
    ]);
    let errors = repo.err("compose/stack.yaml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(e.file.as_deref(), Some("compose/app/Dockerfile"));
    assert_eq!(e.line, Some(2));
    assert!(e.message.starts_with("`RUN --mount` needs BuildKit"), "{e}");
    let e = single_error(
        &Repo::new(&[(
            "compose/stack.yaml",
            "services:\n  a:\n    build:\n      dockerfile_inline: \"# syntax=docker/dockerfile:1\\nFROM scratch\\n\"\n",
        )]),
        4,
        "services.a.build.dockerfile_inline",
    );
    assert!(e.message.contains("`# syntax=` parser directive"), "{e}");
}

#[test]
fn buildkit_only_build_keys_are_refused_with_the_reason() {
    let e = single_error(
        &Repo::new(&[
            (
                "compose/stack.yaml",
                "services:\n  a:\n    build:\n      context: .\n      ssh: [default]\n",
            ),
            ("compose/Dockerfile", DOCKERFILE),
        ]),
        5,
        "services.a.build.ssh",
    );
    assert!(
        e.hint
            .unwrap()
            .contains("`ssh` (SSH agent forwarding into the build) needs BuildKit")
    );
}
