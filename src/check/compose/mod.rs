//! The Compose loader: one rendered Compose file (plus the repo files it
//! refers to) becomes a fully resolved [`Project`], or the list of every
//! problem in it.
//!
//! The steps follow compose-go, the loader behind `docker compose`:
//!
//! 1. parse the YAML into a located tree ([`crate::yaml::Node`]);
//! 2. read `.env` next to the file ([`dotenv`]) and overlay the environment's
//!    values on it; the process environment is never read, so a render is the
//!    same wherever it runs;
//! 3. interpolate every string value ([`interpolate`]);
//! 4. resolve `extends` with Compose's merge rules, `!reset` and `!override`
//!    included ([`extends`]);
//! 5. convert each service key by key, expanding short syntax ([`syntax`]),
//!    image references checked with the distribution grammar ([`reference`]),
//!    reading `env_file`s, relative bind mounts and `configs` files from the
//!    repo ([`service`]);
//! 6. check references between services, networks, volumes and configs.
//!
//! Every key driftless does not apply is an error naming it, never silently
//! dropped. Errors are collected for the whole file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::Origin;
use crate::model::compose::{Network, Project};
use crate::yaml::{self, Node, Value};

mod build;
mod dotenv;
mod engine;
mod extends;
mod include;
mod interpolate;
mod profiles;
mod read;
mod reference;
mod resources;
mod service;
mod syntax;

pub use include::default_override;
pub use profiles::{known_profiles_hint, split_profiles};

/// Reads a rendered repo file by repo path: `None` when it is not in the
/// repo, an error diagnostic when it is there but cannot be read.
pub type ReadFile<'a> = dyn Fn(&str) -> Option<Result<Arc<[u8]>, Diagnostic>> + 'a;

/// What [`load`] needs: the file, its text, and access to the rest of the
/// rendered repo, without IO of its own.
pub struct Input<'a> {
    /// Rendered repo path of the Compose file, e.g. `compose/stack.yaml`.
    pub file: &'a str,
    pub text: &'a str,
    /// Project name when the file has no `name:` (normalised like Compose
    /// normalises a directory name).
    pub default_project_name: &'a str,
    /// The environment's values; they override `.env`.
    pub variables: &'a BTreeMap<String, String>,
    /// Reads another rendered repo file by repo path; `None`: not in the repo.
    pub read: &'a ReadFile<'a>,
    /// Repo paths of the files under a repo directory, at any depth (empty
    /// when the directory does not exist).
    pub is_dir: &'a dyn Fn(&str) -> Vec<String>,
    /// Whether a rendered repo file is executable (git mode 100755): build
    /// contexts and bound directories send it with mode 0755, else 0644.
    pub is_executable: &'a dyn Fn(&str) -> bool,
    /// The repo's symlinks at or under a directory (path, target text):
    /// a build context sends each as a link, as the docker CLI does.
    pub links_under: &'a dyn Fn(&str) -> Vec<(String, String)>,
    /// YAML limits for this file and the files it `extends` (the repo's
    /// `limits:`).
    pub yaml: yaml::Limits,
}

/// What a project takes from outside its Compose files — what docker
/// compose takes from its command line (`-p`, `--profile`): driftless.yaml's
/// settings for the environment. The default takes everything from the
/// files and their variables.
#[derive(Clone, Default)]
pub struct Options<'a> {
    /// The active profiles set by driftless.yaml; they replace
    /// `COMPOSE_PROFILES` from the values and `.env`.
    pub profiles: Option<&'a [String]>,
    /// Where [`Options::profiles`] is set (file, line), for diagnostics.
    pub profiles_origin: (&'a str, u32),
    /// The environment's values file, named when a `COMPOSE_*` variable set
    /// there is wrong.
    pub values_file: Option<&'a str>,
    /// Compose files merged over the main one, in order (docker compose's
    /// further `-f` files): `compose.override.yaml`, or driftless.yaml's
    /// `compose.overrides`. Repo paths; their relative paths resolve from
    /// the main file's directory.
    pub overrides: &'a [String],
    /// Looks a secret up in driftless's secret source (the
    /// `x-driftless-secret` of a Compose secret); `None`: there is none.
    pub secret: Option<&'a SecretLookup<'a>>,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("profiles", &self.profiles)
            .field("profiles_origin", &self.profiles_origin)
            .field("values_file", &self.values_file)
            .field("overrides", &self.overrides)
            .field("secret", &self.secret.is_some())
            .finish()
    }
}

