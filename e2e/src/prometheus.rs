//! A real Prometheus (Debian's `/usr/bin/prometheus`) for tests: started on a free
//! loopback port with a given configuration, queried through its HTTP API, killed on drop
//! (its log printed when the test fails); and the credentials it scrapes kith with.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::Cluster;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus process on a free loopback port with its own storage; killed on drop,
/// its log printed if the test is failing.
pub struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    pub async fn start(dir: &Path, config: &str) -> Result<Prometheus> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {PROMETHEUS}"))?;
        let p = Prometheus { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = p.get("/-/ready").await {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready in 30 s; log:\n{}", p.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A plain HTTP/1.0 GET on loopback: status and body.
    pub async fn get(&self, path_and_query: &str) -> Result<(u16, String)> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        s.write_all(format!("GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status code")?;
        Ok((code, body.to_string()))
    }

    pub async fn api(&self, path_and_query: &str) -> Result<Value> {
        let (code, body) = self.get(path_and_query).await?;
        if code != 200 {
            bail!("{path_and_query}: HTTP {code}: {body}");
        }
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"].clone())
    }

    /// The values of an instant query, one per series.
    pub async fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>> {
        let q: String = url_encode(promql);
        let data = self.api(&format!("/api/v1/query?query={q}")).await?;
        Ok(data["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| {
                let v = r["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((r["metric"].clone(), v))
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "===== prometheus log =====\n{}\n===== end =====",
                self.log()
            );
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `kith token create --metrics`: the read-only token Prometheus scrapes with.
pub async fn metrics_token(data_dir: &Path) -> Result<String> {
    crate::kith_token(data_dir, &["--metrics"])
}

/// A kube-rs client with the kubeconfig's CA but this bearer token (or no credentials).
pub async fn client_with_token(c: &Cluster, token: Option<&str>) -> Result<kube::Client> {
    let mut kc = Kubeconfig::read_from(c.kubeconfig())?;
    for named in &mut kc.auth_infos {
        named.auth_info = Some(kube::config::AuthInfo {
            token: token.map(|t| t.to_string().into()),
            ..Default::default()
        });
    }
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

pub async fn get_code(client: &kube::Client, path: &str) -> Result<u16> {
    let req = http::Request::get(path).body(Vec::new())?;
    match client.request_text(req).await {
        Ok(_) => Ok(200),
        Err(kube::Error::Api(s)) => Ok(s.code),
        Err(e) => Err(e.into()),
    }
}
