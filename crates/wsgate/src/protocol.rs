//! The JSON-RPC 2.0 wire protocol: parsing requests and encoding responses
//! and notifications. Pure code: bytes in, typed values out.
//!
//! Parsed requests borrow from the input frame; the `data` of a publication
//! is a [`RawValue`] slice of the frame and is never re-parsed. Outgoing
//! notifications are built once per publication by string concatenation.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::Error;
use crate::topic::{Pattern, Topic};

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_topic_length: usize,
    pub max_topics_per_request: usize,
    pub max_batch_requests: usize,
    /// Deepest nesting of arrays/objects accepted in a frame.
    pub max_json_depth: usize,
}

/// One method call with validated parameters.
#[derive(Debug)]
pub enum Call<'a> {
    Subscribe(Vec<Pattern>),
    /// `subscribe` with `since`: one exact topic, recovering what was
    /// published after the client's last position.
    SubscribeSince {
        topic: Topic,
        offset: u64,
        epoch: Cow<'a, str>,
    },
    /// `history`: the last `limit` messages of a topic.
    History {
        topic: Topic,
        limit: usize,
    },
    Unsubscribe(Vec<Pattern>),
    Publish {
        topic: Topic,
        data: &'a RawValue,
    },
    Broadcast {
        data: &'a RawValue,
    },
    /// `self.reply`: the params, echoed back to the caller.
    SelfReply(Option<&'a RawValue>),
    Ping,
    /// `refresh`: replace the connection's token.
    Refresh(TokenParam<'a>),
}

/// A token in a request's params; its `Debug` does not print it.
pub struct TokenParam<'a>(Cow<'a, str>);

impl TokenParam<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenParam<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenParam(<{} bytes>)", self.0.len())
    }
}

/// A request: `id` is `None` for a notification (which gets no response).
#[derive(Debug)]
pub struct Request<'a> {
    pub id: Option<&'a RawValue>,
    pub call: Result<Call<'a>, Error>,
}

/// What one incoming text frame holds.
#[derive(Debug)]
pub enum Incoming<'a> {
    Single(Request<'a>),
    Batch(Vec<Request<'a>>),
    /// The frame could not be understood at all; answer with this error and
    /// a null id.
    Invalid(Error),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
}

/// Distinguishes `"id": null` (present) from a missing id.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsParams<'a> {
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topics: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    since: Option<SinceParam<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceParam<'a> {
    offset: u64,
    #[serde(borrow)]
    epoch: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    limit: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishParams<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshParams<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastParams<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Parses one text frame.
pub fn parse<'a>(frame: &'a str, limits: &ParseLimits) -> Incoming<'a> {
    if nesting_exceeds(frame.as_bytes(), limits.max_json_depth) {
        return Incoming::Invalid(Error::InvalidRequest(format!(
            "JSON nests deeper than {} levels",
            limits.max_json_depth
        )));
    }
    let trimmed = frame.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = match serde_json::from_str(frame) {
            Ok(items) => items,
            Err(e) => return Incoming::Invalid(Error::Parse(e.to_string())),
        };
        if items.is_empty() {
            return Incoming::Invalid(Error::InvalidRequest("empty batch".into()));
        }
        if items.len() > limits.max_batch_requests {
            return Incoming::Invalid(Error::InvalidRequest(format!(
                "batch of {} requests exceeds the limit of {}",
                items.len(),
                limits.max_batch_requests
            )));
        }
        return Incoming::Batch(
            items
                .into_iter()
                .map(|raw| parse_one(raw.get(), limits))
                .collect(),
        );
    }
    // Check it is JSON at all before interpreting it, so that invalid JSON
    // is a parse error (-32700) rather than an invalid request.
    let value: &RawValue = match serde_json::from_str(frame) {
        Ok(v) => v,
        Err(e) => return Incoming::Invalid(Error::Parse(e.to_string())),
    };
    Incoming::Single(parse_one(value.get(), limits))
}

/// True if arrays/objects in `json` nest deeper than `max`. A byte scan
/// (strings skipped); the payload is passed on to every subscriber's JSON
/// parser, so depth is bounded before it is accepted.
pub fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in json {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn invalid(msg: impl Into<String>) -> Request<'static> {
    Request {
        id: None,
        call: Err(Error::InvalidRequest(msg.into())),
    }
}

