//! The default server certificate: a local CA and a leaf it signs (ECDSA
//! P-256), so that clients can trust the CA file once and the leaf can be
//! reissued (new host names, expiry) without touching them.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// PEM texts of the default CA and server certificate.
#[derive(Debug, Clone)]
pub struct DefaultCert {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot mint the default server certificate: {0}")]
pub struct MintError(String);

fn err(e: impl std::fmt::Display) -> MintError {
    MintError(e.to_string())
}

const DAY: i64 = 86_400;

fn when(unix: i64) -> Result<time::OffsetDateTime, MintError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(err)
}

/// Mints the leaf for `hosts` (plus `localhost` and `127.0.0.1`), valid
/// from a day before `now` for 825 days, signed by the CA given (or by a
/// new CA, valid 20 years, when `ca` is None).
pub fn mint_default(
    hosts: &[String],
    ca: Option<(&str, &str)>,
    now: i64,
) -> Result<DefaultCert, MintError> {
    // The CA's parameters are always these, so an issuer for a stored CA
    // is rebuilt from its key: same subject, same key identifier.
    let ca_params = || -> Result<CertificateParams, MintError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.distinguished_name
            .push(DnType::CommonName, "certmq default server CA");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = when(now - DAY)?;
        p.not_after = when(now + 20 * 365 * DAY)?;
        Ok(p)
    };
    let (ca_cert_pem, ca_key) = match ca {
        Some((c, k)) => (c.to_string(), KeyPair::from_pem(k).map_err(err)?),
        None => {
            let key = KeyPair::generate().map_err(err)?;
            let cert = ca_params()?.self_signed(&key).map_err(err)?;
            (cert.pem(), key)
        }
    };
    let ca_key_pem = ca_key.serialize_pem();
    let ca_cert = ca_params()?.self_signed(&ca_key).map_err(err)?;

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(names).map_err(err)?;
    let cn = hosts.first().map(String::as_str).unwrap_or("localhost");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = when(now - DAY)?;
    p.not_after = when(now + 825 * DAY)?;
    let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
    Ok(DefaultCert {
        ca_cert_pem,
        ca_key_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
