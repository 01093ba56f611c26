//! CA registration with proof of possession (SPEC section 5): the CA
//! certificate is a CA and within its validity, the verification
//! certificate's CN is the current registration code, and its signature
//! verifies with the CA's public key (its issuer being the CA's subject).
//! Works for the seed's X.509 v1 verification certificate (`openssl x509
//! -req` without `-extfile`) and `-sha512` signatures.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::*;

use crate::x509::{common_name, verify_signed_by, CertInfo};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("the CA certificate is not one PEM CERTIFICATE block that parses as X.509: {0}")]
    InvalidCaCertificate(String),
    #[error(
        "the verification certificate is not one PEM CERTIFICATE block that parses as X.509: {0}"
    )]
    InvalidVerificationCertificate(String),
    #[error("the certificate is not a CA: it lacks basicConstraints CA:TRUE (make it with -extensions v3_ca)")]
    NotACa,
    #[error("the CA certificate is not valid before {}", crate::rfc3339(*.0))]
    CaNotYetValid(i64),
    #[error("the CA certificate expired at {}", crate::rfc3339(*.0))]
    CaExpired(i64),
    #[error("no registration code is active; request one first (certmq ca registration-code)")]
    NoRegistrationCode,
    #[error(
        "the registration code expired; request a new one and reissue the verification certificate"
    )]
    RegistrationCodeExpired,
    #[error("the verification certificate's CN is not the current registration code (a new code replaces the old one)")]
    RegistrationCodeMismatch,
    #[error("the verification certificate's issuer is not the CA certificate's subject")]
    VerificationIssuerMismatch,
    #[error("the verification certificate is not signed by the CA's key: {0}")]
    VerificationSignatureInvalid(String),
}

impl CaError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidCaCertificate(_) => "InvalidCaCertificate",
            Self::InvalidVerificationCertificate(_) => "InvalidVerificationCertificate",
            Self::NotACa => "NotACaCertificate",
            Self::CaNotYetValid(_) => "CaCertificateNotYetValid",
            Self::CaExpired(_) => "CaCertificateExpired",
            Self::NoRegistrationCode => "NoRegistrationCode",
            Self::RegistrationCodeExpired => "RegistrationCodeExpired",
            Self::RegistrationCodeMismatch => "RegistrationCodeMismatch",
            Self::VerificationIssuerMismatch => "VerificationIssuerMismatch",
            Self::VerificationSignatureInvalid(_) => "VerificationSignatureInvalid",
        }
    }
}

/// One PEM certificate, as DER.
pub fn single_cert_der(pem: &[u8]) -> Result<CertificateDer<'static>, String> {
    let mut certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    match certs.len() {
        0 => Err("no CERTIFICATE block found".into()),
        1 => certs.pop().ok_or_else(|| "no certificate".into()),
        n => Err(format!("{n} certificates found; give exactly one")),
    }
}

/// What a registered CA records of its certificate.
#[derive(Debug, Clone)]
pub struct CaCert {
    pub info: CertInfo,
    pub der: CertificateDer<'static>,
    /// DER of the subject name, which device certificates carry as issuer.
    pub subject_raw: Vec<u8>,
}

/// Checks a CA certificate alone (used at registration and for detail views).
pub fn parse_ca(ca_pem: &[u8], now: i64) -> Result<CaCert, CaError> {
    let der = single_cert_der(ca_pem).map_err(CaError::InvalidCaCertificate)?;
    let (_, ca) = X509Certificate::from_der(&der)
        .map_err(|e| CaError::InvalidCaCertificate(e.to_string()))?;
    match ca.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        _ => return Err(CaError::NotACa),
    }
    let v = ca.validity();
    if now < v.not_before.timestamp() {
        return Err(CaError::CaNotYetValid(v.not_before.timestamp()));
    }
    if now > v.not_after.timestamp() {
        return Err(CaError::CaExpired(v.not_after.timestamp()));
    }
    let info = CertInfo::of(&der, &ca);
    let subject_raw = ca.subject().as_raw().to_vec();
    Ok(CaCert {
        info,
        der: der.clone(),
        subject_raw,
    })
}

/// The whole registration check. `code` is the current registration code
/// (None if none was issued), with its expiry (unix seconds).
pub fn verify_ca_registration(
    ca_pem: &[u8],
    verification_pem: &[u8],
    code: Option<(&str, i64)>,
    now: i64,
) -> Result<CaCert, CaError> {
    let ca = parse_ca(ca_pem, now)?;
    let vder =
        single_cert_der(verification_pem).map_err(CaError::InvalidVerificationCertificate)?;
    let (_, ver) = X509Certificate::from_der(&vder)
        .map_err(|e| CaError::InvalidVerificationCertificate(e.to_string()))?;
    let (code, expires) = code.ok_or(CaError::NoRegistrationCode)?;
    if now > expires {
        return Err(CaError::RegistrationCodeExpired);
    }
    if common_name(ver.subject()).as_deref() != Some(code) {
        return Err(CaError::RegistrationCodeMismatch);
    }
    let (_, ca_x) = X509Certificate::from_der(&ca.der)
        .map_err(|e| CaError::InvalidCaCertificate(e.to_string()))?;
    if ver.issuer().as_raw() != ca_x.subject().as_raw() {
        return Err(CaError::VerificationIssuerMismatch);
    }
    verify_signed_by(&ver, &ca_x)
        .map_err(|e| CaError::VerificationSignatureInvalid(e.to_string()))?;
    Ok(ca)
}

/// A certificate's SubjectPublicKeyInfo DER and subject name DER.
pub fn spki_and_subject(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some((c.public_key().raw.to_vec(), c.subject().as_raw().to_vec()))
}
