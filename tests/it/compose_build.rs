//! `build:` on the real engine, from the Compose file through the loader:
//! a built service runs; a re-plan sends no context; a changed context
//! file rebuilds and recreates only that service, naming the file; a
//! failing Dockerfile applies nothing and shows the log tail; several
//! `extra_hosts` reach the build and several `tags` name its image; a `FROM` image behind a registry login is
//! pulled with the Docker config's logins; a rollback
//! pinned to the recorded image id runs it without rebuilding; a context
//! outside the repo is refused at validate.
//!
//! The Dockerfiles build `FROM` the busybox fixture image, which the
//! engine has locally (no registry is reachable).

use std::collections::BTreeMap;
use std::sync::Arc;

use driftless::backend::compose::{ComposeBackend, labels};
use driftless::backend::{Backend, BackendError};
use driftless::check::compose;
use driftless::diag::Diagnostic;
use driftless::manifest::Allow;
use driftless::model::compose::Project;
use driftless::model::{Resources, TargetState};
use driftless::plan::Action;
use driftless::secrets::Masker;

use crate::compose_backend::{changed, container_ids, ctx, desired, dry_run, read_file, reconcile};
use crate::docker_support::{BUSYBOX, Cleanup, CountingProxy, Registry, engine, project_name};
use crate::support::{RepoBuilder, git};

/// The web service's Dockerfile: the fixture image plus a page from the
/// context, served by httpd.
fn dockerfile() -> String {
    format!(
        "FROM {BUSYBOX}\nCOPY page.txt /www/page.txt\nCMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n"
    )
}

/// A repo holding `compose/stack.yaml` (project `name`): `web` built from
/// `compose/web/`, `other` running the fixture image.
fn repo(name: &str, page: &str, dockerfile: &str) -> BTreeMap<String, Vec<u8>> {
    let stack = format!(
        "name: {name}\nservices:\n  web:\n    build: ./web\n    stop_grace_period: 1s\n  other:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    stop_grace_period: 1s\n"
    );
    [
        ("compose/stack.yaml", stack),
        ("compose/web/Dockerfile", dockerfile.to_owned()),
        ("compose/web/page.txt", page.to_owned()),
        ("compose/web/.dockerignore", "notes.md\n".to_owned()),
        ("compose/web/notes.md", "not sent\n".to_owned()),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_owned(), c.into_bytes()))
    .collect()
}

/// Loads `compose/stack.yaml` of an in-memory repo as `validate` would.
pub(crate) fn load(files: &BTreeMap<String, Vec<u8>>) -> Project {
    let text = String::from_utf8(files["compose/stack.yaml"].clone()).unwrap();
    let variables = BTreeMap::new();
    #[allow(clippy::result_large_err)]
    let read = |p: &str| -> Option<Result<Arc<[u8]>, Diagnostic>> {
        files.get(p).map(|c| Ok(Arc::from(c.as_slice())))
    };
    let is_dir = |d: &str| -> Vec<String> {
        let prefix = format!("{d}/");
        files
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    };
    match compose::load(&compose::Input {
        file: "compose/stack.yaml",
        text: &text,
        default_project_name: "compose",
        variables: &variables,
        read: &read,
        is_dir: &is_dir,
        is_executable: &|_: &str| false,
        links_under: &|_: &str| Vec::new(),
        yaml: Default::default(),
    }) {
        Ok((p, _)) => p,
        Err(d) => panic!("the stack should load:\n{d}"),
    }
}

fn projects(d: &TargetState) -> &[Project] {
    match &d.resources {
        Resources::Compose(p) => p,
        _ => unreachable!(),
    }
}

pub(crate) async fn image_id(b: &ComposeBackend, reference: &str) -> String {
    b.docker()
        .inspect_image(reference)
        .await
        .unwrap()
        .id
        .unwrap()
}

async fn container_image(b: &ComposeBackend, project: &str, service: &str) -> String {
    let name = format!("{project}-{service}-1");
    b.docker()
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap()
        .image
        .unwrap()
}

/// A fresh project (`test` in its name) with the stack deployed from
/// `page`: its name, its built image's name, what the deploy planned and
/// reported, and the cleanup that removes the project and the image.
struct Deployed {
    name: String,
    image: String,
    changes: Vec<driftless::plan::Change>,
    report: driftless::backend::ApplyReport,
    _cleanup: Cleanup,
}

