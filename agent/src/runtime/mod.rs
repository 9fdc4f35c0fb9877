//! Running containers: the [`ContainerRuntime`] trait the sync loop drives, the real
//! implementation on libcontainer ([`LibcontainerRuntime`], one `kith shim` process per
//! container), a recording fake for tests, and the CRI log files (`crilog` writes them,
//! [`logs`] reads them for `kubectl logs`).
//!
//! ```text
//!  sync loop ──► ContainerRuntime::{start, list, stop, remove, exec, attach}
//!                    │ LibcontainerRuntime (in the agent, async, no libcontainer calls)
//!                    │   overlay rootfs, config.json, meta.json in a state dir
//!                    ▼
//!                kith shim run <dir>  ── libcontainer ──► container
//!                    └─ CRI log file, pids.json, exit.json  ◄── read back by list()
//! ```
//! Containers outlive the agent: everything `list` needs is in the state directories, so
//! a new agent process re-adopts what an earlier one started.

pub mod attach;
pub mod crilog;
pub mod exec_process;
mod libcontainer_runtime;
pub mod logs;
pub mod pty;
pub mod shim;
pub mod state;

#[cfg(any(test, feature = "test-util"))]
pub mod fake;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

pub use attach::StdinMode;
pub use libcontainer_runtime::{LibcontainerRuntime, RuntimeConfig};

/// One run of one container of one pod. `attempt` grows with each restart, so every run
/// has its own state directory and log file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerKey {
    pub pod_uid: String,
    pub container: String,
    pub attempt: u32,
}

impl ContainerKey {
    /// The stable directory name and libcontainer id: `<pod_uid>_<container>_<attempt>`.
    pub fn dir_name(&self) -> String {
        format!("{}_{}_{}", self.pod_uid, self.container, self.attempt)
    }

    /// Pod uids and container names are DNS-ish; anything else could escape the state
    /// directory or confuse libcontainer.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                && !s.starts_with('.')
        };
        if ok(&self.pod_uid) && ok(&self.container) {
            Ok(())
        } else {
            Err(RuntimeError::InvalidKey(self.dir_name()))
        }
    }
}

/// Why a container stopped, in the words Kubernetes uses for `state.terminated.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    Completed,
    Error,
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// The process never ran (e.g. the command does not exist).
    StartError,
    /// Its shim vanished before recording the exit.
    Unknown,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
            ExitReason::StartError => "StartError",
            ExitReason::Unknown => "Unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Set up, but the process is not running yet.
    Created,
    Running {
        pid: i32,
        started_at: Timestamp,
    },
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        reason: ExitReason,
        message: Option<String>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub key: ContainerKey,
    pub state: ContainerState,
    pub image_rootfs: PathBuf,
    pub log_path: PathBuf,
}

/// What `start` needs: the spec from [`crate::spec::build`] (its `root.path` is replaced by
/// the runtime's own overlay mount of `image_rootfs`).
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub key: ContainerKey,
    pub spec: oci_spec::runtime::Spec,
    /// The unpacked image, used read-only as the overlay's lower directory.
    pub image_rootfs: PathBuf,
    /// Where the CRI log goes, e.g. /var/log/pods/<ns>_<pod>_<uid>/<container>/<attempt>.log.
    pub log_path: PathBuf,
    /// Whether the container gets a stdin pipe that attach sessions write to.
    pub stdin: StdinMode,
}

/// A command to run inside a running container (`kubectl exec`, exec probes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// A terminal for the process (`kubectl exec -it`): its output is all on stdout, and
    /// the session takes terminal sizes ([`ExecSession::resize`]).
    pub tty: bool,
    /// Whether the caller will write to the process's stdin (otherwise it reads /dev/null).
    pub stdin: bool,
    /// Kill the process (and its process group) once it has run this long; its exit then
    /// resolves to [`RuntimeError::ExecTimeout`]. Exec probes set it; `kubectl exec` does not.
    pub timeout: Option<Duration>,
}

/// A running exec: the process's stdio and its exit code.
pub struct ExecSession {
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// Where terminal sizes go, when the process has a terminal.
    pub resize: Option<tokio::sync::mpsc::Sender<pty::WinSize>>,
    /// Resolves to the process's exit code (128 + signal when killed) once it ends.
    pub exit_code: Pin<Box<dyn Future<Output = Result<i32>> + Send>>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("stdin", &self.stdin.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid container key {0:?}")]
    InvalidKey(String),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {key} failed to start: {message}")]
    StartFailed { key: String, message: String },
    #[error("cgroups path {0:?} is outside the runtime's cgroup root")]
    CgroupOutsideRoot(String),
    #[error("container {0} did not stop")]
    StopTimeout(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Sys(String),
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// An exec outlived its [`ExecRequest::timeout`] and was killed.
    #[error("exec timed out after {0:?}")]
    ExecTimeout(Duration),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// Runs containers. Implementations must be safe to call concurrently for different keys.
pub trait ContainerRuntime: Send + Sync {
    /// Creates and starts a container; returns once it runs (or failed to start).
    fn start(&self, req: StartRequest) -> impl Future<Output = Result<ContainerStatus>> + Send;
    /// Every container this runtime knows, including those an earlier agent started.
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerStatus>>> + Send;
    /// SIGTERM, up to `grace` for the process to exit, then SIGKILL. Ok if already exited.
    fn stop(&self, key: &ContainerKey, grace: Duration) -> impl Future<Output = Result<()>> + Send;
    /// Kills what is left and removes every trace (mounts, cgroups, state). Idempotent.
    fn remove(&self, key: &ContainerKey) -> impl Future<Output = Result<()>> + Send;
    /// Starts `req.command` in the running container; the session carries its stdio.
    fn exec(
        &self,
        key: &ContainerKey,
        req: ExecRequest,
    ) -> impl Future<Output = Result<ExecSession>> + Send;
    /// Joins the running container's main process (`kubectl attach`): its live output and,
    /// with `stdin`, its input. The session's exit code is 0 once the container let go;
    /// dropping the session ends it, never the container.
    fn attach(
        &self,
        key: &ContainerKey,
        stdin: bool,
    ) -> impl Future<Output = Result<ExecSession>> + Send;
}
