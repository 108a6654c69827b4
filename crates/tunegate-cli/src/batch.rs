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
use tunegate_core::ProviderSpec;
use tunegate_providers::Provider;
use tunegate_run::{Prepared, RunOptions, RunOutcome};
use tunegate_store::{store_path_for, Store};

pub enum Batch {
    Export(Arc<Exporter>, PathBuf),
    /// Answers to score: from a file, or from vendor batches (their ids,
    /// marked ingested in the run once scored).
    Import { importer: Arc<Importer>, source: String, batch_ids: Vec<String> },
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
    Ok(Some(Batch::Import { importer: x, source: file.display().to_string(), batch_ids: vec![] }))
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
        Batch::Import { importer: x, source, batch_ids } => {
            let r = x.report();
            eprintln!("imported {source}: {} answers scored, {} provider errors, {} calls the batch did not run (expired or cancelled)", r.answered, r.errors, r.not_run);
            if !r.unknown.is_empty() {
                eprintln!("{} ids match no pending call of run {} (already imported, or from another run or task state): {}", r.unknown.len(), o.run_id, few(&r.unknown));
            }
            if !r.duplicates.is_empty() {
                eprintln!("{} ids came more than once; the first answer was used: {}", r.duplicates.len(), few(&r.duplicates));
            }
            if pending > 0 {
                eprintln!("run {} has {pending} calls still pending: import another output file, export them again (tunegate eval -c {t} --resume {} --export-batch FILE) or call them live (tunegate eval -c {t} --resume {})", o.run_id, o.run_id, o.run_id);
            }
            if let Some(list) = meta.get_mut("batches").and_then(|b| b.as_array_mut()) {
                for b in list.iter_mut().filter(|b| b.get("batch_id").and_then(|i| i.as_str()).map(|i| batch_ids.iter().any(|x| x == i)).unwrap_or(false)) {
                    b["ingested"] = json!(true);
                }
            }
            push(&mut meta, json!({"import": source, "answered": r.answered, "errors": r.errors, "not_run": r.not_run, "unknown": r.unknown.len(), "duplicates": r.duplicates.len(), "at": tunegate_store::now()}));
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

/// `--batch` and `--attach`: submits the calls the cache cannot answer to
/// each provider's batch endpoint (recording every batch id in the run the
/// moment it exists), or finds a run's batches not yet scored, then waits
/// for them with progress. Returns the import of their answers, which the
/// eval run that follows scores like any other.
pub fn vendor(a: &EvalArgs, prep: &Prepared, providers: &[(Arc<dyn Provider>, ProviderSpec)], opts: &mut RunOptions, rt: &tokio::runtime::Runtime, task: &Path) -> Result<Option<Batch>> {
    let t = task.display();
    if let Some(p) = providers.iter().find(|(p, _)| p.batch_api().is_none()) {
        return Err(usage(format!("--batch: provider `{}` has no batch endpoint (openai: and anthropic: providers do); for others write a batch file with --export-batch", p.0.name())));
    }
    let store = Store::open(&store_path_for(task))?;
    let run_id = match &a.attach {
        Some(sel) => store.resolve_run(sel)?.id,
        None => {
            let x = Arc::new(Exporter::new());
            let mut o = opts.clone();
            o.batch = Some(BatchMode::Export(x.clone()));
            let outcome = rt.block_on(tunegate_run::run(prep, providers.to_vec(), o, vec![]))?;
            for name in x.providers() {
                let (p, _) = providers.iter().find(|(p, _)| p.name() == name).context("a provider of the plan")?;
                let items = x.requests(&name);
                let api = p.batch_api().context("checked above")?;
                let id = rt.block_on(api.submit(&items)).with_context(|| format!("--batch: submitting {} requests to `{name}`", items.len()))?;
                // Recorded before anything else can fail: `--attach` finds it.
                let mut meta = store.get_run(&outcome.run_id)?.meta;
                push(&mut meta, json!({"provider": name, "batch_id": id, "requests": items.len(), "at": tunegate_store::now(), "ingested": false}));
                store.set_run_meta(&outcome.run_id, &meta)?;
                eprintln!("submitted batch {id} to `{name}`: {} requests (if this stops, continue with: tunegate eval -c {t} --attach {})", items.len(), outcome.run_id);
            }
            outcome.run_id
        }
    };
    let meta = store.get_run(&run_id)?.meta;
    let pending: Vec<(String, String)> = meta
        .get("batches")
        .and_then(|b| b.as_array())
        .map(|l| l.iter().filter(|b| b.get("ingested") == Some(&json!(false))).filter_map(|b| Some((b.get("provider")?.as_str()?.to_string(), b.get("batch_id")?.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    if pending.is_empty() {
        // Nothing to wait for: show the run as it is, calling nothing.
        eprintln!("run {run_id} has no vendor batch waiting to be scored");
        opts.resume = Some(run_id);
        opts.batch = Some(BatchMode::Import(Arc::new(Importer::new(Default::default()))));
        return Ok(None);
    }
    let interval = std::time::Duration::from_secs_f64(a.poll_interval.max(0.01));
    let mut ended = vec![];
    for (name, id) in &pending {
        let (p, _) = providers.iter().find(|(p, _)| p.name() == name).with_context(|| format!("run {run_id}: batch {id} belongs to provider `{name}`, which the task no longer has"))?;
        let api = p.batch_api().context("checked above")?;
        let bar = indicatif::ProgressBar::new(0).with_style(indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
        if a.run.no_progress {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_message(format!("batch {id}"));
        let mut show = |st: &tunegate_providers::batch::BatchStatus| {
            bar.set_length(st.total);
            bar.set_position(st.done);
            bar.set_message(format!("batch {id} {}", st.status));
        };
        let watched = rt.block_on(async {
            tokio::select! {
                r = tunegate_run::batch::watch(api, id, interval, 8, &mut show) => Some(r),
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        bar.finish_and_clear();
        let st = match watched {
            Some(r) => r.with_context(|| format!("batch {id}: stopped watching (it goes on at the vendor); continue with: tunegate eval -c {t} --attach {run_id}"))?,
            None => {
                eprintln!("stopped watching; batch {id} goes on at the vendor: continue with tunegate eval -c {t} --attach {run_id}");
                return Err(anyhow::anyhow!("interrupted"));
            }
        };
        eprintln!("batch {id} {}: {} of {} requests done, {} failed", st.status, st.done, st.total, st.failed);
        ended.push((api, st));
    }
    let out = rt.block_on(tunegate_run::batch::collect(&ended))?;
    let x = Arc::new(Importer::new(out));
    opts.resume = Some(run_id);
    opts.repeat = store.get_run(opts.resume.as_deref().unwrap_or_default())?.repeat;
    opts.batch = Some(BatchMode::Import(x.clone()));
    let ids: Vec<String> = pending.into_iter().map(|(_, id)| id).collect();
    Ok(Some(Batch::Import { importer: x, source: format!("batch {}", ids.join(", ")), batch_ids: ids }))
}
