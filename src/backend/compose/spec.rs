//! The resolved Compose service → the engine's container create body.
//!
//! Owns every field mapping, in one place, so a key the model carries is
//! either mapped here or visibly not. Pure: the caller supplies names, ids
//! and labels.

use std::collections::HashMap;
use std::str::FromStr;

use bollard::models::{
    ContainerCreateBody, DeviceMapping, DeviceRequest, EndpointIpamConfig, EndpointSettings,
    HealthConfig, HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, IpamConfig,
    Mount as EngineMount, MountBindOptions, MountBindOptionsPropagationEnum, MountImageOptions,
    MountTmpfsOptions, MountType, MountVolumeOptions, NetworkingConfig, PortBinding,
    ResourcesBlkioWeightDevice, ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
    ThrottleDevice,
};

use super::{binds, labels, project};
use crate::model::compose::{
    Ipam, Mount, Project, Resources, Service, ServiceNetwork, is_cdi_name,
};

/// What to create for one replica.
pub struct Replica<'a> {
    pub project: &'a Project,
    pub service_name: &'a str,
    pub service: &'a Service,
    pub number: u32,
    pub image_id: &'a str,
    pub config_hash: &'a str,
    /// Masked readable definition (see [`super::hash::definition_text`]).
    pub definition: &'a str,
    pub environment: &'a str,
    /// The ownership id ([`labels::INSTANCE`]).
    pub instance: &'a str,
}

/// A network to join after create (the engine takes one at create time on
/// older API versions): engine network name and endpoint settings.
pub type ExtraNetwork = (String, EndpointSettings);

