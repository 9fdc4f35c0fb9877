//! Server-side apply and the field ownership (`metadata.managedFields`) every write records.
//!
//! A field set is the set of paths a manager owns, in the FieldsV1 vocabulary: `f:<field>`
//! for a struct field or map entry, `k:{"name":"nginx"}` for an item of a keyed list,
//! `v:"value"` for an item of a set. What a value "has" follows structured-merge-diff:
//! scalars, atomic lists and atomic structs are leaves; keyed-list and set items are members
//! themselves (plus their fields); empty maps, nulls and string-keyed map entries are members.
//!
//! ```text
//!  apply(live, config, manager):
//!    merged  = live ⊕ config            maps merge, keyed lists merge by key, sets union,
//!                                       atomic values replace
//!    pruned  = merged − (last applied set of manager − new config set − others' sets)
//!    changed = compare(live, pruned)     added ∪ modified leaves
//!    conflicts = changed ∩ set of every other manager   → 409 unless force
//!    others -= conflicts (force) and removed paths;  manager's Apply entry = config set
//!
//!  record_update(old, new, manager):
//!    changed = compare(old, new);  manager's Update entry ∪= changed, others −= changed,
//!    everyone −= removed
//! ```
//!
//! System metadata (`name`, `namespace`, `uid`, `resourceVersion`, `generation`,
//! `creationTimestamp`, `managedFields`, ...), `apiVersion`, `kind` and, for kinds with a
//! status subresource, `status` are never owned.
//!
//! Simplifications against kube-apiserver: one API version per kind (no conversion of
//! field sets); manager identity is (manager, operation, subresource), ignoring the API
//! version of Update entries; new items of keyed lists are appended after the live items
//! rather than interleaved by the applied order; a list item missing a key field (and with
//! no default) is not tracked; unions are not normalized.

use std::collections::BTreeSet;
use std::ops::Bound;

use serde_json::{json, Map, Value};

use super::markers::{self, ListType, Markers, Node};
use crate::error::{ApiError, Cause, Target};
use crate::kinds::{self, Kind};

/// Why an apply was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Fields the apply would change belong to other managers (one cause per field:
    /// `FieldManagerConflict`, field `.spec.replicas`, message `conflict with "kubectl" ...`).
    #[error("apply failed with {} conflict(s)", .0.len())]
    Conflict(Vec<Cause>),
    /// The applied configuration is not an object this function can apply.
    #[error("{0}")]
    BadRequest(String),
}

impl ApplyError {
    /// The error the client sees: 409 with the causes, or 400.
    pub fn into_api(self, target: Target) -> ApiError {
        match self {
            ApplyError::Conflict(causes) => ApiError::ApplyConflict { target, causes },
            ApplyError::BadRequest(m) => ApiError::BadRequest(m),
        }
    }
}

/// One path element in FieldsV1 spelling (`f:spec`, `k:{"name":"a"}`, `v:"x"`).
type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

