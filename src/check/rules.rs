//! Prometheus rule files, checked as `promtool check rules` checks them for
//! the target's Prometheus major version.
//!
//! [`load`] parses a file (unknown fields are errors, as in Prometheus
//! without `--ignore-unknown-fields`) and checks: group names present and
//! unique in the file; each rule `alert` xor `record` with an `expr`; no
//! `annotations`, `for` or `keep_firing_for` on recording rules; durations;
//! recording-rule names (a valid metric name, no `{…}`); label and
//! annotation names ([`names`]: legacy for 2.x, UTF-8 for 3.x; never
//! `__name__` as a rule label); PromQL ([`promql`], experimental functions
//! only with the feature flag); label values and annotations as Go
//! templates ([`template`]). Rules with the same name and labels are lint
//! warnings, errors with [`Options::lint_fatal`] (`--lint-fatal`).
//!
//! Everything found is reported at once, each with file, line and object
//! (`groups.<group>.rules[<i>]`). The file itself is kept verbatim.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::diag::{Diagnostic, Diagnostics};
use crate::manifest::PrometheusTarget;
use crate::model::{Origin, RuleFile};
use crate::yaml;

pub mod names;
pub mod promql;
pub mod template;

use names::Validation;

/// Which Prometheus a rule file is checked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Prometheus major version (2 or 3): name validation and the fields a
    /// group may have follow it.
    pub version: u8,
    /// Duplicate rules are errors, not warnings (`promtool check rules --lint-fatal`).
    pub lint_fatal: bool,
    /// Feature flags Prometheus runs with (`--enable-feature`), e.g.
    /// [`promql::EXPERIMENTAL_FUNCTIONS`].
    pub features: Vec<String>,
}

impl Default for Options {
    /// Prometheus 3, lint warnings, no feature flags.
    fn default() -> Self {
        Options {
            version: 3,
            lint_fatal: false,
            features: Vec::new(),
        }
    }
}

impl Options {
    /// The options of a Prometheus target.
    pub fn for_target(t: &PrometheusTarget) -> Self {
        Options {
            version: t.version,
            lint_fatal: t.lint_fatal,
            features: t.enable_features.clone(),
        }
    }

    /// Options for Prometheus `version` with defaults otherwise.
    pub fn version(version: u8) -> Self {
        Options {
            version,
            ..Options::default()
        }
    }

    fn experimental(&self) -> bool {
        self.features
            .iter()
            .any(|f| f == promql::EXPERIMENTAL_FUNCTIONS)
    }
}

/// A YAML scalar read as text, as Go's yaml.v3 reads a scalar into a string
/// (`expr: 1`, `severity: 2`).
#[derive(Debug, Clone, PartialEq)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: Vec<Spanned<RawGroup>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    name: String,
    interval: Option<Scalar>,
    query_offset: Option<Scalar>,
    limit: Option<i64>,
    /// Group labels: Prometheus 3 only.
    labels: Option<BTreeMap<String, Scalar>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    record: Option<Scalar>,
    alert: Option<Scalar>,
    expr: Option<Scalar>,
    #[serde(rename = "for")]
    for_: Option<Scalar>,
    keep_firing_for: Option<Scalar>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Scalar>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, Scalar>>,
}

fn text(s: &Option<Scalar>) -> &str {
    s.as_ref().map_or("", |s| s.0.as_str())
}

