//! Metering: how much CPU time, memory over time and network each namespace used on this
//! box, accumulated per hour and kept in a small file in the agent's data directory so the
//! totals survive restarts of the agent (and of the box).
//!
//! ```text
//!  Sample ─► Meter::observe ─► hourly rows (hour, namespace, node) += deltas
//!              │ remembers each container's cpu counter and each pod's network counters
//!              │ (also persisted: a restart continues the deltas instead of recounting)
//!              └─► save(<data dir>/metering.json)  atomic: temp file, fsync, rename
//! ```
//! CPU and network are counter deltas, so nothing is lost between samples; memory is the
//! working set times the time since the previous sample, with gaps (the agent was down)
//! capped at [`MAX_GAP`] because nobody measured what happened during them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::sample::Sample;

/// The file name under the agent's data directory.
pub const FILE: &str = "metering.json";
/// The longest time one memory reading is charged for.
pub const MAX_GAP: Duration = Duration::from_secs(60);
/// Hourly rows older than this are dropped.
pub const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum MeteringError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Used resources, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub cpu_seconds: f64,
    pub memory_byte_seconds: f64,
    pub network_rx_bytes: u64,
    pub network_tx_bytes: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.cpu_seconds += o.cpu_seconds;
        self.memory_byte_seconds += o.memory_byte_seconds;
        self.network_rx_bytes += o.network_rx_bytes;
        self.network_tx_bytes += o.network_tx_bytes;
    }
}

/// One hour of one namespace on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The start of the hour.
    pub hour: Timestamp,
    pub namespace: String,
    pub node: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// The accumulator and its file format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    pub node: String,
    /// When the last sample was taken.
    pub last_at: Option<Timestamp>,
    pub rows: Vec<Row>,
    /// Container (`<uid>_<name>_<attempt>`) → its cpu counter (ns) at the last sample.
    #[serde(default)]
    pub containers: BTreeMap<String, u64>,
    /// Pod uid → its (rx, tx) byte counters at the last sample.
    #[serde(default)]
    pub pods: BTreeMap<String, (u64, u64)>,
}

fn hour_of(t: Timestamp) -> Timestamp {
    let s = t.as_second();
    Timestamp::from_second(s - s.rem_euclid(3600)).unwrap_or(t)
}

/// What a counter grew by; a counter below its last value was reset (a new cgroup or
/// network namespace under the same name), so all of it is new.
fn delta(now: u64, before: Option<u64>) -> u64 {
    match before {
        Some(b) if now >= b => now - b,
        _ => now,
    }
}

impl Meter {
    pub fn new(node: &str) -> Meter {
        Meter {
            node: node.to_string(),
            ..Meter::default()
        }
    }

    /// Adds what happened since the previous sample.
    pub fn observe(&mut self, sample: &Sample) {
        let gap = match self.last_at {
            Some(last) if sample.at > last => sample
                .at
                .duration_since(last)
                .unsigned_abs()
                .min(MAX_GAP)
                .as_secs_f64(),
            _ => 0.0,
        };
        let mut add: BTreeMap<String, Totals> = BTreeMap::new();
        let mut containers = BTreeMap::new();
        for c in &sample.containers {
            let name = c.key.dir_name();
            let cpu = delta(c.reading.cpu_usage_ns, self.containers.get(&name).copied());
            let t = add.entry(c.pod.namespace.clone()).or_default();
            t.cpu_seconds += cpu as f64 / 1e9;
            t.memory_byte_seconds += c.reading.memory_working_set_bytes as f64 * gap;
            containers.insert(name, c.reading.cpu_usage_ns);
        }
        let mut pods = BTreeMap::new();
        for p in &sample.pods {
            let (rx, tx) = (p.rx_bytes(), p.tx_bytes());
            let before = self.pods.get(&p.pod.uid).copied();
            let t = add.entry(p.pod.namespace.clone()).or_default();
            t.network_rx_bytes += delta(rx, before.map(|b| b.0));
            t.network_tx_bytes += delta(tx, before.map(|b| b.1));
            pods.insert(p.pod.uid.clone(), (rx, tx));
        }
        self.containers = containers;
        self.pods = pods;
        self.last_at = Some(sample.at);
        let hour = hour_of(sample.at);
        for (namespace, t) in add {
            match self
                .rows
                .iter_mut()
                .find(|r| r.hour == hour && r.namespace == namespace && r.node == self.node)
            {
                Some(r) => r.totals.add(&t),
                None => self.rows.push(Row {
                    hour,
                    namespace,
                    node: self.node.clone(),
                    totals: t,
                }),
            }
        }
        let oldest = sample.at.as_second() - RETENTION.as_secs() as i64;
        self.rows.retain(|r| r.hour.as_second() >= oldest);
    }

