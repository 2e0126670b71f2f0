//! `driftless verify`: a commit's SSH signature checked against an
//! allowed_signers file, with keys and signed commits made by the real
//! `ssh-keygen` and `git commit -S`.

use crate::daemon_support::{Bare, cli, git};

#[test]
fn verify_prints_the_signer_of_a_signed_commit_and_refuses_an_unsigned_one() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("alice");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("alice@example.com {}", public.trim())).unwrap();

    let bare = Bare::new(&[("driftless.yaml", "apiVersion: driftless/v1\n".to_owned())]);
    let work = bare.work();
    git(&work, &["config", "gpg.format", "ssh"]);
    git(&work, &["config", "user.signingkey", key.to_str().unwrap()]);
    git(&work, &["config", "commit.gpgsign", "true"]);
    let signed = bare.commit(&[("a", "a".to_owned())], "signed");
    let (repo, allowed) = (work.to_str().unwrap(), allowed.to_str().unwrap());

    let (code, stdout, stderr) = cli(&[
        "verify",
        "--repo",
        repo,
        "--rev",
        "main",
        "--allowed-signers",
        allowed,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "commit {}: good signature by alice@example.com (SHA256:",
            &signed[..12]
        )),
        "{stdout}"
    );

    let (code, stdout, _) = cli(&[
        "verify",
        "--repo",
        repo,
        "--rev",
        "HEAD~1",
        "--allowed-signers",
        allowed,
        "--output",
        "json",
    ]);
    assert_eq!(code, 1, "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["verified"], false);
    assert_eq!(doc["reason"], "the commit is not signed");

    // An allowed_signers file that does not parse is an error, not a verdict.
    std::fs::write(keys.path().join("bad"), "alice@example.com ssh-ed25519\n").unwrap();
    let bad = keys.path().join("bad");
    let (code, _, stderr) = cli(&[
        "verify",
        "--repo",
        repo,
        "--allowed-signers",
        bad.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("bad:1:"), "{stderr}");
}

/// A GnuPG home with one ed25519 key for `uid`, and a `gpg.program` for
/// git that uses it; the agent is stopped at drop.
pub struct Gpg {
    home: std::path::PathBuf,
    pub program: std::path::PathBuf,
}

impl Gpg {
    pub fn new(dir: &std::path::Path, uid: &str) -> Gpg {
        use std::os::unix::fs::PermissionsExt;
        let home = dir.join("gnupg");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let program = dir.join("gpg-for-git");
        // Fixed text and a temp path: nothing from a repo.
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\nGNUPGHOME='{}' exec gpg \"$@\"\n",
                home.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let g = Gpg { home, program };
        g.gpg(&["--quick-gen-key", uid, "ed25519", "sign", "never"]);
        g
    }

    pub fn gpg(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("gpg")
            .args([
                "--batch",
                "--quiet",
                "--passphrase",
                "",
                "--pinentry-mode",
                "loopback",
            ])
            .args(args)
            .env("GNUPGHOME", &self.home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `gpg --armor --export uid`: what the daemon's openpgp_keys name.
    pub fn export(&self, uid: &str) -> String {
        self.gpg(&["--armor", "--export", uid])
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", &self.home)
            .status();
    }
}

#[test]
fn verify_checks_gnupg_signatures_and_in_tag_mode_the_tag() {
    let keys = tempfile::tempdir().unwrap();
    let gpg = Gpg::new(keys.path(), "Release Team <release@example.com>");
    let asc = keys.path().join("release-team.asc");
    std::fs::write(&asc, gpg.export("release@example.com")).unwrap();

    let bare = Bare::new(&[("driftless.yaml", "apiVersion: driftless/v1\n".to_owned())]);
    let work = bare.work();
    git(
        &work,
        &["config", "gpg.program", gpg.program.to_str().unwrap()],
    );
    git(&work, &["config", "user.signingkey", "release@example.com"]);
    git(&work, &["config", "commit.gpgsign", "true"]);
    let signed = bare.commit(&[("a", "a".to_owned())], "signed");
    let (repo, asc) = (work.to_str().unwrap(), asc.to_str().unwrap());
    let verify = |rev: &str, mode: &str| {
        cli(&[
            "verify",
            "--repo",
            repo,
            "--rev",
            rev,
            "--openpgp-keys",
            asc,
            "--mode",
            mode,
        ])
    };

    let (code, stdout, stderr) = verify("main", "head");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "commit {}: good signature by Release Team <release@example.com> (",
            &signed[..12]
        )),
        "{stdout}"
    );

    // The unsigned initial commit, tagged: refused until the tag is signed.
    let (code, stdout, _) = verify("HEAD~1", "head");
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("refused: the commit is not signed"),
        "{stdout}"
    );
    git(&work, &["tag", "-a", "-m", "release 0", "v0", "HEAD~1"]);
    let (code, stdout, _) = verify("v0", "tag");
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("`v0`: the tag is not signed"), "{stdout}");
    git(&work, &["tag", "-s", "-m", "release 0.1", "v0.1", "HEAD~1"]);
    let (code, stdout, stderr) = verify("v0", "tag");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("tag `v0.1`: good signature by Release Team"),
        "{stdout}"
    );
    // Both required: the commit under the tag is still unsigned.
    let (code, stdout, _) = verify("v0.1", "tag_and_head");
    assert_eq!(code, 1, "{stdout}");

    // No key given at all is an error, not a verdict.
    let (code, _, stderr) = cli(&["verify", "--repo", repo]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--openpgp-keys"), "{stderr}");
}
