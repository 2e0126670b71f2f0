//! YAML for everything driftless reads, through serde-saphyr with the
//! settings chosen once here: strict booleans (`NO` stays a string), resource
//! budgets against alias bombs and deep nesting, duplicate mapping keys
//! rejected, and errors that carry a line and column.
//!
//! Two ways in: [`from_str`] deserialises straight into a typed value (the
//! manifest, rule files), and [`parse_document`] / [`parse_documents`] build
//! a located [`Node`] tree for loaders that must point at the exact line of
//! any value (Compose files, Kubernetes manifests).
//!
//! # Budgets
//!
//! The limits are sized from the largest inputs driftless is meant to read: a
//! source file is at most 5 MiB ([`crate::source::Limits`]); the largest real
//! manifest in the test corpus (a Prometheus CRD, 810 KB) has about 60,000
//! nodes and nests 27 levels deep.
//!
//! | limit | value | accepts | rejects |
//! | --- | --- | --- | --- |
//! | nesting depth | [`MAX_DEPTH`] = 128 | any real manifest (27 deep) | 10,000-deep `[[[...` |
//! | documents per stream | 10,000 | a 2,000-document bundle | separator storms |
//! | nodes | 1,000,000 | a 100,000-item list; every 5 MiB file of real data | |
//! | parser events | 2,000,000 | the same | |
//! | scalar text | 32 MiB | | |
//! | aliases | 10,000 | `<<: *defaults` in every service | |
//! | alias expansion | [`Limits::alias_expansion`] = 200,000 nodes added by aliases, 16 levels of alias-in-alias | ten times the largest corpus file (16,164 nodes) copied by aliases | billion laughs |
//!
//! The alias budget is on work, not on a ratio: what counts is how many nodes
//! the aliases add once expanded. A normal file (57 services, 150 aliases of
//! a few defaults anchors) adds a few thousand. Before the real parse,
//! [`check_alias_expansion`] walks the parser's events once and adds up each
//! anchor's expanded size without expanding anything, so a billion-laughs
//! file is refused in microseconds, naming the anchor that crossed the limit
//! and its line. The limit can be raised per repo (`limits.yaml_alias_expansion`
//! in `driftless.yaml`) for the Compose files and Kubernetes manifests it
//! renders; the node and event budgets grow with it.
//!
//! A tree built from these limits is at most a few hundred MB for a hostile
//! 5 MiB file, and no deeper than [`MAX_DEPTH`] (checked while building, alias
//! expansions included), so every recursive walk over a [`Node`] is bounded.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;

use crate::diag::Diagnostic;

/// Deepest nesting of sequences and mappings accepted, alias expansions
/// included. Real manifests stay under 30.
pub const MAX_DEPTH: usize = 128;
/// Most documents in one YAML stream.
pub const MAX_DOCUMENTS: usize = 10_000;
/// Most nodes (scalars, sequences, mappings) in one stream.
pub const MAX_NODES: usize = 1_000_000;
/// Most parser events in one stream.
pub const MAX_EVENTS: usize = 2_000_000;
/// Most scalar text in one stream, in bytes.
pub const MAX_SCALAR_BYTES: usize = 32 * 1024 * 1024;
/// Most alias (`*name`) uses in one stream.
pub const MAX_ALIASES: usize = 10_000;
/// Default of [`Limits::alias_expansion`]: about twelve times the largest
/// file of the shared corpus (a Prometheus CRD of 16,164 nodes) copied by
/// aliases.
pub const DEFAULT_ALIAS_EXPANSION: usize = 200_000;
/// Highest [`Limits::alias_expansion`] a repo may set: a tree of this many
/// nodes is about a gigabyte.
pub const MAX_ALIAS_EXPANSION: usize = 10_000_000;
/// Where a repo raises [`Limits::alias_expansion`], for hints.
pub const ALIAS_EXPANSION_KEY: &str = "limits.yaml_alias_expansion";

/// The YAML limits a repo may change (`limits:` in `driftless.yaml`); the
/// others are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Most nodes (scalars, sequences, mappings) aliases may add to one
    /// stream once expanded: an alias of an anchored mapping of 30 nodes
    /// adds 30.
    pub alias_expansion: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            alias_expansion: DEFAULT_ALIAS_EXPANSION,
        }
    }
}

