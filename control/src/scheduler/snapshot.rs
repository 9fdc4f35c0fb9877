//! The cluster as the scheduler sees it for one decision: nodes with what they can hold
//! and what bound pods already asked of them. Built once per batch, then pods placed in
//! that batch are added with [`Snapshot::assume`], so `place` never rescans pods per node.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Container, Node, Pod, PodAffinityTerm, Taint, WeightedPodAffinityTerm,
};

use super::quantity::{cpu_milli, units};
use super::selectors::Labels;

/// Requests (or capacity) of the resources the scheduler counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended resources (`nvidia.com/gpu`, `hugepages-2Mi`, ...), in whole units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    fn from_list(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Self {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => r.milli_cpu = cpu_milli(&q.0),
                "memory" => r.memory = units(&q.0),
                "ephemeral-storage" => r.ephemeral_storage = units(&q.0),
                "pods" => {}
                other => {
                    r.scalar.insert(other.to_string(), units(&q.0));
                }
            }
        }
        r
    }

    fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// What scoring assumes a container without CPU/memory requests uses, as kube-scheduler
/// does, so many request-less pods do not all pile onto one node.
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

fn container_requests(c: &Container) -> Resources {
    let res = c.resources.as_ref();
    // The API server defaults a missing request to the limit; do the same here in case
    // the object was written without that defaulting.
    let mut r = Resources::from_list(res.and_then(|r| r.limits.as_ref()));
    let req = Resources::from_list(res.and_then(|r| r.requests.as_ref()));
    let has = |name: &str| {
        res.and_then(|r| r.requests.as_ref())
            .is_some_and(|m| m.contains_key(name))
    };
    if has("cpu") {
        r.milli_cpu = req.milli_cpu;
    }
    if has("memory") {
        r.memory = req.memory;
    }
    if has("ephemeral-storage") {
        r.ephemeral_storage = req.ephemeral_storage;
    }
    r.scalar.extend(req.scalar);
    r
}

/// A pod's effective requests as Kubernetes computes them: the sum of its containers and
/// sidecars, at least the largest init container (plus the sidecars started before it),
/// plus the pod overhead. The second value is the same with the scoring defaults applied
/// to containers that request no CPU or memory.
pub fn pod_requests(pod: &Pod) -> (Resources, Resources) {
    let Some(spec) = pod.spec.as_ref() else {
        return Default::default();
    };
    let mut total = Resources::default();
    let mut non_zero = Resources::default();
    let nz = |mut r: Resources| {
        if r.milli_cpu == 0 {
            r.milli_cpu = DEFAULT_MILLI_CPU;
        }
        if r.memory == 0 {
            r.memory = DEFAULT_MEMORY;
        }
        r
    };
    for c in &spec.containers {
        let r = container_requests(c);
        non_zero.add(&nz(r.clone()));
        total.add(&r);
    }
    let mut sidecars = Resources::default();
    let mut sidecars_nz = Resources::default();
    let mut init = Resources::default();
    let mut init_nz = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        let r_nz = nz(r.clone());
        if c.restart_policy.as_deref() == Some("Always") {
            total.add(&r);
            non_zero.add(&r_nz);
            sidecars.add(&r);
            sidecars_nz.add(&r_nz);
            init.max_with(&sidecars);
            init_nz.max_with(&sidecars_nz);
        } else {
            let mut with = r;
            with.add(&sidecars);
            init.max_with(&with);
            let mut with_nz = r_nz;
            with_nz.add(&sidecars_nz);
            init_nz.max_with(&with_nz);
        }
    }
    total.max_with(&init);
    non_zero.max_with(&init_nz);
    let overhead = Resources::from_list(spec.overhead.as_ref());
    total.add(&overhead);
    non_zero.add(&overhead);
    (total, non_zero)
}

/// A host port a pod binds: (host IP, protocol, port). An empty IP means every address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == o.port
            && self.protocol == o.protocol
            && (any(&self.ip) || any(&o.ip) || self.ip == o.ip)
    }
}

pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|hp| *hp > 0)?;
            Some(HostPort {
                ip: p.host_ip.clone().unwrap_or_default(),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
            })
        })
        .collect()
}

/// One node and the sum of what its pods asked for.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    /// The node's taints, plus the `not-ready` / `unreachable` taint the node lifecycle
    /// controller would add when its Ready condition is not True.
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pod_count: i64,
    pub used_ports: Vec<HostPort>,
}

/// Label, affinity and priority facts of one bound pod, kept for the filters and scores
/// that look at other pods (inter-pod affinity, topology spread).
#[derive(Clone, Debug)]
pub struct PlacedPod {
    pub namespace: String,
    pub labels: Labels,
    pub node: usize,
    pub required_affinity: Vec<PodAffinityTerm>,
    pub required_anti_affinity: Vec<PodAffinityTerm>,
    pub preferred_affinity: Vec<WeightedPodAffinityTerm>,
    pub preferred_anti_affinity: Vec<WeightedPodAffinityTerm>,
    pub terminating: bool,
}

