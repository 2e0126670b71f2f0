//! Commit signature verification: SSH signatures (git's `gpg.format=ssh`)
//! checked against an `allowed_signers` file in the format
//! `ssh-keygen -Y verify` reads, from the commit object itself — no
//! `ssh-keygen`, no `git verify-commit`.
//!
//! The signed payload is the raw commit object without its `gpgsig` header
//! (what `git commit -S` hands to the signer); the signature is an armored
//! SSHSIG in the `git` namespace. A signature is accepted when it verifies
//! with the key it carries, that key is listed in `allowed_signers` for the
//! `git` namespace (an entry without `namespaces=` allows every namespace,
//! as in ssh-keygen), and the entry's `valid-after` / `valid-before` window
//! holds both the commit's committer time (what git checks) and the present:
//! a committer date is chosen by whoever signs, so a key past its
//! `valid-before` signs nothing the daemon applies any more.
//!
//! OpenPGP and X.509 signatures are recognised and refused as unsupported.

use std::fmt;
use std::path::Path;

use chrono::{Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use gix::bstr::ByteSlice;
use ssh_key::{HashAlg, PublicKey, SshSig, public::KeyData};

/// The SSHSIG namespace git signs commits in.
pub const NAMESPACE: &str = "git";

/// Why a commit is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the commit is not signed")]
    Unsigned,
    #[error("the commit carries {0} signature; only SSH signatures (gpg.format=ssh) are verified")]
    Unsupported(&'static str),
    #[error("the signature cannot be read: {0}")]
    Malformed(String),
    #[error("the signature by {key} does not match the commit (rewritten or corrupted): {why}")]
    BadSignature { key: String, why: String },
    #[error(
        "the commit is signed by {key}, which allowed_signers does not list for namespace `git`"
    )]
    NotAllowed { key: String },
    #[error("the signing key {key} of {signer} is {why}")]
    OutsideValidity {
        signer: String,
        key: String,
        why: String,
    },
}

/// An accepted signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The principals of the allowed_signers entry that matched, as written
    /// (`alice@example.com` or `alice@example.com,ops@example.com`).
    pub principals: String,
    /// The key's SHA-256 fingerprint (`SHA256:…`, as ssh-keygen prints it).
    pub key: String,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.principals, self.key)
    }
}

/// A parsed `allowed_signers` file.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    principals: String,
    key: KeyData,
    /// `None`: every namespace.
    namespaces: Option<Vec<String>>,
    /// Unix seconds.
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

/// A line of `allowed_signers` that does not parse (`line` 0: the file
/// cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}: {why}", if *.line == 0 { String::new() } else { format!(":{line}") })]
pub struct ParseError {
    pub origin: String,
    pub line: usize,
    pub why: String,
}

impl AllowedSigners {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<AllowedSigners, ParseError> {
        let text = std::fs::read_to_string(path).map_err(|e| ParseError {
            origin: path.display().to_string(),
            line: 0,
            why: format!("cannot read: {e}"),
        })?;
        AllowedSigners::parse(&text, &path.display().to_string())
    }

    /// Parses `text` (`origin` names it in errors). Lines are
    /// `principals [options] keytype base64 [comment]`; `#` comments and
    /// blank lines are skipped. Options: `namespaces="…"`,
    /// `valid-after="YYYYMMDD[HHMM[SS]][Z]"`, `valid-before=…`;
    /// `cert-authority` entries are refused (certificates are not verified).
    pub fn parse(text: &str, origin: &str) -> Result<AllowedSigners, ParseError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |why: String| ParseError {
                origin: origin.to_owned(),
                line: i + 1,
                why,
            };
            entries.push(parse_entry(line).map_err(fail)?);
        }
        Ok(AllowedSigners { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let (principals, rest) = field(line);
    if principals.is_empty() {
        return Err("no principals".to_owned());
    }
    let (second, after_second) = field(rest);
    let (options, key_part) = if is_key_type(&second) {
        (String::new(), rest)
    } else {
        (second, after_second)
    };
    let mut key_fields = key_part.split_whitespace();
    let (Some(kind), Some(blob)) = (key_fields.next(), key_fields.next()) else {
        return Err("expected a key type and a base64 key after the principals".to_owned());
    };
    let key = PublicKey::from_openssh(&format!("{kind} {blob}"))
        .map_err(|e| format!("public key does not parse: {e}"))?
        .key_data()
        .clone();
    let mut entry = Entry {
        principals: principals.trim_matches('"').to_owned(),
        key,
        namespaces: None,
        valid_after: None,
        valid_before: None,
    };
    for option in split_options(&options) {
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n.to_ascii_lowercase(), Some(v.trim_matches('"'))),
            None => (option.to_ascii_lowercase(), None),
        };
        match (name.as_str(), value) {
            ("namespaces", Some(v)) => {
                entry.namespaces = Some(v.split(',').map(|s| s.trim().to_owned()).collect());
            }
            ("valid-after", Some(v)) => entry.valid_after = Some(parse_time(v)?),
            ("valid-before", Some(v)) => entry.valid_before = Some(parse_time(v)?),
            ("cert-authority", None) => {
                return Err("cert-authority entries are not supported".to_owned());
            }
            _ => return Err(format!("unknown option `{option}`")),
        }
    }
    Ok(entry)
}

