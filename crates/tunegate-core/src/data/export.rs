//! `tunegate data export`: the examples rendered through the tune prompt and
//! written in a trainer's format, then validated as the trainer would.
//!
//! Each example becomes the messages the tuned model is trained on: the tune
//! prompt's system and user messages (`tune.prompt`, the short prompt the
//! tuned model is served with) and the expected output as the assistant's
//! reply. Formats:
//!
//! | format | one line |
//! |--------|----------|
//! | `openai-chat` | `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}` |
//! | `prompt-completion` | `{"prompt": system + blank line + user, "completion": " " + expected}` |
//! | `alpaca` | `{"instruction": system (or user), "input": user (or ""), "output": expected}` |
//! | `sharegpt` | `{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}]}` |
//! | `axolotl` | the `openai-chat` lines (axolotl's `chat_template` type) plus an axolotl YAML |
//!
//! Every format has a validator that reads what was written back into
//! messages; the checks are modelled on OpenAI's chat fine-tuning data
//! preparation (the "Data preparation and analysis for chat model
//! fine-tuning" cookbook): data type, missing messages list, message missing
//! key, unrecognised key, unrecognised role, missing content, no assistant
//! message, and the per-example token limit.

use super::check::training_messages;
use super::{DataError, Distribution, TokenCounter};
use crate::dataset::Case;
use crate::error::InputError;
use crate::task::Task;
use crate::template::{flatten_messages, CompiledPrompt, Message};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    OpenaiChat,
    PromptCompletion,
    Alpaca,
    Sharegpt,
    Axolotl,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 5] =
        [ExportFormat::OpenaiChat, ExportFormat::PromptCompletion, ExportFormat::Alpaca, ExportFormat::Sharegpt, ExportFormat::Axolotl];

    pub fn name(&self) -> &'static str {
        match self {
            ExportFormat::OpenaiChat => "openai-chat",
            ExportFormat::PromptCompletion => "prompt-completion",
            ExportFormat::Alpaca => "alpaca",
            ExportFormat::Sharegpt => "sharegpt",
            ExportFormat::Axolotl => "axolotl",
        }
    }
}

/// One example ready to export: its source line and training messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub line: usize,
    pub messages: Vec<Message>,
}

/// Renders every case through `tune.prompt`. A task without a `tune:`
/// section, or a case without an expected output, is an input error: there
/// is nothing to train on.
pub fn render_examples(task: &Task, cases: &[Case], file: &Path) -> Result<Vec<Example>, DataError> {
    let tune = task.file.tune.as_ref().ok_or_else(|| {
        InputError::new(&task.path, "`data export` renders examples through tune.prompt, and the task has no `tune:` section")
            .field("tune")
            .hint("add `tune: { base: local:gemma-3-270m, prompt: PROMPT_ID }`")
    })?;
    let src = task
        .prompt_sources
        .iter()
        .find(|p| p.id == tune.prompt)
        .ok_or_else(|| InputError::new(&task.path, format!("no prompt with id `{}`", tune.prompt)).field("tune.prompt"))?;
    let prompt = CompiledPrompt::compile(task, src, Some(cases))?;
    let mut out = Vec::with_capacity(cases.len());
    for c in cases {
        if c.expected_text().map(|e| e.trim().is_empty()).unwrap_or(true) {
            return Err(InputError::new(file, "no expected output to train on").line(c.line).field("expected").hint("every example needs the output you want").into());
        }
        out.push(Example { line: c.line, messages: training_messages(&prompt, c, file)? });
    }
    Ok(out)
}

fn content_of<'a>(m: &'a [Message], role: &str) -> Option<&'a str> {
    m.iter().find(|x| x.role == role).map(|x| x.content.as_str())
}

/// The prompt of `prompt-completion`: system and user joined by a blank
/// line, as tunegate sends them to completion models.
fn prompt_text(m: &[Message]) -> String {
    let parts: Vec<Message> = m.iter().filter(|x| x.role != "assistant").cloned().collect();
    flatten_messages(&parts)
}

