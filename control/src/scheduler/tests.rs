//! Table tests of `place`: every filter, every score, and the failure message.

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use super::place::{place, scores};
use super::snapshot::Snapshot;

/// JSON merge patch: objects merge recursively, everything else replaces.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// A Ready node with 4 CPUs, 8Gi memory, 110 pods, patched by `extra`.
fn node(name: &str, extra: Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "10Gi"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    });
    merge(&mut n, &extra);
    serde_json::from_value(n).expect("node")
}

/// A pod in `default` with one container, patched by `extra`.
fn pod(name: &str, extra: Value) -> Pod {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "i"}]}
    });
    merge(&mut p, &extra);
    serde_json::from_value(p).expect("pod")
}

/// A pod bound to `node`, patched by `extra`.
fn bound(name: &str, node: &str, extra: Value) -> Pod {
    let mut p = pod(name, extra);
    if let Some(s) = p.spec.as_mut() {
        s.node_name = Some(node.into());
    }
    p
}

fn cpu(q: &str) -> Value {
    json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": q}}}]}})
}

fn labels(l: Value) -> Value {
    json!({"metadata": {"labels": l}})
}

fn zone(z: &str, name: &str) -> Value {
    json!({"metadata": {"labels": {"zone": z, "kubernetes.io/hostname": name}}})
}

fn taint(key: &str, value: &str, effect: &str) -> Value {
    json!({"spec": {"taints": [{"key": key, "value": value, "effect": effect}]}})
}

fn with(mut a: Value, b: Value) -> Value {
    merge(&mut a, &b);
    a
}

struct Case {
    name: &'static str,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    pod: Pod,
    want: Result<&'static str, &'static str>,
}

fn run(cases: Vec<Case>) {
    for c in cases {
        let snap = Snapshot::new(&c.nodes, &c.pods);
        let got = place(&c.pod, &snap).map_err(|e| e.to_string());
        let want = c.want.map(str::to_string).map_err(str::to_string);
        assert_eq!(
            got,
            want,
            "case {:?}; scores {:?}",
            c.name,
            scores(&c.pod, &snap)
        );
    }
}

#[test]
fn resource_filters() {
    let gpu_node = json!({"status": {"allocatable": {"nvidia.com/gpu": "1"}}});
    let mem = |q: &str| json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"memory": q}}}]}});
    run(vec![
        Case {
            name: "goes where the requests fit",
            nodes: vec![node("a", json!({})), node("b", json!({}))],
            pods: vec![bound("x", "a", cpu("3"))],
            pod: pod("p", cpu("2")),
            want: Ok("b"),
        },
        Case {
            name: "insufficient cpu everywhere, preemption could help in principle",
            nodes: vec![node("a", json!({})), node("b", json!({}))],
            pods: vec![bound("x", "a", cpu("3")), bound("y", "b", cpu("3500m"))],
            pod: pod("p", cpu("2")),
            want: Err("0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."),
        },
        Case {
            name: "more than the node has at all: preemption cannot help",
            nodes: vec![node("a", json!({}))],
            pods: vec![],
            pod: pod("p", cpu("5")),
            want: Err("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "every missing resource is a reason",
            nodes: vec![node("a", json!({}))],
            pods: vec![bound("x", "a", json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "3", "memory": "7Gi"}}}]}}))],
            pod: pod("p", json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2", "memory": "2Gi"}}}]}})),
            want: Err("0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."),
        },
        Case {
            name: "init containers count as their max",
            nodes: vec![node("a", json!({}))],
            pods: vec![],
            pod: pod("p", json!({"spec": {"initContainers": [{"name": "i", "image": "i", "resources": {"requests": {"memory": "9Gi"}}}]}})),
            want: Err("0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "pod count",
            nodes: vec![node("a", json!({"status": {"allocatable": {"pods": "1"}}}))],
            pods: vec![bound("x", "a", json!({}))],
            pod: pod("p", json!({})),
            want: Err("0/1 nodes are available: 1 Too many pods. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."),
        },
        Case {
            name: "finished pods hold nothing",
            nodes: vec![node("a", json!({"status": {"allocatable": {"pods": "1"}}}))],
            pods: vec![bound("x", "a", json!({"status": {"phase": "Succeeded"}}))],
            pod: pod("p", json!({})),
            want: Ok("a"),
        },
        Case {
            name: "ephemeral storage",
            nodes: vec![node("a", json!({}))],
            pods: vec![],
            pod: pod("p", json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"ephemeral-storage": "11Gi"}}}]}})),
            want: Err("0/1 nodes are available: 1 Insufficient ephemeral-storage. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "extended resources",
            nodes: vec![node("a", json!({})), node("b", gpu_node.clone())],
            pods: vec![],
            pod: pod("p", json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})),
            want: Ok("b"),
        },
        Case {
            name: "extended resource in use",
            nodes: vec![node("b", gpu_node)],
            pods: vec![bound("x", "b", json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]}}))],
            pod: pod("p", json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]}})),
            want: Err("0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."),
        },
        Case {
            name: "memory fits exactly",
            nodes: vec![node("a", json!({}))],
            pods: vec![bound("x", "a", mem("6Gi"))],
            pod: pod("p", mem("2Gi")),
            want: Ok("a"),
        },
    ]);
}

