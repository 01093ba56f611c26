//! certmq's certificate plane.
//!
//! What it does: the rules of CA, device and server certificates (SPEC 4,
//! 5, 6) over its storage trait ([`store::Store`], implemented by
//! `certmq-store`), the revocation list, the connect
//! path's registry snapshot and SNI snapshot (rebuilt or patched after
//! every write, in the store's order), just-in-time provisioning at
//! CONNECT ([`Devices`] is a [`certmq_pki::ConnectAuthorizer`]), and live
//! enforcement through the core's [`certmq_core::Control`] seam (a change
//! that disables certificates closes their connections).
//!
//! What it does not do: HTTP (the admin API maps [`RegistryError`] to
//! statuses), sockets or TLS handshakes (`certmq-net`), or SQL
//! (`certmq-store`).

#![forbid(unsafe_code)]

pub mod alarms;
mod devices;
mod error;
mod ids;
mod server_certs;
pub mod store;

pub use crate::alarms::{Alarm, AlarmConfig, AlarmInput, Alarms, Severity};
pub use crate::store::{AuditRecord, DeviceFilter};
pub use devices::{Change, CrlConfig, CrlStale, CrlView, Devices, RegistryConfig};
pub use error::{ErrorKind, RegistryError};
pub use ids::{CaId, CertId};
pub use server_certs::{now_unix, rfc3339, ServerCert, ServerCerts, DEFAULT_ID};

thread_local! {
    static ACTOR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `actor` as the principal its audit records name (the
/// admin API sets it per request: `admin-api`, `console:<user>`).
pub fn with_actor<T>(actor: &str, f: impl FnOnce() -> T) -> T {
    let previous = ACTOR.with(|a| a.replace(Some(actor.to_owned())));
    let out = f();
    ACTOR.with(|a| *a.borrow_mut() = previous);
    out
}

/// The principal of the current registry call (`admin-api` by default).
pub fn current_actor() -> String {
    ACTOR
        .with(|a| a.borrow().clone())
        .unwrap_or_else(|| "admin-api".to_string())
}
