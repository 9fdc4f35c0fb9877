//! Watch: turns the store's event stream for one resource into the Kubernetes watch
//! protocol — newline-delimited `{"type","object"}` JSON, filtered by selectors, rendered
//! as objects, metadata or Table rows, with bookmarks and a timeout.
//!
//! ```text
//!  ObjectStore::watch ──▶ WatchStream ──▶ selector transitions ──▶ render ──▶ mpsc<Bytes> ──▶ HTTP body
//!                                           (ADDED/MODIFIED/DELETED)   (BOOKMARK every interval)
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::{ApiError, Result};
use crate::handler::{selected, selectors, Api};
use crate::kinds::Kind;
use crate::request::{Query, ResourceRoute};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{EventType, ObjectStore, WatchFrom};
use crate::table::{self, IncludeObject};

/// How often an idle watch that asked for bookmarks gets one.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
/// Watches end after this long unless the client asked for less (clients re-watch).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How objects are rendered in replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Render {
    Object,
    /// `meta.k8s.io/v1` PartialObjectMetadata(List).
    Metadata,
    Table(IncludeObject),
}

impl Render {
    /// Decide from the Accept header (and `includeObject`).
    pub fn from_accept(accept: Option<&str>, include: Option<&str>) -> Result<Render> {
        let Some(accept) = accept else {
            return Ok(Render::Object);
        };
        for part in accept.split(',') {
            let params: Vec<&str> = part.split(';').map(str::trim).collect();
            let has = |p: &str| params.contains(&p);
            if has("as=Table") && has("g=meta.k8s.io") {
                let inc = match include {
                    Some(s) => s.parse().map_err(|e: table::BadIncludeObject| {
                        ApiError::BadRequest(e.to_string())
                    })?,
                    None => IncludeObject::default(),
                };
                return Ok(Render::Table(inc));
            }
            if (has("as=PartialObjectMetadata") || has("as=PartialObjectMetadataList"))
                && has("g=meta.k8s.io")
            {
                return Ok(Render::Metadata);
            }
            let essence = params.first().copied().unwrap_or("");
            if matches!(
                essence,
                "application/json" | "*/*" | "application/*" | "application/yaml"
            ) {
                return Ok(Render::Object);
            }
        }
        Ok(Render::Object)
    }
}

pub fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

/// Render a list reply body.
pub fn render_list(
    kind: &Kind,
    items: Vec<Value>,
    list_meta: Value,
    render: Render,
    now: jiff::Timestamp,
) -> Value {
    match render {
        Render::Object => {
            json!({"kind": kind.list_kind(), "apiVersion": kind.api_version(), "metadata": list_meta, "items": items})
        }
        Render::Metadata => json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "items": items.iter().map(partial_metadata).collect::<Vec<_>>(),
        }),
        Render::Table(inc) => table::table(kind, &items, inc, list_meta, now),
    }
}

/// Render one object reply body.
pub fn render_object(kind: &Kind, obj: Value, render: Render, now: jiff::Timestamp) -> Value {
    match render {
        Render::Object => obj,
        Render::Metadata => partial_metadata(&obj),
        Render::Table(inc) => table::table(kind, std::slice::from_ref(&obj), inc, json!({}), now),
    }
}

