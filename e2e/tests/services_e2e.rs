//! Services through kubectl: ClusterIPs allocated from 10.43.0.0/16 (unique, headless left
//! alone, a taken IP reported, a released IP reusable), and Endpoints/EndpointSlices that
//! follow the selected pods' readiness.
//!
//! kith has no node agent yet, so pods never get an IP or become Ready on their own. The
//! test plays the agent: it patches each pod's status subresource with a podIP and a
//! Ready condition, as a kubelet would.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kith_e2e::{kubectl_tests, Cluster, Kubectl};
use serde_json::Value;

kubectl_tests!(cluster_ips_and_endpoints_follow_pods);

const WAIT: Duration = Duration::from_secs(20);

/// Polls `args` (a `kubectl get ... -o jsonpath=...`) until its output satisfies `ok`;
/// returns that output.
async fn until(
    c: &Cluster,
    k: Kubectl,
    args: &[&str],
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> Result<String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < WAIT {
        let out = c.kubectl(k, args).await?;
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && ok(&last) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("timed out waiting for {what}; last output: {last}")
}

async fn cluster_ip(c: &Cluster, k: Kubectl, ns: &str, svc: &str) -> Result<Ipv4Addr> {
    let ip = until(
        c,
        k,
        &[
            "get",
            "svc",
            svc,
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        &format!("a clusterIP on {svc}"),
        |s| !s.is_empty(),
    )
    .await?;
    ip.parse().with_context(|| format!("clusterIP {ip:?}"))
}

/// The agent's part: give `pod` an IP and a Ready condition with `ready` status.
async fn set_pod_status(
    c: &Cluster,
    k: Kubectl,
    ns: &str,
    pod: &str,
    ip: &str,
    ready: bool,
) -> Result<()> {
    let status = if ready { "True" } else { "False" };
    let body = format!(
        r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"{status}"}}]}}}}"#
    );
    c.kubectl_ok(
        k,
        &[
            "patch",
            "pod",
            pod,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &body,
        ],
    )
    .await?;
    Ok(())
}

fn services_yaml() -> &'static str {
    r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  selector:
    app: db
  ports:
  - port: 5432
---
apiVersion: v1
kind: Service
metadata:
  name: peers
spec:
  clusterIP: None
  selector:
    app: web
  ports:
  - port: 80
"#
}

fn pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: web\nspec:\n  containers:\n  - name: c\n    image: localhost:5000/pause:3.9\n    ports:\n    - name: http\n      containerPort: 8080\n"
    )
}

/// The resourceVersions of `svc`'s Endpoints and EndpointSlices.
async fn versions(c: &Cluster, k: Kubectl, ns: &str, svc: &str) -> Result<String> {
    let sel = format!("kubernetes.io/service-name={svc}");
    c.kubectl_ok(
        k,
        &[
            "get",
            "endpoints,endpointslices",
            "-n",
            ns,
            "-l",
            &sel,
            "-o",
            "jsonpath={.items[*].metadata.resourceVersion}",
        ],
    )
    .await
}

/// The EndpointSlices of `svc` as JSON items.
async fn slices(c: &Cluster, k: Kubectl, ns: &str, svc: &str) -> Result<Vec<Value>> {
    let sel = format!("kubernetes.io/service-name={svc}");
    let out = c
        .kubectl_ok(
            k,
            &["get", "endpointslices", "-n", ns, "-l", &sel, "-o", "json"],
        )
        .await?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

/// "ip:ready" of every endpoint in the slices, sorted.
fn slice_endpoints(items: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = items
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            format!(
                "{}:{}",
                e["addresses"][0].as_str().unwrap_or(""),
                e["conditions"]["ready"]
            )
        })
        .collect();
    out.sort();
    out
}

