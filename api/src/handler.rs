//! The generic REST verbs over any kind in the registry.
//!
//! ```text
//!  body ─▶ decode (json|yaml|protobuf) ─▶ patch? ─▶ typed decode (fieldValidation)
//!       ─▶ defaults ─▶ validation ─▶ metadata rules (uid, generation, status, managedFields)
//!       ─▶ ObjectStore::write ─▶ reply
//! ```
//!
//! Nothing reaches the store until every check passed, so a refused request changes
//! nothing. Kind-specific behaviour is limited to what Kubernetes itself special-cases
//! (status subresources, scale, binding, graceful pod deletion, namespaces).

use serde_json::{json, Map, Value};

use crate::error::{ApiError, Cause, Result, Target, MAX_BODY_BYTES};
use crate::kinds::{self, Kind, Subresource};
use crate::request::{FieldValidation, Query, ResourceRoute};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{ObjectKey, ObjectStore, Precondition, ReadMode, StoreError, WriteOp};
use crate::{defaults, patch, validation};

/// How many times a patch is retried when the object changed underneath it.
const PATCH_RETRIES: usize = 5;

/// A JSON reply: status code, body, and `Warning` headers.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub body: Value,
    pub warnings: Vec<String>,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Reply {
            code: 200,
            body,
            warnings: Vec::new(),
        }
    }
}

/// The format of a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    Json,
    Yaml,
    Protobuf,
    JsonPatch,
    MergePatch,
    StrategicMergePatch,
    ApplyPatch,
}

impl BodyType {
    pub fn from_content_type(ct: Option<&str>) -> Result<Self> {
        let ct = ct.unwrap_or("application/json");
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Ok(match essence.as_str() {
            "" | "application/json" | "*/*" => BodyType::Json,
            "application/yaml" | "application/x-yaml" | "text/yaml" => BodyType::Yaml,
            "application/vnd.kubernetes.protobuf" => BodyType::Protobuf,
            "application/json-patch+json" => BodyType::JsonPatch,
            "application/merge-patch+json" => BodyType::MergePatch,
            "application/strategic-merge-patch+json" => BodyType::StrategicMergePatch,
            "application/apply-patch+yaml" | "application/apply-patch+json" => BodyType::ApplyPatch,
            _ => return Err(ApiError::UnsupportedMediaType(ct.to_string())),
        })
    }

    fn is_patch(self) -> bool {
        matches!(
            self,
            BodyType::JsonPatch
                | BodyType::MergePatch
                | BodyType::StrategicMergePatch
                | BodyType::ApplyPatch
        )
    }
}

/// Parse a request body into JSON.
pub fn decode_body(body: &[u8], ty: BodyType) -> Result<Value> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::TooLarge);
    }
    match ty {
        BodyType::Protobuf => crate::protobuf::decode(body).map_err(|e| e.into_api()),
        BodyType::Yaml | BodyType::ApplyPatch => serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}"))),
        _ => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding JSON body: {e}"))),
    }
}

pub fn now_rfc3339(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn target(kind: &Kind, name: &str) -> Target {
    Target {
        group: kind.group.to_string(),
        resource: kind.plural.to_string(),
        kind: kind.kind.to_string(),
        name: name.to_string(),
    }
}

fn parse_stored(b: &[u8]) -> Result<Value> {
    serde_json::from_slice(b)
        .map_err(|e| ApiError::Internal(format!("stored object is not JSON: {e}")))
}

fn meta(v: &Value) -> &Value {
    v.get("metadata").unwrap_or(&Value::Null)
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    meta(v)
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    match v.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable_meta(),
    }
}

#[allow(clippy::panic)]
fn unreachable_meta() -> ! {
    // meta_mut has just made metadata an object.
    panic!("metadata is an object")
}

fn resource_version(v: &Value) -> Option<u64> {
    meta_str(v, "resourceVersion").and_then(|s| s.parse().ok())
}

/// Kinds whose `metadata.generation` tracks spec changes.
fn tracks_generation(kind: &Kind) -> bool {
    matches!(kind.group, "apps" | "batch")
}

/// Everything but metadata and status: a change here is a spec change.
fn spec_part(v: &Value) -> Value {
    let mut m = v.as_object().cloned().unwrap_or_default();
    m.remove("metadata");
    m.remove("status");
    Value::Object(m)
}

fn strip_system_meta(m: &mut Map<String, Value>) {
    for f in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        m.remove(f);
    }
}

