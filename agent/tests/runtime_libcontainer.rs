//! Real containers through LibcontainerRuntime and the `kith shim` (run as root).
//!
//! The shim is the `kith` binary: set KITH_SHIM to a copy of it, or build it first
//! (`cargo build -p kith-control`) and the tests use target/debug/kith.
//! Each test uses its own state dir, pod uid and cgroup, and removes its container even
//! when an assertion fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kith_agent::runtime::{
    ContainerKey, ContainerRuntime, ContainerState, ExitReason, LibcontainerRuntime, RuntimeConfig,
    RuntimeError, StartRequest,
};
use kith_agent::spec::{
    self, ContainerInput, ImageDefaults, NodeAllocatable, ProfileDir, SeccompInput,
};
use serde_json::json;

const CGROUP_ROOT: &str = "/kith-test";

fn shim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KITH_SHIM") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/kith");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p kith-control` or set KITH_SHIM",
        p.display()
    );
    p
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A busybox root filesystem: the static binary plus one symlink per applet.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("image");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    root
}

struct Env {
    _tmp: tempfile::TempDir,
    state_dir: PathBuf,
    image: PathBuf,
    logs: PathBuf,
    /// Localhost seccomp profiles (the agent's `<data dir>/seccomp`).
    seccomp_dir: PathBuf,
    rt: LibcontainerRuntime,
    pod_uid: String,
    started: Vec<ContainerKey>,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("kith-runtime-test")
            .tempdir()
            .unwrap();
        let state_dir = tmp.path().join("state");
        let image = busybox_rootfs(tmp.path());
        let logs = tmp.path().join("logs");
        let seccomp_dir = tmp.path().join("seccomp");
        std::fs::create_dir_all(&seccomp_dir).unwrap();
        let rt = LibcontainerRuntime::new(RuntimeConfig::new(
            state_dir.clone(),
            shim_binary(),
            CGROUP_ROOT.into(),
        ));
        Env {
            state_dir,
            image,
            logs,
            seccomp_dir,
            rt,
            pod_uid: unique("pod"),
            started: Vec::new(),
            _tmp: tmp,
        }
    }

    fn key(&self, name: &str) -> ContainerKey {
        ContainerKey {
            pod_uid: self.pod_uid.clone(),
            container: name.into(),
            attempt: 0,
        }
    }

    fn request(
        &mut self,
        name: &str,
        command: &[&str],
        resources: serde_json::Value,
    ) -> StartRequest {
        self.request_with(
            name,
            json!({"command": command, "resources": resources}),
            BTreeMap::new(),
        )
    }

    /// `extra` are Container fields; `volumes` maps pod volume names to host paths.
    /// The Localhost seccomp profile `deny-mkdir.json`: mkdir and mkdirat fail with EPERM.
    fn write_deny_mkdir_profile(&self) {
        std::fs::write(
            self.seccomp_dir.join("deny-mkdir.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
        )
        .unwrap();
    }

    /// A container with `tty: true` (in `extra`), with the terminal the sync loop asks
    /// the runtime for.
    fn tty_request(&mut self, name: &str, extra: serde_json::Value) -> StartRequest {
        let mut req = self.request_with(name, extra, BTreeMap::new());
        req.spec
            .process_mut()
            .as_mut()
            .unwrap()
            .set_terminal(Some(true));
        req
    }

    fn request_with(
        &mut self,
        name: &str,
        extra: serde_json::Value,
        volumes: BTreeMap<String, PathBuf>,
    ) -> StartRequest {
        let key = self.key(name);
        self.started.push(key.clone());
        let mut c = json!({"name": name, "image": "busybox"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let container: Container = serde_json::from_value(c).unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": self.pod_uid},
            "spec": {"containers": [container.clone()]},
        }))
        .unwrap();
        let image = ImageDefaults {
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        };
        let empty = BTreeMap::new();
        let input = ContainerInput {
            pod: &pod,
            container: &container,
            image: &image,
            config_maps: &empty,
            secrets: &empty,
            node: NodeAllocatable::default(),
            rootfs: PathBuf::from("rootfs"),
            volumes: &volumes,
            netns: None,
            cgroups_path: format!("{CGROUP_ROOT}/{}/{name}", self.pod_uid),
            hostname: "p".into(),
            hosts_file: None,
            resolv_conf: None,
            pids_limit: Some(256),
            seccomp: SeccompInput {
                default_runtime_default: false,
                profiles: &ProfileDir(self.seccomp_dir.clone()),
            },
        };
        StartRequest {
            key: key.clone(),
            spec: spec::build(&input).unwrap(),
            image_rootfs: self.image.clone(),
            log_path: self.logs.join(name).join("0.log"),
            stdin: kith_agent::runtime::StdinMode::of(
                container.stdin.unwrap_or(false),
                container.stdin_once.unwrap_or(false),
            ),
        }
    }

    async fn state(&self, key: &ContainerKey) -> ContainerState {
        let all = self.rt.list().await.unwrap();
        all.into_iter()
            .find(|s| &s.key == key)
            .expect("container listed")
            .state
    }

    async fn wait_exited(&self, key: &ContainerKey, limit: Duration) -> ContainerState {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.state(key).await;
            if matches!(s, ContainerState::Exited { .. }) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{key:?} still {s:?} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(name).join("0.log")).unwrap_or_default()
    }
}

impl Drop for Env {
    /// Removes every container the test started, even after a failed assertion.
    fn drop(&mut self) {
        let rt = self.rt.clone();
        let keys = std::mem::take(&mut self.started);
        std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for key in keys {
                if let Err(e) = tokio.block_on(rt.remove(&key)) {
                    eprintln!("cleanup of {key:?}: {e}");
                }
            }
        })
        .join()
        .unwrap();
        // The shared test root goes once no test uses it (rmdir fails while one does).
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(CGROUP_ROOT.trim_start_matches('/')));
            }
        }
    }
}

/// Nothing of the container is left: process, mounts, cgroups, state dir.
fn assert_gone(env: &Env, key: &ContainerKey, pid: Option<i32>) {
    let dir = env.rt.container_dir(key);
    assert!(!dir.exists(), "{} still exists", dir.display());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&key.dir_name()),
        "a mount of {} is left",
        key.dir_name()
    );
    if let Some(pid) = pid {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "container process {pid} still runs");
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
        let pod = hierarchy
            .unwrap()
            .path()
            .join(CGROUP_ROOT.trim_start_matches('/'))
            .join(&key.pod_uid);
        assert!(!pod.exists(), "cgroup {} is left", pod.display());
    }
}

fn exited(s: &ContainerState) -> (i32, Option<i32>, ExitReason) {
    match s {
        ContainerState::Exited {
            exit_code,
            signal,
            reason,
            ..
        } => (*exit_code, *signal, *reason),
        other => panic!("not exited: {other:?}"),
    }
}

#[tokio::test]
async fn echo_writes_cri_log_and_completes() {
    let mut env = Env::new();
    let req = env.request(
        "echo",
        &["sh", "-c", "echo hello; echo oops >&2; printf partial"],
        json!({}),
    );
    let key = req.key.clone();
    let status = env.rt.start(req).await.unwrap();
    assert!(
        matches!(
            status.state,
            ContainerState::Running { .. } | ContainerState::Exited { .. }
        ),
        "{status:?}"
    );
    let s = env.wait_exited(&key, Duration::from_secs(20)).await;
    assert_eq!(exited(&s), (0, None, ExitReason::Completed));
    let log = env.log("echo");
    let lines: Vec<&str> = log.lines().collect();
    let tail: Vec<String> = lines
        .iter()
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .collect();
    let mut sorted = tail.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["stderr F oops", "stdout F hello", "stdout F partial"],
        "log:\n{log}"
    );
    for l in &lines {
        let ts = l.split(' ').next().unwrap();
        assert_eq!(
            ts.len(),
            "2026-11-21T10:00:00.123456789Z".len(),
            "timestamp in {l:?}"
        );
        ts.parse::<jiff::Timestamp>().unwrap();
    }
    env.rt.remove(&key).await.unwrap();
    assert_gone(&env, &key, None);
    env.rt.remove(&key).await.unwrap();
}

#[tokio::test]
async fn exit_code_is_recorded() {
    let mut env = Env::new();
    let req = env.request("three", &["sh", "-c", "exit 3"], json!({}));
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    let s = env.wait_exited(&key, Duration::from_secs(20)).await;
    assert_eq!(exited(&s), (3, None, ExitReason::Error));
}

#[tokio::test]
async fn missing_command_fails_clearly() {
    let mut env = Env::new();
    let req = env.request("nope", &["/bin/no-such-command"], json!({}));
    let key = req.key.clone();
    let started = Instant::now();
    let err = env.rt.start(req).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    match &err {
        RuntimeError::StartFailed { message, .. } => {
            assert!(message.contains("no-such-command"), "message: {message}")
        }
        other => panic!("unexpected error {other:?}"),
    }
    match env.state(&key).await {
        ContainerState::Exited {
            reason, message, ..
        } => {
            assert_eq!(reason, ExitReason::StartError);
            assert!(message.unwrap().contains("no-such-command"));
        }
        other => panic!("unexpected state {other:?}"),
    }
    env.rt.remove(&key).await.unwrap();
    assert_gone(&env, &key, None);
}

#[tokio::test]
async fn stop_lets_a_trap_handle_sigterm() {
    let mut env = Env::new();
    let script = "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done";
    let req = env.request("trap", &["sh", "-c", script], json!({}));
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    // The trap must be installed before the signal comes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.log("trap").contains("ready") {
        assert!(Instant::now() < deadline, "container never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    env.rt.stop(&key, Duration::from_secs(20)).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop waited for the whole grace period"
    );
    let s = env.wait_exited(&key, Duration::from_secs(5)).await;
    assert_eq!(exited(&s), (7, None, ExitReason::Error));
    assert!(env.log("trap").contains("stdout F got TERM"));
}

#[tokio::test]
async fn stop_kills_after_grace() {
    let mut env = Env::new();
    // PID 1 of a namespace ignores SIGTERM without a handler, so only SIGKILL ends it.
    let req = env.request("stubborn", &["sleep", "1000"], json!({}));
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    let t = Instant::now();
    env.rt.stop(&key, Duration::from_millis(800)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(800));
    let s = env.wait_exited(&key, Duration::from_secs(5)).await;
    assert_eq!(exited(&s), (137, Some(9), ExitReason::Error));
}

#[tokio::test]
async fn memory_limit_exceeded_is_oom_killed() {
    let mut env = Env::new();
    let req = env.request(
        "hog",
        &["sh", "-c", "x=$(tr '\\0' a < /dev/zero)"],
        json!({"limits": {"memory": "32Mi"}}),
    );
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    let s = env.wait_exited(&key, Duration::from_secs(60)).await;
    let (_, _, reason) = exited(&s);
    assert_eq!(reason, ExitReason::OomKilled, "{s:?}");
}

#[tokio::test]
async fn a_new_runtime_readopts_running_containers() {
    let mut env = Env::new();
    let req = env.request("long", &["sleep", "1000"], json!({}));
    let key = req.key.clone();
    let pid = match env.rt.start(req).await.unwrap().state {
        ContainerState::Running { pid, .. } => pid,
        other => panic!("not running: {other:?}"),
    };
    // A new agent process: nothing shared but the state directory.
    env.rt = LibcontainerRuntime::new(RuntimeConfig::new(
        env.state_dir.clone(),
        shim_binary(),
        CGROUP_ROOT.into(),
    ));
    match env.state(&key).await {
        ContainerState::Running { pid: again, .. } => assert_eq!(again, pid),
        other => panic!("not re-adopted: {other:?}"),
    }
    let cgroup_procs = format!(
        "/sys/fs/cgroup/pids{CGROUP_ROOT}/{}/long/cgroup.procs",
        key.pod_uid
    );
    assert!(std::fs::read_to_string(&cgroup_procs)
        .unwrap()
        .contains(&pid.to_string()));
    env.rt.remove(&key).await.unwrap();
    assert_gone(&env, &key, Some(pid));
    assert!(env.rt.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn exec_runs_in_the_container_with_stdio_and_exit_code() {
    use kith_agent::runtime::ExecRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = Env::new();
    let req = env.request("target", &["sleep", "1000"], json!({}));
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();

    let script = "echo out; echo err >&2; cat; hostname; exit 5";
    let command = vec!["sh".to_string(), "-c".into(), script.into()];
    let mut s = env
        .rt
        .exec(
            &key,
            ExecRequest {
                command,
                tty: false,
                stdin: true,
                timeout: None,
            },
        )
        .await
        .unwrap();
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"piped input\n").await.unwrap();
    drop(stdin);
    let (out, err) = read_out_and_err(&mut s).await;
    assert_eq!(s.exit_code.await.unwrap(), 5);
    // The hostname proves the process runs in the container's UTS namespace.
    assert_eq!(out, "out\npiped input\np\n");
    assert_eq!(err, "err\n");

    let command = vec!["/bin/no-such-command".to_string()];
    let mut s = env
        .rt
        .exec(
            &key,
            ExecRequest {
                command,
                tty: false,
                stdin: false,
                timeout: None,
            },
        )
        .await
        .unwrap();
    let mut err = String::new();
    s.stderr.read_to_string(&mut err).await.unwrap();
    assert_eq!(
        s.exit_code.await.unwrap(),
        kith_agent::runtime::shim::EXEC_START_FAILED
    );
    assert!(err.contains("no-such-command"), "stderr: {err}");
}

/// Processes (pid) whose command line is exactly `words`.
fn processes_running(words: &[&str]) -> Vec<String> {
    let want: Vec<u8> = words
        .iter()
        .flat_map(|w| [w.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn exec_probes_run_in_the_container_and_time_out_without_leftovers() {
    use kith_agent::sync::probe::exec_probe;
    let mut env = Env::new();
    let req = env.request("probed", &["sleep", "1000"], json!({}));
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    let cmd = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let enough = Duration::from_secs(5);

    let healthy = cmd(&["cat", "/tmp/healthy"]);
    assert!(exec_probe(&env.rt, &key, &healthy, enough).await.is_err());
    let touch = cmd(&["sh", "-c", "echo ok > /tmp/healthy"]);
    assert_eq!(exec_probe(&env.rt, &key, &touch, enough).await, Ok(()));
    assert_eq!(exec_probe(&env.rt, &key, &healthy, enough).await, Ok(()));
    let remove = cmd(&["rm", "/tmp/healthy"]);
    assert_eq!(exec_probe(&env.rt, &key, &remove, enough).await, Ok(()));
    let err = exec_probe(&env.rt, &key, &healthy, enough)
        .await
        .unwrap_err();
    assert_eq!(
        err, "cat: can't open '/tmp/healthy': No such file or directory",
        "the command's output is the message"
    );
    let silent = cmd(&["sh", "-c", "exit 7"]);
    assert_eq!(
        exec_probe(&env.rt, &key, &silent, enough).await,
        Err("command \"sh -c exit 7\" exited with code 7".into())
    );

    // Out of time: the shell, its background child and its foreground child all go.
    // Durations no other test uses, so the processes can be found by command line.
    let n = std::process::id() % 10_000;
    let (bg, fg) = ((40_000 + n).to_string(), (60_000 + n).to_string());
    let script = format!("sleep {bg} & sleep {fg}");
    let slow = cmd(&["sh", "-c", &script]);
    let started = Instant::now();
    assert_eq!(
        exec_probe(&env.rt, &key, &slow, Duration::from_secs(1)).await,
        Err(format!("command \"sh -c {script}\" timed out"))
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = [
            processes_running(&["sleep", &bg]),
            processes_running(&["sleep", &fg]),
            processes_running(&["sh", "-c", &script]),
        ]
        .concat();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The container itself still runs.
    assert!(matches!(
        env.state(&key).await,
        ContainerState::Running { .. }
    ));
}

#[tokio::test]
async fn attach_forwards_stdin_and_streams_live_output() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = Env::new();
    // stdin + stdinOnce: the container waits on its stdin, which the shim holds open.
    let req = env.request_with(
        "talk",
        json!({
            "command": ["sh", "-c", "read line; echo got $line; echo bye >&2"],
            "stdin": true,
            "stdinOnce": true,
        }),
        BTreeMap::new(),
    );
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    // The container must still be waiting: nothing closed its stdin.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        env.state(&key).await,
        ContainerState::Running { .. }
    ));
    let mut s = env.rt.attach(&key, true).await.unwrap();
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    let (out, err) = read_out_and_err(&mut s).await;
    assert_eq!((out.as_str(), err.as_str()), ("got hello\n", "bye\n"));
    assert_eq!(s.exit_code.await.unwrap(), 0);
    let (code, _, _) = exited(&env.wait_exited(&key, Duration::from_secs(10)).await);
    assert_eq!(code, 0);
    assert!(env.log("talk").contains("got hello"), "{}", env.log("talk"));

    // Without stdin: attach still streams what the container prints from then on.
    let req = env.request(
        "chatty",
        &["sh", "-c", "sleep 2; echo one; echo two"],
        json!({}),
    );
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    let mut s = env.rt.attach(&key, false).await.unwrap();
    assert!(s.stdin.is_none());
    let mut out = String::new();
    s.stdout.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "one\ntwo\n");
    assert_eq!(s.exit_code.await.unwrap(), 0);
    // Once it exited there is nothing to attach to.
    env.wait_exited(&key, Duration::from_secs(10)).await;
    assert!(env.rt.attach(&key, false).await.is_err());
}

#[tokio::test]
async fn spec_rules_hold_inside_a_real_container() {
    let mut env = Env::new();
    let vol = env._tmp.path().join("vol");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("sub/file"), "from the host\n").unwrap();
    // uid 1000 writes to the volume root; no fsGroup ownership change happens here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = "set -e; id -u; id -g; echo $GREETING; cat /data/file; \
                  if touch /data/new 2>/dev/null; then echo data-writable; fi; \
                  if touch /rootfile 2>/dev/null; then echo root-writable; fi; \
                  touch /rw/ok; grep CapBnd /proc/self/status; pwd";
    let req = env.request_with(
        "rules",
        json!({
            "command": ["sh", "-c", script],
            "workingDir": "/rw",
            "env": [{"name": "GREETING", "value": "hi $(WHO)"}, {"name": "WHO", "value": "late"}],
            "securityContext": {
                "runAsUser": 1000, "runAsGroup": 2000, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
            "volumeMounts": [
                {"name": "v", "mountPath": "/data", "subPath": "sub", "readOnly": true},
                {"name": "v", "mountPath": "/rw"},
            ],
        }),
        [("v".to_string(), vol.clone())].into(),
    );
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    let s = env.wait_exited(&key, Duration::from_secs(20)).await;
    let log = env.log("rules");
    let out: Vec<&str> = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap())
        .collect();
    assert_eq!(exited(&s), (0, None, ExitReason::Completed), "log:\n{log}");
    // CAP_NET_BIND_SERVICE is bit 10.
    assert_eq!(
        out,
        [
            "1000",
            "2000",
            "hi $(WHO)",
            "from the host",
            "CapBnd:\t0000000000000400",
            "/rw"
        ],
        "log:\n{log}"
    );
    assert!(
        vol.join("ok").exists(),
        "the writable volume is the host directory"
    );
}

/// RuntimeDefault filters the container (Seccomp: 2, new user namespaces refused) where
/// Unconfined does not, and a Localhost profile denying mkdir makes mkdir fail.
#[tokio::test]
async fn seccomp_profiles_apply_to_the_container() {
    let mut env = Env::new();
    env.write_deny_mkdir_profile();
    let script = "grep Seccomp: /proc/self/status; unshare -U true; echo unshare=$?; \
                  mkdir /tmp/x; echo mkdir=$?";
    let cases = [
        ("default", json!({"type": "RuntimeDefault"})),
        ("unconfined", json!({"type": "Unconfined"})),
        (
            "local",
            json!({"type": "Localhost", "localhostProfile": "deny-mkdir.json"}),
        ),
    ];
    let mut keys = Vec::new();
    for (name, profile) in &cases {
        let req = env.request_with(
            name,
            json!({"command": ["sh", "-c", script],
                   "securityContext": {"seccompProfile": profile}}),
            BTreeMap::new(),
        );
        keys.push(req.key.clone());
        env.rt.start(req).await.unwrap();
    }
    for key in &keys {
        let s = env.wait_exited(key, Duration::from_secs(20)).await;
        assert_eq!(
            exited(&s).0,
            0,
            "{key:?}: {s:?}\n{}",
            env.log(&key.container)
        );
    }
    let default = env.log("default");
    assert!(default.contains("Seccomp:\t2"), "{default}");
    assert!(default.contains("Operation not permitted"), "{default}");
    assert!(default.contains("unshare=1"), "{default}");
    assert!(default.contains("mkdir=0"), "{default}");

    let unconfined = env.log("unconfined");
    assert!(unconfined.contains("Seccomp:\t0"), "{unconfined}");
    assert!(unconfined.contains("unshare=0"), "{unconfined}");
    assert!(
        !unconfined.contains("Operation not permitted"),
        "{unconfined}"
    );

    let local = env.log("local");
    assert!(local.contains("Seccomp:\t2"), "{local}");
    assert!(local.contains("mkdir=1"), "{local}");
    assert!(local.contains("Operation not permitted"), "{local}");
}

/// Reads `r` until the text holds `want`, for at most 10 s; returns what was read.
async fn read_until<R: tokio::io::AsyncRead + Unpin>(r: &mut R, want: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains(want) {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!(
                "no {want:?} ({other:?}) in {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A container with `tty: true`: attach sees its terminal's output, `tty` names a
/// /dev/pts path, a resize changes `stty size`, TERM is set, and the log holds the
/// terminal's output as stdout.
#[tokio::test]
async fn tty_container_is_attached_and_resized() {
    use kith_agent::runtime::pty::WinSize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = Env::new();
    let req = env.tty_request(
        "term",
        json!({"command": ["sh"], "stdin": true, "tty": true}),
    );
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    let mut s = env.rt.attach(&key, true).await.unwrap();
    let resize = s.resize.take().expect("a tty container takes sizes");
    let mut stdin = s.stdin.take().unwrap();
    resize.send(WinSize { cols: 91, rows: 37 }).await.unwrap();
    stdin
        .write_all(b"tty; stty size; echo \"T=$TERM\"; echo err >&2; exit 7\n")
        .await
        .unwrap();
    // The session ends once the container exited; stderr is the terminal too, so all
    // of it comes as stdout.
    let mut out = String::new();
    s.stdout.read_to_string(&mut out).await.unwrap();
    let mut err = String::new();
    s.stderr.read_to_string(&mut err).await.unwrap();
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("37 91"), "{out:?}");
    assert!(out.contains("T=xterm") && out.contains("err"), "{out:?}");
    assert_eq!(err, "");
    let (code, _, _) = exited(&env.wait_exited(&key, Duration::from_secs(10)).await);
    assert_eq!(code, 7);
    assert_eq!(s.exit_code.await.unwrap(), 0);
    let log = env.log("term");
    assert!(
        log.contains(" stdout ") && log.contains("/dev/pts/"),
        "{log}"
    );
    assert!(!log.contains(" stderr "), "{log}");
}

/// `exec` with a tty (`kubectl exec -it`): the process gets a terminal of its own, sizes
/// reach it, and its exit code comes back.
#[tokio::test]
async fn exec_with_a_tty() {
    use kith_agent::runtime::pty::WinSize;
    use kith_agent::runtime::ExecRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = Env::new();
    let req = env.request("target", &["sleep", "1000"], json!({}));
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    let mut s = env
        .rt
        .exec(
            &key,
            ExecRequest {
                command: vec!["sh".into()],
                tty: true,
                stdin: true,
                timeout: None,
            },
        )
        .await
        .unwrap();
    let resize = s.resize.take().expect("a tty exec takes sizes");
    let mut stdin = s.stdin.take().unwrap();
    resize
        .send(WinSize {
            cols: 120,
            rows: 50,
        })
        .await
        .unwrap();
    stdin
        .write_all(b"tty; stty size; echo \"T=$TERM\"\n")
        .await
        .unwrap();
    let out = read_until(&mut s.stdout, "T=xterm").await;
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("50 120"), "{out:?}");
    resize.send(WinSize { cols: 80, rows: 24 }).await.unwrap();
    stdin.write_all(b"stty size; exit 3\n").await.unwrap();
    let mut rest = String::new();
    s.stdout.read_to_string(&mut rest).await.unwrap();
    assert!(rest.contains("24 80"), "{rest:?}");
    assert_eq!(s.exit_code.await.unwrap(), 3);
    // Nothing of the exec is left in the state directory (socket, process spec, the
    // link libcontainer made to the socket).
    let dir = env.rt.container_dir(&key);
    let lc = dir.join("lc").join(key.dir_name());
    let left: Vec<String> = [dir, lc]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec-") || n.starts_with("tenant-tty-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // A command that does not exist: the reason on the terminal, the exec's start code.
    let mut s = env
        .rt
        .exec(
            &key,
            ExecRequest {
                command: vec!["/bin/no-such-command".into()],
                tty: true,
                stdin: true,
                timeout: None,
            },
        )
        .await
        .unwrap();
    let mut out = String::new();
    s.stdout.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("no-such-command"), "{out:?}");
    assert_eq!(
        s.exit_code.await.unwrap(),
        kith_agent::runtime::shim::EXEC_START_FAILED
    );

    // A client that goes away takes its terminal along: the process hangs up.
    let words = ["sleep", "778"];
    let s = env
        .rt
        .exec(
            &key,
            ExecRequest {
                command: words.iter().map(|w| w.to_string()).collect(),
                tty: true,
                stdin: true,
                timeout: None,
            },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_running(&words).is_empty() {
        assert!(Instant::now() < deadline, "the exec never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_running(&words).is_empty() {
        assert!(Instant::now() < deadline, "the exec outlived its session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `kubectl exec -it` whose input ends (its stdin stream closed): the command on the
/// terminal reads the end of input, after a full line and after a partial one.
#[tokio::test]
async fn exec_tty_input_end_reaches_the_command() {
    use kith_agent::runtime::ExecRequest;
    let mut env = Env::new();
    let req = env.request("target", &["sleep", "1000"], json!({}));
    let key = req.key.clone();
    env.rt.start(req).await.unwrap();
    for typed in ["hello\n", "abc"] {
        let mut s = env
            .rt
            .exec(
                &key,
                ExecRequest {
                    command: vec!["sh".into(), "-c".into(), "cat; echo eof-seen".into()],
                    tty: true,
                    stdin: true,
                    timeout: None,
                },
            )
            .await
            .unwrap();
        let out = type_then_end_input(&mut s, typed).await;
        assert!(out.contains(typed.trim_end()), "{typed:?}: {out:?}");
        assert_eq!(s.exit_code.await.unwrap(), 0, "{typed:?}: {out:?}");
    }
}

/// Runs `sh -c script` in the container through `exec` (with or without a terminal) and
/// returns its output (a terminal's CR LF as LF) once it exited with 0.
async fn exec_output(env: &Env, key: &ContainerKey, script: &str, tty: bool) -> String {
    use kith_agent::runtime::ExecRequest;
    let mut s = env
        .rt
        .exec(
            key,
            ExecRequest {
                command: vec!["sh".into(), "-c".into(), script.into()],
                tty,
                stdin: tty,
                timeout: None,
            },
        )
        .await
        .unwrap();
    let (out, err) = read_out_and_err(&mut s).await;
    let code = s.exit_code.await.unwrap();
    let out = out.replace("\r\n", "\n");
    assert_eq!(code, 0, "{key:?} tty={tty}: {out}{err}");
    out + &err
}

/// The lines of `text` that start with one of `prefixes`.
/// An exec session's whole stdout and stderr, read together (either may fill first).
async fn read_out_and_err(s: &mut kith_agent::runtime::ExecSession) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let (mut out, mut err) = (String::new(), String::new());
    let (a, b) = tokio::join!(
        s.stdout.read_to_string(&mut out),
        s.stderr.read_to_string(&mut err)
    );
    a.unwrap();
    b.unwrap();
    (out, err)
}

fn lines_with<'a>(text: &'a str, prefixes: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .collect()
}

/// A process `exec` starts runs under the container's seccomp filter with the
/// container's capabilities, no_new_privs, user and working directory — with and
/// without a terminal, compared line by line with the container's own process.
#[tokio::test]
async fn exec_runs_under_the_containers_seccomp_filter_and_settings() {
    let mut env = Env::new();
    env.write_deny_mkdir_profile();
    let cases = [
        (
            "default",
            json!({"seccompProfile": {"type": "RuntimeDefault"}}),
        ),
        (
            "nnp",
            json!({"seccompProfile": {"type": "RuntimeDefault"},
                   "allowPrivilegeEscalation": false, "runAsUser": 1000, "runAsGroup": 2000,
                   "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
        ),
        (
            "unconfined",
            json!({"seccompProfile": {"type": "Unconfined"}}),
        ),
        (
            "local",
            json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "deny-mkdir.json"},
                   "capabilities": {"drop": ["SETPCAP", "KILL"]}}),
        ),
    ];
    let mut keys = Vec::new();
    for (name, security) in &cases {
        let req = env.request_with(
            name,
            json!({"command": ["sleep", "1000"], "workingDir": "/tmp",
                   "securityContext": security}),
            BTreeMap::new(),
        );
        keys.push(req.key.clone());
        env.rt.start(req).await.unwrap();
    }
    let status = [
        "Seccomp:",
        "NoNewPrivs:",
        "CapEff:",
        "CapPrm:",
        "CapBnd:",
        "Uid:",
        "Gid:",
    ];
    let script = "exec 2>&1; cat /proc/1/status; echo ---; cat /proc/self/status; echo ---; \
                  pwd; unshare -U true; echo unshare=$?; mkdir /tmp/d; echo mkdir=$?; rmdir /tmp/d 2>/dev/null; true";
    for ((name, _), key) in cases.iter().zip(&keys) {
        let mut outputs = Vec::new();
        for tty in [false, true] {
            let out = exec_output(&env, key, script, tty).await;
            let parts: Vec<&str> = out.split("---\n").collect();
            assert_eq!(parts.len(), 3, "{name} tty={tty}: {out}");
            // The container's process and the exec'd one: the same filter mode,
            // capabilities, no_new_privs, user and groups.
            let container = lines_with(parts[0], &status);
            let exec = lines_with(parts[1], &status);
            assert_eq!(container.len(), status.len(), "{name}: {}", parts[0]);
            assert_eq!(exec, container, "{name} tty={tty}");
            outputs.push((exec.join("\n"), parts[2].to_string()));
        }
        // One code path: the terminal exec gets exactly what the plain one gets.
        assert_eq!(outputs[0], outputs[1], "{name}: plain vs terminal exec");
        let (status, rest) = &outputs[0];
        assert!(rest.starts_with("/tmp\n"), "{name}: cwd: {rest}");
        match *name {
            // (uid 1000 may not write to the image's /tmp: mkdir tells nothing there.)
            "default" | "nnp" => {
                assert!(status.contains("Seccomp:\t2"), "{name}: {status}");
                assert!(
                    rest.contains("Operation not permitted") && rest.contains("unshare=1"),
                    "{name}: {rest}"
                );
                assert!(*name == "nnp" || rest.contains("mkdir=0"), "{name}: {rest}");
            }
            "unconfined" => {
                assert!(status.contains("Seccomp:\t0"), "{name}: {status}");
                assert!(rest.contains("unshare=0"), "{name}: {rest}");
                assert!(rest.contains("mkdir=0"), "{name}: {rest}");
            }
            "local" => {
                assert!(status.contains("Seccomp:\t2"), "{name}: {status}");
                assert!(rest.contains("unshare=0"), "{name}: {rest}");
                assert!(
                    rest.contains("Operation not permitted") && rest.contains("mkdir=1"),
                    "{name}: {rest}"
                );
            }
            _ => unreachable!(),
        }
        if *name == "nnp" {
            assert!(status.contains("NoNewPrivs:\t1"), "{status}");
            // uid 1000 with no capability left but CAP_NET_BIND_SERVICE (bit 10).
            assert!(status.contains("Uid:\t1000\t1000\t1000\t1000"), "{status}");
            assert!(status.contains("CapBnd:\t0000000000000400"), "{status}");
        }
    }
}

/// Types `typed` into a terminal session running `cat; echo eof-seen`, ends its input
/// and returns all it printed, once it printed that it saw the end of input.
async fn type_then_end_input(s: &mut kith_agent::runtime::ExecSession, typed: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(typed.as_bytes()).await.unwrap();
    stdin.shutdown().await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.stdout.read_to_string(&mut out))
        .await
        .unwrap_or_else(|_| panic!("{typed:?}: the command still reads: {out:?}"))
        .unwrap();
    assert!(out.contains("eof-seen"), "{typed:?}: {out:?}");
    out
}

/// `stdinOnce` with `tty: true`: when the one attach session ends its input, the
/// container's `cat` reads to the end of input and exits — after a whole line and after
/// a partial one.
#[tokio::test]
async fn tty_stdin_once_ends_the_containers_input() {
    let mut env = Env::new();
    for (name, typed) in [("line", "hello\n"), ("partial", "abc")] {
        let req = env.tty_request(
            name,
            json!({"command": ["sh", "-c", "cat; echo eof-seen"],
                   "stdin": true, "stdinOnce": true, "tty": true}),
        );
        let key = req.key.clone();
        env.rt.start(req).await.unwrap();
        let mut s = env.rt.attach(&key, true).await.unwrap();
        type_then_end_input(&mut s, typed).await;
        let (code, _, _) = exited(&env.wait_exited(&key, Duration::from_secs(10)).await);
        assert_eq!(code, 0, "{name}: {}", env.log(name));
        let log = env.log(name);
        assert!(log.contains(typed.trim_end()), "{name}: {log}");
    }
}
