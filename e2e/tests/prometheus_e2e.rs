//! A real, unmodified Prometheus (Debian's `/usr/bin/prometheus`) pointed at `kith up`:
//! `kubernetes_sd_configs` (roles endpoints, node, pod, service) list and watch kith's API,
//! the standard apiserver job (role endpoints, `default;kubernetes;https`) scrapes
//! `/metrics` with the read-only metrics token, and the series the dashboards and alerts
//! use come back with sane values. Also: `promtool check metrics` on the live exposition,
//! `promtool check rules` on the shipped rules, anonymous → 401, metrics token → 403
//! anywhere but `/metrics` and health.
//!
//! ```text
//!  test ──kube-rs──▶ kith up ◀──list/watch (admin token)── prometheus ──GET /metrics──┐
//!   │                   ▲                                                (metrics token)
//!   └──HTTP /api/v1/targets, /api/v1/query──▶ prometheus ───────────────────────────┘
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod};
use kith_e2e::prometheus::{client_with_token, get_code, metrics_token, Prometheus, PROMETHEUS};
use kith_e2e::Cluster;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const PROMTOOL: &str = "/usr/bin/promtool";
/// Discovery, a 1 s scrape interval and the first evaluation take a few seconds; a loaded
/// CI box may take many more.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(90);
const REPLICAS: i32 = 3;

/// Whether a queried value is sane.
type Check = Box<dyn Fn(f64) -> bool>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The admin bearer token from the cluster's kube-apiserver-style tokens file.
fn admin_token(data_dir: &Path) -> Result<String> {
    let text = std::fs::read_to_string(data_dir.join("pki/tokens.csv"))?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut f = l.split(',');
            let token = f.next()?;
            (f.next()? == "kith-admin").then(|| token.to_string())
        })
        .context("no kith-admin token")
}

async fn promtool(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(PROMTOOL);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawn {PROMTOOL}"))?;
    if let Some(text) = stdin {
        let mut i = child.stdin.take().expect("piped");
        i.write_all(text.as_bytes()).await?;
        drop(i);
    }
    let out = child.wait_with_output().await?;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {}: {}\n{all}", args.join(" "), out.status);
    }
    Ok(all)
}

fn sd(role: &str, url: &str, ca: &Path, admin: &Path) -> String {
    format!(
        "    kubernetes_sd_configs:\n      - role: {role}\n        api_server: {url}\n        tls_config:\n          ca_file: {ca}\n        authorization:\n          credentials_file: {admin}\n",
        ca = ca.display(),
        admin = admin.display()
    )
}

/// How Prometheus finds its targets.
enum Discovery<'a> {
    /// `kubernetes_sd_configs` against kith's API (roles endpoints, node, pod, service).
    Kubernetes,
    /// Debian's Prometheus is built without Kubernetes discovery: the apiserver target is
    /// then the address the test read from Endpoints default/kubernetes (what role
    /// endpoints would have produced).
    Static(&'a str),
}

