//! What the subscription trie and the retained index share: nodes keyed
//! by topic level, removal of the bare path a deletion leaves, and
//! dropping without recursion. Client-supplied depth never recurses.

use std::collections::HashMap;

/// A node of a level-keyed tree.
pub(crate) trait LevelNode: Sized {
    fn children(&self) -> &HashMap<Box<str>, Self>;
    fn children_mut(&mut self) -> &mut HashMap<Box<str>, Self>;
    /// The node holds something (subscribers, a retained message).
    fn occupied(&self) -> bool;
}

/// After something was removed at the end of `levels`, cuts from its
/// parent the shallowest node from which the rest of the path is a bare
/// chain (nothing held, one child) ending in an empty leaf.
pub(crate) fn prune<N: LevelNode>(root: &mut N, levels: &[&str]) {
    let mut cut = None;
    let mut node = &*root;
    for (depth, level) in levels.iter().enumerate() {
        let Some(child) = node.children().get(*level) else {
            return;
        };
        let last = depth + 1 == levels.len();
        let bare = !child.occupied()
            && if last {
                child.children().is_empty()
            } else {
                child.children().len() == 1
            };
        cut = match (bare, cut) {
            (false, _) => None,
            (true, None) => Some(depth + 1),
            (true, c) => c,
        };
        node = child;
    }
    let Some(cut) = cut else { return };
    let mut parent = root;
    for level in levels.iter().take(cut - 1) {
        match parent.children_mut().get_mut(*level) {
            Some(child) => parent = child,
            None => return,
        }
    }
    if let Some(level) = levels.get(cut - 1) {
        // Freed by the node type's `Drop`, which calls `drop_children`.
        parent.children_mut().remove(*level);
    }
}

/// Empties `node`'s subtree with an explicit stack (for `Drop`): a chain
/// thousands of levels deep must not drop by recursion.
pub(crate) fn drop_children<N: LevelNode>(node: &mut N) {
    let mut stack: Vec<N> = node.children_mut().drain().map(|(_, n)| n).collect();
    while let Some(mut n) = stack.pop() {
        stack.extend(n.children_mut().drain().map(|(_, c)| c));
    }
}
