//! Liveness, readiness and startup probes, run by the agent against the pod's IP the way
//! the kubelet's prober does (`kube-probe` user agent, HTTP 200–399 is success).
//!
//! ```text
//!  running containers ─► PodProbes::run ─► due probes (period, initial delay)
//!                                            │ httpGet / tcpSocket against podIP
//!                                            ▼
//!                         counters per (container, attempt, kind) ─► Outcome
//!                                     (ready set, liveness failures, Unhealthy events)
//! ```
//! The bookkeeping ([`Tracker::record`]) is pure and tested by tables; only [`check`]
//! touches the network. Exec probes need the runtime's exec, which the agent does not
//! have yet: they are not run (the container counts as passing) and the event says so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// Counters of one probe of one container attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    pub last_run: Option<Timestamp>,
    pub successes: i32,
    pub failures: i32,
    /// The probe's current verdict: passed its success threshold (and not failed since).
    pub passing: bool,
    /// Failed its failure threshold.
    pub failed: bool,
}

impl Tracker {
    /// Whether the probe is due at `now` for a container started at `started`.
    pub fn due(&self, probe: &Probe, started: Timestamp, now: Timestamp) -> bool {
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as i64;
        if now < started + SignedDuration::from_secs(delay) {
            return false;
        }
        let period = probe.period_seconds.unwrap_or(10).max(1) as i64;
        self.last_run
            .is_none_or(|last| now >= last + SignedDuration::from_secs(period))
    }

    /// Count one result against the probe's thresholds.
    pub fn record(&mut self, probe: &Probe, ok: bool, now: Timestamp) {
        self.last_run = Some(now);
        let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= success_threshold {
                self.passing = true;
                self.failed = false;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= failure_threshold {
                self.passing = false;
                self.failed = true;
            }
        }
    }
}

/// What one round of probing concluded for a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// (container, attempt) whose liveness or startup probe failed its threshold.
    pub liveness_failed: BTreeSet<(String, u32)>,
    /// Containers whose readiness probe passes (containers without one are added by the
    /// caller while they run).
    pub ready: BTreeSet<String>,
    /// (container, message) for Unhealthy events.
    pub unhealthy_events: Vec<(String, String)>,
}

/// Probe state of one pod: trackers by (container, attempt, kind).
#[derive(Debug, Default)]
pub struct PodProbes {
    trackers: BTreeMap<(String, u32, Kind), Tracker>,
    warned_exec: BTreeSet<String>,
}

