//! The command line: `render`, `validate` (and the commands later issues add).
//! Parsing lives here; each command is a function returning an exit code.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use driftless::diag::Diagnostics;
use driftless::reconcile::{self, RenderOptions};
use driftless::render::SecretMode;
use driftless::secrets::{Masker, SecretSource};
use driftless::source::{Auth, Limits, Source};

#[derive(Debug, Parser)]
#[command(
    name = "driftless",
    version,
    about = "Keeps Docker Compose stacks, Kubernetes objects, Prometheus rules and backups equal to a Git repository"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "DRIFTLESS_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print (or write) the files an environment renders to.
    Render(RenderArgs),
    /// Render and check environments; list every error; exit 1 on any.
    Validate(ValidateArgs),
    /// Plan an environment against live systems and apply it (or only show
    /// the plan with --dry-run).
    Reconcile(ReconcileArgs),
}

/// Where the desired-state repo is and how to read it.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// Local path or URL (`file://`, `https://`, `ssh://`) of the desired-state repo.
    #[arg(long, default_value = ".", env = "DRIFTLESS_REPO")]
    pub repo: String,
    /// Branch, tag or commit to read. Without it a local path is read as it
    /// is (uncommitted edits included) and a URL per environment branch.
    #[arg(long)]
    pub rev: Option<String>,
    /// Directory holding one file per secret (or set DRIFTLESS_SECRET_<NAME>).
    #[arg(long, env = "DRIFTLESS_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Where remote repos are cloned.
    #[arg(long, env = "DRIFTLESS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Environment variable holding an HTTPS token for the repo.
    #[arg(long, env = "DRIFTLESS_GIT_TOKEN_ENV")]
    pub git_token_env: Option<String>,
    /// Deploy key file for `ssh://` repos.
    #[arg(long, env = "DRIFTLESS_GIT_SSH_KEY")]
    pub git_ssh_key: Option<PathBuf>,
    /// Largest file in the repo, in bytes.
    #[arg(long, default_value_t = Limits::default().max_file_bytes)]
    pub max_file_bytes: u64,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Environment to render.
    #[arg(long)]
    pub env: String,
    /// Write the files under this directory instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Environment to validate (default: all).
    #[arg(long, conflicts_with = "all")]
    pub env: Option<String>,
    /// Validate every environment (the default).
    #[arg(long)]
    pub all: bool,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Environment to reconcile.
    #[arg(long)]
    pub env: String,
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Exit 0 when nothing changes, 2 when there are changes, 1 on error
    /// (as `terraform plan -detailed-exitcode`), so CI can gate on it.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// List unchanged resources too.
    #[arg(long, short)]
    pub verbose: bool,
}

impl RepoArgs {
    fn source(&self) -> Result<Source> {
        let auth = match (&self.git_token_env, &self.git_ssh_key) {
            (Some(var), _) => Auth::Token {
                env_var: var.clone(),
            },
            (None, Some(key)) => Auth::SshKey { path: key.clone() },
            (None, None) => Auth::None,
        };
        let cache = self.cache_dir.clone().unwrap_or_else(default_cache_dir);
        Source::open(&self.repo, self.rev.as_deref(), &cache, &auth)
            .with_context(|| format!("cannot open repo `{}`", self.repo))
    }

    fn options(&self, mode: SecretMode) -> RenderOptions {
        RenderOptions {
            secrets: SecretSource {
                dir: self.secrets_dir.clone(),
                from_env: true,
            },
            mode,
            limits: Limits {
                max_file_bytes: self.max_file_bytes,
                ..Limits::default()
            },
        }
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("driftless");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache/driftless");
    }
    std::env::temp_dir().join("driftless-cache")
}

/// Runs a parsed command; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Render(args) => render(args),
        Command::Validate(args) => validate(args),
        Command::Reconcile(args) => reconcile_cmd(args),
    }
}

fn print_diagnostics(diags: &Diagnostics, masker: &Masker) {
    let mut err = std::io::stderr().lock();
    for d in diags.iter() {
        let _ = writeln!(err, "{}", masker.mask(&d.to_string()));
    }
}

fn render(args: RenderArgs) -> Result<i32> {
    let source = args.repo.source()?;
    let loaded = match reconcile::load(
        &source,
        &args.env,
        &args.repo.options(SecretMode::Placeholder),
    ) {
        Ok(l) => l,
        Err(diags) => {
            print_diagnostics(&diags, &Masker::default());
            return Ok(1);
        }
    };
    let masker = loaded.renderer.masker();
    for w in &loaded.checked.warnings {
        eprintln!("{}", masker.mask(&w.to_string()));
    }
    let missing = loaded.renderer.missing_secrets();
    if !missing.is_empty() {
        eprintln!(
            "note: secrets not set, rendered as placeholders: {}",
            missing.join(", ")
        );
    }
    match &args.out {
        Some(dir) => {
            for (path, file) in &loaded.checked.files {
                let dest = dir.join(path);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("create {}", parent.display()))?;
                }
                let content: Vec<u8> = match std::str::from_utf8(&file.content) {
                    Ok(text) => masker.mask(text).into_owned().into_bytes(),
                    Err(_) => file.content.to_vec(),
                };
                std::fs::write(&dest, content)
                    .with_context(|| format!("write {}", dest.display()))?;
            }
            eprintln!(
                "wrote {} files to {}",
                loaded.checked.files.len(),
                dir.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            for (path, file) in &loaded.checked.files {
                writeln!(out, "# ---- {path} (from {})", file.source)?;
                match std::str::from_utf8(&file.content) {
                    Ok(text) => {
                        let masked = masker.mask(text);
                        out.write_all(masked.as_bytes())?;
                        if !masked.ends_with('\n') {
                            writeln!(out)?;
                        }
                    }
                    Err(_) => writeln!(out, "<{} bytes of binary content>", file.content.len())?,
                }
            }
        }
    }
    Ok(0)
}

