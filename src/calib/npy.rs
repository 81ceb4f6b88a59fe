//! The `.npy` format (NumPy's `numpy.lib.format`, versions 1.0–3.0): header parsing and
//! writing, and typed array data. Pure Rust, no unsafe.
//!
//! Read: bool, int8/16/32/64, uint8/16/32/64, float16/32/64 in either byte order, C or Fortran
//! order (Fortran data is reordered to C order on read), 0-d arrays (scalars). Object arrays
//! (`|O`, i.e. pickles) and structured dtypes are refused, never executed.
//! Write: version 1.0 headers padded to 64 bytes like NumPy, C order, little endian.
//! bfloat16 has no NumPy dtype: it is written as float32, which holds every bfloat16 value
//! exactly, so `np.load` sees the same numbers (see ARCHITECTURE.md).

use std::io::{Read, Write};

use half::{bf16, f16};

/// NumPy's magic string.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Header dictionaries longer than this are refused (NumPy itself refuses over 10,000 bytes
/// unless told otherwise).
pub const MAX_HEADER_LEN: usize = 1 << 20;

/// Why a `.npy` stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("not a .npy array (bad magic bytes)")]
    BadMagic,
    #[error("unsupported .npy format version {0}.{1}")]
    Version(u8, u8),
    #[error("malformed .npy header: {0}")]
    Header(String),
    #[error("object arrays (pickled Python objects) are refused: {0}")]
    Object(String),
    #[error("unsupported dtype {0}")]
    Dtype(String),
    #[error(
        "array of shape {shape:?} and dtype {dtype} needs {bytes} bytes, above the limit of {limit} bytes"
    )]
    TooLarge {
        shape: Vec<usize>,
        dtype: &'static str,
        bytes: u64,
        limit: u64,
    },
    #[error("truncated data: expected {expected} bytes, found {found}")]
    Truncated { expected: u64, found: u64 },
    #[error("{0} bytes of unexpected data after the array")]
    Trailing(u64),
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// Element types SD3 Lab reads and writes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Float16,
    Bfloat16,
    Float32,
    Float64,
}

impl DType {
    /// Bytes per element in memory (and on disk, except bfloat16, which is written as float32).
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::Int8 | Self::Uint8 => 1,
            Self::Int16 | Self::Uint16 | Self::Float16 | Self::Bfloat16 => 2,
            Self::Int32 | Self::Uint32 | Self::Float32 => 4,
            Self::Int64 | Self::Uint64 | Self::Float64 => 8,
        }
    }

    /// NumPy's name for the type (`float32`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Int8 => "int8",
            Self::Int16 => "int16",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::Uint8 => "uint8",
            Self::Uint16 => "uint16",
            Self::Uint32 => "uint32",
            Self::Uint64 => "uint64",
            Self::Float16 => "float16",
            Self::Bfloat16 => "bfloat16",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
        }
    }

    /// The dtype this one is stored as in a `.npy` file.
    pub fn on_disk(self) -> DType {
        if self == Self::Bfloat16 {
            Self::Float32
        } else {
            self
        }
    }

    fn descr(self) -> &'static str {
        match self.on_disk() {
            Self::Bool => "|b1",
            Self::Int8 => "|i1",
            Self::Uint8 => "|u1",
            Self::Int16 => "<i2",
            Self::Int32 => "<i4",
            Self::Int64 => "<i8",
            Self::Uint16 => "<u2",
            Self::Uint32 => "<u4",
            Self::Uint64 => "<u8",
            Self::Float16 => "<f2",
            Self::Float32 | Self::Bfloat16 => "<f4",
            Self::Float64 => "<f8",
        }
    }

    /// Parses a NumPy `descr` string; returns the type and whether the data is big endian.
    fn from_descr(descr: &str) -> Result<(DType, bool), NpyError> {
        if descr.contains('O') {
            return Err(NpyError::Object(format!("dtype '{descr}'")));
        }
        let (order, code) = match descr.chars().next() {
            Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
            _ => ('=', descr),
        };
        let dtype = match code {
            "b1" | "?" => Self::Bool,
            "i1" => Self::Int8,
            "u1" => Self::Uint8,
            "i2" => Self::Int16,
            "u2" => Self::Uint16,
            "i4" => Self::Int32,
            "u4" => Self::Uint32,
            "i8" => Self::Int64,
            "u8" => Self::Uint64,
            "f2" | "e" => Self::Float16,
            "f4" | "f" => Self::Float32,
            "f8" | "d" => Self::Float64,
            "V2" => {
                return Err(NpyError::Dtype(format!(
                    "'{descr}' (raw 2-byte void, e.g. an ml_dtypes bfloat16 saved by np.save): save it as float32"
                )));
            }
            _ => return Err(NpyError::Dtype(format!("'{descr}'"))),
        };
        Ok((dtype, order == '>' && dtype.size() > 1))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The type as stored in the file.
    pub dtype: DType,
    pub big_endian: bool,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Bytes before the data (magic, version, length field, header dictionary).
    pub header_len: u64,
}

