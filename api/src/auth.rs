//! Who is calling, and may they do what they ask?
//!
//! ```text
//!  TLS handshake (rustls already verified any client cert against the cluster CA)
//!        │ peer cert DER?            Authorization header?
//!        ▼                                  ▼
//!  Authenticator::authenticate ── CN → name, O → groups  |  Bearer token → User
//!        │ User (or 401)
//!        ▼
//!  authorize(user, verb, path) ── system:masters: all; metrics readers: health + /metrics
//!        │ Ok (or 403)
//! ```
//!
//! Like kube-apiserver, a client certificate wins over a token, and every authenticated
//! user also belongs to `system:authenticated`. Failures are [`ApiError::Unauthorized`]
//! and [`ApiError::Forbidden`], so they reach the wire through the one Status mapping.

use std::fmt;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::ApiError;

/// The group whose members may do anything (as in Kubernetes).
pub const MASTERS_GROUP: &str = "system:masters";
/// The group Prometheus scrapes with: health endpoints, `/metrics` and every agent's
/// `/metrics` through the node proxy, read-only.
pub const METRICS_GROUP: &str = "kith:metrics-readers";
/// Added to every authenticated user, as kube-apiserver does.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// Non-resource paths the metrics readers may GET.
const METRICS_PATHS: &[&str] = &["/metrics", "/livez", "/readyz", "/healthz", "/version"];
/// Of those, the ones whose sub-checks (`/readyz/ping`) are readable too.
const HEALTH_PATHS: &[&str] = &["/livez", "/readyz", "/healthz"];

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(
        name: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        User {
            name: name.into(),
            groups: groups.into_iter().map(Into::into).collect(),
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Kubernetes puts `system:authenticated` on everyone who proved who they are.
    fn authenticated(mut self) -> Self {
        if !self.in_group(AUTHENTICATED_GROUP) {
            self.groups.push(AUTHENTICATED_GROUP.to_string());
        }
        self
    }
}

/// Turns the credentials of a request into a [`User`].
#[derive(Clone)]
pub struct Authenticator {
    tokens: Vec<(Vec<u8>, User)>,
}

/// Never prints the tokens: this lands in logs.
impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator accepting these bearer tokens (and any CA-verified client cert).
    pub fn new(tokens: impl IntoIterator<Item = (String, User)>) -> Self {
        Authenticator {
            tokens: tokens
                .into_iter()
                .filter(|(t, _)| !t.is_empty())
                .map(|(t, u)| (t.into_bytes(), u))
                .collect(),
        }
    }

    /// Who sent this request. `client_cert_der` must be the end-entity certificate that
    /// rustls has already verified against the cluster CA: this function trusts it.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        client_cert_der: Option<&[u8]>,
    ) -> Result<User, ApiError> {
        // A cert without a usable CN does not end the search: kube-apiserver's union
        // authenticator also goes on to the token in that case.
        if let Some(user) = client_cert_der.and_then(user_from_cert) {
            return Ok(user.authenticated());
        }
        let token = authorization
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthorized)?;
        self.user_for_token(token.as_bytes())
            .map(|u| u.clone().authenticated())
            .ok_or(ApiError::Unauthorized)
    }

    /// Looks at every token, match or not, so the time taken says nothing about which
    /// token was close.
    fn user_for_token(&self, presented: &[u8]) -> Option<&User> {
        let mut found = None;
        for (token, user) in &self.tokens {
            if constant_time_eq(token, presented) && found.is_none() {
                found = Some(user);
            }
        }
        found
    }
}

/// CN → name, every O → a group. `None` when the cert cannot name a user.
fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?;
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect::<Vec<_>>();
    Some(User::new(name, groups))
}

/// `Bearer <token>`, scheme case-insensitive as in client-go; anything else is `None`.
pub(crate) fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return None;
    }
    Some(token)
}

/// Equality whose running time depends only on the lengths, not on where the bytes differ.
/// Tokens are all the same length, so the length is no secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

