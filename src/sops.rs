//! SOPS files: decrypting what the `sops` tool writes, with age identities
//! from the daemon's host.
//!
//! The format, as `sops` 3.x writes it (getsops/sops `sops.go`,
//! `aes/cipher.go`, `stores/*`, `age/keysource.go`):
//!
//! - a document (YAML, JSON, dotenv or INI; the binary store is JSON
//!   `{"data": …}`) whose leaves are `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`
//!   or plain, and a `sops` metadata block (flattened `sops_*` keys in
//!   dotenv, a `[sops]` section in INI);
//! - each value is AES-256-GCM with the file's 32-byte data key, a 32-byte
//!   IV and, as additional data, the map keys from the root joined by `:`
//!   plus a trailing `:` (list items add nothing);
//! - which leaves are encrypted follows `unencrypted_suffix`,
//!   `encrypted_suffix`, `unencrypted_regex` and `encrypted_regex`;
//! - the data key is an armored age file per recipient (`sops.age[].enc`);
//! - the MAC is SHA-512 over every non-comment leaf (encrypted or plain) in
//!   document order, upper-case hex, stored encrypted with `lastmodified` as
//!   additional data.
//!
//! Comments (sops encrypts YAML/INI comments too) are not part of the MAC
//! and are not read. Everything here is pure: the caller reads the file and
//! the identities. Decrypted text is returned to the caller, who must
//! record it for masking before it can reach any output.

use std::fmt::Write as _;
use std::io::Read as _;
use std::str::FromStr as _;

use aes_gcm::aead::AeadInPlace as _;
use aes_gcm::{KeyInit as _, aead::consts::U32};
use base64::Engine as _;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::Digest as _;

mod emit;

pub use emit::{dotenv_form, emit};

/// What `sops` names each encrypted value's algorithm.
const ENC_PREFIX: &str = "ENC[AES256_GCM,";

/// AES-256-GCM with the 32-byte nonces sops writes (`nonceSize = 32`).
type SopsGcm = aes_gcm::AesGcm<aes_gcm::aes::Aes256, U32>;

/// The variable naming the age identity file.
pub const IDENTITY_FILE_ENV: &str = "DRIFTLESS_AGE_IDENTITY_FILE";
/// The identity file in the secrets directory. The `.` keeps it out of
/// reach of `secret()`, whose names cannot contain one.
pub const IDENTITY_FILE_NAME: &str = "age.key";

/// A document tree with map order kept (the MAC is over document order).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

/// One leaf of a decrypted file. `Debug` leaves out encrypted text.
#[derive(Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Map keys from the root, with `[i]` for list items (`db.hosts[1]`).
    pub path: String,
    /// The plaintext, as sops hashes it (`True`, `42`, `3.5`, text).
    pub text: String,
    /// Whether it was encrypted in the file (a secret) or plain.
    pub encrypted: bool,
    /// Its type: for an encrypted value the `type:` sops stored with it.
    pub kind: Kind,
}

/// The type of a leaf, as sops records it for an encrypted value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = if self.encrypted {
            "<secret>"
        } else {
            &self.text
        };
        f.debug_struct("Leaf")
            .field("path", &self.path)
            .field("text", &text)
            .field("encrypted", &self.encrypted)
            .field("kind", &self.kind)
            .finish()
    }
}

/// A decrypted SOPS file. `Debug` shows its leaves without secret text.
#[derive(Clone, PartialEq)]
pub struct Decrypted {
    /// The document without its `sops` metadata; encrypted leaves replaced
    /// by [`Node::Str`] of their plaintext.
    pub tree: Node,
    /// Every non-null leaf, in document order.
    pub leaves: Vec<Leaf>,
    /// The MAC (upper-case hex SHA-512), equal to the stored one. A hash of
    /// the plaintext: as secret as the values.
    pub mac: String,
}

impl std::fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted")
            .field("leaves", &self.leaves)
            .finish_non_exhaustive()
    }
}

impl Decrypted {
    /// The encrypted leaves only.
    pub fn secrets(&self) -> impl Iterator<Item = &Leaf> {
        self.leaves.iter().filter(|l| l.encrypted)
    }
}

/// The endings that make a repo file a SOPS file decrypted into the
/// rendered output under its own name (`app.sops.env`), as Flux's
/// kustomize-controller decrypts the files it builds.
pub const FILE_SUFFIXES: &[&str] = &[
    ".sops.yaml",
    ".sops.yml",
    ".sops.json",
    ".sops.env",
    ".sops.ini",
];

