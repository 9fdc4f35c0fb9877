//! End-to-end harness: real `kith` processes driven by real clients.
//!
//! ```text
//!   test ──► Cluster::up() ──spawn──► $KITH_BIN up --data-dir <tmp> --listen 127.0.0.1:<port>
//!     │                                   │ stdout+stderr ──► <tmp>/kith.log
//!     │                                   └ writes <tmp>/kubeconfig once the API serves
//!     ├──► cluster.kubectl(Kubectl::V1_33, &[...])   pinned kubectl, KUBECONFIG=<tmp>/kubeconfig
//!     └──► cluster.client()                          kube::Client from the same kubeconfig
//! ```
//!
//! Every test starts its own cluster on a free loopback port and works in its own
//! namespace. When a test panics while its [`Cluster`] is alive, the server's log is
//! printed (nextest shows it with the failure). Tests written for both pinned kubectl
//! versions use [`kubectl_tests!`], which also makes a failing `anyhow::Result` panic
//! while the cluster is still alive, so its log is printed too.
//!
//! Environment:
//! - `KITH_BIN`: the kith binary (default `<workspace>/target/debug/kith`).
//! - `KITH_KUBECTL_1_30`, `KITH_KUBECTL_1_33`: pinned kubectl binaries (default
//!   `/opt/kith-tools/bin/kubectl-1.XX`, then the Google Cloud SDK's `kubectl.1.XX`).
//!   `scripts/install-test-deps.sh` installs them; `scripts/test.sh` sets all of these.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub mod agent;
pub mod bench;
pub mod etcd;
pub mod linkem;
pub mod netlab;
pub mod prometheus;
pub mod region;
pub mod tty;

/// How long `kith up` may take to write its kubeconfig and answer `/readyz`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one kubectl invocation.
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the example manifests (`<workspace>/manifests`).
pub fn manifests_dir() -> PathBuf {
    workspace_root().join("manifests")
}

/// The path of one example manifest.
pub fn manifest(name: &str) -> PathBuf {
    manifests_dir().join(name)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate lives inside the workspace")
        .to_path_buf()
}

/// The kith binary under test: `$KITH_BIN`, else `<workspace>/target/debug/kith`.
pub fn kith_bin() -> PathBuf {
    match std::env::var_os("KITH_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("debug").join("kith")
        }
    }
}

/// `kith token create [FLAGS] --data-dir DIR` against the running box of `data_dir`: a
/// join token (no flags) or the metrics token (`--metrics`).
pub fn kith_token(data_dir: &Path, flags: &[&str]) -> Result<String> {
    let out = std::process::Command::new(kith_bin())
        .args(["token", "create"])
        .args(flags)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .context("kith token create")?;
    if !out.status.success() {
        bail!(
            "kith token create {}: {}",
            flags.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A pinned kubectl release. Tests that exercise kubectl run once per version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kubectl {
    V1_30,
    V1_33,
}

impl Kubectl {
    pub const ALL: [Kubectl; 2] = [Kubectl::V1_30, Kubectl::V1_33];

    /// "1.30" or "1.33".
    pub fn minor(self) -> &'static str {
        match self {
            Kubectl::V1_30 => "1.30",
            Kubectl::V1_33 => "1.33",
        }
    }

    /// kubectl 1.32+ sends protobuf bodies for typed-client commands (`create namespace`,
    /// `create configmap`, ...).
    pub fn sends_protobuf(self) -> bool {
        self == Kubectl::V1_33
    }

    /// The binary: `$KITH_KUBECTL_1_XX`, `/opt/kith-tools/bin/kubectl-1.XX`, or the Google
    /// Cloud SDK's `kubectl.1.XX`, whichever exists first.
    pub fn path(self) -> PathBuf {
        let var = format!("KITH_KUBECTL_{}", self.minor().replace('.', "_"));
        let candidates = std::env::var_os(&var)
            .map(PathBuf::from)
            .into_iter()
            .chain([
                PathBuf::from(format!("/opt/kith-tools/bin/kubectl-{}", self.minor())),
                PathBuf::from(format!(
                    "/usr/lib/google-cloud-sdk/bin/kubectl.{}",
                    self.minor()
                )),
            ]);
        for c in candidates {
            if c.is_file() {
                return c;
            }
        }
        panic!(
            "no kubectl {} found (set {var} or run scripts/install-test-deps.sh)",
            self.minor()
        )
    }
}

/// Options for [`Cluster::up_with`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--watch-history N`: how many writes a watch can resume from.
    pub watch_history: Option<u64>,
    /// Run the agent (real containers). Off by default: most tests play the node
    /// themselves by writing pod status, and concurrent clusters must not share a bridge.
    pub agent: Option<AgentOptions>,
}

/// The agent of a test cluster: names unique to the test so clusters run side by side.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node_name: String,
    /// A /16 no other test uses, e.g. `10.201.0.0/16`.
    pub cluster_cidr: String,
    /// Bridge and nftables table name, at most 15 characters.
    pub bridge: String,
}

