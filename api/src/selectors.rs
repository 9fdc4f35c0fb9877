//! Label and field selectors: the `labelSelector` / `fieldSelector` query parameters of list
//! and watch, and the `metav1.LabelSelector` objects controllers match pods with.
//!
//! ```text
//!  "app in (web,api),!canary"  --LabelSelector::parse-->  [Requirement]  --matches(labels)--> bool
//!  {"matchLabels":..,"matchExpressions":..}  --LabelSelector::from_json--^
//!  "metadata.name=x,status.phase!=Running"  --FieldSelector::parse--> [FieldTerm]
//!                                   --validate(kind)--> 400 or ok --matches(object)--> bool
//! ```
//!
//! The grammar, the error texts and the edge cases (`x in ()` selects the empty value,
//! `in`/`notin` are ordinary words in value position, field values escape `\,` `\=` `\\`)
//! follow apimachinery's `labels` and `fields` packages, because clients print our messages
//! verbatim and scripts rely on the same inputs being accepted.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::kinds::Kind;

/// A selector the client sent that kith cannot use; always a 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label selector that does not parse or names an invalid key or value.
    #[error("{0}")]
    Label(String),
    /// A field selector that does not parse.
    #[error("{0}")]
    Field(String),
    /// A field selector on a field the kind does not index.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

impl SelectorError {
    pub fn into_api(self) -> ApiError {
        ApiError::BadRequest(self.to_string())
    }
}

type Result<T, E = SelectorError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------

/// How a requirement relates a label key to its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// `key>5`: the label parses as an integer greater than the value.
    GreaterThan,
    /// `key<5`.
    LessThan,
}

/// One clause of a label selector; a selector is the AND of its requirements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// One value for the exact-match and comparison operators, at least one for `In`/`NotIn`,
    /// none for `Exists`/`DoesNotExist`.
    pub values: Vec<String>,
}

