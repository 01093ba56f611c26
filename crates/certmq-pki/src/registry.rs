//! The device registry as the connect path sees it: an immutable snapshot
//! of the registered CAs and device certificates, swapped atomically on
//! every change. The TLS verifier checks chains against it; at CONNECT
//! (every time, TLS resumption included) [`RegistrySnapshot::authorize`]
//! decides from it. Nothing here touches storage.
//!
//! Identity: a device certificate is keyed by what its CA signed (the
//! SHA-256 of its `tbsCertificate`, its "signed id"), so every encoding of
//! one signed certificate is the same device, and by (CA, serial), so a CA
//! never gets a second record for a serial it already has. Revocations are
//! kept apart from device records, by signed id and by (CA key, serial):
//! deleting a record, or deleting and re-registering its CA, never lets a
//! revoked certificate in again.
//!
//! Validity: a device certificate is refused from its `not_after` second
//! on, the second at which a live connection that used it is closed, so
//! the two agree.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use x509_parser::prelude::*;

use crate::der::split_certificate;
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
    /// SHA-256 of the CA's SubjectPublicKeyInfo, lower-case hex: the CA's
    /// identity for revocations (the same across re-registration and any
    /// re-encoding of the CA certificate).
    pub key_id: String,
}

#[derive(Debug, Clone)]
pub struct DeviceEntry {
    /// The certificate id (SHA-256 of the DER that was registered).
    pub id: String,
    pub ca_id: String,
    pub serial: String,
    pub status: DeviceStatus,
    pub client_id: Option<String>,
    pub subject_cn: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// The intermediates between it and its CA, when it has any.
    pub chain: Option<Arc<ChainFacts>>,
}

/// What the connect path keeps of a device's intermediates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFacts {
    /// The serial of the intermediate the registered CA signed: the CA's
    /// CRL speaks of it.
    pub top_serial: String,
    /// The latest not-before and earliest not-after of the intermediates.
    pub not_before: i64,
    pub not_after: i64,
}

impl ChainFacts {
    /// The intermediates' validity at `now`.
    pub fn check(&self, now: i64) -> Result<(), Rejection> {
        if now >= self.not_after {
            return Err(Rejection::IntermediateExpired);
        }
        if now < self.not_before {
            return Err(Rejection::IntermediateNotYetValid);
        }
        Ok(())
    }

    /// The facts of intermediates (DER, nearest the device first), when
    /// they parse.
    pub fn of(intermediates: &[Vec<u8>]) -> Option<Self> {
        let mut facts: Option<Self> = None;
        for der in intermediates {
            let (_, c) = X509Certificate::from_der(der).ok()?;
            let v = c.validity();
            let (nb, na) = (v.not_before.timestamp(), v.not_after.timestamp());
            let serial = hex_serial(&c);
            facts = Some(match facts {
                None => Self {
                    top_serial: serial,
                    not_before: nb,
                    not_after: na,
                },
                Some(f) => Self {
                    top_serial: serial,
                    not_before: f.not_before.max(nb),
                    not_after: f.not_after.min(na),
                },
            });
        }
        facts
    }
}

fn hex_serial(c: &X509Certificate<'_>) -> String {
    crate::x509::hex_serial(&c.raw_serial_as_string())
}

/// A CA's current CRL, as the connect path needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrlEntry {
    pub serials: HashSet<String>,
    pub this_update: i64,
    pub next_update: Option<i64>,
}

impl CrlEntry {
    /// Past its next update at `now`.
    pub fn is_stale(&self, now: i64) -> bool {
        self.next_update.is_some_and(|n| now >= n)
    }
}

/// Certificates a device may send: itself and up to four intermediates.
pub const MAX_DEVICE_CHAIN: usize = 5;