/// Reads a value from driftless's secret source by name, or says why not.
pub type SecretLookup<'a> = dyn Fn(&str) -> Result<String, String> + 'a;

/// A loaded project with its warnings and every Compose file it was built
/// from (the main file first, then included and override files).
#[derive(Debug)]
pub struct Loaded {
    pub project: Project,
    pub warnings: Vec<Diagnostic>,
    pub files: Vec<String>,
}

/// Loads one Compose file into a [`Project`]. On success, returns the
/// warnings too (unset variables, obsolete `version`); on failure, every
/// error and warning found.
pub fn load(input: &Input) -> Result<(Project, Vec<Diagnostic>), Diagnostics> {
    load_with(input, &Options::default())
}

/// [`load`] with settings from outside the files (see [`Options`]).
pub fn load_with(
    input: &Input,
    options: &Options,
) -> Result<(Project, Vec<Diagnostic>), Diagnostics> {
    load_project(input, options).map(|l| (l.project, l.warnings))
}

/// [`load_with`], also naming the files the project was built from.
pub fn load_project(input: &Input, options: &Options) -> Result<Loaded, Diagnostics> {
    let mut ctx = Ctx::new(input, options);
    let project = ctx.load();
    ctx.unset_variable_errors();
    let diags = std::mem::take(&mut ctx.diags);
    match project {
        Some(project) if !diags.iter().any(Diagnostic::is_error) => Ok(Loaded {
            project,
            warnings: diags,
            files: std::mem::take(&mut ctx.sources),
        }),
        _ => {
            let mut all = Diagnostics::new();
            all.extend(diags);
            if !all.has_errors() {
                // Unreachable in practice: a `None` project always comes with an error.
                all.push(
                    Diagnostic::error("the Compose file could not be loaded").file(input.file),
                );
            }
            Err(all)
        }
    }
}

/// State of one load: the input, the variables, files read for `extends`,
/// and the diagnostics found so far.
pub(crate) struct Ctx<'a> {
    input: &'a Input<'a>,
    options: &'a Options<'a>,
    diags: Vec<Diagnostic>,
    /// `.env` values overlaid with [`Input::variables`].
    vars: BTreeMap<String, String>,
    /// Variables already reported unset (Compose warns once per name).
    warned: BTreeSet<String>,
    /// Values whose interpolation failed (file, line, column): left as
    /// written and already reported, so later checks skip them.
    failed: BTreeSet<(String, u32, u32)>,
    /// Values emptied in part by an unset variable (file, line, column) →
    /// the variable: an error there is its consequence.
    tainted: HashMap<(String, u32, u32), String>,
    /// Errors caused by each unset variable, reported as one per variable.
    caused: BTreeMap<String, Vec<Diagnostic>>,
    /// Parsed and interpolated Compose files by repo path (`None`: failed).
    files: HashMap<String, Option<Arc<Node>>>,
    /// Services with `extends` resolved, by (file, service).
    resolved: HashMap<(String, String), Option<Node>>,
    /// Swarm-only keys seen (object path, line): docker compose ignores
    /// them, and so does driftless, saying so once per file.
    swarm_only: Vec<(String, u32)>,
    /// Whether `develop` was seen (noted once per file).
    develop: Option<(String, u32)>,
    /// The `.env` read for the project (repo path, text), to locate the
    /// `COMPOSE_*` variables it sets.
    dotenv: Option<(String, String)>,
    /// The Compose files the project is built from, main file first.
    sources: Vec<String>,
    /// The project name as interpolation sees it in `${COMPOSE_PROJECT_NAME}`:
    /// compose-go sets the variable to the project's final name before it
    /// interpolates the files, whatever named it.
    interpolated_project_name: Option<String>,
}

