//! The prompt lab's pure half: cutting a prompt into parts, building the
//! variants the lab evaluates (ablations, few-shot sweeps, fragility
//! perturbations), and the statistics over their per-case verdicts.
//!
//! Nothing here calls a model: the run crate evaluates the variants this
//! module builds and hands back pass/fail vectors. Keeping the two apart
//! lets the tests plant exact verdicts and check the analysis alone.
//!
//! Variants stay templates (not rendered text): a part is a piece of the
//! template's literal text, so dropping it leaves a template that still
//! renders every case, and the runner's cache sees identical renderings of
//! identical variants (re-running the lab is free).

use crate::paired::{binomial_upper_tail, mcnemar_exact, paired_bootstrap, Interval, BOOTSTRAP_RESAMPLES};
use crate::stats::wilson;
use crate::task::{PromptSource, ShotsSpec};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What a part of a prompt is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartKind {
    /// A sentence of the system message.
    System,
    /// An instruction sentence of the user template.
    Instruction,
    /// A sentence about the answer's format ("Answer with exactly one ...").
    Format,
    /// A block of list lines (definitions, rules, facts), with its header.
    Reference,
    /// One few-shot example drawn from data.examples.
    Example,
}

impl PartKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            PartKind::System => "system",
            PartKind::Instruction => "instruction",
            PartKind::Format => "format",
            PartKind::Reference => "reference",
            PartKind::Example => "example",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Part {
    /// `s1..` system sentences, `p1..` template parts, `e1..` examples.
    pub id: String,
    pub kind: PartKind,
    /// The part's text (for examples: its position among the shots).
    pub text: String,
}

#[derive(Debug, Clone)]
struct Seg {
    text: String,
    part: Option<usize>,
}

#[derive(Debug, Clone)]
struct Line {
    segs: Vec<Seg>,
    newline: String,
    blank: bool,
}

/// A prompt cut into droppable parts. Template text that carries Jinja
/// statements or case variables is never a part: removing it could break
/// the template or the case's input.
#[derive(Debug, Clone)]
pub struct Dissected {
    pub src: PromptSource,
    pub parts: Vec<Part>,
    system: Option<Vec<Line>>,
    template: Vec<Line>,
    /// Index of the first example part; examples are contiguous.
    example_base: usize,
    n_shots: usize,
}

const ABBREVIATIONS: &[&str] = &["e.g", "i.e", "etc", "vs", "mr", "mrs", "dr", "no", "approx", "incl"];
const FORMAT_CUES: &[&str] = &[
    "answer with", "answer only", "respond with", "reply with", "return only", "output", "format", "json", "exactly one", "only the", "one word", "lowercase", "nothing else", "no explanation",
];

/// Expressions a part may contain: they render the same for every case.
fn expr_ok(inner: &str) -> bool {
    let t = inner.trim();
    t.starts_with("labels") || t.starts_with("task")
}

fn droppable(line: &str) -> bool {
    if line.contains("{%") || line.contains("%}") || line.contains("{#") {
        return false;
    }
    let mut rest = line;
    while let Some(i) = rest.find("{{") {
        let Some(j) = rest[i..].find("}}") else { return false };
        if !expr_ok(&rest[i + 2..i + j]) {
            return false;
        }
        rest = &rest[i + j + 2..];
    }
    !rest.contains("}}")
}

fn is_list_item(line: &str) -> bool {
    let t = line.trim_start();
    if t.starts_with("- ") || t.starts_with("* ") || t.starts_with("• ") {
        return true;
    }
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    digits > 0 && (t[digits..].starts_with(". ") || t[digits..].starts_with(") "))
}

/// Sentences of one line, each with its trailing spaces, so that their
/// concatenation is the line.
pub fn sentences(line: &str) -> Vec<String> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut out = vec![];
    let mut start = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && chars[j].1 == ' ' {
                j += 1;
            }
            let followed = j > i + 1 && j < chars.len() && (chars[j].1.is_uppercase() || matches!(chars[j].1, '"' | '(' | '{' | '\''));
            let word: String = line[start..pos].rsplit(' ').next().unwrap_or("").to_lowercase();
            if followed && !ABBREVIATIONS.contains(&word.as_str()) {
                let end = chars[j].0;
                out.push(line[start..end].to_string());
                start = end;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    if start < line.len() {
        out.push(line[start..].to_string());
    }
    out
}

fn kind_of(text: &str, in_system: bool) -> PartKind {
    if in_system {
        return PartKind::System;
    }
    let l = text.to_lowercase();
    if FORMAT_CUES.iter().any(|c| l.contains(c)) {
        PartKind::Format
    } else {
        PartKind::Instruction
    }
}