/// Metadata the server manages; nobody owns it.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// Apply `applied` (the configuration `manager` wants) to `live` (absent on create) and
/// return the new object with `metadata.managedFields` updated. `now` is the RFC 3339 time
/// recorded on the entry.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
    kind: &Kind,
) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(ApplyError::BadRequest(
            "the applied configuration must be an object".into(),
        ));
    }
    if applied.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(ApplyError::BadRequest("metadata must be an object".into()));
    }
    let schemas = markers::schemas(kind);
    let root = schemas.root();
    let api_version = kind.api_version();

    let live_value = live.cloned().unwrap_or_else(|| json!({}));
    let mut entries = read_entries(&live_value);
    if live.is_some() && entries.is_empty() {
        // Objects written before anyone tracked ownership: kube-apiserver gives their fields
        // to this pseudo-manager so a first apply cannot silently take them.
        let set = field_set(&tracked(&live_value, kind), root);
        if !set.is_empty() {
            entries.push(Entry::new(
                "before-first-apply",
                UPDATE,
                &api_version,
                now,
                set,
            ));
        }
    }

    let config = tracked(applied, kind);
    let config_set = field_set(&config, root);
    let last_set = entries
        .iter()
        .find(|e| e.is(manager, APPLY))
        .map(|e| e.set.clone())
        .unwrap_or_default();

    let mut merged = match live {
        Some(l) => l.clone(),
        None => skeleton(applied),
    };
    merge_into(&mut merged, &config, root, Markers::NONE);

    // Fields this manager applied before and dropped now go, unless someone else holds them.
    let others: FieldSet = entries
        .iter()
        .filter(|e| !e.is(manager, APPLY))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let mut keep = others;
    keep.extend(config_set.iter().cloned());
    let dropped: Vec<&Path> = last_set.iter().filter(|p| !keep.contains(*p)).collect();
    prune(&mut merged, root, &dropped, &keep);

    let old_set = field_set(&tracked(&live_value, kind), root);
    let new_tracked = tracked(&merged, kind);
    let new_set = field_set(&new_tracked, root);
    let diff = compare(
        &tracked(&live_value, kind),
        &old_set,
        &new_tracked,
        &new_set,
        root,
    );

    let mut causes = Vec::new();
    for entry in entries.iter_mut().filter(|e| !e.is(manager, APPLY)) {
        let conflicting: Vec<Path> = entry
            .set
            .iter()
            .filter(|p| diff.changed.contains(*p))
            .cloned()
            .collect();
        for path in &conflicting {
            causes.push(Cause::new(
                "FieldManagerConflict",
                &display_path(path),
                format!("conflict with {}", entry.describe()),
            ));
        }
        if force {
            for path in &conflicting {
                entry.set.remove(path);
            }
        }
        entry.set.retain(|p| !diff.removed.contains(p));
    }
    if !force && !causes.is_empty() {
        causes.sort_by(|a, b| (&a.message, &a.field).cmp(&(&b.message, &b.field)));
        return Err(ApplyError::Conflict(causes));
    }

    entries.retain(|e| !e.is(manager, APPLY));
    entries.push(Entry::new(manager, APPLY, &api_version, now, config_set));
    write_entries(&mut merged, entries);
    Ok(merged)
}

/// Record an ordinary write (create, update, patch) by `manager` in `new`'s managedFields:
/// the manager's Update entry gains every field the write added or changed, other managers
/// lose those fields, and fields the write removed leave every set. `old` is `None` on create.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    let kind = kind_of(new);
    let schemas = kind.map(markers::schemas);
    let root = schemas.as_ref().map(|s| s.root()).unwrap_or(Node::UNKNOWN);
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();

    // A client that sends `managedFields: []` asks to drop all ownership; otherwise what it
    // sends is not trusted and the stored entries carry over.
    let reset = new
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .is_some_and(|m| m.as_array().is_some_and(Vec::is_empty));
    let mut entries = match (old, reset) {
        (Some(o), false) => read_entries(o),
        _ => Vec::new(),
    };

    let strip = |v: &Value| match kind {
        Some(k) => tracked(v, k),
        None => tracked_unknown(v),
    };
    let old_tracked = old.map(strip).unwrap_or_else(|| json!({}));
    let new_tracked = strip(new);
    let old_set = field_set(&old_tracked, root);
    let new_set = field_set(&new_tracked, root);
    let diff = compare(&old_tracked, &old_set, &new_tracked, &new_set, root);

    for entry in entries.iter_mut().filter(|e| !e.is(manager, UPDATE)) {
        entry
            .set
            .retain(|p| !diff.changed.contains(p) && !diff.removed.contains(p));
    }
    let mut mine = entries
        .iter()
        .position(|e| e.is(manager, UPDATE))
        .map(|i| entries.remove(i).set)
        .unwrap_or_default();
    let touched = !diff.changed.is_empty();
    mine.extend(diff.changed);
    mine.retain(|p| !diff.removed.contains(p));
    if !mine.is_empty() {
        let mut entry = Entry::new(manager, UPDATE, &api_version, now, mine);
        if !touched {
            // An unchanged set keeps its time, as kube-apiserver leaves no-op writes alone.
            if let Some(prev) = old
                .map(read_entries)
                .and_then(|es| es.into_iter().find(|e| e.is(manager, UPDATE)))
            {
                entry.time = prev.time;
            }
        }
        entries.push(entry);
    }
    write_entries(new, entries);
}

