//! `place`: the pure decision of which node a pod goes to.
//!
//! ```text
//!   pod ──▶ Candidate::new (once per pod: requests, ports, spread counts, affinity pairs)
//!              │
//!   snapshot ──┼──▶ for each node: FILTERS in order, first rejection wins ──▶ feasible nodes
//!              │                                          └─▶ rejections ──▶ Unschedulable
//!              └──▶ SCORES over feasible nodes, normalized, weighted, summed
//!                        └─▶ best score; ties go to the first node by name
//! ```
//!
//! Filters and scores are named entries in [`FILTERS`] and [`SCORES`] in kube-scheduler's
//! default order and weights, so edge-specific ones (locality, reliability, cost, time
//! windows) are one more entry each. Reasons and the failure message use kube-scheduler's
//! wording, because people paste them into search engines.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{
    NodeSelectorTerm, Pod, PodAffinityTerm, PreferredSchedulingTerm, Toleration,
    TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::selectors::{
    label_selector_matches, node_selector_term_matches, node_selector_terms_match, tolerated,
    Labels,
};
use super::snapshot::{host_ports, pod_requests, HostPort, NodeInfo, Resources, Snapshot};

/// Why one node cannot take the pod. `resolvable` is kube-scheduler's `Unschedulable`
/// (evicting pods might help) versus `UnschedulableAndUnresolvable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reasons: Vec<Cow<'static, str>>,
    pub resolvable: bool,
}

impl Rejection {
    /// A rejection worded `reason()` when `c.explain` is set, else without words: a pod
    /// that fits somewhere never shows why other nodes did not take it, so the per-node
    /// loop leaves out the allocation and formatting.
    fn new(
        c: &Candidate<'_>,
        resolvable: bool,
        reason: impl FnOnce() -> Cow<'static, str>,
    ) -> Self {
        Rejection {
            reasons: if c.explain {
                vec![reason()]
            } else {
                Vec::new()
            },
            resolvable,
        }
    }
    fn unresolvable(c: &Candidate<'_>, reason: &'static str) -> Self {
        Rejection::new(c, false, || reason.into())
    }
    fn resolvable(c: &Candidate<'_>, reason: &'static str) -> Self {
        Rejection::new(c, true, || reason.into())
    }
}

pub const ERR_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const ERR_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const ERR_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const ERR_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const ERR_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
pub const ERR_POD_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_POD_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// The pod fits on no node. Displays exactly as kube-scheduler 1.33 words its
/// FailedScheduling events and PodScheduled condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Unschedulable {
    /// How many nodes the snapshot held.
    pub total_nodes: usize,
    /// Each node's rejection, in node name order.
    pub rejections: Vec<(String, Rejection)>,
    /// `preemptionPolicy: Never`: kube-scheduler then says so instead of trying to preempt.
    pub preemption_never: bool,
}

/// "3 Insufficient cpu, 1 node(s) ..." sorted as strings, as kube-scheduler's histogram.
fn histogram<'a>(reasons: impl Iterator<Item = &'a str>) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in reasons {
        *counts.entry(r).or_default() += 1;
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    parts.join(", ")
}

impl Unschedulable {
    pub fn message(&self) -> String {
        if self.total_nodes == 0 {
            return "no nodes available to schedule pods".into();
        }
        let n = self.total_nodes;
        let filter = histogram(
            self.rejections
                .iter()
                .flat_map(|(_, r)| r.reasons.iter().map(|s| s.as_ref())),
        );
        // kith does not preempt; with all pods at one priority (kith has no
        // PriorityClasses) kube-scheduler's dry run finds exactly these answers.
        let preemption = if self.preemption_never {
            "not eligible due to preemptionPolicy=Never.".to_string()
        } else {
            let per_node = self.rejections.iter().map(|(_, r)| {
                if r.resolvable {
                    NO_VICTIMS
                } else {
                    NOT_HELPFUL
                }
            });
            format!("0/{n} nodes are available: {}.", histogram(per_node))
        };
        format!("0/{n} nodes are available: {filter}. preemption: {preemption}")
    }
}

