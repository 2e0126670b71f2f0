//! `driftless backup list|run|verify|restore`: the backup jobs of one
//! environment, run and checked by hand (the daemon runs them on schedule).

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};

use driftless::backup::codec::Identities;
use driftless::backup::destination::Destination;
use driftless::backup::{Context, runner};
use driftless::check::schedule::Schedule;
use driftless::daemon::lock::{self, OpLock};
use driftless::model::BackupJob;
use driftless::reconcile;
use driftless::render::SecretMode;
use driftless::secrets::Masker;
use driftless::store::Store;

use super::{Output, RepoArgs, StateArgs, print_diagnostics};

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// List an environment's backup jobs, their next run and stored backups.
    List(JobArgs),
    /// Run a job now: dump, compress, encrypt, write, verify, apply retention.
    Run(JobArgs),
    /// Read a stored backup back and check it (checksum, decompression, and
    /// decryption when an identity is set).
    Verify(PickArgs),
    /// Restore a stored backup (the newest verified one by default).
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// Job name (`list`: optional filter).
    pub job: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct Common {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Environment whose jobs to use.
    #[arg(long)]
    pub env: String,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct PickArgs {
    pub job: String,
    /// Backup id (default: the newest verified one; `verify`: the newest).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub pick: PickArgs,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Write the plain backup (the dump, or the tar) to this file instead
    /// of restoring it into the service.
    #[arg(long)]
    pub output_file: Option<std::path::PathBuf>,
    /// A volume backup is extracted over the volume, keeping files the
    /// backup does not hold (default: the volume is emptied first).
    #[arg(long)]
    pub merge: bool,
}

struct Loaded {
    jobs: Vec<BackupJob>,
    checked: driftless::check::Checked,
    masker: Masker,
}

fn load(common: &Common) -> Result<Option<Loaded>> {
    let source = common.repo.source()?;
    match reconcile::load(
        &source,
        &common.env,
        &common.repo.options(SecretMode::Require),
    ) {
        Ok(l) => Ok(Some(Loaded {
            jobs: l.checked.state.backups.clone(),
            masker: l.renderer.masker(),
            checked: l.checked,
        })),
        Err(diags) => {
            print_diagnostics(&diags, &Masker::default());
            Ok(None)
        }
    }
}

fn find<'a>(jobs: &'a [BackupJob], name: &str, env: &str) -> Result<&'a BackupJob> {
    jobs.iter().find(|j| j.name == name).with_context(|| {
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        format!(
            "environment {env} has no backup job `{name}` (jobs: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )
    })
}

/// The environment's operation lock, held while a CLI backup or restore
/// changes its containers: taken after the daemon's running pass (or
/// scheduled backup) ends, and keeping the next one from starting. On drop
/// it is released and a running daemon woken to look at the environment.
struct Hold {
    op: Option<OpLock>,
    state_dir: std::path::PathBuf,
    env: String,
}

fn hold(common: &Common, what: &str) -> Result<Hold> {
    let state_dir = common.state.dir();
    let holder = format!("`driftless {what}` (pid {})", std::process::id());
    let op = OpLock::acquire(&state_dir, &common.env, &holder, |other| {
        eprintln!(
            "waiting for {other} to finish with environment {}",
            common.env
        );
    })
    .context("take the environment's operation lock")?;
    Ok(Hold {
        op: Some(op),
        state_dir,
        env: common.env.clone(),
    })
}