async fn deploy(b: &ComposeBackend, test: &str, page: &str) -> Deployed {
    let name = project_name(test);
    let image = format!("{name}-web");
    let cleanup = Cleanup::new(&[&name]).image(&image);
    let d = desired(vec![load(&repo(&name, page, &dockerfile()))]);
    let (changes, report) = reconcile(b, &name, &d).await;
    Deployed {
        name,
        image,
        changes,
        report,
        _cleanup: cleanup,
    }
}

/// Deploys `web` built from the commit, then re-plans through a counting
/// proxy: the no-op plan is the four list calls and the no-op apply none —
/// no build, no context sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_service_runs_and_a_replan_sends_no_context() {
    let Some(b) = engine().await else { return };
    let deployed = deploy(&b, "build-noop", "v1\n").await;
    let (name, image) = (deployed.name.clone(), deployed.image.clone());
    let (changes, report) = (&deployed.changes, &deployed.report);
    let web = changes
        .iter()
        .find(|c| c.resource.name == format!("{name}/web"))
        .unwrap();
    assert_eq!(web.action, Action::Create);
    assert!(
        web.detail
            .as_deref()
            .is_some_and(|d| d.contains(&format!("build {image} (not built yet)"))),
        "{web:#?}"
    );
    let built = image_id(&b, &image).await;
    assert_eq!(report.image_ids[&format!("{name}/web")], built);
    assert_eq!(container_image(&b, &name, "web").await, built);
    let ids = container_ids(&b, &name).await;
    let web_id = &ids[&format!("{name}-web-1")];
    assert_eq!(read_file(&b, web_id, "/www/page.txt").await, "v1\n");
    let labels = b
        .docker()
        .inspect_image(&image)
        .await
        .unwrap()
        .config
        .unwrap()
        .labels
        .unwrap();
    assert!(labels.contains_key(labels::BUILD), "{labels:?}");
    assert!(
        labels[labels::BUILD_FILES].contains("page.txt")
            && !labels[labels::BUILD_FILES].contains("notes.md"),
        ".dockerignore keeps notes.md out: {labels:?}"
    );

    let proxy = CountingProxy::start();
    let counted = proxy.backend().await;
    // Loaded again from the same files, as the next pass would.
    let again = desired(vec![load(&repo(&name, "v1\n", &dockerfile()))]);
    let allow = Allow::default();
    let masker = Masker::default();
    let live = counted
        .read_live(&again, ctx(&name, &masker, &allow))
        .await
        .unwrap();
    let changes = counted
        .plan(&again, &live, ctx(&name, &masker, &allow))
        .await
        .unwrap();
    assert!(changed(&changes).is_empty(), "{changes:#?}");
    assert_eq!(proxy.take(), 4, "a no-op plan is the four list calls");
    let report = counted
        .apply_live(&again, &changes, &live, ctx(&name, &masker, &allow))
        .await
        .unwrap();
    assert!(report.applied.is_empty());
    assert_eq!(
        proxy.take(),
        0,
        "a no-op apply of the plan sends nothing: no build"
    );
    assert_eq!(image_id(&b, &image).await, built, "nothing was rebuilt");
}

/// A changed file in the context: the plan names it, the image is rebuilt
/// and only `web` is recreated; `other` keeps its container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_context_file_rebuilds_and_recreates_only_that_service() {
    let Some(b) = engine().await else { return };
    let deployed = deploy(&b, "build-change", "v1\n").await;
    let (name, image) = (deployed.name.clone(), deployed.image.clone());
    let before = container_ids(&b, &name).await;
    let first = image_id(&b, &image).await;
    let _first = Cleanup::new(&[]).image(&first);

    // A change to an ignored file is no change at all.
    let mut files = repo(&name, "v1\n", &dockerfile());
    files.insert("compose/web/notes.md".into(), b"edited\n".to_vec());
    let changes = dry_run(&b, &name, &desired(vec![load(&files)]), &Allow::default())
        .await
        .unwrap();
    assert!(changed(&changes).is_empty(), "{changes:#?}");

    let d = desired(vec![load(&repo(&name, "v2\n", &dockerfile()))]);
    let (changes, _) = reconcile(&b, &name, &d).await;
    assert_eq!(
        changed(&changes),
        [(
            format!("{name}/web"),
            Action::Recreate {
                reason: "image rebuilt: build context changed: page.txt".into()
            }
        )]
    );
    let after = container_ids(&b, &name).await;
    assert_eq!(
        before[&format!("{name}-other-1")],
        after[&format!("{name}-other-1")],
        "other is untouched"
    );
    let second = image_id(&b, &image).await;
    assert_ne!(first, second);
    assert_eq!(container_image(&b, &name, "web").await, second);
    assert_eq!(
        read_file(&b, &after[&format!("{name}-web-1")], "/www/page.txt").await,
        "v2\n"
    );
}

