//! What docker compose takes from its environment rather than the file:
//! the project name (`COMPOSE_PROJECT_NAME`) and the active profiles
//! (`COMPOSE_PROFILES`), read from the environment's values and the
//! project's `.env` as compose reads them from the shell and `.env`, with
//! driftless.yaml's `compose.profiles` first (compose's `--profile`).
//!
//! Profiles then split the services as compose-go's `WithProfiles` does: a
//! service with no `profiles`, or one that is active (`*` activates all),
//! is enabled; the others are disabled — never created, and their live
//! containers never pruned as orphans. An enabled service may not depend on
//! a disabled one (an optional dependency on one is dropped), and a profile
//! no service names is refused: it is a typo that would silently run less.

use std::collections::BTreeSet;

use super::Ctx;
use crate::diag::Diagnostic;
use crate::model::compose::Project;

/// The variable naming the project, as docker compose reads it.
pub(crate) const PROJECT_NAME: &str = "COMPOSE_PROJECT_NAME";
/// The variable listing the active profiles, comma-separated.
pub(crate) const PROFILES: &str = "COMPOSE_PROFILES";

/// Where a project variable's value came from.
#[derive(Debug, Clone)]
pub(crate) enum VarOrigin {
    /// The environment's values file (they override `.env`).
    Values,
    /// The project's `.env`, at a line.
    DotEnv { path: String, line: u32 },
}

/// The active profiles and where they were set.
struct Active {
    names: Vec<String>,
    /// Set for the whole environment (driftless.yaml's `compose.profiles`,
    /// or the values file): a profile needs to exist in one of the
    /// environment's projects, which the environment check decides.
    environment_wide: bool,
    /// Where to point a diagnostic: (file, line, what sets it).
    at: (String, u32, String),
}

impl Ctx<'_> {
    /// Where the non-empty value of `name` comes from, if it is set.
    pub(crate) fn variable_origin(&self, name: &str) -> Option<VarOrigin> {
        self.vars.get(name).filter(|v| !v.is_empty())?;
        if self.input.variables.contains_key(name) {
            return Some(VarOrigin::Values);
        }
        let (path, text) = self.dotenv.as_ref()?;
        Some(VarOrigin::DotEnv {
            path: path.clone(),
            line: line_of_variable(text, name),
        })
    }

    /// The project name from `COMPOSE_PROJECT_NAME`, which beats `name:` in
    /// the file as it does for docker compose; an invalid one is an error
    /// where it is set.
    pub(crate) fn project_name_from_variable(&mut self, origin: VarOrigin) -> Option<String> {
        let name = self.vars.get(PROJECT_NAME).cloned().unwrap_or_default();
        if super::valid_project_name(&name) {
            return Some(name);
        }
        let d = Diagnostic::error(format!(
            "invalid project name `{name}` in `{PROJECT_NAME}`: it must contain only lowercase letters, digits, `-` and `_`, and start with a letter or digit"
        ))
        .hint(format!("use `{}`", super::normalize_project_name(&name)));
        let (file, line) = self.origin_location(&origin);
        self.diags.push(d.file(file).line(line));
        None
    }

    fn origin_location(&self, origin: &VarOrigin) -> (String, u32) {
        match origin {
            VarOrigin::Values => (
                self.options
                    .values_file
                    .unwrap_or(self.input.file)
                    .to_owned(),
                0,
            ),
            VarOrigin::DotEnv { path, line } => (path.clone(), *line),
        }
    }

    fn active_profiles(&self) -> Option<Active> {
        if let Some(names) = self.options.profiles {
            let (file, line) = self.options.profiles_origin;
            return Some(Active {
                names: names.to_vec(),
                environment_wide: true,
                at: (
                    file.to_owned(),
                    line,
                    "`compose.profiles` in driftless.yaml".to_owned(),
                ),
            });
        }
        let origin = self.variable_origin(PROFILES)?;
        let names = split_profiles(self.vars.get(PROFILES).map_or("", String::as_str));
        let (file, line) = self.origin_location(&origin);
        let environment_wide = matches!(origin, VarOrigin::Values);
        let what = match origin {
            VarOrigin::Values => format!("`{PROFILES}` in the environment's values"),
            VarOrigin::DotEnv { .. } => format!("`{PROFILES}` in `.env`"),
        };
        Some(Active {
            names,
            environment_wide,
            at: (file, line, what),
        })
    }
}

/// `COMPOSE_PROFILES` as compose splits it: on commas, blanks dropped.
pub fn split_profiles(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !out.iter().any(|o| o == p) {
            out.push(p.to_owned());
        }
    }
    out
}

