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
