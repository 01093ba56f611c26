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
mod crl;
mod default_cert;
mod der;
mod encode;
mod findings;
mod registry;
mod server_cert;
mod sni;
mod x509;

pub use ca::{
    parse_ca, single_cert_der, spki_and_subject, verify_ca_registration, CaCert, CaError,
};
pub use client_verifier::{rejection_of, Refused, RegistryVerifier, SharedRegistry};
pub use crl::{parse_crl, verify_crl, Crl, CrlError, MAX_CRL_BYTES};
pub use default_cert::{mint_default, DefaultCert, MintError};
pub use der::{split_certificate, CertParts, EncodingError};
pub use encode::{pem_encode, pem_of_file, random_hex, FileKind};
pub use findings::{findings, Finding, Role, MAX_SERVER_VALIDITY_DAYS};
pub use registry::{
    check_client_purpose, signed_id_of, CaEntry, CaStatus, ChainFacts, Chained, ConnectAuthorizer,
    CrlEntry, Decision, DeviceEntry, DeviceStatus, Provisioning, RegistrySnapshot, Rejection,
    RevokedEntry, MAX_DEVICE_CHAIN,
};
pub use server_cert::{
    load_server_cert, validate_server_cert, ServerCert, ServerCertError, MAX_CHAIN_BYTES,
    MAX_CHAIN_LEN,
};
pub use sni::{SniResolver, SniSnapshot};
pub use x509::{
    fingerprint, hex_sha256, rfc3339, subject_facts, verify_signed_by, CertInfo, SignatureError,
    SubjectFacts,
};

/// The crypto provider every rustls config in certmq uses (passed
/// explicitly, never installed process-wide): aws-lc-rs, with the SHA-256
/// suites (AES-128-GCM) ahead of the SHA-384 ones. Servers use this order
/// (`ignore_client_order`): every TLS 1.3 handshake hashes its transcript
/// and derives its keys with the suite's hash, and SHA-384 cost about 9%
/// of a full mutual-TLS handshake in profiles.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        _ => 4,
    });
    std::sync::Arc::new(p)
}