fn cut(text: &str, in_system: bool, prefix: &str, parts: &mut Vec<Part>) -> Vec<Line> {
    let raw: Vec<(&str, &str)> = text
        .split_inclusive('\n')
        .map(|l| match l.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (l, ""),
        })
        .collect();
    let mut lines = vec![];
    let mut counter = parts.iter().filter(|p| p.id.starts_with(prefix)).count();
    let mut next_id = |parts: &mut Vec<Part>, kind: PartKind, text: &str| -> usize {
        counter += 1;
        parts.push(Part { id: format!("{prefix}{counter}"), kind, text: text.trim().to_string() });
        parts.len() - 1
    };
    let mut i = 0;
    while i < raw.len() {
        let (body, nl) = raw[i];
        if body.trim().is_empty() {
            lines.push(Line { segs: vec![Seg { text: body.to_string(), part: None }], newline: nl.into(), blank: true });
            i += 1;
            continue;
        }
        if !droppable(body) {
            lines.push(Line { segs: vec![Seg { text: body.to_string(), part: None }], newline: nl.into(), blank: false });
            i += 1;
            continue;
        }
        // A list block (with a header line ending in ':' right before it)
        // is one reference part: its items mean little alone.
        let header = body.trim_end().ends_with(':') && !is_list_item(body) && raw.get(i + 1).map(|(b, _)| is_list_item(b) && droppable(b)).unwrap_or(false);
        if header || is_list_item(body) {
            let mut j = i + 1;
            while j < raw.len() && is_list_item(raw[j].0) && droppable(raw[j].0) {
                j += 1;
            }
            let block: String = raw[i..j].iter().map(|(b, _)| *b).collect::<Vec<_>>().join("\n");
            let id = next_id(parts, if in_system { PartKind::System } else { PartKind::Reference }, &block);
            for (b, n) in &raw[i..j] {
                lines.push(Line { segs: vec![Seg { text: b.to_string(), part: Some(id) }], newline: n.to_string(), blank: false });
            }
            i = j;
            continue;
        }
        let mut segs = vec![];
        for s in sentences(body) {
            if s.trim().is_empty() {
                segs.push(Seg { text: s, part: None });
                continue;
            }
            let id = next_id(parts, kind_of(&s, in_system), &s);
            segs.push(Seg { text: s, part: Some(id) });
        }
        lines.push(Line { segs, newline: nl.into(), blank: false });
        i += 1;
    }
    lines
}

/// Joins lines back, leaving out the dropped parts: a line that loses all
/// its text goes entirely, runs of blank lines collapse to one, and blank
/// lines at the start go (so a dropped first sentence leaves no gap).
fn assemble(lines: &[Line], keep: &dyn Fn(usize) -> bool) -> String {
    let mut out: Vec<(String, String, bool)> = vec![];
    for l in lines {
        let had_part = l.segs.iter().any(|s| s.part.is_some());
        let dropped_any = l.segs.iter().any(|s| s.part.map(|p| !keep(p)).unwrap_or(false));
        let text: String = l.segs.iter().filter(|s| s.part.map(keep).unwrap_or(true)).map(|s| s.text.as_str()).collect();
        let text = if dropped_any { text.trim_end().to_string() } else { text };
        if had_part && text.trim().is_empty() {
            continue;
        }
        let blank = l.blank || text.trim().is_empty();
        if blank && (out.is_empty() || out.last().map(|x| x.2).unwrap_or(false)) {
            continue;
        }
        out.push((text, l.newline.clone(), blank));
    }
    while out.last().map(|x| x.2).unwrap_or(false) {
        out.pop();
    }
    let mut s = String::new();
    let n = out.len();
    for (i, (t, nl, _)) in out.into_iter().enumerate() {
        s.push_str(&t);
        if i + 1 < n {
            s.push_str(if nl.is_empty() { "\n" } else { &nl });
        } else {
            s.push_str(&nl);
        }
    }
    s
}

/// Whether a template shows the `shots` examples at all.
pub fn uses_shots(src: &PromptSource) -> bool {
    src.template.contains("shots") || src.system.as_deref().map(|s| s.contains("shots")).unwrap_or(false)
}

impl Dissected {
    /// `n_shots`: how many examples the prompt draws (0 without `shots`).
    pub fn new(src: &PromptSource, n_shots: usize) -> Dissected {
        let mut parts = vec![];
        let system = src.system.as_deref().map(|s| cut(s, true, "s", &mut parts));
        let template = cut(&src.template, false, "p", &mut parts);
        let example_base = parts.len();
        let n_shots = if uses_shots(src) { n_shots } else { 0 };
        for i in 0..n_shots {
            parts.push(Part { id: format!("e{}", i + 1), kind: PartKind::Example, text: format!("few-shot example {} of {n_shots}", i + 1) });
        }
        Dissected { src: src.clone(), parts, system, template, example_base, n_shots }
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.parts.iter().position(|p| p.id == id)
    }

