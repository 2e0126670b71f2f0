//! A local work tree read as it is (uncommitted edits included), for
//! `render`, `validate` and `reconcile --dry-run` during development.
