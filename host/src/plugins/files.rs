//! Reading files from a plugin directory without trusting them.
//!
//! Anyone who can drop a file into the watched directory can drop a FIFO (whose open or read
//! blocks forever, and with it hot reload for every plugin), a device (`/dev/zero` reads until
//! memory runs out), a socket, or a symlink to any of those or to a file elsewhere. This module
//! owns `read`, the one way plugin components and manifests are read from disk: regular files
//! only, symlinks only when they resolve to a regular file inside the same directory, and never
//! more than a size limit. Nothing is opened before it is known to be a regular file, and what
//! was opened is checked again, so swapping the file in between gains nothing. It decides
//! nothing about what the bytes mean.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Largest manifest read from disk.
pub(super) const MAX_MANIFEST_BYTES: u64 = 64 << 10;

/// Why a plugin file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a regular file ({kind}); only regular files are loaded")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path} is a symlink that leads outside its directory; only symlinks within it are followed")]
    EscapingSymlink { path: String },
    #[error("{path} is {size} bytes; the limit is {max} bytes")]
    TooLarge { path: String, size: u64, max: u64 },
}

/// Reads `path`, a regular file (or a symlink to one in the same directory) of at most `max`
/// bytes.
pub(super) fn read(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let shown = || path.display().to_string();
    let io = |source| FileError::Io { path: shown(), source };
    let link = std::fs::symlink_metadata(path).map_err(io)?;
    if link.file_type().is_symlink() {
        let dir = path.parent().unwrap_or(Path::new("."));
        let target = std::fs::canonicalize(path).map_err(io)?;
        let root = std::fs::canonicalize(dir).map_err(io)?;
        if target.parent() != Some(root.as_path()) {
            return Err(FileError::EscapingSymlink { path: shown() });
        }
    }
    let before = std::fs::metadata(path).map_err(io)?;
    check_regular(path, &before, max)?;
    // O_NONBLOCK: were the file swapped for a FIFO after the check, opening it still returns.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let opened = file.metadata().map_err(io)?;
    check_regular(path, &opened, max)?;
    read_at_most(file, path, max)
}

fn check_regular(path: &Path, meta: &std::fs::Metadata, max: u64) -> Result<(), FileError> {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    let not = |kind| Err(FileError::NotRegular { path: path.display().to_string(), kind });
    if kind.is_fifo() {
        return not("a FIFO");
    }
    if kind.is_char_device() || kind.is_block_device() {
        return not("a device");
    }
    if kind.is_socket() {
        return not("a socket");
    }
    if kind.is_dir() {
        return not("a directory");
    }
    if !kind.is_file() {
        return not("not a file");
    }
    if meta.len() > max {
        return Err(FileError::TooLarge { path: path.display().to_string(), size: meta.len(), max });
    }
    Ok(())
}

/// Reads to the end, refusing a file that grew past `max` since it was checked.
fn read_at_most(file: File, path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io { path: path.display().to_string(), source })?;
    if bytes.len() as u64 > max {
        return Err(FileError::TooLarge { path: path.display().to_string(), size: bytes.len() as u64, max });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_and_inner_symlinks_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.wasm");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read(&file, 10).unwrap(), b"abc");
        let link = dir.path().join("b.wasm");
        std::os::unix::fs::symlink("a.wasm", &link).unwrap();
        assert_eq!(read(&link, 10).unwrap(), b"abc");
    }

    #[test]
    fn fifos_devices_and_escaping_symlinks_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.wasm");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        assert!(matches!(read(&fifo, 10), Err(FileError::NotRegular { kind: "a FIFO", .. })));
        let device = dir.path().join("zero.wasm");
        std::os::unix::fs::symlink("/dev/zero", &device).unwrap();
        assert!(matches!(read(&device, 10), Err(FileError::EscapingSymlink { .. })));
        let outside = tempfile::NamedTempFile::new().unwrap();
        let escaping = dir.path().join("out.wasm");
        std::os::unix::fs::symlink(outside.path(), &escaping).unwrap();
        assert!(matches!(read(&escaping, 10), Err(FileError::EscapingSymlink { .. })));
        assert!(matches!(read(Path::new("/dev/null"), 10), Err(FileError::NotRegular { kind: "a device", .. })));
    }

    #[test]
    fn large_files_are_refused_with_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.wasm");
        std::fs::write(&file, vec![0u8; 100]).unwrap();
        let err = read(&file, 99).unwrap_err().to_string();
        assert!(err.ends_with("big.wasm is 100 bytes; the limit is 99 bytes"), "{err}");
    }
}
