//! Shared helpers for the integration tests.

use std::path::PathBuf;

/// The shared test corpus (`../shared/corpus` next to the repo, or
/// `DRIFTLESS_CORPUS`). Tests that use it fail loudly when it is missing.
#[allow(dead_code)]
pub fn corpus() -> PathBuf {
    if let Ok(dir) = std::env::var("DRIFTLESS_CORPUS") {
        return PathBuf::from(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    assert!(dir.is_dir(), "test corpus not found at {}; set DRIFTLESS_CORPUS", dir.display());
    dir
}

/// The bundled example repo.
#[allow(dead_code)]
pub fn example_repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout")
}
