//! `eval --export-batch` and `--import-batch`: the flags' checks and what
//! the user reads; the work is the runner's (`tunegate_run::batch`).

use crate::args::usage;
use crate::eval::EvalArgs;
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tunegate_providers::batch::{read_output, run_of};
use tunegate_run::batch::{BatchMode, Exporter, Importer};
use tunegate_run::{RunOptions, RunOutcome};
use tunegate_store::{store_path_for, Store};

pub enum Batch {
    Export(Arc<Exporter>, PathBuf),
    Import(Arc<Importer>, PathBuf),
}

/// Sets the run options for an export or an import. An import reads and
/// checks the whole output file first (a malformed line stops it before
/// anything is stored) and resumes the run its ids name.
pub fn prepare(a: &EvalArgs, task: &Path, opts: &mut RunOptions) -> Result<Option<Batch>> {
    if let Some(file) = &a.export_batch {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(usage(format!("--export-batch {}: the directory {} does not exist", file.display(), dir.display())));
        }
        let x = Arc::new(Exporter::new());
        opts.batch = Some(BatchMode::Export(x.clone()));
        return Ok(Some(Batch::Export(x, file.clone())));
    }
    let Some(file) = &a.import_batch else { return Ok(None) };
    let text = std::fs::read_to_string(file).with_context(|| format!("--import-batch {}: cannot read the file", file.display()))?;
    let out = read_output(&text).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let run = match &a.resume {
        Some(r) => r.clone(),
        None => {
            let runs: BTreeSet<&str> = out.answers.keys().filter_map(|id| run_of(id)).collect();
            match runs.len() {
                1 => runs.into_iter().next().unwrap_or_default().to_string(),
                0 => return Err(usage(format!("{}: no line names a run (custom ids like RUN_HASH, as `--export-batch` writes them); name the run with --resume RUN", file.display()))),
                _ => return Err(usage(format!("{}: the ids name {} runs ({}); name one with --resume RUN", file.display(), runs.len(), runs.into_iter().collect::<Vec<_>>().join(", ")))),
            }
        }
    };
    let sp = store_path_for(task);
    if !sp.exists() {
        return Err(usage(format!("--import-batch: there is no run store at {}: import in the task the batch was exported from", sp.display())));
    }
    let info = Store::open(&sp)?.resolve_run(&run).with_context(|| format!("{}: the run its ids name", file.display()))?;
    opts.resume = Some(info.id);
    opts.repeat = info.repeat;
    let x = Arc::new(Importer::new(out));
    opts.batch = Some(BatchMode::Import(x.clone()));
    Ok(Some(Batch::Import(x, file.clone())))
}

/// After the run: an export writes its file and says how to continue (and
/// ends the command); an import reports what it matched, then the usual
/// eval output follows.
pub fn finish(b: &Option<Batch>, store: &Store, o: &RunOutcome, task: &Path) -> Result<Option<ExitCode>> {
    let Some(b) = b else { return Ok(None) };
    let run = store.get_run(&o.run_id)?;
    let pending = run.planned.saturating_sub(store.count_results(&o.run_id)?);
    let mut meta = run.meta.clone();
    let t = task.display();
    let code = match b {
        Batch::Export(x, file) => {
            let lines = x.lines();
            if lines.is_empty() {
                eprintln!("nothing to export: every call of run {} is answered (from the cache or before)", o.run_id);
                return Ok(None);
            }
            // Written whole or not at all: a half file would import as a
            // partial answer set without saying so.
            let tmp = file.with_extension("jsonl.tmp");
            std::fs::write(&tmp, lines.join("\n") + "\n").and_then(|_| std::fs::rename(&tmp, file)).with_context(|| format!("--export-batch {}: cannot write the file", file.display()))?;
            push(&mut meta, json!({"export": file.display().to_string(), "requests": lines.len(), "at": tunegate_store::now()}));
            println!("exported {} requests to {}; run {} is pending ({} of {} calls answered from the cache)", lines.len(), file.display(), o.run_id, run.planned - pending, run.planned);
            println!("run the file on an engine that reads OpenAI's Batch format, e.g.");
            println!("  vllm run-batch -i {} -o results.jsonl --model MODEL", file.display());
            println!("then: tunegate eval -c {t} --import-batch results.jsonl");
            Some(ExitCode::SUCCESS)
        }
        Batch::Import(x, file) => {
            let r = x.report();
            eprintln!("imported {}: {} answers scored, {} provider errors, {} calls the batch did not run (expired or cancelled)", file.display(), r.answered, r.errors, r.not_run);
            if !r.unknown.is_empty() {
                eprintln!("{} ids match no pending call of run {} (already imported, or from another run or task state): {}", r.unknown.len(), o.run_id, few(&r.unknown));
            }
            if !r.duplicates.is_empty() {
                eprintln!("{} ids came more than once; the first answer was used: {}", r.duplicates.len(), few(&r.duplicates));
            }
            if pending > 0 {
                eprintln!("run {} has {pending} calls still pending: import another output file, export them again (tunegate eval -c {t} --resume {} --export-batch FILE) or call them live (tunegate eval -c {t} --resume {})", o.run_id, o.run_id, o.run_id);
            }
            push(&mut meta, json!({"import": file.display().to_string(), "answered": r.answered, "errors": r.errors, "not_run": r.not_run, "unknown": r.unknown.len(), "duplicates": r.duplicates.len(), "at": tunegate_store::now()}));
            None
        }
    };
    store.set_run_meta(&o.run_id, &meta)?;
    Ok(code)
}

fn push(meta: &mut serde_json::Value, entry: serde_json::Value) {
    match meta.get_mut("batches").and_then(|b| b.as_array_mut()) {
        Some(list) => list.push(entry),
        None => meta["batches"] = json!([entry]),
    }
}

fn few(ids: &[String]) -> String {
    let mut s = ids.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > 3 {
        s.push_str(&format!(" and {} more", ids.len() - 3));
    }
    s
}