/// A repo of one service `web` built from `compose/web/` with `dockerfile`
/// and the extra `build` keys (YAML lines at the mapping's indentation).
fn one_built(name: &str, build_keys: &str, dockerfile: &str) -> BTreeMap<String, Vec<u8>> {
    let stack = format!(
        "name: {name}\nservices:\n  web:\n    build:\n      context: ./web\n{build_keys}    command: [sleep, \"3600\"]\n    stop_grace_period: 1s\n"
    );
    [
        ("compose/stack.yaml", stack),
        ("compose/web/Dockerfile", dockerfile.to_owned()),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_owned(), c.into_bytes()))
    .collect()
}

/// `build.extra_hosts` and `build.tags` with several entries: each host is
/// in `/etc/hosts` of the build's `RUN` steps and each tag names the built
/// image (the API takes both parameters once per value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_takes_every_extra_host_and_tag() {
    let Some(b) = engine().await else { return };
    let name = project_name("build-hosts");
    let image = format!("{name}-web");
    let tags = [format!("{name}-extra:1"), format!("{name}-extra:2")];
    let _cleanup = Cleanup::new(&[&name])
        .image(&image)
        .image(&tags[0])
        .image(&tags[1]);
    let files = one_built(
        &name,
        &format!(
            "      extra_hosts: [\"db.internal=10.1.2.3\", \"cache.internal:10.1.2.4\"]\n      tags: [\"{}\", \"{}\"]\n",
            tags[0], tags[1]
        ),
        &format!("FROM {BUSYBOX}\nRUN cat /etc/hosts > /hosts.txt\n"),
    );
    reconcile(&b, &name, &desired(vec![load(&files)])).await;
    let hosts = read_file(&b, &format!("{name}-web-1"), "/hosts.txt").await;
    for (ip, host) in [("10.1.2.3", "db.internal"), ("10.1.2.4", "cache.internal")] {
        assert!(
            hosts
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [ip, host]),
            "{host} missing from the build's /etc/hosts:\n{hosts}"
        );
    }
    let built = image_id(&b, &image).await;
    for tag in &tags {
        assert_eq!(image_id(&b, tag).await, built, "{tag}");
    }
}

/// A `FROM` image in a registry that wants a login: without the Docker
/// config's logins the build fails with the registry's refusal and nothing
/// is created; with them (`X-Registry-Config`) the engine pulls the base
/// image and the service runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_pulls_its_base_image_with_the_registry_login() {
    let Some(b) = engine().await else { return };
    let registry = Registry::start().await;
    let name = project_name("build-auth");
    // Pushed, and its local tag removed: the build must pull it.
    let base = registry
        .push(b.docker(), BUSYBOX, &format!("driftless/{name}-base"), "v1")
        .await;
    let _cleanup = Cleanup::new(&[&name])
        .image(&format!("{name}-web"))
        .image(&base);
    let files = one_built(
        &name,
        "",
        &format!("FROM {base}\nRUN echo built > /built.txt\n"),
    );
    let d = desired(vec![load(&files)]);
    let allow = Allow::default();
    let masker = Masker::default();

    let anonymous = b.with_docker_config(registry.dir.path().join("no-logins.json"));
    let changes = dry_run(&anonymous, &name, &d, &allow).await.unwrap();
    let err = anonymous
        .apply(&d, &changes, ctx(&name, &masker, &allow))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("building image") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(
        err.contains("no basic auth credentials") || err.contains("unauthorized"),
        "the registry's refusal: {err}"
    );
    assert!(container_ids(&anonymous, &name).await.is_empty());

    let Some(b) = engine().await else { return };
    let b = b.with_docker_config(registry.docker_config());
    reconcile(&b, &name, &d).await;
    assert_eq!(
        read_file(&b, &format!("{name}-web-1"), "/built.txt").await,
        "built\n"
    );
}

