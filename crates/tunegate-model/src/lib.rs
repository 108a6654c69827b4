//! The embedded local model: GGUF files, the tokenizer built from their
//! metadata, and (later) the Gemma 3 forward pass. This crate never sees a
//! task file: it deals in text, token ids and tensors only.

pub mod gguf;
pub mod paths;
pub mod tokenizer;

pub use gguf::{GgufError, GgufFile};
pub use paths::{default_model_dir, resolve_model, ModelPathError};
pub use tokenizer::{Tokenizer, TokenizerError};