impl NpyHeader {
    pub fn element_count(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
    }

    /// Bytes of array data after the header, or `None` on overflow.
    pub fn data_len(&self) -> Option<u64> {
        self.element_count()?.checked_mul(self.dtype.size() as u64)
    }
}

/// Reads and parses the header; leaves `r` at the first data byte.
pub fn read_header<R: Read>(r: &mut R) -> Result<NpyHeader, NpyError> {
    let mut prefix = [0u8; 8];
    read_exact_or(r, &mut prefix, NpyError::BadMagic)?;
    if &prefix[..6] != MAGIC {
        return Err(NpyError::BadMagic);
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let (dict_len, len_field) = match major {
        1 => {
            let mut b = [0u8; 2];
            read_exact_or(r, &mut b, NpyError::Header("truncated length field".into()))?;
            (u16::from_le_bytes(b) as usize, 2)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exact_or(r, &mut b, NpyError::Header("truncated length field".into()))?;
            (u32::from_le_bytes(b) as usize, 4)
        }
        _ => return Err(NpyError::Version(major, minor)),
    };
    if dict_len > MAX_HEADER_LEN {
        return Err(NpyError::Header(format!(
            "header of {dict_len} bytes is too long"
        )));
    }
    let mut dict = vec![0u8; dict_len];
    read_exact_or(r, &mut dict, NpyError::Header("truncated header".into()))?;
    let text =
        std::str::from_utf8(&dict).map_err(|_| NpyError::Header("header is not UTF-8".into()))?;
    let (descr, fortran_order, shape) = parse_dict(text)?;
    let (dtype, big_endian) = DType::from_descr(&descr)?;
    Ok(NpyHeader {
        dtype,
        big_endian,
        fortran_order,
        shape,
        header_len: (8 + len_field + dict_len) as u64,
    })
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], err: NpyError) -> Result<(), NpyError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            err
        } else {
            NpyError::Io(e)
        }
    })
}

/// Parses NumPy's header dictionary: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_dict(text: &str) -> Result<(String, bool, Vec<usize>), NpyError> {
    let bad = |what: &str| NpyError::Header(format!("{what} in {text:?}"));
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.trim_end().strip_suffix('}'))
        .ok_or_else(|| bad("not a dictionary"))?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after) = parse_quoted(rest).ok_or_else(|| bad("expected a quoted key"))?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| bad("expected ':'"))?
            .trim_start();
        rest = match key.as_str() {
            "descr" => {
                if after.starts_with('[') {
                    return Err(NpyError::Dtype(
                        "structured (record) dtypes are not supported".into(),
                    ));
                }
                let (v, after) = parse_quoted(after).ok_or_else(|| bad("descr is not a string"))?;
                descr = Some(v);
                after
            }
            "fortran_order" => {
                if let Some(a) = after.strip_prefix("True") {
                    fortran = Some(true);
                    a
                } else if let Some(a) = after.strip_prefix("False") {
                    fortran = Some(false);
                    a
                } else {
                    return Err(bad("fortran_order is not True/False"));
                }
            }
            "shape" => {
                let inner = after
                    .strip_prefix('(')
                    .ok_or_else(|| bad("shape is not a tuple"))?;
                let close = inner.find(')').ok_or_else(|| bad("unclosed shape tuple"))?;
                let dims = inner[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(|d| {
                        d.trim_end_matches('L')
                            .parse::<usize>()
                            .map_err(|_| bad("shape holds a non-integer"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                shape = Some(dims);
                &inner[close + 1..]
            }
            _ => return Err(bad(&format!("unexpected key '{key}'"))),
        }
        .trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err(bad("missing descr, fortran_order or shape")),
    }
}

fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = s[1..].find(quote)? + 1;
    Some((s[1..end].to_owned(), &s[end + 1..]))
}

/// Typed element storage of an [`NpyArray`], always in C order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    Bool(Vec<bool>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Float16(Vec<f16>),
    Bfloat16(Vec<bf16>),
    Float32(Vec<f32>),
    Float64(Vec<f64>),
}

/// Applies `$body` to the vector inside any [`NpyData`] variant.
macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            NpyData::Bool($v) => $body,
            NpyData::Int8($v) => $body,
            NpyData::Int16($v) => $body,
            NpyData::Int32($v) => $body,
            NpyData::Int64($v) => $body,
            NpyData::Uint8($v) => $body,
            NpyData::Uint16($v) => $body,
            NpyData::Uint32($v) => $body,
            NpyData::Uint64($v) => $body,
            NpyData::Float16($v) => $body,
            NpyData::Bfloat16($v) => $body,
            NpyData::Float32($v) => $body,
            NpyData::Float64($v) => $body,
        }
    };
}

