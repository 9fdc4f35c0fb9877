//! ControllerRevisions: the template history of a DaemonSet or StatefulSet, kept as
//! kube-controller-manager keeps it (`constructHistory`/`cleanupHistory` in its
//! `daemon/update.go`, `getStatefulSetRevisions`/`truncateHistory` for StatefulSets), so
//! that `kubectl rollout history` lists the templates and `kubectl rollout undo` finds the
//! one to go back to.
//!
//! ```text
//!  owner's template ──▶ revision it would get (name <owner>-<hash>, data = patch) ──┐
//!  existing revisions ───────────────────────────────────────────────────────────────┼─▶ plan
//!  revisions in use ─────────────────────────────────────────────────────────────────┘
//!      create it (number max + 1) | renumber the one that matches (after an undo)
//!      | delete the oldest beyond revisionHistoryLimit that no pod runs
//! ```
//!
//! A revision's data is the strategic merge patch kubectl applies on `rollout undo`:
//! `{"spec":{"template":{...,"$patch":"replace"}}}`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

use super::replicaset::controller_of;

/// The label naming the revision a pod (or revision) was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";
/// How many old revisions an owner keeps when `revisionHistoryLimit` is unset.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// The patch that puts `template` back: what kubectl applies on `rollout undo`.
pub fn template_patch(template: &PodTemplateSpec) -> Result<Value, serde_json::Error> {
    let mut t = serde_json::to_value(template)?;
    if let Value::Object(m) = &mut t {
        m.insert("$patch".into(), json!("replace"));
    }
    Ok(json!({"spec": {"template": t}}))
}

/// The revision an owner's current template gets (its number is set by [`plan`]): named
/// `<owner>-<hash>`, labelled with the template's labels and the hash, annotated like the
/// owner (so `kubernetes.io/change-cause` shows in `rollout history`), controlled by it.
pub fn revision_for(
    owner: OwnerReference,
    meta: &ObjectMeta,
    template: &PodTemplateSpec,
    hash: &str,
) -> Result<ControllerRevision, serde_json::Error> {
    let mut labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    Ok(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", owner.name)),
            namespace: meta.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations.clone(),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(RawExtension(template_patch(template)?)),
        revision: 0,
    })
}

/// What to change in one owner's history.
#[derive(Debug, Default, PartialEq)]
pub struct HistoryPlan {
    /// The revision of the current template, when none exists yet.
    pub create: Option<ControllerRevision>,
    /// The existing revision of the current template and its new number, when it is not
    /// the newest (the owner went back to an older template).
    pub renumber: Option<(String, i64)>,
    /// Old revisions beyond the history limit that no pod runs, oldest first.
    pub delete: Vec<String>,
}

fn hash_of(r: &ControllerRevision) -> Option<&str> {
    r.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .map(String::as_str)
}

/// Decide the owner's history. `current` comes from [`revision_for`]; `existing` may hold
/// other owners' revisions (they are left alone); `live` names the revisions in use (the
/// owner's pods run them), which are kept whatever the limit. Pure.
pub fn plan(
    current: ControllerRevision,
    existing: &[ControllerRevision],
    limit: Option<i32>,
    live: &BTreeSet<String>,
) -> HistoryPlan {
    let owner_uid = current
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str());
    let owned: Vec<&ControllerRevision> = existing
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .filter(|r| controller_of(*r).map(|o| o.uid.as_str()) == owner_uid && owner_uid.is_some())
        .collect();
    let hash = hash_of(&current);
    // The same template may already be recorded: by its hash, or by equal data (a revision
    // written before a collision changed the hash).
    let same = owned
        .iter()
        .copied()
        .filter(|r| {
            (hash.is_some() && hash_of(r) == hash) || (r.data.is_some() && r.data == current.data)
        })
        .max_by_key(|r| r.revision);
    let old: Vec<&ControllerRevision> = owned
        .iter()
        .copied()
        .filter(|r| same.is_none_or(|s| !std::ptr::eq(*r, s)))
        .collect();
    let next = old.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    let mut out = HistoryPlan::default();
    match same {
        Some(s) if s.revision < next => {
            out.renumber = Some((s.metadata.name.clone().unwrap_or_default(), next));
        }
        Some(_) => {}
        None => {
            let mut r = current;
            r.revision = next;
            out.create = Some(r);
        }
    }
    let limit = usize::try_from(limit.unwrap_or(DEFAULT_HISTORY_LIMIT)).unwrap_or(0);
    let mut to_delete = old.len().saturating_sub(limit);
    let mut oldest_first = old;
    oldest_first.sort_by_key(|r| r.revision);
    for r in oldest_first {
        if to_delete == 0 {
            break;
        }
        if r.metadata.name.as_ref().is_some_and(|n| live.contains(n)) {
            continue;
        }
        out.delete.push(r.metadata.name.clone().unwrap_or_default());
        to_delete -= 1;
    }
    out
}

