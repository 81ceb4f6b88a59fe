//! A reader for PyTorch `.pth` state dicts that never executes pickle code.
//!
//! `torch.save` writes a pickle (protocol 2) whose objects are rebuilt by calling Python
//! functions named in the file; loading one with Python's `pickle` runs whatever the file
//! names. This reader interprets the pickle itself and accepts only what a plain state dict of
//! tensors needs: containers (dict, `collections.OrderedDict`, list, tuple), scalars and
//! strings, the tensor rebuild functions (`torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`), the storage classes and `torch.save`'s persistent storage ids. Any
//! other global, a call of anything else, `BUILD` on anything but an `OrderedDict` (whose
//! `_metadata` attribute `state_dict()` pickles that way), and every object-construction opcode
//! (`INST`, `OBJ`, `NEWOBJ`, extensions) are refused with the file, the opcode and its offset.
//!
//! Both layouts `torch.save` writes are read (torch/serialization.py):
//! - the zip format (PyTorch ≥ 1.6, the default): `<archive>/data.pkl` with persistent ids
//!   `('storage', StorageType, key, location, numel)`, each storage's bytes in
//!   `<archive>/data/<key>`, and `<archive>/byteorder` (`little` when absent);
//! - the legacy format (`_use_new_zipfile_serialization=False`, and everything before 1.6): a
//!   pickled magic number `0x1950a86a20f9469cfc6c`, protocol version 1001 and `sys_info`, the
//!   main pickle with persistent ids `('storage', StorageType, key, location, numel, view)`, the
//!   pickled list of storage keys, then each storage in that order as its element count (u64,
//!   little-endian) followed by its bytes (little-endian).
//!
//! Everything read is bounded: a string or storage may not claim more bytes than the file has
//! left, tensors must lie inside their storage, nesting and memo copies are limited, and the
//! tensors together may not exceed a byte limit ([`MAX_TOTAL_BYTES`] by default), so a hostile
//! file costs at most its own size plus that limit in memory and never panics.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Default limit on the bytes of all tensors of one file together (and of any one storage).
pub const MAX_TOTAL_BYTES: u64 = 4 << 30;

/// The legacy format's first pickle (`torch.serialization.MAGIC_NUMBER`).
const LEGACY_MAGIC: i128 = 0x1950_a86a_20f9_469c_fc6c;
/// The legacy format's second pickle (`torch.serialization.PROTOCOL_VERSION`).
const LEGACY_PROTOCOL_VERSION: i128 = 1001;
/// Deepest container nesting accepted (a state dict needs 4: dict, tuple, tuple, ints).
const MAX_DEPTH: u32 = 64;
/// Values copied through the memo in one pickle (each `BINPUT`/`BINGET` copies its value).
const MAX_MEMO_NODES: u64 = 50_000_000;
/// Most dimensions of a tensor (PyTorch's own limit is 64; weights use at most 5).
const MAX_NDIM: usize = 32;
/// Largest `data.pkl` of the zip format (Inception's is about 50 kB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Longest `GLOBAL` module or name line.
const MAX_GLOBAL_LEN: u64 = 256;

/// Element types of tensors the reader returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// The dtype's name in a `.safetensors` header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    /// The storage class `torch.save` names for this dtype (`torch.FloatStorage`, …).
    fn from_storage_class(name: &str) -> Option<Dtype> {
        Some(match name {
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "DoubleStorage" => Dtype::F64,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::F64 => "float64",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        };
        f.write_str(name)
    }
}

/// A tensor of a state dict: its dtype, shape and elements, contiguous in row-major order,
/// little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Tensor {
    /// A tensor from little-endian row-major bytes; `None` when the length does not match.
    pub fn from_bytes(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Option<Self> {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        (numel.checked_mul(dtype.size())? == data.len()).then_some(Self { dtype, shape, data })
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// The elements as little-endian bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The elements converted to `f64` (exact for every dtype but large `int64` values).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let c = self.dtype.size();
        self.data
            .chunks_exact(c)
            .map(|b| match self.dtype {
                Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
                Dtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
                Dtype::F64 => f64::from_le_bytes(b.try_into().expect("chunks of 8 bytes")),
                Dtype::I64 => i64::from_le_bytes(b.try_into().expect("chunks of 8 bytes")) as f64,
                Dtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                Dtype::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
                Dtype::I8 => b[0] as i8 as f64,
                Dtype::U8 => b[0] as f64,
                Dtype::Bool => (b[0] != 0) as u8 as f64,
            })
            .collect()
    }

    /// The elements converted to `f32` (what the MLX networks use).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        if self.dtype == Dtype::F32 {
            return self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
        }
        self.to_f64_vec().into_iter().map(|v| v as f32).collect()
    }

    /// The elements of an integer or bool tensor as `i64`; `None` for floating-point dtypes.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let c = self.dtype.size();
        let conv: fn(&[u8]) -> i64 = match self.dtype {
            Dtype::I64 => |b| i64::from_le_bytes(b.try_into().expect("chunks of 8 bytes")),
            Dtype::I32 => |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            Dtype::I16 => |b| i16::from_le_bytes([b[0], b[1]]) as i64,
            Dtype::I8 => |b| b[0] as i8 as i64,
            Dtype::U8 => |b| b[0] as i64,
            Dtype::Bool => |b| (b[0] != 0) as i64,
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => return None,
        };
        Some(self.data.chunks_exact(c).map(conv).collect())
    }
}

/// A state dict: tensors by name, in the file's order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    entries: Vec<(String, Tensor)>,
}

