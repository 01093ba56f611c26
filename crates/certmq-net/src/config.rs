//! Listener and connection settings, with their defaults.

use std::net::SocketAddr;
use std::time::Duration;

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    MqttTcp,
    MqttTls,
    MqttWs,
    MqttWss,
}

impl Protocol {
    /// The name used in the `listening protocol=...` start-up line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::MqttTcp => "mqtt-tcp",
            Protocol::MqttTls => "mqtt-tls",
            Protocol::MqttWs => "mqtt-ws",
            Protocol::MqttWss => "mqtt-wss",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::MqttTls | Protocol::MqttWss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, Protocol::MqttWs | Protocol::MqttWss)
    }
}

/// Whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// TLS authenticates the server only.
    None,
    /// A client that presents a certificate must pass the registry; one that
    /// presents none is treated as on a plain listener.
    Optional,
    /// Every client must present a certificate that passes the registry.
    #[default]
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// Clients without credentials may connect. `None`: only when `addr` is
    /// a loopback address.
    pub allow_anonymous: Option<bool>,
    /// TLS listeners only.
    pub client_auth: ClientAuth,
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
