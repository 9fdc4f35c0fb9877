//! Test support shared with the lead's tests and the e2e crate (feature `test-util`):
//! a real registry server on loopback, small busybox images, raw (hostile) layer tars,
//! and OCI / docker-save archives of an image.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciImageManifest, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A fresh directory under the system temp dir (removed by whoever made it).
pub fn unique_temp_dir(prefix: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// One entry of a hand-made tar, written byte for byte (no path sanitising, so it can
/// hold `..`, absolute paths and device nodes).
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub path: String,
    pub kind: RawKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// The type of a [`RawEntry`].
#[derive(Debug, Clone)]
pub enum RawKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    HardLink(String),
    CharDevice,
    BlockDevice,
    Fifo,
}

impl RawEntry {
    fn new(path: &str, kind: RawKind, mode: u32) -> RawEntry {
        RawEntry {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }
    pub fn file(path: &str, content: impl AsRef<[u8]>) -> RawEntry {
        RawEntry::new(path, RawKind::File(content.as_ref().to_vec()), 0o644)
    }
    pub fn dir(path: &str) -> RawEntry {
        RawEntry::new(path, RawKind::Dir, 0o755)
    }
    pub fn symlink(path: &str, target: &str) -> RawEntry {
        RawEntry::new(path, RawKind::Symlink(target.to_string()), 0o777)
    }
    pub fn hardlink(path: &str, target: &str) -> RawEntry {
        RawEntry::new(path, RawKind::HardLink(target.to_string()), 0o644)
    }
    pub fn char_device(path: &str) -> RawEntry {
        RawEntry::new(path, RawKind::CharDevice, 0o666)
    }
    pub fn block_device(path: &str) -> RawEntry {
        RawEntry::new(path, RawKind::BlockDevice, 0o660)
    }
    pub fn fifo(path: &str) -> RawEntry {
        RawEntry::new(path, RawKind::Fifo, 0o644)
    }
    pub fn mode(mut self, mode: u32) -> RawEntry {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> RawEntry {
        self.uid = uid;
        self.gid = gid;
        self
    }
    /// Replaces `from` by `to` in the path and link target.
    pub fn replace(&self, from: &str, to: &str) -> RawEntry {
        let mut out = self.clone();
        out.path = self.path.replace(from, to);
        out.kind = match &self.kind {
            RawKind::Symlink(t) => RawKind::Symlink(t.replace(from, to)),
            RawKind::HardLink(t) => RawKind::HardLink(t.replace(from, to)),
            other => other.clone(),
        };
        out
    }
}

/// A plain (uncompressed) tar of `entries`, headers written without any checks.
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (kind, data, link): (tar::EntryType, &[u8], Option<&str>) = match &entry.kind {
            RawKind::File(data) => (tar::EntryType::Regular, data, None),
            RawKind::Dir => (tar::EntryType::Directory, &[], None),
            RawKind::Symlink(t) => (tar::EntryType::Symlink, &[], Some(t)),
            RawKind::HardLink(t) => (tar::EntryType::Link, &[], Some(t)),
            RawKind::CharDevice => (tar::EntryType::Char, &[], None),
            RawKind::BlockDevice => (tar::EntryType::Block, &[], None),
            RawKind::Fifo => (tar::EntryType::Fifo, &[], None),
        };
        {
            let gnu = header.as_gnu_mut().expect("gnu header");
            let name = entry.path.as_bytes();
            assert!(name.len() < 100, "raw_tar path too long: {}", entry.path);
            gnu.name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                let link = link.as_bytes();
                assert!(link.len() < 100, "raw_tar link too long");
                gnu.linkname[..link.len()].copy_from_slice(link);
            }
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mtime(0);
        header.set_cksum();
        builder.append(&header, data).expect("append to a Vec");
    }
    builder.into_inner().expect("finish a Vec")
}

/// gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("write to a Vec");
    encoder.finish().expect("finish a Vec")
}

/// The execution parameters of a test image.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// Busybox applets linked in test images.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "httpd", "wget", "nc", "true", "false", "env", "id",
    "touch", "mkdir", "rm", "cp", "mv", "ln", "ps", "kill", "grep", "sed", "awk", "head", "tail",
    "wc", "date", "hostname", "printf", "test", "[", "uname", "whoami", "tee", "stat", "find",
    "xargs", "chmod", "chown", "pwd", "dd", "du", "df", "free", "top", "seq", "yes", "sync",
    "mount", "umount", "ip", "ifconfig", "ping", "nslookup", "vi", "pidof",
];