/// The first whitespace-separated field of `s` (double quotes keep
/// whitespace and commas inside), and the rest.
fn field(s: &str) -> (String, &str) {
    let s = s.trim_start();
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (s[..i].to_owned(), &s[i..]),
            _ => {}
        }
    }
    (s.to_owned(), "")
}

fn split_options(options: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut current, mut quoted) = (String::new(), false);
    for c in options.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-")
}

/// `YYYYMMDD[HHMM[SS]][Z]`: UTC with a `Z`, else local time (as
/// ssh-keygen reads it).
fn parse_time(v: &str) -> Result<i64, String> {
    let bad = || format!("time `{v}` is not YYYYMMDD[HHMM[SS]][Z]");
    let (digits, utc) = match v.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (v, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| digits[r].parse::<u32>().map_err(|_| bad());
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(4..6)?, num(6..8)?);
    let (h, m, s) = match digits.len() {
        8 => (0, 0, 0),
        12 => (num(8..10)?, num(10..12)?, 0),
        14 => (num(8..10)?, num(10..12)?, num(12..14)?),
        _ => return Err(bad()),
    };
    let at: NaiveDateTime = date.and_then(|d| d.and_hms_opt(h, m, s)).ok_or_else(bad)?;
    let seconds = if utc {
        Utc.from_utc_datetime(&at).timestamp()
    } else {
        Local
            .from_local_datetime(&at)
            .earliest()
            .ok_or_else(bad)?
            .timestamp()
    };
    Ok(seconds)
}

