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
//! The server keeps only the id, a SHA-256 of the secret and the expiry, in
//! `pki/join-tokens.json`, rewritten atomically under a lock so `kith token create` can
//! run beside a live server.

use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kith_api::auth::constant_time_eq;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::files::{io_err, read_optional, write_atomic, PRIVATE};
use super::PkiError;

/// Prefix of a join token; the `10` is k3s's format version.
const PREFIX: &str = "K10";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
/// kubeadm's bootstrap-token alphabet: lower-case letters and digits.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

pub(crate) const TOKENS_FILE: &str = "join-tokens.json";
const LOCK_FILE: &str = "join-tokens.lock";

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
    hex(ring::digest::digest(&ring::digest::SHA256, ca_der).as_ref())
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

/// What `kith token create --data-dir DIR [--ttl 24h]` does: a new join token for the
/// cluster whose credentials live in `data_dir`, without starting (or needing) a server.
pub fn create_join_token_in(data_dir: &Path, ttl: Duration) -> Result<String, PkiError> {
    let dir = data_dir.join(super::PKI_DIR);
    let ca_path = dir.join(super::CA_CERT);
    let ca_pem =
        read_optional(&ca_path)?.ok_or_else(|| PkiError::NotInitialized(data_dir.to_path_buf()))?;
    let ca_der = super::cert_der_from_pem(&ca_pem, &ca_path)?;
    create(&dir, &ca_der, ttl, Timestamp::now())
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    tokens: Vec<StoredToken>,
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    id: String,
    /// Hex SHA-256 of the secret: the file alone does not let anyone join.
    secret_sha256: String,
    created: Timestamp,
    expires: Timestamp,
}

pub(crate) fn create(
    dir: &Path,
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
    let path = dir.join(TOKENS_FILE);
    with_lock(dir, || {
        let mut stored = read(&path)?;
        // Expired tokens are useless; dropping them keeps the file small.
        stored
            .tokens
            .retain(|t| t.expires > now && t.id != token.id);
        stored.tokens.push(StoredToken {
            id: token.id.clone(),
            secret_sha256: hex(ring::digest::digest(
                &ring::digest::SHA256,
                token.secret.as_bytes(),
            )
            .as_ref()),
            created: now,
            expires,
        });
        write_atomic(&path, &serde_json::to_vec_pretty(&stored)?, PRIVATE)
    })?;
    Ok(token.to_string())
}

/// Reads the file afresh each time: `kith token create` may have added a token since.
pub(crate) fn validate(
    dir: &Path,
    ca_der: &[u8],
    token: &str,
    now: Timestamp,
) -> Result<(), PkiError> {
    let token = JoinToken::parse(token)?;
    if !token.pins_ca(ca_der) {
        return Err(PkiError::JoinTokenWrongCluster);
    }
    let stored = read(&dir.join(TOKENS_FILE))?;
    let presented =
        hex(ring::digest::digest(&ring::digest::SHA256, token.secret.as_bytes()).as_ref());
    let found = stored
        .tokens
        .iter()
        .find(|t| {
            t.id == token.id && constant_time_eq(t.secret_sha256.as_bytes(), presented.as_bytes())
        })
        .ok_or(PkiError::JoinTokenUnknown)?;
    if found.expires <= now {
        return Err(PkiError::JoinTokenExpired(found.expires));
    }
    Ok(())
}

fn read(path: &Path) -> Result<Stored, PkiError> {
    match read_optional(path)? {
        None => Ok(Stored::default()),
        Some(text) => serde_json::from_str(&text).map_err(|e| PkiError::Corrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
        }),
    }
}

/// Serialises read-modify-write of the tokens file between processes.
fn with_lock<T>(dir: &Path, f: impl FnOnce() -> Result<T, PkiError>) -> Result<T, PkiError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    // The lock goes with the file handle when `lock` is dropped, error or not.
    f()
}

fn random_word(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
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

    #[test]
    fn create_then_validate_until_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let ca = b"pretend this is a CA certificate";
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let token = create(dir.path(), ca, Duration::from_secs(3600), now).unwrap();
        assert!(JoinToken::parse(&token).unwrap().pins_ca(ca));
        assert!(validate(dir.path(), ca, &token, now).is_ok());
        let later = now + SignedDuration::from_secs(3599);
        assert!(validate(dir.path(), ca, &token, later).is_ok());
        let at_expiry = now + SignedDuration::from_secs(3600);
        assert!(matches!(
            validate(dir.path(), ca, &token, at_expiry),
            Err(PkiError::JoinTokenExpired(_))
        ));

        // The file keeps no secret.
        let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        let secret = JoinToken::parse(&token).unwrap().secret;
        assert!(!text.contains(&secret), "{text}");

        // Another cluster's CA, an unknown id, a wrong secret.
        assert!(matches!(
            validate(dir.path(), b"other CA", &token, now),
            Err(PkiError::JoinTokenWrongCluster)
        ));
        let mut t = JoinToken::parse(&token).unwrap();
        t.secret = "aaaaaaaaaaaaaaaa".into();
        assert!(matches!(
            validate(dir.path(), ca, &t.to_string(), now),
            Err(PkiError::JoinTokenUnknown)
        ));
        let mut t = JoinToken::parse(&token).unwrap();
        t.id = "zzzzzz".into();
        assert!(matches!(
            validate(dir.path(), ca, &t.to_string(), now),
            Err(PkiError::JoinTokenUnknown)
        ));
        assert!(matches!(
            validate(dir.path(), ca, "nonsense", now),
            Err(PkiError::JoinTokenMalformed)
        ));
    }

    #[test]
    fn creating_drops_expired_tokens_and_keeps_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ca = b"ca";
        let t0: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let short = create(dir.path(), ca, Duration::from_secs(60), t0).unwrap();
        let long = create(dir.path(), ca, Duration::from_secs(86400), t0).unwrap();
        let t1 = t0 + SignedDuration::from_secs(120);
        let newer = create(dir.path(), ca, Duration::from_secs(60), t1).unwrap();
        let stored = read(&dir.path().join(TOKENS_FILE)).unwrap();
        let ids: Vec<String> = stored.tokens.iter().map(|t| t.id.clone()).collect();
        let id = |t: &str| JoinToken::parse(t).unwrap().id;
        assert_eq!(ids, vec![id(&long), id(&newer)]);
        assert!(matches!(
            validate(dir.path(), ca, &short, t0),
            Err(PkiError::JoinTokenUnknown)
        ));
        assert!(validate(dir.path(), ca, &long, t1).is_ok());
    }
}