fn prometheus_config(
    discovery: &Discovery,
    url: &str,
    ca: &Path,
    admin: &Path,
    metrics: &Path,
) -> String {
    let mut y = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    // The apiserver job as Prometheus' example configuration writes it.
    y.push_str("  - job_name: kubernetes-apiservers\n    scheme: https\n");
    match discovery {
        Discovery::Kubernetes => y.push_str(&sd("endpoints", url, ca, admin)),
        Discovery::Static(addr) => {
            y.push_str(&format!(
                "    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
    }
    y.push_str(&format!(
        "    tls_config:\n      ca_file: {}\n    authorization:\n      credentials_file: {}\n",
        ca.display(),
        metrics.display()
    ));
    if let Discovery::Kubernetes = discovery {
        y.push_str("    relabel_configs:\n      - source_labels: [__meta_kubernetes_namespace, __meta_kubernetes_service_name, __meta_kubernetes_endpoint_port_name]\n        action: keep\n        regex: default;kubernetes;https\n");
        for role in ["node", "pod", "service"] {
            y.push_str(&format!("  - job_name: kubernetes-{role}s\n"));
            y.push_str(&sd(role, url, ca, admin));
        }
    }
    y
}

/// Whether this Prometheus build has Kubernetes service discovery (Debian's has not: its
/// source package leaves it out for want of a packaged client-go).
async fn has_kubernetes_sd(dir: &Path, url: &str, ca: &Path, token: &Path) -> Result<bool> {
    let path = dir.join("probe.yml");
    std::fs::write(
        &path,
        format!(
            "scrape_configs:\n  - job_name: probe\n{}",
            sd("node", url, ca, token)
        ),
    )?;
    match promtool(
        &["check", "config", path.to_str().context("utf-8 path")?],
        None,
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(e) if format!("{e:#}").contains("kubernetes_sd_configs not found") => Ok(false),
        Err(e) => Err(e),
    }
}

/// `ip:port` of the port named https of Endpoints default/kubernetes: what Prometheus'
/// role endpoints turns into the apiserver target.
async fn apiserver_endpoint(client: &kube::Client) -> Result<String> {
    let eps: kube::Api<Endpoints> = kube::Api::namespaced(client.clone(), "default");
    let ep = eps.get("kubernetes").await?;
    let subset = ep.subsets.iter().flatten().next().context("no subsets")?;
    let ip = &subset
        .addresses
        .iter()
        .flatten()
        .next()
        .context("no address")?
        .ip;
    let port = subset
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("https"))
        .context("no port named https")?
        .port;
    Ok(format!("{ip}:{port}"))
}

#[tokio::test]
async fn prometheus_discovers_and_scrapes_kith() {
    let cluster = Cluster::up().await.expect("kith up");
    let result = scenario(&cluster).await;
    cluster.check(result);
}

async fn scenario(c: &Cluster) -> Result<()> {
    let client = c.client().await?;
    let ns = c.namespace("prom-e2e").await?;
    let node_name = "prom-e2e-box";

    // A Node as a kubelet would register it: Prometheus' role node needs an address.
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": node_name, "labels": {"kubernetes.io/hostname": node_name}},
            }))?,
        )
        .await?;
    nodes
        .patch_status(
            node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "capacity": {"cpu": "2", "memory": "2Gi", "pods": "20"},
                "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "20"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "nodeInfo": {"kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12", "containerRuntimeVersion": "kith://0.1.0",
                             "kubeletVersion": "v1.33.0-kith", "kubeProxyVersion": "", "machineID": "m", "systemUUID": "s",
                             "bootID": "b", "architecture": "amd64", "operatingSystem": "linux"},
            }})),
        )
        .await?;

    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "web", "image": "busybox",
                                                               "ports": [{"containerPort": 8080, "name": "http"}]}]}}},
            }))?,
        )
        .await?;

    // A pod with an IP, as an agent would report it: role pod needs one to make a target.
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "exporter", "labels": {"app": "exporter"}},
            "spec": {"nodeName": node_name,
                     "containers": [{"name": "exporter", "image": "busybox", "ports": [{"containerPort": 9100, "name": "metrics"}]}]},
        }))?,
    )
    .await?;
    pods.patch_status(
        "exporter",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "exporter", "image": "busybox", "imageID": "", "ready": true,
                                   "restartCount": 2, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}})),
    )
    .await?;

    // Authentication: anonymous → 401; the metrics token reads /metrics and nothing else.
    let data_dir = c.data_dir();
    let metrics = metrics_token(&data_dir).await?;
    let anonymous = client_with_token(c, None).await?;
    assert_eq!(get_code(&anonymous, "/metrics").await?, 401);
    let reader = client_with_token(c, Some(&metrics)).await?;
    assert_eq!(get_code(&reader, "/metrics").await?, 200);
    assert_eq!(get_code(&reader, "/api/v1/namespaces").await?, 403);

    // The live exposition passes promtool's parser and linter.
    let text = c.get_raw("/metrics").await?;
    promtool(&["check", "metrics"], Some(&text))
        .await
        .with_context(|| format!("exposition:\n{text}"))?;

    let scratch = c.scratch();
    let admin_file = scratch.join("admin-token");
    let metrics_file = scratch.join("metrics-token");
    std::fs::write(&admin_file, admin_token(&data_dir)?)?;
    std::fs::write(&metrics_file, &metrics)?;
    let ca = data_dir.join("pki/ca.crt");
    let url = c.server_url();
    // The address role endpoints discovers must be where the API serves.
    let endpoint = apiserver_endpoint(&client).await?;
    assert_eq!(format!("https://{endpoint}"), url);
    let kubernetes_sd = has_kubernetes_sd(&scratch, &url, &ca, &admin_file).await?;
    let discovery = if kubernetes_sd {
        Discovery::Kubernetes
    } else {
        eprintln!(
            "NOTE: {PROMETHEUS} has no kubernetes_sd_configs (Debian builds it without); \
             scraping the apiserver at {endpoint}, read from Endpoints default/kubernetes, \
             and skipping the node/pod/service discovery checks"
        );
        Discovery::Static(&endpoint)
    };
    let config = prometheus_config(&discovery, &url, &ca, &admin_file, &metrics_file);
    let prom = Prometheus::start(&scratch, &config).await?;
    let config_path = scratch.join("prometheus.yml");
    promtool(
        &[
            "check",
            "config",
            config_path.to_str().context("utf-8 path")?,
        ],
        None,
    )
    .await?;

    // 1. Discovery: the apiserver target is up; node, pod and service targets exist.
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    loop {
        let targets = prom.api("/api/v1/targets?state=active").await?;
        let active = targets["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let of_job = |job: &str| -> Vec<Value> {
            active
                .iter()
                .filter(|t| t["labels"]["job"] == job)
                .cloned()
                .collect()
        };
        let apiserver_up = of_job("kubernetes-apiservers")
            .iter()
            .any(|t| t["health"] == "up");
        let sd_ok = |found: bool| found || !kubernetes_sd;
        let node_found = of_job("kubernetes-nodes").iter().any(|t| {
            t["discoveredLabels"]["__meta_kubernetes_node_name"] == node_name
                && t["discoveredLabels"]["__address__"] == "127.0.0.1:10250"
        });
        let pod_found = of_job("kubernetes-pods").iter().any(|t| {
            t["discoveredLabels"]["__meta_kubernetes_pod_name"] == "exporter"
                && t["discoveredLabels"]["__meta_kubernetes_pod_container_port_name"] == "metrics"
        });
        let service_found = of_job("kubernetes-services").iter().any(|t| {
            t["discoveredLabels"]["__meta_kubernetes_service_name"] == "kubernetes"
                && t["discoveredLabels"]["__meta_kubernetes_namespace"] == "default"
        });
        if apiserver_up && sd_ok(node_found) && sd_ok(pod_found) && sd_ok(service_found) {
            break;
        }
        if Instant::now() > deadline {
            let state = json!({"apiserver_up": apiserver_up, "node": node_found, "pod": pod_found,
                               "service": service_found, "targets": active});
            bail!("targets not discovered/up in time: {state:#}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 2. The series, with sane values, as Prometheus scraped them.
    let checks: Vec<(String, Check)> = vec![
        (
            "sum(apiserver_request_total{job=\"kubernetes-apiservers\"})".into(),
            Box::new(|v| v > 0.0),
        ),
        (
            "sum(apiserver_request_total{verb=\"WATCH\",resource=\"pods\"})".into(),
            Box::new(|v| v > 0.0),
        ),
        (
            "sum(apiserver_request_duration_seconds_count{verb=\"LIST\"})".into(),
            Box::new(|v| v > 0.0),
        ),
        (
            "sum(apiserver_registered_watchers)".into(),
            Box::new(|v| v > 0.0),
        ),
        (
            format!("kube_deployment_spec_replicas{{namespace=\"{ns}\",deployment=\"web\"}}"),
            Box::new(|v| v == f64::from(REPLICAS)),
        ),
        (
            format!("kube_replicaset_spec_replicas{{namespace=\"{ns}\"}}"),
            Box::new(|v| v == f64::from(REPLICAS)),
        ),
        (
            format!("count(kube_pod_info{{namespace=\"{ns}\",created_by_kind=\"ReplicaSet\"}})"),
            Box::new(|v| v == f64::from(REPLICAS)),
        ),
        (
            format!(
                "kube_pod_status_phase{{namespace=\"{ns}\",pod=\"exporter\",phase=\"Running\"}}"
            ),
            Box::new(|v| v == 1.0),
        ),
        (
            format!(
                "kube_pod_container_status_restarts_total{{namespace=\"{ns}\",pod=\"exporter\"}}"
            ),
            Box::new(|v| v == 2.0),
        ),
        (
            format!("kube_node_info{{node=\"{node_name}\",kernel_version=\"6.1.0\"}}"),
            Box::new(|v| v == 1.0),
        ),
        (
            format!(
                "kube_node_status_capacity{{node=\"{node_name}\",resource=\"cpu\",unit=\"core\"}}"
            ),
            Box::new(|v| v == 2.0),
        ),
        (
            format!("kube_namespace_status_phase{{namespace=\"{ns}\",phase=\"Active\"}}"),
            Box::new(|v| v == 1.0),
        ),
        (
            "kube_service_info{namespace=\"default\",service=\"kubernetes\"}".into(),
            Box::new(|v| v == 1.0),
        ),
        (
            "apiserver_storage_objects{resource=\"deployments.apps\"}".into(),
            Box::new(|v| v >= 1.0),
        ),
        ("kith_raft_applied_index".into(), Box::new(|v| v > 0.0)),
        ("kith_raft_is_leader".into(), Box::new(|v| v == 1.0)),
        ("kith_raft_members".into(), Box::new(|v| v == 1.0)),
        ("kith_raft_term".into(), Box::new(|v| v >= 1.0)),
        (
            "kith_raft_leader_changes_total".into(),
            Box::new(|v| v >= 1.0),
        ),
        ("kith_raft_apply_lag".into(), Box::new(|v| v >= 0.0)),
        (
            "kith_raft_log_fsync_duration_seconds_count".into(),
            Box::new(|v| v > 0.0),
        ),
        (
            "sum(scheduler_schedule_attempts_total)".into(),
            Box::new(|v| v > 0.0),
        ),
        (
            "scheduler_pending_pods{queue=\"unschedulable\"}".into(),
            Box::new(|v| v >= 0.0),
        ),
        // The process collector every client library has: kith's own cost.
        (
            "process_resident_memory_bytes".into(),
            Box::new(|v| v > 1e6),
        ),
        ("process_cpu_seconds_total".into(), Box::new(|v| v > 0.0)),
        ("process_open_fds".into(), Box::new(|v| v > 3.0)),
        (
            "kith_controller_reconcile_total{controller=\"deployment\"}".into(),
            Box::new(|v| v > 0.0),
        ),
        // client-go's work queue series, as kube-controller-manager's dashboards read them:
        // the Deployment was queued, and the queue has drained since.
        (
            "workqueue_adds_total{name=\"deployment\"}".into(),
            Box::new(|v| v > 0.0),
        ),
        (
            "workqueue_depth{name=\"deployment\"}".into(),
            Box::new(|v| v == 0.0),
        ),
    ];
    for (promql, ok) in &checks {
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        loop {
            let got = prom.query(promql).await?;
            if got.len() == 1 && ok(got[0].1) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{promql}: got {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    drop(prom);
    Ok(())
}

#[tokio::test]
async fn shipped_rules_pass_promtool() {
    let dir = workspace().join("charts/kith-monitoring");
    let rules = dir.join("rules/kith.rules.yaml");
    let out = promtool(
        &["check", "rules", rules.to_str().expect("utf-8 path")],
        None,
    )
    .await
    .expect("promtool check rules");
    assert!(out.contains("SUCCESS"), "{out}");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("dashboards/kith-region.json")).expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().expect("targets");
        assert!(
            targets
                .iter()
                .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())),
            "panel {} has a target without a query",
            p["title"]
        );
    }
}
