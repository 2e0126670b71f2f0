//! `extends`: a service built on another service of the same file or of
//! another repo file, merged with Compose's rules (compose-go's
//! `override.MergeYaml` at `services.x`):
//!
//! - mappings merge key by key, sequences append, scalars are replaced, and a
//!   null in the extending service keeps the base value;
//! - `command`, `entrypoint`, `healthcheck.test` and `ulimits.*` are replaced
//!   whole;
//! - `environment`, `labels`, `env_file` (mapping or list) are turned into
//!   `KEY=value` lists and appended, so the later value of a key wins;
//!   `extra_hosts` likewise, without repeating an entry;
//! - `depends_on` and `networks` are turned into mappings and merged;
//! - `logging` merges when both sides use the same driver (or one names
//!   none), else the extending side replaces it;
//! - a value tagged `!reset` removes the key, `!override` replaces it whole.
//!
//! Relative paths in a service taken from another file (`env_file`, bind
//! mount sources) are rewritten to stay correct from the extending file.
//! Extends chains are followed recursively; a cycle is an error naming it.

use std::sync::Arc;

use super::Ctx;
use crate::diag::Diagnostic;
use crate::source::join_relative;
use crate::yaml::{Node, Value};

impl Ctx<'_> {
    /// The service `name` of `file` with its `extends` chain merged in, or
    /// `None` (reported) when it cannot be built. `chain` holds the services
    /// being resolved, for cycle detection.
    pub(crate) fn resolve_service(
        &mut self,
        file: &str,
        name: &str,
        chain: &mut Vec<(String, String)>,
    ) -> Option<Node> {
        let key = (file.to_owned(), name.to_owned());
        if let Some(done) = self.resolved.get(&key) {
            return done.clone();
        }
        let root: Arc<Node> = self.files.get(file).cloned().flatten()?;
        let service = root
            .get("services")
            .and_then(Node::as_map)
            .and_then(|entries| entries.iter().find(|(k, _)| k.as_str() == Some(name)))
            .map(|(_, v)| v.clone())?;
        let path = format!("services.{name}");
        let result = match service.get("extends") {
            None => Some(service),
            Some(ext) => {
                let ext = ext.clone();
                chain.push(key.clone());
                let base = self.base_of(file, name, &ext, &path, chain);
                chain.pop();
                base.map(|(base, base_file)| {
                    let mut base = base;
                    if base_file != file {
                        self.rebase_paths(&mut base, &base_file, file, &path);
                    }
                    let mut over = service;
                    if let Value::Map(entries) = &mut over.value {
                        entries.retain(|(k, _)| k.as_str() != Some("extends"));
                    }
                    let mut merged = merge(base, over, &mut Vec::new());
                    merged.tag = None;
                    merged
                })
            }
        };
        self.resolved.insert(key, result.clone());
        result
    }

    /// Resolves the base named by an `extends` value; returns it with the
    /// file it came from.
    fn base_of(
        &mut self,
        file: &str,
        name: &str,
        ext: &Node,
        path: &str,
        chain: &mut Vec<(String, String)>,
    ) -> Option<(Node, String)> {
        let ext_path = format!("{path}.extends");
        let (base_name, base_file) = match &ext.value {
            Value::String(s) => (s.clone(), file.to_owned()),
            Value::Map(entries) => {
                let mut service = None;
                let mut other = None;
                for (k, v) in entries {
                    let Some(key) = self.key(k, &ext_path) else {
                        continue;
                    };
                    let child = format!("{ext_path}.{key}");
                    match key {
                        "service" => service = self.text(v, &child),
                        "file" => other = self.text(v, &child).map(|f| (f, v)),
                        _ => self.unsupported(k, &child),
                    }
                }
                let Some(service) = service else {
                    self.error(
                        ext,
                        &ext_path,
                        "`extends` needs `service:`, the service to extend",
                    );
                    return None;
                };
                let base_file = match other {
                    None => file.to_owned(),
                    Some((other, node)) => match join_relative(file, &other) {
                        Ok(p) => {
                            self.other_file(&p, node, &format!("{ext_path}.file"))?;
                            p
                        }
                        Err(e) => {
                            self.error(node, &format!("{ext_path}.file"), e.to_string());
                            return None;
                        }
                    },
                };
                (service, base_file)
            }
            _ => {
                self.error(
                    ext,
                    &ext_path,
                    format!(
                        "`extends` must be a service name or a mapping, not {}",
                        ext.kind()
                    ),
                );
                return None;
            }
        };

        let target = (base_file.clone(), base_name.clone());
        if chain.contains(&target) {
            let start = chain.iter().position(|c| *c == target).unwrap_or(0);
            let names: Vec<String> = chain[start..]
                .iter()
                .chain(std::iter::once(&target))
                .map(|(f, s)| {
                    if f == self.input.file {
                        s.clone()
                    } else {
                        format!("{f}:{s}")
                    }
                })
                .collect();
            self.report(
                Diagnostic::error(format!("`extends` cycle: {}", names.join(" -> ")))
                    .hint("a service cannot extend itself, directly or through others"),
                ext,
                &ext_path,
            );
            return None;
        }
        let exists = self
            .files
            .get(&base_file)
            .cloned()
            .flatten()
            .and_then(|root| {
                root.get("services")?
                    .as_map()?
                    .iter()
                    .any(|(k, _)| k.as_str() == Some(base_name.as_str()))
                    .then_some(())
            })
            .is_some();
        if !exists {
            let where_ = if base_file == file {
                String::new()
            } else {
                format!(" in `{base_file}`")
            };
            self.error(
                ext,
                &ext_path,
                format!("cannot extend service `{name}`: no service `{base_name}`{where_}"),
            );
            return None;
        }
        let base = self.resolve_service(&base_file, &base_name, chain)?;
        Some((base, base_file))
    }

    /// Rewrites the relative paths of a service read from `from` so that
    /// they mean the same files when read from `to`.
    pub(crate) fn rebase_paths(&mut self, service: &mut Node, from: &str, to: &str, path: &str) {
        let Value::Map(entries) = &mut service.value else {
            return;
        };
        let to_dir = to.rsplit_once('/').map_or("", |(d, _)| d);
        let mut errors: Vec<(Node, String)> = Vec::new();
        let rebase = |node: &mut Node, short_volume: bool, errors: &mut Vec<(Node, String)>| {
            if let Err(e) = rebase_path(node, from, to_dir, short_volume) {
                errors.push((node.clone(), e));
            }
        };
        for (k, v) in entries.iter_mut() {
            let volumes = match k.as_str() {
                Some("volumes") => true,
                Some("env_file" | "label_file") => false,
                // `build: ./dir` or `build: {context: ./dir}` (a URL stays).
                Some("build") => {
                    match &mut v.value {
                        Value::String(_) => rebase(v, false, &mut errors),
                        Value::Map(fields) => {
                            for (fk, fv) in fields.iter_mut() {
                                if fk.as_str() == Some("context") {
                                    rebase(fv, false, &mut errors);
                                }
                            }
                        }
                        _ => {}
                    }
                    continue;
                }
                _ => continue,
            };
            let items: Vec<&mut Node> = match &mut v.value {
                Value::Seq(items) => items.iter_mut().collect(),
                _ => vec![v],
            };
            for item in items {
                match &mut item.value {
                    Value::String(_) => rebase(item, volumes, &mut errors),
                    Value::Map(fields) => {
                        // Long form: `env_file` `path`, or a bind mount's `source`.
                        let bind = fields
                            .iter()
                            .any(|(k, v)| k.as_str() == Some("type") && v.as_str() == Some("bind"));
                        for (fk, fv) in fields.iter_mut() {
                            match fk.as_str() {
                                Some("path") if !volumes => rebase(fv, false, &mut errors),
                                Some("source") if bind => rebase(fv, false, &mut errors),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        for (node, message) in errors {
            self.error(&node, path, message);
        }
    }
}

/// Rewrites one relative path read from the file `from` so that it means
/// the same repo path from the directory `to_dir`. With `short_volume`, the
/// string is `source:target[:options]` and only a source starting with `.`
/// is a path; otherwise the whole string is a path and anything not
/// absolute (nor a URL) is relative.
pub(crate) fn rebase_path(
    node: &mut Node,
    from: &str,
    to_dir: &str,
    short_volume: bool,
) -> Result<(), String> {
    let Value::String(p) = &mut node.value else {
        return Ok(());
    };
    let spec = p.clone();
    let (source, rest) = match spec.split_once(':').filter(|_| short_volume) {
        Some((source, rest)) => (source, Some(rest)),
        None => (spec.as_str(), None),
    };
    let relative = if short_volume {
        source.starts_with('.')
    } else {
        !source.is_empty()
            && !source.starts_with(['/', '~'])
            && !source.contains("://")
            && !source.starts_with("git@")
    };
    if !relative {
        return Ok(());
    }
    let repo_path = join_relative(from, source).map_err(|e| e.to_string())?;
    let source = relative_path(to_dir, &repo_path);
    *p = match rest {
        Some(rest) => format!("{source}:{rest}"),
        None => source,
    };
    Ok(())
}

/// `target` (a repo path) relative to the repo directory `dir`.
pub(crate) fn relative_path(dir: &str, target: &str) -> String {
    let from: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    let to: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    if parts.is_empty() {
        parts.push(".");
    }
    parts.extend(&to[common..]);
    parts.join("/")
}

/// Merges the service `over` over `base` with Compose's rules.
pub(crate) fn merge_service(base: Node, over: Node) -> Node {
    let mut merged = merge(base, over, &mut Vec::new());
    merged.tag = None;
    merged
}

/// Merges `over` into `base` at `path` (keys below the service).
fn merge(base: Node, over: Node, path: &mut Vec<String>) -> Node {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["command"] | ["entrypoint"] | ["healthcheck", "test"] | ["ulimits", _] => return over,
        ["environment"]
        | ["labels"]
        | ["env_file"]
        | ["annotations"]
        | ["sysctls"]
        | ["dns"]
        | ["dns_opt"]
        | ["dns_search"]
        | ["tmpfs"] => {
            return concat(to_sequence(base), to_sequence(over), false);
        }
        ["extra_hosts"] => return concat(to_sequence(base), to_sequence(over), true),
        // Unique resources: an entry of `over` with the key of one in
        // `base` replaces it in place; the others are appended.
        ["volumes"] | ["secrets"] | ["configs"] | ["ports"]
            if matches!((&base.value, &over.value), (Value::Seq(_), Value::Seq(_))) =>
        {
            return merge_unique(base, over, p[0]);
        }
        ["depends_on"] => {
            return merge_mappings(to_mapping(base, true), to_mapping(over, true), path);
        }
        ["networks"] => {
            return merge_mappings(to_mapping(base, false), to_mapping(over, false), path);
        }
        ["logging"] => {
            let driver = |n: &Node| n.get("driver").and_then(Node::scalar_text);
            let (b, o) = (driver(&base), driver(&over));
            if b.is_some() && o.is_some() && b != o {
                return over;
            }
        }
        _ => {}
    }
    if over.is_null() && over.tag.is_none() {
        return base;
    }
    match (&base.value, &over.value) {
        (Value::Map(_), Value::Map(_)) => merge_mappings(base, over, path),
        (Value::Seq(_), Value::Seq(_)) => concat(base, over, false),
        _ => over,
    }
}

fn merge_mappings(base: Node, over: Node, path: &mut Vec<String>) -> Node {
    let (Value::Map(mut entries), Value::Map(over_entries)) = (base.value.clone(), over.value)
    else {
        return base;
    };
    for (k, v) in over_entries {
        let key = k.scalar_text().unwrap_or_default();
        let existing = entries
            .iter()
            .position(|(bk, _)| bk.scalar_text().as_deref() == Some(&key));
        match (v.tag.as_deref(), existing) {
            (Some("!reset"), Some(i)) => {
                entries.remove(i);
            }
            (Some("!reset"), None) => {}
            (Some("!override"), Some(i)) => {
                let mut v = v;
                v.tag = None;
                entries[i].1 = v;
            }
            (_, Some(i)) => {
                let b = std::mem::replace(&mut entries[i].1, Node::new(Value::Null));
                path.push(key);
                entries[i].1 = merge(b, v, path);
                path.pop();
            }
            (_, None) => entries.push((k, v)),
        }
    }
    Node {
        value: Value::Map(entries),
        ..base
    }
}

/// Merges two sequences of unique resources (compose-spec `merge.md`:
/// volumes, secrets and configs by target, ports by address, published
/// port, target and protocol).
fn merge_unique(base: Node, over: Node, key: &str) -> Node {
    let (Value::Seq(mut items), Value::Seq(more)) = (base.value.clone(), over.value) else {
        return base;
    };
    for item in more {
        let k = unique_key(&item, key);
        match items.iter().position(|i| unique_key(i, key) == k) {
            Some(i) => items[i] = item,
            None => items.push(item),
        }
    }
    Node {
        value: Value::Seq(items),
        ..base
    }
}

/// The unique key of one entry of `volumes`, `secrets`, `configs` or
/// `ports`, short or long syntax.
fn unique_key(item: &Node, key: &str) -> String {
    let field = |name: &str| item.get(name).and_then(Node::scalar_text);
    match (key, &item.value) {
        ("volumes", Value::String(s)) => {
            let parts: Vec<&str> = s.split(':').collect();
            parts.get(1).unwrap_or(&parts[0]).to_string()
        }
        ("volumes", _) => field("target").unwrap_or_default(),
        ("secrets" | "configs", Value::String(s)) => s.clone(),
        ("secrets" | "configs", _) => field("target")
            .or_else(|| field("source"))
            .unwrap_or_default(),
        ("ports", Value::Map(_)) => format!(
            "{}:{}:{}/{}",
            field("host_ip").unwrap_or_default(),
            field("published").unwrap_or_default(),
            field("target").unwrap_or_default(),
            field("protocol").unwrap_or_else(|| "tcp".to_owned())
        ),
        _ => item.scalar_text().unwrap_or_default(),
    }
}

/// Appends two sequences; with `dedup`, entries of `over` already in `base`
/// are dropped.
fn concat(base: Node, over: Node, dedup: bool) -> Node {
    let (Value::Seq(mut items), Value::Seq(more)) = (base.value.clone(), over.value) else {
        return base;
    };
    for item in more {
        if dedup && items.iter().any(|i| i.value == item.value) {
            continue;
        }
        items.push(item);
    }
    Node {
        value: Value::Seq(items),
        ..base
    }
}

/// A mapping as a sorted `KEY=value` list (`KEY` alone for a null value); a
/// string as a one-item list.
fn to_sequence(node: Node) -> Node {
    match &node.value {
        Value::Map(entries) => {
            let mut items: Vec<Node> = entries
                .iter()
                .flat_map(|(k, v)| {
                    let key = k.scalar_text().unwrap_or_default();
                    match &v.value {
                        Value::Null => vec![k.with_value(Value::String(key))],
                        Value::Seq(values) => values
                            .iter()
                            .map(|x| {
                                let text = x.scalar_text().unwrap_or_default();
                                x.with_value(Value::String(format!("{key}={text}")))
                            })
                            .collect(),
                        _ => {
                            let text = v.scalar_text().unwrap_or_default();
                            vec![v.with_value(Value::String(format!("{key}={text}")))]
                        }
                    }
                })
                .collect();
            items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            node.with_value(Value::Seq(items))
        }
        Value::String(_) => node.with_value(Value::Seq(vec![node.clone()])),
        Value::Null => node.with_value(Value::Seq(Vec::new())),
        _ => node,
    }
}

/// A list of names as a mapping: for `depends_on` each name gets
/// `{condition: service_started, required: true}`, else a null value.
fn to_mapping(node: Node, depends_on: bool) -> Node {
    match &node.value {
        Value::Seq(items) => {
            let entries = items
                .iter()
                .map(|item| {
                    let value = if depends_on {
                        let s = |text: &str| item.with_value(Value::String(text.to_owned()));
                        item.with_value(Value::Map(vec![
                            (s("condition"), s("service_started")),
                            (s("required"), item.with_value(Value::Bool(true))),
                        ]))
                    } else {
                        item.with_value(Value::Null)
                    };
                    (item.clone(), value)
                })
                .collect();
            node.with_value(Value::Map(entries))
        }
        Value::Null => node.with_value(Value::Map(Vec::new())),
        _ => node,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_document;

    fn merged(base: &str, over: &str) -> serde_json::Value {
        let b = parse_document(base).unwrap();
        let o = parse_document(over).unwrap();
        merge(b, o, &mut Vec::new()).to_json()
    }

    #[test]
    fn merge_rules() {
        use serde_json::json;
        // Scalars replaced, mappings merged, sequences appended, null keeps base.
        assert_eq!(
            merged(
                "image: a\nports: ['80:80']\ndeploy: {replicas: 2, resources: {limits: {cpus: 1}}}\nuser: root",
                "image: b\nports: ['81:81']\ndeploy: {resources: {limits: {memory: 1g}}}\nuser: null"
            ),
            json!({"image": "b", "ports": ["80:80", "81:81"],
                   "deploy": {"replicas": 2, "resources": {"limits": {"cpus": 1, "memory": "1g"}}},
                   "user": "root"})
        );
        // command / entrypoint / healthcheck.test replaced whole.
        assert_eq!(
            merged(
                "command: [a, b]\nhealthcheck: {test: [CMD, x], retries: 3}",
                "command: [c]\nhealthcheck: {test: [CMD, y]}"
            ),
            json!({"command": ["c"], "healthcheck": {"test": ["CMD", "y"], "retries": 3}})
        );
        // environment: map + list → KEY=value list, the later value last.
        assert_eq!(
            merged("environment: {B: 1, A: 2, C: null}", "environment: [A=3]"),
            json!({"environment": ["A=2", "B=1", "C", "A=3"]})
        );
        // depends_on list + map → mapping.
        assert_eq!(
            merged(
                "depends_on: [db]",
                "depends_on: {cache: {condition: service_healthy}}"
            ),
            json!({"depends_on": {"db": {"condition": "service_started", "required": true},
                                   "cache": {"condition": "service_healthy"}}})
        );
        // networks list + map.
        assert_eq!(
            merged("networks: [front]", "networks: {back: {aliases: [x]}}"),
            json!({"networks": {"front": null, "back": {"aliases": ["x"]}}})
        );
        // logging: different drivers replace, same driver merges.
        assert_eq!(
            merged(
                "logging: {driver: syslog, options: {a: 1}}",
                "logging: {driver: json-file, options: {b: 2}}"
            ),
            json!({"logging": {"driver": "json-file", "options": {"b": 2}}})
        );
        assert_eq!(
            merged(
                "logging: {driver: syslog, options: {a: 1}}",
                "logging: {options: {b: 2}}"
            ),
            json!({"logging": {"driver": "syslog", "options": {"a": 1, "b": 2}}})
        );
        // extra_hosts dedupes; ulimits entries replaced.
        assert_eq!(
            merged(
                "extra_hosts: ['a:1.1.1.1']\nulimits: {nofile: {soft: 1, hard: 2}}",
                "extra_hosts: ['a:1.1.1.1', 'b:2.2.2.2']\nulimits: {nofile: 5}"
            ),
            json!({"extra_hosts": ["a:1.1.1.1", "b:2.2.2.2"], "ulimits": {"nofile": 5}})
        );
    }

    #[test]
    fn reset_and_override_tags() {
        use serde_json::json;
        assert_eq!(
            merged(
                "command: sleep\nports: ['80:80']\nimage: a",
                "command: !reset null\nports: !override ['81:81']"
            ),
            json!({"ports": ["81:81"], "image": "a"})
        );
    }

    #[test]
    fn relative_paths_between_directories() {
        assert_eq!(relative_path("compose", "compose/a.env"), "./a.env");
        assert_eq!(relative_path("compose", "base/x/a.env"), "../base/x/a.env");
        assert_eq!(relative_path("", "a/b"), "./a/b");
        assert_eq!(relative_path("a/b", "a"), "..");
        assert_eq!(
            join_relative(
                "compose/stack.yaml",
                &relative_path("compose", "base/x/a.env")
            )
            .unwrap(),
            "base/x/a.env"
        );
    }
}
