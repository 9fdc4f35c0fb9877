//! A `kith agent` process of its own (not the in-process agent of `kith up`), joining a
//! cluster or region with a join token; on drop it is killed and everything it made
//! (containers, mounts, pod network, bridge) is removed, and on a panic its log printed.
//!
//! An agent may run on a lab host ([`AgentSpec::netns`]): it then joins only the host's
//! network namespace (`nsenter --net`), not a mount namespace of its own as `ip netns exec`
//! would give it, so its containers' mounts and pod namespaces stay where the test (and
//! the clean-up on drop, run inside the host's network namespace) can see them.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::{kith_bin, AgentOptions};

/// How to start one agent.
pub struct AgentSpec<'a> {
    /// `--server` URLs, in order of preference.
    pub servers: &'a [String],
    pub token: &'a str,
    pub dir: &'a Path,
    /// Node name and bridge.
    pub opts: &'a AgentOptions,
    /// `--node-ip` (default: the agent's address towards its first server).
    pub node_ip: Option<&'a str>,
    /// `--node-port`: each agent on one machine needs its own.
    pub node_port: u16,
    /// `--insecure-registry`: registries reached over plain HTTP that are not on loopback.
    pub insecure_registries: &'a [String],
    /// A lab host's network namespace to run in (see the module doc); `None`: the test's.
    pub netns: Option<&'a str>,
}

/// The `kith agent` command for `spec` (stdin closed, killed on drop).
pub fn command(spec: &AgentSpec<'_>) -> tokio::process::Command {
    let mut cmd = match spec.netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(kith_bin());
            c
        }
        None => tokio::process::Command::new(kith_bin()),
    };
    cmd.arg("agent");
    for s in spec.servers {
        cmd.arg("--server").arg(s);
    }
    for r in spec.insecure_registries {
        cmd.arg("--insecure-registry").arg(r);
    }
    cmd.arg("--token")
        .arg(spec.token)
        .arg("--data-dir")
        .arg(spec.dir)
        .arg("--node-name")
        .arg(&spec.opts.node_name)
        .arg("--pod-bridge")
        .arg(&spec.opts.bridge)
        .arg("--node-port")
        .arg(spec.node_port.to_string());
    if let Some(ip) = spec.node_ip {
        cmd.arg("--node-ip").arg(ip);
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    cmd
}

pub struct RemoteAgent {
    child: Option<tokio::process::Child>,
    opts: kith_agent::run::AgentOptions,
    log: PathBuf,
    netns: Option<String>,
}

impl RemoteAgent {
    /// Start the agent of `spec`, its output to `log`.
    pub fn start(spec: &AgentSpec<'_>, log: &Path) -> Result<RemoteAgent> {
        let logf = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let child = command(spec)
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("spawn kith agent")?;
        Ok(RemoteAgent {
            child: Some(child),
            opts: kith_agent::run::AgentOptions {
                node_name: spec.opts.node_name.clone(),
                data_dir: spec.dir.to_path_buf(),
                insecure_registries: Vec::new(),
                shim_binary: kith_bin(),
                node_ip: None,
                bridge: spec.opts.bridge.clone(),
                node_port: spec.node_port,
                image_gc: Default::default(),
                seccomp_default: false,
            },
            log: log.to_path_buf(),
            netns: spec.netns.map(str::to_string),
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

impl Drop for RemoteAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== kith agent {} log =====\n{}",
                self.opts.node_name,
                self.log()
            );
        }
        let opts = self.opts.clone();
        let netns = self.netns.clone();
        let _ = std::thread::spawn(move || {
            // The bridge, its nftables table and the pod veths' host ends are in the host's
            // network namespace: clean up from inside it (this thread only; the commands
            // the clean-up runs are forked from it and inherit it).
            if let Some(ns) = netns {
                let entered = std::fs::File::open(format!("/run/netns/{ns}")).and_then(|f| {
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&f),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(std::io::Error::from)
                });
                if let Err(e) = entered {
                    eprintln!("agent clean-up: entering {ns}: {e}");
                    return;
                }
            }
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(kith_agent::run::clean_up(&opts));
            }
        })
        .join();
    }
}
