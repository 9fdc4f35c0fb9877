//! The node's HTTPS port (agent::node_server) against the API server's client
//! (kith_api::remote_node::NodeClient), over real TLS on loopback: logs, exec check, exec
//! over the websocket, stats; and who is refused.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Result;
use futures::StreamExt;
use kith_agent::node_server::{self, NodeServer};
use kith_api::error::ApiError;
use kith_api::exec::{ExecStreams, ExecTarget, NodeExec};
use kith_api::node_metrics::{NodeStatsSource, NodeUsage, PodUsage, StatsFuture};
use kith_api::nodes::{ByteStream, LogQuery, LogTarget, NodeConnector};
use kith_api::remote_node::{ClientIdentity, NodeClient};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Result<Ca> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test-ca");
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    })
}

/// (cert, key) PEM signed by `ca`: a server cert for 127.0.0.1, or a client cert for `cn`.
fn leaf(ca: &Ca, cn: &str, server: bool) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let sans = if server {
        vec!["127.0.0.1".to_string()]
    } else {
        vec![]
    };
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A node with one pod: fixed logs, an exec that echoes stdin and exits 7 (an attach,
/// with no command, says so on stderr and ends with 0), fixed stats.
struct FakeNode;

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

impl NodeConnector for FakeNode {
    fn logs(&self, target: LogTarget, q: LogQuery) -> Fut<'_, ByteStream> {
        Box::pin(async move {
            let text = format!(
                "{} of {} tail={:?}\n",
                target.container, target.pod, q.tail_lines
            );
            let s = futures::stream::iter(vec![Ok(bytes::Bytes::from(text))]);
            Ok(Box::pin(s) as ByteStream)
        })
    }
}

impl NodeExec for FakeNode {
    fn check(&self, target: &ExecTarget) -> Fut<'_, ()> {
        let missing = target.pod.container == "missing";
        Box::pin(async move {
            if missing {
                return Err(ApiError::BadRequest(
                    "container missing is not running in pod p".into(),
                ));
            }
            Ok(())
        })
    }

    fn exec(&self, target: ExecTarget) -> Fut<'_, ExecStreams> {
        let attach = target.command.is_empty();
        Box::pin(async move {
            let (stdin_w, mut stdin_r) = tokio::io::duplex(1024);
            let (mut out_w, out_r) = tokio::io::duplex(1024);
            let streams = ExecStreams {
                stdin: Some(Box::pin(stdin_w)),
                stdout: Box::pin(out_r),
                stderr: Box::pin(std::io::Cursor::new(if attach {
                    b"attached\n".to_vec()
                } else {
                    b"warn\n".to_vec()
                })),
                resize: None,
                exit_code: Box::pin(async move {
                    let mut got = Vec::new();
                    let _ = stdin_r.read_to_end(&mut got).await;
                    let _ = out_w.write_all(&got).await;
                    drop(out_w);
                    Ok(if attach { 0 } else { 7 })
                }),
            };
            Ok(streams)
        })
    }
}

impl NodeStatsSource for FakeNode {
    fn nodes(&self) -> StatsFuture<'_, Vec<NodeUsage>> {
        Box::pin(async {
            Ok(vec![NodeUsage {
                name: "n1".into(),
                timestamp: jiff::Timestamp::UNIX_EPOCH,
                window: std::time::Duration::from_secs(10),
                cpu_nanocores: 5,
                memory_bytes: 6,
            }])
        })
    }

    fn pods(&self) -> StatsFuture<'_, Vec<PodUsage>> {
        Box::pin(async { Ok(vec![]) })
    }
}