impl StateDict {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// `(name, tensor)` in the file's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    pub fn into_entries(self) -> Vec<(String, Tensor)> {
        self.entries
    }

    /// Bytes of all tensors together.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|(_, t)| t.data.len() as u64).sum()
    }
}

/// Which layout a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PyTorch ≥ 1.6's zip archive.
    Zip,
    /// The older stream of pickles followed by raw storages.
    Legacy,
}

/// Why a `.pth` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: refused {what} in {part} at byte {offset}: a plain state dict of tensors does not need it, and this reader never runs code from a pickle"
    )]
    Refused {
        path: PathBuf,
        part: String,
        offset: u64,
        what: String,
    },
    #[error("{path}: malformed pickle in {part} at byte {offset}: {detail}")]
    Pickle {
        path: PathBuf,
        part: String,
        offset: u64,
        detail: String,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// Reads the state dict of a `.pth` file (either format) with the default byte limit.
pub fn read_pth(path: &Path) -> Result<StateDict, PthError> {
    read_pth_with_limit(path, MAX_TOTAL_BYTES)
}

/// [`read_pth`] with a limit on the tensors' total bytes.
pub fn read_pth_with_limit(path: &Path, max_bytes: u64) -> Result<StateDict, PthError> {
    let file = std::fs::File::open(path).map_err(|source| PthError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_pth_from(path, file, max_bytes)
}

/// Reads a state dict from `reader` (the whole of a `.pth` file); `origin` names it in errors.
pub fn read_pth_from<R: Read + Seek>(
    origin: &Path,
    mut reader: R,
    max_bytes: u64,
) -> Result<StateDict, PthError> {
    let io = |source| PthError::Io {
        path: origin.to_owned(),
        source,
    };
    let len = reader.seek(SeekFrom::End(0)).map_err(io)?;
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut head = [0u8; 512];
    let n = read_up_to(&mut reader, &mut head).map_err(io)?;
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    let ctx = Ctx {
        path: origin,
        max_bytes,
        file_len: len,
    };
    match detect(&head[..n]) {
        Some(Format::Zip) => read_zip(&ctx, reader),
        Some(Format::Legacy) => read_legacy(&ctx, reader),
        None if n >= 262 && &head[257..262] == b"ustar" => Err(ctx.invalid(
            "a tar archive: the format of PyTorch before 0.4, which this reader does not support (load and re-save it with a current PyTorch)",
        )),
        None => Err(ctx.invalid(
            "not a PyTorch file: neither a zip archive nor the legacy format's magic number at its start",
        )),
    }
}

/// The format of a file from its first bytes, if it is one of `torch.save`'s.
pub fn detect(head: &[u8]) -> Option<Format> {
    // The legacy format starts with the magic number pickled with protocol 2:
    // PROTO 2, LONG1 10, then the number's 10 little-endian bytes.
    const LEGACY_HEAD: [u8; 4] = [0x80, 0x02, 0x8a, 0x0a];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(Format::Zip)
    } else if head.starts_with(&LEGACY_HEAD) {
        Some(Format::Legacy)
    } else {
        None
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct Ctx<'a> {
    path: &'a Path,
    max_bytes: u64,
    file_len: u64,
}

impl Ctx<'_> {
    fn invalid(&self, detail: impl Into<String>) -> PthError {
        PthError::Invalid {
            path: self.path.to_owned(),
            detail: detail.into(),
        }
    }

    fn io(&self, source: std::io::Error) -> PthError {
        PthError::Io {
            path: self.path.to_owned(),
            source,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pickle values
// ---------------------------------------------------------------------------------------------

/// A container's items with its nesting depth (kept up to date as items are added, so that a
/// depth limit holds without walking the tree) and an identity shared by its memo copies.
#[derive(Debug, Clone)]
struct Items<T> {
    id: u64,
    depth: u32,
    items: Vec<T>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DictKind {
    Plain,
    Ordered,
}

/// The globals a state dict may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    /// `torch.<X>Storage` or `torch.UntypedStorage` (bytes, read as `uint8`).
    StorageType(Dtype),
}

/// A storage as a persistent id names it.
#[derive(Debug, Clone, PartialEq)]
struct StorageRef {
    key: String,
    dtype: Dtype,
    numel: u64,
}

/// A tensor before its storage's bytes are read.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage: StorageRef,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i128),
    Float,
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Items<Value>),
    List(Items<Value>),
    Dict(Items<(Value, Value)>, DictKind),
    Global(Global),
    Storage(StorageRef),
    Tensor(Box<TensorRef>),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(i) | Value::List(i) => i.depth,
            Value::Dict(i, _) => i.depth,
            _ => 0,
        }
    }

    /// Nodes in the value (what copying it costs).
    fn weight(&self) -> u64 {
        match self {
            Value::Tuple(i) | Value::List(i) => 1 + i.items.iter().map(Value::weight).sum::<u64>(),
            Value::Dict(i, _) => {
                1 + i
                    .items
                    .iter()
                    .map(|(k, v)| k.weight() + v.weight())
                    .sum::<u64>()
            }
            Value::Str(s) => 1 + s.len() as u64 / 64,
            Value::Bytes(b) => 1 + b.len() as u64 / 64,
            _ => 1,
        }
    }

    fn container_id(&self) -> Option<u64> {
        match self {
            Value::List(i) => Some(i.id),
            Value::Dict(i, _) => Some(i.id),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_, DictKind::Plain) => "a dict",
            Value::Dict(_, DictKind::Ordered) => "an OrderedDict",
            Value::Global(_) => "a class or function",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The restricted unpickler
// ---------------------------------------------------------------------------------------------

/// Bytes of one or more pickles, read from `reader` no further than `end` (the file's or the
/// record's length).
struct Source<R> {
    reader: R,
    pos: u64,
    end: u64,
    /// Where the opcode being run starts (what errors report).
    op_at: u64,
}

/// What a malformed pickle error says before it is given the file's name.
enum Fault {
    Refused(String),
    Malformed(String),
    Fatal(PthError),
}

type Step<T> = Result<T, Fault>;

fn malformed<T>(detail: impl Into<String>) -> Step<T> {
    Err(Fault::Malformed(detail.into()))
}

impl<R: BufRead> Source<R> {
    fn left(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }

    fn byte(&mut self) -> Step<u8> {
        let mut b = [0u8; 1];
        self.fill(&mut b)?;
        Ok(b[0])
    }

    fn fill(&mut self, buf: &mut [u8]) -> Step<()> {
        if (buf.len() as u64) > self.left() {
            return malformed(format!(
                "the file ends inside the pickle ({} more bytes needed, {} left)",
                buf.len(),
                self.left()
            ));
        }
        self.reader.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Fault::Malformed("the file ends inside the pickle".into())
            } else {
                Fault::Fatal(PthError::Io {
                    path: PathBuf::new(),
                    source: e,
                })
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    /// `n` bytes, refused before allocating when the file does not have them.
    fn bytes(&mut self, n: u64) -> Step<Vec<u8>> {
        if n > self.left() {
            return malformed(format!(
                "a string of {n} bytes, but only {} bytes are left",
                self.left()
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.fill(&mut v)?;
        Ok(v)
    }

    /// A `GLOBAL` argument: bytes up to a newline.
    fn line(&mut self) -> Step<String> {
        let mut v = Vec::new();
        loop {
            let b = self.byte()?;
            if b == b'\n' {
                break;
            }
            if v.len() as u64 >= MAX_GLOBAL_LEN {
                return malformed("a GLOBAL name longer than 256 bytes");
            }
            v.push(b);
        }
        String::from_utf8(v).or_else(|_| malformed("a GLOBAL name that is not UTF-8"))
    }
}

fn utf8(v: Vec<u8>) -> Step<Value> {
    String::from_utf8(v)
        .map(Value::Str)
        .or_else(|_| malformed("a string that is not valid UTF-8"))
}

/// Storages the persistent ids of one file declare, by key.
#[derive(Default)]
struct Storages {
    by_key: HashMap<String, StorageRef>,
}

struct Unpickler<'s, R> {
    src: &'s mut Source<R>,
    storages: &'s mut Storages,
    max_bytes: u64,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Containers modified after being memoized: fetching one from the memo is refused,
    /// because this reader copies memo values where Python would share them.
    mutated: HashSet<u64>,
    /// Containers fetched from the memo: modifying one is refused for the same reason.
    fetched: HashSet<u64>,
    memoized: HashSet<u64>,
    copied: u64,
    next_id: u64,
}

impl<'s, R: BufRead> Unpickler<'s, R> {
    fn new(src: &'s mut Source<R>, storages: &'s mut Storages, max_bytes: u64) -> Self {
        Self {
            src,
            storages,
            max_bytes,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            mutated: HashSet::new(),
            fetched: HashSet::new(),
            memoized: HashSet::new(),
            copied: 0,
            next_id: 0,
        }
    }

    fn items<T>(&mut self, items: Vec<T>, depth: u32) -> Step<Items<T>> {
        if depth > MAX_DEPTH {
            return malformed(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        self.next_id += 1;
        Ok(Items {
            id: self.next_id,
            depth,
            items,
        })
    }

    fn seq(&mut self, items: Vec<Value>) -> Step<Items<Value>> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        self.items(items, depth)
    }

    fn pop(&mut self) -> Step<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return malformed("an opcode needs a value but the stack is empty");
        }
        Ok(self.stack.pop().expect("length checked above"))
    }

    fn top(&mut self) -> Step<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return malformed("an opcode needs a value but the stack is empty");
        }
        Ok(self.stack.last_mut().expect("length checked above"))
    }

    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let Some(mark) = self.marks.pop() else {
            return malformed("an opcode needs a MARK but there is none");
        };
        Ok(self.stack.split_off(mark))
    }

    fn int(&mut self, v: i128) {
        self.stack.push(Value::Int(v));
    }

    fn charge(&mut self, v: &Value) -> Step<()> {
        self.copied += v.weight();
        if self.copied > MAX_MEMO_NODES {
            return malformed("too many values copied through the memo");
        }
        Ok(())
    }

    fn put(&mut self, index: u32) -> Step<()> {
        let v = self.top()?.clone();
        self.charge(&v)?;
        if let Some(id) = v.container_id() {
            self.memoized.insert(id);
            self.mutated.remove(&id);
        }
        self.memo.insert(index, v);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Step<()> {
        let Some(v) = self.memo.get(&index) else {
            return malformed(format!("memo entry {index} is used before it is set"));
        };
        let v = v.clone();
        self.charge(&v)?;
        if let Some(id) = v.container_id() {
            if self.mutated.contains(&id) {
                return Err(Fault::Refused(
                    "a second reference to a list or dict modified after it was memoized".into(),
                ));
            }
            self.fetched.insert(id);
        }
        self.stack.push(v);
        Ok(())
    }

    /// Notes that the container `id` is being modified.
    fn modify(&mut self, id: u64) -> Step<()> {
        if self.fetched.contains(&id) {
            return Err(Fault::Refused(
                "modifying a list or dict that is referenced twice".into(),
            ));
        }
        if self.memoized.contains(&id) {
            self.mutated.insert(id);
        }
        Ok(())
    }

    fn append(&mut self, values: Vec<Value>) -> Step<()> {
        let depth = 1 + values.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return malformed(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        let id = match self.top()? {
            Value::List(i) => i.id,
            other => {
                return Err(Fault::Refused(format!(
                    "APPEND to {} (only lists are accepted)",
                    other.kind()
                )));
            }
        };
        self.modify(id)?;
        if let Value::List(i) = self.top()? {
            i.depth = i.depth.max(depth);
            i.items.extend(values);
        }
        Ok(())
    }

    fn set_items(&mut self, values: Vec<Value>) -> Step<()> {
        if !values.len().is_multiple_of(2) {
            return malformed("SETITEMS with an odd number of values");
        }
        let depth = 1 + values.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return malformed(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        let id = match self.top()? {
            Value::Dict(i, _) => i.id,
            other => {
                return Err(Fault::Refused(format!(
                    "SETITEM on {} (only dicts are accepted)",
                    other.kind()
                )));
            }
        };
        self.modify(id)?;
        if let Value::Dict(i, _) = self.top()? {
            i.depth = i.depth.max(depth);
            let mut it = values.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                i.items.push((k, v));
            }
        }
        Ok(())
    }

    fn global(&self, module: &str, name: &str) -> Step<Global> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", "UntypedStorage") | ("torch.storage", "UntypedStorage") => {
                Global::StorageType(Dtype::U8)
            }
            ("torch", class) => match Dtype::from_storage_class(class) {
                Some(d) => Global::StorageType(d),
                None => return Err(Fault::Refused(format!("global '{module}.{name}'"))),
            },
            _ => return Err(Fault::Refused(format!("global '{module}.{name}'"))),
        };
        Ok(g)
    }

    /// Runs the pickle to its `STOP` and returns its value.
    fn run(mut self) -> Step<Value> {
        loop {
            self.src.op_at = self.src.pos;
            let op = self.src.byte()?;
            match op {
                // PROTO: torch.save uses 2; later protocols add only opcodes handled here.
                0x80 => {
                    let p = self.src.byte()?;
                    if p > 5 {
                        return malformed(format!("pickle protocol {p} (at most 5 exists)"));
                    }
                }
                // FRAME (protocol 4): a length hint only.
                0x95 => {
                    self.src.array::<8>()?;
                }
                b'.' => {
                    let v = self.pop()?;
                    if !self.marks.is_empty() || !self.stack.is_empty() {
                        return malformed("STOP with values left on the stack");
                    }
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool),
                0x89 => self.stack.push(Value::Bool),
                b'J' => {
                    let v = i32::from_le_bytes(self.src.array()?);
                    self.int(v as i128);
                }
                b'K' => {
                    let v = self.src.byte()?;
                    self.int(v as i128);
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.src.array()?);
                    self.int(v as i128);
                }
                0x8a => {
                    let n = self.src.byte()? as u64;
                    self.long(n)?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.src.array()?);
                    if n < 0 {
                        return malformed("LONG4 with a negative length");
                    }
                    self.long(n as u64)?;
                }
                b'G' => {
                    // A float's value is never needed (sys_info and metadata only).
                    self.src.array::<8>()?;
                    self.stack.push(Value::Float);
                }
                // SHORT_BINSTRING / BINSTRING: Python 2 `str`, decoded as UTF-8 like
                // torch.load's default `encoding`.
                b'U' => {
                    let n = self.src.byte()? as u64;
                    let v = self.src.bytes(n)?;
                    self.stack.push(utf8(v)?);
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.src.array()?);
                    if n < 0 {
                        return malformed("BINSTRING with a negative length");
                    }
                    let v = self.src.bytes(n as u64)?;
                    self.stack.push(utf8(v)?);
                }
                0x8c => {
                    let n = self.src.byte()? as u64;
                    let v = self.src.bytes(n)?;
                    self.stack.push(utf8(v)?);
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.src.array()?) as u64;
                    let v = self.src.bytes(n)?;
                    self.stack.push(utf8(v)?);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.src.array()?);
                    let v = self.src.bytes(n)?;
                    self.stack.push(utf8(v)?);
                }
                b'C' => {
                    let n = self.src.byte()? as u64;
                    let v = self.src.bytes(n)?;
                    self.stack.push(Value::Bytes(v));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.src.array()?) as u64;
                    let v = self.src.bytes(n)?;
                    self.stack.push(Value::Bytes(v));
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.src.array()?);
                    let v = self.src.bytes(n)?;
                    self.stack.push(Value::Bytes(v));
                }
                b')' => {
                    let t = self.seq(Vec::new())?;
                    self.stack.push(Value::Tuple(t));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let t = self.seq(items)?;
                    self.stack.push(Value::Tuple(t));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let t = self.seq(items)?;
                    self.stack.push(Value::Tuple(t));
                }
                b']' => {
                    let l = self.seq(Vec::new())?;
                    self.stack.push(Value::List(l));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let l = self.seq(items)?;
                    self.stack.push(Value::List(l));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => {
                    let d = self.items(Vec::new(), 1)?;
                    self.stack.push(Value::Dict(d, DictKind::Plain));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = self.items(Vec::new(), 1)?;
                    self.stack.push(Value::Dict(d, DictKind::Plain));
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'q' => {
                    let i = self.src.byte()?;
                    self.put(i as u32)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.src.array()?);
                    self.put(i)?;
                }
                0x94 => {
                    let i =
                        u32::try_from(self.memo.len()).or_else(|_| malformed("memo too large"))?;
                    self.put(i)?;
                }
                b'h' => {
                    let i = self.src.byte()?;
                    self.get(i as u32)?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.src.array()?);
                    self.get(i)?;
                }
                b'c' => {
                    let module = self.src.line()?;
                    let name = self.src.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return malformed("STACK_GLOBAL needs two strings");
                    };
                    let g = self.global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    self.build(state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                other => return Err(Fault::Refused(format!("opcode {}", opcode_name(other)))),
            }
        }
    }

    /// LONG1/LONG4: a little-endian two's-complement integer of `n` bytes.
    fn long(&mut self, n: u64) -> Step<()> {
        if n > 16 {
            return malformed(format!("an integer of {n} bytes (at most 16 are accepted)"));
        }
        let b = self.src.bytes(n)?;
        let mut v: i128 = 0;
        for (i, byte) in b.iter().enumerate() {
            v |= (*byte as i128) << (8 * i);
        }
        if n > 0 && n < 16 && b[n as usize - 1] & 0x80 != 0 {
            v -= 1i128 << (8 * n);
        }
        self.int(v);
        Ok(())
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Step<Value> {
        let Value::Global(g) = callable else {
            return Err(Fault::Refused(format!(
                "REDUCE calling {} (only the tensor rebuild functions and OrderedDict may be called)",
                callable.kind()
            )));
        };
        let Value::Tuple(args) = args else {
            return malformed(format!("REDUCE with {} as arguments", args.kind()));
        };
        let mut args = args.items;
        match g {
            Global::OrderedDict => {
                // Python 3 pickles `OrderedDict()` then SETITEMS; Python 2 passed the items as
                // one list of `[key, value]` pairs.
                let mut pairs = Vec::new();
                match args.len() {
                    0 => {}
                    1 => {
                        let (Value::List(l) | Value::Tuple(l)) = args.remove(0) else {
                            return malformed("OrderedDict called with something not a list");
                        };
                        for p in l.items {
                            let (Value::List(p) | Value::Tuple(p)) = p else {
                                return malformed("OrderedDict item that is not a pair");
                            };
                            let [k, v]: [Value; 2] = p
                                .items
                                .try_into()
                                .or_else(|_| malformed("OrderedDict item that is not a pair"))?;
                            pairs.push(k);
                            pairs.push(v);
                        }
                    }
                    _ => return malformed("OrderedDict called with more than one argument"),
                }
                let d = self.items(Vec::new(), 1)?;
                self.stack.push(Value::Dict(d, DictKind::Ordered));
                self.set_items(pairs)?;
                self.pop()
            }
            Global::RebuildTensorV2 => self.rebuild_tensor(args).map(Value::Tensor),
            Global::RebuildParameter => {
                // _rebuild_parameter(data, requires_grad, backward_hooks)
                if args.len() != 3 {
                    return malformed("_rebuild_parameter needs 3 arguments");
                }
                check_hooks(&args[2])?;
                match args.swap_remove(0) {
                    t @ Value::Tensor(_) => Ok(t),
                    other => malformed(format!("_rebuild_parameter of {}", other.kind())),
                }
            }
            Global::StorageType(_) => Err(Fault::Refused(
                "REDUCE calling a storage class (storages come only from persistent ids)".into(),
            )),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    /// backward_hooks[, metadata])`, checked against the storage's size.
    fn rebuild_tensor(&mut self, args: Vec<Value>) -> Step<Box<TensorRef>> {
        if !(6..=7).contains(&args.len()) {
            return malformed(format!(
                "_rebuild_tensor_v2 with {} arguments (6 or 7 expected)",
                args.len()
            ));
        }
        let mut it = args.into_iter();
        let storage = match it.next() {
            Some(Value::Storage(s)) => s,
            Some(other) => return malformed(format!("a tensor whose storage is {}", other.kind())),
            None => unreachable!("length checked above"),
        };
        let offset = match it.next() {
            Some(Value::Int(v)) => u64_of(v, "storage offset")?,
            _ => return malformed("a tensor whose storage offset is not an int"),
        };
        let shape = ints(it.next(), "size")?;
        let stride = ints(it.next(), "stride")?;
        if !matches!(it.next(), Some(Value::Bool)) {
            return malformed("a tensor whose requires_grad is not a bool");
        }
        check_hooks(&it.next().unwrap_or(Value::None))?;
        // Tensor metadata (conjugate/negative bits) is only written when set; an empty dict
        // or None means nothing.
        match it.next() {
            None | Some(Value::None) => {}
            Some(Value::Dict(d, _)) if d.items.is_empty() => {}
            Some(_) => {
                return Err(Fault::Refused(
                    "tensor metadata (conjugate or negative views are not plain tensors)".into(),
                ));
            }
        }
        if shape.len() != stride.len() {
            return malformed(format!(
                "a tensor with {} sizes but {} strides",
                shape.len(),
                stride.len()
            ));
        }
        if shape.len() > MAX_NDIM {
            return malformed(format!(
                "a tensor of {} dimensions (at most {MAX_NDIM})",
                shape.len()
            ));
        }
        let esize = storage.dtype.size() as u64;
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n.checked_mul(esize).is_some_and(|b| b <= self.max_bytes))
            .ok_or_else(|| {
                Fault::Malformed(format!(
                    "a tensor of shape {shape:?} is larger than the {}-byte limit",
                    self.max_bytes
                ))
            })?;
        if numel > 0 {
            // The last element a view reaches must lie inside its storage.
            let last = shape
                .iter()
                .zip(&stride)
                .try_fold(offset, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?));
            match last {
                Some(l) if l < storage.numel => {}
                _ => {
                    return malformed(format!(
                        "a tensor (offset {offset}, shape {shape:?}, stride {stride:?}) reaches past the end of storage '{}' of {} elements",
                        storage.key, storage.numel
                    ));
                }
            }
        }
        Ok(Box::new(TensorRef {
            storage,
            offset,
            shape,
            stride,
        }))
    }

    fn build(&mut self, state: Value) -> Step<()> {
        // `state_dict()` returns an OrderedDict with a `_metadata` attribute (module versions),
        // which pickle restores with BUILD; it carries no tensors and is dropped.
        let top = self.top()?;
        match (&*top, &state) {
            (Value::Dict(_, DictKind::Ordered), Value::Dict(_, DictKind::Plain)) => Ok(()),
            _ => Err(Fault::Refused(format!(
                "BUILD on {} with {} (only an OrderedDict's attributes are accepted)",
                top.kind(),
                state.kind()
            ))),
        }
    }

    /// A persistent id: `('storage', StorageType, key, location, numel[, view_metadata])`.
    fn persistent(&mut self, pid: Value) -> Step<Value> {
        let Value::Tuple(t) = pid else {
            return malformed(format!("a persistent id that is {}", pid.kind()));
        };
        let items = t.items;
        match items.first() {
            Some(Value::Str(s)) if s == "storage" => {}
            Some(Value::Str(s)) if s == "module" => {
                return Err(Fault::Refused(
                    "a pickled nn.Module class (a whole model, not a state dict)".into(),
                ));
            }
            _ => return malformed("a persistent id that is not a storage"),
        }
        if !(5..=6).contains(&items.len()) {
            return malformed("a storage persistent id of the wrong length");
        }
        let dtype = match &items[1] {
            Value::Global(Global::StorageType(d)) => *d,
            other => return malformed(format!("a storage whose type is {}", other.kind())),
        };
        let key = match &items[2] {
            Value::Str(k) => k.clone(),
            _ => return malformed("a storage whose key is not a string"),
        };
        if !matches!(items[3], Value::Str(_)) {
            return malformed("a storage whose location is not a string");
        }
        let numel = match items[4] {
            Value::Int(n) => u64_of(n, "storage size")?,
            _ => return malformed("a storage whose size is not an int"),
        };
        if items.len() == 6 && !matches!(items[5], Value::None) {
            return Err(Fault::Refused(
                "a storage view (written by PyTorch before 1.0 only)".into(),
            ));
        }
        if numel
            .checked_mul(dtype.size() as u64)
            .is_none_or(|b| b > self.max_bytes)
        {
            return malformed(format!(
                "storage '{key}' declares {numel} elements of {dtype}, more than the {}-byte limit",
                self.max_bytes
            ));
        }
        let s = StorageRef { key, dtype, numel };
        match self.storages.by_key.get(&s.key) {
            Some(prev) if *prev != s => malformed(format!(
                "storage '{}' declared twice with different types or sizes",
                s.key
            )),
            _ => {
                self.storages.by_key.insert(s.key.clone(), s.clone());
                Ok(Value::Storage(s))
            }
        }
    }
}

