//! `kith-region-bench`: the figures of a 3-box region, one `BENCH {json}` line each, printed
//! as they are measured. Run as root (the hosts are network namespaces, see
//! [`kith_e2e::netlab`]).
//!
//! ```text
//!  lab 1  c1 c2 c3 ── kith control ×3 ◄── 64 clients, 1 KiB ConfigMaps, client i → box i % 3
//!                     (boxes stopped)
//!                  ── etcd 3.4 ×3     ◄── 64 clients, 1 KiB puts (JSON gateway), member i % 3
//!         → region_create_throughput, region_create_p99_ms (etcd the baseline)
//!  lab 2  c1 c2 c3 ── kith control ×3, 25 ms on each host's egress (netem, or the NFQUEUE
//!                     emulator where the kernel has no netem)
//!         ×N: kill -9 the leader → first accepted create through a survivor → restart it,
//!             wait until it serves and has applied what the leader had committed
//!         → region_failover_median_ms, region_failover_max_ms
//!  lab 3  c1 c2 c3 ── a new region: 50 ± 10 ms, 0.5 % loss per host's egress (box to box:
//!         100 ± 20 ms round trip, ≈ 1 % loss per round trip); 16 paced clients for
//!         --steady-secs
//!         → region_leader_changes
//! ```
//!
//! Each lab (its namespaces, processes, data) is removed when it drops, also on error.
//! Latencies and throughput count successful requests only; failures are counted by kind in
//! the `errors` keys. Every host's setting applies to its egress, so a 25 ms setting on each
//! host makes a 50 ms round trip between boxes (the issue's "50 ms links"), and 50 ± 10 ms
//! with 0.5 % loss on each makes its "100 ms ± 20 ms links with 1 % loss" per round trip.
//! The test process's own requests to the boxes cross one delayed direction. On a kernel
//! without `sch_netem`, [`kith_e2e::linkem`] emulates the links; its counts (packets,
//! lost, kernel queue overflows) are in the lines' `link_emulator` key.
//!
//! Usage: `kith-region-bench [--quick] [--secs N] [--kills N] [--failover-delay-ms N]
//! [--steady-secs N] [--no-etcd] [--phases create,failover,steady]`
//! (`--failover-delay-ms`: each host's egress delay in the failover phase, default 25;
//! `--phases`: run only these labs, default all three). Environment: `KITH_BIN` (the kith
//! binary), `KITH_ETCD` (default `/usr/bin/etcd`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kith_e2e::bench::{
    config_map, cpu_during, cpu_us_per_write, etcd_writers, figure, kith_writers, kube_error_kind,
    percentile, round, run_load, run_paced_load, Better, Figure, Limit, LoadResult, PAYLOAD_BYTES,
};
use kith_e2e::etcd::{self, etcd_bin, start_etcd_cluster};
use kith_e2e::linkem::LinkStats;
use kith_e2e::netlab::NetemUnsupported;
use kith_e2e::region::Region;
use kube::api::{Api, PostParams};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

/// The region's boxes (and the etcd members, on the same hosts).
const HOSTS: [&str; 3] = ["c1", "c2", "c3"];
/// Where the bench's ConfigMaps go.
const NAMESPACE: &str = "default";
/// The `links` note when the kernel cannot delay packets.
const NO_NETEM: &str =
    "veth speed: no netem on this kernel and no NFQUEUE link emulator (iptables missing?)";
/// How long after a kill -9 the region may take to accept a write before the bench gives up.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// A failover client starts a new create this often while none has succeeded, so one
/// request stuck on the dead leader does not hide that the region is back.
const FAILOVER_RETRY: Duration = Duration::from_millis(50);
/// How long a restarted box may take to apply what the leader had committed.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);
/// Steady phase: each client starts one create per period (16 clients: ≤ 160 writes/s),
/// a steady load rather than one that saturates the machine's two cores.
const STEADY_PERIOD: Duration = Duration::from_millis(100);
/// The counter each box exports (prometheus-client adds `_total` to counters).
const LEADER_CHANGES: &str = "kith_raft_leader_changes_total";

struct Args {
    quick: bool,
    /// Length of each measured create phase.
    secs: u64,
    clients: usize,
    kills: usize,
    /// Delay on each host's egress in the failover phase (the issue's 50 ms links: 25).
    failover_delay_ms: u32,
    steady_secs: u64,
    steady_clients: usize,
    etcd: bool,
    phases: Phases,
}

