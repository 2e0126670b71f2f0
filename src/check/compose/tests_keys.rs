//! Loader tests for the service keys that map onto the engine's container
//! options (resources, devices, namespaces, DNS, hooks, pull policy), the
//! network keys (`ipam`, static addresses) and the refusals, each with the
//! line and object path of its error.

use std::time::Duration;

use super::tests::{Repo, one, single_error};
use crate::model::compose::*;

#[test]
fn engine_keys_resolve_as_compose_reads_them() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            r#"
services:
  app:
    image: app:1
    mem_limit: 256m
    memswap_limit: 512m
    mem_swappiness: 10
    cpus: 1.5
    cpu_shares: 512
    cpu_rt_runtime: 400ms
    cpu_rt_period: 1000000
    cpuset: "0-1"
    cpu_count: 2
    cpu_percent: 50
    pids_limit: 200
    shm_size: 128m
    oom_kill_disable: true
    oom_score_adj: -500
    blkio_config:
      weight: 300
      weight_device: [{path: /dev/loop0, weight: 400}]
      device_read_bps: [{path: /dev/loop0, rate: 12mb}]
      device_write_iops: [{path: /dev/loop0, rate: 30}]
    devices:
      - /dev/fuse
      - /dev/loop1:/dev/xloop:r
      - source: /dev/loop2
        permissions: rw
      - nvidia.com/gpu=all
    device_cgroup_rules: ["c 1:3 mr", "b 7:* rw"]
    gpus: all
    deploy:
      resources:
        reservations:
          devices:
            - capabilities: [gpu, compute]
              driver: nvidia
              device_ids: ["0", "1"]
          memory: 64m
    tmpfs: ["/run", "/cache:size=64m,mode=1777"]
    sysctls: {net.core.somaxconn: 1024, net.ipv4.tcp_syncookies: 0}
    dns: 8.8.8.8
    dns_search: [example.com]
    dns_opt: [use-vc]
    domainname: example.com
    ipc: shareable
    uts: host
    cgroup: private
    cgroup_parent: m-executor
    group_add: [mail, 1001]
    runtime: runc
    storage_opt: {size: 1G}
    tty: true
    stdin_open: true
    links: [db, "db:database"]
    external_links: ["legacy-redis:redis"]
    volumes_from: ["db:ro", "container:shared-data"]
    annotations: {com.example.note: hello}
    label_file: ./app.labels
    labels: {tier: back}
    platform: linux/AMD64
    pull_policy: every_12h
    post_start:
      - command: ["sh", "-c", "echo started > /tmp/started"]
        user: root
        environment: {PHASE: start}
    pre_stop:
      - command: echo bye
        working_dir: /
        privileged: true
    attach: false
    develop:
      watch: [{path: ., action: sync, target: /app}]
  side:
    image: side:1
    pid: "service:app"
  db:
    image: db:1
    restart: always
    deploy:
      restart_policy: {condition: on-failure, max_attempts: 3, delay: 5s}
      placement: {constraints: [node.role == manager]}
      update_config: {parallelism: 2}
