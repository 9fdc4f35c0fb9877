//! Validation of objects before they are written: names by the DNS rules each kind uses,
//! labels, and the fields Kubernetes requires per kind. Pure; returns every problem at
//! once as `Cause`s, which the caller turns into one 422 Invalid.

use serde_json::{Map, Value};

use crate::error::Cause;
use crate::kinds::Kind;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
/// ConfigMaps and Secrets hold at most this much data.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower)
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Which naming rule a kind's `metadata.name` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
}

pub fn name_rule(kind: &Kind) -> NameRule {
    match (kind.group, kind.kind) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        _ => NameRule::Subdomain,
    }
}

/// Check a name against a kind's rule; `None` when valid.
pub fn name_problem(kind: &Kind, field: &str, name: &str) -> Option<Cause> {
    let (ok, msg) = match name_rule(kind) {
        NameRule::Subdomain => (is_dns1123_subdomain(name), SUBDOMAIN_MSG),
        NameRule::Label => (is_dns1123_label(name), LABEL_MSG),
        NameRule::Dns1035 => (is_dns1035_label(name), DNS1035_MSG),
    };
    if ok {
        return None;
    }
    if name.len() > 253 || (name_rule(kind) != NameRule::Subdomain && name.len() > 63) {
        let max = if name_rule(kind) == NameRule::Subdomain {
            253
        } else {
            63
        };
        return Some(Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: \"{name}\": must be no more than {max} characters"),
        ));
    }
    Some(Cause::invalid(field, name, msg))
}

fn label_key_problems(field: &str, key: &str, out: &mut Vec<Cause>) {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns1123_subdomain(p) {
            out.push(Cause::invalid(field, key, "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"));
            return;
        }
    }
    if !is_qualified_name_part(name) {
        out.push(Cause::invalid(field, key, QUALIFIED_MSG));
    }
}

fn labels_problems(field: &str, labels: &Value, values_checked: bool, out: &mut Vec<Cause>) {
    let Some(map) = labels.as_object() else {
        return;
    };
    for (k, v) in map {
        label_key_problems(field, k, out);
        if values_checked {
            let v = v.as_str().unwrap_or("");
            if !(v.is_empty() || is_qualified_name_part(v)) {
                out.push(Cause::invalid(field, v, LABEL_VALUE_MSG));
            }
        }
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

fn nonempty_array(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

/// Every problem with `object` (already decoded through its type and defaulted).
pub fn validate(kind: &Kind, object: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let meta = object.get("metadata").cloned().unwrap_or(Value::Null);
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => out.push(Cause::new(
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required",
        )),
        Some(name) => out.extend(name_problem(kind, "metadata.name", name)),
    }
    if let Some(labels) = meta.get("labels") {
        labels_problems("metadata.labels", labels, true, &mut out);
    }
    if let Some(ann) = meta.get("annotations") {
        labels_problems("metadata.annotations", ann, false, &mut out);
        let size: usize = ann
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                    .sum()
            })
            .unwrap_or(0);
        if size > 256 * 1024 {
            out.push(Cause::new(
                "FieldValueTooLong",
                "metadata.annotations",
                "Too long: must have at most 262144 bytes",
            ));
        }
    }
    match (kind.group, kind.kind) {
        ("", "Pod") => pod_spec("spec", object.get("spec"), &mut out),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") => {
            workload(object, &mut out)
        }
        ("batch", "Job") => job_spec("spec", object.get("spec"), &mut out),
        ("batch", "CronJob") => {
            match get(object, &["spec", "schedule"]).and_then(Value::as_str) {
                None | Some("") => out.push(Cause::required("spec.schedule")),
                Some(s) if s.split_whitespace().count() != 5 && !s.starts_with('@') => {
                    out.push(Cause::invalid(
                        "spec.schedule",
                        s,
                        "unparseable schedule: expected exactly 5 fields",
                    ))
                }
                _ => {}
            }
            job_spec(
                "spec.jobTemplate.spec",
                get(object, &["spec", "jobTemplate", "spec"]),
                &mut out,
            );
        }
        ("", "Service") => service(object, &mut out),
        ("", "ConfigMap") => {
            data_keys(object, &["data", "binaryData"], &mut out);
        }
        ("", "Secret") => data_keys(object, &["data", "stringData"], &mut out),
        ("", "PersistentVolumeClaim") => {
            if !nonempty_array(get(object, &["spec", "accessModes"])) {
                out.push(Cause::new(
                    "FieldValueRequired",
                    "spec.accessModes",
                    "Required value: at least 1 access mode is required",
                ));
            }
            if get(object, &["spec", "resources", "requests", "storage"]).is_none() {
                out.push(Cause::required("spec.resources[storage]"));
            }
        }
        ("discovery.k8s.io", "EndpointSlice") if get(object, &["addressType"]).is_none() => {
            out.push(Cause::required("addressType"));
        }
        _ => {}
    }
    out
}

