//! Images built from the commit (`build:`): the build hash that decides
//! whether to build, the context tar, and the build itself through the
//! Engine API's classic builder (`POST /build`).
//!
//! The hash covers the context's files (paths, modes, contents) and every
//! build option, and is written to the image as the label
//! [`labels::BUILD`](super::labels::BUILD). The planner compares it with
//! the label on the image the reference names now — read from the one
//! image listing every plan makes — so an unchanged context costs no call
//! and no tar. A context of few files also records each file's digest
//! ([`labels::BUILD_FILES`](super::labels::BUILD_FILES)), so a rebuild
//! names the files that changed.

use std::collections::{BTreeMap, HashMap, VecDeque};

use axum::http::Uri;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;
use serde::Serialize;

use super::hash::sha256_hex;
use super::labels;
use crate::model::compose::{Build, BuildContext, Service, context_digest};

/// The build labels of an image as listed: what it was built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuiltImage {
    /// [`labels::BUILD`]: the build hash.
    pub hash: Option<String>,
    /// [`labels::BUILD_OPTIONS`]: the hash of the options alone.
    pub options: Option<String>,
    /// [`labels::BUILD_FILES`]: `path sha256-prefix` lines.
    pub files: Option<String>,
}

impl BuiltImage {
    /// The build labels among an image's labels.
    pub fn from_labels(l: &HashMap<String, String>) -> BuiltImage {
        BuiltImage {
            hash: l.get(labels::BUILD).cloned(),
            options: l.get(labels::BUILD_OPTIONS).cloned(),
            files: l.get(labels::BUILD_FILES).cloned(),
        }
    }
}

/// The build options in canonical form (what the options hash covers).
#[derive(Serialize)]
struct Options<'a> {
    context: Context<'a>,
    dockerfile: &'a str,
    args: &'a BTreeMap<String, String>,
    target: &'a Option<String>,
    labels: &'a BTreeMap<String, String>,
    network: &'a Option<String>,
    extra_hosts: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    shm_size: Option<u64>,
    cache_from: &'a [String],
    no_cache: bool,
    pull: bool,
    platform: &'a Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Context<'a> {
    Snapshot { dir: &'a str },
    Remote { url: &'a str },
}

fn options(service: &Service, b: &Build) -> String {
    let context = match &b.context {
        BuildContext::Snapshot { dir, .. } => Context::Snapshot { dir },
        BuildContext::Remote { url } => Context::Remote { url },
    };
    serde_json::to_string(&Options {
        context,
        dockerfile: &b.dockerfile,
        args: &b.args,
        target: &b.target,
        labels: &b.labels,
        network: &b.network,
        extra_hosts: &b.extra_hosts,
        tags: &b.tags,
        shm_size: b.shm_size,
        cache_from: &b.cache_from,
        no_cache: b.no_cache,
        pull: b.pull,
        platform: &service.platform,
    })
    .expect("plain data")
}

/// SHA-256 of the build options (platform included).
pub fn options_hash(service: &Service, b: &Build) -> String {
    sha256_hex(options(service, b).as_bytes())
}

/// The repository and ref of a git URL context as the engine reads it
/// (`<repository>#<ref>:<directory>`, `github.com/…` over https); `None`
/// for a URL the engine downloads (a tarball or a Dockerfile).
pub fn git_context(url: &str) -> Option<(String, Option<String>)> {
    let (repo, fragment) = match url.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (url, None),
    };
    let git = ["git://", "git@", "github.com/", "ssh://"]
        .iter()
        .any(|p| url.starts_with(p))
        || ((url.starts_with("http://") || url.starts_with("https://")) && repo.ends_with(".git"));
    if !git {
        return None;
    }
    let repo = if repo.starts_with("github.com/") {
        format!("https://{repo}")
    } else {
        repo.to_owned()
    };
    let reference = fragment
        .map(|f| f.split_once(':').map_or(f, |(r, _)| r))
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    Some((repo, reference))
}

/// The commit a remote git context's ref names, as the live read found it.
pub fn git_commit<'a>(b: &Build, commits: &'a BTreeMap<String, String>) -> Option<&'a str> {
    match &b.context {
        BuildContext::Remote { url } => commits.get(url).map(String::as_str),
        BuildContext::Snapshot { .. } => None,
    }
}

