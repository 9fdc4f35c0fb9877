//! What the API server asks of this box, answered from the agent's own files and runtime:
//! `pods/log`, `pods/exec` and `pods/attach`.
//!
//! ```text
//!  kith_api::nodes::NodeConnector::logs(target, query)
//!        │ <root>/logs/<ns>_<pod>_<uid>/<container>/<attempt>.log  (newest, or the one before)
//!        ▼
//!  runtime::logs::read / follow (until the attempt exits) ─► byte stream
//!
//!  kith_api::exec::NodeExec::exec(target)
//!        │ the newest Running attempt of the container (runtime.list())
//!        ▼
//!  ContainerRuntime::exec ─► stdin / stdout / stderr / exit code
//!  ContainerRuntime::attach (an ExecTarget without a command) ─► live output, stdin
//! ```
//! The API server calls this in-process for the agent of `kith up`, and through the node's
//! HTTPS port ([`crate::node_server`]) for agents on other boxes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_api::error::ApiError;
use kith_api::exec::{ExecStreams, ExecTarget, NodeExec, TermSize};
use kith_api::nodes::{ByteStream, LogQuery, LogTarget, NodeConnector};

use crate::runtime::logs::{self, LogOptions};
use crate::runtime::pty::WinSize;
use crate::runtime::{ContainerKey, ContainerRuntime, ContainerState, ExecRequest, RuntimeError};

/// Serves this node's logs from `root` (the agent's data dir).
pub struct LocalNode<R> {
    node: String,
    root: PathBuf,
    runtime: Arc<R>,
}

impl<R: ContainerRuntime + 'static> LocalNode<R> {
    pub fn new(node: String, root: PathBuf, runtime: Arc<R>) -> Self {
        LocalNode {
            node,
            root,
            runtime,
        }
    }

    /// Whether `attempt` of the target container is running now.
    async fn running(&self, t: &LogTarget, attempt: u32) -> bool {
        self.runtime.list().await.is_ok_and(|all| {
            running_attempts(&all, &t.uid, &t.container).any(|k| k.attempt == attempt)
        })
    }

    fn container_dir(&self, t: &LogTarget) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{}_{}_{}", t.namespace, t.pod, t.uid))
            .join(&t.container)
    }
}

/// The Running attempts of `container` of pod `uid`.
fn running_attempts<'a>(
    all: &'a [crate::runtime::ContainerStatus],
    uid: &'a str,
    container: &'a str,
) -> impl Iterator<Item = &'a ContainerKey> {
    all.iter()
        .filter(move |s| {
            s.key.pod_uid == uid
                && s.key.container == container
                && matches!(s.state, ContainerState::Running { .. })
        })
        .map(|s| &s.key)
}

/// The running attempt of `container` of pod `uid`: the newest Running one.
fn running_attempt(
    all: &[crate::runtime::ContainerStatus],
    uid: &str,
    container: &str,
) -> Option<ContainerKey> {
    running_attempts(all, uid, container)
        .max_by_key(|k| k.attempt)
        .cloned()
}

/// The Status for a runtime error of an exec: the caller's mistakes are 400s.
fn exec_error(e: RuntimeError) -> ApiError {
    match e {
        RuntimeError::Unsupported(what) => {
            ApiError::BadRequest(format!("{what} is not supported by this node"))
        }
        RuntimeError::NotFound(_) | RuntimeError::Spec(_) | RuntimeError::InvalidKey(_) => {
            ApiError::BadRequest(e.to_string())
        }
        other => ApiError::Internal(format!("exec: {other}")),
    }
}

impl<R: ContainerRuntime + 'static> LocalNode<R> {
    /// The running attempt an exec goes to, or the 400 saying why there is none.
    async fn exec_key(&self, target: &ExecTarget) -> Result<ContainerKey, ApiError> {
        if target.pod.node != self.node {
            // The API server routes by node; a mismatch means it took us for another.
            return Err(ApiError::BadRequest(format!(
                "exec in pods on node {} asked of node {}",
                target.pod.node, self.node
            )));
        }
        let all = self
            .runtime
            .list()
            .await
            .map_err(|e| ApiError::Internal(format!("listing containers: {e}")))?;
        let t = &target.pod;
        running_attempt(&all, &t.uid, &t.container).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "container {} is not running in pod {}",
                t.container, t.pod
            ))
        })
    }
}

