//! Registry rules as plain tests: no sockets, no TLS, no external tools —
//! a real SQLite store in a scratch directory, certificates made with
//! rcgen, the single-node `Control` over an empty broker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use certmq_pki::{ConnectAuthorizer, Decision, DeviceStatus, Rejection};
use certmq_registry::{CaId, CertId, Devices, ErrorKind, RegistryConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn registry(tag: &str) -> (Arc<Devices>, Scratch) {
    let dir = std::env::temp_dir().join(format!("certmq-registry-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (node(&dir), Scratch(dir))
}

/// A registry over the store in `dir` (two of them share it as two nodes
/// would share a database).
fn node(dir: &std::path::Path) -> Arc<Devices> {
    let store: Arc<dyn certmq_registry::store::Store> =
        Arc::new(certmq_store::SqliteStore::open(dir).unwrap());
    let control = Arc::new(certmq_net::LocalControl {
        broker: certmq_core::Broker::new(Default::default()),
        live: Arc::new(certmq_net::Live::default()),
    });
    Devices::load(
        store,
        Default::default(),
        control,
        RegistryConfig::default(),
    )
    .unwrap()
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

fn leaf(ca: &Ca, cn: &str) -> rcgen::Certificate {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.signed_by(&key, &ca.cert, &ca.key).unwrap()
}

fn register(d: &Devices, ca: &Ca) -> CaId {
    let (code, _) = d.new_registration_code().unwrap();
    let verification = leaf(ca, &code);
    let rec = d
        .register_ca(&ca.cert.pem(), &verification.pem(), None, None, None)
        .unwrap();
    CaId::parse(&rec.id).unwrap()
}

/// Registers a device certificate through the API path; its id.
fn register_device(d: &Devices, pem: &str) -> CertId {
    CertId::parse(&d.register_device(pem, None, None).unwrap().id).unwrap()
}

#[test]
fn revocation_is_final_across_record_and_ca_deletion() {
    let (d, _dir) = registry("revoke");
    let ca = ca("Rules CA");
    let ca_id = register(&d, &ca);
    let dev = leaf(&ca, "dev");
    let id = register_device(&d, &dev.pem());
    assert!(matches!(
        d.authorize(&[dev.der().as_ref()], "dev"),
        Decision::Allow { .. }
    ));
    d.set_device_status(&id, DeviceStatus::Revoked).unwrap();
    let again = d.set_device_status(&id, DeviceStatus::Active).unwrap_err();
    assert_eq!(
        (again.kind, again.code),
        (ErrorKind::Conflict, "CertificateRevoked")
    );
    d.delete_device(&id).unwrap();
    let reject = |d: &Devices| match d.authorize(&[dev.der().as_ref()], "dev") {
        Decision::Reject { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(reject(&d), Rejection::CertificateRevoked);
    let e = d.register_device(&dev.pem(), None, None).unwrap_err();
    assert_eq!(e.code, "CertificateRevoked");
    // Delete the CA (deactivate first) and register it again.
    let e = d.delete_ca(&ca_id).unwrap_err();
    assert_eq!((e.kind, e.code), (ErrorKind::Conflict, "CaActive"));
    d.set_ca_status(&ca_id, false).unwrap();
    d.delete_ca(&ca_id).unwrap();
    assert_eq!(register(&d, &ca), ca_id);
    assert_eq!(reject(&d), Rejection::CertificateRevoked);
}

#[test]
fn jitp_provisions_once_and_a_ca_is_never_a_device() {
    let (d, _dir) = registry("jitp");
    let ca = ca("JITP CA");
    register(&d, &ca);
    let dev = leaf(&ca, "dev");
    assert!(matches!(
        d.authorize(&[dev.der().as_ref()], "dev"),
        Decision::Provision { activate: true, .. }
    ));
    // The snapshot has it at once: the next CONNECT is allowed, not
    // provisioned again.
    assert!(matches!(
        d.authorize(&[dev.der().as_ref()], "dev"),
        Decision::Allow { .. }
    ));
    // A CA certificate is never a device.
    match d.authorize(&[ca.cert.der().as_ref()], "ca") {
        Decision::Reject { reason, .. } => assert_eq!(reason, Rejection::CertificatePurpose),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_change_written_by_another_node_reaches_this_snapshot_through_apply() {
    let (a, dir) = registry("apply");
    let b = node(&dir.0);
    let ca = ca("Shared CA");
    let ca_id = register(&a, &ca);
    let dev = leaf(&ca, "dev");
    let id = register_device(&a, &dev.pem());
    // B loaded before either write: it knows neither the CA nor the device.
    assert!(matches!(
        b.authorize(&[dev.der().as_ref()], "dev"),
        Decision::Reject { .. }
    ));
    b.apply(certmq_registry::Change::Ca { id: ca_id.clone() })
        .unwrap();
    b.apply(certmq_registry::Change::DeviceStored(
        a.device(&id).unwrap(),
    ))
    .unwrap();
    assert!(matches!(
        b.authorize(&[dev.der().as_ref()], "dev"),
        Decision::Allow { .. }
    ));
    // A revokes; B hears of it and refuses the certificate too.
    a.set_device_status(&id, DeviceStatus::Revoked).unwrap();
    b.apply(certmq_registry::Change::DeviceStored(
        a.device(&id).unwrap(),
    ))
    .unwrap();
    match b.authorize(&[dev.der().as_ref()], "dev") {
        Decision::Reject { reason, .. } => assert_eq!(reason, Rejection::CertificateRevoked),
        other => panic!("{other:?}"),
    }
    // A deactivates the CA: B's snapshot follows.
    a.set_ca_status(&ca_id, false).unwrap();
    b.apply(certmq_registry::Change::Ca { id: ca_id.clone() })
        .unwrap();
    assert_eq!(
        b.snapshot().ca(ca_id.as_str()).map(|c| c.status),
        Some(certmq_pki::CaStatus::Inactive)
    );
}