impl AgentOptions {
    /// Unique names for one test, derived from `tag` (≤ 8 chars), and a /16 no other
    /// live test process holds (two clusters on one /16 would route each other's pods).
    pub fn unique(tag: &str) -> AgentOptions {
        let n = claim_cidr_octet();
        AgentOptions {
            node_name: format!("node-{tag}"),
            cluster_cidr: format!("10.{n}.0.0/16"),
            bridge: format!("kt{}", &format!("{tag}{:05}", rand_u32() % 100_000)[..]),
        }
    }
}

/// A second octet in 100..250 for `10.N.0.0/16`, held until this test process exits.
fn claim_cidr_octet() -> u8 {
    claim_octet("kith-e2e-cidr", 100..=249)
        .expect("no free 10.N.0.0/16 for a test cluster")
        .octet
}

/// A number claimed from a pool shared by every test process on the machine: the lock
/// file `<tmp>/<pool>/<octet>` names the claiming process. Agent clusters keep their
/// claim until the process exits; a [`netlab::Lab`] releases its claim when dropped.
#[derive(Debug)]
pub struct Claim {
    pub octet: u8,
    /// The lock file.
    pub path: PathBuf,
}

impl Claim {
    /// Removes the lock file if it still names this process.
    pub fn release(self) {
        let holder = std::fs::read_to_string(&self.path).unwrap_or_default();
        if holder.trim() == std::process::id().to_string() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Claims a number in `range` that no live test process holds, starting at a random
/// point; a lock file whose process is gone is taken over.
pub fn claim_octet(pool: &str, range: std::ops::RangeInclusive<u8>) -> Result<Claim> {
    let (lo, hi) = (u32::from(*range.start()), u32::from(*range.end()));
    if lo > hi {
        bail!("empty range {range:?}");
    }
    let len = hi - lo + 1;
    let start = rand_u32() % len;
    for i in 0..len {
        if let Some(claim) = try_claim(pool, (lo + (start + i) % len) as u8)? {
            return Ok(claim);
        }
    }
    bail!("all {len} numbers of pool {pool} are held by live test processes")
}

/// Claims `n` if no live process holds it (taking over the lock file of a dead one).
pub fn try_claim(pool: &str, n: u8) -> Result<Option<Claim>> {
    let dir = std::env::temp_dir().join(pool);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(n.to_string());
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                std::io::Write::write_all(&mut f, std::process::id().to_string().as_bytes())?;
                return Ok(Some(Claim { octet: n, path }));
            }
            Err(_) => {
                if claim_holder_alive(&path) {
                    return Ok(None);
                }
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(None)
}

/// The numbers of `pool` whose lock file names a process that is gone.
pub fn dead_claims(pool: &str) -> Vec<u8> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir().join(pool)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse::<u8>().ok()?;
            (!claim_holder_alive(&e.path())).then_some(n)
        })
        .collect()
}

fn claim_holder_alive(path: &Path) -> bool {
    let holder = std::fs::read_to_string(path).unwrap_or_default();
    if holder.trim().is_empty() {
        // Created but not written yet: a claim in progress, unless it is old.
        return std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < Duration::from_secs(10)));
    }
    holder
        .trim()
        .parse::<u32>()
        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

/// One `kith up` process with its own data directory and loopback port.
pub struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    options: Options,
    child: Option<Child>,
    starts: u32,
}

impl Cluster {
    /// Starts a one-box cluster with default options.
    pub async fn up() -> Result<Cluster> {
        Cluster::up_with(Options::default()).await
    }

