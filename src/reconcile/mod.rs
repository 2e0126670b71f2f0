//! One pass for one environment: the pipeline, start to end.
//!
//! [`load`] is the pure half — source → render → check — shared by `render`,
//! `validate` and `reconcile`. [`plan`], [`apply`] and [`verify`] drive a
//! [`Backend`] over the targets of a [`DesiredState`]; the daemon strings
//! them together with the record stage. [`decide`] is what a reconcile
//! does, chosen before it does anything.

pub mod decide;
pub mod pipeline;
pub mod probe;

use std::time::Duration;

use crate::backend::progress::Progress;
use crate::backend::{ApplyReport, Backend, BackendError, Context, Driver, Health, Owner, Verdict};
use crate::check::{self, Checked};
use crate::diag::{Diagnostic, Diagnostics};
use crate::manifest::{self, Manifest, TargetKind};
use crate::model::{DesiredState, TargetState};
use crate::plan::Plan;
use crate::render::{Renderer, SecretMode};
use crate::secrets::{Masker, SecretSource};
use crate::source::{Limits, Snapshot, Source};

/// How to render: where secrets come from and whether missing ones are errors.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub secrets: SecretSource,
    pub mode: SecretMode,
    pub limits: Limits,
}

/// An environment loaded and checked at one revision.
#[derive(Debug)]
pub struct Loaded {
    pub manifest: Manifest,
    pub renderer: Renderer,
    pub checked: Checked,
}

/// Reads and validates the manifest of a snapshot.
pub fn manifest_of(snapshot: &Snapshot) -> Result<Manifest, Diagnostics> {
    let text = snapshot.text(manifest::FILE).map_err(|e| {
        Diagnostics::from(Diagnostic::error(e.to_string()).file(manifest::FILE).hint(
            "a desired-state repo has a `driftless.yaml` at its root; see examples/repo-layout",
        ))
    })?;
    Manifest::parse(text)
}

/// The manifest that lists the environments: the one in the work tree, at
/// the pinned revision, or on the default branch.
pub fn root_manifest(source: &Source, limits: Limits) -> Result<(Snapshot, Manifest), Diagnostics> {
    let snapshot = source.root_snapshot(limits).map_err(source_error)?;
    let manifest = manifest_of(&snapshot)?;
    Ok((snapshot, manifest))
}

/// The manifest that lists the environments, like [`root_manifest`], read
/// without the rest of the commit where possible: a daemon looks it up on
/// every poll, and a commit too large to snapshot must still be found (and
/// refused by its pass) rather than hide behind the manifest lookup.
pub fn manifest_only(source: &Source, limits: Limits) -> Result<Manifest, Diagnostics> {
    let snapshot = source
        .root_file_snapshot(manifest::FILE, limits)
        .map_err(source_error)?;
    manifest_of(&snapshot)
}

/// Source → render → check for one environment. The environment's own
/// branch is read (manifest included) unless the source is a work tree or
/// pinned to a revision.
pub fn load(
    source: &Source,
    env_name: &str,
    options: &RenderOptions,
) -> Result<Loaded, Diagnostics> {
    let with_env =
        |d: Diagnostics| Diagnostics(d.into_iter().map(|d| d.or_env(env_name)).collect());
    let (root, root_manifest) = root_manifest(source, options.limits).map_err(with_env)?;
    let branch = root_manifest
        .environment(env_name)
        .map_err(Diagnostics::from)?
        .branch
        .clone();
    let (snapshot, manifest) = match source
        .snapshot_for_branch(&branch, options.limits)
        .map_err(|e| with_env(source_error(e)))?
    {
        // The environment's own branch: its manifest is the one that counts.
        Some(snapshot) => {
            let manifest = manifest_of(&snapshot).map_err(with_env)?;
            (snapshot, manifest)
        }
        None => (root, root_manifest),
    };
    let env = manifest.environment(env_name).map_err(|d| {
        Diagnostics::from(d.env(env_name).hint(format!(
            "the environment is listed on the default branch but not in {} on its own branch",
            manifest::FILE
        )))
    })?;
    let renderer = Renderer::new(
        snapshot,
        &env.name,
        &env.values,
        options.secrets.clone(),
        options.mode,
    )?
    .decrypt_values(&env.decrypt)?;
    let mut checked = check::environment(&manifest, env, &renderer)?;
    checked.state.instance = manifest::instance(env, &source.identity());
    Ok(Loaded {
        manifest,
        renderer,
        checked,
    })
}

/// A source error as a diagnostic (its message names the repo path at fault).
fn source_error(e: crate::source::SourceError) -> Diagnostics {
    Diagnostics::from(Diagnostic::error(e.to_string()))
}

/// Connects a driver to every target of the environment, in order.
pub async fn connect(desired: &DesiredState) -> Result<Vec<Driver>, BackendError> {
    let mut drivers = Vec::with_capacity(desired.targets.len());
    for t in &desired.targets {
        drivers.push(Driver::connect(&t.target, &desired.environment).await?);
    }
    Ok(drivers)
}

/// Plans every target of `desired`; `backends[i]` drives `desired.targets[i]`.
pub async fn plan<B: Backend>(
    backends: &[B],
    desired: &DesiredState,
    masker: &Masker,
) -> Result<Plan, BackendError> {
    let lives = read_live(backends, desired, masker).await?;
    plan_live(backends, desired, &lives, masker).await
}

