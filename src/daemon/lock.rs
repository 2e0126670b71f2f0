//! One lock file per environment in the state directory
//! (`<state>/locks/<env>.lock`), held with `flock(2)`.
//!
//! The daemon holds the lock of every environment it drives for as long as
//! it runs; a CLI `reconcile` that would apply takes it for the apply, so
//! the two never apply to one environment at once. The kernel drops the
//! lock when the holder exits, `kill -9` included, so a stale file never
//! blocks anyone. The file's content names the holder, for messages.
//!
//! Next to it, `<env>.wake` is touched by CLI commands that change an
//! environment's control (pin, suspend, resume); the daemon watches the
//! directory and runs the environment again.
//!
//! `<env>.op` is the operation lock ([`OpLock`]): held for as long as
//! something changes the environment's containers — a daemon pass, a
//! scheduled backup, a CLI `backup run` or `backup restore`. A restore
//! that stops a service therefore never overlaps a pass that would see the
//! container exit, restart it mid-restore and judge the commit by it; a
//! pass that finds the lock held waits (a retry, not a verdict).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A held environment lock; released on drop.
#[derive(Debug)]
pub struct EnvLock {
    file: File,
    path: PathBuf,
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it; `holder` is what they wrote into the file.
    #[error("environment `{env}` is locked by {holder} ({path})")]
    Held {
        env: String,
        holder: String,
        path: String,
    },
    #[error("lock file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The directory holding lock and wake files.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("locks")
}

/// `<state>/locks/<env>.lock`.
pub fn path(state_dir: &Path, env: &str) -> PathBuf {
    dir(state_dir).join(format!("{env}.lock"))
}

/// `<state>/locks/<env>.wake`.
pub fn wake_path(state_dir: &Path, env: &str) -> PathBuf {
    dir(state_dir).join(format!("{env}.wake"))
}

/// Touches the wake file of `env` so a running daemon reconciles it now.
pub fn wake(state_dir: &Path, env: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir(state_dir))?;
    std::fs::write(
        wake_path(state_dir, env),
        format!("{}\n", crate::store::millis(std::time::SystemTime::now())),
    )
}

/// `<state>/locks/<env>.op`.
pub fn op_path(state_dir: &Path, env: &str) -> PathBuf {
    dir(state_dir).join(format!("{env}.op"))
}

/// `<state>/locks/<env>.op.next`: held by whoever waits for `<env>.op`.
fn next_path(state_dir: &Path, env: &str) -> PathBuf {
    dir(state_dir).join(format!("{env}.op.next"))
}

impl EnvLock {
    /// Takes the lock of `env` without waiting; writes `holder` into it.
    pub fn try_acquire(state_dir: &Path, env: &str, holder: &str) -> Result<EnvLock, LockError> {
        flock_at(path(state_dir, env), state_dir, env, holder)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The operation lock of an environment (see the module docs); released on
/// drop. Every acquisition opens the file anew, so two holders in one
/// process exclude each other as two processes do.
///
/// Fair to the one who waits: [`OpLock::acquire`] first takes
/// `<env>.op.next`, and [`OpLock::try_acquire`] (the daemon's passes and
/// scheduled backups, which come back every second) yields while anyone
/// holds that, so a CLI restore is not starved by back-to-back passes.
#[derive(Debug)]
pub struct OpLock {
    _held: EnvLock,
    _next: Option<EnvLock>,
}

impl OpLock {
    /// Takes the operation lock of `env` without waiting; refused while
    /// someone waits for it in [`OpLock::acquire`].
    pub fn try_acquire(state_dir: &Path, env: &str, holder: &str) -> Result<OpLock, LockError> {
        // Held by a waiter: that one goes first. Free: released at once.
        drop(flock_at(next_path(state_dir, env), state_dir, env, holder)?);
        let held = flock_at(op_path(state_dir, env), state_dir, env, holder)?;
        Ok(OpLock {
            _held: held,
            _next: None,
        })
    }

    /// Takes it, waiting while someone else holds it; `waiting` is called
    /// once with the holder's name when it has to wait.
    pub fn acquire(
        state_dir: &Path,
        env: &str,
        holder: &str,
        waiting: impl FnOnce(&str),
    ) -> Result<OpLock, LockError> {
        let mut waiting = Some(waiting);
        let mut wait_for = |path: PathBuf| loop {
            match flock_at(path.clone(), state_dir, env, holder) {
                Err(LockError::Held { holder: other, .. }) => {
                    if let Some(say) = waiting.take() {
                        say(&other);
                    }
                    // The holder is a pass or a backup; they take seconds.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        };
        let next = wait_for(next_path(state_dir, env))?;
        Ok(OpLock {
            _held: wait_for(op_path(state_dir, env))?,
            _next: Some(next),
        })
    }
}

fn flock_at(
    path: PathBuf,
    state_dir: &Path,
    env: &str,
    holder: &str,
) -> Result<EnvLock, LockError> {
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir(state_dir)).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Held {
                env: env.to_owned(),
                holder: if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    holder.to_owned()
                },
                path: path.display().to_string(),
            });
        }
        return Err(io(err));
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(holder.as_bytes()).map_err(io)?;
    Ok(EnvLock { file, path })
}

impl Drop for EnvLock {
    fn drop(&mut self) {
        // Closing the file releases the lock; clearing the holder text
        // first keeps a later reader from naming a gone process.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_name_and_drop_releases() {
        let dir = tempfile::tempdir().unwrap();
        let a = EnvLock::try_acquire(dir.path(), "dev", "daemon pid 1").unwrap();
        let e = EnvLock::try_acquire(dir.path(), "dev", "cli").unwrap_err();
        assert!(
            matches!(&e, LockError::Held { holder, .. } if holder == "daemon pid 1"),
            "{e}"
        );
        // Other environments are independent.
        let _b = EnvLock::try_acquire(dir.path(), "prod", "cli").unwrap();
        drop(a);
        EnvLock::try_acquire(dir.path(), "dev", "cli").unwrap();
    }

    #[test]
    fn the_operation_lock_excludes_within_one_process_and_waits_for_release() {
        let dir = tempfile::tempdir().unwrap();
        // The daemon's environment lock does not hold the operation lock.
        let _env = EnvLock::try_acquire(dir.path(), "dev", "daemon pid 1").unwrap();
        let pass = OpLock::try_acquire(dir.path(), "dev", "daemon pass").unwrap();
        let e = OpLock::try_acquire(dir.path(), "dev", "backup").unwrap_err();
        assert!(
            matches!(&e, LockError::Held { holder, .. } if holder == "daemon pass"),
            "{e}"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let state = dir.path().to_owned();
        let waiter = std::thread::spawn(move || {
            OpLock::acquire(&state, "dev", "restore", |h| tx.send(h.to_owned()).unwrap())
                .map(|_| ())
        });
        // It says whom it waits for; meanwhile the next pass yields to it.
        assert_eq!(rx.recv().unwrap(), "daemon pass");
        let e = OpLock::try_acquire(dir.path(), "dev", "next pass").unwrap_err();
        assert!(
            matches!(&e, LockError::Held { holder, .. } if holder == "restore"),
            "{e}"
        );
        drop(pass);
        let restore = waiter.join().unwrap();
        assert!(restore.is_ok(), "{restore:?}");
        // Released with the restore: the next pass runs.
        OpLock::try_acquire(dir.path(), "dev", "next pass").unwrap();
    }
}
