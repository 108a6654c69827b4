//! LoRA training on the real model: analytic gradients against finite
//! differences (a gradient that silently stops is the classic failure), and
//! a loss that falls on a small real dataset.

mod common;

use candle_core::{Tensor, Var};
use tunegate_model::gemma3::Config;
use tunegate_model::lora::{pack, LoraConfig, LoraModel, TrainExample};
use tunegate_model::train::{
    load_checkpoint, train, train_resumable, Checkpointing, Hooks, TrainOptions,
};
use tunegate_model::{GgufFile, Tokenizer};

/// The options these tests were written against (what `TrainOptions`'s
/// `Default` gave before the product's defaults moved out of the model
/// crate), spelled out so each test keeps its meaning.
fn opts() -> TrainOptions {
    TrainOptions {
        epochs: 3,
        batch_size: 8,
        learning_rate: 2e-4,
        warmup_steps: 5,
        schedule: "cosine".into(),
        weight_decay: 0.0,
        grad_clip: Some(1.0),
        seed: 0,
        max_steps: None,
        stop: None,
        early_stopping_patience: None,
        grad_accum: 1,
        select_by_metric: false,
        gradient_checkpointing: false,
    }
}

fn example(tok: &Tokenizer, prompt: &str, answer: &str) -> TrainExample {
    let p = tok.encode(prompt, true, false);
    let mut t = tok.encode(&format!("{prompt}{answer}"), true, false);
    assert_eq!(&t[..p.len()], &p[..], "the prompt's tokens are a prefix");
    t.push(1); // <eos>
    TrainExample {
        loss_from: p.len(),
        tokens: t,
    }
}

/// The model path and tokenizer, and routing examples `Message: M\nTeam: L`.
fn routing(data: &[(&str, &str)]) -> Option<(std::path::PathBuf, Tokenizer, Vec<TrainExample>)> {
    let path = common::model_path()?;
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let ex = data.iter().map(|(m, l)| example(&tok, &format!("Message: {m}\nTeam:"), &format!(" {l}"))).collect();
    Some((path, tok, ex))
}

#[test]
fn lora_gradients_match_finite_differences() {
    let Some(path) = common::model_path() else {
        return;
    };
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let cfg = Config::from_file(&path).unwrap();
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.1,
        targets: vec!["q".into(), "v".into(), "down".into()],
    };
    let mut m = LoraModel::load(&path, cfg, lora, 1).unwrap();
    // B starts at zero (so dA would be zero); give it values to test both.
    for ((_, _), (_, b)) in m.adapters.iter() {
        let s = b.as_tensor().shape().clone();
        b.set(&(Tensor::randn(0f32, 1.0, s, &candle_core::Device::Cpu).unwrap() * 0.02).unwrap())
            .unwrap();
    }
    // Without and with dropout (0.1, training on): the masks are a function
    // of the pass seed and the layer, fixed across the perturbed
    // evaluations, so the check covers the adapter's dropout path too.
    for training in [false, true] {
        m.training = training;
        let ex = [
            example(
                &tok,
                "Message: my card was charged twice\nTeam:",
                " billing",
            ),
            example(&tok, "Message: the app crashes\nTeam:", " technical"),
        ];
        let p = pack(&ex.iter().collect::<Vec<_>>());
        let loss = m.loss(&p).unwrap();
        let grads = loss.backward().unwrap();
        let mut checked = 0;
        let mut worst = 0f64;
        for (li, name) in [(0usize, "q"), (5, "v"), (11, "down"), (17, "q")] {
            let (a, b) = &m.adapters[&(li, name.to_string())];
            for var in [a, b] {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient reached layer {li} {name}"))
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                // The entries with the largest gradients carry the clearest signal in f32.
                let mut idx: Vec<usize> = (0..g.len()).collect();
                idx.sort_by(|x, y| g[*y].abs().partial_cmp(&g[*x].abs()).unwrap());
                for &i in idx.iter().take(2) {
                    let num = finite_difference(&m, &p, var, i, 1e-2);
                    let rel = ((num - g[i] as f64).abs() / (g[i].abs() as f64).max(1e-6)).min(10.0);
                    worst = worst.max(rel);
                    assert!(
                    rel < 0.05,
                    "layer {li} {name} entry {i}: analytic {} vs numeric {num} (relative {rel})",
                    g[i]
                );
                    checked += 1;
                }
            }
        }
        eprintln!("gradient check (dropout {training}): {checked} entries, worst relative error {worst:.2e}");
    }
}

