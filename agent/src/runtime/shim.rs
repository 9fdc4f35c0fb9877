//! `kith shim`: the small process that owns one container.
//!
//! ```text
//!  agent ──spawn──► kith shim run <dir>      (setsid; single-threaded)
//!                     │ libcontainer create+start (init reads config.json in <dir>)
//!                     │ stdout line "started <pid>" / "failed <why>" → agent, then /dev/null
//!                     │ copy container stdout/stderr → CRI log (rotating) + attach clients
//!                     │   (tty: true → one pty master from console.sock instead, logged
//!                     │    as stdout; attach clients' resizes → TIOCSWINSZ, runtime::pty)
//!                     │ attach.sock: live output out, stdin in (runtime::attach)
//!                     │ waitpid(container) → exit.json (code, signal, OOMKilled)
//!                     ▼ exit
//!  agent ──spawn──► kith shim delete <dir>   (libcontainer delete --force)
//!  agent ──spawn──► kith shim exec <dir> [--tty] -- cmd   (one exec; --tty: a pty of
//!                     its own, stdin carries input frames with resizes; either way the
//!                     container's process settings and seccomp filter, exec_process)
//! ```
//! libcontainer clones and runs Rust code in the child and changes the working directory
//! of the whole process, so it only ever runs here, never inside the agent's tokio
//! runtime. The shim is the container's parent: it alone can reap it and learn its exit
//! status, and it survives the agent (own session, no tie to the agent's stdio).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::attach::{self, Hub, Slot};
use super::crilog::{format_line, LineSplitter, RotatingWriter, Stream, MAX_LINE};
use super::exec_process::{self, SeccompExecutor};
use super::pty::{self, ConsoleSocket, WinSize};
use super::state::{self, Exit, Meta, Pids};
use super::{ExitReason, StdinMode};

/// How long attach clients may take to receive the last output once the container ended.
const ATTACH_FLUSH: Duration = Duration::from_secs(1);

/// Entry point for `kith shim <args>`; returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["run", dir] => run(Path::new(dir)),
        ["exec", dir, "--tty", "--", command @ ..] if !command.is_empty() => exec_tty(
            Path::new(dir),
            command.iter().map(|s| s.to_string()).collect(),
        ),
        ["exec", dir, "--", command @ ..] if !command.is_empty() => exec(
            Path::new(dir),
            command.iter().map(|s| s.to_string()).collect(),
            None,
        ),
        ["exec", dir, "--timeout-ms", ms, "--", command @ ..] if !command.is_empty() => {
            match ms.parse::<u64>() {
                Ok(ms) => exec(
                    Path::new(dir),
                    command.iter().map(|s| s.to_string()).collect(),
                    Some(Duration::from_millis(ms)),
                ),
                Err(e) => {
                    eprintln!("kith shim exec: --timeout-ms {ms:?}: {e}");
                    2
                }
            }
        }
        ["delete", dir] => match delete(Path::new(dir)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("kith shim delete: {e}");
                1
            }
        },
        _ => {
            eprintln!(
                "usage: kith shim run <dir> | kith shim exec <dir> [--timeout-ms N | --tty] -- <command>... | kith shim delete <dir>"
            );
            2
        }
    }
}

