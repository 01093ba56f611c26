//! The storage the registry needs, as traits and records; `certmq-store`
//! implements them (SQLite now, PostgreSQL next).
//!
//! A store keeps records and enforces only what must hold inside one
//! transaction (a code spent once, a serial used once, `REVOKED` final);
//! every other rule is the registry's. Statuses are typed: a record that
//! does not parse is the store's error (`Corrupt`), never a panic.

use certmq_pki::{CaStatus, DeviceStatus, Provisioning};

/// A bound server certificate as stored. `key_pem` is the private key:
/// never logged, never returned by the API.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCertRecord {
    pub id: String,
    pub name: Option<String>,
    pub chain_pem: String,
    pub key_pem: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for ServerCertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A registered CA certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    pub id: String,
    pub serial: String,
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub status: CaStatus,
    pub pem: String,
    pub verification_pem: String,
    /// Whether devices of this CA are provisioned at first connection.
    pub provisioning: Provisioning,
    pub automatic_activation: bool,
    pub registered_at: i64,
    pub last_activated_at: Option<i64>,
    pub last_deactivated_at: Option<i64>,
    /// Where its CRL is fetched from (SPEC 14), when set.
    pub crl_url: Option<String>,
}

/// A CA's current CRL as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    pub ca_id: String,
    /// The CRL as issued (DER).
    pub der: Vec<u8>,
    pub this_update: i64,
    pub next_update: Option<i64>,
    pub revoked_count: u64,
    /// The CRL number extension, lower-case hex.
    pub number: Option<String>,
    /// `API` (uploaded) or the URL it was fetched from.
    pub source: String,
    pub updated_at: i64,
}

/// A device (client) certificate under a CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: String,
    pub ca_id: String,
    pub serial: String,
    pub subject_cn: Option<String>,
    pub subject_ou: Option<String>,
    pub client_id: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub status: DeviceStatus,
    /// How it was registered: through the API or at first connection.
    pub source: Provisioning,
    pub pem: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_connected_at: Option<i64>,
    /// SHA-256 of the certificate's `tbsCertificate` (what its CA signed):
    /// the same for every encoding of the certificate.
    pub signed_id: String,
    /// SHA-256 of the issuing CA's public key, for the revocation list.
    pub issuer_key: String,
    /// The intermediates it chained through to its CA (PEM, nearest the
    /// device first); empty when its CA signed it.
    pub chain_pem: String,
}

/// A revoked certificate. Kept for ever: deleting its device record or its
/// CA leaves it in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedRecord {
    pub signed_id: String,
    pub fingerprint: String,
    pub issuer_key: String,
    pub serial: String,
    pub ca_id: String,
    pub revoked_at: i64,
}

/// Filters and paging for device lists; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub ca_id: Option<String>,
    pub client_id: Option<String>,
    pub subject_cn: Option<String>,
    pub subject_ou: Option<String>,
    pub serial: Option<String>,
    pub status: Option<DeviceStatus>,
    /// not_after at or after / before (unix seconds).
    pub expires_after: Option<i64>,
    pub expires_before: Option<i64>,
    pub limit: usize,
    pub offset: usize,
}

/// Who made a change and what it was, for the audit log. `before` and
/// `after` are JSON documents without secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, a full disk, a locked database).
    #[error("storage error: {0}")]
    Backend(String),
    /// The shared store cannot be reached (a cluster's PostgreSQL is down
    /// or cut off): nothing was written.
    #[error("{0}")]
    Unavailable(String),
    /// A stored value does not parse (a status no certmq writes).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot open the database at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the database schema is version {found}; this certmq knows up to {known}")]
    TooNew { found: i64, known: i64 },
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// A precondition checked before the write no longer held inside it
    /// (a concurrent change won).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Limit(String),
    /// The certificate was revoked; `REVOKED` is final.
    #[error("{0}")]
    Revoked(String),
    /// The CA already has a device certificate with this serial.
    #[error("{0}")]
    SerialInUse(String),
}