    /// Totals per (namespace, node) over the rows whose hour starts at or after `since`.
    pub fn by_namespace(&self, since: Option<Timestamp>) -> BTreeMap<(String, String), Totals> {
        let mut out: BTreeMap<(String, String), Totals> = BTreeMap::new();
        for r in self.rows_since(since) {
            out.entry((r.namespace.clone(), r.node.clone()))
                .or_default()
                .add(&r.totals);
        }
        out
    }

    /// Totals per node over the rows whose hour starts at or after `since`.
    pub fn by_node(&self, since: Option<Timestamp>) -> BTreeMap<String, Totals> {
        let mut out: BTreeMap<String, Totals> = BTreeMap::new();
        for r in self.rows_since(since) {
            out.entry(r.node.clone()).or_default().add(&r.totals);
        }
        out
    }

    fn rows_since(&self, since: Option<Timestamp>) -> impl Iterator<Item = &Row> {
        let from = since.map(hour_of);
        self.rows
            .iter()
            .filter(move |r| from.is_none_or(|f| r.hour >= f))
    }

    /// The meter saved at `path`; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Meter>, MeteringError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(MeteringError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| MeteringError::Parse {
                path: path.into(),
                source,
            })
    }

    /// Writes the meter so that a crash leaves either the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), MeteringError> {
        let err = |source| MeteringError::Write {
            path: path.into(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)
    }
}

/// Lays out rows of cells as aligned columns (the first row is the header).
fn columns(rows: &[Vec<String>]) -> String {
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len)).map(width).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn cells(t: &Totals) -> [String; 4] {
    [
        format!("{:.1}", t.cpu_seconds),
        format!("{:.2}", t.memory_byte_seconds / (1024.0 * 1024.0 * 3600.0)),
        t.network_rx_bytes.to_string(),
        t.network_tx_bytes.to_string(),
    ]
}