/// The live state of every target, in target order: what [`plan_live`]
/// compares with and what [`digest`] fingerprints.
pub async fn read_live<B: Backend>(
    backends: &[B],
    desired: &DesiredState,
    masker: &Masker,
) -> Result<Vec<B::Live>, BackendError> {
    let ctx = context(desired, masker);
    let mut lives = Vec::with_capacity(desired.targets.len());
    for (backend, target) in pairs(backends, desired) {
        lives.push(backend.read_live(target, ctx).await?);
    }
    Ok(lives)
}

/// Plans every target of `desired` against `lives` (from [`read_live`]).
pub async fn plan_live<B: Backend>(
    backends: &[B],
    desired: &DesiredState,
    lives: &[B::Live],
    masker: &Masker,
) -> Result<Plan, BackendError> {
    let mut plan = Plan::new(&desired.environment.name, desired.revision.clone());
    let ctx = context(desired, masker);
    for ((backend, target), live) in pairs(backends, desired).zip(lives) {
        plan.changes.extend(backend.plan(target, live, ctx).await?);
    }
    Ok(plan)
}

/// A digest of live states: equal digests mean nothing changed on the
/// targets. The live types are plain data with ordered maps; their debug
/// form is a faithful, stable rendering of everything the planner reads.
pub fn digest<L: std::fmt::Debug>(lives: &[L]) -> Vec<u8> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for live in lives {
        hasher.update(format!("{live:?}").as_bytes());
    }
    hasher.finalize().to_vec()
}

/// Applies `plan` — the very value a dry-run printed — target by target,
/// stopping at the first error. Prometheus targets go last: their rules
/// directory may be in a container the Docker targets create.
pub async fn apply<B: Backend>(
    backends: &[B],
    desired: &DesiredState,
    plan: &Plan,
    masker: &Masker,
) -> Result<ApplyReport, BackendError> {
    let lives = read_live(backends, desired, masker).await?;
    apply_live(backends, desired, plan, &lives, masker, None).await
}

/// [`apply`] of a plan made from `lives` (from [`read_live`]), which the
/// backends use instead of reading the live state again; the services it
/// replaces are shown in `progress`.
pub async fn apply_live<B: Backend>(
    backends: &[B],
    desired: &DesiredState,
    plan: &Plan,
    lives: &[B::Live],
    masker: &Masker,
    progress: Option<&Progress>,
) -> Result<ApplyReport, BackendError> {
    let ctx = Context {
        progress,
        ..context(desired, masker)
    };
    let mut report = ApplyReport::default();
    let mut ordered: Vec<_> = pairs(backends, desired).zip(lives).collect();
    ordered.sort_by_key(|((_, t), _)| matches!(t.target.kind, TargetKind::Prometheus(_)));
    for ((backend, target), live) in ordered {
        let changes: Vec<_> = plan
            .changes
            .iter()
            .filter(|c| c.target == target.target.name)
            .cloned()
            .collect();
        let r = backend.apply_live(target, &changes, live, ctx).await?;
        report.applied.extend(r.applied);
        report.image_ids.extend(r.image_ids);
    }
    Ok(report)
}

/// Polls health until every resource is healthy, one is degraded, or the
/// environment's deadline passes (then the progressing ones count as failed).
pub async fn verify<B: Backend>(
    backends: &[B],
    desired: &DesiredState,
    masker: &Masker,
    poll: Duration,
) -> Result<Vec<Verdict>, BackendError> {
    let ctx = context(desired, masker);
    let deadline = tokio::time::Instant::now() + desired.environment.health.deadline;
    loop {
        let mut verdicts = Vec::new();
        for (backend, target) in pairs(backends, desired) {
            verdicts.extend(backend.health(target, ctx).await?);
        }
        let settled = verdicts.iter().all(|v| v.health == Health::Healthy)
            || verdicts.iter().any(|v| v.health == Health::Degraded);
        if settled {
            return Ok(verdicts);
        }
        if tokio::time::Instant::now() >= deadline {
            for v in &mut verdicts {
                if v.health == Health::Progressing {
                    v.health = Health::Degraded;
                    v.reason = format!(
                        "not healthy within {}: {}",
                        crate::duration::format(desired.environment.health.deadline),
                        v.reason
                    );
                }
            }
            return Ok(verdicts);
        }
        tokio::time::sleep(poll).await;
    }
}

fn context<'a>(desired: &'a DesiredState, masker: &'a Masker) -> Context<'a> {
    Context {
        environment: &desired.environment.name,
        masker,
        allow: &desired.environment.allow,
        owner: owner(desired),
        progress: None,
    }
}

/// The ownership a plan of `desired` works with.
pub fn owner(desired: &DesiredState) -> Owner<'_> {
    Owner {
        instance: &desired.instance,
        adopt: desired.environment.adopt,
    }
}

/// Each target with its backend. A backend whose kind differs from its
/// target's is a programming error caught by the backend itself.
fn pairs<'a, B: Backend>(
    backends: &'a [B],
    desired: &'a DesiredState,
) -> impl Iterator<Item = (&'a B, &'a TargetState)> + 'a {
    debug_assert_eq!(
        backends.len(),
        desired.targets.len(),
        "one backend per target"
    );
    backends.iter().zip(&desired.targets)
}