/// A filter: a named yes/no on one node.
pub struct Filter {
    pub name: &'static str,
    pub check: fn(&Candidate<'_>, &NodeInfo) -> Result<(), Rejection>,
}

/// How a score's raw values become 0..=100 across the feasible nodes.
#[derive(Clone, Copy, Debug)]
pub enum Normalize {
    /// Already 0..=100.
    None,
    /// `raw * 100 / max` (more is better).
    Max,
    /// `100 - raw * 100 / max` (more is worse).
    ReverseMax,
    /// `(raw - min) * 100 / (max - min)`, 0 when all equal.
    MinMax,
    /// Topology spread: `100 * (max + min - raw) / max` over nodes that have the keys.
    Spread,
}

/// A score: a named, weighted preference among feasible nodes. `raw` returns `None` for
/// a node the score ignores (it then gets 0).
pub struct Score {
    pub name: &'static str,
    pub weight: i64,
    pub raw: fn(&Candidate<'_>, &NodeInfo) -> Option<i64>,
    pub normalize: Normalize,
    /// `Some(v)` when the pod makes this score alike on every node (say, it has no
    /// preferences of that sort): every node then gets the normalized `v` without `raw`
    /// being asked node by node.
    pub uniform: fn(&Candidate<'_>) -> Option<i64>,
}

/// A score that depends on the node whatever the pod.
fn never_uniform(_: &Candidate<'_>) -> Option<i64> {
    None
}

/// kube-scheduler's default filters, in its order (the first rejection is reported).
pub const FILTERS: &[Filter] = &[
    Filter {
        name: "NodeUnschedulable",
        check: node_unschedulable,
    },
    Filter {
        name: "NodeName",
        check: node_name,
    },
    Filter {
        name: "TaintToleration",
        check: taint_toleration,
    },
    Filter {
        name: "NodeAffinity",
        check: node_affinity,
    },
    Filter {
        name: "NodePorts",
        check: node_ports,
    },
    Filter {
        name: "NodeResourcesFit",
        check: resources_fit,
    },
    Filter {
        name: "PodTopologySpread",
        check: topology_spread,
    },
    Filter {
        name: "InterPodAffinity",
        check: inter_pod_affinity,
    },
];

/// kube-scheduler's default scores and weights.
pub const SCORES: &[Score] = &[
    Score {
        name: "TaintToleration",
        weight: 3,
        raw: score_taints,
        normalize: Normalize::ReverseMax,
        uniform: never_uniform,
    },
    Score {
        name: "NodeAffinity",
        weight: 2,
        raw: score_node_affinity,
        normalize: Normalize::Max,
        uniform: no_preferred_terms,
    },
    Score {
        name: "NodeResourcesFit",
        weight: 1,
        raw: score_least_allocated,
        normalize: Normalize::None,
        uniform: never_uniform,
    },
    Score {
        name: "PodTopologySpread",
        weight: 2,
        raw: score_spread,
        normalize: Normalize::Spread,
        uniform: no_soft_spread,
    },
    Score {
        name: "InterPodAffinity",
        weight: 2,
        raw: score_pod_affinity,
        normalize: Normalize::MinMax,
        uniform: no_affinity_scores,
    },
    Score {
        name: "NodeResourcesBalancedAllocation",
        weight: 1,
        raw: score_balanced,
        normalize: Normalize::None,
        uniform: never_uniform,
    },
];

/// One topology spread constraint with the pod counts per domain it needs.
struct Spread<'a> {
    key: &'a str,
    max_skew: i64,
    /// Matching pods per domain; a domain missing here holds none.
    counts: HashMap<&'a str, i64>,
    min: i64,
    self_match: i64,
    /// ln(domains + 2): constraints over more domains weigh more, as in kube-scheduler.
    weight: f64,
}

/// A (topologyKey, value) pair: one topology domain.
type Domain<'a> = (&'a str, &'a str);

static NO_LABELS: Labels = BTreeMap::new();

/// What `place` precomputes about the pod once, so each node costs only lookups.
pub struct Candidate<'a> {
    pub pod: &'a Pod,
    snapshot: &'a Snapshot,
    /// Whether filters word their rejections (see [`Rejection`]); `place` sets it only
    /// once the pod turned out to fit nowhere.
    pub explain: bool,
    pub namespace: &'a str,
    pub labels: &'a Labels,
    pub node_name: Option<&'a str>,
    pub requests: Resources,
    pub non_zero: Resources,
    pub ports: Vec<HostPort>,
    pub tolerations: &'a [Toleration],
    /// The tolerations that can tolerate a PreferNoSchedule taint, for its score.
    prefer_tolerations: Vec<&'a Toleration>,
    node_selector: Option<&'a BTreeMap<String, String>>,
    required_terms: Option<&'a [NodeSelectorTerm]>,
    preferred_terms: &'a [PreferredSchedulingTerm],
    hard_spread: Vec<Spread<'a>>,
    soft_spread: Vec<Spread<'a>>,
    /// Domains an existing pod's required anti-affinity forbids.
    existing_anti: HashSet<Domain<'a>>,
    required_affinity: &'a [PodAffinityTerm],
    /// Domains holding pods that match all the pod's required affinity terms.
    affinity_pairs: HashMap<Domain<'a>, i64>,
    /// No pod matches the required affinity terms yet but the pod matches them itself:
    /// the first of a group that wants to be together may go anywhere.
    first_of_group: bool,
    required_anti: &'a [PodAffinityTerm],
    anti_pairs: HashSet<Domain<'a>>,
    /// Preferred (anti-)affinity both ways, summed per domain.
    affinity_scores: HashMap<Domain<'a>, i64>,
}

/// The pods in `ns` that `sel` can match, when the selector names a label value: the
/// shortest list of a `matchLabels` pair or a one-value `In`; `None` means look at all.
fn pods_to_match<'s>(sel: &LabelSelector, ns: &str, snapshot: &'s Snapshot) -> Option<&'s [usize]> {
    let labels = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let one_value_in = sel.match_expressions.iter().flatten().filter_map(|e| {
        match (e.operator.as_str(), e.values.as_deref()) {
            ("In", Some([v])) => Some((e.key.as_str(), v.as_str())),
            _ => None,
        }
    });
    labels
        .chain(one_value_in)
        .map(|(k, v)| snapshot.pods_labelled(ns, k, v))
        .min_by_key(|pods| pods.len())
}

