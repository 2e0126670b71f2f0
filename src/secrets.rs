//! Secrets: values that never come from Git and never leave driftless
//! unmasked.
//!
//! `secret("name")` in a template reads `<secrets-dir>/<name>` or the
//! environment variable `DRIFTLESS_SECRET_<NAME>` ([`SecretSource`]). Every
//! value handed out is recorded, and a [`Masker`] built from them replaces
//! each occurrence — raw, base64, JSON-escaped, URL-encoded — in anything
//! driftless prints, logs, stores or serves.
//!
//! Log lines, from any crate (bollard logs request bodies at `debug`), pass
//! a process-wide masker: [`mask_logs_of`] adds values to it and
//! [`log_writer`] is the writer the binary's subscriber formats into.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::{PoisonError, RwLock};

use base64::Engine as _;

/// What masked text shows instead of a secret.
pub const MASK: &str = "******";

/// Replaces every known secret value, in each encoding it may appear in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masker {
    /// Needles, longest first, so a longer encoding wins over a substring.
    needles: Vec<String>,
}

/// Values shorter than this cannot be masked without wrecking the output.
pub const MIN_SECRET_LEN: usize = 4;

impl Masker {
    pub fn from_values<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut m = Masker::default();
        for v in values {
            m.add(v.as_ref());
        }
        m
    }

    /// Adds a secret value and its encodings.
    pub fn add(&mut self, value: &str) {
        if value.len() < MIN_SECRET_LEN {
            return;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forms = [
            value.to_owned(),
            b64.encode(value),
            b64url.encode(value),
            json_escape(value),
            url_encode(value),
        ];
        for f in forms {
            if f.len() >= MIN_SECRET_LEN && !self.needles.contains(&f) {
                self.needles.push(f);
            }
        }
        self.needles
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    /// Adds every value of another masker.
    pub fn merge(&mut self, other: &Masker) {
        for n in &other.needles {
            if !self.needles.contains(n) {
                self.needles.push(n.clone());
            }
        }
        self.needles
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every secret occurrence replaced by [`MASK`].
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = Cow::Owned(out.replace(needle.as_str(), MASK));
            }
        }
        out
    }

    /// Masks a JSON value in place (every string, keys included).
    pub fn mask_json(&self, value: &mut serde_json::Value) {
        if self.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(m) = self.mask(s) {
                    *s = m;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            serde_json::Value::Object(map) => {
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    self.mask_json(&mut v);
                    map.insert(self.mask(&k).into_owned(), v);
                }
            }
            _ => {}
        }
    }
}

/// What every log line is masked with: each value [`mask_logs_of`] was
/// given, raw and in its encodings, and each of those JSON-escaped once more
/// (the JSON log format escapes a message that already quotes a JSON body).
static LOG_MASKER: RwLock<Masker> = RwLock::new(Masker {
    needles: Vec::new(),
});

/// Masks every later log line against `masker`'s values too.
pub fn mask_logs_of(masker: &Masker) {
    let mut extra = masker.clone();
    for n in &masker.needles {
        let json = json_escape(n);
        if !extra.needles.contains(&json) {
            extra.needles.push(json);
        }
    }
    let mut log = LOG_MASKER.write().unwrap_or_else(PoisonError::into_inner);
    log.merge(&extra);
}

/// `line` masked with the process-wide log masker.
pub fn mask_log_line(line: &str) -> String {
    let log = LOG_MASKER.read().unwrap_or_else(PoisonError::into_inner);
    log.mask(line).into_owned()
}

/// A log line being formatted: collected whole, then masked and written to
/// stderr when the subscriber drops it (once per event), so a secret split
/// across two `write` calls is still seen whole.
#[derive(Debug, Default)]
pub struct LogWriter {
    line: Vec<u8>,
}

/// The `MakeWriter` of the binary's tracing subscriber.
pub fn log_writer() -> LogWriter {
    LogWriter::default()
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = mask_log_line(&String::from_utf8_lossy(&self.line));
        // Nowhere to report a failed write to stderr.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// `s` as it appears inside a JSON string (without the quotes).
fn json_escape(s: &str) -> String {
    let json = serde_json::to_string(s).expect("string serialises");
    json[1..json.len() - 1].to_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where secret values come from: a directory of files and/or environment
/// variables. Never the repo.
#[derive(Debug, Clone, Default)]
pub struct SecretSource {
    /// Directory holding one file per secret (`--secrets-dir`).
    pub dir: Option<std::path::PathBuf>,
    /// Read `DRIFTLESS_SECRET_<NAME>` variables (on by default in the CLI;
    /// tests turn it off to stay hermetic).
    pub from_env: bool,
}

/// Why a secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret `{0}` is not set; put it in the secrets directory as a file named `{0}` or set {1}"
    )]
    Missing(String, String),
    #[error("secret name `{0}` is invalid; use letters, digits, `_` and `-`")]
    BadName(String),
    #[error(
        "secret `{0}` is shorter than {MIN_SECRET_LEN} characters and could not be masked in output"
    )]
    TooShort(String),
    #[error("secret `{name}`: {message}")]
    Unreadable { name: String, message: String },
}

