//! Malformed and hostile input: the offending connection gets the right
//! reason code or is closed, and other clients carry on.

// Test code: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use certmq_codec::*;
use certmq_core::BrokerConfig;
use certmq_net::NetConfig;
use common::*;

/// A subscriber and a publisher that must keep working around the bad client.
async fn bystanders(b: &TestBroker) -> (Client, Client) {
    let mut sub = Client::connect(b.tcp, Protocol::V5, "bystander-sub").await;
    sub.subscribe("ok", QoS::AtLeastOnce).await;
    let publ = Client::connect(b.tcp, Protocol::V3_1_1, "bystander-pub").await;
    (sub, publ)
}

async fn still_fine(sub: &mut Client, publ: &mut Client, n: u16) {
    publ.publish("ok", &n.to_be_bytes(), QoS::AtLeastOnce, false, n)
        .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], &n.to_be_bytes());
    sub.send(&Packet::PubAck(PubResponse::new(
        p.packet_id,
        ReasonCode::SUCCESS,
    )))
    .await;
}

#[tokio::test]
async fn each_bad_input_closes_only_its_connection() {
    let net = NetConfig {
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let config = BrokerConfig {
        max_packet_size: 4096,
        ..Default::default()
    };
    let b = TestBroker::with(config, net).await;
    let (mut sub, mut publ) = bystanders(&b).await;

    // (name, bytes sent after a v5 CONNECT, expected DISCONNECT reason)
    let cases: Vec<(&str, Vec<u8>, ReasonCode)> = vec![
        (
            "reserved packet type",
            vec![0x00, 0x00],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "bad remaining length",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "reserved flags",
            vec![0xC3, 0x00],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "invalid UTF-8 topic",
            vec![0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "U+0000 in topic",
            vec![0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "wildcard in topic",
            vec![0x30, 0x04, 0x00, 0x01, b'+', 0x00],
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            "packet id 0",
            vec![0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "duplicate property",
            vec![0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x01, 0x00, 0x01, 0x00],
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "oversized packet",
            vec![0x30, 0xFF, 0xFF, 0x03],
            ReasonCode::PACKET_TOO_LARGE,
        ),
        (
            "second CONNECT",
            {
                let mut out = bytes::BytesMut::new();
                encode(
                    &Packet::Connect(Box::new(connect_packet(Protocol::V5, "again", true))),
                    Protocol::V5,
                    &mut out,
                );
                out.to_vec()
            },
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "AUTH without authentication method",
            vec![0xF0, 0x00],
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "subscription identifier on PUBLISH",
            vec![0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x0B, 0x01],
            ReasonCode::PROTOCOL_ERROR,
        ),
    ];
    for (i, (name, bytes, code)) in cases.into_iter().enumerate() {
        let mut bad = Client::connect(b.tcp, Protocol::V5, &format!("bad-{i}")).await;
        bad.send_raw(&bytes).await;
        assert_eq!(bad.expect_close().await, Some(code), "{name}");
        still_fine(&mut sub, &mut publ, i as u16 + 1).await;
    }

    // MQTT 3.1.1: the connection is closed without a DISCONNECT.
    let mut bad = Client::connect(b.tcp, Protocol::V3_1_1, "bad-311").await;
    bad.send_raw(&[0x00, 0x00]).await;
    assert_eq!(bad.expect_close().await, None);

    // PUBLISH before CONNECT: closed, no CONNACK.
    let mut early = Client::raw(b.tcp).await;
    early.send_raw(&[0x30, 0x03, 0x00, 0x01, b'a']).await;
    assert_eq!(early.expect_close().await, None);

    // Unknown protocol level: CONNACK "unacceptable protocol version".
    let mut v6 = Client::raw(b.tcp).await;
    v6.protocol = Protocol::V3_1_1;
    v6.send_raw(&[0x10, 0x0A, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60])
        .await;
    match v6.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    assert_eq!(v6.expect_close().await, None);

    // A client that opens TCP and sends nothing is closed after the connect timeout.
    let mut silent = Client::raw(b.tcp).await;
    let started = std::time::Instant::now();
    assert_eq!(silent.expect_close().await, None);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // A CONNECT that never completes is closed too.
    let mut partial = Client::raw(b.tcp).await;
    partial.send_raw(&[0x10, 0x20, 0x00]).await;
    assert_eq!(partial.expect_close().await, None);

    still_fine(&mut sub, &mut publ, 100).await;
    b.stop().await;
}

#[tokio::test]
async fn random_garbage_never_takes_the_broker_down() {
    let b = TestBroker::start().await;
    let (mut sub, mut publ) = bystanders(&b).await;
    // Deterministic pseudo-random bytes, after a valid CONNECT and without one.
    let mut x: u32 = 0x1234_5678;
    for round in 0..40u16 {
        let mut junk = Vec::with_capacity(256);
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            junk.push(x as u8);
        }
        let mut c = if round % 2 == 0 {
            Client::connect(b.tcp, Protocol::V5, &format!("junk-{round}")).await
        } else {
            Client::raw(b.tcp).await
        };
        c.send_raw(&junk).await;
        // Whatever comes back, the connection ends or stays usable; either way
        // the broker must keep serving the others.
        let _ = c.try_recv(Duration::from_millis(20)).await;
    }
    still_fine(&mut sub, &mut publ, 1).await;
    b.stop().await;
}

#[tokio::test]
async fn shutdown_tells_mqtt5_clients() {
    let b = TestBroker::start().await;
    let mut c = Client::connect(b.tcp, Protocol::V5, "c").await;
    let stop = tokio::spawn(b.stop());
    assert_eq!(
        c.expect_close().await,
        Some(ReasonCode::SERVER_SHUTTING_DOWN)
    );
    stop.await.unwrap();
}
