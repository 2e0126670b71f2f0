//! The minijinja environment of one renderer: Jinja2-compatible syntax
//! settings, a loader confined to the snapshot, driftless's filters and
//! `secret()` and `sops()`, and the limits that keep a hostile template from taking the
//! daemon down.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, syntax::SyntaxConfig};

use super::filters;
use super::ledger::Ledger;
use crate::source::{self, Snapshot};

/// Work budget of one render (minijinja "fuel": about one unit per
/// instruction and per 64 bytes of data created). The Jinja2 corpus files
/// need under 100 each, so 2 million leaves room for large generated files
/// while bounding a runaway loop to about a second of work and its
/// allocations to roughly 128 MB.
pub(super) const FUEL: u64 = 2_000_000;

/// Nesting budget: each include costs 10, each macro call 4, each block 1.
/// Below minijinja's own ceiling (500) so that a debug build on a 2 MiB
/// thread stack (test threads, Tokio blocking threads) ends in an error, not
/// a stack overflow.
pub(super) const RECURSION_LIMIT: usize = 200;

/// Largest rendered file. Snapshot files are at most 5 MiB; a template may
/// expand, but not without bound.
pub(super) const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// Builds the environment. Templates are compiled on first use and cached
/// by the environment, so each is parsed once per renderer.
pub(super) fn environment(snapshot: Snapshot, ledger: Arc<Ledger>) -> Environment<'static> {
    let mut env = Environment::new();
    // Python Jinja2's defaults except `keep_trailing_newline`: a file's last
    // newline is part of the file. Built from constants, so it cannot fail;
    // fall back to the defaults rather than panic all the same.
    let syntax = SyntaxConfig::builder()
        .trim_blocks(false)
        .lstrip_blocks(false)
        .keep_trailing_newline(true)
        .build()
        .unwrap_or_default();
    env.set_syntax(syntax);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Output is YAML, JSON, INI, ... never HTML.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // Debug mode (default only in debug builds) is what makes an undefined
    // error name the expression (`\`db.host\` is undefined`). It costs a
    // little only when an undefined value is created or an error raised.
    env.set_debug(true);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);

    // Include names are repo-root-relative. Normalising here (rather than in
    // the loader) makes `a/./b.j2` and `a/b.j2` one cached template. A name
    // that does not normalise is passed on unchanged for the loader to reject.
    env.set_path_join_callback(|name, _parent| match source::normalize(name) {
        Ok(normal) if normal != name => Cow::Owned(normal),
        _ => Cow::Borrowed(name),
    });
    let files = snapshot.clone();
    env.set_loader(move |name| load(&snapshot, name));

    // Python methods Jinja2 templates call (`d.items()`, `s.startswith()`,
    // `d.get(k)`, ...) that minijinja leaves to this contrib callback.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    filters::register(&mut env);
    let sops_ledger = Arc::clone(&ledger);
    env.add_function("secret", move |name: &str| ledger.secret(name));
    env.add_function("sops", move |path: &str| sops_ledger.sops(&files, path));
    env
}

/// The loader: snapshot files only, never the host file system.
fn load(snapshot: &Snapshot, name: &str) -> Result<Option<String>, Error> {
    let path = source::normalize(name).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "include `{name}` escapes the repository; include, import and extends \
                 take a path relative to the repository root"
            ),
        )
    })?;
    let Some(bytes) = snapshot.get(&path) else {
        return Ok(None);
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(Some(text.to_owned())),
        Err(_) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("template `{path}` is not valid UTF-8 text"),
        )),
    }
}

/// An output buffer that refuses to grow past [`MAX_OUTPUT_BYTES`].
#[derive(Default)]
pub(super) struct CappedOutput {
    pub buf: Vec<u8>,
    pub overflowed: bool,
}

impl io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("rendered output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