    /// Starts a one-box cluster and waits until it serves (kubeconfig written, `/readyz` ok).
    pub async fn up_with(options: Options) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("kith-e2e-").tempdir()?;
        let port = free_port()?;
        let mut cluster = Cluster {
            dir,
            port,
            options,
            child: None,
            starts: 0,
        };
        cluster.start().await?;
        Ok(cluster)
    }

    /// The data directory given to `kith up`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The admin kubeconfig kith wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("kubeconfig")
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Where the server's stdout and stderr go (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kith.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A scratch directory for files a test writes (deleted with the cluster).
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        std::fs::create_dir_all(&p).expect("create scratch dir");
        p
    }

    /// Starts kith on the same data directory and port, and waits until it serves.
    pub async fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("kith is already running");
        }
        let bin = kith_bin();
        if !bin.is_file() {
            bail!(
                "no kith binary at {} (build it with `cargo build --bin kith` or set KITH_BIN)",
                bin.display()
            );
        }
        std::fs::create_dir_all(self.data_dir())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        self.starts += 1;
        let mut header = log.try_clone()?;
        std::io::Write::write_all(
            &mut header,
            format!("==== kith start #{} ====\n", self.starts).as_bytes(),
        )?;
        let mut cmd = Command::new(&bin);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port));
        if let Some(n) = self.options.watch_history {
            cmd.arg("--watch-history").arg(n.to_string());
        }
        match &self.options.agent {
            None => {
                cmd.arg("--no-agent");
            }
            Some(a) => {
                cmd.arg("--node-name")
                    .arg(&a.node_name)
                    .arg("--cluster-cidr")
                    .arg(&a.cluster_cidr)
                    .arg("--pod-bridge")
                    .arg(&a.bridge);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = String::from("kubeconfig not written yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "kith exited while starting ({status}); log:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "kith did not become ready within {:?}: {last_err}; log:\n{}",
                    START_TIMEOUT,
                    self.log()
                );
            }
            if self.kubeconfig().is_file() {
                match tokio::time::timeout(Duration::from_secs(5), self.get_raw("/readyz")).await {
                    Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                    Ok(Ok(body)) => last_err = format!("/readyz answered {body:?}"),
                    Ok(Err(e)) => last_err = format!("/readyz: {e:#}"),
                    Err(_) => last_err = "/readyz timed out".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A kube-rs client using the kubeconfig's current context (the admin user).
    pub async fn client(&self) -> Result<kube::Client> {
        self.client_for(&KubeConfigOptions::default()).await
    }

    /// A kube-rs client for the given kubeconfig context/user.
    pub async fn client_for(&self, options: &KubeConfigOptions) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig(), options).await
    }

    /// GET a raw path (e.g. `/readyz`) as the admin user; the body as text.
    pub async fn get_raw(&self, path: &str) -> Result<String> {
        let client = self.client().await?;
        let req = http::Request::get(path).body(Vec::new())?;
        Ok(client.request_text(req).await?)
    }

    /// Creates a namespace (through kube-rs, JSON) and returns its name.
    pub async fn namespace(&self, name: &str) -> Result<String> {
        let api: Api<Namespace> = Api::all(self.client().await?);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("create namespace {name}"))?;
        Ok(name.to_string())
    }

    /// Runs a pinned kubectl with `KUBECONFIG` pointing at this cluster; never fails on
    /// the exit code (see [`Cluster::kubectl_ok`] for that).
    pub async fn kubectl(&self, version: Kubectl, args: &[&str]) -> Result<Output> {
        self.kubectl_with_stdin(version, args, None).await
    }

    /// Like [`Cluster::kubectl`], with bytes on stdin (for `-f -`).
    pub async fn kubectl_with_stdin(
        &self,
        version: Kubectl,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Output> {
        let mut cmd = self.kubectl_command(version, args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn kubectl")?;
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            let bytes = bytes.to_vec();
            // Write concurrently with reading output: large inputs would otherwise block.
            tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            });
        }
        match tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output()).await {
            Ok(out) => Ok(out?),
            Err(_) => bail!(
                "kubectl {} {} did not finish within {:?}",
                version.minor(),
                args.join(" "),
                KUBECTL_TIMEOUT
            ),
        }
    }

    fn kubectl_command(&self, version: Kubectl, args: &[&str]) -> Command {
        let mut cmd = Command::new(version.path());
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            // A cache shared between runs would hide discovery bugs and race across tests.
            .env(
                "KUBECACHEDIR",
                self.dir
                    .path()
                    .join(format!("kube-cache-{}", version.minor())),
            )
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl and requires exit code 0; returns stdout. The error carries the full
    /// command, exit code, stdout and stderr.
    pub async fn kubectl_ok(&self, version: Kubectl, args: &[&str]) -> Result<String> {
        let out = self.kubectl(version, args).await?;
        ensure_success(version, args, &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl with stdin and requires exit code 0; returns stdout.
    pub async fn kubectl_stdin_ok(
        &self,
        version: Kubectl,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<String> {
        let out = self.kubectl_with_stdin(version, args, Some(stdin)).await?;
        ensure_success(version, args, &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl and requires it to fail; returns stderr (where kubectl prints errors).
    pub async fn kubectl_err(&self, version: Kubectl, args: &[&str]) -> Result<String> {
        let out = self.kubectl(version, args).await?;
        ensure_failure(version, args, &out)?;
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs kubectl with stdin and requires it to fail; returns stderr.
    pub async fn kubectl_stdin_err(
        &self,
        version: Kubectl,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<String> {
        let out = self.kubectl_with_stdin(version, args, Some(stdin)).await?;
        ensure_failure(version, args, &out)?;
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `kubectl apply -f -` of a YAML text (client-side apply), in `namespace` if given.
    pub async fn apply_yaml(
        &self,
        version: Kubectl,
        namespace: Option<&str>,
        yaml: &str,
    ) -> Result<String> {
        let mut args = vec!["apply", "-f", "-"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        self.kubectl_stdin_ok(version, &args, yaml.as_bytes()).await
    }

    /// Starts a long-running kubectl (e.g. `get -w`) whose stdout is collected as it comes.
    pub fn kubectl_background(&self, version: Kubectl, args: &[&str]) -> Result<Background> {
        let mut cmd = self.kubectl_command(version, args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn kubectl")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().expect("piped"), stdout.clone());
        collect(child.stderr.take().expect("piped"), stderr.clone());
        Ok(Background {
            command: format!("kubectl {} {}", version.minor(), args.join(" ")),
            child,
            stdout,
            stderr,
        })
    }

    /// Sends SIGTERM and waits (at most 30 s) for kith to exit; returns its exit status.
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("kith is not running")?;
        let pid = child.id().context("kith already reaped")?;
        signal(pid, rustix::process::Signal::TERM)?;
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = child.start_kill();
                bail!(
                    "kith did not exit within 30 s of SIGTERM; log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// SIGTERM, then start again on the same data directory and port.
    pub async fn restart(&mut self) -> Result<()> {
        let status = self.stop().await?;
        if !status.success() {
            bail!("kith exited with {status} on SIGTERM; log:\n{}", self.log());
        }
        self.start().await
    }

    /// SIGKILL, and reap the process.
    pub async fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("kith is not running")?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Turns a test body's result into a panic while the cluster is still alive, so the
    /// server log is printed with the failure.
    pub fn check(&self, result: Result<()>) {
        if let Err(e) = result {
            panic!("{e:#}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if let Some(a) = &self.options.agent {
            // Containers outlive kith by design: remove them, their networks, the bridge.
            if let Some(mut child) = self.child.take() {
                if let Some(pid) = child.id() {
                    let _ = signal(pid, rustix::process::Signal::KILL);
                }
                let _ = child.try_wait();
            }
            let opts = kith_agent::run::AgentOptions {
                node_name: a.node_name.clone(),
                data_dir: self.data_dir().join("agent"),
                insecure_registries: Vec::new(),
                shim_binary: kith_bin(),
                node_ip: None,
                bridge: a.bridge.clone(),
                node_port: 10250,
                image_gc: Default::default(),
                seccomp_default: false,
            };
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(kith_agent::run::clean_up(&opts));
                }
            })
            .join();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== kith log ({}) =====\n{}\n===== end of kith log =====",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// A kube-rs client from any kubeconfig file.
pub async fn client_from_kubeconfig(
    path: &Path,
    options: &KubeConfigOptions,
) -> Result<kube::Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("read {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, options).await?;
    Ok(kube::Client::try_from(config)?)
}

fn signal(pid: u32, sig: rustix::process::Signal) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).context("bad pid")?;
    rustix::process::kill_process(pid, sig)?;
    Ok(())
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn collect<R: tokio::io::AsyncRead + Unpin + Send + 'static>(mut r: R, into: Arc<Mutex<Vec<u8>>>) {
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().expect("lock").extend_from_slice(&buf[..n]),
            }
        }
    });
}

fn describe(version: Kubectl, args: &[&str], out: &Output) -> String {
    format!(
        "kubectl {} {}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        version.minor(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ensure_success(version: Kubectl, args: &[&str], out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!("kubectl failed:\n{}", describe(version, args, out));
    }
    Ok(())
}

fn ensure_failure(version: Kubectl, args: &[&str], out: &Output) -> Result<()> {
    if out.status.success() {
        bail!(
            "kubectl succeeded but was expected to fail:\n{}",
            describe(version, args, out)
        );
    }
    Ok(())
}

/// Fails with both texts when `haystack` does not contain `needle`.
pub fn ensure_contains(haystack: &str, needle: &str) -> Result<()> {
    if !haystack.contains(needle) {
        bail!("expected to find {needle:?} in:\n{haystack}");
    }
    Ok(())
}

/// A kubectl running in the background; killed on drop.
pub struct Background {
    command: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Background {
    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("lock")).into_owned()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("lock")).into_owned()
    }

    /// Waits until stdout satisfies `done`, failing after `timeout` with what it printed.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.stdout();
            if done(&out) {
                return Ok(out);
            }
            if let Some(status) = self.child.try_wait()? {
                // Let the readers drain what the process wrote before it exited.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let out = self.stdout();
                if done(&out) {
                    return Ok(out);
                }
                bail!(
                    "`{}` exited ({status}) before {what}\n--- stdout ---\n{out}\n--- stderr ---\n{}",
                    self.command,
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "`{}` did not show {what} within {timeout:?}\n--- stdout ---\n{out}\n--- stderr ---\n{}",
                    self.command,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Declares one test per pinned kubectl for each listed function
/// `async fn name(cluster: &Cluster, kubectl: Kubectl) -> anyhow::Result<()>`:
/// `name::kubectl_1_30` and `name::kubectl_1_33`, each on a fresh cluster.
#[macro_export]
macro_rules! kubectl_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn kubectl_1_30() {
                    let cluster = $crate::Cluster::up()
                        .await
                        .unwrap_or_else(|e| panic!("kith did not start: {e:#}"));
                    cluster.check(super::$name(&cluster, $crate::Kubectl::V1_30).await);
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn kubectl_1_33() {
                    let cluster = $crate::Cluster::up()
                        .await
                        .unwrap_or_else(|e| panic!("kith did not start: {e:#}"));
                    cluster.check(super::$name(&cluster, $crate::Kubectl::V1_33).await);
                }
            }
        )*
    };
}

/// A loopback registry holding `busybox:1` and a one-box cluster whose agent (`agent`)
/// runs real containers: where the agent tests start. Returns the image's name too; keep
/// the registry alive as long as pods may pull.
pub async fn busybox_cluster(
    agent: AgentOptions,
) -> Result<(kith_agent::image::testing::TestRegistry, String, Cluster)> {
    use kith_agent::image::testing::{ImageOptions, TestRegistry};
    let registry = TestRegistry::start().context("start registry")?;
    registry
        .push_busybox("busybox", "1", ImageOptions::default())
        .await
        .context("push busybox")?;
    let image = registry.image("busybox", "1");
    let cluster = Cluster::up_with(Options {
        agent: Some(agent),
        ..Default::default()
    })
    .await?;
    Ok((registry, image, cluster))
}

impl Cluster {
    /// Polls `kubectl get pod POD -n NS -o jsonpath=JSONPATH` until `check` accepts its
    /// output (90 s at most; then the error says `what` was awaited and shows kith's log).
    pub async fn wait_pod(
        &self,
        k: Kubectl,
        ns: &str,
        pod: &str,
        jsonpath: &str,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = String::new();
        let jsonpath_arg = format!("jsonpath={jsonpath}");
        while Instant::now() < deadline {
            let out = self
                .kubectl(k, &["get", "pod", pod, "-n", ns, "-o", &jsonpath_arg])
                .await?;
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && check(&last) {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!(
            "timed out waiting for {pod}: {what}; last {jsonpath}: {last}\nkith log:\n{}",
            self.log()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_released_and_taken_over_from_the_dead() {
        let pool = format!("kith-e2e-claim-test-{}", rand_u32());
        let dir = std::env::temp_dir().join(&pool);
        let a = claim_octet(&pool, 7..=8).unwrap();
        let b = claim_octet(&pool, 7..=8).unwrap();
        assert_ne!(a.octet, b.octet);
        assert!(claim_octet(&pool, 7..=8).is_err(), "a full pool");
        assert!(try_claim(&pool, a.octet).unwrap().is_none(), "held by us");
        let freed = a.octet;
        a.release();
        let c = claim_octet(&pool, 7..=8).unwrap();
        assert_eq!(c.octet, freed);

        // A lock file naming a process that has exited.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = gone.id();
        gone.wait().unwrap();
        std::fs::write(dir.join("9"), dead_pid.to_string()).unwrap();
        assert_eq!(dead_claims(&pool), vec![9]);
        let d = try_claim(&pool, 9).unwrap().expect("taken over");
        assert!(dead_claims(&pool).is_empty());

        for claim in [b, c, d] {
            claim.release();
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }
}