fn term_namespace_matches(
    term: &PodAffinityTerm,
    owner_ns: &str,
    target_ns: &str,
    snapshot: &Snapshot,
) -> bool {
    let names = term.namespaces.as_deref().unwrap_or_default();
    if names.iter().any(|n| n == target_ns) {
        return true;
    }
    match &term.namespace_selector {
        None => names.is_empty() && owner_ns == target_ns,
        Some(sel) => {
            let empty = Labels::new();
            let labels = snapshot.namespace_labels.get(target_ns).unwrap_or(&empty);
            label_selector_matches(sel, labels)
        }
    }
}

/// Whether `term` (owned by a pod in `owner_ns`) selects a pod in `ns` with `labels`.
fn term_matches(
    term: &PodAffinityTerm,
    owner_ns: &str,
    ns: &str,
    labels: &Labels,
    snapshot: &Snapshot,
) -> bool {
    // A term without a selector selects nothing.
    term.label_selector
        .as_ref()
        .is_some_and(|s| label_selector_matches(s, labels))
        && term_namespace_matches(term, owner_ns, ns, snapshot)
}

impl<'a> Candidate<'a> {
    pub fn new(pod: &'a Pod, snapshot: &'a Snapshot) -> Self {
        let spec = pod.spec.as_ref();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let labels = pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
        let (requests, non_zero) = pod_requests(pod);
        let node_aff = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref());
        let aff = spec.and_then(|s| s.affinity.as_ref());
        let pa = aff.and_then(|a| a.pod_affinity.as_ref());
        let paa = aff.and_then(|a| a.pod_anti_affinity.as_ref());
        let tolerations: &'a [Toleration] = spec
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let mut c = Candidate {
            pod,
            snapshot,
            explain: false,
            namespace,
            labels,
            node_name: spec
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty()),
            requests,
            non_zero,
            ports: host_ports(pod),
            tolerations,
            prefer_tolerations: tolerations
                .iter()
                .filter(|t| {
                    matches!(
                        t.effect.as_deref(),
                        None | Some("") | Some("PreferNoSchedule")
                    )
                })
                .collect(),
            node_selector: spec.and_then(|s| s.node_selector.as_ref()),
            required_terms: node_aff
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .map(|r| r.node_selector_terms.as_slice()),
            preferred_terms: node_aff
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_deref()
                })
                .unwrap_or_default(),
            hard_spread: Vec::new(),
            soft_spread: Vec::new(),
            existing_anti: HashSet::new(),
            required_affinity: pa
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_deref()
                })
                .unwrap_or_default(),
            affinity_pairs: HashMap::new(),
            first_of_group: false,
            required_anti: paa
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_deref()
                })
                .unwrap_or_default(),
            anti_pairs: HashSet::new(),
            affinity_scores: HashMap::new(),
        };
        let constraints = spec
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or_default();
        let hard: Vec<_> = constraints
            .iter()
            .filter(|t| t.when_unsatisfiable != "ScheduleAnyway")
            .collect();
        let soft: Vec<_> = constraints
            .iter()
            .filter(|t| t.when_unsatisfiable == "ScheduleAnyway")
            .collect();
        c.hard_spread = c.spread_counts(&hard);
        c.soft_spread = c.spread_counts(&soft);
        c.pod_affinity_state(
            pa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default(),
            paa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default(),
        );
        c.first_of_group = !c.required_affinity.is_empty()
            && c.affinity_pairs.is_empty()
            && c.required_affinity
                .iter()
                .all(|t| term_matches(t, c.namespace, c.namespace, c.labels, snapshot));
        c
    }

    fn has_node_affinity(&self) -> bool {
        self.node_selector.is_some() || self.required_terms.is_some()
    }

    fn matches_node_affinity(&self, node: &NodeInfo) -> bool {
        if let Some(sel) = self.node_selector {
            if sel.iter().any(|(k, v)| node.labels.get(k) != Some(v)) {
                return false;
            }
        }
        match self.required_terms {
            Some(terms) => node_selector_terms_match(terms, &node.name, &node.labels),
            None => true,
        }
    }

    /// The selector of a constraint, narrowed by its matchLabelKeys to this pod's values.
    fn spread_selector(&self, t: &'a TopologySpreadConstraint) -> Option<Cow<'a, LabelSelector>> {
        let sel = t.label_selector.as_ref()?;
        let keys = t.match_label_keys.as_deref().unwrap_or_default();
        if keys.is_empty() {
            return Some(Cow::Borrowed(sel));
        }
        let mut sel = sel.clone();
        for key in keys {
            if let Some(v) = self.labels.get(key) {
                sel.match_expressions
                    .get_or_insert_with(Vec::new)
                    .push(LabelSelectorRequirement {
                        key: key.clone(),
                        operator: "In".into(),
                        values: Some(vec![v.clone()]),
                    });
            }
        }
        Some(Cow::Owned(sel))
    }

    fn spread_counts(&self, constraints: &[&'a TopologySpreadConstraint]) -> Vec<Spread<'a>> {
        if constraints.is_empty() {
            return Vec::new();
        }
        let snapshot = self.snapshot;
        // Domains come from nodes the pod could go to by node affinity (nodeAffinityPolicy
        // Honor, the default) that carry every key of these constraints. Without node
        // affinity, and with every node carrying every key, those are all the nodes and the
        // snapshot's key statistics give the domains without walking them.
        let every_node = !self.has_node_affinity()
            && constraints.iter().all(|t| {
                snapshot
                    .node_keys
                    .get(&t.topology_key)
                    .is_some_and(|k| k.nodes == snapshot.nodes.len())
            });
        let eligible: Option<Vec<bool>> = (!every_node).then(|| {
            snapshot
                .nodes
                .iter()
                .map(|n| {
                    self.matches_node_affinity(n)
                        && constraints
                            .iter()
                            .all(|t| n.labels.contains_key(&t.topology_key))
                })
                .collect()
        });
        constraints
            .iter()
            .map(|t| {
                let key = t.topology_key.as_str();
                let domains = match &eligible {
                    None => snapshot.node_keys.get(key).map_or(0, |k| k.values),
                    Some(eligible) => snapshot
                        .nodes
                        .iter()
                        .zip(eligible)
                        .filter(|(_, ok)| **ok)
                        .map(|(n, _)| n.labels[key].as_str())
                        .collect::<HashSet<_>>()
                        .len(),
                } as i64;
                let selector = self.spread_selector(t);
                let mut counts: HashMap<&'a str, i64> = HashMap::new();
                if let Some(sel) = &selector {
                    let mut count = |i: &usize| {
                        let p = &snapshot.pods[*i];
                        if p.terminating
                            || p.namespace != self.namespace
                            || eligible.as_ref().is_some_and(|e| !e[p.node])
                        {
                            return;
                        }
                        if label_selector_matches(sel, &p.labels) {
                            let v = snapshot.nodes[p.node].labels[key].as_str();
                            *counts.entry(v).or_default() += 1;
                        }
                    };
                    match pods_to_match(sel, self.namespace, snapshot) {
                        Some(few) => few.iter().for_each(count),
                        None => (0..snapshot.pods.len()).for_each(|i| count(&i)),
                    }
                }
                let min_domains = i64::from(t.min_domains.unwrap_or(1));
                // A domain without matching pods is missing from `counts` and holds 0.
                let min = if domains < min_domains || (counts.len() as i64) < domains {
                    0
                } else {
                    counts.values().copied().min().unwrap_or(0)
                };
                let self_match = selector
                    .as_ref()
                    .is_some_and(|s| label_selector_matches(s, self.labels))
                    as i64;
                Spread {
                    key,
                    max_skew: i64::from(t.max_skew),
                    counts,
                    min,
                    self_match,
                    weight: ((domains + 2) as f64).ln(),
                }
            })
            .collect()
    }

    fn pod_affinity_state(
        &mut self,
        preferred: &'a [WeightedPodAffinityTerm],
        preferred_anti: &'a [WeightedPodAffinityTerm],
    ) {
        let snapshot = self.snapshot;
        let domain = |node: usize, key: &'a str| -> Option<Domain<'a>> {
            snapshot.nodes[node]
                .labels
                .get(key)
                .map(|v| (key, v.as_str()))
        };
        // What existing pods' terms say about this pod: only pods with terms matter.
        for &i in &snapshot.pods_with_affinity {
            let p = &snapshot.pods[i];
            let selects_me = |t: &PodAffinityTerm| {
                term_matches(t, &p.namespace, self.namespace, self.labels, snapshot)
            };
            for t in p.required_anti_affinity.iter().filter(|t| selects_me(t)) {
                if let Some(d) = domain(p.node, &t.topology_key) {
                    self.existing_anti.insert(d);
                }
            }
            // A required affinity of an existing pod counts as a weight-1 preference.
            for t in p.required_affinity.iter().filter(|t| selects_me(t)) {
                if let Some(d) = domain(p.node, &t.topology_key) {
                    *self.affinity_scores.entry(d).or_default() += 1;
                }
            }
            for (w, sign) in p
                .preferred_affinity
                .iter()
                .map(|w| (w, 1))
                .chain(p.preferred_anti_affinity.iter().map(|w| (w, -1)))
            {
                if selects_me(&w.pod_affinity_term) {
                    if let Some(d) = domain(p.node, &w.pod_affinity_term.topology_key) {
                        *self.affinity_scores.entry(d).or_default() += sign * i64::from(w.weight);
                    }
                }
            }
        }
        if self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && preferred.is_empty()
            && preferred_anti.is_empty()
        {
            return;
        }
        // What this pod's terms say about existing pods.
        let me = self.namespace;
        for p in &snapshot.pods {
            let sel = |t: &PodAffinityTerm| term_matches(t, me, &p.namespace, &p.labels, snapshot);
            if !self.required_affinity.is_empty() && self.required_affinity.iter().all(sel) {
                for t in self.required_affinity {
                    if let Some(d) = domain(p.node, &t.topology_key) {
                        *self.affinity_pairs.entry(d).or_default() += 1;
                    }
                }
            }
            for t in self.required_anti.iter().filter(|t| sel(t)) {
                if let Some(d) = domain(p.node, &t.topology_key) {
                    self.anti_pairs.insert(d);
                }
            }
            for (w, sign) in preferred
                .iter()
                .map(|w| (w, 1))
                .chain(preferred_anti.iter().map(|w| (w, -1)))
            {
                if sel(&w.pod_affinity_term) {
                    if let Some(d) = domain(p.node, &w.pod_affinity_term.topology_key) {
                        *self.affinity_scores.entry(d).or_default() += sign * i64::from(w.weight);
                    }
                }
            }
        }
    }
}

fn node_unschedulable(c: &Candidate<'_>, n: &NodeInfo) -> Result<(), Rejection> {
    // Most nodes are schedulable: decide that before building the taint to compare with.
    if !n.unschedulable {
        return Ok(());
    }
    let taint = k8s_openapi::api::core::v1::Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if !tolerated(c.tolerations, &taint) {
        return Err(Rejection::unresolvable(c, ERR_UNSCHEDULABLE));
    }
    Ok(())
}

fn node_name(c: &Candidate<'_>, n: &NodeInfo) -> Result<(), Rejection> {
    match c.node_name {
        Some(want) if want != n.name => Err(Rejection::unresolvable(c, ERR_NODE_NAME)),
        _ => Ok(()),
    }
}

fn taint_toleration(c: &Candidate<'_>, n: &NodeInfo) -> Result<(), Rejection> {
    let untolerated = n.taints.iter().find(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(c.tolerations, t)
    });
    match untolerated {
        Some(t) => Err(Rejection::new(c, false, || {
            format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            )
            .into()
        })),
        None => Ok(()),
    }
}