/// One example as a JSON line of `format`.
pub fn encode(format: ExportFormat, m: &[Message]) -> Value {
    let answer = content_of(m, "assistant").unwrap_or("");
    match format {
        ExportFormat::OpenaiChat | ExportFormat::Axolotl => {
            json!({"messages": m.iter().map(|x| json!({"role": x.role, "content": x.content})).collect::<Vec<_>>()})
        }
        ExportFormat::PromptCompletion => {
            let prompt = prompt_text(m);
            // A completion model continues the prompt: after "Team:" it writes
            // " billing", so the target starts with the space it would generate.
            let sep = if prompt.ends_with(char::is_whitespace) || prompt.is_empty() { "" } else { " " };
            json!({"prompt": prompt, "completion": format!("{sep}{answer}")})
        }
        ExportFormat::Alpaca => match content_of(m, "system") {
            Some(sys) => json!({"instruction": sys, "input": content_of(m, "user").unwrap_or(""), "output": answer}),
            None => json!({"instruction": content_of(m, "user").unwrap_or(""), "input": "", "output": answer}),
        },
        ExportFormat::Sharegpt => {
            let turns: Vec<Value> = m
                .iter()
                .map(|x| {
                    let from = match x.role.as_str() {
                        "user" => "human",
                        "assistant" => "gpt",
                        other => other,
                    };
                    json!({"from": from, "value": x.content})
                })
                .collect();
            json!({"conversations": turns})
        }
    }
}

/// One problem found in an exported file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub line: usize,
    /// The check's name, as in OpenAI's data preparation cookbook:
    /// `data_type`, `missing_messages_list`, `message_missing_key`,
    /// `message_unrecognized_key`, `unrecognized_role`, `missing_content`,
    /// `example_missing_assistant_message`, `too_many_tokens`.
    pub check: &'static str,
    pub message: String,
}

/// What a validator found: problems, and for the lines that passed, their
/// messages and token counts.
#[derive(Debug, Clone, Default)]
pub struct Validation {
    pub problems: Vec<Problem>,
    pub examples: Vec<Vec<Message>>,
    pub tokens: Vec<usize>,
}

impl Validation {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

const CHAT_MESSAGE_KEYS: &[&str] = &["role", "content", "name", "function_call", "weight"];
const CHAT_ROLES: &[&str] = &["system", "user", "assistant", "function", "tool"];

/// Validates the text of an exported file in `format`: each line is read
/// back into messages (so every format round-trips through its validator),
/// and each example's tokens are counted against `limit`.
pub fn validate(format: ExportFormat, text: &str, counter: &dyn TokenCounter, limit: usize) -> Validation {
    let mut v = Validation::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut problems = vec![];
        let mut p = |check: &'static str, message: String| problems.push(Problem { line, check, message });
        let value: Value = match serde_json::from_str(raw) {
            Ok(x) => x,
            Err(e) => {
                p("data_type", format!("not valid JSON: {e}"));
                v.problems.append(&mut problems);
                continue;
            }
        };
        let Value::Object(obj) = value else {
            p("data_type", "each line must be a JSON object".into());
            v.problems.append(&mut problems);
            continue;
        };
        let messages = match format {
            ExportFormat::OpenaiChat | ExportFormat::Axolotl => read_chat(&obj, &mut p),
            ExportFormat::Sharegpt => read_sharegpt(&obj, &mut p),
            ExportFormat::PromptCompletion => read_fields(&obj, &["prompt", "completion"], &[], &mut p).map(|f| {
                vec![Message::new("user", f[0].clone()), Message::new("assistant", f[1].strip_prefix(' ').unwrap_or(&f[1]).to_string())]
            }),
            ExportFormat::Alpaca => read_fields(&obj, &["instruction", "output"], &["input"], &mut p).map(|f| {
                let input = obj.get("input").and_then(|x| x.as_str()).unwrap_or("");
                if input.is_empty() {
                    vec![Message::new("user", f[0].clone()), Message::new("assistant", f[1].clone())]
                } else {
                    vec![Message::new("system", f[0].clone()), Message::new("user", input), Message::new("assistant", f[1].clone())]
                }
            }),
        };
        // The readers return messages only for lines without problems.
        if let Some(m) = messages {
            let n = counter.count(&m);
            if n > limit {
                let est = if counter.is_estimate() { " (estimated)" } else { "" };
                p("too_many_tokens", format!("{n} tokens{est}, over the limit of {limit} per example"));
            } else {
                v.examples.push(m);
                v.tokens.push(n);
            }
        }
        v.problems.append(&mut problems);
    }
    v
}

