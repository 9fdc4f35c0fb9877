//! Node IPAM: gives every Node without `spec.podCIDR` a free /24 of the cluster CIDR
//! (default `10.244.0.0/16`, as flannel and kubeadm examples), from which its agent
//! addresses the pods it runs. One /24 per node keeps cross-box routing a matter of
//! one route per node.
//!
//! ```text
//!  nodes watch ──▶ pass: list nodes ──▶ used = every node's podCIDR
//!                                  └─▶ node without one ──▶ allocate(used, cluster) (pure)
//!                                                            └─▶ patch spec.podCIDR(s),
//!                                                                guarded by resourceVersion
//! ```
//!
//! The used set is rebuilt from the Nodes on every pass, so a restarted controller never
//! hands out a range a node still holds, and a deleted node's range is free again at the
//! next pass. The resourceVersion guard makes a concurrent writer (a second allocator,
//! an admin setting podCIDR by hand) win cleanly: the patch conflicts and the next pass
//! looks again.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::events::{self, EventType};

/// The name events from this controller carry as their source.
pub const COMPONENT: &str = "node-ipam-controller";
/// The cluster CIDR kith uses unless told otherwise.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Each node gets a range of this size.
pub const NODE_MASK: u8 = 24;
/// A pass runs at least this often, in case a watch missed a deletion.
const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid cidr {0:?}: expected an IPv4 CIDR such as 10.244.0.0/16")]
    Cidr(String),
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
}

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    fn last(&self) -> u32 {
        self.base | (u32::MAX >> self.prefix)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

impl FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Cidr(s.to_string());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(1..=32).contains(&prefix) {
            return Err(bad());
        }
        Ok(Cidr {
            base: u32::from(ip) & (u32::MAX << (32 - prefix)),
            prefix,
        })
    }
}

