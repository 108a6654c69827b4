//! Tokenizer throughput on a few MB of varied text (the parity fixture's
//! strings, repeated). Run optimised:
//! `cargo run --release -p tunegate-model --example tokenize_bench`
use std::time::Instant;

use tunegate_model::{paths, GgufFile, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = paths::resolve_default_model()?;
    let t0 = Instant::now();
    let g = GgufFile::open(&path)?;
    let t1 = Instant::now();
    let tok = Tokenizer::from_gguf(&g)?;
    let t2 = Instant::now();
    println!(
        "open GGUF header: {:?}, build tokenizer: {:?}",
        t1 - t0,
        t2 - t1
    );

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tokenizer.jsonl"
    );
    let texts: Vec<String> = std::fs::read_to_string(fixture)?
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    let one: usize = texts.iter().map(|t| t.len()).sum();
    let reps = (4 << 20) / one + 1;
    for (name, special) in [("parse_special=false", false), ("parse_special=true", true)] {
        let mut best = f64::MAX;
        let mut n_tokens = 0;
        for _ in 0..3 {
            let t = Instant::now();
            n_tokens = 0;
            for _ in 0..reps {
                for s in &texts {
                    n_tokens += tok.encode(s, true, special).len();
                }
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let mb = (one * reps) as f64 / 1e6;
        println!(
            "{name}: {:.1} MB, {} strings, {n_tokens} tokens in {best:.3}s: {:.2} M tokens/s, {:.1} MB/s",
            mb,
            texts.len() * reps,
            n_tokens as f64 / best / 1e6,
            mb / best
        );
    }
    // Support-message-sized inputs: the common case in evaluation.
    let msgs: Vec<&String> = texts
        .iter()
        .filter(|t| (20..300).contains(&t.len()))
        .collect();
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..20 {
        for s in &msgs {
            n += tok.encode(s, true, false).len();
        }
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "short messages (20-300 bytes): {:.0} strings/s, {:.2} M tokens/s",
        (msgs.len() * 20) as f64 / dt,
        n as f64 / dt / 1e6
    );
    Ok(())
}
