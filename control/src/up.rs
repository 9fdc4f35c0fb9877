//! `kith up`: a whole cluster on one box — the Raft store (one voter), the HTTPS API,
//! the in-process controllers — with its state under one data directory.
//!
//! ```text
//!  DATA_DIR/pki/   cluster CA, serving and admin certificates, tokens
//!  DATA_DIR/raft/  log.redb + state.redb (openraft)
//!  DATA_DIR/kubeconfig   written once the API serves
//! ```
//!
//! Like kube-apiserver, it keeps the `kubernetes` Service in `default` (with its
//! Endpoints and EndpointSlice) pointing at the API server, so in-cluster clients and
//! Prometheus' `role: endpoints` discovery find it; and it serves `/metrics` with the
//! control plane's metrics ([`crate::metrics`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kith_api::auth::{Authenticator, User, MASTERS_GROUP};
use kith_api::handler::Api;
use kith_api::metrics::Metrics;
use kith_api::request::{Query, ResourceRoute};
use kith_api::server::{serve, ApiService};
use kith_api::store::ObjectStore;
use kith_api::{error::ApiError, kinds};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::controllers::{self, clusterip};
use crate::pki::{BoxJoiner, Pki, PkiError};
use crate::region::{self, RegionConfig, RegionError};
use crate::store::{RaftStore, StoreConfig, StoreOpenError};

/// Namespaces every cluster starts with.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// What `kith up` needs to know.
#[derive(Clone, Debug)]
pub struct UpConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Watch history window (events a watch can resume from).
    pub watch_history: usize,
    /// The agent of this box; `None` runs the control plane alone.
    pub agent: Option<kith_agent::run::AgentOptions>,
    /// Where nodes' podCIDRs come from.
    pub cluster_cidr: controllers::nodeipam::Cidr,
    /// A box of a multi-box region (`kith control`); `None` is a one-box cluster.
    pub region: Option<RegionConfig>,
}

/// What the agent needs from the host, read once before starting.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    pub euid: u32,
    /// /proc/self/mounts
    pub mounts: String,
    /// /proc/filesystems
    pub filesystems: String,
}

impl HostFacts {
    pub fn read() -> HostFacts {
        HostFacts {
            euid: nix::unistd::geteuid().as_raw(),
            mounts: std::fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
            filesystems: std::fs::read_to_string("/proc/filesystems").unwrap_or_default(),
        }
    }
}

/// Why this box cannot run containers, in words a user can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "must run as root to run containers (try sudo, or --no-agent for the control plane alone)"
    )]
    NotRoot,
    #[error("no cgroup filesystem is mounted (mount cgroup2 on /sys/fs/cgroup)")]
    NoCgroups,
    #[error("the kernel has no overlay filesystem (try: modprobe overlay)")]
    NoOverlay,
}