fn finite_difference(
    m: &LoraModel,
    p: &tunegate_model::lora::Packed,
    var: &Var,
    i: usize,
    eps: f64,
) -> f64 {
    let orig = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let shape = var.as_tensor().shape().clone();
    let at = |delta: f64| {
        let mut v = orig.clone();
        v[i] += delta as f32;
        var.set(&Tensor::from_vec(v, shape.clone(), &candle_core::Device::Cpu).unwrap())
            .unwrap();
        m.loss(p).unwrap().to_scalar::<f32>().unwrap() as f64
    };
    let (up, down) = (at(eps), at(-eps));
    var.set(&Tensor::from_vec(orig, shape, &candle_core::Device::Cpu).unwrap())
        .unwrap();
    (up - down) / (2.0 * eps)
}

#[test]
fn loss_falls_on_a_small_real_dataset() {
    let Some((path, _tok, ex)) = routing(&[
        ("I was charged twice this month", "billing"),
        ("The app crashes on start", "technical"),
        ("I cannot log in to my account", "account"),
        ("Where is my parcel?", "shipping"),
        ("Please refund my last invoice", "billing"),
        ("The thermostat shows an error", "technical"),
        ("Change the email on my profile", "account"),
        ("My delivery is late", "shipping"),
    ]) else {
        return;
    };
    let cfg = Config::from_file(&path).unwrap();
    let mut m = LoraModel::load(&path, cfg, LoraConfig::default(), 0).unwrap();
    let o = TrainOptions {
        epochs: 4,
        batch_size: 8,
        learning_rate: 2e-3,
        warmup_steps: 1,
        seed: 3,
        ..opts()
    };
    let log = train(&mut m, &ex, &[], &o, &mut |_| {}, &mut |_| {}).unwrap();
    let (first, last) = (log.first().unwrap().loss, log.last().unwrap().loss);
    eprintln!("loss {first:.3} -> {last:.3} in {} steps", log.len());
    assert!(last < first * 0.5, "loss did not fall: {first} -> {last}");
    // Same seed, same result.
    let mut m2 = LoraModel::load(
        &path,
        Config::from_file(&path).unwrap(),
        LoraConfig::default(),
        0,
    )
    .unwrap();
    let log2 = train(&mut m2, &ex, &[], &o, &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!(
        log.iter().map(|s| s.loss).collect::<Vec<_>>(),
        log2.iter().map(|s| s.loss).collect::<Vec<_>>(),
        "training is reproducible for a seed"
    );
    let dir = tempfile::tempdir().unwrap();
    m.save_peft(dir.path(), "google/gemma-3-270m").unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["r"], 8);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    let t = candle_core::safetensors::load(
        dir.path().join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let a = &t["base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"];
    let b = &t["base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight"];
    assert_eq!(a.dims(), &[8, 640]);
    assert_eq!(b.dims(), &[1024, 8]);
}

#[test]
fn an_interrupted_run_resumed_from_its_checkpoint_ends_identical() {
    let Some((path, _tok, ex)) = routing(&[
        ("charged twice", "billing"),
        ("app crashes", "technical"),
        ("cannot log in", "account"),
        ("parcel late", "shipping"),
        ("refund please", "billing"),
        ("screen frozen", "technical"),
    ]) else {
        return;
    };
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: vec!["q".into(), "v".into()],
    };
    let o = TrainOptions {
        epochs: 2,
        batch_size: 2,
        learning_rate: 1e-3,
        warmup_steps: 1,
        seed: 5,
        ..opts()
    };
    let load =
        || LoraModel::load(&path, Config::from_file(&path).unwrap(), lora.clone(), 5).unwrap();
    let snapshot = |m: &LoraModel| {
        m.adapters
            .values()
            .flat_map(|(a, b)| {
                [
                    a.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                    b.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                ]
            })
            .collect::<Vec<_>>()
    };
    // Uninterrupted.
    let mut full = load();
    train(&mut full, &ex, &[], &o, &mut |_| {}, &mut |_| {}).unwrap();
    // Stopped after 4 of 6 steps (mid-epoch 2), then resumed in a fresh model.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoint");
    let mut first = load();
    let stop = TrainOptions {
        max_steps: Some(4),
        ..o.clone()
    };
    train_resumable(
        &mut first,
        &ex,
        &[],
        &stop,
        Some(Checkpointing { dir: &ck, every: 2 }),
        None,
        Hooks {
            on_step: &mut |_| {},
            on_epoch: &mut |_| {},
            metric: None,
        },
    )
    .unwrap();
    drop(first);
    let mut resumed = load();
    let state = load_checkpoint(&resumed, &ck).unwrap();
    assert_eq!(state.1.step, 4);
    let (log, _) = train_resumable(
        &mut resumed,
        &ex,
        &[],
        &o,
        Some(Checkpointing { dir: &ck, every: 2 }),
        Some(state),
        Hooks {
            on_step: &mut |_| {},
            on_epoch: &mut |_| {},
            metric: None,
        },
    )
    .unwrap();
    assert_eq!(log.len(), 2, "only the remaining steps ran");
    // With a validation set, the best epoch is tracked and kept.
    let mut v = load();
    let (_, progress) = train_resumable(
        &mut v,
        &ex[..4],
        &ex[4..],
        &TrainOptions {
            epochs: 2,
            ..o.clone()
        },
        None,
        None,
        Hooks {
            on_step: &mut |_| {},
            on_epoch: &mut |_| {},
            metric: None,
        },
    )
    .unwrap();
    assert_eq!(progress.val_losses.len(), 2);
    let best = progress.best_epoch.unwrap();
    assert!(
        progress.val_losses[best - 1]
            <= progress
                .val_losses
                .iter()
                .cloned()
                .fold(f64::INFINITY, f64::min)
    );
    assert_eq!(
        snapshot(&full),
        snapshot(&resumed),
        "the resumed adapter is bit-identical to the uninterrupted one"
    );
}

