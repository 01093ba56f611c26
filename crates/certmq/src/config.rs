//! The configuration file (TOML), its defaults, and how flags and
//! `CERTMQ_*` variables override it. Unknown keys are refused.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use certmq_core::BrokerConfig;
use certmq_net::{ClientAuth, ListenerConfig, NetConfig, Protocol};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// Log filter, as RUST_LOG (`info`, `certmq_net=debug,info`, ...).
    pub log: String,
    /// `[broker]`: the core's limits, defined in `certmq_core::BrokerConfig`.
    pub broker: BrokerConfig,
    pub connections: ConnectionsSection,
    pub listeners: ListenersSection,
    pub tls: TlsSection,
    pub admin: AdminSection,
    pub registry: certmq_admin::RegistryConfig,
    /// `[persistence]`: retained messages and persistent sessions across
    /// restarts, defined in `certmq_store::PersistenceConfig`.
    pub persistence: certmq_store::PersistenceConfig,
    /// `[authentication]`: anonymous access everywhere, password hashing,
    /// JWT keys (defined in `certmq_access::AuthenticationConfig`).
    pub authentication: certmq_access::AuthenticationConfig,
    /// `[authorization]`: `no_match` and `deny_action` (policies themselves
    /// live in the data directory, managed through the API).
    pub authorization: certmq_access::AuthorizationConfig,
    pub cluster: ClusterSection,
    /// `[crl]`: what a stale CRL does, how often CRLs are fetched.
    pub crl: certmq_registry::CrlConfig,
    /// `[alarms]`: certificate expiry windows.
    pub alarms: certmq_registry::AlarmConfig,
    /// `[[webhooks]]`: where lifecycle events are POSTed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::lifecycle::WebhookConfig>,
}

/// `[cluster]`: joining other nodes (SPEC 13). Unset: a single node.
/// `Debug` leaves the PostgreSQL URL out (it may hold a password).
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This node's name in the cluster (required to join one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// NATS URL, for publishes between nodes (`nats://127.0.0.1:4222`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<String>,
    /// PostgreSQL URL: the registry the nodes share
    /// (`postgres://user:password@host:port/db` or `host=... user=...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub enabled: bool,
    /// The admin HTTP API (and console) address.
    pub addr: SocketAddr,
    /// Bearer token; unset means the token in `<data-dir>/admin.token`
    /// (generated on first start, mode 0600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Open admin connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Seconds a request's headers may take (also closes idle keep-alive
    /// connections).
    pub header_timeout_secs: u64,
    /// Seconds a pending read (a slow body) may wait without progress.
    pub read_timeout_secs: u64,
    /// The admin API and console over HTTPS (the MQTT/TLS server
    /// certificates and SNI); off unless set.
    pub tls_enabled: bool,
    pub tls_addr: SocketAddr,
}

