//! The node lifecycle controller against `kith up`, with Nodes and their Leases made by
//! kubectl as an agent would make them: a node whose Lease is renewed stays Ready; one
//! whose Lease ran out long ago turns Ready=Unknown with the `unreachable` taints, its
//! untolerating pod is evicted (graceful delete, TaintManagerEviction event) while a pod
//! tolerating the taint for an hour stays; posting status again lifts the taints.
//!
//! The grace period is the default 40 s, so an expired node is made with a Lease renewed
//! in 2020 rather than by waiting.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kith_e2e::{ensure_contains, kubectl_tests, Cluster, Kubectl};

kubectl_tests!(silent_node_turns_unreachable_and_evicts_untolerating_pods);

const WAIT: Duration = Duration::from_secs(30);
const LONG_AGO: &str = "2020-01-01T00:00:00.000000Z";

/// The wall clock as a Lease's MicroTime.
fn micro_now() -> Result<String> {
    let v = serde_json::to_value(MicroTime(Timestamp::now()))?;
    v.as_str()
        .map(str::to_string)
        .context("MicroTime is not a JSON string")
}

async fn put_lease(c: &Cluster, k: Kubectl, node: &str, renewed: &str) -> Result<()> {
    let yaml = format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {node}\n  namespace: kube-node-lease\nspec:\n  holderIdentity: {node}\n  leaseDurationSeconds: 40\n  renewTime: \"{renewed}\"\n"
    );
    c.apply_yaml(k, None, &yaml).await?;
    Ok(())
}

/// Post Ready=True through the status subresource, as an agent would.
async fn post_ready(c: &Cluster, k: Kubectl, node: &str, heartbeat: Option<&str>) -> Result<()> {
    let heartbeat = heartbeat
        .map(|t| format!(r#","lastHeartbeatTime":"{t}""#))
        .unwrap_or_default();
    let status = format!(
        r#"{{"status":{{"capacity":{{"cpu":"2","memory":"4Gi","pods":"10"}},"allocatable":{{"cpu":"2","memory":"4Gi","pods":"10"}},"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status"{heartbeat}}}]}}}}"#
    );
    c.kubectl_ok(
        k,
        &[
            "patch",
            "node",
            node,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    )
    .await?;
    Ok(())
}

/// A Node with its Lease (written first, so the node is never judged without it).
async fn add_node(c: &Cluster, k: Kubectl, name: &str, renewed: &str) -> Result<()> {
    put_lease(c, k, name, renewed).await?;
    let yaml = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n"
    );
    c.apply_yaml(k, None, &yaml).await?;
    post_ready(c, k, name, None).await
}

/// A pod already bound to `node` (the scheduler leaves it alone).
async fn add_pod(
    c: &Cluster,
    k: Kubectl,
    ns: &str,
    name: &str,
    node: &str,
    tolerations: &str,
) -> Result<()> {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n{tolerations}  containers:\n  - name: c\n    image: registry.k8s.io/pause:3.9\n"
    );
    c.apply_yaml(k, Some(ns), &yaml).await?;
    Ok(())
}

async fn jsonpath(c: &Cluster, k: Kubectl, what: &[&str], path: &str) -> Result<String> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let out = format!("jsonpath={path}");
    args.extend(["-o", out.as_str()]);
    c.kubectl_ok(k, &args).await
}