/// Whether the repo path `path` names a SOPS file by its ending
/// ([`FILE_SUFFIXES`]). `.sops.yaml` itself, sops' creation rules (not
/// encrypted), is not one.
pub fn is_sops_name(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    FILE_SUFFIXES
        .iter()
        .any(|s| name.len() > s.len() && name.to_ascii_lowercase().ends_with(s))
}

/// The store a file is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Dotenv,
    Ini,
}

impl Format {
    /// By extension (`.env`, `.json`, `.ini`, `.yaml`/`.yml`); otherwise a
    /// file starting with `{` is JSON (the binary store) and anything else
    /// YAML, as `sops` falls back to.
    pub fn of(path: &str, bytes: &[u8]) -> Format {
        let name = path.rsplit('/').next().unwrap_or(path);
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("env") => Format::Dotenv,
            Some("json") => Format::Json,
            Some("ini") => Format::Ini,
            Some("yaml" | "yml") => Format::Yaml,
            _ if bytes.trim_ascii_start().starts_with(b"{") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// Why a file could not be decrypted. Every message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SopsError {
    #[error("SOPS file `{file}` cannot be read: {reason}")]
    Format { file: String, reason: String },
    #[error(
        "SOPS file `{file}` has no age recipient (it is encrypted for {others}); driftless decrypts SOPS files with age keys only"
    )]
    NoAgeRecipient { file: String, others: String },
    #[error(
        "SOPS file `{file}` is encrypted for age recipient(s) {recipients}, and this host has no age identity; set {IDENTITY_FILE_ENV} or put the key in `{IDENTITY_FILE_NAME}` in the secrets directory"
    )]
    NoIdentity { file: String, recipients: String },
    #[error(
        "SOPS file `{file}` is encrypted for age recipient(s) {recipients}; none of this host's age identities ({ours}) opens it"
    )]
    WrongIdentity {
        file: String,
        recipients: String,
        ours: String,
    },
    #[error(
        "SOPS file `{file}` is encrypted only for post-quantum age recipient(s) {recipients} (type mlkem768x25519), which driftless's age library (age 0.12) cannot decrypt; add an X25519 recipient (`age1…`, from age-keygen) to the file"
    )]
    UnsupportedRecipient { file: String, recipients: String },
    #[error(
        "SOPS file `{file}`: value `{path}` does not decrypt with the file's data key ({reason}); the file was changed after sops wrote it"
    )]
    Value {
        file: String,
        path: String,
        reason: String,
    },
    #[error(
        "SOPS file `{file}`: MAC mismatch ({reason}); the file was changed after sops wrote it, re-encrypt it with sops"
    )]
    Mac { file: String, reason: String },
}

/// age identities of this host (secret keys). Never printed: only their
/// public keys appear in messages.
pub struct Identities {
    x25519: Vec<age::x25519::Identity>,
    /// `AGE-SECRET-KEY-PQ-1…` lines: recognised, not usable with age 0.12.
    post_quantum: usize,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identities({} x25519, {} post-quantum)",
            self.x25519.len(),
            self.post_quantum
        )
    }
}

impl Identities {
    /// Parses age identity text (`AGE-SECRET-KEY-1…` lines, `#` comments),
    /// as `age-keygen` writes it.
    pub fn parse(text: &str) -> Result<Identities, String> {
        let mut ids = Identities {
            x25519: Vec::new(),
            post_quantum: 0,
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("AGE-SECRET-KEY-PQ-1") {
                ids.post_quantum += 1;
                continue;
            }
            // The error would echo the key: say only where it is.
            let key = age::x25519::Identity::from_str(line).map_err(|_| {
                format!("line {} is not an age identity (AGE-SECRET-KEY-1…)", n + 1)
            })?;
            ids.x25519.push(key);
        }
        if ids.x25519.is_empty() && ids.post_quantum == 0 {
            return Err("no age identity found".to_owned());
        }
        Ok(ids)
    }

    /// The public keys (`age1…`), for messages.
    pub fn public_keys(&self) -> Vec<String> {
        self.x25519
            .iter()
            .map(|i| i.to_public().to_string())
            .collect()
    }
}

