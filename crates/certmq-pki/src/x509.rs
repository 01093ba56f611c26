//! Certificate parsing and signature checks shared by every rule.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::*;

/// The SHA-256 fingerprint of a DER certificate, lower-case hex: certmq's
/// certificate id.
pub fn fingerprint(der: &[u8]) -> String {
    hex_sha256(der)
}

/// Unix seconds as RFC 3339 UTC (`2026-12-02T21:45:46Z`), the format of
/// every time certmq shows (SPEC 9).
pub fn rfc3339(unix: i64) -> String {
    ::time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn hex_sha256(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// A serial number as certmq writes it: lower-case hex without
/// separators (x509-parser's `raw_serial_as_string` has `aa:bb:...`).
pub(crate) fn hex_serial(raw: &str) -> String {
    raw.replace(':', "").to_ascii_lowercase()
}

/// What the registry records of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub id: String,
    pub serial: String,
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
}

impl CertInfo {
    pub fn of(der: &[u8], cert: &X509Certificate<'_>) -> Self {
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => dns_names.push(n.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            ip_addresses.push(a.into());
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            ip_addresses.push(a.into());
                        }
                    }
                    _ => {}
                }
            }
        }
        Self {
            id: fingerprint(der),
            serial: hex_serial(&cert.raw_serial_as_string()),
            subject_cn: common_name(cert.subject()),
            issuer_cn: common_name(cert.issuer()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            dns_names,
            ip_addresses,
        }
    }
}

/// The named curve of an EC key (dotted OID), if it is one.
pub(crate) fn curve_of(spki: &SubjectPublicKeyInfo<'_>) -> Option<String> {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string())
}

pub(crate) fn common_name(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature algorithm {0} is not supported (RSA PKCS#1 or ECDSA with SHA-256/384/512)")]
    UnsupportedAlgorithm(String),
    #[error("the issuer's key type is not supported (RSA 2048-8192 bits, ECDSA P-256 or P-384)")]
    UnsupportedKey,
    #[error("the signature does not verify with the issuer's public key")]
    BadSignature,
}

/// Checks that `cert` was signed by the key in `issuer`. Works for X.509
/// v1 certificates too (no extensions are consulted).
pub fn verify_signed_by(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), SignatureError> {
    verify_with_spki(cert, issuer.public_key())
}

pub(crate) fn verify_with_spki(
    cert: &X509Certificate<'_>,
    spki: &SubjectPublicKeyInfo<'_>,
) -> Result<(), SignatureError> {
    verify_signed(
        spki,
        &cert.signature_algorithm.algorithm.to_id_string(),
        cert.tbs_certificate.as_ref(),
        &cert.signature_value.data,
    )
}

/// Checks that `signature` over `signed` (a certificate's or CRL's
/// to-be-signed bytes) was made with the key in `spki`, by the algorithm
/// of dotted OID `sig_oid`.
pub(crate) fn verify_signed(
    spki: &SubjectPublicKeyInfo<'_>,
    sig_oid: &str,
    signed: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    let key_oid = spki.algorithm.algorithm.to_id_string();
    let curve = curve_of(spki);
    let alg: &'static dyn VerificationAlgorithm = match (key_oid.as_str(), sig_oid) {
        (RSA_KEY, "1.2.840.113549.1.1.11") => &signature::RSA_PKCS1_2048_8192_SHA256,
        (RSA_KEY, "1.2.840.113549.1.1.12") => &signature::RSA_PKCS1_2048_8192_SHA384,
        (RSA_KEY, "1.2.840.113549.1.1.13") => &signature::RSA_PKCS1_2048_8192_SHA512,
        (EC_KEY, s) => match (curve.as_deref(), s) {
            (Some(P256), "1.2.840.10045.4.3.2") => &signature::ECDSA_P256_SHA256_ASN1,
            (Some(P256), "1.2.840.10045.4.3.3") => &signature::ECDSA_P256_SHA384_ASN1,
            (Some(P256), "1.2.840.10045.4.3.4") => &signature::ECDSA_P256_SHA512_ASN1,
            (Some(P384), "1.2.840.10045.4.3.2") => &signature::ECDSA_P384_SHA256_ASN1,
            (Some(P384), "1.2.840.10045.4.3.3") => &signature::ECDSA_P384_SHA384_ASN1,
            (Some(P384), "1.2.840.10045.4.3.4") => &signature::ECDSA_P384_SHA512_ASN1,
            (Some(P256 | P384), other) => {
                return Err(SignatureError::UnsupportedAlgorithm(other.to_string()))
            }
            _ => return Err(SignatureError::UnsupportedKey),
        },
        (RSA_KEY, other) => return Err(SignatureError::UnsupportedAlgorithm(other.to_string())),
        _ => return Err(SignatureError::UnsupportedKey),
    };
    UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(signed, signature)
        .map_err(|_| SignatureError::BadSignature)
}

pub(crate) const RSA_KEY: &str = "1.2.840.113549.1.1.1";
pub(crate) const EC_KEY: &str = "1.2.840.10045.2.1";
pub(crate) const P256: &str = "1.2.840.10045.3.1.7";
pub(crate) const P384: &str = "1.3.132.0.34";

/// What authorization policies may say of a client certificate
/// (`${cert.cn}`, `${cert.ou}`, `${cert.serial}`, `${cert.san.dns}`,
/// `${cert.fingerprint}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectFacts {
    pub info: CertInfo,
    pub subject_ou: Option<String>,
}

/// [`SubjectFacts`] of a DER certificate; None when it does not parse.
pub fn subject_facts(der: &[u8]) -> Option<SubjectFacts> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject_ou = cert
        .subject()
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    Some(SubjectFacts {
        info: CertInfo::of(der, &cert),
        subject_ou,
    })
}
