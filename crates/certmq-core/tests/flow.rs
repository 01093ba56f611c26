//! Flow control (SPEC 2), driven through the core alone: a full queue of
//! a live subscriber pauses its publisher; a stalled or offline subscriber
//! gets the drop policy and never pauses anybody.

// Test code: a failed expectation is a panic.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use certmq_codec::*;
use certmq_core::*;

mod common;
use common::{connect, subscribe};

const LIMIT: usize = 8;
/// Publishers pause at the limit.
const PAUSE: usize = LIMIT;
/// A subscriber that stopped reading keeps as many again in reserve.
const CAP: usize = 2 * LIMIT;

fn broker() -> Arc<Broker> {
    Broker::new(BrokerConfig {
        max_queued_messages: LIMIT,
        ..BrokerConfig::default()
    })
}

fn t0() -> Time {
    Time::from_unix_millis(1_700_000_000_000)
}

/// An accepted MQTT 5 connection, CONNACK taken; clean start unless the
/// session has an expiry.
fn open(b: &Arc<Broker>, id: &str, expiry: Option<u32>, now: Time) -> Conn {
    let c = connect(Protocol::V5, id, expiry.is_none(), expiry);
    let mut conn = common::open(b, c, now);
    conn.output().clear();
    conn
}

fn publish(conn: &mut Conn, topic: &str, n: u32, qos: QoS, now: Time) {
    let p = Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce {
            0
        } else {
            n as u16 + 1
        },
        payload: Bytes::from(n.to_be_bytes().to_vec()),
        properties: Properties::default(),
    };
    conn.handle(Packet::Publish(p), now).unwrap();
}

/// The payloads delivered to `conn`, acknowledging QoS 1 ones: what the
/// driver does when the client's socket takes everything (progress).
fn receive(conn: &mut Conn, now: Time) -> Vec<u32> {
    conn.poll_deliveries(1000, now).unwrap();
    conn.mailbox().progress(now.unix_millis());
    let mut got = Vec::new();
    let mut acks = Vec::new();
    for p in conn.output().drain(..) {
        if let Packet::Publish(p) = p {
            got.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
            if p.qos == QoS::AtLeastOnce {
                acks.push(p.packet_id);
            }
        }
    }
    for id in acks {
        conn.handle(
            Packet::PubAck(PubResponse::new(id, ReasonCode::SUCCESS)),
            now,
        )
        .unwrap();
    }
    got
}

#[derive(Default)]
struct Count(AtomicUsize);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn resume(conn: &mut Conn, waker: &Waker, now: Time) -> Poll<Result<Flow, ReasonCode>> {
    conn.poll_resume(&mut Context::from_waker(waker), now)
}

