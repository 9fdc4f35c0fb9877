//! `kith-agent-bench`: the node agent's and the workload controllers' figures on one box,
//! one `BENCH {json}` line each (format in `kith_e2e::bench`).
//!
//! ```text
//!  image pull ─────── TestRegistry (docker-registry, loopback) ── busybox + 50 MiB random layer
//!                     RegistryImageStore::ensure in this process: pull, verify, unpack
//!  runc baseline ──── Debian runc: `runc run -d` of a busybox bundle, same command
//!  kith up (no agent) + kith agent (its own process, joined with a token, on loopback)
//!                   ┬ idle: VmRSS of the kith agent process, no pods
//!                   ├ pod start: create → phase Running seen on a watch; 50 one by one, 20 at once
//!                   ├ with the 50 running: the agent's /metrics through the API server
//!                   │  (nodes/NAME/proxy/metrics, as Prometheus scrapes it): time, bytes, CPU
//!                   ├ with the 20 running: VmRSS of the agent; RSS, PSS and private memory of
//!                   │  each `kith shim run`
//!                   └ Deployment of 100: create → 100 ready; template change → rolled out
//! ```
//! The agent runs as `kith agent` (not inside `kith up`) so that its memory and CPU are its
//! own, as on every box of a region but the control boxes.
//!
//! Pods run `sleep 3600` from an image already on the box (a warm-up pod pulls it), so
//! pod start measures API write → scheduler → agent → network + shim + container → status
//! write → watch, against runc's create + start of the same rootfs and command (runc sets up
//! no pod network). Everything runs on this machine with temporary directories and is
//! removed at the end, also on failure (the e2e harness cleans the agent's containers,
//! bridge and network namespaces; runc containers are deleted by a guard).
//!
//! Needs root (real containers), `/usr/bin/docker-registry`, `/usr/sbin/runc` and
//! `/bin/busybox` (Debian busybox-static). Usage: `kith-agent-bench [--quick]`
//! (`--quick`: 10 + 5 pods, 20 replicas). Environment: `KITH_BIN` (the kith binary; the
//! shims run it too, so use the release build for memory figures).

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kith_agent::image::testing::{gzip, raw_tar, ImageOptions, RawEntry, TestImage, TestRegistry};
use kith_agent::image::{unpack, ImageStore as _, PullPolicy, RegistryImageStore};
use kith_e2e::agent::{AgentSpec, RemoteAgent};
use kith_e2e::bench::{figure, mib, percentile, round, rss_bytes, Better};
use kith_e2e::{AgentOptions, Cluster, Options};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::Notify;

/// Size of the random (incompressible) layer of the pull figure.
const BIG_LAYER_BYTES: usize = 50 * 1024 * 1024;
/// Pull repetitions, each into a fresh store; the median is reported.
const PULL_ROUNDS: usize = 3;
/// The command of every pod and runc container.
const COMMAND: [&str; 2] = ["sleep", "3600"];
/// How long one pod may take to run before the bench gives up.
const POD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a Deployment may take to become ready or to roll out.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);
/// Idle time before reading memory.
const SETTLE: Duration = Duration::from_secs(5);
const RUNC: &str = "/usr/sbin/runc";
/// What the agent memory figures measure.
const AGENT_PROCESS: &str = "kith agent (its own process; the API server is a separate kith up)";
/// Scrapes of the agent's /metrics per figure.
const SCRAPES: u32 = 20;
/// What Prometheus sends.
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

