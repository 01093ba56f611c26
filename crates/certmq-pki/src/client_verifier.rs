//! The client-certificate verifier of the TLS and WSS listeners. It asks
//! for a client certificate and verifies it against the `ACTIVE` registered
//! CAs of the current registry snapshot (signature with the CA's key,
//! validity of both). Written here rather than taken from rustls's WebPki
//! verifier, which refuses X.509 v1 certificates. Device certificates are
//! issued directly by a registered CA; intermediates are not followed.
//!
//! A refusal carries its [`Rejection`] inside the rustls error
//! ([`rejection_of`] gets it back), so the listener can record it with the
//! peer's address.

use std::sync::Arc;

use arc_swap::ArcSwap;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};

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

/// A verifier refusal, carried inside `rustls::Error`.
#[derive(Debug)]
pub struct Refused(pub Rejection);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client certificate refused: {}", self.0.as_str())
    }
}

impl std::error::Error for Refused {}

/// The registry's reason inside a handshake error, if it is one.
pub fn rejection_of(e: &Error) -> Option<Rejection> {
    match e {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<Refused>().map(|r| r.0)
        }
        Error::NoCertificatesPresented => Some(Rejection::NoCertificate),
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
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let now = now.as_secs() as i64;
        match self.registry.load().verify_handshake(end_entity, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(r) => Err(Error::InvalidCertificate(CertificateError::Other(OtherError(
                Arc::new(Refused(r)),
            )))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
