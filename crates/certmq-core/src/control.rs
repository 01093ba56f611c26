//! The `control` seam: what the rest of certmq (the certificate registry,
//! the admin API, later the cluster) may see of and do to live
//! connections — list them, close them, read the refusals and traffic
//! counters — without knowing how connections are driven.
//! `certmq_net::LocalControl` is the single-node implementation; a cluster
//! wraps it to reach every node.

use std::net::SocketAddr;
use std::sync::Arc;

use certmq_codec::ReasonCode;

/// A live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConnection {
    pub client_id: Arc<str>,
    /// The client certificate's id and its CA's id, when one was presented.
    pub certificate_id: Option<String>,
    pub ca_id: Option<String>,
    /// `mqtt-tcp`, `mqtt-tls`, `mqtt-ws` or `mqtt-wss`.
    pub listener: &'static str,
    pub peer: SocketAddr,
    /// Unix seconds.
    pub connected_at: i64,
    /// The user a password or token proved.
    pub username: Option<Arc<str>>,
}

/// A refused handshake or CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Unix seconds.
    pub at: i64,
    /// `CERTIFICATE_REVOKED`, `CLIENT_ID_IN_USE_BY_ANOTHER_IDENTITY`, ...
    pub reason: &'static str,
    pub listener: &'static str,
    pub peer: SocketAddr,
    /// None when refused during the TLS handshake (before CONNECT).
    pub client_id: Option<String>,
    pub certificate_id: Option<String>,
    pub ca_id: Option<String>,
    /// The user name the client gave, if any.
    pub username: Option<String>,
}

/// How often one source was refused for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalSource {
    pub reason: &'static str,
    /// `certificate:<id>`, or `address:<ip>` for a client without one.
    pub source: String,
    pub count: u64,
}

/// Traffic counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Open sockets per listener (handshakes included).
    pub open: Vec<(&'static str, usize)>,
    /// Failed TLS handshakes by reason.
    pub tls_failures: Vec<(&'static str, u64)>,
}

/// Lists, closes and observes live connections.
pub trait Control: Send + Sync + 'static {
    fn connections(&self) -> Vec<LiveConnection>;
    /// Closes the live connection of `client_id` (MQTT 5: DISCONNECT with
    /// `reason`); false when it has none.
    fn kick(&self, client_id: &str, reason: ReasonCode) -> bool;
    /// The newest refusals (the newest of every reason), newest first.
    fn refusals(&self, limit: usize) -> Vec<Refusal>;
    /// Refusals by reason since start.
    fn refusal_counts(&self) -> Vec<(&'static str, u64)>;
    /// The sources refused most often.
    fn refusal_sources(&self, limit: usize) -> Vec<RefusalSource>;
    fn traffic(&self) -> Traffic;
}
