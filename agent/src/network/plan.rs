//! The commands that build and remove pod networks, planned by pure functions so the
//! plan can be checked by tables without root; [`super::bridge`] runs them.
//!
//! All nftables state lives in one table of kith's own:
//!
//! ```text
//! table ip kith
//!   chain prerouting  (nat, -100)  hostPort DNAT for traffic arriving from outside
//!   chain output      (nat, -100)  hostPort DNAT for connections from the box itself
//!   chain postrouting (nat, 100)   masquerade podCIDR → outside podCIDR, and hairpin
//!                                  hostPort connections from pod to pod
//! ```
//!
//! Every hostPort rule carries the comment `kith-pod:<uid>`, so teardown finds and
//! deletes exactly that pod's rules by handle.

use std::fmt;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use super::{Error, HostPort, Ipv4Net, Result};

/// Where `ip netns add` puts named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Chains of the table that hold hostPort rules.
pub const HOSTPORT_CHAINS: [&str; 2] = ["prerouting", "output"];

/// One command to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    /// Fed to the command's standard input (nft scripts).
    pub stdin: Option<String>,
    /// A failure whose stderr contains this counts as success: the command's goal
    /// already holds (the bridge exists, the netns is already gone).
    pub tolerate: Option<&'static str>,
}

impl Cmd {
    fn new(program: &str, args: &[&str]) -> Cmd {
        Cmd {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: None,
            tolerate: None,
        }
    }

    fn ip(args: &[&str]) -> Cmd {
        Cmd::new("ip", args)
    }

    fn nft_script(script: String) -> Cmd {
        Cmd {
            stdin: Some(script),
            ..Cmd::new("nft", &["-f", "-"])
        }
    }

    fn tolerating(mut self, stderr: &'static str) -> Cmd {
        self.tolerate = Some(stderr);
        self
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// The host-side names of a pod's network, derived from its uid alone so teardown can
/// find them after a restart. Interface names are limited to 15 bytes, hence a hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNames {
    pub netns: String,
    pub host_veth: String,
}

/// The interface inside the pod.
pub const POD_IFACE: &str = "eth0";

pub fn names(pod_uid: &str) -> PodNames {
    let hash = hex::encode(Sha256::digest(pod_uid.as_bytes()));
    let short = &hash[..12];
    PodNames {
        netns: format!("kith-{short}"),
        host_veth: format!("kv{short}"),
    }
}

/// Pod uids end up in nft comments and file names: keep them to harmless characters.
pub fn check_uid(pod_uid: &str) -> Result<()> {
    let ok = !pod_uid.is_empty()
        && pod_uid.len() <= 128
        && !pod_uid.starts_with('.')
        && pod_uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::PodUid(pod_uid.to_string()))
    }
}

/// The comment that marks a pod's nft rules.
pub fn rule_comment(pod_uid: &str) -> String {
    format!("kith-pod:{pod_uid}")
}

/// Bridge, forwarding and NAT: idempotent, run before each pod setup so a box whose
/// bridge or table went away heals itself.
pub fn host_commands(bridge: &str, table: &str, net: &Ipv4Net) -> Vec<Cmd> {
    let gw = format!("{}/{}", net.gateway(), net.prefix());
    vec![
        Cmd::ip(&["link", "add", bridge, "type", "bridge"]).tolerating("File exists"),
        Cmd::ip(&["addr", "replace", &gw, "dev", bridge]),
        Cmd::ip(&["link", "set", bridge, "up"]),
        Cmd::new("sysctl", &["-w", "net.ipv4.ip_forward=1"]),
        Cmd::nft_script(nat_script(table, net)),
    ]
}