/// Generated-name suffix alphabet (no vowels, as Kubernetes does, to avoid words).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHANUMS[*b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// Initial QoS class of a pod, as the kubelet and API server compute it.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.get("resources").and_then(|r| r.get("requests"));
        let lim = c.get("resources").and_then(|r| r.get("limits"));
        if req.is_some_and(|r| r.as_object().is_some_and(|m| !m.is_empty()))
            || lim.is_some_and(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(res));
            let r = req.and_then(|r| r.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Who owns the fields a write sets (`metadata.managedFields`).
enum Ownership {
    /// An ordinary write: the manager takes the fields it changed.
    Update,
    /// A server-side apply, whose own computation already produced `managedFields`.
    Applied(Value),
}

impl Ownership {
    fn record(self, old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
        match self {
            Ownership::Update => patch::record_update(old, new, manager, now),
            Ownership::Applied(managed) => {
                meta_mut(new).insert("managedFields".into(), managed);
            }
        }
    }
}

/// The REST layer over one store.
pub struct Api<S> {
    pub store: S,
    now: fn() -> jiff::Timestamp,
}

impl<S: ObjectStore> Api<S> {
    pub fn new(store: S) -> Self {
        Api {
            store,
            now: jiff::Timestamp::now,
        }
    }

    /// Use another clock (tests).
    pub fn with_clock(store: S, now: fn() -> jiff::Timestamp) -> Self {
        Api { store, now }
    }

    pub fn now(&self) -> jiff::Timestamp {
        (self.now)()
    }

    fn key(&self, kind: &Kind, ns: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey::new(
            kind.resource(),
            if kind.namespaced {
                ns.unwrap_or("")
            } else {
                ""
            },
            name,
        )
    }

    fn read_mode(q: &Query) -> ReadMode {
        match q.resource_version.as_deref() {
            Some("0") => ReadMode::Stale,
            Some(_) if q.resource_version_match.as_deref() == Some("NotOlderThan") => {
                ReadMode::Stale
            }
            _ => ReadMode::Linearizable,
        }
    }

    /// Read one object as JSON.
    pub async fn get_object(
        &self,
        kind: &Kind,
        ns: Option<&str>,
        name: &str,
        mode: ReadMode,
    ) -> Result<Value> {
        let b = self
            .store
            .get(&self.key(kind, ns, name), mode)
            .await
            .map_err(|e| ApiError::from_store(e, target(kind, name)))?;
        parse_stored(&b)
    }

    /// `GET` of one object (or of its status/scale subresource).
    pub async fn get(&self, r: &ResourceRoute, q: &Query) -> Result<Reply> {
        let name = r.name.as_deref().unwrap_or_default();
        let obj = self
            .get_object(r.kind, r.namespace.as_deref(), name, Self::read_mode(q))
            .await?;
        match r.subresource.as_deref() {
            None | Some("status") => Ok(Reply::ok(obj)),
            Some("scale") if r.kind.has(Subresource::Scale) => Ok(Reply::ok(scale_of(&obj))),
            Some(other) => Err(self.no_subresource(r.kind, name, other, "get")),
        }
    }

    fn no_subresource(&self, kind: &Kind, name: &str, sub: &str, verb: &str) -> ApiError {
        match sub {
            "status" | "scale" | "binding" | "finalize" => ApiError::MethodNotAllowed {
                target: target(kind, name),
                verb: verb.to_string(),
            },
            _ => ApiError::NoRoute,
        }
    }

    /// The stored objects a list request reads, in key order, unparsed.
    async fn listing(&self, r: &ResourceRoute, q: &Query) -> Result<crate::store::Listing> {
        self.store
            .list(
                &r.kind.resource(),
                r.namespace.as_deref(),
                Self::read_mode(q),
            )
            .await
            .map_err(|e| ApiError::from_store(e, target(r.kind, "")))
    }

    /// The objects of a list request, selected, in key order, with the listing's revision.
    pub async fn select(&self, r: &ResourceRoute, q: &Query) -> Result<(Vec<Value>, u64)> {
        let (labels, fields) = selectors(r.kind, q)?;
        let listing = self.listing(r, q).await?;
        let mut out = Vec::with_capacity(listing.items.len());
        for b in &listing.items {
            let v = parse_stored(b)?;
            if selected(&v, &labels, &fields) {
                out.push(v);
            }
        }
        Ok((out, listing.revision))
    }

    /// `GET` of a collection: a page of selected objects. Only the objects from the
    /// continue point on are parsed, and only until the page is full and one more
    /// selected object shows there is a next page: `limit=1` of 10,000 objects reads one
    /// or two, not all (the store gives its objects in key order, the order of pages).
    /// `remainingItemCount` is set, as by Kubernetes, only when no selector was given.
    pub async fn list(&self, r: &ResourceRoute, q: &Query) -> Result<ListPage> {
        let (labels, fields) = selectors(r.kind, q)?;
        let start = q
            .continue_token
            .as_deref()
            .map(decode_continue)
            .transpose()?;
        let listing = self.listing(r, q).await?;
        let revision = listing.revision;
        let unfiltered = q.label_selector.as_deref().unwrap_or("").is_empty()
            && q.field_selector.as_deref().unwrap_or("").is_empty();
        let mut page = Vec::new();
        let mut next = None;
        let mut remaining = None;
        for (i, b) in listing.items.iter().enumerate() {
            if let Some(start) = &start {
                if !stored_after(b, start)? {
                    continue;
                }
            }
            let v = parse_stored(b)?;
            if !selected(&v, &labels, &fields) {
                continue;
            }
            if q.limit.is_some_and(|limit| page.len() >= limit) {
                next = page
                    .last()
                    .map(|last| encode_continue(&continue_key(last), revision));
                remaining = unfiltered.then_some(listing.items.len() - i);
                break;
            }
            page.push(v);
        }
        Ok(ListPage {
            items: page,
            revision,
            continue_token: next,
            remaining,
        })
    }

    /// `POST` to a collection (create), or to `pods/x/binding`.
    pub async fn create(
        &self,
        r: &ResourceRoute,
        q: &Query,
        body: Value,
        manager: &str,
    ) -> Result<Reply> {
        self.create_owned(r, q, body, manager, Ownership::Update)
            .await
    }

    async fn create_owned(
        &self,
        r: &ResourceRoute,
        q: &Query,
        body: Value,
        manager: &str,
        own: Ownership,
    ) -> Result<Reply> {
        if let (Some(name), Some(sub)) = (&r.name, &r.subresource) {
            return match sub.as_str() {
                "binding" if r.kind.has(Subresource::Binding) => self.bind(r, q, name, body).await,
                other => Err(self.no_subresource(r.kind, name, other, "create")),
            };
        }
        if r.name.is_some() {
            return Err(ApiError::MethodNotAllowed {
                target: target(r.kind, ""),
                verb: "POST".into(),
            });
        }
        let kind = r.kind;
        let mut obj = self.check_type_meta(kind, body)?;
        self.check_namespace_field(kind, r.namespace.as_deref(), &mut obj)?;
        {
            let m = meta_mut(&mut obj);
            let has_name = m
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if !has_name {
                if let Some(prefix) = m
                    .get("generateName")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    let name = format!("{prefix}{}", random_suffix());
                    m.insert("name".into(), json!(name));
                }
            }
            if m.get("resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                return Err(ApiError::BadRequest(
                    "resourceVersion should not be set on objects to be created".into(),
                ));
            }
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let (mut obj, warnings) = self.admit(kind, obj, q, &name)?;
        {
            let now = now_rfc3339(self.now());
            let m = meta_mut(&mut obj);
            strip_system_meta(m);
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now));
            if tracks_generation(kind) {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        initial_status(kind, &mut obj);
        own.record(None, &mut obj, manager, &now_rfc3339(self.now()));
        if kind.namespaced {
            self.check_namespace_open(kind, r.namespace.as_deref().unwrap_or_default(), &name)
                .await?;
        }
        let stored = if q.dry_run {
            obj
        } else {
            self.write_value(
                kind,
                &name,
                WriteOp::Create {
                    key: self.key(kind, r.namespace.as_deref(), &name),
                    object: obj.into(),
                },
            )
            .await?
        };
        Ok(Reply {
            code: 201,
            body: stored,
            warnings,
        })
    }

    /// `PUT` of an object or of its status/scale subresource.
    pub async fn update(
        &self,
        r: &ResourceRoute,
        q: &Query,
        body: Value,
        manager: &str,
    ) -> Result<Reply> {
        let name = r.name.clone().unwrap_or_default();
        match r.subresource.as_deref() {
            None => {}
            Some("status") if r.kind.has_status() => {}
            Some("scale") if r.kind.has(Subresource::Scale) => {
                return self.update_scale(r, q, |_| Ok(body.clone()), manager).await;
            }
            Some("finalize") if r.kind.kind == "Namespace" => {}
            Some(other) => return Err(self.no_subresource(r.kind, &name, other, "update")),
        }
        let mut obj = self.check_type_meta(r.kind, body)?;
        self.check_namespace_field(r.kind, r.namespace.as_deref(), &mut obj)?;
        match meta_str(&obj, "name") {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            None => {
                meta_mut(&mut obj).insert("name".into(), json!(name));
            }
        }
        let old = self
            .get_object(
                r.kind,
                r.namespace.as_deref(),
                &name,
                ReadMode::Linearizable,
            )
            .await?;
        let expect = resource_version(&obj);
        self.replace(r, q, old, obj, expect, manager, Ownership::Update)
            .await
    }

    /// Write `candidate` over `old` through the full admission path.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        r: &ResourceRoute,
        q: &Query,
        old: Value,
        candidate: Value,
        expect: Option<u64>,
        manager: &str,
        own: Ownership,
    ) -> Result<Reply> {
        let kind = r.kind;
        let name = meta_str(&old, "name").unwrap_or_default().to_string();
        let sub = r.subresource.as_deref();
        let mut obj = match sub {
            // Status writes change status only; finalize changes spec.finalizers only.
            Some("status") => {
                let mut o = old.clone();
                o["status"] = candidate.get("status").cloned().unwrap_or(Value::Null);
                if o["status"].is_null() {
                    o.as_object_mut().map(|m| m.remove("status"));
                }
                o
            }
            Some("finalize") => {
                let mut o = old.clone();
                o["spec"]["finalizers"] = candidate
                    .get("spec")
                    .and_then(|s| s.get("finalizers"))
                    .cloned()
                    .unwrap_or(json!([]));
                o
            }
            _ => candidate,
        };
        let (mut obj2, warnings) = self.admit(kind, std::mem::take(&mut obj), q, &name)?;
        {
            let om = meta(&old).clone();
            let m = meta_mut(&mut obj2);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match om.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            m.remove("resourceVersion");
            if let Some(rv) = om.get("resourceVersion") {
                m.insert("resourceVersion".into(), rv.clone());
            }
        }
        if kind.has_status() && sub.is_none() {
            match old.get("status") {
                Some(s) => obj2["status"] = s.clone(),
                None => {
                    obj2.as_object_mut().map(|m| m.remove("status"));
                }
            }
        }
        if tracks_generation(kind) && spec_part(&old) != spec_part(&obj2) {
            let g = meta(&old)
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut obj2).insert("generation".into(), json!(g + 1));
        }
        if sub.is_none() {
            own.record(Some(&old), &mut obj2, manager, &now_rfc3339(self.now()));
        } else {
            // Subresource writes keep the main resource's field ownership as it was.
            if let Some(mf) = meta(&old).get("managedFields") {
                meta_mut(&mut obj2).insert("managedFields".into(), mf.clone());
            }
        }
        // A stale precondition fails even when the write would change nothing, as the
        // client's view of the object is out of date either way.
        if let Some(want) = expect {
            if resource_version(&old) != Some(want) {
                return Err(ApiError::Conflict(target(kind, &name)));
            }
        }
        let unchanged = obj2 == old;
        if unchanged || q.dry_run {
            return Ok(Reply {
                code: 200,
                body: obj2,
                warnings,
            });
        }
        let key = self.key(kind, r.namespace.as_deref(), &name);
        let expect = Precondition {
            resource_version: expect,
            uid: None,
        };
        // Removing the last finalizer of an object being deleted completes the deletion.
        let deleting = meta(&obj2).get("deletionTimestamp").is_some();
        let finalizers_left = meta(&obj2)
            .get("finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
            || (kind.kind == "Namespace"
                && obj2["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty()));
        let op = if deleting && !finalizers_left && !(kind.kind == "Pod" && graceful_pending(&obj2))
        {
            WriteOp::Delete { key, expect }
        } else {
            WriteOp::Update {
                key,
                object: obj2.into(),
                expect,
            }
        };
        let stored = self.write_value(kind, &name, op).await?;
        Ok(Reply {
            code: 200,
            body: stored,
            warnings,
        })
    }

    /// `PATCH` of an object or its status/scale subresource.
    pub async fn patch(
        &self,
        r: &ResourceRoute,
        q: &Query,
        ty: BodyType,
        body: &[u8],
        manager: &str,
    ) -> Result<Reply> {
        if !ty.is_patch() {
            return Err(ApiError::UnsupportedMediaType(format!("{ty:?}")));
        }
        let name = r.name.clone().unwrap_or_default();
        let patch_doc = decode_body(body, ty)?;
        if ty == BodyType::ApplyPatch && q.field_manager.is_none() {
            return Err(ApiError::BadRequest(
                "PATCH, application/apply-patch+yaml requests require fieldManager to be set"
                    .into(),
            ));
        }
        match r.subresource.as_deref() {
            None => {}
            Some("status") if r.kind.has_status() => {}
            Some("scale") if r.kind.has(Subresource::Scale) => {
                return self
                    .update_scale(
                        r,
                        q,
                        |scale| apply_patch(r.kind, scale, &patch_doc, ty, manager, q.force, ""),
                        manager,
                    )
                    .await;
            }
            Some(other) => return Err(self.no_subresource(r.kind, &name, other, "patch")),
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let old = match self
                .get_object(
                    r.kind,
                    r.namespace.as_deref(),
                    &name,
                    ReadMode::Linearizable,
                )
                .await
            {
                Ok(o) => o,
                Err(ApiError::NotFound(_))
                    if ty == BodyType::ApplyPatch && r.subresource.is_none() =>
                {
                    return self.apply_create(r, q, patch_doc, manager).await;
                }
                Err(e) => return Err(e),
            };
            let now = now_rfc3339(self.now());
            let patched = apply_patch(r.kind, &old, &patch_doc, ty, manager, q.force, &now)?;
            // The patch may not rename or move the object.
            for f in ["name", "namespace", "uid"] {
                if meta(&patched).get(f) != meta(&old).get(f) && meta(&patched).get(f).is_some() {
                    if f == "uid" {
                        return Err(ApiError::ConflictReason(
                            target(r.kind, &name),
                            "Precondition failed: UID in precondition does not match the UID of the object".into(),
                        ));
                    }
                    return Err(ApiError::BadRequest(format!(
                        "metadata.{f} cannot be changed by a patch"
                    )));
                }
            }
            let explicit =
                resource_version(&patched).filter(|rv| Some(*rv) != resource_version(&old));
            let expect = explicit.or(resource_version(&old));
            // For an apply, field ownership was computed by the apply itself.
            let own = if ty == BodyType::ApplyPatch {
                Ownership::Applied(
                    meta(&patched)
                        .get("managedFields")
                        .cloned()
                        .unwrap_or(json!([])),
                )
            } else {
                Ownership::Update
            };
            let res = self.replace(r, q, old, patched, expect, manager, own).await;
            match res {
                Err(ApiError::Conflict(_)) if explicit.is_none() && attempt < PATCH_RETRIES => {
                    continue
                }
                other => return other,
            }
        }
    }

    /// Server-side apply of an object that does not exist yet: create it.
    async fn apply_create(
        &self,
        r: &ResourceRoute,
        q: &Query,
        applied: Value,
        manager: &str,
    ) -> Result<Reply> {
        let now = now_rfc3339(self.now());
        let mut obj = patch::server_side_apply(None, &applied, manager, q.force, &now, r.kind)
            .map_err(|e| e.into_api(target(r.kind, r.name.as_deref().unwrap_or_default())))?;
        if let Some(name) = &r.name {
            match meta_str(&obj, "name") {
                Some(n) if n != name => {
                    return Err(ApiError::BadRequest(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )))
                }
                _ => {
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                }
            }
        }
        let managed = meta(&obj)
            .get("managedFields")
            .cloned()
            .unwrap_or(json!([]));
        let route = ResourceRoute {
            kind: r.kind,
            namespace: r.namespace.clone(),
            name: None,
            subresource: None,
        };
        self.create_owned(&route, q, obj, manager, Ownership::Applied(managed))
            .await
    }

    /// GET-modify-write of `spec.replicas` through an autoscaling/v1 Scale.
    async fn update_scale(
        &self,
        r: &ResourceRoute,
        q: &Query,
        change: impl Fn(&Value) -> Result<Value>,
        manager: &str,
    ) -> Result<Reply> {
        let name = r.name.clone().unwrap_or_default();
        for attempt in 1..=PATCH_RETRIES {
            let old = self
                .get_object(
                    r.kind,
                    r.namespace.as_deref(),
                    &name,
                    ReadMode::Linearizable,
                )
                .await?;
            let scale = scale_of(&old);
            let new_scale = change(&scale)?;
            let replicas = new_scale
                .get("spec")
                .and_then(|s| s.get("replicas"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::Invalid {
                    target: Target {
                        kind: "Scale".into(),
                        group: "autoscaling".into(),
                        resource: "scale".into(),
                        name: name.clone(),
                    },
                    causes: vec![Cause::invalid(
                        "spec.replicas",
                        &replicas.to_string(),
                        "must be greater than or equal to 0",
                    )],
                });
            }
            let mut obj = old.clone();
            obj["spec"]["replicas"] = json!(replicas);
            let expect = resource_version(&new_scale)
                .filter(|rv| Some(*rv) != resource_version(&old))
                .or(resource_version(&old));
            let main = ResourceRoute {
                kind: r.kind,
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                subresource: None,
            };
            match self
                .replace(&main, q, old, obj, expect, manager, Ownership::Update)
                .await
            {
                Ok(mut reply) => {
                    reply.body = scale_of(&reply.body);
                    return Ok(reply);
                }
                Err(ApiError::Conflict(_)) if attempt < PATCH_RETRIES => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::Conflict(target(r.kind, &name)))
    }

    /// `POST pods/x/binding`: assign a node once.
    async fn bind(&self, r: &ResourceRoute, q: &Query, name: &str, body: Value) -> Result<Reply> {
        let node = body
            .get("target")
            .and_then(|t| t.get("name"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::Invalid {
                target: Target {
                    kind: "Binding".into(),
                    group: String::new(),
                    resource: "pods".into(),
                    name: name.into(),
                },
                causes: vec![Cause::required("target.name")],
            })?
            .to_string();
        let old = self
            .get_object(r.kind, r.namespace.as_deref(), name, ReadMode::Linearizable)
            .await?;
        let bind_target = Target {
            group: String::new(),
            resource: "pods/binding".into(),
            kind: "Binding".into(),
            name: name.into(),
        };
        if let Some(current) = old["spec"]["nodeName"].as_str().filter(|s| !s.is_empty()) {
            return Err(ApiError::ConflictReason(
                bind_target,
                format!("pod {name} is already assigned to node \"{current}\""),
            ));
        }
        if meta(&old).get("deletionTimestamp").is_some() {
            return Err(ApiError::ConflictReason(
                bind_target,
                format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        let mut obj = old.clone();
        obj["spec"]["nodeName"] = json!(node);
        if !q.dry_run {
            let key = self.key(r.kind, r.namespace.as_deref(), name);
            let expect = Precondition {
                resource_version: resource_version(&old),
                uid: None,
            };
            match self
                .store
                .write(WriteOp::Update {
                    key,
                    object: obj.into(),
                    expect,
                })
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => return Err(ApiError::Conflict(bind_target)),
                Err(e) => return Err(ApiError::from_store(e, bind_target)),
            }
        }
        Ok(Reply {
            code: 201,
            body: success_status(),
            warnings: Vec::new(),
        })
    }

    /// `DELETE` of one object.
    pub async fn delete(
        &self,
        r: &ResourceRoute,
        q: &Query,
        opts: &DeleteOptions,
    ) -> Result<Reply> {
        let name = r.name.clone().unwrap_or_default();
        if let Some(sub) = &r.subresource {
            return Err(self.no_subresource(r.kind, &name, sub, "delete"));
        }
        let old = self
            .get_object(
                r.kind,
                r.namespace.as_deref(),
                &name,
                ReadMode::Linearizable,
            )
            .await?;
        self.delete_object(r.kind, r.namespace.as_deref(), old, q, opts)
            .await
    }

    async fn delete_object(
        &self,
        kind: &Kind,
        ns: Option<&str>,
        old: Value,
        q: &Query,
        opts: &DeleteOptions,
    ) -> Result<Reply> {
        let name = meta_str(&old, "name").unwrap_or_default().to_string();
        let t = target(kind, &name);
        if let Some(uid) = &opts.uid {
            if meta_str(&old, "uid") != Some(uid.as_str()) {
                return Err(ApiError::ConflictReason(
                    t,
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old, "uid").unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.resource_version {
            if meta_str(&old, "resourceVersion") != Some(rv.as_str()) {
                return Err(ApiError::ConflictReason(
                    t,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&old, "resourceVersion").unwrap_or_default()
                    ),
                ));
            }
        }
        let now = self.now();
        let expect = Precondition {
            resource_version: resource_version(&old),
            uid: None,
        };
        let key = self.key(kind, ns, &name);
        let mut obj = old.clone();
        let mut finalizers: Vec<Value> = meta(&old)
            .get("finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let policy = opts
            .propagation_policy
            .as_deref()
            .or(q.propagation_policy.as_deref());
        let add = match policy {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Background") | None => None,
            Some(other) => {
                return Err(ApiError::Invalid {
                    target: t,
                    causes: vec![Cause::new(
                        "FieldValueNotSupported",
                        "propagationPolicy",
                        format!("Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
                    )],
                })
            }
        };
        if let Some(f) = add {
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(json!(f));
            }
        }
        let grace = opts.grace_period_seconds.or(q.grace_period_seconds);
        let already = meta(&old).get("deletionTimestamp").is_some();
        let op = if kind.kind == "Namespace" {
            let m = meta_mut(&mut obj);
            if !already {
                m.insert("deletionTimestamp".into(), json!(now_rfc3339(now)));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            obj["status"]["phase"] = json!("Terminating");
            if obj == old {
                return Ok(Reply::ok(old));
            }
            WriteOp::Update {
                key,
                object: obj.into(),
                expect,
            }
        } else if kind.kind == "Pod"
            && old["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && grace != Some(0)
        {
            // A pod on a node stops gracefully: the agent kills it and then deletes it.
            let g = grace
                .unwrap_or_else(|| {
                    old["spec"]["terminationGracePeriodSeconds"]
                        .as_i64()
                        .unwrap_or(30)
                })
                .max(1);
            let deadline = now
                .checked_add(jiff::SignedDuration::from_secs(g))
                .unwrap_or(now);
            let m = meta_mut(&mut obj);
            let earlier = m
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .is_some_and(|cur| cur <= g);
            if already && earlier {
                return Ok(Reply::ok(old));
            }
            m.insert("deletionTimestamp".into(), json!(now_rfc3339(deadline)));
            m.insert("deletionGracePeriodSeconds".into(), json!(g));
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), json!(finalizers));
            }
            WriteOp::Update {
                key,
                object: obj.into(),
                expect,
            }
        } else if !finalizers.is_empty() {
            let m = meta_mut(&mut obj);
            if !already {
                m.insert("deletionTimestamp".into(), json!(now_rfc3339(now)));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            m.insert("finalizers".into(), json!(finalizers));
            if obj == old {
                return Ok(Reply::ok(old));
            }
            WriteOp::Update {
                key,
                object: obj.into(),
                expect,
            }
        } else {
            WriteOp::Delete { key, expect }
        };
        if q.dry_run || opts.dry_run {
            return Ok(Reply::ok(match op {
                WriteOp::Update { object, .. } => parse_stored(object.as_bytes())?,
                _ => old,
            }));
        }
        let body = self.write_value(kind, &name, op).await?;
        Ok(Reply::ok(body))
    }

    /// `DELETE` of a collection: every selected object, one by one.
    pub async fn delete_collection(
        &self,
        r: &ResourceRoute,
        q: &Query,
        opts: &DeleteOptions,
    ) -> Result<Reply> {
        let (items, revision) = self.select(r, q).await?;
        let mut deleted = Vec::new();
        for old in items {
            let ns = meta_str(&old, "namespace").map(str::to_string);
            match self
                .delete_object(r.kind, ns.as_deref(), old, q, opts)
                .await
            {
                Ok(reply) => deleted.push(reply.body),
                Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Reply::ok(list_body(r.kind, deleted, revision, None, None)))
    }

    async fn write_value(&self, kind: &Kind, name: &str, op: WriteOp) -> Result<Value> {
        let b = self
            .store
            .write(op)
            .await
            .map_err(|e| ApiError::from_store(e, target(kind, name)))?;
        parse_stored(&b)
    }

    /// apiVersion and kind of a body must be the URL's (filled in when absent).
    fn check_type_meta(&self, kind: &Kind, mut obj: Value) -> Result<Value> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: the body is not a JSON object",
                kind.kind, kind.version, kind.kind
            )));
        }
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let k = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !av.is_empty() && av != kind.api_version() {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                kind.api_version()
            )));
        }
        if !k.is_empty() && k != kind.kind {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )));
        }
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind);
        Ok(obj)
    }

    fn check_namespace_field(
        &self,
        kind: &Kind,
        url_ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<()> {
        let m = meta_mut(obj);
        if !kind.namespaced {
            m.remove("namespace");
            return Ok(());
        }
        let Some(url_ns) = url_ns else {
            return Err(ApiError::BadRequest(
                "a namespaced object must be written under /namespaces/<namespace>/".into(),
            ));
        };
        match m.get("namespace").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(ns) if ns != url_ns => Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            )),
            _ => {
                m.insert("namespace".into(), json!(url_ns));
                Ok(())
            }
        }
    }

    async fn check_namespace_open(&self, kind: &Kind, ns: &str, name: &str) -> Result<()> {
        let Some(ns_kind) = kinds::by_resource("", "v1", "namespaces") else {
            return Err(ApiError::Internal("namespaces kind missing".into()));
        };
        match self.get_object(ns_kind, None, ns, ReadMode::Stale).await {
            Ok(n) => {
                if meta(&n).get("deletionTimestamp").is_some()
                    || n["status"]["phase"] == "Terminating"
                {
                    Err(ApiError::NamespaceTerminating {
                        target: target(kind, name),
                        namespace: ns.to_string(),
                    })
                } else {
                    Ok(())
                }
            }
            Err(ApiError::NotFound(_)) => Err(ApiError::NotFound(target(ns_kind, ns))),
            Err(e) => Err(e),
        }
    }

    /// Typed decode (with fieldValidation), defaults and validation of a candidate object.
    fn admit(
        &self,
        kind: &Kind,
        obj: Value,
        q: &Query,
        name: &str,
    ) -> Result<(Value, Vec<String>)> {
        let decoded = kind.typed.decode(obj).map_err(|e| {
            ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                kind.kind, kind.version, kind.kind
            ))
        })?;
        let mut warnings = Vec::new();
        if !decoded.unknown.is_empty() {
            let msgs: Vec<String> = decoded
                .unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            match q.field_validation {
                FieldValidation::Strict => {
                    return Err(ApiError::BadRequest(format!(
                        "strict decoding error: {}",
                        msgs.join(", ")
                    )));
                }
                FieldValidation::Warn => warnings = msgs,
                FieldValidation::Ignore => {}
            }
        }
        let mut obj = decoded.object;
        defaults::apply(kind, &mut obj);
        let causes = validation::validate(kind, &obj);
        if !causes.is_empty() {
            return Err(ApiError::Invalid {
                target: target(kind, name),
                causes,
            });
        }
        Ok((obj, warnings))
    }
}