/// An image held in memory: layer blobs (as they are pushed) and its config.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// Layer blobs, gzip or plain tar.
    pub layers: Vec<Vec<u8>>,
    options: ImageOptions,
}

impl TestImage {
    /// One gzip layer: `/bin/busybox` (Debian busybox-static) with symlinks for
    /// [`BUSYBOX_APPLETS`], `/etc/passwd` and `/etc/group` with root and nobody (65534),
    /// and empty `/tmp`, `/proc`, `/sys`, `/dev`.
    pub fn busybox(options: ImageOptions) -> Result<TestImage> {
        let busybox = std::fs::read("/bin/busybox")
            .context("reading /bin/busybox (Debian busybox-static)")?;
        let mut entries = vec![
            RawEntry::dir("bin"),
            RawEntry::file("bin/busybox", busybox).mode(0o755),
            RawEntry::dir("etc"),
            RawEntry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
            RawEntry::file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
            RawEntry::dir("tmp").mode(0o1777),
            RawEntry::dir("root").mode(0o700),
            RawEntry::dir("proc"),
            RawEntry::dir("sys"),
            RawEntry::dir("dev"),
        ];
        for applet in BUSYBOX_APPLETS {
            entries.push(RawEntry::symlink(&format!("bin/{applet}"), "busybox"));
        }
        let mut options = options;
        if options.env.is_empty() {
            options.env =
                vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
        }
        Ok(TestImage {
            layers: vec![gzip(&raw_tar(&entries))],
            options,
        })
    }

    /// An image of the given layer blobs.
    pub fn from_layers(layers: Vec<Vec<u8>>, options: ImageOptions) -> TestImage {
        TestImage { layers, options }
    }

    /// Adds a layer blob on top (gzip or plain tar).
    pub fn with_layer(mut self, blob: Vec<u8>) -> TestImage {
        self.layers.push(blob);
        self
    }

    /// The OCI image config document.
    pub fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self
            .layers
            .iter()
            .map(|blob| {
                if blob.starts_with(&[0x1f, 0x8b]) {
                    let mut plain = Vec::new();
                    flate2::read::GzDecoder::new(&blob[..])
                        .read_to_end(&mut plain)
                        .expect("test layer gunzips");
                    sha256_digest(&plain)
                } else {
                    sha256_digest(blob)
                }
            })
            .collect();
        let o = &self.options;
        let mut config = serde_json::Map::new();
        if let Some(e) = &o.entrypoint {
            config.insert("Entrypoint".into(), serde_json::json!(e));
        }
        if let Some(c) = &o.cmd {
            config.insert("Cmd".into(), serde_json::json!(c));
        }
        config.insert("Env".into(), serde_json::json!(o.env));
        if let Some(w) = &o.working_dir {
            config.insert("WorkingDir".into(), serde_json::json!(w));
        }
        if let Some(u) = &o.user {
            config.insert("User".into(), serde_json::json!(u));
        }
        serde_json::to_vec(&serde_json::json!({
            "architecture": host_arch(),
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("json")
    }

    /// `sha256:` digest of the config: the image id a store reports.
    pub fn image_id(&self) -> String {
        sha256_digest(&self.config_json())
    }

    fn oci_layers(&self) -> Vec<ImageLayer> {
        self.layers
            .iter()
            .map(|blob| {
                let media_type = if blob.starts_with(&[0x1f, 0x8b]) {
                    IMAGE_LAYER_GZIP_MEDIA_TYPE
                } else {
                    IMAGE_LAYER_MEDIA_TYPE
                };
                ImageLayer::new(blob.clone(), media_type.to_string(), None)
            })
            .collect()
    }

    /// The OCI image manifest (bytes as written to archives and pushed).
    pub fn manifest(&self) -> OciImageManifest {
        OciImageManifest::build(
            &self.oci_layers(),
            &Config::oci_v1(self.config_json(), None),
            None,
        )
    }

    /// Writes an OCI image-layout tar (as `skopeo copy ... oci-archive:`) naming the image
    /// `name` in `index.json`'s `org.opencontainers.image.ref.name`.
    pub fn write_oci_archive(&self, name: &str, path: &Path) -> Result<()> {
        let manifest = serde_json::to_vec(&self.manifest())?;
        let manifest_digest = sha256_digest(&manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": name},
            }],
        });
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), serde_json::to_vec(&index)?),
        ];
        for blob in [manifest, self.config_json()]
            .into_iter()
            .chain(self.layers.iter().cloned())
        {
            let hex = sha256_digest(&blob)
                .trim_start_matches("sha256:")
                .to_string();
            files.push((format!("blobs/sha256/{hex}"), blob));
        }
        write_tar(path, &files)
    }

    /// Writes a `docker save` tar: `manifest.json` with `RepoTags`, `<id>.json` config,
    /// one uncompressed `<hex>/layer.tar` per layer.
    pub fn write_docker_archive(&self, repo_tag: &str, path: &Path) -> Result<()> {
        let config = self.config_json();
        let config_name = format!(
            "{}.json",
            sha256_digest(&config).trim_start_matches("sha256:")
        );
        let mut files = vec![(config_name.clone(), config)];
        let mut layer_names = Vec::new();
        for blob in &self.layers {
            let plain = if blob.starts_with(&[0x1f, 0x8b]) {
                let mut plain = Vec::new();
                flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut plain)?;
                plain
            } else {
                blob.clone()
            };
            let name = format!(
                "{}/layer.tar",
                sha256_digest(&plain).trim_start_matches("sha256:")
            );
            layer_names.push(name.clone());
            files.push((name, plain));
        }
        let manifest = serde_json::json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]);
        files.insert(0, ("manifest.json".into(), serde_json::to_vec(&manifest)?));
        write_tar(path, &files)
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes `files` (path, content) as a tar file.
pub fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut builder = tar::Builder::new(file);
    for (name, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, &content[..])?;
    }
    builder.into_inner()?.sync_all()?;
    Ok(())
}

