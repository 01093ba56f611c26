//! CA certificates and device certificates: the rules of SPEC sections 5
//! and 6 over the store, the connect path's registry snapshot (rebuilt on
//! CA changes, patched on device changes), live enforcement (kicking the
//! connections a change disables), and the CONNECT-time authorizer with
//! just-in-time provisioning.

use std::collections::HashMap;
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::store::{AuditEntry, CaRecord, CrlRecord, DeviceFilter, DeviceRecord, Store};
use certmq_codec::ReasonCode;
use certmq_core::Events;
use certmq_pki::{
    CaEntry, CaStatus, ChainFacts, CrlEntry, Decision, DeviceEntry, DeviceStatus, Provisioning,
    RegistrySnapshot, RevokedEntry, SharedRegistry,
};
use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{ErrorKind, RegistryError};
use crate::ids::{CaId, CertId};
use crate::server_certs::{now_unix, rfc3339};

/// Registry limits and policy: the `[registry]` section of the
/// configuration file as it is (defined once, here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// CA certificates that may be registered (SPEC 5: 32).
    pub max_ca_certificates: usize,
    /// Seconds a registration code stays valid.
    pub registration_code_ttl_secs: u64,
    /// Policy: a device certificate's client id must equal its subject CN.
    pub client_id_must_match_cn: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            max_ca_certificates: 32,
            registration_code_ttl_secs: 3600,
            client_id_must_match_cn: false,
        }
    }
}

/// A change to the certificate plane that is already in the store. Local
/// writes make them; a node sharing the store with others (a PostgreSQL
/// NOTIFY) turns what it hears into them.
#[derive(Debug, Clone)]
pub enum Change {
    /// CA `id` was registered, changed or deleted: the snapshot is rebuilt
    /// from the store, and if the CA is no longer ACTIVE its devices'
    /// connections close.
    Ca { id: CaId },
    /// A device record as now stored (registered, provisioned or moved to
    /// another status); a status other than ACTIVE closes its connections.
    DeviceStored(DeviceRecord),
    /// A device record was deleted (a revoked one stays revoked).
    DeviceRemoved(DeviceRecord),
    /// A device record with this id was deleted elsewhere (its record is
    /// gone from the store): the snapshot is rebuilt from the store.
    DeviceGone { id: String },
    /// CA `ca_id` has a new CRL: the connections of the certificates it
    /// lists close.
    Crl { ca_id: CaId },
}

/// Connections a change closes.
enum Kick {
    None,
    Ca(String),
    Device(String),
    Devices(Vec<String>),
}

/// What `[crl]` in the configuration file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrlConfig {
    /// What a CRL past its next update does: `fail-open` (its CA's
    /// certificates keep connecting; an alarm is raised) or `fail-closed`
    /// (they are refused, `CRL_STALE`).
    pub stale: CrlStale,
    /// Seconds between fetches of CRLs from their distribution URLs.
    pub refresh_interval_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrlStale {
    FailOpen,
    FailClosed,
}

impl Default for CrlConfig {
    fn default() -> Self {
        Self {
            stale: CrlStale::FailOpen,
            refresh_interval_secs: 300,
        }
    }
}

/// A CRL as the API shows it.
#[derive(Debug, Clone)]
pub struct CrlView {
    pub record: CrlRecord,
    pub issuer_cn: Option<String>,
}

pub struct Devices {
    store: Arc<dyn Store>,
    snapshot: SharedRegistry,
    /// Lists and closes live connections (live enforcement).
    control: Arc<dyn certmq_core::Control>,
    config: RegistryConfig,
    /// Held across every registry write and the snapshot change that
    /// follows it, so the snapshot follows the store in the store's order
    /// (readers never wait).
    update: Mutex<()>,
    jitp: Mutex<Option<std::sync::mpsc::Sender<DeviceRecord>>>,
    /// `[crl] stale = "fail-closed"`.
    crl_fail_closed: AtomicBool,
    events: Events,
}

/// What the audit log keeps of a CA.
fn ca_audit(r: &CaRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "subject_cn": r.subject_cn,
        "serial_number": r.serial,
        "not_after": rfc3339(r.not_after),
        "status": r.status.as_str(),
        "device_provisioning": r.provisioning.as_str(),
        "automatic_activation": r.automatic_activation,
    })
}

/// What the audit log keeps of a device certificate.
fn device_audit(r: &DeviceRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "ca_id": r.ca_id,
        "serial_number": r.serial,
        "subject_cn": r.subject_cn,
        "client_id": r.client_id,
        "not_after": rfc3339(r.not_after),
        "status": r.status.as_str(),
        "source": r.source.as_str(),
    })
}

