//! The source stage from the outside: fixture repos built with the real `git`
//! program, read back through `Repo` (commits, remotes) and
//! `worktree::snapshot` (local trees).

use std::path::{Path, PathBuf};

use crate::support::git;
use std::time::{Duration, Instant};

use driftless::source::git::{Auth, Repo};
use driftless::source::{Limits, Revision, Snapshot, SourceError, worktree};
use tempfile::TempDir;

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn symlink(root: &Path, rel: &str, target: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// A fresh repo with a work tree in a temp dir.
fn new_repo() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("repo");
    std::fs::create_dir(&dir).unwrap();
    git(&dir, &["init", "-q"]);
    (tmp, dir)
}

/// Stages everything and commits; returns the new commit id.
fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

fn text<'a>(snap: &'a Snapshot, path: &str) -> &'a str {
    snap.text(path)
        .unwrap_or_else(|e| panic!("{e}; have {:?}", snap.paths().collect::<Vec<_>>()))
}

fn paths(snap: &Snapshot) -> Vec<&str> {
    snap.paths().collect()
}

/// Whether the work tree at `dir` differs from its `HEAD`.
fn dirty(dir: &Path) -> bool {
    match worktree::snapshot(dir, Limits::default())
        .unwrap()
        .revision()
    {
        Revision::WorkTree { dirty, .. } => *dirty,
        other => panic!("{other:?}"),
    }
}

/// Reads `dir`'s HEAD commit and its work tree, both ways.
fn both(dir: &Path, limits: Limits) -> [Result<Snapshot, SourceError>; 2] {
    let repo = Repo::open(dir).unwrap();
    let head = repo.head_commit().unwrap();
    [
        repo.snapshot(&head, limits),
        worktree::snapshot(dir, limits),
    ]
}

#[test]
fn snapshot_at_a_commit_ignores_later_commits_and_dirty_edits() {
    let (_tmp, dir) = new_repo();
    write(&dir, "a.txt", "one");
    write(&dir, "dir/b.txt", "bee");
    let first = commit_all(&dir, "first");
    write(&dir, "a.txt", "two");
    write(&dir, "later.txt", "later");
    commit_all(&dir, "second");
    write(&dir, "a.txt", "three (dirty)");
    write(&dir, "untracked.txt", "u");

    let repo = Repo::open(&dir).unwrap();
    let snap = repo.snapshot(&first, Limits::default()).unwrap();
    assert_eq!(paths(&snap), ["a.txt", "dir/b.txt"]);
    assert_eq!(text(&snap, "a.txt"), "one");
    assert_eq!(text(&snap, "dir/b.txt"), "bee");
    assert_eq!(snap.revision(), &Revision::Commit { id: first.clone() });
    assert_eq!(snap.revision().commit(), Some(first.as_str()));
    assert_eq!(repo.work_dir().unwrap(), dir.canonicalize().unwrap());
}

#[test]
fn resolve_branches_tags_and_shas() {
    let (_tmp, dir) = new_repo();
    write(&dir, "f", "1");
    let first = commit_all(&dir, "first");
    git(&dir, &["tag", "-a", "v1", "-m", "release 1"]);
    git(&dir, &["tag", "light"]);
    write(&dir, "f", "2");
    let second = commit_all(&dir, "second");
    git(&dir, &["branch", "feature/x", &first]);

    let repo = Repo::open(&dir).unwrap();
    assert_eq!(repo.resolve("main").unwrap(), second);
    assert_eq!(repo.resolve("refs/heads/main").unwrap(), second);
    assert_eq!(repo.resolve("HEAD").unwrap(), second);
    assert_eq!(repo.resolve("feature/x").unwrap(), first);
    // The annotated tag is peeled to its commit, not the tag object.
    let tag_object = git(&dir, &["rev-parse", "v1"]);
    assert_ne!(tag_object, first);
    assert_eq!(repo.resolve("v1").unwrap(), first);
    assert_eq!(repo.resolve("light").unwrap(), first);
    assert_eq!(repo.resolve(&first).unwrap(), first);
    assert_eq!(repo.resolve(&first[..7]).unwrap(), first);
    assert_eq!(repo.resolve("main~1").unwrap(), first);
    assert_eq!(repo.head_commit().unwrap(), second);
    // A snapshot accepts a rev too, and records the full id.
    let snap = repo.snapshot("v1", Limits::default()).unwrap();
    assert_eq!(snap.revision().commit(), Some(first.as_str()));

    for unknown in ["nope", "deadbeef", "v1.0-missing"] {
        let err = repo.resolve(unknown).unwrap_err();
        assert!(matches!(err, SourceError::NoSuchRevision { .. }), "{err:?}");
        assert!(err.to_string().contains(&format!("`{unknown}`")), "{err}");
    }
    let err = repo
        .snapshot(
            "0123456789012345678901234567890123456789",
            Limits::default(),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("0123456789012345678901234567890123456789"),
        "{err}"
    );
}

