//! kubectl on a pseudo-terminal, for `-it`: kubectl asks for a terminal only when its
//! stdin is one, so the test opens a pty, gives kubectl the slave as stdin, stdout and
//! stderr, and types on the master as a user would.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kith_agent::runtime::pty::{set_size, WinSize};

use crate::{Cluster, Kubectl};

/// One kubectl on a terminal of the test's: what it printed so far, a way to type.
pub struct TtyKubectl {
    child: tokio::process::Child,
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
    what: String,
    _cache: tempfile::TempDir,
}

impl TtyKubectl {
    /// Starts kubectl `args` (of `version`) against `cluster` on a new terminal of `size`.
    pub fn spawn(
        cluster: &Cluster,
        version: Kubectl,
        args: &[&str],
        size: WinSize,
    ) -> Result<TtyKubectl> {
        let ws = nix::pty::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).context("openpty")?;
        let cache = tempfile::tempdir()?;
        let slave: OwnedFd = pty.slave;
        let mut cmd = tokio::process::Command::new(version.path());
        cmd.args(args)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("KUBECACHEDIR", cache.path())
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave))
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawn kubectl")?;
        // Only kubectl holds the slave now: the master reads EIO once kubectl is gone.
        drop(cmd);
        let master = std::fs::File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        {
            let mut reader = master.try_clone()?;
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Ok(TtyKubectl {
            child,
            master,
            output,
            what: format!("kubectl {}", args.join(" ")),
            _cache: cache,
        })
    }

    /// Everything kubectl printed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Types `keys` on the terminal (a newline is `\r`, as a keyboard sends it).
    pub fn type_(&mut self, keys: &str) -> Result<()> {
        self.master.write_all(keys.as_bytes())?;
        Ok(())
    }

    /// Waits (30 s at most) until the output holds `want`; returns the output.
    pub async fn wait_for(&self, want: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.text();
            if text.contains(want) {
                return Ok(text);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{}: no {want:?} in its output: {text:?}", self.what);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `command` until its output shows `marker` (kubectl may still be attaching
    /// when the first keys arrive, as a user who presses enter again knows).
    pub async fn type_until(&mut self, command: &str, marker: &str) -> Result<String> {
        for _ in 0..20 {
            self.type_(command)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while tokio::time::Instant::now() < deadline {
                let text = self.text();
                if text.contains(marker) {
                    return Ok(text);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        bail!(
            "{}: no {marker:?} in its output: {:?}",
            self.what,
            self.text()
        )
    }

    /// A new terminal size, told to kubectl as a terminal would (SIGWINCH).
    pub fn resize(&self, size: WinSize) -> Result<()> {
        set_size(self.master.as_fd(), size)?;
        let pid = self.child.id().context("kubectl already reaped")?;
        let pid = rustix::process::Pid::from_raw(pid as i32).context("pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::WINCH)?;
        Ok(())
    }

    /// kubectl's exit code (60 s at most).
    pub async fn exit_code(&mut self) -> Result<i32> {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit: {:?}", self.what, self.text()))??;
        status
            .code()
            .with_context(|| format!("{} ended by {status}", self.what))
    }
}
