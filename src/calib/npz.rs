//! `.npz` archives (what `np.savez` / `np.savez_compressed` write): a zip of `.npy` members.
//!
//! Reading opens only the zip's central directory; each member is located and inflated on
//! demand, and reading a member's header inflates only its first bytes, so a sample's small
//! arrays never cost reading its large ones. Member data is read into a buffer sized from the
//! `.npy` header after checking it against the zip directory and a byte limit, and never more
//! than that is inflated: a zip bomb or a lying directory cannot exhaust memory.
//! Writing goes to a temporary file in the destination folder, synced, then renamed.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use zip::ZipArchive;
use zip::result::ZipError;
use zip::write::SimpleFileOptions;

use super::npy::{self, NpyArray, NpyError, NpyHeader};

/// Largest array a member may hold unless the caller says otherwise (4 GiB).
pub const DEFAULT_MAX_ARRAY_BYTES: u64 = 4 << 30;

/// An error reading or writing one archive, naming the file (and member).
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid .npz (zip) archive: {source}")]
    Zip { path: PathBuf, source: ZipError },
    #[error("{path}: member '{member}': {source}")]
    Member {
        path: PathBuf,
        member: String,
        source: NpyError,
    },
    #[error("{path}: member '{member}': {reason}")]
    Corrupt {
        path: PathBuf,
        member: String,
        reason: String,
    },
    #[error("{path}: no array named '{name}' (has: {available})")]
    Missing {
        path: PathBuf,
        name: String,
        available: String,
    },
}

/// A member's name, dtype, shape and sizes, from its `.npy` header and the zip directory.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// Array name (the member's file name without `.npy`).
    pub name: String,
    pub header: NpyHeader,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

/// A positioned file reader for archives read in small scattered pieces: it keeps the last
/// 4 KiB block read and serves seeks inside it without system calls, reads with `pread` (no
/// `lseek`), and reads large requests straight into the caller's buffer. A member's local zip
/// header and its `.npy` header usually share one block: one system call per member.
pub struct BlockReader {
    file: File,
    len: u64,
    pos: u64,
    block: Vec<u8>,
    block_start: u64,
}

impl BlockReader {
    const BLOCK: usize = 4096;

    pub fn new(file: File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            pos: 0,
            block: Vec::with_capacity(Self::BLOCK),
            block_start: 0,
        })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
        }
        #[cfg(not(unix))]
        {
            let mut f = &self.file;
            f.seek(SeekFrom::Start(offset))?;
            f.read(buf)
        }
    }
}