impl Requirement {
    /// Builds a requirement, checking the key, the values and their count the way
    /// apimachinery's `NewRequirement` does (its field paths appear in the messages).
    fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, String> {
        let mut errs = Vec::new();
        let key_errs = label_key_errors(key);
        if !key_errs.is_empty() {
            errs.push(invalid("key", &quote(key), &key_errs.join("; ")));
        }
        let list = || serde_json::to_string(&values).unwrap_or_default();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => errs.push(invalid(
                "values",
                &list(),
                "for 'in', 'notin' operators, values set can't be empty",
            )),
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                errs.push(invalid(
                    "values",
                    &list(),
                    "exact-match compatibility requires one single value",
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errs.push(invalid(
                "values",
                &list(),
                "values set must be empty for exists and does not exist",
            )),
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(invalid(
                        "values",
                        &list(),
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(invalid(
                            &format!("values[{i}]"),
                            &quote(v),
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let value_errs = label_value_errors(v);
            if !value_errs.is_empty() {
                errs.push(invalid(
                    &format!("values[{i}][{key}]"),
                    &quote(v),
                    &value_errs.join("; "),
                ));
            }
        }
        match errs.len() {
            0 => Ok(Requirement {
                key: key.to_string(),
                operator,
                values,
            }),
            1 => Err(errs.remove(0)),
            _ => Err(format!("[{}]", errs.join(", "))),
        }
    }

    /// Whether `labels` (an object's `metadata.labels`) satisfy this requirement.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        let value = labels.get(&self.key).map(label_text);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(|v| self.values.contains(&v))
            }
            Operator::NotEquals | Operator::NotIn => {
                value.is_none_or(|v| !self.values.contains(&v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), Some(want)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// Labels are strings on the wire; anything else (a client bug) is compared by its JSON text.
fn label_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl fmt::Display for Requirement {
    /// The canonical form apimachinery prints: `!k`, `k`, `k=v`, `k in (a,b)`, sorted values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.operator {
            Operator::DoesNotExist => return write!(f, "!{}", self.key),
            Operator::Exists => return write!(f, "{}", self.key),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
        };
        let mut values = self.values.clone();
        values.sort();
        if matches!(self.operator, Operator::In | Operator::NotIn) {
            write!(f, "{}{op}({})", self.key, values.join(","))
        } else {
            write!(f, "{}{op}{}", self.key, values.join(","))
        }
    }
}

/// A parsed label selector: the AND of its requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    /// A null `metav1.LabelSelector` selects nothing, unlike an empty one (everything).
    nothing: bool,
}

impl LabelSelector {
    /// The selector that matches every object (the empty string).
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// Parses the `labelSelector` query syntax, e.g. `app=web,tier in (a,b),!canary`.
    pub fn parse(s: &str) -> Result<Self> {
        let items = lex(s);
        let mut p = Parser {
            items: &items,
            pos: 0,
        };
        let mut requirements = p.parse().map_err(SelectorError::Label)?;
        // Sorted so that equal selectors compare and print equal, as apimachinery does.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// Converts a `metav1.LabelSelector` (`{matchLabels, matchExpressions}`) as found in a
    /// Deployment or Service. JSON null selects nothing; `{}` selects everything.
    pub fn from_json(selector: &Value) -> Result<Self> {
        let obj = match selector {
            Value::Null => {
                return Ok(LabelSelector {
                    requirements: Vec::new(),
                    nothing: true,
                })
            }
            Value::Object(o) => o,
            other => {
                return Err(SelectorError::Label(format!(
                    "label selector must be an object, got {other}"
                )))
            }
        };
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (k, v) in labels {
                    let v = v.as_str().ok_or_else(|| {
                        SelectorError::Label(format!("matchLabels[{k}] must be a string, got {v}"))
                    })?;
                    requirements.push(
                        Requirement::new(k, Operator::Equals, vec![v.to_string()])
                            .map_err(SelectorError::Label)?,
                    );
                }
            }
            Some(other) => {
                return Err(SelectorError::Label(format!(
                    "matchLabels must be an object, got {other}"
                )))
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for e in exprs {
                    requirements.push(expression(e)?);
                }
            }
            Some(other) => {
                return Err(SelectorError::Label(format!(
                    "matchExpressions must be a list, got {other}"
                )))
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// Whether an object with these `metadata.labels` is selected (pass an empty map when the
    /// object has no labels).
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Matches every object.
    pub fn is_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// One `matchExpressions` entry.
fn expression(e: &Value) -> Result<Requirement> {
    let bad = |m: String| SelectorError::Label(m);
    let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
    let op = e
        .get("operator")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let operator = match op {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(bad(format!(
                "{} is not a valid label selector operator",
                quote(other)
            )))
        }
    };
    let values = match e.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("values must be strings, got {v}")))
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(bad(format!("values must be a list, got {other}"))),
    };
    Requirement::new(key, operator, values).map_err(bad)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    End,
    OpenPar,
    ClosedPar,
    Comma,
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    Gt,
    Lt,
    In,
    NotIn,
    Ident,
}

/// Maps an operator spelling to its token; the lexer grows symbol runs while this matches.
fn symbol(s: &str) -> Option<Token> {
    Some(match s {
        "(" => Token::OpenPar,
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        "!" => Token::Not,
        "=" => Token::Equals,
        "==" => Token::DoubleEquals,
        "!=" => Token::NotEquals,
        ">" => Token::Gt,
        "<" => Token::Lt,
        _ => return None,
    })
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Splits a selector into tokens, ending with `End`. Never fails: every run of special
/// characters starts with a one-character token.
fn lex(s: &str) -> Vec<(Token, &str)> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        if i == bytes.len() {
            out.push((Token::End, ""));
            return out;
        }
        let start = i;
        if is_special(bytes[i]) {
            // Longest operator: "!=" is one token, "=!" two.
            let mut best = (Token::End, start);
            while i < bytes.len() && is_special(bytes[i]) {
                match symbol(&s[start..=i]) {
                    Some(t) => best = (t, i + 1),
                    None => break,
                }
                i += 1;
            }
            i = best.1;
            out.push((best.0, &s[start..i]));
        } else {
            while i < bytes.len() && !is_special(bytes[i]) && !is_space(bytes[i]) {
                i += 1;
            }
            let word = &s[start..i];
            let tok = match word {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Ident,
            };
            out.push((tok, word));
        }
    }
}

struct Parser<'a> {
    items: &'a [(Token, &'a str)],
    pos: usize,
}

