//! Applying a plan: each change in the plan's order, stopping at the first
//! hard error. Creates and updates are server-side applies with field
//! manager `driftless` (forced over other managers only with
//! `allow.force_conflicts`); CustomResourceDefinitions are waited on until
//! Established and discovery is refreshed before the objects after them;
//! the inventory is written from the plan's own list of kinds; prunes
//! delete in the background (404: already gone).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::Value;

use super::live::masked_message;
use super::object::MANAGER;
use super::plan::{api_for, inventory_body, is_inventory, kind_of_change};
use super::rest::status_code;
use super::{Desired, KubeBackend, desired_objects, kind_rank, masker_for};
use crate::backend::{ApplyReport, BackendError, Context};
use crate::model::KubeObject;
use crate::plan::{Action, Change, Resource};

const CRD_GK: &str = "CustomResourceDefinition.apiextensions.k8s.io";

/// Executes `changes` (from [`super::plan::plan`]) against the cluster.
pub async fn apply(
    backend: &KubeBackend,
    objects: &[KubeObject],
    changes: &[Change],
    ctx: Context<'_>,
) -> Result<ApplyReport, BackendError> {
    let mut report = ApplyReport::default();
    if changes.iter().all(|c| c.action == Action::Unchanged) {
        return Ok(report);
    }
    let masker = masker_for(objects, ctx.masker);
    let mut desired = desired_objects(backend, objects, ctx.environment).await?;
    let index: BTreeMap<Resource, usize> = desired
        .iter()
        .enumerate()
        .map(|(i, d)| (d.resource(), i))
        .collect();
    let mut waiting_crds: Vec<String> = Vec::new();

    for c in changes {
        if c.action == Action::Unchanged {
            continue;
        }
        if kind_rank(&c.resource.kind) > 1 && !waiting_crds.is_empty() {
            wait_established(backend, &waiting_crds, c).await?;
            waiting_crds.clear();
            backend.discovery.invalidate();
        }
        let fail = |message: String| BackendError::Apply {
            target: backend.target.clone(),
            resource: format!("{} {}", c.resource.kind, c.resource.name),
            message,
        };
        if is_inventory(c, ctx.environment, &backend.target) {
            let kinds: BTreeSet<(String, Option<String>)> = changes
                .iter()
                .filter(|o| !is_inventory(o, ctx.environment, &backend.target))
                .map(kind_of_change)
                .collect();
            let (body, _) =
                inventory_body(ctx.environment, &backend.target, &backend.namespace, &kinds);
            let r = backend
                .discovery
                .resolve(&backend.rest, "v1", "ConfigMap")
                .await
                .map_err(|e| backend.unavailable("discovery", &e))?
                .ok_or_else(|| fail("the cluster does not serve ConfigMaps".into()))?;
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            server_side_apply(backend, &r, Some(&backend.namespace), &name, &body, true)
                .await
                .map_err(|e| fail(masked_message(&e, &masker)))?;
            report.applied.push(c.clone());
            continue;
        }
        match c.action {
            Action::Create | Action::Update | Action::Recreate { .. } => {
                let i = *index.get(&c.resource).ok_or_else(|| {
                    fail("not in the desired state this plan was made from".into())
                })?;
                let d = &mut desired[i];
                if d.resolved.is_none() {
                    d.resolved = backend
                        .discovery
                        .resolve(&backend.rest, &d.object.api_version, &d.object.kind)
                        .await
                        .map_err(|e| backend.unavailable("discovery", &e))?;
                }
                let d: &Desired<'_> = d;
                let Some(r) = &d.resolved else {
                    return Err(fail(format!(
                        "the cluster does not serve kind {} in {}",
                        d.object.kind, d.object.api_version
                    )));
                };
                server_side_apply(
                    backend,
                    r,
                    d.namespace.as_deref(),
                    &d.object.name,
                    &d.body,
                    ctx.allow.force_conflicts,
                )
                .await
                .map_err(|e| {
                    let msg = masked_message(&e, &masker);
                    if status_code(&e) == Some(409) {
                        fail(format!(
                            "{msg}; another field manager owns these fields. Remove them from \
                             that manager's configuration, or set `allow.force_conflicts: true` \
                             for the environment to take them over"
                        ))
                    } else {
                        fail(msg)
                    }
                })?;
                if d.group_kind == CRD_GK {
                    waiting_crds.push(d.object.name.clone());
                }
            }
            Action::Delete => delete(backend, c)
                .await
                .map_err(|e| fail(masked_message(&e, &masker)))?,
            Action::Unchanged => {}
        }
        report.applied.push(c.clone());
    }
    if let Some(last) = changes.last()
        && !waiting_crds.is_empty()
    {
        wait_established(backend, &waiting_crds, last).await?;
        backend.discovery.invalidate();
    }
    Ok(report)
}

async fn server_side_apply(
    backend: &KubeBackend,
    r: &super::discovery::Resolved,
    namespace: Option<&str>,
    name: &str,
    body: &Value,
    force: bool,
) -> Result<(), kube::Error> {
    let api = api_for(backend, r, namespace);
    let mut params = PatchParams::apply(MANAGER);
    if force {
        params = params.force();
    }
    let patch = Patch::Apply(body);
    backend
        .rest
        .call(|| api.patch(name, &params, &patch))
        .await
        .map(|_| ())
}

async fn delete(backend: &KubeBackend, c: &Change) -> Result<(), kube::Error> {
    let Some(r) = backend
        .discovery
        .resolve_group_kind(&backend.rest, &c.resource.kind)
        .await?
    else {
        // The kind is gone from the server, and its objects with it.
        return Ok(());
    };
    let (namespace, name) = match c.resource.name.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, c.resource.name.as_str()),
    };
    let api = api_for(backend, &r, namespace);
    let params = DeleteParams::background();
    match backend.rest.call(|| api.delete(name, &params)).await {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Polls the CRDs until each reports the condition Established.
async fn wait_established(
    backend: &KubeBackend,
    names: &[String],
    next: &Change,
) -> Result<(), BackendError> {
    let r = backend
        .discovery
        .resolve(
            &backend.rest,
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
        )
        .await
        .map_err(|e| backend.unavailable("discovery", &e))?
        .ok_or_else(|| {
            backend.refused("the cluster does not serve CustomResourceDefinitions".into())
        })?;
    let api = api_for(backend, &r, None);
    let deadline = tokio::time::Instant::now() + backend.crd_timeout;
    for name in names {
        loop {
            let crd = backend
                .rest
                .call(|| api.get_opt(name))
                .await
                .map_err(|e| backend.unavailable(&format!("reading CRD {name}"), &e))?;
            let established = crd.as_ref().is_some_and(|crd| {
                crd.data["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Established" && c["status"] == "True")
                    })
            });
            if established {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::Apply {
                    target: backend.target.clone(),
                    resource: format!("{CRD_GK} {name}"),
                    message: format!(
                        "not Established within {}; {} {} and what follows were not applied",
                        crate::duration::format(backend.crd_timeout),
                        next.resource.kind,
                        next.resource.name
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}
