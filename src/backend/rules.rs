//! The rules backend: Prometheus rule files as desired state.
//!
//! read live (the rule files driftless owns in the target's `rules_dir`) →
//! plan (a unified diff per file) → apply (write or delete the files, then
//! `POST <url>/-/reload`; when Prometheus rejects the reload, the previous
//! files are put back, Prometheus is reloaded again, and its error is
//! reported) → health (`GET <url>/api/v1/rules`: every group of every file
//! loaded and its rules evaluating without error).
//!
//! The directory is on the daemon's host, or inside `container` on the
//! target's `docker_target`, reached through the Docker API: the archive
//! endpoints to read and write, one exec of `rm` to delete (so the
//! container needs an `rm`, as the Prometheus images have).
//!
//! Ownership: every file driftless writes starts with [`HEADER`] naming
//! the environment. Only files with this environment's header are updated
//! or deleted; any other file is left alone, and a desired file whose name
//! is taken by a file driftless does not own is refused.
//!
//! Writes on the host are atomic (a temporary file renamed over the old
//! one). In a container the engine extracts the archive in place; as
//! Prometheus reads rule files only when reloaded, and driftless reloads
//! after writing, it never loads a half-written file unless something else
//! reloads it at that very moment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::backend::{ApplyReport, Backend, BackendError, Context, Health, Verdict};
use crate::diag::error_chain;
use crate::manifest::PrometheusTarget;
use crate::model::{Resources, RuleFile, TargetState};
use crate::plan::{Action, Change, Resource, unified_diff};

/// The first line of every rule file driftless writes, up to the environment.
pub const HEADER: &str = "# managed by driftless";

/// The resource kind of a rule file in plans.
pub const KIND: &str = "rule-file";

/// The header line for `env`.
pub fn header(env: &str) -> String {
    format!("{HEADER} (environment {env}); edits here are overwritten, change the repo instead\n")
}

/// Splits a file into (owning environment, content after the header).
pub fn parse_header(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(HEADER)?.strip_prefix(" (environment ")?;
    let (env, rest) = rest.split_once(')')?;
    let content = rest.split_once('\n').map_or("", |(_, c)| c);
    Some((env, content))
}

/// Where the rules directory is.
#[derive(Debug, Clone)]
enum Store {
    Host(PathBuf),
    Container {
        docker: Docker,
        container: String,
        dir: String,
    },
}

/// A connection to one Prometheus and its rules directory.
#[derive(Debug, Clone)]
pub struct RulesBackend {
    target: String,
    url: String,
    store: Store,
    http: reqwest::Client,
}

/// The live rule files of a target, as far as this environment is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    /// Files this environment owns: name → content without the header.
    pub owned: BTreeMap<String, String>,
    /// Other files in the directory (someone else's, or another environment's).
    pub foreign: BTreeSet<String>,
    /// The container holding the directory does not exist (yet): on a
    /// first deploy the same plan creates it, and the files are written
    /// once it does (the apply runs the Docker targets first).
    pub missing_container: Option<String>,
}

