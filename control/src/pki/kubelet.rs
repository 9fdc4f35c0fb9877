//! Certificates for the hop from the API server to the agents (see
//! [`kith_api::remote_node`]): each node's HTTPS serving certificate, issued at join for
//! the addresses it names, and the API server's client identity toward the nodes.
//!
//! ```text
//!  join {"nodeName": "n1", "addresses": ["192.0.2.7"]}
//!     → serving cert  CN system:node:n1  O system:nodes  SAN 192.0.2.7, n1   (server auth)
//!  API server start
//!     → client cert   CN kith-apiserver                                     (client auth)
//! ```
//! Neither is persisted by the control plane: the node keeps its own, and the API server
//! makes a fresh identity at every start.

use jiff::Timestamp;
use kith_api::join::{JoinReply, JoinRequest, APISERVER_USER, NODES_GROUP};
use kith_api::remote_node::{ClientIdentity, LocalParts, RemoteNodes};
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose};

use super::{client_params, issue, CertAndKey, Pki, PkiError, LEAF_VALIDITY};

impl Pki {
    /// A serving certificate for node `node` reached at `addresses` (IP addresses; the
    /// node's name is added as a DNS name when it is one).
    pub fn issue_node_serving(
        &self,
        node: &str,
        addresses: &[String],
    ) -> Result<CertAndKey, PkiError> {
        let mut names = addresses.to_vec();
        names.push(node.to_string());
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, kith_api::join::node_user(node));
        params
            .distinguished_name
            .push(DnType::OrganizationName, NODES_GROUP);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        issue(&self.ca, params, Timestamp::now(), LEAF_VALIDITY)
    }

    /// The API server's credentials toward nodes: the CA and a new client certificate
    /// with CN [`APISERVER_USER`], the only identity a node's port serves.
    pub fn apiserver_identity(&self) -> Result<ClientIdentity, PkiError> {
        let issued = issue(
            &self.ca,
            client_params(APISERVER_USER, None),
            Timestamp::now(),
            LEAF_VALIDITY,
        )?;
        Ok(ClientIdentity {
            ca_pem: self.ca_pem.clone(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    }
}

/// How the API server reaches every node's agent ([`RemoteNodes`]): `local` in-process,
/// the others over HTTPS with a fresh [`Pki::apiserver_identity`]; `client` reads Nodes.
pub fn remote_nodes(
    pki: &Pki,
    client: kube::Client,
    local: Option<LocalParts>,
) -> Result<std::sync::Arc<RemoteNodes>, PkiError> {
    RemoteNodes::new(client, pki.apiserver_identity()?, local)
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))
}

/// What a node that joined gets: its client credentials and, when it named the
/// addresses it is reached at, a serving certificate for them.
pub(super) fn join_reply(
    pki: &Pki,
    req: &JoinRequest,
    client: CertAndKey,
) -> Result<JoinReply, PkiError> {
    let serving = if req.addresses.is_empty() {
        None
    } else {
        Some(pki.issue_node_serving(&req.node_name, &req.addresses)?)
    };
    Ok(JoinReply {
        ca: pki.ca_pem.clone(),
        cert: client.cert_pem,
        key: client.key_pem,
        serving_cert: serving.as_ref().map(|s| s.cert_pem.clone()),
        serving_key: serving.map(|s| s.key_pem),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn serving_certs_name_the_node_and_its_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let req = JoinRequest {
            node_name: "edge-1".into(),
            addresses: vec!["192.0.2.7".into(), "2001:db8::7".into()],
        };
        let client = pki
            .issue_client_cert(
                "system:node:edge-1",
                Some(NODES_GROUP),
                LEAF_VALIDITY.unsigned_abs(),
            )
            .unwrap();
        let reply = join_reply(&pki, &req, client).unwrap();
        let serving = der(reply.serving_cert.as_deref().unwrap());
        let verifier =
            super::super::server_verifier(pki.ca_der(), &super::super::provider()).unwrap();
        let now = UnixTime::now();
        for (name, ok) in [
            ("192.0.2.7", true),
            ("2001:db8::7", true),
            ("edge-1", true),
            ("192.0.2.8", false),
            ("edge-2", false),
        ] {
            let sn = ServerName::try_from(name).unwrap();
            assert_eq!(
                verifier
                    .verify_server_cert(&serving, &[], &sn, &[], now)
                    .is_ok(),
                ok,
                "{name}"
            );
        }
        // Without addresses: the reply is what it always was.
        let old = JoinRequest {
            node_name: "edge-1".into(),
            addresses: vec![],
        };
        let client = pki
            .issue_client_cert("x", None, LEAF_VALIDITY.unsigned_abs())
            .unwrap();
        let reply = join_reply(&pki, &old, client).unwrap();
        assert_eq!((reply.serving_cert, reply.serving_key), (None, None));
    }

    #[test]
    fn apiserver_identity_is_a_client_of_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let id = pki.apiserver_identity().unwrap();
        assert_eq!(id.ca_pem, pki.ca_pem());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = super::super::client_verifier(pki.ca_der(), &provider, false).unwrap();
        let cert = der(&id.cert_pem);
        assert!(verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .is_ok());
        let user = kith_api::auth::Authenticator::new(Vec::new())
            .authenticate(None, Some(cert.as_ref()))
            .unwrap();
        assert_eq!(user.name, APISERVER_USER);
    }
}
