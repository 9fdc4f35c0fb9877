//! `kith agent` as its own process joining a cluster with a join token: a bad token is
//! refused with a clear message; a good one gets a node certificate, the Node registers,
//! gets a podCIDR, and a pod bound to it runs. The agent is given a dead server first:
//! it joins and keeps working through the next one. The API server reaches the remote
//! agent's port over mutual TLS for `kubectl logs`, `exec` and `top`; a client without
//! the API server's certificate is refused there.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kith_agent::image::testing::{ImageOptions, TestRegistry};
use kith_e2e::agent::{command, AgentSpec, RemoteAgent};
use kith_e2e::prometheus::{client_with_token, get_code, metrics_token, Prometheus};
use kith_e2e::{AgentOptions, Cluster, Kubectl, Options};

const K: Kubectl = Kubectl::V1_33;

/// A loopback port nothing listens on (now).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// An https URL on a loopback port nothing listens on.
fn dead_server() -> Result<String> {
    Ok(format!("https://127.0.0.1:{}", free_port()?))
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
    let token = kith_e2e::kith_token(&data, &[])?;
    assert!(token.starts_with("K10"), "token: {token}");

    let remote = AgentOptions::unique("rem");
    let dir = cluster.scratch().join("remote-agent");
    let servers = [dead_server()?, cluster.server_url()];
    let node_port = free_port()?;

    // A token of the right cluster but with a wrong secret: refused, nothing written.
    let (head, _) = token.rsplit_once('.').context("token shape")?;
    let forged = format!("{head}.0000000000000000");
    let spec = |token| AgentSpec {
        servers: &servers,
        token,
        dir: &dir,
        opts: &remote,
        node_ip: Some("127.0.0.1"),
        node_port,
        insecure_registries: &[],
        netns: None,
    };
    let out = command(&spec(&forged))
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
    let agent = RemoteAgent::start(&spec(&token), &log)?;
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
    // The agent runs with its allocator settings: it executed itself again with them,
    // keeping its PID.
    let pid = agent.pid().context("the agent exited")?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let tunables = String::from_utf8_lossy(&environ)
        .split('\0')
        .find_map(|v| v.strip_prefix("GLIBC_TUNABLES=").map(str::to_owned));
    let tunables = tunables.context("the agent runs without GLIBC_TUNABLES")?;
    // glibc (2.36) applies every pair but cuts the string it was started with after the
    // first one, which is what /proc shows; the first pair is the agent's first tunable.
    let (name, value) = kith_agent::sync::idle::AGENT_TUNABLES[0];
    assert_eq!(
        tunables.split(':').next(),
        Some(format!("{name}={value}").as_str()),
        "{tunables}"
    );
    let kubeconfig = std::fs::metadata(dir.join("kubeconfig"))?;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(kubeconfig.permissions().mode() & 0o777, 0o600);
    // Both servers are kept for a restart, the dead one too (it may come back).
    let stored = kith_agent::join::read_kubeconfig(&dir.join("kubeconfig"))?;
    assert_eq!(stored.servers, servers);
    // The node says where its port is.
    let endpoint = cluster
        .kubectl_ok(
            K,
            &[
                "get",
                "node",
                &remote.node_name,
                "-o",
                "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port} {.status.addresses[?(@.type==\"InternalIP\")].address}",
            ],
        )
        .await?;
    assert_eq!(endpoint, format!("{node_port} 127.0.0.1"));

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
    // The API server reaches the remote agent for logs and exec.
    let logs = cluster
        .kubectl_ok(K, &["logs", "on-remote", "-n", &ns])
        .await?;
    assert_eq!(logs, "remote\n", "agent log:\n{}", agent.log());
    let out = cluster
        .kubectl_ok(K, &["exec", "on-remote", "-n", &ns, "--", "echo", "hi"])
        .await?;
    assert_eq!(out, "hi\n");
    let echoed = cluster
        .kubectl_stdin_ok(
            K,
            &["exec", "-i", "on-remote", "-n", &ns, "--", "cat"],
            b"through two hops\n",
        )
        .await?;
    assert_eq!(echoed, "through two hops\n");
    let out = cluster
        .kubectl(
            K,
            &["exec", "on-remote", "-n", &ns, "--", "sh", "-c", "exit 3"],
        )
        .await?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // A terminal across both hops: the size kubectl starts with and a resize reach it.
    let mut k = kith_e2e::tty::TtyKubectl::spawn(
        &cluster,
        K,
        &["exec", "-it", "on-remote", "-n", &ns, "--", "sh"],
        kith_agent::runtime::pty::WinSize {
            cols: 101,
            rows: 31,
        },
    )?;
    // kubectl sends its terminal's size beside the first keys, not before them: asked
    // again until it shows.
    k.type_until("stty size\r", "31 101").await?;
    let out = k.type_until("tty; echo ma''rk\r", "mark").await?;
    assert!(out.contains("/dev/pts/"), "exec -it output: {out:?}");
    k.resize(kith_agent::runtime::pty::WinSize { cols: 60, rows: 15 })?;
    k.type_until("stty size\r", "15 60").await?;
    k.type_("exit 4\r")?;
    assert_eq!(k.exit_code().await?, 4, "{:?}", k.text());
    let err = cluster
        .kubectl_err(
            K,
            &["exec", "on-remote", "-n", &ns, "-c", "nope", "--", "true"],
        )
        .await?;
    assert!(err.contains("nope"), "{err}");

    // kubectl top: the remote node's use and its pod's come from its port too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = cluster.kubectl(K, &["top", "nodes"]).await?;
        let pods = cluster.kubectl(K, &["top", "pods", "-n", &ns]).await?;
        let row = |out: &std::process::Output, name: &str| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name))
        };
        if row(&nodes, &remote.node_name)
            && row(&nodes, &local.node_name)
            && row(&pods, "on-remote")
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "kubectl top never showed the remote node and pod: {nodes:?} {pods:?}; agent log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    agents_metrics_through_the_api_server(&cluster, &[&local.node_name, &remote.node_name], &ns)
        .await
        .with_context(|| format!("agent log:\n{}", agent.log()))?;

    // The agent's port serves no one without the API server's certificate.
    let mut cfg = kube::Config::new(format!("https://127.0.0.1:{node_port}").parse()?);
    cfg.accept_invalid_certs = true;
    cfg.default_retry = false;
    let anonymous = kube::Client::try_from(cfg)?;
    let req = http::Request::get("/kith/v1/stats").body(Vec::new())?;
    let refused = anonymous.request_text(req).await;
    assert!(refused.is_err(), "{refused:?}");
    // Nor with the node's own client certificate (same CA, not the API server): 403.
    let creds = stored.credentials;
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let mut cfg = kube::Config::new(format!("https://127.0.0.1:{node_port}").parse()?);
    cfg.root_cert = Some(vec![
        kith_agent::join::pem_to_der(&creds.ca).context("the CA")?
    ]);
    cfg.auth_info = serde_json::from_value(serde_json::json!({
        "client-certificate-data": b64(&creds.cert),
        "client-key-data": b64(&creds.key),
    }))?;
    cfg.default_retry = false;
    let as_node = kube::Client::try_from(cfg)?;
    let req = http::Request::get("/kith/v1/stats").body(Vec::new())?;
    match as_node.request_text(req).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("a node's certificate got {other:?}"),
    }

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