impl<'a> Ctx<'a> {
    fn new(input: &'a Input<'a>, options: &'a Options<'a>) -> Self {
        Ctx {
            input,
            options,
            dotenv: None,
            diags: Vec::new(),
            vars: BTreeMap::new(),
            warned: BTreeSet::new(),
            failed: BTreeSet::new(),
            tainted: HashMap::new(),
            caused: BTreeMap::new(),
            files: HashMap::new(),
            resolved: HashMap::new(),
            swarm_only: Vec::new(),
            develop: None,
            sources: vec![input.file.to_owned()],
            interpolated_project_name: None,
        }
    }

    fn load(&mut self) -> Option<Project> {
        let file = self.input.file;
        let mut root = match yaml::parse_document_with(self.input.text, &self.input.yaml) {
            Ok(root) => root,
            Err(e) => {
                self.diags.push(e.into_diagnostic(file));
                return None;
            }
        };
        if root.is_null() {
            self.diags.push(
                Diagnostic::error("empty Compose file: no services")
                    .file(file)
                    .hint("define at least one service under `services:`"),
            );
            return None;
        }
        if root.as_map().is_none() {
            self.error(
                &root,
                "",
                format!("a Compose file must be a mapping, not {}", root.kind()),
            );
            return None;
        }
        self.read_dotenv();
        self.interpolated_project_name = self.implied_project_name(&root);
        self.interpolate(&mut root, "");
        let mut chain = vec![file.to_owned()];
        self.expand_includes(&mut root, file, &mut chain);
        for over in self.options.overrides {
            let Some(mut tree) = self.parse_file(over, &root.with_value(Value::Null), "") else {
                continue;
            };
            self.sources.push(over.clone());
            let mut chain = vec![over.clone()];
            self.expand_includes(&mut tree, file, &mut chain);
            root = include::merge_files(root, tree);
        }
        let root = Arc::new(root);
        self.files.insert(file.to_owned(), Some(root.clone()));

        let mut name = None;
        for (k, v) in root.as_map().unwrap_or_default() {
            let Some(key) = self.key(k, "") else { continue };
            match key {
                "version" => self.diags.push(
                    Diagnostic::warning("`version` is obsolete and ignored")
                        .file(file)
                        .at(k.line, k.column)
                        .object("version")
                        .hint("remove it, as `docker compose` also suggests"),
                ),
                // An empty name (`name: ${UNSET}`) falls back to the default.
                "name" => {
                    name = self
                        .text(v, "name")
                        .filter(|n| !n.is_empty())
                        .map(|n| (n, v))
                }
                "services" | "networks" | "volumes" | "configs" | "secrets" => {}
                "models" => self.cannot_apply(
                    k,
                    key,
                    "models",
                    "it declares AI models for Docker Model Runner, which is not part of the Engine API",
                ),
                k if k.starts_with("x-") => {}
                "build" | "image" | "ports" | "environment" => {
                    self.unsupported_with(
                        k,
                        key,
                        "a top-level key here looks like a service definition; put it under `services: <name>:`",
                    );
                }
                _ => self.unsupported(k, key),
            }
        }
        let project_name = match self.variable_origin(profiles::PROJECT_NAME) {
            Some(origin) => self.project_name_from_variable(origin),
            None => self.project_name(name),
        };

        // Services keep their tags until `extends` is merged; the top-level
        // resources are final as written.
        let mut top = |key: &str| root.get(key).cloned().map(|n| self.apply_tags(n, key));
        let (networks, volumes, configs) = (top("networks"), top("volumes"), top("configs"));
        let secrets = top("secrets");
        let networks = resources::networks(self, networks.as_ref(), &project_name);
        let volumes = resources::volumes(self, volumes.as_ref(), &project_name);
        let configs = resources::configs(self, configs.as_ref());
        let secrets = resources::secrets(self, secrets.as_ref());

        let mut project = Project {
            disabled_services: Default::default(),
            name: project_name.clone().unwrap_or_default(),
            services: BTreeMap::new(),
            networks,
            volumes,
            origin: Origin {
                file: file.to_owned(),
                line: 1,
            },
        };

        let services_node = root.get("services");
        let entries = match services_node {
            None => {
                self.diags.push(
                    Diagnostic::error("no `services:` in the Compose file")
                        .file(file)
                        .hint("define at least one service under `services:`"),
                );
                return None;
            }
            Some(node) => self.map(node, "services").unwrap_or_default(),
        };
        if entries.is_empty() && services_node.is_some_and(|n| n.as_map().is_some() || n.is_null())
        {
            self.error(
                services_node.unwrap_or(&root),
                "services",
                "no services defined",
            );
        }
        let names: BTreeSet<String> = entries
            .iter()
            .filter_map(|(k, _)| k.scalar_text())
            .collect();
        let refs = service::Refs {
            services: &names,
            networks: &project.networks,
            volumes: &project.volumes,
            configs: &configs,
            secrets: &secrets,
        };
        for (k, _) in entries {
            let Some(name) = self.key(k, "services") else {
                continue;
            };
            let path = format!("services.{name}");
            if !valid_service_name(name) {
                self.error(
                    k,
                    &path,
                    format!("invalid service name `{name}`: use letters, digits, `_`, `.` and `-`, starting with a letter or digit"),
                );
                continue;
            }
            let Some(node) = self.resolve_service(file, name, &mut Vec::new()) else {
                continue;
            };
            let node = self.apply_tags(node, &path);
            if let Some(mut svc) = service::service(self, name, k, &node, &refs) {
                if svc.image.is_empty() {
                    // A built image without `image:` is named as Compose names it.
                    svc.image = format!("{}-{}", project.name, name.to_ascii_lowercase());
                }
                project.services.insert(name.to_owned(), svc);
            }
        }
        profiles::apply(self, &mut project);
        self.check_project(&mut project);
        self.notes();
        project_name.map(|_| project)
    }

