//! Acknowledged writes survive `kill -9`: 32 kube-rs clients create ConfigMaps as fast as
//! they can; kith is killed with SIGKILL in the middle; after a plain start on the same
//! data directory (no repair step) every create that was answered 201 is there with the
//! resourceVersion it was answered with.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kith_e2e::Cluster;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::ResourceExt;

const WRITERS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let mut cluster = Cluster::up()
        .await
        .unwrap_or_else(|e| panic!("kith did not start: {e:#}"));
    let result = kill9_body(&mut cluster).await;
    cluster.check(result);
}

async fn kill9_body(c: &mut Cluster) -> Result<()> {
    let ns = c.namespace("kill9").await?;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let api: Api<ConfigMap> = Api::namespaced(c.client().await?, &ns);
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{i}");
                i += 1;
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    data: Some([("payload".to_string(), "x".repeat(512))].into()),
                    ..Default::default()
                };
                let pp = PostParams::default();
                let call = api.create(&pp, &cm);
                match tokio::time::timeout(Duration::from_secs(10), call).await {
                    Ok(Ok(created)) => {
                        let rv = created.resource_version().unwrap_or_default();
                        acked.lock().expect("lock").push((name, rv));
                    }
                    // The server is gone (killed): stop writing.
                    Ok(Err(_)) | Err(_) => break,
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked_before_kill = acked.lock().expect("lock").len();
    c.kill9().await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        tokio::time::timeout(Duration::from_secs(20), w).await??;
    }
    let acked = acked.lock().expect("lock").clone();
    if acked_before_kill < WRITERS {
        bail!("only {acked_before_kill} writes were acknowledged in 3 s: too few to test");
    }
    let rvs: HashSet<&str> = acked.iter().map(|(_, rv)| rv.as_str()).collect();
    if rvs.len() != acked.len() || rvs.contains("") {
        bail!("acknowledged creates must each get their own resourceVersion");
    }

    // Plain start on the same directory: it must come up and serve.
    c.start().await?;
    let api: Api<ConfigMap> = Api::namespaced(c.client().await?, &ns);
    let present: BTreeMap<String, String> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|cm| (cm.name_any(), cm.resource_version().unwrap_or_default()))
        .collect();
    let mut lost = Vec::new();
    for (name, rv) in &acked {
        match present.get(name) {
            None => lost.push(format!("{name} (rv {rv}) is missing")),
            Some(rv2) if rv2 != rv => lost.push(format!("{name}: rv {rv} became {rv2}")),
            Some(_) => {}
        }
    }
    if !lost.is_empty() {
        bail!(
            "{} of {} acknowledged writes lost or changed after kill -9:\n{}",
            lost.len(),
            acked.len(),
            lost.iter().take(50).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!(
        "{} acknowledged creates from {WRITERS} clients, all present after kill -9",
        acked.len()
    );

    // And it keeps accepting writes.
    api.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some("after-kill".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}
