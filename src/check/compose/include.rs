//! Project structure as Compose has it: top-level `include:` and several
//! files merged into one project (compose-go's `ApplyInclude` and
//! `override.Merge`).
//!
//! - An included file is loaded as a project of its own: its paths resolve
//!   from its `project_directory` (default: its own directory), its
//!   variables are the including project's, with its `env_file`s (default:
//!   `.env` in its project directory) filling the gaps; its `extends` are
//!   resolved there. Its services, networks, volumes, configs and secrets
//!   are then imported; a resource that the including file also defines,
//!   differently, is an error (as Compose: an include never overrides
//!   silently). A file including itself, directly or not, is an error
//!   naming the cycle.
//! - Override files (`compose.override.yaml` next to `compose.yaml`, or the
//!   list in driftless.yaml) are merged over the main file in order with
//!   Compose's merge rules ([`super::extends`]): services merge key by key,
//!   other top-level mappings merge, scalars are replaced. Their relative
//!   paths resolve from the main file's directory, as Compose resolves
//!   every `-f` file from the project directory.
//!
//! Every relative path ends up relative to the main file: included trees
//! are rebased into the including file's frame before they are imported,
//! so the service conversion reads paths one way only.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Ctx;
use super::extends::{merge_service, rebase_path};
use crate::diag::Diagnostic;
use crate::source::join_relative;
use crate::yaml::{self, Node, Value};

/// Top-level sections an included file contributes, with the noun used in
/// messages.
const IMPORTED: [(&str, &str); 5] = [
    ("services", "service"),
    ("networks", "network"),
    ("volumes", "volume"),
    ("configs", "config"),
    ("secrets", "secret"),
];

