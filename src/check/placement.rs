//! Placement: which Compose files go to which docker target when an
//! environment spans several Docker hosts (`environments.<env>.placement`,
//! target → globs over rendered paths). Every Compose file must land on
//! exactly one target, and every docker target of the environment must be
//! named, so a stack is never deployed twice or silently dropped.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, Diagnostics};
use crate::glob::Glob;
use crate::manifest::Environment;
use crate::model::compose::Project;

/// The projects per docker target, or `None` when the environment has no
/// placement (every docker target gets every project). Problems go to
/// `diags`.
pub fn place(
    env: &Environment,
    projects: &[Project],
    diags: &mut Diagnostics,
) -> Option<BTreeMap<String, Vec<Project>>> {
    if env.placement.is_empty() {
        return None;
    }
    let globs: Vec<(&String, Vec<Glob>)> = env
        .placement
        .iter()
        .map(|(target, gs)| {
            // Bad globs were reported when the manifest was parsed.
            (
                target,
                gs.iter().filter_map(|g| Glob::new(g).ok()).collect(),
            )
        })
        .collect();
    let mut out: BTreeMap<String, Vec<Project>> = BTreeMap::new();
    for p in projects {
        let file = &p.origin.file;
        let on: Vec<&String> = globs
            .iter()
            .filter(|(_, gs)| gs.iter().any(|g| g.is_match(file)))
            .map(|(t, _)| *t)
            .collect();
        match on.as_slice() {
            [target] => out.entry((*target).clone()).or_default().push(p.clone()),
            [] => diags.push(
                Diagnostic::error(format!(
                    "Compose project `{}` matches no target in `environments.{}.placement`",
                    p.name, env.name
                ))
                .file(file.clone())
                .hint("add a glob matching this file to one docker target's placement"),
            ),
            many => diags.push(
                Diagnostic::error(format!(
                    "Compose project `{}` matches several targets in `environments.{}.placement` ({}); it would be deployed on each",
                    p.name,
                    env.name,
                    many.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                ))
                .file(file.clone()),
            ),
        }
    }
    Some(out)
}
