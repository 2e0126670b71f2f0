//! driftless keeps live infrastructure equal to a Git repository.
//!
//! One pass for one environment runs the pipeline, in module order:
//!
//! ```text
//! source ──► render ──► check ──► plan ──► apply ──► verify ──► record
//! ```
//!
//! [`source`] reads the repo at a commit into a [`source::Snapshot`];
//! [`render`] turns it into one environment's files with minijinja;
//! [`check`] parses and validates them into a [`model::DesiredState`];
//! [`backend`]s compare that with live systems and return a [`plan::Plan`],
//! apply it, and judge health; [`store`] records the outcome. [`daemon`]
//! runs the pipeline per environment whenever a trigger marks it dirty,
//! [`http`] serves the webhook and API. [`manifest`] is `driftless.yaml`,
//! [`secrets`] keeps secret values out of every output, [`diag`] is how
//! every stage reports problems.

#![allow(clippy::result_large_err)] // a Diagnostic is the error value by design; none is on a hot path

pub mod diag;
pub mod duration;
pub mod glob;
pub mod pools;
pub mod secrets;
pub mod sops;
pub mod yaml;

pub mod backend;
pub mod backup;
pub mod check;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod source;
pub mod store;

pub mod daemon;
pub mod http;
