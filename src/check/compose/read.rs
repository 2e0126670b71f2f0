//! Typed reads from the located tree: each returns `None` after reporting a
//! diagnostic at the node when the value has the wrong shape, so the caller
//! carries on and the whole file gets checked.
//!
//! Scalars are read the way compose-go casts them after interpolation: a
//! number where a string is expected is its text (`user: 1000`), and a
//! string where a number or boolean is expected is parsed
//! (`read_only: ${RO:-false}`).

use std::time::Duration;

use super::Ctx;
use crate::yaml::{Node, Value};

/// One `KEY=value` entry of a mapping-or-list key (`environment`, `labels`).
pub(crate) struct Entry {
    pub key: String,
    /// `None`: `KEY` alone in a list, or `KEY:` with no value in a mapping.
    pub value: Option<String>,
}

impl Ctx<'_> {
    /// A mapping key as a string; reports non-string keys.
    pub(crate) fn key<'n>(&mut self, key: &'n Node, parent: &str) -> Option<&'n str> {
        match key.as_str() {
            Some(s) => Some(s),
            None => {
                self.error(
                    key,
                    parent,
                    format!("keys here must be strings, not {}", key.kind()),
                );
                None
            }
        }
    }

    /// Object path of `key` under `parent`.
    pub(crate) fn child(parent: &str, key: &str) -> String {
        if parent.is_empty() {
            key.to_owned()
        } else {
            format!("{parent}.{key}")
        }
    }

    pub(crate) fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [(Node, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            Value::Null => Some(&[]),
            _ => {
                self.error(
                    node,
                    path,
                    format!("must be a mapping, not {}", node.kind()),
                );
                None
            }
        }
    }

    pub(crate) fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            _ => {
                self.error(node, path, format!("must be a list, not {}", node.kind()));
                None
            }
        }
    }

    /// A scalar as text (`8080` → `"8080"`).
    pub(crate) fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = node.scalar_text();
        if text.is_none() {
            self.error(node, path, format!("must be a string, not {}", node.kind()));
        }
        text
    }

    pub(crate) fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "on" => Some(true),
                "false" | "no" | "n" | "off" => Some(false),
                _ => {
                    self.error(node, path, format!("must be true or false, not `{s}`"));
                    None
                }
            },
            _ => {
                self.error(
                    node,
                    path,
                    format!("must be true or false, not {}", node.kind()),
                );
                None
            }
        }
    }

    pub(crate) fn int(&mut self, node: &Node, path: &str) -> Option<i64> {
        match &node.value {
            Value::Int(i) => Some(*i),
            Value::String(s) if s.trim().parse::<i64>().is_ok() => s.trim().parse().ok(),
            _ => {
                self.error(
                    node,
                    path,
                    format!("must be an integer, not {}", describe(node)),
                );
                None
            }
        }
    }

    /// An integer in `range` (inclusive).
    pub(crate) fn int_in(
        &mut self,
        node: &Node,
        path: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        let i = self.int(node, path)?;
        if range.contains(&i) {
            Some(i)
        } else {
            self.error(
                node,
                path,
                format!("{i} is out of range ({}..={})", range.start(), range.end()),
            );
            None
        }
    }

    pub(crate) fn float(&mut self, node: &Node, path: &str) -> Option<f64> {
        let value = match &node.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match value {
            Some(v) if v.is_finite() => Some(v),
            _ => {
                self.error(
                    node,
                    path,
                    format!("must be a number, not {}", describe(node)),
                );
                None
            }
        }
    }

    /// A byte size: a number of bytes or a size such as `512m`.
    pub(crate) fn bytes(&mut self, node: &Node, path: &str) -> Option<u64> {
        match &node.value {
            Value::Int(n) if *n >= 0 => Some(*n as u64),
            Value::Int(n) => {
                self.error(node, path, format!("a size cannot be negative ({n})"));
                None
            }
            _ => {
                let text = self.text(node, path)?;
                match super::syntax::parse_bytes(&text) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        self.error(node, path, e);
                        None
                    }
                }
            }
        }
    }

    /// A Go duration (`1m30s`, `500ms`).
    pub(crate) fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.text(node, path)?;
        match crate::duration::parse(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(node, path, e);
                None
            }
        }
    }

    /// A list of scalars as text, each with its node.
    pub(crate) fn texts<'n>(&mut self, node: &'n Node, path: &str) -> Vec<(String, &'n Node)> {
        let Some(items) = self.seq(node, path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let text = self.text(item, &format!("{path}[{i}]"))?;
                Some((text, item))
            })
            .collect()
    }

    /// A string or a list of strings.
    pub(crate) fn text_or_texts<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
    ) -> Vec<(String, &'n Node)> {
        match &node.value {
            Value::Seq(_) => self.texts(node, path),
            _ => self
                .text(node, path)
                .map(|t| vec![(t, node)])
                .unwrap_or_default(),
        }
    }

    /// A mapping (`KEY: value`) or a list (`KEY=value`, `KEY`), in order.
    /// `sep` is the separator of the list form.
    pub(crate) fn entries(&mut self, node: &Node, path: &str, sep: char) -> Vec<Entry> {
        match &node.value {
            Value::Map(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| {
                    let key = self.key(k, path)?.to_owned();
                    let value = match &v.value {
                        Value::Null => None,
                        Value::Seq(_) | Value::Map(_) => {
                            self.error(
                                v,
                                &Self::child(path, &key),
                                format!("must be a string, not {}", v.kind()),
                            );
                            return None;
                        }
                        _ => v.scalar_text(),
                    };
                    Some(Entry { key, value })
                })
                .collect(),
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let text = self.text(item, &format!("{path}[{i}]"))?;
                    let (key, value) = match text.split_once(sep) {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                        None => (text, None),
                    };
                    if key.is_empty() {
                        self.error(item, &format!("{path}[{i}]"), "empty name");
                        return None;
                    }
                    Some(Entry { key, value })
                })
                .collect(),
            Value::Null => Vec::new(),
            _ => {
                self.error(
                    node,
                    path,
                    format!(
                        "must be a mapping or a list of `KEY{sep}value`, not {}",
                        node.kind()
                    ),
                );
                Vec::new()
            }
        }
    }

    /// A mapping of string values only (`driver_opts`, `logging.options`).
    pub(crate) fn string_map(
        &mut self,
        node: &Node,
        path: &str,
    ) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        let Some(pairs) = self.map(node, path) else {
            return out;
        };
        for (k, v) in pairs {
            let Some(key) = self.key(k, path) else {
                continue;
            };
            if let Some(value) = self.text(v, &Self::child(path, key)) {
                out.insert(key.to_owned(), value);
            }
        }
        out
    }

    /// Labels: a mapping or a list of `key=value` (a bare key is empty).
    pub(crate) fn labels(
        &mut self,
        node: &Node,
        path: &str,
    ) -> std::collections::BTreeMap<String, String> {
        self.entries(node, path, '=')
            .into_iter()
            .map(|e| (e.key, e.value.unwrap_or_default()))
            .collect()
    }
}

/// A value for "must be X, not Y" messages: scalars show themselves.
fn describe(node: &Node) -> String {
    match node.scalar_text() {
        Some(text) => format!("`{text}`"),
        None => node.kind().to_owned(),
    }
}
