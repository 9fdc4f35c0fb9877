//! Seccomp profiles on one box with real parts: `kith up` with its agent, busybox pods,
//! kubectl 1.33.
//!
//! A pod with `seccompProfile: RuntimeDefault` runs filtered (`kubectl exec` reads
//! `Seccomp: 2` for the container's process; a new user namespace is refused); a
//! Localhost profile from `<agent data dir>/seccomp` applies (its mkdir fails); a
//! process `kubectl exec` starts is under the same filter as the container (with and
//! without `-t`), and one in an Unconfined pod is not; a pod whose Localhost profile
//! is missing shows CreateContainerError with the reason in `kubectl get pod` and
//! `kubectl describe`, and the other pods keep running.

use anyhow::{ensure, Result};
use kith_agent::runtime::pty::WinSize;
use kith_e2e::tty::TtyKubectl;
use kith_e2e::{busybox_cluster, AgentOptions, Cluster, Kubectl};

const K: Kubectl = Kubectl::V1_33;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profiles_filter_pods_and_a_missing_one_stops_only_its_pod() -> Result<()> {
    let (_registry, image, cluster) = busybox_cluster(AgentOptions::unique("secc")).await?;
    let result = scenario(&cluster, &image).await;
    cluster.check(result);
    Ok(())
}

fn pod(name: &str, image: &str, profile: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  securityContext:
    seccompProfile: {{type: RuntimeDefault}}
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "{script}"]
    securityContext:
      seccompProfile: {profile}
"#
    )
}

async fn scenario(cluster: &Cluster, image: &str) -> Result<()> {
    let ns = cluster.namespace("seccomp-e2e").await?;
    let profiles = cluster.data_dir().join("agent").join("seccomp");
    std::fs::create_dir_all(&profiles)?;
    std::fs::write(
        profiles.join("deny-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )?;

    // The pod says RuntimeDefault; the containers say what each case needs (the
    // container's profile wins).
    let filtered = pod(
        "filtered",
        image,
        "{type: RuntimeDefault}",
        "unshare -U true; echo unshare=$?; sleep 3600",
    );
    let local = pod(
        "local",
        image,
        "{type: Localhost, localhostProfile: deny-mkdir.json}",
        "mkdir /tmp/x; echo mkdir=$?; sleep 3600",
    );
    let open = pod("open", image, "{type: Unconfined}", "sleep 3600");
    let missing = pod(
        "missing",
        image,
        "{type: Localhost, localhostProfile: nope.json}",
        "sleep 3600",
    );
    for yaml in [&filtered, &local, &open, &missing] {
        cluster.apply_yaml(K, Some(&ns), yaml).await?;
    }

    for name in ["filtered", "local", "open"] {
        cluster
            .wait_pod(K, &ns, name, "{.status.phase}", "Running", |s| {
                s == "Running"
            })
            .await?;
    }
    // PID 1 is the container's own process.
    let status = cluster
        .kubectl_ok(
            K,
            &["exec", "-n", &ns, "filtered", "--", "cat", "/proc/1/status"],
        )
        .await?;
    ensure!(
        status.contains("Seccomp:\t2"),
        "filtered pod's status:\n{status}"
    );
    let logs = wait_logs(cluster, &ns, "filtered", "unshare=").await?;
    ensure!(
        logs.contains("Operation not permitted") && logs.contains("unshare=1"),
        "unshare under RuntimeDefault:\n{logs}"
    );
    let logs = wait_logs(cluster, &ns, "local", "mkdir=").await?;
    ensure!(
        logs.contains("Operation not permitted") && logs.contains("mkdir=1"),
        "mkdir under the Localhost profile:\n{logs}"
    );

    exec_is_filtered_as_the_container(cluster, &ns).await?;

    let reason = cluster
        .wait_pod(
            K,
            &ns,
            "missing",
            "{.status.containerStatuses[0].state.waiting.reason}",
            "CreateContainerError",
            |s| s == "CreateContainerError",
        )
        .await?;
    ensure!(reason == "CreateContainerError");
    let table = cluster
        .kubectl_ok(K, &["get", "pod", "missing", "-n", &ns])
        .await?;
    ensure!(
        table.contains("CreateContainerError"),
        "kubectl get pod:\n{table}"
    );
    let describe = cluster
        .kubectl_ok(K, &["describe", "pod", "missing", "-n", &ns])
        .await?;
    // The Failed event names the file and why it could not be used.
    ensure!(
        describe.contains("CreateContainerError")
            && describe.contains("cannot read localhost seccomp profile")
            && describe.contains("seccomp/nope.json\": No such file or directory"),
        "kubectl describe pod:\n{describe}"
    );
    let message = cluster
        .kubectl_ok(
            K,
            &[
                "get",
                "pod",
                "missing",
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.message}",
            ],
        )
        .await?;
    ensure!(
        message.contains("cannot read localhost seccomp profile"),
        "waiting message: {message}"
    );

    // The other pods are untouched by the one that cannot start.
    for name in ["filtered", "local", "open"] {
        let phase = cluster
            .kubectl_ok(
                K,
                &[
                    "get",
                    "pod",
                    name,
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.status.phase}",
                ],
            )
            .await?;
        ensure!(phase == "Running", "{name} is {phase}");
    }
    Ok(())
}

/// What `kubectl exec` starts runs under its container's filter: blocked calls fail
/// with EPERM inside the exec as they do in the container, and `Seccomp:` reads 2 (0
/// in the Unconfined pod), with and without a terminal.
async fn exec_is_filtered_as_the_container(cluster: &Cluster, ns: &str) -> Result<()> {
    // Each script ends with `rc=<code of the command under test>`.
    let cases = [
        (
            "filtered",
            "grep Seccomp: /proc/self/status",
            "Seccomp:\t2",
            "rc=0",
        ),
        (
            "filtered",
            "unshare -U true",
            "Operation not permitted",
            "rc=1",
        ),
        ("local", "mkdir /tmp/e", "Operation not permitted", "rc=1"),
        (
            "open",
            "grep Seccomp: /proc/self/status",
            "Seccomp:\t0",
            "rc=0",
        ),
        ("open", "unshare -U true", "", "rc=0"),
    ];
    for (pod, command, want, rc) in cases {
        let script = format!("{command} 2>&1; echo rc=$?");
        let plain = cluster
            .kubectl_ok(K, &["exec", "-n", ns, pod, "--", "sh", "-c", &script])
            .await?;
        // kubectl asks for a terminal only when its stdin is one: run it on a pty.
        let mut k = TtyKubectl::spawn(
            cluster,
            K,
            &["exec", "-it", "-n", ns, pod, "--", "sh", "-c", &script],
            WinSize { cols: 80, rows: 24 },
        )?;
        let on_tty = k.wait_for("rc=").await?;
        let code = k.exit_code().await?;
        ensure!(
            code == 0,
            "kubectl exec -it {pod} {command}: {code} {on_tty:?}"
        );
        for (how, text) in [("plain", plain), ("tty", on_tty)] {
            ensure!(
                text.contains(want) && text.contains(rc),
                "exec ({how}) in {pod}: {command}: want {want:?} and {rc}, got {text:?}"
            );
        }
    }
    Ok(())
}

/// `kubectl logs` of `pod` once it contains `marker`.
async fn wait_logs(cluster: &Cluster, ns: &str, pod: &str, marker: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let logs = cluster.kubectl_ok(K, &["logs", "-n", ns, pod]).await?;
        if logs.contains(marker) || tokio::time::Instant::now() > deadline {
            return Ok(logs);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
