//! Registration findings (SPEC 14): what is accepted but worth an
//! operator's attention, returned as `warnings` next to the record a
//! registration or bind created. Refusals stay refusals; these never
//! block.

use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

/// One finding: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub message: String,
}

/// What the certificate is registered as.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    Ca,
    Device,
    /// A server certificate, with the host names the broker is configured
    /// to serve (`[tls] server_names`).
    Server {
        hosts: &'a [String],
    },
}

/// The CA/Browser Forum's longest validity for server certificates (days).
pub const MAX_SERVER_VALIDITY_DAYS: i64 = 825;

const SHA1_SIGNATURES: &[&str] = &[
    "1.2.840.113549.1.1.5", // sha1WithRSAEncryption
    "1.2.840.10045.4.1",    // ecdsa-with-SHA1
    "1.3.14.3.2.29",        // sha1WithRSASignature (old)
];
const MD5_SIGNATURES: &[&str] = &["1.2.840.113549.1.1.4", "1.2.840.113549.1.1.2"];

/// Findings about one certificate (DER); `label` names it in messages
/// ("the CA certificate", "intermediate 1").
pub fn findings(der: &[u8], role: Role<'_>, label: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return out;
    };
    if let Ok(PublicKey::RSA(rsa)) = cert.public_key().parsed() {
        let bits = rsa.key_size();
        if bits < 2048 {
            out.push(Finding {
                code: "WEAK_RSA_KEY",
                message: format!("{label} has a {bits}-bit RSA key; use 2048 bits or more"),
            });
        }
    }
    let sig = cert.signature_algorithm.algorithm.to_id_string();
    if SHA1_SIGNATURES.contains(&sig.as_str()) {
        out.push(Finding {
            code: "SHA1_SIGNATURE",
            message: format!(
                "{label} is signed with SHA-1, which is broken for signatures; reissue it with SHA-256"
            ),
        });
    } else if MD5_SIGNATURES.contains(&sig.as_str()) {
        out.push(Finding {
            code: "MD5_SIGNATURE",
            message: format!("{label} is signed with MD5; reissue it with SHA-256"),
        });
    }
    let v = cert.validity();
    let days = (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400;
    if let Role::Server { hosts } = role {
        if days > MAX_SERVER_VALIDITY_DAYS {
            out.push(Finding {
                code: "LONG_VALIDITY",
                message: format!(
                    "{label} is valid for {days} days; clients that follow the CA/Browser Forum \
                     rules refuse server certificates valid for more than {MAX_SERVER_VALIDITY_DAYS}"
                ),
            });
        }
        let names = crate::CertInfo::of(der, &cert).dns_names;
        let uncovered: Vec<&str> = hosts
            .iter()
            .map(String::as_str)
            .filter(|h| h.parse::<std::net::IpAddr>().is_err() && *h != "localhost")
            .filter(|h| !names.iter().any(|n| covers(n, h)))
            .collect();
        if !uncovered.is_empty() {
            out.push(Finding {
                code: "SAN_DOES_NOT_COVER_HOST",
                message: format!(
                    "{label}'s subject alternative names do not cover the configured host name(s) {}; \
                     clients that connect by those names get another certificate",
                    uncovered.join(", ")
                ),
            });
        }
    }
    out
}

/// Whether SAN DNS name `san` (maybe `*.x.y`) covers host `host`.
fn covers(san: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let san = san.trim_end_matches('.').to_ascii_lowercase();
    match san.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(_, p)| p == parent),
        None => san == host,
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("*.example.com", "mqtt.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("MQTT.example.com", "mqtt.example.com."));
    }
}
