//! A decrypted SOPS file written back in its own store, as `sops decrypt`
//! prints it: the document without its `sops` metadata, YAML as YAML (4
//! spaces of indentation, as sops' YAML store), JSON as JSON (tab-indented,
//! as sops' JSON store), dotenv as `KEY=value` lines (a newline in a value
//! written `\n`), INI as `[section]` blocks of `key = value`.
//!
//! Encrypted values keep the type sops stored with them (`type:int` is
//! written as a number). Comments are not carried over (they are not
//! read). A YAML string that a YAML reader could take for anything else
//! (a number, `true`, `null`, text with `: ` or `#`, several lines) is
//! written double-quoted with JSON escapes, which YAML reads the same; so
//! a secret's written form is its raw or its JSON-escaped text, both of
//! which the [`crate::secrets::Masker`] masks.

use std::fmt::Write as _;

use super::{Decrypted, Format, Kind, Leaf, Node, format_float};

/// One scalar as written.
enum Scalar {
    /// Text (quoted where the format needs it).
    Str(String),
    /// A literal written as it is (`42`, `true`, `3.5`).
    Literal(String),
    Null,
}

/// `decrypted` written in `format`. `replace` gives the text written for
/// an encrypted leaf instead of its plaintext (a placeholder), or `None`.
pub fn emit(
    decrypted: &Decrypted,
    format: Format,
    replace: &mut dyn FnMut(&Leaf) -> Option<String>,
) -> Vec<u8> {
    let mut leaves = decrypted.leaves.iter();
    let mut scalar = |node: &Node| -> Scalar {
        if matches!(node, Node::Null) {
            return Scalar::Null;
        }
        let Some(leaf) = leaves.next() else {
            return Scalar::Null;
        };
        if leaf.encrypted {
            if let Some(text) = replace(leaf) {
                return Scalar::Str(text);
            }
            return match leaf.kind {
                Kind::Str => Scalar::Str(leaf.text.clone()),
                Kind::Bool => Scalar::Literal(leaf.text.to_ascii_lowercase()),
                Kind::Int => Scalar::Literal(leaf.text.clone()),
                Kind::Float => Scalar::Literal(float_literal(leaf.text.clone())),
            };
        }
        match node {
            Node::Bool(b) => Scalar::Literal(b.to_string()),
            Node::Int(i) => Scalar::Literal(i.to_string()),
            Node::UInt(u) => Scalar::Literal(u.to_string()),
            Node::Float(f) => Scalar::Literal(float_literal(format_float(*f))),
            Node::Str(s) => Scalar::Str(s.clone()),
            Node::Null | Node::List(_) | Node::Map(_) => Scalar::Null,
        }
    };
    let mut out = String::new();
    match format {
        Format::Yaml => yaml(&decrypted.tree, 0, &mut scalar, &mut out),
        Format::Json => {
            json(&decrypted.tree, 0, &mut scalar, &mut out);
            out.push('\n');
        }
        Format::Dotenv => dotenv(&decrypted.tree, &mut scalar, &mut out),
        Format::Ini => ini(&decrypted.tree, &mut scalar, &mut out),
    }
    out.into_bytes()
}

/// A float as text that reads back as a float (`1234` is written `1234.0`).
fn float_literal(mut text: String) -> String {
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        text.push_str(".0");
    }
    text
}

type ScalarFn<'a> = dyn FnMut(&Node) -> Scalar + 'a;

/// Text of a scalar for the line formats (dotenv, INI): as it is.
fn line_text(s: Scalar) -> String {
    match s {
        Scalar::Str(t) | Scalar::Literal(t) => t,
        Scalar::Null => String::new(),
    }
}

fn yaml(node: &Node, indent: usize, scalar: &mut ScalarFn<'_>, out: &mut String) {
    let pad = " ".repeat(indent);
    match node {
        Node::Map(entries) if entries.is_empty() => out.push_str("{}\n"),
        Node::List(items) if items.is_empty() => out.push_str("[]\n"),
        Node::Map(entries) => {
            for (k, v) in entries {
                let _ = write!(out, "{pad}{}:", yaml_str(k));
                yaml_value(v, indent, scalar, out);
            }
        }
        Node::List(items) => yaml_list(items, indent, scalar, out),
        leaf => {
            let _ = writeln!(out, "{pad}{}", yaml_scalar(scalar(leaf)));
        }
    }
}

