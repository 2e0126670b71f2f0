//! How a service's replicas are replaced when its definition changes.
//!
//! [`decide`] is the pure part the plan shows: start-first (the new
//! container starts, is gated on health, and only then the old one stops)
//! where two containers of the service can safely run side by side,
//! stop-first otherwise, each with its reason. The apply side (below it)
//! is one batch loop for both orders ([`Applier::roll_out`]): `parallelism`,
//! `delay`, `monitor`, `failure_action` and `max_failure_ratio` act the
//! same whichever order replaces a replica. Start-first: a new container
//! under a temporary name ([`temporary_name`], marked by
//! [`labels::TEMPORARY`]) with the labels of the one it replaces, out of
//! the service's DNS until it is healthy; then it is given the service's
//! network aliases, so Docker's DNS and label-routed proxies answer with
//! both, the old one leaves DNS, drains and stops, and the new one takes
//! the canonical name. Stop-first: the old one stops, the new one starts
//! under the canonical name and is gated the same way. Each step is shown
//! in the apply's [`Progress`](crate::backend::progress::Progress).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerStateStatusEnum, EndpointIpamConfig, EndpointSettings, HealthStatusEnum,
    NetworkConnectRequest, NetworkDisconnectRequest,
};
use bollard::query_parameters::{
    InspectContainerOptions, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
};

use crate::backend::BackendError;
use crate::backend::progress::{Phase, Tracked};
use crate::model::compose::{ConfigFrom, FailureAction, Mount, Service, UpdateOrder};

use super::apply::{Applier, State};
use super::live::LiveContainer;
use super::{labels, project, spec};

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

/// Whether a recreate for `reason` is a rollout: the service's definition
/// or image changed (or its network or namespace owner is replaced), so
/// its replicas are replaced in batches as its `update_config` says, rather
/// than only the broken ones at once.
pub fn replaces_all(reason: &str) -> bool {
    reason.starts_with("config changed")
        || reason.starts_with("image rebuilt")
        || matches!(
            reason,
            "image changed" | "network changed" | "dependency recreated"
        )
}

