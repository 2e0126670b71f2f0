//! Policies: Rego (regorus) evaluated at check time on an environment's
//! rendered [`DesiredState`].
//!
//! A policy is a Rego module in package `driftless.policies.<name>` whose
//! rule `violation` is a set of `{"object": <input object id>, "msg": …}`
//! (or plain message strings). Its id is `<name>` with `_` written `-`.
//! The built-ins live in the repo's top-level `policies/` folder and are
//! embedded in the binary ([`builtins`]); a desired-state repo's own
//! `.rego` files (the manifest's `paths.policies`) add to them.
//!
//! [`input`] builds the documented JSON the policies read (see
//! `policies/README.md`). [`check`] runs every policy in the mode the
//! environment sets for it (`deny` → error diagnostics that block the
//! apply, `warn` → warnings, `off` → not run; default [`DEFAULT_MODE`],
//! `warn`), honours
//! per-object exceptions — the label or annotation
//! `driftless.io/policy-exception.<id>: "<reason>"` — and reports each
//! exception used as a warning.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::diag::{Diagnostic, Diagnostics};
use crate::glob::Glob;
use crate::manifest::{self, Environment, PolicyMode};
use crate::model::compose::{DependencyCondition, Mount, Project};
use crate::model::{DesiredState, KubeObject, Resources, RuleFile};
use crate::render::{Rendered, Renderer};

/// Label or annotation prefix that excepts one object from one policy.
pub const EXCEPTION_PREFIX: &str = "driftless.io/policy-exception.";

/// The mode of a policy the manifest does not name: a repo starts with
/// warnings and turns policies into gates (`deny`) as it meets them.
pub const DEFAULT_MODE: PolicyMode = PolicyMode::Warn;

/// Package prefix every policy module must use.
pub const PACKAGE_PREFIX: &str = "driftless.policies.";

/// The built-in policies, embedded from `policies/`: (id, file, source).
const BUILTINS: [(&str, &str, &str); 8] = [
    (
        "pinned-images",
        "policies/pinned-images.rego",
        include_str!("../../policies/pinned-images.rego"),
    ),
    (
        "healthchecks",
        "policies/healthchecks.rego",
        include_str!("../../policies/healthchecks.rego"),
    ),
    (
        "readiness-probes",
        "policies/readiness-probes.rego",
        include_str!("../../policies/readiness-probes.rego"),
    ),
    (
        "resource-limits",
        "policies/resource-limits.rego",
        include_str!("../../policies/resource-limits.rego"),
    ),
    (
        "non-root",
        "policies/non-root.rego",
        include_str!("../../policies/non-root.rego"),
    ),
    (
        "no-privileged",
        "policies/no-privileged.rego",
        include_str!("../../policies/no-privileged.rego"),
    ),
    (
        "prod-replicas",
        "policies/prod-replicas.rego",
        include_str!("../../policies/prod-replicas.rego"),
    ),
    (
        "no-secret-literals",
        "policies/no-secret-literals.rego",
        include_str!("../../policies/no-secret-literals.rego"),
    ),
];

/// One policy's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `pinned-images`; the package is `driftless.policies.pinned_images`.
    pub id: String,
    /// Where it came from: `policies/x.rego` (built-in) or the repo path.
    pub file: String,
    pub rego: String,
    pub builtin: bool,
}

/// The built-in policies, in a fixed order.
pub fn builtins() -> Vec<Policy> {
    BUILTINS
        .iter()
        .map(|(id, file, rego)| Policy {
            id: (*id).to_owned(),
            file: (*file).to_owned(),
            rego: (*rego).to_owned(),
            builtin: true,
        })
        .collect()
}

/// The ids of the built-in policies.
pub fn builtin_ids() -> Vec<&'static str> {
    BUILTINS.iter().map(|(id, _, _)| *id).collect()
}

/// A violation found by one policy, before modes and exceptions apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub policy: String,
    /// The input object's `id` (`service aiops-prod/traefik`,
    /// `Deployment aiops/ai-engine`), when the policy named one.
    pub object: Option<String>,
    pub message: String,
}

/// Policies compiled into one regorus engine, ready to evaluate inputs.
#[derive(Clone)]
pub struct PolicySet {
    engine: regorus::Engine,
    /// (id, file, rule path) per policy.
    rules: Vec<(String, String, String)>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.ids())
            .finish_non_exhaustive()
    }
}

