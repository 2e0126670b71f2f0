//! Helpers for the daemon's end-to-end tests: a bare repo with a work
//! clone to push from, the daemon as a child process with its own state
//! directory and logs, its status API, and a receiver for notifications.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The driftless binary, copied once per test process: a target directory
/// shared with other checkouts can have its `driftless` replaced while the
/// tests run, and these tests start the binary many times.
pub fn binary() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // A hard link in the target's tmp dir keeps this build's file alive
        // without copying it; a copy where linking is not possible.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join(format!("driftless-it-{}", std::process::id()));
        let _ = std::fs::remove_file(&copy);
        if std::fs::hard_link(env!("CARGO_BIN_EXE_driftless"), &copy).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_driftless"), &copy).unwrap();
        }
        let help = Command::new(&copy).arg("--help").output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("daemon"),
            "{} is not this checkout's build (a shared target directory was rebuilt by another checkout); run the tests again",
            env!("CARGO_BIN_EXE_driftless")
        );
        copy
    })
}

/// The webhook secret every test daemon uses (GitHub's test secret).
pub const HOOK_SECRET: &str = "It's a Secret to Everybody";
pub const API_TOKEN: &str = "api-token-for-tests-7731";

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `git args` in `dir` with `input` on its stdin; returns its stdout.
pub fn git_with_input(dir: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to git");
    let out = child.wait_with_output().expect("git");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repo (what the daemon follows) and a clone to commit and push from.
pub struct Bare {
    dir: tempfile::TempDir,
}

impl Bare {
    pub fn new(files: &[(&str, String)]) -> Bare {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "--bare", "repo.git"]);
        git(dir.path(), &["clone", "-q", "repo.git", "work"]);
        let b = Bare { dir };
        b.commit(files, "initial");
        b
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("repo.git")
    }

    /// The clone commits are made in (for what [`Bare::commit`] cannot
    /// write, a symlink say).
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Writes `files`, commits, pushes to `main`; returns the commit id.
    pub fn commit(&self, files: &[(&str, String)], message: &str) -> String {
        let id = self.commit_unpushed(files, message);
        git(&self.work(), &["push", "-q", "origin", "HEAD:main"]);
        id
    }

    /// [`Bare::commit`] without the push (to push a tag with it).
    pub fn commit_unpushed(&self, files: &[(&str, String)], message: &str) -> String {
        for (path, content) in files {
            let dest = self.work().join(path);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(dest, content).unwrap();
        }
        git(&self.work(), &["add", "-A"]);
        git(&self.work(), &["commit", "-q", "-m", message]);
        git(&self.work(), &["rev-parse", "HEAD"])
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start a daemon.
pub struct Options {
    pub repo: PathBuf,
    pub env: String,
    pub state_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub poll: &'static str,
    pub watch: bool,
    /// Extra lines for the config file.
    pub extra: String,
    /// Extra environment variables.
    pub vars: Vec<(String, String)>,
}

impl Options {
    /// A daemon for `env` watching the bare repo `repo` (polling hourly).
    pub fn watching(repo: &Bare, env: &str, state_dir: &Path, secrets_dir: &Path) -> Options {
        Options {
            repo: repo.path(),
            env: env.to_owned(),
            state_dir: state_dir.to_owned(),
            secrets_dir: secrets_dir.to_owned(),
            poll: "1h",
            watch: true,
            extra: String::new(),
            vars: vec![],
        }
    }
}

/// A running daemon; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    pub logs: PathBuf,
    _log_dir: Arc<tempfile::TempDir>,
    client: reqwest::Client,
}

impl Daemon {
    pub fn start(o: &Options) -> Daemon {
        Daemon::start_on(o, "127.0.0.1")
    }

    /// [`Daemon::start`] listening on `host` (`0.0.0.0`: reachable from a
    /// non-loopback address too); [`Daemon::url`] still uses loopback.
    pub fn start_on(o: &Options, host: &str) -> Daemon {
        Daemon::spawn(o, host, &[], None)
    }

    /// [`Daemon::start`] with extra `daemon` flags.
    pub fn start_with_flags(o: &Options, flags: &[&str]) -> Daemon {
        Daemon::spawn(o, "127.0.0.1", flags, None)
    }

