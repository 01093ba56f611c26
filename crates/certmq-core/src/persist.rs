//! The `persist` seam: what the broker must keep across a restart, as a
//! stream of changes, and how a kept state comes back.
//!
//! The broker hands every change of durable state to a [`Persist`] as it
//! happens ([`Change`]): retained messages, and sessions whose expiry is
//! above 0 — their settings, subscriptions, QoS 1/2 deliveries (queued, in
//! flight, released), incoming QoS 2 packet ids, and wills. `record` must
//! not block: it is called on connection tasks, under session locks; a
//! storage writer takes the changes from there in batches. Without a
//! `Persist` (mode `off`) nothing is recorded.
//!
//! At startup, what a store kept comes back as [`Restored`], which
//! [`crate::Broker::restore`] turns into offline sessions, subscriptions,
//! queues, timers and retained messages before any listener accepts.
//!
//! [`Durability`] tells connections when their changes are on disk, for
//! `sync` mode, where an acknowledgement waits for the change it
//! acknowledges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use certmq_codec::{Packet, Properties, Protocol, Publish, QoS, SubscriptionOptions};
use parking_lot::Mutex;

use crate::{Delivery, Identity, Message, Time};

/// Receives every change of durable state, in order.
pub trait Persist: Send + Sync + std::fmt::Debug + 'static {
    /// Records one change; returns its sequence number (1, 2, ...). Must
    /// not block or fail: a store that cannot keep up or write reports it
    /// through its own metrics and [`Durability`].
    fn record(&self, change: Change) -> u64;
    /// Records `changes` in order (taking them), as one step where the
    /// store can; returns the last sequence number.
    fn record_many(&self, changes: &mut Vec<Change>) -> u64 {
        let mut last = self.recorded();
        for c in changes.drain(..) {
            last = self.record(c);
        }
        last
    }
    /// The sequence number of the last change recorded.
    fn recorded(&self) -> u64;
    /// The writer's counters, for metrics.
    fn stats(&self) -> &PersistStats;
    /// Asks the writer to commit what it holds now rather than at the end
    /// of its interval (a session handed to another node).
    fn flush_soon(&self) {}
    /// How far writes got, when the store tells.
    fn durability(&self) -> Option<Arc<Durability>> {
        None
    }
}

/// A store's counters, for metrics.
#[derive(Debug)]
pub struct PersistStats {
    /// Batches committed.
    pub batches: AtomicU64,
    /// Changes committed.
    pub changes_written: AtomicU64,
    /// Batches that failed (and were kept to be written again).
    pub write_errors: AtomicU64,
    /// Changes taken by the writer and not yet committed.
    pub pending: AtomicU64,
    /// Changes given up on after failing for too long.
    pub changes_dropped: AtomicU64,
    /// Seconds each commit took (the transaction and its fsync).
    pub commit_seconds: Histogram,
    /// Changes in each committed batch.
    pub batch_changes: Histogram,
    /// Bytes the kept state takes on disk (database and its log).
    pub state_bytes: AtomicU64,
    /// The last batch failed (cleared by the next that commits): an alarm.
    pub failing: std::sync::atomic::AtomicBool,
}

