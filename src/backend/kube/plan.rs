//! Planning: desired objects against [`Live`], in apply order.
//!
//! An object whose live copy carries the same applied-hash and still holds
//! every field driftless set is unchanged without a call
//! ([`object::still_applied`]). Any other object is applied with
//! `dryRun=All` (field manager `driftless`), and the diff is that result
//! against the live object, both stripped of server noise and with Secret
//! values blanked — what `kubectl diff` shows. Managed objects no longer
//! desired are pruned, except Namespaces, PVCs and CRDs without the
//! `driftless.io/prune: "true"` annotation; a plan deleting more than half
//! of the managed objects is refused unless `allow.mass_removal`.

use std::collections::BTreeSet;

use futures_util::StreamExt as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use super::live::{Live, ObjectKey, inventory_kinds, inventory_name, masked_message};
use super::object::{self, ENVIRONMENT, INVENTORY, MANAGER, PRUNE, TARGET};
use super::rest::status_code;
use super::{Desired, KubeBackend, desired_objects, kind_rank, masker_for, qualified};
use crate::backend::{BackendError, Context};
use crate::model::KubeObject;
use crate::plan::{Action, Change, Resource, unified_diff};
use crate::secrets::Masker;

/// Kinds never pruned without the opt-in annotation.
pub const PROTECTED: &[&str] = &[
    "Namespace",
    "PersistentVolumeClaim",
    "CustomResourceDefinition.apiextensions.k8s.io",
];

/// What a dry-run apply returned, and the conflict it had to force past.
struct DryRun {
    result: Value,
    conflict: Option<String>,
}

