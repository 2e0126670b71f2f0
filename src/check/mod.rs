//! Check: everything that can be known without touching live systems.
//!
//! [`environment`] renders the files an environment selects (the manifest's
//! path globs), parses each with its loader — [`compose`], [`kube`],
//! [`rules`], [`backups`] — cross-checks them, runs the [`policy`] stage on
//! the result, and returns a validated [`DesiredState`] or every problem
//! found, each naming the environment, file and line.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::diag::{Diagnostic, Diagnostics};
use crate::glob::Glob;
use crate::manifest::{Environment, Manifest, TargetKind};
use crate::model::compose::Project;
use crate::model::{
    BackupJob, BackupSource, DesiredState, KubeObject, Resources, RuleFile, TargetState,
};
use crate::render::{Rendered, Renderer};

pub mod backups;
pub mod compose;
pub mod kube;
pub mod placement;
pub mod policy;
pub mod rules;
pub mod schedule;

/// A checked environment: its desired state, the warnings found, and every
/// rendered file the state was built from (what `driftless render` prints).
#[derive(Debug)]
pub struct Checked {
    pub state: DesiredState,
    pub warnings: Vec<Diagnostic>,
    pub files: BTreeMap<String, Rendered>,
}

/// Which files of the rendered tree an environment selects, per kind.
#[derive(Debug, Default)]
struct Selection {
    stacks: Vec<String>,
    manifests: Vec<String>,
    rules: Vec<String>,
    backups: Vec<String>,
}

fn select(env: &Environment, outputs: &[String]) -> Result<Selection, Diagnostics> {
    let mut diags = Diagnostics::new();
    let mut matchers = |globs: &[String]| -> Vec<Glob> {
        globs
            .iter()
            .filter_map(|g| match Glob::new(g) {
                Ok(m) => Some(m),
                Err(e) => {
                    diags.push(
                        Diagnostic::error(format!("invalid glob `{g}`: {e}"))
                            .file(crate::manifest::FILE),
                    );
                    None
                }
            })
            .collect()
    };
    let kinds = [
        matchers(&env.paths.stacks),
        matchers(&env.paths.manifests),
        matchers(&env.paths.rules),
        matchers(&env.paths.backups),
    ];
    let mut sel = Selection::default();
    for path in outputs {
        let hits: Vec<usize> = (0..kinds.len())
            .filter(|&k| kinds[k].iter().any(|m| m.is_match(path)))
            .collect();
        if hits.len() > 1 {
            diags.push(
                Diagnostic::error("file is matched by more than one kind of path (stacks, manifests, rules, backups)")
                    .file(path.clone())
                    .hint(format!("narrow the globs under `paths:` for environment `{}`", env.name)),
            );
            continue;
        }
        match hits.first() {
            Some(0) => sel.stacks.push(path.clone()),
            Some(1) => sel.manifests.push(path.clone()),
            Some(2) => sel.rules.push(path.clone()),
            Some(3) => sel.backups.push(path.clone()),
            _ => {}
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(sel)
    }
}

/// Default Compose project name for a file: like `docker compose`, the
/// directory name for `compose.yaml`/`docker-compose.yml`, else the file
/// stem; then `-<env>` so environments sharing an engine never collide.
pub fn default_project_name(path: &str, env: &str) -> String {
    let mut parts = path.rsplit('/');
    let file = parts.next().unwrap_or(path);
    let stem = file.split('.').next().unwrap_or(file);
    let base = if matches!(stem, "compose" | "docker-compose") {
        parts.next().unwrap_or(stem)
    } else {
        stem
    };
    let mut name: String = base
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert_str(0, "stack");
    }
    format!("{name}-{env}")
}

/// Compose `${VAR}` variables from an environment's values: every top-level
/// scalar, as text.
pub fn compose_variables(values: &serde_json::Value) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    if let Some(map) = values.as_object() {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            vars.insert(k.clone(), text);
        }
    }
    vars
}

