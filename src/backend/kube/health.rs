//! Health, in the spirit of Argo CD's assessment: one verdict per desired
//! object, with the reason in words, for verify and the daemon's rollback.
//!
//! Deployment (observedGeneration caught up, updated = available = desired
//! replicas, progress deadline), StatefulSet, DaemonSet, Job (complete /
//! failed), Pod (phase, readiness, crash loops and image pull errors), PVC
//! (Bound), Service of type LoadBalancer (ingress assigned), HPA (able to
//! scale). Every other kind is healthy once it exists. The live objects come
//! from the same label-selected LISTs as the plan's.

use std::collections::BTreeMap;

use serde_json::Value;

use super::live::{ObjectKey, list};
use super::{KubeBackend, desired_objects, object};
use crate::backend::{BackendError, Context, Health, Verdict};
use crate::model::KubeObject;

/// One verdict per desired object, as of now.
pub async fn health(
    backend: &KubeBackend,
    objects: &[KubeObject],
    ctx: Context<'_>,
) -> Result<Vec<Verdict>, BackendError> {
    let desired = desired_objects(backend, objects, ctx.environment).await?;
    let selector = object::selector(ctx.environment, &backend.target);
    let mut listed: BTreeMap<(String, Option<String>), Vec<Value>> = BTreeMap::new();
    for d in &desired {
        let Some(r) = &d.resolved else { continue };
        let key = (d.group_kind.clone(), d.namespace.clone());
        if let std::collections::btree_map::Entry::Vacant(slot) = listed.entry(key) {
            slot.insert(list(backend, r, d.namespace.as_deref(), &selector).await?);
        }
    }
    let mut live: BTreeMap<ObjectKey, &Value> = BTreeMap::new();
    for ((gk, ns), items) in &listed {
        for item in items {
            if let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) {
                live.insert((gk.clone(), ns.clone(), name.to_owned()), item);
            }
        }
    }
    Ok(desired
        .iter()
        .map(|d| {
            let key = (
                d.group_kind.clone(),
                d.namespace.clone(),
                d.object.name.clone(),
            );
            let (health, reason) = match (&d.resolved, live.get(&key)) {
                (None, _) => (
                    Health::Progressing,
                    "its kind is not served yet (CRD not established)".to_owned(),
                ),
                (Some(_), None) => (Health::Progressing, "not created yet".to_owned()),
                (Some(_), Some(obj)) => assess(&d.group_kind, obj),
            };
            Verdict {
                target: backend.target.clone(),
                resource: d.resource(),
                health,
                reason,
            }
        })
        .collect())
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn condition<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The health of one live object of kind `group_kind` (`Kind.group`).
pub fn assess(group_kind: &str, obj: &Value) -> (Health, String) {
    match group_kind {
        "Deployment.apps" => deployment(obj),
        "StatefulSet.apps" => statefulset(obj),
        "DaemonSet.apps" => daemonset(obj),
        "Job.batch" => job(obj),
        "Pod" => pod(obj),
        "PersistentVolumeClaim" => pvc(obj),
        "Service" => service(obj),
        "HorizontalPodAutoscaler.autoscaling" => hpa(obj),
        _ => (Health::Healthy, "exists".to_owned()),
    }
}

/// False while the controller has not seen the latest spec.
fn observed(obj: &Value) -> bool {
    int(obj, "/status/observedGeneration") >= int(obj, "/metadata/generation")
}

fn deployment(obj: &Value) -> (Health, String) {
    if obj.pointer("/spec/paused") == Some(&Value::Bool(true)) {
        return (Health::Progressing, "rollout is paused".into());
    }
    if !observed(obj) {
        return (
            Health::Progressing,
            "waiting for the controller to observe the new generation".into(),
        );
    }
    if let Some(c) = condition(obj, "Progressing")
        && c["reason"] == "ProgressDeadlineExceeded"
    {
        return (
            Health::Degraded,
            format!("progress deadline exceeded: {}", text(c, "message")),
        );
    }
    let want = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int(obj, "/status/updatedReplicas");
    let replicas = int(obj, "/status/replicas");
    let available = int(obj, "/status/availableReplicas");
    if updated < want {
        (
            Health::Progressing,
            format!("{updated}/{want} replicas updated"),
        )
    } else if replicas > updated {
        (
            Health::Progressing,
            format!("{} old replicas pending termination", replicas - updated),
        )
    } else if available < updated {
        (
            Health::Progressing,
            format!("{available}/{want} replicas available"),
        )
    } else {
        (
            Health::Healthy,
            format!("{available}/{want} replicas available"),
        )
    }
}

