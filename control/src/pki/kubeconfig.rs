//! The admin kubeconfig: one cluster `kith`, two users (client certificate, and bearer
//! token), two contexts; `kith` (the certificate) is current.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;

use super::{PkiError, ADMIN_USER, CLUSTER_NAME};

/// Name of the user (and context) that authenticates with the admin bearer token.
pub const TOKEN_USER: &str = "kith-admin-token";

/// Kubeconfig keys mix styles: `apiVersion` but `current-context`.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    clusters: Vec<Named<'a, Cluster<'a>>>,
    users: Vec<Named<'a, UserEntry>>,
    contexts: Vec<Named<'a, Context<'a>>>,
    current_context: &'a str,
    preferences: Preferences,
}

#[derive(Serialize)]
struct Named<'a, T> {
    name: &'a str,
    #[serde(flatten)]
    value: T,
}

#[derive(Serialize)]
struct Cluster<'a> {
    cluster: ClusterBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterBody<'a> {
    server: &'a str,
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct UserEntry {
    user: UserBody,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

#[derive(Serialize)]
struct Context<'a> {
    context: ContextBody<'a>,
}

#[derive(Serialize)]
struct ContextBody<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct Preferences {}

/// What goes into an admin kubeconfig.
pub(crate) struct AdminCredentials<'a> {
    pub(crate) server_url: &'a str,
    pub(crate) ca_pem: &'a str,
    pub(crate) cert_pem: &'a str,
    pub(crate) key_pem: &'a str,
    pub(crate) token: &'a str,
}

pub(crate) fn render(c: &AdminCredentials<'_>) -> Result<String, PkiError> {
    let context = |name, user| Named {
        name,
        value: Context {
            context: ContextBody {
                cluster: CLUSTER_NAME,
                user,
            },
        },
    };
    let config = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: CLUSTER_NAME,
            value: Cluster {
                cluster: ClusterBody {
                    server: c.server_url,
                    certificate_authority_data: STANDARD.encode(c.ca_pem),
                },
            },
        }],
        users: vec![
            Named {
                name: ADMIN_USER,
                value: UserEntry {
                    user: UserBody {
                        client_certificate_data: Some(STANDARD.encode(c.cert_pem)),
                        client_key_data: Some(STANDARD.encode(c.key_pem)),
                        token: None,
                    },
                },
            },
            Named {
                name: TOKEN_USER,
                value: UserEntry {
                    user: UserBody {
                        client_certificate_data: None,
                        client_key_data: None,
                        token: Some(c.token.to_string()),
                    },
                },
            },
        ],
        contexts: vec![
            context(CLUSTER_NAME, ADMIN_USER),
            context(TOKEN_USER, TOKEN_USER),
        ],
        current_context: CLUSTER_NAME,
        preferences: Preferences {},
    };
    Ok(serde_yaml::to_string(&config)?)
}