/// Nodes and bound pods at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PlacedPod>,
    /// Indices into `pods` of pods with any affinity term, the only ones inter-pod
    /// affinity has to look at besides label matches.
    pub pods_with_affinity: Vec<usize>,
    pub by_name: HashMap<String, usize>,
    /// Labels of namespaces, for affinity terms with a namespaceSelector.
    pub namespace_labels: HashMap<String, Labels>,
    /// Per node label key, how many nodes carry it and how many values it takes: topology
    /// spread reads its domains here instead of walking every node for every pod.
    pub node_keys: HashMap<String, KeyStats>,
    /// Indices into `pods` by namespace, label key and label value: the pods a selector
    /// with `key=value` can match, so spread counting looks at those instead of all pods.
    pub pods_by_label: HashMap<String, HashMap<String, HashMap<String, Vec<usize>>>>,
    /// Where the next placement starts looking (see `place::feasible_nodes_to_find`).
    pub next_start: NextStart,
}

/// How one node label key is spread over the snapshot's nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyStats {
    /// Nodes carrying the key.
    pub nodes: usize,
    /// Distinct values it takes on them.
    pub values: usize,
}

/// The node index the next placement starts scanning from. kube-scheduler rotates it so
/// that stopping after enough feasible nodes does not always favour the first ones; it is
/// an atomic so `place` can stay `&Snapshot` (a pure function of its inputs but this hint).
#[derive(Debug, Default)]
pub struct NextStart(std::sync::atomic::AtomicUsize);

impl NextStart {
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn set(&self, v: usize) {
        self.0.store(v, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Clone for NextStart {
    fn clone(&self) -> Self {
        NextStart(std::sync::atomic::AtomicUsize::new(self.get()))
    }
}

fn ready_taint(node: &Node) -> Option<Taint> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let key = match ready {
        Some("True") => return None,
        Some("False") => "node.kubernetes.io/not-ready",
        _ => "node.kubernetes.io/unreachable",
    };
    Some(Taint {
        key: key.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    })
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Snapshot {
    /// A snapshot of `nodes` and the pods among `pods` bound to one of them. Pods that
    /// finished (Succeeded, Failed) hold no resources and are left out, as in kube-scheduler.
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut s = Snapshot::default();
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let spec = node.spec.as_ref();
            let mut taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
            if let Some(t) = ready_taint(node) {
                if !taints
                    .iter()
                    .any(|x| x.key == t.key && x.effect == t.effect)
                {
                    taints.push(t);
                }
            }
            let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
            let allowed_pods = alloc
                .and_then(|a| a.get("pods"))
                .map(|q| units(&q.0))
                .unwrap_or(0);
            s.by_name.insert(name.clone(), s.nodes.len());
            s.nodes.push(NodeInfo {
                name,
                labels: node.metadata.labels.clone().unwrap_or_default(),
                taints,
                unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
                allocatable: Resources::from_list(alloc),
                allowed_pods,
                requested: Resources::default(),
                non_zero_requested: Resources::default(),
                pod_count: 0,
                used_ports: Vec::new(),
            });
        }
        // Nodes in name order: the tie-break between equal scores is then the name.
        let mut order: Vec<usize> = (0..s.nodes.len()).collect();
        order.sort_by(|a, b| s.nodes[*a].name.cmp(&s.nodes[*b].name));
        let nodes = std::mem::take(&mut s.nodes);
        let mut slots: Vec<Option<NodeInfo>> = nodes.into_iter().map(Some).collect();
        s.nodes = order.iter().filter_map(|i| slots[*i].take()).collect();
        s.by_name = s
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut values: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        for n in &s.nodes {
            for (k, v) in &n.labels {
                values.entry(k).or_default().insert(v);
            }
        }
        let mut node_keys = HashMap::with_capacity(values.len());
        for n in &s.nodes {
            for k in n.labels.keys() {
                node_keys
                    .entry(k.clone())
                    .or_insert_with(|| KeyStats {
                        nodes: 0,
                        values: values[k.as_str()].len(),
                    })
                    .nodes += 1;
            }
        }
        s.node_keys = node_keys;
        for pod in pods {
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                if !is_terminal(pod) {
                    s.assume(pod, node);
                }
            }
        }
        s
    }

