//! The client-certificate verifier of the TLS and WSS listeners. It asks
//! for a client certificate and verifies it against the `ACTIVE` registered
//! CAs of the current registry snapshot (signature with the CA's key,
//! validity of both, through up to four intermediates the client sends,
//! and the CA's CRL). Written here rather than taken from rustls's WebPki
//! verifier, which refuses X.509 v1 certificates.
//!
//! A refusal carries its [`Rejection`] inside the rustls error
//! ([`rejection_of`] gets it back), so the listener can record it with the
//! peer's address.

use std::sync::Arc;

use arc_swap::ArcSwap;

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};
use x509_parser::prelude::*;

use crate::{RegistrySnapshot, Rejection};

/// The registry snapshot shared by the verifier and the CONNECT check.
pub type SharedRegistry = Arc<ArcSwap<RegistrySnapshot>>;

#[derive(Debug)]
pub struct RegistryVerifier {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
    registry: SharedRegistry,
}

impl RegistryVerifier {
    /// `mandatory`: `client_auth = required` (else `optional`).
    pub fn new(mandatory: bool, provider: Arc<CryptoProvider>, registry: SharedRegistry) -> Self {
        Self {
            mandatory,
            provider,
            registry,
        }
    }
}

/// A verifier refusal, carried inside `rustls::Error`: the reason, and
/// which certificate (its id, the SHA-256 of its DER) of which CA, when
/// known, so that the refusal is recorded with the certificate's identity.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reason: Rejection,
    pub certificate_id: Option<String>,
    pub ca_id: Option<String>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client certificate refused: {}", self.reason.as_str())
    }
}

impl std::error::Error for Refused {}

/// The registry's refusal inside a handshake error, if it is one.
pub fn rejection_of(e: &Error) -> Option<Refused> {
    match e {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<Refused>().cloned()
        }
        Error::NoCertificatesPresented => Some(Refused {
            reason: Rejection::NoCertificate,
            certificate_id: None,
            ca_id: None,
        }),
        _ => None,
    }
}

impl ClientCertVerifier for RegistryVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let now = now.as_secs() as i64;
        let intermediates: Vec<&[u8]> = intermediates.iter().map(|c| c.as_ref()).collect();
        match self
            .registry
            .load()
            .verify_handshake(end_entity, &intermediates, now)
        {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err((reason, ca_id)) => Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(Refused {
                    reason,
                    certificate_id: Some(crate::x509::fingerprint(end_entity)),
                    ca_id,
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_handshake_signature(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_handshake_signature(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let _ = &self.provider;
        SCHEMES.to_vec()
    }
}

const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::ED25519,
];

/// The client's CertificateVerify signature, checked with the key in its
/// certificate. Done here because rustls's helpers parse the certificate
/// with webpki, which refuses X.509 v1 certificates.
fn verify_handshake_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    tls13: bool,
) -> Result<HandshakeSignatureValid, Error> {
    let bad = || Error::InvalidCertificate(CertificateError::BadSignature);
    let (_, c) = X509Certificate::from_der(cert)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let spki = c.public_key();
    let curve = crate::x509::curve_of(spki);
    let is_rsa = spki.algorithm.algorithm.to_id_string() == crate::x509::RSA_KEY;
    let p256 = curve.as_deref() == Some(crate::x509::P256);
    let p384 = curve.as_deref() == Some(crate::x509::P384);
    use SignatureScheme as S;
    let alg: &'static dyn VerificationAlgorithm = match dss.scheme {
        S::RSA_PKCS1_SHA256 if is_rsa && !tls13 => &sig::RSA_PKCS1_2048_8192_SHA256,
        S::RSA_PKCS1_SHA384 if is_rsa && !tls13 => &sig::RSA_PKCS1_2048_8192_SHA384,
        S::RSA_PKCS1_SHA512 if is_rsa && !tls13 => &sig::RSA_PKCS1_2048_8192_SHA512,
        S::RSA_PSS_SHA256 if is_rsa => &sig::RSA_PSS_2048_8192_SHA256,
        S::RSA_PSS_SHA384 if is_rsa => &sig::RSA_PSS_2048_8192_SHA384,
        S::RSA_PSS_SHA512 if is_rsa => &sig::RSA_PSS_2048_8192_SHA512,
        S::ECDSA_NISTP256_SHA256 if p256 => &sig::ECDSA_P256_SHA256_ASN1,
        S::ECDSA_NISTP384_SHA384 if p384 => &sig::ECDSA_P384_SHA384_ASN1,
        // TLS 1.2 names the hash only; the curve comes from the key.
        S::ECDSA_NISTP256_SHA256 if p384 && !tls13 => &sig::ECDSA_P384_SHA256_ASN1,
        S::ECDSA_NISTP384_SHA384 if p256 && !tls13 => &sig::ECDSA_P256_SHA384_ASN1,
        S::ED25519 if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => &sig::ED25519,
        _ => {
            return Err(Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ))
        }
    };
    UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(message, dss.signature())
        .map_err(|_| bad())?;
    Ok(HandshakeSignatureValid::assertion())
}
