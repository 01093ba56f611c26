//! Retained messages, indexed by topic level like the subscription trie,
//! so that a SUBSCRIBE's wildcard filter costs what it visits, not the
//! size of the store, and the walk stops at a budget.
//!
//! No operation recurses on the topic's depth: lookups, inserts and
//! removals loop, matching keeps its own stack, and dropping a node frees
//! its subtree iteratively.

use crate::Time;
use std::collections::HashMap;
use std::sync::Arc;

use crate::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl crate::levels::LevelNode for Node {
    fn children(&self) -> &HashMap<Box<str>, Self> {
        &self.children
    }
    fn children_mut(&mut self) -> &mut HashMap<Box<str>, Self> {
        &mut self.children
    }
    fn occupied(&self) -> bool {
        self.message.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        crate::levels::drop_children(self);
    }
}

/// The retained store.
#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    len: usize,
}

/// What a match found, and whether it stopped early.
#[derive(Debug, Default)]
pub struct Found {
    pub messages: Vec<Arc<Message>>,
    /// The limit or the visit budget cut the walk short.
    pub truncated: bool,
    /// Index nodes visited.
    pub visits: usize,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `message` as the retained message of its topic.
    pub fn insert(&mut self, message: Arc<Message>) {
        let mut node = &mut self.root;
        for level in message.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.len += 1;
        }
    }

    /// Clears the retained message of `topic`, pruning empty nodes.
    pub fn remove(&mut self, topic: &str) {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut node = &mut self.root;
        for level in &levels {
            match node.children.get_mut(*level) {
                Some(child) => node = child,
                None => return,
            }
        }
        if node.message.take().is_none() {
            return;
        }
        self.len -= 1;
        crate::levels::prune(&mut self.root, &levels);
    }

    /// Unexpired retained messages matching `filter` (validated, without
    /// `$share/`): at most `limit` of them, visiting at most `budget`
    /// nodes. Wildcards in the first level never match `$` topics.
    pub fn matching(&self, filter: &str, now: Time, limit: usize, budget: usize) -> Found {
        enum Step<'a> {
            /// `node` against the filter from level `i` on.
            Match(&'a Node, usize),
            /// `node` and everything below it (under a `#`).
            All(&'a Node),
        }
        let mut found = Found::default();
        let levels: Vec<&str> = filter.split('/').collect();
        let mut visits = 0usize;
        let take = |node: &Node, found: &mut Found| {
            if let Some(m) = node.message.as_ref().filter(|m| !m.is_expired(now)) {
                found.messages.push(m.clone());
            }
        };
        let mut stack = vec![Step::Match(&self.root, 0)];
        while let Some(step) = stack.pop() {
            visits += 1;
            found.visits = visits;
            if visits > budget || found.messages.len() >= limit {
                found.truncated = true;
                return found;
            }
            let (node, i) = match step {
                Step::All(node) => {
                    take(node, &mut found);
                    stack.extend(node.children.values().map(Step::All));
                    continue;
                }
                Step::Match(node, i) => (node, i),
            };
            let Some(level) = levels.get(i) else {
                take(node, &mut found);
                continue;
            };
            let at_root = i == 0;
            let wild_children = || {
                node.children
                    .iter()
                    .filter(move |(name, _)| !(at_root && name.starts_with('$')))
                    .map(|(_, c)| c)
            };
            match *level {
                "#" => {
                    // "a/#" also matches "a".
                    if !at_root {
                        take(node, &mut found);
                    }
                    stack.extend(wild_children().map(Step::All));
                }
                "+" => stack.extend(wild_children().map(|c| Step::Match(c, i + 1))),
                exact => {
                    if let Some(child) = node.children.get(exact) {
                        stack.push(Step::Match(child, i + 1));
                    }
                }
            }
        }
        found
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests take their `now` from the clock
mod tests {
    use super::*;
    use crate::topic::{matches as oracle, parse_filter};
    use proptest::prelude::*;

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: certmq_codec::QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            origin: None,
        })
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("$x")].prop_map(str::to_owned)
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![level(), Just("+".to_owned())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut l, hash)| {
                if hash {
                    l.push("#".into());
                }
                l.join("/")
            })
    }

    proptest! {
        /// The index finds exactly what the brute-force matcher accepts,
        /// and removals leave it consistent.
        #[test]
        fn index_agrees_with_brute_force(
            topics in proptest::collection::vec(topic(), 0..16),
            removals in proptest::collection::vec(any::<usize>(), 0..4),
            filters in proptest::collection::vec(filter(), 1..6),
        ) {
            let mut store = RetainedStore::default();
            let mut live: Vec<String> = Vec::new();
            for t in &topics {
                store.insert(msg(t));
                if !live.contains(t) {
                    live.push(t.clone());
                }
            }
            for r in removals {
                if live.is_empty() { break; }
                let t = live.remove(r % live.len());
                store.remove(&t);
            }
            prop_assert_eq!(store.len(), live.len());
            let now = Time::from_unix_millis(1_700_000_000_000);
            for f in &filters {
                prop_assume!(parse_filter(f).is_ok());
                let mut got: Vec<String> = store
                    .matching(f, now, usize::MAX, usize::MAX)
                    .messages
                    .iter()
                    .map(|m| m.topic.to_string())
                    .collect();
                got.sort();
                let mut want: Vec<String> = live.iter().filter(|t| oracle(f, t)).cloned().collect();
                want.sort();
                prop_assert_eq!(got, want, "filter {}", f);
            }
        }
    }

    #[test]
    fn limit_and_budget_stop_the_walk() {
        let mut store = RetainedStore::default();
        for i in 0..1000 {
            store.insert(msg(&format!("t/{i}")));
        }
        let now = Time::from_unix_millis(1_700_000_000_000);
        let f = store.matching("t/+", now, 10, usize::MAX);
        assert_eq!(f.messages.len(), 10);
        assert!(f.truncated);
        let f = store.matching("#", now, usize::MAX, 50);
        assert!(f.truncated && f.messages.len() < 50);
        let f = store.matching("#", now, usize::MAX, usize::MAX);
        assert_eq!((f.messages.len(), f.truncated), (1000, false));
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let deep = vec!["a"; 50_000].join("/");
                let mut store = RetainedStore::default();
                store.insert(msg(&deep));
                assert_eq!(
                    store
                        .matching(
                            "#",
                            Time::from_unix_millis(1_700_000_000_000),
                            10,
                            usize::MAX
                        )
                        .messages
                        .len(),
                    1
                );
                store.remove(&deep);
                assert!(store.root.children.is_empty());
                store.insert(msg(&deep));
                drop(store);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
