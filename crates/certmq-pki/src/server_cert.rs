//! Server-certificate validation (SPEC section 4): every refusal has its own
//! error, with a message that says what to fix.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::*;

use crate::x509::{common_name, verify_signed_by, CertInfo, EC_KEY, P256, P384, RSA_KEY};

/// Largest chain file accepted, bytes.
pub const MAX_CHAIN_BYTES: usize = 16 * 1024;
/// Most certificates in a chain.
pub const MAX_CHAIN_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerCertError {
    #[error("the certificate chain file is {0} bytes; at most 16 KiB (16384 bytes) is accepted")]
    ChainTooLarge(usize),
    #[error("the certificate chain is not PEM with at least one CERTIFICATE block ({0})")]
    InvalidChainPem(String),
    #[error(
        "the chain holds {0} certificates; at most 5 are accepted (leaf first, then intermediates)"
    )]
    ChainTooLong(usize),
    #[error("certificate {index} in the chain cannot be parsed as X.509: {reason}")]
    InvalidCertificate { index: usize, reason: String },
    #[error(
        "the leaf certificate lacks Extended Key Usage serverAuth (extendedKeyUsage = serverAuth)"
    )]
    MissingServerAuth,
    #[error("the leaf certificate lacks a Subject Alternative Name extension with the server's host names")]
    MissingSan,
    #[error("the leaf certificate's subject has no Common Name (CN)")]
    MissingCommonName,
    #[error("the leaf certificate is not valid before {}; check the clock or reissue it", crate::rfc3339(*.0))]
    NotYetValid(i64),
    #[error("the leaf certificate expired at {}; reissue it", crate::rfc3339(*.0))]
    Expired(i64),
    #[error("certificate {index} is not issued by certificate {next}: the chain must run leaf first, each certificate followed by its issuer")]
    ChainOutOfOrder { index: usize, next: usize },
    #[error(
        "certificate {index}'s signature does not verify with certificate {next}'s key: {reason}"
    )]
    ChainSignatureInvalid {
        index: usize,
        next: usize,
        reason: String,
    },
    #[error(
        "the private key is not PEM (PKCS#8 PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY): {0}"
    )]
    InvalidPrivateKey(String),
    #[error(
        "the private key is encrypted; give the key without a passphrase \
         (openssl pkey -in server.key -out server.plain.key)"
    )]
    EncryptedPrivateKey,
    #[error("unsupported key: {0}; RSA 2048-4096 bits or ECDSA P-256/P-384 are accepted")]
    UnsupportedKey(String),
    #[error("the private key does not match the leaf certificate's public key")]
    KeyMismatch,
}

impl ServerCertError {
    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ChainTooLarge(_) => "ChainTooLarge",
            Self::InvalidChainPem(_) => "InvalidCertificatePem",
            Self::ChainTooLong(_) => "ChainTooLong",
            Self::InvalidCertificate { .. } => "InvalidCertificate",
            Self::MissingServerAuth => "MissingServerAuthUsage",
            Self::MissingSan => "MissingSubjectAltName",
            Self::MissingCommonName => "MissingCommonName",
            Self::NotYetValid(_) => "CertificateNotYetValid",
            Self::Expired(_) => "CertificateExpired",
            Self::ChainOutOfOrder { .. } => "ChainOutOfOrder",
            Self::ChainSignatureInvalid { .. } => "ChainSignatureInvalid",
            Self::InvalidPrivateKey(_) => "InvalidPrivateKey",
            Self::EncryptedPrivateKey => "EncryptedPrivateKey",
            Self::UnsupportedKey(_) => "UnsupportedKey",
            Self::KeyMismatch => "KeyMismatch",
        }
    }
}

/// A validated server certificate with its key.
#[derive(Debug)]
pub struct ServerCert {
    pub info: CertInfo,
    pub chain: Vec<CertificateDer<'static>>,
    pub certified: Arc<CertifiedKey>,
}

/// Validates a chain (PEM, leaf first) and its private key (PEM as OpenSSL
/// writes it: PKCS#8, PKCS#1 `RSA PRIVATE KEY`, or SEC1 `EC PRIVATE KEY`
/// with or without the `EC PARAMETERS` block before it) at `now` (unix
/// seconds).
pub fn validate_server_cert(
    chain_pem: &[u8],
    key_pem: &[u8],
    now: i64,
) -> Result<ServerCert, ServerCertError> {
    check(chain_pem, key_pem, Some(now))
}

