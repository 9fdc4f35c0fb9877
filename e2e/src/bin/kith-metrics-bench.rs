//! `kith-metrics-bench`: what one Prometheus scrape of a control box costs, as
//! `BENCH {json}` lines (name, value, unit; same format as `kith-bench`).
//!
//! ```text
//!  kith up ◀── create ~1,000 objects (nodes, bound pods, deployments, services, configmaps)
//!     │        wait until the store holds them all (controllers add ReplicaSets, markers)
//!     └──GET /metrics × N (OpenMetrics as Prometheus asks, then text 0.0.4) ─▶ median time,
//!                          bytes, the box's CPU per scrape and its share of one core at
//!                          Prometheus' default 15 s interval
//!  a fresh kith up with its agent, nothing to do
//!     ├── no requests for --idle-secs ─▶ CPU % of the box (its own sampling included)
//!     └── GET /metrics × 100 back to back ─▶ the box's CPU per scrape
//! ```
//! CPU is the `kith` process's user + system time from `/proc/PID/stat` (10 ms grain).
//!
//! Usage: `kith-metrics-bench [--objects N] [--scrapes N] [--idle-secs N]`. Environment:
//! `KITH_BIN`. The idle phase runs an agent, so it needs root like `kith up` does.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::{stream, StreamExt as _, TryStreamExt as _};
use kith_e2e::bench::{cpu_time, figure, kith_pid};
use kith_e2e::{AgentOptions, Cluster, Options};
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
    idle_secs: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        objects: 1000,
        scrapes: 20,
        idle_secs: 30,
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
            "--idle-secs" => a.idle_secs = value()?.max(1),
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

/// A `BENCH` line with extra keys.
fn bench_line(name: &str, value: f64, unit: &str, extra: Value) {
    let mut f = figure(name, value, unit);
    if let Some(e) = extra.as_object() {
        f.extra = e.clone();
    }
    f.print();
}

/// Prometheus' default scrape interval.
const PROMETHEUS_INTERVAL: Duration = Duration::from_secs(15);
/// Back-to-back scrapes for the CPU-per-scrape figure (many, for the 10 ms grain).
const CPU_SCRAPES: u32 = 100;

/// How long the background CPU rate is measured before the scrapes.
const BACKGROUND_WINDOW: Duration = Duration::from_secs(10);

/// CPU seconds per second the process uses over `window`.
async fn cpu_rate(pid: u32, window: Duration) -> Result<f64> {
    let cpu0 = cpu_time(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    Ok((cpu_time(pid)? - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64())
}

/// The idle box: its CPU with nothing to do, and the CPU one scrape costs it.
async fn idle_box(idle: Duration) -> Result<()> {
    let cluster = Cluster::up_with(Options {
        agent: Some(AgentOptions::unique("mbench")),
        ..Options::default()
    })
    .await?;
    let client = cluster.client().await?;
    let pid = kith_pid(&cluster.data_dir())?;
    // Let start-up work (the first node status, controllers' first passes) finish.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let idle_rate = cpu_rate(pid, idle).await?;
    let idle_percent = idle_rate * 100.0;
    bench_line(
        "box_idle_cpu_percent",
        idle_percent,
        "%",
        json!({"secs": idle.as_secs(), "agent": true}),
    );

    let cpu0 = cpu_time(pid)?;
    let t0 = Instant::now();
    let mut bytes = 0;
    for _ in 0..CPU_SCRAPES {
        bytes = scrape(&client, Some(OPENMETRICS_ACCEPT)).await?.1.len();
    }
    let elapsed = t0.elapsed();
    // The idle share of the window is not the scrapes' doing.
    let spent =
        (cpu_time(pid)? - cpu0).as_secs_f64() - idle_percent / 100.0 * elapsed.as_secs_f64();
    let per_scrape_ms = (spent.max(0.0) * 1000.0) / f64::from(CPU_SCRAPES);
    let extra = json!({"scrapes": CPU_SCRAPES, "bytes": bytes, "agent": true});
    bench_line("metrics_scrape_cpu_ms_idle_box", per_scrape_ms, "ms", extra);
    drop(cluster);
    Ok(())
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
    let pid = kith_pid(&cluster.data_dir())?;
    // The box keeps working in the background (controllers, node lifecycle of the
    // synthetic nodes): measure that rate first and take it out of the scrapes' CPU.
    let background = cpu_rate(pid, BACKGROUND_WINDOW).await?;
    for (format, accept) in [("openmetrics", Some(OPENMETRICS_ACCEPT)), ("text", None)] {
        let mut times = Vec::with_capacity(args.scrapes);
        let mut bytes = 0usize;
        let cpu0 = cpu_time(pid)?;
        let t0 = Instant::now();
        for _ in 0..args.scrapes {
            let (took, text) = scrape(&client, accept).await?;
            times.push(took);
            bytes = text.len();
        }
        let spent = (cpu_time(pid)? - cpu0).as_secs_f64() - background * t0.elapsed().as_secs_f64();
        let cpu_ms = spent.max(0.0) * 1000.0 / args.scrapes as f64;
        times.sort();
        let median = times[times.len() / 2];
        let extra = json!({"format": format, "objects": stored, "scrapes": args.scrapes,
                           "background_cpu_percent": (background * 10_000.0).round() / 100.0});
        bench_line(
            &format!("metrics_scrape_cpu_ms_{format}"),
            cpu_ms,
            "ms",
            extra.clone(),
        );
        bench_line(
            &format!("metrics_overhead_percent_at_15s_{format}"),
            cpu_ms / PROMETHEUS_INTERVAL.as_secs_f64() / 1000.0 * 100.0,
            "%",
            extra.clone(),
        );
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
    idle_box(Duration::from_secs(args.idle_secs as u64)).await
}
