//! One backup job, end to end: source → encode → write → verify → retain →
//! record; and the way back: verify a stored backup, restore it.

use std::io::Write;
use std::sync::Arc;

use bollard::Docker;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use super::BackupError;
use super::codec::{self, Encoder, Encoding, Identities};
use super::destination::{Destination, LocalDir, Manifest};
use super::docker::{self as dk, Helper, Quiesced, VOLUME_MOUNT};
use super::retention;
use crate::model::compose::Project;
use crate::model::{BackupJob, BackupSource, Consistency, DesiredState, Resources};
use crate::secrets::Masker;
use crate::store::{BackupOutcome, BackupRun, BackupTrigger, Store};

/// Chunks in flight between the Docker stream and the encoder.
const CHANNEL_DEPTH: usize = 16;

/// What a job runs against: the engine, the environment's Compose projects
/// (to resolve services and volumes), its rendered files (the `config`
/// source) and, when set, age identities to verify encrypted payloads.
#[derive(Clone)]
pub struct Context {
    pub docker: Docker,
    pub env: String,
    pub commit: Option<String>,
    pub projects: Vec<Project>,
    /// Rendered files, secrets masked (the `config` source).
    pub config: Vec<(String, Vec<u8>)>,
    pub identities: Option<Arc<Identities>>,
    pub masker: Masker,
}

