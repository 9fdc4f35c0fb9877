//! Garbage collector over `metadata.ownerReferences`, with Kubernetes' three cascades:
//! Background (dependents of a gone owner are deleted), Foreground (an owner with the
//! `foregroundDeletion` finalizer waits until its blocking dependents are gone) and Orphan
//! (an owner with the `orphan` finalizer first strips itself from its dependents).
//!
//! ```text
//!  metadata watch × every kind ──▶ Graph (uid → node, owner uid → dependents)
//!                                     │ dirty uids (changed, their owners, their dependents)
//!                                     ▼
//!        owner_action ──▶ orphan dependents │ remove finalizer │ delete dependents
//!    dependent_action ──▶ nothing │ drop stale ownerReferences │ delete (policy)
//!                                     ▲
//!            live GET of the dependent and its owners before any write
//! ```
//!
//! The decisions are pure functions over metadata; the loop only finds the inputs and
//! carries the result out through the in-process `kube::Client`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kith_api::kinds::{self, Kind, KINDS};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The finalizer of an owner deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an owner deleted with `propagationPolicy: Orphan`.
pub const ORPHAN: &str = "orphan";

/// How often every candidate is looked at again, in case a watch event was missed.
const RESYNC: Duration = Duration::from_secs(30);
/// How soon a failed step is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What the GC knows of the object one owner reference points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists with the referenced uid and is not waiting for its dependents.
    Solid,
    /// Gone, never existed, or replaced by an object with another uid.
    Dangling,
    /// Exists with the referenced uid and is being deleted with `foregroundDeletion`.
    WaitingForDependents,
    /// Can't be looked up (kind not served, or a namespaced owner of a cluster-scoped
    /// object): Kubernetes leaves such a dependent alone rather than guess.
    Unresolvable,
}

/// The propagation policy of a delete the GC issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    fn policy(self) -> PropagationPolicy {
        match self {
            Propagation::Background => PropagationPolicy::Background,
            Propagation::Foreground => PropagationPolicy::Foreground,
            Propagation::Orphan => PropagationPolicy::Orphan,
        }
    }
}

/// What to do with an object that has owner references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DependentAction {
    Nothing,
    /// A solid owner keeps the object; drop the references (by owner uid) to owners that
    /// are gone or waiting, so a waiting owner is not held by a dependent it can't delete.
    RemoveOwnerRefs(Vec<String>),
    /// No solid owner left: delete it.
    Delete(Propagation),
}

/// What to do with an object being deleted that may have dependents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerAction {
    Nothing,
    /// `orphan`: remove this owner from every dependent's ownerReferences, then the finalizer.
    OrphanDependents,
    /// `foregroundDeletion` with blocking dependents left: have them collected first.
    DeleteDependents,
    /// Nothing holds the owner any more: removing this finalizer lets its deletion finish.
    RemoveFinalizer(&'static str),
}

/// Why the GC could not carry a step out.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{verb} {kind} {name}: {source}")]
    Api {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

fn being_deleted(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// Where an owner reference's target lives: its kind and namespace, if kith serves it.
/// A namespaced owner is looked up in the dependent's namespace (ownerReferences never
/// cross namespaces); a cluster-scoped dependent can't have a namespaced owner.
pub fn resolve(
    reference: &OwnerReference,
    dependent_namespace: Option<&str>,
) -> Option<(&'static Kind, Option<String>)> {
    let kind = kinds::by_kind(&reference.api_version, &reference.kind)?;
    if !kind.namespaced {
        return Some((kind, None));
    }
    let ns = dependent_namespace.filter(|n| !n.is_empty())?;
    Some((kind, Some(ns.to_string())))
}

/// The state of `reference`'s owner, given what is stored under the owner's kind,
/// namespace and name (`None`: nothing). A different uid is another object: dangling.
pub fn owner_state(reference: &OwnerReference, found: Option<&ObjectMeta>) -> OwnerState {
    match found {
        Some(m) if m.uid.as_deref() == Some(reference.uid.as_str()) => {
            if being_deleted(m) && has_finalizer(m, FOREGROUND) {
                OwnerState::WaitingForDependents
            } else {
                OwnerState::Solid
            }
        }
        _ => OwnerState::Dangling,
    }
}

/// Whether `dependent` holds back the foreground deletion of the owner with `owner_uid`.
pub fn blocks(dependent: &ObjectMeta, owner_uid: &str) -> bool {
    dependent
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == owner_uid && r.block_owner_deletion == Some(true))
}

/// The decision for an object with owner references. `owners[i]` is the state of the
/// owner of `meta.ownerReferences[i]`; `has_dependents` says whether anything names this
/// object as its owner (then a waiting owner's foreground cascade continues through it).
pub fn dependent_action(
    meta: &ObjectMeta,
    owners: &[OwnerState],
    has_dependents: bool,
) -> DependentAction {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    // Something else is deleting it already; as an owner it is handled by owner_action.
    if being_deleted(meta) || refs.is_empty() || owners.len() != refs.len() {
        return DependentAction::Nothing;
    }
    if owners.contains(&OwnerState::Unresolvable) {
        return DependentAction::Nothing;
    }
    let solid = owners.contains(&OwnerState::Solid);
    let waiting = owners.contains(&OwnerState::WaitingForDependents);
    if solid {
        let stale: Vec<String> = refs
            .iter()
            .zip(owners)
            .filter(|(_, s)| **s != OwnerState::Solid)
            .map(|(r, _)| r.uid.clone())
            .collect();
        return if stale.is_empty() {
            DependentAction::Nothing
        } else {
            DependentAction::RemoveOwnerRefs(stale)
        };
    }
    if waiting && has_dependents {
        return DependentAction::Delete(Propagation::Foreground);
    }
    // Every owner is gone or waiting: collect it, keeping a cascade someone asked for.
    DependentAction::Delete(if has_finalizer(meta, ORPHAN) {
        Propagation::Orphan
    } else if has_finalizer(meta, FOREGROUND) {
        Propagation::Foreground
    } else {
        Propagation::Background
    })
}

/// The decision for a possible owner: `dependents` name it in their ownerReferences,
/// `blocking` of them with `blockOwnerDeletion: true`.
pub fn owner_action(meta: &ObjectMeta, dependents: usize, blocking: usize) -> OwnerAction {
    if !being_deleted(meta) {
        return OwnerAction::Nothing;
    }
    // Orphan first, as Kubernetes does: a foreground cascade after it finds no dependents.
    if has_finalizer(meta, ORPHAN) {
        return if dependents == 0 {
            OwnerAction::RemoveFinalizer(ORPHAN)
        } else {
            OwnerAction::OrphanDependents
        };
    }
    if has_finalizer(meta, FOREGROUND) {
        // Only blocking dependents hold the owner; the rest are collected as dangling.
        return if blocking == 0 {
            OwnerAction::RemoveFinalizer(FOREGROUND)
        } else {
            OwnerAction::DeleteDependents
        };
    }
    OwnerAction::Nothing
}

/// `meta`'s owner references without those to the owners in `uids`.
pub fn without_owners(meta: &ObjectMeta, uids: &[String]) -> Vec<OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .filter(|r| !uids.contains(&r.uid))
        .cloned()
        .collect()
}