    /// The prompt without the parts in `dropped` (indices into `parts`).
    pub fn without(&self, id: &str, dropped: &BTreeSet<usize>) -> PromptSource {
        let keep = |p: usize| !dropped.contains(&p);
        let system = self.system.as_ref().map(|l| assemble(l, &keep)).filter(|s| !s.trim().is_empty());
        let template = assemble(&self.template, &keep);
        let shots = self.src.shots.as_ref().map(|s| {
            if self.n_shots == 0 {
                return s.clone();
            }
            let base: Vec<usize> = s.order.clone().unwrap_or_else(|| (0..self.n_shots).collect());
            let kept: Vec<usize> = base.iter().enumerate().filter(|(i, _)| keep(self.example_base + i)).map(|(_, &p)| p).collect();
            let order = if kept.len() == base.len() && s.order.is_none() { None } else { Some(kept) };
            ShotsSpec { order, ..s.clone() }
        });
        PromptSource { id: id.to_string(), system, template, shots, ..self.src.clone() }
    }

    /// A variant id naming what it drops: `PROMPT~drop:p2,e1`.
    pub fn variant_id(&self, dropped: &BTreeSet<usize>) -> String {
        if dropped.is_empty() {
            return self.src.id.clone();
        }
        let names: Vec<&str> = dropped.iter().map(|&i| self.parts[i].id.as_str()).collect();
        format!("{}~drop:{}", self.src.id, names.join(","))
    }

    /// The instruction a paraphrase replaces: the system message, or else
    /// the first paragraph of the template made only of instruction text.
    pub fn instruction(&self) -> Option<String> {
        if let Some(s) = &self.src.system {
            return Some(s.trim().to_string());
        }
        self.first_paragraph().map(|(a, b)| self.template[a..b].iter().map(|l| l.segs.iter().map(|s| s.text.as_str()).collect::<String>()).collect::<Vec<_>>().join("\n"))
    }

    fn first_paragraph(&self) -> Option<(usize, usize)> {
        let prose = |l: &Line| !l.blank && l.segs.iter().all(|s| s.part.map(|p| matches!(self.parts[p].kind, PartKind::Instruction | PartKind::Format)).unwrap_or(s.text.trim().is_empty()));
        let a = self.template.iter().position(|l| prose(l))?;
        let mut b = a;
        while b < self.template.len() && prose(&self.template[b]) {
            b += 1;
        }
        Some((a, b))
    }

    /// The prompt with its instruction replaced by `text`.
    pub fn paraphrased(&self, id: &str, text: &str) -> Option<PromptSource> {
        if self.src.system.is_some() {
            return Some(PromptSource { id: id.into(), system: Some(text.trim().to_string()), ..self.src.clone() });
        }
        let (a, b) = self.first_paragraph()?;
        let mut lines: Vec<String> = self.template.iter().map(|l| format!("{}{}", l.segs.iter().map(|s| s.text.as_str()).collect::<String>(), l.newline)).collect();
        let nl = self.template[b - 1].newline.clone();
        lines.splice(a..b, [format!("{}{nl}", text.trim())]);
        Some(PromptSource { id: id.into(), template: lines.concat(), ..self.src.clone() })
    }

    /// Instruction sentences shuffled within each paragraph (system and
    /// template), keeping list blocks and fixed lines where they are.
    /// None when no paragraph has two sentences to swap.
    pub fn reordered(&self, id: &str, seed: u64) -> Option<PromptSource> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut changed = false;
        let mut shuffle = |lines: &[Line]| -> String {
            // Paragraphs: runs of non-blank lines whose parts are sentences.
            let mut out = String::new();
            let mut i = 0;
            while i < lines.len() {
                let sentence_line = |l: &Line| !l.blank && l.segs.iter().any(|s| s.part.is_some()) && l.segs.iter().all(|s| s.part.is_some() || s.text.trim().is_empty()) && l.segs.len() >= 1;
                if !sentence_line(&lines[i]) || lines[i].segs.iter().any(|s| s.part.map(|p| self.parts[p].kind == PartKind::Reference).unwrap_or(false)) {
                    let l = &lines[i];
                    out.push_str(&l.segs.iter().map(|s| s.text.as_str()).collect::<String>());
                    out.push_str(&l.newline);
                    i += 1;
                    continue;
                }
                let mut j = i;
                let mut sents: Vec<String> = vec![];
                while j < lines.len() && sentence_line(&lines[j]) && !lines[j].segs.iter().any(|s| s.part.map(|p| self.parts[p].kind == PartKind::Reference).unwrap_or(false)) {
                    sents.extend(lines[j].segs.iter().filter(|s| s.part.is_some()).map(|s| s.text.trim().to_string()));
                    j += 1;
                }
                if sents.len() >= 2 {
                    let orig = sents.clone();
                    for _ in 0..8 {
                        sents.shuffle(&mut rng);
                        if sents != orig {
                            break;
                        }
                    }
                    changed |= sents != orig;
                    out.push_str(&sents.join(" "));
                    out.push_str(&lines[j - 1].newline);
                } else {
                    for l in &lines[i..j] {
                        out.push_str(&l.segs.iter().map(|s| s.text.as_str()).collect::<String>());
                        out.push_str(&l.newline);
                    }
                }
                i = j;
            }
            out
        };
        let system = self.system.as_ref().map(|l| shuffle(l));
        let template = shuffle(&self.template);
        changed.then(|| PromptSource { id: id.into(), system, template, ..self.src.clone() })
    }

    /// The examples in another order (None with fewer than two).
    pub fn shots_shuffled(&self, id: &str, seed: u64) -> Option<PromptSource> {
        if self.n_shots < 2 {
            return None;
        }
        let s = self.src.shots.as_ref()?;
        let orig: Vec<usize> = s.order.clone().unwrap_or_else(|| (0..self.n_shots).collect());
        let mut order = orig.clone();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..8 {
            order.shuffle(&mut rng);
            if order != orig {
                break;
            }
        }
        Some(PromptSource { id: id.into(), shots: Some(ShotsSpec { order: Some(order), ..s.clone() }), ..self.src.clone() })
    }
}

