//! Turning a minijinja error into a [`Diagnostic`] that points at the
//! template where the problem is.
//!
//! minijinja wraps an error raised inside an included template in a
//! `BadInclude` error located at the `{% include %}` line, with the real
//! error as its source. The user needs the innermost location (that is the
//! line to fix), and the include chain as context.

use minijinja::ErrorKind;

use super::filters;
use crate::diag::Diagnostic;
use crate::source::Snapshot;

/// Limits shown in messages; set by the engine.
pub(super) struct Limits {
    pub fuel: u64,
    pub recursion: usize,
}

/// A render error of environment `env`; `template` is the snapshot path
/// that was being rendered (used when minijinja knows no location).
pub(super) fn diagnostic(
    err: &minijinja::Error,
    env: &str,
    template: &str,
    snapshot: &Snapshot,
    limits: &Limits,
) -> Diagnostic {
    // Outermost first: each `BadInclude` layer is an include site.
    let mut chain = vec![err];
    let mut cur = err;
    while let Some(inner) =
        std::error::Error::source(cur).and_then(|s| s.downcast_ref::<minijinja::Error>())
    {
        chain.push(inner);
        cur = inner;
    }
    let innermost = cur;
    let located = chain
        .iter()
        .rev()
        .find(|e| e.name().is_some())
        .copied()
        .unwrap_or(innermost);

    let file = located.name().unwrap_or(template);
    let line = located.line().unwrap_or(0);
    let column = located
        .range()
        .and_then(|r| column_of(snapshot.get(file)?, r.start))
        .unwrap_or(0);

    let (mut message, hint) = describe(innermost, limits);
    let includes: Vec<String> = chain
        .iter()
        .filter(|e| e.kind() == ErrorKind::BadInclude)
        .filter_map(|e| Some(format!("{}:{}", e.name()?, e.line()?)))
        .collect();
    if !includes.is_empty() {
        message.push_str(&format!(" (included from {})", include_chain(&includes)));
    }
    let mut d = Diagnostic::error(message)
        .env(env)
        .file(file)
        .at(line as u32, column);
    if let Some(hint) = hint {
        d = d.hint(hint);
    }
    d
}

/// The message and hint for the error itself, without its location.
fn describe(err: &minijinja::Error, limits: &Limits) -> (String, Option<String>) {
    let detail = err.detail().unwrap_or("");
    match err.kind() {
        ErrorKind::UndefinedError => (
            if detail.is_empty() {
                "undefined value".to_owned()
            } else {
                format!("undefined value: {detail}")
            },
            Some(
                "define it in the environment's values file, or guard it with \
                 `is defined` or `| default(...)`"
                    .to_owned(),
            ),
        ),
        ErrorKind::UnknownFilter => {
            // minijinja: "filter slugify is unknown".
            let name = detail
                .strip_prefix("filter ")
                .and_then(|d| d.strip_suffix(" is unknown"))
                .unwrap_or(detail);
            (
                format!("unknown filter `{name}`"),
                Some(format!(
                    "driftless has minijinja's built-in filters plus {}",
                    filters::NAMES.join(", ")
                )),
            )
        }
        ErrorKind::SyntaxError => (format!("template syntax error: {detail}"), None),
        ErrorKind::TemplateNotFound => (
            format!(
                "template `{}` is not in the repository",
                missing_template(detail)
            ),
            Some(
                "include, import and extends take a path relative to the repository root"
                    .to_owned(),
            ),
        ),
        ErrorKind::OutOfFuel => (
            format!(
                "template does too much work (over {} steps or that much data)",
                limits.fuel
            ),
            Some("look for a loop or repeat that is far larger than intended".to_owned()),
        ),
        ErrorKind::InvalidOperation if detail.contains("recursion limit exceeded") => (
            format!(
                "templates nest too deep (recursion limit {})",
                limits.recursion
            ),
            Some("a template includes itself or a macro calls itself without end".to_owned()),
        ),
        // Our own messages (loader, secrets) and minijinja's operation
        // errors read fine on their own.
        ErrorKind::InvalidOperation if !detail.is_empty() => (detail.to_owned(), None),
        kind if detail.is_empty() => (kind.to_string(), None),
        kind => (format!("{kind}: {detail}"), None),
    }
}

/// The include sites, outermost first, short enough to read: repeats
/// (an include loop) collapse to `a.j2:1 (×19)`, and a long chain keeps its
/// two ends.
fn include_chain(sites: &[String]) -> String {
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for site in sites {
        match runs.last_mut() {
            Some((last, n)) if *last == site.as_str() => *n += 1,
            _ => runs.push((site, 1)),
        }
    }
    let mut parts: Vec<String> = runs
        .iter()
        .map(|(site, n)| match n {
            1 => (*site).to_owned(),
            n => format!("{site} (×{n})"),
        })
        .collect();
    if parts.len() > 5 {
        let skipped = parts.len() - 4;
        parts.splice(2..parts.len() - 2, [format!("… {skipped} more …")]);
    }
    parts.join(" ← ")
}

/// The template name in minijinja's not-found details: `tried to include
/// non-existing template "x"` or `template "x" does not exist`.
fn missing_template(detail: &str) -> &str {
    let name = detail
        .strip_prefix("tried to include non-existing template ")
        .or_else(|| {
            detail
                .strip_prefix("template ")
                .and_then(|d| d.strip_suffix(" does not exist"))
        })
        .unwrap_or(detail);
    name.trim_matches(|c| c == '"' || c == '\'')
}

/// 1-based column (in characters) of byte `offset` in `source`.
fn column_of(source: &[u8], offset: usize) -> Option<u32> {
    let before = source.get(..offset)?;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&before[line_start..]).ok()?;
    u32::try_from(text.chars().count() + 1).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_chains_collapse_loops_and_keep_both_ends() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(include_chain(&s(&["a:1", "b:2"])), "a:1 ← b:2");
        assert_eq!(include_chain(&s(&["a:1"; 19])), "a:1 (×19)");
        assert_eq!(
            include_chain(&s(&["a:1", "b:1", "c:1", "d:1", "e:1", "f:1"])),
            "a:1 ← b:1 ← … 2 more … ← e:1 ← f:1"
        );
    }

    #[test]
    fn missing_template_names_are_unquoted() {
        assert_eq!(
            missing_template("tried to include non-existing template 'x.j2'"),
            "x.j2"
        );
        assert_eq!(missing_template("template \"y\" does not exist"), "y");
    }

    #[test]
    fn column_counts_characters_from_the_line_start() {
        assert_eq!(column_of(b"ab\ncd{{ x }}", 5), Some(3));
        assert_eq!(column_of(b"{{ x }}", 0), Some(1));
        assert_eq!(column_of("é{{".as_bytes(), 2), Some(2));
        assert_eq!(column_of(b"ab", 9), None);
    }
}
