//! Codec behaviour on valid and malformed input, plus round-trip property tests.

// Test code: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use certmq_codec::*;
use proptest::prelude::*;

const MAX: usize = 1 << 20;

fn enc(p: &Packet, v: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, v, &mut out);
    assert_eq!(out.len(), encoded_len(p, v));
    out
}

fn dec(bytes: &[u8], v: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, v, MAX)
}

fn connect_v5() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "dev-1".into(),
        will: Some(Will {
            topic: "a/will".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(5),
                ..Default::default()
            },
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: Properties {
            session_expiry_interval: Some(60),
            receive_maximum: Some(10),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        },
    }))
}

#[test]
fn connect_round_trip_all_versions() {
    for v in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        let mut p = connect_v5();
        if let Packet::Connect(c) = &mut p {
            c.protocol = v;
            if !v.is_v5() {
                c.properties = Properties::default();
                if let Some(w) = &mut c.will {
                    w.properties = Properties::default();
                }
            }
        }
        let bytes = enc(&p, v);
        assert_eq!(dec(&bytes, None), Ok(Some(p)));
    }
}

#[test]
fn incomplete_input_asks_for_more() {
    let bytes = enc(&connect_v5(), Protocol::V5);
    for cut in 0..bytes.len() {
        assert_eq!(dec(&bytes[..cut], None), Ok(None), "cut at {cut}");
    }
}

#[test]
fn too_large_is_refused_from_the_fixed_header() {
    // Only the fixed header of a 1 MiB publish has arrived.
    let header = [0x30, 0x80, 0x80, 0x40];
    let mut buf = BytesMut::from(&header[..]);
    let err = decode(&mut buf, Some(Protocol::V5), 1024).unwrap_err();
    assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
}

#[test]
fn malformed_inputs_map_to_reason_codes() {
    let v5 = Some(Protocol::V5);
    let cases: &[(&[u8], Option<Protocol>, ReasonCode)] = &[
        // Remaining length with a fifth continuation byte.
        (
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            v5,
            ReasonCode::MALFORMED_PACKET,
        ),
        // PINGREQ with reserved flags.
        (&[0xC1, 0x00], v5, ReasonCode::MALFORMED_PACKET),
        // SUBSCRIBE with flags 0 instead of 2.
        (
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            v5,
            ReasonCode::MALFORMED_PACKET,
        ),
        // PUBLISH QoS 3.
        (
            &[0x36, 0x04, 0x00, 0x01, b'a', 0x00],
            v5,
            ReasonCode::MALFORMED_PACKET,
        ),
        // PUBLISH topic with invalid UTF-8.
        (
            &[0x30, 0x04, 0x00, 0x01, 0xFF, 0x00],
            v5,
            ReasonCode::MALFORMED_PACKET,
        ),
        // PUBLISH topic containing U+0000.
        (
            &[0x30, 0x04, 0x00, 0x01, 0x00, 0x00],
            v5,
            ReasonCode::MALFORMED_PACKET,
        ),
        // PUBLISH topic with a wildcard.
        (
            &[0x30, 0x04, 0x00, 0x01, b'#', 0x00],
            v5,
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        // PUBLISH QoS 1 with packet id 0.
        (
            &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
            v5,
            ReasonCode::MALFORMED_PACKET,
        ),
        // PUBLISH with the same property twice (message expiry).
        (
            &[
                0x30, 0x0E, 0x00, 0x01, b'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1,
            ],
            v5,
            ReasonCode::PROTOCOL_ERROR,
        ),
        // PUBLISH with a CONNECT-only property (session expiry).
        (
            &[0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0, 0, 0, 1],
            v5,
            ReasonCode::PROTOCOL_ERROR,
        ),
        // A second CONNECT.
        (&[0x10, 0x00], v5, ReasonCode::PROTOCOL_ERROR),
        // PUBLISH before CONNECT.
        (
            &[0x30, 0x03, 0x00, 0x01, b'a'],
            None,
            ReasonCode::PROTOCOL_ERROR,
        ),
        // Reserved packet type 0.
        (&[0x00, 0x00], v5, ReasonCode::MALFORMED_PACKET),
        // SUBSCRIBE with no filters.
        (
            &[0x82, 0x03, 0x00, 0x01, 0x00],
            v5,
            ReasonCode::PROTOCOL_ERROR,
        ),
        // SUBSCRIBE options with reserved bits.
        (
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0xC0],
            v5,
            ReasonCode::MALFORMED_PACKET,
        ),
        // CONNECT with protocol level 6.
        (
            &[0x10, 0x0A, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 0],
            None,
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ),
        // CONNECT with the reserved flag.
        (
            &[0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 3, 0, 0, 0, 0],
            None,
            ReasonCode::MALFORMED_PACKET,
        ),
    ];
    for (bytes, v, code) in cases {
        let err = dec(bytes, *v).expect_err(&format!("{bytes:02X?} should fail"));
        assert_eq!(err.reason_code(), *code, "{bytes:02X?}: {err}");
    }
}