struct Args {
    sequential: usize,
    burst: usize,
    replicas: i32,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            sequential: 50,
            burst: 20,
            replicas: 100,
        };
        for a in std::env::args().skip(1) {
            match a.as_str() {
                "--quick" => {
                    args.sequential = 10;
                    args.burst = 5;
                    args.replicas = 20;
                }
                "-h" | "--help" => {
                    println!("usage: kith-agent-bench [--quick]");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(args)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse()?;
    if !rustix::process::geteuid().is_root() {
        bail!("kith-agent-bench runs real containers: run it as root");
    }
    eprintln!(
        "kith-agent-bench: {} cpus, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let registry = TestRegistry::start().context("start registry")?;
    registry
        .push_busybox("bench/busybox", "1", ImageOptions::default())
        .await
        .context("push busybox")?;
    let image = registry.image("bench/busybox", "1");

    image_pull(&registry).await?;

    let runc = RuncBaseline::new().context("runc bundle")?;
    let runc_sequential = runc.sequential(args.sequential).await?;
    let runc_burst = runc.burst(args.burst).await?;
    drop(runc);

    let cluster = Cluster::up_with(Options::default())
        .await
        .context("start kith")?;
    let opts = AgentOptions::unique("abench");
    let agent = start_agent(&cluster, &opts).await?;
    let result = on_cluster(
        &args,
        &cluster,
        &agent,
        &opts.node_name,
        &image,
        &runc_sequential,
        &runc_burst,
    )
    .await;
    if result.is_err() {
        eprintln!(
            "kith-agent-bench: kith log:\n{}\nagent log:\n{}",
            cluster.log(),
            agent.log()
        );
    }
    result
}

/// `kith agent` joined to `cluster` with a token from `kith token create`, on loopback.
async fn start_agent(cluster: &Cluster, opts: &AgentOptions) -> Result<RemoteAgent> {
    let token = kith_e2e::kith_token(&cluster.data_dir(), &[])?;
    let node_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let servers = [cluster.server_url()];
    let dir = cluster.scratch().join("agent");
    let spec = AgentSpec {
        servers: &servers,
        token: &token,
        dir: &dir,
        opts,
        node_ip: Some("127.0.0.1"),
        node_port,
        insecure_registries: &[],
        netns: None,
    };
    RemoteAgent::start(&spec, &cluster.scratch().join("agent.log"))
}

async fn on_cluster(
    args: &Args,
    cluster: &Cluster,
    agent: &RemoteAgent,
    node: &str,
    image: &str,
    runc_sequential: &[f64],
    runc_burst: &[f64],
) -> Result<()> {
    let client = cluster.client().await?;
    wait_node_ready(&client).await?;
    let pid = agent.pid().context("the agent exited")?;

    tokio::time::sleep(SETTLE).await;
    let mut f = figure("agent_rss_no_pods_mb", mib(rss_bytes(pid)?), "MiB");
    f.better = Better::Lower;
    f.extra.insert("process".into(), json!(AGENT_PROCESS));
    f.extra.insert("settle_s".into(), json!(SETTLE.as_secs()));
    f.print();

    let ns = cluster.namespace("agent-bench").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let running = RunningPods::watch(pods.clone());

    // The image must be on the box: pod start is measured without the pull.
    let warm = Instant::now();
    pods.create(&PostParams::default(), &pod("warm-up", image))
        .await?;
    running.wait(&["warm-up".to_string()], POD_TIMEOUT).await?;
    eprintln!(
        "kith-agent-bench: warm-up pod (pulls the image) ran after {:?}",
        warm.elapsed()
    );
    delete_all_pods(&pods).await?;

    // One by one.
    let mut sequential = Vec::new();
    for i in 0..args.sequential {
        let name = format!("seq-{i}");
        let t0 = Instant::now();
        pods.create(&PostParams::default(), &pod(&name, image))
            .await?;
        let at = running
            .wait(std::slice::from_ref(&name), POD_TIMEOUT)
            .await?;
        sequential.push(ms(at[0] - t0));
    }
    report_start(
        "pod_start_sequential",
        &mut sequential,
        runc_sequential,
        "one by one, each created after the previous one ran",
    );
    scrape_cost(&client, node, pid, args.sequential).await?;
    delete_all_pods(&pods).await?;

    // All at once.
    let names: Vec<String> = (0..args.burst).map(|i| format!("burst-{i}")).collect();
    let t0 = Instant::now();
    let creates = names.iter().map(|name| {
        let pods = pods.clone();
        let pod = pod(name, image);
        async move { pods.create(&PostParams::default(), &pod).await }
    });
    for r in futures::future::join_all(creates).await {
        r?;
    }
    let at = running.wait(&names, POD_TIMEOUT).await?;
    let mut burst: Vec<f64> = at.iter().map(|a| ms(*a - t0)).collect();
    let all_ms = burst.iter().copied().fold(0.0, f64::max);
    report_start(
        "pod_start_burst",
        &mut burst,
        runc_burst,
        "all created at once; latency from the common start",
    );
    let mut f = figure("pod_start_burst_all_running_ms", all_ms, "ms");
    f.better = Better::Lower;
    f.extra.insert("pods".into(), json!(args.burst));
    f.print();

    tokio::time::sleep(SETTLE).await;
    let mut f = figure("agent_rss_with_pods_mb", mib(rss_bytes(pid)?), "MiB");
    f.better = Better::Lower;
    f.extra.insert("pods".into(), json!(args.burst));
    f.extra.insert("process".into(), json!(AGENT_PROCESS));
    f.print();
    shim_memory(&cluster.scratch().join("agent"), args.burst)?;
    delete_all_pods(&pods).await?;

    deployment(args, &client, &ns, image).await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report_start(name: &str, kith: &mut [f64], runc: &[f64], how: &str) {
    kith.sort_by(f64::total_cmp);
    let mut runc = runc.to_vec();
    runc.sort_by(f64::total_cmp);
    for (q, p) in [("p50", 0.5), ("p99", 0.99)] {
        let full = format!("{name}_{q}_ms");
        let mut f = figure(&full, percentile(kith, p), "ms");
        f.better = Better::Lower;
        f.baseline = Some(("runc run -d", percentile(&runc, p)));
        f.extra.insert("pods".into(), json!(kith.len()));
        f.extra.insert("how".into(), json!(how));
        f.extra.insert(
            "measured".into(),
            json!("kith: create request → phase Running on a watch; runc: `runc run -d` wall time"),
        );
        f.print();
    }
}

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            // sleep as pid 1 ignores SIGTERM: do not wait out a long grace period.
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "command": COMMAND}],
        },
    }))
    .expect("a valid pod")
}

