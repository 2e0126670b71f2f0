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
//! OpenPGP signatures (GnuPG's, git's default format) are checked in
//! [`openpgp`] against armored public keys. X.509 signatures (gpgsm) are
//! recognised and refused as unsupported.
//!
//! Annotated tags are signed the same way, with the signature appended to
//! the tag message instead of a `gpgsig` header; [`check`] verifies the
//! commit, a signed tag pointing at it, or both ([`Mode`]).

pub mod openpgp;

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use gix::bstr::ByteSlice;
use ssh_key::{HashAlg, PublicKey, SshSig, public::KeyData};

/// The SSHSIG namespace git signs commits in.
pub const NAMESPACE: &str = "git";

/// What carries a signature: a commit or an annotated tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Commit,
    Tag,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Object::Commit => "commit",
            Object::Tag => "tag",
        })
    }
}

/// Why a commit (or tag) is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the {0} is not signed")]
    Unsigned(Object),
    #[error("the {0} carries {1} signature; only SSH and OpenPGP signatures are verified")]
    Unsupported(Object, &'static str),
    #[error("the signature cannot be read: {0}")]
    Malformed(String),
    #[error("the signature by {key} does not match the {object} (rewritten or corrupted): {why}")]
    BadSignature {
        object: Object,
        key: String,
        why: String,
    },
    #[error(
        "the {object} is signed by {key}, which allowed_signers does not list for namespace `git`"
    )]
    NotAllowed { object: Object, key: String },
    #[error("the {object} is signed by OpenPGP key {key}, which is not among the openpgp_keys")]
    UnknownOpenPgpKey { object: Object, key: String },
    #[error("the signing key {key} of {signer} is {why}")]
    OutsideValidity {
        signer: String,
        key: String,
        why: String,
    },
    #[error("the signature by {key} of {signer} expired {expired}")]
    SignatureExpired {
        signer: String,
        key: String,
        expired: String,
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

/// Every key a signature is checked against: SSH keys from an
/// `allowed_signers` file and OpenPGP public keys.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub ssh: AllowedSigners,
    pub openpgp: openpgp::Keyring,
}