/// Whether the host can run the agent (pure: decided from [`HostFacts`]).
pub fn preflight(facts: &HostFacts) -> Result<(), PreflightError> {
    if facts.euid != 0 {
        return Err(PreflightError::NotRoot);
    }
    let cgroups = facts.mounts.lines().any(|l| {
        matches!(
            l.split_whitespace().nth(2),
            Some("cgroup") | Some("cgroup2")
        )
    });
    if !cgroups {
        return Err(PreflightError::NoCgroups);
    }
    let overlay = facts
        .filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    if !overlay {
        return Err(PreflightError::NoOverlay);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("cannot listen on {addr}: the port is already in use (is another kith or kube-apiserver running?)")]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Pki(#[from] PkiError),
    #[error("store: {0}")]
    Store(#[from] StoreOpenError),
    #[error("creating system namespace {name}: {source}")]
    Bootstrap { name: String, source: ApiError },
    #[error("creating the kubernetes service: {0}")]
    KubernetesService(ApiError),
    #[error("{0}")]
    Region(#[from] RegionError),
}

/// The URL clients on this box use to reach a server listening on `listen`.
pub fn client_url(listen: SocketAddr) -> String {
    let ip = listen.ip();
    let host = if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("https://{host}:{}", listen.port())
}

/// Run a one-box cluster until `shutdown` completes; `ready` is called with the kubeconfig
/// path once the API serves.
pub async fn run(
    cfg: UpConfig,
    ready: impl FnOnce(&std::path::Path, &str),
    shutdown: impl Future<Output = ()>,
) -> Result<(), UpError> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| UpError::DataDir {
        dir: dir.clone(),
        source,
    })?;
    // Bind first: a taken port is the most common reason `up` cannot work, and it should be
    // reported before any state is created.
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => UpError::PortInUse { addr: cfg.listen },
            _ => UpError::Listen {
                addr: cfg.listen,
                source,
            },
        })?;
    let membership = match &cfg.region {
        Some(r) => Some(region::prepare(dir, r).await?),
        None => None,
    };
    let mut sans = Vec::new();
    if !cfg.listen.ip().is_unspecified() {
        sans.push(cfg.listen.ip().to_string());
    }
    if let Some(r) = &cfg.region {
        sans.push(r.peer_listen.ip().to_string());
    }
    let pki = Arc::new(Pki::load_or_create(dir, &sans)?);
    let mut store_cfg = StoreConfig::new(1, client_url(cfg.listen), dir.join("raft"));
    store_cfg.history = cfg.watch_history;
    let (peer_stop, peer_stopped) = tokio::sync::oneshot::channel::<()>();
    let (store, left) = match (&cfg.region, &membership) {
        (Some(r), Some(m)) => {
            let stopped = async {
                let _ = peer_stopped.await;
            };
            let (store, left) = region::open_store(&pki, r, m, store_cfg, stopped).await?;
            (store, Some(left))
        }
        _ => (RaftStore::open(store_cfg).await?, None),
    };
    let api = Arc::new(Api::new(store.clone()));
    let advertise = SocketAddr::new(advertise_ip(cfg.listen.ip()), cfg.listen.port());
    let kubernetes = Service {
        own: advertise,
        cluster_ip: clusterip::Range::default().kubernetes_service_ip(),
    };
    // A box that leads from the start (always so for one box) has the system namespaces
    // and the kubernetes Service before it says it is up; later leaders make sure of them
    // when they take over (`leader_duties`).
    let mut bootstrapped = store.leader() == Some(store.node_id());
    if bootstrapped {
        match bootstrap_objects(&api, kubernetes).await {
            Ok(()) => {}
            // One box that cannot write has nothing to serve.
            Err(e) if cfg.region.is_none() => return Err(e),
            // A restarted control box can take itself for the leader its saved vote names
            // while the region has moved on or lost its quorum: it must come up and serve
            // (reads, its share of a later quorum), not exit; the next leadership makes
            // the objects (`leader_duties`).
            Err(e) => {
                tracing::warn!(error = %e, "system objects not made at start-up; the next leadership makes them");
                bootstrapped = false;
            }
        }
    }
    let auth = Authenticator::new(pki.tokens());
    let mut metrics = Metrics::new();
    crate::metrics::register(&mut metrics, store.clone());
    // The agent's series are served by the same /metrics, as the agent runs in-process.
    let stats = cfg.agent.as_ref().map(|a| a.stats());
    if let Some(stats) = &stats {
        stats.register(metrics.registry_mut());
    }
    let leader_watch = crate::metrics::spawn_leader_watch(&store);
    let service = ApiService::with_metrics(api.clone(), auth, Arc::new(metrics));
    let client = crate::client::in_process(service.clone(), system_user());
    let tls = pki.server_config()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, tls, service.clone(), async {
        let _ = stop_rx.await;
    }));
    service.set_joiner(Arc::new(BoxJoiner::new(
        pki.clone(),
        client.clone(),
        membership.as_ref().map(|m| m.peer_addr.as_str()),
    )));
    let local = cfg.agent.as_ref().zip(stats.clone());
    let local = local.map(|(agent, stats)| agent.local_parts(stats));
    let nodes = crate::pki::remote_nodes(&pki, client.clone(), local)?;
    service.set_node_connector(nodes.clone());
    service.set_node_exec(nodes.clone());
    service.set_node_proxy(nodes.clone());
    service.set_node_stats(nodes);
    let apiserver_lease = tokio::spawn(crate::apiservers::keep_renewed(
        client.clone(),
        store.node_id(),
        advertise,
    ));
    let duties = tokio::spawn(leader_duties(
        store.clone(),
        client,
        api.clone(),
        cfg.cluster_cidr,
        kubernetes,
        bootstrapped,
    ));
    let mut agent_task = None;
    if let (Some(agent), Some(stats)) = (cfg.agent.clone(), stats.clone()) {
        let node_user = User::new(
            format!("system:node:{}", agent.node_name),
            ["system:nodes", MASTERS_GROUP],
        );
        let client = crate::client::in_process(service.clone(), node_user);
        agent_task = Some(tokio::spawn(async move {
            // Runs until aborted at shutdown; containers keep running.
            if let Err(e) = kith_agent::run::run(client, agent, stats, std::future::pending()).await
            {
                tracing::error!(error = %e, "the agent stopped");
            }
        }));
    }
    let kubeconfig = dir.join("kubeconfig");
    let url = client_url(cfg.listen);
    pki.write_kubeconfig(&kubeconfig, &url)?;
    tracing::info!(kubeconfig = %kubeconfig.display(), %url, "kith is up");
    ready(&kubeconfig, &url);
    match left {
        Some(left) => tokio::select! {
            _ = shutdown => {}
            _ = region::removed(store.clone(), left) => {}
        },
        None => shutdown.await,
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    let _ = peer_stop.send(());
    duties.abort();
    apiserver_lease.abort();
    let _ = duties.await;
    if let Some(agent) = agent_task {
        agent.abort();
    }
    leader_watch.abort();
    // The agent task was aborted: keep what was metered since its last periodic save.
    if let Some(stats) = &stats {
        if let Err(e) = stats.save() {
            tracing::warn!(error = %e, "saving the meter");
        }
    }
    let _ = server.await;
    if let Err(e) = store.shutdown().await {
        tracing::warn!(error = %e, "store shutdown");
    }
    Ok(())
}