impl PolicySet {
    /// Parses every policy. A syntax error, a package outside
    /// `driftless.policies.`, a package that does not match the id, or an id
    /// used twice is an error naming the file.
    pub fn new(policies: &[Policy]) -> Result<PolicySet, Diagnostics> {
        let mut engine = regorus::Engine::new();
        let mut rules: Vec<(String, String, String)> = Vec::new();
        let mut diags = Diagnostics::new();
        for p in policies {
            if let Some((_, first, _)) = rules.iter().find(|(id, _, _)| *id == p.id) {
                diags.push(
                    Diagnostic::error(format!(
                        "policy id `{}` is already defined by {first}",
                        p.id
                    ))
                    .file(&p.file)
                    .hint("rename the file and its package; built-in ids cannot be reused"),
                );
                continue;
            }
            let package = match engine.add_policy(p.file.clone(), p.rego.clone()) {
                Ok(pkg) => pkg,
                Err(e) => {
                    diags.push(
                        Diagnostic::error(format!("policy does not parse: {e}")).file(&p.file),
                    );
                    continue;
                }
            };
            let want = format!("data.{PACKAGE_PREFIX}{}", p.id.replace('-', "_"));
            if package != want {
                diags.push(
                    Diagnostic::error(format!(
                        "policy package is `{}`; a policy with id `{}` must use `package {}`",
                        package.trim_start_matches("data."),
                        p.id,
                        want.trim_start_matches("data.")
                    ))
                    .file(&p.file),
                );
                continue;
            }
            rules.push((p.id.clone(), p.file.clone(), format!("{want}.violation")));
        }
        if diags.has_errors() {
            return Err(diags);
        }
        Ok(PolicySet { engine, rules })
    }

    /// [`PolicySet::new`], memoised: a process keeps the last few compiled
    /// sets keyed by the policies' ids, files and sources, so a daemon or a
    /// `validate --all` parses the same Rego once, not once per environment
    /// and commit. Parse errors are not kept (they are reported again).
    pub fn compiled(policies: &[Policy]) -> Result<PolicySet, Diagnostics> {
        use sha2::{Digest, Sha256};
        /// Compiled sets kept; a repo has one set per distinct `policies:` glob.
        const KEEP: usize = 8;
        static CACHE: std::sync::Mutex<Vec<([u8; 32], PolicySet)>> =
            std::sync::Mutex::new(Vec::new());
        let mut hash = Sha256::new();
        for p in policies {
            for part in [&p.id, &p.file, &p.rego] {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part.as_bytes());
            }
        }
        let key: [u8; 32] = hash.finalize().into();
        let lock = |c: &'static std::sync::Mutex<_>| c.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, set)) = lock(&CACHE).iter().find(|(k, _)| *k == key) {
            return Ok(set.clone());
        }
        let set = PolicySet::new(policies)?;
        let mut cache = lock(&CACHE);
        if cache.len() >= KEEP {
            cache.remove(0);
        }
        cache.push((key, set.clone()));
        Ok(set)
    }

    /// The ids of the policies in the set.
    pub fn ids(&self) -> Vec<&str> {
        self.rules.iter().map(|(id, _, _)| id.as_str()).collect()
    }

    /// Evaluates the policies with `enabled(id)` true on `input`.
    pub fn evaluate(
        &mut self,
        input: &Value,
        enabled: impl Fn(&str) -> bool,
    ) -> Result<Vec<Violation>, Diagnostics> {
        self.engine.set_input(regorus::Value::from(input.clone()));
        let mut out = Vec::new();
        let mut diags = Diagnostics::new();
        for (id, file, rule) in &self.rules {
            if !enabled(id) {
                continue;
            }
            let value = match self.engine.eval_rule(rule.clone()) {
                Ok(v) => v,
                Err(e) => {
                    diags.push(
                        Diagnostic::error(format!("policy `{id}` failed to evaluate: {e}"))
                            .file(file),
                    );
                    continue;
                }
            };
            if value == regorus::Value::Undefined {
                continue;
            }
            let json = serde_json::to_value(&value).unwrap_or(Value::Null);
            let items = match json {
                Value::Array(items) => items,
                Value::Null => Vec::new(),
                other => vec![other],
            };
            for item in items {
                let (object, message) = match &item {
                    Value::String(s) => (None, s.clone()),
                    Value::Object(m) => (
                        m.get("object").and_then(Value::as_str).map(str::to_owned),
                        m.get("msg")
                            .or_else(|| m.get("message"))
                            .and_then(Value::as_str)
                            .map_or_else(|| item.to_string(), str::to_owned),
                    ),
                    other => (None, other.to_string()),
                };
                out.push(Violation {
                    policy: id.clone(),
                    object,
                    message,
                });
            }
        }
        if diags.has_errors() {
            return Err(diags);
        }
        Ok(out)
    }
}

