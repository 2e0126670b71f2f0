//! A fake Kubernetes API server for the Kubernetes backend's tests. It is a
//! fake, not a cluster: just enough of the API, over real HTTP on
//! 127.0.0.1, for the real kube client to plan, apply, prune and read
//! health against.
//!
//! What it does:
//! - discovery: `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>` for a
//!   fixed set of built-in kinds plus the kinds of applied CRDs (listed once
//!   Established, which takes [`FakeApiServer::set_crd_delay`]);
//! - GET of one object, LIST per kind (in a namespace or across all) with
//!   equality label selectors (`a=b`, `a!=b`, `a`), items without
//!   apiVersion/kind as a real server sends them;
//! - PATCH `application/apply-patch+yaml` (server-side apply) with
//!   `fieldManager` (required), `force` and `dryRun=All`; namespaced objects
//!   need their Namespace to exist (404 otherwise);
//! - field ownership per manager, at the level of leaf fields (maps are
//!   recursed, lists are atomic): applying a value another manager owns is
//!   a 409 Conflict unless forced; fields a manager stops applying are
//!   removed unless someone else owns them; `managedFields` is reported;
//! - DELETE (a Namespace takes its objects with it);
//! - `resourceVersion`, `uid`, `creationTimestamp`, and `generation`
//!   (bumped when anything outside metadata and status changes);
//! - hooks: set an object's status, edit it as another manager (an Update,
//!   like `kubectl edit`), finish every rollout, insert objects, inject 429 /
//!   5xx answers, and a log of every request (with the caller's bearer
//!   token, so tests tell replicas apart);
//! - POST (create; 409 AlreadyExists) and PUT (replace; 409 Conflict when
//!   the body's `metadata.resourceVersion` is not the stored one, 404 when
//!   missing) of any modelled kind — what leader election with
//!   `coordination.k8s.io/v1` Leases needs. They keep no field ownership
//!   (a PUT replaces the object; `managedFields` is not updated) and do not
//!   require the namespace to exist.
//!
//! What it does not model: defaulting (no `imagePullPolicy`, no
//! `strategy`), validation and admission, conversion between versions,
//! merge keys inside lists (`containers` by name: a list is owned and
//! replaced whole), `stringData` folding into `data`, strategic-merge,
//! JSON and merge patches, watches, subresources (`/status`,
//! `/scale`), field and set-based label selectors, pagination
//! (`limit`/`continue`), controllers (nothing rolls out unless a test says
//! so), finalizers and garbage collection of owned objects, RBAC,
//! authentication (the token is only logged), aggregated discovery, and
//! resourceVersion preconditions on anything but PUT.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

type FieldPath = Vec<String>;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    pub status: u16,
    /// The bearer token the caller sent (empty without one).
    pub who: String,
}

impl Logged {
    pub fn is_discovery(&self) -> bool {
        self.method == "GET"
            && (self.path == "/api"
                || self.path == "/apis"
                || self.path.split('/').filter(|s| !s.is_empty()).count()
                    == if self.path.starts_with("/api/") { 2 } else { 3 })
    }
    pub fn is_list(&self) -> bool {
        self.method == "GET" && !self.is_discovery() && self.query.contains_key("labelSelector")
    }
    pub fn is_patch(&self) -> bool {
        self.method == "PATCH"
    }
    pub fn is_dry_run(&self) -> bool {
        self.is_patch() && self.query.get("dryRun").map(String::as_str) == Some("All")
    }
    pub fn is_delete(&self) -> bool {
        self.method == "DELETE"
    }
    /// The namespace in the request's path, if any.
    pub fn namespace(&self) -> Option<&str> {
        let mut segs = self.path.split('/');
        segs.by_ref().find(|s| *s == "namespaces")?;
        segs.next()
    }
}

#[derive(Debug, Clone)]
struct ResourceType {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespaced: bool,
    /// CRD kinds: when they are served (None: built in).
    established_at: Option<Instant>,
}