/// User name accepted by [`TestRegistry::start_with_basic_auth`].
pub const TEST_REGISTRY_USER: &str = "kith";
/// Password accepted by [`TestRegistry::start_with_basic_auth`].
pub const TEST_REGISTRY_PASSWORD: &str = "kith-secret";
/// htpasswd line for the user and password above (bcrypt, low cost to keep tests fast).
const TEST_HTPASSWD: &str = "kith:$2b$05$v3gls1Hvsk.zCojCG9O4v.xtxbrZ55RRCeCP9jB.Ihs/Voq6Eip7O\n";

/// Debian's `docker-registry` serving on 127.0.0.1 (or another local address) with its
/// own storage; killed and removed on drop.
pub struct TestRegistry {
    child: Option<Child>,
    dir: PathBuf,
    address: String,
    auth: RegistryAuth,
}

impl TestRegistry {
    /// Starts `/usr/bin/docker-registry serve CONFIG` on a free loopback port and waits
    /// until `/v2/` answers.
    pub fn start() -> Result<TestRegistry> {
        Self::start_with(false, Ipv4Addr::LOCALHOST)
    }

    /// Like [`TestRegistry::start`], on a local address other than loopback (e.g. the
    /// test's side of a network lab, for agents in other network namespaces; they must
    /// name it with `--insecure-registry`).
    pub fn start_on(ip: Ipv4Addr) -> Result<TestRegistry> {
        Self::start_with(false, ip)
    }

    /// Like [`TestRegistry::start`], but every request needs HTTP Basic auth with
    /// [`TEST_REGISTRY_USER`] / [`TEST_REGISTRY_PASSWORD`] (pushes use them).
    pub fn start_with_basic_auth() -> Result<TestRegistry> {
        Self::start_with(true, Ipv4Addr::LOCALHOST)
    }