impl Read for BlockReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let in_block =
            self.pos >= self.block_start && self.pos < self.block_start + self.block.len() as u64;
        if !in_block {
            if out.len() >= Self::BLOCK {
                let n = self.read_at(out, self.pos)?;
                self.pos += n as u64;
                return Ok(n);
            }
            let mut block = std::mem::take(&mut self.block);
            block.resize(Self::BLOCK, 0);
            let read = self.read_at(&mut block, self.pos);
            let n = *read.as_ref().unwrap_or(&0);
            self.block = block;
            self.block.truncate(n);
            self.block_start = self.pos;
            read?;
            if n == 0 {
                return Ok(0);
            }
        }
        let at = (self.pos - self.block_start) as usize;
        let n = out.len().min(self.block.len() - at);
        out[..n].copy_from_slice(&self.block[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlockReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

/// A read-only view of an `.npz` file.
pub struct NpzReader {
    path: PathBuf,
    archive: ZipArchive<BlockReader>,
    /// Member file names, in archive order.
    members: Vec<String>,
    file_len: u64,
    max_array_bytes: u64,
}

impl NpzReader {
    /// Opens the archive and reads its central directory (nothing else).
    pub fn open(path: &Path) -> Result<Self, NpzError> {
        let file = File::open(path).map_err(|source| NpzError::Io {
            path: path.to_owned(),
            source,
        })?;
        let zip_err = |source| NpzError::Zip {
            path: path.to_owned(),
            source,
        };
        let reader = BlockReader::new(file).map_err(|source| NpzError::Io {
            path: path.to_owned(),
            source,
        })?;
        let file_len = reader.len;
        let archive = ZipArchive::new(reader).map_err(zip_err)?;
        let members = archive
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(zip_err)?;
        Ok(Self {
            path: path.to_owned(),
            archive,
            members,
            file_len,
            max_array_bytes: DEFAULT_MAX_ARRAY_BYTES,
        })
    }

    /// Sets the largest array (in bytes) [`read`](Self::read) accepts.
    pub fn with_max_array_bytes(mut self, limit: u64) -> Self {
        self.max_array_bytes = limit;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the archive file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Array names in archive order.
    pub fn names(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_owned())
            .collect()
    }

    fn member_name(&self, name: &str) -> Option<String> {
        let with_ext = format!("{name}.npy");
        self.members
            .iter()
            .find(|n| **n == with_ext || *n == name)
            .cloned()
    }

    fn missing(&self, name: &str) -> NpzError {
        NpzError::Missing {
            path: self.path.clone(),
            name: name.to_owned(),
            available: self.names().join(", "),
        }
    }

    fn member_err(&self, member: &str, source: NpyError) -> NpzError {
        NpzError::Member {
            path: self.path.clone(),
            member: member.to_owned(),
            source,
        }
    }

    /// Reads one member's `.npy` header (inflating only its first bytes).
    pub fn info(&mut self, name: &str) -> Result<MemberInfo, NpzError> {
        let member = self.member_name(name).ok_or_else(|| self.missing(name))?;
        let mut file = match self.archive.by_name(&member) {
            Ok(f) => f,
            Err(e) => return Err(member_zip_err(&self.path, &member, e)),
        };
        let (compressed_size, uncompressed_size) = (file.compressed_size(), file.size());
        let header = npy::read_header(&mut file);
        drop(file);
        let header = header.map_err(|e| self.member_err(&member, e))?;
        if let Some(reason) = size_problem(&header, uncompressed_size) {
            return Err(NpzError::Corrupt {
                path: self.path.clone(),
                member,
                reason,
            });
        }
        Ok(MemberInfo {
            name: name.to_owned(),
            header,
            compressed_size,
            uncompressed_size,
        })
    }

    /// Reads one array whole.
    pub fn read(&mut self, name: &str) -> Result<NpyArray, NpzError> {
        self.read_limited(name, self.max_array_bytes)
    }

    /// Reads one array whole if it holds at most `limit` bytes (for arrays that must be small).
    pub fn read_limited(&mut self, name: &str, limit: u64) -> Result<NpyArray, NpzError> {
        let member = self.member_name(name).ok_or_else(|| self.missing(name))?;
        let limit = limit.min(self.max_array_bytes);
        let mut file = match self.archive.by_name(&member) {
            Ok(f) => f,
            Err(e) => return Err(member_zip_err(&self.path, &member, e)),
        };
        let uncompressed = file.size();
        let result = npy::read_header(&mut file).and_then(|header| {
            if let Some(reason) = size_problem(&header, uncompressed) {
                return Err(NpyError::Header(reason));
            }
            npy::read_data(&mut file, &header, limit)
        });
        drop(file);
        result.map_err(|e| match e {
            // The zip crate reports CRC mismatches and inflate failures as I/O errors.
            NpyError::Io(io) => NpzError::Corrupt {
                path: self.path.clone(),
                member: member.clone(),
                reason: io.to_string(),
            },
            other => self.member_err(&member, other),
        })
    }
}

fn member_zip_err(path: &Path, member: &str, source: ZipError) -> NpzError {
    match source {
        ZipError::Io(e) => NpzError::Member {
            path: path.to_owned(),
            member: member.to_owned(),
            source: NpyError::Io(e),
        },
        other => NpzError::Corrupt {
            path: path.to_owned(),
            member: member.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Why a member's size in the zip directory disagrees with its `.npy` header, if it does.
fn size_problem(header: &NpyHeader, uncompressed: u64) -> Option<String> {
    let expected = header
        .data_len()
        .and_then(|d| d.checked_add(header.header_len));
    (expected != Some(uncompressed)).then(|| {
        format!(
            "the zip directory says {uncompressed} bytes but the .npy header ({:?} {}) needs {} (truncated or corrupt)",
            header.shape,
            header.dtype,
            expected.map_or("more than 2^64".to_owned(), |e| e.to_string())
        )
    })
}

/// Writes an `.npz` atomically: members go to a temporary file beside `path`, which replaces
/// `path` only when [`finish`](Self::finish) succeeds. Dropped unfinished, it leaves nothing.
pub struct NpzWriter {
    path: PathBuf,
    zip: zip::ZipWriter<BufWriter<tempfile::NamedTempFile>>,
    options: SimpleFileOptions,
}

impl NpzWriter {
    /// `compressed`: deflate members like `np.savez_compressed`; otherwise store them like `np.savez`.
    pub fn create(path: &Path, compressed: bool) -> Result<Self, NpzError> {
        let io = |source| NpzError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = crate::fsutil::temp_file_beside(path).map_err(io)?;
        let method = if compressed {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .large_file(false);
        Ok(Self {
            path: path.to_owned(),
            zip: zip::ZipWriter::new(BufWriter::new(tmp)),
            options,
        })
    }

    /// Adds `array` as member `<name>.npy`.
    pub fn add(&mut self, name: &str, array: &NpyArray) -> Result<(), NpzError> {
        self.add_npy_bytes(name, &array.to_npy_bytes())
    }

    /// Adds a member from an already serialised `.npy` stream (to reuse bytes across files).
    pub fn add_npy_bytes(&mut self, name: &str, npy: &[u8]) -> Result<(), NpzError> {
        let options = self.options.large_file(npy.len() as u64 >= u32::MAX as u64);
        self.zip
            .start_file(format!("{name}.npy"), options)
            .map_err(|source| NpzError::Zip {
                path: self.path.clone(),
                source,
            })?;
        self.zip.write_all(npy).map_err(|source| NpzError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Completes the archive, syncs it to disk and moves it into place.
    pub fn finish(self) -> Result<(), NpzError> {
        let path = self.path;
        let io = |source| NpzError::Io {
            path: path.clone(),
            source,
        };
        let buf = self.zip.finish().map_err(|source| NpzError::Zip {
            path: path.clone(),
            source,
        })?;
        let mut tmp = buf.into_inner().map_err(|e| io(e.into_error()))?;
        tmp.flush().map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        crate::fsutil::persist(tmp, &path).map_err(io)?;
        Ok(())
    }
}

/// Writes `arrays` (name, array) to `path` in one go; see [`NpzWriter`].
pub fn write_npz(
    path: &Path,
    arrays: &[(&str, &NpyArray)],
    compressed: bool,
) -> Result<(), NpzError> {
    let mut w = NpzWriter::create(path, compressed)?;
    for (name, array) in arrays {
        w.add(name, array)?;
    }
    w.finish()
}
