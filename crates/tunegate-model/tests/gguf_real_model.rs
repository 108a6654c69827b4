//! Header parsing of the real Gemma 3 270M file and bad-input handling.

mod common;

use tunegate_model::gguf::{build, GgmlType, GgufError, Value};
use tunegate_model::GgufFile;

#[test]
fn reads_gemma3_header() {
    let Some(g) = common::model() else { return };
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture(), Some("gemma3"));
    assert_eq!(g.arch_u64("block_count"), Some(18));
    assert_eq!(g.arch_u64("embedding_length"), Some(640));
    assert_eq!(g.arch_u64("feed_forward_length"), Some(2048));
    assert_eq!(g.arch_u64("attention.head_count"), Some(4));
    assert_eq!(g.arch_u64("attention.head_count_kv"), Some(1));
    assert_eq!(g.arch_u64("attention.key_length"), Some(256));
    assert_eq!(g.arch_u64("context_length"), Some(32768));
    assert_eq!(g.get_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(
        g.get_array("tokenizer.ggml.tokens").map(|a| a.len()),
        Some(262_144)
    );
    assert_eq!(
        g.get_array("tokenizer.ggml.scores").map(|a| a.len()),
        Some(262_144)
    );
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset % 32, 0);

    // 18 blocks x 13 tensors + token_embd + output_norm (output is tied).
    assert_eq!(g.tensors.len(), 236);
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![640, 262_144]);
    assert_eq!(emb.ggml_type, GgmlType::Q8_0);
    assert_eq!(
        g.tensor("output_norm.weight").unwrap().ggml_type,
        GgmlType::F32
    );
    for b in 0..18 {
        for t in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            let name = format!("blk.{b}.{t}.weight");
            let ti = g.tensor(&name).unwrap_or_else(|| panic!("missing {name}"));
            assert!(
                matches!(
                    ti.ggml_type,
                    GgmlType::Q4_K | GgmlType::Q5_0 | GgmlType::Q6_K | GgmlType::Q8_0
                ),
                "{name}: {}",
                ti.ggml_type
            );
        }
        assert_eq!(
            g.tensor(&format!("blk.{b}.attn_q.weight")).unwrap().dims,
            vec![640, 1024]
        );
        assert_eq!(
            g.tensor(&format!("blk.{b}.attn_k.weight")).unwrap().dims,
            vec![640, 256]
        );
        assert_eq!(
            g.tensor(&format!("blk.{b}.ffn_down.weight")).unwrap().dims,
            vec![2048, 640]
        );
        for n in [
            "attn_norm",
            "ffn_norm",
            "post_attention_norm",
            "post_ffw_norm",
            "attn_q_norm",
            "attn_k_norm",
        ] {
            let ti = g.tensor(&format!("blk.{b}.{n}.weight")).unwrap();
            assert_eq!(ti.ggml_type, GgmlType::F32);
        }
    }
    // Tensor data: sizes and placement are consistent, the last tensor ends
    // at or before the end of the file, and norms read as sane f32s.
    let mut end = 0;
    for t in &g.tensors {
        let bytes = g.tensor_bytes(t).unwrap();
        assert_eq!(bytes.len() as u64, t.n_bytes().unwrap());
        end = end.max(t.file_offset + bytes.len() as u64);
    }
    assert!(end <= g.file_len && g.file_len - end < 32);
    let norm = g.tensor_data("output_norm.weight").unwrap();
    let first = f32::from_le_bytes(norm[..4].try_into().unwrap());
    assert!(first.is_finite() && first.abs() < 1000.0, "{first}");
}

fn small_file() -> Vec<u8> {
    build::file(
        &[
            ("general.architecture", Value::String("toy".into())),
            ("toy.block_count", Value::U32(1)),
        ],
        &[build::Tensor {
            name: "w",
            dims: &[8],
            ggml_type: 0,
            data: &[0u8; 32],
        }],
    )
}

#[test]
fn bad_magic_is_reported() {
    let mut b = small_file();
    b[..4].copy_from_slice(b"GGML");
    let e = GgufFile::from_bytes(b, "bad.gguf").unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
    // Short non-GGUF files are bad magic too, not "truncated".
    let e = GgufFile::from_bytes(b"PK".to_vec(), "x.zip").unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
}

#[test]
fn unsupported_version_is_reported() {
    for v in [1u32, 4, 0xFFFF_FFFF] {
        let mut b = small_file();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let e = GgufFile::from_bytes(b, "old.gguf").unwrap_err();
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version, .. } if version == v),
            "{e}"
        );
    }
    let mut b = small_file();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(GgufFile::from_bytes(b, "v2.gguf").unwrap().version, 2);
}

#[test]
fn truncated_files_are_errors_at_every_length() {
    let b = small_file();
    for cut in 0..b.len() {
        let e = GgufFile::from_bytes(b[..cut].to_vec(), "cut.gguf").unwrap_err();
        assert!(matches!(e, GgufError::Truncated { .. }), "cut {cut}: {e}");
    }
    assert!(GgufFile::from_bytes(b, "ok.gguf").is_ok());
}

#[test]
fn absurd_lengths_do_not_allocate_or_panic() {
    // Header claiming 2^62 metadata entries.
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes(b, "huge.gguf").unwrap_err(),
        GgufError::Truncated { .. }
    ));
    // A key whose string length is u64::MAX.
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&[0u8; 64]);
    assert!(matches!(
        GgufFile::from_bytes(b, "huge.gguf").unwrap_err(),
        GgufError::Truncated { .. }
    ));
    // An array of strings claiming u64::MAX elements, and an unknown type.
    for (ty, count) in [(8u32, u64::MAX), (6, 1u64 << 61), (99, 1)] {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        build::string(&mut b, "k");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&[0u8; 64]);
        let e = GgufFile::from_bytes(b, "arr.gguf").unwrap_err();
        assert!(
            matches!(e, GgufError::Truncated { .. } | GgufError::Invalid { .. }),
            "{e}"
        );
    }
}

#[test]
fn garbage_never_panics() {
    // A small deterministic fuzz: flip bytes of a valid file.
    let base = small_file();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..5000 {
        let mut b = base.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
        }
        if let Ok(g) = GgufFile::from_bytes(b, "fuzz.gguf") {
            for t in &g.tensors.clone() {
                let _ = g.tensor_bytes(t);
            }
        }
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let e = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/model.gguf"));
}
