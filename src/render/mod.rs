//! Render: turn a snapshot into one environment's files.
//!
//! Files ending in `.j2` go through minijinja (strict undefined, Jinja2's
//! whitespace defaults, trailing newline kept, no auto-escaping) and lose the
//! `.j2`; every other file is taken verbatim, byte for byte, so a Prometheus
//! rule's `{{ $labels.instance }}` in a plain `.yml` needs no escaping. The
//! same template renders the same under Python Jinja2 and driftless. The
//! exception is a SOPS file named `*.sops.<ext>` ([`crate::sops::is_sops_name`]):
//! it renders decrypted, in its own format, its values secrets.
//!
//! Templates load only from inside the snapshot: `{% include %}`,
//! `{% import %}` and `{% extends %}` take repo-root-relative paths, and a
//! path that leaves the repo is an error. The context is the top-level keys
//! of the environment's values file plus `environment` (the environment's
//! name); `secret("name")` reads a [`SecretSource`] and records the value for
//! masking; `sops("path")` decrypts a SOPS file of the snapshot with this
//! host's age identities ([`crate::sops`]) and treats each encrypted value
//! the same way. Render does no IO other than reading secrets and
//! identities.
//!
//! A [`Renderer`] is built once per environment and snapshot, compiles each
//! template once, and can be shared by threads rendering files in parallel.

// `Diagnostic` is the crate's error currency (144 bytes); boxing it here
// alone would make render errors the odd one out among the stages.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::diag::{Diagnostic, Diagnostics};
use crate::secrets::{Masker, SecretSource};
use crate::source::{self, Snapshot};

mod engine;
mod error;
mod filters;
mod ledger;
mod shadow;

/// Shadow renders per file that read a secret: two independent stand-ins
/// leave a chance coincidence with the real value on both a rare one.
const SHADOWS: usize = 2;

/// Shadow renders before a derived span is refused as too short: a
/// stand-in can agree with the real value on most of a transformed form
/// by chance (`%2F` and `%2B`), and more stand-ins tell such a chance
/// from text that really is short (`secret('x')[:2]`).
const MAX_SHADOWS: usize = 6;

/// The suffix that marks a template.
pub const TEMPLATE_SUFFIX: &str = ".j2";

/// What `secret("name")` does when the secret is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMode {
    /// `render` and `validate`: a missing secret renders as
    /// `<secret:NAME>` and is listed by [`Renderer::missing_secrets`], so
    /// a repo can be checked where no secrets are present (CI).
    Placeholder,
    /// `reconcile`: a missing secret is a render error naming it and how to
    /// set it; nothing half-configured is ever applied.
    Require,
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Output path: the snapshot path with `.j2` dropped.
    pub path: String,
    /// The snapshot path it came from (`x.j2`, or `x` for a verbatim file).
    pub source: String,
    pub content: Arc<[u8]>,
    /// Whether it went through minijinja.
    pub templated: bool,
}