#[test]
fn packed_examples_do_not_see_each_other_and_accumulation_matches_one_big_batch() {
    let Some((path, _tok, ex)) = routing(&[
        ("charged twice for one order", "billing"),
        ("app crashes", "technical"),
        ("cannot log in since the update", "account"),
        ("parcel late", "shipping"),
    ]) else {
        return;
    };
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec!["q".into(), "v".into(), "gate".into()],
    };
    let load =
        || LoraModel::load(&path, Config::from_file(&path).unwrap(), lora.clone(), 9).unwrap();
    let mut m = load();
    m.training = false;
    // The packed loss is the token-weighted mean of each example's own loss:
    // attention never crosses from one packed example into another.
    let packed = m
        .loss(&pack(&ex.iter().collect::<Vec<_>>()))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let (mut sum, mut n) = (0f64, 0usize);
    for e in &ex {
        let p = pack(&[e]);
        sum += m.loss(&p).unwrap().to_scalar::<f32>().unwrap() as f64 * p.targets.len() as f64;
        n += p.targets.len();
    }
    assert!(
        (packed - sum / n as f64).abs() < 1e-4,
        "packed {packed} vs separate {}",
        sum / n as f64
    );
    // Batch 4 in one pass, and batch 2 x 2 accumulated passes: the same step.
    let o = TrainOptions {
        epochs: 1,
        batch_size: 4,
        learning_rate: 1e-3,
        warmup_steps: 1,
        seed: 2,
        ..opts()
    };
    let weights = |m: &LoraModel| {
        m.adapters
            .values()
            .flat_map(|(a, b)| {
                [
                    a.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                    b.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                ]
            })
            .flatten()
            .collect::<Vec<f32>>()
    };
    let mut one = load();
    let l1 = train(&mut one, &ex, &[], &o, &mut |_| {}, &mut |_| {}).unwrap();
    let mut acc = load();
    let l2 = train(
        &mut acc,
        &ex,
        &[],
        &TrainOptions {
            batch_size: 2,
            grad_accum: 2,
            ..o.clone()
        },
        &mut |_| {},
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(l1.len(), 1);
    assert_eq!(l2.len(), 1, "one optimizer step either way");
    assert!(
        (l1[0].loss - l2[0].loss).abs() < 1e-4,
        "loss {} vs {}",
        l1[0].loss,
        l2[0].loss
    );
    let (w1, w2) = (weights(&one), weights(&acc));
    let worst = w1
        .iter()
        .zip(&w2)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let moved = w1
        .iter()
        .zip(weights(&load()).iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-4, "the step changed the adapters");
    assert!(
        worst < moved * 1e-2,
        "accumulated step differs: {worst} (the step moved weights by up to {moved})"
    );
}