/// The 1-based line of the last assignment of `name` in a `.env` text
/// (0 when it cannot be found, e.g. set through a multi-line value).
fn line_of_variable(text: &str, name: &str) -> u32 {
    let mut found = 0;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim_start();
        let l = l.strip_prefix("export ").map_or(l, str::trim_start);
        if let Some(rest) = l.strip_prefix(name)
            && rest.trim_start().starts_with(['=', ':'])
        {
            found = u32::try_from(i + 1).unwrap_or(0);
        }
    }
    found
}

/// Splits `project`'s services into enabled and disabled by the active
/// profiles, and checks what that leaves.
pub(crate) fn apply(ctx: &mut Ctx, project: &mut Project) {
    let active = ctx.active_profiles();
    let names: Vec<String> = active.as_ref().map(|a| a.names.clone()).unwrap_or_default();
    let all = names.iter().any(|n| n == "*");

    if let Some(a) = &active {
        let defined: BTreeSet<&str> = project.defined_profiles();
        for name in &a.names {
            if !crate::manifest::valid_profile_name(name) {
                ctx.diags.push(
                    Diagnostic::error(format!("`{name}` in {} is not a profile name", a.at.2))
                        .file(a.at.0.clone())
                        .line(a.at.1)
                        .hint("profile names are letters, digits, `_`, `.` and `-`; `*` activates every profile"),
                );
            } else if name != "*" && !a.environment_wide && !defined.contains(name.as_str()) {
                ctx.diags.push(
                    Diagnostic::error(format!(
                        "profile `{name}` set by {} is not used by any service of project `{}`",
                        a.at.2, project.name
                    ))
                    .file(a.at.0.clone())
                    .line(a.at.1)
                    .hint(known_profiles_hint(&defined)),
                );
            }
        }
    }

    let disabled: Vec<String> = project
        .services
        .iter()
        .filter(|(_, s)| {
            !s.profiles.is_empty() && !all && !s.profiles.iter().any(|p| names.contains(p))
        })
        .map(|(n, _)| n.clone())
        .collect();
    for name in disabled {
        if let Some(s) = project.services.remove(&name) {
            project.disabled_services.insert(name, s.profiles);
        }
    }

    // What enabled services need must be enabled too.
    let mut errors = Vec::new();
    for (name, s) in project.services.iter_mut() {
        // `network_mode: service:x` implies a dependency on x; its own
        // error below says more than a second "depends on" would.
        let shared = s
            .network_mode
            .as_deref()
            .and_then(|m| m.strip_prefix("service:"))
            .map(str::to_owned);
        s.depends_on.retain(|dep, d| {
            let Some(profiles) = project.disabled_services.get(dep) else {
                return true;
            };
            if d.required && shared.as_deref() != Some(dep.as_str()) {
                errors.push((
                    name.clone(),
                    s.origin.clone(),
                    "depends_on",
                    format!(
                        "service `{name}` depends on `{dep}`, which is disabled: none of its profiles ({}) is active",
                        quoted(profiles)
                    ),
                ));
            }
            false
        });
        if let Some(other) = s
            .network_mode
            .as_deref()
            .and_then(|m| m.strip_prefix("service:"))
            && let Some(profiles) = project.disabled_services.get(other)
        {
            errors.push((
                name.clone(),
                s.origin.clone(),
                "network_mode",
                format!(
                    "service `{name}` shares the network of `{other}`, which is disabled: none of its profiles ({}) is active",
                    quoted(profiles)
                ),
            ));
        }
    }
    for (name, origin, key, message) in errors {
        let hint = match &active {
            Some(a) => format!(
                "activate one of those profiles in {}, or give `{name}` the same profiles",
                a.at.2
            ),
            None => format!(
                "activate one of those profiles (`compose.profiles` in driftless.yaml, or `{PROFILES}` in `.env`), or give `{name}` the same profiles"
            ),
        };
        ctx.diags.push(
            Diagnostic::error(message)
                .file(origin.file)
                .line(origin.line)
                .object(format!("services.{name}.{key}"))
                .hint(hint),
        );
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The hint for an unknown profile: the profiles there are.
pub fn known_profiles_hint(defined: &BTreeSet<&str>) -> String {
    if defined.is_empty() {
        "no service of the project has `profiles:`; remove the setting".to_owned()
    } else {
        format!(
            "profiles the services name: {}",
            defined
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_profiles_split_like_compose() {
        assert_eq!(split_profiles(" a, b,,a ,"), ["a", "b"]);
        assert!(split_profiles("").is_empty());
    }

    #[test]
    fn finds_the_line_of_a_dotenv_variable() {
        let text = "# x\nCOMPOSE_PROFILES_X=1\nexport COMPOSE_PROFILES = a\nB=2\n";
        assert_eq!(line_of_variable(text, "COMPOSE_PROFILES"), 3);
        assert_eq!(line_of_variable(text, "NOPE"), 0);
    }
}