#[test]
fn v5_short_forms_decode() {
    // PUBACK with only a packet id, and DISCONNECT with no body.
    assert_eq!(
        dec(&[0x40, 0x02, 0x00, 0x07], Some(Protocol::V5)),
        Ok(Some(Packet::PubAck(PubResponse::new(
            7,
            ReasonCode::SUCCESS
        ))))
    );
    assert_eq!(
        dec(&[0xE0, 0x00], Some(Protocol::V5)),
        Ok(Some(Packet::Disconnect(Disconnect::default())))
    );
}

fn string() -> impl Strategy<Value = String> {
    "[a-z0-9/ é]{0,12}"
}

fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,4}(/[a-z0-9]{0,4}){0,3}"
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn publish_props() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(0u8..=1),
        proptest::option::of(any::<u32>()),
        proptest::option::of(string()),
        proptest::option::of(topic()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        proptest::collection::vec(1u32..=268_435_455, 0..3),
        proptest::option::of(1u16..),
        proptest::collection::vec((string(), string()), 0..3),
    )
        .prop_map(|(pfi, mei, ct, rt, cd, sids, ta, up)| Properties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd.map(Bytes::from),
            subscription_identifiers: sids,
            topic_alias: ta,
            user_properties: up,
            ..Default::default()
        })
}

fn packet() -> impl Strategy<Value = Packet> {
    let publish = (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic(),
        1u16..,
        proptest::collection::vec(any::<u8>(), 0..64),
        publish_props(),
    )
        .prop_map(|(qos, dup, retain, topic, id, payload, properties)| {
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic: topic.into(),
                packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
                payload: Bytes::from(payload),
                properties,
            })
        });
    let ack = (
        1u16..,
        prop_oneof![Just(0u8), Just(0x10), Just(0x80), Just(0x92)],
        proptest::option::of(string()),
    )
        .prop_map(|(id, reason, rs)| {
            Packet::PubRel(PubResponse {
                packet_id: id,
                reason: ReasonCode(reason),
                properties: Properties {
                    reason_string: rs,
                    ..Default::default()
                },
            })
        });
    let subscribe = (
        1u16..,
        proptest::collection::vec((topic(), qos(), any::<bool>(), any::<bool>(), 0u8..3), 1..4),
        proptest::option::of(1u32..1000),
    )
        .prop_map(|(id, fs, sid)| {
            Packet::Subscribe(Subscribe {
                packet_id: id,
                filters: fs
                    .into_iter()
                    .map(|(f, qos, nl, rap, rh)| {
                        (
                            f,
                            SubscriptionOptions {
                                qos,
                                no_local: nl,
                                retain_as_published: rap,
                                retain_handling: match rh {
                                    0 => RetainHandling::SendAtSubscribe,
                                    1 => RetainHandling::SendIfNew,
                                    _ => RetainHandling::DoNotSend,
                                },
                            },
                        )
                    })
                    .collect(),
                properties: Properties {
                    subscription_identifiers: sid.into_iter().collect(),
                    ..Default::default()
                },
            })
        });
    let unsubscribe =
        (1u16.., proptest::collection::vec(topic(), 1..4)).prop_map(|(id, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                filters,
                properties: Properties::default(),
            })
        });
    let disconnect = (
        prop_oneof![Just(0u8), Just(4), Just(0x8E)],
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(r, sei)| {
            Packet::Disconnect(Disconnect {
                reason: ReasonCode(r),
                properties: Properties {
                    session_expiry_interval: sei,
                    ..Default::default()
                },
            })
        });
    prop_oneof![
        publish,
        ack,
        subscribe,
        unsubscribe,
        disconnect,
        Just(Packet::PingReq),
        Just(Packet::PingResp)
    ]
}

proptest! {
    #[test]
    fn v5_round_trip(p in packet()) {
        let bytes = enc(&p, Protocol::V5);
        prop_assert_eq!(dec(&bytes, Some(Protocol::V5)), Ok(Some(p)));
    }

    #[test]
    fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzz_decode(&data);
    }

    #[test]
    fn decode_of_mutated_valid_packets_never_panics(p in packet(), flip in any::<(usize, u8)>()) {
        let mut bytes = enc(&p, Protocol::V5).to_vec();
        let i = flip.0 % bytes.len();
        bytes[i] ^= flip.1;
        fuzz_decode(&bytes);
    }
}
