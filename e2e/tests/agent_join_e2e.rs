//! `kith agent` as its own process joining a cluster with a join token: a bad token is
//! refused with a clear message; a good one gets a node certificate, the Node registers,
//! gets a podCIDR, and a pod bound to it runs. The agent is given a dead server first:
//! it joins and keeps working through the next one.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kith_agent::image::testing::{ImageOptions, TestRegistry};
use kith_e2e::{kith_bin, AgentOptions, Cluster, Kubectl, Options};

const K: Kubectl = Kubectl::V1_33;

/// A `kith agent` process and what to remove when the test ends.
struct RemoteAgent {
    child: Option<tokio::process::Child>,
    opts: kith_agent::run::AgentOptions,
    log: std::path::PathBuf,
}

impl RemoteAgent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RemoteAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
        }
        if std::thread::panicking() {
            eprintln!("===== kith agent log =====\n{}", self.log());
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

/// An https URL on a loopback port nothing listens on.
fn dead_server() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(format!("https://{}", l.local_addr()?))
}

fn agent_command(
    servers: &[String],
    dir: &std::path::Path,
    token: &str,
    a: &AgentOptions,
) -> tokio::process::Command {
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
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_joins_with_a_token_and_runs_pods() -> Result<()> {
    let registry = TestRegistry::start().context("start registry")?;
    registry
        .push_busybox("busybox", "1", ImageOptions::default())
        .await?;
    let image = registry.image("busybox", "1");
    // The cluster runs its own agent too: two nodes, the remote one on its own bridge.
    let local = AgentOptions::unique("local");
    let cluster = Cluster::up_with(Options {
        agent: Some(local.clone()),
        ..Default::default()
    })
    .await?;
    let data = cluster.data_dir();
    let token_out = std::process::Command::new(kith_bin())
        .args(["token", "create", "--data-dir"])
        .arg(&data)
        .output()?;
    let token = String::from_utf8(token_out.stdout)?.trim().to_string();
    assert!(token.starts_with("K10"), "token: {token}");

    let remote = AgentOptions::unique("rem");
    let dir = cluster.scratch().join("remote-agent");
    let servers = [dead_server()?, cluster.server_url()];

    // A token of the right cluster but with a wrong secret: refused, nothing written.
    let (head, _) = token.rsplit_once('.').context("token shape")?;
    let forged = format!("{head}.0000000000000000");
    let out = agent_command(&servers, &dir, &forged, &remote)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the join token"), "{err}");
    assert!(!dir.join("kubeconfig").exists());

    // The real token.
    let log = cluster.scratch().join("remote-agent.log");
    let logf = std::fs::File::create(&log)?;
    let child = agent_command(&servers, &dir, &token, &remote)
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()?;
    let agent = RemoteAgent {
        child: Some(child),
        opts: kith_agent::run::AgentOptions {
            node_name: remote.node_name.clone(),
            data_dir: dir.clone(),
            insecure_registries: Vec::new(),
            shim_binary: kith_bin(),
            node_ip: None,
            bridge: remote.bridge.clone(),
        },
        log,
    };
    // The node registers and gets a podCIDR.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = cluster
            .kubectl(
                K,
                &[
                    "get",
                    "node",
                    &remote.node_name,
                    "-o",
                    "jsonpath={.spec.podCIDR}",
                ],
            )
            .await?;
        if out.status.success() && !out.stdout.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "node {} never registered; agent log:\n{}",
                remote.node_name,
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let kubeconfig = std::fs::metadata(dir.join("kubeconfig"))?;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(kubeconfig.permissions().mode() & 0o777, 0o600);
    // Both servers are kept for a restart, the dead one too (it may come back).
    let stored = kith_agent::join::read_kubeconfig(&dir.join("kubeconfig"))?;
    assert_eq!(stored.servers, servers);

    let ns = cluster.namespace("join-e2e").await?;
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: on-remote
spec:
  nodeName: {}
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "echo remote; exec sleep 3600"]
"#,
        remote.node_name
    );
    cluster.apply_yaml(K, Some(&ns), &pod).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let phase = cluster
            .kubectl_ok(
                K,
                &[
                    "get",
                    "pod",
                    "on-remote",
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.status.phase}",
                ],
            )
            .await?;
        if phase == "Running" {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("pod not Running ({phase}); agent log:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Logs of a remote node's pods are not reachable yet: a clear error, not wrong logs.
    let err = cluster
        .kubectl_err(K, &["logs", "on-remote", "-n", &ns])
        .await?;
    assert!(
        err.contains("can not be served by this API server yet"),
        "{err}"
    );

    cluster
        .kubectl_ok(
            K,
            &[
                "delete",
                "pod",
                "on-remote",
                "-n",
                &ns,
                "--wait=true",
                "--timeout=60s",
            ],
        )
        .await?;
    drop(agent);
    Ok(())
}