fn read_chat(obj: &Map<String, Value>, p: &mut impl FnMut(&'static str, String)) -> Option<Vec<Message>> {
    let Some(Value::Array(list)) = obj.get("messages") else {
        p("missing_messages_list", "no `messages` list".into());
        return None;
    };
    if list.is_empty() {
        p("missing_messages_list", "the `messages` list is empty".into());
        return None;
    }
    let mut out = vec![];
    let mut ok = true;
    for (k, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            p("data_type", format!("message {} is not an object", k + 1));
            ok = false;
            continue;
        };
        for key in ["role", "content"] {
            if !m.contains_key(key) {
                p("message_missing_key", format!("message {} has no `{key}`", k + 1));
                ok = false;
            }
        }
        for key in m.keys() {
            if !CHAT_MESSAGE_KEYS.contains(&key.as_str()) {
                p("message_unrecognized_key", format!("message {} has an unrecognised key `{key}`", k + 1));
                ok = false;
            }
        }
        let role = m.get("role").and_then(|r| r.as_str()).unwrap_or("");
        if m.contains_key("role") && !CHAT_ROLES.contains(&role) {
            p("unrecognized_role", format!("message {} has an unrecognised role `{}`", k + 1, m["role"]));
            ok = false;
        }
        let content = m.get("content").and_then(|c| c.as_str());
        if m.contains_key("content") && content.map(|c| c.is_empty()).unwrap_or(true) && !m.contains_key("function_call") {
            p("missing_content", format!("message {} has no text content", k + 1));
            ok = false;
        }
        out.push(Message::new(role, content.unwrap_or("")));
    }
    if !list.iter().any(|m| m.get("role").and_then(|r| r.as_str()) == Some("assistant")) {
        p("example_missing_assistant_message", "no assistant message".into());
        ok = false;
    }
    ok.then_some(out)
}

fn read_sharegpt(obj: &Map<String, Value>, p: &mut impl FnMut(&'static str, String)) -> Option<Vec<Message>> {
    let Some(Value::Array(list)) = obj.get("conversations") else {
        p("missing_messages_list", "no `conversations` list".into());
        return None;
    };
    if list.is_empty() {
        p("missing_messages_list", "the `conversations` list is empty".into());
        return None;
    }
    for key in obj.keys().filter(|k| k.as_str() != "conversations") {
        p("message_unrecognized_key", format!("unrecognised key `{key}`"));
    }
    let mut out = vec![];
    let mut ok = obj.len() == 1;
    for (k, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            p("data_type", format!("turn {} is not an object", k + 1));
            ok = false;
            continue;
        };
        for key in ["from", "value"] {
            if !m.contains_key(key) {
                p("message_missing_key", format!("turn {} has no `{key}`", k + 1));
                ok = false;
            }
        }
        for key in m.keys() {
            if !["from", "value", "weight"].contains(&key.as_str()) {
                p("message_unrecognized_key", format!("turn {} has an unrecognised key `{key}`", k + 1));
                ok = false;
            }
        }
        let role = match m.get("from").and_then(|r| r.as_str()) {
            Some("human") => "user",
            Some("gpt") => "assistant",
            Some("system") => "system",
            _ => {
                if m.contains_key("from") {
                    p("unrecognized_role", format!("turn {} has an unrecognised `from` {} (system, human or gpt)", k + 1, m["from"]));
                    ok = false;
                }
                ""
            }
        };
        let value = m.get("value").and_then(|c| c.as_str());
        if m.contains_key("value") && value.map(|c| c.is_empty()).unwrap_or(true) {
            p("missing_content", format!("turn {} has no text `value`", k + 1));
            ok = false;
        }
        out.push(Message::new(role, value.unwrap_or("")));
    }
    if !list.iter().any(|m| m.get("from").and_then(|r| r.as_str()) == Some("gpt")) {
        p("example_missing_assistant_message", "no `gpt` turn".into());
        ok = false;
    }
    ok.then_some(out)
}

