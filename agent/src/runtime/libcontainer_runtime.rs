//! [`ContainerRuntime`] on libcontainer, through one `kith shim` process per container.
//!
//! The agent side only prepares files and mounts, spawns the shim, sends signals and reads
//! state files back; every libcontainer call happens inside a shim (see [`super::shim`]).
//!
//! Shims start in the agent's cgroup. Under systemd the agent's unit needs
//! `KillMode=process` (as containerd's has), or stopping the agent kills every shim; the
//! containers would live on, but their exits would no longer be recorded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::state::{self, Exit, Meta, Pids};
use super::{
    io_err, ContainerKey, ContainerRuntime, ContainerState, ContainerStatus, ExecRequest,
    ExecSession, ExitReason, Result, RuntimeError, StartRequest,
};

/// How long a shim may take to report that the container runs.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the shim to record an exit after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where container state directories live (`<state_dir>/containers/<key>`).
    pub state_dir: PathBuf,
    /// The `kith` binary; run as `<shim_binary> shim run <dir>`.
    pub shim_binary: PathBuf,
    /// Absolute cgroup parent every container's cgroups path must be under, e.g. `/kith`.
    pub cgroup_root: PathBuf,
    /// Log rotation size (one rotated file is kept).
    pub log_max_bytes: u64,
}

impl RuntimeConfig {
    pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;

