//! What kubectl learns about the server before it does anything: version, discovery,
//! OpenAPI (explain).

use anyhow::{bail, Context, Result};
use kith_e2e::{ensure_contains, kubectl_tests, Cluster, Kubectl};
use serde_json::Value;

kubectl_tests!(
    version_reports_client_and_server,
    api_resources_lists_the_builtin_kinds,
    explain_shows_field_documentation,
    health_endpoints_answer_ok,
);

async fn version_reports_client_and_server(c: &Cluster, k: Kubectl) -> Result<()> {
    let out = c.kubectl_ok(k, &["version", "-o", "json"]).await?;
    let v: Value = serde_json::from_str(&out).context("kubectl version -o json")?;
    let client = v["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    if !client.starts_with(&format!("v{}.", k.minor())) {
        bail!("unexpected client version {client}: {out}");
    }
    let server = &v["serverVersion"];
    if server["major"] != "1" || server["minor"].as_str().unwrap_or_default().is_empty() {
        bail!("serverVersion needs major \"1\" and a minor: {out}");
    }
    let git = server["gitVersion"].as_str().unwrap_or_default();
    if !git.starts_with("v1.") {
        bail!("serverVersion.gitVersion should look like v1.x.y: {out}");
    }
    for field in ["platform", "goVersion", "buildDate"] {
        if server[field].as_str().is_none() {
            bail!("serverVersion.{field} missing: {out}");
        }
    }
    // The plain form prints both lines.
    let out = c.kubectl_ok(k, &["version"]).await?;
    ensure_contains(&out, "Client Version: v")?;
    ensure_contains(&out, "Server Version: v1.")?;
    Ok(())
}

async fn api_resources_lists_the_builtin_kinds(c: &Cluster, k: Kubectl) -> Result<()> {
    let out = c.kubectl_ok(k, &["api-resources"]).await?;
    ensure_contains(&out, "NAME")?;
    ensure_contains(&out, "SHORTNAMES")?;
    ensure_contains(&out, "APIVERSION")?;
    ensure_contains(&out, "NAMESPACED")?;
    ensure_contains(&out, "KIND")?;
    // name, shortnames, group/version, namespaced, kind of each row we rely on.
    for (name, short, gv, namespaced, kind) in [
        ("configmaps", "cm", "v1", "true", "ConfigMap"),
        ("namespaces", "ns", "v1", "false", "Namespace"),
        ("secrets", "", "v1", "true", "Secret"),
        ("services", "svc", "v1", "true", "Service"),
        ("pods", "po", "v1", "true", "Pod"),
        ("deployments", "deploy", "apps/v1", "true", "Deployment"),
        ("jobs", "", "batch/v1", "true", "Job"),
    ] {
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .with_context(|| format!("no {name} row in:\n{out}"))?;
        let cols: Vec<&str> = row.split_whitespace().collect();
        let expected: Vec<&str> = [name, short, gv, namespaced, kind]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        if cols != expected {
            bail!("row for {name}: {cols:?}, expected {expected:?}\n{out}");
        }
    }

    let cluster_scoped = c
        .kubectl_ok(k, &["api-resources", "--namespaced=false", "-o", "name"])
        .await?;
    ensure_contains(&cluster_scoped, "namespaces")?;
    if cluster_scoped.lines().any(|l| l == "configmaps") {
        bail!("configmaps listed as cluster-scoped:\n{cluster_scoped}");
    }
    let apps = c
        .kubectl_ok(k, &["api-resources", "--api-group=apps", "-o", "name"])
        .await?;
    ensure_contains(&apps, "deployments.apps")?;

    let versions = c.kubectl_ok(k, &["api-versions"]).await?;
    for gv in ["v1", "apps/v1", "batch/v1"] {
        if !versions.lines().any(|l| l == gv) {
            bail!("api-versions lacks {gv}:\n{versions}");
        }
    }
    Ok(())
}

async fn explain_shows_field_documentation(c: &Cluster, k: Kubectl) -> Result<()> {
    let out = c.kubectl_ok(k, &["explain", "configmap"]).await?;
    ensure_contains(&out, "ConfigMap")?;
    ensure_contains(&out, "VERSION:")?;
    ensure_contains(&out, "FIELDS:")?;
    ensure_contains(&out, "data")?;
    ensure_contains(&out, "binaryData")?;

    let out = c
        .kubectl_ok(k, &["explain", "deployment.spec.replicas"])
        .await?;
    ensure_contains(&out, "apps")?;
    ensure_contains(&out, "replicas")?;
    ensure_contains(&out, "<integer>")?;

    let out = c
        .kubectl_ok(
            k,
            &["explain", "deployments.spec.template.spec.containers.image"],
        )
        .await?;
    ensure_contains(&out, "<string>")?;

    let err = c
        .kubectl_err(k, &["explain", "configmap.nosuchfield"])
        .await?;
    ensure_contains(&err, "nosuchfield")?;
    Ok(())
}

async fn health_endpoints_answer_ok(c: &Cluster, k: Kubectl) -> Result<()> {
    for path in ["/livez", "/readyz", "/healthz"] {
        let out = c.kubectl_ok(k, &["get", "--raw", path]).await?;
        if out.trim() != "ok" {
            bail!("{path} answered {out:?}");
        }
    }
    Ok(())
}
