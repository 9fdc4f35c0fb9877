//! Applying image layers to a root filesystem by the image-spec rules, safely.
//!
//! Layers come from registries and archives we do not trust. Every entry's path is made
//! relative to the root (`..` refused, a leading `/` ignored), and every parent component
//! is checked with `lstat` as we walk down: a symlink placed by an earlier entry is never
//! followed, so `a -> /etc` followed by `a/passwd` fails instead of writing `/etc/passwd`.
//! The final component is unlinked before it is created (`O_EXCL`), so an existing symlink
//! is replaced, not written through. The root is private to the unpacking process (a fresh
//! temp directory), so no other writer can swap components between check and use.
//!
//! Whiteouts: `.wh.<name>` removes `<name>` from lower layers, `.wh..wh..opq` removes the
//! lower content of its directory; entries of the same layer are kept whatever their order
//! in the tar, and whiteout files never appear in the result.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Why a layer was refused. Each message names the offending entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} escapes the root filesystem (\"..\" component)")]
    ParentComponent { path: String },
    #[error("layer entry {path:?} would be written through the symbolic link {link:?}")]
    ThroughSymlink { path: String, link: String },
    #[error("layer entry {path:?} has a parent {parent:?} that is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("hard link {path:?} points to {target:?}, which is not a regular file inside the root filesystem")]
    BadHardLink { path: String, target: String },
    #[error("layer entry {path:?} is a {kind}; device nodes and fifos are refused")]
    SpecialFile { path: String, kind: &'static str },
    #[error("layer entry {path:?} has an unsupported type ({kind})")]
    Unsupported { path: String, kind: String },
    #[error("layer is zstd-compressed, which this agent does not support")]
    Zstd,
    #[error("reading layer: {0}")]
    Read(#[source] io::Error),
    #[error("writing {path:?}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// What one layer added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries read from the tar (whiteouts included).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Wraps a layer blob in a decompressor chosen by its first bytes (gzip or plain tar).
pub fn open_layer<R: Read + 'static>(blob: R) -> Result<Box<dyn Read>, UnpackError> {
    let mut reader = BufReader::new(blob);
    let head = reader.fill_buf().map_err(UnpackError::Read)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(UnpackError::Zstd)
    } else {
        Ok(Box::new(reader))
    }
}

