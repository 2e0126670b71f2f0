//! What a desired-state repo is known as, wherever it is read from.
//!
//! The default ownership id of an environment ([`crate::manifest::instance`])
//! is built from it, so it must be the same for a daemon following
//! `https://token@github.com/acme/ops.git`, a laptop's clone of it and
//! `git@github.com:acme/ops`: the URL of the repo's `origin` without scheme,
//! credentials, port and `.git`; a repo without an origin is known by its
//! canonical path.

use std::path::Path;

/// The identity of a repo whose `origin` remote is `origin` (if any) and
/// which lives at `location`.
pub fn identity(origin: Option<&str>, location: &Path) -> String {
    match origin.map(str::trim).filter(|o| !o.is_empty()) {
        Some(url) => from_url(url),
        None => from_path(location),
    }
}

fn from_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if scheme.eq_ignore_ascii_case("file") {
            return from_path(Path::new(rest));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        return host_and_path(authority, path);
    }
    // scp-like `user@host:path`: a `:` before any `/`.
    if let Some((authority, path)) = url.split_once(':')
        && !authority.is_empty()
        && !authority.contains('/')
    {
        return host_and_path(authority, path);
    }
    from_path(Path::new(url))
}

fn host_and_path(authority: &str, path: &str) -> String {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split_once(':').map_or(host, |(h, _)| h);
    format!("{}/{}", host.to_ascii_lowercase(), trim_repo(path))
}

fn from_path(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let text = path.to_string_lossy();
    let text = text.strip_suffix("/.git").unwrap_or(&text);
    let trimmed = trim_repo(text);
    if text.starts_with('/') {
        format!("/{trimmed}")
    } else {
        trimmed.to_owned()
    }
}

/// `/acme/ops.git/` → `acme/ops`.
fn trim_repo(path: &str) -> &str {
    let path = path.trim_matches('/');
    path.strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_repo_has_one_identity_however_it_is_reached() {
        let nowhere = Path::new("/nonexistent/clone");
        for url in [
            "https://github.com/acme/ops.git",
            "https://x-access-token:secret@GitHub.com/acme/ops",
            "ssh://git@github.com:22/acme/ops.git/",
            "git@github.com:acme/ops.git",
        ] {
            assert_eq!(identity(Some(url), nowhere), "github.com/acme/ops", "{url}");
        }
        assert_eq!(
            identity(Some("file:///srv/nothing-here/ops.git"), nowhere),
            "/srv/nothing-here/ops"
        );
        assert_eq!(
            identity(Some("/srv/nothing-here/ops.git"), nowhere),
            "/srv/nothing-here/ops"
        );
    }

    #[test]
    fn a_repo_without_origin_is_its_canonical_path() {
        let dir = std::env::temp_dir().join(format!("driftless-identity-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("repo/.git")).unwrap();
        let expected = std::fs::canonicalize(dir.join("repo"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(identity(None, &dir.join("repo")), expected);
        assert_eq!(identity(Some(" "), &dir.join("repo/.git")), expected);
        assert_eq!(identity(None, &dir.join("repo/../repo")), expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