fn check_hooks(v: &Value) -> Step<()> {
    match v {
        Value::None => Ok(()),
        Value::Dict(d, _) if d.items.is_empty() => Ok(()),
        _ => Err(Fault::Refused("tensor backward hooks".into())),
    }
}

fn u64_of(v: i128, what: &str) -> Step<u64> {
    u64::try_from(v).or_else(|_| malformed(format!("a negative or huge {what} ({v})")))
}

fn ints(v: Option<Value>, what: &str) -> Step<Vec<u64>> {
    match v {
        Some(Value::Tuple(t)) | Some(Value::List(t)) => t
            .items
            .into_iter()
            .map(|x| match x {
                Value::Int(i) => u64_of(i, what),
                other => malformed(format!("a tensor {what} containing {}", other.kind())),
            })
            .collect(),
        _ => malformed(format!("a tensor {what} that is not a tuple")),
    }
}

fn opcode_name(op: u8) -> String {
    let name = match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        b'P' => "PERSID",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'F' => "FLOAT",
        b'g' => "GET",
        b'p' => "PUT",
        b'2' => "DUP",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return format!("0x{op:02x} (not a pickle opcode a state dict uses)"),
    };
    format!("{name} (0x{op:02x})")
}

/// Runs one pickle from `src`, mapping its faults to errors naming the file, `part` and the
/// offset of the opcode that failed.
fn unpickle<R: BufRead>(
    ctx: &Ctx,
    part: &str,
    src: &mut Source<R>,
    storages: &mut Storages,
) -> Result<Value, PthError> {
    let result = Unpickler::new(src, storages, ctx.max_bytes).run();
    let offset = src.op_at;
    result.map_err(|f| match f {
        Fault::Refused(what) => PthError::Refused {
            path: ctx.path.to_owned(),
            part: part.to_owned(),
            offset,
            what,
        },
        Fault::Malformed(detail) => PthError::Pickle {
            path: ctx.path.to_owned(),
            part: part.to_owned(),
            offset,
            detail,
        },
        Fault::Fatal(PthError::Io { source, .. }) => ctx.io(source),
        Fault::Fatal(e) => e,
    })
}

