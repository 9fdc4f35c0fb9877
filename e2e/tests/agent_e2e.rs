//! The whole pod path on one box, with real parts: `kith up` with its agent, a real OCI
//! registry (Debian's docker-registry) holding a busybox image, real kubectl.
//!
//! apply a pod → Running with a pod IP → `kubectl logs` → a crashing pod restarts with a
//! growing back-off → a missing image → ImagePullBackOff → delete → nothing left on the box.

use std::time::Duration;

use anyhow::{bail, Result};
use kith_e2e::{busybox_cluster, AgentOptions, Cluster, Kubectl};

const K: Kubectl = Kubectl::V1_33;

async fn wait_for(
    cluster: &Cluster,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&str) -> bool,
    args: &[&str],
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let out = cluster.kubectl(K, args).await?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && check(&last) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!(
        "timed out waiting for {what}; last output:\n{last}\nkith log:\n{}",
        cluster.log()
    )
}

/// Processes whose command line mentions `needle` (the pod's uid appears in shims').
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            out.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_log_restart_and_clean_up() -> Result<()> {
    let agent = AgentOptions::unique("pods");
    let (registry, image, cluster) = busybox_cluster(agent.clone()).await?;
    let ns = cluster.namespace("agent-e2e").await?;

    // A pod that prints and then serves forever.
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: hello
spec:
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "echo hello from kith; echo second line; mkdir /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www"]
    readinessProbe:
      httpGet:
        port: 8080
        path: /index.html
      periodSeconds: 1
"#
    );
    cluster.apply_yaml(K, Some(&ns), &pod).await?;
    let phase = wait_for(
        &cluster,
        "pod hello Running and Ready",
        Duration::from_secs(60),
        |s| s.trim() == "Running True",
        &[
            "get",
            "pod",
            "hello",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    )
    .await?;
    assert_eq!(phase.trim(), "Running True");
    let ip = cluster
        .kubectl_ok(
            K,
            &[
                "get",
                "pod",
                "hello",
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.podIP}",
            ],
        )
        .await?;
    let cidr_prefix = agent
        .cluster_cidr
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    assert!(
        ip.starts_with(&cidr_prefix),
        "pod IP {ip} not in {}",
        agent.cluster_cidr
    );

    let logs = cluster.kubectl_ok(K, &["logs", "hello", "-n", &ns]).await?;
    assert_eq!(logs, "hello from kith\nsecond line\n");
    let tail = cluster
        .kubectl_ok(K, &["logs", "hello", "-n", &ns, "--tail=1"])
        .await?;
    assert_eq!(tail, "second line\n");
    let stamped = cluster
        .kubectl_ok(K, &["logs", "hello", "-n", &ns, "--timestamps"])
        .await?;
    assert!(
        stamped.lines().all(|l| l.len() > 30 && l.contains("Z ")),
        "{stamped}"
    );

    let describe = cluster
        .kubectl_ok(K, &["describe", "pod", "hello", "-n", &ns])
        .await?;
    for reason in ["Scheduled", "Pulling", "Pulled", "Created", "Started"] {
        assert!(
            describe.contains(reason),
            "no {reason} event in:\n{describe}"
        );
    }

    // A container that exits 1 is restarted, with CrashLoopBackOff in between.
    let crash = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: crash
spec:
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "echo crashing; exit 1"]
"#
    );
    cluster.apply_yaml(K, Some(&ns), &crash).await?;
    wait_for(
        &cluster,
        "pod crash restarted and backing off",
        Duration::from_secs(60),
        |s| {
            let mut parts = s.split_whitespace();
            let restarts: u32 = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
            restarts >= 1 && parts.next() == Some("CrashLoopBackOff")
        },
        &[
            "get", "pod", "crash", "-n", &ns, "-o",
            "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.waiting.reason}",
        ],
    )
    .await?;
    let previous = cluster
        .kubectl_ok(K, &["logs", "crash", "-n", &ns, "--previous"])
        .await?;
    assert_eq!(previous, "crashing\n");

    // An image that does not exist.
    let missing = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: missing
spec:
  containers:
  - name: main
    image: {}