#[test]
fn node_filters() {
    let cp = taint("node-role.kubernetes.io/control-plane", "", "NoSchedule");
    let aff = |terms: Value| json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}});
    run(vec![
        Case {
            name: "the example from kube-scheduler's docs",
            nodes: vec![node("a", json!({})), node("b", cp.clone()), node("c", cp.clone())],
            pods: vec![bound("x", "a", cpu("4"))],
            pod: pod("p", cpu("1")),
            want: Err("0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }. preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "a toleration opens a tainted node",
            nodes: vec![node("a", cp.clone())],
            pods: vec![],
            pod: pod("p", json!({"spec": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}})),
            want: Ok("a"),
        },
        Case {
            name: "NoExecute rejects, with the taint's value",
            nodes: vec![node("a", taint("dedicated", "gpu", "NoExecute"))],
            pods: vec![],
            pod: pod("p", json!({})),
            want: Err("0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "PreferNoSchedule never rejects",
            nodes: vec![node("a", taint("soft", "", "PreferNoSchedule"))],
            pods: vec![],
            pod: pod("p", json!({})),
            want: Ok("a"),
        },
        Case {
            name: "nodeSelector",
            nodes: vec![node("a", json!({})), node("b", labels(json!({"disk": "ssd"})))],
            pods: vec![],
            pod: pod("p", json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
            want: Ok("b"),
        },
        Case {
            name: "nodeSelector matching nothing",
            nodes: vec![node("a", json!({})), node("b", json!({}))],
            pods: vec![],
            pod: pod("p", json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
            want: Err("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "required node affinity Gt",
            nodes: vec![node("a", labels(json!({"cores": "2"}))), node("b", labels(json!({"cores": "16"})))],
            pods: vec![],
            pod: pod("p", aff(json!([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["8"]}]}]))),
            want: Ok("b"),
        },
        Case {
            name: "required node affinity NotIn",
            nodes: vec![node("a", zone("z1", "a")), node("b", zone("z2", "b"))],
            pods: vec![],
            pod: pod("p", aff(json!([{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["z1"]}]}]))),
            want: Ok("b"),
        },
        Case {
            name: "required node affinity on metadata.name",
            nodes: vec![node("a", json!({})), node("b", json!({})), node("c", json!({}))],
            pods: vec![],
            pod: pod("p", aff(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}]))),
            want: Ok("c"),
        },
        Case {
            name: "spec.nodeName",
            nodes: vec![node("a", json!({})), node("b", json!({}))],
            pods: vec![],
            pod: pod("p", json!({"spec": {"nodeName": "x"}})),
            want: Err("0/2 nodes are available: 2 node(s) didn't match the requested node name. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "cordoned node",
            nodes: vec![node("a", json!({"spec": {"unschedulable": true}}))],
            pods: vec![],
            pod: pod("p", json!({})),
            want: Err("0/1 nodes are available: 1 node(s) were unschedulable. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "cordoned node, tolerated",
            nodes: vec![node("a", json!({"spec": {"unschedulable": true}}))],
            pods: vec![],
            pod: pod("p", json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}})),
            want: Ok("a"),
        },
        Case {
            name: "not ready and unreachable nodes",
            nodes: vec![
                node("a", json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
                node("b", json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})),
                node("c", json!({"status": {"conditions": []}})),
            ],
            pods: vec![],
            pod: pod("p", json!({})),
            want: Err("0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 2 node(s) had untolerated taint {node.kubernetes.io/unreachable: }. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "host ports",
            nodes: vec![node("a", json!({})), node("b", json!({}))],
            pods: vec![bound("x", "a", json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}))],
            pod: pod("p", json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 81, "hostPort": 8080}]}]}})),
            want: Ok("b"),
        },
        Case {
            name: "host ports taken everywhere",
            nodes: vec![node("a", json!({}))],
            pods: vec![bound("x", "a", json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}))],
            pod: pod("p", json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 81, "hostPort": 8080}]}]}})),
            want: Err(concat!("0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports. ", "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.")),
        },
        Case {
            name: "no nodes at all",
            nodes: vec![],
            pods: vec![],
            pod: pod("p", json!({})),
            want: Err("no nodes available to schedule pods"),
        },
        Case {
            name: "preemptionPolicy Never",
            nodes: vec![node("a", json!({}))],
            pods: vec![],
            pod: pod("p", with(cpu("8"), json!({"spec": {"preemptionPolicy": "Never"}}))),
            want: Err("0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."),
        },
    ]);
}

