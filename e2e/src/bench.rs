//! What the bench binaries (`kith-bench`, `kith-region-bench`, `kith-agent-bench`) share:
//! the `BENCH {json}` line printer, small readings of `/proc` (a process's resident memory,
//! the `kith up` pid), and the closed-loop write load both create benchmarks drive.
//!
//! ```text
//!  run_load(writers, limit) ── one task per Writer, one request after another
//!     ├─ KithWriter: kube::Client of box i % boxes ── HTTPS POST ConfigMap (1 KiB)
//!     └─ EtcdWriter: own HTTP/1.1 connection to member i % members ── POST /v3/kv/put
//! ```
//!
//! A figure line is `BENCH {"name", "value", "unit", ["baseline", "baseline_value", "ratio"],
//! extra fields…}`; `ratio` > 1 means kith does better than the baseline, whichever
//! direction ([`Better`]) is better for that figure.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use bytes::Bytes;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{json, Map, Value};

use crate::etcd::{self, EtcdConn};

/// Size of the payload every write of the create load carries.
pub const PAYLOAD_BYTES: usize = 1024;
/// A request that takes longer than this counts as a `timeout` error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Two decimals: enough for every figure, short lines.
pub fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Which direction is better, for the ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One `BENCH` line; build it with [`figure`], set the public fields, then [`Figure::print`].
pub struct Figure<'a> {
    pub name: &'a str,
    pub value: f64,
    pub unit: &'a str,
    /// The baseline's name and its value in the same unit.
    pub baseline: Option<(&'a str, f64)>,
    pub better: Better,
    /// Printed after the standard keys, in insertion order of the map.
    pub extra: Map<String, Value>,
}

impl Figure<'_> {
    /// The JSON object of the line.
    pub fn to_json(&self) -> Value {
        let mut line = Map::new();
        line.insert("name".into(), json!(self.name));
        line.insert("value".into(), json!(round(self.value)));
        line.insert("unit".into(), json!(self.unit));
        if let Some((name, base)) = self.baseline {
            line.insert("baseline".into(), json!(name));
            line.insert("baseline_value".into(), json!(round(base)));
            line.insert(
                "ratio".into(),
                json!(ratio(self.value, base, self.better).map(|r| (r * 1000.0).round() / 1000.0)),
            );
        }
        line.extend(self.extra.clone());
        Value::Object(line)
    }

    /// Prints `BENCH {json}` on stdout.
    pub fn print(self) {
        println!("BENCH {}", self.to_json());
    }
}

/// `value` against `base`, oriented so that > 1 means `value` is better; `None` when the
/// divisor is not positive.
pub fn ratio(value: f64, base: f64, better: Better) -> Option<f64> {
    match better {
        Better::Higher if base > 0.0 => Some(value / base),
        Better::Lower if value > 0.0 => Some(base / value),
        _ => None,
    }
}

/// A figure with no baseline where higher is better; set the fields to change that.
pub fn figure<'a>(name: &'a str, value: f64, unit: &'a str) -> Figure<'a> {
    Figure {
        name,
        value,
        unit,
        baseline: None,
        better: Better::Higher,
        extra: Map::new(),
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The `p`-quantile (0 < p ≤ 1) of `sorted` by nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS line")?
        .parse()?;
    Ok(kib * 1024)
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        Ok(fields.get(i - 3).context("short /proc/PID/stat")?.parse()?)
    };
    let total = ticks(14)? + ticks(15)?;
    let per_sec = rustix::param::clock_ticks_per_second();
    Ok(Duration::from_secs_f64(total as f64 / per_sec as f64))
}

