//! Topic permissions (pure, no I/O).
//!
//! A connection's [`Permissions`] are lists of granted patterns, one for
//! reading (subscribe, and later history/presence) and one for publishing,
//! plus a flag for `broadcast`. They come from the token's claims and from
//! the configured namespace [`Rule`]s, merged once when the connection is
//! authenticated (and again on `refresh`), so each check is a scan of a
//! short list.
//!
//! * A **topic** may be published if some granted pattern matches it.
//! * A **pattern** may be subscribed if some single granted pattern
//!   [`covers`] it: everything the requested pattern can match must be
//!   readable. `chat.*` is covered by `chat.>` and by `*.*`, but not by
//!   `chat.room1`.
//!
//! Rules may contain the placeholder `{sub}`, replaced by the connection's
//! user id. A `sub` that is not a plain topic token (see [`templatable_sub`])
//! is never substituted, so no user id can widen a personal namespace.

use serde::{Deserialize, Serialize};

use crate::topic::{Pattern, Topic};

/// The placeholder for the connection's user id in a rule's pattern.
pub const SUB_PLACEHOLDER: &str = "{sub}";

/// True if every topic that `inner` matches is also matched by `outer`.
///
/// Decided token by token on the pattern grammar of [`crate::topic`]:
/// `>` in `outer` covers whatever (non-empty) rest `inner` has; `*` in
/// `outer` covers a literal or `*`; a literal covers only itself; `>` in
/// `inner` is covered only by `>`.
pub fn covers(outer: &Pattern, inner: &Pattern) -> bool {
    let mut o = outer.tokens();
    let mut i = inner.tokens();
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if `sub` can stand in a topic token: non-empty printable ASCII
/// without `.`, `*` or `>` (and at most 128 bytes). Other user ids are
/// authenticated normally but get no `{sub}` rules.
pub fn templatable_sub(sub: &str) -> bool {
    !sub.is_empty()
        && sub.len() <= 128
        && sub
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'.' && b != b'*' && b != b'>')
}

/// Expands a rule's pattern for one connection. `None` if the pattern needs
/// a `{sub}` the connection does not have (anonymous, or a sub that is not
/// [`templatable_sub`]), or if the result is not a valid pattern.
pub fn expand(template: &str, sub: Option<&str>, max_len: usize) -> Option<Pattern> {
    if !template.contains(SUB_PLACEHOLDER) {
        return Pattern::parse(template, max_len).ok();
    }
    let sub = sub.filter(|s| templatable_sub(s))?;
    Pattern::parse(&template.replace(SUB_PLACEHOLDER, sub), max_len).ok()
}

/// Who a namespace rule grants an action to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Who {
    /// Nobody (through this rule).
    #[default]
    Nobody,
    /// Connections with a valid token.
    Authenticated,
    /// Every connection, anonymous ones included.
    Anyone,
}

impl Who {
    pub fn grants(self, authenticated: bool) -> bool {
        match self {
            Who::Nobody => false,
            Who::Authenticated => authenticated,
            Who::Anyone => true,
        }
    }
}

/// A configured namespace rule (`[[auth.rules]]`): grants reading and/or
/// publishing on the topics `pattern` matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A pattern; may contain `{sub}` (the connection's user id).
    pub pattern: String,
    /// Who may subscribe (and read history/presence).
    #[serde(default)]
    pub subscribe: Who,
    /// Who may publish.
    #[serde(default)]
    pub publish: Who,
}

/// What a verified token grants by itself (its `subscribe`, `publish` and
/// `broadcast` claims).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    pub subscribe: Vec<Pattern>,
    pub publish: Vec<Pattern>,
    pub broadcast: bool,
}

/// One connection's permissions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    unrestricted: bool,
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
    broadcast: bool,
}

impl Permissions {
    /// Everything allowed: authentication is not configured (quick start).
    pub fn unrestricted() -> Self {
        Permissions {
            unrestricted: true,
            ..Permissions::default()
        }
    }

    /// Nothing allowed.
    pub fn none() -> Self {
        Permissions::default()
    }

    /// Merges the rules that apply to this connection with its token's
    /// grant. `sub` is `None` for an anonymous connection.
    pub fn build(
        rules: &[Rule],
        broadcast: Who,
        sub: Option<&str>,
        grant: Option<&Grant>,
        max_len: usize,
    ) -> Self {
        let authenticated = sub.is_some();
        let mut p = Permissions::none();
        for rule in rules {
            let read = rule.subscribe.grants(authenticated);
            let write = rule.publish.grants(authenticated);
            if !read && !write {
                continue;
            }
            let Some(pattern) = expand(&rule.pattern, sub, max_len) else {
                continue;
            };
            if read {
                add(&mut p.subscribe, pattern.clone());
            }
            if write {
                add(&mut p.publish, pattern);
            }
        }
        if let Some(g) = grant {
            for pattern in &g.subscribe {
                add(&mut p.subscribe, pattern.clone());
            }
            for pattern in &g.publish {
                add(&mut p.publish, pattern.clone());
            }
            p.broadcast = g.broadcast;
        }
        p.broadcast |= broadcast.grants(authenticated);
        p
    }

