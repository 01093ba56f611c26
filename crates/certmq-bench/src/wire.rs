//! Hand-rolled PUBLISH encoding and parsing for the hot loops: the payload
//! carries the send time (nanoseconds since the run's epoch) in its first 8
//! bytes, so latency is measured end to end without a clock per message.

use bytes::{BufMut, BytesMut};
use certmq_codec::{put_varint, Protocol, QoS};

/// Appends a PUBLISH of `payload_len` bytes (at least 8) stamped with `stamp`.
pub fn put_publish(
    out: &mut BytesMut,
    protocol: Protocol,
    topic: &str,
    qos: QoS,
    packet_id: u16,
    stamp: u64,
    payload_len: usize,
) {
    let payload_len = payload_len.max(8);
    let props = usize::from(protocol.is_v5());
    let id = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + topic.len() + id + props + payload_len;
    out.reserve(remaining + 5);
    out.put_u8(0x30 | ((qos as u8) << 1));
    // Bounded by the payload option; MQTT caps a packet at 256 MiB anyway.
    put_varint(
        out,
        u32::try_from(remaining).unwrap_or(certmq_codec::VARINT_MAX),
    );
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    if id > 0 {
        out.put_u16(packet_id);
    }
    if props > 0 {
        out.put_u8(0);
    }
    out.put_u64(stamp);
    out.put_bytes(b'x', payload_len - 8);
}

/// What the subscriber needs from a PUBLISH.
pub struct Incoming {
    pub qos: u8,
    pub packet_id: u16,
    pub stamp: Option<u64>,
}

/// A frame's first byte, its PUBLISH fields, and an ack's packet id.
pub type Frame = (u8, Option<Incoming>, u16);

/// One frame from the front of `buf`: `Ok(None)` if incomplete; the frame's
/// first byte and, for PUBLISH, its fields. Consumes the frame.
pub fn next_frame(buf: &mut BytesMut, protocol: Protocol) -> Result<Option<Frame>, &'static str> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining: usize = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7F) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err("bad remaining length");
        }
    }
    let total = i + remaining;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = buf.split_to(total);
    let body = frame.get(i..).ok_or("short frame")?;
    let kind = first >> 4;
    // Packet id of acks (PUBACK/PUBREC/PUBREL/PUBCOMP).
    let ack_id = if (4..=7).contains(&kind) {
        u16::from_be_bytes([
            *body.first().ok_or("short ack")?,
            *body.get(1).ok_or("short ack")?,
        ])
    } else {
        0
    };
    if kind != 3 {
        return Ok(Some((first, None, ack_id)));
    }
    let qos = (first >> 1) & 3;
    let tlen = usize::from(u16::from_be_bytes([
        *body.first().ok_or("short")?,
        *body.get(1).ok_or("short")?,
    ]));
    let mut pos = 2 + tlen;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes([
            *body.get(pos).ok_or("short")?,
            *body.get(pos + 1).ok_or("short")?,
        ]);
        pos += 2;
    }
    if protocol.is_v5() {
        let mut plen = 0usize;
        let mut shift = 0;
        loop {
            let b = *body.get(pos).ok_or("short")?;
            pos += 1;
            plen |= usize::from(b & 0x7F) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        pos += plen;
    }
    let stamp = body
        .get(pos..pos + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes);
    Ok(Some((
        first,
        Some(Incoming {
            qos,
            packet_id,
            stamp,
        }),
        0,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_the_codec() {
        for protocol in [Protocol::V3_1_1, Protocol::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut buf = BytesMut::new();
                put_publish(&mut buf, protocol, "a/b", qos, 7, 42, 100);
                let mut copy = buf.clone();
                let decoded = certmq_codec::decode(&mut copy, Some(protocol), usize::MAX)
                    .unwrap()
                    .unwrap();
                assert!(
                    matches!(decoded, certmq_codec::Packet::Publish(ref p) if p.payload.len() == 100 && p.qos == qos)
                );
                let (_, incoming, _) = next_frame(&mut buf, protocol).unwrap().unwrap();
                let incoming = incoming.unwrap();
                assert_eq!(incoming.stamp, Some(42));
                assert_eq!(incoming.qos, qos as u8);
                assert!(buf.is_empty());
            }
        }
    }
}
