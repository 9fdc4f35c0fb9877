//! kubectl's usual error messages for bad requests, against kith, for each pinned kubectl.
//! A rejected request must also leave nothing behind.

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Namespace;
use kith_e2e::{client_from_kubeconfig, ensure_contains, kubectl_tests, Cluster, Kubectl};
use kube::api::Api;

kubectl_tests!(
    get_missing_object_is_not_found,
    create_existing_object_is_already_exists,
    invalid_name_is_unprocessable,
    unknown_field_is_rejected_by_strict_validation,
    body_over_3mib_is_too_large,
    unknown_kind_or_api_version_has_no_mapping,
    request_without_credentials_is_unauthorized,
);

fn configmap(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n")
}

async fn get_missing_object_is_not_found(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("errors").await?;
    let err = c
        .kubectl_err(k, &["get", "configmap", "nope", "-n", &ns])
        .await?;
    ensure_contains(
        &err,
        r#"Error from server (NotFound): configmaps "nope" not found"#,
    )?;
    let err = c.kubectl_err(k, &["get", "namespace", "nope"]).await?;
    ensure_contains(
        &err,
        r#"Error from server (NotFound): namespaces "nope" not found"#,
    )?;
    let err = c
        .kubectl_err(k, &["get", "deployment.apps", "nope", "-n", &ns])
        .await?;
    ensure_contains(
        &err,
        r#"Error from server (NotFound): deployments.apps "nope" not found"#,
    )
}