/// The container id libcontainer knows: the state directory's name.
fn container_id(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Tells the agent how the start went, then lets go of the pipe so the shim never
/// blocks or dies (SIGPIPE) on an agent that went away.
fn report(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", line.replace('\n', " "));
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

fn run(dir: &Path) -> i32 {
    // A session of its own: the agent's terminal, process group and death do not reach us.
    let _ = nix::unistd::setsid();
    let started = Timestamp::now();
    let fail = |message: String| -> i32 {
        tracing::error!(%message, "container did not start");
        let exit = Exit {
            exit_code: 128,
            signal: None,
            reason: ExitReason::StartError,
            message: Some(message.clone()),
            started_at: None,
            finished_at: Timestamp::now(),
        };
        let _ = state::write_json(&dir.join(state::EXIT), &exit);
        report(&format!("failed {message}"));
        1
    };
    let meta: Meta = match state::read_json(&dir.join(state::META)) {
        Ok(Some(m)) => m,
        Ok(None) => return fail(format!("{} is missing", state::META)),
        Err(e) => return fail(e.to_string()),
    };
    let mut log = match RotatingWriter::open(&meta.log_path, meta.log_max_bytes) {
        Ok(w) => w,
        Err(e) => return fail(format!("cannot open log {}: {e}", meta.log_path.display())),
    };
    // A container with `tty: true` (process.terminal in its config.json) gets a pty: its
    // master arrives on the console socket and is its stdin, stdout and stderr at once.
    let tty = terminal(dir);
    // The container's stdin: a pipe whose write end the attach hub keeps, or /dev/null
    // (the shim's own stdin, from the agent).
    let (stdin_r, stdin_w) = match (tty, meta.stdin) {
        (true, _) | (false, StdinMode::Null) => (None, None),
        (false, StdinMode::Open | StdinMode::Once) => match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
            Ok((r, w)) => (Some(r), Some(w)),
            Err(e) => return fail(format!("stdin pipe: {e}")),
        },
    };
    let once = meta.stdin == StdinMode::Once;
    let console = if tty {
        match ConsoleSocket::bind(dir, CONSOLE_SOCKET) {
            Ok(c) => Some(c),
            Err(e) => return fail(format!("cannot listen for the container's terminal: {e}")),
        }
    } else {
        None
    };
    // Bound before the container starts, so attach works as soon as the agent hears
    // "started" (a terminal's hub waits for the terminal, still before "started").
    let mut hub = if tty {
        None
    } else {
        match Hub::bind(dir, stdin_w, once) {
            Ok(h) => Some(h),
            Err(e) => return fail(format!("cannot listen for attach: {e}")),
        }
    };
    let (mut pipes, container) =
        match create_and_start(dir, stdin_r, console.as_ref().map(ConsoleSocket::path)) {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
    if let Some(console) = console {
        let hub_for_terminal = console
            .receive(CONSOLE_WAIT)
            .map_err(|e| format!("no terminal from the container: {e}"))
            .and_then(|master| {
                let dup = || {
                    master
                        .try_clone()
                        .map_err(|e| format!("duplicate the terminal: {e}"))
                };
                let stdin = match meta.stdin {
                    StdinMode::Null => None,
                    StdinMode::Open | StdinMode::Once => Some(dup()?),
                };
                let h = Hub::bind(dir, stdin, once)
                    .map_err(|e| format!("cannot listen for attach: {e}"))?
                    .with_terminal(dup()?);
                Ok((h, master))
            });
        match hub_for_terminal {
            Ok((h, master)) => {
                hub = Some(h);
                pipes.push((master, Stream::Stdout));
            }
            Err(e) => {
                // Nobody could ever reach a container whose terminal is lost.
                if let Some(pid) = container.pid() {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                }
                return fail(e);
            }
        }
    }
    let Some(pid) = container.pid() else {
        return fail("libcontainer reported no pid".into());
    };
    let me = std::process::id() as i32;
    let (Some(shim), Some(cproc)) = (state::proc_id(me), state::proc_id(pid.as_raw())) else {
        return fail(format!(
            "container process {pid} vanished right after start"
        ));
    };
    let pids = Pids {
        shim,
        container: cproc,
        started_at: started,
    };
    if let Err(e) = state::write_json(&dir.join(state::PIDS), &pids) {
        return fail(format!("cannot record pids: {e}"));
    }
    report(&format!("started {pid}"));

    let status = copy_until_exit(pid, pipes, &mut log, &mut hub);
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let oom = cgroups_path(dir).map(|p| oom_kills(&p)).unwrap_or(0) > 0;
    let reason = if oom {
        ExitReason::OomKilled
    } else if exit_code == 0 {
        ExitReason::Completed
    } else {
        ExitReason::Error
    };
    let exit = Exit {
        exit_code,
        signal,
        reason,
        message: None,
        started_at: Some(started),
        finished_at: Timestamp::now(),
    };
    tracing::info!(?exit, "container exited");
    let code = match state::write_json(&dir.join(state::EXIT), &exit) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(%e, "cannot record exit");
            1
        }
    };
    // Attach sessions end after the exit is on record.
    if let Some(hub) = hub {
        hub.finish(ATTACH_FLUSH);
    }
    code
}