/// Every agent's `/metrics` through the API server (`nodes/{name}/proxy/metrics`), the
/// in-process one of `kith up` and the remote one alike: readable with the metrics token,
/// nothing else of the node's port is; and a real Prometheus scrapes them so, as its
/// kubelet jobs do (`__metrics_path__` = `/api/v1/nodes/NAME/proxy/metrics`).
async fn agents_metrics_through_the_api_server(
    cluster: &Cluster,
    nodes: &[&str],
    ns: &str,
) -> Result<()> {
    let data = cluster.data_dir();
    let token = metrics_token(&data).await?;
    let reader = client_with_token(cluster, Some(&token)).await?;
    let anonymous = client_with_token(cluster, None).await?;
    let admin = cluster.client().await?;
    for node in nodes {
        let path = format!("/api/v1/nodes/{node}/proxy/metrics");
        let text = reader
            .request_text(http::Request::get(&path).body(Vec::new())?)
            .await
            .with_context(|| format!("GET {path}"))?;
        for series in [
            "process_resident_memory_bytes ",
            "node_load1 ",
            "process_open_fds ",
        ] {
            assert!(
                text.contains(series),
                "{series} missing from {path}:\n{text}"
            );
        }
        assert_eq!(get_code(&anonymous, &path).await?, 401, "{path}");
        let stats = format!("/api/v1/nodes/{node}/proxy/kith/v1/stats");
        assert_eq!(get_code(&reader, &stats).await?, 403, "{stats}");
        assert_eq!(get_code(&admin, &stats).await?, 404, "{stats}");
        let post = http::Request::post(&path).body(Vec::new())?;
        match admin.request_text(post).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 405, "{s:?}"),
            other => bail!("POST {path}: {other:?}"),
        }
    }
    assert_eq!(
        get_code(&admin, "/api/v1/nodes/no-such-node/proxy/metrics").await?,
        400
    );

    let dir = cluster.scratch().join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("metrics-token");
    std::fs::write(&token_file, &token)?;
    let ca = data.join("pki/ca.crt");
    let server = cluster.server_url();
    let address = server.trim_start_matches("https://");
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: kith-agents\n    scheme: https\n    tls_config:\n      ca_file: {}\n    authorization:\n      credentials_file: {}\n    static_configs:\n",
        ca.display(),
        token_file.display()
    );
    for node in nodes {
        config.push_str(&format!(
            "      - targets: ['{address}']\n        labels:\n          node: {node}\n          __metrics_path__: /api/v1/nodes/{node}/proxy/metrics\n"
        ));
    }
    let prom = Prometheus::start(&dir, &config).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let up = prom.query("up{job=\"kith-agents\"} == 1").await?;
        let rss = prom
            .query("process_resident_memory_bytes{job=\"kith-agents\"} > 1e6")
            .await?;
        let pod = prom
            .query(&format!(
                "container_memory_working_set_bytes{{job=\"kith-agents\",namespace=\"{ns}\",pod=\"on-remote\"}} > 0"
            ))
            .await?;
        let by_node = |rows: &[(serde_json::Value, f64)], node: &str| {
            rows.iter().any(|(m, _)| m["node"] == *node)
        };
        if nodes.iter().all(|n| by_node(&up, n) && by_node(&rss, n)) && !pod.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "prometheus never saw both agents up (up {up:?}, rss {rss:?}, pod {pod:?}); targets: {}\nlog:\n{}",
                prom.api("/api/v1/targets").await.unwrap_or_default(),
                prom.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