/// The registry's storage operations.
pub trait Store: Send + Sync + 'static {
    fn server_certs(&self) -> Result<Vec<ServerCertRecord>, StoreError>;
    fn insert_server_cert(
        &self,
        rec: &ServerCertRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    fn delete_server_cert(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Whether the default server certificate is enabled (true until changed).
    fn default_cert_enabled(&self) -> Result<bool, StoreError>;
    fn set_default_cert_enabled(&self, enabled: bool, audit: &AuditEntry)
        -> Result<(), StoreError>;
    /// The newest audit records, newest first.
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;

    /// The current registration code and its expiry (unix seconds).
    fn registration_code(&self) -> Result<Option<(String, i64)>, StoreError>;
    fn set_registration_code(
        &self,
        code: &str,
        expires_at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    fn cas(&self) -> Result<Vec<CaRecord>, StoreError>;
    /// Registers a CA and consumes the registration code `code`, in one
    /// transaction that also checks the code is still current and fewer
    /// than `max_cas` CAs are registered (two registrations cannot both
    /// spend one code or both take the last place).
    fn insert_ca(
        &self,
        rec: &CaRecord,
        code: &str,
        max_cas: usize,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Writes a CA's status, times and provisioning settings.
    fn update_ca(&self, rec: &CaRecord, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Deletes a CA and its device certificates.
    fn delete_ca(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Device counts by status under a CA.
    fn device_counts(&self, ca_id: &str) -> Result<Vec<(DeviceStatus, u64)>, StoreError>;
    /// A page of devices matching `filter`, and how many match in all.
    fn devices(&self, filter: &DeviceFilter) -> Result<(Vec<DeviceRecord>, u64), StoreError>;
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    /// Adds a device certificate, in one transaction that refuses it when
    /// its id or signed id is registered already (`Exists`), when its CA
    /// has the serial already (`SerialInUse`) or when it was revoked
    /// (`Revoked`).
    fn insert_device(&self, rec: &DeviceRecord, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Imports many devices in one transaction (one audit record); ids
    /// already present are skipped. Returns how many were added.
    fn import_devices(
        &self,
        recs: &[DeviceRecord],
        audit: &AuditEntry,
    ) -> Result<usize, StoreError>;
    /// Moves a device to `status` in one conditional step: a `REVOKED`
    /// device stays revoked (`Revoked`), and revoking adds the certificate
    /// to the revocation list. The audit record gets the status found
    /// inside the transaction as its "before". Returns the record before
    /// and after.
    fn transition_device(
        &self,
        id: &str,
        status: DeviceStatus,
        at: i64,
        actor: &str,
        action: &str,
    ) -> Result<(DeviceRecord, DeviceRecord), StoreError>;
    /// Every revoked certificate.
    fn revoked(&self) -> Result<Vec<RevokedRecord>, StoreError>;
    /// Fills in the signed id and issuer key of records written before
    /// they existed (`identity` computes them from a record's PEM), and
    /// adds those that are `REVOKED` to the revocation list. Returns how
    /// many records were updated.
    fn backfill_identity(
        &self,
        identity: &dyn Fn(&DeviceRecord) -> Option<(String, String)>,
    ) -> Result<usize, StoreError>;
    fn delete_device(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Every device, for the connect path's snapshot (without their own
    /// PEMs; with their intermediates).
    fn all_devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Every CA's current CRL.
    fn crls(&self) -> Result<Vec<CrlRecord>, StoreError>;
    /// CA `ca_id`'s current CRL.
    fn crl(&self, ca_id: &str) -> Result<Option<CrlRecord>, StoreError>;
    /// Stores a CA's CRL, replacing the one it had.
    fn put_crl(&self, rec: &CrlRecord, audit: &AuditEntry) -> Result<(), StoreError>;
}
