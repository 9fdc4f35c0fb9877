//! A lab of "hosts" made of Linux network namespaces, for tests and benchmarks that need
//! several boxes (region tests: 3–5 control boxes and agents, each a real process).
//!
//! ```text
//!  root netns (the test process)                 bridge netns "<lab>-br" (bridge br0)
//!    veth <lab>-c  172.29.N.254/24 ── veth "root" ─┤
//!                                                 ├── veth "h1" ── netns "<lab>-<host1>"  eth0 172.29.N.1/24
//!                                                 ├── veth "h2" ── netns "<lab>-<host2>"  eth0 172.29.N.2/24
//!                                                 └── ...
//! ```
//!
//! Every lab claims its own /24 (`172.29.N.0/24`, N held with a lock file naming the test
//! process, so concurrent test processes never share one) and names everything it makes
//! `kl<NNN>-<tag>…`. The range overlaps neither the agents' pod CIDRs (10.100–249.0.0/16)
//! nor Service IPs (10.43.0.0/16). Hosts reach each other and the test process; there is
//! no route beyond the /24, so nothing leaves the lab.
//!
//! Processes run inside a host with `ip netns exec` (which execs the program: the pid is
//! the program's), stdout and stderr appended to `<lab dir>/logs/<proc>.log`. Faults:
//! [`Lab::cut`] (the host's link down), [`Lab::partition`] (nftables drops to and from
//! chosen peers while the test process still reaches the host), [`Lab::netem`] (delay,
//! jitter, loss on the host's outgoing packets: the `netem` qdisc, or where the kernel has
//! none, the NFQUEUE emulator of [`crate::linkem`]). [`Lab::run_in`] runs a closure on a
//! thread inside a host's namespace (sockets it makes are the host's).
//!
//! Dropping the lab kills every process in its namespaces, deletes its namespaces (and with
//! them their veths, nftables tables and qdiscs) and the root-side veth, and releases the
//! /24 — also when the test panics, in which case every process's log is printed first.
//! A test process killed by SIGKILL skips Drop; the next lab made on the machine removes
//! what it left (names under that /24's prefix, see [`stale_prefix`]) and frees the /24.
//! The methods are synchronous and short, except [`Lab::stop`] (up to [`STOP_GRACE`]).
//!
//! `ip netns exec` also gives each started process a mount namespace of its own (a slave
//! of the root one, with `/sys` remounted for the host's network): mounts a process makes
//! are not seen by the test or by the same command restarted. That is right for control
//! boxes. An agent, whose containers' mounts and pod namespaces the test must see and
//! clean up, runs in the test's mount namespace instead (`nsenter --net=/run/netns/<ns>`,
//! see `crate::agent`).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use kith_e2e::netlab::Lab;
//!
//! let mut lab = Lab::new("demo")?;
//! let a = lab.add_host("a")?;
//! lab.add_host("b")?;
//! lab.spawn("a", "web", "/bin/busybox", ["httpd", "-f", "-p", "8080"], &[])?;
//! lab.partition("a", &["b"])?; // b can't reach a; the test process still can
//! println!("http://{a}:8080/");
//! lab.heal("a")?;
//! lab.kill9("web")?;
//! lab.restart("web")?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

use crate::linkem::{self, LinkEmulator, LinkModel, LinkStats};
use crate::{claim_octet, dead_claims, try_claim, Claim};

/// The first two octets of every lab's /24.
pub const NET_PREFIX: [u8; 2] = [172, 29];
/// How long [`Lab::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The lock-file pool of the labs' third octets.
const CLAIM_POOL: &str = "kith-e2e-netlab";
/// The nftables table [`Lab::partition`] puts in a host's namespace.
const NFT_TABLE: &str = "kith_lab";
/// The host's interface inside its namespace.
const HOST_IF: &str = "eth0";
/// The bridge inside the bridge namespace.
const BRIDGE: &str = "br0";
/// Longest tag: `kl` + 3 digits + `-` + tag + `-c` must fit an interface name (15).
const MAX_TAG: usize = 6;
/// Longest host name (namespace names have no small limit; this keeps them readable).
const MAX_HOST_NAME: usize = 12;
/// Host addresses are .1 to .253; .254 is the test process.
const MAX_HOSTS: usize = 253;

