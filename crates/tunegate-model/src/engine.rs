//! Text in, text out: the tokenizer, the model and sampling together, with
//! batched generation, log-likelihood scoring of choices, and a cache of
//! shared prompt prefixes (the instructions and few-shot examples every case
//! of a prompt variant starts with are computed once).

use crate::gemma3::{Gemma3, KvCache, SeqInput};
use crate::sample::{log_probs, Sampler, SamplingParams};
use crate::{ModelError, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Default)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Also report, for each generated token, this many most likely
    /// tokens with their log-probabilities (OpenAI's `top_logprobs`).
    pub top_logprobs: usize,
    /// Constrained decoding: when not empty, the output is one of these
    /// token sequences. Each step may only pick a token that keeps the
    /// output a prefix of one of them (sampling as usual among those), and
    /// generation stops once the output is a whole sequence that no other
    /// extends, or is a whole sequence and the model's own best next token
    /// would leave the set.
    pub allowed: Vec<Vec<u32>>,
}

/// What constrained decoding allows after `done` tokens.
enum Constraint {
    /// The output is complete.
    Done,
    /// Only these next tokens.
    Next(Vec<u32>),
}

fn constraint(allowed: &[Vec<u32>], done: &[u32], logits: &[f32]) -> Constraint {
    let live: Vec<&Vec<u32>> = allowed.iter().filter(|a| a.starts_with(done)).collect();
    let complete = live.iter().any(|a| a.len() == done.len());
    let mut next: Vec<u32> = live.iter().filter(|a| a.len() > done.len()).map(|a| a[done.len()]).collect();
    next.sort_unstable();
    next.dedup();
    if next.is_empty() || (complete && !next.contains(&crate::sample::argmax(logits))) {
        return Constraint::Done;
    }
    Constraint::Next(next)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    /// Log-probability of each generated token.
    pub logprobs: Vec<f32>,
    /// Per generated token, the `top_logprobs` most likely tokens and their
    /// log-probabilities, best first (empty when not asked for).
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    pub prompt_tokens: usize,
    /// `stop` (end of turn/text or a stop sequence) or `length`.
    pub finish_reason: String,
}

pub struct LocalModel {
    pub model: Gemma3,
    pub tokenizer: Tokenizer,
    pub path: PathBuf,
    prefixes: Mutex<Vec<(Vec<u32>, KvCache)>>,
}

/// Prefixes shorter than this are not worth a cache entry.
const MIN_PREFIX: usize = 16;
const MAX_PREFIXES: usize = 8;
/// Tokens per forward call during prefill, bounding activation memory.
const PREFILL_CHUNK: usize = 512;

