//! The driftless binary: parse the command line, set up logging, run, and
//! map the outcome to an exit code (0 ok, 1 failure or errors found, 2 usage).

use clap::Parser;
use tracing_subscriber::EnvFilter;

mod cli;

fn main() {
    let cli = cli::Cli::parse();
    // One TLS crypto provider for every client (gix over reqwest, later kube).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let daemon = matches!(cli.command, cli::Command::Daemon(_));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(log_filter(daemon))
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Json => subscriber.json().init(),
        cli::LogFormat::Text => subscriber.init(),
    }
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            1
        }
    };
    std::process::exit(code);
}

/// What to log: `DRIFTLESS_LOG`, else `RUST_LOG` (tracing's filter syntax),
/// else driftless's own events at `info` for the daemon (start-up
/// configuration, each reconcile's result) and `warn` for CLI commands,
/// whose results go to stdout. An unparsable filter is said and skipped.
fn log_filter(daemon: bool) -> EnvFilter {
    for var in ["DRIFTLESS_LOG", "RUST_LOG"] {
        let Ok(value) = std::env::var(var) else {
            continue;
        };
        if value.trim().is_empty() {
            continue;
        }
        match EnvFilter::try_new(&value) {
            Ok(filter) => return filter,
            Err(e) => eprintln!("warning: {var}={value:?} is not a log filter ({e}); ignored"),
        }
    }
    EnvFilter::new(if daemon {
        "warn,driftless=info"
    } else {
        "warn"
    })
}

/// Colour only on a terminal, and never with `NO_COLOR` set (no-color.org):
/// a log file or journal gets plain text.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The error and its causes, joined with `: `, leaving out a cause whose text
/// the message already carries (some errors print their source themselves).
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}