fn node_affinity(c: &Candidate<'_>, n: &NodeInfo) -> Result<(), Rejection> {
    if c.matches_node_affinity(n) {
        Ok(())
    } else {
        Err(Rejection::unresolvable(c, ERR_NODE_AFFINITY))
    }
}

fn node_ports(c: &Candidate<'_>, n: &NodeInfo) -> Result<(), Rejection> {
    if c.ports
        .iter()
        .any(|p| n.used_ports.iter().any(|u| p.conflicts(u)))
    {
        return Err(Rejection::resolvable(c, ERR_PORTS));
    }
    Ok(())
}

/// The resources a node lacks for a pod, worded only when the candidate explains.
struct Shortfall {
    explain: bool,
    short: bool,
    reasons: Vec<Cow<'static, str>>,
    resolvable: bool,
}

impl Shortfall {
    fn check(
        &mut self,
        want: i64,
        alloc: i64,
        used: i64,
        name: impl FnOnce() -> Cow<'static, str>,
    ) {
        if want > 0 && want > alloc - used {
            self.short = true;
            if self.explain {
                self.reasons.push(name());
            }
            // Even an empty node could not hold it: evicting pods cannot help.
            if want > alloc {
                self.resolvable = false;
            }
        }
    }
}

fn resources_fit(c: &Candidate<'_>, n: &NodeInfo) -> Result<(), Rejection> {
    let mut s = Shortfall {
        explain: c.explain,
        short: false,
        reasons: Vec::new(),
        resolvable: true,
    };
    if n.pod_count + 1 > n.allowed_pods {
        s.short = true;
        if s.explain {
            s.reasons.push("Too many pods".into());
        }
    }
    let (want, alloc, used) = (&c.requests, &n.allocatable, &n.requested);
    s.check(want.milli_cpu, alloc.milli_cpu, used.milli_cpu, || {
        "Insufficient cpu".into()
    });
    s.check(want.memory, alloc.memory, used.memory, || {
        "Insufficient memory".into()
    });
    s.check(
        want.ephemeral_storage,
        alloc.ephemeral_storage,
        used.ephemeral_storage,
        || "Insufficient ephemeral-storage".into(),
    );
    for (name, v) in &want.scalar {
        let a = alloc.scalar.get(name).copied().unwrap_or(0);
        let u = used.scalar.get(name).copied().unwrap_or(0);
        s.check(*v, a, u, || format!("Insufficient {name}").into());
    }
    if s.short {
        Err(Rejection {
            reasons: s.reasons,
            resolvable: s.resolvable,
        })
    } else {
        Ok(())
    }
}