/// Where `in` and `notin` are keywords; elsewhere (keys, values) they are plain words.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Operator,
    Value,
}

impl<'a> Parser<'a> {
    fn peek(&self, ctx: Ctx) -> (Token, &'a str) {
        // `lex` always ends with End, and nothing consumes past it.
        let (t, lit) = self
            .items
            .get(self.pos)
            .copied()
            .unwrap_or((Token::End, ""));
        match (ctx, t) {
            (Ctx::Value, Token::In | Token::NotIn) => (Token::Ident, lit),
            _ => (t, lit),
        }
    }

    fn next(&mut self, ctx: Ctx) -> (Token, &'a str) {
        let item = self.peek(ctx);
        if item.0 != Token::End {
            self.pos += 1;
        }
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            match self.peek(Ctx::Value) {
                (Token::Ident | Token::Not, _) => {
                    let r = self
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    match self.next(Ctx::Value) {
                        (Token::End, _) => return Ok(reqs),
                        (Token::Comma, _) => {
                            let (t, lit) = self.peek(Ctx::Value);
                            if t != Token::Ident && t != Token::Not {
                                return Err(format!(
                                    "found '{lit}', expected: identifier after ','"
                                ));
                            }
                        }
                        (_, lit) => {
                            return Err(format!("found '{lit}', expected: ',' or 'end of string'"))
                        }
                    }
                }
                (Token::End, _) => return Ok(reqs),
                (_, lit) => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ))
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let mut negated = false;
        let (mut tok, mut key) = self.next(Ctx::Value);
        if tok == Token::Not {
            negated = true;
            (tok, key) = self.next(Ctx::Value);
        }
        if tok != Token::Ident {
            return Err(format!("found '{key}', expected: identifier"));
        }
        let key_errs = label_key_errors(key);
        if !key_errs.is_empty() {
            // apimachinery validates the key here without a field path, hence "<nil>".
            return Err(invalid("<nil>", &quote(key), &key_errs.join("; ")));
        }
        if negated {
            return Requirement::new(key, Operator::DoesNotExist, Vec::new());
        }
        if matches!(self.peek(Ctx::Value).0, Token::End | Token::Comma) {
            return Requirement::new(key, Operator::Exists, Vec::new());
        }
        let operator = match self.next(Ctx::Operator) {
            (Token::In, _) => Operator::In,
            (Token::NotIn, _) => Operator::NotIn,
            (Token::Equals, _) => Operator::Equals,
            (Token::DoubleEquals, _) => Operator::DoubleEquals,
            (Token::NotEquals, _) => Operator::NotEquals,
            (Token::Gt, _) => Operator::GreaterThan,
            (Token::Lt, _) => Operator::LessThan,
            (_, lit) => {
                return Err(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                ))
            }
        };
        let values = if matches!(operator, Operator::In | Operator::NotIn) {
            self.value_set()?
        } else {
            vec![self.exact_value()?]
        };
        Requirement::new(key, operator, values)
    }

    /// `(a,b,c)`; empty members (`()`, `(a,)`) stand for the empty value.
    fn value_set(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.next(Ctx::Value);
        if tok != Token::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let mut set: Vec<String> = Vec::new();
        let add = |set: &mut Vec<String>, v: &str| {
            if !set.iter().any(|x| x == v) {
                set.push(v.to_string());
            }
        };
        match self.peek(Ctx::Value) {
            (Token::ClosedPar, _) => {
                self.next(Ctx::Value);
                return Ok(vec![String::new()]);
            }
            (Token::Ident | Token::Comma, _) => {}
            (_, lit) => return Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
        let mut expect_value = true;
        loop {
            match self.next(Ctx::Value) {
                (Token::Ident, v) if expect_value => {
                    add(&mut set, v);
                    expect_value = false;
                }
                (Token::Comma, _) => {
                    if expect_value {
                        add(&mut set, "");
                    }
                    expect_value = true;
                }
                (Token::ClosedPar, _) => {
                    if expect_value {
                        add(&mut set, "");
                    }
                    break;
                }
                (_, lit) if expect_value => {
                    return Err(format!("found '{lit}', expected: ',', or identifier"))
                }
                (_, lit) => return Err(format!("found '{lit}', expected: ',' or ')'")),
            }
        }
        set.sort();
        Ok(set)
    }

    fn exact_value(&mut self) -> Result<String, String> {
        match self.peek(Ctx::Value) {
            (Token::End | Token::Comma, _) => Ok(String::new()),
            (Token::Ident, v) => {
                self.next(Ctx::Value);
                Ok(v.to_string())
            }
            (_, lit) => Err(format!("found '{lit}', expected: identifier")),
        }
    }
}

