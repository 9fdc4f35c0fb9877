//! A region of real `kith control` boxes (and `kith agent`s) on the hosts of a
//! [`netlab::Lab`](crate::netlab::Lab): for the region tests and the region benchmark.
//!
//! ```text
//!  test process ── https://172.29.N.i:6443 (each box's API, admin kubeconfig in its dir)
//!  host ci: kith control --listen 172.29.N.i:6443 --peer-listen 172.29.N.i:7443
//!           --data-dir <lab>/hosts/ci   [--join https://<first box>:6443 --token …]
//! ```
//! The leader is found the way an operator would: the `kith_raft_is_leader` series of each
//! box's `/metrics`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use kube::config::KubeConfigOptions;

use crate::netlab::Lab;
use crate::{client_from_kubeconfig, kith_bin, Kubectl};

/// The API port of every box (each host has its own address).
pub const API_PORT: u16 = 6443;
/// The Raft port of every box.
pub const PEER_PORT: u16 = 7443;
/// How long a box may take to serve after it starts (a joining box catches up first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Control boxes in a lab.
pub struct Region {
    pub lab: Lab,
    /// host → process name of its control box.
    boxes: BTreeMap<String, String>,
    token: Option<String>,
    /// Extra `kith control` flags for every box (timers).
    flags: Vec<String>,
}