/// The table and its chains, with the masquerade rules replaced in one transaction
/// (`add` of an existing table or chain is a no-op; the flush drops an old podCIDR).
/// The second rule is the hairpin: a pod reaching a hostPort that lands on a pod of
/// the same bridge must see the answer come from the address it called, so such
/// connections leave with the gateway's address.
/// Priorities are numbers (dstnat = -100, srcnat = 100) because nft 1.0.6 refuses the
/// `dstnat` name on the output hook.
pub fn nat_script(table: &str, net: &Ipv4Net) -> String {
    format!(
        "add table ip {table}\n\
         add chain ip {table} prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n\
         add chain ip {table} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain ip {table} postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n\
         flush chain ip {table} postrouting\n\
         add rule ip {table} postrouting ip saddr {net} ip daddr != {net} masquerade comment \"kith-masquerade\"\n\
         add rule ip {table} postrouting ip saddr {net} ip daddr {net} ct status dnat masquerade comment \"kith-hairpin\"\n"
    )
}

/// Namespace, veth pair, address and default route of one pod.
pub fn pod_commands(bridge: &str, names: &PodNames, ip: Ipv4Addr, net: &Ipv4Net) -> Vec<Cmd> {
    let ns = names.netns.as_str();
    let veth = names.host_veth.as_str();
    let addr = format!("{ip}/{}", net.prefix());
    let gw = net.gateway().to_string();
    vec![
        Cmd::ip(&["netns", "add", ns]),
        Cmd::ip(&["-n", ns, "link", "set", "lo", "up"]),
        Cmd::ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", POD_IFACE, "netns", ns,
        ]),
        Cmd::ip(&["link", "set", veth, "master", bridge]),
        // Lets a pod's hostPort traffic that is DNAT'd back to itself leave and re-enter
        // through the same bridge port.
        Cmd::ip(&["link", "set", veth, "type", "bridge_slave", "hairpin", "on"]),
        Cmd::ip(&["link", "set", veth, "up"]),
        Cmd::ip(&["-n", ns, "addr", "add", &addr, "dev", POD_IFACE]),
        Cmd::ip(&["-n", ns, "link", "set", POD_IFACE, "up"]),
        Cmd::ip(&["-n", ns, "route", "add", "default", "via", &gw]),
    ]
}

/// The hostPort DNAT rules of one pod, or `None` when it publishes no port.
/// Only traffic to a local address is taken (`fib daddr type local`), so traffic the box
/// merely forwards to the same port elsewhere is left alone; loopback is left out because
/// the kernel would drop a DNAT'd packet from 127.0.0.1 leaving the box.
pub fn hostport_script(
    table: &str,
    pod_uid: &str,
    ip: Ipv4Addr,
    ports: &[HostPort],
) -> Option<String> {
    if ports.is_empty() {
        return None;
    }
    let comment = rule_comment(pod_uid);
    let mut script = String::new();
    for chain in HOSTPORT_CHAINS {
        for p in ports {
            let dst = match p.host_ip {
                Some(h) => format!("ip daddr {h}"),
                None => "fib daddr type local ip daddr != 127.0.0.0/8".to_string(),
            };
            script.push_str(&format!(
                "add rule ip {table} {chain} {dst} {proto} dport {hp} dnat to {ip}:{cp} comment \"{comment}\"\n",
                proto = p.protocol.nft(),
                hp = p.host_port,
                cp = p.container_port,
            ));
        }
    }
    Some(script)
}

/// Removes the pod's namespace (which takes `eth0`, and with it the veth pair) and the
/// host end in case a process kept the namespace alive.
pub fn teardown_commands(names: &PodNames) -> Vec<Cmd> {
    vec![
        Cmd::ip(&["netns", "delete", &names.netns]).tolerating("No such file or directory"),
        Cmd::ip(&["link", "delete", &names.host_veth]).tolerating("Cannot find device"),
    ]
}

/// Lists the table's rules with their handles, as JSON.
pub fn list_rules(table: &str) -> Cmd {
    Cmd::new("nft", &["-j", "-a", "list", "table", "ip", table])
        .tolerating("No such file or directory")
}