/// The system namespaces and the `kubernetes` Service, created if missing.
async fn bootstrap_objects(
    api: &Arc<Api<Arc<RaftStore>>>,
    service: Service,
) -> Result<(), UpError> {
    for ns in SYSTEM_NAMESPACES {
        ensure_namespace(api, ns).await?;
    }
    ensure_kubernetes_service(api, &service.objects(&[service.own.ip()]))
        .await
        .map_err(UpError::KubernetesService)
}

/// Where the `kubernetes` Service points: this box's API address and the Service's IP.
#[derive(Clone, Copy)]
struct Service {
    own: SocketAddr,
    cluster_ip: Ipv4Addr,
}

impl Service {
    /// Its objects naming the boxes at `ips` (this box's port).
    fn objects(&self, ips: &[IpAddr]) -> Vec<(&'static str, &'static str, Value)> {
        kubernetes_service_objects(ips, self.own.port(), self.cluster_ip)
    }
}

/// What only the leader does: controllers, the scheduler, keeping the system objects
/// (made here at each new leadership, except the first when `bootstrapped` says start-up
/// made them already).
/// Raft's leadership is their leader election: they start when this box becomes leader
/// and stop when it is not any more, so two boxes never run them at once for long (a
/// deposed leader's writes are refused by the new one's log anyway).
async fn leader_duties(
    store: Arc<RaftStore>,
    client: kube::Client,
    api: Arc<Api<Arc<RaftStore>>>,
    cluster_cidr: controllers::nodeipam::Cidr,
    service: Service,
    mut bootstrapped: bool,
) {
    let me = store.node_id();
    let mut rx = store.raft().metrics();
    let mut running: Option<tokio::task::JoinSet<()>> = None;
    loop {
        let leading = {
            let m = rx.borrow_and_update();
            m.current_leader == Some(me) && m.state.is_leader()
        };
        match (leading, running.is_some()) {
            (true, false) => {
                tracing::info!(node = me, "leading: starting controllers and the scheduler");
                // Done at start-up already when this box led from the start.
                if !std::mem::take(&mut bootstrapped) {
                    if let Err(e) = bootstrap_objects(&api, service).await {
                        tracing::warn!(error = %e, "making sure of the system objects");
                    }
                }
                let mut set = controllers::spawn_all(client.clone(), api.clone(), cluster_cidr);
                set.spawn(keep_kubernetes_service(
                    api.clone(),
                    client.clone(),
                    service,
                ));
                set.spawn(crate::pki::join::clean_forever(client.clone()));
                running = Some(set);
            }
            (false, true) => {
                tracing::info!(node = me, "no longer leading: stopping controllers");
                if let Some(mut set) = running.take() {
                    set.abort_all();
                }
            }
            _ => {}
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    if let Some(mut set) = running {
        set.abort_all();
    }
}

async fn ensure_namespace(api: &Arc<Api<Arc<RaftStore>>>, name: &str) -> Result<(), UpError> {
    let Some(kind) = kinds::by_resource("", "v1", "namespaces") else {
        return Ok(());
    };
    let route = ResourceRoute {
        kind,
        namespace: None,
        name: None,
        subresource: None,
    };
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    match api.create(&route, &Query::default(), body, "kith").await {
        Ok(_) | Err(ApiError::AlreadyExists(_)) => Ok(()),
        Err(source) => Err(UpError::Bootstrap {
            name: name.to_string(),
            source,
        }),
    }
}

/// The address the `kubernetes` Service's endpoints point at: the listen address, or
/// loopback when listening on every address (a one-box cluster's clients are local).
pub fn advertise_ip(listen: IpAddr) -> IpAddr {
    match listen {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// The `kubernetes` Service, Endpoints and EndpointSlice in `default` as kube-apiserver
/// writes them: port 443 named `https` on `cluster_ip`, served at `port` of each of `ips`
/// (the boxes serving the API; at least one). Returned as (group, plural, object).
pub fn kubernetes_service_objects(
    ips: &[IpAddr],
    port: u16,
    cluster_ip: Ipv4Addr,
) -> Vec<(&'static str, &'static str, Value)> {
    let https = json!({"name": "https", "port": port, "protocol": "TCP"});
    let address_type = if ips.first().is_none_or(|ip| ip.is_ipv4()) {
        "IPv4"
    } else {
        "IPv6"
    };
    let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    vec![
        (
            "",
            "services",
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": cluster_ip.to_string(),
                    "clusterIPs": [cluster_ip.to_string()],
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                    "sessionAffinity": "None",
                },
            }),
        ),
        (
            "",
            "endpoints",
            json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [{"addresses": addresses, "ports": [https.clone()]}],
            }),
        ),
        (
            "discovery.k8s.io",
            "endpointslices",
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": address_type,
                "endpoints": endpoints,
                "ports": [https],
            }),
        ),
    ]
}

