//! The device registry as the connect path sees it: an immutable snapshot
//! of the registered CAs and device certificates, swapped atomically on
//! every change. The TLS verifier checks chains against it; at CONNECT
//! (every time, TLS resumption included) [`RegistrySnapshot::authorize`]
//! decides from it. Nothing here touches storage.

use std::collections::HashMap;
use std::sync::Arc;

use x509_parser::prelude::*;

use crate::x509::{common_name, fingerprint, verify_with_spki};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaStatus {
    Active,
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceStatus {
    Active,
    Inactive,
    Revoked,
    PendingActivation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provisioning {
    /// Only device certificates registered through the API may connect.
    Api,
    /// A certificate that chains to the CA is registered on first connection.
    Jitp,
}

macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }
    };
}
names!(CaStatus { Active => "ACTIVE", Inactive => "INACTIVE" });
names!(DeviceStatus { Active => "ACTIVE", Inactive => "INACTIVE", Revoked => "REVOKED", PendingActivation => "PENDING_ACTIVATION" });
names!(Provisioning { Api => "API", Jitp => "JITP" });

/// A registered CA, as the connect path needs it.
#[derive(Debug, Clone)]
pub struct CaEntry {
    pub id: String,
    pub status: CaStatus,
    pub provisioning: Provisioning,
    pub automatic_activation: bool,
    /// DER of the CA's SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    pub subject_raw: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone)]
pub struct DeviceEntry {
    pub ca_id: String,
    pub status: DeviceStatus,
    pub client_id: Option<String>,
    pub subject_cn: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
}

/// Why a handshake or CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    NoCertificate,
    BadCertificate,
    UnknownCa,
    CaInactive,
    CaExpired,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CertificateInactive,
    CertificatePending,
    /// `API` provisioning and the certificate was never registered.
    CertificateNotRegistered,
    ClientIdMismatch,
}

names!(Rejection {
    NoCertificate => "NO_CERTIFICATE",
    BadCertificate => "BAD_CERTIFICATE",
    UnknownCa => "UNKNOWN_CA",
    CaInactive => "CA_INACTIVE",
    CaExpired => "CA_EXPIRED",
    CertificateExpired => "CERTIFICATE_EXPIRED",
    CertificateNotYetValid => "CERTIFICATE_NOT_YET_VALID",
    CertificateRevoked => "CERTIFICATE_REVOKED",
    CertificateInactive => "CERTIFICATE_INACTIVE",
    CertificatePending => "CERTIFICATE_PENDING_ACTIVATION",
    CertificateNotRegistered => "CERTIFICATE_NOT_REGISTERED",
    ClientIdMismatch => "CLIENT_ID_MISMATCH",
});

/// A device certificate that chains to a registered CA, with what the
/// registry records of it.
#[derive(Debug, Clone)]
pub struct Chained {
    pub device_id: String,
    pub ca_id: String,
    pub serial: String,
    pub subject_cn: Option<String>,
    pub subject_ou: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
}

/// What CONNECT does with a certificate.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow {
        device_id: String,
        ca_id: String,
    },
    /// First connection under a JITP CA: register it (`ACTIVE` and allow
    /// when `activate`, else `PENDING_ACTIVATION` and refuse).
    Provision {
        chained: Chained,
        activate: bool,
    },
    Reject {
        reason: Rejection,
        device_id: Option<String>,
        ca_id: Option<String>,
    },
}

#[derive(Debug, Default, Clone)]
pub struct RegistrySnapshot {
    cas: Arc<HashMap<String, Arc<CaEntry>>>,
    /// CA ids by subject DER (a rogue CA may share a subject; the
    /// signature decides).
    by_subject: Arc<HashMap<Vec<u8>, Vec<String>>>,
    /// Sharded by the id's first byte, so that a change copies one shard:
    /// provisioning many devices one by one stays linear overall.
    devices: Arc<Vec<Arc<HashMap<String, DeviceEntry>>>>,
    /// Policy: the client id must equal the certificate's CN.
    pub client_id_is_cn: bool,
}

const SHARDS: usize = 256;

