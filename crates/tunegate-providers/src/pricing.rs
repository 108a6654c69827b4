//! Prices of well-known hosted models, in US dollars per million tokens
//! (input, output), as published by the vendors in 2025. A task file can
//! override any of them per provider with `price:`; models not listed have
//! no known cost (reports say so rather than guess).

use tunegate_core::Price;

/// (model name prefix, input $/Mtok, output $/Mtok). Longest prefix wins.
pub const PRICES: &[(&str, f64, f64)] = &[
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-5-mini", 0.25, 2.00),
    ("gpt-5", 1.25, 10.00),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    ("o3", 2.00, 8.00),
    ("claude-3-haiku", 0.25, 1.25),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-haiku-4", 1.00, 5.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-opus-4", 15.00, 75.00),
];

/// What a batch answer costs against a live one: OpenAI's Batch API and
/// Anthropic's Message Batches both charge half.
pub const BATCH_PRICE_FACTOR: f64 = 0.5;

pub fn lookup(model: &str) -> Option<Price> {
    PRICES
        .iter()
        .filter(|(p, _, _)| model.starts_with(p))
        .max_by_key(|(p, _, _)| p.len())
        .map(|(_, i, o)| Price { input_per_mtok: *i, output_per_mtok: *o })
}

pub fn cost(price: Option<Price>, prompt_tokens: Option<u64>, completion_tokens: Option<u64>) -> Option<f64> {
    let p = price?;
    Some((prompt_tokens? as f64 * p.input_per_mtok + completion_tokens.unwrap_or(0) as f64 * p.output_per_mtok) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn longest_prefix_wins() {
        assert_eq!(lookup("gpt-4o-mini-2024-07-18").unwrap().input_per_mtok, 0.15);
        assert_eq!(lookup("gpt-4o-2024-08-06").unwrap().input_per_mtok, 2.50);
        assert!(lookup("my-model").is_none());
        assert!((cost(lookup("gpt-4o-mini"), Some(1000), Some(100)).unwrap() - 0.00021).abs() < 1e-12);
    }
}

/// A provider's price per million tokens, and where it comes from: the
/// task file's `price:`, else tunegate's table of published prices.
pub fn price_of(p: &tunegate_core::ProviderSpec) -> (Option<tunegate_core::Price>, String) {
    let (scheme, model) = p.id.split_once(':').unwrap_or((p.id.as_str(), ""));
    match (p.price, scheme) {
        (Some(pr), _) => (Some(pr), "price from the task file".to_string()),
        (None, "openai" | "anthropic" | "openai-compatible") => match lookup(model) {
            Some(pr) => {
                let life = crate::lifecycle::model_note(model, crate::lifecycle::today()).map(|n| format!("; {n}")).unwrap_or_default();
                (Some(pr), format!("published price of {model} (tunegate price table, 2025){life}"))
            }
            None => (None, format!("no published price for {model}: set `price:` on the provider")),
        },
        (None, "local") => (None, "local model: self-hosted, no per-token price".into()),
        (None, _) => (None, "no price (set `price:` on the provider to include it)".into()),
    }
}
