//! A reader for GGUF files (versions 2 and 3), the single-file format llama.cpp
//! uses for weights, tokenizer and hyper-parameters.
//!
//! Layout (all little-endian):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count x (key: string, value_type u32, value)
//! tensor_count x (name: string, n_dims u32, dims u64 x n_dims, ggml_type u32, offset u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset
//! ```
//!
//! where a string is `len u64` followed by `len` bytes.
//!
//! Why it is written this way:
//!
//! - The header is read through a `BufReader` and the tensor data is never
//!   read by [`GgufFile::open`]: opening a 250 MB model to look at its
//!   tokenizer must cost milliseconds, not a 250 MB read. Tensor bytes are
//!   reached later through a memory map ([`GgufFile::tensor_data`]), so the
//!   OS pages in only what the forward pass touches.
//! - Every length in the file is checked against the bytes that remain before
//!   anything is allocated, so a corrupt or hostile file yields a typed
//!   [`GgufError`] (bad magic, truncated, unsupported version, ...) instead of
//!   a panic or an attempt to allocate 2^60 bytes.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use memmap2::Mmap;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Why a GGUF file could not be read. Messages name the file where known and
/// say what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a GGUF file (expected magic \"GGUF\", found {found:02x?}); pass a .gguf model file")]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{path}: unsupported GGUF version {version}; only versions 2 and 3 are supported (re-convert the model with a recent llama.cpp)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: file is truncated or corrupt: needed {needed} more bytes at offset {offset} while reading {what}, but the file ends at {len}")]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{path}: invalid GGUF: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: no tensor named {name:?}")]
    NoSuchTensor { path: PathBuf, name: String },
    #[error("{path}: metadata key {key:?} is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key {key:?} has type {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
}

/// The element type of a tensor, as ggml numbers it (`enum ggml_type`).
///
/// Unknown numbers are kept as [`GgmlType::Unknown`] rather than rejected:
/// reading metadata (e.g. the tokenizer) must not fail because a newer
/// quantisation exists in the file; only code that needs the tensor's bytes
/// has to know its block layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    Unknown(u32),
}

impl GgmlType {
    pub fn from_u32(v: u32) -> Self {
        use GgmlType::*;
        match v {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            other => Unknown(other),
        }
    }

    /// `(elements per block, bytes per block)`, or `None` for an unknown type.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        use GgmlType::*;
        Some(match self {
            F32 => (1, 4),
            F16 => (1, 2),
            BF16 => (1, 2),
            F64 => (1, 8),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            IQ4_NL => (32, 18),
            MXFP4 => (32, 17),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            IQ1_M => (256, 56),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
            Unknown(_) => return None,
        })
    }

    /// The name llama.cpp prints for this type (`q4_K`, `f32`, ...).
    pub fn name(self) -> String {
        use GgmlType::*;
        let s = match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2_K => "q2_K",
            Q3_K => "q3_K",
            Q4_K => "q4_K",
            Q5_K => "q5_K",
            Q6_K => "q6_K",
            Q8_K => "q8_K",
            IQ2_XXS => "iq2_xxs",
            IQ2_XS => "iq2_xs",
            IQ3_XXS => "iq3_xxs",
            IQ1_S => "iq1_s",
            IQ4_NL => "iq4_nl",
            IQ3_S => "iq3_s",
            IQ2_S => "iq2_s",
            IQ4_XS => "iq4_xs",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            F64 => "f64",
            IQ1_M => "iq1_m",
            BF16 => "bf16",
            TQ1_0 => "tq1_0",
            TQ2_0 => "tq2_0",
            MXFP4 => "mxfp4",
            Unknown(n) => return format!("unknown({n})"),
        };
        s.to_string()
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One metadata value. Arrays are stored typed (not as `Vec<Value>`) because
/// the tokenizer arrays hold 262,144 entries and a boxed enum per score would
/// triple their size.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A typed metadata array. GGUF allows arrays of arrays, hence [`Array::Array`].
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF name of the element type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "array[u8]",
            Array::I8(_) => "array[i8]",
            Array::U16(_) => "array[u16]",
            Array::I16(_) => "array[i16]",
            Array::U32(_) => "array[u32]",
            Array::I32(_) => "array[i32]",
            Array::F32(_) => "array[f32]",
            Array::Bool(_) => "array[bool]",
            Array::String(_) => "array[string]",
            Array::Array(_) => "array[array]",
            Array::U64(_) => "array[u64]",
            Array::I64(_) => "array[i64]",
            Array::F64(_) => "array[f64]",
        }
    }
}

