//! The credentials of a kith cluster: its CA, the API server's serving certificate, the
//! admin identity, bearer tokens and join tokens. Made on first start, reused after.
//!
//! ```text
//!   DATA_DIR/pki/            0700
//!     ca.crt   ca.key        cluster CA "kith-ca" (ECDSA P-256): made once, never replaced
//!     server.crt server.key  serving cert; re-issued when a wanted SAN is missing, when
//!                            it is near expiry or not from this CA, or its key is not its own
//!     admin.crt admin.key    client cert CN=kith-admin O=system:masters (same renewal)
//!     tokens.csv             bearer tokens, kube-apiserver --token-auth-file format
//!     join-tokens.json       join tokens: id, sha256(secret), expiry     (see [`join`])
//! ```
//!
//! Keys and tokens are 0600, certificates 0644; every file is written whole
//! (temp + rename). Key files are written before their certificate, so a crash between
//! the two leaves a mismatch that the next start notices and repairs.

mod files;
pub mod join;
mod kubeconfig;
mod kubelet;
pub mod peer;
pub use kubelet::remote_nodes;
mod static_tokens;

use std::fmt;
use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use kith_api::auth::{User, MASTERS_GROUP};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use files::{ensure_private_dir, read_optional, write_atomic, PRIVATE, PUBLIC};
pub use join::{create_join_token_in, parse_ttl, JoinToken};
pub use kubeconfig::TOKEN_USER as KUBECONFIG_TOKEN_USER;

/// What `kith token create --metrics --data-dir DIR` prints: the read-only bearer token
/// of `kith-metrics` (group `kith:metrics-readers`: `/metrics` and health only), read from
/// the cluster's tokens file without starting (or needing) a server.
pub fn metrics_token_in(data_dir: &Path) -> Result<String, PkiError> {
    let path = data_dir.join(PKI_DIR).join(TOKENS_FILE);
    let text =
        read_optional(&path)?.ok_or_else(|| PkiError::NotInitialized(data_dir.to_path_buf()))?;
    static_tokens::parse(&text, &path)?
        .into_iter()
        .find(|t| t.user.name == METRICS_USER)
        .map(|t| t.token)
        .ok_or_else(|| PkiError::Corrupt {
            path,
            why: format!("no token for {METRICS_USER}; `kith up` adds one when it starts"),
        })
}

/// User of the admin client certificate and admin token.
pub const ADMIN_USER: &str = "kith-admin";
/// User of the metrics token (group [`kith_api::auth::METRICS_GROUP`]).
pub const METRICS_USER: &str = "kith-metrics";
/// Common name of the cluster CA.
pub const CA_COMMON_NAME: &str = "kith-ca";
/// Cluster (and default context) name in kubeconfigs.
pub const CLUSTER_NAME: &str = "kith";

const PKI_DIR: &str = "pki";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TOKENS_FILE: &str = "tokens.csv";
const SERVER_CN: &str = "kith-apiserver";

const CA_VALIDITY: SignedDuration = SignedDuration::from_hours(10 * 365 * 24);
const LEAF_VALIDITY: SignedDuration = SignedDuration::from_hours(365 * 24);
/// Leaf certificates this close to expiry are re-issued at start.
const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(30 * 24);
/// Boxes' clocks disagree; a certificate valid from "now" would be refused by a peer a
/// few minutes behind.
const BACKDATE: SignedDuration = SignedDuration::from_hours(1);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("{0} exists but its key {1} is missing; refusing to replace the cluster CA")]
    CaKeyMissing(PathBuf, PathBuf),
    #[error("{0} is not the key of the CA certificate beside it")]
    CaKeyMismatch(PathBuf),
    #[error("no cluster credentials in {0}; start the control plane there first")]
    NotInitialized(PathBuf),
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] serde_yaml::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid ttl {0:?}: {1}")]
    InvalidTtl(String, String),
    #[error("malformed join token")]
    JoinTokenMalformed,
    #[error("join token is for another cluster (CA hash mismatch)")]
    JoinTokenWrongCluster,
    #[error("unknown join token")]
    JoinTokenUnknown,
    #[error("join token expired at {0}")]
    JoinTokenExpired(Timestamp),
    #[error("join tokens: {0}")]
    TokenStore(String),
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Leaves the key out.
impl fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAndKey").finish_non_exhaustive()
    }
}

