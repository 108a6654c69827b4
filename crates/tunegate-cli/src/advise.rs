//! `tunegate advise`: the advisor's report as text, Markdown, JSON or HTML.
//! The evidence is gathered by `tunegate_run::evidence` and judged by the
//! rules in `tunegate_core::advise`; this file only prints.

use crate::args::Format;
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;
use tunegate_core::advise;

#[derive(Args)]
pub struct AdviseArgs {
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    /// The run to judge (id, prefix, `latest`); default: the task's latest eval run.
    #[arg(long)]
    pub run: Option<String>,
    #[arg(long, default_value = "text", value_parser = crate::args::formats(&[Format::Text, Format::Json, Format::Md, Format::Html]))]
    pub format: Format,
}

pub fn run(a: AdviseArgs) -> Result<ExitCode> {
    let path = a.task.path();
    let task = a.task.load()?;
    let ev = tunegate_run::evidence::gather(&task, &path, a.run.as_deref())?;
    let advice = advise::advise(&ev, task.file.advise.as_ref()).map_err(|m| anyhow::Error::new(tunegate_core::InputError::new(&path, m).field("advise")))?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&advice)?),
        Format::Md => print!("{}", tunegate_core::advice_report::markdown(&advice, &path)),
        Format::Html => print!("{}", crate::html::advice_report(&advice)),
        _ => print!("{}", tunegate_core::advice_report::text(&advice, &path)),
    }
    Ok(ExitCode::SUCCESS)
}
