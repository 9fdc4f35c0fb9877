//! Pseudo-terminals for containers and execs that ask for a `tty`.
//!
//! ```text
//!  shim: ConsoleSocket::bind(<dir>, name) ── path ──► libcontainer with_console_socket
//!                                                      │ container side: openpty() in its
//!                                                      │ own devpts, slave = its stdio
//!        ConsoleSocket::receive() ◄── SCM_RIGHTS(master) ┘
//!        master: output ─► log / attach clients / exec stdout
//!                input  ◄─ stdin frames;  resize frames ─► set_size (TIOCSWINSZ)
//! ```
//! The master never leaves the shim: the agent's tokio process only sees bytes, and the
//! one ioctl a resize needs happens in the process that holds the terminal.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

/// A terminal size in character cells, as kubectl's resize messages carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinSize {
    pub cols: u16,
    pub rows: u16,
}

impl WinSize {
    /// The 4-byte body of a resize frame between agent and shim: columns, rows (BE).
    pub fn to_bytes(self) -> [u8; 4] {
        let [c0, c1] = self.cols.to_be_bytes();
        let [r0, r1] = self.rows.to_be_bytes();
        [c0, c1, r0, r1]
    }

    /// The inverse of [`WinSize::to_bytes`]; `None` for a body of any other length.
    pub fn from_bytes(b: &[u8]) -> Option<WinSize> {
        match b {
            [c0, c1, r0, r1] => Some(WinSize {
                cols: u16::from_be_bytes([*c0, *c1]),
                rows: u16::from_be_bytes([*r0, *r1]),
            }),
            _ => None,
        }
    }
}

/// Sets the terminal size of the pty whose master is `master`; the kernel tells the
/// foreground process group (SIGWINCH).
#[allow(unsafe_code)]
pub fn set_size(master: BorrowedFd<'_>, size: WinSize) -> io::Result<()> {
    let ws = nix::libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points at a live,
    // initialised local for the whole call; the fd is borrowed, so it is open.
    let rc = unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where libcontainer's container side sends the pty master (its `--console-socket`).
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on `<dir>/<name>`. The bind goes through an open handle on `dir` because a
    /// Unix socket path must fit in 108 bytes; libcontainer reaches the socket through a
    /// symlink to [`ConsoleSocket::path`], which may be as long as it likes.
    pub fn bind(dir: &Path, name: &str) -> io::Result<ConsoleSocket> {
        let handle = std::fs::File::open(dir)?;
        let short = format!("/proc/self/fd/{}/{name}", handle.as_raw_fd());
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(short)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the container side's connection and takes the master it sends, waiting at
    /// most `limit` for it.
    pub fn receive(&self, limit: Duration) -> io::Result<OwnedFd> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(self.listener.as_fd(), deadline)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(true)?;
        loop {
            let mut name = [0u8; 256];
            let mut iov = [io::IoSliceMut::new(&mut name)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            match recvmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for c in msg.cmsgs().map_err(io::Error::from)? {
                        if let ControlMessageOwned::ScmRights(r) = c {
                            fds.extend(r);
                        }
                    }
                    let mut owned: Vec<OwnedFd> = fds.into_iter().map(own_fd).collect();
                    return match owned.len() {
                        0 if msg.bytes == 0 => Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the container closed the console socket without a terminal",
                        )),
                        1 => Ok(owned.remove(0)),
                        n => Err(io::Error::other(format!(
                            "expected one terminal descriptor, got {n}"
                        ))),
                    };
                }
                Err(nix::errno::Errno::EAGAIN) => wait_readable(stream.as_fd(), deadline)?,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes ownership of a descriptor the kernel just installed in this process for us.
#[allow(unsafe_code)]
fn own_fd(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: SCM_RIGHTS gave this process a new descriptor that nothing else refers to;
    // wrapping it makes it closed exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no terminal from the container",
        ));
    }
    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What to type on a terminal so that its reader sees the end of input, as a user
/// pressing ^D would: the terminal's EOF character (`c_cc[VEOF]`), twice when the
/// current line holds unread input (`last` typed byte not a line end), because the first
/// only hands that partial line over. Nothing when the terminal is not in canonical mode
/// (a raw-mode program reads ^D as a plain byte) or has VEOF disabled.
pub fn end_of_input(canonical: bool, veof: u8, last: Option<u8>) -> Vec<u8> {
    // _POSIX_VDISABLE on Linux.
    if !canonical || veof == 0 {
        return Vec::new();
    }
    match last {
        None | Some(b'\n' | b'\r') => vec![veof],
        Some(b) if b == veof => vec![veof],
        Some(_) => vec![veof, veof],
    }
}