"#,
        registry.image("busybox", "no-such-tag")
    );
    cluster.apply_yaml(K, Some(&ns), &missing).await?;
    wait_for(
        &cluster,
        "pod missing in ErrImagePull/ImagePullBackOff",
        Duration::from_secs(60),
        |s| s.contains("ImagePullBackOff") || s.contains("ErrImagePull"),
        &[
            "get",
            "pod",
            "missing",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ],
    )
    .await?;
    let describe = cluster
        .kubectl_ok(K, &["describe", "pod", "missing", "-n", &ns])
        .await?;
    assert!(describe.contains("manifest unknown"), "{describe}");

    // Delete everything: the API objects go, and nothing is left on the box.
    let uid = cluster
        .kubectl_ok(
            K,
            &[
                "get",
                "pod",
                "hello",
                "-n",
                &ns,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
        )
        .await?;
    cluster
        .kubectl_ok(
            K,
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
    let left = cluster
        .kubectl_ok(K, &["get", "pods", "-n", &ns, "-o", "name"])
        .await?;
    assert_eq!(left.trim(), "", "pods left: {left}");
    let procs = processes_mentioning(&uid);
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    assert!(!mounts.contains(&uid), "mounts left:\n{mounts}");
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&kith_agent::network::plan::names(&uid).netns),
        "{netns}"
    );
    let agent_dir = cluster.data_dir().join("agent");
    assert!(!agent_dir.join("pods").join(&uid).exists(), "pod dir left");
    Ok(())
}

/// Host pids of the processes in the pod's cgroups (any controller).
fn pod_pids(uid: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cgroup.contains(&format!("/{uid}/")) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Containers outlive the agent (architecture invariant 5): restarting `kith up` leaves
/// the pod's processes as they were, with the same restart count. A failing liveness
/// probe restarts its container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_kith_keeps_containers_and_liveness_restarts() -> Result<()> {
    let (_registry, image, mut cluster) = busybox_cluster(AgentOptions::unique("keep")).await?;
    let ns = cluster.namespace("keep").await?;
    let pods = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: steady
spec:
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "exec sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: unhealthy
spec:
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "exec sleep 3600"]
    livenessProbe:
      tcpSocket:
        port: 9
      periodSeconds: 1
      failureThreshold: 2
"#
    );
    cluster.apply_yaml(K, Some(&ns), &pods).await?;
    wait_for(
        &cluster,
        "pod steady Running",
        Duration::from_secs(60),
        |s| s == "Running",
        &[
            "get",
            "pod",
            "steady",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.phase}",
        ],
    )
    .await?;
    let uid = cluster
        .kubectl_ok(
            K,
            &[
                "get",
                "pod",
                "steady",
                "-n",
                &ns,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
        )
        .await?;
    let before = pod_pids(&uid);
    assert!(!before.is_empty(), "no processes found for pod {uid}");

    cluster.stop().await?;
    assert_eq!(
        pod_pids(&uid),
        before,
        "stopping kith touched the pod's processes"
    );
    cluster.start().await?;
    // Give the restarted agent time to look at the pod and (wrongly) act on it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = cluster
        .kubectl_ok(
            K,
            &[
                "get",
                "pod",
                "steady",
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.phase} {.status.containerStatuses[0].restartCount}",
            ],
        )
        .await?;
    assert_eq!(status, "Running 0");
    assert_eq!(
        pod_pids(&uid),
        before,
        "the restarted agent replaced the container"
    );

    // The liveness probe on a closed port fails: the container is killed and restarted.
    wait_for(
        &cluster,
        "pod unhealthy restarted by its liveness probe",
        Duration::from_secs(90),
        |s| s.parse::<u32>().is_ok_and(|n| n >= 1),
        &[
            "get",
            "pod",
            "unhealthy",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ],
    )
    .await?;
    let describe = cluster
        .kubectl_ok(K, &["describe", "pod", "unhealthy", "-n", &ns])
        .await?;
    assert!(describe.contains("Unhealthy"), "{describe}");
    assert!(describe.contains("failed liveness probe"), "{describe}");
    Ok(())
}
