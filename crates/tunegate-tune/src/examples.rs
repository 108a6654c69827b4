//! Training examples, from wherever they come: a task's `data.examples`
//! rendered through `tune.prompt`, or an uploaded chat JSONL file (serve's
//! fine-tuning endpoint, OpenAI's format). Both become chat messages first
//! and then prompt/completion text by the same rule, so a task tuned
//! locally and the same examples uploaded to `tunegate serve` train on the
//! same tokens.

use crate::TuneError;
use std::path::Path;
use tunegate_core::data::export::{encode, render_examples, validate, ExportFormat};
use tunegate_core::{Case, Message, Task};
use tunegate_model::lora::TrainExample;
use tunegate_model::Tokenizer;

/// One example as text: what the base model reads, and what it should write.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The messages before the answer, joined as the local provider sends
    /// them (base models have no chat template).
    pub prompt: String,
    pub completion: String,
}

impl Example {
    /// The last assistant message is the completion; everything before it
    /// is the prompt.
    pub fn from_messages(messages: &[Message]) -> Example {
        let last = messages.iter().rposition(|m| m.role == "assistant");
        let (before, completion) = match last {
            Some(i) => (&messages[..i], messages[i].content.clone()),
            None => (messages, String::new()),
        };
        Example { prompt: tunegate_core::template::flatten_messages(before), completion }
    }

    /// Token ids with the loss on the completion and the end of sequence.
    pub fn encode(&self, tok: &Tokenizer) -> TrainExample {
        TrainExample::from_text(tok, &self.prompt, &self.completion)
    }
}

/// The cases of a task's examples file that tuning trains on. `strict`
/// refuses when an eval case is among them; otherwise the examples that
/// would spoil the comparison or teach noise are left out (see
/// `tunegate_core::data::check::training_selection`) and `note` hears which.
pub fn training_cases(task: &Task, path: &Path, strict: bool, note: &mut dyn FnMut(String)) -> Result<Vec<Case>, TuneError> {
    let cases = tunegate_core::load_cases(path)?;
    if strict {
        tunegate_core::data::refuse_on_leakage(task)?;
        return Ok(cases);
    }
    let sel = tunegate_core::data::check::training_selection(task, path, &cases)?;
    if let Some(s) = sel.summary(path) {
        note(s);
    }
    Ok(cases.into_iter().filter(|c| sel.keeps(c.line)).collect())
}

/// Cases rendered through `tune.prompt`, each with the case it came from
/// (the validation metric scores against it).
pub fn render(task: &Task, path: &Path, cases: Vec<Case>) -> Result<Vec<(Example, Case)>, TuneError> {
    let rendered = render_examples(task, &cases, path)?;
    Ok(rendered.into_iter().zip(cases).map(|(e, c)| (Example::from_messages(&e.messages), c)).collect())
}

/// Cases as OpenAI chat JSONL, checked as a fine-tuning API would check it
/// (the remote backend uploads this text).
pub fn as_chat_jsonl(task: &Task, path: &Path, cases: &[Case]) -> Result<String, TuneError> {
    let mut text = String::new();
    for e in render_examples(task, cases, path)? {
        text.push_str(&encode(ExportFormat::OpenaiChat, &e.messages).to_string());
        text.push('\n');
    }
    check_chat_jsonl(&text).map_err(|(line, m)| TuneError::Usage(format!("{}: the training data fails a check on example {line}: {m} (see `tunegate data export`)", path.display())))?;
    Ok(text)
}

/// OpenAI's checks on a chat JSONL training file; the first problem as
/// (line, message).
pub fn check_chat_jsonl(text: &str) -> Result<(), (usize, String)> {
    let v = validate(ExportFormat::OpenaiChat, text, &tunegate_core::data::CharEstimate, 65_536);
    match v.problems.first() {
        Some(p) => Err((p.line, format!("`{}`: {} ({} problems)", p.check, p.message, v.problems.len()))),
        None => Ok(()),
    }
}

/// An uploaded chat JSONL file (already checked at upload) as examples.
pub fn from_chat_jsonl(text: &str) -> Result<Vec<Example>, (usize, String)> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| (i + 1, e.to_string()))?;
        let messages: Vec<Message> = v["messages"]
            .as_array()
            .map(|a| a.iter().map(|m| Message::new(m["role"].as_str().unwrap_or("user"), m["content"].as_str().unwrap_or(""))).collect())
            .unwrap_or_default();
        out.push(Example::from_messages(&messages));
    }
    Ok(out)
}
