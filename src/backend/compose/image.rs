//! Image references, their resolution to image ids, and registry auth.
//!
//! Owns the rules that turn what a Compose file says (`redis`,
//! `127.0.0.1:5000/api:1.4`, `img@sha256:…`) into what the engine lists
//! (`RepoTags`, `RepoDigests`), so one `list_images` call resolves every
//! service's image without a call per service; and reads registry
//! credentials from the standard Docker client config.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::models::ImageSummary;

/// A reference in the form the engine lists it: Docker Hub's
/// `docker.io/library/` and `docker.io/` prefixes dropped, `:latest` added
/// when there is neither tag nor digest.
pub fn normalize(reference: &str) -> String {
    let mut r = reference.trim();
    for prefix in [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ] {
        if let Some(rest) = r.strip_prefix(prefix) {
            r = rest;
            break;
        }
    }
    if r.contains('@') {
        return r.to_owned();
    }
    // A tag is a `:` after the last `/` (a `:` before it is a registry port).
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') {
        r.to_owned()
    } else {
        format!("{r}:latest")
    }
}

/// The registry host a reference pulls from (`docker.io` for Docker Hub).
pub fn registry(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// Splits a normalised reference into the `fromImage` and `tag` parameters
/// of an image pull (a digest stays in `fromImage`).
pub fn pull_parts(reference: &str) -> (String, Option<String>) {
    let normalized = normalize(reference);
    if normalized.contains('@') {
        return (normalized, None);
    }
    let (repo, tag) = normalized
        .rsplit_once(':')
        .expect("normalize adds a tag when there is none");
    (repo.to_owned(), Some(tag.to_owned()))
}

/// Maps each of `references` that is present on the engine to its image id,
/// from the result of one `list_images` call.
pub fn resolve<'a>(
    references: impl IntoIterator<Item = &'a str>,
    images: &[ImageSummary],
) -> BTreeMap<String, String> {
    let mut by_name: BTreeMap<String, &str> = BTreeMap::new();
    for image in images {
        for name in image.repo_tags.iter().chain(&image.repo_digests) {
            by_name.insert(normalize(name), &image.id);
        }
    }
    let mut out = BTreeMap::new();
    for reference in references {
        // A reference may also be an image id itself.
        let id = if reference.starts_with("sha256:") {
            images
                .iter()
                .find(|i| i.id == reference)
                .map(|i| i.id.as_str())
        } else {
            by_name.get(&normalize(reference)).copied()
        };
        if let Some(id) = id {
            out.insert(reference.to_owned(), id.to_owned());
        }
    }
    out
}

/// The Docker client config file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
}

/// The `auths` of a Docker client config; `None` when the file is missing
/// or has none.
fn auths(config: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", config.display())),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    Ok(json.get("auths").and_then(|a| a.as_object()).cloned())
}

/// The login of one `auths` entry (`auth` is base64 `user:password`), for
/// `registry`; `None` for an entry without `auth`.
fn login(
    config: &Path,
    key: &str,
    entry: &serde_json::Value,
    registry: &str,
) -> Result<Option<DockerCredentials>, String> {
    let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| {
            format!(
                "{}: auths.{key}.auth is not base64 `user:password`",
                config.display()
            )
        })?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| format!("{}: auths.{key}.auth is not UTF-8", config.display()))?;
    let (user, password) = decoded.split_once(':').ok_or_else(|| {
        format!(
            "{}: auths.{key}.auth is not `user:password`",
            config.display()
        )
    })?;
    Ok(Some(DockerCredentials {
        username: Some(user.to_owned()),
        password: Some(password.to_owned()),
        serveraddress: Some(registry.to_owned()),
        ..DockerCredentials::default()
    }))
}

/// Credentials for `registry` from a Docker client config's `auths`
/// (`auth` is base64 `user:password`). Credential helpers (`credsStore`,
/// `credHelpers`) are not run. A missing or unreadable config means
/// anonymous pulls; a malformed entry is an error naming the file.
pub fn credentials(config: &Path, registry: &str) -> Result<Option<DockerCredentials>, String> {
    let Some(auths) = auths(config)? else {
        return Ok(None);
    };
    // Docker Hub's entry is keyed by its legacy URL.
    let keys: Vec<String> = if registry == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ]
    } else {
        vec![
            registry.to_owned(),
            format!("https://{registry}"),
            format!("http://{registry}"),
            format!("https://{registry}/v1/"),
            format!("https://{registry}/v2/"),
        ]
    };
    let Some(entry) = keys.iter().find_map(|k| auths.get(k)) else {
        return Ok(None);
    };
    login(config, registry, entry, registry)
}

/// Every login of a Docker client config's `auths`, keyed as the file
/// keys them: what a build sends in `X-Registry-Config` for the pulls of
/// its `FROM` images, as the docker CLI and docker-compose send them (the
/// engine picks the entry of each base image's registry).
pub fn all_credentials(config: &Path) -> Result<HashMap<String, DockerCredentials>, String> {
    let mut out = HashMap::new();
    for (key, entry) in auths(config)?.unwrap_or_default() {
        if let Some(c) = login(config, &key, &entry, &key)? {
            out.insert(key, c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_the_engine_lists() {
        assert_eq!(normalize("redis"), "redis:latest");
        assert_eq!(normalize("docker.io/library/redis:7"), "redis:7");
        assert_eq!(normalize("127.0.0.1:5000/api"), "127.0.0.1:5000/api:latest");
        assert_eq!(
            normalize("127.0.0.1:5000/api:1.4"),
            "127.0.0.1:5000/api:1.4"
        );
        assert_eq!(normalize("a/b@sha256:00"), "a/b@sha256:00");
        assert_eq!(registry("redis"), "docker.io");
        assert_eq!(registry("grafana/grafana"), "docker.io");
        assert_eq!(registry("127.0.0.1:1/none:1"), "127.0.0.1:1");
        assert_eq!(registry("localhost/x"), "localhost");
        assert_eq!(
            pull_parts("127.0.0.1:5000/api"),
            ("127.0.0.1:5000/api".into(), Some("latest".into()))
        );
    }

    #[test]
    fn resolves_tags_and_digests_from_one_listing() {
        let images = vec![ImageSummary {
            id: "sha256:aaa".into(),
            repo_tags: vec!["redis:7".into()],
            repo_digests: vec!["redis@sha256:ddd".into()],
            ..ImageSummary::default()
        }];
        let ids = resolve(
            ["docker.io/library/redis:7", "redis@sha256:ddd", "nginx"],
            &images,
        );
        assert_eq!(ids.len(), 2);
        assert_eq!(ids["docker.io/library/redis:7"], "sha256:aaa");
        assert_eq!(ids["redis@sha256:ddd"], "sha256:aaa");
    }

    #[test]
    fn reads_auths_from_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let c = credentials(&path, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some("s3cret:x"));
        assert!(credentials(&path, "docker.io").unwrap().is_none());
        let all = all_credentials(&path).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all["127.0.0.1:5000"].password.as_deref(), Some("s3cret:x"));
        assert!(
            all_credentials(&dir.path().join("none.json"))
                .unwrap()
                .is_empty()
        );
        assert!(
            credentials(&dir.path().join("none.json"), "x")
                .unwrap()
                .is_none()
        );
    }
}
