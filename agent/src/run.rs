//! `run`: one agent, assembled — register the Node, wait for its podCIDR, open the image
//! store, the container runtime and the pod network, then keep the heartbeat and the sync
//! loop going until shutdown.
//!
//! ```text
//!  read_node ─► node_object ─► register ─► wait for spec.podCIDR
//!        ├─ heartbeat_loop (Lease, conditions)
//!        ├─ stats::Stats::run (samples containers and the box; meter) + pod start latency
//!        ├─ image GC when the image filesystem is over its high threshold (image::gc)
//!        └─ sync::Agent::run (RegistryImageStore, LibcontainerRuntime, BridgeNetwork)
//! ```

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

use crate::image::gc::{self, GcPolicy, Statvfs};
use crate::image::RegistryImageStore;
use crate::network::PodNetwork;
use crate::network::{BridgeConfig, BridgeNetwork, Ipv4Net};
use crate::node::{self, NodeConfig};
use crate::runtime::{ContainerRuntime, LibcontainerRuntime, RuntimeConfig};
use crate::server::LocalNode;
use crate::spec::NodeAllocatable;
use crate::stats::Stats;
use crate::sync::{Agent, SyncConfig};

/// The agent's own parent cgroup; every container's cgroup sits below it.
pub const CGROUP_ROOT: &str = "/kith";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the node: {0}")]
    Node(#[from] node::Error),
    #[error("the image store: {0}")]
    Images(#[from] crate::image::ImageError),
    #[error("the pod network: {0}")]
    Network(#[from] crate::network::Error),
    #[error("the node {node} got no valid spec.podCIDR: {message}")]
    PodCidr { node: String, message: String },
    #[error("talking to the API: {0}")]
    Api(#[from] kube::Error),
}

/// What `kith agent` (or `kith up`) tells the agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// Registries reached over plain HTTP (loopback ones always are).
    pub insecure_registries: Vec<String>,
    /// The `kith` binary the per-container shims run as.
    pub shim_binary: PathBuf,
    /// The address other boxes reach this one at.
    pub node_ip: Option<IpAddr>,
    /// The pod bridge, also the name of kith's nftables table (`kith0` by default).
    pub bridge: String,
    /// The port the API server reaches this node at (`kith agent --node-port`; recorded
    /// in the Node's `status.daemonEndpoints.kubeletEndpoint.port`).
    pub node_port: u16,
    /// When unused images are removed to free disk (`--image-gc-high-threshold`, ...).
    pub image_gc: GcPolicy,
    /// The kubelet's `--seccomp-default`: RuntimeDefault for containers that ask for no
    /// seccomp profile. Localhost profiles live in `<data_dir>/seccomp`.
    pub seccomp_default: bool,
}

impl AgentOptions {
    fn runtime(&self) -> LibcontainerRuntime {
        LibcontainerRuntime::new(RuntimeConfig::new(
            self.data_dir.join("runtime"),
            self.shim_binary.clone(),
            CGROUP_ROOT.into(),
        ))
    }

    /// This box's resource readings and meter: made before the agent runs so the API
    /// server can serve them (metrics.k8s.io, /metrics); [`run`] keeps them current.
    pub fn stats(&self) -> Arc<Stats> {
        Stats::new(&self.node_name, &self.data_dir, CGROUP_ROOT)
    }

    /// This node as the API server's in-process agent (`kith up`): logs, exec and stats
    /// with no network hop.
    pub fn local_parts(&self, stats: Arc<Stats>) -> kith_api::remote_node::LocalParts {
        kith_api::remote_node::LocalParts {
            name: self.node_name.clone(),
            logs: Arc::new(self.local_node()),
            exec: Arc::new(self.local_node()),
            metrics: Arc::new(stats.agent_registry()),
            stats,
        }
    }

    /// How the API server reaches this agent: in-process under `kith up`, else through
    /// [`crate::node_server`].
    pub fn local_node(&self) -> LocalNode<LibcontainerRuntime> {
        LocalNode::new(
            self.node_name.clone(),
            self.data_dir.clone(),
            Arc::new(self.runtime()),
        )
    }
}

/// Run the agent until `shutdown` resolves. Containers keep running afterwards: a new
/// agent on the same data dir re-adopts them.
pub async fn run(
    client: Client,
    opts: AgentOptions,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| node::Error::Read {
        path: opts.data_dir.display().to_string(),
        source,
    })?;
    let mut node_cfg = NodeConfig::new(opts.node_name.clone());
    node_cfg.internal_ip = opts.node_ip;
    node_cfg.server_port = opts.node_port;
    let readings = node::readings::read_node(&opts.data_dir)?;
    let node_obj = node::node_object(&readings, &node_cfg);
    let allocatable = allocatable_of(&node_obj);
    node::heartbeat::register(&client, node_obj).await?;

    let heartbeat = {
        let client = client.clone();
        let cfg = node_cfg.clone();
        let dir = opts.data_dir.clone();
        tokio::spawn(async move {
            node::heartbeat::heartbeat_loop(client, cfg, move || node::readings::read_node(&dir))
                .await
        })
    };

    // Sampling needs only the runtime's state directories, not the network or the API.
    let sampler = {
        let stats = Arc::clone(&stats);
        let runtime = opts.runtime();
        tokio::spawn(async move { stats.run(&runtime, std::future::pending()).await })
    };
    let pod_starts = tokio::spawn(crate::stats::pod_start::watch(
        client.clone(),
        opts.node_name.clone(),
        Arc::clone(&stats),
    ));

    let pod_cidr = wait_for_pod_cidr(&client, &opts.node_name).await?;
    let mut bridge = BridgeConfig::new(opts.data_dir.clone(), pod_cidr);
    bridge.bridge = opts.bridge.clone();
    bridge.nft_table = opts.bridge.clone();
    let network = BridgeNetwork::new(bridge)?;
    let images = RegistryImageStore::open(
        &opts.data_dir.join("images"),
        opts.insecure_registries.clone(),
    )?;
    let image_gc = tokio::spawn(image_gc_loop(
        images.clone(),
        opts.runtime(),
        Statvfs(opts.data_dir.join("images")),
        opts.image_gc.clone(),
        client.clone(),
        opts.node_name.clone(),
    ));
    let runtime = opts.runtime();
    let agent = Agent::new(
        client,
        SyncConfig {
            node_name: opts.node_name.clone(),
            node_ip: opts.node_ip.map(|ip| ip.to_string()),
            root: opts.data_dir.clone(),
            cgroup_root: CGROUP_ROOT.into(),
            allocatable,
            seccomp_default: opts.seccomp_default,
        },
        images,
        runtime,
        network,
    );
    tracing::info!(node = %opts.node_name, %pod_cidr, "agent running");
    Arc::clone(&agent).run(shutdown).await;
    heartbeat.abort();
    image_gc.abort();
    sampler.abort();
    pod_starts.abort();
    if let Err(e) = stats.save() {
        tracing::warn!(error = %e, "saving the meter");
    }
    Ok(())
}

/// Every `policy.period`, frees disk by removing unused images when the image filesystem
/// is over the high threshold; a Warning `FreeDiskSpaceFailed` (or `ImageGCFailed`) on the
/// Node when it could not, as the kubelet reports it.
async fn image_gc_loop(
    images: RegistryImageStore,
    runtime: LibcontainerRuntime,
    disk: Statvfs,
    policy: GcPolicy,
    client: Client,
    node_name: String,
) {
    use kith_api::events::{record, EventType};
    let node = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node_name.clone()),
        // The kubelet names its node events' uid after the node, too.
        uid: Some(node_name),
        ..Default::default()
    };
    let mut tick = tokio::time::interval(policy.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let in_use = match runtime.list().await {
            Ok(containers) => gc::in_use(&containers),
            Err(e) => {
                tracing::warn!(error = %e, "image GC: listing containers");
                continue;
            }
        };
        let (reason, message) = match gc::collect_if_short(&images, &disk, &in_use, &policy).await {
            Ok(None) => continue,
            Ok(Some(round)) => {
                tracing::info!(
                    wanted = round.wanted,
                    freed = round.report.freed_bytes,
                    removed = ?round.report.removed_images,
                    "image GC"
                );
                match round.shortfall() {
                    Some(message) => ("FreeDiskSpaceFailed", message),
                    None => continue,
                }
            }
            Err(e) => ("ImageGCFailed", e.to_string()),
        };
        tracing::warn!(reason, %message, "image GC");
        record(
            &client,
            &node,
            EventType::Warning,
            reason,
            &message,
            "kubelet",
        )
        .await;
    }
}

