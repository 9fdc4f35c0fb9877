//! Join tokens: how an agent or a new control box proves it may join, and learns which
//! CA to trust before it has talked to anyone.
//!
//! ```text
//!   K10 <sha256 of the CA certificate DER, hex> :: <id> . <secret>
//!   K10 5f3a…e1                                 :: 7xk2qa . 0123456789abcdef
//! ```
//!
//! The shape follows k3s (whose bootstrap tokens follow kubeadm's `id.secret`): the joiner
//! checks the CA the server presents against the hash, and the server checks the secret.
//!
//! Tokens live in the store, as kubeadm keeps its bootstrap tokens: a Secret
//! `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token`. So every
//! box of a region knows every token however it was made, `kubectl get secrets -n
//! kube-system` lists them and deleting one revokes it. Unlike kubeadm's, the Secret holds
//! a SHA-256 of the token's secret (`token-secret-sha256`), not the secret: a client that
//! may read Secrets still cannot join with what it reads.
//!
//! ```text
//!  kith token create ──(admin kubeconfig)──▶ POST Secret bootstrap-token-<id> ──▶ Raft
//!  POST /kith/v1/join  Bearer K10…::<id>.<secret> ──▶ GET that Secret (linearizable)
//!                                                   └▶ check: hash, usage, expiration
//!  leader: every minute, delete the Secrets of expired tokens (kube's TokenCleaner)
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kith_api::auth::constant_time_eq;
use kube::api::{DeleteParams, ListParams, PostParams};
use rand::Rng;

use super::PkiError;

/// Prefix of a join token; the `10` is k3s's format version.
const PREFIX: &str = "K10";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
/// kubeadm's bootstrap-token alphabet: lower-case letters and digits.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Where and as what tokens are stored, as kubeadm names them.
pub const TOKEN_NAMESPACE: &str = "kube-system";
pub const TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
pub const TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
const KEY_ID: &str = "token-id";
const KEY_SECRET_SHA256: &str = "token-secret-sha256";
const KEY_EXPIRATION: &str = "expiration";
const KEY_USAGE: &str = "usage-bootstrap-authentication";
const KEY_DESCRIPTION: &str = "description";
/// How often the leader deletes the Secrets of expired tokens.
pub const CLEAN_EVERY: Duration = Duration::from_secs(60);

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the cluster CA certificate (DER).
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

/// Leaves the secret out.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("id", &self.id)
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}::{}.{}", self.ca_hash, self.id, self.secret)
    }
}

impl JoinToken {
    /// Parses `K10<hash>::<id>.<secret>`; anything else is [`PkiError::JoinTokenMalformed`].
    pub fn parse(token: &str) -> Result<JoinToken, PkiError> {
        let rest = token
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(PkiError::JoinTokenMalformed)?;
        let (hash, creds) = rest.split_once("::").ok_or(PkiError::JoinTokenMalformed)?;
        let (id, secret) = creds.split_once('.').ok_or(PkiError::JoinTokenMalformed)?;
        let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        let in_alphabet = |s: &str, len| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
        if !is_hex(hash) || !in_alphabet(id, ID_LEN) || !in_alphabet(secret, SECRET_LEN) {
            return Err(PkiError::JoinTokenMalformed);
        }
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// Does this token pin the CA whose certificate is `ca_der`? (The joiner's check.)
    pub fn pins_ca(&self, ca_der: &[u8]) -> bool {
        constant_time_eq(ca_hash(ca_der).as_bytes(), self.ca_hash.as_bytes())
    }
}

/// Hex SHA-256 of a CA certificate's DER, as carried in join tokens.
pub fn ca_hash(ca_der: &[u8]) -> String {
    sha256_hex(ca_der)
}

/// Reads `24h`, `90m`, `1h30m`, `3600s` (jiff's friendly format, or ISO 8601 `PT24H`).
pub fn parse_ttl(ttl: &str) -> Result<Duration, PkiError> {
    let invalid = |why: String| PkiError::InvalidTtl(ttl.to_string(), why);
    let d: SignedDuration = ttl
        .trim()
        .parse()
        .map_err(|e: jiff::Error| invalid(e.to_string()))?;
    if !d.is_positive() {
        return Err(invalid("must be positive".to_string()));
    }
    Duration::try_from(d).map_err(|e| invalid(e.to_string()))
}

/// The Secret that makes `token` valid until `expires`.
pub fn token_secret(token: &JoinToken, expires: Timestamp, description: &str) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (KEY_ID, token.id.clone()),
        (KEY_SECRET_SHA256, sha256_hex(token.secret.as_bytes())),
        (KEY_EXPIRATION, expires.to_string()),
        (KEY_USAGE, "true".to_string()),
        (KEY_DESCRIPTION, description.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&token.id)),
            namespace: Some(TOKEN_NAMESPACE.to_string()),
            ..Default::default()
        },
        type_: Some(TOKEN_SECRET_TYPE.to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// `bootstrap-token-<id>`.
pub fn secret_name(id: &str) -> String {
    format!("{TOKEN_SECRET_PREFIX}{id}")
}

fn field<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| std::str::from_utf8(&v.0).ok())
}

