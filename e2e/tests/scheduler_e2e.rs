//! The scheduler against `kith up`: Node objects made with kubectl, pods bound by
//! nodeSelector, affinity and tolerations, a pod that fits nowhere reported as
//! kube-scheduler reports it, and bound once a node with room joins.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kith_e2e::{ensure_contains, kubectl_tests, Cluster, Kubectl};

kubectl_tests!(scheduler_binds_by_constraints_then_capacity);

/// `kubectl apply` a Node, then give it capacity and a Ready condition through the status
/// subresource, as a kubelet would.
async fn add_node(
    c: &Cluster,
    k: Kubectl,
    name: &str,
    cpu: &str,
    extra_spec: &str,
    labels: &str,
) -> Result<()> {
    let yaml = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n{labels}spec:\n{extra_spec}  podCIDR: 10.0.0.0/24\n"
    );
    c.apply_yaml(k, None, &yaml).await?;
    let status = format!(
        r#"{{"status":{{"capacity":{{"cpu":"{cpu}","memory":"4Gi","pods":"10"}},"allocatable":{{"cpu":"{cpu}","memory":"4Gi","pods":"10"}},"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status"}}]}}}}"#
    );
    c.kubectl_ok(
        k,
        &[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    )
    .await?;
    Ok(())
}

async fn node_of(c: &Cluster, k: Kubectl, ns: &str, pod: &str) -> Result<String> {
    c.kubectl_ok(
        k,
        &[
            "get",
            "pod",
            pod,
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.nodeName}",
        ],
    )
    .await
}

/// Polls until the pod is bound, returning its node.
async fn wait_bound(c: &Cluster, k: Kubectl, ns: &str, pod: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let node = node_of(c, k, ns, pod).await?;
        if !node.is_empty() {
            return Ok(node);
        }
        if Instant::now() > deadline {
            bail!("pod {ns}/{pod} was not bound within 30s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `kubectl args` until its output contains `needle`.
async fn wait_output(c: &Cluster, k: Kubectl, args: &[&str], needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.kubectl_ok(k, args).await?;
        if out.contains(needle) {
            return Ok(out);
        }
        if Instant::now() > deadline {
            ensure_contains(&out, needle)?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn pod_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  containers:\n  - name: c\n    image: registry.k8s.io/pause:3.9\n    resources:\n      requests:\n        cpu: 500m\n        memory: 64Mi\n"
    )
}

async fn scheduler_binds_by_constraints_then_capacity(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("sched").await?;
    add_node(c, k, "edge-a", "2", "", "    disk: ssd\n").await?;
    add_node(
        c,
        k,
        "edge-b",
        "2",
        "  taints:\n  - key: dedicated\n    value: gpu\n    effect: NoSchedule\n",
        "    role: gpu\n",
    )
    .await?;

    c.apply_yaml(
        k,
        Some(&ns),
        &pod_yaml("ssd", "  nodeSelector:\n    disk: ssd\n"),
    )
    .await?;
    let gpu_spec = "  tolerations:\n  - key: dedicated\n    operator: Equal\n    value: gpu\n    effect: NoSchedule\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        - matchExpressions:\n          - key: role\n            operator: In\n            values: [gpu]\n";
    c.apply_yaml(k, Some(&ns), &pod_yaml("gpu", gpu_spec))
        .await?;
    let node = wait_bound(c, k, &ns, "ssd").await?;
    if node != "edge-a" {
        bail!("nodeSelector disk=ssd should pick edge-a, got {node}");
    }
    let node = wait_bound(c, k, &ns, "gpu").await?;
    if node != "edge-b" {
        bail!("the tolerating, gpu-affine pod should go to edge-b, got {node}");
    }
    wait_output(
        c,
        k,
        &["describe", "pod", "ssd", "-n", &ns],
        &format!("Successfully assigned {ns}/ssd to edge-a"),
    )
    .await?;

    // 3 CPUs fit on neither 2-CPU node, and edge-b's taint is not tolerated.
    let big = pod_yaml("big", "").replace("cpu: 500m", "cpu: \"3\"");
    c.apply_yaml(k, Some(&ns), &big).await?;
    let want = "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    let describe = wait_output(c, k, &["describe", "pod", "big", "-n", &ns], want).await?;
    ensure_contains(&describe, "FailedScheduling")?;
    ensure_contains(&describe, "default-scheduler")?;
    let events = c.kubectl_ok(k, &["get", "events", "-n", &ns]).await?;
    ensure_contains(&events, want)?;
    ensure_contains(&events, "FailedScheduling")?;
    let cond = c
        .kubectl_ok(
            k,
            &[
                "get",
                "pod",
                "big",
                "-n",
                &ns,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].reason}"#,
            ],
        )
        .await?;
    if cond != "Unschedulable" {
        bail!("PodScheduled reason should be Unschedulable, got {cond:?}");
    }
    if !node_of(c, k, &ns, "big").await?.is_empty() {
        bail!("big must stay pending");
    }

    // A node with room joins: the pending pod is retried on the change and bound.
    add_node(c, k, "edge-c", "4", "", "").await?;
    let node = wait_bound(c, k, &ns, "big").await?;
    if node != "edge-c" {
        bail!("big should go to the new 4-CPU node, got {node}");
    }
    wait_output(
        c,
        k,
        &["get", "events", "-n", &ns],
        &format!("Successfully assigned {ns}/big to edge-c"),
    )
    .await?;
    Ok(())
}