#[test]
fn open_remote_clones_into_the_cache_then_fetches_and_reuses_it() {
    let tmp = TempDir::new().unwrap();
    let origin = tmp.path().join("origin.git");
    std::fs::create_dir(&origin).unwrap();
    git(&origin, &["init", "-q", "--bare"]);
    let (_work_tmp, work) = new_repo();
    write(&work, "stack.yaml", "v: 1");
    let first = commit_all(&work, "first");
    git(&work, &["push", "-q", origin.to_str().unwrap(), "main"]);

    let cache = tmp.path().join("cache");
    let url = format!("file://{}", origin.display());
    let repo = Repo::open_remote(&url, &cache, &Auth::None).unwrap();
    assert_eq!(repo.resolve("main").unwrap(), first);
    assert_eq!(repo.head_commit().as_deref(), Some(first.as_str()));
    assert!(repo.work_dir().is_none(), "the cache is bare");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1, "one clone, no leftovers: {entries:?}");
    assert!(repo.git_dir().starts_with(&cache));
    let config = std::fs::read_to_string(repo.git_dir().join("config")).unwrap();
    assert!(config.contains(&url), "{config}");

    write(&work, "stack.yaml", "v: 2");
    let second = commit_all(&work, "second");
    git(&work, &["tag", "-a", "v2", "-m", "two"]);
    git(
        &work,
        &["push", "-q", origin.to_str().unwrap(), "main", "v2"],
    );
    assert_eq!(repo.resolve("main").unwrap(), first, "nothing fetched yet");
    repo.fetch().unwrap();
    assert_eq!(repo.resolve("main").unwrap(), second);
    assert_eq!(repo.resolve("v2").unwrap(), second);
    let snap = repo.snapshot(&second, Limits::default()).unwrap();
    assert_eq!(text(&snap, "stack.yaml"), "v: 2");

    // A second open reuses the cache: it works with the origin gone.
    std::fs::rename(&origin, tmp.path().join("moved.git")).unwrap();
    let again = Repo::open_remote(&url, &cache, &Auth::None).unwrap();
    assert_eq!(again.git_dir(), repo.git_dir());
    assert_eq!(again.resolve("main").unwrap(), second);
    let err = again.fetch().unwrap_err();
    assert!(err.to_string().starts_with("fetch origin"), "{err}");
}

#[test]
fn open_remote_accepts_a_plain_path_and_fails_cleanly_on_a_missing_one() {
    let tmp = TempDir::new().unwrap();
    let (_work_tmp, work) = new_repo();
    write(&work, "a", "a");
    let first = commit_all(&work, "first");
    let cache = tmp.path().join("cache");
    let repo = Repo::open_remote(work.to_str().unwrap(), &cache, &Auth::None).unwrap();
    assert_eq!(repo.resolve("main").unwrap(), first);

    let missing = tmp.path().join("missing.git");
    let err = Repo::open_remote(missing.to_str().unwrap(), &cache, &Auth::None).unwrap_err();
    assert!(err.to_string().contains("missing.git"), "{err}");
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries, 1, "a failed clone leaves nothing behind");
}