/// A YAML error with its position (1-based; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    /// One line, without the position.
    pub message: String,
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
    /// What to do about it, when there is something specific.
    pub hint: Option<String>,
}

impl YamlError {
    /// The error as a diagnostic of `file`.
    pub fn into_diagnostic(self, file: &str) -> Diagnostic {
        let d = Diagnostic::error(self.message)
            .file(file)
            .at(self.line, self.column);
        match self.hint {
            Some(hint) => d.hint(hint),
            None => d,
        }
    }
}

/// The parser options every driftless YAML read uses.
pub fn options() -> serde_saphyr::Options {
    options_with(&Limits::default())
}

/// [`options`] with `limits`. serde-saphyr counts replayed alias events
/// against its node and event budgets, so those grow with the alias budget;
/// its own replay limit stays as a backstop behind
/// [`check_alias_expansion`] (a collection is two events, so twice the
/// nodes).
fn options_with(limits: &Limits) -> serde_saphyr::Options {
    let expansion = limits.alias_expansion;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_nodes = MAX_NODES.saturating_add(expansion);
    budget.max_events = MAX_EVENTS.saturating_add(expansion.saturating_mul(2));
    budget.max_total_scalar_bytes = MAX_SCALAR_BYTES;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ALIASES;
    // The ratio of aliases to anchors says nothing about the work they
    // cause (`<<: *defaults` in 57 services is 57 uses of one anchor); the
    // expansion budget measures that work instead.
    budget.enforce_alias_anchor_ratio = false;

    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.budget = Some(budget);
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::Error;
    options.merge_keys = serde_saphyr::options::MergeKeyPolicy::Merge;
    options.alias_limits.max_total_replayed_events = expansion.saturating_mul(2);
    options.alias_limits.max_replay_stack_depth = 16;
    // Messages are ours: one line, position in the fields.
    options.with_snippet = false;
    options
}

/// Converts a serde-saphyr error of `text`, never pointing past its end (an
/// error found at the end of the stream is reported on the last line).
fn convert(e: serde_saphyr::Error, text: &str, limits: &Limits) -> YamlError {
    let (line, column) = e
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((0, 0));
    let last = last_line(text);
    let (line, column) = if line > last {
        (last, 0)
    } else {
        (line, column)
    };
    let hint = matches!(
        e.without_snippet(),
        serde_saphyr::Error::AliasReplayLimitExceeded { .. }
    )
    .then(|| raise_hint(limits));
    YamlError {
        message: message_of(&e, limits),
        line,
        column,
        hint,
    }
}

/// The 1-based number of the last line of `text` that has content.
fn last_line(text: &str) -> u32 {
    let lines = text.trim_end_matches(['\n', '\r']).lines().count().max(1);
    u32::try_from(lines).unwrap_or(u32::MAX)
}

fn raise_hint(limits: &Limits) -> String {
    format!(
        "if the file is meant to be this large, raise `{ALIAS_EXPANSION_KEY}` in driftless.yaml (now {}, at most {MAX_ALIAS_EXPANSION})",
        limits.alias_expansion
    )
}

/// The message of a serde-saphyr error without its position (which goes in
/// the [`YamlError`] fields), naming the limit when a budget was hit.
fn message_of(e: &serde_saphyr::Error, limits: &Limits) -> String {
    use serde_saphyr::{Error, MessageFormatter as _};
    match e {
        Error::AliasError { error, .. } | Error::WithSnippet { error, .. } => {
            message_of(error, limits)
        }
        Error::Budget { breach, .. } => budget_message(breach, limits),
        Error::AliasReplayLimitExceeded { .. } => format!(
            "YAML limit hit: aliases expand to more than {} nodes (an alias bomb?)",
            limits.alias_expansion
        ),
        Error::AliasExpansionLimitExceeded { .. } => {
            "YAML limit hit: one anchor is expanded too many times (an alias bomb?)".to_owned()
        }
        Error::AliasReplayStackDepthExceeded { max_depth, .. } => {
            format!("YAML limit hit: aliases nest more than {max_depth} levels deep")
        }
        Error::UnknownAnchor { .. } => {
            "alias `*name` refers to an anchor `&name` that is not defined before it".to_owned()
        }
        Error::DuplicateMappingKey { key: Some(key), .. } => {
            format!("duplicate key `{key}`: keys of a YAML mapping must be unique")
        }
        Error::DuplicateMappingKey { key: None, .. } => {
            "duplicate key: keys of a YAML mapping must be unique".to_owned()
        }
        other => {
            let message = serde_saphyr::UserMessageFormatter.format_message(other);
            message.lines().next().unwrap_or("invalid YAML").to_owned()
        }
    }
}