/// The create body for `r`, and the further networks to connect before start.
pub fn container(r: &Replica<'_>) -> (ContainerCreateBody, Vec<ExtraNetwork>) {
    let s = r.service;
    let p = r.project;
    let name = project::container_name(&p.name, r.service_name, s, r.number);

    let mut label_map: HashMap<String, String> = s.labels.clone().into_iter().collect();
    let depends_on = s
        .depends_on
        .iter()
        .map(|(dep, d)| {
            let cond = serde_json::to_value(d.condition)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            format!("{dep}:{cond}:{}", d.restart)
        })
        .collect::<Vec<_>>()
        .join(",");
    // The project's directory, as Compose labels every container of it
    // (services of an included file too).
    let working_dir = std::path::Path::new(&p.origin.file)
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ".".to_owned());
    for (k, v) in [
        (labels::PROJECT, p.name.clone()),
        (labels::SERVICE, r.service_name.to_owned()),
        (labels::CONTAINER_NUMBER, r.number.to_string()),
        (labels::CONFIG_HASH, r.config_hash.to_owned()),
        (labels::ONEOFF, "False".to_owned()),
        (labels::WORKING_DIR, working_dir),
        (labels::CONFIG_FILES, p.origin.file.clone()),
        (labels::VERSION, labels::VERSION_VALUE.to_owned()),
        (labels::IMAGE, r.image_id.to_owned()),
        (labels::DEPENDS_ON, depends_on),
        (labels::ENVIRONMENT, r.environment.to_owned()),
        (labels::INSTANCE, r.instance.to_owned()),
        (labels::DEFINITION, r.definition.to_owned()),
    ] {
        label_map.insert(k.to_owned(), v);
    }

    let env = s
        .environment
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            // `KEY` alone: passed through from driftless's own environment,
            // as Compose passes it from the shell. Unset, it is sent alone,
            // as docker compose's `ToMobyEnv` sends it: the engine then
            // unsets a value the image gives the variable.
            None => match std::env::var(k) {
                Ok(v) => format!("{k}={v}"),
                Err(_) => k.clone(),
            },
        })
        .collect();

    let mut exposed = Vec::new();
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for port in &s.ports {
        let key = format!("{}/{}", port.target, port.protocol);
        exposed.push(key.clone());
        port_bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: port.host_ip.clone(),
                host_port: port.published.clone(),
            });
    }
    for e in &s.expose {
        exposed.push(if e.contains('/') {
            e.clone()
        } else {
            format!("{e}/tcp")
        });
    }
    exposed.sort();
    exposed.dedup();

    let (mounts, binds) = mounts(p, s, home().as_deref());

    let healthcheck = s.healthcheck.as_ref().map(|h| {
        let nanos = |d: Option<std::time::Duration>| d.map(|d| d.as_nanos() as i64);
        if h.disable {
            return HealthConfig {
                test: Some(vec!["NONE".to_owned()]),
                ..HealthConfig::default()
            };
        }
        HealthConfig {
            test: Some(h.test.clone()),
            interval: nanos(h.interval),
            timeout: nanos(h.timeout),
            retries: h.retries.map(i64::from),
            start_period: nanos(h.start_period),
            start_interval: nanos(h.start_interval),
        }
    });

    let restart_policy = s.restart.as_deref().map(|r| {
        let (name, count) = match r.split_once(':') {
            Some(("on-failure", n)) => ("on-failure", n.parse().ok()),
            _ => (r, None),
        };
        RestartPolicy {
            name: Some(match name {
                "always" => RestartPolicyNameEnum::ALWAYS,
                "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
                "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
                _ => RestartPolicyNameEnum::NO,
            }),
            maximum_retry_count: count,
        }
    });

    let networks = project::networks(p);
    let joined = project::service_networks(s);
    let links = links(p, r.number, s);
    let endpoint = |key: &str| {
        let mut attach = s.networks.get(key).cloned().unwrap_or_default();
        // The service-level MAC address belongs to the first network, as
        // docker compose moves it there (engine API 1.44 and later).
        if joined.first().is_some_and(|k| k == key) && attach.mac_address.is_none() {
            attach.mac_address = s.mac_address.clone();
        }
        endpoint_settings(r.service_name, &name, &attach, &links)
    };
    let engine_name = |key: &str| {
        networks
            .get(key)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| key.to_owned())
    };
    let network_mode = match &s.network_mode {
        Some(mode) => Some(shared_namespace(p, mode)),
        None => joined.first().map(|k| engine_name(k)),
    };
    let networking_config = joined.first().map(|k| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(engine_name(k), endpoint(k))])),
    });
    let extra: Vec<ExtraNetwork> = joined
        .iter()
        .skip(1)
        .map(|k| (engine_name(k), endpoint(k)))
        .collect();

    let limits = &s.resources.limits;
    let ns = &s.namespaces;
    let host_config = HostConfig {
        tmpfs: (!s.tmpfs.is_empty()).then(|| s.tmpfs.clone().into_iter().collect()),
        sysctls: (!s.sysctls.is_empty()).then(|| s.sysctls.clone().into_iter().collect()),
        dns: (!s.dns.is_empty()).then(|| s.dns.clone()),
        dns_search: (!s.dns_search.is_empty()).then(|| s.dns_search.clone()),
        dns_options: (!s.dns_opt.is_empty()).then(|| s.dns_opt.clone()),
        ipc_mode: ns.ipc.as_deref().map(|m| shared_namespace(p, m)),
        pid_mode: ns.pid.as_deref().map(|m| shared_namespace(p, m)),
        uts_mode: ns.uts.clone(),
        userns_mode: ns.userns_mode.clone(),
        cgroupns_mode: ns.cgroup.as_deref().map(|c| match c {
            "host" => HostConfigCgroupnsModeEnum::HOST,
            _ => HostConfigCgroupnsModeEnum::PRIVATE,
        }),
        cgroup_parent: s.cgroup_parent.clone(),
        group_add: (!s.group_add.is_empty()).then(|| s.group_add.clone()),
        runtime: s.runtime.clone(),
        storage_opt: (!s.storage_opt.is_empty())
            .then(|| s.storage_opt.clone().into_iter().collect()),
        annotations: (!s.annotations.is_empty())
            .then(|| s.annotations.clone().into_iter().collect()),
        links: (!links.is_empty()).then(|| links.clone()),
        volumes_from: (!s.volumes_from.is_empty()).then(|| volumes_from(p, s)),
        shm_size: s.shm_size.map(|b| b as i64),
        oom_score_adj: s.oom_score_adj,
        port_bindings: Some(port_bindings),
        mounts: Some(mounts),
        binds: (!binds.is_empty()).then_some(binds),
        restart_policy,
        network_mode,
        extra_hosts: Some(s.extra_hosts.clone()),
        readonly_rootfs: Some(s.read_only),
        cap_add: Some(s.cap_add.clone()),
        cap_drop: Some(s.cap_drop.clone()),
        security_opt: Some(s.security_opt.clone()),
        privileged: Some(s.privileged),
        init: s.init,
        ulimits: Some(
            s.ulimits
                .iter()
                .map(|(name, u)| ResourcesUlimits {
                    name: Some(name.clone()),
                    soft: Some(u.soft),
                    hard: Some(u.hard),
                })
                .collect(),
        ),
        log_config: s.logging.as_ref().map(|l| HostConfigLogConfig {
            typ: l.driver.clone(),
            config: Some(l.options.clone().into_iter().collect()),
        }),
        nano_cpus: limits.cpus.map(|c| (c * 1e9).round() as i64),
        memory: limits.memory.map(|m| m as i64),
        pids_limit: limits.pids,
        memory_reservation: s.resources.reservations.memory.map(|m| m as i64),
        ..resources(&s.resources)
    };

    let body = ContainerCreateBody {
        image: Some(s.image.clone()),
        cmd: s.command.clone(),
        entrypoint: s.entrypoint.clone(),
        env: Some(env),
        exposed_ports: Some(exposed),
        healthcheck,
        labels: Some(label_map),
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        hostname: s.hostname.clone(),
        domainname: s.domainname.clone(),
        tty: s.tty.then_some(true),
        open_stdin: s.stdin_open.then_some(true),
        stop_signal: s.stop_signal.clone(),
        stop_timeout: s.stop_grace_period.map(|d| d.as_secs() as i64),
        host_config: Some(host_config),
        networking_config,
        ..ContainerCreateBody::default()
    };
    (body, extra)
}

/// Endpoint settings as docker compose writes them: the container name,
/// the service name and the user's aliases as DNS aliases, the fixed
/// addresses, and the links.
fn endpoint_settings(
    service: &str,
    container: &str,
    attach: &ServiceNetwork,
    links: &[String],
) -> EndpointSettings {
    let mut aliases = vec![container.to_owned(), service.to_owned()];
    aliases.extend(attach.aliases.iter().cloned());
    let fixed = attach.ipv4_address.is_some()
        || attach.ipv6_address.is_some()
        || !attach.link_local_ips.is_empty();
    EndpointSettings {
        aliases: Some(aliases),
        ipam_config: fixed.then(|| EndpointIpamConfig {
            ipv4_address: attach.ipv4_address.clone(),
            ipv6_address: attach.ipv6_address.clone(),
            link_local_ips: (!attach.link_local_ips.is_empty())
                .then(|| attach.link_local_ips.clone()),
        }),
        mac_address: attach.mac_address.clone(),
        driver_opts: driver_opts(attach),
        gw_priority: (attach.gw_priority != 0).then_some(attach.gw_priority),
        links: (!links.is_empty()).then(|| links.to_vec()),
        ..EndpointSettings::default()
    }
}