impl ResourceType {
    fn served(&self) -> bool {
        self.established_at.is_none_or(|t| Instant::now() >= t)
    }
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Stored {
    object: Value,
    /// manager → (operation, fields it owns)
    owners: BTreeMap<String, (String, BTreeSet<FieldPath>)>,
}

/// (group, plural, namespace or "", name)
type Key = (String, String, String, String);

#[derive(Debug, Default)]
struct Inner {
    types: Vec<ResourceType>,
    objects: BTreeMap<Key, Stored>,
    rv: u64,
    uid: u64,
    log: Vec<Logged>,
    faults: VecDeque<u16>,
    crd_delay: Duration,
}

type Shared = Arc<Mutex<Inner>>;

/// The fake API server; stops when dropped.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const BUILT_IN: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "Namespace", "namespaces", false),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "Secret", "secrets", true),
    ("", "v1", "Service", "services", true),
    ("", "v1", "Pod", "pods", true),
    ("", "v1", "ServiceAccount", "serviceaccounts", true),
    (
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
    ),
    ("", "v1", "PersistentVolume", "persistentvolumes", false),
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "StatefulSet", "statefulsets", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    ("batch", "v1", "Job", "jobs", true),
    ("batch", "v1", "CronJob", "cronjobs", true),
    ("networking.k8s.io", "v1", "Ingress", "ingresses", true),
    (
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
    ),
    (
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
    ),
    (
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
    ),
    ("coordination.k8s.io", "v1", "Lease", "leases", true),
    (
        "apiregistration.k8s.io",
        "v1",
        "APIService",
        "apiservices",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
    ),
];

impl FakeApiServer {
    /// Starts on 127.0.0.1 and an ephemeral port.
    pub async fn start() -> FakeApiServer {
        let inner = Inner {
            types: BUILT_IN
                .iter()
                .map(|(g, v, k, p, n)| ResourceType {
                    group: (*g).into(),
                    version: (*v).into(),
                    kind: (*k).into(),
                    plural: (*p).into(),
                    namespaced: *n,
                    established_at: None,
                })
                .collect(),
            ..Inner::default()
        };
        let state: Shared = Arc::new(Mutex::new(inner));
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeApiServer { addr, state, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap()
    }

    /// Writes a kubeconfig pointing at this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// The next requests are answered with these statuses, in order.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.lock().faults.extend(statuses.iter().copied());
    }

    /// CRDs applied from now on are Established (and their kinds served)
    /// this long after they are created.
    pub fn set_crd_delay(&self, delay: Duration) {
        self.lock().crd_delay = delay;
    }