/// The value of a map entry at `indent`, after its `key:`.
fn yaml_value(v: &Node, indent: usize, scalar: &mut ScalarFn<'_>, out: &mut String) {
    match v {
        Node::Map(e) if !e.is_empty() => {
            out.push('\n');
            yaml(v, indent + 4, scalar, out);
        }
        Node::List(items) if !items.is_empty() => {
            out.push('\n');
            yaml_list(items, indent + 4, scalar, out);
        }
        Node::Map(_) => out.push_str(" {}\n"),
        Node::List(_) => out.push_str(" []\n"),
        leaf => {
            let _ = writeln!(out, " {}", yaml_scalar(scalar(leaf)));
        }
    }
}

/// The items of a list, their dashes at column `col`.
fn yaml_list(items: &[Node], col: usize, scalar: &mut ScalarFn<'_>, out: &mut String) {
    let dash = " ".repeat(col);
    for item in items {
        // A non-empty map or list two columns right of its dash, its first
        // line on the dash's line.
        let mut inner = String::new();
        match item {
            Node::Map(e) if !e.is_empty() => yaml(item, col + 2, scalar, &mut inner),
            Node::List(l) if !l.is_empty() => yaml_list(l, col + 2, scalar, &mut inner),
            Node::Map(_) => inner = format!("{dash}  {{}}\n"),
            Node::List(_) => inner = format!("{dash}  []\n"),
            leaf => inner = format!("{dash}  {}\n", yaml_scalar(scalar(leaf))),
        }
        let _ = write!(out, "{dash}- {}", &inner[col + 2..]);
    }
}

fn yaml_scalar(s: Scalar) -> String {
    match s {
        Scalar::Str(t) => yaml_str(&t),
        Scalar::Literal(t) => t,
        Scalar::Null => "null".to_owned(),
    }
}

/// `text` plain when a YAML reader takes it back as this string, else
/// double-quoted (JSON escapes are YAML escapes).
fn yaml_str(text: &str) -> String {
    const RESERVED: &[&str] = &[
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
    ];
    let plain = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '/' || c == '.')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./@+=~-".contains(c))
        && !RESERVED.contains(&text.to_ascii_lowercase().as_str())
        && text.parse::<f64>().is_err();
    if plain {
        text.to_owned()
    } else {
        serde_json::Value::String(text.to_owned()).to_string()
    }
}

