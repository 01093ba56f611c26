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
                username: Some("user".into()),
                ..ConnectContext::default()
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

/// Denies `secret/...`, lets `mixed/#` in with `mixed/private/...`
/// unreadable, and denies whatever `banned` holds (changed at run time).
#[derive(Debug, Default)]
struct DenySecret {
    banned: Mutex<Vec<String>>,
}

impl Authorizer for DenySecret {
    fn may_connect(&self, c: &ClientFacts) -> bool {
        &*c.client_id != "nobody"
    }
    fn may_publish(&self, c: &ClientFacts, topic: &str, _: QoS, _: bool) -> bool {
        // The facts reach the authorizer.
        assert_eq!(c.username.as_deref(), Some("user"));
        !topic.starts_with("secret/")
    }
    fn may_subscribe(&self, _: &ClientFacts, filter: &str, _: QoS) -> SubscribeVerdict {
        if filter.starts_with("secret/") || self.banned.lock().unwrap().iter().any(|b| b == filter)
        {
            SubscribeVerdict::Deny
        } else if filter == "mixed/#" {
            SubscribeVerdict::Checked
        } else {
            SubscribeVerdict::Allow
        }
    }
    fn may_read(&self, _: &ClientFacts, topic: &str) -> bool {
        !topic.starts_with("mixed/private/")
    }
}

fn publish_as(c: &mut Conn, topic: &str, retain: bool, now: Time) -> u8 {
    c.handle(
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain,
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
}

fn received(c: &mut Conn, now: Time) -> Vec<String> {
    c.poll_deliveries(100, now).unwrap();
    c.output()
        .drain(..)
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_authorizer_decides_publish_and_subscribe() {
    let b = Broker::new(BrokerConfig::default());
    assert!(b.set_authorizer(Arc::new(DenySecret::default())));
    let now = Time::from_unix_millis(1_700_000_000_000);
    let mut c = open(&b, Protocol::V5, "v5", now);
    assert_eq!(subscribe(&mut c, "secret/#", now), 0x87);
    assert_eq!(subscribe(&mut c, "open/#", now), 1);
    let mut v3 = open(&b, Protocol::V3_1_1, "v3", now);
    assert_eq!(subscribe(&mut v3, "secret/#", now), 0x80);
    assert_eq!(publish_as(&mut c, "secret/plans", false, now), 0x87);
    assert_eq!(
        b.stats
            .messages_received
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(publish_as(&mut c, "open/news", false, now), 0x00);
}

#[test]
fn connect_is_asked_too() {
    let b = Broker::new(BrokerConfig::default());
    assert!(b.set_authorizer(Arc::new(DenySecret::default())));
    let now = Time::from_unix_millis(1_700_000_000_000);
    let refused = b
        .connect(
            Connect {
                protocol: Protocol::V5,
                clean_start: true,
                keep_alive: 60,
                client_id: "nobody".into(),
                will: None,
                username: None,
                password: None,
                properties: Properties::default(),
            },
            &ConnectContext {
                authorized: true,
                ..ConnectContext::default()
            },
            now,
        )
        .unwrap_err();
    assert_eq!(refused, ConnectRefused::DeniedByPolicy);
    assert_eq!(refused.reason_code(), ReasonCode::NOT_AUTHORIZED);
}

#[test]
fn a_checked_subscription_skips_what_it_may_not_read_retained_included() {
    let b = Broker::new(BrokerConfig::default());
    assert!(b.set_authorizer(Arc::new(DenySecret::default())));
    let now = Time::from_unix_millis(1_700_000_000_000);
    let mut p = open(&b, Protocol::V5, "p", now);
    publish_as(&mut p, "mixed/private/r", true, now);
    publish_as(&mut p, "mixed/public/r", true, now);
    let mut s = open(&b, Protocol::V5, "s", now);
    assert_eq!(subscribe(&mut s, "mixed/#", now), 1);
    assert_eq!(received(&mut s, now), ["mixed/public/r"]);
    publish_as(&mut p, "mixed/private/x", false, now);
    publish_as(&mut p, "mixed/public/x", false, now);
    assert_eq!(received(&mut s, now), ["mixed/public/x"]);
}

#[test]
fn a_policy_change_removes_live_subscriptions_it_no_longer_allows() {
    let b = Broker::new(BrokerConfig::default());
    let authz = Arc::new(DenySecret::default());
    assert!(b.set_authorizer(authz.clone()));
    let now = Time::from_unix_millis(1_700_000_000_000);
    let mut p = open(&b, Protocol::V5, "p", now);
    let mut s = open(&b, Protocol::V5, "s", now);
    assert_eq!(subscribe(&mut s, "a/#", now), 1);
    assert_eq!(subscribe(&mut s, "b/#", now), 1);
    publish_as(&mut p, "a/1", false, now);
    assert_eq!(received(&mut s, now), ["a/1"]);
    authz.banned.lock().unwrap().push("a/#".into());
    let r = b.reauthorize();
    assert_eq!(r.removed, 1);
    assert_eq!(
        publish_as(&mut p, "a/2", false, now),
        0x10,
        "no subscriber left"
    );
    publish_as(&mut p, "b/2", false, now);
    assert_eq!(received(&mut s, now), ["b/2"]);
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<String>>);

impl Forwarder for Recorder {
    fn forward(
        &self,
        m: &Arc<Message>,
        _mode: certmq_core::PushMode,
    ) -> Option<Arc<certmq_core::Mailbox>> {
        self.0.lock().unwrap().push(format!("forward {}", m.topic));
        None
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
