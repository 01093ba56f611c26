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

mod devices;
mod error;
mod ids;
mod server_certs;
pub mod store;

pub use crate::store::{AuditRecord, DeviceFilter};
pub use devices::{Change, Devices, RegistryConfig};
pub use error::{ErrorKind, RegistryError};
pub use ids::{CaId, CertId};
pub use server_certs::{now_unix, rfc3339, ServerCert, ServerCerts, DEFAULT_ID};