/// CPU time (user + system) the named processes used during the measured window of a
/// [`Limit::Time`] load started now: read after `warmup`, and again `measure` later.
/// Processes sharing a name are summed; one that cannot be read at either end (gone) is
/// left out.
pub async fn cpu_during(
    procs: Vec<(String, u32)>,
    warmup: Duration,
    measure: Duration,
) -> BTreeMap<String, Duration> {
    tokio::time::sleep(warmup).await;
    let before: Vec<_> = procs
        .into_iter()
        .filter_map(|(name, pid)| Some((name, pid, cpu_time(pid).ok()?)))
        .collect();
    tokio::time::sleep(measure).await;
    let mut used = BTreeMap::<String, Duration>::new();
    for (name, pid, b) in before {
        if let Ok(after) = cpu_time(pid) {
            *used.entry(name).or_default() += after.saturating_sub(b);
        }
    }
    used
}

/// CPU microseconds per successful write, by the names of `cpu` (as [`cpu_during`] gives
/// them), plus their `total`; 0 for all when no write succeeded.
pub fn cpu_us_per_write(cpu: &BTreeMap<String, Duration>, writes: u64) -> Map<String, Value> {
    let per = |d: Duration| {
        if writes == 0 {
            0.0
        } else {
            round(d.as_secs_f64() * 1e6 / writes as f64)
        }
    };
    let mut out: Map<String, Value> = cpu
        .iter()
        .map(|(k, d)| (k.clone(), json!(per(*d))))
        .collect();
    out.insert("total".into(), json!(per(cpu.values().sum())));
    out
}

/// The pid of the `kith up` serving `data_dir` (the harness keeps its child private).
pub fn kith_pid(data_dir: &Path) -> Result<u32> {
    let want = data_dir.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) == Some(&&b"up"[..]) && args.contains(&want) {
            return Ok(pid);
        }
    }
    bail!(
        "no `kith up --data-dir {}` process found",
        data_dir.display()
    )
}

// ---------------------------------------------------------------------------------------
// Closed-loop write load: N tasks, each issuing one request after another.

/// One client of the load: issues the `seq`-th write of its task.
pub trait Writer: Send + 'static {
    fn write(&mut self, seq: u64) -> impl Future<Output = Result<(), String>> + Send;
}

/// When the load stops.
#[derive(Clone, Copy)]
pub enum Limit {
    /// Run `warmup` unmeasured, then measure requests started during `measure`.
    Time { warmup: Duration, measure: Duration },
    /// Issue this many requests in total, all measured.
    Count(u64),
}

#[derive(Default)]
pub struct LoadResult {
    /// Latency of each measured successful request, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Failed measured requests by HTTP status or error kind.
    pub errors: BTreeMap<String, u64>,
    /// From the start of measurement to the last measured completion.
    pub elapsed: Duration,
    /// CPU cores busy on average during the whole load (warmup included): the server's and
    /// this bench process's (the load generator shares the machine with the server).
    pub server_cores: f64,
    pub client_cores: f64,
}

impl LoadResult {
    pub fn ok(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-quantile latency in milliseconds (nearest rank); `latencies_us` is sorted.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * self.latencies_us.len() as f64).ceil() as usize).max(1);
        self.latencies_us[rank.min(self.latencies_us.len()) - 1] as f64 / 1000.0
    }
}

/// Runs `writers` concurrently, each issuing its next request as soon as the last one
/// completed, until `limit`.
pub async fn run_load<W: Writer>(writers: Vec<W>, limit: Limit) -> LoadResult {
    run_paced_load(writers, limit, None).await
}

