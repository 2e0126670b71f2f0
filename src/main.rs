//! The driftless binary: parse the command line, set up logging, run, and
//! map the outcome to an exit code (0 ok, 1 failure or errors found, 2 usage).

use clap::Parser;
use tracing_subscriber::EnvFilter;

mod cli;

fn main() {
    let cli = cli::Cli::parse();
    // One TLS crypto provider for every client (gix over reqwest, later kube).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter =
        EnvFilter::try_from_env("DRIFTLESS_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Every line, from any crate, passes the secret masker.
        .with_writer(driftless::secrets::log_writer);
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
