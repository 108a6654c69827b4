//! `tunegate adapter export`: a tuned adapter in another runtime's format.

use crate::args::{usage, TaskArgs};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tunegate_store::Store;

#[derive(Subcommand)]
pub enum AdapterCommand {
    /// Write a LoRA adapter as a llama.cpp LoRA GGUF (`llama-cli --lora FILE`).
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// A PEFT adapter directory, or a local tuning job id / tuned model name from the store.
    pub adapter: String,
    /// Output format.
    #[arg(long, value_parser = ["gguf-lora"], default_value = "gguf-lora")]
    pub format: String,
    /// Output file (default: ADAPTER_DIR/adapter.gguf).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Task file whose run store holds the job (when ADAPTER is a job).
    #[command(flatten)]
    pub task: TaskArgs,
}

pub fn run(c: AdapterCommand) -> Result<ExitCode> {
    match c {
        AdapterCommand::Export(a) => export(a),
    }
}

/// The adapter directory: the argument itself, or the one a local tuning
/// job recorded.
fn adapter_dir(a: &ExportArgs) -> Result<PathBuf> {
    let p = PathBuf::from(&a.adapter);
    if p.is_dir() {
        return Ok(p);
    }
    let sp = a.task.store_path();
    if !sp.exists() {
        return Err(usage(format!("{}: not an adapter directory, and there is no run store at {} to look it up as a tuning job", a.adapter, sp.display())));
    }
    Ok(tunegate_tune::jobs::adapter_of(&Store::open(&sp)?, &a.adapter)?.dir)
}

fn export(a: ExportArgs) -> Result<ExitCode> {
    let dir = adapter_dir(&a)?;
    if !dir.join("adapter_config.json").is_file() || !dir.join("adapter_model.safetensors").is_file() {
        return Err(usage(format!("{}: not a PEFT adapter directory (needs adapter_config.json and adapter_model.safetensors)", dir.display())));
    }
    let out = a.output.clone().unwrap_or_else(|| dir.join("adapter.gguf"));
    // Checked against the embedded base (the model local adapters are trained on).
    let base = tunegate_model::resolve_model("gemma-3-270m").map_err(|e| usage(format!("the base model is needed to check the adapter: {e}")))?;
    let e = tunegate_model::gguf_lora::export_peft_as_gguf(&dir, &base, &out).map_err(|e| usage(format!("{} cannot be exported: {e}", dir.display())))?;
    println!("wrote {} ({} tensors, rank {}, alpha {}, {} bytes)", out.display(), e.tensors, e.rank, e.alpha, e.bytes);
    println!("use it with llama.cpp: llama-cli -m gemma-3-270m-q4_k_m.gguf --lora {}", out.display());
    Ok(ExitCode::SUCCESS)
}