/// Carry out a history plan: the current template's revision first, then the pruning.
pub async fn record(api: &Api<ControllerRevision>, plan: &HistoryPlan) -> Result<(), kube::Error> {
    let gone = |e: &kube::Error| matches!(e, kube::Error::Api(a) if a.code == 404);
    if let Some(r) = &plan.create {
        match api.create(&PostParams::default(), r).await {
            // Made by an earlier pass whose list did not see it yet.
            Err(kube::Error::Api(a)) if a.code == 409 => {}
            other => {
                other?;
            }
        }
    }
    if let Some((name, revision)) = &plan.renumber {
        let body = json!({"revision": revision});
        if let Err(e) = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            if !gone(&e) {
                return Err(e);
            }
        }
    }
    for name in &plan.delete {
        if let Err(e) = api.delete(name, &DeleteParams::default()).await {
            if !gone(&e) {
                return Err(e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            name: "web".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]}
        }))
        .expect("template")
    }

    fn current(image: &str) -> ControllerRevision {
        let meta = ObjectMeta {
            namespace: Some("default".into()),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/change-cause".into(),
                format!("image {image}"),
            )])),
            ..Default::default()
        };
        revision_for(owner("u1"), &meta, &template(image), &format!("h-{image}")).expect("rev")
    }

    /// An existing revision of `image` numbered `n`, controlled by the owner `uid`.
    fn existing(image: &str, n: i64, uid: &str) -> ControllerRevision {
        let mut r = current(image);
        r.revision = n;
        r.metadata.owner_references = Some(vec![owner(uid)]);
        r
    }

    #[test]
    fn revision_carries_the_patch_kubectl_applies() {
        let r = current("v1");
        assert_eq!(r.metadata.name.as_deref(), Some("web-h-v1"));
        assert_eq!(r.metadata.namespace.as_deref(), Some("default"));
        let labels = r.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(labels.get(HASH_LABEL).map(String::as_str), Some("h-v1"));
        assert_eq!(
            r.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/change-cause"))
                .map(String::as_str),
            Some("image v1")
        );
        assert_eq!(
            r.data.map(|d| d.0),
            Some(json!({"spec": {"template": {
                "$patch": "replace",
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "v1"}]}
            }}}))
        );
    }

    #[test]
    fn plan_table() {
        struct Case {
            name: &'static str,
            current: &'static str,
            existing: Vec<ControllerRevision>,
            limit: Option<i32>,
            live: &'static [&'static str],
            create: Option<i64>,
            renumber: Option<(&'static str, i64)>,
            delete: &'static [&'static str],
        }
        let cases = vec![
            Case {
                name: "the first template is revision 1",
                current: "v1",
                existing: vec![],
                limit: None,
                live: &[],
                create: Some(1),
                renumber: None,
                delete: &[],
            },
            Case {
                name: "nothing to do when the newest revision is the template",
                current: "v2",
                existing: vec![existing("v1", 1, "u1"), existing("v2", 2, "u1")],
                limit: None,
                live: &[],
                create: None,
                renumber: None,
                delete: &[],
            },
            Case {
                name: "a new template follows the highest number",
                current: "v3",
                existing: vec![existing("v1", 4, "u1"), existing("v2", 2, "u1")],
                limit: None,
                live: &[],
                create: Some(5),
                renumber: None,
                delete: &[],
            },
            Case {
                name: "going back to an old template renumbers it",
                current: "v1",
                existing: vec![existing("v1", 1, "u1"), existing("v2", 2, "u1")],
                limit: None,
                live: &[],
                create: None,
                renumber: Some(("web-h-v1", 3)),
                delete: &[],
            },
            Case {
                name: "other owners' revisions are not counted or touched",
                current: "v2",
                existing: vec![existing("v1", 7, "u2"), existing("v9", 1, "u2")],
                limit: Some(0),
                live: &[],
                create: Some(1),
                renumber: None,
                delete: &[],
            },
            Case {
                name: "beyond the limit the oldest go",
                current: "v4",
                existing: vec![
                    existing("v3", 3, "u1"),
                    existing("v1", 1, "u1"),
                    existing("v2", 2, "u1"),
                ],
                limit: Some(1),
                live: &[],
                create: Some(4),
                renumber: None,
                delete: &["web-h-v1", "web-h-v2"],
            },
            Case {
                name: "a revision pods still run is kept, the next oldest goes instead",
                current: "v4",
                existing: vec![
                    existing("v1", 1, "u1"),
                    existing("v2", 2, "u1"),
                    existing("v3", 3, "u1"),
                ],
                limit: Some(2),
                live: &["web-h-v1"],
                create: Some(4),
                renumber: None,
                delete: &["web-h-v2"],
            },
            Case {
                name: "limit 0 keeps only the current one",
                current: "v2",
                existing: vec![existing("v1", 1, "u1"), existing("v2", 2, "u1")],
                limit: Some(0),
                live: &[],
                create: None,
                renumber: None,
                delete: &["web-h-v1"],
            },
        ];
        for c in cases {
            let live: BTreeSet<String> = c.live.iter().map(|s| s.to_string()).collect();
            let p = plan(current(c.current), &c.existing, c.limit, &live);
            assert_eq!(p.create.map(|r| r.revision), c.create, "{}", c.name);
            assert_eq!(
                p.renumber,
                c.renumber.map(|(n, r)| (n.to_string(), r)),
                "{}",
                c.name
            );
            assert_eq!(p.delete, c.delete, "{}", c.name);
        }
    }
}