/// Applies one (already decompressed) layer tar on top of `root`.
pub fn apply_layer(root: &Path, layer: impl Read) -> Result<LayerStats, UnpackError> {
    let mut archive = tar::Archive::new(layer);
    let mut stats = LayerStats::default();
    // Paths this layer created: whiteouts only act on lower layers.
    let mut created: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some(rel) = relative_path(&raw, &shown)? else {
            continue; // the root itself
        };
        let name = rel.file_name().unwrap_or_default().to_owned();
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }

        if name.as_bytes() == OPAQUE_WHITEOUT.as_bytes() {
            if let Some(dir) = existing_parent(root, &parent, &shown)? {
                remove_lower(&dir, &parent, &created, &shown)?;
            }
            continue;
        }
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let target_rel = parent.join(OsStr::from_bytes(hidden));
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(UnpackError::ParentComponent { path: shown });
            }
            if !created.contains(&target_rel) {
                if let Some(dir) = existing_parent(root, &parent, &shown)? {
                    remove_any(&dir.join(OsStr::from_bytes(hidden)), &shown)?;
                }
            }
            continue;
        }

        let dir = make_parents(root, &parent, &shown)?;
        let path = dir.join(&name);
        let write_err = |source| UnpackError::Write {
            path: shown.clone(),
            source,
        };
        let mode = header.mode().map_err(UnpackError::Read)? & 0o7777;
        let uid = header.uid().map_err(UnpackError::Read)?;
        let gid = header.gid().map_err(UnpackError::Read)?;

        if kind.is_dir() {
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    remove_any(&path, &shown)?;
                    fs::create_dir(&path).map_err(write_err)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&path).map_err(write_err)?
                }
                Err(e) => return Err(write_err(e)),
            }
            set_owner_and_mode(&path, uid, gid, Some(mode)).map_err(write_err)?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            remove_any(&path, &shown)?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
                .map_err(write_err)?;
            stats.bytes += io::copy(&mut entry, &mut file).map_err(write_err)?;
            drop(file);
            set_owner_and_mode(&path, uid, gid, Some(mode)).map_err(write_err)?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| UnpackError::Unsupported {
                    path: shown.clone(),
                    kind: "symlink without target".into(),
                })?
                .into_owned();
            remove_any(&path, &shown)?;
            // The target is stored as is: it is only ever resolved inside the container's
            // root, never by us while unpacking.
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(write_err)?;
            set_owner_and_mode(&path, uid, gid, None).map_err(write_err)?;
        } else if kind.is_hard_link() {
            let raw_target = entry
                .link_name_bytes()
                .ok_or_else(|| UnpackError::Unsupported {
                    path: shown.clone(),
                    kind: "hard link without target".into(),
                })?
                .into_owned();
            let target_shown = String::from_utf8_lossy(&raw_target).into_owned();
            let bad = || UnpackError::BadHardLink {
                path: shown.clone(),
                target: target_shown.clone(),
            };
            let target_rel = relative_path(&raw_target, &target_shown)
                .map_err(|_| bad())?
                .ok_or_else(bad)?;
            let target_parent = target_rel.parent().unwrap_or(Path::new(""));
            let target_dir = existing_parent(root, target_parent, &target_shown)
                .map_err(|_| bad())?
                .ok_or_else(bad)?;
            let target = target_dir.join(target_rel.file_name().unwrap_or_default());
            match fs::symlink_metadata(&target) {
                Ok(meta) if meta.file_type().is_file() => {}
                _ => return Err(bad()),
            }
            if target != path {
                remove_any(&path, &shown)?;
                // linkat without AT_SYMLINK_FOLLOW: links the file itself, checked above.
                fs::hard_link(&target, &path).map_err(write_err)?;
            }
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let kind = if kind.is_fifo() {
                "fifo"
            } else if kind.is_block_special() {
                "block device"
            } else {
                "character device"
            };
            return Err(UnpackError::SpecialFile { path: shown, kind });
        } else {
            return Err(UnpackError::Unsupported {
                path: shown,
                kind: format!("{kind:?}"),
            });
        }
        created.insert(rel);
    }
    Ok(stats)
}

/// The entry's path relative to the root: `/` and `.` components dropped, `..` refused.
/// `None` for the root itself.
fn relative_path(raw: &[u8], shown: &str) -> Result<Option<PathBuf>, UnpackError> {
    let mut rel = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(UnpackError::ParentComponent {
                    path: shown.to_string(),
                })
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Walks `rel` (a directory path) down from `root`, creating missing directories,
/// refusing symlinks and non-directories. Returns the absolute directory.
fn make_parents(root: &Path, rel: &Path, shown: &str) -> Result<PathBuf, UnpackError> {
    walk_parents(root, rel, shown, true).map(|dir| dir.expect("created"))
}

/// Like `make_parents` without creating: `None` when a component does not exist.
fn existing_parent(root: &Path, rel: &Path, shown: &str) -> Result<Option<PathBuf>, UnpackError> {
    walk_parents(root, rel, shown, false)
}

fn walk_parents(
    root: &Path,
    rel: &Path,
    shown: &str,
    create: bool,
) -> Result<Option<PathBuf>, UnpackError> {
    let mut dir = root.to_path_buf();
    let mut walked = PathBuf::new();
    for part in rel.components() {
        dir.push(part);
        walked.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(UnpackError::ThroughSymlink {
                    path: shown.to_string(),
                    link: walked.to_string_lossy().into_owned(),
                })
            }
            Ok(_) => {
                return Err(UnpackError::ParentNotDirectory {
                    path: shown.to_string(),
                    parent: walked.to_string_lossy().into_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                fs::create_dir(&dir).map_err(|source| UnpackError::Write {
                    path: shown.to_string(),
                    source,
                })?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|source| {
                    UnpackError::Write {
                        path: shown.to_string(),
                        source,
                    }
                })?;
            }
            Err(source) => {
                return Err(UnpackError::Write {
                    path: shown.to_string(),
                    source,
                })
            }
        }
    }
    Ok(Some(dir))
}

/// Removes whatever is at `path` (never following a symlink); absent is fine.
fn remove_any(path: &Path, shown: &str) -> Result<(), UnpackError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|source| UnpackError::Write {
        path: shown.to_string(),
        source,
    })
}

