//! The DaemonSet controller against `kith up`: one pod per eligible node (a node with an
//! untolerated taint gets none), a pod for a node that joins later, and a rolling image
//! update that replaces pods within maxUnavailable until `kubectl rollout status` returns;
//! and the template history: an image change makes a second ControllerRevision,
//! `kubectl rollout history` lists both, `kubectl rollout undo` brings the old image back.
//!
//! There is no agent, so the test plays its part through the API: it posts node status
//! and heartbeat Leases, marks bound pods Running and Ready through `pods/status`
//! (`kubectl patch --subresource=status`), and finishes the graceful deletion of pods the
//! controller deleted (`kubectl delete --grace-period=0 --force`), as a kubelet confirms a
//! kill. Leases promise an hour, so the node lifecycle controller leaves the nodes alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kith_e2e::{ensure_contains, kubectl_tests, Cluster, Kubectl};
use kube::api::{Api, ListParams};

kubectl_tests!(
    daemonset_follows_nodes_and_rolls_within_max_unavailable,
    daemonset_rollout_history_and_undo
);

const WAIT: Duration = Duration::from_secs(45);

/// A Node with a fresh Lease and a Ready status, as an agent would post them.
async fn add_node(c: &Cluster, k: Kubectl, name: &str, extra_spec: &str) -> Result<()> {
    let renewed = serde_json::to_value(MicroTime(Timestamp::now()))?;
    let renewed = renewed.as_str().context("MicroTime is not a string")?;
    let lease = format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {name}\n  namespace: kube-node-lease\nspec:\n  holderIdentity: {name}\n  leaseDurationSeconds: 3600\n  renewTime: \"{renewed}\"\n"
    );
    c.apply_yaml(k, None, &lease).await?;
    let node = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\nspec:\n{extra_spec}  podCIDR: 10.0.0.0/24\n"
    );
    c.apply_yaml(k, None, &node).await?;
    let status = r#"{"status":{"capacity":{"cpu":"2","memory":"4Gi","pods":"10"},"allocatable":{"cpu":"2","memory":"4Gi","pods":"10"},"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status"}]}}"#;
    c.kubectl_ok(
        k,
        &[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
    )
    .await?;
    Ok(())
}

const DAEMONSET: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  updateStrategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 1
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
      - name: c
        image: registry.k8s.io/pause:3.9
        resources:
          requests:
            cpu: 100m
";

fn bound_node(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn has_condition(p: &Pod, ty: &str) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == ty && c.status == "True")
}

fn image(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default()
}

async fn pods(c: &Cluster, ns: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(c.client().await?, ns);
    Ok(api
        .list(&ListParams::default().labels("app=agent"))
        .await?
        .items)
}