async fn wait_node_ready(client: &kube::Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = nodes.list(&ListParams::default()).await?;
        let ready = list.items.iter().any(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no Ready node after 60s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When each pod of a namespace was first seen Running, from one watch.
struct RunningPods {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningPods {
    fn watch(pods: Api<Pod>) -> RunningPods {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn({
            let seen = seen.clone();
            let changed = changed.clone();
            async move {
                let mut events = std::pin::pin!(watcher(pods, watcher::Config::default()));
                while let Some(event) = events.next().await {
                    let pod = match event {
                        Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                        Ok(_) => continue,
                        Err(e) => {
                            eprintln!("kith-agent-bench: pod watch: {e}");
                            continue;
                        }
                    };
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                    if phase == Some("Running") {
                        let name = pod.metadata.name.unwrap_or_default();
                        seen.lock()
                            .expect("not poisoned")
                            .entry(name)
                            .or_insert_with(Instant::now);
                        changed.notify_waiters();
                    }
                }
            }
        });
        RunningPods {
            seen,
            changed,
            task,
        }
    }

    /// The instants at which `names` were first seen Running, in order.
    async fn wait(&self, names: &[String], timeout: Duration) -> Result<Vec<Instant>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let seen = self.seen.lock().expect("not poisoned");
                let found: Vec<Instant> =
                    names.iter().filter_map(|n| seen.get(n).copied()).collect();
                if found.len() == names.len() {
                    return Ok(found);
                }
            }
            // Also wake now and then, in case a notification raced the check.
            if tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                notified,
            )
            .await
            .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                bail!("pods {names:?} not all Running within {timeout:?}");
            }
        }
    }
}

