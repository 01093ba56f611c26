//! MQTT 5 properties (§2.2.2.2). One struct holds every property; each packet
//! type admits a subset, checked on decode (a property in the wrong packet, or
//! a property repeated where the spec forbids it, is a protocol error).

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{self, put_binary, put_string, put_varint, Reader};
use crate::DecodeError;

/// Where a property block appears; decides which properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// All MQTT 5 properties; `None` / empty means absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

fn allowed(ctx: PropertyContext, prop: u8) -> bool {
    use PropertyContext as C;
    match prop {
        id::USER_PROPERTY => true,
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => matches!(ctx, C::Publish | C::Will),
        id::SUBSCRIPTION_IDENTIFIER => matches!(ctx, C::Publish | C::Subscribe),
        id::SESSION_EXPIRY_INTERVAL => matches!(ctx, C::Connect | C::ConnAck | C::Disconnect),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => ctx == C::ConnAck,
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => {
            matches!(ctx, C::Connect | C::ConnAck | C::Auth)
        }
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => ctx == C::Connect,
        id::WILL_DELAY_INTERVAL => ctx == C::Will,
        id::SERVER_REFERENCE => matches!(ctx, C::ConnAck | C::Disconnect),
        id::REASON_STRING => !matches!(
            ctx,
            C::Connect | C::Will | C::Publish | C::Subscribe | C::Unsubscribe
        ),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            matches!(ctx, C::Connect | C::ConnAck)
        }
        id::TOPIC_ALIAS => ctx == C::Publish,
        _ => false,
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property appears more than once"));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(r: &mut Reader, what: &'static str) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property block (its length prefix included).
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.varint()? as usize;
        let mut r = r.sub(len)?;
        let mut p = Properties::default();
        while r.remaining() > 0 {
            let prop = r.varint()?;
            let prop =
                u8::try_from(prop).map_err(|_| DecodeError::Malformed("unknown property"))?;
            if !allowed(ctx, prop) {
                return Err(DecodeError::Protocol("property not allowed in this packet"));
            }
            match prop {
                id::PAYLOAD_FORMAT_INDICATOR => set_once(
                    &mut p.payload_format_indicator,
                    flag(&mut r, "payload format indicator must be 0 or 1")?,
                )?,
                id::MESSAGE_EXPIRY_INTERVAL => set_once(&mut p.message_expiry_interval, r.u32()?)?,
                id::CONTENT_TYPE => set_once(&mut p.content_type, r.string()?)?,
                id::RESPONSE_TOPIC => {
                    let topic = r.string()?;
                    if topic.is_empty() || topic.contains(['+', '#']) {
                        return Err(DecodeError::Protocol("response topic must be a topic name"));
                    }
                    set_once(&mut p.response_topic, topic)?
                }
                id::CORRELATION_DATA => set_once(&mut p.correlation_data, r.binary()?)?,
                id::SUBSCRIPTION_IDENTIFIER => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if ctx == PropertyContext::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("property appears more than once"));
                    }
                    p.subscription_identifiers.push(v);
                }
                id::SESSION_EXPIRY_INTERVAL => set_once(&mut p.session_expiry_interval, r.u32()?)?,
                id::ASSIGNED_CLIENT_IDENTIFIER => {
                    set_once(&mut p.assigned_client_identifier, r.string()?)?
                }
                id::SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, r.u16()?)?,
                id::AUTHENTICATION_METHOD => set_once(&mut p.authentication_method, r.string()?)?,
                id::AUTHENTICATION_DATA => set_once(&mut p.authentication_data, r.binary()?)?,
                id::REQUEST_PROBLEM_INFORMATION => set_once(
                    &mut p.request_problem_information,
                    flag(&mut r, "request problem information must be 0 or 1")?,
                )?,
                id::WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, r.u32()?)?,
                id::REQUEST_RESPONSE_INFORMATION => set_once(
                    &mut p.request_response_information,
                    flag(&mut r, "request response information must be 0 or 1")?,
                )?,
                id::RESPONSE_INFORMATION => set_once(&mut p.response_information, r.string()?)?,
                id::SERVER_REFERENCE => set_once(&mut p.server_reference, r.string()?)?,
                id::REASON_STRING => set_once(&mut p.reason_string, r.string()?)?,
                id::RECEIVE_MAXIMUM => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set_once(&mut p.receive_maximum, v)?
                }
                id::TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, r.u16()?)?,
                id::TOPIC_ALIAS => set_once(&mut p.topic_alias, r.u16()?)?,
                id::MAXIMUM_QOS => set_once(
                    &mut p.maximum_qos,
                    flag(&mut r, "maximum QoS must be 0 or 1")?,
                )?,
                id::RETAIN_AVAILABLE => set_once(
                    &mut p.retain_available,
                    flag(&mut r, "retain available must be 0 or 1")?,
                )?,
                id::USER_PROPERTY => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                id::MAXIMUM_PACKET_SIZE => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set_once(&mut p.maximum_packet_size, v)?
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => set_once(
                    &mut p.wildcard_subscription_available,
                    flag(&mut r, "wildcard subscription available must be 0 or 1")?,
                )?,
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => set_once(
                    &mut p.subscription_identifier_available,
                    flag(&mut r, "subscription identifier available must be 0 or 1")?,
                )?,
                id::SHARED_SUBSCRIPTION_AVAILABLE => set_once(
                    &mut p.shared_subscription_available,
                    flag(&mut r, "shared subscription available must be 0 or 1")?,
                )?,
                _ => return Err(DecodeError::Malformed("unknown property")),
            }
        }
        Ok(p)
    }

    /// The encoded size of the block without its length prefix.
    pub(crate) fn body_len(&self) -> usize {
        let s = |v: &Option<String>| v.as_ref().map_or(0, |s| 3 + s.len());
        let b = |v: &Option<Bytes>| v.as_ref().map_or(0, |s| 3 + s.len());
        let n1 = |v: &Option<u8>| v.map_or(0, |_| 2);
        let n2 = |v: &Option<u16>| v.map_or(0, |_| 3);
        let n4 = |v: &Option<u32>| v.map_or(0, |_| 5);
        n1(&self.payload_format_indicator)
            + n4(&self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|v| 1 + wire::varint_len(*v))
                .sum::<usize>()
            + n4(&self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + n2(&self.server_keep_alive)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n1(&self.request_problem_information)
            + n4(&self.will_delay_interval)
            + n1(&self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n2(&self.receive_maximum)
            + n2(&self.topic_alias_maximum)
            + n2(&self.topic_alias)
            + n1(&self.maximum_qos)
            + n1(&self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
            + n4(&self.maximum_packet_size)
            + n1(&self.wildcard_subscription_available)
            + n1(&self.subscription_identifier_available)
            + n1(&self.shared_subscription_available)
    }

    /// The encoded size with the length prefix.
    pub(crate) fn encoded_len(&self) -> usize {
        let body = self.body_len();
        wire::varint_len(body as u32) + body
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.body_len() as u32);
        let u8p = |out: &mut BytesMut, pid: u8, v: Option<u8>| {
            if let Some(v) = v {
                out.put_u8(pid);
                out.put_u8(v);
            }
        };
        u8p(
            out,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        if let Some(v) = self.message_expiry_interval {
            out.put_u8(id::MESSAGE_EXPIRY_INTERVAL);
            out.put_u32(v);
        }
        put_opt_str(out, id::CONTENT_TYPE, &self.content_type);
        put_opt_str(out, id::RESPONSE_TOPIC, &self.response_topic);
        if let Some(v) = &self.correlation_data {
            out.put_u8(id::CORRELATION_DATA);
            put_binary(out, v);
        }
        for v in &self.subscription_identifiers {
            out.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_varint(out, *v);
        }
        if let Some(v) = self.session_expiry_interval {
            out.put_u8(id::SESSION_EXPIRY_INTERVAL);
            out.put_u32(v);
        }
        put_opt_str(
            out,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        if let Some(v) = self.server_keep_alive {
            out.put_u8(id::SERVER_KEEP_ALIVE);
            out.put_u16(v);
        }
        put_opt_str(out, id::AUTHENTICATION_METHOD, &self.authentication_method);
        if let Some(v) = &self.authentication_data {
            out.put_u8(id::AUTHENTICATION_DATA);
            put_binary(out, v);
        }
        u8p(
            out,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        if let Some(v) = self.will_delay_interval {
            out.put_u8(id::WILL_DELAY_INTERVAL);
            out.put_u32(v);
        }
        u8p(
            out,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_opt_str(out, id::RESPONSE_INFORMATION, &self.response_information);
        put_opt_str(out, id::SERVER_REFERENCE, &self.server_reference);
        put_opt_str(out, id::REASON_STRING, &self.reason_string);
        for (pid, v) in [
            (id::RECEIVE_MAXIMUM, self.receive_maximum),
            (id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum),
            (id::TOPIC_ALIAS, self.topic_alias),
        ] {
            if let Some(v) = v {
                out.put_u8(pid);
                out.put_u16(v);
            }
        }
        u8p(out, id::MAXIMUM_QOS, self.maximum_qos);
        u8p(out, id::RETAIN_AVAILABLE, self.retain_available);
        for (k, v) in &self.user_properties {
            out.put_u8(id::USER_PROPERTY);
            put_string(out, k);
            put_string(out, v);
        }
        if let Some(v) = self.maximum_packet_size {
            out.put_u8(id::MAXIMUM_PACKET_SIZE);
            out.put_u32(v);
        }
        u8p(
            out,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        u8p(
            out,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        u8p(
            out,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
    }
}

fn put_opt_str(out: &mut BytesMut, pid: u8, v: &Option<String>) {
    if let Some(v) = v {
        out.put_u8(pid);
        put_string(out, v);
    }
}