impl SecretSource {
    /// The environment variable that holds secret `name`.
    pub fn env_var(name: &str) -> String {
        let upper: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("DRIFTLESS_SECRET_{upper}")
    }

    /// The age identities SOPS files are decrypted with: the file named by
    /// `DRIFTLESS_AGE_IDENTITY_FILE` (when variables are read), else
    /// `age.key` in the secrets directory; `Ok(None)` when neither is there.
    pub fn age_identities(&self) -> Result<Option<crate::sops::Identities>, String> {
        use crate::sops::{IDENTITY_FILE_ENV, IDENTITY_FILE_NAME, Identities};
        let read = |path: &std::path::Path, what: &str| {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))?;
            Identities::parse(&text).map_err(|e| format!("{what} {}: {e}", path.display()))
        };
        if self.from_env
            && let Some(path) = std::env::var_os(IDENTITY_FILE_ENV)
        {
            return read(std::path::Path::new(&path), IDENTITY_FILE_ENV).map(Some);
        }
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(IDENTITY_FILE_NAME);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => read(&path, "age identity file").map(Some),
        }
    }

    /// Looks a secret up: file first, then environment variable. A trailing
    /// newline in a file is dropped (as `echo pw > file` writes one).
    pub fn get(&self, name: &str) -> Result<String, SecretError> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(SecretError::BadName(name.to_owned()));
        }
        let mut value = None;
        if let Some(dir) = &self.dir {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(s) => {
                    let trimmed = s.strip_suffix('\n').unwrap_or(&s);
                    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
                    value = Some(trimmed.to_owned());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SecretError::Unreadable {
                        name: name.to_owned(),
                        message: e.to_string(),
                    });
                }
            }
        }
        if value.is_none() && self.from_env {
            value = std::env::var(Self::env_var(name)).ok();
        }
        let value =
            value.ok_or_else(|| SecretError::Missing(name.to_owned(), Self::env_var(name)))?;
        if value.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(name.to_owned()));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_raw_base64_json_and_url_forms() {
        let secret = "p@ss \"word\"/+=";
        let m = Masker::from_values([secret]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let json = serde_json::to_string(secret).unwrap();
        let text = format!(
            "raw={secret} b64={b64} json={json} url={}",
            url_encode(secret)
        );
        let masked = m.mask(&text);
        assert!(!masked.contains("ss \"word"), "{masked}");
        assert!(!masked.contains(&b64), "{masked}");
        assert!(!masked.contains("p%40ss"), "{masked}");
        assert!(!masked.contains(r#"p@ss \"word\""#), "{masked}");
        assert_eq!(masked.matches(MASK).count(), 4, "{masked}");
    }

    #[test]
    fn log_lines_are_masked_raw_and_json_escaped_twice() {
        let secret = "log\"secret/value";
        mask_logs_of(&Masker::from_values([secret]));
        let once = json_escape(secret);
        let twice = json_escape(&once);
        let line = format!("body={secret} json={once} log-json={twice}");
        let masked = mask_log_line(&line);
        assert_eq!(masked, "body=****** json=****** log-json=******");
        let mut w = log_writer();
        w.write_all(b"split ").unwrap();
        w.write_all(b"write").unwrap();
        assert_eq!(w.line, b"split write");
        w.line.clear();
    }

    #[test]
    fn mask_json_masks_nested_strings_and_keys() {
        let m = Masker::from_values(["topsecret"]);
        let mut v = serde_json::json!({"a": ["x topsecret y"], "topsecret": 1});
        m.mask_json(&mut v);
        assert_eq!(v, serde_json::json!({"a": ["x ****** y"], "******": 1}));
    }

    #[test]
    fn reads_files_then_env_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db_password"), "s3cr3t-value\n").unwrap();
        let src = SecretSource {
            dir: Some(dir.path().to_owned()),
            from_env: false,
        };
        assert_eq!(src.get("db_password").unwrap(), "s3cr3t-value");
        let err = src.get("api_token").unwrap_err().to_string();
        assert!(err.contains("DRIFTLESS_SECRET_API_TOKEN"), "{err}");
        assert!(matches!(
            src.get("../etc/passwd"),
            Err(SecretError::BadName(_))
        ));
        std::fs::write(dir.path().join("short"), "ab").unwrap();
        assert!(matches!(src.get("short"), Err(SecretError::TooShort(_))));
    }
}