/// One `include:` entry, paths already resolved to repo paths.
struct Include<'n> {
    paths: Vec<(String, &'n Node)>,
    /// Repo directory the included project's relative paths resolve from.
    project_dir: String,
    /// `env_file`s: (repo path, node), required when given explicitly.
    env_files: Vec<(String, &'n Node)>,
    /// The entry, for diagnostics.
    at: &'n Node,
}

impl Ctx<'_> {
    /// Expands `include:` in `root`, a file's tree whose relative paths
    /// resolve from `frame` (a path in the project directory),
    /// importing what the included files define. `chain` holds the files
    /// being included, for cycle detection.
    pub(crate) fn expand_includes(
        &mut self,
        root: &mut Node,
        frame: &str,
        chain: &mut Vec<String>,
    ) {
        let Some(include) = take_key(root, "include") else {
            return;
        };
        let entries = self.includes(&include, frame);
        for entry in entries {
            let Some(imported) = self.load_include(&entry, frame, chain) else {
                continue;
            };
            self.import(root, imported, &entry);
        }
    }

    /// The entries of an `include:` value.
    fn includes<'n>(&mut self, node: &'n Node, frame: &str) -> Vec<Include<'n>> {
        let mut out = Vec::new();
        let Some(items) = self.seq(node, "include") else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("include[{i}]");
            let mut paths = Vec::new();
            let mut project_dir = None;
            let mut env_files = Vec::new();
            match &item.value {
                Value::Map(fields) => {
                    for (k, v) in fields {
                        let Some(key) = self.key(k, &ipath) else {
                            continue;
                        };
                        let fp = format!("{ipath}.{key}");
                        match key {
                            "path" => paths = self.repo_paths(v, &fp, frame),
                            "project_directory" => {
                                project_dir = self.text(v, &fp).and_then(|d| {
                                    self.repo_path(&d, v, &fp, frame)
                                        .map(|p| p.trim_end_matches('/').to_owned())
                                });
                            }
                            "env_file" => env_files = self.repo_paths(v, &fp, frame),
                            k if k.starts_with("x-") => {}
                            _ => self.unsupported(k, &fp),
                        }
                    }
                    if paths.is_empty() && !fields.iter().any(|(k, _)| k.as_str() == Some("path")) {
                        self.report(
                            Diagnostic::error("an `include` entry needs `path:`").hint(
                                "name the Compose file to include: `- path: ../db/compose.yaml`",
                            ),
                            item,
                            &ipath,
                        );
                    }
                }
                _ => paths = self.repo_paths(item, &ipath, frame),
            }
            let Some((first, _)) = paths.first() else {
                continue;
            };
            let project_dir = project_dir
                .unwrap_or_else(|| first.rsplit_once('/').map_or("", |(d, _)| d).to_owned());
            out.push(Include {
                paths,
                project_dir,
                env_files,
                at: item,
            });
        }
        out
    }

    /// A string or list of relative paths as repo paths (reported when
    /// they leave the repo).
    fn repo_paths<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        frame: &str,
    ) -> Vec<(String, &'n Node)> {
        self.text_or_texts(node, path)
            .into_iter()
            .filter_map(|(rel, at)| Some((self.repo_path(&rel, at, path, frame)?, at)))
            .collect()
    }

    fn repo_path(&mut self, rel: &str, at: &Node, path: &str, frame: &str) -> Option<String> {
        match join_relative(frame, rel) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(at, path, e.to_string());
                None
            }
        }
    }

    /// Loads one included project: its files parsed, interpolated with its
    /// variables and merged, its own includes and `extends` resolved, its
    /// relative paths rebased into `frame`. `None` when it failed (reported).
    fn load_include(
        &mut self,
        entry: &Include,
        frame: &str,
        chain: &mut Vec<String>,
    ) -> Option<Node> {
        let first = entry.paths[0].0.clone();
        if let Some(start) = chain.iter().position(|f| *f == first) {
            let cycle: Vec<&str> = chain[start..]
                .iter()
                .map(String::as_str)
                .chain([first.as_str()])
                .collect();
            self.report(
                Diagnostic::error(format!("`include` cycle: {}", cycle.join(" -> ")))
                    .hint("a Compose file cannot include itself, directly or through the files it includes"),
                entry.at,
                "include",
            );
            return None;
        }

        // The included project's variables: the including project's, with
        // its env files filling the gaps (compose-go `Mapping.Merge`).
        let saved = self.vars.clone();
        let env_files: Vec<(String, Option<&Node>)> = if entry.env_files.is_empty() {
            let default = format!("{}/.env", entry.project_dir);
            let default = default.trim_start_matches('/').to_owned();
            vec![(default, None)]
        } else {
            entry
                .env_files
                .iter()
                .map(|(p, n)| (p.clone(), Some(*n)))
                .collect()
        };
        for (path, required) in env_files {
            let Some(text) = self.read_text(&path, required, "include.env_file") else {
                continue;
            };
            let vars = saved.clone();
            let lookup = |k: &str| vars.get(k).cloned();
            match super::dotenv::parse(&text, &lookup) {
                Ok(parsed) => {
                    for (k, v) in parsed.entries {
                        self.vars.entry(k).or_insert(v);
                    }
                }
                Err(e) => self.diags.push(
                    Diagnostic::error(e.message)
                        .file(path.clone())
                        .line(e.line)
                        .hint("see https://docs.docker.com/compose/how-tos/environment-variables/variable-interpolation/#env-file-syntax"),
                ),
            }
        }

        let included_frame = format!("{}/compose.yaml", entry.project_dir);
        let included_frame = included_frame.trim_start_matches('/').to_owned();
        chain.push(first.clone());
        let mut merged: Option<Node> = None;
        for (path, at) in &entry.paths {
            let Some(mut tree) = self.parse_file(path, at, "include") else {
                continue;
            };
            self.sources.push(path.clone());
            self.check_included_keys(&tree);
            self.expand_includes(&mut tree, &included_frame, chain);
            merged = Some(match merged {
                None => tree,
                Some(base) => merge_files(base, tree),
            });
        }
        chain.pop();
        let Some(mut tree) = merged else {
            self.vars = saved;
            return None;
        };

        // `extends` resolved in the included project, with its variables.
        self.files
            .insert(first.clone(), Some(Arc::new(tree.clone())));
        let names: Vec<String> = tree
            .get("services")
            .and_then(Node::as_map)
            .unwrap_or_default()
            .iter()
            .filter_map(|(k, _)| k.scalar_text())
            .collect();
        let mut services = Vec::new();
        for name in names {
            match self.resolve_service(&first, &name, &mut Vec::new()) {
                Some(s) => services.push((name, s)),
                None => return self.restore(saved),
            }
        }
        self.vars = saved;
        if let Some(Value::Map(entries)) = get_mut(&mut tree, "services").map(|n| &mut n.value) {
            for (k, v) in entries.iter_mut() {
                if let Some((_, s)) = services
                    .iter()
                    .find(|(n, _)| k.as_str() == Some(n.as_str()))
                {
                    *v = s.clone();
                }
            }
        }
        self.rebase_tree(&mut tree, &included_frame, frame);
        Some(tree)
    }

    fn restore(&mut self, saved: BTreeMap<String, String>) -> Option<Node> {
        self.vars = saved;
        None
    }

    /// Parses and interpolates a Compose file of the repo, its nodes marked
    /// with its path; a missing file is reported at `at`.
    pub(crate) fn parse_file(&mut self, path: &str, at: &Node, object: &str) -> Option<Node> {
        let text = self.read_text(path, Some(at), object)?;
        let mut root = match yaml::parse_document_with(&text, &self.input.yaml) {
            Ok(root) => root,
            Err(e) => {
                self.diags.push(e.into_diagnostic(path));
                return None;
            }
        };
        if !matches!(root.value, Value::Map(_) | Value::Null) {
            self.error(
                &root,
                "",
                format!("a Compose file must be a mapping, not {}", root.kind()),
            );
            return None;
        }
        if root.is_null() {
            root.value = Value::Map(Vec::new());
        }
        root.set_file(&Arc::from(path));
        self.interpolate(&mut root, "");
        Some(root)
    }

    /// Reports top-level keys an included file may not have.
    fn check_included_keys(&mut self, root: &Node) {
        for (k, _) in root.as_map().unwrap_or_default() {
            let Some(key) = self.key(k, "") else { continue };
            match key {
                "services" | "networks" | "volumes" | "configs" | "secrets" | "include"
                | "name" | "version" => {}
                k if k.starts_with("x-") => {}
                _ => self.unsupported(k, key),
            }
        }
    }

    /// Imports the resources of an included tree into `root`.
    fn import(&mut self, root: &mut Node, imported: Node, entry: &Include) {
        let included = &entry.paths[0].0;
        for (section, noun) in IMPORTED {
            let Some(Value::Map(items)) = imported.get(section).map(|n| n.value.clone()) else {
                continue;
            };
            let target = section_mut(root, section);
            let Value::Map(existing) = &mut target.value else {
                continue;
            };
            let mut conflicts = Vec::new();
            for (k, v) in items {
                let name = k.scalar_text().unwrap_or_default();
                match existing
                    .iter()
                    .find(|(ek, _)| ek.scalar_text().as_deref() == Some(name.as_str()))
                {
                    Some((ek, ev)) => {
                        if ev.to_json() != v.to_json() {
                            conflicts.push((ek.clone(), name));
                        }
                    }
                    None => existing.push((k, v)),
                }
            }
            for (at, name) in conflicts {
                let at = if at.file.is_none() && at.line == 0 {
                    entry.at.clone()
                } else {
                    at
                };
                self.report(
                    Diagnostic::error(format!(
                        "{noun} `{name}` is defined here and, differently, by the included `{included}`"
                    ))
                    .hint(format!(
                        "an include never overrides: rename one, remove one, or change the included {noun} through an override file (`compose.override.yaml`, or `path:` as a list in the `include` entry)"
                    )),
                    &at,
                    &format!("{section}.{name}"),
                );
            }
        }
    }

    /// Rewrites the relative paths of an included tree (service paths and
    /// top-level `configs`/`secrets` `file:`) from `from`'s directory to
    /// `to`'s.
    fn rebase_tree(&mut self, tree: &mut Node, from: &str, to: &str) {
        if from.rsplit_once('/').map(|(d, _)| d) == to.rsplit_once('/').map(|(d, _)| d) {
            return;
        }
        if let Some(Value::Map(services)) = get_mut(tree, "services").map(|n| &mut n.value) {
            for (k, v) in services.iter_mut() {
                let path = format!("services.{}", k.scalar_text().unwrap_or_default());
                self.rebase_paths(v, from, to, &path);
            }
        }
        let to_dir = to.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        for section in ["configs", "secrets"] {
            let Some(Value::Map(items)) = get_mut(tree, section).map(|n| &mut n.value) else {
                continue;
            };
            for (_, def) in items.iter_mut() {
                let Value::Map(fields) = &mut def.value else {
                    continue;
                };
                for (fk, fv) in fields.iter_mut() {
                    if fk.as_str() != Some("file") {
                        continue;
                    }
                    if let Err(e) = rebase_path(fv, from, &to_dir, false) {
                        let at = fv.clone();
                        self.error(&at, section, e);
                    }
                }
            }
        }
    }
}