fn topology_spread(c: &Candidate<'_>, n: &NodeInfo) -> Result<(), Rejection> {
    for s in &c.hard_spread {
        let Some(v) = n.labels.get(s.key) else {
            return Err(Rejection::unresolvable(c, ERR_SPREAD_LABEL));
        };
        let here = s.counts.get(v.as_str()).copied().unwrap_or(0);
        if here + s.self_match - s.min > s.max_skew {
            return Err(Rejection::resolvable(c, ERR_SPREAD));
        }
    }
    Ok(())
}

fn inter_pod_affinity(c: &Candidate<'_>, n: &NodeInfo) -> Result<(), Rejection> {
    if !c.required_affinity.is_empty() {
        let mut pods_exist = true;
        for t in c.required_affinity {
            let Some(v) = n.labels.get(&t.topology_key) else {
                return Err(Rejection::unresolvable(c, ERR_POD_AFFINITY));
            };
            if c.affinity_pairs
                .get(&(t.topology_key.as_str(), v.as_str()))
                .copied()
                .unwrap_or(0)
                <= 0
            {
                pods_exist = false;
            }
        }
        // The first pod of a group that wants to be with itself must go somewhere.
        if !pods_exist && !c.first_of_group {
            return Err(Rejection::unresolvable(c, ERR_POD_AFFINITY));
        }
    }
    if in_domain(&c.anti_pairs, n) {
        return Err(Rejection::resolvable(c, ERR_POD_ANTI_AFFINITY));
    }
    if in_domain(&c.existing_anti, n) {
        return Err(Rejection::resolvable(c, ERR_EXISTING_ANTI_AFFINITY));
    }
    Ok(())
}

