//! The real image store: a content store of blobs by digest, one unpacked rootfs per
//! image config, and one small record per image name, all under one directory.
//!
//! ```text
//!  dir/blobs/sha256/<hex>      layers, configs, manifests (verified, then renamed in)
//!  dir/rootfs/<config hex>/    flattened read-only rootfs (renamed in when complete)
//!  dir/images/<hash>.json      name → ids, written last: its presence means "complete"
//!  dir/tmp/                    work in progress; emptied by `open`
//! ```
//! Every file and directory appears by `rename` only once complete, so a crash leaves
//! nothing that a later `ensure` takes for a complete image.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::auth::auth_for;
use super::error::registry_message;
use super::reference::{is_loopback_registry, parse};
use super::unpack::{apply_layer, open_layer};
use super::{
    GcReport, ImageConfig, ImageError, ImageStore, PullPolicy, PulledImage, RegistryCredential,
};

/// Blobs and unpacked roots without a record and younger than this are not collected by
/// default: another process (`kith image import`) may be installing them right now.
const DEFAULT_GC_GRACE: Duration = Duration::from_secs(600);
/// Images used (pulled, imported or looked up for a container) more recently than this are
/// not removed: a container may be about to start from one. The kubelet's
/// `imageMinimumGCAge` default.
const DEFAULT_IMAGE_MIN_AGE: Duration = Duration::from_secs(120);

/// What `dir/images/<hash>.json` holds for one image name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub reference: String,
    pub image_id: String,
    pub repo_digest: String,
    pub manifest_digest: String,
    pub layers: Vec<String>,
    pub config: ImageConfig,
    pub size_bytes: u64,
}

/// Images pulled from OCI registries (or imported from archives) into a directory.
/// Cheap to clone; clones share locks.
#[derive(Clone)]
pub struct RegistryImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    insecure_registries: Vec<String>,
    /// One lock per normalised name: concurrent `ensure`s of one image pull it once.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `ensure` holds it shared, garbage collection exclusively.
    gc: tokio::sync::RwLock<()>,
    gc_grace_secs: AtomicU64,
    image_min_age_secs: AtomicU64,
}

