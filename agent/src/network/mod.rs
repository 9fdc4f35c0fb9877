//! Pod networking on one box: each pod gets its own network namespace with an `eth0`
//! whose address comes from the node's podCIDR, plugged into a bridge on the host.
//!
//! ```text
//!   pod netns kith-<hash>          host
//!   ┌───────────────┐
//!   │ eth0 10.x.y.5 │──veth──kv<hash>──┐
//!   └───────────────┘                  ├── bridge kith0 (10.x.y.1 = pods' gateway)
//!   ┌───────────────┐                  │     │ route 10.x.y.0/24 (one /24 per node, so
//!   │ eth0 10.x.y.6 │──veth──kv<hash>──┘     │ other nodes' /24s can be routed later)
//!   └───────────────┘                        ▼
//!                             nftables `table ip kith`: masquerade podCIDR → outside,
//!                             hostPort DNAT rules tagged with their pod's uid
//! ```
//!
//! [`PodNetwork`] is what the sync loop sees; [`bridge::BridgeNetwork`] is the real
//! implementation and [`fake::FakeNetwork`] the recording fake. The commands the bridge
//! runs are planned by pure functions in [`plan`]; [`ipam`] keeps the allocated addresses
//! on disk so an agent restart never hands out an address twice.

pub mod bridge;
pub mod ipam;
pub mod plan;

#[cfg(any(test, feature = "test-util"))]
pub mod fake;

use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

pub use bridge::{BridgeConfig, BridgeNetwork, CommandRunner, HostRunner};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid pod cidr {0:?}: expected an IPv4 CIDR between /8 and /30 such as 10.244.1.0/24"
    )]
    Cidr(String),
    #[error("pod uid {0:?} may only hold letters, digits, '-', '.' and '_'")]
    PodUid(String),
    #[error("pod cidr {0} has no free address left")]
    Exhausted(Ipv4Net),
    #[error("ipam state {path}: {source}")]
    Ipam {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("unexpected output of `{command}`: {why}")]
    Output { command: String, why: String },
    #[error("injected failure: {0}")]
    Injected(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An IPv4 network such as a node's podCIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    base: u32,
    prefix: u8,
}

impl Ipv4Net {
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn last(&self) -> u32 {
        self.base | (u32::MAX >> self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.base..=self.last()).contains(&u32::from(ip))
    }

    /// The first host: the bridge's address, which is every pod's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// Addresses pods may get: all hosts but the gateway (no network, no broadcast).
    pub fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        (self.base + 2..self.last()).map(Ipv4Addr::from)
    }
}

impl FromStr for Ipv4Net {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Cidr(s.to_string());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        // A /31 or /32 leaves no room for a gateway and a pod.
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        Ok(Ipv4Net {
            base: u32::from(ip) & (u32::MAX << (32 - prefix)),
            prefix,
        })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// A transport protocol of a hostPort, as the pod spec names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses `TCP`, `UDP` or `SCTP`; the pod spec's default is TCP.
    pub fn from_spec(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The nftables keyword.
    pub fn nft(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A container port published on the host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub container_port: u16,
    pub host_port: u16,
    pub protocol: Protocol,
    /// Only traffic to this host address is forwarded; `None` means any local address.
    pub host_ip: Option<Ipv4Addr>,
}

/// What a pod needs from the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetRequest {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    pub host_ports: Vec<HostPort>,
}

/// A pod's network as it exists on the box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    pub pod_uid: String,
    /// The network namespace containers of the pod join.
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// The pod network as the sync loop uses it.
pub trait PodNetwork: Send + Sync {
    /// Give the pod a network namespace with an address and its hostPorts. Asking again
    /// for a pod whose network exists returns that network unchanged.
    fn setup(&self, req: &PodNetRequest) -> impl Future<Output = Result<PodNet>> + Send;

    /// Remove everything the pod's network holds; removing a missing one succeeds.
    fn teardown(&self, pod_uid: &str) -> impl Future<Output = Result<()>> + Send;

    /// The pod networks that exist, e.g. after an agent restart: every pod holding an
    /// address. After a reboot their namespaces are gone; `setup` for such a pod builds
    /// its network again and `teardown` frees it.
    fn list(&self) -> impl Future<Output = Result<Vec<PodNet>>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_table() {
        let cases = [
            ("10.244.1.0/24", Some(("10.244.1.0/24", "10.244.1.1", 253))),
            ("10.244.1.77/24", Some(("10.244.1.0/24", "10.244.1.1", 253))),
            ("10.0.0.0/30", Some(("10.0.0.0/30", "10.0.0.1", 1))),
            ("10.0.0.0/31", None),
            ("10.0.0.0", None),
            ("fd00::/64", None),
            ("10.0.0.0/x", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<Ipv4Net>().ok().map(|n| {
                (
                    n.to_string(),
                    n.gateway().to_string(),
                    n.pod_addresses().count(),
                )
            });
            let want = want.map(|(n, g, c)| (n.to_string(), g.to_string(), c));
            assert_eq!(got, want, "{input}");
        }
        let net: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert!(net.contains("10.244.1.255".parse().unwrap()));
        assert!(!net.contains("10.244.2.0".parse().unwrap()));
        assert_eq!(
            net.pod_addresses().next(),
            Some(Ipv4Addr::new(10, 244, 1, 2))
        );
        assert_eq!(
            net.pod_addresses().last(),
            Some(Ipv4Addr::new(10, 244, 1, 254))
        );
    }

    #[test]
    fn protocol_table() {
        let cases = [
            (None, Some(Protocol::Tcp)),
            (Some("TCP"), Some(Protocol::Tcp)),
            (Some("UDP"), Some(Protocol::Udp)),
            (Some("SCTP"), Some(Protocol::Sctp)),
            (Some("tcp"), None),
        ];
        for (input, want) in cases {
            assert_eq!(Protocol::from_spec(input), want, "{input:?}");
        }
    }
}