/// Whether a pod's graceful deletion still waits for the agent.
fn graceful_pending(pod: &Value) -> bool {
    pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
        && meta(pod)
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

fn apply_patch(
    kind: &Kind,
    old: &Value,
    doc: &Value,
    ty: BodyType,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value> {
    let t = target(kind, meta_str(old, "name").unwrap_or_default());
    match ty {
        BodyType::JsonPatch => patch::json_patch(old, doc).map_err(|e| e.into_api(t)),
        BodyType::MergePatch => patch::merge_patch(old, doc).map_err(|e| e.into_api(t)),
        BodyType::StrategicMergePatch => {
            patch::strategic_merge(old, doc, kind).map_err(|e| e.into_api(t))
        }
        BodyType::ApplyPatch => patch::server_side_apply(Some(old), doc, manager, force, now, kind)
            .map_err(|e| e.into_api(t)),
        _ => Err(ApiError::UnsupportedMediaType(format!("{ty:?}"))),
    }
}

/// The status Kubernetes sets on create for kinds with a status subresource.
fn initial_status(kind: &Kind, obj: &mut Value) {
    if !kind.has_status() {
        return;
    }
    match kind.kind {
        "Pod" => {
            let qos = qos_class(&obj["spec"]);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        "Namespace" => obj["status"] = json!({"phase": "Active"}),
        "PersistentVolumeClaim" => obj["status"] = json!({"phase": "Pending"}),
        // The agent registers its Node with the status it observed.
        "Node" => {}
        _ => {
            obj.as_object_mut().map(|m| m.remove("status"));
        }
    }
}

/// autoscaling/v1 Scale view of a scalable object.
fn scale_of(obj: &Value) -> Value {
    let m = meta(obj);
    let selector = obj["spec"]["selector"]
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|ml| {
            ml.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"),
            "namespace": m.get("namespace"),
            "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"),
            "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

pub fn success_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

/// Options of a delete, from its body (a DeleteOptions) and query.
#[derive(Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    pub fn from_body(body: &[u8]) -> Result<Self> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?;
        let orphan = v.get("orphanDependents").and_then(Value::as_bool);
        Ok(DeleteOptions {
            grace_period_seconds: v.get("gracePeriodSeconds").and_then(Value::as_i64),
            propagation_policy: v
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| orphan.map(|o| if o { "Orphan" } else { "Background" }.to_string())),
            uid: v
                .get("preconditions")
                .and_then(|p| p.get("uid"))
                .and_then(Value::as_str)
                .map(str::to_string),
            resource_version: v
                .get("preconditions")
                .and_then(|p| p.get("resourceVersion"))
                .and_then(Value::as_str)
                .map(str::to_string),
            dry_run: v
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x == "All")),
        })
    }
}