impl Default for Cidr {
    /// [`DEFAULT_CLUSTER_CIDR`].
    fn default() -> Self {
        Cidr {
            base: u32::from(Ipv4Addr::new(10, 244, 0, 0)),
            prefix: 16,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// The lowest /24 of `cluster` that overlaps no range in `used`; `None` when the
/// cluster CIDR is full (or smaller than a /24).
pub fn allocate(used: &BTreeSet<Cidr>, cluster: Cidr) -> Option<Cidr> {
    if cluster.prefix > NODE_MASK {
        return None;
    }
    let step = 1u64 << (32 - NODE_MASK);
    let count = 1u64 << (NODE_MASK - cluster.prefix);
    (0..count)
        .map(|i| Cidr {
            base: (u64::from(cluster.base) + i * step) as u32,
            prefix: NODE_MASK,
        })
        .find(|c| !used.iter().any(|u| u.overlaps(c)))
}

/// The ranges nodes hold: `spec.podCIDRs`, or `spec.podCIDR` where the list is absent.
pub fn used_ranges(nodes: &[Node]) -> BTreeSet<Cidr> {
    nodes
        .iter()
        .filter_map(|n| n.spec.as_ref())
        .flat_map(|s| {
            let list = s.pod_cidrs.clone().unwrap_or_default();
            let single = s.pod_cidr.clone().into_iter();
            list.into_iter().chain(single)
        })
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Whether the node still needs a range.
pub fn needs_range(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .is_none_or(str::is_empty)
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Run the allocator over `cluster` until the task is dropped.
pub async fn run(client: Client, cluster: Cidr) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut changes = watcher(nodes, watcher::Config::default()).boxed();
    // Nodes already told the range is full, so a resync does not repeat the event.
    let mut reported = BTreeSet::new();
    loop {
        if let Err(e) = pass(&client, cluster, &mut reported).await {
            tracing::warn!(error = %e, "node ipam pass failed");
        }
        match tokio::time::timeout(RESYNC, changes.next()).await {
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "node ipam watch failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => {}
        }
        // A burst of node events costs one pass.
        while let Some(Some(_)) = changes.next().now_or_never() {}
    }
}

async fn pass(
    client: &Client,
    cluster: Cidr,
    reported: &mut BTreeSet<String>,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let nodes = api.list(&ListParams::default()).await?.items;
    let mut used = used_ranges(&nodes);
    reported.retain(|uid| nodes.iter().any(|n| n.metadata.uid.as_ref() == Some(uid)));
    for node in nodes.iter().filter(|n| needs_range(n)) {
        let Some(range) = allocate(&used, cluster) else {
            let uid = node.metadata.uid.clone().unwrap_or_default();
            if reported.insert(uid) {
                let msg = format!("Node {} status is now: CIDRNotAvailable", node.name_any());
                tracing::warn!(node = %node.name_any(), %cluster, "no free pod range");
                events::record(
                    client,
                    &node.object_ref(&()),
                    EventType::Normal,
                    "CIDRNotAvailable",
                    &msg,
                    COMPONENT,
                )
                .await;
            }
            continue;
        };
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"podCIDR": range.to_string(), "podCIDRs": [range.to_string()]},
        });
        match api
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(node = %node.name_any(), %range, "allocated pod range");
                used.insert(range);
            }
            // Gone or changed since the list: the next pass sees it as it is now.
            Err(e) if is_code(&e, 404) || is_code(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn node(name: &str, pod_cidr: Option<&str>, pod_cidrs: Option<&[&str]>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: pod_cidr.map(String::from),
                pod_cidrs: pod_cidrs.map(|l| l.iter().map(|s| s.to_string()).collect()),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn cidr_parsing_table() {
        assert_eq!(cidr(DEFAULT_CLUSTER_CIDR), Cidr::default());
        let cases = [
            ("10.244.0.0/16", Some("10.244.0.0/16")),
            ("10.244.9.9/16", Some("10.244.0.0/16")),
            ("10.244.3.0/24", Some("10.244.3.0/24")),
            ("10.244.0.0", None),
            ("10.244.0.0/33", None),
            ("10.244.0.0/0", None),
            ("fd00::/64", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<Cidr>().ok().map(|c| c.to_string());
            assert_eq!(got.as_deref(), want, "{input}");
        }
    }

    #[test]
    fn allocate_table() {
        let cases: [(&str, &str, &[&str], Option<&str>); 8] = [
            ("empty", "10.244.0.0/16", &[], Some("10.244.0.0/24")),
            (
                "next after used",
                "10.244.0.0/16",
                &["10.244.0.0/24", "10.244.1.0/24"],
                Some("10.244.2.0/24"),
            ),
            (
                "fills a hole left by a deleted node",
                "10.244.0.0/16",
                &["10.244.0.0/24", "10.244.2.0/24"],
                Some("10.244.1.0/24"),
            ),
            (
                "a wider range set by hand blocks what it covers",
                "10.244.0.0/16",
                &["10.244.0.0/23"],
                Some("10.244.2.0/24"),
            ),
            (
                "ranges outside the cluster cidr don't matter",
                "10.244.0.0/16",
                &["10.1.0.0/24"],
                Some("10.244.0.0/24"),
            ),
            (
                "full",
                "10.244.0.0/23",
                &["10.244.0.0/24", "10.244.1.0/24"],
                None,
            ),
            (
                "a /24 cluster has one",
                "10.244.5.0/24",
                &[],
                Some("10.244.5.0/24"),
            ),
            ("smaller than a /24", "10.244.5.0/25", &[], None),
        ];
        for (name, cluster, used, want) in cases {
            let used: BTreeSet<Cidr> = used.iter().map(|s| cidr(s)).collect();
            assert_eq!(allocate(&used, cidr(cluster)), want.map(cidr), "{name}");
        }
        let all: BTreeSet<Cidr> = (0..=255)
            .map(|i| cidr(&format!("10.244.{i}.0/24")))
            .collect();
        assert_eq!(allocate(&all, Cidr::default()), None);
    }

    #[test]
    fn used_and_needs_table() {
        let mut deleting = node("d", None, None);
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let nodes = vec![
            node("a", Some("10.244.0.0/24"), Some(&["10.244.0.0/24"])),
            node("b", Some("10.244.1.0/24"), None),
            node("c", None, None),
            node("e", Some(""), None),
            node("f", Some("garbage"), None),
            deleting,
        ];
        let used: Vec<String> = used_ranges(&nodes).iter().map(|c| c.to_string()).collect();
        assert_eq!(used, ["10.244.0.0/24", "10.244.1.0/24"]);
        let needing: Vec<String> = nodes
            .iter()
            .filter(|n| needs_range(n))
            .map(|n| n.name_any())
            .collect();
        assert_eq!(needing, ["c", "e"]);
    }

    /// The loop against the real API service over an in-memory store.
    mod in_process {
        use std::sync::Arc;

        use kith_api::auth::{Authenticator, User, MASTERS_GROUP};
        use kith_api::handler::Api as ApiHandler;
        use kith_api::server::ApiService;
        use kith_api::store::memory::MemoryStore;
        use kube::api::{DeleteParams, PostParams};
        use tokio::task::JoinSet;

        use super::*;

        fn client() -> Client {
            let svc = ApiService::new(
                Arc::new(ApiHandler::new(MemoryStore::default())),
                Authenticator::new([]),
            );
            crate::client::in_process(svc, User::new("test", [MASTERS_GROUP]))
        }

        async fn create(client: &Client, name: &str, pod_cidr: Option<&str>) {
            let mut n = node(name, pod_cidr, pod_cidr.map(|c| vec![c]).as_deref());
            n.metadata.uid = None;
            Api::<Node>::all(client.clone())
                .create(&PostParams::default(), &n)
                .await
                .expect("create node");
        }

        /// The node's podCIDR once set, waiting up to ten seconds.
        async fn range_of(client: &Client, name: &str) -> String {
            let api: Api<Node> = Api::all(client.clone());
            for _ in 0..100 {
                let n = api.get(name).await.expect("node");
                let spec = n.spec.unwrap_or_default();
                if let Some(c) = spec.pod_cidr.filter(|c| !c.is_empty()) {
                    assert_eq!(spec.pod_cidrs, Some(vec![c.clone()]), "{name}");
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{name} got no podCIDR in time");
        }

        #[tokio::test]
        async fn allocates_keeps_frees_and_survives_restart() {
            let client = client();
            let mut set = JoinSet::new();
            set.spawn(run(client.clone(), Cidr::default()));

            create(&client, "a", None).await;
            assert_eq!(range_of(&client, "a").await, "10.244.0.0/24");
            create(&client, "b", None).await;
            assert_eq!(range_of(&client, "b").await, "10.244.1.0/24");
            // A range set by hand is kept and never handed to another node.
            create(&client, "c", Some("10.244.2.0/24")).await;
            create(&client, "d", None).await;
            assert_eq!(range_of(&client, "d").await, "10.244.3.0/24");
            assert_eq!(range_of(&client, "c").await, "10.244.2.0/24");

            // A restarted controller rebuilds what is used from the nodes.
            set.abort_all();
            while set.join_next().await.is_some() {}
            set.spawn(run(client.clone(), Cidr::default()));
            create(&client, "e", None).await;
            assert_eq!(range_of(&client, "e").await, "10.244.4.0/24");

            // A deleted node's range goes to the next node.
            Api::<Node>::all(client.clone())
                .delete("a", &DeleteParams::default())
                .await
                .expect("delete a");
            create(&client, "f", None).await;
            assert_eq!(range_of(&client, "f").await, "10.244.0.0/24");
        }

        #[tokio::test]
        async fn full_cluster_cidr_leaves_the_node_without_a_range() {
            let client = client();
            // Events about cluster-scoped objects go to `default`.
            let ns = k8s_openapi::api::core::v1::Namespace {
                metadata: ObjectMeta {
                    name: Some("default".into()),
                    ..ObjectMeta::default()
                },
                ..Default::default()
            };
            Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await
                .expect("namespace");
            let mut set = JoinSet::new();
            set.spawn(run(client.clone(), cidr("10.250.0.0/24")));
            create(&client, "a", None).await;
            assert_eq!(range_of(&client, "a").await, "10.250.0.0/24");
            create(&client, "b", None).await;
            // Wait for the event that says the range is full, then check b has none.
            let events: Api<k8s_openapi::api::core::v1::Event> =
                Api::namespaced(client.clone(), "default");
            let mut seen = false;
            for _ in 0..100 {
                let list = events.list(&ListParams::default()).await.expect("events");
                if list
                    .items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("CIDRNotAvailable"))
                {
                    seen = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(seen, "CIDRNotAvailable event");
            let b = Api::<Node>::all(client.clone()).get("b").await.expect("b");
            assert!(b.spec.and_then(|s| s.pod_cidr).is_none());
        }
    }
}