fn data_keys(object: &Value, fields: &[&str], out: &mut Vec<Cause>) {
    let mut total = 0;
    for f in fields {
        if let Some(map) = object.get(*f).and_then(Value::as_object) {
            for (k, v) in map {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !ok {
                    out.push(Cause::invalid(&format!("{f}[{k}]"), k, KEY_MSG));
                }
                total += k.len() + v.as_str().map_or(0, str::len);
            }
        }
    }
    if total > MAX_DATA_BYTES {
        out.push(Cause::new(
            "FieldValueTooLong",
            "",
            format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
        ));
    }
}

fn pod_spec(at: &str, spec: Option<&Value>, out: &mut Vec<Cause>) {
    let Some(spec) = spec.filter(|s| !s.is_null()) else {
        out.push(Cause::required(&format!("{at}.containers")));
        return;
    };
    if !nonempty_array(spec.get("containers")) {
        out.push(Cause::required(&format!("{at}.containers")));
    }
    let mut seen = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = format!("{at}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => out.push(Cause::required(&format!("{f}.name"))),
                Some(n) => {
                    if !is_dns1123_label(n) {
                        out.push(Cause::invalid(&format!("{f}.name"), n, LABEL_MSG));
                    } else if !seen.insert(n.to_string()) {
                        out.push(Cause::new(
                            "FieldValueDuplicate",
                            &format!("{f}.name"),
                            format!("Duplicate value: \"{n}\""),
                        ));
                    }
                }
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push(Cause::required(&format!("{f}.image")));
            }
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    out.push(Cause::invalid(
                        &format!("{f}.ports[{j}].containerPort"),
                        &port.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !matches!(rp, "Always" | "OnFailure" | "Never") {
            out.push(Cause::new(
                "FieldValueNotSupported",
                &format!("{at}.restartPolicy"),
                format!("Unsupported value: \"{rp}\": supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
    }
}

/// Whether metav1.LabelSelector `selector` (matchLabels only; expressions count as matching)
/// selects `labels`.
fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}

fn workload(object: &Value, out: &mut Vec<Cause>) {
    let selector = get(object, &["spec", "selector"]);
    let empty = selector.is_none_or(|s| {
        s.get("matchLabels")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
            && !nonempty_array(s.get("matchExpressions"))
    });
    if empty {
        out.push(Cause::required("spec.selector"));
    }
    if let Some(r) = get(object, &["spec", "replicas"]).and_then(Value::as_i64) {
        if r < 0 {
            out.push(Cause::invalid(
                "spec.replicas",
                &r.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let labels = get(object, &["spec", "template", "metadata", "labels"])
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let (Some(sel), false) = (selector, empty) {
        if !selector_matches(sel, &labels) {
            out.push(Cause::invalid(
                "spec.template.metadata.labels",
                &serde_json::to_string(&labels).unwrap_or_default(),
                "`selector` does not match template `labels`",
            ));
        }
    }
    pod_spec(
        "spec.template.spec",
        get(object, &["spec", "template", "spec"]),
        out,
    );
    if object.get("kind").and_then(Value::as_str) != Some("Job") {
        if let Some(rp) =
            get(object, &["spec", "template", "spec", "restartPolicy"]).and_then(Value::as_str)
        {
            if rp != "Always" {
                out.push(Cause::new(
                    "FieldValueNotSupported",
                    "spec.template.spec.restartPolicy",
                    format!("Unsupported value: \"{rp}\": supported values: \"Always\""),
                ));
            }
        }
    }
}

fn job_spec(at: &str, spec: Option<&Value>, out: &mut Vec<Cause>) {
    let template_spec = spec.and_then(|s| get(s, &["template", "spec"]));
    pod_spec(&format!("{at}.template.spec"), template_spec, out);
    match template_spec
        .and_then(|s| s.get("restartPolicy"))
        .and_then(Value::as_str)
    {
        Some("OnFailure" | "Never") => {}
        _ => out.push(Cause::new(
            "FieldValueRequired",
            &format!("{at}.template.spec.restartPolicy"),
            "Required value: valid values: \"OnFailure\", \"Never\"",
        )),
    }
    for f in ["parallelism", "completions", "backoffLimit"] {
        if let Some(n) = spec.and_then(|s| s.get(f)).and_then(Value::as_i64) {
            if n < 0 {
                out.push(Cause::invalid(
                    &format!("{at}.{f}"),
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
}

fn service(object: &Value, out: &mut Vec<Cause>) {
    let headless = get(object, &["spec", "clusterIP"]).and_then(Value::as_str) == Some("None");
    let typ = get(object, &["spec", "type"])
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let ports = get(object, &["spec", "ports"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && !headless && typ != "ExternalName" {
        out.push(Cause::required("spec.ports"));
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            out.push(Cause::invalid(
                &format!("spec.ports[{i}].port"),
                &port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            out.push(Cause::required(&format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && !names.insert(name.to_string()) {
            out.push(Cause::new(
                "FieldValueDuplicate",
                &format!("spec.ports[{i}].name"),
                format!("Duplicate value: \"{name}\""),
            ));
        }
    }
    if !matches!(
        typ,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        out.push(Cause::new(
            "FieldValueNotSupported",
            "spec.type",
            format!("Unsupported value: \"{typ}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_kind;
    use serde_json::json;

    fn causes(api_version: &str, kind: &str, obj: Value) -> Vec<String> {
        validate(by_kind(api_version, kind).unwrap(), &obj)
            .into_iter()
            .map(|c| format!("{} {}", c.field, c.reason))
            .collect()
    }

    #[test]
    fn names_follow_each_kinds_rule() {
        let cm = by_kind("v1", "ConfigMap").unwrap();
        let ns = by_kind("v1", "Namespace").unwrap();
        let svc = by_kind("v1", "Service").unwrap();
        let cases = [
            (cm, "a.b-c", true),
            (cm, "Bad_Name", false),
            (cm, "-a", false),
            (cm, "a.", false),
            (ns, "a.b", false),
            (ns, "kube-system", true),
            (svc, "1abc", false),
            (svc, "abc-1", true),
        ];
        for (k, name, ok) in cases {
            assert_eq!(
                name_problem(k, "metadata.name", name).is_none(),
                ok,
                "{k:?} {name}"
            );
        }
        let long = "a".repeat(254);
        let c = name_problem(cm, "metadata.name", &long).unwrap();
        assert!(c.message.contains("no more than 253"), "{}", c.message);
    }

    #[test]
    fn required_fields_per_kind() {
        let table: Vec<(&str, &str, Value, Vec<&str>)> = vec![
            (
                "v1",
                "Pod",
                json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
                vec!["spec.containers FieldValueRequired"],
            ),
            (
                "v1",
                "Pod",
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "a"}]}}),
                vec![
                    "spec.containers[1].name FieldValueDuplicate",
                    "spec.containers[1].image FieldValueRequired",
                ],
            ),
            (
                "apps/v1",
                "Deployment",
                json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
                    "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
                vec!["spec.template.metadata.labels FieldValueInvalid"],
            ),
            (
                "batch/v1",
                "Job",
                json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Always"}}}}),
                vec!["spec.template.spec.restartPolicy FieldValueRequired"],
            ),
            (
                "v1",
                "Service",
                json!({"metadata": {"name": "s"}, "spec": {}}),
                vec!["spec.ports FieldValueRequired"],
            ),
            (
                "v1",
                "ConfigMap",
                json!({"metadata": {"name": "c"}, "data": {"bad key": "v"}}),
                vec!["data[bad key] FieldValueInvalid"],
            ),
            (
                "v1",
                "ConfigMap",
                json!({"metadata": {"name": "c", "labels": {"app": "ok"}}, "data": {"k": "v"}}),
                vec![],
            ),
            (
                "v1",
                "ConfigMap",
                json!({"metadata": {"labels": {"-x": "ok"}}}),
                vec![
                    "metadata.name FieldValueRequired",
                    "metadata.labels FieldValueInvalid",
                ],
            ),
        ];
        for (av, k, obj, want) in table {
            assert_eq!(causes(av, k, obj.clone()), want, "{k} {obj}");
        }
    }

    #[test]
    fn oversized_configmap_data_is_too_long() {
        let big = "x".repeat(MAX_DATA_BYTES + 1);
        let c = causes(
            "v1",
            "ConfigMap",
            json!({"metadata": {"name": "c"}, "data": {"k": big}}),
        );
        assert_eq!(c, [" FieldValueTooLong"]);
    }
}
