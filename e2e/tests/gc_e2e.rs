//! The garbage collector through kubectl: `kubectl delete` with each `--cascade` of an
//! owner ConfigMap whose dependents (a ConfigMap and a Secret) name it in ownerReferences,
//! and a dependent whose owner never existed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kith_e2e::{ensure_contains, kubectl_tests, Cluster, Kubectl};
use serde_json::Value;

kubectl_tests!(
    background_cascade_and_dangling_owner,
    foreground_cascade_waits_for_dependents,
    orphan_cascade_keeps_dependents,
);

/// Creates ConfigMap `owner` and, owned by it (blockOwnerDeletion), ConfigMap
/// `<owner>-cm` and Secret `<owner>-secret`; `hold` puts a finalizer on the ConfigMap.
async fn owner_with_dependents(
    c: &Cluster,
    k: Kubectl,
    ns: &str,
    owner: &str,
    hold: bool,
) -> Result<()> {
    c.kubectl_ok(k, &["create", "configmap", owner, "-n", ns])
        .await?;
    let uid = c
        .kubectl_ok(
            k,
            &[
                "get",
                "configmap",
                owner,
                "-n",
                ns,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
        )
        .await?;
    if uid.is_empty() {
        bail!("owner {owner} has no uid");
    }
    let refs = format!(
        "  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: {owner}\n    uid: {uid}\n    blockOwnerDeletion: true\n"
    );
    let finalizers = if hold {
        "  finalizers: [example.com/hold]\n"
    } else {
        ""
    };
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {owner}-cm\n{refs}{finalizers}data:\n  a: b\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {owner}-secret\n{refs}stringData:\n  a: b\n"
    );
    c.kubectl_stdin_ok(k, &["create", "-n", ns, "-f", "-"], yaml.as_bytes())
        .await?;
    Ok(())
}

/// The object as JSON, or `None` when it is not found.
async fn get(c: &Cluster, k: Kubectl, ns: &str, kind: &str, name: &str) -> Result<Option<Value>> {
    let out = c
        .kubectl(k, &["get", kind, name, "-n", ns, "-o", "json"])
        .await?;
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        return Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?,
        ));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    ensure_contains(&err, "(NotFound)")?;
    Ok(None)
}

/// Polls (for at most `timeout`) until every listed object is gone.
async fn until_gone(
    c: &Cluster,
    k: Kubectl,
    ns: &str,
    objects: &[(&str, &str)],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = Vec::new();
        for (kind, name) in objects {
            if get(c, k, ns, kind, name).await?.is_some() {
                left.push(format!("{kind}/{name}"));
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("still there after {timeout:?}: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn background_cascade_and_dangling_owner(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("gc-background").await?;
    owner_with_dependents(c, k, &ns, "owner", false).await?;
    // Owned by a uid nothing ever had: collected as soon as the collector sees it.
    let stray = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stray\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: nobody\n    uid: 6f1c1f0e-0000-4000-8000-000000000000\n";
    c.kubectl_stdin_ok(k, &["create", "-n", &ns, "-f", "-"], stray.as_bytes())
        .await?;
    // A dependent whose owner is alive stays.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if get(c, k, &ns, "configmap", "owner-cm").await?.is_none() {
        bail!("a dependent of a live owner was collected");
    }
    let out = c
        .kubectl_ok(k, &["delete", "configmap", "owner", "-n", &ns])
        .await?;
    ensure_contains(&out, r#"configmap "owner" deleted"#)?;
    until_gone(
        c,
        k,
        &ns,
        &[
            ("configmap", "owner-cm"),
            ("secret", "owner-secret"),
            ("configmap", "stray"),
        ],
        Duration::from_secs(10),
    )
    .await
}

async fn foreground_cascade_waits_for_dependents(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("gc-foreground").await?;
    // The dependent ConfigMap is held by a finalizer, so the owner must wait for it.
    owner_with_dependents(c, k, &ns, "owner", true).await?;
    let started = Instant::now();
    let args = [
        "delete",
        "configmap",
        "owner",
        "-n",
        &ns,
        "--cascade=foreground",
        "--wait",
        "--timeout=60s",
    ];
    let delete = async { (c.kubectl_ok(k, &args).await, Instant::now()) };
    let observe_then_release = async {
        until_gone(
            c,
            k,
            &ns,
            &[("secret", "owner-secret")],
            Duration::from_secs(10),
        )
        .await?;
        let dep = get(c, k, &ns, "configmap", "owner-cm")
            .await?
            .context("the held dependent is gone already")?;
        if dep["metadata"]["deletionTimestamp"].is_null() {
            bail!("the held dependent is not being deleted: {dep}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let owner = get(c, k, &ns, "configmap", "owner")
            .await?
            .context("the owner went before its blocking dependent")?;
        if owner["metadata"]["deletionTimestamp"].is_null()
            || !owner["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion"))
        {
            bail!("owner should wait with foregroundDeletion: {owner}");
        }
        c.kubectl_ok(
            k,
            &[
                "patch",
                "configmap",
                "owner-cm",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
        )
        .await?;
        Ok::<Instant, anyhow::Error>(Instant::now())
    };
    let ((deleted, finished), released) = tokio::join!(delete, observe_then_release);
    let released = released?;
    let out = deleted?;
    ensure_contains(&out, r#"configmap "owner" deleted"#)?;
    // `delete --wait` returned only once the owner was gone, after its dependent went.
    if finished < released {
        bail!(
            "kubectl delete --wait returned {:?} after it started, before the release",
            finished - started
        );
    }
    until_gone(
        c,
        k,
        &ns,
        &[("configmap", "owner"), ("configmap", "owner-cm")],
        Duration::from_secs(1),
    )
    .await
}

async fn orphan_cascade_keeps_dependents(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("gc-orphan").await?;
    owner_with_dependents(c, k, &ns, "owner", false).await?;
    // `--wait` returns once the collector has orphaned the dependents and let the owner go.
    let out = c
        .kubectl_ok(
            k,
            &[
                "delete",
                "configmap",
                "owner",
                "-n",
                &ns,
                "--cascade=orphan",
                "--wait",
                "--timeout=60s",
            ],
        )
        .await?;
    ensure_contains(&out, r#"configmap "owner" deleted"#)?;
    if get(c, k, &ns, "configmap", "owner").await?.is_some() {
        bail!("owner still there after delete --wait");
    }
    // Still there a while later, and owned by nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (kind, name) in [("configmap", "owner-cm"), ("secret", "owner-secret")] {
        let dep = get(c, k, &ns, kind, name)
            .await?
            .with_context(|| format!("orphaned {kind}/{name} was collected"))?;
        let refs = &dep["metadata"]["ownerReferences"];
        if !(refs.is_null() || refs.as_array().is_some_and(Vec::is_empty)) {
            bail!("{kind}/{name} still names its owner: {dep}");
        }
    }
    Ok(())
}
