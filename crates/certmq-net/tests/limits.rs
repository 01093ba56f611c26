//! Client input that is well formed but hostile in size or depth: refused
//! by the configured limits, never crashing or stalling the broker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use certmq_codec::*;
use certmq_core::BrokerConfig;
use certmq_net::NetConfig;
use common::*;

fn deep(levels: usize, level: &str) -> String {
    vec![level; levels].join("/")
}

async fn bystanders_still_fine(b: &TestBroker, n: u16) {
    let mut sub = Client::connect(b.tcp, Protocol::V5, &format!("bystander-{n}")).await;
    sub.subscribe("ok", QoS::AtMostOnce).await;
    let mut publ = Client::connect(b.tcp, Protocol::V5, &format!("bystander-pub-{n}")).await;
    publ.publish("ok", b"fine", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"fine");
}

/// `max_topic_levels` (default 128): deeper filters get SUBACK 0x8F (0x80
/// for MQTT 3.1.1), deeper PUBLISH topics DISCONNECT 0x90, deeper will
/// topics CONNACK 0x90. mosquitto refuses such filters too.
#[tokio::test]
async fn topics_deeper_than_max_topic_levels_are_refused() {
    let b = TestBroker::start().await;
    let mut c = Client::connect(b.tcp, Protocol::V5, "deep-v5").await;
    let ack = c.subscribe(&deep(8_000, ""), QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::TOPIC_FILTER_INVALID]);
    let ack = c.subscribe(&deep(129, "+"), QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::TOPIC_FILTER_INVALID]);
    let ack = c.subscribe(&deep(128, "+"), QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode(0)], "128 levels are allowed");
    let ack = c
        .subscribe(&format!("$share/g/{}", deep(8_000, "a")), QoS::AtMostOnce)
        .await;
    assert_eq!(ack.reasons, vec![ReasonCode::TOPIC_FILTER_INVALID]);
    c.publish(&deep(8_000, "a"), b"x", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(c.expect_close().await, Some(ReasonCode::TOPIC_NAME_INVALID));

    let mut v3 = Client::connect(b.tcp, Protocol::V3_1_1, "deep-v3").await;
    let ack = v3.subscribe(&deep(8_000, "a"), QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::UNSPECIFIED_ERROR]);

    let mut with_will = connect_packet(Protocol::V5, "deep-will", true);
    with_will.will = Some(Will {
        topic: deep(8_000, "w"),
        payload: bytes::Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (_, ack) = Client::connect_with(b.tcp, with_will).await;
    assert_eq!(ack.reason, ReasonCode::TOPIC_NAME_INVALID);
    bystanders_still_fine(&b, 1).await;
    b.stop().await;
}

/// With the limit raised far beyond any sane value, a filter 30,000 levels
/// deep (an MQTT string holds at most 65,535 bytes) is inserted, matched, removed at disconnect and dropped with its
/// expired session without recursing per level (the old trie overflowed
/// the stack and aborted the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn very_deep_filters_never_overflow_the_stack() {
    let config = BrokerConfig {
        max_topic_levels: 100_000,
        ..Default::default()
    };
    let b = TestBroker::with(config, NetConfig::default()).await;
    let topic = deep(30_000, "a");
    let plus = deep(30_000, "+");
    let mut c = Client::connect(b.tcp, Protocol::V5, "deep").await;
    assert_eq!(
        c.subscribe(&topic, QoS::AtMostOnce).await.reasons,
        vec![ReasonCode(0)]
    );
    assert_eq!(
        c.subscribe(&plus, QoS::AtMostOnce).await.reasons,
        vec![ReasonCode(0)]
    );
    c.publish(&topic, b"down there", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(&c.expect_publish().await.payload[..], b"down there");
    // A clean session: its subscriptions are removed at disconnect.
    drop(c);
    // A persistent one with a short expiry: removed when it expires.
    let mut connect = connect_packet(Protocol::V5, "deep-expiring", false);
    connect.properties.session_expiry_interval = Some(1);
    let (mut e, _) = Client::connect_with(b.tcp, connect).await;
    e.subscribe(&plus, QoS::AtLeastOnce).await;
    drop(e);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    bystanders_still_fine(&b, 2).await;
    b.stop().await;
}
