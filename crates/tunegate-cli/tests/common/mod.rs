//! Helpers shared by the CLI's integration tests.
#![allow(dead_code)]

use std::path::Path;

/// Whether the embedded model is fetched; tests that need it skip, loudly,
/// only when it is absent (CI fetches it first).
pub fn model_present() -> bool {
    let home = std::env::var("TUNEGATE_HOME")
        .map(|h| format!("{h}/models"))
        .or_else(|_| std::env::var("XDG_CACHE_HOME").map(|x| format!("{x}/tunegate/models")))
        .unwrap_or_else(|_| format!("{}/.cache/tunegate/models", std::env::var("HOME").unwrap_or_default()));
    let p = Path::new(&home).join("gemma-3-270m-q4_k_m.gguf");
    if !p.is_file() {
        eprintln!("SKIPPED: model file not found at {}; run scripts/fetch-model.sh", p.display());
        return false;
    }
    true
}
