//! The container environment as the kubelet builds it: `envFrom` sources, then `env` in
//! order, each value `$(VAR)`-expanded against what came before; `valueFrom` resolved from
//! the ConfigMap/Secret data the caller fetched and from the pod itself (downward API).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use super::{quantity, ContainerInput, SpecError};

/// Kubernetes `$(VAR)` expansion (k8s.io/kubernetes third_party/forked/golang/expansion):
/// `$$` is an escaped `$`, `$(NAME)` is replaced when `lookup` knows NAME and left as is
/// otherwise, an unclosed `$(` and any other `$x` stay literally.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.extend_from_slice(&bytes[checkpoint..cursor]);
            let rest = &bytes[cursor + 1..];
            let advance = match rest[0] {
                b'$' => {
                    out.push(b'$');
                    1
                }
                b'(' => match rest.iter().position(|&b| b == b')') {
                    Some(close) => {
                        let name = &input[cursor + 2..cursor + 1 + close];
                        match lookup(name) {
                            Some(v) => out.extend_from_slice(v.as_bytes()),
                            None => out.extend_from_slice(format!("$({name})").as_bytes()),
                        }
                        close + 1
                    }
                    None => {
                        out.extend_from_slice(b"$(");
                        1
                    }
                },
                other => {
                    out.push(b'$');
                    out.push(other);
                    1
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.extend_from_slice(&bytes[checkpoint.min(bytes.len())..]);
    // Only ASCII positions were cut, so the bytes are still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// An ordered environment: a later definition of a name replaces the value in place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Env(Vec<(String, String)>);

impl Env {
    pub fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// `NAME=value` strings for the OCI process.
    pub fn to_oci(&self) -> Vec<String> {
        self.0.iter().map(|(n, v)| format!("{n}={v}")).collect()
    }

    /// Parses the image's `NAME=value` list (entries without `=` are dropped, as containerd does).
    pub fn from_image(entries: &[String]) -> Env {
        let mut env = Env::default();
        for e in entries {
            if let Some((n, v)) = e.split_once('=') {
                env.set(n, v.to_string());
            }
        }
        env
    }

    pub fn merge(&mut self, other: &Env) {
        for (n, v) in &other.0 {
            self.set(n, v.clone());
        }
    }
}

/// The container's own variables (envFrom, then env), without the image's.
pub fn container_env(input: &ContainerInput) -> Result<Env, SpecError> {
    let c = input.container;
    let mut env = Env::default();
    for source in c.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(cm) = &source.config_map_ref {
            (
                "configmap",
                &cm.name,
                cm.optional,
                input.config_maps.get(&cm.name),
            )
        } else if let Some(s) = &source.secret_ref {
            ("secret", &s.name, s.optional, input.secrets.get(&s.name))
        } else {
            return Err(SpecError::Invalid("envFrom entry names no source".into()));
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    // The kubelet skips keys that are not valid variable names.
                    let full = format!("{prefix}{k}");
                    if is_env_name(&full) {
                        env.set(&full, v.clone());
                    }
                }
            }
            None if optional == Some(true) => {}
            None => return Err(SpecError::MissingSource(format!("{kind} {name:?}"))),
        }
    }
    for var in c.env.iter().flatten() {
        if let Some(value) = env_value(input, var, &env)? {
            env.set(&var.name, value);
        }
    }
    Ok(env)
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// One `env` entry's value; `None` when an optional reference is missing (the variable
/// is then not set at all).
fn env_value(
    input: &ContainerInput,
    var: &EnvVar,
    so_far: &Env,
) -> Result<Option<String>, SpecError> {
    let Some(from) = &var.value_from else {
        let raw = var.value.clone().unwrap_or_default();
        return Ok(Some(expand(&raw, &|n| so_far.get(n))));
    };
    if let Some(r) = &from.config_map_key_ref {
        return lookup_key(input.config_maps, "configmap", &r.name, &r.key, r.optional);
    }
    if let Some(r) = &from.secret_key_ref {
        return lookup_key(input.secrets, "secret", &r.name, &r.key, r.optional);
    }
    if let Some(f) = &from.field_ref {
        return field_ref(input.pod, &f.field_path).map(Some);
    }
    if let Some(r) = &from.resource_field_ref {
        let target = match &r.container_name {
            Some(name) if !name.is_empty() => input
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| &c.name == name))
                .ok_or_else(|| {
                    SpecError::Invalid(format!("resourceFieldRef names unknown container {name:?}"))
                })?,
            _ => input.container,
        };
        let divisor = r.divisor.as_ref().map(|q| q.0.as_str());
        return resource_field(target, &r.resource, divisor, input).map(Some);
    }
    Err(SpecError::Invalid(format!(
        "env {:?}: valueFrom names no source",
        var.name
    )))
}

