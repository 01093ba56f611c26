//! Server certificates: the bound ones (from the store) plus the default,
//! and the SNI snapshot built from them. Every change is written to the
//! store first (durable, audited), then the in-memory view is rebuilt from
//! the store and the resolver's snapshot swapped: the same path a change
//! arriving from another node (PostgreSQL LISTEN/NOTIFY) will take.

use std::sync::Arc;

use crate::store::{AuditEntry, ServerCertRecord, Store};
use certmq_pki::{CertInfo, SniResolver, SniSnapshot};
use parking_lot::Mutex;
use rustls::sign::CertifiedKey;

use crate::error::{ErrorKind, RegistryError};

/// The id under which the default certificate is addressed.
pub const DEFAULT_ID: &str = "default";

struct Bound {
    record: ServerCertRecord,
    info: CertInfo,
    certified: Arc<CertifiedKey>,
}

impl Bound {
    fn view(&self) -> ServerCert {
        ServerCert {
            id: self.record.id.clone(),
            name: self.record.name.clone(),
            is_default: false,
            enabled: true,
            info: self.info.clone(),
            chain_length: self.certified.cert.len(),
            created_at: Some(self.record.created_at),
        }
    }
}

struct View {
    bound: Vec<Bound>,
    default_enabled: bool,
}

pub struct ServerCerts {
    store: Arc<dyn Store>,
    resolver: Arc<SniResolver>,
    default_info: CertInfo,
    default_key: Arc<CertifiedKey>,
    view: Mutex<View>,
    events: certmq_core::Events,
    /// The host names the broker serves (`[tls] server_names`), for the
    /// SAN-coverage finding.
    server_names: Mutex<Vec<String>>,
}

/// A served server certificate: a bound one or the default (never the
/// key). The admin API turns it into its JSON.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub id: String,
    pub name: Option<String>,
    pub is_default: bool,
    /// Served (the default can be disabled).
    pub enabled: bool,
    pub info: CertInfo,
    pub chain_length: usize,
    /// Unix seconds; `None` for the default.
    pub created_at: Option<i64>,
}

impl ServerCert {
    /// What the audit log keeps of it.
    fn audit(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "subject_cn": self.info.subject_cn,
            "serial_number": self.info.serial,
            "dns_names": self.info.dns_names,
            "not_after": rfc3339(self.info.not_after),
        })
    }
}

