//! Three nodes in one process over the in-process transport: writes replicate to every
//! replica, followers refuse writes with the leader's address, and when the leader stops
//! the other two elect a new one and keep going. Nothing here is a one-voter shortcut.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_api::store::{
    ObjectKey, ObjectStore, Precondition, ReadMode, Resource, StoreError, WriteOp,
};
use kith_control::store::network::InProcessNetwork;
use kith_control::store::{NodeId, RaftStore, StoreConfig};
use openraft::BasicNode;
use serde_json::json;
use tempfile::TempDir;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Resource::new("", "configmaps"), "default", name)
}

fn create(name: &str) -> WriteOp {
    WriteOp::Create {
        key: key(name),
        object: json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}}).into(),
    }
}

fn addr(id: NodeId) -> String {
    format!("in-process:{id}")
}

struct Cluster {
    net: InProcessNetwork,
    nodes: BTreeMap<NodeId, Arc<RaftStore>>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    async fn start(ids: &[NodeId]) -> Cluster {
        let mut c = Cluster {
            net: InProcessNetwork::new(),
            nodes: BTreeMap::new(),
            _dirs: Vec::new(),
        };
        for &id in ids {
            c.add_node(id).await;
        }
        let members: BTreeMap<NodeId, BasicNode> = ids
            .iter()
            .map(|&id| (id, BasicNode::new(addr(id))))
            .collect();
        c.nodes[&ids[0]]
            .raft()
            .initialize(members)
            .await
            .expect("initialize the voters");
        c
    }

    /// Open a node that waits to be made a member of this region.
    async fn add_node(&mut self, id: NodeId) {
        let dir = TempDir::new().expect("tempdir");
        let mut config = StoreConfig::new(id, addr(id), dir.path());
        // Not a region of its own.
        config.bootstrap = false;
        // Short, so the minority test does not wait the default 10 s per refusal.
        config.request_timeout_ms = 2_000;
        let store = RaftStore::open_with_transport(config, Arc::new(self.net.clone()))
            .await
            .expect("open node");
        self.net.register(id, store.raft().clone());
        self.nodes.insert(id, store);
        self._dirs.push(dir);
    }

