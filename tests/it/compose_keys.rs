//! The engine keys of a Compose file against the real Docker engine: a
//! stack with tmpfs, sysctls, resource keys, a shared IPC namespace,
//! lifecycle hooks and static addresses on an ipam network, loaded from
//! YAML as a user writes it — applied, inspected field by field, re-planned
//! as a no-op in four list calls, then changed one key at a time (each
//! change recreates only what it must, and names the key).

use std::collections::BTreeMap;

use bollard::query_parameters::InspectContainerOptions;
use driftless::backend::Backend;
use driftless::backend::compose::ComposeBackend;
use driftless::manifest::Allow;
use driftless::model::compose::Project;
use driftless::plan::Action;

use crate::compose_backend::{changed, container_ids, desired, dry_run, read_file, reconcile};
use crate::docker_support::{
    BUSYBOX, BUSYBOX_2, Cleanup, CountingProxy, Registry, engine, local_target, project_name,
};

/// Loads a Compose file from text, as `validate` would (no repo files).
fn load(text: &str) -> Project {
    crate::compose_reference::load(text, &[])
}

/// The stack; `{..}` fields vary per step. A /24 per process keeps parallel
/// runs on one engine from overlapping.
struct Stack {
    name: String,
    net: u32,
    somaxconn: u32,
    mem: &'static str,
    tmpfs: &'static str,
    ip: u32,
}

impl Stack {
    fn yaml(&self) -> String {
        let Stack {
            name,
            net,
            somaxconn,
            mem,
            tmpfs,
            ip,
        } = self;
        format!(
            r#"
name: {name}
services:
  web:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    tmpfs: ["{tmpfs}"]
    sysctls: {{net.core.somaxconn: {somaxconn}}}
    mem_limit: {mem}
    cpus: 0.5
    cpu_shares: 256
    pids_limit: 64
    shm_size: 16m
    oom_score_adj: 100
    ipc: shareable
    dns: [10.9.9.9]
    domainname: example.test
    volumes: [data:/data]
    post_start:
      - command: ["sh", "-c", "echo started > /data/started"]
    pre_stop:
      - command: ["sh", "-c", "echo stopped-by-pre-stop > /data/stopped"]
    networks:
      back:
        ipv4_address: 10.231.{net}.{ip}
        aliases: [www]
  side:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    ipc: service:web
    networks: [back]
  other:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    networks: [back]
networks:
  back:
    ipam:
      config:
        - subnet: 10.231.{net}.0/24
          gateway: 10.231.{net}.1
volumes:
  data: {{}}
"#
        )
    }
}

/// One change to the stack, named by the key it changes.
type Step = fn(&mut Stack);

async fn inspect(b: &ComposeBackend, name: &str) -> bollard::models::ContainerInspectResponse {
    b.docker()
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .unwrap_or_else(|e| panic!("inspect {name}: {e}"))
}

