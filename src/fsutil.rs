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
    pub fn resolve(&self, relative: &str) -> Result<PathBuf, PathError> {
        let rel = Path::new(relative);
        if relative.is_empty() {
            return Err(PathError::Empty);
        }
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, Component::Prefix(_) | Component::RootDir))
        {
            return Err(PathError::Absolute(relative.to_owned()));
        }
        if rel.components().any(|c| c == Component::ParentDir) {
            return Err(PathError::ParentDir(relative.to_owned()));
        }
        let joined = self.root.join(rel);
        self.check_real(&joined).map_err(|e| match e {
            // Named as the user wrote it.
            PathError::LeavesThroughLink { target, .. } => PathError::LeavesThroughLink {
                path: rel.to_owned(),
                target,
            },
            other => other,
        })?;
        Ok(joined)
    }

    /// Fails with the real target when `path` (inside the folder) resolves outside it.
    pub fn check_real(&self, path: &Path) -> Result<(), PathError> {
        match (path.canonicalize(), &self.real_root) {
            (Ok(real), Some(root)) if !real.starts_with(root) => {
                Err(PathError::LeavesThroughLink {
                    path: path.to_owned(),
                    target: real,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Why a path may not be used inside a [`DataRoot`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("'{0}' is absolute; paths must be relative to the data folder")]
    Absolute(String),
    #[error("'{0}' contains '..' and could leave the data folder")]
    ParentDir(String),
    #[error("'{path}' leaves the data folder through a symbolic link (to {target})")]
    LeavesThroughLink { path: PathBuf, target: PathBuf },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_root_refuses_paths_that_leave_it_by_kind() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::new(dir.path());
        assert_eq!(root.resolve("a/b.npz"), Ok(dir.path().join("a/b.npz")));
        assert_eq!(root.resolve(""), Err(PathError::Empty));
        assert_eq!(
            root.resolve("/etc/passwd"),
            Err(PathError::Absolute("/etc/passwd".into()))
        );
        assert_eq!(
            root.resolve("a/../../x"),
            Err(PathError::ParentDir("a/../../x".into()))
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
            let target = outside.path().canonicalize().unwrap().join("x");
            std::fs::write(&target, b"x").unwrap();
            assert_eq!(
                root.resolve("link/x"),
                Err(PathError::LeavesThroughLink {
                    path: "link/x".into(),
                    target: target.clone(),
                })
            );
            assert_eq!(
                root.check_real(&dir.path().join("link/x")),
                Err(PathError::LeavesThroughLink {
                    path: dir.path().join("link/x"),
                    target,
                })
            );
        }
    }
}
