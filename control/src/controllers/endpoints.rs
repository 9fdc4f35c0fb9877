//! Endpoints and EndpointSlices: for every Service with a selector, the pods it selects,
//! split into ready and not ready, with each service port resolved to the pod's port.
//!
//! ```text
//!  Service ─┐                                   ┌─▶ Endpoints <svc>       (subsets by port set)
//!  Pods ────┴─▶ desired(svc, pods) (pure) ──────┴─▶ EndpointSlice <svc>-<hash of port set>
//!  (fresh list)        │                            labels kubernetes.io/service-name, managed-by
//!                      └─ compared with what is stored: write only what changed
//! ```
//!
//! Both kinds carry a controller ownerReference to the Service, so the garbage collector
//! removes them with it. (Kubernetes' Endpoints controller deletes Endpoints itself and
//! sets no owner; kith lets the GC do it, one mechanism fewer.)
//!
//! Simplifications against kube-controller-manager: one EndpointSlice per distinct port
//! set (no split at 100 endpoints, an edge box runs far fewer), IPv4 only, no topology
//! hints or zones. Slice names end in a hash of the port set instead of a random suffix,
//! so a restart finds the same slices again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use super::replicaset::{controller_ref, is_ready};

/// The label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label saying which controller manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] Kubernetes' controller uses; kith uses it too so
/// tools that look for controller-managed slices find these.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Set on the Endpoints and slices of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// A pass with nothing pending still runs this often, in case a watch missed something.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("service has no {0}")]
    Missing(&'static str),
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
}

/// What the Endpoints and EndpointSlices of one Service should hold.
#[derive(Debug, PartialEq)]
pub struct Desired {
    pub labels: BTreeMap<String, String>,
    /// `subsets` of the Endpoints object; empty when no pod is selected.
    pub subsets: Vec<EndpointSubset>,
    /// Slice name suffix → (ports, endpoints). At least one entry, possibly empty, so
    /// clients see that the Service has been processed.
    pub slices: BTreeMap<String, (Vec<SlicePort>, Vec<Endpoint>)>,
}

/// Whether `labels` carry every `key=value` of the Service's selector.
fn selects(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    let labels = labels.cloned().unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod's port for one service port: a number as is; a name looked up among the
/// pod's container ports (with the service port's protocol), `None` if it has none.
fn resolve(target: &IntOrString, protocol: &str, pod: &Pod) -> Option<i32> {
    match target {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse() {
                return Some(n);
            }
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The resolved ports one pod serves for the Service, in service port order.
fn pod_ports(svc: &Service, pod: &Pod) -> Vec<SlicePort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
            let port = resolve(&target, &protocol, pod)?;
            Some(SlicePort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

fn finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded") | Some("Failed"))
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// A short stable suffix for a port set (FNV-1a, written with the consonants and digits
/// Kubernetes uses for generated names, so it never spells a word).
pub fn port_set_suffix(ports: &[SlicePort]) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in ports {
        let key = format!(
            "{}/{}/{}/{};",
            p.name.as_deref().unwrap_or(""),
            p.port.unwrap_or(0),
            p.protocol.as_deref().unwrap_or(""),
            p.app_protocol.as_deref().unwrap_or("")
        );
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let n = ALPHABET.len() as u64;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(h % n) as usize] as char;
            h /= n;
            c
        })
        .collect()
}

/// What a Service's Endpoints and slices should hold, or `None` for a Service this
/// controller leaves alone (no selector: its endpoints are the user's to write).
pub fn desired(svc: &Service, pods: &[Pod]) -> Option<Desired> {
    let spec = svc.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let ns = svc.metadata.namespace.as_deref();

    let mut labels = BTreeMap::new();
    labels.insert(SERVICE_NAME_LABEL.to_string(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    if headless {
        labels.insert(HEADLESS_LABEL.to_string(), String::new());
    }

    // Port set → (ready addresses, not-ready addresses, slice endpoints).
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>, Vec<Endpoint>);
    let mut groups: BTreeMap<String, (Vec<SlicePort>, Group)> = BTreeMap::new();
    for pod in pods {
        if pod.metadata.namespace.as_deref() != ns
            || !selects(selector, pod.metadata.labels.as_ref())
            || finished(pod)
        {
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = is_ready(pod);
        let ready = publish_not_ready || (serving && !terminating);
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let ports = pod_ports(svc, pod);
        let (_, (addrs, not_ready, endpoints)) = groups
            .entry(port_set_suffix(&ports))
            .or_insert_with(|| (ports, Default::default()));
        let address = EndpointAddress {
            ip: ip.clone(),
            node_name: node_name.clone(),
            target_ref: Some(target_ref(pod)),
            hostname: None,
        };
        // Endpoints drops a terminating pod altogether; slices keep it, marked, so
        // proxies can drain connections to it.
        if ready {
            addrs.push(address);
        } else if !terminating {
            not_ready.push(address);
        }
        endpoints.push(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(publish_not_ready || serving),
                terminating: Some(terminating),
            }),
            node_name,
            target_ref: Some(target_ref(pod)),
            ..Default::default()
        });
    }

    let mut subsets = Vec::new();
    let mut slices = BTreeMap::new();
    for (suffix, (ports, (mut addrs, mut not_ready, mut endpoints))) in groups {
        addrs.sort_by(|a, b| a.ip.cmp(&b.ip));
        not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        if !addrs.is_empty() || !not_ready.is_empty() {
            subsets.push(EndpointSubset {
                addresses: Some(addrs).filter(|v| !v.is_empty()),
                not_ready_addresses: Some(not_ready).filter(|v| !v.is_empty()),
                ports: Some(
                    ports
                        .iter()
                        .map(|p| EndpointPort {
                            name: p.name.clone().filter(|n| !n.is_empty()),
                            port: p.port.unwrap_or(0),
                            protocol: p.protocol.clone(),
                            app_protocol: p.app_protocol.clone(),
                        })
                        .collect(),
                )
                .filter(|v: &Vec<EndpointPort>| !v.is_empty()),
            });
        }
        slices.insert(suffix, (ports, endpoints));
    }
    if slices.is_empty() {
        slices.insert(port_set_suffix(&[]), (Vec::new(), Vec::new()));
    }
    Some(Desired {
        labels,
        subsets,
        slices,
    })
}

