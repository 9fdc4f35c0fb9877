//! An object on its way into the store, as JSON text, and the one edit the store makes to
//! it: stamping `metadata.resourceVersion`.
//!
//! ```text
//!  api handler: Value ──ObjectJson::from──▶ text (serialized once)
//!    └▶ WriteOp ──▶ Raft entry ──▶ log (redb), AppendEntries ×followers, forwarded writes
//!                   (the text travels as one JSON string: copied and escaped, never
//!                    rebuilt as a tree; cloning it is a reference count)
//!       ──▶ every replica: stamp(text, revision) ──▶ stored bytes
//! ```
//!
//! A write used to carry a `serde_json::Value`: every log append, every AppendEntries to
//! every follower and every forwarded write walked or rebuilt the tree (an allocation per
//! node), on every box. The text form costs one serialization in the API layer.
//!
//! Stamping splices the revision into the text when the text is what serde_json writes
//! for a `Value` (compact, keys unescaped), which is what the API layer and older log
//! entries hold; anything else goes the long way through a `Value`. Both ways give the
//! same bytes for such text (tested against each other), so replicas agree whichever way
//! they took.

use std::fmt;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{Result, StoreError};

/// A JSON object as text (UTF-8, as serde_json wrote it).
#[derive(Clone, PartialEq, Eq)]
pub struct ObjectJson(Bytes);

impl ObjectJson {
    /// Text made elsewhere (e.g. read back from the store). It must be JSON; if it is not,
    /// applying the write fails on every replica alike.
    pub fn from_text(text: impl Into<Bytes>) -> Self {
        ObjectJson(text.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The object as a tree (tests and the rare caller that needs one).
    pub fn to_value(&self) -> Result<Value> {
        serde_json::from_slice(&self.0)
            .map_err(|e| StoreError::Internal(format!("object is not JSON: {e}")))
    }
}

impl From<&Value> for ObjectJson {
    fn from(v: &Value) -> Self {
        // Writing a `Value` cannot fail: its map keys are strings and it has no fallible
        // `Serialize`; should it ever, the empty text is refused when applied.
        ObjectJson(Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
    }
}

impl From<Value> for ObjectJson {
    fn from(v: Value) -> Self {
        ObjectJson::from(&v)
    }
}

impl fmt::Debug for ObjectJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(&self.0), f)
    }
}

/// On the wire and in the log: a JSON string holding the text.
impl Serialize for ObjectJson {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            // Not made by `From<Value>` nor read from a string: keep it as the tree it
            // holds, or as what it is if it is not JSON at all.
            Err(_) => s.serialize_str(&String::from_utf8_lossy(&self.0)),
        }
    }
}

/// Reads the string form, and the object form log entries written before it (the object
/// inline, as a JSON tree), which becomes its text.
impl<'de> Deserialize<'de> for ObjectJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(text) => Ok(ObjectJson(Bytes::from(text))),
            tree => Ok(ObjectJson::from(&tree)),
        }
    }
}

/// Set `metadata.resourceVersion` of the object `json` to `revision`: the stored bytes.
pub fn stamp(json: &[u8], revision: u64) -> Result<Bytes> {
    if let Some(stamped) = splice(json, revision) {
        return Ok(stamped);
    }
    let object: Value = serde_json::from_slice(json)
        .map_err(|e| StoreError::Internal(format!("object is not JSON: {e}")))?;
    stamp_value(object, revision)
}

/// The long way: through a tree.
pub fn stamp_value(mut object: Value, revision: u64) -> Result<Bytes> {
    let meta = object
        .as_object_mut()
        .ok_or_else(|| StoreError::Internal("object is not a JSON object".into()))?
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| StoreError::Internal("metadata is not a JSON object".into()))?;
    meta.insert(
        "resourceVersion".into(),
        Value::String(revision.to_string()),
    );
    let mut json = serde_json::to_vec(&object).map_err(|e| StoreError::Internal(e.to_string()))?;
    // The state keeps these bytes for the object's whole life; the serializer's amortized
    // growth leaves up to half of the buffer unused.
    json.shrink_to_fit();
    Ok(Bytes::from(json))
}

