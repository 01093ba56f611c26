//! MQTT behaviour of the real server on 127.0.0.1:0, driven by a raw client.

// Test code: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use certmq_codec::*;
use certmq_core::BrokerConfig;
use certmq_net::NetConfig;
use common::*;

const V5: Protocol = Protocol::V5;
const V311: Protocol = Protocol::V3_1_1;

fn props() -> Properties {
    Properties::default()
}

#[tokio::test]
async fn qos_flows_in_both_directions() {
    for protocol in [V311, V5, Protocol::V3_1] {
        let b = TestBroker::start().await;
        let mut sub = Client::connect(b.tcp, protocol, "sub").await;
        let ack = sub.subscribe("t/#", QoS::ExactlyOnce).await;
        assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_2]);
        let mut publ = Client::connect(b.tcp, protocol, "pub").await;

        publ.publish("t/0", b"zero", QoS::AtMostOnce, false, 0)
            .await;
        let p = sub.expect_publish().await;
        assert_eq!(
            (&*p.topic, &p.payload[..], p.qos),
            ("t/0", &b"zero"[..], QoS::AtMostOnce)
        );

        publ.publish("t/1", b"one", QoS::AtLeastOnce, false, 10)
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(a)) if a.packet_id == 10));
        let p = sub.expect_publish().await;
        assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"one"[..]));
        sub.send(&Packet::PubAck(PubResponse::new(
            p.packet_id,
            ReasonCode::SUCCESS,
        )))
        .await;

        publ.publish("t/2", b"two", QoS::ExactlyOnce, false, 11)
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 11));
        // A resent QoS 2 PUBLISH before PUBREL is not routed twice.
        let mut dup = publish("t/2", b"two", QoS::ExactlyOnce, false, 11);
        dup.dup = true;
        publ.send(&Packet::Publish(dup)).await;
        assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 11));
        publ.send(&Packet::PubRel(PubResponse::new(11, ReasonCode::SUCCESS)))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 11));

        let p = sub.expect_publish().await;
        assert_eq!((p.qos, &p.payload[..]), (QoS::ExactlyOnce, &b"two"[..]));
        sub.send(&Packet::PubRec(PubResponse::new(
            p.packet_id,
            ReasonCode::SUCCESS,
        )))
        .await;
        assert!(matches!(sub.recv().await, Some(Packet::PubRel(r)) if r.packet_id == p.packet_id));
        sub.send(&Packet::PubComp(PubResponse::new(
            p.packet_id,
            ReasonCode::SUCCESS,
        )))
        .await;
        sub.expect_silence(Duration::from_millis(100)).await;
        b.stop().await;
    }
}

#[tokio::test]
async fn qos_is_downgraded_to_the_subscription() {
    let b = TestBroker::start().await;
    let mut sub = Client::connect(b.tcp, V5, "sub").await;
    sub.subscribe("t", QoS::AtMostOnce).await;
    let mut publ = Client::connect(b.tcp, V5, "pub").await;
    publ.publish("t", b"x", QoS::ExactlyOnce, false, 1).await;
    let p = sub.expect_publish().await;
    assert_eq!((p.qos, p.packet_id), (QoS::AtMostOnce, 0));
    b.stop().await;
}

