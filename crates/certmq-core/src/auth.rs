//! The `auth` seam: who may connect, publish, subscribe and read what.
//!
//! The transport authenticates (certificate, password, token or anonymous)
//! and hands the core a [`crate::ConnectContext`] with the client's
//! [`crate::Identity`] and the facts policies speak of; the core makes one
//! [`ClientFacts`] per connection (the client id is known only then) and
//! asks the [`Authorizer`] installed with [`crate::Broker::set_authorizer`]
//! at CONNECT, per PUBLISH, per SUBSCRIBE and, for subscriptions that a
//! policy covers only in part, per delivery. Without one everything is
//! allowed. `certmq-access` implements it (SPEC 11).

use std::net::IpAddr;
use std::sync::Arc;

use certmq_codec::QoS;

/// What a client certificate says, for policy variables (`${cert.cn}`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFacts {
    pub cn: Option<String>,
    pub ou: Option<String>,
    /// Serial number, lower-case hex without separators.
    pub serial: String,
    /// SHA-256 of the certificate's DER, lower-case hex (its certificate id).
    pub fingerprint: String,
    pub san_dns: Vec<String>,
    pub ca_id: String,
}

/// Everything authorization knows of one connected client, resolved once
/// per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFacts {
    pub client_id: Arc<str>,
    /// The user name a password or token proved; None for certificate and
    /// anonymous clients (an unproven user name is no fact).
    pub username: Option<Arc<str>>,
    pub cert: Option<Arc<CertFacts>>,
    pub peer_ip: Option<IpAddr>,
}

/// The answer for a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeVerdict {
    /// Every topic the filter matches may be read.
    Allow,
    /// The subscription is allowed, but some topics it matches may not be
    /// read: each delivery is checked with [`Authorizer::may_read`].
    Checked,
    /// SUBACK 0x87 (MQTT 5) / 0x80 (MQTT 3.1.1).
    Deny,
}

/// What happens to an MQTT 3 client whose PUBLISH is denied (MQTT 3 has no
/// negative PUBACK). MQTT 5 clients always get PUBACK/PUBREC 0x87.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyAction {
    /// The message is dropped and acknowledged as usual.
    #[default]
    Ignore,
    /// The connection is closed.
    Disconnect,
}

/// Decides CONNECT, PUBLISH, SUBSCRIBE and deliveries. Must not block: it
/// runs per packet (and per delivery for [`SubscribeVerdict::Checked`]).
pub trait Authorizer: Send + Sync + std::fmt::Debug + 'static {
    fn may_connect(&self, client: &ClientFacts) -> bool;
    /// A PUBLISH to `topic` (a will too, at CONNECT).
    fn may_publish(&self, client: &ClientFacts, topic: &str, qos: QoS, retain: bool) -> bool;
    /// A subscription to `filter` (without any `$share/group/` prefix).
    fn may_subscribe(&self, client: &ClientFacts, filter: &str, qos: QoS) -> SubscribeVerdict;
    /// Whether a message on `topic` may be delivered to the client (asked
    /// only for [`SubscribeVerdict::Checked`] subscriptions and retained
    /// messages they match).
    fn may_read(&self, client: &ClientFacts, topic: &str) -> bool;
    fn deny_action(&self) -> DenyAction {
        DenyAction::Ignore
    }
    /// Whether this client may take over (or resume) a session that
    /// another identity holds under its client id (SPEC 2: refused unless
    /// a policy allows it). Default: never.
    fn may_take_over(&self, _client: &ClientFacts) -> bool {
        false
    }
}