/// The FieldsV1 document of the fields `object` sets, as an apply of it would own them
/// (system metadata and status excluded).
pub fn fields_v1(object: &Value, kind: &Kind) -> Value {
    let schemas = markers::schemas(kind);
    encode(&field_set(&tracked(object, kind), schemas.root()))
}

/// What a created object keeps of the applied configuration besides the owned fields: its
/// type and identity.
fn skeleton(applied: &Value) -> Value {
    let mut out = Map::new();
    for k in ["apiVersion", "kind"] {
        if let Some(v) = applied.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut meta = Map::new();
    for k in ["name", "namespace", "generateName"] {
        if let Some(v) = applied.get("metadata").and_then(|m| m.get(k)) {
            meta.insert(k.into(), v.clone());
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    Value::Object(out)
}

fn kind_of(obj: &Value) -> Option<&'static Kind> {
    let api_version = obj.get("apiVersion")?.as_str()?;
    let kind = obj.get("kind")?.as_str()?;
    kinds::by_kind(api_version, kind)
}

/// `obj` without the parts nobody owns.
fn tracked(obj: &Value, kind: &Kind) -> Value {
    let mut v = tracked_unknown(obj);
    if kind.has_status() {
        if let Some(m) = v.as_object_mut() {
            m.shift_remove("status");
        }
    }
    v
}

fn tracked_unknown(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.shift_remove("apiVersion");
        m.shift_remove("kind");
        let empty = match m.get_mut("metadata").and_then(Value::as_object_mut) {
            Some(meta) => {
                for f in SYSTEM_METADATA {
                    meta.shift_remove(*f);
                }
                meta.is_empty()
            }
            None => false,
        };
        if empty {
            m.shift_remove("metadata");
        }
    }
    v
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    set: FieldSet,
}

impl Entry {
    fn new(manager: &str, operation: &str, api_version: &str, now: &str, set: FieldSet) -> Entry {
        Entry {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version: api_version.to_string(),
            time: Some(now.to_string()),
            subresource: None,
            set,
        }
    }

    /// Whether this entry is `manager`'s for `operation` on the main resource.
    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.is_none()
    }

    /// How conflict messages name the manager (as kube-apiserver prints it).
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == UPDATE {
            s.push_str(&format!(" using {}", self.api_version));
            if let Some(t) = &self.time {
                s.push_str(&format!(" at {t}"));
            }
        }
        s
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), encode(&self.set));
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), json!(s));
        }
        Value::Object(m)
    }
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let text = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
    list.iter()
        .filter_map(|e| {
            Some(Entry {
                manager: text(e, "manager")?,
                operation: text(e, "operation").unwrap_or_else(|| UPDATE.into()),
                api_version: text(e, "apiVersion").unwrap_or_default(),
                time: text(e, "time"),
                subresource: text(e, "subresource").filter(|s| !s.is_empty()),
                set: e.get("fieldsV1").map(decode).unwrap_or_default(),
            })
        })
        .collect()
}

/// Store `entries` as `metadata.managedFields`, in kube-apiserver's order: Apply entries
/// before Update ones, then oldest first.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        (&a.operation, &a.time, &a.manager, &a.subresource).cmp(&(
            &b.operation,
            &b.time,
            &b.manager,
            &b.subresource,
        ))
    });
    let Some(obj) = obj.as_object_mut() else {
        return;
    };
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        meta.shift_remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_value).collect()),
        );
    }
}