/// Empty lists and missing lists mean the same to a client; compare them as equal.
fn nonempty<T: Clone>(v: &Option<Vec<T>>) -> Option<Vec<T>> {
    v.clone().filter(|v| !v.is_empty())
}

struct Ctx {
    client: Client,
}

/// Run the controller until the task is dropped.
pub async fn run(client: Client) {
    let services: Api<Service> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let endpoints: Api<Endpoints> = Api::all(client.clone());
    let queue = super::queue::Queue::new("endpoints", services);
    let store = queue.store();
    queue
        // Every Service of the pod's namespace, not just those matching now: a pod whose
        // labels changed must leave the Services it matched before.
        .watches(pods, move |pod| {
            services_in(&store, &pod.namespace().unwrap_or_default())
        })
        .owns(slices)
        .owns(endpoints)
        .run(reconcile_one, error_policy, Arc::new(Ctx { client }))
        .await;
}

fn services_in(store: &Store<Service>, ns: &str) -> Vec<ObjectRef<Service>> {
    store
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(service = %svc.name_any(), error = %err, "endpoints pass failed");
    Action::requeue(Duration::from_secs(2))
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Metadata for a child named `name`: our labels and the Service as controller owner,
/// keeping what else the stored copy has (resourceVersion for a guarded replace).
fn child_meta(
    old: Option<&ObjectMeta>,
    name: &str,
    ns: &str,
    desired: &Desired,
    svc: &Service,
) -> Result<ObjectMeta, Error> {
    let mut meta = old.cloned().unwrap_or_default();
    meta.name = Some(name.to_string());
    meta.namespace = Some(ns.to_string());
    meta.labels = Some(desired.labels.clone());
    meta.owner_references = Some(vec![
        controller_ref(svc).ok_or(Error::Missing("name or uid"))?
    ]);
    Ok(meta)
}

fn meta_matches(old: &ObjectMeta, desired: &Desired, svc: &Service) -> bool {
    old.labels.as_ref() == Some(&desired.labels)
        && old
            .owner_references
            .as_ref()
            .is_some_and(|r| r.len() == 1 && Some(r[0].uid.as_str()) == svc.metadata.uid.as_deref())
}

async fn reconcile_one(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(svc) = services.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let all = pods.list(&ListParams::default()).await?.items;
    let Some(want) = desired(&svc, &all) else {
        return Ok(Action::await_change());
    };
    let pp = PostParams::default();

    let eps: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let old = eps.get_opt(&name).await?;
    let subsets = Some(want.subsets.clone()).filter(|v| !v.is_empty());
    let unchanged = old
        .as_ref()
        .is_some_and(|o| nonempty(&o.subsets) == subsets && meta_matches(&o.metadata, &want, &svc));
    if !unchanged {
        let body = Endpoints {
            metadata: child_meta(old.as_ref().map(|o| &o.metadata), &name, &ns, &want, &svc)?,
            subsets,
        };
        let res = match old {
            Some(_) => eps.replace(&name, &pp, &body).await,
            None => eps.create(&pp, &body).await,
        };
        match res {
            Ok(_) => {}
            // Raced with another write: the watch brings us back with the new state.
            Err(e) if is_code(&e, 409) => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(e) => return Err(e.into()),
        }
    }

    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}"));
    let existing: BTreeMap<String, EndpointSlice> = slices
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|s| s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        .map(|s| (s.name_any(), s))
        .collect();
    let mut wanted_names = Vec::new();
    for (suffix, (ports, endpoints)) in &want.slices {
        let slice_name = format!("{name}-{suffix}");
        wanted_names.push(slice_name.clone());
        let old = existing.get(&slice_name);
        let ports = Some(ports.clone()).filter(|v| !v.is_empty());
        let unchanged = old.is_some_and(|o| {
            o.address_type == "IPv4"
                && nonempty(&o.ports) == ports
                && &o.endpoints == endpoints
                && meta_matches(&o.metadata, &want, &svc)
        });
        if unchanged {
            continue;
        }
        let body = EndpointSlice {
            metadata: child_meta(old.map(|o| &o.metadata), &slice_name, &ns, &want, &svc)?,
            address_type: "IPv4".into(),
            endpoints: endpoints.clone(),
            ports,
        };
        let res = match old {
            Some(_) => slices.replace(&slice_name, &pp, &body).await,
            None => slices.create(&pp, &body).await,
        };
        match res {
            Ok(_) => {}
            Err(e) if is_code(&e, 409) => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(e) => return Err(e.into()),
        }
    }
    for old in existing.keys().filter(|n| !wanted_names.contains(n)) {
        match slices.delete(old, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_code(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn service(selector: &[(&str, &str)], ports: &[(&str, i32, IntOrString)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("svc-uid".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(labels(selector)),
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, port, target)| ServicePort {
                            name: Some(name.to_string()).filter(|n| !n.is_empty()),
                            port: *port,
                            protocol: Some("TCP".into()),
                            target_port: Some(target.clone()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A pod in `ns` labelled `app=<app>`. Flags: `R` Ready, `d` being deleted,
    /// `f` Failed, `x` in another namespace. `http_port` names a container port "http".
    fn pod(name: &str, app: &str, ip: &str, flags: &str, http_port: Option<i32>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(if flags.contains('x') { "other" } else { "ns" }.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(labels(&[("app", app)])),
                deletion_timestamp: flags
                    .contains('d')
                    .then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("box1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: http_port.map(|p| {
                        vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: p,
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(
                    if flags.contains('f') {
                        "Failed"
                    } else {
                        "Running"
                    }
                    .into(),
                ),
                pod_ip: Some(ip.to_string()).filter(|s| !s.is_empty()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if flags.contains('R') { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn ips(a: &Option<Vec<EndpointAddress>>) -> Vec<String> {
        a.iter().flatten().map(|a| a.ip.clone()).collect()
    }

    /// One subset as "ready ips | not ready ips | ports".
    fn subset_summary(s: &EndpointSubset) -> String {
        let ports: Vec<String> = s
            .ports
            .iter()
            .flatten()
            .map(|p| format!("{}:{}", p.name.as_deref().unwrap_or(""), p.port))
            .collect();
        format!(
            "{} | {} | {}",
            ips(&s.addresses).join(","),
            ips(&s.not_ready_addresses).join(","),
            ports.join(",")
        )
    }

    /// One slice as "ports => ip(ready/serving/terminating),...".
    fn slice_summary((ports, eps): &(Vec<SlicePort>, Vec<Endpoint>)) -> String {
        let ports: Vec<String> = ports
            .iter()
            .map(|p| {
                format!(
                    "{}:{}",
                    p.name.as_deref().unwrap_or(""),
                    p.port.unwrap_or(0)
                )
            })
            .collect();
        let eps: Vec<String> = eps
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                let f = |b: Option<bool>| if b == Some(true) { 'T' } else { 'F' };
                format!(
                    "{}({}{}{})",
                    e.addresses.join(","),
                    f(c.ready),
                    f(c.serving),
                    f(c.terminating)
                )
            })
            .collect();
        format!("{} => {}", ports.join(","), eps.join(","))
    }

    struct Case {
        name: &'static str,
        svc: Service,
        pods: Vec<Pod>,
        subsets: &'static [&'static str],
        slices: &'static [&'static str],
    }

    #[test]
    fn desired_table() {
        let http = || service(&[("app", "web")], &[("", 80, IntOrString::Int(8080))]);
        let named = || {
            service(
                &[("app", "web")],
                &[("web", 80, IntOrString::String("http".into()))],
            )
        };
        let cases = vec![
            Case {
                name: "no pods: no subsets, one empty slice",
                svc: http(),
                pods: vec![],
                subsets: &[],
                slices: &[" => "],
            },
            Case {
                name: "ready and not ready split, sorted by ip; others ignored",
                svc: http(),
                pods: vec![
                    pod("b", "web", "10.42.0.9", "R", None),
                    pod("a", "web", "10.42.0.5", "R", None),
                    pod("n", "web", "10.42.0.7", "", None),
                    pod("noip", "web", "", "R", None),
                    pod("other", "db", "10.42.0.8", "R", None),
                    pod("elsewhere", "web", "10.42.0.6", "Rx", None),
                    pod("failed", "web", "10.42.0.4", "Rf", None),
                ],
                subsets: &["10.42.0.5,10.42.0.9 | 10.42.0.7 | :8080"],
                slices: &[":8080 => 10.42.0.5(TTF),10.42.0.7(FFF),10.42.0.9(TTF)"],
            },
            Case {
                name: "terminating: gone from Endpoints, kept in slice as terminating",
                svc: http(),
                pods: vec![
                    pod("a", "web", "10.42.0.5", "R", None),
                    pod("t", "web", "10.42.0.6", "Rd", None),
                ],
                subsets: &["10.42.0.5 |  | :8080"],
                slices: &[":8080 => 10.42.0.5(TTF),10.42.0.6(FTT)"],
            },
            Case {
                name: "named targetPort resolved per pod: one subset and slice per port set",
                svc: named(),
                pods: vec![
                    pod("a", "web", "10.42.0.5", "R", Some(8080)),
                    pod("b", "web", "10.42.0.6", "", Some(9090)),
                    pod("c", "web", "10.42.0.7", "R", Some(8080)),
                ],
                subsets: &[
                    "10.42.0.5,10.42.0.7 |  | web:8080",
                    " | 10.42.0.6 | web:9090",
                ],
                slices: &[
                    "web:8080 => 10.42.0.5(TTF),10.42.0.7(TTF)",
                    "web:9090 => 10.42.0.6(FFF)",
                ],
            },
            Case {
                name: "named targetPort the pod lacks: listed without that port",
                svc: named(),
                pods: vec![pod("a", "web", "10.42.0.5", "R", None)],
                subsets: &["10.42.0.5 |  | "],
                slices: &[" => 10.42.0.5(TTF)"],
            },
        ];
        for c in cases {
            let d = desired(&c.svc, &c.pods).expect(c.name);
            let mut subsets: Vec<String> = d.subsets.iter().map(subset_summary).collect();
            let mut slices: Vec<String> = d.slices.values().map(slice_summary).collect();
            subsets.sort();
            slices.sort();
            let mut want_subsets: Vec<String> = c.subsets.iter().map(|s| s.to_string()).collect();
            let mut want_slices: Vec<String> = c.slices.iter().map(|s| s.to_string()).collect();
            want_subsets.sort();
            want_slices.sort();
            assert_eq!(subsets, want_subsets, "{}: subsets", c.name);
            assert_eq!(slices, want_slices, "{}: slices", c.name);
            assert_eq!(
                d.labels.get(SERVICE_NAME_LABEL).map(String::as_str),
                Some("web"),
                "{}",
                c.name
            );
            assert_eq!(
                d.labels.get(MANAGED_BY_LABEL).map(String::as_str),
                Some(MANAGED_BY)
            );
        }
    }

    #[test]
    fn services_left_alone_table() {
        let mut external = service(&[("app", "web")], &[]);
        if let Some(s) = external.spec.as_mut() {
            s.type_ = Some("ExternalName".into());
        }
        let cases = [
            (
                "no selector",
                service(&[], &[("", 80, IntOrString::Int(80))]),
            ),
            ("external name", external),
        ];
        for (name, svc) in cases {
            assert_eq!(desired(&svc, &[]), None, "{name}");
        }
    }

    #[test]
    fn publish_not_ready_and_headless() {
        let mut svc = service(&[("app", "web")], &[("", 80, IntOrString::Int(80))]);
        if let Some(s) = svc.spec.as_mut() {
            s.publish_not_ready_addresses = Some(true);
            s.cluster_ip = Some("None".into());
        }
        let d = desired(&svc, &[pod("n", "web", "10.42.0.7", "", None)]).expect("managed");
        assert_eq!(
            d.subsets.iter().map(subset_summary).collect::<Vec<_>>(),
            vec!["10.42.0.7 |  | :80"]
        );
        assert!(d.labels.contains_key(HEADLESS_LABEL));
    }

    #[test]
    fn port_set_suffix_is_stable_and_distinct() {
        let p = |port| SlicePort {
            name: Some("http".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            app_protocol: None,
        };
        let a = port_set_suffix(&[p(80)]);
        assert_eq!(a, port_set_suffix(&[p(80)]));
        assert_ne!(a, port_set_suffix(&[p(81)]));
        assert_ne!(a, port_set_suffix(&[]));
        assert_eq!(a.len(), 5);
    }
}
