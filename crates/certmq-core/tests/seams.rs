//! The core's seams with their first users: an authorizer that denies a
//! topic subtree, and a forwarder that records what a cluster bridge would
//! be told. Plain tests: time is a value, no sockets.

#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use certmq_core::Time;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use certmq_codec::*;
use certmq_core::*;

fn open(b: &Arc<Broker>, protocol: Protocol, id: &str, now: Time) -> Conn {
    let mut c = b
        .connect(
            Connect {
                protocol,
                clean_start: true,
                keep_alive: 60,
                client_id: id.into(),
                will: None,
                username: None,
                password: None,
                properties: Properties::default(),
            },
            &ConnectContext {
                authorized: true,
                identity: Identity::Certificate(id.into()),
            },
            now,
        )
        .unwrap();
    c.output().clear();
    c
}

fn subscribe(c: &mut Conn, filter: &str, now: Time) -> u8 {
    c.handle(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        }),
        now,
    )
    .unwrap();
    match c.output().pop() {
        Some(Packet::SubAck(a)) => a.reasons[0].0,
        other => panic!("{other:?}"),
    }
}

#[derive(Debug)]
struct DenySecret;

impl Authorizer for DenySecret {
    fn may_publish(&self, _: &Client<'_>, topic: &str, _: QoS, _: bool) -> bool {
        !topic.starts_with("secret/")
    }
    fn may_subscribe(&self, c: &Client<'_>, filter: &str, _: QoS) -> bool {
        // The identity reaches the authorizer.
        assert!(matches!(c.identity, Identity::Certificate(_)));
        !filter.starts_with("secret/")
    }
}

#[test]
fn an_authorizer_decides_publish_and_subscribe() {
    let b = Broker::new(BrokerConfig::default());
    assert!(b.set_authorizer(Arc::new(DenySecret)));
    let now = Time::from_unix_millis(1_700_000_000_000);
    let mut c = open(&b, Protocol::V5, "v5", now);
    assert_eq!(subscribe(&mut c, "secret/#", now), 0x87);
    assert_eq!(subscribe(&mut c, "open/#", now), 1);
    let mut v3 = open(&b, Protocol::V3_1_1, "v3", now);
    assert_eq!(subscribe(&mut v3, "secret/#", now), 0x80);
    let mut publish = |topic: &str| {
        c.handle(
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: topic.into(),
                packet_id: 7,
                payload: Bytes::from_static(b"x"),
                properties: Properties::default(),
            }),
            now,
        )
        .unwrap();
        match c.output().pop() {
            Some(Packet::PubAck(a)) => a.reason.0,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(publish("secret/plans"), 0x87);
    assert_eq!(
        b.stats
            .messages_received
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(publish("open/news"), 0x00);
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<String>>);

impl Forwarder for Recorder {
    fn forward(&self, m: &Arc<Message>) {
        self.0.lock().unwrap().push(format!("forward {}", m.topic));
    }
    fn route_added(&self, f: &str) {
        self.0.lock().unwrap().push(format!("+{f}"));
    }
    fn route_removed(&self, f: &str) {
        self.0.lock().unwrap().push(format!("-{f}"));
    }
}

#[test]
fn a_forwarder_hears_publishes_and_route_changes_once() {
    let b = Broker::new(BrokerConfig::default());
    let rec = Arc::new(Recorder::default());
    assert!(b.set_forwarder(rec.clone()));
    let now = Time::from_unix_millis(1_700_000_000_000);
    let mut a = open(&b, Protocol::V5, "a", now);
    let mut z = open(&b, Protocol::V5, "z", now);
    subscribe(&mut a, "t/#", now);
    subscribe(&mut z, "t/#", now);
    subscribe(&mut a, "t/#", now); // replaces a's own: no change
    b.publish(
        Arc::new(message_from(
            "t/1".into(),
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            false,
            &Properties::default(),
            None,
            now,
        )),
        now,
    );
    a.handle(
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["t/#".into()],
            properties: Properties::default(),
        }),
        now,
    )
    .unwrap();
    // The last subscriber leaves when its clean session ends.
    z.close(CloseCause::ConnectionLost, now);
    assert_eq!(*rec.0.lock().unwrap(), vec!["+t/#", "forward t/1", "-t/#"]);
}
