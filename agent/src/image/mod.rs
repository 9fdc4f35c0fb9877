//! Images: pull from OCI registries, keep blobs in a content store by digest, unpack
//! layers into one flattened read-only root filesystem per image, import image archives.
//!
//! ```text
//!  ensure(image, policy, creds)
//!     │  reference::normalise ─ PullPolicy ─ lookup record (dir/images/)
//!     ▼
//!  registry (oci-client) ──► dir/blobs/sha256/<hex>   (temp file, digest verified, rename)
//!     ▼
//!  unpack::apply_layer × N ──► dir/tmp/… ──rename──► dir/rootfs/<config hex>/  (overlay lowerdir)
//!     ▼
//!  record written last (dir/images/<hash of reference>.json): only then is the image "present"
//! ```
//! The decisions (pull policy, reference defaults, credential matching, whiteouts and
//! path safety) are pure functions; [`RegistryImageStore`] is the thin effectful part,
//! [`ImageStore`] the trait the sync loop talks to (a recording fake lives in `fake`).
//!
//! ```no_run
//! use kith_agent::image::{ImageStore, PullPolicy, RegistryImageStore};
//! # async fn example() -> Result<(), kith_agent::image::ImageError> {
//! let store = RegistryImageStore::open("/var/lib/kith/images".as_ref(), vec![])?;
//! let policy = PullPolicy::for_container("busybox:1.36", None);
//! let image = store.ensure("busybox:1.36", policy, &[]).await?;
//! println!("{} at {}", image.image_id, image.rootfs.display());
//! # Ok(()) }
//! ```

mod archive;
mod auth;
mod error;
#[cfg(any(test, feature = "test-util"))]
mod fake;
pub mod gc;
mod reference;
mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod unpack;

use std::future::Future;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use archive::import_archive;
pub use auth::{credentials_from_dockerconfigjson, RegistryCredential};
pub use error::ImageError;
#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeCall, FakeImageStore};
pub use reference::{has_explicit_tag, normalise_reference};
pub use store::RegistryImageStore;

/// When to contact the registry, as in a container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullPolicy {
    /// Always resolve the tag at the registry; reuse local layers when the digest matches.
    Always,
    /// Pull only when no image of that name is stored.
    IfNotPresent,
    /// Never pull; fail with `ErrImageNeverPull` when the image is not stored.
    Never,
}

impl PullPolicy {
    /// Kubernetes' defaulting: an explicit `imagePullPolicy` wins (unknown values fall
    /// back to the default); otherwise `:latest` or no tag (and no digest) → `Always`,
    /// anything else → `IfNotPresent`.
    pub fn for_container(image: &str, explicit: Option<&str>) -> PullPolicy {
        match explicit {
            Some("Always") => return PullPolicy::Always,
            Some("IfNotPresent") => return PullPolicy::IfNotPresent,
            Some("Never") => return PullPolicy::Never,
            _ => {}
        }
        if image.contains('@') {
            return PullPolicy::IfNotPresent;
        }
        match reference::explicit_tag(image) {
            None | Some("latest") => PullPolicy::Always,
            Some(_) => PullPolicy::IfNotPresent,
        }
    }

    /// The name Kubernetes uses for this policy.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// What a container needs from the image config (`config` of the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// ENTRYPOINT; replaced by the container's `command`.
    pub entrypoint: Option<Vec<String>>,
    /// CMD; replaced by `args`, dropped when `command` is set.
    pub cmd: Option<Vec<String>>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// WORKDIR, when the image sets one.
    pub working_dir: Option<String>,
    /// USER (`uid`, `uid:gid`, or a name), when the image sets one.
    pub user: Option<String>,
}

