//! Topic templates and field selectors over a JSON payload (pure, no I/O).
//!
//! A template is a topic with placeholders: `products.{product.productId}`.
//! `{a.b.c}` names a field path in the payload (object keys; a token that is
//! a non-negative integer also indexes an array). `{{` and `}}` stand for a
//! literal `{` and `}`. Everything outside placeholders follows the topic
//! grammar of [`crate::topic`] (so `*`, `>` and spaces are rejected when the
//! template is parsed, once, at configuration load).
//!
//! Rendering looks each path up in the payload: a string, a number (its JSON
//! text, e.g. `42`, `-7`, `1e3`) or a boolean is inserted; a missing field,
//! `null`, an object or an array is an error, and so is a value that would
//! not be a valid part of one topic token (empty, or containing `.`, `*`,
//! `>`, a space, a non-printable or non-ASCII character). The rendered topic
//! is then checked against the topic grammar and length limit.
//!
//! Lookups walk the payload's raw JSON text ([`RawValue`]), so a selected
//! sub-object (the `data` selector) is published byte for byte, in its
//! original key order, without being re-encoded.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::topic::{Topic, TopicError};

/// A field path: `product.productId` is `["product", "productId"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.c`: one or more non-empty segments, none containing
    /// `{`, `}` or `.`.
    pub fn parse(s: &str) -> Result<FieldPath, TemplateError> {
        if s.is_empty() {
            return Err(TemplateError::EmptyField);
        }
        let mut segments = Vec::new();
        for seg in s.split('.') {
            if seg.is_empty() {
                return Err(TemplateError::BadField(s.to_string()));
            }
            if seg.contains(['{', '}']) {
                return Err(TemplateError::BadField(s.to_string()));
            }
            segments.push(seg.to_string());
        }
        Ok(FieldPath(segments))
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// Walks the path through `root`; `None` if some segment is missing.
    pub fn lookup<'a>(&self, root: &'a RawValue) -> Option<&'a RawValue> {
        let mut cur = root;
        for seg in &self.0 {
            cur = child(cur, seg)?;
        }
        Some(cur)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// The member `key` of an object (the last one if the key is repeated, as
/// in Postgres' `jsonb`), or the element at index `key` of an array.
fn child<'a>(value: &'a RawValue, key: &str) -> Option<&'a RawValue> {
    let text = value.get().trim_start();
    match text.as_bytes().first()? {
        b'{' => {
            let map: BTreeMap<String, &'a RawValue> = serde_json::from_str(text).ok()?;
            map.get(key).copied()
        }
        b'[' => {
            let index: usize = key.parse().ok()?;
            let items: Vec<&'a RawValue> = serde_json::from_str(text).ok()?;
            items.get(index).copied()
        }
        _ => None,
    }
}

/// Why a template or selector could not be parsed (at configuration load).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("empty field path in '{{}}'")]
    EmptyField,
    #[error(
        "invalid field path {0:?}: segments are separated by single '.' and may not contain '{{' or '}}'"
    )]
    BadField(String),
    #[error("unclosed '{{' (write '{{{{' for a literal brace)")]
    Unclosed,
    #[error("unmatched '}}' (write '}}}}' for a literal brace)")]
    Unmatched,
    #[error("not a valid topic template: {0}")]
    Topic(TopicError),
    #[error("a data selector is one field path in braces, like \"{{product}}\"; got {0:?}")]
    Selector(String),
}

/// Why one payload could not be turned into a publication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("field {0} is missing")]
    Missing(String),
    #[error("field {field} is {kind}, not a string, number or boolean")]
    NotScalar { field: String, kind: &'static str },
    #[error("field {field} = {value:?} cannot be part of a topic token")]
    BadToken { field: String, value: String },
    #[error("rendered topic {topic:?} is invalid: {reason}")]
    Topic { topic: String, reason: TopicError },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(FieldPath),
}

/// A parsed topic template. Serializes back to its source text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicTemplate {
    source: String,
    parts: Vec<Part>,
}