#[tokio::test]
async fn retained_messages_and_retain_options() {
    let b = TestBroker::start().await;
    let mut publ = Client::connect(b.tcp, V5, "pub").await;
    publ.publish("r/a", b"kept", QoS::AtLeastOnce, true, 1)
        .await;
    publ.recv().await;

    let mut s1 = Client::connect(b.tcp, V5, "s1").await;
    s1.subscribe("r/+", QoS::AtLeastOnce).await;
    let p = s1.expect_publish().await;
    assert!(p.retain, "retained message on subscribe carries RETAIN");
    assert_eq!(&p.payload[..], b"kept");
    s1.send(&Packet::PubAck(PubResponse::new(
        p.packet_id,
        ReasonCode::SUCCESS,
    )))
    .await;

    // Retain handling 1: only for a new subscription.
    let opts = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_handling: RetainHandling::SendIfNew,
        ..Default::default()
    };
    s1.subscribe_with("r/+", opts, props()).await;
    s1.expect_silence(Duration::from_millis(100)).await;
    // Retain handling 2: never.
    let mut s2 = Client::connect(b.tcp, V5, "s2").await;
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..Default::default()
    };
    s2.subscribe_with("r/a", opts, props()).await;
    s2.expect_silence(Duration::from_millis(100)).await;

    // Live forwarding clears RETAIN unless retain-as-published.
    let mut s3 = Client::connect(b.tcp, V5, "s3").await;
    let opts = SubscriptionOptions {
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
        ..Default::default()
    };
    s3.subscribe_with("r/a", opts, props()).await;
    publ.publish("r/a", b"new", QoS::AtMostOnce, true, 0).await;
    assert!(!s1.expect_publish().await.retain);
    assert!(!s2.expect_publish().await.retain);
    assert!(s3.expect_publish().await.retain);

    // An empty retained payload clears it.
    publ.publish("r/a", b"", QoS::AtMostOnce, true, 0).await;
    s1.expect_publish().await;
    let mut s4 = Client::connect(b.tcp, V311, "s4").await;
    s4.subscribe("r/#", QoS::AtMostOnce).await;
    s4.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(b.broker.retained_count(), 0);
    b.stop().await;
}

#[tokio::test]
async fn will_is_sent_on_abrupt_close_only() {
    let b = TestBroker::start().await;
    let mut watcher = Client::connect(b.tcp, V5, "watcher").await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    for (id, graceful) in [("dies", false), ("leaves", true)] {
        let mut c = connect_packet(V311, id, true);
        c.will = Some(Will {
            topic: format!("will/{id}"),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: props(),
        });
        let (mut client, _) = Client::connect_with(b.tcp, c).await;
        if graceful {
            client
                .send(&Packet::Disconnect(Disconnect::default()))
                .await;
            assert_eq!(client.expect_close().await, None);
        } else {
            drop(client);
        }
    }
    let p = watcher.expect_publish().await;
    assert_eq!(&*p.topic, "will/dies");
    watcher
        .send(&Packet::PubAck(PubResponse::new(
            p.packet_id,
            ReasonCode::SUCCESS,
        )))
        .await;
    watcher.expect_silence(Duration::from_millis(200)).await;
    b.stop().await;
}

#[tokio::test]
async fn will_delay_is_cancelled_by_resuming_the_session() {
    let b = TestBroker::start().await;
    let mut watcher = Client::connect(b.tcp, V5, "watcher").await;
    watcher.subscribe("will", QoS::AtMostOnce).await;
    let with_will = |clean| {
        let mut c = connect_packet(V5, "delayed", clean);
        c.properties.session_expiry_interval = Some(60);
        c.will = Some(Will {
            topic: "will".into(),
            payload: bytes::Bytes::from_static(b"late"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(1),
                ..props()
            },
        });
        c
    };
    let (c, _) = Client::connect_with(b.tcp, with_will(true)).await;
    drop(c);
    // Reconnect within the delay: the will is cancelled.
    let (c, ack) = Client::connect_with(b.tcp, with_will(false)).await;
    assert!(ack.session_present);
    watcher.expect_silence(Duration::from_millis(1300)).await;
    drop(c);
    // Now stay away: the will arrives after about a second.
    let started = std::time::Instant::now();
    let p = watcher.expect_publish().await;
    assert_eq!(&p.payload[..], b"late");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "will came too early"
    );
    b.stop().await;
}