/// May `user` do `verb` (a Kubernetes verb or lower-case HTTP method) on `path`?
pub fn authorize(user: &User, verb: &str, path: &str) -> Result<(), ApiError> {
    if user.in_group(MASTERS_GROUP) {
        return Ok(());
    }
    let path = path.split('?').next().unwrap_or(path);
    if user.in_group(METRICS_GROUP)
        && verb.eq_ignore_ascii_case("get")
        && (metrics_path(path) || node_metrics_path(path))
    {
        return Ok(());
    }
    if user.in_group(crate::join::NODES_GROUP) {
        if let Some(node) = user.name.strip_prefix("system:node:") {
            if node_may(node, verb, path) {
                return Ok(());
            }
        }
    }
    Err(ApiError::Forbidden(format!(
        "forbidden: User \"{}\" cannot {} path \"{}\"",
        user.name,
        verb.to_ascii_lowercase(),
        path
    )))
}

/// What an agent (user `system:node:<node>`) may do, by path: read everything the kubelet
/// reads; write its own Node (and status) and Lease, pod status, pod deletion (to finish a
/// graceful delete) and Events. Like Kubernetes' Node authorizer, minus its finer rule that
/// only secrets of pods bound to the node are readable.
pub fn node_may(node: &str, verb: &str, path: &str) -> bool {
    let verb = verb.to_ascii_lowercase();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if verb == "get" {
        return matches!(segs.first(), Some(&"api") | Some(&"apis"))
            || metrics_path(path)
            || segs == ["version"];
    }
    match segs.as_slice() {
        // Its own Node: create, and update/patch it or its status.
        ["api", "v1", "nodes"] => verb == "post",
        ["api", "v1", "nodes", n] | ["api", "v1", "nodes", n, "status"] => {
            *n == node && matches!(verb.as_str(), "put" | "patch")
        }
        // Its Lease.
        ["apis", "coordination.k8s.io", "v1", "namespaces", "kube-node-lease", "leases"] => {
            verb == "post"
        }
        ["apis", "coordination.k8s.io", "v1", "namespaces", "kube-node-lease", "leases", n] => {
            *n == node && matches!(verb.as_str(), "put" | "patch")
        }
        // Pod status, and the final delete of a pod it stopped.
        ["api", "v1", "namespaces", _, "pods", _, "status"] => {
            matches!(verb.as_str(), "put" | "patch")
        }
        ["api", "v1", "namespaces", _, "pods", _] => verb == "delete",
        // Events about what it did.
        ["api", "v1", "namespaces", _, "events"] => verb == "post",
        ["api", "v1", "namespaces", _, "events", _] => matches!(verb.as_str(), "put" | "patch"),
        _ => false,
    }
}

/// `/api/v1/nodes/{name}/proxy/metrics`: an agent's metrics (RBAC's `nodes/proxy`, which
/// Prometheus' kubelet scrape jobs are granted).
fn node_metrics_path(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(segs.as_slice(), ["", "api", "v1", "nodes", n, "proxy", "metrics"] if !n.is_empty())
}

fn metrics_path(path: &str) -> bool {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    METRICS_PATHS.contains(&trimmed)
        || HEALTH_PATHS.iter().any(|h| {
            path.strip_prefix(h)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|check| !check.is_empty() && !check.contains('/'))
        })
}

#[cfg(test)]
mod node_tests {
    use super::*;

