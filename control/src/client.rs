//! In-process Kubernetes clients: a `kube::Client` whose requests go straight into the
//! API service, with no socket and no TLS. Controllers and the scheduler use it, so they
//! speak exactly the API that kubectl speaks (architecture invariant 2).
//!
//! ```text
//!  kube::Api<Pod> ──▶ tower service_fn ──▶ ApiService::handle(req, trusted peer) ──▶ ObjectStore
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use kith_api::auth::User;
use kith_api::server::{ApiService, Peer};
use kith_api::store::ObjectStore;

/// A client acting as `user` against `service`.
pub fn in_process<S: ObjectStore>(service: Arc<ApiService<S>>, user: User) -> kube::Client {
    let peer = Arc::new(Peer {
        cert: None,
        trusted: Some(user),
    });
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let service = service.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(service.handle(req, &peer).await) }
    });
    kube::Client::new(svc, "default")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kith_api::auth::{Authenticator, MASTERS_GROUP};
    use kith_api::handler::Api;
    use kith_api::store::memory::MemoryStore;
    use kube::api::{ObjectMeta, PostParams};
    use kube::runtime::{watcher, WatchStreamExt};

    #[tokio::test]
    async fn kube_rs_works_in_process() {
        let svc = ApiService::new(
            Arc::new(Api::new(MemoryStore::default())),
            Authenticator::new([]),
        );
        let client = in_process(svc, User::new("test", [MASTERS_GROUP]));
        let nss: kube::Api<Namespace> = kube::Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        nss.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
        let mut events = watcher(cms.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("c".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = cms
            .create(&PostParams::default(), &cm)
            .await
            .expect("create");
        assert!(created.metadata.uid.is_some());
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), events.try_next())
            .await
            .expect("watch event in time")
            .expect("watch ok")
            .expect("an object");
        assert_eq!(seen.metadata.name.as_deref(), Some("c"));
        let missing = cms.get("nope").await.expect_err("not found");
        assert!(matches!(missing, kube::Error::Api(s) if s.code == 404));
    }
}
