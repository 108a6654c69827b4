//! The tokenizer, built only from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Why a port and not a library: the model's ids must match what llama.cpp
//! produces token for token, or evaluation, training and any comparison with
//! llama.cpp-served models drift apart. llama.cpp does not run SentencePiece's
//! Unigram (Viterbi) search for `tokenizer.ggml.model = llama`; it runs a
//! greedy bigram merge (`llm_tokenizer_spm`), which differs on many strings
//! (the `tokenizers` crate's Unigram matched llama.cpp on only ~39% of our
//! test strings). So this module reproduces llama.cpp's algorithm step by step:
//!
//! 1. **Special-token partition** (`tokenizer_st_partition`): user-defined
//!    tokens (always) and control/unknown tokens (only when `parse_special`)
//!    are cut out of the text first, longest token text first, each token
//!    splitting every remaining text fragment at its leftmost non-overlapping
//!    occurrences.
//! 2. Each remaining text fragment gets an optional space prefix
//!    (`add_space_prefix`, when the previous fragment was special), spaces
//!    become U+2581 (`▁`), and it is split into UTF-8 characters.
//! 3. **Bigram merge**: every adjacent pair whose concatenation is a vocab
//!    token goes into a priority queue keyed by that token's score (highest
//!    first, leftmost on ties); the best pair is merged, its new neighbours are
//!    queued, stale entries are skipped, until the queue is empty.
//! 4. Each final symbol is its vocab id, or, when it is not in the vocab, one
//!    byte token `<0xNN>` per UTF-8 byte (byte fallback).
//!
//! Which tokens count as control or user-defined follows llama.cpp too, not
//! just the GGUF `token_type` array: llama.cpp re-types some tokens by their
//! text (end-of-generation and fill-in-the-middle names), and for Gemma 3
//! that turns the user-defined `</s>` into a control token (see
//! [`TokenAttr`]).
//!
//! Encoding is allocation-light and uses a fast non-cryptographic hash for the
//! vocab lookups, since datasets of tens of thousands of cases are tokenised
//! on every evaluation run.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::gguf::{Array, GgufFile};

/// The type llama.cpp assigns each token (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    fn from_i64(v: i64) -> Self {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// llama.cpp's per-token attributes (`llama_token_attr`), a bit set.
///
/// They start from [`TokenType`] but llama.cpp then overrides some of them
/// by token *text* (see [`Tokenizer::from_gguf`]), and the overrides change
/// tokenisation: Gemma 3's user-defined `</s>` becomes a control token, so it
/// is no longer split out of plain text. Keeping the same bits keeps us exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TokenAttr(pub u16);

impl TokenAttr {
    pub const UNDEFINED: TokenAttr = TokenAttr(0);
    pub const UNKNOWN: TokenAttr = TokenAttr(1 << 0);
    pub const UNUSED: TokenAttr = TokenAttr(1 << 1);
    pub const NORMAL: TokenAttr = TokenAttr(1 << 2);
    pub const CONTROL: TokenAttr = TokenAttr(1 << 3);
    pub const USER_DEFINED: TokenAttr = TokenAttr(1 << 4);
    pub const BYTE: TokenAttr = TokenAttr(1 << 5);

    /// Whether any of the bits in `other` are set.
    pub fn has(self, other: TokenAttr) -> bool {
        self.0 & other.0 != 0
    }

    fn from_type(t: TokenType) -> Self {
        match t {
            TokenType::Undefined => Self::UNDEFINED,
            TokenType::Normal => Self::NORMAL,
            TokenType::Unknown => Self::UNKNOWN,
            TokenType::Control => Self::CONTROL,
            TokenType::UserDefined => Self::USER_DEFINED,
            TokenType::Unused => Self::UNUSED,
            TokenType::Byte => Self::BYTE,
        }
    }
}

impl std::ops::BitOr for TokenAttr {
    type Output = TokenAttr;
    fn bitor(self, o: TokenAttr) -> TokenAttr {
        TokenAttr(self.0 | o.0)
    }
}