/// Whether the node lies in one of the domains.
fn in_domain(domains: &HashSet<Domain<'_>>, n: &NodeInfo) -> bool {
    domains
        .iter()
        .any(|(k, v)| n.labels.get(*k).map(String::as_str) == Some(*v))
}

/// Without preferred terms every node's raw score is 0, and `Max` makes that 0.
fn no_preferred_terms(c: &Candidate<'_>) -> Option<i64> {
    c.preferred_terms.is_empty().then_some(0)
}

/// Without ScheduleAnyway constraints every node's raw score is 0, and `Spread` makes
/// that 100.
fn no_soft_spread(c: &Candidate<'_>) -> Option<i64> {
    c.soft_spread.is_empty().then_some(100)
}

/// Without (anti-)affinity weights either way every node's raw score is 0, and `MinMax`
/// makes that 0.
fn no_affinity_scores(c: &Candidate<'_>) -> Option<i64> {
    c.affinity_scores.is_empty().then_some(0)
}

fn score_taints(c: &Candidate<'_>, n: &NodeInfo) -> Option<i64> {
    Some(
        n.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| {
                !c.prefer_tolerations
                    .iter()
                    .any(|tol| super::selectors::tolerates(tol, t))
            })
            .count() as i64,
    )
}

fn score_node_affinity(c: &Candidate<'_>, n: &NodeInfo) -> Option<i64> {
    Some(
        c.preferred_terms
            .iter()
            .filter(|t| node_selector_term_matches(&t.preference, &n.name, &n.labels))
            .map(|t| i64::from(t.weight))
            .sum(),
    )
}

