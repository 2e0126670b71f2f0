//! Compose variable interpolation: `${VAR}`, `$VAR`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`,
//! `${VAR+alt}`, nesting (`${A:-${B}}`) and `$$` for a literal `$`, with
//! compose-go v2's rules: names are `[_a-zA-Z][_a-zA-Z0-9]*`; a `$` followed
//! by anything other than `$`, a name or `{` stays as written (`$(cmd)`,
//! `cost: 5 $`: compose-go since its PR #307, docker compose 2.12; the
//! loader warns, since docker-compose 1.x refused it as an "Invalid
//! interpolation format" and a `$(cmd)` meant for a shell usually wants
//! `$$(cmd)`); a `${...}` that is not a valid form is an error; an unset
//! variable without a default becomes the empty string (with a warning); and
//! only string values are interpolated, never mapping keys.

use crate::yaml::{Node, Value};

/// How deep `${A:-${B:-...}}` may nest before we refuse (compose-go has no
/// limit; this keeps hostile input from exhausting the stack).
const MAX_NESTING: usize = 32;

/// Why a template could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not a valid template (`${}`, `${1X}`, `${X`, `${X:y}`).
    Invalid(String),
    /// `${VAR:?message}` / `${VAR?message}` with the variable missing.
    Required { name: String, message: String },
}

/// The variables interpolation reads, and the names found unset.
pub struct Substitution<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Variables referenced without a default and not set, in order of use.
    pub unset: Vec<String>,
    /// Where each of [`Substitution::unset`] was first used by
    /// [`interpolate_tree`]: (line, object path).
    pub unset_at: Vec<(u32, String)>,
    /// Values in which [`interpolate_tree`] kept a `$` that starts no
    /// variable (`$(date)`): (line, column, object path, value).
    pub lone_dollars_at: Vec<(u32, u32, String, String)>,
    /// Whether the last substitution kept such a `$`.
    saw_lone_dollar: bool,
    /// Values [`interpolate_tree`] emptied in part with unset variables:
    /// (line, column, the first such variable).
    pub tainted: Vec<(u32, u32, String)>,
    /// Unset variables used by the current substitution, in order.
    used_unset: Vec<String>,
}

impl<'a> Substitution<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Substitution {
            lookup,
            unset: Vec::new(),
            unset_at: Vec::new(),
            lone_dollars_at: Vec::new(),
            saw_lone_dollar: false,
            tainted: Vec::new(),
            used_unset: Vec::new(),
        }
    }

    /// Substitutes every variable in `template`.
    pub fn substitute(&mut self, template: &str) -> Result<String, Error> {
        self.substitute_at(template, 0)
    }

    fn substitute_at(&mut self, template: &str, depth: usize) -> Result<String, Error> {
        if depth > MAX_NESTING {
            return Err(Error::Invalid(format!(
                "variables nest more than {MAX_NESTING} levels deep"
            )));
        }
        let bytes = template.as_bytes();
        let mut out = String::with_capacity(template.len());
        let mut i = 0;
        while i < bytes.len() {
            let Some(offset) = template[i..].find('$') else {
                out.push_str(&template[i..]);
                break;
            };
            out.push_str(&template[i..i + offset]);
            i += offset;
            match bytes.get(i + 1) {
                Some(b'$') => {
                    out.push('$');
                    i += 2;
                }
                Some(b'{') => {
                    let end = closing_brace(bytes, i)
                        .ok_or_else(|| Error::Invalid("`${` without its closing `}`".to_owned()))?;
                    out.push_str(&self.braced(&template[i + 2..end], depth)?);
                    i = end + 1;
                }
                Some(&c) if is_name_start(c) => {
                    let len = name_len(&bytes[i + 1..]);
                    let name = &template[i + 1..i + 1 + len];
                    out.push_str(&self.value_or_empty(name));
                    i += 1 + len;
                }
                _ => {
                    self.saw_lone_dollar = true;
                    out.push('$');
                    i += 1;
                }
            }
        }
        Ok(out)
    }

    fn value_or_empty(&mut self, name: &str) -> String {
        match (self.lookup)(name) {
            Some(value) => value,
            None => {
                self.used_unset.push(name.to_owned());
                if !self.unset.iter().any(|n| n == name) {
                    self.unset.push(name.to_owned());
                }
                String::new()
            }
        }
    }

    /// The inside of `${...}`.
    fn braced(&mut self, inner: &str, depth: usize) -> Result<String, Error> {
        let bytes = inner.as_bytes();
        if bytes.first().is_none_or(|&c| !is_name_start(c)) {
            return Err(Error::Invalid(format!(
                "`${{{inner}}}` does not start with a variable name"
            )));
        }
        let len = name_len(bytes);
        let name = &inner[..len];
        let rest = &inner[len..];
        if rest.is_empty() {
            return Ok(self.value_or_empty(name));
        }
        let (op, arg) = [":-", ":?", ":+", "-", "?", "+"]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|arg| (*op, arg)))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "`${{{inner}}}`: expected `}}`, `:-`, `-`, `:?`, `?`, `:+` or `+` after `{name}`"
                ))
            })?;
        let value = (self.lookup)(name);
        let empty = value.as_deref().is_none_or(str::is_empty);
        match op {
            ":-" if empty => self.substitute_at(arg, depth + 1),
            "-" if value.is_none() => self.substitute_at(arg, depth + 1),
            ":?" | "?" if (op == ":?" && empty) || value.is_none() => {
                let message = self.substitute_at(arg, depth + 1)?;
                Err(Error::Required {
                    name: name.to_owned(),
                    message,
                })
            }
            ":+" if !empty => self.substitute_at(arg, depth + 1),
            "+" if value.is_some() => self.substitute_at(arg, depth + 1),
            ":+" | "+" => Ok(String::new()),
            _ => Ok(value.unwrap_or_default()),
        }
    }
}

