//! `kubectl get` in its output forms, across namespaces, with label selectors, and
//! `get -w` seeing later changes.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use kith_e2e::{ensure_contains, kubectl_tests, manifest, Cluster, Kubectl};
use serde_json::Value;

kubectl_tests!(
    get_prints_tables_yaml_and_jsonpath,
    get_all_namespaces_and_label_selectors,
    get_watch_receives_later_changes,
    describe_shows_the_object,
);

fn row<'a>(table: &'a str, name: &str) -> Result<Vec<&'a str>> {
    table
        .lines()
        .find(|l| l.split_whitespace().any(|c| c == name))
        .map(|l| l.split_whitespace().collect())
        .with_context(|| format!("no row for {name} in:\n{table}"))
}

fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

async fn get_prints_tables_yaml_and_jsonpath(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("get").await?;
    let cm = manifest("configmap.yaml").to_string_lossy().into_owned();
    let hello = manifest("hello.yaml").to_string_lossy().into_owned();
    c.kubectl_ok(k, &["apply", "-n", &ns, "-f", &cm, "-f", &hello])
        .await?;

    // The server's Table: ConfigMaps show NAME DATA AGE.
    let out = c.kubectl_ok(k, &["get", "configmaps", "-n", &ns]).await?;
    if header(&out) != ["NAME", "DATA", "AGE"] {
        bail!("configmap table header:\n{out}");
    }
    let r = row(&out, "app-config")?;
    if r.get(1) != Some(&"3") {
        bail!("DATA column should count 3 keys:\n{out}");
    }

    // Deployments: -o wide adds the priority-1 columns.
    let out = c.kubectl_ok(k, &["get", "deployments", "-n", &ns]).await?;
    if header(&out) != ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"] {
        bail!("deployment table header:\n{out}");
    }
    let out = c
        .kubectl_ok(k, &["get", "deployments", "-n", &ns, "-o", "wide"])
        .await?;
    if header(&out)
        != [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR",
        ]
    {
        bail!("deployment wide header:\n{out}");
    }
    let r = row(&out, "hello")?;
    if !r.contains(&"web,log-tail") || !r.contains(&"app=hello") {
        bail!("wide row should list containers and selector:\n{out}");
    }
    let out = c.kubectl_ok(k, &["get", "services", "-n", &ns]).await?;
    if header(&out)
        != [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ]
    {
        bail!("service table header:\n{out}");
    }
    ensure_contains(&out, "80/TCP")?;

    // -o yaml is the whole object.
    let out = c
        .kubectl_ok(
            k,
            &["get", "configmap", "app-config", "-n", &ns, "-o", "yaml"],
        )
        .await?;
    let obj: Value = serde_yaml::from_str(&out).context("get -o yaml")?;
    if obj["kind"] != "ConfigMap"
        || obj["apiVersion"] != "v1"
        || obj["metadata"]["namespace"] != ns.as_str()
        || obj["data"]["MAX_CONNECTIONS"] != "100"
        || obj["metadata"]["creationTimestamp"].as_str().is_none()
    {
        bail!("get -o yaml:\n{out}");
    }
    // A list in yaml.
    let out = c
        .kubectl_ok(k, &["get", "configmaps", "-n", &ns, "-o", "yaml"])
        .await?;
    let list: Value = serde_yaml::from_str(&out)?;
    if list["kind"] != "List" || list["items"].as_array().is_none_or(Vec::is_empty) {
        bail!("get list -o yaml:\n{out}");
    }

    // jsonpath on one object and on a list.
    let out = c
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
    if out != "info" {
        bail!("jsonpath gave {out:?}");
    }
    let out = c
        .kubectl_ok(
            k,
            &[
                "get",
                "deployments",
                "-n",
                &ns,
                "-o",
                "jsonpath={.items[*].spec.template.spec.containers[*].name}",
            ],
        )
        .await?;
    if out != "web log-tail" {
        bail!("jsonpath over a list gave {out:?}");
    }
    let out = c
        .kubectl_ok(k, &["get", "configmap,service", "-n", &ns, "-o", "name"])
        .await?;
    ensure_contains(&out, "configmap/app-config")?;
    ensure_contains(&out, "service/hello")?;
    Ok(())
}