/// Asserts that exactly `services` were recreated between two id maps.
fn recreated(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    services: &[&str],
) {
    for (container, id) in before {
        let service = container.rsplit('-').nth(1).unwrap_or_default();
        if services.contains(&service) {
            assert_ne!(
                after.get(container),
                Some(id),
                "{container} was not recreated"
            );
        } else {
            assert_eq!(after.get(container), Some(id), "{container} was recreated");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_keys_apply_noop_and_change_one_at_a_time() {
    let Some(b) = engine().await else { return };
    let name = project_name("keys");
    let _cleanup = Cleanup::new(&[&name]);
    let mut stack = Stack {
        name: name.clone(),
        net: std::process::id() % 250,
        somaxconn: 1024,
        mem: "64m",
        tmpfs: "/run:size=8m",
        ip: 10,
    };
    let (changes, _) = reconcile(&b, &name, &desired(vec![load(&stack.yaml())])).await;
    assert!(
        changes
            .iter()
            .filter(|c| c.resource.kind == "service")
            .all(|c| c.action == Action::Create),
        "{changes:#?}"
    );

    // Every key where docker compose puts it.
    let web = inspect(&b, &format!("{name}-web-1")).await;
    let hc = web.host_config.clone().unwrap();
    assert_eq!(hc.tmpfs.as_ref().unwrap()["/run"], "size=8m");
    assert_eq!(hc.sysctls.as_ref().unwrap()["net.core.somaxconn"], "1024");
    assert_eq!(hc.memory, Some(64 << 20));
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.cpu_shares, Some(256));
    assert_eq!(hc.pids_limit, Some(64));
    assert_eq!(hc.shm_size, Some(16 << 20));
    assert_eq!(hc.oom_score_adj, Some(100));
    assert_eq!(hc.ipc_mode.as_deref(), Some("shareable"));
    assert_eq!(hc.dns.as_deref(), Some(&["10.9.9.9".to_owned()][..]));
    assert_eq!(
        web.config.as_ref().unwrap().domainname.as_deref(),
        Some("example.test")
    );
    let endpoint = &web
        .network_settings
        .as_ref()
        .unwrap()
        .networks
        .as_ref()
        .unwrap()[&format!("{name}_back")];
    assert_eq!(
        endpoint.ip_address.as_deref(),
        Some(format!("10.231.{}.10", stack.net).as_str())
    );
    let aliases = endpoint.aliases.clone().unwrap_or_default();
    assert!(
        aliases.contains(&"web".to_owned()) && aliases.contains(&"www".to_owned()),
        "{aliases:?}"
    );
    let side = inspect(&b, &format!("{name}-side-1")).await;
    // The engine resolves the container name to its id when it creates
    // `side`: why a recreated `web` must take `side` with it.
    assert_eq!(
        side.host_config.unwrap().ipc_mode,
        Some(format!("container:{}", web.id.clone().unwrap()))
    );
    // The sysctl reached the container's kernel namespace.
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            &format!("{name}-web-1"),
            "cat",
            "/proc/sys/net/core/somaxconn",
        ])
        .output()
        .expect("docker CLI");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1024",
        "{out:?}"
    );
    // post_start ran in the new container.
    assert_eq!(
        read_file(&b, &format!("{name}-web-1"), "/data/started").await,
        "started\n"
    );
    let network = b
        .docker()
        .inspect_network(&format!("{name}_back"), None)
        .await
        .unwrap();
    let pool = &network.ipam.unwrap().config.unwrap()[0];
    assert_eq!(
        pool.subnet.as_deref(),
        Some(format!("10.231.{}.0/24", stack.net).as_str())
    );

    // No-op: nothing to do, in the four list calls of any no-op plan.
    let proxy = CountingProxy::start();
    let counted = proxy.backend().await;
    let allow = Allow::default();
    let d = desired(vec![load(&stack.yaml())]);
    let plan = dry_run(&counted, &name, &d, &allow).await.unwrap();
    assert!(changed(&plan).is_empty(), "{plan:#?}");
    assert_eq!(proxy.take(), 4, "a no-op plan is one list call per kind");

    // One key at a time: each recreates `web` naming the key, and `side`,
    // which shares its IPC namespace; `other` stays.
    let steps: [(&str, Step); 4] = [
        ("sysctls", |s| s.somaxconn = 2048),
        ("limits.memory", |s| s.mem = "96m"),
        ("tmpfs", |s| s.tmpfs = "/run:size=16m"),
        ("networks", |s| s.ip = 20),
    ];
    for (key, change) in steps {
        let before = container_ids(&b, &name).await;
        change(&mut stack);
        let d = desired(vec![load(&stack.yaml())]);
        let (changes, _) = reconcile(&b, &name, &d).await;
        assert_eq!(
            changed(&changes),
            [
                (
                    format!("{name}/web"),
                    Action::Recreate {
                        reason: format!("config changed: {key}")
                    }
                ),
                (
                    format!("{name}/side"),
                    Action::Recreate {
                        reason: "dependency recreated".into()
                    }
                ),
            ],
            "{key}"
        );
        let diff = changes
            .iter()
            .find(|c| c.resource.name.ends_with("/web"))
            .and_then(|c| c.diff.clone())
            .unwrap();
        assert!(diff.contains("\n+"), "{key}: {diff}");
        recreated(&before, &container_ids(&b, &name).await, &["web", "side"]);
        assert!(
            changed(&dry_run(&b, &name, &d, &allow).await.unwrap()).is_empty(),
            "{key}: not a no-op after the change"
        );
    }
    let web = inspect(&b, &format!("{name}-web-1")).await;
    let hc = web.host_config.clone().unwrap();
    assert_eq!(hc.memory, Some(96 << 20));
    assert_eq!(hc.tmpfs.unwrap()["/run"], "size=16m");
    assert_eq!(
        web.network_settings.unwrap().networks.unwrap()[&format!("{name}_back")]
            .ip_address
            .as_deref(),
        Some(format!("10.231.{}.20", stack.net).as_str())
    );
    // pre_stop ran in each replaced container before it was stopped: the
    // file it wrote in the volume is there for its successor.
    assert_eq!(
        read_file(&b, &format!("{name}-web-1"), "/data/stopped").await,
        "stopped-by-pre-stop\n"
    );
}