/// One object the GC knows of: where it is and the metadata the decisions read.
#[derive(Clone, Debug)]
struct Node {
    kind: &'static Kind,
    namespace: Option<String>,
    name: String,
    /// `None` for a plain object: no owner references, no finalizers, not being deleted.
    /// Most objects are plain, and of them the decisions read only the uid, which is the
    /// graph's key; a boxed ObjectMeta (≈ 400 B with its strings) for each would cost an
    /// edge box megabytes per 10,000 objects. Boxed: an inline ObjectMeta would make every
    /// slot of the graph's table (used or not) hundreds of bytes.
    meta: Option<Box<ObjectMeta>>,
}

/// What [`Node::meta`] reads for a plain object.
static PLAIN: std::sync::LazyLock<ObjectMeta> = std::sync::LazyLock::new(ObjectMeta::default);

impl Node {
    /// The metadata the decisions read; for a plain object an empty one (without the uid:
    /// callers that compare uids of plain objects take it from the graph's key).
    fn meta(&self) -> &ObjectMeta {
        self.meta.as_deref().unwrap_or(&PLAIN)
    }
}

/// Only the metadata the decisions read, and nothing for a plain object (see [`Node`]).
/// The graph holds every object in the cluster, so keeping their labels, annotations and
/// managedFields as well would cost an edge box tens of MB; writes re-read the live object
/// anyway. Name and namespace live in [`Node`].
fn slim(meta: ObjectMeta) -> Option<Box<ObjectMeta>> {
    let plain = meta.owner_references.as_ref().is_none_or(Vec::is_empty)
        && meta.finalizers.as_ref().is_none_or(Vec::is_empty)
        && meta.deletion_timestamp.is_none();
    if plain {
        return None;
    }
    Some(Box::new(ObjectMeta {
        uid: meta.uid,
        owner_references: meta.owner_references,
        finalizers: meta.finalizers,
        deletion_timestamp: meta.deletion_timestamp,
        resource_version: meta.resource_version,
        ..Default::default()
    }))
}

/// Every object of every kind, by uid, with the owner → dependents edges. Owners are found
/// by the uid their references carry, as Kubernetes' collector does: no index by name (it
/// would cost another entry and copies of three strings per object).
#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
    /// Kinds whose watch has listed everything at least once.
    synced: HashSet<(&'static str, &'static str)>,
    /// Uids seen in the relist under way, per kind; the rest are gone afterwards.
    relisting: HashMap<(&'static str, &'static str), HashSet<String>>,
}

impl Graph {
    /// Record `meta` of `kind`; returns the uids to look at because of the change.
    fn upsert(&mut self, kind: &'static Kind, meta: ObjectMeta) -> Vec<String> {
        let (Some(uid), Some(name)) = (meta.uid.clone(), meta.name.clone()) else {
            return Vec::new();
        };
        let namespace = meta.namespace.clone().filter(|n| !n.is_empty());
        let meta = slim(meta);
        if let Some(seen) = self.relisting.get_mut(&plural_key(kind)) {
            seen.insert(uid.clone());
        }
        let mut dirty = self.unlink(&uid);
        let node = Node {
            kind,
            namespace,
            name,
            meta,
        };
        for r in node.meta().owner_references.iter().flatten() {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(uid.clone());
            dirty.push(r.uid.clone());
        }
        self.nodes.insert(uid.clone(), node);
        dirty.extend(self.dependents_of(&uid));
        dirty.push(uid);
        dirty
    }

