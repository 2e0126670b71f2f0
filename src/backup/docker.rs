//! The Docker side of backups, all through the Engine API (no shell on the
//! host): finding a service's containers, streaming an `exec`'s stdout, a
//! path's or a volume's tar archive, pausing or stopping containers for
//! consistency — and the reverse for restore.
//!
//! Invariant: containers paused or stopped for a copy are always resumed,
//! whether the copy succeeded, failed or was cancelled ([`Quiesced`]).

use std::collections::HashMap;

use bollard::Docker;
use bollard::exec::StartExecResults;
use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::BackupError;
use crate::backend::compose::labels;
use crate::model::Consistency;

/// Where a volume is mounted in the helper container.
pub const VOLUME_MOUNT: &str = "/driftless-volume";
/// Label on helper containers, so they can be told apart (and cleaned up).
pub const HELPER_LABEL: &str = "io.driftless.backup-helper";
/// How much of a failing command's stderr is kept.
const STDERR_TAIL: usize = 4096;

fn docker_err(what: impl std::fmt::Display) -> impl FnOnce(bollard::errors::Error) -> BackupError {
    move |e| BackupError::Source(format!("{what}: {e}"))
}

/// Running containers of a Compose service, by the labels Compose writes.
pub async fn service_containers(
    docker: &Docker,
    project: &str,
    service: &str,
) -> Result<Vec<String>, BackupError> {
    let filters = HashMap::from([(
        "label",
        vec![
            format!("{}={project}", labels::PROJECT),
            format!("{}={service}", labels::SERVICE),
        ],
    )]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(docker_err(format!(
            "list containers of {project}/{service}"
        )))?;
    let mut ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
    ids.sort();
    Ok(ids)
}

/// The one running container an exec or path source uses.
pub async fn one_container(
    docker: &Docker,
    project: &str,
    service: &str,
) -> Result<String, BackupError> {
    service_containers(docker, project, service)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            BackupError::NoContainer(format!(
                "service {project}/{service} has no running container"
            ))
        })
}

/// Containers paused or stopped for a copy. Resume with [`Quiesced::resume`];
/// if it is dropped instead (an error path, a cancelled task), the resume
/// runs on the runtime in the background.
pub struct Quiesced {
    docker: Docker,
    mode: Consistency,
    held: Vec<String>,
}

impl Quiesced {
    /// Pauses or stops `containers` (`Consistency::None`: nothing). When one
    /// fails, those already held are resumed before the error returns.
    pub async fn begin(
        docker: &Docker,
        mode: Consistency,
        containers: &[String],
    ) -> Result<Quiesced, BackupError> {
        let mut q = Quiesced {
            docker: docker.clone(),
            mode,
            held: Vec::new(),
        };
        for id in containers {
            let r = match mode {
                Consistency::None => break,
                Consistency::Pause => docker.pause_container(id).await,
                Consistency::Stop => {
                    docker
                        .stop_container(
                            id,
                            Some(StopContainerOptionsBuilder::default().t(30).build()),
                        )
                        .await
                }
            };
            if let Err(e) = r {
                q.resume().await?;
                return Err(BackupError::Source(format!(
                    "{} container {}: {e}",
                    verb(mode),
                    short(id)
                )));
            }
            q.held.push(id.clone());
        }
        Ok(q)
    }

    /// Unpauses or starts what was held; every container is tried, the
    /// first error is returned.
    pub async fn resume(mut self) -> Result<(), BackupError> {
        let held = std::mem::take(&mut self.held);
        resume_all(&self.docker, self.mode, &held).await
    }
}

impl Drop for Quiesced {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        let docker = self.docker.clone();
        let mode = self.mode;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = resume_all(&docker, mode, &held).await {
                        tracing::error!(error = %e, "resuming containers after a backup");
                    }
                });
            }
            Err(_) => tracing::error!(
                containers = ?held,
                "containers held for a backup could not be resumed: no runtime"
            ),
        }
    }
}

async fn resume_all(
    docker: &Docker,
    mode: Consistency,
    held: &[String],
) -> Result<(), BackupError> {
    let mut first = None;
    for id in held {
        let r = match mode {
            Consistency::None => Ok(()),
            Consistency::Pause => docker.unpause_container(id).await,
            Consistency::Stop => docker.start_container(id, None).await,
        };
        if let Err(e) = r {
            tracing::error!(container = %short(id), error = %e, "resume after backup");
            first.get_or_insert(BackupError::Source(format!(
                "resume container {}: {e}",
                short(id)
            )));
        }
    }
    first.map_or(Ok(()), Err)
}

