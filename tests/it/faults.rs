//! Hostile repos against the running daemon: a commit built to cost memory
//! is refused and recorded, in bounded memory, and the daemon stays up.

use std::path::Path;
use std::time::Duration;

use crate::daemon_support::{Bare, Daemon, Options, Receiver, git, git_with_input};

const MANIFEST: &str = "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  deepdirs:\n    values: environments/values.yaml\n    targets: [local]\n    drift_interval: 1h\n";

/// Commits on `main` of the bare repo at `repo` a tree holding the files of
/// the current head plus nine root entries that all point to one chain of
/// `depth` directories with 255-character names (git stores the chain once:
/// about 122 KB for 2,040 levels); returns the commit id.
fn push_deep_chain(repo: &Path, depth: usize) -> String {
    use gix::objs::tree::{Entry, EntryKind};
    let r = gix::open(repo).unwrap();
    let mut id = r.write_blob(b"x\n").unwrap().detach();
    let mut kind = EntryKind::Blob;
    for level in 0..depth {
        let name = format!("{:0>255}", level % 10);
        let tree = gix::objs::Tree {
            entries: vec![Entry {
                mode: kind.into(),
                filename: name.into(),
                oid: id,
            }],
        };
        id = r.write_object(&tree).unwrap().detach();
        kind = EntryKind::Tree;
    }
    let mut listing = git(repo, &["ls-tree", "main"]);
    for i in 0..9 {
        listing.push_str(&format!("\n040000 tree {id}\tchain-{i}"));
    }
    let tree = git_with_input(repo, &["mktree"], &listing);
    let commit = git(
        repo,
        &["commit-tree", &tree, "-p", "main", "-m", "deep dirs"],
    );
    git(repo, &["update-ref", "refs/heads/main", &commit]);
    commit
}

/// A daemon driving `env` of a bare repo holding `manifest`, its first
/// commit deployed.
struct Deployed {
    bare: Bare,
    state: tempfile::TempDir,
    _secrets: tempfile::TempDir,
    first: String,
    daemon: Daemon,
}

impl Deployed {
    async fn start(env: &str, manifest: String) -> Deployed {
        let bare = Bare::new(&[
            ("driftless.yaml", manifest),
            ("environments/values.yaml", "a: 1\n".to_owned()),
        ]);
        let state = tempfile::tempdir().unwrap();
        let secrets = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::start(&Options {
            repo: bare.path(),
            env: env.into(),
            state_dir: state.path().to_owned(),
            secrets_dir: secrets.path().to_owned(),
            poll: "1s",
            watch: false,
            extra: String::new(),
            vars: vec![],
        });
        daemon.ready().await;
        let first = git(&bare.path(), &["rev-parse", "main"]);
        daemon
            .wait(env, "the first commit", Duration::from_secs(60), |s| {
                s["last_good"]["commit"] == first
            })
            .await;
        Deployed {
            bare,
            state,
            _secrets: secrets,
            first,
            daemon,
        }
    }
}