#[tokio::test]
async fn persistent_session_queues_and_redelivers() {
    let b = TestBroker::start().await;
    let persistent = |clean| {
        let mut c = connect_packet(V5, "p", clean);
        c.properties.session_expiry_interval = Some(300);
        c
    };
    let (mut sub, ack) = Client::connect_with(b.tcp, persistent(true)).await;
    assert!(!ack.session_present);
    sub.subscribe("q", QoS::AtLeastOnce).await;
    let mut publ = Client::connect(b.tcp, V5, "pub").await;
    publ.publish("q", b"m1", QoS::AtLeastOnce, false, 1).await;
    publ.recv().await;
    // Received but never acknowledged.
    let first = sub.expect_publish().await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (i, m) in [b"m2", b"m3"].iter().enumerate() {
        publ.publish("q", *m, QoS::AtLeastOnce, false, 2 + i as u16)
            .await;
        publ.recv().await;
    }
    publ.publish("q", b"lost", QoS::AtMostOnce, false, 0).await;

    let (mut sub, ack) = Client::connect_with(b.tcp, persistent(false)).await;
    assert!(ack.session_present);
    let again = sub.expect_publish().await;
    assert!(again.dup, "unacknowledged message is resent with DUP");
    assert_eq!(
        (again.packet_id, &again.payload[..]),
        (first.packet_id, &b"m1"[..])
    );
    for want in [b"m2", b"m3"] {
        let p = sub.expect_publish().await;
        assert_eq!(&p.payload[..], want);
        sub.send(&Packet::PubAck(PubResponse::new(
            p.packet_id,
            ReasonCode::SUCCESS,
        )))
        .await;
    }
    sub.send(&Packet::PubAck(PubResponse::new(
        again.packet_id,
        ReasonCode::SUCCESS,
    )))
    .await;
    sub.expect_silence(Duration::from_millis(100)).await;

    // Clean start discards the session.
    drop(sub);
    let (_sub, ack) = Client::connect_with(b.tcp, persistent(true)).await;
    assert!(!ack.session_present);
    b.stop().await;
}

#[tokio::test]
async fn v311_persistent_session_resumes() {
    let b = TestBroker::start().await;
    let (mut sub, _) = Client::connect_with(b.tcp, connect_packet(V311, "p311", false)).await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Disconnect::default())).await;
    sub.expect_close().await;
    let mut publ = Client::connect(b.tcp, V311, "pub").await;
    publ.publish("q", b"queued", QoS::AtLeastOnce, false, 1)
        .await;
    publ.recv().await;
    let (mut sub, ack) = Client::connect_with(b.tcp, connect_packet(V311, "p311", false)).await;
    assert!(ack.session_present);
    assert_eq!(&sub.expect_publish().await.payload[..], b"queued");
    b.stop().await;
}

#[tokio::test]
async fn offline_queue_is_bounded() {
    let config = BrokerConfig {
        max_queued_messages: 5,
        ..Default::default()
    };
    let b = TestBroker::with(config, NetConfig::default()).await;
    let persistent = |clean| {
        let mut c = connect_packet(V5, "slow", clean);
        c.properties.session_expiry_interval = Some(300);
        c
    };
    let (mut sub, _) = Client::connect_with(b.tcp, persistent(true)).await;
    sub.subscribe("q", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Disconnect::default())).await;
    sub.expect_close().await;
    let mut publ = Client::connect(b.tcp, V5, "pub").await;
    for i in 1..=10u16 {
        publ.publish("q", &i.to_be_bytes(), QoS::AtLeastOnce, false, i)
            .await;
        publ.recv().await;
    }
    let (mut sub, _) = Client::connect_with(b.tcp, persistent(false)).await;
    for i in 1..=5u16 {
        let p = sub.expect_publish().await;
        assert_eq!(
            &p.payload[..],
            &i.to_be_bytes(),
            "the oldest messages are kept"
        );
        sub.send(&Packet::PubAck(PubResponse::new(
            p.packet_id,
            ReasonCode::SUCCESS,
        )))
        .await;
    }
    sub.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(
        b.broker
            .stats
            .messages_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    b.stop().await;
}

