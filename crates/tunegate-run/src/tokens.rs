//! Token counters for the data commands: the target model's own tokenizer
//! where tunegate has it, an estimate (and a note saying so) where not.
//! They live here, not in the core, because the core knows no model.

use tunegate_core::data::{CharEstimate, TokenCounter};
use tunegate_core::template::flatten_messages;
use tunegate_core::Message;

/// The local model's GGUF tokenizer. A training sequence for a base model
/// is the flattened prompt, the answer and an end-of-sequence token.
struct GgufCounter {
    tok: tunegate_model::Tokenizer,
    name: String,
}

impl TokenCounter for GgufCounter {
    fn count(&self, messages: &[Message]) -> usize {
        let prompt: Vec<Message> = messages.iter().filter(|m| m.role != "assistant").cloned().collect();
        let answer: String = messages.iter().filter(|m| m.role == "assistant").map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
        let text = flatten_messages(&prompt);
        let sep = if text.is_empty() || text.ends_with(char::is_whitespace) { "" } else { " " };
        self.tok.encode(&format!("{text}{sep}{answer}"), true, false).len() + 1
    }
    fn name(&self) -> String {
        format!("{} (GGUF tokenizer)", self.name)
    }
}

/// OpenAI chat models: tiktoken, counted the way OpenAI's cookbook counts a
/// chat example (3 tokens of framing per message, plus the role and the
/// content, plus 3 for the reply's priming).
struct TiktokenCounter {
    bpe: &'static tiktoken_rs::CoreBPE,
    encoding: String,
}

impl TokenCounter for TiktokenCounter {
    fn count(&self, messages: &[Message]) -> usize {
        3 + messages.iter().map(|m| 3 + self.bpe.encode_ordinary(&m.role).len() + self.bpe.encode_ordinary(&m.content).len()).sum::<usize>()
    }
    fn name(&self) -> String {
        format!("{} (tiktoken)", self.encoding)
    }
}

/// The counter for a target (`local:gemma-3-270m`, `openai:gpt-4o-mini`,
/// ...) and, when it had to fall back to an estimate, why.
pub fn counter_for(target: &str) -> (Box<dyn TokenCounter>, Option<String>) {
    let (scheme, model) = target.split_once(':').unwrap_or(("", target));
    match scheme {
        "local" => match load_gguf(model) {
            Ok(c) => (Box::new(c), None),
            Err(why) => (Box::new(CharEstimate), Some(format!("{why}: token counts for {target} are estimates (run `tunegate model fetch` for exact counts)"))),
        },
        "openai" => {
            let (tk, enc) = match tiktoken_rs::tokenizer::get_tokenizer(model) {
                Some(tiktoken_rs::tokenizer::Tokenizer::Cl100kBase) => (tiktoken_rs::cl100k_base_singleton(), "cl100k_base"),
                // gpt-4o, gpt-4.1 and newer, and unknown names: o200k_base.
                _ => (tiktoken_rs::o200k_base_singleton(), "o200k_base"),
            };
            (Box::new(TiktokenCounter { bpe: tk, encoding: enc.to_string() }), None)
        }
        _ => (Box::new(CharEstimate), Some(format!("no tokenizer for {target}: token counts are estimates"))),
    }
}

fn load_gguf(model: &str) -> Result<GgufCounter, String> {
    let path = tunegate_model::resolve_model(model).map_err(|e| format!("model `{model}` not available ({e})"))?;
    let g = tunegate_model::GgufFile::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tok = tunegate_model::Tokenizer::from_gguf(&g).map_err(|e| format!("cannot build the tokenizer of {}: {e}", path.display()))?;
    Ok(GgufCounter { tok, name: model.to_string() })
}
