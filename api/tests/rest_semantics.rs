//! The REST layer's Kubernetes semantics, exercised through `ApiService::handle` over the
//! in-memory store: no TLS, no process, real request/response bytes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use kith_api::auth::{Authenticator, User, MASTERS_GROUP};
use kith_api::handler::Api;
use kith_api::server::{ApiService, Peer};
use kith_api::store::memory::MemoryStore;
use serde_json::{json, Value};

struct Harness {
    svc: Arc<ApiService<MemoryStore>>,
    peer: Peer,
}

impl Harness {
    async fn new() -> Self {
        let svc = ApiService::new(
            Arc::new(Api::new(MemoryStore::default())),
            Authenticator::new([]),
        );
        let h = Harness {
            svc,
            peer: Peer {
                cert: None,
                trusted: Some(User::new("admin", [MASTERS_GROUP])),
            },
        };
        let (code, _) = h
            .call(
                Method::POST,
                "/api/v1/namespaces",
                "application/json",
                json!({"metadata": {"name": "t"}}),
            )
            .await;
        assert_eq!(code, 201);
        h
    }

    async fn raw(&self, method: Method, path: &str, ct: &str, body: Bytes) -> (u16, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(Full::new(body))
            .unwrap();
        let resp = self.svc.handle(req, &self.peer).await;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn call(&self, method: Method, path: &str, ct: &str, body: Value) -> (u16, Value) {
        let b = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        self.raw(method, path, ct, b).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, "application/json", Value::Null)
            .await
    }
}

fn deployment(name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

const DEPLOYS: &str = "/apis/apps/v1/namespaces/t/deployments";

#[tokio::test]
async fn generation_tracks_spec_and_status_only_changes_through_its_subresource() {
    let h = Harness::new().await;
    let (code, d) = h
        .call(
            Method::POST,
            DEPLOYS,
            "application/json",
            deployment("web", "nginx:1"),
        )
        .await;
    assert_eq!(code, 201, "{d}");
    assert_eq!(d["metadata"]["generation"], 1);
    assert!(d["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(d.get("status").is_none(), "status is cleared on create");

    // A status written through the main resource is ignored; through /status it sticks.
    let mut with_status = d.clone();
    with_status["status"] = json!({"replicas": 7});
    let (code, d2) = h
        .call(
            Method::PUT,
            &format!("{DEPLOYS}/web"),
            "application/json",
            with_status.clone(),
        )
        .await;
    assert_eq!(code, 200);
    assert!(d2.get("status").is_none());
    assert_eq!(
        d2["metadata"]["generation"], 1,
        "no spec change, no new generation"
    );
    let (code, d3) = h
        .call(
            Method::PUT,
            &format!("{DEPLOYS}/web/status"),
            "application/json",
            with_status,
        )
        .await;
    assert_eq!(code, 200, "{d3}");
    assert_eq!(d3["status"]["replicas"], 7);
    assert_eq!(d3["metadata"]["generation"], 1);

    let (code, d4) = h
        .call(
            Method::PATCH,
            &format!("{DEPLOYS}/web"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 3}}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(d4["metadata"]["generation"], 2);
    assert_eq!(d4["status"]["replicas"], 7, "a spec patch keeps the status");
}

#[tokio::test]
async fn stale_resource_version_conflicts_and_changes_nothing() {
    let h = Harness::new().await;
    let (_, cm) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/t/configmaps",
            "application/json",
            json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
        )
        .await;
    let mut v1 = cm.clone();
    v1["data"]["a"] = json!("2");
    let (code, _) = h
        .call(
            Method::PUT,
            "/api/v1/namespaces/t/configmaps/c",
            "application/json",
            v1,
        )
        .await;
    assert_eq!(code, 200);
    let mut stale = cm.clone();
    stale["data"]["a"] = json!("3");
    let (code, status) = h
        .call(
            Method::PUT,
            "/api/v1/namespaces/t/configmaps/c",
            "application/json",
            stale,
        )
        .await;
    assert_eq!(code, 409);
    assert_eq!(status["reason"], "Conflict");
    let (_, now) = h.get("/api/v1/namespaces/t/configmaps/c").await;
    assert_eq!(now["data"]["a"], "2");
    // Even a write that would change nothing is refused when its version is stale.
    let mut same_but_stale = now.clone();
    same_but_stale["metadata"]["resourceVersion"] = cm["metadata"]["resourceVersion"].clone();
    let (code, _) = h
        .call(
            Method::PUT,
            "/api/v1/namespaces/t/configmaps/c",
            "application/json",
            same_but_stale,
        )
        .await;
    assert_eq!(code, 409);
}

#[tokio::test]
async fn scale_subresource_reads_and_writes_replicas() {
    let h = Harness::new().await;
    h.call(
        Method::POST,
        DEPLOYS,
        "application/json",
        deployment("web", "nginx:1"),
    )
    .await;
    let (code, scale) = h.get(&format!("{DEPLOYS}/web/scale")).await;
    assert_eq!(code, 200);
    assert_eq!(
        (scale["kind"].as_str(), scale["spec"]["replicas"].as_i64()),
        (Some("Scale"), Some(2))
    );
    assert_eq!(scale["status"]["selector"], "app=web");
    let (code, s2) = h
        .call(
            Method::PATCH,
            &format!("{DEPLOYS}/web/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 5}}),
        )
        .await;
    assert_eq!(code, 200, "{s2}");
    assert_eq!(s2["spec"]["replicas"], 5);
    let (_, d) = h.get(&format!("{DEPLOYS}/web")).await;
    assert_eq!(d["spec"]["replicas"], 5);
    let (code, _) = h
        .call(
            Method::PATCH,
            &format!("{DEPLOYS}/web/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": -1}}),
        )
        .await;
    assert_eq!(code, 422);
}

#[tokio::test]
async fn binding_assigns_a_node_once() {
    let h = Harness::new().await;
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let (code, p) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/t/pods",
            "application/json",
            pod,
        )
        .await;
    assert_eq!(code, 201);
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(p["status"]["qosClass"], "BestEffort");
    let bind = |node: &str| json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": node}});
    let (code, _) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/t/pods/p/binding",
            "application/json",
            bind("n1"),
        )
        .await;
    assert_eq!(code, 201);
    let (code, st) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/t/pods/p/binding",
            "application/json",
            bind("n2"),
        )
        .await;
    assert_eq!(code, 409);
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("already assigned to node \"n1\""),
        "{st}"
    );
    let (_, p) = h.get("/api/v1/namespaces/t/pods/p").await;
    assert_eq!(p["spec"]["nodeName"], "n1");
}

