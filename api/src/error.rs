//! The one place where kith's errors become Kubernetes `Status` objects on the wire.
//!
//! Every failure a request can meet is an [`ApiError`]; [`ApiError::status`] is the single
//! exhaustive match that picks the HTTP code, the `reason` and the message kubectl prints.

use serde::Serialize;
use serde_json::{json, Value};

use crate::store::StoreError;

/// Bodies larger than this are refused with 413, as kube-apiserver does.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// One field-level problem, as listed in `Status.details.causes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueDuplicate`,
    /// `FieldValueTooLong`, `FieldValueForbidden`, `FieldManagerConflict`, ...
    #[serde(rename = "type")]
    pub reason: String,
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn new(reason: &str, field: &str, message: impl Into<String>) -> Self {
        Cause {
            reason: reason.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }
    pub fn required(field: &str) -> Self {
        Cause::new("FieldValueRequired", field, "Required value")
    }
    pub fn invalid(field: &str, value: &str, why: &str) -> Self {
        Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: \"{value}\": {why}"),
        )
    }
}

/// What a resource is called in messages: `pods`, `deployments.apps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub group: String,
    /// Plural resource name (Kubernetes puts it in `details.kind`).
    pub resource: String,
    /// The kind (`Pod`), for "is invalid" messages.
    pub kind: String,
    pub name: String,
}

