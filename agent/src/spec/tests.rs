//! Tables for `spec::build`: each case is a pod/container in YAML-like JSON and what the
//! spec must (or must not) contain.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::*;

struct Fixture {
    pod: Pod,
    container: Container,
    image: ImageDefaults,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    volumes: BTreeMap<String, PathBuf>,
}

fn fixture(pod_spec_extra: Value, container: Value) -> Fixture {
    let mut spec =
        json!({"nodeName": "box-1", "serviceAccountName": "sa", "containers": [container.clone()]});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), pod_spec_extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1",
                     "labels": {"app": "web"}, "annotations": {"team": "blue"}},
        "spec": spec,
        "status": {"podIP": "10.1.0.5", "hostIP": "192.168.1.2"},
    }))
    .unwrap();
    Fixture {
        pod,
        container: serde_json::from_value(container).unwrap(),
        image: ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "MODE=image".into()],
            working_dir: Some("/app".into()),
            user: None,
        },
        config_maps: [(
            "cfg".to_string(),
            [
                ("color".to_string(), "red".to_string()),
                ("size".to_string(), "L".to_string()),
            ]
            .into(),
        )]
        .into(),
        secrets: [(
            "creds".to_string(),
            [("password".to_string(), "s3cret".to_string())].into(),
        )]
        .into(),
        volumes: [
            (
                "data".to_string(),
                PathBuf::from("/var/lib/kith/pods/u-1/volumes/data"),
            ),
            (
                "cfgvol".to_string(),
                PathBuf::from("/var/lib/kith/pods/u-1/volumes/cfgvol"),
            ),
        ]
        .into(),
    }
}

/// A profile directory with nothing in it.
struct NoProfiles;

impl LocalhostProfiles for NoProfiles {
    fn read(&self, _: &std::path::Path) -> Result<Vec<u8>, String> {
        Err("No such file or directory (os error 2)".into())
    }
}

fn run(f: &Fixture) -> Result<Value, SpecError> {
    let input = ContainerInput {
        pod: &f.pod,
        container: &f.container,
        image: &f.image,
        config_maps: &f.config_maps,
        secrets: &f.secrets,
        node: NodeAllocatable {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            ephemeral_storage_bytes: 100 << 30,
        },
        rootfs: PathBuf::from("/state/rootfs"),
        volumes: &f.volumes,
        netns: Some(PathBuf::from("/run/netns/kith-u-1")),
        cgroups_path: "/kith/u-1/app".into(),
        hostname: "web-0".into(),
        hosts_file: Some(PathBuf::from("/state/pod/hosts")),
        resolv_conf: Some(PathBuf::from("/state/pod/resolv.conf")),
        pids_limit: Some(1024),
        seccomp: SeccompInput {
            default_runtime_default: false,
            profiles: &NoProfiles,
        },
    };
    build(&input).map(|s| serde_json::to_value(s).unwrap())
}

