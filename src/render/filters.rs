//! Filters that Jinja2 and Ansible users expect and minijinja lacks.
//!
//! Kept to a few that configuration files need: base64 for Kubernetes
//! `Secret.data`, a SHA-256 digest for config-change annotations, and
//! `to_yaml` for dropping a values subtree into a YAML file. minijinja's
//! built-ins (`default`, `tojson`, `indent`, `replace`, `urlencode`, ...)
//! cover the rest.

use base64::Engine as _;
use minijinja::{Environment, Error, ErrorKind, Value};
use sha2::Digest as _;

/// The names registered here, for the "unknown filter" hint.
pub(super) const NAMES: &[&str] = &["b64encode", "b64decode", "sha256", "to_yaml"];

pub(super) fn register(env: &mut Environment<'static>) {
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env.add_filter("sha256", sha256);
    env.add_filter("to_yaml", to_yaml);
}

/// The text a string filter works on: strings as they are, other defined
/// values as Jinja2's `str()` would print them. Strict undefined means an
/// undefined input is an error, not an empty string.
fn text(value: &Value) -> Result<String, Error> {
    if value.is_undefined() {
        return Err(Error::from(ErrorKind::UndefinedError));
    }
    Ok(match value.as_str() {
        Some(s) => s.to_owned(),
        None => value.to_string(),
    })
}

/// `{{ "user:pw" | b64encode }}` → `dXNlcjpwdw==` (standard alphabet, padded).
fn b64encode(value: &Value) -> Result<String, Error> {
    Ok(base64::engine::general_purpose::STANDARD.encode(text(value)?))
}

/// The inverse of `b64encode`; the decoded bytes must be UTF-8 text.
fn b64decode(value: &Value) -> Result<String, Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text(value)?.trim())
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("b64decode: input is not valid base64 ({e})"),
            )
        })?;
    String::from_utf8(bytes).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "b64decode: decoded bytes are not UTF-8 text",
        )
    })
}

/// Lowercase hex SHA-256 of the value's text (Ansible's `hash('sha256')`).
fn sha256(value: &Value) -> Result<String, Error> {
    let digest = sha2::Sha256::digest(text(value)?.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    Ok(hex)
}

/// The value as block-style YAML, without the final newline (so that
/// `{{ x | to_yaml | indent(2) }}` leaves no blank line). Map keys keep
/// the context's order (the order of its `serde_json` maps), so the same
/// values always give the same text.
fn to_yaml(value: &Value) -> Result<String, Error> {
    if value.is_undefined() {
        return Err(Error::from(ErrorKind::UndefinedError));
    }
    let mut yaml = serde_saphyr::to_string(value).map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("to_yaml: value cannot be written as YAML ({e})"),
        )
    })?;
    if yaml.ends_with('\n') {
        yaml.pop();
    }
    Ok(yaml)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, ctx: serde_json::Value) -> Result<String, Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        register(&mut env);
        env.render_str(source, Value::from(minijinja::value::Serde(&ctx)))
    }

    #[test]
    fn base64_round_trips() {
        let out = render(
            "{{ 'user:pw' | b64encode }} {{ 'dXNlcjpwdw==' | b64decode }} {{ 42 | b64encode }}",
            serde_json::json!({}),
        )
        .unwrap();
        assert_eq!(out, "dXNlcjpwdw== user:pw NDI=");
        let err = render("{{ '%%%' | b64decode }}", serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("not valid base64"), "{err}");
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        let out = render("{{ 'abc' | sha256 }}", serde_json::json!({})).unwrap();
        assert_eq!(
            out,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn undefined_input_is_an_error_not_an_empty_string() {
        for filter in NAMES {
            let err = render(
                &format!("{{{{ missing | {filter} }}}}"),
                serde_json::json!({}),
            )
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UndefinedError, "{filter}: {err}");
        }
    }

    #[test]
    fn to_yaml_round_trips_through_the_yaml_reader() {
        let value = serde_json::json!({
            "b": ["NO", "yes", "1", "", "a: b", "null", "~", "#x", "multi\nline"],
            "a": {"n": 1, "f": 1.5, "t": true, "z": null},
        });
        let out = render("{{ v | to_yaml }}", serde_json::json!({ "v": value })).unwrap();
        assert!(!out.ends_with('\n'), "{out}");
        let back: serde_json::Value = crate::yaml::from_str(&out).unwrap();
        assert_eq!(back, value, "{out}");
    }
}