fn statefulset(obj: &Value) -> (Health, String) {
    if !observed(obj) {
        return (
            Health::Progressing,
            "waiting for the controller to observe the new generation".into(),
        );
    }
    let want = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = int(obj, "/status/readyReplicas");
    if ready < want {
        return (
            Health::Progressing,
            format!("{ready}/{want} replicas ready"),
        );
    }
    if obj
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        == Some("OnDelete")
    {
        return (
            Health::Healthy,
            format!("{ready}/{want} replicas ready (OnDelete: pods update when deleted)"),
        );
    }
    let partition = int(obj, "/spec/updateStrategy/rollingUpdate/partition");
    let updated = int(obj, "/status/updatedReplicas");
    if partition > 0 {
        let expected = want - partition;
        return if updated < expected {
            (
                Health::Progressing,
                format!("{updated}/{expected} replicas updated (partition {partition})"),
            )
        } else {
            (
                Health::Healthy,
                format!("partitioned rollout done ({updated} updated)"),
            )
        };
    }
    let current = text(&obj["status"], "currentRevision");
    let update = text(&obj["status"], "updateRevision");
    if !update.is_empty() && current != update {
        return (
            Health::Progressing,
            format!("{updated}/{want} replicas at revision {update}"),
        );
    }
    (Health::Healthy, format!("{ready}/{want} replicas ready"))
}

fn daemonset(obj: &Value) -> (Health, String) {
    if !observed(obj) {
        return (
            Health::Progressing,
            "waiting for the controller to observe the new generation".into(),
        );
    }
    let want = int(obj, "/status/desiredNumberScheduled");
    let updated = int(obj, "/status/updatedNumberScheduled");
    let available = int(obj, "/status/numberAvailable");
    if obj
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        != Some("OnDelete")
        && updated < want
    {
        return (
            Health::Progressing,
            format!("{updated}/{want} pods updated"),
        );
    }
    if available < want {
        return (
            Health::Progressing,
            format!("{available}/{want} pods available"),
        );
    }
    (
        Health::Healthy,
        format!("{available}/{want} pods available"),
    )
}

fn job(obj: &Value) -> (Health, String) {
    if let Some(c) = condition(obj, "Failed")
        && c["status"] == "True"
    {
        return (
            Health::Degraded,
            format!("failed: {} {}", text(c, "reason"), text(c, "message"))
                .trim_end()
                .to_owned(),
        );
    }
    if let Some(c) = condition(obj, "Complete")
        && c["status"] == "True"
    {
        return (Health::Healthy, "complete".into());
    }
    if obj.pointer("/spec/suspend") == Some(&Value::Bool(true)) {
        return (Health::Progressing, "suspended".into());
    }
    (
        Health::Progressing,
        format!("running ({} active)", int(obj, "/status/active")),
    )
}

/// Waiting reasons that will not fix themselves.
const BAD_WAITING: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

fn pod(obj: &Value) -> (Health, String) {
    let statuses = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|k| obj["status"][k].as_array())
        .flatten();
    for s in statuses {
        if let Some(w) = s.pointer("/state/waiting") {
            let reason = text(w, "reason");
            if BAD_WAITING.contains(&reason.as_str()) {
                return (
                    Health::Degraded,
                    format!(
                        "container {}: {reason} {}",
                        text(s, "name"),
                        text(w, "message")
                    )
                    .trim_end()
                    .to_owned(),
                );
            }
        }
    }
    match obj.pointer("/status/phase").and_then(Value::as_str) {
        Some("Succeeded") => (Health::Healthy, "completed".into()),
        Some("Failed") => (
            Health::Degraded,
            format!("failed: {}", text(&obj["status"], "message")),
        ),
        Some("Running") => match condition(obj, "Ready") {
            Some(c) if c["status"] == "True" => (Health::Healthy, "running and ready".into()),
            _ if obj.pointer("/spec/restartPolicy").and_then(Value::as_str) != Some("Always")
                && obj.pointer("/spec/restartPolicy").is_some() =>
            {
                (Health::Progressing, "running".into())
            }
            _ => (Health::Progressing, "running, not ready".into()),
        },
        Some(phase) => (Health::Progressing, phase.to_lowercase()),
        None => (Health::Progressing, "not scheduled yet".into()),
    }
}

fn pvc(obj: &Value) -> (Health, String) {
    match obj.pointer("/status/phase").and_then(Value::as_str) {
        Some("Bound") => (Health::Healthy, "bound".into()),
        Some("Lost") => (Health::Degraded, "lost its volume".into()),
        _ => (Health::Progressing, "waiting to be bound".into()),
    }
}