/// A field.Error of type Invalid as apimachinery prints it.
fn invalid(path: &str, shown_value: &str, detail: &str) -> String {
    format!("{path}: Invalid value: {shown_value}: {detail}")
}

/// Go's `%q`, enough for the printable strings selectors contain.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

const NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, non-empty.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            alnum(f)
                && alnum(l)
                && b.iter()
                    .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Lowercase RFC 1123 subdomain: dot-separated labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn is_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        match (b.first(), b.last()) {
            (Some(f), Some(l)) => ok(f) && ok(l) && b.iter().all(|c| ok(c) || *c == b'-'),
            _ => false,
        }
    })
}

/// apimachinery's IsQualifiedName messages for a label key; empty when valid.
fn label_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 bytes".to_string());
                }
                if !is_subdomain(prefix) {
                    errs.push(format!("prefix part {SUBDOMAIN_MSG}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a valid label key {NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 bytes".to_string());
    }
    if !is_name(name) {
        errs.push(format!("name part {NAME_MSG}"));
    }
    errs
}

/// apimachinery's IsValidLabelValue messages; empty when valid.
fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 bytes".to_string());
    }
    if !value.is_empty() && !is_name(value) {
        errs.push(VALUE_MSG.to_string());
    }
    errs
}

// ---------------------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------------------

/// One `field=value` or `field!=value` clause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    /// Unescaped value.
    pub value: String,
    /// `!=` rather than `=`/`==`.
    pub negated: bool,
}

/// A parsed field selector: the AND of its terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses `a=b,c!=d,e==f`. Values may escape `\,`, `\=` and `\\`; there is no
    /// whitespace trimming, as in apimachinery.
    pub fn parse(s: &str) -> Result<Self> {
        let mut parts = split_terms(s);
        parts.sort_unstable();
        let mut terms = Vec::new();
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let (field, op, rhs) = split_term(part).ok_or_else(|| {
                SelectorError::Field(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ))
            })?;
            terms.push(FieldTerm {
                field: field.to_string(),
                value: unescape(rhs)?,
                negated: op == "!=",
            });
        }
        Ok(FieldSelector { terms })
    }

    /// Rejects fields `kind` cannot be selected on.
    pub fn validate(&self, kind: &Kind) -> Result<()> {
        match self.terms.iter().find(|t| !kind.supports_field(&t.field)) {
            Some(t) => Err(SelectorError::UnsupportedField(t.field.clone())),
            None => Ok(()),
        }
    }

    /// Whether `object` (full JSON) satisfies every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms
            .iter()
            .all(|t| (field_value(object, &t.field) == t.value) != t.negated)
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    /// The value `field` must equal, if a term pins it (`metadata.name=x` lets a list
    /// become a single get).
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && !t.negated)
            .map(|t| t.value.as_str())
    }
}

/// Splits on commas not escaped by a backslash; escapes stay in the pieces.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

/// The first operator in the term wins, trying `!=` before `==` before `=` at each position.
fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    term.char_indices().find_map(|(i, _)| {
        ["!=", "==", "="]
            .into_iter()
            .find(|op| term[i..].starts_with(op))
            .map(|op| (&term[..i], op, &term[i + op.len()..]))
    })
}