fn validate(args: ValidateArgs) -> Result<i32> {
    let source = args.repo.source()?;
    let options = args.repo.options(SecretMode::Placeholder);
    let envs: Vec<String> = match &args.env {
        Some(env) => vec![env.clone()],
        None => match reconcile::root_manifest(&source, options.limits) {
            Ok((_, m)) => m.environments.keys().cloned().collect(),
            Err(diags) => {
                report(&args, &[], &diags);
                return Ok(1);
            }
        },
    };
    let mut all = Diagnostics::new();
    let mut summaries = Vec::new();
    for env in &envs {
        match reconcile::load(&source, env, &options) {
            Ok(loaded) => {
                let s = &loaded.checked.state;
                let count = |kind: &str| {
                    s.targets
                        .iter()
                        .filter(|t| t.target.kind.as_str() == kind)
                        .map(|t| t.resources.count())
                        .max()
                        .unwrap_or(0)
                };
                summaries.push(serde_json::json!({
                    "environment": env,
                    "ok": true,
                    "revision": s.revision,
                    "revision_short": s.revision.short(),
                    "services": count("docker"),
                    "objects": count("kubernetes"),
                    "rule_files": count("prometheus"),
                    "backup_jobs": s.backups.len(),
                    "missing_secrets": loaded.renderer.missing_secrets(),
                }));
                all.extend(loaded.checked.warnings);
            }
            Err(diags) => {
                summaries.push(serde_json::json!({"environment": env, "ok": false, "errors": diags.errors().count()}));
                all.extend(diags);
            }
        }
    }
    report(&args, &summaries, &all);
    Ok(if all.has_errors() { 1 } else { 0 })
}

fn report(args: &ValidateArgs, summaries: &[serde_json::Value], diags: &Diagnostics) {
    if args.output == Output::Json {
        let doc = serde_json::json!({"environments": summaries, "diagnostics": diags});
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        return;
    }
    print_diagnostics(diags, &Masker::default());
    let color = std::io::stdout().is_terminal();
    for s in summaries {
        let env = s["environment"].as_str().unwrap_or("?");
        if s["ok"].as_bool() == Some(true) {
            let mark = if color { "\x1b[32mok\x1b[0m" } else { "ok" };
            println!(
                "{env}: {mark} at {} — {} services, {} Kubernetes objects, {} rule files, {} backup jobs",
                s["revision_short"].as_str().unwrap_or("?"),
                s["services"],
                s["objects"],
                s["rule_files"],
                s["backup_jobs"]
            );
        } else {
            let mark = if color {
                "\x1b[31mfailed\x1b[0m"
            } else {
                "failed"
            };
            println!("{env}: {mark} — {} errors", s["errors"]);
        }
    }
}

fn reconcile_cmd(args: ReconcileArgs) -> Result<i32> {
    let source = args.repo.source()?;
    // Reconcile needs every secret: a placeholder must never reach a live system.
    let loaded = match reconcile::load(&source, &args.env, &args.repo.options(SecretMode::Require))
    {
        Ok(l) => l,
        Err(diags) => {
            print_diagnostics(&diags, &Masker::default());
            return Ok(1);
        }
    };
    let masker = loaded.renderer.masker();
    for w in &loaded.checked.warnings {
        eprintln!("{}", masker.mask(&w.to_string()));
    }
    let desired = &loaded.checked.state;
    if !args.dry_run && desired.revision.commit().is_none() {
        eprintln!(
            "error[{}]: the work tree at {} has uncommitted changes (or is not a Git repository); commit first, or pass --dry-run to see the plan",
            args.env, args.repo.repo
        );
        return Ok(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let fail = |e: driftless::backend::BackendError| {
            eprintln!("error[{}]: {}", args.env, masker.mask(&e.to_string()));
            Ok(1)
        };
        let drivers = match reconcile::connect(desired).await {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        let plan = match reconcile::plan(&drivers, desired, &masker).await {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let color = std::io::stdout().is_terminal() && args.output == Output::Text;
        if args.dry_run {
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&plan.to_json())?),
                Output::Text => print!("{}", plan.render_text(color, args.verbose)),
            }
            return Ok(if args.detailed_exitcode && plan.has_changes() { 2 } else { 0 });
        }
        if args.output == Output::Text {
            print!("{}", plan.render_text(color, args.verbose));
        }
        let report = match reconcile::apply(&drivers, desired, &plan, &masker).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let verdicts = match reconcile::verify(&drivers, desired, &masker, std::time::Duration::from_secs(1)).await {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        let healthy = verdicts.iter().all(|v| v.health == driftless::backend::Health::Healthy);
        match args.output {
            Output::Json => {
                let mut doc = serde_json::json!({"plan": plan.to_json(), "image_ids": report.image_ids, "health": verdicts});
                masker.mask_json(&mut doc);
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            Output::Text => {
                println!("applied {} changes", report.applied.len());
                for v in verdicts.iter().filter(|v| v.health != driftless::backend::Health::Healthy) {
                    println!("unhealthy: {} {}: {}", v.target, v.resource.name, masker.mask(&v.reason));
                }
                if healthy {
                    println!("{}: healthy at {}", args.env, desired.revision);
                }
            }
        }
        if !healthy {
            return Ok(1);
        }
        Ok(if args.detailed_exitcode && plan.has_changes() { 2 } else { 0 })
    })
}