#[test]
fn a_full_queue_pauses_its_publisher_until_the_subscriber_drains() {
    let b = broker();
    let now = t0();
    let mut sub = open(&b, "sub", None, now);
    subscribe(&mut sub, "t", QoS::AtMostOnce, now);
    let mut publ = open(&b, "pub", None, now);

    for n in 0..PAUSE as u32 {
        assert!(!publ.is_waiting(), "paused too early ({n})");
        publish(&mut publ, "t", n, QoS::AtMostOnce, now);
    }
    assert!(
        publ.is_waiting(),
        "the publish that filled the queue pauses"
    );
    assert_eq!(b.stats.flow_control_pauses.load(Ordering::Relaxed), 1);

    // What keeps its order waits; pings and acknowledgements do not.
    for n in PAUSE as u32..PAUSE as u32 + 3 {
        publish(&mut publ, "t", n, QoS::AtMostOnce, now);
    }
    assert_eq!(
        sub.mailbox().len(),
        PAUSE,
        "parked publishes are not routed"
    );
    publ.handle(Packet::PingReq, now).unwrap();
    assert!(matches!(publ.output().pop(), Some(Packet::PingResp)));

    let woken = Arc::new(Count::default());
    let waker = Waker::from(woken.clone());
    assert!(resume(&mut publ, &waker, now).is_pending());
    assert_eq!(woken.0.load(Ordering::SeqCst), 0);

    // The subscriber drains: the publisher is woken and goes on in order.
    let mut got = receive(&mut sub, now);
    assert_eq!(
        woken.0.load(Ordering::SeqCst),
        1,
        "draining wakes the publisher"
    );
    assert!(resume(&mut publ, &waker, now).is_ready());
    assert!(!publ.is_waiting());
    got.extend(receive(&mut sub, now));
    assert_eq!(
        got,
        (0..PAUSE as u32 + 3).collect::<Vec<_>>(),
        "nothing lost, in order"
    );
    assert_eq!(b.stats.messages_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn qos1_acknowledgements_wait_with_the_publishes_and_nothing_is_dropped() {
    let b = broker();
    let now = t0();
    let mut sub = open(&b, "sub", None, now);
    subscribe(&mut sub, "t", QoS::AtLeastOnce, now);
    let mut publ = open(&b, "pub", None, now);
    let waker = Waker::from(Arc::new(Count::default()));

    let total = 10 * LIMIT as u32;
    let mut got = Vec::new();
    for n in 0..total {
        publish(&mut publ, "t", n, QoS::AtLeastOnce, now);
        // The subscriber reads a little from time to time.
        if n % 20 == 19 {
            got.extend(receive(&mut sub, now));
            let _ = resume(&mut publ, &waker, now);
        }
    }
    while publ.is_waiting() {
        got.extend(receive(&mut sub, now));
        let _ = resume(&mut publ, &waker, now);
    }
    got.extend(receive(&mut sub, now));
    assert_eq!(got, (0..total).collect::<Vec<_>>());
    let acks = publ
        .output()
        .iter()
        .filter(|p| matches!(p, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS))
        .count();
    assert_eq!(
        acks as u32, total,
        "every publish acknowledged, once routed"
    );
    assert_eq!(b.stats.messages_dropped.load(Ordering::Relaxed), 0);
    assert!(b.stats.flow_control_pauses.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_subscriber_that_stops_draining_releases_its_publisher_then_drops() {
    let b = broker();
    let now = t0();
    let mut stalled = open(&b, "stalled", None, now);
    subscribe(&mut stalled, "t", QoS::AtMostOnce, now);
    let mut reader = open(&b, "reader", None, now);
    subscribe(&mut reader, "t", QoS::AtMostOnce, now);
    let mut publ = open(&b, "pub", None, now);
    let woken = Arc::new(Count::default());
    let waker = Waker::from(woken.clone());

    let mut got = Vec::new();
    let mut n = 0;
    while !publ.is_waiting() {
        publish(&mut publ, "t", n, QoS::AtMostOnce, now);
        got.extend(receive(&mut reader, now));
        n += 1;
    }
    assert_eq!(n as usize, PAUSE);
    publish(&mut publ, "t", n, QoS::AtMostOnce, now); // parked
    n += 1;
    assert!(resume(&mut publ, &waker, now).is_pending());
    assert!(b.is_congested());

    // While it might still be draining the publisher waits; once it made
    // no progress for the drain window, the congestion check releases it.
    b.check_congestion(now + Duration::from_millis(DRAIN_WINDOW_MS / 2));
    assert_eq!(woken.0.load(Ordering::SeqCst), 0);
    let later = now + Duration::from_millis(DRAIN_WINDOW_MS);
    b.check_congestion(later);
    assert_eq!(woken.0.load(Ordering::SeqCst), 1, "released");
    assert!(!b.is_congested());
    assert!(resume(&mut publ, &waker, later).is_ready());
    assert!(!publ.is_waiting());

    // Its reserve takes the queue to the limit, then it loses messages;
    // it never pauses the publisher again, and the reader loses nothing.
    for _ in 0..LIMIT + 100 {
        publish(&mut publ, "t", n, QoS::AtMostOnce, later);
        assert!(!publ.is_waiting());
        got.extend(receive(&mut reader, later));
        n += 1;
    }
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "the reader lost nothing");
    assert_eq!(stalled.mailbox().len(), CAP, "the limit and the reserve");
    // The parked publish and the loop's, less the reserve.
    let expected = (1 + LIMIT + 100 - (CAP - PAUSE)) as u64;
    let slow = b.stats.dropped_slow_consumer.load(Ordering::Relaxed);
    assert_eq!(slow, expected, "past the reserve, each is dropped for it");
    assert_eq!(stalled.mailbox().dropped(), expected);

    // Progress ends the episode: the next full queue pauses again.
    assert_eq!(receive(&mut stalled, later).len(), CAP);
    for _ in 0..PAUSE {
        publish(&mut publ, "t", n, QoS::AtMostOnce, later);
        let _ = receive(&mut reader, later);
        n += 1;
    }
    assert!(publ.is_waiting());
}

#[test]
fn past_the_slow_consumer_timeout_a_full_queue_drops_at_once() {
    let b = broker();
    let stall = Duration::from_millis(b.config().slow_consumer_timeout_ms);
    let now = t0();
    let mut stalled = open(&b, "stalled", None, now);
    subscribe(&mut stalled, "t", QoS::AtMostOnce, now);
    let mut publ = open(&b, "pub", None, now);
    for n in 0..PAUSE as u32 {
        publish(&mut publ, "t", n, QoS::AtMostOnce, now);
    }
    let waker = Waker::from(Arc::new(Count::default()));
    let later = now + stall;
    assert!(resume(&mut publ, &waker, later).is_ready(), "not draining");
    publish(&mut publ, "t", 99, QoS::AtMostOnce, later);
    assert!(!publ.is_waiting());
    assert_eq!(
        stalled.mailbox().len(),
        PAUSE,
        "no reserve past the timeout"
    );
    assert_eq!(b.stats.dropped_slow_consumer.load(Ordering::Relaxed), 1);
}

#[test]
fn an_offline_subscriber_never_pauses_a_publisher() {
    let b = broker();
    let now = t0();
    let mut sub = open(&b, "sub", Some(3600), now);
    subscribe(&mut sub, "t", QoS::AtLeastOnce, now);
    sub.close(CloseCause::ConnectionLost, now);
    let mut publ = open(&b, "pub", None, now);
    for n in 0..3 * LIMIT as u32 {
        publish(&mut publ, "t", n, QoS::AtLeastOnce, now);
        assert!(!publ.is_waiting());
    }
    assert_eq!(
        b.stats.dropped_queue_full.load(Ordering::Relaxed),
        2 * LIMIT as u64
    );
    let mut sub = open(&b, "sub", Some(3600), now);
    assert_eq!(
        receive(&mut sub, now),
        (0..LIMIT as u32).collect::<Vec<_>>()
    );
}

#[test]
fn a_subscriber_going_offline_releases_its_publisher() {
    let b = broker();
    let now = t0();
    let mut sub = open(&b, "sub", None, now);
    subscribe(&mut sub, "t", QoS::AtMostOnce, now);
    let mut publ = open(&b, "pub", None, now);
    for n in 0..LIMIT as u32 {
        publish(&mut publ, "t", n, QoS::AtMostOnce, now);
    }
    let woken = Arc::new(Count::default());
    let waker = Waker::from(woken.clone());
    assert!(resume(&mut publ, &waker, now).is_pending());
    sub.close(CloseCause::ConnectionLost, now);
    assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    assert!(resume(&mut publ, &waker, now).is_ready());
    assert!(!publ.is_waiting());
}

#[test]
fn a_waiting_publisher_is_not_closed_for_keep_alive() {
    let b = broker();
    let now = t0();
    let mut sub = open(&b, "sub", None, now);
    subscribe(&mut sub, "t", QoS::AtMostOnce, now);
    let mut publ = open(&b, "pub", None, now);
    for n in 0..LIMIT as u32 {
        publish(&mut publ, "t", n, QoS::AtMostOnce, now);
    }
    assert!(publ.is_waiting());
    // Keep alive 60 s: silent for 100 s, but the broker was not reading
    // it. The subscriber keeps its session alive by being heard from.
    let later = now + Duration::from_secs(100);
    sub.touch(later);
    b.tick(later);
    let waker = Waker::from(Arc::new(Count::default()));
    let mut cx = Context::from_waker(&waker);
    assert!(publ
        .mailbox()
        .poll_ready(&mut cx, publ.generation(), false)
        .is_pending());
}

#[test]
fn shared_members_with_room_are_preferred_and_stalled_ones_skipped() {
    let b = broker();
    let now = t0();
    let mut a = open(&b, "a", None, now);
    subscribe(&mut a, "$share/g/t", QoS::AtMostOnce, now);
    let mut c = open(&b, "c", None, now);
    subscribe(&mut c, "$share/g/t", QoS::AtMostOnce, now);
    let mut publ = open(&b, "pub", None, now);
    // `a` never reads: it fills, then everything goes to `c`.
    let mut to_c = Vec::new();
    for n in 0..50 {
        publish(&mut publ, "t", n, QoS::AtMostOnce, now);
        to_c.extend(receive(&mut c, now));
    }
    assert_eq!(a.mailbox().len(), PAUSE);
    assert_eq!(to_c.len(), 50 - PAUSE);
    assert!(!publ.is_waiting(), "a member with room took it");
    assert_eq!(b.stats.messages_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_will_into_a_full_queue_uses_the_reserve_and_never_waits() {
    let b = broker();
    let now = t0();
    let mut sub = open(&b, "sub", None, now);
    subscribe(&mut sub, "t", QoS::AtMostOnce, now);
    let m = Arc::new(message_from(
        "t".into(),
        Bytes::from_static(b"x"),
        QoS::AtMostOnce,
        false,
        &Properties::default(),
        None,
        now,
    ));
    for _ in 0..2 * LIMIT + 5 {
        b.publish(m.clone(), now);
    }
    assert_eq!(sub.mailbox().len(), CAP, "the limit and the reserve");
    assert_eq!(b.stats.dropped_slow_consumer.load(Ordering::Relaxed), 5);
}

/// Every session has a mailbox: its size is part of the memory per idle
/// connection (a product target), so growth should be a decision.
#[test]
fn a_mailbox_stays_small() {
    let size = std::mem::size_of::<Mailbox>();
    assert!(size <= 144, "Mailbox is {size} bytes");
}
