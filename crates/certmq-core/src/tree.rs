//! The subscription trie: topic filters, level by level, to subscribers.
//!
//! Matching a topic walks one path per level plus the `+` and `#` branches,
//! so its cost grows with the topic depth, not with the number of filters.
//! Shared subscriptions live at their filter's node, one group per name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use certmq_codec::SubscriptionOptions;

use crate::topic::ParsedFilter;
use crate::{Mailbox, SessionId};

/// One session's subscription at one filter.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub mailbox: Arc<Mailbox>,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
    /// Set when authorization allows the filter only in part: each
    /// delivery is checked against these facts
    /// ([`crate::SubscribeVerdict::Checked`]).
    pub check: Option<Arc<crate::ClientFacts>>,
}

impl Subscriber {
    pub fn session(&self) -> SessionId {
        self.mailbox.id()
    }
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// Round robin over the members: the next one with room in its queue;
    /// failing that, the next online one that is not stalled (its
    /// publisher then waits for it); failing that, the next one (the
    /// drop policy applies). So a stalled member is skipped while any
    /// other can take the message.
    fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for usable in [Mailbox::has_room, Mailbox::is_live] {
            for i in 0..n {
                let m = self.members.get((start + i) % n)?;
                if usable(&m.mailbox) {
                    self.next.store(start + i + 1, Ordering::Relaxed);
                    return Some(m);
                }
            }
        }
        self.members.get(start % n)
    }
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: HashMap<SessionId, Subscriber>,
    shared: HashMap<Box<str>, SharedGroup>,
}

impl crate::levels::LevelNode for Node {
    fn children(&self) -> &HashMap<Box<str>, Self> {
        &self.children
    }
    fn children_mut(&mut self) -> &mut HashMap<Box<str>, Self> {
        &mut self.children
    }
    fn occupied(&self) -> bool {
        !self.subs.is_empty() || !self.shared.is_empty()
    }
}

/// Dropping a deep chain of nodes must not recurse once per level.
impl Drop for Node {
    fn drop(&mut self) {
        crate::levels::drop_children(self);
    }
}

/// A match: the subscriber and whether it came from a shared subscription.
pub type Match<'a> = (&'a Subscriber, bool);

#[derive(Debug, Default)]
pub struct SubscriptionTree {
    root: Node,
    len: usize,
}

