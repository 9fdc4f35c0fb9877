//! `kubectl apply` of every example in manifests/, client-side and server-side, then again
//! unchanged, then with a change; and `kubectl diff` around it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kith_e2e::{ensure_contains, kubectl_tests, manifest, manifests_dir, Cluster, Kubectl};
use serde_json::Value;

kubectl_tests!(
    apply_every_manifest_client_side,
    apply_every_manifest_server_side,
    diff_reports_differences_by_exit_code,
);

/// (path, needs `-n <test namespace>`): manifests whose objects name their own namespace
/// are applied as they are.
fn manifests() -> Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(manifests_dir())? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let names_namespace = text.contains("kind: Namespace") || text.contains("  namespace: ");
        out.push((path, !names_namespace));
    }
    out.sort();
    if out.len() < 4 {
        bail!(
            "expected the example manifests in {}",
            manifests_dir().display()
        );
    }
    Ok(out)
}

/// `kind/name` of each object in a manifest, as kubectl prints them.
fn objects(path: &PathBuf) -> Result<Vec<(String, String)>> {
    Ok(documents(path)?
        .into_iter()
        .map(|(k, n, _)| (k, n))
        .collect())
}

/// (kind, name, document) of every object in a manifest file.
fn documents(path: &PathBuf) -> Result<Vec<(String, String, Value)>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let doc: Value = serde::Deserialize::deserialize(de)?;
        if doc.is_null() {
            continue;
        }
        let kind = doc["kind"].as_str().context("kind")?.to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .context("name")?
            .to_string();
        out.push((kind, name, doc));
    }
    Ok(out)
}

/// kubectl's `resource[.group]/name` for our kinds.
fn printed(kind: &str, name: &str) -> String {
    let resource = match kind {
        "Deployment" => "deployment.apps".to_string(),
        "Job" => "job.batch".to_string(),
        other => other.to_lowercase(),
    };
    format!("{resource}/{name}")
}

async fn apply_all(c: &Cluster, k: Kubectl, ns: &str, extra: &[&str]) -> Result<Vec<String>> {
    let mut outputs = Vec::new();
    for (path, namespaced) in manifests()? {
        let file = path.to_string_lossy().into_owned();
        let mut args = vec!["apply", "-f", &file];
        if namespaced {
            args.extend(["-n", ns]);
        }
        args.extend(extra);
        outputs.push(c.kubectl_ok(k, &args).await?);
    }
    Ok(outputs)
}

async fn get_json(c: &Cluster, k: Kubectl, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl_ok(k, &all).await?;
    serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
}

async fn apply_every_manifest_client_side(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("apply").await?;
    let manifests = manifests()?;
    let first = apply_all(c, k, &ns, &[]).await?;
    for ((path, _), out) in manifests.iter().zip(&first) {
        for (kind, name) in objects(path)? {
            ensure_contains(out, &format!("{} created", printed(&kind, &name)))?;
        }
    }
    // Every object is there and carries the last-applied annotation.
    for (path, namespaced) in &manifests {
        let file = path.to_string_lossy().into_owned();
        let mut args = vec!["get", "-f", &file];
        if *namespaced {
            args.extend(["-n", &ns]);
        }
        let got = get_json(c, k, &args).await?;
        let items = got["items"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![got]);
        for item in items {
            let annotations = &item["metadata"]["annotations"];
            if annotations["kubectl.kubernetes.io/last-applied-configuration"].is_null() {
                bail!("{file}: no last-applied-configuration annotation: {item}");
            }
            if item["metadata"]["uid"].as_str().is_none_or(str::is_empty) {
                bail!("{file}: no uid: {item}");
            }
        }
    }
    let secret = get_json(c, k, &["get", "secret", "db-credentials", "-n", "team-a"]).await?;
    // stringData "app" is stored base64-encoded in data.
    if secret["data"]["username"] != "YXBw" || !secret["stringData"].is_null() {
        bail!("stringData was not folded into data: {secret}");
    }

    // The same files again: nothing changes. Except, as in Kubernetes, a Secret written
    // with stringData: the server folds it into data and never stores it, so kubectl's
    // three-way diff sees it missing each time (kubernetes/kubernetes#87736).
    let again = apply_all(c, k, &ns, &[]).await?;
    for ((path, _), out) in manifests.iter().zip(&again) {
        for (kind, name, doc) in documents(path)? {
            let string_data = kind == "Secret" && doc.get("stringData").is_some();
            let expected = if string_data {
                "configured"
            } else {
                "unchanged"
            };
            ensure_contains(out, &format!("{} {expected}", printed(&kind, &name)))?;
        }
    }

    // A change: scale the deployment and change an env value in the manifest.
    let before = get_json(c, k, &["get", "deployment", "hello", "-n", &ns]).await?;
    let changed = std::fs::read_to_string(manifest("hello.yaml"))?
        .replace("replicas: 2", "replicas: 3")
        .replace("value: hello from kith", "value: changed");
    let out = c.apply_yaml(k, Some(&ns), &changed).await?;
    ensure_contains(&out, "deployment.apps/hello configured")?;
    ensure_contains(&out, "service/hello unchanged")?;
    let after = get_json(c, k, &["get", "deployment", "hello", "-n", &ns]).await?;
    if after["spec"]["replicas"] != 3 {
        bail!("replicas not applied: {after}");
    }
    let web = &after["spec"]["template"]["spec"]["containers"][0];
    if web["name"] != "web" || web["env"][0]["value"] != "changed" {
        bail!("env change not applied: {after}");
    }
    if after["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(Vec::len)
        != Some(2)
    {
        bail!("sidecar container lost: {after}");
    }
    if after["metadata"]["uid"] != before["metadata"]["uid"] {
        bail!("apply replaced the object (uid changed)");
    }
    if after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"] {
        bail!("resourceVersion unchanged after a change");
    }
    let gen_before = before["metadata"]["generation"].as_i64().unwrap_or(0);
    let gen_after = after["metadata"]["generation"].as_i64().unwrap_or(0);
    if gen_after <= gen_before {
        bail!("metadata.generation not bumped by a spec change: {gen_before} -> {gen_after}");
    }
    Ok(())
}

