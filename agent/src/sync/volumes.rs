//! Pod volumes on the box: which host directory backs each volume, and the files that
//! configMap, secret, downwardAPI and projected volumes hold.
//!
//! ```text
//!  Pod.spec.volumes ──► layout() ──► VolumePlan { name → Source }     (pure)
//!      ConfigMaps/Secrets (fetched) ─┘      │
//!                                           └──► prepare(): dirs, tmpfs, files (effects)
//! ```
//! Unknown volume types are refused with a clear error instead of being mounted empty.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod, Secret, Volume,
};

/// Kubernetes' default mode for projected files (0644).
const DEFAULT_MODE: i32 = 0o644;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("volume {volume:?}: {kind} {name:?} not found")]
    MissingSource {
        volume: String,
        kind: &'static str,
        name: String,
    },
    #[error("volume {volume:?}: key {key:?} not found in {kind} {name:?}")]
    MissingKey {
        volume: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("volume {volume:?}: path {path:?} must be relative and must not contain '..'")]
    BadPath { volume: String, path: String },
    #[error("volume {0:?}: volume type not supported by kith")]
    Unsupported(String),
    #[error("volume {volume:?}: unsupported field path {field:?}")]
    BadField { volume: String, field: String },
    #[error("volume {volume:?}: hostPath {path:?}: {message}")]
    HostPath {
        volume: String,
        path: String,
        message: String,
    },
    #[error("volume {volume:?}: {message}")]
    Io { volume: String, message: String },
}

/// One file of a configMap/secret/downwardAPI/projected volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// What backs one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory of the pod's own; `memory` puts a tmpfs on it.
    EmptyDir {
        memory: bool,
        size_limit: Option<String>,
    },
    /// A path of the host, used as it is.
    HostPath { path: PathBuf, kind: Option<String> },
    /// A directory the agent fills with these files.
    Files(Vec<File>),
}

/// ConfigMaps and Secrets of the pod's namespace, by name, as fetched for this pod.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
}

/// Names of the ConfigMaps and Secrets the pod's volumes, env and envFrom refer to.
pub fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let spec = match &pod.spec {
        Some(s) => s,
        None => return (cms, secrets),
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.push(c.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.extend(s.secret_name.clone());
        }
        if let Some(p) = &v.projected {
            for s in p.sources.iter().flatten() {
                if let Some(c) = &s.config_map {
                    cms.push(c.name.clone());
                }
                if let Some(s) = &s.secret {
                    secrets.push(s.name.clone());
                }
            }
        }
    }
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    cms.push(r.name.clone());
                }
                if let Some(r) = &from.secret_key_ref {
                    secrets.push(r.name.clone());
                }
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &e.secret_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        secrets.push(s.name.clone());
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// ConfigMap data (text and binary) as bytes by key.
pub fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

/// Secret data (and stringData, which the API server normally folds in) as bytes by key.
pub fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

fn check_path(volume: &str, path: &str) -> Result<(), VolumeError> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_)) || matches!(c, Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::BadPath {
            volume: volume.into(),
            path: path.into(),
        })
    }
}

/// Files for `data` (key → bytes): every key, or only `items` (key → path, mode).
fn key_files(
    volume: &str,
    kind: &'static str,
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
) -> Result<Vec<File>, VolumeError> {
    let mode = default_mode.unwrap_or(DEFAULT_MODE) as u32;
    match items {
        None => Ok(data
            .iter()
            .map(|(k, v)| File {
                path: k.clone(),
                data: v.clone(),
                mode,
            })
            .collect()),
        Some(items) => items
            .iter()
            .map(|item| {
                check_path(volume, &item.path)?;
                let data = data.get(&item.key).ok_or_else(|| VolumeError::MissingKey {
                    volume: volume.into(),
                    kind,
                    name: name.into(),
                    key: item.key.clone(),
                })?;
                Ok(File {
                    path: item.path.clone(),
                    data: data.clone(),
                    mode: item.mode.map(|m| m as u32).unwrap_or(mode),
                })
            })
            .collect(),
    }
}