#[test]
fn worktree_snapshot_includes_edits_and_untracked_files_but_not_ignored_ones() {
    let (_tmp, dir) = new_repo();
    write(&dir, ".gitignore", "*.log\nbuild/\n");
    write(&dir, "tracked.txt", "committed");
    write(&dir, "keep.log", "tracked although ignored");
    git(&dir, &["add", "-f", "keep.log"]);
    let head = commit_all(&dir, "first");
    write(&dir, "tracked.txt", "edited");
    write(&dir, "new/untracked.txt", "new");
    write(&dir, "debug.log", "ignored");
    write(&dir, "build/out.bin", "ignored dir");

    let snap = worktree::snapshot(&dir, Limits::default()).unwrap();
    assert_eq!(
        paths(&snap),
        [".gitignore", "keep.log", "new/untracked.txt", "tracked.txt"]
    );
    assert_eq!(text(&snap, "tracked.txt"), "edited");
    assert_eq!(
        snap.revision(),
        &Revision::WorkTree {
            head: Some(head.clone()),
            dirty: true
        }
    );
    assert_eq!(snap.revision().commit(), None);
}

#[test]
fn a_clean_worktree_is_its_head_commit() {
    let (_tmp, dir) = new_repo();
    write(&dir, ".gitignore", "*.log\n");
    write(&dir, "a/b.txt", "b");
    symlink(&dir, "link", "a/b.txt");
    let head = commit_all(&dir, "first");
    write(&dir, "ignored.log", "not part of the state");

    let snap = worktree::snapshot(&dir, Limits::default()).unwrap();
    assert_eq!(
        snap.revision(),
        &Revision::WorkTree {
            head: Some(head.clone()),
            dirty: false
        }
    );
    assert_eq!(snap.revision().commit(), Some(head.as_str()));
    assert_eq!(text(&snap, "link"), "b");

    // Same files as the commit itself.
    let committed = Repo::open(&dir)
        .unwrap()
        .snapshot(&head, Limits::default())
        .unwrap();
    assert_eq!(paths(&snap), paths(&committed));

    // A deleted file, a changed link target, an added file: each is dirty.
    std::fs::remove_file(dir.join("link")).unwrap();
    assert!(dirty(&dir));
    symlink(&dir, "link", "./a/b.txt");
    assert!(dirty(&dir));
    std::fs::remove_file(dir.join("link")).unwrap();
    symlink(&dir, "link", "a/b.txt");
    assert!(!dirty(&dir));
    write(&dir, "extra", "x");
    assert!(dirty(&dir));
}

#[test]
fn worktree_of_a_subdirectory_and_of_a_plain_directory() {
    let (_tmp, dir) = new_repo();
    write(&dir, ".gitignore", "*.tmp\n");
    write(&dir, "deploy/stack.yaml", "s");
    write(&dir, "other.txt", "o");
    let head = commit_all(&dir, "first");
    write(&dir, "deploy/x.tmp", "ignored by the top .gitignore");

    let snap = worktree::snapshot(&dir.join("deploy"), Limits::default()).unwrap();
    assert_eq!(paths(&snap), ["stack.yaml"]);
    assert_eq!(snap.revision().commit(), Some(head.as_str()));

    let plain = TempDir::new().unwrap();
    write(plain.path(), ".gitignore", "secret\n");
    write(plain.path(), "a.yaml", "a");
    write(plain.path(), "secret", "s");
    let snap = worktree::snapshot(plain.path(), Limits::default()).unwrap();
    assert_eq!(paths(&snap), [".gitignore", "a.yaml"]);
    assert_eq!(
        snap.revision(),
        &Revision::WorkTree {
            head: None,
            dirty: true
        }
    );
}