/// Ids are lower-case hex fingerprints: their first byte spreads evenly.
fn shard_of(id: &str) -> usize {
    id.get(..2)
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .unwrap_or(0)
        % SHARDS
}

fn reject(reason: Rejection) -> Decision {
    Decision::Reject {
        reason,
        device_id: None,
        ca_id: None,
    }
}

impl RegistrySnapshot {
    pub fn new(
        cas: Vec<CaEntry>,
        devices: HashMap<String, DeviceEntry>,
        client_id_is_cn: bool,
    ) -> Self {
        let mut by_subject: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
        let mut map = HashMap::new();
        for ca in cas {
            by_subject
                .entry(ca.subject_raw.clone())
                .or_default()
                .push(ca.id.clone());
            map.insert(ca.id.clone(), Arc::new(ca));
        }
        let mut shards: Vec<HashMap<String, DeviceEntry>> = vec![HashMap::new(); SHARDS];
        for (id, d) in devices {
            if let Some(s) = shards.get_mut(shard_of(&id)) {
                s.insert(id, d);
            }
        }
        Self {
            cas: Arc::new(map),
            by_subject: Arc::new(by_subject),
            devices: Arc::new(shards.into_iter().map(Arc::new).collect()),
            client_id_is_cn,
        }
    }

    fn device_map(&self, id: &str) -> Option<&HashMap<String, DeviceEntry>> {
        self.devices.get(shard_of(id)).map(|m| &**m)
    }

    /// A copy with one device changed (None removes it); CAs are shared.
    pub fn with_device(&self, id: &str, entry: Option<DeviceEntry>) -> Self {
        let mut shards: Vec<Arc<HashMap<String, DeviceEntry>>> = self.devices.to_vec();
        if let Some(shard) = shards.get_mut(shard_of(id)) {
            let map = Arc::make_mut(shard);
            match entry {
                Some(e) => map.insert(id.to_string(), e),
                None => map.remove(id),
            };
        }
        Self {
            devices: Arc::new(shards),
            ..self.clone()
        }
    }

    pub fn ca(&self, id: &str) -> Option<&Arc<CaEntry>> {
        self.cas.get(id)
    }

    pub fn device(&self, id: &str) -> Option<&DeviceEntry> {
        self.device_map(id)?.get(id)
    }

    pub fn device_count(&self) -> usize {
        self.devices.iter().map(|m| m.len()).sum()
    }

    pub fn count_by_status(&self) -> Vec<(&'static str, usize)> {
        let mut counts: HashMap<DeviceStatus, usize> = HashMap::new();
        for d in self.devices.iter().flat_map(|m| m.values()) {
            *counts.entry(d.status).or_default() += 1;
        }
        [
            DeviceStatus::Active,
            DeviceStatus::Inactive,
            DeviceStatus::Revoked,
            DeviceStatus::PendingActivation,
        ]
        .into_iter()
        .map(|s| (s.as_str(), counts.get(&s).copied().unwrap_or(0)))
        .collect()
    }