impl TopicTemplate {
    pub fn parse(s: &str) -> Result<TopicTemplate, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(TemplateError::Unmatched),
                '{' => {
                    let mut path = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => path.push(c),
                            None => return Err(TemplateError::Unclosed),
                        }
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field(FieldPath::parse(&path)?));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        let template = TopicTemplate {
            source: s.to_string(),
            parts,
        };
        // The shape must be a topic whatever the fields hold: check it with
        // each placeholder standing for one token character.
        Topic::parse(&template.skeleton(), usize::MAX).map_err(TemplateError::Topic)?;
        Ok(template)
    }

    /// The template with each placeholder replaced by `x`.
    fn skeleton(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_str(),
                Part::Field(_) => "x",
            })
            .collect()
    }

    /// The shortest topic this template can render (each field one byte).
    pub fn min_len(&self) -> usize {
        self.skeleton().len()
    }

    /// The template's source text.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Renders the topic for `payload` (already validated JSON).
    pub fn render(&self, payload: &RawValue, max_len: usize) -> Result<Topic, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Field(path) => {
                    let value = path
                        .lookup(payload)
                        .ok_or_else(|| RenderError::Missing(path.to_string()))?;
                    let text = scalar(value).map_err(|kind| RenderError::NotScalar {
                        field: path.to_string(),
                        kind,
                    })?;
                    if text.is_empty() || !text.bytes().all(is_token_byte) {
                        return Err(RenderError::BadToken {
                            field: path.to_string(),
                            value: text,
                        });
                    }
                    out.push_str(&text);
                }
            }
        }
        Topic::parse(&out, max_len).map_err(|reason| RenderError::Topic { topic: out, reason })
    }
}

fn is_token_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'.' && b != b'*' && b != b'>'
}

/// The text a scalar contributes to a topic, or the kind of a non-scalar.
fn scalar(value: &RawValue) -> Result<String, &'static str> {
    let text = value.get().trim();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).map_err(|_| "an invalid string"),
        Some(b't' | b'f') => Ok(text.to_string()),
        Some(b'-' | b'0'..=b'9') => Ok(text.to_string()),
        Some(b'n') => Err("null"),
        Some(b'{') => Err("an object"),
        Some(b'[') => Err("an array"),
        _ => Err("not a JSON value"),
    }
}

impl fmt::Debug for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicTemplate({:?})", self.source)
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl TryFrom<String> for TopicTemplate {
    type Error = TemplateError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TopicTemplate::parse(&s)
    }
}

impl From<TopicTemplate> for String {
    fn from(t: TopicTemplate) -> String {
        t.source
    }
}

/// The `data` selector: `{product}` publishes the payload's `product`
/// member instead of the whole payload.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DataSelector {
    source: String,
    path: FieldPath,
}

impl DataSelector {
    pub fn parse(s: &str) -> Result<DataSelector, TemplateError> {
        let inner = s
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .filter(|i| !i.contains(['{', '}']))
            .ok_or_else(|| TemplateError::Selector(s.to_string()))?;
        Ok(DataSelector {
            source: s.to_string(),
            path: FieldPath::parse(inner)?,
        })
    }

    /// The selected value's JSON text, verbatim.
    pub fn select<'a>(&self, payload: &'a RawValue) -> Result<&'a RawValue, RenderError> {
        self.path
            .lookup(payload)
            .ok_or_else(|| RenderError::Missing(self.path.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for DataSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataSelector({:?})", self.source)
    }
}

impl TryFrom<String> for DataSelector {
    type Error = TemplateError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DataSelector::parse(&s)
    }
}

impl From<DataSelector> for String {
    fn from(t: DataSelector) -> String {
        t.source
    }
}