impl Rendered {
    /// The content as UTF-8 text; an error naming the file otherwise.
    pub fn text(&self) -> Result<&str, Diagnostic> {
        std::str::from_utf8(&self.content).map_err(|e| {
            Diagnostic::error(format!(
                "file is not valid UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ))
            .file(&self.source)
        })
    }
}

/// Renders the files of one snapshot for one environment. `Send + Sync`:
/// share it (`&Renderer` or `Arc`) across threads.
pub struct Renderer {
    env: String,
    snapshot: Snapshot,
    values: serde_json::Value,
    /// `values` plus `environment`, converted once for every render.
    context: minijinja::Value,
    jinja: minijinja::Environment<'static>,
    ledger: Arc<ledger::Ledger>,
    /// SOPS files whose top-level keys join the context (`decrypt:`).
    decrypted_values: Vec<String>,
}

impl Renderer {
    /// Reads the environment's values file (`values_path` in the snapshot, a
    /// YAML mapping) and builds the context: its top-level keys plus
    /// `environment` = `env`.
    ///
    /// A missing values file is an error naming it: the manifest always
    /// names one (default `environments/<env>.yaml`), so a missing file is
    /// almost always a typo, and an empty context would only turn it into an
    /// "undefined value" error in some template. An empty file is an empty
    /// mapping. A values file that defines `environment` is an error.
    pub fn new(
        snapshot: Snapshot,
        env: &str,
        values_path: &str,
        secrets: SecretSource,
        mode: SecretMode,
    ) -> Result<Renderer, Diagnostics> {
        let values = read_values(&snapshot, env, values_path)?;
        Ok(Renderer::build(snapshot, env, values, secrets, mode))
    }

    /// Like [`Renderer::new`] with a ready context (tests, the Jinja2
    /// corpus). `environment` is added unless the context has one; a context
    /// that is not a JSON object is treated as empty.
    pub fn with_context(
        snapshot: Snapshot,
        env: &str,
        context: serde_json::Value,
        secrets: SecretSource,
        mode: SecretMode,
    ) -> Renderer {
        let values = match context {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        Renderer::build(snapshot, env, values, secrets, mode)
    }

    fn build(
        snapshot: Snapshot,
        env: &str,
        values: serde_json::Map<String, serde_json::Value>,
        secrets: SecretSource,
        mode: SecretMode,
    ) -> Renderer {
        let mut context = values.clone();
        context
            .entry("environment")
            .or_insert_with(|| serde_json::Value::String(env.to_owned()));
        let ledger = Arc::new(ledger::Ledger::new(secrets, mode));
        Renderer {
            env: env.to_owned(),
            jinja: engine::environment(snapshot.clone(), Arc::clone(&ledger)),
            snapshot,
            values: serde_json::Value::Object(values),
            context: minijinja::Value::from(minijinja::value::Serde(&context)),
            ledger,
            decrypted_values: Vec::new(),
        }
    }

    /// Merges the top-level keys of the SOPS files matching `globs` (repo
    /// paths; `decrypt:` in `driftless.yaml`) into what templates see, in
    /// path order. Their encrypted values are secrets like `sops()`'s. A
    /// file that does not decrypt, is not a mapping, or has a key that the
    /// values file, `environment` or an earlier file has, is an error
    /// naming it. Compose `${VAR}` interpolation does not see them.
    pub fn decrypt_values(mut self, globs: &[String]) -> Result<Renderer, Diagnostics> {
        let fail =
            |message: String, file: &str| Diagnostic::error(message).env(&self.env).file(file);
        let mut matchers = Vec::new();
        for g in globs {
            matchers.push(crate::glob::Glob::new(g).map_err(|e| {
                fail(
                    format!("invalid decrypt glob `{g}`: {e}"),
                    crate::manifest::FILE,
                )
            })?);
        }
        let paths: BTreeSet<String> = self
            .snapshot
            .paths()
            .filter(|p| matchers.iter().any(|m| m.is_match(p)))
            .map(str::to_owned)
            .collect();
        let mut owner: std::collections::BTreeMap<String, String> =
            std::collections::BTreeMap::new();
        let mut diags = Diagnostics::default();
        for path in &paths {
            let keys = match self.ledger.sops_keys(&self.snapshot, path) {
                Ok(keys) => keys,
                Err(e) => {
                    diags.push(fail(e, path));
                    continue;
                }
            };
            for key in keys {
                let clash = if key == "environment" {
                    Some("driftless sets `environment` to the environment's name".to_owned())
                } else if self.values.get(&key).is_some() {
                    Some("the values file defines it too".to_owned())
                } else {
                    owner
                        .get(&key)
                        .map(|other| format!("SOPS file `{other}` defines it too"))
                };
                match clash {
                    Some(why) => diags.push(
                        fail(
                            format!("SOPS file `{path}` defines top-level key `{key}`: {why}"),
                            path,
                        )
                        .hint("rename the key; values from SOPS files are merged at the top level"),
                    ),
                    None => {
                        owner.insert(key, path.clone());
                    }
                }
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        self.decrypted_values = paths.into_iter().collect();
        Ok(self)
    }

    /// The context of one render: the values, plus the SOPS files of
    /// [`Renderer::decrypt_values`] handed out for this render.
    fn context_of_render(&self, template: &str) -> Result<minijinja::Value, Diagnostic> {
        if self.decrypted_values.is_empty() {
            return Ok(self.context.clone());
        }
        let mut map = match &self.values {
            serde_json::Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        map.insert(
            "environment".to_owned(),
            serde_json::Value::String(self.env.clone()),
        );
        for path in &self.decrypted_values {
            let json = self
                .ledger
                .sops_json(&self.snapshot, path)
                .map_err(|e| Diagnostic::error(e).env(&self.env).file(template))?;
            if let serde_json::Value::Object(entries) = json {
                map.extend(entries);
            }
        }
        Ok(minijinja::Value::from(minijinja::value::Serde(&map)))
    }

    /// The environment's name.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// The revision of the snapshot being rendered.
    pub fn revision(&self) -> &crate::source::Revision {
        self.snapshot.revision()
    }

    /// Every output path of the snapshot (`x.j2` listed as `x`), sorted.
    pub fn outputs(&self) -> Vec<String> {
        let outputs: BTreeSet<&str> = self.snapshot.paths().map(output_of).collect();
        outputs.into_iter().map(str::to_owned).collect()
    }

    /// Whether `output_path` is one of [`Renderer::outputs`].
    pub fn exists(&self, output_path: &str) -> bool {
        self.snapshot.contains(&template_path(output_path)) || self.is_verbatim(output_path)
    }

    /// Whether the file `output_path` renders from is executable in the
    /// snapshot (git mode 100755): the template's bit for a `.j2`, else the
    /// file's own.
    pub fn is_executable(&self, output_path: &str) -> bool {
        let template = template_path(output_path);
        if self.snapshot.contains(&template) {
            self.snapshot.is_executable(&template)
        } else {
            self.snapshot.is_executable(output_path)
        }
    }

    /// The symlinks at or under `dir` (path, target text): a link is its
    /// own output, never rendered.
    pub fn links_under(&self, dir: &str) -> Vec<(String, String)> {
        self.snapshot
            .links_under(dir)
            .into_iter()
            .map(|(p, t)| (p.to_owned(), t.to_owned()))
            .collect()
    }

    /// A snapshot file that is its own output (not a template).
    fn is_verbatim(&self, path: &str) -> bool {
        self.snapshot.contains(path) && output_of(path) == path
    }

    /// Renders one output path: `x.j2` through minijinja if present, else
    /// `x` verbatim. Both present is an error (ambiguous).
    ///
    /// Errors carry the environment, the file where the problem is (the
    /// included template, when it is in one), its line and column when
    /// known, and what to do.
    pub fn render(&self, output_path: &str) -> Result<Rendered, Diagnostic> {
        let template = template_path(output_path);
        match (
            self.snapshot.contains(&template),
            self.is_verbatim(output_path),
        ) {
            (true, true) => Err(Diagnostic::error(format!(
                "both `{output_path}` and `{template}` exist; driftless cannot tell which one is meant"
            ))
            .env(&self.env)
            .file(&template)
            .hint(format!(
                "delete `{output_path}` or rename the template; `{template}` renders to `{output_path}`"
            ))),
            (true, false) => self.render_template(&template),
            (false, true) if crate::sops::is_sops_name(output_path) => {
                let content = self
                    .ledger
                    .sops_output(&self.snapshot, output_path)
                    .map_err(|e| Diagnostic::error(e).env(&self.env).file(output_path))?;
                Ok(Rendered {
                    path: output_path.to_owned(),
                    source: output_path.to_owned(),
                    content: Arc::from(content),
                    templated: false,
                })
            }
            (false, true) => Ok(Rendered {
                path: output_path.to_owned(),
                source: output_path.to_owned(),
                content: Arc::from(self.snapshot.get(output_path).unwrap_or_default()),
                templated: false,
            }),
            (false, false) if self.snapshot.contains(output_path) => Err(Diagnostic::error(
                format!("`{output_path}` is a template, not an output path"),
            )
            .env(&self.env)
            .file(output_path)
            .hint(format!("render its output, `{}`", output_of(output_path)))),
            (false, false) => Err(Diagnostic::error(format!(
                "`{output_path}` is not in the repository"
            ))
            .env(&self.env)),
        }
    }

    /// Renders the snapshot file `source_path` through minijinja whatever
    /// its name. The pipeline uses [`Renderer::render`], which treats only
    /// `.j2` files as templates; this is for Jinja2 projects whose
    /// templates carry no suffix (the kluctl corpus) and for tools that
    /// render one named file. The output path drops a `.j2` suffix if any.
    pub fn render_template(&self, source_path: &str) -> Result<Rendered, Diagnostic> {
        let not_found = || {
            Diagnostic::error(format!("`{source_path}` is not in the repository")).env(&self.env)
        };
        let path = source::normalize(source_path).map_err(|_| not_found())?;
        if !self.snapshot.contains(&path) {
            return Err(not_found());
        }
        let (content, used) = self.render_finding_missing_secrets(&path)?;
        if !used.is_empty() {
            self.trace_secrets(&path, &content, &used)?;
        }
        Ok(Rendered {
            path: output_of(&path).to_owned(),
            source: path,
            content: Arc::from(content.into_bytes()),
            templated: true,
        })
    }

    /// Renders `path` for real. A render that fails on a missing secret is
    /// repeated with that secret as a placeholder, so the error names every
    /// missing secret of the file with its line, not one per run.
    fn render_finding_missing_secrets(
        &self,
        path: &str,
    ) -> Result<(String, BTreeSet<String>), Diagnostic> {
        /// Enough for any real file; bounds the renders of a hostile one.
        const MAX_MISSING: usize = 64;
        let mut tolerate = BTreeSet::new();
        let mut first: Option<Diagnostic> = None;
        let mut more = Vec::new();
        loop {
            let (real, reads) =
                ledger::scoped_tolerating(None, tolerate.clone(), || self.render_once(path));
            match (real, reads.missing) {
                (Err(d), Some(name)) if tolerate.len() < MAX_MISSING => {
                    match &first {
                        None => first = Some(d),
                        Some(_) => more.push(match d.line {
                            Some(line) => format!("`{name}` (line {line})"),
                            None => format!("`{name}`"),
                        }),
                    }
                    tolerate.insert(name);
                }
                (real, _) => match first {
                    None => return real.map(|content| (content, reads.used)),
                    Some(mut d) => {
                        if !more.is_empty() {
                            d.message.push_str(&format!(
                                "; also not set in this file: {}",
                                more.join(", ")
                            ));
                        }
                        return Err(d);
                    }
                },
            }
        }
    }

    /// One render of `path` with the context.
    fn render_once(&self, path: &str) -> Result<String, Diagnostic> {
        let template = self
            .jinja
            .get_template(path)
            .map_err(|e| self.diagnostic(&e, path))?;
        let mut out = engine::CappedOutput::default();
        let context = self.context_of_render(path)?;
        if let Err(e) = template.render_captured_to(context, &mut out) {
            if out.overflowed {
                return Err(Diagnostic::error(format!(
                    "rendered output is larger than {} MiB",
                    engine::MAX_OUTPUT_BYTES / (1024 * 1024)
                ))
                .env(&self.env)
                .file(path)
                .hint("look for a loop or repeat that is far larger than intended"));
            }
            return Err(self.diagnostic(&e, path));
        }
        // minijinja writes only `str`s, so the buffer is UTF-8.
        Ok(String::from_utf8_lossy(&out.buf).into_owned())
    }

    /// Shadow-renders `path`, which read the secrets `used`, and records the
    /// text of `real` derived from them for masking; an error when that
    /// text cannot be told apart (see [`shadow`]).
    fn trace_secrets(
        &self,
        path: &str,
        real: &str,
        used: &BTreeSet<String>,
    ) -> Result<(), Diagnostic> {
        let names = used
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = "use the secret's value as it is, or through filters that work on any value \
                    (urlencode, b64encode, tojson, replace, ...); do not branch, loop or slice on it";
        let mut shadows = Vec::with_capacity(MAX_SHADOWS);
        let derived = loop {
            let k = shadows.len();
            let (out, _) = ledger::scoped(Some(k), || self.render_once(path));
            match out {
                Ok(text) => shadows.push(text),
                Err(d) => {
                    return Err(Diagnostic {
                        message: format!(
                            "this file renders only with some values of secret {names} ({}); driftless cannot tell which text derives from the secret, so it cannot mask it",
                            d.message
                        ),
                        hint: Some(hint.to_owned()),
                        ..d
                    });
                }
            }
            if shadows.len() < SHADOWS {
                continue;
            }
            match shadow::derived(real, &shadows) {
                Err(shadow::Untraceable::TooShort { .. }) if shadows.len() < MAX_SHADOWS => {}
                d => break d,
            }
        };
        let fail = |message: String| {
            Diagnostic::error(message)
                .env(&self.env)
                .file(path)
                .hint(hint)
        };
        match derived {
            Ok(spans) => {
                self.ledger.add_derived(&spans);
                Ok(())
            }
            Err(shadow::Untraceable::Lines { real, shadow }) => Err(fail(format!(
                "secret {names} decides this file's control flow (with another value of the same length it renders {} lines instead of {}); driftless cannot tell which text derives from the secret, so it cannot mask it",
                shadow.saturating_sub(1),
                real.saturating_sub(1)
            ))),
            Err(shadow::Untraceable::TooShort { line, chars }) => Err(fail(format!(
                "output line {line}: text derived from secret {names} is {chars} characters long, shorter than {} (or the secret decides what the line says), so it cannot be masked",
                crate::secrets::MIN_SECRET_LEN
            ))),
        }
    }

    fn diagnostic(&self, err: &minijinja::Error, template: &str) -> Diagnostic {
        let limits = error::Limits {
            fuel: engine::FUEL,
            recursion: engine::RECURSION_LIMIT,
        };
        error::diagnostic(err, &self.env, template, &self.snapshot, &limits)
    }

    /// The values mapping (without `environment`), e.g. for Compose
    /// `${VAR}` interpolation.
    pub fn values(&self) -> &serde_json::Value {
        &self.values
    }

    /// Masks every secret value handed out by this renderer so far.
    pub fn masker(&self) -> Masker {
        self.ledger.masker()
    }

    /// A secret by name, exactly as `secret(name)` in a template gives it
    /// (recorded for masking; a placeholder when missing in
    /// [`SecretMode::Placeholder`]). Compose's `x-driftless-secret` reads
    /// its values here.
    pub fn secret(&self, name: &str) -> Result<String, String> {
        self.ledger.secret(name).map_err(|e| {
            e.detail()
                .map_or_else(|| e.to_string(), std::borrow::ToOwned::to_owned)
        })
    }

    /// Records a secret value read elsewhere (a Compose secret's `file:` or
    /// `environment:`) so that every output masks it.
    pub fn record_secret(&self, value: &str) {
        self.ledger.record(value);
    }

    /// The encrypted values read from SOPS files by `sops()` so far:
    /// `(file, key paths, decrypted)` sorted by file; `decrypted` is false
    /// when there was no age identity and they rendered as placeholders
    /// ([`SecretMode::Placeholder`]). The values themselves are secrets
    /// ([`Renderer::masker`]).
    pub fn sops_values(&self) -> Vec<(String, Vec<String>, bool)> {
        self.ledger.sops_values()
    }

    /// Names `secret()` was called with that are not set, sorted. In
    /// [`SecretMode::Require`] each of these also failed its render.
    pub fn missing_secrets(&self) -> Vec<String> {
        self.ledger.missing()
    }

    /// Every name `secret()` was called with, set or not, sorted.
    pub fn secrets_used(&self) -> Vec<String> {
        self.ledger.used()
    }
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer")
            .field("env", &self.env)
            .field("revision", self.snapshot.revision())
            .field("files", &self.snapshot.len())
            .finish_non_exhaustive()
    }
}

/// What `secret("name")` renders as when the secret is missing in
/// [`SecretMode::Placeholder`] (`<secret:name>`), so later stages can tell
/// such a value came from `secret()`.
pub fn secret_placeholder(name: &str) -> String {
    ledger::placeholder(name)
}

/// The output path of a snapshot path: `.j2` dropped, unless the file is
/// named just `.j2`.
fn output_of(path: &str) -> &str {
    match path.strip_suffix(TEMPLATE_SUFFIX) {
        Some(out) if !out.is_empty() && !out.ends_with('/') => out,
        _ => path,
    }
}

fn template_path(output_path: &str) -> String {
    format!("{output_path}{TEMPLATE_SUFFIX}")
}

/// Reads and checks the values file.
fn read_values(
    snapshot: &Snapshot,
    env: &str,
    values_path: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, Diagnostics> {
    let fail = |message: String| Diagnostic::error(message).env(env).file(values_path);
    let path = source::normalize(values_path)
        .map_err(|e| fail(format!("values file path is not usable: {e}")))?;
    let text = snapshot.text(&path).map_err(|e| match e {
        source::SourceError::NotFound { .. } => fail(format!(
            "values file `{path}` is not in the repository"
        ))
        .hint("create it (an empty mapping `{}` is enough) or set `values:` for this environment in driftless.yaml"),
        other => fail(other.to_string()),
    })?;
    let value: serde_json::Value =
        crate::yaml::from_str(text).map_err(|e| e.into_diagnostic(&path).env(env))?;
    let map = match value {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            return Err(fail(format!(
                "values file must be a mapping of names to values, not {}",
                json_kind(&other)
            ))
            .into());
        }
    };
    if map.contains_key("environment") {
        return Err(fail(
            "values file defines `environment`, which driftless sets to the environment's name"
                .to_owned(),
        )
        .line(top_level_key_line(text, "environment"))
        .hint("rename the key; templates read the environment's name as `environment`")
        .into());
    }
    Ok(map)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

/// 1-based line of an unindented `key:` (plain or quoted), 0 if not found.
/// The parsed value has no positions; this is good enough to point at it.
fn top_level_key_line(text: &str, key: &str) -> u32 {
    let forms = [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ];
    text.lines()
        .position(|l| forms.iter().any(|f| l.starts_with(f.as_str())))
        .map_or(0, |i| u32::try_from(i + 1).unwrap_or(0))
}

#[cfg(test)]
mod tests;
