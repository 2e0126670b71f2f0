//! Debian's OpenSSH server (`apt-get install openssh-server`) on port 22 of
//! a loopback address of its own (`127.77.0.N`: Linux routes all of 127/8
//! to `lo`, so it never clashes with a system sshd on 127.0.0.1:22), so a
//! test can reach the real local engine as a remote `ssh://root@127.77.0.N`
//! target: the ssh session runs `docker system dial-stdio` on "the remote",
//! which is this machine. Needs root (port 22, login as root) and the
//! `docker` CLI, as CI has.
//!
//! The client keys are generated per test (`ssh-keygen`): `key` is in the
//! server's authorized keys, `wrong_key` is not.
//!
//! Side effect on the running user's `~/.ssh/known_hosts`: driftless's ssh
//! transport (bollard through the `openssh` crate) accepts a new host key
//! and remembers it there (`StrictHostKeyChecking=accept-new`), and neither
//! lets the known-hosts file be chosen nor does the `ssh` client take it
//! from the environment. To add one entry per address once, not one per
//! run, the server's host key is generated once into the target dir
//! (`CARGO_TARGET_TMPDIR/sshd-host-key`) and reused; an entry for the
//! address with another key (another target dir, a cleaned cache) is
//! removed with `ssh-keygen -R` before the server starts, so a re-run never
//! meets a "host key changed" refusal.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd, stopped on drop.
pub struct Sshd {
    /// `127.77.0.N`.
    pub addr: String,
    /// The authorized client private key.
    pub key: PathBuf,
    /// A client private key the server does not accept.
    pub wrong_key: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} runs (apt-get install openssh-server openssh-client): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Generates an ed25519 key pair without a passphrase at `path`.
fn keygen(path: &Path) {
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            path.to_str().unwrap(),
        ],
    );
}

/// The server's host key, generated once per target dir (see the module
/// docs); concurrent tests and test processes see a complete key file.
fn host_key() -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sshd-host-key");
    let key = dir.join("ssh_host_ed25519_key");
    if !key.with_extension("pub").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let staging = tempfile::tempdir_in(&dir).unwrap();
        let fresh = staging.path().join("key");
        keygen(&fresh);
        std::fs::rename(&fresh, &key).unwrap();
        std::fs::rename(fresh.with_extension("pub"), key.with_extension("pub")).unwrap();
    }
    key
}

/// Removes known_hosts entries for `addr` whose key is not `public` (the
/// `type base64` of the host key), so accept-new can record ours.
fn forget_other_host_keys(addr: &str, public: &str) {
    let found = Command::new("ssh-keygen")
        .args(["-F", addr])
        .output()
        .expect("ssh-keygen runs");
    let listed = String::from_utf8_lossy(&found.stdout);
    let stale = listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .any(|l| {
            l.split_whitespace()
                .skip(1)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
                != public
        });
    if stale {
        run("ssh-keygen", &["-R", addr]);
    }
}

impl Sshd {
    /// Starts sshd on `127.77.0.{octet}:22`; each test uses its own octet.
    pub fn start(octet: u8) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "/usr/sbin/sshd is needed for the ssh:// tests (apt-get install openssh-server)"
        );
        // Privilege separation directory; the init script creates it on a
        // booted system, a fresh container may lack it.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (the tests run as root)");
        let addr = format!("127.77.0.{octet}");
        let host_key = host_key();
        let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let public = public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        forget_other_host_keys(&addr, &public);

        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client");
        let wrong_key = dir.path().join("wrong");
        keygen(&key);
        keygen(&wrong_key);
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized).unwrap();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {addr}:22\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PidFile none\n",
                host_key = host_key.display(),
                authorized = authorized.display(),
            ),
        )
        .unwrap();
        let log_path = dir.path().join("sshd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let mut server = Sshd {
            addr,
            key,
            wrong_key,
            child,
            dir,
        };
        // Ready once it says so; an address left bound by an interrupted run
        // makes it exit instead.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.log().contains("Server listening on") {
            let exited = server.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "sshd did not start on {}:22 ({exited:?}); is one from an interrupted run still \
                 listening there, or a system sshd on 0.0.0.0:22 (`ss -ltnp`)? log:\n{}",
                server.addr,
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The ssh:// Docker host for root on this server.
    pub fn host(&self) -> String {
        format!("ssh://root@{}", self.addr)
    }

    /// What sshd has logged (`-e`: accepted and refused logins).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
