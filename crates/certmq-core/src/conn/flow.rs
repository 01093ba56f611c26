//! Flow control on the publishing side (SPEC 2): when a publish filled a
//! subscriber's queue, the connection stops taking new publishes until
//! every such queue has room again, as a single-threaded broker does by
//! not reading the socket.
//!
//! The connection keeps reading a little while it waits, so that its
//! other work goes on: PINGREQ is answered and the client's acknowledgements
//! of its own deliveries (PUBACK, PUBREC, PUBCOMP) are handled at once.
//! Everything else that arrives (PUBLISH, PUBREL, SUBSCRIBE, UNSUBSCRIBE,
//! DISCONNECT) is parked in arrival order, up to [`PARKED_PACKETS`] packets
//! or [`PARKED_BYTES`] bytes; after that the connection stops reading.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use certmq_codec::{encoded_len, Packet, ReasonCode};

use super::{Conn, Flow};
use crate::{Mailbox, Time};

/// Packets a waiting connection parks before it stops reading.
pub const PARKED_PACKETS: usize = 64;
/// Bytes a waiting connection parks before it stops reading (one packet
/// larger than this is still parked: the packet limit bounds it).
pub const PARKED_BYTES: usize = 64 * 1024;

/// The state of a connection that waits for room (in the connection's
/// boxed extras: most connections never wait).
#[derive(Debug, Default)]
pub(super) struct Throttle {
    /// Queues this connection filled; it waits until each has room.
    waiting_on: Vec<Arc<Mailbox>>,
    /// Packets that must keep their order behind the waiting publish,
    /// each with its encoded size.
    parked: VecDeque<(Packet, usize)>,
    parked_bytes: usize,
    /// The client closed its side while packets were parked: they are
    /// handled first, then the connection ends.
    input_ended: bool,
}

/// Whether `packet` may be handled while the connection waits: it does
/// not depend on the order of the client's publishes.
fn passes(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) | Packet::PingReq
    )
}

impl Conn {
    fn throttle(&self) -> Option<&Throttle> {
        self.extra.as_ref().and_then(|e| e.throttle.as_ref())
    }

    fn throttle_mut(&mut self) -> Option<&mut Throttle> {
        self.extra.as_mut().and_then(|e| e.throttle.as_mut())
    }

    /// Whether the connection waits for room in a subscriber's queue.
    pub fn is_waiting(&self) -> bool {
        self.throttle().is_some()
    }

    /// Whether the caller should hand over more input: false while the
    /// parked packets are at their bound.
    pub fn accepts_input(&self) -> bool {
        match self.throttle() {
            None => true,
            Some(t) => t.parked.len() < PARKED_PACKETS && t.parked_bytes < PARKED_BYTES,
        }
    }

    /// Whether the caller should read more from the client: it accepts
    /// input and the client has not closed its side.
    pub fn wants_read(&self) -> bool {
        self.accepts_input() && !self.throttle().is_some_and(|t| t.input_ended)
    }

    /// The client closed its side. Returns true when parked packets are
    /// still to be handled: the caller keeps polling [`Conn::poll_resume`]
    /// until it is done, then closes.
    pub fn end_input(&mut self) -> bool {
        match self.throttle_mut() {
            Some(t) => {
                t.input_ended = true;
                true
            }
            None => false,
        }
    }

    /// Whether the client closed its side and nothing parked is left (the
    /// caller also decoded all it had read).
    pub fn input_finished(&self) -> bool {
        self.throttle()
            .is_some_and(|t| t.input_ended && t.waiting_on.is_empty() && t.parked.is_empty())
    }

    /// Parks `packet` if it must wait behind a waiting publish.
    pub(super) fn park(&mut self, packet: Packet) -> Option<Packet> {
        let protocol = self.protocol;
        let Some(t) = self.throttle_mut() else {
            return Some(packet);
        };
        if passes(&packet) || (t.waiting_on.is_empty() && t.parked.is_empty()) {
            return Some(packet);
        }
        let size = encoded_len(&packet, protocol);
        t.parked_bytes += size;
        t.parked.push_back((packet, size));
        None
    }

    /// The publish just routed filled these queues: wait for them.
    pub(super) fn wait_for(&mut self, full: Vec<Arc<Mailbox>>, now: Time) {
        if self.throttle().is_none() {
            self.broker
                .stats
                .flow_control_pauses
                .fetch_add(1, Ordering::Relaxed);
            self.entry
                .mailbox
                .set_waiting(true, self.broker.millis(now));
            self.extra.get_or_insert_with(Box::default).throttle = Some(Throttle::default());
        }
        self.broker.watch_congested(&full);
        if let Some(t) = self.throttle_mut() {
            t.waiting_on.extend(full);
        }
    }

    /// Waits until every queue this connection filled has room (or its
    /// subscriber went offline or stopped draining), then handles the parked
    /// packets in order until one fills a queue again. `Ready` means
    /// packets were handled (output may be waiting) and, if the connection
    /// still waits, the task is registered with the full queues; `Pending`
    /// that nothing changed and the task is registered.
    pub fn poll_resume(
        &mut self,
        cx: &mut Context<'_>,
        now: Time,
    ) -> Poll<Result<Flow, ReasonCode>> {
        let now_ms = self.broker.millis(now);
        let mut handled_any = false;
        while let Some(t) = self.throttle_mut() {
            t.waiting_on
                .retain(|m| m.poll_room(cx, now_ms).is_pending());
            if !t.waiting_on.is_empty() {
                // Registered with each full queue; a parked publish may
                // have filled one again.
                return if handled_any {
                    Poll::Ready(Ok(Flow::Continue))
                } else {
                    Poll::Pending
                };
            }
            let Some((packet, size)) = t.parked.pop_front() else {
                break;
            };
            t.parked_bytes -= size;
            handled_any = true;
            match self.handle_now(packet, now) {
                Ok(Flow::Continue) => {}
                other => return Poll::Ready(other),
            }
        }
        if self.throttle().is_some_and(|t| !t.input_ended) {
            if let Some(e) = self.extra.as_mut() {
                e.throttle = None;
            }
            self.entry.mailbox.set_waiting(false, now_ms);
        }
        Poll::Ready(Ok(Flow::Continue))
    }
}