/// Verifies the raw commit object `data` (as stored, without the
/// `commit <len>\0` header) against `allowed`, at `now` (Unix seconds).
pub fn verify_commit(data: &[u8], allowed: &AllowedSigners, now: i64) -> Result<Signer, Refusal> {
    let kind = gix::hash::Kind::Sha1;
    let (signature, signed) = gix::objs::CommitRefIter::signature(data, kind)
        .map_err(|e| Refusal::Malformed(e.to_string()))?
        .ok_or(Refusal::Unsigned)?;
    let signature = signature.to_str_lossy();
    let signature = signature.trim();
    if signature.starts_with("-----BEGIN PGP SIGNATURE-----") {
        return Err(Refusal::Unsupported("an OpenPGP"));
    }
    if signature.starts_with("-----BEGIN SIGNED MESSAGE-----") {
        return Err(Refusal::Unsupported("an X.509"));
    }
    let sig = SshSig::from_pem(signature).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let key = PublicKey::from(sig.public_key().clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    key.verify(NAMESPACE, signed.to_bstring().as_slice(), &sig)
        .map_err(|e| Refusal::BadSignature {
            key: fingerprint.clone(),
            why: e.to_string(),
        })?;
    let committed = gix::objs::CommitRefIter::from_bytes(data, kind)
        .committer()
        .ok()
        .and_then(|c| c.time().ok())
        .map(|t| t.seconds);

    let matching: Vec<&Entry> = allowed
        .entries
        .iter()
        .filter(|e| e.key == *sig.public_key())
        .filter(|e| {
            e.namespaces
                .as_ref()
                .is_none_or(|ns| ns.iter().any(|n| n == NAMESPACE))
        })
        .collect();
    let mut outside = None;
    for entry in &matching {
        match validity(entry, committed, now) {
            Ok(()) => {
                return Ok(Signer {
                    principals: entry.principals.clone(),
                    key: fingerprint,
                });
            }
            Err(why) => {
                outside.get_or_insert(Refusal::OutsideValidity {
                    signer: entry.principals.clone(),
                    key: fingerprint.clone(),
                    why,
                });
            }
        }
    }
    Err(outside.unwrap_or(Refusal::NotAllowed { key: fingerprint }))
}

/// Whether `entry`'s validity window holds the committer time and `now`.
fn validity(entry: &Entry, committed: Option<i64>, now: i64) -> Result<(), String> {
    let show = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| t.to_string())
    };
    for (at, what) in [(committed, "the commit time"), (Some(now), "now")] {
        let Some(at) = at else { continue };
        if let Some(before) = entry.valid_before
            && at >= before
        {
            return Err(format!(
                "expired: valid before {}, {what} is {}",
                show(before),
                show(at)
            ));
        }
        if let Some(after) = entry.valid_after
            && at < after
        {
            return Err(format!(
                "not yet valid: valid after {}, {what} is {}",
                show(after),
                show(at)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;
    use crate::source::Repo;

    fn run(dir: &Path, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A repo and ed25519 keys made by the real tools.
    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        repo: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_owned();
            let repo = root.join("repo");
            std::fs::create_dir(&repo).unwrap();
            run(&repo, "git", &["init", "-q", "-b", "main"]);
            Fixture {
                _dir: dir,
                root,
                repo,
            }
        }

        /// `ssh-keygen -t ed25519`: the private key's path and the public
        /// key line.
        fn key(&self, name: &str) -> (PathBuf, String) {
            self.key_of_type(name, "ed25519")
        }

        fn key_of_type(&self, name: &str, kind: &str) -> (PathBuf, String) {
            let path = self.root.join(name);
            let p = path.to_str().unwrap();
            run(
                &self.root,
                "ssh-keygen",
                &["-q", "-t", kind, "-N", "", "-C", name, "-f", p],
            );
            let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            (path, public.trim().to_owned())
        }

        /// Commits a file change, signed with `key` when given; the id.
        fn commit(&self, file: &str, key: Option<&Path>) -> String {
            std::fs::write(self.repo.join(file), file).unwrap();
            run(&self.repo, "git", &["add", file]);
            let mut args = vec![
                "-c".to_owned(),
                "user.name=Alice".to_owned(),
                "-c".to_owned(),
                "user.email=alice@example.com".to_owned(),
                "-c".to_owned(),
                "gpg.format=ssh".to_owned(),
            ];
            if let Some(key) = key {
                args.push("-c".to_owned());
                args.push(format!("user.signingkey={}", key.display()));
            }
            args.extend(["commit", "-q", "-m", file].map(str::to_owned));
            if key.is_some() {
                args.push("-S".to_owned());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&self.repo, "git", &args);
            run(&self.repo, "git", &["rev-parse", "HEAD"])
                .trim()
                .to_owned()
        }

        fn verify(&self, rev: &str, allowed: &str) -> Result<Signer, Refusal> {
            let allowed = AllowedSigners::parse(allowed, "allowed_signers").unwrap();
            let (_, data) = Repo::open(&self.repo).unwrap().commit_object(rev).unwrap();
            verify_commit(&data, &allowed, Utc::now().timestamp())
        }
    }

    #[test]
    fn a_commit_signed_by_an_allowed_key_is_accepted_with_its_signer() {
        let f = Fixture::new();
        let (key, public) = f.key("alice");
        f.commit("a", Some(&key));
        let allowed = format!("# team\nalice@example.com namespaces=\"git\" {public}\n");
        let signer = f.verify("HEAD", &allowed).unwrap();
        assert_eq!(signer.principals, "alice@example.com");
        assert!(signer.key.starts_with("SHA256:"), "{}", signer.key);
        // git itself agrees on the fingerprint.
        let listed = run(
            &f.root,
            "ssh-keygen",
            &["-l", "-f", key.with_extension("pub").to_str().unwrap()],
        );
        assert!(listed.contains(&signer.key), "{listed} vs {}", signer.key);
    }

    #[test]
    fn ecdsa_and_rsa_signing_keys_are_verified_too() {
        let f = Fixture::new();
        for kind in ["ecdsa", "rsa"] {
            let (key, public) = f.key_of_type(kind, kind);
            f.commit(kind, Some(&key));
            let allowed = format!("{kind}@example.com {public}\n");
            let signer = f.verify("HEAD", &allowed).unwrap();
            assert_eq!(signer.principals, format!("{kind}@example.com"));
        }
    }

    #[test]
    fn an_openpgp_signature_is_refused_as_not_verified() {
        let f = Fixture::new();
        let home = f.root.join("gnupg");
        std::fs::create_dir(&home).unwrap();
        let gpg = |args: &[&str]| {
            let out = Command::new("gpg")
                .args(["--batch", "--homedir", home.to_str().unwrap()])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            "Bob <bob@example.com>",
            "ed25519",
            "sign",
            "never",
        ]);
        std::fs::write(f.repo.join("b"), "b").unwrap();
        run(&f.repo, "git", &["add", "b"]);
        let status = Command::new("git")
            .args(["-c", "user.name=Bob", "-c", "user.email=bob@example.com"])
            .args([
                "-c",
                "user.signingkey=bob@example.com",
                "commit",
                "-q",
                "-S",
                "-m",
                "b",
            ])
            .env("GNUPGHOME", &home)
            .current_dir(&f.repo)
            .status()
            .unwrap();
        // The agent gpg started for this home.
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", &home)
            .status();
        assert!(status.success());
        let (_, public) = f.key("alice");
        let refusal = f
            .verify("HEAD", &format!("alice@example.com {public}"))
            .unwrap_err();
        assert_eq!(refusal, Refusal::Unsupported("an OpenPGP"));
    }

    #[test]
    fn an_unsigned_commit_is_refused() {
        let f = Fixture::new();
        let (_, public) = f.key("alice");
        f.commit("a", None);
        let allowed = format!("alice@example.com {public}\n");
        assert_eq!(f.verify("HEAD", &allowed), Err(Refusal::Unsigned));
    }

    #[test]
    fn a_signer_not_in_allowed_signers_is_refused() {
        let f = Fixture::new();
        let (_, alice) = f.key("alice");
        let (mallory, _) = f.key("mallory");
        f.commit("a", Some(&mallory));
        let allowed = format!("alice@example.com {alice}\n");
        let refusal = f.verify("HEAD", &allowed).unwrap_err();
        assert!(matches!(refusal, Refusal::NotAllowed { .. }), "{refusal}");
        // A key allowed only for another namespace does not sign commits.
        let mallory_public = std::fs::read_to_string(mallory.with_extension("pub")).unwrap();
        let allowed = format!(
            "mallory@example.com namespaces=\"file\" {}",
            mallory_public.trim()
        );
        let refusal = f.verify("HEAD", &allowed).unwrap_err();
        assert!(matches!(refusal, Refusal::NotAllowed { .. }), "{refusal}");
    }

    #[test]
    fn a_rewritten_commit_fails_its_signature() {
        let f = Fixture::new();
        let (key, public) = f.key("alice");
        let id = f.commit("a", Some(&key));
        // The same signature header over a different message: a commit
        // object written by hand with `git hash-object`.
        let raw = run(&f.repo, "git", &["cat-file", "commit", &id]);
        let forged = raw.replacen("\n\na\n", "\n\nrun something else\n", 1);
        assert_ne!(raw, forged);
        let path = f.root.join("forged");
        std::fs::write(&path, &forged).unwrap();
        let forged_id = run(
            &f.repo,
            "git",
            &["hash-object", "-t", "commit", "-w", path.to_str().unwrap()],
        );
        let allowed = format!("alice@example.com {public}\n");
        let refusal = f.verify(forged_id.trim(), &allowed).unwrap_err();
        assert!(matches!(refusal, Refusal::BadSignature { .. }), "{refusal}");
        // git agrees: the forged commit does not verify.
        std::fs::write(f.root.join("allowed"), &allowed).unwrap();
        let out = Command::new("git")
            .args([
                "-c",
                "gpg.ssh.allowedSignersFile=../allowed",
                "verify-commit",
            ])
            .arg(forged_id.trim())
            .current_dir(&f.repo)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }

    #[test]
    fn an_expired_key_is_refused_and_a_future_one_too() {
        let f = Fixture::new();
        let (key, public) = f.key("alice");
        f.commit("a", Some(&key));
        let expired = format!("alice@example.com valid-before=\"20200101Z\" {public}\n");
        let refusal = f.verify("HEAD", &expired).unwrap_err();
        let Refusal::OutsideValidity { signer, why, .. } = &refusal else {
            panic!("{refusal}");
        };
        assert_eq!(signer, "alice@example.com");
        assert!(why.starts_with("expired: valid before 2020-01-01"), "{why}");
        let future = format!("alice@example.com valid-after=\"29990101000000Z\" {public}\n");
        let refusal = f.verify("HEAD", &future).unwrap_err();
        assert!(refusal.to_string().contains("not yet valid"), "{refusal}");
        let window = format!(
            "alice@example.com valid-after=\"20200101\",valid-before=\"29990101\" {public}\n"
        );
        assert!(f.verify("HEAD", &window).is_ok());
    }

    #[test]
    fn allowed_signers_lines_that_do_not_parse_are_named() {
        let e = AllowedSigners::parse("\n# c\nalice@example.com\n", "f").unwrap_err();
        assert_eq!((e.origin.as_str(), e.line), ("f", 3));
        let e = AllowedSigners::parse(
            "a valid-before=\"2020\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n",
            "f",
        )
        .unwrap_err();
        assert_eq!(e.line, 1);
    }
}