/// When the token a Secret holds expires: `Ok(None)` for never (no `expiration`, as in
/// kubeadm); an expiration that does not parse makes the token unusable.
fn expiration(secret: &Secret) -> Result<Option<Timestamp>, PkiError> {
    field(secret, KEY_EXPIRATION)
        .map(|e| e.parse().map_err(|_| PkiError::JoinTokenUnknown))
        .transpose()
}

/// Whether `secret` (the Secret named after `token`'s id, if there is one) makes
/// `token` a live join token at `now`.
pub fn check(token: &JoinToken, secret: Option<&Secret>, now: Timestamp) -> Result<(), PkiError> {
    let secret = secret.ok_or(PkiError::JoinTokenUnknown)?;
    let presented = sha256_hex(token.secret.as_bytes());
    let matches = secret.type_.as_deref() == Some(TOKEN_SECRET_TYPE)
        && secret.metadata.deletion_timestamp.is_none()
        && field(secret, KEY_ID) == Some(token.id.as_str())
        && field(secret, KEY_USAGE) == Some("true")
        && field(secret, KEY_SECRET_SHA256)
            .is_some_and(|h| constant_time_eq(h.as_bytes(), presented.as_bytes()));
    if !matches {
        return Err(PkiError::JoinTokenUnknown);
    }
    match expiration(secret)? {
        Some(at) if at <= now => Err(PkiError::JoinTokenExpired(at)),
        _ => Ok(()),
    }
}

/// The names of token Secrets whose token has expired at `now` (what kube's TokenCleaner
/// deletes). Secrets of other types are never named.
pub fn expired(secrets: &[Secret], now: Timestamp) -> Vec<String> {
    secrets
        .iter()
        .filter(|s| s.type_.as_deref() == Some(TOKEN_SECRET_TYPE))
        .filter(|s| matches!(expiration(s), Ok(Some(at)) if at <= now))
        .filter_map(|s| s.metadata.name.clone())
        .collect()
}

fn store_err(e: kube::Error) -> PkiError {
    PkiError::TokenStore(e.to_string())
}

/// A new join token of the cluster whose CA certificate is `ca_der`, valid for `ttl` from
/// `now`, stored through `client` (it needs to create Secrets in `kube-system`).
pub async fn create(
    client: &kube::Client,
    ca_der: &[u8],
    ttl: Duration,
    now: Timestamp,
) -> Result<String, PkiError> {
    let span = SignedDuration::try_from(ttl)
        .ok()
        .filter(|d| d.is_positive())
        .ok_or_else(|| PkiError::InvalidTtl(format!("{ttl:?}"), "must be positive".into()))?;
    let expires = now
        .checked_add(span)
        .map_err(|e| PkiError::InvalidTtl(format!("{ttl:?}"), e.to_string()))?;
    let token = JoinToken {
        ca_hash: ca_hash(ca_der),
        id: random_word(ID_LEN),
        secret: random_word(SECRET_LEN),
    };
    let secrets = kube::Api::<Secret>::namespaced(client.clone(), TOKEN_NAMESPACE);
    let made = token_secret(&token, expires, "made by kith token create");
    secrets
        .create(&PostParams::default(), &made)
        .await
        .map_err(store_err)?;
    Ok(token.to_string())
}

/// `Ok` when `token` is a live join token of the cluster whose CA is `ca_der` at `now`,
/// reading its Secret through `client` (a read without resourceVersion: linearizable, so a
/// token just made on another box of the region is seen).
pub async fn validate(
    client: &kube::Client,
    ca_der: &[u8],
    token: &str,
    now: Timestamp,
) -> Result<(), PkiError> {
    let token = JoinToken::parse(token)?;
    if !token.pins_ca(ca_der) {
        return Err(PkiError::JoinTokenWrongCluster);
    }
    let secrets = kube::Api::<Secret>::namespaced(client.clone(), TOKEN_NAMESPACE);
    let found = secrets
        .get_opt(&secret_name(&token.id))
        .await
        .map_err(store_err)?;
    check(&token, found.as_ref(), now)
}

