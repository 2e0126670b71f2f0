//! Prometheus rule files: the structure every rule file must have (a
//! `groups:` list of named groups, each rule an `alert` or a `record` with an
//! `expr`). Full `promtool check rules` semantics (PromQL, templates, name
//! validation per Prometheus version) belong to the rules issue and extend
//! this module.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{Origin, RuleFile};
use crate::yaml;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    groups: Vec<Spanned<RawGroup>>,
}

#[derive(Debug, Deserialize)]
struct RawGroup {
    name: String,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
struct RawRule {
    alert: Option<String>,
    record: Option<String>,
    expr: Option<serde_json::Value>,
}

/// Loads one rule file. `file` is the rendered repo path; the file keeps its
/// base name in the target's rules directory.
pub fn load(file: &str, text: &str) -> Result<RuleFile, Diagnostics> {
    let raw: RawFile =
        yaml::from_str(text).map_err(|e| Diagnostics::from(e.into_diagnostic(file)))?;
    let mut diags = Diagnostics::new();
    let mut names = BTreeSet::new();
    for group in &raw.groups {
        let line = group.referenced.line() as u32;
        let g = &group.value;
        if g.name.is_empty() {
            diags.push(
                Diagnostic::error("group name must not be empty")
                    .file(file)
                    .line(line),
            );
        } else if !names.insert(g.name.clone()) {
            diags.push(
                Diagnostic::error(format!("group name `{}` is repeated in the file", g.name))
                    .file(file)
                    .line(line),
            );
        }
        for rule in &g.rules {
            let line = rule.referenced.line() as u32;
            let r = &rule.value;
            let object = format!("groups.{}", g.name);
            match (&r.alert, &r.record) {
                (Some(_), Some(_)) => diags.push(
                    Diagnostic::error("a rule has both `alert` and `record`; use one")
                        .file(file)
                        .line(line)
                        .object(object.clone()),
                ),
                (None, None) => diags.push(
                    Diagnostic::error("a rule needs `alert` or `record`")
                        .file(file)
                        .line(line)
                        .object(object.clone()),
                ),
                _ => {}
            }
            if r.expr.is_none() {
                diags.push(
                    Diagnostic::error("a rule needs `expr`")
                        .file(file)
                        .line(line)
                        .object(object),
                );
            }
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    let name = file.rsplit('/').next().unwrap_or(file).to_owned();
    Ok(RuleFile {
        name,
        content: text.to_owned(),
        groups: raw.groups.into_iter().map(|g| g.value.name).collect(),
        origin: Origin {
            file: file.to_owned(),
            line: 1,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_groups_and_keeps_content_verbatim() {
        let text = "groups:\n  - name: a\n    rules:\n      - alert: Up\n        expr: up == 0\n        annotations:\n          summary: '{{ $labels.instance }} down'\n";
        let f = load("rules/a.yml", text).unwrap();
        assert_eq!(f.name, "a.yml");
        assert_eq!(f.groups, vec!["a"]);
        assert_eq!(f.content, text);
    }

    #[test]
    fn structural_errors_are_located() {
        let text = "groups:\n  - name: a\n    rules:\n      - alert: X\n        record: y\n        expr: up\n  - name: a\n    rules: []\n";
        let all = load("rules/a.yml", text).unwrap_err().to_string();
        assert!(all.contains("rules/a.yml:4"), "{all}");
        assert!(all.contains("both `alert` and `record`"), "{all}");
        assert!(all.contains("group name `a` is repeated"), "{all}");
    }
}