"#,
        ),
        ("compose/app.labels", "tier=front\nteam=core\n"),
    ]);
    let (p, warnings) = repo.ok("compose/stack.yaml");
    let notes: Vec<&str> = warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert!(
        notes[0].starts_with("swarm-only keys are ignored")
            && notes[0].contains("services.db.deploy.restart_policy.delay")
            && notes[0].contains("services.db.deploy.placement"),
        "{notes:#?}"
    );
    assert!(notes[1].starts_with("`develop`"), "{notes:#?}");

    let app = &p.services["app"];
    let r = &app.resources;
    assert_eq!(r.limits.memory, Some(256 << 20));
    assert_eq!(r.reservations.memory, Some(64 << 20));
    assert_eq!(r.limits.cpus, Some(1.5));
    assert_eq!(r.limits.pids, Some(200));
    assert_eq!(r.memswap_limit, Some(512 << 20));
    assert_eq!(r.mem_swappiness, Some(10));
    assert_eq!(r.cpu_shares, Some(512));
    assert_eq!(r.cpu_rt_runtime, Some(400_000));
    assert_eq!(r.cpu_rt_period, Some(1_000_000));
    assert_eq!(r.cpuset.as_deref(), Some("0-1"));
    assert_eq!((r.cpu_count, r.cpu_percent), (Some(2), Some(50.0)));
    assert!(r.oom_kill_disable);
    assert_eq!(app.shm_size, Some(128 << 20));
    assert_eq!(app.oom_score_adj, Some(-500));
    assert_eq!(r.blkio.weight, Some(300));
    assert_eq!(r.blkio.weight_device, [("/dev/loop0".to_owned(), 400)]);
    assert_eq!(
        r.blkio.device_read_bps,
        [("/dev/loop0".to_owned(), 12 << 20)]
    );
    assert_eq!(r.blkio.device_write_iops, [("/dev/loop0".to_owned(), 30)]);
    let dev = |s: &str, t: &str, p: &str| Device {
        source: s.into(),
        target: t.into(),
        permissions: p.into(),
    };
    assert_eq!(
        r.devices,
        [
            dev("/dev/fuse", "/dev/fuse", "rwm"),
            dev("/dev/loop1", "/dev/xloop", "r"),
            dev("/dev/loop2", "/dev/loop2", "rw"),
            dev("nvidia.com/gpu=all", "nvidia.com/gpu=all", "rwm"),
        ]
    );
    assert_eq!(r.device_cgroup_rules, ["c 1:3 mr", "b 7:* rw"]);
    // `gpus: all` first, then the reservation; each as the engine takes it.
    assert_eq!(r.device_requests.len(), 2);
    assert_eq!(r.device_requests[0].count, -1);
    assert_eq!(r.device_requests[0].capabilities, [vec!["gpu".to_owned()]]);
    assert_eq!(r.device_requests[1].driver.as_deref(), Some("nvidia"));
    assert_eq!(r.device_requests[1].device_ids, ["0", "1"]);
    assert_eq!(r.device_requests[1].count, 0);
    assert_eq!(
        r.device_requests[1].capabilities,
        [vec!["gpu".to_owned(), "compute".to_owned()]]
    );

    assert_eq!(app.tmpfs["/run"], "");
    assert_eq!(app.tmpfs["/cache"], "size=64m,mode=1777");
    assert_eq!(app.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(app.sysctls["net.ipv4.tcp_syncookies"], "0");
    assert_eq!(app.dns, ["8.8.8.8"]);
    assert_eq!(app.dns_search, ["example.com"]);
    assert_eq!(app.dns_opt, ["use-vc"]);
    assert_eq!(app.domainname.as_deref(), Some("example.com"));
    assert_eq!(app.namespaces.ipc.as_deref(), Some("shareable"));
    assert_eq!(app.namespaces.uts.as_deref(), Some("host"));
    assert_eq!(app.namespaces.cgroup.as_deref(), Some("private"));
    assert_eq!(app.cgroup_parent.as_deref(), Some("m-executor"));
    assert_eq!(app.group_add, ["mail", "1001"]);
    assert_eq!(app.runtime.as_deref(), Some("runc"));
    assert_eq!(app.storage_opt["size"], "1G");
    assert!(app.tty && app.stdin_open);
    assert_eq!(
        app.links,
        [
            ("db".to_owned(), "db".to_owned()),
            ("db".to_owned(), "database".to_owned())
        ]
    );
    assert_eq!(
        app.external_links,
        [("legacy-redis".to_owned(), "redis".to_owned())]
    );
    assert_eq!(
        app.volumes_from,
        [
            VolumesFrom {
                source: "db".into(),
                container: false,
                read_only: true
            },
            VolumesFrom {
                source: "shared-data".into(),
                container: true,
                read_only: false
            },
        ]
    );
    assert_eq!(app.annotations["com.example.note"], "hello");
    // `labels` win over the label file.
    assert_eq!(app.labels["tier"], "back");
    assert_eq!(app.labels["team"], "core");
    assert_eq!(app.platform.as_deref(), Some("linux/amd64"));
    assert_eq!(
        app.pull_policy,
        PullPolicy::Refresh(Duration::from_secs(12 * 3600))
    );
    assert_eq!(
        app.post_start[0].command,
        ["sh", "-c", "echo started > /tmp/started"]
    );
    assert_eq!(app.post_start[0].user.as_deref(), Some("root"));
    assert_eq!(app.post_start[0].environment["PHASE"], "start");
    assert_eq!(app.pre_stop[0].command, ["echo", "bye"]);
    assert!(app.pre_stop[0].privileged);
    // Links and `volumes_from` make `db` a dependency, as compose-go does.
    assert_eq!(
        app.depends_on["db"].condition,
        DependencyCondition::ServiceStarted
    );

    let side = &p.services["side"];
    assert_eq!(side.namespaces.pid.as_deref(), Some("service:app"));
    assert!(side.depends_on["app"].restart);
    let db = &p.services["db"];
    // `deploy.restart_policy` wins over `restart`, as in docker compose.
    assert_eq!(db.restart.as_deref(), Some("on-failure:3"));
}