/// The value of a downward API `fieldRef` for a volume file.
fn field_value(
    pod: &Pod,
    volume: &str,
    field: &ObjectFieldSelector,
) -> Result<String, VolumeError> {
    let meta = &pod.metadata;
    let map_text = |m: Option<&BTreeMap<String, String>>| {
        m.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let path = field.field_path.as_str();
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_text(meta.labels.as_ref()),
        "metadata.annotations" => map_text(meta.annotations.as_ref()),
        _ => {
            let key = path
                .strip_prefix("metadata.labels['")
                .map(|k| (k, meta.labels.as_ref()))
                .or_else(|| {
                    path.strip_prefix("metadata.annotations['")
                        .map(|k| (k, meta.annotations.as_ref()))
                });
            match key {
                Some((k, map)) if k.ends_with("']") => {
                    let k = &k[..k.len() - 2];
                    map.and_then(|m| m.get(k)).cloned().unwrap_or_default()
                }
                _ => {
                    return Err(VolumeError::BadField {
                        volume: volume.into(),
                        field: path.into(),
                    })
                }
            }
        }
    };
    Ok(value)
}

fn downward_files(
    pod: &Pod,
    volume: &str,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<Vec<File>, VolumeError> {
    let mode = default_mode.unwrap_or(DEFAULT_MODE) as u32;
    items
        .iter()
        .map(|item| {
            check_path(volume, &item.path)?;
            let value = match (&item.field_ref, &item.resource_field_ref) {
                (Some(f), _) => field_value(pod, volume, f)?,
                (None, Some(r)) => {
                    let container = pod
                        .spec
                        .iter()
                        .flat_map(|s| s.containers.iter())
                        .find(|c| Some(&c.name) == r.container_name.as_ref());
                    let resources = container
                        .and_then(|c| c.resources.clone())
                        .unwrap_or_default();
                    let (kind, res) = match r.resource.split_once('.') {
                        Some((k, res)) => (k, res),
                        None => ("limits", r.resource.as_str()),
                    };
                    let map = if kind == "requests" {
                        resources.requests
                    } else {
                        resources.limits
                    };
                    map.and_then(|m| m.get(res).map(|q| q.0.clone()))
                        .unwrap_or_default()
                }
                (None, None) => {
                    return Err(VolumeError::BadField {
                        volume: volume.into(),
                        field: item.path.clone(),
                    })
                }
            };
            Ok(File {
                path: item.path.clone(),
                data: value.into_bytes(),
                mode: item.mode.map(|m| m as u32).unwrap_or(mode),
            })
        })
        .collect()
}

/// What backs each of `pod`'s volumes (pure). Missing optional sources give empty
/// directories; missing required ones are errors, as the kubelet reports them.
pub fn layout(pod: &Pod, sources: &Sources) -> Result<BTreeMap<String, Source>, VolumeError> {
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        out.insert(v.name.clone(), source(pod, v, sources)?);
    }
    Ok(out)
}

