//! The command line: `render`, `validate`, `reconcile`, `daemon`, and the
//! daemon's control commands (`rollback`, `suspend`, `resume`, `history`).
//! Parsing lives here; each command is a function returning an exit code.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use driftless::daemon::config::{DaemonConfig, Overrides};
use driftless::daemon::lock::{self, EnvLock, LockError};
use driftless::diag::Diagnostics;
use driftless::reconcile::decide::{Origin, Policy, Run};
use driftless::reconcile::pipeline::{self, Claim, End, Scope};
use driftless::reconcile::{self, RenderOptions};
use driftless::render::SecretMode;
use driftless::secrets::{Masker, SecretSource};
use driftless::source::short;
use driftless::source::{Auth, CommitId, Limits, Source};
use driftless::store::{Kind, Store, Trigger};

mod backup;

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
    /// Run the daemon: keep environments equal to their branches, verify,
    /// roll back, serve the GitHub webhook.
    Daemon(DaemonArgs),
    /// Pin an environment to a commit until `resume` (the daemon applies it).
    Rollback(RollbackArgs),
    /// Stop automatic reconciles of an environment until `resume`.
    Suspend(SuspendArgs),
    /// Lift a pin or a suspension: the environment follows its branch again.
    Resume(ResumeArgs),
    /// Show an environment's recorded reconciles, pin, suspension and last good commit.
    History(HistoryArgs),
    /// Show every environment: commit, last good commit, health, drift, pin, suspension.
    Status(StatusArgs),
    /// Backup jobs of an environment: list, run, verify, restore.
    Backup(backup::BackupArgs),
    /// Check a commit's signature (SSH or OpenPGP), or a signed tag's, as
    /// the daemon does for `verify: { signatures: required }`.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Local desired-state repo.
    #[arg(long, default_value = ".", env = "DRIFTLESS_REPO")]
    pub repo: PathBuf,
    /// Commit to verify: a sha, branch or tag.
    #[arg(long, default_value = "HEAD")]
    pub rev: String,
    /// The allowed_signers file of SSH keys (`ssh-keygen -Y verify` format).
    #[arg(long, env = "DRIFTLESS_ALLOWED_SIGNERS")]
    pub allowed_signers: Option<PathBuf>,
    /// A file of armored OpenPGP public keys (`gpg --armor --export`);
    /// repeat for several files.
    #[arg(long = "openpgp-keys", value_name = "FILE")]
    pub openpgp_keys: Vec<PathBuf>,
    /// What must be signed: `head` (the commit), `tag` (an annotated tag
    /// pointing at it) or `tag_and_head`.
    #[arg(long, default_value = "head", value_parser = parse_mode)]
    pub mode: driftless::source::verify::Mode,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The daemon's state directory (store and lock files).
#[derive(Debug, Args)]
pub struct StateArgs {
    /// State directory of the daemon (default /var/lib/driftless for root,
    /// else ~/.local/state/driftless).
    #[arg(long, env = "DRIFTLESS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(driftless::daemon::config::default_state_dir)
    }
}

/// A running daemon to go through instead of the state directory.
#[derive(Debug, Args)]
pub struct DaemonApiArgs {
    /// Base URL of a running daemon (like http://127.0.0.1:8088): the
    /// command goes through its API. Without it, the state directory is used.
    #[arg(long = "daemon", env = "DRIFTLESS_DAEMON")]
    pub daemon: Option<String>,
    /// File holding the daemon's API token (or set DRIFTLESS_TOKEN).
    #[arg(long, env = "DRIFTLESS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl DaemonApiArgs {
    /// The API client when `--daemon` (or DRIFTLESS_DAEMON) is given.
    fn client(&self) -> Result<Option<driftless::http::client::Client>> {
        let Some(url) = &self.daemon else {
            return Ok(None);
        };
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("read the token file {}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
            None => std::env::var("DRIFTLESS_TOKEN").ok(),
        }
        .filter(|t| !t.is_empty())
        .map(driftless::daemon::config::Secret::new);
        Ok(Some(driftless::http::client::Client::new(url, token)?))
    }
}