    pub fn new(state_dir: PathBuf, shim_binary: PathBuf, cgroup_root: PathBuf) -> Self {
        RuntimeConfig {
            state_dir,
            shim_binary,
            cgroup_root,
            log_max_bytes: Self::DEFAULT_LOG_MAX_BYTES,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LibcontainerRuntime {
    config: RuntimeConfig,
}

impl LibcontainerRuntime {
    /// Holds no state in memory: a new instance on the same `state_dir` sees (re-adopts)
    /// every container an earlier one started.
    pub fn new(mut config: RuntimeConfig) -> Self {
        // The shim changes its working directory (libcontainer does), so every path it
        // gets must be absolute.
        config.state_dir = absolute(config.state_dir);
        LibcontainerRuntime { config }
    }

    fn containers_dir(&self) -> PathBuf {
        self.config.state_dir.join("containers")
    }

    /// The state directory of one container.
    pub fn container_dir(&self, key: &ContainerKey) -> PathBuf {
        self.containers_dir().join(key.dir_name())
    }

    async fn spawn_shim(&self, key: &ContainerKey, dir: &Path) -> Result<ContainerStatus> {
        let start_failed = |message: String| RuntimeError::StartFailed {
            key: key.dir_name(),
            message,
        };
        let shim_log =
            std::fs::File::create(dir.join(state::SHIM_LOG)).map_err(io_err("create shim log"))?;
        let mut child = tokio::process::Command::new(&self.config.shim_binary)
            .arg("shim")
            .arg("run")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .spawn()
            .map_err(io_err(format!(
                "spawn shim {}",
                self.config.shim_binary.display()
            )))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        // The shim lives on after reporting; reap it whenever it ends so it leaves no zombie.
        let reap = tokio::spawn(async move {
            let _ = child.wait().await;
        });
        match line {
            Ok(Ok(Some(line))) if line.starts_with("started ") => {}
            Ok(Ok(Some(line))) => {
                return Err(start_failed(
                    line.strip_prefix("failed ").unwrap_or(&line).to_string(),
                ))
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                let _ = reap.await;
                let log = std::fs::read_to_string(dir.join(state::SHIM_LOG)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(start_failed(format!(
                    "shim exited without reporting: {}",
                    tail.join(" | ")
                )));
            }
            Err(_) => {
                return Err(start_failed(format!(
                    "no report from the shim within {START_TIMEOUT:?}"
                )))
            }
        }
        read_status(dir)?.ok_or_else(|| RuntimeError::NotFound(key.dir_name()))
    }

    /// Waits until the shim recorded the exit (or both processes are gone).
    async fn wait_exit(&self, dir: &Path, limit: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if dir.join(state::EXIT).exists() {
                return Ok(true);
            }
            let pids: Option<Pids> =
                state::read_json(&dir.join(state::PIDS)).map_err(io_err("read pids"))?;
            match pids {
                Some(p) if state::alive(&p.container) || state::alive(&p.shim) => {}
                _ => return Ok(true),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn run_shim_delete(&self, dir: &Path) -> Result<()> {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&self.config.shim_binary)
                .arg("shim")
                .arg("delete")
                .arg(dir)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| RuntimeError::Sys("shim delete timed out".into()))?
        .map_err(io_err("spawn shim delete"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(RuntimeError::Sys(format!(
                "shim delete: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|cwd| cwd.join(&p)).unwrap_or(p)
    }
}

/// Signals the recorded container process if it is still the same process.
fn signal(p: &Pids, sig: Signal) {
    if state::alive(&p.container) {
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.container.pid), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pid = p.container.pid, %e, ?sig, "kill"),
        }
    }
}

/// Exec and attach need the container's process.
fn require_running(dir: &Path, key: &ContainerKey) -> Result<()> {
    match read_status(dir)? {
        Some(ContainerStatus {
            state: ContainerState::Running { .. },
            ..
        }) => Ok(()),
        Some(_) => Err(RuntimeError::Sys(format!(
            "container {} is not running",
            key.dir_name()
        ))),
        None => Err(RuntimeError::NotFound(key.dir_name())),
    }
}

/// What the files in one state directory say; `None` when it holds no container yet.
fn read_status(dir: &Path) -> Result<Option<ContainerStatus>> {
    let Some(meta): Option<Meta> =
        state::read_json(&dir.join(state::META)).map_err(io_err("read meta"))?
    else {
        return Ok(None);
    };
    let exit: Option<Exit> =
        state::read_json(&dir.join(state::EXIT)).map_err(io_err("read exit"))?;
    let pids: Option<Pids> =
        state::read_json(&dir.join(state::PIDS)).map_err(io_err("read pids"))?;
    let state = match (exit, pids) {
        (Some(e), _) => ContainerState::Exited {
            exit_code: e.exit_code,
            signal: e.signal,
            reason: e.reason,
            message: e.message,
            started_at: e.started_at,
            finished_at: e.finished_at,
        },
        // The shim may still be writing exit.json after the container died.
        (None, Some(p)) if state::alive(&p.container) || state::alive(&p.shim) => {
            ContainerState::Running {
                pid: p.container.pid,
                started_at: p.started_at,
            }
        }
        (None, Some(p)) => ContainerState::Exited {
            exit_code: 255,
            signal: None,
            reason: ExitReason::Unknown,
            message: Some("the shim vanished before recording the container's exit".into()),
            started_at: Some(p.started_at),
            finished_at: jiff::Timestamp::now(),
        },
        (None, None) => ContainerState::Created,
    };
    Ok(Some(ContainerStatus {
        key: meta.key,
        state,
        image_rootfs: meta.image_rootfs,
        log_path: meta.log_path,
    }))
}

/// Directories, overlay rootfs, config.json and meta.json; undone on failure.
fn prepare(config: &RuntimeConfig, dir: &Path, req: &StartRequest) -> Result<()> {
    if dir.exists() {
        return Err(RuntimeError::AlreadyExists(req.key.dir_name()));
    }
    let result = prepare_inner(config, dir, req);
    if result.is_err() {
        let _ = unmount(&dir.join(state::ROOTFS));
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn prepare_inner(config: &RuntimeConfig, dir: &Path, req: &StartRequest) -> Result<()> {
    for sub in [state::ROOTFS, state::UPPER, state::WORK] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(io_err(format!("create {}", dir.join(sub).display())))?;
    }
    let rootfs = dir.join(state::ROOTFS);
    let mut spec = req.spec.clone();
    if let Some(process) = spec.process_mut() {
        if process.terminal() == Some(true) {
            // As containerd's CRI does for tty containers.
            let env = super::pty::with_term(process.env().clone().unwrap_or_default());
            process.set_env(Some(env));
        }
    }
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let root = oci_spec::runtime::RootBuilder::default()
        .path(&rootfs)
        .readonly(readonly)
        .build()
        .map_err(|e| RuntimeError::Spec(e.to_string()))?;
    spec.set_root(Some(root));

    let cgroups = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let cgroups = match cgroups {
        Some(p) => p,
        None => {
            let p = config
                .cgroup_root
                .join(&req.key.pod_uid)
                .join(&req.key.container);
            if let Some(linux) = spec.linux_mut() {
                linux.set_cgroups_path(Some(p.clone()));
            }
            p
        }
    };
    if !cgroups.is_absolute()
        || !cgroups.starts_with(&config.cgroup_root)
        || cgroups == config.cgroup_root
    {
        return Err(RuntimeError::CgroupOutsideRoot(
            cgroups.display().to_string(),
        ));
    }

    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        req.image_rootfs.display(),
        dir.join(state::UPPER).display(),
        dir.join(state::WORK).display()
    );
    if [&req.image_rootfs, &dir.to_path_buf()]
        .iter()
        .any(|p| p.to_string_lossy().contains([',', ':']))
    {
        return Err(RuntimeError::Sys(format!(
            "paths for overlay must not contain ',' or ':': {opts}"
        )));
    }
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| RuntimeError::Sys(format!("mount overlay on {}: {e}", rootfs.display())))?;

    let json = serde_json::to_vec_pretty(&spec).map_err(|e| RuntimeError::Spec(e.to_string()))?;
    std::fs::write(dir.join(state::CONFIG), json).map_err(io_err("write config.json"))?;
    let meta = Meta {
        key: req.key.clone(),
        image_rootfs: req.image_rootfs.clone(),
        log_path: req.log_path.clone(),
        log_max_bytes: config.log_max_bytes,
        stdin: req.stdin,
    };
    state::write_json(&dir.join(state::META), &meta).map_err(io_err("write meta.json"))?;
    Ok(())
}

fn unmount(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(RuntimeError::Sys(format!(
            "unmount {}: {e}",
            path.display()
        ))),
    }
}

/// Mount points of every cgroup hierarchy (v1 controllers and the v2 tree).
fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Removes the container's cgroup in every hierarchy, then its now-empty parents below
/// the runtime's root (the pod level). A parent still in use stays (rmdir fails).
fn remove_cgroups(cgroup: &Path, root: &Path) -> Result<()> {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let mut last_err = None;
    for mount in cgroup_mounts() {
        let leaf = mount.join(rel);
        if leaf.exists() {
            // The kernel may need a moment after the last process left.
            let mut removed = false;
            for _ in 0..50 {
                match std::fs::remove_dir(&leaf) {
                    Ok(()) => {
                        removed = true;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        removed = true;
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            if !removed {
                last_err = Some(RuntimeError::Sys(format!(
                    "cannot remove cgroup {}",
                    leaf.display()
                )));
            }
        }
        let mut parent = cgroup.parent();
        while let Some(p) = parent {
            if !p.starts_with(root) || p == root {
                break;
            }
            let _ = std::fs::remove_dir(mount.join(p.strip_prefix("/").unwrap_or(p)));
            parent = p.parent();
        }
    }
    last_err.map_or(Ok(()), Err)
}

impl ContainerRuntime for LibcontainerRuntime {
    async fn start(&self, mut req: StartRequest) -> Result<ContainerStatus> {
        req.key.validate()?;
        req.log_path = absolute(req.log_path);
        req.image_rootfs = absolute(req.image_rootfs);
        std::fs::create_dir_all(self.containers_dir()).map_err(io_err("create state dir"))?;
        let dir = self.container_dir(&req.key);
        let config = self.config.clone();
        let key = req.key.clone();
        {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || prepare(&config, &dir, &req))
                .await
                .map_err(|e| RuntimeError::Sys(format!("prepare task: {e}")))??;
        }
        self.spawn_shim(&key, &dir).await
    }

    async fn list(&self) -> Result<Vec<ContainerStatus>> {
        let entries = match std::fs::read_dir(self.containers_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read state dir")(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read state dir"))?;
            match read_status(&entry.path()) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), %e, "unreadable container state")
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn stop(&self, key: &ContainerKey, grace: Duration) -> Result<()> {
        key.validate()?;
        let dir = self.container_dir(key);
        if !dir.exists() {
            return Err(RuntimeError::NotFound(key.dir_name()));
        }
        if dir.join(state::EXIT).exists() {
            return Ok(());
        }
        let Some(pids): Option<Pids> =
            state::read_json(&dir.join(state::PIDS)).map_err(io_err("read pids"))?
        else {
            return Ok(());
        };
        signal(&pids, Signal::SIGTERM);
        if self.wait_exit(&dir, grace).await? {
            return Ok(());
        }
        signal(&pids, Signal::SIGKILL);
        if self.wait_exit(&dir, KILL_TIMEOUT).await? {
            Ok(())
        } else {
            Err(RuntimeError::StopTimeout(key.dir_name()))
        }
    }

    async fn remove(&self, key: &ContainerKey) -> Result<()> {
        key.validate()?;
        let dir = self.container_dir(key);
        if !dir.exists() {
            return Ok(());
        }
        let pids: Option<Pids> = state::read_json(&dir.join(state::PIDS)).unwrap_or(None);
        if let Some(pids) = &pids {
            signal(pids, Signal::SIGKILL);
            if !self.wait_exit(&dir, KILL_TIMEOUT).await? {
                return Err(RuntimeError::StopTimeout(key.dir_name()));
            }
        }
        let delete = self.run_shim_delete(&dir).await;
        if let Err(e) = &delete {
            // The cgroup and mount cleanup below still runs; report at the end.
            tracing::warn!(%e, "libcontainer delete");
        }
        let root = self.config.cgroup_root.clone();
        let dir2 = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            unmount(&dir2.join(state::ROOTFS))?;
            if let Some(cg) = super::shim::cgroups_path(&dir2) {
                remove_cgroups(&cg, &root)?;
            }
            std::fs::remove_dir_all(&dir2).map_err(io_err(format!("remove {}", dir2.display())))
        })
        .await
        .map_err(|e| RuntimeError::Sys(format!("remove task: {e}")))??;
        Ok(())
    }

    async fn attach(&self, key: &ContainerKey, stdin: bool) -> Result<ExecSession> {
        key.validate()?;
        let dir = self.container_dir(key);
        require_running(&dir, key)?;
        super::attach::connect(&dir, stdin, super::shim::terminal(&dir)).await
    }

    async fn exec(&self, key: &ContainerKey, req: ExecRequest) -> Result<ExecSession> {
        key.validate()?;
        if req.tty && req.timeout.is_some() {
            return Err(RuntimeError::Unsupported("exec with a tty and a timeout"));
        }
        if req.command.is_empty() {
            return Err(RuntimeError::Spec("exec needs a command".into()));
        }
        let dir = self.container_dir(key);
        require_running(&dir, key)?;
        let mut cmd = tokio::process::Command::new(&self.config.shim_binary);
        cmd.arg("shim").arg("exec").arg(&dir);
        if req.tty {
            cmd.arg("--tty");
        }
        if let Some(t) = req.timeout {
            // The helper enforces the deadline itself (see shim::exec): it can kill the
            // command's process group, which the agent cannot name.
            cmd.arg("--timeout-ms")
                .arg(t.as_millis().max(1).to_string());
        }
        let mut child = cmd
            .arg("--")
            .args(&req.command)
            // The helper's stderr is the session's: its own logging must stay quiet.
            .env("KITH_LOG", "off")
            // With a tty, stdin carries terminal sizes too.
            .stdin(if req.stdin || req.tty {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err("spawn shim exec"))?;
        let (stdin, resize, framer) = match (req.tty, child.stdin.take()) {
            (true, Some(pipe)) => {
                let f = super::attach::frame_input(pipe, req.stdin);
                (f.stdin, Some(f.resize), Some(f.task))
            }
            (_, pipe) => (pipe.map(|s| Box::pin(s) as _), None, None),
        };
        let stdout = Box::pin(child.stdout.take().expect("stdout is piped"));
        let stderr = Box::pin(child.stderr.take().expect("stderr is piped"));
        let timeout = req.timeout;
        let exit_code = Box::pin(async move {
            let status = child.wait().await.map_err(io_err("wait for shim exec"))?;
            if let Some(f) = framer {
                f.abort();
            }
            use std::os::unix::process::ExitStatusExt;
            match (status.signal(), timeout) {
                // The helper's own way of saying it killed the command at the deadline.
                (Some(sig), Some(t)) if sig == Signal::SIGALRM as i32 => {
                    Err(RuntimeError::ExecTimeout(t))
                }
                _ => Ok(status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))),
            }
        });
        Ok(ExecSession {
            stdin,
            stdout,
            stderr,
            resize,
            exit_code,
        })
    }
}
