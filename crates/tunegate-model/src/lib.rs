//! The embedded local model: GGUF files, the tokenizer built from their
//! metadata, the Gemma 3 forward pass on quantized weights, sampling, and a
//! text-in/text-out engine with batched generation. This crate never sees a
//! task file: it deals in text, token ids and tensors only.
//! LoRA: the trainable model in [`lora`], its training loop in [`train`].

pub mod engine;
pub mod gemma3;
pub mod gguf;
pub mod gguf_lora;
mod kq;
pub mod lora;
mod numerics;
pub mod paths;
mod q8;
pub mod sample;
pub mod tokenizer;
pub mod train;

pub use engine::{GenParams, Generation, LocalModel};

/// Bumped whenever a change to the kernels or the weight conversion can
/// change outputs: it is part of the local provider's cache identity, so
/// cached answers from older numerics are not mixed with new ones.
pub const NUMERICS_VERSION: u32 = 4;
pub use gguf::{GgufError, GgufFile};

/// `TUNEGATE_PORTABLE_KERNELS=1` turns off the SIMD kernels (AVX-512,
/// FMA) in favour of the portable code, which computes the same bits:
/// for testing the path machines without AVX-512 take.
fn portable_kernels() -> bool {
    std::env::var("TUNEGATE_PORTABLE_KERNELS").map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}

/// The CPU features the kernels use, detected once at run time (the build
/// targets baseline x86-64, so the binary runs anywhere).
pub(crate) struct Cpu {
    pub fma: bool,
    pub avx512: bool,
    /// AVX-512F and AVX-512 VNNI.
    pub vnni: bool,
}

pub(crate) fn cpu() -> &'static Cpu {
    static C: std::sync::OnceLock<Cpu> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if !portable_kernels() {
            let avx512 = std::arch::is_x86_feature_detected!("avx512f");
            return Cpu { fma: std::arch::is_x86_feature_detected!("fma"), avx512, vnni: avx512 && std::arch::is_x86_feature_detected!("avx512vnni") };
        }
        Cpu { fma: false, avx512: false, vnni: false }
    })
}
pub use paths::{default_model_dir, resolve_model, ModelPathError};
pub use tokenizer::{Tokenizer, TokenizerError};

/// Errors of the model: a file we cannot read or do not support, bad input
/// (an empty or over-long prompt), or a tensor operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error("{0}")]
    Format(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Input(String),
    #[error("tensor error: {0}")]
    Candle(String),
}

impl ModelError {
    pub(crate) fn candle(e: candle_core::Error) -> Self {
        ModelError::Candle(e.to_string())
    }
}
