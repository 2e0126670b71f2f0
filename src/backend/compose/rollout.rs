//! How a service's replicas are replaced when its definition changes.
//!
//! [`decide`] is the pure part the plan shows: start-first (the new
//! container starts, is gated on health, and only then the old one stops)
//! where two containers of the service can safely run side by side,
//! stop-first otherwise, each with its reason. The apply side (below it)
//! replaces replicas start-first: a new container under a temporary name
//! ([`temporary_name`], marked by [`labels::TEMPORARY`]) with the labels and
//! network aliases of the one it replaces, so Docker's DNS and label-routed
//! proxies answer with both until the old one is gone; then it takes the
//! canonical name.

use crate::model::compose::{Mount, Service, UpdateOrder};

use super::labels;
use super::live::LiveContainer;

/// How one service's replicas are replaced, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub order: UpdateOrder,
    pub reason: String,
    /// Replicas replaced at once; 0: all.
    pub parallelism: u32,
}

impl Decision {
    /// The plan's words: `start-first, 1 at a time (why)`.
    pub fn text(&self) -> String {
        let order = match self.order {
            UpdateOrder::StartFirst => "start-first",
            UpdateOrder::StopFirst => "stop-first",
        };
        let batch = match self.parallelism {
            0 => "all at once".to_owned(),
            n => format!("{n} at a time"),
        };
        format!("{order}, {batch} ({})", self.reason)
    }
}

/// Whether a recreate for `reason` replaces every replica (a changed
/// definition or image), rather than only the broken ones.
pub fn replaces_all(reason: &str) -> bool {
    reason.starts_with("config changed")
        || reason.starts_with("image rebuilt")
        || matches!(
            reason,
            "image changed" | "network changed" | "dependency recreated"
        )
}

/// How a recreate for `reason` replaces the service's replicas; `None`
/// when it replaces only broken ones (nothing is serving there to keep).
///
/// Safe by default: stop-first for a service with `container_name`, a
/// fixed host port or address, host networking, or a named volume mounted
/// read-write (two database servers on one data directory corrupt it),
/// unless its Compose file asks for an order; a recreated network or a
/// shared namespace always goes stop-first (the old container must go
/// before the new one can join).
pub fn decide(service: &Service, reason: &str) -> Option<Decision> {
    if !replaces_all(reason) {
        return None;
    }
    let config = &service.update_config;
    let decision = |order, reason: String| Decision {
        order,
        reason,
        parallelism: config.parallelism,
    };
    let stop_first = |why: String| Some(decision(UpdateOrder::StopFirst, why));
    match reason {
        "network changed" => return stop_first("its network is recreated".into()),
        "dependency recreated" => {
            return stop_first("it shares a namespace or volumes with a replaced service".into());
        }
        _ => {}
    }
    if let Some(order) = config.order {
        return Some(decision(
            order,
            "asked for by `deploy.update_config.order`".into(),
        ));
    }
    if let Some(name) = &service.container_name {
        return stop_first(format!(
            "`container_name: {name}`: two containers cannot hold one name"
        ));
    }
    if service.network_mode.as_deref() == Some("host") {
        return stop_first("`network_mode: host`: its ports are the host's".into());
    }
    if let Some(port) = service.ports.iter().find_map(|p| p.published.as_ref()) {
        return stop_first(format!(
            "publishes fixed host port {port}: two containers cannot bind it"
        ));
    }
    if let Some((net, addr)) = service.networks.iter().find_map(|(k, n)| {
        n.ipv4_address
            .as_ref()
            .or(n.ipv6_address.as_ref())
            .or(n.mac_address.as_ref())
            .map(|a| (k, a))
    }) {
        return stop_first(format!(
            "fixed address {addr} on network `{net}`: two containers cannot hold it"
        ));
    }
    if let Some(volume) = service.volumes.iter().find_map(|m| match m {
        Mount::Volume {
            source: Some(source),
            read_only: false,
            ..
        } => Some(source),
        _ => None,
    }) {
        return stop_first(format!(
            "mounts named volume `{volume}` read-write: two writers on one data directory can corrupt it"
        ));
    }
    Some(decision(
        UpdateOrder::StartFirst,
        "no container_name, fixed host port or address, or read-write named volume".into(),
    ))
}