fn lookup_key(
    maps: &BTreeMap<String, BTreeMap<String, String>>,
    kind: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, SpecError> {
    match maps.get(name).and_then(|m| m.get(key)) {
        Some(v) => Ok(Some(v.clone())),
        None if optional == Some(true) => Ok(None),
        None => Err(SpecError::MissingSource(format!(
            "key {key:?} in {kind} {name:?}"
        ))),
    }
}

/// Downward API `fieldRef` paths the kubelet supports for env.
pub fn field_ref(pod: &Pod, path: &str) -> Result<String, SpecError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let indexed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|i| i.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        "status.hostIPs" => status
            .and_then(|s| s.host_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|i| i.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        _ => {
            if let Some(v) = indexed("metadata.labels['", &meta.labels) {
                v
            } else if let Some(v) = indexed("metadata.annotations['", &meta.annotations) {
                v
            } else {
                return Err(SpecError::Invalid(format!("unsupported fieldRef {path:?}")));
            }
        }
    };
    Ok(value)
}

/// Downward API `resourceFieldRef`: a limit falls back to the node's allocatable amount
/// (what the container can really use), a request to 0, as the kubelet does.
fn resource_field(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    input: &ContainerInput,
) -> Result<String, SpecError> {
    let res = c.resources.as_ref();
    let get = |which: &str, name: &str| -> Option<String> {
        let map = match which {
            "limits" => res.and_then(|r| r.limits.as_ref()),
            _ => res.and_then(|r| r.requests.as_ref()),
        };
        map.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let (which, name) = resource
        .split_once('.')
        .ok_or_else(|| SpecError::Invalid(format!("unsupported resourceFieldRef {resource:?}")))?;
    if !matches!(which, "limits" | "requests") {
        return Err(SpecError::Invalid(format!(
            "unsupported resourceFieldRef {resource:?}"
        )));
    }
    let value = match name {
        "cpu" => {
            let milli = match get(which, "cpu") {
                Some(q) => quantity::milli_cpu(&q)?,
                None if which == "limits" => input.node.cpu_millis,
                None => 0,
            };
            quantity::divide_ceil(milli, divisor.unwrap_or("1"), 1000)?
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match get(which, name) {
                Some(q) => quantity::bytes(&q)?,
                None if which == "limits" && name == "memory" => input.node.memory_bytes,
                None if which == "limits" => input.node.ephemeral_storage_bytes,
                None => 0,
            };
            quantity::divide_ceil(bytes, divisor.unwrap_or("1"), 1)?
        }
        _ => {
            return Err(SpecError::Invalid(format!(
                "unsupported resourceFieldRef {resource:?}"
            )))
        }
    };
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_like_kubernetes() {
        let vars: BTreeMap<&str, &str> = [("VAR_A", "A"), ("VAR_B", "B"), ("EMPTY", "")].into();
        let lookup = |n: &str| vars.get(n).map(|v| v.to_string());
        let cases = [
            ("$(VAR_A)", "A"),
            ("___$(VAR_A)___", "___A___"),
            ("$(VAR_A)-$(VAR_B)", "A-B"),
            ("$(EMPTY)x", "x"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("$(VAR_A", "$(VAR_A"),
            ("$VAR_A", "$VAR_A"),
            ("trailing $", "trailing $"),
            ("$()", "$()"),
            ("héllo $(VAR_B) wörld", "héllo B wörld"),
            ("$é", "$é"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &lookup), want, "input {input:?}");
        }
    }

    #[test]
    fn env_order_and_override() {
        let mut env = Env::from_image(&["PATH=/bin".into(), "A=image".into(), "junk".into()]);
        let mut mine = Env::default();
        mine.set("B", "1".into());
        mine.set("A", "pod".into());
        env.merge(&mine);
        assert_eq!(env.to_oci(), ["PATH=/bin", "A=pod", "B=1"]);
    }
}