/// Which labs run (`--phases`): measuring one figure need not wait for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Phases {
    create: bool,
    failover: bool,
    steady: bool,
}

impl Phases {
    const ALL: Phases = Phases {
        create: true,
        failover: true,
        steady: true,
    };

    /// `create,failover,steady` or any non-empty subset, in any order.
    fn parse(list: &str) -> Result<Phases> {
        let mut p = Phases {
            create: false,
            failover: false,
            steady: false,
        };
        for name in list.split(',').map(str::trim) {
            match name {
                "create" => p.create = true,
                "failover" => p.failover = true,
                "steady" => p.steady = true,
                other => bail!(
                    "--phases: unknown phase {other:?} (create, failover, steady, comma-separated)"
                ),
            }
        }
        Ok(p)
    }
}

impl Args {
    fn parse() -> Result<Args> {
        let mut quick = false;
        let (mut secs, mut kills, mut steady_secs) = (None, None, None);
        let mut failover_delay_ms = 25;
        let mut etcd = true;
        let mut phases = Phases::ALL;
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut value = |name: &str| -> Result<u64> {
                let v = it.next().with_context(|| format!("{name} needs a value"))?;
                v.parse()
                    .with_context(|| format!("{name} {v}: not a number"))
            };
            match a.as_str() {
                "--quick" => quick = true,
                "--secs" => secs = Some(value("--secs")?),
                "--kills" => kills = Some(value("--kills")?),
                "--failover-delay-ms" => {
                    failover_delay_ms = u32::try_from(value("--failover-delay-ms")?)?
                }
                "--steady-secs" => steady_secs = Some(value("--steady-secs")?),
                "--no-etcd" => etcd = false,
                "--phases" => {
                    phases = Phases::parse(&it.next().context("--phases needs a value")?)?
                }
                "-h" | "--help" => {
                    println!(
                        "usage: kith-region-bench [--quick] [--secs N] [--kills N] \
                         [--failover-delay-ms N] [--steady-secs N] [--no-etcd] \
                         [--phases create,failover,steady]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        let args = Args {
            quick,
            secs: secs.unwrap_or(if quick { 5 } else { 20 }),
            clients: 64,
            kills: kills.unwrap_or(if quick { 3 } else { 10 }) as usize,
            failover_delay_ms,
            steady_secs: steady_secs.unwrap_or(if quick { 20 } else { 300 }),
            steady_clients: 16,
            etcd,
            phases,
        };
        if args.secs == 0 || args.kills == 0 || args.steady_secs == 0 {
            bail!("--secs, --kills and --steady-secs must be positive");
        }
        Ok(args)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs(if self.quick { 1 } else { 2 })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse()?;
    if !rustix::process::geteuid().is_root() {
        bail!("kith-region-bench makes network namespaces: run it as root");
    }
    eprintln!(
        "kith-region-bench: {} cpus, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let payload: Arc<str> = "x".repeat(PAYLOAD_BYTES).into();
    if args.phases.create {
        create_phase(&args, &payload).await?;
    }
    if args.phases.failover {
        let mut region = Region::new("rbfo", &HOSTS, &[])?;
        start_region(&mut region).await?;
        failover_phase(&args, &mut region).await?;
    }
    if args.phases.steady {
        // A region of its own: whatever the kills left behind (a box still catching up, a
        // leader still settling) must not count against the links.
        let mut region = Region::new("rbst", &HOSTS, &[])?;
        start_region(&mut region).await?;
        steady_phase(&args, &mut region, &payload).await?;
    }
    Ok(())
}

/// Founds the region on the first host and joins the others through it.
async fn start_region(region: &mut Region) -> Result<()> {
    region.found(HOSTS[0]).await?;
    for host in &HOSTS[1..] {
        region.join(host, HOSTS[0]).await?;
    }
    let leader = region.leader(&[]).await?;
    eprintln!("kith-region-bench: region of {HOSTS:?} up, leader {leader}");
    Ok(())
}

/// Sets netem on every host; `None` when set, the note for the line when the kernel has no
/// netem.
fn set_links(
    region: &mut Region,
    delay_ms: u32,
    jitter_ms: u32,
    loss_pct: f64,
) -> Result<Option<&'static str>> {
    for host in HOSTS {
        if let Err(e) = region.lab.netem(host, delay_ms, jitter_ms, loss_pct) {
            if e.downcast_ref::<NetemUnsupported>().is_some() {
                eprintln!("kith-region-bench: {e:#}; links stay at veth speed");
                return Ok(Some(NO_NETEM));
            }
            return Err(e);
        }
    }
    Ok(None)
}

/// The `links` field: what the links were, measured or not, and by what.
fn links(
    region: &Region,
    note: Option<&str>,
    delay_ms: u32,
    jitter_ms: u32,
    loss_pct: f64,
) -> Value {
    if let Some(note) = note {
        return json!(note);
    }
    let by = if link_totals(region).is_some() {
        "NFQUEUE link emulator (no netem on this kernel; uniform jitter)"
    } else {
        "netem"
    };
    json!(format!(
        "{by} on every host's egress: {delay_ms} ms ± {jitter_ms} ms, {loss_pct} % loss \
         (box-to-box round trip {} ms ± {} ms, ≈ {} % loss per round trip)",
        2 * delay_ms,
        2 * jitter_ms,
        round(2.0 * loss_pct)
    ))
}

/// The link emulators' counts summed over the hosts; `None` when the links are not
/// emulated (netem, or no setting).
fn link_totals(region: &Region) -> Option<LinkStats> {
    let mut total: Option<LinkStats> = None;
    for host in HOSTS {
        if let Ok(Some(s)) = region.lab.link_stats(host) {
            let t = total.get_or_insert_with(LinkStats::default);
            t.packets += s.packets;
            t.lost += s.lost;
            t.released += s.released;
            t.held_max = t.held_max.max(s.held_max);
            t.overflows += s.overflows;
            t.verdict_errors += s.verdict_errors;
        }
    }
    total
}

/// The `link_emulator` field: what the emulators did between `before` and `after`.
fn link_emulator(before: Option<LinkStats>, after: Option<LinkStats>) -> Value {
    let Some(after) = after else {
        return Value::Null;
    };
    let b = before.unwrap_or_default();
    json!({
        "packets": after.packets - b.packets,
        "lost": after.lost - b.lost,
        "overflows": after.overflows - b.overflows,
        "verdict_errors": after.verdict_errors - b.verdict_errors,
        "held_max": after.held_max,
    })
}

fn print_errors_hint(who: &str, r: &LoadResult) {
    eprintln!(
        "kith-region-bench: {who}: {} ok, {} failed {:?}",
        r.ok(),
        r.failed(),
        r.errors
    );
}

// ---------------------------------------------------------------------------------------
// Figure 1: create throughput and p99 latency, kith region against an etcd cluster

async fn create_phase(args: &Args, payload: &Arc<str>) -> Result<()> {
    let mut region = Region::new("rbtp", &HOSTS, &[])?;
    start_region(&mut region).await?;
    let mut clients = Vec::new();
    for host in HOSTS {
        clients.push(region.client(host).await?);
    }
    eprintln!(
        "kith-region-bench: kith create load: {} clients over {} boxes, {:?} warmup + {}s",
        args.clients,
        HOSTS.len(),
        args.warmup(),
        args.secs
    );
    let leader = region.leader(&[]).await?;
    let mut procs = vec![(ROLE_BENCH.to_string(), std::process::id())];
    for host in HOSTS {
        let role = if host == leader {
            "leader"
        } else {
            ROLE_FOLLOWERS
        };
        let pid = region
            .lab
            .pid(&format!("kith-{host}"))
            .with_context(|| format!("no pid for the box on {host}"))?;
        procs.push((role.to_string(), pid));
    }
    let writers = kith_writers(&clients, NAMESPACE, "cm", args.clients, payload);
    let (kith, kith_cpu) = tokio::join!(
        run_load(writers, measured(args)),
        cpu_during(procs, args.warmup(), Duration::from_secs(args.secs))
    );
    print_errors_hint("kith", &kith);
    let kith_cpu = cpu_us_per_write(&kith_cpu, kith.ok());
    drop(clients);
    for host in HOSTS {
        region.stop(host)?;
    }

    let etcd = match (args.etcd, etcd_bin()) {
        (true, Some(_)) => {
            let urls = start_etcd_cluster(&mut region.lab, &HOSTS).await?;
            eprintln!(
                "kith-region-bench: etcd put load: {} clients over {} members, {:?} warmup + {}s",
                args.clients,
                urls.len(),
                args.warmup(),
                args.secs
            );
            let mut procs = vec![(ROLE_BENCH.to_string(), std::process::id())];
            for host in HOSTS {
                let name = etcd::proc_name(host);
                let pid = region
                    .lab
                    .pid(&name)
                    .with_context(|| format!("no pid for {name}"))?;
                procs.push(("members".to_string(), pid));
            }
            let writers = etcd_writers(&urls, args.clients, payload);
            let (result, cpu) = tokio::join!(
                run_load(writers, measured(args)),
                cpu_during(procs, args.warmup(), Duration::from_secs(args.secs))
            );
            print_errors_hint("etcd", &result);
            let cpu = cpu_us_per_write(&cpu, result.ok());
            for host in HOSTS {
                region.lab.stop(&etcd::proc_name(host))?;
            }
            Some((result, cpu))
        }
        (true, None) => {
            eprintln!(
                "kith-region-bench: no etcd binary (set KITH_ETCD or install etcd-server); \
                 no baseline"
            );
            None
        }
        (false, _) => None,
    };
    report_create(
        args,
        (&kith, &kith_cpu),
        etcd.as_ref().map(|(r, cpu)| (r, cpu)),
    );
    Ok(())
}

fn measured(args: &Args) -> Limit {
    Limit::Time {
        warmup: args.warmup(),
        measure: Duration::from_secs(args.secs),
    }
}

/// The bench process's name in the CPU figures, and the boxes that do not lead.
const ROLE_BENCH: &str = "bench";
const ROLE_FOLLOWERS: &str = "followers";

/// `kith` and `etcd`: each load's result and its CPU microseconds per write by role
/// (`leader`, `followers` (both together), `members` (all three etcds), `bench` (this
/// process: the clients), `total`).
fn report_create(
    args: &Args,
    (kith, kith_cpu): (&LoadResult, &Map<String, Value>),
    etcd_and_cpu: Option<(&LoadResult, &Map<String, Value>)>,
) {
    let etcd = etcd_and_cpu.map(|(r, _)| r);
    let baseline = |v: f64| etcd.map(|_| ("etcd-3.4-3-members-v3-json-gateway", v));
    let mut extra = Map::new();
    extra.insert("boxes".into(), json!(HOSTS.len()));
    extra.insert("clients".into(), json!(args.clients));
    extra.insert("ok".into(), json!(kith.ok()));
    extra.insert("errors".into(), json!(kith.errors));
    extra.insert("cpu_us_per_write".into(), json!(kith_cpu));
    if let Some((e, cpu)) = etcd_and_cpu {
        extra.insert("baseline_ok".into(), json!(e.ok()));
        extra.insert("baseline_errors".into(), json!(e.errors));
        extra.insert("baseline_cpu_us_per_write".into(), json!(cpu));
    }
    extra.insert("links".into(), json!("veth, no netem in this phase"));
    Figure {
        name: "region_create_throughput",
        value: kith.throughput(),
        unit: "creates/s",
        baseline: baseline(etcd.map_or(0.0, LoadResult::throughput)),
        better: Better::Higher,
        extra,
    }
    .print();
    let mut extra = Map::new();
    extra.insert("p50_ms".into(), json!(round(kith.percentile_ms(0.5))));
    if let Some(e) = etcd {
        extra.insert("baseline_p50_ms".into(), json!(round(e.percentile_ms(0.5))));
    }
    extra.insert("errors".into(), json!(kith.errors));
    Figure {
        name: "region_create_p99_ms",
        value: kith.percentile_ms(0.99),
        unit: "ms",
        baseline: baseline(etcd.map_or(0.0, |e| e.percentile_ms(0.99))),
        better: Better::Lower,
        extra,
    }
    .print();
}

// ---------------------------------------------------------------------------------------
// Figure 2: failover after kill -9 of the leader

async fn failover_phase(args: &Args, region: &mut Region) -> Result<()> {
    let delay = args.failover_delay_ms;
    let note = set_links(region, delay, 0, 0.0)?;
    let links_before = link_totals(region);
    let mut failover_ms = Vec::new();
    let mut rejoin_ms = Vec::new();
    let mut timeouts = 0;
    for kill in 0..args.kills {
        let leader = region.leader(&[]).await?;
        let mut apis = Vec::new();
        for host in HOSTS.iter().filter(|h| **h != leader) {
            let api: Api<ConfigMap> = Api::namespaced(region.client(host).await?, NAMESPACE);
            apis.push((host.to_string(), api));
        }
        region.kill9(&leader)?;
        // A kill after which no write is accepted within the limit counts as the limit (a
        // lower bound) and is counted in `timeouts`; the bench goes on with the next kill.
        let took = match first_write(&apis, kill).await {
            Ok(took) => took,
            Err(e) => {
                eprintln!("kith-region-bench: kill {}: {e:#}", kill + 1);
                explain(region);
                timeouts += 1;
                FAILOVER_LIMIT
            }
        };
        let restarted = Instant::now();
        region.restart(&leader).await?;
        caught_up(region, &leader).await?;
        let rejoin = restarted.elapsed();
        eprintln!(
            "kith-region-bench: kill {}/{}: leader {leader} killed, first write after {took:?}, \
             back and caught up {rejoin:?} after its restart",
            kill + 1,
            args.kills
        );
        failover_ms.push(as_ms(took));
        rejoin_ms.push(as_ms(rejoin));
    }
    let emulator = link_emulator(links_before, link_totals(region));
    let links = links(region, note, delay, 0, 0.0);
    let mut sorted = failover_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mut rejoin_sorted = rejoin_ms.clone();
    rejoin_sorted.sort_by(f64::total_cmp);
    for (name, value) in [
        ("region_failover_median_ms", percentile(&sorted, 0.5)),
        ("region_failover_max_ms", percentile(&sorted, 1.0)),
    ] {
        let mut f = figure(name, value, "ms");
        f.better = Better::Lower;
        f.extra.insert("kills".into(), json!(args.kills));
        f.extra.insert("samples_ms".into(), json!(failover_ms));
        f.extra.insert("timeouts".into(), json!(timeouts));
        f.extra
            .insert("timeout_ms".into(), json!(as_ms(FAILOVER_LIMIT)));
        f.extra.insert(
            "rejoin_median_ms".into(),
            json!(round(percentile(&rejoin_sorted, 0.5))),
        );
        f.extra.insert("links".into(), links.clone());
        if !emulator.is_null() {
            f.extra.insert("link_emulator".into(), emulator.clone());
        }
        f.print();
    }
    Ok(())
}

/// Prints what the boxes and the link emulators said, for a phase that failed.
fn explain(region: &Region) {
    for host in HOSTS {
        eprintln!(
            "kith-region-bench: {host}: link emulator {:?}",
            region.lab.link_stats(host)
        );
        let log = region.lab.log(&format!("kith-{host}"));
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("===== kith-{host}, last {} lines =====", tail.len());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
}

fn as_ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0)
}

/// Time from now until the first create accepted through any of `apis` (the survivors),
/// a new attempt every [`FAILOVER_RETRY`], alternating between them.
async fn first_write(apis: &[(String, Api<ConfigMap>)], kill: usize) -> Result<Duration> {
    let began = Instant::now();
    let mut attempts = JoinSet::new();
    let mut tick = tokio::time::interval(FAILOVER_RETRY);
    let mut last_error = String::from("no attempt finished");
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if began.elapsed() > FAILOVER_LIMIT {
                    bail!("no write accepted within {FAILOVER_LIMIT:?} of killing the leader: {last_error}");
                }
                let (host, api) = apis[n % apis.len()].clone();
                let cm = config_map(&format!("failover-{kill}-{n}"), "x");
                n += 1;
                attempts.spawn(async move {
                    match api.create(&PostParams::default(), &cm).await {
                        Ok(_) => Ok(()),
                        Err(e) => Err(format!("{host}: {}", kube_error_kind(&e))),
                    }
                });
            }
            Some(done) = attempts.join_next() => match done? {
                Ok(()) => {
                    let took = began.elapsed();
                    attempts.abort_all();
                    return Ok(took);
                }
                Err(e) => last_error = e,
            },
        }
    }
}