/// Like `each_variant!`, but rebuilds the same variant from `$body`.
macro_rules! each_variant_map {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            NpyData::Bool($v) => NpyData::Bool($body),
            NpyData::Int8($v) => NpyData::Int8($body),
            NpyData::Int16($v) => NpyData::Int16($body),
            NpyData::Int32($v) => NpyData::Int32($body),
            NpyData::Int64($v) => NpyData::Int64($body),
            NpyData::Uint8($v) => NpyData::Uint8($body),
            NpyData::Uint16($v) => NpyData::Uint16($body),
            NpyData::Uint32($v) => NpyData::Uint32($body),
            NpyData::Uint64($v) => NpyData::Uint64($body),
            NpyData::Float16($v) => NpyData::Float16($body),
            NpyData::Bfloat16($v) => NpyData::Bfloat16($body),
            NpyData::Float32($v) => NpyData::Float32($body),
            NpyData::Float64($v) => NpyData::Float64($body),
        }
    };
}

/// Element types that can be converted to `f64` for summaries and checks.
trait ToF64: Copy {
    fn to_f64(self) -> f64;
}
macro_rules! to_f64_as {
    ($($t:ty),*) => { $(impl ToF64 for $t { fn to_f64(self) -> f64 { self as f64 } })* };
}
to_f64_as!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);
impl ToF64 for bool {
    fn to_f64(self) -> f64 {
        if self { 1.0 } else { 0.0 }
    }
}
impl ToF64 for f16 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}
impl ToF64 for bf16 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl NpyData {
    pub fn dtype(&self) -> DType {
        match self {
            Self::Bool(_) => DType::Bool,
            Self::Int8(_) => DType::Int8,
            Self::Int16(_) => DType::Int16,
            Self::Int32(_) => DType::Int32,
            Self::Int64(_) => DType::Int64,
            Self::Uint8(_) => DType::Uint8,
            Self::Uint16(_) => DType::Uint16,
            Self::Uint32(_) => DType::Uint32,
            Self::Uint64(_) => DType::Uint64,
            Self::Float16(_) => DType::Float16,
            Self::Bfloat16(_) => DType::Bfloat16,
            Self::Float32(_) => DType::Float32,
            Self::Float64(_) => DType::Float64,
        }
    }

    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as `f64` (exact for every type but 64-bit integers above 2^53).
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        each_variant!(self, v => v.get(i).map(|x| x.to_f64()))
    }

    /// All elements as `f32` (float types exactly when they fit; integers rounded).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            Self::Float32(v) => v.clone(),
            Self::Float16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Self::Bfloat16(v) => v.iter().map(|x| x.to_f32()).collect(),
            other => each_variant!(other, v => v.iter().map(|x| x.to_f64() as f32).collect()),
        }
    }

    /// Little-endian bytes as written to disk (bfloat16 widened to float32).
    fn to_le_bytes(&self) -> Vec<u8> {
        fn flat<const N: usize, T: Copy>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            v.iter().flat_map(|&x| f(x)).collect()
        }
        match self {
            Self::Bool(v) => v.iter().map(|&b| b as u8).collect(),
            Self::Int8(v) => flat(v, i8::to_le_bytes),
            Self::Int16(v) => flat(v, i16::to_le_bytes),
            Self::Int32(v) => flat(v, i32::to_le_bytes),
            Self::Int64(v) => flat(v, i64::to_le_bytes),
            Self::Uint8(v) => v.clone(),
            Self::Uint16(v) => flat(v, u16::to_le_bytes),
            Self::Uint32(v) => flat(v, u32::to_le_bytes),
            Self::Uint64(v) => flat(v, u64::to_le_bytes),
            Self::Float16(v) => flat(v, |x: f16| x.to_bits().to_le_bytes()),
            Self::Bfloat16(v) => flat(v, |x: bf16| x.to_f32().to_le_bytes()),
            Self::Float32(v) => flat(v, f32::to_le_bytes),
            Self::Float64(v) => flat(v, f64::to_le_bytes),
        }
    }

    fn from_bytes(dtype: DType, bytes: &[u8], big_endian: bool) -> Result<Self, NpyError> {
        fn conv<const N: usize, T>(
            bytes: &[u8],
            big: bool,
            le: fn([u8; N]) -> T,
            be: fn([u8; N]) -> T,
        ) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    if big { be(a) } else { le(a) }
                })
                .collect()
        }
        let b = big_endian;
        Ok(match dtype {
            DType::Bool => Self::Bool(
                bytes
                    .iter()
                    .map(|&x| match x {
                        0 => Ok(false),
                        1 => Ok(true),
                        _ => Err(NpyError::Header(format!("bool array holds byte {x}"))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DType::Int8 => Self::Int8(bytes.iter().map(|&x| x as i8).collect()),
            DType::Uint8 => Self::Uint8(bytes.to_vec()),
            DType::Int16 => Self::Int16(conv(bytes, b, i16::from_le_bytes, i16::from_be_bytes)),
            DType::Uint16 => Self::Uint16(conv(bytes, b, u16::from_le_bytes, u16::from_be_bytes)),
            DType::Int32 => Self::Int32(conv(bytes, b, i32::from_le_bytes, i32::from_be_bytes)),
            DType::Uint32 => Self::Uint32(conv(bytes, b, u32::from_le_bytes, u32::from_be_bytes)),
            DType::Int64 => Self::Int64(conv(bytes, b, i64::from_le_bytes, i64::from_be_bytes)),
            DType::Uint64 => Self::Uint64(conv(bytes, b, u64::from_le_bytes, u64::from_be_bytes)),
            DType::Float16 => Self::Float16(
                conv(bytes, b, u16::from_le_bytes, u16::from_be_bytes)
                    .into_iter()
                    .map(f16::from_bits)
                    .collect(),
            ),
            DType::Bfloat16 => Self::Bfloat16(
                conv(bytes, b, u16::from_le_bytes, u16::from_be_bytes)
                    .into_iter()
                    .map(bf16::from_bits)
                    .collect(),
            ),
            DType::Float32 => Self::Float32(conv(bytes, b, f32::from_le_bytes, f32::from_be_bytes)),
            DType::Float64 => Self::Float64(conv(bytes, b, f64::from_le_bytes, f64::from_be_bytes)),
        })
    }

    /// Reorders Fortran-order (column-major) elements of `shape` into C order.
    fn fortran_to_c(self, shape: &[usize]) -> Self {
        if shape.len() < 2 {
            return self;
        }
        let n: usize = shape.iter().product();
        // C index → Fortran index: walk C order while tracking the Fortran offset.
        let mut f_strides = vec![1usize; shape.len()];
        for d in 1..shape.len() {
            f_strides[d] = f_strides[d - 1] * shape[d - 1];
        }
        let mut order = Vec::with_capacity(n);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            order.push(
                idx.iter()
                    .zip(&f_strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>(),
            );
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        each_variant_map!(self, v => order.iter().map(|&i| v[i]).collect())
    }
}

/// An n-dimensional array in C order. A scalar (0-d array) has an empty shape and one element.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// Builds an array, checking that the element count matches the shape.
    pub fn new(shape: Vec<usize>, data: NpyData) -> Result<Self, NpyError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(NpyError::Header(format!(
                "shape {shape:?} holds {n} elements, data has {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// A 0-d array.
    pub fn scalar(data: NpyData) -> Result<Self, NpyError> {
        Self::new(Vec::new(), data)
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The first element as `f64` (for scalars and 1-element arrays).
    pub fn first_f64(&self) -> Option<f64> {
        self.data.get_f64(0)
    }

    /// The array as `.npy` bytes, in memory (what [`write_npy`](Self::write_npy) streams).
    pub fn to_npy_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(128 + self.data.len() * self.dtype().on_disk().size());
        // Writing into a Vec cannot fail: a Vec's `Write` never returns an error.
        let _ = self.write_npy(&mut bytes);
        bytes
    }

    /// Writes the array as a `.npy` file, atomically (see [`crate::fsutil::write_atomic`]).
    pub fn write_npy_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        crate::fsutil::write_atomic(path, &self.to_npy_bytes())
    }

    /// Serialises as a `.npy` stream (format 1.0, or 2.0 if the header needs it).
    pub fn write_npy<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let shape = match self.shape.len() {
            0 => "()".to_owned(),
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut dict = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
            self.dtype().descr()
        );
        // Pad with spaces so that the data starts on a 64-byte boundary, newline-terminated.
        let v1 = dict.len() + 1 + 10 <= u16::MAX as usize;
        let prefix = if v1 { 10 } else { 12 };
        let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
        dict.push_str(&" ".repeat(total - prefix - dict.len() - 1));
        dict.push('\n');
        w.write_all(MAGIC)?;
        if v1 {
            w.write_all(&[1, 0])?;
            w.write_all(&(dict.len() as u16).to_le_bytes())?;
        } else {
            w.write_all(&[2, 0])?;
            w.write_all(&(dict.len() as u32).to_le_bytes())?;
        }
        w.write_all(dict.as_bytes())?;
        w.write_all(&self.data.to_le_bytes())
    }
}

/// The most [`read_data`] reserves before reading (16 MiB).
const MAX_UPFRONT_RESERVE: u64 = 16 << 20;

/// Reads the data that follows `header` from `r`, refusing arrays above `limit` bytes and
/// checking that the stream holds exactly the data the header announces. Memory use is
/// bounded by the announced size, whatever the stream would inflate to.
pub fn read_data<R: Read>(r: &mut R, header: &NpyHeader, limit: u64) -> Result<NpyArray, NpyError> {
    let dtype_name = header.dtype.name();
    let bytes = header.data_len().ok_or_else(|| NpyError::TooLarge {
        shape: header.shape.clone(),
        dtype: dtype_name,
        bytes: u64::MAX,
        limit,
    })?;
    if bytes > limit {
        return Err(NpyError::TooLarge {
            shape: header.shape.clone(),
            dtype: dtype_name,
            bytes,
            limit,
        });
    }
    // Grow with the data actually read: the announced size is only a claim (a 100-byte file
    // may announce 4 GiB), so it bounds the reservation instead of making it.
    let mut buf = Vec::with_capacity(bytes.min(MAX_UPFRONT_RESERVE) as usize);
    let found = r.take(bytes).read_to_end(&mut buf)? as u64;
    if found < bytes {
        return Err(NpyError::Truncated {
            expected: bytes,
            found,
        });
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? > 0 {
        let more = 1 + std::io::copy(&mut r.take(1 << 20), &mut std::io::sink())?;
        return Err(NpyError::Trailing(more));
    }
    let data = NpyData::from_bytes(header.dtype, &buf, header.big_endian)?;
    let data = if header.fortran_order {
        data.fortran_to_c(&header.shape)
    } else {
        data
    };
    Ok(NpyArray {
        shape: header.shape.clone(),
        data,
    })
}

/// Reads a whole `.npy` stream.
pub fn read_npy<R: Read>(r: &mut R, limit: u64) -> Result<NpyArray, NpyError> {
    let header = read_header(r)?;
    read_data(r, &header, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(a: &NpyArray) -> NpyArray {
        let mut bytes = Vec::new();
        a.write_npy(&mut bytes).unwrap();
        assert_eq!(&bytes[..6], MAGIC);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize + 10;
        assert_eq!(header_len % 64, 0, "data must start 64-byte aligned");
        read_npy(&mut bytes.as_slice(), u64::MAX).unwrap()
    }

    #[test]
    fn npy_file_holds_the_streamed_bytes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latent.npy");
        let a = NpyArray::new(
            vec![1, 2, 3],
            NpyData::Float32(vec![0.5, -1.0, 2.0, 3.0, 4.0, 5.0]),
        )
        .unwrap();
        a.write_npy_file(&path).unwrap();
        let mut streamed = Vec::new();
        a.write_npy(&mut streamed).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk, streamed);
        assert_eq!(a.to_npy_bytes(), streamed);
        assert_eq!(read_npy(&mut on_disk.as_slice(), u64::MAX).unwrap(), a);
    }

    #[test]
    fn every_dtype_round_trips() {
        let arrays = [
            NpyArray::new(vec![2, 2], NpyData::Bool(vec![true, false, false, true])).unwrap(),
            NpyArray::new(vec![3], NpyData::Int32(vec![-1, 0, i32::MAX])).unwrap(),
            NpyArray::new(vec![1, 3], NpyData::Int64(vec![i64::MIN, 7, 9])).unwrap(),
            NpyArray::new(
                vec![2],
                NpyData::Float16(vec![f16::from_f32(0.5), f16::from_f32(-65504.0)]),
            )
            .unwrap(),
            NpyArray::new(vec![2, 1, 1], NpyData::Float32(vec![1.25, f32::NAN])).unwrap(),
            NpyArray::new(vec![0], NpyData::Float64(vec![])).unwrap(),
            NpyArray::scalar(NpyData::Float64(vec![0.1])).unwrap(),
        ];
        for a in &arrays {
            let b = round_trip(a);
            assert_eq!(a.shape, b.shape);
            assert_eq!(a.dtype(), b.dtype());
            // NaN-aware comparison through the bytes.
            assert_eq!(a.data.to_le_bytes(), b.data.to_le_bytes());
        }
    }

    #[test]
    fn bfloat16_is_written_as_exact_float32() {
        let values = [
            bf16::from_f32(1.0e30),
            bf16::from_f32(-3.140625),
            bf16::from_f32(1.0e-20),
        ];
        let a = NpyArray::new(vec![3], NpyData::Bfloat16(values.to_vec())).unwrap();
        let b = round_trip(&a);
        assert_eq!(b.dtype(), DType::Float32);
        assert_eq!(
            b.data.to_f32_vec(),
            values.iter().map(|v| v.to_f32()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn fortran_order_and_big_endian_are_read_in_c_order() {
        // A 2x3 float64 array [[0,1,2],[3,4,5]] stored column-major, big endian.
        let dict = "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 3), }";
        let mut bytes = MAGIC.to_vec();
        bytes.extend([1, 0]);
        bytes.extend((dict.len() as u16).to_le_bytes());
        bytes.extend(dict.as_bytes());
        for v in [0.0f64, 3.0, 1.0, 4.0, 2.0, 5.0] {
            bytes.extend(v.to_be_bytes());
        }
        let a = read_npy(&mut bytes.as_slice(), u64::MAX).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, NpyData::Float64(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    }

    fn with_dict(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend([1, 0]);
        bytes.extend((dict.len() as u16).to_le_bytes());
        bytes.extend(dict.as_bytes());
        bytes.extend(data);
        bytes
    }

    #[test]
    fn object_and_structured_arrays_are_refused() {
        let pickled = with_dict(
            "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
            b"\x80\x04cos\nsystem\n",
        );
        assert!(matches!(
            read_npy(&mut pickled.as_slice(), u64::MAX),
            Err(NpyError::Object(_))
        ));
        let rec = with_dict(
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        );
        assert!(matches!(
            read_npy(&mut rec.as_slice(), u64::MAX),
            Err(NpyError::Dtype(_))
        ));
    }

    #[test]
    fn truncated_trailing_and_oversized_data_are_errors() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }";
        assert!(matches!(
            read_npy(&mut with_dict(dict, &[0; 12]).as_slice(), u64::MAX),
            Err(NpyError::Truncated {
                expected: 16,
                found: 12
            })
        ));
        assert!(matches!(
            read_npy(&mut with_dict(dict, &[0; 20]).as_slice(), u64::MAX),
            Err(NpyError::Trailing(4))
        ));
        assert!(matches!(
            read_npy(&mut with_dict(dict, &[0; 16]).as_slice(), 15),
            Err(NpyError::TooLarge { .. })
        ));
        let huge = "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }";
        assert!(matches!(
            read_npy(&mut with_dict(huge, &[]).as_slice(), 1 << 30),
            Err(NpyError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_not_an_array() {
        assert!(matches!(
            read_npy(&mut &b"PK\x03\x04 not npy"[..], u64::MAX),
            Err(NpyError::BadMagic)
        ));
        assert!(matches!(
            read_npy(&mut &b"\x93NUMPY\x09\x00"[..], u64::MAX),
            Err(NpyError::Version(9, 0))
        ));
        let bad = with_dict("{'descr': '<f4', 'shape': (2,), }", &[0; 8]);
        assert!(matches!(
            read_npy(&mut bad.as_slice(), u64::MAX),
            Err(NpyError::Header(_))
        ));
    }
}
