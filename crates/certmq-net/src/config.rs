//! Listener and connection settings, with their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::AuthMethod;

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
    /// Clients without credentials may connect. `None`: as `authentication`
    /// says when it is given, else only when `addr` is a loopback address.
    pub allow_anonymous: Option<bool>,
    /// TLS listeners only.
    pub client_auth: ClientAuth,
    /// The authentication chain, in order; `None`: the protocol's default
    /// (TLS, WSS: certificate, password, jwt; TCP, WS: password, jwt).
    pub authentication: Option<Vec<AuthMethod>>,
}

impl ListenerConfig {
    /// The chain in force: the configured or default methods, with
    /// `anonymous` last where anonymous clients are allowed.
    pub fn methods(&self) -> Vec<AuthMethod> {
        let mut methods = self.authentication.clone().unwrap_or_else(|| {
            if self.protocol.is_tls() {
                vec![
                    AuthMethod::Certificate,
                    AuthMethod::Password,
                    AuthMethod::Jwt,
                ]
            } else {
                vec![AuthMethod::Password, AuthMethod::Jwt]
            }
        });
        let listed = methods.contains(&AuthMethod::Anonymous);
        methods.retain(|m| *m != AuthMethod::Anonymous);
        let mut seen = Vec::new();
        methods.retain(|m| {
            let first = !seen.contains(m);
            seen.push(*m);
            first
        });
        if self.allows_anonymous_given(listed) {
            methods.push(AuthMethod::Anonymous);
        }
        methods
    }

    fn allows_anonymous_given(&self, listed: bool) -> bool {
        self.allow_anonymous.unwrap_or(match self.authentication {
            Some(_) => listed,
            None => self.addr.ip().is_loopback(),
        })
    }

    pub fn allows_anonymous(&self) -> bool {
        self.methods().contains(&AuthMethod::Anonymous)
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