    /// Forget the object with `uid`; returns the uids to look at because it is gone.
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut dirty = self.unlink(uid);
        dirty.extend(self.dependents_of(uid));
        dirty
    }

    /// Drop the node and its edges to its owners; returns those owners.
    fn unlink(&mut self, uid: &str) -> Vec<String> {
        let Some(old) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        let mut owners = Vec::new();
        for r in old.meta().owner_references.iter().flatten() {
            if let Some(set) = self.dependents.get_mut(&r.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&r.uid);
                }
            }
            owners.push(r.uid.clone());
        }
        owners
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A relist of `kind` begins: note what it sees.
    fn begin_relist(&mut self, kind: &'static Kind) {
        self.relisting.insert(plural_key(kind), HashSet::new());
    }

    /// A relist of `kind` ended: what it did not see is gone.
    fn end_relist(&mut self, kind: &'static Kind) -> Vec<String> {
        self.synced.insert(plural_key(kind));
        let seen = self.relisting.remove(&plural_key(kind)).unwrap_or_default();
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(uid, n)| n.kind == kind && !seen.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        gone.iter().flat_map(|uid| self.remove(uid)).collect()
    }

    /// The cached state of the owner `reference` of `node` points at.
    fn owner_state(&self, node: &Node, reference: &OwnerReference) -> OwnerState {
        let Some((kind, ns)) = resolve(reference, node.namespace.as_deref()) else {
            return OwnerState::Unresolvable;
        };
        // The object with the reference's uid, if it is the one the reference names (a
        // reference with the right uid but another kind or name points at nothing).
        let found = self.nodes.get(&reference.uid).filter(|n| {
            n.kind.group == kind.group
                && n.kind.kind == kind.kind
                && n.namespace == ns
                && n.name == reference.name
        });
        match found {
            None => owner_state(reference, None),
            Some(Node { meta: Some(m), .. }) => owner_state(reference, Some(m)),
            Some(Node { meta: None, .. }) => {
                let plain = ObjectMeta {
                    uid: Some(reference.uid.clone()),
                    ..Default::default()
                };
                owner_state(reference, Some(&plain))
            }
        }
    }

    /// Everything worth a look on a resync: dependents and owners being deleted.
    fn candidates(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| {
                n.meta()
                    .owner_references
                    .as_ref()
                    .is_some_and(|r| !r.is_empty())
                    || being_deleted(n.meta())
            })
            .map(|(uid, _)| uid.clone())
            .collect()
    }
}

/// Kinds are told apart by group and plural (what the API routes by).
fn plural_key(kind: &'static Kind) -> (&'static str, &'static str) {
    (kind.group, kind.plural)
}

fn api_resource(kind: &Kind) -> ApiResource {
    ApiResource {
        group: kind.group.to_string(),
        version: kind.version.to_string(),
        api_version: kind.api_version(),
        kind: kind.kind.to_string(),
        plural: kind.plural.to_string(),
    }
}

fn dynamic_api(client: &kube::Client, kind: &Kind, ns: Option<&str>) -> kube::Api<DynamicObject> {
    let ar = api_resource(kind);
    match ns {
        Some(ns) => kube::Api::namespaced_with(client.clone(), ns, &ar),
        None => kube::Api::all_with(client.clone(), &ar),
    }
}

/// What a kind's watch reports to the collector.
enum Msg {
    Upsert(&'static Kind, ObjectMeta),
    Remove(ObjectMeta),
    BeginRelist(&'static Kind),
    EndRelist(&'static Kind),
}

/// Run the collector until dropped: one metadata watch per kind feeding one worker.
pub async fn run(client: kube::Client) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watches = JoinSet::new();
    for kind in KINDS {
        watches.spawn(watch_kind(client.clone(), kind, tx.clone()));
    }
    drop(tx);
    let mut gc = Collector {
        client,
        graph: Graph::default(),
    };
    let mut dirty: HashSet<String> = HashSet::new();
    let mut retry: HashSet<String> = HashSet::new();
    let mut resync = tokio::time::interval(RESYNC);
    let mut retry_tick = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                dirty.extend(gc.apply(msg));
                // Take whatever else arrived, so a burst is looked at once.
                while let Ok(msg) = rx.try_recv() {
                    dirty.extend(gc.apply(msg));
                }
            }
            _ = resync.tick() => dirty.extend(gc.graph.candidates()),
            _ = retry_tick.tick() => dirty.extend(retry.drain()),
        }
        // Until every kind is listed, a missing dependent may just be unseen yet.
        if gc.graph.synced.len() < KINDS.len() {
            continue;
        }
        for uid in std::mem::take(&mut dirty) {
            if let Err(e) = gc.process(&uid).await {
                tracing::debug!(error = %e, uid, "garbage collector step failed; retrying");
                retry.insert(uid);
            }
        }
    }
}