impl SubscriptionTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions held (shared members included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces a session's subscription; returns true when it replaced one.
    pub fn insert(&mut self, filter: &ParsedFilter<'_>, sub: Subscriber) -> bool {
        let mut node = &mut self.root;
        for level in filter.filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let existed = match filter.share_group {
            None => node.subs.insert(sub.session(), sub).is_some(),
            Some(group) => {
                let g = node.shared.entry(group.into()).or_default();
                match g.members.iter_mut().find(|m| m.session() == sub.session()) {
                    Some(m) => {
                        *m = sub;
                        true
                    }
                    None => {
                        g.members.push(sub);
                        false
                    }
                }
            }
        };
        if !existed {
            self.len += 1;
        }
        existed
    }

    /// Removes a session's subscription; returns whether it existed.
    /// Iterative: no recursion on the filter's depth.
    /// A session's subscription at `filter`.
    pub fn get(&self, filter: &ParsedFilter<'_>, session: SessionId) -> Option<&Subscriber> {
        let mut node = &self.root;
        for level in filter.filter.split('/') {
            node = node.children.get(level)?;
        }
        match filter.share_group {
            None => node.subs.get(&session),
            Some(group) => node
                .shared
                .get(group)?
                .members
                .iter()
                .find(|m| m.session() == session),
        }
    }

    /// One member of the shared group `filter` names (round robin, as
    /// [`Tree::matches`] picks), if the group has members here.
    pub fn pick_shared(&self, filter: &ParsedFilter<'_>) -> Option<&Subscriber> {
        let group = filter.share_group?;
        let mut node = &self.root;
        for level in filter.filter.split('/') {
            node = node.children.get(level)?;
        }
        node.shared.get(group)?.pick()
    }

    pub fn remove(&mut self, filter: &ParsedFilter<'_>, session: SessionId) -> bool {
        let levels: Vec<&str> = filter.filter.split('/').collect();
        // Down to the filter's node.
        let mut node = &mut self.root;
        for level in &levels {
            match node.children.get_mut(*level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        let removed = match filter.share_group {
            None => node.subs.remove(&session).is_some(),
            Some(group) => match node.shared.get_mut(group) {
                None => false,
                Some(g) => {
                    let before = g.members.len();
                    g.members.retain(|m| m.session() != session);
                    let removed = g.members.len() != before;
                    if g.members.is_empty() {
                        node.shared.remove(group);
                    }
                    removed
                }
            },
        };
        if !removed {
            return false;
        }
        self.len -= 1;
        crate::levels::prune(&mut self.root, &levels);
        true
    }

    /// Appends every subscriber whose filter matches `topic`; for each shared
    /// group, one member. Returns true when matches came from more than one
    /// node, so one session may appear more than once. Iterative: the `+`
    /// branches wait on an explicit stack, so no recursion on the depth.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<Match<'a>>) -> bool {
        let mut nodes = 0;
        let mut pending: Vec<(&'a Node, std::str::Split<'_, char>, bool)> = Vec::new();
        let mut current = Some((&self.root, topic.split('/'), topic.starts_with('$')));
        while let Some((mut node, mut levels, mut first_is_dollar)) =
            current.take().or_else(|| pending.pop())
        {
            loop {
                let Some(level) = levels.next() else {
                    add(node, out, &mut nodes);
                    // "a/#" also matches "a".
                    if let Some(hash) = node.children.get("#") {
                        add(hash, out, &mut nodes);
                    }
                    break;
                };
                if !first_is_dollar {
                    if let Some(hash) = node.children.get("#") {
                        add(hash, out, &mut nodes);
                    }
                    if let Some(plus) = node.children.get("+") {
                        pending.push((plus, levels.clone(), false));
                    }
                }
                first_is_dollar = false;
                match node.children.get(level) {
                    Some(child) => node = child,
                    None => break,
                }
            }
        }
        nodes > 1
    }
}

fn add<'a>(node: &'a Node, out: &mut Vec<Match<'a>>, nodes: &mut usize) {
    if node.subs.is_empty() && node.shared.is_empty() {
        return;
    }
    *nodes += 1;
    out.extend(node.subs.values().map(|s| (s, false)));
    out.extend(
        node.shared
            .values()
            .filter_map(|g| g.pick())
            .map(|s| (s, true)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{matches as oracle, parse_filter};
    use proptest::prelude::*;

    fn sub(id: u64) -> Subscriber {
        Subscriber {
            mailbox: Arc::new(Mailbox::new(SessionId(id), "test".into(), 10)),
            options: SubscriptionOptions::default(),
            subscription_id: None,
            check: None,
        }
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("".to_owned()),
            Just("$x".to_owned())
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![level(), Just("+".to_owned())], 1..4)
            .prop_flat_map(|levels| {
                (Just(levels), any::<bool>()).prop_map(|(mut l, hash)| {
                    if hash {
                        l.push("#".to_owned());
                    }
                    l.join("/")
                })
            })
            .prop_filter("a filter is never empty", |f| !f.is_empty())
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    proptest! {
        /// The trie finds exactly the filters that the brute-force matcher accepts.
        #[test]
        fn trie_agrees_with_brute_force(filters in proptest::collection::vec(filter(), 1..12), topics in proptest::collection::vec(topic(), 1..8), removals in proptest::collection::vec(any::<usize>(), 0..4)) {
            let mut tree = SubscriptionTree::new();
            let mut live: Vec<(u64, String)> = Vec::new();
            for (i, f) in filters.iter().enumerate() {
                let parsed = parse_filter(f).unwrap();
                tree.insert(&parsed, sub(i as u64));
                live.push((i as u64, f.clone()));
            }
            for r in removals {
                if live.is_empty() { break; }
                let (id, f) = live.remove(r % live.len());
                prop_assert!(tree.remove(&parse_filter(&f).unwrap(), SessionId(id)));
            }
            prop_assert_eq!(tree.len(), live.len());
            for t in &topics {
                let mut out = Vec::new();
                tree.matches(t, &mut out);
                let mut got: Vec<u64> = out.iter().map(|(s, _)| s.session().0).collect();
                got.sort_unstable();
                let mut want: Vec<u64> = live.iter().filter(|(_, f)| oracle(f, t)).map(|(id, _)| *id).collect();
                want.sort_unstable();
                prop_assert_eq!(got, want, "topic {}", t);
            }
        }
    }

    /// Filters far deeper than any limit: insert, match, remove and drop
    /// run on a small stack (no recursion per level), and removal leaves no
    /// node behind.
    #[test]
    fn deep_filters_do_not_recurse() {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let deep = vec!["a"; 100_000].join("/");
                let plus = vec!["+"; 100_000].join("/");
                let mut tree = SubscriptionTree::new();
                tree.insert(&parse_filter(&deep).unwrap(), sub(1));
                tree.insert(&parse_filter(&plus).unwrap(), sub(2));
                tree.insert(&parse_filter("a/#").unwrap(), sub(3));
                let mut out = Vec::new();
                tree.matches(&deep, &mut out);
                assert_eq!(out.len(), 3);
                assert!(tree.remove(&parse_filter(&deep).unwrap(), SessionId(1)));
                assert!(tree.remove(&parse_filter(&plus).unwrap(), SessionId(2)));
                assert_eq!(tree.root.children.len(), 1, "only a/# is left");
                assert!(tree.remove(&parse_filter("a/#").unwrap(), SessionId(3)));
                assert!(tree.root.children.is_empty());
                // Dropping a tree that still holds a deep chain.
                tree.insert(&parse_filter(&plus).unwrap(), sub(4));
                drop(tree);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn shared_group_round_robins_over_online_members() {
        let mut tree = SubscriptionTree::new();
        let f = parse_filter("$share/g/t").unwrap();
        let subs: Vec<Subscriber> = (0..3).map(sub).collect();
        for s in &subs {
            s.mailbox.set_online(true, 0);
            tree.insert(&f, s.clone());
        }
        subs[1].mailbox.set_online(false, 0);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut out = Vec::new();
            tree.matches("t", &mut out);
            assert_eq!(out.len(), 1);
            assert!(out[0].1);
            seen.push(out[0].0.session().0);
        }
        assert_eq!(seen, vec![0, 2, 0, 2]);
    }
}
