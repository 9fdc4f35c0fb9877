//! The agent's sync loop: for each pod bound to this box, compare what the API wants with
//! what the box shows and act, then post the pod's status.
//!
//! ```text
//!  watch pods (spec.nodeName = me) ─► reflector store ─┐
//!  runtime.list() · network.list() ───────────────────►├─ every tick / on change, per pod:
//!                                                      │    plan() → actions → executor
//!                                                      │    status::pod_status() → pods/status
//! ```
//! [`plan`] decides, [`status`] describes, [`volumes`] lays out pod volumes, [`probe`] runs
//! probes; this module only carries things out. Each pod is handled by at most one task
//! at a time, so a container waiting out its grace period never blocks other pods.

pub mod idle;
pub mod plan;
pub mod probe;
pub mod status;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectReference, Pod, PodStatus, Secret};
use kith_api::events::{self, EventType};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::image::{credentials_from_dockerconfigjson, ImageStore, PullPolicy, RegistryCredential};
use crate::network::{HostPort, PodNet, PodNetRequest, PodNetwork, Protocol};
use crate::runtime::{
    ContainerKey, ContainerRuntime, ContainerState, ContainerStatus, StartRequest, StdinMode,
};
use crate::spec::{self, ContainerInput, ImageDefaults, NodeAllocatable, ProfileDir, SeccompInput};
use plan::{Action, Attempt, AttemptState, Health, KillReason, Seen};
use status::{Facts, StartFailure};

/// The component name on the agent's events (the kubelet's).
const COMPONENT: &str = "kubelet";
/// How often every pod is looked at even when nothing is announced.
const TICK: Duration = Duration::from_secs(1);

/// Where the agent keeps what it makes for pods.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub node_name: String,
    /// The node's address, reported as the pods' hostIP.
    pub node_ip: Option<String>,
    /// `<root>/pods/<uid>` (volumes, hosts, resolv.conf) and `<root>/logs/...` (CRI logs).
    pub root: PathBuf,
    /// Parent of every container's cgroup, e.g. `/kith`.
    pub cgroup_root: String,
    pub allocatable: NodeAllocatable,
    /// `--seccomp-default`: containers with no seccompProfile get RuntimeDefault, not
    /// Unconfined. Localhost profiles are read from `<root>/seccomp`.
    pub seccomp_default: bool,
}

/// Per-pod memory of the executor: what failed, when to retry, what was posted.
#[derive(Default)]
struct Memo {
    failures: BTreeMap<String, StartFailure>,
    /// Container → (failed starts in a row, not before).
    retry: BTreeMap<String, (u32, Timestamp)>,
    image_ids: BTreeMap<String, String>,
    posted: Option<PodStatus>,
    probes: probe::PodProbes,
}

pub struct Agent<I, R, N> {
    client: Client,
    cfg: SyncConfig,
    images: I,
    runtime: R,
    network: N,
    memos: Mutex<HashMap<String, Memo>>,
    busy: Mutex<HashSet<String>>,
    /// Pods that changed while their task was running: looked at again right after it.
    rerun: Mutex<HashSet<String>>,
    /// Wakes the loop before its next tick.
    wake: Arc<tokio::sync::Notify>,
    /// A pod task acted or wrote a status since the loop last looked (see [`idle`]).
    acted: AtomicBool,
}

fn container_ref(pod: &Pod, container: &str) -> ObjectReference {
    ObjectReference {
        field_path: Some(format!("spec.containers{{{container}}}")),
        ..events::reference(pod)
    }
}

