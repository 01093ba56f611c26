//! Application messages as they travel from a publisher to subscribers.

use crate::Time;
use std::sync::Arc;

use bytes::Bytes;
use certmq_codec::{Properties, QoS};

use crate::SessionId;

/// A published message. Shared (`Arc`) by every subscriber it is queued for,
/// so its payload and topic are never copied per delivery.
#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The application properties forwarded unchanged (payload format,
    /// content type, response topic, correlation data, user properties).
    pub properties: Properties,
    pub expires_at: Option<Time>,
    /// The publishing session, for the no-local option.
    pub origin: Option<SessionId>,
}

impl Message {
    pub fn is_expired(&self, now: Time) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds of life left, for the forwarded Message Expiry Interval.
    pub fn remaining_expiry(&self, now: Time) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            // Round up, so a message with 0.4 s left is not sent as "expired".
            (left.as_millis().div_ceil(1000)).min(u128::from(u32::MAX)) as u32
        })
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(message QoS, subscription QoS).
    pub qos: QoS,
    /// The RETAIN flag to send.
    pub retain: bool,
    /// Identifiers of every subscription of the session that matched.
    pub subscription_ids: Vec<u32>,
    /// Names the delivery in the `persist` seam's records; 0 when it is
    /// not kept (QoS 0, or a session that ends with its connection).
    pub key: u64,
}