fn source(pod: &Pod, v: &Volume, sources: &Sources) -> Result<Source, VolumeError> {
    let name = v.name.as_str();
    if let Some(e) = &v.empty_dir {
        return Ok(Source::EmptyDir {
            memory: e.medium.as_deref() == Some("Memory"),
            size_limit: e.size_limit.as_ref().map(|q| q.0.clone()),
        });
    }
    if let Some(h) = &v.host_path {
        return Ok(Source::HostPath {
            path: PathBuf::from(&h.path),
            kind: h.type_.clone().filter(|t| !t.is_empty()),
        });
    }
    if let Some(c) = &v.config_map {
        return match sources.config_maps.get(&c.name) {
            Some(cm) => Ok(Source::Files(key_files(
                name,
                "configmap",
                &c.name,
                &config_map_data(cm),
                c.items.as_ref(),
                c.default_mode,
            )?)),
            None if c.optional == Some(true) => Ok(Source::Files(Vec::new())),
            None => Err(VolumeError::MissingSource {
                volume: name.into(),
                kind: "configmap",
                name: c.name.clone(),
            }),
        };
    }
    if let Some(s) = &v.secret {
        let secret_name = s.secret_name.clone().unwrap_or_default();
        return match sources.secrets.get(&secret_name) {
            Some(secret) => Ok(Source::Files(key_files(
                name,
                "secret",
                &secret_name,
                &secret_data(secret),
                s.items.as_ref(),
                s.default_mode,
            )?)),
            None if s.optional == Some(true) => Ok(Source::Files(Vec::new())),
            None => Err(VolumeError::MissingSource {
                volume: name.into(),
                kind: "secret",
                name: secret_name,
            }),
        };
    }
    if let Some(d) = &v.downward_api {
        return Ok(Source::Files(downward_files(
            pod,
            name,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode,
        )?));
    }
    if let Some(p) = &v.projected {
        let mut files = Vec::new();
        for s in p.sources.iter().flatten() {
            if let Some(c) = &s.config_map {
                match sources.config_maps.get(&c.name) {
                    Some(cm) => files.extend(key_files(
                        name,
                        "configmap",
                        &c.name,
                        &config_map_data(cm),
                        c.items.as_ref(),
                        p.default_mode,
                    )?),
                    None if c.optional == Some(true) => {}
                    None => {
                        return Err(VolumeError::MissingSource {
                            volume: name.into(),
                            kind: "configmap",
                            name: c.name.clone(),
                        })
                    }
                }
            }
            if let Some(sec) = &s.secret {
                match sources.secrets.get(&sec.name) {
                    Some(secret) => files.extend(key_files(
                        name,
                        "secret",
                        &sec.name,
                        &secret_data(secret),
                        sec.items.as_ref(),
                        p.default_mode,
                    )?),
                    None if sec.optional == Some(true) => {}
                    None => {
                        return Err(VolumeError::MissingSource {
                            volume: name.into(),
                            kind: "secret",
                            name: sec.name.clone(),
                        })
                    }
                }
            }
            if let Some(d) = &s.downward_api {
                files.extend(downward_files(
                    pod,
                    name,
                    d.items.as_deref().unwrap_or_default(),
                    p.default_mode,
                )?);
            }
            if s.service_account_token.is_some() || s.cluster_trust_bundle.is_some() {
                return Err(VolumeError::Unsupported(name.into()));
            }
        }
        return Ok(Source::Files(files));
    }
    Err(VolumeError::Unsupported(name.into()))
}

/// Create the host side of every volume under `pod_dir/volumes/<name>` and return the
/// path each volume mounts from. Re-running rewrites the files (configMap updates).
pub fn prepare(
    pod_dir: &Path,
    layout: &BTreeMap<String, Source>,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for (name, source) in layout {
        let io = |e: std::io::Error| VolumeError::Io {
            volume: name.clone(),
            message: e.to_string(),
        };
        let dir = pod_dir.join("volumes").join(name);
        match source {
            Source::HostPath { path, kind } => {
                check_host_path(name, path, kind.as_deref())?;
                out.insert(name.clone(), path.clone());
            }
            Source::EmptyDir { memory, size_limit } => {
                std::fs::create_dir_all(&dir).map_err(io)?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(io)?;
                if *memory && !is_mountpoint(&dir) {
                    let size = size_limit
                        .as_deref()
                        .and_then(|q| crate::spec::quantity_bytes(q).ok())
                        .map(|b| format!("size={b}"));
                    nix::mount::mount(
                        Some("tmpfs"),
                        &dir,
                        Some("tmpfs"),
                        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                        size.as_deref(),
                    )
                    .map_err(|e| VolumeError::Io {
                        volume: name.clone(),
                        message: format!("mounting tmpfs: {e}"),
                    })?;
                }
                out.insert(name.clone(), dir);
            }
            Source::Files(files) => {
                // Written to a fresh directory, then swapped in: a reader never sees half.
                let staging = pod_dir.join("volumes").join(format!(".{name}.new"));
                let _ = std::fs::remove_dir_all(&staging);
                std::fs::create_dir_all(&staging).map_err(io)?;
                for f in files {
                    let target = staging.join(&f.path);
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::write(&target, &f.data).map_err(io)?;
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(f.mode))
                        .map_err(io)?;
                }
                if dir.exists() {
                    // Rewrite in place so existing bind mounts see the new content.
                    sync_dir(&staging, &dir).map_err(io)?;
                    let _ = std::fs::remove_dir_all(&staging);
                } else {
                    std::fs::rename(&staging, &dir).map_err(io)?;
                }
                out.insert(name.clone(), dir);
            }
        }
    }
    Ok(out)
}