/// The value under `key` of a mapping node.
fn get_mut<'n>(node: &'n mut Node, key: &str) -> Option<&'n mut Node> {
    match &mut node.value {
        Value::Map(entries) => entries
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Removes `key` from a mapping node and returns its value.
fn take_key(root: &mut Node, key: &str) -> Option<Node> {
    let Value::Map(entries) = &mut root.value else {
        return None;
    };
    let i = entries.iter().position(|(k, _)| k.as_str() == Some(key))?;
    Some(entries.remove(i).1)
}

/// The mapping under `section` in `root`, created when missing (a null
/// section becomes an empty mapping).
fn section_mut<'n>(root: &'n mut Node, section: &str) -> &'n mut Node {
    if !matches!(root.value, Value::Map(_)) {
        root.value = Value::Map(Vec::new());
    }
    let Value::Map(entries) = &mut root.value else {
        unreachable!("just made a mapping");
    };
    let i = match entries
        .iter()
        .position(|(k, _)| k.as_str() == Some(section))
    {
        Some(i) => i,
        None => {
            entries.push((
                Node::new(Value::String(section.to_owned())),
                Node::new(Value::Map(Vec::new())),
            ));
            entries.len() - 1
        }
    };
    let node = &mut entries[i].1;
    if node.is_null() {
        node.value = Value::Map(Vec::new());
    }
    node
}