// ---------------------------------------------------------------------------------------------
// The two file layouts
// ---------------------------------------------------------------------------------------------

fn read_zip<R: Read + Seek>(ctx: &Ctx, reader: R) -> Result<StateDict, PthError> {
    let zerr = |e: zip::result::ZipError| ctx.invalid(format!("broken zip archive: {e}"));
    let mut zip = zip::ZipArchive::new(reader).map_err(zerr)?;
    // PyTorch's reader takes the archive's folder from its first entry; every record lies in it.
    let first = zip
        .file_names()
        .next()
        .ok_or_else(|| ctx.invalid("an empty zip archive"))?
        .map_err(zerr)?;
    let Some((prefix, _)) = first.split_once('/') else {
        return Err(ctx.invalid(format!(
            "zip entry '{first}' is not inside a folder, as torch.save writes every record"
        )));
    };
    let prefix = prefix.to_owned();
    let pkl_name = format!("{prefix}/data.pkl");
    let pkl = read_record(ctx, &mut zip, &pkl_name, MAX_PICKLE_BYTES)?
        .ok_or_else(|| ctx.invalid(format!("no {pkl_name} in the archive")))?;
    if pkl.len() as u64 > MAX_PICKLE_BYTES {
        return Err(ctx.invalid(format!(
            "{pkl_name} is larger than {MAX_PICKLE_BYTES} bytes, far more than a state dict's"
        )));
    }
    let big_endian = match read_record(ctx, &mut zip, &format!("{prefix}/byteorder"), 16)? {
        None => false,
        Some(b) if b == b"little" => false,
        Some(b) if b == b"big" => true,
        Some(b) => {
            return Err(ctx.invalid(format!(
                "{prefix}/byteorder says '{}', neither 'little' nor 'big'",
                String::from_utf8_lossy(&b)
            )));
        }
    };
    let mut storages = Storages::default();
    let mut src = Source {
        reader: &pkl[..],
        pos: 0,
        end: pkl.len() as u64,
        op_at: 0,
    };
    let value = unpickle(ctx, &pkl_name, &mut src, &mut storages)?;
    if src.pos != src.end {
        return Err(ctx.invalid(format!(
            "{pkl_name} has {} bytes after the pickle's STOP",
            src.end - src.pos
        )));
    }
    let top = state_dict_refs(ctx, value, ctx.max_bytes)?;
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for (_, t) in &top {
        let s = &t.storage;
        if data.contains_key(&s.key) {
            continue;
        }
        let name = format!("{prefix}/data/{}", s.key);
        let nbytes = s.numel * s.dtype.size() as u64;
        let bytes = read_record(ctx, &mut zip, &name, nbytes)?.ok_or_else(|| {
            ctx.invalid(format!(
                "storage '{}' is missing from the archive (no record {name})",
                s.key
            ))
        })?;
        if bytes.len() as u64 != nbytes {
            return Err(ctx.invalid(format!(
                "record {name} has {} bytes but storage '{}' declares {} elements of {} ({nbytes} bytes)",
                bytes.len(),
                s.key,
                s.numel,
                s.dtype
            )));
        }
        data.insert(s.key.clone(), bytes);
    }
    materialize(top, data, big_endian)
}