#[test]
fn resource_keys_and_deploy_resources_must_agree() {
    // Equal values are fine, and both spellings give the same service.
    let (p, _) = one(
        "services:\n  a:\n    image: x\n    mem_limit: 1g\n    deploy:\n      resources:\n        limits: {memory: 1024m}\n",
    )
    .ok("compose/stack.yaml");
    let (q, _) = one("services:\n  a:\n    image: x\n    mem_limit: 1g\n").ok("compose/stack.yaml");
    assert_eq!(p.services["a"].resources, q.services["a"].resources);

    let e = single_error(
        &one(
            "services:\n  a:\n    image: x\n    cpus: 0.5\n    deploy:\n      resources:\n        limits: {cpus: '1'}\n",
        ),
        4,
        "services.a.cpus",
    );
    assert_eq!(
        e.message,
        "can't set distinct values on `cpus` and `deploy.resources.limits.cpus`"
    );
    // An unset twin in a written block counts as distinct (compose-go).
    single_error(
        &one(
            "services:\n  a:\n    image: x\n    mem_limit: 1g\n    deploy:\n      resources:\n        limits: {cpus: '1'}\n",
        ),
        4,
        "services.a.mem_limit",
    );
    single_error(
        &one(
            "services:\n  a:\n    image: x\n    mem_reservation: 1g\n    deploy:\n      resources:\n        reservations: {memory: 2g}\n",
        ),
        4,
        "services.a.mem_reservation",
    );
    single_error(
        &one(
            "services:\n  a:\n    image: x\n    pids_limit: 10\n    deploy:\n      resources:\n        limits: {pids: 20}\n",
        ),
        4,
        "services.a.pids_limit",
    );
    // What the engine would refuse at create time is refused here.
    let e = single_error(
        &one("services:\n  a:\n    image: x\n    cpus: 1\n    cpu_quota: 50000\n"),
        2,
        "services.a.cpu_quota",
    );
    assert!(e.message.contains("cannot both be set"), "{e}");
    single_error(
        &one("services:\n  a:\n    image: x\n    mem_limit: 1g\n    memswap_limit: 512m\n"),
        2,
        "services.a.memswap_limit",
    );
    single_error(
        &one("services:\n  a:\n    image: x\n    memswap_limit: 1g\n"),
        2,
        "services.a.memswap_limit",
    );
    let (p, _) =
        one("services:\n  a:\n    image: x\n    memswap_limit: -1\n").ok("compose/stack.yaml");
    assert_eq!(p.services["a"].resources.memswap_limit, Some(-1));
}