fn service(obj: &Value) -> (Health, String) {
    if obj.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer") {
        return (Health::Healthy, "exists".into());
    }
    match obj
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
    {
        Some(ingress) if !ingress.is_empty() => {
            let at: Vec<String> = ingress
                .iter()
                .map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned()
                })
                .collect();
            (
                Health::Healthy,
                format!("load balancer at {}", at.join(", ")),
            )
        }
        _ => (
            Health::Progressing,
            "waiting for the load balancer to be assigned".into(),
        ),
    }
}

fn hpa(obj: &Value) -> (Health, String) {
    for kind in ["AbleToScale", "ScalingActive"] {
        if let Some(c) = condition(obj, kind)
            && c["status"] == "False"
            && c["reason"] != "ScalingDisabled"
        {
            return (
                Health::Degraded,
                format!(
                    "{kind} is false: {} {}",
                    text(c, "reason"),
                    text(c, "message")
                )
                .trim_end()
                .to_owned(),
            );
        }
    }
    if obj.pointer("/status/conditions").is_none() {
        return (
            Health::Progressing,
            "waiting for the autoscaler to report".into(),
        );
    }
    (
        Health::Healthy,
        format!(
            "{} current replicas, {} desired",
            int(obj, "/status/currentReplicas"),
            int(obj, "/status/desiredReplicas")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_rollout() {
        let d = |status: Value| {
            assess(
                "Deployment.apps",
                &json!({"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status}),
            )
        };
        assert_eq!(d(json!({"observedGeneration": 1})).0, Health::Progressing);
        let (h, r) = d(
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
        );
        assert_eq!(
            (h, r.as_str()),
            (Health::Progressing, "1/2 replicas available")
        );
        let (h, r) = d(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(
            (h, r.as_str()),
            (Health::Progressing, "1 old replicas pending termination")
        );
        assert_eq!(
            d(json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2})).0,
            Health::Healthy
        );
        let (h, r) = d(
            json!({"observedGeneration": 2, "conditions": [{"type": "Progressing",
            "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"x\" has timed out progressing."}]}),
        );
        assert_eq!(h, Health::Degraded);
        assert!(r.contains("timed out"), "{r}");
    }

    #[test]
    fn jobs_pods_pvcs_services_hpas() {
        let job = |c: Value| assess("Job.batch", &json!({"status": {"conditions": [c]}})).0;
        assert_eq!(
            job(json!({"type": "Complete", "status": "True"})),
            Health::Healthy
        );
        assert_eq!(
            job(json!({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"})),
            Health::Degraded
        );
        let pod = json!({"status": {"phase": "Running", "containerStatuses": [{"name": "app",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}});
        let (h, r) = assess("Pod", &pod);
        assert_eq!(h, Health::Degraded);
        assert!(r.contains("CrashLoopBackOff"));
        assert_eq!(
            assess("Pod", &json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})).0,
            Health::Healthy
        );
        assert_eq!(
            assess(
                "PersistentVolumeClaim",
                &json!({"status": {"phase": "Pending"}})
            )
            .0,
            Health::Progressing
        );
        assert_eq!(
            assess(
                "PersistentVolumeClaim",
                &json!({"status": {"phase": "Bound"}})
            )
            .0,
            Health::Healthy
        );
        assert_eq!(
            assess("Service", &json!({"spec": {"type": "ClusterIP"}})).0,
            Health::Healthy
        );
        assert_eq!(
            assess(
                "Service",
                &json!({"spec": {"type": "LoadBalancer"}, "status": {}})
            )
            .0,
            Health::Progressing
        );
        assert_eq!(
            assess("Service", &json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}})).1,
            "load balancer at 1.2.3.4"
        );
        assert_eq!(
            assess("HorizontalPodAutoscaler.autoscaling", &json!({"status": {"conditions": [{"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric"}]}})).0,
            Health::Degraded
        );
        assert_eq!(assess("ConfigMap", &json!({})).0, Health::Healthy);
    }

    #[test]
    fn statefulsets_and_daemonsets() {
        let sts = json!({"metadata": {"generation": 1}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 3,
                "currentRevision": "a", "updateRevision": "a"}});
        assert_eq!(assess("StatefulSet.apps", &sts).0, Health::Healthy);
        let mut rolling = sts.clone();
        rolling["status"]["updateRevision"] = json!("b");
        assert_eq!(assess("StatefulSet.apps", &rolling).0, Health::Progressing);
        let ds = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 1}});
        assert_eq!(assess("DaemonSet.apps", &ds).1, "1/2 pods available");
    }
}