/// The loaded credentials of one cluster.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca: Issuer<'static, KeyPair>,
    server: CertAndKey,
    admin: CertAndKey,
    tokens: Vec<static_tokens::StaticToken>,
}

/// Leaves every secret out.
impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the credentials under `data_dir/pki`, creating what is missing. The serving
    /// certificate covers `localhost`, `127.0.0.1`, `::1`, the hostname and `sans` (IP
    /// addresses or DNS names); an existing one is re-issued if it does not.
    pub fn load_or_create(data_dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
        let dir = data_dir.join(PKI_DIR);
        ensure_private_dir(&dir)?;
        let names = serving_names(sans)?;
        let (ca_pem, ca_key) = load_or_create_ca(&dir)?;
        let ca_path = dir.join(CA_CERT);
        let ca_der = cert_der_from_pem(&ca_pem, &ca_path)?;
        let ca = Issuer::from_ca_cert_der(&ca_der, ca_key)?;
        let now = Timestamp::now();
        let provider = provider();

        let server_verifier = server_verifier(&ca_der, &provider)?;
        let server_ok = |der: &CertificateDer<'static>| {
            names.iter().all(|n| {
                ServerName::try_from(n.as_str()).is_ok_and(|sn| {
                    server_verifier
                        .verify_server_cert(der, &[], &sn, &[], unix_time(now))
                        .is_ok()
                })
            })
        };
        let server = load_or_issue(&dir, "server", now, server_ok, || {
            issue_server(&ca, &names, now)
        })?;

        let client_verifier = client_verifier(&ca_der, &provider, false)?;
        let admin_ok = |der: &CertificateDer<'static>| {
            client_verifier
                .verify_client_cert(der, &[], unix_time(now))
                .is_ok()
                && subject_is(der, ADMIN_USER, MASTERS_GROUP)
        };
        let admin = load_or_issue(&dir, "admin", now, admin_ok, || {
            issue(
                &ca,
                client_params(ADMIN_USER, Some(MASTERS_GROUP)),
                now,
                LEAF_VALIDITY,
            )
        })?;

        let tokens_path = dir.join(TOKENS_FILE);
        let tokens = static_tokens::load_or_create(&tokens_path)?;
        tighten(&tokens_path)?;

        Ok(Pki {
            dir,
            ca_pem,
            ca_der,
            ca,
            server,
            admin,
            tokens,
        })
    }

    /// TLS 1.2 and 1.3 with the ring provider, ALPN `h2` then `http/1.1`. Client
    /// certificates are optional (kubectl with a token sends none) but must chain to the
    /// cluster CA when presented.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let provider = provider();
        let verifier = client_verifier(&self.ca_der, &provider, true)?;
        let cert = cert_der_from_pem(&self.server.cert_pem, &self.dir.join("server.crt"))?;
        let key = PrivateKeyDer::from_pem_slice(self.server.key_pem.as_bytes()).map_err(|e| {
            PkiError::Corrupt {
                path: self.dir.join("server.key"),
                why: e.to_string(),
            }
        })?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The cluster CA certificate, DER (what join tokens pin).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The serving certificate and key (PEM).
    pub fn server_cert(&self) -> &CertAndKey {
        &self.server
    }

    /// The admin client certificate and key (PEM): CN kith-admin, O system:masters.
    pub fn admin_cert(&self) -> &CertAndKey {
        &self.admin
    }

    /// Bearer token of `kith-admin` (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        self.token_of(ADMIN_USER)
    }

    /// Bearer token of `kith-metrics` (group `kith:metrics-readers`), for Prometheus.
    pub fn metrics_token(&self) -> &str {
        self.token_of(METRICS_USER)
    }

    fn token_of(&self, user: &str) -> &str {
        // load_or_create guarantees both users have a token; "" never authenticates.
        self.tokens
            .iter()
            .find(|t| t.user.name == user)
            .map_or("", |t| t.token.as_str())
    }

    /// Every bearer token with its user, for [`kith_api::auth::Authenticator::new`].
    pub fn tokens(&self) -> Vec<(String, User)> {
        self.tokens
            .iter()
            .map(|t| (t.token.clone(), t.user.clone()))
            .collect()
    }

    /// A new client certificate signed by the cluster CA: CN `name`, O `group` (rcgen
    /// writes at most one O per subject), valid from an hour ago for `validity`. Not
    /// persisted. For agents later: `system:node:<name>`, group `system:nodes`.
    pub fn issue_client_cert(
        &self,
        name: &str,
        group: Option<&str>,
        validity: Duration,
    ) -> Result<CertAndKey, PkiError> {
        let validity = SignedDuration::try_from(validity)
            .map_err(|e| PkiError::InvalidTtl(format!("{validity:?}"), e.to_string()))?;
        issue(
            &self.ca,
            client_params(name, group),
            Timestamp::now(),
            validity,
        )
    }

    /// Writes an admin kubeconfig for `server_url` (mode 0600, atomically): cluster `kith`;
    /// user `kith-admin` with the client certificate (context `kith`, current) and user
    /// `kith-admin-token` with the bearer token (context `kith-admin-token`).
    pub fn write_kubeconfig(&self, path: &Path, server_url: &str) -> Result<(), PkiError> {
        let text = kubeconfig::render(&kubeconfig::AdminCredentials {
            server_url,
            ca_pem: &self.ca_pem,
            cert_pem: &self.admin.cert_pem,
            key_pem: &self.admin.key_pem,
            token: self.admin_token(),
        })?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(files::io_err(parent))?;
        }
        write_atomic(path, text.as_bytes(), PRIVATE)
    }

    /// A new join token valid for `ttl` (`K10<ca sha256>::<id>.<secret>`), stored through
    /// `client`.
    pub async fn create_join_token(
        &self,
        client: &kube::Client,
        ttl: Duration,
    ) -> Result<String, PkiError> {
        join::create(client, &self.ca_der, ttl, Timestamp::now()).await
    }

    /// `Ok` when `token` is a live join token of this cluster at `now`, as the store read
    /// through `client` says.
    pub async fn validate_join_token(
        &self,
        client: &kube::Client,
        token: &str,
        now: Timestamp,
    ) -> Result<(), PkiError> {
        join::validate(client, &self.ca_der, token, now).await
    }
}

