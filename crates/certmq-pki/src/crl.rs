//! Certificate revocation lists (SPEC 14): parsed from PEM (`X509 CRL`,
//! as `openssl ca -gencrl` writes it) or DER, and checked against the CA
//! that issued them: the issuer name must be the CA's subject and the
//! signature must verify with the CA's key.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use x509_parser::prelude::*;

use crate::x509::{common_name, hex_serial, verify_signed, SignatureError};

/// The largest CRL certmq takes (a CRL listing about 100,000 serials).
pub const MAX_CRL_BYTES: usize = 4 * 1024 * 1024;

/// What certmq keeps of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    pub der: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub issuer_cn: Option<String>,
    /// Unix seconds.
    pub this_update: i64,
    pub next_update: Option<i64>,
    /// Revoked serial numbers, lower-case hex without separators (as the
    /// registry writes serials).
    pub serials: Vec<String>,
    /// The CRL number extension, lower-case hex.
    pub number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("the body is not a CRL (PEM \"X509 CRL\" or DER): {0}")]
    NotACrl(String),
    #[error("the CRL is larger than {MAX_CRL_BYTES} bytes")]
    TooLarge,
    #[error("the CRL's issuer is not this CA's subject")]
    WrongIssuer,
    #[error("the CRL's signature does not verify with this CA's key: {0}")]
    BadSignature(SignatureError),
}

impl CrlError {
    /// The stable error code of the API.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotACrl(_) => "InvalidCrl",
            Self::TooLarge => "CrlTooLarge",
            Self::WrongIssuer => "CrlWrongIssuer",
            Self::BadSignature(_) => "CrlBadSignature",
        }
    }
}

/// Reads a CRL from PEM or DER (nothing after it).
pub fn parse_crl(bytes: &[u8]) -> Result<Crl, CrlError> {
    if bytes.len() > MAX_CRL_BYTES {
        return Err(CrlError::TooLarge);
    }
    let der: Vec<u8> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(bytes)
            .map_err(|e| CrlError::NotACrl(format!("no X509 CRL block: {e}")))?
            .as_ref()
            .to_vec()
    } else {
        bytes.to_vec()
    };
    let (rest, crl) =
        CertificateRevocationList::from_der(&der).map_err(|e| CrlError::NotACrl(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CrlError::NotACrl("bytes after the CRL".into()));
    }
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| hex_serial(&r.raw_serial_as_string()))
        .collect();
    Ok(Crl {
        issuer_raw: crl.issuer().as_raw().to_vec(),
        issuer_cn: common_name(crl.issuer()),
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        serials,
        number: crl.crl_number().map(|n| format!("{n:x}")),
        der: der.clone(),
    })
}

/// Checks that `crl` was issued by the CA with subject `ca_subject_raw`
/// and key `ca_spki` (DER SubjectPublicKeyInfo).
pub fn verify_crl(crl: &Crl, ca_spki: &[u8], ca_subject_raw: &[u8]) -> Result<(), CrlError> {
    if crl.issuer_raw != ca_subject_raw {
        return Err(CrlError::WrongIssuer);
    }
    let (_, parsed) = CertificateRevocationList::from_der(&crl.der)
        .map_err(|e| CrlError::NotACrl(e.to_string()))?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(ca_spki)
        .map_err(|_| CrlError::BadSignature(SignatureError::UnsupportedKey))?;
    verify_signed(
        &spki,
        &parsed.signature_algorithm.algorithm.to_id_string(),
        parsed.tbs_cert_list.as_ref(),
        &parsed.signature_value.data,
    )
    .map_err(CrlError::BadSignature)
}
