//! Render: turn a snapshot into one environment's files.
//!
//! Files ending in `.j2` go through minijinja (strict undefined, Jinja2's
//! whitespace defaults, trailing newline kept) and lose the `.j2`; every other
//! file is taken verbatim. Templates load only from inside the snapshot.
//! Values come from the environment's values file; `secret("name")` reads a
//! [`crate::secrets::SecretSource`] and records the value for masking.