#[tokio::test]
async fn session_takeover_disconnects_the_old_connection() {
    let b = TestBroker::start().await;
    let mut old = Client::connect(b.tcp, V5, "same").await;
    let _new = Client::connect(b.tcp, V5, "same").await;
    assert_eq!(
        old.expect_close().await,
        Some(ReasonCode::SESSION_TAKEN_OVER)
    );
    let mut old311 = Client::connect(b.tcp, V311, "same311").await;
    let _new311 = Client::connect(b.tcp, V311, "same311").await;
    assert_eq!(old311.expect_close().await, None);
    b.stop().await;
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let b = TestBroker::start().await;
    let mut all = Client::connect(b.tcp, V5, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut sys = Client::connect(b.tcp, V5, "sys").await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let mut plus = Client::connect(b.tcp, V5, "plus").await;
    plus.subscribe("+/b/+", QoS::AtMostOnce).await;
    let mut publ = Client::connect(b.tcp, V5, "pub").await;
    publ.publish("$SYS/x", b"1", QoS::AtMostOnce, false, 0)
        .await;
    publ.publish("a/b/c", b"2", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&sys.expect_publish().await.payload[..], b"1");
    assert_eq!(&all.expect_publish().await.payload[..], b"2");
    assert_eq!(&plus.expect_publish().await.payload[..], b"2");
    all.expect_silence(Duration::from_millis(100)).await;
    sys.expect_silence(Duration::from_millis(10)).await;
    b.stop().await;
}

#[tokio::test]
async fn shared_subscriptions_split_the_load() {
    let b = TestBroker::start().await;
    let mut m1 = Client::connect(b.tcp, V5, "m1").await;
    let mut m2 = Client::connect(b.tcp, V311, "m2").await;
    m1.subscribe("$share/g/job/+", QoS::AtMostOnce).await;
    m2.subscribe("$share/g/job/+", QoS::AtMostOnce).await;
    let mut publ = Client::connect(b.tcp, V5, "pub").await;
    for i in 0..4u8 {
        publ.publish("job/x", &[i], QoS::AtMostOnce, false, 0).await;
    }
    let mut got = Vec::new();
    for c in [&mut m1, &mut m2] {
        for _ in 0..2 {
            got.push(c.expect_publish().await.payload[0]);
        }
        c.expect_silence(Duration::from_millis(100)).await;
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3]);
    // No-local on a shared subscription is a protocol error.
    let opts = SubscriptionOptions {
        no_local: true,
        ..Default::default()
    };
    m1.send(&Packet::Subscribe(Subscribe {
        packet_id: 2,
        filters: vec![("$share/g/x".into(), opts)],
        properties: props(),
    }))
    .await;
    assert_eq!(m1.expect_close().await, Some(ReasonCode::PROTOCOL_ERROR));
    b.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_with_all_ids() {
    let b = TestBroker::start().await;
    let mut sub = Client::connect(b.tcp, V5, "sub").await;
    let p = |id| Properties {
        subscription_identifiers: vec![id],
        ..props()
    };
    sub.subscribe_with("a/+", SubscriptionOptions::default(), p(1))
        .await;
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    sub.subscribe_with("a/#", opts, p(2)).await;
    let mut publ = Client::connect(b.tcp, V5, "pub").await;
    publ.publish("a/b", b"x", QoS::AtLeastOnce, false, 1).await;
    let got = sub.expect_publish().await;
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    sub.send(&Packet::PubAck(PubResponse::new(
        got.packet_id,
        ReasonCode::SUCCESS,
    )))
    .await;
    sub.expect_silence(Duration::from_millis(100)).await;
    b.stop().await;
}

#[tokio::test]
async fn no_local_and_request_response_properties() {
    let b = TestBroker::start().await;
    let mut c = Client::connect(b.tcp, V5, "self").await;
    let opts = SubscriptionOptions {
        no_local: true,
        ..Default::default()
    };
    c.subscribe_with("echo", opts, props()).await;
    let mut other = Client::connect(b.tcp, V5, "other").await;
    other.subscribe("echo", QoS::AtMostOnce).await;
    let mut p = publish("echo", b"req", QoS::AtMostOnce, false, 0);
    p.properties.response_topic = Some("reply/1".into());
    p.properties.correlation_data = Some(bytes::Bytes::from_static(b"cid"));
    p.properties.user_properties = vec![("k".into(), "v".into())];
    p.properties.content_type = Some("text/plain".into());
    p.properties.message_expiry_interval = Some(100);
    c.send(&Packet::Publish(p)).await;
    let got = other.expect_publish().await;
    assert_eq!(got.properties.response_topic.as_deref(), Some("reply/1"));
    assert_eq!(
        got.properties.correlation_data.as_deref(),
        Some(&b"cid"[..])
    );
    assert_eq!(
        got.properties.user_properties,
        vec![("k".into(), "v".into())]
    );
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    let expiry = got.properties.message_expiry_interval.unwrap();
    assert!((99..=100).contains(&expiry), "expiry {expiry}");
    c.expect_silence(Duration::from_millis(100)).await;
    b.stop().await;
}

#[tokio::test]
async fn topic_aliases_both_ways() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(V5, "sub", true);
    c.properties.topic_alias_maximum = Some(4);
    let (mut sub, _) = Client::connect_with(b.tcp, c).await;
    sub.subscribe("long/topic/name", QoS::AtMostOnce).await;
    let (mut publ, ack) = Client::connect_with(b.tcp, connect_packet(V5, "pub", true)).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(64));
    let mut p = publish("long/topic/name", b"1", QoS::AtMostOnce, false, 0);
    p.properties.topic_alias = Some(3);
    publ.send(&Packet::Publish(p.clone())).await;
    p.topic = "".into();
    p.payload = bytes::Bytes::from_static(b"2");
    publ.send(&Packet::Publish(p)).await;

    let first = sub.expect_publish().await;
    assert_eq!(
        (&*first.topic, first.properties.topic_alias),
        ("long/topic/name", Some(1))
    );
    let second = sub.expect_publish().await;
    assert_eq!(
        (
            &*second.topic,
            second.properties.topic_alias,
            &second.payload[..]
        ),
        ("", Some(1), &b"2"[..])
    );

    // An alias above the maximum closes the connection with 0x94.
    let mut bad = publish("x", b"", QoS::AtMostOnce, false, 0);
    bad.properties.topic_alias = Some(65);
    publ.send(&Packet::Publish(bad)).await;
    assert_eq!(
        publ.expect_close().await,
        Some(ReasonCode::TOPIC_ALIAS_INVALID)
    );
    // An unknown alias with an empty topic is a protocol error.
    let mut c2 = Client::connect(b.tcp, V5, "pub2").await;
    let mut unknown = publish("x", b"", QoS::AtMostOnce, false, 0);
    unknown.topic = "".into();
    unknown.properties.topic_alias = Some(9);
    c2.send(&Packet::Publish(unknown)).await;
    assert_eq!(c2.expect_close().await, Some(ReasonCode::PROTOCOL_ERROR));
    b.stop().await;
}