impl Default for PersistStats {
    fn default() -> Self {
        Self {
            batches: AtomicU64::new(0),
            changes_written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            changes_dropped: AtomicU64::new(0),
            commit_seconds: Histogram::new(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            batch_changes: Histogram::new(&[
                1.0,
                10.0,
                100.0,
                1_000.0,
                10_000.0,
                100_000.0,
                1_000_000.0,
            ]),
            state_bytes: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// A Prometheus-style histogram: cumulative counts per upper bound, the
/// sum and the count, updated without a lock.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// One per bound, plus +Inf; not cumulative (summed when read).
    counts: Vec<AtomicU64>,
    /// The sum, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// `(upper bound, cumulative count)` per bound (the last is +Inf), the
    /// sum and the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), total));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, total)
    }
}

/// One change of durable state.
#[derive(Debug, Clone)]
pub enum Change {
    /// The retained message of `topic` is now `message` (`None`: cleared).
    Retained {
        topic: Arc<str>,
        message: Option<Arc<Message>>,
    },
    /// A persistent session's settings: created, resumed, taken offline or
    /// its expiry changed. `offline_since` is `None` while a connection
    /// owns it.
    Session {
        client_id: Arc<str>,
        identity: Identity,
        expiry_interval: u32,
        offline_since: Option<Time>,
    },
    /// The session is gone (expired, clean start, expiry set to 0): every
    /// record of it goes, its will included.
    SessionEnded { client_id: Arc<str> },
    Subscribed {
        client_id: Arc<str>,
        filter: Arc<str>,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    },
    Unsubscribed {
        client_id: Arc<str>,
        filter: Arc<str>,
    },
    /// A QoS 1/2 delivery entered the session's queue under `key`
    /// (recorded before it can be taken from the queue).
    Queued {
        client_id: Arc<str>,
        key: u64,
        delivery: Delivery,
    },
    /// The delivery went out under `packet_id`.
    Sent { key: u64, packet_id: u16 },
    /// PUBREC of a QoS 2 delivery: it waits for PUBCOMP.
    Released { key: u64 },
    /// The delivery is over: acknowledged, refused, expired, or dropped.
    Done { key: u64 },
    /// A QoS 2 PUBLISH from the client was routed; `packet_id` awaits PUBREL.
    Qos2Received { client_id: Arc<str>, packet_id: u16 },
    /// PUBREL released `packet_id`.
    Qos2Released { client_id: Arc<str>, packet_id: u16 },
    /// The will of connection `generation` of the client: kept while the
    /// connection lives (so that a crash still publishes it), then while
    /// it waits for its delay; `None` once published or cancelled.
    Will {
        client_id: Arc<str>,
        generation: u64,
        will: Option<WillRecord>,
    },
}

/// A will as kept.
#[derive(Debug, Clone)]
pub struct WillRecord {
    pub message: Arc<Message>,
    /// Will Delay Interval, seconds.
    pub delay: u32,
    /// When it is published: set once its connection ended (`None` while
    /// the connection lives).
    pub publish_at: Option<Time>,
}

/// Where a kept delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Queued,
    /// Sent under this packet id, awaiting PUBACK or PUBREC.
    Sent(u16),
    /// PUBREC received for this packet id, awaiting PUBCOMP.
    Released(u16),
}

/// A kept delivery of a session.
#[derive(Debug, Clone)]
pub struct RestoredDelivery {
    pub key: u64,
    pub delivery: Delivery,
    pub state: DeliveryState,
}

/// A kept session, offline since `offline_since` (`None`: it had a
/// connection when the broker stopped without closing it).
#[derive(Debug, Clone)]
pub struct RestoredSession {
    pub client_id: Arc<str>,
    pub identity: Identity,
    pub expiry_interval: u32,
    pub offline_since: Option<Time>,
    pub subscriptions: Vec<(Arc<str>, SubscriptionOptions, Option<u32>)>,
    /// In queue order (by key).
    pub deliveries: Vec<RestoredDelivery>,
    pub incoming_qos2: Vec<u16>,
}

/// A kept will, of a persistent session or not.
#[derive(Debug, Clone)]
pub struct RestoredWill {
    pub client_id: Arc<str>,
    /// The connection it belonged to (its record's key).
    pub generation: u64,
    pub will: WillRecord,
}

/// What a store kept, to be restored before listeners accept.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub retained: Vec<Arc<Message>>,
    pub sessions: Vec<RestoredSession>,
    pub wills: Vec<RestoredWill>,
}

/// What [`crate::Broker::restore`] brought back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub retained: usize,
    pub sessions: usize,
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
    /// Wills published at once (their connection died with the broker and
    /// their delay, or their session, is over).
    pub wills_published: usize,
    /// Wills waiting for their delay.
    pub wills_pending: usize,
    /// Sessions whose expiry passed while the broker was down (ended, not
    /// restored; not counted in `sessions`).
    pub sessions_expired: usize,
    /// Records that did not fit (a filter or delivery of an unknown
    /// session, an invalid filter), left out.
    pub skipped: usize,
}

/// How far a store's writes got, for `sync` acknowledgements: every change
/// up to `resolved()` is either on disk or failed. Connections wait on it
/// without a task or channel of their own.
#[derive(Debug, Default)]
pub struct Durability {
    resolved: AtomicU64,
    inner: Mutex<DurabilityInner>,
}

#[derive(Debug, Default)]
struct DurabilityInner {
    waiters: Vec<(u64, Waker)>,
    /// Ranges `(from, to]` of changes whose write failed, newest last
    /// (the last [`FAILURES_KEPT`]).
    failed: std::collections::VecDeque<(u64, u64)>,
}

const FAILURES_KEPT: usize = 64;

impl Durability {
    pub fn resolved(&self) -> u64 {
        self.resolved.load(Ordering::Acquire)
    }

    /// Changes `(from, to]` are settled: written (`ok`) or not.
    pub fn settle(&self, from: u64, to: u64, ok: bool) {
        let wake = {
            let mut inner = self.inner.lock();
            if !ok {
                if inner.failed.len() == FAILURES_KEPT {
                    inner.failed.pop_front();
                }
                inner.failed.push_back((from, to));
            }
            self.resolved.fetch_max(to, Ordering::AcqRel);
            let (ready, waiting): (Vec<_>, Vec<_>) =
                inner.waiters.drain(..).partition(|(m, _)| *m <= to);
            inner.waiters = waiting;
            ready
        };
        for (_, w) in wake {
            w.wake();
        }
    }

