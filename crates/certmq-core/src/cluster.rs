//! The `cluster` seam: where a bridge to other nodes plugs in. The broker
//! tells a [`Forwarder`] (installed with [`crate::Broker::set_forwarder`])
//! every message published on this node, and every change of the set of
//! filters this node's sessions subscribe to (the first subscriber of a
//! filter, and the last one leaving), so that a bridge subscribes other
//! nodes' traffic only for what is wanted here. Without one, nothing is
//! forwarded (a single node).

use std::sync::Arc;

use crate::{Mailbox, Message, PushMode};

/// Receives what other nodes need to know. Must not block: it runs on
/// the publish and subscribe paths (queue and return).
pub trait Forwarder: Send + Sync + std::fmt::Debug + 'static {
    /// A message published on this node (after local routing), queued
    /// under `mode` as a delivery would be. Returns the queue when it is
    /// full and a publisher that can wait should (the broker's flow
    /// control then treats it as a subscriber's queue).
    fn forward(&self, message: &Arc<Message>, mode: PushMode) -> Option<Arc<Mailbox>>;
    /// This node now has a subscriber of `filter` (raw, `$share/...`
    /// included).
    fn route_added(&self, filter: &str);
    /// This node has no subscriber of `filter` left.
    fn route_removed(&self, filter: &str);
    /// A client connected here with `client_id`: a node holding a session
    /// of that id closes its connection (0x8E) and forgets it, since one
    /// client id is one session in the cluster.
    /// `at`: when, unix milliseconds (a node that hears of it late keeps
    /// a connection that came after it).
    fn session_opened(&self, _client_id: &str, _at_ms: u64) {}
    /// Whether the forwarder delivers to shared subscriptions now (one
    /// member in the whole cluster, through [`crate::Broker::route_shared`]):
    /// the broker's own routing then leaves them out.
    fn routes_shared(&self) -> bool {
        false
    }
}