impl ImageConfig {
    /// Reads the execution parameters out of an OCI (or Docker) image config document.
    pub fn from_config_json(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
        #[derive(Deserialize)]
        struct Document {
            #[serde(default)]
            config: Option<Exec>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase")]
        struct Exec {
            #[serde(default)]
            entrypoint: Option<Vec<String>>,
            #[serde(default)]
            cmd: Option<Vec<String>>,
            #[serde(default)]
            env: Option<Vec<String>>,
            #[serde(default)]
            working_dir: Option<String>,
            #[serde(default)]
            user: Option<String>,
        }
        let document: Document =
            serde_json::from_slice(bytes).map_err(|e| ImageError::BadImage {
                image: String::new(),
                message: format!("invalid image config: {e}"),
            })?;
        let exec = document.config.unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(ImageConfig {
            entrypoint: exec.entrypoint,
            cmd: exec.cmd,
            env: exec.env.unwrap_or_default(),
            working_dir: non_empty(exec.working_dir),
            user: non_empty(exec.user),
        })
    }
}

/// An image that is stored and unpacked on this box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledImage {
    /// The normalised reference it was asked for (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// `sha256:<config digest>`, what `containerStatuses[].imageID` shows.
    pub image_id: String,
    /// `registry/repository@sha256:<manifest digest>` (the index digest for multi-arch images).
    pub repo_digest: String,
    /// Execution parameters from the image config.
    pub config: ImageConfig,
    /// Read-only unpacked root filesystem, usable as an overlayfs lowerdir. Never write to it.
    pub rootfs: PathBuf,
    /// Disk used by this image: its blobs plus its unpacked rootfs.
    pub size_bytes: u64,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Image ids (`sha256:…`) whose rootfs and names were removed.
    pub removed_images: Vec<String>,
    /// Bytes freed on disk (rootfs files and unreferenced blobs).
    pub freed_bytes: u64,
}

/// The agent's view of images: make sure one is present, and free disk when short.
pub trait ImageStore: Send + Sync {
    /// Makes `image` present according to `policy`, pulling with the first credential
    /// matching its registry (anonymous when none does).
    fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        creds: &[RegistryCredential],
    ) -> impl Future<Output = Result<PulledImage, ImageError>> + Send;

    /// Removes images not in `in_use` (image ids), least recently used first, until at
    /// least `bytes_to_free` bytes are freed (0: only unreferenced blobs), then drops blobs
    /// no stored image refers to.
    fn collect_garbage(
        &self,
        in_use: &[String],
        bytes_to_free: u64,
    ) -> impl Future<Output = Result<GcReport, ImageError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaulting() {
        let cases: &[(&str, Option<&str>, PullPolicy)] = &[
            ("busybox", None, PullPolicy::Always),
            ("busybox:latest", None, PullPolicy::Always),
            ("busybox:1.36", None, PullPolicy::IfNotPresent),
            ("127.0.0.1:5000/busybox", None, PullPolicy::Always),
            ("127.0.0.1:5000/busybox:v1", None, PullPolicy::IfNotPresent),
            ("localhost:5000/a/b:latest", None, PullPolicy::Always),
            ("busybox@sha256:0123", None, PullPolicy::IfNotPresent),
            ("busybox:1.36", Some("Always"), PullPolicy::Always),
            ("busybox", Some("Never"), PullPolicy::Never),
            ("busybox", Some("IfNotPresent"), PullPolicy::IfNotPresent),
            ("busybox:1", Some(""), PullPolicy::IfNotPresent),
        ];
        for (image, explicit, want) in cases {
            assert_eq!(
                PullPolicy::for_container(image, *explicit),
                *want,
                "{image} {explicit:?}"
            );
        }
    }

    #[test]
    fn image_config_from_oci_config() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],
            "Cmd":["-c","echo hi"],"Env":["PATH=/bin"],"WorkingDir":"/srv","User":"65534"},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config = ImageConfig::from_config_json(json).unwrap();
        assert_eq!(
            config,
            ImageConfig {
                entrypoint: Some(vec!["/bin/sh".into()]),
                cmd: Some(vec!["-c".into(), "echo hi".into()]),
                env: vec!["PATH=/bin".into()],
                working_dir: Some("/srv".into()),
                user: Some("65534".into()),
            }
        );
        let bare = ImageConfig::from_config_json(br#"{"config":{"WorkingDir":""}}"#).unwrap();
        assert_eq!(bare, ImageConfig::default());
        assert!(ImageConfig::from_config_json(b"not json").is_err());
    }
}