fn audit(
    action: &str,
    target: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> AuditEntry {
    AuditEntry {
        actor: crate::current_actor(),
        action: action.into(),
        target: target.into(),
        before,
        after,
    }
}

/// DER of every certificate in a PEM text.
fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// A record as the connect path sees it, under its signed id.
fn device_entry(r: &DeviceRecord) -> Option<(String, DeviceEntry)> {
    Some((
        r.signed_id.clone(),
        DeviceEntry {
            id: r.id.clone(),
            ca_id: r.ca_id.clone(),
            serial: r.serial.clone(),
            status: r.status,
            client_id: r.client_id.clone(),
            subject_cn: r.subject_cn.clone(),
            not_before: r.not_before,
            not_after: r.not_after,
            chain: (!r.chain_pem.is_empty())
                .then(|| ChainFacts::of(&pem_certs(&r.chain_pem)).map(Arc::new))
                .flatten(),
        },
    ))
    .filter(|(k, _)| !k.is_empty())
}

fn revoked_entry(r: &DeviceRecord) -> RevokedEntry {
    RevokedEntry {
        signed_id: r.signed_id.clone(),
        issuer_key: r.issuer_key.clone(),
        serial: r.serial.clone(),
    }
}

/// The record of a certificate that chained to a registered CA.
fn device_record(
    chained: &certmq_pki::Chained,
    der: &[u8],
    client_id: Option<String>,
    status: DeviceStatus,
    source: Provisioning,
    now: i64,
    last_connected_at: Option<i64>,
) -> DeviceRecord {
    DeviceRecord {
        id: chained.device_id.clone(),
        ca_id: chained.ca_id.clone(),
        serial: chained.serial.clone(),
        subject_cn: chained.subject_cn.clone(),
        subject_ou: chained.subject_ou.clone(),
        client_id,
        not_before: chained.not_before,
        not_after: chained.not_after,
        status,
        source,
        pem: certmq_pki::pem_encode("CERTIFICATE", der),
        created_at: now,
        updated_at: now,
        last_connected_at,
        signed_id: chained.signed_id.clone(),
        issuer_key: chained.issuer_key.clone(),
        chain_pem: chained
            .intermediates
            .iter()
            .map(|d| certmq_pki::pem_encode("CERTIFICATE", d))
            .collect(),
    }
}

/// What the connect path keeps of a stored CRL.
fn crl_entry(r: &CrlRecord) -> Option<CrlEntry> {
    let crl = certmq_pki::parse_crl(&r.der).ok()?;
    Some(CrlEntry {
        serials: crl.serials.into_iter().collect(),
        this_update: crl.this_update,
        next_update: crl.next_update,
    })
}

fn ca_entry(r: &CaRecord) -> Option<CaEntry> {
    let ca = certmq_pki::single_cert_der(r.pem.as_bytes()).ok()?;
    let (spki, subject_raw) = certmq_pki::spki_and_subject(&ca)?;
    Some(CaEntry {
        id: r.id.clone(),
        status: r.status,
        provisioning: r.provisioning,
        automatic_activation: r.automatic_activation,
        key_id: certmq_pki::hex_sha256(&spki),
        spki,
        subject_raw,
        not_before: r.not_before,
        not_after: r.not_after,
    })
}

/// `value` parsed, if it is one of `allowed`; else a 400 naming the field.
fn one_of<T: Copy + PartialEq>(
    value: &str,
    parse: fn(&str) -> Option<T>,
    allowed: &[(T, &str)],
    field: &str,
    code: &'static str,
) -> Result<T, RegistryError> {
    match parse(value) {
        Some(v) if allowed.iter().any(|(a, _)| *a == v) => Ok(v),
        _ => {
            let names: Vec<&str> = allowed.iter().map(|(_, n)| *n).collect();
            Err(RegistryError::new(
                ErrorKind::BadRequest,
                code,
                format!("{field} must be one of {}, not {value}", names.join(", ")),
            ))
        }
    }
}

const CA_STATUSES: &[(CaStatus, &str)] = &[
    (CaStatus::Active, "ACTIVE"),
    (CaStatus::Inactive, "INACTIVE"),
];
const PROVISIONINGS: &[(Provisioning, &str)] =
    &[(Provisioning::Api, "API"), (Provisioning::Jitp, "JITP")];
/// What a device may be registered as (`REVOKED` only by revoking).
const REGISTER_STATUSES: &[(DeviceStatus, &str)] = &[
    (DeviceStatus::Active, "ACTIVE"),
    (DeviceStatus::Inactive, "INACTIVE"),
    (DeviceStatus::PendingActivation, "PENDING_ACTIVATION"),
];

fn not_found(what: &str, id: &str) -> RegistryError {
    RegistryError::new(
        ErrorKind::NotFound,
        "NotFound",
        format!("{what} {id} not found"),
    )
}

impl Devices {
    pub fn load(
        store: Arc<dyn Store>,
        snapshot: SharedRegistry,
        control: Arc<dyn certmq_core::Control>,
        config: RegistryConfig,
    ) -> Result<Arc<Self>, RegistryError> {
        let this = Arc::new(Self {
            store,
            snapshot,
            control,
            config,
            update: Mutex::new(()),
            jitp: Mutex::new(None),
            crl_fail_closed: AtomicBool::new(false),
            events: Events::default(),
        });
        this.backfill()?;
        this.reload()?;
        // JITP registrations are written off the connect path, in order.
        let (tx, rx) = std::sync::mpsc::channel::<DeviceRecord>();
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new()
            .name("certmq-jitp".into())
            .spawn(move || {
                while let Ok(rec) = rx.recv() {
                    let Some(this) = weak.upgrade() else { return };
                    let a = audit("device_certificate.jitp", &rec.id, None, Some(device_audit(&rec)));
                    match this.store.insert_device(&rec, &a) {
                        Ok(()) | Err(crate::store::StoreError::Exists(_)) => {}
                        Err(e) => {
                            // The store refused what the snapshot let in (a
                            // revocation or serial that raced it): undo.
                            tracing::error!(id = %rec.id, error = %e, "JITP registration not stored; device removed");
                            if let Err(e) = this.apply(Change::DeviceRemoved(rec)) {
                                tracing::error!(error = %e, "JITP undo failed");
                            }
                        }
                    }
                }
            })
            .map_err(|e| RegistryError::new(ErrorKind::Internal, "Internal", e.to_string()))?;
        *this.jitp.lock() = Some(tx);
        Ok(this)
    }

    /// Records written before device identity was keyed on the signed
    /// content get their signed id and issuer key (and revoked ones join
    /// the revocation list).
    fn backfill(&self) -> Result<(), RegistryError> {
        let keys: HashMap<String, String> = self
            .store
            .cas()?
            .iter()
            .filter_map(|c| Some((c.id.clone(), ca_entry(c)?.key_id)))
            .collect();
        let identity = |r: &DeviceRecord| {
            let der = certmq_pki::single_cert_der(r.pem.as_bytes()).ok()?;
            let signed = certmq_pki::signed_id_of(&der).ok()?;
            Some((signed, keys.get(&r.ca_id)?.clone()))
        };
        let n = self.store.backfill_identity(&identity)?;
        if n > 0 {
            tracing::info!(records = n, "device records keyed by signed content");
        }
        Ok(())
    }

    /// Rebuilds the snapshot from the store.
    pub fn reload(&self) -> Result<(), RegistryError> {
        let g = self.update.lock();
        self.reload_locked(&g)
    }

    fn reload_locked(&self, _held: &parking_lot::MutexGuard<'_, ()>) -> Result<(), RegistryError> {
        let cas = self.store.cas()?.iter().filter_map(ca_entry).collect();
        let devices = self
            .store
            .all_devices()?
            .iter()
            .filter_map(device_entry)
            .collect();
        let revoked = self
            .store
            .revoked()?
            .into_iter()
            .map(|r| RevokedEntry {
                signed_id: r.signed_id,
                issuer_key: r.issuer_key,
                serial: r.serial,
            })
            .collect();
        let crls = self
            .store
            .crls()?
            .iter()
            .filter_map(|r| Some((r.ca_id.clone(), Arc::new(crl_entry(r)?))))
            .collect();
        self.snapshot.store(Arc::new(
            RegistrySnapshot::new(cas, devices, revoked, self.config.client_id_must_match_cn)
                .with_crls(crls, self.crl_fail_closed.load(Ordering::Relaxed)),
        ));
        Ok(())
    }

    /// `[crl] stale = "fail-closed"` is in force.
    pub fn crl_fail_closed(&self) -> bool {
        self.crl_fail_closed.load(Ordering::Relaxed)
    }

    /// The handle events are emitted through (the binary installs the sink).
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// `[crl] stale`: whether a stale CRL refuses its CA's certificates.
    pub fn set_crl_stale(&self, stale: CrlStale) -> Result<(), RegistryError> {
        self.crl_fail_closed
            .store(stale == CrlStale::FailClosed, Ordering::Relaxed);
        self.reload()
    }

    /// Applies a change that is already in the store (made here, or by
    /// another node sharing it) to the connect path's snapshot, and closes
    /// the live connections it disables. Local writes go through the same
    /// steps, under the lock they hold across their store write.
    pub fn apply(&self, change: Change) -> Result<(), RegistryError> {
        let g = self.update.lock();
        let kick = self.apply_locked(&g, change)?;
        drop(g);
        self.run(kick);
        Ok(())
    }

    /// The snapshot change; returns which connections to close (closed by
    /// [`Self::run`] once the lock is released).
    fn apply_locked(
        &self,
        held: &parking_lot::MutexGuard<'_, ()>,
        change: Change,
    ) -> Result<Kick, RegistryError> {
        Ok(match change {
            Change::Ca { id } => {
                self.reload_locked(held)?;
                let active = self
                    .snapshot
                    .load()
                    .ca(id.as_str())
                    .is_some_and(|c| c.status == CaStatus::Active);
                if active {
                    Kick::None
                } else {
                    Kick::Ca(id.to_string())
                }
            }
            Change::DeviceStored(rec) => {
                self.patch_locked(held, &rec, true);
                if rec.status == DeviceStatus::Active {
                    Kick::None
                } else {
                    Kick::Device(rec.id)
                }
            }
            Change::DeviceRemoved(rec) => {
                // A revoked certificate stays on the revocation list.
                self.patch_locked(held, &rec, false);
                Kick::Device(rec.id)
            }
            Change::DeviceGone { id } => {
                self.reload_locked(held)?;
                Kick::Device(id)
            }
            Change::Crl { ca_id } => {
                let rec = self.store.crl(ca_id.as_str())?;
                let entry = rec.as_ref().and_then(crl_entry).map(Arc::new);
                let next = self.snapshot.load().with_crl(ca_id.as_str(), entry);
                let listed = next.crl_listed(ca_id.as_str());
                self.snapshot.store(Arc::new(next));
                Kick::Devices(listed)
            }
        })
    }

    /// Rebuilds the snapshot from the store and closes the live
    /// connections it no longer admits: a device stored with a status other
    /// than ACTIVE or revoked, a CA that is not ACTIVE or gone, and a device
    /// record gone for more than `grace_secs` after the connection began
    /// (a device provisioned at its first connection is stored just after
    /// it). For a node that may have missed changes (SPEC 13 catch-up).
    /// Returns how many connections closed.
    pub fn reload_and_enforce(&self, now: i64, grace_secs: i64) -> Result<usize, RegistryError> {
        let g = self.update.lock();
        self.reload_locked(&g)?;
        let devices: HashMap<String, DeviceRecord> = self
            .store
            .all_devices()?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        let snapshot = self.snapshot.load_full();
        drop(g);
        let listed: std::collections::HashSet<String> = snapshot
            .crls()
            .flat_map(|(ca, _)| snapshot.crl_listed(ca))
            .collect();
        let mut n = 0;
        for c in self.control.connections() {
            let Some(cert) = c.certificate_id.as_deref() else {
                continue;
            };
            let ca_ok = c.ca_id.as_deref().is_none_or(|ca| {
                snapshot
                    .ca(ca)
                    .is_some_and(|e| e.status == CaStatus::Active)
            });
            let device_ok = match devices.get(cert) {
                Some(d) => {
                    d.status == DeviceStatus::Active
                        && !snapshot.is_revoked(&d.signed_id, &d.issuer_key, &d.serial)
                        && !listed.contains(&d.id)
                }
                None => now - c.connected_at < grace_secs,
            };
            if !(ca_ok && device_ok)
                && self
                    .control
                    .kick(&c.client_id, ReasonCode::ADMINISTRATIVE_ACTION)
            {
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(
                connections = n,
                "live connections closed after reading the registry again"
            );
        }
        Ok(n)
    }

    fn run(&self, kick: Kick) {
        match kick {
            Kick::None => {}
            Kick::Ca(id) => {
                self.kick(None, Some(&id));
            }
            Kick::Device(id) => {
                self.kick(Some(&id), None);
            }
            Kick::Devices(ids) => {
                if ids.is_empty() {
                    return;
                }
                let ids: std::collections::HashSet<String> = ids.into_iter().collect();
                let mut n = 0;
                for c in self.control.connections() {
                    if c.certificate_id.as_ref().is_some_and(|d| ids.contains(d))
                        && self
                            .control
                            .kick(&c.client_id, ReasonCode::ADMINISTRATIVE_ACTION)
                    {
                        n += 1;
                    }
                }
                if n > 0 {
                    tracing::info!(connections = n, "live connections closed by a CRL");
                }
            }
        }
    }

    /// Applies one record's change to the snapshot (the update lock held).
    fn patch_locked(
        &self,
        _held: &parking_lot::MutexGuard<'_, ()>,
        rec: &DeviceRecord,
        present: bool,
    ) {
        let mut next = self.snapshot.load().with_device(
            &rec.signed_id,
            device_entry(rec).filter(|_| present).map(|(_, e)| e),
        );
        if rec.status == DeviceStatus::Revoked {
            next = next.with_revoked(revoked_entry(rec));
        }
        self.snapshot.store(Arc::new(next));
    }

    /// Closes every live connection that authenticated with `device_id`,
    /// or with any certificate of `ca_id` (MQTT 5: DISCONNECT 0x98).
    fn kick(&self, device_id: Option<&str>, ca_id: Option<&str>) -> usize {
        let mut n = 0;
        for c in self.control.connections() {
            let hit = device_id.is_some_and(|d| c.certificate_id.as_deref() == Some(d))
                || ca_id.is_some_and(|a| c.ca_id.as_deref() == Some(a));
            if hit
                && self
                    .control
                    .kick(&c.client_id, ReasonCode::ADMINISTRATIVE_ACTION)
            {
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(
                connections = n,
                device_id,
                ca_id,
                "live connections closed by a registry change"
            );
        }
        n
    }

    /// The newest audit records, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<crate::store::AuditRecord>, RegistryError> {
        Ok(self.store.audit_log(limit)?)
    }

    pub fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.snapshot.load_full()
    }

    /// Device certificates by status, from the snapshot (no database).
    pub fn device_counts_by_status(&self) -> Vec<(&'static str, usize)> {
        self.snapshot.load().count_by_status()
    }

    // ---- CA certificates ----

    pub fn new_registration_code(&self) -> Result<(String, i64), RegistryError> {
        let code = certmq_pki::random_hex(16)
            .map_err(|e| RegistryError::new(ErrorKind::Internal, "Internal", e))?;
        let ttl = i64::try_from(self.config.registration_code_ttl_secs).unwrap_or(i64::MAX);
        let expires = now_unix().saturating_add(ttl);
        self.store.set_registration_code(
            &code,
            expires,
            &audit(
                "ca_certificate.registration_code",
                "registration_code",
                None,
                None,
            ),
        )?;
        Ok((code, expires))
    }

    pub fn list_cas(&self) -> Result<Vec<CaRecord>, RegistryError> {
        Ok(self.store.cas()?)
    }

    fn ca_record(&self, id: &str) -> Result<CaRecord, RegistryError> {
        self.store
            .cas()?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| not_found("CA certificate", id))
    }

    /// A CA and its device certificates counted by status.
    #[allow(clippy::type_complexity)]
    pub fn get_ca(&self, id: &CaId) -> Result<(CaRecord, Vec<(DeviceStatus, u64)>), RegistryError> {
        let id = id.as_str();
        let r = self.ca_record(id)?;
        Ok((r, self.store.device_counts(id)?))
    }

    pub fn register_ca(
        &self,
        ca_pem: &str,
        verification_pem: &str,
        status: Option<&str>,
        provisioning: Option<&str>,
        automatic_activation: Option<bool>,
    ) -> Result<CaRecord, RegistryError> {
        let status = one_of(
            status.unwrap_or("ACTIVE"),
            CaStatus::parse,
            CA_STATUSES,
            "status",
            "InvalidStatus",
        )?;
        let provisioning = one_of(
            provisioning.unwrap_or("JITP"),
            Provisioning::parse,
            PROVISIONINGS,
            "device_provisioning",
            "InvalidProvisioning",
        )?;
        let now = now_unix();
        let g = self.update.lock();
        let code = self.store.registration_code()?;
        let ca = certmq_pki::verify_ca_registration(
            ca_pem.as_bytes(),
            verification_pem.as_bytes(),
            code.as_ref().map(|(c, e)| (c.as_str(), *e)),
            now,
        )
        .map_err(|e| RegistryError::new(ErrorKind::Invalid, e.code(), e.to_string()))?;
        let existing = self.store.cas()?;
        if existing.iter().any(|c| c.id == ca.info.id) {
            return Err(RegistryError::new(
                ErrorKind::Conflict,
                "CaAlreadyRegistered",
                format!("CA certificate {} is already registered", ca.info.id),
            ));
        }
        if existing.len() >= self.config.max_ca_certificates {
            return Err(RegistryError::new(
                ErrorKind::Conflict,
                "CaLimitReached",
                format!(
                    "{} CA certificates are registered, the most allowed; delete one first",
                    existing.len()
                ),
            ));
        }
        let rec = CaRecord {
            id: ca.info.id.clone(),
            serial: ca.info.serial.clone(),
            subject_cn: ca.info.subject_cn.clone(),
            issuer_cn: ca.info.issuer_cn.clone(),
            not_before: ca.info.not_before,
            not_after: ca.info.not_after,
            status,
            pem: certmq_pki::pem_encode("CERTIFICATE", &ca.der),
            verification_pem: verification_pem.to_string(),
            provisioning,
            automatic_activation: automatic_activation.unwrap_or(true),
            registered_at: now,
            last_activated_at: (status == CaStatus::Active).then_some(now),
            last_deactivated_at: None,
            crl_url: None,
        };
        let Some((code, _)) = code else {
            return Err(RegistryError::new(
                ErrorKind::Invalid,
                "NoRegistrationCode",
                "no registration code is active",
            ));
        };
        self.store.insert_ca(
            &rec,
            &code,
            self.config.max_ca_certificates,
            &audit(
                "ca_certificate.register",
                &rec.id,
                None,
                Some(ca_audit(&rec)),
            ),
        )?;
        let kick = self.apply_locked(
            &g,
            Change::Ca {
                id: CaId::parse(&rec.id)?,
            },
        )?;
        drop(g);
        self.run(kick);
        self.events.emit("ca.registered", ca_audit(&rec));
        Ok(rec)
    }

    pub fn set_ca_status(&self, ca: &CaId, active: bool) -> Result<CaRecord, RegistryError> {
        let id = ca.as_str();
        let g = self.update.lock();
        let mut rec = self.ca_record(id)?;
        let before = serde_json::json!({"status": rec.status.as_str()});
        let now = now_unix();
        rec.status = if active {
            CaStatus::Active
        } else {
            CaStatus::Inactive
        };
        if active {
            rec.last_activated_at = Some(now);
        } else {
            rec.last_deactivated_at = Some(now);
        }
        let action = if active {
            "ca_certificate.activate"
        } else {
            "ca_certificate.deactivate"
        };
        self.store.update_ca(
            &rec,
            &audit(
                action,
                id,
                Some(before),
                Some(serde_json::json!({"status": rec.status.as_str()})),
            ),
        )?;
        let kick = self.apply_locked(&g, Change::Ca { id: ca.clone() })?;
        drop(g);
        self.run(kick);
        self.events.emit(
            if active {
                "ca.activated"
            } else {
                "ca.deactivated"
            },
            ca_audit(&rec),
        );
        Ok(rec)
    }

    pub fn update_ca_provisioning(
        &self,
        ca: &CaId,
        provisioning: Option<&str>,
        automatic_activation: Option<bool>,
    ) -> Result<CaRecord, RegistryError> {
        let shown = |r: &CaRecord| serde_json::json!({"device_provisioning": r.provisioning.as_str(), "automatic_activation": r.automatic_activation});
        self.edit_ca(ca, shown, |rec| {
            if let Some(p) = provisioning {
                rec.provisioning = one_of(
                    p,
                    Provisioning::parse,
                    PROVISIONINGS,
                    "device_provisioning",
                    "InvalidProvisioning",
                )?;
            }
            if let Some(a) = automatic_activation {
                rec.automatic_activation = a;
            }
            Ok(())
        })
    }

    /// Changes CA `ca`'s settings with `edit`, audited as
    /// `ca_certificate.update` with what `shown` shows before and after.
    fn edit_ca(
        &self,
        ca: &CaId,
        shown: impl Fn(&CaRecord) -> serde_json::Value,
        edit: impl FnOnce(&mut CaRecord) -> Result<(), RegistryError>,
    ) -> Result<CaRecord, RegistryError> {
        let id = ca.as_str();
        let g = self.update.lock();
        let mut rec = self.ca_record(id)?;
        let before = shown(&rec);
        edit(&mut rec)?;
        self.store.update_ca(
            &rec,
            &audit("ca_certificate.update", id, Some(before), Some(shown(&rec))),
        )?;
        let kick = self.apply_locked(&g, Change::Ca { id: ca.clone() })?;
        drop(g);
        self.run(kick);
        Ok(rec)
    }

    pub fn delete_ca(&self, ca: &CaId) -> Result<(), RegistryError> {
        let id = ca.as_str();
        let g = self.update.lock();
        let rec = self.ca_record(id)?;
        if rec.status == CaStatus::Active {
            return Err(RegistryError::new(
                ErrorKind::Conflict,
                "CaActive",
                "an ACTIVE CA certificate cannot be deleted; deactivate it first",
            ));
        }
        let active = self
            .store
            .device_counts(id)?
            .into_iter()
            .find(|(s, _)| *s == DeviceStatus::Active)
            .map_or(0, |(_, n)| n);
        if active > 0 {
            return Err(RegistryError::new(
                ErrorKind::Conflict,
                "CaHasActiveDevices",
                format!("{active} ACTIVE device certificate(s) under this CA; deactivate or revoke them first"),
            ));
        }
        let before = Some(ca_audit(&rec));
        self.store
            .delete_ca(id, &audit("ca_certificate.delete", id, before, None))?;
        let kick = self.apply_locked(&g, Change::Ca { id: ca.clone() })?;
        drop(g);
        self.run(kick);
        self.events.emit("ca.deleted", ca_audit(&rec));
        Ok(())
    }

    // ---- device certificates ----

    pub fn list_devices(
        &self,
        f: &DeviceFilter,
    ) -> Result<(Vec<DeviceRecord>, u64), RegistryError> {
        Ok(self.store.devices(f)?)
    }

    pub fn device(&self, id: &CertId) -> Result<DeviceRecord, RegistryError> {
        let id = id.as_str();
        self.store
            .device(id)?
            .ok_or_else(|| not_found("device certificate", id))
    }

    pub fn register_device(
        &self,
        pem: &str,
        client_id: Option<String>,
        status: Option<&str>,
    ) -> Result<DeviceRecord, RegistryError> {
        let status = one_of(
            status.unwrap_or("ACTIVE"),
            DeviceStatus::parse,
            REGISTER_STATUSES,
            "status",
            "InvalidStatus",
        )?;
        if client_id
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 65535)
        {
            return Err(RegistryError::new(
                ErrorKind::BadRequest,
                "InvalidClientId",
                "client_id must be 1 to 65535 bytes",
            ));
        }
        // The device's certificate, then the intermediates to its CA (as a
        // device sends them), if any.
        let certs = pem_certs(pem);
        let Some((der, intermediates)) = certs.split_first() else {
            return Err(RegistryError::new(
                ErrorKind::Invalid,
                "InvalidCertificatePem",
                "no CERTIFICATE block found",
            ));
        };
        let intermediates: Vec<&[u8]> = intermediates.iter().map(Vec::as_slice).collect();
        let (chained, _) = self
            .snapshot
            .load()
            .chain(der, &intermediates, now_unix())
            .map_err(|r| {
                use certmq_pki::Rejection as R;
                match r {
                    R::ChainTooLong => RegistryError::new(
                        ErrorKind::Invalid,
                        "ChainTooLong",
                        format!(
                            "at most {} certificates: the device's and up to {} intermediates",
                            certmq_pki::MAX_DEVICE_CHAIN,
                            certmq_pki::MAX_DEVICE_CHAIN - 1
                        ),
                    ),
                    R::IntermediateInvalid
                    | R::IntermediateExpired
                    | R::IntermediateNotYetValid => RegistryError::new(
                        ErrorKind::Invalid,
                        "IntermediateNotAccepted",
                        format!(
                            "an intermediate is not a CA allowed to sign certificates within \
                             its path length, or is not valid now ({})",
                            r.as_str()
                        ),
                    ),
                    R::CertificatePurpose => RegistryError::new(
                        ErrorKind::Invalid,
                        "CertificatePurpose",
                        "the certificate is not fit for client authentication: it is a CA \
                         (basicConstraints CA:TRUE), its Extended Key Usage lacks clientAuth, \
                         or its keyUsage lacks digitalSignature",
                    ),
                    R::CertificateEncoding => RegistryError::new(
                        ErrorKind::Invalid,
                        "CertificateEncoding",
                        "the certificate is not DER, or its outer signature algorithm differs \
                         from the signed one",
                    ),
                    r => RegistryError::new(
                        ErrorKind::Invalid,
                        "CertificateNotAccepted",
                        format!(
                        "the certificate does not chain to a registered CA within validity ({})",
                        r.as_str()
                    ),
                    ),
                }
            })?;
        if self
            .snapshot
            .load()
            .is_revoked(&chained.signed_id, &chained.issuer_key, &chained.serial)
        {
            return Err(RegistryError::new(
                ErrorKind::Conflict,
                "CertificateRevoked",
                "this certificate was revoked; REVOKED is final",
            ));
        }
        let now = now_unix();
        let rec = device_record(
            &chained,
            der,
            client_id,
            status,
            Provisioning::Api,
            now,
            None,
        );
        let g = self.update.lock();
        self.store
            .insert_device(
                &rec,
                &audit(
                    "device_certificate.register",
                    &rec.id,
                    None,
                    Some(device_audit(&rec)),
                ),
            )
            .map_err(|e| match e {
                crate::store::StoreError::Exists(_) => RegistryError::new(
                    ErrorKind::Conflict,
                    "DeviceCertificateAlreadyRegistered",
                    format!("device certificate {} is already registered", rec.id),
                ),
                other => other.into(),
            })?;
        let kick = self.apply_locked(&g, Change::DeviceStored(rec.clone()))?;
        drop(g);
        self.run(kick);
        self.events.emit("device.registered", device_audit(&rec));
        Ok(rec)
    }

    pub fn set_device_status(
        &self,
        id: &CertId,
        status: DeviceStatus,
    ) -> Result<DeviceRecord, RegistryError> {
        let id = id.as_str();
        let action = match status {
            DeviceStatus::Active => "device_certificate.activate",
            DeviceStatus::Inactive => "device_certificate.deactivate",
            DeviceStatus::Revoked => "device_certificate.revoke",
            DeviceStatus::PendingActivation => "device_certificate.pending",
        };
        // One conditional step in the store, and the snapshot changed under
        // the same lock: concurrent transitions land in the store's order.
        let g = self.update.lock();
        let (_, after) = self.store.transition_device(
            id,
            status,
            now_unix(),
            &crate::current_actor(),
            action,
        )?;
        let kick = self.apply_locked(&g, Change::DeviceStored(after.clone()))?;
        drop(g);
        self.run(kick);
        let kind = match status {
            DeviceStatus::Active => "device.activated",
            DeviceStatus::Inactive => "device.deactivated",
            DeviceStatus::Revoked => "device.revoked",
            DeviceStatus::PendingActivation => "device.deactivated",
        };
        self.events.emit(kind, device_audit(&after));
        Ok(after)
    }

    pub fn delete_device(&self, cert: &CertId) -> Result<(), RegistryError> {
        let id = cert.as_str();
        let g = self.update.lock();
        let rec = self.device(cert)?;
        let before = Some(device_audit(&rec));
        self.store
            .delete_device(id, &audit("device_certificate.delete", id, before, None))?;
        let data = device_audit(&rec);
        let kick = self.apply_locked(&g, Change::DeviceRemoved(rec))?;
        drop(g);
        self.run(kick);
        self.events.emit("device.deleted", data);
        Ok(())
    }

    // ---- findings ----

    /// What is worth an operator's attention about a registered CA
    /// (SPEC 14: weak keys, SHA-1 signatures).
    pub fn ca_findings(rec: &CaRecord) -> Vec<certmq_pki::Finding> {
        pem_certs(&rec.pem)
            .first()
            .map(|der| certmq_pki::findings(der, certmq_pki::Role::Ca, "the CA certificate"))
            .unwrap_or_default()
    }

    /// The same about a device certificate and its intermediates.
    pub fn device_findings(rec: &DeviceRecord) -> Vec<certmq_pki::Finding> {
        let mut out: Vec<certmq_pki::Finding> = pem_certs(&rec.pem)
            .first()
            .map(|der| {
                certmq_pki::findings(der, certmq_pki::Role::Device, "the device certificate")
            })
            .unwrap_or_default();
        for (i, der) in pem_certs(&rec.chain_pem).iter().enumerate() {
            out.extend(certmq_pki::findings(
                der,
                certmq_pki::Role::Ca,
                &format!("intermediate {}", i + 1),
            ));
        }
        out
    }

    // ---- CRLs ----

    /// CA `ca`'s CRL, if it has one.
    pub fn crl(&self, ca: &CaId) -> Result<Option<CrlView>, RegistryError> {
        self.ca_record(ca.as_str())?;
        Ok(self.store.crl(ca.as_str())?.map(|record| CrlView {
            issuer_cn: certmq_pki::parse_crl(&record.der)
                .ok()
                .and_then(|c| c.issuer_cn),
            record,
        }))
    }

    /// Every CA's CRL.
    pub fn crls(&self) -> Result<Vec<CrlRecord>, RegistryError> {
        Ok(self.store.crls()?)
    }

    /// Takes a CRL for CA `ca` (PEM or DER), issued and signed by it, not
    /// older than the one it has; `source` is `API` or the URL it was
    /// fetched from. Live connections of certificates it lists close.
    /// Returns the CRL and whether it changed anything (the same CRL again
    /// does not).
    pub fn put_crl(
        &self,
        ca: &CaId,
        body: &[u8],
        source: &str,
    ) -> Result<(CrlView, bool), RegistryError> {
        let crl = certmq_pki::parse_crl(body)
            .map_err(|e| RegistryError::new(ErrorKind::Invalid, e.code(), e.to_string()))?;
        let g = self.update.lock();
        let ca_rec = self.ca_record(ca.as_str())?;
        let entry = ca_entry(&ca_rec).ok_or_else(|| {
            RegistryError::new(
                ErrorKind::Internal,
                "Internal",
                "the stored CA certificate does not parse",
            )
        })?;
        certmq_pki::verify_crl(&crl, &entry.spki, &entry.subject_raw)
            .map_err(|e| RegistryError::new(ErrorKind::Invalid, e.code(), e.to_string()))?;
        let current = self.store.crl(ca.as_str())?;
        if let Some(cur) = &current {
            if cur.der == crl.der {
                return Ok((
                    CrlView {
                        record: cur.clone(),
                        issuer_cn: crl.issuer_cn,
                    },
                    false,
                ));
            }
            if crl.this_update < cur.this_update {
                return Err(RegistryError::new(
                    ErrorKind::Conflict,
                    "CrlOlder",
                    format!(
                        "this CRL was issued at {}, before the one in use ({}); a CRL is never \
                         replaced by an older one",
                        rfc3339(crl.this_update),
                        rfc3339(cur.this_update)
                    ),
                ));
            }
        }
        let rec = CrlRecord {
            ca_id: ca.to_string(),
            der: crl.der.clone(),
            this_update: crl.this_update,
            next_update: crl.next_update,
            revoked_count: crl.serials.len() as u64,
            number: crl.number.clone(),
            source: source.to_string(),
            updated_at: now_unix(),
        };
        let summary = serde_json::json!({
            "ca_id": rec.ca_id,
            "this_update": rfc3339(rec.this_update),
            "next_update": rec.next_update.map(rfc3339),
            "revoked_count": rec.revoked_count,
            "crl_number": rec.number,
            "source": rec.source,
        });
        self.store.put_crl(
            &rec,
            &audit(
                "ca_certificate.crl",
                ca.as_str(),
                current.as_ref().map(|c| {
                    serde_json::json!({"this_update": rfc3339(c.this_update), "revoked_count": c.revoked_count})
                }),
                Some(summary.clone()),
            ),
        )?;
        let kick = self.apply_locked(&g, Change::Crl { ca_id: ca.clone() })?;
        drop(g);
        self.run(kick);
        self.events.emit("ca.crl_updated", summary);
        Ok((
            CrlView {
                record: rec,
                issuer_cn: crl.issuer_cn,
            },
            true,
        ))
    }

    /// Sets (or clears) the URL CA `ca`'s CRL is fetched from.
    pub fn set_crl_url(&self, ca: &CaId, url: Option<&str>) -> Result<CaRecord, RegistryError> {
        if let Some(u) = url {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.len() <= 2048
                && !u.chars().any(char::is_whitespace);
            if !ok {
                return Err(RegistryError::new(
                    ErrorKind::BadRequest,
                    "InvalidCrlUrl",
                    "crl_url must be an http:// or https:// URL of at most 2048 characters",
                ));
            }
        }
        self.edit_ca(
            ca,
            |r| serde_json::json!({ "crl_url": r.crl_url }),
            |rec| {
                rec.crl_url = url.map(str::to_owned);
                Ok(())
            },
        )
    }
}

