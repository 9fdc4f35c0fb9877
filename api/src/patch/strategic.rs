//! Strategic merge patch (`application/strategic-merge-patch+json`), the patch kubectl
//! client-side apply, `kubectl patch` and `kubectl rollout restart` send for built-in kinds.
//!
//! Like a JSON merge patch, except that lists whose field is marked `patchStrategy: merge`
//! are merged item by item (by `patchMergeKey` for lists of objects, by value for lists of
//! scalars), and the patch may carry directives:
//!
//! - `"$patch": "replace" | "delete" | "merge"` in a map (replace it / empty it / the
//!   default), and `{"<mergeKey>": v, "$patch": "delete"}` or `{"$patch": "replace"}` as
//!   list items (drop that item / replace the whole list with the other patch items);
//! - `"$setElementOrder/<field>": [...]`: the order the patched list should end up in;
//! - `"$retainKeys": [...]`: the map keeps only these keys (union-type fields such as a
//!   Deployment's `strategy` and a volume's source);
//! - `"$deleteFromPrimitiveList/<field>": [...]`: values to remove from a merged scalar list;
//! - `null`: delete the field.
//!
//! The order of merged lists follows kube-apiserver: items named by the patch in patch
//! order, server-only items interleaved at their old relative positions.
//!
//! One deliberate difference: where the patch introduces a value that has no counterpart in
//! the original (a new container, a new map), kube-apiserver copies it verbatim and lets
//! directives nested in it leak into the result; here it is merged into an empty value, so
//! directives in it take effect and never reach the stored object.

use std::collections::VecDeque;

use serde_json::{Map, Value};

use super::markers::{self, Markers, Node};
use super::PatchError;
use crate::kinds::Kind;

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

static NULL: Value = Value::Null;

type Result<T> = std::result::Result<T, PatchError>;

fn bad(msg: impl Into<String>) -> PatchError {
    PatchError::Strategic(msg.into())
}

/// Apply a strategic merge patch to `original` (an object of `kind`), with the merge keys
/// and strategies Kubernetes declares for that kind's fields.
pub fn strategic_merge(original: &Value, patch: &Value, kind: &Kind) -> Result<Value> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Malformed(
            "strategic merge patch must be a JSON object".into(),
        ));
    };
    let original = match original {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        _ => return Err(bad("the object to patch is not a JSON object")),
    };
    let schemas = markers::schemas(kind);
    Ok(Value::Object(merge_map(
        original,
        patch.clone(),
        schemas.root(),
    )?))
}

/// Merge `patch` into the map `original` whose schema position is `node`.
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    node: Node<'_>,
) -> Result<Map<String, Value>> {
    if let Some(directive) = patch.shift_remove(PATCH) {
        match directive.as_str() {
            Some("replace") => return merge_map(Map::new(), patch, node),
            Some("delete") => return Ok(Map::new()),
            // kube-apiserver refuses `merge` here although it is what happens anyway; taking
            // it as the default is harmless and what the directive says.
            Some("merge") => {}
            _ => return Err(bad(format!("unknown patch type: {directive} in map"))),
        }
    }

    if let Some(retain) = patch.shift_remove(RETAIN_KEYS) {
        apply_retain_keys(&mut original, &patch, retain)?;
    }

    // Ordered lists first: each consumes its list from the patch so the loop below skips it.
    let ordered: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ORDER))
        .cloned()
        .collect();
    for directive in ordered {
        let order = patch.shift_remove(&directive).unwrap_or(Value::Null);
        merge_ordered_list(
            &mut original,
            &mut patch,
            &directive[SET_ORDER.len()..],
            order,
            node,
        )?;
    }

    for (key, patch_value) in patch {
        let (field, delete_list) = match key.strip_prefix(DELETE_PRIMITIVE) {
            Some("") => return Err(bad("invalid patch format of primitive list")),
            Some(field) => (field.to_string(), true),
            None => (key, false),
        };
        if patch_value.is_null() {
            original.shift_remove(&field);
            continue;
        }
        let (child, markers) = node.field(&field);
        let Some(slot) = original.get_mut(&field) else {
            // Deleting from a list that is not there leaves it not there.
            if !delete_list {
                if let Some(v) = fresh(patch_value, child, markers)? {
                    original.insert(field, v);
                }
            }
            continue;
        };
        let merged = match (std::mem::take(slot), patch_value) {
            (Value::Object(o), Value::Object(p)) => Some(Value::Object(merge_map(o, p, child)?)),
            (Value::Array(o), Value::Array(p)) if markers.merge || delete_list => Some(
                Value::Array(merge_list(o, p, child.items(), markers, delete_list)?),
            ),
            (old, _) if delete_list => Some(old),
            (_, p) => fresh(p, child, markers)?,
        };
        match merged {
            Some(v) => {
                original.insert(field, v);
            }
            None => {
                original.shift_remove(&field);
            }
        }
    }
    Ok(original)
}

fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    retain: Value,
) -> Result<()> {
    let format = || bad("invalid patch format of retainKeys");
    let Value::Array(list) = retain else {
        return Err(format());
    };
    let keep = list
        .iter()
        .map(|v| v.as_str().ok_or_else(format))
        .collect::<Result<Vec<&str>>>()?;
    // Every field the patch sets must be retained, or the patch contradicts itself.
    for (k, v) in patch {
        if v.is_null() || k.starts_with(DELETE_PRIMITIVE) || k.starts_with(SET_ORDER) {
            continue;
        }
        if !keep.contains(&k.as_str()) {
            return Err(format());
        }
    }
    original.retain(|k, _| keep.contains(&k.as_str()));
    Ok(())
}

/// `$setElementOrder/<field>`: merge the field's list (if the patch has one) and put the
/// result in the given order, server-only items interleaved where they were.
fn merge_ordered_list(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    field: &str,
    order: Value,
    node: Node<'_>,
) -> Result<()> {
    let format = || bad("invalid patch format of setElementOrder list");
    let Value::Array(order) = order else {
        return Err(format());
    };
    if field.is_empty() {
        return Err(format());
    }
    let (child, markers) = node.field(field);
    let key = markers.merge_key;
    let server = match original.get(field) {
        None => None,
        Some(Value::Array(a)) => Some(a.clone()),
        Some(other) => return Err(bad(format!("expected a list at {field}, found {other}"))),
    };
    let patched = match patch.shift_remove(field) {
        None => None,
        Some(Value::Array(a)) => Some(a),
        Some(other) => {
            return Err(bad(format!(
                "expected a list at {field} in the patch, found {other}"
            )))
        }
    };
    if let Some(k) = key {
        for item in &order {
            if item.get(k).is_none() {
                return Err(bad(format!(
                    "map: {item} does not contain declared merge key: {k}"
                )));
            }
        }
    }
    validate_order(patched.as_deref().unwrap_or(&[]), &order, key)?;
    let merged = match (server.clone(), patched) {
        (Some(s), None) => s,
        (None, Some(p)) => match fresh(Value::Array(p), child, markers)? {
            Some(Value::Array(v)) => v,
            _ => Vec::new(),
        },
        (Some(s), Some(p)) if markers.merge => merge_list(s, p, child.items(), markers, false)?,
        (Some(_), Some(p)) => strip_list(p, child.items())?,
        (None, None) => return Ok(()),
    };
    let server = server.unwrap_or_default();
    original.insert(
        field.to_string(),
        Value::Array(arrange(merged, &order, &server, key)),
    );
    Ok(())
}

