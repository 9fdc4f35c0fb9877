//! Creating and deleting the pods a workload controller owns, with the events
//! `kubectl describe` shows for them (SuccessfulCreate, FailedCreate, SuccessfulDelete),
//! worded as the Kubernetes controllers word them. One way for every controller.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::events::{self, EventType};

/// Create `pod` and record the outcome on `owner`.
pub async fn create_pod(
    client: &Client,
    pods: &Api<Pod>,
    pod: &Pod,
    owner: &ObjectReference,
    component: &str,
) -> Result<Pod, kube::Error> {
    match pods.create(&PostParams::default(), pod).await {
        Ok(created) => {
            let msg = format!("Created pod: {}", created.name_any());
            events::record(
                client,
                owner,
                EventType::Normal,
                "SuccessfulCreate",
                &msg,
                component,
            )
            .await;
            Ok(created)
        }
        Err(e) => {
            let msg = format!("Error creating: {e}");
            events::record(
                client,
                owner,
                EventType::Warning,
                "FailedCreate",
                &msg,
                component,
            )
            .await;
            Err(e)
        }
    }
}

/// Delete pod `name` (already gone is fine) and record it on `owner`.
pub async fn delete_pod(
    client: &Client,
    pods: &Api<Pod>,
    name: &str,
    params: &DeleteParams,
    owner: &ObjectReference,
    component: &str,
) -> Result<(), kube::Error> {
    match pods.delete(name, params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    let msg = format!("Deleted pod: {name}");
    events::record(
        client,
        owner,
        EventType::Normal,
        "SuccessfulDelete",
        &msg,
        component,
    )
    .await;
    Ok(())
}