    /// The project name: `name:` (validated) or the default (normalised).
    fn project_name(&mut self, name: Option<(String, &Node)>) -> Option<String> {
        match name {
            Some((name, node)) => {
                if valid_project_name(&name) {
                    Some(name)
                } else {
                    self.report(
                        Diagnostic::error(format!(
                            "invalid project name `{name}`: it must contain only lowercase letters, digits, `-` and `_`, and start with a letter or digit"
                        ))
                        .hint(format!("use `{}`", normalize_project_name(&name))),
                        node,
                        "name",
                    );
                    None
                }
            }
            None => {
                let name = normalize_project_name(self.input.default_project_name);
                if name.is_empty() {
                    self.diags.push(
                        Diagnostic::error(format!(
                            "no project name: the file has no `name:` and `{}` gives none",
                            self.input.default_project_name
                        ))
                        .file(self.input.file)
                        .hint("add `name: <project>` to the Compose file"),
                    );
                    return None;
                }
                Some(name)
            }
        }
    }

    /// Reads `.env` next to the Compose file into the variables, then
    /// overlays [`Input::variables`].
    fn read_dotenv(&mut self) {
        let input = self.input;
        self.vars = input.variables.clone();
        let Ok(path) = crate::source::join_relative(input.file, ".env") else {
            return;
        };
        let Some(text) = self.read_text(&path, None, "") else {
            return;
        };
        self.dotenv = Some((path.clone(), text.clone()));
        let lookup = |k: &str| input.variables.get(k).cloned();
        match dotenv::parse(&text, &lookup) {
            Ok(parsed) => {
                for (k, v) in parsed.entries {
                    self.vars.entry(k).or_insert(v);
                }
                for name in parsed.unset {
                    self.warn_unset(&name, &path, 0, "");
                }
            }
            Err(e) => self.diags.push(
                Diagnostic::error(e.message)
                    .file(path)
                    .line(e.line)
                    .hint("see https://docs.docker.com/compose/how-tos/environment-variables/variable-interpolation/#env-file-syntax"),
            ),
        }
    }