/// The control plane gives each node a podCIDR soon after it registers.
async fn wait_for_pod_cidr(client: &Client, name: &str) -> Result<Ipv4Net, RunError> {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        let node = nodes.get(name).await?;
        if let Some(cidr) = node.spec.and_then(|s| s.pod_cidr) {
            return cidr.parse::<Ipv4Net>().map_err(|e| RunError::PodCidr {
                node: name.to_string(),
                message: format!("{cidr:?}: {e}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn allocatable_of(node: &Node) -> NodeAllocatable {
    let alloc = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .unwrap_or_default();
    let get = |k: &str, f: fn(&str) -> Result<i64, crate::spec::SpecError>| {
        alloc.get(k).and_then(|q| f(&q.0).ok()).unwrap_or(0)
    };
    NodeAllocatable {
        cpu_millis: get("cpu", crate::spec::milli_cpu),
        memory_bytes: get("memory", crate::spec::quantity_bytes),
        ephemeral_storage_bytes: get("ephemeral-storage", crate::spec::quantity_bytes),
    }
}

/// Remove everything the agent made on this box: every container (process, mounts,
/// cgroups, state), every pod network, the bridge and kith's nftables table. For tearing
/// a box down (and for tests); a running agent must be stopped first.
pub async fn clean_up(opts: &AgentOptions) {
    let runtime = opts.runtime();
    if let Ok(all) = runtime.list().await {
        for c in all {
            if let Err(e) = runtime.remove(&c.key).await {
                tracing::warn!(container = %c.key.dir_name(), error = %e, "removing");
            }
        }
    }
    // The podCIDR only matters for handing out addresses; any valid range will do here.
    if let Ok(cidr) = "10.244.0.0/24".parse::<Ipv4Net>() {
        let mut cfg = BridgeConfig::new(opts.data_dir.clone(), cidr);
        cfg.bridge = opts.bridge.clone();
        cfg.nft_table = opts.bridge.clone();
        if let Ok(network) = BridgeNetwork::new(cfg) {
            if let Ok(all) = network.list().await {
                for n in all {
                    if let Err(e) = network.teardown(&n.pod_uid).await {
                        tracing::warn!(pod = %n.pod_uid, error = %e, "tearing down");
                    }
                }
            }
        }
    }
    let _ = tokio::process::Command::new("ip")
        .args(["link", "del", &opts.bridge])
        .output()
        .await;
    let _ = tokio::process::Command::new("nft")
        .args(["delete", "table", "ip", &opts.bridge])
        .output()
        .await;
}
