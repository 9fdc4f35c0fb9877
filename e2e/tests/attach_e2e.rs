//! `kubectl attach` and `kubectl run -i` against `kith up` with its agent running real
//! containers: the API server hands the websocket to the agent, whose shim holds the
//! container's stdio.
//!
//! `echo hello | kubectl attach -i` to a container waiting on its stdin → its answer ·
//! `kubectl attach` (output only) follows a container's output to its end ·
//! `echo hello | kubectl run -i --rm --restart=Never` round trip, then the pod is gone.

use std::time::Duration;

use anyhow::Result;
use kith_e2e::{busybox_cluster, AgentOptions, Kubectl};

const K: Kubectl = Kubectl::V1_33;
const PHASE: &str = "{.status.phase}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_and_run_interactive() -> Result<()> {
    let (_registry, image, cluster) = busybox_cluster(AgentOptions::unique("attach")).await?;
    let ns = cluster.namespace("attach").await?;
    let pods = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: talk
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "read line; echo got $line"]
    stdin: true
    stdinOnce: true
---
apiVersion: v1
kind: Pod
metadata:
  name: chatty
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 5; for i in 1 2 3 4 5; do echo line $i; sleep 1; done"]
"#
    );
    cluster.apply_yaml(K, Some(&ns), &pods).await?;

    // stdin reaches the container, its answer comes back, and it ends (stdinOnce).
    cluster
        .wait_pod(K, &ns, "talk", PHASE, "Running", |s| s == "Running")
        .await?;
    let out = cluster
        .kubectl_stdin_ok(K, &["attach", "-i", "talk", "-n", &ns], b"hello\n")
        .await?;
    assert!(out.contains("got hello"), "attach output: {out:?}");
    cluster
        .wait_pod(K, &ns, "talk", PHASE, "Succeeded", |s| s == "Succeeded")
        .await?;
    let log = cluster.kubectl_ok(K, &["logs", "talk", "-n", &ns]).await?;
    assert_eq!(log, "got hello\n");

    // Output only: kubectl follows the container until it exits.
    cluster
        .wait_pod(K, &ns, "chatty", PHASE, "Running", |s| s == "Running")
        .await?;
    let out = cluster
        .kubectl_ok(K, &["attach", "chatty", "-n", &ns])
        .await?;
    assert!(out.ends_with("line 5\n"), "attach output: {out:?}");

    // kubectl run -i --rm: create, attach with stdin, wait for the end, delete.
    let out = cluster
        .kubectl_stdin_ok(
            K,
            &[
                "run",
                "runner",
                "-n",
                &ns,
                "-i",
                "--rm",
                "--restart=Never",
                &format!("--image={image}"),
                "--",
                "sh",
                "-c",
                "read line; echo got $line",
            ],
            b"hello\n",
        )
        .await?;
    assert!(out.contains("got hello"), "run output: {out:?}");
    let gone = cluster
        .kubectl(K, &["get", "pod", "runner", "-n", &ns])
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut gone = gone;
    while gone.status.success() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gone = cluster
            .kubectl(K, &["get", "pod", "runner", "-n", &ns])
            .await?;
    }
    assert!(
        !gone.status.success(),
        "pod runner still there after kubectl run --rm"
    );
    Ok(())
}
