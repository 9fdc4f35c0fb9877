//! `kith-bench`: the project's performance figures, one `BENCH {json}` line each.
//!
//! ```text
//!  binary size ─────────── stat target/release/kith
//!  create throughput ───┬─ kith: 64 tasks ── kube::Client (shared) ── HTTPS POST ConfigMap (1 KiB)
//!                       └─ etcd 3.4: 64 tasks ── one HTTP/1.1 connection each ── POST /v3/kv/put
//!  idle memory ──────────── fresh kith: create 10k ConfigMaps, settle, VmRSS of the process
//!  watch fan-out ────────── same kith: 1,000 watches established, one create, time until all saw it
//! ```
//!
//! Every server runs on 127.0.0.1 with its own temporary data directory and stops when the
//! bench ends. Failed requests are counted by HTTP status (or by transport error) and printed
//! in the `errors` key; throughput and latencies count successful requests only. Run it
//! through `scripts/bench.sh`, which installs etcd and builds the binaries.
//!
//! Usage: `kith-bench [--quick] [--secs N] [--clients N] [--objects N] [--watchers N]
//! [--no-etcd]`. Environment: `KITH_BIN` (the kith binary), `KITH_ETCD` (default
//! `/usr/bin/etcd`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kith_e2e::bench::{
    config_map, cpu_time, etcd_writers, figure, kith_pid, kith_writers, kube_error_kind, mib,
    round, rss_bytes, run_load, Better, Figure, Limit, LoadResult, PAYLOAD_BYTES,
};
use kith_e2e::etcd::{self, etcd_bin};
use kith_e2e::{kith_bin, Cluster};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Map};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Semaphore};

/// How long all watchers together may take to be established.
const WATCH_SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one fan-out round may take before the missing watchers count as errors.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Writes (one per round) in the fan-out figure; the median round is reported.
const FANOUT_ROUNDS: usize = 3;

