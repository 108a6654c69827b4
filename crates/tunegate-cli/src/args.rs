//! What every command shares, defined once: the task-file flag, run flags,
//! the one output-format type, the concurrency default, usage errors and
//! exit codes, the async runtime. Command files import from here; nothing
//! here imports a command.

use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tunegate_core::{InputError, Task};
use tunegate_run::RunError;
use tunegate_store::{store_path_for, Store, StoreError};

/// A mistake in how tunegate was called (exit 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Bad input or usage exits 2; anything else that stops a command exits 1.
pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<InputError>() || cause.is::<UsageError>() {
            return 2;
        }
        if let Some(r) = cause.downcast_ref::<RunError>() {
            if matches!(r, RunError::Input(_) | RunError::Resume(_) | RunError::Provider(_) | RunError::Usage(_)) {
                return 2;
            }
        }
        if let Some(StoreError::NoRun(_) | StoreError::Ambiguous(_) | StoreError::BadSelector(_)) = cause.downcast_ref::<StoreError>() {
            return 2;
        }
        if cause.is::<tunegate_providers::ProviderError>() {
            return 2;
        }
        if let Some(t) = cause.downcast_ref::<tunegate_tune::TuneError>() {
            if t.is_input() {
                return 2;
            }
        }
    }
    1
}

/// The error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = vec![];
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// The async runtime for runs: one worker thread. The runner's own work per
/// case (render, cache lookup, scoring) is light; providers wait on I/O or
/// run on threads of their own (exec scoring, the local model), and the
/// store writer has its own thread. A second worker only added cross-thread
/// wake-ups (measured: the harness benchmark's top cost).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()
}

/// Requests in flight at once, for every command that calls providers. The
/// local model decodes up to 16 sequences in one batch, so 16 fills it; for
/// HTTP APIs it is a moderate load whose 429s the retries absorb.
pub const CONCURRENCY: usize = 16;

/// A count that must be at least 1 (`--concurrency 0` would never start).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    s.parse::<usize>().map_err(|e| e.to_string()).and_then(|n| if n >= 1 { Ok(n) } else { Err("must be at least 1".into()) })
}

/// How a command calls providers: the flags of `eval` and the prompt lab.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Cases in flight at once, across providers.
    #[arg(long, default_value_t = CONCURRENCY, value_parser = at_least_one)]
    pub concurrency: usize,
    /// Call providers even when the cache has the answer.
    #[arg(long)]
    pub no_cache: bool,
    /// Retries after the first attempt on 429 / 5xx / timeouts / dropped connections.
    #[arg(long, default_value_t = 4)]
    pub max_retries: u32,
    /// No progress bar (and no step lines).
    #[arg(long)]
    pub no_progress: bool,
}

/// `-c FILE`: the task file a command works on.
#[derive(Args, Clone, Debug, Default)]
pub struct TaskArgs {
    /// Task file (default: ./tunegate.yaml).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl TaskArgs {
    pub fn path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| PathBuf::from("tunegate.yaml"))
    }

    /// The task, checked whole: the file itself, and its `tune:` section by
    /// the settings resolution that tuning uses.
    pub fn load(&self) -> Result<Task> {
        let task = Task::load(&self.path())?;
        tunegate_tune::settings::check_task(&task)?;
        Ok(task)
    }

    pub fn store_path(&self) -> PathBuf {
        store_path_for(&self.path())
    }

    /// The run store of a task evaluated at least once; a usage error saying
    /// what to run first otherwise.
    pub fn store(&self) -> Result<Store> {
        let sp = self.store_path();
        if !sp.exists() {
            return Err(usage(format!("no run store at {} yet: run `tunegate eval -c {}` first", sp.display(), self.path().display())));
        }
        Ok(Store::open(&sp)?)
    }
}

/// Every output format tunegate writes; each command accepts the ones that
/// make sense for it ([`formats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Jsonl,
    Csv,
    Junit,
    /// Markdown.
    Md,
    /// One self-contained HTML file.
    Html,
}

/// What runs, cases and comparisons can be written as.
pub const REPORT_FORMATS: &[Format] = &[Format::Text, Format::Json, Format::Jsonl, Format::Csv, Format::Junit, Format::Html];
/// Reports that are a text or one JSON document.
pub const TEXT_OR_JSON: &[Format] = &[Format::Text, Format::Json];

/// A `--format` parser that accepts only `allowed` (and lists them in
/// `--help` and in the error for any other value).
pub fn formats(allowed: &'static [Format]) -> FormatParser {
    FormatParser(allowed)
}

#[derive(Clone)]
pub struct FormatParser(&'static [Format]);

impl clap::builder::TypedValueParser for FormatParser {
    type Value = Format;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<Format, clap::Error> {
        let names = clap::builder::PossibleValuesParser::new(self.0.iter().filter_map(|f| f.to_possible_value()));
        let s = names.parse_ref(cmd, arg, value)?;
        Ok(Format::from_str(&s, true).unwrap_or(Format::Text))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(self.0.iter().filter_map(|f| f.to_possible_value())))
    }
}