/// Control/unknown: hidden unless special tokens are parsed or rendered.
const SPECIAL: TokenAttr = TokenAttr(TokenAttr::UNKNOWN.0 | TokenAttr::CONTROL.0);

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: no tokenizer in the model (metadata key tokenizer.ggml.tokens is missing or not an array of strings)")]
    MissingTokens { path: String },
    #[error("{path}: tokenizer model {model:?} is not supported; only SentencePiece vocabularies (tokenizer.ggml.model = \"llama\") are")]
    Unsupported { path: String, model: String },
    #[error("{path}: {key} has {found} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        path: String,
        key: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("{path}: {key} is not an array of numbers")]
    BadArray { path: String, key: &'static str },
}

/// FxHash (as used in rustc): vocab lookups hash short strings millions of
/// times per dataset, and SipHash's DoS resistance buys nothing for a fixed,
/// trusted vocabulary.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 8 {
            self.add(u64::from_le_bytes(bytes[..8].try_into().unwrap()));
            bytes = &bytes[8..];
        }
        if bytes.len() >= 4 {
            self.add(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as u64);
            bytes = &bytes[4..];
        }
        for &b in bytes {
            self.add(b as u64);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A trie over the special tokens' texts, used only to find which special
/// tokens occur in a text at all, so the exact (but per-token) llama.cpp
/// partition runs over a handful of tokens instead of all of them.
#[derive(Default)]
struct Trie {
    /// Node 0 is the root. Children are sorted by byte.
    nodes: Vec<TrieNode>,
}

#[derive(Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    /// Index into `Tokenizer::special` of the token ending here.
    terminal: Option<u32>,
}

impl Trie {
    fn insert(&mut self, key: &[u8], value: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut n = 0usize;
        for &b in key {
            n = match self.nodes[n].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[n].children[i].1 as usize,
                Err(i) => {
                    let new = self.nodes.len() as u32;
                    self.nodes.push(TrieNode::default());
                    self.nodes[n].children.insert(i, (b, new));
                    new as usize
                }
            };
        }
        self.nodes[n].terminal = Some(value);
    }

    /// Calls `f` with every value whose key occurs anywhere in `text`.
    fn occurrences(&self, text: &[u8], mut f: impl FnMut(u32)) {
        if self.nodes.is_empty() {
            return;
        }
        for start in 0..text.len() {
            let mut n = 0usize;
            for &b in &text[start..] {
                match self.nodes[n].children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => n = self.nodes[n].children[i].1 as usize,
                    Err(_) => break,
                }
                if let Some(v) = self.nodes[n].terminal {
                    f(v);
                }
            }
        }
    }
}

/// A SentencePiece-style tokenizer that reproduces llama.cpp exactly.
pub struct Tokenizer {
    /// Token texts as stored in the vocab (`▁` for spaces, `<0x0A>` for bytes).
    tokens: Vec<Box<str>>,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    attrs: Vec<TokenAttr>,
    token_to_id: FxMap<Box<str>, u32>,
    /// Decoded bytes of every token (as llama.cpp's `token_to_piece` with
    /// `special = true`), concatenated; `piece_offsets[i]..piece_offsets[i+1]`.
    pieces: Vec<u8>,
    piece_offsets: Vec<u32>,
    /// Byte-fallback token for each byte value (`u32::MAX` when absent).
    byte_to_token: [u32; 256],
    /// Ids of control, user-defined and unknown tokens, longest text first
    /// (llama.cpp's `cache_special_tokens`).
    special: Vec<u32>,
    special_trie: Trie,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    eot: Option<u32>,
    /// Tokens that end generation (llama.cpp's `special_eog_ids`), sorted.
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("unk", &self.unk)
            .field("pad", &self.pad)
            .field("add_bos", &self.add_bos)
            .field("add_space_prefix", &self.add_space_prefix)
            .finish_non_exhaustive()
    }
}

