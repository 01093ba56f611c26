//! The outer structure of a certificate, read strictly.
//!
//! A certificate is `SEQUENCE { tbsCertificate, signatureAlgorithm,
//! signatureValue }`. Only `tbsCertificate` is signed: the bytes around it
//! can change while the signature still verifies (another DER length form,
//! an ECDSA signature's `s` replaced by `n - s`, a different outer
//! algorithm). So certmq identifies a certificate by what its CA signed —
//! the SHA-256 of the `tbsCertificate` bytes, [`CertParts::signed_id`] —
//! and refuses outer encodings that are not DER or whose outer
//! `signatureAlgorithm` differs from the one inside `tbsCertificate`.

use crate::x509::hex_sha256;

/// Why a certificate's encoding was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    #[error("the certificate is not DER: {0}")]
    NotDer(&'static str),
    #[error("the outer signatureAlgorithm differs from the one in tbsCertificate")]
    AlgorithmMismatch,
}

/// The parts of a certificate, as slices of its DER.
#[derive(Debug, Clone, Copy)]
pub struct CertParts<'a> {
    /// `tbsCertificate`, tag and length included: the signed bytes.
    pub tbs: &'a [u8],
    /// The outer `signatureAlgorithm` (tag and length included).
    pub signature_algorithm: &'a [u8],
}

impl CertParts<'_> {
    /// SHA-256 of the signed bytes, lower-case hex: the same for every
    /// encoding of one signed certificate.
    pub fn signed_id(&self) -> String {
        hex_sha256(self.tbs)
    }
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;

/// One TLV read from the front of a buffer.
struct Tlv<'a> {
    tag: u8,
    /// Tag, length and contents.
    whole: &'a [u8],
    contents: &'a [u8],
    /// What follows it.
    rest: &'a [u8],
}

fn tlv(input: &[u8]) -> Result<Tlv<'_>, EncodingError> {
    let short = EncodingError::NotDer("truncated");
    let (&tag, after_tag) = input.split_first().ok_or(short)?;
    if tag & 0x1f == 0x1f {
        return Err(EncodingError::NotDer("multi-byte tag"));
    }
    let (&first, mut rest) = after_tag.split_first().ok_or(short)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 {
            return Err(EncodingError::NotDer("indefinite length"));
        }
        if n > 4 {
            return Err(EncodingError::NotDer("length too large"));
        }
        let bytes = rest.get(..n).ok_or(short)?;
        rest = rest.get(n..).ok_or(short)?;
        if bytes.first() == Some(&0) {
            return Err(EncodingError::NotDer("length with a leading zero"));
        }
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return Err(EncodingError::NotDer("long-form length below 128"));
        }
        len
    };
    let header = input.len() - rest.len();
    let contents = rest.get(..len).ok_or(short)?;
    let whole = input.get(..header + len).ok_or(short)?;
    let after = rest.get(len..).ok_or(short)?;
    Ok(Tlv {
        tag,
        whole,
        contents,
        rest: after,
    })
}

fn expect<'a>(input: &'a [u8], tag: u8, what: &'static str) -> Result<Tlv<'a>, EncodingError> {
    let t = tlv(input)?;
    if t.tag != tag {
        return Err(EncodingError::NotDer(what));
    }
    Ok(t)
}

/// Splits a certificate's DER, checking the outer encoding is DER with
/// nothing after it and that both signature algorithms are the same.
pub fn split_certificate(der: &[u8]) -> Result<CertParts<'_>, EncodingError> {
    let outer = expect(der, SEQUENCE, "not a SEQUENCE")?;
    if !outer.rest.is_empty() {
        return Err(EncodingError::NotDer("bytes after the certificate"));
    }
    let tbs = expect(outer.contents, SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    let alg = expect(tbs.rest, SEQUENCE, "signatureAlgorithm is not a SEQUENCE")?;
    let bits = expect(alg.rest, BIT_STRING, "signatureValue is not a BIT STRING")?;
    if bits.contents.first() != Some(&0) {
        return Err(EncodingError::NotDer("signatureValue has unused bits"));
    }
    if !bits.rest.is_empty() {
        return Err(EncodingError::NotDer("extra fields after signatureValue"));
    }
    // tbsCertificate: [0] version (optional), serialNumber, signature, ...
    let mut inner = tbs.contents;
    if inner.first() == Some(&VERSION) {
        inner = tlv(inner)?.rest;
    }
    let serial = expect(inner, INTEGER, "serialNumber is not an INTEGER")?;
    let inner_alg = expect(serial.rest, SEQUENCE, "signature is not a SEQUENCE")?;
    if inner_alg.whole != alg.whole {
        return Err(EncodingError::AlgorithmMismatch);
    }
    Ok(CertParts {
        tbs: tbs.whole,
        signature_algorithm: alg.whole,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["d".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn a_der_certificate_splits_and_re_encodings_are_refused() {
        let der = cert();
        let parts = split_certificate(&der).unwrap();
        assert_eq!(parts.signed_id().len(), 64);
        // Trailing byte.
        let mut t = der.clone();
        t.push(0);
        assert!(split_certificate(&t).is_err());
        // The outer length in a longer form than needed.
        let body = tlv(&der).unwrap().contents;
        let mut long = vec![0x30, 0x84];
        long.extend_from_slice(&(body.len() as u32).to_be_bytes());
        long.extend_from_slice(body);
        assert_eq!(
            split_certificate(&long).unwrap_err(),
            EncodingError::NotDer("length with a leading zero")
        );
        // Truncated.
        assert!(split_certificate(&der[..der.len() - 1]).is_err());
        assert!(split_certificate(&[]).is_err());
    }
}