impl Drop for RunningPods {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deletes every pod of the namespace and waits until they are gone (the next phase starts
/// on an empty box).
async fn delete_all_pods(pods: &Api<Pod>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        // The garbage collector and the agent write these pods too: a conflict or a pod
        // already gone only means another round.
        match pods
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let left = pods.list(&ListParams::default()).await?.items.len();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} pods still there 180s after delete");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The agent's `/metrics` with `pods` pods running, read as Prometheus does, through the
/// API server's `nodes/NAME/proxy/metrics`: median time and bytes of one scrape, and the
/// agent's CPU per scrape (its CPU over the scrapes, less its own rate over as long a
/// quiet interval just before).
async fn scrape_cost(client: &kube::Client, node: &str, pid: u32, pods: usize) -> Result<()> {
    let path = format!("/api/v1/nodes/{node}/proxy/metrics");
    let scrape = || async {
        let req = http::Request::get(&path)
            .header(http::header::ACCEPT, PROMETHEUS_ACCEPT)
            .body(Vec::new())?;
        anyhow::Ok(client.request_text(req).await?)
    };
    // The first scrape also warms the connection.
    let text = scrape().await?;
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let quiet = Instant::now();
    let cpu0 = kith_e2e::bench::cpu_time(pid)?;
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..SCRAPES {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let background = kith_e2e::bench::cpu_time(pid)? - cpu0;
    let idle_for = quiet.elapsed();
    let cpu1 = kith_e2e::bench::cpu_time(pid)?;
    let busy = Instant::now();
    for _ in 0..SCRAPES {
        let t0 = Instant::now();
        bytes = scrape().await?.len();
        times.push(ms(t0.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let used = kith_e2e::bench::cpu_time(pid)? - cpu1;
    let background_rate = background.as_secs_f64() / idle_for.as_secs_f64();
    let cpu_ms = ((used.as_secs_f64() - background_rate * busy.elapsed().as_secs_f64()).max(0.0)
        * 1000.0)
        / SCRAPES as f64;
    times.sort_by(f64::total_cmp);
    let mut f = figure("agent_metrics_scrape_ms", percentile(&times, 0.5), "ms");
    f.better = Better::Lower;
    f.extra.insert("pods".into(), json!(pods));
    f.extra.insert("bytes".into(), json!(bytes));
    f.extra.insert("series".into(), json!(series));
    f.extra.insert("scrapes".into(), json!(SCRAPES));
    f.extra
        .insert("p99_ms".into(), json!(round(percentile(&times, 0.99))));
    f.extra.insert(
        "path".into(),
        json!("GET /api/v1/nodes/NAME/proxy/metrics (API server → agent's node port, OpenMetrics)"),
    );
    f.print();
    let mut f = figure("agent_metrics_scrape_cpu_ms", cpu_ms, "ms");
    f.better = Better::Lower;
    f.extra.insert("pods".into(), json!(pods));
    f.extra.insert(
        "note".into(),
        json!("the agent's CPU per scrape, its background rate taken out"),
    );
    f.print();
    Ok(())
}

/// Memory of every `kith shim run` of this cluster, per container: RSS (shared code pages
/// counted in full, as `ps` shows), and from smaps_rollup PSS (shared pages split between
/// the processes that map them) and private memory (what one more container adds).
fn shim_memory(data_dir: &Path, pods: usize) -> Result<()> {
    let prefix = data_dir.as_os_str().as_encoded_bytes();
    let (mut rss, mut pss, mut private) = (Vec::new(), Vec::new(), Vec::new());
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let is_process = entry
            .file_name()
            .to_str()
            .is_some_and(|s| s.parse::<u32>().is_ok());
        if !is_process {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.get(1) == Some(&&b"shim"[..])
            && args.get(2) == Some(&&b"run"[..])
            && args.get(3).is_some_and(|dir| dir.starts_with(prefix));
        if !is_shim {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(entry.path().join("smaps_rollup")) else {
            continue;
        };
        let kib = |key: &str| -> f64 {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        rss.push(kib("Rss:"));
        pss.push(kib("Pss:"));
        private.push(kib("Private_Clean:") + kib("Private_Dirty:"));
    }
    if rss.is_empty() {
        bail!(
            "no `kith shim run` processes found under {}",
            data_dir.display()
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let binary = kith_e2e::kith_bin().display().to_string();
    for (name, values, note) in [
        (
            "kith_shim_rss_per_container_mb",
            &rss,
            "RSS of `kith shim run` (the kith binary): its shared code pages counted in full",
        ),
        (
            "kith_shim_pss_per_container_mb",
            &pss,
            "PSS: shared pages (the binary's code) divided among the shims that map them",
        ),
        (
            "kith_shim_private_per_container_mb",
            &private,
            "private memory (Private_Clean + Private_Dirty): what one more container costs",
        ),
    ] {
        let mut f = figure(name, mean(values), "MiB");
        f.better = Better::Lower;
        f.extra.insert("shims".into(), json!(values.len()));
        f.extra.insert("pods".into(), json!(pods));
        f.extra.insert("max_mb".into(), json!(round(max(values))));
        f.extra.insert("binary".into(), json!(binary));
        f.extra.insert("note".into(), json!(note));
        f.print();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Deployment: create → all ready, then a rolling update.

async fn deployment(args: &Args, client: &kube::Client, ns: &str, image: &str) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deploy: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "bench"},
        "spec": {
            "replicas": args.replicas,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": image, "command": COMMAND}],
                },
            },
        },
    }))?;
    let t0 = Instant::now();
    api.create(&PostParams::default(), &deploy).await?;
    let created = wait_rolled_out(&api, args.replicas).await?;
    let mut f = figure("deployment_create_to_ready_s", created.as_secs_f64(), "s");
    f.better = Better::Lower;
    f.extra.insert("replicas".into(), json!(args.replicas));
    f.extra.insert(
        "measured".into(),
        json!("create → readyReplicas = updatedReplicas = replicas"),
    );
    f.print();
    eprintln!(
        "kith-agent-bench: deployment ready after {:?}",
        t0.elapsed()
    );

    // A template change (an environment variable) replaces every pod, 25% surge/unavailable.
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "main", "env": [{"name": "ROLL", "value": "2"}]}
    ]}}}});
    let t1 = Instant::now();
    api.patch("bench", &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    let rolled = wait_rolled_out(&api, args.replicas).await?;
    let mut f = figure("deployment_rolling_update_s", rolled.as_secs_f64(), "s");
    f.better = Better::Lower;
    f.extra.insert("replicas".into(), json!(args.replicas));
    f.extra.insert(
        "measured".into(),
        json!("template patch → all replicas updated and ready, old pods gone (default 25% surge/unavailable)"),
    );
    f.print();
    eprintln!("kith-agent-bench: rolled out after {:?}", t1.elapsed());

    api.delete("bench", &DeleteParams::foreground()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    delete_all_pods(&pods).await
}

/// Waits until the Deployment's controller saw its latest generation and every replica is
/// updated, ready and the only one left; returns how long since the call.
async fn wait_rolled_out(api: &Api<Deployment>, replicas: i32) -> Result<Duration> {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let d = api.get_status("bench").await?;
        let generation = d.metadata.generation.unwrap_or(0);
        if let Some(s) = &d.status {
            last = format!(
                "observedGeneration {:?}/{generation}, replicas {:?}, updated {:?}, ready {:?}, available {:?}",
                s.observed_generation, s.replicas, s.updated_replicas, s.ready_replicas, s.available_replicas
            );
            if s.observed_generation.unwrap_or(0) >= generation
                && s.replicas == Some(replicas)
                && s.updated_replicas == Some(replicas)
                && s.ready_replicas == Some(replicas)
            {
                return Ok(t0.elapsed());
            }
        }
        if t0.elapsed() > ROLLOUT_TIMEOUT {
            bail!("deployment not rolled out within {ROLLOUT_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Image pull + unpack

/// Pulls busybox + one 50 MiB incompressible layer into a fresh store, `PULL_ROUNDS` times.
async fn image_pull(registry: &TestRegistry) -> Result<()> {
    let big = gzip(&raw_tar(&[RawEntry::file(
        "data/big.bin",
        random_bytes(BIG_LAYER_BYTES),
    )]));
    let compressed: usize = big.len();
    let image = TestImage::busybox(ImageOptions::default())?.with_layer(big);
    let total: usize = image.layers.iter().map(Vec::len).sum();
    registry.push("bench/big", "1", &image).await?;
    let reference = registry.image("bench/big", "1");
    let mut secs = Vec::new();
    for _ in 0..PULL_ROUNDS {
        let dir = tempfile::Builder::new()
            .prefix("kith-agent-bench-images-")
            .tempdir()?;
        let store = RegistryImageStore::open(dir.path(), Vec::new())?;
        let t0 = Instant::now();
        let pulled = store
            .ensure(&reference, PullPolicy::Always, &[])
            .await
            .context("pull the 50 MiB image")?;
        secs.push(t0.elapsed().as_secs_f64());
        let big_file = pulled.rootfs.join("data/big.bin");
        let len = std::fs::metadata(&big_file)
            .with_context(|| format!("{} after the pull", big_file.display()))?
            .len();
        if len != BIG_LAYER_BYTES as u64 {
            bail!("unpacked {len} bytes, want {BIG_LAYER_BYTES}");
        }
    }
    secs.sort_by(f64::total_cmp);
    let mut f = figure("image_pull_unpack_50mb_s", percentile(&secs, 0.5), "s");
    f.better = Better::Lower;
    f.extra.insert("compressed_bytes".into(), json!(total));
    f.extra
        .insert("big_layer_gzip_bytes".into(), json!(compressed));
    f.extra.insert(
        "rounds_s".into(),
        json!(secs.iter().map(|s| round(*s)).collect::<Vec<_>>()),
    );
    f.extra.insert(
        "measured".into(),
        json!("RegistryImageStore::ensure (the agent's pull: manifest, blobs, digest check, unpack) from a loopback docker-registry into an empty store; median"),
    );
    f.print();
    Ok(())
}

/// Incompressible bytes (xorshift64*): gzip must not shrink the layer.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

// ---------------------------------------------------------------------------------------
// runc baseline

/// A busybox bundle for Debian's runc with its own state root; deletes every container it
/// started and its directories on drop.
struct RuncBaseline {
    dir: tempfile::TempDir,
    started: Mutex<Vec<String>>,
    prefix: String,
}

impl RuncBaseline {
    fn new() -> Result<RuncBaseline> {
        let dir = tempfile::Builder::new()
            .prefix("kith-agent-bench-runc-")
            .tempdir()?;
        let rootfs = dir.path().join("bundle/rootfs");
        std::fs::create_dir_all(&rootfs)?;
        std::fs::create_dir_all(dir.path().join("state"))?;
        for layer in TestImage::busybox(ImageOptions::default())?.layers {
            let tar = unpack::open_layer(std::io::Cursor::new(layer))?;
            unpack::apply_layer(&rootfs, tar)?;
        }
        let out = std::process::Command::new(RUNC)
            .arg("spec")
            .current_dir(dir.path().join("bundle"))
            .output()
            .with_context(|| format!("{RUNC} spec (Debian runc)"))?;
        if !out.status.success() {
            bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
        }
        let path = dir.path().join("bundle/config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(COMMAND);
        // The rootfs stays read-only (runc spec's default), so containers can share it.
        std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
        Ok(RuncBaseline {
            dir,
            started: Mutex::new(Vec::new()),
            prefix: format!("kab{}", std::process::id()),
        })
    }

    /// Wall time of one `runc run -d` (create + start, detached), in milliseconds.
    async fn run(&self, n: usize) -> Result<f64> {
        let id = format!("{}-{n}", self.prefix);
        self.started.lock().expect("not poisoned").push(id.clone());
        let t0 = Instant::now();
        let out = tokio::process::Command::new(RUNC)
            .arg("--root")
            .arg(self.dir.path().join("state"))
            .args(["run", "-d", "--bundle"])
            .arg(self.dir.path().join("bundle"))
            .arg(&id)
            .stdin(Stdio::null())
            // The container inherits these: a pipe would stay open as long as it runs.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        let took = ms(t0.elapsed());
        if !out.success() {
            bail!("runc run -d {id}: {out}");
        }
        Ok(took)
    }

    async fn sequential(&self, count: usize) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for n in 0..count {
            out.push(self.run(n).await?);
        }
        self.delete_all();
        Ok(out)
    }

    async fn burst(&self, count: usize) -> Result<Vec<f64>> {
        let runs = (0..count).map(|n| self.run(1000 + n));
        let out = futures::future::join_all(runs)
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>();
        self.delete_all();
        out
    }

    fn delete_all(&self) {
        let ids = std::mem::take(&mut *self.started.lock().expect("not poisoned"));
        for id in ids {
            let _ = std::process::Command::new(RUNC)
                .arg("--root")
                .arg(self.dir.path().join("state"))
                .args(["delete", "-f", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for RuncBaseline {
    fn drop(&mut self) {
        self.delete_all();
    }
}