impl Value {
    /// The GGUF name of the type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(a) => a.type_name(),
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// Any integer type widened to `i128`, so callers need not care whether a
    /// converter wrote `u32` or `i32` (converters differ on this).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// The value as `u64` when it is a non-negative integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(|v| u64::try_from(v).ok())
    }

    /// Any float (or integer) type as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the fastest-varying (row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the tensor data section.
    pub offset: u64,
    /// Absolute offset in the file (`data_offset + offset`).
    pub file_offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Size of the tensor's data in bytes, or `None` when the type is unknown
    /// or the row length is not a whole number of blocks.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, bytes) = self.ggml_type.block_layout()?;
        let n = self.n_elements();
        let row = *self.dims.first().unwrap_or(&1);
        if !row.is_multiple_of(block) {
            return None;
        }
        (n / block).checked_mul(bytes)
    }
}

/// Where the tensor bytes come from: a file (mapped lazily on first use) or a
/// buffer the caller handed over (tests and in-memory files).
#[derive(Debug)]
enum Backing {
    File { map: OnceLock<Mmap> },
    Memory(Arc<[u8]>),
}

/// A parsed GGUF file: its metadata and tensor directory. Tensor data stays on
/// disk until [`GgufFile::tensor_data`] asks for it.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// `general.alignment`, or [`DEFAULT_ALIGNMENT`].
    pub alignment: u64,
    /// Absolute file offset where the tensor data section starts.
    pub data_offset: u64,
    /// Total size of the file (or buffer) in bytes.
    pub file_len: u64,
    backing: Backing,
}

impl GgufFile {
    /// Reads the header, metadata and tensor directory of `path`. Does not
    /// read tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let reader = BufReader::with_capacity(1 << 16, file);
        let header = parse_header(reader, len, &path)?;
        Ok(Self::from_header(
            header,
            path,
            len,
            Backing::File {
                map: OnceLock::new(),
            },
        ))
    }

    /// Parses a GGUF file held in memory. `name` is used in error messages.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>, name: &str) -> Result<Self, GgufError> {
        let bytes: Arc<[u8]> = bytes.into();
        let path = PathBuf::from(name);
        let len = bytes.len() as u64;
        let header = parse_header(&bytes[..], len, &path)?;
        Ok(Self::from_header(header, path, len, Backing::Memory(bytes)))
    }

    fn from_header(h: Header, path: PathBuf, file_len: u64, backing: Backing) -> Self {
        let metadata_index = h
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = h
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        GgufFile {
            path,
            version: h.version,
            metadata: h.metadata,
            metadata_index,
            tensors: h.tensors,
            tensor_index,
            alignment: h.alignment,
            data_offset: h.data_offset,
            file_len,
            backing,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of `key` or a [`GgufError::MissingKey`].
    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Option<&Array> {
        self.get(key).and_then(Value::as_array)
    }

    /// An error saying `key` has the wrong type; for callers that validate.
    pub fn wrong_type(&self, key: &str, expected: &'static str) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: self.get(key).map(Value::type_name).unwrap_or("nothing"),
        }
    }

    /// `general.architecture` (e.g. `gemma3`).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// A key under the architecture's namespace, e.g. `arch_key("block_count")`
    /// is `gemma3.block_count` for Gemma 3.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.{suffix}"))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of tensor `name` (still quantised). The first call maps
    /// the file into memory; the slice borrows that map, so no copy is made.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError::NoSuchTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        self.tensor_bytes(info)
    }

    /// The raw bytes of the tensor described by `info`.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        let n = info.n_bytes().ok_or_else(|| {
            self.invalid(format!(
                "tensor {:?} has type {} and dims {:?}, whose byte size is unknown",
                info.name, info.ggml_type, info.dims
            ))
        })?;
        let data = self.data()?;
        let start = info.file_offset;
        let end = start.checked_add(n).filter(|&e| e <= data.len() as u64);
        match end {
            Some(end) => Ok(&data[start as usize..end as usize]),
            None => Err(GgufError::Truncated {
                path: self.path.clone(),
                what: format!("data of tensor {:?}", info.name),
                offset: start,
                needed: n,
                len: data.len() as u64,
            }),
        }
    }

    /// The whole file as bytes (memory-mapped for files).
    fn data(&self) -> Result<&[u8], GgufError> {
        match &self.backing {
            Backing::Memory(b) => Ok(b),
            Backing::File { map } => {
                if let Some(m) = map.get() {
                    return Ok(m);
                }
                let io_err = |source| GgufError::Io {
                    path: self.path.clone(),
                    source,
                };
                let file = File::open(&self.path).map_err(io_err)?;
                // SAFETY: the map is read-only. Like every mmap-based model
                // loader (llama.cpp included) we rely on the model file not
                // being truncated or rewritten while it is in use.
                let m = unsafe { Mmap::map(&file) }.map_err(io_err)?;
                if (m.len() as u64) < self.file_len {
                    return Err(self.invalid(format!(
                        "file shrank from {} to {} bytes since it was opened",
                        self.file_len,
                        m.len()
                    )));
                }
                Ok(map.get_or_init(|| m))
            }
        }
    }

    fn invalid(&self, message: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.clone(),
            message,
        }
    }
}

struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// A reader that knows its position and how many bytes the file has, so every
/// length can be validated before allocation.
struct Cursor<'p, R> {
    r: R,
    pos: u64,
    len: u64,
    path: &'p Path,
}

/// Largest tensor rank GGML supports; anything bigger is corruption.
const MAX_DIMS: u32 = 4;
/// Array nesting beyond this is corruption (and would risk stack overflow).
const MAX_ARRAY_DEPTH: u32 = 8;

impl<R: Read> Cursor<'_, R> {
    fn truncated(&self, what: &str, needed: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos,
            needed,
            len: self.len,
        }
    }

    fn invalid(&self, message: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.to_path_buf(),
            message: format!("{message} (at offset {})", self.pos),
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails early (before allocating) when `n` bytes cannot remain.
    fn ensure(&self, n: u64, what: &str) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(self.truncated(what, n));
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufError> {
        self.ensure(buf.len() as u64, what)?;
        match self.r.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            // The file may be shorter than its metadata said (e.g. it shrank).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.truncated(what, buf.len() as u64))
            }
            Err(source) => Err(GgufError::Io {
                path: self.path.to_path_buf(),
                source,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn bool(&mut self, what: &str) -> Result<bool, GgufError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.invalid(format!("{what}: bool byte is {b}, expected 0 or 1"))),
        }
    }

    /// GGUF strings are byte strings; converters write UTF-8. A stray invalid
    /// byte is replaced (U+FFFD) rather than failing the whole file, as
    /// llama.cpp itself does not validate them either.
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        self.ensure(n, what)?;
        let mut buf = vec![0u8; n as usize];
        self.fill(&mut buf, what)?;
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Reads `count` fixed-size elements, checking the total size first.
    fn vec<T>(
        &mut self,
        count: u64,
        size: u64,
        what: &str,
        mut f: impl FnMut(&mut Self) -> Result<T, GgufError>,
    ) -> Result<Vec<T>, GgufError> {
        let total = count.saturating_mul(size);
        self.ensure(total, what)?;
        let mut v = Vec::with_capacity(count as usize);
        for _ in 0..count {
            v.push(f(self)?);
        }
        Ok(v)
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => Value::Bool(self.bool(what)?),
            8 => Value::String(self.string(what)?),
            9 => Value::Array(self.array_value(what, depth)?),
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(self.invalid(format!("{what}: unknown value type {other}"))),
        })
    }

    fn array_value(&mut self, what: &str, depth: u32) -> Result<Array, GgufError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.invalid(format!(
                "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
            )));
        }
        let ty = self.u32(what)?;
        let n = self.u64(what)?;
        Ok(match ty {
            0 => Array::U8(self.vec(n, 1, what, |c| c.u8(what))?),
            1 => Array::I8(self.vec(n, 1, what, |c| Ok(c.u8(what)? as i8))?),
            2 => Array::U16(self.vec(n, 2, what, |c| c.u16(what))?),
            3 => Array::I16(self.vec(n, 2, what, |c| Ok(c.u16(what)? as i16))?),
            4 => Array::U32(self.vec(n, 4, what, |c| c.u32(what))?),
            5 => Array::I32(self.vec(n, 4, what, |c| Ok(c.u32(what)? as i32))?),
            6 => Array::F32(self.vec(n, 4, what, |c| Ok(f32::from_bits(c.u32(what)?)))?),
            7 => Array::Bool(self.vec(n, 1, what, |c| c.bool(what))?),
            // Each string needs at least its 8-byte length.
            8 => Array::String(self.vec(n, 8, what, |c| c.string(what))?),
            // Each nested array needs at least its type and count (12 bytes).
            9 => Array::Array(self.vec(n, 12, what, |c| c.array_value(what, depth + 1))?),
            10 => Array::U64(self.vec(n, 8, what, |c| c.u64(what))?),
            11 => Array::I64(self.vec(n, 8, what, |c| Ok(c.u64(what)? as i64))?),
            12 => Array::F64(self.vec(n, 8, what, |c| Ok(f64::from_bits(c.u64(what)?)))?),
            other => {
                return Err(self.invalid(format!("{what}: unknown array element type {other}")))
            }
        })
    }
}