impl<R: ContainerRuntime + 'static> NodeExec for LocalNode<R> {
    fn check(
        &self,
        target: &ExecTarget,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + '_>> {
        let target = target.clone();
        Box::pin(async move { self.exec_key(&target).await.map(drop) })
    }

    fn exec(
        &self,
        target: ExecTarget,
    ) -> Pin<Box<dyn Future<Output = Result<ExecStreams, ApiError>> + Send + '_>> {
        Box::pin(async move {
            let key = self.exec_key(&target).await?;
            let session = if target.command.is_empty() {
                // pods/attach: no command, the container's own process (whose terminal,
                // if it has one, the runtime knows).
                self.runtime.attach(&key, target.stdin).await
            } else {
                self.runtime
                    .exec(
                        &key,
                        ExecRequest {
                            command: target.command,
                            tty: target.tty,
                            stdin: target.stdin,
                            timeout: None,
                        },
                    )
                    .await
            }
            .map_err(exec_error)?;
            let exit_code = session.exit_code;
            Ok(ExecStreams {
                stdin: session.stdin,
                stdout: session.stdout,
                stderr: session.stderr,
                resize: session.resize.map(forward_sizes),
                exit_code: Box::pin(async move { exit_code.await.map_err(|e| e.to_string()) }),
            })
        })
    }
}

/// The API's terminal sizes, handed on to the runtime's session for as long as both
/// ends are there.
fn forward_sizes(to: tokio::sync::mpsc::Sender<WinSize>) -> tokio::sync::mpsc::Sender<TermSize> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TermSize>(8);
    tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            let size = WinSize {
                cols: s.width,
                rows: s.height,
            };
            if to.send(size).await.is_err() {
                return;
            }
        }
    });
    tx
}

/// The attempts that have a log file in `dir`, oldest first.
fn attempts(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

fn options(q: &LogQuery) -> LogOptions {
    let since = match (q.since_time, q.since_seconds) {
        (Some(t), _) => Some(t),
        (None, Some(s)) => jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(s))
            .ok(),
        (None, None) => None,
    };
    LogOptions {
        tail_lines: q.tail_lines.map(|n| n.max(0) as usize),
        since,
        timestamps: q.timestamps,
        limit_bytes: q.limit_bytes.map(|n| n.max(1) as usize),
    }
}