/// The lab name for `tag` on `172.29.<octet>.0/24`: `kl<NNN>-<tag>`. Every name the lab
/// makes starts with [`stale_prefix`]`(octet)`, which only the holder of the octet uses.
pub fn lab_name(tag: &str, octet: u8) -> Result<String> {
    ensure!(
        !tag.is_empty()
            && tag.len() <= MAX_TAG
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "lab tag {tag:?} must be 1 to {MAX_TAG} lowercase letters or digits"
    );
    Ok(format!("{}{tag}", stale_prefix(octet)))
}

/// The prefix of every namespace and root interface a lab on `octet` makes.
pub fn stale_prefix(octet: u8) -> String {
    format!("kl{octet:03}-")
}

/// The root-side veth of a lab (at most 15 characters for a valid lab name).
pub fn root_if(lab: &str) -> String {
    format!("{lab}-c")
}

/// The bridge namespace of a lab.
pub fn bridge_netns(lab: &str) -> String {
    format!("{lab}-br")
}

/// A host's namespace.
pub fn host_netns(lab: &str, host: &str) -> String {
    format!("{lab}-{host}")
}

/// The bridge-side end of host number `index`'s veth (inside the bridge namespace).
pub fn bridge_port(index: usize) -> String {
    format!("h{index}")
}

/// Host number `index` (1-based) of the lab on `octet`: `172.29.<octet>.<index>`.
pub fn host_addr(octet: u8, index: usize) -> Result<Ipv4Addr> {
    ensure!(
        (1..=MAX_HOSTS).contains(&index),
        "a lab holds hosts 1 to {MAX_HOSTS}, not {index}"
    );
    Ok(Ipv4Addr::new(
        NET_PREFIX[0],
        NET_PREFIX[1],
        octet,
        index as u8,
    ))
}

/// The test process's address in the lab on `octet`: `172.29.<octet>.254`.
pub fn root_addr(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], octet, 254)
}

/// Host names: lowercase letters, digits and `-`, not `br` (the bridge namespace).
pub fn check_host_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= MAX_HOST_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name != "br",
        "host name {name:?} must be 1 to {MAX_HOST_NAME} lowercase letters, digits or '-', \
         and not \"br\""
    );
    Ok(())
}

/// The `tc qdisc replace` arguments after `dev <if> root` for a netem setting.
///
/// `limit` is raised from netem's default of 1,000 packets: with 100 ms of delay, a
/// benchmark sending more than 10,000 packets/s would otherwise see drops it did not ask for.
pub fn netem_args(delay_ms: u32, jitter_ms: u32, loss_pct: f64) -> Result<Vec<String>> {
    // The same settings the link emulator takes, refused for the same reasons.
    crate::linkem::LinkModel::new(delay_ms, jitter_ms, loss_pct)?;
    let mut args = vec!["netem".to_string(), "limit".into(), "100000".into()];
    if delay_ms > 0 {
        args.extend(["delay".into(), format!("{delay_ms}ms")]);
        if jitter_ms > 0 {
            args.push(format!("{jitter_ms}ms"));
        }
    }
    if loss_pct > 0.0 {
        args.extend(["loss".into(), format!("{loss_pct}%")]);
    }
    Ok(args)
}

/// The nftables script (for `nft -f -`) that makes a host drop every packet to or from
/// `peers`. It replaces an earlier partition of the same host: declaring the table first
/// makes the `delete` succeed whether or not it existed.
pub fn partition_ruleset(peers: &[Ipv4Addr]) -> String {
    let set = peers
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    if peers.is_empty() {
        return s;
    }
    s.push_str(&format!(
        "table inet {NFT_TABLE} {{\n\
         \tchain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
         \tchain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
         }}\n"
    ));
    s
}