    /// [`Daemon::start`] with `RLIMIT_NOFILE` set to `limit` (soft and
    /// hard), as on a host with the usual 1,024 descriptors.
    pub fn start_with_nofile(o: &Options, limit: u64) -> Daemon {
        Daemon::spawn(o, "127.0.0.1", &[], Some(limit))
    }

    fn spawn(o: &Options, host: &str, flags: &[&str], nofile: Option<u64>) -> Daemon {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port();
        let log_dir = Arc::new(tempfile::tempdir().unwrap());
        let config = log_dir.path().join("driftless-daemon.yaml");
        std::fs::write(
            &config,
            format!(
                "repo: {}\n{}state_dir: {}\nsecrets_dir: {}\nlisten: {host}:{port}\npoll_interval: {}\nwatch: {}\nverify_poll: 250ms\nshutdown_timeout: 60s\nretry:\n  initial: 1s\n  max: 2s\nwebhook:\n  rate_limit: 100000\n  burst: 100000\n{}",
                o.repo.display(),
                // Empty: the daemon picks environments by its identity.
                if o.env.is_empty() {
                    String::new()
                } else {
                    format!("environments: [{}]\n", o.env)
                },
                o.state_dir.display(),
                o.secrets_dir.display(),
                o.poll,
                o.watch,
                o.extra
            ),
        )
        .unwrap();
        let logs = log_dir.path().join("daemon.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&logs)
            .unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(["--log-format", "json", "daemon", "--config"])
            .arg(&config)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("DRIFTLESS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("DRIFTLESS_LOG", "info,driftless=debug")
            .env("DRIFTLESS_WEBHOOK_SECRET", HOOK_SECRET)
            .env("DRIFTLESS_API_TOKEN", API_TOKEN);
        for (k, v) in &o.vars {
            cmd.env(k, v);
        }
        if let Some(limit) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().expect("start the daemon");
        Daemon {
            child: Some(child),
            port,
            logs,
            _log_dir: log_dir,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.logs).unwrap_or_default()
    }

    /// The status of `env` from the API (`None` while the daemon is not up).
    pub async fn status(&self, env: &str) -> Option<serde_json::Value> {
        let r = self
            .client
            .get(self.url("/api/environments"))
            .bearer_auth(API_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
        Some(v["environments"][env].clone())
    }

    /// Waits until `pred` holds for the status of `env`; panics with the
    /// logs after `timeout`.
    pub async fn wait(
        &mut self,
        env: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.status(env).await
                && pred(&s)
            {
                return s;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(code)) = child.try_wait()
            {
                panic!(
                    "daemon exited ({code}) waiting for {what}:\n{}",
                    self.log_text()
                );
            }
            if tokio::time::Instant::now() > deadline {
                let s = self.status(env).await;
                panic!(
                    "timed out waiting for {what}; status: {s:#?}\nlogs:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the HTTP listener answers.
    pub async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(code)) = child.try_wait()
            {
                panic!("daemon exited ({code}) at start:\n{}", self.log_text());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "daemon not ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, `STOP`, `CONT`) to the daemon process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id() as libc::pid_t;
        let sig = match signal {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "STOP" => libc::SIGSTOP,
            "CONT" => libc::SIGCONT,
            other => panic!("unknown signal {other}"),
        };
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Caps the daemon's address space (`RLIMIT_AS`) at `bytes` from now
    /// on: an allocation past it fails (and a Rust process aborts).
    pub fn limit_address_space(&self, bytes: u64) {
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: prlimit(2) on our own child's pid with a valid rlimit.
        let rc = unsafe {
            libc::prlimit(
                self.pid() as libc::pid_t,
                libc::RLIMIT_AS,
                &limit,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut child = self.child.take().expect("running");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A history row list from the status (`last_reconcile` is one row).
    pub fn history(state_dir: &Path, env: &str) -> serde_json::Value {
        let out = Command::new(binary())
            .args([
                "history",
                "--env",
                env,
                "--output",
                "json",
                "--limit",
                "100",
                "--state-dir",
            ])
            .arg(state_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a driftless CLI command; returns (code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("DRIFTLESS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A local HTTP server that records every POST body (notifications).
pub struct Receiver {
    pub url: String,
    pub bodies: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        let app = axum::Router::new().fallback(move |body: String| {
            let b = b.clone();
            async move {
                b.lock().unwrap().push(body);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, bodies, task }
    }

    pub fn all(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// HMAC-SHA256 signature header value for `body` under the test secret.
pub fn sign(body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
