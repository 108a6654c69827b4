//! The adapters written as PEFT (Hugging Face) writes them, so other tools
//! and `tunegate adapter` read them. Kept apart from the model: file
//! output only, no arithmetic.

use super::{LoraModel, TARGETS};
use crate::ModelError;
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

impl LoraModel {
    /// The adapter as PEFT writes it: tensors keyed
    /// `base_model.model.model.layers.{i}.{module}.lora_{A,B}.weight`, and
    /// adapter_config.json.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::Io(dir.to_path_buf(), e))?;
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for ((li, short), (a, b)) in &self.adapters {
            let module = TARGETS
                .iter()
                .find(|(s, _)| s == short)
                .map(|(_, m)| *m)
                .unwrap();
            map.insert(
                format!("base_model.model.model.layers.{li}.{module}.lora_A.weight"),
                a.as_tensor().clone(),
            );
            map.insert(
                format!("base_model.model.model.layers.{li}.{module}.lora_B.weight"),
                b.as_tensor().clone(),
            );
        }
        // Written to a temporary name and renamed: a crash never leaves half a file.
        let tmp = dir.join("adapter_model.safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp).map_err(ModelError::candle)?;
        std::fs::rename(&tmp, dir.join("adapter_model.safetensors"))
            .map_err(|e| ModelError::Io(dir.to_path_buf(), e))?;
        let modules: Vec<&str> = self
            .lora_cfg
            .targets
            .iter()
            .filter_map(|s| {
                TARGETS
                    .iter()
                    .find(|(x, _)| x == s)
                    .map(|(_, m)| m.rsplit('.').next().unwrap())
            })
            .collect();
        let cfg = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.lora_cfg.rank,
            "lora_alpha": self.lora_cfg.alpha,
            "lora_dropout": self.lora_cfg.dropout,
            "target_modules": modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
        });
        std::fs::write(
            dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&cfg).unwrap(),
        )
        .map_err(|e| ModelError::Io(dir.to_path_buf(), e))?;
        Ok(())
    }
}
