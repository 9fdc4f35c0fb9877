//! Liveness, readiness and startup probes, run by the agent the way the kubelet's prober
//! does: exec probes inside the container, httpGet (HTTP or HTTPS) and tcpSocket against
//! the pod's IP (`kube-probe` user agent, HTTP 200–399 is success).
//!
//! ```text
//!  running containers ─► PodProbes::run ─► due probes (period, initial delay)
//!                                            │ exec: ContainerRuntime::exec (timeout, output)
//!                                            │ httpGet / tcpSocket against podIP
//!                                            ▼
//!                         counters per (container, attempt, kind) ─► Outcome
//!                                     (ready set, liveness failures, Unhealthy events)
//! ```
//! The bookkeeping ([`Tracker::record`]) and the verdicts ([`exec_verdict`],
//! [`http_request`]) are pure and tested by tables; only [`check`] touches the network or
//! the runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, HTTPHeader, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::runtime::{ContainerKey, ContainerRuntime, ExecRequest, RuntimeError};

/// How much of an exec probe's output is kept for the event (the kubelet's limit).
const MAX_EXEC_OUTPUT: usize = 10 * 1024;
/// How long past its timeout an exec may take before the agent gives up on the helper
/// that was to kill it (the helper enforces the timeout itself; this is the backstop).
const EXEC_GRACE: Duration = Duration::from_secs(5);
/// How long output is still read after an exec ended: a process the command left in the
/// background may hold its stdout open.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);

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
    /// Run the probes that are due for the `running` containers (key, started at) of
    /// `pod`, reachable at `ip`; exec probes go through `runtime`.
    pub async fn run<R: ContainerRuntime>(
        &mut self,
        pod: &Pod,
        ip: Ipv4Addr,
        runtime: &R,
        running: &[(ContainerKey, Timestamp)],
        now: Timestamp,
    ) -> Outcome {
        let mut out = Outcome::default();
        let live: BTreeSet<(String, u32)> = running
            .iter()
            .map(|(k, _)| (k.container.clone(), k.attempt))
            .collect();
        self.trackers
            .retain(|(n, a, _), _| live.contains(&(n.clone(), *a)));
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
        for c in containers {
            let Some((key, started)) = running.iter().find(|(k, _)| k.container == c.name) else {
                continue;
            };
            let attempt = key.attempt;
            let probes = probes_of(c);
            let startup_done = probes.iter().all(|(k, _)| *k != Kind::Startup)
                || self
                    .trackers
                    .get(&(c.name.clone(), attempt, Kind::Startup))
                    .is_some_and(|t| t.passing);
            for (kind, probe) in probes {
                if kind != Kind::Startup && !startup_done {
                    continue;
                }
                if kind == Kind::Startup && startup_done {
                    continue;
                }
                let tracker = self
                    .trackers
                    .entry((c.name.clone(), attempt, kind))
                    .or_default();
                if tracker.due(probe, *started, now) {
                    let target = Target { ip, runtime, key };
                    let result = check(probe, c, &target).await;
                    let was_failed = tracker.failed;
                    tracker.record(probe, result.is_ok(), now);
                    if let Err(message) = result {
                        out.unhealthy_events.push((
                            c.name.clone(),
                            format!("{} probe failed: {message}", kind.name()),
                        ));
                    }
                    if tracker.failed && !was_failed && kind != Kind::Readiness {
                        out.liveness_failed.insert((c.name.clone(), attempt));
                    }
                }
                if kind == Kind::Readiness && tracker.passing {
                    out.ready.insert(c.name.clone());
                }
            }
        }
        out
    }
}

/// Where one container's probes go: the pod's address for network probes, the container
/// itself (through the runtime's exec, as `kubectl exec` does) for exec probes.
pub struct Target<'a, R> {
    pub ip: Ipv4Addr,
    pub runtime: &'a R,
    pub key: &'a ContainerKey,
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
pub async fn check<R: ContainerRuntime>(
    probe: &Probe,
    c: &Container,
    target: &Target<'_, R>,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &probe.exec {
        let command = e.command.as_deref().unwrap_or_default();
        return exec_probe(target.runtime, target.key, command, timeout).await;
    }
    if let Some(t) = &probe.tcp_socket {
        let host = t
            .host
            .as_deref()
            .and_then(|h| h.parse::<IpAddr>().ok())
            .unwrap_or(IpAddr::V4(target.ip));
        let addr = SocketAddr::new(host, port(c, &t.port)?);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(h) = &probe.http_get {
        return http_probe(h, c, target.ip, timeout).await;
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by this agent".into());
    }
    Err("probe has no handler".into())
}