#[tokio::test]
async fn graceful_pod_deletion_and_finalizers() {
    let h = Harness::new().await;
    let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}});
    h.call(
        Method::POST,
        "/api/v1/namespaces/t/pods",
        "application/json",
        pod,
    )
    .await;
    // A pod on a node is marked, not removed: its agent stops it first.
    let (code, p) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/t/pods/p",
            "application/json",
            Value::Null,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(h.get("/api/v1/namespaces/t/pods/p").await.0, 200);
    // Grace 0 (what the agent sends when the containers are gone) removes it.
    let (code, _) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/t/pods/p",
            "application/json",
            json!({"gracePeriodSeconds": 0}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(h.get("/api/v1/namespaces/t/pods/p").await.0, 404);

    // A finalizer holds an object until it is removed.
    let cm = json!({"metadata": {"name": "f", "finalizers": ["example.com/hold"]}});
    h.call(
        Method::POST,
        "/api/v1/namespaces/t/configmaps",
        "application/json",
        cm,
    )
    .await;
    let (code, c) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/t/configmaps/f",
            "application/json",
            Value::Null,
        )
        .await;
    assert_eq!(code, 200);
    assert!(c["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = h
        .call(
            Method::PATCH,
            "/api/v1/namespaces/t/configmaps/f",
            "application/merge-patch+json",
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        h.get("/api/v1/namespaces/t/configmaps/f").await.0,
        404,
        "last finalizer removed: gone"
    );
}

#[tokio::test]
async fn refused_requests_change_nothing() {
    let h = Harness::new().await;
    let cms = "/api/v1/namespaces/t/configmaps";
    let strict = format!("{cms}?fieldValidation=Strict");
    let dry = format!("{cms}?dryRun=All");
    let cases: Vec<(Method, &str, &str, Bytes, u16)> = vec![
        (
            Method::POST,
            cms,
            "application/json",
            Bytes::from_static(b"{not json"),
            400,
        ),
        (
            Method::POST,
            cms,
            "application/json",
            Bytes::from(json!({"metadata": {"name": "Bad_Name"}}).to_string()),
            422,
        ),
        (
            Method::POST,
            cms,
            "application/json",
            Bytes::from(json!({"kind": "Secret", "metadata": {"name": "x"}}).to_string()),
            400,
        ),
        (
            Method::POST,
            cms,
            "text/html",
            Bytes::from_static(b"<html>"),
            415,
        ),
        (
            Method::POST,
            cms,
            "application/json",
            Bytes::from(vec![b' '; 4 * 1024 * 1024]),
            413,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/nope/configmaps",
            "application/json",
            Bytes::from(json!({"metadata": {"name": "x"}}).to_string()),
            404,
        ),
        (
            Method::POST,
            &strict,
            "application/json",
            Bytes::from(json!({"metadata": {"name": "x"}, "bogus": 1}).to_string()),
            400,
        ),
        (
            Method::POST,
            &dry,
            "application/json",
            Bytes::from(json!({"metadata": {"name": "dry"}}).to_string()),
            201,
        ),
    ];
    for (method, path, ct, body, want) in cases {
        let (code, st) = h.raw(method.clone(), path, ct, body).await;
        assert_eq!(code, want, "{method} {path} {ct}: {st}");
        if want >= 400 {
            assert_eq!(st["kind"], "Status", "{st}");
            assert_eq!(st["code"], want);
        }
    }
    let (_, list) = h.get(cms).await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(0),
        "nothing was stored: {list}"
    );
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    let h = Harness::new().await;
    for i in 0..5 {
        h.call(
            Method::POST,
            "/api/v1/namespaces/t/configmaps",
            "application/json",
            json!({"metadata": {"name": format!("c{i}")}}),
        )
        .await;
    }
    let (_, p1) = h.get("/api/v1/namespaces/t/configmaps?limit=2").await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    assert_eq!(p1["metadata"]["remainingItemCount"], 3);
    let token = p1["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, p2) = h
        .get(&format!(
            "/api/v1/namespaces/t/configmaps?limit=2&continue={token}"
        ))
        .await;
    let names: Vec<&str> = p2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c2", "c3"]);
    assert_eq!(
        h.get("/api/v1/namespaces/t/configmaps?continue=garbage")
            .await
            .0,
        400
    );
}

/// Pages of an all-namespace list follow the store's (namespace, name) order, also when
/// one namespace's name is a prefix of another's ("a" < "a-b", though "a/…" > "a-b/…" as
/// strings); with a selector, pages hold selected objects only and no remaining count.
#[tokio::test]
async fn list_pages_across_namespaces_and_with_selectors() {
    let h = Harness::new().await;
    for ns in ["a", "a-b"] {
        h.call(
            Method::POST,
            "/api/v1/namespaces",
            "application/json",
            json!({"metadata": {"name": ns}}),
        )
        .await;
        for (name, tier) in [("x", "web"), ("z", "db"), ("y", "web")] {
            h.call(
                Method::POST,
                &format!("/api/v1/namespaces/{ns}/configmaps"),
                "application/json",
                json!({"metadata": {"name": name, "labels": {"tier": tier}}}),
            )
            .await;
        }
    }
    let walk = |query: &'static str| {
        let h = &h;
        async move {
            let mut seen = Vec::new();
            let mut remaining = Vec::new();
            let mut token = String::new();
            loop {
                let path = format!("/api/v1/configmaps?limit=1{query}&continue={token}");
                let (code, page) = h.get(&path).await;
                assert_eq!(code, 200, "{path}: {page}");
                for i in page["items"].as_array().unwrap() {
                    let m = &i["metadata"];
                    seen.push(format!(
                        "{}/{}",
                        m["namespace"].as_str().unwrap(),
                        m["name"].as_str().unwrap()
                    ));
                }
                remaining.push(page["metadata"]["remainingItemCount"].as_u64());
                match page["metadata"]["continue"].as_str() {
                    Some(t) => token = t.to_string(),
                    None => break,
                }
            }
            (seen, remaining)
        }
    };
    let (all, remaining) = walk("").await;
    assert_eq!(all, ["a/x", "a/y", "a/z", "a-b/x", "a-b/y", "a-b/z"]);
    assert_eq!(
        remaining,
        [Some(5), Some(4), Some(3), Some(2), Some(1), None]
    );
    let (web, remaining) = walk("&labelSelector=tier%3Dweb").await;
    assert_eq!(web, ["a/x", "a/y", "a-b/x", "a-b/y"]);
    assert!(remaining.iter().all(Option::is_none), "{remaining:?}");
}

