//! When hosted models and hosted fine-tuning stop, from OpenAI's
//! deprecations page (May 2026). Remote tuning warns before these dates and
//! refuses after them, naming what still works; the price table keeps the
//! prices of retired models, marked as historic, so old runs still cost out.
//!
//! "Today" is the UTC date, or `TUNEGATE_TODAY` (YYYY-MM-DD) when set: for
//! planning ("what happens on 2027-01-07?") and for tests with a fixed clock.

use chrono::NaiveDate;

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("dates in this table are valid")
}

/// Organisations without recent fine-tuned inference cannot create jobs from here.
pub const OPENAI_FT_RESTRICTED_FROM: &str = "2026-07-02";
/// Nobody can create OpenAI fine-tuning jobs from here.
pub const OPENAI_FT_ENDS: &str = "2027-01-06";
/// OpenAI's hosted Evals shut down.
pub const OPENAI_EVALS_ENDED: &str = "2026-11-30";

/// (model name prefix, shutdown date): the snapshot and its fine-tunes stop
/// answering. Longest prefix wins, as in the price table.
pub const SHUTDOWNS: &[(&str, &str)] = &[("gpt-4.1-nano", "2026-10-23"), ("gpt-4.1-mini", "2027-01-14"), ("gpt-4.1", "2027-01-14"), ("gpt-4o-mini", "2027-01-14"), ("gpt-4o", "2027-01-14")];

/// What still works when hosted fine-tuning does not.
pub const ALTERNATIVES: &str = "local LoRA on the embedded model (`tune.backend: local`), any OpenAI-compatible fine-tuning server you run (`tunegate serve` on your machine, with `tune.base_url` pointing at it), or axolotl on a GPU cluster (`tunegate data export --format axolotl`); a PEFT adapter serves on vLLM with `--lora-modules`";

/// Today's date (UTC), or `TUNEGATE_TODAY`.
pub fn today() -> NaiveDate {
    std::env::var("TUNEGATE_TODAY").ok().and_then(|s| NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()).unwrap_or_else(|| chrono::Utc::now().date_naive())
}

/// The base model of a name, fine-tunes included (`ft:gpt-4o-mini-2024-07-18:org::id`).
fn base_of(model: &str) -> &str {
    let m = model.rsplit('/').next().unwrap_or(model);
    m.strip_prefix("ft:").unwrap_or(m)
}

/// When `model` (or the snapshot a fine-tune is of) shuts down, if known.
pub fn shutdown(model: &str) -> Option<NaiveDate> {
    let m = base_of(model);
    SHUTDOWNS.iter().filter(|(p, _)| m.starts_with(p)).max_by_key(|(p, _)| p.len()).map(|(_, d)| date(d))
}

/// One line on a model's shutdown as of `today`, if it has one.
pub fn model_note(model: &str, today: NaiveDate) -> Option<String> {
    let d = shutdown(model)?;
    let left = (d - today).num_days();
    Some(if left <= 0 {
        format!("{} was retired on {d}: its price is historic and its fine-tunes no longer answer", base_of(model))
    } else {
        format!("{} shuts down on {d} ({left} days from {today}), and its fine-tunes with it", base_of(model))
    })
}

/// Whether `base_url` is OpenAI's own API (the only one the dates bind).
pub fn is_openai(base_url: &str) -> bool {
    let host = base_url.split("://").nth(1).unwrap_or(base_url).split(['/', ':']).next().unwrap_or("");
    host == "api.openai.com" || host.ends_with(".openai.com")
}

/// Whether a fine-tuning job of `base_model` can still be created at OpenAI.
#[derive(Debug, Clone, PartialEq)]
pub enum HostedTuning {
    Open,
    /// It can, for now: what the user should know.
    Warn(String),
    /// It cannot: why, and what to use instead.
    Refused(String),
}

pub fn openai_fine_tuning(base_model: &str, today: NaiveDate) -> HostedTuning {
    let ends = date(OPENAI_FT_ENDS);
    if today >= ends {
        return HostedTuning::Refused(format!("OpenAI creates no fine-tuning jobs since {ends} (its deprecations page, May 2026). Instead: {ALTERNATIVES}"));
    }
    if let Some(d) = shutdown(base_model).filter(|d| today >= *d) {
        return HostedTuning::Refused(format!("{} was shut down on {d}: OpenAI no longer tunes or serves it. Instead: {ALTERNATIVES}", base_of(base_model)));
    }
    let mut w = format!(
        "OpenAI stops creating fine-tuning jobs on {ends} ({} days from {today}); {} {OPENAI_FT_RESTRICTED_FROM} only organisations with recent fine-tuned inference can create them",
        (ends - today).num_days(),
        if today >= date(OPENAI_FT_RESTRICTED_FROM) { "since" } else { "from" }
    );
    if let Some(n) = model_note(base_model, today) {
        w.push_str(&format!("; {n}, so a model tuned now serves only until then"));
    }
    w.push_str(&format!(". What lasts: {ALTERNATIVES}"));
    if today >= date(OPENAI_FT_RESTRICTED_FROM) || shutdown(base_model).is_some() {
        HostedTuning::Warn(w)
    } else {
        HostedTuning::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dates_warn_before_and_refuse_after() {
        let d = |s| date(s);
        assert!(matches!(openai_fine_tuning("gpt-4o-mini-2024-07-18", d("2026-12-04")), HostedTuning::Warn(w) if w.contains("2027-01-06 (33 days") && w.contains("shuts down on 2027-01-14")));
        assert!(matches!(openai_fine_tuning("gpt-4o-mini", d("2027-01-05")), HostedTuning::Warn(_)));
        assert!(matches!(openai_fine_tuning("gpt-4o-mini", d("2027-01-06")), HostedTuning::Refused(r) if r.contains("no fine-tuning jobs since 2027-01-06") && r.contains("tune.backend: local") && r.contains("axolotl")));
        assert!(matches!(openai_fine_tuning("gpt-4.1-nano-2025-04-14", d("2026-11-01")), HostedTuning::Refused(r) if r.contains("shut down on 2026-10-23")));
        assert_eq!(openai_fine_tuning("gpt-5-mini", d("2026-03-01")), HostedTuning::Open);
        assert!(matches!(openai_fine_tuning("gpt-5-mini", d("2026-08-01")), HostedTuning::Warn(w) if w.contains("since 2026-07-02") && !w.contains("shuts down")));
        assert_eq!(shutdown("ft:gpt-4.1-mini-2025-04-14:acme::x1"), Some(d("2027-01-14")));
        assert_eq!(shutdown("gpt-5-mini"), None);
        assert!(model_note("gpt-4.1-nano", d("2026-12-04")).unwrap().contains("retired on 2026-10-23"));
        assert!(is_openai("https://api.openai.com/v1") && !is_openai("http://127.0.0.1:8080/v1") && !is_openai("https://notopenai.com.evil/v1"));
    }
}