/// Runs `command` in the container with `timeout`: exit 0 passes; otherwise the
/// command's output (stdout, then stderr) is the failure message, as the kubelet reports
/// it. The runtime kills a command that runs out of time, with its process group.
pub async fn exec_probe<R: ContainerRuntime>(
    runtime: &R,
    key: &ContainerKey,
    command: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let request = ExecRequest {
        command: command.to_vec(),
        tty: false,
        stdin: false,
        timeout: Some(timeout),
    };
    let session = match runtime.exec(key, request).await {
        Ok(s) => s,
        Err(e) => return exec_verdict(command, Err(e), &[]),
    };
    let (mut stdout, mut stderr) = (session.stdout, session.stderr);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let ended = {
        // Output is read while the command runs (a full pipe would stall it) and, once it
        // ended, only for a moment more.
        let reads = async {
            tokio::join!(
                read_capped(&mut stdout, &mut out),
                read_capped(&mut stderr, &mut err)
            )
        };
        let exit = tokio::time::timeout(timeout + EXEC_GRACE, session.exit_code);
        tokio::pin!(reads, exit);
        let (ended, drained) = tokio::select! {
            ended = &mut exit => (ended, false),
            _ = &mut reads => ((&mut exit).await, true),
        };
        if !drained {
            let _ = tokio::time::timeout(OUTPUT_DRAIN, &mut reads).await;
        }
        // Past the backstop the helper is dropped, which kills it (kill_on_drop).
        ended.unwrap_or(Err(RuntimeError::ExecTimeout(timeout)))
    };
    out.extend_from_slice(&err);
    out.truncate(MAX_EXEC_OUTPUT);
    exec_verdict(command, ended, &out)
}

/// Reads `r` to its end, keeping at most [`MAX_EXEC_OUTPUT`] bytes in `buf`.
async fn read_capped(r: &mut Pin<Box<dyn AsyncRead + Send>>, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = MAX_EXEC_OUTPUT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// The verdict on an exec probe from how its command ended and what it printed.
pub fn exec_verdict(
    command: &[String],
    ended: Result<i32, RuntimeError>,
    output: &[u8],
) -> Result<(), String> {
    let quoted = format!("{:?}", command.join(" "));
    match ended {
        Ok(0) => Ok(()),
        Ok(code) => {
            let text = String::from_utf8_lossy(output);
            let text = text.trim_end();
            if text.is_empty() {
                Err(format!("command {quoted} exited with code {code}"))
            } else {
                Err(text.to_string())
            }
        }
        Err(RuntimeError::ExecTimeout(_)) => Err(format!("command {quoted} timed out")),
        Err(e) => Err(format!("command {quoted} could not run: {e}")),
    }
}

async fn http_probe(
    h: &HTTPGetAction,
    c: &Container,
    ip: Ipv4Addr,
    timeout: Duration,
) -> Result<(), String> {
    let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("unsupported scheme {scheme:?}"));
    }
    let host = h
        .host
        .as_deref()
        .and_then(|h| h.parse::<IpAddr>().ok())
        .unwrap_or(IpAddr::V4(ip));
    let addr = SocketAddr::new(host, port(c, &h.port)?);
    let path = match h.path.as_deref() {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
        None => "/".into(),
    };
    let request = http_request(
        &path,
        &addr.to_string(),
        h.http_headers.as_deref().unwrap_or_default(),
    );
    let url = format!("{scheme}://{addr}{path}");
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        if scheme == "https" {
            let connector = tokio_rustls::TlsConnector::from(insecure_tls()?);
            let tls = connector
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await?;
            exchange(tls, &request).await
        } else {
            exchange(tcp, &request).await
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
        Ok(Ok(head)) => match status_code(&head) {
            Some(code) if (200..400).contains(&code) => Ok(()),
            Some(code) => Err(format!("HTTP probe failed with statuscode: {code}")),
            None => Err(format!("Get \"{url}\": malformed HTTP response")),
        },
    }
}

