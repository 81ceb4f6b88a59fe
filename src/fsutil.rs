//! File-system helpers shared by every module that writes user data: atomic replacement
//! (temporary file in the same folder, fsync, rename) and path containment checks.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Replaces `path` with `bytes` atomically: readers see the old file or the new one, never a
/// half-written one, and a failure (full disk, …) leaves the old file untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = temp_file_beside(path)?;
    tmp.write_all(bytes)?;
    tmp.flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A hidden temporary file in `path`'s folder (so that renaming it onto `path` is atomic), with
/// ordinary file permissions. It is deleted if dropped before `persist`.
pub fn temp_file_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".sd3lab-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    make_readable(tmp.as_file())?;
    Ok(tmp)
}

/// Gives a temporary file the permissions of an ordinary new file (`rw-r--r--` less the
/// umask's usual bits) instead of the private `rw-------` temporary files get.
pub fn make_readable(file: &std::fs::File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// A data folder that user-supplied relative paths must stay inside.
///
/// Refused: absolute paths, `..` components, and paths that leave the folder through symbolic
/// links (checked on the canonical path when the target exists).
#[derive(Debug, Clone)]
pub struct DataRoot {
    root: PathBuf,
    real_root: Option<PathBuf>,
}

impl DataRoot {
    /// Resolves the folder's canonical path once.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            real_root: root.canonicalize().ok(),
        }
    }

    /// `root/relative`, or why it may not be used.
    pub fn resolve(&self, relative: &str) -> Result<PathBuf, String> {
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
        let joined = self.root.join(rel);
        self.check_real(&joined).map_err(|to| {
            format!("'{relative}' leaves the data folder through a symbolic link (to {to})")
        })?;
        Ok(joined)
    }

    /// Fails with the real target when `path` (inside the folder) resolves outside it.
    pub fn check_real(&self, path: &Path) -> Result<(), String> {
        match (path.canonicalize(), &self.real_root) {
            (Ok(real), Some(root)) if !real.starts_with(root) => Err(real.display().to_string()),
            _ => Ok(()),
        }
    }
}