/// Index of the `}` closing the `${` at `start`: compose-go counts every
/// `{` as an opening (skipping the character after it) and every `}` as a
/// closing.
fn closing_brace(bytes: &[u8], start: usize) -> Option<usize> {
    let mut open = 0usize;
    let mut i = start;
    while i < bytes.len() {
        if bytes[i] == b'}' {
            open = open.saturating_sub(1);
            if open == 0 {
                return Some(i);
            }
        }
        if bytes[i] == b'{' {
            open += 1;
            i += 1;
        }
        i += 1;
    }
    None
}

fn is_name_start(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphabetic()
}

fn name_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|&&c| c == b'_' || c.is_ascii_alphanumeric())
        .count()
}

/// A failed substitution in a tree: the node's position and path.
#[derive(Debug)]
pub struct Failure {
    pub line: u32,
    pub column: u32,
    pub path: String,
    pub value: String,
    pub error: Error,
}

/// Interpolates every string value under `node` (keys are left alone, as in
/// Compose). Failures are collected; a failed value is left unchanged.
/// `path` is the object path of `node` (`""` for the root).
pub fn interpolate_tree(
    node: &mut Node,
    path: &str,
    subst: &mut Substitution,
    failures: &mut Vec<Failure>,
) {
    match &mut node.value {
        Value::String(s) if s.contains('$') => {
            let known = subst.unset.len();
            subst.saw_lone_dollar = false;
            subst.used_unset.clear();
            let written = s.clone();
            match subst.substitute(s) {
                Ok(v) => *s = v,
                Err(error) => failures.push(Failure {
                    line: node.line,
                    column: node.column,
                    path: path.to_owned(),
                    value: s.clone(),
                    error,
                }),
            }
            for _ in known..subst.unset.len() {
                subst.unset_at.push((node.line, path.to_owned()));
            }
            if let Some(name) = subst.used_unset.first().cloned() {
                subst.tainted.push((node.line, node.column, name));
            }
            if std::mem::take(&mut subst.saw_lone_dollar) {
                subst
                    .lone_dollars_at
                    .push((node.line, node.column, path.to_owned(), written));
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{path}[{i}]"), subst, failures);
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let key = k.scalar_text().unwrap_or_default();
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate_tree(v, &child, subst, failures);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(template: &str) -> (Result<String, Error>, Vec<String>) {
        let vars: BTreeMap<&str, &str> = [
            ("SET", "value"),
            ("EMPTY", ""),
            ("B", "bee"),
            ("lower", "low"),
        ]
        .into();
        let lookup = move |k: &str| vars.get(k).map(|v| v.to_string());
        let mut s = Substitution::new(&lookup);
        let r = s.substitute(template);
        (r, s.unset)
    }

    fn ok(template: &str) -> String {
        run(template).0.unwrap()
    }

    #[test]
    fn substitution_table() {
        let table = [
            ("plain", "plain"),
            ("$SET", "value"),
            ("${SET}", "value"),
            ("a${SET}b", "avalueb"),
            ("$SET-x", "value-x"),
            ("${lower}", "low"),
            ("$$", "$"),
            ("$$SET", "$SET"),
            ("$${SET}", "${SET}"),
            ("${UNSET:-def}", "def"),
            ("${EMPTY:-def}", "def"),
            ("${SET:-def}", "value"),
            ("${UNSET-def}", "def"),
            ("${EMPTY-def}", ""),
            ("${SET:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${UNSET:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${UNSET:-${B}}", "bee"),
            ("${UNSET:-${UNSET2:-${B}}}x", "beex"),
            ("${UNSET:-a-b:c}", "a-b:c"),
            ("${UNSET:-}", ""),
            ("${SET:?must be set}", "value"),
            ("${EMPTY?must be set}", ""),
            ("héllo ${SET} wörld", "héllo value wörld"),
            ("${UNSET:-{x}}", "{x}"),
            ("$", "$"),
            ("cost: 5 $", "cost: 5 $"),
            ("echo $(seq 10)", "echo $(seq 10)"),
            ("a$-b", "a$-b"),
        ];
        for (template, want) in table {
            assert_eq!(ok(template), want, "{template}");
        }
    }

    #[test]
    fn unset_variables_are_empty_and_reported_once() {
        let (r, unset) = run("$NOPE-${NOPE}-${ALSO}");
        assert_eq!(r.unwrap(), "--");
        assert_eq!(unset, ["NOPE", "ALSO"]);
        // A default or `+` form does not report.
        assert!(run("${NOPE:-x}${NOPE+y}").1.is_empty());
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            run("${NOPE:?set NOPE in .env}").0,
            Err(Error::Required {
                name: "NOPE".into(),
                message: "set NOPE in .env".into()
            })
        );
        assert!(matches!(run("${EMPTY:?x}").0, Err(Error::Required { .. })));
        assert!(matches!(run("${NOPE?x}").0, Err(Error::Required { .. })));
    }

    #[test]
    fn invalid_templates_are_errors() {
        for t in ["${}", "${1A}", "${SET", "${SET:x}", "${SET x}", "a ${-x} b"] {
            assert!(matches!(run(t).0, Err(Error::Invalid(_))), "{t}");
        }
    }

    #[test]
    fn hostile_nesting_is_bounded() {
        let t = "${A:-".repeat(10_000) + &"}".repeat(10_000);
        assert!(matches!(run(&t).0, Err(Error::Invalid(_))));
    }

    #[test]
    fn trees_interpolate_values_not_keys() {
        let mut n = crate::yaml::parse_document("$SET: $SET\nl: [a$B, 1, '${NOPE:?x}']\n").unwrap();
        let lookup = |k: &str| (k == "SET" || k == "B").then(|| "v".to_owned());
        let mut s = Substitution::new(&lookup);
        let mut failures = Vec::new();
        interpolate_tree(&mut n, "", &mut s, &mut failures);
        assert_eq!(
            n.to_json(),
            serde_json::json!({"$SET": "v", "l": ["av", 1, "${NOPE:?x}"]})
        );
        assert_eq!(failures.len(), 1);
        assert_eq!((failures[0].path.as_str(), failures[0].line), ("l[2]", 2));
    }

    #[test]
    fn trees_note_each_value_keeping_a_lone_dollar() {
        let mut n = crate::yaml::parse_document("a: echo $(date)\nb: $$(x)\nc: [5 $]\n").unwrap();
        let lookup = |_: &str| None;
        let mut s = Substitution::new(&lookup);
        interpolate_tree(&mut n, "", &mut s, &mut Vec::new());
        let at: Vec<_> = s
            .lone_dollars_at
            .iter()
            .map(|(line, _, path, value)| (*line, path.as_str(), value.as_str()))
            .collect();
        assert_eq!(at, [(1, "a", "echo $(date)"), (3, "c[0]", "5 $")]);
    }
}
