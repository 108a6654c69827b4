//! The `tunegate` command. Thin on purpose: parsing arguments, progress
//! bars and output formats live here; everything else is in the libraries.

mod adapter;
mod advise;
mod args;
mod batch;
mod bench;
mod compare;
mod data;
mod eval;
mod html;
mod init;
mod label;
mod label_session;
mod label_tui;
mod model;
mod quickstart;
mod review;
mod review_session;
mod review_tui;
mod serve;
mod tune;
mod output;
mod prompt;
mod progress;

use clap::{Parser, Subcommand};

/// mimalloc: glibc malloc's arena locks showed up as the top cost of the
/// harness (many small allocations across the runner, writer and workers).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's own option setter (the C library the allocator links).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Output to a closed pipe (`tunegate show latest | head -1`) ends the
/// command quietly with 141, the code a shell gives a filter ended by
/// SIGPIPE, instead of `println!`'s panic. SIGPIPE itself stays ignored (as
/// Rust sets it): an `exec:` provider that exits without reading its stdin,
/// or a serve client that hangs up, must not end tunegate.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload().downcast_ref::<String>().map(String::as_str).unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

/// `mi_option_purge_delay` in mimalloc v3's option enum (mimalloc.h).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps freed memory mapped instead of returning it to the OS. Tensor code
/// frees and reallocates buffers of the same few large sizes at every layer
/// and step; with the default 10 ms purge delay each reuse faulted in fresh
/// (zeroed, huge) pages: 41% of a LoRA training step's time went to the
/// kernel clearing pages. The cost is that the resident size stays at its
/// peak instead of shrinking between steps; the peak itself does not grow.
fn keep_freed_memory() {
    // SAFETY: sets one integer option; mimalloc reads options at use time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tunegate",
    version,
    about = "Evaluate prompts first. Fine-tune when the evidence says so.",
    long_about = "tunegate evaluates prompt variants against expected outputs, prepares fine-tuning data, \
fine-tunes, and compares before/after with honest statistics.\n\n\
Start with `tunegate init DIR`, then `tunegate eval -c DIR/tunegate.yaml`.",
    after_help = "Exit codes: 0 all cases passed, 1 failures (or a --threshold not met), 2 bad input or usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scaffold a task (tunegate.yaml, data/, prompts/) that runs as it is.
    Init(init::InitArgs),
    /// Evaluate every prompt x provider x case; cached, concurrent, resumable.
    Eval(eval::EvalArgs),
    /// Before/after on the same cases: McNemar, paired bootstrap, regressions.
    Compare(compare::CompareArgs),
    /// List the runs in the store, newest first.
    Runs(eval::RunsArgs),
    /// Show one run case by case, failures first.
    Show(eval::ShowArgs),
    /// The decision report: keep prompting, add retrieval, fix the data, or fine-tune.
    Advise(advise::AdviseArgs),
    /// The whole loop on the bundled example, offline, on the embedded model.
    Quickstart(quickstart::QuickstartArgs),
    /// Fine-tune: LoRA on the embedded model, or a job on an OpenAI-compatible API.
    Tune(tune::TuneArgs),
    /// OpenAI-compatible server for the local model (loopback by default).
    Serve(serve::ServeArgs),
    /// Model files: fetch, list, info, tokenize, generate.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Benchmarks that print JSON (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Fine-tuning data: check (duplicates, conflicts, leakage), split, export.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Prompt lab: minimize a prompt, sweep few-shot examples, measure fragility.
    #[command(subcommand)]
    Prompt(prompt::PromptCommand),
    /// Tuned adapters: export to llama.cpp's LoRA GGUF.
    #[command(subcommand)]
    Adapter(adapter::AdapterCommand),
    /// Blind side-by-side review of two runs' outputs by a person; resumable.
    Review(review::ReviewArgs),
    /// Write expected outputs for raw inputs, fast: a terminal UI (or line mode); resumable.
    Label(label::LabelArgs),
    /// One fine-tuning job of `serve`, in its own process (internal).
    #[command(hide = true)]
    ServeTrain { args: Vec<String> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not for serve: its training runs in a child process (which keeps
    // freed memory), and the server itself should give back what a tuned
    // model it unloads held.
    if !matches!(cli.command, Command::Serve(_)) {
        keep_freed_memory();
    }
    quiet_on_closed_pipe();
    let result = match cli.command {
        Command::Init(a) => init::init(a),
        Command::Eval(a) => eval::eval(a),
        Command::Runs(a) => eval::runs(a),
        Command::Compare(a) => compare::run(a),
        Command::Show(a) => eval::show(a),
        Command::Advise(a) => advise::run(a),
        Command::Bench(b) => bench::run(b),
        Command::Data(d) => data::run(d),
        Command::Prompt(p) => prompt::run(p),
        Command::Adapter(a) => adapter::run(a),
        Command::Quickstart(a) => quickstart::run(a),
        Command::Model(m) => model::run(m),
        Command::Serve(a) => serve::run(a),
        Command::Tune(a) => tune::run(a),
        Command::Review(a) => review::run(a),
        Command::Label(a) => label::run(a),
        Command::ServeTrain { args } => return ExitCode::from(tunegate_serve::ft::train_child(&args) as u8),
    };
    match result {
        Ok(code) => code,
        // A write to stdout after the reader left (`write!` rather than `println!`).
        Err(e) if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) => ExitCode::from(141),
        Err(e) => {
            let code = args::exit_code_for(&e);
            eprintln!("error: {}", args::one_line(&e));
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command's definition (unique names, valid defaults) only
    /// when that command is parsed; this checks every one at once.
    #[test]
    fn every_command_definition_is_valid() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
