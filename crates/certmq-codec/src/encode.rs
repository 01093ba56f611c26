//! Packets to bytes. The body length is computed first so each packet is
//! written once, straight into the connection's output buffer.

use bytes::{BufMut, BytesMut};

use crate::packet::*;
use crate::wire::{put_binary, put_string, put_varint, varint_len};
use crate::Properties;

/// The full encoded size of `packet` (fixed header included) for `protocol`.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let body = body_len(packet, protocol);
    1 + varint_len(body as u32) + body
}

/// Appends the encoding of `packet` to `out`. CONNECT uses its own protocol
/// level; every other packet is written for `protocol`.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    let v5 = protocol.is_v5();
    let body = body_len(packet, protocol);
    out.reserve(5 + body);
    out.put_u8(first_byte(packet));
    put_varint(out, body as u32);
    match packet {
        Packet::Connect(c) => encode_connect(c, out),
        Packet::ConnAck(c) => {
            out.put_u8(u8::from(c.session_present));
            if v5 {
                out.put_u8(c.reason.0);
                c.properties.encode(out);
            } else {
                out.put_u8(c.reason.to_v3_connack());
            }
        }
        Packet::Publish(p) => {
            put_string(out, &p.topic);
            if p.qos != QoS::AtMostOnce {
                out.put_u16(p.packet_id);
            }
            if v5 {
                p.properties.encode(out);
            }
            out.put_slice(&p.payload);
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            out.put_u16(r.packet_id);
            if v5 && !(r.reason.0 == 0 && r.properties.is_empty()) {
                out.put_u8(r.reason.0);
                if !r.properties.is_empty() {
                    r.properties.encode(out);
                }
            }
        }
        Packet::Subscribe(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(out);
            }
            for (filter, o) in &s.filters {
                put_string(out, filter);
                let mut b = o.qos as u8;
                if v5 {
                    b |= u8::from(o.no_local) << 2;
                    b |= u8::from(o.retain_as_published) << 3;
                    b |= (o.retain_handling as u8) << 4;
                }
                out.put_u8(b);
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(out);
            }
            for r in &s.reasons {
                out.put_u8(if v5 || !r.is_error() { r.0 } else { 0x80 });
            }
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(out);
            }
            for f in &u.filters {
                put_string(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(out);
                for r in &u.reasons {
                    out.put_u8(r.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(Disconnect { reason, properties })
        | Packet::Auth(Auth { reason, properties }) => {
            if v5 && !(reason.0 == 0 && properties.is_empty()) {
                out.put_u8(reason.0);
                if !properties.is_empty() {
                    properties.encode(out);
                }
            }
        }
    }
}

fn first_byte(packet: &Packet) -> u8 {
    let flags = match packet {
        Packet::Publish(p) => (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain),
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0x02,
        _ => 0,
    };
    (packet.packet_type() << 4) | flags
}

fn encode_connect(c: &Connect, out: &mut BytesMut) {
    let v5 = c.protocol.is_v5();
    match c.protocol {
        Protocol::V3_1 => put_string(out, "MQIsdp"),
        _ => put_string(out, "MQTT"),
    }
    out.put_u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if v5 {
        c.properties.encode(out);
    }
    put_string(out, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            w.properties.encode(out);
        }
        put_string(out, &w.topic);
        put_binary(out, &w.payload);
    }
    if let Some(u) = &c.username {
        put_string(out, u);
    }
    if let Some(p) = &c.password {
        put_binary(out, p);
    }
}

fn props_len(p: &Properties, v5: bool) -> usize {
    if v5 {
        p.encoded_len()
    } else {
        0
    }
}

/// Reason code plus optional properties, omitted when both are defaults.
fn short_form_len(reason: u8, p: &Properties, v5: bool) -> usize {
    if !v5 || (reason == 0 && p.is_empty()) {
        0
    } else if p.is_empty() {
        1
    } else {
        1 + p.encoded_len()
    }
}

fn body_len(packet: &Packet, protocol: Protocol) -> usize {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => {
            let cv5 = c.protocol.is_v5();
            let name = if c.protocol == Protocol::V3_1 { 8 } else { 6 };
            name + 4
                + props_len(&c.properties, cv5)
                + 2
                + c.client_id.len()
                + c.will.as_ref().map_or(0, |w| {
                    props_len(&w.properties, cv5) + 4 + w.topic.len() + w.payload.len()
                })
                + c.username.as_ref().map_or(0, |u| 2 + u.len())
                + c.password.as_ref().map_or(0, |p| 2 + p.len())
        }
        Packet::ConnAck(c) => 2 + props_len(&c.properties, v5),
        Packet::Publish(p) => {
            2 + p.topic.len()
                + if p.qos == QoS::AtMostOnce { 0 } else { 2 }
                + props_len(&p.properties, v5)
                + p.payload.len()
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            2 + short_form_len(r.reason.0, &r.properties, v5)
        }
        Packet::Subscribe(s) => {
            2 + props_len(&s.properties, v5)
                + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>()
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, v5) + s.reasons.len(),
        Packet::Unsubscribe(u) => {
            2 + props_len(&u.properties, v5) + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            2 + if v5 {
                u.properties.encoded_len() + u.reasons.len()
            } else {
                0
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(Disconnect { reason, properties })
        | Packet::Auth(Auth { reason, properties }) => short_form_len(reason.0, properties, v5),
    }
}