/// Opaque whiteout: removes everything under `dir` that this layer did not create,
/// descending into directories this layer created (their lower content goes too).
fn remove_lower(
    dir: &Path,
    rel: &Path,
    created: &HashSet<PathBuf>,
    shown: &str,
) -> Result<(), UnpackError> {
    let write_err = |source| UnpackError::Write {
        path: shown.to_string(),
        source,
    };
    for child in fs::read_dir(dir).map_err(write_err)? {
        let child = child.map_err(write_err)?;
        let child_rel = rel.join(child.file_name());
        let child_path = child.path();
        if created.contains(&child_rel) {
            let meta = fs::symlink_metadata(&child_path).map_err(write_err)?;
            if meta.is_dir() {
                remove_lower(&child_path, &child_rel, created, shown)?;
            }
        } else {
            remove_any(&child_path, shown)?;
        }
    }
    Ok(())
}

fn set_owner_and_mode(path: &Path, uid: u64, gid: u64, mode: Option<u32>) -> io::Result<()> {
    let uid = u32::try_from(uid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "uid out of range"))?;
    let gid = u32::try_from(gid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "gid out of range"))?;
    // chown before chmod: chown clears set-uid/set-gid bits.
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testing::{raw_tar, RawEntry};
    use std::collections::BTreeMap;

    /// A sorted listing of `root`: path → "dir" | "file:<content>" | "link:<target>".
    fn listing(root: &Path) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for child in fs::read_dir(dir).unwrap() {
                let path = child.unwrap().path();
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    out.insert(
                        rel,
                        format!("link:{}", fs::read_link(&path).unwrap().display()),
                    );
                } else if meta.is_dir() {
                    out.insert(rel, "dir".into());
                    walk(root, &path, out);
                } else {
                    out.insert(rel, format!("file:{}", fs::read_to_string(&path).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    fn apply_all(root: &Path, layers: &[Vec<RawEntry>]) -> Result<(), UnpackError> {
        for layer in layers {
            apply_layer(root, &raw_tar(layer)[..])?;
        }
        Ok(())
    }

    #[test]
    fn whiteouts() {
        use RawEntry as E;
        let lower = vec![
            E::dir("d"),
            E::file("d/a", "a"),
            E::file("d/b", "b"),
            E::dir("d/sub"),
            E::file("d/sub/x", "x"),
            E::file("keep", "k"),
            E::symlink("ln", "d/a"),
        ];
        struct Case {
            name: &'static str,
            upper: Vec<RawEntry>,
            want: &'static [(&'static str, &'static str)],
        }
        let cases = vec![
            Case {
                name: "file whiteout",
                upper: vec![E::file("d/.wh.a", "")],
                want: &[
                    ("d", "dir"),
                    ("d/b", "file:b"),
                    ("d/sub", "dir"),
                    ("d/sub/x", "file:x"),
                    ("keep", "file:k"),
                    ("ln", "link:d/a"),
                ],
            },
            Case {
                name: "directory whiteout",
                upper: vec![E::file("d/.wh.sub", ""), E::file(".wh.ln", "")],
                want: &[
                    ("d", "dir"),
                    ("d/a", "file:a"),
                    ("d/b", "file:b"),
                    ("keep", "file:k"),
                ],
            },
            Case {
                name: "opaque after same-layer entries",
                upper: vec![
                    E::dir("d"),
                    E::file("d/new", "n"),
                    E::dir("d/sub"),
                    E::file("d/sub/y", "y"),
                    E::file("d/.wh..wh..opq", ""),
                ],
                want: &[
                    ("d", "dir"),
                    ("d/new", "file:n"),
                    ("d/sub", "dir"),
                    ("d/sub/y", "file:y"),
                    ("keep", "file:k"),
                    ("ln", "link:d/a"),
                ],
            },
            Case {
                name: "opaque before same-layer entries",
                upper: vec![E::file("d/.wh..wh..opq", ""), E::file("d/new", "n")],
                want: &[
                    ("d", "dir"),
                    ("d/new", "file:n"),
                    ("keep", "file:k"),
                    ("ln", "link:d/a"),
                ],
            },
            Case {
                name: "whiteout of a missing path and under a missing dir",
                upper: vec![E::file(".wh.nothing", ""), E::file("nodir/.wh.x", "")],
                want: &[
                    ("d", "dir"),
                    ("d/a", "file:a"),
                    ("d/b", "file:b"),
                    ("d/sub", "dir"),
                    ("d/sub/x", "file:x"),
                    ("keep", "file:k"),
                    ("ln", "link:d/a"),
                ],
            },
            Case {
                name: "file replaces directory, symlink replaced by file",
                upper: vec![E::file("d/sub", "now a file"), E::file("ln", "plain")],
                want: &[
                    ("d", "dir"),
                    ("d/a", "file:a"),
                    ("d/b", "file:b"),
                    ("d/sub", "file:now a file"),
                    ("keep", "file:k"),
                    ("ln", "file:plain"),
                ],
            },
            Case {
                name: "recreated after whiteout in a later entry",
                upper: vec![E::file(".wh.keep", ""), E::file("keep", "again")],
                want: &[
                    ("d", "dir"),
                    ("d/a", "file:a"),
                    ("d/b", "file:b"),
                    ("d/sub", "dir"),
                    ("d/sub/x", "file:x"),
                    ("keep", "file:again"),
                    ("ln", "link:d/a"),
                ],
            },
            Case {
                name: "hard link inside the root",
                upper: vec![E::hardlink("d/hl", "keep"), E::hardlink("/abs", "/d/b")],
                want: &[
                    ("abs", "file:b"),
                    ("d", "dir"),
                    ("d/a", "file:a"),
                    ("d/b", "file:b"),
                    ("d/hl", "file:k"),
                    ("d/sub", "dir"),
                    ("d/sub/x", "file:x"),
                    ("keep", "file:k"),
                    ("ln", "link:d/a"),
                ],
            },
        ];
        for case in cases {
            let tmp = tempfile::tempdir().unwrap();
            apply_all(tmp.path(), &[lower.clone(), case.upper])
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let want: BTreeMap<String, String> = case
                .want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(listing(tmp.path()), want, "{}", case.name);
        }
    }

    #[test]
    fn hostile_entries_write_nothing_outside() {
        use RawEntry as E;
        struct Case {
            name: &'static str,
            // `{outside}` in paths and targets is replaced by the absolute outside dir.
            entries: Vec<RawEntry>,
            // None: the layer is accepted (and must stay inside); Some: error text.
            error: Option<&'static str>,
        }
        let cases = vec![
            Case {
                name: "dotdot",
                entries: vec![E::file("../outside/evil", "x")],
                error: Some("\"../outside/evil\" escapes"),
            },
            Case {
                name: "inner dotdot",
                entries: vec![E::file("a/../../outside/evil", "x")],
                error: Some("escapes"),
            },
            Case {
                name: "absolute is rooted",
                entries: vec![E::file("{outside}/evil", "x")],
                error: None,
            },
            Case {
                name: "absolute symlink parent",
                entries: vec![E::symlink("ln", "{outside}"), E::file("ln/evil", "x")],
                error: Some("\"ln/evil\" would be written through the symbolic link \"ln\""),
            },
            Case {
                name: "relative symlink parent",
                entries: vec![E::symlink("ln", "../outside"), E::file("ln/evil", "x")],
                error: Some("through the symbolic link"),
            },
            Case {
                name: "symlink dir then directory entry",
                entries: vec![E::symlink("ln", "{outside}"), E::dir("ln/sub")],
                error: Some("through the symbolic link"),
            },
            Case {
                name: "deep symlink parent",
                entries: vec![
                    E::dir("a"),
                    E::symlink("a/b", "{outside}"),
                    E::file("a/b/c/evil", "x"),
                ],
                error: Some("\"a/b\""),
            },
            Case {
                name: "symlink replaced by a file, not written through",
                entries: vec![
                    E::symlink("victim", "{outside}/victim"),
                    E::file("victim", "x"),
                ],
                error: None,
            },
            Case {
                name: "hard link dotdot",
                entries: vec![E::hardlink("h", "../outside/victim")],
                error: Some("hard link \"h\" points to \"../outside/victim\""),
            },
            Case {
                name: "hard link absolute outside",
                entries: vec![E::hardlink("h", "{outside}/victim")],
                error: Some("hard link \"h\""),
            },
            Case {
                name: "hard link to a symlink",
                entries: vec![E::symlink("s", "{outside}/victim"), E::hardlink("h", "s")],
                error: Some("hard link \"h\" points to \"s\""),
            },
            Case {
                name: "hard link through a symlinked dir",
                entries: vec![E::symlink("s", "{outside}"), E::hardlink("h", "s/victim")],
                error: Some("hard link \"h\""),
            },
            Case {
                name: "char device",
                entries: vec![E::char_device("dev/null")],
                error: Some("\"dev/null\" is a character device"),
            },
            Case {
                name: "block device",
                entries: vec![E::block_device("dev/sda")],
                error: Some("\"dev/sda\" is a block device"),
            },
            Case {
                name: "fifo",
                entries: vec![E::fifo("run/pipe")],
                error: Some("\"run/pipe\" is a fifo"),
            },
            Case {
                name: "whiteout through symlink",
                entries: vec![E::symlink("s", "{outside}"), E::file("s/.wh.victim", "")],
                error: Some("through the symbolic link \"s\""),
            },
            Case {
                name: "opaque whiteout through symlink",
                entries: vec![E::symlink("s", "{outside}"), E::file("s/.wh..wh..opq", "")],
                error: Some("through the symbolic link \"s\""),
            },
            Case {
                name: "whiteout of dotdot",
                entries: vec![E::file(".wh..", "")],
                error: Some("escapes"),
            },
            Case {
                name: "file as parent",
                entries: vec![E::file("f", "x"), E::file("f/evil", "x")],
                error: Some("parent \"f\" that is not a directory"),
            },
        ];
        for case in cases {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("root");
            let outside = tmp.path().join("outside");
            fs::create_dir(&root).unwrap();
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("victim"), "original").unwrap();
            let outside_str = outside.to_str().unwrap();
            let entries: Vec<RawEntry> = case
                .entries
                .iter()
                .map(|e| e.replace("{outside}", outside_str))
                .collect();
            let result = apply_layer(&root, &raw_tar(&entries)[..]);
            match (result, case.error) {
                (Ok(_), None) => {}
                (Err(e), Some(needle)) => {
                    assert!(e.to_string().contains(needle), "{}: {e}", case.name)
                }
                (got, want) => panic!("{}: got {got:?}, want error {want:?}", case.name),
            }
            let mut seen = listing(tmp.path());
            seen.retain(|path, _| !path.starts_with("root"));
            let want = BTreeMap::from([
                ("outside".to_string(), "dir".to_string()),
                ("outside/victim".to_string(), "file:original".to_string()),
            ]);
            assert_eq!(
                seen, want,
                "{}: something was written outside the root",
                case.name
            );
        }
    }

    #[test]
    fn compression_is_detected() {
        let tar = raw_tar(&[RawEntry::file("hello", "world")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        for blob in [tar, gz] {
            let tmp = tempfile::tempdir().unwrap();
            let stats =
                apply_layer(tmp.path(), open_layer(io::Cursor::new(blob)).unwrap()).unwrap();
            assert_eq!(
                stats,
                LayerStats {
                    entries: 1,
                    bytes: 5
                }
            );
            assert_eq!(
                fs::read_to_string(tmp.path().join("hello")).unwrap(),
                "world"
            );
        }
        let zstd = vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0];
        assert!(matches!(
            open_layer(io::Cursor::new(zstd)),
            Err(UnpackError::Zstd)
        ));
    }

    #[test]
    fn modes_and_owners_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = vec![
            RawEntry::file("bin/tool", "x")
                .mode(0o4755)
                .owner(65534, 65534),
            RawEntry::dir("srv").mode(0o1777),
        ];
        apply_layer(tmp.path(), &raw_tar(&entries)[..]).unwrap();
        use std::os::unix::fs::MetadataExt;
        let tool = fs::metadata(tmp.path().join("bin/tool")).unwrap();
        assert_eq!(
            (tool.mode() & 0o7777, tool.uid(), tool.gid()),
            (0o4755, 65534, 65534)
        );
        let srv = fs::metadata(tmp.path().join("srv")).unwrap();
        assert_eq!(srv.mode() & 0o7777, 0o1777);
        assert_eq!(
            fs::metadata(tmp.path().join("bin")).unwrap().mode() & 0o7777,
            0o755
        );
    }
}
