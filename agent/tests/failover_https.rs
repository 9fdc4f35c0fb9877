//! agent::failover against real local HTTPS endpoints: a dead port, a box whose TLS
//! certificate is not the cluster's, a box answering 503 and two good boxes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use http::{Request, Response};
use http_body_util::Full;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA and a serving certificate for 127.0.0.1 signed by it (PEM).
struct Certs {
    ca_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

fn certs() -> Result<Certs> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &issuer)?;
    Ok(Certs {
        ca_der: ca_cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// An HTTPS server answering every request with a ConfigMap named after it, or 503.
struct Box_ {
    url: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Box_ {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(name: &str, certs: &Certs, status: u16) -> Result<Box_> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(certs.cert_pem.as_bytes())?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    let hits = Arc::new(AtomicUsize::new(0));
    let body = if status == 200 {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "code": status, "reason": "ServiceUnavailable", "message": "no quorum"})
    };
    let body = Arc::new(serde_json::to_vec(&body)?);
    let task = {
        let hits = Arc::clone(&hits);
        tokio::spawn(async move {
            // Connections live in this set: aborting the server ends them too.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let hits = Arc::clone(&hits);
                let body = Arc::clone(&body);
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req: Request<_>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let mut r = Response::new(Full::new(bytes::Bytes::from(body.to_vec())));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        })
    };
    Ok(Box_ { url, hits, task })
}

async fn dead_url() -> Result<String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(format!("https://{}", l.local_addr()?))
}

fn config(url: &str, ca_der: &[u8]) -> Result<kube::Config> {
    let mut cfg = kube::Config::new(url.parse()?);
    cfg.root_cert = Some(vec![ca_der.to_vec()]);
    Ok(cfg)
}

async fn get(client: &kube::Client) -> Result<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .get("any")
        .await?;
    Ok(cm.metadata.name.unwrap_or_default())
}

#[tokio::test]
async fn requests_skip_dead_foreign_and_quorumless_boxes() -> Result<()> {
    let cluster = certs()?;
    let foreign = certs()?;
    let dead = dead_url().await?;
    let impostor = serve("impostor", &foreign, 200).await?;
    let quorumless = serve("quorumless", &cluster, 503).await?;
    let a = serve("a", &cluster, 200).await?;
    let b = serve("b", &cluster, 200).await?;
    let urls = [&dead, &impostor.url, &quorumless.url, &a.url, &b.url];
    let configs = urls
        .iter()
        .map(|u| config(u, &cluster.ca_der))
        .collect::<Result<Vec<_>>>()?;
    let failover = kith_agent::failover::Failover::new(configs)?;
    let client = kube::Client::new(failover.clone(), "default");

    // The first request walks past the three bad boxes to `a`.
    assert_eq!(get(&client).await?, "a");
    assert!(
        failover.current().starts_with(&a.url),
        "{}",
        failover.current()
    );
    assert_eq!(
        impostor.hits.load(Ordering::SeqCst),
        0,
        "no request over bad TLS"
    );
    assert_eq!(quorumless.hits.load(Ordering::SeqCst), 1);
    // The next ones go straight to `a`.
    assert_eq!(get(&client).await?, "a");
    assert_eq!(quorumless.hits.load(Ordering::SeqCst), 1);
    assert_eq!(a.hits.load(Ordering::SeqCst), 2);

    // `a` goes away: the same client moves on to `b`.
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut answer = get(&client).await;
    if answer.is_err() {
        // A pooled connection to `a` may die mid-request (not a connect error, not
        // replayed); the request after it connects afresh and fails over.
        answer = get(&client).await;
    }
    assert_eq!(answer?, "b");
    assert!(failover.current().starts_with(&b.url));
    Ok(())
}

#[tokio::test]
async fn every_box_down_gives_the_last_error() -> Result<()> {
    let cluster = certs()?;
    let configs = vec![
        config(&dead_url().await?, &cluster.ca_der)?,
        config(&dead_url().await?, &cluster.ca_der)?,
    ];
    let client = kith_agent::failover::client(configs)?;
    let err = get(&client).await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("connect"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_single_quorumless_box_answers_its_503() -> Result<()> {
    let cluster = certs()?;
    let only = serve("only", &cluster, 503).await?;
    let client = kith_agent::failover::client(vec![config(&only.url, &cluster.ca_der)?])?;
    let err = get(&client).await.unwrap_err();
    assert!(
        matches!(&err.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 503),
        "{err:?}"
    );
    assert_eq!(only.hits.load(Ordering::SeqCst), 1, "no retries on one box");
    Ok(())
}
