//! Deployments and ReplicaSets through kubectl 1.33: the deployment controller makes a
//! ReplicaSet `<name>-<pod-template-hash>`, the ReplicaSet controller makes its pods, and
//! `kubectl scale`, `set image`, `rollout history|undo|pause|resume|restart|status` behave
//! as on Kubernetes.
//!
//! There is no agent yet, so pods stay Pending and never become Ready. The first test
//! asserts what Kubernetes does in exactly that situation (a rolling update that may not
//! lose availability does not move past its surge). The second plays the agent's part:
//! it marks pods Ready through `pods/status` (as the agent will) to drive rollouts to the
//! end, so that `kubectl rollout status` returns.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kith_e2e::{ensure_contains, Cluster, Kubectl};
use serde_json::Value;

const K: Kubectl = Kubectl::V1_33;
const WAIT: Duration = Duration::from_secs(30);

fn deployment_yaml(name: &str, replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: c
          image: {image}
"
    )
}

async fn get_json(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl_ok(K, &all).await?;
    serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
}

/// Retries `check` until it returns Ok or `WAIT` passes; the last error explains.
async fn eventually<F, Fut, T>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{what}: not within {WAIT:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// ReplicaSets of app `name`, oldest revision first.
async fn replica_sets(c: &Cluster, ns: &str, name: &str) -> Result<Vec<Value>> {
    let l = format!("app={name}");
    let list = get_json(c, &["get", "rs", "-n", ns, "-l", &l]).await?;
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    items.sort_by_key(revision);
    Ok(items)
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Pods of app `name` that are not being deleted.
async fn live_pods(c: &Cluster, ns: &str, name: &str) -> Result<Vec<Value>> {
    let l = format!("app={name}");
    let list = get_json(c, &["get", "pods", "-n", ns, "-l", &l]).await?;
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect())
}

fn controller_uid(obj: &Value) -> Option<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
        .map(str::to_string)
}

/// Waits until the ReplicaSets have these sizes (oldest revision first) and the pods of
/// each match; returns the ReplicaSets.
async fn wait_sizes(c: &Cluster, ns: &str, name: &str, sizes: &[i64]) -> Result<Vec<Value>> {
    eventually(&format!("replicasets sized {sizes:?}"), || async {
        let rss = replica_sets(c, ns, name).await?;
        let got: Vec<i64> = rss
            .iter()
            .map(|rs| rs["spec"]["replicas"].as_i64().unwrap_or(-1))
            .collect();
        if got != sizes {
            bail!("replicaset sizes {got:?}");
        }
        let pods = live_pods(c, ns, name).await?;
        for rs in &rss {
            let uid = rs["metadata"]["uid"].as_str().unwrap_or_default();
            let hash = rs["metadata"]["labels"]["pod-template-hash"]
                .as_str()
                .unwrap_or_default();
            let mine: Vec<&Value> = pods
                .iter()
                .filter(|p| controller_uid(p).as_deref() == Some(uid))
                .collect();
            let want = rs["spec"]["replicas"].as_i64().unwrap_or(-1);
            if i64::try_from(mine.len())? != want {
                bail!(
                    "{} pods of {} (want {want})",
                    mine.len(),
                    rs["metadata"]["name"]
                );
            }
            if mine
                .iter()
                .any(|p| p["metadata"]["labels"]["pod-template-hash"] != hash)
            {
                bail!("pods without pod-template-hash={hash}");
            }
            if rs["status"]["replicas"].as_i64() != Some(want) {
                bail!(
                    "status.replicas of {}: {}",
                    rs["metadata"]["name"],
                    rs["status"]
                );
            }
        }
        Ok(rss)
    })
    .await
}

/// `kubectl rollout history` lists exactly these revisions.
async fn history_is(c: &Cluster, ns: &str, name: &str, want: &[&str]) -> Result<()> {
    let target = format!("deployment/{name}");
    let history = c
        .kubectl_ok(K, &["rollout", "history", &target, "-n", ns])
        .await?;
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if revisions != want {
        bail!("rollout history (want {want:?}):\n{history}");
    }
    Ok(())
}

