//! The `secret("name")` template function and its ledger: which secrets a
//! render asked for, which were missing, and every value handed out (for
//! the [`Masker`]).
//!
//! One ledger belongs to one [`super::Renderer`] and is shared by every
//! thread rendering with it, hence the `Mutex`. Each name is looked up once
//! per renderer: two files that read the same secret get the same value even
//! if the file under the secrets directory changes halfway through a render.
//!
//! A render runs inside a [`Scope`] (one per thread, as minijinja renders on
//! the calling thread): it collects the secrets the render read, and in a
//! shadow render makes `secret()` hand out stand-ins instead (see
//! [`super::shadow`]). Text a shadow render shows to derive from a secret is
//! recorded here too ([`Ledger::add_derived`]) and masked like the values.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use minijinja::{Error, ErrorKind};

use super::SecretMode;
use crate::secrets::{MIN_SECRET_LEN, Masker, SecretError, SecretSource};
use crate::sops;
use crate::source::{self, Snapshot};

/// What a lookup of one name gave.
#[derive(Debug, Clone)]
enum Lookup {
    Found(String),
    Missing(SecretError),
}

/// Secret lookups of one renderer.
#[derive(Debug)]
pub(super) struct Ledger {
    source: SecretSource,
    mode: SecretMode,
    seen: Mutex<BTreeMap<String, Lookup>>,
    /// Values that came from elsewhere (Compose secrets read from a repo
    /// file or a variable), masked like the ones handed out.
    extra: Mutex<Vec<String>>,
    /// Stand-ins by (name, shadow), so one shadow render sees one value
    /// per name.
    stand_ins: Mutex<BTreeMap<(String, usize), String>>,
    /// Seeds the stand-ins: differs per renderer.
    seed: u64,
    /// Rendered text derived from secrets (filters, slices, macros, ...).
    derived: Mutex<BTreeSet<String>>,
    /// SOPS files by repo path, decrypted once per renderer (or why not:
    /// the message of the template error it becomes, the same for every
    /// later call, so a `String` rather than an error that cannot be cloned).
    sops: Mutex<BTreeMap<String, Result<Arc<SopsFile>, String>>>,
    /// This host's age identities, read on the first `sops()`.
    identities: OnceLock<Result<Option<sops::Identities>, String>>,
}

/// One decrypted SOPS file.
#[derive(Debug)]
struct SopsFile {
    decrypted: sops::Decrypted,
    /// Paths of its encrypted (secret) leaves.
    secrets: BTreeSet<String>,
    /// Not decrypted (no identity in [`SecretMode::Placeholder`]): its
    /// encrypted values render as placeholders.
    placeholders: bool,
}

/// The render running on this thread.
#[derive(Debug, Default)]
struct Scope {
    /// `Some(k)`: shadow render `k`, `secret()` hands out stand-ins.
    shadow: Option<usize>,
    /// Secrets that were set and handed out (or stood in for).
    used: BTreeSet<String>,
    /// Missing secrets that render as placeholders even in
    /// [`SecretMode::Require`], so one run finds every missing secret of a
    /// file (the render fails all the same).
    tolerate: BTreeSet<String>,
    /// The missing secret that failed this render.
    missing: Option<String>,
}

/// What a render read, besides its result.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// The names of the set secrets it read.
    pub used: BTreeSet<String>,
    /// The missing secret that failed it ([`SecretMode::Require`]).
    pub missing: Option<String>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Runs `render` as one render (`shadow`: `Some(k)` for shadow render `k`);
/// returns its result and the names of the set secrets it read.
pub(super) fn scoped<T>(
    shadow: Option<usize>,
    render: impl FnOnce() -> T,
) -> (T, BTreeSet<String>) {
    let (out, reads) = scoped_tolerating(shadow, BTreeSet::new(), render);
    (out, reads.used)
}

/// [`scoped`], with the missing secrets `tolerate` rendered as
/// placeholders; also says which missing secret failed the render.
pub(super) fn scoped_tolerating<T>(
    shadow: Option<usize>,
    tolerate: BTreeSet<String>,
    render: impl FnOnce() -> T,
) -> (T, Reads) {
    let outer = SCOPE.with(|s| {
        s.replace(Some(Scope {
            shadow,
            tolerate,
            ..Scope::default()
        }))
    });
    let out = render();
    let scope = SCOPE.with(|s| s.replace(outer)).unwrap_or_default();
    let reads = Reads {
        used: scope.used,
        missing: scope.missing,
    };
    (out, reads)
}

