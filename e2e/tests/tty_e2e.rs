//! Terminals through kubectl, which only asks for one when its stdin is a terminal: each
//! kubectl here runs on a pseudo-terminal the test opens (the slave as its stdin, stdout
//! and stderr), and the test types on the master as a user would.
//!
//! `kubectl exec -it POD -- sh` → `tty` names a /dev/pts path, `stty size` the test's
//! terminal size, a resize (SIGWINCH) reaches the container, `exit 3` is kubectl's exit
//! code · `kubectl attach -it` to a `tty: true` container · `kubectl run -it --rm
//! --restart=Never` round trip, then the pod is gone.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kith_agent::runtime::pty::{set_size, WinSize};
use kith_e2e::{busybox_cluster, AgentOptions, Cluster, Kubectl};

const K: Kubectl = Kubectl::V1_33;
const PHASE: &str = "{.status.phase}";

/// One kubectl on a terminal of the test's: what it printed so far, a way to type.
struct TtyKubectl {
    child: tokio::process::Child,
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
    what: String,
    _cache: tempfile::TempDir,
}

impl TtyKubectl {
    fn spawn(cluster: &Cluster, args: &[&str], size: WinSize) -> Result<TtyKubectl> {
        let ws = nix::pty::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).context("openpty")?;
        let cache = tempfile::tempdir()?;
        let slave: OwnedFd = pty.slave;
        let mut cmd = tokio::process::Command::new(K.path());
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

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn type_(&mut self, keys: &str) -> Result<()> {
        self.master.write_all(keys.as_bytes())?;
        Ok(())
    }

    /// Waits (30 s at most) until the output holds `want`; returns the output.
    async fn wait_for(&self, want: &str) -> Result<String> {
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
    async fn type_until(&mut self, command: &str, marker: &str) -> Result<String> {
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
    fn resize(&self, size: WinSize) -> Result<()> {
        set_size(self.master.as_fd(), size)?;
        let pid = self.child.id().context("kubectl already reaped")?;
        let pid = rustix::process::Pid::from_raw(pid as i32).context("pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::WINCH)?;
        Ok(())
    }

    /// kubectl's exit code (60 s at most).
    async fn exit_code(&mut self) -> Result<i32> {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit: {:?}", self.what, self.text()))??;
        status
            .code()
            .with_context(|| format!("{} ended by {status}", self.what))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_attach_and_run_on_a_terminal() {
    let (_registry, image, cluster) = busybox_cluster(AgentOptions::unique("tty"))
        .await
        .expect("cluster");
    let result = checks(&cluster, &image).await;
    cluster.check(result);
}

async fn checks(cluster: &Cluster, image: &str) -> Result<()> {
    let ns = cluster.namespace("tty").await?;
    let pods = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sleeper
spec:
  containers:
  - name: main
    image: {image}
    command: ["sleep", "1000"]
---
apiVersion: v1
kind: Pod
metadata:
  name: console
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command: ["sh"]
    stdin: true
    tty: true
"#
    );
    cluster.apply_yaml(K, Some(&ns), &pods).await?;
    for pod in ["sleeper", "console"] {
        cluster
            .wait_pod(K, &ns, pod, PHASE, "Running", |s| s == "Running")
            .await?;
    }

    // kubectl exec -it: a terminal of the process's own, the user's size, resizes, and
    // the shell's exit code as kubectl's.
    let mut k = TtyKubectl::spawn(
        cluster,
        &["exec", "-it", "sleeper", "-n", &ns, "--", "sh"],
        WinSize {
            cols: 111,
            rows: 33,
        },
    )?;
    let out = k
        .type_until("tty; stty size; echo ma''rk1\r", "mark1")
        .await?;
    assert!(out.contains("/dev/pts/"), "exec -it output: {out:?}");
    assert!(out.contains("33 111"), "exec -it output: {out:?}");
    k.resize(WinSize { cols: 70, rows: 20 })?;
    k.type_until("stty size; echo ma''rk2\r", "20 70").await?;
    k.type_("exit 3\r")?;
    assert_eq!(k.exit_code().await?, 3, "{:?}", k.text());

    // kubectl attach -it to a container with `tty: true`: its shell on its terminal.
    let mut k = TtyKubectl::spawn(
        cluster,
        &["attach", "-it", "console", "-n", &ns],
        WinSize { cols: 90, rows: 25 },
    )?;
    let out = k
        .type_until("tty; stty size; echo ma''rk3\r", "mark3")
        .await?;
    assert!(out.contains("/dev/pts/"), "attach -it output: {out:?}");
    assert!(out.contains("25 90"), "attach -it output: {out:?}");
    k.type_("exit\r")?;
    assert_eq!(k.exit_code().await?, 0, "{:?}", k.text());
    cluster
        .wait_pod(K, &ns, "console", PHASE, "Succeeded", |s| s == "Succeeded")
        .await?;
    // The log holds the terminal's output.
    let log = cluster
        .kubectl_ok(K, &["logs", "console", "-n", &ns])
        .await?;
    assert!(log.contains("mark3"), "log: {log:?}");

    // kubectl run -it --rm: create with a terminal, attach, exit, delete.
    let mut k = TtyKubectl::spawn(
        cluster,
        &[
            "run",
            "runner",
            "-n",
            &ns,
            "-it",
            "--rm",
            "--restart=Never",
            &format!("--image={image}"),
            "--",
            "sh",
        ],
        WinSize {
            cols: 100,
            rows: 30,
        },
    )?;
    k.wait_for("If you don't see a command prompt").await?;
    let out = k.type_until("tty; echo ro''und\r", "round").await?;
    assert!(out.contains("/dev/pts/"), "run -it output: {out:?}");
    k.type_("exit\r")?;
    assert_eq!(k.exit_code().await?, 0, "{:?}", k.text());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = cluster
            .kubectl(K, &["get", "pod", "runner", "-n", &ns])
            .await?;
        if !got.status.success() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("pod runner still there after kubectl run --rm");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}
