//! Kubernetes manifests: a rendered file (one or more YAML documents) into
//! [`KubeObject`]s, each checked for what applying needs: a mapping with
//! string `apiVersion`, `kind` and `metadata.name`. Empty and comment-only
//! documents are skipped; a list (`kind: List`, or any `*List` kind with
//! `items`, as `kubectl` reads them) is expanded into its items; the
//! namespace is taken as written. A Helm chart template (`{{ ... }}` where
//! YAML expects a value) gets an error saying so.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{KubeObject, Origin};
use crate::yaml::{self, Node, Value};

/// Loads every object of the manifest file `file` (a rendered repo path).
/// All problems of the file are returned at once.
pub fn load(file: &str, text: &str) -> Result<Vec<KubeObject>, Diagnostics> {
    load_with(file, text, &yaml::Limits::default())
}

/// [`load`] with the repo's YAML limits (`driftless.yaml` `limits:`).
pub fn load_with(
    file: &str,
    text: &str,
    limits: &yaml::Limits,
) -> Result<Vec<KubeObject>, Diagnostics> {
    let mut diags = Diagnostics::new();
    let docs = match yaml::parse_documents_with(text, limits) {
        Ok(docs) => docs,
        Err(e) => {
            diags.push(match helm_line(text) {
                Some(line) => helm_error(file, line),
                None => e.into_diagnostic(file),
            });
            return Err(diags);
        }
    };
    let mut objects = Vec::new();
    for doc in &docs {
        object_or_list(file, text, doc, &mut objects, &mut diags);
    }
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for o in &objects {
        if let Some(first) = seen.insert(o.key(), o.origin.line) {
            diags.push(
                Diagnostic::error(format!(
                    "{} is defined twice (first at line {first})",
                    o.key()
                ))
                .file(file)
                .line(o.origin.line)
                .object(format!("{}/{}", o.kind, o.name)),
            );
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(objects)
    }
}

/// One document: an object, or a list whose items are objects.
fn object_or_list(
    file: &str,
    text: &str,
    doc: &Node,
    objects: &mut Vec<KubeObject>,
    diags: &mut Diagnostics,
) {
    if let Some(bad) = non_scalar_key(doc) {
        let line_text = text
            .lines()
            .nth(bad.line.saturating_sub(1) as usize)
            .unwrap_or("");
        diags.push(if line_text.contains("{{") {
            helm_error(file, bad.line)
        } else {
            Diagnostic::error("mapping keys must be strings (Kubernetes objects are JSON)")
                .file(file)
                .at(bad.line, bad.column)
        });
        return;
    }
    let kind = doc.get("kind").and_then(Node::as_str).unwrap_or_default();
    if kind.ends_with("List")
        && let Some(items) = doc.get("items")
    {
        match items.as_seq() {
            Some(items) => {
                for item in items {
                    if let Some(o) = object(file, item, diags) {
                        objects.push(o);
                    }
                }
            }
            None if items.is_null() => {}
            None => diags.push(
                Diagnostic::error(format!(
                    "`items` of a {kind} must be a list, not {}",
                    items.kind()
                ))
                .file(file)
                .at(items.line, items.column),
            ),
        }
        return;
    }
    if let Some(o) = object(file, doc, diags) {
        objects.push(o);
    }
}

/// Checks one object; reports what is missing, naming kind/name when known.
fn object(file: &str, node: &Node, diags: &mut Diagnostics) -> Option<KubeObject> {
    let at = |d: Diagnostic| d.file(file).line(node.line);
    if node.as_map().is_none() {
        diags.push(at(Diagnostic::error(format!(
            "a Kubernetes object must be a mapping, not {}",
            node.kind()
        ))));
        return None;
    }
    let field = |name: &str| -> Result<String, String> {
        match node.get(name) {
            Some(Node {
                value: Value::String(s),
                ..
            }) if !s.is_empty() => Ok(s.clone()),
            Some(other) => Err(format!(
                "`{name}` must be a non-empty string, not {}",
                other.kind()
            )),
            None => Err(format!("`{name}` is missing")),
        }
    };
    let api_version = field("apiVersion");
    let kind = field("kind");
    let metadata = node.get("metadata");
    let name = match metadata.map(|m| (m, m.get("name"))) {
        Some((_, Some(Node {
            value: Value::String(s),
            ..
        }))) if !s.is_empty() => Ok(s.clone()),
        Some((_, Some(other))) => Err(format!("`metadata.name` must be a non-empty string, not {}", other.kind())),
        Some((m, None)) if m.get("generateName").is_some() => Err(
            "`metadata.name` is missing (`generateName` is not supported: objects are applied by name)".to_owned(),
        ),
        Some((m, None)) if m.as_map().is_none() => {
            Err(format!("`metadata` must be a mapping, not {}", m.kind()))
        }
        _ => Err("`metadata.name` is missing".to_owned()),
    };
    let namespace = match metadata.and_then(|m| m.get("namespace")) {
        None => Ok(None),
        Some(n) if n.is_null() => Ok(None),
        Some(Node {
            value: Value::String(s),
            ..
        }) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "`metadata.namespace` must be a string, not {}",
            other.kind()
        )),
    };
    let object_name = match (&kind, &name) {
        (Ok(k), Ok(n)) => Some(format!("{k}/{n}")),
        (Ok(k), Err(_)) => Some(k.clone()),
        _ => None,
    };
    // Tool configs that live next to manifests are not objects to apply.
    let not_an_object = match api_version.as_deref() {
        Ok(v) if v.starts_with("kustomize.config.k8s.io/") => Some(
            "this is a kustomize `kustomization.yaml`, not a Kubernetes object: driftless applies rendered manifests and does not run kustomize; keep it out of the manifest directory or render it (`kustomize build`) and commit the output",
        ),
        _ => None,
    };
    let mut ok = true;
    for problem in [
        api_version.as_ref().err(),
        kind.as_ref().err(),
        name.as_ref().err(),
        namespace.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    {
        ok = false;
        let mut d = at(Diagnostic::error(problem.clone()));
        if let Some(o) = &object_name {
            d = d.object(o.clone());
        }
        if let Some(hint) = not_an_object {
            d = d.hint(hint);
        }
        diags.push(d);
    }
    if !ok {
        return None;
    }
    Some(KubeObject {
        api_version: api_version.ok()?,
        kind: kind.ok()?,
        name: name.ok()?,
        namespace: namespace.ok()?,
        body: node.to_json(),
        origin: Origin {
            file: file.to_owned(),
            line: node.line,
        },
    })
}