async fn create_existing_object_is_already_exists(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("errors").await?;
    let yaml = configmap("twice");
    c.kubectl_stdin_ok(k, &["create", "-n", &ns, "-f", "-"], yaml.as_bytes())
        .await?;
    let err = c
        .kubectl_stdin_err(k, &["create", "-n", &ns, "-f", "-"], yaml.as_bytes())
        .await?;
    ensure_contains(&err, "Error from server (AlreadyExists)")?;
    ensure_contains(&err, r#"configmaps "twice" already exists"#)?;
    // The typed-client path (protobuf body with kubectl 1.33).
    let err = c.kubectl_err(k, &["create", "namespace", &ns]).await?;
    ensure_contains(&err, &format!(r#"namespaces "{ns}" already exists"#))?;
    Ok(())
}

async fn invalid_name_is_unprocessable(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("errors").await?;
    let err = c
        .kubectl_stdin_err(
            k,
            &["apply", "-n", &ns, "-f", "-"],
            configmap("Bad_Name").as_bytes(),
        )
        .await?;
    ensure_contains(&err, r#"The ConfigMap "Bad_Name" is invalid"#)?;
    ensure_contains(&err, r#"metadata.name: Invalid value: "Bad_Name""#)?;
    // Nothing was stored.
    let listed = c
        .kubectl_ok(k, &["get", "configmaps", "-n", &ns, "-o", "name"])
        .await?;
    if listed.contains("Bad_Name") {
        bail!("rejected object was stored: {listed}");
    }
    Ok(())
}

async fn unknown_field_is_rejected_by_strict_validation(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("errors").await?;
    let yaml = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: strict
spec:
  bogus: 1
  selector:
    matchLabels: {app: strict}
  template:
    metadata:
      labels: {app: strict}
    spec:
      containers:
        - name: c
          image: localhost:5000/busybox:1.36
";
    let err = c
        .kubectl_stdin_err(k, &["apply", "-n", &ns, "-f", "-"], yaml.as_bytes())
        .await?;
    ensure_contains(&err, "Error from server (BadRequest)")?;
    ensure_contains(&err, r#"unknown field "spec.bogus""#)?;
    let err = c
        .kubectl_err(k, &["get", "deployment", "strict", "-n", &ns])
        .await?;
    ensure_contains(&err, "(NotFound)")?;
    // Server-side apply validates strictly as well.
    let err = c
        .kubectl_stdin_err(
            k,
            &["apply", "--server-side", "-n", &ns, "-f", "-"],
            yaml.as_bytes(),
        )
        .await?;
    ensure_contains(&err, r#"unknown field "spec.bogus""#)?;
    Ok(())
}

async fn body_over_3mib_is_too_large(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("errors").await?;
    let file = c.scratch().join("big.txt");
    std::fs::write(&file, "x".repeat(4 << 20))?;
    let from_file = format!("--from-file=big.txt={}", file.display());
    let err = c
        .kubectl_err(k, &["create", "configmap", "big", "-n", &ns, &from_file])
        .await?;
    ensure_contains(&err, "Request entity too large")?;
    let err = c
        .kubectl_err(k, &["get", "configmap", "big", "-n", &ns])
        .await?;
    ensure_contains(&err, r#"configmaps "big" not found"#)?;
    Ok(())
}

async fn unknown_kind_or_api_version_has_no_mapping(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("errors").await?;
    let wrong_version = "apiVersion: v1\nkind: Deployment\nmetadata:\n  name: d\nspec: {}\n";
    let err = c
        .kubectl_stdin_err(
            k,
            &["apply", "-n", &ns, "-f", "-"],
            wrong_version.as_bytes(),
        )
        .await?;
    ensure_contains(&err, r#"no matches for kind "Deployment" in version "v1""#)?;
    let unknown_kind = "apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: g\n";
    let err = c
        .kubectl_stdin_err(k, &["apply", "-n", &ns, "-f", "-"], unknown_kind.as_bytes())
        .await?;
    ensure_contains(
        &err,
        r#"no matches for kind "Gadget" in version "example.com/v1""#,
    )?;
    let err = c.kubectl_err(k, &["get", "gadgets"]).await?;
    ensure_contains(
        &err,
        r#"error: the server doesn't have a resource type "gadgets""#,
    )?;
    Ok(())
}

async fn request_without_credentials_is_unauthorized(c: &Cluster, k: Kubectl) -> Result<()> {
    // The same cluster and CA, but a context without a user.
    let text = std::fs::read_to_string(c.kubeconfig())?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let map = config
        .as_mapping_mut()
        .ok_or_else(|| anyhow::anyhow!("kubeconfig is not a mapping"))?;
    map.remove("users");
    if let Some(contexts) = map.get_mut("contexts").and_then(|v| v.as_sequence_mut()) {
        for ctx in contexts {
            if let Some(inner) = ctx.get_mut("context").and_then(|v| v.as_mapping_mut()) {
                inner.remove("user");
            }
        }
    }
    let anonymous = c.scratch().join("anonymous.kubeconfig");
    std::fs::write(&anonymous, serde_yaml::to_string(&config)?)?;

    // No credentials at all: kube-rs sends the request as it is (kubectl would prompt
    // for a username first), and the answer is a 401 Status.
    let client = client_from_kubeconfig(&anonymous, &Default::default()).await?;
    let namespaces: Api<Namespace> = Api::all(client);
    match namespaces.list(&Default::default()).await {
        Err(kube::Error::Api(status)) if status.code == 401 => {
            if status.reason != "Unauthorized" {
                bail!("401 with reason {:?}, expected Unauthorized", status.reason);
            }
        }
        other => bail!("list without credentials: expected 401 Unauthorized, got {other:?}"),
    }

    // A bearer token the server does not know: kubectl's usual message.
    let anonymous = anonymous.to_string_lossy().into_owned();
    let err = c
        .kubectl_err(
            k,
            &[
                "--kubeconfig",
                &anonymous,
                "--token",
                "not-a-real-token",
                "get",
                "namespaces",
            ],
        )
        .await?;
    // kubectl words it "(Unauthorized)" or, when discovery is what failed (as with a real
    // kube-apiserver), "(the server has asked for the client to provide credentials)".
    ensure_contains(&err, "error: You must be logged in to the server (")?;
    // ...while the admin token user from the generated kubeconfig works.
    c.kubectl_ok(k, &["--user", "kith-admin-token", "get", "namespaces"])
        .await?;
    Ok(())
}
