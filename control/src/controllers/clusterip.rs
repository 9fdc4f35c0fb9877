//! ClusterIP allocation: every Service of type ClusterIP, NodePort or LoadBalancer gets a
//! virtual IP from the service range (default `10.43.0.0/16`, as k3s), unless it is
//! headless (`clusterIP: None`).
//!
//! ```text
//!  services watch ──▶ pass: list services + markers ──▶ plan (pure)
//!                                                        ├─▶ release markers of gone services
//!                                                        ├─▶ claim the IP a user asked for
//!                                                        └─▶ allocate: create marker (atomic)
//!                                                              └─▶ patch spec.clusterIP(s)
//! ```
//!
//! Kubernetes allocates inside the API server while it creates the Service; kith does it
//! right after, from this loop, so a Service is briefly without an IP. Each allocated IP
//! is a marker ConfigMap `kube-system/clusterip-10-43-0-10`: the store creates an object
//! atomically and refuses a second one with AlreadyExists, so two allocators can never
//! hand out the same IP, even across a Raft leader change. Markers record the owner's
//! uid rather than carrying an ownerReference, because ownerReferences can't cross
//! namespaces and the garbage collector would take a cross-namespace owner for gone.
//!
//! A user-chosen IP that is already taken can't be refused at create time from here, so
//! the Service keeps it and gets a Warning event with the API server's wording.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::events::{self, EventType};

/// The name events from this controller carry as their source.
pub const COMPONENT: &str = "clusterip-allocator";
/// Where allocation markers live.
pub const MARKER_NAMESPACE: &str = "kube-system";
/// Marker ConfigMaps carry this label, so a pass lists only them.
pub const MARKER_LABEL: &str = "kith.dev/clusterip";
/// The service range kith uses unless told otherwise (k3s' default).
pub const DEFAULT_RANGE: &str = "10.43.0.0/16";
/// A pass runs at least this often, in case a watch missed a deletion.
const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid service range {0:?}: expected an IPv4 CIDR such as 10.43.0.0/16")]
    Range(String),
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
}

/// An IPv4 CIDR to allocate from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    base: u32,
    prefix: u8,
}

impl FromStr for Range {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Range(s.to_string());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        // Below /30 there is nothing left once the network, broadcast and `.1` are set aside.
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Range {
            base: u32::from(ip) & mask,
            prefix,
        })
    }
}

