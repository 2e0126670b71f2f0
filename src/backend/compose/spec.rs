//! The resolved Compose service → the engine's container create body.
//!
//! Owns every field mapping, in one place, so a key the model carries is
//! either mapped here or visibly not. Pure: the caller supplies names, ids
//! and labels.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HealthConfig, HostConfig,
    HostConfigLogConfig, Mount as EngineMount, MountTmpfsOptions, MountType, NetworkingConfig,
    PortBinding, ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};

use super::{labels, project};
use crate::model::compose::{Mount, Project, Service, ServiceNetwork};

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
    let working_dir = std::path::Path::new(&s.origin.file)
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
        (labels::DEFINITION, r.definition.to_owned()),
    ] {
        label_map.insert(k.to_owned(), v);
    }

    let env = s
        .environment
        .iter()
        .filter_map(|(k, v)| match v {
            Some(v) => Some(format!("{k}={v}")),
            // `KEY` alone: passed through from driftless's own environment,
            // as Compose passes it from the shell; unset means not set.
            None => std::env::var(k).ok().map(|v| format!("{k}={v}")),
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

    let mounts = s
        .volumes
        .iter()
        .map(|m| match m {
            Mount::Volume {
                source,
                target,
                read_only,
            } => EngineMount {
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
                ..EngineMount::default()
            },
            Mount::Bind {
                source,
                target,
                read_only,
            } => EngineMount {
                typ: Some(MountType::BIND),
                source: Some(source.clone()),
                target: Some(target.clone()),
                read_only: Some(*read_only),
                ..EngineMount::default()
            },
            Mount::Tmpfs { target, size } => EngineMount {
                typ: Some(MountType::TMPFS),
                target: Some(target.clone()),
                tmpfs_options: size.map(|size| MountTmpfsOptions {
                    size_bytes: Some(size as i64),
                    ..MountTmpfsOptions::default()
                }),
                ..EngineMount::default()
            },
        })
        .collect();

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
    let endpoint = |key: &str| {
        let attach = s.networks.get(key).cloned().unwrap_or_default();
        endpoint_settings(r.service_name, &name, &attach)
    };
    let engine_name = |key: &str| {
        networks
            .get(key)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| key.to_owned())
    };
    let network_mode = match &s.network_mode {
        // `service:x` names a service; the engine wants a container.
        Some(mode) => Some(match mode.strip_prefix("service:") {
            Some(other) => match p.services.get(other) {
                Some(o) => format!(
                    "container:{}",
                    project::container_name(&p.name, other, o, 1)
                ),
                None => format!("container:{}-{other}-1", p.name),
            },
            None => mode.clone(),
        }),
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
    let host_config = HostConfig {
        port_bindings: Some(port_bindings),
        mounts: Some(mounts),
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
        ..HostConfig::default()
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
        stop_signal: s.stop_signal.clone(),
        stop_timeout: s.stop_grace_period.map(|d| d.as_secs() as i64),
        host_config: Some(host_config),
        networking_config,
        ..ContainerCreateBody::default()
    };
    (body, extra)
}

/// Endpoint settings: the service name and container name as DNS aliases
/// (what Compose registers), plus the user's aliases and fixed address.
fn endpoint_settings(service: &str, container: &str, attach: &ServiceNetwork) -> EndpointSettings {
    let mut aliases = vec![service.to_owned(), container.to_owned()];
    aliases.extend(attach.aliases.iter().cloned());
    EndpointSettings {
        aliases: Some(aliases),
        ipam_config: attach.ipv4_address.as_ref().map(|ip| EndpointIpamConfig {
            ipv4_address: Some(ip.clone()),
            ..EndpointIpamConfig::default()
        }),
        ..EndpointSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::compose::{Port, ResourceSet, Resources, Volume};

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
                source: Some("data".into()),
                target: "/data".into(),
                read_only: false,
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
            ["web", "shop-web-2"]
        );
    }
}
