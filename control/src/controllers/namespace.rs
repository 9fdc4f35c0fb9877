//! Namespace lifecycle: a namespace being deleted (Terminating) loses everything inside it,
//! then its `kubernetes` finalizer, and then it is gone.
//!
//! ```text
//!  namespaces watch ──▶ deletionTimestamp set? ──▶ delete every namespaced object in it
//!                                                 └─ nothing left ──▶ finalize ──▶ deleted
//! ```

use std::sync::Arc;
use std::time::Duration;

use kith_api::error::ApiError;
use kith_api::handler::{Api, DeleteOptions};
use kith_api::kinds::{self, KINDS};
use kith_api::request::{Query, ResourceRoute};
use kith_api::store::{ObjectStore, ReadMode, WatchFrom};
use serde_json::{json, Value};

/// What to do with a namespace, given how many objects remain inside it.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not being deleted: nothing to do.
    Keep,
    /// Delete what is inside, then look again.
    DeleteContent,
    /// Empty: remove the `kubernetes` finalizer so the namespace goes away.
    Finalize,
    /// Finalized already; other finalizers hold it.
    Wait,
}

pub fn step(ns: &Value, remaining: usize) -> Step {
    if ns["metadata"]
        .get("deletionTimestamp")
        .is_none_or(Value::is_null)
    {
        return Step::Keep;
    }
    let ours = ns["spec"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "kubernetes"));
    match (remaining, ours) {
        (0, true) => Step::Finalize,
        (0, false) => Step::Wait,
        (_, _) => Step::DeleteContent,
    }
}

/// Watch namespaces forever and finalize the ones being deleted.
pub async fn run<S: ObjectStore>(api: Arc<Api<S>>) {
    loop {
        if let Err(e) = pass(&api).await {
            tracing::warn!(error = %e, "namespace controller pass failed");
        }
        // Wake on any namespace change, or every few seconds while content drains.
        let Some(kind) = kinds::by_resource("", "v1", "namespaces") else {
            return;
        };
        if let Ok(w) = api.store.watch(
            &kind.resource(),
            None,
            WatchFrom::Revision(api.store.revision()),
        ) {
            let mut events = w.events;
            let _ = tokio::time::timeout(Duration::from_secs(2), events.next()).await;
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

async fn pass<S: ObjectStore>(api: &Arc<Api<S>>) -> Result<(), ApiError> {
    let Some(ns_kind) = kinds::by_resource("", "v1", "namespaces") else {
        return Ok(());
    };
    let listing = api
        .store
        .list(&ns_kind.resource(), None, ReadMode::Stale)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    for b in listing.items {
        let Ok(ns) = serde_json::from_slice::<Value>(&b) else {
            continue;
        };
        if ns["metadata"]
            .get("deletionTimestamp")
            .is_none_or(Value::is_null)
        {
            continue;
        }
        let name = ns["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let remaining = delete_content(api, &name).await?;
        match step(&ns, remaining) {
            Step::Finalize => {
                let route = ResourceRoute {
                    kind: ns_kind,
                    namespace: None,
                    name: Some(name.clone()),
                    subresource: Some("finalize".into()),
                };
                let mut body = ns.clone();
                body["spec"]["finalizers"] = json!([]);
                match api
                    .update(&route, &Query::default(), body, "kith-namespace-controller")
                    .await
                {
                    Ok(_) | Err(ApiError::NotFound(_)) | Err(ApiError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
                tracing::info!(namespace = %name, "namespace finalized");
            }
            Step::Keep | Step::DeleteContent | Step::Wait => {}
        }
    }
    Ok(())
}

/// Ask every namespaced object in `ns` to go; returns how many still exist afterwards.
async fn delete_content<S: ObjectStore>(api: &Arc<Api<S>>, ns: &str) -> Result<usize, ApiError> {
    let mut remaining = 0;
    for kind in KINDS.iter().filter(|k| k.namespaced) {
        let route = ResourceRoute {
            kind,
            namespace: Some(ns.to_string()),
            name: None,
            subresource: None,
        };
        let listing = api
            .store
            .list(&kind.resource(), Some(ns), ReadMode::Stale)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if listing.items.is_empty() {
            continue;
        }
        api.delete_collection(&route, &Query::default(), &DeleteOptions::default())
            .await?;
        remaining += api
            .store
            .list(&kind.resource(), Some(ns), ReadMode::Stale)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .items
            .len();
    }
    Ok(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        let active = json!({"metadata": {"name": "a"}, "spec": {"finalizers": ["kubernetes"]}});
        let deleting = json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"finalizers": ["kubernetes"]}});
        let finalized = json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["x"]}, "spec": {"finalizers": []}});
        let table = [
            (&active, 0, Step::Keep),
            (&active, 5, Step::Keep),
            (&deleting, 3, Step::DeleteContent),
            (&deleting, 0, Step::Finalize),
            (&finalized, 0, Step::Wait),
        ];
        for (ns, remaining, want) in table {
            assert_eq!(step(ns, remaining), want, "{ns} {remaining}");
        }
    }
}
