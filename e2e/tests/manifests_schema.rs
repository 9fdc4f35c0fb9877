//! Every example in `manifests/` is valid against the real Kubernetes schema: each
//! document deserializes into its k8s-openapi type and nothing is lost on the way back
//! (an unknown or misspelt field would be dropped, and so detected). Needs no server.

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use serde_json::Value;

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<Value> {
    let typed: T = serde_json::from_value(doc.clone())?;
    Ok(serde_json::to_value(typed)?)
}

/// Fails when some leaf of `original` is missing or different in `typed`.
fn ensure_subset(original: &Value, typed: &Value, path: &str) -> Result<()> {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let Some(w) = b.get(k) else {
                    bail!("field {path}.{k} is not part of the schema");
                };
                ensure_subset(v, w, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                ensure_subset(v, w, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        // Quantities and int-or-string values may be re-typed; compare their text.
        (a, b) if a.to_string().trim_matches('"') == b.to_string().trim_matches('"') => Ok(()),
        (a, b) => bail!("{path}: {a} became {b}"),
    }
}

#[test]
fn every_manifest_matches_the_kubernetes_schema() -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(kith_e2e::manifests_dir())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the example manifests, found {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let mut docs = 0;
        for de in serde_yaml::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(de)
                .with_context(|| format!("{}: not YAML", file.display()))?;
            if doc.is_null() {
                continue;
            }
            docs += 1;
            let kind = doc["kind"].as_str().unwrap_or_default();
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let typed = match (api_version, kind) {
                ("apps/v1", "Deployment") => roundtrip::<Deployment>(&doc),
                ("batch/v1", "Job") => roundtrip::<Job>(&doc),
                ("v1", "ConfigMap") => roundtrip::<ConfigMap>(&doc),
                ("v1", "Namespace") => roundtrip::<Namespace>(&doc),
                ("v1", "Secret") => roundtrip::<Secret>(&doc),
                ("v1", "Service") => roundtrip::<Service>(&doc),
                other => bail!("{}: add {other:?} to this test", file.display()),
            }
            .with_context(|| format!("{}: {kind}", file.display()))?;
            ensure_subset(&doc, &typed, kind).with_context(|| file.display().to_string())?;
        }
        assert!(docs > 0, "{} has no documents", file.display());
    }
    Ok(())
}
