//! Server-side apply through kube-rs (`Patch::Apply`): create, no-op re-apply, field
//! ownership shared with another manager, removal of fields the applier stops sending,
//! conflicts without force, dry run.

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kith_e2e::Cluster;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_round_trip() {
    let cluster = Cluster::up()
        .await
        .unwrap_or_else(|e| panic!("kith did not start: {e:#}"));
    cluster.check(apply_body(&cluster).await);
}

fn data(cm: &ConfigMap) -> serde_json::Value {
    json!(cm.data.clone().unwrap_or_default())
}

fn managers(cm: &ConfigMap) -> Vec<(String, String)> {
    cm.managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

async fn apply_body(c: &Cluster) -> Result<()> {
    let ns = c.namespace("ssa").await?;
    let api: Api<ConfigMap> = Api::namespaced(c.client().await?, &ns);
    let apply = PatchParams::apply("e2e").force();
    let desired = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ssa", "labels": {"owner": "e2e"}},
        "data": {"a": "1", "b": "2"},
    });

    // Apply creates.
    let created = api.patch("ssa", &apply, &Patch::Apply(&desired)).await?;
    if data(&created) != json!({"a": "1", "b": "2"})
        || created.labels().get("owner").map(String::as_str) != Some("e2e")
        || created.uid().is_none()
    {
        bail!("created by apply: {created:?}");
    }
    let entry = created
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("e2e"))
        .cloned();
    let Some(entry) = entry else {
        bail!("no managedFields entry for e2e: {created:?}");
    };
    let fields = serde_json::to_value(&entry.fields_v1)?;
    if entry.operation.as_deref() != Some("Apply")
        || entry.fields_type.as_deref() != Some("FieldsV1")
        || fields["f:data"]["f:a"].is_null()
        || fields["f:metadata"]["f:labels"]["f:owner"].is_null()
    {
        bail!("managedFields entry for e2e: {entry:?}");
    }

    // The same apply again changes nothing, not even the resourceVersion.
    let again = api.patch("ssa", &apply, &Patch::Apply(&desired)).await?;
    if again.resource_version() != created.resource_version() {
        bail!(
            "no-op apply moved resourceVersion {:?} -> {:?}",
            created.resource_version(),
            again.resource_version()
        );
    }

    // Another manager adds a key with an ordinary update.
    let other = PatchParams {
        field_manager: Some("other".into()),
        ..Default::default()
    };
    let merged = api
        .patch("ssa", &other, &Patch::Merge(json!({"data": {"c": "3"}})))
        .await?;
    if !managers(&merged).contains(&("other".into(), "Update".into())) {
        bail!("no Update entry for manager other: {:?}", managers(&merged));
    }

    // e2e stops sending b and changes a: b goes (e2e owned it alone), c stays (other's).
    let next = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ssa", "labels": {"owner": "e2e"}},
        "data": {"a": "10"},
    });
    let updated = api.patch("ssa", &apply, &Patch::Apply(&next)).await?;
    if data(&updated) != json!({"a": "10", "c": "3"}) {
        bail!("after second apply: {:?}", data(&updated));
    }

    // A rival applier without force conflicts on a field e2e owns.
    let rival = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ssa"},
        "data": {"a": "rival"},
    });
    match api
        .patch("ssa", &PatchParams::apply("rival"), &Patch::Apply(&rival))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "Conflict" => {}
        other => bail!("rival apply without force: expected 409 Conflict, got {other:?}"),
    }
    let unchanged = api.get("ssa").await?;
    if data(&unchanged) != json!({"a": "10", "c": "3"}) {
        bail!(
            "a conflicting apply changed the object: {:?}",
            data(&unchanged)
        );
    }

    // Dry run: the answer shows the change, the store does not.
    let dry = api
        .patch(
            "ssa",
            &PatchParams::apply("e2e").force().dry_run(),
            &Patch::Apply(&json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "ssa", "labels": {"owner": "e2e"}},
                "data": {"a": "dry"},
            })),
        )
        .await?;
    if data(&dry)["a"] != "dry" {
        bail!("dry-run answer: {:?}", data(&dry));
    }
    if data(&api.get("ssa").await?)["a"] != "10" {
        bail!("dry-run apply was stored");
    }

    // With force, the rival takes the field over.
    let forced = api
        .patch(
            "ssa",
            &PatchParams::apply("rival").force(),
            &Patch::Apply(&rival),
        )
        .await?;
    if data(&forced)["a"] != "rival" {
        bail!("forced apply: {:?}", data(&forced));
    }
    let rival_entry = forced
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("rival"))
        .map(|m| serde_json::to_value(&m.fields_v1))
        .transpose()?;
    if rival_entry.is_none_or(|f| f["f:data"]["f:a"].is_null()) {
        bail!(
            "rival does not own data.a after force: {:?}",
            forced.managed_fields()
        );
    }
    Ok(())
}
