//! `tunegate init`: a task that runs as it is, offline, so a new user sees
//! a real evaluation in the first minute and edits from there.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

type Files = &'static [(&'static str, &'static str)];

const CLASSIFICATION: Files = &[
    ("tunegate.yaml", include_str!("scaffold/classification/tunegate.yaml")),
    ("prompts/instructed.j2", include_str!("scaffold/classification/instructed.j2")),
    ("prompts/few_shot.j2", include_str!("scaffold/classification/few_shot.j2")),
    ("baseline.sh", include_str!("scaffold/classification/baseline.sh")),
    ("data/eval.jsonl", include_str!("scaffold/classification/eval.jsonl")),
    ("data/examples.jsonl", include_str!("scaffold/classification/examples.jsonl")),
];
const EXTRACTION: Files = &[
    ("tunegate.yaml", include_str!("scaffold/extraction/tunegate.yaml")),
    ("schema.json", include_str!("scaffold/extraction/schema.json")),
    ("baseline.sh", include_str!("scaffold/extraction/baseline.sh")),
    ("data/eval.jsonl", include_str!("scaffold/extraction/eval.jsonl")),
    ("data/examples.jsonl", include_str!("scaffold/extraction/examples.jsonl")),
];
const REWRITE: Files = &[
    ("tunegate.yaml", include_str!("scaffold/rewrite/tunegate.yaml")),
    ("baseline.sh", include_str!("scaffold/rewrite/baseline.sh")),
    ("data/eval.jsonl", include_str!("scaffold/rewrite/eval.jsonl")),
];
const GENERATION: Files = &[
    ("tunegate.yaml", include_str!("scaffold/generation/tunegate.yaml")),
    ("baseline.sh", include_str!("scaffold/generation/baseline.sh")),
    ("data/eval.jsonl", include_str!("scaffold/generation/eval.jsonl")),
];

pub fn files_for(kind: &str) -> Files {
    match kind {
        "extraction" => EXTRACTION,
        "rewrite" => REWRITE,
        "generation" => GENERATION,
        _ => CLASSIFICATION,
    }
}

/// Writes the scaffold; refuses to overwrite anything unless `force`.
pub fn scaffold(dir: &Path, kind: &str, force: bool) -> Result<Vec<PathBuf>> {
    let files = files_for(kind);
    if dir.exists() && !dir.is_dir() {
        bail!(crate::args::UsageError(format!("{} is a file; `tunegate init DIR` writes a task into a directory", dir.display())));
    }
    if !force {
        let existing: Vec<String> = files.iter().map(|(p, _)| dir.join(p)).filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
        if !existing.is_empty() {
            bail!(crate::args::UsageError(format!("{} already exist{}; pass --force to overwrite", existing.join(", "), if existing.len() == 1 { "s" } else { "" })));
        }
    }
    let mut written = vec![];
    for (rel, content) in files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, content).with_context(|| format!("cannot write {}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

#[derive(Args)]
pub struct InitArgs {
    /// Directory to create the task in (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// What the task's outputs are.
    #[arg(long, value_parser = ["classification", "extraction", "rewrite", "generation"], default_value = "classification")]
    pub kind: String,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

pub fn init(a: InitArgs) -> Result<ExitCode> {
    let written = scaffold(&a.dir, &a.kind, a.force)?;
    println!("Created a {} task in {}:", a.kind, a.dir.display());
    for f in &written {
        println!("  {}", f.display());
    }
    let cfg = a.dir.join("tunegate.yaml");
    println!("\nNext: tunegate eval -c {}", cfg.display());
    Ok(ExitCode::SUCCESS)
}