    /// One stored object, as stored.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let inner = self.lock();
        let key = inner.key_of(api_version, kind, ns, name)?;
        inner.objects.get(&key).map(|s| s.object.clone())
    }

    /// Every stored object of a kind.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        self.lock()
            .objects
            .values()
            .filter(|s| s.object["kind"] == kind)
            .map(|s| s.object.clone())
            .collect()
    }

    /// Number of stored objects.
    pub fn count(&self) -> usize {
        self.lock().objects.len()
    }

    /// Replaces an object's status (as a controller would).
    pub fn set_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        status: Value,
    ) {
        let mut inner = self.lock();
        let key = inner
            .key_of(api_version, kind, ns, name)
            .expect("known kind");
        let rv = inner.next_rv();
        let stored = inner.objects.get_mut(&key).expect("object exists");
        stored.object["status"] = status;
        stored.object["metadata"]["resourceVersion"] = json!(rv);
    }

    /// Edits an object as `manager` with an Update (what `kubectl edit` or
    /// `kubectl scale` does): changed fields become that manager's.
    pub fn update_as(
        &self,
        manager: &str,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) {
        let mut inner = self.lock();
        let key = inner
            .key_of(api_version, kind, ns, name)
            .expect("known kind");
        let rv = inner.next_rv();
        let stored = inner.objects.get_mut(&key).expect("object exists");
        let before: BTreeMap<FieldPath, Value> = leaves(&stored.object).into_iter().collect();
        let old_body = body_of(&stored.object);
        edit(&mut stored.object);
        let after = leaves(&stored.object);
        for (path, value) in after {
            if before.get(&path) != Some(&value) {
                for (_, (_, fields)) in stored.owners.iter_mut() {
                    fields.remove(&path);
                }
                stored
                    .owners
                    .entry(manager.to_owned())
                    .or_insert_with(|| ("Update".into(), BTreeSet::new()))
                    .1
                    .insert(path);
            }
        }
        stored.owners.retain(|_, (_, f)| !f.is_empty());
        if body_of(&stored.object) != old_body {
            let generation = stored.object["metadata"]["generation"]
                .as_i64()
                .unwrap_or(1)
                + 1;
            stored.object["metadata"]["generation"] = json!(generation);
        }
        stored.object["metadata"]["resourceVersion"] = json!(rv);
        let fields = managed_fields(&stored.owners, api_version);
        stored.object["metadata"]["managedFields"] = fields;
    }

    /// Every Deployment's rollout finished: all replicas updated and
    /// available at the current generation; every HPA able to scale.
    pub fn finish_rollouts(&self) {
        let mut inner = self.lock();
        for stored in inner.objects.values_mut() {
            let o = &mut stored.object;
            match o["kind"].as_str() {
                Some("Deployment") => {
                    let n = o["spec"]["replicas"].as_i64().unwrap_or(1);
                    o["status"] = json!({"observedGeneration": o["metadata"]["generation"],
                        "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n});
                }
                Some("HorizontalPodAutoscaler") => {
                    o["status"] = json!({"currentReplicas": 2, "desiredReplicas": 2, "conditions": [
                        {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
                        {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}]});
                }
                _ => {}
            }
        }
    }

    /// Stores an object as it is (no ownership), e.g. one made by hand.
    pub fn insert(&self, object: Value) {
        let mut inner = self.lock();
        let api_version = object["apiVersion"].as_str().unwrap().to_owned();
        let kind = object["kind"].as_str().unwrap().to_owned();
        let ns = object["metadata"]["namespace"].as_str().map(str::to_owned);
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let key = inner
            .key_of(&api_version, &kind, ns.as_deref(), &name)
            .expect("known kind");
        inner.store_new(key, object);
    }
}

impl Inner {
    /// Stores a new object with server-set metadata (no field ownership);
    /// returns it as stored.
    fn store_new(&mut self, key: Key, mut object: Value) -> Value {
        let rv = self.next_rv();
        self.uid += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv);
        meta["uid"] = json!(format!("uid-{}", self.uid));
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        self.objects.insert(
            key,
            Stored {
                object: object.clone(),
                owners: BTreeMap::new(),
            },
        );
        object
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn type_of(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural && t.served())
            .cloned()
    }

    fn key_of(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> Option<Key> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let t = self
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)?;
        let ns = if t.namespaced {
            ns.unwrap_or("default")
        } else {
            ""
        };
        Some((
            t.group.clone(),
            t.plural.clone(),
            ns.to_owned(),
            name.to_owned(),
        ))
    }

    /// Marks CRDs Established once their time has come.
    fn refresh_crds(&mut self) {
        let now = Instant::now();
        let ready: BTreeSet<String> = self
            .types
            .iter()
            .filter(|t| t.established_at.is_some_and(|at| now >= at))
            .map(|t| format!("{}.{}", t.plural, t.group))
            .collect();
        for stored in self.objects.values_mut() {
            if stored.object["kind"] == "CustomResourceDefinition" {
                let name = stored.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default();
                let established = ready.contains(name);
                stored.object["status"] = json!({"conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                    {"type": "Established", "status": if established { "True" } else { "False" },
                     "reason": if established { "InitialNamesAccepted" } else { "Installing" }}]});
            }
        }
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn ok(code: u16, body: Value) -> Response {
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .all(|req| {
            let req = req.trim();
            if let Some((k, v)) = req.split_once("!=") {
                labels.get(k.trim()).and_then(Value::as_str) != Some(v.trim())
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                labels.get(k.trim()).and_then(Value::as_str) == Some(v.trim())
            } else if let Some(k) = req.strip_prefix('!') {
                labels.get(k).is_none()
            } else {
                labels.get(req).is_some()
            }
        })
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = parse_query(uri.query());
    let path = uri.path().to_owned();
    let mut inner = state.lock().unwrap();
    let response = if let Some(code) = inner.faults.pop_front() {
        let reason = if code == 429 {
            "TooManyRequests"
        } else {
            "InternalError"
        };
        status(code, reason, format!("injected failure {code}"))
    } else {
        inner.refresh_crds();
        route(&mut inner, &method, &path, &query, &headers, &body)
    };
    let who = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    inner.log.push(Logged {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
        who,
    });
    response
}

