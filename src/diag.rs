//! Diagnostics: every problem driftless finds in a desired-state repo, with
//! where it is (environment, file, line, column, object) and what to do.
//!
//! Stages collect diagnostics instead of stopping at the first one, so
//! `driftless validate` can list every error of a commit at once.

use std::fmt;

use serde::Serialize;

/// How bad a diagnostic is. Errors block an apply; warnings are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem, located as precisely as the parser that found it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Environment being rendered or checked, when the problem is specific to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Path inside the repo (as written in the snapshot, `.j2` included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// 1-based column, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// The object inside the file, e.g. `services.web.build` or `Deployment/api`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// What is wrong, in words a user acts on.
    pub message: String,
    /// What to do about it, when there is something specific to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            env: None,
            file: None,
            line: None,
            column: None,
            object: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = Some(env.into());
        self
    }

    /// Sets the environment only when none is set yet.
    pub fn or_env(mut self, env: &str) -> Self {
        if self.env.is_none() {
            self.env = Some(env.to_owned());
        }
        self
    }

    pub fn file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Sets the file only when none is set yet.
    pub fn or_file(mut self, file: &str) -> Self {
        if self.file.is_none() {
            self.file = Some(file.to_owned());
        }
        self
    }

    /// Sets line and column; a zero (unknown) value is left out.
    pub fn at(mut self, line: u32, column: u32) -> Self {
        self.line = (line > 0).then_some(line);
        self.column = (column > 0).then_some(column);
        self
    }

    pub fn line(mut self, line: u32) -> Self {
        self.line = (line > 0).then_some(line);
        self
    }

    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `error[prod]: compose/stack.yaml:12:5: services.web: message` and an
    /// indented `help:` line when there is a hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        f.write_str(level)?;
        if let Some(env) = &self.env {
            write!(f, "[{env}]")?;
        }
        f.write_str(": ")?;
        if let Some(file) = &self.file {
            f.write_str(file)?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(column) = self.column {
                    write!(f, ":{column}")?;
                }
            }
            f.write_str(": ")?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}

/// A list of diagnostics from one stage; an error-free list lets the pipeline go on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Self {
        Diagnostics(Vec::new())
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        self.0.extend(other);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// An error and each distinct message of its source chain on one line
/// (`a: b: c`): client libraries often keep the cause a user needs (ssh's
/// "Permission denied", a TLS alert, a refused connection) out of the
/// top-level message.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let message = e.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_env_file_line_column_object_and_hint() {
        let d = Diagnostic::error("`build` is not supported")
            .env("prod")
            .file("compose/stack.yaml.j2")
            .at(12, 5)
            .object("services.web")
            .hint("build and push the image first, then set `image:`");
        assert_eq!(
            d.to_string(),
            "error[prod]: compose/stack.yaml.j2:12:5: services.web: `build` is not supported\n  help: build and push the image first, then set `image:`"
        );
    }

    #[test]
    fn unknown_positions_are_left_out() {
        let d = Diagnostic::warning("no rules").file("rules/a.yml").at(0, 0);
        assert_eq!(d.to_string(), "warning: rules/a.yml: no rules");
    }

    #[test]
    fn error_chain_adds_each_new_cause_once() {
        let inner = std::io::Error::other("Permission denied (publickey)");
        let outer = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, inner);
        // io::Error's Display already shows its custom payload: not repeated.
        assert_eq!(error_chain(&outer), "Permission denied (publickey)");
        let wrapped = Wrapped(outer);
        assert_eq!(
            error_chain(&wrapped),
            "client error (Connect): Permission denied (publickey)"
        );
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