/// `labels` in another order: `{{ labels }}` renders it, and a literal
/// list of all labels in the text (`a, b, c` or `a/b/c`) is rewritten too.
/// None when the prompt mentions no label list.
pub fn labels_shuffled(src: &PromptSource, labels: &[String], id: &str, seed: u64) -> Option<PromptSource> {
    if labels.len() < 2 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut order = labels.to_vec();
    for _ in 0..8 {
        order.shuffle(&mut rng);
        if order != labels {
            break;
        }
    }
    let mut out = PromptSource { id: id.into(), labels: Some(order.clone()), ..src.clone() };
    let mut uses = src.template.contains("labels") || src.system.as_deref().unwrap_or("").contains("labels");
    for sep in [", ", ",", " / ", "/", " | ", "|"] {
        let from = labels.join(sep);
        let to = order.join(sep);
        if out.template.contains(&from) || out.system.as_deref().unwrap_or("").contains(&from) {
            out.template = out.template.replace(&from, &to);
            out.system = out.system.map(|s| s.replace(&from, &to));
            uses = true;
        }
    }
    uses.then_some(out)
}

/// Formatting perturbations: `compact` (no blank lines), `loose` (a blank
/// line between all lines of literal text), `bullets` (`-` lists as `*`).
pub fn reformatted(src: &PromptSource, style: &str, id: &str) -> Option<PromptSource> {
    let f = |t: &str| -> String {
        match style {
            "compact" => t.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n"),
            "loose" => {
                let mut out: Vec<&str> = vec![];
                for l in t.lines() {
                    if l.trim().is_empty() {
                        continue;
                    }
                    if !out.is_empty() && droppable(l) && droppable(out.last().copied().unwrap_or("")) {
                        out.push("");
                    }
                    out.push(l);
                }
                out.join("\n")
            }
            "bullets" => t
                .lines()
                .map(|l| {
                    let ind = l.len() - l.trim_start().len();
                    match l.trim_start().strip_prefix("- ") {
                        Some(rest) => format!("{}* {rest}", &l[..ind]),
                        None => l.to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
            _ => t.to_string(),
        }
    };
    let out = PromptSource { id: id.into(), template: f(&src.template), system: src.system.as_deref().map(f), ..src.clone() };
    (out.template != src.template || out.system != src.system).then_some(out)
}

/// The task file's text with one more prompt appended to its `prompts:`
/// list, comments and layout untouched (strings are written as JSON
/// strings, which YAML reads as double-quoted scalars). The caller checks
/// the id is new and validates the result before writing it.
pub fn append_prompt(source: &str, src: &PromptSource, comment: &str) -> Result<String, String> {
    let lines: Vec<&str> = source.split_inclusive('\n').collect();
    let start = lines.iter().position(|l| l.starts_with("prompts:")).ok_or("the task file has no top-level `prompts:` list")?;
    if !lines[start].trim_end().ends_with(':') && lines[start].trim_end() != "prompts:" {
        return Err("`prompts:` is written inline (flow style); add the prompt by hand".into());
    }
    let mut end = start + 1;
    while end < lines.len() {
        let l = lines[end];
        if l.chars().next().map(|c| c.is_alphanumeric() || c == '_').unwrap_or(false) {
            break;
        }
        end += 1;
    }
    // Blank lines and column-0 comments before the next key belong to it.
    let mut at = end;
    while at > start + 1 && (lines[at - 1].trim().is_empty() || lines[at - 1].starts_with('#')) {
        at -= 1;
    }
    let indent: String = lines[start + 1..end].iter().find(|l| l.trim_start().starts_with("- ")).map(|l| l[..l.len() - l.trim_start().len()].to_string()).unwrap_or_else(|| "  ".into());
    let q = |t: &str| serde_json::to_string(t).unwrap_or_default();
    let mut entry = String::new();
    for c in comment.lines() {
        entry.push_str(&format!("{indent}# {c}\n"));
    }
    entry.push_str(&format!("{indent}- id: {}\n", q(&src.id)));
    if let Some(sys) = &src.system {
        entry.push_str(&format!("{indent}  system: {}\n", q(sys)));
    }
    entry.push_str(&format!("{indent}  template: {}\n", q(&src.template)));
    if let Some(sh) = &src.shots {
        if sh.order.as_ref().map(|o| !o.is_empty()).unwrap_or(sh.k > 0) {
            let order = sh.order.as_ref().map(|o| format!(", order: [{}]", o.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))).unwrap_or_default();
            let strategy = serde_json::to_value(sh.strategy).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_else(|| "stratified".into());
            entry.push_str(&format!("{indent}  shots: {{ k: {}, strategy: {strategy}, seed: {}{order} }}\n", sh.k, sh.seed));
        }
    }
    let mut out: String = lines[..at].concat();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&entry);
    out.push_str(&lines[at..].concat());
    Ok(out)
}

// ------------------------------------------------------------- statistics

/// A variant against a reference on the same cases. Cases where either
/// side errored are left out (an error says nothing of the prompt).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delta {
    pub n: u64,
    pub reference_rate: f64,
    pub rate: f64,
    /// rate - reference_rate, with its paired bootstrap 95% interval.
    pub delta: f64,
    pub low: f64,
    pub high: f64,
    /// Cases the reference passed and the variant failed.
    pub regressions: u64,
    pub improvements: u64,
    /// Two-sided exact McNemar.
    pub p_value: f64,
    /// One-sided exact McNemar for "the variant is worse".
    pub p_worse: f64,
}