/// [`end_of_input`] for the terminal whose master is `master`, from its current settings.
pub fn end_of_input_for(master: BorrowedFd<'_>, last: Option<u8>) -> io::Result<Vec<u8>> {
    use nix::sys::termios::{tcgetattr, LocalFlags, SpecialCharacterIndices};
    let t = tcgetattr(master).map_err(io::Error::from)?;
    Ok(end_of_input(
        t.local_flags.contains(LocalFlags::ICANON),
        t.control_chars[SpecialCharacterIndices::VEOF as usize],
        last,
    ))
}

/// Adds `TERM=xterm` unless the environment names a terminal type already: what
/// containerd's CRI does for tty containers, so shells and editors know what they drive.
pub fn with_term(mut env: Vec<String>) -> Vec<String> {
    if !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn winsize_bytes() {
        let cases = [
            WinSize { cols: 80, rows: 24 },
            WinSize { cols: 0, rows: 0 },
            WinSize {
                cols: 65535,
                rows: 300,
            },
        ];
        for s in cases {
            assert_eq!(WinSize::from_bytes(&s.to_bytes()), Some(s));
        }
        assert_eq!(WinSize::from_bytes(&[0, 80, 0]), None);
        assert_eq!(WinSize::from_bytes(&[]), None);
    }

    #[test]
    fn end_of_input_by_terminal_mode_and_line() {
        const D: u8 = 4;
        let cases: [(bool, u8, Option<u8>, &[u8]); 8] = [
            // Canonical, empty line: one ^D ends input.
            (true, D, None, &[D]),
            (true, D, Some(b'\n'), &[D]),
            (true, D, Some(b'\r'), &[D]),
            // A partial line: the first ^D hands it over, the second ends input.
            (true, D, Some(b'x'), &[D, D]),
            // Just after an EOF the line is empty again.
            (true, D, Some(D), &[D]),
            // Another EOF character is honoured.
            (true, 26, Some(b'x'), &[26, 26]),
            // Raw mode, or EOF disabled: nothing to send.
            (false, D, Some(b'x'), &[]),
            (true, 0, None, &[]),
        ];
        for (canonical, veof, last, want) in cases {
            assert_eq!(
                end_of_input(canonical, veof, last),
                want,
                "{canonical} {veof} {last:?}"
            );
        }
    }

    /// On a real pty: what `end_of_input_for` sends makes the slave's reader see the
    /// partial line and then the end of input (a read of 0 bytes).
    #[test]
    fn end_of_input_reaches_a_real_terminal() {
        let pty = nix::pty::openpty(None, None).unwrap();
        nix::unistd::write(&pty.master, b"partial").unwrap();
        let eof = end_of_input_for(pty.master.as_fd(), Some(b'l')).unwrap();
        assert_eq!(eof, [4, 4]);
        nix::unistd::write(&pty.master, &eof).unwrap();
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(pty.slave.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"partial");
        let n = nix::unistd::read(pty.slave.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(n, 0, "end of input");
    }

    #[test]
    fn term_is_added_once() {
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (vec![], vec!["TERM=xterm"]),
            (vec!["PATH=/bin"], vec!["PATH=/bin", "TERM=xterm"]),
            (vec!["TERM=vt100", "A=b"], vec!["TERM=vt100", "A=b"]),
            (vec!["TERMINAL=x"], vec!["TERMINAL=x", "TERM=xterm"]),
        ];
        for (env, want) in cases {
            let env = env.into_iter().map(String::from).collect();
            assert_eq!(with_term(env), want);
        }
    }

    /// A real pty and a real console socket: the master sent over the socket is the one
    /// received, and a size set on it is what the slave reports.
    #[test]
    fn master_travels_and_resizes() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let tmp = tempfile::tempdir().unwrap();
        let console = ConsoleSocket::bind(tmp.path(), "console.sock").unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let sender = std::os::unix::net::UnixStream::connect(console.path()).unwrap();
        let fds = [pty.master.as_raw_fd()];
        let iov = [io::IoSlice::new(b"/dev/ptmx")];
        sendmsg::<UnixAddr>(
            sender.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let master = console.receive(Duration::from_secs(5)).unwrap();
        set_size(
            master.as_fd(),
            WinSize {
                cols: 132,
                rows: 43,
            },
        )
        .unwrap();
        let mut ws = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        get_size_for_test(pty.slave.as_raw_fd(), &mut ws);
        assert_eq!((ws.ws_col, ws.ws_row), (132, 43));
        let path = console.path().to_path_buf();
        drop(console);
        assert!(!path.exists(), "the socket file goes with the listener");
    }

    #[allow(unsafe_code)]
    fn get_size_for_test(fd: std::os::fd::RawFd, ws: &mut nix::libc::winsize) {
        // SAFETY: TIOCGWINSZ writes one `winsize` through a pointer to a live local.
        let rc = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCGWINSZ, ws as *mut _) };
        assert_eq!(rc, 0);
    }
}