#[test]
fn bad_engine_values_are_errors_with_their_line() {
    for (key, value, line) in [
        ("mem_swappiness", "101", 4),
        ("oom_score_adj", "-1001", 4),
        ("cpuset", "'3-1'", 4),
        ("cpu_percent", "150", 4),
        ("tmpfs", "relative/path", 4),
        ("dns", "not-an-ip", 4),
        ("mac_address", "02:42:zz:00:00:01", 4),
        ("ipc", "sideways", 4),
        ("cgroup", "shared", 4),
        ("platform", "amd64", 4),
        ("pull_policy", "sometimes", 4),
        ("pull_policy", "every_3y", 4),
        ("device_cgroup_rules", "['x 1:3 mr']", 4),
        ("devices", "['dev/sda']", 4),
        ("devices", "['/dev/sda:/dev/sda:rwx']", 4),
        ("gpus", "some", 4),
        ("links", "['a:b:c']", 4),
        ("post_start", "[{user: root}]", 4),
    ] {
        let text =
            format!("services:\n  a:\n    image: x\n    {key}: {value}\n  b:\n    image: y\n");
        let errors = one(&text).err("compose/stack.yaml");
        assert_eq!(errors.len(), 1, "{key}: {value}: {errors:#?}");
        assert_eq!(errors[0].line, Some(line), "{key}: {}", errors[0]);
        assert!(
            errors[0]
                .object
                .as_deref()
                .is_some_and(|o| o.starts_with(&format!("services.a.{key}"))),
            "{key}: {}",
            errors[0]
        );
    }
    let e = single_error(
        &one(
            "services:\n  a:\n    image: x\n    deploy:\n      resources:\n        reservations:\n          devices: [{capabilities: [gpu], count: 1, device_ids: ['0']}]\n",
        ),
        7,
        "services.a.deploy.resources.reservations.devices[0]",
    );
    assert!(e.message.contains("exclusive"), "{e}");
    single_error(
        &one(
            "services:\n  a:\n    image: x\n    deploy:\n      restart_policy: {condition: any, max_attempts: 3}\n",
        ),
        5,
        "services.a.deploy.restart_policy.max_attempts",
    );
    single_error(
        &one("services:\n  a:\n    image: x\n    deploy: {mode: replicated-job}\n"),
        4,
        "services.a.deploy.mode",
    );
}

#[test]
fn references_to_other_services_are_checked_and_imply_dependencies() {
    let e = single_error(
        &one("services:\n  a:\n    image: x\n    links: [nope]\n"),
        3,
        "services.a.links",
    );
    assert_eq!(
        e.message,
        "`links` names service `nope`, which is not defined"
    );
    single_error(
        &one("services:\n  a:\n    image: x\n    volumes_from: [nope]\n"),
        3,
        "services.a.volumes_from",
    );
    single_error(
        &one("services:\n  a:\n    image: x\n    ipc: service:nope\n"),
        3,
        "services.a.ipc",
    );
    single_error(
        &one("services:\n  a:\n    image: x\n    uts: service:b\n  b:\n    image: y\n"),
        3,
        "services.a.uts",
    );
    // Links in a loop are a dependency cycle, as in Compose.
    let errors =
        one("services:\n  a:\n    image: x\n    links: [b]\n  b:\n    image: y\n    links: [a]\n")
            .err("compose/stack.yaml");
    assert!(
        errors[0].message.starts_with("dependency cycle"),
        "{errors:#?}"
    );
}

#[test]
fn keys_one_engine_cannot_apply_are_refused_with_the_reason() {
    for (key, value, words) in [
        ("credential_spec", "{file: spec.json}", "Windows"),
        ("use_api_socket", "true", "credentials"),
        ("models", "[llm]", "Model Runner"),
        ("provider", "{type: model}", "plugin"),
        ("isolation", "hyperv", "Windows"),
    ] {
        let e = single_error(
            &one(&format!(
                "services:\n  a:\n    image: x\n    {key}: {value}\n"
            )),
            4,
            &format!("services.a.{key}"),
        );
        let what = if key == "isolation" {
            "isolation: hyperv".to_owned()
        } else {
            key.to_owned()
        };
        assert_eq!(
            e.message,
            format!("cannot apply `{what}` on a Docker engine")
        );
        assert!(e.hint.as_deref().unwrap().contains(words), "{key}: {e}");
    }
    // `isolation: default` is what a Linux engine takes: accepted.
    one("services:\n  a:\n    image: x\n    isolation: default\n").ok("compose/stack.yaml");
}

