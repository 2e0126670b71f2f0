//! Lifecycle hooks: `post_start` and `pre_stop` commands exec'd in a
//! container as docker compose runs them (user, privileged, working
//! directory and environment of the hook; a non-zero exit fails it, with
//! the tail of what it printed).

use bollard::Docker;
use bollard::exec::StartExecResults;
use bollard::models::ExecConfig;
use futures_util::StreamExt;

use crate::model::compose::Hook;

/// Bytes of a hook's output kept for its error message.
const OUTPUT_TAIL: usize = 2048;

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("`{command}` could not run")]
    Engine {
        command: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("`{command}` exited with {status}: {output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
}

impl HookError {
    /// The container is gone or not running: nothing to stop, as docker
    /// compose treats a `pre_stop` on such a container.
    pub fn container_gone(&self) -> bool {
        matches!(
            self,
            HookError::Engine {
                source: bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                },
                ..
            }
        )
    }
}

/// Runs `hook` in `container` and waits for it to exit.
pub async fn run(docker: &Docker, container: &str, hook: &Hook) -> Result<(), HookError> {
    let command = hook.command.join(" ");
    let engine = |source| HookError::Engine {
        command: command.clone(),
        source,
    };
    let env: Vec<String> = hook
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let created = docker
        .create_exec(
            container,
            ExecConfig {
                cmd: Some(hook.command.clone()),
                user: hook.user.clone(),
                privileged: Some(hook.privileged),
                working_dir: hook.working_dir.clone(),
                env: (!env.is_empty()).then_some(env),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..ExecConfig::default()
            },
        )
        .await
        .map_err(engine)?;
    let started = docker.start_exec(&created.id, None).await.map_err(engine)?;
    let mut tail: Vec<u8> = Vec::new();
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(item) = output.next().await {
            let bytes = item.map_err(engine)?.into_bytes();
            tail.extend_from_slice(&bytes);
            if tail.len() > OUTPUT_TAIL {
                tail.drain(..tail.len() - OUTPUT_TAIL);
            }
        }
    }
    let inspect = docker.inspect_exec(&created.id).await.map_err(engine)?;
    match inspect.exit_code {
        Some(0) => Ok(()),
        code => Err(HookError::Failed {
            command,
            status: code.map_or("no status".to_owned(), |c| format!("status {c}")),
            output: String::from_utf8_lossy(&tail).trim().to_owned(),
        }),
    }
}