fn probes_of(c: &Container) -> Vec<(Kind, &Probe)> {
    [
        (Kind::Startup, c.startup_probe.as_ref()),
        (Kind::Liveness, c.liveness_probe.as_ref()),
        (Kind::Readiness, c.readiness_probe.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.map(|p| (k, p)))
    .collect()
}

impl PodProbes {
    /// Run the probes that are due for `running` containers (name, attempt, started at)
    /// of `pod`, reachable at `ip`.
    pub async fn run(
        &mut self,
        pod: &Pod,
        ip: Ipv4Addr,
        running: &[(String, u32, Timestamp)],
        now: Timestamp,
    ) -> Outcome {
        let mut out = Outcome::default();
        let live: BTreeSet<(String, u32)> =
            running.iter().map(|(n, a, _)| (n.clone(), *a)).collect();
        self.trackers
            .retain(|(n, a, _), _| live.contains(&(n.clone(), *a)));
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
        for c in containers {
            let Some((_, attempt, started)) = running.iter().find(|(n, _, _)| *n == c.name) else {
                continue;
            };
            let probes = probes_of(c);
            let startup_done = probes.iter().all(|(k, _)| *k != Kind::Startup)
                || self
                    .trackers
                    .get(&(c.name.clone(), *attempt, Kind::Startup))
                    .is_some_and(|t| t.passing);
            for (kind, probe) in probes {
                if kind != Kind::Startup && !startup_done {
                    continue;
                }
                if kind == Kind::Startup && startup_done {
                    continue;
                }
                let key = (c.name.clone(), *attempt, kind);
                let tracker = self.trackers.entry(key).or_default();
                if probe.exec.is_some() {
                    // Not run: see the module doc.
                    tracker.passing = true;
                    if self.warned_exec.insert(c.name.clone()) {
                        out.unhealthy_events.push((
                            c.name.clone(),
                            format!(
                                "{} probe not run: exec probes are not supported by this agent",
                                kind.name()
                            ),
                        ));
                    }
                    continue;
                }
                if tracker.due(probe, *started, now) {
                    let result = check(probe, c, ip).await;
                    let was_failed = tracker.failed;
                    tracker.record(probe, result.is_ok(), now);
                    if let Err(message) = result {
                        out.unhealthy_events.push((
                            c.name.clone(),
                            format!("{} probe failed: {message}", kind.name()),
                        ));
                    }
                    if tracker.failed && !was_failed && kind != Kind::Readiness {
                        out.liveness_failed.insert((c.name.clone(), *attempt));
                    }
                }
                let tracker = &self.trackers[&(c.name.clone(), *attempt, kind)];
                if kind == Kind::Readiness && tracker.passing {
                    out.ready.insert(c.name.clone());
                }
            }
        }
        out
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no port named {name:?}")),
    }
}

/// Run one probe once. `Err` carries the kubelet-style failure message.
pub async fn check(probe: &Probe, c: &Container, ip: Ipv4Addr) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(t) = &probe.tcp_socket {
        let host = t
            .host
            .as_deref()
            .and_then(|h| h.parse::<IpAddr>().ok())
            .unwrap_or(IpAddr::V4(ip));
        let addr = SocketAddr::new(host, port(c, &t.port)?);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(h) = &probe.http_get {
        if h.scheme.as_deref() == Some("HTTPS") {
            return Err("HTTPS probes are not supported by this agent".into());
        }
        let host = h
            .host
            .as_deref()
            .and_then(|h| h.parse::<IpAddr>().ok())
            .unwrap_or(IpAddr::V4(ip));
        let addr = SocketAddr::new(host, port(c, &h.port)?);
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let mut headers = String::new();
        for hd in h.http_headers.iter().flatten() {
            headers.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n{headers}\r\n"
        );
        let url = format!("http://{addr}{path}");
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut buf = vec![0u8; 256];
            let mut n = 0;
            while n < buf.len() {
                let read = stream.read(&mut buf[n..]).await?;
                if read == 0 || buf[..n + read].windows(2).any(|w| w == b"\r\n") {
                    n += read;
                    break;
                }
                n += read;
            }
            Ok::<Vec<u8>, std::io::Error>(buf[..n].to_vec())
        };
        return match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(format!(
                "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
            Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
            Ok(Ok(head)) => match status_code(&head) {
                Some(code) if (200..400).contains(&code) => Ok(()),
                Some(code) => Err(format!("HTTP probe failed with statuscode: {code}")),
                None => Err(format!("Get \"{url}\": malformed HTTP response")),
            },
        };
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by this agent".into());
    }
    Err("probe has no handler".into())
}

/// The status code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn probe(delay: i32, period: i32, success: i32, failure: i32) -> Probe {
        Probe {
            initial_delay_seconds: Some(delay),
            period_seconds: Some(period),
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            ..Default::default()
        }
    }

    #[test]
    fn due_table() {
        let p = probe(5, 10, 1, 3);
        let fresh = Tracker::default();
        let ran = Tracker {
            last_run: Some(t(10)),
            ..Default::default()
        };
        let cases = [
            (&fresh, 0, 4, false),
            (&fresh, 0, 5, true),
            (&ran, 0, 15, false),
            (&ran, 0, 20, true),
        ];
        for (tracker, started, now, want) in cases {
            assert_eq!(tracker.due(&p, t(started), t(now)), want, "now {now}");
        }
    }

    #[test]
    fn thresholds_table() {
        // (success threshold, failure threshold, results) → (passing, failed) after each
        type Case = (i32, i32, Vec<bool>, Vec<(bool, bool)>);
        let cases: Vec<Case> = vec![
            (1, 3, vec![true], vec![(true, false)]),
            (
                1,
                3,
                vec![true, false, false, false],
                vec![(true, false), (true, false), (true, false), (false, true)],
            ),
            (
                2,
                1,
                vec![true, true, false, true],
                vec![(false, false), (true, false), (false, true), (false, true)],
            ),
        ];
        for (success, failure, results, want) in cases {
            let p = probe(0, 1, success, failure);
            let mut tr = Tracker::default();
            for (i, (ok, (passing, failed))) in results.iter().zip(want).enumerate() {
                tr.record(&p, *ok, t(i as i64));
                assert_eq!((tr.passing, tr.failed), (passing, failed), "step {i}");
            }
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"garbage"), None);
    }

    #[test]
    fn named_ports() {
        let c = Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(port(&c, &IntOrString::String("http".into())), Ok(8080));
        assert_eq!(port(&c, &IntOrString::Int(81)), Ok(81));
        assert!(port(&c, &IntOrString::String("nope".into())).is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                n += 1;
                let reply: &[u8] = if n % 2 == 1 {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = s.write_all(reply).await;
            }
        });
        let c = Container::default();
        let http = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(p as i32),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ip = Ipv4Addr::LOCALHOST;
        assert_eq!(check(&http, &c, ip).await, Ok(()));
        let err = check(&http, &c, ip).await.unwrap_err();
        assert!(err.contains("statuscode: 500"), "{err}");
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(p as i32),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check(&tcp, &c, ip).await, Ok(()));
        let closed = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check(&closed, &c, ip).await.is_err());
    }
}