/// Runs one call to a daemon's API on a small runtime.
fn call<T>(
    f: impl std::future::Future<Output = Result<T, driftless::http::client::ClientError>>,
) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    Ok(runtime.block_on(f)?)
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this environment.
    #[arg(long)]
    pub env: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub api: DaemonApiArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Configuration file (default ./driftless-daemon.yaml when present).
    #[arg(long, env = "DRIFTLESS_DAEMON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Local path or URL of the desired-state repo.
    #[arg(long, env = "DRIFTLESS_REPO")]
    pub repo: Option<String>,
    /// Environment to drive (repeat; default: all whose targets this identity owns).
    #[arg(long = "env", env = "DRIFTLESS_ENVIRONMENTS", value_delimiter = ',')]
    pub environments: Vec<String>,
    /// This daemon's identity (matched against targets' `owner`).
    #[arg(long, env = "DRIFTLESS_IDENTITY")]
    pub identity: Option<String>,
    #[arg(long, env = "DRIFTLESS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory holding one file per secret.
    #[arg(long, env = "DRIFTLESS_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Where remote repos are cloned (default <state-dir>/cache).
    #[arg(long, env = "DRIFTLESS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// HTTP listen address (webhook, health, API), like 127.0.0.1:8088.
    #[arg(long, env = "DRIFTLESS_LISTEN")]
    pub listen: Option<String>,
    /// How often to fetch and compare (default 60s).
    #[arg(long, env = "DRIFTLESS_POLL_INTERVAL")]
    pub poll_interval: Option<String>,
    /// File holding the GitHub webhook secret (or set DRIFTLESS_WEBHOOK_SECRET).
    #[arg(long, env = "DRIFTLESS_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// File holding the API bearer token (or set DRIFTLESS_API_TOKEN).
    #[arg(long, env = "DRIFTLESS_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Start even though the state directory held a store that is now
    /// missing, empty or damaged: every suspension, pin, failed-commit mark
    /// and last good commit it held is forgotten (logged as a warning).
    #[arg(long)]
    pub accept_lost_state: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[arg(long)]
    pub env: String,
    /// Commit to pin the environment to (a full id, or any revision of
    /// --repo; through --daemon, any revision of the daemon's repo).
    /// Default: the environment's last good commit.
    #[arg(long)]
    pub to: Option<String>,
    /// Local repo to resolve --to in.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    #[command(flatten)]
    pub api: DaemonApiArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct SuspendArgs {
    #[arg(long)]
    pub env: String,
    /// Why (shown in status and history).
    #[arg(long, default_value = "suspended by an operator")]
    pub reason: String,
    #[command(flatten)]
    pub api: DaemonApiArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[arg(long)]
    pub env: String,
    /// Also forget the commits marked failed, so the head of the branch is tried again.
    #[arg(long)]
    pub retry_failed: bool,
    #[command(flatten)]
    pub api: DaemonApiArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this environment (default: all).
    #[arg(long)]
    pub env: Option<String>,
    /// How many reconciles to show.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub api: DaemonApiArgs,
    #[command(flatten)]
    pub state: StateArgs,
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
    /// Allow a plan that removes most of what is deployed (an empty render,
    /// a wrong glob are refused otherwise), as the environment's
    /// `allow.mass_removal` does.
    #[arg(long, alias = "allow-mass-removal")]
    pub allow_mass_prune: bool,
    /// Take over a Compose project of the same name that this environment
    /// does not own — one another tool (docker compose) or another
    /// driftless instance deployed. With --dry-run: show which containers
    /// would be kept and which recreated, and why.
    #[arg(long)]
    pub adopt: bool,
    /// Apply as this daemon identity: only the targets it owns, and those
    /// nobody owns (a daemon's `identity`).
    #[arg(long)]
    pub identity: Option<String>,
    /// Apply targets a daemon identity owns without being it (a target
    /// with an `owner` is refused otherwise).
    #[arg(long, conflicts_with = "identity")]
    pub ignore_owner: bool,
    /// Roll back to the last good commit when the result is unhealthy, as
    /// the daemon does (`--rollback-on-failure=false` to keep it).
    /// Default: the environment's `rollback.automatic`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub rollback_on_failure: Option<bool>,
    #[command(flatten)]
    pub state: StateArgs,
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
        Command::Daemon(args) => daemon_cmd(args),
        Command::Rollback(args) => rollback_cmd(args),
        Command::Suspend(args) => suspend_cmd(args),
        Command::Resume(args) => resume_cmd(args),
        Command::History(args) => history_cmd(args),
        Command::Status(args) => status_cmd(args),
        Command::Backup(args) => backup::run(args),
        Command::Verify(args) => verify_cmd(args),
    }
}