/// Token texts llama.cpp recognises as special ids when the metadata does
/// not name them (`llama_vocab::impl::load`, "auto-detect special tokens by
/// text"): EOT, EOM and the FIM family. The first token found in each group
/// takes the role, and is made a control token if it was not one.
const SINGLE_ROLE_TEXTS: &[&[&str]] = &[
    // end of turn (Gemma: <end_of_turn>)
    &[
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "<end_of_utterance>",
    ],
    &["<|eom_id|>"],
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

/// Texts llama.cpp treats as end-of-generation in any vocabulary, making each
/// a control token. This list is why `</s>` (user-defined in Gemma 3) is a
/// control token under llama.cpp.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
];

fn ints(g: &GgufFile, key: &'static str) -> Result<Option<Vec<i64>>, TokenizerError> {
    let Some(a) = g.get_array(key) else {
        return Ok(None);
    };
    let v: Vec<i64> = match a {
        Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I64(v) => v.clone(),
        _ => {
            return Err(TokenizerError::BadArray {
                path: g.path().display().to_string(),
                key,
            })
        }
    };
    Ok(Some(v))
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata, with llama.cpp's
    /// defaults for absent keys (scores 0, all tokens normal, bos 1, eos 2,
    /// unk 0, add_bos and add_space_prefix true).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, TokenizerError> {
        let path = g.path().display().to_string();
        let model = g.get_str("tokenizer.ggml.model").unwrap_or("llama");
        if model != "llama" {
            return Err(TokenizerError::Unsupported {
                path,
                model: model.to_string(),
            });
        }
        let Some(Array::String(texts)) = g.get_array("tokenizer.ggml.tokens") else {
            return Err(TokenizerError::MissingTokens { path });
        };
        let n = texts.len();
        let scores = match g.get_array("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(Array::F32(s)) => s.clone(),
            Some(Array::F64(s)) => s.iter().map(|&x| x as f32).collect(),
            Some(_) => {
                return Err(TokenizerError::BadArray {
                    path,
                    key: "tokenizer.ggml.scores",
                })
            }
        };
        let types: Vec<TokenType> = match ints(g, "tokenizer.ggml.token_type")? {
            None => vec![TokenType::Normal; n],
            Some(v) => v.into_iter().map(TokenType::from_i64).collect(),
        };
        for (key, found) in [
            ("tokenizer.ggml.scores", scores.len()),
            ("tokenizer.ggml.token_type", types.len()),
        ] {
            if found != n {
                return Err(TokenizerError::LengthMismatch {
                    path,
                    key,
                    found,
                    expected: n,
                });
            }
        }

        // llama.cpp renames empty tokens and lets a later duplicate text win
        // the text->id map; both are mirrored so lookups agree.
        let tokens: Vec<Box<str>> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]").into_boxed_str()
                } else {
                    t.clone().into_boxed_str()
                }
            })
            .collect();
        let mut token_to_id: FxMap<Box<str>, u32> = FxMap::default();
        token_to_id.reserve(n);
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }

        let id = |key: &str, default: Option<u32>| -> Option<u32> {
            match g.get(key).and_then(|v| v.as_int()) {
                Some(v) if v >= 0 && (v as usize) < n => Some(v as u32),
                Some(_) => None,
                None => default.filter(|&d| (d as usize) < n),
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id", Some(1));
        let eos = id("tokenizer.ggml.eos_token_id", Some(2));
        let unk = id("tokenizer.ggml.unknown_token_id", Some(0));
        let pad = id("tokenizer.ggml.padding_token_id", None);
        let eot_meta = id("tokenizer.ggml.eot_token_id", None);
        let eom_meta = id("tokenizer.ggml.eom_token_id", None);
        let fim_meta = [
            "tokenizer.ggml.fim_pre_token_id",
            "tokenizer.ggml.fim_suf_token_id",
            "tokenizer.ggml.fim_mid_token_id",
            "tokenizer.ggml.fim_pad_token_id",
            "tokenizer.ggml.fim_rep_token_id",
            "tokenizer.ggml.fim_sep_token_id",
        ]
        .map(|k| id(k, None));
        let mut roles: Vec<Option<u32>> = vec![eot_meta, eom_meta];
        roles.extend(fim_meta);

        let mut attrs: Vec<TokenAttr> = types.iter().map(|&t| TokenAttr::from_type(t)).collect();
        for (group, role) in SINGLE_ROLE_TEXTS.iter().zip(roles.iter_mut()) {
            if role.is_some() {
                continue;
            }
            // llama.cpp walks an unordered_map here, so with several
            // candidates its pick is arbitrary; we take the lowest id.
            let found = group
                .iter()
                .filter_map(|t| token_to_id.get(*t).copied())
                .min();
            if let Some(i) = found {
                *role = Some(i);
                attrs[i as usize] = attrs[i as usize] | TokenAttr::CONTROL;
            }
        }
        let eot = roles[0];
        let mut eog: Vec<u32> = Vec::new();
        // fim_pad, fim_rep and fim_sep end generation too.
        eog.extend(roles[5..8].iter().flatten());
        for t in EOG_TEXTS {
            if let Some(&i) = token_to_id.get(*t) {
                eog.push(i);
                attrs[i as usize] = attrs[i as usize] | TokenAttr::CONTROL;
            }
        }
        // Control tokens named "unused" are marked so (no effect on
        // encoding or decoding; kept so `token_attr` matches llama.cpp).
        for (t, a) in tokens.iter().zip(attrs.iter_mut()) {
            if a.has(TokenAttr::CONTROL) && t.contains("unused") {
                *a = *a | TokenAttr::UNUSED;
            }
        }
        // gpt-oss: always render these.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&i) = token_to_id.get(t) {
                attrs[i as usize] = TokenAttr::USER_DEFINED;
            }
        }
        eog.extend([eos, eot, roles[1]].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        let eog_has = |t: &str| token_to_id.get(t).is_some_and(|i| eog.contains(i));
        // llama.cpp's workarounds: <|end|> is not EOG for harmony/solar-open
        // vocabularies, and </s> is not EOG when <|tool_response> exists.
        let has_call = eog_has("<|call|>") || eog_has("<|calls|>");
        let drop_end =
            eog_has("<|end|>") && has_call && (eog_has("<|return|>") || eog_has("<|flush|>"));
        let drop_s = eog_has("<|tool_response>") && eog_has("</s>");
        if drop_end {
            let e = token_to_id["<|end|>"];
            eog.retain(|&x| x != e);
            attrs[e as usize] = TokenAttr::USER_DEFINED;
        }
        if drop_s {
            let s_id = token_to_id["</s>"];
            eog.retain(|&x| x != s_id);
            attrs[s_id as usize] = TokenAttr::NORMAL;
        }
        let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(true);
        let add_eos = g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let add_space_prefix = g
            .get_bool("tokenizer.ggml.add_space_prefix")
            .unwrap_or(true);

        let mut byte_to_token = [u32::MAX; 256];
        for (b, slot) in byte_to_token.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            if let Some(&i) = token_to_id.get(hex.as_str()) {
                *slot = i;
            } else if let Some(&i) = std::str::from_utf8(&[b as u8])
                .ok()
                .and_then(|s| token_to_id.get(s))
            {
                *slot = i;
            }
        }

        let mut pieces = Vec::with_capacity(n * 8);
        let mut piece_offsets = Vec::with_capacity(n + 1);
        piece_offsets.push(0u32);
        for (t, &attr) in tokens.iter().zip(&attrs) {
            // llama.cpp's token_to_piece (special = true), in its order.
            if attr.has(SPECIAL | TokenAttr::USER_DEFINED) {
                pieces.extend_from_slice(t.as_bytes());
            } else if attr.has(TokenAttr::NORMAL) {
                pieces.extend_from_slice(t.replace('\u{2581}', " ").as_bytes());
            } else if attr.has(TokenAttr::BYTE) {
                if let Some(b) = t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    pieces.push(b);
                }
            }
            // Unused and undefined tokens render as nothing.
            piece_offsets.push(pieces.len() as u32);
        }

        // Longest first. llama.cpp uses an unstable sort here; ties between
        // equal-length tokens only matter when their texts overlap, which
        // does not happen in the vocabularies we support; ties go by id.
        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize].has(SPECIAL | TokenAttr::USER_DEFINED))
            .collect();
        special.sort_by(|&a, &b| tokens[b as usize].len().cmp(&tokens[a as usize].len()));
        let mut special_trie = Trie::default();
        for (rank, &i) in special.iter().enumerate() {
            special_trie.insert(tokens[i as usize].as_bytes(), rank as u32);
        }

        Ok(Tokenizer {
            tokens,
            scores,
            types,
            attrs,
            token_to_id,
            pieces,
            piece_offsets,
            byte_to_token,
            special,
            special_trie,
            bos,
            eos,
            unk,
            pad,
            eot,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }
    /// End-of-turn token (`<end_of_turn>` for Gemma), if the vocab has one.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }
    /// Whether generation should stop at `id` (end of sequence or of turn).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// All end-of-generation ids (EOS, EOT and llama.cpp's text-detected ones).
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.eog
    }
    /// The model's `add_bos_token` flag.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// The vocab text of `id` (`▁Hello`, `<0x0A>`, `<start_of_turn>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| &**t)
    }
    pub fn token_score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }
    /// The type stored in the GGUF file.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
    /// The attributes llama.cpp works with (type plus its text overrides).
    pub fn token_attr(&self, id: u32) -> Option<TokenAttr> {
        self.attrs.get(id as usize).copied()
    }
    /// The id whose vocab text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The bytes `id` stands for in output text, as llama.cpp's
    /// `token_to_piece`: `▁` becomes a space, byte tokens their byte (so a
    /// piece may be part of a UTF-8 character), and control/unknown tokens
    /// render as nothing unless `special` is set. Unknown ids give nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        if i >= self.tokens.len() {
            return &[];
        }
        if !special && self.attrs[i].has(SPECIAL) {
            return &[];
        }
        &self.pieces[self.piece_offsets[i] as usize..self.piece_offsets[i + 1] as usize]
    }

    /// Text of `ids` with control tokens (BOS, `<end_of_turn>`, ...) left out;
    /// invalid UTF-8 (e.g. a cut-off byte sequence) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }

    /// [`Tokenizer::decode`], rendering control tokens too when `special`.
    pub fn decode_with(&self, ids: &[u32], special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, special)).into_owned()
    }

    /// The raw bytes of `ids` (llama.cpp's `detokenize` without cleanup),
    /// for callers that stream output and must join split UTF-8 themselves.
    pub fn decode_bytes(&self, ids: &[u32], special: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for (k, &id) in ids.iter().enumerate() {
            let piece = self.token_to_piece(id, special);
            // llama.cpp strips one leading space, the one the space prefix
            // added, from the first token's piece (BOS, if first, takes it).
            if k == 0 && self.add_space_prefix {
                out.extend_from_slice(piece.strip_prefix(b" ").unwrap_or(piece));
            } else {
                out.extend_from_slice(piece);
            }
        }
        out
    }

    /// Token ids of `text`, exactly as llama.cpp's `llama_tokenize`.
    ///
    /// - `add_special`: prepend BOS (and append EOS) when the model's
    ///   metadata asks for them (`add_bos_token` / `add_eos_token`), as
    ///   llama.cpp's `add_special` / llama-cpp-python's `add_bos` do.
    /// - `parse_special`: recognise control-token text such as
    ///   `<start_of_turn>` and `<bos>` as those tokens. Off for user data, so
    ///   a customer typing `<end_of_turn>` cannot forge a turn boundary.
    ///   User-defined tokens (whitespace runs, ...) are recognised either way.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let bos = add_special && self.add_bos;
        if let (true, Some(b)) = (bos, self.bos) {
            out.push(b);
        }
        let mut is_prev_special = true;
        let mut scratch = Scratch::default();
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Text(s, e) => {
                    scratch.text.clear();
                    if self.add_space_prefix && is_prev_special {
                        scratch.text.push('\u{2581}');
                    }
                    // llama_escape_whitespace: only ' ' (not tabs or newlines).
                    for (i, part) in text[s..e].split(' ').enumerate() {
                        if i > 0 {
                            scratch.text.push('\u{2581}');
                        }
                        scratch.text.push_str(part);
                    }
                    self.spm(&mut scratch, &mut out);
                    is_prev_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    is_prev_special = true;
                }
            }
        }
        if let (true, true, Some(e)) = (add_special, self.add_eos, self.eos) {
            out.push(e);
        }
        out
    }

    /// llama.cpp's `tokenizer_st_partition`: cut special tokens out of the
    /// text, longest token first, leftmost non-overlapping occurrences.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        // Only tokens that occur somewhere in the text can split it (every
        // fragment is a substring of it), so find those first.
        let mut present: Vec<u32> = Vec::new();
        self.special_trie.occurrences(text.as_bytes(), |rank| {
            let id = self.special[rank as usize];
            let skip = !parse_special && self.attrs[id as usize].has(SPECIAL);
            if !skip {
                present.push(rank);
            }
        });
        if present.is_empty() {
            return frags;
        }
        present.sort_unstable();
        present.dedup();
        let mut next = Vec::with_capacity(8);
        for rank in present {
            let id = self.special[rank as usize];
            let needle = &*self.tokens[id as usize];
            next.clear();
            for &f in &frags {
                let Fragment::Text(s, e) = f else {
                    next.push(f);
                    continue;
                };
                let mut pos = s;
                for (m, _) in text[s..e].match_indices(needle) {
                    let m = s + m;
                    if m > pos {
                        next.push(Fragment::Text(pos, m));
                    }
                    next.push(Fragment::Token(id));
                    pos = m + needle.len();
                }
                if pos < e {
                    next.push(Fragment::Text(pos, e));
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }

    /// llama.cpp's `llm_tokenizer_spm_session::tokenize` on already-escaped
    /// text in `scratch.text`.
    fn spm(&self, scratch: &mut Scratch, out: &mut Vec<u32>) {
        let text = scratch.text.as_str();
        if text.is_empty() {
            return;
        }
        let syms = &mut scratch.symbols;
        syms.clear();
        for (start, c) in text.char_indices() {
            let idx = syms.len() as i32;
            syms.push(Symbol {
                start: start as u32,
                n: c.len_utf8() as u32,
                prev: idx - 1,
                next: idx + 1,
            });
        }
        if let Some(last) = syms.last_mut() {
            last.next = -1;
        }

        let heap = &mut scratch.heap;
        heap.clear();
        for i in 1..syms.len() {
            self.try_add_bigram(text, syms, heap, i as i32 - 1, i as i32);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left as usize, b.right as usize);
            let (ln, rn) = (syms[l].n, syms[r].n);
            // Skip pairs whose symbols changed since they were queued.
            if ln == 0 || rn == 0 || ln + rn != b.size {
                continue;
            }
            syms[l].n += rn;
            syms[r].n = 0;
            let rnext = syms[r].next;
            syms[l].next = rnext;
            if rnext >= 0 {
                syms[rnext as usize].prev = b.left;
            }
            let lprev = syms[l].prev;
            self.try_add_bigram(text, syms, heap, lprev, b.left);
            self.try_add_bigram(text, syms, heap, b.left, rnext);
        }

        let mut i = 0i32;
        while i != -1 {
            let s = &syms[i as usize];
            let piece = &text[s.start as usize..(s.start + s.n) as usize];
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        let t = self.byte_to_token[byte as usize];
                        if t != u32::MAX {
                            out.push(t);
                        } else if let Some(u) = self.unk {
                            out.push(u);
                        }
                    }
                }
            }
            i = s.next;
        }
    }

    #[inline]
    fn try_add_bigram(
        &self,
        text: &str,
        syms: &[Symbol],
        heap: &mut BinaryHeap<Bigram>,
        left: i32,
        right: i32,
    ) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (&syms[left as usize], &syms[right as usize]);
        let size = l.n + r.n;
        let piece = &text[l.start as usize..(l.start + size) as usize];
        if let Some(&id) = self.token_to_id.get(piece) {
            heap.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                size,
            });
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    /// Byte range of the input text.
    Text(usize, usize),
    Token(u32),
}

