//! Exec probes against `kith up` with its agent running real containers: the probe's
//! command runs inside the container, as `kubectl exec` does.
//!
//! an exec liveness probe (`cat /tmp/healthy`) passes → the file is removed with
//! `kubectl exec` → Unhealthy events with the command's output → the container restarts
//! · an exec readiness probe gates the Ready condition both ways.

use std::time::Duration;

use anyhow::Result;
use kith_e2e::{busybox_cluster, AgentOptions, Kubectl};

const K: Kubectl = Kubectl::V1_33;

const READY: &str = "{.status.conditions[?(@.type==\"Ready\")].status}";
const RESTARTS: &str = "{.status.containerStatuses[0].restartCount}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_restart_and_gate_readiness() -> Result<()> {
    let (_registry, image, cluster) = busybox_cluster(AgentOptions::unique("probes")).await?;
    let ns = cluster.namespace("probes").await?;
    let pods = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: live
spec:
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "touch /tmp/healthy; exec sleep 3600"]
    livenessProbe:
      exec:
        command: ["cat", "/tmp/healthy"]
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata:
  name: gate
spec:
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "exec sleep 3600"]
    readinessProbe:
      exec:
        command: ["cat", "/tmp/ready"]
      periodSeconds: 1
"#
    );
    cluster.apply_yaml(K, Some(&ns), &pods).await?;

    // Readiness: not Ready while the file is missing, Ready once it exists, and not
    // Ready again once it is gone — all while the container keeps running.
    cluster
        .wait_pod(K, &ns, "gate", "{.status.phase}", "Running", |s| {
            s == "Running"
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = cluster
        .wait_pod(K, &ns, "gate", READY, "a Ready condition", |s| {
            !s.is_empty()
        })
        .await?;
    assert_eq!(ready, "False", "Ready before /tmp/ready exists");
    cluster
        .kubectl_ok(K, &["exec", "gate", "-n", &ns, "--", "touch", "/tmp/ready"])
        .await?;
    cluster
        .wait_pod(K, &ns, "gate", READY, "Ready=True", |s| s == "True")
        .await?;
    cluster
        .kubectl_ok(K, &["exec", "gate", "-n", &ns, "--", "rm", "/tmp/ready"])
        .await?;
    cluster
        .wait_pod(K, &ns, "gate", READY, "Ready=False", |s| s == "False")
        .await?;
    let restarts = cluster
        .kubectl_ok(
            K,
            &[
                "get",
                "pod",
                "gate",
                "-n",
                &ns,
                "-o",
                &format!("jsonpath={RESTARTS}"),
            ],
        )
        .await?;
    assert_eq!(restarts.trim(), "0", "readiness must not restart");

    // Liveness: passing while the file exists; removing it restarts the container.
    cluster
        .wait_pod(K, &ns, "live", READY, "Ready=True", |s| s == "True")
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarts = cluster
        .kubectl_ok(
            K,
            &[
                "get",
                "pod",
                "live",
                "-n",
                &ns,
                "-o",
                &format!("jsonpath={RESTARTS}"),
            ],
        )
        .await?;
    assert_eq!(
        restarts.trim(),
        "0",
        "a passing exec liveness probe restarted"
    );
    cluster
        .kubectl_ok(K, &["exec", "live", "-n", &ns, "--", "rm", "/tmp/healthy"])
        .await?;
    cluster
        .wait_pod(K, &ns, "live", RESTARTS, "a restart", |s| {
            s.parse::<u32>().is_ok_and(|n| n >= 1)
        })
        .await?;
    let events = cluster
        .kubectl_ok(
            K,
            &[
                "get",
                "events",
                "-n",
                &ns,
                "-o",
                "jsonpath={range .items[*]}{.involvedObject.name}|{.reason}|{.message}{\"\\n\"}{end}",
            ],
        )
        .await?;
    let want = "live|Unhealthy|Liveness probe failed: \
                cat: can't open '/tmp/healthy': No such file or directory";
    assert!(events.lines().any(|l| l == want), "events:\n{events}");
    // The new container made the file again: it runs and passes its probe.
    cluster
        .wait_pod(K, &ns, "live", READY, "Ready=True after the restart", |s| {
            s == "True"
        })
        .await?;
    Ok(())
}
