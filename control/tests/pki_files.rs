//! What the PKI leaves on disk and how a restart treats it: same CA and tokens, private
//! modes, re-issue of a serving certificate that no longer fits, a kubeconfig that parses,
//! join tokens that a second process can mint.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kith_control::pki::{create_join_token_in, JoinToken, Pki, PkiError};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn creates_private_files_and_reuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::load_or_create(dir.path(), &[]).unwrap();
    let pki_dir = dir.path().join("pki");
    assert_eq!(mode(&pki_dir), 0o700);
    for private in ["ca.key", "server.key", "admin.key", "tokens.csv"] {
        assert_eq!(mode(&pki_dir.join(private)), 0o600, "{private}");
    }
    for public in ["ca.crt", "server.crt", "admin.crt"] {
        assert!(pki_dir.join(public).is_file(), "{public}");
    }
    assert!(first.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(first.admin_token().len(), 43);

    let second = Pki::load_or_create(dir.path(), &[]).unwrap();
    assert_eq!(second.ca_pem(), first.ca_pem());
    assert_eq!(second.admin_token(), first.admin_token());
    assert_eq!(second.metrics_token(), first.metrics_token());
    assert_eq!(second.admin_cert().cert_pem, first.admin_cert().cert_pem);
    assert_eq!(second.server_cert().cert_pem, first.server_cert().cert_pem);
    assert_eq!(second.tokens().len(), 2);

    // Someone loosened a key's mode: the next start tightens it.
    fs::set_permissions(pki_dir.join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&pki_dir, fs::Permissions::from_mode(0o755)).unwrap();
    Pki::load_or_create(dir.path(), &[]).unwrap();
    assert_eq!(mode(&pki_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&pki_dir), 0o700);
}

#[test]
fn serving_cert_is_reissued_for_new_sans_but_the_ca_never_changes() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::load_or_create(dir.path(), &["10.0.0.5".to_string()]).unwrap();
    let same = Pki::load_or_create(dir.path(), &["10.0.0.5".to_string()]).unwrap();
    assert_eq!(same.server_cert().cert_pem, first.server_cert().cert_pem);

    let moved = Pki::load_or_create(
        dir.path(),
        &["[fd00::7]".to_string(), "box.lan".to_string()],
    )
    .unwrap();
    assert_ne!(moved.server_cert().cert_pem, first.server_cert().cert_pem);
    assert_eq!(moved.ca_pem(), first.ca_pem());
    assert_eq!(moved.admin_cert().cert_pem, first.admin_cert().cert_pem);
    let sans = san_strings(&moved.server_cert().cert_pem);
    for want in ["localhost", "127.0.0.1", "::1", "fd00::7", "box.lan"] {
        assert!(sans.iter().any(|s| s == want), "{want} not in {sans:?}");
    }

    assert!(matches!(
        Pki::load_or_create(dir.path(), &["not a name!".to_string()]),
        Err(PkiError::InvalidSan(_))
    ));
}

fn san_strings(cert_pem: &str) -> Vec<String> {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
            }
            GeneralName::IPAddress(b) => {
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()
            }
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_damaged_leaf_is_reissued_a_missing_ca_key_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::load_or_create(dir.path(), &[]).unwrap();
    let pki_dir = dir.path().join("pki");

    // A key that is not the certificate's (a crash between writing the two).
    fs::copy(pki_dir.join("admin.key"), pki_dir.join("server.key")).unwrap();
    let repaired = Pki::load_or_create(dir.path(), &[]).unwrap();
    assert_ne!(
        repaired.server_cert().cert_pem,
        first.server_cert().cert_pem
    );
    repaired.server_config().unwrap();

    // A certificate that is garbage.
    fs::write(pki_dir.join("admin.crt"), "garbage").unwrap();
    let repaired = Pki::load_or_create(dir.path(), &[]).unwrap();
    assert!(repaired
        .admin_cert()
        .cert_pem
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(repaired.ca_pem(), first.ca_pem());

    fs::remove_file(pki_dir.join("ca.key")).unwrap();
    assert!(matches!(
        Pki::load_or_create(dir.path(), &[]),
        Err(PkiError::CaKeyMissing(..))
    ));
    assert_eq!(
        fs::read_to_string(pki_dir.join("ca.crt")).unwrap(),
        first.ca_pem()
    );
}

