//! Resource use on one box with real parts: `kith up` with its agent, a busybox pod
//! burning a little CPU, real kubectl.
//!
//! `kubectl top pods` and `kubectl top nodes` show non-zero use → /metrics carries the
//! pod's cadvisor series and the namespace's metering counters → the meter survives a
//! restart of `kith up`, and `kith usage` prints it.

use std::time::Duration;

use anyhow::{bail, Result};
use kith_e2e::{busybox_cluster, kith_bin, AgentOptions, Cluster, Kubectl};

const K: Kubectl = Kubectl::V1_33;
const NS: &str = "top-e2e";

/// Runs `kubectl args` until `check` accepts its stdout.
async fn wait_for_kubectl(
    cluster: &Cluster,
    what: &str,
    args: &[&str],
    check: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let out = cluster.kubectl(K, args).await?;
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && check(&String::from_utf8_lossy(&out.stdout)) {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("timed out waiting for {what}; last output:\n{last}")
}

/// The CPU column (`123m`) of the `kubectl top` row whose first column is `name`, in
/// millicores.
fn top_cpu(table: &str, name: &str) -> Option<u64> {
    table.lines().find_map(|l| {
        let mut cols = l.split_whitespace();
        (cols.next()? == name).then_some(())?;
        cols.next()?.strip_suffix('m')?.parse().ok()
    })
}

/// The value of the sample of `/metrics` that starts with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn wait_for_sample(cluster: &Cluster, series: &str, min: f64) -> Result<f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(text) = cluster.get_raw("/metrics").await {
            if let Some(v) = sample(&text, series).filter(|v| *v >= min) {
                return Ok(v);
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("no {series} >= {min} in /metrics:\n{last}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_metrics_and_metering_survive_restart() -> Result<()> {
    let agent = AgentOptions::unique("top");
    let (_registry, image, mut cluster) = busybox_cluster(agent.clone()).await?;
    let result = scenario(&mut cluster, &agent, &image).await;
    cluster.check(result);
    Ok(())
}

async fn scenario(cluster: &mut Cluster, agent: &AgentOptions, image: &str) -> Result<()> {
    let ns = cluster.namespace(NS).await?;
    // A busy loop capped at a fifth of a core: visible, and gentle on a 2-core CI box.
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: burn
spec:
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "while true; do :; done"]
    resources:
      limits:
        cpu: 200m
        memory: 64Mi
"#
    );
    cluster.apply_yaml(K, Some(&ns), &pod).await?;
    wait_for_kubectl(
        cluster,
        "pod burn Running",
        &[
            "get",
            "pod",
            "burn",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.phase}",
        ],
        |s| s.trim() == "Running",
    )
    .await?;

    let pods = wait_for_kubectl(
        cluster,
        "kubectl top pods to show burn using cpu",
        &["top", "pods", "-n", &ns],
        |s| top_cpu(s, "burn").is_some_and(|m| m > 0),
    )
    .await?;
    assert!(pods.contains("Mi"), "memory column in:\n{pods}");
    let containers = cluster
        .kubectl_ok(K, &["top", "pods", "-n", &ns, "--containers"])
        .await?;
    assert!(containers.contains("main"), "{containers}");
    wait_for_kubectl(
        cluster,
        "kubectl top nodes to show the node using cpu",
        &["top", "nodes"],
        |s| top_cpu(s, &agent.node_name).is_some_and(|m| m > 0),
    )
    .await?;

    let labels = format!(r#"{{namespace="{ns}",pod="burn",container="main"}}"#);
    let cpu = wait_for_sample(
        cluster,
        &format!("container_cpu_usage_seconds_total{labels}"),
        0.01,
    )
    .await?;
    assert!(cpu > 0.0);
    wait_for_sample(
        cluster,
        &format!("container_memory_working_set_bytes{labels}"),
        1.0,
    )
    .await?;
    let usage_series = format!(
        r#"kith_usage_cpu_seconds_total{{namespace="{ns}",node="{}"}}"#,
        agent.node_name
    );
    let before = wait_for_sample(cluster, &usage_series, 0.01).await?;
    // The meter is also saved on a clean stop.
    let status = cluster.stop().await?;
    assert!(status.success(), "kith exited with {status}");
    let usage = tokio::process::Command::new(kith_bin())
        .arg("usage")
        .arg("--data-dir")
        .arg(cluster.data_dir())
        .output()
        .await?;
    let table = String::from_utf8_lossy(&usage.stdout);
    assert!(
        usage.status.success() && table.contains(&ns) && table.contains(&agent.node_name),
        "kith usage: {table}{}",
        String::from_utf8_lossy(&usage.stderr)
    );

    cluster.start().await?;
    let after = wait_for_sample(cluster, &usage_series, before).await?;
    assert!(after >= before, "metered cpu went from {before} to {after}");

    cluster
        .kubectl_ok(K, &["delete", "pod", "burn", "-n", &ns, "--wait=false"])
        .await?;
    Ok(())
}

#[test]
fn top_cpu_table() {
    let table = "NAME   CPU(cores)   MEMORY(bytes)\nburn   199m         1Mi\nidle   0m   1Mi\n";
    assert_eq!(top_cpu(table, "burn"), Some(199));
    assert_eq!(top_cpu(table, "idle"), Some(0));
    assert_eq!(top_cpu(table, "other"), None);
    let metrics = "a_total{x=\"1\"} 2.5\nb 1\n";
    assert_eq!(sample(metrics, "a_total{x=\"1\"}"), Some(2.5));
    assert_eq!(sample(metrics, "c"), None);
}