/// A page of a list.
pub struct ListPage {
    pub items: Vec<Value>,
    pub revision: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// `<Kind>List` body.
pub fn list_body(
    kind: &Kind,
    items: Vec<Value>,
    revision: u64,
    cont: Option<String>,
    remaining: Option<usize>,
) -> Value {
    let mut m = json!({"resourceVersion": revision.to_string()});
    if let Some(c) = cont {
        m["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        m["remainingItemCount"] = json!(r);
    }
    json!({"kind": kind.list_kind(), "apiVersion": kind.api_version(), "metadata": m, "items": items})
}

pub fn selectors(kind: &Kind, q: &Query) -> Result<(LabelSelector, FieldSelector)> {
    let labels = match &q.label_selector {
        Some(s) => LabelSelector::parse(s).map_err(|e| e.into_api())?,
        None => LabelSelector::everything(),
    };
    let fields = match &q.field_selector {
        Some(s) => {
            let f = FieldSelector::parse(s).map_err(|e| e.into_api())?;
            f.validate(kind).map_err(|e| e.into_api())?;
            f
        }
        None => FieldSelector::parse("").map_err(|e| e.into_api())?,
    };
    Ok((labels, fields))
}

pub fn selected(v: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    let empty = Map::new();
    let l = meta(v)
        .get("labels")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    labels.matches(l) && fields.matches(v)
}

fn continue_key(v: &Value) -> String {
    format!(
        "{}/{}",
        meta_str(v, "namespace").unwrap_or_default(),
        meta_str(v, "name").unwrap_or_default()
    )
}

fn encode_continue(key: &str, revision: u64) -> String {
    use base64::Engine;
    let raw = json!({"v": "kith.v1", "rv": revision, "start": key}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The (namespace, name) a continue token starts after.
fn decode_continue(token: &str) -> Result<(String, String)> {
    use base64::Engine;
    let bad = || ApiError::BadRequest(format!("continue key is not valid: {token}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    // Namespaces hold no '/': the first one ends the namespace ("" when cluster-scoped).
    v.get("start")
        .and_then(Value::as_str)
        .and_then(|s| s.split_once('/'))
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .ok_or_else(bad)
}

/// Just the metadata a page boundary needs, read without building the whole object.
#[derive(serde::Deserialize)]
struct StoredKey<'a> {
    #[serde(borrow)]
    metadata: StoredKeyMeta<'a>,
}

#[derive(serde::Deserialize)]
struct StoredKeyMeta<'a> {
    #[serde(borrow, default)]
    namespace: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: std::borrow::Cow<'a, str>,
}

/// Whether a stored object comes after (namespace, name) `start` in the order the store
/// lists objects in.
fn stored_after(b: &[u8], start: &(String, String)) -> Result<bool> {
    let k: StoredKey = serde_json::from_slice(b)
        .map_err(|e| ApiError::Internal(format!("stored object is not valid: {e}")))?;
    let ns = k.metadata.namespace.as_deref().unwrap_or_default();
    Ok((ns, k.metadata.name.as_ref()) > (start.0.as_str(), start.1.as_str()))
}

/// Decide the body type of a request and reject what cannot be a body at all.
pub fn body_type_for(method: &http::Method, content_type: Option<&str>) -> Result<BodyType> {
    let ty = BodyType::from_content_type(content_type)?;
    if *method == http::Method::PATCH && !ty.is_patch() {
        return Err(ApiError::UnsupportedMediaType(
            content_type.unwrap_or("").to_string(),
        ));
    }
    if *method != http::Method::PATCH && ty.is_patch() {
        return Err(ApiError::UnsupportedMediaType(
            content_type.unwrap_or("").to_string(),
        ));
    }
    Ok(ty)
}
