//! `driftless daemon`: keeps environments equal to their branches.
//!
//! [`run`] opens the state store and the repo, picks the environments this
//! daemon drives (those named in its configuration, else every one whose
//! targets its identity owns), takes each one's lock, and starts one
//! [`worker`] per environment in a `JoinSet`. Triggers — the poll timer,
//! the file watch on a local repo, the GitHub webhook, the drift timer,
//! manual requests — only mark environments dirty ([`worker::Dirty`]).
//!
//! Shutdown: the first SIGTERM/SIGINT cancels the token; workers finish the
//! pass they are in (bounded by `shutdown_timeout`) and the process exits
//! 0. A second signal exits at once.
//!
//! With `leases:` (replicas in Kubernetes), each environment also has a
//! [`lease`] elector: the worker runs passes only while this replica holds
//! the environment's Lease, and a graceful shutdown releases the Leases
//! once every pass has finished.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use anyhow::{Context as _, Result};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::manifest::Manifest;
use crate::reconcile::RenderOptions;
use crate::render::SecretMode;
use crate::secrets::{Masker, SecretSource};
use crate::source::Limits;
use crate::store::{OnLost, Store, StoreError};

pub mod alert;
pub mod backups;
pub mod config;
pub mod images;
pub mod lease;
pub mod lock;
pub mod pass;
pub mod repo;
pub mod triggers;
pub mod worker;

use config::DaemonConfig;
use lock::EnvLock;
use repo::RepoHandle;
use worker::{Backoff, Dirty, WorkerStats};

/// Exit code for a configuration the daemon cannot run with.
pub const EXIT_USAGE: i32 = 2;

