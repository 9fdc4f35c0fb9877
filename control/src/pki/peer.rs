//! Credentials between the control boxes of a region: each box's peer certificate (client
//! and server at once, for the Raft port's mutual TLS), and the region bundle a new control
//! box receives when it joins with a join token.
//!
//! ```text
//!  peer cert   CN kith-control-<node id>  O kith:control-plane  SAN <peer address>
//!              issued by the region CA at every start (never written to disk)
//!  bundle      ca.crt + ca.key + tokens.csv + join-tokens.json of the region: the new box
//!              signs its own serving/admin/peer certificates with the same CA, and the
//!              region's admin and metrics tokens work on every box.
//! ```
//! A join token is the only way to the bundle, and it expires: once it has, a stolen copy
//! opens nothing (the peer port wants a certificate of the region CA, the API a credential).

use std::sync::Arc;

use kith_api::join::RegionBundle;
use rcgen::{DnType, ExtendedKeyUsagePurpose};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::files::{ensure_private_dir, read_optional, write_atomic, PRIVATE, PUBLIC};
use super::{
    cert_der_from_pem, client_verifier, issue, provider, roots, CertAndKey, Pki, PkiError, CA_CERT,
    CA_KEY, LEAF_VALIDITY, PKI_DIR, TOKENS_FILE,
};

/// The organisation of every control box's peer certificate: what the Raft port admits.
pub const CONTROL_PLANE_GROUP: &str = "kith:control-plane";

/// The TLS configurations of one box's Raft port and of its connections to the others.
pub struct PeerTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl Pki {
    /// A fresh peer certificate for node `id` reachable at `addrs` (IP addresses or DNS
    /// names), and the TLS configurations using it: the server wants a client certificate
    /// of the region CA, the client checks the server's against the CA. ALPN h2 only.
    pub fn peer_tls(&self, id: u64, addrs: &[String]) -> Result<PeerTls, PkiError> {
        let pair = self.issue_peer_cert(id, addrs)?;
        let path = self.dir.join("peer.crt");
        let cert = cert_der_from_pem(&pair.cert_pem, &path)?;
        let key = || {
            PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).map_err(|e| PkiError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })
        };
        let provider = provider();
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier(&self.ca_der, &provider, false)?)
            .with_single_cert(vec![cert.clone()], key()?)?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots(&self.ca_der)?)
            .with_client_auth_cert(vec![cert], key()?)?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    fn issue_peer_cert(&self, id: u64, addrs: &[String]) -> Result<CertAndKey, PkiError> {
        let mut params = rcgen::CertificateParams::new(addrs.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kith-control-{id}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, CONTROL_PLANE_GROUP);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        issue(&self.ca, params, jiff::Timestamp::now(), LEAF_VALIDITY)
    }

    /// The region's shared secrets for a new control box (whose join token the caller has
    /// checked). `peer_addr` is where this box's Raft port listens (the new box asks it to
    /// be added). Join tokens are not in it: they live in the replicated store.
    pub fn region_bundle(&self, peer_addr: &str) -> Result<RegionBundle, PkiError> {
        let read = |name: &str| -> Result<String, PkiError> {
            read_optional(&self.dir.join(name)).map(Option::unwrap_or_default)
        };
        tracing::info!("a control box joins the region");
        Ok(RegionBundle {
            ca_cert: self.ca_pem.clone(),
            ca_key: read(CA_KEY)?,
            tokens: read(TOKENS_FILE)?,
            peer_addr: peer_addr.to_string(),
        })
    }
}

/// Whether a verified client certificate is a control box's peer certificate.
pub fn is_control_plane(der: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, c)| {
        c.subject()
            .iter_organization()
            .any(|a| a.as_str().is_ok_and(|v| v == CONTROL_PLANE_GROUP))
    })
}

/// Whether `data_dir` already holds a region's credentials (a CA).
pub fn has_credentials(data_dir: &std::path::Path) -> bool {
    data_dir.join(PKI_DIR).join(CA_CERT).exists()
}

/// Write a region bundle under `data_dir/pki` (before the first `Pki::load_or_create`),
/// keys and tokens private. The CA certificate is written last: its presence is what
/// [`has_credentials`] looks for, so a crash half-way leaves a directory that joins again.
pub fn install_region_bundle(
    data_dir: &std::path::Path,
    bundle: &RegionBundle,
) -> Result<(), PkiError> {
    let dir = data_dir.join(PKI_DIR);
    ensure_private_dir(&dir)?;
    // Refuse a bundle whose key is not its CA's: better now than at the first signature.
    let der = CertificateDer::from_pem_slice(bundle.ca_cert.as_bytes()).map_err(|e| {
        PkiError::Corrupt {
            path: dir.join(CA_CERT),
            why: e.to_string(),
        }
    })?;
    let key = rcgen::KeyPair::from_pem(&bundle.ca_key).map_err(|e| PkiError::Corrupt {
        path: dir.join(CA_KEY),
        why: e.to_string(),
    })?;
    if !super::key_matches(&der, &key) {
        return Err(PkiError::CaKeyMismatch(dir.join(CA_KEY)));
    }
    write_atomic(&dir.join(CA_KEY), bundle.ca_key.as_bytes(), PRIVATE)?;
    write_atomic(&dir.join(TOKENS_FILE), bundle.tokens.as_bytes(), PRIVATE)?;
    write_atomic(&dir.join(CA_CERT), bundle.ca_cert.as_bytes(), PUBLIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_box_shares_the_ca_and_tokens_and_its_peer_cert_is_recognised() {
        let first = tempfile::TempDir::new().expect("tmp");
        let pki = Pki::load_or_create(first.path(), &[]).expect("pki");
        let bundle = pki.region_bundle("10.0.0.1:7443").expect("bundle");
        assert_eq!(bundle.peer_addr, "10.0.0.1:7443");

        let second = tempfile::TempDir::new().expect("tmp");
        assert!(!has_credentials(second.path()));
        install_region_bundle(second.path(), &bundle).expect("install");
        assert!(has_credentials(second.path()));
        let joined = Pki::load_or_create(second.path(), &["10.0.0.2".into()]).expect("pki 2");
        assert_eq!(joined.ca_pem(), pki.ca_pem(), "one CA for the region");
        assert_eq!(joined.admin_token(), pki.admin_token(), "one admin token");

        let pair = joined
            .issue_peer_cert(7, &["10.0.0.2".into()])
            .expect("peer cert");
        let der = CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).expect("der");
        assert!(is_control_plane(&der));
        let admin =
            CertificateDer::from_pem_slice(joined.admin_cert().cert_pem.as_bytes()).expect("der");
        assert!(!is_control_plane(&admin), "an admin is not a control box");
        joined
            .peer_tls(7, &["10.0.0.2".into()])
            .expect("peer tls configs");
    }

    #[test]
    fn a_bundle_with_a_foreign_key_is_refused() {
        let a = tempfile::TempDir::new().expect("tmp");
        let b = tempfile::TempDir::new().expect("tmp");
        let pa = Pki::load_or_create(a.path(), &[]).expect("pki a");
        let pb = Pki::load_or_create(b.path(), &[]).expect("pki b");
        let mut bundle = pa.region_bundle("x:1").expect("bundle");
        bundle.ca_key = std::fs::read_to_string(b.path().join("pki/ca.key")).expect("key b");
        let c = tempfile::TempDir::new().expect("tmp");
        assert!(matches!(
            install_region_bundle(c.path(), &bundle),
            Err(PkiError::CaKeyMismatch(_))
        ));
        assert!(!has_credentials(c.path()));
        drop(pb);
    }
}