impl Keys {
    /// Reads the files (read again at each check by the daemon, so a
    /// rotated key needs no restart).
    pub fn load(allowed_signers: Option<&Path>, openpgp: &[PathBuf]) -> Result<Keys, ParseError> {
        Ok(Keys {
            ssh: match allowed_signers {
                Some(path) => AllowedSigners::load(path)?,
                None => AllowedSigners::default(),
            },
            openpgp: openpgp::Keyring::load(openpgp)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ssh.is_empty() && self.openpgp.is_empty()
    }
}

impl From<AllowedSigners> for Keys {
    fn from(ssh: AllowedSigners) -> Keys {
        Keys {
            ssh,
            openpgp: openpgp::Keyring::default(),
        }
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
/// `commit <len>\0` header) against `keys`, at `now` (Unix seconds).
pub fn verify_commit(data: &[u8], keys: &Keys, now: i64) -> Result<Signer, Refusal> {
    let kind = gix::hash::Kind::Sha1;
    let (signature, signed) = gix::objs::CommitRefIter::signature(data, kind)
        .map_err(|e| Refusal::Malformed(e.to_string()))?
        .ok_or(Refusal::Unsigned(Object::Commit))?;
    let committed = gix::objs::CommitRefIter::from_bytes(data, kind)
        .committer()
        .ok()
        .and_then(|c| c.time().ok())
        .map(|t| t.seconds);
    let signature = signature.to_str_lossy();
    let signed = signed.to_bstring();
    verify_signature(
        Object::Commit,
        signature.trim(),
        signed.as_slice(),
        committed,
        keys,
        now,
    )
}

/// A raw annotated tag object split into what was signed and the armored
/// signature git appends to the message (the last line that starts a
/// signature, as git's `parse_signed_buffer` finds it); `None`: unsigned.
fn split_tag(data: &[u8]) -> Option<(&[u8], &[u8])> {
    const STARTS: [&[u8]; 4] = [
        b"-----BEGIN PGP SIGNATURE-----",
        b"-----BEGIN PGP MESSAGE-----",
        b"-----BEGIN SSH SIGNATURE-----",
        b"-----BEGIN SIGNED MESSAGE-----",
    ];
    let body = data.find(b"\n\n")? + 2;
    let mut at = body;
    let mut found = None;
    while at < data.len() {
        let line = &data[at..];
        if STARTS.iter().any(|s| line.starts_with(s)) {
            found = Some(at);
        }
        at += line.find_byte(b'\n').map_or(line.len(), |n| n + 1);
    }
    found.map(|i| data.split_at(i))
}

/// Verifies the raw annotated tag object `data` against `keys`, at `now`.
/// Which commit the tag points to is the caller's to check.
pub fn verify_tag(data: &[u8], keys: &Keys, now: i64) -> Result<Signer, Refusal> {
    let (signed, signature) = split_tag(data).ok_or(Refusal::Unsigned(Object::Tag))?;
    let tagged = gix::objs::TagRef::from_bytes(data, gix::hash::Kind::Sha1)
        .ok()
        .and_then(|t| t.tagger().ok().flatten())
        .and_then(|t| t.time().ok())
        .map(|t| t.seconds);
    let signature = signature.to_str_lossy();
    verify_signature(Object::Tag, signature.trim(), signed, tagged, keys, now)
}

/// Verifies an armored `signature` over `signed`; `signed_at` is the
/// committer or tagger time (SSH signatures carry no time of their own).
fn verify_signature(
    object: Object,
    signature: &str,
    signed: &[u8],
    signed_at: Option<i64>,
    keys: &Keys,
    now: i64,
) -> Result<Signer, Refusal> {
    if signature.starts_with("-----BEGIN PGP SIGNATURE-----") {
        return openpgp::verify(object, signature, signed, &keys.openpgp, now);
    }
    if signature.starts_with("-----BEGIN SIGNED MESSAGE-----") {
        return Err(Refusal::Unsupported(object, "an X.509"));
    }
    let allowed = &keys.ssh;
    let sig = SshSig::from_pem(signature).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let key = PublicKey::from(sig.public_key().clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    key.verify(NAMESPACE, signed, &sig)
        .map_err(|e| Refusal::BadSignature {
            object,
            key: fingerprint.clone(),
            why: e.to_string(),
        })?;

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
        match validity(entry, signed_at, now, object) {
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
    Err(outside.unwrap_or(Refusal::NotAllowed {
        object,
        key: fingerprint,
    }))
}

/// A Unix time as `2026-01-31 12:00:00 UTC`.
pub(crate) fn show_time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// What must carry a good signature for a commit to be applied (Flux's
/// GitRepository `verify.mode`, for how driftless follows refs: an
/// environment's `branch:` names a branch or a tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The commit itself (on a branch: its head, a merge commit included).
    #[default]
    Head,
    /// An annotated tag that points at the commit (`git tag -s`); the
    /// commit itself may be unsigned. A release process that signs tags,
    /// not every commit.
    Tag,
    /// Both.
    TagAndHead,
}

impl Mode {
    pub const NAMES: &str = "head, tag, tag_and_head";

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "head" => Some(Mode::Head),
            "tag" => Some(Mode::Tag),
            "tag_and_head" => Some(Mode::TagAndHead),
            _ => None,
        }
    }
}

/// One good signature [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `None`: the commit's own signature; else the tag's short name.
    pub tag: Option<String>,
    pub signer: Signer,
}

impl fmt::Display for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            None => write!(f, "good signature by {}", self.signer),
            Some(tag) => write!(f, "tag `{tag}`: good signature by {}", self.signer),
        }
    }
}

