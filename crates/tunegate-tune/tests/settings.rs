//! Settings are resolved once: flags over the task file over the defaults,
//! every value checked with the place it came from.

use std::path::Path;
use tunegate_tune::settings::{check_task, DEFAULTS};
use tunegate_tune::{Backend, Overrides, SelectBy, Settings, TuneError};

fn task(dir: &Path, tune: &str) -> tunegate_core::Task {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/eval.jsonl"), "{\"input\": \"x\", \"expected\": \"a\"}\n").unwrap();
    std::fs::write(dir.join("data/examples.jsonl"), "{\"input\": \"y\", \"expected\": \"b\"}\n").unwrap();
    let yaml = format!(
        "version: 1\ntask:\n  name: t\n  kind: classification\n  labels: [a, b]\nprompts:\n  - id: bare\n    template: \"{{{{ input }}}}\"\nproviders:\n  - id: echo\ndata:\n  eval: data/eval.jsonl\n  examples: data/examples.jsonl\ntune:\n  base: local:gemma-3-270m\n  prompt: bare\n{tune}"
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
    assert_eq!((s.lora.rank, s.lora.alpha, s.epochs, s.batch_size), (DEFAULTS.rank, DEFAULTS.alpha, DEFAULTS.epochs, DEFAULTS.batch_size));
    assert_eq!(s.learning_rate, DEFAULTS.learning_rate);
    assert_eq!(s.lora.targets, vec!["q", "v"]);
    assert_eq!(s.select_by, SelectBy::Loss);
    // Warmup: a twentieth of the steps, at least one.
    assert_eq!((s.warmup_for(100), s.warmup_for(5)), (5, 1));

    let t = task(d.path(), "  epochs: 5\n  learning_rate: 0.002\n  lora: { rank: 4 }\n  select_by: metric\n  threads: 2\n");
    let s = Settings::for_task(&t, &Overrides::default()).unwrap();
    assert_eq!((s.epochs, s.learning_rate, s.lora.rank, s.select_by, s.threads), (5, 0.002, 4, SelectBy::Metric, Some(2)));
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