fn line(ty: &str, object: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(kind: &Kind, revision: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": meta})
}

/// Start a watch; the receiver yields the response body's chunks until the watch ends.
pub fn start<S: ObjectStore>(
    api: &Arc<Api<S>>,
    r: &ResourceRoute,
    q: &Query,
    render: Render,
) -> Result<mpsc::Receiver<Bytes>> {
    let (labels, fields) = selectors(r.kind, q)?;
    let rv = q.resource_version.as_deref();
    let from = match (rv, q.send_initial_events) {
        (_, true) | (None, _) | (Some("0"), _) => WatchFrom::Now,
        (Some(v), false) => WatchFrom::Revision(
            v.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {v}")))?,
        ),
    };
    let (tx, rx) = mpsc::channel(256);
    let kind = r.kind;
    let now = api.now();
    let watch = match api
        .store
        .watch(&kind.resource(), r.namespace.as_deref(), from)
    {
        Ok(w) => w,
        Err(e) => {
            // Kubernetes reports a too-old version inside a 200 watch stream.
            let status = ApiError::from_store(
                e,
                crate::error::Target {
                    group: kind.group.into(),
                    resource: kind.plural.into(),
                    kind: kind.kind.into(),
                    name: String::new(),
                },
            )
            .status();
            let _ = tx.try_send(line("ERROR", status));
            return Ok(rx);
        }
    };
    let timeout = q.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let bookmarks = q.allow_watch_bookmarks;
    let initial_end = q.send_initial_events;
    let api = api.clone();
    tokio::spawn(async move {
        let mut events = watch.events;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for obj in watch.initial {
            let Ok(v) = serde_json::from_slice::<Value>(&obj) else {
                continue;
            };
            if selected(&v, &labels, &fields)
                && tx
                    .send(line("ADDED", render_object(kind, v, render, now)))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if initial_end
            && tx
                .send(line("BOOKMARK", bookmark(kind, watch.revision, true)))
                .await
                .is_err()
        {
            return;
        }
        let mut tick = tokio::time::interval(BOOKMARK_INTERVAL);
        tick.reset();
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    // Read the revision before asking whether we are caught up (see `caught_up`).
                    let rev = api.store.revision();
                    if events.caught_up() && tx.send(line("BOOKMARK", bookmark(kind, rev.max(events.revision()), false))).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                ev = events.next() => {
                    let Some(ev) = ev else { return };
                    let out = match ev {
                        Ok(ev) => transition(kind, &ev, &labels, &fields, render),
                        Err(e) => {
                            let status = ApiError::from_store(e, crate::error::Target {
                                group: kind.group.into(), resource: kind.plural.into(), kind: kind.kind.into(), name: String::new(),
                            }).status();
                            let _ = tx.send(line("ERROR", status)).await;
                            return;
                        }
                    };
                    if let Some(out) = out {
                        if tx.send(out).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// The line of a watcher without selectors, built from the stored text: every event is
/// passed on as what it is, and the object (or its metadata) is already the JSON that
/// parsing and writing it again would give. The in-process controllers' watches are of
/// this kind (the garbage collector's cover every kind), so this runs for every write.
/// `None` when it cannot tell (a table, text of another form): the caller parses.
fn unselected_line(ev: &crate::store::StoreEvent, render: Render) -> Option<Bytes> {
    let ty = ev.kind.as_str();
    let mut out = Vec::with_capacity(ev.object.len() + 128);
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(br#"","object":"#);
    match render {
        Render::Object => out.extend_from_slice(&ev.object),
        Render::Metadata => {
            let meta = crate::store::object::top_member(&ev.object, "metadata")?;
            out.extend_from_slice(
                br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#,
            );
            out.extend_from_slice(meta.unwrap_or(b"{}"));
            out.push(b'}');
        }
        Render::Table(_) => return None,
    }
    out.extend_from_slice(b"}\n");
    Some(Bytes::from(out))
}

/// The watch event a store event becomes for a watcher with these selectors: an object that
/// starts matching is ADDED, one that stops matching is DELETED.
fn transition(
    kind: &Kind,
    ev: &crate::store::StoreEvent,
    labels: &LabelSelector,
    fields: &FieldSelector,
    render: Render,
) -> Option<Bytes> {
    if *labels == LabelSelector::everything() && fields.is_empty() {
        if let Some(line) = unselected_line(ev, render) {
            return Some(line);
        }
    }
    selected_line(kind, ev, labels, fields, render)
}

/// [`transition`] through a parsed object: the selectors decide.
fn selected_line(
    kind: &Kind,
    ev: &crate::store::StoreEvent,
    labels: &LabelSelector,
    fields: &FieldSelector,
    render: Render,
) -> Option<Bytes> {
    let now = jiff::Timestamp::now();
    let obj: Value = serde_json::from_slice(&ev.object).ok()?;
    let was = ev
        .prev
        .as_ref()
        .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        .is_some_and(|p| selected(&p, labels, fields));
    let is = selected(&obj, labels, fields);
    let ty = match (ev.kind, was, is) {
        (EventType::Deleted, true, _) => "DELETED",
        (EventType::Deleted, false, _) => return None,
        (_, false, true) => "ADDED",
        (_, true, true) => "MODIFIED",
        (_, true, false) => "DELETED",
        (_, false, false) => return None,
    };
    Some(line(ty, render_object(kind, obj, render, now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ObjectKey, Resource, StoreEvent};

    /// Without selectors, lines made from the stored text are the lines the parsing path
    /// makes.
    #[test]
    fn unselected_lines_match_the_parsing_path() {
        let kind = crate::kinds::by_resource("", "v1", "configmaps").expect("configmaps");
        let object = |rv: &str| {
            let v = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "namespace": "default", "resourceVersion": rv,
                    "labels": {"app": "x"}, "managedFields": [{"manager": "m", "fieldsV1": {"f:data": {}}}]},
                "data": {"k": "v \"q\" {}"}});
            Bytes::from(serde_json::to_vec(&v).expect("ser"))
        };
        let no_meta = Bytes::from_static(br#"{"kind":"ConfigMap","data":{}}"#);
        let key = Arc::new(ObjectKey::new(
            Resource::new("", "configmaps"),
            "default",
            "a",
        ));
        let event = |kind, object: Bytes, prev: Option<Bytes>| StoreEvent {
            revision: 7,
            kind,
            key: key.clone(),
            object,
            prev,
        };
        let events = [
            event(EventType::Added, object("7"), None),
            event(EventType::Modified, object("8"), Some(object("7"))),
            event(EventType::Deleted, object("9"), Some(object("8"))),
            event(EventType::Added, no_meta, None),
        ];
        let (labels, fields) = (LabelSelector::everything(), FieldSelector::default());
        for ev in &events {
            for render in [Render::Object, Render::Metadata] {
                let fast = unselected_line(ev, render).expect("fast line");
                let slow = selected_line(kind, ev, &labels, &fields, render).expect("slow line");
                assert_eq!(
                    String::from_utf8_lossy(&fast),
                    String::from_utf8_lossy(&slow),
                    "{:?} {render:?}",
                    ev.kind
                );
            }
        }
        assert!(unselected_line(&events[0], Render::Table(IncludeObject::None)).is_none());
    }
}