/// Names the limit that was hit, with its value.
fn budget_message(breach: &BudgetBreach, limits: &Limits) -> String {
    let what = match breach {
        BudgetBreach::Depth { .. } => {
            format!("nesting deeper than {MAX_DEPTH} levels")
        }
        BudgetBreach::Documents { .. } => format!("more than {MAX_DOCUMENTS} documents"),
        BudgetBreach::Nodes { .. } => format!(
            "more than {} nodes, aliases expanded",
            MAX_NODES.saturating_add(limits.alias_expansion)
        ),
        BudgetBreach::Events { .. } => format!(
            "more than {} parser events, aliases expanded",
            MAX_EVENTS.saturating_add(limits.alias_expansion.saturating_mul(2))
        ),
        BudgetBreach::ScalarBytes { .. } => {
            format!("more than {MAX_SCALAR_BYTES} bytes of scalar text, aliases expanded")
        }
        BudgetBreach::Aliases { .. } => format!("more than {MAX_ALIASES} aliases"),
        BudgetBreach::Anchors { .. } => format!("more than {MAX_ALIASES} anchors"),
        other => format!("{other:?}"),
    };
    format!("YAML limit hit: {what}")
}

/// Refuses `text` when its aliases would add more than
/// `limits.alias_expansion` nodes, naming the anchor whose alias crossed the
/// limit and where it is defined.
///
/// One pass over the parser's events with nothing expanded: each anchor's
/// size is its own nodes plus the sizes of the aliases inside it, so the
/// cost is linear in the text however much it would expand. An alias of an
/// anchor still open (a recursive reference) counts one node, as the parser
/// replays it. A text the parser rejects passes: the real parse reports it.
pub fn check_alias_expansion(text: &str, limits: &Limits) -> Result<(), YamlError> {
    use serde_saphyr::granit_parser::{Event, Parser};

    if !may_define_anchor(text) {
        return Ok(());
    }
    let mut options = serde_saphyr::granit_parser::Options::default();
    options.emit_anchor_events = true;
    options.block_nesting_limit = options.block_nesting_limit.max(MAX_DEPTH + 1);

    struct Anchor<'t> {
        name: Cow<'t, str>,
        line: usize,
        column: usize,
        /// Nodes, once the anchored node is complete.
        size: Option<u64>,
    }
    let limit = limits.alias_expansion as u64;
    let mut anchors: HashMap<usize, Anchor> = HashMap::new();
    // Open collections: (anchor id or 0, nodes so far).
    let mut open: Vec<(usize, u64)> = Vec::new();
    let mut added: u64 = 0;
    let count = |open: &mut Vec<(usize, u64)>, n: u64| {
        if let Some((_, size)) = open.last_mut() {
            *size = size.saturating_add(n);
        }
    };
    for item in Parser::new_from_str_with_options(text, options) {
        let Ok((event, span)) = item else {
            return Ok(());
        };
        match event {
            Event::Scalar(_, _, anchor, _) => {
                count(&mut open, 1);
                if let Some(a) = anchors.get_mut(&anchor) {
                    a.size = Some(1);
                }
            }
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                open.push((anchor, 1));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, size)) = open.pop() {
                    count(&mut open, size);
                    if let Some(a) = anchors.get_mut(&anchor) {
                        a.size = Some(size);
                    }
                }
            }
            Event::Anchor(id, name) => {
                anchors.insert(
                    id,
                    Anchor {
                        name,
                        line: span.start.line(),
                        column: span.start.col() + 1,
                        size: None,
                    },
                );
            }
            Event::Alias(id) => {
                let anchor = anchors.get(&id);
                let size = anchor.and_then(|a| a.size).unwrap_or(1);
                count(&mut open, size);
                added = added.saturating_add(size);
                if added > limit {
                    let (name, line, column) =
                        anchor.map_or(("?", 0, 0), |a| (a.name.as_ref(), a.line, a.column));
                    return Err(YamlError {
                        message: format!(
                            "YAML limit hit: aliases expand to more than {limit} nodes; anchor `&{name}` ({size} nodes) is repeated by `*{name}` at line {} (an alias bomb?)",
                            span.start.line()
                        ),
                        line: u32::try_from(line).unwrap_or(0),
                        column: u32::try_from(column).unwrap_or(0),
                        hint: Some(raise_hint(limits)),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `text` may hold an anchor (`&name` at the start of a node): an
/// `&` at the start or after whitespace or a flow indicator. False
/// positives only cost a pass over the events; there are no false negatives.
fn may_define_anchor(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'&'
            && (i == 0
                || matches!(
                    bytes[i - 1],
                    b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b','
                ))
    })
}

/// The options for [`Node`] trees: those of [`options`], plus integers with a
/// leading zero read as octal (`0440` = 288). The files read as trees are
/// Compose files and Kubernetes manifests, whose reference readers (Go's
/// yaml.v3 and yaml.v2) do exactly that; a file mode written `0644` must mean
/// what it means to `docker compose` and `kubectl`.
pub fn node_options() -> serde_saphyr::Options {
    node_options_with(&Limits::default())
}

fn node_options_with(limits: &Limits) -> serde_saphyr::Options {
    let mut options = options_with(limits);
    options.legacy_octal_numbers = true;
    options
}

/// Deserializes one YAML document into `T`, on the parser thread (see
/// [`parse_documents`]) so an untyped field nested to the budget's depth
/// cannot overflow the caller's stack.
pub fn from_str<T: DeserializeOwned + Send>(text: &str) -> Result<T, YamlError> {
    let limits = Limits::default();
    on_parser_stack(|| {
        check_alias_expansion(text, &limits)?;
        serde_saphyr::from_str_with_options(text, options_with(&limits))
            .map_err(|e| convert(e, text, &limits))
    })
}

/// A YAML value with the 1-based line and column where it starts.
///
/// Mappings keep their order and their key nodes (so an error about a key can
/// point at it). Merge keys (`<<`) are already expanded and aliases already
/// replaced by the anchored value; `tag` is an explicit tag as written
/// (`!reset`), resolved standard tags (`!!str`) are absorbed into the value.
///
/// Invariant: a tree is never deeper than [`MAX_DEPTH`], so recursive walks
/// over it cannot exhaust the stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: u32,
    pub column: u32,
    /// An application tag such as `!reset` or `!override`, when present.
    pub tag: Option<String>,
    /// The file this node was read from, set by loaders that combine trees
    /// of several files (Compose `extends`); `None`: the file being loaded.
    pub file: Option<Arc<str>>,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys are unique.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A node without a position (for values built by code).
    pub fn new(value: Value) -> Node {
        Node {
            value,
            line: 0,
            column: 0,
            tag: None,
            file: None,
        }
    }

    /// A node at the position (and file) of `self` holding `value`.
    pub fn with_value(&self, value: Value) -> Node {
        Node {
            value,
            line: self.line,
            column: self.column,
            tag: None,
            file: self.file.clone(),
        }
    }

    /// Marks this node and every node under it as read from `file`.
    pub fn set_file(&mut self, file: &Arc<str>) {
        self.file = Some(file.clone());
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.set_file(file)),
            Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                k.set_file(file);
                v.set_file(file);
            }),
            _ => {}
        }
    }

    /// The string, when this is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The entries, when this is a mapping.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The items, when this is a sequence.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value under string key `key`, when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A scalar as text, the way Compose turns YAML scalars into strings
    /// (`8080` → `"8080"`, `true` → `"true"`); `None` for null and collections.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(format_float(*f)),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// What kind of value this is, for error messages (`a string`, `a mapping`).
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::String(_) => "a string",
            Value::Seq(_) => "a sequence",
            Value::Map(_) => "a mapping",
        }
    }

    /// The value as JSON. Non-string keys become their text (`1: a` →
    /// `{"1": "a"}`), as Kubernetes' YAML-to-JSON does; non-finite floats
    /// become null.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.scalar_text().unwrap_or_else(|| "null".into()),
                            v.to_json(),
                        )
                    })
                    .collect(),
            ),
        }
    }
}