fn c(extra: Value) -> Value {
    let mut base = json!({"name": "app", "image": "web:1"});
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

#[test]
fn command_and_args() {
    let cases = [
        (json!({}), json!(["/entry", "serve", "--port=80"])),
        (json!({"args": ["x", "y"]}), json!(["/entry", "x", "y"])),
        (json!({"command": ["/bin/sh"]}), json!(["/bin/sh"])),
        (
            json!({"command": ["/bin/sh"], "args": ["-c", "echo hi"]}),
            json!(["/bin/sh", "-c", "echo hi"]),
        ),
        (
            json!({"command": [], "args": []}),
            json!(["/entry", "serve", "--port=80"]),
        ),
        (
            json!({"command": ["echo", "$(GREETING)", "$$(GREETING)", "$(NOPE)"], "env": [{"name": "GREETING", "value": "hello"}]}),
            json!(["echo", "hello", "$(GREETING)", "$(NOPE)"]),
        ),
        // Image env is not visible to $(VAR) expansion, as in the kubelet.
        (json!({"args": ["$(MODE)"]}), json!(["/entry", "$(MODE)"])),
    ];
    for (container, want) in cases {
        let f = fixture(json!({}), c(container.clone()));
        let spec = run(&f).unwrap();
        assert_eq!(spec["process"]["args"], want, "container {container}");
    }
}

#[test]
fn no_command_is_an_error() {
    let mut f = fixture(json!({}), c(json!({})));
    f.image.entrypoint.clear();
    f.image.cmd.clear();
    assert_eq!(run(&f).unwrap_err(), SpecError::NoCommand);
    f.image.cmd = vec!["/bin/true".into()];
    assert_eq!(run(&f).unwrap()["process"]["args"], json!(["/bin/true"]));
}

#[test]
fn env_order_expansion_and_sources() {
    let container = c(json!({
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
        "env": [
            {"name": "MODE", "value": "pod"},
            {"name": "A", "value": "a"},
            {"name": "B", "value": "$(A)-$(CFG_color)-$(LATER)"},
            {"name": "LATER", "value": "l"},
            {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "CPUREQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        ],
        "resources": {"requests": {"cpu": "250m"}},
    }));
    let f = fixture(json!({}), container);
    let spec = run(&f).unwrap();
    let want = json!([
        "PATH=/usr/bin:/bin",
        "MODE=pod",
        "CFG_color=red",
        "CFG_size=L",
        "password=s3cret",
        "A=a",
        "B=a-red-$(LATER)",
        "LATER=l",
        "COLOR=red",
        "PW=s3cret",
        "POD=web-0",
        "NS=shop",
        "UID=u-1",
        "APP=web",
        "TEAM=blue",
        "NODE=box-1",
        "SA=sa",
        "IP=10.1.0.5",
        "HOST=192.168.1.2",
        "MEM=8192",
        "CPU=4",
        "CPUREQ=250",
    ]);
    assert_eq!(spec["process"]["env"], want);
}

#[test]
fn errors() {
    let cases = [
        (
            json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "missing"}}}]}),
            "missing key \"missing\" in configmap \"cfg\"",
        ),
        (
            json!({"envFrom": [{"configMapRef": {"name": "absent"}}]}),
            "missing configmap \"absent\"",
        ),
        (
            json!({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]}),
            "unsupported fieldRef \"spec.bogus\"",
        ),
        (
            json!({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
            "volume \"nope\" is mounted but the pod has no such prepared volume",
        ),
        (
            json!({"volumeMounts": [{"name": "data", "mountPath": "/x", "subPath": "../etc"}]}),
            "volume \"data\": subPath \"../etc\" must be a relative path without '..'",
        ),
        (
            json!({"volumeMounts": [{"name": "data", "mountPath": "/x", "subPath": "/etc"}]}),
            "volume \"data\": subPath \"/etc\" must be a relative path without '..'",
        ),
        (
            json!({"securityContext": {"capabilities": {"add": ["WIZARDRY"]}}}),
            "unknown capability \"WIZARDRY\"",
        ),
        (
            json!({"securityContext": {"runAsNonRoot": true}}),
            "container has runAsNonRoot and image will run as root",
        ),
        (
            json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0}}),
            "container has runAsNonRoot and image will run as root",
        ),
        (
            json!({"resources": {"limits": {"memory": "lots"}}}),
            "invalid quantity \"lots\"",
        ),
        (
            json!({"workingDir": "relative"}),
            "workingDir \"relative\" is not absolute",
        ),
    ];
    for (container, want) in cases {
        let f = fixture(json!({}), c(container.clone()));
        assert_eq!(
            run(&f).unwrap_err().to_string(),
            want,
            "container {container}"
        );
    }
    let mut f = fixture(
        json!({}),
        c(json!({"securityContext": {"runAsNonRoot": true}})),
    );
    f.image.user = Some("nginx".into());
    assert_eq!(
        run(&f).unwrap_err().to_string(),
        "image has non-numeric user \"nginx\", cannot verify user is non-root"
    );
}

#[test]
fn users_and_groups() {
    // (pod securityContext, container securityContext, image user) → (uid, gid, additional)
    let cases = [
        (json!({}), json!({}), None, json!({"uid": 0, "gid": 0})),
        (
            json!({}),
            json!({}),
            Some("1000:2000"),
            json!({"uid": 1000, "gid": 2000}),
        ),
        (
            json!({}),
            json!({}),
            Some("1000"),
            json!({"uid": 1000, "gid": 0}),
        ),
        (
            json!({"runAsUser": 5, "runAsGroup": 6}),
            json!({}),
            Some("1000:2000"),
            json!({"uid": 5, "gid": 6}),
        ),
        (
            json!({"runAsUser": 5}),
            json!({"runAsUser": 7}),
            None,
            json!({"uid": 7, "gid": 0}),
        ),
        (
            json!({"runAsNonRoot": true}),
            json!({}),
            Some("1000"),
            json!({"uid": 1000, "gid": 0}),
        ),
        (
            json!({"runAsNonRoot": true}),
            json!({"runAsUser": 9}),
            Some("app"),
            json!({"uid": 9, "gid": 0}),
        ),
        (
            json!({"supplementalGroups": [30, 10], "fsGroup": 20}),
            json!({"runAsUser": 1}),
            None,
            json!({"uid": 1, "gid": 0, "additionalGids": [10, 20, 30]}),
        ),
    ];
    for (psc, csc, image_user, want) in cases {
        let mut f = fixture(
            json!({"securityContext": psc}),
            c(json!({"securityContext": csc})),
        );
        f.image.user = image_user.map(String::from);
        let spec = run(&f).unwrap();
        assert_eq!(
            spec["process"]["user"], want,
            "pod {psc} container {csc} image {image_user:?}"
        );
    }
}