impl Drop for Hold {
    fn drop(&mut self) {
        drop(self.op.take());
        // Best effort: without a daemon nobody watches the wake file.
        let _ = lock::wake(&self.state_dir, &self.env);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

fn identities() -> Result<Option<Identities>> {
    Identities::from_env().map_err(anyhow::Error::msg)
}

fn when(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// Runs `driftless backup …`.
pub fn run(args: BackupArgs) -> Result<i32> {
    match args.command {
        BackupCommand::List(a) => list(a),
        BackupCommand::Run(a) => run_job(a),
        BackupCommand::Verify(a) => verify(a),
        BackupCommand::Restore(a) => restore(a),
    }
}

fn list(args: JobArgs) -> Result<i32> {
    let Some(loaded) = load(&args.common)? else {
        return Ok(1);
    };
    let now = chrono::Utc::now();
    let mut docs = Vec::new();
    for job in &loaded.jobs {
        if args.job.as_deref().is_some_and(|n| n != job.name) {
            continue;
        }
        let next = Schedule::parse(&job.schedule)
            .ok()
            .and_then(|s| s.next_in(&job.timezone, &now));
        let stored = runner::destination(job, &args.common.env).and_then(|d| {
            d.manifests()
                .map_err(|e| driftless::backup::BackupError::Write(e.to_string()))
        });
        docs.push(serde_json::json!({
            "job": job.name,
            "schedule": job.schedule,
            "timezone": job.timezone,
            "next_run": next.map(|t| t.to_rfc3339()),
            "backups": stored.as_ref().ok(),
            "error": stored.as_ref().err().map(|e| e.to_string()),
        }));
    }
    if args.common.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(0);
    }
    for d in &docs {
        println!(
            "{} ({} {}) next run {}",
            d["job"].as_str().unwrap_or_default(),
            d["schedule"].as_str().unwrap_or_default(),
            d["timezone"].as_str().unwrap_or_default(),
            d["next_run"].as_str().unwrap_or("-")
        );
        if let Some(e) = d["error"].as_str() {
            println!("  {e}");
        }
        for b in d["backups"].as_array().into_iter().flatten() {
            println!(
                "  {}  {} bytes  {}",
                b["id"].as_str().unwrap_or_default(),
                b["stored_bytes"],
                if b["verified_at"].is_null() {
                    "unverified"
                } else {
                    "verified"
                }
            );
        }
    }
    Ok(0)
}

fn run_job(args: JobArgs) -> Result<i32> {
    let name = args
        .job
        .clone()
        .context("name the job to run: `driftless backup run JOB --env ENV`")?;
    let Some(loaded) = load(&args.common)? else {
        return Ok(1);
    };
    let job = find(&loaded.jobs, &name, &args.common.env)?;
    let store =
        std::sync::Arc::new(Store::open(&args.common.state.dir()).context("open the state store")?);
    let ids = identities()?;
    let _hold = hold(&args.common, &format!("backup run {name}"))?;
    let report = runtime()?.block_on(async {
        let ctx = Context::connect(
            &loaded.checked.state,
            runner::rendered_files(&loaded.checked.files),
            loaded.masker.clone(),
        )
        .await?;
        let ctx = ctx.with_identities(ids);
        Ok::<_, anyhow::Error>(
            runner::run(
                &ctx,
                job,
                driftless::store::BackupTrigger::Cli,
                Some(&store),
            )
            .await,
        )
    })?;
    if args.common.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &report.error {
            None => {
                println!(
                    "{}: backup {} written to {} ({} bytes from {}), {}",
                    job.name,
                    report.id.as_deref().unwrap_or("-"),
                    report.location.as_deref().unwrap_or("-"),
                    report.stored_bytes,
                    report.raw_bytes,
                    if report.verified {
                        "verified"
                    } else {
                        "not verified (verify.read_back is off)"
                    }
                );
                for d in &report.deleted {
                    println!("  retention removed {d}");
                }
            }
            Some(e) => eprintln!(
                "error[{}]: backup job {} failed: {e}",
                args.common.env, job.name
            ),
        }
    }
    Ok(if report.succeeded() { 0 } else { 1 })
}

fn pick(
    job: &BackupJob,
    env: &str,
    id: Option<&str>,
    newest_any: bool,
) -> Result<(
    Arc<dyn Destination>,
    driftless::backup::destination::Manifest,
)> {
    let dest: Arc<dyn Destination> = Arc::from(runner::destination(job, env)?);
    let manifests = dest.manifests()?;
    let chosen = if id.is_none() && newest_any {
        manifests.last().cloned()
    } else {
        runner::pick(&manifests, id)
    };
    let manifest = chosen.with_context(|| match id {
        Some(id) => format!(
            "job {} has no backup `{id}` at {}",
            job.name,
            dest.describe()
        ),
        None => format!(
            "job {} has no verified backup at {}",
            job.name,
            dest.describe()
        ),
    })?;
    Ok((dest, manifest))
}

fn verify(args: PickArgs) -> Result<i32> {
    let Some(loaded) = load(&args.common)? else {
        return Ok(1);
    };
    let job = find(&loaded.jobs, &args.job, &args.common.env)?;
    let (dest, mut manifest) = pick(job, &args.common.env, args.id.as_deref(), true)?;
    let ids = identities()?.map(Arc::new);
    let decrypts = ids.is_some() || !manifest.encoding.encrypted;
    let result = runtime()?.block_on(async {
        let r = runner::verify_stored(dest.clone(), &mut manifest, ids).await;
        if r.is_err() {
            runner::mark_unverified(dest, &manifest).await;
        }
        r
    });
    match result {
        Ok(()) => {
            println!(
                "{}: backup {} verified ({}){}",
                job.name,
                manifest.id,
                manifest.sha256,
                if decrypts {
                    ""
                } else {
                    "; encrypted payload not read: set DRIFTLESS_BACKUP_IDENTITY_FILE to check it too"
                }
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!(
                "error[{}]: backup {} of job {}: {e}",
                args.common.env, manifest.id, job.name
            );
            Ok(1)
        }
    }
}

fn restore(args: RestoreArgs) -> Result<i32> {
    let common = &args.pick.common;
    let Some(loaded) = load(common)? else {
        return Ok(1);
    };
    let job = find(&loaded.jobs, &args.pick.job, &common.env)?;
    let (dest, manifest) = pick(job, &common.env, args.pick.id.as_deref(), false)?;
    let ids = identities()?;
    if let Some(path) = &args.output_file {
        let plain = runtime()?.block_on(runner::read_plain(dest, &manifest, ids.map(Arc::new)))?;
        std::fs::write(path, plain).with_context(|| format!("write {}", path.display()))?;
        println!(
            "{}: backup {} written to {}",
            job.name,
            manifest.id,
            path.display()
        );
        return Ok(0);
    }
    let what = format!(
        "restore backup {} (taken {}, {}) of job {} into environment {}, {}",
        manifest.id,
        when(manifest.started_at),
        manifest.source,
        job.name,
        common.env,
        if args.merge {
            "extracting over what is there now"
        } else {
            "replacing what is there now"
        }
    );
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "error[{}]: refusing to {what} without confirmation: pass --yes",
                common.env
            );
            return Ok(1);
        }
        eprint!("{what}? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("not restored");
            return Ok(1);
        }
    }
    let hold = hold(common, &format!("backup restore {}", job.name))?;
    let result = runtime()?.block_on(async {
        let ctx = Context::connect(
            &loaded.checked.state,
            runner::rendered_files(&loaded.checked.files),
            loaded.masker.clone(),
        )
        .await?
        .with_identities(ids);
        let mode = if args.merge {
            runner::RestoreMode::Merge
        } else {
            runner::RestoreMode::Clean
        };
        runner::restore(&ctx, job, &manifest, mode).await
    });
    drop(hold);
    match result {
        Ok(()) => {
            println!("{}: restored backup {}", job.name, manifest.id);
            Ok(0)
        }
        Err(e) => {
            eprintln!(
                "error[{}]: {}",
                common.env,
                loaded.masker.mask(&e.to_string())
            );
            Ok(1)
        }
    }
}
