//! Compose rules about a desired project that every stage needs: the
//! implicit `default` network, the networks a service joins, start order
//! and container names.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::compose::{Network, Project, Service};

/// The project's networks on the engine, keyed by their Compose key, with
/// the implicit `default` network added when a service uses it (as Compose
/// does: a service with no `networks:` and no `network_mode` joins it).
pub fn networks(project: &Project) -> BTreeMap<String, Network> {
    let mut out = project.networks.clone();
    let uses_default = project
        .services
        .values()
        .any(|s| service_networks(s).iter().any(|n| n == "default"));
    if uses_default && !out.contains_key("default") {
        out.insert(
            "default".to_owned(),
            Network {
                name: format!("{}_default", project.name),
                ..Network::default()
            },
        );
    }
    out
}

/// The network keys a service joins, as docker compose orders them: by
/// `priority`, highest first, then by name. The first one is the network
/// the container is created on.
pub fn service_networks(service: &Service) -> Vec<String> {
    if service.network_mode.is_some() {
        return Vec::new();
    }
    if service.networks.is_empty() {
        return vec!["default".to_owned()];
    }
    let mut keys: Vec<(&String, i64)> = service
        .networks
        .iter()
        .map(|(k, n)| (k, n.priority))
        .collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    keys.into_iter().map(|(k, _)| k.clone()).collect()
}

/// The services whose first container this one shares a namespace or the
/// volumes of (`network_mode`, `ipc`, `pid`: `service:x`; `volumes_from`).
pub fn shared_with(service: &Service) -> impl Iterator<Item = &str> {
    service
        .network_mode
        .as_deref()
        .and_then(|m| m.strip_prefix("service:"))
        .into_iter()
        .chain(service.namespaces.services())
        .chain(
            service
                .volumes_from
                .iter()
                .filter(|v| !v.container)
                .map(|v| v.source.as_str()),
        )
}

/// Services in start order: each after the services it depends on, ties
/// by name. A dependency cycle (rejected by check) falls back to name order
/// for the services in it.
pub fn start_order(project: &Project) -> Vec<&str> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(project.services.len());
    while order.len() < project.services.len() {
        let ready: Vec<&str> = project
            .services
            .iter()
            .filter(|(name, _)| !done.contains(name.as_str()))
            .filter(|(_, s)| {
                s.depends_on
                    .keys()
                    .all(|d| done.contains(d.as_str()) || !project.services.contains_key(d))
            })
            .map(|(name, _)| name.as_str())
            .collect();
        let next = if ready.is_empty() {
            // A cycle: take the first remaining service to make progress.
            project
                .services
                .keys()
                .map(String::as_str)
                .filter(|n| !done.contains(n))
                .take(1)
                .collect()
        } else {
            ready
        };
        for n in next {
            done.insert(n);
            order.push(n);
        }
    }
    order
}

/// The container name of replica `number` (`PROJECT-SERVICE-N`, or the
/// service's `container_name`).
pub fn container_name(project: &str, service_name: &str, service: &Service, number: u32) -> String {
    match &service.container_name {
        Some(name) => name.clone(),
        None => format!("{project}-{service_name}-{number}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compose::{Dependency, DependencyCondition};

    #[test]
    fn start_order_puts_dependencies_first() {
        let dep = |cond| Dependency {
            condition: cond,
            restart: false,
            required: true,
        };
        let mut web = Service::default();
        web.depends_on
            .insert("api".into(), dep(DependencyCondition::ServiceStarted));
        let mut api = Service::default();
        api.depends_on
            .insert("db".into(), dep(DependencyCondition::ServiceHealthy));
        let project = Project {
            disabled_services: Default::default(),
            name: "p".into(),
            services: [
                ("web".to_owned(), web),
                ("api".to_owned(), api),
                ("db".to_owned(), Service::default()),
                ("cache".to_owned(), Service::default()),
            ]
            .into(),
            networks: BTreeMap::new(),
            volumes: BTreeMap::new(),
            origin: Default::default(),
        };
        assert_eq!(start_order(&project), ["cache", "db", "api", "web"]);
        assert_eq!(networks(&project)["default"].name, "p_default");
    }
}
