//! Joining a cluster with a join token: learn the CA (pinned by the token), trade the token
//! for a node certificate, write the agent's kubeconfig.
//!
//! ```text
//!  token  K10<sha256(CA)>::<id>.<secret>
//!  GET  /cacerts            (TLS unverified)  → CA; sha256 must equal the token's hash
//!  POST /kith/v1/join       (TLS verified by that CA, Bearer token) → cert + key
//!  → <data-dir>/kubeconfig  (server, CA, node client certificate; mode 0600)
//! ```

use std::path::Path;

use base64::Engine;
use kith_api::join::{JoinReply, JoinRequest};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("malformed join token (expected K10<ca hash>::<id>.<secret>)")]
    MalformedToken,
    #[error("invalid server URL {0:?}")]
    BadServer(String),
    #[error("the server at {server} presents a CA that does not match the join token: refusing to trust it")]
    CaMismatch { server: String },
    #[error("the server refused the join token (expired, unknown, or of another cluster)")]
    Refused,
    #[error("talking to {server}: {message}")]
    Request { server: String, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The CA hash a join token pins.
pub fn token_ca_hash(token: &str) -> Result<&str, JoinError> {
    let rest = token.strip_prefix("K10").ok_or(JoinError::MalformedToken)?;
    let (hash, secret) = rest.split_once("::").ok_or(JoinError::MalformedToken)?;
    let valid_hash = hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit());
    if !valid_hash || !secret.contains('.') {
        return Err(JoinError::MalformedToken);
    }
    Ok(hash)
}

/// The DER of the first certificate of a PEM text.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()
        .filter(|d| !d.is_empty())
}

fn client(server: &str, ca_der: Option<Vec<u8>>) -> Result<kube::Client, JoinError> {
    let url = server
        .parse::<http::Uri>()
        .map_err(|_| JoinError::BadServer(server.to_string()))?;
    let mut cfg = kube::Config::new(url);
    match ca_der {
        Some(der) => cfg.root_cert = Some(vec![der]),
        // Only to fetch the CA, which is then checked against the token's hash.
        None => cfg.accept_invalid_certs = true,
    }
    kube::Client::try_from(cfg).map_err(|e| JoinError::Request {
        server: server.to_string(),
        message: e.to_string(),
    })
}

/// The CA certificate (DER) `server` presents at `/cacerts`, if it is the one `token`
/// pins; fetched without verifying TLS, which the pin replaces.
pub async fn fetch_pinned_ca(server: &str, token: &str) -> Result<Vec<u8>, JoinError> {
    let want = token_ca_hash(token)?.to_ascii_lowercase();
    let get = http::Request::get("/cacerts")
        .body(Vec::new())
        .map_err(|e| JoinError::Request {
            server: server.to_string(),
            message: e.to_string(),
        })?;
    let ca_pem = client(server, None)?
        .request_text(get)
        .await
        .map_err(|e| JoinError::Request {
            server: server.to_string(),
            message: e.to_string(),
        })?;
    let der = pem_to_der(&ca_pem).ok_or_else(|| JoinError::CaMismatch {
        server: server.to_string(),
    })?;
    if hex::encode(Sha256::digest(&der)) != want {
        return Err(JoinError::CaMismatch {
            server: server.to_string(),
        });
    }
    Ok(der)
}

/// Join `server` as `node_name` with `token`; write a kubeconfig for the node to
/// `kubeconfig`.
pub async fn bootstrap(
    server: &str,
    token: &str,
    node_name: &str,
    kubeconfig: &Path,
) -> Result<(), JoinError> {
    let request_err = |e: kube::Error| JoinError::Request {
        server: server.to_string(),
        message: e.to_string(),
    };
    let http_err = |e: http::Error| JoinError::Request {
        server: server.to_string(),
        message: e.to_string(),
    };
    let der = fetch_pinned_ca(server, token).await?;
    let body = serde_json::to_vec(&JoinRequest {
        node_name: node_name.to_string(),
    })
    .expect("a join request serializes");
    let post = http::Request::post("/kith/v1/join")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(http_err)?;
    let reply: JoinReply = match client(server, Some(der))?.request(post).await {
        Ok(r) => r,
        Err(kube::Error::Api(s)) if s.code == 401 => return Err(JoinError::Refused),
        Err(e) => return Err(request_err(e)),
    };
    write_kubeconfig(kubeconfig, server, node_name, &reply)
}

/// A kubeconfig with the node's credentials, written atomically with mode 0600.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    node_name: &str,
    reply: &JoinReply,
) -> Result<(), JoinError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kith\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: kith\n  context:\n    cluster: kith\n    user: {user}\ncurrent-context: kith\n",
        ca = b64(&reply.ca),
        user = kith_api::join::node_user(node_name),
        cert = b64(&reply.cert),
        key = b64(&reply.key),
    );
    let write_err = |source| JoinError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    f.write_all(text.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_table() {
        let hash = "a".repeat(64);
        let good = format!("K10{hash}::abcdef.0123456789abcdef");
        assert_eq!(token_ca_hash(&good).unwrap(), hash);
        for bad in [
            "".to_string(),
            "abcdef.0123".to_string(),
            format!("K10{}::abc.def", "a".repeat(10)),
            format!("K10{hash}::nodot"),
            format!("K11{hash}::a.b"),
            format!("K10{}::a.b", "z".repeat(64)),
        ] {
            assert!(token_ca_hash(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pem_roundtrip() {
        let der = b"not really a certificate".to_vec();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        assert_eq!(pem_to_der(&pem), Some(der));
        assert_eq!(pem_to_der("garbage"), None);
    }
}