/// The engine API versions the project's keys need, each named by its
/// object path: the engine silently ignores what it does not know, so a
/// plan for an older engine refuses them instead (as docker compose does
/// for `healthcheck.start_interval`).
pub fn api_requirements(p: &Project) -> Vec<(String, (u32, u32))> {
    let mut out = Vec::new();
    for (name, s) in &p.services {
        let at = |key: &str| format!("services.{name}.{key}");
        if s.healthcheck
            .as_ref()
            .is_some_and(|h| h.start_interval.is_some() && !h.disable)
        {
            out.push((at("healthcheck.start_interval"), (1, 44)));
        }
        if !s.annotations.is_empty() {
            out.push((at("annotations"), (1, 43)));
        }
        // Before 1.44 the engine took one MAC address, in the container
        // config, which the client library no longer sends.
        if s.mac_address.is_some() {
            out.push((at("mac_address"), (1, 44)));
        }
        for (net, n) in &s.networks {
            if n.mac_address.is_some() {
                out.push((at(&format!("networks.{net}.mac_address")), (1, 44)));
            }
            if n.gw_priority != 0 {
                out.push((at(&format!("networks.{net}.gw_priority")), (1, 48)));
            }
            if n.interface_name.is_some() {
                out.push((at(&format!("networks.{net}.interface_name")), (1, 49)));
            }
        }
    }
    for (name, s) in &p.services {
        for (i, m) in s.volumes.iter().enumerate() {
            let at = |key: &str| format!("services.{name}.volumes[{i}].{key}");
            match m {
                Mount::Volume {
                    subpath: Some(_), ..
                } => out.push((at("volume.subpath"), (1, 45))),
                // Image mounts came with Docker 28; an older engine refuses
                // the mount type, so the plan says so first.
                Mount::Image { .. } => out.push((at("type"), (1, 48))),
                // `disabled` is `NonRecursive`, known since 1.40.
                Mount::Bind {
                    recursive: Some(r), ..
                } if r != "disabled" => out.push((at("bind.recursive"), (1, 44))),
                _ => {}
            }
        }
    }
    for (key, n) in &p.networks {
        if n.enable_ipv4 == Some(false) && !n.external {
            out.push((format!("networks.{key}.enable_ipv4"), (1, 47)));
        }
    }
    out
}

/// A network's `ipam` as the engine takes it.
pub fn ipam(ipam: &Ipam) -> bollard::models::Ipam {
    bollard::models::Ipam {
        driver: ipam.driver.clone(),
        config: Some(
            ipam.config
                .iter()
                .map(|p| IpamConfig {
                    subnet: p.subnet.clone(),
                    ip_range: p.ip_range.clone(),
                    gateway: p.gateway.clone(),
                    auxiliary_addresses: (!p.aux_addresses.is_empty())
                        .then(|| p.aux_addresses.clone().into_iter().collect()),
                })
                .collect(),
        ),
        options: (!ipam.options.is_empty()).then(|| ipam.options.clone().into_iter().collect()),
    }
}

/// The endpoint's driver options; `interface_name` is one of them, the one
/// the engine reads the interface name from.
fn driver_opts(attach: &ServiceNetwork) -> Option<HashMap<String, String>> {
    let mut opts: HashMap<String, String> = attach.driver_opts.clone().into_iter().collect();
    if let Some(name) = &attach.interface_name {
        opts.insert("com.docker.network.endpoint.ifname".into(), name.clone());
    }
    (!opts.is_empty()).then_some(opts)
}

/// `service:x` names a service; the engine wants a container: its first
/// replica (docker compose takes the first one too).
fn shared_namespace(p: &Project, mode: &str) -> String {
    match mode.strip_prefix("service:") {
        Some(other) => match p.services.get(other) {
            Some(o) => format!(
                "container:{}",
                project::container_name(&p.name, other, o, 1)
            ),
            None => format!("container:{}-{other}-1", p.name),
        },
        None => mode.to_owned(),
    }
}

/// `links` and `external_links` as docker compose v2 writes them: each
/// replica of a linked service under the alias, `<service>-<n>` and
/// `<project>-<service>-<n>` (`n` being this replica's number, as Compose
/// numbers them), then each external container under its alias.
fn links(p: &Project, number: u32, s: &Service) -> Vec<String> {
    let mut out = Vec::new();
    for (service, alias) in &s.links {
        let Some(linked) = p.services.get(service) else {
            continue;
        };
        for n in 1..=linked.replicas {
            let container = project::container_name(&p.name, service, linked, n);
            out.push(format!("{container}:{alias}"));
            out.push(format!("{container}:{service}-{number}"));
            out.push(format!("{container}:{}-{service}-{number}", p.name));
        }
    }
    for (container, alias) in &s.external_links {
        out.push(format!("{container}:{alias}"));
    }
    out
}

/// The home directory `~` in a bind source stands for: the `HOME` of the
/// process running driftless, as docker compose expands it for whoever
/// runs it.
fn home() -> Option<String> {
    std::env::var("HOME").ok().filter(|h| h.starts_with('/'))
}

/// A bind source with a leading `~` expanded to `home` (left as written
/// without one, which the engine refuses with the path in its message).
fn bind_source(source: &str, home: Option<&str>) -> String {
    match (source.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", home.trim_end_matches('/'))
        }
        _ => source.to_owned(),
    }
}

