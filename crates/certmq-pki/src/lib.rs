//! certmq's X.509 rules.
//!
//! What it does: parses certificates and keys as OpenSSL writes them,
//! validates server certificates against SPEC section 4 (each refusal its own
//! [`ServerCertError`]), verifies certificate signatures itself (RSA PKCS#1
//! and ECDSA with SHA-256/384/512, X.509 v1 and v3 alike) with aws-lc-rs,
//! selects server certificates by SNI from an immutable snapshot swapped
//! atomically ([`SniResolver`]), and mints the default server certificate.
//!
//! What it does not do: store anything (`certmq-store`), open sockets
//! (`certmq-net`), or read the clock: time comes in as a value.

#![forbid(unsafe_code)]

mod ca;
mod client_verifier;
mod default_cert;
mod encode;
mod registry;
mod server_cert;
mod sni;
mod x509;

pub use ca::{
    parse_ca, single_cert_der, spki_and_subject, verify_ca_registration, CaCert, CaError,
};
pub use client_verifier::{rejection_of, Refused, RegistryVerifier, SharedRegistry};
pub use default_cert::{mint_default, DefaultCert, MintError};
pub use encode::{pem_encode, random_hex};
pub use registry::{
    CaEntry, CaStatus, Chained, Decision, DeviceEntry, DeviceStatus, Provisioning,
    RegistrySnapshot, Rejection,
};
pub use server_cert::{
    load_server_cert, validate_server_cert, ServerCert, ServerCertError, MAX_CHAIN_BYTES,
    MAX_CHAIN_LEN,
};
pub use sni::{SniResolver, SniSnapshot};
pub use x509::{fingerprint, verify_signed_by, CertInfo, SignatureError};

/// The crypto provider every rustls config in certmq uses (passed
/// explicitly, never installed process-wide).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
