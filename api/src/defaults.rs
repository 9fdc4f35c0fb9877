//! Defaulting: the values kube-apiserver fills in when a client leaves them out, so that
//! objects read back (and `kubectl diff`) look the way Kubernetes users expect, and
//! controllers can rely on them. Pure; applied after decoding and before validation.

use serde_json::{json, Map, Value};

use crate::kinds::Kind;

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

fn child<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Value {
    let v = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if v.is_null() {
        *v = json!({});
    }
    v
}

/// Fill in defaults for `object` of `kind`.
pub fn apply(kind: &Kind, object: &mut Value) {
    let Some(root) = obj(object) else { return };
    match (kind.group, kind.kind) {
        ("", "Pod") => {
            if let Some(spec) = obj(child(root, "spec")) {
                pod_spec(spec);
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = obj(child(root, "spec")) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                if let Some(strategy) = obj(child(spec, "strategy")) {
                    set_default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        if let Some(ru) = obj(child(strategy, "rollingUpdate")) {
                            set_default(ru, "maxSurge", json!("25%"));
                            set_default(ru, "maxUnavailable", json!("25%"));
                        }
                    }
                }
                template(spec, "Always");
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = obj(child(root, "spec")) {
                set_default(spec, "replicas", json!(1));
                template(spec, "Always");
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = obj(child(root, "spec")) {
                set_default(spec, "revisionHistoryLimit", json!(10));
                if let Some(strategy) = obj(child(spec, "updateStrategy")) {
                    set_default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        if let Some(ru) = obj(child(strategy, "rollingUpdate")) {
                            set_default(ru, "maxUnavailable", json!(1));
                            set_default(ru, "maxSurge", json!(0));
                        }
                    }
                }
                template(spec, "Always");
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = obj(child(root, "spec")) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(spec, "revisionHistoryLimit", json!(10));
                if let Some(strategy) = obj(child(spec, "updateStrategy")) {
                    set_default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        if let Some(ru) = obj(child(strategy, "rollingUpdate")) {
                            set_default(ru, "partition", json!(0));
                        }
                    }
                }
                template(spec, "Always");
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = obj(child(root, "spec")) {
                job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = obj(child(root, "spec")) {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(jt) = obj(child(spec, "jobTemplate")) {
                    if let Some(js) = obj(child(jt, "spec")) {
                        job_spec(js);
                    }
                }
            }
        }
        ("", "Service") => {
            if let Some(spec) = obj(child(root, "spec")) {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
                    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                    set_default(spec, "ipFamilies", json!(["IPv4"]));
                    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                }
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
        }
        ("", "Secret") => {
            set_default(root, "type", json!("Opaque"));
            // stringData is write-only: it is merged into data (base64) and never stored.
            if let Some(Value::Object(sd)) = root.remove("stringData") {
                use base64::Engine;
                let data = child(root, "data");
                if let Some(data) = data.as_object_mut() {
                    for (k, v) in sd {
                        let s = v.as_str().unwrap_or_default();
                        data.insert(
                            k,
                            json!(base64::engine::general_purpose::STANDARD.encode(s)),
                        );
                    }
                }
            }
        }
        ("", "Namespace") => {
            if let Some(spec) = obj(child(root, "spec")) {
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
            if let Some(status) = obj(child(root, "status")) {
                set_default(status, "phase", json!("Active"));
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = obj(child(root, "spec")) {
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        _ => {}
    }
}

fn template(spec: &mut Map<String, Value>, restart: &str) {
    if let Some(t) = obj(child(spec, "template")) {
        if let Some(ps) = obj(child(t, "spec")) {
            set_default(ps, "restartPolicy", json!(restart));
            pod_spec(ps);
        }
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    if spec.get("completions").is_none_or(Value::is_null) {
        spec.insert("completions".into(), json!(1));
    }
    if let Some(t) = obj(child(spec, "template")) {
        if let Some(ps) = obj(child(t, "spec")) {
            pod_spec(ps);
        }
    }
}

/// Defaults of a PodSpec, shared by pods and every workload template.
pub fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                set_default(c, "imagePullPolicy", json!(pull_policy(image)));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`, as Kubernetes defaults.
pub fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_kind;

    #[test]
    fn pull_policy_follows_the_tag() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.25", "IfNotPresent"),
            ("localhost:5000/app", "Always"),
            ("localhost:5000/app:v1", "IfNotPresent"),
            ("app@sha256:abc", "IfNotPresent"),
        ] {
            assert_eq!(pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn deployment_defaults_match_kubernetes() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]}}}});
        apply(by_kind("apps/v1", "Deployment").unwrap(), &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn explicit_values_are_kept_and_secret_string_data_folds_into_data() {
        let mut s = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "stringData": {"k": "v"}, "data": {"a": "Yg=="}});
        apply(by_kind("v1", "Secret").unwrap(), &mut s);
        assert_eq!(s["type"], "kubernetes.io/tls");
        assert_eq!(s["data"]["k"], "dg==");
        assert_eq!(s["data"]["a"], "Yg==");
        assert!(s.get("stringData").is_none());
        let mut svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        apply(by_kind("v1", "Service").unwrap(), &mut svc);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
    }
}
