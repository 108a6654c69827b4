//! Model-graded checks: the grading prompts, and strict parsers for what a
//! grader or a judge answers.
//!
//! Pure: building the messages and reading the answer live here; the call
//! itself (cache, retries, cost) is the runner's. The parsers are strict on
//! purpose: a grader that answers "Sure! It looks fine" has not graded
//! anything, and reading that as a pass would let a broken judge wave every
//! output through. A malformed answer is an error, reported as such.

use crate::dataset::{value_text, Case};
use crate::review::Verdict;
use crate::template::Message;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The default prompt of the `llm-rubric` assertion. Variables: `input`
/// (the case's input), `output` (what the model answered), `rubric` (the
/// assertion's `value`), `expected` (may be empty) and `vars`. Override it
/// per assertion with `rubric_prompt:`; `tunegate eval --show-grader-prompt`
/// prints it.
pub const DEFAULT_RUBRIC_PROMPT: &str = r#"You are grading the output of an AI system against a rubric.

<input>
{{ input }}
</input>

<output>
{{ output }}
</output>

<rubric>
{{ rubric }}
</rubric>

Does the output satisfy the rubric? Reply with exactly one JSON object and nothing else:
{"pass": true or false, "score": a number from 0 to 1, "reason": "one short sentence"}"#;

/// The default prompt of the pairwise judge (`tunegate compare --judge`).
/// Variables: `input`, `output_a` and `output_b` (in the order shown, which
/// is swapped on the second call), `criteria` (may be empty), `expected`.
pub const DEFAULT_PAIRWISE_PROMPT: &str = r#"You are comparing two outputs of an AI system for the same input.

<input>
{{ input }}
</input>

<output_A>
{{ output_a }}
</output_A>

<output_B>
{{ output_b }}
</output_B>
{% if criteria %}
Criteria: {{ criteria }}
{% endif %}
Which output is better? Reply with exactly one JSON object and nothing else:
{"winner": "A" or "B" or "tie", "reason": "one short sentence"}"#;

/// A grade as the grader gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    pub pass: bool,
    pub score: f64,
    pub reason: String,
}

fn render(template: &str, ctx: BTreeMap<&str, Value>) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.render_str(template, ctx).map_err(|e| format!("grading prompt: {e}"))
}

/// The grader's messages for one output.
pub fn rubric_messages(template: Option<&str>, rubric: &str, output: &str, case: &Case) -> Result<Vec<Message>, String> {
    let mut ctx = BTreeMap::new();
    ctx.insert("input", Value::String(case.input_text()));
    ctx.insert("output", Value::String(output.to_string()));
    ctx.insert("rubric", Value::String(rubric.to_string()));
    ctx.insert("expected", Value::String(case.expected.as_ref().map(value_text).unwrap_or_default()));
    ctx.insert("vars", Value::Object(case.vars.clone()));
    Ok(vec![Message::new("user", render(template.unwrap_or(DEFAULT_RUBRIC_PROMPT), ctx)?)])
}

/// The judge's messages for one order of two outputs.
pub fn pairwise_messages(template: Option<&str>, input: &str, first: &str, second: &str, criteria: Option<&str>, expected: Option<&str>) -> Result<Vec<Message>, String> {
    let mut ctx = BTreeMap::new();
    ctx.insert("input", Value::String(input.to_string()));
    ctx.insert("output_a", Value::String(first.to_string()));
    ctx.insert("output_b", Value::String(second.to_string()));
    ctx.insert("criteria", Value::String(criteria.unwrap_or("").to_string()));
    ctx.insert("expected", Value::String(expected.unwrap_or("").to_string()));
    Ok(vec![Message::new("user", render(template.unwrap_or(DEFAULT_PAIRWISE_PROMPT), ctx)?)])
}

fn clip(s: &str) -> String {
    let s = s.trim().replace('\n', "⏎");
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// The one JSON object a grader must answer with. A Markdown code fence
/// around it is accepted (models add one out of habit); any other text
/// before or after it is not.
fn strict_object(text: &str) -> Result<Map<String, Value>, String> {
    let t = text.trim();
    let t = match t.strip_prefix("```") {
        Some(rest) => {
            let rest = rest.strip_prefix("json").unwrap_or(rest);
            rest.strip_suffix("```").ok_or_else(|| format!("unclosed code fence in {:?}", clip(text)))?.trim()
        }
        None => t,
    };
    match serde_json::from_str::<Value>(t) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("expected one JSON object, got {:?}", clip(text))),
        Err(_) => Err(format!("not one JSON object: {:?}", clip(text))),
    }
}