    /// The name the project will have, before the file is interpolated, as
    /// compose-go's `projectName` finds it: a non-empty
    /// `COMPOSE_PROJECT_NAME`, else `name:` (itself interpolated), else the
    /// default normalised. `None` when that name is invalid: the error is
    /// reported where the name is decided.
    fn implied_project_name(&self, root: &Node) -> Option<String> {
        let from_var = self
            .vars
            .get(profiles::PROJECT_NAME)
            .filter(|v| !v.is_empty())
            .cloned();
        let name = from_var.or_else(|| {
            let template = root.get("name")?.scalar_text()?;
            let vars = &self.vars;
            let lookup = |k: &str| vars.get(k).cloned();
            let mut subst = interpolate::Substitution::new(&lookup);
            subst.substitute(&template).ok().filter(|n| !n.is_empty())
        });
        let name = name.unwrap_or_else(|| normalize_project_name(self.input.default_project_name));
        valid_project_name(&name).then_some(name)
    }

    /// Interpolates a parsed file's tree with the project's variables and
    /// `COMPOSE_PROJECT_NAME` set to the project's name.
    fn interpolate(&mut self, root: &mut Node, path: &str) {
        let vars = &self.vars;
        let name = self.interpolated_project_name.as_ref();
        let lookup = |k: &str| match name {
            Some(name) if k == profiles::PROJECT_NAME => Some(name.clone()),
            _ => vars.get(k).cloned(),
        };
        let mut subst = interpolate::Substitution::new(&lookup);
        let mut failures = Vec::new();
        interpolate::interpolate_tree(root, path, &mut subst, &mut failures);
        let unset = std::mem::take(&mut subst.unset);
        let unset_at = std::mem::take(&mut subst.unset_at);
        let lone_dollars = std::mem::take(&mut subst.lone_dollars_at);
        let tainted = std::mem::take(&mut subst.tainted);
        drop(subst);
        let file = root.file.as_deref().unwrap_or(self.input.file).to_owned();
        for (line, column, name) in tainted {
            self.tainted.insert((file.clone(), line, column), name);
        }
        for f in failures {
            self.failed.insert((file.clone(), f.line, f.column));
            let d = match f.error {
                interpolate::Error::Invalid(reason) => {
                    Diagnostic::error(format!("invalid interpolation in `{}`: {reason}", f.value))
                        .hint("write `$$` for a literal `$`")
                }
                interpolate::Error::Required { name, message } => Diagnostic::error(format!(
                    "required variable `{name}` is missing a value: {message}"
                ))
                .hint(format!(
                    "set `{name}` in the environment's values or in `.env` next to the Compose file"
                )),
            };
            self.diags
                .push(d.file(file.clone()).at(f.line, f.column).object(f.path));
        }
        for (name, (line, object)) in unset.iter().zip(unset_at) {
            self.warn_unset(name, &file, line, &object);
        }
        for (line, column, object, value) in lone_dollars {
            self.diags.push(
                Diagnostic::warning(format!(
                    "`$` starts no variable in `{value}`; it is kept as written, as docker compose v2 keeps it (docker-compose 1.x refuses it as an invalid interpolation format)"
                ))
                .file(file.clone())
                .at(line, column)
                .object(object)
                .hint("write `$$` for a literal `$` (`$$(date)`): that means the same to every Compose version and silences this warning"),
            );
        }
    }

