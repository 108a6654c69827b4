//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use tunegate_model::{paths, GgufFile, Tokenizer};

/// The real model file, or `None` (after a loud message) when it is absent,
/// so `cargo test` passes on machines that have not fetched the weights but
/// nobody mistakes a skip for a pass.
pub fn model_path() -> Option<PathBuf> {
    let path = paths::default_model_path().expect("no model directory");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: model file not found at {}; run scripts/fetch-model.sh",
            path.display()
        );
        None
    }
}

pub fn model() -> Option<GgufFile> {
    model_path().map(|p| GgufFile::open(&p).expect("open model"))
}

pub fn tokenizer() -> Option<Tokenizer> {
    model().map(|g| Tokenizer::from_gguf(&g).expect("tokenizer from model"))
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}
