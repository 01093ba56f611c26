//! Time-driven behaviour, driven through the core alone: `now` is a value,
//! so these run without sockets or sleeps.

// Test code: a failed expectation is a panic.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use certmq_core::Time;

use bytes::Bytes;
use certmq_codec::*;
use certmq_core::*;

mod common;
use common::*;

fn connack(conn: &mut Conn) -> ConnAck {
    match conn.output().remove(0) {
        Packet::ConnAck(a) => a,
        other => panic!("{other:?}"),
    }
}

fn publishes(conn: &mut Conn, now: Time) -> Vec<Publish> {
    conn.poll_deliveries(100, now).unwrap();
    conn.output()
        .drain(..)
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn will(delay: u32) -> Will {
    Will {
        topic: "w".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(delay),
            ..Default::default()
        },
    }
}

#[test]
fn will_delay_and_session_expiry_whichever_is_first() {
    // (will delay, session expiry, seconds until the will)
    for (delay, expiry, due) in [(3, 5, 3), (5, 2, 2), (5, 0, 0), (0, 60, 0)] {
        let b = Broker::new(BrokerConfig::default());
        let t0 = Time::from_unix_millis(1_700_000_000_000);
        let mut watcher = open(&b, connect(Protocol::V5, "watcher", true, None), t0);
        subscribe(&mut watcher, "w", QoS::AtMostOnce, t0);
        let mut c = connect(Protocol::V5, "dying", true, Some(expiry));
        c.will = Some(will(delay));
        let conn = open(&b, c, t0);
        conn.close(CloseCause::ConnectionLost, t0);
        for s in 0..=6u64 {
            let now = t0 + Duration::from_secs(s);
            b.tick(now);
            let got = publishes(&mut watcher, now);
            if s < due {
                assert!(
                    got.is_empty(),
                    "delay {delay} expiry {expiry}: will at {s}s, expected {due}s"
                );
            } else if s == due {
                assert_eq!(
                    got.len(),
                    1,
                    "delay {delay} expiry {expiry}: no will at {s}s"
                );
            } else {
                assert!(got.is_empty(), "will sent twice");
            }
        }
    }
}

#[test]
fn sessions_expire_on_time() {
    let b = Broker::new(BrokerConfig::default());
    let t0 = Time::from_unix_millis(1_700_000_000_000);
    let conn = open(&b, connect(Protocol::V5, "s", true, Some(10)), t0);
    conn.close(
        CloseCause::ClientDisconnect {
            publish_will: false,
        },
        t0,
    );
    b.tick(t0 + Duration::from_secs(9));
    assert_eq!(b.session_count(), 1);
    b.tick(t0 + Duration::from_secs(10));
    assert_eq!(b.session_count(), 0);

    // A resumed session is not expired by the timer of its earlier absence.
    let conn = open(&b, connect(Protocol::V5, "r", true, Some(10)), t0);
    conn.close(CloseCause::ConnectionLost, t0);
    let mut again = open(
        &b,
        connect(Protocol::V5, "r", false, Some(10)),
        t0 + Duration::from_secs(5),
    );
    assert!(connack(&mut again).session_present);
    b.tick(t0 + Duration::from_secs(11));
    assert_eq!(b.session_count(), 1);
}

#[test]
fn queued_messages_expire_and_report_remaining_life() {
    let b = Broker::new(BrokerConfig::default());
    let t0 = Time::from_unix_millis(1_700_000_000_000);
    let mut sub = open(&b, connect(Protocol::V5, "sub", true, Some(100)), t0);
    subscribe(&mut sub, "t", QoS::AtLeastOnce, t0);
    sub.close(CloseCause::ConnectionLost, t0);
    let mut publ = open(&b, connect(Protocol::V5, "pub", true, None), t0);
    for (payload, expiry) in [(&b"short"[..], 1u32), (&b"long"[..], 6)] {
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 1,
            payload: Bytes::copy_from_slice(payload),
            properties: Properties {
                message_expiry_interval: Some(expiry),
                ..Default::default()
            },
        };
        publ.handle(Packet::Publish(p), t0).unwrap();
    }
    let later = t0 + Duration::from_secs(3);
    let mut sub = open(&b, connect(Protocol::V5, "sub", false, Some(100)), later);
    let got = publishes(&mut sub, later);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"long");
    assert_eq!(got[0].properties.message_expiry_interval, Some(3));
}

#[test]
fn retained_messages_expire() {
    let b = Broker::new(BrokerConfig::default());
    let t0 = Time::from_unix_millis(1_700_000_000_000);
    let mut publ = open(&b, connect(Protocol::V5, "pub", true, None), t0);
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "r".into(),
        packet_id: 0,
        payload: Bytes::from_static(b"v"),
        properties: Properties {
            message_expiry_interval: Some(2),
            ..Default::default()
        },
    };
    publ.handle(Packet::Publish(p), t0).unwrap();
    let mut early = open(&b, connect(Protocol::V5, "early", true, None), t0);
    subscribe(
        &mut early,
        "r",
        QoS::AtMostOnce,
        t0 + Duration::from_secs(1),
    );
    assert_eq!(publishes(&mut early, t0 + Duration::from_secs(1)).len(), 1);
    let late_t = t0 + Duration::from_secs(2);
    let mut late = open(&b, connect(Protocol::V5, "late", true, None), late_t);
    subscribe(&mut late, "r", QoS::AtMostOnce, late_t);
    assert!(publishes(&mut late, late_t).is_empty());
}

#[test]
fn takeover_keeps_the_session_for_the_new_connection() {
    let b = Broker::new(BrokerConfig::default());
    let t0 = Time::from_unix_millis(1_700_000_000_000);
    let mut old = open(&b, connect(Protocol::V5, "c", true, Some(60)), t0);
    subscribe(&mut old, "t", QoS::AtLeastOnce, t0);
    let mut new = open(&b, connect(Protocol::V5, "c", false, Some(60)), t0);
    assert!(connack(&mut new).session_present);
    // The old connection can no longer use the session...
    assert_eq!(
        old.poll_deliveries(10, t0),
        Err(ReasonCode::SESSION_TAKEN_OVER)
    );
    old.close(CloseCause::Server(ReasonCode::SESSION_TAKEN_OVER), t0);
    // ...and its close does not end the session the new one owns.
    assert_eq!(b.session_count(), 1);
    assert!(new.owns_session());
    assert_eq!(b.subscription_count(), 1);
}