/// Like [`run_load`], but with `period`, each writer starts a request at most once per
/// period (a steady offered load rather than as much as the server takes); latencies still
/// count from a request's start to its completion.
pub async fn run_paced_load<W: Writer>(
    writers: Vec<W>,
    limit: Limit,
    period: Option<Duration>,
) -> LoadResult {
    let start = Instant::now();
    let (measure_from, measure_until) = match limit {
        Limit::Time { warmup, measure } => (start + warmup, Some(start + warmup + measure)),
        Limit::Count(_) => (start, None),
    };
    let issued = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut w| {
            let issued = issued.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = BTreeMap::<String, u64>::new();
                let mut last_done = measure_from;
                let mut seq = 0u64;
                loop {
                    let began = Instant::now();
                    if measure_until.is_some_and(|until| began >= until) {
                        break;
                    }
                    if let Limit::Count(n) = limit {
                        if issued.fetch_add(1, Ordering::Relaxed) >= n {
                            break;
                        }
                    }
                    seq += 1;
                    let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, w.write(seq)).await {
                        Ok(r) => r,
                        Err(_) => Err("timeout".to_string()),
                    };
                    let done = Instant::now();
                    if let Some(period) = period {
                        tokio::time::sleep_until((began + period).into()).await;
                    }
                    if began < measure_from {
                        continue;
                    }
                    last_done = last_done.max(done);
                    match outcome {
                        Ok(()) => latencies.push((done - began).as_micros() as u64),
                        Err(kind) => *errors.entry(kind).or_default() += 1,
                    }
                }
                (latencies, errors, last_done)
            })
        })
        .collect();
    let mut result = LoadResult::default();
    let mut last_done = measure_from;
    for task in tasks {
        let (lat, errs, done) = task.await.expect("load task panicked");
        result.latencies_us.extend(lat);
        for (k, v) in errs {
            *result.errors.entry(k).or_default() += v;
        }
        last_done = last_done.max(done);
    }
    result.latencies_us.sort_unstable();
    result.elapsed = last_done - measure_from;
    result
}

/// Creates ConfigMaps named `<prefix>-<task>-<seq>` through a shared kube-rs client.
pub struct KithWriter {
    api: Api<ConfigMap>,
    prefix: String,
    payload: Arc<str>,
}

impl Writer for KithWriter {
    fn write(&mut self, seq: u64) -> impl Future<Output = Result<(), String>> + Send {
        let cm = config_map(&format!("{}-{seq}", self.prefix), &self.payload);
        let api = self.api.clone();
        async move {
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(()),
                Err(e) => Err(kube_error_kind(&e)),
            }
        }
    }
}

pub fn config_map(name: &str, payload: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "payload".to_string(),
            payload.to_string(),
        )])),
        ..Default::default()
    }
}

pub fn kube_error_kind(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} {}", status.code, status.reason),
        kube::Error::HyperError(_) => "transport: hyper".into(),
        kube::Error::Service(_) => "transport: service".into(),
        kube::Error::SerdeError(_) => "bad response body".into(),
        other => format!("client: {}", short(&other.to_string())),
    }
}

pub fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// `n` writers creating ConfigMaps `<prefix>-<i>-<seq>` in namespace `ns`, writer `i`
/// through `clients[i % clients.len()]` (one client per box of a region spreads the load
/// round robin over the boxes, as [`etcd::client_url`] does over etcd members).
pub fn kith_writers(
    clients: &[kube::Client],
    ns: &str,
    prefix: &str,
    n: usize,
    payload: &Arc<str>,
) -> Vec<KithWriter> {
    (0..n)
        .map(|i| KithWriter {
            api: Api::namespaced(clients[i % clients.len()].clone(), ns),
            prefix: format!("{prefix}-{i}"),
            payload: payload.clone(),
        })
        .collect()
}

/// Puts `bench/<task>/<seq>` = the payload through `POST /v3/kv/put`, on its own connection.
pub struct EtcdWriter {
    /// The member this client talks to ([`etcd::client_url`] spreads clients over members).
    url: String,
    conn: Option<EtcdConn>,
    prefix: String,
    value_b64: Arc<str>,
}