    pub fn is_unrestricted(&self) -> bool {
        self.unrestricted
    }

    /// May the connection subscribe to `pattern`? Only if one granted
    /// pattern [`covers`] it.
    pub fn can_subscribe(&self, pattern: &Pattern) -> bool {
        self.unrestricted || self.subscribe.iter().any(|g| covers(g, pattern))
    }

    /// May the connection publish to `topic`?
    pub fn can_publish(&self, topic: &Topic) -> bool {
        self.unrestricted || self.publish.iter().any(|g| g.matches(topic))
    }

    /// May the connection send a `broadcast` to every connection?
    pub fn can_broadcast(&self) -> bool {
        self.unrestricted || self.broadcast
    }

    /// May the connection read the stored history of `pattern`? (For the
    /// history feature: the same as subscribing.)
    pub fn can_read_history(&self, pattern: &Pattern) -> bool {
        self.can_subscribe(pattern)
    }

    /// May the connection see who is present on `pattern`? (For the
    /// presence feature: the same as subscribing.)
    pub fn can_see_presence(&self, pattern: &Pattern) -> bool {
        self.can_subscribe(pattern)
    }

    /// The granted read patterns (minimal: none covers another).
    pub fn subscribe_patterns(&self) -> &[Pattern] {
        &self.subscribe
    }

    /// The granted publish patterns (minimal: none covers another).
    pub fn publish_patterns(&self) -> &[Pattern] {
        &self.publish
    }
}