/// Per resource (cpu, memory) the share that stays free after the pod, then the mean.
fn score_least_allocated(c: &Candidate<'_>, n: &NodeInfo) -> Option<i64> {
    let free = |alloc: i64, used: i64, want: i64| {
        let req = used + want;
        if alloc <= 0 || req > alloc {
            0
        } else {
            (alloc - req) * 100 / alloc
        }
    };
    let cpu = free(
        n.allocatable.milli_cpu,
        n.non_zero_requested.milli_cpu,
        c.non_zero.milli_cpu,
    );
    let mem = free(
        n.allocatable.memory,
        n.non_zero_requested.memory,
        c.non_zero.memory,
    );
    Some((cpu + mem) / 2)
}

/// Prefers nodes whose cpu and memory fill up evenly: 100 * (1 - std dev of the shares).
fn score_balanced(c: &Candidate<'_>, n: &NodeInfo) -> Option<i64> {
    let share = |alloc: i64, used: i64, want: i64| {
        if alloc <= 0 {
            0.0
        } else {
            ((used + want) as f64 / alloc as f64).min(1.0)
        }
    };
    let cpu = share(
        n.allocatable.milli_cpu,
        n.requested.milli_cpu,
        c.requests.milli_cpu,
    );
    let mem = share(n.allocatable.memory, n.requested.memory, c.requests.memory);
    let std = (cpu - mem).abs() / 2.0;
    Some(((1.0 - std) * 100.0) as i64)
}

fn score_spread(c: &Candidate<'_>, n: &NodeInfo) -> Option<i64> {
    if c.soft_spread.is_empty() {
        return Some(0);
    }
    let mut total = 0.0;
    for s in &c.soft_spread {
        let v = n.labels.get(s.key)?;
        let count = s.counts.get(v.as_str()).copied().unwrap_or(0);
        total += count as f64 * s.weight + (s.max_skew - 1) as f64;
    }
    // Fixed point keeps the normalization in integers.
    Some((total * 1000.0).round() as i64)
}

fn score_pod_affinity(c: &Candidate<'_>, n: &NodeInfo) -> Option<i64> {
    Some(
        c.affinity_scores
            .iter()
            .filter(|((k, v), _)| n.labels.get(*k).map(String::as_str) == Some(*v))
            .map(|(_, w)| *w)
            .sum(),
    )
}

fn normalize(kind: Normalize, raw: &[Option<i64>]) -> Vec<i64> {
    let present = raw.iter().flatten().copied();
    let max = present.clone().max().unwrap_or(0);
    let min = present.min().unwrap_or(0);
    raw.iter()
        .map(|r| {
            let Some(s) = *r else { return 0 };
            match kind {
                Normalize::None => s,
                Normalize::Max if max > 0 => s * 100 / max,
                Normalize::Max => 0,
                Normalize::ReverseMax if max > 0 => 100 - s * 100 / max,
                Normalize::ReverseMax => 100,
                Normalize::MinMax if max > min => (s - min) * 100 / (max - min),
                Normalize::MinMax => 0,
                Normalize::Spread if max > 0 => 100 * (max + min - s) / max,
                Normalize::Spread => 100,
            }
        })
        .collect()
}

/// The node `pod` should run on, or why none can take it.
pub fn place(pod: &Pod, snapshot: &Snapshot) -> Result<String, Unschedulable> {
    let mut c = Candidate::new(pod, snapshot);
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    // Only where they are: the reasons are worded once the pod fits nowhere.
    let mut rejected: Vec<&NodeInfo> = Vec::new();
    let total = snapshot.nodes.len();
    let want = feasible_nodes_to_find(total);
    let start = if total == 0 {
        0
    } else {
        snapshot.next_start.get() % total
    };
    let mut examined = 0;
    for node in snapshot.nodes[start..]
        .iter()
        .chain(&snapshot.nodes[..start])
    {
        examined += 1;
        if FILTERS.iter().all(|f| (f.check)(&c, node).is_ok()) {
            feasible.push(node);
        } else {
            rejected.push(node);
        }
        if feasible.len() >= want {
            break;
        }
    }
    if total > 0 {
        snapshot.next_start.set((start + examined) % total);
    }
    match feasible.as_slice() {
        [] => {
            c.explain = true;
            let rejections = rejected
                .iter()
                .filter_map(|node| {
                    let r = FILTERS.iter().try_for_each(|f| (f.check)(&c, node));
                    r.err().map(|r| (node.name.clone(), r))
                })
                .collect();
            return Err(Unschedulable {
                total_nodes: snapshot.nodes.len(),
                rejections,
                preemption_never: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.preemption_policy.as_deref())
                    == Some("Never"),
            });
        }
        // Nothing to compare: kube-scheduler skips scoring too.
        [only] => return Ok(only.name.clone()),
        _ => {}
    }
    let totals = total_scores(&c, &feasible);
    // Nodes are in name order and max_by_key keeps the last maximum, so search from the
    // end to make the first name win ties.
    let best = totals
        .iter()
        .enumerate()
        .rev()
        .max_by_key(|(_, t)| **t)
        .map(|(i, _)| i)
        .unwrap_or(0);
    Ok(feasible[best].name.clone())
}

