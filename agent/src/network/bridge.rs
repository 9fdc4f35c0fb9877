//! The real pod network: a Linux bridge, a named network namespace and a veth pair per
//! pod, addresses from [`super::ipam`], NAT and hostPorts in nftables. The commands come
//! from [`super::plan`] and run through a [`CommandRunner`], so the whole flow can be
//! checked with a recording runner and no root.

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::ipam::Ipam;
use super::plan::{self, Cmd};
use super::{Error, Ipv4Net, PodNet, PodNetRequest, PodNetwork, Result};

/// What a finished command left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs commands; the real one spawns them, a fake records them.
pub trait CommandRunner: Send + Sync {
    fn run(&self, cmd: &Cmd) -> impl Future<Output = Result<Output>> + Send;
}

/// Runs `ip`, `nft` and `sysctl` on the host.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostRunner;

impl CommandRunner for HostRunner {
    async fn run(&self, cmd: &Cmd) -> Result<Output> {
        let spawn_err = |source| Error::Spawn {
            command: cmd.to_string(),
            source,
        };
        let mut child = tokio::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(input), Some(mut stdin)) = (&cmd.stdin, child.stdin.take()) {
            stdin.write_all(input.as_bytes()).await.map_err(spawn_err)?;
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `cmd` and returns its stdout, treating a tolerated failure as success.
async fn exec<R: CommandRunner>(runner: &R, cmd: &Cmd) -> Result<String> {
    let out = runner.run(cmd).await?;
    if out.success {
        return Ok(out.stdout);
    }
    if cmd.tolerate.is_some_and(|t| out.stderr.contains(t)) {
        return Ok(String::new());
    }
    Err(Error::Command {
        command: cmd.to_string(),
        stderr: out.stderr,
    })
}

/// Where and how the bridge network lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The agent's data directory; allocations go to `<data_dir>/network/ipam`.
    pub data_dir: PathBuf,
    /// The bridge's name, `kith0` by default.
    pub bridge: String,
    /// The node's podCIDR.
    pub pod_cidr: Ipv4Net,
    /// The nftables table (family ip) kith owns, `kith` by default.
    pub nft_table: String,
}

impl BridgeConfig {
    /// The defaults for `data_dir` and `pod_cidr`: bridge `kith0`, table `ip kith`.
    pub fn new(data_dir: impl Into<PathBuf>, pod_cidr: Ipv4Net) -> BridgeConfig {
        BridgeConfig {
            data_dir: data_dir.into(),
            bridge: "kith0".into(),
            pod_cidr,
            nft_table: "kith".into(),
        }
    }

    fn ipam_dir(&self) -> PathBuf {
        self.data_dir.join("network").join("ipam")
    }
}

/// Pod networks on a bridge of this box.
#[derive(Debug)]
pub struct BridgeNetwork<R = HostRunner> {
    cfg: BridgeConfig,
    ipam: Ipam,
    runner: R,
}

impl BridgeNetwork<HostRunner> {
    pub fn new(cfg: BridgeConfig) -> Result<Self> {
        Self::with_runner(cfg, HostRunner)
    }
}

impl<R: CommandRunner> BridgeNetwork<R> {
    pub fn with_runner(cfg: BridgeConfig, runner: R) -> Result<Self> {
        let ipam = Ipam::open(cfg.ipam_dir(), cfg.pod_cidr)?;
        Ok(BridgeNetwork { cfg, ipam, runner })
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    fn pod_net(&self, pod_uid: &str, ip: std::net::Ipv4Addr) -> PodNet {
        PodNet {
            pod_uid: pod_uid.to_string(),
            netns_path: PathBuf::from(plan::NETNS_DIR).join(plan::names(pod_uid).netns),
            ip,
            gateway: self.cfg.pod_cidr.gateway(),
        }
    }

    async fn build(&self, req: &PodNetRequest, ip: std::net::Ipv4Addr) -> Result<()> {
        let c = &self.cfg;
        for cmd in plan::host_commands(&c.bridge, &c.nft_table, &c.pod_cidr) {
            exec(&self.runner, &cmd).await?;
        }
        let names = plan::names(&req.pod_uid);
        for cmd in plan::pod_commands(&c.bridge, &names, ip, &c.pod_cidr) {
            exec(&self.runner, &cmd).await?;
        }
        if let Some(script) = plan::hostport_script(&c.nft_table, &req.pod_uid, ip, &req.host_ports)
        {
            let cmd = Cmd {
                program: "nft".into(),
                args: vec!["-f".into(), "-".into()],
                stdin: Some(script),
                tolerate: None,
            };
            exec(&self.runner, &cmd).await?;
        }
        Ok(())
    }

    async fn remove(&self, pod_uid: &str) -> Result<()> {
        let names = plan::names(pod_uid);
        for cmd in plan::teardown_commands(&names) {
            exec(&self.runner, &cmd).await?;
        }
        let table = &self.cfg.nft_table;
        let listing = exec(&self.runner, &plan::list_rules(table)).await?;
        for (chain, handle) in plan::pod_rules(&listing, pod_uid)? {
            exec(&self.runner, &plan::delete_rule(table, &chain, handle)).await?;
        }
        // The address goes last: freed earlier, a new pod could get it while the old
        // interface still holds it.
        self.ipam.release(pod_uid)
    }
}

impl<R: CommandRunner> PodNetwork for BridgeNetwork<R> {
    async fn setup(&self, req: &PodNetRequest) -> Result<PodNet> {
        plan::check_uid(&req.pod_uid)?;
        if let Some(ip) = self.ipam.lookup(&req.pod_uid)? {
            let existing = self.pod_net(&req.pod_uid, ip);
            if existing.netns_path.exists() {
                return Ok(existing);
            }
            // Half-built by an agent that died midway: start over.
            self.remove(&req.pod_uid).await?;
        }
        let ip = self.ipam.allocate(&req.pod_uid)?;
        if let Err(e) = self.build(req, ip).await {
            if let Err(cleanup) = self.remove(&req.pod_uid).await {
                tracing::warn!(pod = %req.pod_uid, error = %cleanup, "cleaning up a failed pod network");
            }
            return Err(e);
        }
        tracing::debug!(pod = %req.pod_uid, %ip, "pod network ready");
        Ok(self.pod_net(&req.pod_uid, ip))
    }