/// A start-up failure that is the configuration's fault (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The environments `identity` drives: those listed, checked against the
/// manifest and target owners; or every one with a target owned by
/// `identity` or by no one. In an environment spanning several daemons'
/// targets, each daemon applies (and verifies) only the targets it claims.
pub fn select_environments(
    manifest: &Manifest,
    identity: Option<&str>,
    listed: Option<&[String]>,
) -> Result<Vec<String>, UsageError> {
    // Some(target, owner) when no target of `env` is this daemon's.
    let foreign = |env: &crate::manifest::Environment| {
        if manifest.targets_of(env).any(|t| t.claimed_by(identity)) {
            return None;
        }
        manifest
            .targets_of(env)
            .next()
            .map(|t| (t.name.clone(), t.owner.clone().unwrap_or_default()))
    };
    match listed {
        Some(list) => {
            let mut out = Vec::new();
            for name in list {
                let env = manifest.environments.get(name).ok_or_else(|| {
                    UsageError(format!(
                        "environment `{name}` is not in driftless.yaml (known: {})",
                        manifest
                            .environments
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                if let Some((target, owner)) = foreign(env) {
                    return Err(UsageError(format!(
                        "environment `{name}`: target `{target}` is owned by `{owner}`, not this daemon (identity {}); set --identity {owner} or drop the environment",
                        identity.unwrap_or("unset")
                    )));
                }
                out.push(name.clone());
            }
            Ok(out)
        }
        None => Ok(manifest
            .environments
            .values()
            .filter(|e| foreign(e).is_none())
            .map(|e| e.name.clone())
            .collect()),
    }
}

/// Every secret value the daemon can hand out or holds: the secrets
/// directory's files, `DRIFTLESS_SECRET_*` variables, the webhook secret and
/// the API token. Masked in everything the daemon logs, stores and serves.
pub fn daemon_masker(config: &DaemonConfig) -> Masker {
    let mut values = Vec::new();
    if let Some(dir) = &config.secrets_dir
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for e in entries.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path()) {
                values.push(s.trim_end_matches(['\n', '\r']).to_owned());
            }
        }
    }
    for (k, v) in std::env::vars() {
        if k.starts_with("DRIFTLESS_SECRET_") {
            values.push(v);
        }
    }
    values.extend(config.webhook.secret.iter().map(|s| s.expose().to_owned()));
    values.extend(config.api_token.iter().map(|s| s.expose().to_owned()));
    let masker = Masker::from_values(values);
    crate::secrets::mask_logs_of(&masker);
    masker
}

/// Opens the state store. A used state directory whose store is gone is a
/// refusal to start (exit 2) unless `--accept-lost-state` was given; then
/// the loss is logged as a warning and the daemon starts from nothing.
async fn open_store(config: &DaemonConfig) -> Result<Store> {
    let state_dir = config.state_dir.clone();
    let on_lost = if config.accept_lost_state {
        OnLost::Accept
    } else {
        OnLost::Refuse
    };
    let opened = tokio::task::spawn_blocking(move || Store::open_with(&state_dir, on_lost)).await?;
    match opened {
        Ok((store, lost)) => {
            if let Some(lost) = lost {
                let moved_to = lost.moved_to.as_ref().map(|p| p.display().to_string());
                tracing::warn!(
                    state_dir = %config.state_dir.display(),
                    lost = %lost.kind,
                    moved_to = moved_to.as_deref().unwrap_or("-"),
                    "--accept-lost-state: the state store was lost; starting from nothing (suspensions, pins, failed-commit marks, last good commits and history are forgotten)"
                );
            }
            Ok(store)
        }
        Err(e @ StoreError::Lost { .. }) => Err(UsageError(e.to_string()).into()),
        Err(e) => Err(anyhow::Error::new(e).context("open the state store")),
    }
}

/// Runs the daemon until a signal; returns the exit code.
pub async fn run(config: DaemonConfig) -> Result<i32> {
    tracing::info!(config = %config.sanitized(), "driftless daemon starting");
    let nofile = crate::http::server::raise_nofile_limit();
    tracing::info!(limit = nofile, "open descriptors allowed");
    let masker = daemon_masker(&config);
    let store = Arc::new(open_store(&config).await?);
    let limits = Limits::default();

    let repo = {
        let (location, cache, auth) = (
            config.repo.clone(),
            config.cache_dir.clone(),
            config.git_auth.clone(),
        );
        tokio::task::spawn_blocking(move || RepoHandle::open(&location, &cache, &auth, limits))
            .await?
            .map_err(|e| anyhow::anyhow!("{}", masker.mask(&e.to_string())))
            .with_context(|| {
                format!(
                    "cannot open repo {}",
                    crate::source::git::redact(&config.repo)
                )
            })?
    };
    let repo = Arc::new(repo);
    repo.fetch(tokio::time::Instant::now())
        .await
        .map_err(|e| anyhow::anyhow!("{}", masker.mask(&e.to_string())))
        .context("first fetch")?;
    let manifest = repo
        .root_manifest()
        .await
        .map_err(|e| anyhow::anyhow!("{}", masker.mask(&e)))
        .context("the root manifest")?;
    let envs = select_environments(
        &manifest,
        config.identity.as_deref(),
        config.environments.as_deref(),
    )?;
    if envs.is_empty() {
        return Err(UsageError(format!(
            "no environment to drive: none has targets owned by identity `{}` (or unowned); set --identity or --env",
            config.identity.as_deref().unwrap_or("unset")
        ))
        .into());
    }

    let holder = format!(
        "driftless daemon pid {}{}",
        std::process::id(),
        config
            .listen
            .map(|l| format!(" (http://{l})"))
            .unwrap_or_default()
    );
    let mut locks = Vec::new();
    for env in &envs {
        locks.push(EnvLock::try_acquire(&config.state_dir, env, &holder)?);
        let name = env.clone();
        let n = store.call(move |s| s.mark_interrupted(&name)).await?;
        if n > 0 {
            tracing::warn!(env = %env, count = n, "reconciles interrupted by the previous run (it stopped or was killed); the first pass converges");
        }
    }

    let http = reqwest::Client::builder()
        .user_agent(concat!("driftless/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("HTTP client")?;
    let notifier = alert::Notifier::new(http.clone(), masker.clone());
    let registry = Arc::new(crate::backend::compose::registry::Client::new(
        http.clone(),
        crate::backend::compose::image::docker_config_path(),
    ));
    let render = RenderOptions {
        secrets: SecretSource {
            dir: config.secrets_dir.clone(),
            from_env: true,
        },
        mode: SecretMode::Require,
        limits,
    };
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut workers = JoinSet::new();
    let mut entries = BTreeMap::new();
    let metrics = Arc::new(crate::http::metrics::Metrics::new(&envs));
    let backoff = Backoff {
        initial: config.retry_initial,
        max: config.retry_max,
    };
    let electors = match &config.leases {
        Some(settings) => {
            let client = lease::client(settings)
                .await
                .map_err(|e| anyhow::anyhow!("leases: {e}"))?;
            let settings = Arc::new(settings.clone());
            let replica = Arc::new(lease::Replica::default());
            envs.iter()
                .map(|env| {
                    let e = lease::Elector::new(
                        env,
                        client.clone(),
                        settings.clone(),
                        store.clone(),
                        replica.clone(),
                    );
                    (env.clone(), Arc::new(e))
                })
                .collect()
        }
        None => BTreeMap::new(),
    };
    for env in &envs {
        let dirty = Arc::new(Dirty::default());
        let stats = Arc::new(WorkerStats::default());
        let ctx = pass::EnvContext {
            name: env.clone(),
            repo: repo.clone(),
            store: store.clone(),
            render: render.clone(),
            masker: masker.clone(),
            notifier: notifier.clone(),
            http: http.clone(),
            identity: config.identity.clone().unwrap_or_default(),
            verify_poll: config.verify_poll,
            lease: electors.get(env).cloned(),
            metrics: metrics.clone(),
            state_dir: config.state_dir.clone(),
            signatures: config.verify.get(env).cloned(),
            progress: stats.replacing.clone(),
            followed: Arc::new(tokio::sync::watch::channel(images::Followed::default()).0),
        };
        if let Some(elector) = electors.get(env) {
            tasks.spawn(lease::run(
                elector.clone(),
                dirty.clone(),
                cancel.child_token(),
            ));
        }
        let drift = manifest.environments[env].drift_interval;
        // Backups run beside the worker, on their own schedules.
        tasks.spawn(backups::run(ctx.clone(), cancel.child_token()));
        // Followed images are checked beside the worker, on their own timer.
        tasks.spawn(images::run(
            ctx.clone(),
            dirty.clone(),
            registry.clone(),
            ctx.followed.subscribe(),
            cancel.child_token(),
        ));
        workers.spawn(worker::run(
            ctx,
            dirty.clone(),
            stats.clone(),
            cancel.child_token(),
            backoff,
            drift,
        ));
        entries.insert(env.clone(), crate::http::EnvEntry { dirty, stats });
    }
    tracing::info!(environments = ?envs, "driving");

    let dirties: Vec<Arc<Dirty>> = entries.values().map(|e| e.dirty.clone()).collect();
    let branches = Arc::new(RwLock::new(triggers::branch_map(&manifest, &envs)));
    tasks.spawn(triggers::poll(
        config.poll_interval,
        dirties.clone(),
        repo.clone(),
        envs.clone(),
        branches.clone(),
        store.clone(),
        config.retention,
        cancel.child_token(),
    ));
    let mut watches = Vec::new();
    if config.watch && !repo.is_remote() {
        match triggers::watch_refs(&repo.git_dir(), dirties.clone(), cancel.child_token()) {
            Ok(h) => watches.push(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the repo's refs; relying on polling")
            }
        }
    }
    let wake_envs = entries
        .iter()
        .map(|(k, e)| (k.clone(), e.dirty.clone()))
        .collect();
    match triggers::watch_wake_files(
        &lock::dir(&config.state_dir),
        wake_envs,
        cancel.child_token(),
    ) {
        Ok(h) => watches.push(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the lock directory; CLI changes wait for the next poll")
        }
    }

    let state = Arc::new(crate::http::AppState {
        envs: entries,
        branches,
        store: store.clone(),
        webhook_secret: config.webhook.secret.clone(),
        api_token: config.api_token.clone(),
        limiter: crate::http::RateLimiter::new(config.webhook.rate_limit, config.webhook.burst),
        unsigned_limiter: crate::http::RateLimiter::new(
            config.webhook.rate_limit,
            config.webhook.burst,
        ),
        ready: Default::default(),
        masker: masker.clone(),
        metrics: metrics.clone(),
        reads: config.api_reads,
        repo: Some(repo.clone()),
        pages: Default::default(),
        cache: Default::default(),
    });
    if let Some(addr) = config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        let local = listener.local_addr()?;
        if state.webhook_secret.is_none() {
            tracing::warn!("no webhook secret configured: /hooks/github is not served");
        }
        let app = crate::http::router(state.clone(), config.webhook.max_body_bytes);
        let stop = cancel.child_token();
        let limits = crate::http::server::Limits::for_descriptors(nofile);
        tasks.spawn(crate::http::server::serve(listener, app, limits, stop));
        tracing::info!(address = %local, "listening");
    }
    state.ready.store(true, Ordering::Relaxed);

    // First signal: stop taking work, let running passes finish. Second: exit now.
    wait_for_signal().await;
    tracing::info!("shutting down: finishing running reconciles (a second signal exits at once)");
    cancel.cancel();
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while workers.join_next().await.is_some() {}
        while tasks.join_next().await.is_some() {}
    })
    .await;
    for w in watches {
        w.abort();
    }
    // Every pass has finished (or the timeout hit, and a pass may still be
    // applying: then the Leases are left to expire rather than handed on).
    if drained.is_ok() {
        for elector in electors.values() {
            elector.release().await;
        }
    }
    drop(locks);
    match drained {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(0)
        }
        Err(_) => {
            tracing::error!(timeout = ?config.shutdown_timeout, "reconciles still running at the shutdown timeout; exiting");
            Ok(1)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_follow_target_ownership() {
        let m = Manifest::parse(
            "apiVersion: driftless/v1\ntargets:\n  a:\n    owner: ops-a\n    docker: {}\n  b:\n    owner: ops-b\n    docker: { host: \"unix:///run/b.sock\" }\n  free:\n    docker: {}\nenvironments:\n  one:\n    targets: [a]\n  two:\n    targets: [b]\n  three:\n    targets: [free]\n  mixed:\n    targets: [a, b]\n",
        )
        .unwrap();
        // `mixed` spans both daemons: each drives its own target of it.
        assert_eq!(
            select_environments(&m, Some("ops-a"), None).unwrap(),
            ["mixed", "one", "three"]
        );
        assert_eq!(select_environments(&m, None, None).unwrap(), ["three"]);
        let e = select_environments(&m, Some("ops-a"), Some(&["two".to_owned()])).unwrap_err();
        assert!(e.0.contains("owned by `ops-b`"), "{e}");
        let e = select_environments(&m, None, Some(&["nope".to_owned()])).unwrap_err();
        assert!(e.0.contains("not in driftless.yaml"), "{e}");
    }
}
