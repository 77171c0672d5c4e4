//! Token trie for wildcard subscriptions.
//!
//! Only patterns holding `*` or `>` live here; exact topics are a hash
//! lookup in the hub. Matching walks at most two branches per token (the
//! literal child and the `*` child), so its cost depends on the topic's
//! depth and the number of *matching* patterns, never on the total number of
//! wildcard subscriptions.

use rustc_hash::FxHashMap;

use crate::topic::{Pattern, Topic};

/// Identifies one connection on this node.
pub type ConnId = u64;

/// The subscribers of one pattern, keyed by connection.
pub type Subscribers<V> = FxHashMap<ConnId, V>;

struct Node<V> {
    children: FxHashMap<Box<str>, Node<V>>,
    star: Option<Box<Node<V>>>,
    /// Patterns that end at this node.
    here: Subscribers<V>,
    /// Patterns that end at this node with a trailing `>`.
    rest: Subscribers<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: FxHashMap::default(),
            star: None,
            here: FxHashMap::default(),
            rest: FxHashMap::default(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

/// Wildcard patterns → subscribers.
pub struct WildcardTrie<V> {
    root: Node<V>,
    patterns: usize,
}

impl<V> Default for WildcardTrie<V> {
    fn default() -> Self {
        WildcardTrie {
            root: Node::default(),
            patterns: 0,
        }
    }
}

impl<V> WildcardTrie<V> {
    /// Number of distinct patterns with at least one subscriber.
    pub fn patterns(&self) -> usize {
        self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns == 0
    }

    /// Adds `id` to `pattern`. Returns true if the pattern had no subscriber before.
    pub fn insert(&mut self, pattern: &Pattern, id: ConnId, value: V) -> bool {
        let mut node = &mut self.root;
        let mut tokens = pattern.tokens().peekable();
        let mut trailing_gt = false;
        while let Some(tok) = tokens.next() {
            match tok {
                ">" if tokens.peek().is_none() => {
                    trailing_gt = true;
                }
                "*" => node = node.star.get_or_insert_with(Box::default),
                lit => node = node.children.entry(Box::from(lit)).or_default(),
            }
        }
        let set = if trailing_gt {
            &mut node.rest
        } else {
            &mut node.here
        };
        let first = set.is_empty();
        set.insert(id, value);
        if first {
            self.patterns += 1;
        }
        first
    }

    /// Removes `id` from `pattern`. Returns true if the pattern has no subscriber left.
    pub fn remove(&mut self, pattern: &Pattern, id: ConnId) -> bool {
        let tokens: Vec<&str> = pattern.tokens().collect();
        let (emptied, _) = Self::remove_at(&mut self.root, &tokens, id);
        if emptied {
            self.patterns -= 1;
        }
        emptied
    }

    /// Returns (pattern emptied, node now prunable).
    fn remove_at(node: &mut Node<V>, tokens: &[&str], id: ConnId) -> (bool, bool) {
        let emptied = match tokens {
            [] => node.here.remove(&id).is_some() && node.here.is_empty(),
            [">"] => node.rest.remove(&id).is_some() && node.rest.is_empty(),
            ["*", rest @ ..] => match node.star.as_deref_mut() {
                Some(child) => {
                    let (emptied, prune) = Self::remove_at(child, rest, id);
                    if prune {
                        node.star = None;
                    }
                    emptied
                }
                None => false,
            },
            [lit, rest @ ..] => match node.children.get_mut(*lit) {
                Some(child) => {
                    let (emptied, prune) = Self::remove_at(child, rest, id);
                    if prune {
                        node.children.remove(*lit);
                    }
                    emptied
                }
                None => false,
            },
        };
        (emptied, node.is_empty())
    }

    /// True if `pattern` has at least one subscriber.
    pub fn contains(&self, pattern: &Pattern) -> bool {
        let mut node = &self.root;
        let mut tokens = pattern.tokens().peekable();
        while let Some(tok) = tokens.next() {
            let next = match tok {
                ">" if tokens.peek().is_none() => return !node.rest.is_empty(),
                "*" => node.star.as_deref(),
                lit => node.children.get(lit),
            };
            match next {
                Some(n) => node = n,
                None => return false,
            }
        }
        !node.here.is_empty()
    }

    /// Calls `f` once per (pattern, subscriber) pair whose pattern matches `topic`.
    /// A subscriber holding two matching patterns is reported twice; the hub dedups.
    pub fn for_each_match(&self, topic: &Topic, mut f: impl FnMut(ConnId, &V)) {
        if self.patterns == 0 {
            return;
        }
        let tokens: smallvec_tokens::Tokens<'_> = smallvec_tokens::split(topic.as_str());
        Self::walk(&self.root, tokens.as_slice(), &mut f);
    }

    fn walk(node: &Node<V>, tokens: &[&str], f: &mut impl FnMut(ConnId, &V)) {
        match tokens {
            [] => {
                for (id, v) in &node.here {
                    f(*id, v);
                }
            }
            [first, rest @ ..] => {
                for (id, v) in &node.rest {
                    f(*id, v);
                }
                if let Some(child) = node.children.get(*first) {
                    Self::walk(child, rest, f);
                }
                if let Some(star) = node.star.as_deref() {
                    Self::walk(star, rest, f);
                }
            }
        }
    }
}

/// Splitting a topic into tokens without a heap allocation for typical depths.
mod smallvec_tokens {
    const INLINE: usize = 16;

    // A short-lived stack value; boxing the inline variant would defeat it.
    #[allow(clippy::large_enum_variant)]
    pub enum Tokens<'a> {
        Inline([&'a str; INLINE], usize),
        Heap(Vec<&'a str>),
    }

    impl<'a> Tokens<'a> {
        pub fn as_slice(&self) -> &[&'a str] {
            match self {
                Tokens::Inline(arr, n) => &arr[..*n],
                Tokens::Heap(v) => v,
            }
        }
    }

    pub fn split(s: &str) -> Tokens<'_> {
        let mut arr = [""; INLINE];
        let mut n = 0;
        for tok in s.split('.') {
            if n == INLINE {
                return Tokens::Heap(s.split('.').collect());
            }
            arr[n] = tok;
            n += 1;
        }
        Tokens::Inline(arr, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap_or_else(|e| panic!("{e}"))
    }
    fn t(s: &str) -> Topic {
        Topic::parse(s, 256).unwrap_or_else(|e| panic!("{e}"))
    }
    fn matches(trie: &WildcardTrie<()>, topic: &str) -> Vec<ConnId> {
        let mut v = Vec::new();
        trie.for_each_match(&t(topic), |id, _| v.push(id));
        v.sort();
        v
    }

    #[test]
    fn insert_match_remove() {
        let mut trie = WildcardTrie::default();
        assert!(trie.insert(&p("a.*"), 1, ()));
        assert!(!trie.insert(&p("a.*"), 2, ()));
        assert!(trie.insert(&p("a.>"), 3, ()));
        assert!(trie.insert(&p("*.b.c"), 4, ()));
        assert_eq!(trie.patterns(), 3);
        assert!(trie.contains(&p("a.>")) && trie.contains(&p("*.b.c")));
        assert!(!trie.contains(&p("a.b.>")) && !trie.contains(&p("*")));
        assert_eq!(matches(&trie, "a.b"), vec![1, 2, 3]);
        assert_eq!(matches(&trie, "a.b.c"), vec![3, 4]);
        assert_eq!(matches(&trie, "a"), Vec::<ConnId>::new());
        assert!(!trie.remove(&p("a.*"), 1));
        assert!(trie.remove(&p("a.*"), 2));
        assert!(!trie.remove(&p("a.*"), 2), "removing twice is a no-op");
        assert_eq!(matches(&trie, "a.b"), vec![3]);
        assert!(trie.remove(&p("a.>"), 3));
        assert!(trie.remove(&p("*.b.c"), 4));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn deep_topics_spill_to_heap() {
        let mut trie = WildcardTrie::default();
        trie.insert(&p("a.>"), 1, ());
        let deep = vec!["a"; 40].join(".");
        assert_eq!(matches(&trie, &deep), vec![1]);
    }
}
