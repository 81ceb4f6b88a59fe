//! File-system helpers shared by every module that writes user data: atomic replacement
//! (temporary file in the same folder, fsync, rename) and path containment checks.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Replaces `path` with `bytes` atomically: readers see the old file or the new one, never a
/// half-written one, and a failure (full disk, …) leaves the old file untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".sd3lab-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Why `relative` may not be used as a path inside `root`, if it may not.
///
/// Refused: absolute paths, `..` components, and paths that leave `root` through symbolic links
/// (checked on the canonical path when the target exists).
pub fn contained_path(root: &Path, relative: &str) -> Result<PathBuf, String> {
    let rel = Path::new(relative);
    if relative.is_empty() {
        return Err("empty path".into());
    }
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, Component::Prefix(_) | Component::RootDir))
    {
        return Err(format!(
            "'{relative}' is absolute; paths must be relative to the data folder"
        ));
    }
    if rel.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "'{relative}' contains '..' and could leave the data folder"
        ));
    }
    let joined = root.join(rel);
    if let (Ok(real), Ok(real_root)) = (joined.canonicalize(), root.canonicalize())
        && !real.starts_with(&real_root)
    {
        return Err(format!(
            "'{relative}' leaves the data folder through a symbolic link (to {})",
            real.display()
        ));
    }
    Ok(joined)
}