/// Waits until the box on `host` has applied everything the leader had committed when the
/// box came back.
async fn caught_up(region: &Region, host: &str) -> Result<()> {
    let began = Instant::now();
    let leader = region.leader(&[]).await?;
    let target = region.metric(&leader, "kith_raft_commit_index").await?;
    loop {
        let applied = region.metric(host, "kith_raft_applied_index").await;
        if matches!(applied, Ok(a) if a >= target) {
            return Ok(());
        }
        if began.elapsed() > CATCH_UP_LIMIT {
            bail!("{host} did not apply up to {target} within {CATCH_UP_LIMIT:?}: {applied:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Figure 3: leader changes under steady load on slow, lossy links

async fn steady_phase(args: &Args, region: &mut Region, payload: &Arc<str>) -> Result<()> {
    let (delay, jitter, loss) = (50, 10, 0.5);
    let note = set_links(region, delay, jitter, loss)?;
    // Let the boxes settle on the new links before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = leader_changes(region).await?;
    let term_before = leader_term(region).await?;
    let links_before = link_totals(region);
    let mut clients = Vec::new();
    for host in HOSTS {
        clients.push(region.client(host).await?);
    }
    eprintln!(
        "kith-region-bench: steady load: {} clients, one create per {STEADY_PERIOD:?} each, {}s",
        args.steady_clients, args.steady_secs
    );
    let writers = kith_writers(&clients, NAMESPACE, "steady", args.steady_clients, payload);
    let load = run_paced_load(
        writers,
        Limit::Time {
            warmup: Duration::ZERO,
            measure: Duration::from_secs(args.steady_secs),
        },
        Some(STEADY_PERIOD),
    )
    .await;
    print_errors_hint("steady", &load);
    let links_after = link_totals(region);
    let after = leader_changes(region).await?;
    let term_after = leader_term(region).await?;
    let changes: f64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    let mut f = figure("region_leader_changes", changes, "changes");
    f.better = Better::Lower;
    f.extra.insert(
        "counted".into(),
        json!(format!(
            "sum over the {} boxes of the increase of {LEADER_CHANGES} in /metrics",
            HOSTS.len()
        )),
    );
    f.extra
        .insert("term_increase".into(), json!(term_after - term_before));
    f.extra.insert("secs".into(), json!(args.steady_secs));
    f.extra.insert("clients".into(), json!(args.steady_clients));
    f.extra.insert("writes_ok".into(), json!(load.ok()));
    f.extra.insert("errors".into(), json!(load.errors));
    f.extra.insert(
        "write_p99_ms".into(),
        json!(round(load.percentile_ms(0.99))),
    );
    f.extra
        .insert("links".into(), links(region, note, delay, jitter, loss));
    let emulator = link_emulator(links_before, links_after);
    if !emulator.is_null() {
        f.extra.insert("link_emulator".into(), emulator);
    }
    f.print();
    Ok(())
}

/// Each box's leader-change counter, in the order of [`HOSTS`].
async fn leader_changes(region: &Region) -> Result<Vec<f64>> {
    let mut values = Vec::new();
    for host in HOSTS {
        values.push(metric_retrying(region, host, LEADER_CHANGES).await?);
    }
    Ok(values)
}

/// The current leader's term.
async fn leader_term(region: &Region) -> Result<f64> {
    let leader = region.leader(&[]).await?;
    metric_retrying(region, &leader, "kith_raft_term").await
}

/// A metric read over a lossy link: a few tries before giving up.
async fn metric_retrying(region: &Region, host: &str, name: &str) -> Result<f64> {
    let mut last = None;
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(5), region.metric(host, name)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(anyhow::anyhow!("timed out")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.expect("tried")).with_context(|| format!("{name} of {host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_table() {
        let p = |c, f, s| Phases {
            create: c,
            failover: f,
            steady: s,
        };
        for (arg, want) in [
            ("create", Some(p(true, false, false))),
            ("steady,failover", Some(p(false, true, true))),
            ("create, failover,steady", Some(Phases::ALL)),
            ("creat", None),
            ("", None),
        ] {
            assert_eq!(Phases::parse(arg).ok(), want, "{arg:?}");
        }
    }
}
