//! Subnets from the Docker target's `address_pools` for the project
//! networks that ask for none: the plan says which subnet each new network
//! gets (or refuses when the pools are used up), and the apply gives it
//! that subnet, checked again against the engine's networks at that moment.
//!
//! A network with its own `ipam`, a driver other than bridge, or IPv4
//! turned off is left to the engine, as before.

use bollard::Docker;
use bollard::query_parameters::ListNetworksOptions;

use super::live::Live;
use super::project;
use crate::backend::BackendError;
use crate::manifest::TargetKind;
use crate::model::TargetState;
use crate::model::compose::{Ipam, IpamPool, Network, Project};
use crate::plan::{Action, Change};
use crate::pools::{self, Ipv4Net, Pool};

/// The target's address pools (checked when the manifest was loaded).
pub fn of(desired: &TargetState) -> Vec<Pool> {
    match &desired.target.kind {
        TargetKind::Docker(d) => d
            .address_pools
            .iter()
            .filter_map(|p| p.check().ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether `net` takes its subnet from the pools.
pub fn wants_pool(pools: &[Pool], net: &Network) -> bool {
    !pools.is_empty()
        && !net.external
        && net.ipam.is_empty()
        && net.driver.as_deref().is_none_or(|d| d == "bridge")
        && net.enable_ipv4 != Some(false)
}

/// The IPv4 subnets of every network on the engine (one list call).
pub async fn used(docker: &Docker) -> Result<Vec<Ipv4Net>, bollard::errors::Error> {
    let networks = docker.list_networks(None::<ListNetworksOptions>).await?;
    Ok(networks
        .iter()
        .filter_map(|n| n.ipam.as_ref()?.config.as_ref())
        .flatten()
        .filter_map(|c| Ipv4Net::parse(c.subnet.as_deref()?).ok())
        .collect())
}

/// The first IPv4 subnet of a live network, as the engine reports it.
pub fn subnet_of(ipam: &Ipam) -> Option<Ipv4Net> {
    ipam.config
        .iter()
        .find_map(|p| Ipv4Net::parse(p.subnet.as_deref()?).ok())
}

/// The subnet for a new network, or why there is none.
pub fn pick(
    pools: &[Pool],
    used: &[Ipv4Net],
    preferred: Option<Ipv4Net>,
    network: &str,
    target: &str,
) -> Result<Ipv4Net, String> {
    pools::first_free(pools, used, preferred).ok_or_else(|| {
        let names: Vec<String> = pools.iter().map(ToString::to_string).collect();
        let total: u64 = pools.iter().map(Pool::subnet_count).sum();
        format!(
            "network `{network}` needs a subnet, and all {total} of the address pools {} are in \
             use on the engine; widen `address_pools` of target `{target}` in driftless.yaml, \
             or remove networks nothing uses (`docker network prune`)",
            names.join(", ")
        )
    })
}

/// `net`'s IPAM with `subnet` as its one pool.
pub fn ipam_with(subnet: Ipv4Net) -> Ipam {
    Ipam {
        config: vec![IpamPool {
            subnet: Some(subnet.to_string()),
            ..IpamPool::default()
        }],
        ..Ipam::default()
    }
}

/// The plan's note for a network given `subnet`.
pub fn detail(subnet: Ipv4Net) -> String {
    format!("subnet {subnet} from the target's address pools")
}

/// A refusal of the plan: the pools are used up.
pub fn refused(target: &str, message: String) -> BackendError {
    BackendError::Refused {
        target: target.to_owned(),
        message,
    }
}

/// Notes on each network the plan creates from the pools which subnet it
/// gets; refuses the plan when the pools are used up. Lists the engine's
/// networks once, and only when the plan creates such a network.
pub async fn plan(
    docker: &Docker,
    desired: &TargetState,
    projects: &[Project],
    live: &Live,
    changes: &mut [Change],
) -> Result<(), BackendError> {
    let pools = of(desired);
    let target = &desired.target.name;
    let mut taken: Option<Vec<Ipv4Net>> = None;
    for c in changes.iter_mut().filter(|c| c.resource.kind == "network") {
        if !matches!(c.action, Action::Create | Action::Recreate { .. }) {
            continue;
        }
        let Some(net) = projects
            .iter()
            .flat_map(project::networks)
            .map(|(_, n)| n)
            .find(|n| n.name == c.resource.name)
        else {
            continue;
        };
        if !wants_pool(&pools, &net) {
            continue;
        }
        let used = match &mut taken {
            Some(u) => u,
            None => taken.insert(used(docker).await.map_err(|e| BackendError::Unavailable {
                target: target.clone(),
                message: format!("list networks for the address pools: {e}"),
            })?),
        };
        let old = live
            .networks
            .iter()
            .find(|n| n.name == net.name)
            .and_then(|n| subnet_of(&n.ipam));
        // A recreated network gives its subnet back before it takes one.
        if let Some(old) = old {
            used.retain(|u| *u != old);
        }
        let subnet = pick(&pools, used, old, &net.name, target).map_err(|m| refused(target, m))?;
        used.push(subnet);
        c.detail = Some(match c.detail.take() {
            Some(d) => format!("{}; {d}", detail(subnet)),
            None => detail(subnet),
        });
    }
    Ok(())
}