#[test]
fn symlinks_inside_the_repo_resolve_in_commits_and_worktrees() {
    let (_tmp, dir) = new_repo();
    write(&dir, "real/values.yaml", "x: 1");
    write(&dir, "real/nested/deep.yaml", "d");
    symlink(&dir, "file-link.yaml", "real/values.yaml");
    symlink(&dir, "dir-link", "real");
    symlink(&dir, "sub/up-link.yaml", "../real/nested/deep.yaml");
    commit_all(&dir, "links");
    for snap in both(&dir, Limits::default()) {
        let snap = snap.unwrap();
        assert_eq!(text(&snap, "file-link.yaml"), "x: 1");
        assert_eq!(text(&snap, "dir-link/values.yaml"), "x: 1");
        assert_eq!(text(&snap, "dir-link/nested/deep.yaml"), "d");
        assert_eq!(text(&snap, "sub/up-link.yaml"), "d");
        assert!(!snap.contains("dir-link"));
        assert_eq!(snap.len(), 6, "{:?}", paths(&snap));
    }
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Git records 100755 or 100644 per file; both readers carry that bit,
/// whatever the content says (`#!` or not), and a link takes its target's
/// (its own text is kept too, for readers that send links as links).
#[test]
fn execute_bits_come_from_git_in_commits_and_worktrees() {
    let (_tmp, dir) = new_repo();
    write(&dir, "bin/tool", "no interpreter line\n");
    write(&dir, "bin/lib.sh", "#!/bin/sh\n# sourced, not run\n");
    write(&dir, "bin/plain.txt", "text\n");
    chmod(&dir, "bin/tool", 0o755);
    chmod(&dir, "bin/lib.sh", 0o644);
    symlink(&dir, "run", "bin/tool");
    let head = commit_all(&dir, "modes");
    let tree = git(&dir, &["ls-tree", "-r", &head]);
    assert!(
        tree.contains("100755 blob") && tree.contains("100644 blob"),
        "{tree}"
    );
    for snap in both(&dir, Limits::default()) {
        let snap = snap.unwrap();
        assert!(snap.is_executable("bin/tool"), "mode 100755 without `#!`");
        assert!(!snap.is_executable("bin/lib.sh"), "`#!` committed 100644");
        assert!(!snap.is_executable("bin/plain.txt"));
        assert!(snap.is_executable("run"), "a link takes its target's bit");
        assert_eq!(snap.links_under(""), [("run", "bin/tool")]);
        assert!(snap.links_under("bin").is_empty());
    }

    // A `chmod +x` alone makes the work tree dirty, and the next commit
    // carries it.
    assert!(!dirty(&dir));
    chmod(&dir, "bin/lib.sh", 0o755);
    assert!(dirty(&dir));
    let next = commit_all(&dir, "chmod +x");
    let snap = Repo::open(&dir)
        .unwrap()
        .snapshot(&next, Limits::default())
        .unwrap();
    assert!(snap.is_executable("bin/lib.sh"));
}

#[test]
fn symlinks_out_of_the_repo_are_errors_naming_the_link() {
    for (link, target) in [
        ("passwd", "/etc/passwd"),
        ("deploy/outside", "../../outside"),
    ] {
        let (tmp, dir) = new_repo();
        write(tmp.path(), "outside", "host file");
        write(&dir, "ok.txt", "ok");
        symlink(&dir, link, target);
        commit_all(&dir, "escape");
        for result in both(&dir, Limits::default()) {
            match result {
                Err(SourceError::SymlinkEscapes { path, target: got }) => {
                    assert_eq!(path, link);
                    assert_eq!(got, target);
                }
                other => panic!("{link} -> {target}: {other:?}"),
            }
        }
    }
}

#[test]
fn symlink_loops_are_errors() {
    let (_tmp, dir) = new_repo();
    write(&dir, "f", "f");
    symlink(&dir, "a", "b");
    symlink(&dir, "b", "a");
    commit_all(&dir, "loop");
    for result in both(&dir, Limits::default()) {
        assert!(
            matches!(result, Err(SourceError::SymlinkLoop { .. })),
            "{result:?}"
        );
    }

    let (_tmp, dir) = new_repo();
    write(&dir, "d/f", "f");
    symlink(&dir, "d/self", "..");
    commit_all(&dir, "directory loop");
    for result in both(&dir, Limits::default()) {
        assert!(
            matches!(result, Err(SourceError::SymlinkLoop { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn oversize_files_and_too_many_files_are_errors() {
    let (_tmp, dir) = new_repo();
    write(&dir, "small", "12345");
    write(&dir, "big/blob.bin", "0123456789a");
    commit_all(&dir, "sizes");
    let limits = Limits {
        max_file_bytes: 10,
        max_files: 100,
        ..Limits::default()
    };
    for result in both(&dir, limits) {
        match result {
            Err(SourceError::FileTooLarge { path, size, limit }) => {
                assert_eq!((path.as_str(), size, limit), ("big/blob.bin", 11, 10));
            }
            other => panic!("{other:?}"),
        }
    }

    let limits = Limits {
        max_file_bytes: 100,
        max_files: 1,
        ..Limits::default()
    };
    for result in both(&dir, limits) {
        assert!(
            matches!(result, Err(SourceError::TooManyFiles { limit: 1 })),
            "{result:?}"
        );
    }
    // Exactly at the limit is fine.
    let limits = Limits {
        max_file_bytes: 100,
        max_files: 2,
        ..Limits::default()
    };
    for result in both(&dir, limits) {
        assert_eq!(result.unwrap().len(), 2);
    }
}

#[test]
fn submodules_are_skipped() {
    let (_tmp, dir) = new_repo();
    write(&dir, "a", "a");
    let first = commit_all(&dir, "first");
    // A gitlink entry, as `git submodule add` records it.
    git(
        &dir,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{first},vendor/sub"),
        ],
    );
    git(&dir, &["commit", "-q", "-m", "submodule"]);
    // And a nested repository in the work tree.
    let nested = dir.join("vendor/sub");
    std::fs::create_dir_all(&nested).unwrap();
    git(&nested, &["init", "-q"]);
    write(&nested, "inner.txt", "not ours");

    for result in both(&dir, Limits::default()) {
        assert_eq!(paths(&result.unwrap()), ["a"]);
    }
}

#[test]
fn a_thousand_file_snapshot_takes_milliseconds() {
    let (_tmp, dir) = new_repo();
    for i in 0..1000 {
        write(
            &dir,
            &format!("dir{}/file{i}.yaml", i % 20),
            &format!("key: {i}\n{}", "x".repeat(200)),
        );
    }
    let head = commit_all(&dir, "many");
    git(&dir, &["gc", "-q"]);
    let repo = Repo::open(&dir).unwrap();

    // Best of three: the first run also warms the OS page cache.
    let mut commit_time = Duration::MAX;
    let mut worktree_time = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let snap = repo.snapshot(&head, Limits::default()).unwrap();
        commit_time = commit_time.min(start.elapsed());
        assert_eq!(snap.len(), 1000);

        let start = Instant::now();
        let snap = worktree::snapshot(&dir, Limits::default()).unwrap();
        worktree_time = worktree_time.min(start.elapsed());
        assert_eq!(snap.len(), 1000);
        assert_eq!(snap.revision().commit(), Some(head.as_str()));
    }

    eprintln!("1,000 files: commit snapshot {commit_time:?}, work tree snapshot {worktree_time:?}");
}

/// Builds a commit whose root tree is `tree_lines` (`git mktree` input).
fn commit_tree(dir: &Path, tree_lines: &str) -> String {
    let tree = crate::daemon_support::git_with_input(dir, &["mktree", "--missing"], tree_lines);
    git(dir, &["commit-tree", &tree, "-m", "crafted"])
}

#[test]
fn hostile_trees_are_errors_not_panics() {
    let (_tmp, dir) = new_repo();
    let blob = {
        write(&dir, "f", "content");
        git(&dir, &["hash-object", "-w", "f"])
    };
    let bad_target = {
        std::fs::write(dir.join("t"), b"\xff\xfe").unwrap();
        git(&dir, &["hash-object", "-w", "t"])
    };
    let missing = "1234567890123456789012345678901234567890";
    let repo = Repo::open(&dir).unwrap();
    let cases = [
        (format!("100644 blob {blob}\t..\n"), "BadPath"),
        (format!("100644 blob {blob}\t.git\n"), "BadPath"),
        (format!("100644 blob {blob}\ta\\b\n"), "BadPath"),
        (format!("120000 blob {bad_target}\tlink\n"), "BadPath"),
        (format!("100644 blob {missing}\tgone.txt\n"), "Git"),
        (format!("040000 tree {missing}\tgone\n"), "Git"),
    ];
    for (tree, kind) in cases {
        let commit = commit_tree(&dir, &tree);
        let err = repo.snapshot(&commit, Limits::default()).unwrap_err();
        let got = match &err {
            SourceError::BadPath { .. } => "BadPath",
            SourceError::Git(_) => "Git",
            _ => "other",
        };
        assert_eq!(got, kind, "{tree}: {err}");
    }
    // The error names the missing file.
    let commit = commit_tree(&dir, &format!("100644 blob {missing}\tgone.txt\n"));
    let err = repo.snapshot(&commit, Limits::default()).unwrap_err();
    assert!(err.to_string().contains("gone.txt"), "{err}");
}