/// The dry-run apply of one desired object. Without `force`, a conflict
/// is noted and the dry run repeated with force, so the plan still shows
/// what applying would do.
async fn dry_run(
    backend: &KubeBackend,
    d: &Desired<'_>,
    force: bool,
) -> Result<DryRun, kube::Error> {
    let r = d.resolved.as_ref().expect("resolved objects only");
    let api = api_for(backend, r, d.namespace.as_deref());
    let mut params = PatchParams::apply(MANAGER).dry_run();
    if force {
        params = params.force();
    }
    let patch = Patch::Apply(&d.body);
    match backend
        .rest
        .call(|| api.patch(&d.object.name, &params, &patch))
        .await
    {
        Ok(obj) => Ok(DryRun {
            result: super::live::to_value(obj, r),
            conflict: None,
        }),
        Err(e) if status_code(&e) == Some(409) && !force => {
            let conflict = super::rest::message(&e);
            let forced = params.force();
            let obj = backend
                .rest
                .call(|| api.patch(&d.object.name, &forced, &patch))
                .await?;
            Ok(DryRun {
                result: super::live::to_value(obj, r),
                conflict: Some(conflict),
            })
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn api_for(
    backend: &KubeBackend,
    r: &super::discovery::Resolved,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let client = backend.rest.client.clone();
    match namespace {
        Some(ns) if r.namespaced => Api::namespaced_with(client, ns, &r.resource),
        _ => Api::all_with(client, &r.resource),
    }
}

/// True when a dry-run result is an object that already exists (its
/// resourceVersion is set, or another manager has fields in it).
fn already_exists(result: &Value) -> bool {
    let rv = result
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let others = result
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|e| e["manager"] != MANAGER));
    !rv.is_empty() || others
}

/// A masked unified diff between two objects (either may be absent).
pub(crate) fn object_diff(
    live: Option<&Value>,
    desired: Option<&Value>,
    masker: &Masker,
) -> Option<String> {
    let mut live = live.cloned();
    let mut desired = desired.cloned();
    if let Some(v) = live.as_mut() {
        object::strip_noise(v);
    }
    if let Some(v) = desired.as_mut() {
        object::strip_noise(v);
    }
    object::blank_secrets(live.as_mut(), desired.as_mut());
    let text = |v: Option<Value>| v.as_ref().map(object::display).unwrap_or_default();
    unified_diff(&text(live), &text(desired), masker)
}

/// Plans one desired object.
async fn decide(
    backend: &KubeBackend,
    d: &Desired<'_>,
    live: &Live,
    masker: &Masker,
    namespaces_created: &BTreeSet<String>,
    ctx: Context<'_>,
) -> Result<Change, BackendError> {
    let mut change = Change {
        target: backend.target.clone(),
        resource: d.resource(),
        action: Action::Unchanged,
        detail: None,
        diff: None,
    };
    if let Some(crd) = &d.pending_crd {
        change.action = Action::Create;
        change.detail = Some(format!(
            "its kind is defined by CustomResourceDefinition {crd} in this commit; \
             applied once that is established"
        ));
        change.diff = object_diff(None, Some(&d.body), masker);
        return Ok(change);
    }
    let key: ObjectKey = (
        d.group_kind.clone(),
        d.namespace.clone(),
        d.object.name.clone(),
    );
    let mut live_obj = live.objects.get(&key).cloned();
    if let Some(l) = &live_obj
        && object::still_applied(l, &d.body, &d.hash)
    {
        return Ok(change);
    }
    let force = ctx.allow.force_conflicts;
    let dry = match dry_run(backend, d, force).await {
        // The namespace is new in this commit: the server cannot diff into it yet.
        Err(e)
            if status_code(&e) == Some(404)
                && live_obj.is_none()
                && d.namespace
                    .as_ref()
                    .is_some_and(|ns| namespaces_created.contains(ns)) =>
        {
            change.action = Action::Create;
            change.detail = Some(format!(
                "its namespace {} is created by this plan; the server diffs it once that exists",
                d.namespace.as_deref().unwrap_or_default()
            ));
            change.diff = object_diff(None, Some(&d.body), masker);
            return Ok(change);
        }
        other => other,
    };
    let dry = dry.map_err(|e| {
        let msg = format!("{}: {}", d.object.key(), masked_message(&e, masker));
        match status_code(&e) {
            Some(code) if (400..500).contains(&code) && code != 429 => backend.refused(format!(
                "{msg} (dry-run apply of {}:{})",
                d.object.origin.file, d.object.origin.line
            )),
            _ => BackendError::Unavailable {
                target: backend.target.clone(),
                message: msg,
            },
        }
    })?;
    let mut details = Vec::new();
    if live_obj.is_none() && already_exists(&dry.result) {
        // Not labelled for this environment, yet there: read it for the diff.
        let r = d.resolved.as_ref().expect("resolved");
        let api = api_for(backend, r, d.namespace.as_deref());
        match backend.rest.call(|| api.get_opt(&d.object.name)).await {
            Ok(Some(obj)) => {
                let v = super::live::to_value(obj, r);
                let label = |key: &str| {
                    v.pointer("/metadata/labels")
                        .and_then(|l| l.get(key))
                        .and_then(Value::as_str)
                };
                if let Some(env) = label(ENVIRONMENT) {
                    let target = label(TARGET).unwrap_or("?");
                    if env != ctx.environment || target != backend.target {
                        return Err(backend.refused(format!(
                            "{} is managed by environment `{env}` (target `{target}`) on this \
                             cluster; two environments or targets cannot own one object",
                            d.object.key()
                        )));
                    }
                }
                details.push(
                    "exists without this environment's labels (made by hand or another tool): \
                     applying adopts it"
                        .to_owned(),
                );
                live_obj = Some(v);
            }
            Ok(None) => {}
            Err(e) => return Err(backend.unavailable(&format!("reading {}", d.object.key()), &e)),
        }
    }
    change.diff = object_diff(live_obj.as_ref(), Some(&dry.result), masker);
    change.action = match (&live_obj, &change.diff) {
        (None, _) => Action::Create,
        (Some(_), Some(_)) => Action::Update,
        (Some(l), None) if object::applied_hash(l) == Some(d.hash.as_str()) => Action::Unchanged,
        (Some(_), None) => {
            details.push(
                "only driftless's applied-hash annotation changes (the server stores this \
                 manifest's change as it was)"
                    .to_owned(),
            );
            Action::Update
        }
    };
    if let Some(conflict) = dry.conflict
        && change.action != Action::Unchanged
    {
        details.push(format!(
            "conflict with another field manager: {}; apply fails unless the environment sets \
             allow.force_conflicts",
            masker.mask(&conflict)
        ));
    }
    if !details.is_empty() {
        change.detail = Some(details.join("; "));
    }
    Ok(change)
}

/// The inventory ConfigMap for a set of (`Kind.group`, namespace) pairs.
pub fn inventory_body(
    environment: &str,
    target: &str,
    namespace: &str,
    kinds: &BTreeSet<(String, Option<String>)>,
) -> (Value, String) {
    let text: String = kinds
        .iter()
        .map(|(gk, ns)| match ns {
            Some(ns) => format!("{gk} {ns}\n"),
            None => format!("{gk}\n"),
        })
        .collect();
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": inventory_name(environment, target),
            "labels": {INVENTORY: environment},
            "annotations": {
                "driftless.io/description": "the kinds and namespaces driftless manages objects of for this environment; it lists them to find objects to prune"
            }
        },
        "data": {"kinds": text}
    });
    object::prepare(&body, environment, target, Some(namespace))
}

/// The (`Kind.group`, namespace) of a planned change.
pub fn kind_of_change(c: &Change) -> (String, Option<String>) {
    let ns = c.resource.name.split_once('/').map(|(ns, _)| ns.to_owned());
    (c.resource.kind.clone(), ns)
}

