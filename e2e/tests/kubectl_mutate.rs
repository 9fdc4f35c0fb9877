//! kubectl commands that change objects: create (protobuf bodies with kubectl 1.33), label,
//! annotate, patch in its three types, scale, replace, delete --wait.

use anyhow::{bail, Context, Result};
use kith_e2e::{ensure_contains, kubectl_tests, manifest, Cluster, Kubectl};
use serde_json::Value;

kubectl_tests!(
    create_namespace_and_configmap_from_literal,
    label_and_annotate,
    patch_json_merge_and_strategic,
    scale_deployment,
    replace_whole_object,
    delete_waits_until_gone,
);

async fn get_json(c: &Cluster, k: Kubectl, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl_ok(k, &all).await?;
    serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
}

async fn create_namespace_and_configmap_from_literal(c: &Cluster, k: Kubectl) -> Result<()> {
    let out = c
        .kubectl_ok(k, &["create", "namespace", "made-by-kubectl"])
        .await?;
    ensure_contains(&out, "namespace/made-by-kubectl created")?;
    let ns = get_json(c, k, &["get", "namespace", "made-by-kubectl"]).await?;
    if ns["status"]["phase"] != "Active" {
        bail!("a new namespace should be Active: {ns}");
    }

    let out = c
        .kubectl_ok(
            k,
            &[
                "create",
                "configmap",
                "literal",
                "-n",
                "made-by-kubectl",
                "--from-literal=greeting=hello world",
                "--from-literal=count=3",
            ],
        )
        .await?;
    ensure_contains(&out, "configmap/literal created")?;
    let cm = get_json(
        c,
        k,
        &["get", "configmap", "literal", "-n", "made-by-kubectl"],
    )
    .await?;
    if cm["data"]["greeting"] != "hello world" || cm["data"]["count"] != "3" {
        bail!("data from literals: {cm}");
    }

    let out = c
        .kubectl_ok(
            k,
            &[
                "create",
                "secret",
                "generic",
                "token",
                "-n",
                "made-by-kubectl",
                "--from-literal=token=abc",
            ],
        )
        .await?;
    ensure_contains(&out, "secret/token created")?;
    let secret = get_json(c, k, &["get", "secret", "token", "-n", "made-by-kubectl"]).await?;
    if secret["data"]["token"] != "YWJj" || secret["type"] != "Opaque" {
        bail!("secret from literal: {secret}");
    }

    let out = c
        .kubectl_ok(
            k,
            &[
                "create",
                "deployment",
                "web",
                "-n",
                "made-by-kubectl",
                "--image=localhost:5000/busybox:1.36",
                "--replicas=2",
            ],
        )
        .await?;
    ensure_contains(&out, "deployment.apps/web created")?;
    let d = get_json(c, k, &["get", "deployment", "web", "-n", "made-by-kubectl"]).await?;
    if d["spec"]["replicas"] != 2
        || d["spec"]["template"]["spec"]["containers"][0]["image"] != "localhost:5000/busybox:1.36"
        || d["spec"]["selector"]["matchLabels"]["app"] != "web"
    {
        bail!("deployment from create: {d}");
    }
    Ok(())
}