#[test]
fn reasons_sort_as_strings_like_kube_scheduler() {
    // "10 ..." sorts before "2 ..." because Go sorts the formatted strings.
    let mut nodes = vec![node("full-0", json!({})), node("full-1", json!({}))];
    let mut pods = vec![
        bound("x0", "full-0", cpu("4")),
        bound("x1", "full-1", cpu("4")),
    ];
    for i in 0..10 {
        nodes.push(node(&format!("t{i}"), taint("k", "v", "NoSchedule")));
    }
    pods.push(bound("y", "t0", json!({})));
    let snap = Snapshot::new(&nodes, &pods);
    let err = place(&pod("p", cpu("1")), &snap).expect_err("nothing fits");
    assert_eq!(
        err.to_string(),
        "0/12 nodes are available: 10 node(s) had untolerated taint {k: v}, 2 Insufficient cpu. preemption: 0/12 nodes are available: 10 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
    );
    assert_eq!(err.rejections.len(), 12);
    assert!(err
        .rejections
        .iter()
        .any(|(n, r)| n == "full-0" && r.resolvable));
}

#[test]
fn pod_affinity_and_spread_filters() {
    let web = labels(json!({"app": "web"}));
    let db = labels(json!({"app": "db"}));
    let term = |app: &str, key: &str| json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key});
    let req_aff = |t: Value| json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}}}});
    let req_anti = |t: Value| json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}}}});
    let spread = |key: &str| json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}});
    let zones = || {
        vec![
            node("a", zone("z1", "a")),
            node("b", zone("z1", "b")),
            node("c", zone("z2", "c")),
        ]
    };
    run(vec![
        Case {
            name: "affinity follows the db into its zone",
            nodes: zones(),
            pods: vec![bound("d", "c", db.clone()), bound("l", "c", cpu("3"))],
            pod: pod("p", req_aff(term("db", "zone"))),
            want: Ok("c"),
        },
        Case {
            name: "affinity with no domain holding the db",
            nodes: vec![node("a", zone("z1", "a")), node("c", zone("z2", "c"))],
            pods: vec![bound("d", "c", db.clone()), bound("l", "c", cpu("4"))],
            pod: pod("p", with(cpu("1"), req_aff(term("db", "zone")))),
            want: Err("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match pod affinity rules. preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "the first pod of a self-affine group goes anywhere",
            nodes: zones(),
            pods: vec![],
            pod: pod("p", with(web.clone(), req_aff(term("web", "zone")))),
            want: Ok("a"),
        },
        Case {
            name: "affinity in another namespace does not count",
            nodes: zones(),
            pods: vec![bound("d", "c", with(db.clone(), json!({"metadata": {"namespace": "other"}})))],
            pod: pod("p", req_aff(term("db", "zone"))),
            want: Err("0/3 nodes are available: 3 node(s) didn't match pod affinity rules. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."),
        },
        Case {
            name: "anti-affinity keeps web pods apart",
            nodes: zones(),
            pods: vec![bound("w", "a", web.clone())],
            pod: pod("p", with(web.clone(), req_anti(term("web", "kubernetes.io/hostname")))),
            want: Ok("b"),
        },
        Case {
            name: "anti-affinity over zones with both zones taken",
            nodes: zones(),
            pods: vec![bound("w1", "a", web.clone()), bound("w2", "c", web.clone())],
            pod: pod("p", with(web.clone(), req_anti(term("web", "zone")))),
            want: Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."),
        },
        Case {
            name: "an existing pod's anti-affinity keeps newcomers out",
            nodes: vec![node("a", zone("z1", "a")), node("c", zone("z2", "c"))],
            pods: vec![bound("lonely", "a", with(db.clone(), req_anti(term("web", "zone"))))],
            pod: pod("p", web.clone()),
            want: Ok("c"),
        },
        Case {
            name: "an existing pod's anti-affinity, nowhere else to go",
            nodes: vec![node("a", zone("z1", "a"))],
            pods: vec![bound("lonely", "a", with(db.clone(), req_anti(term("web", "zone"))))],
            pod: pod("p", web.clone()),
            want: Err("0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."),
        },
        Case {
            name: "spread: the emptier zone",
            nodes: zones(),
            pods: vec![bound("w1", "a", web.clone()), bound("l", "c", cpu("3"))],
            pod: pod("p", with(web.clone(), spread("zone"))),
            want: Ok("c"),
        },
        Case {
            name: "spread: skew would be too large everywhere but the full node",
            nodes: zones(),
            pods: vec![bound("w1", "a", web.clone()), bound("l", "c", cpu("4"))],
            pod: pod("p", with(with(web.clone(), cpu("1")), spread("zone"))),
            want: Err("0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match pod topology spread constraints. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."),
        },
        Case {
            name: "spread: nodes without the key",
            nodes: vec![node("a", json!({}))],
            pods: vec![],
            pod: pod("p", with(web.clone(), spread("zone"))),
            want: Err("0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label). preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."),
        },
    ]);
}