/// Parses a notification payload as JSON (without re-encoding it).
pub fn parse_payload(payload: &str) -> Result<&RawValue, RenderError> {
    serde_json::from_str::<&RawValue>(payload).map_err(|e| RenderError::NotJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(s: &str) -> TopicTemplate {
        TopicTemplate::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn render(t: &str, payload: &str) -> Result<String, RenderError> {
        let raw = parse_payload(payload)?;
        tpl(t).render(raw, 256).map(|t| t.as_str().to_string())
    }

    const SEED: &str = r#"{"action":"UPDATE","product":{"productId":42,"manufacturer":"Apple","productName":"MacBook Pro","sku":"mbp-14","active":true,"price":1.5,"tags":["a","b"],"note":null,"empty":"","spaced":"a b","dotted":"a.b","star":"*","uni":"é"}}"#;

    #[test]
    fn renders_strings_numbers_and_bools() {
        assert_eq!(
            render("products.{product.productId}", SEED).as_deref(),
            Ok("products.42")
        );
        assert_eq!(
            render("products.{product.sku}", SEED).as_deref(),
            Ok("products.mbp-14")
        );
        assert_eq!(
            render("p.{action}.{product.productId}", SEED).as_deref(),
            Ok("p.UPDATE.42")
        );
        assert_eq!(
            render("p.id-{product.productId}-{product.active}", SEED).as_deref(),
            Ok("p.id-42-true")
        );
        assert_eq!(render("p.{product.tags.1}", SEED).as_deref(), Ok("p.b"));
        assert_eq!(
            render("constant.topic", SEED).as_deref(),
            Ok("constant.topic")
        );
        assert_eq!(render("{a}", r#"{"a":-7}"#).as_deref(), Ok("-7"));
        assert_eq!(render("{a}", r#"{"a":1e3}"#).as_deref(), Ok("1e3"));
        // Escaped strings are unescaped before the token check.
        assert_eq!(render("{a}", r#"{"a":"x\u0041"}"#).as_deref(), Ok("xA"));
        // Braces escaped in the literal part.
        assert_eq!(render("b{{{a}}}", r#"{"a":1}"#).as_deref(), Ok("b{1}"));
        // A repeated key: the last one wins (as in jsonb).
        assert_eq!(render("{a}", r#"{"a":1,"a":2}"#).as_deref(), Ok("2"));
    }

    #[test]
    fn rejects_values_that_are_not_one_token() {
        let bad = |t: &str| match render(t, SEED) {
            Ok(topic) => panic!("{t} rendered {topic}"),
            Err(e) => e,
        };
        assert!(
            matches!(bad("p.{product.missing}"), RenderError::Missing(f) if f == "product.missing")
        );
        assert!(matches!(bad("p.{nothing.deeper}"), RenderError::Missing(_)));
        assert!(matches!(
            bad("p.{product.productId.x}"),
            RenderError::Missing(_)
        ));
        assert!(matches!(bad("p.{product.tags.9}"), RenderError::Missing(_)));
        assert!(matches!(
            bad("p.{product}"),
            RenderError::NotScalar {
                kind: "an object",
                ..
            }
        ));
        assert!(matches!(
            bad("p.{product.tags}"),
            RenderError::NotScalar {
                kind: "an array",
                ..
            }
        ));
        assert!(matches!(
            bad("p.{product.note}"),
            RenderError::NotScalar { kind: "null", .. }
        ));
        for field in ["price", "empty", "spaced", "dotted", "star", "uni"] {
            let e = bad(&format!("p.{{product.{field}}}"));
            assert!(matches!(e, RenderError::BadToken { .. }), "{field}: {e}");
        }
        let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(300));
        assert!(matches!(
            render("{a}", &long),
            Err(RenderError::Topic {
                reason: TopicError::TooLong { .. },
                ..
            })
        ));
        assert!(matches!(
            render("{a}", "not json"),
            Err(RenderError::NotJson(_))
        ));
        assert!(matches!(
            render("{a}", r#"[1,2]"#),
            Err(RenderError::Missing(_))
        ));
        assert!(matches!(
            render("{a}", r#""str""#),
            Err(RenderError::Missing(_))
        ));
    }

    #[test]
    fn template_syntax_is_checked_once() {
        for bad in [
            "",
            "products.",
            ".{a}",
            "a..{b}",
            "products.*",
            "products.>",
            "a b.{c}",
            "p.{a",
            "p.a}",
            "p.{}",
            "p.{a..b}",
            "p.{.a}",
            "p.{a{b}",
            "p.x{a}*",
            "é.{a}",
        ] {
            assert!(
                TopicTemplate::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let t = tpl("products.{product.productId}");
        assert_eq!(t.as_str(), "products.{product.productId}");
        assert_eq!(t.min_len(), "products.x".len());
        assert_eq!(format!("{t}"), "products.{product.productId}");
        assert_eq!(
            TopicTemplate::try_from("a.{b}".to_string()).map(String::from),
            Ok("a.{b}".to_string())
        );
    }

    #[test]
    fn data_selector_publishes_the_sub_value_verbatim() {
        let raw = parse_payload(r#"{"action":"INSERT","product": {"z":1, "a" : [1,2]}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let sel = DataSelector::parse("{product}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sel.select(raw).map(|v| v.get()),
            Ok(r#"{"z":1, "a" : [1,2]}"#)
        );
        let sel = DataSelector::parse("{product.a}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sel.select(raw).map(|v| v.get()), Ok("[1,2]"));
        let sel = DataSelector::parse("{nope}").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(sel.select(raw), Err(RenderError::Missing(_))));
        for bad in ["product", "{product", "{}", "{a}{b}", "x{a}", "{a.}"] {
            assert!(DataSelector::parse(bad).is_err(), "{bad:?}");
        }
    }
}
