//! The data representations of MQTT §1.5: integers, variable byte integers,
//! UTF-8 strings and binary data. Reading never panics: every read checks the
//! bytes left and reports a malformed packet when they run out.

use bytes::{BufMut, Bytes, BytesMut};

use crate::DecodeError;

/// The largest value a variable byte integer can hold (four bytes).
pub const VARINT_MAX: u32 = 268_435_455;

/// Reads the fields of one packet body, already known to be complete.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .first()
            .ok_or(DecodeError::Malformed("packet ends early"))?;
        self.buf = self.buf.slice(1..);
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match read_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf = self.buf.slice(len..);
                Ok(value)
            }
            None => Err(DecodeError::Malformed("variable byte integer ends early")),
        }
    }

    /// `n` bytes, shared with the input buffer (no copy).
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed("packet ends early"));
        }
        Ok(self.buf.split_to(n))
    }

    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        utf8(raw)
    }

    /// Everything left, shared with the input buffer.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// A sub-reader over the next `n` bytes (a property block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(n)?))
    }
}

/// Validates an MQTT UTF-8 string: well-formed UTF-8 (which excludes
/// surrogates) and no U+0000 (MQTT 5 §1.5.4).
pub(crate) fn utf8(raw: Bytes) -> Result<String, DecodeError> {
    let s =
        std::str::from_utf8(&raw).map_err(|_| DecodeError::Malformed("invalid UTF-8 string"))?;
    if s.contains('\0') {
        return Err(DecodeError::Malformed("string contains U+0000"));
    }
    Ok(s.to_owned())
}

/// Reads a variable byte integer from the start of `buf`: `Ok(None)` when more
/// bytes are needed, an error when a fifth continuation byte appears.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, byte) in buf.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    } else {
        Ok(None)
    }
}

pub(crate) fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends a variable byte integer (MQTT §1.5.5).
pub fn put_varint(out: &mut BytesMut, mut value: u32) {
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes a length-prefixed byte string. Callers guarantee `len <= 65535`
/// (encoding validates lengths first); longer input is truncated rather than
/// producing a corrupt frame.
pub(crate) fn put_binary(out: &mut BytesMut, data: &[u8]) {
    let len = data.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&data[..len]);
}

pub(crate) fn put_string(out: &mut BytesMut, s: &str) {
    put_binary(out, s.as_bytes());
}
