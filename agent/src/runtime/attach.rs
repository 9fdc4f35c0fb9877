//! Attaching to a container's main process (`kubectl attach`, `kubectl run -i`). The shim
//! holds the container's stdio, so the shim serves attach clients, on a Unix socket in the
//! container's state directory.
//!
//! ```text
//!  agent: connect() ──► <dir>/attach.sock ◄── shim: Hub (in its single-threaded poll loop)
//!    hello byte:      b'1' (will send stdin) | b'0' (output only)
//!    agent ──► shim:  raw stdin bytes; EOF = done with stdin (closes it for stdinOnce)
//!    shim ──► agent:  frames [stream: 1 stdout | 2 stderr][length: u32 BE][bytes]
//!
//!    terminal clients (containers with `tty: true`) say hello b'3' (stdin) | b'2' (none)
//!    and frame their input too, in the same format:
//!    agent ──► shim:  [0 stdin][len][bytes] · [4 resize][4][cols rows: u16 BE]
//!                     · [255 stdin closed][0]
//! ```
//! A terminal's output is one stream (stdout), as the kubelet logs and serves it.
//! The shim closes every client once the container exited and its output was sent. The
//! container's stdin (when the pod asks for one) is a pipe whose write end the shim keeps
//! open, so the container sees no end of input between attach sessions. With
//! `stdinOnce`, the end of the first session's input ends the container's: the pipe is
//! closed, or on a terminal the EOF character is typed (containerd's CRI instead leaves
//! a terminal's input open and only lets the client go).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pty::{self, WinSize};
use super::{ExecSession, Result};

/// The socket's name in the container's state directory.
pub const SOCKET: &str = "attach.sock";
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The client's first byte: it will send stdin, or only reads output.
pub const HELLO_STDIN: u8 = b'1';
pub const HELLO_OUTPUT: u8 = b'0';
/// The hellos of clients that frame their input (stdin and terminal sizes).
pub const HELLO_FRAMED_STDIN: u8 = b'3';
pub const HELLO_FRAMED_OUTPUT: u8 = b'2';
/// Input frame kinds.
pub const IN_STDIN: u8 = 0;
pub const IN_RESIZE: u8 = 4;
pub const IN_CLOSE: u8 = 255;
/// Output a client may fall behind by before the shim drops it: a stuck client must never
/// stall the container's output or its log.
const CLIENT_BACKLOG: usize = 4 << 20;
/// Input waiting for the container to read it; beyond this, clients are not read.
const STDIN_BACKLOG: usize = 1 << 20;

/// The container's stdin, from the pod's `stdin` / `stdinOnce`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdinMode {
    /// /dev/null, as for any container that does not ask for stdin.
    #[default]
    Null,
    /// A pipe that stays open across attach sessions.
    Open,
    /// A pipe closed after the first attach session that wrote to it ends.
    Once,
}

impl StdinMode {
    /// From a container's `stdin` and `stdinOnce`.
    pub fn of(stdin: bool, once: bool) -> StdinMode {
        match (stdin, once) {
            (false, _) => StdinMode::Null,
            (true, false) => StdinMode::Open,
            (true, true) => StdinMode::Once,
        }
    }
}

/// The socket's path through an open handle on the state directory: a Unix socket path
/// must fit in 108 bytes, a state directory's path need not.
fn socket_path(dir: &std::fs::File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()))
}

/// One output frame.
pub fn encode(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + data.len());
    f.push(stream);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// Splits a byte stream back into the frames [`encode`] made.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds `bytes`; returns every frame now complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        while self.buf.len() - at >= 5 {
            let len = u32::from_be_bytes(self.buf[at + 1..at + 5].try_into().expect("4 bytes"));
            let end = at + 5 + len as usize;
            if self.buf.len() < end {
                break;
            }
            frames.push((self.buf[at], self.buf[at + 5..end].to_vec()));
            at = end;
        }
        self.buf.drain(..at);
        frames
    }
}