impl Context {
    /// From a checked environment. Rendered file contents are masked with
    /// `masker`, so a config backup holds no secret values.
    pub fn new(
        docker: Docker,
        desired: &DesiredState,
        files: impl IntoIterator<Item = (String, Vec<u8>)>,
        masker: Masker,
    ) -> Context {
        let projects = desired
            .targets
            .iter()
            .filter_map(|t| match &t.resources {
                Resources::Compose(p) => Some(p.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let config = files
            .into_iter()
            .map(|(path, bytes)| {
                let bytes = match std::str::from_utf8(&bytes) {
                    Ok(text) => masker.mask(text).into_owned().into_bytes(),
                    Err(_) => bytes,
                };
                (path, bytes)
            })
            .collect();
        Context {
            docker,
            env: desired.environment.name.clone(),
            commit: desired.revision.commit().map(str::to_owned),
            projects,
            config,
            identities: None,
            masker,
        }
    }

    /// Connects to the environment's Docker target (the first one; backup
    /// jobs run there) and builds the context (see [`Context::new`]).
    pub async fn connect(
        desired: &DesiredState,
        files: Vec<(String, Vec<u8>)>,
        masker: Masker,
    ) -> Result<Context, BackupError> {
        let target = desired
            .targets
            .iter()
            .find_map(|t| match &t.target.kind {
                crate::manifest::TargetKind::Docker(d) => Some(d),
                _ => None,
            })
            .ok_or_else(|| {
                BackupError::Config(format!(
                    "environment {} has no docker target to run backups on",
                    desired.environment.name
                ))
            })?;
        let backend = crate::backend::compose::ComposeBackend::connect(target)
            .await
            .map_err(|e| BackupError::Config(e.to_string()))?;
        Ok(Context::new(
            backend.docker().clone(),
            desired,
            files,
            masker,
        ))
    }

    pub fn with_identities(mut self, identities: Option<Identities>) -> Self {
        self.identities = identities.map(Arc::new);
        self
    }

    /// The Compose project holding `service` (or the named project).
    fn project(
        &self,
        project: Option<&str>,
        service: Option<&str>,
    ) -> Result<&Project, BackupError> {
        let mut found = self.projects.iter().filter(|p| {
            project.is_none_or(|n| p.name == n)
                && service.is_none_or(|s| p.services.contains_key(s))
        });
        match (found.next(), found.next()) {
            (Some(p), None) => Ok(p),
            (None, _) => Err(BackupError::Config(format!(
                "no Compose project{} with service `{}` in environment {}",
                project.map(|p| format!(" `{p}`")).unwrap_or_default(),
                service.unwrap_or("-"),
                self.env
            ))),
            (Some(_), Some(_)) => Err(BackupError::Config(format!(
                "service `{}` is in several projects; set `project:`",
                service.unwrap_or("-")
            ))),
        }
    }

    /// The running container of `service` that exec and path sources use.
    async fn container(&self, project: Option<&str>, service: &str) -> Result<String, BackupError> {
        let p = self.project(project, Some(service))?;
        dk::one_container(&self.docker, &p.name, service).await
    }

    /// The engine name of volume `key` (a project's volume key, or a name).
    fn volume_name(&self, project: Option<&str>, key: &str) -> String {
        self.projects
            .iter()
            .filter(|p| project.is_none_or(|n| p.name == n))
            .find_map(|p| p.volumes.get(key).map(|v| v.name.clone()))
            .unwrap_or_else(|| key.to_owned())
    }

    /// Runs `op` with the id of a helper container that mounts the volume
    /// (at [`VOLUME_MOUNT`]), the service's containers held in `mode`
    /// meanwhile. They are resumed and the helper removed whatever `op`
    /// returned.
    #[allow(clippy::too_many_arguments)]
    async fn on_volume<F, Fut>(
        &self,
        project: Option<&str>,
        volume: &str,
        service: Option<&str>,
        mode: Consistency,
        read_only: bool,
        op: F,
    ) -> Result<(), BackupError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), BackupError>>,
    {
        let name = self.volume_name(project, volume);
        let holds = self.consistency_targets(project, service).await?;
        let helper = Helper::create(&self.docker, &name, read_only).await?;
        let done = match Quiesced::begin(&self.docker, mode, &holds).await {
            Ok(held) => {
                let done = op(helper.id.clone()).await;
                // Resume before anything else, whatever the operation did.
                done.and(held.resume().await)
            }
            Err(e) => Err(e),
        };
        helper.remove().await;
        done
    }

    /// Running containers held for consistency: the service's, if named.
    async fn consistency_targets(
        &self,
        project: Option<&str>,
        service: Option<&str>,
    ) -> Result<Vec<String>, BackupError> {
        match service {
            None => Ok(Vec::new()),
            Some(s) => {
                let p = self.project(project, Some(s))?;
                dk::service_containers(&self.docker, &p.name, s).await
            }
        }
    }
}

/// The rendered files of an environment (its checked `files`), for
/// [`Context::new`].
pub fn rendered_files(
    files: &std::collections::BTreeMap<String, crate::render::Rendered>,
) -> Vec<(String, Vec<u8>)> {
    files
        .values()
        .map(|r| (r.path.clone(), r.content.to_vec()))
        .collect()
}

/// The store of a job's backups.
pub fn destination(job: &BackupJob, env: &str) -> Result<Box<dyn Destination>, BackupError> {
    match &job.destination {
        crate::model::Destination::Local { path } => {
            Ok(Box::new(LocalDir::new(path, env, &job.name)))
        }
        crate::model::Destination::S3 { .. } => Err(BackupError::Config(format!(
            "backup job `{}`: S3 destinations are declared but not implemented yet; use `destination: {{local: DIR}}`",
            job.name
        ))),
    }
}

/// The outcome of one run, as printed and recorded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub job: String,
    pub id: Option<String>,
    pub location: Option<String>,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: Option<String>,
    pub verified: bool,
    /// Backups retention removed after this one was verified.
    pub deleted: Vec<String>,
    pub error: Option<String>,
    pub started_at: i64,
    pub finished_at: i64,
    /// Id of the run in the store, when recorded.
    pub run_id: Option<i64>,
    /// The source had nothing to back up yet (its service has no running
    /// container): a failed run, but not one that should block a first deploy.
    #[serde(skip)]
    pub nothing_to_back_up: bool,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs `job` once: stream its source through the encoder into the
/// destination, verify it, apply retention, and record the run in `store`.
/// A failure at any step is a failed run (recorded, nothing deleted).
pub async fn run(
    ctx: &Context,
    job: &BackupJob,
    trigger: BackupTrigger,
    store: Option<&Arc<Store>>,
) -> RunReport {
    run_for(ctx, job, trigger, store, None).await
}

/// [`run`], recorded with the reconcile (deploy) it ran before.
pub async fn run_for(
    ctx: &Context,
    job: &BackupJob,
    trigger: BackupTrigger,
    store: Option<&Arc<Store>>,
    reconcile_id: Option<i64>,
) -> RunReport {
    // One run of a job at a time in this process: the scheduler and a
    // deploy's before_apply may start the same job together, and two
    // retentions over one destination would delete under each other.
    let lock = job_lock(&ctx.env, &job.name);
    let _running = lock.lock().await;
    let started_at = now_ms();
    let mut report = RunReport {
        job: job.name.clone(),
        started_at,
        ..RunReport::default()
    };
    if let Err(e) = run_steps(ctx, job, &mut report).await {
        report.nothing_to_back_up = matches!(e, BackupError::NoContainer(_));
        report.error = Some(ctx.masker.mask(&e.to_string()).into_owned());
    }
    report.finished_at = now_ms();
    if let Some(store) = store {
        report.run_id = record(store, &ctx.env, job, trigger, reconcile_id, &report).await;
    }
    match &report.error {
        None => {
            tracing::info!(env = %ctx.env, job = %job.name, id = ?report.id, bytes = report.stored_bytes, "backup succeeded")
        }
        Some(e) => tracing::warn!(env = %ctx.env, job = %job.name, error = %e, "backup failed"),
    }
    report
}

/// The lock that serialises runs of `job` in `env`.
fn job_lock(env: &str, job: &str) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = std::collections::HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;
    static LOCKS: std::sync::OnceLock<std::sync::Mutex<Locks>> = std::sync::OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks
        .entry((env.to_owned(), job.to_owned()))
        .or_default()
        .clone()
}

/// Records a run in the store (off the async runtime); returns its id
/// (`None`, logged, when the store cannot be written).
pub async fn record(
    store: &Arc<Store>,
    env: &str,
    job: &BackupJob,
    trigger: BackupTrigger,
    reconcile_id: Option<i64>,
    report: &RunReport,
) -> Option<i64> {
    let run = BackupRun {
        env: env.to_owned(),
        job: job.name.clone(),
        trigger,
        outcome: if report.succeeded() {
            BackupOutcome::Succeeded
        } else {
            BackupOutcome::Failed
        },
        location: report.location.clone(),
        bytes: report.id.as_ref().map(|_| report.stored_bytes as i64),
        sha256: report.sha256.clone(),
        verified: Some(report.verified),
        error: report.error.clone(),
        reconcile_id,
        started_at: report.started_at,
        finished_at: Some(report.finished_at),
    };
    match store.call(move |s| s.record_backup_run(&run)).await {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::error!(job = %job.name, error = %e, "recording backup run");
            None
        }
    }
}