impl<R: ContainerRuntime + 'static> NodeConnector for LocalNode<R> {
    fn logs(
        &self,
        target: LogTarget,
        q: LogQuery,
    ) -> Pin<Box<dyn Future<Output = Result<ByteStream, ApiError>> + Send + '_>> {
        Box::pin(async move {
            if target.node != self.node {
                // The API server routes by node; a mismatch means it took us for another.
                return Err(ApiError::BadRequest(format!(
                    "logs of pods on node {} asked of node {}",
                    target.node, self.node
                )));
            }
            let dir = self.container_dir(&target);
            let all = attempts(&dir);
            // As the kubelet: `--previous` is the last terminated attempt — the newest one
            // when it is not running (crash back-off), else the one before.
            let chosen = if q.previous {
                let newest_running = match all.last() {
                    Some(&n) => self.running(&target, n).await,
                    None => false,
                };
                let back = if newest_running { 2 } else { 1 };
                all.len().checked_sub(back).map(|i| all[i])
            } else {
                all.last().copied()
            };
            let Some(attempt) = chosen else {
                return Err(ApiError::BadRequest(if q.previous {
                    format!(
                        "previous terminated container \"{}\" in pod \"{}\" not found",
                        target.container, target.pod
                    )
                } else {
                    format!(
                        "container \"{}\" in pod \"{}\" is waiting to start: ContainerCreating",
                        target.container, target.pod
                    )
                }));
            };
            let path = dir.join(format!("{attempt}.log"));
            let opts = options(&q);
            if !q.follow || q.previous {
                let text = tokio::task::spawn_blocking(move || logs::read(&path, &opts))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .map_err(|e| ApiError::Internal(format!("reading the log: {e}")))?;
                let once = futures::stream::once(async move { Ok(Bytes::from(text)) });
                return Ok(Box::pin(once) as ByteStream);
            }
            // Follow until this attempt is no longer running.
            let me = LocalNode {
                node: self.node.clone(),
                root: self.root.clone(),
                runtime: self.runtime.clone(),
            };
            let done = async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if !me.running(&target, attempt).await {
                        return;
                    }
                }
            };
            Ok(Box::pin(logs::follow(path, opts, done)) as ByteStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerStatus, ExitReason};

    fn status(uid: &str, container: &str, attempt: u32, running: bool) -> ContainerStatus {
        let now = jiff::Timestamp::now();
        ContainerStatus {
            key: ContainerKey {
                pod_uid: uid.into(),
                container: container.into(),
                attempt,
            },
            state: if running {
                ContainerState::Running {
                    pid: 1,
                    started_at: now,
                }
            } else {
                ContainerState::Exited {
                    exit_code: 1,
                    signal: None,
                    reason: ExitReason::Error,
                    message: None,
                    started_at: None,
                    finished_at: now,
                }
            },
            image_rootfs: PathBuf::new(),
            log_path: PathBuf::new(),
        }
    }

    #[test]
    fn running_attempt_table() {
        let cases: Vec<(Vec<ContainerStatus>, Option<u32>)> = vec![
            (vec![], None),
            (vec![status("u", "c", 0, false)], None),
            (
                vec![status("u", "c", 0, true), status("u", "c", 1, false)],
                Some(0),
            ),
            (
                vec![
                    status("u", "c", 2, true),
                    status("u", "c", 1, true),
                    status("u", "other", 5, true),
                    status("v", "c", 7, true),
                ],
                Some(2),
            ),
        ];
        for (all, want) in cases {
            assert_eq!(
                running_attempt(&all, "u", "c").map(|k| k.attempt),
                want,
                "{all:?}"
            );
        }
    }

    #[test]
    fn exec_errors_map_to_status() {
        let cases: Vec<(RuntimeError, u16, &str)> = vec![
            (
                RuntimeError::Unsupported("exec with a tty and a timeout"),
                400,
                "exec with a tty and a timeout is not supported by this node",
            ),
            (
                RuntimeError::Spec("exec needs a command".into()),
                400,
                "invalid spec: exec needs a command",
            ),
            (RuntimeError::Sys("boom".into()), 500, "exec: boom"),
        ];
        for (e, code, msg) in cases {
            let api = exec_error(e);
            assert_eq!(api.code(), code);
            assert!(api.to_string().contains(msg), "{api}");
        }
    }

    #[tokio::test]
    async fn attach_targets_go_to_the_runtimes_attach() {
        use crate::runtime::fake::{Call, ExecOutcome, FakeRuntime};
        use tokio::io::AsyncReadExt;
        let rt = Arc::new(FakeRuntime::new());
        rt.insert(status("u", "c", 0, true));
        rt.script_exec(
            "c",
            ExecOutcome {
                stdout: b"live\n".to_vec(),
                ..Default::default()
            },
        );
        let node = LocalNode::new("n1".into(), PathBuf::from("/nonexistent"), rt.clone());
        let target = ExecTarget {
            pod: LogTarget {
                namespace: "ns".into(),
                pod: "p".into(),
                uid: "u".into(),
                node: "n1".into(),
                container: "c".into(),
            },
            command: vec![],
            stdin: true,
            tty: false,
        };
        node.check(&target).await.unwrap();
        let mut streams = node.exec(target.clone()).await.unwrap();
        assert!(streams.stdin.is_some());
        let mut out = String::new();
        streams.stdout.read_to_string(&mut out).await.unwrap();
        assert_eq!((out.as_str(), streams.exit_code.await), ("live\n", Ok(0)));
        let key = ContainerKey {
            pod_uid: "u".into(),
            container: "c".into(),
            attempt: 0,
        };
        assert!(rt.calls().contains(&Call::Attach(key, true)));
        assert!(!rt.calls().iter().any(|c| matches!(c, Call::Exec(..))));

        // A terminal is the runtime's business (the container has one or not): the
        // node accepts it and hands the attach on as any other.
        let tty = ExecTarget {
            tty: true,
            ..target
        };
        node.check(&tty).await.unwrap();
        node.exec(tty).await.unwrap();
        assert_eq!(
            rt.calls()
                .iter()
                .filter(|c| matches!(c, Call::Attach(..)))
                .count(),
            2
        );
    }
}