/// Joins the container whose state directory is `dir`: its live output and, with
/// `stdin`, its input; with `tty` (the container has a terminal) input is framed and the
/// session takes terminal sizes. The session's exit resolves (to 0) when the shim lets
/// go, i.e. once the container exited; dropping it ends the session, not the container.
pub async fn connect(dir: &Path, stdin: bool, tty: bool) -> Result<ExecSession> {
    let err = super::io_err("attach to the container's shim");
    let handle = std::fs::File::open(dir).map_err(super::io_err("open the state directory"))?;
    let mut sock = tokio::net::UnixStream::connect(socket_path(&handle))
        .await
        .map_err(super::io_err("attach to the container's shim"))?;
    drop(handle);
    let hello = match (tty, stdin) {
        (false, true) => HELLO_STDIN,
        (false, false) => HELLO_OUTPUT,
        (true, true) => HELLO_FRAMED_STDIN,
        (true, false) => HELLO_FRAMED_OUTPUT,
    };
    sock.write_all(&[hello]).await.map_err(err)?;
    let (mut rd, wr) = sock.into_split();
    let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
    let (mut err_w, err_r) = tokio::io::duplex(64 * 1024);
    let pump = tokio::spawn(async move {
        let mut decoder = Decoder::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for (stream, data) in decoder.push(&buf[..n]) {
                let w = if stream == STDERR {
                    &mut err_w
                } else {
                    &mut out_w
                };
                // A reader that went away only loses its own stream.
                let _ = w.write_all(&data).await;
            }
        }
    });
    let abort = pump.abort_handle();
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let (stdin, resize, framer) = if tty {
        let f = frame_input(wr, stdin);
        (f.stdin, Some(f.resize), Some(f.task))
    } else {
        // Without stdin the write half goes now: the shim reads that as "no input".
        (stdin.then(|| Box::pin(wr) as _), None, None)
    };
    Ok(ExecSession {
        stdin,
        stdout: Box::pin(out_r),
        stderr: Box::pin(err_r),
        resize,
        exit_code: Box::pin(async move {
            let _abort = AbortOnDrop(abort);
            let _framer = framer.map(|f| AbortOnDrop(f.abort_handle()));
            let _ = pump.await;
            Ok(0)
        }),
    })
}

/// The caller's side of framed input: what is written to the returned stdin (when
/// `stdin`) and the sizes sent to the returned sender go to `out` as input frames, in the
/// order they were given (a size sent before some input is applied before it); the end of
/// stdin goes as a close frame. `out` is shut down once both are done.
pub fn frame_input<W>(mut out: W, stdin: bool) -> FramedInput
where
    W: tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<WinSize>(8);
    let (user_stdin, mut input) = if stdin {
        let (w, r) = tokio::io::duplex(64 * 1024);
        (Some(Box::pin(w) as _), Some(r))
    } else {
        (None, None)
    };
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut sizes_open = true;
        loop {
            let frame = tokio::select! {
                // Sizes first: one that was sent before some input is ready before it.
                biased;
                size = resize_rx.recv(), if sizes_open => match size {
                    Some(size) => encode(IN_RESIZE, &size.to_bytes()),
                    None => {
                        sizes_open = false;
                        continue;
                    }
                },
                n = async { input.as_mut().expect("guarded").read(&mut buf).await },
                    if input.is_some() => match n {
                    Ok(n) if n > 0 => encode(IN_STDIN, &buf[..n]),
                    _ => {
                        input = None;
                        encode(IN_CLOSE, &[])
                    }
                },
                else => break,
            };
            if out.write_all(&frame).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
        let _ = out.shutdown().await;
    });
    FramedInput {
        stdin: user_stdin,
        resize: resize_tx,
        task: writer,
    }
}

/// The ends [`frame_input`] gives its caller.
pub struct FramedInput {
    /// The process's stdin, when the session has one.
    pub stdin: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    /// Terminal sizes.
    pub resize: tokio::sync::mpsc::Sender<WinSize>,
    /// The task writing the frames; it ends when both inputs are done or `out` fails.
    pub task: tokio::task::JoinHandle<()>,
}

