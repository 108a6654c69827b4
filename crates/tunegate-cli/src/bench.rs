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
    /// The local model: prefill and decode tokens/s, batched eval cases/s, peak RSS.
    Model(ModelBenchArgs),
    /// LoRA training on the local model: tokens/s and peak RSS.
    Tune(TuneBenchArgs),
}

#[derive(Args)]
pub struct TuneBenchArgs {
    #[arg(long, default_value = "gemma-3-270m")]
    pub model: String,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per example.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// The loss covers the last N tokens of each example (its completion);
    /// 0 puts it on every position.
    #[arg(long, default_value_t = 4)]
    pub loss_tokens: usize,
    /// Timed optimizer steps (after one untimed warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA target modules, comma-separated.
    #[arg(long, default_value = "q,v")]
    pub targets: String,
    /// Split each step into this many passes (gradient accumulation) to
    /// bound memory; the step still sees `batch` examples.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Recompute each layer's activations in the backward pass (less
    /// memory, more compute), as `tune.gradient_checkpointing`.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Also write the token ids trained on (JSON), so a peer
    /// (scripts/bench-tune-peft.py) trains on exactly the same data.
    #[arg(long)]
    pub dump_data: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct ModelBenchArgs {
    #[arg(long, default_value = "gemma-3-270m")]
    pub model: String,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 103)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Classification cases for the eval-throughput measurement.
    #[arg(long, default_value_t = 48)]
    pub cases: usize,
    /// Sequences decoded together in the batched measurement.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
}