/// Formats a float the way Go's `%v` does for common values (`0.5`, `1`, `1e+21`).
fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if f == f.trunc() && f.abs() < 1e21 {
        format!("{}", f as i128)
    } else {
        format!("{f}")
    }
}

/// Parses a single-document YAML text into a located tree. An empty or
/// comment-only text is [`Value::Null`]; more than one document is an error.
pub fn parse_document(text: &str) -> Result<Node, YamlError> {
    parse_document_with(text, &Limits::default())
}

/// [`parse_document`] with a repo's [`Limits`].
pub fn parse_document_with(text: &str, limits: &Limits) -> Result<Node, YamlError> {
    let mut docs = parse_documents_with(text, limits)?;
    match docs.len() {
        0 => Ok(Node {
            line: 1,
            column: 1,
            ..Node::new(Value::Null)
        }),
        1 => Ok(docs.remove(0)),
        _ => Err(YamlError {
            message: format!(
                "expected one YAML document, found {} (separated by `---`)",
                docs.len()
            ),
            line: docs[1].line,
            column: 0,
            hint: None,
        }),
    }
}

/// Parses a YAML stream into one located tree per document. Empty,
/// comment-only and plain-null documents yield nothing.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, YamlError> {
    parse_documents_with(text, &Limits::default())
}