    /// Whether changes `(from, to]` are settled, and if so whether all of
    /// them were written. Registers `cx` to be woken otherwise.
    pub fn poll_settled(&self, cx: &mut Context<'_>, from: u64, to: u64) -> Poll<bool> {
        if self.resolved() >= to {
            return Poll::Ready(self.written(from, to));
        }
        let mut inner = self.inner.lock();
        // Checked again under the lock `settle` takes: no lost wake-up.
        if self.resolved() >= to {
            drop(inner);
            return Poll::Ready(self.written(from, to));
        }
        inner.waiters.push((to, cx.waker().clone()));
        Poll::Pending
    }

    fn written(&self, from: u64, to: u64) -> bool {
        !self
            .inner
            .lock()
            .failed
            .iter()
            .any(|&(f, t)| f < to && from < t)
    }
}

/// A message as bytes: an MQTT 5 PUBLISH (the codec's own, fuzzed
/// format), so a store needs no format of its own and a damaged record is
/// a decode error, never a panic. The expiry is kept apart, absolute.
pub fn encode_message(m: &Message) -> Vec<u8> {
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        packet_id: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        payload: m.payload.clone(),
        properties: m.properties.clone(),
    });
    let mut out = BytesMut::new();
    certmq_codec::encode(&publish, Protocol::V5, &mut out);
    out.to_vec()
}

/// The message [`encode_message`] wrote; `None` if the bytes are not one.
pub fn decode_message(bytes: &[u8], expires_at: Option<Time>) -> Option<Message> {
    let mut buf = BytesMut::from(bytes);
    match certmq_codec::decode(&mut buf, Some(Protocol::V5), bytes.len().max(2)) {
        Ok(Some(Packet::Publish(p))) if buf.is_empty() => Some(Message {
            topic: p.topic,
            payload: Bytes::copy_from_slice(&p.payload),
            qos: p.qos,
            retain: p.retain,
            properties: Properties {
                payload_format_indicator: p.properties.payload_format_indicator,
                content_type: p.properties.content_type,
                response_topic: p.properties.response_topic,
                correlation_data: p.properties.correlation_data,
                user_properties: p.properties.user_properties,
                ..Properties::default()
            },
            expires_at,
            origin: None,
        }),
        _ => None,
    }
}

/// An identity as a string: `anonymous`, `certificate:<id>`, `user:<name>`.
pub fn encode_identity(i: &Identity) -> String {
    match i {
        Identity::Anonymous => "anonymous".into(),
        Identity::Certificate(id) => format!("certificate:{id}"),
        Identity::User(name) => format!("user:{name}"),
    }
}

pub fn decode_identity(s: &str) -> Option<Identity> {
    if s == "anonymous" {
        Some(Identity::Anonymous)
    } else if let Some(id) = s.strip_prefix("certificate:") {
        Some(Identity::Certificate(id.into()))
    } else {
        s.strip_prefix("user:").map(|n| Identity::User(n.into()))
    }
}

/// Subscription options as one byte (the SUBSCRIBE options byte).
pub fn encode_options(o: &SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

pub fn decode_options(b: u8) -> Option<SubscriptionOptions> {
    use certmq_codec::RetainHandling;
    Some(SubscriptionOptions {
        qos: match b & 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return None,
        },
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_identities_and_options_round_trip() {
        let m = Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Properties {
                content_type: Some("text/plain".into()),
                user_properties: vec![("k".into(), "v".into())],
                correlation_data: Some(Bytes::from_static(b"c")),
                ..Properties::default()
            },
            expires_at: Some(Time::from_unix_millis(5)),
            origin: None,
        };
        let back = decode_message(&encode_message(&m), m.expires_at).unwrap();
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!((back.qos, back.retain), (m.qos, m.retain));
        assert_eq!(back.properties, m.properties);
        assert_eq!(back.expires_at, m.expires_at);
        let mut bad = encode_message(&m);
        bad.truncate(bad.len() - 1);
        assert!(decode_message(&bad, None).is_none());
        assert!(decode_message(b"", None).is_none());
        for i in [
            Identity::Anonymous,
            Identity::Certificate("ab:cd".into()),
            Identity::User("u:1".into()),
        ] {
            assert_eq!(decode_identity(&encode_identity(&i)), Some(i));
        }
        for b in 0..=255u8 {
            if let Some(o) = decode_options(b) {
                assert_eq!(encode_options(&o), b & 0x3f);
            }
        }
    }

    #[test]
    fn durability_wakes_waiters_and_reports_failed_ranges() {
        let d = Durability::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(d.poll_settled(&mut cx, 0, 3).is_pending());
        d.settle(0, 2, true);
        assert!(d.poll_settled(&mut cx, 0, 3).is_pending());
        d.settle(2, 5, false);
        assert_eq!(d.poll_settled(&mut cx, 0, 3), Poll::Ready(false));
        assert_eq!(d.poll_settled(&mut cx, 0, 2), Poll::Ready(true));
        d.settle(5, 9, true);
        assert_eq!(d.poll_settled(&mut cx, 5, 9), Poll::Ready(true));
    }
}
