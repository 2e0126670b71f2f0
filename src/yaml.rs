//! YAML for everything driftless reads, through serde-saphyr with the
//! settings chosen once here: strict booleans (`NO` stays a string), resource
//! budgets against alias bombs and deep nesting, and errors that carry a line
//! and column.

use serde::de::DeserializeOwned;

use crate::diag::Diagnostic;

/// A YAML error with its position (1-based; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub message: String,
    pub line: u32,
    pub column: u32,
}

impl YamlError {
    pub fn into_diagnostic(self, file: &str) -> Diagnostic {
        Diagnostic::error(self.message)
            .file(file)
            .at(self.line, self.column)
    }
}

/// The parser options every driftless YAML read uses.
pub fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options
}

fn convert(e: serde_saphyr::Error) -> YamlError {
    let (line, column) = e
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((0, 0));
    // serde-saphyr's Display repeats the position; keep the first line of text.
    let message = e.to_string();
    let message = message.lines().next().unwrap_or("invalid YAML").to_owned();
    YamlError {
        message,
        line,
        column,
    }
}

/// Deserializes one YAML document into `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options()).map_err(convert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct T {
        a: String,
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = from_str::<T>("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.line > 0, "{e:?}");
    }

    #[test]
    fn yaml11_booleans_stay_strings() {
        let v: std::collections::BTreeMap<String, serde_json::Value> =
            from_str("country: NO\n").unwrap();
        assert_eq!(v["country"], serde_json::json!("NO"));
    }
}