/// As [`validate_server_cert`] without the validity window: for loading a
/// certificate bound earlier, which stays listed (and served) after it
/// expires until the operator replaces it.
pub fn load_server_cert(chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerCert, ServerCertError> {
    check(chain_pem, key_pem, None)
}

fn check(
    chain_pem: &[u8],
    key_pem: &[u8],
    now: Option<i64>,
) -> Result<ServerCert, ServerCertError> {
    if chain_pem.len() > MAX_CHAIN_BYTES {
        return Err(ServerCertError::ChainTooLarge(chain_pem.len()));
    }
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerCertError::InvalidChainPem(e.to_string()))?;
    if chain.is_empty() {
        return Err(ServerCertError::InvalidChainPem(
            "no CERTIFICATE block found".into(),
        ));
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(ServerCertError::ChainTooLong(chain.len()));
    }
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(index, der)| {
            X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| {
                ServerCertError::InvalidCertificate {
                    index,
                    reason: e.to_string(),
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(leaf) = parsed.first() else {
        return Err(ServerCertError::InvalidChainPem("empty chain".into()));
    };
    // Order first: a chain with the CA first is out of order, not a leaf
    // that lacks serverAuth.
    for (index, pair) in parsed.windows(2).enumerate() {
        if let [cert, issuer] = pair {
            if cert.issuer().as_raw() != issuer.subject().as_raw() {
                return Err(ServerCertError::ChainOutOfOrder {
                    index,
                    next: index + 1,
                });
            }
        }
    }
    match leaf.extended_key_usage() {
        Ok(Some(eku)) if eku.value.server_auth || eku.value.any => {}
        _ => return Err(ServerCertError::MissingServerAuth),
    }
    match leaf.subject_alternative_name() {
        Ok(Some(san)) if !san.value.general_names.is_empty() => {}
        _ => return Err(ServerCertError::MissingSan),
    }
    if common_name(leaf.subject()).is_none() {
        return Err(ServerCertError::MissingCommonName);
    }
    let validity = leaf.validity();
    if let Some(now) = now {
        if now < validity.not_before.timestamp() {
            return Err(ServerCertError::NotYetValid(
                validity.not_before.timestamp(),
            ));
        }
        if now > validity.not_after.timestamp() {
            return Err(ServerCertError::Expired(validity.not_after.timestamp()));
        }
    }
    for (index, pair) in parsed.windows(2).enumerate() {
        let (cert, issuer) = match pair {
            [c, i] => (c, i),
            _ => continue,
        };
        verify_signed_by(cert, issuer).map_err(|e| ServerCertError::ChainSignatureInvalid {
            index,
            next: index + 1,
            reason: e.to_string(),
        })?;
    }
    check_key_type(leaf.public_key())?;
    if key_pem.windows(9).any(|w| w == b"ENCRYPTED") {
        // "ENCRYPTED PRIVATE KEY" (PKCS#8) or "Proc-Type: 4,ENCRYPTED".
        return Err(ServerCertError::EncryptedPrivateKey);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| ServerCertError::InvalidPrivateKey(e.to_string()))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| ServerCertError::UnsupportedKey(e.to_string()))?;
    let key_spki = signing
        .public_key()
        .ok_or_else(|| ServerCertError::UnsupportedKey("no public key".into()))?;
    let matches = SubjectPublicKeyInfo::from_der(&key_spki)
        .map(|(_, k)| k.subject_public_key.data == leaf.public_key().subject_public_key.data)
        .unwrap_or(false);
    if !matches {
        return Err(ServerCertError::KeyMismatch);
    }
    let info = CertInfo::of(chain.first().map_or(&[][..], |c| c.as_ref()), leaf);
    let certified = Arc::new(CertifiedKey::new(chain.clone(), signing));
    Ok(ServerCert {
        info,
        chain,
        certified,
    })
}

fn check_key_type(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), ServerCertError> {
    match spki.algorithm.algorithm.to_id_string().as_str() {
        RSA_KEY => {
            let bits = match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(k)) => k.key_size(),
                _ => 0,
            };
            if (2048..=4096).contains(&bits) {
                Ok(())
            } else {
                Err(ServerCertError::UnsupportedKey(format!("RSA {bits} bits")))
            }
        }
        EC_KEY => {
            let curve = crate::x509::curve_of(spki);
            match curve.as_deref() {
                Some(P256 | P384) => Ok(()),
                other => Err(ServerCertError::UnsupportedKey(format!(
                    "elliptic curve {}",
                    other.unwrap_or("unknown")
                ))),
            }
        }
        other => Err(ServerCertError::UnsupportedKey(format!("key type {other}"))),
    }
}