/// How many feasible nodes are enough before scoring, as kube-scheduler's adaptive
/// `percentageOfNodesToScore`: every node below 100, else 50% minus 1% per 125 nodes,
/// at least 5% and at least 100 nodes. A large region then scores a sample of good nodes
/// instead of all of them; an unschedulable pod still looks at every node, so its
/// FailedScheduling message counts them all.
pub fn feasible_nodes_to_find(total: usize) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if total < MIN_FEASIBLE {
        return total;
    }
    let percent = (50 - (total / 125) as i64).max(5) as usize;
    (total * percent / 100).max(MIN_FEASIBLE)
}

/// Scores of each feasible node by name, for tests and diagnostics.
pub fn scores(pod: &Pod, snapshot: &Snapshot) -> Vec<(String, i64)> {
    let c = Candidate::new(pod, snapshot);
    let feasible: Vec<&NodeInfo> = snapshot
        .nodes
        .iter()
        .filter(|n| FILTERS.iter().all(|f| (f.check)(&c, n).is_ok()))
        .collect();
    let totals = total_scores(&c, &feasible);
    feasible
        .iter()
        .map(|n| n.name.clone())
        .zip(totals)
        .collect()
}

/// Every score normalized over `feasible`, weighted and summed per node.
fn total_scores(c: &Candidate<'_>, feasible: &[&NodeInfo]) -> Vec<i64> {
    let mut totals = vec![0i64; feasible.len()];
    for s in SCORES {
        if let Some(v) = (s.uniform)(c) {
            totals.iter_mut().for_each(|t| *t += s.weight * v);
            continue;
        }
        let raw: Vec<Option<i64>> = feasible.iter().map(|n| (s.raw)(c, n)).collect();
        for (t, v) in totals.iter_mut().zip(normalize(s.normalize, &raw)) {
            *t += s.weight * v;
        }
    }
    totals
}

#[cfg(test)]
mod sample_tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    #[test]
    fn uniform_scores_are_what_every_node_would_score() {
        let node = |name: &str, zone: &str, cpu: &str, taints: serde_json::Value| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"zone": zone, "kubernetes.io/hostname": name}},
                "spec": {"taints": taints},
                "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .expect("node")
        };
        let nodes = [
            node("a", "z1", "4", json!([])),
            node(
                "b",
                "z2",
                "2",
                json!([{"key": "spot", "effect": "PreferNoSchedule"}]),
            ),
            node("c", "z2", "8", json!([])),
        ];
        let bound: Pod = serde_json::from_value(json!({
            "metadata": {"name": "w", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "c", "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}
        }))
        .expect("pod");
        let snap = Snapshot::new(&nodes, [&bound]);
        let pods = [
            json!({"containers": [{"name": "c"}]}),
            json!({"containers": [{"name": "c"}],
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}),
            json!({"containers": [{"name": "c"}], "tolerations": [{"key": "spot", "operator": "Exists"}]}),
        ];
        let mut checked = 0;
        for spec in pods {
            let pod: Pod = serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}}, "spec": spec}),
            )
            .expect("pod");
            let c = Candidate::new(&pod, &snap);
            for s in SCORES {
                let Some(v) = (s.uniform)(&c) else { continue };
                let raw: Vec<Option<i64>> = snap.nodes.iter().map(|n| (s.raw)(&c, n)).collect();
                assert_eq!(
                    normalize(s.normalize, &raw),
                    vec![v; snap.nodes.len()],
                    "{}",
                    s.name
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 9, "three uniform scores for each of three pods");
    }

    #[test]
    fn nodes_to_score_follow_kube_scheduler() {
        let table = [
            (0, 0),
            (3, 3),
            (99, 99),
            (100, 100),
            (200, 100),
            (500, 230),
            (1000, 420),
            (5000, 500),
            (6000, 300),
            (100_000, 5000),
        ];
        for (total, want) in table {
            assert_eq!(feasible_nodes_to_find(total), want, "{total} nodes");
        }
    }
}