/// Decrypts the SOPS file `file` (its repo path, for messages and the
/// store) with `identities`, checking every value and the MAC.
pub fn decrypt(
    file: &str,
    bytes: &[u8],
    identities: Option<&Identities>,
) -> Result<Decrypted, SopsError> {
    let (tree, meta) = parse(file, bytes)?;
    let key = data_key(file, &meta, identities)?;
    let mut walk = Walk {
        file,
        meta: &meta,
        key: &key,
        hash: sha2::Sha512::new(),
        leaves: Vec::new(),
    };
    if meta.mac_only_encrypted {
        walk.hash.update(sha2::Sha256::digest(b"sops"));
    }
    let mut keys = Vec::new();
    let mut shown = String::new();
    let tree = walk.node(tree, &mut keys, &mut shown)?;
    let computed = walk
        .hash
        .finalize()
        .iter()
        .fold(String::with_capacity(128), |mut s, b| {
            let _ = write!(s, "{b:02X}");
            s
        });
    let mac_err = |reason: String| SopsError::Mac {
        file: file.to_owned(),
        reason,
    };
    let Some(stored) = &meta.mac else {
        return Err(mac_err("the file has no `sops.mac`".to_owned()));
    };
    let aad = lastmodified_aad(&meta.lastmodified).map_err(&mac_err)?;
    let stored = open_value(stored, &key, &aad)
        .map_err(|e| mac_err(format!("the stored MAC does not decrypt: {e}")))?;
    if stored.0 != computed.as_bytes() {
        return Err(mac_err(
            "the values do not hash to the stored MAC".to_owned(),
        ));
    }
    Ok(Decrypted {
        tree,
        leaves: walk.leaves,
        mac: computed,
    })
}

/// The shape of a SOPS file without decrypting it: the document with each
/// encrypted leaf as an empty string, and its leaves (encrypted ones with
/// empty text). For checking a repo where no identity is present.
pub fn outline(file: &str, bytes: &[u8]) -> Result<Decrypted, SopsError> {
    let (tree, meta) = parse(file, bytes)?;
    let mut leaves = Vec::new();
    let tree = outline_node(
        tree,
        &meta,
        &mut Vec::new(),
        &mut String::new(),
        &mut leaves,
    );
    Ok(Decrypted {
        tree,
        leaves,
        mac: String::new(),
    })
}

fn outline_node(
    node: Node,
    meta: &Metadata,
    keys: &mut Vec<String>,
    shown: &mut String,
    leaves: &mut Vec<Leaf>,
) -> Node {
    match node {
        Node::Map(entries) => Node::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let len = push_key(shown, &k);
                    keys.push(k.clone());
                    let v = outline_node(v, meta, keys, shown, leaves);
                    keys.pop();
                    shown.truncate(len);
                    (k, v)
                })
                .collect(),
        ),
        Node::List(items) => Node::List(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let len = push_index(shown, i);
                    let v = outline_node(v, meta, keys, shown, leaves);
                    shown.truncate(len);
                    v
                })
                .collect(),
        ),
        Node::Null => Node::Null,
        leaf => {
            let encrypted = meta.should_encrypt(keys);
            let kind = if encrypted {
                Kind::Str
            } else {
                Kind::of_plain(&leaf)
            };
            let (node, text) = if encrypted {
                (Node::Str(String::new()), String::new())
            } else {
                let text = scalar_text(&leaf).unwrap_or_default();
                (leaf, text)
            };
            leaves.push(Leaf {
                path: shown.clone(),
                text,
                encrypted,
                kind,
            });
            node
        }
    }
}

/// The data key of a SOPS file, opened with `identities` (for
/// cross-checks against other age implementations; never print it).
pub fn open_data_key(
    file: &str,
    bytes: &[u8],
    identities: Option<&Identities>,
) -> Result<[u8; 32], SopsError> {
    let (_, meta) = parse(file, bytes)?;
    data_key(file, &meta, identities)
}

