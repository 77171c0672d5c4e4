//! Which backbone subscription delivers a message when a node holds
//! overlapping patterns (`a.b` and `a.*`): NATS delivers one copy per
//! matching subscription, and the node must pass on exactly one — the copy
//! of the oldest matching subscription, so adding a pattern never changes
//! which copy is delivered and one publisher's order holds.

use rustc_hash::FxHashMap;

use crate::topic::{Pattern, Topic};
use crate::trie::WildcardTrie;

/// Subscription ids by exact topic and wildcard pattern.
#[derive(Default)]
pub(crate) struct SubscriptionIndex {
    exact: FxHashMap<Topic, u64>,
    wild: WildcardTrie<()>,
}

impl SubscriptionIndex {
    pub(crate) fn insert(&mut self, pattern: &Pattern, id: u64) {
        match pattern.as_topic() {
            Some(t) => {
                self.exact.insert(t, id);
            }
            None => {
                self.wild.insert(pattern, id, ());
            }
        }
    }

    pub(crate) fn remove(&mut self, pattern: &Pattern, id: u64) {
        match pattern.as_topic() {
            Some(t) => {
                self.exact.remove(t.as_str());
            }
            None => {
                self.wild.remove(pattern, id);
            }
        }
    }

    /// True if subscription `id` is the one whose copy of a message on
    /// `topic` is delivered. Free while the node holds no wildcard.
    pub(crate) fn delivers(&self, topic: &Topic, id: u64) -> bool {
        if self.wild.is_empty() {
            return true;
        }
        let mut min = self.exact.get(topic.as_str()).copied().unwrap_or(u64::MAX);
        self.wild
            .for_each_match(topic, |other, _| min = min.min(other));
        min >= id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s, 64).unwrap_or_else(|e| panic!("{e}"))
    }
    fn t(s: &str) -> Topic {
        Topic::parse(s, 64).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_oldest_matching_subscription_delivers() {
        let mut ix = SubscriptionIndex::default();
        ix.insert(&p("a.b"), 1);
        assert!(ix.delivers(&t("a.b"), 1));
        ix.insert(&p("a.*"), 2);
        assert!(ix.delivers(&t("a.b"), 1));
        assert!(!ix.delivers(&t("a.b"), 2), "a.* is younger than a.b");
        assert!(ix.delivers(&t("a.c"), 2), "only a.* matches a.c");
        ix.remove(&p("a.b"), 1);
        assert!(ix.delivers(&t("a.b"), 2));
    }
}
