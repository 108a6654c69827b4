//! Checkpoints: adapters, optimizer state and [`Progress`] written
//! atomically every few steps, and the best epoch's adapters kept beside
//! them, so an interrupted run resumes to the same bits. Kept apart from
//! the loop, which only decides when to save and restore.

use super::optim::AdamState;
use crate::lora::{LoraConfig, LoraModel};
use crate::ModelError;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Where a run stands: enough to continue it exactly.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: usize,
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    pub val_losses: Vec<f64>,
    /// The task metric on the validation set per epoch (higher is better),
    /// when the caller measures one.
    #[serde(default)]
    pub val_metrics: Vec<f64>,
    /// The epoch (1-based) that was best so far (by validation loss, or by
    /// the metric with `select_by_metric`), if any.
    #[serde(default)]
    pub best_epoch: Option<usize>,
}

/// Checkpointing: every `every` steps into `dir`.
pub struct Checkpointing<'a> {
    pub dir: &'a Path,
    pub every: usize,
}

/// Writes adapters, optimizer state and progress to `dir`, atomically (a
/// temporary directory renamed over the old checkpoint).
pub fn save_checkpoint(
    model: &LoraModel,
    state: &AdamState,
    progress: &Progress,
    dir: &Path,
) -> Result<(), ModelError> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::Io(tmp.clone(), e))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (i, ((li, name), (a, b))) in model.adapters.iter().enumerate() {
        map.insert(format!("{li}.{name}.A"), a.as_tensor().clone());
        map.insert(format!("{li}.{name}.B"), b.as_tensor().clone());
        for (k, t) in [
            ("mA", &state.m[2 * i]),
            ("mB", &state.m[2 * i + 1]),
            ("vA", &state.v[2 * i]),
            ("vB", &state.v[2 * i + 1]),
        ] {
            map.insert(format!("{li}.{name}.{k}"), t.clone());
        }
    }
    candle_core::safetensors::save(&map, tmp.join("state.safetensors"))
        .map_err(ModelError::candle)?;
    let meta = serde_json::json!({"progress": progress, "adam_t": state.t, "lora": model.lora_cfg});
    std::fs::write(tmp.join("progress.json"), meta.to_string())
        .map_err(|e| ModelError::Io(tmp.clone(), e))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| ModelError::Io(dir.to_path_buf(), e))
}

/// Restores adapters and optimizer state; returns where to continue.
pub fn load_checkpoint(model: &LoraModel, dir: &Path) -> Result<(AdamState, Progress), ModelError> {
    let text = std::fs::read_to_string(dir.join("progress.json"))
        .map_err(|e| ModelError::Io(dir.join("progress.json"), e))?;
    let meta: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Format(e.to_string()))?;
    let progress: Progress = serde_json::from_value(meta["progress"].clone())
        .map_err(|e| ModelError::Format(e.to_string()))?;
    let lora: LoraConfig = serde_json::from_value(meta["lora"].clone())
        .map_err(|e| ModelError::Format(e.to_string()))?;
    if lora != model.lora_cfg {
        return Err(ModelError::Input(format!(
            "the checkpoint in {} was made with other LoRA settings ({lora:?})",
            dir.display()
        )));
    }
    let t = candle_core::safetensors::load(dir.join("state.safetensors"), &Device::Cpu)
        .map_err(ModelError::candle)?;
    let get = |k: &str| {
        t.get(k)
            .cloned()
            .ok_or_else(|| ModelError::Format(format!("checkpoint {} lacks {k}", dir.display())))
    };
    let (mut m, mut v) = (vec![], vec![]);
    for ((li, name), (a, b)) in model.adapters.iter() {
        a.set(&get(&format!("{li}.{name}.A"))?)
            .map_err(ModelError::candle)?;
        b.set(&get(&format!("{li}.{name}.B"))?)
            .map_err(ModelError::candle)?;
        m.push(get(&format!("{li}.{name}.mA"))?);
        m.push(get(&format!("{li}.{name}.mB"))?);
        v.push(get(&format!("{li}.{name}.vA"))?);
        v.push(get(&format!("{li}.{name}.vB"))?);
    }
    Ok((
        AdamState {
            m,
            v,
            t: meta["adam_t"].as_u64().unwrap_or(0) as usize,
        },
        progress,
    ))
}

/// Beside the checkpoint directory, which is replaced at every checkpoint.
pub(super) fn best_path(checkpoint_dir: &Path) -> std::path::PathBuf {
    checkpoint_dir.with_file_name("best-epoch.safetensors")
}

pub(super) fn snapshot(model: &LoraModel) -> Result<Vec<Tensor>, ModelError> {
    model
        .vars()
        .iter()
        .map(|v| v.as_tensor().copy().map_err(ModelError::candle))
        .collect()
}

pub(super) fn restore(model: &LoraModel, snap: &[Tensor]) -> Result<(), ModelError> {
    for (v, t) in model.vars().iter().zip(snap) {
        v.set(t).map_err(ModelError::candle)?;
    }
    Ok(())
}

pub(super) fn save_snapshot(snap: &[Tensor], path: &Path) -> Result<(), ModelError> {
    let map: HashMap<String, Tensor> = snap
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{i}"), t.clone()))
        .collect();
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&map, &tmp).map_err(ModelError::candle)?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::Io(path.to_path_buf(), e))
}

pub(super) fn load_snapshot(path: &Path) -> Result<Vec<Tensor>, ModelError> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(ModelError::candle)?;
    (0..t.len())
        .map(|i| {
            t.get(&format!("{i}"))
                .cloned()
                .ok_or_else(|| ModelError::Format(format!("{} is incomplete", path.display())))
        })
        .collect()
}