    /// One error per unset variable that made values invalid, at its first
    /// such value, in place of the errors it caused and its warning.
    fn unset_variable_errors(&mut self) {
        let dotenv = match &self.dotenv {
            Some((path, _)) => format!("`{path}`"),
            None => crate::source::join_relative(self.input.file, ".env").map_or_else(
                |_| "`.env`".to_owned(),
                |p| format!("`{p}` (not in the repo)"),
            ),
        };
        let values = self.options.values_file.map_or_else(
            || "the environment's values".to_owned(),
            |f| format!("`{f}`"),
        );
        for (name, caused) in std::mem::take(&mut self.caused) {
            let unset = format!("variable `{name}` is not set");
            self.diags
                .retain(|d| d.is_error() || !d.message.starts_with(&unset));
            let first = &caused[0];
            let more = match caused.len() - 1 {
                0 => String::new(),
                1 => " (and 1 more value using it)".to_owned(),
                n => format!(" (and {n} more values using it)"),
            };
            let mut d = Diagnostic::error(format!(
                "{unset}, so a value using it is invalid: {}{more}",
                first.message
            ))
            .hint(format!(
                "set `{name}` in {dotenv} next to the Compose file or in {values}, or give a default: `${{{name}:-default}}`"
            ));
            d.file = first.file.clone();
            d.line = first.line;
            d.column = first.column;
            d.object = first.object.clone();
            self.diags.push(d);
        }
    }

    /// Whether `node`'s interpolation failed (an error already reported).
    pub(crate) fn interpolation_failed(&self, node: &Node) -> bool {
        let file = node.file.as_deref().unwrap_or(self.input.file);
        self.failed
            .contains(&(file.to_owned(), node.line, node.column))
    }

    fn warn_unset(&mut self, name: &str, file: &str, line: u32, object: &str) {
        if !self.warned.insert(name.to_owned()) {
            return;
        }
        let mut d = Diagnostic::warning(format!(
            "variable `{name}` is not set; using an empty string"
        ))
        .file(file)
        .line(line)
        .hint(format!(
            "set `{name}` in the environment's values or in `.env`, or give a default: `${{{name}:-default}}`"
        ));
        if !object.is_empty() {
            d = d.object(object);
        }
        self.diags.push(d);
    }

