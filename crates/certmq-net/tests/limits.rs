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

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A small payload queued for offline sessions must not keep the read
/// buffer it arrived in alive: 100 rounds of a 1 MB publish with a 4-byte
/// one right behind it (one write), the small ones queued for three offline
/// sessions. Sharing the buffer held ~100 MB; copying small payloads out
/// holds ~nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_queued_payload_does_not_pin_its_read_buffer() {
    let b = TestBroker::start().await;
    for i in 0..3 {
        let mut connect = connect_packet(Protocol::V5, &format!("offline-{i}"), true);
        connect.properties.session_expiry_interval = Some(3600);
        let (mut s, _) = Client::connect_with(b.tcp, connect).await;
        s.subscribe("small", QoS::AtLeastOnce).await;
        s.send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }))
        .await;
        assert!(s.expect_close().await.is_none());
    }
    let mut publ = Client::connect(b.tcp, Protocol::V5, "pinner").await;
    let big = vec![7u8; 1_000_000];
    // Warm up allocator arenas with one round before measuring.
    let round = |n: u16| {
        let mut bytes = bytes::BytesMut::new();
        encode(
            &Packet::Publish(publish("big", &big, QoS::AtMostOnce, false, 0)),
            Protocol::V5,
            &mut bytes,
        );
        encode(
            &Packet::Publish(publish("small", b"tiny", QoS::AtLeastOnce, false, n)),
            Protocol::V5,
            &mut bytes,
        );
        bytes
    };
    publ.send_raw(&round(1)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let before = rss_bytes();
    for n in 2..102 {
        publ.send_raw(&round(n)).await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 30_000_000,
        "100 queued 4-byte payloads grew the process by {grown} bytes"
    );
    // They are all there.
    let mut connect = connect_packet(Protocol::V5, "offline-0", false);
    connect.properties.session_expiry_interval = Some(3600);
    let (mut s, ack) = Client::connect_with(b.tcp, connect).await;
    assert!(ack.session_present);
    for _ in 0..101 {
        let p = s.expect_publish().await;
        assert_eq!(&p.payload[..], b"tiny");
        s.send(&Packet::PubAck(PubResponse::new(
            p.packet_id,
            ReasonCode::SUCCESS,
        )))
        .await;
    }
    b.stop().await;
}

/// Retained messages the retained-index tests store.
const RETAINED: usize = 20_000;

/// Stores [`RETAINED`] retained messages on `r/<i % 100>/<i>`, written in
/// batches, and waits until every one is routed.
async fn retain_many(b: &TestBroker) {
    let mut publ = Client::connect(b.tcp, Protocol::V5, "retainer").await;
    let mut batch = bytes::BytesMut::new();
    for i in 0..RETAINED {
        encode(
            &Packet::Publish(publish(
                &format!("r/{}/{i}", i % 100),
                b"v",
                QoS::AtMostOnce,
                true,
                0,
            )),
            Protocol::V5,
            &mut batch,
        );
        if batch.len() > 60_000 || i + 1 == RETAINED {
            publ.send_raw(&batch).await;
            batch.clear();
        }
    }
    // Everything routed: a ping after the batch is answered after it.
    publ.send(&Packet::PingReq).await;
    assert!(matches!(publ.recv().await, Some(Packet::PingResp)));
    assert_eq!(b.broker.retained_count(), RETAINED);
}