pub fn paired_delta(reference: &[Option<bool>], variant: &[Option<bool>], seed: u64) -> Delta {
    let mut diffs = vec![];
    let (mut b, mut c, mut pr, mut pv) = (0u64, 0u64, 0u64, 0u64);
    for (r, v) in reference.iter().zip(variant) {
        if let (Some(r), Some(v)) = (r, v) {
            diffs.push(*v as u8 as f64 - *r as u8 as f64);
            pr += *r as u64;
            pv += *v as u64;
            match (r, v) {
                (true, false) => b += 1,
                (false, true) => c += 1,
                _ => {}
            }
        }
    }
    let n = diffs.len() as u64;
    let Interval { estimate, low, high } = paired_bootstrap(&diffs, BOOTSTRAP_RESAMPLES, seed);
    let rate = |k: u64| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    Delta { n, reference_rate: rate(pr), rate: rate(pv), delta: estimate, low, high, regressions: b, improvements: c, p_value: mcnemar_exact(b, c), p_worse: binomial_upper_tail(b + c, b) }
}

/// A pass rate over the scored cases of one variant, with its Wilson
/// interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RateCi {
    pub n: u64,
    pub passed: u64,
    pub errors: u64,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

pub fn rate_ci(v: &[Option<bool>]) -> RateCi {
    let n = v.iter().filter(|x| x.is_some()).count() as u64;
    let passed = v.iter().filter(|x| **x == Some(true)).count() as u64;
    let (low, high) = wilson(passed, n);
    RateCi { n, passed, errors: v.len() as u64 - n, rate: if n == 0 { 0.0 } else { passed as f64 / n as f64 }, low, high }
}

/// The mean over cases of per-case pass fractions across several variants
/// (seeds, perturbations), with a 95% interval that treats the case as the
/// unit (its variants are correlated).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Pooled {
    pub cases: u64,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