/// Whether a recreate for `reason` replaces replicas that already run the
/// desired definition: their network is recreated, or a service they share
/// a namespace or volumes with is replaced. Any other rollout replaces only
/// replicas whose config hash or image differ, so an update resumed after
/// `failure_action: pause` replaces only the replicas not yet updated.
pub fn replaces_current(reason: &str) -> bool {
    matches!(reason, "network changed" | "dependency recreated")
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
    // The Compose file's order overrules the safety rules for its service;
    // an environment's default may only be more careful.
    let asked = format!("asked for by {}", config.order_key());
    match (config.order, config.from) {
        (Some(UpdateOrder::StartFirst), ConfigFrom::Environment) | (None, _) => {}
        (Some(order), _) => return Some(decision(order, asked)),
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
    let safe = "no container_name, fixed host port or address, or read-write named volume";
    Some(decision(
        UpdateOrder::StartFirst,
        match config.order {
            Some(_) => format!("{asked}; {safe}"),
            None => safe.into(),
        },
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

/// How long a container out of its networks is left before it is
/// stopped: the embedded DNS stops answering with it within this (seen:
/// a request failed when it was stopped at once; none after 1 s).
const DRAIN: Duration = Duration::from_secs(1);

/// How often a new container's state is read while it is gated.
const POLL: Duration = Duration::from_millis(200);

impl Applier<'_> {
    /// Replaces the running containers `old` (one per replica number) of
    /// `resource` in `order`, in batches of the service's `parallelism`
    /// with its `delay` between them, each replica as [`Self::replace_one`]
    /// does, and
    /// shows how far it got in the apply's progress. Past
    /// `max_failure_ratio`, `failure_action` decides, the same for both
    /// orders: `continue` goes on with the other batches, `rollback` and
    /// `pause` stop at the batch that crossed it; then the apply fails
    /// naming the service — as [`BackendError::Paused`] with `pause` asked
    /// for (the environment does not roll back). Failures within the ratio
    /// are logged and the update succeeds.
    pub(super) async fn roll_out<'r>(
        &self,
        order: UpdateOrder,
        old: &[&LiveContainer],
        replica: &(dyn Fn(u32) -> spec::Replica<'r> + Sync),
        resource: &str,
        state: &State,
    ) -> Result<(), BackendError> {
        let Some(first) = old.first() else {
            return Ok(());
        };
        let service = replica(first.number).service;
        let config = &service.update_config;
        let batch = match config.parallelism {
            0 => old.len(),
            n => n as usize,
        };
        let tracked = self.track(resource, order, old.len());
        let mut failures = Vec::new();
        let mut tried = 0;
        for (i, chunk) in old.chunks(batch).enumerate() {
            if i > 0 && !config.delay.is_zero() {
                tokio::time::sleep(config.delay).await;
            }
            let results = futures_util::future::join_all(chunk.iter().map(|c| {
                let r = replica(c.number);
                let tracked = &tracked;
                async move {
                    let result = self
                        .replace_one(order, c, r, resource, state, tracked)
                        .await;
                    tracked.done();
                    result
                }
            }))
            .await;
            tried += chunk.len();
            failures.extend(results.into_iter().filter_map(Result::err));
            let ratio = failures.len() as f64 / old.len() as f64;
            if ratio > config.max_failure_ratio && config.failure_action != FailureAction::Continue
            {
                break;
            }
        }
        let ratio = failures.len() as f64 / old.len() as f64;
        if failures.is_empty() || ratio <= config.max_failure_ratio {
            for why in &failures {
                tracing::warn!(service = %resource, "{why} (within max_failure_ratio)");
            }
            return Ok(());
        }
        let (words, failed_new) = match order {
            UpdateOrder::StartFirst => ("start-first", 0),
            // The failed new containers stay: their old ones are gone.
            UpdateOrder::StopFirst => ("stop-first", failures.len()),
        };
        let message = format!(
            "{words} update failed ({} of {} replicas): {}",
            failures.len(),
            old.len(),
            failures.join("; ")
        );
        Err(match config.failure_action {
            // Swarm's `pause`, asked for in an `update_config`: the update
            // stops where it is; replicas already replaced keep the new
            // definition. With no `update_config` at all a failed
            // replacement takes the environment's failure path (rollback).
            FailureAction::Pause if config.from != ConfigFrom::Defaults => {
                let replaced = tried - failures.len();
                // Replicas this update left alone already ran it (an
                // update resumed after a pause).
                let replicas = (service.replicas as usize).max(old.len());
                let already = replicas - old.len();
                let failed = match failed_new {
                    0 => String::new(),
                    n => format!(", {n} failed it (left as they are, to inspect)"),
                };
                self.paused(
                    resource,
                    format!(
                        "{message}; update paused: {} of {replicas} replicas run the new \
                         definition{failed}, {} the old",
                        already + replaced,
                        old.len() - replaced - failed_new
                    ),
                )
            }
            _ => self.error(resource, message),
        })
    }

    /// One replica in `order`. The error is the reason, for the caller to
    /// name the service with.
    ///
    /// stop-first: the old container is stopped and removed (its
    /// `pre_stop` hooks, `stop_signal`, `stop_grace_period`), the new one
    /// created under the canonical name and gated as start-first's is; a
    /// new one that fails its gate is left as it is (its old one is gone;
    /// Swarm keeps a failed task too). start-first: new under a temporary
    /// name, gated, old out, renamed.
    async fn replace_one(
        &self,
        order: UpdateOrder,
        old: &LiveContainer,
        r: spec::Replica<'_>,
        resource: &str,
        state: &State,
        tracked: &Tracked<'_>,
    ) -> Result<(), String> {
        let canonical =
            project::container_name(&r.project.name, r.service_name, r.service, r.number);
        if order == UpdateOrder::StopFirst {
            tracing::info!(container = %canonical, "replacing stop-first");
            tracked.phase(Phase::StoppingOld);
            self.remove_container(old, Some(r.service), state)
                .await
                .map_err(|e| crate::diag::error_chain(&e))?;
            tracked.phase(Phase::StartingNew);
            let id = self
                .create_as(&r, &canonical, false, resource)
                .await
                .map_err(|e| {
                    format!("new replica {canonical}: {}", crate::diag::error_chain(&e))
                })?;
            tracked.phase(Phase::WaitingHealthy);
            return self.gate(&id, r.service).await.map_err(|why| {
                format!("new replica {canonical} {why}; its old container was already removed")
            });
        }
        let temporary = temporary_name(&canonical);
        tracing::info!(container = %canonical, replacement = %temporary, "replacing start-first");
        tracked.phase(Phase::StartingNew);
        // `aliased`: the failure came after it may have joined the
        // service's DNS on some network.
        let gated = match self.create_as(&r, &temporary, true, resource).await {
            Ok(id) => {
                tracked.phase(Phase::WaitingHealthy);
                match self.gate(&id, r.service).await {
                    Ok(()) => self
                        .join_aliases(&id, &r)
                        .await
                        .map(|()| id)
                        .map_err(|why| (why, true)),
                    Err(why) => Err((why, false)),
                }
            }
            Err(e) => Err((crate::diag::error_chain(&e), false)),
        };
        let id = match gated {
            Ok(id) => id,
            Err((why, aliased)) => {
                // Whatever was created goes; the old container never stopped.
                // Out of the service's DNS, it is removed at once.
                if aliased {
                    self.leave_dns(&temporary, &r).await;
                }
                let _ = self
                    .docker()
                    .remove_container(
                        &temporary,
                        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                    )
                    .await;
                return Err(format!(
                    "new replica {canonical} {why}; it was removed and {} kept running",
                    old.name
                ));
            }
        };
        tracked.phase(Phase::DrainingOld);
        self.leave_dns(&old.id, &r).await;
        self.remove_container(old, Some(r.service), state)
            .await
            .map_err(|e| crate::diag::error_chain(&e))?;
        self.docker()
            .rename_container(
                &id,
                RenameContainerOptionsBuilder::default()
                    .name(&canonical)
                    .build(),
            )
            .await
            .map_err(|e| format!("rename {temporary} to {canonical}: {e}"))
    }

    /// Gives the gated new container `id` the service's network aliases
    /// (it was created without them, so Docker's DNS did not send clients
    /// to it before it served): the engine sets aliases only when a
    /// container joins a network, so it leaves and rejoins each network
    /// with the endpoint settings of its replica. The old container still
    /// answers meanwhile.
    async fn join_aliases(&self, id: &str, r: &spec::Replica<'_>) -> Result<(), String> {
        let (body, extra) = spec::container(r);
        let first = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .into_iter()
            .flatten();
        for (network, endpoint) in first.chain(extra) {
            let request = NetworkDisconnectRequest {
                container: id.to_owned(),
                force: Some(false),
            };
            self.docker()
                .disconnect_network(&network, request)
                .await
                .map_err(|e| format!("could not leave {network} to take its aliases: {e}"))?;
            let request = NetworkConnectRequest {
                container: id.to_owned(),
                endpoint_config: Some(endpoint),
            };
            self.docker()
                .connect_network(&network, request)
                .await
                .map_err(|e| format!("could not rejoin {network} with its aliases: {e}"))?;
        }
        Ok(())
    }

    /// Takes a container (the old one, or a new one that failed once it had
    /// joined with aliases) out of its service's DNS before it is stopped,
    /// without cutting the requests it is serving. A stopping container stays in Docker's DNS until its
    /// process has exited, so clients keep being sent to it while it dies;
    /// and the engine drops a DNS alias only when the container leaves the
    /// network. So it leaves each network and at once rejoins it without
    /// aliases at the address it had (asked for where the network has a
    /// configured subnet; elsewhere the engine hands out the lowest free
    /// address, which is the one just released): a connection open to it —
    /// a request resolved to it just before — survives the gap through TCP
    /// retransmission (measured: a request in flight at a plain disconnect
    /// hung or failed about once in eight updates of two replicas). The
    /// embedded DNS lags the change, so the container is given [`DRAIN`]
    /// before it is stopped. A network it is not on (or a failure) is left
    /// to the removal.
    async fn leave_dns(&self, container: &str, r: &spec::Replica<'_>) {
        let addresses: HashMap<String, String> = self
            .docker()
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.network_settings)
            .and_then(|n| n.networks)
            .into_iter()
            .flatten()
            .filter_map(|(net, e)| Some((net, e.ip_address.filter(|a| !a.is_empty())?)))
            .collect();
        let networks = project::networks(r.project);
        let mut left = false;
        for key in project::service_networks(r.service) {
            let Some(net) = networks.get(&key) else {
                continue;
            };
            let request = NetworkDisconnectRequest {
                container: container.to_owned(),
                force: Some(true),
            };
            match self.docker().disconnect_network(&net.name, request).await {
                Ok(()) => left = true,
                Err(e) => {
                    tracing::debug!(%container, network = %net.name, "disconnect: {e}");
                    continue;
                }
            }
            let address = addresses.get(&net.name);
            let rejoin = |ipv4_address: Option<String>| NetworkConnectRequest {
                container: container.to_owned(),
                endpoint_config: Some(EndpointSettings {
                    ipam_config: ipv4_address.map(|a| EndpointIpamConfig {
                        ipv4_address: Some(a),
                        ..EndpointIpamConfig::default()
                    }),
                    ..EndpointSettings::default()
                }),
            };
            let mut joined = match address {
                Some(a) => {
                    self.docker()
                        .connect_network(&net.name, rejoin(Some(a.clone())))
                        .await
                }
                None => self.docker().connect_network(&net.name, rejoin(None)).await,
            };
            if joined.is_err() && address.is_some() {
                // No configured subnet: the engine refuses a chosen address.
                joined = self.docker().connect_network(&net.name, rejoin(None)).await;
            }
            if let Err(e) = joined {
                tracing::debug!(%container, network = %net.name, "rejoin without aliases: {e}");
            }
        }
        if left {
            tokio::time::sleep(DRAIN).await;
        }
    }

    /// Waits until the new container `id` is healthy (its healthcheck), or
    /// — without one — has kept running through `monitor` with no restart.
    async fn gate(&self, id: &str, service: &Service) -> Result<(), String> {
        let started = Instant::now();
        let deadline = started
            + self
                .backend
                .dependency_timeout
                .max(service.update_config.monitor);
        loop {
            let inspect = self
                .docker()
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
                .map_err(|e| format!("could not be inspected: {e}"))?;
            let st = inspect.state.unwrap_or_default();
            if matches!(
                st.status,
                Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
            ) {
                return Err(format!("exited with code {}", st.exit_code.unwrap_or(-1)));
            }
            if inspect.restart_count.unwrap_or(0) > 0 {
                return Err("restarted while it was gated".to_owned());
            }
            match st.health.as_ref().and_then(|h| h.status) {
                Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                Some(HealthStatusEnum::UNHEALTHY) => {
                    let last = st
                        .health
                        .and_then(|h| h.log)
                        .and_then(|log| log.into_iter().last())
                        .and_then(|l| l.output)
                        .map(|o| format!(": {}", o.trim()))
                        .unwrap_or_default();
                    return Err(format!("failed its healthcheck{last}"));
                }
                Some(HealthStatusEnum::STARTING) => {}
                None | Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) => {
                    if started.elapsed() >= service.update_config.monitor {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("was not healthy after {:?}", started.elapsed()));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compose::{Port, ServiceNetwork, UpdateConfig};

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
                subpath: None,
                source: Some("pgdata".into()),
                target: "/var/lib/postgresql/data".into(),
                read_only: false,
                no_copy: false,
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
                    subpath: None,
                    source: Some("assets".into()),
                    target: "/srv".into(),
                    read_only: true,
                    no_copy: false,
                },
                Mount::Volume {
                    subpath: None,
                    source: None,
                    target: "/tmp/cache".into(),
                    read_only: false,
                    no_copy: false,
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
    fn an_environment_default_order_never_overrules_the_safety_rules() {
        let from_env = |order| UpdateConfig {
            order: Some(order),
            from: ConfigFrom::Environment,
            ..UpdateConfig::default()
        };
        let mut named = Service {
            container_name: Some("proxy".into()),
            update_config: from_env(UpdateOrder::StartFirst),
            ..Service::default()
        };
        assert_eq!(order(&named).0, UpdateOrder::StopFirst);
        named.container_name = None;
        assert_eq!(
            order(&named),
            (
                UpdateOrder::StartFirst,
                "asked for by the environment's `update_config.order` in driftless.yaml; \
                 no container_name, fixed host port or address, or read-write named volume"
                    .into()
            )
        );
        named.update_config = from_env(UpdateOrder::StopFirst);
        assert_eq!(
            order(&named),
            (
                UpdateOrder::StopFirst,
                "asked for by the environment's `update_config.order` in driftless.yaml".into()
            )
        );
        // A rollback names its own key.
        named.update_config.rollback = true;
        assert!(order(&named).1.contains("`rollback_config.order`"));
    }

    #[test]
    fn an_explicit_order_wins_and_broken_replicas_have_none() {
        let mut database = Service {
            volumes: vec![Mount::Volume {
                subpath: None,
                source: Some("data".into()),
                target: "/data".into(),
                read_only: false,
                no_copy: false,
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
