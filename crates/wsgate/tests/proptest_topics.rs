//! Property tests: the wildcard trie agrees with the straightforward matcher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use wsgate::trie::WildcardTrie;
use wsgate::{Pattern, Topic};

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        "[a-d]{1,2}"
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..5).prop_map(|t| t.join("."))
}

fn pattern() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![3 => token(), 1 => Just("*".to_string())], 1..5),
        any::<bool>(),
    )
        .prop_map(|(mut toks, gt)| {
            if gt {
                toks.push(">".into());
            }
            toks.join(".")
        })
}

proptest! {
    #[test]
    fn trie_matches_reference(
        patterns in prop::collection::vec(pattern(), 1..30),
        topics in prop::collection::vec(topic(), 1..30),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let patterns: Vec<Pattern> = patterns.iter().map(|p| Pattern::parse(p, 256).unwrap()).collect();
        let mut trie = WildcardTrie::default();
        let mut live: Vec<(u64, Pattern)> = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            if p.is_wildcard() {
                trie.insert(p, i as u64, ());
                live.push((i as u64, p.clone()));
            }
        }
        for r in removals {
            if live.is_empty() { break; }
            let (id, p) = live.remove(r.index(live.len()));
            trie.remove(&p, id);
        }
        for t in &topics {
            let t = Topic::parse(t, 256).unwrap();
            let mut got = Vec::new();
            trie.for_each_match(&t, |id, _| got.push(id));
            got.sort();
            let mut want: Vec<u64> = live.iter().filter(|(_, p)| p.matches(&t)).map(|(id, _)| *id).collect();
            want.sort();
            prop_assert_eq!(got, want, "topic {}", t);
        }
        prop_assert_eq!(trie.is_empty(), live.is_empty());
    }

    #[test]
    fn valid_topics_parse_and_match_themselves(t in topic()) {
        let topic = Topic::parse(&t, 256).unwrap();
        let pattern = Pattern::parse(&t, 256).unwrap();
        prop_assert!(!pattern.is_wildcard());
        prop_assert!(pattern.matches(&topic));
    }

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,40}") {
        let _ = Topic::parse(&s, 32);
        let _ = Pattern::parse(&s, 32);
        let _ = wsgate::protocol::parse(&s, &wsgate::protocol::ParseLimits {
            max_topic_length: 32, max_topics_per_request: 4, max_batch_requests: 4, max_json_depth: 8,
        });
    }
}
