//! File-system helpers shared by every module that writes user data: atomic replacement
//! (temporary file in the same folder, fsync, rename) and path containment checks.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Replaces `path` with `bytes` atomically: readers see the old file or the new one, never a
/// half-written one, and a failure (full disk, …) leaves the old file untouched.
///
/// `path` may be a symbolic link: its target is replaced (see [`destination`]). A folder, FIFO,
/// device or socket is refused before anything is written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = temp_file_beside(path)?;
    tmp.write_all(bytes)?;
    tmp.flush()?;
    tmp.as_file().sync_all()?;
    persist(tmp, path)
}

/// As [`write_atomic`], but a symbolic link at `path` is replaced itself, never followed: for a
/// file the program names itself in a shared folder (the system's temporary folder), where a
/// link planted by another user must not redirect the write. The file is private (`rw-------`).
pub fn write_atomic_replacing_link(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Whether a file name is one of this program's temporary files of an atomic write
/// ([`temp_file_beside`]): what a killed run leaves behind.
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

/// Removes the temporary files ([`is_temporary_name`]) a killed run left in `dir` and its
/// folders, `depth` levels down (1: `dir` only). Links are not followed. Only a writer holding
/// the folder's [`FolderLock`] calls this, so none of them is in use. The error names the file.
pub fn remove_temporary_files(dir: &Path, depth: usize) -> Result<(), (PathBuf, std::io::Error)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() && depth > 1 {
            remove_temporary_files(&e.path(), depth - 1)?;
        } else if kind.is_file() && is_temporary_name(&e.file_name().to_string_lossy()) {
            std::fs::remove_file(e.path()).map_err(|err| (e.path(), err))?;
        }
    }
    Ok(())
}

/// The name of every temporary file [`temp_file_beside`] makes: `.sd3lab-<random>.tmp`.
const TEMP_PREFIX: &str = ".sd3lab-";
const TEMP_SUFFIX: &str = ".tmp";

/// Renames a temporary file made by [`temp_file_beside`]`(path)` onto `path`'s [`destination`]:
/// through a symbolic link to its target, never replacing the link itself.
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    let target = destination(path)?;
    tmp.persist(&target).map_err(|e| e.error)?;
    Ok(())
}

/// Whether writing `output` would replace the file `input`: the same file once symbolic links,
/// `.` and `..` are resolved (and, for existing files, the same inode: a hard link). An output
/// that does not exist yet is compared by its folder's canonical path.
pub fn same_file(output: &Path, input: &Path) -> bool {
    FileIdentity::of(output).same(&FileIdentity::of(input))
}

/// What [`same_file`] compares, resolved once (to compare one path with many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    /// The canonical path (of the folder, joined with the name, for a file not made yet).
    path: Option<std::path::PathBuf>,
    /// Device and inode of an existing file.
    inode: Option<(u64, u64)>,
}

impl FileIdentity {
    pub fn of(p: &Path) -> Self {
        let path = (|| {
            let p = destination(p).ok()?;
            if let Ok(c) = p.canonicalize() {
                return Some(c);
            }
            let parent = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Some(parent.canonicalize().ok()?.join(p.file_name()?))
        })();
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
        };
        #[cfg(not(unix))]
        let inode = None;
        Self { path, inode }
    }

    pub fn same(&self, other: &Self) -> bool {
        (self.inode.is_some() && self.inode == other.inode)
            || (self.path.is_some() && self.path == other.path)
    }
}

/// How many symbolic links [`destination`] follows before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// The file an atomic write to `path` replaces: `path`, or the end of its chain of symbolic
/// links (a dangling link names the file to create). Refused, with an error that says what the
/// path is: a folder, a FIFO, a device or a socket (atomic replacement would turn any of them
/// into a regular file), and a chain of links that does not end.
///
/// Outputs call this before any work so that a bad destination fails at once.
pub fn destination(path: &Path) -> std::io::Result<PathBuf> {
    use std::io::{Error, ErrorKind};
    let mut current = path.to_owned();
    for _ in 0..MAX_LINKS {
        let meta = match std::fs::symlink_metadata(&current) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(e),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let link = std::fs::read_link(&current)?;
            current = match current.parent() {
                Some(parent) if link.is_relative() => parent.join(link),
                _ => link,
            };
            continue;
        }
        if kind.is_file() {
            return Ok(current);
        }
        let what = if kind.is_dir() {
            "a folder"
        } else {
            special_file_kind(&kind)
        };
        let shown = if current == path {
            String::new()
        } else {
            format!(" (through a symbolic link to {})", current.display())
        };
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("is {what}{shown}, not a regular file; choose a file path"),
        ));
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!("has more than {MAX_LINKS} levels of symbolic links"),
    ))
}

