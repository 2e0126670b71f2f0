//! The Compose backend against the real Docker engine: deploy, no-op,
//! targeted recreates, scaling, removal, networks, failed pulls, safety
//! refusals and drift — each test on its own uniquely named project.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, InspectContainerOptions, KillContainerOptions,
    TagImageOptionsBuilder,
};
use driftless::backend::compose::{ComposeBackend, hash, labels};
use driftless::backend::{ApplyReport, Backend, BackendError, Context, Health};
use driftless::manifest::{Allow, Target, TargetKind};
use driftless::model::compose::{
    Dependency, DependencyCondition, FileMount, Healthcheck, Mount, Network, Port, Project,
    Service, Volume,
};
use driftless::model::{Resources, TargetState};
use driftless::plan::{Action, Change};
use driftless::secrets::Masker;
use futures_util::StreamExt;

use crate::docker_support::{
    BUSYBOX, BUSYBOX_2, Cleanup, CountingProxy, Registry, engine, force_remove, local_target,
    project_name,
};

pub(crate) fn desired(projects: Vec<Project>) -> TargetState {
    TargetState {
        target: Target {
            name: "local".into(),
            owner: None,
            kind: TargetKind::Docker(local_target()),
        },
        resources: Resources::Compose(projects),
    }
}

/// Each test is its own environment: an environment owns every project it
/// deployed, so tests sharing one would see each other's as removals.
pub(crate) fn ctx<'a>(env: &'a str, masker: &'a Masker, allow: &'a Allow) -> Context<'a> {
    Context {
        environment: env,
        masker,
        allow,
        owner: driftless::backend::Owner::new(env),
        progress: None,
    }
}

/// An httpd serving `/www` with a wget healthcheck.
fn web() -> Service {
    Service {
        image: BUSYBOX.into(),
        command: Some(vec![
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            "80".into(),
            "-h".into(),
            "/www".into(),
        ]),
        healthcheck: Some(Healthcheck {
            test: vec![
                "CMD-SHELL".into(),
                "wget -q -O- http://127.0.0.1/ >/dev/null".into(),
            ],
            interval: Some(Duration::from_millis(500)),
            timeout: Some(Duration::from_secs(2)),
            retries: Some(20),
            start_period: None,
            start_interval: None,
            disable: false,
        }),
        // PID 1 ignores SIGTERM: keep the stop wait short.
        stop_grace_period: Some(Duration::from_secs(1)),
        replicas: 1,
        ..Service::default()
    }
}

/// A long-running process with no healthcheck.
fn sleeper() -> Service {
    Service {
        image: BUSYBOX.into(),
        command: Some(vec!["sleep".into(), "3600".into()]),
        stop_grace_period: Some(Duration::from_secs(1)),
        replicas: 1,
        ..Service::default()
    }
}

fn project(name: &str, services: Vec<(&str, Service)>) -> Project {
    Project {
        disabled_services: Default::default(),
        name: name.into(),
        services: services
            .into_iter()
            .map(|(k, s)| (k.to_owned(), s))
            .collect(),
        networks: BTreeMap::new(),
        volumes: BTreeMap::new(),
        origin: Default::default(),
    }
}

fn depends(on: &[(&str, DependencyCondition)]) -> BTreeMap<String, Dependency> {
    on.iter()
        .map(|(name, condition)| {
            (
                (*name).to_owned(),
                Dependency {
                    condition: *condition,
                    restart: false,
                    required: true,
                },
            )
        })
        .collect()
}

/// A dry run: read live, plan.
pub(crate) async fn dry_run(
    b: &ComposeBackend,
    env: &str,
    d: &TargetState,
    allow: &Allow,
) -> Result<Vec<Change>, BackendError> {
    let masker = Masker::default();
    let live = b.read_live(d, ctx(env, &masker, allow)).await?;
    b.plan(d, &live, ctx(env, &masker, allow)).await
}