/// Sends `request` and reads the response up to the end of its status line.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> std::io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut buf = vec![0u8; 256];
    let mut n = 0;
    while n < buf.len() {
        let read = stream.read(&mut buf[n..]).await?;
        n += read;
        if read == 0 || buf[..n].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// The probe's request head, as the kubelet builds it: the probe's httpHeaders, a Host
/// header of `default_host` unless they name one, and `User-Agent: kube-probe/1.33` and
/// `Accept: */*` unless they set those. Headers with line breaks are dropped: they
/// would split the request.
pub fn http_request(path: &str, default_host: &str, headers: &[HTTPHeader]) -> String {
    let clean: Vec<&HTTPHeader> = headers
        .iter()
        .filter(|h| !h.name.is_empty() && !(h.name.clone() + &h.value).contains(['\r', '\n']))
        .collect();
    let named = |n: &str| clean.iter().find(|h| h.name.eq_ignore_ascii_case(n));
    let host = named("host").map_or(default_host, |h| h.value.as_str());
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    if named("user-agent").is_none() {
        head.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    if named("accept").is_none() {
        head.push_str("Accept: */*\r\n");
    }
    for h in clean
        .iter()
        .filter(|h| !h.name.eq_ignore_ascii_case("host"))
    {
        head.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    head.push_str("Connection: close\r\n\r\n");
    head
}

/// A TLS client that checks nothing about the server's certificate, as the kubelet's
/// HTTPS probes do: pods serve with certificates the node has no reason to trust. The
/// handshake signatures are still verified against the presented key.
fn insecure_tls() -> std::io::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate; used only by HTTPS probes.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
    use crate::runtime::fake::{Call, ExecOutcome, FakeRuntime};
    use crate::runtime::{ContainerState, ContainerStatus};
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, PodSpec, TCPSocketAction};

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

    /// A fake runtime with one running container `web` of pod `u1`, and its key.
    fn running_web() -> (FakeRuntime, ContainerKey) {
        let rt = FakeRuntime::new();
        let key = ContainerKey {
            pod_uid: "u1".into(),
            container: "web".into(),
            attempt: 0,
        };
        rt.insert(ContainerStatus {
            key: key.clone(),
            state: ContainerState::Running {
                pid: 1,
                started_at: t(0),
            },
            image_rootfs: "/fake/image".into(),
            log_path: "/fake/log".into(),
        });
        (rt, key)
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
        let (rt, key) = running_web();
        let target = Target {
            ip: Ipv4Addr::LOCALHOST,
            runtime: &rt,
            key: &key,
        };
        let http = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(p as i32),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check(&http, &c, &target).await, Ok(()));
        let err = check(&http, &c, &target).await.unwrap_err();
        assert!(err.contains("statuscode: 500"), "{err}");
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(p as i32),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check(&tcp, &c, &target).await, Ok(()));
        let closed = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check(&closed, &c, &target).await.is_err());
        // Nothing of this went through the runtime.
        assert!(rt.calls().is_empty(), "{:?}", rt.calls());
    }

    #[test]
    fn request_heads() {
        let hd = |n: &str, v: &str| HTTPHeader {
            name: n.into(),
            value: v.into(),
        };
        // (headers, expected head lines between the request line and the blank line)
        let cases: Vec<(Vec<HTTPHeader>, Vec<&str>)> = vec![
            (
                vec![],
                vec![
                    "Host: 10.0.0.5:80",
                    "User-Agent: kube-probe/1.33",
                    "Accept: */*",
                    "Connection: close",
                ],
            ),
            (
                vec![hd("host", "example.test"), hd("X-Probe", "yes")],
                vec![
                    "Host: example.test",
                    "User-Agent: kube-probe/1.33",
                    "Accept: */*",
                    "X-Probe: yes",
                    "Connection: close",
                ],
            ),
            (
                vec![hd("User-Agent", "mine/1"), hd("accept", "text/plain")],
                vec![
                    "Host: 10.0.0.5:80",
                    "User-Agent: mine/1",
                    "accept: text/plain",
                    "Connection: close",
                ],
            ),
            (
                vec![hd("X-Evil", "a\r\nHost: other"), hd("", "empty name")],
                vec![
                    "Host: 10.0.0.5:80",
                    "User-Agent: kube-probe/1.33",
                    "Accept: */*",
                    "Connection: close",
                ],
            ),
        ];
        for (headers, want) in cases {
            let head = http_request("/ready?x=1", "10.0.0.5:80", &headers);
            let lines: Vec<&str> = head.split("\r\n").collect();
            assert_eq!(lines[0], "GET /ready?x=1 HTTP/1.1");
            assert_eq!(&lines[1..lines.len() - 2], want.as_slice(), "{headers:?}");
            assert!(head.ends_with("\r\n\r\n"));
        }
    }

    #[test]
    fn exec_verdicts() {
        let cmd = vec!["cat".to_string(), "/tmp/healthy".into()];
        let timeout = || Err(RuntimeError::ExecTimeout(Duration::from_secs(1)));
        let gone = || Err(RuntimeError::NotFound("u1_web_0".into()));
        type Case = (Result<i32, RuntimeError>, &'static [u8], Result<(), String>);
        let cases: Vec<Case> = vec![
            (Ok(0), b"", Ok(())),
            (Ok(0), b"noise on success\n", Ok(())),
            (
                Ok(1),
                b"cat: can't open '/tmp/healthy': No such file or directory\n",
                Err("cat: can't open '/tmp/healthy': No such file or directory".into()),
            ),
            (
                Ok(3),
                b"",
                Err("command \"cat /tmp/healthy\" exited with code 3".into()),
            ),
            (
                timeout(),
                b"partial",
                Err("command \"cat /tmp/healthy\" timed out".into()),
            ),
            (
                gone(),
                b"",
                Err(
                    "command \"cat /tmp/healthy\" could not run: container u1_web_0 not found"
                        .into(),
                ),
            ),
        ];
        for (ended, output, want) in cases {
            let label = format!("{ended:?} {output:?}");
            assert_eq!(exec_verdict(&cmd, ended, output), want, "{label}");
        }
    }

    fn exec_probe_spec(command: &[&str], failure_threshold: i32) -> Probe {
        Probe {
            exec: Some(ExecAction {
                command: Some(command.iter().map(|s| s.to_string()).collect()),
            }),
            period_seconds: Some(1),
            failure_threshold: Some(failure_threshold),
            timeout_seconds: Some(2),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn exec_probes_run_through_the_runtime() {
        let (rt, key) = running_web();
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    liveness_probe: Some(exec_probe_spec(&["cat", "/tmp/healthy"], 2)),
                    readiness_probe: Some(exec_probe_spec(&["true"], 1)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let fail = |msg: &str| ExecOutcome {
            stderr: msg.as_bytes().to_vec(),
            exit_code: 1,
            ..Default::default()
        };
        // Exec outcomes are played back in call order: startup none, liveness, readiness.
        for outcome in [
            ExecOutcome::default(),
            ExecOutcome::default(),
            fail("cat: can't open '/tmp/healthy'\n"),
            ExecOutcome {
                stdout: b"not yet\n".to_vec(),
                exit_code: 1,
                ..Default::default()
            },
            fail("cat: can't open '/tmp/healthy'\n"),
            ExecOutcome {
                timed_out: true,
                ..Default::default()
            },
        ] {
            rt.script_exec("web", outcome);
        }
        let running = vec![(key.clone(), t(0))];
        let ip = Ipv4Addr::LOCALHOST;
        let mut probes = PodProbes::default();

        let first = probes.run(&pod, ip, &rt, &running, t(1)).await;
        assert_eq!(first.ready, BTreeSet::from(["web".to_string()]));
        assert!(first.liveness_failed.is_empty());
        assert!(first.unhealthy_events.is_empty(), "{first:?}");

        let second = probes.run(&pod, ip, &rt, &running, t(2)).await;
        assert!(second.liveness_failed.is_empty(), "one failure of two");
        assert!(
            second.ready.is_empty(),
            "readiness failed once, threshold 1"
        );
        assert_eq!(
            second.unhealthy_events,
            vec![
                (
                    "web".to_string(),
                    "Liveness probe failed: cat: can't open '/tmp/healthy'".to_string()
                ),
                (
                    "web".to_string(),
                    "Readiness probe failed: not yet".to_string()
                ),
            ]
        );

        let third = probes.run(&pod, ip, &rt, &running, t(3)).await;
        assert_eq!(
            third.liveness_failed,
            BTreeSet::from([("web".to_string(), 0)])
        );
        assert_eq!(
            third.unhealthy_events[1],
            (
                "web".to_string(),
                "Readiness probe failed: command \"true\" timed out".to_string()
            )
        );
        let execs: Vec<Vec<String>> = rt
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Exec(k, command) if k == key => Some(command),
                _ => None,
            })
            .collect();
        let live = vec!["cat".to_string(), "/tmp/healthy".into()];
        let ready = vec!["true".to_string()];
        assert_eq!(
            execs,
            vec![
                live.clone(),
                ready.clone(),
                live.clone(),
                ready.clone(),
                live,
                ready
            ]
        );
    }

    #[tokio::test]
    async fn https_probes_skip_certificate_checks_and_send_the_host_header() {
        use std::sync::Mutex;
        let cert = rcgen::generate_simple_self_signed(vec!["pod.invalid".into()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = vec![0u8; 1024];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let code = if head.starts_with("GET /bad") {
                    503
                } else {
                    204
                };
                seen2.lock().unwrap().push(head);
                let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        let (rt, key) = running_web();
        let target = Target {
            ip: Ipv4Addr::LOCALHOST,
            runtime: &rt,
            key: &key,
        };
        let https = |path: &str| Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(p as i32),
                path: Some(path.into()),
                scheme: Some("HTTPS".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "Host".into(),
                    value: "web.example".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = Container::default();
        assert_eq!(check(&https("/ok"), &c, &target).await, Ok(()));
        let err = check(&https("/bad"), &c, &target).await.unwrap_err();
        assert_eq!(err, "HTTP probe failed with statuscode: 503");
        let heads = seen.lock().unwrap().clone();
        assert_eq!(heads.len(), 2, "{heads:?}");
        assert!(heads[0].starts_with("GET /ok HTTP/1.1\r\nHost: web.example\r\n"));
        // Plain HTTP against the TLS port fails instead of passing.
        let mut plain = https("/ok");
        plain.http_get.as_mut().unwrap().scheme = Some("HTTP".into());
        assert!(check(&plain, &c, &target).await.is_err());
    }
}
