//! Topic names and subscription patterns (pure, no I/O).
//!
//! Grammar (NATS style, documented in `docs/protocol.md`):
//!
//! ```text
//! topic   = token *( "." token )
//! token   = 1*tchar
//! tchar   = any printable ASCII character (0x21..=0x7E) except "." "*" ">"
//! pattern = ptoken *( "." ptoken ) [ "." ">" ] / ">"
//! ptoken  = token / "*"
//! ```
//!
//! `*` matches exactly one token, `>` (last position only) matches one or
//! more remaining tokens. A topic is at most `max_len` bytes (default 256).
//! Publishing needs a [`Topic`]; subscribing takes a [`Pattern`].

use std::fmt;
use std::sync::Arc;

/// Why a topic or pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {len} bytes, longer than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("topic has an empty token (leading, trailing or doubled '.')")]
    EmptyToken,
    #[error("topic has a character that is not printable ASCII or is reserved: {0:?}")]
    BadChar(char),
    #[error("wildcards ('*', '>') are not allowed here; publish to a concrete topic")]
    Wildcard,
    #[error("'*' and '>' must stand alone as a whole token")]
    PartialWildcard,
    #[error("'>' may only be the last token")]
    GtNotLast,
}

fn is_tchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'.' && b != b'*' && b != b'>'
}

/// Checks the pattern grammar; returns whether it holds a wildcard.
fn check(s: &str, max_len: usize, allow_wildcards: bool) -> Result<bool, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > max_len {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: max_len,
        });
    }
    let mut wild = false;
    let mut tokens = s.split('.').peekable();
    while let Some(tok) = tokens.next() {
        match tok {
            "" => return Err(TopicError::EmptyToken),
            "*" | ">" if !allow_wildcards => return Err(TopicError::Wildcard),
            "*" => wild = true,
            ">" if tokens.peek().is_some() => return Err(TopicError::GtNotLast),
            ">" => wild = true,
            _ => {
                for c in tok.chars() {
                    if c == '*' || c == '>' {
                        return Err(if allow_wildcards {
                            TopicError::PartialWildcard
                        } else {
                            TopicError::Wildcard
                        });
                    }
                    if !c.is_ascii() || !is_tchar(c as u8) {
                        return Err(TopicError::BadChar(c));
                    }
                }
            }
        }
    }
    Ok(wild)
}

/// A concrete topic (no wildcards). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `s` as a publishable topic of at most `max_len` bytes.
    pub fn parse(s: &str, max_len: usize) -> Result<Self, TopicError> {
        check(s, max_len, false)?;
        Ok(Topic(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

/// A subscription pattern: a topic that may contain `*` and a trailing `>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    raw: Arc<str>,
    wildcard: bool,
}

impl Pattern {
    pub fn parse(s: &str, max_len: usize) -> Result<Self, TopicError> {
        let wildcard = check(s, max_len, true)?;
        Ok(Pattern {
            raw: Arc::from(s),
            wildcard,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True if the pattern contains `*` or `>`.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The pattern as a concrete topic, if it has no wildcard.
    pub fn as_topic(&self) -> Option<Topic> {
        (!self.wildcard).then(|| Topic(self.raw.clone()))
    }

    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.raw.split('.')
    }

    /// Straightforward matcher; the hub uses the trie in [`crate::trie`],
    /// this is the reference it is tested against.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut p = self.tokens();
        let mut t = topic.tokens();
        loop {
            match (p.next(), t.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::parse(s, 256).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn p(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn valid_topics() {
        for s in [
            "a",
            "chat.room1",
            "products.1023",
            "user:42.inbox",
            "a-b_c.~x",
        ] {
            assert_eq!(t(s).as_str(), s);
        }
    }

    #[test]
    fn invalid_topics() {
        let cases = [
            ("", TopicError::Empty),
            ("a..b", TopicError::EmptyToken),
            (".a", TopicError::EmptyToken),
            ("a.", TopicError::EmptyToken),
            ("a b", TopicError::BadChar(' ')),
            ("caf\u{e9}", TopicError::BadChar('\u{e9}')),
            ("a.*", TopicError::Wildcard),
            ("a.>", TopicError::Wildcard),
            ("a*", TopicError::Wildcard),
        ];
        for (s, want) in cases {
            assert_eq!(Topic::parse(s, 256), Err(want), "{s:?}");
        }
        assert_eq!(
            Topic::parse(&"x".repeat(257), 256),
            Err(TopicError::TooLong { len: 257, max: 256 })
        );
    }

    #[test]
    fn patterns() {
        assert!(p("a.*.c").is_wildcard());
        assert!(p(">").is_wildcard());
        assert!(!p("a.b").is_wildcard());
        assert_eq!(p("a.b").as_topic(), Some(t("a.b")));
        assert_eq!(Pattern::parse("a.>.c", 256), Err(TopicError::GtNotLast));
        assert_eq!(
            Pattern::parse("a.b*", 256),
            Err(TopicError::PartialWildcard)
        );
        assert_eq!(
            Pattern::parse("a.>x", 256),
            Err(TopicError::PartialWildcard)
        );
    }

    #[test]
    fn matching() {
        assert!(p("a.b").matches(&t("a.b")));
        assert!(!p("a.b").matches(&t("a.b.c")));
        assert!(p("a.*").matches(&t("a.b")));
        assert!(!p("a.*").matches(&t("a.b.c")));
        assert!(!p("a.*").matches(&t("a")));
        assert!(p("a.>").matches(&t("a.b.c")));
        assert!(!p("a.>").matches(&t("a")));
        assert!(p(">").matches(&t("x")));
        assert!(p("*.b.>").matches(&t("a.b.c.d")));
        assert!(!p("*.b.>").matches(&t("a.c.c.d")));
    }
}