/// A reconcile: plan, then apply exactly that plan.
pub(crate) async fn reconcile(
    b: &ComposeBackend,
    env: &str,
    d: &TargetState,
) -> (Vec<Change>, ApplyReport) {
    let allow = Allow::default();
    let changes = dry_run(b, env, d, &allow).await.expect("plan");
    let masker = Masker::default();
    let report = b
        .apply(d, &changes, ctx(env, &masker, &allow))
        .await
        .unwrap_or_else(|e| panic!("apply failed: {e}"));
    (changes, report)
}

pub(crate) fn changed(changes: &[Change]) -> Vec<(String, Action)> {
    changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .map(|c| (c.resource.name.clone(), c.action.clone()))
        .collect()
}

/// Polls health until every service is healthy; panics with the last
/// verdicts after `limit`.
async fn wait_healthy(b: &ComposeBackend, env: &str, d: &TargetState) {
    let masker = Masker::default();
    let allow = Allow::default();
    let start = Instant::now();
    loop {
        let verdicts = b
            .health(d, ctx(env, &masker, &allow))
            .await
            .expect("health");
        if verdicts.iter().all(|v| v.health == Health::Healthy) {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!("not healthy after 60 s: {verdicts:#?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Container name → id for a project, as the engine lists them.
pub(crate) async fn container_ids(b: &ComposeBackend, project: &str) -> BTreeMap<String, String> {
    let filter = std::collections::HashMap::from([(
        "label",
        vec![format!("{}={project}", labels::PROJECT)],
    )]);
    b.docker()
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.names.unwrap()[0].trim_start_matches('/').to_owned(),
                c.id.unwrap(),
            )
        })
        .collect()
}

/// Reads one file out of a container through the archive API.
pub(crate) async fn read_file(b: &ComposeBackend, container: &str, path: &str) -> String {
    let mut stream = b.docker().download_from_container(
        container,
        Some(
            DownloadFromContainerOptionsBuilder::default()
                .path(path)
                .build(),
        ),
    );
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("archive download"));
    }
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut entry, &mut out).unwrap();
    out
}

fn config_file(content: &str) -> FileMount {
    FileMount {
        target: "/etc/app/app.conf".into(),
        source: "config/app.conf".into(),
        content: content.as_bytes().to_vec(),
        mode: 0o444,
        uid: 0,
        gid: 0,
    }
}