/// What a poll slot of the hub is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Listener,
    Stdin,
    Client(usize),
}

struct Client {
    stream: UnixStream,
    /// Its hello: `Some(true)` when it sends stdin. `None` until the first byte.
    stdin: Option<bool>,
    /// Its input comes in frames (stdin, sizes, close), not as raw bytes.
    framed: bool,
    input: Decoder,
    /// Still reading from it (it has not shut down its side).
    reading: bool,
    out: Vec<u8>,
}

/// The shim's side: the listening socket, the attached clients, the container's stdin.
/// Everything is non-blocking; the shim's poll loop drives it through [`Hub::slots`] and
/// [`Hub::ready`].
pub struct Hub {
    listener: Option<UnixListener>,
    clients: Vec<Client>,
    stdin: Option<OwnedFd>,
    once: bool,
    /// Close stdin once `pending` is written (stdinOnce and its session ended).
    closing: bool,
    pending: Vec<u8>,
    /// The container's terminal (its pty master), which resize frames apply to.
    terminal: Option<OwnedFd>,
    /// The last byte of input taken, to know whether a terminal's line is empty.
    last_input: Option<u8>,
}

impl Hub {
    /// Listens on `<dir>/attach.sock` (mode 0600). `stdin` is the write end of the
    /// container's stdin pipe, if it has one.
    pub fn bind(dir: &Path, stdin: Option<OwnedFd>, once: bool) -> io::Result<Hub> {
        let handle = std::fs::File::open(dir)?;
        let path = socket_path(&handle);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        if let Some(fd) = &stdin {
            let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
            let flags =
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        }
        Ok(Hub {
            listener: Some(listener),
            clients: Vec::new(),
            stdin,
            once,
            closing: false,
            pending: Vec::new(),
            terminal: None,
            last_input: None,
        })
    }

    /// The container has a terminal: `master` (a descriptor of its pty master) takes the
    /// sizes terminal clients send.
    pub fn with_terminal(mut self, master: OwnedFd) -> Hub {
        self.terminal = Some(master);
        self
    }

    /// The descriptors to poll and for what.
    pub fn slots(&self) -> Vec<(Slot, PollFd<'_>)> {
        let mut v = Vec::new();
        if let Some(l) = &self.listener {
            v.push((Slot::Listener, PollFd::new(l.as_fd(), PollFlags::POLLIN)));
        }
        if let (Some(fd), false) = (&self.stdin, self.pending.is_empty()) {
            v.push((Slot::Stdin, PollFd::new(fd.as_fd(), PollFlags::POLLOUT)));
        }
        let room = self.pending.len() < STDIN_BACKLOG;
        for (i, c) in self.clients.iter().enumerate() {
            let mut flags = PollFlags::empty();
            if c.reading && room {
                flags |= PollFlags::POLLIN;
            }
            if !c.out.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            v.push((Slot::Client(i), PollFd::new(c.stream.as_fd(), flags)));
        }
        v
    }

