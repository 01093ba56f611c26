//! MQTT 3.1, 3.1.1 and 5.0 control packets to and from bytes.
//!
//! What it does: [`decode`] turns the bytes received so far into a [`Packet`],
//! telling "need more bytes" (`Ok(None)`) apart from bytes that can never be a
//! valid packet ([`DecodeError`], which maps to an MQTT 5 reason code); the
//! maximum packet size is enforced from the fixed header before the body is
//! buffered. [`encode`] writes a packet for a given protocol level.
//!
//! What it does not do: no I/O, no async, no logging, no session semantics
//! (packet-id bookkeeping, topic aliases and QoS flows live in `certmq-core`).

#![forbid(unsafe_code)]

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reason;
mod wire;

pub use decode::{decode, frame_len};
pub use encode::{encode, encoded_len};
pub use error::DecodeError;
pub use packet::*;
pub use properties::{Properties, PropertyContext};
pub use reason::ReasonCode;
pub use wire::{put_varint, read_varint, VARINT_MAX};

/// Checks a PUBLISH or will topic name (no wildcards; empty only when
/// `empty_ok`, as when an MQTT 5 topic alias stands for it).
pub fn validate_topic_name(topic: &str, empty_ok: bool) -> Result<(), DecodeError> {
    decode::validate_topic_name(topic, empty_ok)
}

/// A decoder entry point for fuzzing: must never panic, whatever the bytes,
/// and whatever it decodes must re-encode to bytes that decode to the same.
pub fn fuzz_decode(data: &[u8]) {
    for protocol in [None, Some(Protocol::V3_1_1), Some(Protocol::V5)] {
        let mut buf = bytes::BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, protocol, 1 << 20) {
            let level = match &packet {
                Packet::Connect(c) => c.protocol,
                _ => protocol.unwrap_or(Protocol::V5),
            };
            let mut out = bytes::BytesMut::new();
            encode(&packet, level, &mut out);
            let again = decode(&mut out, protocol, 1 << 20);
            assert_eq!(again, Ok(Some(packet)), "round trip changed the packet");
            if protocol.is_none() {
                break;
            }
        }
    }
}