fn format_of(source: &BackupSource) -> &'static str {
    match source {
        BackupSource::Exec { .. } => "dump",
        _ => "tar",
    }
}

fn describe(source: &BackupSource) -> String {
    match source {
        BackupSource::Exec {
            service, command, ..
        } => format!("exec {service}: {}", command.join(" ")),
        BackupSource::Volume { volume, .. } => format!("volume {volume}"),
        BackupSource::Path { service, path, .. } => format!("path {service}:{path}"),
        BackupSource::Config => "config".to_owned(),
    }
}

async fn run_steps(
    ctx: &Context,
    job: &BackupJob,
    report: &mut RunReport,
) -> Result<(), BackupError> {
    let dest: Arc<dyn Destination> = Arc::from(destination(job, &ctx.env)?);
    let encoding = Encoding::of(job.compression, &job.encryption_recipients);
    let id = super::deploys::backup_id(report.started_at);
    let object = format!("{id}.{}{}", format_of(&job.source), encoding.suffix());

    // Encoder on a blocking thread, fed by the source.
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let writer = {
        let dest = dest.clone();
        let object = object.clone();
        let compression = job.compression;
        let recipients = job.encryption_recipients.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let upload = dest.create(&object)?;
            let mut enc = Encoder::new(upload, compression, &recipients)?;
            while let Some(chunk) = rx.blocking_recv() {
                enc.write_all(&chunk)?;
            }
            enc.finish()
        })
    };
    let produced = produce(ctx, job, tx).await;
    let written = writer
        .await
        .map_err(|e| BackupError::Write(format!("writer task: {e}")))?;
    let (upload, sizes) = match (produced, written) {
        (Ok(()), Ok(done)) => done,
        // A source that stopped because the writer did: the writer's error says why.
        (Ok(()) | Err(BackupError::Write(_)), Err(e)) => {
            return Err(BackupError::Write(e.to_string()));
        }
        (Err(e), _) => return Err(e),
    };
    let finished_at = now_ms();
    let mut manifest = Manifest {
        id: id.clone(),
        job: job.name.clone(),
        env: ctx.env.clone(),
        commit: ctx.commit.clone(),
        source: ctx.masker.mask(&describe(&job.source)).into_owned(),
        format: format_of(&job.source).to_owned(),
        encoding,
        object: object.clone(),
        raw_bytes: sizes.raw_bytes,
        stored_bytes: sizes.stored_bytes,
        sha256: sizes.sha256.clone(),
        started_at: report.started_at,
        finished_at,
        verified_at: None,
    };
    {
        let dest = dest.clone();
        let manifest = manifest.clone();
        blocking(move || {
            upload.commit()?;
            dest.put_manifest(&manifest)
        })
        .await
        .map_err(BackupError::Write)?;
    }
    report.id = Some(id);
    report.location = Some(format!("{}/{object}", dest.describe()));
    report.raw_bytes = sizes.raw_bytes;
    report.stored_bytes = sizes.stored_bytes;
    report.sha256 = Some(sizes.sha256);

    if !job.verify.read_back {
        return Ok(());
    }
    verify_stored(dest.clone(), &mut manifest, ctx.identities.clone()).await?;
    if let Some(test) = &job.verify.restore_test
        && let Err(e) = restore_test(ctx, &job.source, test, dest.clone(), &manifest).await
    {
        mark_unverified(dest.clone(), &manifest).await;
        return Err(e);
    }
    report.verified = true;

    // Retention, only now that a verified new backup exists.
    let job_retention = job.retention.clone();
    let deleted = blocking(move || {
        let all = dest.manifests()?;
        let mut deleted = Vec::new();
        for m in retention::select(&job_retention, &all, now_ms()) {
            dest.delete(m)?;
            deleted.push(m.id.clone());
        }
        Ok(deleted)
    })
    .await
    .map_err(|e| BackupError::Write(format!("retention: {e}")))?;
    report.deleted = deleted;
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("blocking task: {e}")),
    }
}