async fn label_and_annotate(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("label").await?;
    let file = manifest("configmap.yaml").to_string_lossy().into_owned();
    c.kubectl_ok(k, &["apply", "-n", &ns, "-f", &file]).await?;
    let run = |verb: &str, extra: &[&str]| -> Vec<String> {
        [verb, "configmap", "app-config", "-n", ns.as_str()]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    async fn ok(c: &Cluster, k: Kubectl, args: Vec<String>) -> Result<String> {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        c.kubectl_ok(k, &a).await
    }
    async fn err(c: &Cluster, k: Kubectl, args: Vec<String>) -> Result<String> {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        c.kubectl_err(k, &a).await
    }

    let out = ok(c, k, run("label", &["stage=one"])).await?;
    ensure_contains(&out, "configmap/app-config labeled")?;
    let e = err(c, k, run("label", &["stage=two"])).await?;
    ensure_contains(
        &e,
        "'stage' already has a value (one), and --overwrite is false",
    )?;
    ok(c, k, run("label", &["stage=two", "--overwrite"])).await?;
    let cm = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    if cm["metadata"]["labels"]["stage"] != "two" || cm["metadata"]["labels"]["app"] != "hello" {
        bail!("labels after overwrite: {cm}");
    }
    ok(c, k, run("label", &["stage-"])).await?;
    let cm = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    if !cm["metadata"]["labels"]["stage"].is_null() || cm["metadata"]["labels"]["tier"] != "config"
    {
        bail!("label removal: {cm}");
    }
    let e = err(c, k, run("label", &["bad label=x"])).await?;
    if e.trim().is_empty() {
        bail!("an invalid label key must be rejected");
    }

    let out = ok(c, k, run("annotate", &["owner=team-a"])).await?;
    ensure_contains(&out, "configmap/app-config annotated")?;
    let e = err(c, k, run("annotate", &["owner=team-b"])).await?;
    ensure_contains(&e, "--overwrite is false")?;
    ok(c, k, run("annotate", &["owner=team-b", "--overwrite"])).await?;
    let cm = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    let ann = &cm["metadata"]["annotations"];
    if ann["owner"] != "team-b" || ann["kubectl.kubernetes.io/last-applied-configuration"].is_null()
    {
        bail!("annotations: {cm}");
    }
    ok(c, k, run("annotate", &["owner-"])).await?;
    let cm = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    if !cm["metadata"]["annotations"]["owner"].is_null() {
        bail!("annotation removal: {cm}");
    }

    // Labels on every object of a kind at once, by selector.
    c.kubectl_ok(
        k,
        &[
            "create",
            "configmap",
            "other",
            "-n",
            &ns,
            "--from-literal=a=b",
        ],
    )
    .await?;
    c.kubectl_ok(k, &["label", "configmaps", "--all", "-n", &ns, "batch=yes"])
        .await?;
    let out = c
        .kubectl_ok(
            k,
            &[
                "get",
                "configmaps",
                "-n",
                &ns,
                "-l",
                "batch=yes",
                "-o",
                "name",
            ],
        )
        .await?;
    ensure_contains(&out, "configmap/app-config")?;
    ensure_contains(&out, "configmap/other")?;
    Ok(())
}

async fn patch_json_merge_and_strategic(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("patch").await?;
    let cm = manifest("configmap.yaml").to_string_lossy().into_owned();
    let hello = manifest("hello.yaml").to_string_lossy().into_owned();
    c.kubectl_ok(k, &["apply", "-n", &ns, "-f", &cm, "-f", &hello])
        .await?;

    let out = c
        .kubectl_ok(
            k,
            &[
                "patch",
                "configmap",
                "app-config",
                "-n",
                &ns,
                "--type",
                "json",
                "-p",
                r#"[{"op":"add","path":"/data/EXTRA","value":"1"},{"op":"remove","path":"/data/MAX_CONNECTIONS"}]"#,
            ],
        )
        .await?;
    ensure_contains(&out, "configmap/app-config patched")?;
    let got = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    if got["data"]["EXTRA"] != "1" || !got["data"]["MAX_CONNECTIONS"].is_null() {
        bail!("json patch: {got}");
    }
    // A failing test operation rejects the whole patch.
    let err = c
        .kubectl_err(
            k,
            &[
                "patch",
                "configmap",
                "app-config",
                "-n",
                &ns,
                "--type",
                "json",
                "-p",
                r#"[{"op":"add","path":"/data/NEVER","value":"x"},{"op":"test","path":"/data/LOG_LEVEL","value":"nope"}]"#,
            ],
        )
        .await?;
    if err.trim().is_empty() {
        bail!("a failed json-patch test op must be an error");
    }
    let got = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    if !got["data"]["NEVER"].is_null() {
        bail!("a rejected json patch left a change: {got}");
    }

    c.kubectl_ok(
        k,
        &[
            "patch",
            "configmap",
            "app-config",
            "-n",
            &ns,
            "--type",
            "merge",
            "-p",
            r#"{"data":{"LOG_LEVEL":"warn","EXTRA":null}}"#,
        ],
    )
    .await?;
    let got = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    if got["data"]["LOG_LEVEL"] != "warn" || !got["data"]["EXTRA"].is_null() {
        bail!("merge patch: {got}");
    }

    // Strategic merge (kubectl's default type): containers merge by name, so the sidecar
    // and the web container's other fields survive.
    c.kubectl_ok(
        k,
        &[
            "patch",
            "deployment",
            "hello",
            "-n",
            &ns,
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"localhost:5000/busybox:1.37","env":[{"name":"MODE","value":"patched"}]}]}}}}"#,
        ],
    )
    .await?;
    let d = get_json(c, k, &["get", "deployment", "hello", "-n", &ns]).await?;
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .with_context(|| format!("containers: {d}"))?;
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    if names != ["web", "log-tail"] {
        bail!("strategic merge lost or reordered containers {names:?}: {d}");
    }
    let web = &containers[0];
    let env: Vec<&str> = web["env"]
        .as_array()
        .map(|e| e.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default();
    if web["image"] != "localhost:5000/busybox:1.37"
        || web["ports"][0]["containerPort"] != 8080
        || !env.contains(&"GREETING")
        || !env.contains(&"MODE")
    {
        bail!("strategic merge of the web container: {web}");
    }
    // $patch: delete removes one list element by its merge key.
    c.kubectl_ok(
        k,
        &[
            "patch",
            "deployment",
            "hello",
            "-n",
            &ns,
            "--type",
            "strategic",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"log-tail","$patch":"delete"}]}}}}"#,
        ],
    )
    .await?;
    let d = get_json(c, k, &["get", "deployment", "hello", "-n", &ns]).await?;
    let names: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    if names != ["web"] {
        bail!("$patch: delete of log-tail: {d}");
    }
    Ok(())
}

