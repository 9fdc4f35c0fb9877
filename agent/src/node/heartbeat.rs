//! Registration and heartbeats: the agent creates (or refreshes) its Node, renews its
//! Lease in `kube-node-lease` every few seconds, and posts its conditions through the
//! status subresource when they change or a while has passed — like the kubelet, so the
//! control plane's node-lifecycle controller judges kith agents as it would kubelets.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use super::{conditions, conditions_changed, Error, NodeConfig, NodeReadings, Result};

/// Where node Leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Creates the Node, or brings an existing one up to date: its labels are merged in and
/// its status (capacity, system info, addresses, endpoint) patched, while the spec
/// (podCIDR, taints), other labels and the conditions stay as they are.
pub async fn register(client: &Client, node: Node) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = node.name_any();
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %name, "registered node"),
        Err(e) if is_code(&e, 409) => tracing::info!(node = %name, "node exists, updating it"),
        Err(e) => return Err(e.into()),
    }
    let pp = PatchParams::default();
    let labels = json!({ "metadata": { "labels": node.metadata.labels } });
    nodes.patch(&name, &pp, &Patch::Merge(labels)).await?;
    let status = serde_json::to_value(&node.status).map_err(|source| Error::Encode {
        what: "node status",
        source,
    })?;
    Ok(nodes
        .patch_status(&name, &pp, &Patch::Merge(json!({ "status": status })))
        .await?)
}

/// Wall-clock time that advances with tokio's clock, so paused-time tests see Lease
/// renewals and condition heartbeats move as the loop's intervals pass.
struct Clock {
    wall: Timestamp,
    mono: Instant,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Timestamp::now(),
            mono: Instant::now(),
        }
    }

    fn now(&self) -> Timestamp {
        self.wall
            .checked_add(self.mono.elapsed())
            .unwrap_or(self.wall)
    }
}

async fn ensure_namespace(client: &Client) -> Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(LEASE_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match nss.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(e) if is_code(&e, 409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The Lease a node holds, owned by the Node so it goes when the Node goes.
pub fn lease_object(cfg: &NodeConfig, node_uid: Option<&str>, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: cfg.name.clone(),
                    uid: uid.into(),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.name.clone()),
            lease_duration_seconds: Some(cfg.lease_duration_seconds),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    }
}

async fn renew_lease(
    client: &Client,
    cfg: &NodeConfig,
    node_uid: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let renew = json!({ "spec": {
        "holderIdentity": cfg.name,
        "leaseDurationSeconds": cfg.lease_duration_seconds,
        "renewTime": MicroTime(now),
    }});
    match leases
        .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(renew))
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) if is_code(&e, 404) => {}
        Err(e) => return Err(e.into()),
    }
    // No Lease yet (or someone removed it). Its namespace is one every cluster has; only
    // if that is gone too is it made again (a node may not create namespaces in general,
    // so the attempt is made only when needed).
    let lease = lease_object(cfg, node_uid, now);
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => return Ok(()),
        Err(e) if is_code(&e, 409) => return Ok(()),
        Err(e) if is_code(&e, 404) => {}
        Err(e) => return Err(e.into()),
    }
    ensure_namespace(client).await?;
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(e) if is_code(&e, 409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn post_conditions(client: &Client, name: &str, conds: &[NodeCondition]) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({ "status": { "conditions": conds } });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Keeps the node alive in the control plane's eyes until the task is dropped: renews
/// the Lease every `lease_renew_interval` and posts conditions computed from `read` when
/// they change, every `status_update_interval`, and after a failed renewal (the
/// control plane may have marked the node Unknown meanwhile).
pub async fn heartbeat_loop<F>(client: Client, cfg: NodeConfig, mut read: F)
where
    F: FnMut() -> Result<NodeReadings> + Send,
{
    let clock = Clock::start();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut previous: Vec<NodeCondition> = Vec::new();
    let mut node_uid: Option<String> = None;
    let mut last_post: Option<Instant> = None;
    let mut force = true;
    let mut ticks = tokio::time::interval(cfg.lease_renew_interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if node_uid.is_none() {
            // Start from what is stored, so unchanged conditions keep their transition times.
            match nodes.get_opt(&cfg.name).await {
                Ok(Some(n)) => {
                    node_uid = n.metadata.uid.clone();
                    previous = n.status.and_then(|s| s.conditions).unwrap_or_default();
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading own node"),
            }
        }
        let now = clock.now();
        if let Err(e) = renew_lease(&client, &cfg, node_uid.as_deref(), now).await {
            tracing::warn!(node = %cfg.name, error = %e, "renewing node lease");
            force = true;
            continue;
        }
        let readings = match read() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading node state");
                continue;
            }
        };
        let conds = conditions(&readings, &cfg.thresholds, &previous, now);
        let due = last_post.is_none_or(|t| t.elapsed() >= cfg.status_update_interval);
        if !(force || due || conditions_changed(&conds, &previous)) {
            continue;
        }
        match post_conditions(&client, &cfg.name, &conds).await {
            Ok(()) => {
                previous = conds;
                last_post = Some(Instant::now());
                force = false;
            }
            Err(e) => tracing::warn!(node = %cfg.name, error = %e, "posting node status"),
        }
    }
}