impl Region {
    /// A lab with these hosts (no box started yet). `flags` go to every `kith control`.
    pub fn new(tag: &str, hosts: &[&str], flags: &[&str]) -> Result<Region> {
        let mut lab = Lab::new(tag)?;
        for h in hosts {
            lab.add_host(h)?;
        }
        Ok(Region {
            lab,
            boxes: BTreeMap::new(),
            token: None,
            flags: flags.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub fn data_dir(&self, host: &str) -> Result<PathBuf> {
        self.lab.host_dir(host)
    }

    pub fn kubeconfig(&self, host: &str) -> Result<PathBuf> {
        Ok(self.data_dir(host)?.join("kubeconfig"))
    }

    pub fn url(&self, host: &str) -> Result<String> {
        Ok(format!("https://{}:{API_PORT}", self.lab.addr(host)?))
    }

    /// The control boxes started so far (hosts).
    pub fn boxes(&self) -> Vec<String> {
        self.boxes.keys().cloned().collect()
    }

    fn args(&self, host: &str, join: Option<(&str, &str)>) -> Result<Vec<String>> {
        let ip = self.lab.addr(host)?;
        let mut args = vec![
            "control".to_string(),
            "--data-dir".into(),
            self.data_dir(host)?.display().to_string(),
            "--listen".into(),
            format!("{ip}:{API_PORT}"),
            "--peer-listen".into(),
            format!("{ip}:{PEER_PORT}"),
        ];
        if let Some((server, token)) = join {
            args.extend([
                "--join".into(),
                server.to_string(),
                "--token".into(),
                token.to_string(),
            ]);
        }
        args.extend(self.flags.iter().cloned());
        Ok(args)
    }

    /// Start the first box on `host`, founding the region; returns once it serves.
    pub async fn found(&mut self, host: &str) -> Result<()> {
        let args = self.args(host, None)?;
        self.start(host, args).await?;
        self.token = Some(self.create_token(host)?);
        Ok(())
    }

    /// `kith token create` on the (running) box of `host`: a new join token, valid on
    /// every box of the region.
    pub fn create_token(&self, host: &str) -> Result<String> {
        crate::kith_token(&self.data_dir(host)?, &[])
    }

    /// The region's join token (for boxes and agents).
    pub fn token(&self) -> Result<String> {
        self.token.clone().context("found the region first")
    }

    /// Start a box on `host` that joins through the box on `through`; returns once it
    /// serves (it is a voter by then).
    pub async fn join(&mut self, host: &str, through: &str) -> Result<()> {
        let token = self.token()?;
        self.join_with(host, through, &token).await
    }

    /// [`Region::join`] with a given join token.
    pub async fn join_with(&mut self, host: &str, through: &str, token: &str) -> Result<()> {
        let server = self.url(through)?;
        let args = self.args(host, Some((&server, token)))?;
        self.start(host, args).await
    }

    async fn start(&mut self, host: &str, args: Vec<String>) -> Result<()> {
        let name = format!("kith-{host}");
        self.lab.spawn(
            host,
            &name,
            kith_bin(),
            &args,
            &[("KITH_LOG", "info,openraft=warn")],
        )?;
        self.boxes.insert(host.to_string(), name);
        self.wait_ready(host).await
    }

    fn proc_name(&self, host: &str) -> Result<String> {
        self.boxes
            .get(host)
            .cloned()
            .with_context(|| format!("no control box on {host}"))
    }

    /// Wait until the box on `host` answers `/readyz` with `ok`.
    pub async fn wait_ready(&mut self, host: &str) -> Result<()> {
        let name = self.proc_name(host)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("kubeconfig not written yet");
        loop {
            if !self.lab.running(&name) {
                bail!(
                    "{name} exited while starting; log:\n{}",
                    self.lab.log(&name)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not serve within {START_TIMEOUT:?}: {last}; log:\n{}",
                    self.lab.log(&name)
                );
            }
            if self.kubeconfig(host)?.is_file() {
                match tokio::time::timeout(Duration::from_secs(5), self.get_raw(host, "/readyz"))
                    .await
                {
                    Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                    Ok(Ok(body)) => last = format!("/readyz answered {body:?}"),
                    Ok(Err(e)) => last = format!("/readyz: {e:#}"),
                    Err(_) => last = "/readyz timed out".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A kube-rs client of the box on `host` (admin).
    pub async fn client(&self, host: &str) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig(host)?, &KubeConfigOptions::default()).await
    }

    /// GET a raw path of the box on `host`, as admin.
    pub async fn get_raw(&self, host: &str, path: &str) -> Result<String> {
        let client = self.client(host).await?;
        let req = http::Request::get(path).body(Vec::new())?;
        Ok(client.request_text(req).await?)
    }

    /// The value of an unlabelled series in the box's `/metrics`.
    pub async fn metric(&self, host: &str, name: &str) -> Result<f64> {
        let text = self.get_raw(host, "/metrics").await?;
        metric_value(&text, name).with_context(|| format!("no {name} in {host}'s /metrics"))
    }

    /// The host whose box leads, once every running box (but `except`) agrees on one.
    pub async fn leader(&self, except: &[&str]) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut leaders = Vec::new();
            for host in self.boxes.keys().filter(|h| !except.contains(&h.as_str())) {
                if let Ok(Ok(v)) = tokio::time::timeout(
                    Duration::from_secs(3),
                    self.metric(host, "kith_raft_is_leader"),
                )
                .await
                {
                    if v == 1.0 {
                        leaders.push(host.clone());
                    }
                }
            }
            if leaders.len() == 1 {
                return Ok(leaders.remove(0));
            }
            if Instant::now() > deadline {
                bail!("no single leader among the boxes: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs a pinned kubectl against the box on `host`.
    pub async fn kubectl(
        &self,
        host: &str,
        version: Kubectl,
        args: &[&str],
    ) -> Result<std::process::Output> {
        let out = tokio::process::Command::new(version.path())
            .args(args)
            .env("KUBECONFIG", self.kubeconfig(host)?)
            .env(
                "KUBECACHEDIR",
                self.lab.dir().join(format!("kube-cache-{host}")),
            )
            .kill_on_drop(true)
            .output()
            .await
            .context("run kubectl")?;
        Ok(out)
    }

    /// Like [`Region::kubectl`], requiring success; stdout.
    pub async fn kubectl_ok(&self, host: &str, version: Kubectl, args: &[&str]) -> Result<String> {
        let out = self.kubectl(host, version, args).await?;
        if !out.status.success() {
            bail!(
                "kubectl {} on {host}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// SIGTERM the box on `host` (SIGKILL after the lab's grace period), e.g. to free the
    /// hosts for another server in the same lab.
    pub fn stop(&mut self, host: &str) -> Result<()> {
        let name = self.proc_name(host)?;
        self.lab.stop(&name).map(drop)
    }

    pub fn kill9(&mut self, host: &str) -> Result<()> {
        let name = self.proc_name(host)?;
        self.lab.kill9(&name)
    }

    /// Start the box on `host` again with the command it had (`--join` is ignored by a box
    /// that already belongs to the region).
    pub async fn restart(&mut self, host: &str) -> Result<()> {
        let name = self.proc_name(host)?;
        self.lab.restart(&name)?;
        self.wait_ready(host).await
    }

    pub fn running(&mut self, host: &str) -> Result<bool> {
        let name = self.proc_name(host)?;
        Ok(self.lab.running(&name))
    }

    /// `kith control leave` for the box on `host`.
    pub fn leave(&self, host: &str) -> Result<()> {
        let out = std::process::Command::new(kith_bin())
            .args(["control", "leave", "--data-dir"])
            .arg(self.data_dir(host)?)
            .output()
            .context("kith control leave")?;
        if !out.status.success() {
            bail!(
                "kith control leave: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// The value of the first sample named exactly `name` (no labels) in a Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_value_table() {
        let text = "# HELP kith_raft_is_leader x\nkith_raft_is_leader 1\nkith_raft_is_leader_other 0\nkith_raft_term 3\nkith_raft_members{a=\"b\"} 4\n";
        assert_eq!(metric_value(text, "kith_raft_is_leader"), Some(1.0));
        assert_eq!(metric_value(text, "kith_raft_term"), Some(3.0));
        assert_eq!(metric_value(text, "kith_raft_members"), None);
        assert_eq!(metric_value(text, "nope"), None);
    }
}