/// The IPs the `kubernetes` Service names, from the live API server addresses: those on
/// this box's port and address family (the Service has one target port), this box always
/// among them.
pub fn service_ips(own: SocketAddr, live: &[SocketAddr]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = live
        .iter()
        .filter(|a| a.port() == own.port() && a.is_ipv4() == own.is_ipv4())
        .map(SocketAddr::ip)
        .chain([own.ip()])
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The fields `ensure_kubernetes_service` keeps as it wants them (the rest is defaulted
/// or owned by others, e.g. a clusterIP allocator's annotations).
const KEPT_FIELDS: &[&str] = &["subsets", "endpoints", "ports", "addressType"];

/// Create each object if missing; put back the kept fields if someone changed them.
async fn ensure_kubernetes_service<S: ObjectStore>(
    api: &Api<S>,
    objects: &[(&'static str, &'static str, Value)],
) -> Result<(), ApiError> {
    for (group, plural, want) in objects {
        let Some(kind) = kinds::by_resource(group, "v1", plural) else {
            continue;
        };
        let collection = ResourceRoute {
            kind,
            namespace: Some("default".into()),
            name: None,
            subresource: None,
        };
        match api
            .create(
                &collection,
                &Query::default(),
                want.clone(),
                "kube-apiserver",
            )
            .await
        {
            Ok(_) => continue,
            Err(ApiError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        let one = ResourceRoute {
            name: Some("kubernetes".into()),
            ..collection
        };
        let have = api.get(&one, &Query::default()).await?.body;
        let stale = KEPT_FIELDS
            .iter()
            .filter(|f| want.get(**f).is_some())
            .any(|f| have.get(*f) != want.get(*f));
        if stale {
            let mut update = have.clone();
            for f in KEPT_FIELDS {
                if let Some(v) = want.get(*f) {
                    update[*f] = v.clone();
                }
            }
            api.update(&one, &Query::default(), update, "kube-apiserver")
                .await?;
            tracing::info!(
                resource = plural,
                "put the kubernetes service back as it should be"
            );
        }
    }
    Ok(())
}

/// kube-apiserver re-checks its Service and endpoints every 10 s; so does the leader,
/// with the endpoints of every box whose API server lease is live.
async fn keep_kubernetes_service<S: ObjectStore>(
    api: Arc<Api<S>>,
    client: kube::Client,
    service: Service,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let live = match crate::apiservers::live(&client).await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "reading the API server leases");
                vec![service.own]
            }
        };
        let objects = service.objects(&service_ips(service.own, &live));
        if let Err(e) = ensure_kubernetes_service(&api, &objects).await {
            tracing::warn!(error = %e, "keeping the kubernetes service");
        }
    }
}