/// Make `dst` hold exactly the files of `src`.
fn sync_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dst)? {
        let entry = entry?;
        if !src.join(entry.file_name()).exists() {
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(p)?;
            } else {
                std::fs::remove_file(p)?;
            }
        }
    }
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            sync_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn is_mountpoint(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let wanted = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(wanted.as_ref()))
}

/// The hostPath `type` checks the kubelet makes (and the creations it does).
fn check_host_path(volume: &str, path: &Path, kind: Option<&str>) -> Result<(), VolumeError> {
    let err = |message: &str| VolumeError::HostPath {
        volume: volume.into(),
        path: path.display().to_string(),
        message: message.into(),
    };
    if !path.is_absolute() {
        return Err(err("must be an absolute path"));
    }
    let meta = std::fs::metadata(path);
    match kind {
        None => Ok(()),
        Some("DirectoryOrCreate") => {
            if meta.is_err() {
                std::fs::create_dir_all(path).map_err(|e| err(&e.to_string()))?;
            }
            Ok(())
        }
        Some("FileOrCreate") => {
            if meta.is_err() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| err(&e.to_string()))?;
            }
            Ok(())
        }
        Some("Directory") => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(err("is not a directory")),
        },
        Some("File") => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(err("is not a file")),
        },
        Some("Socket") | Some("CharDevice") | Some("BlockDevice") => match meta {
            Ok(_) => Ok(()),
            Err(_) => Err(err("does not exist")),
        },
        Some(other) => Err(err(&format!("unknown hostPath type {other:?}"))),
    }
}