/// The patch list's items (deletions aside) must appear in `$setElementOrder` in the same
/// relative order.
fn validate_order(patch: &[Value], order: &[Value], key: Option<&str>) -> Result<()> {
    if patch.is_empty() || order.is_empty() {
        return Ok(());
    }
    let items: Vec<&Value> = patch
        .iter()
        .filter(|v| v.get(PATCH).and_then(Value::as_str) != Some("delete"))
        .collect();
    let (mut p, mut o) = (0, 0);
    while p < items.len() && o < order.len() {
        if items[p].get(PATCH).is_some() {
            p += 1;
            continue;
        }
        if ident(items[p], key) == ident(&order[o], key) {
            p += 1;
        }
        o += 1;
    }
    if p < items.len() {
        return Err(bad(format!(
            "the order in patch list {} doesn't match $setElementOrder list {}",
            Value::Array(patch.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

/// A patch value that has nothing to merge with: directives are resolved against emptiness,
/// `null`s and `$patch: delete`d maps vanish. `None` means "no field at all".
fn fresh(value: Value, node: Node<'_>, markers: Markers) -> Result<Option<Value>> {
    match value {
        Value::Null => Ok(None),
        Value::Object(map) => {
            if map.get(PATCH).and_then(Value::as_str) == Some("delete") {
                return Ok(None);
            }
            Ok(Some(Value::Object(merge_map(Map::new(), map, node)?)))
        }
        Value::Array(items) if markers.merge => Ok(Some(Value::Array(merge_list(
            Vec::new(),
            items,
            node.items(),
            markers,
            false,
        )?))),
        Value::Array(items) => Ok(Some(Value::Array(strip_list(items, node.items())?))),
        scalar => Ok(Some(scalar)),
    }
}

/// A replacing (non-merge) list from the patch, its items cleaned of directives.
fn strip_list(items: Vec<Value>, item_node: Node<'_>) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some(v) = fresh(item, item_node, Markers::NONE)? {
            out.push(v);
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    Null,
    Bool,
    Number,
    String,
    Object,
}

/// The one element type of all items of `lists` (`None` if they are all empty).
fn element_type(lists: [&[Value]; 2]) -> Result<Option<Elem>> {
    let mut found = None;
    for v in lists.into_iter().flatten() {
        let t = match v {
            Value::Null => Elem::Null,
            Value::Bool(_) => Elem::Bool,
            Value::Number(_) => Elem::Number,
            Value::String(_) => Elem::String,
            Value::Object(_) => Elem::Object,
            Value::Array(_) => return Err(bad("lists of lists are not supported")),
        };
        match found {
            None => found = Some(t),
            Some(f) if f != t => return Err(bad("list element types are not identical")),
            Some(_) => {}
        }
    }
    Ok(found)
}

/// Merge a patch list into a list whose field has the merge strategy (or into any list, for
/// `$deleteFromPrimitiveList`).
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    items: Node<'_>,
    markers: Markers,
    delete_list: bool,
) -> Result<Vec<Value>> {
    let Some(elem) = element_type([&original, &patch])? else {
        return Ok(original);
    };
    if delete_list {
        return Ok(original
            .into_iter()
            .filter(|v| !patch.contains(v))
            .collect());
    }
    if elem != Elem::Object {
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(&patch) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        return Ok(arrange(merged, &patch, &original, None));
    }
    let Some(key) = markers.merge_key else {
        return Err(bad(format!(
            "cannot merge lists without merge key for {}",
            items.def().unwrap_or("this field")
        )));
    };
    let (base, patch) = special_items(original, patch, key, items)?;
    let mut merged = base.clone();
    for item in &patch {
        let Value::Object(obj) = item else {
            return Err(bad("list element types are not identical"));
        };
        let Some(wanted) = obj.get(key) else {
            return Err(bad(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        match merged.iter().position(|m| m.get(key) == Some(wanted)) {
            Some(pos) => {
                let Value::Object(old) = std::mem::take(&mut merged[pos]) else {
                    return Err(bad("list element types are not identical"));
                };
                merged[pos] = Value::Object(merge_map(old, obj.clone(), items)?);
            }
            None => {
                if let Some(v) = fresh(item.clone(), items, Markers::NONE)? {
                    merged.push(v);
                }
            }
        }
    }
    Ok(arrange(merged, &patch, &base, Some(key)))
}

/// Handle `$patch` items of a merge list: deletions remove matching original items,
/// `replace` makes the remaining patch items the whole list. Returns (original, patch) with
/// those items gone.
fn special_items(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
    items: Node<'_>,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(PATCH) else {
            plain.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(wanted) = item.get(key) else {
                    return Err(bad(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                original.retain(|o| o.get(key) != Some(wanted));
            }
            Some("replace") => replace = true,
            Some("merge") => return Err(bad("merging lists cannot yet be specified in the patch")),
            _ => {
                return Err(bad(format!(
                    "unknown patch type: {directive} in map: {item}"
                )))
            }
        }
    }
    if replace {
        return Ok((strip_list(plain, items)?, Vec::new()));
    }
    Ok((original, plain))
}

/// What identifies a list item: its merge key's value, or the item itself for scalars.
fn ident<'v>(v: &'v Value, key: Option<&str>) -> &'v Value {
    match key {
        Some(k) => v.get(k).unwrap_or(&NULL),
        None => v,
    }
}

fn position(list: &[Value], v: &Value, key: Option<&str>) -> Option<usize> {
    let id = ident(v, key);
    list.iter().position(|x| ident(x, key) == id)
}

/// Order a merged list: items named in `wanted` (the patch list or `$setElementOrder`) in
/// that order, the rest in their `server` order, and the two interleaved so that a
/// server-only item stays ahead of a patch item it preceded in the live list.
fn arrange(
    merged: Vec<Value>,
    wanted: &[Value],
    server: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let (mut named, mut rest): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| position(wanted, v, key).is_some());
    named.sort_by_key(|v| position(wanted, v, key).unwrap_or(usize::MAX));
    rest.sort_by_key(|v| position(server, v, key).unwrap_or(usize::MAX));

    let mut left = VecDeque::from(rest);
    let mut right = VecDeque::from(named);
    let mut out = Vec::with_capacity(left.len() + right.len());
    loop {
        let take_left = match (left.front(), right.front()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (position(server, l, key), position(server, r, key)),
                (Some(li), Some(ri)) if li < ri
            ),
        };
        let next = if take_left {
            left.pop_front()
        } else {
            right.pop_front()
        };
        out.extend(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_kind;
    use serde_json::json;

    fn kind(api_version: &str, k: &str) -> &'static Kind {
        by_kind(api_version, k).expect("kind is registered")
    }

    fn deployment(containers: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}}
        })
    }

    fn pod_patch(spec: Value) -> Value {
        json!({"spec": {"template": {"spec": spec}}})
    }

    #[test]
    fn deployment_patches_as_kubectl_apply_sends_them() {
        let two = json!([
            {"name": "nginx", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}
        ]);
        let live = deployment(two);
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "change the image of one container, keep the other",
                pod_patch(
                    json!({"$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
                    "containers": [{"name": "nginx", "image": "nginx:1.27"}]}),
                ),
                json!([
                    {"name": "nginx", "image": "nginx:1.27", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}
                ]),
            ),
            (
                "add an env var and delete another",
                pod_patch(
                    json!({"$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
                    "containers": [{"name": "nginx",
                        "$setElementOrder/env": [{"name": "A"}, {"name": "C"}],
                        "env": [{"name": "C", "value": "3"}, {"$patch": "delete", "name": "B"}]}]}),
                ),
                json!([
                    {"name": "nginx", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]},
                    {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}
                ]),
            ),
            (
                "remove a container",
                pod_patch(json!({"$setElementOrder/containers": [{"name": "nginx"}],
                    "containers": [{"$patch": "delete", "name": "sidecar"}]})),
                json!([{"name": "nginx", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]),
            ),
            (
                "non-merge lists inside a merged item are replaced",
                pod_patch(json!({"containers": [{"name": "sidecar", "args": ["sleep", "2d"]}]})),
                json!([
                    {"name": "nginx", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "sidecar", "image": "busybox", "args": ["sleep", "2d"]}
                ]),
            ),
            (
                "a new container without setElementOrder goes first, as kube-apiserver puts it",
                pod_patch(json!({"containers": [{"name": "log", "image": "fluent"}]})),
                json!([
                    {"name": "log", "image": "fluent"},
                    {"name": "nginx", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}
                ]),
            ),
            (
                "null deletes a field of one item",
                pod_patch(json!({"containers": [{"name": "sidecar", "args": null}]})),
                json!([
                    {"name": "nginx", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "sidecar", "image": "busybox"}
                ]),
            ),
        ];
        let k = kind("apps/v1", "Deployment");
        for (name, patch, want) in cases {
            let out = strategic_merge(&live, &patch, k).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                out["spec"]["template"]["spec"]["containers"], want,
                "{name}"
            );
            assert_eq!(out["metadata"], live["metadata"], "{name}");
        }
    }

    #[test]
    fn replicas_and_annotations_merge_like_a_merge_patch() {
        let live = deployment(json!([{"name": "nginx", "image": "nginx"}]));
        let patch = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"replicas": 3, "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}});
        let out =
            strategic_merge(&live, &patch, kind("apps/v1", "Deployment")).expect("patch applies");
        assert_eq!(out["spec"]["replicas"], 3);
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(
            out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "{}"
        );
        assert_eq!(
            out["spec"]["template"]["metadata"],
            json!({"labels": {"app": "web"}, "annotations": {"kubectl.kubernetes.io/restartedAt": "now"}})
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx"
        );
    }

    #[test]
    fn directives() {
        let cases: Vec<(&str, &str, Value, Value, Value)> = vec![
            (
                "finalizers merge as a set, $deleteFromPrimitiveList removes",
                "v1/ConfigMap",
                json!({"metadata": {"name": "c", "finalizers": ["a", "b"]}}),
                json!({"metadata": {"finalizers": ["c", "a"], "$deleteFromPrimitiveList/finalizers": ["b"]}}),
                json!({"metadata": {"name": "c", "finalizers": ["c", "a"]}}),
            ),
            (
                "$deleteFromPrimitiveList of a missing list adds nothing",
                "v1/ConfigMap",
                json!({"metadata": {"name": "c"}}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}}),
                json!({"metadata": {"name": "c"}}),
            ),
            (
                "$setElementOrder on a primitive list with a deletion",
                "v1/ConfigMap",
                json!({"metadata": {"name": "c", "finalizers": ["a", "b", "c"]}}),
                json!({"metadata": {"$setElementOrder/finalizers": ["b", "a"], "$deleteFromPrimitiveList/finalizers": ["c"]}}),
                json!({"metadata": {"name": "c", "finalizers": ["b", "a"]}}),
            ),
            (
                "$patch: replace on a map drops keys the patch does not name",
                "v1/ConfigMap",
                json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}),
                json!({"data": {"$patch": "replace", "c": "3"}}),
                json!({"metadata": {"name": "c"}, "data": {"c": "3"}}),
            ),
            (
                "$patch: delete on a map empties it",
                "v1/ConfigMap",
                json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
                json!({"data": {"$patch": "delete"}}),
                json!({"metadata": {"name": "c"}, "data": {}}),
            ),
            (
                "$patch: replace in a merge list replaces the list",
                "v1/Pod",
                json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}),
                json!({"spec": {"containers": [{"name": "c", "image": "z"}, {"$patch": "replace"}]}}),
                json!({"spec": {"containers": [{"name": "c", "image": "z"}]}}),
            ),
            (
                "$retainKeys clears the other member of a union (Deployment strategy)",
                "apps/v1/Deployment",
                json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
                json!({"spec": {"strategy": {"type": "Recreate"}}}),
            ),
            (
                "$retainKeys inside merged volume items",
                "v1/Pod",
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}]}}),
                json!({"spec": {"$setElementOrder/volumes": [{"name": "v"}, {"name": "w"}],
                    "volumes": [{"name": "v", "$retainKeys": ["configMap", "name"], "configMap": {"name": "cm"}, "emptyDir": null}]}}),
                json!({"spec": {"volumes": [{"name": "v", "configMap": {"name": "cm"}}, {"name": "w", "emptyDir": {}}]}}),
            ),
            (
                "service ports merge by port",
                "v1/Service",
                json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}),
                json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
                json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
            ),
            (
                "tolerations have no merge strategy: replaced",
                "v1/Pod",
                json!({"spec": {"tolerations": [{"key": "a"}, {"key": "b"}]}}),
                json!({"spec": {"tolerations": [{"key": "c"}]}}),
                json!({"spec": {"tolerations": [{"key": "c"}]}}),
            ),
            (
                "ownerReferences merge by uid",
                "v1/ConfigMap",
                json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}}),
                json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}]}}),
                json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}, {"uid": "1", "name": "a"}]}}),
            ),
            (
                "a new subtree has its directives resolved, not copied",
                "v1/Pod",
                json!({"spec": {}}),
                json!({"spec": {"containers": [{"name": "a", "$setElementOrder/env": [{"name": "X"}], "env": [{"name": "X", "value": "1"}]}]}}),
                json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}),
            ),
        ];
        for (name, k, original, patch, want) in cases {
            let (av, kd) = k.rsplit_once('/').expect("apiVersion/kind");
            let out = strategic_merge(&original, &patch, kind(av, kd))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(out, want, "{name}");
        }
    }

    #[test]
    fn set_element_order_keeps_server_only_items_in_place() {
        // Live has items the patch author never saw (9); they stay after the item they followed.
        let live = json!({"spec": {"containers": [{"name": "1", "x": "a"}, {"name": "2"}, {"name": "9"}, {"name": "3"}, {"name": "4"}]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "2"}, {"name": "1"}, {"name": "4"}, {"name": "3"}]}});
        let out = strategic_merge(&live, &patch, kind("v1", "Pod")).expect("patch applies");
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["2", "1", "9", "4", "3"]);
        assert_eq!(out["spec"]["containers"][1], json!({"name": "1", "x": "a"}));
    }

    #[test]
    fn malformed_patches_are_rejected() {
        let live = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}], "strategy": {}}});
        let cases = [
            (
                "item without merge key",
                json!({"spec": {"containers": [{"image": "x"}]}}),
            ),
            (
                "delete without merge key",
                json!({"spec": {"containers": [{"$patch": "delete"}]}}),
            ),
            ("unknown directive", json!({"spec": {"$patch": "explode"}})),
            (
                "retainKeys not a list",
                json!({"spec": {"$retainKeys": "a"}}),
            ),
            (
                "retainKeys missing a patched key",
                json!({"spec": {"$retainKeys": ["a"], "b": 1}}),
            ),
            (
                "setElementOrder out of order",
                json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "b"}, {"name": "a"}]}}),
            ),
            (
                "mixed element types",
                json!({"metadata": {"finalizers": ["a", 1]}}),
            ),
        ];
        for (name, patch) in cases {
            let err = strategic_merge(&live, &patch, kind("v1", "Pod")).expect_err(name);
            assert!(matches!(err, PatchError::Strategic(_)), "{name}: {err:?}");
        }
        assert!(matches!(
            strategic_merge(&live, &json!([]), kind("v1", "Pod")),
            Err(PatchError::Malformed(_))
        ));
    }
}