async fn watch_kind(client: kube::Client, kind: &'static Kind, tx: mpsc::UnboundedSender<Msg>) {
    // Metadata only: ownerReferences, finalizers and deletionTimestamp are all it reads.
    let api: kube::Api<PartialObjectMeta<DynamicObject>> =
        kube::Api::all_with(client, &api_resource(kind));
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = events.next().await {
        let msg = match ev {
            Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                Msg::Upsert(kind, o.metadata)
            }
            Ok(watcher::Event::Delete(o)) => Msg::Remove(o.metadata),
            Ok(watcher::Event::Init) => Msg::BeginRelist(kind),
            Ok(watcher::Event::InitDone) => Msg::EndRelist(kind),
            Err(e) => {
                tracing::debug!(kind = kind.kind, error = %e, "garbage collector watch error");
                continue;
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

struct Collector {
    client: kube::Client,
    graph: Graph,
}

impl Collector {
    fn apply(&mut self, msg: Msg) -> Vec<String> {
        match msg {
            Msg::Upsert(kind, meta) => self.graph.upsert(kind, meta),
            Msg::Remove(meta) => meta
                .uid
                .as_deref()
                .map(|uid| self.graph.remove(uid))
                .unwrap_or_default(),
            Msg::BeginRelist(kind) => {
                self.graph.begin_relist(kind);
                Vec::new()
            }
            Msg::EndRelist(kind) => self.graph.end_relist(kind),
        }
    }

    /// Look at one object as an owner and as a dependent.
    async fn process(&self, uid: &str) -> Result<(), GcError> {
        let Some(node) = self.graph.nodes.get(uid) else {
            return Ok(());
        };
        let dependents = self.graph.dependents_of(uid);
        let blocking = dependents
            .iter()
            .filter_map(|d| self.graph.nodes.get(d))
            .filter(|d| blocks(d.meta(), uid))
            .count();
        match owner_action(node.meta(), dependents.len(), blocking) {
            OwnerAction::Nothing => {}
            OwnerAction::OrphanDependents => {
                for d in &dependents {
                    if let Some(dep) = self.graph.nodes.get(d) {
                        self.drop_owner_refs(dep, &[uid.to_string()]).await?;
                    }
                }
                self.remove_finalizer(node, ORPHAN).await?;
            }
            OwnerAction::DeleteDependents => {
                for d in &dependents {
                    self.process_dependent(d).await?;
                }
            }
            OwnerAction::RemoveFinalizer(f) => self.remove_finalizer(node, f).await?,
        }
        self.process_dependent(uid).await
    }

    /// Decide on the cached graph, and when that says to act, decide again on live reads:
    /// the watch of an owner's kind may lag behind the dependent's.
    async fn process_dependent(&self, uid: &str) -> Result<(), GcError> {
        let Some(node) = self.graph.nodes.get(uid) else {
            return Ok(());
        };
        let has_dependents = !self.graph.dependents_of(uid).is_empty();
        let cached: Vec<OwnerState> = node
            .meta()
            .owner_references
            .iter()
            .flatten()
            .map(|r| self.graph.owner_state(node, r))
            .collect();
        if dependent_action(node.meta(), &cached, has_dependents) == DependentAction::Nothing {
            return Ok(());
        }
        let Some(latest) = self
            .get_meta(node.kind, node.namespace.as_deref(), &node.name)
            .await?
        else {
            return Ok(());
        };
        if latest.uid.as_deref() != Some(uid) {
            return Ok(());
        }
        let mut live = Vec::new();
        for r in latest.owner_references.iter().flatten() {
            live.push(match resolve(r, node.namespace.as_deref()) {
                None => OwnerState::Unresolvable,
                Some((kind, ns)) => {
                    let found = self.get_meta(kind, ns.as_deref(), &r.name).await?;
                    owner_state(r, found.as_ref())
                }
            });
        }
        match dependent_action(&latest, &live, has_dependents) {
            DependentAction::Nothing => Ok(()),
            DependentAction::RemoveOwnerRefs(uids) => {
                let node = Node {
                    meta: Some(Box::new(latest)),
                    ..node.clone()
                };
                self.drop_owner_refs(&node, &uids).await
            }
            DependentAction::Delete(p) => {
                let params = DeleteParams {
                    propagation_policy: Some(p.policy()),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.to_string()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let api = dynamic_api(&self.client, node.kind, node.namespace.as_deref());
                tracing::info!(kind = node.kind.kind, name = %node.name, policy = ?p, "garbage collecting");
                match api.delete(&node.name, &params).await {
                    Ok(_) => Ok(()),
                    Err(e) if gone_or_changed(&e) => Ok(()),
                    Err(source) => Err(GcError::Api {
                        verb: "delete",
                        kind: node.kind.kind,
                        name: node.name.clone(),
                        source,
                    }),
                }
            }
        }
    }

    async fn get_meta(
        &self,
        k: &'static Kind,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<ObjectMeta>, GcError> {
        dynamic_api(&self.client, k, ns)
            .get_metadata_opt(name)
            .await
            .map(|o| o.map(|o| o.metadata))
            .map_err(|source| GcError::Api {
                verb: "get",
                kind: k.kind,
                name: name.to_string(),
                source,
            })
    }

    /// Remove the references to owners `uids` from `dep`, read afresh so that the merge
    /// patch (guarded by uid and resourceVersion) replaces the list it was computed from.
    async fn drop_owner_refs(&self, dep: &Node, uids: &[String]) -> Result<(), GcError> {
        let Some(latest) = self
            .get_meta(dep.kind, dep.namespace.as_deref(), &dep.name)
            .await?
        else {
            return Ok(());
        };
        if latest.uid != dep.meta().uid
            || !latest
                .owner_references
                .iter()
                .flatten()
                .any(|r| uids.contains(&r.uid))
        {
            return Ok(());
        }
        let patch = json!({"metadata": {
            "uid": latest.uid,
            "resourceVersion": latest.resource_version,
            "ownerReferences": without_owners(&latest, uids),
        }});
        self.patch(dep, &patch, "remove ownerReferences from").await
    }

    /// Objects that name `owner` in their ownerReferences, read live from the API. The
    /// graph can lag its watches: a dependent created just before its owner's deletion may
    /// not be in it yet, so the decisions that end an owner's deletion check here first.
    async fn live_dependents(&self, owner: &Node) -> Result<Vec<Node>, GcError> {
        let Some(uid) = owner.meta().uid.as_deref() else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        // Dependents of a namespaced owner live in its namespace; a cluster-scoped owner's
        // may be anywhere.
        for kind in KINDS
            .iter()
            .filter(|k| owner.namespace.is_none() || k.namespaced)
        {
            let api = dynamic_api(&self.client, kind, owner.namespace.as_deref());
            let list = api
                .list_metadata(&ListParams::default())
                .await
                .map_err(|source| GcError::Api {
                    verb: "list",
                    kind: kind.kind,
                    name: String::new(),
                    source,
                })?;
            for item in list.items {
                let meta = item.metadata;
                if meta.owner_references.iter().flatten().any(|r| r.uid == uid) {
                    found.push(Node {
                        kind,
                        namespace: meta.namespace.clone().filter(|n| !n.is_empty()),
                        name: meta.name.clone().unwrap_or_default(),
                        meta: slim(meta),
                    });
                }
            }
        }
        Ok(found)
    }

    /// Remove finalizer `f` from `owner`, which completes its deletion if it was the last.
    /// Before ending a foreground deletion, no live dependent may still block it; before
    /// ending an orphaning, every live dependent must have lost its reference to the owner.
    async fn remove_finalizer(&self, owner: &Node, f: &str) -> Result<(), GcError> {
        let Some(latest) = self
            .get_meta(owner.kind, owner.namespace.as_deref(), &owner.name)
            .await?
        else {
            return Ok(());
        };
        if latest.uid != owner.meta().uid || !has_finalizer(&latest, f) {
            return Ok(());
        }
        if f == FOREGROUND || f == ORPHAN {
            let uid = owner.meta().uid.clone().unwrap_or_default();
            for dep in self.live_dependents(owner).await? {
                if f == FOREGROUND && blocks(dep.meta(), &uid) {
                    // Its removal or release wakes us again (and the resync is a backstop).
                    return Ok(());
                }
                if f == ORPHAN {
                    self.drop_owner_refs(&dep, std::slice::from_ref(&uid))
                        .await?;
                }
            }
        }
        let left: Vec<&String> = latest
            .finalizers
            .iter()
            .flatten()
            .filter(|x| *x != f)
            .collect();
        let patch = json!({"metadata": {
            "uid": latest.uid,
            "resourceVersion": latest.resource_version,
            "finalizers": left,
        }});
        tracing::info!(kind = owner.kind.kind, name = %owner.name, finalizer = f, "garbage collector removes finalizer");
        self.patch(owner, &patch, "remove finalizer from").await
    }

    async fn patch(
        &self,
        node: &Node,
        patch: &serde_json::Value,
        verb: &'static str,
    ) -> Result<(), GcError> {
        let api = dynamic_api(&self.client, node.kind, node.namespace.as_deref());
        match api
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(source) => Err(GcError::Api {
                verb,
                kind: node.kind.kind,
                name: node.name.clone(),
                source,
            }),
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A delete that found the object gone, or another object (uid precondition) in its place.
fn gone_or_changed(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CM: &str = "ConfigMap";

    fn oref(kind: &str, name: &str, uid: &str, block: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: if kind == "ReplicaSet" {
                "apps/v1"
            } else {
                "v1"
            }
            .into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            block_owner_deletion: block,
            controller: None,
        }
    }

    fn meta(
        uid: &str,
        deleting: bool,
        finalizers: &[&str],
        refs: Vec<OwnerReference>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(format!("obj-{uid}")),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            deletion_timestamp: deleting.then_some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            ),
            finalizers: (!finalizers.is_empty())
                .then(|| finalizers.iter().map(|f| f.to_string()).collect()),
            owner_references: (!refs.is_empty()).then_some(refs),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn resolves_owner_kind_and_namespace() {
        // apiVersion, kind, dependent's namespace → kind and namespace to look in.
        type Row<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<(&'a str, Option<&'a str>)>,
        );
        let table: [Row; 7] = [
            ("v1", CM, Some("team"), Some((CM, Some("team")))),
            // Owners never live in another namespace than their namespaced dependent.
            (
                "apps/v1",
                "ReplicaSet",
                Some("a"),
                Some(("ReplicaSet", Some("a"))),
            ),
            ("v1", "Namespace", Some("a"), Some(("Namespace", None))),
            ("v1", "Node", None, Some(("Node", None))),
            // A cluster-scoped dependent can't name a namespaced owner.
            ("v1", CM, None, None),
            // Not served by kith: unknown kind, or a version it doesn't serve.
            ("example.com/v1", "Widget", Some("a"), None),
            ("apps/v1beta1", "ReplicaSet", Some("a"), None),
        ];
        for (api_version, kind, dep_ns, want) in table {
            let r = OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                ..oref(CM, "o", "u", None)
            };
            let got = resolve(&r, dep_ns).map(|(k, ns)| (k.kind, ns));
            let want = want.map(|(k, ns)| (k, ns.map(str::to_string)));
            assert_eq!(got, want, "{api_version} {kind} from {dep_ns:?}");
        }
    }

    #[test]
    fn owner_states() {
        let r = oref(CM, "o", "u1", None);
        let live = meta("u1", false, &[], vec![]);
        let other_uid = meta("u2", false, &[], vec![]);
        let foreground = meta("u1", true, &[FOREGROUND], vec![]);
        let orphaning = meta("u1", true, &[ORPHAN], vec![]);
        let other_finalizer = meta("u1", true, &["example.com/hold"], vec![]);
        // A foregroundDeletion finalizer without a deletion is no cascade yet.
        let finalizer_only = meta("u1", false, &[FOREGROUND], vec![]);
        let other_uid_foreground = meta("u2", true, &[FOREGROUND], vec![]);
        let table = [
            (None, OwnerState::Dangling),
            (Some(&live), OwnerState::Solid),
            (Some(&other_uid), OwnerState::Dangling),
            (Some(&foreground), OwnerState::WaitingForDependents),
            (Some(&orphaning), OwnerState::Solid),
            (Some(&other_finalizer), OwnerState::Solid),
            (Some(&finalizer_only), OwnerState::Solid),
            (Some(&other_uid_foreground), OwnerState::Dangling),
        ];
        for (found, want) in table {
            assert_eq!(owner_state(&r, found), want, "{found:?}");
        }
    }

    #[test]
    fn dependent_actions() {
        use DependentAction::*;
        use OwnerState::*;
        let a = oref(CM, "a", "ua", Some(true));
        let b = oref(CM, "b", "ub", None);
        let one = meta("d", false, &[], vec![a.clone()]);
        let two = meta("d", false, &[], vec![a.clone(), b.clone()]);
        let none = meta("d", false, &[], vec![]);
        let deleting = meta("d", true, &["example.com/hold"], vec![a.clone()]);
        let wants_orphan = meta("d", false, &[ORPHAN], vec![a.clone()]);
        let wants_foreground = meta("d", false, &[FOREGROUND], vec![a.clone()]);
        let s = |x: &str| vec![x.to_string()];
        let table: Vec<(&ObjectMeta, Vec<OwnerState>, bool, DependentAction)> = vec![
            (&none, vec![], false, Nothing),
            (&one, vec![Solid], false, Nothing),
            (&one, vec![Dangling], false, Delete(Propagation::Background)),
            (&one, vec![Dangling], true, Delete(Propagation::Background)),
            // Foreground cascades on through dependents that have dependents themselves.
            (
                &one,
                vec![WaitingForDependents],
                false,
                Delete(Propagation::Background),
            ),
            (
                &one,
                vec![WaitingForDependents],
                true,
                Delete(Propagation::Foreground),
            ),
            (&one, vec![Unresolvable], false, Nothing),
            // Several owners: any solid one keeps it, and stale references go.
            (&two, vec![Solid, Solid], false, Nothing),
            (&two, vec![Solid, Dangling], false, RemoveOwnerRefs(s("ub"))),
            (
                &two,
                vec![WaitingForDependents, Solid],
                true,
                RemoveOwnerRefs(s("ua")),
            ),
            (
                &two,
                vec![Dangling, WaitingForDependents],
                false,
                Delete(Propagation::Background),
            ),
            (
                &two,
                vec![Dangling, WaitingForDependents],
                true,
                Delete(Propagation::Foreground),
            ),
            (
                &two,
                vec![Dangling, Dangling],
                false,
                Delete(Propagation::Background),
            ),
            // One owner that can't be looked up: leave the object alone, as Kubernetes does.
            (&two, vec![Dangling, Unresolvable], false, Nothing),
            (&two, vec![Solid, Unresolvable], false, Nothing),
            (&deleting, vec![Dangling], false, Nothing),
            (
                &wants_orphan,
                vec![Dangling],
                true,
                Delete(Propagation::Orphan),
            ),
            (
                &wants_foreground,
                vec![Dangling],
                false,
                Delete(Propagation::Foreground),
            ),
            // States that don't line up with the references (a stale read): do nothing.
            (&two, vec![Dangling], false, Nothing),
        ];
        for (m, owners, has_deps, want) in table {
            assert_eq!(
                dependent_action(m, &owners, has_deps),
                want,
                "{:?} {owners:?} deps={has_deps}",
                m.owner_references
            );
        }
    }

    #[test]
    fn owner_actions() {
        use OwnerAction::*;
        let live = meta("o", false, &[], vec![]);
        let live_with_finalizer = meta("o", false, &[FOREGROUND], vec![]);
        let foreground = meta("o", true, &[FOREGROUND], vec![]);
        let foreground_held = meta("o", true, &[FOREGROUND, "example.com/hold"], vec![]);
        let orphan = meta("o", true, &[ORPHAN], vec![]);
        let both = meta("o", true, &[ORPHAN, FOREGROUND], vec![]);
        let other = meta("o", true, &["example.com/hold"], vec![]);
        let table = [
            (&live, 3, 3, Nothing),
            (&live_with_finalizer, 0, 0, Nothing),
            (&foreground, 0, 0, RemoveFinalizer(FOREGROUND)),
            (&foreground, 2, 1, DeleteDependents),
            // Dependents without blockOwnerDeletion don't hold the owner.
            (&foreground, 2, 0, RemoveFinalizer(FOREGROUND)),
            (&foreground_held, 0, 0, RemoveFinalizer(FOREGROUND)),
            (&orphan, 2, 2, OrphanDependents),
            (&orphan, 0, 0, RemoveFinalizer(ORPHAN)),
            (&both, 1, 1, OrphanDependents),
            (&both, 0, 0, RemoveFinalizer(ORPHAN)),
            (&other, 2, 2, Nothing),
        ];
        for (m, deps, blocking, want) in table {
            assert_eq!(
                owner_action(m, deps, blocking),
                want,
                "{:?} deps={deps} blocking={blocking}",
                m.finalizers
            );
        }
    }

    #[test]
    fn blocking_and_stripping_references() {
        let d = meta(
            "d",
            false,
            &[],
            vec![
                oref(CM, "a", "ua", Some(true)),
                oref(CM, "b", "ub", Some(false)),
                oref(CM, "c", "uc", None),
            ],
        );
        for (owner, want) in [("ua", true), ("ub", false), ("uc", false), ("ux", false)] {
            assert_eq!(blocks(&d, owner), want, "{owner}");
        }
        let uids = |refs: Vec<OwnerReference>| refs.into_iter().map(|r| r.uid).collect::<Vec<_>>();
        let table: [(&[&str], &[&str]); 4] = [
            (&[], &["ua", "ub", "uc"]),
            (&["ub"], &["ua", "uc"]),
            (&["ua", "uc"], &["ub"]),
            (&["ux"], &["ua", "ub", "uc"]),
        ];
        for (drop, keep) in table {
            let drop: Vec<String> = drop.iter().map(|s| s.to_string()).collect();
            assert_eq!(uids(without_owners(&d, &drop)), keep, "{drop:?}");
        }
    }

    fn cm_kind() -> &'static Kind {
        kinds::by_kind("v1", CM).expect("ConfigMap is served")
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn graph_tracks_edges_and_what_to_look_at() {
        let cm = cm_kind();
        let mut g = Graph::default();
        let owner = meta("o", false, &[], vec![]);
        let dep = meta("d", false, &[], vec![oref(CM, "obj-o", "o", Some(true))]);
        // In order: each change, and the uids it makes worth a look.
        assert_eq!(sorted(g.upsert(cm, dep.clone())), ["d", "o"]);
        let r = oref(CM, "obj-o", "o", None);
        let node = g.nodes.get("d").cloned().expect("dependent recorded");
        assert_eq!(g.owner_state(&node, &r), OwnerState::Dangling);
        assert_eq!(sorted(g.upsert(cm, owner)), ["d", "o"]);
        assert_eq!(g.owner_state(&node, &r), OwnerState::Solid);
        assert_eq!(g.dependents_of("o"), ["d"]);
        assert_eq!(
            sorted(g.upsert(cm, meta("o", true, &[FOREGROUND], vec![]))),
            ["d", "o"]
        );
        assert_eq!(g.owner_state(&node, &r), OwnerState::WaitingForDependents);
        assert_eq!(sorted(g.candidates()), ["d", "o"]);
        // The dependent goes: its owner is worth a look (it may be waiting for it).
        assert_eq!(g.remove("d"), ["o"]);
        assert!(g.dependents_of("o").is_empty());
        // An owner replaced by another object of the same name is not the owner.
        assert_eq!(sorted(g.upsert(cm, dep)), ["d", "o"]);
        assert_eq!(sorted(g.remove("o")), ["d"]);
        let mut replacement = meta("o2", false, &[], vec![]);
        replacement.name = Some("obj-o".into());
        g.upsert(cm, replacement);
        assert_eq!(g.owner_state(&node, &r), OwnerState::Dangling);
    }

    #[test]
    fn only_objects_the_decisions_read_keep_metadata() {
        // uid, deleting, finalizers, has owner references → metadata kept.
        let table = [
            ("plain", false, &[][..], false, false),
            ("dependent", false, &[][..], true, true),
            ("finalized", false, &[ORPHAN][..], false, true),
            ("deleting", true, &[][..], false, true),
        ];
        let cm = cm_kind();
        let mut g = Graph::default();
        for (uid, deleting, finalizers, owned, kept) in table {
            let refs = if owned {
                vec![oref(CM, "obj-o", "o", None)]
            } else {
                vec![]
            };
            let m = meta(uid, deleting, finalizers, refs);
            assert_eq!(slim(m.clone()).is_some(), kept, "{uid}");
            g.upsert(cm, m.clone());
            let node = g.nodes.get(uid).expect("recorded");
            assert_eq!(node.meta.is_some(), kept, "{uid}");
            assert_eq!(node.meta().owner_references, m.owner_references, "{uid}");
            assert_eq!(node.meta().finalizers, m.finalizers, "{uid}");
            assert_eq!(
                node.meta().deletion_timestamp,
                m.deletion_timestamp,
                "{uid}"
            );
        }
        // A plain owner is still told apart by its uid.
        let dep = g.nodes.get("dependent").cloned().expect("dependent");
        let plain = |uid: &str| oref(CM, "obj-plain", uid, None);
        assert_eq!(g.owner_state(&dep, &plain("plain")), OwnerState::Solid);
        assert_eq!(g.owner_state(&dep, &plain("other")), OwnerState::Dangling);
    }

    #[test]
    fn relist_forgets_what_it_did_not_see() {
        let cm = cm_kind();
        let mut g = Graph::default();
        g.upsert(cm, meta("o", false, &[], vec![]));
        g.upsert(
            cm,
            meta("d", false, &[], vec![oref(CM, "obj-o", "o", None)]),
        );
        g.begin_relist(cm);
        g.upsert(
            cm,
            meta("d", false, &[], vec![oref(CM, "obj-o", "o", None)]),
        );
        assert!(!g.synced.contains(&plural_key(cm)));
        // The owner was deleted while the watch was down: its dependent is worth a look.
        assert_eq!(g.end_relist(cm), ["d"]);
        assert!(g.synced.contains(&plural_key(cm)));
        assert!(!g.nodes.contains_key("o"));
        assert!(g.nodes.contains_key("d"));
    }

    /// The loop against the real API service over an in-memory store: the three cascades
    /// and a dependent whose owner never existed.
    mod in_process {
        use std::sync::Arc;

        use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
        use kith_api::auth::{Authenticator, User, MASTERS_GROUP};
        use kith_api::handler::Api;
        use kith_api::server::ApiService;
        use kith_api::store::memory::MemoryStore;
        use kube::api::PostParams;

        use super::*;

        async fn cluster() -> (kube::Client, JoinSet<()>) {
            let svc = ApiService::new(
                Arc::new(Api::new(MemoryStore::default())),
                Authenticator::new([]),
            );
            let client = crate::client::in_process(svc, User::new("test", [MASTERS_GROUP]));
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some("default".into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            kube::Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await
                .expect("namespace");
            let mut set = JoinSet::new();
            set.spawn(run(client.clone()));
            (client, set)
        }

        fn named(name: &str, owners: Vec<OwnerReference>) -> ObjectMeta {
            ObjectMeta {
                name: Some(name.into()),
                owner_references: (!owners.is_empty()).then_some(owners),
                ..ObjectMeta::default()
            }
        }

        async fn owner_with_dependents(client: &kube::Client, name: &str) -> OwnerReference {
            let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
            let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), "default");
            let owner = cms
                .create(
                    &PostParams::default(),
                    &ConfigMap {
                        metadata: named(name, vec![]),
                        ..ConfigMap::default()
                    },
                )
                .await
                .expect("owner");
            let r = oref(
                CM,
                name,
                owner.metadata.uid.as_deref().unwrap_or_default(),
                Some(true),
            );
            cms.create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: named(&format!("{name}-cm"), vec![r.clone()]),
                    ..ConfigMap::default()
                },
            )
            .await
            .expect("dependent configmap");
            secrets
                .create(
                    &PostParams::default(),
                    &Secret {
                        metadata: named(&format!("{name}-secret"), vec![r.clone()]),
                        ..Secret::default()
                    },
                )
                .await
                .expect("dependent secret");
            r
        }

        /// Polls until `done` holds, for at most ten seconds.
        async fn eventually<F, Fut>(what: &str, done: F)
        where
            F: Fn() -> Fut,
            Fut: std::future::Future<Output = bool>,
        {
            for _ in 0..100 {
                if done().await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("not in time: {what}");
        }

        async fn exists(client: &kube::Client, kind: &str, name: &str) -> Option<ObjectMeta> {
            let k = kinds::by_kind("v1", kind).expect("kind");
            dynamic_api(client, k, Some("default"))
                .get_metadata_opt(name)
                .await
                .expect("get")
                .map(|o| o.metadata)
        }

        fn delete(policy: PropagationPolicy) -> DeleteParams {
            DeleteParams {
                propagation_policy: Some(policy),
                ..DeleteParams::default()
            }
        }

        #[tokio::test]
        async fn background_collects_dependents_and_dangling_ones() {
            let (client, _gc) = cluster().await;
            owner_with_dependents(&client, "bg").await;
            let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
            let never = oref(CM, "never-existed", "00000000-dead", None);
            cms.create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: named("stray", vec![never]),
                    ..ConfigMap::default()
                },
            )
            .await
            .expect("stray");
            cms.delete("bg", &delete(PropagationPolicy::Background))
                .await
                .expect("delete owner");
            eventually("dependents and the stray collected", || async {
                exists(&client, CM, "bg-cm").await.is_none()
                    && exists(&client, "Secret", "bg-secret").await.is_none()
                    && exists(&client, CM, "stray").await.is_none()
            })
            .await;
        }

        #[tokio::test]
        async fn foreground_owner_waits_for_blocking_dependents() {
            let (client, _gc) = cluster().await;
            owner_with_dependents(&client, "fg").await;
            // A finalizer on one dependent holds it, and so the owner, until removed.
            let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
            let hold = json!({"metadata": {"finalizers": ["example.com/hold"]}});
            cms.patch("fg-cm", &PatchParams::default(), &Patch::Merge(&hold))
                .await
                .expect("hold");
            cms.delete("fg", &delete(PropagationPolicy::Foreground))
                .await
                .expect("delete owner");
            eventually("secret collected, configmap being deleted", || async {
                exists(&client, "Secret", "fg-secret").await.is_none()
                    && exists(&client, CM, "fg-cm")
                        .await
                        .is_some_and(|m| m.deletion_timestamp.is_some())
            })
            .await;
            let owner = exists(&client, CM, "fg").await.expect("owner still there");
            assert!(has_finalizer(&owner, FOREGROUND), "{owner:?}");
            let release = json!({"metadata": {"finalizers": null}});
            cms.patch("fg-cm", &PatchParams::default(), &Patch::Merge(&release))
                .await
                .expect("release");
            eventually("owner gone", || async {
                exists(&client, CM, "fg").await.is_none()
            })
            .await;
        }

        #[tokio::test]
        async fn orphan_strips_references_and_keeps_dependents() {
            let (client, _gc) = cluster().await;
            owner_with_dependents(&client, "or").await;
            let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
            cms.delete("or", &delete(PropagationPolicy::Orphan))
                .await
                .expect("delete owner");
            eventually("owner gone", || async {
                exists(&client, CM, "or").await.is_none()
            })
            .await;
            for (kind, name) in [(CM, "or-cm"), ("Secret", "or-secret")] {
                let m = exists(&client, kind, name).await.expect("dependent kept");
                assert!(
                    m.owner_references.as_ref().is_none_or(Vec::is_empty),
                    "{name}: {m:?}"
                );
            }
            // And they stay: nothing left to collect them for.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(exists(&client, CM, "or-cm").await.is_some());
        }
    }
}