/// "a FIFO", "a device", … for a file type that is neither a file, a folder nor a link.
fn special_file_kind(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    #[cfg(not(unix))]
    let _ = kind;
    "not a regular file"
}

/// `dir/stem`, or `dir/stem-2`, `dir/stem-3`…: the first folder name not taken (a folder of
/// exported figures), as [`free_stem`] numbers outputs.
pub fn numbered_folder(dir: &Path, stem: &str) -> PathBuf {
    dir.join(free_stem(dir, stem, &[""]))
}

/// The first of `stem`, `stem-2`, `stem-3`… for which none of `dir/<stem><suffix>` exists, for
/// an output made of several files named after one stem (a report and its data files, a plan
/// and its Pareto front): no file of an earlier output is replaced. (A name is taken between
/// this check and the write only by a concurrent writer, which the folder locks exclude.)
pub fn free_stem(dir: &Path, stem: &str, suffixes: &[&str]) -> String {
    let free = |s: &str| {
        suffixes
            .iter()
            .all(|suffix| !dir.join(format!("{s}{suffix}")).exists())
    };
    if free(stem) {
        return stem.to_owned();
    }
    (2u32..)
        .map(|n| format!("{stem}-{n}"))
        .find(|s| free(s))
        .unwrap_or_else(|| stem.to_owned())
}

/// A hidden temporary file in `path`'s folder (so that renaming it onto `path` is atomic), with
/// ordinary file permissions. It is deleted if dropped before `persist`.
///
/// `path` is first resolved by [`destination`] (refusing folders, FIFOs and devices), so that the
/// temporary file lies beside the file it will replace; rename it there with [`persist`].
pub fn temp_file_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let path = destination(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
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

/// An OS advisory lock on a folder that a job writes (`.sd3lab.lock` inside it), held for the
/// job's whole run and released by the OS when the process ends, however it ends. A second
/// writer is refused at once with the holder's pid; readers never take it.
#[derive(Debug)]
pub struct FolderLock {
    _file: std::fs::File,
}

/// The lock file's name inside a locked folder.
pub const LOCK_FILE: &str = ".sd3lab.lock";

impl FolderLock {
    /// Takes the lock on `dir` (created if missing) without waiting.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: dir.join(LOCK_FILE),
            source,
        };
        if let Ok(meta) = std::fs::metadata(dir)
            && !meta.is_dir()
        {
            return Err(LockError::NotAFolder(dir.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        // A link or FIFO planted as the lock file is refused, never followed or waited on.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        }
        let mut file = options.open(&path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::io::Seek;
            lock_now(&mut file, dir)?;
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            write!(file, "{}", std::process::id()).map_err(io)?;
            file.flush().map_err(io)?;
        }
        Ok(Self { _file: file })
    }

    /// Fails as [`FolderLock::acquire`] would (a file where the folder should be, another
    /// writer holding it) without creating or keeping anything: a job checks this before its
    /// slow preparation (resolving or downloading a model), then takes the lock for real.
    pub fn check(dir: &Path) -> Result<(), LockError> {
        if let Ok(meta) = std::fs::metadata(dir)
            && !meta.is_dir()
        {
            return Err(LockError::NotAFolder(dir.to_owned()));
        }
        let path = dir.join(LOCK_FILE);
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        }
        match options.open(&path) {
            // Taken and released at once (closing the file releases it).
            #[cfg(unix)]
            Ok(mut file) => lock_now(&mut file, dir),
            #[cfg(not(unix))]
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LockError::Io { path, source }),
        }
    }
}

/// An exclusive flock on `file` without waiting; `Held` (with the pid written in the file) when
/// another open file description holds it.
#[cfg(unix)]
fn lock_now(file: &mut std::fs::File, dir: &Path) -> Result<(), LockError> {
    use std::io::Read;
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor the caller owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(LockError::Io {
            path: dir.join(LOCK_FILE),
            source: err,
        });
    }
    let mut text = String::new();
    // The holder's pid is informative only: unreadable means unknown.
    let _ = file.read_to_string(&mut text);
    Err(LockError::Held {
        dir: dir.to_owned(),
        pid: text.trim().parse().ok(),
    })
}