fn parse_one<'a>(text: &'a str, limits: &ParseLimits) -> Request<'a> {
    if !text.starts_with('{') {
        return with_null_id(invalid("a request must be a JSON object"));
    }
    let env: Envelope<'a> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => return with_null_id(invalid(e.to_string())),
    };
    // A request whose id is not a string, number or null cannot be answered
    // with that id: answer with a null id.
    if let Some(id) = env.id {
        let first = id.get().as_bytes().first().copied().unwrap_or(b' ');
        if !(first == b'"' || first == b'-' || first.is_ascii_digit() || id.get() == "null") {
            return with_null_id(invalid("id must be a string, a number or null"));
        }
    }
    let id = env.id;
    if env.jsonrpc.as_deref() != Some("2.0") {
        return answer(id, invalid(r#"the "jsonrpc" member must be "2.0""#));
    }
    let Some(method) = env.method else {
        return answer(
            id,
            invalid(r#"the "method" member is missing or not a string"#),
        );
    };
    Request {
        id,
        call: parse_call(&method, env.params, limits),
    }
}

/// An invalid request is answered even without an id (with `"id": null`),
/// as JSON-RPC 2.0 requires.
fn with_null_id(mut r: Request<'static>) -> Request<'static> {
    r.id = Some(null_id());
    r
}

fn answer<'a>(id: Option<&'a RawValue>, r: Request<'static>) -> Request<'a> {
    Request {
        id: Some(id.unwrap_or_else(|| null_id())),
        call: r.call,
    }
}

fn null_id() -> &'static RawValue {
    RawValue::NULL
}

fn params<'a, T: Deserialize<'a>>(params: Option<&'a RawValue>) -> Result<T, Error> {
    let p = params.ok_or_else(|| Error::InvalidParams("params are required".into()))?;
    serde_json::from_str(p.get()).map_err(|e| Error::InvalidParams(e.to_string()))
}

fn parse_call<'a>(
    method: &str,
    raw: Option<&'a RawValue>,
    limits: &ParseLimits,
) -> Result<Call<'a>, Error> {
    match method {
        "subscribe" => {
            let mut p: TopicsParams<'a> = params(raw)?;
            match p.since.take() {
                None => Ok(Call::Subscribe(patterns(p, limits)?)),
                Some(since) => {
                    let (Some(t), None) = (p.topic, p.topics) else {
                        return Err(Error::InvalidParams(
                            r#""since" needs one exact "topic""#.into(),
                        ));
                    };
                    Ok(Call::SubscribeSince {
                        topic: exact_topic(&t, limits)?,
                        offset: since.offset,
                        epoch: since.epoch,
                    })
                }
            }
        }
        "history" => {
            let p: HistoryParams<'a> = params(raw)?;
            Ok(Call::History {
                topic: exact_topic(&p.topic, limits)?,
                limit: p.limit,
            })
        }
        "unsubscribe" => {
            let p: TopicsParams<'a> = params(raw)?;
            if p.since.is_some() {
                return Err(Error::InvalidParams(
                    r#""since" is only for subscribe"#.into(),
                ));
            }
            Ok(Call::Unsubscribe(patterns(p, limits)?))
        }
        "publish" => {
            let p: PublishParams<'a> = params(raw)?;
            let topic = Topic::parse(&p.topic, limits.max_topic_length).map_err(|reason| {
                Error::InvalidTopic {
                    topic: p.topic.to_string(),
                    reason,
                }
            })?;
            Ok(Call::Publish {
                topic,
                data: p.data,
            })
        }
        "broadcast" => {
            let p: BroadcastParams<'a> = params(raw)?;
            Ok(Call::Broadcast { data: p.data })
        }
        "refresh" => {
            let p: RefreshParams<'a> = params(raw)?;
            Ok(Call::Refresh(TokenParam(p.token)))
        }
        "self.reply" => Ok(Call::SelfReply(raw)),
        "ping" => Ok(Call::Ping),
        other => Err(Error::MethodNotFound(truncate(other, 64).to_string())),
    }
}