    /// Which registered CA signed `leaf` (any state), with the leaf's and
    /// the CA's validity checked at `now`.
    pub fn chain(&self, leaf: &[u8], now: i64) -> Result<(Chained, Arc<CaEntry>), Rejection> {
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| Rejection::BadCertificate)?;
        let candidates = self
            .by_subject
            .get(cert.issuer().as_raw())
            .ok_or(Rejection::UnknownCa)?;
        let ca = candidates
            .iter()
            .filter_map(|id| self.cas.get(id))
            .find(|ca| {
                SubjectPublicKeyInfo::from_der(&ca.spki)
                    .ok()
                    .is_some_and(|(_, spki)| verify_with_spki(&cert, &spki).is_ok())
            })
            .ok_or(Rejection::UnknownCa)?;
        if now > ca.not_after || now < ca.not_before {
            return Err(Rejection::CaExpired);
        }
        let v = cert.validity();
        if now > v.not_after.timestamp() {
            return Err(Rejection::CertificateExpired);
        }
        if now < v.not_before.timestamp() {
            return Err(Rejection::CertificateNotYetValid);
        }
        let ou = cert
            .subject()
            .iter_organizational_unit()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        Ok((
            Chained {
                device_id: fingerprint(leaf),
                ca_id: ca.id.clone(),
                serial: cert
                    .raw_serial_as_string()
                    .replace(':', "")
                    .to_ascii_lowercase(),
                subject_cn: common_name(cert.subject()),
                subject_ou: ou,
                not_before: v.not_before.timestamp(),
                not_after: v.not_after.timestamp(),
            },
            ca.clone(),
        ))
    }

    /// The TLS handshake's check: chains to an `ACTIVE` registered CA.
    /// A certificate the registry already holds was chain-verified when it
    /// was registered (by the API or JITP), and its record names its CA and
    /// validity: only those are checked, without a signature verification.
    pub fn verify_handshake(&self, leaf: &[u8], now: i64) -> Result<(), Rejection> {
        if let Some(d) = self.device(&fingerprint(leaf)) {
            let ca = self.cas.get(&d.ca_id).ok_or(Rejection::UnknownCa)?;
            if ca.status != CaStatus::Active {
                return Err(Rejection::CaInactive);
            }
            if now > ca.not_after || now < ca.not_before {
                return Err(Rejection::CaExpired);
            }
            if now > d.not_after {
                return Err(Rejection::CertificateExpired);
            }
            if now < d.not_before {
                return Err(Rejection::CertificateNotYetValid);
            }
            return Ok(());
        }
        let (_, ca) = self.chain(leaf, now)?;
        if ca.status != CaStatus::Active {
            return Err(Rejection::CaInactive);
        }
        Ok(())
    }

    /// CONNECT's decision for a client that presented `leaf` and asks for
    /// `client_id`. Registered devices are decided from the registry alone
    /// (their chain was verified when they were registered); unknown ones
    /// are chained and provisioned per their CA's settings.
    pub fn authorize(&self, leaf: &[u8], client_id: &str, now: i64) -> Decision {
        let id = fingerprint(leaf);
        if let Some(d) = self.device(&id) {
            let with = |reason| Decision::Reject {
                reason,
                device_id: Some(id.clone()),
                ca_id: Some(d.ca_id.clone()),
            };
            let Some(ca) = self.cas.get(&d.ca_id) else {
                return with(Rejection::UnknownCa);
            };
            if ca.status != CaStatus::Active {
                return with(Rejection::CaInactive);
            }
            if now > ca.not_after {
                return with(Rejection::CaExpired);
            }
            match d.status {
                DeviceStatus::Active => {}
                DeviceStatus::Inactive => return with(Rejection::CertificateInactive),
                DeviceStatus::Revoked => return with(Rejection::CertificateRevoked),
                DeviceStatus::PendingActivation => return with(Rejection::CertificatePending),
            }
            if now > d.not_after {
                return with(Rejection::CertificateExpired);
            }
            if now < d.not_before {
                return with(Rejection::CertificateNotYetValid);
            }
            if d.client_id.as_deref().is_some_and(|c| c != client_id)
                || (self.client_id_is_cn && d.subject_cn.as_deref() != Some(client_id))
            {
                return with(Rejection::ClientIdMismatch);
            }
            return Decision::Allow {
                device_id: id,
                ca_id: d.ca_id.clone(),
            };
        }
        let (chained, ca) = match self.chain(leaf, now) {
            Ok(c) => c,
            Err(r) => return reject(r),
        };
        let with = |reason| Decision::Reject {
            reason,
            device_id: Some(chained.device_id.clone()),
            ca_id: Some(chained.ca_id.clone()),
        };
        if ca.status != CaStatus::Active {
            return with(Rejection::CaInactive);
        }
        if ca.provisioning == Provisioning::Api {
            return with(Rejection::CertificateNotRegistered);
        }
        if self.client_id_is_cn && chained.subject_cn.as_deref() != Some(client_id) {
            return with(Rejection::ClientIdMismatch);
        }
        Decision::Provision {
            activate: ca.automatic_activation,
            chained,
        }
    }
}