/// The build hash: options and the context's content — for a git URL
/// context, the commit its ref names (`commit`), else its URL alone.
pub fn build_hash(service: &Service, b: &Build, commit: Option<&str>) -> String {
    let content = match &b.context {
        BuildContext::Snapshot { files, .. } => context_digest(files),
        BuildContext::Remote { .. } => commit.unwrap_or_default().to_owned(),
    };
    sha256_hex(format!("{}\n{content}", options_hash(service, b)).as_bytes())
}

/// Largest context whose per-file digests are kept in a label.
const FILES_LABEL_MAX: usize = 200;

/// `path sha256-prefix` per file (` 755` after it for a file sent
/// executable, so a `chmod +x` names the file), for contexts of up to
/// [`FILES_LABEL_MAX`] files.
pub fn files_label(b: &Build) -> Option<String> {
    let BuildContext::Snapshot { files, .. } = &b.context else {
        return None;
    };
    if files.len() > FILES_LABEL_MAX {
        return None;
    }
    Some(
        files
            .iter()
            .map(|f| {
                let digest = &sha256_hex(&f.content)[..16];
                match f.mode {
                    0o644 => format!("{} {digest}", f.path),
                    mode => format!("{} {digest} {mode:o}", f.path),
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The service's build, unless it is pinned to an image id (a rollback
/// runs the image it recorded, never a rebuild).
pub fn of(service: &Service) -> Option<&Build> {
    service
        .build
        .as_ref()
        .filter(|_| !service.image.starts_with("sha256:"))
}

/// Why `service` must be built before it runs, or `None` when the image
/// its reference names was built from exactly this context and options.
/// `commits` holds what the remotes of git URL contexts answered; a
/// remote that did not answer keeps its image while the options hold.
pub fn needed(
    service: &Service,
    live: Option<&BuiltImage>,
    present: bool,
    commits: &BTreeMap<String, String>,
) -> Option<String> {
    let b = of(service)?;
    let Some(live) = live.filter(|_| present) else {
        return Some("not built yet".to_owned());
    };
    let commit = git_commit(b, commits);
    if live.hash.as_deref() == Some(build_hash(service, b, commit).as_str()) {
        return None;
    }
    if live.hash.is_none() {
        return Some("the image was not built by driftless".to_owned());
    }
    if live.options.as_deref() != Some(options_hash(service, b).as_str()) {
        return Some("build options changed".to_owned());
    }
    if let BuildContext::Remote { url } = &b.context {
        let commit = commit?;
        let url = crate::source::git::redact(url);
        return Some(format!(
            "build context changed: {url} is at {}",
            &commit[..commit.len().min(12)]
        ));
    }
    let (Some(old), Some(new)) = (&live.files, files_label(b)) else {
        return Some("build context changed".to_owned());
    };
    let old: BTreeMap<&str, &str> = old.lines().filter_map(|l| l.split_once(' ')).collect();
    let new_map: BTreeMap<&str, &str> = new.lines().filter_map(|l| l.split_once(' ')).collect();
    let mut changed: Vec<&str> = new_map
        .iter()
        .filter(|(p, d)| old.get(*p) != Some(*d))
        .map(|(p, _)| *p)
        .chain(old.keys().filter(|p| !new_map.contains_key(*p)).copied())
        .collect();
    changed.sort_unstable();
    changed.dedup();
    if changed.is_empty() {
        return Some("build context changed".to_owned());
    }
    let shown = changed.len().min(5);
    let more = match changed.len() - shown {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    Some(format!(
        "build context changed: {}{more}",
        changed[..shown].join(", ")
    ))
}

/// The context as a tar (mtime 0, root-owned), in the order of the model;
/// symlinks as symlink entries.
pub fn context_tar(b: &Build) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    if let BuildContext::Snapshot { files, .. } = &b.context {
        for f in files {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            match f.link_target() {
                // A link as the docker CLI sends it: its target text.
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, &f.path, target)?;
                }
                None => {
                    header.set_size(f.content.len() as u64);
                    header.set_mode(f.mode);
                    header.set_entry_type(tar::EntryType::Regular);
                    builder.append_data(&mut header, &f.path, &f.content[..])?;
                }
            }
        }
    }
    builder.into_inner()
}

/// `&key=value` for each pair, encoded for a query.
fn query_pairs(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let pair = form_urlencoded::Serializer::new(String::new())
                .append_pair(k, v)
                .finish();
            format!("&{pair}")
        })
        .collect()
}

/// `uri` with `extra` appended to its query, for the build request only.
fn with_query(uri: &Uri, extra: &str) -> Option<Uri> {
    if !uri.path().ends_with("/build") {
        return None;
    }
    let query = uri.query().unwrap_or_default();
    let path_and_query = format!("{}?{query}{extra}", uri.path());
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Lines of build output kept for an error.
const LOG_TAIL: usize = 20;

/// A failed build: the engine's error and the last lines of its log.
#[derive(Debug)]
pub struct BuildFailure {
    pub message: String,
    pub log_tail: Vec<String>,
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if !self.log_tail.is_empty() {
            write!(f, "\nlast lines of the build log:")?;
            for line in &self.log_tail {
                write!(f, "\n  | {line}")?;
            }
        }
        Ok(())
    }
}

/// Builds `service`'s image as `service.image` with the classic builder,
/// labelled with its build hash (a git context's with the commit in
/// `commits`: the engine fetches the ref itself, so a ref that moves in
/// between is built once more on the next pass). Sends the context from the model (or lets
/// the engine fetch a remote one), and `credentials` (registry → login,
/// the `X-Registry-Config` header) for the pulls of its `FROM` images, as
/// the docker CLI sends every login of its config.
pub async fn build(
    docker: &Docker,
    service: &Service,
    b: &Build,
    credentials: &HashMap<String, DockerCredentials>,
    commits: &BTreeMap<String, String>,
) -> Result<(), BuildFailure> {
    let fail = |message: String| BuildFailure {
        message,
        log_tail: Vec::new(),
    };
    let tar = context_tar(b).map_err(|e| fail(format!("build context archive: {e}")))?;
    let mut image_labels: HashMap<String, String> = b.labels.clone().into_iter().collect();
    image_labels.insert(
        labels::BUILD.into(),
        build_hash(service, b, git_commit(b, commits)),
    );
    image_labels.insert(labels::BUILD_OPTIONS.into(), options_hash(service, b));
    if let Some(files) = files_label(b) {
        image_labels.insert(labels::BUILD_FILES.into(), files);
    }
    let args: HashMap<String, String> = b.args.clone().into_iter().collect();
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&b.dockerfile)
        .t(&service.image)
        .rm(true)
        .forcerm(true)
        .nocache(b.no_cache)
        .buildargs(&args)
        .labels(&image_labels);
    if let BuildContext::Remote { url } = &b.context {
        options = options.remote(url);
    }
    if let Some(target) = &b.target {
        options = options.target(target);
    }
    if let Some(network) = &b.network {
        options = options.networkmode(network);
    }
    if let Some(host) = b.extra_hosts.first() {
        options = options.extrahosts(host);
    }
    // The API takes `t` once per name and `extrahosts` once per host;
    // bollard's options hold one value of each, so the others are added to
    // the query of this request.
    let more: Vec<(&str, &str)> = b
        .tags
        .iter()
        .map(|t| ("t", t.as_str()))
        .chain(
            b.extra_hosts
                .iter()
                .skip(1)
                .map(|h| ("extrahosts", h.as_str())),
        )
        .collect();
    let docker = if more.is_empty() {
        docker.clone()
    } else {
        let more = query_pairs(&more);
        docker.clone().with_request_modifier(move |mut req| {
            if let Some(uri) = with_query(req.uri(), &more) {
                *req.uri_mut() = uri;
            }
            req
        })
    };
    if let Some(size) = b.shm_size {
        options = options.shmsize(i32::try_from(size).unwrap_or(i32::MAX));
    }
    if !b.cache_from.is_empty() {
        options = options.cachefrom(&b.cache_from);
    }
    if b.pull {
        options = options.pull("1");
    }
    if let Some(platform) = &service.platform {
        options = options.platform(platform);
    }
    tracing::info!(image = %service.image, "building image");
    let mut log: VecDeque<String> = VecDeque::new();
    let mut stream = docker.build_image(
        options.build(),
        Some(credentials.clone()),
        Some(bollard::body_full(tar.into())),
    );
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                for line in info.stream.iter().flat_map(|s| s.lines()) {
                    let line = line.trim_end();
                    if line.is_empty() {
                        continue;
                    }
                    if log.len() == LOG_TAIL {
                        log.pop_front();
                    }
                    log.push_back(line.to_owned());
                }
            }
            Err(e) => {
                let message = match e {
                    bollard::errors::Error::DockerStreamError { error } => error,
                    e => crate::diag::error_chain(&e),
                };
                return Err(BuildFailure {
                    message: message.trim_end().to_owned(),
                    log_tail: log.into(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compose::ContextFile;

    fn service(files: &[(&str, &str)]) -> Service {
        Service {
            image: "shop-web".into(),
            build: Some(Build::new(
                BuildContext::Snapshot {
                    dir: "web".into(),
                    files: files
                        .iter()
                        .map(|(p, c)| ContextFile {
                            path: (*p).into(),
                            mode: 0o644,
                            content: c.as_bytes().into(),
                        })
                        .collect(),
                },
                "Dockerfile",
            )),
            ..Service::default()
        }
    }

    fn built(s: &Service) -> BuiltImage {
        let b = s.build.as_ref().unwrap();
        BuiltImage {
            hash: Some(build_hash(s, b, None)),
            options: Some(options_hash(s, b)),
            files: files_label(b),
        }
    }

    #[test]
    fn an_unchanged_context_needs_no_build_and_a_change_names_the_files() {
        let none = BTreeMap::new();
        let s = service(&[("Dockerfile", "FROM x\n"), ("a.txt", "1"), ("b.txt", "2")]);
        let live = built(&s);
        assert_eq!(needed(&s, Some(&live), true, &none), None);
        assert_eq!(
            needed(&s, Some(&live), false, &none).as_deref(),
            Some("not built yet")
        );
        let changed = service(&[("Dockerfile", "FROM x\n"), ("a.txt", "1!"), ("c.txt", "3")]);
        assert_eq!(
            needed(&changed, Some(&live), true, &none).as_deref(),
            Some("build context changed: a.txt, b.txt, c.txt")
        );
        let mut option = s.clone();
        option.build.as_mut().unwrap().target = Some("prod".into());
        assert_eq!(
            needed(&option, Some(&live), true, &none).as_deref(),
            Some("build options changed")
        );
        let mut pinned = changed.clone();
        pinned.image = "sha256:abc".into();
        assert_eq!(
            needed(&pinned, Some(&live), true, &none),
            None,
            "pinned: never built"
        );
        assert_eq!(
            needed(&s, Some(&BuiltImage::default()), true, &none).as_deref(),
            Some("the image was not built by driftless")
        );
    }

    #[test]
    fn a_mode_change_alone_rebuilds_naming_the_file_and_the_tar_carries_it() {
        let none = BTreeMap::new();
        let s = service(&[("Dockerfile", "FROM x\n"), ("run", "echo hi\n")]);
        let live = built(&s);
        let mut chmod = s.clone();
        if let Some(Build {
            context: BuildContext::Snapshot { files, .. },
            ..
        }) = chmod.build.as_mut()
        {
            files[1].mode = 0o755;
        }
        assert_ne!(
            build_hash(&s, s.build.as_ref().unwrap(), None),
            build_hash(&chmod, chmod.build.as_ref().unwrap(), None),
            "the mode is part of the context's hash"
        );
        assert_eq!(
            needed(&chmod, Some(&live), true, &none).as_deref(),
            Some("build context changed: run")
        );
        let tar = context_tar(chmod.build.as_ref().unwrap()).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let modes: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            modes,
            [("Dockerfile".to_owned(), 0o644), ("run".to_owned(), 0o755)]
        );
    }

    #[test]
    fn a_symlink_is_a_symlink_entry_and_part_of_the_hash() {
        let mut s = service(&[("Dockerfile", "FROM x\n"), ("run", "tool")]);
        let before = build_hash(&s, s.build.as_ref().unwrap(), None);
        if let Some(Build {
            context: BuildContext::Snapshot { files, .. },
            ..
        }) = s.build.as_mut()
        {
            files[1].mode = crate::model::compose::SYMLINK_MODE;
        }
        let b = s.build.as_ref().unwrap();
        assert_ne!(
            build_hash(&s, b, None),
            before,
            "a link is not its text as a file"
        );
        let tar = context_tar(b).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, tar::EntryType, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("Dockerfile".to_owned(), tar::EntryType::Regular, None),
                (
                    "run".to_owned(),
                    tar::EntryType::Symlink,
                    Some("tool".to_owned())
                ),
            ]
        );
    }

    #[test]
    fn a_git_context_rebuilds_when_its_ref_moves_and_not_otherwise() {
        let url = "https://git.example/shop/web.git#main:app";
        let s = Service {
            image: "shop-web".into(),
            build: Some(Build::new(
                BuildContext::Remote { url: url.into() },
                "Dockerfile",
            )),
            ..Service::default()
        };
        let b = s.build.as_ref().unwrap();
        let at = |c: &str| BTreeMap::from([(url.to_owned(), c.to_owned())]);
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let live = BuiltImage {
            hash: Some(build_hash(&s, b, Some(commit))),
            options: Some(options_hash(&s, b)),
            files: None,
        };
        assert_eq!(needed(&s, Some(&live), true, &at(commit)), None);
        let moved = "fedcba9876543210fedcba9876543210fedcba98";
        assert_eq!(
            needed(&s, Some(&live), true, &at(moved)).as_deref(),
            Some(
                "build context changed: https://git.example/shop/web.git#main:app is at fedcba987654"
            )
        );
        // The remote did not answer: the image is kept.
        assert_eq!(needed(&s, Some(&live), true, &BTreeMap::new()), None);

        assert_eq!(
            git_context(url),
            Some((
                "https://git.example/shop/web.git".into(),
                Some("main".into())
            ))
        );
        assert_eq!(
            git_context("github.com/shop/web"),
            Some(("https://github.com/shop/web".into(), None))
        );
        assert_eq!(
            git_context("git@git.example:shop/web.git#v1.2"),
            Some(("git@git.example:shop/web.git".into(), Some("v1.2".into())))
        );
        assert_eq!(git_context("https://example.com/context.tar.gz"), None);
    }

    #[test]
    fn the_context_tar_is_deterministic() {
        let s = service(&[("Dockerfile", "FROM x\n"), ("dir/a.txt", "1")]);
        let b = s.build.as_ref().unwrap();
        let tar = context_tar(b).unwrap();
        assert_eq!(tar, context_tar(b).unwrap());
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Dockerfile", "dir/a.txt"]);
    }

    #[test]
    fn more_tags_and_hosts_are_repeated_query_parameters() {
        let uri: Uri = "http://localhost/v1.41/build?t=shop-web&extrahosts=a%3A10.0.0.1"
            .parse()
            .unwrap();
        let more = query_pairs(&[("t", "shop/web:1"), ("extrahosts", "b:10.0.0.2")]);
        assert_eq!(
            with_query(&uri, &more).unwrap().to_string(),
            "http://localhost/v1.41/build?t=shop-web&extrahosts=a%3A10.0.0.1&t=shop%2Fweb%3A1&extrahosts=b%3A10.0.0.2"
        );
        let other: Uri = "http://localhost/v1.41/images/json".parse().unwrap();
        assert!(
            with_query(&other, &more).is_none(),
            "only the build request"
        );
    }

    #[test]
    fn a_failure_shows_the_log_tail() {
        let f = BuildFailure {
            message: "The command '/bin/sh -c false' returned a non-zero code: 1".into(),
            log_tail: vec!["Step 2/2 : RUN false".into(), " ---> Running in 1".into()],
        };
        assert_eq!(
            f.to_string(),
            "The command '/bin/sh -c false' returned a non-zero code: 1\nlast lines of the build log:\n  | Step 2/2 : RUN false\n  |  ---> Running in 1"
        );
    }
}
