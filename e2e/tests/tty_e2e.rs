//! Terminals through kubectl, which only asks for one when its stdin is a terminal: each
//! kubectl here runs on a pseudo-terminal the test opens (the slave as its stdin, stdout
//! and stderr), and the test types on the master as a user would.
//!
//! `kubectl exec -it POD -- sh` (kubectl 1.30 and 1.33) → `tty` names a /dev/pts path,
//! `stty size` the test's terminal size, a resize (SIGWINCH) reaches the container,
//! `exit 3` is kubectl's exit code · `kubectl attach -it` to a `tty: true` container ·
//! `kubectl run -it --rm --restart=Never` round trip, then the pod is gone.

use std::time::Duration;

use anyhow::{bail, Result};
use kith_agent::runtime::pty::WinSize;
use kith_e2e::tty::TtyKubectl;
use kith_e2e::{busybox_cluster, AgentOptions, Cluster, Kubectl};

const K: Kubectl = Kubectl::V1_33;
const PHASE: &str = "{.status.phase}";

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

    // kubectl exec -it (both pinned versions): a terminal of the process's own, the
    // user's size, resizes, and the shell's exit code as kubectl's.
    for version in [Kubectl::V1_30, Kubectl::V1_33] {
        let v = version.minor();
        let mut k = TtyKubectl::spawn(
            cluster,
            version,
            &["exec", "-it", "sleeper", "-n", &ns, "--", "sh"],
            WinSize {
                cols: 111,
                rows: 33,
            },
        )?;
        // kubectl sends its terminal's size beside the first keys, not before them:
        // asked again until it shows.
        k.type_until("stty size\r", "33 111").await?;
        let out = k.type_until("tty; echo ma''rk1\r", "mark1").await?;
        assert!(out.contains("/dev/pts/"), "{v}: exec -it output: {out:?}");
        k.resize(WinSize { cols: 70, rows: 20 })?;
        k.type_until("stty size; echo ma''rk2\r", "20 70").await?;
        k.type_("exit 3\r")?;
        assert_eq!(k.exit_code().await?, 3, "{v}: {:?}", k.text());
    }

    // kubectl attach -it to a container with `tty: true`: its shell on its terminal.
    let mut k = TtyKubectl::spawn(
        cluster,
        K,
        &["attach", "-it", "console", "-n", &ns],
        WinSize { cols: 90, rows: 25 },
    )?;
    k.type_until("stty size\r", "25 90").await?;
    let out = k.type_until("tty; echo ma''rk3\r", "mark3").await?;
    assert!(out.contains("/dev/pts/"), "attach -it output: {out:?}");
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
        K,
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
