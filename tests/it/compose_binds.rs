//! Relative bind mounts of repo directories on the real engine, as docker
//! compose has them: two services binding `./shared` share one directory
//! (one volume of the project), what the containers write survives a
//! redeploy, a new commit updates the repo's files in place without
//! recreating anything, and a file the repo no longer holds goes while
//! the files the containers wrote stay. Locally through the backend, and
//! through the CLI against the same engine reached over `tcp://` with TLS.

use std::collections::BTreeMap;

use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use driftless::backend::Backend;
use driftless::backend::compose::ComposeBackend;
use driftless::backend::compose::binds;
use driftless::manifest::Allow;
use driftless::plan::Action;
use futures_util::StreamExt;

use crate::backup_support::exec;
use crate::compose_backend::{changed, container_ids, desired, dry_run, read_file, reconcile};
use crate::compose_build::load;
use crate::docker_support::{
    BUSYBOX, Cleanup, CountingProxy, add_file, build_image, containers, engine, project_name,
};
use crate::remote_docker::cli;
use crate::support::{RepoBuilder, git};
use crate::tls_proxy::{Pki, TlsProxy};

/// Two services binding one repo directory at different paths; `web`
/// sleeps `seconds`.
fn stack(project: &str, seconds: u32) -> String {
    format!(
        "name: {project}
services:
  web:
    image: {BUSYBOX}
    command: [sleep, \"{seconds}\"]
    init: true
    stop_grace_period: 1s
    volumes: ['./shared:/srv']
  worker:
    image: {BUSYBOX}
    command: [sleep, \"3600\"]
    init: true
    stop_grace_period: 1s
    volumes: ['./shared:/shared']
"
    )
}

/// Whether `path` exists in `container` (the archive API answers 404).
async fn exists(b: &ComposeBackend, container: &str, path: &str) -> bool {
    let mut stream = b.docker().download_from_container(
        container,
        Some(
            DownloadFromContainerOptionsBuilder::default()
                .path(path)
                .build(),
        ),
    );
    match stream.next().await {
        Some(Ok(_)) => true,
        Some(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => false,
        other => panic!("reading {path} from {container}: {other:?}"),
    }
}

async fn write(b: &ComposeBackend, container: &str, path: &str, text: &str) {
    exec(
        b.docker(),
        container,
        &["sh", "-c", &format!("echo {text} > {path}")],
    )
    .await
    .unwrap_or_else(|e| panic!("write {path} in {container}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_binding_one_directory_share_it_across_redeploys() {
    let Some(b) = engine().await else { return };
    let name = project_name("binds");
    let _cleanup = Cleanup::new(&[&name]);
    let env = format!("{name}-env");
    let mut files: BTreeMap<String, Vec<u8>> = [
        ("compose/stack.yaml", stack(&name, 3600)),
        ("compose/shared/config.txt", "v1\n".to_owned()),
        ("compose/shared/old.txt", "old\n".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_bytes()))
    .collect();
    let volume = binds::volume_name(&name, "compose/shared");

    // First deploy: the volume is created and filled before the services.
    let v1 = desired(vec![load(&files)]);
    let (changes, _) = reconcile(&b, &env, &v1).await;
    let bind = changes
        .iter()
        .position(|c| c.resource.kind == "bind")
        .unwrap();
    assert_eq!(changes[bind].resource.name, volume);
    assert_eq!(changes[bind].action, Action::Create);
    assert!(
        changes[bind + 1..]
            .iter()
            .all(|c| c.resource.kind == "service")
    );
    let ids = container_ids(&b, &name).await;
    let web = &ids[&format!("{name}-web-1")];
    let worker = &ids[&format!("{name}-worker-1")];
    assert_eq!(read_file(&b, web, "/srv/config.txt").await, "v1\n");

    // Each sees what the other writes: one directory, not two copies.
    write(&b, worker, "/shared/from-worker.txt", "worker").await;
    write(&b, web, "/srv/from-web.txt", "web").await;
    assert_eq!(read_file(&b, web, "/srv/from-worker.txt").await, "worker\n");
    assert_eq!(read_file(&b, worker, "/shared/from-web.txt").await, "web\n");

    // The same commit again: nothing to do, nothing sent — the plan is
    // the four list calls and one read of the directory's listing.
    let proxy = CountingProxy::start();
    let counted = proxy.backend().await;
    let plan = dry_run(&counted, &env, &v1, &Allow::default())
        .await
        .unwrap();
    assert_eq!(changed(&plan), []);
    assert_eq!(proxy.take(), 5, "four lists and one listing read");

    // A new commit: one file changed, one removed, one added, and a file a
    // container had edited that the repo changes too.
    files.insert("compose/shared/config.txt".into(), b"v2\n".to_vec());
    files.remove("compose/shared/old.txt");
    files.insert("compose/shared/new.txt".into(), b"new\n".to_vec());
    let v2 = desired(vec![load(&files)]);
    // A helper an interrupted fill left behind goes with the next fill.
    let leftover = b
        .docker()
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(BUSYBOX.to_owned()),
                labels: Some([(binds::HELPER_LABEL.to_owned(), volume.clone())].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id;
    let (changes, _) = reconcile(&b, &env, &v2).await;
    assert!(
        b.docker().inspect_container(&leftover, None).await.is_err(),
        "the leftover helper was removed"
    );
    assert_eq!(changed(&changes), [(volume.clone(), Action::Update)]);
    let diff = changes
        .iter()
        .find(|c| c.resource.kind == "bind")
        .and_then(|c| c.diff.clone())
        .unwrap();
    assert!(
        diff.contains("-old.txt") && diff.contains("+new.txt"),
        "{diff}"
    );
    // Updated in place, seen live: no container was recreated.
    assert_eq!(container_ids(&b, &name).await, ids);
    assert_eq!(read_file(&b, web, "/srv/config.txt").await, "v2\n");
    assert_eq!(read_file(&b, worker, "/shared/new.txt").await, "new\n");
    assert!(!exists(&b, web, "/srv/old.txt").await);
    // What the containers wrote is theirs: kept.
    assert_eq!(read_file(&b, web, "/srv/from-worker.txt").await, "worker\n");
    assert_eq!(read_file(&b, worker, "/shared/from-web.txt").await, "web\n");
    let (changes, _) = reconcile(&b, &env, &v2).await;
    assert_eq!(changed(&changes), []);

    // A replaced container mounts the same volume: its data is still there.
    files.insert("compose/stack.yaml".into(), stack(&name, 3601).into_bytes());
    let v3 = desired(vec![load(&files)]);
    let (changes, _) = reconcile(&b, &env, &v3).await;
    assert!(matches!(
        changed(&changes).as_slice(),
        [(s, Action::Recreate { .. })] if s == &format!("{name}/web")
    ));
    let web = &container_ids(&b, &name).await[&format!("{name}-web-1")];
    assert_eq!(read_file(&b, web, "/srv/from-worker.txt").await, "worker\n");
    assert_eq!(read_file(&b, web, "/srv/config.txt").await, "v2\n");

    // With no container mounting it, the plan cannot read the listing; the
    // fill reads it through its helper, so a dropped file still goes.
    for id in container_ids(&b, &name).await.values() {
        b.docker()
            .remove_container(
                id,
                Some(
                    bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .build(),
                ),
            )
            .await
            .unwrap();
    }
    files.remove("compose/shared/new.txt");
    let v4 = desired(vec![load(&files)]);
    let (changes, _) = reconcile(&b, &env, &v4).await;
    let bind = changes.iter().find(|c| c.resource.kind == "bind").unwrap();
    assert_eq!(bind.action, Action::Update);
    let ids = container_ids(&b, &name).await;
    let web = &ids[&format!("{name}-web-1")];
    assert!(!exists(&b, web, "/srv/new.txt").await);
    assert_eq!(read_file(&b, web, "/srv/from-worker.txt").await, "worker\n");
    assert_eq!(read_file(&b, web, "/srv/config.txt").await, "v2\n");
    let (changes, _) = reconcile(&b, &env, &v4).await;
    assert_eq!(changed(&changes), []);
}

fn commit(repo: &std::path::Path, message: &str) {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_directory_works_the_same_on_a_tls_remote_engine() {
    let Some(local) = engine().await else { return };
    let project = project_name("binds-tls");
    let _cleanup = Cleanup::new(&[&project]);
    let pki = Pki::new();
    let proxy = TlsProxy::start(&pki).await;
    let certs = pki.client_dir();
    let certs = [("DOCKER_CERT_PATH", certs.to_str().unwrap())];
    let env = "remote-binds";
    let manifest = format!(
        "apiVersion: driftless/v1\ntargets:\n  remote:\n    docker: {{ host: \"{}\" }}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [remote]\n    health: {{ deadline: 60s, settle: 1s }}\n",
        proxy.host
    );
    let repo = RepoBuilder::new()
        .file("driftless.yaml", manifest)
        .file("environments/values.yaml", "{}\n")
        .file("compose/stack.yaml", stack(&project, 3600))
        .file("compose/shared/config.txt", "v1\n")
        .file("compose/shared/old.txt", "old\n");
    git(repo.path(), &["init", "-q"]);
    commit(repo.path(), "v1");
    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap();
    let volume = binds::volume_name(&project, "compose/shared");
    let apply = || async {
        let run = cli(
            repo.path(),
            &["reconcile", "--env", env, "--state-dir", state],
            &certs,
        )
        .await;
        assert_eq!(run.code, 0, "{run:?}");
    };

    // The dry run names the volume the directory becomes.
    let dry = cli(
        repo.path(),
        &["reconcile", "--env", env, "--dry-run"],
        &certs,
    )
    .await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains(&volume), "{}", dry.stdout);
    assert!(dry.stdout.contains("compose/shared"), "{}", dry.stdout);

    apply().await;
    let ids = container_ids(&local, &project).await;
    let web = &ids[&format!("{project}-web-1")];
    let worker = &ids[&format!("{project}-worker-1")];
    write(&local, worker, "/shared/from-worker.txt", "worker").await;
    assert_eq!(
        read_file(&local, web, "/srv/from-worker.txt").await,
        "worker\n"
    );

    std::fs::write(repo.path().join("compose/shared/config.txt"), "v2\n").unwrap();
    std::fs::remove_file(repo.path().join("compose/shared/old.txt")).unwrap();
    commit(repo.path(), "v2");
    apply().await;
    assert_eq!(container_ids(&local, &project).await, ids);
    assert_eq!(read_file(&local, web, "/srv/config.txt").await, "v2\n");
    assert!(!exists(&local, worker, "/shared/old.txt").await);
    assert_eq!(
        read_file(&local, worker, "/shared/from-worker.txt").await,
        "worker\n"
    );
    let again = cli(
        repo.path(),
        &[
            "reconcile",
            "--env",
            env,
            "--dry-run",
            "--detailed-exitcode",
        ],
        &certs,
    )
    .await;
    assert_eq!(again.code, 0, "nothing left to do: {again:?}");
    assert_eq!(containers(&local, &project).await.len(), 2);
    assert_eq!(proxy.refused(), 0);
}

/// The bind options docker compose accepts reach the engine as compose
/// sends them, and the engine takes them: `Binds` strings for the short
/// syntax (the missing host path created, `~` expanded to this process's
/// home), `Mounts` with propagation for the long syntax, `nocopy` on a
/// volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_options_reach_the_engine_as_docker_compose_sends_them() {
    let Some(b) = engine().await else { return };
    let name = project_name("bindopts");
    let _cleanup = Cleanup::new(&[&name]);
    let host = tempfile::tempdir().unwrap();
    let missing = host.path().join("created-by-the-engine");
    let home = std::env::var("HOME").unwrap();
    let in_home = format!(".driftless-test-{name}");
    let stack = format!(
        "name: {name}
services:
  app:
    image: {BUSYBOX}
    command: [sleep, \"3600\"]
    init: true
    stop_grace_period: 1s
    volumes:
      - {missing}:/created:rw,z,rprivate
      - ~/{in_home}:/home-dir:ro
      - type: bind
        source: {host}
        target: /long
        bind: {{propagation: rprivate}}
      - data:/data:nocopy
volumes:
  data: {{}}
",
        missing = missing.display(),
        host = host.path().display(),
    );
    let files: BTreeMap<String, Vec<u8>> =
        [("compose/stack.yaml".to_owned(), stack.into_bytes())].into();
    reconcile(&b, &format!("{name}-env"), &desired(vec![load(&files)])).await;
    let id = &container_ids(&b, &name).await[&format!("{name}-app-1")];
    let inspect = b
        .docker()
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let hc = inspect.host_config.unwrap();
    assert_eq!(
        hc.binds.unwrap_or_default(),
        [
            format!("{}:/created:rw,z,rprivate", missing.display()),
            format!("{home}/{in_home}:/home-dir:ro"),
        ]
    );
    assert!(missing.is_dir(), "the engine created the missing host path");
    let mounts = hc.mounts.unwrap_or_default();
    let long = mounts
        .iter()
        .find(|m| m.target.as_deref() == Some("/long"))
        .unwrap();
    assert_eq!(
        long.bind_options.as_ref().and_then(|o| o.propagation),
        Some(bollard::models::MountBindOptionsPropagationEnum::RPRIVATE)
    );
    let data = mounts
        .iter()
        .find(|m| m.target.as_deref() == Some("/data"))
        .unwrap();
    assert_eq!(
        data.volume_options.as_ref().and_then(|o| o.no_copy),
        Some(true)
    );
    let _ = std::fs::remove_dir(format!("{home}/{in_home}"));
}

/// Removing a file the repo dropped runs `rm` in a helper; when the
/// binding service's image has none (distroless), another image of the
/// project does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_removed_with_another_image_when_the_service_has_no_rm() {
    let Some(b) = engine().await else { return };
    let name = project_name("binds-norm");
    let no_rm = format!("driftless-test/no-rm:{name}");
    let _cleanup = Cleanup::new(&[&name]).image(&no_rm);
    let mut context = tar::Builder::new(Vec::new());
    add_file(
        &mut context,
        "Dockerfile",
        0o644,
        format!("FROM {BUSYBOX}\nRUN rm /bin/rm\n").as_bytes(),
    );
    build_image(b.docker(), &no_rm, context.into_inner().unwrap()).await;
    let stack = format!(
        "name: {name}
services:
  app:
    image: {no_rm}
    command: [sleep, \"3600\"]
    init: true
    stop_grace_period: 1s
    volumes: ['./shared:/shared']
  other:
    image: {BUSYBOX}
    command: [sleep, \"3600\"]
    init: true
    stop_grace_period: 1s
"
    );
    let env = format!("{name}-env");
    let mut files: BTreeMap<String, Vec<u8>> = [
        ("compose/stack.yaml", stack),
        ("compose/shared/keep.txt", "keep\n".to_owned()),
        ("compose/shared/gone.txt", "gone\n".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_bytes()))
    .collect();
    reconcile(&b, &env, &desired(vec![load(&files)])).await;
    let app = &container_ids(&b, &name).await[&format!("{name}-app-1")];
    assert!(exists(&b, app, "/shared/gone.txt").await);
    files.remove("compose/shared/gone.txt");
    let (changes, _) = reconcile(&b, &env, &desired(vec![load(&files)])).await;
    assert_eq!(
        changed(&changes),
        [(binds::volume_name(&name, "compose/shared"), Action::Update)]
    );
    assert!(!exists(&b, app, "/shared/gone.txt").await);
    assert_eq!(read_file(&b, app, "/shared/keep.txt").await, "keep\n");
}

/// A volume of the bound directory's name that driftless did not create
/// is another tool's: the apply stops at it and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_of_that_name_driftless_did_not_create_is_left_alone() {
    let Some(b) = engine().await else { return };
    let name = project_name("binds-taken");
    let _cleanup = Cleanup::new(&[&name]);
    let volume = binds::volume_name(&name, "compose/shared");
    // Labelled with the project only, so the test's cleanup finds it.
    b.docker()
        .create_volume(bollard::models::VolumeCreateRequest {
            name: Some(volume.clone()),
            labels: Some([("com.docker.compose.project".to_owned(), name.clone())].into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let files: BTreeMap<String, Vec<u8>> = [
        (
            "compose/stack.yaml".to_owned(),
            stack(&name, 3600).into_bytes(),
        ),
        ("compose/shared/a.txt".to_owned(), b"a\n".to_vec()),
    ]
    .into();
    let d = desired(vec![load(&files)]);
    let env = format!("{name}-env");
    let allow = Allow::default();
    let changes = dry_run(&b, &env, &d, &allow).await.unwrap();
    let masker = driftless::secrets::Masker::default();
    let err = b
        .apply(
            &d,
            &changes,
            driftless::backend::Context {
                environment: &env,
                masker: &masker,
                allow: &allow,
                owner: driftless::backend::Owner::new(&env),
                progress: None,
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&volume) && err.contains("did not create"),
        "{err}"
    );
    assert!(containers(&b, &name).await.is_empty(), "nothing started");
}