/// `kith usage`: one table per namespace (and node), one per node.
pub fn usage_tables(meter: &Meter, since: Option<Timestamp>) -> String {
    let head = ["CPU(core-s)", "MEMORY(MiB-h)", "NET-RX(B)", "NET-TX(B)"].map(String::from);
    let mut ns_rows = vec![[
        vec!["NAMESPACE".to_string(), "NODE".to_string()],
        head.to_vec(),
    ]
    .concat()];
    for ((ns, node), t) in meter.by_namespace(since) {
        ns_rows.push([vec![ns, node], cells(&t).to_vec()].concat());
    }
    let mut node_rows = vec![[vec!["NODE".to_string()], head.to_vec()].concat()];
    for (node, t) in meter.by_node(since) {
        node_rows.push([vec![node], cells(&t).to_vec()].concat());
    }
    format!("{}\n{}", columns(&ns_rows), columns(&node_rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::procfs::InterfaceBytes;
    use crate::stats::sample::tests::{at, container, node, pod};
    use crate::stats::sample::PodNetSample;

    fn net(p: &crate::stats::sample::PodRef, rx: u64, tx: u64) -> PodNetSample {
        PodNetSample {
            pod: p.clone(),
            interfaces: vec![InterfaceBytes {
                interface: "eth0".into(),
                rx_bytes: rx,
                tx_bytes: tx,
            }],
        }
    }

    fn sample(
        secs: i64,
        containers: Vec<crate::stats::sample::ContainerSample>,
        pods: Vec<PodNetSample>,
    ) -> Sample {
        Sample {
            at: at(secs),
            containers,
            pods,
            node: node(0.0),
        }
    }

    #[test]
    fn accumulates_deltas_table() {
        let a = pod("team-a", "web", "ua");
        let b = pod("team-b", "db", "ub");
        // (sample, namespace → expected totals after it)
        let steps: Vec<(Sample, Vec<(&str, Totals)>)> = vec![
            // first sight: whole counters count, no memory time yet
            (
                sample(
                    0,
                    vec![container(&a, "app", 0, 2_000_000_000, 100)],
                    vec![net(&a, 1000, 10)],
                ),
                vec![(
                    "team-a",
                    Totals {
                        cpu_seconds: 2.0,
                        memory_byte_seconds: 0.0,
                        network_rx_bytes: 1000,
                        network_tx_bytes: 10,
                    },
                )],
            ),
            // 10 s later: +1 s cpu, 100 B × 10 s, +500 rx; team-b appears
            (
                sample(
                    10,
                    vec![
                        container(&a, "app", 0, 3_000_000_000, 100),
                        container(&b, "db", 0, 500_000_000, 50),
                    ],
                    vec![net(&a, 1500, 10), net(&b, 7, 8)],
                ),
                vec![
                    (
                        "team-a",
                        Totals {
                            cpu_seconds: 3.0,
                            memory_byte_seconds: 1000.0,
                            network_rx_bytes: 1500,
                            network_tx_bytes: 10,
                        },
                    ),
                    (
                        "team-b",
                        Totals {
                            cpu_seconds: 0.5,
                            memory_byte_seconds: 500.0,
                            network_rx_bytes: 7,
                            network_tx_bytes: 8,
                        },
                    ),
                ],
            ),
            // the app restarted (attempt 1, new cgroup) and the agent was down for an hour:
            // the new attempt's counter counts whole, memory time is capped at MAX_GAP
            (
                sample(
                    3610,
                    vec![container(&a, "app", 1, 1_000_000_000, 10)],
                    vec![net(&a, 1600, 20)],
                ),
                vec![
                    (
                        "team-a",
                        Totals {
                            cpu_seconds: 4.0,
                            memory_byte_seconds: 1000.0 + 10.0 * 60.0,
                            network_rx_bytes: 1600,
                            network_tx_bytes: 20,
                        },
                    ),
                    (
                        "team-b",
                        Totals {
                            cpu_seconds: 0.5,
                            memory_byte_seconds: 500.0,
                            network_rx_bytes: 7,
                            network_tx_bytes: 8,
                        },
                    ),
                ],
            ),
        ];
        let mut m = Meter::new("box-1");
        for (i, (s, want)) in steps.into_iter().enumerate() {
            m.observe(&s);
            let got = m.by_namespace(None);
            let want: BTreeMap<(String, String), Totals> = want
                .into_iter()
                .map(|(ns, t)| ((ns.to_string(), "box-1".to_string()), t))
                .collect();
            assert_eq!(got, want, "step {i}");
        }
        // the last sample is in the next hour: its row alone is newer than `since`
        let recent = m.by_namespace(Some(at(3610)));
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[&("team-a".into(), "box-1".into())].cpu_seconds, 1.0);
        assert_eq!(m.by_node(None)["box-1"].cpu_seconds, 4.5);
        // containers and pods that are gone are forgotten
        assert_eq!(m.containers.keys().collect::<Vec<_>>(), vec!["ua_app_1"]);
        assert_eq!(m.pods.keys().collect::<Vec<_>>(), vec!["ua"]);
    }

    #[test]
    fn usage_tables_layout() {
        let mut m = Meter::new("box-1");
        m.rows = vec![
            Row {
                hour: at(0),
                namespace: "default".into(),
                node: "box-1".into(),
                totals: Totals {
                    cpu_seconds: 12.34,
                    memory_byte_seconds: 2.0 * 1024.0 * 1024.0 * 3600.0,
                    network_rx_bytes: 100,
                    network_tx_bytes: 5,
                },
            },
            Row {
                hour: at(3600),
                namespace: "kube-system".into(),
                node: "box-1".into(),
                totals: Totals {
                    cpu_seconds: 1.0,
                    ..Totals::default()
                },
            },
        ];
        let want = "\
NAMESPACE     NODE    CPU(core-s)   MEMORY(MiB-h)   NET-RX(B)   NET-TX(B)
default       box-1   12.3          2.00            100         5
kube-system   box-1   1.0           0.00            0           0

NODE    CPU(core-s)   MEMORY(MiB-h)   NET-RX(B)   NET-TX(B)
box-1   13.3          2.00            100         5
";
        assert_eq!(usage_tables(&m, None), want);
        assert!(!usage_tables(&m, Some(at(3600))).contains("default"));
    }

    #[test]
    fn old_rows_expire() {
        let a = pod("ns", "p", "u");
        let mut m = Meter::new("n");
        m.observe(&sample(
            0,
            vec![container(&a, "c", 0, 1_000_000_000, 1)],
            vec![],
        ));
        let later = RETENTION.as_secs() as i64 + 7200;
        m.observe(&sample(
            later,
            vec![container(&a, "c", 0, 2_000_000_000, 1)],
            vec![],
        ));
        assert_eq!(m.rows.len(), 1);
        assert_eq!(m.by_node(None)["n"].cpu_seconds, 1.0);
    }

    #[test]
    fn saved_meter_resumes_without_recounting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(Meter::load(&path).unwrap(), None);
        let a = pod("ns", "p", "u");
        let mut m = Meter::new("n");
        m.observe(&sample(
            0,
            vec![container(&a, "c", 0, 5_000_000_000, 1)],
            vec![net(&a, 10, 10)],
        ));
        m.save(&path).unwrap();
        assert!(!path.with_extension("json.tmp").exists());

        let mut again = Meter::load(&path).unwrap().unwrap();
        assert_eq!(again, m);
        again.observe(&sample(
            5,
            vec![container(&a, "c", 0, 6_000_000_000, 1)],
            vec![net(&a, 15, 10)],
        ));
        let t = again.by_node(None)["n"];
        assert_eq!((t.cpu_seconds, t.network_rx_bytes), (6.0, 15));

        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            Meter::load(&path),
            Err(MeteringError::Parse { .. })
        ));
    }
}
