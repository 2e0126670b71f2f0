//! Backups declared in the repo (their cron grammar is
//! [`crate::check::schedule`]): [`runner`] (run → verify → retain, and restore), [`docker`]
//! (sources and restore targets through the Engine API), [`codec`] (zstd,
//! age, SHA-256), [`destination`] (where objects and manifests are stored),
//! [`retention`] (which backups go; pure), [`deploys`] (the backups taken
//! before a deploy, and those a rollback matches).
//!
//! Invariants: retention never deletes the last verified backup, and runs
//! only after a new backup was verified; containers paused or stopped for a
//! copy are always resumed.

pub mod codec;
pub mod deploys;
pub mod destination;
pub mod docker;
pub mod retention;
pub mod runner;

pub use runner::{Context, RunReport};

/// What went wrong in a backup or restore; the message says which step.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The source (exec, archive, consistency) failed.
    #[error("source: {0}")]
    Source(String),
    /// Encoding or writing to the destination failed.
    #[error("write: {0}")]
    Write(String),
    /// Reading back found a problem.
    #[error("verify: {0}")]
    Verify(String),
    /// The job cannot run as declared (destination kind, missing service).
    #[error("{0}")]
    Config(String),
    /// The service to back up has no running container.
    #[error("source: {0}")]
    NoContainer(String),
    #[error("restore: {0}")]
    Restore(String),
}
