//! Events for `kubectl describe`: what controllers, the scheduler and the agent did to an
//! object. A client-side helper (any `kube::Client`), shared by control and agent.
//!
//! kubectl describe reads core/v1 Events selected by `involvedObject`, so that is the form
//! written here (kith keeps core/v1 and events.k8s.io/v1 Events as separate resources).
//! Repeats of the same reason and message on the same object bump `count` and
//! `lastTimestamp` instead of adding events, as the Kubernetes event recorder does.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// `Normal` or `Warning`, as Kubernetes spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The involvedObject of an event about `obj`: kube's `object_ref` plus the
/// resourceVersion the event is about, as Kubernetes' recorder sets it.
pub fn reference<K: kube::Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        resource_version: obj.meta().resource_version.clone(),
        ..obj.object_ref(&())
    }
}

/// The name of the event for (object, reason, message): stable, so repeats update it.
pub fn event_name(involved: &ObjectReference, reason: &str, message: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (involved.uid.as_deref(), reason, message).hash(&mut h);
    format!(
        "{}.{:016x}",
        involved.name.as_deref().unwrap_or("object"),
        h.finish()
    )
}

/// Record an event about `involved` (which must carry namespace, name, uid, kind and
/// apiVersion). Failures are logged, never returned: an event is never worth failing the
/// action it describes.
pub async fn record(
    client: &Client,
    involved: &ObjectReference,
    ty: EventType,
    reason: &str,
    message: &str,
    component: &str,
) {
    let ns = involved
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let name = event_name(involved, reason, message);
    let now = jiff::Timestamp::now();
    let result = match api.get_opt(&name).await {
        Ok(Some(mut ev)) => {
            ev.count = Some(ev.count.unwrap_or(1) + 1);
            ev.last_timestamp = Some(Time(now));
            api.replace(&name, &PostParams::default(), &ev)
                .await
                .map(|_| ())
        }
        Ok(None) => {
            let ev = Event {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                involved_object: involved.clone(),
                reason: Some(reason.to_string()),
                message: Some(message.to_string()),
                type_: Some(ty.as_str().to_string()),
                source: Some(EventSource {
                    component: Some(component.to_string()),
                    host: None,
                }),
                reporting_component: Some(component.to_string()),
                reporting_instance: Some(component.to_string()),
                first_timestamp: Some(Time(now)),
                last_timestamp: Some(Time(now)),
                event_time: Some(MicroTime(now)),
                action: Some(reason.to_string()),
                count: Some(1),
                ..Default::default()
            };
            api.create(&PostParams::default(), &ev).await.map(|_| ())
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %reason, "recording an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_stable_per_object_reason_and_message() {
        let pod = |uid: &str| ObjectReference {
            name: Some("p".into()),
            uid: Some(uid.into()),
            ..Default::default()
        };
        let a = event_name(&pod("u1"), "FailedScheduling", "0/1 nodes are available");
        assert_eq!(
            a,
            event_name(&pod("u1"), "FailedScheduling", "0/1 nodes are available")
        );
        assert_ne!(
            a,
            event_name(&pod("u2"), "FailedScheduling", "0/1 nodes are available")
        );
        assert_ne!(
            a,
            event_name(&pod("u1"), "Scheduled", "0/1 nodes are available")
        );
        assert!(a.starts_with("p."));
    }
}