async fn deployment_status(c: &Cluster, ns: &str, name: &str) -> Result<Value> {
    Ok(get_json(c, &["get", "deployment", name, "-n", ns]).await?["status"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_as_far_as_pending_pods_allow() {
    let cluster = Cluster::up()
        .await
        .unwrap_or_else(|e| panic!("kith did not start: {e:#}"));
    cluster.check(rolls_without_agent(&cluster).await);
}

async fn rolls_without_agent(c: &Cluster) -> Result<()> {
    let ns = c.namespace("workloads").await?;
    let v1 = "localhost:5000/busybox:1.36";
    let v2 = "localhost:5000/busybox:1.37";
    c.apply_yaml(K, Some(&ns), &deployment_yaml("web", 3, v1))
        .await?;

    // One ReplicaSet named by its template hash, owning three pods.
    let rss = wait_sizes(c, &ns, "web", &[3]).await?;
    let first = &rss[0];
    let hash = first["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .context("pod-template-hash label")?;
    let first_name = format!("web-{hash}");
    if first["metadata"]["name"] != first_name.as_str() {
        bail!("replicaset name: {}", first["metadata"]["name"]);
    }
    if first["spec"]["selector"]["matchLabels"]["pod-template-hash"] != hash || revision(first) != 1
    {
        bail!("selector and revision: {first}");
    }
    let d = get_json(c, &["get", "deployment", "web", "-n", &ns]).await?;
    if controller_uid(first).as_deref() != d["metadata"]["uid"].as_str() {
        bail!("the replicaset is not controlled by the deployment: {first}");
    }

    // Scale up and back.
    c.kubectl_ok(
        K,
        &["scale", "deployment", "web", "-n", &ns, "--replicas=5"],
    )
    .await?;
    wait_sizes(c, &ns, "web", &[5]).await?;
    c.kubectl_ok(
        K,
        &["scale", "deployment", "web", "-n", &ns, "--replicas=3"],
    )
    .await?;
    wait_sizes(c, &ns, "web", &[3]).await?;

    // A new image: maxSurge 25% of 3 rounds up to 1, maxUnavailable 25% of 3 down to 0.
    // With no pod available the new ReplicaSet gets the one surge pod and the old one
    // keeps all three, as in Kubernetes.
    c.kubectl_ok(
        K,
        &[
            "set",
            "image",
            "deployment/web",
            &format!("c={v2}"),
            "-n",
            &ns,
        ],
    )
    .await?;
    let rss = wait_sizes(c, &ns, "web", &[3, 1]).await?;
    if revision(&rss[1]) != 2 {
        bail!("the new replicaset should be revision 2: {}", rss[1]);
    }
    let status = eventually("deployment status after set image", || async {
        let s = deployment_status(c, &ns, "web").await?;
        let n = |k: &str| s[k].as_i64().unwrap_or(0);
        if (
            n("replicas"),
            n("updatedReplicas"),
            n("availableReplicas"),
            n("unavailableReplicas"),
        ) != (4, 1, 0, 4)
        {
            bail!("status: {s}");
        }
        Ok(s)
    })
    .await?;
    let cond = |ty: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
            .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
    };
    if cond("Available").as_deref() != Some("MinimumReplicasUnavailable") {
        bail!("Available condition: {status}");
    }
    // It stays there: nothing may be scaled down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_sizes(c, &ns, "web", &[3, 1]).await?;

    history_is(c, &ns, "web", &["1", "2"]).await?;

    // Undo: the template goes back to v1 and its ReplicaSet becomes revision 3.
    let out = c
        .kubectl_ok(K, &["rollout", "undo", "deployment/web", "-n", &ns])
        .await?;
    ensure_contains(&out, "deployment.apps/web rolled back")?;
    eventually("undo", || async {
        let d = get_json(c, &["get", "deployment", "web", "-n", &ns]).await?;
        if d["spec"]["template"]["spec"]["containers"][0]["image"] != v1 {
            bail!("template: {}", d["spec"]["template"]);
        }
        let rss = replica_sets(c, &ns, "web").await?;
        let revs: Vec<(&str, i64)> = rss
            .iter()
            .map(|r| (r["metadata"]["name"].as_str().unwrap_or(""), revision(r)))
            .collect();
        if revs.len() != 2 || revs[0].1 != 2 || revs[1] != (first_name.as_str(), 3) {
            bail!("revisions: {revs:?}");
        }
        if d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] != "3" {
            bail!("deployment revision: {}", d["metadata"]);
        }
        Ok(())
    })
    .await?;
    history_is(c, &ns, "web", &["2", "3"]).await?;

    let events = c.kubectl_ok(K, &["get", "events", "-n", &ns]).await?;
    for needle in [
        "ScalingReplicaSet",
        &format!("Scaled up replica set web-{hash} to 3"),
        "SuccessfulCreate",
        "Created pod: web-",
        "SuccessfulDelete",
    ] {
        ensure_contains(&events, needle)?;
    }
    Ok(())
}

/// Marks every live pod of app `name` Running and Ready, as the agent will.
async fn make_ready(c: &Cluster, ns: &str, name: &str) -> Result<()> {
    for p in live_pods(c, ns, name).await? {
        let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if ready {
            continue;
        }
        let pod = p["metadata"]["name"].as_str().unwrap_or_default();
        // No lastTransitionTime: with minReadySeconds 0 it does not matter.
        let patch =
            r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#;
        // The pod may have been deleted meanwhile; the next round catches up.
        let _ = c
            .kubectl(
                K,
                &[
                    "patch",
                    "pod",
                    pod,
                    "-n",
                    ns,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    patch,
                ],
            )
            .await?;
    }
    Ok(())
}

/// Runs `kubectl rollout status` while playing the agent, until it reports success.
async fn roll_to_completion(c: &Cluster, ns: &str, name: &str) -> Result<String> {
    let target = format!("deployment/{name}");
    let mut status = c.kubectl_background(
        K,
        &["rollout", "status", &target, "-n", ns, "--timeout=60s"],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        make_ready(c, ns, name).await?;
        if let Ok(out) = status
            .wait_for("successfully rolled out", Duration::from_millis(500), |o| {
                o.contains("successfully rolled out")
            })
            .await
        {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!(
                "rollout status never finished: {}\n{}",
                status.stdout(),
                status.stderr()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_returns_when_pods_become_ready() {
    let cluster = Cluster::up()
        .await
        .unwrap_or_else(|e| panic!("kith did not start: {e:#}"));
    cluster.check(rollouts_with_simulated_readiness(&cluster).await);
}

async fn rollouts_with_simulated_readiness(c: &Cluster) -> Result<()> {
    let ns = c.namespace("rollouts").await?;
    c.apply_yaml(
        K,
        Some(&ns),
        &deployment_yaml("app", 2, "localhost:5000/busybox:1.36"),
    )
    .await?;
    let out = roll_to_completion(c, &ns, "app").await?;
    ensure_contains(&out, "deployment \"app\" successfully rolled out")?;

    // A new image rolls all the way: the old ReplicaSet ends at 0.
    c.kubectl_ok(
        K,
        &[
            "set",
            "image",
            "deployment/app",
            "c=localhost:5000/busybox:1.37",
            "-n",
            &ns,
        ],
    )
    .await?;
    roll_to_completion(c, &ns, "app").await?;
    wait_sizes(c, &ns, "app", &[0, 2]).await?;
    let s = deployment_status(c, &ns, "app").await?;
    let progressing = s["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
        .cloned()
        .unwrap_or_default();
    if progressing["reason"] != "NewReplicaSetAvailable" || s["availableReplicas"] != 2 {
        bail!("status after the rollout: {s}");
    }

    // Paused: a template change makes no ReplicaSet until resumed.
    c.kubectl_ok(K, &["rollout", "pause", "deployment/app", "-n", &ns])
        .await?;
    c.kubectl_ok(
        K,
        &[
            "set",
            "image",
            "deployment/app",
            "c=localhost:5000/busybox:1.38",
            "-n",
            &ns,
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if replica_sets(c, &ns, "app").await?.len() != 2 {
        bail!("a paused deployment rolled");
    }
    c.kubectl_ok(K, &["rollout", "resume", "deployment/app", "-n", &ns])
        .await?;
    roll_to_completion(c, &ns, "app").await?;
    wait_sizes(c, &ns, "app", &[0, 0, 2]).await?;

    // restart: a new template (restartedAt annotation), so a fourth revision.
    c.kubectl_ok(K, &["rollout", "restart", "deployment/app", "-n", &ns])
        .await?;
    roll_to_completion(c, &ns, "app").await?;
    let rss = wait_sizes(c, &ns, "app", &[0, 0, 0, 2]).await?;
    if revision(&rss[3]) != 4 {
        bail!("restart revision: {}", rss[3]);
    }
    Ok(())
}