/// Reads a file into its body and its metadata.
fn parse(file: &str, bytes: &[u8]) -> Result<(Node, Metadata), SopsError> {
    let format_err = |reason: String| SopsError::Format {
        file: file.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format_err(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let (tree, meta) = match Format::of(file, bytes) {
        Format::Yaml => {
            split_meta(crate::yaml::from_str::<Node>(text).map_err(|e| format_err(e.to_string()))?)
        }
        Format::Json => {
            split_meta(serde_json::from_str::<Node>(text).map_err(|e| format_err(e.to_string()))?)
        }
        Format::Dotenv => parse_dotenv(text).map_err(format_err)?,
        Format::Ini => parse_ini(text).map_err(format_err)?,
    };
    let meta = meta.ok_or_else(|| {
        format_err("it has no `sops` metadata block; encrypt it with `sops encrypt`".to_owned())
    })?;
    let meta = Metadata::read(&meta).map_err(format_err)?;
    Ok((tree, meta))
}

/// The parts of the `sops` block driftless uses.
#[derive(Debug, Default)]
struct Metadata {
    age: Vec<(String, String)>,
    /// Non-age key types present, for messages (`pgp FBC7…`).
    others: Vec<String>,
    lastmodified: String,
    mac: Option<String>,
    unencrypted_suffix: Option<String>,
    encrypted_suffix: Option<String>,
    unencrypted_regex: Option<regex::Regex>,
    encrypted_regex: Option<regex::Regex>,
    mac_only_encrypted: bool,
}

impl Metadata {
    fn read(node: &Node) -> Result<Metadata, String> {
        let Node::Map(entries) = node else {
            return Err("`sops` metadata is not a mapping".to_owned());
        };
        let mut m = Metadata::default();
        let text = |v: &Node| match v {
            Node::Str(s) => Some(s.clone()),
            Node::Null => None,
            other => Some(scalar_text(other).unwrap_or_default()),
        };
        let regex = |name: &str, v: &Node| -> Result<Option<regex::Regex>, String> {
            match text(v) {
                Some(r) if !r.is_empty() => regex::Regex::new(&r)
                    .map(Some)
                    .map_err(|e| format!("`sops.{name}` is not a valid regex: {e}")),
                _ => Ok(None),
            }
        };
        for (k, v) in entries {
            match k.as_str() {
                "age" => {
                    for item in list_items(v) {
                        let recipient = get(item, "recipient").and_then(text).unwrap_or_default();
                        let enc = get(item, "enc").and_then(text).unwrap_or_default();
                        m.age.push((recipient, enc));
                    }
                }
                "pgp" | "kms" | "gcp_kms" | "azure_kv" | "hc_vault" | "hckms" => {
                    for item in list_items(v) {
                        let id = ["fp", "arn", "resource_id", "vault_url", "vault_address"]
                            .iter()
                            .find_map(|f| get(item, f).and_then(text))
                            .unwrap_or_default();
                        m.others.push(format!("{k} {id}").trim_end().to_owned());
                    }
                }
                "key_groups" => {
                    return Err(
                        "key groups (Shamir secret sharing) are not supported; use a flat `age` list"
                            .to_owned(),
                    );
                }
                "lastmodified" => m.lastmodified = text(v).unwrap_or_default(),
                "mac" => m.mac = text(v).filter(|s| !s.is_empty()),
                "unencrypted_suffix" => m.unencrypted_suffix = text(v).filter(|s| !s.is_empty()),
                "encrypted_suffix" => m.encrypted_suffix = text(v).filter(|s| !s.is_empty()),
                "unencrypted_regex" => m.unencrypted_regex = regex(k, v)?,
                "encrypted_regex" => m.encrypted_regex = regex(k, v)?,
                "mac_only_encrypted" => {
                    m.mac_only_encrypted =
                        matches!(v, Node::Bool(true)) || matches!(v, Node::Str(s) if s == "true")
                }
                "encrypted_comment_regex" | "unencrypted_comment_regex"
                    if text(v).is_some_and(|s| !s.is_empty()) =>
                {
                    return Err(format!(
                        "`sops.{k}` (comment-driven encryption) is not supported"
                    ));
                }
                _ => {}
            }
        }
        Ok(m)
    }

    fn should_encrypt(&self, path: &[String]) -> bool {
        let mut encrypted = true;
        if let Some(s) = &self.unencrypted_suffix
            && path.iter().any(|p| p.ends_with(s.as_str()))
        {
            encrypted = false;
        }
        if let Some(s) = &self.encrypted_suffix {
            encrypted = path.iter().any(|p| p.ends_with(s.as_str()));
        }
        if let Some(r) = &self.unencrypted_regex
            && path.iter().any(|p| r.is_match(p))
        {
            encrypted = false;
        }
        if let Some(r) = &self.encrypted_regex {
            encrypted = path.iter().any(|p| r.is_match(p));
        }
        encrypted
    }
}

fn get<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match node {
        Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

fn list_items(node: &Node) -> &[Node] {
    match node {
        Node::List(items) => items,
        _ => &[],
    }
}

/// Short form of a recipient for messages (post-quantum ones are 1959
/// characters long).
fn short(recipient: &str) -> String {
    if recipient.len() > 72 {
        format!("{}…", &recipient[..24])
    } else {
        recipient.to_owned()
    }
}

fn join_recipients<'a>(rs: impl Iterator<Item = &'a str>) -> String {
    rs.map(|r| format!("`{}`", short(r)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens the data key from the first age stanza one of `identities` opens.
fn data_key(
    file: &str,
    meta: &Metadata,
    identities: Option<&Identities>,
) -> Result<[u8; 32], SopsError> {
    let file = file.to_owned();
    if meta.age.is_empty() {
        let others = if meta.others.is_empty() {
            "no key at all".to_owned()
        } else {
            meta.others.join(", ")
        };
        return Err(SopsError::NoAgeRecipient { file, others });
    }
    let recipients = join_recipients(meta.age.iter().map(|(r, _)| r.as_str()));
    let Some(ids) = identities else {
        return Err(SopsError::NoIdentity { file, recipients });
    };
    let mut failures = Vec::new();
    for (recipient, enc) in &meta.age {
        match open_age(enc, ids) {
            Ok(key) => return Ok(key),
            Err(e) => failures.push((recipient, e)),
        }
    }
    if meta.age.iter().all(|(r, _)| r.starts_with("age1pq1")) {
        return Err(SopsError::UnsupportedRecipient { file, recipients });
    }
    // A data key that is not 32 bytes is a broken file, not a wrong key.
    if let Some((_, reason)) = failures.iter().find(|(_, e)| e.starts_with("data key")) {
        return Err(SopsError::Format {
            file,
            reason: reason.clone(),
        });
    }
    let ours = ids.public_keys();
    let ours = if ours.is_empty() {
        "only post-quantum identities, which age 0.12 cannot use".to_owned()
    } else {
        ours.join(", ")
    };
    Err(SopsError::WrongIdentity {
        file,
        recipients,
        ours,
    })
}

/// The 32-byte data key from one armored age file.
fn open_age(armored: &str, ids: &Identities) -> Result<[u8; 32], String> {
    let reader = age::armor::ArmoredReader::new(armored.as_bytes());
    let decryptor = age::Decryptor::new(reader).map_err(|e| format!("age: {e}"))?;
    let mut stream = decryptor
        .decrypt(ids.x25519.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| format!("age: {e}"))?;
    let mut key = Vec::with_capacity(32);
    stream
        .by_ref()
        .take(33)
        .read_to_end(&mut key)
        .map_err(|e| format!("age: {e}"))?;
    <[u8; 32]>::try_from(key.as_slice())
        .map_err(|_| format!("data key is {} bytes, not 32", key.len()))
}

/// A parsed `ENC[…]` value: its plaintext and its sops type.
fn open_value(value: &str, key: &[u8; 32], aad: &str) -> Result<(Vec<u8>, String), String> {
    let inner = value
        .strip_prefix(ENC_PREFIX)
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| "not an `ENC[AES256_GCM,…]` value".to_owned())?;
    let mut parts = [None::<&str>; 4];
    for part in inner.split(',') {
        let (name, v) = part
            .split_once(':')
            .ok_or_else(|| format!("malformed field `{part}`"))?;
        let slot = match name {
            "data" => 0,
            "iv" => 1,
            "tag" => 2,
            "type" => 3,
            other => return Err(format!("unknown field `{other}`")),
        };
        parts[slot] = Some(v);
    }
    let field = |i: usize, name: &str| parts[i].ok_or_else(|| format!("no `{name}` field"));
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |i: usize, name: &str| {
        b64.decode(field(i, name)?)
            .map_err(|e| format!("`{name}` is not base64: {e}"))
    };
    let mut data = decode(0, "data")?;
    let iv = decode(1, "iv")?;
    let tag = decode(2, "tag")?;
    let kind = field(3, "type")?.to_owned();
    if iv.len() != 32 {
        return Err(format!("IV is {} bytes; sops writes 32", iv.len()));
    }
    if tag.len() != 16 {
        return Err(format!("tag is {} bytes, not 16", tag.len()));
    }
    let cipher = SopsGcm::new(key.into());
    cipher
        .decrypt_in_place_detached(
            iv.as_slice().into(),
            aad.as_bytes(),
            &mut data,
            tag.as_slice().into(),
        )
        .map_err(|_| "authentication failed".to_owned())?;
    Ok((data, kind))
}

/// `lastmodified` as sops re-formats it for the MAC's additional data
/// (Go's `time.RFC3339`: whole seconds, `Z` for UTC).
fn lastmodified_aad(lastmodified: &str) -> Result<String, String> {
    let t = chrono::DateTime::parse_from_rfc3339(lastmodified)
        .map_err(|e| format!("`sops.lastmodified` `{lastmodified}` is not RFC 3339: {e}"))?;
    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The walk over the document: decrypts, hashes, collects leaves.
struct Walk<'a> {
    file: &'a str,
    meta: &'a Metadata,
    key: &'a [u8; 32],
    hash: sha2::Sha512,
    leaves: Vec<Leaf>,
}

impl Walk<'_> {
    /// `keys`: the map keys down to `node` (the AAD); `shown`: the path
    /// for messages and [`Leaf::path`], list indexes included.
    fn node(
        &mut self,
        node: Node,
        keys: &mut Vec<String>,
        shown: &mut String,
    ) -> Result<Node, SopsError> {
        match node {
            Node::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let len = push_key(shown, &k);
                    keys.push(k.clone());
                    let v = self.node(v, keys, shown)?;
                    keys.pop();
                    shown.truncate(len);
                    out.push((k, v));
                }
                Ok(Node::Map(out))
            }
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.into_iter().enumerate() {
                    let len = push_index(shown, i);
                    out.push(self.node(v, keys, shown)?);
                    shown.truncate(len);
                }
                Ok(Node::List(out))
            }
            Node::Null => Ok(Node::Null),
            leaf => self.leaf(leaf, keys, shown),
        }
    }

    fn leaf(&mut self, leaf: Node, keys: &[String], shown: &str) -> Result<Node, SopsError> {
        let encrypted = self.meta.should_encrypt(keys);
        let value_err = |reason: String| SopsError::Value {
            file: self.file.to_owned(),
            path: shown.to_owned(),
            reason,
        };
        let (node, text, kind) = match (&leaf, encrypted) {
            (Node::Str(s), true) if s.is_empty() => (leaf.clone(), String::new(), Kind::Str),
            (Node::Str(s), true) => {
                let aad = format!("{}:", keys.join(":"));
                let (plain, kind) = open_value(s, self.key, &aad).map_err(value_err)?;
                let plain = String::from_utf8(plain)
                    .map_err(|_| value_err("the plaintext is not UTF-8".to_owned()))?;
                let text = canonical(&plain, &kind).map_err(value_err)?;
                (Node::Str(text.clone()), text, Kind::of_sops(&kind))
            }
            (_, true) => {
                return Err(value_err(
                    "it is not encrypted, though the file's rules say it must be".to_owned(),
                ));
            }
            (other, false) => (
                other.clone(),
                scalar_text(other).unwrap_or_default(),
                Kind::of_plain(other),
            ),
        };
        if !self.meta.mac_only_encrypted || encrypted {
            self.hash.update(text.as_bytes());
        }
        self.leaves.push(Leaf {
            path: shown.to_owned(),
            text,
            encrypted,
            kind,
        });
        Ok(node)
    }
}