/// The name a replacement runs under until the old container is gone.
pub fn temporary_name(canonical: &str) -> String {
    format!("{canonical}-driftless-next")
}

/// Whether `c` is a replacement that never took its canonical name (an
/// apply stopped in the middle): the next apply removes it.
pub fn is_temporary(c: &LiveContainer) -> bool {
    c.labels.get(labels::TEMPORARY) == Some(&c.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compose::{Port, ServiceNetwork};

    fn order(s: &Service) -> (UpdateOrder, String) {
        let d = decide(s, "image changed").unwrap();
        (d.order, d.reason)
    }

    #[test]
    fn start_first_only_where_two_replicas_can_run_side_by_side() {
        let stateless = Service::default();
        assert_eq!(order(&stateless).0, UpdateOrder::StartFirst);

        let named = Service {
            container_name: Some("proxy".into()),
            ..Service::default()
        };
        assert_eq!(
            order(&named),
            (
                UpdateOrder::StopFirst,
                "`container_name: proxy`: two containers cannot hold one name".into()
            )
        );

        let published = Service {
            ports: vec![Port {
                host_ip: None,
                published: Some("8080".into()),
                target: 80,
                protocol: "tcp".into(),
            }],
            ..Service::default()
        };
        assert_eq!(order(&published).0, UpdateOrder::StopFirst);
        assert!(order(&published).1.contains("fixed host port 8080"));
        let ephemeral = Service {
            ports: vec![Port {
                published: None,
                ..published.ports[0].clone()
            }],
            ..Service::default()
        };
        assert_eq!(order(&ephemeral).0, UpdateOrder::StartFirst);

        let database = Service {
            volumes: vec![Mount::Volume {
                source: Some("pgdata".into()),
                target: "/var/lib/postgresql/data".into(),
                read_only: false,
            }],
            ..Service::default()
        };
        assert!(
            order(&database)
                .1
                .contains("named volume `pgdata` read-write")
        );
        let reader = Service {
            volumes: vec![
                Mount::Volume {
                    source: Some("assets".into()),
                    target: "/srv".into(),
                    read_only: true,
                },
                Mount::Volume {
                    source: None,
                    target: "/tmp/cache".into(),
                    read_only: false,
                },
            ],
            ..Service::default()
        };
        assert_eq!(order(&reader).0, UpdateOrder::StartFirst);

        let fixed_ip = Service {
            networks: [(
                "back".to_owned(),
                ServiceNetwork {
                    ipv4_address: Some("10.5.0.9".into()),
                    ..ServiceNetwork::default()
                },
            )]
            .into(),
            ..Service::default()
        };
        assert!(order(&fixed_ip).1.contains("10.5.0.9 on network `back`"));
    }

    #[test]
    fn an_explicit_order_wins_and_broken_replicas_have_none() {
        let mut database = Service {
            volumes: vec![Mount::Volume {
                source: Some("data".into()),
                target: "/data".into(),
                read_only: false,
            }],
            ..Service::default()
        };
        database.update_config.order = Some(UpdateOrder::StartFirst);
        database.update_config.parallelism = 2;
        let d = decide(&database, "config changed: environment").unwrap();
        assert_eq!(
            d.text(),
            "start-first, 2 at a time (asked for by `deploy.update_config.order`)"
        );
        // A recreated network takes its containers down first, whatever asked.
        assert_eq!(
            decide(&database, "network changed").unwrap().order,
            UpdateOrder::StopFirst
        );
        assert_eq!(decide(&database, "container exited"), None);
        assert_eq!(decide(&database, "container missing"), None);
    }
}