    /// Acts on what poll reported for the slots [`Hub::slots`] returned.
    pub fn ready(&mut self, events: &[(Slot, PollFlags)]) {
        let mut gone = Vec::new();
        for (slot, ev) in events {
            if ev.is_empty() {
                continue;
            }
            match slot {
                Slot::Listener => self.accept(),
                Slot::Stdin => self.write_stdin(),
                Slot::Client(i) => {
                    // POLLHUP on a stream socket: the client closed both ways (a client
                    // that only ended its input reads as EOF and still gets output).
                    let hup = ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
                    let readable = ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP);
                    if readable && self.clients[*i].reading && !self.read(*i) {
                        gone.push(*i);
                        continue;
                    }
                    if hup || !self.flush(*i) {
                        gone.push(*i);
                    }
                }
            }
        }
        self.drop_clients(gone);
    }

    /// Sends output to every client; a client too far behind is dropped.
    pub fn broadcast(&mut self, stream: u8, data: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let frame = encode(stream, data);
        let mut gone = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            if c.out.len() + frame.len() > CLIENT_BACKLOG {
                gone.push(i);
                continue;
            }
            c.out.extend_from_slice(&frame);
        }
        for i in 0..self.clients.len() {
            if !gone.contains(&i) && !self.flush(i) {
                gone.push(i);
            }
        }
        self.drop_clients(gone);
    }

    /// The container ended: sends what is left (for up to `limit`), then lets every
    /// client and the container's stdin go.
    pub fn finish(mut self, limit: Duration) {
        self.listener = None;
        let deadline = Instant::now() + limit;
        while self.clients.iter().any(|c| !c.out.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let events: Vec<(Slot, PollFlags)> = {
                let mut slots: Vec<(Slot, PollFd)> = self
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !c.out.is_empty())
                    .map(|(i, c)| {
                        (
                            Slot::Client(i),
                            PollFd::new(c.stream.as_fd(), PollFlags::POLLOUT),
                        )
                    })
                    .collect();
                let mut fds: Vec<PollFd> = slots.iter().map(|(_, f)| *f).collect();
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                if nix::poll::poll(&mut fds, PollTimeout::from(ms)).is_err() {
                    break;
                }
                slots
                    .iter_mut()
                    .zip(fds.iter())
                    .map(|((s, _), f)| (*s, f.revents().unwrap_or(PollFlags::empty())))
                    .collect()
            };
            let mut gone = Vec::new();
            for (slot, ev) in events {
                if let Slot::Client(i) = slot {
                    if ev.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) || !self.flush(i) {
                        gone.push(i);
                    }
                }
            }
            self.drop_clients(gone);
        }
    }

    fn accept(&mut self) {
        let Some(l) = &self.listener else { return };
        loop {
            match l.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(Client {
                            stream,
                            stdin: None,
                            framed: false,
                            input: Decoder::default(),
                            reading: true,
                            out: Vec::new(),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Reads from client `i`; false when it is gone.
    fn read(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let c = &mut self.clients[i];
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.reading = false;
                if c.stdin == Some(true) {
                    self.stdin_session_ended();
                }
                true
            }
            Ok(n) => {
                let mut data = &buf[..n];
                if c.stdin.is_none() {
                    let hello = data[0];
                    c.stdin = Some(hello == HELLO_STDIN || hello == HELLO_FRAMED_STDIN);
                    c.framed = hello == HELLO_FRAMED_STDIN || hello == HELLO_FRAMED_OUTPUT;
                    data = &data[1..];
                }
                let sends_stdin = c.stdin == Some(true);
                if !c.framed {
                    if sends_stdin {
                        self.take_stdin(data);
                    }
                    return true;
                }
                let frames = c.input.push(data);
                for (kind, body) in frames {
                    match kind {
                        IN_STDIN if sends_stdin => self.take_stdin(&body),
                        IN_RESIZE => self.resize(&body),
                        IN_CLOSE if sends_stdin => {
                            // Done with stdin, still reading output (and sending sizes).
                            self.clients[i].stdin = Some(false);
                            self.stdin_session_ended();
                        }
                        _ => {}
                    }
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(_) => false,
        }
    }

    /// Writes what client `i` is owed; false when it is gone.
    fn flush(&mut self, i: usize) -> bool {
        let c = &mut self.clients[i];
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => return false,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Input from a client that sends stdin.
    fn take_stdin(&mut self, data: &[u8]) {
        if self.stdin.is_some() && !self.closing {
            if let Some(&b) = data.last() {
                self.last_input = Some(b);
            }
            self.pending.extend_from_slice(data);
            self.write_stdin();
        }
    }

    fn resize(&mut self, body: &[u8]) {
        if let (Some(master), Some(size)) = (&self.terminal, WinSize::from_bytes(body)) {
            if let Err(e) = pty::set_size(master.as_fd(), size) {
                tracing::debug!(%e, "resize the container's terminal");
            }
        }
    }

    fn write_stdin(&mut self) {
        if let Some(fd) = &self.stdin {
            while !self.pending.is_empty() {
                match nix::unistd::write(fd, &self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(nix::errno::Errno::EAGAIN) => return,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => {
                        // The container closed its stdin: nothing more can reach it.
                        self.pending.clear();
                        self.stdin = None;
                        return;
                    }
                }
            }
        }
        if self.closing && self.pending.is_empty() {
            self.stdin = None;
        }
    }

    /// An attach session that wrote to stdin ended: for stdinOnce, stdin ends too. A
    /// pipe is closed; a terminal cannot be closed for input alone (closing the master
    /// hangs the terminal up and loses the output), so it gets the keys that end input
    /// on a terminal ([`pty::end_of_input`]), after what the session typed.
    fn stdin_session_ended(&mut self) {
        if !self.once || self.closing {
            return;
        }
        if let (Some(terminal), Some(_)) = (&self.terminal, &self.stdin) {
            match pty::end_of_input_for(terminal.as_fd(), self.last_input) {
                Ok(keys) => self.pending.extend_from_slice(&keys),
                Err(e) => tracing::debug!(%e, "read the container's terminal settings"),
            }
        }
        self.closing = true;
        self.write_stdin();
    }

    fn drop_clients(&mut self, mut gone: Vec<usize>) {
        gone.sort_unstable();
        gone.dedup();
        for i in gone.into_iter().rev() {
            let c = self.clients.remove(i);
            if c.reading && c.stdin == Some(true) {
                self.stdin_session_ended();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One round of the shim's poll loop: wait up to 20 ms, then serve what is ready.
    fn poll_once(hub: &mut Hub) {
        let events: Vec<(Slot, PollFlags)> = {
            let slots = hub.slots();
            let mut fds: Vec<PollFd> = slots.iter().map(|(_, f)| *f).collect();
            nix::poll::poll(&mut fds, PollTimeout::from(20u16)).unwrap();
            slots
                .iter()
                .zip(fds.iter())
                .map(|((s, _), f)| (*s, f.revents().unwrap_or(PollFlags::empty())))
                .collect()
        };
        hub.ready(&events);
    }

    #[test]
    fn frames_survive_any_split() {
        let frames = [
            (STDOUT, b"hello\n".to_vec()),
            (STDERR, vec![]),
            (STDOUT, vec![7u8; 70_000]),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(|(s, d)| encode(*s, d)).collect();
        for chunk in [1, 3, 5, 6, 4096, wire.len()] {
            let mut d = Decoder::default();
            let got: Vec<(u8, Vec<u8>)> = wire.chunks(chunk).flat_map(|c| d.push(c)).collect();
            assert_eq!(got, frames.to_vec(), "chunks of {chunk}");
        }
    }

    #[test]
    fn stdin_modes() {
        let cases = [
            (false, false, StdinMode::Null),
            (false, true, StdinMode::Null),
            (true, false, StdinMode::Open),
            (true, true, StdinMode::Once),
        ];
        for (stdin, once, want) in cases {
            assert_eq!(StdinMode::of(stdin, once), want);
        }
    }

    /// The hub in a thread of its own, as in the shim; the test plays container and agent.
    #[tokio::test]
    async fn hub_forwards_output_and_stdin_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
        let mut hub = Hub::bind(tmp.path(), Some(stdin_w), true).unwrap();
        let (out_tx, out_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let shim = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                while let Ok(line) = out_rx.try_recv() {
                    if line.is_empty() {
                        hub.finish(Duration::from_secs(1));
                        return;
                    }
                    hub.broadcast(STDOUT, &line);
                }
                poll_once(&mut hub);
            }
        });
        let mut s = connect(tmp.path(), true, false).await.unwrap();
        let mut watcher = connect(tmp.path(), false, false).await.unwrap();
        let mut stdin = s.stdin.take().unwrap();
        stdin.write_all(b"hello\n").await.unwrap();
        stdin.shutdown().await.unwrap();
        // The "container" reads its stdin to the end: stdinOnce closed it after the session.
        let got = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::from(stdin_r);
            let mut got = String::new();
            f.read_to_string(&mut got).unwrap();
            got
        })
        .await
        .unwrap();
        assert_eq!(got, "hello\n");
        // Both clients see output after the stdin session ended (half-close, not gone).
        out_tx.send(b"got hello\n".to_vec()).unwrap();
        out_tx.send(Vec::new()).unwrap();
        let mut out = String::new();
        s.stdout.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "got hello\n");
        let mut seen = String::new();
        watcher.stdout.read_to_string(&mut seen).await.unwrap();
        assert_eq!(seen, "got hello\n");
        assert_eq!(s.exit_code.await.unwrap(), 0);
        shim.join().unwrap();
    }

    /// A hub holding the master of a real pty (as a shim of a `tty: true` container does),
    /// polled by a thread until `stop` is set; the pty's master is the caller's to drop.
    fn terminal_hub(
        stdin_once: bool,
    ) -> (
        tempfile::TempDir,
        nix::pty::OpenptyResult,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut hub = Hub::bind(
            tmp.path(),
            Some(pty.master.try_clone().unwrap()),
            stdin_once,
        )
        .unwrap()
        .with_terminal(pty.master.try_clone().unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shim = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    poll_once(&mut hub);
                }
                hub.finish(Duration::from_millis(100));
            })
        };
        (tmp, pty, stop, shim)
    }

    /// A terminal client against a hub that holds a real pty: its sizes reach the
    /// terminal, its stdin the slave side, and its end of stdin leaves the terminal open.
    #[tokio::test]
    async fn terminal_clients_resize_and_type() {
        let (tmp, pty, stop, shim) = terminal_hub(false);
        let master = pty.master;
        let mut s = connect(tmp.path(), true, true).await.unwrap();
        let resize = s.resize.take().expect("a terminal session takes sizes");
        resize.send(WinSize { cols: 99, rows: 33 }).await.unwrap();
        let mut stdin = s.stdin.take().unwrap();
        stdin.write_all(b"typed\n").await.unwrap();
        stdin.shutdown().await.unwrap();
        let slave = pty.slave;
        let (line, size) = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::from(slave);
            let mut buf = [0u8; 64];
            let n = f.read(&mut buf).unwrap();
            let mut ws = nix::libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // The size was sent before the input, so it is in place once the input is.
            window_size(f.as_raw_fd(), &mut ws);
            (buf[..n].to_vec(), (ws.ws_col, ws.ws_row))
        })
        .await
        .unwrap();
        assert_eq!(line, b"typed\n");
        assert_eq!(size, (99, 33));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        shim.join().unwrap();
        drop(master);
    }

    /// stdinOnce on a terminal: when the one session ends its input, the slave's reader
    /// gets what was typed (a partial line) and then the end of input.
    #[tokio::test]
    async fn terminal_stdin_once_ends_input_with_eof() {
        let (tmp, pty, stop, shim) = terminal_hub(true);
        let master = pty.master;
        let mut s = connect(tmp.path(), true, true).await.unwrap();
        let mut stdin = s.stdin.take().unwrap();
        stdin.write_all(b"no newline").await.unwrap();
        stdin.shutdown().await.unwrap();
        let slave = pty.slave;
        let reads = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::from(slave);
            let mut reads = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                let n = f.read(&mut buf).unwrap();
                reads.push(buf[..n].to_vec());
                if n == 0 || reads.len() > 3 {
                    return reads;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(reads, [b"no newline".to_vec(), Vec::new()]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        shim.join().unwrap();
        drop(master);
    }

    #[allow(unsafe_code)]
    fn window_size(fd: std::os::fd::RawFd, ws: &mut nix::libc::winsize) {
        // SAFETY: TIOCGWINSZ writes one `winsize` through a pointer to a live local.
        let rc = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCGWINSZ, ws as *mut _) };
        assert_eq!(rc, 0);
    }
}