/// A Dockerfile whose step fails: the apply fails before anything is
/// stopped, with the engine's error and the tail of the build log; the
/// running container stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dockerfile_applies_nothing_and_shows_the_log_tail() {
    let Some(b) = engine().await else { return };
    let deployed = deploy(&b, "build-fail", "v1\n").await;
    let (name, image) = (deployed.name.clone(), deployed.image.clone());
    let before = container_ids(&b, &name).await;

    let broken = format!("{}RUN echo about-to-fail && false\n", dockerfile());
    let d = desired(vec![load(&repo(&name, "v2\n", &broken))]);
    let allow = Allow::default();
    let changes = dry_run(&b, &name, &d, &allow).await.unwrap();
    assert_eq!(changed(&changes).len(), 1, "{changes:#?}");
    let masker = Masker::default();
    let err = b
        .apply(&d, &changes, ctx(&name, &masker, &allow))
        .await
        .expect_err("the build fails");
    let BackendError::Apply {
        resource, message, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(resource, &format!("{name}/web"));
    assert!(
        message.starts_with(&format!(
            "building image {image} failed; nothing was changed"
        )),
        "{message}"
    );
    assert!(message.contains("returned a non-zero code: 1"), "{message}");
    assert!(
        message.contains("last lines of the build log:") && message.contains("about-to-fail"),
        "{message}"
    );
    assert_eq!(
        container_ids(&b, &name).await,
        before,
        "nothing was stopped"
    );
}

/// A rollback pinned to the image id the good deploy recorded runs that
/// image again and builds nothing (the tag still names the newer build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_pinned_to_the_built_id_runs_it_without_rebuilding() {
    let Some(b) = engine().await else { return };
    let deployed = deploy(&b, "build-rollback", "good\n").await;
    let (name, image) = (deployed.name.clone(), deployed.image.clone());
    let recorded = deployed.report.image_ids.clone();
    reconcile(
        &b,
        &name,
        &desired(vec![load(&repo(&name, "bad\n", &dockerfile()))]),
    )
    .await;
    let bad_id = image_id(&b, &image).await;
    let _good = Cleanup::new(&[]).image(&recorded[&format!("{name}/web")]);
    assert_ne!(bad_id, recorded[&format!("{name}/web")]);

    // What the daemon's rollback does: the good commit, pinned where the
    // reference moved.
    let mut pinned = desired(vec![load(&repo(&name, "good\n", &dockerfile()))]);
    let live: BTreeMap<String, String> = [
        (image.clone(), bad_id.clone()),
        (BUSYBOX.to_owned(), image_id(&b, BUSYBOX).await),
    ]
    .into();
    let mut state = driftless::model::DesiredState {
        environment: rollback_env(),
        instance: name.clone(),
        revision: driftless::source::Revision::Commit { id: "good".into() },
        targets: vec![pinned.clone()],
        backups: vec![],
    };
    driftless::reconcile::pipeline::pin_images(&mut state, &recorded, &live);
    pinned = state.targets.remove(0);
    assert_eq!(
        projects(&pinned)[0].services["web"].image,
        recorded[&format!("{name}/web")]
    );
    let (changes, report) = reconcile(&b, &name, &pinned).await;
    let web = changes
        .iter()
        .find(|c| c.resource.name == format!("{name}/web"))
        .unwrap();
    assert!(
        matches!(&web.action, Action::Recreate { reason } if reason == "image changed"),
        "{web:#?}"
    );
    assert!(
        !web.detail.as_deref().unwrap_or("").contains("build"),
        "{web:#?}"
    );
    assert_eq!(
        container_image(&b, &name, "web").await,
        recorded[&format!("{name}/web")]
    );
    assert_eq!(report.image_ids, recorded);
    assert_eq!(image_id(&b, &image).await, bad_id, "nothing was rebuilt");
    let ids = container_ids(&b, &name).await;
    assert_eq!(
        read_file(&b, &ids[&format!("{name}-web-1")], "/www/page.txt").await,
        "good\n"
    );
}