/// The short way, for the text serde_json writes for a `Value` (with `preserve_order`, as
/// this workspace builds it): valid JSON, no whitespace between tokens, no escape in the
/// keys it looks at, no repeated `metadata` or `resourceVersion` key. `None` for anything
/// else (the long way then decides, errors included).
///
/// What the tree would do, done on the text: an existing `resourceVersion` keeps its
/// place and gets the new value; a new one goes last in `metadata`; a missing `metadata`
/// goes last in the object.
fn splice(json: &[u8], revision: u64) -> Option<Bytes> {
    // Valid JSON first, so the scan below may assume it (no tree is built).
    serde_json::from_slice::<IgnoredAny>(json).ok()?;
    let top = members(json, 0)?;
    let mut metadata = None;
    for m in &top.members {
        if m.key == b"metadata" {
            if metadata.is_some() {
                return None;
            }
            metadata = Some(m.value);
        }
    }
    let value = format!("\"{revision}\"");
    let mut out = Vec::with_capacity(json.len() + value.len() + 32);
    match metadata {
        None => {
            let member = format!("\"metadata\":{{\"resourceVersion\":{value}}}");
            append_member(&mut out, json, top.end, !top.members.is_empty(), &member);
        }
        Some((start, _)) => {
            if json[start] != b'{' {
                return None;
            }
            let meta = members(json, start)?;
            let mut rv = None;
            for m in &meta.members {
                if m.key == b"resourceVersion" {
                    if rv.is_some() {
                        return None;
                    }
                    rv = Some(m.value);
                }
            }
            match rv {
                Some((from, to)) => {
                    out.extend_from_slice(&json[..from]);
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(&json[to..]);
                }
                None => {
                    let member = format!("\"resourceVersion\":{value}");
                    append_member(&mut out, json, meta.end, !meta.members.is_empty(), &member);
                }
            }
        }
    }
    Some(Bytes::from(out))
}

/// `json` with `member` (`"key":value`) added last to the object that ends at `end`
/// (just past its `}`), after a comma when the object has members already.
fn append_member(out: &mut Vec<u8>, json: &[u8], end: usize, has_members: bool, member: &str) {
    let at = end - 1;
    out.extend_from_slice(&json[..at]);
    if has_members {
        out.push(b',');
    }
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(&json[at..]);
}

/// The raw text of the top-level member `key` of the object `json`, for text as serde_json
/// writes it (see [`stamp`]); `Some(None)` when the object has no such member, `None` when
/// the text is not of that form (the caller then parses it).
pub fn top_member<'a>(json: &'a [u8], key: &str) -> Option<Option<&'a [u8]>> {
    let top = members(json, 0)?;
    if top.end != json.len() {
        return None;
    }
    let mut found = None;
    for m in &top.members {
        if m.key == key.as_bytes() {
            if found.is_some() {
                return None;
            }
            found = Some(&json[m.value.0..m.value.1]);
        }
    }
    Some(found)
}

/// One member of an object in the text: its key (between the quotes) and where its value
/// starts and ends.
struct Member<'a> {
    key: &'a [u8],
    value: (usize, usize),
}

/// The members of the object starting at `at`, and the index just past its `}`.
struct Members<'a> {
    members: Vec<Member<'a>>,
    end: usize,
}

/// The members of the compact, valid JSON object at `json[at]`; `None` if it is not an
/// object, has whitespace between tokens, or a key with an escape.
fn members(json: &[u8], at: usize) -> Option<Members<'_>> {
    let mut i = at;
    if *json.get(i)? != b'{' {
        return None;
    }
    i += 1;
    let mut members = Vec::new();
    if *json.get(i)? == b'}' {
        return Some(Members {
            members,
            end: i + 1,
        });
    }
    loop {
        if *json.get(i)? != b'"' {
            return None;
        }
        let key_end = string_end(json, i)?;
        let key = &json[i + 1..key_end - 1];
        if key.contains(&b'\\') {
            return None;
        }
        i = key_end;
        if *json.get(i)? != b':' {
            return None;
        }
        i += 1;
        let value_end = value_end(json, i)?;
        members.push(Member {
            key,
            value: (i, value_end),
        });
        i = value_end;
        match *json.get(i)? {
            b',' => i += 1,
            b'}' => {
                return Some(Members {
                    members,
                    end: i + 1,
                })
            }
            _ => return None,
        }
    }
}

