//! The cluster's TLS configuration, exercised over real loopback sockets: rustls clients
//! that trust only the cluster CA, with the admin certificate, with none, and with a
//! certificate from some other CA; and kubectl itself with the written kubeconfig.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use kith_api::auth::{Authenticator, AUTHENTICATED_GROUP, MASTERS_GROUP};
use kith_control::pki::Pki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What the server saw of one connection.
#[derive(Debug)]
struct Seen {
    peer_cert: Option<Vec<u8>>,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
}

/// Accepts one TLS connection, records it, writes `hello`.
async fn serve_once(config: Arc<ServerConfig>) -> (SocketAddr, JoinHandle<std::io::Result<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = TlsAcceptor::from(config).accept(tcp).await?;
        let (_, conn) = tls.get_ref();
        let seen = Seen {
            peer_cert: conn.peer_certificates().map(|c| c[0].to_vec()),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: conn.protocol_version(),
        };
        tls.write_all(b"hello").await?;
        tls.shutdown().await?;
        Ok(seen)
    });
    (addr, handle)
}

fn client_config(
    ca_pem: &str,
    client_cert: Option<(&str, &str)>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects, completes the handshake and reads the server's greeting.
async fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    let mut got = String::new();
    tls.read_to_string(&mut got).await?;
    Ok(got)
}

fn common_name(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    cn.as_str().unwrap().to_string()
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test]
async fn admin_client_cert_is_verified_and_visible_to_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
    let admin = pki.admin_cert();
    for (versions, want) in [
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
    ] {
        let (addr, server) = serve_once(pki.server_config().unwrap()).await;
        let client = client_config(
            pki.ca_pem(),
            Some((&admin.cert_pem, &admin.key_pem)),
            versions,
        );
        assert_eq!(connect(addr, "127.0.0.1", client).await.unwrap(), "hello");
        let seen = server.await.unwrap().unwrap();
        assert_eq!(seen.version, Some(want));
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
        let peer = seen
            .peer_cert
            .expect("the server should see the client certificate");
        assert_eq!(common_name(&peer), "kith-admin");

        // The authenticator turns what rustls verified into the admin user.
        let auth = Authenticator::new(pki.tokens());
        let user = auth.authenticate(None, Some(&peer)).unwrap();
        assert_eq!(user.name, "kith-admin");
        assert_eq!(
            user.groups,
            vec![MASTERS_GROUP.to_string(), AUTHENTICATED_GROUP.to_string()]
        );
    }
}

#[tokio::test]
async fn no_client_cert_is_accepted_and_the_token_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
    let (addr, server) = serve_once(pki.server_config().unwrap()).await;
    let client = client_config(pki.ca_pem(), None, BOTH);
    assert_eq!(connect(addr, "localhost", client).await.unwrap(), "hello");
    let seen = server.await.unwrap().unwrap();
    assert!(seen.peer_cert.is_none());

    let auth = Authenticator::new(pki.tokens());
    let bearer = |t: &str| format!("Bearer {t}");
    let admin = auth
        .authenticate(Some(&bearer(pki.admin_token())), None)
        .unwrap();
    assert_eq!(admin.name, "kith-admin");
    assert!(admin.in_group(MASTERS_GROUP));
    let metrics = auth
        .authenticate(Some(&bearer(pki.metrics_token())), None)
        .unwrap();
    assert_eq!(metrics.name, "kith-metrics");
    assert!(metrics.in_group("kith:metrics-readers"));
    assert!(!metrics.in_group(MASTERS_GROUP));
    assert_ne!(pki.admin_token(), pki.metrics_token());
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
    let other = Pki::load_or_create(other_dir.path(), &[]).unwrap();
    assert_ne!(pki.ca_pem(), other.ca_pem());
    let foreign = other.admin_cert();
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let (addr, server) = serve_once(pki.server_config().unwrap()).await;
        let client = client_config(
            pki.ca_pem(),
            Some((&foreign.cert_pem, &foreign.key_pem)),
            versions,
        );
        // In TLS 1.3 the client may finish before the server has judged its certificate;
        // it then learns of the refusal on its first read. Either way no greeting arrives.
        assert!(connect(addr, "127.0.0.1", client).await.is_err());
        let err = server.await.unwrap().unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn serving_cert_covers_default_and_requested_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let sans = vec!["10.1.2.3".to_string(), "kith.example.org".to_string()];
    let pki = Pki::load_or_create(dir.path(), &sans).unwrap();
    let config = pki.server_config().unwrap();
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "kith.example.org",
    ] {
        let (addr, server) = serve_once(config.clone()).await;
        let client = client_config(pki.ca_pem(), None, BOTH);
        assert_eq!(
            connect(addr, name, client).await.unwrap(),
            "hello",
            "{name}"
        );
        server.await.unwrap().unwrap();
    }
    let (addr, _server) = serve_once(config).await;
    let client = client_config(pki.ca_pem(), None, BOTH);
    let err = connect(addr, "other.example.org", client)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

/// (Authorization header, client certificate CN) of one request.
type Recorded = (Option<String>, Option<String>);

/// A one-connection-at-a-time HTTP/1.1 server answering `/version`, recording the
/// Authorization header and client certificate CN of each request.
fn spawn_version_server(pki: &Pki) -> (SocketAddr, std::sync::mpsc::Receiver<Recorded>) {
    let mut config = (*pki.server_config().unwrap()).clone();
    // A plain HTTP/1.1 answer is all this server can write; don't let Go pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { return };
            let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).to_string();
            let auth = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Authorization: ")
                        .or_else(|| l.strip_prefix("authorization: "))
                })
                .map(str::to_string);
            let cn = tls.conn.peer_certificates().map(|c| common_name(&c[0]));
            // Recorded before answering, so it is in the channel once kubectl exits.
            if text.starts_with("GET /version") {
                let _ = tx.send((auth, cn));
            }
            let body = r#"{"major":"1","minor":"33","gitVersion":"v1.33.0-kith","platform":"linux/amd64"}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(resp.as_bytes());
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (addr, rx)
}

fn kubectl_version(kubeconfig: &Path, context: &str) -> std::process::Output {
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--context",
            context,
            "--request-timeout",
            "10s",
            "version",
            "-o",
            "json",
        ])
        .output()
        .unwrap()
}

#[test]
fn kubectl_trusts_the_ca_and_sends_cert_or_token() {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("kubectl not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
    let (addr, seen) = spawn_version_server(&pki);
    let kubeconfig = dir.path().join("kube/config");
    pki.write_kubeconfig(&kubeconfig, &format!("https://{addr}"))
        .unwrap();

    // kubectl asks for /version more than once; every request must carry the credential.
    let out = kubectl_version(&kubeconfig, "kith");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("v1.33.0-kith"));
    let requests: Vec<_> = seen.try_iter().collect();
    assert!(!requests.is_empty());
    for (auth, cn) in requests {
        assert_eq!((auth, cn.as_deref()), (None, Some("kith-admin")));
    }

    let out = kubectl_version(&kubeconfig, "kith-admin-token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests: Vec<_> = seen.try_iter().collect();
    assert!(!requests.is_empty());
    for (auth, cn) in requests {
        assert_eq!(
            (auth, cn),
            (Some(format!("Bearer {}", pki.admin_token())), None)
        );
    }
}
