//! kill -9 in the middle of a stream of writes loses no acknowledged write.
//!
//! ```text
//!  parent test ──spawns──▶ this test binary, `crash_writer_child` (env selects the dir)
//!       │                     opens the store, 32 writers, prints "ACK name rv" after
//!       │◀── stdout lines ──── each write() returned Ok
//!       ├── SIGKILL after some acks, reads what was already in the pipe
//!       └── reopens the same dir: every acked name is there with the same rv
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use kith_api::store::{ObjectKey, ObjectStore, ReadMode, Resource, WriteOp};
use kith_control::store::{RaftStore, StoreConfig};
use serde_json::json;
use tempfile::TempDir;

const DIR_ENV: &str = "KITH_STORE_CRASH_DIR";
const ROUND_ENV: &str = "KITH_STORE_CRASH_ROUND";
const WRITERS: usize = 32;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Resource::new("", "configmaps"), "default", name)
}

fn config(dir: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(1, "in-process:1", dir);
    // Small enough that some rounds crash around snapshots and log purges. Counted in
    // Raft entries, and 32 writers share entries (about 10-30 writes each).
    config.snapshot_logs_since_last = 10;
    config.max_in_snapshot_log_to_keep = 3;
    config
}

fn rv(b: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(b).expect("json");
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion")
}

/// The child half: does nothing unless the parent selected it through the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_writer_child() {
    let (Ok(dir), Ok(round)) = (std::env::var(DIR_ENV), std::env::var(ROUND_ENV)) else {
        return;
    };
    let store = RaftStore::open(config(Path::new(&dir)))
        .await
        .expect("child open");
    println!("READY");
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let round = round.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("r{round}-w{w}-{i}");
                let op = WriteOp::Create {
                    key: key(&name),
                    object: json!({"metadata": {"name": name, "namespace": "default"}}).into(),
                };
                let b = store.write(op).await.expect("child write");
                // One write per line, flushed at once: what reached the pipe was acked.
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {name} {}", rv(&b)).expect("stdout");
                out.flush().expect("flush");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn run_child_and_kill(
    exe: &Path,
    dir: &Path,
    round: usize,
    kill_after: usize,
) -> Vec<(String, u64)> {
    // Beside the store, not in it: shown if the child dies on its own.
    let log_path = dir.with_extension(format!("child-{round}.log"));
    let log = std::fs::File::create(&log_path).expect("child log");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    let mut killed = false;
    for line in lines.by_ref() {
        let line = line.expect("read child line");
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (name, rv) = rest.split_once(' ').expect("ACK name rv");
            acked.push((name.to_string(), rv.parse().expect("rv")));
            if acked.len() == kill_after {
                // SIGKILL: no destructor, no redb close, no flush of anything in flight.
                child.kill().expect("kill -9");
                killed = true;
                break;
            }
        }
    }
    if !killed {
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!(
            "child ended before {kill_after} acks ({} seen); its stderr:\n{log}",
            acked.len()
        );
    }
    let _ = std::fs::remove_file(&log_path);
    // Acks already in the pipe were acknowledged before the kill too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("ACK ") {
            if let Some((name, rv)) = rest.split_once(' ') {
                if let Ok(rv) = rv.parse() {
                    acked.push((name.to_string(), rv));
                }
            }
        }
    }
    let status = child.wait().expect("wait child");
    assert!(
        !status.success(),
        "child was killed, not finished: {status:?}"
    );
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let exe: PathBuf = std::env::current_exe().expect("test binary");
    let dir = TempDir::new().expect("tempdir");
    let mut all: Vec<(String, u64)> = Vec::new();
    for (round, kill_after) in [150usize, 400, 90, 700].into_iter().enumerate() {
        let acked = {
            let exe = exe.clone();
            let path = dir.path().to_path_buf();
            tokio::task::spawn_blocking(move || run_child_and_kill(&exe, &path, round, kill_after))
                .await
                .expect("child runner")
        };
        all.extend(acked.iter().cloned());

        // The ordinary open: no repair step of ours, whatever redb does inside.
        let started = std::time::Instant::now();
        let store = RaftStore::open(config(dir.path()))
            .await
            .expect("reopen after kill -9");
        let open_ms = started.elapsed().as_millis();
        let stats = store.log_stats();
        let m = store.metrics();
        eprintln!(
            "round {round}: {} acks this round, {} in all; reopened at revision {} in {open_ms}ms; redb recovery ran: {}; \
             snapshot {:?}, purged {:?}",
            acked.len(),
            all.len(),
            store.revision(),
            stats.repaired_on_open,
            m.snapshot.map(|s| s.index),
            m.purged.map(|p| p.index)
        );
        let max_rv = all.iter().map(|(_, rv)| *rv).max().unwrap_or(0);
        assert!(
            store.revision() >= max_rv,
            "revision {} below an acked {max_rv}",
            store.revision()
        );
        for (name, want) in &all {
            let got = store
                .get(&key(name), ReadMode::Linearizable)
                .await
                .unwrap_or_else(|e| panic!("acknowledged {name} (rv {want}) lost: {e}"));
            assert_eq!(
                rv(&got),
                *want,
                "{name} came back with another resourceVersion"
            );
        }
        store.shutdown().await.expect("shutdown");
    }
}