/// Just past the closing quote of the string whose opening quote is at `json[at]`.
fn string_end(json: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match *json.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Just past the value starting at `json[at]` (valid JSON assumed; `None` on whitespace).
fn value_end(json: &[u8], at: usize) -> Option<usize> {
    match *json.get(at)? {
        b'"' => string_end(json, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match *json.get(i)? {
                    b'"' => {
                        i = string_end(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    b' ' | b'\t' | b'\n' | b'\r' => return None,
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            // A number, true, false or null: up to the next delimiter.
            let mut i = at;
            while let Some(&b) = json.get(i) {
                match b {
                    b',' | b'}' | b']' => break,
                    b' ' | b'\t' | b'\n' | b'\r' => return None,
                    _ => i += 1,
                }
            }
            Some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The short way gives the long way's bytes, or leaves the text to it.
    #[test]
    fn splice_agrees_with_the_tree() {
        let objects = [
            json!({}),
            json!({"metadata": {}}),
            json!({"metadata": {"name": "a"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "a", "resourceVersion": "7", "uid": "u"},
                   "data": {"k": "v \"quoted\" \\ {not} [a] , : brace"}}),
            json!({"data": {"metadata": {"resourceVersion": "1"}}, "metadata": {"labels": {"resourceVersion": "x"}}}),
            json!({"kind": "Pod", "spec": {"containers": [{"name": "c", "args": ["{", "]", "\""]}]},
                   "metadata": {"managedFields": [{"fieldsV1": {"f:data": {".": {}}}}], "generation": 1.5}}),
            json!({"a": [1, 2, {"b": null}], "c": true, "d": -0.25, "e": 12345678901234567u64}),
            json!({"metadata": {"ünïcödé": "ß", "emoji": "🦀\u{0001}"}}),
        ];
        for (n, object) in objects.iter().enumerate() {
            let text = serde_json::to_vec(object).expect("ser");
            let short = splice(&text, 42_003);
            assert!(short.is_some(), "case {n}: the short way declined");
            let long = stamp_value(object.clone(), 42_003).expect("long way");
            assert_eq!(
                String::from_utf8_lossy(&short.expect("short")),
                String::from_utf8_lossy(&long),
                "case {n}"
            );
            // stamp() itself, and the result is JSON with the revision in place.
            let stamped: Value = serde_json::from_slice(&stamp(&text, 42_003).expect("stamp"))
                .expect("stamped is JSON");
            assert_eq!(stamped["metadata"]["resourceVersion"], "42003", "case {n}");
        }
    }

    /// Text serde_json would not write for a tree goes the long way (or fails the same way
    /// on every replica).
    #[test]
    fn unusual_text_goes_the_long_way() {
        let cases: [(&str, Option<&str>); 9] = [
            (
                r#"{ "metadata": {} }"#,
                Some(r#"{"metadata":{"resourceVersion":"5"}}"#),
            ),
            (
                r#"{"metadata":{"resourceVersion":"1","resourceVersion":"2"}}"#,
                Some(r#"{"metadata":{"resourceVersion":"5"}}"#),
            ),
            (
                r#"{"metadata":{"a":1},"metadata":{"b":2}}"#,
                Some(r#"{"metadata":{"b":2,"resourceVersion":"5"}}"#),
            ),
            (
                r#"{"meta\u0064ata":{"a":1}}"#,
                Some(r#"{"metadata":{"a":1,"resourceVersion":"5"}}"#),
            ),
            (r#"{"metadata":[1]}"#, None),
            (r#"{"metadata":"x"}"#, None),
            (r#"[1,2]"#, None),
            (r#"{"metadata":{}"#, None),
            ("", None),
        ];
        for (text, want) in cases {
            assert!(splice(text.as_bytes(), 5).is_none(), "{text}: short way");
            let got = stamp(text.as_bytes(), 5);
            match want {
                Some(w) => assert_eq!(String::from_utf8_lossy(&got.expect("stamped")), w, "{text}"),
                None => assert!(
                    matches!(got, Err(StoreError::Internal(_))),
                    "{text}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn top_member_table() {
        let cases: [(&str, Option<Option<&str>>); 6] = [
            (
                r#"{"a":1,"metadata":{"b":[1,"}"]},"c":"x"}"#,
                Some(Some(r#"{"b":[1,"}"]}"#)),
            ),
            (r#"{"a":1}"#, Some(None)),
            (r#"{}"#, Some(None)),
            (r#"{"metadata":{},"metadata":{}}"#, None),
            (r#"{ "metadata":{}}"#, None),
            (r#"{"metadata":{}}x"#, None),
        ];
        for (text, want) in cases {
            let got = top_member(text.as_bytes(), "metadata")
                .map(|m| m.map(|v| std::str::from_utf8(v).expect("utf8")));
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn object_json_travels_as_a_string_and_reads_the_old_inline_form() {
        let object = json!({"metadata": {"name": "a"}, "data": {"k": "\"v\""}});
        let text = ObjectJson::from(&object);
        let wire = serde_json::to_string(&text).expect("ser");
        assert_eq!(
            wire,
            r#""{\"metadata\":{\"name\":\"a\"},\"data\":{\"k\":\"\\\"v\\\"\"}}""#
        );
        let back: ObjectJson = serde_json::from_str(&wire).expect("de");
        assert_eq!(back, text);
        // What log entries written before the text form hold: the tree inline.
        let old: ObjectJson =
            serde_json::from_str(r#"{"metadata":{"name":"a"},"data":{"k":"\"v\""}}"#)
                .expect("old form");
        assert_eq!(old, text);
        assert_eq!(old.to_value().expect("tree"), object);
    }
}