/// A record's bytes, `None` if absent. torch.save stores records uncompressed, so a record
/// may not be compressed (which could expand past the file's size) and is read only up to
/// `limit + 1` bytes (the caller compares the length).
fn read_record<R: Read + Seek>(
    ctx: &Ctx,
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, PthError> {
    let Some(index) = zip.index_for_name(name) else {
        return Ok(None);
    };
    let entry = zip
        .by_index(index)
        .map_err(|e| ctx.invalid(format!("zip record {name}: {e}")))?;
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(ctx.invalid(format!(
            "zip record {name} is compressed ({}), but torch.save stores records uncompressed",
            entry.compression()
        )));
    }
    let cap = limit.saturating_add(1);
    let mut out = Vec::with_capacity(entry.size().min(cap).min(ctx.file_len) as usize);
    entry
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| ctx.invalid(format!("zip record {name}: {e}")))?;
    Ok(Some(out))
}

fn read_legacy<R: Read + Seek>(ctx: &Ctx, reader: R) -> Result<StateDict, PthError> {
    let mut src = Source {
        reader: BufReader::with_capacity(1 << 16, reader),
        pos: 0,
        end: ctx.file_len,
        op_at: 0,
    };
    let mut none = Storages::default();
    let magic = unpickle(ctx, "the magic number", &mut src, &mut none)?;
    if !matches!(magic, Value::Int(LEGACY_MAGIC)) {
        return Err(ctx.invalid("invalid magic number: not a PyTorch legacy-format file"));
    }
    let version = unpickle(ctx, "the protocol version", &mut src, &mut none)?;
    if !matches!(version, Value::Int(LEGACY_PROTOCOL_VERSION)) {
        return Err(ctx.invalid(format!(
            "legacy format protocol version {version:?}, not {LEGACY_PROTOCOL_VERSION}"
        )));
    }
    // sys_info (byte order and C type sizes): the storages that follow are little-endian
    // whatever the writer's byte order (torch writes them through a little-endian encoder).
    let sys_info = unpickle(ctx, "sys_info", &mut src, &mut none)?;
    if !matches!(sys_info, Value::Dict(..)) {
        return Err(ctx.invalid("legacy format: sys_info is not a dict"));
    }
    let mut storages = Storages::default();
    let value = unpickle(ctx, "the main pickle", &mut src, &mut storages)?;
    let keys = unpickle(ctx, "the storage key list", &mut src, &mut none)?;
    let Value::List(keys) = keys else {
        return Err(ctx.invalid("legacy format: the storage key list is not a list"));
    };
    let top = state_dict_refs(ctx, value, ctx.max_bytes)?;
    let used: HashSet<&str> = top.iter().map(|(_, t)| t.storage.key.as_str()).collect();
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for k in keys.items {
        let Value::Str(key) = k else {
            return Err(ctx.invalid("legacy format: a storage key that is not a string"));
        };
        let s = storages.by_key.get(&key).ok_or_else(|| {
            ctx.invalid(format!(
                "legacy format: storage '{key}' is listed but no tensor declares it"
            ))
        })?;
        let at = src.pos;
        let mut count = [0u8; 8];
        src.fill(&mut count).map_err(|_| {
            ctx.invalid(format!(
                "truncated: the file ends at byte {at} where storage '{key}' should begin"
            ))
        })?;
        let count = u64::from_le_bytes(count);
        if count != s.numel {
            return Err(ctx.invalid(format!(
                "storage '{key}' at byte {at} holds {count} elements but its tensors declare {}",
                s.numel
            )));
        }
        let nbytes = s.numel * s.dtype.size() as u64;
        if nbytes > src.left() {
            return Err(ctx.invalid(format!(
                "truncated: storage '{key}' needs {nbytes} bytes after byte {}, but the file has {} left",
                src.pos,
                src.left()
            )));
        }
        if used.contains(key.as_str()) && !data.contains_key(&key) {
            let bytes = src
                .bytes(nbytes)
                .map_err(|_| ctx.invalid(format!("truncated inside storage '{key}'")))?;
            data.insert(key, bytes);
        } else {
            let n = std::io::copy(&mut (&mut src.reader).take(nbytes), &mut std::io::sink())
                .map_err(|e| ctx.io(e))?;
            if n != nbytes {
                return Err(ctx.invalid(format!("truncated inside storage '{key}'")));
            }
            src.pos += nbytes;
        }
    }
    for (_, t) in &top {
        if !data.contains_key(&t.storage.key) {
            return Err(ctx.invalid(format!(
                "legacy format: storage '{}' is not in the file's storage list",
                t.storage.key
            )));
        }
    }
    materialize(top, data, false)
}