/// An explicit ring provider: the process may have no default installed, or another one.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_der: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone())?;
    Ok(Arc::new(roots))
}

fn client_verifier(
    ca_der: &CertificateDer<'static>,
    provider: &Arc<CryptoProvider>,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider.clone());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    Ok(builder.build()?)
}

fn server_verifier(
    ca_der: &CertificateDer<'static>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, PkiError> {
    WebPkiServerVerifier::builder_with_provider(roots(ca_der)?, provider.clone())
        .build()
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))
}

fn unix_time(t: Timestamp) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(t.as_second().max(0).unsigned_abs()))
}

pub(crate) fn cert_der_from_pem(
    pem: &str,
    path: &Path,
) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Corrupt {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// The names the serving certificate must cover, deduplicated, in a stable order.
fn serving_names(sans: &[String]) -> Result<Vec<String>, PkiError> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // A hostname that is not a valid DNS name (say, with an underscore) cannot be a SAN;
    // clients can still use an IP address.
    if let Some(host) = hostname().filter(|h| ServerName::try_from(h.as_str()).is_ok()) {
        names.push(host);
    }
    for san in sans {
        let san = san.trim();
        let san = san
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(san);
        if ServerName::try_from(san).is_err() {
            return Err(PkiError::InvalidSan(san.to_string()));
        }
        names.push(san.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.to_ascii_lowercase()));
    Ok(names)
}

fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .find(|s| !s.is_empty())
}

/// The CA on disk, or a new one if there is no `ca.crt` yet. A stray `ca.key` without a
/// certificate can only come from a crash during the very first start: nothing can trust
/// it, so it is replaced.
fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), PkiError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    match read_optional(&cert_path)? {
        Some(cert_pem) => {
            let key_pem = read_optional(&key_path)?
                .ok_or_else(|| PkiError::CaKeyMissing(cert_path.clone(), key_path.clone()))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Corrupt {
                path: key_path.clone(),
                why: e.to_string(),
            })?;
            let der = cert_der_from_pem(&cert_pem, &cert_path)?;
            if !key_matches(&der, &key) {
                return Err(PkiError::CaKeyMismatch(key_path));
            }
            tighten(&key_path)?;
            Ok((cert_pem, key))
        }
        None => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, CA_COMMON_NAME);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            set_validity(&mut params, Timestamp::now(), CA_VALIDITY)?;
            let cert = params.self_signed(&key)?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), PRIVATE)?;
            let cert_pem = cert.pem();
            write_atomic(&cert_path, cert_pem.as_bytes(), PUBLIC)?;
            tracing::info!(path = %cert_path.display(), "created cluster CA");
            Ok((cert_pem, key))
        }
    }
}

/// `<name>.crt` + `<name>.key` if they are still good (the key is the cert's, `verify`
/// accepts the cert, not near expiry), else a fresh pair from `issue_new`, persisted.
fn load_or_issue(
    dir: &Path,
    name: &str,
    now: Timestamp,
    verify: impl Fn(&CertificateDer<'static>) -> bool,
    issue_new: impl FnOnce() -> Result<CertAndKey, PkiError>,
) -> Result<CertAndKey, PkiError> {
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    if let (Some(cert_pem), Some(key_pem)) = (read_optional(&cert_path)?, read_optional(&key_path)?)
    {
        let usable = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .ok()
            .zip(KeyPair::from_pem(&key_pem).ok())
            .is_some_and(|(der, key)| {
                key_matches(&der, &key) && not_expiring(&der, now) && verify(&der)
            });
        if usable {
            tighten(&key_path)?;
            return Ok(CertAndKey { cert_pem, key_pem });
        }
        tracing::info!(cert = %cert_path.display(), "re-issuing certificate");
    }
    let fresh = issue_new()?;
    write_atomic(&key_path, fresh.key_pem.as_bytes(), PRIVATE)?;
    write_atomic(&cert_path, fresh.cert_pem.as_bytes(), PUBLIC)?;
    Ok(fresh)
}

fn issue_server(
    ca: &Issuer<'static, KeyPair>,
    names: &[String],
    now: Timestamp,
) -> Result<CertAndKey, PkiError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_CN);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(ca, params, now, LEAF_VALIDITY)
}

fn client_params(name: &str, group: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    if let Some(group) = group {
        params
            .distinguished_name
            .push(DnType::OrganizationName, group);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn issue(
    ca: &Issuer<'static, KeyPair>,
    mut params: CertificateParams,
    now: Timestamp,
    validity: SignedDuration,
) -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, validity)?;
    let cert = params.signed_by(&key, ca)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn set_validity(
    params: &mut CertificateParams,
    now: Timestamp,
    validity: SignedDuration,
) -> Result<(), PkiError> {
    let invalid = |e: jiff::Error| PkiError::InvalidTtl(format!("{validity}"), e.to_string());
    let from = now.checked_sub(BACKDATE).map_err(invalid)?;
    let to = now.checked_add(validity).map_err(invalid)?;
    // rcgen speaks the `time` crate; going through the epoch avoids a second time library.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let secs = |t: Timestamp| Duration::from_secs(t.as_second().max(0).unsigned_abs());
    params.not_before = epoch + secs(from);
    params.not_after = epoch + secs(to);
    Ok(())
}

/// Is `key` the private half of the certificate's public key?
fn key_matches(der: &CertificateDer<'_>, key: &KeyPair) -> bool {
    X509Certificate::from_der(der)
        .is_ok_and(|(_, c)| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

fn not_expiring(der: &CertificateDer<'_>, now: Timestamp) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let Ok(renew_at) = now.checked_add(RENEW_BEFORE) else {
        return false;
    };
    cert.validity().not_after.timestamp() > renew_at.as_second()
}

fn subject_is(der: &CertificateDer<'_>, cn: &str, org: &str) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, c)| {
        let s = c.subject();
        s.iter_common_name()
            .any(|a| a.as_str().is_ok_and(|v| v == cn))
            && s.iter_organization()
                .any(|a| a.as_str().is_ok_and(|v| v == org))
    })
}

