//! Registration and heartbeats against the real API service over an in-memory store.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use kith_agent::node::{self, NodeConfig, NodeReadings};
use kith_api::auth::{Authenticator, User, MASTERS_GROUP};
use kith_api::handler::Api;
use kith_api::server::{ApiService, Peer};
use kith_api::store::memory::MemoryStore;
use kube::api::{Patch, PatchParams};
use serde_json::json;

fn client() -> kube::Client {
    let service = ApiService::new(
        Arc::new(Api::new(MemoryStore::default())),
        Authenticator::new([]),
    );
    let peer = Arc::new(Peer {
        cert: None,
        trusted: Some(User::new("test", [MASTERS_GROUP])),
    });
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let service = service.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(service.handle(req, &peer).await) }
    });
    kube::Client::new(svc, "default")
}

fn readings() -> NodeReadings {
    NodeReadings {
        hostname: "box-1".into(),
        cpus: 2,
        memory_total_bytes: 4 << 30,
        memory_available_bytes: 3 << 30,
        disk_total_bytes: 50 << 30,
        disk_available_bytes: 40 << 30,
        pids_max: 32768,
        pids_used: 200,
        load_1m: 0.1,
        kernel_version: "6.1.0".into(),
        os_image: "Debian GNU/Linux 12 (bookworm)".into(),
        arch: "x86_64".into(),
        machine_id: "m".into(),
        boot_id: "b".into(),
        not_ready: None,
    }
}

#[tokio::test]
async fn register_creates_then_updates_without_losing_others_fields() {
    let client = client();
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let cfg = NodeConfig::new("box-1");
    let created = node::register(&client, node::node_object(&readings(), &cfg))
        .await
        .unwrap();
    let status = created.status.as_ref().unwrap();
    assert_eq!(
        status.capacity.as_ref().unwrap()["pods"].0,
        "110",
        "status kept on create"
    );
    assert_eq!(
        status.node_info.as_ref().unwrap().kubelet_version,
        "v1.33.0-kith"
    );

    // The node IPAM controller and the node-lifecycle controller write the spec.
    let spec = json!({ "spec": {
        "podCIDR": "10.244.7.0/24",
        "podCIDRs": ["10.244.7.0/24"],
        "taints": [{"key": "example.com/dedicated", "value": "x", "effect": "NoSchedule"}],
    }, "metadata": { "labels": { "example.com/team": "edge" } } });
    nodes
        .patch("box-1", &PatchParams::default(), &Patch::Merge(spec))
        .await
        .unwrap();

    // The agent restarts on a box that grew memory and a label.
    let mut bigger = readings();
    bigger.memory_total_bytes = 8 << 30;
    let mut cfg2 = cfg.clone();
    cfg2.labels.insert("example.com/tier".into(), "gold".into());
    node::register(&client, node::node_object(&bigger, &cfg2))
        .await
        .unwrap();
    let got = nodes.get("box-1").await.unwrap();
    let spec = got.spec.unwrap();
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.7.0/24"));
    let taints: Vec<Taint> = spec.taints.unwrap();
    assert_eq!(taints.len(), 1);
    assert_eq!(taints[0].key, "example.com/dedicated");
    let labels = got.metadata.labels.unwrap();
    assert_eq!(labels["example.com/team"], "edge");
    assert_eq!(labels["example.com/tier"], "gold");
    assert_eq!(labels["kubernetes.io/arch"], "amd64");
    assert_eq!(
        got.status.unwrap().capacity.unwrap()["memory"].0,
        "8388608Ki"
    );
}

fn cond<'a>(n: &'a Node, t: &str) -> &'a NodeCondition {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == t))
        .unwrap_or_else(|| panic!("no {t} condition"))
}

fn has_cond(n: &Node, t: &str, status: &str) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == status))
}