fn parse_header<R: Read>(r: R, len: u64, path: &Path) -> Result<Header, GgufError> {
    let mut c = Cursor {
        r,
        pos: 0,
        len,
        path,
    };

    // Check the magic before anything else, so that a non-GGUF file (even a
    // tiny one) is reported as "not a GGUF file" rather than "truncated".
    let mut magic = Vec::with_capacity(4);
    (&mut c.r)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if magic != GGUF_MAGIC {
        if magic.len() < 4 && GGUF_MAGIC.starts_with(&magic) {
            return Err(c.truncated("magic", 4));
        }
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    c.pos = 4;

    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // Each key/value needs at least 8 (key length) + 4 (type) + 1 bytes and
    // each tensor info at least 8 + 4 + 4 + 8; reject absurd counts up front.
    c.ensure(n_kv.saturating_mul(13), "metadata")?;

    let mut metadata = Vec::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of metadata {key:?}"))?;
        let value = c.value(ty, &format!("metadata {key:?}"), 0)?;
        metadata.push((key, value));
    }

    c.ensure(n_tensors.saturating_mul(24), "tensor infos")?;
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor #{i}"))?;
        let what = format!("tensor info {name:?}");
        let n_dims = c.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(c.invalid(format!("{what}: {n_dims} dimensions (at most {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&what)?);
        }
        if dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(c.invalid(format!("{what}: element count overflows ({dims:?})")));
        }
        let ggml_type = GgmlType::from_u32(c.u32(&what)?);
        let offset = c.u64(&what)?;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            file_offset: 0,
        });
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(c.invalid(format!(
                    "general.alignment must be a power of two, found {v:?}"
                )))
            }
        },
    };
    let data_offset = c.pos.div_ceil(alignment) * alignment;
    for t in &mut tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "tensor {:?} offset {} is not a multiple of the alignment {alignment}",
                    t.name, t.offset
                ),
            });
        }
        t.file_offset = data_offset
            .checked_add(t.offset)
            .ok_or_else(|| GgufError::Invalid {
                path: path.to_path_buf(),
                message: format!("tensor {:?} offset {} overflows", t.name, t.offset),
            })?;
    }

    // A download cut short is the most common corrupt model; say so now
    // rather than when the forward pass first touches the missing tensor.
    for t in &tensors {
        if let Some(n) = t.n_bytes() {
            if t.file_offset.saturating_add(n) > len {
                return Err(GgufError::Truncated {
                    path: path.to_path_buf(),
                    what: format!("data of tensor {:?}", t.name),
                    offset: t.file_offset,
                    needed: n,
                    len,
                });
            }
        }
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Builds GGUF bytes in memory. Used by tests (crafted inputs) and handy for
/// writing small fixture models; it is not a general writer.
#[doc(hidden)]
pub mod build {
    use super::{Array, Value};

    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn array_type_id(a: &Array) -> u32 {
        match a {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::U16(_) => 2,
            Array::I16(_) => 3,
            Array::U32(_) => 4,
            Array::I32(_) => 5,
            Array::F32(_) => 6,
            Array::Bool(_) => 7,
            Array::String(_) => 8,
            Array::Array(_) => 9,
            Array::U64(_) => 10,
            Array::I64(_) => 11,
            Array::F64(_) => 12,
        }
    }

    fn array(out: &mut Vec<u8>, a: &Array) {
        out.extend_from_slice(&array_type_id(a).to_le_bytes());
        out.extend_from_slice(&(a.len() as u64).to_le_bytes());
        match a {
            Array::U8(v) => out.extend_from_slice(v),
            Array::I8(v) => v.iter().for_each(|x| out.push(*x as u8)),
            Array::U16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::I16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::U32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::I32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::Bool(v) => v.iter().for_each(|x| out.push(*x as u8)),
            Array::String(v) => v.iter().for_each(|s| string(out, s)),
            Array::Array(v) => v.iter().for_each(|a| array(out, a)),
            Array::U64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::I64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::F64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }

    pub fn value(out: &mut Vec<u8>, v: &Value) {
        out.extend_from_slice(&type_id(v).to_le_bytes());
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => string(out, s),
            Value::Array(a) => array(out, a),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }

    /// A tensor to place in a built file: name, dims, ggml type id, raw data.
    pub struct Tensor<'a> {
        pub name: &'a str,
        pub dims: &'a [u64],
        pub ggml_type: u32,
        pub data: &'a [u8],
    }

    /// A complete GGUF v3 file with the given metadata and tensors, aligned to
    /// 32 bytes (or `general.alignment` if it is among `kv` as a u32).
    pub fn file(kv: &[(&str, Value)], tensors: &[Tensor]) -> Vec<u8> {
        let align = kv
            .iter()
            .find(|(k, _)| *k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(32);
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            string(&mut out, k);
            value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in tensors {
            string(&mut out, t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(align) * align;
        }
        let data_start = (out.len() as u64).div_ceil(align) * align;
        out.resize(data_start as usize, 0);
        for (t, off) in tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(t.data);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::{file, Tensor};
    use super::*;

    fn sample() -> Vec<u8> {
        let w: Vec<u8> = (0..16u8).collect();
        let kv = vec![
            ("general.architecture", Value::String("toy".into())),
            ("toy.block_count", Value::U32(2)),
            ("toy.eps", Value::F32(1e-6)),
            ("flag", Value::Bool(true)),
            ("big", Value::I64(-5)),
            (
                "tokens",
                Value::Array(Array::String(vec!["a".into(), "▁b".into(), "".into()])),
            ),
            ("scores", Value::Array(Array::F32(vec![0.5, -1.0, 2.0]))),
            ("types", Value::Array(Array::I32(vec![1, 3, 6]))),
            (
                "nested",
                Value::Array(Array::Array(vec![
                    Array::U8(vec![1, 2]),
                    Array::U64(vec![9]),
                ])),
            ),
        ];
        file(
            &kv,
            &[
                Tensor {
                    name: "w",
                    dims: &[4, 1],
                    ggml_type: 0,
                    data: &w,
                },
                Tensor {
                    name: "v",
                    dims: &[2],
                    ggml_type: 1,
                    data: &[7, 7, 8, 8],
                },
            ],
        )
    }

    #[test]
    fn round_trips_all_value_types() {
        let g = GgufFile::from_bytes(sample(), "sample.gguf").unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.architecture(), Some("toy"));
        assert_eq!(g.arch_u64("block_count"), Some(2));
        assert_eq!(g.get_f64("toy.eps"), Some(1e-6f32 as f64));
        assert_eq!(g.get_bool("flag"), Some(true));
        assert_eq!(g.get("big").unwrap().as_int(), Some(-5));
        assert_eq!(
            g.get_array("tokens"),
            Some(&Array::String(vec!["a".into(), "▁b".into(), "".into()]))
        );
        assert_eq!(g.get_array("scores").unwrap().len(), 3);
        assert_eq!(g.get_array("nested").unwrap().len(), 2);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.data_offset % 32, 0);
        assert_eq!(
            g.tensor_data("w").unwrap(),
            &(0..16u8).collect::<Vec<_>>()[..]
        );
        assert_eq!(g.tensor_data("v").unwrap(), &[7, 7, 8, 8]);
        assert_eq!(g.tensor("v").unwrap().offset, 32);
        assert!(matches!(
            g.tensor_data("nope"),
            Err(GgufError::NoSuchTensor { .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            match GgufFile::from_bytes(bytes[..cut].to_vec(), "cut.gguf") {
                Err(GgufError::Truncated { .. }) => {}
                Ok(_) => panic!("cut at {cut} of {} parsed", bytes.len()),
                Err(e) => panic!("cut at {cut}: unexpected error {e}"),
            }
        }
    }
}