async fn next_line(
    body: &mut http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
    buf: &mut Vec<u8>,
) -> Value {
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            return serde_json::from_slice(&line).unwrap();
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
}

#[tokio::test]
async fn watch_with_selector_sees_objects_enter_and_leave_and_initial_events_end_with_a_bookmark() {
    let h = Harness::new().await;
    let cms = "/api/v1/namespaces/t/configmaps";
    h.call(
        Method::POST,
        cms,
        "application/json",
        json!({"metadata": {"name": "a", "labels": {"app": "x"}}}),
    )
    .await;
    let req = Request::builder()
        .uri(format!("{cms}?watch=true&labelSelector=app%3Dx&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h.svc.handle(req, &h.peer).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let e = next_line(&mut body, &mut buf).await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("a"))
    );
    let e = next_line(&mut body, &mut buf).await;
    assert_eq!(e["type"], "BOOKMARK");
    assert_eq!(
        e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // Relabel away: the watcher sees DELETED; relabel back: ADDED.
    h.call(
        Method::PATCH,
        &format!("{cms}/a"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"app": "y"}}}),
    )
    .await;
    h.call(
        Method::POST,
        cms,
        "application/json",
        json!({"metadata": {"name": "other", "labels": {"app": "y"}}}),
    )
    .await;
    h.call(
        Method::PATCH,
        &format!("{cms}/a"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"app": "x"}}}),
    )
    .await;
    let e = next_line(&mut body, &mut buf).await;
    assert_eq!(e["type"], "DELETED");
    let e = next_line(&mut body, &mut buf).await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("a"))
    );
}