/// Loads and checks one rule file for `options`. `file` is the rendered repo
/// path; the file keeps its base name in the target's rules directory.
/// Returns the file and its warnings (lint), or every error.
pub fn load(
    file: &str,
    text_in: &str,
    options: &Options,
) -> Result<(RuleFile, Vec<Diagnostic>), Diagnostics> {
    let raw: RawFile =
        yaml::from_str(text_in).map_err(|e| Diagnostics::from(e.into_diagnostic(file)))?;
    let validation = Validation::for_version(options.version);
    let mut diags = Diagnostics::new();
    let mut group_names = BTreeSet::new();
    // (name, sorted labels) → line of the first such rule, for duplicates.
    let mut seen: BTreeMap<(String, Vec<(String, String)>), u32> = BTreeMap::new();
    let mut warnings = Vec::new();

    for group in &raw.groups {
        let line = group.referenced.line() as u32;
        let g = &group.value;
        let gobj = format!("groups.{}", g.name);
        let err = |diags: &mut Diagnostics, msg: String, line: u32, object: &str| {
            diags.push(Diagnostic::error(msg).file(file).line(line).object(object));
        };
        if g.name.is_empty() {
            err(
                &mut diags,
                "Groupname must not be empty".to_owned(),
                line,
                "groups",
            );
        } else if !group_names.insert(g.name.clone()) {
            err(
                &mut diags,
                format!("groupname: {:?} is repeated in the same file", g.name),
                line,
                &gobj,
            );
        }
        for (field, value) in [("interval", &g.interval), ("query_offset", &g.query_offset)] {
            if let Some(v) = value
                && let Err(e) = names::parse_duration(&v.0)
            {
                err(&mut diags, format!("{field}: {e}"), line, &gobj);
            }
        }
        if g.limit.is_some_and(|l| l < 0) {
            err(
                &mut diags,
                "limit must not be negative".to_owned(),
                line,
                &gobj,
            );
        }
        if let Some(labels) = &g.labels {
            if options.version < 3 {
                err(
                    &mut diags,
                    format!(
                        "field labels not found in type rulefmt.RuleGroup (group labels need Prometheus 3; this target is version {})",
                        options.version
                    ),
                    line,
                    &gobj,
                );
            } else {
                for name in labels.keys() {
                    if !validation.label_name(name) || name == "__name__" {
                        err(
                            &mut diags,
                            format!("invalid label name: {name}"),
                            line,
                            &gobj,
                        );
                    }
                }
            }
        }

        for (index, rule) in g.rules.iter().enumerate() {
            let line = rule.referenced.line() as u32;
            let r = &rule.value;
            let name = if text(&r.alert).is_empty() {
                text(&r.record)
            } else {
                text(&r.alert)
            };
            let object = if name.is_empty() {
                format!("{gobj}.rules[{index}]")
            } else {
                format!("{gobj}.rules[{index}] ({name})")
            };
            for msg in check_rule(r, &validation, options) {
                err(&mut diags, msg, line, &object);
            }
            // Lint: the same rule name and labels twice in the file.
            if !name.is_empty() {
                let mut labels: Vec<(String, String)> = r
                    .labels
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect();
                labels.sort();
                match seen.get(&(name.to_owned(), labels.clone())) {
                    Some(first) => {
                        let d = Diagnostic::warning(format!(
                            "duplicate rule {name:?}: same name and labels as the rule at line {first}"
                        ))
                        .file(file)
                        .line(line)
                        .object(object.clone());
                        if options.lint_fatal {
                            diags.push(Diagnostic {
                                severity: crate::diag::Severity::Error,
                                hint: Some(
                                    "lint_fatal is set for this Prometheus target".to_owned(),
                                ),
                                ..d
                            });
                        } else {
                            warnings.push(d);
                        }
                    }
                    None => {
                        seen.insert((name.to_owned(), labels), line);
                    }
                }
            }
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    let name = file.rsplit('/').next().unwrap_or(file).to_owned();
    Ok((
        RuleFile {
            name,
            content: text_in.to_owned(),
            groups: raw.groups.into_iter().map(|g| g.value.name).collect(),
            origin: Origin {
                file: file.to_owned(),
                line: 1,
            },
        },
        warnings,
    ))
}

/// Every problem of one rule, in Prometheus's words where it has them.
fn check_rule(r: &RawRule, validation: &Validation, options: &Options) -> Vec<String> {
    let mut out = Vec::new();
    let (record, alert) = (text(&r.record), text(&r.alert));
    match (record.is_empty(), alert.is_empty()) {
        (false, false) => out.push("only one of 'record' and 'alert' must be set".to_owned()),
        (true, true) => out.push("one of 'record' or 'alert' must be set".to_owned()),
        _ => {}
    }
    let expr = text(&r.expr);
    if expr.is_empty() {
        out.push("field 'expr' must be set in rule".to_owned());
    } else if let Err(e) = promql::check(expr, options.experimental()) {
        out.push(format!("could not parse expression: {e}"));
    }
    let mut durations = BTreeMap::new();
    for (field, value) in [("for", &r.for_), ("keep_firing_for", &r.keep_firing_for)] {
        if let Some(v) = value {
            match names::parse_duration(&v.0) {
                Ok(ms) => {
                    durations.insert(field, ms);
                }
                Err(e) => out.push(format!("{field}: {e}")),
            }
        }
    }
    if !record.is_empty() {
        if r.annotations.as_ref().is_some_and(|a| !a.is_empty()) {
            out.push("invalid field 'annotations' in recording rule".to_owned());
        }
        for field in ["for", "keep_firing_for"] {
            if durations.get(field).is_some_and(|ms| *ms != 0) {
                out.push(format!("invalid field '{field}' in recording rule"));
            }
        }
        if record.contains('{') && record.contains('}') {
            out.push(format!(
                "braces present in the recording rule name; should it be in expr?: {record}"
            ));
        } else if !validation.metric_name(record) {
            out.push(format!("invalid recording rule name: {record}"));
        }
    }
    let template_name = format!("__alert_{}", if alert.is_empty() { record } else { alert });
    for (k, v) in r.labels.iter().flatten() {
        if !validation.label_name(k) || k == "__name__" {
            out.push(format!("invalid label name: {k}"));
        }
        if let Err(e) = template::check(&template_name, &v.0) {
            out.push(format!("label {k:?}: {e}"));
        }
    }
    for (k, v) in r.annotations.iter().flatten() {
        if !validation.label_name(k) {
            out.push(format!("invalid annotation name: {k}"));
        }
        if let Err(e) = template::check(&template_name, &v.0) {
            out.push(format!("annotation {k:?}: {e}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load3(text: &str) -> Result<(RuleFile, Vec<Diagnostic>), Diagnostics> {
        load("rules/a.yml", text, &Options::default())
    }

    #[test]
    fn loads_groups_and_keeps_content_verbatim() {
        let text = "groups:\n  - name: a\n    rules:\n      - alert: Up\n        expr: up == 0\n        annotations:\n          summary: '{{ $labels.instance }} down'\n";
        let (f, w) = load3(text).unwrap();
        assert_eq!(f.name, "a.yml");
        assert_eq!(f.groups, vec!["a"]);
        assert_eq!(f.content, text);
        assert!(w.is_empty());
    }

    #[test]
    fn structural_errors_are_located() {
        let text = "groups:\n  - name: a\n    rules:\n      - alert: X\n        record: y\n        expr: up\n  - name: a\n    rules: []\n";
        let all = load3(text).unwrap_err().to_string();
        assert!(all.contains("rules/a.yml:4"), "{all}");
        assert!(
            all.contains("only one of 'record' and 'alert' must be set"),
            "{all}"
        );
        assert!(
            all.contains("groupname: \"a\" is repeated in the same file"),
            "{all}"
        );
    }

    #[test]
    fn names_follow_the_version() {
        let text = "groups:\n  - name: a\n    rules:\n      - record: a\n        expr: '1'\n        labels:\n          ins-tance: x\n";
        assert!(load("a.yml", text, &Options::version(3)).is_ok());
        let e = load("a.yml", text, &Options::version(2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid label name: ins-tance"), "{e}");
    }

    #[test]
    fn group_labels_need_prometheus_3() {
        let text = "groups:\n  - name: a\n    labels: {team: x}\n    rules: []\n";
        assert!(load("a.yml", text, &Options::version(3)).is_ok());
        assert!(load("a.yml", text, &Options::version(2)).is_err());
    }

    #[test]
    fn recording_rules_take_no_for_or_annotations() {
        let text = "groups:\n  - name: a\n    rules:\n      - record: a\n        expr: '1'\n        for: 0s\n      - record: b\n        expr: '1'\n        for: 1m\n        annotations: {x: y}\n";
        let e = load3(text).unwrap_err().to_string();
        assert!(e.contains("invalid field 'for' in recording rule"), "{e}");
        assert!(
            e.contains("invalid field 'annotations' in recording rule"),
            "{e}"
        );
        assert_eq!(e.matches("error").count(), 2, "{e}");
    }

    #[test]
    fn duplicates_warn_or_fail_with_lint_fatal() {
        let text = "groups:\n  - name: a\n    rules:\n      - record: x\n        expr: '1'\n  - name: b\n    rules:\n      - record: x\n        expr: '2'\n";
        let (_, w) = load3(text).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("duplicate rule \"x\""), "{}", w[0]);
        let fatal = Options {
            lint_fatal: true,
            ..Options::default()
        };
        assert!(load("a.yml", text, &fatal).is_err());
    }

    #[test]
    fn templates_and_durations_are_checked() {
        let text = "groups:\n  - name: a\n    interval: 1x\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 5\n        annotations:\n          s: '{{ $label.x }}'\n";
        let e = load3(text).unwrap_err().to_string();
        assert!(e.contains("interval: not a valid duration string"), "{e}");
        assert!(e.contains("for: not a valid duration string"), "{e}");
        assert!(
            e.contains("annotation \"s\": template: __alert_A:1: undefined variable \"$label\""),
            "{e}"
        );
    }
}