fn unescape(v: &str) -> Result<String> {
    let mut out = String::with_capacity(v.len());
    let mut escaped = false;
    for c in v.chars() {
        if escaped {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(SelectorError::Field(format!(
                    "invalid field selector: invalid escape sequence: \\{c}"
                )));
            }
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            // Go prints the rune with %v, i.e. its code point number.
            ',' | '=' => {
                return Err(SelectorError::Field(format!(
                    "invalid field selector: unescaped character in value: {}",
                    u32::from(c)
                )))
            }
            _ => out.push(c),
        }
    }
    if escaped {
        return Err(SelectorError::Field(
            "invalid field selector: invalid escape sequence: \\".into(),
        ));
    }
    Ok(out)
}

/// The selectable value of `field` in `object`, as the kind's field set would hold it.
fn field_value(object: &Value, field: &str) -> String {
    // Selectable fields that are not plain JSON paths.
    let path = match field {
        // core/v1 Event selects `source` on the reporting component.
        "source" => "source.component",
        // batch/v1 Job's selectable name for the succeeded count.
        "status.successful" => "status.succeeded",
        _ => field,
    };
    let found = match field {
        "status.podIP" | "status.podIPs" => lookup(object, "status.podIP")
            .filter(|v| !v.is_null())
            .or_else(|| object.pointer("/status/podIPs/0/ip")),
        _ => lookup(object, path),
    };
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // Kubernetes fills its field sets from Go structs, so an absent bool reads "false"
        // and an absent counter "0"; `spec.unschedulable=false` must match fresh nodes.
        _ => match field {
            "spec.unschedulable" | "spec.hostNetwork" => "false".into(),
            "status.successful" => "0".into(),
            _ => String::new(),
        },
    }
}