/// Polls until the live (not terminating) pods are bound to exactly `want` nodes.
async fn wait_nodes(c: &Cluster, ns: &str, want: &[&str]) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let all = pods(c, ns).await?;
        let mut nodes: Vec<&str> = all
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| bound_node(p).unwrap_or("<unbound>"))
            .collect();
        nodes.sort_unstable();
        if nodes == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("daemon pods are on {nodes:?}, want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One round of the missing agent: finish terminating pods, and mark bound pods (once the
/// scheduler has written PodScheduled, so its write cannot drop ours) Running and Ready.
async fn play_agent(c: &Cluster, k: Kubectl, ns: &str) -> Result<()> {
    for p in pods(c, ns).await? {
        let name = p.metadata.name.clone().unwrap_or_default();
        if p.metadata.deletion_timestamp.is_some() {
            c.kubectl(
                k,
                &[
                    "delete",
                    "pod",
                    &name,
                    "-n",
                    ns,
                    "--grace-period=0",
                    "--force",
                    "--ignore-not-found",
                ],
            )
            .await?;
        } else if bound_node(&p).is_some()
            && has_condition(&p, "PodScheduled")
            && !has_condition(&p, "Ready")
        {
            let status = r#"{"status":{"phase":"Running","conditions":[{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"True"}]}}"#;
            c.kubectl(
                k,
                &[
                    "patch",
                    "pod",
                    &name,
                    "-n",
                    ns,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    status,
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// Eligible nodes that have no ready, live pod right now.
fn unavailable_nodes(all: &[Pod], nodes: &[&str]) -> Vec<String> {
    let mut ready: BTreeMap<&str, bool> = nodes.iter().map(|n| (*n, false)).collect();
    for p in all {
        if p.metadata.deletion_timestamp.is_none() && has_condition(p, "Ready") {
            if let Some(slot) = bound_node(p).and_then(|n| ready.get_mut(n)) {
                *slot = true;
            }
        }
    }
    ready
        .into_iter()
        .filter(|(_, r)| !r)
        .map(|(n, _)| n.to_string())
        .collect()
}

async fn ds_counts(c: &Cluster, ns: &str) -> Result<(i32, i32, i32, i32)> {
    let api: Api<DaemonSet> = Api::namespaced(c.client().await?, ns);
    let s = api.get("agent").await?.status.unwrap_or_default();
    Ok((
        s.desired_number_scheduled,
        s.number_ready,
        s.updated_number_scheduled.unwrap_or(0),
        s.number_available.unwrap_or(0),
    ))
}

async fn daemonset_follows_nodes_and_rolls_within_max_unavailable(
    c: &Cluster,
    k: Kubectl,
) -> Result<()> {
    let ns = c.namespace("ds").await?;
    add_node(c, k, "edge-a", "").await?;
    add_node(c, k, "edge-b", "").await?;
    add_node(
        c,
        k,
        "edge-t",
        "  taints:\n  - key: dedicated\n    value: db\n    effect: NoSchedule\n",
    )
    .await?;
    c.apply_yaml(k, Some(&ns), DAEMONSET).await?;
    wait_nodes(c, &ns, &["edge-a", "edge-b"]).await?;

    // A node joins: it gets its pod too.
    add_node(c, k, "edge-c", "").await?;
    let eligible = ["edge-a", "edge-b", "edge-c"];
    wait_nodes(c, &ns, &eligible).await?;
    let deadline = Instant::now() + WAIT;
    while ds_counts(c, &ns).await? != (3, 3, 3, 3) {
        if Instant::now() > deadline {
            bail!(
                "status never reached 3 ready: {:?}",
                ds_counts(c, &ns).await?
            );
        }
        play_agent(c, k, &ns).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = c
        .kubectl_ok(
            k,
            &["rollout", "status", "ds/agent", "-n", &ns, "--timeout=20s"],
        )
        .await?;
    ensure_contains(&out, "daemon set \"agent\" successfully rolled out")?;

    // New image: pods are replaced one node at a time while the agent plays along, and
    // `rollout status` waits for the end of it.
    c.kubectl_ok(
        k,
        &[
            "set",
            "image",
            "ds/agent",
            "c=registry.k8s.io/pause:3.10",
            "-n",
            &ns,
        ],
    )
    .await?;
    let rollout_args = ["rollout", "status", "ds/agent", "-n", &ns, "--timeout=50s"];
    let rollout = c.kubectl(k, &rollout_args);
    let agent = async {
        let deadline = Instant::now() + Duration::from_secs(55);
        let mut worst = Vec::new();
        loop {
            let all = pods(c, &ns).await?;
            let down = unavailable_nodes(&all, &eligible);
            if down.len() > worst.len() {
                worst = down;
            }
            let done = all.len() == 3
                && all
                    .iter()
                    .all(|p| image(p) == "registry.k8s.io/pause:3.10" && has_condition(p, "Ready"));
            if done && ds_counts(c, &ns).await? == (3, 3, 3, 3) {
                return Ok::<_, anyhow::Error>(worst);
            }
            if Instant::now() > deadline {
                bail!("rollout did not finish: {:?}", ds_counts(c, &ns).await?);
            }
            play_agent(c, k, &ns).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (rollout, worst) = tokio::join!(rollout, agent);
    let worst = worst?;
    if worst.len() > 1 {
        bail!("maxUnavailable 1, but {worst:?} were unavailable at once");
    }
    let rollout = rollout?;
    let out = String::from_utf8_lossy(&rollout.stdout);
    if !rollout.status.success() {
        bail!(
            "rollout status failed: {out}{}",
            String::from_utf8_lossy(&rollout.stderr)
        );
    }
    ensure_contains(&out, "daemon set \"agent\" successfully rolled out")?;
    wait_nodes(c, &ns, &eligible).await?;
    let events = c.kubectl_ok(k, &["get", "events", "-n", &ns]).await?;
    ensure_contains(&events, "SuccessfulCreate")?;
    ensure_contains(&events, "SuccessfulDelete")?;
    let describe = c
        .kubectl_ok(k, &["describe", "ds", "agent", "-n", &ns])
        .await?;
    ensure_contains(&describe, "daemonset-controller")?;
    Ok(())
}

/// Plays the agent until every live pod runs `want` and is Ready, and the status agrees.
async fn wait_rolled_to(c: &Cluster, k: Kubectl, ns: &str, nodes: usize, want: &str) -> Result<()> {
    let n = i32::try_from(nodes)?;
    let deadline = Instant::now() + WAIT;
    loop {
        play_agent(c, k, ns).await?;
        let all = pods(c, ns).await?;
        let done = all.len() == nodes
            && all
                .iter()
                .all(|p| image(p) == want && has_condition(p, "Ready"));
        if done && ds_counts(c, ns).await? == (n, n, n, n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let images: Vec<&str> = all.iter().map(image).collect();
            bail!(
                "pods never all ran {want}: {images:?}, status {:?}",
                ds_counts(c, ns).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The REVISION column of `kubectl rollout history`.
fn revisions(history: &str) -> Vec<String> {
    history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

async fn daemonset_rollout_history_and_undo(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("dshist").await?;
    add_node(c, k, "edge-a", "").await?;
    add_node(c, k, "edge-b", "").await?;
    c.apply_yaml(k, Some(&ns), DAEMONSET).await?;
    wait_nodes(c, &ns, &["edge-a", "edge-b"]).await?;
    wait_rolled_to(c, k, &ns, 2, "registry.k8s.io/pause:3.9").await?;
    c.kubectl_ok(
        k,
        &[
            "set",
            "image",
            "ds/agent",
            "c=registry.k8s.io/pause:3.10",
            "-n",
            &ns,
        ],
    )
    .await?;
    wait_rolled_to(c, k, &ns, 2, "registry.k8s.io/pause:3.10").await?;

    let history = c
        .kubectl_ok(k, &["rollout", "history", "ds/agent", "-n", &ns])
        .await?;
    if revisions(&history) != ["1", "2"] {
        bail!("rollout history should list revisions 1 and 2:\n{history}");
    }
    let one = c
        .kubectl_ok(
            k,
            &["rollout", "history", "ds/agent", "-n", &ns, "--revision=1"],
        )
        .await?;
    ensure_contains(&one, "registry.k8s.io/pause:3.9")?;
    let listed = c
        .kubectl_ok(k, &["get", "controllerrevisions", "-n", &ns])
        .await?;
    ensure_contains(&listed, "CONTROLLER")?;
    ensure_contains(&listed, "daemonset.apps/agent")?;

    let undo = c
        .kubectl_ok(k, &["rollout", "undo", "ds/agent", "-n", &ns])
        .await?;
    ensure_contains(&undo, "rolled back")?;
    wait_rolled_to(c, k, &ns, 2, "registry.k8s.io/pause:3.9").await?;
    // The old template is the newest revision now, renumbered rather than recorded twice.
    let deadline = Instant::now() + WAIT;
    loop {
        let history = c
            .kubectl_ok(k, &["rollout", "history", "ds/agent", "-n", &ns])
            .await?;
        if revisions(&history) == ["2", "3"] {
            break;
        }
        if Instant::now() > deadline {
            bail!("after undo, rollout history should list revisions 2 and 3:\n{history}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let three = c
        .kubectl_ok(
            k,
            &["rollout", "history", "ds/agent", "-n", &ns, "--revision=3"],
        )
        .await?;
    ensure_contains(&three, "registry.k8s.io/pause:3.9")?;
    Ok(())
}