/// What went wrong reading or changing a rules directory or talking to
/// Prometheus; each keeps the error it came from.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{action} {}: {source}", path.display())]
    Host {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {dir} in container {container}: {source}")]
    Container {
        action: &'static str,
        dir: String,
        container: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{action} {dir} in container {container}: {source}")]
    Archive {
        action: &'static str,
        dir: String,
        container: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container {0} does not exist; the rules target needs it running")]
    NoContainer(String),
    #[error("exec `{command}` in container {container}: {source}")]
    Exec {
        command: String,
        container: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("`{command}` in container {container} exited with {status}: {output}")]
    ExecFailed {
        command: String,
        container: String,
        status: String,
        output: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{method} {url}: {}", error_chain(source))]
    Request {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Prometheus answered with an error status; its own words.
    #[error("{method} {url}: {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("GET {url}: unexpected answer: {source}")]
    Answer {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

impl RulesBackend {
    /// Connects to a Prometheus target: its rules directory on this host,
    /// or `container` on the target's Docker engine (`docker_target`, else
    /// the local engine).
    pub async fn connect(name: &str, target: &PrometheusTarget) -> Result<Self, BackendError> {
        let store = match &target.container {
            None => Store::Host(PathBuf::from(&target.rules_dir)),
            Some(container) => {
                let docker_target = target.docker.clone().unwrap_or_default();
                let compose = super::compose::ComposeBackend::connect(&docker_target).await?;
                Store::Container {
                    docker: compose.docker().clone(),
                    container: container.clone(),
                    dir: target.rules_dir.trim_end_matches('/').to_owned(),
                }
            }
        };
        Ok(RulesBackend {
            target: name.to_owned(),
            url: target.url.trim_end_matches('/').to_owned(),
            store,
            http: http_client().map_err(|e| BackendError::Unavailable {
                target: name.to_owned(),
                message: e.to_string(),
            })?,
        })
    }

    async fn apply_changes(
        &self,
        desired: &TargetState,
        changes: &[Change],
        ctx: Context<'_>,
    ) -> Result<ApplyReport, BackendError> {
        let files = rule_files(desired)?;
        let mut writes: Vec<(String, Vec<u8>)> = Vec::new();
        let mut deletes: Vec<String> = Vec::new();
        let mut applied = Vec::new();
        for c in changes.iter().filter(|c| c.resource.kind == KIND) {
            match c.action {
                Action::Create | Action::Update | Action::Recreate { .. } => {
                    let f = files
                        .iter()
                        .find(|f| f.name == c.resource.name)
                        .ok_or_else(|| BackendError::Refused {
                            target: self.target.clone(),
                            message: format!(
                                "the plan writes {} but the desired state has no such file",
                                c.resource.name
                            ),
                        })?;
                    let mut content = header(ctx.environment).into_bytes();
                    content.extend_from_slice(f.content.as_bytes());
                    writes.push((f.name.clone(), content));
                }
                Action::Delete => deletes.push(c.resource.name.clone()),
                Action::Unchanged => continue,
            }
            applied.push(c.clone());
        }
        if applied.is_empty() {
            return Ok(ApplyReport::default());
        }
        let touched = || {
            applied
                .iter()
                .map(|c| c.resource.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // What the touched files are now, to put back if Prometheus says no.
        let before = self.list().await.map_err(|e| self.unavailable(e))?;
        let mut restore_writes = Vec::new();
        let mut restore_deletes = Vec::new();
        for c in &applied {
            match before.get(&c.resource.name) {
                Some(bytes) => restore_writes.push((c.resource.name.clone(), bytes.clone())),
                None => restore_deletes.push(c.resource.name.clone()),
            }
        }
        let fail = |message: String| BackendError::Apply {
            target: self.target.clone(),
            resource: format!("{KIND} {}", touched()),
            message,
        };
        let changed = async {
            self.write(&writes).await?;
            self.remove(&deletes).await
        }
        .await;
        let reloaded = match changed {
            Ok(()) => self.reload().await,
            Err(e) => Err(e),
        };
        let Err(error) = reloaded else {
            return Ok(ApplyReport {
                applied,
                image_ids: BTreeMap::new(),
            });
        };
        // Put the previous files back and make Prometheus load them again.
        let restored = async {
            self.write(&restore_writes).await?;
            self.remove(&restore_deletes).await?;
            self.reload().await
        }
        .await;
        Err(fail(match restored {
            Ok(()) => format!(
                "Prometheus rejected the new rule files; the previous files were restored and reloaded: {error} (Prometheus's log names the file and the reason)"
            ),
            Err(e) => format!(
                "Prometheus rejected the new rule files ({error}); restoring the previous files failed too: {e}"
            ),
        }))
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable {
            target: self.target.clone(),
            message: message.to_string(),
        }
    }

    /// Every regular file directly in the rules directory: name → bytes;
    /// `None` when the container holding it does not exist.
    async fn list_live(&self) -> Result<Option<BTreeMap<String, Vec<u8>>>, RulesError> {
        match &self.store {
            Store::Host(dir) => list_host(dir).map(Some),
            Store::Container {
                docker,
                container,
                dir,
            } => list_container(docker, container, dir).await,
        }
    }

    /// Every regular file directly in the rules directory: name → bytes.
    async fn list(&self) -> Result<BTreeMap<String, Vec<u8>>, RulesError> {
        // The host store answers `Some` always (a missing directory is empty).
        self.list_live().await?.ok_or_else(|| match &self.store {
            Store::Container { container, .. } => RulesError::NoContainer(container.clone()),
            Store::Host(dir) => RulesError::Host {
                action: "read",
                path: dir.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            },
        })
    }

    async fn write(&self, files: &[(String, Vec<u8>)]) -> Result<(), RulesError> {
        if files.is_empty() {
            return Ok(());
        }
        match &self.store {
            Store::Host(dir) => write_host(dir, files),
            Store::Container {
                docker,
                container,
                dir,
            } => write_container(docker, container, dir, files).await,
        }
    }

    async fn remove(&self, names: &[String]) -> Result<(), RulesError> {
        if names.is_empty() {
            return Ok(());
        }
        match &self.store {
            Store::Host(dir) => {
                for n in names {
                    match std::fs::remove_file(dir.join(n)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Err(RulesError::Host {
                                action: "remove",
                                path: dir.join(n),
                                source,
                            });
                        }
                    }
                }
                Ok(())
            }
            Store::Container {
                docker,
                container,
                dir,
            } => {
                let mut cmd = vec!["rm".to_owned(), "-f".to_owned(), "--".to_owned()];
                cmd.extend(names.iter().map(|n| format!("{dir}/{n}")));
                exec(docker, container, cmd).await
            }
        }
    }

    /// `POST /-/reload`; Prometheus's own words on failure.
    pub async fn reload(&self) -> Result<(), RulesError> {
        let url = format!("{}/-/reload", self.url);
        let resp = match self.http.post(&url).send().await {
            Ok(resp) => resp,
            Err(source) => {
                return Err(RulesError::Request {
                    method: "POST",
                    url,
                    source,
                });
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(RulesError::Status {
            method: "POST",
            url,
            status,
            body: body.trim().trim_end_matches('.').to_owned(),
        })
    }

    /// The rule groups Prometheus has loaded (`GET /api/v1/rules`).
    pub async fn loaded_groups(&self) -> Result<Vec<LoadedGroup>, RulesError> {
        let url = format!("{}/api/v1/rules", self.url);
        let request = |source| RulesError::Request {
            method: "GET",
            url: url.clone(),
            source,
        };
        let resp = self.http.get(&url).send().await.map_err(request)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(request)?;
        if !status.is_success() {
            return Err(RulesError::Status {
                method: "GET",
                url,
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        let parsed: RulesResponse =
            serde_json::from_slice(&body).map_err(|source| RulesError::Answer {
                url: url.clone(),
                source,
            })?;
        Ok(parsed.data.groups)
    }
}

/// One group as `/api/v1/rules` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadedGroup {
    pub name: String,
    pub file: String,
    #[serde(default)]
    pub rules: Vec<LoadedRule>,
}

/// One rule of a loaded group.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadedRule {
    #[serde(default)]
    pub name: String,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    #[serde(default)]
    pub health: String,
    #[serde(default, rename = "lastError")]
    pub last_error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RulesResponse {
    data: RulesData,
}

#[derive(Debug, Deserialize)]
struct RulesData {
    #[serde(default)]
    groups: Vec<LoadedGroup>,
}

fn http_client() -> Result<reqwest::Client, RulesError> {
    // The binary installs the ring provider at start; a library user (or a
    // test) may not have, and reqwest's rustls needs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // A reload with many rules takes a while; Prometheus answers when done.
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(RulesError::Client)
}

fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".driftless-tmp")
}

/// An I/O error on `path` of the host's rules directory.
fn host(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RulesError {
    let path = path.to_owned();
    move |source| RulesError::Host {
        action,
        path,
        source,
    }
}

fn list_host(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, RulesError> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(host("read", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(host("read", dir))?;
        // Regular files only: symlinks and directories are never driftless's.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !kind.is_file() || is_temp(&name) {
            continue;
        }
        let bytes = std::fs::read(entry.path()).map_err(host("read", &entry.path()))?;
        out.insert(name, bytes);
    }
    Ok(out)
}

fn write_host(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), RulesError> {
    std::fs::create_dir_all(dir).map_err(host("create", dir))?;
    for (name, content) in files {
        let tmp = dir.join(format!(".{name}.driftless-tmp"));
        let dest = dir.join(name);
        std::fs::write(&tmp, content).map_err(host("write", &tmp))?;
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(host("rename into", &dest)(e));
        }
    }
    Ok(())
}

/// The rules directory's files in `container`; `None` when there is no
/// such container.
async fn list_container(
    docker: &Docker,
    container: &str,
    dir: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, RulesError> {
    let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::default()
        .path(&format!("{dir}/"))
        .build();
    let mut stream = docker.download_from_container(container, Some(options));
    let mut tar_bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => tar_bytes.extend_from_slice(&b),
            // A missing directory holds no files yet.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            }) => {
                return Ok((!message.contains("No such container")).then(BTreeMap::new));
            }
            Err(source) => {
                return Err(RulesError::Container {
                    action: "read",
                    dir: dir.to_owned(),
                    container: container.to_owned(),
                    source,
                });
            }
        }
    }
    let archive_error = |source| RulesError::Archive {
        action: "read",
        dir: dir.to_owned(),
        container: container.to_owned(),
        source,
    };
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let entries = archive.entries().map_err(archive_error)?;
    for entry in entries {
        let mut entry = entry.map_err(archive_error)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().map_err(archive_error)?.into_owned();
        // The archive holds `<dir name>/<file>`: only direct children count.
        let parts: Vec<_> = path.components().collect();
        if parts.len() != 2 {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if is_temp(&name) {
            continue;
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(archive_error)?;
        out.insert(name, bytes);
    }
    Ok(Some(out))
}

async fn write_container(
    docker: &Docker,
    container: &str,
    dir: &str,
    files: &[(String, Vec<u8>)],
) -> Result<(), RulesError> {
    let archive_error = |source| RulesError::Archive {
        action: "build the archive for",
        dir: dir.to_owned(),
        container: container.to_owned(),
        source,
    };
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        let path = format!("{}/{name}", dir.trim_start_matches('/'));
        builder
            .append_data(&mut header, path, content.as_slice())
            .map_err(archive_error)?;
    }
    let tar = builder.into_inner().map_err(archive_error)?;
    let options = bollard::query_parameters::UploadToContainerOptionsBuilder::default()
        .path("/")
        .build();
    docker
        .upload_to_container(container, Some(options), bollard::body_full(tar.into()))
        .await
        .map_err(|source| RulesError::Container {
            action: "write into",
            dir: dir.to_owned(),
            container: container.to_owned(),
            source,
        })
}

/// Runs `cmd` (an argument vector) in `container`; an error with its output
/// when it exits non-zero.
async fn exec(docker: &Docker, container: &str, cmd: Vec<String>) -> Result<(), RulesError> {
    let what = cmd.join(" ");
    let exec_error = |source| RulesError::Exec {
        command: what.clone(),
        container: container.to_owned(),
        source,
    };
    let config = bollard::models::ExecConfig {
        cmd: Some(cmd),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let created = docker
        .create_exec(container, config)
        .await
        .map_err(exec_error)?;
    let started = docker
        .start_exec(&created.id, None)
        .await
        .map_err(exec_error)?;
    let mut output = String::new();
    if let bollard::exec::StartExecResults::Attached {
        output: mut out, ..
    } = started
    {
        while let Some(item) = out.next().await {
            if let Ok(chunk) = item {
                output.push_str(&chunk.to_string());
            }
        }
    }
    let inspect = docker.inspect_exec(&created.id).await.map_err(exec_error)?;
    match inspect.exit_code {
        Some(0) => Ok(()),
        code => Err(RulesError::ExecFailed {
            command: what,
            container: container.to_owned(),
            status: code.map_or("no status".to_owned(), |c| c.to_string()),
            output: output.trim().to_owned(),
        }),
    }
}

/// The rule files of a target's desired state.
fn rule_files(desired: &TargetState) -> Result<&[RuleFile], BackendError> {
    match &desired.resources {
        Resources::Rules(files) => Ok(files),
        _ => Err(BackendError::Refused {
            target: desired.target.name.clone(),
            message: "the rules backend was given resources that are not rule files".to_owned(),
        }),
    }
}

/// What a file of the directory is to an environment.
fn classify(env: &str, listing: BTreeMap<String, Vec<u8>>) -> Live {
    let mut live = Live::default();
    for (name, bytes) in listing {
        let text = String::from_utf8_lossy(&bytes);
        match parse_header(&text) {
            Some((owner, content)) if owner == env => {
                live.owned.insert(name, content.to_owned());
            }
            _ => {
                live.foreign.insert(name);
            }
        }
    }
    live
}

/// The plan for one target: pure, from desired files and live state.
pub fn plan(
    target: &str,
    files: &[RuleFile],
    live: &Live,
    ctx: Context<'_>,
) -> Result<Vec<Change>, BackendError> {
    let mut changes = Vec::new();
    for f in files {
        if live.foreign.contains(&f.name) {
            return Err(BackendError::Refused {
                target: target.to_owned(),
                message: format!(
                    "rule file {} exists in the rules directory and is not managed by driftless for environment {}; remove or rename it (or the repo's file)",
                    f.name, ctx.environment
                ),
            });
        }
        let (action, diff) = match live.owned.get(&f.name) {
            None => (Action::Create, unified_diff("", &f.content, ctx.masker)),
            Some(old) if *old == f.content => (Action::Unchanged, None),
            Some(old) => (Action::Update, unified_diff(old, &f.content, ctx.masker)),
        };
        changes.push(Change {
            target: target.to_owned(),
            resource: Resource::new(KIND, &f.name),
            action,
            detail: Some(match &live.missing_container {
                Some(c) => format!(
                    "groups: {}; written once container {c} exists (the Docker targets apply first)",
                    f.groups.join(", ")
                ),
                None => format!("groups: {}", f.groups.join(", ")),
            }),
            diff,
        });
    }
    for (name, old) in &live.owned {
        if !files.iter().any(|f| f.name == *name) {
            changes.push(Change {
                target: target.to_owned(),
                resource: Resource::new(KIND, name),
                action: Action::Delete,
                detail: None,
                diff: unified_diff(old, "", ctx.masker),
            });
        }
    }
    Ok(changes)
}

/// Per-file health from the groups Prometheus has loaded.
pub fn verdicts(target: &str, files: &[RuleFile], loaded: &[LoadedGroup]) -> Vec<Verdict> {
    files
        .iter()
        .map(|f| {
            let suffix = format!("/{}", f.name);
            let mut missing = Vec::new();
            let mut errors = Vec::new();
            let mut pending = 0;
            for g in &f.groups {
                let found = loaded
                    .iter()
                    .find(|l| l.name == *g && (l.file.ends_with(&suffix) || l.file == f.name));
                match found {
                    None => missing.push(g.as_str()),
                    Some(l) => {
                        for r in &l.rules {
                            match r.health.as_str() {
                                "err" => errors.push(format!(
                                    "{}: {}",
                                    r.name,
                                    r.last_error.as_deref().unwrap_or("evaluation failed")
                                )),
                                "ok" => {}
                                _ => pending += 1,
                            }
                        }
                    }
                }
            }
            let (health, reason) = if !errors.is_empty() {
                (Health::Degraded, format!("rule evaluation failed: {}", errors.join("; ")))
            } else if !missing.is_empty() {
                (
                    Health::Progressing,
                    format!(
                        "groups not loaded by Prometheus: {} (does rule_files in its config match this file?)",
                        missing.join(", ")
                    ),
                )
            } else if pending > 0 {
                (
                    Health::Progressing,
                    format!("{pending} rules not evaluated yet"),
                )
            } else {
                (Health::Healthy, format!("{} groups loaded", f.groups.len()))
            };
            Verdict {
                target: target.to_owned(),
                resource: Resource::new(KIND, &f.name),
                health,
                reason,
            }
        })
        .collect()
}

impl Backend for RulesBackend {
    type Live = Live;

    fn kind(&self) -> &'static str {
        "prometheus"
    }

    async fn read_live(
        &self,
        desired: &TargetState,
        ctx: Context<'_>,
    ) -> Result<Live, BackendError> {
        rule_files(desired)?;
        let listing = self.list_live().await.map_err(|e| self.unavailable(e))?;
        Ok(match listing {
            Some(listing) => classify(ctx.environment, listing),
            None => Live {
                missing_container: match &self.store {
                    Store::Container { container, .. } => Some(container.clone()),
                    Store::Host(_) => None,
                },
                ..Live::default()
            },
        })
    }

    async fn plan(
        &self,
        desired: &TargetState,
        live: &Live,
        ctx: Context<'_>,
    ) -> Result<Vec<Change>, BackendError> {
        plan(&desired.target.name, rule_files(desired)?, live, ctx)
    }

    /// Writes and deletes as planned, reloads Prometheus, and on a failed
    /// reload restores the files as they were and reloads again.
    /// The rules directory is read again as the apply writes it (the
    /// container may be one this same apply created): `live` is not read.
    async fn apply_live(
        &self,
        desired: &TargetState,
        changes: &[Change],
        _live: &Self::Live,
        ctx: Context<'_>,
    ) -> Result<ApplyReport, BackendError> {
        self.apply_changes(desired, changes, ctx).await
    }

    async fn apply(
        &self,
        desired: &TargetState,
        changes: &[Change],
        ctx: Context<'_>,
    ) -> Result<ApplyReport, BackendError> {
        self.apply_changes(desired, changes, ctx).await
    }

    async fn health(
        &self,
        desired: &TargetState,
        _ctx: Context<'_>,
    ) -> Result<Vec<Verdict>, BackendError> {
        let files = rule_files(desired)?;
        let loaded = self
            .loaded_groups()
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(verdicts(&desired.target.name, files, &loaded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Allow;
    use crate::model::Origin;
    use crate::secrets::Masker;

    fn file(name: &str, content: &str) -> RuleFile {
        RuleFile {
            name: name.into(),
            content: content.into(),
            groups: vec!["g".into()],
            origin: Origin::default(),
        }
    }

    fn ctx<'a>(masker: &'a Masker, allow: &'a Allow) -> Context<'a> {
        Context {
            environment: "dev",
            masker,
            allow,
            owner: crate::backend::Owner::new("dev@test"),
            progress: None,
        }
    }

    #[test]
    fn headers_name_the_environment() {
        let text = format!("{}groups: []\n", header("dev"));
        assert_eq!(parse_header(&text), Some(("dev", "groups: []\n")));
        assert_eq!(parse_header("groups: []\n"), None);
    }

    #[test]
    fn classify_owns_only_this_environments_files() {
        let listing = BTreeMap::from([
            (
                "a.yml".to_owned(),
                format!("{}x\n", header("dev")).into_bytes(),
            ),
            (
                "b.yml".to_owned(),
                format!("{}y\n", header("prod")).into_bytes(),
            ),
            ("c.yml".to_owned(), b"hand: made\n".to_vec()),
        ]);
        let live = classify("dev", listing);
        assert_eq!(live.owned.get("a.yml").map(String::as_str), Some("x\n"));
        assert_eq!(
            live.foreign,
            BTreeSet::from(["b.yml".into(), "c.yml".into()])
        );
    }

    #[test]
    fn plan_creates_updates_deletes_and_refuses_foreign_names() {
        let (m, a) = (Masker::default(), Allow::default());
        let live = Live {
            owned: BTreeMap::from([
                ("same.yml".into(), "s\n".into()),
                ("changed.yml".into(), "old\n".into()),
                ("gone.yml".into(), "g\n".into()),
            ]),
            foreign: BTreeSet::from(["theirs.yml".into()]),
            missing_container: None,
        };
        let desired = [
            file("same.yml", "s\n"),
            file("changed.yml", "new\n"),
            file("new.yml", "n\n"),
        ];
        let changes = plan("prom", &desired, &live, ctx(&m, &a)).unwrap();
        let actions: Vec<(&str, &Action)> = changes
            .iter()
            .map(|c| (c.resource.name.as_str(), &c.action))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("same.yml", &Action::Unchanged),
                ("changed.yml", &Action::Update),
                ("new.yml", &Action::Create),
                ("gone.yml", &Action::Delete),
            ]
        );
        assert!(changes[1].diff.as_deref().unwrap().contains("-old\n+new"));
        let e = plan("prom", &[file("theirs.yml", "x")], &live, ctx(&m, &a)).unwrap_err();
        assert!(e.to_string().contains("not managed by driftless"), "{e}");
    }

    #[test]
    fn files_for_a_container_not_created_yet_are_planned_as_creates_after_it() {
        let masker = Masker::default();
        let allow = Allow::default();
        let live = Live {
            missing_container: Some("aiops-dev-prometheus-1".into()),
            ..Live::default()
        };
        let files = [file("a.yml", "groups: []\n")];
        let changes = plan("prom", &files, &live, ctx(&masker, &allow)).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].action, Action::Create);
        let detail = changes[0].detail.as_deref().unwrap();
        assert!(
            detail.contains("written once container aiops-dev-prometheus-1 exists"),
            "{detail}"
        );
    }

    #[test]
    fn verdicts_follow_load_and_rule_health() {
        let loaded = |health: &str| {
            vec![LoadedGroup {
                name: "g".into(),
                file: "/etc/prometheus/rules/a.yml".into(),
                rules: vec![LoadedRule {
                    name: "r".into(),
                    health: health.into(),
                    last_error: Some("boom".into()),
                }],
            }]
        };
        let f = [file("a.yml", "")];
        assert_eq!(verdicts("p", &f, &loaded("ok"))[0].health, Health::Healthy);
        assert_eq!(
            verdicts("p", &f, &loaded("unknown"))[0].health,
            Health::Progressing
        );
        let bad = verdicts("p", &f, &loaded("err"));
        assert_eq!(bad[0].health, Health::Degraded);
        assert!(bad[0].reason.contains("boom"));
        let none = verdicts("p", &f, &[]);
        assert_eq!(none[0].health, Health::Progressing);
        assert!(none[0].reason.contains("not loaded"), "{}", none[0].reason);
    }
}