impl Target {
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound(Target),
    /// A path that names no resource at all.
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("already exists")]
    AlreadyExists(Target),
    #[error("conflict")]
    Conflict(Target),
    /// A conflict with its own explanation, e.g. a pod that is already bound.
    #[error("conflict: {1}")]
    ConflictReason(Target, String),
    /// Server-side apply: another field manager owns fields this apply would change.
    #[error("apply conflict")]
    ApplyConflict { target: Target, causes: Vec<Cause> },
    #[error("invalid")]
    Invalid { target: Target, causes: Vec<Cause> },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("expired: {0}")]
    Expired(String),
    #[error("request entity too large")]
    TooLarge,
    #[error("unsupported media type {0}")]
    UnsupportedMediaType(String),
    #[error("method not allowed")]
    MethodNotAllowed { target: Target, verb: String },
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The namespace exists but is being deleted.
    #[error("namespace terminating")]
    NamespaceTerminating { target: Target, namespace: String },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("timeout: {0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// kube-apiserver's text for apply conflicts: one conflict inline, several grouped by
/// manager (managers sorted), each field on its own line.
fn apply_conflict_message(causes: &[Cause]) -> String {
    if let [c] = causes {
        return format!("Apply failed with 1 conflict: {}: {}", c.message, c.field);
    }
    let mut by_manager: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for c in causes {
        // The cause message is `conflict with "m" ...`; group on that text.
        let who = c
            .message
            .strip_prefix("conflict with ")
            .unwrap_or(&c.message)
            .to_string();
        by_manager.entry(who).or_default().push(&c.field);
    }
    let groups: Vec<String> = by_manager
        .into_iter()
        .map(|(who, fields)| {
            let lines: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
            format!("conflicts with {who}:\n{}", lines.join("\n"))
        })
        .collect();
    format!(
        "Apply failed with {} conflicts: {}",
        causes.len(),
        groups.join("\n")
    )
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    /// Turn a store refusal into the error the client should see for `target`.
    pub fn from_store(err: StoreError, target: Target) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound(target),
            StoreError::AlreadyExists => ApiError::AlreadyExists(target),
            StoreError::Conflict { .. } => ApiError::Conflict(target),
            StoreError::Expired { requested, oldest } => {
                ApiError::Expired(format!("too old resource version: {requested} ({oldest})"))
            }
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }

    pub fn code(&self) -> u16 {
        self.parts().0
    }

    /// (code, reason, message, details)
    fn parts(&self) -> (u16, &'static str, String, Value) {
        fn details(t: &Target) -> Value {
            let mut d = json!({"name": t.name, "kind": t.resource});
            if !t.group.is_empty() {
                d["group"] = json!(t.group);
            }
            d
        }
        match self {
            ApiError::NotFound(t) => (
                404,
                "NotFound",
                format!("{} \"{}\" not found", t.qualified(), t.name),
                details(t),
            ),
            ApiError::NoRoute => (
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                Value::Null,
            ),
            ApiError::AlreadyExists(t) => (
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", t.qualified(), t.name),
                details(t),
            ),
            ApiError::Conflict(t) => (
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    t.qualified(),
                    t.name
                ),
                details(t),
            ),
            ApiError::ConflictReason(t, why) => (
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {} \"{}\": {why}", t.qualified(), t.name),
                details(t),
            ),
            ApiError::ApplyConflict { target, causes } => {
                let mut d = details(target);
                d["causes"] = json!(causes);
                (409, "Conflict", apply_conflict_message(causes), d)
            }
            ApiError::Invalid { target, causes } => {
                let parts: Vec<String> = causes
                    .iter()
                    .map(|c| {
                        if c.field.is_empty() {
                            c.message.clone()
                        } else {
                            format!("{}: {}", c.field, c.message)
                        }
                    })
                    .collect();
                let joined = if parts.len() == 1 {
                    parts[0].clone()
                } else {
                    format!("[{}]", parts.join(", "))
                };
                let mut d = json!({"name": target.name, "kind": target.kind});
                if !target.group.is_empty() {
                    d["group"] = json!(target.group);
                }
                d["causes"] = json!(causes);
                (
                    422,
                    "Invalid",
                    format!("{} \"{}\" is invalid: {}", target.kind, target.name, joined),
                    d,
                )
            }
            ApiError::BadRequest(m) => (400, "BadRequest", m.clone(), Value::Null),
            ApiError::Expired(m) => (410, "Expired", m.clone(), Value::Null),
            ApiError::TooLarge => (
                413,
                "RequestEntityTooLarge",
                format!("Request entity too large: limit is {MAX_BODY_BYTES}"),
                Value::Null,
            ),
            ApiError::UnsupportedMediaType(ct) => (
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({ct}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
                ),
                Value::Null,
            ),
            ApiError::MethodNotAllowed { target, verb } => (
                405,
                "MethodNotAllowed",
                format!("{verb} is not supported on resources of kind \"{}\"", target.qualified()),
                details(target),
            ),
            ApiError::Unauthorized => (401, "Unauthorized", "Unauthorized".into(), Value::Null),
            ApiError::Forbidden(m) => (403, "Forbidden", m.clone(), Value::Null),
            ApiError::NamespaceTerminating { target, namespace } => (
                403,
                "Forbidden",
                format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                    target.qualified(),
                    target.name
                ),
                {
                    let mut d = details(target);
                    d["causes"] = json!([{"type": "NamespaceTerminating", "message": format!("namespace {namespace} is being terminated"), "field": "metadata.namespace"}]);
                    d
                },
            ),
            ApiError::Unavailable(m) => (503, "ServiceUnavailable", m.clone(), Value::Null),
            ApiError::Timeout(m) => (504, "Timeout", m.clone(), Value::Null),
            ApiError::Internal(m) => (500, "InternalError", format!("Internal error occurred: {m}"), Value::Null),
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let (code, reason, message, details) = self.parts();
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        });
        if !details.is_null() {
            s["details"] = details;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(group: &str, resource: &str, kind: &str, name: &str) -> Target {
        Target {
            group: group.into(),
            resource: resource.into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn statuses_match_kube_apiserver() {
        let cases: Vec<(ApiError, u16, &str, &str)> = vec![
            (ApiError::NotFound(t("", "pods", "Pod", "x")), 404, "NotFound", "pods \"x\" not found"),
            (
                ApiError::NotFound(t("apps", "deployments", "Deployment", "d")),
                404,
                "NotFound",
                "deployments.apps \"d\" not found",
            ),
            (
                ApiError::AlreadyExists(t("", "configmaps", "ConfigMap", "c")),
                409,
                "AlreadyExists",
                "configmaps \"c\" already exists",
            ),
            (
                ApiError::Conflict(t("", "pods", "Pod", "x")),
                409,
                "Conflict",
                "Operation cannot be fulfilled on pods \"x\": the object has been modified; please apply your changes to the latest version and try again",
            ),
            (
                ApiError::Invalid {
                    target: t("", "configmaps", "ConfigMap", "Bad_Name"),
                    causes: vec![Cause::invalid("metadata.name", "Bad_Name", "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")],
                },
                422,
                "Invalid",
                "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            ),
            (ApiError::TooLarge, 413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728"),
            (ApiError::Unauthorized, 401, "Unauthorized", "Unauthorized"),
            (ApiError::Expired("too old resource version: 1 (5)".into()), 410, "Expired", "too old resource version: 1 (5)"),
        ];
        for (err, code, reason, message) in cases {
            let s = err.status();
            assert_eq!(s["code"], code, "{err:?}");
            assert_eq!(s["reason"], reason, "{err:?}");
            assert_eq!(s["message"], message, "{err:?}");
            assert_eq!(s["kind"], "Status");
            assert_eq!(s["status"], "Failure");
        }
    }

    #[test]
    fn invalid_with_several_causes_lists_them_in_brackets() {
        let err = ApiError::Invalid {
            target: t("", "pods", "Pod", "p"),
            causes: vec![
                Cause::required("spec.containers"),
                Cause::required("metadata.name"),
            ],
        };
        let s = err.status();
        assert_eq!(s["message"], "Pod \"p\" is invalid: [spec.containers: Required value, metadata.name: Required value]");
        assert_eq!(s["details"]["causes"][0]["type"], "FieldValueRequired");
        assert_eq!(s["details"]["causes"][0]["field"], "spec.containers");
    }
}