/// Deletes the Secrets of expired tokens; returns how many went.
pub async fn clean_expired(client: &kube::Client, now: Timestamp) -> Result<usize, PkiError> {
    let secrets = kube::Api::<Secret>::namespaced(client.clone(), TOKEN_NAMESPACE);
    let list = secrets
        .list(&ListParams::default().fields(&format!("type={TOKEN_SECRET_TYPE}")))
        .await
        .map_err(store_err)?;
    let mut gone = 0;
    for name in expired(&list.items, now) {
        match secrets.delete(&name, &DeleteParams::default()).await {
            Ok(_) => gone += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(store_err(e)),
        }
    }
    Ok(gone)
}

/// The leader's token cleaner: [`clean_expired`] every [`CLEAN_EVERY`], until aborted.
pub async fn clean_forever(client: kube::Client) {
    let mut tick = tokio::time::interval(CLEAN_EVERY);
    loop {
        tick.tick().await;
        match clean_expired(&client, Timestamp::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired join tokens deleted"),
            Err(e) => tracing::warn!(error = %e, "cleaning expired join tokens"),
        }
    }
}

/// What `kith token create --data-dir DIR [--ttl 24h]` does: a new join token, stored
/// through the box that runs on `data_dir` (with its admin kubeconfig), so every box of
/// the region accepts it.
pub async fn create_join_token_in(data_dir: &Path, ttl: Duration) -> Result<String, PkiError> {
    let dir = data_dir.join(super::PKI_DIR);
    let ca_path = dir.join(super::CA_CERT);
    let ca_pem = super::files::read_optional(&ca_path)?
        .ok_or_else(|| PkiError::NotInitialized(data_dir.to_path_buf()))?;
    let ca_der = super::cert_der_from_pem(&ca_pem, &ca_path)?;
    let client = kith_agent::join::client_from_kubeconfig(&data_dir.join("kubeconfig"))
        .await
        .map_err(|e| PkiError::TokenStore(e.to_string()))?;
    create(&client, &ca_der, ttl, Timestamp::now())
        .await
        .map_err(|e| match e {
            PkiError::TokenStore(why) => PkiError::TokenStore(format!(
                "the box did not store the token ({why}); join tokens live in the \
                 cluster's store, so `kith up` or `kith control` must be running on {}",
                data_dir.display()
            )),
            e => e,
        })
}

