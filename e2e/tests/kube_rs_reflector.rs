//! A kube-rs reflector keeps a correct cache across `410 Expired`: kith runs with a watch
//! history of 20 writes; the reflector stops being polled long enough for its watch to
//! end (timeoutSeconds=1) and for 29 more writes to happen, so resuming from its last
//! resourceVersion is too old. It must relist and end up equal to a fresh list.

use std::collections::BTreeMap;
use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kith_e2e::{Cluster, Options};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::WatchEvent;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

fn configmap(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some([("n".to_string(), "0".to_string())].into()),
        ..Default::default()
    }
}

fn cache(store: &Store<ConfigMap>) -> BTreeMap<String, String> {
    store
        .state()
        .iter()
        .map(|cm| (cm.name_any(), cm.resource_version().unwrap_or_default()))
        .collect()
}

async fn listed(api: &Api<ConfigMap>) -> Result<BTreeMap<String, String>> {
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|cm| (cm.name_any(), cm.resource_version().unwrap_or_default()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_relists_after_410_and_matches_a_fresh_list() {
    let cluster = Cluster::up_with(Options {
        watch_history: Some(20),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("kith did not start: {e:#}"));
    cluster.check(reflector_body(&cluster).await);
}

async fn reflector_body(c: &Cluster) -> Result<()> {
    let ns = c.namespace("reflector").await?;
    let api: Api<ConfigMap> = Api::namespaced(c.client().await?, &ns);
    for i in 0..5 {
        api.create(&PostParams::default(), &configmap(&format!("cm-{i}")))
            .await?;
    }

    let (reader, writer) = reflector::store::<ConfigMap>();
    let mut stream = pin!(reflector::reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().timeout(1)),
    ));
    let mut inits = 0;
    let mut errors = Vec::new();

    // Consume until the cache holds the five objects.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cache(&reader).len() < 5 {
        match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Ok(Some(Ok(watcher::Event::Init))) => inits += 1,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => errors.push(e.to_string()),
            Ok(None) => bail!("watcher stream ended"),
            Err(_) => bail!(
                "reflector did not list the 5 ConfigMaps within 20 s; cache {:?}, errors {errors:?}",
                cache(&reader)
            ),
        }
    }
    let old_rv = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version;
    let old_rv = old_rv.unwrap_or_default();

    // Stop polling: the server ends the watch after timeoutSeconds=1; then 29 writes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 5..20 {
        api.create(&PostParams::default(), &configmap(&format!("cm-{i}")))
            .await?;
    }
    for round in 1..=4 {
        for name in ["cm-0", "cm-2", "cm-4"] {
            let patch = serde_json::json!({"data": {"n": round.to_string()}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    for name in ["cm-1", "cm-3"] {
        api.delete(name, &DeleteParams::default()).await?;
    }

    // A watch from the old resourceVersion is told 410 Expired, as an ERROR event in a
    // 200 stream (an HTTP-level 410 would leave kube-rs watchers retrying forever).
    match api
        .watch(&kube::api::WatchParams::default().timeout(5), &old_rv)
        .await
    {
        Err(e) => bail!(
            "watch from compacted resourceVersion {old_rv}: request failed ({e}); \
             expected 200 with an ERROR event carrying a 410 Status"
        ),
        Ok(events) => {
            let mut events = pin!(events);
            match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
                Ok(Some(Ok(WatchEvent::Error(status)))) if status.code == 410 => {
                    if status.reason != "Expired" && status.reason != "Gone" {
                        bail!("410 watch error with reason {:?}", status.reason);
                    }
                }
                other => bail!(
                    "watch from compacted resourceVersion {old_rv} after 29 writes with \
                     --watch-history 20: expected an ERROR event with code 410, got {other:?}"
                ),
            }
        }
    }

    // Resume: the reflector must relist and converge on the truth.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let truth = listed(&api).await?;
        if cache(&reader) == truth && inits >= 2 {
            break;
        }
        match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Ok(Some(Ok(watcher::Event::Init))) => inits += 1,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => errors.push(e.to_string()),
            Ok(None) => bail!("watcher stream ended"),
            Err(_) => bail!(
                "reflector did not converge within 30 s (relists seen: {inits}, expected a \
                 second one after the 410)\ncache: {:?}\ntruth: {truth:?}\nerrors: {errors:?}",
                cache(&reader)
            ),
        }
    }
    let truth = listed(&api).await?;
    if truth.len() != 18 || truth.contains_key("cm-1") || !truth.contains_key("cm-19") {
        bail!("unexpected final set of ConfigMaps: {truth:?}");
    }
    let cm0 = reader
        .state()
        .into_iter()
        .find(|cm| cm.name_any() == "cm-0")
        .map(|cm| cm.data.clone().unwrap_or_default());
    if cm0.and_then(|d| d.get("n").cloned()).as_deref() != Some("4") {
        bail!("cached cm-0 lacks the last update");
    }
    Ok(())
}
