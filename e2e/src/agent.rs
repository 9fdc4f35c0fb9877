//! A `kith agent` process of its own (not the in-process agent of `kith up`), joining a
//! cluster or region with a join token; on drop it is killed and everything it made
//! (containers, mounts, pod network, bridge) is removed, and on a panic its log printed.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::{kith_bin, AgentOptions};

pub struct RemoteAgent {
    child: Option<tokio::process::Child>,
    opts: kith_agent::run::AgentOptions,
    log: PathBuf,
}

impl RemoteAgent {
    /// Start `kith agent --server S... --token T --data-dir DIR` with the names of `a`
    /// (node name, bridge) and these extra flags; output to `log`.
    pub fn start(
        servers: &[String],
        token: &str,
        dir: &Path,
        a: &AgentOptions,
        extra: &[&str],
        log: &Path,
    ) -> Result<RemoteAgent> {
        let logf = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let mut cmd = tokio::process::Command::new(kith_bin());
        cmd.arg("agent");
        for s in servers {
            cmd.arg("--server").arg(s);
        }
        cmd.arg("--token")
            .arg(token)
            .arg("--data-dir")
            .arg(dir)
            .arg("--node-name")
            .arg(&a.node_name)
            .arg("--pod-bridge")
            .arg(&a.bridge)
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawn kith agent")?;
        Ok(RemoteAgent {
            child: Some(child),
            opts: kith_agent::run::AgentOptions {
                node_name: a.node_name.clone(),
                data_dir: dir.to_path_buf(),
                insecure_registries: Vec::new(),
                shim_binary: kith_bin(),
                node_ip: None,
                bridge: a.bridge.clone(),
            },
            log: log.to_path_buf(),
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
        let _ = std::thread::spawn(move || {
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