/// A revoked certificate, remembered for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// SHA-256 of the certificate's `tbsCertificate`.
    pub signed_id: String,
    /// The issuing CA's key id ([`CaEntry::key_id`]).
    pub issuer_key: String,
    pub serial: String,
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
    /// The certificate is not fit for client authentication (SPEC 6).
    CertificatePurpose,
    /// Not DER, or the outer signature algorithm differs from the signed one.
    CertificateEncoding,
    /// The CA already has a device certificate with this serial.
    CertificateSerialInUse,
    /// A live or persisted session with this client id belongs to another
    /// identity (certificate, user or anonymous).
    ClientIdInUseByAnotherIdentity,
    /// The CA's CRL lists the certificate (or the intermediate it came
    /// through).
    CertificateRevokedByCrl,
    /// The CA's CRL is past its next update and `[crl] stale` is
    /// `fail-closed`.
    CrlStale,
    /// An intermediate is not a CA, may not sign certificates, or its path
    /// length constraint is exceeded.
    IntermediateInvalid,
    IntermediateExpired,
    IntermediateNotYetValid,
    /// More than [`MAX_DEVICE_CHAIN`] certificates.
    ChainTooLong,
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
    CertificatePurpose => "CERTIFICATE_PURPOSE",
    CertificateEncoding => "CERTIFICATE_ENCODING",
    CertificateSerialInUse => "CERTIFICATE_SERIAL_IN_USE",
    ClientIdInUseByAnotherIdentity => "CLIENT_ID_IN_USE_BY_ANOTHER_IDENTITY",
    CertificateRevokedByCrl => "CERTIFICATE_REVOKED_BY_CRL",
    CrlStale => "CRL_STALE",
    IntermediateInvalid => "INTERMEDIATE_INVALID",
    IntermediateExpired => "INTERMEDIATE_EXPIRED",
    IntermediateNotYetValid => "INTERMEDIATE_NOT_YET_VALID",
    ChainTooLong => "CHAIN_TOO_LONG",
});

/// A device certificate that chains to a registered CA, with what the
/// registry records of it.
#[derive(Debug, Clone)]
pub struct Chained {
    pub device_id: String,
    /// SHA-256 of the `tbsCertificate` (the registry's key).
    pub signed_id: String,
    pub ca_id: String,
    /// The CA's key id, for the revocation list.
    pub issuer_key: String,
    pub serial: String,
    pub subject_cn: Option<String>,
    pub subject_ou: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// The intermediates it chained through (DER, nearest the device
    /// first); empty when its CA signed it.
    pub intermediates: Vec<Vec<u8>>,
    pub chain: Option<Arc<ChainFacts>>,
}

impl Chained {
    /// The serial its CA signed (see [`DeviceEntry::ca_signed_serial`]).
    pub fn ca_signed_serial(&self) -> &str {
        self.chain.as_ref().map_or(&self.serial, |c| &c.top_serial)
    }

    /// When a connection that used it must close: the earliest not-after
    /// of the device and its intermediates.
    pub fn expires_at(&self) -> i64 {
        self.chain
            .as_ref()
            .map_or(self.not_after, |c| c.not_after.min(self.not_after))
    }
}

impl DeviceEntry {
    /// The serial its CA signed and that CA's CRL speaks of: its own, or
    /// its top intermediate's.
    pub fn ca_signed_serial(&self) -> &str {
        self.chain.as_ref().map_or(&self.serial, |c| &c.top_serial)
    }

    /// The earliest not-after of the device and its intermediates.
    pub fn expires_at(&self) -> i64 {
        self.chain
            .as_ref()
            .map_or(self.not_after, |c| c.not_after.min(self.not_after))
    }
}

/// What CONNECT does with a certificate.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow {
        device_id: String,
        ca_id: String,
        /// The certificate's not-after (unix seconds): the connection is
        /// closed then.
        not_after: i64,
    },
    /// First connection under a JITP CA: register it (`ACTIVE` and allow
    /// when `activate`, else `PENDING_ACTIVATION` and refuse).
    Provision { chained: Chained, activate: bool },
    Reject {
        reason: Rejection,
        device_id: Option<String>,
        ca_id: Option<String>,
    },
}

