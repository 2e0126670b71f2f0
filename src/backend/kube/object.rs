//! Objects as driftless applies and shows them: inventory labels and the
//! applied-hash annotation added ([`prepare`]), the "unchanged since applied"
//! test ([`still_applied`]), server noise removed for diffs ([`strip_noise`],
//! what `kubectl diff` hides), Secret values blanked ([`blank_secrets`]).

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Field manager of every apply.
pub const MANAGER: &str = "driftless";
/// Inventory label: who manages the object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Inventory label: which environment applied the object.
pub const ENVIRONMENT: &str = "driftless.io/environment";
/// Annotation: sha256 of the object as driftless last applied it.
pub const APPLIED_HASH: &str = "driftless.io/applied-hash";
/// Annotation opting a Namespace, PVC or CRD into pruning: `"true"`.
pub const PRUNE: &str = "driftless.io/prune";
/// Inventory label: which target (of the environment) applied the object,
/// so two targets of one environment on one cluster never prune each other.
pub const TARGET: &str = "driftless.io/target";
/// Label marking the inventory ConfigMap (value: the environment).
pub const INVENTORY: &str = "driftless.io/inventory";

/// The label selector of everything one environment manages through one target.
pub fn selector(environment: &str, target: &str) -> String {
    format!("{MANAGED_BY}={MANAGER},{ENVIRONMENT}={environment},{TARGET}={target}")
}

/// What goes into the applied-hash: bumped when the prepared form changes,
/// so objects applied by an older driftless are re-diffed once.
const HASH_VERSION: &str = "driftless-kube-v1";

/// The object to apply: `body` with the namespace decided by discovery
/// (`None`: cluster-scoped, any namespace written is dropped), the
/// inventory labels, and the applied-hash annotation. Returns it with the hash.
pub fn prepare(
    body: &Value,
    environment: &str,
    target: &str,
    namespace: Option<&str>,
) -> (Value, String) {
    let mut obj = body.clone();
    if !obj.is_object() {
        obj = Value::Object(Map::new());
    }
    let root = obj.as_object_mut().expect("object");
    let meta = object_entry(root, "metadata");
    match namespace {
        Some(ns) => {
            meta.insert("namespace".into(), Value::String(ns.to_owned()));
        }
        None => {
            meta.remove("namespace");
        }
    }
    let labels = object_entry(meta, "labels");
    labels.insert(MANAGED_BY.into(), Value::String(MANAGER.into()));
    labels.insert(ENVIRONMENT.into(), Value::String(environment.into()));
    labels.insert(TARGET.into(), Value::String(target.into()));
    let annotations = object_entry(meta, "annotations");
    annotations.remove(APPLIED_HASH);
    if annotations.is_empty() {
        meta.remove("annotations");
    }
    let hash = hash_of(&obj);
    let meta = object_entry(obj.as_object_mut().expect("object"), "metadata");
    object_entry(meta, "annotations").insert(APPLIED_HASH.into(), Value::String(hash.clone()));
    (obj, hash)
}

fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("object")
}

/// sha256 over canonical JSON (keys sorted at every level), hex.
pub fn hash_of(value: &Value) -> String {
    let mut text = String::from(HASH_VERSION);
    text.push('\n');
    canonical(value, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::String(k.clone()));
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// The applied-hash annotation of a live object.
pub fn applied_hash(live: &Value) -> Option<&str> {
    live.pointer("/metadata/annotations")
        .and_then(|a| a.get(APPLIED_HASH))
        .and_then(Value::as_str)
}

/// True when `live` was last applied from exactly `prepared` (same hash)
/// and still holds every field driftless set, with the value it set.
///
/// This is how "the live object has not changed since driftless applied
/// it" is decided, without a call: neither `resourceVersion` (bumped by
/// every status write, so every Deployment would look changed after each
/// rollout step) nor `generation` (never bumped for ConfigMaps, Secrets or
/// Services, so a `kubectl edit` of one would go unseen) says that. Fields
/// driftless does not set — defaults, status, an HPA's `replicas` — are not
/// its business. Lists must match element by element (extra elements count
/// as a change); `null` in the manifest matches an absent field; a number
/// matches the string the server canonicalises it to (`cpu: 1` → `"1"`).
pub fn still_applied(live: &Value, prepared: &Value, hash: &str) -> bool {
    applied_hash(live) == Some(hash)
        && (contains(live, prepared)
            || string_data_folded(prepared).is_some_and(|folded| contains(live, &folded)))
}

/// A Secret's `stringData` folded into `data` (base64), as the API server
/// stores it; `None` for anything else.
fn string_data_folded(v: &Value) -> Option<Value> {
    if !is_secret(v) {
        return None;
    }
    let mut folded = v.clone();
    let Some(Value::Object(string_data)) = folded.as_object_mut()?.remove("stringData") else {
        return None;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let root = folded.as_object_mut()?;
    let data = object_entry(root, "data");
    for (k, val) in string_data {
        data.insert(
            k,
            Value::String(b64.encode(val.as_str().unwrap_or_default())),
        );
    }
    Some(folded)
}

fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (_, Value::Null) => true,
        (Value::Object(l), Value::Object(w)) => w.iter().all(|(k, wv)| match l.get(k) {
            Some(lv) => contains(lv, wv),
            None => wv.is_null(),
        }),
        (Value::Array(l), Value::Array(w)) => {
            l.len() == w.len() && l.iter().zip(w).all(|(lv, wv)| contains(lv, wv))
        }
        (Value::String(l), Value::Number(w)) => *l == w.to_string(),
        (l, w) => l == w,
    }
}