fn route(
    inner: &mut Inner,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => {
            return ok(
                200,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            );
        }
        ["apis"] => return ok(200, group_list(inner)),
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => {
            return status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            );
        }
    };
    if rest.is_empty() {
        return resource_list(inner, group, version);
    }
    let (ns, plural, name) = match rest {
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => {
            return status(
                404,
                "NotFound",
                format!("subresources are not modelled ({path})"),
            );
        }
    };
    let Some(t) = inner.type_of(group, version, plural) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let ns = if t.namespaced { ns } else { None };
    match (method.as_str(), name) {
        ("GET", None) => list(inner, &t, ns, query),
        ("GET", Some(name)) => {
            let key = (
                t.group.clone(),
                t.plural.clone(),
                ns.unwrap_or_default().to_owned(),
                name.to_owned(),
            );
            match inner.objects.get(&key) {
                Some(s) => ok(200, with_version(&s.object, &t)),
                None => status(
                    404,
                    "NotFound",
                    format!("{}.{} \"{name}\" not found", t.plural, t.group),
                ),
            }
        }
        ("PATCH", Some(name)) => patch(inner, &t, ns, name, query, headers, body),
        ("POST", None) => create(inner, &t, ns, body),
        ("PUT", Some(name)) => replace(inner, &t, ns, name, body),
        ("DELETE", Some(name)) => delete(inner, &t, ns, name),
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} {path} is not modelled"),
        ),
    }
}

fn with_version(object: &Value, t: &ResourceType) -> Value {
    let mut o = object.clone();
    o["apiVersion"] = json!(t.api_version());
    o
}

fn group_list(inner: &Inner) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in inner
        .types
        .iter()
        .filter(|t| !t.group.is_empty() && t.served())
    {
        let versions = groups.entry(&t.group).or_default();
        if !versions.contains(&t.version.as_str()) {
            versions.push(&t.version);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(inner: &Inner, group: &str, version: &str) -> Response {
    let resources: Vec<Value> = inner
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version && t.served())
        .map(|t| {
            json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
        })
        .collect();
    if resources.is_empty() {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({group}/{version})"),
        );
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    ok(
        200,
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn list(
    inner: &Inner,
    t: &ResourceType,
    ns: Option<&str>,
    query: &BTreeMap<String, String>,
) -> Response {
    let selector = query.get("labelSelector").map(String::as_str).unwrap_or("");
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((g, p, n, _), _)| *g == t.group && *p == t.plural && ns.is_none_or(|ns| n == ns))
        .filter(|(_, s)| selector_matches(selector, &s.object["metadata"]["labels"]))
        .map(|(_, s)| {
            let mut o = s.object.clone();
            let map = o.as_object_mut().unwrap();
            map.remove("apiVersion");
            map.remove("kind");
            o
        })
        .collect();
    ok(
        200,
        json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(),
        "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
    )
}

/// Leaf fields of an object: maps recursed, everything else a leaf.
/// Identity fields and status are left out (apply does not own them).
fn leaves(v: &Value) -> Vec<(FieldPath, Value)> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut Vec<(FieldPath, Value)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            other => out.push((path.clone(), other.clone())),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out.retain(|(p, _)| {
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        !matches!(
            p.as_slice(),
            ["apiVersion"]
                | ["kind"]
                | ["metadata", "name"]
                | ["metadata", "namespace"]
                | ["status", ..]
                | ["metadata", "managedFields", ..]
                | ["metadata", "resourceVersion"]
                | ["metadata", "uid"]
                | ["metadata", "generation"]
                | ["metadata", "creationTimestamp"]
        )
    });
    out
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set_path(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        if !cur.get(k).is_some_and(Value::is_object) {
            cur[k.as_str()] = Value::Object(Map::new());
        }
        cur = cur.get_mut(k).unwrap();
    }
    cur[path[path.len() - 1].as_str()] = value;
}

fn remove_path(v: &mut Value, path: &[String]) {
    if path.is_empty() {
        return;
    }
    if let Some(Value::Object(parent)) = get_path_mut(v, &path[..path.len() - 1]) {
        parent.remove(&path[path.len() - 1]);
        if parent.is_empty() && path.len() > 1 {
            remove_path(v, &path[..path.len() - 1]);
        }
    }
}

fn get_path_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(k))
}

