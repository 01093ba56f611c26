//! The API's JSON shapes of the registry's records (what `openapi.rs`
//! documents): times as RFC 3339, statuses as their names, seconds to
//! expiry counted at the request. The registry returns records; only this
//! module decides how they look on the wire.

use std::collections::HashMap;

use certmq_pki::{rfc3339, DeviceStatus};
use certmq_registry::store::{CaRecord, CrlRecord, DeviceRecord};
use certmq_registry::{now_unix, ServerCert};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct CaDto {
    pub id: String,
    pub serial_number: String,
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    pub not_before: String,
    pub not_after: String,
    pub seconds_to_expiry: i64,
    pub status: &'static str,
    pub device_provisioning: &'static str,
    pub automatic_activation: bool,
    pub registered_at: String,
    pub last_activated_at: Option<String>,
    pub last_deactivated_at: Option<String>,
    pub verification_certificate: String,
    /// Where its CRL is fetched from, when set.
    pub crl_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_certificate_counts: Option<HashMap<&'static str, u64>>,
    /// Findings about the certificate (registration only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<certmq_pki::Finding>>,
}

impl CaDto {
    pub fn of(r: &CaRecord) -> Self {
        CaDto {
            id: r.id.clone(),
            serial_number: r.serial.clone(),
            subject_cn: r.subject_cn.clone(),
            issuer_cn: r.issuer_cn.clone(),
            not_before: rfc3339(r.not_before),
            not_after: rfc3339(r.not_after),
            seconds_to_expiry: r.not_after - now_unix(),
            status: r.status.as_str(),
            device_provisioning: r.provisioning.as_str(),
            automatic_activation: r.automatic_activation,
            registered_at: rfc3339(r.registered_at),
            last_activated_at: r.last_activated_at.map(rfc3339),
            last_deactivated_at: r.last_deactivated_at.map(rfc3339),
            verification_certificate: r.verification_pem.clone(),
            crl_url: r.crl_url.clone(),
            device_certificate_counts: None,
            warnings: None,
        }
    }

    /// With its device certificates counted by status.
    pub fn with_counts(r: &CaRecord, counts: &[(DeviceStatus, u64)]) -> Self {
        CaDto {
            device_certificate_counts: Some(counts.iter().map(|(s, n)| (s.as_str(), *n)).collect()),
            ..CaDto::of(r)
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DeviceDto {
    pub id: String,
    pub ca_id: String,
    pub serial_number: String,
    pub subject_cn: Option<String>,
    pub subject_ou: Option<String>,
    pub client_id: Option<String>,
    pub not_before: String,
    pub not_after: String,
    pub status: &'static str,
    pub source: &'static str,
    pub created_at: String,
    pub updated_at: String,
    pub last_connected_at: Option<String>,
    /// The intermediates between it and its CA, nearest first.
    pub intermediates: Vec<IntermediateDto>,
    /// Findings about the certificate (registration only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<certmq_pki::Finding>>,
}

#[derive(Debug, Serialize)]
pub struct IntermediateDto {
    pub subject_cn: Option<String>,
    pub serial_number: String,
    pub not_after: String,
}

impl DeviceDto {
    pub fn of(r: &DeviceRecord) -> Self {
        DeviceDto {
            id: r.id.clone(),
            ca_id: r.ca_id.clone(),
            serial_number: r.serial.clone(),
            subject_cn: r.subject_cn.clone(),
            subject_ou: r.subject_ou.clone(),
            client_id: r.client_id.clone(),
            not_before: rfc3339(r.not_before),
            not_after: rfc3339(r.not_after),
            status: r.status.as_str(),
            source: r.source.as_str(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            last_connected_at: r.last_connected_at.map(rfc3339),
            intermediates: intermediates(&r.chain_pem),
            warnings: None,
        }
    }
}

fn intermediates(chain_pem: &str) -> Vec<IntermediateDto> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    if chain_pem.is_empty() {
        return Vec::new();
    }
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|d| certmq_pki::subject_facts(&d))
        .map(|f| IntermediateDto {
            subject_cn: f.info.subject_cn,
            serial_number: f.info.serial,
            not_after: rfc3339(f.info.not_after),
        })
        .collect()
}

/// A CA's CRL as the API shows it (never the whole list).
#[derive(Debug, Serialize)]
pub struct CrlDto {
    pub ca_id: String,
    pub issuer_cn: Option<String>,
    pub this_update: String,
    pub next_update: Option<String>,
    /// Past its next update.
    pub stale: bool,
    pub revoked_count: u64,
    pub crl_number: Option<String>,
    /// `API` or the URL it was fetched from.
    pub source: String,
    pub updated_at: String,
}

impl CrlDto {
    pub fn of(r: &CrlRecord, issuer_cn: Option<String>) -> Self {
        CrlDto {
            ca_id: r.ca_id.clone(),
            issuer_cn,
            this_update: rfc3339(r.this_update),
            next_update: r.next_update.map(rfc3339),
            stale: r.next_update.is_some_and(|n| now_unix() >= n),
            revoked_count: r.revoked_count,
            crl_number: r.number.clone(),
            source: r.source.clone(),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

/// A server certificate as the API shows it (never the key).
#[derive(Debug, Serialize)]
pub struct ServerCertDto {
    pub id: String,
    pub name: Option<String>,
    pub is_default: bool,
    pub enabled: bool,
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    pub serial_number: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub seconds_to_expiry: i64,
    pub chain_length: usize,
    pub created_at: Option<String>,
    /// Findings about the certificate (bind only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<certmq_pki::Finding>>,
}

impl ServerCertDto {
    pub fn of(c: &ServerCert) -> Self {
        ServerCertDto {
            id: c.id.clone(),
            name: c.name.clone(),
            is_default: c.is_default,
            enabled: c.enabled,
            subject_cn: c.info.subject_cn.clone(),
            issuer_cn: c.info.issuer_cn.clone(),
            serial_number: c.info.serial.clone(),
            dns_names: c.info.dns_names.clone(),
            ip_addresses: c.info.ip_addresses.iter().map(|a| a.to_string()).collect(),
            not_before: rfc3339(c.info.not_before),
            not_after: rfc3339(c.info.not_after),
            seconds_to_expiry: c.info.not_after - now_unix(),
            chain_length: c.chain_length,
            created_at: c.created_at.map(rfc3339),
            warnings: None,
        }
    }
}