/// Appends map key `key` to a shown path (`a.b`); returns the length to
/// truncate back to.
fn push_key(path: &mut String, key: &str) -> usize {
    let len = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    len
}

/// Appends list index `i` to a shown path (`a[1]`); returns the length to
/// truncate back to.
fn push_index(path: &mut String, i: usize) -> usize {
    let len = path.len();
    let _ = write!(path, "[{i}]");
    len
}

/// The bytes sops hashes for a decrypted value of sops type `kind`
/// (`ToBytes` of the value `cipher.Decrypt` parses).
fn canonical(plain: &str, kind: &str) -> Result<String, String> {
    match kind {
        "str" | "bytes" | "time" | "comment" => Ok(plain.to_owned()),
        "int" => plain
            .parse::<i64>()
            .map(|i| i.to_string())
            .map_err(|_| format!("`{kind}` value does not parse")),
        "float" => plain
            .parse::<f64>()
            .map(format_float)
            .map_err(|_| format!("`{kind}` value does not parse")),
        "bool" => match plain {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok("True".to_owned()),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok("False".to_owned()),
            _ => Err(format!("`{kind}` value does not parse")),
        },
        other => Err(format!("unknown value type `{other}`")),
    }
}

impl Kind {
    /// The kind of a sops `type:` ([`canonical`] has checked it).
    fn of_sops(kind: &str) -> Kind {
        match kind {
            "int" => Kind::Int,
            "float" => Kind::Float,
            "bool" => Kind::Bool,
            _ => Kind::Str,
        }
    }