/// [`parse_documents`] with a repo's [`Limits`].
pub fn parse_documents_with(text: &str, limits: &Limits) -> Result<Vec<Node>, YamlError> {
    on_parser_stack(|| {
        check_alias_expansion(text, limits)?;
        DEPTH.with(|d| d.set(0));
        serde_saphyr::from_multiple_with_options::<Node>(text, node_options_with(limits))
            .map_err(|e| convert(e, text, limits))
    })
}

/// Stack for the parser thread. serde recursion costs about 60 KB of stack per
/// nesting level in a debug build (8 KB optimised), so [`MAX_DEPTH`] levels
/// need more than the 2 MiB a Tokio worker or test thread has. The memory is
/// reserved, not committed: only the pages a parse touches are used.
const PARSER_STACK: usize = 32 * 1024 * 1024;

/// Runs `f` on a scoped thread with [`PARSER_STACK`] bytes of stack, so
/// hostile nesting up to the budget cannot overflow the caller's stack.
fn on_parser_stack<R: Send>(
    f: impl FnOnce() -> Result<R, YamlError> + Send,
) -> Result<R, YamlError> {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("driftless-yaml".to_owned())
            .stack_size(PARSER_STACK)
            .spawn_scoped(scope, f);
        match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => Err(YamlError {
                message: format!("cannot start the YAML parser thread: {e}"),
                line: 0,
                column: 0,
                hint: None,
            }),
        }
    })
}

