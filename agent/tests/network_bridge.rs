//! The real bridge network, as root: two pods reach each other, their gateway and the
//! host; a hostPort forwards from another network namespace; an agent restart keeps the
//! allocations; teardown leaves nothing behind.
//!
//! Names (bridge, nft table, podCIDR, client namespace) are unique per run, so the test
//! can run next to others; a guard removes everything even when an assertion fails.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kith_agent::network::plan;
use kith_agent::network::{
    BridgeConfig, BridgeNetwork, HostPort, PodNet, PodNetRequest, PodNetwork, Protocol,
};

fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = sh(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes what the test (and a broken teardown) may leave, on every exit path.
struct Cleanup {
    bridge: String,
    table: String,
    netns: Vec<String>,
    links: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.netns {
            let _ = sh("ip", &["netns", "delete", ns]);
        }
        for l in &self.links {
            let _ = sh("ip", &["link", "delete", l]);
        }
        let _ = sh("ip", &["link", "delete", &self.bridge]);
        let _ = sh("nft", &["delete", "table", "ip", &self.table]);
    }
}

fn pod(uid: &str, ports: Vec<HostPort>) -> PodNetRequest {
    PodNetRequest {
        pod_uid: uid.into(),
        namespace: "default".into(),
        name: uid.into(),
        host_ports: ports,
    }
}

fn ns_of(p: &PodNet) -> String {
    p.netns_path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("netns name")
        .to_string()
}

fn ping_from(ns: Option<&str>, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    let mut args = vec![];
    if let Some(ns) = ns {
        args.extend(["netns", "exec", ns]);
    }
    args.extend(["busybox", "ping", "-c1", "-W1", &to]);
    let out = if ns.is_some() {
        sh("ip", &args)
    } else {
        sh("busybox", &args[1..])
    };
    out.status.success()
}

/// `GET /index.html` over busybox nc (busybox wget crashes on these machines), from the
/// namespace `ns` (the host's when `None`), retried while the server starts.
async fn http_get(ns: Option<&str>, addr: &str, port: &str) -> String {
    let mut response = String::new();
    for _ in 0..50 {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "busybox"]);
                c
            }
            None => Command::new("busybox"),
        };
        let out = cmd
            .args(["nc", "-w", "2", addr, port])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                let mut stdin = child.stdin.take().expect("nc stdin");
                stdin.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                drop(stdin);
                child.wait_with_output()
            })
            .expect("run nc");
        response = String::from_utf8_lossy(&out.stdout).into_owned();
        if response.contains("200 OK") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    response
}

