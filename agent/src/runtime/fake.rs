//! A [`ContainerRuntime`] that runs nothing: it records every call and plays back what a
//! test scripts (start failures, exits, OOM kills), for the sync loop's tests.
//!
//! ```
//! # use kith_agent::runtime::{fake::{FakeRuntime, StartOutcome, Call}, *};
//! # tokio_test_block_on(async {
//! let rt = FakeRuntime::new();
//! rt.script_start("app", StartOutcome::Fail("exec: no such file".into()));
//! let key = ContainerKey { pod_uid: "u1".into(), container: "app".into(), attempt: 0 };
//! let req = FakeRuntime::request(key.clone());
//! assert!(rt.start(req).await.is_err());
//! assert_eq!(rt.calls(), vec![Call::Start(key)]);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

use super::{
    ContainerKey, ContainerRuntime, ContainerState, ContainerStatus, ExecRequest, ExecSession,
    ExitReason, Result, RuntimeError, StartRequest, StdinMode,
};

/// One call the fake received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start(ContainerKey),
    List,
    Stop(ContainerKey, Duration),
    Remove(ContainerKey),
    Exec(ContainerKey, Vec<String>),
    Attach(ContainerKey, bool),
}

/// What the next exec in a container (by name) prints and returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    /// The exec outlives its timeout: its exit resolves to `ExecTimeout`.
    pub timed_out: bool,
}

/// What the next start of a container (by name) does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// Starts and keeps running until [`FakeRuntime::exit`] or `stop`.
    Run,
    /// `start` returns `StartFailed` with this message; the container is listed as
    /// exited with reason StartError, as the real runtime does.
    Fail(String),
    /// Starts, then has already exited when `start` returns.
    Exit { exit_code: i32, reason: ExitReason },
}

#[derive(Debug, Default)]
struct Inner {
    containers: BTreeMap<ContainerKey, ContainerStatus>,
    calls: Vec<Call>,
    scripts: HashMap<String, VecDeque<StartOutcome>>,
    execs: HashMap<String, VecDeque<ExecOutcome>>,
    failures: HashMap<&'static str, VecDeque<String>>,
    next_pid: i32,
}

