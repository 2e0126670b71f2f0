//! Shared helpers for the integration tests.

use std::path::PathBuf;

/// The shared test corpus (`../shared/corpus` next to the repo, or
/// `DRIFTLESS_CORPUS`). Tests that use it fail loudly when it is missing.
#[allow(dead_code)]
pub fn corpus() -> PathBuf {
    if let Ok(dir) = std::env::var("DRIFTLESS_CORPUS") {
        return PathBuf::from(dir);
    }
    // `../shared` beside the clone; `../../shared` from a git worktree under /work/wt.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        root.join("../shared/corpus"),
        root.join("../../shared/corpus"),
    ];
    candidates
        .iter()
        .find(|d| d.is_dir())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "test corpus not found at {}; set DRIFTLESS_CORPUS",
                candidates[0].display()
            )
        })
}

/// The bundled example repo.
#[allow(dead_code)]
pub fn example_repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout")
}

/// Builds a desired-state repo in a temp dir, file by file.
#[allow(dead_code)]
pub struct RepoBuilder {
    dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl RepoBuilder {
    pub fn new() -> Self {
        RepoBuilder {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A minimal valid repo: one docker target, environment `dev`, no files.
    pub fn minimal() -> Self {
        RepoBuilder::new()
            .file(
                "driftless.yaml",
                "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n",
            )
            .file("environments/dev.yaml", "replicas: 1\n")
    }

    /// A committed repo whose environment `env` deploys `stack`
    /// (`compose/stack.yaml`) to the one target `name`, a Docker target
    /// with the settings `docker` (a YAML flow mapping, `{}` for the local
    /// engine); empty values, a 60 s health deadline.
    pub fn one_stack(name: &str, docker: &str, env: &str, stack: &str) -> Self {
        let manifest = format!(
            "apiVersion: driftless/v1\ntargets:\n  {name}:\n    docker: {docker}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [{name}]\n    health: {{ deadline: 60s, settle: 1s }}\n"
        );
        let repo = RepoBuilder::new()
            .file("driftless.yaml", manifest)
            .file("environments/values.yaml", "{}\n")
            .file("compose/stack.yaml", stack);
        git(repo.path(), &["init", "-q"]);
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "v1"]);
        repo
    }

    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Self {
        let dest = self.dir.path().join(path);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, content).unwrap();
        self
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        let dest = self.dir.path().join(path);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, dest).unwrap();
        self
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Runs the driftless binary on this repo with `args` (`--repo` added).
    pub fn driftless(&self, args: &[&str]) -> Run {
        driftless(self.path(), args)
    }

    /// Source → render → check of environment `env` through the library,
    /// with secrets from `secrets` (a directory) only.
    pub fn load(
        &self,
        env: &str,
        secrets: Option<&std::path::Path>,
        mode: driftless::render::SecretMode,
    ) -> Result<driftless::reconcile::Loaded, driftless::diag::Diagnostics> {
        let source = driftless::source::Source::open(
            self.path().to_str().expect("UTF-8 temp path"),
            None,
            self.path(),
            &driftless::source::Auth::None,
        )
        .expect("open the repo");
        let options = driftless::reconcile::RenderOptions {
            secrets: driftless::secrets::SecretSource {
                dir: secrets.map(std::path::Path::to_owned),
                from_env: false,
            },
            mode,
            limits: driftless::source::Limits::default(),
        };
        driftless::reconcile::load(&source, env, &options)
    }
}

/// What one run of the binary printed and returned.
#[allow(dead_code)]
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `driftless <args> --repo <repo>` hermetically (no secrets from the
/// caller's environment).
#[allow(dead_code)]
pub fn driftless(repo: &std::path::Path, args: &[&str]) -> Run {
    driftless_with_env(repo, args, &[])
}

/// [`driftless`] with extra environment variables.
pub fn driftless_with_env(repo: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_driftless"));
    cmd.args(args).arg("--repo").arg(repo);
    for (k, _) in std::env::vars() {
        if k.starts_with("DRIFTLESS_") {
            cmd.env_remove(k);
        }
    }
    // Reconciles are recorded: into this test process's own state
    // directory unless the test names one, never the user's default.
    cmd.env("DRIFTLESS_STATE_DIR", test_state_dir());
    cmd.envs(vars.iter().copied());
    let out = cmd.output().expect("run driftless");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A state directory for the CLI runs of this test process that name none
/// (`--state-dir` wins over it), removed with the machine's temp files.
fn test_state_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

#[allow(dead_code)]
/// Runs `git` in `dir` with a fixed identity and no user or system config,
/// so the fixtures are the same on every machine. Returns trimmed stdout.
pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            "-c",
            "core.symlinks=true",
            "-c",
            "core.autocrlf=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("the git program runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
