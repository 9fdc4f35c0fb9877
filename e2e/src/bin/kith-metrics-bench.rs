//! `kith-metrics-bench`: what one Prometheus scrape of a control box costs, as
//! `BENCH {json}` lines (name, value, unit; same format as `kith-bench`).
//!
//! ```text
//!  kith up ◀── create ~1,000 objects (nodes, bound pods, deployments, services, configmaps)
//!     │        wait until the store holds them all (controllers add ReplicaSets, markers)
//!     └──GET /metrics × N (OpenMetrics as Prometheus asks, then text 0.0.4) ─▶ median time,
//!                                                                              bytes
//! ```
//!
//! Usage: `kith-metrics-bench [--objects N] [--scrapes N]`. Environment: `KITH_BIN`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::{stream, StreamExt as _, TryStreamExt as _};
use kith_e2e::Cluster;
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::{json, Value};

const OPENMETRICS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// How long the controllers may take to settle after the creates.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const NAMESPACE: &str = "metrics-bench";

struct Args {
    objects: usize,
    scrapes: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        objects: 1000,
        scrapes: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<usize> {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .parse()
                .with_context(|| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--objects" => a.objects = value()?,
            "--scrapes" => a.scrapes = value()?.max(1),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// The objects to create: (apiVersion, kind, plural, namespaced, object). Their mix
/// follows a small region: a few nodes, pods bound to them, workloads and services.
fn objects(total: usize) -> Vec<(ApiResource, Value)> {
    let res = |group: &str, version: &str, kind: &str, plural: &str| ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    let nodes = (total / 100).max(1);
    let deployments = total / 10;
    let services = total / 10;
    let configmaps = total / 5;
    // Controllers add one ReplicaSet per deployment and one IP marker per service.
    let pods = total.saturating_sub(nodes + 2 * deployments + 2 * services + configmaps);
    let mut out = Vec::with_capacity(total);
    for i in 0..nodes {
        out.push((
            res("", "v1", "Node", "nodes"),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("box-{i}")},
                   "status": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                              "conditions": [{"type": "Ready", "status": "True"}]}}),
        ));
    }
    for i in 0..deployments {
        out.push((
            res("apps", "v1", "Deployment", "deployments"),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": format!("web-{i}")},
                   "spec": {"replicas": 0, "selector": {"matchLabels": {"app": format!("web-{i}")}},
                            "template": {"metadata": {"labels": {"app": format!("web-{i}")}},
                                         "spec": {"containers": [{"name": "web", "image": "busybox"}]}}}}),
        ));
    }
    for i in 0..services {
        out.push((
            res("", "v1", "Service", "services"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("svc-{i}")},
                   "spec": {"ports": [{"port": 80}]}}),
        ));
    }
    for i in 0..configmaps {
        out.push((
            res("", "v1", "ConfigMap", "configmaps"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")},
                   "data": {"k": "v"}}),
        ));
    }
    for i in 0..pods {
        out.push((
            res("", "v1", "Pod", "pods"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("pod-{i}"), "labels": {"app": "bench"}},
                   "spec": {"nodeName": format!("box-{}", i % nodes),
                            "containers": [{"name": "app", "image": "busybox"}, {"name": "sidecar", "image": "busybox"}]}}),
        ));
    }
    out
}

/// Objects in the store, from the `apiserver_storage_objects` samples of one scrape.
fn stored_objects(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("apiserver_storage_objects{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn scrape(client: &kube::Client, accept: Option<&str>) -> Result<(Duration, String)> {
    let mut req = http::Request::get("/metrics");
    if let Some(a) = accept {
        req = req.header(http::header::ACCEPT, a);
    }
    let started = Instant::now();
    let text = client.request_text(req.body(Vec::new())?).await?;
    Ok((started.elapsed(), text))
}

fn bench_line(name: &str, value: f64, unit: &str, extra: Value) {
    let mut line = json!({"name": name, "value": (value * 1000.0).round() / 1000.0, "unit": unit});
    if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        l.extend(e.clone());
    }
    println!("BENCH {line}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let cluster = Cluster::up().await?;
    let client = cluster.client().await?;
    cluster.namespace(NAMESPACE).await?;
    let (_, baseline) = scrape(&client, None).await?;
    let before = stored_objects(&baseline);

    let todo = objects(args.objects);
    stream::iter(todo)
        .map(|(ar, obj)| {
            let client = client.clone();
            async move {
                let api: Api<DynamicObject> = if ar.plural == "nodes" {
                    Api::all_with(client, &ar)
                } else {
                    Api::namespaced_with(client, NAMESPACE, &ar)
                };
                let obj: DynamicObject = serde_json::from_value(obj)?;
                match api.create(&PostParams::default(), &obj).await {
                    // Seen once under load: the create was applied yet reported back as
                    // a conflict of itself. The object is there, which is all this needs.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        eprintln!("create {}: 409 {}", ar.plural, s.message);
                        Ok(())
                    }
                    other => other.map(|_| ()).map_err(anyhow::Error::from),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;

    eprintln!("created {} objects", args.objects);
    // Wait for the controllers' objects; the store count stops moving once they are done.
    let want = before + args.objects as u64;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut stored;
    loop {
        let (_, text) = scrape(&client, None).await?;
        stored = stored_objects(&text);
        if stored >= want || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    eprintln!("store holds {stored} objects (wanted {want})");
    for (format, accept) in [("openmetrics", Some(OPENMETRICS_ACCEPT)), ("text", None)] {
        let mut times = Vec::with_capacity(args.scrapes);
        let mut bytes = 0usize;
        for _ in 0..args.scrapes {
            let (took, text) = scrape(&client, accept).await?;
            times.push(took);
            bytes = text.len();
        }
        times.sort();
        let median = times[times.len() / 2];
        let extra = json!({"format": format, "objects": stored, "scrapes": args.scrapes});
        bench_line(
            &format!("metrics_scrape_ms_{format}"),
            median.as_secs_f64() * 1000.0,
            "ms",
            extra.clone(),
        );
        bench_line(
            &format!("metrics_scrape_bytes_{format}"),
            bytes as f64,
            "bytes",
            extra,
        );
    }
    drop(cluster);
    Ok(())
}
