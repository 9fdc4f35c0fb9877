//! Joining a cluster with a join token: learn the CA (pinned by the token), trade the token
//! for a node certificate, write the agent's kubeconfig.
//!
//! ```text
//!  token  K10<sha256(CA)>::<id>.<secret>
//!  GET  /cacerts            (TLS unverified)  → CA; sha256 must equal the token's hash
//!  POST /kith/v1/join       (TLS verified by that CA, Bearer token) → cert + key
//!  → <data-dir>/kubeconfig  (every server, CA, node client certificate; mode 0600)
//! ```
//! With several servers (boxes of one region), the join goes through the first that
//! answers, and the kubeconfig keeps them all for [`crate::failover`].

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
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
    #[error("no server to join through")]
    NoServer,
    #[error("the kubeconfig {path}: {why}")]
    Kubeconfig { path: String, why: String },
    #[error(transparent)]
    Client(#[from] crate::failover::FailoverError),
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

/// Whether a failed join through one server is worth trying through the next: yes when
/// that server could not be reached or is not of this cluster, no when the token itself
/// was refused (every box of the region would refuse it) or a local write failed.
pub fn try_next_server(e: &JoinError) -> bool {
    match e {
        JoinError::BadServer(_) | JoinError::CaMismatch { .. } | JoinError::Request { .. } => true,
        JoinError::MalformedToken
        | JoinError::Refused
        | JoinError::Write { .. }
        | JoinError::Kubeconfig { .. }
        | JoinError::NoServer
        | JoinError::Client(_) => false,
    }
}

/// Join through the first of `servers` that answers, as `node_name` with `token`; write a
/// kubeconfig naming every server to `kubeconfig`. Returns the server joined through.
///
/// With `addresses` (where the API server reaches this node), the node also gets a serving
/// certificate for its port ([`crate::node_server`]), written next to the kubeconfig.
pub async fn bootstrap(
    servers: &[String],
    token: &str,
    node_name: &str,
    addresses: &[IpAddr],
    kubeconfig: &Path,
) -> Result<String, JoinError> {
    token_ca_hash(token)?;
    let mut last = JoinError::NoServer;
    let req = JoinRequest {
        node_name: node_name.to_string(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
    };
    for server in servers {
        match join_one(server, token, &req).await {
            Ok(reply) => {
                let dir = kubeconfig.parent().unwrap_or(Path::new("."));
                if let (Some(cert), Some(key)) = (&reply.serving_cert, &reply.serving_key) {
                    write_private(&dir.join(crate::node_server::SERVING_KEY), key)?;
                    write_private(&dir.join(crate::node_server::SERVING_CERT), cert)?;
                }
                write_kubeconfig(kubeconfig, servers, node_name, &reply)?;
                return Ok(server.clone());
            }
            Err(e) if try_next_server(&e) => {
                tracing::warn!(%server, error = %e, "joining through the next server");
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
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

/// One join attempt through `server`.
async fn join_one(server: &str, token: &str, req: &JoinRequest) -> Result<JoinReply, JoinError> {
    let request_err = |e: kube::Error| JoinError::Request {
        server: server.to_string(),
        message: e.to_string(),
    };
    let http_err = |e: http::Error| JoinError::Request {
        server: server.to_string(),
        message: e.to_string(),
    };
    let der = fetch_pinned_ca(server, token).await?;
    let body = serde_json::to_vec(req).expect("a join request serializes");
    let post = http::Request::post("/kith/v1/join")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(http_err)?;
    match client(server, Some(der))?.request(post).await {
        Ok(r) => Ok(r),
        Err(kube::Error::Api(s)) if s.code == 401 => Err(JoinError::Refused),
        Err(e) => Err(request_err(e)),
    }
}

/// The local address this box reaches `server` (an https URL) from: the address the
/// control plane can reach it at when no `--node-ip` says otherwise. No packet is sent.
pub fn local_ip_towards(server: &str) -> Option<IpAddr> {
    let uri = server.parse::<http::Uri>().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let remote = (host, port).to_socket_addrs().ok()?.next()?;
    let any: IpAddr = if remote.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((any, 0)).ok()?;
    socket.connect(remote).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// The name of the kubeconfig cluster and context of the `i`th server: `kith` for the
/// first (what kubectl uses by default), `kith-<i>` for the others.
fn entry_name(i: usize) -> String {
    if i == 0 {
        "kith".to_string()
    } else {
        format!("kith-{i}")
    }
}

/// A kubeconfig with the node's credentials and one cluster and context per server (in
/// order of preference), written atomically with mode 0600.
pub fn write_kubeconfig(
    path: &Path,
    servers: &[String],
    node_name: &str,
    reply: &JoinReply,
) -> Result<(), JoinError> {
    use std::fmt::Write as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user = kith_api::join::node_user(node_name);
    let mut clusters = String::new();
    let mut contexts = String::new();
    for (i, server) in servers.iter().enumerate() {
        let name = entry_name(i);
        let _ = write!(
            clusters,
            "- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n",
            ca = b64(&reply.ca)
        );
        let _ = write!(
            contexts,
            "- name: {name}\n  context:\n    cluster: {name}\n    user: {user}\n"
        );
    }
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}users:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n{contexts}current-context: kith\n",
        cert = b64(&reply.cert),
        key = b64(&reply.key),
    );
    write_private(path, &text)
}

/// Writes `text` to `path` atomically with mode 0600.
fn write_private(path: &Path, text: &str) -> Result<(), JoinError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
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

/// What an agent's kubeconfig holds: its servers (in order of preference) and its
/// credentials (PEM; `ca` is the cluster CA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKubeconfig {
    pub node_name: String,
    pub servers: Vec<String>,
    pub credentials: JoinReply,
}

/// Read back a kubeconfig written by [`write_kubeconfig`].
pub fn read_kubeconfig(path: &Path) -> Result<NodeKubeconfig, JoinError> {
    let bad = |why: String| JoinError::Kubeconfig {
        path: path.display().to_string(),
        why,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let decode = |what: &str, data: Option<&str>| {
        let data = data.ok_or_else(|| bad(format!("no {what}")))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| bad(format!("{what}: {e}")))?;
        String::from_utf8(bytes).map_err(|e| bad(format!("{what}: {e}")))
    };
    let mut servers = Vec::new();
    let mut ca = None;
    for named in &kc.clusters {
        let Some(cluster) = &named.cluster else {
            continue;
        };
        if let Some(server) = &cluster.server {
            servers.push(server.clone());
        }
        if ca.is_none() {
            ca = Some(decode(
                "certificate-authority-data",
                cluster.certificate_authority_data.as_deref(),
            )?);
        }
    }
    let named = kc.auth_infos.first().ok_or_else(|| bad("no user".into()))?;
    let node_name = named
        .name
        .strip_prefix("system:node:")
        .ok_or_else(|| bad(format!("user {:?} is not a node", named.name)))?
        .to_string();
    let user = named
        .auth_info
        .as_ref()
        .ok_or_else(|| bad("no user credentials".into()))?;
    let cert = decode(
        "client-certificate-data",
        user.client_certificate_data.as_deref(),
    )?;
    // The key is a SecretString; kube serializes it in clear, which is the way to it
    // without a dependency on `secrecy`.
    let user_json = serde_json::to_value(user).map_err(|e| bad(e.to_string()))?;
    let key = decode(
        "client-key-data",
        user_json.get("client-key-data").and_then(|v| v.as_str()),
    )?;
    if servers.is_empty() {
        return Err(bad("no server".into()));
    }
    Ok(NodeKubeconfig {
        node_name,
        servers,
        credentials: JoinReply {
            ca: ca.unwrap_or_default(),
            cert,
            key,
            ..Default::default()
        },
    })
}

/// The servers an already joined agent uses: those given on its command line (they
/// replace the stored list), else the stored ones.
pub fn servers_to_use(given: &[String], stored: &[String]) -> Vec<String> {
    let from = if given.is_empty() { stored } else { given };
    let mut out: Vec<String> = Vec::new();
    for s in from {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// Make the kubeconfig at `path` name the servers [`servers_to_use`] picks (rewritten only
/// when that changes it); returns them.
pub fn update_servers(path: &Path, given: &[String]) -> Result<Vec<String>, JoinError> {
    let kc = read_kubeconfig(path)?;
    let servers = servers_to_use(given, &kc.servers);
    if servers != kc.servers {
        write_kubeconfig(path, &servers, &kc.node_name, &kc.credentials)?;
    }
    Ok(servers)
}

/// A client over every server of the kubeconfig at `path`, failing over between them
/// ([`crate::failover`]).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, JoinError> {
    let bad = |why: String| JoinError::Kubeconfig {
        path: path.display().to_string(),
        why,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let mut configs = Vec::new();
    for ctx in &kc.contexts {
        let opts = kube::config::KubeConfigOptions {
            context: Some(ctx.name.clone()),
            ..Default::default()
        };
        let cfg = kube::Config::from_custom_kubeconfig(kc.clone(), &opts)
            .await
            .map_err(|e| bad(format!("context {}: {e}", ctx.name)))?;
        configs.push(cfg);
    }
    Ok(crate::failover::client(configs)?)
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

    #[test]
    fn which_failures_move_to_the_next_server() {
        let request = JoinError::Request {
            server: "https://a".into(),
            message: "connection refused".into(),
        };
        let cases = [
            (request, true),
            (JoinError::BadServer("::".into()), true),
            (
                JoinError::CaMismatch {
                    server: "https://a".into(),
                },
                true,
            ),
            (JoinError::Refused, false),
            (JoinError::MalformedToken, false),
            (
                JoinError::Write {
                    path: "k".into(),
                    source: std::io::Error::other("disk full"),
                },
                false,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(try_next_server(&e), want, "{e}");
        }
    }

    #[test]
    fn servers_table() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            (v(&[]), v(&["https://a"]), v(&["https://a"])),
            (v(&["https://b"]), v(&["https://a"]), v(&["https://b"])),
            (
                v(&["https://b", "https://a", "https://b"]),
                v(&["https://a"]),
                v(&["https://b", "https://a"]),
            ),
            (
                v(&[]),
                v(&["https://a", "https://c"]),
                v(&["https://a", "https://c"]),
            ),
        ];
        for (given, stored, want) in cases {
            assert_eq!(
                servers_to_use(&given, &stored),
                want,
                "{given:?} {stored:?}"
            );
        }
    }

    #[tokio::test]
    async fn kubeconfig_keeps_every_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        let reply = JoinReply {
            ca: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
            cert: "-----BEGIN CERTIFICATE-----\nNODE\n-----END CERTIFICATE-----\n".into(),
            key: "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n".into(),
            ..Default::default()
        };
        let servers = vec![
            "https://10.0.0.1:6443".to_string(),
            "https://10.0.0.2:6443".to_string(),
        ];
        write_kubeconfig(&path, &servers, "n1", &reply).unwrap();
        let back = read_kubeconfig(&path).unwrap();
        assert_eq!(back.node_name, "n1");
        assert_eq!(back.servers, servers);
        assert_eq!(back.credentials, reply);

        // Restarted with no --server: the stored list stays as it is.
        assert_eq!(update_servers(&path, &[]).unwrap(), servers);
        // Restarted with other servers: they replace the list, credentials kept.
        let other = vec!["https://10.0.0.3:6443".to_string()];
        assert_eq!(update_servers(&path, &other).unwrap(), other);
        let back = read_kubeconfig(&path).unwrap();
        assert_eq!(back.servers, other);
        assert_eq!(back.credentials, reply);
    }

    #[test]
    fn local_ip_of_a_loopback_server_is_loopback() {
        let ip = local_ip_towards("https://127.0.0.1:6443").unwrap();
        assert_eq!(ip.to_string(), "127.0.0.1");
        assert_eq!(local_ip_towards("not a url"), None);
    }
}