#[test]
fn a_task_metric_can_pick_the_best_epoch() {
    let Some((path, _tok, ex)) = routing(&[
        ("charged twice", "billing"),
        ("app crashes", "technical"),
        ("cannot log in", "account"),
        ("parcel late", "shipping"),
    ]) else {
        return;
    };
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec!["q".into()],
    };
    let mut m = LoraModel::load(&path, Config::from_file(&path).unwrap(), lora, 1).unwrap();
    // The metric the caller measures, epoch by epoch: best at epoch 2.
    let scripted = [0.25, 0.75, 0.5];
    let mut calls = 0;
    let mut metric = |_: &LoraModel| {
        calls += 1;
        Ok(scripted[calls - 1])
    };
    let mut heard = vec![];
    let o = TrainOptions {
        epochs: 3,
        batch_size: 2,
        learning_rate: 1e-3,
        warmup_steps: 1,
        seed: 1,
        select_by_metric: true,
        ..opts()
    };
    let (_, progress) = train_resumable(
        &mut m,
        &ex[..2],
        &ex[2..],
        &o,
        None,
        None,
        Hooks {
            on_step: &mut |_| {},
            on_epoch: &mut |e| heard.push((e.val_metric, e.best_epoch)),
            metric: Some(&mut metric),
        },
    )
    .unwrap();
    assert_eq!(progress.val_metrics, scripted.to_vec());
    assert_eq!(progress.val_losses.len(), 3);
    assert_eq!(
        progress.best_epoch,
        Some(2),
        "selected by the metric, whatever the losses"
    );
    assert_eq!(
        heard,
        vec![
            (Some(0.25), Some(1)),
            (Some(0.75), Some(2)),
            (Some(0.5), Some(2))
        ]
    );
}

#[test]
fn hand_written_gradients_equal_the_autograd_graphs() {
    let Some(path) = common::model_path() else {
        return;
    };
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    // A short sliding window (3) so the local layers' masking is exercised
    // on these short examples; both paths must agree on it too.
    for (window, dropout) in [(512, 0.0), (3, 0.1)] {
        let mut cfg = Config::from_file(&path).unwrap();
        cfg.sliding_window = window;
        let lora = LoraConfig { rank: 2, alpha: 4.0, dropout, targets: vec!["q".into(), "k".into(), "v".into(), "o".into(), "gate".into(), "up".into(), "down".into()] };
        let m = LoraModel::load(&path, cfg, lora, 4).unwrap();
        for (_, b) in m.adapters.values() {
            let s = b.as_tensor().shape().clone();
            b.set(&(Tensor::randn(0f32, 1.0, s, &candle_core::Device::Cpu).unwrap() * 0.02).unwrap()).unwrap();
        }
        // Training mode: with dropout, every path must draw the same masks.
        assert!(m.training);
        let ex = [example(&tok, "Message: my card was charged twice\nTeam:", " billing"), example(&tok, "Message: the app crashes\nTeam:", " technical")];
        let p = pack(&ex.iter().collect::<Vec<_>>());
        let vars = m.vars();
        let loss = m.loss(&p).unwrap();
        let reference = loss.backward().unwrap();
        for checkpoint in [false, true] {
            let (value, grads) = m.loss_and_grads(&p, checkpoint).unwrap();
            assert!((value - loss.to_scalar::<f32>().unwrap() as f64).abs() < 1e-4, "loss {value} vs {}", loss.to_scalar::<f32>().unwrap());
            let (mut worst, mut scale) = (0f32, 0f32);
            for (v, g) in vars.iter().zip(&grads) {
                let a = reference.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let b = g.as_ref().expect("every adapter gets a gradient").flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (x, y) in a.iter().zip(&b) {
                    worst = worst.max((x - y).abs());
                    scale = scale.max(x.abs());
                }
            }
            eprintln!("window {window}, dropout {dropout}, checkpoint {checkpoint}: worst difference {worst:.2e} (largest gradient {scale:.2e})");
            assert!(scale > 0.0);
            assert!(worst <= scale * 1e-3, "hand-written gradients differ by {worst} (largest gradient {scale})");
        }
    }
}