fn body_of(v: &Value) -> Value {
    let mut o = v.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn managed_fields(
    owners: &BTreeMap<String, (String, BTreeSet<FieldPath>)>,
    api_version: &str,
) -> Value {
    Value::Array(
        owners
            .iter()
            .map(|(manager, (op, fields))| {
                let mut tree = Value::Object(Map::new());
                for f in fields {
                    let path: Vec<String> = f.iter().map(|k| format!("f:{k}")).collect();
                    set_path(&mut tree, &path, json!({}));
                }
                json!({"manager": manager, "operation": op, "apiVersion": api_version,
                    "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": tree})
            })
            .collect(),
    )
}

fn patch(
    inner: &mut Inner,
    t: &ResourceType,
    ns: Option<&str>,
    name: &str,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/apply-patch+yaml" {
        return status(
            415,
            "UnsupportedMediaType",
            format!("only server-side apply is modelled, not {content_type}"),
        );
    }
    let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()).cloned() else {
        return status(
            400,
            "BadRequest",
            "PATCH with apply requires fieldManager".into(),
        );
    };
    let force = query.get("force").map(String::as_str) == Some("true");
    let dry_run = query.get("dryRun").map(String::as_str) == Some("All");
    let config: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return status(400, "BadRequest", format!("body is not JSON: {e}")),
    };
    if config["metadata"]["name"] != name || config["kind"] != t.kind.as_str() {
        return status(
            400,
            "BadRequest",
            "the body's kind and name must match the URL".into(),
        );
    }
    if let Some(ns) = ns {
        if config["metadata"]["namespace"]
            .as_str()
            .is_some_and(|n| n != ns)
        {
            return status(
                400,
                "BadRequest",
                "the namespace of the object does not match the namespace on the request".into(),
            );
        }
        if !inner.objects.contains_key(&(
            String::new(),
            "namespaces".into(),
            String::new(),
            ns.to_owned(),
        )) {
            return status(404, "NotFound", format!("namespaces \"{ns}\" not found"));
        }
    }
    let key: Key = (
        t.group.clone(),
        t.plural.clone(),
        ns.unwrap_or_default().to_owned(),
        name.to_owned(),
    );
    let existing = inner.objects.get(&key).cloned();
    let created = existing.is_none();
    let mut stored = existing.unwrap_or_else(|| Stored {
        object: json!({"apiVersion": t.api_version(), "kind": t.kind,
            "metadata": ns.map_or_else(|| json!({"name": name}), |ns| json!({"name": name, "namespace": ns}))}),
        owners: BTreeMap::new(),
    });
    let applied = leaves(&config);
    let mut conflicts = Vec::new();
    for (path, value) in &applied {
        for (other, (_, fields)) in &stored.owners {
            if *other != manager
                && fields.contains(path)
                && get_path(&stored.object, path) != Some(value)
            {
                conflicts.push((other.clone(), format!(".{}", path.join("."))));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let n = conflicts.len();
        let list: Vec<String> = conflicts
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\" using {}: {p}", t.api_version()))
            .collect();
        return status(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{}: {}",
                if n == 1 { "" } else { "s" },
                list.join("\n")
            ),
        );
    }
    let before_body = body_of(&stored.object);
    let new_fields: BTreeSet<FieldPath> = applied.iter().map(|(p, _)| p.clone()).collect();
    if let Some((_, old)) = stored.owners.get(&manager).cloned() {
        for gone in old.difference(&new_fields) {
            let shared = stored
                .owners
                .iter()
                .any(|(m, (_, f))| *m != manager && f.contains(gone));
            if !shared {
                remove_path(&mut stored.object, gone);
            }
        }
    }
    for (path, value) in &applied {
        set_path(&mut stored.object, path, value.clone());
    }
    for (other, (_, fields)) in stored.owners.iter_mut() {
        if *other != manager {
            for (path, _) in &applied {
                if conflicts
                    .iter()
                    .any(|(m, p)| m == other && *p == format!(".{}", path.join(".")))
                {
                    fields.remove(path);
                }
            }
        }
    }
    stored
        .owners
        .insert(manager.clone(), ("Apply".into(), new_fields));
    stored.owners.retain(|_, (_, f)| !f.is_empty());

    let api_version = t.api_version();
    stored.object["apiVersion"] = json!(api_version);
    let changed_body = body_of(&stored.object) != before_body;
    if created {
        if !dry_run {
            inner.uid += 1;
            stored.object["metadata"]["uid"] = json!(format!("uid-{}", inner.uid));
        }
        stored.object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        stored.object["metadata"]["generation"] = json!(1);
    } else if changed_body {
        let generation = stored.object["metadata"]["generation"]
            .as_i64()
            .unwrap_or(1)
            + 1;
        stored.object["metadata"]["generation"] = json!(generation);
    }
    stored.object["metadata"]["managedFields"] = managed_fields(&stored.owners, &api_version);
    if dry_run {
        if created {
            stored.object["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("resourceVersion");
        }
        return ok(if created { 201 } else { 200 }, stored.object);
    }
    let rv = inner.next_rv();
    stored.object["metadata"]["resourceVersion"] = json!(rv);
    if t.kind == "CustomResourceDefinition" {
        register_crd(inner, &stored.object);
    }
    let out = stored.object.clone();
    inner.objects.insert(key, stored);
    inner.refresh_crds();
    ok(if created { 201 } else { 200 }, out)
}