thread_local! {
    /// Nesting depth of the tree being built on this thread. serde-saphyr
    /// bounds the depth of the text; this also bounds alias expansions, which
    /// can nest a deep anchor inside another deep anchor.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Counts one level of nesting for as long as it lives.
struct DepthGuard;

impl DepthGuard {
    fn enter<E: de::Error>() -> Result<DepthGuard, E> {
        let depth = DEPTH.with(|d| {
            let depth = d.get() + 1;
            d.set(depth);
            depth
        });
        let guard = DepthGuard;
        if depth > MAX_DEPTH {
            return Err(E::custom(format!(
                "YAML limit hit: nesting deeper than {MAX_DEPTH} levels (aliases included)"
            )));
        }
        Ok(guard)
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        let spanned =
            serde_saphyr::Spanned::<serde_saphyr::Tagged<Bare>>::deserialize(deserializer)?;
        let serde_saphyr::Tagged(Bare(value), tag) = spanned.value;
        Ok(Node {
            value,
            line: spanned.referenced.line() as u32,
            column: spanned.referenced.column() as u32,
            // Standard tags (`!!str`, `!!int`) already shaped the value.
            tag: tag.filter(|t| !t.starts_with("tag:yaml.org,2002:")),
            file: None,
        })
    }
}

/// A value without its position (the part inside `Spanned`).
struct Bare(Value);

impl<'de> Deserialize<'de> for Bare {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bare, D::Error> {
        deserializer.deserialize_any(BareVisitor).map(Bare)
    }
}

struct BareVisitor;

impl<'de> Visitor<'de> for BareVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        // `!!binary`: keep the bytes as text when they are text.
        Ok(Value::String(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(BareVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let _depth = DepthGuard::enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let _depth = DepthGuard::enter()?;
        let mut entries: Vec<(Node, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
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

    #[test]
    fn nodes_carry_positions() {
        let n = parse_document("a: 1\nb:\n  - x\n  - y: true\n").unwrap();
        let b = n.get("b").unwrap();
        assert_eq!((b.line, b.column), (3, 3), "{b:?}");
        let items = b.as_seq().unwrap();
        assert_eq!(items[1].line, 4);
        let (k, v) = &items[1].as_map().unwrap()[0];
        assert_eq!((k.line, k.column), (4, 5));
        assert_eq!(v.value, Value::Bool(true));
        assert_eq!(
            n.to_json(),
            serde_json::json!({"a": 1, "b": ["x", {"y": true}]})
        );
    }

    #[test]
    fn typed_reads_of_deep_untyped_values_do_not_overflow() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Loose {
            any: serde_json::Value,
        }
        let deep = format!(
            "any: {}{}\n",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        from_str::<Loose>(&deep).unwrap();
        let deeper = format!("any: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            from_str::<Loose>(&deeper)
                .unwrap_err()
                .message
                .contains("limit")
        );
    }

    #[test]
    fn tags_are_kept_and_standard_tags_absorbed() {
        let n = parse_document("a: !reset null\nb: !override [1]\nc: !!str 5\n").unwrap();
        assert_eq!(n.get("a").unwrap().tag.as_deref(), Some("!reset"));
        assert_eq!(n.get("b").unwrap().tag.as_deref(), Some("!override"));
        let c = n.get("c").unwrap();
        assert_eq!((c.tag.as_deref(), c.as_str()), (None, Some("5")));
    }

    #[test]
    fn duplicate_keys_are_an_error_with_the_line() {
        let e = parse_document("services:\n  web: {image: a}\n  web: {image: b}\n").unwrap_err();
        assert_eq!(e.line, 3, "{e:?}");
        assert!(e.message.contains("duplicate key `web`"), "{e:?}");
    }

    #[test]
    fn merge_keys_are_expanded_explicit_keys_win() {
        let n = parse_document("x: &x {p: 1, q: 2}\ny:\n  <<: *x\n  q: 3\n").unwrap();
        let y = n.get("y").unwrap();
        assert_eq!(y.to_json(), serde_json::json!({"p": 1, "q": 3}));
        assert!(y.get("<<").is_none());
    }

    #[test]
    fn multi_document_streams_skip_empty_documents() {
        let docs =
            parse_documents("# only a comment\n---\na: 1\n---\n---\n# c\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 3);
        assert_eq!(docs[1].line, 8);
        assert!(parse_document("# nothing\n").unwrap().is_null());
        assert!(parse_document("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn leading_zero_integers_are_octal_as_in_go_yaml() {
        let n = parse_document("mode: 0440\nplain: 440\nnine: 09\n").unwrap();
        assert_eq!(n.get("mode").unwrap().value, Value::Int(0o440));
        assert_eq!(n.get("plain").unwrap().value, Value::Int(440));
        assert_eq!(n.get("nine").unwrap().scalar_text().as_deref(), Some("9"));
    }

    const BILLION_LAUGHS: &str = include_str!("../tests/fixtures/compose/billion-laughs.yaml");
    const ANCHORS_57: &str = include_str!("../tests/fixtures/compose/anchors-57-services.yaml");

    #[test]
    fn billion_laughs_is_refused_naming_the_anchor_and_its_line() {
        let e = parse_document(BILLION_LAUGHS).unwrap_err();
        assert!(e.message.starts_with("YAML limit hit"), "{e:?}");
        // a4 (66,430 nodes) is the first anchor whose copies cross 200,000.
        assert!(
            e.message.contains("anchor `&a4` (66430 nodes)")
                && e.message.contains("`*a4` at line 9"),
            "{e:?}"
        );
        assert_eq!((e.line, e.column), (8, 7), "the line of `&a4`: {e:?}");
        let hint = e.hint.as_deref().unwrap_or_default();
        assert!(hint.contains(ALIAS_EXPANSION_KEY), "{e:?}");
        // Typed reads are guarded the same way.
        let typed = from_str::<serde_json::Value>(BILLION_LAUGHS).unwrap_err();
        assert_eq!(typed.line, 8, "{typed:?}");
    }

    #[test]
    fn many_merge_aliases_of_a_few_anchors_load() {
        // 150 aliases of 10 anchors: more than 10 per anchor, a few thousand
        // nodes expanded.
        let n = parse_document(ANCHORS_57).unwrap();
        let services = n.get("services").and_then(Node::as_map).unwrap();
        assert_eq!(services.len(), 57);
        let gateway = n.get("services").and_then(|s| s.get("gateway")).unwrap();
        assert_eq!(
            gateway.get("init").map(|v| &v.value),
            Some(&Value::Bool(true))
        );
        assert!(gateway.get("<<").is_none());
    }

    #[test]
    fn the_alias_budget_counts_expanded_nodes_and_can_be_raised() {
        // An anchored list of 1,000 scalars (1,001 nodes) used 250 times adds
        // 250,250 nodes: over the default, under a raised limit.
        let mut text = format!("a: &big [{}]\nb:\n", vec!["x"; 1000].join(", "));
        for _ in 0..250 {
            text.push_str("  - *big\n");
        }
        let e = parse_document(&text).unwrap_err();
        assert!(e.message.contains("anchor `&big` (1001 nodes)"), "{e:?}");
        assert_eq!(e.line, 1);
        let raised = Limits {
            alias_expansion: 300_000,
        };
        let n = parse_document_with(&text, &raised).unwrap();
        assert_eq!(
            n.get("b").and_then(Node::as_seq).map(<[Node]>::len),
            Some(250)
        );
    }

    #[test]
    fn recursive_and_unknown_aliases_do_not_hang_the_budget() {
        for text in ["a: &a [*a, *a]\n", "a: *nope\n", "a: &a\n  b: *a\n"] {
            let _ = parse_document(text);
        }
        // `&` inside values is no anchor: the budget pass is skipped.
        assert!(!may_define_anchor("url: http://x/?a=1&b=2\n"));
        assert!(may_define_anchor("x: &a 1\n") && may_define_anchor("[&a 1, *a]"));
    }

    #[test]
    fn errors_never_point_past_the_end_of_the_file() {
        for text in ["a: [1, 2\n", "a: {b: 1\n\n\n", "a: 'open\n"] {
            let e = parse_document(text).unwrap_err();
            assert!(
                e.line as usize <= text.lines().count().max(1),
                "{text:?}: {e:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_fails_fast_naming_the_limit() {
        for text in [
            "[".repeat(10_000) + &"]".repeat(10_000),
            (0..10_000)
                .map(|i| format!("{}- \n", " ".repeat(i * 2)))
                .collect(),
            (0..10_000)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect(),
        ] {
            let e = parse_document(&text).unwrap_err();
            assert!(
                e.message.contains("limit") || e.message.contains("nest"),
                "{e:?}"
            );
        }
        // At the limit is fine.
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        parse_document(&ok).unwrap();
    }

    #[test]
    fn aliases_cannot_nest_past_the_depth_limit() {
        // Each anchor nests 100 levels and contains the previous one.
        let mut text = String::new();
        for i in 0..20 {
            let inner = if i == 0 {
                "x".to_owned()
            } else {
                format!("*a{}", i - 1)
            };
            text.push_str(&format!(
                "a{i}: &a{i} {}{inner}{}\n",
                "[".repeat(100),
                "]".repeat(100)
            ));
        }
        let e = parse_document(&text).unwrap_err();
        assert!(e.message.contains("limit"), "{e:?}");
    }

    #[test]
    fn big_streams_and_lists_load() {
        let docs: String = (0..2_000)
            .map(|i| format!("---\nkind: ConfigMap\nmetadata: {{name: c{i}}}\n"))
            .collect();
        assert_eq!(parse_documents(&docs).unwrap().len(), 2_000);
        let list: String = (0..100_000).map(|i| format!("- {i}\n")).collect();
        assert_eq!(
            parse_document(&list).unwrap().as_seq().unwrap().len(),
            100_000
        );
    }
}