impl Default for Range {
    /// [`DEFAULT_RANGE`].
    fn default() -> Self {
        Range {
            base: u32::from(Ipv4Addr::new(10, 43, 0, 0)),
            prefix: 16,
        }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl Range {
    fn last(&self) -> u32 {
        self.base | (u32::MAX >> self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.base..=self.last()).contains(&u32::from(ip))
    }

    /// The IPs a Service may get: not the network or broadcast address, and not the
    /// first host, which Kubernetes keeps for the `kubernetes` Service.
    pub fn allocatable(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n > self.base + 1 && n < self.last()
    }

    /// The first host: the `kubernetes` Service's address, as on kube-apiserver.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The lowest allocatable IP not in `used`. Kubernetes picks at random; the lowest
    /// free one keeps addresses predictable on a small box.
    pub fn next_free(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        (self.base + 2..self.last())
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
    }
}

/// The marker ConfigMap name for an IP: `clusterip-10-43-0-10`.
pub fn marker_name(ip: Ipv4Addr) -> String {
    format!("clusterip-{}", ip.to_string().replace('.', "-"))
}

/// The IP a marker name stands for.
pub fn marker_ip(name: &str) -> Option<Ipv4Addr> {
    name.strip_prefix("clusterip-")?
        .replace('-', ".")
        .parse()
        .ok()
}

/// Who holds an IP, as its marker records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What a Service needs from the allocator.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Headless, ExternalName, or holding its IP already.
    Nothing,
    /// No IP yet: allocate one.
    Allocate,
    /// Asked for this IP and holds no marker for it yet: claim it.
    Claim(Ipv4Addr),
    /// Asked for an IP that can't be given; the message says why, as Kubernetes words it.
    Refuse(String),
}

/// The Service's `spec.clusterIP`, `""` when unset.
fn cluster_ip(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .unwrap_or("")
}

/// What `svc` needs, given the markers (IP → holder) that exist.
pub fn need(svc: &Service, range: &Range, markers: &BTreeMap<Ipv4Addr, Holder>) -> Need {
    let typ = svc
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP");
    if typ == "ExternalName" || svc.metadata.deletion_timestamp.is_some() {
        return Need::Nothing;
    }
    let asked = cluster_ip(svc);
    if asked == "None" {
        return Need::Nothing;
    }
    if asked.is_empty() {
        return Need::Allocate;
    }
    let refuse = |why: &str| {
        Need::Refuse(format!(
            "spec.clusterIPs: Invalid value: []string{{\"{asked}\"}}: failed to allocate IP {asked}: {why}"
        ))
    };
    let Ok(ip) = asked.parse::<Ipv4Addr>() else {
        return refuse("not a valid IPv4 address");
    };
    if !range.contains(ip) {
        return refuse(&format!(
            "provided IP is not in the valid range. The range of valid IPs is {range}"
        ));
    }
    // `kith up` gives default/kubernetes the reserved first host, as kube-apiserver does.
    let is_kubernetes = svc.metadata.namespace.as_deref() == Some("default")
        && svc.metadata.name.as_deref() == Some("kubernetes");
    if is_kubernetes && ip == range.kubernetes_service_ip() {
        return Need::Nothing;
    }
    match markers.get(&ip) {
        Some(h) if Some(&h.uid) == svc.metadata.uid.as_ref() => Need::Nothing,
        Some(_) => refuse("provided IP is already allocated"),
        None if !range.allocatable(ip) => refuse("provided IP is not in the valid range"),
        None => Need::Claim(ip),
    }
}

/// Markers whose Service is gone (no live Service with that uid) or no longer uses the IP.
pub fn stale_markers(markers: &BTreeMap<Ipv4Addr, Holder>, services: &[Service]) -> Vec<Ipv4Addr> {
    let live: BTreeMap<&str, &Service> = services
        .iter()
        .filter_map(|s| Some((s.metadata.uid.as_deref()?, s)))
        .collect();
    markers
        .iter()
        .filter(|(ip, h)| match live.get(h.uid.as_str()) {
            None => true,
            Some(svc) => cluster_ip(svc) != ip.to_string(),
        })
        .map(|(ip, _)| *ip)
        .collect()
}

/// The spec patch that gives a Service its IP, with the family fields kept consistent.
fn assign_patch(svc: &Service, ip: Ipv4Addr) -> serde_json::Value {
    // The resourceVersion guard makes a concurrent edit (or a second allocator) lose
    // cleanly with a conflict instead of overwriting another IP.
    json!({
        "metadata": {"resourceVersion": svc.metadata.resource_version},
        "spec": {
            "clusterIP": ip.to_string(),
            "clusterIPs": [ip.to_string()],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
        }
    })
}

fn holder_of(cm: &ConfigMap) -> Option<(Ipv4Addr, Holder)> {
    let ip = marker_ip(&cm.name_any())?;
    let d = cm.data.as_ref()?;
    Some((
        ip,
        Holder {
            namespace: d.get("namespace")?.clone(),
            name: d.get("name")?.clone(),
            uid: d.get("uid")?.clone(),
        },
    ))
}

fn marker(ip: Ipv4Addr, svc: &Service) -> ConfigMap {
    let data = [
        ("namespace", svc.namespace().unwrap_or_default()),
        ("name", svc.name_any()),
        ("uid", svc.metadata.uid.clone().unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(marker_name(ip)),
            namespace: Some(MARKER_NAMESPACE.into()),
            labels: Some([(MARKER_LABEL.to_string(), "allocated".to_string())].into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Run the allocator over `range` until the task is dropped.
pub async fn run(client: Client, range: Range) {
    let services: Api<Service> = Api::all(client.clone());
    let mut changes = watcher(services, watcher::Config::default()).boxed();
    // Services whose refusal was already reported, so a resync does not repeat the event.
    let mut reported = BTreeSet::new();
    loop {
        if let Err(e) = pass(&client, &range, &mut reported).await {
            tracing::warn!(error = %e, "clusterip pass failed");
        }
        // Any service event (or the resync) triggers a full pass; drain what queued up
        // meanwhile so a burst of creates costs one pass.
        match tokio::time::timeout(RESYNC, changes.next()).await {
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "clusterip watch failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => {}
        }
        while let Some(Some(_)) = changes.next().now_or_never() {}
    }
}

async fn pass(
    client: &Client,
    range: &Range,
    reported: &mut BTreeSet<String>,
) -> Result<(), Error> {
    let services: Api<Service> = Api::all(client.clone());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), MARKER_NAMESPACE);
    let svcs = services.list(&ListParams::default()).await?.items;
    let lp = ListParams::default().labels(MARKER_LABEL);
    let mut markers: BTreeMap<Ipv4Addr, Holder> = cms
        .list(&lp)
        .await?
        .items
        .iter()
        .filter_map(holder_of)
        .collect();

    for ip in stale_markers(&markers, &svcs) {
        match cms.delete(&marker_name(ip), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_code(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
        markers.remove(&ip);
    }
    let live_uids: BTreeSet<&str> = svcs
        .iter()
        .filter_map(|s| s.metadata.uid.as_deref())
        .collect();
    reported.retain(|uid| live_uids.contains(uid.as_str()));

    for svc in &svcs {
        match need(svc, range, &markers) {
            Need::Nothing => {}
            Need::Refuse(msg) => {
                let uid = svc.metadata.uid.clone().unwrap_or_default();
                if reported.insert(uid) {
                    tracing::warn!(service = %svc.name_any(), "{msg}");
                    events::record(
                        client,
                        &svc.object_ref(&()),
                        EventType::Warning,
                        "ClusterIPNotAllocated",
                        &msg,
                        COMPONENT,
                    )
                    .await;
                }
            }
            Need::Claim(ip) => match cms.create(&PostParams::default(), &marker(ip, svc)).await {
                Ok(_) => {
                    markers.insert(ip, holder(svc));
                }
                // Someone took it between our list and our create: the next pass reports it.
                Err(e) if is_code(&e, 409) => {}
                Err(e) => return Err(e.into()),
            },
            Need::Allocate => allocate(client, range, svc, &mut markers).await?,
        }
    }
    Ok(())
}

fn holder(svc: &Service) -> Holder {
    Holder {
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Take the lowest free IP by creating its marker, then give it to the Service.
async fn allocate(
    client: &Client,
    range: &Range,
    svc: &Service,
    markers: &mut BTreeMap<Ipv4Addr, Holder>,
) -> Result<(), Error> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), MARKER_NAMESPACE);
    let mut used: BTreeSet<Ipv4Addr> = markers.keys().copied().collect();
    let ip = loop {
        let Some(ip) = range.next_free(&used) else {
            let msg = format!("failed to allocate a serviceIP: range {range} is full");
            events::record(
                client,
                &svc.object_ref(&()),
                EventType::Warning,
                "ClusterIPNotAllocated",
                &msg,
                COMPONENT,
            )
            .await;
            return Ok(());
        };
        match cms.create(&PostParams::default(), &marker(ip, svc)).await {
            Ok(_) => break ip,
            // Taken since we listed: the store refused atomically, try the next one.
            Err(e) if is_code(&e, 409) => {
                used.insert(ip);
            }
            Err(e) => return Err(e.into()),
        }
    };
    markers.insert(ip, holder(svc));
    let services: Api<Service> =
        Api::namespaced(client.clone(), &svc.namespace().unwrap_or_default());
    match services
        .patch(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(assign_patch(svc, ip)),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone or changed since we listed: the marker is stale and the next pass
        // releases it (or allocates again for the changed Service).
        Err(e) if is_code(&e, 404) || is_code(&e, 409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn svc(uid: &str, typ: &str, cluster_ip: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(format!("s-{uid}")),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(typ.into()),
                cluster_ip: cluster_ip.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn holders(list: &[(&str, &str)]) -> BTreeMap<Ipv4Addr, Holder> {
        list.iter()
            .map(|(a, uid)| {
                (
                    ip(a),
                    Holder {
                        namespace: "ns".into(),
                        name: format!("s-{uid}"),
                        uid: (*uid).into(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn range_parsing_table() {
        assert_eq!(DEFAULT_RANGE.parse::<Range>().ok(), Some(Range::default()));
        let cases = [
            ("10.43.0.0/16", Some("10.43.0.0/16")),
            ("10.43.7.9/16", Some("10.43.0.0/16")),
            ("192.168.5.0/24", Some("192.168.5.0/24")),
            ("10.43.0.0/31", None),
            ("10.43.0.0", None),
            ("fd00::/64", None),
            ("10.43.0.0/x", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<Range>().ok().map(|r| r.to_string());
            assert_eq!(got.as_deref(), want, "{input}");
        }
    }

    #[test]
    fn next_free_table() {
        let cases: [(&str, &[&str], Option<&str>); 6] = [
            ("10.43.0.0/16", &[], Some("10.43.0.2")),
            (
                "10.43.0.0/16",
                &["10.43.0.2", "10.43.0.3"],
                Some("10.43.0.4"),
            ),
            (
                "10.43.0.0/16",
                &["10.43.0.2", "10.43.0.4"],
                Some("10.43.0.3"),
            ),
            // .0 network, .1 kubernetes, .3 broadcast: a /30 has exactly one to give.
            ("10.0.0.0/30", &[], Some("10.0.0.2")),
            ("10.0.0.0/30", &["10.0.0.2"], None),
            ("10.43.0.0/24", &["10.43.0.254"], Some("10.43.0.2")),
        ];
        for (range, used, want) in cases {
            let r: Range = range.parse().unwrap();
            let used: BTreeSet<Ipv4Addr> = used.iter().map(|s| ip(s)).collect();
            assert_eq!(r.next_free(&used), want.map(ip), "{range} {used:?}");
        }
        let full: Range = "10.0.0.0/24".parse().unwrap();
        let all: BTreeSet<Ipv4Addr> = (2..255).map(|n| Ipv4Addr::new(10, 0, 0, n)).collect();
        assert_eq!(full.next_free(&all), None);
    }

    #[test]
    fn marker_names_round_trip() {
        for s in ["10.43.0.2", "10.43.255.254", "192.168.0.10"] {
            assert_eq!(marker_ip(&marker_name(ip(s))), Some(ip(s)));
        }
        assert_eq!(marker_name(ip("10.43.0.10")), "clusterip-10-43-0-10");
        assert_eq!(marker_ip("other-10-43-0-1"), None);
        assert_eq!(marker_ip("clusterip-nope"), None);
    }

    #[test]
    fn need_table() {
        let range: Range = DEFAULT_RANGE.parse().unwrap();
        let markers = holders(&[("10.43.0.10", "a"), ("10.43.0.11", "b")]);
        let taken = "spec.clusterIPs: Invalid value: []string{\"10.43.0.10\"}: failed to allocate IP 10.43.0.10: provided IP is already allocated";
        let mut deleting = svc("d", "ClusterIP", None);
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let mut kubernetes = svc("k", "ClusterIP", Some("10.43.0.1"));
        kubernetes.metadata.namespace = Some("default".into());
        kubernetes.metadata.name = Some("kubernetes".into());
        let cases = [
            ("default/kubernetes keeps .1", kubernetes, Need::Nothing),
            ("no ip yet", svc("x", "ClusterIP", None), Need::Allocate),
            ("empty ip", svc("x", "ClusterIP", Some("")), Need::Allocate),
            ("nodeport", svc("x", "NodePort", None), Need::Allocate),
            ("loadbalancer", svc("x", "LoadBalancer", Some("")), Need::Allocate),
            ("headless", svc("x", "ClusterIP", Some("None")), Need::Nothing),
            ("externalname", svc("x", "ExternalName", None), Need::Nothing),
            ("being deleted", deleting, Need::Nothing),
            ("holds its own", svc("a", "ClusterIP", Some("10.43.0.10")), Need::Nothing),
            ("asks free ip", svc("x", "ClusterIP", Some("10.43.0.20")), Need::Claim(ip("10.43.0.20"))),
            ("asks taken ip", svc("x", "ClusterIP", Some("10.43.0.10")), Need::Refuse(taken.into())),
            (
                "asks outside range",
                svc("x", "ClusterIP", Some("10.44.0.1")),
                Need::Refuse("spec.clusterIPs: Invalid value: []string{\"10.44.0.1\"}: failed to allocate IP 10.44.0.1: provided IP is not in the valid range. The range of valid IPs is 10.43.0.0/16".into()),
            ),
            (
                "asks reserved .1",
                svc("x", "ClusterIP", Some("10.43.0.1")),
                Need::Refuse("spec.clusterIPs: Invalid value: []string{\"10.43.0.1\"}: failed to allocate IP 10.43.0.1: provided IP is not in the valid range".into()),
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(need(&s, &range, &markers), want, "{name}");
        }
    }

    #[test]
    fn stale_markers_table() {
        let markers = holders(&[
            ("10.43.0.2", "a"),
            ("10.43.0.3", "gone"),
            ("10.43.0.4", "c"),
        ]);
        let cases: [(&str, Vec<Service>, &[&str]); 3] = [
            (
                "service gone: release",
                vec![
                    svc("a", "ClusterIP", Some("10.43.0.2")),
                    svc("c", "ClusterIP", Some("10.43.0.4")),
                ],
                &["10.43.0.3"],
            ),
            (
                "service now ExternalName without ip: release",
                vec![
                    svc("a", "ClusterIP", Some("10.43.0.2")),
                    svc("c", "ExternalName", None),
                ],
                &["10.43.0.3", "10.43.0.4"],
            ),
            (
                "same name recreated (new uid) does not keep the old marker",
                vec![
                    svc("a", "ClusterIP", Some("10.43.0.2")),
                    svc("c", "ClusterIP", Some("10.43.0.4")),
                    svc("gone2", "ClusterIP", None),
                ],
                &["10.43.0.3"],
            ),
        ];
        for (name, svcs, want) in cases {
            let want: Vec<Ipv4Addr> = want.iter().map(|s| ip(s)).collect();
            assert_eq!(stale_markers(&markers, &svcs), want, "{name}");
        }
    }
}