fn json(node: &Node, indent: usize, scalar: &mut ScalarFn<'_>, out: &mut String) {
    let inner = "\t".repeat(indent + 1);
    match node {
        Node::Map(entries) if entries.is_empty() => out.push_str("{}"),
        Node::List(items) if items.is_empty() => out.push_str("[]"),
        Node::Map(entries) => {
            out.push_str("{\n");
            for (i, (k, v)) in entries.iter().enumerate() {
                let _ = write!(out, "{inner}{}: ", serde_json::Value::String(k.clone()));
                json(v, indent + 1, scalar, out);
                out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
            }
            let _ = write!(out, "{}}}", "\t".repeat(indent));
        }
        Node::List(items) => {
            out.push_str("[\n");
            for (i, v) in items.iter().enumerate() {
                out.push_str(&inner);
                json(v, indent + 1, scalar, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            let _ = write!(out, "{}]", "\t".repeat(indent));
        }
        leaf => out.push_str(&match scalar(leaf) {
            Scalar::Str(t) => serde_json::Value::String(t).to_string(),
            Scalar::Literal(t) => t,
            Scalar::Null => "null".to_owned(),
        }),
    }
}

/// sops' dotenv store: `KEY=value`, a newline in a value written `\n`.
fn dotenv(node: &Node, scalar: &mut ScalarFn<'_>, out: &mut String) {
    if let Node::Map(entries) = node {
        for (k, v) in entries {
            let _ = writeln!(out, "{k}={}", dotenv_form(&line_text(scalar(v))));
        }
    }
}

/// How the dotenv store writes `value`.
pub fn dotenv_form(value: &str) -> String {
    value.replace('\n', "\\n")
}

/// sops' INI store: keys of the `DEFAULT` section first, then each section.
fn ini(node: &Node, scalar: &mut ScalarFn<'_>, out: &mut String) {
    let Node::Map(sections) = node else {
        return;
    };
    let mut first = true;
    for (name, body) in sections {
        let Node::Map(entries) = body else {
            let _ = writeln!(out, "{name} = {}", line_text(scalar(body)));
            continue;
        };
        if name == "DEFAULT" && entries.is_empty() {
            continue;
        }
        if !first {
            out.push('\n');
        }
        first = false;
        if name != "DEFAULT" {
            let _ = writeln!(out, "[{name}]");
        }
        for (k, v) in entries {
            let _ = writeln!(out, "{k} = {}", line_text(scalar(v)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(path: &str, text: &str, encrypted: bool, kind: Kind) -> Leaf {
        Leaf {
            path: path.to_owned(),
            text: text.to_owned(),
            encrypted,
            kind,
        }
    }

    fn s(text: &str) -> Node {
        Node::Str(text.to_owned())
    }

    /// Strings a YAML reader would take for something else, nested lists
    /// and maps, empty collections and typed encrypted values all read
    /// back as the document they came from.
    #[test]
    fn yaml_and_json_read_back_as_the_document() {
        let tricky = [
            "true",
            "No",
            "null",
            "~",
            "0x1F",
            "1e3",
            "012",
            "2024-01-01",
            "a: b",
            "x #y",
            " lead",
            "",
            "two\nlines \"q\"",
            "-dash",
            "@at",
            "plain/path.v1",
        ];
        let mut entries: Vec<(String, Node)> = tricky
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("k{i}"), s(t)))
            .collect();
        let mut leaves: Vec<Leaf> = tricky
            .iter()
            .enumerate()
            .map(|(i, t)| leaf(&format!("k{i}"), t, false, Kind::Str))
            .collect();
        entries.push((
            "lists".to_owned(),
            Node::List(vec![
                Node::List(vec![s("a"), s("b")]),
                Node::Map(vec![("x".to_owned(), s("1")), ("y".to_owned(), Node::Null)]),
                Node::Map(vec![]),
                Node::List(vec![]),
            ]),
        ));
        leaves.push(leaf("lists[0][0]", "a", false, Kind::Str));
        leaves.push(leaf("lists[0][1]", "b", false, Kind::Str));
        leaves.push(leaf("lists[1].x", "1", false, Kind::Str));
        entries.push(("port: x".to_owned(), s("8080")));
        leaves.push(leaf("port: x", "8080", true, Kind::Int));
        entries.push(("on".to_owned(), s("True")));
        leaves.push(leaf("on", "True", true, Kind::Bool));
        entries.push(("ratio".to_owned(), s("2")));
        leaves.push(leaf("ratio", "2", true, Kind::Float));
        entries.push(("empty".to_owned(), Node::Map(vec![])));
        let d = Decrypted {
            tree: Node::Map(entries),
            leaves,
            mac: String::new(),
        };
        let mut want = serde_json::Map::new();
        for (i, t) in tricky.iter().enumerate() {
            want.insert(format!("k{i}"), serde_json::json!(t));
        }
        want.insert(
            "lists".to_owned(),
            serde_json::json!([["a", "b"], {"x": "1", "y": null}, {}, []]),
        );
        want.insert("port: x".to_owned(), serde_json::json!(8080));
        want.insert("on".to_owned(), serde_json::json!(true));
        want.insert("ratio".to_owned(), serde_json::json!(2.0));
        want.insert("empty".to_owned(), serde_json::json!({}));
        let want = serde_json::Value::Object(want);
        for format in [Format::Yaml, Format::Json] {
            let text = String::from_utf8(emit(&d, format, &mut |_| None)).unwrap();
            let got: serde_json::Value = match format {
                Format::Json => serde_json::from_str(&text).unwrap(),
                _ => crate::yaml::from_str(&text).unwrap(),
            };
            assert_eq!(got, want, "{format:?}:\n{text}");
        }
    }

    /// dotenv writes a newline as `\n` (as sops does); a placeholder
    /// replaces an encrypted value.
    #[test]
    fn dotenv_lines_and_placeholders() {
        let d = Decrypted {
            tree: Node::Map(vec![
                ("A".to_owned(), s("one\ntwo")),
                ("B".to_owned(), s("plain=x")),
            ]),
            leaves: vec![
                leaf("A", "one\ntwo", true, Kind::Str),
                leaf("B", "plain=x", false, Kind::Str),
            ],
            mac: String::new(),
        };
        let text = emit(&d, Format::Dotenv, &mut |_| None);
        assert_eq!(String::from_utf8(text).unwrap(), "A=one\\ntwo\nB=plain=x\n");
        let text = emit(&d, Format::Dotenv, &mut |l| {
            l.encrypted.then(|| format!("<{}>", l.path))
        });
        assert_eq!(String::from_utf8(text).unwrap(), "A=<A>\nB=plain=x\n");
    }
}
