//! Keeping a local copy of a resource for a control loop: a kube-rs reflector that fills a
//! store from a watch and wakes its owner on every change, so loops that decide over a
//! whole snapshot (the scheduler, node lifecycle) share one way of watching.
//!
//! ```text
//!  Api<K> ──watch──▶ reflector ──▶ Store<K> (read by the loop)
//!                        └──────▶ Notify  (wakes the loop)
//! ```

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::Notify;

/// Fill `writer` from a watch of `api` forever, waking `wake` on every event; `what` names
/// the owner in logs. Watch errors are retried with kube-rs' default back-off.
pub async fn mirror<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    wake: Arc<Notify>,
    what: &'static str,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .boxed();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        if let Err(e) = ev {
            tracing::debug!(error = %e, owner = what, "watch error, retrying");
        }
        wake.notify_one();
    }
}