/// The service's mounts as the engine takes them, as docker compose
/// passes them: `HostConfig.Mounts`, except binds that create a missing
/// host path or are relabelled for SELinux, which only the older
/// `HostConfig.Binds` form (`source:target:rw,z,rshared`) can express.
/// A bound repo directory is its project's volume for it, mounted with
/// `nocopy` (a bind never shows the image's files at its target).
pub fn mounts(p: &Project, s: &Service, home: Option<&str>) -> (Vec<EngineMount>, Vec<String>) {
    let mut mounts = Vec::new();
    let mut binds = Vec::new();
    for m in &s.volumes {
        match m {
            Mount::Volume {
                source,
                target,
                read_only,
                no_copy,
                subpath,
            } => mounts.push(EngineMount {
                typ: Some(MountType::VOLUME),
                // A key of the project's `volumes:` becomes its engine name.
                source: source.as_ref().map(|k| {
                    p.volumes
                        .get(k)
                        .map(|v| v.name.clone())
                        .unwrap_or(k.clone())
                }),
                target: Some(target.clone()),
                read_only: Some(*read_only),
                volume_options: (*no_copy || subpath.is_some()).then(|| MountVolumeOptions {
                    no_copy: no_copy.then_some(true),
                    subpath: subpath.clone(),
                    ..MountVolumeOptions::default()
                }),
                ..EngineMount::default()
            }),
            Mount::Bind {
                source,
                target,
                read_only,
                selinux,
                propagation,
                recursive,
                create_host_path,
            } => {
                let source = bind_source(source, home);
                // The `host:target:opts` form cannot say `recursive`; the
                // loader refuses it with `create_host_path` or `selinux`.
                if (*create_host_path || selinux.is_some()) && recursive.is_none() {
                    let mut options = vec![if *read_only { "ro" } else { "rw" }];
                    options.extend(selinux.as_deref());
                    options.extend(propagation.as_deref());
                    binds.push(format!("{source}:{target}:{}", options.join(",")));
                } else {
                    mounts.push(EngineMount {
                        typ: Some(MountType::BIND),
                        source: Some(source),
                        target: Some(target.clone()),
                        read_only: Some(*read_only),
                        bind_options: (propagation.is_some() || recursive.is_some()).then(|| {
                            MountBindOptions {
                                propagation: propagation.as_ref().and_then(|p| {
                                    MountBindOptionsPropagationEnum::from_str(p).ok()
                                }),
                                // As docker compose maps `bind.recursive`.
                                non_recursive: (recursive.as_deref() == Some("disabled"))
                                    .then_some(true),
                                read_only_non_recursive: (recursive.as_deref() == Some("writable"))
                                    .then_some(true),
                                read_only_force_recursive: (recursive.as_deref()
                                    == Some("readonly"))
                                .then_some(true),
                                ..MountBindOptions::default()
                            }
                        }),
                        ..EngineMount::default()
                    });
                }
            }
            Mount::RepoDir {
                source,
                target,
                read_only,
                ..
            } => mounts.push(EngineMount {
                typ: Some(MountType::VOLUME),
                source: Some(binds::volume_name(&p.name, source)),
                target: Some(target.clone()),
                read_only: Some(*read_only),
                volume_options: Some(MountVolumeOptions {
                    no_copy: Some(true),
                    ..MountVolumeOptions::default()
                }),
                ..EngineMount::default()
            }),
            // As docker compose: the image reference as the source, its
            // subpath in `ImageOptions`.
            Mount::Image {
                source,
                target,
                read_only,
                subpath,
            } => mounts.push(EngineMount {
                typ: Some(MountType::IMAGE),
                source: Some(source.clone()),
                target: Some(target.clone()),
                read_only: Some(*read_only),
                image_options: subpath.as_ref().map(|subpath| MountImageOptions {
                    subpath: Some(subpath.clone()),
                }),
                ..EngineMount::default()
            }),
            Mount::Tmpfs { target, size, mode } => mounts.push(EngineMount {
                typ: Some(MountType::TMPFS),
                target: Some(target.clone()),
                tmpfs_options: (size.is_some() || mode.is_some()).then(|| MountTmpfsOptions {
                    size_bytes: size.map(|size| size as i64),
                    mode: mode.map(i64::from),
                    ..MountTmpfsOptions::default()
                }),
                ..EngineMount::default()
            }),
        }
    }
    (mounts, binds)
}

/// `volumes_from` as the engine takes it: `container[:ro]`, a service
/// standing for its first replica. Unlike docker compose v2, which drops
/// the mode, `:ro` is kept (as the specification and Compose v1 have it).
fn volumes_from(p: &Project, s: &Service) -> Vec<String> {
    s.volumes_from
        .iter()
        .map(|v| {
            let container = if v.container {
                v.source.clone()
            } else {
                match p.services.get(&v.source) {
                    Some(o) => project::container_name(&p.name, &v.source, o, 1),
                    None => format!("{}-{}-1", p.name, v.source),
                }
            };
            if v.read_only {
                format!("{container}:ro")
            } else {
                container
            }
        })
        .collect()
}

