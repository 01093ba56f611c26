//! Sessions: the state that outlives a network connection (MQTT 5 §4.1).

use crate::Time;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::Mutex;

use certmq_codec::QoS;

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

impl SessionEntry {
    /// Whether the session is still in force here (not ended).
    pub fn is_live(&self) -> bool {
        !self.state.lock().ended
    }
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
    /// Ended here because another node carries it on (SPEC 13): for the
    /// connection that closes, the session was resumed.
    pub moved: bool,
    /// When the connection that owns it (or owned it last) connected,
    /// unix milliseconds.
    pub since_ms: u64,
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
    /// What authorization knows of the connection that owns (or last
    /// owned) the session; None for a session restored from disk until
    /// its client connects again.
    pub facts: Option<Arc<crate::ClientFacts>>,
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

    // Every change of a session's state goes through one of these methods
    // (not field writes at their call sites), so that a persistence seam
    // can observe each change in one place.

    /// A connection of `generation` owns the session (new or resumed):
    /// a delayed will of the previous connection is cancelled (MQTT 5
    /// §3.1.3.2.2). Returns whether one was.
    pub fn take_ownership(
        &mut self,
        generation: u64,
        expiry: u32,
        identity: crate::Identity,
    ) -> bool {
        self.owner = generation;
        self.expiry_interval = expiry;
        self.identity = Some(identity);
        self.pending_will.take().is_some()
    }

    /// The owning connection of `generation` ended; the session is offline.
    pub fn release_ownership(&mut self, generation: u64) {
        self.owner = 0;
        self.last_owner = generation;
    }

    /// A DISCONNECT changed the session expiry.
    pub fn set_expiry(&mut self, expiry: u32) {
        self.expiry_interval = expiry;
    }

    /// A will waits for its delay (or the session's end).
    pub fn set_pending_will(&mut self, will: Option<Arc<Message>>) {
        self.pending_will = will;
    }

    /// The pending will, taken to be published.
    pub fn take_pending_will(&mut self) -> Option<Arc<Message>> {
        self.pending_will.take()
    }

    /// The session was discarded: nothing of it is delivered or kept.
    /// Returns a will still waiting for its delay (the caller decides
    /// whether the session's end publishes it).
    pub fn end(&mut self) -> Option<Arc<Message>> {
        self.ended = true;
        self.subscriptions.clear();
        self.inflight.clear();
        self.incoming_qos2.clear();
        self.pending_will.take()
    }

    pub fn subscribed(&mut self, raw_filter: &str) {
        self.subscriptions.insert(raw_filter.to_string());
    }

    pub fn unsubscribed(&mut self, raw_filter: &str) {
        self.subscriptions.remove(raw_filter);
    }

    /// A QoS 1/2 delivery went out under `packet_id`.
    pub fn sent(&mut self, packet_id: u16, delivery: Delivery) {
        self.inflight_seq += 1;
        let seq = self.inflight_seq;
        self.inflight.insert(
            packet_id,
            Inflight {
                seq,
                delivery,
                released: false,
            },
        );
    }

    /// PUBACK of a QoS 1 delivery, or PUBCOMP of a released QoS 2 one: the
    /// delivery is done. Returns its key; `None` if no such delivery was
    /// in flight.
    pub fn acknowledged(&mut self, packet_id: u16, qos: QoS, released: bool) -> Option<u64> {
        let done = self
            .inflight
            .get(&packet_id)
            .is_some_and(|i| i.delivery.qos == qos && i.released == released);
        if done {
            self.inflight.remove(&packet_id).map(|i| i.delivery.key)
        } else {
            None
        }
    }

    /// PUBREC with an error for a QoS 2 delivery: it ends here. `None` when
    /// the packet id names no QoS 2 delivery in flight.
    pub fn refused(&mut self, packet_id: u16) -> Option<u64> {
        let found = self
            .inflight
            .get(&packet_id)
            .is_some_and(|i| i.delivery.qos == QoS::ExactlyOnce);
        if found {
            self.inflight.remove(&packet_id).map(|i| i.delivery.key)
        } else {
            None
        }
    }

    /// PUBREC of a QoS 2 delivery: it waits for PUBCOMP. `None` when the
    /// packet id names no QoS 2 delivery in flight.
    pub fn received(&mut self, packet_id: u16) -> Option<u64> {
        match self.inflight.get_mut(&packet_id) {
            Some(i) if i.delivery.qos == QoS::ExactlyOnce => {
                i.released = true;
                Some(i.delivery.key)
            }
            _ => None,
        }
    }

    /// A QoS 2 PUBLISH from the client was routed; its id waits for PUBREL.
    pub fn incoming_qos2_routed(&mut self, packet_id: u16) {
        self.incoming_qos2.insert(packet_id);
    }

    /// PUBREL from the client; false if the id was not waiting.
    pub fn incoming_qos2_released(&mut self, packet_id: u16) -> bool {
        self.incoming_qos2.remove(&packet_id)
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

pub(crate) type Deadline = (Time, u64);

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
            key: 0,
        }
    }
}
