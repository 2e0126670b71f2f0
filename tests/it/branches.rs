//! Each environment follows its own branch, `driftless.yaml` included, when
//! the repo is read as Git (a URL, or `--rev`); a local path without `--rev`
//! is the work tree as it is.

use std::process::Command;

use crate::support::{RepoBuilder, driftless, git};

const MANIFEST: &str = "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n  prod:\n    branch: release\n    targets: [local]\n";

#[test]
fn environments_read_their_own_branch_and_manifest() {
    let repo = RepoBuilder::new()
        .file("driftless.yaml", MANIFEST)
        .file("environments/dev.yaml", "tag: \"1.0\"\n")
        .file("environments/prod.yaml", "tag: \"1.0\"\n")
        .file(
            "compose/app.yaml.j2",
            "services:\n  app:\n    image: app:{{ tag }}\n",
        );
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "main"]);
    git(repo.path(), &["checkout", "-qb", "release"]);
    std::fs::write(
        repo.path().join("environments/prod.yaml"),
        "tag: \"2.0-release\"\n",
    )
    .unwrap();
    // The release branch's manifest changes prod's health deadline: it must be the one used.
    std::fs::write(
        repo.path().join("driftless.yaml"),
        MANIFEST.replace(
            "    branch: release\n",
            "    branch: release\n    health: {deadline: bogus}\n",
        ),
    )
    .unwrap();
    git(repo.path(), &["commit", "-qam", "release"]);
    git(repo.path(), &["checkout", "-q", "main"]);

    let url = format!("file://{}", repo.path().display());
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = cache.path().to_str().unwrap();
    let run = |env: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
        cmd.args([
            "render",
            "--env",
            env,
            "--repo",
            &url,
            "--cache-dir",
            cache_arg,
        ]);
        cmd.env_remove("DRIFTLESS_REPO");
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run("dev");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("image: app:1.0"), "{stdout}");
    // prod reads `release`, whose manifest has an invalid deadline.
    let (code, _, stderr) = run("prod");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("health.deadline") && stderr.contains("driftless.yaml"),
        "{stderr}"
    );

    // Fix the release manifest: prod renders the release values.
    git(repo.path(), &["checkout", "-q", "release"]);
    std::fs::write(repo.path().join("driftless.yaml"), MANIFEST).unwrap();
    git(repo.path(), &["commit", "-qam", "fix"]);
    git(repo.path(), &["checkout", "-q", "main"]);
    let (code, stdout, stderr) = run("prod");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("image: app:2.0-release"), "{stdout}");

    // `--rev` pins every environment to one commit of a local repo.
    let pinned = driftless(repo.path(), &["render", "--env", "prod", "--rev", "main"]);
    assert_eq!(pinned.code, 0, "{pinned:?}");
    assert!(pinned.stdout.contains("image: app:1.0"), "{pinned:?}");
}