    /// Count `pod` as bound to `node` (no-op for an unknown node).
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let Some(&idx) = self.by_name.get(node) else {
            return;
        };
        let (req, nz) = pod_requests(pod);
        let n = &mut self.nodes[idx];
        n.requested.add(&req);
        n.non_zero_requested.add(&nz);
        n.pod_count += 1;
        n.used_ports.extend(host_ports(pod));
        let aff = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pa = aff.and_then(|a| a.pod_affinity.as_ref());
        let paa = aff.and_then(|a| a.pod_anti_affinity.as_ref());
        let placed = PlacedPod {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node: idx,
            required_affinity: pa
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            required_anti_affinity: paa
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            preferred_affinity: pa
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            preferred_anti_affinity: paa
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        };
        if !(placed.required_affinity.is_empty()
            && placed.required_anti_affinity.is_empty()
            && placed.preferred_affinity.is_empty()
            && placed.preferred_anti_affinity.is_empty())
        {
            self.pods_with_affinity.push(self.pods.len());
        }
        let at = self.pods.len();
        let by_key = match self.pods_by_label.get_mut(&placed.namespace) {
            Some(m) => m,
            None => self
                .pods_by_label
                .entry(placed.namespace.clone())
                .or_default(),
        };
        for (k, v) in &placed.labels {
            let by_value = match by_key.get_mut(k) {
                Some(m) => m,
                None => by_key.entry(k.clone()).or_default(),
            };
            match by_value.get_mut(v) {
                Some(list) => list.push(at),
                None => {
                    by_value.insert(v.clone(), vec![at]);
                }
            }
        }
        self.pods.push(placed);
    }

    /// Indices into `pods` of the pods in `namespace` labelled `key=value`.
    pub fn pods_labelled(&self, namespace: &str, key: &str, value: &str) -> &[usize] {
        self.pods_by_label
            .get(namespace)
            .and_then(|m| m.get(key))
            .and_then(|m| m.get(value))
            .map_or(&[], Vec::as_slice)
    }

    /// Record the labels of a namespace (for namespaceSelector in affinity terms).
    pub fn set_namespace_labels(&mut self, namespace: &str, labels: Labels) {
        self.namespace_labels.insert(namespace.to_string(), labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("pod")
    }

    #[test]
    fn requests_follow_kubernetes_rules() {
        let c = |cpu: &str, mem: &str| json!({"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}});
        let cases = [
            // containers add up
            (
                json!({"containers": [c("100m", "1Mi"), c("200m", "1Mi")]}),
                300,
                2 << 20,
            ),
            // an init container bigger than the sum wins, per resource
            (
                json!({"containers": [c("100m", "1Mi")], "initContainers": [c("500m", "1Ki")]}),
                500,
                1 << 20,
            ),
            // a sidecar adds to the sum and to later init containers
            (
                json!({"containers": [c("100m", "1Mi")],
                    "initContainers": [
                        {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}},
                        c("250m", "0")]}),
                450,
                1 << 20,
            ),
            // limits stand in for missing requests
            (
                json!({"containers": [{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}),
                1000,
                1 << 30,
            ),
            // overhead is added
            (
                json!({"containers": [c("100m", "1Mi")], "overhead": {"cpu": "50m"}}),
                150,
                1 << 20,
            ),
            (json!({"containers": [{"name": "c"}]}), 0, 0),
        ];
        for (spec, cpu, mem) in cases {
            let (r, _) = pod_requests(&pod(spec.clone()));
            assert_eq!((r.milli_cpu, r.memory), (cpu, mem), "{spec}");
        }
    }

    #[test]
    fn non_zero_requests_default_for_scoring() {
        let (r, nz) = pod_requests(&pod(
            json!({"containers": [{"name": "a"}, {"name": "b", "resources": {"requests": {"cpu": "1"}}}]}),
        ));
        assert_eq!((r.milli_cpu, r.memory), (1000, 0));
        assert_eq!((nz.milli_cpu, nz.memory), (1100, 2 * DEFAULT_MEMORY));
    }

    #[test]
    fn host_port_conflicts() {
        let hp = |ip: &str, proto: &str, port| HostPort {
            ip: ip.into(),
            protocol: proto.into(),
            port,
        };
        let cases = [
            (hp("", "TCP", 80), hp("", "TCP", 80), true),
            (hp("", "TCP", 80), hp("", "UDP", 80), false),
            (hp("", "TCP", 80), hp("", "TCP", 81), false),
            (hp("10.0.0.1", "TCP", 80), hp("0.0.0.0", "TCP", 80), true),
            (hp("10.0.0.1", "TCP", 80), hp("10.0.0.2", "TCP", 80), false),
            (hp("10.0.0.1", "TCP", 80), hp("10.0.0.1", "TCP", 80), true),
        ];
        for (a, b, want) in cases {
            assert_eq!(a.conflicts(&b), want, "{a:?} vs {b:?}");
        }
    }
}