/// Merges the Compose file `over` over `base` (both whole files): each
/// service with the service rules, other top-level mappings key by key,
/// anything else replaced; `!reset` and `!override` honoured.
pub(crate) fn merge_files(base: Node, over: Node) -> Node {
    merge_entries(base, over, &|key, mut b, o| {
        if key == "services" {
            if b.is_null() {
                b.value = Value::Map(Vec::new());
            }
            if matches!((&b.value, &o.value), (Value::Map(_), Value::Map(_))) {
                return merge_entries(b, o, &|_, b, o| merge_service(b, o));
            }
        }
        merge_plain(b, o)
    })
}

/// Generic merge: mappings key by key (recursively), anything else replaced.
fn merge_plain(base: Node, over: Node) -> Node {
    if over.is_null() && over.tag.is_none() {
        return base;
    }
    if matches!((&base.value, &over.value), (Value::Map(_), Value::Map(_))) {
        merge_entries(base, over, &|_, b, o| merge_plain(b, o))
    } else {
        over
    }
}

/// Merges two mappings entry by entry: a key only in `over` is added, one
/// in both is merged with `merge` (given the key), `!reset` removes it and
/// `!override` replaces it whole. Anything but two mappings keeps `base`.
fn merge_entries(base: Node, over: Node, merge: &dyn Fn(&str, Node, Node) -> Node) -> Node {
    let (Value::Map(mut entries), Value::Map(over_entries)) = (base.value.clone(), over.value)
    else {
        return base;
    };
    for (k, v) in over_entries {
        let key = k.scalar_text().unwrap_or_default();
        let existing = entries
            .iter()
            .position(|(bk, _)| bk.scalar_text().as_deref() == Some(key.as_str()));
        match (existing, v.tag.as_deref()) {
            (Some(i), Some("!reset")) => {
                entries.remove(i);
            }
            (None, Some("!reset")) => {}
            (Some(i), Some("!override")) => {
                let mut v = v;
                v.tag = None;
                entries[i].1 = v;
            }
            (Some(i), _) => {
                let b = std::mem::replace(&mut entries[i].1, Node::new(Value::Null));
                entries[i].1 = merge(&key, b, v);
            }
            (None, _) => entries.push((k, v)),
        }
    }
    Node {
        value: Value::Map(entries),
        ..base
    }
}

/// The override files docker compose merges over `main` by default: the
/// first of `compose.override.yml`, `compose.override.yaml`,
/// `docker-compose.override.yml`, `docker-compose.override.yaml` in its
/// directory — only when `main` has one of Compose's default names.
pub fn default_override(main: &str, exists: &dyn Fn(&str) -> bool) -> Option<String> {
    let (dir, name) = match main.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), main),
    };
    if !matches!(
        name,
        "compose.yaml" | "compose.yml" | "docker-compose.yaml" | "docker-compose.yml"
    ) {
        return None;
    }
    [
        "compose.override.yml",
        "compose.override.yaml",
        "docker-compose.override.yml",
        "docker-compose.override.yaml",
    ]
    .iter()
    .map(|n| format!("{dir}{n}"))
    .find(|p| exists(p))
}