/// Plans every desired object and every prune, in apply order.
pub async fn plan(
    backend: &KubeBackend,
    objects: &[KubeObject],
    live: &Live,
    ctx: Context<'_>,
) -> Result<Vec<Change>, BackendError> {
    let masker = masker_for(objects, ctx.masker);
    let mut desired = desired_objects(backend, objects, ctx.environment).await?;
    desired.sort_by_key(|d| kind_rank(&d.group_kind));

    let masker_ref = &masker;
    // Namespaces of this commit that do not exist as managed objects yet.
    let namespaces_created: BTreeSet<String> = desired
        .iter()
        .filter(|d| d.group_kind == "Namespace")
        .filter(|d| {
            !live
                .objects
                .contains_key(&("Namespace".to_owned(), None, d.object.name.clone()))
        })
        .map(|d| d.object.name.clone())
        .collect();
    let created = &namespaces_created;
    // Collected first: a lazy `map` here makes the future's Send bound
    // higher-ranked, which rustc cannot prove.
    let pending: Vec<_> = desired
        .iter()
        .map(|d| decide(backend, d, live, masker_ref, created, ctx))
        .collect();
    let decided: Vec<Result<Change, BackendError>> = futures_util::stream::iter(pending)
        .buffered(backend.concurrency)
        .collect()
        .await;
    let mut changes = decided.into_iter().collect::<Result<Vec<_>, _>>()?;

    // Prunes: managed objects no longer desired.
    let desired_keys: BTreeSet<ObjectKey> = desired
        .iter()
        .map(|d| {
            (
                d.group_kind.clone(),
                d.namespace.clone(),
                d.object.name.clone(),
            )
        })
        .collect();
    let mut prunes = Vec::new();
    for ((gk, ns, name), obj) in &live.objects {
        if desired_keys.contains(&(gk.clone(), ns.clone(), name.clone())) {
            continue;
        }
        let opted_in = obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(PRUNE))
            .and_then(Value::as_str)
            == Some("true");
        let kind = super::discovery::split_group_kind(gk).1;
        let mut c = Change {
            target: backend.target.clone(),
            resource: Resource::new(gk, qualified(ns.as_deref(), name)),
            action: Action::Delete,
            detail: Some("no longer in the repo".to_owned()),
            diff: None,
        };
        if PROTECTED.contains(&gk.as_str()) && !opted_in {
            c.action = Action::Unchanged;
            c.detail = Some(format!(
                "kept: no longer in the repo, but a {kind} is deleted only when it carries the \
                 annotation {PRUNE}: \"true\""
            ));
        } else if gk == "PersistentVolumeClaim" && !ctx.allow.prune_volumes {
            c.action = Action::Unchanged;
            c.detail = Some(
                "kept: no longer in the repo and annotated for pruning, but the environment does \
                 not set allow.prune_volumes"
                    .to_owned(),
            );
        }
        prunes.push(c);
    }
    prunes.sort_by_key(|c| std::cmp::Reverse(kind_rank(&c.resource.kind)));
    let deletes = prunes.iter().filter(|c| c.action == Action::Delete).count();
    if deletes > 0 && deletes * 2 > live.objects.len() && !ctx.allow.mass_removal {
        return Err(backend.refused(format!(
            "this plan deletes {deletes} of the {} objects environment `{}` manages here; \
             more than half looks like a mistake (a wrong path glob, an emptied values file). \
             If it is intended, set `allow.mass_removal: true` for the environment",
            live.objects.len(),
            ctx.environment
        )));
    }

    // The inventory goes after Namespaces and CRDs, before everything else.
    if !changes.is_empty() || !prunes.is_empty() || live.inventory.is_some() {
        let kinds: BTreeSet<(String, Option<String>)> =
            changes.iter().chain(&prunes).map(kind_of_change).collect();
        let old = live.inventory.as_ref().map(inventory_kinds);
        let text = |k: &BTreeSet<(String, Option<String>)>| {
            inventory_body(ctx.environment, &backend.target, &backend.namespace, k).0["data"]["kinds"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let action = match &old {
            None => Action::Create,
            Some(old) if *old == kinds => Action::Unchanged,
            Some(_) => Action::Update,
        };
        let diff = match (&old, &action) {
            (Some(old), Action::Update) => unified_diff(&text(old), &text(&kinds), &masker),
            _ => None,
        };
        let inventory = Change {
            target: backend.target.clone(),
            resource: Resource::new(
                "ConfigMap",
                qualified(
                    Some(&backend.namespace),
                    &inventory_name(ctx.environment, &backend.target),
                ),
            ),
            action,
            detail: Some(format!(
                "driftless's inventory: the kinds this environment has objects of ({} entries)",
                kinds.len()
            )),
            diff,
        };
        let at = changes
            .iter()
            .position(|c| kind_rank(&c.resource.kind) > 1)
            .unwrap_or(changes.len());
        changes.insert(at, inventory);
    }
    changes.extend(prunes);
    Ok(changes)
}

/// True when a change is the inventory ConfigMap of `environment`.
pub fn is_inventory(c: &Change, environment: &str, target: &str) -> bool {
    c.resource.kind == "ConfigMap"
        && c.resource.name.rsplit('/').next() == Some(inventory_name(environment, target).as_str())
}
