//! Packing: tokenized examples laid end to end in one sequence per pass,
//! with no padding, and the rows whose next token the loss covers.
//!
//! Kept apart from the model: it is bookkeeping on token ids alone, which
//! the model's passes and the training loop's batching both build on.

/// One packed training step: several examples in one sequence.
pub struct Packed {
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    pub seq: Vec<usize>,
    /// (row whose logits predict, the token it must predict).
    pub targets: Vec<(usize, u32)>,
}

/// A tokenized example; the loss covers `tokens[loss_from..]`.
#[derive(Debug, Clone)]
pub struct TrainExample {
    pub tokens: Vec<u32>,
    pub loss_from: usize,
}

impl TrainExample {
    /// `prompt` then `answer` then end-of-sequence, the loss on the answer
    /// and the end. The answer follows a space unless one side already has
    /// whitespace there, which is how the local provider's prompts end.
    pub fn from_text(tok: &crate::Tokenizer, prompt: &str, answer: &str) -> TrainExample {
        let sep =
            if prompt.ends_with(char::is_whitespace) || answer.starts_with(char::is_whitespace) {
                ""
            } else {
                " "
            };
        let p = tok.encode(prompt, true, false);
        let mut ids = tok.encode(&format!("{prompt}{sep}{answer}"), true, false);
        if ids.len() < p.len() || ids[..p.len()] != p[..] {
            ids = p.clone();
            ids.extend(tok.encode(&format!("{sep}{answer}"), false, false));
        }
        ids.push(tok.eos_id().unwrap_or(1));
        TrainExample {
            loss_from: p.len(),
            tokens: ids,
        }
    }
}

impl Packed {
    /// (start, length) of each example in the packed sequence.
    pub fn segments(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = vec![];
        for (i, &s) in self.seq.iter().enumerate() {
            match out.last_mut() {
                Some((start, len)) if self.seq[*start] == s => *len += 1,
                _ => out.push((i, 1)),
            }
        }
        out
    }
}

pub fn pack(examples: &[&TrainExample]) -> Packed {
    let mut p = Packed {
        tokens: vec![],
        positions: vec![],
        seq: vec![],
        targets: vec![],
    };
    for (si, e) in examples.iter().enumerate() {
        let base = p.tokens.len();
        for (i, &t) in e.tokens.iter().enumerate() {
            p.tokens.push(t);
            p.positions.push(i);
            p.seq.push(si);
            if i + 1 < e.tokens.len() && i + 1 >= e.loss_from {
                p.targets.push((base + i, e.tokens[i + 1]));
            }
        }
    }
    p
}