/// Buffers reused across the fragments of one `encode` call.
#[derive(Default)]
struct Scratch {
    text: String,
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Bigram>,
}

/// A run of the escaped text; `n == 0` once merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    n: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: i32,
    right: i32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order of llama.cpp's `llm_bigram_spm::comparator`: higher
    /// score first, then the leftmost pair. (Compared as C++ `<` does, so
    /// -0.0 and 0.0 tie.)
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .partial_cmp(&o.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| o.left.cmp(&self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{build, Value};

    /// A toy vocab exercising merges, ties, byte fallback and specials.
    fn toy() -> Tokenizer {
        let mut toks: Vec<&str> = vec!["<pad>", "<eos>", "<bos>", "<unk>", "<ctl>", "\n\n"];
        let mut scores = vec![0.0f32; toks.len()];
        let mut types = vec![3i32, 3, 3, 2, 3, 4];
        let byte_names: Vec<String> = (0..256).map(|b| format!("<0x{b:02X}>")).collect();
        for b in &byte_names {
            toks.push(b);
            scores.push(0.0);
            types.push(6);
        }
        for (t, s) in [
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -2.0),
            ("c", -2.0),
            ("ab", -3.0),
            ("bc", -3.0),
            ("▁a", -1.5),
            ("abc", -0.5),
            ("\n", -2.0),
        ] {
            toks.push(t);
            scores.push(s);
            types.push(1);
        }
        let kv = vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                Value::Array(Array::String(toks.iter().map(|s| s.to_string()).collect())),
            ),
            ("tokenizer.ggml.scores", Value::Array(Array::F32(scores))),
            ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
            ("tokenizer.ggml.bos_token_id", Value::U32(2)),
            ("tokenizer.ggml.eos_token_id", Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(3)),
            ("tokenizer.ggml.padding_token_id", Value::U32(0)),
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ];
        let g = GgufFile::from_bytes(build::file(&kv, &[]), "toy.gguf").unwrap();
        Tokenizer::from_gguf(&g).unwrap()
    }

    fn ids(t: &Tokenizer, pieces: &[&str]) -> Vec<u32> {
        pieces.iter().map(|p| t.token_id(p).unwrap()).collect()
    }

    #[test]
    fn merges_by_score_leftmost_first() {
        let t = toy();
        // "ab" and "bc" tie at -3: the leftmost pair merges first, and then
        // "ab"+"c" forms "abc".
        assert_eq!(t.encode("abc", false, false), ids(&t, &["abc"]));
        assert_eq!(t.encode("bcb", false, false), ids(&t, &["bc", "b"]));
        assert_eq!(t.encode("bbc", false, false), ids(&t, &["b", "bc"]));
        assert_eq!(
            t.encode(" a", true, false),
            [vec![2], ids(&t, &["▁a"])].concat()
        );
    }

    #[test]
    fn byte_fallback_and_specials() {
        let t = toy();
        let e = t.encode("é", false, false);
        assert_eq!(e, ids(&t, &["<0xC3>", "<0xA9>"]));
        assert_eq!(t.decode(&e), "é");
        // User-defined tokens split out always; control only when parsing.
        assert_eq!(
            t.encode("a\n\nb", false, false),
            ids(&t, &["a", "\n\n", "b"])
        );
        let plain = t.encode("<ctl>", false, false);
        assert!(!plain.contains(&4));
        assert_eq!(
            t.encode("<ctl>a", false, true),
            vec![4, t.token_id("a").unwrap()]
        );
        assert_eq!(t.decode(&[2, 4, t.token_id("▁a").unwrap()]), " a");
        assert_eq!(t.decode_with(&[4], true), "<ctl>");
        assert!(t.encode("", true, false) == vec![2]);
    }
}