/// The top-level dict's `(name, tensor)` entries, with Python's dict semantics for repeated
/// keys (the last value wins, in the first one's place), and the tensors' total size checked.
fn state_dict_refs(
    ctx: &Ctx,
    value: Value,
    max_bytes: u64,
) -> Result<Vec<(String, TensorRef)>, PthError> {
    let Value::Dict(items, _) = value else {
        return Err(ctx.invalid(format!(
            "the file holds {}, not a state dict (a dict of tensors)",
            value.kind()
        )));
    };
    let mut out: Vec<(String, TensorRef)> = Vec::with_capacity(items.items.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for (k, v) in items.items {
        let Value::Str(name) = k else {
            return Err(ctx.invalid(format!(
                "the state dict has a key that is {}, not a string",
                k.kind()
            )));
        };
        let Value::Tensor(t) = v else {
            return Err(ctx.invalid(format!(
                "state dict entry '{name}' is {}, not a tensor",
                v.kind()
            )));
        };
        match index.get(&name) {
            Some(&i) => out[i].1 = *t,
            None => {
                index.insert(name.clone(), out.len());
                out.push((name, *t));
            }
        }
    }
    let mut total: u64 = 0;
    for (name, t) in &out {
        let bytes = t.shape.iter().product::<u64>() * t.storage.dtype.size() as u64;
        total = total.saturating_add(bytes);
        if total > max_bytes {
            return Err(ctx.invalid(format!(
                "the tensors up to '{name}' exceed the {max_bytes}-byte limit"
            )));
        }
    }
    Ok(out)
}

/// Copies each tensor's elements out of its storage into a contiguous buffer (moving the
/// storage itself when one tensor is all of it).
fn materialize(
    top: Vec<(String, TensorRef)>,
    mut data: HashMap<String, Vec<u8>>,
    big_endian: bool,
) -> Result<StateDict, PthError> {
    let mut uses: HashMap<String, usize> = HashMap::new();
    for (_, t) in &top {
        *uses.entry(t.storage.key.clone()).or_default() += 1;
    }
    let mut entries = Vec::with_capacity(top.len());
    for (name, t) in top {
        let esize = t.storage.dtype.size();
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let numel: usize = shape.iter().product();
        let left = uses
            .get_mut(&t.storage.key)
            .expect("every tensor's storage was counted");
        *left -= 1;
        let contiguous = is_contiguous(&t.shape, &t.stride);
        let whole = contiguous && t.offset == 0 && numel as u64 == t.storage.numel;
        let mut bytes = if numel == 0 {
            // An empty view's offset is never checked against its storage (as in PyTorch).
            Vec::new()
        } else if whole && *left == 0 {
            data.remove(&t.storage.key)
                .expect("every used storage was read")
        } else {
            let storage = data
                .get(&t.storage.key)
                .expect("every used storage was read");
            if contiguous {
                let start = t.offset as usize * esize;
                storage[start..start + numel * esize].to_vec()
            } else {
                gather(storage, esize, t.offset, &t.shape, &t.stride, numel)
            }
        };
        if big_endian && esize > 1 {
            for e in bytes.chunks_exact_mut(esize) {
                e.reverse();
            }
        }
        let tensor = Tensor {
            dtype: t.storage.dtype,
            shape,
            data: bytes,
        };
        entries.push((name, tensor));
    }
    Ok(StateDict { entries })
}

fn is_contiguous(shape: &[u64], stride: &[u64]) -> bool {
    let mut expected = 1u64;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

/// A strided view's elements in row-major order (bounds were checked when the tensor was
/// rebuilt: every index lies inside the storage).
fn gather(
    storage: &[u8],
    esize: usize,
    offset: u64,
    shape: &[u64],
    stride: &[u64],
    numel: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(numel * esize);
    if numel == 0 {
        return out;
    }
    let nd = shape.len();
    let mut idx = vec![0u64; nd];
    for _ in 0..numel {
        let at = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<u64>();
        let at = at as usize * esize;
        out.extend_from_slice(&storage[at..at + esize]);
        for d in (0..nd).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}