async fn get_all_namespaces_and_label_selectors(c: &Cluster, k: Kubectl) -> Result<()> {
    let a = c.namespace("sel-a").await?;
    let b = c.namespace("sel-b").await?;
    for (ns, name, labels) in [
        (&a, "red-1", "color=red,size=s"),
        (&a, "blue-1", "color=blue,size=m"),
        (&b, "red-2", "color=red,size=l"),
        (&b, "plain", ""),
    ] {
        c.kubectl_ok(
            k,
            &["create", "configmap", name, "-n", ns, "--from-literal=k=v"],
        )
        .await?;
        if !labels.is_empty() {
            let mut args = vec!["label", "configmap", name, "-n", ns];
            args.extend(labels.split(','));
            c.kubectl_ok(k, &args).await?;
        }
    }

    let out = c.kubectl_ok(k, &["get", "configmaps", "-A"]).await?;
    if header(&out) != ["NAMESPACE", "NAME", "DATA", "AGE"] {
        bail!("-A header:\n{out}");
    }
    for (ns, name) in [(&a, "red-1"), (&a, "blue-1"), (&b, "red-2"), (&b, "plain")] {
        let r = row(&out, name)?;
        if r[0] != ns.as_str() {
            bail!("{name} should be in {ns}:\n{out}");
        }
    }

    let names = |out: &str| -> Vec<String> {
        let mut v: Vec<String> = out.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    for (selector, expected) in [
        ("color=red", vec!["red-1", "red-2"]),
        ("color==red", vec!["red-1", "red-2"]),
        ("color!=red", vec!["blue-1", "plain"]),
        ("color in (blue,green)", vec!["blue-1"]),
        ("size notin (s,m)", vec!["plain", "red-2"]),
        ("color", vec!["blue-1", "red-1", "red-2"]),
        ("!color", vec!["plain"]),
        ("color=red,size=l", vec!["red-2"]),
    ] {
        let out = c
            .kubectl_ok(
                k,
                &[
                    "get",
                    "configmaps",
                    "-A",
                    "-l",
                    selector,
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
                ],
            )
            .await?;
        // Namespaces may get a kube-root-ca.crt ConfigMap; it carries no labels.
        let got: Vec<String> = names(&out)
            .into_iter()
            .filter(|n| n != "kube-root-ca.crt")
            .collect();
        if got != expected {
            bail!("-l {selector:?}: got {got:?}, expected {expected:?}");
        }
    }
    let out = c
        .kubectl_ok(
            k,
            &[
                "get",
                "configmaps",
                "-n",
                &a,
                "-l",
                "color=red",
                "-o",
                "name",
            ],
        )
        .await?;
    if out.trim() != "configmap/red-1" {
        bail!("-n with -l gave {out:?}");
    }
    let err = c
        .kubectl_err(k, &["get", "configmaps", "-A", "-l", "color in red"])
        .await?;
    if err.trim().is_empty() {
        bail!("a malformed selector must be an error");
    }
    let out = c
        .kubectl_ok(
            k,
            &[
                "get",
                "configmaps",
                "-A",
                "--field-selector",
                "metadata.name=red-2",
                "-o",
                "name",
            ],
        )
        .await?;
    if out.trim() != "configmap/red-2" {
        bail!("--field-selector metadata.name gave {out:?}");
    }
    Ok(())
}

async fn get_watch_receives_later_changes(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("watch").await?;
    c.kubectl_ok(
        k,
        &[
            "create",
            "configmap",
            "first",
            "-n",
            &ns,
            "--from-literal=k=v",
        ],
    )
    .await?;

    // Table rows as they come.
    let mut table = c.kubectl_background(k, &["get", "configmaps", "-n", &ns, "-w"])?;
    table
        .wait_for("the initial row", Duration::from_secs(20), |out| {
            out.lines().any(|l| l.starts_with("first "))
        })
        .await?;
    // One object's field, printed on each change.
    let mut field = c.kubectl_background(
        k,
        &[
            "get",
            "configmap",
            "first",
            "-n",
            &ns,
            "-w",
            "-o",
            "jsonpath={.metadata.labels.stage}{\"|\"}",
        ],
    )?;
    field
        .wait_for("the initial event", Duration::from_secs(20), |out| {
            out.contains('|')
        })
        .await?;

    c.kubectl_ok(
        k,
        &[
            "create",
            "configmap",
            "later",
            "-n",
            &ns,
            "--from-literal=a=b",
        ],
    )
    .await?;
    c.kubectl_ok(k, &["label", "configmap", "first", "-n", &ns, "stage=two"])
        .await?;

    table
        .wait_for(
            "a row for the ConfigMap created later",
            Duration::from_secs(20),
            |out| out.lines().any(|l| l.starts_with("later ")),
        )
        .await?;
    field
        .wait_for("the new label value", Duration::from_secs(20), |out| {
            out.contains("two|")
        })
        .await?;

    // A deletion shows up too (as a last row for the object).
    let rows_before = table
        .stdout()
        .lines()
        .filter(|l| l.starts_with("later "))
        .count();
    c.kubectl_ok(k, &["delete", "configmap", "later", "-n", &ns])
        .await?;
    table
        .wait_for("a row for the deletion", Duration::from_secs(20), |out| {
            out.lines().filter(|l| l.starts_with("later ")).count() > rows_before
        })
        .await?;
    Ok(())
}

async fn describe_shows_the_object(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("describe").await?;
    let cm = manifest("configmap.yaml").to_string_lossy().into_owned();
    let hello = manifest("hello.yaml").to_string_lossy().into_owned();
    c.kubectl_ok(k, &["apply", "-n", &ns, "-f", &cm, "-f", &hello])
        .await?;

    let out = c
        .kubectl_ok(k, &["describe", "configmap", "app-config", "-n", &ns])
        .await?;
    let line = |prefix: &str| -> Result<String> {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_string)
            .with_context(|| format!("no {prefix:?} line in:\n{out}"))
    };
    ensure_contains(&line("Name:")?, "app-config")?;
    ensure_contains(&line("Namespace:")?, &ns)?;
    ensure_contains(&line("Labels:")?, "app=hello")?;
    ensure_contains(&out, "Data\n====")?;
    ensure_contains(&out, "LOG_LEVEL:\n----\ninfo")?;

    let out = c
        .kubectl_ok(k, &["describe", "deployment", "hello", "-n", &ns])
        .await?;
    ensure_contains(&out, "Name:")?;
    ensure_contains(&out, "hello")?;
    ensure_contains(&out, "Replicas:")?;
    ensure_contains(&out, "2 desired")?;
    ensure_contains(&out, "Pod Template:")?;
    ensure_contains(&out, "localhost/hello:v1")?;
    ensure_contains(&out, "Selector:")?;
    ensure_contains(&out, "app=hello")?;

    let out = c
        .kubectl_ok(k, &["describe", "service", "hello", "-n", &ns])
        .await?;
    ensure_contains(&out, "Type:")?;
    ensure_contains(&out, "ClusterIP")?;
    ensure_contains(&out, "80/TCP")?;
    Ok(())
}
