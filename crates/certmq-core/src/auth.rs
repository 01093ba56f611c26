//! The `auth` seam: who may publish to and subscribe to what. The
//! transport authenticates (it hands the core a [`crate::ConnectContext`]
//! with the client's [`crate::Identity`]); an [`Authorizer`] installed with
//! [`crate::Broker::set_authorizer`] decides each PUBLISH and SUBSCRIBE.
//! Without one everything is allowed (today's behaviour); policies
//! (SPEC 11) plug in here.

use certmq_codec::QoS;

use crate::Identity;

/// The client asking.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub client_id: &'a str,
    pub identity: &'a Identity,
}

/// Decides PUBLISH and SUBSCRIBE. Must not block: it runs per packet.
pub trait Authorizer: Send + Sync + std::fmt::Debug + 'static {
    /// A PUBLISH to `topic` (denied: QoS 1/2 get PUBACK/PUBREC 0x87 on MQTT
    /// 5, and the message is not routed).
    fn may_publish(&self, client: &Client<'_>, topic: &str, qos: QoS, retain: bool) -> bool;
    /// A subscription to `filter` (the raw filter, `$share/...` included;
    /// denied: SUBACK 0x87 on MQTT 5, 0x80 on MQTT 3.1.1).
    fn may_subscribe(&self, client: &Client<'_>, filter: &str, qos: QoS) -> bool;
}