/// `VmSize` (address space in use) of process `pid`, in bytes.
fn address_space(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_directory_commit_is_refused_in_bounded_memory_and_recorded() {
    let Deployed {
        bare,
        state,
        first,
        mut daemon,
        _secrets,
    } = Deployed::start("deepdirs", MANIFEST.to_owned()).await;
    // 512 MiB more address space than the daemon uses now; on the old
    // reader this commit took it from 34 MB to 5.5 GB and aborted it.
    let limit = address_space(daemon.pid()) + 512 * 1024 * 1024;
    daemon.limit_address_space(limit);
    let deep = push_deep_chain(&bare.path(), 2040);
    daemon
        .wait(
            "deepdirs",
            "the deep commit refused",
            Duration::from_secs(60),
            |s| {
                s["failed_commits"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|f| f["commit"] == deep))
            },
        )
        .await;
    let history = Daemon::history(state.path(), "deepdirs");
    let rows: Vec<&serde_json::Value> = history["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["commit"] == deep)
        .collect();
    assert!(!rows.is_empty(), "{history:#}");
    let row = rows[0].to_string();
    assert!(row.contains("invalid"), "{row}");
    assert!(row.contains("over the 4096-byte limit"), "{row}");
    assert!(row.contains("chain-"), "{row}");
    assert!(row.len() < 20_000, "the error prints the whole path: {row}");
    // Still up, still serving, and the last good commit is unchanged.
    let s = daemon.status("deepdirs").await.expect("the daemon answers");
    assert_eq!(s["last_good"]["commit"], first, "{s:#}");
    assert!(address_space(daemon.pid()) < limit);
}

/// Waits until `commit` is marked failed, then returns its history row
/// and the notification that names it.
async fn refused(
    daemon: &mut Daemon,
    state: &Path,
    receiver: &Receiver,
    commit: &str,
    what: &str,
) -> (String, String) {
    daemon
        .wait("refusals", what, Duration::from_secs(60), |s| {
            s["failed_commits"]
                .as_array()
                .is_some_and(|a| a.iter().any(|f| f["commit"] == commit))
        })
        .await;
    let history = Daemon::history(state, "refusals");
    let row = history["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["commit"] == commit)
        .unwrap_or_else(|| panic!("{what}: no history row for {commit}: {history:#}"))
        .clone();
    assert_eq!(row["outcome"], "invalid", "{what}: {row:#}");
    // The notification is sent after the record is written.
    let short = &commit[..12];
    let notice = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(n) = receiver.all().into_iter().find(|b| b.contains(short)) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{what}: no notification names {short}: {:?}",
            receiver.all()
        )
    });
    assert!(notice.contains("invalid"), "{what}: {notice}");
    (row.to_string(), notice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commits_are_recorded_and_notified_and_the_last_good_keeps_running() {
    let receiver = Receiver::start().await;
    let manifest = format!(
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  refusals:\n    values: environments/values.yaml\n    targets: [local]\n    drift_interval: 1h\n    notify: [hook]\nnotifications:\n  hook: {{ webhook: \"{}/notify\" }}\n",
        receiver.url
    );
    let Deployed {
        bare,
        state,
        first,
        mut daemon,
        _secrets,
    } = Deployed::start("refusals", manifest.clone()).await;

    // A symlink out of the repo: the snapshot refuses the commit.
    std::os::unix::fs::symlink("/etc/passwd", bare.work().join("escape")).unwrap();
    let escape = bare.commit(&[], "a symlink out of the repo");
    let (row, notice) = refused(&mut daemon, state.path(), &receiver, &escape, "the symlink").await;
    assert!(row.contains("outside the repository"), "{row}");
    assert!(notice.contains("outside the repository"), "{notice}");
    std::fs::remove_file(bare.work().join("escape")).unwrap();

    // A root manifest that does not parse: the environment cannot even be
    // looked up in it, and still the commit is recorded and notified.
    let broken = bare.commit(
        &[(
            "driftless.yaml",
            "apiVersion: driftless/v1\ntargets: [\n".to_owned(),
        )],
        "a broken root manifest",
    );
    let (row, _) = refused(
        &mut daemon,
        state.path(),
        &receiver,
        &broken,
        "the broken manifest",
    )
    .await;
    assert!(row.contains("driftless.yaml"), "{row}");

    // Refused once each, not once per poll, and the last good is untouched.
    let history = Daemon::history(state.path(), "refusals");
    let rows = history["reconciles"].as_array().unwrap();
    for commit in [&escape, &broken] {
        let n = rows.iter().filter(|r| r["commit"] == **commit).count();
        assert_eq!(n, 1, "{commit}: {history:#}");
    }
    let s = daemon.status("refusals").await.expect("the daemon answers");
    assert_eq!(s["last_good"]["commit"], first, "{s:#}");

    // A fixed manifest deploys again.
    let fixed = bare.commit(&[("driftless.yaml", manifest)], "fixed");
    daemon
        .wait(
            "refusals",
            "the fixed commit",
            Duration::from_secs(60),
            |s| s["last_good"]["commit"] == fixed,
        )
        .await;
}
