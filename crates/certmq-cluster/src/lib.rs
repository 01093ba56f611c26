//! certmq's cluster plane (SPEC 13). This first part maps MQTT topic names
//! and filters to NATS subjects, reversibly, so that a node can subscribe
//! on NATS to exactly the filters its local sessions hold and NATS's own
//! matching delivers each publish to the nodes that want it.
//!
//! What it does not do yet: connect to NATS or PostgreSQL (the forwarder,
//! cluster-wide client ids and the PostgreSQL store come next).

#![forbid(unsafe_code)]

pub mod subject;