#[tokio::test]
async fn receive_maximum_both_ways() {
    let config = BrokerConfig {
        receive_maximum: 2,
        ..Default::default()
    };
    let b = TestBroker::with(config, NetConfig::default()).await;
    // Towards the broker: a third unreleased QoS 2 message exceeds it.
    let (mut publ, ack) = Client::connect_with(b.tcp, connect_packet(V5, "pub", true)).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in 1..=2 {
        publ.publish("t", b"x", QoS::ExactlyOnce, false, id).await;
        assert!(matches!(publ.recv().await, Some(Packet::PubRec(_))));
    }
    publ.publish("t", b"x", QoS::ExactlyOnce, false, 3).await;
    assert_eq!(
        publ.expect_close().await,
        Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
    );

    // Towards the client: no more than its receive maximum in flight.
    let mut c = connect_packet(V5, "sub", true);
    c.properties.receive_maximum = Some(2);
    let (mut sub, _) = Client::connect_with(b.tcp, c).await;
    sub.subscribe("w", QoS::AtLeastOnce).await;
    let mut publ = Client::connect(b.tcp, V5, "pub2").await;
    for id in 1..=3 {
        publ.publish("w", &[id as u8], QoS::AtLeastOnce, false, id)
            .await;
        publ.recv().await;
    }
    let a = sub.expect_publish().await;
    let _b = sub.expect_publish().await;
    sub.expect_silence(Duration::from_millis(150)).await;
    sub.send(&Packet::PubAck(PubResponse::new(
        a.packet_id,
        ReasonCode::SUCCESS,
    )))
    .await;
    assert_eq!(sub.expect_publish().await.payload[0], 3);
    b.stop().await;
}

