//! The `control` seam: what the rest of certmq (the certificate registry,
//! the admin API, later the cluster) may do to live connections — list
//! them and close them — without knowing how connections are driven.
//! `certmq_net::LocalControl` is the single-node implementation; a cluster
//! wraps it to reach every node.

use std::sync::Arc;

use certmq_codec::ReasonCode;

/// A live connection as a controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConnection {
    pub client_id: Arc<str>,
    /// The client certificate's id and its CA's id, when one was presented.
    pub certificate_id: Option<String>,
    pub ca_id: Option<String>,
}

/// Lists and closes live connections.
pub trait Control: Send + Sync + 'static {
    fn connections(&self) -> Vec<LiveConnection>;
    /// Closes the live connection of `client_id` (MQTT 5: DISCONNECT with
    /// `reason`); false when it has none.
    fn kick(&self, client_id: &str, reason: ReasonCode) -> bool;
}