/// Deletes one rule by handle.
pub fn delete_rule(table: &str, chain: &str, handle: u64) -> Cmd {
    Cmd::new(
        "nft",
        &[
            "delete",
            "rule",
            "ip",
            table,
            chain,
            "handle",
            &handle.to_string(),
        ],
    )
    .tolerating("No such file or directory")
}

/// The (chain, handle) of every rule in `nft -j -a list table` output that belongs to
/// the pod. An empty listing (no table) has none.
pub fn pod_rules(listing: &str, pod_uid: &str) -> Result<Vec<(String, u64)>> {
    if listing.trim().is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: String| Error::Output {
        command: "nft -j -a list table".into(),
        why,
    };
    let doc: serde_json::Value = serde_json::from_str(listing).map_err(|e| bad(e.to_string()))?;
    let items = doc["nftables"]
        .as_array()
        .ok_or_else(|| bad("no nftables array".into()))?;
    let comment = rule_comment(pod_uid);
    let mut out = Vec::new();
    for item in items {
        let rule = &item["rule"];
        if rule["comment"].as_str() != Some(&comment) {
            continue;
        }
        let chain = rule["chain"]
            .as_str()
            .ok_or_else(|| bad("rule without chain".into()))?;
        let handle = rule["handle"]
            .as_u64()
            .ok_or_else(|| bad("rule without handle".into()))?;
        out.push((chain.to_string(), handle));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Protocol;

    fn net() -> Ipv4Net {
        "10.244.3.0/24".parse().unwrap()
    }

    fn lines(cmds: &[Cmd]) -> Vec<String> {
        cmds.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn names_are_short_stable_and_distinct() {
        let a = names("6f1c1b9e-1111-4c1e-9a55-0123456789ab");
        assert_eq!(a, names("6f1c1b9e-1111-4c1e-9a55-0123456789ab"));
        assert!(a.netns.starts_with("kith-"));
        assert!(a.host_veth.len() <= 15, "{}", a.host_veth);
        assert_ne!(
            a.host_veth,
            names("6f1c1b9e-1111-4c1e-9a55-0123456789ac").host_veth
        );
    }

    #[test]
    fn uid_table() {
        let cases = [
            ("6f1c1b9e-1111-4c1e-9a55-0123456789ab", true),
            ("pod_1.a", true),
            ("", false),
            (".hidden", false),
            ("a\"b", false),
            ("a/b", false),
            ("a b", false),
        ];
        for (uid, ok) in cases {
            assert_eq!(check_uid(uid).is_ok(), ok, "{uid:?}");
        }
    }

    #[test]
    fn host_plan() {
        let cmds = host_commands("kith0", "kith", &net());
        assert_eq!(
            lines(&cmds),
            [
                "ip link add kith0 type bridge",
                "ip addr replace 10.244.3.1/24 dev kith0",
                "ip link set kith0 up",
                "sysctl -w net.ipv4.ip_forward=1",
                "nft -f -",
            ]
        );
        assert_eq!(cmds[0].tolerate, Some("File exists"));
        let script = cmds[4].stdin.as_deref().unwrap();
        assert!(script.contains(
            "add rule ip kith postrouting ip saddr 10.244.3.0/24 ip daddr != 10.244.3.0/24 masquerade"
        ));
        // The flush comes before the new masquerade rule, so re-running never doubles it.
        assert!(script.find("flush chain ip kith postrouting") < script.find("masquerade"));
    }

    #[test]
    fn pod_plan() {
        let n = names("u1");
        let cmds = pod_commands("kith0", &n, "10.244.3.7".parse().unwrap(), &net());
        let ns = &n.netns;
        let veth = &n.host_veth;
        assert_eq!(
            lines(&cmds),
            [
                format!("ip netns add {ns}"),
                format!("ip -n {ns} link set lo up"),
                format!("ip link add {veth} type veth peer name eth0 netns {ns}"),
                format!("ip link set {veth} master kith0"),
                format!("ip link set {veth} type bridge_slave hairpin on"),
                format!("ip link set {veth} up"),
                format!("ip -n {ns} addr add 10.244.3.7/24 dev eth0"),
                format!("ip -n {ns} link set eth0 up"),
                format!("ip -n {ns} route add default via 10.244.3.1"),
            ]
        );
        assert!(cmds.iter().all(|c| c.tolerate.is_none()));
        assert_eq!(
            lines(&teardown_commands(&n)),
            [
                format!("ip netns delete {ns}"),
                format!("ip link delete {veth}")
            ]
        );
    }

    #[test]
    fn hostport_table() {
        let ip: Ipv4Addr = "10.244.3.7".parse().unwrap();
        let tcp = HostPort {
            container_port: 80,
            host_port: 8080,
            protocol: Protocol::Tcp,
            host_ip: None,
        };
        let udp_on = HostPort {
            container_port: 53,
            host_port: 5353,
            protocol: Protocol::Udp,
            host_ip: Some("192.168.1.10".parse().unwrap()),
        };
        type Case = (&'static str, Vec<HostPort>, Option<Vec<&'static str>>);
        let cases: [Case; 3] = [
            ("no ports, no rules", vec![], None),
            (
                "any local address",
                vec![tcp.clone()],
                Some(vec![
                    "add rule ip kith prerouting fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to 10.244.3.7:80 comment \"kith-pod:u1\"",
                    "add rule ip kith output fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to 10.244.3.7:80 comment \"kith-pod:u1\"",
                ]),
            ),
            (
                "two ports, one bound to a host address",
                vec![tcp, udp_on],
                Some(vec![
                    "add rule ip kith prerouting fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to 10.244.3.7:80 comment \"kith-pod:u1\"",
                    "add rule ip kith prerouting ip daddr 192.168.1.10 udp dport 5353 dnat to 10.244.3.7:53 comment \"kith-pod:u1\"",
                    "add rule ip kith output fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to 10.244.3.7:80 comment \"kith-pod:u1\"",
                    "add rule ip kith output ip daddr 192.168.1.10 udp dport 5353 dnat to 10.244.3.7:53 comment \"kith-pod:u1\"",
                ]),
            ),
        ];
        for (name, ports, want) in cases {
            let got = hostport_script("kith", "u1", ip, &ports);
            let got: Option<Vec<String>> = got.map(|s| s.lines().map(String::from).collect());
            let want: Option<Vec<String>> = want.map(|w| w.into_iter().map(String::from).collect());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn pod_rules_table() {
        let listing = r#"{"nftables": [
          {"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "ip", "name": "kith", "handle": 3}},
          {"chain": {"family": "ip", "table": "kith", "name": "prerouting", "handle": 1}},
          {"rule": {"family": "ip", "table": "kith", "chain": "prerouting", "handle": 7, "comment": "kith-pod:u1", "expr": []}},
          {"rule": {"family": "ip", "table": "kith", "chain": "prerouting", "handle": 8, "comment": "kith-pod:u2", "expr": []}},
          {"rule": {"family": "ip", "table": "kith", "chain": "output", "handle": 9, "comment": "kith-pod:u1", "expr": []}},
          {"rule": {"family": "ip", "table": "kith", "chain": "postrouting", "handle": 4, "comment": "kith-masquerade", "expr": []}},
          {"rule": {"family": "ip", "table": "kith", "chain": "output", "handle": 10, "expr": []}}
        ]}"#;
        type Case<'a> = (&'a str, &'a str, Vec<(&'a str, u64)>);
        let cases: [Case; 4] = [
            ("u1", listing, vec![("prerouting", 7), ("output", 9)]),
            ("u2", listing, vec![("prerouting", 8)]),
            ("u3", listing, vec![]),
            ("u1", "", vec![]),
        ];
        for (uid, text, want) in cases {
            let want: Vec<(String, u64)> =
                want.into_iter().map(|(c, h)| (c.to_string(), h)).collect();
            assert_eq!(pod_rules(text, uid).unwrap(), want, "{uid}");
        }
        assert!(pod_rules("not json", "u1").is_err());
    }
}