/// Renders and checks one environment.
pub fn environment(
    manifest: &Manifest,
    env: &Environment,
    renderer: &Renderer,
) -> Result<Checked, Diagnostics> {
    let mut diags = Diagnostics::new();
    let mut warnings = Vec::new();
    let outputs = renderer.outputs();
    let sel = select(env, &outputs).map_err(|d| with_env(d, &env.name))?;

    // Every rendered file read while checking, so `render` shows exactly the
    // files the desired state was built from.
    let files: RefCell<BTreeMap<String, Rendered>> = RefCell::new(BTreeMap::new());
    let render = |path: &str| -> Result<Rendered, Diagnostic> {
        if let Some(r) = files.borrow().get(path) {
            return Ok(r.clone());
        }
        let r = renderer.render(path)?;
        files.borrow_mut().insert(path.to_owned(), r.clone());
        Ok(r)
    };
    let text_of = |path: &str, diags: &mut Diagnostics| -> Option<(Rendered, String)> {
        match render(path).and_then(|r| r.text().map(|t| (t.to_owned(), r.clone()))) {
            Ok((t, r)) => Some((r, t)),
            Err(d) => {
                diags.push(d);
                None
            }
        }
    };

    // Compose projects. A file merged over another (`compose.override.yaml`
    // next to `compose.yaml`, or `compose.overrides` in driftless.yaml) or
    // included by another is part of that project, not one of its own.
    let variables = compose_variables(renderer.values());
    let overrides = compose_overrides(env, &sel.stacks, &outputs, &mut diags);
    // A default override file next to a Compose file is never a project of
    // its own, also when driftless.yaml lists other files to merge.
    let exists = |p: &str| outputs.iter().any(|o| o == p);
    let merged: BTreeSet<String> = overrides
        .values()
        .flatten()
        .cloned()
        .chain(
            sel.stacks
                .iter()
                .filter_map(|main| compose::default_override(main, &exists)),
        )
        .collect();
    let secret = |name: &str| renderer.secret(name);
    let mut loads = Vec::new();
    // A Compose file that did not render or load: checks that look for its
    // services (backup jobs, profiles) would only report consequences.
    let mut stacks_failed = false;
    for path in &sel.stacks {
        if merged.contains(path) {
            continue;
        }
        let Some((rendered, text)) = text_of(path, &mut diags) else {
            stacks_failed = true;
            continue;
        };
        let read = |p: &str| -> Option<Result<Arc<[u8]>, Diagnostic>> {
            if !renderer.exists(p) {
                return None;
            }
            Some(render(p).map(|r| r.content.clone()))
        };
        let list_dir = |dir: &str| -> Vec<String> {
            // `""` is the repository root (a build context).
            let prefix = match dir.trim_end_matches('/') {
                "" => String::new(),
                d => format!("{d}/"),
            };
            outputs
                .iter()
                .filter(|o| o.starts_with(&prefix))
                .cloned()
                .collect()
        };
        let default_name = default_project_name(path, &env.name);
        let input = compose::Input {
            file: path,
            text: &text,
            default_project_name: &default_name,
            variables: &variables,
            read: &read,
            is_dir: &list_dir,
            is_executable: &|p: &str| renderer.is_executable(p),
            links_under: &|d: &str| renderer.links_under(d),
            yaml: manifest.yaml,
        };
        let options = compose::Options {
            profiles: env.compose.profiles.as_deref(),
            profiles_origin: (crate::manifest::FILE, env.compose.profiles_line),
            values_file: Some(&env.values),
            overrides: overrides.get(path).map_or(&[], Vec::as_slice),
            secret: Some(&secret),
        };
        loads.push((path, rendered, compose::load_project(&input, &options)));
    }
    let included: BTreeSet<String> = loads
        .iter()
        .filter_map(|(path, _, r)| r.as_ref().ok().map(|l| (path, l)))
        .flat_map(|(path, l)| l.files.iter().filter(move |f| *f != *path).cloned())
        .collect();
    let mut projects: Vec<Project> = Vec::new();
    for (path, rendered, result) in loads {
        if included.contains(path.as_str()) {
            continue;
        }
        let files = files.borrow();
        let locate = |d: Diagnostic| match d.file.as_deref().and_then(|f| files.get(f)) {
            Some(r) => located(d, r),
            None => located(d, &rendered),
        };
        match result {
            Ok(loaded) => {
                let mut project = loaded.project;
                environment_update_defaults(env, &mut project);
                // Compose secret values are masked in every output, as
                // `secret()` values are.
                for f in project.services.values().flat_map(|s| &s.secrets) {
                    if let Ok(value) = std::str::from_utf8(&f.content) {
                        renderer.record_secret(value);
                    }
                }
                warnings.extend(loaded.warnings.into_iter().map(locate));
                for (name, service) in &project.services {
                    if let Some(file) = service.unwritable_file() {
                        diags.push(located(
                            Diagnostic::error(format!(
                                "config file {file} cannot be delivered: the service is `read_only` and the engine refuses to write to a read-only root file system"
                            ))
                            .file(service.origin.file.clone())
                            .line(service.origin.line)
                            .object(format!("services.{name}"))
                            .hint("mount a volume (or tmpfs) at the file's directory, or drop `read_only`"),
                            &rendered,
                        ));
                    }
                }
                if let Some(other) = projects.iter().find(|p| p.name == project.name) {
                    diags.push(
                        Diagnostic::error(format!(
                            "Compose project `{}` is also defined by {}",
                            project.name, other.origin.file
                        ))
                        .file(rendered.source.clone())
                        .hint("give each Compose file its own `name:`"),
                    );
                } else {
                    projects.push(project);
                }
            }
            Err(d) => {
                stacks_failed = true;
                diags.extend(d.into_iter().map(locate));
            }
        }
    }
    if !stacks_failed {
        check_environment_profiles(env, &variables, &projects, &mut diags);
    }

    // Kubernetes objects.
    let mut objects: Vec<KubeObject> = Vec::new();
    let mut seen_objects: BTreeMap<String, String> = BTreeMap::new();
    for path in &sel.manifests {
        let Some((rendered, text)) = text_of(path, &mut diags) else {
            continue;
        };
        match kube::load_with(path, &text, &manifest.yaml) {
            Ok(list) => {
                for o in list {
                    let key = format!("{}/{}", o.api_version, o.key());
                    if let Some(first) = seen_objects.insert(key, o.origin.file.clone()) {
                        diags.push(located(
                            Diagnostic::error(format!(
                                "{} is defined twice (first in {first})",
                                o.key()
                            ))
                            .line(o.origin.line),
                            &rendered,
                        ));
                    } else {
                        objects.push(o);
                    }
                }
            }
            Err(d) => diags.extend(d.into_iter().map(|d| located(d, &rendered))),
        }
    }

    // Prometheus rule files, checked for each distinct Prometheus the
    // environment has (its version decides name validation).
    let mut rule_options: Vec<rules::Options> = Vec::new();
    for target in manifest.targets_of(env) {
        if let TargetKind::Prometheus(p) = &target.kind {
            let o = rules::Options::for_target(p);
            if !rule_options.contains(&o) {
                rule_options.push(o);
            }
        }
    }
    if rule_options.is_empty() {
        rule_options.push(rules::Options::default());
    }
    let mut rule_files: Vec<RuleFile> = Vec::new();
    for path in &sel.rules {
        let Some((rendered, text)) = text_of(path, &mut diags) else {
            continue;
        };
        let mut loaded = None;
        for options in &rule_options {
            match rules::load(path, &text, options) {
                Ok((f, w)) => {
                    for d in w {
                        let d = located(d, &rendered);
                        if !warnings.contains(&d) {
                            warnings.push(d);
                        }
                    }
                    loaded.get_or_insert(f);
                }
                Err(d) => {
                    for d in d {
                        let d = located(d, &rendered);
                        if !diags.iter().any(|e| *e == d) {
                            diags.push(d);
                        }
                    }
                }
            }
        }
        if let Some(f) = loaded {
            if let Some(other) = rule_files.iter().find(|r| r.name == f.name) {
                diags.push(located(
                    Diagnostic::error(format!(
                        "rule file name `{}` is also used by {}; names must be unique in the rules directory",
                        f.name, other.origin.file
                    )),
                    &rendered,
                ));
            } else {
                rule_files.push(f);
            }
        }
    }

    // Backup jobs.
    let mut jobs: Vec<BackupJob> = Vec::new();
    for path in &sel.backups {
        let Some((rendered, text)) = text_of(path, &mut diags) else {
            continue;
        };
        match backups::load(path, &text) {
            Ok(list) => {
                for job in list {
                    if jobs.iter().any(|j| j.name == job.name) {
                        diags.push(located(
                            Diagnostic::error(format!(
                                "backup job `{}` is defined twice",
                                job.name
                            ))
                            .line(job.origin.line),
                            &rendered,
                        ));
                    } else {
                        if !stacks_failed && let Err(d) = check_backup_source(&job, &projects) {
                            diags.push(located(d.line(job.origin.line), &rendered));
                        }
                        jobs.push(job);
                    }
                }
            }
            Err(d) => diags.extend(d.into_iter().map(|d| located(d, &rendered))),
        }
    }

    // Assign resources to the environment's targets by kind.
    let mut targets = Vec::new();
    let mut kinds_present = BTreeSet::new();
    let placed = placement::place(env, &projects, &mut diags);
    for target in manifest.targets_of(env) {
        let resources = match &target.kind {
            TargetKind::Docker(_) => Resources::Compose(match &placed {
                Some(by_target) => by_target.get(&target.name).cloned().unwrap_or_default(),
                None => projects.clone(),
            }),
            TargetKind::Kubernetes(_) => Resources::Kubernetes(objects.clone()),
            TargetKind::Prometheus(_) => Resources::Rules(rule_files.clone()),
        };
        kinds_present.insert(target.kind.as_str());
        targets.push(TargetState {
            target: target.clone(),
            resources,
        });
    }
    let unplaced = [
        ("docker", "Compose files", sel.stacks.first()),
        ("kubernetes", "Kubernetes manifests", sel.manifests.first()),
        ("prometheus", "rule files", sel.rules.first()),
    ];
    for (kind, what, first) in unplaced {
        if let Some(first) = first
            && !kinds_present.contains(kind)
        {
            diags.push(
                Diagnostic::error(format!("environment has {what} but no {kind} target to apply them to"))
                    .file(first.clone())
                    .hint(format!(
                        "add a {kind} target to `environments.{}.targets`, or exclude these files with `environments.{}.paths`",
                        env.name, env.name
                    )),
            );
        }
    }
    if !sel.backups.is_empty() && !jobs.is_empty() && !kinds_present.contains("docker") {
        diags.push(
            Diagnostic::error("environment has backup jobs but no docker target to run them on")
                .file(sel.backups[0].clone()),
        );
    }

    if diags.has_errors() {
        return Err(with_env(diags, &env.name));
    }
    let state = DesiredState {
        environment: env.clone(),
        instance: String::new(),
        revision: renderer.revision().clone(),
        targets,
        backups: jobs,
    };
    let files = files.into_inner();
    // Policies judge the finished desired state: deny → errors, warn → warnings.
    warnings.extend(policy::check(env, &state, renderer, &files)?);
    Ok(Checked {
        state,
        warnings: warnings.into_iter().map(|d| d.or_env(&env.name)).collect(),
        files,
    })
}