    /// Reads a repo file as text. `None` when it is missing (no diagnostic
    /// unless `missing` gives the node to report at) or unreadable (reported).
    fn read_text(&mut self, path: &str, missing: Option<&Node>, object: &str) -> Option<String> {
        let bytes = self.read_bytes(path, missing, object)?;
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => Some(text),
            Err(_) => {
                self.diags.push(
                    Diagnostic::error(format!("`{path}` is not valid UTF-8 text")).file(path),
                );
                None
            }
        }
    }

    fn read_bytes(
        &mut self,
        path: &str,
        missing: Option<&Node>,
        object: &str,
    ) -> Option<Arc<[u8]>> {
        match (self.input.read)(path) {
            Some(Ok(bytes)) => Some(bytes),
            Some(Err(d)) => {
                self.diags.push(d);
                None
            }
            None => {
                if let Some(node) = missing {
                    self.error(node, object, format!("`{path}` is not in the repository"));
                }
                None
            }
        }
    }

    /// Parses another Compose file of the repo (for `extends`), interpolated
    /// with this project's variables, its nodes marked with its path.
    fn other_file(&mut self, path: &str, at: &Node, object: &str) -> Option<Arc<Node>> {
        if let Some(cached) = self.files.get(path) {
            return cached.clone();
        }
        // Insert first: a file that extends itself must not be read twice.
        self.files.insert(path.to_owned(), None);
        let text = self.read_text(path, Some(at), object)?;
        let mut root = match yaml::parse_document_with(&text, &self.input.yaml) {
            Ok(root) => root,
            Err(e) => {
                self.diags.push(e.into_diagnostic(path));
                return None;
            }
        };
        root.set_file(&Arc::from(path));
        self.interpolate(&mut root, "");
        let root = Arc::new(root);
        self.files.insert(path.to_owned(), Some(root.clone()));
        Some(root)
    }

    /// Handles the `!reset` / `!override` tags left after merging (a reset
    /// key is removed, an override is a plain value) and rejects other tags.
    fn apply_tags(&mut self, mut node: Node, path: &str) -> Node {
        match node.tag.as_deref() {
            None | Some("!override") => node.tag = None,
            Some(tag) => {
                let tag = tag.to_owned();
                self.report(
                    Diagnostic::error(format!("YAML tag `{tag}` is not supported here"))
                        .hint("Compose knows `!reset` and `!override` on the values of a mapping"),
                    &node,
                    path,
                );
                node.tag = None;
            }
        }
        node.value = match std::mem::replace(&mut node.value, Value::Null) {
            Value::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .filter(|(_, v)| v.tag.as_deref() != Some("!reset"))
                    .map(|(k, v)| {
                        let child = format!("{path}.{}", k.scalar_text().unwrap_or_default());
                        let v = self.apply_tags(v, &child);
                        (k, v)
                    })
                    .collect(),
            ),
            Value::Seq(items) => Value::Seq(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| self.apply_tags(v, &format!("{path}[{i}]")))
                    .collect(),
            ),
            other => other,
        };
        node
    }

    /// Cross-checks: dependency cycles, `network_mode: service:x`, unique
    /// container names; adds the `default` network when a service uses it.
    fn check_project(&mut self, project: &mut Project) {
        let uses_default = project.services.values().any(|s| {
            (s.networks.is_empty() && s.network_mode.is_none())
                || s.networks.contains_key("default")
        });
        if uses_default && !project.networks.contains_key("default") {
            project.networks.insert(
                "default".to_owned(),
                Network {
                    name: format!("{}_default", project.name),
                    ..Network::default()
                },
            );
        }

        let mut container_names: BTreeMap<&str, &str> = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, svc) in &project.services {
            if let Some(cn) = &svc.container_name
                && let Some(other) = container_names.insert(cn, name)
            {
                errors.push((
                    name.clone(),
                    format!("container name `{cn}` is also used by service `{other}`"),
                ));
            }
        }
        for (name, message) in errors {
            let (file, line) = project.services.get(&name).map_or_else(
                || (self.input.file.to_owned(), 0),
                |s| (s.origin.file.clone(), s.origin.line),
            );
            self.diags.push(
                Diagnostic::error(message)
                    .file(file)
                    .line(line)
                    .object(format!("services.{name}.container_name")),
            );
        }

        // Dependency cycles, reported once per cycle at its first service.
        let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
        for start in project.services.keys() {
            if let Some(cycle) = find_cycle(project, start) {
                let mut key = cycle.clone();
                key.pop();
                key.sort();
                if reported.insert(key) {
                    let origin = &project.services[start].origin;
                    self.diags.push(
                        Diagnostic::error(format!(
                            "dependency cycle: {}",
                            cycle.join(" -> ")
                        ))
                        .file(origin.file.clone())
                        .line(origin.line)
                        .object(format!("services.{start}.depends_on"))
                        .hint("services cannot depend on each other in a loop; remove one `depends_on` entry"),
                    );
                }
            }
        }
    }

    /// The once-per-file notes: swarm-only keys and `develop`, both
    /// ignored as `docker compose up` ignores them.
    fn notes(&mut self) {
        let file = self.input.file;
        if let Some((first, line)) = self.swarm_only.first().cloned() {
            let keys: Vec<String> = self.swarm_only.iter().map(|(k, _)| k.clone()).collect();
            self.diags.push(
                Diagnostic::warning(format!(
                    "swarm-only keys are ignored, as `docker compose up` ignores them: {}",
                    keys.join(", ")
                ))
                .file(file)
                .line(line)
                .object(first),
            );
        }
        if let Some((object, line)) = self.develop.take() {
            self.diags.push(
                Diagnostic::warning("`develop` (`docker compose watch`) is ignored: driftless deploys commits, it does not sync a working tree")
                    .file(file)
                    .line(line)
                    .object(object),
            );
        }
    }

    /// A value from driftless's secret source.
    pub(crate) fn secret(&self, name: &str) -> Result<String, String> {
        match self.options.secret {
            Some(lookup) => lookup(name),
            None => Err("no secret source is configured here".to_owned()),
        }
    }

    /// A swarm-only key at `key_node` (object path `path`): ignored.
    pub(crate) fn swarm_only(&mut self, key_node: &Node, path: &str) {
        self.swarm_only.push((path.to_owned(), key_node.line));
    }

    /// `develop` at `key_node`: ignored, noted once.
    pub(crate) fn develop(&mut self, key_node: &Node, path: &str) {
        if self.develop.is_none() {
            self.develop = Some((path.to_owned(), key_node.line));
        }
    }

    // ---- diagnostics --------------------------------------------------

    /// Pushes `d` located at `node` (its file, line, column) for `object`.
    /// An error at a value an unset variable emptied is set aside, to be
    /// reported once per variable ([`Ctx::unset_variable_errors`]).
    pub(crate) fn report(&mut self, d: Diagnostic, node: &Node, object: &str) {
        let file = node.file.as_deref().unwrap_or(self.input.file);
        let mut d = d.file(file).at(node.line, node.column);
        if !object.is_empty() {
            d = d.object(object);
        }
        if d.is_error()
            && let Some(name) = self.tainted.get(&(file.to_owned(), node.line, node.column))
        {
            self.caused.entry(name.clone()).or_default().push(d);
            return;
        }
        self.diags.push(d);
    }

    pub(crate) fn error(&mut self, node: &Node, object: &str, message: impl Into<String>) {
        self.report(Diagnostic::error(message), node, object);
    }

    pub(crate) fn warning(&mut self, node: &Node, object: &str, message: impl Into<String>) {
        self.report(Diagnostic::warning(message), node, object);
    }

    /// The key at `key_node` (object path `path`) is not one driftless applies.
    pub(crate) fn unsupported(&mut self, key_node: &Node, path: &str) {
        self.unsupported_with(
            key_node,
            path,
            "driftless rejects keys it does not apply rather than ignore them; remove it, or deploy this stack without driftless",
        );
    }

    /// `what` (a key, or `key: value`) is valid Compose that no Linux
    /// Docker engine can apply; `why` says so.
    pub(crate) fn cannot_apply(&mut self, node: &Node, path: &str, what: &str, why: &str) {
        self.report(
            Diagnostic::error(format!("cannot apply `{what}` on a Docker engine")).hint(why),
            node,
            path,
        );
    }

    /// Like [`Ctx::unsupported`] with a specific hint. `path` is the key's
    /// object path (`services.web.deploy.placement`).
    pub(crate) fn unsupported_with(&mut self, key_node: &Node, path: &str, hint: &str) {
        self.report(
            Diagnostic::error("key not supported by driftless").hint(hint),
            key_node,
            path,
        );
    }
}

/// Whether a `name:` is a valid Compose project name.
pub fn valid_project_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Normalises a name into a project name as Compose does for directory
/// names: lowercase, only `[a-z0-9_-]`, starting with a letter or digit.
pub fn normalize_project_name(name: &str) -> String {
    let lower: String = name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    lower.trim_start_matches(['_', '-']).to_owned()
}

fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A dependency cycle through `start`, as `a -> b -> a`.
fn find_cycle(project: &Project, start: &str) -> Option<Vec<String>> {
    // Iterative DFS with an explicit stack: no recursion on user data.
    let mut stack: Vec<(String, Vec<String>)> = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((name, path)) = stack.pop() {
        let Some(svc) = project.services.get(&name) else {
            continue;
        };
        for dep in svc.depends_on.keys() {
            if dep == start {
                let mut cycle = path.clone();
                cycle.push(dep.clone());
                return Some(cycle);
            }
            if seen.insert(dep.clone()) {
                let mut next = path.clone();
                next.push(dep.clone());
                stack.push((dep.clone(), next));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_build;
#[cfg(test)]
mod tests_keys;