/// Retained messages on SUBSCRIBE stay within `max_queued_messages` for the
/// whole SUBSCRIBE, and finding them walks an index within a budget: a
/// SUBSCRIBE of 3,000 wildcard filters over 20,000 retained messages
/// neither floods the subscriber's queue (it was 3,000 x 20,000
/// deliveries) nor holds up other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_on_subscribe_are_bounded_and_indexed() {
    let b = TestBroker::start().await;
    retain_many(&b).await;

    let mut bystander = Client::connect(b.tcp, Protocol::V5, "bystander").await;
    let mut greedy = Client::connect(b.tcp, Protocol::V5, "greedy").await;
    greedy
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: (0..3_000)
                .map(|i| {
                    (
                        if i % 2 == 0 {
                            "#".to_string()
                        } else {
                            "+/+/#".to_string()
                        },
                        SubscriptionOptions::default(),
                    )
                })
                .collect(),
            properties: Properties::default(),
        }))
        .await;
    // Other clients are served meanwhile.
    bystander.send(&Packet::PingReq).await;
    assert!(matches!(
        bystander.try_recv(std::time::Duration::from_secs(2)).await,
        Some(Packet::PingResp)
    ));
    match greedy.recv().await {
        Some(Packet::SubAck(a)) => assert_eq!(a.reasons.len(), 3_000),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let limit = BrokerConfig::default().max_queued_messages;
    for _ in 0..limit {
        assert!(matches!(greedy.recv().await, Some(Packet::Publish(_))));
    }
    greedy
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
    b.stop().await;
}

/// A WebSocket message larger than one maximum-size MQTT packet is refused
/// as it arrives, before CONNECT: the connection is closed instead of the
/// broker buffering up to tungstenite's default of 64 MiB.
#[tokio::test]
async fn websocket_messages_are_capped_at_the_packet_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBroker::start().await;
    let mut s = tokio::net::TcpStream::connect(b.ws).await.unwrap();
    s.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(s.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    // One 48 MiB message in six masked 8 MiB frames (each under
    // tungstenite's default frame limit, the whole under its 64 MiB message
    // limit), written in 64 KiB pieces. The broker must give up within the
    // first frame instead of buffering the message.
    const FRAME: u64 = 8 << 20;
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    'frames: for i in 0..6u8 {
        let opcode = if i == 0 { 0x02 } else { 0x00 };
        let fin = if i == 5 { 0x80 } else { 0x00 };
        let mut header = vec![fin | opcode, 0x80 | 127];
        header.extend_from_slice(&FRAME.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        if s.write_all(&header).await.is_err() {
            break;
        }
        let mut in_frame = 0u64;
        while in_frame < FRAME {
            match tokio::time::timeout(std::time::Duration::from_secs(5), s.write_all(&chunk)).await
            {
                Ok(Ok(())) => {
                    in_frame += chunk.len() as u64;
                    sent += chunk.len() as u64;
                }
                _ => break 'frames,
            }
        }
    }
    assert!(
        sent < 16 << 20,
        "the broker read {sent} bytes of one WebSocket message before refusing it"
    );
    bystanders_still_fine(&b, 3).await;
    b.stop().await;
}

/// The walk budget holds for a whole SUBSCRIBE, not per filter: 3,000
/// wildcard filters that match nothing over 20,000 retained messages
/// (each filter alone visits every leaf) cost one bounded walk, so on a
/// single-threaded runtime another client's ping is answered at once
/// (per filter, this was 60 million node visits on one worker).
#[tokio::test]
async fn one_subscribe_walks_the_retained_index_within_one_budget() {
    let b = TestBroker::start().await;
    retain_many(&b).await;

    let mut bystander = Client::connect(b.tcp, Protocol::V5, "bystander").await;
    let mut prober = Client::connect(b.tcp, Protocol::V5, "prober").await;
    prober
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: (0..3_000)
                .map(|_| ("+/+/+/none".to_string(), SubscriptionOptions::default()))
                .collect(),
            properties: Properties::default(),
        }))
        .await;
    // Let the broker take the SUBSCRIBE up first (one thread: while it
    // walks, nothing else runs, the test's own timer included), then ask
    // for a ping. The whole exchange must not wait for a long walk.
    let started = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    bystander.send(&Packet::PingReq).await;
    assert!(matches!(
        bystander.try_recv(std::time::Duration::from_secs(5)).await,
        Some(Packet::PingResp)
    ));
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(2),
        "a SUBSCRIBE held the broker's only worker for {waited:?}"
    );
    match prober.try_recv(std::time::Duration::from_secs(3)).await {
        Some(Packet::SubAck(a)) => assert_eq!(a.reasons.len(), 3_000),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    prober
        .expect_silence(std::time::Duration::from_millis(200))
        .await;
    b.stop().await;
}
