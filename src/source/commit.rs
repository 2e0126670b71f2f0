//! [`CommitId`]: the full hex id of a commit, as Git resolves it — the one
//! type every later stage names a commit with, and the one way to shorten it.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Characters a short commit id keeps: enough to be unambiguous in any repo
/// a person reads history of (Git's own abbreviation grows past 7 in big
/// repos; 12 is what the Linux kernel asks for).
pub const SHORT_LEN: usize = 12;

/// A commit id (40 hex characters for SHA-1 repos). Serialised as the bare
/// string, so stored and served forms are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommitId(String);

impl CommitId {
    /// Wraps an id as resolved (no check: ids come from Git or from what
    /// driftless stored from Git).
    pub fn new(id: impl Into<String>) -> CommitId {
        CommitId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first [`SHORT_LEN`] characters, for people.
    pub fn short(&self) -> &str {
        short(&self.0)
    }
}

/// The first [`SHORT_LEN`] characters of `id` — for ids that arrive as
/// text (a daemon's JSON answer). Cut at a character boundary, so any text
/// is safe.
pub fn short(id: &str) -> &str {
    match id.char_indices().nth(SHORT_LEN) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A commit id reads as its text wherever text is wanted (formatting,
/// `as_deref`, comparisons with a `&str`).
impl std::ops::Deref for CommitId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for CommitId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for CommitId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for CommitId {
    fn from(id: String) -> CommitId {
        CommitId(id)
    }
}

impl From<&str> for CommitId {
    fn from(id: &str) -> CommitId {
        CommitId(id.to_owned())
    }
}

impl PartialEq<str> for CommitId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for CommitId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keeps_twelve_characters_and_never_splits_one() {
        let id = CommitId::new("0123456789abcdef0123456789abcdef01234567");
        assert_eq!(id.short(), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        // A multi-byte character at the cut: kept whole.
        assert_eq!(short("ééééééééééééééé"), "éééééééééééé");
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
    }
}
