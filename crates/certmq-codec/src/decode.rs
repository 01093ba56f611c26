//! Bytes to packets. [`decode`] takes what has arrived so far and returns
//! `Ok(None)` when a packet is not complete yet, apart from `Err` for bytes
//! that can never become a valid packet.

use bytes::{Buf, BytesMut};

use crate::packet::*;
use crate::properties::PropertyContext as Ctx;
use crate::wire::{read_varint, Reader};
use crate::{DecodeError, Properties, ReasonCode};

/// The size of the next packet in `buf` (fixed header included) once its fixed
/// header is complete. Refuses a packet larger than `max_packet_size` from the
/// fixed header alone, before its body is read or buffered.
pub fn frame_len(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, DecodeError> {
    Ok(fixed_header(buf, max_packet_size)?.map(|(header, body)| header + body))
}

/// The fixed header's length and the body length it announces.
fn fixed_header(buf: &[u8], max_packet_size: usize) -> Result<Option<(usize, usize)>, DecodeError> {
    let Some(rest) = buf.get(1..) else {
        return Ok(None);
    };
    let Some((remaining, len_len)) = read_varint(rest)? else {
        return Ok(None);
    };
    let size = 1 + len_len + remaining as usize;
    if size > max_packet_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok(Some((1 + len_len, remaining as usize)))
}

/// Decodes one packet from the front of `buf`, consuming its bytes.
///
/// `protocol` is the level agreed in CONNECT; `None` before CONNECT, when
/// only a CONNECT is acceptable. Payloads are shared with `buf`'s storage.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((header_len, body_len)) = fixed_header(buf, max_packet_size)? else {
        return Ok(None);
    };
    let size = header_len + body_len;
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    let mut r = Reader::new(frame);
    let packet_type = first >> 4;
    let flags = first & 0x0F;

    let Some(protocol) = protocol else {
        if packet_type != 1 {
            return Err(DecodeError::Protocol("first packet must be CONNECT"));
        }
        check_flags(flags, 0)?;
        return decode_connect(&mut r).map(|c| Some(Packet::Connect(Box::new(c))));
    };
    let v5 = protocol.is_v5();
    let packet = match packet_type {
        1 => return Err(DecodeError::Protocol("second CONNECT")),
        2 => {
            check_flags(flags, 0)?;
            Packet::ConnAck(decode_connack(&mut r, v5)?)
        }
        3 => Packet::Publish(decode_publish(&mut r, flags, v5)?),
        4 => {
            check_flags(flags, 0)?;
            Packet::PubAck(decode_pub_response(&mut r, v5)?)
        }
        5 => {
            check_flags(flags, 0)?;
            Packet::PubRec(decode_pub_response(&mut r, v5)?)
        }
        6 => {
            check_flags(flags, 2)?;
            Packet::PubRel(decode_pub_response(&mut r, v5)?)
        }
        7 => {
            check_flags(flags, 0)?;
            Packet::PubComp(decode_pub_response(&mut r, v5)?)
        }
        8 => {
            check_flags(flags, 2)?;
            Packet::Subscribe(decode_subscribe(&mut r, v5)?)
        }
        9 => {
            check_flags(flags, 0)?;
            Packet::SubAck(decode_suback(&mut r, v5)?)
        }
        10 => {
            check_flags(flags, 2)?;
            Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?)
        }
        11 => {
            check_flags(flags, 0)?;
            Packet::UnsubAck(decode_unsuback(&mut r, v5)?)
        }
        12 => {
            check_flags(flags, 0)?;
            Packet::PingReq
        }
        13 => {
            check_flags(flags, 0)?;
            Packet::PingResp
        }
        14 => {
            check_flags(flags, 0)?;
            Packet::Disconnect(decode_disconnect(&mut r, v5)?)
        }
        15 if v5 => {
            check_flags(flags, 0)?;
            Packet::Auth(decode_auth(&mut r)?)
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::Malformed("bytes left over after the packet"));
    }
    Ok(Some(packet))
}

fn check_flags(flags: u8, expected: u8) -> Result<(), DecodeError> {
    if flags != expected {
        return Err(DecodeError::Malformed("reserved fixed-header flags"));
    }
    Ok(())
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::Malformed("packet identifier 0"));
    }
    Ok(id)
}