/// The first mapping key under `node` that is a mapping or a list (what
/// `name: {{ .Release.Name }}` parses to).
fn non_scalar_key(node: &Node) -> Option<&Node> {
    match &node.value {
        Value::Map(entries) => entries.iter().find_map(|(k, v)| {
            if matches!(k.value, Value::Map(_) | Value::Seq(_)) {
                Some(k)
            } else {
                non_scalar_key(v)
            }
        }),
        Value::Seq(items) => items.iter().find_map(non_scalar_key),
        _ => None,
    }
}

/// The first line where `{{` starts a value or a line, the mark of a Helm
/// or other Go template.
fn helm_line(text: &str) -> Option<u32> {
    text.lines().enumerate().find_map(|(i, line)| {
        let t = line.trim_start();
        let t = t.strip_prefix("- ").unwrap_or(t).trim_start();
        let value = match t.split_once(": ") {
            Some((key, value)) if !key.contains('{') => value.trim_start(),
            _ => t,
        };
        value.starts_with("{{").then_some(i as u32 + 1)
    })
}

fn helm_error(file: &str, line: u32) -> Diagnostic {
    Diagnostic::error(
        "this looks like a Helm/Go template (`{{ ... }}`), not a Kubernetes manifest: driftless renders only `.j2` (minijinja) templates",
    )
    .file(file)
    .line(line)
    .hint("render the chart (`helm template`) and commit the output, or rewrite the template as a `.j2` file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_files_skip_empty_documents() {
        let text = "# header\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n---\n# nothing\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: apps\nspec: {replicas: 2}\n";
        let objects = load("k8s/app.yaml", text).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].key(), "Namespace/apps");
        assert_eq!(objects[1].key(), "Deployment/apps/web");
        assert_eq!(objects[1].origin.line, 9);
        assert_eq!(objects[1].body["spec"]["replicas"], 2);
        assert!(
            load("k8s/empty.yaml", "# only comments\n---\n")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn lists_are_expanded() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: a}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: b}\n";
        let objects = load("k8s/list.yaml", text).unwrap();
        assert_eq!(
            objects.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(objects[1].origin.line, 7);
    }

    #[test]
    fn missing_fields_name_the_object_and_line() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Secret\nmetadata: {namespace: x}\n---\n- not an object\n---\nkind: Service\nmetadata: {name: svc}\n";
        let d = load("k8s/bad.yaml", text).unwrap_err();
        let errs: Vec<_> = d.errors().collect();
        assert_eq!(errs.len(), 3, "{d}");
        assert_eq!(errs[0].line, Some(5));
        assert_eq!(errs[0].object.as_deref(), Some("Secret"));
        assert!(errs[0].message.contains("metadata.name"));
        assert_eq!(errs[1].line, Some(9));
        assert_eq!(errs[2].object.as_deref(), Some("Service/svc"));
        assert!(errs[2].message.contains("apiVersion"));
    }

    #[test]
    fn helm_templates_are_recognised() {
        for text in [
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n",
            "{{- if .Values.enabled }}\napiVersion: v1\nkind: ConfigMap\n{{- end }}\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels:\n    {{- include \"chart.labels\" . | nindent 4 }}\n",
        ] {
            let d = load("charts/x/templates/cm.yaml", text).unwrap_err();
            let e = d.errors().next().unwrap();
            assert!(e.message.contains("Helm"), "{text}: {d}");
            assert!(e.message.contains(".j2"));
            assert!(e.line.is_some());
        }
        // Go templates inside string values (Alertmanager, Prometheus) are data.
        let ok = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: t}\ndata:\n  tmpl: |\n    {{ range .Alerts }}{{ end }}\n  summary: 'Pod {{ $labels.pod }}'\n";
        assert_eq!(load("k8s/t.yaml", ok).unwrap().len(), 1);
    }

    #[test]
    fn duplicate_objects_and_keys_are_errors() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n";
        let d = load("k8s/dup.yaml", text).unwrap_err();
        assert!(d.to_string().contains("defined twice"), "{d}");
        let d = load(
            "k8s/dupkey.yaml",
            "apiVersion: v1\nkind: ConfigMap\nkind: Secret\n",
        )
        .unwrap_err();
        assert_eq!(d.errors().next().unwrap().line, Some(3));
    }

    #[test]
    fn deep_manifests_load_on_a_small_stack() {
        let deep = "[".repeat(120) + "1" + &"]".repeat(120);
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: deep}}\ndata: {{x: {deep}}}\n"
        );
        let objects = load("k8s/deep.yaml", &text).unwrap();
        assert_eq!(objects.len(), 1);
        let d = load(
            "k8s/deeper.yaml",
            &("[".repeat(10_000) + &"]".repeat(10_000)),
        )
        .unwrap_err();
        assert!(d.to_string().contains("limit"), "{d}");
    }

    #[test]
    fn kustomize_files_get_a_hint() {
        let d = load("k8s/kustomization.yaml", "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [a.yaml]\n").unwrap_err();
        let e = d.errors().next().unwrap();
        assert!(
            e.hint.as_deref().unwrap().contains("kustomize build"),
            "{e}"
        );
    }

    #[test]
    fn octal_modes_read_as_kubectl_does() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  volumes:\n  - name: v\n    configMap: {name: c, defaultMode: 0644}\n";
        let o = &load("k8s/p.yaml", text).unwrap()[0];
        assert_eq!(
            o.body["spec"]["volumes"][0]["configMap"]["defaultMode"],
            420
        );
    }
}