async fn scale_deployment(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("scale").await?;
    let hello = manifest("hello.yaml").to_string_lossy().into_owned();
    c.kubectl_ok(k, &["apply", "-n", &ns, "-f", &hello]).await?;
    let out = c
        .kubectl_ok(
            k,
            &["scale", "deployment", "hello", "-n", &ns, "--replicas=4"],
        )
        .await?;
    ensure_contains(&out, "deployment.apps/hello scaled")?;
    let replicas = c
        .kubectl_ok(
            k,
            &[
                "get",
                "deployment",
                "hello",
                "-n",
                &ns,
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        )
        .await?;
    if replicas != "4" {
        bail!("replicas after scale: {replicas}");
    }
    // The precondition is checked against the current value.
    let err = c
        .kubectl_err(
            k,
            &[
                "scale",
                "deployment",
                "hello",
                "-n",
                &ns,
                "--current-replicas=2",
                "--replicas=1",
            ],
        )
        .await?;
    ensure_contains(&err, "Expected replicas to be 2, was 4")?;
    let scale = c
        .kubectl_ok(
            k,
            &[
                "get",
                "--raw",
                &format!("/apis/apps/v1/namespaces/{ns}/deployments/hello/scale"),
            ],
        )
        .await?;
    let scale: Value = serde_json::from_str(&scale)?;
    if scale["kind"] != "Scale"
        || scale["apiVersion"] != "autoscaling/v1"
        || scale["spec"]["replicas"] != 4
    {
        bail!("scale subresource: {scale}");
    }
    Ok(())
}

async fn replace_whole_object(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("replace").await?;
    let file = manifest("configmap.yaml").to_string_lossy().into_owned();
    c.kubectl_ok(k, &["apply", "-n", &ns, "-f", &file]).await?;
    let live = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;

    let mut next = live.clone();
    next["data"] = serde_json::json!({"ONLY": "this"});
    let out = c
        .kubectl_stdin_ok(
            k,
            &["replace", "-n", &ns, "-f", "-"],
            serde_json::to_string(&next)?.as_bytes(),
        )
        .await?;
    ensure_contains(&out, "configmap/app-config replaced")?;
    let got = get_json(c, k, &["get", "configmap", "app-config", "-n", &ns]).await?;
    if got["data"] != serde_json::json!({"ONLY": "this"}) {
        bail!("replace must swap the whole data: {got}");
    }
    if got["metadata"]["uid"] != live["metadata"]["uid"]
        || got["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]
    {
        bail!("replace keeps the uid and moves the resourceVersion: {got}");
    }

    // The same body again carries a stale resourceVersion: a conflict.
    let err = c
        .kubectl_stdin_err(
            k,
            &["replace", "-n", &ns, "-f", "-"],
            serde_json::to_string(&next)?.as_bytes(),
        )
        .await?;
    ensure_contains(&err, "Error from server (Conflict)")?;
    ensure_contains(
        &err,
        r#"Operation cannot be fulfilled on configmaps "app-config": the object has been modified; please apply your changes to the latest version and try again"#,
    )?;

    // replace of something absent is NotFound.
    let mut absent = next.clone();
    absent["metadata"] = serde_json::json!({"name": "absent"});
    let err = c
        .kubectl_stdin_err(
            k,
            &["replace", "-n", &ns, "-f", "-"],
            serde_json::to_string(&absent)?.as_bytes(),
        )
        .await?;
    ensure_contains(&err, r#"configmaps "absent" not found"#)?;
    Ok(())
}

async fn delete_waits_until_gone(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("delete").await?;
    let cm = manifest("configmap.yaml").to_string_lossy().into_owned();
    let hello = manifest("hello.yaml").to_string_lossy().into_owned();
    c.kubectl_ok(k, &["apply", "-n", &ns, "-f", &cm, "-f", &hello])
        .await?;

    let out = c
        .kubectl_ok(
            k,
            &[
                "delete",
                "configmap",
                "app-config",
                "-n",
                &ns,
                "--wait",
                "--timeout=30s",
            ],
        )
        .await?;
    ensure_contains(&out, r#"configmap "app-config" deleted"#)?;
    let err = c
        .kubectl_err(k, &["get", "configmap", "app-config", "-n", &ns])
        .await?;
    ensure_contains(&err, "(NotFound)")?;

    let out = c
        .kubectl_ok(
            k,
            &["delete", "-f", &hello, "-n", &ns, "--wait", "--timeout=30s"],
        )
        .await?;
    ensure_contains(&out, r#"deployment.apps "hello" deleted"#)?;
    ensure_contains(&out, r#"service "hello" deleted"#)?;

    let err = c
        .kubectl_err(k, &["delete", "configmap", "app-config", "-n", &ns])
        .await?;
    ensure_contains(
        &err,
        r#"Error from server (NotFound): configmaps "app-config" not found"#,
    )?;
    let out = c
        .kubectl_ok(
            k,
            &[
                "delete",
                "configmap",
                "app-config",
                "-n",
                &ns,
                "--ignore-not-found",
            ],
        )
        .await?;
    if !out.trim().is_empty() {
        bail!("--ignore-not-found printed {out:?}");
    }

    // Deleting a namespace removes what is in it.
    c.kubectl_ok(
        k,
        &[
            "create",
            "configmap",
            "inside",
            "-n",
            &ns,
            "--from-literal=a=b",
        ],
    )
    .await?;
    let out = c
        .kubectl_ok(k, &["delete", "namespace", &ns, "--wait", "--timeout=40s"])
        .await?;
    ensure_contains(&out, &format!(r#"namespace "{ns}" deleted"#))?;
    let err = c.kubectl_err(k, &["get", "namespace", &ns]).await?;
    ensure_contains(&err, "(NotFound)")?;
    let out = c
        .kubectl_ok(k, &["get", "configmaps", "-A", "-o", "name"])
        .await?;
    if out.contains("configmap/inside") {
        bail!("objects of a deleted namespace remain: {out}");
    }
    Ok(())
}