async fn cluster_ips_and_endpoints_follow_pods(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("svc-e2e").await?;
    let ns = ns.as_str();
    c.apply_yaml(k, Some(ns), services_yaml()).await?;

    // Allocation: in the range, unique, with family fields; headless stays None.
    let in_range = |ip: Ipv4Addr| ip.octets()[..2] == [10, 43];
    let web_ip = cluster_ip(c, k, ns, "web").await?;
    let db_ip = cluster_ip(c, k, ns, "db").await?;
    ensure!(
        in_range(web_ip) && in_range(db_ip),
        "{web_ip} {db_ip} outside 10.43.0.0/16"
    );
    ensure!(web_ip != db_ip, "both services got {web_ip}");
    let fam = c
        .kubectl_ok(
            k,
            &[
                "get",
                "svc",
                "web",
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.clusterIPs[*]} {.spec.ipFamilies[*]} {.spec.ipFamilyPolicy}",
            ],
        )
        .await?;
    ensure!(
        fam == format!("{web_ip} IPv4 SingleStack"),
        "family fields: {fam}"
    );
    let headless = c
        .kubectl_ok(
            k,
            &[
                "get",
                "svc",
                "peers",
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
        )
        .await?;
    ensure!(headless == "None", "headless service got {headless}");
    let table = c.kubectl_ok(k, &["get", "svc", "-n", ns]).await?;
    ensure!(
        table.contains(&web_ip.to_string()),
        "kubectl get svc: {table}"
    );

    // Endpoints: two pods matching web's selector, made Ready by the simulated agent.
    for p in ["web-a", "web-b"] {
        c.apply_yaml(k, Some(ns), &pod_yaml(p)).await?;
    }
    set_pod_status(c, k, ns, "web-a", "10.42.0.5", true).await?;
    set_pod_status(c, k, ns, "web-b", "10.42.0.6", true).await?;
    until(
        c,
        k,
        &[
            "get",
            "endpoints",
            "web",
            "-n",
            ns,
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}|{.subsets[*].ports[*].port}",
        ],
        "both pods ready in Endpoints web on port 8080",
        |s| s == "10.42.0.5 10.42.0.6|8080",
    )
    .await?;
    let table = c
        .kubectl_ok(k, &["get", "endpoints", "web", "-n", ns])
        .await?;
    ensure!(
        table.contains("10.42.0.5:8080,10.42.0.6:8080"),
        "kubectl get endpoints: {table}"
    );
    let start = Instant::now();
    loop {
        let items = slices(c, k, ns, "web").await?;
        let eps = slice_endpoints(&items);
        if items.len() == 1 && eps == ["10.42.0.5:true", "10.42.0.6:true"] {
            let s = &items[0];
            ensure!(s["addressType"] == "IPv4", "slice: {s}");
            ensure!(
                s["ports"][0]["port"] == 8080 && s["ports"][0]["name"] == "http",
                "slice ports: {s}"
            );
            ensure!(
                s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
                    == "endpointslice-controller.k8s.io",
                "slice labels: {s}"
            );
            ensure!(
                s["metadata"]["ownerReferences"][0]["kind"] == "Service",
                "slice owner: {s}"
            );
            ensure!(
                s["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("web-")),
                "slice name: {s}"
            );
            break;
        }
        if start.elapsed() > WAIT {
            bail!("slices of web: {items:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The headless service selects the same pods, on their port 80.
    until(
        c,
        k,
        &[
            "get",
            "endpoints",
            "peers",
            "-n",
            ns,
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}|{.subsets[*].ports[*].port}",
        ],
        "headless endpoints",
        |s| s == "10.42.0.5 10.42.0.6|80",
    )
    .await?;

    // One pod stops being ready: it moves to notReadyAddresses and ready=false.
    set_pod_status(c, k, ns, "web-b", "10.42.0.6", false).await?;
    until(
        c,
        k,
        &[
            "get",
            "endpoints",
            "web",
            "-n",
            ns,
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}|{.subsets[*].notReadyAddresses[*].ip}",
        ],
        "web-b not ready in Endpoints",
        |s| s == "10.42.0.5|10.42.0.6",
    )
    .await?;
    let start = Instant::now();
    while slice_endpoints(&slices(c, k, ns, "web").await?) != ["10.42.0.5:true", "10.42.0.6:false"]
    {
        if start.elapsed() > WAIT {
            bail!(
                "slice did not mark web-b not ready: {:?}",
                slices(c, k, ns, "web").await?
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing changed since: the controller must not rewrite what is already right.
    let before = versions(c, k, ns, "web").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = versions(c, k, ns, "web").await?;
    ensure!(
        before == after && before.split(' ').count() == 2,
        "endpoints rewritten without a change: {before} -> {after}"
    );

    // Asking for an IP another service holds: Kubernetes refuses the create; kith (which
    // allocates after the create) reports it as a Warning event with the same words.
    let dup = format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: dup\nspec:\n  clusterIP: {web_ip}\n  ports:\n  - port: 80\n");
    c.apply_yaml(k, Some(ns), &dup).await?;
    let msg = format!("spec.clusterIPs: Invalid value: []string{{\"{web_ip}\"}}: failed to allocate IP {web_ip}: provided IP is already allocated");
    until(
        c,
        k,
        &[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.name=dup",
            "-o",
            "jsonpath={range .items[*]}{.type} {.reason}: {.message}{\"\\n\"}{end}",
        ],
        "the ClusterIPNotAllocated event",
        |s| {
            s.lines()
                .any(|l| l == format!("Warning ClusterIPNotAllocated: {msg}"))
        },
    )
    .await?;
    c.kubectl_ok(k, &["delete", "svc", "dup", "-n", ns]).await?;

    // Deleting the service takes its Endpoints and slices (GC) and releases its IP.
    c.kubectl_ok(k, &["delete", "svc", "web", "-n", ns]).await?;
    until(
        c,
        k,
        &[
            "get",
            "endpoints,endpointslices",
            "-n",
            ns,
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ],
        "web's Endpoints and slices to go",
        |s| s.trim().is_empty(),
    )
    .await?;
    let marker = format!("clusterip-{}", web_ip.to_string().replace('.', "-"));
    until(
        c,
        k,
        &[
            "get",
            "configmaps",
            "-n",
            "kube-system",
            "-l",
            "kith.dev/clusterip",
            "-o",
            "name",
        ],
        "web's IP to be released",
        |s| !s.contains(&marker),
    )
    .await?;
    let again = format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: again\nspec:\n  clusterIP: {web_ip}\n  ports:\n  - port: 80\n");
    c.apply_yaml(k, Some(ns), &again).await?;
    until(
        c,
        k,
        &[
            "get",
            "configmap",
            &marker,
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.data.name}",
        ],
        "the released IP to be taken by again",
        |s| s == "again",
    )
    .await?;
    let ips: BTreeSet<Ipv4Addr> = [
        cluster_ip(c, k, ns, "again").await?,
        cluster_ip(c, k, ns, "db").await?,
    ]
    .into();
    ensure!(ips.len() == 2, "again and db share {ips:?}");
    Ok(())
}