/// Why a folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{dir} is being written by another sd3lab process{}", .pid.map_or(String::new(), |p| format!(" (pid {p})")))]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("{0} is a file, not a folder; choose a folder for the output")]
    NotAFolder(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `name` if it is one plain file or folder name, to be joined to a folder: not empty, not `.`
/// or `..`, without a separator (`/`, or `\` which is one on Windows) or a NUL. For names
/// that come from outside (a server's header, a manifest, a file), so that joining them can
/// never leave the folder or name something else.
pub fn single_component(name: &str) -> Result<&str, PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    if name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(PathError::NotOneName(name.to_owned()));
    }
    Ok(name)
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
    #[error("{0:?} is not a single file name (it is empty, '.', '..', or holds '/', '\\' or NUL)")]
    NotOneName(String),
}

#[cfg(test)]
mod tests {
    #[test]
    fn single_component_takes_plain_names_only() {
        use super::{PathError, single_component};
        for good in ["sd3_medium.safetensors", "a..b", ".hidden", "0123abc"] {
            assert_eq!(single_component(good), Ok(good));
        }
        assert_eq!(single_component(""), Err(PathError::Empty));
        for bad in [".", "..", "a/b", "../x", "/abs", "a\\b", "a\0b", "x/"] {
            assert_eq!(
                single_component(bad),
                Err(PathError::NotOneName(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    use super::*;
    #[cfg(unix)]
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn numbered_paths_never_name_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let html = |stem: String| dir.path().join(format!("{stem}.html"));
        let first = html(free_stem(dir.path(), "report", &[".html"]));
        assert_eq!(first, dir.path().join("report.html"));
        std::fs::write(&first, b"1").unwrap();
        let second = html(free_stem(dir.path(), "report", &[".html"]));
        assert_eq!(second, dir.path().join("report-2.html"));
        std::fs::write(&second, b"2").unwrap();
        assert_eq!(
            html(free_stem(dir.path(), "report", &[".html"])),
            dir.path().join("report-3.html")
        );
        assert_eq!(
            numbered_folder(dir.path(), "report.html"),
            dir.path().join("report.html-2")
        );
        assert_eq!(
            numbered_folder(dir.path(), "figures"),
            dir.path().join("figures")
        );
        // An output of several files: a stem none of them takes.
        std::fs::write(dir.path().join("plan.pareto.csv"), b"").unwrap();
        assert_eq!(
            free_stem(dir.path(), "plan", &[".json", ".pareto.csv"]),
            "plan-2"
        );
    }

    #[cfg(unix)]
    #[test]
    fn atomic_writes_go_through_links_and_refuse_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("sub/real.txt");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink("sub/real.txt", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        // No temporary file left beside the link or the target.
        let temps = |d: &Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".tmp")
                })
                .count()
        };
        assert_eq!(temps(dir.path()) + temps(&dir.path().join("sub")), 0);
        // A dangling link names the file to create.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink("sub/created.txt", &dangling).unwrap();
        write_atomic(&dangling, b"x").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("sub/created.txt")).unwrap(),
            b"x"
        );

        let folder = write_atomic(&dir.path().join("sub"), b"x").unwrap_err();
        assert!(folder.to_string().contains("is a folder"), "{folder}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path this test owns.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = write_atomic(&fifo, b"x").unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let err = destination(Path::new("/dev/null")).unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
        // A loop of links ends in an error, not a hang.
        std::os::unix::fs::symlink("loop-b", dir.path().join("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", dir.path().join("loop-b")).unwrap();
        assert!(write_atomic(&dir.path().join("loop-a"), b"x").is_err());
    }

    #[test]
    fn a_folder_lock_refuses_a_second_writer_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open is refused even in
        // the same process, as another process would be.
        match FolderLock::acquire(dir.path()) {
            Err(LockError::Held { dir: d, pid }) => {
                assert_eq!(d, dir.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        // `check` sees the holder without taking or creating anything.
        assert!(matches!(
            FolderLock::check(dir.path()),
            Err(LockError::Held { pid: Some(p), .. }) if p == std::process::id()
        ));
        drop(first);
        FolderLock::check(dir.path()).unwrap();
        FolderLock::check(&dir.path().join("not-yet")).unwrap();
        assert!(!dir.path().join("not-yet").exists());
        FolderLock::acquire(dir.path()).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            FolderLock::acquire(&file),
            Err(LockError::NotAFolder(p)) if p == file
        ));
    }

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