/// The identity in-process components act as.
pub fn system_user() -> User {
    User::new("system:kith-controller", [MASTERS_GROUP])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_table() {
        let mounts = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let fs = "nodev\ttmpfs\nnodev\toverlay\n";
        let facts = |euid, mounts: &str, fs: &str| HostFacts {
            euid,
            mounts: mounts.into(),
            filesystems: fs.into(),
        };
        let cases = [
            (facts(0, mounts, fs), Ok(())),
            (facts(1000, mounts, fs), Err(PreflightError::NotRoot)),
            (
                facts(0, "proc /proc proc rw 0 0\n", fs),
                Err(PreflightError::NoCgroups),
            ),
            (
                facts(0, "cgroup /sys/fs/cgroup/memory cgroup rw 0 0\n", fs),
                Ok(()),
            ),
            (
                facts(0, mounts, "nodev\ttmpfs\n"),
                Err(PreflightError::NoOverlay),
            ),
        ];
        for (f, want) in cases {
            assert_eq!(preflight(&f), want, "{f:?}");
        }
    }

    #[test]
    fn advertise_ip_table() {
        let cases: [(IpAddr, IpAddr); 4] = [
            (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::LOCALHOST.into()),
            (Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::LOCALHOST.into()),
            (
                Ipv4Addr::new(192, 0, 2, 7).into(),
                Ipv4Addr::new(192, 0, 2, 7).into(),
            ),
            (Ipv6Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()),
        ];
        for (listen, want) in cases {
            assert_eq!(advertise_ip(listen), want, "{listen}");
        }
    }

    #[test]
    fn service_ips_table() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let own = a("10.0.0.2:6443");
        let cases: Vec<(Vec<SocketAddr>, Vec<IpAddr>)> = vec![
            (vec![], vec![ip("10.0.0.2")]),
            (vec![own], vec![ip("10.0.0.2")]),
            (
                vec![a("10.0.0.3:6443"), a("10.0.0.1:6443")],
                vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")],
            ),
            (vec![a("10.0.0.1:7443")], vec![ip("10.0.0.2")]),
            (vec![a("[fd00::1]:6443")], vec![ip("10.0.0.2")]),
        ];
        for (live, want) in cases {
            assert_eq!(service_ips(own, &live), want, "{live:?}");
        }
    }

    #[test]
    fn kubernetes_service_points_at_the_api_server() {
        let objs = kubernetes_service_objects(
            &[Ipv4Addr::new(192, 0, 2, 7).into()],
            6443,
            Ipv4Addr::new(10, 43, 0, 1),
        );
        let by = |plural: &str| {
            objs.iter()
                .find(|(_, p, _)| *p == plural)
                .map(|(_, _, o)| o.clone())
                .unwrap_or_else(|| panic!("no {plural}"))
        };
        let svc = by("services");
        assert_eq!(svc["metadata"]["namespace"], "default");
        assert_eq!(svc["metadata"]["name"], "kubernetes");
        assert_eq!(svc["spec"]["clusterIP"], "10.43.0.1");
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443})
        );
        assert!(svc["spec"].get("selector").is_none(), "endpoints are ours");
        let ep = by("endpoints");
        assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "192.0.2.7");
        assert_eq!(ep["subsets"][0]["ports"][0]["name"], "https");
        assert_eq!(ep["subsets"][0]["ports"][0]["port"], 6443);
        let slice = by("endpointslices");
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "kubernetes"
        );
        assert_eq!(slice["endpoints"][0]["addresses"][0], "192.0.2.7");
        let v6 = kubernetes_service_objects(
            &[Ipv6Addr::LOCALHOST.into()],
            6443,
            Ipv4Addr::new(10, 43, 0, 1),
        );
        assert_eq!(v6[2].2["addressType"], "IPv6");
        let region = kubernetes_service_objects(
            &["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            6443,
            Ipv4Addr::new(10, 43, 0, 1),
        );
        assert_eq!(
            region[1].2["subsets"][0]["addresses"],
            json!([{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}])
        );
        assert_eq!(region[2].2["endpoints"][1]["addresses"][0], "10.0.0.2");
        for (group, plural, _) in &objs {
            assert!(
                kinds::by_resource(group, "v1", plural).is_some(),
                "{group}/{plural} is not served"
            );
        }
    }
}
