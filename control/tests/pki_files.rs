//! What the PKI leaves on disk and how a restart treats it: same CA and tokens, private
//! modes, re-issue of a serving certificate that no longer fits, a kubeconfig that parses,
//! join tokens kept in the store (and what the joiner does with them).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kith_api::error::ApiError;
use kith_control::pki::{create_join_token_in, BoxJoiner, JoinToken, Pki, PkiError};
use kube::api::PostParams;

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

/// A cluster's API in process (memory store) with `kube-system`, and a client of the system.
async fn api_with_kube_system() -> kube::Client {
    use kith_api::auth::{Authenticator, User, MASTERS_GROUP};
    use kith_api::handler::Api;
    use kith_api::server::ApiService;
    use kith_api::store::memory::MemoryStore;
    let svc = ApiService::new(
        std::sync::Arc::new(Api::new(MemoryStore::default())),
        Authenticator::new([]),
    );
    let client = kith_control::client::in_process(svc, User::new("system:kith", [MASTERS_GROUP]));
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-system"}
    }))
    .unwrap();
    kube::Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn join_tokens_live_in_the_store_pin_the_ca_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        create_join_token_in(dir.path(), Duration::from_secs(60)).await,
        Err(PkiError::NotInitialized(_))
    ));
    let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
    // Credentials but no running box (no kubeconfig yet): a clear error, no token.
    let err = create_join_token_in(dir.path(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("kubeconfig"), "{err}");

    let client = api_with_kube_system().await;
    let now = jiff::Timestamp::now();
    let token = pki
        .create_join_token(&client, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(token.starts_with("K10"));
    let parsed = JoinToken::parse(&token).unwrap();
    assert!(parsed.pins_ca(pki.ca_der()));
    pki.validate_join_token(&client, &token, now).await.unwrap();
    let late = now + jiff::SignedDuration::from_hours(2);
    assert!(matches!(
        pki.validate_join_token(&client, &token, late).await,
        Err(PkiError::JoinTokenExpired(_))
    ));

    // Stored as kubeadm stores bootstrap tokens, without the secret itself.
    let secrets = kube::Api::<Secret>::namespaced(client.clone(), "kube-system");
    let name = format!("bootstrap-token-{}", parsed.id);
    let stored = secrets.get(&name).await.unwrap();
    assert_eq!(
        stored.type_.as_deref(),
        Some("bootstrap.kubernetes.io/token")
    );
    let json = serde_json::to_string(&stored).unwrap();
    assert!(!json.contains(&STANDARD.encode(&parsed.secret)), "{json}");

    // A wrong secret for a real id, and a token of another cluster, are refused.
    let mut wrong = parsed.clone();
    wrong.secret = "aaaaaaaaaaaaaaaa".into();
    assert!(matches!(
        pki.validate_join_token(&client, &wrong.to_string(), now)
            .await,
        Err(PkiError::JoinTokenUnknown)
    ));
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(other_dir.path(), &[]).unwrap();
    let foreign = other
        .create_join_token(&client, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(matches!(
        pki.validate_join_token(&client, &foreign, now).await,
        Err(PkiError::JoinTokenWrongCluster)
    ));

    // Deleting the Secret revokes the token.
    secrets.delete(&name, &Default::default()).await.unwrap();
    assert!(matches!(
        pki.validate_join_token(&client, &token, now).await,
        Err(PkiError::JoinTokenUnknown)
    ));
}

#[tokio::test]
async fn the_joiner_admits_live_tokens_only_and_the_cleaner_drops_expired_ones() {
    use kith_api::join::{JoinRequest, Joiner};
    let dir = tempfile::tempdir().unwrap();
    let pki = std::sync::Arc::new(Pki::load_or_create(dir.path(), &[]).unwrap());
    let client = api_with_kube_system().await;
    let token = pki
        .create_join_token(&client, Duration::from_secs(3600))
        .await
        .unwrap();
    let req = JoinRequest {
        node_name: "n1".into(),
        addresses: vec![],
    };
    let one_box = BoxJoiner::new(pki.clone(), client.clone(), None);
    let reply = one_box.join(&token, &req).await.unwrap();
    assert!(reply.cert.contains("BEGIN CERTIFICATE"));
    assert!(matches!(
        one_box.join("K10nonsense", &req).await,
        Err(ApiError::Unauthorized)
    ));
    // A one-box cluster has no region to join.
    assert!(matches!(
        one_box.join_control(&token).await,
        Err(ApiError::NoRoute)
    ));
    let region_box = BoxJoiner::new(pki.clone(), client.clone(), Some("10.0.0.1:7443"));
    let bundle = region_box.join_control(&token).await.unwrap();
    assert_eq!(bundle.peer_addr, "10.0.0.1:7443");
    assert!(matches!(
        region_box.join_control("K10nonsense").await,
        Err(ApiError::Unauthorized)
    ));

    // Expired tokens go; live ones and other Secrets stay.
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2);
    let short = pki
        .create_join_token(&client, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        kith_control::pki::join::clean_expired(
            &client,
            later - jiff::SignedDuration::from_mins(90)
        )
        .await
        .unwrap(),
        1,
        "only the 60 s token had expired"
    );
    assert!(matches!(
        pki.validate_join_token(&client, &short, jiff::Timestamp::now())
            .await,
        Err(PkiError::JoinTokenUnknown)
    ));
    one_box.join(&token, &req).await.unwrap();
}