fn exact_topic(t: &str, limits: &ParseLimits) -> Result<Topic, Error> {
    Topic::parse(t, limits.max_topic_length).map_err(|reason| Error::InvalidTopic {
        topic: truncate(t, 300).to_string(),
        reason,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn patterns(p: TopicsParams<'_>, limits: &ParseLimits) -> Result<Vec<Pattern>, Error> {
    let list: Vec<Cow<'_, str>> = match (p.topic, p.topics) {
        (Some(t), None) => vec![t],
        (None, Some(ts)) => ts,
        _ => {
            return Err(Error::InvalidParams(
                r#"give exactly one of "topic" (a string) or "topics" (an array)"#.into(),
            ));
        }
    };
    if list.is_empty() {
        return Err(Error::InvalidParams(r#""topics" is empty"#.into()));
    }
    if list.len() > limits.max_topics_per_request {
        return Err(Error::TooManyTopics {
            count: list.len(),
            limit: limits.max_topics_per_request,
        });
    }
    list.iter()
        .map(|t| {
            Pattern::parse(t, limits.max_topic_length).map_err(|reason| Error::InvalidTopic {
                topic: truncate(t, 300).to_string(),
                reason,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- encoding

const MESSAGE_HEAD: &str = r#"{"jsonrpc":"2.0","method":"message","params":{"topic":"#;
const BROADCAST_HEAD: &str = r#"{"jsonrpc":"2.0","method":"broadcast","params":{"data":"#;

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The `message` notification for a publication, encoded once and shared by
/// every subscriber. `data` must be valid JSON text.
pub fn encode_message(topic: &str, data: &str) -> Bytes {
    encode_message_at(topic, data, None)
}

/// [`encode_message`] with the message's position in a durable history
/// (`"offset"` and `"epoch"` after `"data"`), when the backbone has one.
pub fn encode_message_at(topic: &str, data: &str, position: Option<(u64, &str)>) -> Bytes {
    let extra = position.map_or(0, |(_, e)| e.len() + 40);
    let mut out = String::with_capacity(MESSAGE_HEAD.len() + topic.len() + data.len() + 16 + extra);
    out.push_str(MESSAGE_HEAD);
    push_json_str(&mut out, topic);
    out.push_str(r#","data":"#);
    out.push_str(data);
    if let Some((offset, epoch)) = position {
        out.push_str(r#","offset":"#);
        out.push_str(&offset.to_string());
        out.push_str(r#","epoch":"#);
        push_json_str(&mut out, epoch);
    }
    out.push_str("}}");
    Bytes::from(out)
}

/// The result of `history` and the recovery fields of `subscribe` with
/// `since`: `"epoch":...,"messages":[{"offset":N,"data":...},...]` (without
/// braces, to be placed in an object). Every `data` must be JSON text.
pub fn encode_history<'d>(
    epoch: &str,
    messages: impl IntoIterator<Item = (u64, &'d str)>,
) -> String {
    let mut out = String::from(r#""epoch":"#);
    push_json_str(&mut out, epoch);
    out.push_str(r#","messages":["#);
    for (i, (offset, data)) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"offset":"#);
        out.push_str(&offset.to_string());
        out.push_str(r#","data":"#);
        out.push_str(data);
        out.push('}');
    }
    out.push(']');
    out
}

/// The `broadcast` notification delivered to every connection.
pub fn encode_broadcast(data: &str) -> Bytes {
    let mut out = String::with_capacity(BROADCAST_HEAD.len() + data.len() + 4);
    out.push_str(BROADCAST_HEAD);
    out.push_str(data);
    out.push_str("}}");
    Bytes::from(out)
}

/// A successful response with an already encoded `result`.
pub fn encode_result(id: &RawValue, result: &str) -> String {
    let mut out = String::with_capacity(40 + id.get().len() + result.len());
    out.push_str(r#"{"jsonrpc":"2.0","id":"#);
    out.push_str(id.get());
    out.push_str(r#","result":"#);
    out.push_str(result);
    out.push('}');
    out
}

/// An error response; `id` is `null` when the request's id is unknown.
pub fn encode_error(id: Option<&RawValue>, err: &Error) -> String {
    let message = err.to_string();
    let mut out = String::with_capacity(64 + message.len());
    out.push_str(r#"{"jsonrpc":"2.0","id":"#);
    out.push_str(id.map(RawValue::get).unwrap_or("null"));
    out.push_str(r#","error":{"code":"#);
    out.push_str(&err.rpc_code().to_string());
    out.push_str(r#","message":"#);
    push_json_str(&mut out, &message);
    out.push_str("}}");
    out
}

/// `{"subscribed":[...]}` / `{"unsubscribed":[...]}`.
pub fn encode_topic_list(key: &str, patterns: &[Pattern]) -> String {
    let mut out =
        String::with_capacity(16 + patterns.iter().map(|p| p.as_str().len() + 3).sum::<usize>());
    out.push('{');
    push_json_str(&mut out, key);
    out.push_str(":[");
    for (i, p) in patterns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, p.as_str());
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_history_and_positions() {
        fn one(text: &str) -> Result<Call<'_>, Error> {
            match parse(text, &LIMITS) {
                Incoming::Single(r) => r.call,
                other => panic!("{other:?}"),
            }
        }
        match one(
            r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"a.b","since":{"offset":7,"epoch":"e1"}}}"#,
        ) {
            Ok(Call::SubscribeSince {
                topic,
                offset,
                epoch,
            }) => {
                assert_eq!((topic.as_str(), offset, &*epoch), ("a.b", 7, "e1"));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"a.*","since":{"offset":7,"epoch":"e"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topics":["a"],"since":{"offset":7,"epoch":"e"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"a","since":{"offset":-1,"epoch":"e"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"unsubscribe","params":{"topic":"a","since":{"offset":1,"epoch":"e"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"history","params":{"topic":"a.>","limit":1}}"#,
        ] {
            assert!(one(bad).is_err(), "{bad}");
        }
        match one(r#"{"jsonrpc":"2.0","id":1,"method":"history","params":{"topic":"a","limit":3}}"#)
        {
            Ok(Call::History { topic, limit }) => assert_eq!((topic.as_str(), limit), ("a", 3)),
            other => panic!("{other:?}"),
        }
        let m = encode_message_at("t", "[1]", Some((5, "e\"x")));
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap_or_default();
        assert_eq!(v["params"]["offset"], 5);
        assert_eq!(v["params"]["epoch"], "e\"x");
        assert_eq!(v["params"]["data"], serde_json::json!([1]));
        let h = format!("{{{}}}", encode_history("e", [(1, "1"), (2, "{}")]));
        let v: serde_json::Value = serde_json::from_str(&h).unwrap_or_default();
        assert_eq!(v["messages"][1]["offset"], 2);
        assert_eq!(v["epoch"], "e");
    }
    use crate::error::code;
    use serde_json::Value;

    const LIMITS: ParseLimits = ParseLimits {
        max_topic_length: 256,
        max_topics_per_request: 4,
        max_batch_requests: 3,
        max_json_depth: 8,
    };

    fn single(s: &str) -> Request<'_> {
        match parse(s, &LIMITS) {
            Incoming::Single(r) => r,
            other => panic!("expected a single request, got {other:?}"),
        }
    }

    fn err_code(s: &str) -> i32 {
        match parse(s, &LIMITS) {
            Incoming::Invalid(e) => e.rpc_code(),
            Incoming::Single(r) => r.call.err().map(|e| e.rpc_code()).unwrap_or(0),
            Incoming::Batch(_) => panic!("batch"),
        }
    }

    #[test]
    fn subscribe_single_and_many() {
        let r = single(r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"a.b"}}"#);
        assert_eq!(r.id.map(|i| i.get()), Some("1"));
        match r.call {
            Ok(Call::Subscribe(p)) => assert_eq!(p[0].as_str(), "a.b"),
            other => panic!("{other:?}"),
        }
        let r = single(
            r#"{"jsonrpc":"2.0","id":"x","method":"unsubscribe","params":{"topics":["a.*","b.>"]}}"#,
        );
        match r.call {
            Ok(Call::Unsubscribe(p)) => assert_eq!(p.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_borrows_data_verbatim() {
        let frame = r#"{"jsonrpc":"2.0","id":2,"method":"publish","params":{"topic":"t","data": {"x" : [1, 2]}}}"#;
        match single(frame).call {
            Ok(Call::Publish { topic, data }) => {
                assert_eq!(topic.as_str(), "t");
                assert_eq!(
                    data.get(),
                    r#"{"x" : [1, 2]}"#,
                    "data is passed through untouched"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_have_standard_codes() {
        assert_eq!(err_code("{not json"), code::PARSE_ERROR);
        assert_eq!(err_code(r#""just a string""#), code::INVALID_REQUEST);
        assert_eq!(
            err_code(r#"{"id":1,"method":"ping"}"#),
            code::INVALID_REQUEST
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1}"#),
            code::INVALID_REQUEST
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#),
            code::INVALID_REQUEST
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#),
            code::METHOD_NOT_FOUND
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"subscribe"}"#),
            code::INVALID_PARAMS
        );
        assert_eq!(
            err_code(
                r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"a","topics":["b"]}}"#
            ),
            code::INVALID_PARAMS
        );
        assert_eq!(
            err_code(
                r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topics":["a","b","c","d","e"]}}"#
            ),
            code::INVALID_PARAMS
        );
        assert_eq!(
            err_code(
                r#"{"jsonrpc":"2.0","id":1,"method":"publish","params":{"topic":"a.*","data":1}}"#
            ),
            code::INVALID_PARAMS
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"publish","params":{"topic":"a"}}"#),
            code::INVALID_PARAMS
        );
        assert_eq!(
            err_code(
                r#"{"jsonrpc":"2.0","id":1,"method":"publish","params":{"topic":"a","data":1,"extra":2}}"#
            ),
            code::INVALID_PARAMS
        );
    }

    #[test]
    fn refresh_takes_a_token_and_hides_it() {
        let r = single(r#"{"jsonrpc":"2.0","id":1,"method":"refresh","params":{"token":"a.b.c"}}"#);
        match r.call {
            Ok(Call::Refresh(t)) => {
                assert_eq!(t.as_str(), "a.b.c");
                assert!(!format!("{t:?}").contains("a.b.c"));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"refresh"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"refresh","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"refresh","params":{"token":1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"refresh","params":{"token":"x","y":1}}"#,
        ] {
            assert_eq!(err_code(bad), code::INVALID_PARAMS, "{bad}");
        }
    }

    #[test]
    fn invalid_requests_are_answered_with_a_null_id() {
        let r = single(r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#);
        assert_eq!(r.id.map(|i| i.get()), Some("null"));
        let r = single(r#"{"jsonrpc":"1.0","method":"ping"}"#);
        assert_eq!(r.id.map(|i| i.get()), Some("null"));
    }

    #[test]
    fn notifications_have_no_id_and_null_id_is_kept() {
        assert!(single(r#"{"jsonrpc":"2.0","method":"ping"}"#).id.is_none());
        let r = single(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#);
        assert_eq!(r.id.map(|i| i.get()), Some("null"));
    }

    #[test]
    fn nesting_is_bounded() {
        assert!(!nesting_exceeds(br#"{"a":[[["x"]]]}"#, 4));
        assert!(nesting_exceeds(br#"{"a":[[[["x"]]]]}"#, 4));
        assert!(
            !nesting_exceeds(br#"{"a":"[[[[[[[[[[\"[[[["}"#, 2),
            "brackets in strings do not count"
        );
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{}{}}}"#,
            "[".repeat(9),
            "]".repeat(9)
        );
        assert_eq!(err_code(&deep), code::INVALID_REQUEST);
    }

    #[test]
    fn batches() {
        match parse(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 5]"#, &LIMITS) {
            Incoming::Batch(v) => {
                assert_eq!(v.len(), 2);
                assert!(matches!(v[0].call, Ok(Call::Ping)));
                assert_eq!(
                    v[1].call.as_ref().err().map(Error::rpc_code),
                    Some(code::INVALID_REQUEST)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err_code("[]"), code::INVALID_REQUEST);
        assert_eq!(err_code("[1,2,3,4]"), code::INVALID_REQUEST);
        assert_eq!(err_code("[1,"), code::PARSE_ERROR);
    }

    #[test]
    fn encoded_frames_are_valid_json() {
        let m = encode_message("chat.\"q\"", r#"{"a":1}"#);
        let v: Value = serde_json::from_slice(&m).unwrap_or_default();
        assert_eq!(v["method"], "message");
        assert_eq!(v["params"]["topic"], "chat.\"q\"");
        assert_eq!(v["params"]["data"]["a"], 1);

        let b: Value = serde_json::from_slice(&encode_broadcast("[1]")).unwrap_or_default();
        assert_eq!(b["params"]["data"][0], 1);

        let id: &RawValue = serde_json::from_str(r#""abc""#).unwrap_or_else(|_| null_id());
        let e: Value = serde_json::from_str(&encode_error(
            Some(id),
            &Error::MethodNotFound("x\ny".into()),
        ))
        .unwrap_or_default();
        assert_eq!(e["id"], "abc");
        assert_eq!(e["error"]["code"], code::METHOD_NOT_FOUND);

        let r: Value = serde_json::from_str(&encode_result(id, r#""pong""#)).unwrap_or_default();
        assert_eq!(r["result"], "pong");

        let p = [Pattern::parse("a.*", 10).unwrap_or_else(|e| panic!("{e}"))];
        let l: Value =
            serde_json::from_str(&encode_topic_list("subscribed", &p)).unwrap_or_default();
        assert_eq!(l["subscribed"][0], "a.*");
    }
}
