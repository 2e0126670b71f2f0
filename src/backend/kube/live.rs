//! Reading live state: one label-selected LIST per kind and namespace, never
//! a GET per object.
//!
//! Which kinds to list comes from the desired objects and from the
//! inventory — a ConfigMap `driftless-inventory-<env>-<target>` in the target's
//! namespace whose `kinds` lists every `Kind.group namespace` the
//! environment has objects of — so an object whose kind left the repo
//! altogether is still found and pruned (the idea of kubectl's ApplySet).
//! The inventory is itself found by the LIST of ConfigMaps in the target
//! namespace, which the plan needs anyway.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt as _;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::discovery::Resolved;
use super::object::{self, INVENTORY};
use super::rest::{self, status_code};
use super::{KubeBackend, desired_objects};
use crate::backend::BackendError;
use crate::model::KubeObject;

/// (`Kind.group`, namespace, name) of a live object.
pub type ObjectKey = (String, Option<String>, String);

/// The managed objects of one environment on one cluster.
#[derive(Debug, Default, Clone)]
pub struct Live {
    /// Objects carrying the environment's inventory labels, the inventory
    /// ConfigMap excepted.
    pub objects: BTreeMap<ObjectKey, Value>,
    /// The inventory ConfigMap, when there is one.
    pub inventory: Option<Value>,
    /// (`Kind.group`, namespace) pairs that were listed.
    pub listed: BTreeSet<(String, Option<String>)>,
}

/// Name of the inventory ConfigMap of an environment's target.
pub fn inventory_name(environment: &str, target: &str) -> String {
    format!("driftless-inventory-{environment}-{target}")
}

/// The `Kind.group [namespace]` entries of an inventory ConfigMap.
pub fn inventory_kinds(inventory: &Value) -> BTreeSet<(String, Option<String>)> {
    inventory["data"]["kinds"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let gk = parts.next()?.to_owned();
            Some((gk, parts.next().map(str::to_owned)))
        })
        .collect()
}

/// Lists the managed objects of one kind in one namespace (all of a
/// cluster-scoped kind). A kind the server no longer serves lists empty.
pub async fn list(
    backend: &KubeBackend,
    resolved: &Resolved,
    namespace: Option<&str>,
    selector: &str,
) -> Result<Vec<Value>, BackendError> {
    let client = backend.rest.client.clone();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) if resolved.namespaced => Api::namespaced_with(client, ns, &resolved.resource),
        _ => Api::all_with(client, &resolved.resource),
    };
    let params = ListParams::default().labels(selector);
    let list = match backend.rest.call(|| api.list(&params)).await {
        Ok(list) => list,
        Err(e) if status_code(&e) == Some(404) => return Ok(Vec::new()),
        Err(e) => {
            return Err(backend.unavailable(
                &format!(
                    "listing {} in {}",
                    resolved.resource.plural,
                    namespace.unwrap_or("the cluster")
                ),
                &e,
            ));
        }
    };
    Ok(list
        .items
        .into_iter()
        .map(|item| to_value(item, resolved))
        .collect())
}

/// A listed object as JSON, with the apiVersion and kind a LIST leaves out.
pub fn to_value(item: DynamicObject, resolved: &Resolved) -> Value {
    let mut v = serde_json::to_value(item).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            Value::String(resolved.resource.api_version.clone()),
        );
        map.insert("kind".into(), Value::String(resolved.resource.kind.clone()));
    }
    v
}

fn name_of(v: &Value) -> Option<String> {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Reads everything the environment manages that plan needs to see.
pub async fn read(
    backend: &KubeBackend,
    objects: &[KubeObject],
    environment: &str,
) -> Result<Live, BackendError> {
    let selector = object::selector(environment, &backend.target);
    let mut live = Live::default();

    // The target namespace's ConfigMaps first: the inventory is among them.
    let configmap = backend
        .discovery
        .resolve(&backend.rest, "v1", "ConfigMap")
        .await
        .map_err(|e| backend.unavailable("discovery", &e))?
        .ok_or_else(|| backend.refused("the cluster does not serve ConfigMaps".into()))?;
    let ns = backend.namespace.clone();
    for cm in list(backend, &configmap, Some(&ns), &selector).await? {
        if cm
            .pointer("/metadata/labels")
            .and_then(|l| l.get(INVENTORY))
            .is_some()
        {
            if name_of(&cm).as_deref()
                == Some(inventory_name(environment, &backend.target).as_str())
            {
                live.inventory = Some(cm);
            }
            continue;
        }
        if let Some(name) = name_of(&cm) {
            live.objects
                .insert(("ConfigMap".into(), Some(ns.clone()), name), cm);
        }
    }
    live.listed.insert(("ConfigMap".into(), Some(ns)));

    // What else to list: every desired kind and namespace, then what the
    // inventory remembers.
    let mut to_list: BTreeMap<(String, Option<String>), Resolved> = BTreeMap::new();
    for d in desired_objects(backend, objects, environment).await? {
        if let Some(r) = d.resolved {
            to_list
                .entry((d.group_kind.clone(), d.namespace.clone()))
                .or_insert(r);
        }
    }
    let remembered = live
        .inventory
        .as_ref()
        .map(inventory_kinds)
        .unwrap_or_default();
    for (gk, ns) in remembered {
        if to_list.contains_key(&(gk.clone(), ns.clone())) {
            continue;
        }
        match backend
            .discovery
            .resolve_group_kind(&backend.rest, &gk)
            .await
            .map_err(|e| backend.unavailable("discovery", &e))?
        {
            Some(r) => {
                let ns = if r.namespaced { ns } else { None };
                to_list.insert((gk, ns), r);
            }
            None => tracing::warn!(
                kind = %gk,
                "the inventory lists a kind the cluster no longer serves; its objects cannot be pruned"
            ),
        }
    }
    to_list.retain(|key, _| !live.listed.contains(key));

    let selector = &selector;
    let mut lists =
        futures_util::stream::iter(to_list.into_iter().map(|((gk, ns), r)| async move {
            let items = list(backend, &r, ns.as_deref(), selector).await;
            (gk, ns, items)
        }))
        .buffer_unordered(backend.concurrency);
    while let Some((gk, ns, items)) = lists.next().await {
        for item in items? {
            let Some(name) = name_of(&item) else { continue };
            let item_ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned);
            live.objects.insert((gk.clone(), item_ns, name), item);
        }
        live.listed.insert((gk, ns));
    }
    Ok(live)
}

/// The message of a failed request, masked.
pub(crate) fn masked_message(e: &kube::Error, masker: &crate::secrets::Masker) -> String {
    masker.mask(&rest::message(e)).into_owned()
}
