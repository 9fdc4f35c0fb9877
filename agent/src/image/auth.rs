//! Registry credentials from `kubernetes.io/dockerconfigjson` Secrets, and which one a pull uses.

use std::collections::BTreeMap;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::ImageError;

/// A user name and password for one registry host. oci-client uses them for HTTP Basic
/// auth, or to obtain a bearer token when the registry asks for one.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// Registry host (and port) as it appears in normalised references: `docker.io`,
    /// `127.0.0.1:5000`, `quay.io`.
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keep passwords out of logs.
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Parses the `.dockerconfigjson` key of a Secret: `{"auths": {"<server>": {"auth":
/// base64("user:pass")} | {"username": .., "password": ..}}}`. Entries with neither are
/// skipped; a malformed document or `auth` value is an error.
pub fn credentials_from_dockerconfigjson(
    bytes: &[u8],
) -> Result<Vec<RegistryCredential>, ImageError> {
    #[derive(Deserialize)]
    struct Document {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    let document: Document =
        serde_json::from_slice(bytes).map_err(|e| ImageError::DockerConfig(e.to_string()))?;
    let mut out = Vec::new();
    for (server, entry) in document.auths {
        let registry = registry_host(&server);
        if registry.is_empty() {
            return Err(ImageError::DockerConfig(format!(
                "empty registry name {server:?}"
            )));
        }
        let (username, password) = match (
            entry.auth.filter(|a| !a.is_empty()),
            entry.username,
            entry.password,
        ) {
            (Some(auth), _, _) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|e| {
                        ImageError::DockerConfig(format!("auth of {server:?} is not base64: {e}"))
                    })?;
                let decoded = String::from_utf8(decoded).map_err(|_| {
                    ImageError::DockerConfig(format!("auth of {server:?} is not utf-8"))
                })?;
                let (user, pass) = decoded.split_once(':').ok_or_else(|| {
                    ImageError::DockerConfig(format!("auth of {server:?} is not user:password"))
                })?;
                (user.to_string(), pass.to_string())
            }
            (None, Some(username), Some(password)) => (username, password),
            _ => continue,
        };
        out.push(RegistryCredential {
            registry,
            username,
            password,
        });
    }
    Ok(out)
}

/// The registry host a dockerconfigjson key names: `https://index.docker.io/v1/` →
/// `docker.io`, `http://127.0.0.1:5000` → `127.0.0.1:5000`.
fn registry_host(server: &str) -> String {
    let without_scheme = server.split_once("://").map_or(server, |(_, rest)| rest);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// The auth to use for `registry`: the first matching credential, else anonymous.
pub(crate) fn auth_for(registry: &str, creds: &[RegistryCredential]) -> RegistryAuth {
    let wanted = registry_host(registry);
    creds
        .iter()
        .find(|c| registry_host(&c.registry) == wanted)
        .map_or(RegistryAuth::Anonymous, |c| {
            RegistryAuth::Basic(c.username.clone(), c.password.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(registry: &str, username: &str, password: &str) -> RegistryCredential {
        RegistryCredential {
            registry: registry.into(),
            username: username.into(),
            password: password.into(),
        }
    }

    #[test]
    fn dockerconfigjson_parsing() {
        // base64("alice:s3cr:et") — the password may contain ':'.
        let cases: &[(&str, Result<Vec<RegistryCredential>, &str>)] = &[
            (
                r#"{"auths":{"https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcjpldA=="}}}"#,
                Ok(vec![cred("docker.io", "alice", "s3cr:et")]),
            ),
            (
                r#"{"auths":{"127.0.0.1:5000":{"username":"bob","password":"pw","auth":""}}}"#,
                Ok(vec![cred("127.0.0.1:5000", "bob", "pw")]),
            ),
            (
                r#"{"auths":{"http://Quay.io/path":{"username":"u","password":"p"},"ghcr.io":{}}}"#,
                Ok(vec![cred("quay.io", "u", "p")]),
            ),
            (r#"{}"#, Ok(vec![])),
            (r#"{"auths":{"r":{"auth":"!!!"}}}"#, Err("is not base64")),
            (
                r#"{"auths":{"r":{"auth":"bm9jb2xvbg=="}}}"#,
                Err("is not user:password"),
            ),
            (
                r#"{"auths":{"":{"username":"u","password":"p"}}}"#,
                Err("empty registry name"),
            ),
            (r#"["not","an","object"]"#, Err("invalid type")),
            (r#"{"auths":"#, Err("EOF")),
        ];
        for (json, want) in cases {
            let got = credentials_from_dockerconfigjson(json.as_bytes());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{json}"),
                (Err(err), Err(needle)) => {
                    assert!(err.to_string().contains(needle), "{json}: {err}");
                    assert_eq!(err.reason(), "ErrImagePull");
                }
                (got, want) => panic!("{json}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn credential_matching() {
        let creds = vec![
            cred("docker.io", "hub", "1"),
            cred("127.0.0.1:5000", "local", "2"),
        ];
        let cases = [
            ("docker.io", Some("hub")),
            ("index.docker.io", Some("hub")),
            ("127.0.0.1:5000", Some("local")),
            ("127.0.0.1:5001", None),
            ("quay.io", None),
        ];
        for (registry, want) in cases {
            let got = match auth_for(registry, &creds) {
                RegistryAuth::Basic(user, _) => Some(user),
                _ => None,
            };
            assert_eq!(got.as_deref(), want, "{registry}");
        }
        let shown = format!("{:?}", cred("docker.io", "hub", "hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
