//! The `secret("name")` template function and its ledger: which secrets a
//! render asked for, which were missing, and every value handed out (for
//! the [`Masker`]).
//!
//! One ledger belongs to one [`super::Renderer`] and is shared by every
//! thread rendering with it, hence the `Mutex`. Each name is looked up once
//! per renderer: two files that read the same secret get the same value even
//! if the file under the secrets directory changes halfway through a render.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use minijinja::{Error, ErrorKind};

use super::SecretMode;
use crate::secrets::{Masker, SecretError, SecretSource};

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
}

impl Ledger {
    pub(super) fn new(source: SecretSource, mode: SecretMode) -> Self {
        Ledger {
            source,
            mode,
            seen: Mutex::new(BTreeMap::new()),
            extra: Mutex::new(Vec::new()),
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
        match (lookup, self.mode) {
            (Lookup::Found(value), _) => Ok(value),
            (Lookup::Missing(_), SecretMode::Placeholder) => Ok(placeholder(name)),
            (Lookup::Missing(e), SecretMode::Require) => {
                Err(Error::new(ErrorKind::InvalidOperation, e.to_string()))
            }
        }
    }

    /// A masker for every value handed out or recorded so far.
    pub(super) fn masker(&self) -> Masker {
        let mut m = Masker::from_values(self.seen().values().filter_map(|l| match l {
            Lookup::Found(v) => Some(v.as_str()),
            Lookup::Missing(_) => None,
        }));
        let extra = self.extra.lock().unwrap_or_else(PoisonError::into_inner);
        for v in extra.iter() {
            m.add(v);
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

/// What a missing secret renders as in [`SecretMode::Placeholder`].
pub(super) fn placeholder(name: &str) -> String {
    format!("<secret:{name}>")
}
