//! What the daemon writes to stderr when nobody configured logging: its
//! start-up configuration at `info`, plain text (no colour codes) when stderr
//! is a file, and `RUST_LOG` honoured when `DRIFTLESS_LOG` is not set.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon_support::{Bare, binary, free_port};

/// A daemon started as a user would, with only the given log variables set;
/// its stderr goes to a file. Returns the child, the log path and the port.
fn start(
    vars: &[(&str, &str)],
    dir: &std::path::Path,
    repo: &Bare,
) -> (Child, std::path::PathBuf, u16) {
    let port = free_port();
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        format!(
            "repo: {}\nstate_dir: {}\nlisten: 127.0.0.1:{port}\npoll_interval: 1h\nwatch: false\n",
            repo.path().display(),
            dir.join("state").display(),
        ),
    )
    .unwrap();
    let log = dir.join("stderr.log");
    let mut cmd = Command::new(binary());
    cmd.args(["daemon", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("DRIFTLESS_") || k == "RUST_LOG" || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(vars.iter().copied());
    (cmd.spawn().expect("start the daemon"), log, port)
}

fn repo() -> Bare {
    Bare::new(&[(
        "driftless.yaml",
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n"
            .to_owned(),
    )])
}

/// Waits until the daemon answers `/healthz`: it has started and logged
/// whatever it logs at start-up.
fn wait_until_serving(child: &mut Child, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the daemon exited before serving: {status}");
        }
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer.starts_with("HTTP/1.1 200")
        });
        if up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not serve /healthz within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_daemon_logs_its_start_at_info_in_plain_text_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo();
    let (mut child, log, port) = start(&[], dir.path(), &repo);
    wait_until_serving(&mut child, port);
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("driftless daemon starting") && text.contains("listening"),
        "the start-up configuration and address are logged by default:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a log file:\n{text}"
    );
}

#[test]
fn rust_log_is_honoured_and_driftless_log_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo();
    let (mut child, log, port) = start(&[("RUST_LOG", "error")], dir.path(), &repo);
    wait_until_serving(&mut child, port);
    stop(child);
    let quiet = std::fs::read_to_string(&log).unwrap();
    assert!(
        !quiet.contains("driftless daemon starting"),
        "RUST_LOG=error silences info lines:\n{quiet}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut child, log, port) = start(
        &[("RUST_LOG", "error"), ("DRIFTLESS_LOG", "info")],
        dir.path(),
        &repo,
    );
    wait_until_serving(&mut child, port);
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("driftless daemon starting"),
        "DRIFTLESS_LOG takes precedence over RUST_LOG:\n{text}"
    );
}