#[test]
fn networks_take_ipam_and_static_addresses_inside_their_subnet() {
    let (p, _) = one(r#"
services:
  a:
    image: x
    networks:
      front:
        ipv4_address: 172.28.5.10
        ipv6_address: fd00:28::10
        link_local_ips: [169.254.8.8]
        aliases: [web]
        priority: 10
        driver_opts: {com.example.opt: "1"}
      back:
networks:
  front:
    driver: bridge
    attachable: true
    enable_ipv6: true
    internal: true
    labels: {team: core}
    ipam:
      driver: default
      options: {foo: bar}
      config:
        - subnet: 172.28.0.0/16
          ip_range: 172.28.5.0/24
          gateway: 172.28.5.254
          aux_addresses: {host1: 172.28.1.5}
        - subnet: fd00:28::/64
  back:
    external: true
"#)
    .ok("compose/stack.yaml");
    let front = &p.networks["front"];
    assert!(front.attachable && front.internal);
    assert_eq!(front.enable_ipv6, Some(true));
    assert_eq!(front.ipam.driver.as_deref(), Some("default"));
    assert_eq!(front.ipam.options["foo"], "bar");
    assert_eq!(front.ipam.config.len(), 2);
    let pool = &front.ipam.config[0];
    assert_eq!(pool.subnet.as_deref(), Some("172.28.0.0/16"));
    assert_eq!(pool.ip_range.as_deref(), Some("172.28.5.0/24"));
    assert_eq!(pool.gateway.as_deref(), Some("172.28.5.254"));
    assert_eq!(pool.aux_addresses["host1"], "172.28.1.5");
    let attach = &p.services["a"].networks["front"];
    assert_eq!(attach.ipv4_address.as_deref(), Some("172.28.5.10"));
    assert_eq!(attach.ipv6_address.as_deref(), Some("fd00:28::10"));
    assert_eq!(attach.link_local_ips, ["169.254.8.8"]);
    assert_eq!(attach.priority, 10);
    assert_eq!(attach.driver_opts["com.example.opt"], "1");

    // Outside the subnet: refused at its line, with the subnet named.
    let e = single_error(
        &one(
            "services:\n  a:\n    image: x\n    networks:\n      n:\n        ipv4_address: 10.1.0.5\nnetworks:\n  n:\n    ipam:\n      config: [{subnet: 172.28.0.0/16}]\n",
        ),
        6,
        "services.a.networks.n.ipv4_address",
    );
    assert_eq!(
        e.message,
        "static address `10.1.0.5` is outside the subnet of network `n` (172.28.0.0/16)"
    );
    // No subnet at all: the engine would refuse it when the container starts.
    single_error(
        &one(
            "services:\n  a:\n    image: x\n    networks:\n      n:\n        ipv4_address: 10.1.0.5\nnetworks:\n  n: {}\n",
        ),
        6,
        "services.a.networks.n.ipv4_address",
    );
    // An IPv6 address where IPv4 is expected.
    single_error(
        &one(
            "services:\n  a:\n    image: x\n    networks:\n      n:\n        ipv4_address: fd00::1\nnetworks:\n  n: {}\n",
        ),
        6,
        "services.a.networks.n.ipv4_address",
    );
    // A gateway outside its subnet, and a malformed subnet.
    single_error(
        &one(
            "services: {a: {image: x}}\nnetworks:\n  n:\n    ipam:\n      config:\n        - subnet: 172.28.0.0/16\n          gateway: 172.29.0.1\n",
        ),
        7,
        "networks.n.ipam.config[0].gateway",
    );
    single_error(
        &one(
            "services: {a: {image: x}}\nnetworks:\n  n:\n    ipam:\n      config: [{subnet: 172.28.0.0}]\n",
        ),
        5,
        "networks.n.ipam.config[0].subnet",
    );
    // An external network takes no settings.
    single_error(
        &one(
            "services: {a: {image: x}}\nnetworks:\n  n:\n    external: true\n    attachable: true\n",
        ),
        4,
        "networks.n",
    );
}

#[test]
fn refresh_after_sets_the_refresh_period() {
    let (p, _) = one(
        "services:\n  a:\n    image: x\n    pull_policy: refresh\n    pull_refresh_after: 3d\n",
    )
    .ok("compose/stack.yaml");
    assert_eq!(
        p.services["a"].pull_policy,
        PullPolicy::Refresh(Duration::from_secs(3 * 24 * 3600))
    );
    let (p, _) = one("services:\n  a:\n    image: x\n    pull_policy: if_not_present\n")
        .ok("compose/stack.yaml");
    assert_eq!(p.services["a"].pull_policy, PullPolicy::Missing);
}

#[test]
fn update_and_rollback_configs_keep_swarms_meaning() {
    let (p, warnings) = one(r#"
services:
  web:
    image: web:1
    deploy:
      replicas: 4
      update_config:
        order: start-first
        parallelism: 2
        delay: 10s
        failure_action: rollback
        monitor: 30s
        max_failure_ratio: 0.25
      rollback_config: {order: stop-first, parallelism: 0, failure_action: continue}
  db:
    image: db:1
"#)
    .ok("compose/stack.yaml");
    assert!(warnings.is_empty(), "{warnings:#?}");
    let u = &p.services["web"].update_config;
    assert_eq!(u.order, Some(UpdateOrder::StartFirst));
    assert_eq!(u.parallelism, 2);
    assert_eq!(u.delay, Duration::from_secs(10));
    assert_eq!(u.failure_action, FailureAction::Rollback);
    assert_eq!(u.monitor, Duration::from_secs(30));
    assert_eq!(u.max_failure_ratio, 0.25);
    let r = &p.services["web"].rollback_config;
    assert_eq!(r.order, Some(UpdateOrder::StopFirst));
    assert_eq!(r.parallelism, 0);
    assert_eq!(r.failure_action, FailureAction::Continue);
    // Unset: Swarm's defaults, and the order left to the plan.
    let d = &p.services["db"].update_config;
    assert_eq!(*d, UpdateConfig::default());
    assert_eq!((d.order, d.parallelism), (None, 1));
    assert_eq!(d.monitor, Duration::from_secs(5));
}

#[test]
fn start_first_with_a_fixed_host_port_is_refused_at_its_line() {
    let e = single_error(
        &one(
            "services:\n  a:\n    image: x\n    ports: [\"8080:80\"]\n    deploy:\n      update_config:\n        order: start-first\n",
        ),
        7,
        "services.a.deploy.update_config.order",
    );
    assert!(e.message.contains("fixed host port 8080"), "{e}");
    // An ephemeral host port is no conflict.
    one("services:\n  a:\n    image: x\n    ports: [\"80\"]\n    deploy:\n      update_config: {order: start-first}\n")
        .ok("compose/stack.yaml");
    let e = single_error(
        &one(
            "services:\n  a:\n    image: x\n    deploy:\n      rollback_config:\n        order: blue-green\n",
        ),
        6,
        "services.a.deploy.rollback_config.order",
    );
    assert!(e.message.contains("not an update order"), "{e}");
    single_error(
        &one(
            "services:\n  a:\n    image: x\n    deploy:\n      update_config:\n        max_failure_ratio: 2\n",
        ),
        6,
        "services.a.deploy.update_config.max_failure_ratio",
    );
}
