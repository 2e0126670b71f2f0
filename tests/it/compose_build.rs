//! `build:` on the real engine, from the Compose file through the loader:
//! a built service runs; a re-plan sends no context; a changed context
//! file rebuilds and recreates only that service, naming the file; a
//! failing Dockerfile applies nothing and shows the log tail; a rollback
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
use crate::docker_support::{BUSYBOX, Cleanup, CountingProxy, engine, project_name};
use crate::support::RepoBuilder;

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
/// proxy: the no-op plan is the four list calls and the no-op apply one —
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
    let changes = dry_run(&counted, &name, &again, &allow).await.unwrap();
    assert!(changed(&changes).is_empty(), "{changes:#?}");
    assert_eq!(proxy.take(), 4, "a no-op plan is the four list calls");
    let masker = Masker::default();
    let report = counted
        .apply(&again, &changes, ctx(&name, &masker, &allow))
        .await
        .unwrap();
    assert!(report.applied.is_empty());
    assert_eq!(proxy.take(), 1, "a no-op apply lists images only: no build");
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