/// Streams the job's source into `tx` (dropped at the end, which ends the
/// encoder's input).
async fn produce(
    ctx: &Context,
    job: &BackupJob,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), BackupError> {
    match &job.source {
        BackupSource::Exec {
            project,
            service,
            command,
            ..
        } => {
            let container = ctx.container(project.as_deref(), service).await?;
            dk::exec_to(&ctx.docker, &container, command, &tx).await
        }
        BackupSource::Path {
            project,
            service,
            path,
        } => {
            let container = ctx.container(project.as_deref(), service).await?;
            let held = Quiesced::begin(
                &ctx.docker,
                job.consistency,
                std::slice::from_ref(&container),
            )
            .await?;
            let copied = dk::archive_to(&ctx.docker, &container, path, &tx).await;
            held.resume().await?;
            copied
        }
        BackupSource::Volume {
            project,
            volume,
            service,
        } => {
            ctx.on_volume(
                project.as_deref(),
                volume,
                service.as_deref(),
                job.consistency,
                true,
                |helper| async move {
                    dk::archive_to(&ctx.docker, &helper, VOLUME_MOUNT, &tx).await
                },
            )
            .await
        }
        BackupSource::Config => {
            let tar = config_tar(&ctx.config)
                .map_err(|e| BackupError::Source(format!("config archive: {e}")))?;
            tx.send(Bytes::from(tar))
                .await
                .map_err(|_| BackupError::Write("the writer stopped".to_owned()))
        }
    }
}

fn config_tar(files: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, path, bytes.as_slice())?;
    }
    tar.into_inner()
}

/// Reads a stored backup back: checksum, size, and (when readable) decrypt
/// and decompress. Marks the manifest verified, or unverified on failure
/// (so retention no longer protects a corrupt backup).
pub async fn verify_stored(
    dest: Arc<dyn Destination>,
    manifest: &mut Manifest,
    identities: Option<Arc<Identities>>,
) -> Result<(), BackupError> {
    let m = manifest.clone();
    let checked = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let input = dest.open(&m.object).map_err(|e| e.to_string())?;
        let decoded = codec::decode(input, &m.encoding, identities.as_deref(), std::io::sink())
            .map_err(|e| format!("{} does not decode: {e}", m.object))?;
        if decoded.sha256 != m.sha256 {
            return Err(format!(
                "{}: SHA-256 {} differs from the manifest's {}",
                m.object, decoded.sha256, m.sha256
            ));
        }
        if decoded.stored_bytes != m.stored_bytes {
            return Err(format!(
                "{}: {} bytes stored, the manifest says {}",
                m.object, decoded.stored_bytes, m.stored_bytes
            ));
        }
        if decoded.payload_checked && decoded.raw_bytes != m.raw_bytes {
            return Err(format!(
                "{}: decodes to {} bytes, the manifest says {}",
                m.object, decoded.raw_bytes, m.raw_bytes
            ));
        }
        let mut m = m;
        m.verified_at = Some(now_ms());
        dest.put_manifest(&m).map_err(|e| e.to_string())?;
        Ok(())
    });
    let result = checked
        .await
        .map_err(|e| BackupError::Verify(format!("verify task: {e}")))?;
    match result {
        Ok(()) => {
            manifest.verified_at = Some(now_ms());
            Ok(())
        }
        Err(e) => {
            manifest.verified_at = None;
            Err(BackupError::Verify(e))
        }
    }
}