impl std::fmt::Debug for RegistryImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryImageStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl RegistryImageStore {
    /// Opens (creating) the store in `dir`. `insecure_registries` (`host:port`) may be
    /// reached over plain HTTP; loopback registries always may.
    pub fn open(
        dir: &Path,
        insecure_registries: Vec<String>,
    ) -> Result<RegistryImageStore, ImageError> {
        // oci-client's reqwest uses rustls without a bundled provider: ours is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        for sub in ["blobs/sha256", "rootfs", "images", "tmp"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(ImageError::store("creating", &path))?;
        }
        let tmp = dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(ImageError::store("reading", &tmp))? {
            let path = entry.map_err(ImageError::store("reading", &tmp))?.path();
            remove_path(&path).map_err(ImageError::store("removing leftover", &path))?;
        }
        Ok(RegistryImageStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                insecure_registries,
                locks: Mutex::default(),
                gc: tokio::sync::RwLock::new(()),
                gc_grace_secs: AtomicU64::new(DEFAULT_GC_GRACE.as_secs()),
                image_min_age_secs: AtomicU64::new(DEFAULT_IMAGE_MIN_AGE.as_secs()),
            }),
        })
    }

    /// How old an unreferenced blob or rootfs must be before garbage collection removes
    /// it (default 10 minutes; tests use zero).
    pub fn set_gc_grace(&self, grace: Duration) {
        self.inner
            .gc_grace_secs
            .store(grace.as_secs(), Ordering::Relaxed);
    }

    /// How long after its last use an image may be removed by garbage collection
    /// (default 2 minutes, as the kubelet's `imageMinimumGCAge`; tests use zero).
    pub fn set_image_min_age(&self, age: Duration) {
        self.inner
            .image_min_age_secs
            .store(age.as_secs(), Ordering::Relaxed);
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The stored image for `image` (any spelling of its name), if complete.
    pub fn lookup(&self, image: &str) -> Result<Option<PulledImage>, ImageError> {
        let name = parse(image)?.whole();
        Ok(self.load_record(&name)?.map(|record| self.pulled(record)))
    }

    /// Every stored image, sorted by name.
    pub fn images(&self) -> Result<Vec<PulledImage>, ImageError> {
        let mut out: Vec<PulledImage> = self
            .records()?
            .into_iter()
            .map(|(record, _)| self.pulled(record))
            .collect();
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    fn pulled(&self, record: ImageRecord) -> PulledImage {
        let rootfs = self.rootfs_path(&record.image_id);
        PulledImage {
            reference: record.reference,
            image_id: record.image_id,
            repo_digest: record.repo_digest,
            config: record.config,
            rootfs,
            size_bytes: record.size_bytes,
        }
    }

    fn rootfs_path(&self, image_id: &str) -> PathBuf {
        self.inner
            .dir
            .join("rootfs")
            .join(image_id.trim_start_matches("sha256:"))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        let hash = hex::encode(Sha256::digest(name.as_bytes()));
        self.inner.dir.join("images").join(format!("{hash}.json"))
    }

    fn load_record(&self, name: &str) -> Result<Option<ImageRecord>, ImageError> {
        let path = self.record_path(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::store("reading", &path)(e)),
        };
        let record: ImageRecord = serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::bad(name, format!("corrupt record {}: {e}", path.display()))
        })?;
        // A record without its rootfs (removed by hand) is not an image.
        if record.reference != name || !self.rootfs_path(&record.image_id).is_dir() {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// All records with their last-use time.
    fn records(&self) -> Result<Vec<(ImageRecord, SystemTime)>, ImageError> {
        let dir = self.inner.dir.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(ImageError::store("reading", &dir))? {
            let path = entry.map_err(ImageError::store("reading", &dir))?.path();
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes) else {
                continue;
            };
            let used = fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            out.push((record, used));
        }
        Ok(out)
    }

    fn touch(&self, name: &str) {
        let path = self.record_path(name);
        if let Ok(file) = fs::File::options().append(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// A fresh path under `dir/tmp`.
    pub(crate) fn temp_path(&self, kind: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.inner.dir.join("tmp").join(format!(
            "{kind}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// `dir/blobs/sha256/<hex>`, for well-formed sha256 digests only (a digest from a
    /// manifest is untrusted input that becomes a file name).
    pub(crate) fn blob_path(&self, image: &str, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| ImageError::bad(image, format!("unsupported digest {digest:?}")))?;
        Ok(self.inner.dir.join("blobs/sha256").join(hex))
    }

    pub(crate) fn has_blob(&self, image: &str, digest: &str) -> Result<bool, ImageError> {
        Ok(self.blob_path(image, digest)?.is_file())
    }

    /// Moves `temp` into the content store as `digest` after checking its content hashes
    /// to it. Returns its size.
    pub(crate) fn commit_blob_file(
        &self,
        image: &str,
        digest: &str,
        temp: &Path,
    ) -> Result<u64, ImageError> {
        let target = self.blob_path(image, digest)?;
        let result = (|| {
            let (actual, size) = hash_file(temp).map_err(ImageError::store("reading", temp))?;
            if actual != digest {
                return Err(ImageError::bad(
                    image,
                    format!("blob {digest} has digest {actual}"),
                ));
            }
            fs::rename(temp, &target).map_err(ImageError::store("storing blob", &target))?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(temp);
        }
        result
    }

    /// Stores `bytes` as `digest` (checked).
    pub(crate) fn commit_blob_bytes(
        &self,
        image: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(), ImageError> {
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if actual != digest {
            return Err(ImageError::bad(
                image,
                format!("blob {digest} has digest {actual}"),
            ));
        }
        let target = self.blob_path(image, digest)?;
        if target.is_file() {
            return Ok(());
        }
        let temp = self.temp_path("blob");
        fs::write(&temp, bytes).map_err(ImageError::store("writing", &temp))?;
        fs::rename(&temp, &target).map_err(ImageError::store("storing blob", &target))
    }

    /// Unpacks (if needed) and records an image whose config and layer blobs are stored.
    pub(crate) fn install(
        &self,
        name: &str,
        repo_digest: String,
        manifest_digest: String,
        config_digest: &str,
        layers: Vec<String>,
    ) -> Result<PulledImage, ImageError> {
        let config_path = self.blob_path(name, config_digest)?;
        let config_bytes =
            fs::read(&config_path).map_err(ImageError::store("reading", &config_path))?;
        let config = ImageConfig::from_config_json(&config_bytes).map_err(|e| e.for_image(name))?;
        let rootfs = self.ensure_rootfs(name, config_digest, &layers)?;
        let mut size_bytes = disk_usage(&rootfs)
            .map_err(ImageError::store("measuring", &rootfs))?
            + config_bytes.len() as u64;
        for layer in &layers {
            let path = self.blob_path(name, layer)?;
            size_bytes += fs::metadata(&path)
                .map_err(ImageError::store("reading", &path))?
                .len();
        }
        let record = ImageRecord {
            reference: name.to_string(),
            image_id: config_digest.to_string(),
            repo_digest,
            manifest_digest,
            layers,
            config,
            size_bytes,
        };
        let temp = self.temp_path("record");
        let bytes = serde_json::to_vec_pretty(&record).expect("record serialises");
        fs::write(&temp, bytes).map_err(ImageError::store("writing", &temp))?;
        let path = self.record_path(name);
        fs::rename(&temp, &path).map_err(ImageError::store("writing", &path))?;
        Ok(self.pulled(record))
    }

    fn ensure_rootfs(
        &self,
        name: &str,
        config_digest: &str,
        layers: &[String],
    ) -> Result<PathBuf, ImageError> {
        let target = self.rootfs_path(config_digest);
        if target.is_dir() {
            return Ok(target);
        }
        let temp = self.temp_path("rootfs");
        fs::create_dir(&temp).map_err(ImageError::store("creating", &temp))?;
        let unpacked = (|| {
            for layer in layers {
                let path = self.blob_path(name, layer)?;
                let file = fs::File::open(&path).map_err(ImageError::store("opening", &path))?;
                let bad = |e| ImageError::bad(name, format!("layer {layer}: {e}"));
                apply_layer(&temp, open_layer(file).map_err(bad)?).map_err(bad)?;
            }
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&temp, fs::Permissions::from_mode(0o755))
                .map_err(ImageError::store("chmod", &temp))
        })();
        if let Err(e) = unpacked {
            let _ = fs::remove_dir_all(&temp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&temp, &target) {
            let _ = fs::remove_dir_all(&temp);
            // Another process or task finished the same image first: theirs is as good.
            if !target.is_dir() {
                return Err(ImageError::store("storing rootfs", &target)(e));
            }
        }
        tracing::info!(image = name, rootfs = %target.display(), "image unpacked");
        Ok(target)
    }

    fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(name.to_string()).or_default().clone()
    }

    fn client_for(&self, reference: &Reference) -> Client {
        Client::new(ClientConfig {
            protocol: protocol_for(&self.inner.insecure_registries, reference),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(RegistryImageStore) -> Result<T, ImageError> + Send + 'static,
    ) -> Result<T, ImageError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| ImageError::Store {
                context: "background task",
                path: PathBuf::new(),
                source: io::Error::other(e.to_string()),
            })?
    }

    async fn ensure_inner(
        &self,
        image: &str,
        policy: PullPolicy,
        creds: &[RegistryCredential],
    ) -> Result<PulledImage, ImageError> {
        let reference = parse(image)?;
        let name = reference.whole();
        let _gc = self.inner.gc.read().await;
        let lock = self.lock_for(&name);
        let _guard = lock.lock().await;
        let existing = {
            let name = name.clone();
            self.blocking(move |store| store.load_record(&name)).await?
        };
        match (policy, existing) {
            (PullPolicy::Never, None) => Err(ImageError::NeverPull {
                image: image.to_string(),
            }),
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(record)) => {
                self.touch(&name);
                Ok(self.pulled(record))
            }
            (PullPolicy::Always, Some(record)) => {
                self.pull(&reference, &name, creds, Some(record)).await
            }
            (_, None) => self.pull(&reference, &name, creds, None).await,
        }
    }

    async fn pull(
        &self,
        reference: &Reference,
        name: &str,
        creds: &[RegistryCredential],
        existing: Option<ImageRecord>,
    ) -> Result<PulledImage, ImageError> {
        let client = self.client_for(reference);
        let auth = auth_for(reference.registry(), creds);
        let pull_error = |e: oci_client::errors::OciDistributionError| ImageError::Pull {
            image: name.to_string(),
            message: registry_message(&e),
        };
        tracing::info!(image = name, "pulling image");
        let (manifest, manifest_digest, config_json, list_digest) = client
            .pull_manifest_and_config_and_list_digest(reference, &auth)
            .await
            .map_err(pull_error)?;
        let repo_digest = format!(
            "{}/{}@{}",
            reference.registry(),
            reference.repository(),
            list_digest.as_deref().unwrap_or(&manifest_digest)
        );
        if let Some(record) = existing {
            if record.repo_digest == repo_digest {
                self.touch(name);
                return Ok(self.pulled(record));
            }
        }
        let config_digest = manifest.config.digest.clone();
        {
            let (name, digest, bytes) = (
                name.to_string(),
                config_digest.clone(),
                config_json.into_bytes(),
            );
            self.blocking(move |store| store.commit_blob_bytes(&name, &digest, &bytes))
                .await?;
        }
        let mut layers = Vec::new();
        for layer in &manifest.layers {
            if !self.has_blob(name, &layer.digest)? {
                self.download_layer(&client, reference, name, layer).await?;
            }
            layers.push(layer.digest.clone());
        }
        let name = name.to_string();
        let image = self
            .blocking(move |store| {
                store.install(&name, repo_digest, manifest_digest, &config_digest, layers)
            })
            .await?;
        tracing::info!(image = %image.reference, id = %image.image_id, "image pulled");
        Ok(image)
    }

    /// Streams one layer into a temp file, hashing as it goes and refusing more bytes
    /// than the manifest announced (a hostile registry must not fill the disk), then
    /// renames it into the content store once its digest matches.
    async fn download_layer(
        &self,
        client: &Client,
        reference: &Reference,
        name: &str,
        layer: &oci_client::manifest::OciDescriptor,
    ) -> Result<(), ImageError> {
        use futures::TryStreamExt;
        let target = self.blob_path(name, &layer.digest)?;
        let expected = u64::try_from(layer.size).map_err(|_| {
            ImageError::bad(
                name,
                format!("layer {} has size {}", layer.digest, layer.size),
            )
        })?;
        let temp = self.temp_path("layer");
        let fetched = async {
            let mut stream = client
                .pull_blob_stream(reference, layer)
                .await
                .map_err(|e| ImageError::Pull {
                    image: name.to_string(),
                    message: registry_message(&e),
                })?;
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(ImageError::store("creating", &temp))?;
            let mut hasher = Sha256::new();
            let mut written = 0u64;
            while let Some(chunk) = stream.try_next().await.map_err(|e| ImageError::Pull {
                image: name.to_string(),
                message: format!("reading layer {}: {e}", layer.digest),
            })? {
                written += chunk.len() as u64;
                if written > expected {
                    return Err(ImageError::bad(
                        name,
                        format!(
                            "layer {} is larger than the {expected} bytes its manifest says",
                            layer.digest
                        ),
                    ));
                }
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(ImageError::store("writing", &temp))?;
            }
            file.sync_all()
                .await
                .map_err(ImageError::store("writing", &temp))?;
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != layer.digest || written != expected {
                return Err(ImageError::bad(
                    name,
                    format!(
                        "layer {} arrived as {actual} ({written} of {expected} bytes)",
                        layer.digest
                    ),
                ));
            }
            tokio::fs::rename(&temp, &target)
                .await
                .map_err(ImageError::store("storing blob", &target))
        }
        .await;
        if fetched.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        fetched
    }

    fn collect_garbage_blocking(
        &self,
        in_use: &[String],
        bytes_to_free: u64,
    ) -> Result<GcReport, ImageError> {
        let now = SystemTime::now();
        let grace = Duration::from_secs(self.inner.gc_grace_secs.load(Ordering::Relaxed));
        let in_use: HashSet<&str> = in_use.iter().map(String::as_str).collect();
        let records = self.records()?;
        // image id → (last use, names)
        let mut images: HashMap<String, (SystemTime, Vec<String>)> = HashMap::new();
        for (record, used) in &records {
            let entry = images
                .entry(record.image_id.clone())
                .or_insert((UNIX_EPOCH, Vec::new()));
            entry.0 = entry.0.max(*used);
            entry.1.push(record.reference.clone());
        }
        let min_age = Duration::from_secs(self.inner.image_min_age_secs.load(Ordering::Relaxed));
        let old_enough =
            |used: &SystemTime| now.duration_since(*used).unwrap_or_default() >= min_age;
        let mut candidates: Vec<(SystemTime, String)> = images
            .iter()
            .filter(|(id, (used, _))| !in_use.contains(id.as_str()) && old_enough(used))
            .map(|(id, (used, _))| (*used, id.clone()))
            .collect();
        candidates.sort();
        let mut report = GcReport::default();
        let mut removed: HashSet<String> = HashSet::new();
        for (_, id) in candidates {
            if report.freed_bytes >= bytes_to_free {
                break;
            }
            for name in &images[&id].1 {
                let path = self.record_path(name);
                fs::remove_file(&path).map_err(ImageError::store("removing", &path))?;
            }
            let rootfs = self.rootfs_path(&id);
            report.freed_bytes += self.remove_rootfs(&rootfs)?;
            tracing::info!(image_id = %id, names = ?images[&id].1, "image removed");
            removed.insert(id.clone());
            report.removed_images.push(id);
        }
        // Drop what no remaining record needs: blobs, and roots left without a name.
        let mut keep_blobs: HashSet<String> = HashSet::new();
        let mut keep_roots: HashSet<String> = in_use
            .iter()
            .map(|id| id.trim_start_matches("sha256:").to_string())
            .collect();
        for (record, _) in records
            .iter()
            .filter(|(r, _)| !removed.contains(&r.image_id))
        {
            keep_blobs.insert(record.image_id.trim_start_matches("sha256:").to_string());
            keep_blobs.insert(
                record
                    .manifest_digest
                    .trim_start_matches("sha256:")
                    .to_string(),
            );
            keep_blobs.extend(
                record
                    .layers
                    .iter()
                    .map(|l| l.trim_start_matches("sha256:").to_string()),
            );
            keep_roots.insert(record.image_id.trim_start_matches("sha256:").to_string());
        }
        let young = |meta: &fs::Metadata| {
            meta.modified()
                .is_ok_and(|m| now.duration_since(m).unwrap_or_default() < grace)
        };
        let blobs = self.inner.dir.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(ImageError::store("reading", &blobs))? {
            let entry = entry.map_err(ImageError::store("reading", &blobs))?;
            let hex = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if keep_blobs.contains(&hex) || young(&meta) {
                continue;
            }
            fs::remove_file(entry.path()).map_err(ImageError::store("removing", entry.path()))?;
            report.freed_bytes += meta.len();
        }
        let roots = self.inner.dir.join("rootfs");
        for entry in fs::read_dir(&roots).map_err(ImageError::store("reading", &roots))? {
            let entry = entry.map_err(ImageError::store("reading", &roots))?;
            let hex = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if keep_roots.contains(&hex) || young(&meta) {
                continue;
            }
            report.freed_bytes += self.remove_rootfs(&entry.path())?;
        }
        Ok(report)
    }

    /// Renames a rootfs away before deleting it, so a half-deleted tree is never found
    /// under its name. Returns the bytes freed.
    fn remove_rootfs(&self, rootfs: &Path) -> Result<u64, ImageError> {
        if !rootfs.is_dir() {
            return Ok(0);
        }
        let size = disk_usage(rootfs).map_err(ImageError::store("measuring", rootfs))?;
        let doomed = self.temp_path("gc");
        fs::rename(rootfs, &doomed).map_err(ImageError::store("removing", rootfs))?;
        fs::remove_dir_all(&doomed).map_err(ImageError::store("removing", &doomed))?;
        Ok(size)
    }
}

impl ImageStore for RegistryImageStore {
    fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        creds: &[RegistryCredential],
    ) -> impl std::future::Future<Output = Result<PulledImage, ImageError>> + Send {
        self.ensure_inner(image, policy, creds)
    }

    fn collect_garbage(
        &self,
        in_use: &[String],
        bytes_to_free: u64,
    ) -> impl std::future::Future<Output = Result<GcReport, ImageError>> + Send {
        let in_use = in_use.to_vec();
        async move {
            let _exclusive = self.inner.gc.write().await;
            self.blocking(move |store| store.collect_garbage_blocking(&in_use, bytes_to_free))
                .await
        }
    }
}

/// Plain HTTP only for registries named insecure and for loopback ones (as Docker does);
/// HTTPS for every other.
fn protocol_for(insecure_registries: &[String], reference: &Reference) -> ClientProtocol {
    let mut plain_http = insecure_registries.to_vec();
    for registry in [reference.registry(), reference.resolve_registry()] {
        if is_loopback_registry(registry) && !plain_http.iter().any(|r| r == registry) {
            plain_http.push(registry.to_string());
        }
    }
    ClientProtocol::HttpsExcept(plain_http)
}

/// `sha256:<hex>` and size of a file, streamed.
pub(crate) fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// Bytes of regular files under `dir` (hard links counted once), not following symlinks.
fn disk_usage(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

fn remove_path(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_named_registries() {
        let insecure = vec!["10.0.0.5:5000".to_string()];
        let cases: &[(&str, &[&str])] = &[
            (
                "127.0.0.1:5000/busybox",
                &["10.0.0.5:5000", "127.0.0.1:5000"],
            ),
            ("localhost:5000/a/b:1", &["10.0.0.5:5000", "localhost:5000"]),
            ("10.0.0.5:5000/busybox", &["10.0.0.5:5000"]),
            ("10.0.0.6:5000/busybox", &["10.0.0.5:5000"]),
            ("busybox", &["10.0.0.5:5000"]),
            ("quay.io/org/app:1", &["10.0.0.5:5000"]),
        ];
        for (image, want) in cases {
            let reference = parse(image).unwrap();
            let want = ClientProtocol::HttpsExcept(want.iter().map(|s| s.to_string()).collect());
            assert_eq!(protocol_for(&insecure, &reference), want, "{image}");
        }
    }
}