pub fn pooled(variants: &[&[Option<bool>]]) -> Pooled {
    let n_cases = variants.iter().map(|v| v.len()).max().unwrap_or(0);
    let mut per_case = vec![];
    for i in 0..n_cases {
        let vals: Vec<f64> = variants.iter().filter_map(|v| v.get(i).copied().flatten()).map(|b| b as u8 as f64).collect();
        if !vals.is_empty() {
            per_case.push(vals.iter().sum::<f64>() / vals.len() as f64);
        }
    }
    let n = per_case.len() as f64;
    if n == 0.0 {
        return Pooled::default();
    }
    let mean = per_case.iter().sum::<f64>() / n;
    let var = if n > 1.0 { per_case.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    let se = (var / n).sqrt();
    Pooled { cases: n as u64, mean, low: (mean - 1.96 * se).max(0.0), high: (mean + 1.96 * se).min(1.0) }
}

// ---------------------------------------------------------------- reports

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartResult {
    pub part: Part,
    /// Tokens the part adds to a call (mean over the sample of cases).
    pub tokens: f64,
    /// The prompt without this part against the full prompt.
    pub without: Delta,
    /// Dropping it makes the prompt significantly worse (p_worse < alpha).
    pub matters: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GreedyStep {
    pub tried: String,
    pub variant: String,
    pub tokens: f64,
    /// The candidate (current prompt minus `tried`) against the full prompt.
    pub against_full: Delta,
    pub accepted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MinimizeReport {
    pub prompt: String,
    pub provider: String,
    pub alpha: f64,
    pub max_drop: Option<f64>,
    pub cases: u64,
    pub tokenizer: String,
    pub full: RateCi,
    pub full_tokens: f64,
    pub parts: Vec<PartResult>,
    pub steps: Vec<GreedyStep>,
    /// The smallest prompt not significantly worse than the full one.
    pub best_variant: String,
    pub best_dropped: Vec<String>,
    pub best: RateCi,
    pub best_tokens: f64,
    pub best_against_full: Option<Delta>,
    /// 1 - best_tokens / full_tokens.
    pub token_saving: f64,
    pub calls_per_month: Option<u64>,
    pub monthly_saving_usd: Option<f64>,
    pub best_system: Option<String>,
    pub best_template: String,
    pub best_shots_order: Option<Vec<usize>>,
    /// Why the search stopped early (budget), if it did.
    pub stopped: Option<String>,
    pub written_as: Option<String>,
    pub run_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepPoint {
    pub k: usize,
    /// k actually shown (capped by the examples available).
    pub shown: usize,
    pub seeds: Vec<u64>,
    /// Pass rate per seed, with its Wilson interval.
    pub per_seed: Vec<RateCi>,
    pub pooled: Pooled,
    pub prompt_tokens: f64,
    pub cost_per_call_usd: Option<f64>,
    /// Against the previous point (per-case pass fractions, paired).
    pub step_gain: Option<f64>,
    pub step_p: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CurveShape {
    /// The last step up is significant: more examples still help.
    Rising,
    /// Examples helped, but the last step adds nothing significant.
    Plateau,
    /// No significant gain over zero examples.
    Flat,
    /// The largest k is significantly worse than the best point.
    Falling,
}

impl CurveShape {
    pub fn as_str(&self) -> &'static str {
        match self {
            CurveShape::Rising => "rising",
            CurveShape::Plateau => "plateau",
            CurveShape::Flat => "flat",
            CurveShape::Falling => "falling",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepReport {
    pub prompt: String,
    pub provider: String,
    pub cases: u64,
    pub strategy: String,
    pub examples_available: usize,
    pub tokenizer: String,
    pub points: Vec<SweepPoint>,
    pub shape: CurveShape,
    /// Best pooled pass rate minus the k=0 (or smallest k) point.
    pub gain: f64,
    pub gain_p: f64,
    pub alpha: f64,
    pub stopped: Option<String>,
    pub run_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VariantResult {
    pub id: String,
    /// `original`, `shots-order`, `sentence-order`, `label-order`, `format`, `paraphrase`.
    pub family: String,
    pub description: String,
    pub rate: RateCi,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Flip {
    pub case_id: String,
    /// Variants it passes with / fails with.
    pub passes: Vec<String>,
    pub fails: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VaryReport {
    pub prompt: String,
    pub provider: String,
    pub cases: u64,
    pub variants: Vec<VariantResult>,
    pub min: f64,
    pub max: f64,
    pub range: f64,
    /// Sample standard deviation of the variants' pass rates.
    pub sd: f64,
    /// Mean over variants, with a case-clustered 95% interval.
    pub pooled: Pooled,
    /// Range per family (the largest says what the prompt is fragile to).
    pub family_range: Vec<(String, f64)>,
    pub flipping_cases: u64,
    pub flips: Vec<Flip>,
    pub stopped: Option<String>,
    pub run_id: String,
}

/// The spread of a set of variants' verdict vectors (aligned by case).
pub fn spread(variants: &[(VariantResult, Vec<Option<bool>>)], case_ids: &[String]) -> (f64, f64, f64, f64, Pooled, Vec<(String, f64)>, Vec<Flip>) {
    let rates: Vec<f64> = variants.iter().filter(|(v, _)| v.rate.n > 0).map(|(v, _)| v.rate.rate).collect();
    let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = rates.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let (min, max) = if rates.is_empty() { (0.0, 0.0) } else { (min, max) };
    let mean = if rates.is_empty() { 0.0 } else { rates.iter().sum::<f64>() / rates.len() as f64 };
    let sd = if rates.len() > 1 { (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (rates.len() - 1) as f64).sqrt() } else { 0.0 };
    let vecs: Vec<&[Option<bool>]> = variants.iter().map(|(_, v)| v.as_slice()).collect();
    let pooled = pooled(&vecs);
    let mut fams: Vec<String> = vec![];
    for (v, _) in variants {
        if !fams.contains(&v.family) {
            fams.push(v.family.clone());
        }
    }
    let original = variants.iter().find(|(v, _)| v.family == "original").map(|(v, _)| v.rate.rate);
    let family_range = fams
        .into_iter()
        .filter(|f| f != "original")
        .map(|f| {
            let rs: Vec<f64> = variants.iter().filter(|(v, _)| v.family == f && v.rate.n > 0).map(|(v, _)| v.rate.rate).chain(original).collect();
            let r = rs.iter().cloned().fold(f64::NEG_INFINITY, f64::max) - rs.iter().cloned().fold(f64::INFINITY, f64::min);
            (f, if rs.is_empty() { 0.0 } else { r })
        })
        .collect();
    let mut flips = vec![];
    for (i, cid) in case_ids.iter().enumerate() {
        let (mut p, mut f) = (vec![], vec![]);
        for (v, vec) in variants {
            match vec.get(i).copied().flatten() {
                Some(true) => p.push(v.id.clone()),
                Some(false) => f.push(v.id.clone()),
                None => {}
            }
        }
        if !p.is_empty() && !f.is_empty() {
            flips.push(Flip { case_id: cid.clone(), passes: p, fails: f });
        }
    }
    (min, max, max - min, sd, pooled, family_range, flips)
}

/// Shape of a learning curve from per-point per-case pass fractions.
pub fn curve_shape(points: &[SweepPoint], per_case: &[Vec<f64>], alpha: f64) -> (CurveShape, f64, f64) {
    if points.len() < 2 {
        return (CurveShape::Flat, 0.0, 1.0);
    }
    let diff = |a: usize, b: usize| -> crate::paired::Clustered {
        let d: Vec<f64> = per_case[a].iter().zip(&per_case[b]).map(|(x, y)| y - x).collect();
        crate::paired::clustered_difference(&d)
    };
    let best = (0..points.len()).max_by(|&a, &b| points[a].pooled.mean.partial_cmp(&points[b].pooled.mean).unwrap_or(std::cmp::Ordering::Equal)).unwrap_or(0);
    let g = diff(0, best);
    let last = points.len() - 1;
    let step = diff(last - 1, last);
    let shape = if best != last && diff(best, last).estimate < 0.0 && diff(best, last).p_value < alpha {
        CurveShape::Falling
    } else if g.estimate <= 0.0 || g.p_value >= alpha {
        CurveShape::Flat
    } else if step.estimate > 0.0 && step.p_value < alpha && points[last].pooled.mean >= points[best].pooled.mean {
        // Still rising: the last step is a significant gain and the largest
        // k is the best point (a last step up that does not regain an
        // earlier peak is noise around a plateau).
        CurveShape::Rising
    } else {
        CurveShape::Plateau
    };
    (shape, g.estimate, g.p_value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn src(system: Option<&str>, template: &str, k: usize) -> PromptSource {
        PromptSource {
            id: "p".into(),
            system: system.map(String::from),
            template: template.into(),
            origin: PathBuf::from("t.yaml"),
            shots: (k > 0).then(|| ShotsSpec { k, strategy: Default::default(), seed: 1, order: None }),
            labels: None,
        }
    }

    #[test]
    fn sentences_split_and_rejoin() {
        let line = "Route the message. Use one label, e.g. billing. Answer now!";
        let s = sentences(line);
        assert_eq!(s, vec!["Route the message. ", "Use one label, e.g. billing. ", "Answer now!"]);
        assert_eq!(s.concat(), line);
    }

    #[test]
    fn parts_and_drops() {
        let t = "You sort mail. Be brief. Answer with one of: {{ labels | join(\", \") }}.\n\nTeams:\n- a: x\n- b: y\n\n{% for s in shots %}Q: {{ s.input }}\nA: {{ s.expected }}\n{% endfor %}\nMessage: {{ input }}\nTeam:";
        let d = Dissected::new(&src(Some("System one. System two."), t, 3), 3);
        let ids: Vec<(&str, PartKind)> = d.parts.iter().map(|p| (p.id.as_str(), p.kind)).collect();
        assert_eq!(
            ids,
            vec![
                ("s1", PartKind::System),
                ("s2", PartKind::System),
                ("p1", PartKind::Instruction),
                ("p2", PartKind::Instruction),
                ("p3", PartKind::Format),
                ("p4", PartKind::Reference),
                ("p5", PartKind::Instruction),
                ("e1", PartKind::Example),
                ("e2", PartKind::Example),
                ("e3", PartKind::Example),
            ]
        );
        let drop: BTreeSet<usize> = ["p2", "p4", "e2", "s1"].iter().map(|i| d.index_of(i).unwrap()).collect();
        let v = d.without("x", &drop);
        assert_eq!(v.system.as_deref(), Some("System two."));
        assert_eq!(v.template, "You sort mail. Answer with one of: {{ labels | join(\", \") }}.\n\n{% for s in shots %}Q: {{ s.input }}\nA: {{ s.expected }}\n{% endfor %}\nMessage: {{ input }}\nTeam:");
        assert_eq!(v.shots.unwrap().order, Some(vec![0, 2]));
        assert_eq!(d.variant_id(&drop), "p~drop:s1,p2,p4,e2");
        // Dropping a whole first paragraph leaves no leading blank line.
        let all: BTreeSet<usize> = ["p1", "p2", "p3"].iter().map(|i| d.index_of(i).unwrap()).collect();
        assert!(d.without("y", &all).template.starts_with("Teams:\n- a: x"));
    }

    #[test]
    fn perturbations() {
        let s = src(None, "Sort mail. Be brief. Use labels a, b, c.\n- x\n- y\n{% for s in shots %}{{ s.input }}{% endfor %}\nIn: {{ input }}", 4);
        let d = Dissected::new(&s, 4);
        let r = d.reordered("r", 1).unwrap();
        assert_ne!(r.template, s.template);
        assert!(r.template.ends_with("\n- x\n- y\n{% for s in shots %}{{ s.input }}{% endfor %}\nIn: {{ input }}"));
        let sh = d.shots_shuffled("s", 3).unwrap();
        let o = sh.shots.unwrap().order.unwrap();
        assert_ne!(o, vec![0, 1, 2, 3]);
        let labels = vec!["a".to_string(), "b".into(), "c".into()];
        let l = labels_shuffled(&s, &labels, "l", 2).unwrap();
        assert!(!l.template.contains("a, b, c"));
        assert_eq!(reformatted(&s, "bullets", "b").unwrap().template, "Sort mail. Be brief. Use labels a, b, c.\n* x\n* y\n{% for s in shots %}{{ s.input }}{% endfor %}\nIn: {{ input }}");
        assert_eq!(d.instruction().unwrap(), "Sort mail. Be brief. Use labels a, b, c.");
        assert_eq!(d.paraphrased("q", "Classify the mail.").unwrap().template, "Classify the mail.\n- x\n- y\n{% for s in shots %}{{ s.input }}{% endfor %}\nIn: {{ input }}");
    }

    #[test]
    fn append_prompt_keeps_the_file() {
        let y = "version: 1\nprompts:\n  - id: a   # first\n    template: \"x {{ input }}\"\n\n# providers below\nproviders:\n  - id: echo\n";
        let mut s = src(Some("Be \"brief\"."), "Line one.\nIn: {{ input }}", 4);
        s.id = "a-min".into();
        s.shots.as_mut().unwrap().order = Some(vec![2, 0]);
        let out = append_prompt(y, &s, "written by a test").unwrap();
        assert_eq!(
            out,
            "version: 1\nprompts:\n  - id: a   # first\n    template: \"x {{ input }}\"\n  # written by a test\n  - id: \"a-min\"\n    system: \"Be \\\"brief\\\".\"\n    template: \"Line one.\\nIn: {{ input }}\"\n    shots: { k: 4, strategy: stratified, seed: 1, order: [2, 0] }\n\n# providers below\nproviders:\n  - id: echo\n"
        );
    }

    #[test]
    fn curve_shapes() {
        // Per-case pass fractions for 100 cases at each point.
        let curve = |rates: &[f64]| -> (Vec<SweepPoint>, Vec<Vec<f64>>) {
            let per: Vec<Vec<f64>> = rates.iter().map(|r| (0..100).map(|i| if (i as f64) < r * 100.0 { 1.0 } else { 0.0 }).collect()).collect();
            let pts = rates
                .iter()
                .enumerate()
                .map(|(k, r)| SweepPoint { k, shown: k, seeds: vec![0], per_seed: vec![], pooled: Pooled { cases: 100, mean: *r, low: 0.0, high: 1.0 }, prompt_tokens: 0.0, cost_per_call_usd: None, step_gain: None, step_p: None })
                .collect();
            (pts, per)
        };
        let shape = |rates: &[f64]| {
            let (p, c) = curve(rates);
            curve_shape(&p, &c, 0.05).0
        };
        assert_eq!(shape(&[0.1, 0.3, 0.5, 0.7]), CurveShape::Rising);
        assert_eq!(shape(&[0.1, 0.6, 0.6, 0.6]), CurveShape::Plateau);
        // A last step up that does not regain the earlier peak: plateau.
        assert_eq!(shape(&[0.0, 0.5, 0.6, 0.45, 0.58]), CurveShape::Plateau);
        assert_eq!(shape(&[0.3, 0.3, 0.31, 0.3]), CurveShape::Flat);
        assert_eq!(shape(&[0.1, 0.7, 0.4]), CurveShape::Falling);
    }

    #[test]
    fn delta_counts_discordant_pairs() {
        let r = vec![Some(true), Some(true), Some(true), Some(false), None, Some(true)];
        let v = vec![Some(false), Some(false), Some(true), Some(true), Some(true), Some(true)];
        let d = paired_delta(&r, &v, 1);
        assert_eq!((d.n, d.regressions, d.improvements), (5, 2, 1));
        assert!((d.delta - (-0.2)).abs() < 1e-12);
        // P(X >= 2 | n = 3) = 4/8.
        assert!((d.p_worse - 0.5).abs() < 1e-12);
    }
}