struct Args {
    quick: bool,
    /// Length of a measured throughput phase.
    secs: u64,
    clients: usize,
    objects: u64,
    watchers: usize,
    etcd: bool,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            quick: false,
            secs: 20,
            clients: 64,
            objects: 10_000,
            watchers: 1_000,
            etcd: true,
        };
        let mut secs = None;
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut value = |name: &str| -> Result<u64> {
                let v = it.next().with_context(|| format!("{name} needs a value"))?;
                v.parse()
                    .with_context(|| format!("{name} {v}: not a number"))
            };
            match a.as_str() {
                "--quick" => args.quick = true,
                "--secs" => secs = Some(value("--secs")?),
                "--clients" => args.clients = value("--clients")? as usize,
                "--objects" => args.objects = value("--objects")?,
                "--watchers" => args.watchers = value("--watchers")? as usize,
                "--no-etcd" => args.etcd = false,
                "-h" | "--help" => {
                    println!(
                        "usage: kith-bench [--quick] [--secs N] [--clients N] [--objects N] \
                         [--watchers N] [--no-etcd]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        args.secs = secs.unwrap_or(if args.quick { 5 } else { 20 });
        if args.secs == 0 || args.clients == 0 || args.watchers == 0 {
            bail!("--secs, --clients and --watchers must be positive");
        }
        Ok(args)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs(if self.quick { 1 } else { 2 })
    }

    /// How long kith sits idle before its memory is read.
    fn settle(&self) -> Duration {
        Duration::from_secs(if self.quick { 2 } else { 5 })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse()?;
    // Other work on the machine skews every figure; say how busy it was.
    eprintln!(
        "kith-bench: {} cpus, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let payload: Arc<str> = "x".repeat(PAYLOAD_BYTES).into();

    binary_size()?;

    let kith = create_phase_kith(&args, &payload).await?;
    let etcd = if args.etcd {
        match etcd_bin() {
            Some(bin) => Some(create_phase_etcd(&args, &payload, &bin).await?),
            None => {
                eprintln!("kith-bench: no etcd binary (set KITH_ETCD or install etcd-server); no baseline");
                None
            }
        }
    } else {
        None
    };
    report_create(&kith, etcd.as_ref());

    memory_and_fanout(&args, &payload).await
}

// ---------------------------------------------------------------------------------------
// Output

fn binary_size() -> Result<()> {
    let bin = kith_bin();
    let len = std::fs::metadata(&bin)
        .with_context(|| format!("no kith binary at {}", bin.display()))?
        .len();
    let mut f = figure("kith_binary_size_mb", mib(len), "MiB");
    f.better = Better::Lower;
    f.extra.insert("bytes".into(), json!(len));
    f.print();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Figure 1: create throughput and latency

async fn create_phase_kith(args: &Args, payload: &Arc<str>) -> Result<LoadResult> {
    let cluster = Cluster::up().await.context("start kith")?;
    let ns = cluster.namespace("bench-create").await?;
    let client = cluster.client().await?;
    eprintln!(
        "kith-bench: kith create load: {} clients, {:?} warmup + {}s",
        args.clients,
        args.warmup(),
        args.secs
    );
    let writers = kith_writers(
        std::slice::from_ref(&client),
        &ns,
        "cm",
        args.clients,
        payload,
    );
    let cpu = CpuUse::start(kith_pid(&cluster.data_dir())?)?;
    let mut result = run_load(
        writers,
        Limit::Time {
            warmup: args.warmup(),
            measure: Duration::from_secs(args.secs),
        },
    )
    .await;
    (result.server_cores, result.client_cores) = cpu.cores()?;
    print_errors_hint("kith", &result, &cluster.log_path());
    Ok(result)
}

fn print_errors_hint(who: &str, r: &LoadResult, log: &Path) {
    eprintln!(
        "kith-bench: {who}: {} ok, {} failed {:?} (log: {})",
        r.ok(),
        r.failed(),
        r.errors,
        log.display()
    );
}

fn report_create(kith: &LoadResult, etcd: Option<&LoadResult>) {
    let baseline = |v: f64| etcd.map(|_| ("etcd-3.4-v3-json-gateway", v));
    let errors = |r: &LoadResult| json!(r.errors);
    let mut extra = Map::new();
    let cores = |r: &LoadResult| json!({"server": round(r.server_cores), "bench_client": round(r.client_cores)});
    extra.insert("ok".into(), json!(kith.ok()));
    extra.insert("errors".into(), errors(kith));
    extra.insert("cpu_cores".into(), cores(kith));
    if let Some(e) = etcd {
        extra.insert("baseline_ok".into(), json!(e.ok()));
        extra.insert("baseline_errors".into(), errors(e));
        extra.insert("baseline_cpu_cores".into(), cores(e));
    }
    Figure {
        name: "kith_create_throughput",
        value: kith.throughput(),
        unit: "creates/s",
        baseline: baseline(etcd.map_or(0.0, LoadResult::throughput)),
        better: Better::Higher,
        extra,
    }
    .print();
    for (name, p) in [("kith_create_p50_ms", 0.50), ("kith_create_p99_ms", 0.99)] {
        let mut extra = Map::new();
        extra.insert("errors".into(), errors(kith));
        Figure {
            name,
            value: kith.percentile_ms(p),
            unit: "ms",
            baseline: baseline(etcd.map_or(0.0, |e| e.percentile_ms(p))),
            better: Better::Lower,
            extra,
        }
        .print();
    }
}

// ---------------------------------------------------------------------------------------
// The etcd baseline

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A one-member etcd with its own data directory; killed on drop.
struct Etcd {
    _dir: tempfile::TempDir,
    child: Child,
    client_url: String,
    log: PathBuf,
}

impl Etcd {
    async fn start(bin: &Path) -> Result<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix("kith-bench-etcd-")
            .tempdir()?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = dir.path().join("etcd.log");
        let out = std::fs::File::create(&log)?;
        // Defaults otherwise: the WAL is fsynced on every commit, as kith's Raft log is.
        let child = Command::new(bin)
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=bench={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut etcd = Etcd {
            _dir: dir,
            child,
            client_url,
            log,
        };
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "etcd exited ({status}); log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(true) = etcd::health(&self.client_url).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd not healthy within 30 s; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

async fn create_phase_etcd(args: &Args, payload: &Arc<str>, bin: &Path) -> Result<LoadResult> {
    let etcd = Etcd::start(bin).await?;
    eprintln!(
        "kith-bench: etcd put load: {} clients, {:?} warmup + {}s",
        args.clients,
        args.warmup(),
        args.secs
    );
    let writers = etcd_writers(
        std::slice::from_ref(&etcd.client_url),
        args.clients,
        payload,
    );
    let cpu = CpuUse::start(etcd.child.id().context("etcd exited")?)?;
    let mut result = run_load(
        writers,
        Limit::Time {
            warmup: args.warmup(),
            measure: Duration::from_secs(args.secs),
        },
    )
    .await;
    (result.server_cores, result.client_cores) = cpu.cores()?;
    print_errors_hint("etcd", &result, &etcd.log);
    etcd.stop().await;
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// Figures 2 and 3: idle memory with 10k objects, watch fan-out

/// Average CPU cores used by a server and by this process since `start`.
struct CpuUse {
    pid: u32,
    wall: Instant,
    server: Duration,
    client: Duration,
}

impl CpuUse {
    fn start(pid: u32) -> Result<CpuUse> {
        Ok(CpuUse {
            server: cpu_time(pid)?,
            client: cpu_time(std::process::id())?,
            wall: Instant::now(),
            pid,
        })
    }

    fn cores(&self) -> Result<(f64, f64)> {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let server = (cpu_time(self.pid)? - self.server).as_secs_f64() / wall;
        let client = (cpu_time(std::process::id())? - self.client).as_secs_f64() / wall;
        Ok((server, client))
    }
}

async fn memory_and_fanout(args: &Args, payload: &Arc<str>) -> Result<()> {
    let cluster = Cluster::up().await.context("start kith")?;
    let pid = kith_pid(&cluster.data_dir())?;
    let client = cluster.client().await?;

    tokio::time::sleep(args.settle()).await;
    let empty_rss = rss_bytes(pid)?;
    let mut f = figure("kith_idle_rss_empty_mb", mib(empty_rss), "MiB");
    f.better = Better::Lower;
    f.print();

    let ns = cluster.namespace("bench-objects").await?;
    eprintln!("kith-bench: storing {} ConfigMaps of 1 KiB", args.objects);
    let writers = kith_writers(
        std::slice::from_ref(&client),
        &ns,
        "obj",
        args.clients,
        payload,
    );
    let fill = run_load(writers, Limit::Count(args.objects)).await;
    print_errors_hint("kith fill", &fill, &cluster.log_path());
    tokio::time::sleep(args.settle()).await;
    let rss = rss_bytes(pid)?;
    let mut f = figure("kith_idle_rss_10k_objects_mb", mib(rss), "MiB");
    f.better = Better::Lower;
    f.extra.insert("objects".into(), json!(fill.ok()));
    f.extra.insert("errors".into(), json!(fill.errors));
    f.extra
        .insert("settle_s".into(), json!(args.settle().as_secs()));
    // Where the resident memory is: the heap and other anonymous maps, or pages of the
    // binary and of redb's files; and how many threads (each may own a malloc arena).
    if let Ok(parts) = rss_parts(pid) {
        f.extra
            .insert("anon_mb".into(), json!(round(mib(parts.anon))));
        f.extra
            .insert("file_mb".into(), json!(round(mib(parts.file))));
        f.extra.insert("threads".into(), json!(parts.threads));
    }
    f.print();

    fanout(args, &cluster, &client, payload).await
}

/// Resident memory of a process by kind, from `/proc/<pid>/smaps_rollup` and `status`.
struct RssParts {
    anon: u64,
    file: u64,
    threads: u64,
}

fn rss_parts(pid: u32) -> Result<RssParts> {
    let kib = |text: &str, key: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key} line"))?;
        let v: u64 = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("bad {key} line"))?
            .parse()?;
        Ok(v)
    };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = kib(&rollup, "Rss:")? * 1024;
    let anon = kib(&rollup, "Anonymous:")? * 1024;
    Ok(RssParts {
        anon,
        file: rss.saturating_sub(anon),
        threads: kib(&status, "Threads:")?,
    })
}

enum WatchMsg {
    Ready,
    Failed(String),
    Seen { round: usize, at: Instant },
}

/// One watcher: a streaming-list watch whose first event is the initial-events-end
/// bookmark (the namespace is empty then), which proves the server has registered it.
async fn watcher(api: Api<ConfigMap>, setup: Arc<Semaphore>, tx: mpsc::UnboundedSender<WatchMsg>) {
    let permit = setup.acquire_owned().await.expect("semaphore open");
    let stream = match api
        .watch(&WatchParams::streaming_lists().timeout(600), "")
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(WatchMsg::Failed(kube_error_kind(&e)));
            return;
        }
    };
    let mut stream = std::pin::pin!(stream);
    let mut ready = false;
    let mut permit = Some(permit);
    loop {
        match stream.try_next().await {
            Ok(Some(WatchEvent::Bookmark(b))) => {
                if !ready
                    && b.metadata
                        .annotations
                        .contains_key("k8s.io/initial-events-end")
                {
                    ready = true;
                    permit.take();
                    let _ = tx.send(WatchMsg::Ready);
                }
            }
            Ok(Some(WatchEvent::Added(cm))) => {
                let at = Instant::now();
                let round = cm
                    .metadata
                    .name
                    .as_deref()
                    .and_then(|n| n.strip_prefix("fanout-"))
                    .and_then(|r| r.parse().ok());
                if let Some(round) = round {
                    if tx.send(WatchMsg::Seen { round, at }).is_err() {
                        return;
                    }
                }
            }
            Ok(Some(WatchEvent::Error(s))) => {
                let _ = tx.send(WatchMsg::Failed(format!(
                    "watch error {} {}",
                    s.code, s.reason
                )));
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let _ = tx.send(WatchMsg::Failed("watch ended".into()));
                return;
            }
            Err(e) => {
                let _ = tx.send(WatchMsg::Failed(kube_error_kind(&e)));
                return;
            }
        }
    }
}

async fn fanout(
    args: &Args,
    cluster: &Cluster,
    client: &kube::Client,
    payload: &Arc<str>,
) -> Result<()> {
    let ns = cluster.namespace("bench-watch").await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Bounded concurrency while connecting: 1,000 simultaneous TLS handshakes would measure
    // the handshake storm, not the watch.
    let setup = Arc::new(Semaphore::new(64));
    eprintln!("kith-bench: establishing {} watches", args.watchers);
    let began = Instant::now();
    let tasks: Vec<_> = (0..args.watchers)
        .map(|_| tokio::spawn(watcher(api.clone(), setup.clone(), tx.clone())))
        .collect();
    drop(tx);

    let mut errors = BTreeMap::<String, u64>::new();
    let mut ready = 0usize;
    let mut failed = 0usize;
    let deadline = tokio::time::Instant::now() + WATCH_SETUP_TIMEOUT;
    while ready + failed < args.watchers {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(WatchMsg::Ready)) => ready += 1,
            Ok(Some(WatchMsg::Failed(kind))) => {
                failed += 1;
                *errors.entry(format!("setup: {kind}")).or_default() += 1;
            }
            Ok(Some(WatchMsg::Seen { .. })) => {}
            Ok(None) => break,
            Err(_) => {
                *errors.entry("setup: timeout".into()).or_default() +=
                    (args.watchers - ready - failed) as u64;
                break;
            }
        }
    }
    let setup_ms = began.elapsed().as_secs_f64() * 1000.0;
    eprintln!("kith-bench: {ready} watches established in {setup_ms:.0} ms");

    let mut rounds_ms = Vec::new();
    let mut delivered = Vec::new();
    for round in 0..FANOUT_ROUNDS {
        let cm = config_map(&format!("fanout-{round}"), payload);
        let t0 = Instant::now();
        if let Err(e) = api.create(&PostParams::default(), &cm).await {
            *errors
                .entry(format!("write: {}", kube_error_kind(&e)))
                .or_default() += 1;
            continue;
        }
        let mut seen = 0usize;
        let mut last = t0;
        let deadline = tokio::time::Instant::now() + FANOUT_TIMEOUT;
        while seen < ready {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(WatchMsg::Seen { round: r, at })) if r == round => {
                    seen += 1;
                    last = last.max(at);
                }
                Ok(Some(WatchMsg::Failed(kind))) => {
                    *errors.entry(format!("round {round}: {kind}")).or_default() += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break,
            }
        }
        if seen < ready {
            *errors
                .entry(format!(
                    "round {round}: not delivered in {FANOUT_TIMEOUT:?}"
                ))
                .or_default() += (ready - seen) as u64;
        }
        rounds_ms.push(round_ms(last - t0));
        delivered.push(seen);
        // Let the watch connections go quiet between rounds.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in tasks {
        t.abort();
    }

    let mut sorted = rounds_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let mut f = figure(
        if args.watchers == 1000 {
            "kith_watch_fanout_1000_ms"
        } else {
            "kith_watch_fanout_ms"
        },
        median,
        "ms",
    );
    f.better = Better::Lower;
    f.extra.insert("watchers".into(), json!(args.watchers));
    f.extra.insert("established".into(), json!(ready));
    f.extra.insert("rounds_ms".into(), json!(rounds_ms));
    f.extra.insert("delivered".into(), json!(delivered));
    f.extra.insert("setup_ms".into(), json!(round(setup_ms)));
    f.extra.insert("errors".into(), json!(errors));
    f.print();
    Ok(())
}

fn round_ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0)
}