/// The environment's `update_config` / `rollback_config` for each service
/// whose Compose file sets none: the Compose file's own wins, whole.
fn environment_update_defaults(env: &crate::manifest::Environment, project: &mut Project) {
    for (name, s) in project.services.iter_mut() {
        // The environment's `image_updates` for a service without the
        // label (the label wins); a built image has nothing to follow.
        if s.follow.is_none()
            && s.build.is_none()
            && !s.image.contains('@')
            && let Some(policy) = env
                .image_updates
                .get(&format!("{}/{name}", project.name))
                .or_else(|| env.image_updates.get(name))
        {
            s.follow = Some(crate::model::compose::Follow {
                policy: policy.clone(),
                reference: s.image.clone(),
            });
        }
        use crate::model::compose::ConfigFrom;
        if let Some(u) = &env.update_config
            && s.update_config.from == ConfigFrom::Defaults
        {
            s.update_config = u.clone();
        }
        if let Some(u) = &env.rollback_config
            && s.rollback_config.from == ConfigFrom::Defaults
        {
            s.rollback_config = u.clone();
        }
    }
}

/// Profiles set for the whole environment (driftless.yaml's
/// `compose.profiles`, or `COMPOSE_PROFILES` in the values) must each be
/// used by a service of one of its projects.
/// The files merged over each Compose file of the environment, in order:
/// driftless.yaml's `compose.overrides` for it, else the override file
/// docker compose would pick up next to it. An override entry that names
/// no Compose file of the environment, or a file that is not there, is an
/// error at its line in driftless.yaml.
fn compose_overrides(
    env: &Environment,
    stacks: &[String],
    outputs: &[String],
    diags: &mut Diagnostics,
) -> BTreeMap<String, Vec<String>> {
    let exists = |p: &str| outputs.iter().any(|o| o == p);
    let mut out = BTreeMap::new();
    let at = |message: String, hint: &str| {
        Diagnostic::error(message)
            .file(crate::manifest::FILE)
            .line(env.compose.overrides_line)
            .hint(hint.to_owned())
    };
    for (main, list) in &env.compose.overrides {
        if !stacks.contains(main) {
            diags.push(at(
                format!(
                    "environments.{}.compose.overrides: `{main}` is not a Compose file of the environment",
                    env.name
                ),
                "name a file that `paths.stacks` selects (its rendered path)",
            ));
            continue;
        }
        for file in list {
            if !exists(file) {
                diags.push(at(
                    format!(
                        "environments.{}.compose.overrides: `{file}` (merged over `{main}`) is not in the repository",
                        env.name
                    ),
                    "use the rendered repo path of the file, e.g. `compose/app.prod.yaml`",
                ));
            }
        }
        out.insert(
            main.clone(),
            list.iter().filter(|f| exists(f)).cloned().collect(),
        );
    }
    for main in stacks {
        if out.contains_key(main) {
            continue;
        }
        if let Some(over) = compose::default_override(main, &exists) {
            out.insert(main.clone(), vec![over]);
        }
    }
    out
}

