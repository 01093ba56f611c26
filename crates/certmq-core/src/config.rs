//! Broker limits, with the defaults documented in the README and printed by
//! `certmq config default`.

/// Limits that protect the broker, the `[broker]` section of the
/// configuration file as it is (defined once, here). Every field has a
/// default; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Largest packet accepted from a client, and advertised in CONNACK (bytes).
    pub max_packet_size: u32,
    /// QoS 1/2 PUBLISH packets a client may have unacknowledged towards the
    /// broker (MQTT 5 Receive Maximum sent in CONNACK).
    pub receive_maximum: u16,
    /// QoS 1/2 messages in flight towards one client, further capped by the
    /// client's own Receive Maximum.
    pub max_inflight: u16,
    /// Messages queued per session (online and offline). When an online
    /// subscriber's queue is full, the publishers feeding it wait (flow
    /// control); an offline or slow subscriber's new messages are dropped.
    /// QoS 0 messages are never queued for offline sessions.
    pub max_queued_messages: usize,
    /// A subscriber whose full queue made no progress for this long (ms)
    /// is a slow consumer: its new messages are dropped and it no longer
    /// holds back the publishers that feed it.
    pub slow_consumer_timeout_ms: u64,
    /// Topic aliases a client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Highest keep-alive the broker accepts; a larger (or zero) request is
    /// replaced by this value via Server Keep Alive (MQTT 5).
    pub max_keep_alive: u16,
    /// Upper bound on a session's expiry interval (seconds).
    pub max_session_expiry: u32,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Most levels in a topic name or filter (SUBSCRIBE: reason 0x8F;
    /// PUBLISH or will: 0x90).
    pub max_topic_levels: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_inflight: 1024,
            max_queued_messages: 1000,
            slow_consumer_timeout_ms: 2000,
            topic_alias_maximum: 64,
            max_keep_alive: 65_535,
            max_session_expiry: u32::MAX,
            retain_available: true,
            max_topic_levels: 128,
        }
    }
}
