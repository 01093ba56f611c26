//! Decode errors. Every error is the peer's fault (the bytes it sent); each one
//! maps to exactly one MQTT 5 reason code through [`DecodeError::reason_code`].

use crate::ReasonCode;

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not follow the packet grammar (MQTT 5 §4.13, reason 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The bytes parse but break a protocol rule (reason 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The fixed header announces a packet larger than the receiver allows (0x95).
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    /// CONNECT names a protocol level this codec does not speak (0x84).
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    /// CONNECT carries a protocol name other than `MQTT` / `MQIsdp`.
    #[error("unknown protocol name")]
    UnknownProtocolName,
    /// A PUBLISH topic name is empty where it must not be or has wildcards (0x90).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
}

impl DecodeError {
    /// The one mapping from decode errors to MQTT 5 reason codes.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::UnknownProtocolName => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
        }
    }
}