/// Polls `get` until `done` holds, for at most ten seconds.
async fn eventually<T, F, Fut>(what: &str, get: F, done: impl Fn(&T) -> bool) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..200 {
        if let Some(v) = get().await {
            if done(&v) {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not in time: {what}");
}

fn fast(status_every: Duration) -> NodeConfig {
    let mut cfg = NodeConfig::new("box-1");
    cfg.lease_renew_interval = Duration::from_millis(100);
    cfg.status_update_interval = status_every;
    cfg
}

/// The intervals are shortened to milliseconds (the tokio clock can't be paused here
/// without the tokio `test-util` feature, which would rebuild the whole dependency tree).
#[tokio::test]
async fn heartbeat_renews_lease_and_posts_conditions_on_change() {
    let client = client();
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), "kube-node-lease");
    // Status only on change: the interval is out of reach of this test.
    let cfg = fast(Duration::from_secs(3600));
    let created = node::register(&client, node::node_object(&readings(), &cfg))
        .await
        .unwrap();

    let shared = Arc::new(Mutex::new(readings()));
    let source = shared.clone();
    let task = tokio::spawn(node::heartbeat_loop(
        client.clone(),
        cfg.clone(),
        move || Ok(source.lock().unwrap().clone()),
    ));

    let lease = eventually(
        "lease created",
        || async { leases.get_opt("box-1").await.unwrap() },
        |_| true,
    )
    .await;
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("box-1"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = &lease.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Node", created.metadata.uid.as_deref().unwrap())
    );
    let first_renew = spec.renew_time.unwrap().0;
    eventually(
        "lease renewed",
        || async { leases.get("box-1").await.ok()?.spec?.renew_time },
        |t| t.0 > first_renew,
    )
    .await;

    let n = eventually(
        "conditions posted",
        || async { nodes.get("box-1").await.ok() },
        |n| has_cond(n, "Ready", "True"),
    )
    .await;
    let ready = cond(&n, "Ready");
    assert_eq!(
        (ready.reason.as_deref(), ready.message.as_deref()),
        (
            Some("KubeletReady"),
            Some("kubelet is posting ready status")
        )
    );
    assert_eq!(cond(&n, "MemoryPressure").status, "False");
    assert_eq!(cond(&n, "DiskPressure").status, "False");
    assert_eq!(cond(&n, "PIDPressure").status, "False");
    let ready_since = ready.last_transition_time.clone();
    let posted_rv = n.metadata.resource_version.clone();

    // Several renewals pass without a change: the Node is not written again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        nodes.get("box-1").await.unwrap().metadata.resource_version,
        posted_rv,
        "unchanged conditions are not posted before the status interval"
    );

    // Memory runs low: posted at once, and only MemoryPressure moves.
    // Kubernetes times have whole seconds.
    let flipped = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    shared.lock().unwrap().memory_available_bytes = 10 << 20;
    let n = eventually(
        "memory pressure posted",
        || async { nodes.get("box-1").await.ok() },
        |n| has_cond(n, "MemoryPressure", "True"),
    )
    .await;
    let mem = cond(&n, "MemoryPressure");
    assert_eq!(mem.reason.as_deref(), Some("KubeletHasInsufficientMemory"));
    assert_eq!(cond(&n, "Ready").last_transition_time, ready_since);
    let moved = mem.last_transition_time.as_ref().unwrap().0;
    assert!(
        moved >= flipped,
        "transition at {moved}, flipped at {flipped}"
    );

    // Someone deletes the Lease: the next renewal recreates it.
    leases.delete("box-1", &Default::default()).await.unwrap();
    eventually(
        "lease recreated",
        || async { leases.get_opt("box-1").await.unwrap() },
        |_| true,
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn heartbeat_posts_unchanged_conditions_every_status_interval() {
    let client = client();
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let cfg = fast(Duration::from_millis(300));
    node::register(&client, node::node_object(&readings(), &cfg))
        .await
        .unwrap();
    let task = tokio::spawn(node::heartbeat_loop(client.clone(), cfg, || Ok(readings())));
    let first = eventually(
        "conditions posted",
        || async { nodes.get("box-1").await.ok() },
        |n| has_cond(n, "Ready", "True"),
    )
    .await;
    let first_ready = cond(&first, "Ready").clone();
    let later = eventually(
        "heartbeat time moves",
        || async { nodes.get("box-1").await.ok() },
        |n| cond(n, "Ready").last_heartbeat_time > first_ready.last_heartbeat_time,
    )
    .await;
    assert_eq!(
        cond(&later, "Ready").last_transition_time,
        first_ready.last_transition_time
    );
    task.abort();
}