/// Neither `tc` could create a netem qdisc (the kernel has no `sch_netem`, e.g. a minimal
/// VM kernel) nor could the NFQUEUE emulator start (no `iptables`, or no
/// `CONFIG_NETFILTER_NETLINK_QUEUE`). Tests can skip on it with
/// `err.downcast_ref::<NetemUnsupported>()`.
#[derive(Debug)]
pub struct NetemUnsupported(pub String);

impl fmt::Display for NetemUnsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no way to emulate a slow link: {}", self.0)
    }
}

impl std::error::Error for NetemUnsupported {}

struct Host {
    name: String,
    netns: String,
    addr: Ipv4Addr,
    partitioned: bool,
    link: Link,
}

/// How a host's egress is slowed, if it is.
enum Link {
    Plain,
    /// A netem qdisc on the host's interface.
    Qdisc,
    /// The kernel has no netem: the NFQUEUE emulator.
    Emulated(LinkEmulator),
}

/// A process run in a host, with what it takes to start it again.
struct Proc {
    host: String,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// A set of network-namespace hosts on one bridge; see the module doc.
pub struct Lab {
    name: String,
    octet: u8,
    claim: Option<Claim>,
    dir: tempfile::TempDir,
    /// Whether the bridge namespace and the root veth exist (for a partial `new`).
    bridge_made: bool,
    root_if_made: bool,
    hosts: Vec<Host>,
    procs: BTreeMap<String, Proc>,
}

impl Lab {
    /// Claims a free /24, removes whatever a dead earlier holder of it left behind, and
    /// creates the bridge namespace and the root-side veth (`172.29.N.254/24`).
    /// `tag` (1–6 lowercase letters or digits) names the lab for people reading `ip link`.
    pub fn new(tag: &str) -> Result<Lab> {
        // Validate before claiming anything.
        lab_name(tag, 0)?;
        let claim = claim_octet(CLAIM_POOL, 0..=255)?;
        let octet = claim.octet;
        let name = lab_name(tag, octet)?;
        let dir = match tempfile::Builder::new()
            .prefix(&format!("kith-lab-{name}-"))
            .tempdir()
        {
            Ok(d) => d,
            Err(e) => {
                claim.release();
                return Err(e).context("create the lab directory");
            }
        };
        let mut lab = Lab {
            name,
            octet,
            claim: Some(claim),
            dir,
            bridge_made: false,
            root_if_made: false,
            hosts: Vec::new(),
            procs: BTreeMap::new(),
        };
        // From here on, Drop undoes whatever was made.
        remove_stale(&stale_prefix(octet));
        remove_dead_labs();
        std::fs::create_dir_all(lab.dir.path().join("logs"))?;
        std::fs::create_dir_all(lab.dir.path().join("hosts"))?;
        let br = bridge_netns(&lab.name);
        ip(&["netns", "add", &br])?;
        lab.bridge_made = true;
        ip(&["-n", &br, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", BRIDGE, "up"])?;
        let rif = root_if(&lab.name);
        ip(&[
            "link", "add", &rif, "type", "veth", "peer", "name", "root", "netns", &br,
        ])?;
        lab.root_if_made = true;
        ip(&["-n", &br, "link", "set", "root", "master", BRIDGE, "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", root_addr(octet)),
            "dev",
            &rif,
        ])?;
        ip(&["link", "set", &rif, "up"])?;
        Ok(lab)
    }

    /// The lab's name (`kl<NNN>-<tag>`), the prefix of its namespaces.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test process's address on the lab's /24: what hosts use to reach it. A server
    /// in the test process must listen on it (or on 0.0.0.0), not on 127.0.0.1.
    pub fn root_addr(&self) -> Ipv4Addr {
        root_addr(self.octet)
    }

    /// The lock file holding the lab's /24 (removed on drop).
    pub fn lock_file(&self) -> Option<&Path> {
        self.claim.as_ref().map(|c| c.path.as_path())
    }

    /// The root-side veth's name.
    pub fn root_if(&self) -> String {
        root_if(&self.name)
    }

    /// A temporary directory for the lab (logs, host data); deleted on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The host names, in the order they were added.
    pub fn hosts(&self) -> Vec<&str> {
        self.hosts.iter().map(|h| h.name.as_str()).collect()
    }

    /// Adds a host: a namespace with loopback up and `eth0` on the bridge, holding the next
    /// address of the /24. Its data directory is [`Lab::host_dir`].
    pub fn add_host(&mut self, name: &str) -> Result<Ipv4Addr> {
        check_host_name(name)?;
        ensure!(
            self.host(name).is_err(),
            "lab {} already has a host {name}",
            self.name
        );
        let index = self.hosts.len() + 1;
        let addr = host_addr(self.octet, index)?;
        let netns = host_netns(&self.name, name);
        ip(&["netns", "add", &netns])?;
        self.hosts.push(Host {
            name: name.to_string(),
            netns: netns.clone(),
            addr,
            partitioned: false,
            link: Link::Plain,
        });
        let br = bridge_netns(&self.name);
        let port = bridge_port(index);
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &netns, "link", "add", HOST_IF, "type", "veth", "peer", "name", &port, "netns",
            &br,
        ])?;
        ip(&["-n", &br, "link", "set", &port, "master", BRIDGE, "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            HOST_IF,
        ])?;
        ip(&["-n", &netns, "link", "set", HOST_IF, "up"])?;
        std::fs::create_dir_all(self.host_dir(name)?)?;
        Ok(addr)
    }

    fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("lab {} has no host {name:?}", self.name))
    }

    fn host_mut(&mut self, name: &str) -> Result<&mut Host> {
        let lab = self.name.clone();
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .with_context(|| format!("lab {lab} has no host {name:?}"))
    }

    /// A host's address.
    pub fn addr(&self, host: &str) -> Result<Ipv4Addr> {
        Ok(self.host(host)?.addr)
    }

    /// A host's namespace name (for `ip netns exec`).
    pub fn netns(&self, host: &str) -> Result<&str> {
        Ok(&self.host(host)?.netns)
    }

    /// A data directory of the host's own (created by [`Lab::add_host`]).
    pub fn host_dir(&self, host: &str) -> Result<PathBuf> {
        self.host(host)?;
        Ok(self.dir.path().join("hosts").join(host))
    }

    /// Runs `f` to completion on a thread inside the host's network namespace: sockets it
    /// makes are the host's (bound to its address, routed by its eth0), while the test
    /// process's other threads stay where they are. For measuring the lab's links from the
    /// test without the start-up time of a program.
    pub fn run_in<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
        linkem::in_netns(self.netns(host)?, f)
    }

    /// Runs a command to completion inside a host and returns its output; the command
    /// should bound its own run time (`wget -T`, `ping -c -W`).
    pub fn exec<I, S>(&self, host: &str, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let netns = self.netns(host)?;
        let program = program.as_ref();
        Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {} in {host}", program.to_string_lossy()))
    }

    // -----------------------------------------------------------------------------------
    // Processes

    /// Starts `program` inside `host` as the process named `proc_name` (unique in the lab),
    /// with `envs` added to this process's environment; output goes to [`Lab::log`].
    pub fn spawn<I, S>(
        &mut self,
        host: &str,
        proc_name: &str,
        program: impl AsRef<OsStr>,
        args: I,
        envs: &[(&str, &str)],
    ) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.host(host)?;
        ensure!(
            !proc_name.is_empty()
                && proc_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "process name {proc_name:?} must be letters, digits, '-' or '_'"
        );
        ensure!(
            !self.procs.contains_key(proc_name),
            "lab {} already has a process {proc_name}",
            self.name
        );
        let proc = Proc {
            host: host.to_string(),
            program: program.as_ref().to_owned(),
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            log: self
                .dir
                .path()
                .join("logs")
                .join(format!("{proc_name}.log")),
            child: None,
            starts: 0,
        };
        self.procs.insert(proc_name.to_string(), proc);
        let result = self.start(proc_name);
        if result.is_err() {
            self.procs.remove(proc_name);
        }
        result
    }

    fn start(&mut self, proc_name: &str) -> Result<()> {
        let netns = {
            let p = self.proc(proc_name)?;
            self.host(&p.host)?.netns.clone()
        };
        let p = self.proc_mut(proc_name)?;
        p.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .with_context(|| format!("open {}", p.log.display()))?;
        writeln!(
            log,
            "==== {proc_name} start #{}: {} {} ====",
            p.starts,
            p.program.to_string_lossy(),
            p.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(&p.program)
            .args(&p.args)
            .envs(p.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", p.program.to_string_lossy()))?;
        p.child = Some(child);
        Ok(())
    }

    fn proc(&self, name: &str) -> Result<&Proc> {
        self.procs
            .get(name)
            .with_context(|| format!("lab {} has no process {name:?}", self.name))
    }

    fn proc_mut(&mut self, name: &str) -> Result<&mut Proc> {
        let lab = self.name.clone();
        self.procs
            .get_mut(name)
            .with_context(|| format!("lab {lab} has no process {name:?}"))
    }

    /// Whether the process is running (reaps it if it has exited).
    pub fn running(&mut self, proc_name: &str) -> bool {
        let Ok(p) = self.proc_mut(proc_name) else {
            return false;
        };
        match p.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                p.child = None;
                false
            }
            None => false,
        }
    }

    /// The pid of the process while it has not been reaped.
    pub fn pid(&self, proc_name: &str) -> Option<u32> {
        self.procs.get(proc_name)?.child.as_ref().map(Child::id)
    }

    /// Everything the process wrote, across restarts.
    pub fn log(&self, proc_name: &str) -> String {
        self.procs
            .get(proc_name)
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    /// SIGKILL (the process only, not what it started) and reap it.
    pub fn kill9(&mut self, proc_name: &str) -> Result<()> {
        ensure!(
            self.running(proc_name),
            "process {proc_name} is not running"
        );
        let p = self.proc_mut(proc_name)?;
        // The child stays in place until reaped, so Drop still reaps it if this fails.
        let child = p.child.as_mut().expect("running");
        child.kill().context("SIGKILL")?;
        child.wait().context("reap")?;
        p.child = None;
        Ok(())
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL; returns how it exited.
    pub fn stop(&mut self, proc_name: &str) -> Result<ExitStatus> {
        ensure!(
            self.running(proc_name),
            "process {proc_name} is not running"
        );
        let p = self.proc_mut(proc_name)?;
        let child = p.child.as_mut().expect("running");
        signal(child.id(), rustix::process::Signal::TERM)?;
        let deadline = Instant::now() + STOP_GRACE;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                child.kill().context("SIGKILL")?;
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        p.child = None;
        Ok(status)
    }

    /// Starts the same command again (stopping it first if it runs); the log is appended.
    pub fn restart(&mut self, proc_name: &str) -> Result<()> {
        if self.running(proc_name) {
            self.stop(proc_name)?;
        }
        self.start(proc_name)
    }

    // -----------------------------------------------------------------------------------
    // Faults

    /// Takes the host's link down: nobody (other hosts, the test process) reaches it and it
    /// reaches nobody. Open TCP connections are not reset; they just stop hearing back.
    pub fn cut(&mut self, host: &str) -> Result<()> {
        ip(&["-n", self.netns(host)?, "link", "set", HOST_IF, "down"])
    }

    /// Brings the host's link back up after [`Lab::cut`].
    pub fn restore(&mut self, host: &str) -> Result<()> {
        ip(&["-n", self.netns(host)?, "link", "set", HOST_IF, "up"])
    }

    /// Makes `host` drop every packet to or from the hosts in `from` (both directions, so
    /// a partition needs setting on one side only), while everyone else — the test process
    /// included — still reaches it. Replaces an earlier partition of `host`.
    pub fn partition(&mut self, host: &str, from: &[&str]) -> Result<()> {
        let peers = from
            .iter()
            .map(|h| self.addr(h))
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            !from.contains(&host),
            "a host cannot be partitioned from itself"
        );
        let netns = self.netns(host)?.to_string();
        run_with_stdin(
            Command::new("ip").args(["netns", "exec", &netns, "nft", "-f", "-"]),
            partition_ruleset(&peers).as_bytes(),
        )?;
        self.host_mut(host)?.partitioned = !peers.is_empty();
        Ok(())
    }

    /// Removes the host's partition (nothing to do if there is none).
    pub fn heal(&mut self, host: &str) -> Result<()> {
        if !self.host(host)?.partitioned {
            return Ok(());
        }
        let netns = self.netns(host)?.to_string();
        run(Command::new("ip").args([
            "netns", "exec", &netns, "nft", "delete", "table", "inet", NFT_TABLE,
        ]))?;
        self.host_mut(host)?.partitioned = false;
        Ok(())
    }

    /// Delays the host's outgoing packets by `delay_ms` ± `jitter_ms` and drops `loss_pct`
    /// percent of them (`tc qdisc replace dev eth0 root netem ...`). A later call replaces
    /// the setting; all zeros (or [`Lab::clear_netem`]) removes it.
    ///
    /// netem acts on one direction: the host's egress. So the round trip between this host
    /// and another host without netem, or the test process, grows by `delay_ms`; between two
    /// hosts that both have `delay_ms`, by `2 × delay_ms`. For links of RTT R between every
    /// pair of hosts, give every host `R / 2`. Loss likewise applies once per direction set.
    /// With jitter, netem may reorder packets (each is sent at its own drawn time).
    ///
    /// When the kernel has no netem qdisc, the same is done by a [`LinkEmulator`]: an
    /// iptables rule in the host's namespace queues every packet leaving by eth0 (loopback is
    /// untouched) to a thread of this process, which gives each its verdict at its time
    /// (uniform jitter, as netem without a `distribution`). Its counts, overflows included,
    /// are [`Lab::link_stats`].
    /// Fails with [`NetemUnsupported`] when neither works.
    pub fn netem(
        &mut self,
        host: &str,
        delay_ms: u32,
        jitter_ms: u32,
        loss_pct: f64,
    ) -> Result<()> {
        let args = netem_args(delay_ms, jitter_ms, loss_pct)?;
        let model = LinkModel::new(delay_ms, jitter_ms, loss_pct)?;
        if let Link::Emulated(em) = &self.host(host)?.link {
            if model.is_noop() {
                return self.clear_netem(host);
            }
            em.set_model(model);
            return Ok(());
        }
        let netns = self.netns(host)?.to_string();
        let out = Command::new("tc")
            .args(["-n", &netns, "qdisc", "replace", "dev", HOST_IF, "root"])
            .args(&args)
            .output()
            .context("run tc")?;
        if out.status.success() {
            self.host_mut(host)?.link = Link::Qdisc;
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !stderr.contains("Specified qdisc kind is unknown") {
            bail!("tc qdisc replace ... {}: {stderr}", args.join(" "));
        }
        if model.is_noop() {
            return Ok(());
        }
        // The host's position seeds its draws: the same lab draws the same way each run.
        let seed = self.hosts.iter().position(|h| h.name == host).unwrap_or(0) as u64;
        let em = LinkEmulator::start(&netns, HOST_IF, model, seed).map_err(|e| {
            NetemUnsupported(format!(
                "tc: {stderr}; the NFQUEUE emulator did not start either: {e:#}"
            ))
        })?;
        self.host_mut(host)?.link = Link::Emulated(em);
        Ok(())
    }

    /// Removes the host's netem setting (nothing to do if there is none): deletes the qdisc,
    /// or removes the emulator's rule and stops it (what it still holds leaves at once).
    pub fn clear_netem(&mut self, host: &str) -> Result<()> {
        let netns = self.netns(host)?.to_string();
        match std::mem::replace(&mut self.host_mut(host)?.link, Link::Plain) {
            Link::Plain => Ok(()),
            Link::Qdisc => {
                run(Command::new("tc").args(["-n", &netns, "qdisc", "del", "dev", HOST_IF, "root"]))
            }
            Link::Emulated(em) => em.stop().map(|_| ()),
        }
    }

    /// What the host's link emulator has done so far; `None` when the host's link is not
    /// emulated (no setting, or a netem qdisc).
    pub fn link_stats(&self, host: &str) -> Result<Option<LinkStats>> {
        Ok(match &self.host(host)?.link {
            Link::Emulated(em) => Some(em.stats()),
            Link::Plain | Link::Qdisc => None,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Emulator threads first: each holds its namespace open through its socket.
        for h in &mut self.hosts {
            drop(std::mem::replace(&mut h.link, Link::Plain));
        }
        for p in self.procs.values_mut() {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // What those processes started (shims, containers, daemons) is still in the
        // namespaces; everything in them is the lab's.
        let namespaces: Vec<String> = self
            .hosts
            .iter()
            .map(|h| h.netns.clone())
            .chain(self.bridge_made.then(|| bridge_netns(&self.name)))
            .collect();
        for ns in &namespaces {
            kill_netns_pids(ns);
        }
        if std::thread::panicking() {
            for (name, p) in &self.procs {
                eprintln!(
                    "===== lab {} process {name} on {} ({}) =====\n{}\n===== end of {name} =====",
                    self.name,
                    p.host,
                    p.log.display(),
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
        }
        if self.root_if_made {
            if let Err(e) = ip(&["link", "del", &root_if(&self.name)]) {
                eprintln!("lab {}: {e:#}", self.name);
            }
        }
        for ns in namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("lab {}: {e:#}", self.name);
            }
        }
        if let Some(claim) = self.claim.take() {
            claim.release();
        }
    }
}

/// Cleans up after every lab whose test process died without dropping it (SIGKILL, e.g.
/// a test timeout): claims its /24 — so nobody else is using the names — removes what it
/// left, and releases the /24.
fn remove_dead_labs() {
    for n in dead_claims(CLAIM_POOL) {
        if let Ok(Some(claim)) = try_claim(CLAIM_POOL, n) {
            remove_stale(&stale_prefix(n));
            remove_stale_dirs(&stale_prefix(n));
            claim.release();
        }
    }
}

/// Removes namespaces and root interfaces starting with `prefix` that a lab which held the
/// same /24 left behind when its process was killed (SIGKILL skips Drop). Only the holder
/// of the /24's lock file makes such names, and that is now this process.
fn remove_stale(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Lines look like `name` or `name (id: 3)`.
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if ns.starts_with(prefix) {
            kill_netns_pids(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `7: kl012-sel-c@if2: <...`
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(prefix) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// Removes the directories (hosts' data, logs) of a dead lab that held the /24 of `prefix`:
/// `kith-lab-<prefix>*` in the temp dir, which only the holder of that /24 makes.
fn remove_stale_dirs(prefix: &str) {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    let start = format!("kith-lab-{prefix}");
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&start) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// SIGKILLs every process in a namespace and waits (up to 5 s) until they are gone.
fn kill_netns_pids(netns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else {
        return;
    };
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for &pid in &pids {
        let _ = signal(pid, rustix::process::Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && pids.iter().any(|pid| {
            // A zombie waits for a parent outside the lab to reap it; it holds nothing.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(')').is_none_or(|(_, r)| !r.starts_with(" Z")))
        })
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).context("bad pid")?;
    rustix::process::kill_process(pid, sig)?;
    Ok(())
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {cmd:?}"))?;
    // Small inputs: the pipe buffer holds them, so writing before reading cannot block.
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input)
        .with_context(|| format!("write to {cmd:?}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}\ninput:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(input)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits() {
        // (tag, octet, lab name or None when the tag is refused)
        let table = [
            ("sel", 7, Some("kl007-sel")),
            ("region", 255, Some("kl255-region")),
            ("a1", 0, Some("kl000-a1")),
            ("", 1, None),
            ("toolong", 1, None),
            ("Up", 1, None),
            ("a-b", 1, None),
        ];
        for (tag, octet, want) in table {
            let got = lab_name(tag, octet).ok();
            assert_eq!(got.as_deref(), want, "tag {tag:?}");
            if let Some(name) = got {
                assert!(root_if(&name).len() <= 15, "{}", root_if(&name));
                assert!(name.starts_with(&stale_prefix(octet)));
            }
        }
        assert_eq!(bridge_netns("kl007-sel"), "kl007-sel-br");
        assert_eq!(host_netns("kl007-sel", "h1"), "kl007-sel-h1");
        assert_eq!(bridge_port(12), "h12");
    }

    #[test]
    fn address_plan() {
        // (octet, index, address or None)
        let table = [
            (29, 1, Some(Ipv4Addr::new(172, 29, 29, 1))),
            (0, 253, Some(Ipv4Addr::new(172, 29, 0, 253))),
            (5, 0, None),
            (5, 254, None),
        ];
        for (octet, index, want) in table {
            assert_eq!(host_addr(octet, index).ok(), want, "{octet} {index}");
        }
        assert_eq!(root_addr(9), Ipv4Addr::new(172, 29, 9, 254));
    }

    #[test]
    fn host_names() {
        // (name, accepted)
        let table = [
            ("h1", true),
            ("control-1", true),
            ("br", false),
            ("", false),
            ("H1", false),
            ("a_b", false),
            ("thirteen-char", false),
        ];
        for (name, ok) in table {
            assert_eq!(check_host_name(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn netem_arguments() {
        // (delay, jitter, loss, expected tail after "netem limit 100000", or None)
        let table: [(u32, u32, f64, Option<&str>); 7] = [
            (100, 0, 0.0, Some("delay 100ms")),
            (100, 20, 0.0, Some("delay 100ms 20ms")),
            (100, 20, 1.0, Some("delay 100ms 20ms loss 1%")),
            (0, 0, 0.5, Some("loss 0.5%")),
            (0, 0, 0.0, Some("")),
            (10, 20, 0.0, None),
            (10, 0, 101.0, None),
        ];
        for (delay, jitter, loss, want) in table {
            let got = netem_args(delay, jitter, loss).ok().map(|a| a.join(" "));
            let want = want.map(|w| format!("netem limit 100000 {w}").trim_end().to_string());
            assert_eq!(got, want, "{delay} {jitter} {loss}");
        }
    }

    #[test]
    fn partition_rules() {
        let two = partition_ruleset(&[Ipv4Addr::new(172, 29, 3, 2), Ipv4Addr::new(172, 29, 3, 3)]);
        assert_eq!(
            two,
            "table inet kith_lab\n\
             delete table inet kith_lab\n\
             table inet kith_lab {\n\
             \tchain input { type filter hook input priority 0; policy accept; ip saddr { 172.29.3.2, 172.29.3.3 } drop; }\n\
             \tchain output { type filter hook output priority 0; policy accept; ip daddr { 172.29.3.2, 172.29.3.3 } drop; }\n\
             }\n"
        );
        // No peers: the script only removes an earlier partition.
        assert_eq!(
            partition_ruleset(&[]),
            "table inet kith_lab\ndelete table inet kith_lab\n"
        );
    }
}