/// Parses `{"pass": bool, "score": 0..1, "reason": "..."}`, nothing more,
/// nothing less.
pub fn parse_grade(text: &str) -> Result<Grade, String> {
    let m = strict_object(text)?;
    for k in m.keys() {
        if !["pass", "score", "reason"].contains(&k.as_str()) {
            return Err(format!("unexpected key `{k}` in the grade (expected pass, score, reason)"));
        }
    }
    let pass = m.get("pass").and_then(Value::as_bool).ok_or("the grade has no boolean `pass`")?;
    let score = m.get("score").and_then(Value::as_f64).ok_or("the grade has no numeric `score`")?;
    if !(0.0..=1.0).contains(&score) {
        return Err(format!("the grade's score {score} is outside 0..1"));
    }
    let reason = m.get("reason").and_then(Value::as_str).ok_or("the grade has no string `reason`")?.to_string();
    Ok(Grade { pass, score, reason })
}

/// A position in the order shown to the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    First,
    Second,
    Tie,
}

impl Position {
    pub fn as_str(&self) -> &'static str {
        match self {
            Position::First => "A",
            Position::Second => "B",
            Position::Tie => "tie",
        }
    }
}

/// Parses `{"winner": "A"|"B"|"tie", "reason": "..."}` (`reason` optional).
pub fn parse_pairwise(text: &str) -> Result<(Position, String), String> {
    let m = strict_object(text)?;
    for k in m.keys() {
        if !["winner", "reason"].contains(&k.as_str()) {
            return Err(format!("unexpected key `{k}` in the verdict (expected winner, reason)"));
        }
    }
    let w = m.get("winner").and_then(Value::as_str).ok_or("the verdict has no string `winner`")?;
    let pos = match w.trim() {
        "A" | "a" => Position::First,
        "B" | "b" => Position::Second,
        "tie" | "TIE" | "Tie" => Position::Tie,
        other => return Err(format!("winner {other:?} is not A, B or tie")),
    };
    let reason = match m.get("reason") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("the verdict's `reason` is not a string".into()),
    };
    Ok((pos, reason))
}

/// Combines the two orders: `a_first` was asked with run A shown first,
/// `b_first` with run B shown first. A judge that prefers the same *run*
/// both times decides; one that changes its mind with the order (typically
/// a judge that favours a position) gives a tie, so position bias cancels
/// out instead of leaking into the win rate.
pub fn combine_orders(a_first: Position, b_first: Position) -> (Verdict, bool) {
    let run = |p: Position, a_shown_first: bool| match (p, a_shown_first) {
        (Position::Tie, _) => Verdict::Tie,
        (Position::First, true) | (Position::Second, false) => Verdict::A,
        _ => Verdict::B,
    };
    let (x, y) = (run(a_first, true), run(b_first, false));
    if x == y {
        (x, true)
    } else {
        (Verdict::Tie, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades_are_parsed_strictly() {
        assert_eq!(parse_grade(r#"{"pass": true, "score": 0.9, "reason": "ok"}"#).unwrap(), Grade { pass: true, score: 0.9, reason: "ok".into() });
        assert!(parse_grade("```json\n{\"pass\": false, \"score\": 0, \"reason\": \"no\"}\n```").is_ok());
        for bad in [
            "PASS",
            "Sure! {\"pass\": true, \"score\": 1, \"reason\": \"x\"}",
            r#"{"pass": "yes", "score": 1, "reason": "x"}"#,
            r#"{"pass": true, "score": 1.5, "reason": "x"}"#,
            r#"{"pass": true, "reason": "x"}"#,
            r#"{"pass": true, "score": 1, "reason": "x", "extra": 1}"#,
            r#"[true]"#,
            "",
        ] {
            assert!(parse_grade(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn both_orders_cancel_position_bias() {
        use Position::*;
        // Always the first position: inconsistent, a tie.
        assert_eq!(combine_orders(First, First), (Verdict::Tie, false));
        assert_eq!(combine_orders(Second, Second), (Verdict::Tie, false));
        // A shown first and picked, then A shown second and picked.
        assert_eq!(combine_orders(First, Second), (Verdict::A, true));
        assert_eq!(combine_orders(Second, First), (Verdict::B, true));
        assert_eq!(combine_orders(Tie, Tie), (Verdict::Tie, true));
        assert_eq!(combine_orders(First, Tie), (Verdict::Tie, false));
        assert!(parse_pairwise(r#"{"winner": "C"}"#).is_err());
        assert!(parse_pairwise("A").is_err());
        assert_eq!(parse_pairwise(r#"{"winner": "B", "reason": "r"}"#).unwrap().0, Second);
    }

    #[test]
    fn the_default_prompts_render() {
        let case = Case { id: "c".into(), line: 1, vars: serde_json::from_str(r#"{"input": "hi"}"#).unwrap(), expected: None, tags: vec![], asserts: vec![] };
        let m = rubric_messages(None, "is polite", "hello", &case).unwrap();
        assert!(m[0].content.contains("<rubric>\nis polite\n</rubric>") && m[0].content.contains("hello"));
        let m = pairwise_messages(None, "hi", "one", "two", None, None).unwrap();
        assert!(m[0].content.contains("<output_A>\none\n</output_A>") && !m[0].content.contains("Criteria"));
    }
}