#[test]
fn kubeconfig_has_the_expected_shape() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
    let path = dir.path().join("nested/dir/kubeconfig");
    pki.write_kubeconfig(&path, "https://127.0.0.1:6443")
        .unwrap();
    assert_eq!(mode(&path), 0o600);
    // No temporary file left beside it.
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

    let doc: serde_yaml::Value = serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let b64 = |v: &serde_yaml::Value| {
        String::from_utf8(STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
    };
    assert_eq!(doc["apiVersion"], "v1");
    assert_eq!(doc["kind"], "Config");
    assert_eq!(doc["current-context"], "kith");
    assert_eq!(doc["clusters"][0]["name"], "kith");
    assert_eq!(
        doc["clusters"][0]["cluster"]["server"],
        "https://127.0.0.1:6443"
    );
    assert_eq!(
        b64(&doc["clusters"][0]["cluster"]["certificate-authority-data"]),
        pki.ca_pem()
    );
    assert_eq!(doc["users"][0]["name"], "kith-admin");
    assert_eq!(
        b64(&doc["users"][0]["user"]["client-certificate-data"]),
        pki.admin_cert().cert_pem
    );
    assert_eq!(
        b64(&doc["users"][0]["user"]["client-key-data"]),
        pki.admin_cert().key_pem
    );
    assert!(doc["users"][0]["user"].get("token").is_none());
    assert_eq!(doc["users"][1]["name"], "kith-admin-token");
    assert_eq!(doc["users"][1]["user"]["token"], pki.admin_token());
    assert_eq!(doc["contexts"][0]["name"], "kith");
    assert_eq!(doc["contexts"][0]["context"]["cluster"], "kith");
    assert_eq!(doc["contexts"][0]["context"]["user"], "kith-admin");
    assert_eq!(doc["contexts"][1]["name"], "kith-admin-token");
    assert_eq!(doc["contexts"][1]["context"]["user"], "kith-admin-token");

    // Rewriting (say, for a new address) replaces the file whole.
    pki.write_kubeconfig(&path, "https://10.0.0.1:6443")
        .unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        doc["clusters"][0]["cluster"]["server"],
        "https://10.0.0.1:6443"
    );
}

#[test]
fn join_tokens_pin_the_ca_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        create_join_token_in(dir.path(), Duration::from_secs(60)),
        Err(PkiError::NotInitialized(_))
    ));
    let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
    let now = jiff::Timestamp::now();

    let token = pki.create_join_token(Duration::from_secs(3600)).unwrap();
    assert!(token.starts_with("K10"));
    assert!(JoinToken::parse(&token).unwrap().pins_ca(pki.ca_der()));
    pki.validate_join_token(&token, now).unwrap();
    let late = now + jiff::SignedDuration::from_hours(2);
    assert!(matches!(
        pki.validate_join_token(&token, late),
        Err(PkiError::JoinTokenExpired(_))
    ));

    // What `kith token create` does, as another process would, seen by the running Pki.
    let cli =
        create_join_token_in(dir.path(), kith_control::pki::parse_ttl("24h").unwrap()).unwrap();
    pki.validate_join_token(&cli, late).unwrap();
    assert_eq!(mode(&dir.path().join("pki/join-tokens.json")), 0o600);

    // A token of another cluster is refused before its secret is even looked at.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(other_dir.path(), &[]).unwrap();
    let foreign = other.create_join_token(Duration::from_secs(3600)).unwrap();
    assert!(matches!(
        pki.validate_join_token(&foreign, now),
        Err(PkiError::JoinTokenWrongCluster)
    ));
}