/// FieldsV1 → set of paths. `{}` marks a member leaf, `".": {}` a member with children.
fn decode(fields: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        for (k, child) in m {
            if k == "." {
                out.insert(path.clone());
                continue;
            }
            path.push(k.clone());
            if child.as_object().is_some_and(Map::is_empty) {
                out.insert(path.clone());
            } else {
                walk(child, path, out);
            }
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

/// Set of paths → FieldsV1.
fn encode(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Tree {
        member: bool,
        children: std::collections::BTreeMap<String, Tree>,
    }
    fn render(t: &Tree) -> Value {
        let mut m = Map::new();
        if t.member && !t.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &t.children {
            m.insert(k.clone(), render(c));
        }
        Value::Object(m)
    }
    let mut root = Tree::default();
    for path in set {
        let mut node = &mut root;
        for e in path {
            node = node.children.entry(e.clone()).or_default();
        }
        node.member = true;
    }
    render(&root)
}

/// `.spec.containers[name="nginx"].image`, as kube-apiserver prints a path in conflicts.
fn display_path(path: &Path) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let fields: Vec<String> = match serde_json::from_str::<Map<String, Value>>(k) {
                Ok(m) => m.iter().map(|(n, v)| format!("{n}={v}")).collect(),
                Err(_) => vec![k.to_string()],
            };
            s.push_str(&format!("[{}]", fields.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        } else {
            s.push_str(e);
        }
    }
    s
}

/// The `k:{...}` element of a keyed-list item, key fields sorted by name; `None` when a key
/// field is missing and has no default.
fn key_element(item: &Value, keys: &[(&str, Option<&str>)]) -> Option<String> {
    let mut names: Vec<&(&str, Option<&str>)> = keys.iter().collect();
    names.sort_by_key(|(n, _)| *n);
    let mut m = Map::new();
    for (name, default) in names {
        let v = match (item.get(*name), default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => json!(d),
            (None, None) => return None,
        };
        m.insert((*name).to_string(), v);
    }
    Some(format!("k:{}", Value::Object(m)))
}

fn value_element(item: &Value) -> String {
    format!("v:{item}")
}

/// The paths `v` sets (structured-merge-diff's ToFieldSet).
fn field_set(v: &Value, root: Node<'_>) -> FieldSet {
    let mut out = FieldSet::new();
    collect(v, root, Markers::NONE, &mut Vec::new(), &mut out);
    out.remove(&Vec::new());
    out
}

fn collect(v: &Value, node: Node<'_>, markers: Markers, path: &mut Path, out: &mut FieldSet) {
    match v {
        Value::Object(_) if node.is_atomic() => {
            out.insert(path.clone());
        }
        Value::Object(m) => {
            for (k, child) in m {
                let (child_node, child_markers) = node.field(k);
                path.push(format!("f:{k}"));
                let empty_map = child.as_object().is_some_and(Map::is_empty);
                // Entries of string-keyed maps (labels, annotations, resources.limits) are
                // owned in their own right, as are nulls and empty maps.
                if child.is_null() || empty_map || !node.is_struct() {
                    out.insert(path.clone());
                }
                collect(child, child_node, child_markers, path, out);
                path.pop();
            }
        }
        Value::Array(items) => match markers.list {
            ListType::Atomic => {
                out.insert(path.clone());
            }
            ListType::Set => {
                for item in items {
                    path.push(value_element(item));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                let item_node = node.items();
                for item in items {
                    let Some(element) = key_element(item, keys) else {
                        continue;
                    };
                    path.push(element);
                    out.insert(path.clone());
                    collect(item, item_node, Markers::NONE, path, out);
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// Merge the applied configuration into the live object.
fn merge_into(live: &mut Value, config: &Value, node: Node<'_>, markers: Markers) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if !node.is_atomic() => {
            for (k, cv) in c {
                let (child_node, child_markers) = node.field(k);
                if cv.is_null() {
                    l.shift_remove(k);
                    continue;
                }
                match l.get_mut(k) {
                    Some(lv) => merge_into(lv, cv, child_node, child_markers),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) if markers.list != ListType::Atomic => {
            match markers.list {
                ListType::Set => {
                    for item in c {
                        if !l.contains(item) {
                            l.push(item.clone());
                        }
                    }
                }
                ListType::Map(keys) => {
                    let item_node = node.items();
                    for item in c {
                        let wanted = key_element(item, keys);
                        let found = wanted.as_ref().and_then(|w| {
                            l.iter()
                                .position(|x| key_element(x, keys).as_ref() == Some(w))
                        });
                        match found {
                            Some(i) => merge_into(&mut l[i], item, item_node, Markers::NONE),
                            None => l.push(item.clone()),
                        }
                    }
                }
                ListType::Atomic => {}
            }
        }
        (live, config) => *live = config.clone(),
    }
}

/// Step from `v` along one path element; returns the child with its schema position.
fn step<'v, 'n>(
    v: &'v Value,
    node: Node<'n>,
    markers: Markers,
    element: &str,
) -> Option<(&'v Value, Node<'n>, Markers)> {
    if let Some(f) = element.strip_prefix("f:") {
        let (child, m) = node.field(f);
        return Some((v.get(f)?, child, m));
    }
    let items = v.as_array()?;
    let i = item_index(items, markers, element)?;
    Some((&items[i], node.items(), Markers::NONE))
}

fn item_index(items: &[Value], markers: Markers, element: &str) -> Option<usize> {
    if element.starts_with("k:") {
        let ListType::Map(keys) = markers.list else {
            return None;
        };
        return items
            .iter()
            .position(|x| key_element(x, keys).as_deref() == Some(element));
    }
    if let Some(v) = element.strip_prefix("v:") {
        let wanted: Value = serde_json::from_str(v).ok()?;
        return items.iter().position(|x| *x == wanted);
    }
    element
        .strip_prefix("i:")?
        .parse()
        .ok()
        .filter(|i| *i < items.len())
}

fn value_at<'v>(v: &'v Value, root: Node<'_>, path: &Path) -> Option<&'v Value> {
    let (mut cur, mut node, mut markers) = (v, root, Markers::NONE);
    for e in path {
        (cur, node, markers) = step(cur, node, markers, e)?;
    }
    Some(cur)
}

/// Remove the value at `path`; then remove containers this emptied, unless someone owns them.
fn remove_at(
    v: &mut Value,
    node: Node<'_>,
    markers: Markers,
    path: &[String],
    keep: &FieldSet,
    prefix: &mut Path,
) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        match (first.strip_prefix("f:"), v) {
            (Some(f), Value::Object(m)) => m.shift_remove(f).is_some(),
            (None, Value::Array(items)) => match item_index(items, markers, first) {
                Some(i) => {
                    items.remove(i);
                    true
                }
                None => false,
            },
            _ => false,
        }
    } else {
        prefix.push(first.clone());
        let removed = match first.strip_prefix("f:") {
            Some(f) => {
                let (child_node, child_markers) = node.field(f);
                match v.get_mut(f) {
                    Some(child) => remove_at(child, child_node, child_markers, rest, keep, prefix),
                    None => false,
                }
            }
            None => match v.as_array_mut() {
                Some(items) => match item_index(items, markers, first) {
                    Some(i) => remove_at(
                        &mut items[i],
                        node.items(),
                        Markers::NONE,
                        rest,
                        keep,
                        prefix,
                    ),
                    None => false,
                },
                None => false,
            },
        };
        if removed {
            let child_empty = match first.strip_prefix("f:") {
                Some(f) => v.get(f).is_some_and(is_empty_container),
                None => false,
            };
            if child_empty && !keep.contains(prefix) {
                if let (Some(f), Some(m)) = (first.strip_prefix("f:"), v.as_object_mut()) {
                    m.shift_remove(f);
                }
            }
        }
        prefix.pop();
        removed
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Whether `set` holds `path` or anything below it.
fn owns_at_or_below(set: &FieldSet, path: &Path) -> bool {
    set.range::<Path, _>((Bound::Included(path), Bound::Unbounded))
        .next()
        .is_some_and(|p| p.starts_with(path))
}

/// Remove the `dropped` paths from `obj`, skipping any that `keep` still holds (at or
/// below). A dropped list item goes whole: removing its key fields first would make it
/// impossible to find.
fn prune(obj: &mut Value, root: Node<'_>, dropped: &[&Path], keep: &FieldSet) {
    let removable: Vec<&Path> = dropped
        .iter()
        .copied()
        .filter(|p| !owns_at_or_below(keep, p))
        .collect();
    for path in &removable {
        let covered = removable
            .iter()
            .any(|q| q.len() < path.len() && path.starts_with(q));
        if !covered {
            remove_at(obj, root, Markers::NONE, path, keep, &mut Vec::new());
        }
    }
}

struct Diff {
    /// Paths added or whose (leaf) value changed.
    changed: FieldSet,
    /// Paths that no longer exist.
    removed: FieldSet,
}

fn compare(
    old: &Value,
    old_set: &FieldSet,
    new: &Value,
    new_set: &FieldSet,
    root: Node<'_>,
) -> Diff {
    let mut changed: FieldSet = new_set.difference(old_set).cloned().collect();
    for path in new_set.intersection(old_set) {
        let below = |s: &FieldSet| {
            s.range::<Path, _>((Bound::Excluded(path), Bound::Unbounded))
                .next()
                .is_some_and(|p| p.starts_with(path))
        };
        // Only leaves carry values of their own; containers change through their members.
        if below(old_set) || below(new_set) {
            continue;
        }
        if value_at(old, root, path) != value_at(new, root, path) {
            changed.insert(path.clone());
        }
    }
    Diff {
        changed,
        removed: old_set.difference(new_set).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_kind;

    const T0: &str = "2025-01-01T00:00:00Z";
    const T1: &str = "2025-01-01T00:01:00Z";
    const T2: &str = "2025-01-01T00:02:00Z";

    fn deploy() -> &'static Kind {
        by_kind("apps/v1", "Deployment").expect("deployment kind")
    }

    fn config(replicas: i64, labels: Value, containers: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}}})
    }

    fn nginx(image: &str) -> Value {
        json!([{"name": "nginx", "image": image}])
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        obj["metadata"]["managedFields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["manager"].as_str().unwrap_or("").to_string(),
                            e["operation"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn entry<'a>(obj: &'a Value, manager: &str) -> &'a Value {
        obj["metadata"]["managedFields"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["manager"] == manager))
            .unwrap_or_else(|| panic!("no entry for {manager} in {obj}"))
    }

    #[test]
    fn create_records_the_applied_fields() {
        let cfg = config(2, json!({"app": "web"}), nginx("nginx:1.25"));
        let out = server_side_apply(None, &cfg, "kubectl", false, T0, deploy()).expect("apply");
        assert_eq!(out["spec"]["replicas"], 2);
        assert_eq!(
            managers(&out),
            [("kubectl".to_string(), "Apply".to_string())]
        );
        let e = entry(&out, "kubectl");
        assert_eq!(e["apiVersion"], "apps/v1");
        assert_eq!(e["time"], T0);
        assert_eq!(e["fieldsType"], "FieldsV1");
        assert_eq!(
            e["fieldsV1"],
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {},
                    "f:template": {"f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}}}}
                }
            })
        );
    }

    #[test]
    fn fields_v1_round_trips_and_spells_keys_like_kubernetes() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "finalizers": ["a/b"]},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let kind = by_kind("v1", "Service").expect("service kind");
        let f = fields_v1(&svc, kind);
        assert_eq!(
            f,
            json!({"f:metadata": {"f:finalizers": {"v:\"a/b\"": {}}},
                "f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:targetPort": {}}}}})
        );
        assert_eq!(encode(&decode(&f)), f);
        let path = decode(&f)
            .into_iter()
            .find(|p| p.len() == 4)
            .expect("a port field");
        assert_eq!(
            display_path(&path),
            ".spec.ports[port=80,protocol=\"TCP\"].port"
        );
    }

    #[test]
    fn reapply_without_a_label_removes_it() {
        let first = server_side_apply(
            None,
            &config(1, json!({"app": "web", "tier": "fe"}), nginx("a")),
            "kubectl",
            false,
            T0,
            deploy(),
        )
        .expect("first apply");
        let second = server_side_apply(
            Some(&first),
            &config(1, json!({"app": "web"}), nginx("a")),
            "kubectl",
            false,
            T1,
            deploy(),
        )
        .expect("second apply");
        assert_eq!(second["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(entry(&second, "kubectl")["time"], T1);
        assert!(
            entry(&second, "kubectl")["fieldsV1"]["f:metadata"]["f:labels"]
                .get("f:tier")
                .is_none()
        );
    }

    #[test]
    fn reapply_without_a_container_removes_it_and_empty_maps_go_too() {
        let two = json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]);
        let first = server_side_apply(
            None,
            &config(1, json!({"tier": "fe"}), two),
            "m",
            false,
            T0,
            deploy(),
        )
        .expect("first");
        let mut cfg = config(1, json!({}), nginx("z"));
        cfg["spec"]["template"]["spec"]["containers"] = json!([{"name": "a", "image": "x"}]);
        cfg["metadata"]
            .as_object_mut()
            .map(|m| m.shift_remove("labels"));
        let second =
            server_side_apply(Some(&first), &cfg, "m", false, T1, deploy()).expect("second");
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "x"}])
        );
        assert!(
            second["metadata"].get("labels").is_none(),
            "{}",
            second["metadata"]
        );
    }

    #[test]
    fn managers_of_disjoint_fields_coexist() {
        let first = server_side_apply(
            None,
            &config(1, json!({"app": "web"}), nginx("a")),
            "kubectl",
            false,
            T0,
            deploy(),
        )
        .expect("first");
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "annotations": {"team": "x"}}});
        let out = server_side_apply(Some(&first), &other, "team-bot", false, T1, deploy())
            .expect("disjoint apply");
        assert_eq!(out["metadata"]["annotations"]["team"], "x");
        assert_eq!(out["spec"]["replicas"], 1);
        assert_eq!(out["metadata"]["labels"]["app"], "web");
        let mut names = managers(&out);
        names.sort();
        assert_eq!(
            names,
            [
                ("kubectl".into(), "Apply".into()),
                ("team-bot".into(), "Apply".into())
            ]
        );
        // team-bot dropping its annotation does not touch kubectl's fields.
        let bare =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        let out = server_side_apply(Some(&out), &bare, "team-bot", false, T2, deploy())
            .expect("empty apply");
        assert!(out["metadata"].get("annotations").is_none());
        assert_eq!(out["spec"]["replicas"], 1);
        assert_eq!(
            managers(&out),
            [("kubectl".to_string(), "Apply".to_string())]
        );
    }

    #[test]
    fn shared_fields_conflict_only_when_values_differ() {
        let base = server_side_apply(
            None,
            &config(1, json!({"app": "web"}), nginx("a")),
            "kubectl",
            false,
            T0,
            deploy(),
        )
        .expect("first");
        let cases = [
            ("same value: shared ownership", json!({"replicas": 1}), None),
            (
                "different value: conflict",
                json!({"replicas": 5}),
                Some(".spec.replicas"),
            ),
        ];
        for (name, spec, conflict) in cases {
            let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": spec});
            let res = server_side_apply(Some(&base), &cfg, "hpa", false, T1, deploy());
            match conflict {
                None => {
                    let out = res.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                    assert!(
                        entry(&out, "kubectl")["fieldsV1"]["f:spec"]
                            .get("f:replicas")
                            .is_some(),
                        "{name}"
                    );
                    assert!(
                        entry(&out, "hpa")["fieldsV1"]["f:spec"]
                            .get("f:replicas")
                            .is_some(),
                        "{name}"
                    );
                }
                Some(field) => {
                    let Err(ApplyError::Conflict(causes)) = res else {
                        panic!("{name}: expected a conflict")
                    };
                    assert_eq!(
                        causes,
                        [Cause::new(
                            "FieldManagerConflict",
                            field,
                            "conflict with \"kubectl\""
                        )],
                        "{name}"
                    );
                }
            }
        }
    }

    #[test]
    fn force_takes_ownership() {
        let base = server_side_apply(
            None,
            &config(1, json!({"app": "web"}), nginx("a")),
            "kubectl",
            false,
            T0,
            deploy(),
        )
        .expect("first");
        let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 4, "template": {"spec": {"containers": [{"name": "nginx", "image": "b"}]}}}});
        let out =
            server_side_apply(Some(&base), &cfg, "ci", true, T1, deploy()).expect("forced apply");
        assert_eq!(out["spec"]["replicas"], 4);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "nginx", "image": "b"}])
        );
        let kubectl = &entry(&out, "kubectl")["fieldsV1"];
        assert!(kubectl["f:spec"].get("f:replicas").is_none());
        assert!(kubectl["f:spec"]["f:template"]["f:spec"]["f:containers"]
            ["k:{\"name\":\"nginx\"}"]
            .get("f:image")
            .is_none());
        assert!(kubectl["f:spec"]["f:template"]["f:spec"]["f:containers"]
            ["k:{\"name\":\"nginx\"}"]
            .get("f:name")
            .is_some());
        // kubectl applying its old replicas now conflicts with ci.
        let again = server_side_apply(
            Some(&out),
            &config(1, json!({"app": "web"}), nginx("a")),
            "kubectl",
            false,
            T2,
            deploy(),
        );
        let Err(ApplyError::Conflict(causes)) = again else {
            panic!("expected conflicts")
        };
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                ".spec.replicas",
                ".spec.template.spec.containers[name=\"nginx\"].image"
            ]
        );
    }

    #[test]
    fn an_update_then_a_conflicting_apply() {
        let created = server_side_apply(
            None,
            &config(1, json!({"app": "web"}), nginx("a")),
            "kubectl",
            false,
            T0,
            deploy(),
        )
        .expect("create");
        // `kubectl scale`-like write by another manager.
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(3);
        record_update(Some(&created), &mut scaled, "kubectl-scale", T1);
        let e = entry(&scaled, "kubectl-scale");
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        assert!(entry(&scaled, "kubectl")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none());

        let res = server_side_apply(
            Some(&scaled),
            &config(1, json!({"app": "web"}), nginx("a")),
            "kubectl",
            false,
            T2,
            deploy(),
        );
        let Err(ApplyError::Conflict(causes)) = res else {
            panic!("expected a conflict")
        };
        assert_eq!(
            causes,
            [Cause::new(
                "FieldManagerConflict",
                ".spec.replicas",
                format!("conflict with \"kubectl-scale\" using apps/v1 at {T1}")
            )]
        );
        let api = ApplyError::Conflict(causes).into_api(Target {
            group: "apps".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            name: "web".into(),
        });
        assert_eq!(api.code(), 409);
    }

    #[test]
    fn record_update_tracks_create_changes_and_removals() {
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "uid": "u", "resourceVersion": "5", "labels": {"a": "1"}}, "data": {"k": "v"}});
        record_update(None, &mut cm, "kubectl-create", T0);
        assert_eq!(
            entry(&cm, "kubectl-create")["fieldsV1"],
            json!({"f:data": {"f:k": {}}, "f:metadata": {"f:labels": {"f:a": {}}}})
        );
        let mut edited = cm.clone();
        edited["data"] = json!({"k": "w", "n": "1"});
        edited["metadata"]["labels"] = json!({});
        record_update(Some(&cm), &mut edited, "kubectl-edit", T1);
        assert_eq!(
            entry(&edited, "kubectl-edit")["fieldsV1"],
            json!({"f:data": {"f:k": {}, "f:n": {}}, "f:metadata": {"f:labels": {}}})
        );
        // kubectl-create lost every field: its entry is gone.
        assert_eq!(
            managers(&edited),
            [("kubectl-edit".to_string(), "Update".to_string())]
        );
        // A no-op write changes nothing, time included.
        let mut same = edited.clone();
        record_update(Some(&edited), &mut same, "kubectl-edit", T2);
        assert_eq!(same, edited);
    }

    #[test]
    fn status_and_system_metadata_are_not_owned() {
        let kind = by_kind("v1", "Pod").expect("pod kind");
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "uid": "u", "resourceVersion": "1", "generation": 1, "creationTimestamp": T0},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}, "status": {"phase": "Running"}});
        assert_eq!(
            fields_v1(&pod, kind),
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {},
                "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}}}})
        );
    }

    #[test]
    fn objects_without_managed_fields_belong_to_before_first_apply() {
        let mut live = config(1, json!({"app": "web"}), nginx("a"));
        live["metadata"]["uid"] = json!("u");
        let res = server_side_apply(
            Some(&live),
            &config(2, json!({"app": "web"}), nginx("a")),
            "kubectl",
            false,
            T1,
            deploy(),
        );
        let Err(ApplyError::Conflict(causes)) = res else {
            panic!("expected a conflict")
        };
        assert_eq!(
            causes[0].message,
            format!("conflict with \"before-first-apply\" using apps/v1 at {T1}")
        );
        assert_eq!(causes[0].field, ".spec.replicas");
    }
}