#[tokio::test]
async fn bridge_network_end_to_end() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, bridges, nftables)"
    );
    let r = random();
    let octet = (r % 250 + 2) as u8;
    let tag = format!("{:06x}", (r >> 8) & 0xff_ffff);
    let host_port = 20000 + (r >> 32) as u16 % 20000;
    let client_ns = format!("kc{tag}");
    let client_host = format!("kc{tag}h");
    let mut guard = Cleanup {
        bridge: format!("kb{tag}"),
        table: format!("kt{tag}"),
        netns: vec![client_ns.clone()],
        links: vec![client_host.clone()],
        children: vec![],
    };
    let uids = [
        format!("a{tag}-0000-4000-8000-000000000001"),
        format!("b{tag}-0000-4000-8000-000000000002"),
        format!("c{tag}-0000-4000-8000-000000000003"),
    ];
    for u in &uids {
        let names = plan::names(u);
        guard.netns.push(names.netns);
        guard.links.push(names.host_veth);
    }

    let data = tempfile::tempdir().unwrap();
    let cidr = format!("10.250.{octet}.0/24").parse().unwrap();
    let mut cfg = BridgeConfig::new(data.path(), cidr);
    cfg.bridge = guard.bridge.clone();
    cfg.nft_table = guard.table.clone();
    let net = BridgeNetwork::new(cfg.clone()).unwrap();

    let web = HostPort {
        container_port: 80,
        host_port,
        protocol: Protocol::Tcp,
        host_ip: None,
    };
    let a = net.setup(&pod(&uids[0], vec![web])).await.unwrap();
    let b = net.setup(&pod(&uids[1], vec![])).await.unwrap();
    assert_ne!(a.ip, b.ip);
    assert_eq!(a.gateway, Ipv4Addr::new(10, 250, octet, 1));
    // Asking again returns the same network.
    assert_eq!(net.setup(&pod(&uids[1], vec![])).await.unwrap(), b);

    for p in [&a, &b] {
        let addrs = ok(
            "ip",
            &["-n", &ns_of(p), "-o", "addr", "show", "dev", "eth0"],
        );
        assert!(addrs.contains(&format!("{}/24", p.ip)), "{addrs}");
    }
    assert!(ping_from(Some(&ns_of(&a)), b.ip), "pod a → pod b");
    assert!(ping_from(Some(&ns_of(&b)), a.ip), "pod b → pod a");
    assert!(ping_from(Some(&ns_of(&a)), a.gateway), "pod a → gateway");
    assert!(ping_from(None, a.ip), "host → pod a");

    // hostPort: a web server in pod a, reached from another namespace through the host.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello from pod a\n").unwrap();
    let httpd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns_of(&a),
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
        ])
        .arg(www.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start httpd");
    guard.children.push(httpd);
    let client_peer = format!("kc{tag}c");
    let host_side = format!("10.251.{octet}.1");
    ok("ip", &["netns", "add", &client_ns]);
    ok(
        "ip",
        &[
            "link",
            "add",
            &client_host,
            "type",
            "veth",
            "peer",
            "name",
            &client_peer,
            "netns",
            &client_ns,
        ],
    );
    ok(
        "ip",
        &[
            "addr",
            "add",
            &format!("{host_side}/30"),
            "dev",
            &client_host,
        ],
    );
    ok("ip", &["link", "set", &client_host, "up"]);
    ok(
        "ip",
        &[
            "-n",
            &client_ns,
            "addr",
            "add",
            &format!("10.251.{octet}.2/30"),
            "dev",
            &client_peer,
        ],
    );
    ok("ip", &["-n", &client_ns, "link", "set", &client_peer, "up"]);
    ok("ip", &["-n", &client_ns, "link", "set", "lo", "up"]);
    let rules = ok("nft", &["list", "table", "ip", &guard.table]);
    assert!(
        rules.contains(&format!("dnat to {}:80", a.ip)),
        "hostPort rule missing:\n{rules}"
    );
    let port = host_port.to_string();
    let (ns_a, ns_b) = (ns_of(&a), ns_of(&b));
    let callers = [
        (
            "another host's namespace",
            Some(client_ns.as_str()),
            host_side.as_str(),
        ),
        ("the box itself", None, host_side.as_str()),
        (
            "another pod (hairpin)",
            Some(ns_b.as_str()),
            host_side.as_str(),
        ),
        (
            "the pod itself (hairpin)",
            Some(ns_a.as_str()),
            host_side.as_str(),
        ),
    ];
    for (who, ns, addr) in callers {
        let response = http_get(ns, addr, &port).await;
        assert!(
            response.contains("200 OK") && response.ends_with("hello from pod a\n"),
            "GET {addr}:{port} through the hostPort from {who}: {response:?}"
        );
    }
    // Outbound NAT: the client namespace has no route back to the podCIDR, so only a
    // masqueraded ping gets an answer.
    assert!(
        ping_from(Some(&ns_a), format!("10.251.{octet}.2").parse().unwrap()),
        "pod a → outside the podCIDR"
    );

    // A restarted agent sees both pods and never hands out their addresses.
    let restarted = BridgeNetwork::new(cfg).unwrap();
    let mut listed = restarted.list().await.unwrap();
    listed.sort_by_key(|p| p.ip);
    let mut want = vec![a.clone(), b.clone()];
    want.sort_by_key(|p| p.ip);
    assert_eq!(listed, want);
    let c = restarted.setup(&pod(&uids[2], vec![])).await.unwrap();
    assert!(c.ip != a.ip && c.ip != b.ip, "{} reused", c.ip);

    for c in &mut guard.children {
        let _ = c.kill();
        let _ = c.wait();
    }
    guard.children.clear();
    for u in &uids {
        restarted.teardown(u).await.unwrap();
    }
    restarted.teardown(&uids[0]).await.unwrap();

    let netns = ok("ip", &["netns", "list"]);
    let links = ok("ip", &["-o", "link", "show"]);
    for u in &uids {
        let names = plan::names(u);
        assert!(
            !netns.contains(&names.netns),
            "{} left:\n{netns}",
            names.netns
        );
        assert!(
            !links.contains(&names.host_veth),
            "{} left",
            names.host_veth
        );
    }
    let rules = ok("nft", &["list", "table", "ip", &guard.table]);
    assert!(!rules.contains("kith-pod:"), "pod rules left:\n{rules}");
    assert!(rules.contains("masquerade"), "{rules}");
    assert!(restarted.list().await.unwrap().is_empty());
    let ipam: Vec<_> = std::fs::read_dir(data.path().join("network/ipam"))
        .unwrap()
        .collect();
    assert!(ipam.is_empty(), "ipam files left: {ipam:?}");
}