/// Decides CONNECTs of clients that presented a certificate (the device
/// registry): the seam between the connection driver and the certificate
/// plane. Must not block: it runs on the connect path.
pub trait ConnectAuthorizer: Send + Sync + 'static {
    /// `chain` is what the client sent (DER, its certificate first, then
    /// intermediates); `client_id` as in CONNECT.
    fn authorize(&self, chain: &[&[u8]], client_id: &str) -> Decision;
}

#[derive(Debug, Default, Clone)]
pub struct RegistrySnapshot {
    cas: Arc<HashMap<String, Arc<CaEntry>>>,
    /// CA ids by subject DER (a rogue CA may share a subject; the
    /// signature decides).
    by_subject: Arc<HashMap<Vec<u8>, Vec<String>>>,
    /// Device entries by signed id, sharded by its first byte, so that a
    /// change copies one shard: provisioning many devices one by one stays
    /// linear overall.
    devices: Shards<String, DeviceEntry>,
    /// (CA id, serial) -> signed id, sharded by a hash of the serial.
    serials: Shards<(String, String), String>,
    /// Revoked signed ids, and revoked (CA key id, serial) pairs.
    revoked_signed: Arc<HashSet<String>>,
    revoked_serials: Arc<HashSet<(String, String)>>,
    /// CRLs by CA id.
    crls: Arc<HashMap<String, Arc<CrlEntry>>>,
    /// Policy: the client id must equal the certificate's CN.
    pub client_id_is_cn: bool,
    /// `[crl] stale = "fail-closed"`: a CA whose CRL is past its next
    /// update admits none of its certificates.
    pub crl_fail_closed: bool,
}

/// A map split into [`SHARDS`] copy-on-write parts.
type Shards<K, V> = Arc<Vec<Arc<HashMap<K, V>>>>;

const SHARDS: usize = 256;

/// Signed ids are lower-case hex digests: their first byte spreads evenly.
fn shard_of(id: &str) -> usize {
    id.get(..2)
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .unwrap_or(0)
        % SHARDS
}

