//! `tunegate bench`: measurements that print JSON, recorded in BENCHMARKS.md.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;
use tunegate_run::RunOptions;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The harness alone: the echo provider over N cases x P prompts, through
    /// the real path (task file, templates, scorers, SQLite store).
    Harness(HarnessArgs),
}

#[derive(Args)]
pub struct HarnessArgs {
    #[arg(long, default_value_t = 20000)]
    pub cases: usize,
    #[arg(long, default_value_t = 3)]
    pub prompts: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Keep the generated task here instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

pub fn run(c: BenchCommand) -> Result<ExitCode> {
    match c {
        BenchCommand::Harness(a) => harness(a),
    }
}

/// Peak resident set size of this process, from /proc (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

const LABELS: [&str; 5] = ["billing", "technical", "account", "shipping", "other"];
const WORDS: [&str; 16] = ["charged", "twice", "refund", "app", "crashes", "password", "reset", "parcel", "late", "invoice", "login", "error", "delivery", "office", "hello", "order"];

fn harness(a: HarnessArgs) -> Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(dir.join("data"))?;
    // The same workload shape as scripts/bench-promptfoo: a classification
    // message per case, three prompt templates, one assertion per case.
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("data/eval.jsonl"))?);
    let mut seed: u64 = 42;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..a.cases {
        let words: Vec<&str> = (0..12).map(|_| WORDS[(next() % 16) as usize]).collect();
        let label = LABELS[(next() % 5) as usize];
        writeln!(f, "{}", json!({"id": format!("case-{i}"), "input": format!("Customer {i}: {}", words.join(" ")), "expected": label}))?;
    }
    f.flush()?;
    let mut yaml = String::from("version: 1\ntask:\n  name: bench-harness\n  kind: classification\n  labels: [billing, technical, account, shipping, other]\nprompts:\n");
    for p in 0..a.prompts {
        yaml.push_str(&format!("  - id: p{p}\n    template: \"Variant {p}. Route this message to a team.\\nMessage: {{{{ input }}}}\\nTeam:\"\n"));
    }
    yaml.push_str("providers:\n  - id: echo\ndata:\n  eval: data/eval.jsonl\nassert:\n  - type: contains\n    value: \"{{ expected }}\"\n");
    let cfg = dir.join("tunegate.yaml");
    std::fs::write(&cfg, yaml)?;

    let t0 = Instant::now();
    let task = tunegate_core::Task::load(&cfg)?;
    let prep = tunegate_run::prepare(task)?;
    let load_s = t0.elapsed().as_secs_f64();
    let env = |_: &str| None;
    let providers = prep.task.file.providers.iter().map(|s| Ok((tunegate_providers::build(s, &prep.task.dir, &env)?, s.clone()))).collect::<Result<Vec<_>>>()?;
    let mut opts = RunOptions::new(tunegate_store::store_path_for(&cfg));
    opts.concurrency = a.concurrency;
    let rt = crate::commands::runtime()?;
    let t1 = Instant::now();
    let outcome = rt.block_on(tunegate_run::run(&prep, providers, opts, vec![]))?;
    let run_s = t1.elapsed().as_secs_f64();
    let evals = outcome.completed;
    let out = json!({
        "bench": "harness",
        "tool": "tunegate",
        "version": env!("CARGO_PKG_VERSION"),
        "cases": a.cases,
        "prompts": a.prompts,
        "evals": evals,
        "concurrency": a.concurrency,
        "load_s": load_s,
        "run_s": run_s,
        "wall_s": t0.elapsed().as_secs_f64(),
        "evals_per_s": evals as f64 / t0.elapsed().as_secs_f64(),
        "peak_rss_mb": peak_rss_mb(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}