/// Flat formats: `required` string fields (the last is the answer), and
/// `optional` string fields; anything else is unrecognised.
fn read_fields(obj: &Map<String, Value>, required: &[&str], optional: &[&str], p: &mut impl FnMut(&'static str, String)) -> Option<Vec<String>> {
    let mut ok = true;
    for key in obj.keys() {
        if !required.contains(&key.as_str()) && !optional.contains(&key.as_str()) {
            p("message_unrecognized_key", format!("unrecognised key `{key}`"));
            ok = false;
        }
    }
    let mut out = vec![];
    for (i, key) in required.iter().enumerate() {
        let answer = i == required.len() - 1;
        match obj.get(*key) {
            None if answer => {
                p("example_missing_assistant_message", format!("no `{key}` (the assistant's answer)"));
                ok = false;
            }
            None => {
                p("message_missing_key", format!("no `{key}`"));
                ok = false;
            }
            Some(v) => match v.as_str() {
                Some(s) if !s.trim().is_empty() => out.push(s.to_string()),
                _ => {
                    p("missing_content", format!("`{key}` has no text"));
                    ok = false;
                }
            },
        }
    }
    for key in optional {
        if let Some(v) = obj.get(*key) {
            if !v.is_string() {
                p("missing_content", format!("`{key}` must be text"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// OpenAI's default number of epochs when none is given (from its data
/// preparation cookbook): aim for 3 epochs, but make `examples x epochs` at
/// least 100 (up to 25 epochs) and at most 25,000 (down to 1 epoch).
pub fn default_epochs(n_examples: usize) -> u32 {
    const TARGET: usize = 3;
    const MIN_TARGET_EXAMPLES: usize = 100;
    const MAX_TARGET_EXAMPLES: usize = 25_000;
    const MIN_EPOCHS: usize = 1;
    const MAX_EPOCHS: usize = 25;
    let n = n_examples.max(1);
    let e = if n * TARGET < MIN_TARGET_EXAMPLES {
        MAX_EPOCHS.min(MIN_TARGET_EXAMPLES.div_ceil(n))
    } else if n * TARGET > MAX_TARGET_EXAMPLES {
        MIN_EPOCHS.max(MAX_TARGET_EXAMPLES / n)
    } else {
        TARGET
    };
    e as u32
}

/// Training prices, US $ per million trained tokens, for supervised
/// fine-tuning, as published on OpenAI's pricing page (checked 2025-06):
/// gpt-4.1 $25, gpt-4.1-mini $5, gpt-4.1-nano $1.50, gpt-4o $25,
/// gpt-4o-mini $3, gpt-3.5-turbo $8. Local training costs $0 (your own
/// hardware). Longer names first so `gpt-4.1-mini` is not read as `gpt-4.1`.
pub const TRAINING_PRICES: &[(&str, f64)] = &[
    ("gpt-4.1-nano", 1.5),
    ("gpt-4.1-mini", 5.0),
    ("gpt-4.1", 25.0),
    ("gpt-4o-mini", 3.0),
    ("gpt-4o", 25.0),
    ("gpt-3.5-turbo", 8.0),
];

/// Training price per million tokens for a target like `openai:gpt-4o-mini`
/// or `local:gemma-3-270m`; `None` when unknown.
pub fn training_price(target: &str) -> Option<f64> {
    if target.starts_with("local:") {
        return Some(0.0);
    }
    let model = target.split_once(':').map(|(_, m)| m).unwrap_or(target);
    TRAINING_PRICES.iter().find(|(name, _)| model.starts_with(name)).map(|(_, p)| *p)
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportStats {
    pub examples: usize,
    pub messages: Distribution,
    pub tokens: Distribution,
    pub tokens_estimated: bool,
    pub limit: usize,
    pub epochs: u32,
    /// `--epochs`, `tune.epochs`, or `default heuristic`.
    pub epochs_source: String,
    /// Tokens billed: each example's tokens (capped at the limit) x epochs.
    pub billed_tokens: u64,
    pub price_per_mtok: Option<f64>,
    pub cost_usd: Option<f64>,
}

/// Statistics of a validated export. `epochs`: the chosen epochs and their
/// source, or `None` for OpenAI's default heuristic.
pub fn stats(v: &Validation, counter: &dyn TokenCounter, limit: usize, epochs: Option<(u32, &str)>, price_per_mtok: Option<f64>) -> ExportStats {
    let msgs: Vec<usize> = v.examples.iter().map(|m| m.len()).collect();
    let (epochs, source) = match epochs {
        Some((e, s)) => (e, s.to_string()),
        None => (default_epochs(v.examples.len()), "OpenAI's default heuristic".to_string()),
    };
    let per_epoch: u64 = v.tokens.iter().map(|&t| t.min(limit) as u64).sum();
    let billed = per_epoch * epochs as u64;
    ExportStats {
        examples: v.examples.len(),
        messages: Distribution::of(&msgs).unwrap_or_default(),
        tokens: Distribution::of(&v.tokens).unwrap_or_default(),
        tokens_estimated: counter.is_estimate(),
        limit,
        epochs,
        epochs_source: source,
        billed_tokens: billed,
        price_per_mtok,
        cost_usd: price_per_mtok.map(|p| billed as f64 / 1e6 * p),
    }
}

/// The Hugging Face model id of a tunegate base, for trainers that load
/// from the Hub (axolotl, TRL).
pub fn hf_model_for(base: &str) -> Option<&'static str> {
    match base {
        "local:gemma-3-270m" => Some("google/gemma-3-270m"),
        _ => None,
    }
}

/// The sequence length to train with: the longest example plus 8 tokens of
/// chat-template markup per message, rounded up to a power of two (at least 64).
pub fn sequence_len(max_tokens: usize, max_messages: usize) -> usize {
    (max_tokens + 8 * max_messages).next_power_of_two().max(64)
}

#[derive(Debug, Clone)]
pub struct AxolotlOptions {
    /// Hugging Face model id.
    pub base_model: String,
    /// The dataset path as written into the YAML (relative to where axolotl runs).
    pub dataset: String,
    pub sequence_len: usize,
    pub epochs: u32,
    pub output_dir: String,
}

/// A ready axolotl config for LoRA on the exported dataset. Values come from
/// the task's `tune:` section where it has them (lora rank/alpha/dropout,
/// learning rate, batch size, gradient accumulation, seed); the rest are
/// axolotl's usual LoRA settings.
pub fn axolotl_config(task: &Task, o: &AxolotlOptions) -> String {
    let tune = task.file.tune.clone();
    let lora = tune.as_ref().map(|t| t.lora.clone()).unwrap_or_default();
    let r = lora.rank.unwrap_or(8);
    let alpha = lora.alpha.unwrap_or(2.0 * r as f64);
    let dropout = lora.dropout.unwrap_or(0.05);
    let lr = tune.as_ref().and_then(|t| t.learning_rate).unwrap_or(2e-4);
    let mbs = tune.as_ref().and_then(|t| t.batch_size).unwrap_or(8);
    let ga = tune.as_ref().and_then(|t| t.grad_accum).unwrap_or(1);
    let seed = tune.as_ref().and_then(|t| t.seed).unwrap_or(7);
    let targets = match &lora.target_modules {
        Some(m) if !m.is_empty() => format!("lora_target_modules: [{}]", m.join(", ")),
        _ => "lora_target_linear: true".to_string(),
    };
    let template = if o.base_model.contains("gemma-3") { "gemma3" } else { "tokenizer_default" };
    // Built line by line: YAML indentation matters, and a string literal's
    // `\` continuations would eat it.
    let lines = [
        format!("# axolotl config written by `tunegate data export --format axolotl` for task `{}`.", task.file.task.name),
        "# Train from this directory: axolotl train axolotl.yaml".to_string(),
        format!("base_model: {}", o.base_model),
        "adapter: lora".to_string(),
        format!("lora_r: {r}"),
        format!("lora_alpha: {alpha}"),
        format!("lora_dropout: {dropout}"),
        targets,
        format!("sequence_len: {}", o.sequence_len),
        "sample_packing: false".to_string(),
        format!("chat_template: {template}"),
        // Gemma ends a turn with <end_of_turn>, not <eos>: without this axolotl
        // trains the answer but never the turn's end (seen with axolotl 0.19).
        if template == "gemma3" { "eot_tokens: [\"<end_of_turn>\"]".to_string() } else { "# eot_tokens: the template's turn-ending token, if it is not the tokenizer's EOS".to_string() },
        "datasets:".to_string(),
        format!("  - path: {}", o.dataset),
        "    ds_type: json".to_string(),
        "    type: chat_template".to_string(),
        "    field_messages: messages".to_string(),
        "    roles_to_train: [assistant]".to_string(),
        "val_set_size: 0.0".to_string(),
        format!("output_dir: {}", o.output_dir),
        format!("micro_batch_size: {mbs}"),
        format!("gradient_accumulation_steps: {ga}"),
        format!("num_epochs: {}", o.epochs),
        format!("learning_rate: {lr}"),
        "optimizer: adamw_torch".to_string(),
        "lr_scheduler: cosine".to_string(),
        "warmup_ratio: 0.05".to_string(),
        "bf16: auto".to_string(),
        "gradient_checkpointing: true".to_string(),
        "logging_steps: 10".to_string(),
        format!("seed: {seed}"),
    ];
    lines.join("\n") + "\n"
}

/// The keys an axolotl LoRA config needs; missing ones are returned.
pub fn validate_axolotl_config(yaml: &str) -> Vec<String> {
    let v: serde_yaml_ng::Value = match serde_yaml_ng::from_str(yaml) {
        Ok(v) => v,
        Err(e) => return vec![format!("not valid YAML: {e}")],
    };
    let mut missing = vec![];
    for key in ["base_model", "adapter", "lora_r", "lora_alpha", "sequence_len", "datasets", "output_dir", "micro_batch_size", "num_epochs", "learning_rate"] {
        if v.get(key).is_none() {
            missing.push(format!("missing `{key}`"));
        }
    }
    match v.get("datasets").and_then(|d| d.as_sequence()) {
        Some(ds) if !ds.is_empty() => {
            for (i, d) in ds.iter().enumerate() {
                for key in ["path", "type"] {
                    if d.get(key).is_none() {
                        missing.push(format!("datasets[{i}] has no `{key}`"));
                    }
                }
            }
        }
        _ => missing.push("`datasets` must be a non-empty list".into()),
    }
    missing
}