    async fn teardown(&self, pod_uid: &str) -> Result<()> {
        plan::check_uid(pod_uid)?;
        self.remove(pod_uid).await
    }

    async fn list(&self) -> Result<Vec<PodNet>> {
        Ok(self
            .ipam
            .entries()?
            .into_iter()
            .map(|(ip, uid)| self.pod_net(&uid, ip))
            .collect())
    }
}

/// A runner that records every command and answers from a script, for tests.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
pub struct RecordingRunner {
    state: std::sync::Mutex<RecordingState>,
}

#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
struct RecordingState {
    ran: Vec<Cmd>,
    /// (prefix of the command line, answer): the first match answers, once.
    answers: Vec<(String, Output)>,
}

#[cfg(any(test, feature = "test-util"))]
impl RecordingRunner {
    /// The next command whose command line starts with `prefix` gets `out`.
    pub fn answer(&self, prefix: &str, out: Output) {
        let mut s = self.state.lock().expect("runner lock");
        s.answers.push((prefix.to_string(), out));
    }

    /// The next command starting with `prefix` fails with `stderr`.
    pub fn fail(&self, prefix: &str, stderr: &str) {
        self.answer(
            prefix,
            Output {
                success: false,
                stdout: String::new(),
                stderr: stderr.to_string(),
            },
        );
    }

    /// Every command run so far, in order.
    pub fn ran(&self) -> Vec<Cmd> {
        self.state.lock().expect("runner lock").ran.clone()
    }

