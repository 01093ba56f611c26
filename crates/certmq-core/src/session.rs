//! Sessions: the state that outlives a network connection (MQTT 5 §4.1).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::{Delivery, Mailbox, Message};

/// Identifies a session for the life of the process; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A session as the registry holds it: its mailbox, open to every publisher,
/// and its protocol state, used by the connection that owns it.
#[derive(Debug)]
pub struct SessionEntry {
    pub client_id: Arc<str>,
    pub mailbox: Arc<Mailbox>,
    pub(crate) state: Mutex<SessionState>,
}

/// A QoS 1/2 message sent to the client and not yet acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    /// Send order, for redelivery in the original order on resume.
    pub seq: u64,
    pub delivery: Delivery,
    /// PUBREC received and PUBREL sent (QoS 2 second half).
    pub released: bool,
}

#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// Generation of the connection that owns the session; 0 while offline.
    pub owner: u64,
    /// Generation of the last connection that owned it (for timers).
    pub last_owner: u64,
    /// The session was discarded (clean start, expiry); its entry is dead.
    pub ended: bool,
    /// Seconds the session outlives its connection; `u32::MAX` is never expire.
    pub expiry_interval: u32,
    /// Raw filters (with any `$share/group/` prefix) of the session's
    /// subscriptions; the trie holds their options.
    pub subscriptions: BTreeSet<String>,
    pub inflight: BTreeMap<u16, Inflight>,
    pub inflight_seq: u64,
    /// QoS 2 packet ids received and not yet released by PUBREL.
    pub incoming_qos2: BTreeSet<u16>,
    pub next_packet_id: u16,
    /// A will waiting for its delay (or the session's end) to elapse.
    pub pending_will: Option<Arc<Message>>,
    /// Who created the session; only that identity may take it over.
    pub identity: Option<crate::Identity>,
}

impl SessionState {
    /// The next packet id not in use; `None` when all 65,535 are in flight.
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.next_packet_id) {
                return Some(self.next_packet_id);
            }
        }
        None
    }

    /// In-flight messages in the order they were first sent.
    pub fn inflight_in_order(&self) -> Vec<(u16, Inflight)> {
        let mut v: Vec<(u16, Inflight)> =
            self.inflight.iter().map(|(k, v)| (*k, v.clone())).collect();
        v.sort_by_key(|(_, i)| i.seq);
        v
    }
}

/// A timer the broker runs for offline sessions.
#[derive(Debug, Clone)]
pub(crate) enum Timer {
    /// Publish the session's pending will, if the session is still offline.
    Will(Arc<SessionEntry>, u64),
    /// End the session, if it is still offline.
    Expire(Arc<SessionEntry>, u64),
}

pub(crate) type Deadline = (Instant, u64);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Packet-id allocation against a model: ids are never 0 and never one
        /// that is in flight, whatever the sequence of sends and acks.
        #[test]
        fn packet_ids_never_collide(ops in proptest::collection::vec(any::<(bool, u16)>(), 1..400)) {
            let mut s = SessionState::default();
            let mut model: std::collections::HashSet<u16> = std::collections::HashSet::new();
            for (send, pick) in ops {
                if send || model.is_empty() {
                    let id = s.allocate_packet_id().unwrap();
                    prop_assert!(id != 0);
                    prop_assert!(model.insert(id), "id {} reused while in flight", id);
                    s.inflight.insert(id, Inflight {
                        seq: 0,
                        delivery: dummy(),
                        released: false,
                    });
                } else {
                    let ids: Vec<u16> = model.iter().copied().collect();
                    let id = ids[pick as usize % ids.len()];
                    model.remove(&id);
                    s.inflight.remove(&id);
                }
            }
        }
    }

    #[test]
    fn allocation_wraps_and_skips_used_ids() {
        let mut s = SessionState {
            next_packet_id: u16::MAX - 1,
            ..Default::default()
        };
        s.inflight.insert(
            1,
            Inflight {
                seq: 0,
                delivery: dummy(),
                released: false,
            },
        );
        assert_eq!(s.allocate_packet_id(), Some(u16::MAX));
        assert_eq!(s.allocate_packet_id(), Some(2));
    }

    fn dummy() -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: bytes::Bytes::new(),
                qos: certmq_codec::QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
                expires_at: None,
                origin: None,
            }),
            qos: certmq_codec::QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
        }
    }
}