fn caps_of(spec: &Value) -> Vec<String> {
    let mut v: Vec<String> =
        serde_json::from_value(spec["process"]["capabilities"]["bounding"].clone()).unwrap();
    v.sort();
    v
}

#[test]
fn capabilities_and_privileges() {
    let default: Vec<String> = {
        let mut v: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let f = fixture(json!({}), c(json!({})));
    let spec = run(&f).unwrap();
    assert_eq!(caps_of(&spec), default);
    // Absent rather than false: see `build` (libcontainer's seccomp ordering).
    assert!(spec["process"].get("noNewPrivileges").is_none());
    assert_eq!(spec["root"]["readonly"], json!(false));
    assert_eq!(spec["linux"]["maskedPaths"], json!(MASKED_PATHS));
    assert_eq!(spec["linux"]["readonlyPaths"], json!(READONLY_PATHS));

    let cases: [(Value, Vec<&str>); 4] = [
        (
            json!({"add": ["NET_ADMIN"], "drop": ["KILL", "cap_chown"]}),
            {
                let mut v: Vec<&str> = DEFAULT_CAPABILITIES
                    .iter()
                    .copied()
                    .filter(|c| *c != "CAP_KILL" && *c != "CAP_CHOWN")
                    .collect();
                v.push("CAP_NET_ADMIN");
                v
            },
        ),
        (
            json!({"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}),
            vec!["CAP_NET_BIND_SERVICE"],
        ),
        (json!({"drop": ["ALL"]}), vec![]),
        (
            json!({"add": ["ALL"], "drop": ["SYS_ADMIN"]}),
            ALL_CAPABILITIES
                .iter()
                .copied()
                .filter(|c| *c != "CAP_SYS_ADMIN")
                .collect(),
        ),
    ];
    for (caps, mut want) in cases {
        want.sort();
        let f = fixture(
            json!({}),
            c(json!({"securityContext": {"capabilities": caps}})),
        );
        assert_eq!(caps_of(&run(&f).unwrap()), want, "caps {caps}");
    }

    let f = fixture(
        json!({}),
        c(
            json!({"securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true}}),
        ),
    );
    let spec = run(&f).unwrap();
    assert_eq!(spec["process"]["noNewPrivileges"], json!(true));
    assert_eq!(spec["root"]["readonly"], json!(true));

    let f = fixture(
        json!({}),
        c(json!({"securityContext": {"privileged": true, "allowPrivilegeEscalation": false}})),
    );
    let spec = run(&f).unwrap();
    assert_eq!(caps_of(&spec).len(), ALL_CAPABILITIES.len());
    assert!(spec["process"].get("noNewPrivileges").is_none());
    assert!(spec["linux"]
        .get("maskedPaths")
        .is_none_or(|m| m.as_array().is_none_or(|a| a.is_empty())));
    let sys = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/sys")
        .unwrap();
    assert!(!sys["options"].as_array().unwrap().contains(&json!("ro")));
}

#[test]
fn resources_like_the_kubelet() {
    // (resources, pids) → linux.resources cpu/memory
    let cases = [
        (json!({}), json!({"shares": 2}), Value::Null),
        (
            json!({"requests": {"cpu": "250m"}}),
            json!({"shares": 256}),
            Value::Null,
        ),
        (
            json!({"requests": {"cpu": "1m"}}),
            json!({"shares": 2}),
            Value::Null,
        ),
        (
            json!({"limits": {"cpu": "500m", "memory": "64Mi"}}),
            json!({"shares": 512, "quota": 50000, "period": 100000}),
            json!({"limit": 67108864}),
        ),
        (
            json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "2"}}),
            json!({"shares": 102, "quota": 200000, "period": 100000}),
            Value::Null,
        ),
        (
            json!({"limits": {"cpu": "5m"}}),
            json!({"shares": 5, "quota": 1000, "period": 100000}),
            Value::Null,
        ),
    ];
    for (resources, cpu, memory) in cases {
        let f = fixture(json!({}), c(json!({"resources": resources})));
        let spec = run(&f).unwrap();
        let res = &spec["linux"]["resources"];
        assert_eq!(res["cpu"], cpu, "resources {resources}");
        assert_eq!(
            res.get("memory").cloned().unwrap_or(Value::Null),
            memory,
            "resources {resources}"
        );
        assert_eq!(res["pids"], json!({"limit": 1024}));
    }
}

#[test]
fn mounts_namespaces_and_host_files() {
    let container = c(json!({
        "env": [{"name": "SUB", "value": "logs"}],
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "data", "mountPath": "/ro", "readOnly": true, "subPath": "a/b"},
            {"name": "data", "mountPath": "/expr", "subPathExpr": "$(SUB)/$(POD)"},
            {"name": "cfgvol", "mountPath": "/etc/resolv.conf", "subPath": "resolv.conf"},
            {"name": "data", "mountPath": "/shared", "mountPropagation": "HostToContainer"},
        ],
    }));
    let f = fixture(json!({}), container);
    let spec = run(&f).unwrap();
    let mounts = spec["mounts"].as_array().unwrap();
    let dests: Vec<&str> = mounts
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/data",
            "/ro",
            "/expr",
            "/etc/resolv.conf",
            "/shared",
            "/etc/hosts"
        ]
    );
    let by_dest = |d: &str| {
        mounts
            .iter()
            .find(|m| m["destination"] == d)
            .unwrap()
            .clone()
    };
    let vol = "/var/lib/kith/pods/u-1/volumes";
    assert_eq!(by_dest("/data")["source"], json!(format!("{vol}/data")));
    assert_eq!(
        by_dest("/data")["options"],
        json!(["rbind", "rprivate", "rw"])
    );
    assert_eq!(by_dest("/ro")["source"], json!(format!("{vol}/data/a/b")));
    assert_eq!(
        by_dest("/ro")["options"],
        json!(["rbind", "rprivate", "ro"])
    );
    // POD is not defined, so it stays literally (as the kubelet would leave it).
    assert_eq!(
        by_dest("/expr")["source"],
        json!(format!("{vol}/data/logs/$(POD)"))
    );
    assert_eq!(
        by_dest("/etc/resolv.conf")["source"],
        json!(format!("{vol}/cfgvol/resolv.conf"))
    );
    assert_eq!(
        by_dest("/shared")["options"],
        json!(["rbind", "rslave", "rw"])
    );
    assert_eq!(by_dest("/etc/hosts")["source"], json!("/state/pod/hosts"));

    let ns: Vec<Value> = spec["linux"]["namespaces"].as_array().unwrap().clone();
    assert_eq!(
        ns,
        [
            json!({"type": "pid"}),
            json!({"type": "ipc"}),
            json!({"type": "uts"}),
            json!({"type": "mount"}),
            json!({"type": "network", "path": "/run/netns/kith-u-1"})
        ]
    );
    assert_eq!(spec["linux"]["cgroupsPath"], json!("/kith/u-1/app"));
    assert_eq!(spec["hostname"], json!("web-0"));
    assert_eq!(spec["process"]["cwd"], json!("/app"));
    assert_eq!(spec["root"]["path"], json!("/state/rootfs"));
}