type Pipes = Vec<(OwnedFd, Stream)>;

/// The console socket's name in the state directory.
const CONSOLE_SOCKET: &str = "console.sock";
/// How long the container side may take to send its terminal.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

/// Whether the bundle's config.json asks for a terminal (`process.terminal`).
pub(crate) fn terminal(dir: &Path) -> bool {
    std::fs::read(dir.join(state::CONFIG))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["process"]["terminal"].as_bool())
        .unwrap_or(false)
}

/// Creates and starts the container. With a `console` socket the container gets a
/// terminal instead of pipes (no pipes are returned: the master comes on the socket).
fn create_and_start(
    dir: &Path,
    stdin: Option<OwnedFd>,
    console: Option<&Path>,
) -> Result<(Pipes, Container), String> {
    let id = container_id(dir);
    let lc_root = dir.join(state::LC_ROOT);
    std::fs::create_dir_all(&lc_root)
        .map_err(|e| format!("cannot create {}: {e}", lc_root.display()))?;
    if let Some(console) = console {
        let mut container = ContainerBuilder::new(id, SyscallType::Linux)
            .with_root_path(&lc_root)
            .and_then(|b| b.with_console_socket(Some(console)).validate_id())
            .and_then(|b| b.as_init(dir).with_systemd(false).with_detach(true).build())
            .map_err(|e| describe(&e))?;
        container.start().map_err(|e| describe(&e))?;
        return Ok((Vec::new(), container));
    }
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // The builder owns the write ends and closes them when it is done, so the read
    // ends see EOF once the container's processes are gone.
    let mut container = ContainerBuilder::new(id, SyscallType::Linux)
        .with_root_path(&lc_root)
        .and_then(|b| {
            let b = match stdin {
                Some(fd) => b.with_stdin(fd),
                None => b,
            };
            b.with_stdout(out_w).with_stderr(err_w).validate_id()
        })
        .and_then(|b| b.as_init(dir).with_systemd(false).with_detach(true).build())
        .map_err(|e| describe(&e))?;
    container.start().map_err(|e| describe(&e))?;
    Ok((
        vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
        container,
    ))
}

/// libcontainer's errors nest; the chain of sources is what tells a user why.
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}