#[tokio::test]
async fn maximum_packet_size_both_ways() {
    let config = BrokerConfig {
        max_packet_size: 1024,
        ..Default::default()
    };
    let b = TestBroker::with(config, NetConfig::default()).await;
    let mut c = connect_packet(V5, "small", true);
    c.properties.maximum_packet_size = Some(100);
    let (mut small, ack) = Client::connect_with(b.tcp, c).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    small.subscribe("t", QoS::AtMostOnce).await;
    let mut publ = Client::connect(b.tcp, V5, "pub").await;
    publ.publish("t", &[7; 200], QoS::AtMostOnce, false, 0)
        .await;
    publ.publish("t", b"fits", QoS::AtMostOnce, false, 0).await;
    assert_eq!(
        &small.expect_publish().await.payload[..],
        b"fits",
        "the large message is skipped"
    );
    publ.publish("t", &[0; 2000], QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(
        publ.expect_close().await,
        Some(ReasonCode::PACKET_TOO_LARGE)
    );
    b.stop().await;
}

#[tokio::test]
async fn keep_alive_is_enforced_and_server_keep_alive_sent() {
    let config = BrokerConfig {
        max_keep_alive: 30,
        ..Default::default()
    };
    let b = TestBroker::with(config, NetConfig::default()).await;
    let (_c, ack) = Client::connect_with(b.tcp, connect_packet(V5, "ka60", true)).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let mut c = connect_packet(V5, "ka1", true);
    c.keep_alive = 1;
    let (mut quiet, _) = Client::connect_with(b.tcp, c).await;
    let started = std::time::Instant::now();
    assert_eq!(
        quiet.expect_close().await,
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3000),
        "{waited:?}"
    );
    // PINGREQ keeps a connection alive.
    let mut c = connect_packet(V311, "pinger", true);
    c.keep_alive = 1;
    let (mut pinger, _) = Client::connect_with(b.tcp, c).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        pinger.send(&Packet::PingReq).await;
        assert_eq!(pinger.recv().await, Some(Packet::PingResp));
    }
    b.stop().await;
}

#[tokio::test]
async fn refused_subscriptions_get_reason_codes() {
    let b = TestBroker::start().await;
    for (protocol, code) in [
        (V5, ReasonCode::TOPIC_FILTER_INVALID),
        (V311, ReasonCode::UNSPECIFIED_ERROR),
    ] {
        let mut c = Client::connect(b.tcp, protocol, "s").await;
        let f = |s: &str| (s.to_owned(), SubscriptionOptions::default());
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: 5,
            filters: vec![f("a/#/b"), f("ok/+"), f("x+")],
            properties: props(),
        }))
        .await;
        match c.recv().await {
            Some(Packet::SubAck(a)) => {
                assert_eq!(a.reasons, vec![code, ReasonCode::GRANTED_QOS_0, code])
            }
            other => panic!("{other:?}"),
        }
        c.send(&Packet::PingReq).await;
        assert_eq!(
            c.recv().await,
            Some(Packet::PingResp),
            "connection stays open"
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn client_identifiers() {
    let b = TestBroker::start().await;
    let (_c, ack) = Client::connect_with(b.tcp, connect_packet(V5, "", false)).await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    assert!(ack
        .properties
        .assigned_client_identifier
        .is_some_and(|id| !id.is_empty()));
    let (_c, ack) = Client::connect_with(b.tcp, connect_packet(V311, "", true)).await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    let (mut c, ack) = Client::connect_with(b.tcp, connect_packet(V311, "", false)).await;
    assert_eq!(ack.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    assert_eq!(c.expect_close().await, None);
    b.stop().await;
}

#[tokio::test]
async fn session_expiry_set_at_disconnect() {
    let b = TestBroker::start().await;
    // Expiry 0 at CONNECT cannot become non-zero at DISCONNECT.
    let mut c = Client::connect(b.tcp, V5, "zero").await;
    c.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: Properties {
            session_expiry_interval: Some(10),
            ..props()
        },
    }))
    .await;
    assert_eq!(c.expect_close().await, Some(ReasonCode::PROTOCOL_ERROR));
    // A session with expiry can end itself by setting 0 at DISCONNECT.
    let mut cp = connect_packet(V5, "ends", true);
    cp.properties.session_expiry_interval = Some(100);
    let (mut c, _) = Client::connect_with(b.tcp, cp.clone()).await;
    c.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..props()
        },
    }))
    .await;
    c.expect_close().await;
    cp.clean_start = false;
    let (_c, ack) = Client::connect_with(b.tcp, cp).await;
    assert!(!ack.session_present);
    b.stop().await;
}