impl AdminSection {
    pub fn limits(&self) -> certmq_admin::ServeLimits {
        certmq_admin::ServeLimits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            read_timeout: Duration::from_secs(self.read_timeout_secs),
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: SocketAddr::from(([127, 0, 0, 1], 18083)),
            token: None,
            max_connections: 256,
            header_timeout_secs: 10,
            read_timeout_secs: 30,
            tls_enabled: false,
            tls_addr: SocketAddr::from(([127, 0, 0, 1], 18084)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Host names the default server certificate covers, besides `localhost`
    /// and `127.0.0.1` (e.g. the broker's public DNS name).
    pub server_names: Vec<String>,
}

/// `client_auth` of a TLS listener.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthSetting {
    None,
    Optional,
    Required,
}

impl From<ClientAuthSetting> for ClientAuth {
    fn from(c: ClientAuthSetting) -> Self {
        match c {
            ClientAuthSetting::None => ClientAuth::None,
            ClientAuthSetting::Optional => ClientAuth::Optional,
            ClientAuthSetting::Required => ClientAuth::Required,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsSection {
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Connections held at once.
    pub max_connections: usize,
    /// Seconds given to connections to close at shutdown.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "ListenersFile")]
pub struct ListenersSection {
    pub tcp: ListenerSection,
    pub tls: ListenerSection,
    pub ws: ListenerSection,
    pub wss: ListenerSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub enabled: bool,
    pub addr: SocketAddr,
    /// Clients without credentials may connect; unset means "only when bound to loopback".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// TLS listeners: ask for a client certificate (`none`, `optional`, `required`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthSetting>,
    /// The authentication chain, in order: `certificate`, `password`,
    /// `jwt`, `anonymous`. Unset: TLS and WSS `["certificate", "password",
    /// "jwt"]`, TCP and WS `["password", "jwt"]`, plus `anonymous` where
    /// `allow_anonymous` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            log: "info".into(),
            broker: BrokerConfig::default(),
            connections: ConnectionsSection::default(),
            listeners: ListenersSection::default(),
            tls: TlsSection::default(),
            admin: AdminSection::default(),
            registry: certmq_admin::RegistryConfig::default(),
            persistence: certmq_store::PersistenceConfig::default(),
            authentication: certmq_access::AuthenticationConfig::default(),
            authorization: certmq_access::AuthorizationConfig::default(),
            cluster: ClusterSection::default(),
            crl: certmq_registry::CrlConfig::default(),
            alarms: certmq_registry::AlarmConfig::default(),
            webhooks: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ClusterSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSection")
            .field("node_id", &self.node_id)
            .field("nats", &self.nats)
            .field("postgres", &self.postgres.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for ConnectionsSection {
    fn default() -> Self {
        let d = NetConfig::default();
        Self {
            connect_timeout_secs: d.connect_timeout.as_secs(),
            max_connections: d.max_connections,
            shutdown_grace_secs: d.shutdown_grace.as_secs(),
        }
    }
}

impl Default for ListenersSection {
    fn default() -> Self {
        let listener = |addr: [u8; 4], port, client_auth| ListenerSection {
            enabled: true,
            addr: SocketAddr::from((addr, port)),
            allow_anonymous: None,
            client_auth,
            authentication: None,
        };
        // Plain listeners on loopback only; TLS ones on every interface,
        // asking for client certificates (the product's way in).
        let required = Some(ClientAuthSetting::Required);
        Self {
            tcp: listener([127, 0, 0, 1], 1883, None),
            tls: listener([0, 0, 0, 0], 8883, required),
            ws: listener([127, 0, 0, 1], 8083, None),
            wss: listener([0, 0, 0, 0], 8084, required),
        }
    }
}

/// `[listeners]` as a file may give it: any key of any listener may be
/// left out and keeps its default (`[listeners.tcp] allow_anonymous =
/// false` alone is a complete section).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ListenersFile {
    tcp: PartialListener,
    tls: PartialListener,
    ws: PartialListener,
    wss: PartialListener,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct PartialListener {
    enabled: Option<bool>,
    addr: Option<SocketAddr>,
    allow_anonymous: Option<bool>,
    client_auth: Option<ClientAuthSetting>,
    authentication: Option<Vec<String>>,
}

impl PartialListener {
    fn over(self, d: ListenerSection) -> ListenerSection {
        ListenerSection {
            enabled: self.enabled.unwrap_or(d.enabled),
            addr: self.addr.unwrap_or(d.addr),
            allow_anonymous: self.allow_anonymous.or(d.allow_anonymous),
            client_auth: self.client_auth.or(d.client_auth),
            authentication: self.authentication.or(d.authentication),
        }
    }
}

impl From<ListenersFile> for ListenersSection {
    fn from(f: ListenersFile) -> Self {
        let d = ListenersSection::default();
        ListenersSection {
            tcp: f.tcp.over(d.tcp),
            tls: f.tls.over(d.tls),
            ws: f.ws.over(d.ws),
            wss: f.wss.over(d.wss),
        }
    }
}

/// A listen address from a flag or variable: `HOST:PORT`, or `off`.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenAddr {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(ListenAddr::Off);
        }
        s.parse().map(ListenAddr::At).map_err(|_| {
            format!("expected IP:PORT (for example 127.0.0.1:1883) or 'off', got '{s}'")
        })
    }
}

impl ListenAddr {
    /// Applies a `--listen-*` flag to a section's `enabled` and `addr`.
    fn apply_to(flag: Option<&ListenAddr>, enabled: &mut bool, addr: &mut SocketAddr) {
        match flag {
            Some(ListenAddr::Off) => *enabled = false,
            Some(ListenAddr::At(a)) => {
                *enabled = true;
                *addr = *a;
            }
            None => {}
        }
    }
}

impl AdminSection {
    pub fn apply(&mut self, flag: Option<&ListenAddr>, tls: Option<&ListenAddr>) {
        ListenAddr::apply_to(flag, &mut self.enabled, &mut self.addr);
        ListenAddr::apply_to(tls, &mut self.tls_enabled, &mut self.tls_addr);
    }
}

impl ListenersSection {
    pub fn get_mut(&mut self, name: &str) -> Option<&mut ListenerSection> {
        match name {
            "tcp" => Some(&mut self.tcp),
            "tls" => Some(&mut self.tls),
            "ws" => Some(&mut self.ws),
            "wss" => Some(&mut self.wss),
            _ => None,
        }
    }

    pub fn all(&self) -> [(&'static str, &ListenerSection); 4] {
        [
            ("tcp", &self.tcp),
            ("tls", &self.tls),
            ("ws", &self.ws),
            ("wss", &self.wss),
        ]
    }
}

impl ListenerSection {
    pub fn apply(&mut self, flag: Option<&ListenAddr>) {
        ListenAddr::apply_to(flag, &mut self.enabled, &mut self.addr);
    }
}

impl Config {
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let b = &self.broker;
        if b.max_packet_size < 64 || b.max_packet_size > certmq_codec::VARINT_MAX + 5 {
            bail!("broker.max_packet_size must be between 64 and 268435460 bytes");
        }
        if b.receive_maximum == 0 || b.max_inflight == 0 {
            bail!("broker.receive_maximum and broker.max_inflight must be at least 1");
        }
        if b.max_queued_messages == 0 {
            bail!("broker.max_queued_messages must be at least 1");
        }
        if !(1..=65_535).contains(&b.max_topic_levels) {
            bail!("broker.max_topic_levels must be between 1 and 65535");
        }
        for (name, l) in [("tcp", &self.listeners.tcp), ("ws", &self.listeners.ws)] {
            if l.client_auth.is_some() {
                bail!("listeners.{name}.client_auth applies to TLS listeners only (tls, wss)");
            }
        }
        for name in &self.tls.server_names {
            if name.is_empty() || name.contains(char::is_whitespace) {
                bail!("tls.server_names: '{name}' is not a host name");
            }
        }
        if let Some(t) = &self.admin.token {
            if t.len() < 16 || t.chars().any(char::is_whitespace) {
                bail!("admin.token must be at least 16 characters, without spaces");
            }
        }
        if self.registry.max_ca_certificates == 0 || self.registry.registration_code_ttl_secs == 0 {
            bail!("registry.max_ca_certificates and registry.registration_code_ttl_secs must be at least 1");
        }
        if self.admin.max_connections == 0
            || self.admin.header_timeout_secs == 0
            || self.admin.read_timeout_secs == 0
        {
            bail!("admin.max_connections, admin.header_timeout_secs and admin.read_timeout_secs must be at least 1");
        }
        if self.connections.max_connections == 0 {
            bail!("connections.max_connections must be at least 1");
        }
        for (name, l) in self.listeners.all() {
            for m in l.authentication.iter().flatten() {
                if certmq_net::AuthMethod::parse(m).is_none() {
                    bail!("listeners.{name}.authentication: unknown method '{m}' (certificate, password, jwt, anonymous)");
                }
                if m == "certificate" && (name == "tcp" || name == "ws") {
                    bail!("listeners.{name}.authentication: 'certificate' needs a TLS listener (tls, wss)");
                }
            }
        }
        self.authentication
            .password_hash
            .validate()
            .map_err(|e| anyhow::anyhow!(e))?;
        if self.crl.refresh_interval_secs < 10 {
            bail!("crl.refresh_interval_secs must be at least 10");
        }
        if self.alarms.expiry_windows_days.is_empty()
            || self
                .alarms
                .expiry_windows_days
                .iter()
                .any(|d| *d == 0 || *d > 3650)
        {
            bail!("alarms.expiry_windows_days must list days between 1 and 3650");
        }
        for w in &self.webhooks {
            w.validate()?;
        }
        let c = &self.cluster;
        if c.postgres.is_some() && c.nats.is_none() {
            bail!("cluster.postgres (--cluster-postgres) needs cluster.nats (--cluster-nats): messages, sessions and takeovers move between nodes over NATS");
        }
        if c.nats.is_some() || c.postgres.is_some() {
            match &c.node_id {
                None => {
                    bail!("cluster.nats and cluster.postgres need cluster.node_id (--node-id NAME)")
                }
                Some(id)
                    if id.is_empty()
                        || id.len() > 64
                        || !id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    bail!("cluster.node_id: 1 to 64 letters, digits, '-' or '_'")
                }
                _ => {}
            }
        }
        if !(1..=60_000).contains(&self.persistence.flush_interval_ms) {
            bail!("persistence.flush_interval_ms must be between 1 and 60000");
        }
        Ok(())
    }

    pub fn broker_config(&self) -> BrokerConfig {
        self.broker.clone()
    }

    pub fn net_config(&self) -> NetConfig {
        let c = &self.connections;
        let mut listeners = Vec::new();
        for (protocol, l) in [
            (Protocol::MqttTcp, &self.listeners.tcp),
            (Protocol::MqttTls, &self.listeners.tls),
            (Protocol::MqttWs, &self.listeners.ws),
            (Protocol::MqttWss, &self.listeners.wss),
        ] {
            if l.enabled {
                listeners.push(ListenerConfig {
                    protocol,
                    addr: l.addr,
                    allow_anonymous: l.allow_anonymous.or(self.authentication.allow_anonymous),
                    client_auth: l.client_auth.unwrap_or(ClientAuthSetting::Required).into(),
                    authentication: l.authentication.as_ref().map(|m| {
                        m.iter()
                            .filter_map(|m| certmq_net::AuthMethod::parse(m))
                            .collect()
                    }),
                });
            }
        }
        NetConfig {
            listeners,
            connect_timeout: Duration::from_secs(c.connect_timeout_secs),
            max_connections: c.max_connections,
            shutdown_grace: Duration::from_secs(c.shutdown_grace_secs),
        }
    }

    /// The default configuration as a commented TOML document.
    pub fn default_toml() -> anyhow::Result<String> {
        let body = toml::to_string_pretty(&Config::default())?;
        // Keys whose default is "unset" are shown commented out, with what
        // unset means, so that every key appears.
        let mut out = String::from(
            "# certmq configuration: every key with its default value.\n\
             # Precedence: built-in defaults < this file < CERTMQ_* variables < flags.\n\n",
        );
        let mut section = "";
        for line in body.lines() {
            out.push_str(line);
            out.push('\n');
            if line.starts_with('[') {
                section = line;
                match line {
                    "[authentication]" => out.push_str(
                        "# allow_anonymous = true  # unset: per listener (loopback only); as --allow-anonymous\n",
                    ),
                    "[cluster]" => out.push_str(
                        "# node_id = \"node-1\"  # this node's name; required with nats\n\
                         # nats = \"nats://127.0.0.1:4222\"  # route publishes between nodes (unset: one node)\n\
                         # postgres = \"postgres://certmq@127.0.0.1:5432/certmq\"  # the registry the nodes share (unset: certmq.db here)\n",
                    ),
                    "[authentication.jwt]" => out.push_str(
                        "# secret_file = \"/etc/certmq/jwt.secret\"  # HS256 secret (32 bytes or more); or secret = \"...\"\n\
                         # issuer = \"https://issuer.example\"  # unset: iss not checked\n\
                         # audience = \"certmq\"  # unset: aud not checked\n",
                    ),
                    _ => {}
                }
                continue;
            }
            if !line.starts_with("addr = ") {
                continue;
            }
            if section.starts_with("[listeners.") {
                let loopback = line
                    .trim_start_matches("addr = ")
                    .trim_matches('"')
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip().is_loopback());
                out.push_str(&format!(
                    "# allow_anonymous = {loopback}  # unset: true on a loopback address, false otherwise\n"
                ));
                let methods = if section == "[listeners.tls]" || section == "[listeners.wss]" {
                    "\"certificate\", \"password\", \"jwt\""
                } else {
                    "\"password\", \"jwt\""
                };
                out.push_str(&format!(
                    "# authentication = [{methods}]  # the chain, in order; \"anonymous\" where allow_anonymous says\n"
                ));
            } else if section == "[admin]" {
                out.push_str(
                    "# token = \"at least 16 characters\"  # unset: <data_dir>/admin.token, generated on first start (mode 0600)\n",
                );
            }
        }
        out.push_str(
            "\n# Lifecycle events POSTed to webhooks (none by default; repeat the section for more):\n\
             # [[webhooks]]\n\
             # url = \"https://ops.example.com/certmq\"\n\
             # secret = \"at least 16 characters\"  # X-Certmq-Signature: sha256=<HMAC-SHA256 of the body>\n\
             # events = [\"*\"]  # kinds (\"device.revoked\") or families (\"device.*\")\n\
             # queue_size = 10000\n\
             # max_attempts = 6\n\
             # retry_initial_ms = 1000\n\
             # timeout_ms = 5000\n",
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_round_trips() {
        let text = Config::default_toml().unwrap();
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn default_toml_names_every_key() {
        let text = Config::default_toml().unwrap();
        assert_eq!(text.matches("# allow_anonymous = ").count(), 5, "{text}");
        assert!(text.contains("# allow_anonymous = true"));
        assert!(text.contains("# allow_anonymous = false"));
        assert!(text.contains("# token = "));
        // Uncommented, each is accepted.
        let uncommented = text
            .replace("# allow_anonymous", "allow_anonymous")
            .replace("# authentication = ", "authentication = ")
            .replace("# secret_file", "secret_file")
            .replace("# issuer", "issuer")
            .replace("# audience", "audience")
            .replace(
                "# token = \"at least 16 characters\"",
                "token = \"0123456789abcdef\"",
            );
        let parsed: Config = toml::from_str(&uncommented).unwrap();
        assert_eq!(parsed.admin.token.as_deref(), Some("0123456789abcdef"));
        assert_eq!(parsed.listeners.tcp.allow_anonymous, Some(true));
        assert_eq!(parsed.listeners.tls.allow_anonymous, Some(false));
    }

    #[test]
    fn a_listener_section_may_give_one_key() {
        let c: Config = toml::from_str("[listeners.tcp]\nallow_anonymous = false\n").unwrap();
        assert_eq!(c.listeners.tcp.allow_anonymous, Some(false));
        assert_eq!(c.listeners.tcp.addr, Config::default().listeners.tcp.addr);
        assert_eq!(c.listeners.tls, Config::default().listeners.tls);
        let err =
            toml::from_str::<Config>("[listeners.tcp]\nallow_anonymos = false\n").unwrap_err();
        assert!(err.to_string().contains("allow_anonymos"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("[broker]\nmax_pakcet_size = 10\n").unwrap_err();
        assert!(err.to_string().contains("max_pakcet_size"), "{err}");
    }
}