pub use certmq_pki::rfc3339;

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ServerCerts {
    /// Loads the bound certificates from the store and installs the first
    /// snapshot. A stored certificate that no longer loads is skipped with
    /// an error in the log (it stays in the store for the operator).
    pub fn load(
        store: Arc<dyn Store>,
        resolver: Arc<SniResolver>,
        default_info: CertInfo,
        default_key: Arc<CertifiedKey>,
    ) -> Result<Arc<Self>, RegistryError> {
        let this = Arc::new(Self {
            store,
            resolver,
            default_info,
            default_key,
            view: Mutex::new(View {
                bound: Vec::new(),
                default_enabled: true,
            }),
            events: certmq_core::Events::default(),
            server_names: Mutex::new(Vec::new()),
        });
        this.reload()?;
        Ok(this)
    }

    /// Rebuilds the view from the store and swaps the SNI snapshot.
    pub fn reload(&self) -> Result<(), RegistryError> {
        let records = self.store.server_certs()?;
        let default_enabled = self.store.default_cert_enabled()? || records.is_empty();
        let mut bound = Vec::new();
        for record in records {
            // Loading skips the validity-window check: an expired bound
            // certificate stays listed (with negative seconds to expiry).
            let parsed = certmq_pki::load_server_cert(
                record.chain_pem.as_bytes(),
                record.key_pem.as_bytes(),
            );
            match parsed {
                Ok(c) => bound.push(Bound {
                    record,
                    info: c.info,
                    certified: c.certified,
                }),
                Err(e) => {
                    tracing::error!(id = %record.id, error = %e, "stored server certificate does not load")
                }
            }
        }
        let snapshot = SniSnapshot::build(
            default_enabled.then(|| self.default_key.clone()),
            bound.iter().map(|b| (&b.info, b.certified.clone())),
        );
        self.resolver.swap(snapshot);
        *self.view.lock() = View {
            bound,
            default_enabled,
        };
        Ok(())
    }

    pub fn list(&self) -> Vec<ServerCert> {
        let v = self.view.lock();
        let mut out = vec![self.default_view(v.default_enabled)];
        for b in &v.bound {
            out.push(b.view());
        }
        out
    }

    fn default_view(&self, enabled: bool) -> ServerCert {
        ServerCert {
            id: DEFAULT_ID.into(),
            name: Some("default".into()),
            is_default: true,
            enabled,
            info: self.default_info.clone(),
            chain_length: self.default_key.cert.len(),
            created_at: None,
        }
    }

    pub fn get(&self, id: &str) -> Option<ServerCert> {
        self.list().into_iter().find(|c| c.id == id)
    }

    /// The handle events are emitted through.
    pub fn events(&self) -> &certmq_core::Events {
        &self.events
    }

    /// The host names the broker is configured to serve.
    pub fn set_server_names(&self, names: Vec<String>) {
        *self.server_names.lock() = names;
    }

    /// Validates and binds; durable before it returns. Returns what was
    /// bound and the findings about it (SPEC 14).
    pub fn bind(
        &self,
        name: Option<String>,
        chain_pem: &str,
        key_pem: &str,
        actor: &str,
    ) -> Result<(ServerCert, Vec<certmq_pki::Finding>), RegistryError> {
        let cert =
            certmq_pki::validate_server_cert(chain_pem.as_bytes(), key_pem.as_bytes(), now_unix())?;
        let hosts = self.server_names.lock().clone();
        let mut warnings = Vec::new();
        for (i, der) in cert.chain.iter().enumerate() {
            let label = if i == 0 {
                "the server certificate".to_string()
            } else {
                format!("chain certificate {}", i + 1)
            };
            let role = if i == 0 {
                certmq_pki::Role::Server { hosts: &hosts }
            } else {
                certmq_pki::Role::Ca
            };
            warnings.extend(certmq_pki::findings(der.as_ref(), role, &label));
        }
        let id = cert.info.id.clone();
        if self.view.lock().bound.iter().any(|b| b.record.id == id) {
            return Err(RegistryError::new(
                ErrorKind::Conflict,
                "CertificateAlreadyBound",
                format!("server certificate {id} is already bound"),
            ));
        }
        let record = ServerCertRecord {
            id: id.clone(),
            name: name.clone(),
            chain_pem: chain_pem.to_string(),
            key_pem: key_pem.to_string(),
            created_at: now_unix(),
        };
        let shown = ServerCert {
            id: id.clone(),
            name,
            is_default: false,
            enabled: true,
            info: cert.info.clone(),
            chain_length: cert.chain.len(),
            created_at: Some(record.created_at),
        };
        let audit = AuditEntry {
            actor: actor.into(),
            action: "server_certificate.bind".into(),
            target: id.clone(),
            before: None,
            after: Some(shown.audit()),
        };
        self.store.insert_server_cert(&record, &audit)?;
        self.reload()?;
        self.events.emit("server_certificate.bound", shown.audit());
        Ok((shown, warnings))
    }

    pub fn unbind(&self, id: &str, actor: &str) -> Result<(), RegistryError> {
        if id == DEFAULT_ID {
            return Err(RegistryError::new(
                ErrorKind::Conflict,
                "DefaultCertificateCannotBeUnbound",
                "the default certificate cannot be unbound; disable it instead",
            ));
        }
        let (before, remaining, default_enabled) = {
            let v = self.view.lock();
            let before = v.bound.iter().find(|b| b.record.id == id).map(Bound::view);
            (before, v.bound.len().saturating_sub(1), v.default_enabled)
        };
        let Some(before) = before else {
            return Err(RegistryError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!("server certificate {id} is not bound"),
            ));
        };
        if remaining == 0 && !default_enabled {
            return Err(RegistryError::new(
                ErrorKind::Conflict,
                "LastCertificate",
                "this is the only certificate being served while the default is disabled; enable the default first",
            ));
        }
        let audit = AuditEntry {
            actor: actor.into(),
            action: "server_certificate.unbind".into(),
            target: id.into(),
            before: Some(before.audit()),
            after: None,
        };
        self.store.delete_server_cert(id, &audit)?;
        self.reload()?;
        self.events
            .emit("server_certificate.unbound", before.audit());
        Ok(())
    }

    pub fn set_default_enabled(
        &self,
        enabled: bool,
        actor: &str,
    ) -> Result<ServerCert, RegistryError> {
        let (was, bound) = {
            let v = self.view.lock();
            (v.default_enabled, v.bound.len())
        };
        if !enabled && bound == 0 {
            return Err(RegistryError::new(
                ErrorKind::Conflict,
                "NoCustomCertificate",
                "the default certificate can be disabled only while a custom certificate is bound",
            ));
        }
        if was != enabled {
            let audit = AuditEntry {
                actor: actor.into(),
                action: if enabled {
                    "server_certificate.default.enable"
                } else {
                    "server_certificate.default.disable"
                }
                .into(),
                target: DEFAULT_ID.into(),
                before: Some(serde_json::json!({"enabled": was})),
                after: Some(serde_json::json!({"enabled": enabled})),
            };
            self.store.set_default_cert_enabled(enabled, &audit)?;
            self.reload()?;
            self.events.emit(
                "server_certificate.default_toggled",
                serde_json::json!({"id": DEFAULT_ID, "enabled": enabled}),
            );
        }
        Ok(self.default_view(enabled))
    }
}