/// The verdict on `commit` under `mode`: the good signatures, or why the
/// commit is refused (the text names the tags tried). In tag modes the
/// first annotated tag (by name) leading to the commit whose signature is
/// good admits it; every tag is a candidate, so a commit pinned by an
/// operator passes when its release tag is signed. The outer error is a
/// repository that cannot be read.
pub fn check(
    repo: &super::Repo,
    commit: &str,
    keys: &Keys,
    mode: Mode,
    now: i64,
) -> Result<Result<Vec<Accepted>, String>, super::SourceError> {
    let mut accepted = Vec::new();
    if matches!(mode, Mode::Head | Mode::TagAndHead) {
        let (_, data) = repo.commit_object(commit)?;
        match verify_commit(&data, keys, now) {
            Ok(signer) => accepted.push(Accepted { tag: None, signer }),
            Err(refusal) => return Ok(Err(refusal.to_string())),
        }
    }
    if matches!(mode, Mode::Tag | Mode::TagAndHead) {
        let tags = repo.tags_at(commit)?;
        let mut why = Vec::new();
        let mut good = None;
        for super::git::TagAt { name, object } in tags {
            let Some(data) = object else {
                why.push(format!(
                    "`{name}` is a lightweight tag (it cannot be signed)"
                ));
                continue;
            };
            match verify_tag(&data, keys, now) {
                Ok(signer) => {
                    good = Some(Accepted {
                        tag: Some(name),
                        signer,
                    });
                    break;
                }
                Err(refusal) => why.push(format!("`{name}`: {refusal}")),
            }
        }
        match good {
            Some(a) => accepted.push(a),
            None if why.is_empty() => {
                return Ok(Err(
                    "no tag points to the commit; `mode: tag` needs a signed annotated tag (git tag -s)"
                        .to_owned(),
                ));
            }
            None => {
                return Ok(Err(format!(
                    "no tag pointing to the commit has a good signature: {}",
                    why.join("; ")
                )));
            }
        }
    }
    Ok(Ok(accepted))
}