/// A stack with every kind of dependency: `db` must be healthy before
/// `api`, `migrate` must finish before `api`, `front` only waits for start.
fn stack(name: &str) -> Project {
    let mut api = web();
    api.depends_on = depends(&[
        ("db", DependencyCondition::ServiceHealthy),
        ("migrate", DependencyCondition::ServiceCompletedSuccessfully),
    ]);
    api.files = vec![config_file("mode = one\n")];
    api.environment.insert("MODE".into(), Some("one".into()));
    let mut front = sleeper();
    front.depends_on = depends(&[("api", DependencyCondition::ServiceStarted)]);
    let migrate = Service {
        command: Some(vec!["sh".into(), "-c".into(), "echo migrated".into()]),
        ..sleeper()
    };
    // An ephemeral host port on loopback: parallel tests never collide.
    let mut db = web();
    db.ports = vec![Port {
        host_ip: Some("127.0.0.1".into()),
        published: None,
        target: 80,
        protocol: "tcp".into(),
    }];
    project(
        name,
        vec![
            ("db", db),
            ("api", api),
            ("migrate", migrate),
            ("front", front),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_noop_env_change_and_compose_labels() {
    let Some(b) = engine().await else { return };
    let name = project_name("deploy");
    let _cleanup = Cleanup::new(&[&name]);
    let mut p = stack(&name);
    let d = desired(vec![p.clone()]);

    // First deploy: network, then services in dependency order.
    let (changes, report) = reconcile(&b, &name, &d).await;
    let names: Vec<&str> = changes.iter().map(|c| c.resource.name.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert_eq!(names[0], format!("{name}_default"));
    assert!(pos(&format!("{name}/db")) < pos(&format!("{name}/api")));
    assert!(pos(&format!("{name}/migrate")) < pos(&format!("{name}/api")));
    assert!(pos(&format!("{name}/api")) < pos(&format!("{name}/front")));
    assert!(
        changes.iter().all(|c| c.action == Action::Create),
        "{changes:#?}"
    );
    assert_eq!(report.image_ids.len(), 4);
    assert!(
        report
            .image_ids
            .values()
            .all(|id| id.starts_with("sha256:"))
    );
    wait_healthy(&b, &name, &d).await;

    // Labels as docker compose v2 writes them.
    let api_name = format!("{name}-api-1");
    let inspect = b
        .docker()
        .inspect_container(&api_name, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let l = inspect.config.unwrap().labels.unwrap();
    assert_eq!(l[labels::PROJECT], name);
    assert_eq!(l[labels::SERVICE], "api");
    assert_eq!(l[labels::CONTAINER_NUMBER], "1");
    assert_eq!(l[labels::ONEOFF], "False");
    assert_eq!(l[labels::ENVIRONMENT], name);
    assert_eq!(l[labels::INSTANCE], name);
    assert_eq!(l[labels::IMAGE], report.image_ids[&format!("{name}/api")]);
    assert!(
        l[labels::DEPENDS_ON].contains("db:service_healthy:false"),
        "{l:?}"
    );
    // The hash label is the in-process hash of the same service and image.
    assert_eq!(
        l[labels::CONFIG_HASH],
        hash::config_hash(&p.services["api"], &l[labels::IMAGE])
    );
    assert_eq!(
        read_file(&b, &api_name, "/etc/app/app.conf").await,
        "mode = one\n"
    );

    // The published port answers on the host.
    let db = b
        .docker()
        .inspect_container(&format!("{name}-db-1"), None::<InspectContainerOptions>)
        .await
        .unwrap();
    let ports = db.network_settings.unwrap().ports.unwrap();
    let binding = &ports["80/tcp"].as_ref().unwrap()[0];
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    let port = binding.host_port.clone().unwrap();
    let mut conn = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).await.unwrap();
    assert!(page.contains("driftless test page"), "{page}");

    // Docker's own CLI recognises the project (argument vector, no shell).
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={name}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker CLI");
    let listed = String::from_utf8_lossy(&out.stdout);
    for s in ["db", "api", "front"] {
        assert!(listed.contains(&format!("{name}-{s}-1")), "{listed}");
    }

    // No-op: zero changes, twice the same plan, no container replaced.
    let before = container_ids(&b, &name).await;
    let allow = Allow::default();
    let plan_a = dry_run(&b, &name, &d, &allow).await.unwrap();
    let plan_b = dry_run(&b, &name, &d, &allow).await.unwrap();
    assert_eq!(plan_a, plan_b);
    assert!(changed(&plan_a).is_empty(), "{plan_a:#?}");
    let (_, report) = reconcile(&b, &name, &d).await;
    assert!(report.applied.is_empty());
    assert_eq!(container_ids(&b, &name).await, before);

    // One service's env changes: only it is recreated.
    p.services
        .get_mut("front")
        .unwrap()
        .environment
        .insert("LEVEL".into(), Some("debug".into()));
    let d = desired(vec![p]);
    let (changes, _) = reconcile(&b, &name, &d).await;
    assert_eq!(
        changed(&changes),
        [(
            format!("{name}/front"),
            Action::Recreate {
                reason: "config changed: environment".into()
            }
        )]
    );
    let diff = changes
        .iter()
        .find(|c| c.resource.name.ends_with("/front"))
        .and_then(|c| c.diff.clone())
        .unwrap();
    assert!(diff.contains("+  LEVEL: debug\n"), "{diff}");
    let after = container_ids(&b, &name).await;
    for (container, id) in &before {
        if container.contains("-front-") {
            assert_ne!(after[container], *id, "front not recreated");
        } else {
            assert_eq!(after[container], *id, "{container} recreated");
        }
    }
    wait_healthy(&b, &name, &d).await;
    assert!(changed(&dry_run(&b, &name, &d, &allow).await.unwrap()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_change_recreates_only_its_service() {
    let Some(b) = engine().await else { return };
    let name = project_name("files");
    let _cleanup = Cleanup::new(&[&name]);
    let mut app = sleeper();
    app.files = vec![config_file("level = 1\n")];
    let mut p = project(&name, vec![("app", app), ("other", sleeper())]);
    reconcile(&b, &name, &desired(vec![p.clone()])).await;
    let before = container_ids(&b, &name).await;

    p.services.get_mut("app").unwrap().files = vec![config_file("level = 2\n")];
    let (changes, _) = reconcile(&b, &name, &desired(vec![p])).await;
    let app_change = changes
        .iter()
        .find(|c| c.resource.name.ends_with("/app"))
        .unwrap();
    assert_eq!(
        changed(&changes),
        [(
            format!("{name}/app"),
            Action::Recreate {
                reason: "config changed: files".into()
            }
        )]
    );
    let diff = app_change.diff.as_deref().unwrap();
    assert!(diff.contains("-level = 1\n+level = 2"), "{diff}");
    let after = container_ids(&b, &name).await;
    let other = format!("{name}-other-1");
    assert_eq!(after[&other], before[&other]);
    assert_ne!(
        after[&format!("{name}-app-1")],
        before[&format!("{name}-app-1")]
    );
    assert_eq!(
        read_file(&b, &format!("{name}-app-1"), "/etc/app/app.conf").await,
        "level = 2\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_and_down() {
    let Some(b) = engine().await else { return };
    let name = project_name("scale");
    let _cleanup = Cleanup::new(&[&name]);
    let mut p = project(&name, vec![("worker", sleeper())]);
    reconcile(&b, &name, &desired(vec![p.clone()])).await;
    let first = container_ids(&b, &name).await;

    p.services.get_mut("worker").unwrap().replicas = 3;
    let (changes, _) = reconcile(&b, &name, &desired(vec![p.clone()])).await;
    let c = changes
        .iter()
        .find(|c| c.resource.name.ends_with("/worker"))
        .unwrap();
    assert_eq!(
        (&c.action, c.detail.as_deref()),
        (&Action::Update, Some("scale 1 → 3"))
    );
    let three = container_ids(&b, &name).await;
    let names: Vec<&String> = three.keys().collect();
    assert_eq!(
        names,
        [1, 2, 3]
            .map(|n| format!("{name}-worker-{n}"))
            .iter()
            .collect::<Vec<_>>()
    );
    let one = format!("{name}-worker-1");
    assert_eq!(three[&one], first[&one], "scaling up recreated replica 1");

    // Replica 2 removed out of band: a missing container, and only it is
    // created again.
    force_remove(b.docker(), &format!("{name}-worker-2")).await;
    let (changes, _) = reconcile(&b, &name, &desired(vec![p.clone()])).await;
    let c = changes
        .iter()
        .find(|c| c.resource.name.ends_with("/worker"))
        .unwrap();
    assert_eq!(
        c.action,
        Action::Recreate {
            reason: "container missing".into()
        }
    );
    let restored = container_ids(&b, &name).await;
    assert_eq!(restored.len(), 3);
    let three_name = format!("{name}-worker-3");
    assert_eq!(restored[&one], three[&one]);
    assert_eq!(restored[&three_name], three[&three_name]);

    p.services.get_mut("worker").unwrap().replicas = 1;
    let (changes, _) = reconcile(&b, &name, &desired(vec![p.clone()])).await;
    let c = changes
        .iter()
        .find(|c| c.resource.name.ends_with("/worker"))
        .unwrap();
    assert_eq!(c.detail.as_deref(), Some("scale 3 → 1"));
    let left = container_ids(&b, &name).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[&one], first[&one]);
    assert!(
        changed(
            &dry_run(&b, &name, &desired(vec![p]), &Allow::default())
                .await
                .unwrap()
        )
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_service_goes_and_its_volume_stays() {
    let Some(b) = engine().await else { return };
    let name = project_name("remove");
    let _cleanup = Cleanup::new(&[&name]);
    let mut db = sleeper();
    db.volumes = vec![Mount::Volume {
        subpath: None,
        source: Some("data".into()),
        target: "/data".into(),
        read_only: false,
        no_copy: false,
    }];
    let mut p = project(&name, vec![("db", db), ("app", sleeper())]);
    let volume = format!("{name}_data");
    p.volumes.insert(
        "data".into(),
        Volume {
            name: volume.clone(),
            ..Volume::default()
        },
    );
    let (changes, _) = reconcile(&b, &name, &desired(vec![p.clone()])).await;
    assert!(
        changes
            .iter()
            .any(|c| c.resource.name == volume && c.action == Action::Create)
    );

    p.services.remove("db");
    p.volumes.clear();
    let (changes, _) = reconcile(&b, &name, &desired(vec![p])).await;
    assert_eq!(changed(&changes), [(format!("{name}/db"), Action::Delete)]);
    let kept = changes.iter().find(|c| c.resource.name == volume).unwrap();
    assert_eq!(kept.action, Action::Unchanged);
    assert!(kept.detail.as_deref().unwrap().contains("kept"), "{kept:?}");
    let left = container_ids(&b, &name).await;
    assert_eq!(left.keys().collect::<Vec<_>>(), [&format!("{name}-app-1")]);
    let kept = b
        .docker()
        .inspect_volume(&volume)
        .await
        .expect("the named volume must survive its service");
    // Labelled as the environment's own, like its containers and networks.
    assert_eq!(kept.labels[labels::INSTANCE], name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_changes() {
    let Some(b) = engine().await else { return };
    let name = project_name("net");
    let _cleanup = Cleanup::new(&[&name]);
    let mut p = project(&name, vec![("a", sleeper()), ("b", sleeper())]);
    reconcile(&b, &name, &desired(vec![p.clone()])).await;
    let before = container_ids(&b, &name).await;

    // `a` joins a second network as well.
    let backend_net = format!("{name}_backend");
    p.networks.insert(
        "backend".into(),
        Network {
            name: backend_net.clone(),
            ..Network::default()
        },
    );
    p.networks.insert(
        "default".into(),
        Network {
            name: format!("{name}_default"),
            ..Network::default()
        },
    );
    let a = p.services.get_mut("a").unwrap();
    a.networks.insert("default".into(), Default::default());
    a.networks.insert("backend".into(), Default::default());
    let (changes, _) = reconcile(&b, &name, &desired(vec![p.clone()])).await;
    assert_eq!(
        changed(&changes),
        [
            (backend_net.clone(), Action::Create),
            (
                format!("{name}/a"),
                Action::Recreate {
                    reason: "config changed: networks".into()
                }
            )
        ]
    );
    let inspect = b
        .docker()
        .inspect_container(&format!("{name}-a-1"), None::<InspectContainerOptions>)
        .await
        .unwrap();
    let nets = inspect.network_settings.unwrap().networks.unwrap();
    assert!(nets.contains_key(&backend_net), "{:?}", nets.keys());
    assert!(nets.contains_key(&format!("{name}_default")));
    assert_eq!(
        container_ids(&b, &name).await[&format!("{name}-b-1")],
        before[&format!("{name}-b-1")]
    );

    // The backend network's config changes: it and its service are recreated.
    p.networks.get_mut("backend").unwrap().internal = true;
    let (changes, _) = reconcile(&b, &name, &desired(vec![p.clone()])).await;
    assert_eq!(
        changed(&changes),
        [
            (
                backend_net.clone(),
                Action::Recreate {
                    reason: "config changed".into()
                }
            ),
            (
                format!("{name}/a"),
                Action::Recreate {
                    reason: "network changed".into()
                }
            )
        ]
    );
    let net = b
        .docker()
        .inspect_network(
            &backend_net,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .unwrap();
    assert_eq!(net.internal, Some(true));
    assert_eq!(net.labels.unwrap()[labels::INSTANCE], name);
    assert!(
        changed(
            &dry_run(&b, &name, &desired(vec![p]), &Allow::default())
                .await
                .unwrap()
        )
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpullable_image_fails_before_anything_is_stopped() {
    let Some(b) = engine().await else { return };
    let name = project_name("pull");
    let _cleanup = Cleanup::new(&[&name]);
    let mut p = project(&name, vec![("a", sleeper()), ("b", sleeper())]);
    reconcile(&b, &name, &desired(vec![p.clone()])).await;
    let before = container_ids(&b, &name).await;

    // `a` changes config (would be recreated first), `b` needs a pull.
    p.services
        .get_mut("a")
        .unwrap()
        .environment
        .insert("X".into(), Some("1".into()));
    p.services.get_mut("b").unwrap().image = "127.0.0.1:1/none:1".into();
    let d = desired(vec![p]);

    // A dry run plans the pull; it is not an error.
    let allow = Allow::default();
    let changes = dry_run(&b, &name, &d, &allow)
        .await
        .expect("a missing image is a planned pull");
    let bc = changes
        .iter()
        .find(|c| c.resource.name.ends_with("/b"))
        .unwrap();
    assert!(
        bc.detail
            .as_deref()
            .unwrap()
            .contains("pull 127.0.0.1:1/none:1"),
        "{bc:?}"
    );

    let masker = Masker::default();
    let err = b
        .apply(&d, &changes, ctx(&name, &masker, &allow))
        .await
        .expect_err("the pull must fail")
        .to_string();
    assert!(err.contains("127.0.0.1:1/none:1"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(container_ids(&b, &name).await, before);
    for c in before.keys() {
        let st = b
            .docker()
            .inspect_container(c, None::<InspectContainerOptions>)
            .await
            .unwrap()
            .state
            .unwrap();
        assert_eq!(st.running, Some(true), "{c} was stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_removal_is_refused() {
    let Some(b) = engine().await else { return };
    let name = project_name("mass");
    let _cleanup = Cleanup::new(&[&name]);
    let p = project(
        &name,
        vec![("a", sleeper()), ("b", sleeper()), ("c", sleeper())],
    );
    reconcile(&b, &name, &desired(vec![p.clone()])).await;

    let mut most_gone = p.clone();
    most_gone.services.remove("a");
    most_gone.services.remove("b");
    let err = dry_run(
        &b,
        &name,
        &desired(vec![most_gone.clone()]),
        &Allow::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BackendError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("removes 2 of 3 services"), "{err}");

    let err = dry_run(&b, &name, &desired(vec![]), &Allow::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no Compose project"), "{err}");

    let allow = Allow {
        mass_removal: true,
        ..Allow::default()
    };
    let changes = dry_run(&b, &name, &desired(vec![most_gone]), &allow)
        .await
        .unwrap();
    assert_eq!(changed(&changes).len(), 2);
    assert_eq!(
        container_ids(&b, &name).await.len(),
        3,
        "a refused plan changed something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_container_is_drift_and_recreated() {
    let Some(b) = engine().await else { return };
    let name = project_name("drift");
    let _cleanup = Cleanup::new(&[&name]);
    let p = project(&name, vec![("web", web())]);
    let d = desired(vec![p]);
    reconcile(&b, &name, &d).await;
    wait_healthy(&b, &name, &d).await;
    let container = format!("{name}-web-1");
    let old = container_ids(&b, &name).await[&container].clone();

    b.docker()
        .kill_container(&container, None::<KillContainerOptions>)
        .await
        .unwrap();
    // Health sees it, then the plan does.
    let masker = Masker::default();
    let allow = Allow::default();
    let verdicts = b.health(&d, ctx(&name, &masker, &allow)).await.unwrap();
    assert_eq!(verdicts[0].health, Health::Degraded, "{verdicts:?}");
    assert!(
        verdicts[0].reason.contains("exited with code 137"),
        "{verdicts:?}"
    );

    let (changes, _) = reconcile(&b, &name, &d).await;
    assert_eq!(
        changed(&changes),
        [(
            format!("{name}/web"),
            Action::Recreate {
                reason: "container exited".into()
            }
        )]
    );
    assert_ne!(container_ids(&b, &name).await[&container], old);
    wait_healthy(&b, &name, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retagged_image_is_an_image_change() {
    let Some(b) = engine().await else { return };
    let name = project_name("retag");
    // A tag of this test's own, moved from one fixture to the other, as a
    // re-pushed `:latest` would be.
    let repo = format!("driftless-test/{name}");
    let _cleanup = Cleanup::new(&[&name]).image(&format!("{repo}:v"));
    let tag = |source: &'static str| {
        let repo = repo.clone();
        let docker = b.docker().clone();
        async move {
            docker
                .tag_image(
                    source,
                    Some(
                        TagImageOptionsBuilder::default()
                            .repo(&repo)
                            .tag("v")
                            .build(),
                    ),
                )
                .await
                .unwrap()
        }
    };
    tag(BUSYBOX).await;
    let mut svc = sleeper();
    svc.image = format!("{repo}:v");
    let d = desired(vec![project(&name, vec![("app", svc)])]);
    reconcile(&b, &name, &d).await;

    tag(BUSYBOX_2).await;
    let (changes, report) = reconcile(&b, &name, &d).await;
    assert_eq!(
        changed(&changes),
        [(
            format!("{name}/app"),
            Action::Recreate {
                reason: "image changed".into()
            }
        )]
    );
    let id2 = b
        .docker()
        .inspect_image(BUSYBOX_2)
        .await
        .unwrap()
        .id
        .unwrap();
    assert_eq!(report.image_ids[&format!("{name}/app")], id2);
}

#[tokio::test]
async fn a_missing_socket_is_named_in_the_error() {
    let target = driftless::manifest::DockerTarget {
        host: Some("unix:///nonexistent/docker.sock".into()),
        ..local_target()
    };
    let err = ComposeBackend::connect(&target)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/docker.sock does not exist"),
        "{err}"
    );
}

/// The no-op plan of a 14-service stack costs four API calls (containers,
/// networks, volumes, images) whatever the number of services, and the
/// no-op apply of that plan none (its image ids are the plan's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_plan_of_fourteen_services_is_four_calls() {
    let Some(b) = engine().await else { return };
    let name = project_name("calls");
    let _cleanup = Cleanup::new(&[&name]);
    let services: Vec<(String, Service)> =
        (1..=14).map(|i| (format!("s{i:02}"), sleeper())).collect();
    let p = project(
        &name,
        services
            .iter()
            .map(|(n, s)| (n.as_str(), s.clone()))
            .collect(),
    );
    let d = desired(vec![p]);
    let start = Instant::now();
    reconcile(&b, &name, &d).await;
    eprintln!("cold deploy of 14 services: {:?}", start.elapsed());

    let proxy = CountingProxy::start();
    let target = driftless::manifest::DockerTarget {
        host: Some(proxy.host.clone()),
        ..local_target()
    };
    let counted = ComposeBackend::connect(&target).await.unwrap();
    assert_eq!(proxy.take(), 1, "connect negotiates the API version once");

    let allow = Allow::default();
    let masker = Masker::default();
    let start = Instant::now();
    let live = counted
        .read_live(&d, ctx(&name, &masker, &allow))
        .await
        .unwrap();
    let changes = counted
        .plan(&d, &live, ctx(&name, &masker, &allow))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    assert!(changed(&changes).is_empty(), "{changes:#?}");
    assert_eq!(changes.len(), 15, "14 services and the default network");
    assert_eq!(proxy.take(), 4, "a no-op plan is one list call per kind");
    eprintln!("no-op plan of 14 services: 4 API calls, {elapsed:?}");

    let report = counted
        .apply_live(&d, &changes, &live, ctx(&name, &masker, &allow))
        .await
        .unwrap();
    assert!(report.applied.is_empty());
    assert_eq!(report.image_ids.len(), 14);
    assert_eq!(proxy.take(), 0, "a no-op apply of a plan sends nothing");
}

/// An image in a registry that needs a login: without credentials the pull
/// fails before anything changes; with the Docker config's `auths` it is
/// pulled and runs, and its id is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_pull_from_a_local_registry() {
    let Some(b) = engine().await else { return };
    let registry = Registry::start().await;
    let name = project_name("auth");
    let reference = registry
        .push(b.docker(), BUSYBOX, &format!("driftless/{name}"), "v1")
        .await;
    let _cleanup = Cleanup::new(&[&name]).image(&reference);
    let mut svc = sleeper();
    svc.image = reference.clone();
    let d = desired(vec![project(&name, vec![("app", svc)])]);
    let allow = Allow::default();
    let masker = Masker::default();

    // No credentials (an empty client config): the registry says no.
    let empty = registry.dir.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let anonymous = b.clone().with_docker_config(&empty);
    let changes = dry_run(&anonymous, &name, &d, &allow).await.unwrap();
    let c = &changes
        .iter()
        .find(|c| c.resource.kind == "service")
        .unwrap();
    assert!(
        c.detail
            .as_deref()
            .unwrap()
            .contains(&format!("pull {reference}")),
        "{c:?}"
    );
    let err = anonymous
        .apply(&d, &changes, ctx(&name, &masker, &allow))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&reference) && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(container_ids(&b, &name).await.is_empty());

    // With the registry's entry in the client config: pulled and running.
    let authed = b.clone().with_docker_config(registry.docker_config());
    let (_, report) = reconcile(&authed, &name, &d).await;
    let id = b.docker().inspect_image(BUSYBOX).await.unwrap().id.unwrap();
    assert_eq!(report.image_ids[&format!("{name}/app")], id);
    assert!(!err.contains(&registry.password));
    wait_healthy(&authed, &name, &d).await;
}

/// A `service_completed_successfully` dependency that fails stops the
/// apply with an error naming it; its dependents are not created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dependency_stops_the_apply() {
    let Some(b) = engine().await else { return };
    let name = project_name("depfail");
    let _cleanup = Cleanup::new(&[&name]);
    let migrate = Service {
        command: Some(vec!["sh".into(), "-c".into(), "exit 3".into()]),
        ..sleeper()
    };
    let mut app = sleeper();
    app.depends_on = depends(&[("migrate", DependencyCondition::ServiceCompletedSuccessfully)]);
    let d = desired(vec![project(
        &name,
        vec![("migrate", migrate), ("app", app)],
    )]);
    let allow = Allow::default();
    let changes = dry_run(&b, &name, &d, &allow).await.unwrap();
    let masker = Masker::default();
    let err = b
        .apply(&d, &changes, ctx(&name, &masker, &allow))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dependency `migrate` of `app` failed") && err.contains("exited with code 3"),
        "{err}"
    );
    let ids = container_ids(&b, &name).await;
    assert!(!ids.contains_key(&format!("{name}-app-1")), "{ids:?}");
}
