//! The four ways a PATCH request changes an object, as pure functions over JSON.
//!
//! ```text
//!  Content-Type                              function               failure
//!  application/json-patch+json        ──▶  json_patch()          PatchError → 400
//!  application/merge-patch+json       ──▶  merge_patch()         PatchError → 400
//!  application/strategic-merge-patch+json ─▶ strategic_merge()   PatchError → 400
//!  application/apply-patch+yaml       ──▶  server_side_apply()   ApplyError → 409 / 400
//!  (every other write)                ──▶  record_update()       (bookkeeping only)
//! ```
//!
//! Strategic merge patch and server-side apply need to know how each list field merges;
//! [`markers`] holds the Kubernetes markers and walks a kind's schema to find them. No I/O
//! and no store here: the REST layer reads the live object, calls one of these, validates
//! and writes the result.

mod apply;
mod markers;
mod strategic;

pub use apply::{fields_v1, record_update, server_side_apply, ApplyError};
pub use markers::annotate_openapi;
pub use strategic::strategic_merge;

use serde_json::Value;

use crate::error::{ApiError, Cause, Target};

/// The patch flavours kube-apiserver accepts, by request `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value (parameters such as `charset` ignored).
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// A patch that cannot be applied: always the client's fault ([`PatchError::into_api`]).
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The body is not the document the patch type requires.
    #[error("{0}")]
    Malformed(String),
    /// A JSON patch operation failed (`test` mismatch, missing path, ...); the document is
    /// left as it was.
    #[error("{0}")]
    Operation(#[from] json_patch::PatchError),
    /// A strategic merge patch the object's schema cannot take (missing merge key, bad
    /// directive, list element types that differ, ...).
    #[error("{0}")]
    Strategic(String),
}

impl PatchError {
    /// The error the client sees for a patch of `target`. kube-apiserver answers 422 when a
    /// well-formed JSON patch operation fails (`test` mismatch, missing path) and 400 for
    /// everything it cannot decode or interpret.
    pub fn into_api(self, target: Target) -> ApiError {
        match self {
            PatchError::Operation(e) => ApiError::Invalid {
                target,
                causes: vec![Cause::new("FieldValueInvalid", "", e.to_string())],
            },
            PatchError::Malformed(m) | PatchError::Strategic(m) => ApiError::BadRequest(m),
        }
    }
}

/// Apply an RFC 6902 JSON patch (a JSON array of operations) to `original`. All operations
/// succeed or none do.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Malformed(format!("invalid JSON patch: {e}")))?;
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &ops.0)?;
    Ok(doc)
}

/// Apply an RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything
/// else (lists included) replaces.
pub fn merge_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    // kube-apiserver only patches objects; a bare array or scalar would replace the whole
    // object with something that is not one.
    if !patch.is_object() {
        return Err(PatchError::Malformed(
            "merge patch must be a JSON object".into(),
        ));
    }
    let mut doc = original.clone();
    json_patch::merge(&mut doc, patch);
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target() -> Target {
        Target {
            group: "apps".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn content_types_map_to_patch_types() {
        let cases = [
            ("application/json-patch+json", Some(PatchType::Json)),
            (
                "application/merge-patch+json; charset=utf-8",
                Some(PatchType::Merge),
            ),
            (
                "application/strategic-merge-patch+json",
                Some(PatchType::StrategicMerge),
            ),
            ("application/apply-patch+yaml", Some(PatchType::Apply)),
            ("application/json", None),
        ];
        for (ct, want) in cases {
            assert_eq!(PatchType::from_content_type(ct), want, "{ct}");
        }
    }

    #[test]
    fn merge_patch_cases() {
        let cm = json!({"metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v", "list": "x"}});
        let cases = [
            (
                "null deletes a key, others merge",
                json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
                json!({"metadata": {"name": "c", "labels": {"b": "2", "c": "3"}}, "data": {"k": "v", "list": "x"}}),
            ),
            (
                "null deletes a whole map",
                json!({"data": null}),
                json!({"metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}}),
            ),
            (
                "scalars replace",
                json!({"data": {"k": "w"}}),
                json!({"metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"k": "w", "list": "x"}}),
            ),
        ];
        for (name, patch, want) in cases {
            assert_eq!(merge_patch(&cm, &patch).unwrap(), want, "{name}");
        }
        assert!(matches!(
            merge_patch(&cm, &json!([1])),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn merge_patch_replaces_lists() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}});
        let out = merge_patch(
            &pod,
            &json!({"spec": {"containers": [{"name": "a", "image": "y"}]}}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "a", "image": "y"}]}})
        );
    }

    #[test]
    fn json_patch_cases() {
        let doc = json!({"spec": {"replicas": 1, "list": ["a", "b"]}, "metadata": {"labels": {"x": "1"}}});
        let ok = [
            (
                "test then replace",
                json!([{"op": "test", "path": "/spec/replicas", "value": 1}, {"op": "replace", "path": "/spec/replicas", "value": 3}]),
                json!({"spec": {"replicas": 3, "list": ["a", "b"]}, "metadata": {"labels": {"x": "1"}}}),
            ),
            (
                "add to a map and append to a list",
                json!([{"op": "add", "path": "/metadata/labels/y", "value": "2"}, {"op": "add", "path": "/spec/list/-", "value": "c"}]),
                json!({"spec": {"replicas": 1, "list": ["a", "b", "c"]}, "metadata": {"labels": {"x": "1", "y": "2"}}}),
            ),
            (
                "remove a list item",
                json!([{"op": "remove", "path": "/spec/list/0"}]),
                json!({"spec": {"replicas": 1, "list": ["b"]}, "metadata": {"labels": {"x": "1"}}}),
            ),
            (
                "keys with a slash are escaped",
                json!([{"op": "add", "path": "/metadata/labels/app.kubernetes.io~1name", "value": "n"}]),
                json!({"spec": {"replicas": 1, "list": ["a", "b"]}, "metadata": {"labels": {"x": "1", "app.kubernetes.io/name": "n"}}}),
            ),
        ];
        for (name, patch, want) in ok {
            assert_eq!(json_patch(&doc, &patch).unwrap(), want, "{name}");
        }
        let failing = [
            (
                "failing test",
                json!([{"op": "replace", "path": "/spec/replicas", "value": 5}, {"op": "test", "path": "/spec/replicas", "value": 2}]),
            ),
            (
                "remove of a missing path",
                json!([{"op": "remove", "path": "/spec/nope"}]),
            ),
        ];
        for (name, patch) in failing {
            let err = json_patch(&doc, &patch).unwrap_err();
            assert!(matches!(err, PatchError::Operation(_)), "{name}: {err:?}");
            let api = err.into_api(target());
            assert_eq!(api.code(), 422, "{name}");
            assert_eq!(api.status()["reason"], "Invalid", "{name}");
        }
        let err = json_patch(&doc, &json!({"op": "add"})).unwrap_err();
        assert!(matches!(err, PatchError::Malformed(_)), "{err:?}");
        assert_eq!(err.into_api(target()).code(), 400);
        let err = json_patch(&doc, &json!([{"op": "frobnicate", "path": "/a"}])).unwrap_err();
        assert!(matches!(err, PatchError::Malformed(_)), "{err:?}");
    }
}