/// Whether `entry`'s validity window holds the committer (tagger) time
/// and `now`.
fn validity(entry: &Entry, signed_at: Option<i64>, now: i64, object: Object) -> Result<(), String> {
    let show = show_time;
    let signed = format!("the {object} time");
    for (at, what) in [(signed_at, signed.as_str()), (Some(now), "now")] {
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
            self.verify_with(rev, &Keys::from(allowed))
        }

        fn verify_with(&self, rev: &str, keys: &Keys) -> Result<Signer, Refusal> {
            let (_, data) = Repo::open(&self.repo).unwrap().commit_object(rev).unwrap();
            verify_commit(&data, keys, Utc::now().timestamp())
        }

        /// `git commit -S` of a file change with GnuPG key `uid` of `gpg`.
        fn gpg_commit(&self, file: &str, gpg: &Gpg, uid: &str) -> String {
            std::fs::write(self.repo.join(file), file).unwrap();
            run(&self.repo, "git", &["add", file]);
            let sign = format!("user.signingkey={uid}");
            let program = format!("gpg.program={}", gpg.program.display());
            gpg.git(
                &self.repo,
                &[
                    "-c", &program, "-c", &sign, "commit", "-q", "-S", "-m", file,
                ],
            );
            run(&self.repo, "git", &["rev-parse", "HEAD"])
                .trim()
                .to_owned()
        }

        /// Commit `id` with its message `message` replaced, signature
        /// header kept: an object written by hand with `git hash-object`.
        fn forge(&self, id: &str, message: &str) -> String {
            let raw = run(&self.repo, "git", &["cat-file", "commit", id]);
            let forged = raw.replacen(message, "\n\nrun something else\n", 1);
            assert_ne!(raw, forged);
            let path = self.root.join("forged");
            std::fs::write(&path, &forged).unwrap();
            let args = ["hash-object", "-t", "commit", "-w", path.to_str().unwrap()];
            run(&self.repo, "git", &args).trim().to_owned()
        }

        /// `git tag -s` of `target` (default HEAD) by Bob's GnuPG key.
        fn gpg_tag(&self, gpg: &Gpg, name: &str, message: &str, target: Option<&str>) {
            let program = format!("gpg.program={}", gpg.program.display());
            let mut args = vec!["-c", &program, "-c", "user.signingkey=bob@example.com"];
            args.extend(["tag", "-s", "-m", message, name]);
            args.extend(target);
            gpg.git(&self.repo, &args);
        }

        /// The verdict of [`check`] on HEAD under `mode`.
        fn check(&self, keys: &Keys, mode: Mode) -> Result<Vec<Accepted>, String> {
            let repo = Repo::open(&self.repo).unwrap();
            let head = repo.resolve("HEAD").unwrap();
            check(&repo, &head, keys, mode, Utc::now().timestamp()).unwrap()
        }
    }

    /// A GnuPG home of its own (the real `gpg`), its agent stopped at drop.
    /// `program` runs gpg with `--faked-system-time` when `at` is set, so a
    /// test can sign "in the past".
    struct Gpg {
        home: PathBuf,
        program: PathBuf,
        at: PathBuf,
    }

    impl Gpg {
        fn new(root: &Path) -> Gpg {
            let home = root.join("gnupg");
            std::fs::create_dir(&home).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
            }
            // The wrapper takes no input from any repo: fixed text, fixed paths.
            let at = root.join("gpg-time");
            let program = root.join("gpg-wrapper");
            std::fs::write(
                &program,
                format!(
                    "#!/bin/sh\nif [ -s '{at}' ]; then exec gpg --faked-system-time \"$(cat '{at}')\" \"$@\"; fi\nexec gpg \"$@\"\n",
                    at = at.display()
                ),
            )
            .unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            Gpg { home, program, at }
        }

        fn gpg(&self, args: &[&str]) -> String {
            let out = Command::new(&self.program)
                .args(["--batch", "--quiet", "--pinentry-mode", "loopback"])
                .args(["--passphrase", ""])
                .args(args)
                .env("GNUPGHOME", &self.home)
                .output()
                .unwrap_or_else(|e| panic!("gpg: {e}"));
            assert!(
                out.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }

        fn git(&self, dir: &Path, args: &[&str]) -> String {
            let out = Command::new("git")
                .args(["-c", "user.name=Bob", "-c", "user.email=bob@example.com"])
                .args(args)
                .current_dir(dir)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", dir)
                .env("GNUPGHOME", &self.home)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }

        /// Runs gpg as if the clock said `at` (`20200101T000000`), or the
        /// real time (`None`).
        fn clock(&self, at: Option<&str>) {
            std::fs::write(&self.at, at.map(|t| format!("{t}!")).unwrap_or_default()).unwrap();
        }

        /// A new ed25519 signing key for `uid`, expiring as gpg reads
        /// `expire` (`never`, `1d`, …); its fingerprint.
        fn key(&self, uid: &str, expire: &str) -> String {
            self.gpg(&["--quick-gen-key", uid, "ed25519", "sign", expire]);
            self.fingerprint(uid)
        }

        fn fingerprint(&self, uid: &str) -> String {
            let listed = self.gpg(&["--with-colons", "--fingerprint", uid]);
            listed
                .lines()
                .find_map(|l| l.strip_prefix("fpr:"))
                .map(|l| l.trim_matches(':').to_owned())
                .unwrap()
        }

        /// `gpg --armor --export uid`.
        fn export(&self, uid: &str) -> String {
            self.gpg(&["--armor", "--export", uid])
        }

        fn keyring(&self, uids: &[&str]) -> Keys {
            let text: String = uids.iter().map(|u| self.export(u)).collect();
            Keys {
                openpgp: openpgp::Keyring::parse(&text, "keys.asc").unwrap(),
                ..Keys::default()
            }
        }
    }

    impl Drop for Gpg {
        fn drop(&mut self) {
            let _ = Command::new("gpgconf")
                .args(["--kill", "gpg-agent"])
                .env("GNUPGHOME", &self.home)
                .status();
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
    fn an_unsigned_commit_is_refused() {
        let f = Fixture::new();
        let (_, public) = f.key("alice");
        f.commit("a", None);
        let allowed = format!("alice@example.com {public}\n");
        assert_eq!(
            f.verify("HEAD", &allowed),
            Err(Refusal::Unsigned(Object::Commit))
        );
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
        let forged_id = f.forge(&id, "\n\na\n");
        let allowed = format!("alice@example.com {public}\n");
        let refusal = f.verify(&forged_id, &allowed).unwrap_err();
        assert!(matches!(refusal, Refusal::BadSignature { .. }), "{refusal}");
        // git agrees: the forged commit does not verify.
        std::fs::write(f.root.join("allowed"), &allowed).unwrap();
        let out = Command::new("git")
            .args([
                "-c",
                "gpg.ssh.allowedSignersFile=../allowed",
                "verify-commit",
            ])
            .arg(&forged_id)
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
    fn a_gnupg_signed_commit_is_accepted_with_its_user_id_and_fingerprint() {
        let f = Fixture::new();
        let gpg = Gpg::new(&f.root);
        let fingerprint = gpg.key("Bob <bob@example.com>", "never");
        f.gpg_commit("b", &gpg, "bob@example.com");
        let signer = f
            .verify_with("HEAD", &gpg.keyring(&["bob@example.com"]))
            .unwrap();
        assert_eq!(signer.principals, "Bob <bob@example.com>");
        // The fingerprint gpg itself prints.
        assert_eq!(signer.key, fingerprint);
        // git agrees the signature is good.
        gpg.git(&f.repo, &["verify-commit", "HEAD"]);
    }

    #[test]
    fn a_gnupg_signing_subkey_is_named_with_its_primary_key() {
        let f = Fixture::new();
        let gpg = Gpg::new(&f.root);
        let primary = gpg.key("Carol <carol@example.com>", "never");
        gpg.gpg(&["--quick-add-key", &primary, "ed25519", "sign", "never"]);
        f.gpg_commit("c", &gpg, "carol@example.com");
        let signer = f
            .verify_with("HEAD", &gpg.keyring(&["carol@example.com"]))
            .unwrap();
        assert!(
            signer.key.ends_with(&format!("(subkey of {primary})")),
            "{}",
            signer.key
        );
    }

    #[test]
    fn a_gnupg_signature_by_a_key_not_listed_is_refused_with_its_fingerprint() {
        let f = Fixture::new();
        let gpg = Gpg::new(&f.root);
        gpg.key("Bob <bob@example.com>", "never");
        let mallory = gpg.key("Mallory <mallory@example.com>", "never");
        f.gpg_commit("m", &gpg, "mallory@example.com");
        let refusal = f
            .verify_with("HEAD", &gpg.keyring(&["bob@example.com"]))
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::UnknownOpenPgpKey {
                object: Object::Commit,
                key: mallory
            }
        );
        // With SSH keys only, the same: no OpenPGP key is trusted.
        let (_, alice) = f.key("alice");
        let refusal = f
            .verify("HEAD", &format!("alice@example.com {alice}"))
            .unwrap_err();
        assert!(
            matches!(refusal, Refusal::UnknownOpenPgpKey { .. }),
            "{refusal}"
        );
    }

    #[test]
    fn a_rewritten_gnupg_signed_commit_fails_its_signature() {
        let f = Fixture::new();
        let gpg = Gpg::new(&f.root);
        let fingerprint = gpg.key("Bob <bob@example.com>", "never");
        let id = f.gpg_commit("b", &gpg, "bob@example.com");
        let forged_id = f.forge(&id, "\n\nb\n");
        let refusal = f
            .verify_with(&forged_id, &gpg.keyring(&["bob@example.com"]))
            .unwrap_err();
        let Refusal::BadSignature { key, .. } = &refusal else {
            panic!("{refusal}");
        };
        assert_eq!(key, &format!("{fingerprint} (Bob <bob@example.com>)"));
        // git agrees.
        let out = Command::new("git")
            .args(["verify-commit", &forged_id])
            .current_dir(&f.repo)
            .env("GNUPGHOME", &gpg.home)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }

    #[test]
    fn an_expired_or_revoked_gnupg_key_is_refused() {
        let f = Fixture::new();
        let gpg = Gpg::new(&f.root);
        // Made and used in January 2020, expired a day later.
        gpg.clock(Some("20200101T120000"));
        let old = gpg.key("Old <old@example.com>", "1d");
        f.gpg_commit("old", &gpg, "old@example.com");
        gpg.clock(None);
        let refusal = f
            .verify_with("HEAD", &gpg.keyring(&["old@example.com"]))
            .unwrap_err();
        let Refusal::OutsideValidity { signer, key, why } = &refusal else {
            panic!("{refusal}");
        };
        assert_eq!((signer.as_str(), key), ("Old <old@example.com>", &old));
        assert!(
            why.starts_with("expired: expired 2020-01-02 12:00:00 UTC, now is"),
            "{why}"
        );

        // Revoked with the certificate gpg wrote when it made the key.
        let revoked = gpg.key("Rev <rev@example.com>", "never");
        f.gpg_commit("rev", &gpg, "rev@example.com");
        let cert = std::fs::read_to_string(
            gpg.home
                .join("openpgp-revocs.d")
                .join(format!("{revoked}.rev")),
        )
        .unwrap();
        let cert = cert.replace(":-----BEGIN", "-----BEGIN");
        let cert_path = f.root.join("revoke.asc");
        std::fs::write(&cert_path, cert).unwrap();
        gpg.gpg(&["--import", cert_path.to_str().unwrap()]);
        let refusal = f
            .verify_with("HEAD", &gpg.keyring(&["rev@example.com"]))
            .unwrap_err();
        assert!(
            refusal.to_string().starts_with(&format!(
                "the signing key {revoked} of Rev <rev@example.com> is revoked"
            )),
            "{refusal}"
        );
    }

    #[test]
    fn openpgp_key_files_that_do_not_parse_are_named() {
        let e = openpgp::Keyring::parse("ssh-ed25519 AAAA\n", "k.asc").unwrap_err();
        assert_eq!(e.origin, "k.asc");
        assert!(e.why.contains("gpg --armor --export"), "{e}");
        let e = openpgp::Keyring::parse(
            "# ops\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64\n-----END PGP PUBLIC KEY BLOCK-----\n",
            "k.asc",
        )
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn tag_mode_accepts_a_signed_tag_on_an_unsigned_commit_and_refuses_an_unsigned_tag() {
        let f = Fixture::new();
        let gpg = Gpg::new(&f.root);
        gpg.key("Bob <bob@example.com>", "never");
        let (ssh_key, ssh_public) = f.key("alice");
        f.commit("a", None);
        let keys = Keys {
            ssh: AllowedSigners::parse(&format!("alice@example.com {ssh_public}"), "a").unwrap(),
            ..gpg.keyring(&["bob@example.com"])
        };
        // No tag at all, then a lightweight one, then an unsigned annotated one.
        let no_tag = f.check(&keys, Mode::Tag).unwrap_err();
        assert!(
            no_tag.starts_with("no tag points to the commit"),
            "{no_tag}"
        );
        run(&f.repo, "git", &["tag", "light"]);
        gpg.git(&f.repo, &["tag", "-a", "-m", "release 1", "v1"]);
        let unsigned = f.check(&keys, Mode::Tag).unwrap_err();
        assert_eq!(
            unsigned,
            "no tag pointing to the commit has a good signature: `light` is a lightweight \
             tag (it cannot be signed); `v1`: the tag is not signed"
        );
        // The commit itself is unsigned: head and tag_and_head refuse.
        assert_eq!(
            f.check(&keys, Mode::TagAndHead).unwrap_err(),
            "the commit is not signed"
        );

        // `git tag -s` with GnuPG: accepted in tag mode.
        f.gpg_tag(&gpg, "v2", "release 2", None);
        let accepted = f.check(&keys, Mode::Tag).unwrap();
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].tag.as_deref(), Some("v2"));
        assert_eq!(accepted[0].signer.principals, "Bob <bob@example.com>");
        // git agrees.
        gpg.git(&f.repo, &["verify-tag", "v2"]);

        // An SSH-signed tag too; a rewritten tag message fails.
        let sign = format!("user.signingkey={}", ssh_key.display());
        gpg.git(
            &f.repo,
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &sign,
                "tag",
                "-s",
                "-m",
                "release 3",
                "v3",
            ],
        );
        let raw = run(&f.repo, "git", &["cat-file", "tag", "v3"]);
        let signer = verify_tag(raw.as_bytes(), &keys, Utc::now().timestamp()).unwrap();
        assert_eq!(signer.principals, "alice@example.com");
        // Either kind of tag signature over a rewritten message fails.
        for (tag, message) in [("v3", "release 3"), ("v2", "release 2")] {
            let raw = run(&f.repo, "git", &["cat-file", "tag", tag]);
            let forged = raw.replacen(message, "release 9", 1);
            assert_ne!(raw, forged);
            let refusal = verify_tag(forged.as_bytes(), &keys, Utc::now().timestamp()).unwrap_err();
            assert!(
                matches!(
                    refusal,
                    Refusal::BadSignature {
                        object: Object::Tag,
                        ..
                    }
                ),
                "{tag}: {refusal}"
            );
        }

        // A signed commit and a signed tag: tag_and_head passes.
        let id = f.gpg_commit("c", &gpg, "bob@example.com");
        assert!(f.check(&keys, Mode::TagAndHead).is_err(), "untagged");
        f.gpg_tag(&gpg, "v5", "release 5", Some(&id));
        let accepted = f.check(&keys, Mode::TagAndHead).unwrap();
        assert_eq!(accepted.len(), 2, "{accepted:?}");
        assert_eq!(accepted[0].tag, None);
        assert_eq!(accepted[1].tag.as_deref(), Some("v5"));
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