/// Undo what [`prepare`] mounted (tmpfs emptyDirs) and remove the pod's volume dirs.
pub fn cleanup(pod_dir: &Path) -> Result<(), std::io::Error> {
    let volumes = pod_dir.join("volumes");
    if let Ok(entries) = std::fs::read_dir(&volumes) {
        for entry in entries.flatten() {
            let p = entry.path();
            if is_mountpoint(&p) {
                nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(std::io::Error::from)?;
            }
        }
    }
    match std::fs::remove_dir_all(pod_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, ConfigMapVolumeSource, DownwardAPIVolumeSource, EmptyDirVolumeSource,
        PodSpec, ProjectedVolumeSource, SecretVolumeSource, VolumeProjection,
    };
    use k8s_openapi::ByteString;

    fn pod(volumes: Vec<Volume>) -> Pod {
        let mut p = Pod {
            spec: Some(PodSpec {
                volumes: Some(volumes),
                ..Default::default()
            }),
            ..Default::default()
        };
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p
    }

    fn vol(name: &str) -> Volume {
        Volume {
            name: name.into(),
            ..Default::default()
        }
    }

    fn sources() -> Sources {
        let cm = ConfigMap {
            data: Some(
                [
                    ("a.conf".to_string(), "A".to_string()),
                    ("b".to_string(), "B".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let secret = Secret {
            data: Some([("pw".to_string(), ByteString(b"hunter2".to_vec()))].into()),
            ..Default::default()
        };
        Sources {
            config_maps: [("cfg".to_string(), cm)].into(),
            secrets: [("creds".to_string(), secret)].into(),
        }
    }

    fn files(s: &Source) -> Vec<(String, String, u32)> {
        match s {
            Source::Files(f) => f
                .iter()
                .map(|f| {
                    (
                        f.path.clone(),
                        String::from_utf8_lossy(&f.data).into_owned(),
                        f.mode,
                    )
                })
                .collect(),
            other => panic!("not files: {other:?}"),
        }
    }

    #[test]
    fn layout_table() {
        let mut empty = vol("scratch");
        empty.empty_dir = Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..Default::default()
        });
        let mut cm = vol("config");
        cm.config_map = Some(ConfigMapVolumeSource {
            name: "cfg".into(),
            items: Some(vec![KeyToPath {
                key: "a.conf".into(),
                path: "conf/a.conf".into(),
                mode: Some(0o600),
            }]),
            ..Default::default()
        });
        let mut secret = vol("secret");
        secret.secret = Some(SecretVolumeSource {
            secret_name: Some("creds".into()),
            default_mode: Some(0o400),
            ..Default::default()
        });
        let mut down = vol("info");
        down.downward_api = Some(DownwardAPIVolumeSource {
            items: Some(vec![
                DownwardAPIVolumeFile {
                    path: "name".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                DownwardAPIVolumeFile {
                    path: "labels".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        let mut projected = vol("all");
        projected.projected = Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: "cfg".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let p = pod(vec![empty, cm, secret, down, projected]);
        let got = layout(&p, &sources()).unwrap();
        assert_eq!(
            got["scratch"],
            Source::EmptyDir {
                memory: true,
                size_limit: None
            }
        );
        assert_eq!(
            files(&got["config"]),
            vec![("conf/a.conf".into(), "A".into(), 0o600)]
        );
        assert_eq!(
            files(&got["secret"]),
            vec![("pw".into(), "hunter2".into(), 0o400)]
        );
        assert_eq!(
            files(&got["info"]),
            vec![
                ("name".into(), "web".into(), 0o644),
                ("labels".into(), "app=\"web\"".into(), 0o644)
            ]
        );
        assert_eq!(files(&got["all"]).len(), 2);
    }

    #[test]
    fn errors_table() {
        let mut missing = vol("m");
        missing.config_map = Some(ConfigMapVolumeSource {
            name: "nope".into(),
            ..Default::default()
        });
        let mut optional = vol("o");
        optional.config_map = Some(ConfigMapVolumeSource {
            name: "nope".into(),
            optional: Some(true),
            ..Default::default()
        });
        let mut escape = vol("e");
        escape.config_map = Some(ConfigMapVolumeSource {
            name: "cfg".into(),
            items: Some(vec![KeyToPath {
                key: "b".into(),
                path: "../../etc/passwd".into(),
                mode: None,
            }]),
            ..Default::default()
        });
        let mut bad_key = vol("k");
        bad_key.config_map = Some(ConfigMapVolumeSource {
            name: "cfg".into(),
            items: Some(vec![KeyToPath {
                key: "zzz".into(),
                path: "z".into(),
                mode: None,
            }]),
            ..Default::default()
        });
        let unknown = vol("u");
        let cases: Vec<(Volume, Option<&str>)> = vec![
            (missing, Some("configmap \"nope\" not found")),
            (optional, None),
            (escape, Some("must be relative")),
            (bad_key, Some("key \"zzz\" not found")),
            (unknown, Some("not supported")),
        ];
        for (v, want) in cases {
            let name = v.name.clone();
            let got = layout(&pod(vec![v]), &sources());
            match want {
                None => assert!(got.is_ok(), "{name}: {got:?}"),
                Some(msg) => {
                    let e = got.expect_err(&name).to_string();
                    assert!(e.contains(msg), "{name}: {e}");
                }
            }
        }
    }

    #[test]
    fn prepare_writes_files_and_rewrites_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut cm = vol("config");
        cm.config_map = Some(ConfigMapVolumeSource {
            name: "cfg".into(),
            ..Default::default()
        });
        let p = pod(vec![cm]);
        let mut s = sources();
        let paths = prepare(dir.path(), &layout(&p, &s).unwrap()).unwrap();
        let base = &paths["config"];
        assert_eq!(std::fs::read_to_string(base.join("a.conf")).unwrap(), "A");
        s.config_maps.get_mut("cfg").unwrap().data =
            Some([("b".to_string(), "B2".to_string())].into());
        prepare(dir.path(), &layout(&p, &s).unwrap()).unwrap();
        assert!(!base.join("a.conf").exists());
        assert_eq!(std::fs::read_to_string(base.join("b")).unwrap(), "B2");
        cleanup(dir.path()).unwrap();
        assert!(!dir.path().exists());
    }

    #[test]
    fn referenced_names() {
        let mut cm = vol("config");
        cm.config_map = Some(ConfigMapVolumeSource {
            name: "cfg".into(),
            ..Default::default()
        });
        let mut secret = vol("secret");
        secret.secret = Some(SecretVolumeSource {
            secret_name: Some("creds".into()),
            ..Default::default()
        });
        let (cms, secrets) = referenced(&pod(vec![cm, secret]));
        assert_eq!(cms, vec!["cfg"]);
        assert_eq!(secrets, vec!["creds"]);
    }
}