    #[test]
    fn node_may_table() {
        let cases = [
            ("get", "/api/v1/namespaces/a/secrets/s", true),
            ("get", "/apis/apps/v1/deployments", true),
            ("post", "/api/v1/nodes", true),
            ("patch", "/api/v1/nodes/n1/status", true),
            ("patch", "/api/v1/nodes/n2/status", false),
            ("put", "/api/v1/nodes/n1", true),
            ("delete", "/api/v1/nodes/n1", false),
            (
                "put",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
                true,
            ),
            (
                "put",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n2",
                false,
            ),
            (
                "post",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                true,
            ),
            ("patch", "/api/v1/namespaces/a/pods/p/status", true),
            ("patch", "/api/v1/namespaces/a/pods/p", false),
            ("delete", "/api/v1/namespaces/a/pods/p", true),
            ("post", "/api/v1/namespaces/a/pods", false),
            ("post", "/api/v1/namespaces/a/events", true),
            ("put", "/api/v1/namespaces/a/events/e", true),
            ("post", "/api/v1/namespaces/a/secrets", false),
            ("delete", "/api/v1/namespaces/a", false),
            ("post", "/apis/apps/v1/namespaces/a/deployments", false),
        ];
        for (verb, path, want) in cases {
            assert_eq!(node_may("n1", verb, path), want, "{verb} {path}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: Option<&str>, orgs: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        // rcgen keeps one value per DnType, so a second O attribute goes in under the O OID
        // spelt as a custom type: the DER is that of a second organizationName.
        assert!(
            orgs.len() <= 2,
            "this helper can only write two O attributes"
        );
        for (i, o) in orgs.iter().enumerate() {
            let ty = if i == 0 {
                rcgen::DnType::OrganizationName
            } else {
                rcgen::DnType::CustomDnType(vec![2, 5, 4, 10])
            };
            params.distinguished_name.push(ty, *o);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn auth() -> Authenticator {
        Authenticator::new([
            (
                "admin-token-0123456789".to_string(),
                User::new("kith-admin", [MASTERS_GROUP]),
            ),
            (
                "metrics-token-abcdefghi".to_string(),
                User::new("kith-metrics", [METRICS_GROUP]),
            ),
            (String::new(), User::new("nobody", [MASTERS_GROUP])),
        ])
    }

    fn user(name: &str, groups: &[&str]) -> User {
        let mut g: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
        g.push(AUTHENTICATED_GROUP.to_string());
        User {
            name: name.to_string(),
            groups: g,
        }
    }

    /// (Authorization header, client cert DER, expected outcome)
    type Case<'a> = (Option<&'a str>, Option<&'a [u8]>, Result<User, ApiError>);

    #[test]
    fn authenticate_table() {
        let a = auth();
        let admin_cert = cert(Some("kith-admin"), &["system:masters"]);
        let node_cert = cert(Some("system:node:box1"), &["system:nodes", "kith:edge"]);
        let no_cn = cert(None, &["system:masters"]);
        let empty_cn = cert(Some(""), &["system:masters"]);
        let garbage: &[u8] = b"\x30\x03not a cert";
        let ok = |u: User| -> Result<User, ApiError> { Ok(u) };
        let cases: Vec<Case> = vec![
            (None, None, Err(ApiError::Unauthorized)),
            (
                None,
                Some(&admin_cert),
                ok(user("kith-admin", &["system:masters"])),
            ),
            (
                None,
                Some(&node_cert),
                ok(user("system:node:box1", &["system:nodes", "kith:edge"])),
            ),
            (None, Some(&no_cn), Err(ApiError::Unauthorized)),
            (None, Some(&empty_cn), Err(ApiError::Unauthorized)),
            (None, Some(garbage), Err(ApiError::Unauthorized)),
            // the cert wins over a token naming someone else
            (
                Some("Bearer metrics-token-abcdefghi"),
                Some(&admin_cert),
                ok(user("kith-admin", &["system:masters"])),
            ),
            // a cert that names nobody falls through to the token
            (
                Some("Bearer metrics-token-abcdefghi"),
                Some(&no_cn),
                ok(user("kith-metrics", &[METRICS_GROUP])),
            ),
            (
                Some("Bearer admin-token-0123456789"),
                None,
                ok(user("kith-admin", &["system:masters"])),
            ),
            (
                Some("bearer admin-token-0123456789"),
                None,
                ok(user("kith-admin", &["system:masters"])),
            ),
            (
                Some("  Bearer   admin-token-0123456789  "),
                None,
                ok(user("kith-admin", &["system:masters"])),
            ),
            (
                Some("Bearer metrics-token-abcdefghi"),
                None,
                ok(user("kith-metrics", &[METRICS_GROUP])),
            ),
            (
                Some("Bearer admin-token-012345678"),
                None,
                Err(ApiError::Unauthorized),
            ),
            (
                Some("Bearer admin-token-01234567890"),
                None,
                Err(ApiError::Unauthorized),
            ),
            (
                Some("Bearer admin-token-0123456789 extra"),
                None,
                Err(ApiError::Unauthorized),
            ),
            (Some("Bearer "), None, Err(ApiError::Unauthorized)),
            (Some("Bearer"), None, Err(ApiError::Unauthorized)),
            (Some(""), None, Err(ApiError::Unauthorized)),
            (
                Some("admin-token-0123456789"),
                None,
                Err(ApiError::Unauthorized),
            ),
            (
                Some("Basic YWRtaW46YWRtaW4="),
                None,
                Err(ApiError::Unauthorized),
            ),
            (
                Some("Token admin-token-0123456789"),
                None,
                Err(ApiError::Unauthorized),
            ),
            (
                Some("Bearer \u{e9}\u{1F600}"),
                None,
                Err(ApiError::Unauthorized),
            ),
        ];
        for (header, der, want) in cases {
            assert_eq!(
                a.authenticate(header, der),
                want,
                "header {header:?}, cert {}",
                der.is_some()
            );
        }
    }

    #[test]
    fn an_empty_token_never_authenticates() {
        // The empty-string token given to new() must not match an empty bearer.
        assert_eq!(
            auth().authenticate(Some("Bearer  "), None),
            Err(ApiError::Unauthorized)
        );
        assert!(!format!("{:?}", auth()).contains("admin-token"));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn authorize_table() {
        let admin = user("kith-admin", &[MASTERS_GROUP]);
        let metrics = user("kith-metrics", &[METRICS_GROUP]);
        let other = user("alice", &["devs"]);
        let cases: Vec<(&User, &str, &str, bool)> = vec![
            (&admin, "delete", "/api/v1/namespaces/default/pods/x", true),
            (&admin, "get", "/metrics", true),
            (
                &admin,
                "create",
                "/apis/apps/v1/namespaces/a/deployments",
                true,
            ),
            (&metrics, "get", "/metrics", true),
            (&metrics, "GET", "/metrics", true),
            (&metrics, "get", "/livez", true),
            (&metrics, "get", "/readyz", true),
            (&metrics, "get", "/readyz?verbose", true),
            (&metrics, "get", "/readyz/ping", true),
            (&metrics, "get", "/healthz", true),
            (&metrics, "get", "/version", true),
            (&metrics, "get", "/version/", true),
            (&metrics, "list", "/metrics", false),
            (&metrics, "post", "/metrics", false),
            (&metrics, "get", "/metricsx", false),
            (&metrics, "get", "/readyz/a/b", false),
            (&metrics, "get", "/api/v1/secrets", false),
            (&metrics, "get", "/api/v1/nodes/box-2/proxy/metrics", true),
            (&metrics, "get", "/api/v1/nodes/box-2/proxy/metrics/", true),
            (&metrics, "post", "/api/v1/nodes/box-2/proxy/metrics", false),
            (
                &metrics,
                "get",
                "/api/v1/nodes/box-2/proxy/kith/v1/stats",
                false,
            ),
            (
                &metrics,
                "get",
                "/api/v1/nodes/box-2/proxy/metrics/../x",
                false,
            ),
            (&metrics, "get", "/api/v1/nodes//proxy/metrics", false),
            (&metrics, "get", "/api/v1/nodes/box-2", false),
            (
                &metrics,
                "get",
                "/api/v1/namespaces/kube-system/secrets/x",
                false,
            ),
            (&metrics, "get", "/", false),
            (&other, "get", "/metrics", false),
            (&other, "get", "/version", false),
            (&other, "list", "/api/v1/pods", false),
        ];
        for (u, verb, path, allowed) in cases {
            let got = authorize(u, verb, path);
            assert_eq!(got.is_ok(), allowed, "{} {verb} {path}: {got:?}", u.name);
        }
    }

    #[test]
    fn forbidden_message_names_user_verb_and_path() {
        let err = authorize(&user("alice", &[]), "LIST", "/api/v1/pods?watch=1").unwrap_err();
        assert_eq!(
            err,
            ApiError::Forbidden(
                "forbidden: User \"alice\" cannot list path \"/api/v1/pods\"".into()
            )
        );
        assert_eq!(err.code(), 403);
    }
}