/// Private files stay 0600 even if someone widened them.
fn tighten(path: &Path) -> Result<(), PkiError> {
    fs::set_permissions(path, Permissions::from_mode(PRIVATE)).map_err(files::io_err(path))
}

/// How long a node certificate issued at join is valid.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The join endpoints of a control box (see [`kith_api::join`]): agents get a node client
/// certificate; new control boxes get the region bundle, where this box has a peer port.
/// A token that is malformed, unknown, expired or of another cluster gets 401 and nothing
/// else; when the store cannot be read (a box cut off from its region) the joiner gets 503.
pub struct BoxJoiner {
    pki: Arc<Pki>,
    /// Reads the token Secrets (in-process, as the system).
    client: kube::Client,
    /// This box's Raft port; `None` on a one-box `kith up`, which control boxes cannot join.
    peer_addr: Option<String>,
}

impl BoxJoiner {
    pub fn new(pki: Arc<Pki>, client: kube::Client, peer_addr: Option<&str>) -> Self {
        BoxJoiner {
            pki,
            client,
            peer_addr: peer_addr.map(str::to_string),
        }
    }

    async fn admit(&self, token: &str, who: &str) -> Result<(), kith_api::error::ApiError> {
        match self
            .pki
            .validate_join_token(&self.client, token, Timestamp::now())
            .await
        {
            Ok(()) => Ok(()),
            Err(PkiError::TokenStore(why)) => {
                tracing::warn!(who, %why, "join tokens could not be read");
                Err(kith_api::error::ApiError::Unavailable(format!(
                    "join tokens could not be read: {why}"
                )))
            }
            Err(e) => {
                tracing::info!(who, error = %e, "join refused");
                Err(kith_api::error::ApiError::Unauthorized)
            }
        }
    }
}

impl kith_api::join::Joiner for BoxJoiner {
    fn ca_pem(&self) -> String {
        self.pki.ca_pem().to_string()
    }

    fn join<'a>(
        &'a self,
        token: &'a str,
        req: &'a kith_api::join::JoinRequest,
    ) -> BoxFuture<'a, Result<kith_api::join::JoinReply, kith_api::error::ApiError>> {
        Box::pin(async move {
            self.admit(token, &req.node_name).await?;
            let internal = |e: PkiError| kith_api::error::ApiError::Internal(e.to_string());
            let issued = self
                .pki
                .issue_client_cert(
                    &kith_api::join::node_user(&req.node_name),
                    Some(kith_api::join::NODES_GROUP),
                    NODE_CERT_VALIDITY,
                )
                .map_err(internal)?;
            tracing::info!(node = %req.node_name, "node joined");
            kubelet::join_reply(&self.pki, req, issued).map_err(internal)
        })
    }

    fn join_control<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<kith_api::join::RegionBundle, kith_api::error::ApiError>> {
        Box::pin(async move {
            let Some(peer_addr) = &self.peer_addr else {
                return Err(kith_api::error::ApiError::NoRoute);
            };
            self.admit(token, "a control box").await?;
            self.pki
                .region_bundle(peer_addr)
                .map_err(|e| kith_api::error::ApiError::Internal(e.to_string()))
        })
    }
}