#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        FakeRuntime {
            inner: Mutex::new(Inner {
                next_pid: 1000,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request with an empty spec, for tests that only care about keys.
    pub fn request(key: ContainerKey) -> StartRequest {
        StartRequest {
            log_path: PathBuf::from(format!("/fake/logs/{}.log", key.dir_name())),
            key,
            spec: oci_spec::runtime::Spec::default(),
            image_rootfs: PathBuf::from("/fake/image"),
            stdin: StdinMode::Null,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Queues the outcome of the next start of containers named `container` (any pod).
    pub fn script_start(&self, container: &str, outcome: StartOutcome) {
        self.lock()
            .scripts
            .entry(container.to_string())
            .or_default()
            .push_back(outcome);
    }

    /// Queues what the next exec in containers named `container` does (default: no
    /// output, exit 0).
    pub fn script_exec(&self, container: &str, outcome: ExecOutcome) {
        self.lock()
            .execs
            .entry(container.to_string())
            .or_default()
            .push_back(outcome);
    }

    /// Makes the next call of `op` ("start", "list", "stop", "remove", "exec" or "attach")
    /// fail with `message`.
    pub fn fail_next(&self, op: &'static str, message: &str) {
        self.lock()
            .failures
            .entry(op)
            .or_default()
            .push_back(message.to_string());
    }

    /// A running container exits now (e.g. to simulate a crash or an OOM kill).
    pub fn exit(&self, key: &ContainerKey, exit_code: i32, reason: ExitReason) {
        let mut inner = self.lock();
        if let Some(s) = inner.containers.get_mut(key) {
            let started_at = match s.state {
                ContainerState::Running { started_at, .. } => Some(started_at),
                _ => None,
            };
            s.state = exited(exit_code, None, reason, None, started_at);
        }
    }

    /// Puts a container in the list as if an earlier agent had started it.
    pub fn insert(&self, status: ContainerStatus) {
        self.lock().containers.insert(status.key.clone(), status);
    }

    fn take_failure(inner: &mut Inner, op: &'static str) -> Option<RuntimeError> {
        let message = inner.failures.get_mut(op)?.pop_front()?;
        Some(RuntimeError::Sys(message))
    }
}

fn exited(
    exit_code: i32,
    signal: Option<i32>,
    reason: ExitReason,
    message: Option<String>,
    started_at: Option<Timestamp>,
) -> ContainerState {
    ContainerState::Exited {
        exit_code,
        signal,
        reason,
        message,
        started_at,
        finished_at: Timestamp::now(),
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn start(&self, req: StartRequest) -> Result<ContainerStatus> {
        let mut inner = self.lock();
        inner.calls.push(Call::Start(req.key.clone()));
        if let Some(e) = Self::take_failure(&mut inner, "start") {
            return Err(e);
        }
        if inner.containers.contains_key(&req.key) {
            return Err(RuntimeError::AlreadyExists(req.key.dir_name()));
        }
        let outcome = inner
            .scripts
            .get_mut(&req.key.container)
            .and_then(|q| q.pop_front())
            .unwrap_or(StartOutcome::Run);
        let now = Timestamp::now();
        inner.next_pid += 1;
        let pid = inner.next_pid;
        let state = match &outcome {
            StartOutcome::Run => ContainerState::Running {
                pid,
                started_at: now,
            },
            StartOutcome::Fail(m) => {
                exited(128, None, ExitReason::StartError, Some(m.clone()), None)
            }
            StartOutcome::Exit { exit_code, reason } => {
                exited(*exit_code, None, *reason, None, Some(now))
            }
        };
        let status = ContainerStatus {
            key: req.key.clone(),
            state,
            image_rootfs: req.image_rootfs,
            log_path: req.log_path,
        };
        inner.containers.insert(req.key.clone(), status.clone());
        match outcome {
            StartOutcome::Fail(message) => Err(RuntimeError::StartFailed {
                key: req.key.dir_name(),
                message,
            }),
            _ => Ok(status),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerStatus>> {
        let mut inner = self.lock();
        inner.calls.push(Call::List);
        if let Some(e) = Self::take_failure(&mut inner, "list") {
            return Err(e);
        }
        Ok(inner.containers.values().cloned().collect())
    }

    /// A running container ends as if SIGTERM killed it (exit 143, signal 15).
    async fn stop(&self, key: &ContainerKey, grace: Duration) -> Result<()> {
        let mut inner = self.lock();
        inner.calls.push(Call::Stop(key.clone(), grace));
        if let Some(e) = Self::take_failure(&mut inner, "stop") {
            return Err(e);
        }
        let s = inner
            .containers
            .get_mut(key)
            .ok_or_else(|| RuntimeError::NotFound(key.dir_name()))?;
        if let ContainerState::Running { started_at, .. } = s.state {
            s.state = exited(143, Some(15), ExitReason::Error, None, Some(started_at));
        }
        Ok(())
    }

    async fn remove(&self, key: &ContainerKey) -> Result<()> {
        let mut inner = self.lock();
        inner.calls.push(Call::Remove(key.clone()));
        if let Some(e) = Self::take_failure(&mut inner, "remove") {
            return Err(e);
        }
        inner.containers.remove(key);
        Ok(())
    }

    /// Plays back the container's scripted exec outcomes as its output; stdin is
    /// swallowed.
    async fn attach(&self, key: &ContainerKey, stdin: bool) -> Result<ExecSession> {
        let mut inner = self.lock();
        inner.calls.push(Call::Attach(key.clone(), stdin));
        if let Some(e) = Self::take_failure(&mut inner, "attach") {
            return Err(e);
        }
        if !matches!(
            inner.containers.get(key).map(|s| &s.state),
            Some(ContainerState::Running { .. })
        ) {
            return Err(RuntimeError::NotFound(key.dir_name()));
        }
        let outcome = inner
            .execs
            .get_mut(&key.container)
            .and_then(|q| q.pop_front())
            .unwrap_or_default();
        Ok(ExecSession {
            stdin: stdin.then(|| Box::pin(tokio::io::sink()) as _),
            stdout: Box::pin(std::io::Cursor::new(outcome.stdout)),
            stderr: Box::pin(std::io::Cursor::new(outcome.stderr)),
            resize: None,
            exit_code: Box::pin(std::future::ready(Ok(0))),
        })
    }

    async fn exec(&self, key: &ContainerKey, req: ExecRequest) -> Result<ExecSession> {
        let mut inner = self.lock();
        inner
            .calls
            .push(Call::Exec(key.clone(), req.command.clone()));
        if let Some(e) = Self::take_failure(&mut inner, "exec") {
            return Err(e);
        }
        match inner.containers.get(key).map(|s| &s.state) {
            Some(ContainerState::Running { .. }) => {}
            Some(_) => {
                return Err(RuntimeError::Sys(format!(
                    "container {} is not running",
                    key.dir_name()
                )))
            }
            None => return Err(RuntimeError::NotFound(key.dir_name())),
        }
        let outcome = inner
            .execs
            .get_mut(&key.container)
            .and_then(|q| q.pop_front())
            .unwrap_or_default();
        let stdin = req.stdin.then(|| Box::pin(tokio::io::sink()) as _);
        Ok(ExecSession {
            stdin,
            stdout: Box::pin(std::io::Cursor::new(outcome.stdout)),
            stderr: Box::pin(std::io::Cursor::new(outcome.stderr)),
            resize: None,
            exit_code: Box::pin(std::future::ready(if outcome.timed_out {
                Err(RuntimeError::ExecTimeout(req.timeout.unwrap_or_default()))
            } else {
                Ok(outcome.exit_code)
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> ContainerKey {
        ContainerKey {
            pod_uid: "u1".into(),
            container: c.into(),
            attempt: 0,
        }
    }

    #[tokio::test]
    async fn scripted_lifecycle() {
        let rt = FakeRuntime::new();
        rt.script_start(
            "job",
            StartOutcome::Exit {
                exit_code: 0,
                reason: ExitReason::Completed,
            },
        );
        rt.fail_next("stop", "boom");

        let web = rt.start(FakeRuntime::request(key("web"))).await.unwrap();
        assert!(matches!(web.state, ContainerState::Running { .. }));
        let job = rt.start(FakeRuntime::request(key("job"))).await.unwrap();
        assert!(matches!(
            job.state,
            ContainerState::Exited {
                exit_code: 0,
                reason: ExitReason::Completed,
                ..
            }
        ));
        assert!(matches!(
            rt.start(FakeRuntime::request(key("web"))).await,
            Err(RuntimeError::AlreadyExists(_))
        ));

        assert!(rt.stop(&key("web"), Duration::from_secs(1)).await.is_err());
        rt.exit(&key("web"), 137, ExitReason::OomKilled);
        let listed = rt.list().await.unwrap();
        let web = listed.iter().find(|s| s.key == key("web")).unwrap();
        assert!(matches!(
            web.state,
            ContainerState::Exited {
                exit_code: 137,
                reason: ExitReason::OomKilled,
                ..
            }
        ));

        rt.script_exec(
            "web",
            ExecOutcome {
                stdout: b"hi\n".to_vec(),
                stderr: vec![],
                exit_code: 3,
                timed_out: false,
            },
        );
        let req = ExecRequest {
            command: vec!["echo".into()],
            tty: false,
            stdin: false,
            timeout: None,
        };
        assert!(
            rt.exec(&key("web"), req.clone()).await.is_err(),
            "web has exited"
        );
        rt.insert(ContainerStatus {
            state: ContainerState::Running {
                pid: 1,
                started_at: Timestamp::now(),
            },
            ..web.clone()
        });
        let mut session = rt.exec(&key("web"), req).await.unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut session.stdout, &mut out)
            .await
            .unwrap();
        assert_eq!(
            (out.as_str(), session.exit_code.await.unwrap()),
            ("hi\n", 3)
        );

        rt.remove(&key("web")).await.unwrap();
        rt.remove(&key("web")).await.unwrap();
        assert_eq!(rt.list().await.unwrap().len(), 1);
        assert_eq!(
            rt.calls(),
            vec![
                Call::Start(key("web")),
                Call::Start(key("job")),
                Call::Start(key("web")),
                Call::Stop(key("web"), Duration::from_secs(1)),
                Call::List,
                Call::Exec(key("web"), vec!["echo".into()]),
                Call::Exec(key("web"), vec!["echo".into()]),
                Call::Remove(key("web")),
                Call::Remove(key("web")),
                Call::List,
            ]
        );
    }
}