#[test]
fn seccomp_profile_in_the_spec() {
    // (container securityContext, what linux.seccomp must be)
    let cases = [
        (json!({}), None),
        (json!({"seccompProfile": {"type": "Unconfined"}}), None),
        (
            json!({"seccompProfile": {"type": "RuntimeDefault"}}),
            Some("SCMP_ACT_ERRNO"),
        ),
        (
            json!({"seccompProfile": {"type": "RuntimeDefault"}, "privileged": true}),
            None,
        ),
    ];
    for (sc, want) in cases {
        let f = fixture(json!({}), c(json!({"securityContext": sc.clone()})));
        let spec = run(&f).unwrap();
        let got = spec["linux"]
            .get("seccomp")
            .map(|s| s["defaultAction"].as_str().unwrap().to_string());
        assert_eq!(got.as_deref(), want, "securityContext {sc}");
    }

    // The filter follows the effective capabilities: CAP_SYS_ADMIN opens mount.
    let f = fixture(
        json!({}),
        c(
            json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"},
                                     "capabilities": {"add": ["SYS_ADMIN"]}}}),
        ),
    );
    let spec = run(&f).unwrap();
    let allows_mount = spec["linux"]["seccomp"]["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r["names"].as_array().unwrap().contains(&json!("mount"))
        });
    assert!(allows_mount);

    // A profile that cannot be had is the container's error, not a silent unconfined run.
    let f = fixture(
        json!({}),
        c(
            json!({"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "gone.json"}}}),
        ),
    );
    assert!(matches!(
        run(&f).unwrap_err(),
        SpecError::Seccomp(SeccompError::Read { .. })
    ));
}