/// `pull_policy: always` against a registry: a no-op plan asks the registry
/// once (one call more than the four lists) and changes nothing while it
/// holds the image running; once the tag there names another image, the
/// plan recreates the service saying why, and apply pulls it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policy_always_follows_the_registry() {
    let Some(b) = engine().await else { return };
    let registry = Registry::start().await;
    let name = project_name("always");
    let repo = format!("driftless/{name}");
    let reference = registry.push(b.docker(), BUSYBOX, &repo, "v1").await;
    let _cleanup = Cleanup::new(&[&name]).image(&reference);
    let b = b.with_docker_config(registry.docker_config());
    let yaml = format!(
        "name: {name}\nservices:\n  app:\n    image: {reference}\n    pull_policy: always\n    command: [sleep, '3600']\n    stop_grace_period: 1s\n"
    );
    let d = desired(vec![load(&yaml)]);
    reconcile(&b, &name, &d).await;
    let v1 = b.docker().inspect_image(BUSYBOX).await.unwrap().id.unwrap();
    assert_eq!(
        inspect(&b, &format!("{name}-app-1")).await.image.as_deref(),
        Some(v1.as_str())
    );

    let proxy = CountingProxy::start();
    let counted = ComposeBackend::connect(&driftless::manifest::DockerTarget {
        host: Some(proxy.host.clone()),
        ..local_target()
    })
    .await
    .unwrap()
    .with_docker_config(registry.docker_config());
    proxy.take();
    let allow = Allow::default();
    let plan = dry_run(&counted, &name, &d, &allow).await.unwrap();
    assert!(changed(&plan).is_empty(), "{plan:#?}");
    assert_eq!(proxy.take(), 5, "four lists and one registry question");

    // Another image under the same tag in the registry; the local tag still
    // names the one running.
    registry.push(b.docker(), BUSYBOX_2, &repo, "v1").await;
    b.docker()
        .tag_image(
            &v1,
            Some(
                bollard::query_parameters::TagImageOptionsBuilder::default()
                    .repo(&format!("{}/{repo}", registry.address))
                    .tag("v1")
                    .build(),
            ),
        )
        .await
        .unwrap();
    let plan = dry_run(&b, &name, &d, &allow).await.unwrap();
    let app = plan
        .iter()
        .find(|c| c.resource.name.ends_with("/app"))
        .unwrap();
    assert_eq!(
        app.action,
        Action::Recreate {
            reason: "image changed".into()
        }
    );
    assert!(
        app.detail
            .as_deref()
            .unwrap()
            .contains("(pull_policy always: the registry holds sha256:"),
        "{app:?}"
    );
    let (_, report) = reconcile(&b, &name, &d).await;
    let v2 = b
        .docker()
        .inspect_image(BUSYBOX_2)
        .await
        .unwrap()
        .id
        .unwrap();
    assert_eq!(report.image_ids[&format!("{name}/app")], v2);
    assert_eq!(
        inspect(&b, &format!("{name}-app-1")).await.image.as_deref(),
        Some(v2.as_str())
    );
    assert!(changed(&dry_run(&b, &name, &d, &allow).await.unwrap()).is_empty());
}

/// A failing `post_start` hook fails the apply, naming the hook, its exit
/// status and what it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_post_start_hook_fails_the_apply() {
    let Some(b) = engine().await else { return };
    let name = project_name("hookfail");
    let _cleanup = Cleanup::new(&[&name]);
    let yaml = format!(
        "name: {name}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n    stop_grace_period: 1s\n    post_start:\n      - command: [sh, -c, 'echo no database >&2; exit 3']\n"
    );
    let d = desired(vec![load(&yaml)]);
    let allow = Allow::default();
    let masker = driftless::secrets::Masker::default();
    let changes = dry_run(&b, &name, &d, &allow).await.unwrap();
    let err = b
        .apply(
            &d,
            &changes,
            crate::compose_backend::ctx(&name, &masker, &allow),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("post_start hook of")
            && err.contains("exited with status 3")
            && err.contains("no database"),
        "{err}"
    );
}