    /// The leader every running node agrees on.
    async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen: Vec<Option<NodeId>> = self
                .nodes
                .values()
                .map(|n| n.metrics().current_leader)
                .collect();
            if let Some(Some(l)) = seen.first() {
                if self.nodes.contains_key(l) && seen.iter().all(|s| s == &Some(*l)) {
                    let m = self.nodes[l].metrics();
                    if m.state.is_leader() {
                        return *l;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every running node applied at least `index`.
    async fn applied_everywhere(&self, index: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.nodes.values().all(|n| n.revision() >= index) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replicas did not reach {index}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(&mut self, id: NodeId) {
        self.net.unregister(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await.expect("shutdown");
        }
    }
}

fn rv(b: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(b).expect("json");
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_elect_a_new_leader() {
    let mut c = Cluster::start(&[1, 2, 3]).await;
    let leader = c.leader().await;
    let voters: Vec<NodeId> = c.nodes[&leader]
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, vec![1, 2, 3]);

    let mut written: BTreeMap<String, Bytes> = BTreeMap::new();
    for i in 0..20 {
        let name = format!("first-{i}");
        let b = c.nodes[&leader]
            .write(create(&name))
            .await
            .expect("write on leader");
        written.insert(name, b);
    }
    let follower = *c
        .nodes
        .keys()
        .find(|&&id| id != leader)
        .expect("a follower");
    // A follower forwards the write to the leader and answers once it applied it itself:
    // the writer reads its own write from the same box, even with a stale read.
    let on_follower = c.nodes[&follower]
        .write(create("on-follower"))
        .await
        .expect("a write through a follower");
    assert!(rv(&on_follower) > rv(&written["first-19"]));
    let seen = c.nodes[&follower]
        .get(&key("on-follower"), ReadMode::Stale)
        .await
        .expect("read-your-writes on the follower");
    assert_eq!(seen, on_follower);
    written.insert("on-follower".into(), on_follower);
    // A linearizable read on a follower asks the leader for the read index first.
    let got = c.nodes[&follower]
        .get(&key("first-0"), ReadMode::Linearizable)
        .await
        .expect("a linearizable read on a follower");
    assert_eq!(got, written["first-0"]);
    // Preconditions hold through forwarding: a stale resourceVersion is a conflict.
    let stale = WriteOp::Update {
        key: key("first-1"),
        object: json!({"metadata": {"name": "first-1", "namespace": "default", "uid": "uid-first-1", "resourceVersion": "1"}}).into(),
        expect: Precondition {
            resource_version: Some(1),
            uid: None,
        },
    };
    match c.nodes[&follower].write(stale).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("a stale update through a follower: {other:?}"),
    }

    let last = c.nodes[&leader].revision();
    c.applied_everywhere(last).await;
    for node in c.nodes.values() {
        for (name, bytes) in &written {
            let got = node
                .get(&key(name), ReadMode::Stale)
                .await
                .expect("replicated");
            assert_eq!(
                &got,
                bytes,
                "node {} has {name} as the leader wrote it",
                node.node_id()
            );
        }
    }

    c.stop(leader).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    for i in 0..10 {
        let name = format!("second-{i}");
        let b = c.nodes[&new_leader]
            .write(create(&name))
            .await
            .expect("write on new leader");
        assert!(rv(&b) > last, "revisions keep rising across leaders");
        written.insert(name, b);
    }
    let last = c.nodes[&new_leader].revision();
    c.applied_everywhere(last).await;
    for node in c.nodes.values() {
        let listing = node
            .list(&Resource::new("", "configmaps"), None, ReadMode::Stale)
            .await
            .expect("list");
        assert_eq!(
            listing.items.len(),
            written.len(),
            "node {}",
            node.node_id()
        );
        for (name, bytes) in &written {
            let got = node
                .get(&key(name), ReadMode::Stale)
                .await
                .expect("replicated");
            assert_eq!(&got, bytes);
        }
    }
    // Two of three voters are a quorum: linearizable reads still work on the new leader.
    c.nodes[&new_leader]
        .get(&key("second-0"), ReadMode::Linearizable)
        .await
        .expect("linearizable read with two of three");
    for id in c.nodes.keys().copied().collect::<Vec<_>>() {
        c.stop(id).await;
    }
}

async fn wait_metrics(
    node: &RaftStore,
    what: &str,
    ok: impl Fn(&openraft::RaftMetrics<NodeId, BasicNode>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok(&node.metrics()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The leader's log behind its snapshot is gone, so a node added later can only catch up
/// through a snapshot transfer (`full_snapshot` over the transport, `install_snapshot`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_catches_up_from_a_snapshot() {
    let mut c = Cluster::start(&[1, 2, 3]).await;
    let leader = c.leader().await;
    let mut written: BTreeMap<String, Bytes> = BTreeMap::new();
    for i in 0..30 {
        let name = format!("before-{i}");
        let b = c.nodes[&leader].write(create(&name)).await.expect("write");
        written.insert(name, b);
    }
    let l = c.nodes[&leader].clone();
    c.applied_everywhere(l.revision()).await;
    // A log index, not a revision: several writes can share an entry.
    let applied = l.metrics().last_applied.map(|a| a.index).unwrap_or(0);
    l.raft().trigger().snapshot().await.expect("snapshot");
    wait_metrics(&l, "snapshot", |m| {
        m.snapshot.map(|s| s.index) >= Some(applied)
    })
    .await;
    l.raft().trigger().purge_log(applied).await.expect("purge");
    wait_metrics(&l, "purge", |m| m.purged.map(|p| p.index) >= Some(applied)).await;

    c.add_node(4).await;
    // Asked of a follower, which takes it to the leader: learner, caught up, voter.
    let follower = *c
        .nodes
        .keys()
        .find(|&&id| id != leader && id != 4)
        .expect("a follower");
    c.nodes[&follower]
        .add_voter(4, &addr(4))
        .await
        .expect("make 4 a voter");
    let new = c.nodes[&4].clone();
    assert!(
        new.metrics().snapshot.map(|s| s.index) >= Some(applied),
        "node 4 caught up by snapshot before it became a voter"
    );
    for i in 0..5 {
        let name = format!("after-{i}");
        let b = l.write(create(&name)).await.expect("write");
        written.insert(name, b);
    }
    c.applied_everywhere(l.revision()).await;
    for (name, bytes) in &written {
        let got = new
            .get(&key(name), ReadMode::Stale)
            .await
            .expect("on node 4");
        assert_eq!(&got, bytes, "node 4 has {name} as written");
    }
    let voters: Vec<NodeId> = new
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, vec![1, 2, 3, 4]);
    // Adding it again changes nothing; removing it leaves the three.
    c.nodes[&4]
        .add_voter(4, &addr(4))
        .await
        .expect("idempotent");
    l.remove_member(4).await.expect("remove 4");
    let members: Vec<NodeId> = l.members().keys().copied().collect();
    assert_eq!(members, vec![1, 2, 3]);
    for id in c.nodes.keys().copied().collect::<Vec<_>>() {
        c.stop(id).await;
    }
}

/// With two of three voters gone, the last one refuses writes and linearizable reads with
/// `Unavailable` once its request timeout passes, and still serves stale reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_writes_and_linearizable_reads() {
    let mut c = Cluster::start(&[1, 2, 3]).await;
    let leader = c.leader().await;
    c.nodes[&leader]
        .write(create("before"))
        .await
        .expect("write");
    c.applied_everywhere(c.nodes[&leader].revision()).await;
    let others: Vec<NodeId> = c.nodes.keys().copied().filter(|&id| id != 3).collect();
    for id in others {
        c.stop(id).await;
    }
    let alone = c.nodes[&3].clone();
    let started = tokio::time::Instant::now();
    match alone.write(create("lost")).await {
        Err(StoreError::Unavailable(msg)) => assert!(
            msg.contains("no leader answered") || msg.contains("may still be applied"),
            "{msg}"
        ),
        other => panic!("a minority accepted a write: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    match alone.get(&key("before"), ReadMode::Linearizable).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a minority served a linearizable read: {other:?}"),
    }
    alone
        .get(&key("before"), ReadMode::Stale)
        .await
        .expect("stale reads stay local");
    c.stop(3).await;
}