/// Whether an environment counts as production for `prod-replicas`:
/// named `prod`, `production`, or starting with `prod-`.
pub fn is_production(env: &str) -> bool {
    env == "prod" || env == "production" || env.starts_with("prod-")
}

/// The policy input for a desired state (shape: `policies/README.md`).
/// `is_secret(value)` says whether a value came from `secret()`.
pub fn input(state: &DesiredState, is_secret: &dyn Fn(&str) -> bool) -> Value {
    let mut projects: Vec<&Project> = Vec::new();
    let mut objects: Vec<&KubeObject> = Vec::new();
    let mut rule_files: Vec<&RuleFile> = Vec::new();
    // Every target of a kind holds the same resources; take each once.
    for t in &state.targets {
        match &t.resources {
            Resources::Compose(ps) => {
                for p in ps {
                    if !projects.iter().any(|q| q.name == p.name) {
                        projects.push(p);
                    }
                }
            }
            Resources::Kubernetes(os) => {
                for o in os {
                    if !objects
                        .iter()
                        .any(|q| q.key() == o.key() && q.api_version == o.api_version)
                    {
                        objects.push(o);
                    }
                }
            }
            Resources::Rules(fs) => {
                for f in fs {
                    if !rule_files.iter().any(|q| q.name == f.name) {
                        rule_files.push(f);
                    }
                }
            }
        }
    }
    let env_name = &state.environment.name;
    json!({
        "environment": env_name,
        "production": is_production(env_name),
        "services": projects.iter().flat_map(|p| services(p, is_secret)).collect::<Vec<_>>(),
        "kubernetes": objects.iter().map(|o| kube_object(o, is_secret)).collect::<Vec<_>>(),
        "rules": rule_files.iter().map(|f| json!({
            "id": format!("rule-file {}", f.name),
            "name": f.name,
            "file": f.origin.file,
            "groups": f.groups,
        })).collect::<Vec<_>>(),
    })
}

fn exceptions<'a>(pairs: impl Iterator<Item = (&'a String, &'a str)>) -> Value {
    let map: serde_json::Map<String, Value> = pairs
        .filter_map(|(k, v)| {
            k.strip_prefix(EXCEPTION_PREFIX)
                .map(|id| (id.to_owned(), Value::String(v.to_owned())))
        })
        .collect();
    Value::Object(map)
}

fn services(p: &Project, is_secret: &dyn Fn(&str) -> bool) -> Vec<Value> {
    p.services
        .iter()
        .map(|(name, s)| {
            let awaited = p.services.values().any(|other| {
                other.depends_on.get(name).is_some_and(|d| {
                    d.condition == DependencyCondition::ServiceCompletedSuccessfully
                })
            });
            let restart = s.restart.as_deref();
            let one_shot = awaited
                || restart == Some("no")
                || restart.is_some_and(|r| r.starts_with("on-failure"));
            let healthcheck = s
                .healthcheck
                .as_ref()
                .filter(|h| !h.disable && h.test.first().is_none_or(|t| t != "NONE"))
                .map(|h| json!({"test": h.test}));
            let stateful = s.volumes.iter().any(|m| {
                matches!(
                    m,
                    Mount::Volume {
                        source: Some(_),
                        ..
                    }
                )
            });
            let env: Vec<Value> = s
                .environment
                .iter()
                .filter_map(|(k, v)| {
                    v.as_ref()
                        .map(|v| json!({"name": k, "value": v, "secret": is_secret(v)}))
                })
                .collect();
            json!({
                "id": format!("service {}/{name}", p.name),
                "project": p.name,
                "name": name,
                "file": s.origin.file,
                "line": s.origin.line,
                "image": s.image,
                "built": s.build.is_some(),
                "user": s.user,
                "privileged": s.privileged,
                "network_mode": s.network_mode,
                "restart": s.restart,
                "replicas": s.replicas,
                "healthcheck": healthcheck,
                "one_shot": one_shot,
                "stateful": stateful,
                "fixed_host_ports": s.ports.iter().any(|port| port.published.is_some()),
                "limits": {"cpus": s.resources.limits.cpus, "memory": s.resources.limits.memory},
                "cap_add": s.cap_add,
                "labels": s.labels,
                "environment": env,
                "exceptions": exceptions(s.labels.iter().map(|(k, v)| (k, v.as_str()))),
            })
        })
        .collect()
}