fn verb(mode: Consistency) -> &'static str {
    match mode {
        Consistency::None => "hold",
        Consistency::Pause => "pause",
        Consistency::Stop => "stop",
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Runs `command` in `container` and streams its stdout into `tx`. A
/// non-zero exit is an error carrying the tail of its stderr.
pub async fn exec_to(
    docker: &Docker,
    container: &str,
    command: &[String],
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), BackupError> {
    let (what, exec_id, started) = start_exec(docker, container, command, false).await?;
    let mut stderr = Vec::new();
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(item) = output.next().await {
            match item.map_err(docker_err(format!("exec `{what}` output")))? {
                bollard::container::LogOutput::StdOut { message } => {
                    tx.send(message).await.map_err(|_| {
                        BackupError::Write("the writer stopped before the dump ended".to_owned())
                    })?;
                }
                bollard::container::LogOutput::StdErr { message } => {
                    keep_tail(&mut stderr, &message);
                }
                _ => {}
            }
        }
    }
    exit_status(docker, &exec_id, &what, &stderr).await
}

/// Runs `command` in `container` with `rx` on its stdin (a restore).
pub async fn exec_from(
    docker: &Docker,
    container: &str,
    command: &[String],
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<(), BackupError> {
    let (what, exec_id, started) = start_exec(docker, container, command, true).await?;
    let mut tail = Vec::new();
    if let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    {
        // Drain output while feeding input, or a chatty command blocks.
        let drain = async {
            let mut tail = Vec::new();
            while let Some(Ok(item)) = output.next().await {
                if let bollard::container::LogOutput::StdErr { message }
                | bollard::container::LogOutput::StdOut { message } = item
                {
                    keep_tail(&mut tail, &message);
                }
            }
            tail
        };
        let feed = async {
            while let Some(chunk) = rx.recv().await {
                input.write_all(&chunk).await?;
            }
            input.shutdown().await
        };
        let (out, fed) = tokio::join!(drain, feed);
        tail = out;
        fed.map_err(|e| BackupError::Restore(format!("writing to `{what}`: {e}")))?;
    }
    exit_status(docker, &exec_id, &what, &tail)
        .await
        .map_err(|e| BackupError::Restore(e.to_string()))
}

/// Creates and starts an exec of `command` (stdin attached when asked);
/// returns the program name, the exec id and its attached streams.
async fn start_exec(
    docker: &Docker,
    container: &str,
    command: &[String],
    stdin: bool,
) -> Result<(String, String, StartExecResults), BackupError> {
    let what = command.first().cloned().unwrap_or_default();
    let created = docker
        .create_exec(
            container,
            ExecConfig {
                cmd: Some(command.to_vec()),
                attach_stdin: Some(stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(docker_err(format!("exec `{what}`")))?;
    let started = docker
        .start_exec(&created.id, None)
        .await
        .map_err(docker_err(format!("exec `{what}`")))?;
    Ok((what, created.id, started))
}

fn keep_tail(buf: &mut Vec<u8>, more: &[u8]) {
    buf.extend_from_slice(more);
    if buf.len() > STDERR_TAIL {
        buf.drain(..buf.len() - STDERR_TAIL);
    }
}

async fn exit_status(
    docker: &Docker,
    exec: &str,
    what: &str,
    stderr: &[u8],
) -> Result<(), BackupError> {
    let inspect = docker
        .inspect_exec(exec)
        .await
        .map_err(docker_err(format!("exec `{what}`")))?;
    match inspect.exit_code {
        Some(0) => Ok(()),
        code => Err(BackupError::Source(format!(
            "`{what}` exited with {}: {}",
            code.map_or("no status".to_owned(), |c| c.to_string()),
            String::from_utf8_lossy(stderr).trim()
        ))),
    }
}

/// Streams the tar archive of `path` in `container` into `tx`.
pub async fn archive_to(
    docker: &Docker,
    container: &str,
    path: &str,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), BackupError> {
    let options = DownloadFromContainerOptionsBuilder::default()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(container, Some(options));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(docker_err(format!("archive {path}")))?;
        if tx.send(chunk).await.is_err() {
            return Err(BackupError::Write(
                "the writer stopped before the archive ended".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Extracts the tar stream `rx` into `dir` of `container`.
pub async fn extract_into(
    docker: &Docker,
    container: &str,
    dir: &str,
    rx: mpsc::Receiver<Bytes>,
) -> Result<(), BackupError> {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    docker
        .upload_to_container(
            container,
            Some(UploadToContainerOptionsBuilder::default().path(dir).build()),
            bollard::body_try_stream(body),
        )
        .await
        .map_err(|e| BackupError::Restore(format!("extract into {dir}: {e}")))
}

/// A created, never started, container with `volume` mounted at
/// [`VOLUME_MOUNT`]; removed on [`Helper::remove`] (or in the background
/// when dropped). Its image is one a container using the volume runs, so
/// nothing is pulled.
pub struct Helper {
    docker: Docker,
    pub id: String,
    removed: bool,
}

impl Helper {
    pub async fn create(
        docker: &Docker,
        volume: &str,
        read_only: bool,
    ) -> Result<Helper, BackupError> {
        let image = volume_image(docker, volume).await?;
        let body = ContainerCreateBody {
            image: Some(image),
            // Never started, but the engine wants a command for an image
            // without one.
            cmd: Some(vec!["driftless-backup-helper".to_owned()]),
            ..helper_body(volume, read_only)
        };
        Helper::new(
            docker,
            body,
            &format!("create a helper container for volume {volume}"),
        )
        .await
    }

    /// Empties `volume` — everything under its root, dot files included —
    /// with a throwaway container of the image its containers run, started
    /// as `/bin/sh -c 'rm -rf …'` (the Engine API extracts and reads
    /// archives but removes no files). An image without a shell and `rm`
    /// is an error that names `--merge`.
    pub async fn empty_volume(docker: &Docker, volume: &str) -> Result<(), BackupError> {
        let image = volume_image(docker, volume).await?;
        let script = format!("rm -rf {VOLUME_MOUNT}/* {VOLUME_MOUNT}/.[!.]* {VOLUME_MOUNT}/..?*");
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), script]),
            cmd: Some(Vec::new()),
            user: Some("0:0".to_owned()),
            network_disabled: Some(true),
            ..helper_body(volume, false)
        };
        let helper = Helper::new(docker, body, &format!("empty volume {volume}")).await?;
        let done = crate::backend::compose::binds::run_to_end(docker, &helper.id).await;
        helper.remove().await;
        done.map_err(|e| {
            BackupError::Restore(format!(
                "empty volume {volume} before the restore (`/bin/sh -c rm -rf` in image {}): {e}; `--merge` extracts over the volume without emptying it",
                short(image.trim_start_matches("sha256:"))
            ))
        })
    }

    /// Creates (does not start) a container from `body`.
    async fn new(
        docker: &Docker,
        body: ContainerCreateBody,
        what: &str,
    ) -> Result<Helper, BackupError> {
        let created = docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(docker_err(what))?;
        Ok(Helper {
            docker: docker.clone(),
            id: created.id,
            removed: false,
        })
    }

    pub async fn remove(mut self) {
        self.removed = true;
        remove_container(&self.docker, &self.id).await;
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let docker = self.docker.clone();
        let id = self.id.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { remove_container(&docker, &id).await });
        }
    }
}

/// The image a container using `volume` runs (never a helper's): local, so
/// nothing is pulled.
async fn volume_image(docker: &Docker, volume: &str) -> Result<String, BackupError> {
    let filters = HashMap::from([("volume", vec![volume.to_owned()])]);
    let users = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(docker_err(format!("find containers using volume {volume}")))?;
    users
        .iter()
        .find(|c| c.labels.as_ref().is_none_or(|l| !l.contains_key(HELPER_LABEL)))
        .and_then(|c| c.image_id.clone())
        .ok_or_else(|| {
            BackupError::Source(format!(
                "volume {volume} is used by no container, so there is no local image to read it with; deploy its service first"
            ))
        })
}

/// A helper container's labels and mount of `volume` at [`VOLUME_MOUNT`].
fn helper_body(volume: &str, read_only: bool) -> ContainerCreateBody {
    ContainerCreateBody {
        labels: Some(HashMap::from([(
            HELPER_LABEL.to_owned(),
            volume.to_owned(),
        )])),
        host_config: Some(HostConfig {
            mounts: Some(vec![Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume.to_owned()),
                target: Some(VOLUME_MOUNT.to_owned()),
                read_only: Some(read_only),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A throwaway container from a local image, started with its own command,
/// for a restore test; removed on [`Scratch::remove`] (or in the background
/// when dropped).
pub struct Scratch(Helper);

impl Scratch {
    /// Starts `image` and waits until it is healthy (when the image has a
    /// health check) or running, at most `timeout`.
    pub async fn start(
        docker: &Docker,
        image: &str,
        timeout: std::time::Duration,
    ) -> Result<Scratch, BackupError> {
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            labels: Some(HashMap::from([(
                HELPER_LABEL.to_owned(),
                "restore-test".to_owned(),
            )])),
            ..Default::default()
        };
        let scratch = Scratch(
            Helper::new(
                docker,
                body,
                &format!("restore test: create a container from {image}"),
            )
            .await?,
        );
        docker
            .start_container(&scratch.0.id, None)
            .await
            .map_err(docker_err(format!("restore test: start {image}")))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let state = docker
                .inspect_container(&scratch.0.id, None)
                .await
                .map_err(docker_err("restore test: inspect"))?
                .state
                .unwrap_or_default();
            let health = state.health.and_then(|h| h.status);
            let ready = match health {
                Some(bollard::models::HealthStatusEnum::HEALTHY) => true,
                Some(bollard::models::HealthStatusEnum::STARTING) => false,
                _ => state.running == Some(true),
            };
            if ready {
                return Ok(scratch);
            }
            if state.running != Some(true)
                && state.status != Some(bollard::models::ContainerStateStatusEnum::CREATED)
            {
                return Err(BackupError::Verify(format!(
                    "restore test: the {image} container stopped (exit code {:?})",
                    state.exit_code
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackupError::Verify(format!(
                    "restore test: the {image} container was not ready within {timeout:?}"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    pub fn id(&self) -> &str {
        &self.0.id
    }

    pub async fn remove(self) {
        self.0.remove().await
    }
}

/// Runs `command` in `container`; an error with its output when it fails.
pub async fn exec_check(
    docker: &Docker,
    container: &str,
    command: &[String],
) -> Result<(), BackupError> {
    let (what, exec_id, started) = start_exec(docker, container, command, false).await?;
    let mut tail = Vec::new();
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(Ok(item)) = output.next().await {
            keep_tail(&mut tail, &item.into_bytes());
        }
    }
    exit_status(docker, &exec_id, &what, &tail).await
}

async fn remove_container(docker: &Docker, id: &str) {
    if let Err(e) = docker
        .remove_container(
            id,
            Some(
                RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(false)
                    .build(),
            ),
        )
        .await
    {
        tracing::warn!(container = %short(id), error = %e, "removing backup helper container");
    }
}

/// A restore test of an archive (volume or path backup): `rx` is extracted
/// into a throwaway volume, then `check` runs as the command of a throwaway
/// container of `image` with that volume at [`VOLUME_MOUNT`]; a non-zero exit
/// is an error with the tail of its output. `dir` is where the archive is
/// extracted in that container (`/` for a volume's archive, whose entries
/// start with `driftless-volume/`). The container and the volume are
/// removed whatever happened.
pub async fn check_in_scratch_volume(
    docker: &Docker,
    image: &str,
    check: &[String],
    dir: &str,
    rx: mpsc::Receiver<Bytes>,
    timeout: std::time::Duration,
) -> Result<(), BackupError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let volume = format!("driftless-restore-test-{}-{nanos}", std::process::id());
    docker
        .create_volume(bollard::models::VolumeCreateRequest {
            name: Some(volume.clone()),
            labels: Some(HashMap::from([(
                HELPER_LABEL.to_owned(),
                "restore-test".to_owned(),
            )])),
            ..Default::default()
        })
        .await
        .map_err(docker_err("restore test: create a throwaway volume"))?;
    let result = check_in_volume(docker, image, check, dir, &volume, rx, timeout).await;
    if let Err(e) = docker
        .remove_volume(
            &volume,
            Some(
                bollard::query_parameters::RemoveVolumeOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await
    {
        tracing::warn!(volume = %volume, error = %e, "removing the restore test volume");
    }
    result
}

async fn check_in_volume(
    docker: &Docker,
    image: &str,
    check: &[String],
    dir: &str,
    volume: &str,
    rx: mpsc::Receiver<Bytes>,
    timeout: std::time::Duration,
) -> Result<(), BackupError> {
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(check.to_vec()),
        labels: Some(HashMap::from([(
            HELPER_LABEL.to_owned(),
            "restore-test".to_owned(),
        )])),
        host_config: Some(HostConfig {
            mounts: Some(vec![Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume.to_owned()),
                target: Some(VOLUME_MOUNT.to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let helper = Helper::new(
        docker,
        body,
        &format!("restore test: create a container from {image}"),
    )
    .await?;
    let result = async {
        extract_into(docker, &helper.id, dir, rx)
            .await
            .map_err(|e| BackupError::Verify(format!("restore test: {e}")))?;
        docker
            .start_container(&helper.id, None)
            .await
            .map_err(docker_err(format!("restore test: start {image}")))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let code = loop {
            let state = docker
                .inspect_container(&helper.id, None)
                .await
                .map_err(docker_err("restore test: inspect"))?
                .state
                .unwrap_or_default();
            if state.running != Some(true) {
                break state.exit_code.unwrap_or(-1);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackupError::Verify(format!(
                    "restore test check: still running after {timeout:?}"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        };
        if code == 0 {
            return Ok(());
        }
        let mut tail = Vec::new();
        let mut logs = docker.logs(
            &helper.id,
            Some(
                bollard::query_parameters::LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        );
        while let Some(Ok(item)) = logs.next().await {
            keep_tail(&mut tail, &item.into_bytes());
        }
        Err(BackupError::Verify(format!(
            "restore test check `{}` exited with {code}: {}",
            check.join(" "),
            String::from_utf8_lossy(&tail).trim()
        )))
    }
    .await;
    helper.remove().await;
    result
}