    fn start_with(basic_auth: bool, ip: Ipv4Addr) -> Result<TestRegistry> {
        let dir = unique_temp_dir("kith-test-registry")?;
        let auth = if basic_auth {
            RegistryAuth::Basic(TEST_REGISTRY_USER.into(), TEST_REGISTRY_PASSWORD.into())
        } else {
            RegistryAuth::Anonymous
        };
        let mut last_error = None;
        // A port found free can be taken before the registry binds it; try a few.
        for _ in 0..3 {
            match Self::start_in(&dir, basic_auth, ip) {
                Ok((child, address)) => {
                    return Ok(TestRegistry {
                        child: Some(child),
                        dir,
                        address,
                        auth,
                    })
                }
                Err(e) => last_error = Some(e),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_error.expect("tried"))
    }

    fn start_in(dir: &Path, basic_auth: bool, ip: Ipv4Addr) -> Result<(Child, String)> {
        let port = TcpListener::bind((ip, 0))?.local_addr()?.port();
        let address = format!("{ip}:{port}");
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
            storage.display()
        );
        if basic_auth {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, TEST_HTPASSWD)?;
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kith-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yaml)?;
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting /usr/bin/docker-registry (Debian docker-registry)")?;
        for _ in 0..200 {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("docker-registry exited with {status}: {log}");
            }
            if v2_answers(&address) {
                return Ok((child, address));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("docker-registry on {address} did not answer /v2/ within 10s")
    }

    /// `127.0.0.1:<port>` (or the address it was started on).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `127.0.0.1:<port>/<repo>:<tag>`.
    pub fn image(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.address)
    }

    /// Stops the server now (storage stays until drop): later pulls must fail.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Pushes `image` as `<repo>:<tag>`; returns the manifest digest (`sha256:…`).
    pub async fn push(&self, repo: &str, tag: &str, image: &TestImage) -> Result<String> {
        let client = self.client();
        let reference: Reference = self.image(repo, tag).parse()?;
        let layers = image.oci_layers();
        let config = Config::oci_v1(image.config_json(), None);
        client
            .push(
                &reference,
                &layers,
                config,
                &self.auth,
                Some(image.manifest()),
            )
            .await
            .with_context(|| format!("pushing {reference}"))?;
        let digest = client.fetch_manifest_digest(&reference, &self.auth).await?;
        Ok(digest)
    }

    /// Pushes a multi-platform index as `<repo>:<tag>` whose entries are `images` for the
    /// given architectures (linux); each image is also tagged `<tag>-<arch>`. Returns the
    /// index digest.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[(&TestImage, &str)],
    ) -> Result<String> {
        use oci_client::manifest::{
            ImageIndexEntry, OciImageIndex, Platform, OCI_IMAGE_INDEX_MEDIA_TYPE,
            OCI_IMAGE_MEDIA_TYPE,
        };
        let client = self.client();
        let mut manifests = Vec::new();
        for (image, arch) in images {
            let arch_tag = format!("{tag}-{arch}");
            self.push(repo, &arch_tag, image).await?;
            let reference: Reference = self.image(repo, &arch_tag).parse()?;
            let (bytes, digest) = client
                .pull_manifest_raw(&reference, &self.auth, &[OCI_IMAGE_MEDIA_TYPE])
                .await?;
            manifests.push(ImageIndexEntry {
                media_type: OCI_IMAGE_MEDIA_TYPE.to_string(),
                digest,
                size: bytes.len() as i64,
                platform: Some(Platform {
                    architecture: (*arch).into(),
                    os: "linux".into(),
                    os_version: None,
                    os_features: None,
                    variant: None,
                    features: None,
                }),
                annotations: None,
                artifact_type: None,
            });
        }
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()),
            manifests,
            artifact_type: None,
            annotations: None,
        };
        let reference: Reference = self.image(repo, tag).parse()?;
        client
            .push_manifest_list(&reference, &self.auth, index)
            .await?;
        Ok(client.fetch_manifest_digest(&reference, &self.auth).await?)
    }

    fn client(&self) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.address.clone()]),
            ..ClientConfig::default()
        })
    }

    /// Builds [`TestImage::busybox`] and pushes it; returns the manifest digest.
    pub async fn push_busybox(
        &self,
        repo: &str,
        tag: &str,
        options: ImageOptions,
    ) -> Result<String> {
        self.push(repo, tag, &TestImage::busybox(options)?).await
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn v2_answers(address: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    // 401: up, and asking for credentials.
    stream.read_exact(&mut head).is_ok() && (head.ends_with(b"200") || head.ends_with(b"401"))
}