/// Pod-spec path of the workload kinds.
fn pod_spec(o: &KubeObject) -> Option<&Value> {
    let body = &o.body;
    match o.kind.as_str() {
        "Pod" => body.get("spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            body.pointer("/spec/template/spec")
        }
        "CronJob" => body.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

fn kube_object(o: &KubeObject, is_secret: &dyn Fn(&str) -> bool) -> Value {
    let meta = o.body.get("metadata").cloned().unwrap_or(Value::Null);
    let string_pairs = |field: &str| -> Vec<(String, String)> {
        meta.get(field)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut pairs = string_pairs("labels");
    pairs.extend(string_pairs("annotations"));
    let workload = pod_spec(o).map(|spec| workload(o, spec, is_secret));
    let secret_data: Option<Vec<Value>> = (o.kind == "Secret").then(|| {
        let mut out = Vec::new();
        for (field, b64) in [("data", true), ("stringData", false)] {
            if let Some(map) = o.body.get(field).and_then(Value::as_object) {
                for (k, v) in map {
                    let v = v.as_str().unwrap_or_default();
                    let decoded = b64
                        .then(|| {
                            use base64::Engine as _;
                            base64::engine::general_purpose::STANDARD
                                .decode(v)
                                .ok()
                                .and_then(|b| String::from_utf8(b).ok())
                        })
                        .flatten();
                    let secret = is_secret(v) || decoded.as_deref().is_some_and(is_secret);
                    out.push(json!({"key": k, "secret": secret}));
                }
            }
        }
        out
    });
    let mut out = json!({
        "id": format!("{} {}", o.kind, qualified(o)),
        "api_version": o.api_version,
        "kind": o.kind,
        "name": o.name,
        "namespace": o.namespace,
        "file": o.origin.file,
        "line": o.origin.line,
        "metadata": meta,
        "body": o.body,
        "exceptions": exceptions(pairs.iter().map(|(k, v)| (k, v.as_str()))),
    });
    // Absent rather than null: `some c in o.workload.containers` is then
    // simply undefined for objects that are not workloads.
    if let Some(w) = workload {
        out["workload"] = w;
    }
    if let Some(d) = secret_data {
        out["secret_data"] = Value::Array(d);
    }
    out
}

fn qualified(o: &KubeObject) -> String {
    match &o.namespace {
        Some(ns) => format!("{ns}/{}", o.name),
        None => o.name.clone(),
    }
}

fn workload(o: &KubeObject, spec: &Value, is_secret: &dyn Fn(&str) -> bool) -> Value {
    let pod_sc = spec.get("securityContext").cloned().unwrap_or(Value::Null);
    let mut containers = Vec::new();
    for (field, init) in [("initContainers", true), ("containers", false)] {
        for c in spec
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let sc = c.get("securityContext");
            // A container's securityContext overrides the pod's.
            let effective = |key: &str| {
                sc.and_then(|s| s.get(key))
                    .or_else(|| pod_sc.get(key))
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            let env: Vec<Value> = c
                .get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let name = e.get("name")?.as_str()?;
                    let value = e.get("value")?.as_str()?;
                    Some(json!({"name": name, "value": value, "secret": is_secret(value)}))
                })
                .collect();
            containers.push(json!({
                "name": c.get("name").cloned().unwrap_or(Value::Null),
                "image": c.get("image").cloned().unwrap_or(Value::Null),
                "init": init,
                "limits": {
                    "cpu": c.pointer("/resources/limits/cpu").cloned().unwrap_or(Value::Null),
                    "memory": c.pointer("/resources/limits/memory").cloned().unwrap_or(Value::Null),
                },
                "readiness_probe": c.get("readinessProbe").is_some(),
                "run_as_user": effective("runAsUser"),
                "run_as_non_root": effective("runAsNonRoot"),
                "privileged": sc.and_then(|s| s.get("privileged")).cloned().unwrap_or(Value::Bool(false)),
                "env": env,
                "spec": c,
            }));
        }
    }
    json!({
        "containers": containers,
        "host_network": spec.get("hostNetwork").cloned().unwrap_or(Value::Bool(false)),
        "replicas": o.body.pointer("/spec/replicas").cloned().unwrap_or(Value::Null),
    })
}

/// The repo's own policies: the rendered files matching `paths.policies`.
fn repo_policies(env: &Environment, renderer: &Renderer) -> Result<Vec<Policy>, Diagnostics> {
    let mut diags = Diagnostics::new();
    let matchers: Vec<Glob> = env
        .paths
        .policies
        .iter()
        .filter_map(|g| Glob::new(g).ok())
        .collect();
    let mut out = Vec::new();
    for path in renderer.outputs() {
        if !matchers.iter().any(|m| m.is_match(&path)) {
            continue;
        }
        let rendered = match renderer.render(&path) {
            Ok(r) => r,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        let text = match rendered.text() {
            Ok(t) => t.to_owned(),
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        let stem = path
            .rsplit('/')
            .next()
            .unwrap_or(&path)
            .trim_end_matches(".rego")
            .to_owned();
        if !manifest::valid_name(&stem) {
            diags.push(
                Diagnostic::error(format!(
                    "policy file name `{stem}` is not a valid policy id (lowercase letters, digits and `-`)"
                ))
                .file(&rendered.source),
            );
            continue;
        }
        out.push(Policy {
            id: stem,
            file: rendered.source.clone(),
            rego: text,
            builtin: false,
        });
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(out)
    }
}

/// The policy stage of [`super::environment`]: built-ins plus the repo's
/// policies on `state`, in the environment's modes. Returns the warnings
/// (warn-mode violations, exceptions used), or the errors (deny-mode
/// violations, unknown policy ids in `policies:`, broken policies).
pub fn check(
    env: &Environment,
    state: &DesiredState,
    renderer: &Renderer,
    files: &BTreeMap<String, Rendered>,
) -> Result<Vec<Diagnostic>, Diagnostics> {
    let mut policies = builtins();
    policies.extend(repo_policies(env, renderer)?);
    for id in env.policies.keys() {
        if !policies.iter().any(|p| p.id == *id) {
            return Err(
                Diagnostic::error(format!("unknown policy `{id}` in `policies:`"))
                    .env(&env.name)
                    .file(manifest::FILE)
                    .hint(format!(
                        "known policies: {}",
                        policies
                            .iter()
                            .map(|p| p.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .into(),
            );
        }
    }
    let mut set = PolicySet::compiled(&policies).map_err(|d| with_env(d, &env.name))?;
    let is_secret = secret_predicate(renderer);
    let input = input(state, &*is_secret);
    let mode = |id: &str| env.policies.get(id).copied().unwrap_or(DEFAULT_MODE);
    let violations = set
        .evaluate(&input, |id| mode(id) != PolicyMode::Off)
        .map_err(|d| with_env(d, &env.name))?;
    report(env, &input, violations, files, mode)
}

/// Modes and exceptions applied: errors for deny, warnings for warn and
/// for every exception used.
fn report(
    env: &Environment,
    input: &Value,
    violations: Vec<Violation>,
    files: &BTreeMap<String, Rendered>,
    mode: impl Fn(&str) -> PolicyMode,
) -> Result<Vec<Diagnostic>, Diagnostics> {
    // id → the input object, for its file, line and exceptions.
    let mut objects: BTreeMap<&str, &Value> = BTreeMap::new();
    for list in ["services", "kubernetes", "rules"] {
        for o in input[list].as_array().into_iter().flatten() {
            if let Some(id) = o["id"].as_str() {
                objects.insert(id, o);
            }
        }
    }
    let mut errors = Diagnostics::new();
    let mut warnings = Vec::new();
    for v in violations {
        let object = v.object.as_deref().and_then(|id| objects.get(id));
        let file = object
            .and_then(|o| o["file"].as_str())
            .map(|f| files.get(f).map_or(f, |r| r.source.as_str()).to_owned());
        let line = object.and_then(|o| o["line"].as_u64()).unwrap_or(0) as u32;
        let mut d = Diagnostic::error(format!("policy {}: {}", v.policy, v.message)).env(&env.name);
        if let Some(f) = file {
            d = d.file(f).line(line);
        }
        if let Some(id) = &v.object {
            d = d.object(id.clone());
        }
        if let Some(reason) = object.and_then(|o| o["exceptions"][&v.policy].as_str()) {
            d.severity = crate::diag::Severity::Warning;
            d.message = format!(
                "policy {}: exception ({reason}) for: {}",
                v.policy, v.message
            );
            warnings.push(d);
            continue;
        }
        let hint = format!(
            "fix it, or accept it for this object with the label or annotation `{EXCEPTION_PREFIX}{}: \"<reason>\"`",
            v.policy
        );
        match mode(&v.policy) {
            PolicyMode::Deny => errors.push(d.hint(hint)),
            PolicyMode::Warn => {
                d.severity = crate::diag::Severity::Warning;
                warnings.push(d.hint(hint));
            }
            PolicyMode::Off => {}
        }
    }
    if errors.has_errors() {
        return Err(errors);
    }
    Ok(warnings)
}

/// Whether a value came from `secret()`: it contains a secret value handed
/// out by the renderer (any encoding the masker knows) or the placeholder
/// of a missing secret (`render`/`validate` without secrets).
pub fn secret_predicate(renderer: &Renderer) -> Box<dyn Fn(&str) -> bool + '_> {
    let masker = Arc::new(renderer.masker());
    let placeholders: Vec<String> = renderer
        .missing_secrets()
        .iter()
        .map(|n| crate::render::secret_placeholder(n))
        .collect();
    Box::new(move |v: &str| {
        placeholders.iter().any(|p| v.contains(p.as_str())) || masker.mask(v) != v
    })
}

fn with_env(diags: Diagnostics, env: &str) -> Diagnostics {
    Diagnostics(diags.into_iter().map(|d| d.or_env(env)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_have_matching_packages() {
        let set = PolicySet::new(&builtins()).unwrap();
        assert_eq!(set.ids(), builtin_ids());
    }

    #[test]
    fn compiled_sets_follow_the_source_and_never_share_inputs() {
        let policy = |rego: &str| Policy {
            id: "cache-probe".into(),
            file: "policies/cache-probe.rego".into(),
            rego: format!("package driftless.policies.cache_probe\n{rego}"),
            builtin: false,
        };
        let a = policy("violation contains \"a\" if { input.x }\n");
        let b = policy("violation contains \"b\" if { input.x }\n");
        let eval = |p: &Policy, x: bool| {
            let mut set = PolicySet::compiled(std::slice::from_ref(p)).unwrap();
            set.evaluate(&json!({ "x": x }), |_| true)
                .unwrap()
                .into_iter()
                .map(|v| v.message)
                .collect::<Vec<_>>()
        };
        assert_eq!(eval(&a, true), ["a"]);
        // The same source again comes from the cache, without the last input.
        assert!(eval(&a, false).is_empty());
        // An edited policy is compiled anew, never served from the cache.
        assert_eq!(eval(&b, true), ["b"]);
        assert_eq!(eval(&a, true), ["a"]);
        // A broken policy is an error every time.
        let broken = policy("violation contains if {\n");
        assert!(PolicySet::compiled(std::slice::from_ref(&broken)).is_err());
        assert!(PolicySet::compiled(std::slice::from_ref(&broken)).is_err());
    }

    #[test]
    fn a_package_that_does_not_match_the_id_is_an_error() {
        let p = Policy {
            id: "my-rule".into(),
            file: "policies/my-rule.rego".into(),
            rego: "package driftless.policies.other\nviolation contains \"x\" if { true }\n".into(),
            builtin: false,
        };
        let e = PolicySet::new(&[p]).unwrap_err().to_string();
        assert!(
            e.contains("must use `package driftless.policies.my_rule`"),
            "{e}"
        );
    }

    #[test]
    fn violations_are_strings_or_objects() {
        let p = Policy {
            id: "t".into(),
            file: "t.rego".into(),
            rego: "package driftless.policies.t\nviolation contains \"plain\" if { input.a }\nviolation contains {\"object\": \"o\", \"msg\": \"m\"} if { input.a }\n".into(),
            builtin: false,
        };
        let mut set = PolicySet::new(&[p]).unwrap();
        let mut v = set.evaluate(&json!({"a": true}), |_| true).unwrap();
        v.sort_by(|a, b| a.message.cmp(&b.message));
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].object.as_deref(), Some("o"));
        assert_eq!(v[1].message, "plain");
        assert!(
            set.evaluate(&json!({"a": false}), |_| true)
                .unwrap()
                .is_empty()
        );
        assert!(
            set.evaluate(&json!({"a": true}), |_| false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn production_environments() {
        assert!(is_production("prod") && is_production("production") && is_production("prod-eu"));
        assert!(!is_production("staging") && !is_production("product"));
    }
}
