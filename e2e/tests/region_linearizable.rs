//! A linearizability check of a three-box region under faults. Clients increment counters
//! (ConfigMaps) by read-modify-write with resourceVersion preconditions through every box,
//! while the leader is killed twice and a box is cut off and healed. Checked:
//! - every acknowledged increment is in the final value, and nothing else is except writes
//!   whose outcome the client was told is unknown: acked ≤ final ≤ acked + unknown;
//! - no read goes back in time: a read started after an increment was acknowledged (to
//!   anyone) sees it;
//! - every watch (one per box, resuming on another box from its last resourceVersion when
//!   its box dies) sees each counter's values in order, one by one, without gaps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kith_e2e::region::Region;
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};

const BOXES: [&str; 3] = ["c1", "c2", "c3"];
const COUNTERS: usize = 4;
const CLIENTS: usize = 6;

fn counter_name(i: usize) -> String {
    format!("counter-{i}")
}

fn value_of(cm: &ConfigMap) -> Result<u64> {
    cm.data
        .as_ref()
        .and_then(|d| d.get("n"))
        .context("no n")?
        .parse()
        .context("n is a number")
}

/// What the clients learned, shared.
#[derive(Default)]
struct Ledger {
    /// Increments acknowledged, per counter.
    acked: Vec<u64>,
    /// Increments whose outcome is unknown (503, timeout, connection lost).
    unknown: Vec<u64>,
    /// The highest value acknowledged to anyone, per counter.
    highest_acked: Vec<u64>,
    reads: u64,
    conflicts: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_stay_linearizable_through_kills_and_partitions() {
    let mut region = Region::new("lin", &BOXES, &[]).expect("lab");
    if let Err(e) = run(&mut region).await {
        panic!("{e:#}");
    }
}

async fn run(region: &mut Region) -> Result<()> {
    region.found("c1").await?;
    region.join("c2", "c1").await?;
    region.join("c3", "c1").await?;
    let mut clients = BTreeMap::new();
    for b in BOXES {
        clients.insert(b.to_string(), region.client(b).await?);
    }
    let first: Api<ConfigMap> = Api::namespaced(clients["c1"].clone(), "default");
    for i in 0..COUNTERS {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(counter_name(i)),
                ..Default::default()
            },
            data: Some([("n".to_string(), "0".to_string())].into()),
            ..Default::default()
        };
        first.create(&PostParams::default(), &cm).await?;
    }
    let start_rv = first
        .get(&counter_name(COUNTERS - 1))
        .await?
        .metadata
        .resource_version
        .context("rv")?;

    let ledger = Arc::new(Mutex::new(Ledger {
        acked: vec![0; COUNTERS],
        unknown: vec![0; COUNTERS],
        highest_acked: vec![0; COUNTERS],
        ..Default::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = Arc::new(clients);

    let mut watchers = Vec::new();
    for (i, b) in BOXES.iter().enumerate() {
        watchers.push(tokio::spawn(watch_counters(
            clients.clone(),
            i,
            start_rv.clone(),
            stop.clone(),
            b.to_string(),
        )));
    }
    let mut workers = Vec::new();
    for c in 0..CLIENTS {
        workers.push(tokio::spawn(increment(
            clients.clone(),
            c,
            ledger.clone(),
            stop.clone(),
        )));
    }

    // Faults: two leader kills and a partition, with writes going on throughout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let leader = region.leader(&[]).await?;
    region.kill9(&leader)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    region.restart(&leader).await?;
    let leader = region.leader(&[]).await?;
    let follower = BOXES
        .into_iter()
        .find(|b| *b != leader)
        .context("a follower")?;
    let others: Vec<&str> = BOXES.into_iter().filter(|b| *b != follower).collect();
    region.lab.partition(follower, &others)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    region.lab.heal(follower)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = region.leader(&[]).await?;
    region.kill9(&leader)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    region.restart(&leader).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }

    // Final values: the same on every box, and within what the clients were told.
    let mut finals = Vec::new();
    for i in 0..COUNTERS {
        let mut seen = Vec::new();
        for b in BOXES {
            let api: Api<ConfigMap> = Api::namespaced(clients[b].clone(), "default");
            seen.push(value_of(&api.get(&counter_name(i)).await?)?);
        }
        ensure!(
            seen.iter().all(|v| *v == seen[0]),
            "boxes disagree on counter {i}: {seen:?}"
        );
        finals.push(seen[0]);
    }
    let (acked, unknown) = {
        let l = ledger.lock().expect("ledger");
        eprintln!(
            "finals {finals:?}; acked {:?}; unknown {:?}; {} reads, {} conflicts",
            l.acked, l.unknown, l.reads, l.conflicts
        );
        (l.acked.clone(), l.unknown.clone())
    };
    ensure!(
        acked.iter().sum::<u64>() >= 20,
        "too few increments to mean anything"
    );
    for (i, ((fin, ack), unk)) in finals.iter().zip(&acked).zip(&unknown).enumerate() {
        ensure!(
            ack <= fin && *fin <= ack + unk,
            "counter {i}: final {fin} but {ack} acknowledged and {unk} unknown"
        );
    }
    // Every watch reaches the final values (each checked its own sequence as it went).
    for (i, w) in watchers.into_iter().enumerate() {
        let last = w.await??;
        ensure!(
            last == finals,
            "watch {i} ended at {last:?}, the store at {finals:?}"
        );
    }
    Ok(())
}

/// One client: read a counter through one box, write it + 1 with the read's
/// resourceVersion through the next. Checks reads against what was acknowledged before
/// the read began.
async fn increment(
    clients: Arc<BTreeMap<String, kube::Client>>,
    me: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let boxes: Vec<&String> = clients.keys().collect();
    let mut turn = me;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let i = turn % COUNTERS;
        let read_box = boxes[turn % boxes.len()];
        let write_box = boxes[(turn + 1) % boxes.len()];
        let floor = ledger.lock().expect("ledger").highest_acked[i];
        let api: Api<ConfigMap> = Api::namespaced(clients[read_box].clone(), "default");
        let read =
            match tokio::time::timeout(Duration::from_secs(12), api.get(&counter_name(i))).await {
                Ok(Ok(cm)) => cm,
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
        let value = value_of(&read)?;
        {
            let mut l = ledger.lock().expect("ledger");
            l.reads += 1;
            if value < floor {
                bail!(
                    "a read through {read_box} went back in time: counter {i} = {value}, but {floor} was acknowledged before the read began"
                );
            }
        }
        let mut next = read.clone();
        next.data = Some([("n".to_string(), (value + 1).to_string())].into());
        let api: Api<ConfigMap> = Api::namespaced(clients[write_box].clone(), "default");
        let result = tokio::time::timeout(
            Duration::from_secs(12),
            api.replace(&counter_name(i), &PostParams::default(), &next),
        )
        .await;
        let mut l = ledger.lock().expect("ledger");
        match result {
            Ok(Ok(_)) => {
                l.acked[i] += 1;
                l.highest_acked[i] = l.highest_acked[i].max(value + 1);
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => l.conflicts += 1,
            // Refused before it could be applied: a timeout or 503 may have been applied.
            Ok(Err(kube::Error::Api(s))) if s.code == 422 || s.code == 400 => {
                bail!("a valid update refused: {s:?}")
            }
            _ => l.unknown[i] += 1,
        }
    }
    Ok(())
}

/// Watch every counter, starting on box `first` from `from`; on any break, resume on the
/// next box from the last resourceVersion seen. Each counter must go up by exactly one
/// per event. Returns the last value of each counter once `stop` is set and the values
/// stopped changing.
async fn watch_counters(
    clients: Arc<BTreeMap<String, kube::Client>>,
    first: usize,
    from: String,
    stop: Arc<AtomicBool>,
    name: String,
) -> Result<Vec<u64>> {
    let boxes: Vec<&String> = clients.keys().collect();
    let mut values = vec![0u64; COUNTERS];
    let mut rv = from;
    let mut turn = first;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let api: Api<ConfigMap> =
            Api::namespaced(clients[boxes[turn % boxes.len()]].clone(), "default");
        let params = WatchParams::default().timeout(5);
        let stream = match api.watch(&params, &rv).await {
            Ok(s) => s,
            Err(_) => {
                turn += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut stream = stream.boxed();
        let mut got_any = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(6), stream.try_next()).await {
                Ok(Ok(Some(WatchEvent::Added(cm) | WatchEvent::Modified(cm)))) => {
                    got_any = true;
                    let Some(n) = cm.metadata.name.as_deref() else {
                        continue;
                    };
                    let Some(i) = (0..COUNTERS).find(|i| counter_name(*i) == n) else {
                        continue;
                    };
                    let v = value_of(&cm)?;
                    ensure!(
                        v == values[i] + 1 || (v == 0 && values[i] == 0),
                        "watch {name}: counter {i} went {} → {v} (a gap or out of order)",
                        values[i]
                    );
                    values[i] = v;
                    rv = cm.metadata.resource_version.clone().unwrap_or(rv);
                }
                Ok(Ok(Some(WatchEvent::Bookmark(b)))) => rv = b.metadata.resource_version,
                Ok(Ok(Some(WatchEvent::Error(e)))) => {
                    bail!("watch {name}: error event {e:?} (resumed from {rv})")
                }
                Ok(Ok(Some(WatchEvent::Deleted(_)))) => {
                    bail!("watch {name}: a counter was deleted")
                }
                // The stream ended (server timeout) or broke (box died): resume elsewhere.
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            }
        }
        if stop.load(Ordering::Relaxed) {
            if got_any {
                quiet_since = None;
            }
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(6) {
                return Ok(values);
            }
        }
        turn += 1;
    }
}
