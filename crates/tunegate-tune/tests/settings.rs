//! Settings are resolved once: flags over the task file over the defaults,
//! every value checked with the place it came from.

use std::path::Path;
use tunegate_tune::settings::{check_task, Recipe, ALL_LINEAR, DEFAULTS};
use tunegate_tune::{Backend, Overrides, SelectBy, Settings, TuneError};

fn task(dir: &Path, tune: &str) -> tunegate_core::Task {
    task_of(dir, "classification", tune)
}

fn task_of(dir: &Path, kind: &str, tune: &str) -> tunegate_core::Task {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/eval.jsonl"), "{\"input\": \"x\", \"expected\": \"a\"}\n").unwrap();
    std::fs::write(dir.join("data/examples.jsonl"), "{\"input\": \"y\", \"expected\": \"b\"}\n").unwrap();
    let yaml = format!(
        "version: 1\ntask:\n  name: t\n  kind: {kind}\n{labels}prompts:\n  - id: bare\n    template: \"{{{{ input }}}}\"\nproviders:\n  - id: echo\ndata:\n  eval: data/eval.jsonl\n  examples: data/examples.jsonl\ntune:\n  base: local:gemma-3-270m\n  prompt: bare\n{tune}",
        labels = if kind == "classification" { "  labels: [a, b]\n" } else { "" }
    );
    let p = dir.join("tunegate.yaml");
    std::fs::write(&p, yaml).unwrap();
    tunegate_core::Task::load(&p).unwrap()
}

#[test]
fn defaults_then_task_file_then_flags() {
    let d = tempfile::tempdir().unwrap();
    let s = Settings::for_task(&task(d.path(), ""), &Overrides::default()).unwrap();
    assert_eq!(s.backend, Backend::Local);
    let r = Recipe::for_kind(Some(tunegate_core::TaskKind::Classification));
    assert_eq!((s.recipe, s.lora.rank, s.lora.alpha, s.epochs, s.batch_size), ("classification", r.rank, r.alpha, r.epochs, DEFAULTS.batch_size));
    assert_eq!(s.learning_rate, r.learning_rate);
    assert_eq!(s.lora.targets, vec!["q", "v"]);
    // The validation pass rate picks the epoch unless the task says `loss`.
    assert_eq!(s.select_by, SelectBy::Metric);
    // Warmup: a twentieth of the steps, at least one.
    assert_eq!((s.warmup_for(100), s.warmup_for(5)), (5, 1));

    let t = task(d.path(), "  epochs: 5\n  learning_rate: 0.002\n  lora: { rank: 4 }\n  select_by: loss\n  threads: 2\n");
    let s = Settings::for_task(&t, &Overrides::default()).unwrap();
    assert_eq!((s.epochs, s.learning_rate, s.lora.rank, s.select_by, s.threads), (5, 0.002, 4, SelectBy::Loss, Some(2)));
    assert_eq!(s.remote_hyperparameters["n_epochs"], 5);
    let s = Settings::for_task(&t, &Overrides { threads: Some(1), backend: Some("remote".into()), ..Default::default() }).unwrap();
    assert_eq!((s.threads, s.backend, s.epochs), (Some(1), Backend::Remote, 5));
}

#[test]
fn bad_values_name_their_line_and_field_or_flag() {
    let d = tempfile::tempdir().unwrap();
    for (tune, field, what) in [
        ("  learning_rate: -0.01\n", "tune.learning_rate", "positive"),
        ("  epochs: 0\n", "tune.epochs", "at least 1"),
        ("  lora: { rank: 0 }\n", "tune.lora.rank", "at least 1"),
        ("  lora:\n    dropout: 1.5\n", "tune.lora.dropout", "outside 0..1"),
        ("  lora:\n    target_modules: [q, attention]\n", "tune.lora.target_modules", "unknown module `attention`"),
        ("  select_by: accuracy\n", "tune.select_by", "unknown value `accuracy`"),
        ("  lr_schedule: exponential\n", "tune.lr_schedule", "unknown schedule"),
        ("  grad_accum: 0\n", "tune.grad_accum", "at least 1"),
    ] {
        let t = task(d.path(), tune);
        let e = Settings::for_task(&t, &Overrides::default()).unwrap_err();
        assert!(matches!(e, TuneError::Input(_)), "{tune}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("tunegate.yaml:1") && msg.contains(field) && msg.contains(what), "{tune}: {msg}");
        assert!(check_task(&t).is_err());
    }
    let t = task(d.path(), "");
    let e = Settings::for_task(&t, &Overrides { threads: Some(0), prefix: "--", ..Default::default() }).unwrap_err();
    assert!(matches!(e, TuneError::Usage(_)) && e.to_string().starts_with("--threads"), "{e}");
    let e = Settings::from_overrides(&Overrides { epochs: Some(0), prefix: "hyperparameters.", ..Default::default() }).unwrap_err();
    assert!(e.to_string().starts_with("hyperparameters.epochs"), "{e}");
}

#[test]
fn each_task_kind_gets_its_recipe_and_the_task_file_still_wins() {
    let d = tempfile::tempdir().unwrap();
    for kind in ["extraction", "rewrite", "generation"] {
        let s = Settings::for_task(&task_of(d.path(), kind, ""), &Overrides::default()).unwrap();
        assert_eq!(s.recipe, kind);
        assert_eq!(s.lora.targets, ALL_LINEAR.to_vec(), "{kind}");
        let r = Recipe::for_kind(Some(s_kind(kind)));
        assert_eq!((s.lora.rank, s.lora.alpha, s.epochs, s.learning_rate, s.early_stopping_patience), (r.rank, r.alpha, r.epochs, r.learning_rate, r.early_stopping_patience));
        assert!(s.lora.rank > 8 && s.epochs > 3, "{kind}: a wider, longer recipe than classification's");
    }
    let s = Settings::for_task(&task_of(d.path(), "extraction", "  lora: { rank: 4, target_modules: [q, v] }\n  epochs: 2\n  early_stopping_patience: 1\n"), &Overrides::default()).unwrap();
    assert_eq!((s.lora.rank, s.lora.targets.len(), s.epochs, s.early_stopping_patience), (4, 2, 2, Some(1)));
    // Jobs without a task (serve) get the `chat` row.
    assert_eq!(Settings::from_overrides(&Overrides::default()).unwrap().recipe, "chat");
}

fn s_kind(k: &str) -> tunegate_core::TaskKind {
    use tunegate_core::TaskKind::*;
    match k {
        "extraction" => Extraction,
        "rewrite" => Rewrite,
        _ => Generation,
    }
}