fn props(r: &mut Reader, v5: bool, ctx: Ctx) -> Result<Properties, DecodeError> {
    if v5 {
        Properties::decode(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V3_1_1,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQIsdp", 3) => Protocol::V3_1,
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(DecodeError::UnsupportedVersion(l)),
        _ => return Err(DecodeError::UnknownProtocolName),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain without a will"));
    }
    if !v5 && has_password && !has_username {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = r.u16()?;
    let properties = props(r, v5, Ctx::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(r, v5, Ctx::Will)?;
        let topic = r.string()?;
        validate_topic_name(&topic, false)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    if r.remaining() != 0 {
        return Err(DecodeError::Malformed("bytes left over after CONNECT"));
    }
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flags"));
    }
    let code = r.u8()?;
    let reason = if v5 {
        ReasonCode(code)
    } else {
        // Return codes 1-5 of MQTT 3 to their MQTT 5 equivalents.
        ReasonCode(match code {
            0 => 0x00,
            1 => 0x84,
            2 => 0x85,
            3 => 0x88,
            4 => 0x86,
            5 => 0x87,
            _ => return Err(DecodeError::Malformed("unknown CONNACK return code")),
        })
    };
    Ok(ConnAck {
        session_present: ack_flags & 1 != 0,
        reason,
        properties: props(r, v5, Ctx::ConnAck)?,
    })
}

/// A topic name for PUBLISH or a will: no wildcards; empty only where a topic
/// alias may stand in for it.
pub(crate) fn validate_topic_name(topic: &str, empty_ok: bool) -> Result<(), DecodeError> {
    if topic.is_empty() && !empty_ok {
        return Err(DecodeError::TopicNameInvalid("empty topic name"));
    }
    if topic.contains(['+', '#']) {
        return Err(DecodeError::TopicNameInvalid("wildcard in topic name"));
    }
    Ok(())
}

fn decode_publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?;
    let retain = flags & 0x01 != 0;
    if qos == QoS::AtMostOnce && dup {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic: std::sync::Arc<str> = r.string()?.into();
    validate_topic_name(&topic, v5)?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = props(r, v5, Ctx::Publish)?;
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload,
        properties,
    })
}

fn decode_pub_response(r: &mut Reader, v5: bool) -> Result<PubResponse, DecodeError> {
    let packet_id = packet_id(r)?;
    let (reason, properties) = if v5 && r.remaining() > 0 {
        let reason = ReasonCode(r.u8()?);
        let properties = if r.remaining() > 0 {
            Properties::decode(r, Ctx::PubAck)?
        } else {
            Properties::default()
        };
        (reason, properties)
    } else {
        (ReasonCode::SUCCESS, Properties::default())
    };
    Ok(PubResponse {
        packet_id,
        reason,
        properties,
    })
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Ctx::Subscribe)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        let opts = r.u8()?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if opts & reserved != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits"));
        }
        let qos = QoS::from_u8(opts & 0x03).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        let retain_handling = match (opts >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::Protocol("retain handling 3")),
        };
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local: opts & 0x04 != 0,
                retain_as_published: opts & 0x08 != 0,
                retain_handling,
            },
        ));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Ctx::SubAck)?;
    let mut reasons = Vec::new();
    while r.remaining() > 0 {
        let code = r.u8()?;
        if !v5 && !matches!(code, 0 | 1 | 2 | 0x80) {
            return Err(DecodeError::Malformed("unknown SUBACK return code"));
        }
        reasons.push(ReasonCode(code));
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Ctx::Unsubscribe)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Ctx::UnsubAck)?;
    let mut reasons = Vec::new();
    if v5 {
        while r.remaining() > 0 {
            reasons.push(ReasonCode(r.u8()?));
        }
    }
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    if !v5 || r.remaining() == 0 {
        return Ok(Disconnect::default());
    }
    let reason = ReasonCode(r.u8()?);
    let properties = if r.remaining() > 0 {
        Properties::decode(r, Ctx::Disconnect)?
    } else {
        Properties::default()
    };
    Ok(Disconnect { reason, properties })
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    if r.remaining() == 0 {
        return Ok(Auth::default());
    }
    let reason = ReasonCode(r.u8()?);
    let properties = if r.remaining() > 0 {
        Properties::decode(r, Ctx::Auth)?
    } else {
        Properties::default()
    };
    Ok(Auth { reason, properties })
}
