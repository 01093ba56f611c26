//! certmq's cluster plane (SPEC 13). This first part maps MQTT topic names
//! and filters to NATS subjects, reversibly, so that a node can subscribe
//! on NATS to exactly the filters its local sessions hold and NATS's own
//! matching delivers each publish to the nodes that want it.
//!
//! [`bridge`] is the core's `Forwarder` over NATS core: publishes cross to
//! the nodes whose sessions subscribe to them, exactly once per node.
//!
//! What it does not do yet: PostgreSQL (the shared registry and durable
//! state), cluster-wide client ids, shared subscriptions and retained
//! messages across nodes.

#![forbid(unsafe_code)]

pub mod adopt;
pub mod bridge;
pub mod claims;
pub mod follow;
pub mod subject;

pub use bridge::{connect, Bridge, BridgeError, BridgeStats};
pub use claims::Claims;
pub use follow::{follow, FollowStats, Targets};