fn rollback_env() -> driftless::manifest::Environment {
    let text = "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n";
    driftless::manifest::Manifest::parse(text)
        .unwrap()
        .environments["dev"]
        .clone()
}

/// `validate` refuses a context outside the repository with file:line,
/// and a BuildKit-only Dockerfile naming its line.
#[test]
fn a_context_outside_the_repo_is_refused_at_validate() {
    let repo = RepoBuilder::minimal().file(
        "compose/stack.yaml",
        "services:\n  web:\n    build:\n      context: ../../elsewhere\n",
    );
    let run = repo.driftless(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("compose/stack.yaml:4")
            && run
                .stderr
                .contains("build context `../../elsewhere` is outside the repository"),
        "{}",
        run.stderr
    );

    let repo = RepoBuilder::minimal()
        .file(
            "compose/stack.yaml",
            "services:\n  web:\n    build: ./web\n",
        )
        .file(
            "compose/web/Dockerfile",
            "FROM scratch\nRUN --mount=type=cache,target=/c true\n",
        );
    let run = repo.driftless(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("compose/web/Dockerfile:2")
            && run.stderr.contains("`RUN --mount` needs BuildKit"),
        "{}",
        run.stderr
    );
}

/// A `git daemon` on 127.0.0.1 serving one repository, `ctx.git`, whose
/// `main` takes the commits of [`GitDaemon::commit`].
struct GitDaemon {
    /// `127.0.0.1:PORT`.
    address: String,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl GitDaemon {
    fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    async fn start() -> GitDaemon {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        GitDaemon::git(&work, &["init", "-q", "-b", "main"]);
        GitDaemon::git(dir.path(), &["init", "-q", "--bare", "ctx.git"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // git-daemon itself, not `git daemon`, which would run it as a
        // child that outlives a kill of its parent.
        let exec_path = GitDaemon::git(dir.path(), &["--exec-path"]);
        let child = std::process::Command::new(format!("{exec_path}/git-daemon"))
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", dir.path().display()))
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git daemon");
        let address = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon did not listen"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        GitDaemon {
            address,
            dir,
            child,
        }
    }

    /// Writes `files`, commits them and pushes `main`; returns the commit.
    fn commit(&self, files: &[(&str, &str)]) -> String {
        let work = self.dir.path().join("work");
        for (path, content) in files {
            std::fs::write(work.join(path), content).unwrap();
        }
        GitDaemon::git(&work, &["add", "-A"]);
        GitDaemon::git(&work, &["commit", "-q", "-m", "change"]);
        let bare = self.dir.path().join("ctx.git");
        GitDaemon::git(
            &work,
            &["push", "-q", bare.to_str().unwrap(), "main:refs/heads/main"],
        );
        GitDaemon::git(&work, &["rev-parse", "HEAD"])
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A git URL context, fetched by the engine from a local `git daemon`: a
/// re-plan while `main` holds its commit builds nothing (one ref listing,
/// no build); a commit pushed to `main` rebuilds the image and recreates
/// the service, naming the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_context_rebuilds_when_its_branch_moves() {
    let Some(b) = engine().await else { return };
    let git = GitDaemon::start().await;
    let name = project_name("build-git");
    let image = format!("{name}-web");
    let _cleanup = Cleanup::new(&[&name]).image(&image);
    git.commit(&[
        (
            "Dockerfile",
            &format!("FROM {BUSYBOX}\nCOPY page.txt /page.txt\n"),
        ),
        ("page.txt", "v1\n"),
    ]);
    let url = format!("git://{}/ctx.git#main", git.address);
    let stack = format!(
        "name: {name}\nservices:\n  web:\n    build: {url}\n    command: [sleep, \"3600\"]\n    stop_grace_period: 1s\n"
    );
    let files = BTreeMap::from([("compose/stack.yaml".to_owned(), stack.into_bytes())]);
    let d = desired(vec![load(&files)]);
    reconcile(&b, &name, &d).await;
    let container = format!("{name}-web-1");
    assert_eq!(read_file(&b, &container, "/page.txt").await, "v1\n");
    let first = image_id(&b, &image).await;
    let _first = Cleanup::new(&[]).image(&first);

    let allow = Allow::default();
    let plan = dry_run(&b, &name, &d, &allow).await.unwrap();
    assert!(changed(&plan).is_empty(), "an unmoved branch: {plan:#?}");

    let commit = git.commit(&[("page.txt", "v2\n")]);
    let (changes, _) = reconcile(&b, &name, &d).await;
    assert_eq!(
        changed(&changes),
        [(
            format!("{name}/web"),
            Action::Recreate {
                reason: format!(
                    "image rebuilt: build context changed: {url} is at {}",
                    &commit[..12]
                )
            }
        )]
    );
    assert_eq!(read_file(&b, &container, "/page.txt").await, "v2\n");
    assert_ne!(image_id(&b, &image).await, first);
    let plan = dry_run(&b, &name, &d, &allow).await.unwrap();
    assert!(changed(&plan).is_empty(), "{plan:#?}");
}

/// File modes in a build context are git's: a script committed 100755
/// without a `#!` line is sent (and runs) executable, a `#!` file
/// committed 100644 stays 0644 in the image, and a symlink stays a link —
/// from a commit, and from a work tree, where a `chmod +x` alone is a
/// change naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_file_modes_are_the_ones_git_records() {
    use std::os::unix::fs::PermissionsExt;
    let Some(b) = engine().await else { return };
    let name = project_name("build-modes");
    let image = format!("{name}-web");
    let _cleanup = Cleanup::new(&[&name]).image(&image);
    let env = "modes";
    let dockerfile = format!(
        "FROM {BUSYBOX}\nCOPY . /app\n\
         RUN /app/run > /ran.txt && /bin/busybox readlink /app/run > /link.txt \
         && /bin/busybox stat -c '%a %n' /app/lib.sh /app/tool /app/page.txt > /modes.txt\n\
         CMD [\"sleep\", \"3600\"]\n"
    );
    let repo = RepoBuilder::new()
        .file(
            "driftless.yaml",
            format!(
                "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n"
            ),
        )
        .file("environments/values.yaml", "{}\n")
        .file(
            "compose/stack.yaml",
            format!("name: {name}\nservices:\n  web:\n    build: ./web\n    stop_grace_period: 1s\n"),
        )
        .file("compose/web/Dockerfile", dockerfile)
        .file("compose/web/tool", "echo tool ran\n")
        .file("compose/web/lib.sh", "#!/bin/sh\n# sourced, never run\n")
        .file("compose/web/page.txt", "page\n")
        .symlink("compose/web/run", "tool");
    let chmod = |rel: &str, mode: u32| {
        std::fs::set_permissions(repo.path().join(rel), std::fs::Permissions::from_mode(mode))
            .unwrap()
    };
    chmod("compose/web/tool", 0o755);
    chmod("compose/web/lib.sh", 0o644);
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "modes"]);
    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap();
    let in_image = |path: &'static str| {
        let b = &b;
        let name = name.clone();
        async move {
            let ids = container_ids(b, &name).await;
            read_file(b, &ids[&format!("{name}-web-1")], path).await
        }
    };

    // From the commit (`--rev HEAD`).
    let run = repo.driftless(&[
        "reconcile",
        "--env",
        env,
        "--rev",
        "HEAD",
        "--state-dir",
        state,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        in_image("/modes.txt").await,
        "644 /app/lib.sh\n755 /app/tool\n644 /app/page.txt\n"
    );
    assert_eq!(in_image("/ran.txt").await, "tool ran\n");
    // A link goes as a link, as the docker CLI sends it.
    assert_eq!(in_image("/link.txt").await, "tool\n");

    // From the work tree: `chmod +x` alone is a change, named (the dry
    // run reads the uncommitted tree; applying wants it committed).
    chmod("compose/web/lib.sh", 0o755);
    let dry = repo.driftless(&["reconcile", "--env", env, "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("build context changed: lib.sh"),
        "{}",
        dry.stdout
    );
    git(repo.path(), &["commit", "-q", "-am", "chmod +x lib.sh"]);
    let run = repo.driftless(&["reconcile", "--env", env, "--state-dir", state]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        in_image("/modes.txt").await,
        "755 /app/lib.sh\n755 /app/tool\n644 /app/page.txt\n"
    );
}
