//! How a new box joins: the two non-Kubernetes endpoints an agent uses before it has
//! credentials of its own (the shape follows k3s).
//!
//! ```text
//!  GET  /cacerts          (anyone)             → the cluster CA, PEM; the joiner checks its
//!                                                 SHA-256 against the hash in its join token
//!  POST /kith/v1/join     Bearer <join token>  → {"ca","cert","key"}: a client certificate
//!       {"nodeName": "n1"}                       for system:node:n1 in group system:nodes
//!       {"nodeName": "n1",                     → also {"servingCert","servingKey"}: the
//!        "addresses": ["192.0.2.7"]}              node's HTTPS serving certificate for
//!                                                 those addresses and its name
//!  POST /kith/v1/join/control   Bearer <join token>  → a [`RegionBundle`]: what a new
//!                                                      control box of the region needs
//! ```
//! The two new fields are optional both ways: an old agent gets what it always got.
//! The control plane implements [`Joiner`] (it owns the CA, and reads the join tokens
//! from the store, where every box of a region sees the same ones).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// What a join request asks for.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    pub node_name: String,
    /// The IP addresses the API server reaches the node at: when given,
    /// the reply carries a serving certificate for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// The credentials a joined node gets (PEM).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JoinReply {
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// The node's serving certificate, when the request named addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_key: Option<String>,
}

/// The identity (client certificate CN) the API server presents to nodes; a node's port
/// serves no one else.
pub const APISERVER_USER: &str = "kith-apiserver";

/// At most this many addresses in a serving certificate.
pub const MAX_ADDRESSES: usize = 16;

/// The group every node's certificate carries, as in Kubernetes.
pub const NODES_GROUP: &str = "system:nodes";

/// The user name of node `name`.
pub fn node_user(name: &str) -> String {
    format!("system:node:{name}")
}

/// Issues node credentials to holders of a valid join token. Checking a token reads the
/// store, hence the futures.
pub trait Joiner: Send + Sync + 'static {
    /// The cluster CA certificate, PEM.
    fn ca_pem(&self) -> String;
    /// Credentials for `req.node_name` if `token` is a live join token; `Unauthorized`
    /// otherwise.
    fn join<'a>(
        &'a self,
        token: &'a str,
        req: &'a JoinRequest,
    ) -> BoxFuture<'a, Result<JoinReply, ApiError>>;
    /// The region's shared credentials for a new control box if `token` is a live join
    /// token; `NoRoute` where control boxes cannot join (a one-box `kith up`).
    fn join_control<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<RegionBundle, ApiError>>;
}

/// What a control box joining a region receives (PEM and file texts).
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegionBundle {
    pub ca_cert: String,
    pub ca_key: String,
    /// The bearer tokens file (admin and metrics tokens are the region's, not a box's).
    pub tokens: String,
    /// The Raft port of the box that answered: the new box asks it to be added.
    pub peer_addr: String,
}

/// Leaves the secrets out.
impl std::fmt::Debug for RegionBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionBundle")
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

/// The body of a join request, checked: a JSON object naming a valid node.
pub fn parse_request(body: &[u8]) -> Result<JoinRequest, ApiError> {
    let req: JoinRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid join request: {e}")))?;
    let name = &req.node_name;
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(ApiError::BadRequest(format!(
            "invalid node name {name:?}: must be a lowercase RFC 1123 subdomain"
        )));
    }
    if req.addresses.len() > MAX_ADDRESSES {
        return Err(ApiError::BadRequest(format!(
            "too many addresses ({}, at most {MAX_ADDRESSES})",
            req.addresses.len()
        )));
    }
    if let Some(bad) = req
        .addresses
        .iter()
        .find(|a| a.parse::<std::net::IpAddr>().is_err())
    {
        return Err(ApiError::BadRequest(format!(
            "invalid address {bad:?}: must be an IP address"
        )));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_table() {
        let cases: Vec<(&str, Result<&str, &str>)> = vec![
            (r#"{"nodeName":"n1"}"#, Ok("n1")),
            (r#"{"nodeName":"edge-7.region-a"}"#, Ok("edge-7.region-a")),
            (r#"{"nodeName":"Bad_Name"}"#, Err("invalid node name")),
            (r#"{"nodeName":""}"#, Err("invalid node name")),
            (r#"{"nodeName":"-x"}"#, Err("invalid node name")),
            (r#"{"nodeName":"n1","admin":true}"#, Err("unknown field")),
            ("not json", Err("invalid join request")),
            (
                r#"{"nodeName":"n1","addresses":["192.0.2.7","::1"]}"#,
                Ok("n1"),
            ),
            (
                r#"{"nodeName":"n1","addresses":["evil.example"]}"#,
                Err("invalid address"),
            ),
        ];
        for (body, want) in cases {
            match (parse_request(body.as_bytes()), want) {
                (Ok(r), Ok(name)) => assert_eq!(r.node_name, name),
                (Err(ApiError::BadRequest(m)), Err(w)) => assert!(m.contains(w), "{body}: {m}"),
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn old_and_new_replies_read_both_ways() {
        let old = r#"{"ca":"C","cert":"N","key":"K"}"#;
        let r: JoinReply = serde_json::from_str(old).unwrap();
        assert_eq!(r.serving_cert, None);
        // What an old agent reads from a new server: the old fields, the new ones ignored.
        let new = JoinReply {
            serving_cert: Some("S".into()),
            serving_key: Some("SK".into()),
            ..r.clone()
        };
        let v = serde_json::to_value(&new).unwrap();
        assert_eq!(v["servingCert"], "S");
        assert_eq!(v["ca"], "C");
        // An old request still parses; a request without addresses serializes as before.
        let req = JoinRequest {
            node_name: "n1".into(),
            addresses: vec![],
        };
        assert_eq!(serde_json::to_string(&req).unwrap(), r#"{"nodeName":"n1"}"#);
    }
}