fn register_crd(inner: &mut Inner, crd: &Value) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_owned();
    let plural = spec["names"]["plural"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let kind = spec["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespaced = spec["scope"] != "Cluster";
    let at = Instant::now() + inner.crd_delay;
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"] == false {
            continue;
        }
        let version = v["name"].as_str().unwrap_or_default().to_owned();
        if inner
            .types
            .iter()
            .any(|t| t.group == group && t.version == version && t.plural == plural)
        {
            continue;
        }
        inner.types.push(ResourceType {
            group: group.clone(),
            version,
            kind: kind.clone(),
            plural: plural.clone(),
            namespaced,
            established_at: Some(at),
        });
    }
}

fn delete(inner: &mut Inner, t: &ResourceType, ns: Option<&str>, name: &str) -> Response {
    let key = key_for(t, ns, name);
    let Some(stored) = inner.objects.remove(&key) else {
        return not_found(t, name);
    };
    if t.kind == "Namespace" {
        inner.objects.retain(|(_, _, n, _), _| n != name);
    }
    if t.kind == "CustomResourceDefinition" {
        let spec = &stored.object["spec"];
        inner.types.retain(|ty| {
            !(ty.established_at.is_some()
                && ty.group == spec["group"]
                && ty.plural == spec["names"]["plural"])
        });
    }
    ok(200, stored.object)
}

/// POST to a collection: stores a new object (409 when it exists).
fn create(inner: &mut Inner, t: &ResourceType, ns: Option<&str>, body: &[u8]) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the body is not JSON".into());
    };
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(422, "Invalid", "metadata.name: Required value".into());
    };
    let key = key_for(t, ns, &name);
    if inner.objects.contains_key(&key) {
        return status(
            409,
            "AlreadyExists",
            format!("{}.{} \"{name}\" already exists", t.plural, t.group),
        );
    }
    object["apiVersion"] = json!(t.api_version());
    object["kind"] = json!(t.kind);
    if let Some(ns) = ns {
        object["metadata"]["namespace"] = json!(ns);
    }
    ok(201, inner.store_new(key, object))
}

/// PUT to an object: replaces it when the body's resourceVersion is the
/// stored one (optimistic concurrency), else 409 Conflict.
fn replace(
    inner: &mut Inner,
    t: &ResourceType,
    ns: Option<&str>,
    name: &str,
    body: &[u8],
) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the body is not JSON".into());
    };
    let key = key_for(t, ns, name);
    let Some(stored) = inner.objects.get(&key) else {
        return not_found(t, name);
    };
    let current = stored.object["metadata"]["resourceVersion"].clone();
    let sent = &object["metadata"]["resourceVersion"];
    if !sent.is_null() && *sent != current {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                t.plural, t.group
            ),
        );
    }
    let old = stored.object.clone();
    let rv = inner.next_rv();
    object["apiVersion"] = json!(t.api_version());
    object["kind"] = json!(t.kind);
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1)
        + i64::from(body_of(&object) != body_of(&old));
    let meta = &mut object["metadata"];
    for k in ["uid", "creationTimestamp", "namespace"] {
        meta[k] = old["metadata"][k].clone();
    }
    meta["resourceVersion"] = json!(rv);
    meta["generation"] = json!(generation);
    inner.objects.insert(
        key,
        Stored {
            object: object.clone(),
            owners: BTreeMap::new(),
        },
    );
    ok(200, object)
}

fn key_for(t: &ResourceType, ns: Option<&str>, name: &str) -> Key {
    (
        t.group.clone(),
        t.plural.clone(),
        ns.unwrap_or_default().to_owned(),
        name.to_owned(),
    )
}

fn not_found(t: &ResourceType, name: &str) -> Response {
    status(
        404,
        "NotFound",
        format!("{}.{} \"{name}\" not found", t.plural, t.group),
    )
}