    fn of_plain(node: &Node) -> Kind {
        match node {
            Node::Int(_) | Node::UInt(_) => Kind::Int,
            Node::Float(_) => Kind::Float,
            Node::Bool(_) => Kind::Bool,
            _ => Kind::Str,
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: shortest digits, no
/// exponent, which is what Rust's `Display` for `f64` prints.
fn format_float(f: f64) -> String {
    format!("{f}")
}

/// A plain scalar as sops hashes it.
fn scalar_text(node: &Node) -> Option<String> {
    match node {
        Node::Bool(true) => Some("True".to_owned()),
        Node::Bool(false) => Some("False".to_owned()),
        Node::Int(i) => Some(i.to_string()),
        Node::UInt(u) => Some(u.to_string()),
        Node::Float(f) => Some(format_float(*f)),
        Node::Str(s) => Some(s.clone()),
        Node::Null | Node::List(_) | Node::Map(_) => None,
    }
}

/// Splits a YAML/JSON document into its body and its `sops` block.
fn split_meta(doc: Node) -> (Node, Option<Node>) {
    match doc {
        Node::Map(entries) => {
            let mut meta = None;
            let body = entries
                .into_iter()
                .filter_map(|(k, v)| {
                    if k == "sops" {
                        meta = Some(v);
                        None
                    } else {
                        Some((k, v))
                    }
                })
                .collect();
            (Node::Map(body), meta)
        }
        other => (other, None),
    }
}

/// dotenv as the sops store reads it: `KEY=VALUE` lines (`\n` in a value
/// is a newline), `#` comments, metadata as `sops_*` keys.
fn parse_dotenv(text: &str) -> Result<(Node, Option<Node>), String> {
    let mut body = Vec::new();
    let mut flat = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {} is not `KEY=VALUE`", n + 1))?;
        let v = v.replace("\\n", "\n");
        match k.strip_prefix("sops_") {
            Some(meta) => flat.push((meta.to_owned(), v)),
            None => body.push((k.to_owned(), Node::Str(v))),
        }
    }
    let meta = (!flat.is_empty()).then(|| unflatten(flat));
    Ok((Node::Map(body), meta))
}

/// INI as the sops store reads it: sections are maps, every value a string,
/// `;`/`#` comments, metadata in a `[sops]` section.
fn parse_ini(text: &str) -> Result<(Node, Option<Node>), String> {
    let mut sections: Vec<(String, Vec<(String, Node)>)> = vec![("DEFAULT".to_owned(), vec![])];
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_owned(), Vec::new()));
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {} is not `key = value` or `[section]`", n + 1))?;
        if let Some((_, items)) = sections.last_mut() {
            items.push((k.trim().to_owned(), Node::Str(v.trim().to_owned())));
        }
    }
    let mut meta = None;
    let mut body = Vec::new();
    for (name, items) in sections {
        if name == "sops" {
            let flat = items
                .into_iter()
                .map(|(k, v)| match v {
                    Node::Str(s) => (k, s.replace("\\n", "\n")),
                    _ => (k, String::new()),
                })
                .collect();
            meta = Some(unflatten(flat));
        } else if !(name == "DEFAULT" && items.is_empty()) {
            body.push((name, Node::Map(items)));
        }
    }
    Ok((Node::Map(body), meta))
}

