//! Triggers that are not HTTP requests: the poll timer, the file watch on a
//! local repo's refs, and the wake files CLI commands touch. Each only marks
//! environments dirty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::repo::RepoHandle;
use super::worker::Dirty;
use crate::store::{Retention, Store, Trigger};

/// Every `interval`: marks every environment dirty (the pass fetches once
/// for all and skips when nothing changed), refreshes the branch map the
/// webhook reads, and prunes the store once an hour.
#[allow(clippy::too_many_arguments)]
pub async fn poll(
    interval: Duration,
    envs: Vec<Arc<Dirty>>,
    repo: Arc<RepoHandle>,
    driven: Vec<String>,
    branches: Arc<RwLock<BTreeMap<String, Vec<String>>>>,
    store: Arc<Store>,
    retention: Retention,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is now: the workers' startup pass covers it
    let mut last_prune = tokio::time::Instant::now();
    prune(&store, retention).await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for d in &envs {
            d.mark(Trigger::Poll);
        }
        if let Ok(m) = repo.root_manifest().await {
            *branches.write().unwrap_or_else(|e| e.into_inner()) = branch_map(&m, &driven);
        }
        if last_prune.elapsed() >= Duration::from_secs(3600) {
            last_prune = tokio::time::Instant::now();
            prune(&store, retention).await;
        }
    }
}

async fn prune(store: &Arc<Store>, retention: Retention) {
    match store
        .call(move |s| s.prune(&retention, std::time::SystemTime::now()))
        .await
    {
        Ok(p) if p.reconciles + p.deliveries > 0 => {
            tracing::info!(
                reconciles = p.reconciles,
                deliveries = p.deliveries,
                "retention pruned the store"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "retention prune failed"),
    }
}

/// Branch → driven environments following it.
pub fn branch_map(
    m: &crate::manifest::Manifest,
    driven: &[String],
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in driven {
        if let Some(env) = m.environments.get(name) {
            out.entry(env.branch.clone())
                .or_default()
                .push(name.clone());
        }
    }
    out
}

/// Watches `paths` (recursively where asked) and calls `on_change` with the
/// changed paths, debounced: bursts within `debounce` arrive as one call.
/// The watcher lives as long as the returned task.
pub fn watch(
    paths: Vec<(PathBuf, RecursiveMode)>,
    debounce: Duration,
    cancel: CancellationToken,
    on_change: impl Fn(Vec<PathBuf>) + Send + 'static,
) -> notify::Result<tokio::task::JoinHandle<()>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            // The first event for a write can be an open; only changes count.
            && !matches!(event.kind, EventKind::Access(_))
        {
            let _ = tx.send(event.paths);
        }
    })?;
    for (p, mode) in &paths {
        watcher.watch(p, *mode)?;
    }
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            let mut changed = first;
            let until = tokio::time::sleep(debounce);
            tokio::pin!(until);
            loop {
                tokio::select! {
                    _ = &mut until => break,
                    more = rx.recv() => match more {
                        Some(p) => changed.extend(p),
                        None => break,
                    },
                }
            }
            on_change(changed);
        }
    }))
}

/// The watch on a local repo: `refs/` and the Git directory itself
/// (`packed-refs`, `HEAD`), so a `git push` into it triggers at once.
pub fn watch_refs(
    git_dir: &Path,
    envs: Vec<Arc<Dirty>>,
    cancel: CancellationToken,
) -> notify::Result<tokio::task::JoinHandle<()>> {
    let paths = vec![
        (git_dir.join("refs"), RecursiveMode::Recursive),
        (git_dir.to_owned(), RecursiveMode::NonRecursive),
    ];
    watch(paths, Duration::from_millis(100), cancel, move |changed| {
        // Lock files come and go during every ref update; the rename that
        // ends it touches the ref itself.
        let relevant = changed.iter().any(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.ends_with(".lock")
                && (p.components().any(|c| c.as_os_str() == "refs")
                    || name == "packed-refs"
                    || name == "HEAD")
        });
        if relevant {
            tracing::debug!("repo refs changed");
            for d in &envs {
                d.mark(Trigger::Watch);
            }
        }
    })
}

/// The watch on `<state>/locks`: a touched `<env>.wake` marks that
/// environment dirty (a CLI pin, suspend or resume takes effect at once).
pub fn watch_wake_files(
    dir: &Path,
    envs: BTreeMap<String, Arc<Dirty>>,
    cancel: CancellationToken,
) -> notify::Result<tokio::task::JoinHandle<()>> {
    std::fs::create_dir_all(dir)?;
    watch(
        vec![(dir.to_owned(), RecursiveMode::NonRecursive)],
        Duration::from_millis(50),
        cancel,
        move |changed| {
            for p in changed {
                let Some(env) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".wake"))
                else {
                    continue;
                };
                if let Some(d) = envs.get(env) {
                    tracing::info!(env, "woken by a CLI command");
                    d.mark(Trigger::Manual);
                }
            }
        },
    )
}