#[tokio::test]
async fn watch_from_a_compacted_version_reports_410_in_the_stream() {
    let store = MemoryStore::with_history(3);
    let svc = ApiService::new(Arc::new(Api::new(store)), Authenticator::new([]));
    let h = Harness {
        svc,
        peer: Peer {
            cert: None,
            trusted: Some(User::new("admin", [MASTERS_GROUP])),
        },
    };
    h.call(
        Method::POST,
        "/api/v1/namespaces",
        "application/json",
        json!({"metadata": {"name": "t"}}),
    )
    .await;
    for i in 0..10 {
        h.call(
            Method::POST,
            "/api/v1/namespaces/t/configmaps",
            "application/json",
            json!({"metadata": {"name": format!("c{i}")}}),
        )
        .await;
    }
    let req = Request::builder()
        .uri("/api/v1/namespaces/t/configmaps?watch=true&resourceVersion=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h.svc.handle(req, &h.peer).await;
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let e = next_line(&mut body, &mut buf).await;
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
}

#[tokio::test]
async fn requests_without_credentials_are_unauthorized() {
    let svc = ApiService::new(
        Arc::new(Api::new(MemoryStore::default())),
        Authenticator::new([(
            "secret-token".to_string(),
            User::new("admin", [MASTERS_GROUP]),
        )]),
    );
    let anon = Peer::default();
    let req = Request::builder()
        .uri("/api/v1/namespaces")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(svc.handle(req, &anon).await.status(), 401);
    let req = Request::builder()
        .uri("/api/v1/namespaces")
        .header("authorization", "Bearer secret-token")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(svc.handle(req, &anon).await.status(), 200);
    let req = Request::builder()
        .uri("/readyz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        svc.handle(req, &anon).await.status(),
        200,
        "health is public"
    );
}

#[tokio::test]
async fn server_side_apply_creates_and_updates_in_one_write_each() {
    let h = Harness::new().await;
    let cms = "/api/v1/namespaces/t/configmaps";
    let revision = |v: &Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = revision(&h.get(cms).await.1);
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"a": "1"}});
    let path = format!("{cms}/s?fieldManager=tester");
    let (code, c) = h
        .call(
            Method::PATCH,
            &path,
            "application/apply-patch+yaml",
            applied.clone(),
        )
        .await;
    assert_eq!(code, 201, "{c}");
    assert_eq!(
        revision(&c),
        before + 1,
        "created with its field ownership in one write"
    );
    let mf = &c["metadata"]["managedFields"][0];
    assert_eq!(
        (mf["manager"].as_str(), mf["operation"].as_str()),
        (Some("tester"), Some("Apply"))
    );
    let mut changed = applied;
    changed["data"]["a"] = json!("2");
    let (code, c2) = h
        .call(
            Method::PATCH,
            &path,
            "application/apply-patch+yaml",
            changed,
        )
        .await;
    assert_eq!(code, 200, "{c2}");
    assert_eq!(revision(&c2), revision(&c) + 1, "one write per apply");
    assert_eq!(c2["metadata"]["managedFields"][0]["operation"], "Apply");
    // Another manager changing an applied field conflicts unless forced.
    let other = format!("{cms}/s?fieldManager=other");
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"a": "3"}});
    let (code, st) = h
        .call(
            Method::PATCH,
            &other,
            "application/apply-patch+yaml",
            theirs.clone(),
        )
        .await;
    assert_eq!(code, 409, "{st}");
    assert_eq!(st["details"]["causes"][0]["type"], "FieldManagerConflict");
    assert_eq!(
        h.get(&format!("{cms}/s")).await.1["data"]["a"],
        "2",
        "a conflict changes nothing"
    );
    let (code, _) = h
        .call(
            Method::PATCH,
            &format!("{other}&force=true"),
            "application/apply-patch+yaml",
            theirs,
        )
        .await;
    assert_eq!(code, 200);
}
