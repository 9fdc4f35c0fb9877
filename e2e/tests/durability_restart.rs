//! A clean stop (SIGTERM) and a start on the same data directory keep every object with
//! its uid and resourceVersion, and new writes continue after the old ones.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use kith_e2e::{manifest, Cluster, Kubectl};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_object_uid_and_resource_version() {
    let mut cluster = Cluster::up()
        .await
        .unwrap_or_else(|e| panic!("kith did not start: {e:#}"));
    let result = restart_body(&mut cluster).await;
    cluster.check(result);
}

/// (namespace/kind/name) -> (uid, resourceVersion, whole object) of everything listed.
async fn snapshot(c: &Cluster) -> Result<BTreeMap<String, (String, String, Value)>> {
    let out = c
        .kubectl_ok(
            Kubectl::V1_33,
            &[
                "get",
                "namespaces,configmaps,secrets,services,deployments,jobs",
                "-A",
                "-o",
                "json",
            ],
        )
        .await?;
    let list: Value = serde_json::from_str(&out)?;
    let mut map = BTreeMap::new();
    for item in list["items"].as_array().context("items")? {
        let m = &item["metadata"];
        let key = format!(
            "{}/{}/{}",
            m["namespace"].as_str().unwrap_or("-"),
            item["kind"].as_str().unwrap_or_default(),
            m["name"].as_str().unwrap_or_default()
        );
        let uid = m["uid"].as_str().unwrap_or_default().to_string();
        let rv = m["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if uid.is_empty() || rv.is_empty() {
            bail!("{key} has no uid or resourceVersion: {item}");
        }
        map.insert(key, (uid, rv, item.clone()));
    }
    Ok(map)
}

async fn restart_body(c: &mut Cluster) -> Result<()> {
    let k = Kubectl::V1_33;
    let ns = c.namespace("durable").await?;
    for file in ["hello.yaml", "configmap.yaml", "job.yaml"] {
        let path = manifest(file).to_string_lossy().into_owned();
        c.kubectl_ok(k, &["apply", "-n", &ns, "-f", &path]).await?;
    }
    let path = manifest("namespace-secret.yaml")
        .to_string_lossy()
        .into_owned();
    c.kubectl_ok(k, &["apply", "-f", &path]).await?;
    for i in 0..20 {
        c.kubectl_ok(
            k,
            &[
                "create",
                "configmap",
                &format!("n-{i}"),
                "-n",
                &ns,
                &format!("--from-literal=i={i}"),
            ],
        )
        .await?;
    }
    // Some history on top: updates and a delete.
    c.kubectl_ok(k, &["label", "configmap", "n-0", "-n", &ns, "touched=yes"])
        .await?;
    c.kubectl_ok(k, &["delete", "configmap", "n-1", "-n", &ns])
        .await?;

    let before = snapshot(c).await?;
    if before.len() < 28 {
        bail!(
            "expected at least 28 objects before the restart, found {}",
            before.len()
        );
    }

    let status = c.stop().await?;
    if !status.success() {
        bail!("kith exited with {status} on SIGTERM");
    }
    c.start().await?;

    let after = snapshot(c).await?;
    let mut problems = Vec::new();
    for (key, (uid, rv, obj)) in &before {
        match after.get(key) {
            None => problems.push(format!("{key} is gone")),
            Some((uid2, rv2, obj2)) => {
                // Controllers may legitimately write the status of workloads after a
                // start; everything else must come back byte for byte.
                let workload = matches!(obj["kind"].as_str(), Some("Deployment" | "Job"));
                if uid != uid2 {
                    problems.push(format!("{key}: uid {uid} became {uid2}"));
                } else if workload {
                    if obj["spec"] != obj2["spec"] {
                        problems.push(format!("{key} spec changed:\n{obj}\n{obj2}"));
                    }
                } else if rv != rv2 {
                    problems.push(format!("{key}: resourceVersion {rv} became {rv2}"));
                } else if obj != obj2 {
                    problems.push(format!("{key} changed:\n{obj}\n{obj2}"));
                }
            }
        }
    }
    if after.contains_key(&format!("{ns}/ConfigMap/n-1")) {
        problems.push("the deleted n-1 came back".into());
    }
    if !problems.is_empty() {
        bail!("after restart:\n{}", problems.join("\n"));
    }

    // The next write gets a newer resourceVersion than anything before the restart.
    let max_before = before
        .values()
        .filter_map(|(_, rv, _)| rv.parse::<u64>().ok())
        .max()
        .context("resourceVersions are log indexes (numbers)")?;
    let out = c
        .kubectl_ok(
            k,
            &[
                "create",
                "configmap",
                "after-restart",
                "-n",
                &ns,
                "--from-literal=a=b",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
        )
        .await?;
    let rv: u64 = out.trim().parse().with_context(|| format!("rv {out:?}"))?;
    if rv <= max_before {
        bail!("write after restart got resourceVersion {rv}, not above {max_before}");
    }

    // A second restart right away (nothing new to flush) works too.
    c.restart().await?;
    let again = snapshot(c).await?;
    if again.len() != after.len() + 1 {
        bail!(
            "{} objects after the second restart, expected {}",
            again.len(),
            after.len() + 1
        );
    }
    Ok(())
}
