//! `tunegate label INPUTS`: write expected outputs fast, one input at a
//! time, in a terminal UI or line by line over a pipe. The session logic
//! (append at once, provenance, undo, resume, the eval/examples guard) is
//! `tunegate_core::label`; this module is the two front ends and the
//! suggestions.

use crate::label_session::{after, err, progress_line, show_value, suggestion, Suggester};
use anyhow::Result;
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tunegate_core::label::{key_for_label, LabelError, Role, Session, Status};
use tunegate_core::TaskKind;

#[derive(Args)]
pub struct LabelArgs {
    /// Raw inputs to label: JSONL (`{"input": ...}` or `{"vars": ...}`) or CSV.
    pub inputs: PathBuf,
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    /// The data set the answers are appended to.
    #[arg(long, value_parser = ["examples", "eval"], default_value = "examples")]
    pub to: String,
    /// Pre-fill each answer with a model's output: a prompt and a provider
    /// of the task file (calls are cached like eval's).
    #[arg(long, value_name = "PROMPT@PROVIDER")]
    pub suggest: Option<String>,
    /// Line by line on stdin/stdout instead of the terminal UI (the
    /// default when stdin or stdout is not a terminal).
    #[arg(long)]
    pub no_tui: bool,
    /// Who is labelling, for the provenance file (default $USER).
    #[arg(long)]
    pub who: Option<String>,
}

pub fn run(a: LabelArgs) -> Result<ExitCode> {
    let path = a.task.path();
    let task = a.task.load()?;
    let role = if a.to == "eval" { Role::Eval } else { Role::Examples };
    let who = a.who.clone().or_else(|| std::env::var("USER").ok()).or_else(|| std::env::var("LOGNAME").ok()).unwrap_or_else(|| "unknown".into());
    let mut session = Session::open(&task, &a.inputs, role, &who).map_err(err)?;
    let mut suggester = match &a.suggest {
        Some(s) => Some(Suggester::new(&task, s, &a.inputs, &path)?),
        None => None,
    };
    let tui = !a.no_tui && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if tui {
        crate::label_tui::run(&mut session, &mut suggester)?;
    } else {
        let stdin = std::io::stdin();
        line_mode(&mut session, &mut suggester, &mut stdin.lock(), &mut std::io::stdout().lock())?;
    }
    let c = session.counts();
    println!(
        "{} of {} inputs answered, {} skipped, {} refused (already in the other set); answers in {}, provenance in {}",
        c.labelled,
        c.total,
        c.skipped,
        c.blocked,
        session.target.display(),
        session.provenance.display()
    );
    Ok(ExitCode::SUCCESS)
}

const LINE_HELP: &str = ":s skip, :u undo, :b back, :/TEXT search, :q quit";

/// The line-oriented front end: works over a pipe, one answer per line.
pub fn line_mode(session: &mut Session, suggester: &mut Option<Suggester>, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<()> {
    let mut pos = session.resume_position();
    if pos.is_none() {
        writeln!(out, "Every input in {} is answered, skipped or refused.", session.inputs_path.display())?;
        return Ok(());
    }
    let mut line = String::new();
    while let Some(i) = pos {
        let case = &session.inputs[i];
        writeln!(out, "\n[{}] {}:{}", progress_line(session, i), session.inputs_path.display(), case.line)?;
        writeln!(out, "Input:\n  {}", case.input_text().replace('\n', "\n  "))?;
        let status = session.status(i);
        match &status {
            Status::Labelled(v) => writeln!(out, "Answered: {} (a new answer replaces it)", show_value(v))?,
            Status::Skipped => writeln!(out, "Skipped earlier")?,
            Status::Blocked(why) => writeln!(out, "Refused: {why}; :s to go on")?,
            Status::Pending => {}
        }
        let (sugg, note) = suggestion(session, suggester, i);
        if let Some(n) = note {
            writeln!(out, "({n})")?;
        }
        if let Some(v) = &sugg {
            writeln!(out, "Suggestion: {}", show_value(v))?;
        }
        match session.kind {
            TaskKind::Classification => {
                let keys: Vec<String> = session.labels.iter().enumerate().map(|(k, l)| format!("{} {l}", key_for_label(k).unwrap_or('?'))).collect();
                writeln!(out, "Labels: {}", keys.join("  "))?;
                write!(out, "label (key or name{}; {LINE_HELP}) > ", if sugg.is_some() { ", Enter accepts the suggestion" } else { "" })?;
            }
            TaskKind::Extraction => write!(out, "answer (one JSON object{}; {LINE_HELP}) > ", if sugg.is_some() { ", Enter accepts the suggestion" } else { "" })?,
            _ => write!(out, "answer (one line, \\n for a line break{}; {LINE_HELP}) > ", if sugg.is_some() { ", Enter accepts the suggestion" } else { "" })?,
        }
        out.flush()?;
        line.clear();
        if input.read_line(&mut line)? == 0 {
            writeln!(out, "\n(end of input: stopping; run the same command to resume)")?;
            break;
        }
        let t = line.trim_end_matches(['\n', '\r']);
        match t.trim() {
            ":q" => break,
            ":s" => {
                session.skip(i).map_err(err)?;
                pos = after(session, i);
                continue;
            }
            ":u" => {
                match session.undo().map_err(err)? {
                    Some(j) => {
                        writeln!(out, "undone")?;
                        pos = Some(j);
                    }
                    None => writeln!(out, "nothing to undo")?,
                }
                continue;
            }
            ":b" => {
                pos = Some(i.saturating_sub(1));
                continue;
            }
            q if q.starts_with(":/") => {
                match session.search(i, &q[2..]) {
                    Some(j) => pos = Some(j),
                    None => writeln!(out, "no input contains {:?}", &q[2..])?,
                }
                continue;
            }
            _ => {}
        }
        let value = if t.trim().is_empty() {
            match &sugg {
                Some(v) => v.clone(),
                None => {
                    writeln!(out, "nothing to accept: type an answer")?;
                    continue;
                }
            }
        } else {
            let text = if matches!(session.kind, TaskKind::Rewrite | TaskKind::Generation) { t.replace("\\n", "\n") } else { t.to_string() };
            match session.parse_answer(&text) {
                Ok(v) => v,
                Err(e) => {
                    writeln!(out, "not saved: {e}")?;
                    continue;
                }
            }
        };
        match session.save(i, value, sugg.as_ref()) {
            Ok(()) => pos = after(session, i),
            Err(LabelError::Refused(why)) => writeln!(out, "not saved: {why}")?,
            Err(e) => return Err(err(e)),
        }
    }
    if pos.is_none() {
        writeln!(out, "\nEvery input is answered, skipped or refused.")?;
    }
    Ok(())
}