#[derive(Args)]
pub struct HarnessArgs {
    #[arg(long, default_value_t = 20000)]
    pub cases: usize,
    #[arg(long, default_value_t = 3)]
    pub prompts: usize,
    #[arg(long, default_value_t = crate::args::CONCURRENCY, value_parser = crate::args::at_least_one)]
    pub concurrency: usize,
    /// Keep the generated task here instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

pub fn run(c: BenchCommand) -> Result<ExitCode> {
    match c {
        BenchCommand::Harness(a) => harness(a),
        BenchCommand::Model(a) => model_bench(a),
        BenchCommand::Tune(a) => tune_bench(a),
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
        let mut words: Vec<&str> = (0..12).map(|_| WORDS[(next() % 16) as usize]).collect();
        let label = LABELS[(next() % 5) as usize];
        // About 70% of messages name their team, so the assertion both
        // passes and fails (as in the promptfoo workload).
        if next() % 10 < 7 {
            words.push(label);
        }
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
    let providers = prep.task.file.providers.iter().map(|s| Ok(tunegate_run::build_provider(s, &prep.task.dir, &tunegate_store::store_path_for(&cfg))?)).collect::<Result<Vec<_>>>()?;
    let mut opts = RunOptions::new(tunegate_store::store_path_for(&cfg));
    opts.concurrency = a.concurrency;
    let rt = crate::args::runtime()?;
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

const ROUTING: &str = "You route customer messages to the team that handles them. The teams are billing (charges, refunds, invoices), technical (apps, devices, errors), account (sign-in, profiles, household members), shipping (deliveries, returns, damaged parcels) and other.\n\n";
const MESSAGES: [&str; 12] = [
    "I was charged twice for my March subscription.",
    "The app crashes every time I open the settings page.",
    "I forgot my password and the reset email never arrives.",
    "My package has not arrived and tracking has not moved in a week.",
    "Do you have an office in Lisbon?",
    "The invoice shows the wrong VAT number.",
    "My files stopped syncing between my laptop and phone.",
    "How do I change the email address on my account?",
    "The parcel arrived damaged and the box was soaked.",
    "Can I get a refund for the annual plan I bought yesterday?",
    "The thermostat shows error E42 after the update.",
    "Please add my partner to our household account.",
];
const TEAMS: [&str; 12] = ["billing", "technical", "account", "shipping", "other", "billing", "technical", "account", "shipping", "billing", "technical", "account"];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Prefill and decode as llama.cpp's own benchmark does them (one prompt
/// in one call, then one token per call), plus the eval-shaped workload:
/// many short classification prompts, one at a time and batched.
fn model_bench(a: ModelBenchArgs) -> Result<ExitCode> {
    use tunegate_model::gemma3::SeqInput;
    use tunegate_model::sample::argmax;
    let path = tunegate_model::resolve_model(&a.model).map_err(|e| crate::args::usage(e.to_string()))?;
    let t0 = Instant::now();
    let lm = tunegate_model::LocalModel::load(&path)?;
    let load_s = t0.elapsed().as_secs_f64();
    let m = &lm.model;
    let mut text = String::from(ROUTING);
    while lm.tokenizer.encode(&text, true, false).len() < a.prompt_tokens {
        for (msg, t) in MESSAGES.iter().zip(TEAMS) {
            text.push_str(&format!("Message: {msg}\nTeam: {t}\n\n"));
        }
    }
    let prompt: Vec<u32> = lm.tokenizer.encode(&text, true, false)[..a.prompt_tokens].to_vec();
    let (mut pre, mut dec) = (vec![], vec![]);
    for run in 0..4 {
        let mut cache = m.new_cache();
        let t = Instant::now();
        let mut logits = m.forward(&mut [SeqInput { tokens: &prompt, cache: &mut cache, all_logits: false, prompt_len: prompt.len() }])?.remove(0).to_vec1::<f32>()?;
        let p = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..a.decode_tokens {
            let id = argmax(&logits);
            logits = m.forward(&mut [SeqInput { tokens: &[id], cache: &mut cache, all_logits: false, prompt_len: prompt.len() }])?.remove(0).to_vec1::<f32>()?;
        }
        let d = t.elapsed().as_secs_f64();
        if run > 0 {
            // The first run warms caches and the allocator, as llama.cpp's bench does.
            pre.push(a.prompt_tokens as f64 / p);
            dec.push(a.decode_tokens as f64 / d);
        }
    }
    // Eval-shaped: short few-shot-free classification prompts, 4 new tokens.
    let prompts: Vec<Vec<u32>> = (0..a.cases).map(|i| lm.tokenizer.encode(&format!("{ROUTING}Message: {} (case {i})\nTeam:", MESSAGES[i % MESSAGES.len()]), true, false)).collect();
    let gp = tunegate_model::GenParams { max_tokens: 4, stop: vec!["\n".into()], ..Default::default() };
    let t = Instant::now();
    for p in &prompts {
        lm.generate_batch(&[(p.clone(), gp.clone())])?;
    }
    let seq_cps = a.cases as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for chunk in prompts.chunks(a.batch.max(1)) {
        let batch: Vec<(Vec<u32>, tunegate_model::GenParams)> = chunk.iter().map(|p| (p.clone(), gp.clone())).collect();
        lm.generate_batch(&batch)?;
    }
    let batch_cps = a.cases as f64 / t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "bench": "model",
            "tool": "tunegate",
            "model": path.file_name().map(|f| f.to_string_lossy().to_string()),
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "load_s": load_s,
            "prompt_tokens": a.prompt_tokens,
            "prefill_tok_s": median(pre),
            "decode_tokens": a.decode_tokens,
            "decode_tok_s": median(dec),
            "eval_cases": a.cases,
            "eval_prompt_tokens_mean": prompts.iter().map(|p| p.len()).sum::<usize>() as f64 / prompts.len() as f64,
            "eval_sequential_cases_per_s": seq_cps,
            "eval_batched_cases_per_s": batch_cps,
            "batch": a.batch,
            "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Training throughput on fixed-shape data: every example is `seq_len`
/// tokens of the bundled example's real text (messages and their teams,
/// one after another), the loss on its last `loss_tokens`. Fixed shapes
/// make the figure comparable with a peer given the same ids.
fn tune_bench(a: TuneBenchArgs) -> Result<ExitCode> {
    use tunegate_model::lora::TrainExample;
    use tunegate_tune::events::{TrainEvent, TrainSink};
    if a.batch == 0
        || a.seq_len < 2
        || a.steps == 0
        || a.grad_accum == 0
        || a.batch % a.grad_accum != 0
    {
        anyhow::bail!(crate::args::usage(
            "need --batch >= 1 divisible by --grad-accum, --seq-len >= 2 and --steps >= 1"
        ));
    }
    let path = tunegate_model::resolve_model(&a.model)
        .map_err(|e| crate::args::usage(e.to_string()))?;
    let g = tunegate_model::GgufFile::open(&path)?;
    let tok = tunegate_model::Tokenizer::from_gguf(&g)?;
    let examples_text = crate::quickstart::EXAMPLE
        .iter()
        .find(|(n, _)| *n == "data/examples.jsonl")
        .map(|(_, t)| *t)
        .unwrap_or_default();
    let mut text = String::new();
    for line in examples_text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        text.push_str(&format!(
            "Message: {}\nTeam: {}\n\n",
            v["input"].as_str().unwrap_or(""),
            v["expected"].as_str().unwrap_or("")
        ));
    }
    let stream = tok.encode(&text, false, false);
    let n = a.batch * (a.steps + 1);
    let body = a.seq_len - 1;
    let loss_from = if a.loss_tokens == 0 {
        1
    } else {
        a.seq_len.saturating_sub(a.loss_tokens).max(1)
    };
    let examples: Vec<TrainExample> = (0..n)
        .map(|i| {
            let mut t = vec![tok.bos_id().unwrap_or(2)];
            t.extend((0..body).map(|j| stream[(i * body + j) % stream.len()]));
            TrainExample {
                tokens: t,
                loss_from,
            }
        })
        .collect();
    if let Some(p) = &a.dump_data {
        // In the order training visits them (seed 0, epoch 0), so the peer's
        // batches are ours and its first loss (the untrained base, B = 0)
        // must equal ours: a check of both forward passes.
        let order = tunegate_model::train::epoch_order(examples.len(), 0, 0);
        let data = json!({"seq_len": a.seq_len, "batch": a.batch, "rank": a.rank, "targets": a.targets, "loss_from": loss_from, "examples": order.iter().map(|&i| &examples[i].tokens).collect::<Vec<_>>()});
        std::fs::write(p, data.to_string())?;
    }
    let targets: Vec<String> = a.targets.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    // A fixed shape, not the product defaults: one epoch at a constant
    // rate, alpha = 2 x rank, no dropout, so the peer trains the same steps.
    let settings = tunegate_tune::Settings::from_overrides(&tunegate_tune::Overrides {
        rank: Some(a.rank),
        alpha: Some(2.0 * a.rank as f64),
        dropout: Some(0.0),
        targets: Some(targets),
        epochs: Some(1),
        batch_size: Some(a.batch / a.grad_accum),
        grad_accum: Some(a.grad_accum),
        gradient_checkpointing: Some(a.gradient_checkpointing),
        learning_rate: Some(1e-4),
        warmup_steps: Some(0),
        lr_schedule: Some("constant".into()),
        prefix: "--",
        ..Default::default()
    })?;
    let t0 = Instant::now();
    let mut model = tunegate_tune::local::load_model(&path, &settings)?;
    let load_s = t0.elapsed().as_secs_f64();
    /// The benchmark's sink: when each step ended, its tokens and loss.
    struct Marks(Vec<(Instant, usize, f64)>);
    impl TrainSink for Marks {
        fn event(&mut self, e: &TrainEvent<'_>) {
            if let TrainEvent::Step { info, .. } = e {
                self.0.push((Instant::now(), info.tokens, info.loss));
            }
        }
    }
    let mut marks = Marks(vec![]);
    let start = Instant::now();
    let run = tunegate_tune::local::Run { job_id: "bench", train: &examples, validation: &[], checkpoint_dir: None, resumed: None, stop: None, metric: None };
    tunegate_tune::local::train(&mut model, &settings, run, &mut marks)?;
    let marks = marks.0;
    // Step 0 warms the allocator and caches; the rest are timed.
    let timed = &marks[1..];
    let secs = timed
        .last()
        .map(|m| m.0)
        .unwrap_or(start)
        .duration_since(marks[0].0)
        .as_secs_f64();
    let tokens: usize = timed.iter().map(|m| m.1).sum();
    println!(
        "{}",
        json!({
            "bench": "tune",
            "tool": "tunegate",
            "model": path.file_name().map(|f| f.to_string_lossy().to_string()),
            "threads": candle_threads(),
            "load_s": load_s,
            "batch": a.batch,
            "grad_accum": a.grad_accum,
            "gradient_checkpointing": a.gradient_checkpointing,
            "seq_len": a.seq_len,
            "loss_tokens": a.loss_tokens,
            "rank": a.rank,
            "targets": a.targets,
            "steps_timed": timed.len(),
            "step_s": marks.windows(2).map(|w| w[1].0.duration_since(w[0].0).as_secs_f64()).collect::<Vec<_>>(),
            "s_per_step": secs / timed.len().max(1) as f64,
            "train_tok_s": tokens as f64 / secs,
            "loss_first": marks.first().map(|m| m.2),
            "loss_last": marks.last().map(|m| m.2),
            "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// The thread count candle's CPU kernels use (they honour RAYON_NUM_THREADS).
fn candle_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}