    /// Forgets the commands run so far.
    pub fn clear(&self) {
        self.state.lock().expect("runner lock").ran.clear();
    }
}

#[cfg(any(test, feature = "test-util"))]
impl CommandRunner for RecordingRunner {
    async fn run(&self, cmd: &Cmd) -> Result<Output> {
        let mut s = self.state.lock().expect("runner lock");
        s.ran.push(cmd.clone());
        let line = cmd.to_string();
        let out = match s.answers.iter().position(|(p, _)| line.starts_with(p)) {
            Some(i) => s.answers.remove(i).1,
            None => Output {
                success: true,
                ..Output::default()
            },
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{HostPort, Protocol};

    fn net(dir: &std::path::Path) -> BridgeNetwork<RecordingRunner> {
        let mut cfg = BridgeConfig::new(dir, "10.244.3.0/24".parse().unwrap());
        cfg.bridge = "kt0".into();
        cfg.nft_table = "kt".into();
        BridgeNetwork::with_runner(cfg, RecordingRunner::default()).unwrap()
    }

    fn req(uid: &str, ports: Vec<HostPort>) -> PodNetRequest {
        PodNetRequest {
            pod_uid: uid.into(),
            namespace: "default".into(),
            name: "web".into(),
            host_ports: ports,
        }
    }

    fn lines(r: &RecordingRunner) -> Vec<String> {
        r.ran().iter().map(|c| c.to_string()).collect()
    }

    #[tokio::test]
    async fn setup_runs_host_then_pod_then_hostports() {
        let dir = tempfile::tempdir().unwrap();
        let n = net(dir.path());
        // An existing bridge is fine.
        n.runner()
            .fail("ip link add kt0", "RTNETLINK answers: File exists");
        let port = HostPort {
            container_port: 80,
            host_port: 8080,
            protocol: Protocol::Tcp,
            host_ip: None,
        };
        let got = n.setup(&req("u1", vec![port])).await.unwrap();
        assert_eq!(got.ip, "10.244.3.2".parse::<std::net::Ipv4Addr>().unwrap());
        assert_eq!(
            got.gateway,
            "10.244.3.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        let names = plan::names("u1");
        assert_eq!(
            got.netns_path,
            PathBuf::from("/run/netns").join(&names.netns)
        );
        let ran = n.runner().ran();
        let mut want = plan::host_commands("kt0", "kt", &n.config().pod_cidr);
        want.extend(plan::pod_commands(
            "kt0",
            &names,
            got.ip,
            &n.config().pod_cidr,
        ));
        assert_eq!(ran[..want.len()], want[..]);
        assert_eq!(ran.len(), want.len() + 1);
        let hostports = ran.last().unwrap().stdin.as_deref().unwrap();
        assert!(hostports.contains("dnat to 10.244.3.2:80 comment \"kith-pod:u1\""));
        assert_eq!(n.list().await.unwrap(), vec![got]);
    }

    #[tokio::test]
    async fn failed_setup_cleans_up_and_frees_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let n = net(dir.path());
        n.runner().fail(
            "ip link add kv",
            "RTNETLINK answers: Operation not permitted",
        );
        let err = n.setup(&req("u1", vec![])).await.unwrap_err();
        assert!(
            matches!(&err, Error::Command { stderr, .. } if stderr.contains("not permitted")),
            "{err}"
        );
        let names = plan::names("u1");
        let ran = lines(n.runner());
        let tail = &ran[ran.len() - 3..];
        assert_eq!(
            tail,
            [
                format!("ip netns delete {}", names.netns),
                format!("ip link delete {}", names.host_veth),
                "nft -j -a list table ip kt".to_string(),
            ]
        );
        assert!(n.list().await.unwrap().is_empty());
        // The next pod gets the first address again.
        let next = n.setup(&req("u2", vec![])).await.unwrap();
        assert_eq!(next.ip, "10.244.3.2".parse::<std::net::Ipv4Addr>().unwrap());
    }

    #[tokio::test]
    async fn teardown_deletes_exactly_the_pods_rules_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let n = net(dir.path());
        n.setup(&req("u1", vec![])).await.unwrap();
        n.setup(&req("u2", vec![])).await.unwrap();
        n.runner().clear();
        let listing = r#"{"nftables": [
          {"rule": {"family": "ip", "table": "kt", "chain": "prerouting", "handle": 7, "comment": "kith-pod:u1"}},
          {"rule": {"family": "ip", "table": "kt", "chain": "prerouting", "handle": 8, "comment": "kith-pod:u2"}},
          {"rule": {"family": "ip", "table": "kt", "chain": "output", "handle": 9, "comment": "kith-pod:u1"}}
        ]}"#;
        n.runner().answer(
            "nft -j -a list",
            Output {
                success: true,
                stdout: listing.into(),
                stderr: String::new(),
            },
        );
        n.teardown("u1").await.unwrap();
        let names = plan::names("u1");
        assert_eq!(
            lines(n.runner()),
            [
                format!("ip netns delete {}", names.netns),
                format!("ip link delete {}", names.host_veth),
                "nft -j -a list table ip kt".to_string(),
                "nft delete rule ip kt prerouting handle 7".to_string(),
                "nft delete rule ip kt output handle 9".to_string(),
            ]
        );
        let left: Vec<String> = n
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.pod_uid)
            .collect();
        assert_eq!(left, ["u2"]);
        // Everything already gone: the tolerated errors make a second teardown succeed.
        n.runner().fail(
            "ip netns delete",
            "Cannot remove namespace file \"/run/netns/x\": No such file or directory",
        );
        n.runner()
            .fail("ip link delete", "Cannot find device \"kvx\"");
        n.runner()
            .fail("nft -j -a list", "Error: No such file or directory");
        n.teardown("u1").await.unwrap();
        // An unexpected failure is reported.
        n.runner().fail("ip netns delete", "Permission denied");
        assert!(n.teardown("u2").await.is_err());
    }

    #[tokio::test]
    async fn setup_rebuilds_a_network_whose_namespace_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let n = net(dir.path());
        let first = n.setup(&req("u1", vec![])).await.unwrap();
        n.runner().clear();
        // With a recording runner no namespace appears under /run/netns, as after a
        // reboot: the pod's old state is removed and its network built again.
        let again = n.setup(&req("u1", vec![])).await.unwrap();
        assert_eq!(again, first);
        let names = plan::names("u1");
        let ran = lines(n.runner());
        assert_eq!(ran[0], format!("ip netns delete {}", names.netns));
        assert!(ran.contains(&format!("ip netns add {}", names.netns)));
        assert_eq!(n.list().await.unwrap(), vec![first]);
    }

    #[tokio::test]
    async fn bad_uid_is_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let n = net(dir.path());
        assert!(matches!(
            n.setup(&req("a\"b", vec![])).await,
            Err(Error::PodUid(_))
        ));
        assert!(n.runner().ran().is_empty());
    }
}