fn random_word(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_the_k10_shape() {
        let hash = "ab".repeat(32);
        let good = format!("K10{hash}::abc123.0123456789abcdef");
        let t = JoinToken::parse(&good).unwrap();
        assert_eq!(
            (t.ca_hash.as_str(), t.id.as_str(), t.secret.as_str()),
            (hash.as_str(), "abc123", "0123456789abcdef")
        );
        assert_eq!(t.to_string(), good);
        for bad in [
            String::new(),
            "K10".to_string(),
            format!("K11{hash}::abc123.0123456789abcdef"),
            format!("K10{hash}:abc123.0123456789abcdef"),
            format!("K10{}::abc123.0123456789abcdef", &hash[1..]),
            format!("K10{hash}::abc12.0123456789abcdef"),
            format!("K10{hash}::abc123.0123456789abcde"),
            format!("K10{hash}::ABC123.0123456789abcdef"),
            format!("K10{hash}::abc1230123456789abcdef"),
            format!("K10{}::abc123.0123456789abcdef", "zz".repeat(32)),
        ] {
            assert!(
                matches!(JoinToken::parse(&bad), Err(PkiError::JoinTokenMalformed)),
                "{bad}"
            );
        }
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(24 * 3600));
        assert_eq!(parse_ttl("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("PT2H").unwrap(), Duration::from_secs(7200));
        for bad in ["", "0s", "-1h", "soon", "24"] {
            assert!(
                matches!(parse_ttl(bad), Err(PkiError::InvalidTtl(..))),
                "{bad}"
            );
        }
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    /// A token and the Secret `kith token create` stores for it, expiring at 2030-01-01T01:00Z.
    fn made() -> (JoinToken, Secret) {
        let token = JoinToken {
            ca_hash: ca_hash(b"ca"),
            id: "abc123".into(),
            secret: "0123456789abcdef".into(),
        };
        let secret = token_secret(&token, at("2030-01-01T01:00:00Z"), "test");
        (token, secret)
    }

    fn with(secret: &Secret, key: &str, value: Option<&str>) -> Secret {
        let mut s = secret.clone();
        let data = s.data.get_or_insert_with(BTreeMap::new);
        match value {
            Some(v) => data.insert(key.to_string(), ByteString(v.as_bytes().to_vec())),
            None => data.remove(key),
        };
        s
    }

    #[test]
    fn the_secret_is_kubeadms_shape_without_the_secret() {
        let (token, secret) = made();
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("bootstrap-token-abc123")
        );
        assert_eq!(secret.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(
            secret.type_.as_deref(),
            Some("bootstrap.kubernetes.io/token")
        );
        assert_eq!(field(&secret, "token-id"), Some("abc123"));
        assert_eq!(
            field(&secret, "usage-bootstrap-authentication"),
            Some("true")
        );
        assert_eq!(field(&secret, "expiration"), Some("2030-01-01T01:00:00Z"));
        let json = serde_json::to_string(&secret).unwrap();
        assert!(!json.contains(&token.secret), "{json}");
        let encoded = base64_of(token.secret.as_bytes());
        assert!(!json.contains(&encoded), "{json}");
    }

    fn base64_of(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn check_table() {
        let (token, secret) = made();
        let before = at("2030-01-01T00:59:59Z");
        let mut other_type = secret.clone();
        other_type.type_ = Some("Opaque".into());
        let mut deleting = secret.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(before));
        let mut wrong_secret = token.clone();
        wrong_secret.secret = "aaaaaaaaaaaaaaaa".into();
        type Want = Result<(), &'static str>;
        let cases: Vec<(&str, &JoinToken, Option<Secret>, Timestamp, Want)> = vec![
            ("live", &token, Some(secret.clone()), before, Ok(())),
            ("no secret", &token, None, before, Err("unknown")),
            (
                "at expiry",
                &token,
                Some(secret.clone()),
                at("2030-01-01T01:00:00Z"),
                Err("expired"),
            ),
            (
                "after expiry",
                &token,
                Some(secret.clone()),
                at("2031-01-01T00:00:00Z"),
                Err("expired"),
            ),
            (
                "wrong secret",
                &wrong_secret,
                Some(secret.clone()),
                before,
                Err("unknown"),
            ),
            (
                "other type",
                &token,
                Some(other_type),
                before,
                Err("unknown"),
            ),
            (
                "being deleted",
                &token,
                Some(deleting),
                before,
                Err("unknown"),
            ),
            (
                "other id inside",
                &token,
                Some(with(&secret, "token-id", Some("zzzzzz"))),
                before,
                Err("unknown"),
            ),
            (
                "not for authentication",
                &token,
                Some(with(
                    &secret,
                    "usage-bootstrap-authentication",
                    Some("false"),
                )),
                before,
                Err("unknown"),
            ),
            (
                "no hash",
                &token,
                Some(with(&secret, "token-secret-sha256", None)),
                before,
                Err("unknown"),
            ),
            (
                "never expires",
                &token,
                Some(with(&secret, "expiration", None)),
                at("2099-01-01T00:00:00Z"),
                Ok(()),
            ),
            (
                "bad expiration",
                &token,
                Some(with(&secret, "expiration", Some("soon"))),
                before,
                Err("unknown"),
            ),
        ];
        for (name, token, secret, now, want) in cases {
            let got = check(token, secret.as_ref(), now).map_err(|e| match e {
                PkiError::JoinTokenUnknown => "unknown",
                PkiError::JoinTokenExpired(_) => "expired",
                _ => "other",
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn expired_names_only_expired_token_secrets() {
        let (_, live) = made();
        let mut old = token_secret(
            &JoinToken {
                ca_hash: ca_hash(b"ca"),
                id: "old000".into(),
                secret: "0123456789abcdef".into(),
            },
            at("2029-01-01T00:00:00Z"),
            "old",
        );
        let forever = with(&live, "expiration", None);
        let mut forever = forever;
        forever.metadata.name = Some("bootstrap-token-nevers".into());
        let mut opaque = old.clone();
        opaque.type_ = Some("Opaque".into());
        opaque.metadata.name = Some("not-a-token".into());
        let now = at("2030-01-01T00:00:00Z");
        assert_eq!(
            expired(&[live.clone(), old.clone(), forever.clone(), opaque], now),
            vec!["bootstrap-token-old000".to_string()]
        );
        old.data = None;
        assert!(
            expired(&[old], now).is_empty(),
            "no expiration: never expires"
        );
    }
}