/// Serials often share their leading bytes: shard by a hash instead.
fn serial_shard(serial: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serial.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn reject(reason: Rejection) -> Decision {
    Decision::Reject {
        reason,
        device_id: None,
        ca_id: None,
    }
}

/// Whether a certificate may authenticate a client (SPEC 6): a v3
/// certificate is refused when it is a CA, when its Extended Key Usage
/// lacks `clientAuth`, or when its keyUsage lacks `digitalSignature`.
/// X.509 v1 certificates carry no extensions and pass.
pub fn check_client_purpose(cert: &X509Certificate<'_>) -> Result<(), Rejection> {
    let bad = |_| Rejection::BadCertificate;
    if cert
        .basic_constraints()
        .map_err(bad)?
        .is_some_and(|b| b.value.ca)
    {
        return Err(Rejection::CertificatePurpose);
    }
    if cert
        .extended_key_usage()
        .map_err(bad)?
        .is_some_and(|e| !e.value.client_auth)
    {
        return Err(Rejection::CertificatePurpose);
    }
    if cert
        .key_usage()
        .map_err(bad)?
        .is_some_and(|k| !k.value.digital_signature())
    {
        return Err(Rejection::CertificatePurpose);
    }
    Ok(())
}

/// The signed id of a presented certificate, refusing encodings that are
/// not DER or whose signature algorithms disagree.
pub fn signed_id_of(leaf: &[u8]) -> Result<String, Rejection> {
    split_certificate(leaf)
        .map(|p| p.signed_id())
        .map_err(|_| Rejection::CertificateEncoding)
}

impl RegistrySnapshot {
    pub fn new(
        cas: Vec<CaEntry>,
        devices: Vec<(String, DeviceEntry)>,
        revoked: Vec<RevokedEntry>,
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
        let mut serials: Vec<HashMap<(String, String), String>> = vec![HashMap::new(); SHARDS];
        for (key, d) in devices {
            if let Some(s) = serials.get_mut(serial_shard(&d.serial)) {
                s.insert((d.ca_id.clone(), d.serial.clone()), key.clone());
            }
            if let Some(s) = shards.get_mut(shard_of(&key)) {
                s.insert(key, d);
            }
        }
        let mut this = Self {
            cas: Arc::new(map),
            by_subject: Arc::new(by_subject),
            devices: Arc::new(shards.into_iter().map(Arc::new).collect()),
            serials: Arc::new(serials.into_iter().map(Arc::new).collect()),
            revoked_signed: Default::default(),
            revoked_serials: Default::default(),
            crls: Default::default(),
            client_id_is_cn,
            crl_fail_closed: false,
        };
        let signed = Arc::make_mut(&mut this.revoked_signed);
        let by_serial = Arc::make_mut(&mut this.revoked_serials);
        for r in revoked {
            signed.insert(r.signed_id);
            by_serial.insert((r.issuer_key, r.serial));
        }
        this
    }

    fn device_map(&self, key: &str) -> Option<&HashMap<String, DeviceEntry>> {
        self.devices.get(shard_of(key)).map(|m| &**m)
    }

    /// A copy with the device of signed id `key` changed (None removes
    /// it); CAs are shared.
    pub fn with_device(&self, key: &str, entry: Option<DeviceEntry>) -> Self {
        let mut shards: Vec<Arc<HashMap<String, DeviceEntry>>> = self.devices.to_vec();
        let mut serials = self.serials.to_vec();
        if let Some(shard) = shards.get_mut(shard_of(key)) {
            let map = Arc::make_mut(shard);
            let old = match entry {
                Some(e) => {
                    if let Some(s) = serials.get_mut(serial_shard(&e.serial)) {
                        Arc::make_mut(s).insert((e.ca_id.clone(), e.serial.clone()), key.into());
                    }
                    map.insert(key.to_string(), e)
                }
                None => map.remove(key),
            };
            if let Some(old) = old.filter(|o| map.get(key).is_none_or(|n| n.serial != o.serial)) {
                if let Some(s) = serials.get_mut(serial_shard(&old.serial)) {
                    Arc::make_mut(s).remove(&(old.ca_id, old.serial));
                }
            }
        }
        Self {
            devices: Arc::new(shards),
            serials: Arc::new(serials),
            ..self.clone()
        }
    }

    /// A copy that remembers `r` as revoked.
    pub fn with_revoked(&self, r: RevokedEntry) -> Self {
        let mut next = self.clone();
        Arc::make_mut(&mut next.revoked_signed).insert(r.signed_id);
        Arc::make_mut(&mut next.revoked_serials).insert((r.issuer_key, r.serial));
        next
    }

    pub fn ca(&self, id: &str) -> Option<&Arc<CaEntry>> {
        self.cas.get(id)
    }

    /// Every registered CA.
    pub fn cas(&self) -> impl Iterator<Item = &Arc<CaEntry>> {
        self.cas.values()
    }

    /// A copy with these CRLs (by CA id) and stale mode.
    pub fn with_crls(mut self, crls: HashMap<String, Arc<CrlEntry>>, fail_closed: bool) -> Self {
        self.crls = Arc::new(crls);
        self.crl_fail_closed = fail_closed;
        self
    }

    /// A copy with CA `ca_id`'s CRL replaced (None removes it).
    pub fn with_crl(&self, ca_id: &str, crl: Option<Arc<CrlEntry>>) -> Self {
        let mut next = self.clone();
        let map = Arc::make_mut(&mut next.crls);
        match crl {
            Some(c) => map.insert(ca_id.to_string(), c),
            None => map.remove(ca_id),
        };
        next
    }

    pub fn crl(&self, ca_id: &str) -> Option<&Arc<CrlEntry>> {
        self.crls.get(ca_id)
    }

    /// Every CRL, by CA id.
    pub fn crls(&self) -> impl Iterator<Item = (&String, &Arc<CrlEntry>)> {
        self.crls.iter()
    }

    /// Every device (any status).
    pub fn devices(&self) -> impl Iterator<Item = &DeviceEntry> {
        self.devices.iter().flat_map(|m| m.values())
    }

    /// Ids of the devices of CA `ca_id` that its CRL lists (themselves, or
    /// the intermediate they came through).
    pub fn crl_listed(&self, ca_id: &str) -> Vec<String> {
        let Some(crl) = self.crls.get(ca_id) else {
            return Vec::new();
        };
        self.devices()
            .filter(|d| d.ca_id == ca_id)
            .filter(|d| {
                let serial = d.ca_signed_serial();
                crl.serials.contains(serial)
            })
            .map(|d| d.id.clone())
            .collect()
    }

    /// The CRL's verdict on a certificate of CA `ca_id` whose CA-signed
    /// serial is `serial` (its own, or its top intermediate's).
    fn crl_check(&self, ca_id: &str, serial: &str, now: i64) -> Result<(), Rejection> {
        let Some(crl) = self.crls.get(ca_id) else {
            return Ok(());
        };
        if crl.serials.contains(serial) {
            return Err(Rejection::CertificateRevokedByCrl);
        }
        if self.crl_fail_closed && crl.is_stale(now) {
            return Err(Rejection::CrlStale);
        }
        Ok(())
    }

    /// A registered CA whose subject is `cert`'s issuer and whose key
    /// signed it.
    fn registered_issuer(&self, cert: &X509Certificate<'_>) -> Option<&Arc<CaEntry>> {
        self.by_subject
            .get(cert.issuer().as_raw())?
            .iter()
            .filter_map(|id| self.cas.get(id))
            .find(|ca| {
                SubjectPublicKeyInfo::from_der(&ca.spki)
                    .ok()
                    .is_some_and(|(_, spki)| verify_with_spki(cert, &spki).is_ok())
            })
    }

    /// The device registered under signed id `key`.
    pub fn device(&self, key: &str) -> Option<&DeviceEntry> {
        self.device_map(key)?.get(key)
    }

    /// The signed id of the device the CA `ca_id` has with `serial`.
    pub fn device_by_serial(&self, ca_id: &str, serial: &str) -> Option<&String> {
        self.serials
            .get(serial_shard(serial))?
            .get(&(ca_id.to_string(), serial.to_string()))
    }

    pub fn is_revoked(&self, signed_id: &str, issuer_key: &str, serial: &str) -> bool {
        self.revoked_signed.contains(signed_id)
            || self
                .revoked_serials
                .contains(&(issuer_key.to_string(), serial.to_string()))
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

    /// Which registered CA `leaf` chains to (any state), directly or
    /// through `intermediates` (in any order; the first registered CA met
    /// going up ends the path), with the leaf's encoding and purpose, the
    /// intermediates' CA rights, and the validity of all checked at `now`.
    /// Revocation is registry state, decided at CONNECT
    /// ([`RegistrySnapshot::authorize`]).
    pub fn chain(
        &self,
        leaf: &[u8],
        intermediates: &[&[u8]],
        now: i64,
    ) -> Result<(Chained, Arc<CaEntry>), Rejection> {
        if intermediates.len() >= MAX_DEVICE_CHAIN {
            return Err(Rejection::ChainTooLong);
        }
        let signed_id = signed_id_of(leaf)?;
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| Rejection::BadCertificate)?;
        check_client_purpose(&cert)?;
        let parsed: Vec<X509Certificate<'_>> = intermediates
            .iter()
            .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
            .collect();
        let mut path: Vec<usize> = Vec::new();
        let mut current = &cert;
        let ca = loop {
            if let Some(ca) = self.registered_issuer(current) {
                break ca;
            }
            let next = parsed.iter().enumerate().find(|(i, c)| {
                !path.contains(i)
                    && c.subject().as_raw() == current.issuer().as_raw()
                    && verify_with_spki(current, c.public_key()).is_ok()
            });
            let Some((i, issuer)) = next else {
                return Err(Rejection::UnknownCa);
            };
            check_intermediate(issuer, path.len(), now)?;
            path.push(i);
            current = issuer;
        };
        let serial = hex_serial(&cert);
        if now > ca.not_after || now < ca.not_before {
            return Err(Rejection::CaExpired);
        }
        let v = cert.validity();
        if now >= v.not_after.timestamp() {
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
        let intermediates: Vec<Vec<u8>> = path
            .iter()
            .filter_map(|&i| intermediates.get(i).map(|d| d.to_vec()))
            .collect();
        let chain = ChainFacts::of(&intermediates).map(Arc::new);
        Ok((
            Chained {
                device_id: fingerprint(leaf),
                signed_id,
                ca_id: ca.id.clone(),
                issuer_key: ca.key_id.clone(),
                serial,
                subject_cn: common_name(cert.subject()),
                subject_ou: ou,
                not_before: v.not_before.timestamp(),
                not_after: v.not_after.timestamp(),
                intermediates,
                chain,
            },
            ca.clone(),
        ))
    }

    /// The TLS handshake's check: chains to an `ACTIVE` registered CA and
    /// the CA's CRL does not list it (registry states, revocation included,
    /// are CONNECT's: the client then gets CONNACK "not authorized"). A
    /// certificate the registry already holds (any encoding of what its CA
    /// signed) was chain-verified when it was registered (by the API or
    /// JITP), and its record names its CA, intermediates and validity:
    /// only those are checked, without a signature verification.
    pub fn verify_handshake(
        &self,
        leaf: &[u8],
        intermediates: &[&[u8]],
        now: i64,
    ) -> Result<(), (Rejection, Option<String>)> {
        let key = signed_id_of(leaf).map_err(|r| (r, None))?;
        if let Some(d) = self.device(&key) {
            let with = |r| (r, Some(d.ca_id.clone()));
            let ca = self
                .cas
                .get(&d.ca_id)
                .ok_or_else(|| with(Rejection::UnknownCa))?;
            if ca.status != CaStatus::Active {
                return Err(with(Rejection::CaInactive));
            }
            if now > ca.not_after || now < ca.not_before {
                return Err(with(Rejection::CaExpired));
            }
            if now >= d.not_after {
                return Err(with(Rejection::CertificateExpired));
            }
            if now < d.not_before {
                return Err(with(Rejection::CertificateNotYetValid));
            }
            if let Some(c) = &d.chain {
                c.check(now).map_err(with)?;
            }
            let serial = d.ca_signed_serial();
            return self.crl_check(&d.ca_id, serial, now).map_err(with);
        }
        let (chained, ca) = self
            .chain(leaf, intermediates, now)
            .map_err(|r| (r, None))?;
        let with = |r| (r, Some(chained.ca_id.clone()));
        if ca.status != CaStatus::Active {
            return Err(with(Rejection::CaInactive));
        }
        let serial = chained.ca_signed_serial();
        self.crl_check(&chained.ca_id, serial, now).map_err(with)
    }

    /// CONNECT's decision for a client that presented `chain` (its
    /// certificate first) and asks for `client_id`. Registered devices are
    /// decided from the registry alone (their chain was verified when they
    /// were registered); unknown ones are chained and provisioned per their
    /// CA's settings.
    pub fn authorize(&self, chain: &[&[u8]], client_id: &str, now: i64) -> Decision {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return reject(Rejection::NoCertificate);
        };
        let key = match signed_id_of(leaf) {
            Ok(k) => k,
            Err(r) => return reject(r),
        };
        if let Some(d) = self.device(&key) {
            let with = |reason| Decision::Reject {
                reason,
                device_id: Some(d.id.clone()),
                ca_id: Some(d.ca_id.clone()),
            };
            let Some(ca) = self.cas.get(&d.ca_id) else {
                return with(Rejection::UnknownCa);
            };
            if d.status == DeviceStatus::Revoked {
                return with(Rejection::CertificateRevoked);
            }
            if ca.status != CaStatus::Active {
                return with(Rejection::CaInactive);
            }
            if now > ca.not_after {
                return with(Rejection::CaExpired);
            }
            match d.status {
                DeviceStatus::Active | DeviceStatus::Revoked => {}
                DeviceStatus::Inactive => return with(Rejection::CertificateInactive),
                DeviceStatus::PendingActivation => return with(Rejection::CertificatePending),
            }
            if now >= d.not_after {
                return with(Rejection::CertificateExpired);
            }
            if now < d.not_before {
                return with(Rejection::CertificateNotYetValid);
            }
            if let Some(Err(r)) = d.chain.as_ref().map(|c| c.check(now)) {
                return with(r);
            }
            let serial = d.ca_signed_serial();
            if let Err(r) = self.crl_check(&d.ca_id, serial, now) {
                return with(r);
            }
            if d.client_id.as_deref().is_some_and(|c| c != client_id)
                || (self.client_id_is_cn && d.subject_cn.as_deref() != Some(client_id))
            {
                return with(Rejection::ClientIdMismatch);
            }
            return Decision::Allow {
                device_id: d.id.clone(),
                ca_id: d.ca_id.clone(),
                not_after: d.expires_at(),
            };
        }
        let (chained, ca) = match self.chain(leaf, intermediates, now) {
            Ok(c) => c,
            Err(r) => return reject(r),
        };
        let with = |reason| Decision::Reject {
            reason,
            device_id: Some(chained.device_id.clone()),
            ca_id: Some(chained.ca_id.clone()),
        };
        if self.is_revoked(&chained.signed_id, &chained.issuer_key, &chained.serial) {
            return with(Rejection::CertificateRevoked);
        }
        if ca.status != CaStatus::Active {
            return with(Rejection::CaInactive);
        }
        let serial = chained.ca_signed_serial();
        if let Err(r) = self.crl_check(&chained.ca_id, serial, now) {
            return with(r);
        }
        if let Some(other) = self.device_by_serial(&chained.ca_id, &chained.serial) {
            let revoked = self
                .device(other)
                .is_some_and(|d| d.status == DeviceStatus::Revoked);
            return with(if revoked {
                Rejection::CertificateRevoked
            } else {
                Rejection::CertificateSerialInUse
            });
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

/// An intermediate on a device's path: a CA (basicConstraints CA:TRUE)
/// allowed to sign certificates (keyUsage keyCertSign when present), with
/// no more intermediates below it than its path length constraint allows
/// (`below`), valid at `now`.
fn check_intermediate(c: &X509Certificate<'_>, below: usize, now: i64) -> Result<(), Rejection> {
    let bad = |_| Rejection::IntermediateInvalid;
    let Some(bc) = c.basic_constraints().map_err(bad)? else {
        return Err(Rejection::IntermediateInvalid);
    };
    if !bc.value.ca {
        return Err(Rejection::IntermediateInvalid);
    }
    if bc
        .value
        .path_len_constraint
        .is_some_and(|n| usize::try_from(n).is_ok_and(|n| below > n))
    {
        return Err(Rejection::IntermediateInvalid);
    }
    if c.key_usage()
        .map_err(bad)?
        .is_some_and(|k| !k.value.key_cert_sign())
    {
        return Err(Rejection::IntermediateInvalid);
    }
    let v = c.validity();
    if now >= v.not_after.timestamp() {
        return Err(Rejection::IntermediateExpired);
    }
    if now < v.not_before.timestamp() {
        return Err(Rejection::IntermediateNotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose as E, IsCa, KeyUsagePurpose as K};

    fn cert(ku: Vec<K>, eku: Vec<E>, ca: bool) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.key_usages = ku;
        p.extended_key_usages = eku;
        // rcgen writes no extensions for keyUsage alone: say "not a CA".
        p.is_ca = if ca {
            IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn purpose(der: &[u8]) -> Result<(), Rejection> {
        let (_, c) = X509Certificate::from_der(der).unwrap();
        check_client_purpose(&c)
    }

    #[test]
    fn client_purpose_rules() {
        assert_eq!(purpose(&cert(vec![], vec![], false)), Ok(()));
        assert_eq!(
            purpose(&cert(vec![K::DigitalSignature], vec![E::ClientAuth], false)),
            Ok(())
        );
        let refused = Err(Rejection::CertificatePurpose);
        assert_eq!(purpose(&cert(vec![], vec![], true)), refused);
        assert_eq!(purpose(&cert(vec![], vec![E::ServerAuth], false)), refused);
        assert_eq!(
            purpose(&cert(vec![K::KeyEncipherment], vec![], false)),
            refused
        );
    }
}