fn parse_mode(s: &str) -> Result<driftless::source::verify::Mode, String> {
    use driftless::source::verify::Mode;
    Mode::parse(s).ok_or_else(|| format!("`{s}` is not one of {}", Mode::NAMES))
}

/// Prints the verdict on `--rev`'s signature; exit 1 when it is refused.
fn verify_cmd(args: VerifyArgs) -> Result<i32> {
    use driftless::source::verify::{Keys, check};
    if args.allowed_signers.is_none() && args.openpgp_keys.is_empty() {
        anyhow::bail!(
            "no keys to verify against: give --allowed-signers FILE (SSH) or \
             --openpgp-keys FILE (OpenPGP), or both"
        );
    }
    let keys = Keys::load(args.allowed_signers.as_deref(), &args.openpgp_keys)?;
    let repo = driftless::source::Repo::open(&args.repo)
        .with_context(|| format!("cannot open repo `{}`", args.repo.display()))?;
    let id = repo.resolve(&args.rev)?;
    let verdict = check(&repo, &id, &keys, args.mode, chrono::Utc::now().timestamp())?;
    if args.output == Output::Json {
        let doc = match &verdict {
            Ok(accepted) => {
                let own = accepted.iter().find(|a| a.tag.is_none());
                serde_json::json!({
                    "commit": id, "verified": true,
                    "signer": own.map(|a| &a.signer.principals),
                    "key": own.map(|a| &a.signer.key),
                    "tags": accepted.iter().filter_map(|a| a.tag.as_ref().map(|t| serde_json::json!({
                        "tag": t, "signer": a.signer.principals, "key": a.signer.key,
                    }))).collect::<Vec<_>>(),
                })
            }
            Err(reason) => serde_json::json!({
                "commit": id, "verified": false, "reason": reason,
            }),
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        match &verdict {
            Ok(accepted) => {
                for a in accepted {
                    println!("commit {}: {a}", short(&id));
                }
            }
            Err(reason) => println!("commit {}: refused: {reason}", short(&id)),
        }
    }
    Ok(if verdict.is_ok() { 0 } else { 1 })
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
    for (file, keys, decrypted) in loaded.renderer.sops_values() {
        let how = if decrypted {
            "decrypted, shown masked"
        } else {
            "no age identity on this host, rendered as placeholders"
        };
        eprintln!(
            "note: values from SOPS file {file} ({how}): {}",
            keys.join(", ")
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
                    "sops_not_decrypted": loaded
                        .renderer
                        .sops_values()
                        .into_iter()
                        .filter(|(_, _, decrypted)| !decrypted)
                        .map(|(file, _, _)| file)
                        .collect::<Vec<_>>(),
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
            let missing: Vec<&str> = s["missing_secrets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str())
                .collect();
            let missing = match missing.as_slice() {
                [] => String::new(),
                names => format!(
                    "; secrets not set (checked with placeholders, `reconcile` needs them): {}",
                    names.join(", ")
                ),
            };
            let sops: Vec<&str> = s["sops_not_decrypted"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str())
                .collect();
            let sops = match sops.as_slice() {
                [] => String::new(),
                files => format!(
                    "; SOPS files not decrypted (no age identity, checked with placeholders): {}",
                    files.join(", ")
                ),
            };
            println!(
                "{env}: {mark} at {} — {} services, {} Kubernetes objects, {} rule files, {} backup jobs{missing}{sops}",
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
    let options = args.repo.options(SecretMode::Require);
    let loaded = match reconcile::load(&source, &args.env, &options) {
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
    let env = &args.env;
    let desired = &loaded.checked.state;
    let commit = desired.revision.commit().map(CommitId::new);
    let targets = match &args.identity {
        Some(identity) => {
            let identity = identity.as_str();
            let claimed = desired
                .targets
                .iter()
                .any(|t| t.target.claimed_by(Some(identity)));
            if !claimed && !args.dry_run {
                let owners: Vec<String> = desired
                    .targets
                    .iter()
                    .map(|t| {
                        let owner = t.target.owner.as_deref().unwrap_or("none");
                        format!("`{}` (owner `{owner}`)", t.target.name)
                    })
                    .collect();
                eprintln!(
                    "error[{env}]: identity `{identity}` claims none of {env}'s targets: {}",
                    owners.join(", ")
                );
                return Ok(1);
            }
            Claim::Identity(Some(identity))
        }
        // A dry-run changes nothing: it may plan every target.
        None if args.ignore_owner || args.dry_run => Claim::All,
        None => {
            // A target a daemon identity owns is that daemon's to apply.
            if let Some(t) = desired.targets.iter().find(|t| t.target.owner.is_some()) {
                let owner = t.target.owner.as_deref().unwrap_or_default();
                eprintln!(
                    "error[{env}]: target `{}` is owned by daemon identity `{owner}`; apply through that daemon, pass --identity {owner} to apply as it, or --ignore-owner; --dry-run is always allowed",
                    t.target.name
                );
                return Ok(1);
            }
            Claim::Identity(None)
        }
    };
    let scope = Scope {
        masker: &masker,
        targets,
        allow_mass_removal: args.allow_mass_prune,
        adopt: args.adopt,
    };
    let color = std::io::stdout().is_terminal() && args.output == Output::Text;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    if args.dry_run {
        // The same load and plan as an apply; nothing applied or recorded.
        return runtime.block_on(async {
            let plan = match pipeline::prepare(loaded, scope, None, &Default::default()).await {
                Ok(p) => p.plan,
                Err(e) => {
                    eprintln!("error[{env}]: {}", masker.mask(&e.to_string()));
                    return Ok(1);
                }
            };
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&plan.to_json())?),
                Output::Text => print!("{}", plan.render_text(color, args.verbose)),
            }
            Ok(if args.detailed_exitcode && plan.has_changes() {
                2
            } else {
                0
            })
        });
    }
    let Some(commit) = commit else {
        eprintln!(
            "error[{env}]: the work tree at {} has uncommitted changes (or is not a Git repository); commit first, or pass --dry-run to see the plan",
            args.repo.repo
        );
        return Ok(1);
    };
    // An apply takes the environment's lock: a running daemon that drives
    // it holds it, and the two must never apply at once.
    let _lock = match EnvLock::try_acquire(
        &args.state.dir(),
        env,
        &format!("driftless reconcile pid {}", std::process::id()),
    ) {
        Ok(l) => l,
        Err(LockError::Held { holder, .. }) => {
            eprintln!(
                "error[{env}]: environment {env} is driven by {holder}; apply through it (push to the branch, `driftless rollback --env {env} --to SHA`, or POST /api/environments/{env}/reconcile); --dry-run is always allowed"
            );
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    // Recorded where the daemon records it, so `driftless history` shows
    // what CI deployed, and a rollback finds the last good commit.
    let store = Arc::new(Store::open(&args.state.dir()).context("open the state store")?);
    store.mark_interrupted(env)?;
    let state = store.env_state(env)?;
    if let Some(reason) = &state.control.suspended {
        eprintln!(
            "error[{env}]: environment {env} is suspended ({reason}); `driftless resume --env {env}` lifts it"
        );
        return Ok(1);
    }
    let settings = &desired.environment;
    let policy = Policy {
        automatic_rollback: args
            .rollback_on_failure
            .unwrap_or(settings.rollback.automatic),
        remove_on_failed_first_deploy: settings.allow.remove_on_failed_first_deploy,
    };
    let revision = desired.revision.to_string();
    let http = reqwest::Client::builder()
        .user_agent(concat!("driftless/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("HTTP client")?;
    let penv = pipeline::Env {
        name: env,
        store: &store,
        render: &options,
        scope,
        http: &http,
        verify_poll: std::time::Duration::from_secs(1),
        progress: None,
    };
    let run = Run {
        commit,
        pin: None,
        images: Default::default(),
        origin: Origin::Head,
    };
    let hooks = CliHooks {
        source: &source,
        first: std::sync::Mutex::new(Some((run.clone(), loaded))),
        print_plans: args.output == Output::Text,
        color,
        verbose: args.verbose,
    };
    let report = runtime.block_on(pipeline::reconcile(
        penv,
        &hooks,
        &mut pipeline::Memo::default(),
        run,
        Trigger::Manual,
        state.last_good.as_ref(),
        policy,
    ));
    let healthy = report.end == End::Done { healthy: true };
    let Some(first) = report.runs.first() else {
        return Ok(1);
    };
    let rollback = report.runs.get(1);
    match args.output {
        Output::Json => {
            let mut doc = serde_json::json!({
                "plan": first.plan.as_ref().map(|p| p.to_json()),
                "image_ids": first.image_ids,
                "health": first.verdicts,
                "outcome": first.outcome,
                "error": first.error,
                "backups": first.backups,
                "rollback": rollback.map(|r| serde_json::json!({
                    "commit": r.run.commit,
                    "outcome": r.outcome,
                    "error": r.error,
                })),
            });
            masker.mask_json(&mut doc);
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => {
            for r in &report.runs {
                print_run(env, r, &masker);
            }
            if healthy {
                println!("{env}: healthy at {revision}");
            }
        }
    }
    if let End::Retry(e) = &report.end {
        eprintln!(
            "error[{env}]: {}; nothing more was done, try again",
            masker.mask(e)
        );
    }
    if !healthy {
        return Ok(1);
    }
    let changed = first.plan.as_ref().is_some_and(|p| p.has_changes());
    Ok(if args.detailed_exitcode && changed {
        2
    } else {
        0
    })
}

/// What one run of `reconcile` did, as text.
fn print_run(env: &str, r: &pipeline::RunReport, masker: &Masker) {
    let changes = r.plan.as_ref().map_or(0, |p| p.summary().changed());
    match (r.run.kind(), r.outcome.is_good()) {
        (Kind::Rollback, true) => println!("{env}: rolled back to {}", r.run.commit.short()),
        (Kind::Rollback, false) => println!(
            "{env}: the rollback to {} failed ({})",
            r.run.commit.short(),
            r.outcome.as_str()
        ),
        (Kind::Deploy, true) => println!("applied {changes} changes"),
        (Kind::Deploy, false) => {}
    }
    for b in &r.backups {
        println!("before_apply backup: {b}");
    }
    let unhealthy: Vec<_> = r
        .verdicts
        .iter()
        .filter(|v| v.health != driftless::backend::Health::Healthy)
        .collect();
    for v in &unhealthy {
        println!(
            "unhealthy: {} {}: {}",
            v.target,
            v.resource.name,
            masker.mask(&v.reason)
        );
    }
    if let Some(e) = &r.error
        && unhealthy.is_empty()
    {
        eprintln!("error[{env}]: {}", masker.mask(e));
    }
}

/// The CLI's side of the pipeline: commits read from the repo it was given,
/// plans printed as they are made, notices on stderr.
struct CliHooks<'a> {
    source: &'a Source,
    /// The run asked for, loaded and checked already.
    first: std::sync::Mutex<Option<(Run, reconcile::Loaded)>>,
    print_plans: bool,
    color: bool,
    verbose: bool,
}

impl pipeline::Hooks for CliHooks<'_> {
    fn source_at(&self, commit: &CommitId) -> std::result::Result<Source, String> {
        self.source.at(commit).map_err(|e| e.to_string())
    }

    fn loaded(&self, run: &Run) -> Option<reconcile::Loaded> {
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        match first.take() {
            Some((asked, loaded)) if asked == *run => Some(loaded),
            _ => None,
        }
    }

    fn planned(&self, run: &Run, plan: &driftless::plan::Plan) {
        if !self.print_plans {
            return;
        }
        if run.kind() == Kind::Rollback {
            println!("rolling back to {}", run.commit.short());
        }
        print!("{}", plan.render_text(self.color, self.verbose));
    }

    fn notify(&self, notice: pipeline::Notice) -> impl std::future::Future<Output = ()> + Send {
        eprintln!("{}", notice.message);
        async {}
    }
}

fn daemon_cmd(args: DaemonArgs) -> Result<i32> {
    let overrides = Overrides {
        config: args.config,
        repo: args.repo,
        identity: args.identity,
        environments: args.environments,
        state_dir: args.state_dir,
        secrets_dir: args.secrets_dir,
        cache_dir: args.cache_dir,
        listen: args.listen,
        poll_interval: args.poll_interval,
        webhook_secret_file: args.webhook_secret_file,
        api_token_file: args.api_token_file,
        accept_lost_state: args.accept_lost_state,
    };
    let config = match DaemonConfig::resolve(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(driftless::daemon::EXIT_USAGE);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match runtime.block_on(driftless::daemon::run(config)) {
        Ok(code) => Ok(code),
        Err(e) if e.downcast_ref::<driftless::daemon::UsageError>().is_some() => {
            eprintln!("error: {e:#}");
            Ok(driftless::daemon::EXIT_USAGE)
        }
        Err(e) => Err(e),
    }
}

/// Runs `change` on the store of `env`: under the environment's lock when
/// no daemon holds it, else through the store (SQLite serialises writers)
/// and wakes the daemon so it acts at once.
fn control_change(
    state_dir: &std::path::Path,
    env: &str,
    change: impl FnOnce(&Store) -> Result<()>,
) -> Result<()> {
    let lock = EnvLock::try_acquire(
        state_dir,
        env,
        &format!("driftless cli pid {}", std::process::id()),
    );
    let store = Store::open(state_dir).context("open the state store")?;
    change(&store)?;
    match lock {
        Ok(_held) => {
            eprintln!("note: no daemon drives {env} right now; this takes effect when one starts");
        }
        Err(LockError::Held { holder, .. }) => {
            lock::wake(state_dir, env).context("wake the daemon")?;
            eprintln!("{holder} acts on it now");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn rollback_cmd(args: RollbackArgs) -> Result<i32> {
    if let Some(client) = args.api.client()? {
        let path = format!("/api/v1/environments/{}/rollback", args.env);
        let body = serde_json::json!({"commit": args.to});
        let done = call(client.post(&path, &body))?;
        println!(
            "{}: pinned to {} until `driftless resume --env {}`",
            args.env,
            done["commit"].as_str().unwrap_or("?"),
            args.env
        );
        return Ok(0);
    }
    let to = match &args.to {
        Some(to) => to.clone(),
        None => {
            let store = Store::open(&args.state.dir()).context("open the state store")?;
            match store.last_good(&args.env)? {
                Some(lg) => lg.commit.to_string(),
                None => {
                    eprintln!("error: {} has no last good commit; pass --to SHA", args.env);
                    return Ok(1);
                }
            }
        }
    };
    let commit = match &args.repo {
        Some(path) => driftless::source::Repo::open(path)
            .and_then(|r| r.resolve(&to))
            .map(driftless::source::CommitId::new)
            .with_context(|| format!("resolve `{to}` in {}", path.display()))?,
        None if to.len() == 40 && to.chars().all(|c| c.is_ascii_hexdigit()) => {
            driftless::source::CommitId::new(to.to_lowercase())
        }
        None => {
            eprintln!(
                "error: --to must be a full 40-character commit id, or pass --repo (or --daemon) to resolve `{to}`"
            );
            return Ok(2);
        }
    };
    control_change(&args.state.dir(), &args.env, |s| {
        Ok(s.pin(&args.env, &commit, std::time::SystemTime::now())?)
    })?;
    println!(
        "{}: pinned to {commit} until `driftless resume --env {}`",
        args.env, args.env
    );
    let store = Store::open(&args.state.dir()).context("open the state store")?;
    let matching = driftless::backup::deploys::matching(&store, &args.env, &commit)?;
    if let Some(line) = driftless::backup::deploys::describe(&args.env, &matching) {
        println!("{line}");
    }
    Ok(0)
}

fn suspend_cmd(args: SuspendArgs) -> Result<i32> {
    if let Some(client) = args.api.client()? {
        let path = format!("/api/v1/environments/{}/suspend", args.env);
        call(client.post(&path, &serde_json::json!({"reason": args.reason})))?;
        println!(
            "{}: suspended until `driftless resume --env {}`",
            args.env, args.env
        );
        return Ok(0);
    }
    control_change(&args.state.dir(), &args.env, |s| {
        Ok(s.suspend(&args.env, &args.reason, std::time::SystemTime::now())?)
    })?;
    println!(
        "{}: suspended until `driftless resume --env {}`",
        args.env, args.env
    );
    Ok(0)
}

fn resume_cmd(args: ResumeArgs) -> Result<i32> {
    if let Some(client) = args.api.client()? {
        let path = format!("/api/v1/environments/{}/resume", args.env);
        call(client.post(
            &path,
            &serde_json::json!({"retry_failed": args.retry_failed}),
        ))?;
        println!("{}: resumed; it follows its branch again", args.env);
        return Ok(0);
    }
    control_change(&args.state.dir(), &args.env, |s| {
        s.resume(&args.env, std::time::SystemTime::now())?;
        if args.retry_failed {
            s.clear_failed(&args.env)?;
        }
        Ok(())
    })?;
    println!("{}: resumed; it follows its branch again", args.env);
    Ok(0)
}

fn history_cmd(args: HistoryArgs) -> Result<i32> {
    let doc = match args.api.client()? {
        Some(client) => call(async {
            let mut query = vec![("limit", args.limit.to_string())];
            if let Some(env) = &args.env {
                query.push(("env", env.clone()));
            }
            let page = client.get("/api/v1/history", &query).await?;
            let status = match &args.env {
                Some(env) => {
                    client
                        .get(&format!("/api/v1/environments/{env}"), &[])
                        .await?
                }
                None => serde_json::Value::Null,
            };
            Ok(serde_json::json!({
                "environment": args.env,
                "control": status["control"],
                "last_good": status["last_good"],
                "failed_commits": status["failed_commits"],
                "reconciles": page["reconciles"],
            }))
        })?,
        None => {
            let store = Store::open(&args.state.dir()).context("open the state store")?;
            let records = store.history(args.env.as_deref(), args.limit)?;
            let mut records = match serde_json::to_value(records)? {
                serde_json::Value::Array(a) => a,
                _ => Vec::new(),
            };
            driftless::backup::deploys::annotate(&store, &mut records)?;
            let (control, last_good, failed) = match &args.env {
                Some(env) => (
                    serde_json::to_value(store.control(env)?)?,
                    serde_json::to_value(store.last_good(env)?)?,
                    serde_json::to_value(store.failed_commits(env)?)?,
                ),
                None => Default::default(),
            };
            serde_json::json!({
                "environment": args.env,
                "control": control,
                "last_good": last_good,
                "failed_commits": failed,
                "reconciles": records,
            })
        }
    };
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    if let Some(p) = doc["control"]["pinned"].as_str() {
        println!("pinned to {p}");
    }
    if let Some(r) = doc["control"]["suspended"].as_str() {
        println!("suspended: {r}");
    }
    if let Some(lg) = doc["last_good"]["commit"].as_str() {
        println!("last good: {lg}");
    }
    for f in doc["failed_commits"].as_array().into_iter().flatten() {
        println!(
            "failed: {} — {}",
            f["commit"].as_str().unwrap_or("?"),
            f["reason"].as_str().unwrap_or("")
        );
    }
    let all_envs = args.env.is_none();
    for r in doc["reconciles"].as_array().into_iter().flatten() {
        let when = r["started_at"]
            .as_i64()
            .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        println!(
            "#{} {when} {}{} {} {} {}{}",
            r["id"],
            if all_envs {
                format!("{} ", r["env"].as_str().unwrap_or("?"))
            } else {
                String::new()
            },
            r["kind"].as_str().unwrap_or("?"),
            r["trigger"].as_str().unwrap_or("?"),
            r["commit"].as_str().map(short).unwrap_or("-"),
            r["outcome"].as_str().unwrap_or("?"),
            r["error"]
                .as_str()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
        for b in r["backups"].as_array().into_iter().flatten() {
            println!(
                "    backup before apply: job {} id {}",
                b["job"].as_str().unwrap_or("?"),
                b["id"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(0)
}

fn status_cmd(args: StatusArgs) -> Result<i32> {
    let mut envs: Vec<serde_json::Value> = match args.api.client()? {
        Some(client) => {
            let doc = call(client.get("/api/v1/environments", &[]))?;
            doc["environments"].as_array().cloned().unwrap_or_default()
        }
        None => {
            let store = Store::open(&args.state.dir()).context("open the state store")?;
            let mut out = Vec::new();
            for env in store.environments()? {
                out.push(serde_json::to_value(store.env_summary(&env)?)?);
            }
            out
        }
    };
    if let Some(env) = &args.env {
        envs.retain(|e| e["env"] == env.as_str());
        if envs.is_empty() {
            eprintln!("error: no status recorded for environment {env}");
            return Ok(1);
        }
    }
    if args.output == Output::Json {
        let doc = serde_json::json!({ "environments": envs });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    if envs.is_empty() {
        println!("no environment recorded yet");
    }
    for e in &envs {
        let commit = |v: &serde_json::Value| v.as_str().map_or("none", short).to_owned();
        let drift = match e["out_of_sync"].as_u64() {
            Some(0) | None => "in sync".to_owned(),
            Some(n) => format!("{n} out of sync"),
        };
        let last = &e["last_reconcile"];
        let mut line = format!(
            "{}: {} at {} — last good {}, {drift}, last {} ({} {})",
            e["env"].as_str().unwrap_or("?"),
            e["health"].as_str().unwrap_or("unknown"),
            commit(&e["current_commit"]),
            commit(&e["last_good"]["commit"]),
            last["outcome"].as_str().unwrap_or("none"),
            last["kind"].as_str().unwrap_or("-"),
            commit(&last["commit"]),
        );
        if let Some(p) = e["control"]["pinned"].as_str() {
            line.push_str(&format!("; pinned to {}", short(p)));
        }
        if let Some(r) = e["control"]["suspended"].as_str() {
            line.push_str(&format!("; suspended: {r}"));
        }
        println!("{line}");
        // Only a daemon knows: its running pass's replacements.
        for r in e["worker"]["replacing"].as_array().into_iter().flatten() {
            println!(
                "  replacing {}: {} {}, {} of {} replicas done, {}",
                r["target"].as_str().unwrap_or("?"),
                r["service"].as_str().unwrap_or("?"),
                r["order"].as_str().unwrap_or("?"),
                r["done"],
                r["total"],
                r["phase"].as_str().unwrap_or("?").replace('-', " ")
            );
        }
    }
    Ok(0)
}