impl certmq_pki::ConnectAuthorizer for Devices {
    fn authorize(&self, chain: &[&[u8]], client_id: &str) -> Decision {
        let Some(leaf) = chain.first() else {
            return self.snapshot.load().authorize(chain, client_id, now_unix());
        };
        let decision = self.snapshot.load().authorize(chain, client_id, now_unix());
        let Decision::Provision { .. } = &decision else {
            return decision;
        };
        // Decide again under the update lock, so that two first connections
        // of one certificate (or of two with one serial), or a revocation
        // in between, cannot both provision.
        let g = self.update.lock();
        let decision = self.snapshot.load().authorize(chain, client_id, now_unix());
        if let Decision::Provision { chained, activate } = &decision {
            let now = now_unix();
            let status = if *activate {
                DeviceStatus::Active
            } else {
                DeviceStatus::PendingActivation
            };
            let rec = device_record(
                chained,
                leaf,
                None,
                status,
                Provisioning::Jitp,
                now,
                Some(now),
            );
            // Visible at once to the next CONNECT; stored in order off the
            // connect path. Nothing to close: the certificate's only
            // connection is this CONNECT, not yet live.
            let _ = self.apply_locked(&g, Change::DeviceStored(rec.clone()));
            drop(g);
            tracing::info!(id = %rec.id, ca_id = %rec.ca_id, status = rec.status.as_str(), "device certificate provisioned (JITP)");
            self.events.emit("device.registered", device_audit(&rec));
            if let Some(tx) = self.jitp.lock().as_ref() {
                let _ = tx.send(rec);
            }
        }
        decision
    }
}