/// The mount options the container's kernel shows for `target`
/// (`/proc/mounts`), e.g. `rw,nosuid,nodev,noexec,relatime,size=4096k,mode=1770`.
fn mount_options(container: &str, target: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", container, "cat", "/proc/mounts"])
        .output()
        .expect("docker CLI");
    let mounts = String::from_utf8_lossy(&out.stdout);
    mounts
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            (fields.get(1) == Some(&target)).then(|| fields[3].to_owned())
        })
        .unwrap_or_else(|| panic!("no mount at {target} in {container}: {mounts}"))
}

/// `tmpfs` in the long volume syntax: `size` and `mode` reach the engine's
/// mount (`TmpfsOptions`, as docker compose sets them) and the kernel's
/// mount options; a changed mode recreates the service naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_long_syntax_applies_size_and_mode() {
    let Some(b) = engine().await else { return };
    let name = project_name("tmpfsmode");
    let _cleanup = Cleanup::new(&[&name]);
    let yaml = |mode: &str| {
        format!(
            "name: {name}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n    stop_grace_period: 1s\n    volumes:\n      - type: tmpfs\n        target: /scratch\n        tmpfs: {{size: 4m, mode: {mode}}}\n"
        )
    };
    let container = format!("{name}-app-1");
    // 1777 is tmpfs's default, which the kernel does not list.
    reconcile(&b, &name, &desired(vec![load(&yaml("01770"))])).await;
    let mounts = inspect(&b, &container)
        .await
        .host_config
        .unwrap()
        .mounts
        .unwrap();
    let options = mounts[0].tmpfs_options.as_ref().unwrap();
    assert_eq!(
        (options.size_bytes, options.mode),
        (Some(4 << 20), Some(0o1770))
    );
    let kernel = mount_options(&container, "/scratch");
    assert!(
        kernel.contains("size=4096k") && kernel.contains("mode=1770"),
        "{kernel}"
    );

    // The mode as an octal string, as the specification also allows.
    let d = desired(vec![load(&yaml("'700'"))]);
    let (changes, _) = reconcile(&b, &name, &d).await;
    assert_eq!(
        changed(&changes),
        [(
            format!("{name}/app"),
            Action::Recreate {
                reason: "config changed: volumes".into()
            }
        )]
    );
    let kernel = mount_options(&container, "/scratch");
    assert!(kernel.contains("mode=700"), "{kernel}");
    let allow = Allow::default();
    assert!(changed(&dry_run(&b, &name, &d, &allow).await.unwrap()).is_empty());
}

/// `bind.recursive: disabled` reaches the engine as `NonRecursive` (known
/// to a 1.41 engine); `volume.labels` on a mount does not, as docker
/// compose drops it (its mount model has no labels): the anonymous volume
/// the engine creates carries none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_recursive_disabled_reaches_the_engine_and_volume_labels_do_not() {
    let Some(b) = engine().await else { return };
    let name = project_name("mountopts");
    let _cleanup = Cleanup::new(&[&name]);
    let yaml = format!(
        "name: {name}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n    stop_grace_period: 1s\n    volumes:\n      - type: bind\n        source: /tmp\n        target: /host-tmp\n        read_only: true\n        bind: {{recursive: disabled}}\n      - type: volume\n        target: /cache\n        volume: {{labels: {{com.example.team: web}}}}\n"
    );
    let d = desired(vec![load(&yaml)]);
    reconcile(&b, &name, &d).await;
    let c = inspect(&b, &format!("{name}-app-1")).await;
    let mounts = c.host_config.unwrap().mounts.unwrap();
    let bind = mounts
        .iter()
        .find(|m| m.target.as_deref() == Some("/host-tmp"))
        .unwrap();
    assert_eq!(
        bind.bind_options.as_ref().unwrap().non_recursive,
        Some(true)
    );
    let volume = c
        .mounts
        .unwrap()
        .into_iter()
        .find(|m| m.destination.as_deref() == Some("/cache"))
        .unwrap()
        .name
        .unwrap();
    let labels = b.docker().inspect_volume(&volume).await.unwrap().labels;
    assert!(!labels.contains_key("com.example.team"), "{labels:?}");
    let allow = Allow::default();
    assert!(changed(&dry_run(&b, &name, &d, &allow).await.unwrap()).is_empty());
}
