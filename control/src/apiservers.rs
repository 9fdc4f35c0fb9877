//! Which control boxes serve the API right now, so the `kubernetes` Service's endpoints
//! name all of them, as kube-apiserver's lease endpoint reconciler does for an HA control
//! plane.
//!
//! ```text
//!  every box, every 10 s ──▶ Lease kube-system/kube-apiserver-<node id>
//!                              label apiserver.kubernetes.io/identity=kube-apiserver
//!                              annotation kith.dev/advertise-address=<ip:port>, 30 s
//!  the leader, every 10 s ──▶ live leases ─▶ endpoints(..) ─▶ kubernetes Endpoints/Slice
//! ```
//! The leases are kube-apiserver's identity leases in name and label, so
//! `kubectl get leases -n kube-system -l apiserver.kubernetes.io/identity=kube-apiserver`
//! lists the boxes serving the API. A box that stops renewing drops out of the endpoints
//! once its lease has run out. The decision ([`endpoints`]) is pure.

use std::net::SocketAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{ListParams, Patch, PatchParams};

pub const NAMESPACE: &str = "kube-system";
pub const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
pub const IDENTITY: &str = "kube-apiserver";
pub const ADDRESS_ANNOTATION: &str = "kith.dev/advertise-address";
/// How often a box renews its lease (kube-apiserver: 10 s).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long a lease counts without renewal: three missed renewals.
pub const LEASE_SECONDS: i32 = 30;

/// `kube-apiserver-<node id>`.
pub fn lease_name(node_id: u64) -> String {
    format!("{IDENTITY}-{node_id}")
}

/// The lease box `node_id`, serving the API at `addr`, holds at `now`.
pub fn lease(node_id: u64, addr: SocketAddr, now: Timestamp) -> Lease {
    let name = lease_name(node_id);
    Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(NAMESPACE.into()),
            labels: Some([(IDENTITY_LABEL.to_string(), IDENTITY.to_string())].into()),
            annotations: Some([(ADDRESS_ANNOTATION.to_string(), addr.to_string())].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// The API addresses of the boxes whose lease is live at `now`, sorted, each once.
/// Leases without a parseable address or renew time count as gone.
pub fn endpoints(leases: &[Lease], now: Timestamp) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = leases
        .iter()
        .filter(|l| {
            let Some(spec) = &l.spec else { return false };
            let (Some(renewed), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds)
            else {
                return false;
            };
            renewed
                .0
                .checked_add(jiff::SignedDuration::from_secs(secs.max(0).into()))
                .is_ok_and(|until| until > now)
        })
        .filter_map(|l| {
            l.metadata
                .annotations
                .as_ref()?
                .get(ADDRESS_ANNOTATION)?
                .parse()
                .ok()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Writes this box's lease now (server-side apply: creates or renews).
pub async fn renew(client: &kube::Client, node_id: u64, addr: SocketAddr) -> kube::Result<()> {
    let leases = kube::Api::<Lease>::namespaced(client.clone(), NAMESPACE);
    // k8s-openapi writes apiVersion and kind, as an apply body needs.
    let want = lease(node_id, addr, Timestamp::now());
    leases
        .patch(
            &lease_name(node_id),
            &PatchParams::apply("kube-apiserver").force(),
            &Patch::Apply(&want),
        )
        .await
        .map(|_| ())
}

/// Every box: keep its lease renewed until aborted (failures are retried next round: a
/// box cut off from its region cannot write, and its lease runs out, as it should).
pub async fn keep_renewed(client: kube::Client, node_id: u64, addr: SocketAddr) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = renew(&client, node_id, addr).await {
            tracing::debug!(error = %e, "renewing this box's API server lease");
        }
    }
}

/// The live API addresses, read from the leases.
pub async fn live(client: &kube::Client) -> kube::Result<Vec<SocketAddr>> {
    let leases = kube::Api::<Lease>::namespaced(client.clone(), NAMESPACE);
    let list = leases
        .list(&ListParams::default().labels(&format!("{IDENTITY_LABEL}={IDENTITY}")))
        .await?;
    Ok(endpoints(&list.items, Timestamp::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn endpoints_table() {
        let a: SocketAddr = "10.0.0.1:6443".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:6443".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:7443".parse().unwrap();
        let t0 = at("2030-01-01T00:00:00Z");
        let fresh = |id, addr| lease(id, addr, t0);
        let stale = lease(3, c, at("2029-12-31T23:59:30Z"));
        let mut no_address = fresh(4, a);
        no_address.metadata.annotations = None;
        let mut bad_address = fresh(5, a);
        bad_address.metadata.annotations =
            Some([(ADDRESS_ANNOTATION.to_string(), "somewhere".to_string())].into());
        let mut no_renew = fresh(6, c);
        no_renew.spec.as_mut().unwrap().renew_time = None;
        let now = at("2030-01-01T00:00:05Z");
        let cases: Vec<(&str, Vec<Lease>, Vec<SocketAddr>)> = vec![
            ("none", vec![], vec![]),
            ("one box", vec![fresh(1, a)], vec![a]),
            ("sorted", vec![fresh(2, b), fresh(1, a)], vec![a, b]),
            (
                "expired drops out",
                vec![fresh(1, a), stale.clone()],
                vec![a],
            ),
            (
                "same address twice",
                vec![fresh(1, a), fresh(9, a)],
                vec![a],
            ),
            ("no address", vec![no_address], vec![]),
            ("bad address", vec![bad_address], vec![]),
            ("never renewed", vec![no_renew], vec![]),
        ];
        for (name, leases, want) in cases {
            assert_eq!(endpoints(&leases, now), want, "{name}");
        }
        // Exactly at expiry a lease is gone.
        assert_eq!(
            endpoints(&[lease(1, a, t0)], at("2030-01-01T00:00:30Z")),
            vec![]
        );
    }

    #[test]
    fn lease_names_and_labels_as_kube_apiserver() {
        let l = lease(
            42,
            "10.0.0.1:6443".parse().unwrap(),
            at("2030-01-01T00:00:00Z"),
        );
        assert_eq!(l.metadata.name.as_deref(), Some("kube-apiserver-42"));
        assert_eq!(l.metadata.labels.unwrap()[IDENTITY_LABEL], "kube-apiserver");
        assert_eq!(l.spec.unwrap().lease_duration_seconds, Some(30));
    }
}
