//! `kubectl exec` against `kith up` with its agent running real containers, with both
//! pinned kubectl versions (both speak websockets, v5.channel.k8s.io, first).
//!
//! output and exit codes → stdin → `-c` in a two-container pod → an unknown container →
//! a container that is not running (400 from the node) → a completed pod.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kith_e2e::{busybox_cluster, AgentOptions, Cluster, Kubectl};

/// Polls `kubectl get` with a jsonpath until its output is `want`.
async fn wait_jsonpath(
    cluster: &Cluster,
    ns: &str,
    pod: &str,
    jsonpath: &str,
    want: &str,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let out = cluster
            .kubectl(
                Kubectl::V1_33,
                &[
                    "get",
                    "pod",
                    pod,
                    "-n",
                    ns,
                    "-o",
                    &format!("jsonpath={jsonpath}"),
                ],
            )
            .await?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && last.trim() == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!(
        "timed out waiting for {pod} {jsonpath} = {want}; last: {last}\nkith log:\n{}",
        cluster.log()
    )
}

/// Runs kubectl expecting failure; returns (exit code, stderr).
async fn kubectl_fails(cluster: &Cluster, k: Kubectl, args: &[&str]) -> Result<(i32, String)> {
    let out = cluster.kubectl(k, args).await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "kubectl {} {args:?} succeeded: {}",
        k.minor(),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok((out.status.code().unwrap_or(-1), stderr))
}

async fn exec_checks(cluster: &Cluster, k: Kubectl, ns: &str) -> Result<()> {
    let v = k.minor();
    // Output, on the right stream.
    let hi = cluster
        .kubectl_ok(k, &["exec", "two", "-n", ns, "-c", "a", "--", "echo", "hi"])
        .await?;
    assert_eq!(hi, "hi\n", "{v}");
    let out = cluster
        .kubectl(
            k,
            &[
                "exec",
                "two",
                "-n",
                ns,
                "-c",
                "a",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2",
            ],
        )
        .await?;
    assert!(out.status.success(), "{v}: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{v}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err\n"),
        "{v}: {out:?}"
    );

    // A non-zero exit code becomes kubectl's.
    let (code, stderr) = kubectl_fails(
        cluster,
        k,
        &[
            "exec", "two", "-n", ns, "-c", "a", "--", "sh", "-c", "exit 3",
        ],
    )
    .await?;
    assert_eq!(code, 3, "{v}: {stderr}");
    assert!(
        stderr.contains("command terminated with exit code 3"),
        "{v}: {stderr}"
    );

    // Stdin reaches the process, and its end ends `cat` (v5 closes the stream).
    let input = b"line one\nline two\n";
    let echoed = cluster
        .kubectl_stdin_ok(
            k,
            &["exec", "-i", "two", "-n", ns, "-c", "a", "--", "cat"],
            input,
        )
        .await?;
    assert_eq!(echoed.as_bytes(), input, "{v}");
    let counted = cluster
        .kubectl_stdin_ok(
            k,
            &["exec", "-i", "two", "-n", ns, "-c", "b", "--", "wc", "-c"],
            &vec![b'x'; 200_000],
        )
        .await?;
    assert_eq!(counted.trim(), "200000", "{v}");

    // -c picks the container; without it kubectl defaults to the first.
    let who = cluster
        .kubectl_ok(
            k,
            &[
                "exec",
                "two",
                "-n",
                ns,
                "-c",
                "b",
                "--",
                "sh",
                "-c",
                "echo $WHO",
            ],
        )
        .await?;
    assert_eq!(who, "b\n", "{v}");
    let who = cluster
        .kubectl_ok(k, &["exec", "two", "-n", ns, "--", "sh", "-c", "echo $WHO"])
        .await?;
    assert_eq!(who, "a\n", "{v}");

    // An unknown container.
    let (_, stderr) = kubectl_fails(
        cluster,
        k,
        &["exec", "two", "-n", ns, "-c", "nope", "--", "true"],
    )
    .await?;
    assert!(
        stderr.contains("container nope is not valid for pod two")
            || stderr.contains("container nope not found"),
        "{v}: {stderr}"
    );

    // A container that has exited in a running pod: the node answers 400.
    let (_, stderr) = kubectl_fails(
        cluster,
        k,
        &["exec", "mixed", "-n", ns, "-c", "short", "--", "true"],
    )
    .await?;
    assert!(
        stderr.contains("container short is not running in pod mixed"),
        "{v}: {stderr}"
    );

    // A completed pod.
    let (_, stderr) = kubectl_fails(cluster, k, &["exec", "done", "-n", ns, "--", "true"]).await?;
    assert!(
        stderr.contains("cannot exec into a container in a completed pod")
            || stderr.contains("cannot exec into or attach to a container in a completed pod"),
        "{v}: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_through_the_api_server() -> Result<()> {
    let (_registry, image, cluster) = busybox_cluster(AgentOptions::unique("exec")).await?;
    let ns = cluster.namespace("exec-e2e").await?;
    let pods = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: two
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: a
    image: {image}
    command: ["sleep", "3600"]
    env: [{{name: WHO, value: a}}]
  - name: b
    image: {image}
    command: ["sleep", "3600"]
    env: [{{name: WHO, value: b}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: mixed
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: long
    image: {image}
    command: ["sleep", "3600"]
  - name: short
    image: {image}
    command: ["true"]
---
apiVersion: v1
kind: Pod
metadata:
  name: done
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command: ["true"]
"#
    );
    cluster.apply_yaml(Kubectl::V1_33, Some(&ns), &pods).await?;
    wait_jsonpath(&cluster, &ns, "two", "{.status.phase}", "Running").await?;
    wait_jsonpath(
        &cluster,
        &ns,
        "mixed",
        "{.status.phase} {.status.containerStatuses[?(@.name==\"short\")].state.terminated.reason}",
        "Running Completed",
    )
    .await?;
    wait_jsonpath(&cluster, &ns, "done", "{.status.phase}", "Succeeded").await?;

    for k in [Kubectl::V1_30, Kubectl::V1_33] {
        exec_checks(&cluster, k, &ns)
            .await
            .with_context(|| format!("kith log:\n{}", cluster.log()))?;
    }

    cluster
        .kubectl_ok(
            Kubectl::V1_33,
            &[
                "delete",
                "pod",
                "--all",
                "-n",
                &ns,
                "--wait=true",
                "--timeout=60s",
            ],
        )
        .await?;
    Ok(())
}