impl Ledger {
    pub(super) fn new(source: SecretSource, mode: SecretMode) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write_u8(0);
        Ledger {
            source,
            mode,
            seen: Mutex::new(BTreeMap::new()),
            extra: Mutex::new(Vec::new()),
            stand_ins: Mutex::new(BTreeMap::new()),
            seed: seed.finish(),
            derived: Mutex::new(BTreeSet::new()),
            sops: Mutex::new(BTreeMap::new()),
            identities: OnceLock::new(),
        }
    }

    fn seen(&self) -> MutexGuard<'_, BTreeMap<String, Lookup>> {
        // A panic while the lock is held cannot leave the map half-updated
        // (every update is one insert), so a poisoned lock is still usable.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The body of `secret(name)`.
    pub(super) fn secret(&self, name: &str) -> Result<String, Error> {
        let mut seen = self.seen();
        let lookup = match seen.get(name) {
            Some(lookup) => lookup.clone(),
            None => {
                let lookup = match self.source.get(name) {
                    Ok(value) => {
                        // Before the value can reach any log line.
                        crate::secrets::mask_logs_of(&Masker::from_values([&value]));
                        Lookup::Found(value)
                    }
                    Err(e @ SecretError::Missing(..)) => Lookup::Missing(e),
                    // A bad name, a value too short to mask or an unreadable
                    // file is wrong in every mode: report it, record nothing.
                    Err(e) => return Err(Error::new(ErrorKind::InvalidOperation, e.to_string())),
                };
                seen.insert(name.to_owned(), lookup.clone());
                lookup
            }
        };
        drop(seen);
        match (lookup, self.mode) {
            (Lookup::Found(value), _) => Ok(self.hand_out(name, value)),
            (Lookup::Missing(_), SecretMode::Placeholder) => Ok(placeholder(name)),
            (Lookup::Missing(e), SecretMode::Require) => {
                let tolerated = SCOPE.with(|s| {
                    let mut s = s.borrow_mut();
                    let Some(scope) = s.as_mut() else {
                        return false;
                    };
                    let tolerated = scope.tolerate.contains(name);
                    if !tolerated {
                        scope.missing.get_or_insert_with(|| name.to_owned());
                    }
                    tolerated
                });
                if tolerated {
                    Ok(placeholder(name))
                } else {
                    Err(Error::new(ErrorKind::InvalidOperation, e.to_string()))
                }
            }
        }
    }

    /// The body of `sops(path)`: the decrypted document of the repo file
    /// `path`. Each encrypted value is a secret named `path#key.path`:
    /// masked, stood in for by shadow renders, traced through filters like
    /// a `secret()` value. Plain values keep their types.
    pub(super) fn sops(&self, snapshot: &Snapshot, path: &str) -> Result<minijinja::Value, Error> {
        let fail = |message: String| Error::new(ErrorKind::InvalidOperation, message);
        let path = source::normalize(path).map_err(|_| {
            fail(format!(
                "sops(`{path}`): the path must be inside the repository, relative to its root"
            ))
        })?;
        let json = self.sops_json(snapshot, &path).map_err(fail)?;
        Ok(minijinja::Value::from(minijinja::value::Serde(&json)))
    }

    /// The document of the SOPS file `path` (normalized) for one render:
    /// encrypted values handed out (stand-ins in a shadow render).
    pub(super) fn sops_json(
        &self,
        snapshot: &Snapshot,
        path: &str,
    ) -> Result<serde_json::Value, String> {
        let file = self.sops_file(snapshot, path)?;
        Ok(file.decrypted.tree.to_json(&mut |leaf, node| {
            let name = format!("{path}#{leaf}");
            match (file.secrets.contains(leaf), node) {
                (true, _) if file.placeholders => {
                    serde_json::Value::String(sops_placeholder(&name))
                }
                (true, sops::Node::Str(text)) if !text.is_empty() => {
                    serde_json::Value::String(self.hand_out(&name, text.clone()))
                }
                _ => node.scalar_json(),
            }
        }))
    }

    /// The SOPS file `path` (normalized) as a rendered file: decrypted, in
    /// its own store's format ([`sops::emit`]); in [`SecretMode::Placeholder`]
    /// without an identity, its encrypted values as placeholders. Its
    /// values are secrets, recorded when it was decrypted.
    pub(super) fn sops_output(&self, snapshot: &Snapshot, path: &str) -> Result<Vec<u8>, String> {
        let file = self.sops_file(snapshot, path)?;
        let bytes = snapshot.get(path).unwrap_or_default();
        let format = sops::Format::of(path, bytes);
        if format == sops::Format::Dotenv && !file.placeholders {
            // The one written form the masker does not derive itself.
            for leaf in file.decrypted.secrets() {
                if leaf.text.contains('\n') {
                    self.record(&sops::dotenv_form(&leaf.text));
                }
            }
        }
        Ok(sops::emit(&file.decrypted, format, &mut |leaf| {
            file.placeholders
                .then(|| sops_placeholder(&format!("{path}#{}", leaf.path)))
        }))
    }

    /// The top-level keys of the SOPS file `path`; an error when its
    /// document is not a mapping or it does not decrypt.
    pub(super) fn sops_keys(&self, snapshot: &Snapshot, path: &str) -> Result<Vec<String>, String> {
        match &self.sops_file(snapshot, path)?.decrypted.tree {
            sops::Node::Map(entries) => Ok(entries.iter().map(|(k, _)| k.clone()).collect()),
            _ => Err(format!(
                "SOPS file `{path}` is not a mapping, so it cannot be merged into the values"
            )),
        }
    }

    /// `path` decrypted, from the cache or now.
    fn sops_file(&self, snapshot: &Snapshot, path: &str) -> Result<Arc<SopsFile>, String> {
        let mut cache = self.sops.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = cache.get(path) {
            return done.clone();
        }
        let done = self.decrypt(snapshot, path);
        cache.insert(path.to_owned(), done.clone());
        done
    }

    fn decrypt(&self, snapshot: &Snapshot, path: &str) -> Result<Arc<SopsFile>, String> {
        let bytes = snapshot
            .get(path)
            .ok_or_else(|| format!("SOPS file `{path}` is not in the repository"))?;
        let identities = self
            .identities
            .get_or_init(|| self.source.age_identities())
            .as_ref()
            .map_err(Clone::clone)?;
        if identities.is_none() && self.mode == SecretMode::Placeholder {
            // Checked where no identity is present (CI): the shape of the
            // file, its encrypted values as placeholders.
            let outline = sops::outline(path, bytes).map_err(|e| e.to_string())?;
            let secrets = outline.secrets().map(|l| l.path.clone()).collect();
            return Ok(Arc::new(SopsFile {
                decrypted: outline,
                secrets,
                placeholders: true,
            }));
        }
        let decrypted =
            sops::decrypt(path, bytes, identities.as_ref()).map_err(|e| e.to_string())?;
        let mut secrets = BTreeSet::new();
        for leaf in decrypted.secrets() {
            if !leaf.text.is_empty() && leaf.text.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "SOPS file `{path}`: value `{}` is shorter than {MIN_SECRET_LEN} characters and could not be masked in output",
                    leaf.path
                ));
            }
            secrets.insert(leaf.path.clone());
        }
        // Before any value can reach a log line or an output.
        for leaf in decrypted.secrets() {
            self.record(&leaf.text);
        }
        Ok(Arc::new(SopsFile {
            decrypted,
            secrets,
            placeholders: false,
        }))
    }

    /// The encrypted values of each SOPS file read so far, as
    /// `(file, key paths, decrypted)`, for `render` to say which values
    /// came from SOPS (`decrypted` false: rendered as placeholders).
    pub(super) fn sops_values(&self) -> Vec<(String, Vec<String>, bool)> {
        let cache = self.sops.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .iter()
            .filter_map(|(path, f)| {
                let f = f.as_ref().ok()?;
                Some((
                    path.clone(),
                    f.secrets.iter().cloned().collect(),
                    !f.placeholders,
                ))
            })
            .collect()
    }

    /// `value`, or its stand-in in a shadow render; noted in the scope.
    fn hand_out(&self, name: &str, value: String) -> String {
        let shadow = SCOPE.with(|s| {
            let mut s = s.borrow_mut();
            let scope = s.as_mut()?;
            scope.used.insert(name.to_owned());
            scope.shadow
        });
        let Some(k) = shadow else {
            return value;
        };
        let mut stand_ins = self
            .stand_ins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seed = self.seed ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let seed = name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        stand_ins
            .entry((name.to_owned(), k))
            .or_insert_with(|| super::shadow::stand_in(&value, seed))
            .clone()
    }

    /// Records rendered text derived from a secret, to be masked like one.
    pub(super) fn add_derived(&self, spans: &[String]) {
        let mut forms = Vec::new();
        for span in spans {
            forms.extend(super::shadow::read_forms(span));
        }
        // Before the text can reach any log line.
        crate::secrets::mask_logs_of(&Masker::from_values(&forms));
        self.derived
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(forms);
    }

    /// A masker for every value handed out or recorded so far and the
    /// text derived from them.
    pub(super) fn masker(&self) -> Masker {
        let mut m = Masker::from_values(self.seen().values().filter_map(|l| match l {
            Lookup::Found(v) => Some(v.as_str()),
            Lookup::Missing(_) => None,
        }));
        let extra = self.extra.lock().unwrap_or_else(PoisonError::into_inner);
        for v in extra.iter() {
            m.add(v);
        }
        for d in self
            .derived
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            m.add(d);
        }
        m
    }

    /// Records a secret value that did not come from `secret()`, so it is
    /// masked too (log lines from now on, every output through
    /// [`Ledger::masker`]).
    pub(super) fn record(&self, value: &str) {
        crate::secrets::mask_logs_of(&Masker::from_values([value]));
        let mut extra = self.extra.lock().unwrap_or_else(PoisonError::into_inner);
        if !extra.iter().any(|v| v == value) {
            extra.push(value.to_owned());
        }
    }

    /// Names asked for that were not set, sorted.
    pub(super) fn missing(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|(_, l)| matches!(l, Lookup::Missing(_)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every name asked for, set or not, sorted.
    pub(super) fn used(&self) -> Vec<String> {
        self.seen().keys().cloned().collect()
    }
}

/// What an encrypted SOPS value renders as in [`SecretMode::Placeholder`]
/// when this host has no age identity (`<sops:file#key.path>`).
pub(super) fn sops_placeholder(name: &str) -> String {
    format!("<sops:{name}>")
}

/// What a missing secret renders as in [`SecretMode::Placeholder`].
pub(super) fn placeholder(name: &str) -> String {
    format!("<secret:{name}>")
}