/// Polls `kubectl get <what> -o jsonpath=<path>` until `done` holds for its output.
async fn wait_jsonpath(
    c: &Cluster,
    k: Kubectl,
    what: &[&str],
    path: &str,
    expected: &str,
    done: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = jsonpath(c, k, what, path).await?;
        if done(&out) {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("`kubectl get {what:?} -o jsonpath={path}` is {out:?}, expected {expected} within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Polls `kubectl args` until its output contains `needle`.
async fn wait_output(c: &Cluster, k: Kubectl, args: &[&str], needle: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = c.kubectl_ok(k, args).await?;
        if out.contains(needle) || Instant::now() > deadline {
            ensure_contains(&out, needle)?;
            return Ok(out);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

const READY: &str = r#"{.status.conditions[?(@.type=="Ready")].status}"#;
const READY_REASON: &str = r#"{.status.conditions[?(@.type=="Ready")].reason}"#;
const TAINTS: &str = "{range .spec.taints[*]}{.key}:{.effect}@{.timeAdded} {end}";
const DELETING: &str = "{.metadata.deletionTimestamp}";

async fn silent_node_turns_unreachable_and_evicts_untolerating_pods(
    c: &Cluster,
    k: Kubectl,
) -> Result<()> {
    let ns = c.namespace("lifecycle").await?;
    add_node(c, k, "edge-live", &micro_now()?).await?;
    add_node(c, k, "edge-gone", LONG_AGO).await?;
    add_pod(c, k, &ns, "steady", "edge-live", "").await?;
    add_pod(c, k, &ns, "doomed", "edge-gone", "").await?;
    let hour = "  tolerations:\n  - key: node.kubernetes.io/unreachable\n    operator: Exists\n    effect: NoExecute\n    tolerationSeconds: 3600\n";
    add_pod(c, k, &ns, "patient", "edge-gone", hour).await?;

    // The silent node: Unknown as Kubernetes words it, both unreachable taints, dated.
    let gone = ["node", "edge-gone"];
    wait_jsonpath(c, k, &gone, READY, "Unknown", |s| s == "Unknown").await?;
    let reason = jsonpath(c, k, &gone, READY_REASON).await?;
    if reason != "NodeStatusUnknown" {
        bail!("Ready reason should be NodeStatusUnknown, got {reason:?}");
    }
    let taints = wait_jsonpath(c, k, &gone, TAINTS, "both unreachable taints", |s| {
        s.contains("node.kubernetes.io/unreachable:NoExecute@2")
            && s.contains("node.kubernetes.io/unreachable:NoSchedule@2")
    })
    .await?;
    if taints.contains("not-ready") {
        bail!("a silent node is unreachable, not not-ready: {taints}");
    }
    let describe = wait_output(c, k, &["describe", "node", "edge-gone"], "NodeNotReady").await?;
    ensure_contains(&describe, "Kubelet stopped posting node status.")?;

    // Its untolerating pod is evicted, gracefully: Terminating until an agent confirms.
    let doomed = ["pod", "doomed", "-n", &ns];
    wait_jsonpath(c, k, &doomed, DELETING, "a deletionTimestamp", |s| {
        !s.is_empty()
    })
    .await?;
    let describe = wait_output(
        c,
        k,
        &["describe", "pod", "doomed", "-n", &ns],
        &format!("Marking for deletion Pod {ns}/doomed"),
    )
    .await?;
    ensure_contains(&describe, "TaintManagerEviction")?;
    let target = jsonpath(
        c,
        k,
        &doomed,
        r#"{.status.conditions[?(@.type=="DisruptionTarget")].reason}"#,
    )
    .await?;
    if target != "DeletionByTaintManager" {
        bail!("DisruptionTarget reason should be DeletionByTaintManager, got {target:?}");
    }

    // The pod tolerating it for an hour stays; so does everything on the live node.
    let patient = jsonpath(c, k, &["pod", "patient", "-n", &ns], DELETING).await?;
    if !patient.is_empty() {
        bail!("patient tolerates unreachable for 3600 s, yet is being deleted ({patient})");
    }
    put_lease(c, k, "edge-live", &micro_now()?).await?;
    let live = ["node", "edge-live"];
    let ready = jsonpath(c, k, &live, READY).await?;
    if ready != "True" {
        bail!("edge-live renews its lease and should stay Ready, got {ready:?}");
    }
    let taints = jsonpath(c, k, &live, "{.spec.taints}").await?;
    if !taints.is_empty() {
        bail!("edge-live should have no taints, got {taints}");
    }
    let steady = jsonpath(c, k, &["pod", "steady", "-n", &ns], DELETING).await?;
    if !steady.is_empty() {
        bail!("steady is on a live node, yet is being deleted ({steady})");
    }

    // The agent comes back: lease renewed, Ready posted; the taints go, the patient stays.
    let now = micro_now()?;
    put_lease(c, k, "edge-gone", &now).await?;
    post_ready(c, k, "edge-gone", Some(&now)).await?;
    wait_jsonpath(c, k, &gone, "{.spec.taints}", "no taints", str::is_empty).await?;
    let ready = jsonpath(c, k, &gone, READY).await?;
    if ready != "True" {
        bail!("edge-gone posted Ready=True, got {ready:?}");
    }
    let patient = jsonpath(c, k, &["pod", "patient", "-n", &ns], DELETING).await?;
    if !patient.is_empty() {
        bail!("patient was deleted after all ({patient})");
    }
    Ok(())
}
