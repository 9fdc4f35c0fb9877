//! The StatefulSet controller against `kith up`, through kubectl 1.30 and 1.33: a
//! 3-replica OrderedReady set creates `web-0` alone, `web-1` only once `web-0` is Ready and
//! `web-2` only once `web-1` is; each ordinal gets its claim `www-web-<i>`; `kubectl
//! rollout status` returns once all three are Ready; scaling to 1 removes `web-2` before
//! `web-1`; an image change is revision 2 in `kubectl rollout history`, and `kubectl
//! rollout undo` brings the first image back as revision 3.
//!
//! kith has no agent yet, so pods never really run: the test plays the agent's part by
//! writing phase Running and a Ready condition through the status subresource with
//! `kubectl patch --subresource=status`. With no node, a deleted pod goes at once, which
//! lets the scale-down proceed without an agent too.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kith_e2e::{ensure_contains, kubectl_tests, Cluster, Kubectl};

kubectl_tests!(statefulset_ordered_create_claims_rollout_and_scale_down);

const SET: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: nginx
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: nginx
        image: localhost:5000/nginx:1.27
        volumeMounts:
        - name: www
          mountPath: /usr/share/nginx/html
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 1Gi
";

/// The set's pods by name (selected by the template label).
async fn pods(c: &Cluster, k: Kubectl, ns: &str) -> Result<BTreeSet<String>> {
    let out = c
        .kubectl_ok(
            k,
            &[
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        )
        .await?;
    Ok(out.split_whitespace().map(str::to_string).collect())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Polls until the pods are exactly `want`, failing if any state seen on the way is not
/// in `allowed` (the order the controller must go through).
async fn pods_become(
    c: &Cluster,
    k: Kubectl,
    ns: &str,
    want: &[&str],
    allowed: &[&[&str]],
    within: Duration,
) -> Result<()> {
    let want = set(want);
    let deadline = Instant::now() + within;
    loop {
        let now = pods(c, k, ns).await?;
        if now == want {
            return Ok(());
        }
        if !allowed.iter().any(|a| set(a) == now) {
            bail!("pods went through {now:?} on the way to {want:?}");
        }
        if Instant::now() > deadline {
            bail!("pods are {now:?}, not {want:?}, after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the agent would report once the pod's container runs and passes its probe.
async fn make_ready(c: &Cluster, k: Kubectl, ns: &str, pod: &str) -> Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    let status = format!(
        r#"{{"status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"True","lastTransitionTime":"{now}"}}]}}}}"#
    );
    c.kubectl_ok(
        k,
        &[
            "patch",
            "pod",
            pod,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    )
    .await?;
    Ok(())
}

/// The pods stay `names` for a while: the controller is waiting, as it should.
async fn pods_stay(c: &Cluster, k: Kubectl, ns: &str, names: &[&str]) -> Result<()> {
    let want = set(names);
    for _ in 0..10 {
        let now = pods(c, k, ns).await?;
        if now != want {
            bail!("pods should stay {want:?} until the last one is Ready, found {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn statefulset_ordered_create_claims_rollout_and_scale_down(
    c: &Cluster,
    k: Kubectl,
) -> Result<()> {
    let ns = c.namespace("sts").await?;
    c.apply_yaml(k, Some(&ns), SET).await?;
    let wait = Duration::from_secs(30);

    // OrderedReady: one ordinal at a time, each after the previous is Ready.
    pods_become(c, k, &ns, &["web-0"], &[&[]], wait).await?;
    pods_stay(c, k, &ns, &["web-0"]).await?;
    make_ready(c, k, &ns, "web-0").await?;
    pods_become(c, k, &ns, &["web-0", "web-1"], &[&["web-0"]], wait).await?;
    pods_stay(c, k, &ns, &["web-0", "web-1"]).await?;
    make_ready(c, k, &ns, "web-1").await?;
    pods_become(
        c,
        k,
        &ns,
        &["web-0", "web-1", "web-2"],
        &[&["web-0", "web-1"]],
        wait,
    )
    .await?;
    make_ready(c, k, &ns, "web-2").await?;

    // Stable identity: labels, hostname and subdomain, the claim mounted under its name.
    let identity = c
        .kubectl_ok(
            k,
            &[
                "get",
                "pod",
                "web-1",
                "-n",
                &ns,
                "-o",
                "jsonpath={.metadata.labels.statefulset\\.kubernetes\\.io/pod-name} {.metadata.labels.apps\\.kubernetes\\.io/pod-index} {.spec.hostname} {.spec.subdomain} {.spec.volumes[?(@.name==\"www\")].persistentVolumeClaim.claimName} {.metadata.ownerReferences[0].kind}",
            ],
        )
        .await?;
    if identity != "web-1 1 web-1 nginx www-web-1 StatefulSet" {
        bail!("web-1 identity is {identity:?}");
    }
    let revision = c
        .kubectl_ok(
            k,
            &[
                "get",
                "pod",
                "web-1",
                "-n",
                &ns,
                "-o",
                "jsonpath={.metadata.labels.controller-revision-hash}",
            ],
        )
        .await?;
    if !revision.starts_with("web-") {
        bail!("controller-revision-hash should be web-<hash>, got {revision:?}");
    }

    // One claim per ordinal, made from the template (left unbound: no agent binds it yet).
    let claims = c
        .kubectl_ok(
            k,
            &[
                "get",
                "pvc",
                "-n",
                &ns,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.spec.resources.requests.storage} {end}",
            ],
        )
        .await?;
    for i in 0..3 {
        ensure_contains(&claims, &format!("www-web-{i}=1Gi"))?;
    }

    let rollout = c
        .kubectl_ok(
            k,
            &["rollout", "status", "sts/web", "-n", &ns, "--timeout=60s"],
        )
        .await?;
    ensure_contains(&rollout, "complete")?;
    let status = c
        .kubectl_ok(
            k,
            &[
                "get",
                "sts",
                "web",
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.replicas}/{.status.readyReplicas}/{.status.currentReplicas}/{.status.updatedReplicas}/{.status.availableReplicas} {.status.currentRevision}",
            ],
        )
        .await?;
    if status != format!("3/3/3/3/3 {revision}") {
        bail!("status should count 3 pods at revision {revision}, got {status:?}");
    }
    let events = c.kubectl_ok(k, &["get", "events", "-n", &ns]).await?;
    ensure_contains(&events, "create Pod web-0 in StatefulSet web successful")?;
    ensure_contains(
        &events,
        "create Claim www-web-0 Pod web-0 in StatefulSet web success",
    )?;

    // Scale down: highest ordinal first, one at a time; the claims stay.
    c.kubectl_ok(k, &["scale", "sts/web", "-n", &ns, "--replicas=1"])
        .await?;
    pods_become(
        c,
        k,
        &ns,
        &["web-0"],
        &[&["web-0", "web-1", "web-2"], &["web-0", "web-1"]],
        wait,
    )
    .await?;
    let claims = c
        .kubectl_ok(
            k,
            &[
                "get",
                "pvc",
                "-n",
                &ns,
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        )
        .await?;
    if claims.split_whitespace().count() != 3 {
        bail!("claims should outlive the scale-down, found {claims:?}");
    }
    c.kubectl_ok(
        k,
        &["rollout", "status", "sts/web", "-n", &ns, "--timeout=60s"],
    )
    .await?;

    // History: each template is a ControllerRevision named as the pods' label says.
    c.kubectl_ok(
        k,
        &[
            "set",
            "image",
            "sts/web",
            "nginx=localhost:5000/nginx:1.28",
            "-n",
            &ns,
        ],
    )
    .await?;
    web0_runs(c, k, &ns, "localhost:5000/nginx:1.28").await?;
    history_is(c, k, &ns, &["1", "2"]).await?;
    let listed = c
        .kubectl_ok(k, &["get", "controllerrevisions", "-n", &ns])
        .await?;
    ensure_contains(&listed, &revision)?;
    ensure_contains(&listed, "statefulset.apps/web")?;
    let undo = c
        .kubectl_ok(k, &["rollout", "undo", "sts/web", "-n", &ns])
        .await?;
    ensure_contains(&undo, "rolled back")?;
    web0_runs(c, k, &ns, "localhost:5000/nginx:1.27").await?;
    history_is(c, k, &ns, &["2", "3"]).await?;
    let back = c
        .kubectl_ok(
            k,
            &[
                "get",
                "pod",
                "web-0",
                "-n",
                &ns,
                "-o",
                "jsonpath={.metadata.labels.controller-revision-hash}",
            ],
        )
        .await?;
    if back != revision {
        bail!("after undo web-0 should be at the first revision {revision}, got {back:?}");
    }
    Ok(())
}

/// Polls until `web-0` runs `image`, then plays the agent and makes it Ready.
async fn web0_runs(c: &Cluster, k: Kubectl, ns: &str, image: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = c
            .kubectl(
                k,
                &[
                    "get",
                    "pod",
                    "web-0",
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.spec.containers[0].image}",
                ],
            )
            .await?;
        if got.status.success() && String::from_utf8_lossy(&got.stdout) == image {
            return make_ready(c, k, ns, "web-0").await;
        }
        if Instant::now() > deadline {
            bail!(
                "web-0 never ran {image}: {}{}",
                String::from_utf8_lossy(&got.stdout),
                String::from_utf8_lossy(&got.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until `kubectl rollout history` lists exactly the revisions `want`.
async fn history_is(c: &Cluster, k: Kubectl, ns: &str, want: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history = c
            .kubectl_ok(k, &["rollout", "history", "sts/web", "-n", ns])
            .await?;
        let got: Vec<&str> = history
            .lines()
            .skip_while(|l| !l.starts_with("REVISION"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("rollout history should list {want:?}:\n{history}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