/// Removes what the server adds and nobody wrote, as `kubectl diff` does:
/// managedFields, resourceVersion, uid, generation, creationTimestamp,
/// selfLink, status, and driftless's own applied-hash annotation.
pub fn strip_noise(value: &mut Value) {
    let Some(root) = value.as_object_mut() else {
        return;
    };
    root.remove("status");
    if let Some(Value::Object(meta)) = root.get_mut("metadata") {
        for k in [
            "managedFields",
            "resourceVersion",
            "uid",
            "generation",
            "creationTimestamp",
            "selfLink",
        ] {
            meta.remove(k);
        }
        if let Some(Value::Object(a)) = meta.get_mut("annotations") {
            a.remove(APPLIED_HASH);
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
}

/// YAML for diffs (keys sorted, as serde_json keeps them).
pub fn display(value: &Value) -> String {
    let mut out = serde_saphyr::to_string(value)
        .unwrap_or_else(|_| serde_json::to_string_pretty(value).expect("plain data"));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Shown instead of a Secret value that is the same on both sides.
pub const SECRET_SAME: &str = "(masked)";
/// Shown instead of a Secret value that changes.
pub const SECRET_CHANGED: &str = "(masked, changed)";

fn is_secret(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("Secret")
        && v.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// Blanks the values under a Secret's `data` and `stringData` on both sides
/// of a diff, so the diff says *which* keys change and never what to.
/// The value on the desired side reads [`SECRET_CHANGED`] where it differs
/// from the live one. `kubectl.kubernetes.io/last-applied-configuration`
/// (which repeats the data) is dropped.
pub fn blank_secrets(live: Option<&mut Value>, desired: Option<&mut Value>) {
    let live_data = live
        .as_deref()
        .filter(|v| is_secret(v))
        .map(secret_entries)
        .unwrap_or_default();
    if let Some(d) = desired
        && is_secret(d)
    {
        blank(d, |key, value| {
            if live_data.iter().any(|(k, v)| k == key && *v == value) {
                SECRET_SAME
            } else {
                SECRET_CHANGED
            }
        });
    }
    if let Some(l) = live
        && is_secret(l)
    {
        blank(l, |_, _| SECRET_SAME);
    }
}

/// Every (key, decoded value) of a Secret's `data` and `stringData`.
fn secret_entries(secret: &Value) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(Value::Object(data)) = secret.get("data") {
        for (k, v) in data {
            let raw = v.as_str().unwrap_or_default();
            let decoded = b64.decode(raw).unwrap_or_else(|_| raw.as_bytes().to_vec());
            out.push((k.clone(), decoded));
        }
    }
    if let Some(Value::Object(data)) = secret.get("stringData") {
        for (k, v) in data {
            out.push((
                k.clone(),
                v.as_str().unwrap_or_default().as_bytes().to_vec(),
            ));
        }
    }
    out
}

fn blank(secret: &mut Value, mark: impl Fn(&str, Vec<u8>) -> &'static str) {
    let b64 = base64::engine::general_purpose::STANDARD;
    for field in ["data", "stringData"] {
        if let Some(Value::Object(data)) = secret.get_mut(field) {
            for (k, v) in data.iter_mut() {
                let raw = v.as_str().unwrap_or_default();
                let decoded = if field == "data" {
                    b64.decode(raw).unwrap_or_else(|_| raw.as_bytes().to_vec())
                } else {
                    raw.as_bytes().to_vec()
                };
                *v = Value::String(mark(k, decoded).to_owned());
            }
        }
    }
    if let Some(Value::Object(a)) = secret.pointer_mut("/metadata/annotations") {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The plain values in a Secret (decoded `data`, `stringData`), for the
/// masker that cleans error messages.
pub fn secret_values(secret: &Value) -> Vec<String> {
    if !is_secret(secret) {
        return Vec::new();
    }
    secret_entries(secret)
        .into_iter()
        .filter_map(|(_, v)| String::from_utf8(v).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prepare_adds_inventory_labels_and_a_stable_hash() {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "ignored-for-cluster"}, "data": {"a": "1"}});
        let (obj, hash) = prepare(&body, "prod", "k8s", Some("aiops"));
        assert_eq!(obj["metadata"]["namespace"], "aiops");
        assert_eq!(obj["metadata"]["labels"][MANAGED_BY], "driftless");
        assert_eq!(obj["metadata"]["labels"][ENVIRONMENT], "prod");
        assert_eq!(obj["metadata"]["annotations"][APPLIED_HASH], hash.as_str());
        // Same input, same hash; any change, another.
        assert_eq!(prepare(&body, "prod", "k8s", Some("aiops")).1, hash);
        assert_ne!(prepare(&body, "staging", "k8s", Some("aiops")).1, hash);
        let (cluster, _) = prepare(&body, "prod", "k8s", None);
        assert!(cluster["metadata"].get("namespace").is_none());
    }

    #[test]
    fn still_applied_ignores_server_additions_but_not_edits() {
        let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "creationTimestamp": null},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1",
                "resources": {"limits": {"cpu": 1}}}]}}}});
        let (prepared, hash) = prepare(&body, "prod", "k8s", Some("ns"));
        let mut live = prepared.clone();
        live["metadata"]["resourceVersion"] = json!("42");
        live["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
        live["spec"]["replicas"] = json!(3);
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
            json!("IfNotPresent");
        live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] =
            json!("1");
        live["status"] = json!({"replicas": 3});
        assert!(still_applied(&live, &prepared, &hash));
        let mut edited = live.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("x:2");
        assert!(!still_applied(&edited, &prepared, &hash));
        let mut extra = live.clone();
        extra["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar"}));
        assert!(!still_applied(&extra, &prepared, &hash));
        assert!(!still_applied(&live, &prepared, "other-hash"));
    }

    #[test]
    fn secret_string_data_matches_the_data_the_server_stores() {
        let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "stringData": {"TOKEN": "abc"}});
        let (prepared, hash) = prepare(&body, "prod", "k8s", Some("ns"));
        let mut live = prepared.clone();
        live.as_object_mut().unwrap().remove("stringData");
        live["data"] = json!({"TOKEN": "YWJj"});
        assert!(still_applied(&live, &prepared, &hash));
        live["data"]["TOKEN"] = json!("eHl6");
        assert!(!still_applied(&live, &prepared, &hash));
    }

    #[test]
    fn noise_is_stripped() {
        let mut v = json!({"kind": "ConfigMap", "metadata": {"name": "c", "uid": "u",
            "resourceVersion": "1", "generation": 1, "creationTimestamp": "t",
            "managedFields": [], "annotations": {APPLIED_HASH: "h"}}, "status": {}, "data": {}});
        strip_noise(&mut v);
        assert_eq!(
            v,
            json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}})
        );
    }

    #[test]
    fn secrets_are_blanked_pairwise() {
        let mut live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"a\":\"c2VjcmV0MQ==\"}}"}},
            "data": {"a": "c2VjcmV0MQ==", "b": "c2FtZQ=="}});
        let mut desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "c2VjcmV0Mg==", "b": "c2FtZQ=="}, "stringData": {"c": "new"}});
        blank_secrets(Some(&mut live), Some(&mut desired));
        assert_eq!(live["data"], json!({"a": SECRET_SAME, "b": SECRET_SAME}));
        assert_eq!(
            desired["data"],
            json!({"a": SECRET_CHANGED, "b": SECRET_SAME})
        );
        assert_eq!(desired["stringData"], json!({"c": SECRET_CHANGED}));
        assert!(!display(&live).contains("c2VjcmV0"));
        assert_eq!(
            secret_values(&json!({"apiVersion": "v1", "kind": "Secret",
            "data": {"a": "c2VjcmV0MQ=="}})),
            ["secret1"]
        );
    }
}
