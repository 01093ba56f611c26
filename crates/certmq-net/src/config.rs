//! Listener and connection settings, with their defaults.

use std::net::SocketAddr;
use std::time::Duration;

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    MqttTcp,
    MqttWs,
}

impl Protocol {
    /// The name used in the `listening protocol=...` start-up line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::MqttTcp => "mqtt-tcp",
            Protocol::MqttWs => "mqtt-ws",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// Clients without credentials may connect. `None`: only when `addr` is
    /// a loopback address.
    pub allow_anonymous: Option<bool>,
}

impl ListenerConfig {
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
            .unwrap_or_else(|| self.addr.ip().is_loopback())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub listeners: Vec<ListenerConfig>,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Connections held at once; further ones are closed on accept.
    pub max_connections: usize,
    /// Time given to connections to close at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}