struct Running {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(ca: &Ca) -> Result<Running> {
    let (cert, key) = leaf(ca, "system:node:n1", true)?;
    let tls = node_server::tls_config(&ca.pem, &cert, &key)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let fake = Arc::new(FakeNode);
    let mut metrics = prometheus_client::registry::Registry::default();
    kith_api::process_metrics::register(&mut metrics);
    let server = Arc::new(NodeServer {
        logs: fake.clone(),
        exec: fake.clone(),
        stats: fake,
        metrics: Arc::new(metrics),
    });
    let task = tokio::spawn(node_server::serve(
        listener,
        tls,
        server,
        std::future::pending(),
    ));
    Ok(Running { addr, task })
}

fn client(ca: &Ca, cn: &str) -> Result<NodeClient> {
    let (cert_pem, key_pem) = leaf(ca, cn, false)?;
    Ok(NodeClient::new(ClientIdentity {
        ca_pem: ca.pem.clone(),
        cert_pem,
        key_pem,
    })?)
}

fn target(container: &str) -> LogTarget {
    LogTarget {
        namespace: "ns".into(),
        pod: "p".into(),
        uid: "u".into(),
        node: "n1".into(),
        container: container.into(),
    }
}

#[tokio::test]
async fn the_api_server_gets_logs_exec_and_stats() -> Result<()> {
    let ca = ca()?;
    let node = start(&ca).await?;
    let api = client(&ca, "kith-apiserver")?;

    let q = LogQuery {
        tail_lines: Some(3),
        ..Default::default()
    };
    let mut logs = api.logs(node.addr, target("web"), q).await?;
    let mut text = Vec::new();
    while let Some(chunk) = logs.next().await {
        text.extend_from_slice(&chunk?);
    }
    assert_eq!(String::from_utf8(text)?, "web of p tail=Some(3)\n");

    let exec = |container: &str| ExecTarget {
        pod: target(container),
        command: vec!["cat".into()],
        stdin: true,
        tty: false,
    };
    let err = api.check(node.addr, &exec("missing")).await.unwrap_err();
    assert_eq!(err.code(), 400);
    assert!(err.to_string().contains("not running"), "{err}");
    api.check(node.addr, &exec("web")).await?;

    let mut s = api.exec(node.addr, exec("web")).await?;
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"echo me").await?;
    stdin.shutdown().await?;
    let (mut out, mut err) = (String::new(), String::new());
    s.stdout.read_to_string(&mut out).await?;
    s.stderr.read_to_string(&mut err).await?;
    assert_eq!((out.as_str(), err.as_str()), ("echo me", "warn\n"));
    assert_eq!(s.exit_code.await, Ok(7));

    // pods/attach crosses the hop as a target without a command.
    let attach = ExecTarget {
        command: vec![],
        ..exec("web")
    };
    api.check(node.addr, &attach).await?;
    let mut s = api.exec(node.addr, attach).await?;
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"typed").await?;
    stdin.shutdown().await?;
    let (mut out, mut err) = (String::new(), String::new());
    s.stdout.read_to_string(&mut out).await?;
    s.stderr.read_to_string(&mut err).await?;
    assert_eq!((out.as_str(), err.as_str()), ("typed", "attached\n"));
    assert_eq!(s.exit_code.await, Ok(0));

    let stats = api.stats(node.addr).await?;
    assert_eq!(stats.nodes.len(), 1);
    assert_eq!(stats.nodes[0].cpu_nanocores, 5);

    // /metrics in the format asked for: OpenMetrics for Prometheus, else text 0.0.4.
    let open = api
        .metrics(
            node.addr,
            Some("application/openmetrics-text;version=1.0.0"),
        )
        .await?;
    assert!(open
        .content_type
        .starts_with("application/openmetrics-text"));
    let open = String::from_utf8(open.body.to_vec())?;
    assert!(
        open.contains("process_open_fds ") && open.ends_with("# EOF\n"),
        "{open}"
    );
    let text = api.metrics(node.addr, None).await?;
    assert!(text.content_type.starts_with("text/plain; version=0.0.4"));
    assert!(!String::from_utf8(text.body.to_vec())?.contains("# EOF"));
    Ok(())
}

#[tokio::test]
async fn only_the_api_server_is_served() -> Result<()> {
    let ca = ca()?;
    let node = start(&ca).await?;

    // A node's certificate from the same CA: authenticated, but not the API server.
    let other_node = client(&ca, "system:node:n2")?;
    let err = other_node.stats(node.addr).await.unwrap_err();
    assert!(err.to_string().contains("refused the API server"), "{err}");

    // A certificate of another CA: the TLS handshake fails.
    let foreign = client(&self::ca()?, "kith-apiserver")?;
    assert!(foreign.stats(node.addr).await.is_err());

    // No certificate at all: refused too.
    let mut cfg = kube::Config::new(format!("https://{}", node.addr).parse()?);
    let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca.pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())?;
    cfg.root_cert = Some(vec![ca_der]);
    cfg.default_retry = false;
    let anonymous = kube::Client::try_from(cfg)?;
    let req = http::Request::get(kith_api::remote_node::STATS_PATH).body(Vec::new())?;
    assert!(anonymous.request_text(req).await.is_err());
    Ok(())
}
