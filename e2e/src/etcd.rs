//! A 3-member etcd 3.4 cluster inside a [`Lab`]: the baseline the region benchmark
//! measures kith's Raft store against, on the same hosts and links.
//!
//! ```text
//!  test process ── HTTP/1.1 (JSON gateway, /v3/kv/put) ──► http://172.29.N.k:2379  (etcd on host k)
//!                                  etcd peers ◄── http://172.29.N.k:2380 ──► each other
//! ```
//!
//! Each member runs in its host's namespace with its data in `<host dir>/etcd`, fsync on
//! every commit (etcd's defaults, as kith's Raft log does). Every host has its own network
//! namespace, so the standard ports 2379/2380 never collide.
//!
//! Load generators should spread their clients over the members (client `i` on
//! `urls[i % urls.len()]`, see [`client_url`]) rather than send everything to the leader:
//! that is how clients of a region reach it (kubectl pointed at any box), and an etcd
//! follower forwards a proposal to the leader just as a kith follower forwards a write, so
//! both systems pay the same extra hop and the ratio stays fair.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use crate::netlab::Lab;

/// etcd's client port on every host.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port on every host.
pub const PEER_PORT: u16 = 2380;
/// How long the members may take to elect a leader and answer `/health`.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// The etcd binary: `$KITH_ETCD`, else `/usr/bin/etcd` (Debian `etcd-server`); `None` when
/// neither exists.
pub fn etcd_bin() -> Option<PathBuf> {
    let path = std::env::var_os("KITH_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    path.is_file().then_some(path)
}

/// The lab process name of the etcd member on `host`.
pub fn proc_name(host: &str) -> String {
    format!("etcd-{host}")
}

/// `--initial-cluster` for members named after their hosts.
pub fn initial_cluster(members: &[(&str, std::net::Ipv4Addr)]) -> String {
    members
        .iter()
        .map(|(name, addr)| format!("{name}=http://{addr}:{PEER_PORT}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The member URL client number `client` of a load should use: round robin over `urls`.
pub fn client_url(urls: &[String], client: usize) -> &str {
    &urls[client % urls.len()]
}

/// Starts one etcd member on each of `hosts` (lab processes `etcd-<host>`), forming one
/// cluster, and waits until every member answers `/health` with a leader elected.
/// Returns the client URLs, in the order of `hosts`.
pub async fn start_etcd_cluster(lab: &mut Lab, hosts: &[&str]) -> Result<Vec<String>> {
    let bin = etcd_bin().context("no etcd binary (set KITH_ETCD or install etcd-server)")?;
    let members = hosts
        .iter()
        .map(|h| Ok((*h, lab.addr(h)?)))
        .collect::<Result<Vec<_>>>()?;
    let cluster = initial_cluster(&members);
    let token = lab.name().to_string();
    let mut urls = Vec::new();
    for (host, addr) in &members {
        let client_url = format!("http://{addr}:{CLIENT_PORT}");
        let peer_url = format!("http://{addr}:{PEER_PORT}");
        let data = lab.host_dir(host)?.join("etcd");
        let args = [
            format!("--name={host}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={cluster}"),
            "--initial-cluster-state=new".into(),
            format!("--initial-cluster-token={token}"),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ];
        lab.spawn(host, &proc_name(host), &bin, &args, &[])?;
        urls.push(client_url);
    }
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    for (host, url) in hosts.iter().zip(&urls) {
        wait_healthy(lab, host, url, deadline).await?;
    }
    Ok(urls)
}

async fn wait_healthy(lab: &mut Lab, host: &str, url: &str, deadline: Instant) -> Result<()> {
    let name = proc_name(host);
    loop {
        if !lab.running(&name) {
            bail!("etcd on {host} exited; log:\n{}", lab.log(&name));
        }
        let last = match health(url).await {
            Ok(true) => return Ok(()),
            Ok(false) => "/health answered false".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "etcd on {host} not healthy within {HEALTHY_TIMEOUT:?} ({last}); log:\n{}",
                lab.log(&name)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the member at `url` reports itself healthy (which etcd 3.4 does only once the
/// cluster has a leader).
pub async fn health(url: &str) -> Result<bool> {
    let mut conn = EtcdConn::connect(url).await?;
    let (status, body) = conn.request("GET", "/health", Bytes::new()).await?;
    Ok(status == 200 && body.contains("\"true\""))
}

/// `http://ADDR:PORT` → the socket address (etcd URLs here are plain addresses).
pub fn url_addr(url: &str) -> Result<SocketAddr> {
    url.strip_prefix("http://")
        .map(|s| s.trim_end_matches('/'))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{url:?} is not http://ADDR:PORT"))
}

/// One HTTP/1.1 connection to an etcd member's JSON gateway.
pub struct EtcdConn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl EtcdConn {
    /// Connects to `http://ADDR:PORT`, failing after 5 s (a cut host never answers).
    pub async fn connect(url: &str) -> Result<EtcdConn> {
        let addr = url_addr(url)?;
        let tcp =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .with_context(|| format!("connect to {addr}: timed out"))?
                .with_context(|| format!("connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(EtcdConn {
            send,
            host: addr.to_string(),
        })
    }

    /// Status and body text.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, String)> {
        self.send.ready().await?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `PUT key = value` through `/v3/kv/put`.
    pub async fn put(&mut self, key: &str, value: &str) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({"key": b64.encode(key), "value": b64.encode(value)});
        let (status, text) = self
            .request("POST", "/v3/kv/put", Bytes::from(body.to_string()))
            .await?;
        if status != 200 {
            bail!("put {key}: HTTP {status}: {text}");
        }
        Ok(())
    }

    /// The value of `key` by a linearizable `/v3/kv/range` (etcd's default), `None` when
    /// absent.
    pub async fn get(&mut self, key: &str) -> Result<Option<String>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({"key": b64.encode(key)});
        let (status, text) = self
            .request("POST", "/v3/kv/range", Bytes::from(body.to_string()))
            .await?;
        if status != 200 {
            bail!("get {key}: HTTP {status}: {text}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("range answer {text:?}"))?;
        let Some(value) = v["kvs"][0]["value"].as_str() else {
            return Ok(None);
        };
        let bytes = b64
            .decode(value)
            .with_context(|| format!("value {value:?}"))?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn initial_cluster_names_every_member() {
        let members = [
            ("h1", Ipv4Addr::new(172, 29, 4, 1)),
            ("h2", Ipv4Addr::new(172, 29, 4, 2)),
        ];
        assert_eq!(
            initial_cluster(&members),
            "h1=http://172.29.4.1:2380,h2=http://172.29.4.2:2380"
        );
    }

    #[test]
    fn clients_spread_round_robin() {
        let urls: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        // (client, url)
        let table = [(0, "a"), (1, "b"), (2, "c"), (3, "a"), (64, "b")];
        for (client, want) in table {
            assert_eq!(client_url(&urls, client), want, "client {client}");
        }
    }

    #[test]
    fn urls_to_addresses() {
        // (url, address or None)
        let table = [
            ("http://172.29.4.1:2379", Some("172.29.4.1:2379")),
            ("http://127.0.0.1:2379/", Some("127.0.0.1:2379")),
            ("https://127.0.0.1:2379", None),
            ("http://localhost:2379", None),
        ];
        for (url, want) in table {
            assert_eq!(
                url_addr(url).ok(),
                want.map(|w| w.parse().unwrap()),
                "{url}"
            );
        }
    }
}