/// Rebuilds the `sops` block from flattened keys (`age__list_0__map_enc`;
/// `stores/flatten.go`), in any order.
fn unflatten(flat: Vec<(String, String)>) -> Node {
    let mut root = Node::Map(Vec::new());
    for (key, value) in flat {
        let mut segments = Vec::new();
        let mut rest = key.as_str();
        let first_end = rest.find("__").unwrap_or(rest.len());
        segments.push(Seg::Key(rest[..first_end].to_owned()));
        rest = &rest[first_end..];
        while let Some(r) = rest.strip_prefix("__") {
            let end = r.find("__").unwrap_or(r.len());
            let seg = &r[..end];
            segments.push(match seg.strip_prefix("list_") {
                Some(i) if i.parse::<usize>().is_ok() => Seg::Index(i.parse().unwrap_or(0)),
                _ => Seg::Key(seg.strip_prefix("map_").unwrap_or(seg).to_owned()),
            });
            rest = &r[end..];
        }
        insert(&mut root, &segments, Node::Str(value));
    }
    root
}

enum Seg {
    Key(String),
    Index(usize),
}

fn insert(node: &mut Node, path: &[Seg], value: Node) {
    let Some((first, rest)) = path.split_first() else {
        *node = value;
        return;
    };
    match first {
        Seg::Key(k) => {
            if !matches!(node, Node::Map(_)) {
                *node = Node::Map(Vec::new());
            }
            if let Node::Map(entries) = node {
                let i = match entries.iter().position(|(e, _)| e == k) {
                    Some(i) => i,
                    None => {
                        entries.push((k.clone(), Node::Null));
                        entries.len() - 1
                    }
                };
                insert(&mut entries[i].1, rest, value);
            }
        }
        Seg::Index(i) => {
            if !matches!(node, Node::List(_)) {
                *node = Node::List(Vec::new());
            }
            if let Node::List(items) = node {
                // Flattened lists are small (one entry per recipient).
                let i = (*i).min(1024);
                while items.len() <= i {
                    items.push(Node::Null);
                }
                insert(&mut items[i], rest, value);
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML or JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(i64::try_from(v).map_or(Node::UInt(v), Node::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Node>()? {
            items.push(v);
        }
        Ok(Node::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<Node, Node>()? {
            let k = match k {
                Node::Str(s) => s,
                Node::Bool(b) => b.to_string(),
                Node::Null => "null".to_owned(),
                other => scalar_text(&other).ok_or_else(|| {
                    de::Error::custom("a mapping key is a list or mapping; sops keys are strings")
                })?,
            };
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
}

impl Node {
    /// As JSON, for templates, with `leaf` deciding each scalar's value
    /// (given the path as in [`Leaf::path`] and the node).
    pub fn to_json(
        &self,
        leaf: &mut dyn FnMut(&str, &Node) -> serde_json::Value,
    ) -> serde_json::Value {
        fn go(
            node: &Node,
            path: &mut String,
            leaf: &mut dyn FnMut(&str, &Node) -> serde_json::Value,
        ) -> serde_json::Value {
            match node {
                Node::Map(entries) => {
                    let mut map = serde_json::Map::new();
                    for (k, v) in entries {
                        let len = push_key(path, k);
                        map.insert(k.clone(), go(v, path, leaf));
                        path.truncate(len);
                    }
                    serde_json::Value::Object(map)
                }
                Node::List(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    for (i, v) in items.iter().enumerate() {
                        let len = push_index(path, i);
                        out.push(go(v, path, leaf));
                        path.truncate(len);
                    }
                    serde_json::Value::Array(out)
                }
                Node::Null => serde_json::Value::Null,
                scalar => leaf(path, scalar),
            }
        }
        go(self, &mut String::new(), leaf)
    }

    /// A plain scalar as JSON.
    pub fn scalar_json(&self) -> serde_json::Value {
        match self {
            Node::Bool(b) => serde_json::Value::Bool(*b),
            Node::Int(i) => (*i).into(),
            Node::UInt(u) => (*u).into(),
            Node::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Node::Str(s) => serde_json::Value::String(s.clone()),
            Node::Null | Node::List(_) | Node::Map(_) => serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_sops_name;

    #[test]
    fn sops_names_are_recognised_but_not_the_creation_rules() {
        for yes in [
            "app.sops.env",
            "a/b/db.sops.yaml",
            "x.sops.yml",
            "x.SOPS.JSON",
            "c.sops.ini",
        ] {
            assert!(is_sops_name(yes), "{yes}");
        }
        for no in [
            ".sops.yaml",
            "dir/.sops.yaml",
            "app.env",
            "sops.yaml",
            "app.sops.yaml.j2",
            "app.sops.txt",
        ] {
            assert!(!is_sops_name(no), "{no}");
        }
    }
}