/// Adds `p` to a list kept minimal: skipped if already covered, and
/// removes the entries it covers.
fn add(list: &mut Vec<Pattern>, p: Pattern) {
    if list.iter().any(|g| covers(g, &p)) {
        return;
    }
    list.retain(|g| !covers(&p, g));
    list.push(p);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn t(s: &str) -> Topic {
        Topic::parse(s, 256).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn covers_on_examples() {
        let yes = [
            ("a.b", "a.b"),
            ("a.*", "a.b"),
            ("a.*", "a.*"),
            ("a.>", "a.b"),
            ("a.>", "a.*"),
            ("a.>", "a.b.c"),
            ("a.>", "a.*.>"),
            ("a.>", "a.>"),
            (">", "a"),
            (">", ">"),
            (">", "*.>"),
            ("*.>", "a.>"),
            ("*.*", "a.b"),
            ("*.b.>", "a.b.c.>"),
        ];
        for (o, i) in yes {
            assert!(covers(&p(o), &p(i)), "{o} should cover {i}");
        }
        let no = [
            ("a.b", "a.*"),
            ("a.b", "a.>"),
            ("a.*", "a.>"),
            ("a.*", "a.b.c"),
            ("a.>", "a"),
            ("a.>", ">"),
            ("a.>", "*.b"),
            ("*.b", "a.>"),
            ("a.b.>", "a.>"),
            ("*", ">"),
            ("*.>", ">"),
            ("a", "b"),
            ("a.b", "a.b.c"),
        ];
        for (o, i) in no {
            assert!(!covers(&p(o), &p(i)), "{o} should not cover {i}");
        }
    }

    #[test]
    fn templating_rejects_subs_that_are_not_plain_tokens() {
        assert_eq!(
            expand("user.{sub}.>", Some("alice"), 256),
            Some(p("user.alice.>"))
        );
        for bad in [
            "",
            "a.b",
            "*",
            ">",
            "a*",
            "x>",
            "a b",
            "caf\u{e9}",
            "a\u{0}",
        ] {
            assert_eq!(expand("user.{sub}.>", Some(bad), 256), None, "{bad:?}");
        }
        assert_eq!(expand("user.{sub}.>", None, 256), None, "anonymous");
        assert_eq!(expand("public.>", None, 256), Some(p("public.>")));
        assert_eq!(
            expand("u.{sub}", Some(&"x".repeat(100)), 50),
            None,
            "too long"
        );
        assert!(!templatable_sub(&"x".repeat(129)));
    }

    fn rules() -> Vec<Rule> {
        vec![
            Rule {
                pattern: "public.>".into(),
                subscribe: Who::Anyone,
                publish: Who::Authenticated,
            },
            Rule {
                pattern: "user.{sub}.>".into(),
                subscribe: Who::Authenticated,
                publish: Who::Authenticated,
            },
            Rule {
                pattern: "lobby".into(),
                subscribe: Who::Nobody,
                publish: Who::Anyone,
            },
        ]
    }

    #[test]
    fn rules_and_grants_merge() {
        let anon = Permissions::build(&rules(), Who::Nobody, None, None, 256);
        assert!(anon.can_subscribe(&p("public.news")));
        assert!(anon.can_subscribe(&p("public.>")));
        assert!(!anon.can_subscribe(&p(">")));
        assert!(!anon.can_publish(&t("public.news")));
        assert!(anon.can_publish(&t("lobby")));
        assert!(!anon.can_subscribe(&p("lobby")));
        assert!(!anon.can_subscribe(&p("user.alice.inbox")));
        assert!(!anon.can_broadcast());

        let grant = Grant {
            subscribe: vec![p("chat.>"), p("chat.room1")],
            publish: vec![p("chat.*")],
            broadcast: false,
        };
        let alice = Permissions::build(&rules(), Who::Nobody, Some("alice"), Some(&grant), 256);
        assert!(alice.can_subscribe(&p("user.alice.inbox")));
        assert!(alice.can_subscribe(&p("user.alice.>")));
        assert!(!alice.can_subscribe(&p("user.bob.inbox")));
        assert!(!alice.can_subscribe(&p("user.*.inbox")));
        assert!(alice.can_publish(&t("user.alice.x")));
        assert!(alice.can_publish(&t("public.x")));
        assert!(alice.can_publish(&t("chat.room9")));
        assert!(!alice.can_publish(&t("chat.room9.thread")));
        assert!(alice.can_subscribe(&p("chat.*.thread")));
        // Minimal lists: chat.room1 is covered by chat.>.
        assert_eq!(alice.subscribe_patterns().len(), 3, "{alice:?}");

        let weird = Permissions::build(&rules(), Who::Authenticated, Some("a.b"), None, 256);
        assert!(!weird.can_subscribe(&p("user.a.b.x")));
        assert!(!weird.can_subscribe(&p("user.a.>")));
        assert!(weird.can_subscribe(&p("public.x")));
        assert!(weird.can_broadcast());

        let all = Permissions::unrestricted();
        assert!(all.can_subscribe(&p(">")) && all.can_publish(&t("x")) && all.can_broadcast());
        let none = Permissions::none();
        assert!(!none.can_subscribe(&p("x")) && !none.can_publish(&t("x")));
    }

    /// The reference: `outer` covers `inner` iff no topic is matched by
    /// `inner` but not by `outer`. Patterns here use only the literals `a`
    /// and `b`, so topics over {a, b, c} (`c` standing for "any other
    /// token") of length up to one more than the longer pattern are enough
    /// witnesses: a longer witness can be cut to that length, and any other
    /// token behaves like `c`.
    fn covers_by_enumeration(outer: &Pattern, inner: &Pattern) -> bool {
        let len = outer.tokens().count().max(inner.tokens().count()) + 1;
        let mut topics: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..len {
            let mut longer = Vec::new();
            for prefix in &topics {
                for tok in ["a", "b", "c"] {
                    let mut longer_one = prefix.clone();
                    longer_one.push(tok);
                    longer.push(longer_one);
                }
            }
            for toks in &longer {
                let topic = t(&toks.join("."));
                if inner.matches(&topic) && !outer.matches(&topic) {
                    return false;
                }
            }
            topics = longer;
        }
        true
    }

    fn pattern() -> impl proptest::strategy::Strategy<Value = Pattern> {
        use proptest::prelude::*;
        (
            prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*")], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("non-empty", |(toks, gt)| {
                let mut toks: Vec<&str> = toks;
                if gt {
                    toks.push(">");
                }
                (!toks.is_empty()).then(|| p(&toks.join(".")))
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn covers_agrees_with_enumeration(outer in pattern(), inner in pattern()) {
            proptest::prop_assert_eq!(
                covers(&outer, &inner),
                covers_by_enumeration(&outer, &inner),
                "{} covers {}", outer, inner
            );
        }

        #[test]
        fn permissions_subscribe_agrees_with_some_grant_covering(
            grants in proptest::collection::vec(pattern(), 0..6),
            wanted in pattern(),
        ) {
            let grant = Grant { subscribe: grants.clone(), publish: vec![], broadcast: false };
            let perms = Permissions::build(&[], Who::Nobody, Some("u"), Some(&grant), 256);
            let want = grants.iter().any(|g| covers_by_enumeration(g, &wanted));
            proptest::prop_assert_eq!(perms.can_subscribe(&wanted), want);
        }
    }
}