impl Writer for EtcdWriter {
    async fn write(&mut self, seq: u64) -> Result<(), String> {
        if self.conn.is_none() {
            self.conn = Some(
                EtcdConn::connect(&self.url)
                    .await
                    .map_err(|e| format!("connect: {}", short(&e.to_string())))?,
            );
        }
        let key =
            base64::engine::general_purpose::STANDARD.encode(format!("{}/{seq}", self.prefix));
        let body = format!(r#"{{"key":"{key}","value":"{}"}}"#, self.value_b64);
        let conn = self.conn.as_mut().expect("connected above");
        match conn.request("POST", "/v3/kv/put", Bytes::from(body)).await {
            Ok((200, _)) => Ok(()),
            Ok((status, _)) => Err(status.to_string()),
            Err(e) => {
                self.conn = None;
                Err(format!("transport: {}", short(&e.to_string())))
            }
        }
    }
}

/// `n` writers putting `bench/<i>/<seq>` = `payload`, writer `i` on its own connection to
/// member [`etcd::client_url`]`(urls, i)`.
pub fn etcd_writers(urls: &[String], n: usize, payload: &str) -> Vec<EtcdWriter> {
    let value_b64: Arc<str> = base64::engine::general_purpose::STANDARD
        .encode(payload.as_bytes())
        .into();
    (0..n)
        .map(|i| EtcdWriter {
            url: etcd::client_url(urls, i).to_string(),
            conn: None,
            prefix: format!("bench/{i}"),
            value_b64: value_b64.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_oriented_so_above_one_means_kith_wins() {
        // (value, base, better, expected)
        let table = [
            (200.0, 100.0, Better::Higher, Some(2.0)),
            (50.0, 100.0, Better::Higher, Some(0.5)),
            (50.0, 100.0, Better::Lower, Some(2.0)),
            (200.0, 100.0, Better::Lower, Some(0.5)),
            (1.0, 0.0, Better::Higher, None),
            (0.0, 1.0, Better::Lower, None),
        ];
        for (value, base, better, want) in table {
            assert_eq!(ratio(value, base, better), want, "{value} vs {base}");
        }
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let sorted: Vec<f64> = (1..=50).map(f64::from).collect();
        // (p, expected)
        let table = [
            (0.5, 25.0),
            (0.99, 50.0),
            (1.0, 50.0),
            (0.01, 1.0),
            (0.0, 1.0),
        ];
        for (p, want) in table {
            assert_eq!(percentile(&sorted, p), want, "p{p}");
        }
        assert!(percentile(&[], 0.5).is_nan());
    }

    /// Fails every even-numbered write of its task.
    struct EveryOtherFails;

    impl Writer for EveryOtherFails {
        async fn write(&mut self, seq: u64) -> Result<(), String> {
            if seq.is_multiple_of(2) {
                Err("even".into())
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn load_counts_outcomes_and_keeps_the_pace() {
        let writers = vec![EveryOtherFails, EveryOtherFails];
        let period = Duration::from_millis(50);
        let began = Instant::now();
        let r = run_paced_load(writers, Limit::Count(8), Some(period)).await;
        // 8 requests over 2 writers: 4 each, started 50 ms apart (the last one's period is
        // waited out too).
        assert!(began.elapsed() >= 4 * period, "{:?}", began.elapsed());
        assert_eq!(r.ok(), 4);
        assert_eq!(r.errors, BTreeMap::from([("even".to_string(), 4)]));

        let began = Instant::now();
        let r = run_load(vec![EveryOtherFails], Limit::Count(4)).await;
        assert!(began.elapsed() < period, "unpaced: {:?}", began.elapsed());
        assert_eq!((r.ok(), r.failed()), (2, 2));
    }

    #[test]
    fn line_keeps_key_order_and_rounds() {
        let mut f = figure("x_ms", 12.3456, "ms");
        f.better = Better::Lower;
        f.baseline = Some(("runc", 6.0));
        f.extra.insert("pods".into(), json!(50));
        assert_eq!(
            f.to_json().to_string(),
            r#"{"name":"x_ms","value":12.35,"unit":"ms","baseline":"runc","baseline_value":6.0,"ratio":0.486,"pods":50}"#
        );
    }
}