/// How long a restore test waits for its container to be ready.
const RESTORE_TEST_READY: std::time::Duration = std::time::Duration::from_secs(120);

/// Restores the new backup into a throwaway container of `test.image` (its
/// own command, ready when healthy or running): `test.command` with the dump
/// on stdin, then `test.check`; both must exit 0. The container is removed
/// whatever happened. Exec sources only (a dump restores through a command).
async fn restore_test(
    ctx: &Context,
    source: &BackupSource,
    test: &crate::model::RestoreTest,
    dest: Arc<dyn Destination>,
    manifest: &Manifest,
) -> Result<(), BackupError> {
    if manifest.encoding.encrypted && ctx.identities.is_none() {
        return Err(BackupError::Verify(
            "restore test of an encrypted backup needs DRIFTLESS_BACKUP_IDENTITY_FILE".to_owned(),
        ));
    }
    if manifest.format != "dump" {
        // An archive (volume or path): extracted into a throwaway volume,
        // checked by a throwaway container mounting it.
        let dir = match source {
            BackupSource::Volume { .. } => "/",
            BackupSource::Path { .. } => VOLUME_MOUNT,
            _ => {
                return Err(BackupError::Config(
                    "verify.restore_test applies to exec, volume and path sources".to_owned(),
                ));
            }
        };
        let (rx, decoding) = decoded_stream(dest, manifest, ctx.identities.clone());
        let checked = dk::check_in_scratch_volume(
            &ctx.docker,
            &test.image,
            &test.check,
            dir,
            rx,
            RESTORE_TEST_READY,
        )
        .await;
        let decoded = decoding
            .await
            .map_err(|e| BackupError::Verify(e.to_string()))
            .and_then(|r| r.map_err(BackupError::Verify));
        return checked.and(decoded);
    }
    if test.command.is_empty() {
        return Err(BackupError::Config(
            "verify.restore_test.command (the restore command, fed the dump on stdin) is required for exec sources".to_owned(),
        ));
    }
    let scratch = dk::Scratch::start(&ctx.docker, &test.image, RESTORE_TEST_READY).await?;
    let result = async {
        let (rx, decoding) = decoded_stream(dest, manifest, ctx.identities.clone());
        let restored = dk::exec_from(&ctx.docker, scratch.id(), &test.command, rx).await;
        decoding
            .await
            .map_err(|e| BackupError::Verify(e.to_string()))?
            .map_err(BackupError::Verify)?;
        restored.map_err(|e| BackupError::Verify(format!("restore test: {e}")))?;
        dk::exec_check(&ctx.docker, scratch.id(), &test.check)
            .await
            .map_err(|e| BackupError::Verify(format!("restore test check: {e}")))
    }
    .await;
    scratch.remove().await;
    result
}

/// Marks a manifest unverified after a failed verification.
pub async fn mark_unverified(dest: Arc<dyn Destination>, manifest: &Manifest) {
    let mut m = manifest.clone();
    m.verified_at = None;
    let _ = blocking(move || dest.put_manifest(&m)).await;
}

/// Picks a stored backup: by id, else the newest verified one.
pub fn pick(manifests: &[Manifest], id: Option<&str>) -> Option<Manifest> {
    match id {
        Some(id) => manifests.iter().find(|m| m.id == id).cloned(),
        None => manifests
            .iter()
            .rev()
            .find(|m| m.verified_at.is_some())
            .cloned(),
    }
}