fn seen_of(statuses: &[&ContainerStatus], network: bool) -> Seen {
    let attempts = statuses
        .iter()
        .map(|s| Attempt {
            container: s.key.container.clone(),
            attempt: s.key.attempt,
            state: match &s.state {
                ContainerState::Created => AttemptState::Created,
                ContainerState::Running { started_at, .. } => AttemptState::Running {
                    started_at: *started_at,
                },
                ContainerState::Exited {
                    exit_code,
                    reason,
                    started_at,
                    finished_at,
                    ..
                } => AttemptState::Exited {
                    exit_code: *exit_code,
                    reason: reason.as_str().to_string(),
                    started_at: *started_at,
                    finished_at: *finished_at,
                },
            },
        })
        .collect();
    Seen { network, attempts }
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == name)
}

fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let Some(host_port) = p.host_port.filter(|p| *p > 0) else {
                continue;
            };
            out.push(HostPort {
                container_port: p.container_port as u16,
                host_port: host_port as u16,
                protocol: Protocol::from_spec(p.protocol.as_deref()).unwrap_or(Protocol::Tcp),
                host_ip: p
                    .host_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok()),
            });
        }
    }
    out
}

/// The back-off before retrying a failed pull or container creation.
fn retry_delay(failures: u32) -> Duration {
    plan::backoff(failures)
}