#[test]
fn scores_pick_the_better_node() {
    let web = labels(json!({"app": "web"}));
    let db = labels(json!({"app": "db"}));
    let req = |c: &str, m: &str| json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": c, "memory": m}}}]}});
    let small = |name: &str| {
        node(
            name,
            json!({"status": {"allocatable": {"cpu": "4", "memory": "4Gi"}}}),
        )
    };
    let pref_term = |app: &str, w: i32| json!({"weight": w, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}});
    run(vec![
        Case {
            name: "equal nodes: the first name wins, whatever the input order",
            nodes: vec![
                node("b", json!({})),
                node("c", json!({})),
                node("a", json!({})),
            ],
            pods: vec![],
            pod: pod("p", json!({})),
            want: Ok("a"),
        },
        Case {
            name: "least allocated",
            nodes: vec![node("a", json!({})), node("b", json!({}))],
            pods: vec![bound("x", "a", cpu("1"))],
            pod: pod("p", json!({})),
            want: Ok("b"),
        },
        Case {
            name: "balanced allocation beats a little more free memory",
            nodes: vec![small("a"), small("b")],
            pods: vec![
                bound("x", "a", req("2", "0")),
                bound("y", "b", req("2", "2Gi")),
            ],
            pod: pod("p", req("1", "1Gi")),
            want: Ok("b"),
        },
        Case {
            name: "preferred node affinity",
            nodes: vec![node("a", zone("z1", "a")), node("b", zone("z2", "b"))],
            pods: vec![],
            pod: pod(
                "p",
                json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}}]}}}}),
            ),
            want: Ok("b"),
        },
        Case {
            name: "PreferNoSchedule taints push away",
            nodes: vec![
                node("a", taint("soft", "", "PreferNoSchedule")),
                node("b", json!({})),
            ],
            pods: vec![],
            pod: pod("p", json!({})),
            want: Ok("b"),
        },
        Case {
            name: "PreferNoSchedule tolerated",
            nodes: vec![
                node("a", taint("soft", "", "PreferNoSchedule")),
                node("b", json!({})),
            ],
            pods: vec![bound("x", "b", cpu("1"))],
            pod: pod(
                "p",
                json!({"spec": {"tolerations": [{"key": "soft", "operator": "Exists"}]}}),
            ),
            want: Ok("a"),
        },
        Case {
            name: "preferred pod affinity outweighs a busier node",
            nodes: vec![node("a", json!({})), node("b", json!({}))],
            pods: vec![bound("d", "b", with(db.clone(), cpu("1")))],
            pod: pod(
                "p",
                json!({"spec": {"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [pref_term("db", 100)]}}}}),
            ),
            want: Ok("b"),
        },
        Case {
            name: "preferred pod anti-affinity",
            nodes: vec![node("a", json!({})), node("b", json!({}))],
            pods: vec![bound("w", "a", web.clone()), bound("o", "b", json!({}))],
            pod: pod(
                "p",
                json!({"spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [pref_term("web", 100)]}}}}),
            ),
            want: Ok("b"),
        },
        Case {
            name: "an existing pod's preference pulls the newcomer",
            nodes: vec![node("a", json!({})), node("b", json!({}))],
            pods: vec![bound(
                "d",
                "b",
                with(
                    cpu("1"),
                    json!({"spec": {"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [pref_term("web", 100)]}}}}),
                ),
            )],
            pod: pod("p", web.clone()),
            want: Ok("b"),
        },
        Case {
            name: "spread ScheduleAnyway",
            nodes: vec![node("a", zone("z1", "a")), node("b", zone("z2", "b"))],
            pods: vec![bound("w", "a", web.clone()), bound("o", "b", json!({}))],
            pod: pod(
                "p",
                with(
                    web.clone(),
                    json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
                ),
            ),
            want: Ok("b"),
        },
    ]);
}

#[test]
fn assume_counts_pods_placed_in_the_same_batch() {
    let nodes = vec![node("a", json!({})), node("b", json!({}))];
    let mut snap = Snapshot::new(&nodes, &[]);
    let mut placed = Vec::new();
    for i in 0..4 {
        let p = pod(&format!("p{i}"), cpu("2"));
        let n = place(&p, &snap).expect("fits");
        snap.assume(&p, &n);
        placed.push(n);
    }
    assert_eq!(placed, ["a", "b", "a", "b"]);
    let err = place(&pod("p4", cpu("2")), &snap).expect_err("full");
    assert!(
        err.to_string()
            .starts_with("0/2 nodes are available: 2 Insufficient cpu."),
        "{err}"
    );
}

#[test]
fn spread_counts_only_the_pods_its_selector_means() {
    let web = |version: &str| labels(json!({"app": "web", "version": version}));
    let elsewhere = json!({"metadata": {"namespace": "other"}});
    let spread = |keys: Value| json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": keys}]}});
    let zones = || {
        vec![
            node("a", zone("z1", "a")),
            node("b", zone("z1", "b")),
            node("c", zone("z2", "c")),
        ]
    };
    run(vec![
        Case {
            name: "pods of another namespace do not count",
            nodes: zones(),
            pods: vec![
                bound("w1", "a", web("v1")),
                bound("o1", "c", with(web("v1"), elsewhere.clone())),
                bound("o2", "c", with(web("v1"), elsewhere.clone())),
            ],
            pod: pod("p", with(web("v1"), spread(json!([])))),
            want: Ok("c"),
        },
        Case {
            name: "matchLabelKeys narrows the count to the pod's own version",
            nodes: zones(),
            pods: vec![
                bound("old1", "c", web("v1")),
                bound("old2", "c", web("v1")),
                bound("new1", "a", web("v2")),
            ],
            pod: pod("p", with(web("v2"), spread(json!(["version"])))),
            want: Ok("c"),
        },
        Case {
            name: "without matchLabelKeys every version counts",
            nodes: zones(),
            pods: vec![
                bound("old1", "c", web("v1")),
                bound("old2", "c", web("v1")),
                bound("new1", "a", web("v2")),
            ],
            // z2 holds 2, z1 1: only z1 keeps the skew, and b is the emptier z1 node.
            pod: pod("p", with(web("v2"), spread(json!([])))),
            want: Ok("b"),
        },
        Case {
            name: "a node without the key is no domain and its pods do not count",
            nodes: vec![
                node("a", zone("z1", "a")),
                node("b", json!({})),
                node("c", zone("z2", "c")),
            ],
            pods: vec![
                bound("w1", "a", web("v1")),
                bound("w2", "b", web("v1")),
                bound("w3", "b", web("v1")),
            ],
            pod: pod("p", with(web("v1"), spread(json!([])))),
            want: Ok("c"),
        },
        Case {
            name: "with a nodeSelector only the selected nodes make domains",
            nodes: vec![
                node("a", zone("z1", "a")),
                node("b", with(zone("z2", "b"), labels(json!({"disk": "ssd"})))),
                node("c", with(zone("z3", "c"), labels(json!({"disk": "ssd"})))),
            ],
            // z1 is empty but not selectable: the minimum is over z2 and z3 only.
            pods: vec![bound("w1", "b", web("v1")), bound("w2", "c", web("v1"))],
            pod: pod(
                "p",
                with(
                    with(web("v1"), spread(json!([]))),
                    json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
                ),
            ),
            want: Ok("b"),
        },
    ]);
}

#[test]
fn waiting_pods_by_queue() {
    use std::time::Duration;
    use tokio::time::Instant;
    let b = |unschedulable| super::Backoff {
        delay: Duration::from_secs(1),
        until: Instant::now(),
        seen: None,
        cluster: 0,
        unschedulable,
    };
    let cases: Vec<(Vec<bool>, (usize, usize))> = vec![
        (vec![], (0, 0)),
        (vec![true], (0, 1)),
        (vec![false], (1, 0)),
        (vec![true, false, true], (1, 2)),
    ];
    for (kinds, want) in cases {
        let map: std::collections::HashMap<String, super::Backoff> = kinds
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("uid-{i}"), b(*u)))
            .collect();
        assert_eq!(super::waiting(&map), want, "{kinds:?}");
    }
}