/// Streams the decoded content of `manifest` into a channel (read on a
/// blocking thread); the handle reports decode errors.
fn decoded_stream(
    dest: Arc<dyn Destination>,
    manifest: &Manifest,
    identities: Option<Arc<Identities>>,
) -> (
    mpsc::Receiver<Bytes>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let m = manifest.clone();
    let handle = tokio::task::spawn_blocking(move || {
        struct Sender(mpsc::Sender<Bytes>);
        impl Write for Sender {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .blocking_send(Bytes::copy_from_slice(buf))
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::BrokenPipe,
                            "restore target stopped reading",
                        )
                    })?;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let input = dest.open(&m.object).map_err(|e| e.to_string())?;
        let sink = std::io::BufWriter::with_capacity(1 << 16, Sender(tx));
        let decoded = codec::decode(input, &m.encoding, identities.as_deref(), sink)
            .map_err(|e| e.to_string())?;
        if !decoded.payload_checked {
            return Err("the backup is encrypted: set DRIFTLESS_BACKUP_IDENTITY_FILE to an age identity to restore it".to_owned());
        }
        if decoded.sha256 != m.sha256 {
            return Err("checksum differs from the manifest".to_owned());
        }
        Ok(())
    });
    (rx, handle)
}

/// Writes the decoded content of a stored backup to `out` (for `restore
/// --output`, or tests).
pub async fn read_plain(
    dest: Arc<dyn Destination>,
    manifest: &Manifest,
    identities: Option<Arc<Identities>>,
) -> Result<Vec<u8>, BackupError> {
    let (mut rx, handle) = decoded_stream(dest, manifest, identities);
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend_from_slice(&chunk);
    }
    handle
        .await
        .map_err(|e| BackupError::Restore(e.to_string()))?
        .map_err(BackupError::Restore)?;
    Ok(out)
}

/// How a volume backup is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    /// The volume is emptied first, so it holds what the backup holds and
    /// nothing else (files created after the backup are gone).
    Clean,
    /// Extracted over what is there: files the backup does not hold stay.
    Merge,
}

/// Restores `manifest` for `job`: verified first, then fed to the job's
/// restore command on stdin, or extracted into its volume (emptied first
/// with [`RestoreMode::Clean`]) or path (always merged), the service's
/// containers stopped meanwhile and started again after.
pub async fn restore(
    ctx: &Context,
    job: &BackupJob,
    manifest: &Manifest,
    mode: RestoreMode,
) -> Result<(), BackupError> {
    let dest: Arc<dyn Destination> = Arc::from(destination(job, &ctx.env)?);
    if manifest.encoding.encrypted && ctx.identities.is_none() {
        return Err(BackupError::Restore(
            "the backup is encrypted: set DRIFTLESS_BACKUP_IDENTITY_FILE (or DRIFTLESS_BACKUP_IDENTITY) to an age identity".to_owned(),
        ));
    }
    let mut checked = manifest.clone();
    if let Err(e) = verify_stored(dest.clone(), &mut checked, ctx.identities.clone()).await {
        mark_unverified(dest.clone(), manifest).await;
        return Err(e);
    }
    let (rx, decoding) = decoded_stream(dest, manifest, ctx.identities.clone());
    let applied = match &job.source {
        BackupSource::Exec {
            project,
            service,
            restore_command,
            ..
        } => {
            let Some(command) = restore_command else {
                return Err(BackupError::Restore(format!(
                    "job `{}` has no `restore:` command; add one to its exec source (or write the dump out with `--output FILE`)",
                    job.name
                )));
            };
            let container = ctx.container(project.as_deref(), service).await?;
            dk::exec_from(&ctx.docker, &container, command, rx).await
        }
        BackupSource::Volume {
            project,
            volume,
            service,
        } => {
            ctx.on_volume(
                project.as_deref(),
                volume,
                service.as_deref(),
                Consistency::Stop,
                false,
                |helper| async move {
                    if mode == RestoreMode::Clean {
                        let name = ctx.volume_name(project.as_deref(), volume);
                        dk::Helper::empty_volume(&ctx.docker, &name).await?;
                    }
                    dk::extract_into(&ctx.docker, &helper, "/", rx).await
                },
            )
            .await
        }
        BackupSource::Path {
            project,
            service,
            path,
        } => {
            let container = ctx.container(project.as_deref(), service).await?;
            let parent = std::path::Path::new(path)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/".to_owned());
            let held = Quiesced::begin(&ctx.docker, Consistency::Stop, std::slice::from_ref(&container)).await?;
            let done = dk::extract_into(&ctx.docker, &container, &parent, rx).await;
            done.and(held.resume().await)
        }
        BackupSource::Config => Err(BackupError::Restore(
            "a config backup is not restored into a live system: write it out with `--output FILE` (a tar of the rendered files), or roll back to its commit".to_owned(),
        )),
    };
    let decoded = decoding
        .await
        .map_err(|e| BackupError::Restore(e.to_string()))?;
    // A decode error explains a target that failed on truncated input.
    decoded.map_err(BackupError::Restore)?;
    applied
}