impl<I, R, N> Agent<I, R, N>
where
    I: ImageStore + 'static,
    R: ContainerRuntime + 'static,
    N: PodNetwork + 'static,
{
    pub fn new(client: Client, cfg: SyncConfig, images: I, runtime: R, network: N) -> Arc<Self> {
        Arc::new(Agent {
            client,
            cfg,
            images,
            runtime,
            network,
            memos: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            rerun: Mutex::new(HashSet::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
            acted: AtomicBool::new(false),
        })
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.root.join("pods").join(uid)
    }

    /// `<root>/logs/<ns>_<name>_<uid>/<container>/<attempt>.log`, the kubelet's layout.
    pub fn log_path(&self, pod: &Pod, container: &str, attempt: u32) -> PathBuf {
        let m = &pod.metadata;
        self.cfg
            .root
            .join("logs")
            .join(format!(
                "{}_{}_{}",
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default(),
                m.uid.as_deref().unwrap_or_default()
            ))
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// Watch this node's pods and keep them in step until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let selector = format!("spec.nodeName={}", self.cfg.node_name);
        let (store, writer) = reflector::store();
        let changed = self.wake.clone();
        let notify = changed.clone();
        let stream = reflector::reflector(
            writer,
            watcher(pods, watcher::Config::default().fields(&selector)),
        )
        .default_backoff()
        .touched_objects();
        let watch = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::debug!(error = %e, "pod watch");
                }
                notify.notify_one();
            }
        });
        let mut shutdown = std::pin::pin!(shutdown);
        // Before the first list arrives the store is empty: acting on that would kill every
        // re-adopted container. Wait for it.
        tokio::select! {
            _ = store.wait_until_ready() => {}
            _ = &mut shutdown => { watch.abort(); return; }
        }
        let mut idle = idle::Idle::default();
        loop {
            // Work still running (a pull, a grace period) keeps the loop from being quiet.
            let working = self.acted.swap(false, Ordering::Relaxed)
                || !self.busy.lock().expect("busy lock").is_empty();
            if idle.pass(working) {
                let released = idle::trim_heap();
                tracing::debug!(released, "heap trimmed after a burst of pod work");
            }
            self.clone().sync_all(&store).await;
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = &mut shutdown => break,
            }
        }
        watch.abort();
    }

    /// One pass over every pod the API or the box knows.
    async fn sync_all(self: Arc<Self>, store: &Store<Pod>) {
        let containers = match self.runtime.list().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "listing containers");
                return;
            }
        };
        let nets = match self.network.list().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "listing pod networks");
                return;
            }
        };
        let desired: HashMap<String, Arc<Pod>> = store
            .state()
            .into_iter()
            .filter_map(|p| p.metadata.uid.clone().map(|uid| (uid, p)))
            .collect();
        let mut by_pod: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
        for c in containers {
            by_pod.entry(c.key.pod_uid.clone()).or_default().push(c);
        }
        let nets: HashMap<String, PodNet> =
            nets.into_iter().map(|n| (n.pod_uid.clone(), n)).collect();
        let uids: BTreeSet<String> = desired
            .keys()
            .chain(by_pod.keys())
            .chain(nets.keys())
            .cloned()
            .collect();
        {
            let mut memos = self.memos.lock().expect("memo lock");
            memos.retain(|uid, _| uids.contains(uid));
        }
        for uid in uids {
            if !self.busy.lock().expect("busy lock").insert(uid.clone()) {
                self.rerun.lock().expect("rerun lock").insert(uid);
                continue;
            }
            let agent = self.clone();
            let pod = desired.get(&uid).cloned();
            let attempts = by_pod.remove(&uid).unwrap_or_default();
            let net = nets.get(&uid).cloned();
            tokio::spawn(async move {
                agent.sync_pod(&uid, pod.as_deref(), attempts, net).await;
                agent.busy.lock().expect("busy lock").remove(&uid);
                if agent.rerun.lock().expect("rerun lock").remove(&uid) {
                    agent.wake.notify_one();
                }
            });
        }
    }

    async fn sync_pod(
        &self,
        uid: &str,
        pod: Option<&Pod>,
        attempts: Vec<ContainerStatus>,
        net: Option<PodNet>,
    ) {
        let now = Timestamp::now();
        // Probes run only for running containers of a pod that is not being deleted.
        let (liveness_failed, ready) = match (pod, &net) {
            (Some(p), Some(n)) if p.metadata.deletion_timestamp.is_none() => {
                let running: Vec<(ContainerKey, Timestamp)> = attempts
                    .iter()
                    .filter_map(|s| match &s.state {
                        ContainerState::Running { started_at, .. } => {
                            Some((s.key.clone(), *started_at))
                        }
                        _ => None,
                    })
                    .collect();
                let mut probes = {
                    let mut memos = self.memos.lock().expect("memo lock");
                    std::mem::take(&mut memos.entry(uid.to_string()).or_default().probes)
                };
                let outcome = probes.run(p, n.ip, &self.runtime, &running, now).await;
                for (container, message) in &outcome.unhealthy_events {
                    events::record(
                        &self.client,
                        &container_ref(p, container),
                        EventType::Warning,
                        "Unhealthy",
                        message,
                        COMPONENT,
                    )
                    .await;
                }
                self.memos
                    .lock()
                    .expect("memo lock")
                    .entry(uid.to_string())
                    .or_default()
                    .probes = probes;
                (outcome.liveness_failed, outcome.ready)
            }
            _ => (BTreeSet::new(), BTreeSet::new()),
        };

        let refs: Vec<&ContainerStatus> = attempts.iter().collect();
        let seen = seen_of(&refs, net.is_some());
        let health = Health {
            now,
            liveness_failed,
        };
        let decided = plan::plan(pod, &seen, &health);
        let mut net = net;
        let acted = !decided.actions.is_empty();
        if acted {
            self.acted.store(true, Ordering::Relaxed);
        }
        for action in decided.actions {
            self.execute(uid, pod, &mut net, &attempts, action).await;
        }

        let Some(pod) = pod else { return };
        if pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        // Describe what the box shows now: read again only if the actions changed it.
        let after: Vec<ContainerStatus> = if acted {
            match self.runtime.list().await {
                Ok(all) => all.into_iter().filter(|c| c.key.pod_uid == uid).collect(),
                Err(_) => attempts,
            }
        } else {
            attempts
        };
        let refs: Vec<&ContainerStatus> = after.iter().collect();
        let seen = seen_of(&refs, net.is_some());
        let (facts, posted) = {
            let memos = self.memos.lock().expect("memo lock");
            let memo = memos.get(uid);
            let facts = Facts {
                now: Some(now),
                pod_ip: net.as_ref().map(|n| n.ip.to_string()),
                host_ip: self.cfg.node_ip.clone(),
                ready: ready.clone(),
                failures: memo.map(|m| m.failures.clone()).unwrap_or_default(),
                backing_off: decided.backing_off.iter().map(|(n, _)| n.clone()).collect(),
                image_ids: memo.map(|m| m.image_ids.clone()).unwrap_or_default(),
            };
            (facts, memo.and_then(|m| m.posted.clone()))
        };
        // Ready containers are re-evaluated by probes each tick; containers without a
        // readiness probe are ready while they run.
        let mut facts = facts;
        for s in &after {
            if matches!(s.state, ContainerState::Running { .. })
                && find_container(pod, &s.key.container)
                    .is_some_and(|c| c.readiness_probe.is_none())
            {
                facts.ready.insert(s.key.container.clone());
            }
        }
        for (name, _) in &decided.backing_off {
            if let Some(c) = find_container(pod, name) {
                if posted.as_ref().is_none_or(|p| !is_backing_off(p, name)) {
                    events::record(
                        &self.client,
                        &container_ref(pod, &c.name),
                        EventType::Warning,
                        "BackOff",
                        "Back-off restarting failed container",
                        COMPONENT,
                    )
                    .await;
                }
            }
        }
        let mut pod_for_status = pod.clone();
        if let Some(p) = &posted {
            pod_for_status.status = Some(p.clone());
        }
        let new_status = status::pod_status(&pod_for_status, &seen, &facts);
        if posted.as_ref() != Some(&new_status) {
            self.post_status(pod, &new_status).await;
        }
    }

    async fn post_status(&self, pod: &Pod, new_status: &PodStatus) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let body = serde_json::json!({
            "metadata": {"uid": uid},
            "status": new_status,
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                self.acted.store(true, Ordering::Relaxed);
                self.memos
                    .lock()
                    .expect("memo lock")
                    .entry(uid)
                    .or_default()
                    .posted = Some(new_status.clone());
            }
            Err(e) => tracing::debug!(pod = %name, error = %e, "posting pod status"),
        }
    }

    async fn execute(
        &self,
        uid: &str,
        pod: Option<&Pod>,
        net: &mut Option<PodNet>,
        attempts: &[ContainerStatus],
        action: Action,
    ) {
        match action {
            Action::SetupNetwork => {
                let Some(pod) = pod else { return };
                match self.network.setup(&net_request(pod)).await {
                    Ok(n) => *net = Some(n),
                    Err(e) => {
                        events::record(
                            &self.client,
                            &events::reference(pod),
                            EventType::Warning,
                            "FailedCreatePodSandBox",
                            &format!("Failed to create pod sandbox: {e}"),
                            COMPONENT,
                        )
                        .await;
                    }
                }
            }
            Action::Start {
                container, attempt, ..
            } => {
                let Some(pod) = pod else { return };
                let Some(n) = net.clone() else { return };
                self.start(pod, &n, &container, attempt).await;
            }
            Action::Kill {
                container,
                attempt,
                grace,
                reason,
            } => {
                if let Some(pod) = pod {
                    let message = match reason {
                        KillReason::PodDeleted | KillReason::NotInSpec => {
                            format!("Stopping container {container}")
                        }
                        KillReason::Unhealthy => {
                            format!(
                                "Container {container} failed liveness probe, will be restarted"
                            )
                        }
                    };
                    events::record(
                        &self.client,
                        &container_ref(pod, &container),
                        EventType::Normal,
                        "Killing",
                        &message,
                        COMPONENT,
                    )
                    .await;
                }
                let key = ContainerKey {
                    pod_uid: uid.to_string(),
                    container,
                    attempt,
                };
                if let Err(e) = self.runtime.stop(&key, grace).await {
                    tracing::warn!(container = %key.dir_name(), error = %e, "stopping");
                }
            }
            Action::Remove { container, attempt } => {
                let key = ContainerKey {
                    pod_uid: uid.to_string(),
                    container,
                    attempt,
                };
                if let Err(e) = self.runtime.remove(&key).await {
                    tracing::warn!(container = %key.dir_name(), error = %e, "removing");
                }
                if let Some(s) = attempts.iter().find(|s| s.key == key) {
                    let _ = std::fs::remove_file(&s.log_path);
                }
            }
            Action::TeardownNetwork => {
                if let Err(e) = self.network.teardown(uid).await {
                    tracing::warn!(pod = %uid, error = %e, "tearing down the pod network");
                    return;
                }
                *net = None;
                if pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some()) {
                    if let Err(e) = volumes::cleanup(&self.pod_dir(uid)) {
                        tracing::warn!(pod = %uid, error = %e, "removing pod volumes");
                    }
                }
            }
            Action::FinishDeletion => {
                let Some(pod) = pod else { return };
                let api: Api<Pod> = Api::namespaced(
                    self.client.clone(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                );
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: pod.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let name = pod.metadata.name.clone().unwrap_or_default();
                if let Err(e) = api.delete(&name, &params).await {
                    tracing::debug!(pod = %name, error = %e, "finishing deletion");
                }
                let log_dir = self
                    .log_path(pod, "x", 0)
                    .parent()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf);
                if let Some(dir) = log_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
    }

    /// A start of `container` failed: a Warning event (`event_reason`) on it, and the
    /// waiting reason and retry back-off its status will show.
    async fn fail(
        &self,
        uid: &str,
        container: &str,
        cref: &ObjectReference,
        event_reason: &str,
        status_reason: &str,
        message: String,
    ) {
        events::record(
            &self.client,
            cref,
            EventType::Warning,
            event_reason,
            &message,
            COMPONENT,
        )
        .await;
        self.note_failure(uid, container, status_reason, message);
    }

    fn note_failure(&self, uid: &str, container: &str, reason: &str, message: String) {
        let mut memos = self.memos.lock().expect("memo lock");
        let memo = memos.entry(uid.to_string()).or_default();
        let failures = memo.retry.get(container).map(|(n, _)| *n).unwrap_or(0) + 1;
        let until = Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(retry_delay(failures)).unwrap_or_default())
            .unwrap_or_else(|_| Timestamp::now());
        memo.retry.insert(container.to_string(), (failures, until));
        memo.failures.insert(
            container.to_string(),
            StartFailure {
                reason: reason.to_string(),
                message,
            },
        );
    }

    /// Whether a failed start of `container` is still waiting out its back-off; marks
    /// image pull failures as ImagePullBackOff meanwhile, as the kubelet shows them.
    fn in_retry_backoff(&self, uid: &str, container: &str) -> bool {
        let mut memos = self.memos.lock().expect("memo lock");
        let memo = memos.entry(uid.to_string()).or_default();
        let Some((_, until)) = memo.retry.get(container) else {
            return false;
        };
        if Timestamp::now() >= *until {
            return false;
        }
        if let Some(f) = memo.failures.get_mut(container) {
            if f.reason == "ErrImagePull" {
                f.reason = "ImagePullBackOff".into();
            }
        }
        true
    }

    async fn fetch_sources(&self, pod: &Pod) -> volumes::Sources {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (cms, secrets) = volumes::referenced(pod);
        let cm_api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        let secret_api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let mut out = volumes::Sources::default();
        for name in cms {
            if let Ok(Some(cm)) = cm_api.get_opt(&name).await {
                out.config_maps.insert(name, cm);
            }
        }
        for name in secrets {
            if let Ok(Some(s)) = secret_api.get_opt(&name).await {
                out.secrets.insert(name, s);
            }
        }
        out
    }

    async fn start(&self, pod: &Pod, net: &PodNet, name: &str, attempt: u32) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.in_retry_backoff(&uid, name) {
            return;
        }
        let Some(container) = find_container(pod, name) else {
            return;
        };
        let cref = container_ref(pod, name);
        let image = container.image.clone().unwrap_or_default();
        let sources = self.fetch_sources(pod).await;

        // Image.
        let policy = PullPolicy::for_container(&image, container.image_pull_policy.as_deref());
        let creds: Vec<RegistryCredential> = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .filter_map(|r| sources.secrets.get(&r.name))
            .filter_map(|s| s.data.as_ref()?.get(".dockerconfigjson").cloned())
            .filter_map(|b| credentials_from_dockerconfigjson(&b.0).ok())
            .flatten()
            .collect();
        if policy != PullPolicy::Never {
            events::record(
                &self.client,
                &cref,
                EventType::Normal,
                "Pulling",
                &format!("Pulling image \"{image}\""),
                COMPONENT,
            )
            .await;
        }
        let began = std::time::Instant::now();
        let pulled = match self.images.ensure(&image, policy, &creds).await {
            Ok(p) => p,
            Err(e) => {
                let reason = e.reason();
                let message = format!("Failed to pull image \"{image}\": {e}");
                self.fail(&uid, name, &cref, "Failed", reason, message)
                    .await;
                return;
            }
        };
        if policy != PullPolicy::Never {
            events::record(
                &self.client,
                &cref,
                EventType::Normal,
                "Pulled",
                &format!(
                    "Successfully pulled image \"{image}\" in {:.3}s",
                    began.elapsed().as_secs_f64()
                ),
                COMPONENT,
            )
            .await;
        }
        self.memos
            .lock()
            .expect("memo lock")
            .entry(uid.clone())
            .or_default()
            .image_ids
            .insert(name.to_string(), pulled.image_id.clone());

        // Volumes, hosts, resolv.conf.
        let pod_dir = self.pod_dir(&uid);
        let prepared = volumes::layout(pod, &sources).and_then(|l| volumes::prepare(&pod_dir, &l));
        let volume_paths = match prepared {
            Ok(v) => v,
            Err(e) => {
                let message = format!("Error: {e}");
                self.fail(
                    &uid,
                    name,
                    &cref,
                    "FailedMount",
                    "CreateContainerConfigError",
                    message,
                )
                .await;
                return;
            }
        };
        let (hosts, resolv) = match write_network_files(&pod_dir, pod, net) {
            Ok(files) => files,
            Err(e) => {
                self.note_failure(&uid, name, "CreateContainerError", e.to_string());
                return;
            }
        };

        let config_maps: BTreeMap<String, BTreeMap<String, String>> = sources
            .config_maps
            .iter()
            .map(|(k, cm)| {
                let data = volumes::config_map_data(cm)
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                (k.clone(), data)
            })
            .collect();
        let secrets: BTreeMap<String, BTreeMap<String, String>> = sources
            .secrets
            .iter()
            .map(|(k, s)| {
                let data = volumes::secret_data(s)
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                (k.clone(), data)
            })
            .collect();
        let defaults = ImageDefaults {
            entrypoint: pulled.config.entrypoint.clone().unwrap_or_default(),
            cmd: pulled.config.cmd.clone().unwrap_or_default(),
            env: pulled.config.env.clone(),
            working_dir: pulled.config.working_dir.clone(),
            user: pulled.config.user.clone(),
        };
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .or_else(|| pod.metadata.name.clone())
            .unwrap_or_default();
        let mut status_pod = pod.clone();
        let st = status_pod.status.get_or_insert_with(Default::default);
        st.pod_ip = Some(net.ip.to_string());
        st.host_ip = self.cfg.node_ip.clone();
        let input = ContainerInput {
            pod: &status_pod,
            container,
            image: &defaults,
            config_maps: &config_maps,
            secrets: &secrets,
            node: self.cfg.allocatable,
            rootfs: pulled.rootfs.clone(),
            volumes: &volume_paths,
            netns: Some(net.netns_path.clone()),
            cgroups_path: format!("{}/{}/{}-{}", self.cfg.cgroup_root, uid, name, attempt),
            hostname,
            hosts_file: Some(hosts),
            resolv_conf: Some(resolv),
            pids_limit: None,
            seccomp: SeccompInput {
                default_runtime_default: self.cfg.seccomp_default,
                profiles: &ProfileDir(self.cfg.root.join("seccomp")),
            },
        };
        let mut oci = match spec::build(&input) {
            Ok(s) => s,
            Err(e) => {
                // The kubelet leaves seccomp profiles to the runtime, whose failure is a
                // CreateContainerError; the rest is the pod's configuration.
                let reason = match e {
                    spec::SpecError::Seccomp(_) => "CreateContainerError",
                    _ => "CreateContainerConfigError",
                };
                let message = format!("Error: {e}");
                self.fail(&uid, name, &cref, "Failed", reason, message)
                    .await;
                return;
            }
        };
        // `tty: true`: the runtime gives the process a terminal (process.terminal).
        if container.tty.unwrap_or(false) {
            if let Some(p) = oci.process_mut() {
                p.set_terminal(Some(true));
            }
        }
        let key = ContainerKey {
            pod_uid: uid.clone(),
            container: name.to_string(),
            attempt,
        };
        let req = StartRequest {
            key,
            spec: oci,
            image_rootfs: pulled.rootfs.clone(),
            log_path: self.log_path(pod, name, attempt),
            stdin: StdinMode::of(
                container.stdin.unwrap_or(false),
                container.stdin_once.unwrap_or(false),
            ),
        };
        events::record(
            &self.client,
            &cref,
            EventType::Normal,
            "Created",
            &format!("Created container {name}"),
            COMPONENT,
        )
        .await;
        match self.runtime.start(req).await {
            Ok(s) => {
                {
                    let mut memos = self.memos.lock().expect("memo lock");
                    let memo = memos.entry(uid.clone()).or_default();
                    memo.failures.remove(name);
                    memo.retry.remove(name);
                }
                match s.state {
                    ContainerState::Exited {
                        message: Some(m), ..
                    } if s.key.attempt == attempt => {
                        events::record(
                            &self.client,
                            &cref,
                            EventType::Warning,
                            "Failed",
                            &format!("Error: {m}"),
                            COMPONENT,
                        )
                        .await;
                    }
                    _ => {
                        events::record(
                            &self.client,
                            &cref,
                            EventType::Normal,
                            "Started",
                            &format!("Started container {name}"),
                            COMPONENT,
                        )
                        .await;
                    }
                }
            }
            Err(e) => {
                let message = format!("Error: {e}");
                self.fail(&uid, name, &cref, "Failed", "RunContainerError", message)
                    .await;
            }
        }
    }
}

fn is_backing_off(status: &PodStatus, container: &str) -> bool {
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .any(|c| {
            c.name == container
                && c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref())
                    == Some("CrashLoopBackOff")
        })
}

fn net_request(pod: &Pod) -> PodNetRequest {
    PodNetRequest {
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        host_ports: host_ports(pod),
    }
}

/// The pod's /etc/hosts (localhost, its own name on its IP, hostAliases) and
/// /etc/resolv.conf (the host's, until cluster DNS exists).
fn write_network_files(
    pod_dir: &Path,
    pod: &Pod,
    net: &PodNet,
) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(pod_dir)?;
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    hosts.push_str(&format!("{}\t{}\n", net.ip, hostname));
    for alias in pod
        .spec
        .iter()
        .flat_map(|s| s.host_aliases.iter().flatten())
    {
        hosts.push_str(&format!(
            "{}\t{}\n",
            alias.ip,
            alias.hostnames.clone().unwrap_or_default().join("\t")
        ));
    }
    let hosts_path = pod_dir.join("etc-hosts");
    std::fs::write(&hosts_path, hosts)?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv_path = pod_dir.join("resolv.conf");
    std::fs::write(&resolv_path, resolv)?;
    Ok((hosts_path, resolv_path))
}
