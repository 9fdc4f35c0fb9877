//! Small filesystem helpers for credentials: a private directory, and whole-file writes
//! that a reader (a kubectl watching its kubeconfig, a second `kith` process) never sees
//! half done.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::PkiError;

/// Mode of files holding keys or tokens.
pub(crate) const PRIVATE: u32 = 0o600;
/// Mode of certificates: public by nature.
pub(crate) const PUBLIC: u32 = 0o644;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) and makes it 0700 even if it already existed wider.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), PkiError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// The file's text, or `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Replaces `path` with `data` in one step: write a temporary file beside it, fsync,
/// rename over. The mode is set before the rename so the secret is never readable by
/// others, whatever the umask.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| PkiError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = write_then_rename(&tmp, path, data, mode);
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; failure here leaves a correct file, so ignore it.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_then_rename(tmp: &Path, path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(io_err(tmp))?;
    f.set_permissions(Permissions::from_mode(mode))
        .map_err(io_err(tmp))?;
    f.write_all(data).map_err(io_err(tmp))?;
    f.sync_all().map_err(io_err(tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(io_err(path))
}
