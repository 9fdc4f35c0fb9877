//! `kith image import FILE`: OCI image-layout tars (`skopeo copy ... oci-archive:`) and
//! `docker save` tars into the store, so that `ensure(name, IfNotPresent | Never)` finds
//! them without a registry.
//!
//! The archive is as untrusted as a layer: its own paths are never used as file names.
//! Regular files are copied to fresh temp files and looked up by normalised path; symlinks
//! (docker save links duplicate layers) are resolved inside the archive's namespace only.
//! Every blob is checked against its digest before it enters the content store.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::reference::parse;
use super::store::{hash_file, RegistryImageStore};
use super::ImageError;

/// Imports every named image of the archive at `file`; returns their normalised names.
pub fn import_archive(store: &RegistryImageStore, file: &Path) -> Result<Vec<String>, ImageError> {
    let shown = file.display().to_string();
    let work = store.temp_path("import");
    fs::create_dir(&work).map_err(ImageError::store("creating", &work))?;
    let result = (|| {
        let contents = Contents::extract(file, &work, &shown)?;
        // Newer `docker save` writes both an OCI layout and manifest.json, and its
        // index.json may name images by bare tag only: then manifest.json names them.
        let oci = match contents.exists("index.json") {
            true => import_oci(store, &contents, &shown)?,
            false => Vec::new(),
        };
        if !oci.is_empty() {
            Ok(oci)
        } else if contents.exists("manifest.json") {
            import_docker(store, &contents, &shown)
        } else if contents.exists("index.json") {
            Err(ImageError::bad(
                &shown,
                "no image in index.json has a full name in its org.opencontainers.image.ref.name annotation",
            ))
        } else {
            Err(ImageError::bad(
                &shown,
                "neither index.json (OCI layout) nor manifest.json (docker save) in the archive",
            ))
        }
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

/// The archive's regular files (copied out under generated names) and its symlinks.
struct Contents {
    files: HashMap<String, PathBuf>,
    links: HashMap<String, String>,
}

impl Contents {
    fn extract(file: &Path, work: &Path, shown: &str) -> Result<Contents, ImageError> {
        let input = fs::File::open(file).map_err(ImageError::store("opening", file))?;
        let mut archive = tar::Archive::new(input);
        let mut contents = Contents {
            files: HashMap::new(),
            links: HashMap::new(),
        };
        let read_err = |e: io::Error| ImageError::bad(shown, format!("reading archive: {e}"));
        for (n, entry) in archive.entries().map_err(read_err)?.enumerate() {
            let mut entry = entry.map_err(read_err)?;
            let raw = entry.path_bytes().into_owned();
            let entry_name = String::from_utf8_lossy(&raw).into_owned();
            let Some(path) = normalise(&raw, "") else {
                return Err(ImageError::bad(
                    shown,
                    format!("archive entry {entry_name:?} escapes the archive"),
                ));
            };
            let kind = entry.header().entry_type();
            if kind.is_file() || kind == tar::EntryType::Continuous {
                let target = work.join(n.to_string());
                let mut out =
                    fs::File::create(&target).map_err(ImageError::store("writing", &target))?;
                io::copy(&mut entry, &mut out).map_err(read_err)?;
                contents.files.insert(path, target);
            } else if kind.is_symlink() || kind.is_hard_link() {
                let raw_target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                // Symlink targets are relative to the link's directory, hard link targets to
                // the archive root.
                let base = if kind.is_symlink() {
                    parent_of(&path)
                } else {
                    String::new()
                };
                let target = normalise(&raw_target, &base).ok_or_else(|| {
                    ImageError::bad(
                        shown,
                        format!("archive link {entry_name:?} points outside the archive"),
                    )
                })?;
                contents.links.insert(path, target);
            } else if kind.is_dir() || kind.is_pax_global_extensions() {
                continue;
            } else {
                return Err(ImageError::bad(
                    shown,
                    format!("archive entry {entry_name:?} has unsupported type {kind:?}"),
                ));
            }
        }
        Ok(contents)
    }

    fn resolve(&self, path: &str) -> Option<&PathBuf> {
        let mut path = path.to_string();
        // A bounded walk: link cycles end here.
        for _ in 0..16 {
            if let Some(file) = self.files.get(&path) {
                return Some(file);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }

    fn exists(&self, path: &str) -> bool {
        self.resolve(path).is_some()
    }

    fn read(&self, path: &str, shown: &str) -> Result<Vec<u8>, ImageError> {
        let file = self
            .resolve(path)
            .ok_or_else(|| ImageError::bad(shown, format!("{path} is missing from the archive")))?;
        fs::read(file).map_err(ImageError::store("reading", file))
    }

    /// Reads `blobs/sha256/<hex>` of an OCI layout, checking its digest.
    fn read_blob(&self, digest: &str, shown: &str) -> Result<Vec<u8>, ImageError> {
        let bytes = self.read(&blob_name(digest, shown)?, shown)?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(ImageError::bad(
                shown,
                format!("blob {digest} in the archive has digest {actual}"),
            ));
        }
        Ok(bytes)
    }

    /// Moves the archive file at `path` into the store as `digest` (checked).
    fn store_blob(
        &self,
        store: &RegistryImageStore,
        path: &str,
        digest: &str,
        shown: &str,
    ) -> Result<(), ImageError> {
        if store.has_blob(shown, digest)? {
            return Ok(());
        }
        let file = self
            .resolve(path)
            .ok_or_else(|| ImageError::bad(shown, format!("{path} is missing from the archive")))?;
        // Copy, not rename: several names may resolve to the same file.
        let temp = store.temp_path("blob");
        fs::copy(file, &temp).map_err(ImageError::store("copying", file))?;
        store.commit_blob_file(shown, digest, &temp).map(|_| ())
    }
}

fn blob_name(digest: &str, shown: &str) -> Result<String, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .map(|hex| format!("blobs/sha256/{hex}"))
        .ok_or_else(|| ImageError::bad(shown, format!("unsupported digest {digest:?}")))
}

/// `base/raw` with `.` dropped and `..` applied, `None` when it climbs above the root.
fn normalise(raw: &[u8], base: &str) -> Option<String> {
    let mut parts: Vec<String> = if base.is_empty() {
        Vec::new()
    } else {
        base.split('/').map(str::to_string).collect()
    };
    let path = Path::new(OsStr::from_bytes(raw));
    if path.is_absolute() {
        parts.clear();
    }
    for component in path.components() {
        match component {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.join("/"))
}

fn parent_of(path: &str) -> String {
    path.rsplit_once('/')
        .map(|(parent, _)| parent.to_string())
        .unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn is_index(media_type: &str) -> bool {
    media_type.ends_with("image.index.v1+json") || media_type.ends_with("manifest.list.v2+json")
}

fn import_oci(
    store: &RegistryImageStore,
    contents: &Contents,
    shown: &str,
) -> Result<Vec<String>, ImageError> {
    let json = |e: serde_json::Error| ImageError::bad(shown, format!("invalid index.json: {e}"));
    let index: Index =
        serde_json::from_slice(&contents.read("index.json", shown)?).map_err(json)?;
    let mut names = Vec::new();
    for descriptor in &index.manifests {
        let Some(ref_name) = descriptor
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| {
                descriptor
                    .annotations
                    .get("org.opencontainers.image.ref.name")
            })
        else {
            continue;
        };
        // A bare tag ("latest", "v1") names no repository.
        if !ref_name.contains([':', '/', '@']) {
            continue;
        }
        let name = parse(ref_name)?.whole();
        let repo = name.split(['@']).next().unwrap_or(&name);
        let repo = repo
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map_or(repo, |(r, _)| r);
        let top_digest = descriptor.digest.clone();
        let mut manifest_digest = descriptor.digest.clone();
        let mut manifest_bytes = contents.read_blob(&manifest_digest, shown)?;
        if is_index(&descriptor.media_type)
            || serde_json::from_slice::<Manifest>(&manifest_bytes).is_err()
        {
            // A multi-platform index: take this host's entry.
            let nested: Index = serde_json::from_slice(&manifest_bytes).map_err(json)?;
            let chosen = nested
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == host_arch())
                })
                .ok_or_else(|| {
                    ImageError::bad(
                        shown,
                        format!("{name}: no linux/{} image in its index", host_arch()),
                    )
                })?;
            manifest_digest = chosen.digest.clone();
            manifest_bytes = contents.read_blob(&manifest_digest, shown)?;
        }
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ImageError::bad(shown, format!("manifest {manifest_digest}: {e}")))?;
        store.commit_blob_bytes(shown, &manifest_digest, &manifest_bytes)?;
        let config = contents.read_blob(&manifest.config.digest, shown)?;
        store.commit_blob_bytes(shown, &manifest.config.digest, &config)?;
        let mut layers = Vec::new();
        for layer in &manifest.layers {
            contents.store_blob(
                store,
                &blob_name(&layer.digest, shown)?,
                &layer.digest,
                shown,
            )?;
            layers.push(layer.digest.clone());
        }
        let image = store.install(
            &name,
            format!("{repo}@{top_digest}"),
            manifest_digest,
            &manifest.config.digest,
            layers,
        )?;
        tracing::info!(image = %image.reference, id = %image.image_id, "image imported");
        names.push(name);
    }
    Ok(names)
}