fn lookup<'v>(object: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(object, |v, key| v.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_kind;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn label_selectors_parse_to_canonical_requirements() {
        let cases = [
            ("", ""),
            ("   ", ""),
            ("app=web", "app=web"),
            ("app==web", "app==web"),
            ("app!=web", "app!=web"),
            ("app", "app"),
            ("!app", "!app"),
            (" app = web , tier != db ", "app=web,tier!=db"),
            ("tier in (b, a),app", "app,tier in (a,b)"),
            ("tier notin (a)", "tier notin (a)"),
            ("x in ()", "x in ()"),
            ("x in (a,,b)", "x in (,a,b)"),
            ("x in (a,)", "x in (,a)"),
            ("app.kubernetes.io/name=kith", "app.kubernetes.io/name=kith"),
            ("in in (in,notin)", "in in (in,notin)"),
            ("a=", "a="),
            ("a=,b", "a=,b"),
            ("n>5,m<1", "m<1,n>5"),
            ("\tapp\n", "app"),
        ];
        for (input, want) in cases {
            let sel = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(sel.to_string(), want, "{input:?}");
        }
    }

    #[test]
    fn label_selector_errors_read_like_kubernetes() {
        let cases = [
            ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            ("a,", "found '', expected: identifier after ','"),
            (",a", "found ',', expected: !, identifier, or 'end of string'"),
            ("=a", "found '=', expected: !, identifier, or 'end of string'"),
            ("a in b", "unable to parse requirement: found 'b' expected: '('"),
            ("a in (b", "unable to parse requirement: found '', expected: ',' or ')'"),
            ("a in (b c)", "unable to parse requirement: found 'c', expected: ',' or ')'"),
            ("a in (=)", "unable to parse requirement: found '=', expected: ',', ')' or identifier"),
            ("a in (b,=)", "unable to parse requirement: found '=', expected: ',', or identifier"),
            ("a (b)", "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt"),
            ("a==(", "unable to parse requirement: found '(', expected: identifier"),
            ("!=a", "found '!=', expected: !, identifier, or 'end of string'"),
            ("!,a", "unable to parse requirement: found ',', expected: identifier"),
            ("!a=b", "found '=', expected: ',' or 'end of string'"),
            (
                "Bad_Key!=x",
                "", // valid: `Bad_Key` is a fine name part
            ),
            (
                "-a=b",
                "unable to parse requirement: <nil>: Invalid value: \"-a\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ),
            ("/a", "unable to parse requirement: <nil>: Invalid value: \"/a\": prefix part must be non-empty"),
            (
                "Example.com/a",
                "unable to parse requirement: <nil>: Invalid value: \"Example.com/a\": prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            ),
            (
                "a=-b",
                "unable to parse requirement: values[0][a]: Invalid value: \"-b\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ),
            (
                "a>b",
                "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value must be an integer",
            ),
        ];
        for (input, want) in cases {
            match LabelSelector::parse(input) {
                Ok(_) => assert_eq!(want, "", "{input:?} parsed"),
                Err(e) => assert_eq!(e.to_string(), want, "{input:?}"),
            }
        }
        let too_long = format!("a={}", "v".repeat(64));
        let err = LabelSelector::parse(&too_long).unwrap_err().to_string();
        assert!(
            err.starts_with("unable to parse requirement: values[0][a]: Invalid value: \"vvvv"),
            "{err}"
        );
        assert!(err.ends_with(": must be no more than 63 bytes"), "{err}");
    }

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let web = labels(
            json!({"app": "web", "tier": "front", "app.kubernetes.io/name": "kith", "n": "7", "e": ""}),
        );
        let none = Map::new();
        let cases = [
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app=db", false, false),
            ("app!=db", true, true),
            ("app!=web", false, true),
            ("app", true, false),
            ("!app", false, true),
            ("app in (db,web)", true, false),
            ("app notin (db,web)", false, true),
            ("app notin (db)", true, true),
            ("app=web,tier=back", false, false),
            ("app=web,tier=front", true, false),
            ("app.kubernetes.io/name=kith", true, false),
            ("e=", true, false),
            ("e in ()", true, false),
            ("missing in ()", false, false),
            ("n>5", true, false),
            ("n<5", false, false),
            ("app>5", false, false),
        ];
        for (input, on_web, on_none) in cases {
            let sel = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(sel.matches(&web), on_web, "{input:?} on web");
            assert_eq!(sel.matches(&none), on_none, "{input:?} on no labels");
        }
    }

    #[test]
    fn metav1_label_selectors_convert_and_match() {
        let pod = labels(json!({"app": "web", "tier": "front"}));
        let cases = [
            (json!(null), false, ""),
            (json!({}), true, ""),
            (json!({"matchLabels": {"app": "web"}}), true, "app=web"),
            (json!({"matchLabels": {"app": "db"}}), false, "app=db"),
            (
                json!({"matchLabels": {"tier": "front"}, "matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}),
                true,
                "app in (api,web),tier=front",
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
                false,
                "app notin (web)",
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
                true,
                "app",
            ),
            (
                json!({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}),
                true,
                "!canary",
            ),
        ];
        for (selector, want, shown) in cases {
            let sel =
                LabelSelector::from_json(&selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(sel.matches(&pod), want, "{selector}");
            assert_eq!(sel.to_string(), shown, "{selector}");
        }
    }

    #[test]
    fn invalid_metav1_label_selectors_are_rejected() {
        let cases = [
            (json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}), "\"Gt\" is not a valid label selector operator"),
            (json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}), "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"),
            (json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}), "values: Invalid value: [\"x\"]: values set must be empty for exists and does not exist"),
            (json!({"matchLabels": {"a/b/c": "x"}}), "key: Invalid value: \"a/b/c\": a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"),
            (json!({"matchLabels": {"a": 1}}), "matchLabels[a] must be a string, got 1"),
            (json!("app=web"), "label selector must be an object, got \"app=web\""),
        ];
        for (selector, want) in cases {
            let err = LabelSelector::from_json(&selector).unwrap_err();
            assert_eq!(err.to_string(), want, "{selector}");
            assert_eq!(err.into_api().code(), 400);
        }
    }

    #[test]
    fn field_selectors_parse() {
        let t = |f: &str, v: &str, n: bool| FieldTerm {
            field: f.into(),
            value: v.into(),
            negated: n,
        };
        let cases = [
            ("", vec![]),
            ("metadata.name=x", vec![t("metadata.name", "x", false)]),
            ("metadata.name==x", vec![t("metadata.name", "x", false)]),
            (
                "status.phase!=Running",
                vec![t("status.phase", "Running", true)],
            ),
            ("b=2,a=1", vec![t("a", "1", false), t("b", "2", false)]),
            ("a=,", vec![t("a", "", false)]),
            ("a=x\\,y\\=z\\\\", vec![t("a", "x,y=z\\", false)]),
            ("a!=b", vec![t("a", "b", true)]),
        ];
        for (input, want) in cases {
            let sel = FieldSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(sel.terms(), want.as_slice(), "{input:?}");
        }
        let errors = [
            (
                "metadata.name",
                "invalid selector: 'metadata.name'; can't understand 'metadata.name'",
            ),
            ("a=1,b", "invalid selector: 'a=1,b'; can't understand 'b'"),
            (
                "a=b=c",
                "invalid field selector: unescaped character in value: 61",
            ),
            (
                "a!==b",
                "invalid field selector: unescaped character in value: 61",
            ),
            (
                "a=b\\x",
                "invalid field selector: invalid escape sequence: \\x",
            ),
            (
                "a=b\\",
                "invalid field selector: invalid escape sequence: \\",
            ),
        ];
        for (input, want) in errors {
            let err = FieldSelector::parse(input).unwrap_err();
            assert_eq!(err.to_string(), want, "{input:?}");
            assert_eq!(err.into_api().code(), 400);
        }
    }

    #[test]
    fn field_selectors_validate_against_the_kind() {
        let pod = by_kind("v1", "Pod").unwrap();
        let cm = by_kind("v1", "ConfigMap").unwrap();
        let cases = [
            (pod, "metadata.name=x,spec.nodeName=n1", None),
            (pod, "status.podIP=10.0.0.1", None),
            (cm, "metadata.namespace=default", None),
            (
                cm,
                "spec.nodeName=n1",
                Some("field label not supported: spec.nodeName"),
            ),
            (
                pod,
                "metadata.labels=x",
                Some("field label not supported: metadata.labels"),
            ),
        ];
        for (kind, input, want) in cases {
            let got = FieldSelector::parse(input).unwrap().validate(kind).err();
            assert_eq!(
                got.as_ref().map(ToString::to_string).as_deref(),
                want,
                "{input:?}"
            );
            if let Some(e) = got {
                let status = e.into_api().status();
                assert_eq!(status["code"], 400);
                assert_eq!(status["reason"], "BadRequest");
            }
        }
    }

    #[test]
    fn field_selectors_match_objects() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n1", "hostNetwork": true},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.7"}]}});
        let node = json!({"metadata": {"name": "n1"}, "spec": {}});
        let event = json!({"involvedObject": {"kind": "Pod", "name": "p"}, "source": {"component": "kubelet"}, "type": "Normal"});
        let job = json!({"status": {"succeeded": 1}});
        let cases = [
            (&pod, "", true),
            (&pod, "metadata.name=p", true),
            (&pod, "metadata.name=q", false),
            (&pod, "metadata.name!=q,metadata.namespace=ns", true),
            (&pod, "spec.nodeName=", false),
            (&pod, "spec.schedulerName=", true),
            (&pod, "spec.hostNetwork=true", true),
            (&pod, "status.phase!=Running", false),
            (&pod, "status.podIP=10.0.0.7", true),
            (&pod, "status.podIPs=10.0.0.7", true),
            (&node, "spec.unschedulable=false", true),
            (&node, "spec.unschedulable=true", false),
            (&node, "metadata.namespace=", true),
            (
                &event,
                "involvedObject.kind=Pod,involvedObject.name=p",
                true,
            ),
            (&event, "source=kubelet", true),
            (&event, "type=Warning", false),
            (&job, "status.successful=1", true),
            (&json!({}), "status.successful=0", true),
        ];
        for (object, input, want) in cases {
            let sel = FieldSelector::parse(input).unwrap();
            assert_eq!(sel.matches(object), want, "{input:?}");
        }
        let sel = FieldSelector::parse("metadata.name=p,status.phase!=Failed").unwrap();
        assert_eq!(sel.requires_exact_match("metadata.name"), Some("p"));
        assert_eq!(sel.requires_exact_match("status.phase"), None);
    }
}