async fn apply_every_manifest_server_side(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("ssa").await?;
    let manifests = manifests()?;
    let first = apply_all(c, k, &ns, &["--server-side"]).await?;
    for ((path, _), out) in manifests.iter().zip(&first) {
        for (kind, name) in objects(path)? {
            ensure_contains(
                out,
                &format!("{} serverside-applied", printed(&kind, &name)),
            )?;
        }
    }
    let cm = get_json(
        c,
        k,
        &[
            "get",
            "configmap",
            "app-config",
            "-n",
            &ns,
            "--show-managed-fields",
        ],
    )
    .await?;
    let managers = cm["metadata"]["managedFields"]
        .as_array()
        .with_context(|| format!("no managedFields: {cm}"))?;
    if !managers
        .iter()
        .any(|m| m["manager"] == "kubectl" && m["operation"] == "Apply")
    {
        bail!("no Apply entry for manager kubectl: {cm}");
    }
    if cm["data"]["LOG_LEVEL"] != "info" {
        bail!("data not stored: {cm}");
    }

    // Apply again unchanged, then with a field changed and one removed.
    apply_all(c, k, &ns, &["--server-side"]).await?;
    let changed = std::fs::read_to_string(manifest("configmap.yaml"))?
        .replace("LOG_LEVEL: info", "LOG_LEVEL: debug")
        .replace("  MAX_CONNECTIONS: \"100\"\n", "");
    let out = c
        .kubectl_stdin_ok(
            k,
            &["apply", "--server-side", "-n", &ns, "-f", "-"],
            changed.as_bytes(),
        )
        .await?;
    ensure_contains(&out, "configmap/app-config serverside-applied")?;
    let cm = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    if cm["data"]["LOG_LEVEL"] != "debug" {
        bail!("changed field not applied: {cm}");
    }
    if !cm["data"]["MAX_CONNECTIONS"].is_null() {
        bail!("a field the applier stopped sending (and owned alone) must be removed: {cm}");
    }

    // A different manager changing an owned field conflicts unless forced.
    let other = changed.replace("LOG_LEVEL: debug", "LOG_LEVEL: warn");
    let err = c
        .kubectl_stdin_err(
            k,
            &[
                "apply",
                "--server-side",
                "--field-manager=other",
                "-n",
                &ns,
                "-f",
                "-",
            ],
            other.as_bytes(),
        )
        .await?;
    ensure_contains(&err, "conflict")?;
    ensure_contains(&err, "LOG_LEVEL")?;
    c.kubectl_stdin_ok(
        k,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=other",
            "-n",
            &ns,
            "-f",
            "-",
        ],
        other.as_bytes(),
    )
    .await?;
    let cm = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    if cm["data"]["LOG_LEVEL"] != "warn" {
        bail!("forced apply not stored: {cm}");
    }
    Ok(())
}

async fn diff_reports_differences_by_exit_code(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("diff").await?;
    let file = manifest("configmap.yaml").to_string_lossy().into_owned();
    // Not created yet: the whole object is a difference.
    let out = c.kubectl(k, &["diff", "-n", &ns, "-f", &file]).await?;
    if out.status.code() != Some(1) {
        bail!(
            "diff of an absent object: exit {:?}, stdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ensure_contains(&String::from_utf8_lossy(&out.stdout), "+  LOG_LEVEL: info")?;

    c.kubectl_ok(k, &["apply", "-n", &ns, "-f", &file]).await?;
    let out = c.kubectl(k, &["diff", "-n", &ns, "-f", &file]).await?;
    if out.status.code() != Some(0) {
        bail!(
            "diff of an unchanged object: exit {:?}, stdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let changed = std::fs::read_to_string(manifest("configmap.yaml"))?
        .replace("LOG_LEVEL: info", "LOG_LEVEL: debug");
    let out = c
        .kubectl_with_stdin(k, &["diff", "-n", &ns, "-f", "-"], Some(changed.as_bytes()))
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() != Some(1) {
        bail!(
            "diff of a changed object: exit {:?}, stdout:\n{stdout}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ensure_contains(&stdout, "-  LOG_LEVEL: info")?;
    ensure_contains(&stdout, "+  LOG_LEVEL: debug")?;
    // diff is a dry run: the live object is unchanged.
    let live = c
        .kubectl_ok(
            k,
            &[
                "get",
                "configmap",
                "app-config",
                "-n",
                &ns,
                "-o",
                "jsonpath={.data.LOG_LEVEL}",
            ],
        )
        .await?;
    if live != "info" {
        bail!("diff changed the live object: LOG_LEVEL={live}");
    }
    Ok(())
}