fn lcp(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl LocalModel {
    pub fn load(path: &Path) -> Result<LocalModel, ModelError> {
        Self::load_with_adapter(path, None)
    }

    /// The model with a LoRA adapter directory applied (PEFT layout).
    pub fn load_with_adapter(path: &Path, adapter: Option<&Path>) -> Result<LocalModel, ModelError> {
        let g = crate::GgufFile::open(path).map_err(|e| ModelError::Format(e.to_string()))?;
        let tokenizer = Tokenizer::from_gguf(&g).map_err(|e| ModelError::Format(e.to_string()))?;
        drop(g);
        let mut model = Gemma3::load(path)?;
        if let Some(a) = adapter {
            model.load_adapter(a)?;
        }
        Ok(LocalModel { model, tokenizer, path: path.to_path_buf(), prefixes: Mutex::new(vec![]) })
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, true, true)
    }

    /// A cache holding the longest known prefix of `tokens` (always leaving
    /// at least one token to run, whose logits we need).
    fn start_cache(&self, tokens: &[u32]) -> KvCache {
        let entries = self.prefixes.lock().unwrap();
        let best = entries.iter().map(|(p, c)| (lcp(p, tokens).min(p.len()), c)).filter(|(l, _)| *l >= MIN_PREFIX).max_by_key(|(l, _)| *l);
        match best {
            Some((l, c)) => {
                let mut c = c.clone();
                let keep = l.min(tokens.len() - 1);
                if c.truncate(keep).is_ok() {
                    c
                } else {
                    self.model.new_cache()
                }
            }
            None => self.model.new_cache(),
        }
    }

    fn remember_prefix(&self, tokens: &[u32], cache: &KvCache, other: &[u32]) {
        let l = lcp(tokens, other);
        if l < MIN_PREFIX {
            return;
        }
        let mut entries = self.prefixes.lock().unwrap();
        if entries.iter().any(|(p, _)| p.len() >= l && lcp(p, tokens) >= l) {
            return;
        }
        let mut c = cache.clone();
        if c.truncate(l).is_err() {
            return;
        }
        entries.push((tokens[..l].to_vec(), c));
        if entries.len() > MAX_PREFIXES {
            entries.remove(0);
        }
    }

    /// The first batch of a new prompt variant would otherwise prefill its
    /// shared instructions and few-shot examples once per sequence (16
    /// times over): compute the batch's common prefix once and remember it,
    /// so every sequence starts from it.
    fn share_batch_prefix(&self, prompts: &[Vec<u32>]) -> Result<(), ModelError> {
        if prompts.len() < 2 {
            return Ok(());
        }
        let shortest = prompts.iter().map(|p| p.len()).min().unwrap_or(0);
        let l = prompts[1..].iter().map(|p| lcp(&prompts[0], p)).min().unwrap_or(0).min(shortest.saturating_sub(1));
        if l < MIN_PREFIX {
            return Ok(());
        }
        let prefix = &prompts[0][..l];
        {
            let entries = self.prefixes.lock().unwrap();
            if entries.iter().any(|(p, _)| lcp(p, prefix) >= l) {
                return Ok(());
            }
        }
        // Start from the longest known part of it, then run the rest.
        let mut cache = {
            let entries = self.prefixes.lock().unwrap();
            let best = entries.iter().map(|(p, c)| (lcp(p, prefix).min(p.len()), c)).filter(|(k, _)| *k >= MIN_PREFIX).max_by_key(|(k, _)| *k);
            match best {
                Some((k, c)) => {
                    let mut c = c.clone();
                    if c.truncate(k).is_ok() { c } else { self.model.new_cache() }
                }
                None => self.model.new_cache(),
            }
        };
        while cache.len() < l {
            let start = cache.len();
            let n = (l - start).min(PREFILL_CHUNK);
            let mut inputs = vec![SeqInput { tokens: &prefix[start..start + n], cache: &mut cache, all_logits: false }];
            self.model.forward(&mut inputs)?;
        }
        let mut entries = self.prefixes.lock().unwrap();
        entries.push((prefix.to_vec(), cache));
        if entries.len() > MAX_PREFIXES {
            entries.remove(0);
        }
        Ok(())
    }

    /// Prefills every prompt (in chunks), returning caches and the logits of
    /// each prompt's last token.
    fn prefill(&self, prompts: &[Vec<u32>]) -> Result<(Vec<KvCache>, Vec<Vec<f32>>), ModelError> {
        self.share_batch_prefix(prompts)?;
        let mut caches: Vec<KvCache> = prompts.iter().map(|p| self.start_cache(p)).collect();
        let mut last: Vec<Vec<f32>> = vec![vec![]; prompts.len()];
        loop {
            // Take up to PREFILL_CHUNK tokens across the sequences still filling.
            let mut budget = PREFILL_CHUNK;
            let mut plan: Vec<(usize, usize, usize)> = vec![];
            for (i, p) in prompts.iter().enumerate() {
                let done = caches[i].len();
                if done < p.len() && budget > 0 {
                    let n = (p.len() - done).min(budget);
                    budget -= n;
                    plan.push((i, done, n));
                }
            }
            if plan.is_empty() {
                break;
            }
            let mut taken: Vec<(usize, KvCache)> = plan.iter().map(|(i, _, _)| (*i, std::mem::take(&mut caches[*i]))).collect();
            let mut inputs: Vec<SeqInput> = taken
                .iter_mut()
                .zip(&plan)
                .map(|((_, c), (i, s, n))| SeqInput { tokens: &prompts[*i][*s..*s + *n], cache: c, all_logits: false })
                .collect();
            let logits = self.model.forward(&mut inputs)?;
            drop(inputs);
            for ((i, c), l) in taken.into_iter().zip(logits) {
                caches[i] = c;
                last[i] = l.to_vec1::<f32>().map_err(ModelError::candle)?;
            }
        }
        for i in 0..prompts.len() {
            let other = if i > 0 { &prompts[i - 1] } else if prompts.len() > 1 { &prompts[1] } else { continue };
            self.remember_prefix(&prompts[i], &caches[i], other);
        }
        Ok((caches, last))
    }

    /// Generates for several prompts at once: prefill together, then one
    /// decode step for all unfinished sequences per forward call.
    pub fn generate_batch(&self, prompts: &[(Vec<u32>, GenParams)]) -> Result<Vec<Generation>, ModelError> {
        self.generate_batch_stream(prompts, &mut |_, _| true)
    }

    /// [`Self::generate_batch`], calling `on_text(seq, delta)` with each new
    /// piece of text as it is produced (text that could still turn out to
    /// be the start of a stop sequence is held back until it cannot). When
    /// it returns false that sequence stops (its client went away).
    pub fn generate_batch_stream(&self, prompts: &[(Vec<u32>, GenParams)], on_text: &mut dyn FnMut(usize, &str) -> bool) -> Result<Vec<Generation>, ModelError> {
        if prompts.is_empty() {
            return Ok(vec![]);
        }
        let toks: Vec<Vec<u32>> = prompts.iter().map(|(t, _)| t.clone()).collect();
        if toks.iter().any(|t| t.is_empty()) {
            return Err(ModelError::Input("empty prompt".into()));
        }
        for t in &toks {
            if t.len() >= self.model.cfg.context_length {
                return Err(ModelError::Input(format!("prompt of {} tokens exceeds the context length {}", t.len(), self.model.cfg.context_length)));
            }
        }
        let (mut caches, mut logits) = self.prefill(&toks)?;
        let mut samplers: Vec<Sampler> = prompts.iter().map(|(_, p)| Sampler::new(p.sampling.clone())).collect();
        let mut out: Vec<Generation> = prompts
            .iter()
            .map(|(t, _)| Generation { text: String::new(), tokens: vec![], logprobs: vec![], top_logprobs: vec![], prompt_tokens: t.len(), finish_reason: String::new() })
            .collect();
        let mut active: Vec<usize> = (0..prompts.len()).collect();
        let mut emitted: Vec<usize> = vec![0; prompts.len()];
        // Sends what is safe to send; `all` at the end of a sequence.
        let mut flush = |i: usize, text: &str, all: bool, emitted: &mut Vec<usize>| -> bool {
            let hold = if all { 0 } else { prompts[i].1.stop.iter().map(|s| s.len()).max().unwrap_or(0) };
            let mut end = text.len().saturating_sub(hold);
            while end > emitted[i] && !text.is_char_boundary(end) {
                end -= 1;
            }
            // Undecodable partial bytes show as U+FFFD until complete.
            if end > emitted[i] && !text[emitted[i]..end].ends_with('\u{FFFD}') {
                let ok = on_text(i, &text[emitted[i]..end]);
                emitted[i] = end;
                return ok;
            }
            true
        };
        // Sample from the prefill logits, then step.
        loop {
            let mut next_active = vec![];
            let mut step_tokens = vec![];
            for &i in &active {
                let params = &prompts[i].1;
                if out[i].tokens.len() >= params.max_tokens {
                    out[i].finish_reason = if params.allowed.contains(&out[i].tokens) { "stop" } else { "length" }.into();
                    flush(i, &out[i].text.clone(), true, &mut emitted);
                    continue;
                }
                let (id, lp) = if params.allowed.is_empty() {
                    samplers[i].sample(&logits[i])
                } else {
                    match constraint(&params.allowed, &out[i].tokens, &logits[i]) {
                        Constraint::Done => {
                            out[i].finish_reason = "stop".into();
                            flush(i, &out[i].text.clone(), true, &mut emitted);
                            continue;
                        }
                        Constraint::Next(next) => {
                            let mut masked = vec![f32::NEG_INFINITY; logits[i].len()];
                            for &t in &next {
                                masked[t as usize] = logits[i][t as usize];
                            }
                            let (id, _) = samplers[i].sample(&masked);
                            // Reported log-probabilities stay those of the
                            // model's unmodified distribution.
                            (id, crate::sample::logprob(&logits[i], id))
                        }
                    }
                };
                if self.tokenizer.is_end_of_generation(id) {
                    out[i].finish_reason = "stop".into();
                    flush(i, &out[i].text.clone(), true, &mut emitted);
                    continue;
                }
                out[i].tokens.push(id);
                out[i].logprobs.push(lp);
                if params.top_logprobs > 0 {
                    out[i].top_logprobs.push(crate::sample::top_logprobs(&logits[i], params.top_logprobs));
                }
                let text = self.tokenizer.decode(&out[i].tokens);
                if let Some(pos) = params.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
                    out[i].text = text[..pos].to_string();
                    out[i].finish_reason = "stop".into();
                    flush(i, &out[i].text.clone(), true, &mut emitted);
                    continue;
                }
                out[i].text = text;
                if out[i].tokens.len() >= params.max_tokens || caches[i].len() + 1 >= self.model.cfg.context_length {
                    // A whole label is a stop, not a truncation.
                    out[i].finish_reason = if params.allowed.contains(&out[i].tokens) { "stop" } else { "length" }.into();
                    flush(i, &out[i].text.clone(), true, &mut emitted);
                    continue;
                }
                if !flush(i, &out[i].text.clone(), false, &mut emitted) {
                    out[i].finish_reason = "cancelled".into();
                    continue;
                }
                next_active.push(i);
                step_tokens.push(id);
            }
            if next_active.is_empty() {
                break;
            }
            let mut taken: Vec<KvCache> = next_active.iter().map(|&i| std::mem::take(&mut caches[i])).collect();
            let singles: Vec<[u32; 1]> = step_tokens.iter().map(|&t| [t]).collect();
            let mut inputs: Vec<SeqInput> = taken.iter_mut().zip(&singles).map(|(c, t)| SeqInput { tokens: t, cache: c, all_logits: false }).collect();
            let l = self.model.forward(&mut inputs)?;
            drop(inputs);
            for ((&i, c), lg) in next_active.iter().zip(taken).zip(l) {
                caches[i] = c;
                logits[i] = lg.to_vec1::<f32>().map_err(ModelError::candle)?;
            }
            active = next_active;
        }
        Ok(out)
    }

    pub fn generate(&self, prompt: &str, params: &GenParams) -> Result<Generation, ModelError> {
        let toks = self.encode(prompt);
        Ok(self.generate_batch(&[(toks, params.clone())])?.remove(0))
    }

    /// The log-likelihood of each choice as a continuation of the prompt
    /// (sum of its tokens' log-probabilities): the standard way to use a base
    /// model for a closed label set. The prompt is computed once.
    pub fn score_choices(&self, prompt: &[u32], choices: &[String]) -> Result<Vec<f32>, ModelError> {
        Ok(self.score_choices_batch(&[(prompt.to_vec(), choices.to_vec())])?.remove(0))
    }

    /// [`Self::score_choices`] for several prompts at once: the prompts are
    /// prefilled together, then every multi-token choice of every prompt
    /// goes through one forward call (concurrent eval cases share the
    /// weight reads, as generation does).
    pub fn score_choices_batch(&self, jobs: &[(Vec<u32>, Vec<String>)]) -> Result<Vec<Vec<f32>>, ModelError> {
        if jobs.is_empty() {
            return Ok(vec![]);
        }
        let prompts: Vec<Vec<u32>> = jobs.iter().map(|(p, _)| p.clone()).collect();
        let (caches, last) = self.prefill(&prompts)?;
        let conts: Vec<Vec<Vec<u32>>> = jobs.iter().map(|(_, cs)| cs.iter().map(|c| self.tokenizer.encode(c, false, false)).collect()).collect();
        // Everything but each choice's last token goes through the model
        // (the first token's probability comes from the prompt's logits).
        let mut cs: Vec<KvCache> = vec![];
        let mut feeds: Vec<&[u32]> = vec![];
        for (ji, job) in conts.iter().enumerate() {
            for c in job.iter().filter(|c| c.len() > 1) {
                cs.push(caches[ji].clone());
                feeds.push(&c[..c.len() - 1]);
            }
        }
        let mut inputs: Vec<SeqInput> = cs.iter_mut().zip(&feeds).map(|(c, f)| SeqInput { tokens: f, cache: c, all_logits: true }).collect();
        let outs = if inputs.is_empty() { vec![] } else { self.model.forward(&mut inputs)? };
        drop(inputs);
        let mut oi = 0;
        let mut all = Vec::with_capacity(jobs.len());
        for (ji, job) in conts.iter().enumerate() {
            let first_lp = log_probs(&last[ji]);
            let mut scores = vec![0f32; job.len()];
            for (ci, c) in job.iter().enumerate() {
                if c.is_empty() {
                    scores[ci] = f32::NEG_INFINITY;
                    continue;
                }
                let mut s = first_lp[c[0] as usize];
                if c.len() > 1 {
                    let rows = outs[oi].to_vec2::<f32>().map_err(ModelError::candle)?;
                    oi += 1;
                    for (j, row) in rows.iter().enumerate() {
                        s += log_probs(row)[c[j + 1] as usize];
                    }
                }
                scores[ci] = s;
            }
            all.push(scores);
        }
        Ok(all)
    }
}