/// The engine's resource controls beyond limits and reservations, as
/// docker compose's `getDeployResources` sets them.
fn resources(r: &Resources) -> HostConfig {
    let throttle = |list: &[(String, u64)]| {
        (!list.is_empty()).then(|| {
            list.iter()
                .map(|(path, rate)| ThrottleDevice {
                    path: Some(path.clone()),
                    rate: Some(i64::try_from(*rate).unwrap_or(i64::MAX)),
                })
                .collect()
        })
    };
    let (cdi, devices): (Vec<_>, Vec<_>) = r
        .devices
        .iter()
        .partition(|d| d.source == d.target && is_cdi_name(&d.source));
    let mut requests: Vec<DeviceRequest> = Vec::new();
    if !cdi.is_empty() {
        requests.push(DeviceRequest {
            driver: Some("cdi".into()),
            device_ids: Some(cdi.iter().map(|d| d.source.clone()).collect()),
            ..DeviceRequest::default()
        });
    }
    requests.extend(r.device_requests.iter().map(|d| DeviceRequest {
        driver: d.driver.clone(),
        count: Some(d.count),
        device_ids: (!d.device_ids.is_empty()).then(|| d.device_ids.clone()),
        capabilities: Some(d.capabilities.clone()),
        options: (!d.options.is_empty()).then(|| d.options.clone().into_iter().collect()),
    }));
    let b = &r.blkio;
    HostConfig {
        cpu_shares: r.cpu_shares,
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_realtime_period: r.cpu_rt_period,
        cpu_realtime_runtime: r.cpu_rt_runtime,
        cpuset_cpus: r.cpuset.clone(),
        cpu_count: r.cpu_count,
        // docker compose sends the percentage times 100.
        cpu_percent: r.cpu_percent.map(|p| (p * 100.0) as i64),
        memory_swap: r.memswap_limit,
        // docker compose leaves 0 unset (the engine's default).
        memory_swappiness: r.mem_swappiness.filter(|s| *s != 0),
        oom_kill_disable: Some(r.oom_kill_disable),
        blkio_weight: b.weight,
        blkio_weight_device: (!b.weight_device.is_empty()).then(|| {
            b.weight_device
                .iter()
                .map(|(path, weight)| ResourcesBlkioWeightDevice {
                    path: Some(path.clone()),
                    weight: Some(usize::from(*weight)),
                })
                .collect()
        }),
        blkio_device_read_bps: throttle(&b.device_read_bps),
        blkio_device_write_bps: throttle(&b.device_write_bps),
        blkio_device_read_iops: throttle(&b.device_read_iops),
        blkio_device_write_iops: throttle(&b.device_write_iops),
        devices: (!devices.is_empty()).then(|| {
            devices
                .iter()
                .map(|d| DeviceMapping {
                    path_on_host: Some(d.source.clone()),
                    path_in_container: Some(d.target.clone()),
                    cgroup_permissions: Some(d.permissions.clone()),
                })
                .collect()
        }),
        device_cgroup_rules: (!r.device_cgroup_rules.is_empty())
            .then(|| r.device_cgroup_rules.clone()),
        device_requests: (!requests.is_empty()).then_some(requests),
        ..HostConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::compose::{
        Blkio, Device, DeviceRequest, Namespaces, Network, Port, ResourceSet, Resources, Volume,
        VolumesFrom,
    };

    #[test]
    fn maps_ports_mounts_limits_and_labels() {
        let service = Service {
            image: "img:1".into(),
            ports: vec![Port {
                host_ip: Some("127.0.0.1".into()),
                published: Some("8080".into()),
                target: 80,
                protocol: "tcp".into(),
            }],
            volumes: vec![Mount::Volume {
                subpath: None,
                source: Some("data".into()),
                target: "/data".into(),
                read_only: false,
                no_copy: false,
            }],
            restart: Some("on-failure:3".into()),
            resources: Resources {
                limits: ResourceSet {
                    cpus: Some(0.5),
                    memory: Some(64 << 20),
                    pids: Some(100),
                },
                ..Resources::default()
            },
            replicas: 1,
            ..Service::default()
        };
        let project = Project {
            disabled_services: Default::default(),
            name: "shop".into(),
            services: [("web".to_owned(), service.clone())].into(),
            networks: BTreeMap::new(),
            volumes: [(
                "data".to_owned(),
                Volume {
                    name: "shop_data".into(),
                    ..Volume::default()
                },
            )]
            .into(),
            origin: Default::default(),
        };
        let (body, extra) = container(&Replica {
            project: &project,
            service_name: "web",
            service: &service,
            number: 2,
            image_id: "sha256:abc",
            config_hash: "h",
            definition: "d",
            environment: "dev",
            instance: "dev@test",
        });
        assert!(extra.is_empty());
        let hc = body.host_config.unwrap();
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.network_mode.as_deref(), Some("shop_default"));
        assert_eq!(
            hc.port_bindings.unwrap()["80/tcp"].as_ref().unwrap()[0]
                .host_port
                .as_deref(),
            Some("8080")
        );
        assert_eq!(hc.mounts.unwrap()[0].source.as_deref(), Some("shop_data"));
        let rp = hc.restart_policy.unwrap();
        assert_eq!(rp.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(rp.maximum_retry_count, Some(3));
        let labels = body.labels.unwrap();
        assert_eq!(labels[labels::CONTAINER_NUMBER], "2");
        assert_eq!(labels[labels::ONEOFF], "False");
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(
            endpoints["shop_default"].aliases.as_deref().unwrap(),
            ["shop-web-2", "web"]
        );
    }

    fn replica<'a>(project: &'a Project, service: &'a str, number: u32) -> Replica<'a> {
        Replica {
            project,
            service_name: service,
            service: &project.services[service],
            number,
            image_id: "sha256:abc",
            config_hash: "h",
            definition: "d",
            environment: "dev",
            instance: "dev@test",
        }
    }

    /// Every engine key lands in the create body where docker compose's
    /// `getCreateConfigs` puts it.
    #[test]
    fn maps_engine_keys_as_docker_compose_does() {
        let mut app = Service {
            image: "app:1".into(),
            replicas: 1,
            tmpfs: [("/run".to_owned(), "size=64m".to_owned())].into(),
            sysctls: [("net.core.somaxconn".to_owned(), "1024".to_owned())].into(),
            dns: vec!["8.8.8.8".into()],
            dns_search: vec!["example.com".into()],
            dns_opt: vec!["use-vc".into()],
            domainname: Some("example.com".into()),
            namespaces: Namespaces {
                ipc: Some("service:db".into()),
                pid: Some("host".into()),
                uts: Some("host".into()),
                userns_mode: Some("host".into()),
                cgroup: Some("private".into()),
            },
            cgroup_parent: Some("m-exec".into()),
            group_add: vec!["mail".into()],
            runtime: Some("runc".into()),
            storage_opt: [("size".to_owned(), "1G".to_owned())].into(),
            tty: true,
            stdin_open: true,
            links: vec![("db".into(), "database".into())],
            external_links: vec![("legacy".into(), "cache".into())],
            volumes_from: vec![VolumesFrom {
                source: "db".into(),
                container: false,
                read_only: true,
            }],
            annotations: [("a".to_owned(), "b".to_owned())].into(),
            shm_size: Some(64 << 20),
            oom_score_adj: Some(-100),
            resources: Resources {
                limits: ResourceSet {
                    cpus: Some(1.5),
                    memory: Some(256 << 20),
                    pids: Some(50),
                },
                cpu_shares: Some(512),
                cpuset: Some("0-1".into()),
                cpu_percent: Some(50.0),
                memswap_limit: Some(-1),
                mem_swappiness: Some(0),
                oom_kill_disable: true,
                blkio: Blkio {
                    weight: Some(300),
                    device_read_bps: vec![("/dev/loop0".into(), 1024)],
                    ..Blkio::default()
                },
                devices: vec![
                    Device {
                        source: "/dev/fuse".into(),
                        target: "/dev/fuse".into(),
                        permissions: "rwm".into(),
                    },
                    Device {
                        source: "nvidia.com/gpu=all".into(),
                        target: "nvidia.com/gpu=all".into(),
                        permissions: "rwm".into(),
                    },
                ],
                device_requests: vec![DeviceRequest {
                    driver: None,
                    count: -1,
                    device_ids: Vec::new(),
                    capabilities: vec![vec!["gpu".into()]],
                    options: BTreeMap::new(),
                }],
                ..Resources::default()
            },
            ..Service::default()
        };
        app.networks.insert(
            "front".into(),
            ServiceNetwork {
                ipv4_address: Some("172.28.0.5".into()),
                ipv6_address: Some("fd00::5".into()),
                interface_name: Some("eth7".into()),
                ..ServiceNetwork::default()
            },
        );
        let db = Service {
            image: "db:1".into(),
            replicas: 2,
            ..Service::default()
        };
        let project = Project {
            name: "shop".into(),
            services: [("app".to_owned(), app), ("db".to_owned(), db)].into(),
            networks: [(
                "front".to_owned(),
                Network {
                    name: "shop_front".into(),
                    ..Network::default()
                },
            )]
            .into(),
            volumes: BTreeMap::new(),
            disabled_services: BTreeMap::new(),
            origin: Default::default(),
        };
        let (body, extra) = container(&replica(&project, "app", 1));
        assert!(extra.is_empty());
        assert_eq!(body.domainname.as_deref(), Some("example.com"));
        assert_eq!((body.tty, body.open_stdin), (Some(true), Some(true)));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.tmpfs.unwrap()["/run"], "size=64m");
        assert_eq!(hc.sysctls.unwrap()["net.core.somaxconn"], "1024");
        assert_eq!(hc.dns.unwrap(), ["8.8.8.8"]);
        assert_eq!(hc.dns_search.unwrap(), ["example.com"]);
        assert_eq!(hc.dns_options.unwrap(), ["use-vc"]);
        assert_eq!(hc.ipc_mode.as_deref(), Some("container:shop-db-1"));
        assert_eq!(hc.pid_mode.as_deref(), Some("host"));
        assert_eq!(hc.uts_mode.as_deref(), Some("host"));
        assert_eq!(hc.userns_mode.as_deref(), Some("host"));
        assert_eq!(hc.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::PRIVATE));
        assert_eq!(hc.cgroup_parent.as_deref(), Some("m-exec"));
        assert_eq!(hc.group_add.unwrap(), ["mail"]);
        assert_eq!(hc.runtime.as_deref(), Some("runc"));
        assert_eq!(hc.storage_opt.unwrap()["size"], "1G");
        assert_eq!(hc.annotations.unwrap()["a"], "b");
        assert_eq!(hc.shm_size, Some(64 << 20));
        assert_eq!(hc.oom_score_adj, Some(-100));
        // Links as Compose v2 writes them: alias, `service-N`,
        // `project-service-N` for every replica, then the external ones.
        assert_eq!(
            hc.links.unwrap(),
            [
                "shop-db-1:database",
                "shop-db-1:db-1",
                "shop-db-1:shop-db-1",
                "shop-db-2:database",
                "shop-db-2:db-1",
                "shop-db-2:shop-db-1",
                "legacy:cache",
            ]
        );
        assert_eq!(hc.volumes_from.unwrap(), ["shop-db-1:ro"]);
        assert_eq!(hc.nano_cpus, Some(1_500_000_000));
        assert_eq!(hc.memory, Some(256 << 20));
        assert_eq!(hc.pids_limit, Some(50));
        assert_eq!(hc.cpu_shares, Some(512));
        assert_eq!(hc.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(hc.cpu_percent, Some(5000));
        assert_eq!(hc.memory_swap, Some(-1));
        assert_eq!(hc.memory_swappiness, None, "0 is left to the engine");
        assert_eq!(hc.oom_kill_disable, Some(true));
        assert_eq!(hc.blkio_weight, Some(300));
        assert_eq!(hc.blkio_device_read_bps.unwrap()[0].rate, Some(1024));
        let devices = hc.devices.unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].path_on_host.as_deref(), Some("/dev/fuse"));
        let requests = hc.device_requests.unwrap();
        assert_eq!(requests[0].driver.as_deref(), Some("cdi"));
        assert_eq!(
            requests[0].device_ids.as_deref().unwrap(),
            ["nvidia.com/gpu=all"]
        );
        assert_eq!(requests[1].count, Some(-1));
        assert_eq!(hc.network_mode.as_deref(), Some("shop_front"));
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        let ep = &endpoints["shop_front"];
        let ipam = ep.ipam_config.as_ref().unwrap();
        assert_eq!(ipam.ipv4_address.as_deref(), Some("172.28.0.5"));
        assert_eq!(ipam.ipv6_address.as_deref(), Some("fd00::5"));
        assert_eq!(
            ep.driver_opts.as_ref().unwrap()["com.docker.network.endpoint.ifname"],
            "eth7"
        );
        assert_eq!(ep.links.as_ref().unwrap().len(), 7);

        // Networks by priority, highest first, then by name.
        let mut p2 = project.clone();
        let app = p2.services.get_mut("app").unwrap();
        app.networks.insert(
            "back".into(),
            ServiceNetwork {
                priority: 5,
                ..ServiceNetwork::default()
            },
        );
        assert_eq!(project::service_networks(app), ["back", "front"]);
    }

    /// `environment: [KEY]` with `KEY` unset: sent as `KEY` alone, as
    /// docker compose sends it (found by the differential test against
    /// docker-compose 1.29.2, which does the same); it was left out, so an
    /// image's own value for the variable survived.
    #[test]
    fn an_unset_pass_through_variable_is_sent_bare() {
        let unset = "DRIFTLESS_SPEC_TEST_SURELY_UNSET_VARIABLE";
        let service = Service {
            image: "img:1".into(),
            replicas: 1,
            environment: [
                (unset.to_owned(), None),
                ("SET".to_owned(), Some("v".to_owned())),
            ]
            .into(),
            ..Service::default()
        };
        let project = Project {
            name: "p".into(),
            services: [("web".to_owned(), service)].into(),
            networks: BTreeMap::new(),
            volumes: BTreeMap::new(),
            disabled_services: BTreeMap::new(),
            origin: Default::default(),
        };
        let (body, _) = container(&replica(&project, "web", 1));
        assert_eq!(
            body.env.unwrap(),
            ["DRIFTLESS_SPEC_TEST_SURELY_UNSET_VARIABLE", "SET=v"]
        );
    }

    #[test]
    fn keys_newer_than_the_engine_name_their_api_version() {
        let mut s = Service {
            image: "x".into(),
            replicas: 1,
            mac_address: Some("02:42:ac:11:00:02".into()),
            annotations: [("a".to_owned(), "b".to_owned())].into(),
            ..Service::default()
        };
        s.healthcheck = Some(crate::model::compose::Healthcheck {
            test: vec!["CMD".into(), "true".into()],
            interval: None,
            timeout: None,
            retries: None,
            start_period: None,
            start_interval: Some(std::time::Duration::from_secs(1)),
            disable: false,
        });
        let p = Project {
            name: "p".into(),
            services: [("web".to_owned(), s)].into(),
            networks: BTreeMap::new(),
            volumes: BTreeMap::new(),
            disabled_services: BTreeMap::new(),
            origin: Default::default(),
        };
        let needs: BTreeMap<String, (u32, u32)> = api_requirements(&p).into_iter().collect();
        assert_eq!(needs["services.web.healthcheck.start_interval"], (1, 44));
        assert_eq!(needs["services.web.annotations"], (1, 43));
        assert_eq!(needs["services.web.mac_address"], (1, 44));
    }

    #[test]
    fn tmpfs_mounts_carry_size_and_mode_as_docker_compose_sets_them() {
        let t = |size: Option<u64>, mode: Option<u32>| Mount::Tmpfs {
            target: "/scratch".into(),
            size,
            mode,
        };
        let s = Service {
            volumes: vec![
                t(Some(8 << 20), Some(0o1777)),
                t(None, Some(0o700)),
                t(None, None),
            ],
            ..Service::default()
        };
        let (mounts, binds) = mounts(&Project::default(), &s, None);
        assert!(binds.is_empty());
        let options: Vec<_> = mounts
            .iter()
            .map(|m| {
                assert_eq!(m.typ, Some(MountType::TMPFS));
                m.tmpfs_options.as_ref().map(|o| (o.size_bytes, o.mode))
            })
            .collect();
        assert_eq!(
            options,
            [
                Some((Some(8 << 20), Some(0o1777))),
                Some((None, Some(0o700))),
                None
            ]
        );
        // Unset, the mode is not in the definition: config hashes from
        // before `tmpfs.mode` was supported stay the same.
        let json = serde_json::to_string(&t(Some(1), None)).unwrap();
        assert!(!json.contains("mode"), "{json}");
    }

    #[test]
    fn subpath_recursive_and_image_mounts_map_as_docker_compose_sets_them() {
        let bind = |recursive: &str| Mount::Bind {
            source: "/srv".into(),
            target: "/srv".into(),
            read_only: true,
            selinux: None,
            propagation: None,
            recursive: Some(recursive.into()),
            create_host_path: false,
        };
        let s = Service {
            volumes: vec![
                Mount::Volume {
                    source: None,
                    target: "/cache".into(),
                    read_only: false,
                    no_copy: false,
                    subpath: Some("app".into()),
                },
                bind("disabled"),
                bind("writable"),
                bind("readonly"),
                Mount::Image {
                    source: "registry.example/assets:2".into(),
                    target: "/assets".into(),
                    read_only: true,
                    subpath: Some("www".into()),
                },
            ],
            ..Service::default()
        };
        let (mounts, binds) = mounts(&Project::default(), &s, None);
        assert!(binds.is_empty());
        let v = mounts[0].volume_options.as_ref().unwrap();
        assert_eq!(v.subpath.as_deref(), Some("app"));
        assert_eq!(v.labels, None, "docker compose sends no volume labels");
        assert_eq!(v.no_copy, None);
        let image = &mounts[4];
        assert_eq!(image.typ, Some(MountType::IMAGE));
        assert_eq!(image.source.as_deref(), Some("registry.example/assets:2"));
        assert_eq!(image.read_only, Some(true));
        assert_eq!(
            image.image_options.as_ref().unwrap().subpath.as_deref(),
            Some("www")
        );
        let b = |i: usize| {
            let o = mounts[i].bind_options.clone().unwrap();
            (
                o.non_recursive,
                o.read_only_non_recursive,
                o.read_only_force_recursive,
            )
        };
        assert_eq!(b(1), (Some(true), None, None));
        assert_eq!(b(2), (None, Some(true), None));
        assert_eq!(b(3), (None, None, Some(true)));
        // `disabled` is known to 1.41 engines; the others and `subpath` are not.
        let p = Project {
            name: "p".into(),
            services: [("web".to_owned(), s)].into(),
            ..Project::default()
        };
        let needs: BTreeMap<_, _> = api_requirements(&p).into_iter().collect();
        assert_eq!(
            needs,
            [
                ("services.web.volumes[0].volume.subpath".to_owned(), (1, 45)),
                ("services.web.volumes[2].bind.recursive".to_owned(), (1, 44)),
                ("services.web.volumes[3].bind.recursive".to_owned(), (1, 44)),
                ("services.web.volumes[4].type".to_owned(), (1, 48)),
            ]
            .into()
        );
    }

    #[test]
    fn binds_map_as_docker_compose_passes_them() {
        let b = |source: &str,
                 target: &str,
                 selinux: Option<&str>,
                 propagation: Option<&str>,
                 create: bool| {
            Mount::Bind {
                recursive: None,
                source: source.into(),
                target: target.into(),
                read_only: target == "/ro",
                selinux: selinux.map(Into::into),
                propagation: propagation.map(Into::into),
                create_host_path: create,
            }
        };
        let s = Service {
            volumes: vec![
                // Short syntax: `Binds`, options in compose's order.
                b("/srv/ro", "/ro", Some("z"), Some("rshared"), true),
                b("~/data", "/home", None, None, true),
                // Long syntax without `create_host_path`: `Mounts`.
                b("/srv/m", "/m", None, Some("rslave"), false),
                // SELinux needs `Binds` even without `create_host_path`.
                b("/srv/l", "/l", Some("Z"), None, false),
                Mount::Volume {
                    subpath: None,
                    source: Some("data".into()),
                    target: "/data".into(),
                    read_only: false,
                    no_copy: true,
                },
                Mount::RepoDir {
                    source: "compose/shared".into(),
                    target: "/shared".into(),
                    read_only: false,
                    files: Vec::new().into(),
                },
            ],
            ..Service::default()
        };
        let p = Project {
            name: "shop".into(),
            ..Project::default()
        };
        let (mounts, binds) = mounts(&p, &s, Some("/home/me/"));
        assert_eq!(
            binds,
            [
                "/srv/ro:/ro:ro,z,rshared",
                "/home/me/data:/home:rw",
                "/srv/l:/l:rw,Z",
            ]
        );
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
        assert_eq!(
            mounts[0].bind_options.as_ref().unwrap().propagation,
            Some(MountBindOptionsPropagationEnum::RSLAVE)
        );
        assert_eq!(mounts[1].source.as_deref(), Some("data"));
        assert_eq!(
            mounts[1].volume_options.as_ref().unwrap().no_copy,
            Some(true)
        );
        // A bound repo directory is the project's volume for it, never
        // showing the image's files at the target (as a bind would not).
        assert_eq!(mounts[2].typ, Some(MountType::VOLUME));
        assert_eq!(
            mounts[2].source.as_deref(),
            Some(binds::volume_name("shop", "compose/shared").as_str())
        );
        assert_eq!(
            mounts[2].volume_options.as_ref().unwrap().no_copy,
            Some(true)
        );
        // Without a home directory, `~` is left for the engine to refuse.
        assert_eq!(bind_source("~/x", None), "~/x");
        assert_eq!(bind_source("~", Some("/root")), "/root");
        assert_eq!(bind_source("~x", Some("/root")), "~x");
    }
}