fn check_environment_profiles(
    env: &Environment,
    variables: &BTreeMap<String, String>,
    projects: &[Project],
    diags: &mut Diagnostics,
) {
    let (names, file, line, what) = match (&env.compose.profiles, variables.get("COMPOSE_PROFILES"))
    {
        (Some(names), _) => (
            names.clone(),
            crate::manifest::FILE,
            env.compose.profiles_line,
            "`compose.profiles` in driftless.yaml",
        ),
        (None, Some(value)) if !value.is_empty() => (
            compose::split_profiles(value),
            env.values.as_str(),
            0,
            "`COMPOSE_PROFILES` in the environment's values",
        ),
        _ => return,
    };
    let defined: BTreeSet<&str> = projects
        .iter()
        .flat_map(Project::defined_profiles)
        .collect();
    for name in names.iter().filter(|n| *n != "*") {
        if !defined.contains(name.as_str()) {
            diags.push(
                Diagnostic::error(format!(
                    "profile `{name}` set by {what} is not used by any service of environment `{}`",
                    env.name
                ))
                .file(file)
                .line(line)
                .hint(compose::known_profiles_hint(&defined)),
            );
        }
    }
}

/// A backup job's source must name a service (and project) the environment has.
fn check_backup_source(job: &BackupJob, projects: &[Project]) -> Result<(), Diagnostic> {
    let (project, service) = match &job.source {
        BackupSource::Exec {
            project, service, ..
        }
        | BackupSource::Path {
            project, service, ..
        } => (project.as_deref(), Some(service.as_str())),
        BackupSource::Volume {
            project, service, ..
        } => (project.as_deref(), service.as_deref()),
        BackupSource::Config => return Ok(()),
    };
    let candidates: Vec<&Project> = projects
        .iter()
        .filter(|p| project.is_none_or(|n| p.name == n))
        .collect();
    if let Some(name) = project
        && candidates.is_empty()
    {
        return Err(Diagnostic::error(format!(
            "backup job `{}`: no Compose project `{name}` in this environment",
            job.name
        )));
    }
    if let Some(service) = service {
        let owners: Vec<&str> = candidates
            .iter()
            .filter(|p| p.services.contains_key(service))
            .map(|p| p.name.as_str())
            .collect();
        match owners.len() {
            0 => {
                return Err(Diagnostic::error(format!(
                    "backup job `{}`: no service `{service}` in this environment's Compose projects",
                    job.name
                )));
            }
            1 => {}
            _ => {
                return Err(Diagnostic::error(format!(
                    "backup job `{}`: service `{service}` exists in several projects ({}); set `project:`",
                    job.name,
                    owners.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Names the source file (`.j2` included) and, for templates, says that
/// line numbers refer to the rendered output.
fn located(d: Diagnostic, rendered: &Rendered) -> Diagnostic {
    let mut d = d;
    if d.file.as_deref().is_none_or(|f| f == rendered.path) {
        d.file = Some(rendered.source.clone());
        if rendered.templated && d.line.is_some() && d.hint.is_none() {
            d.hint = Some(
                "line numbers are those of the rendered file; see it with `driftless render`"
                    .to_owned(),
            );
        }
    }
    d
}

fn with_env(diags: Diagnostics, env: &str) -> Diagnostics {
    Diagnostics(diags.into_iter().map(|d| d.or_env(env)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_project_names_follow_compose_and_add_the_environment() {
        assert_eq!(
            default_project_name("compose/stack.yaml", "dev"),
            "stack-dev"
        );
        assert_eq!(
            default_project_name("shop/compose.yaml", "prod"),
            "shop-prod"
        );
        assert_eq!(
            default_project_name("docker-compose.yml", "dev"),
            "docker-compose-dev"
        );
        assert_eq!(
            default_project_name("compose/My App.yaml", "dev"),
            "myapp-dev"
        );
    }

    #[test]
    fn compose_variables_are_top_level_scalars() {
        let v = serde_json::json!({"TAG": "1.2", "replicas": 3, "debug": true, "nested": {"a": 1}});
        let vars = compose_variables(&v);
        assert_eq!(vars.get("TAG").map(String::as_str), Some("1.2"));
        assert_eq!(vars.get("replicas").map(String::as_str), Some("3"));
        assert_eq!(vars.get("debug").map(String::as_str), Some("true"));
        assert!(!vars.contains_key("nested"));
    }
}