/// Copies output to the log (and to attached clients) while the container runs, and
/// serves the attach hub; returns the container's wait status once it exited and the
/// pipes are drained.
fn copy_until_exit(
    pid: Pid,
    pipes: Pipes,
    log: &mut RotatingWriter,
    hub: &mut Option<Hub>,
) -> WaitStatus {
    let mut open: Vec<(OwnedFd, Stream, LineSplitter)> = pipes
        .into_iter()
        .map(|(fd, s)| (fd, s, LineSplitter::new(MAX_LINE)))
        .collect();
    let mut exited: Option<WaitStatus> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if exited.is_none() {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => exited = Some(s),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(%e, "waitpid");
                    exited = Some(WaitStatus::Exited(pid, 255));
                }
            }
        }
        if open.is_empty() {
            match exited {
                Some(s) => return s,
                None => {
                    // Output closed but the process lives on: just wait for it.
                    return waitpid(pid, None).unwrap_or(WaitStatus::Exited(pid, 255));
                }
            }
        }
        // Once the container exited, only drain what is already buffered.
        let timeout = if exited.is_some() {
            PollTimeout::ZERO
        } else {
            PollTimeout::from(200u16)
        };
        let (ready, hub_events): (Vec<bool>, Vec<(Slot, PollFlags)>) = {
            let mut fds: Vec<PollFd> = open
                .iter()
                .map(|(fd, _, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            let slots = hub.as_ref().map(Hub::slots).unwrap_or_default();
            fds.extend(slots.iter().map(|(_, f)| *f));
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => {
                    let (pipes, rest) = fds.split_at(open.len());
                    (
                        pipes
                            .iter()
                            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                            .collect(),
                        slots
                            .iter()
                            .zip(rest)
                            .map(|((s, _), f)| (*s, f.revents().unwrap_or(PollFlags::empty())))
                            .collect(),
                    )
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => (vec![true; open.len()], Vec::new()),
            }
        };
        if let Some(h) = hub.as_mut() {
            h.ready(&hub_events);
        }
        if exited.is_some() && !ready.iter().any(|r| *r) {
            for (_, stream, splitter) in open.iter_mut() {
                flush_rest(*stream, splitter, log);
            }
            open.clear();
            continue;
        }
        let mut closed = Vec::new();
        for (i, (fd, stream, splitter)) in open.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                // A terminal's master is non-blocking (it is shared with the hub).
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                // A terminal's master reads EIO once no process holds its slave.
                Ok(0) | Err(_) => {
                    flush_rest(*stream, splitter, log);
                    closed.push(i);
                }
                Ok(n) => {
                    if let Some(h) = hub.as_mut() {
                        let channel = match stream {
                            Stream::Stdout => attach::STDOUT,
                            Stream::Stderr => attach::STDERR,
                        };
                        h.broadcast(channel, &buf[..n]);
                    }
                    let now = Timestamp::now();
                    for (line, tag) in splitter.push(&buf[..n]) {
                        write_log(log, &format_line(now, *stream, tag, &line));
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            open.remove(i);
        }
    }
}

fn flush_rest(stream: Stream, splitter: &mut LineSplitter, log: &mut RotatingWriter) {
    if let Some((line, tag)) = splitter.finish() {
        write_log(log, &format_line(Timestamp::now(), stream, tag, &line));
    }
}

fn write_log(log: &mut RotatingWriter, line: &[u8]) {
    if let Err(e) = log.write_line(line) {
        tracing::warn!(%e, "cannot write container log");
    }
}

/// linux.cgroupsPath from the bundle's config.json.
pub(crate) fn cgroups_path(dir: &Path) -> Option<PathBuf> {
    let bytes = std::fs::read(dir.join(state::CONFIG)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["linux"]["cgroupsPath"].as_str().map(PathBuf::from)
}

/// How many times the kernel's OOM killer struck inside the container's memory cgroup:
/// cgroup v1 `memory.oom_control`, or v2 `memory.events`, whichever this host has.
fn oom_kills(cgroup: &Path) -> u64 {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let candidates = [
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
        Path::new("/sys/fs/cgroup/unified")
            .join(rel)
            .join("memory.events"),
    ];
    candidates
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|text| parse_oom_kill(&text))
        .max()
        .unwrap_or(0)
}

/// The `oom_kill N` counter from memory.oom_control / memory.events text.
pub fn parse_oom_kill(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// Exit code of `kith shim exec` when the process could not be started in the container.
pub const EXEC_START_FAILED: i32 = 126;

/// Runs `command` inside the running container with this helper's stdin, stdout and
/// stderr (the agent holds the other ends), waits for it and exits with its code.
///
/// With a `timeout`, a command still running at the deadline is killed with its whole
/// process group (libcontainer makes the exec'd process a session leader, so a shell's
/// children go too), reaped, and the helper then ends itself with SIGALRM: the one way
/// it can say "timed out" that no exit code of the command can be mistaken for. Killing
/// here rather than in the agent means nothing is left behind in the container even if
/// the agent is gone by then.
fn exec(dir: &Path, command: Vec<String>, timeout: Option<Duration>) -> i32 {
    let deadline = timeout.map(|t| Instant::now() + t);
    let pid = match start_exec(dir, command, None) {
        Ok(pid) => pid,
        Err(e) => {
            // This stderr is the exec session's: the user sees why, as with `runc exec`.
            eprintln!("kith: cannot exec in container: {e}");
            return EXEC_START_FAILED;
        }
    };
    let status = match deadline {
        None => waitpid(pid, None),
        Some(deadline) => match wait_until(pid, deadline) {
            Some(status) => status,
            None => {
                let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                let _ = nix::sys::signal::raise(Signal::SIGALRM);
                // Only reached if SIGALRM is ignored: still a failure, never a success.
                return 128 + Signal::SIGKILL as i32;
            }
        },
    };
    exec_exit_code(status)
}

/// An exec'd command's exit code as a shell gives it (128 + signal when killed).
fn exec_exit_code(status: nix::Result<WaitStatus>) -> i32 {
    match status {
        Ok(WaitStatus::Exited(_, code)) => code,
        Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
        Ok(other) => {
            eprintln!("kith: unexpected wait status {other:?}");
            255
        }
        Err(e) => {
            eprintln!("kith: waitpid: {e}");
            255
        }
    }
}

/// `kith shim exec <dir> --tty -- <command>`: runs `command` in the running container
/// on a terminal of its own (`kubectl exec -it`), as `runc exec --tty` does: the same
/// settings as a plain exec ([`start_exec`]) with `terminal` set, and the pty master
/// comes back on a console socket. This helper's stdin carries input frames
/// ([`attach::IN_STDIN`], [`attach::IN_RESIZE`], [`attach::IN_CLOSE`]); the terminal's
/// output goes to its stdout; it exits with the command's code.
fn exec_tty(dir: &Path, command: Vec<String>) -> i32 {
    // On a terminal, stdout is all the user sees (kubectl opens no stderr with a tty).
    let fail = |what: String| -> i32 {
        let mut out = std::io::stdout();
        let _ = write!(out, "kith: cannot exec in container: {what}\r\n");
        let _ = out.flush();
        EXEC_START_FAILED
    };
    let me = std::process::id();
    let console = match ConsoleSocket::bind(dir, &format!("exec-{me}.sock")) {
        Ok(c) => c,
        Err(e) => return fail(format!("console socket: {e}")),
    };
    let pid = match start_exec(dir, command, Some(console.path())) {
        Ok(pid) => pid,
        Err(e) => return fail(e),
    };
    let master = match console.receive(CONSOLE_WAIT) {
        Ok(m) => m,
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return fail(format!("no terminal from the container: {e}"));
        }
    };
    drop(console);
    exec_exit_code(relay_terminal(pid, master))
}

/// libcontainer reaches a console socket through a symlink it leaves in the container's
/// directory; one per terminal exec would pile up for the container's lifetime.
fn remove_links_to(dir: &Path, target: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if std::fs::read_link(entry.path()).is_ok_and(|t| t == target) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Starts `command` in the running container with the settings
/// [`exec_process::plan`] gives every exec'd process (the container's user, groups,
/// capabilities, no_new_privs, environment, working directory and seccomp filter).
/// With a `console` socket the process gets a terminal, whose master comes back on it.
fn start_exec(dir: &Path, command: Vec<String>, console: Option<&Path>) -> Result<Pid, String> {
    let spec = oci_spec::runtime::Spec::load(dir.join(state::CONFIG))
        .map_err(|e| format!("read {}: {e}", state::CONFIG))?;
    let planned =
        exec_process::plan(&spec, command, console.is_some()).map_err(|e| e.to_string())?;
    let process_path = dir.join(format!("exec-{}.json", std::process::id()));
    let json = serde_json::to_vec(&planned.process).map_err(|e| e.to_string())?;
    write_private(&process_path, &json)?;
    let mut base =
        ContainerBuilder::new(container_id(dir), SyscallType::Linux).with_console_socket(console);
    if let Some(load) = planned.seccomp {
        base = base.with_executor(SeccompExecutor::new(load));
    }
    let pid = base
        .with_root_path(dir.join(state::LC_ROOT))
        .and_then(|b| b.validate_id())
        .and_then(|b| {
            b.as_tenant()
                .with_process(Some(&process_path))
                .with_detach(console.is_some())
                .build()
        });
    let _ = std::fs::remove_file(&process_path);
    if let Some(console) = console {
        remove_links_to(&dir.join(state::LC_ROOT).join(container_id(dir)), console);
    }
    pid.map_err(|e| describe(&e))
}

/// Writes `bytes` to a new file only root can read: a process spec holds the
/// container's environment, secrets included.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// Copies between this helper's stdio and the terminal until `pid` exited and the
/// terminal's output is drained; returns `pid`'s wait status.
fn relay_terminal(pid: Pid, master: OwnedFd) -> nix::Result<WaitStatus> {
    let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut decoder = attach::Decoder::default();
    let mut reading_stdin = true;
    let mut master_open = true;
    let mut pending: Vec<u8> = Vec::new();
    // The last byte typed, and whether the session ended its input (kubectl's close of
    // stdin): a terminal cannot be closed for input alone, so its end is typed instead.
    let mut last_input: Option<u8> = None;
    let mut input_ended = false;
    let mut exited: Option<WaitStatus> = None;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if exited.is_none() {
            if let s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
                waitpid(pid, Some(WaitPidFlag::WNOHANG))?
            {
                exited = Some(s);
            }
        }
        if !master_open {
            return match exited {
                Some(s) => Ok(s),
                None => waitpid(pid, None),
            };
        }
        // Once the process exited, only drain what the terminal already holds (a child
        // it left behind may keep the terminal open).
        let timeout = if exited.is_some() {
            PollTimeout::ZERO
        } else {
            PollTimeout::from(200u16)
        };
        let mut master_flags = PollFlags::POLLIN;
        if !pending.is_empty() {
            master_flags |= PollFlags::POLLOUT;
        }
        let stdin_flags = if reading_stdin && pending.len() < 1 << 20 {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        let (stdin_ev, master_ev) = {
            let mut fds = [
                PollFd::new(stdin.as_fd(), stdin_flags),
                PollFd::new(master.as_fd(), master_flags),
            ];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => (
                    fds[0].revents().unwrap_or(PollFlags::empty()),
                    fds[1].revents().unwrap_or(PollFlags::empty()),
                ),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        };
        if let Some(s) = exited {
            if !master_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                return Ok(s);
            }
        }
        if !stdin_ev.is_empty() {
            match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                Ok(0) => reading_stdin = false,
                Ok(n) => {
                    for (kind, body) in decoder.push(&buf[..n]) {
                        match kind {
                            attach::IN_STDIN if !input_ended => {
                                last_input = body.last().copied().or(last_input);
                                pending.extend_from_slice(&body);
                            }
                            attach::IN_RESIZE => {
                                if let Some(size) = WinSize::from_bytes(&body) {
                                    let _ = pty::set_size(master.as_fd(), size);
                                }
                            }
                            // The client ended its input: type what ends input on this
                            // terminal (^D, as a user would; nothing in raw mode), after
                            // what it typed, as an attach with stdinOnce does.
                            attach::IN_CLOSE if !input_ended => {
                                input_ended = true;
                                if let Ok(keys) = pty::end_of_input_for(master.as_fd(), last_input)
                                {
                                    pending.extend_from_slice(&keys);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(_) => reading_stdin = false,
            }
        }
        if master_ev.contains(PollFlags::POLLOUT) || !pending.is_empty() {
            match nix::unistd::write(&master, &pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(_) => pending.clear(),
            }
        }
        if master_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(0) => master_open = false,
                Ok(n) => {
                    // The agent going away only loses the output; the process goes on
                    // until the agent's kill reaches this helper.
                    let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                // EIO: no process holds the terminal's slave any more.
                Err(_) => master_open = false,
            }
        }
    }
}

/// Waits for `pid` to end until `deadline`; `None` if it still runs then. Polls with a
/// growing step (1 ms to 50 ms): the helper is single-threaded and blocks no signals
/// (its child would inherit the mask), so there is no timed wait to lean on.
fn wait_until(pid: Pid, deadline: Instant) -> Option<nix::Result<WaitStatus>> {
    let mut step = Duration::from_millis(1);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            other => return Some(other),
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(step.min(deadline - now));
        step = (step * 2).min(Duration::from_millis(50));
    }
}

/// `libcontainer delete --force`: kills what is left, removes its cgroup and state.
fn delete(dir: &Path) -> Result<(), String> {
    let root = dir.join(state::LC_ROOT).join(container_id(dir));
    if !root.join("state.json").exists() {
        return Ok(());
    }
    let mut container = Container::load(root).map_err(|e| describe(&e))?;
    container.delete(true).map_err(|e| describe(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counters() {
        let cases = [
            ("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", 2),
            (
                "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
                1,
            ),
            ("oom_kill_disable 0\nunder_oom 0\n", 0),
            ("", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_oom_kill(text), want, "{text:?}");
        }
    }
}