fn import_docker(
    store: &RegistryImageStore,
    contents: &Contents,
    shown: &str,
) -> Result<Vec<String>, ImageError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_slice(&contents.read("manifest.json", shown)?)
        .map_err(|e| ImageError::bad(shown, format!("invalid manifest.json: {e}")))?;
    let mut names = Vec::new();
    for entry in entries {
        let tags = entry.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            continue;
        }
        let config_path = normalise(entry.config.as_bytes(), "").ok_or_else(|| {
            ImageError::bad(
                shown,
                format!("config path {:?} escapes the archive", entry.config),
            )
        })?;
        let config = contents.read(&config_path, shown)?;
        let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        store.commit_blob_bytes(shown, &config_digest, &config)?;
        let mut layers = Vec::new();
        let mut descriptors = Vec::new();
        for layer in &entry.layers {
            let path = normalise(layer.as_bytes(), "").ok_or_else(|| {
                ImageError::bad(shown, format!("layer path {layer:?} escapes the archive"))
            })?;
            let file = contents.resolve(&path).ok_or_else(|| {
                ImageError::bad(shown, format!("{path} is missing from the archive"))
            })?;
            let (digest, size) = hash_file(file).map_err(ImageError::store("reading", file))?;
            contents.store_blob(store, &path, &digest, shown)?;
            descriptors.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size,
            }));
            layers.push(digest);
        }
        // docker save carries no registry manifest; the OCI manifest that describes the
        // same content gives the repo digest a stable, meaningful value.
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": descriptors,
        }))
        .expect("json");
        let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
        store.commit_blob_bytes(shown, &manifest_digest, &manifest)?;
        for tag in tags {
            let name = parse(&tag)?.whole();
            let repo = name
                .rsplit_once(':')
                .map_or(name.as_str(), |(r, _)| r)
                .to_string();
            let image = store.install(
                &name,
                format!("{repo}@{manifest_digest}"),
                manifest_digest.clone(),
                &config_digest,
                layers.clone(),
            )?;
            tracing::info!(image = %image.reference, id = %image.image_id, "image imported");
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(ImageError::bad(
            shown,
            "no image in manifest.json has RepoTags",
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_path_normalisation() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("blobs/sha256/ab", "", Some("blobs/sha256/ab")),
            ("./index.json", "", Some("index.json")),
            ("/manifest.json", "", Some("manifest.json")),
            ("../etc/passwd", "", None),
            ("a/../../x", "", None),
            ("../other/layer.tar", "one", Some("other/layer.tar")),
            ("../../x", "one", None),
            ("/abs", "one/two", Some("abs")),
        ];
        for (raw, base, want) in cases {
            assert_eq!(
                normalise(raw.as_bytes(), base).as_deref(),
                *want,
                "{raw} from {base}"
            );
        }
    }
}
