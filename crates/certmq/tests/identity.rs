//! Certificate identity, revocation and session ownership that cannot be
//! bypassed (issue 9), against the real binary with certificates made at
//! test time and real clients (the project's rustls client, mosquitto):
//!
//! - a re-encoded certificate (ECDSA `s` replaced by `n - s`: the same
//!   signed content, other bytes) is the same device, and stays revoked;
//!   another certificate with a serial the CA already has is refused; an
//!   outer signature algorithm that differs from the signed one is refused;
//! - a revocation outlives deleting the record, deleting and re-registering
//!   the CA, and a restart;
//! - concurrent revoke and activate never leave a revoked device active;
//! - certificates unfit for client authentication (the seed's server.crt,
//!   the CA itself, keyUsage without digitalSignature) are refused;
//! - a live connection is closed when its certificate expires;
//! - another identity cannot take over or resume a device's session;
//! - a second broker cannot start on a data directory in use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod device_helpers;
mod tls_client;

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use certmq_codec::{Connect, Packet, Properties, Protocol, PubResponse, QoS, ReasonCode};
use common::*;
use device_helpers::*;
use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};
use serde_json::{json, Value};
use tls_client::Failure;

// ---------- DER surgery: the same signed content, other bytes ----------

/// (tag, header length, content length) of the TLV at the start of `b`.
fn tlv(b: &[u8]) -> (u8, usize, usize) {
    let first = b[1];
    if first < 0x80 {
        return (b[0], 2, usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    let len = b[2..2 + n]
        .iter()
        .fold(0usize, |a, x| (a << 8) | usize::from(*x));
    (b[0], 2 + n, len)
}

/// Splits a SEQUENCE's contents into its elements (whole TLVs).
fn elements(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (_, h, l) = tlv(b);
        out.push(&b[..h + l]);
        b = &b[h + l..];
    }
    out
}

fn contents(b: &[u8]) -> &[u8] {
    let (_, h, l) = tlv(b);
    &b[h..h + l]
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match body.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(body);
    out
}

fn integer(mut v: &[u8]) -> Vec<u8> {
    while v.len() > 1 && v[0] == 0 {
        v = &v[1..];
    }
    let mut body = Vec::new();
    if v[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(v);
    der(0x02, &body)
}

/// The order of P-256.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// An ECDSA P-256 certificate with its signature's `s` replaced by
/// `n - s`: the signature still verifies, the bytes (and the SHA-256
/// fingerprint) differ, the signed tbsCertificate is the same.
fn reencode_s(cert: &[u8]) -> Vec<u8> {
    let parts = elements(contents(cert));
    let (tbs, alg, bits) = (parts[0], parts[1], parts[2]);
    let sig = &contents(bits)[1..];
    let rs = elements(contents(sig));
    let s = contents(rs[1]);
    let mut s32 = [0u8; 32];
    let s = &s[s.len().saturating_sub(32)..];
    s32[32 - s.len()..].copy_from_slice(s);
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(P256_N[i]) - i16::from(s32[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    let mut new_sig = rs[0].to_vec();
    new_sig.extend(integer(&out));
    let mut bit_body = vec![0u8];
    bit_body.extend(der(0x30, &new_sig));
    let mut body = tbs.to_vec();
    body.extend_from_slice(alg);
    body.extend(der(0x03, &bit_body));
    der(0x30, &body)
}

/// The certificate with its outer signatureAlgorithm changed to
/// ecdsa-with-SHA384 (the one inside tbsCertificate stays SHA-256).
fn outer_alg_sha384(cert: &[u8]) -> Vec<u8> {
    let parts = elements(contents(cert));
    let alg = der(
        0x30,
        &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]),
    );
    let mut body = parts[0].to_vec();
    body.extend(alg);
    body.extend_from_slice(parts[2]);
    der(0x30, &body)
}

fn pem_of(der: &[u8]) -> String {
    certmq_pki::pem_encode("CERTIFICATE", der)
}

fn der_of(pem: &str) -> Vec<u8> {
    certmq_pki::single_cert_der(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn with_serial(ca: &Ca, cn: &str, serial: &[u8]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serial_number = Some(SerialNumber::from_slice(serial));
    p.not_before = days(-1);
    p.not_after = days(30);
    let c = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (c.pem(), key.serialize_pem())
}

/// `mosquitto_pub` (OpenSSL: it sends the certificate as it is) over
/// mutual TLS with `cert` and `key` files; returns its output.
fn mosquitto_tls(
    b: &BrokerProcess,
    cert: &std::path::Path,
    key: &std::path::Path,
    client_id: &str,
) -> std::process::Output {
    run(
        Command::new("mosquitto_pub").args([
            "-h",
            "localhost",
            "-p",
            &b.port("mqtt-tls"),
            "--cafile",
            b.dir.0.join("tls/default-ca.pem").to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-V",
            "mqttv5",
            "-i",
            client_id,
            "-t",
            "t",
            "-m",
            "m",
        ]),
        LIMIT,
    )
}

/// `certmq serve` again on a kept data directory, every listener on port 0
/// (TLS and WSS with client certificates required, as by default).
fn restart(dir: TempDir) -> BrokerProcess {
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(&dir.0)
        .args(["--listen-tcp", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0"])
        .args(["--listen-tls", "127.0.0.1:0", "--listen-wss", "127.0.0.1:0"])
        .args(["--listen-admin", "127.0.0.1:0"]);
    BrokerProcess::spawn(cmd, dir, 5)
}

// ---------- re-encoding ----------

#[test]
fn a_re_encoded_certificate_is_the_same_device_and_stays_revoked() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let ca = ca("Re-encoding CA");
    let ca_id = register(&api, &ca, json!({}));

    let dev = device(&ca, "dev-a");
    let original = der_of(&dev.0);
    let twin = reencode_s(&original);
    assert_ne!(twin, original);
    let twin_id = (pem_of(&twin), dev.1.clone());
    let original_fp = certmq_pki::fingerprint(&original);
    assert_ne!(certmq_pki::fingerprint(&twin), original_fp);

    // JITP registers the original; its twin is the same device.
    let mut a = mtls(&broker, Some(&dev), "dev-a").unwrap();
    let listed = devices_eventually(&api, &ca_id, 1);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], original_fp.as_str());
    drop(a);
    a = mtls(&broker, Some(&twin_id), "dev-a").expect("the twin is the same ACTIVE device");
    let conns = api.ok("GET", "/connections", None)["items"].clone();
    let c = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "dev-a")
        .unwrap()
        .clone();
    assert_eq!(c["certificate_id"], original_fp.as_str());
    assert_eq!(devices_under(&api, &ca_id).len(), 1, "no second record");

    // Revoking the device closes the twin's connection too.
    api.ok(
        "POST",
        &format!("/device-certificates/{original_fp}/revoke"),
        None,
    );
    assert_eq!(a.disconnected(Duration::from_secs(5)).unwrap(), 0x98);
    expect_refused(&broker, &twin_id, "dev-a", "CERTIFICATE_REVOKED");
    expect_refused(&broker, &dev, "dev-a", "CERTIFICATE_REVOKED");
    assert_eq!(
        devices_under(&api, &ca_id).len(),
        1,
        "not provisioned again"
    );

    // A third-party client (OpenSSL) presenting the re-encoded certificate.
    let w = TempDir::new("twin");
    std::fs::write(w.0.join("twin.crt"), &twin_id.0).unwrap();
    std::fs::write(w.0.join("twin.key"), &twin_id.1).unwrap();
    let out = mosquitto_tls(
        &broker,
        &w.0.join("twin.crt"),
        &w.0.join("twin.key"),
        "dev-a-mosquitto",
    );
    assert!(
        !out.status.success(),
        "mosquitto_pub got in with a revoked twin"
    );
    let r = api.rejections();
    assert_eq!(r[0]["reason"], "CERTIFICATE_REVOKED");
    assert_eq!(r[0]["client_id"], "dev-a-mosquitto");

    // Another certificate with a serial the CA already has.
    let first = with_serial(&ca, "serial-one", &[0x42, 0x42]);
    mtls(&broker, Some(&first), "serial-one").unwrap();
    assert_eq!(devices_eventually(&api, &ca_id, 2).len(), 2);
    let second = with_serial(&ca, "serial-two", &[0x42, 0x42]);
    expect_refused(&broker, &second, "serial-two", "CERTIFICATE_SERIAL_IN_USE");
    assert_eq!(devices_under(&api, &ca_id).len(), 2);
    let (s, v) = api.call(
        "POST",
        "/device-certificates",
        Some(json!({"device_certificate": second.0})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("CertificateSerialInUse"))
    );

    // An outer signature algorithm that differs from the signed one,
    // presented by OpenSSL (which sends the certificate as it is).
    let fresh = device(&ca, "alg");
    let mismatched = outer_alg_sha384(&der_of(&fresh.0));
    std::fs::write(w.0.join("alg.crt"), pem_of(&mismatched)).unwrap();
    std::fs::write(w.0.join("alg.key"), &fresh.1).unwrap();
    let out = mosquitto_tls(&broker, &w.0.join("alg.crt"), &w.0.join("alg.key"), "alg");
    assert!(!out.status.success());
    assert_eq!(api.rejections()[0]["reason"], "CERTIFICATE_ENCODING");
    let (s, v) = api.call(
        "POST",
        "/device-certificates",
        Some(json!({"device_certificate": pem_of(&mismatched)})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("CertificateEncoding"))
    );
    assert_eq!(devices_under(&api, &ca_id).len(), 2);
}

// ---------- revocation is for ever ----------

#[test]
fn a_revocation_outlives_the_record_the_ca_and_a_restart() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let ca = ca("Forever CA");
    let ca_id = register(&api, &ca, json!({}));
    let dev = device(&ca, "dev-r");
    let id = certmq_pki::fingerprint(&der_of(&dev.0));
    mtls(&broker, Some(&dev), "dev-r").unwrap();
    assert_eq!(devices_eventually(&api, &ca_id, 1).len(), 1);
    api.ok("POST", &format!("/device-certificates/{id}/revoke"), None);

    // Delete the record: the certificate stays revoked.
    api.ok("DELETE", &format!("/device-certificates/{id}"), None);
    expect_refused(&broker, &dev, "dev-r", "CERTIFICATE_REVOKED");
    assert!(devices_under(&api, &ca_id).is_empty(), "provisioned again");
    let (s, v) = api.call(
        "POST",
        "/device-certificates",
        Some(json!({"device_certificate": dev.0})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("CertificateRevoked"))
    );
    // Its twin too.
    let twin = (pem_of(&reencode_s(&der_of(&dev.0))), dev.1.clone());
    expect_refused(&broker, &twin, "dev-r", "CERTIFICATE_REVOKED");

    // Delete the CA and register it again.
    api.ok(
        "POST",
        &format!("/ca-certificates/{ca_id}/deactivate"),
        None,
    );
    api.ok("DELETE", &format!("/ca-certificates/{ca_id}"), None);
    let again = register(&api, &ca, json!({}));
    assert_eq!(again, ca_id);
    expect_refused(&broker, &dev, "dev-r", "CERTIFICATE_REVOKED");
    assert!(devices_under(&api, &ca_id).is_empty());
    // A sibling certificate of the same CA is still provisioned.
    let sibling = device(&ca, "dev-s");
    mtls(&broker, Some(&sibling), "dev-s").unwrap();

    // After a restart.
    let (status, dir) = broker.terminate_keep_dir();
    assert!(status.success());
    let broker = restart(dir);
    expect_refused(&broker, &dev, "dev-r", "CERTIFICATE_REVOKED");
    mtls(&broker, Some(&sibling), "dev-s").unwrap();
}

// ---------- concurrent transitions ----------

#[test]
fn concurrent_revoke_and_activate_never_leave_a_revoked_device_active() {
    let broker = BrokerProcess::start(&[]);
    let api = Arc::new(Api::of(&broker));
    let ca = ca("Race CA");
    register(&api, &ca, json!({"device_provisioning": "API"}));
    const DEVICES: usize = 60;
    const ACTIVATORS: usize = 3;
    let certs: Vec<(String, String)> = (0..DEVICES)
        .map(|i| device(&ca, &format!("race-{i}")))
        .collect();
    let ids: Vec<String> = certs
        .iter()
        .map(|c| {
            api.ok(
                "POST",
                "/device-certificates",
                Some(json!({"device_certificate": c.0, "status": "INACTIVE"})),
            )["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut revoked_ok = Vec::new();
    for id in &ids {
        let barrier = Arc::new(Barrier::new(ACTIVATORS + 1));
        let revoke = {
            let (api, id, barrier) = (api.clone(), id.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                api.call("POST", &format!("/device-certificates/{id}/revoke"), None)
                    .0
            })
        };
        let activators: Vec<_> = (0..ACTIVATORS)
            .map(|_| {
                let (api, id, barrier) = (api.clone(), id.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    api.call("POST", &format!("/device-certificates/{id}/activate"), None)
                        .0
                })
            })
            .collect();
        let r = revoke.join().unwrap();
        for a in activators {
            let s = a.join().unwrap();
            assert!(s == 200 || s == 409, "activate answered {s}");
        }
        assert!(r == 200 || r == 409, "revoke answered {r}");
        revoked_ok.push(r == 200);
    }
    for ((id, cert), ok) in ids.iter().zip(&certs).zip(&revoked_ok) {
        let status = api.ok("GET", &format!("/device-certificates/{id}"), None)["status"].clone();
        if *ok {
            assert_eq!(
                status, "REVOKED",
                "revoke answered 200 but {id} is {status}"
            );
            expect_refused(&broker, cert, "race", "CERTIFICATE_REVOKED");
        }
    }
    // Only a revoke that won answers 200 with REVOKED final: every device
    // ends REVOKED (a revoke always wins eventually, nothing can undo it).
    assert!(revoked_ok.iter().all(|ok| *ok));
    // The audit log's "before" of each transition is what the previous
    // transition of that device left.
    let log = api.ok("GET", "/audit-log?limit=1000", None)["items"]
        .as_array()
        .unwrap()
        .clone();
    for id in &ids {
        let mut seen: Vec<&Value> = log
            .iter()
            .filter(|e| e["target"] == id.as_str() && e["before"]["status"].is_string())
            .collect();
        seen.sort_by_key(|e| e["seq"].as_i64());
        for pair in seen.windows(2) {
            assert_eq!(
                pair[1]["before"]["status"], pair[0]["after"]["status"],
                "audit of {id}: {pair:?}"
            );
        }
        let last = seen.last().unwrap();
        assert_eq!(last["after"]["status"], "REVOKED");
    }
}

// ---------- purpose ----------

#[test]
fn certificates_unfit_for_client_authentication_are_refused() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    // The seed's CA and server certificate (EKU serverAuth only), with
    // OpenSSL as the manual pages write it.
    let w = TempDir::new("purpose");
    let d = &w.0;
    seed_ca(d, "/C=CN/ST=ZJ/L=HZ/O=Example/CN=Purpose Root CA");
    let code = api.code();
    openssl(d, &["genrsa", "-out", "VerificationCert.key", "2048"]);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "VerificationCert.key",
            "-out",
            "VerificationCert.csr",
            "-subj",
            &format!("/CN={code}"),
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "VerificationCert.csr",
            "-CA",
            "CA.crt",
            "-CAkey",
            "CA.key",
            "-CAcreateserial",
            "-out",
            "VerificationCert.crt",
            "-days",
            "600",
            "-sha512",
        ],
    );
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let ca_id = api.ok(
        "POST",
        "/ca-certificates",
        Some(json!({"ca_certificate": read("CA.crt"), "verification_certificate": read("VerificationCert.crt")})),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let server = make_server(d, "server", &server_conf(|c| c), Key::Ec);
    for (cert, key, what) in [
        (
            server.join("server.crt"),
            server.join("server.key"),
            "server.crt",
        ),
        (d.join("CA.crt"), d.join("CA.key"), "CA.crt"),
    ] {
        let out = mosquitto_tls(&broker, &cert, &key, "purpose");
        assert!(!out.status.success(), "{what} got in as a device");
        assert_eq!(
            api.rejections()[0]["reason"],
            "CERTIFICATE_PURPOSE",
            "{what}"
        );
        let (s, v) = api.call(
            "POST",
            "/device-certificates",
            Some(json!({"device_certificate": std::fs::read_to_string(&cert).unwrap()})),
        );
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some("CertificatePurpose")),
            "{what}"
        );
    }
    assert!(devices_under(&api, &ca_id).is_empty());

    // rcgen: keyUsage without digitalSignature; then a fit v3 certificate.
    let rca = ca("Purpose rcgen CA");
    register(&api, &rca, json!({}));
    let make = |ku: Vec<rcgen::KeyUsagePurpose>, eku: Vec<rcgen::ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "ku");
        p.key_usages = ku;
        p.extended_key_usages = eku;
        // rcgen writes no extensions for keyUsage alone otherwise.
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        let c = p.signed_by(&key, &rca.cert, &rca.key).unwrap();
        (c.pem(), key.serialize_pem())
    };
    expect_handshake_refused(
        &broker,
        &make(vec![rcgen::KeyUsagePurpose::KeyEncipherment], vec![]),
        "CERTIFICATE_PURPOSE",
    );
    expect_handshake_refused(
        &broker,
        &make(vec![], vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]),
        "CERTIFICATE_PURPOSE",
    );
    mtls(
        &broker,
        Some(&make(
            vec![rcgen::KeyUsagePurpose::DigitalSignature],
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        )),
        "fit",
    )
    .expect("a v3 client certificate connects");
}

// ---------- expiry on a live connection ----------

#[test]
fn a_live_connection_is_closed_when_its_certificate_expires() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let ca = ca("Expiry CA");
    register(&api, &ca, json!({}));
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "short-lived");
    p.not_before = days(-1);
    let not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    p.not_after = not_after;
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let id = (cert.pem(), key.serialize_pem());
    let mut c = mtls(&broker, Some(&id), "short-lived").unwrap();
    let (code, text) = c.disconnect_packet(Duration::from_secs(15)).unwrap();
    let late = time::OffsetDateTime::now_utc() - not_after.replace_nanosecond(0).unwrap();
    assert_eq!(code, 0x98);
    assert_eq!(text.as_deref(), Some("client certificate expired"));
    assert!(
        late >= time::Duration::ZERO && late < time::Duration::milliseconds(1600),
        "closed {late} after not_after"
    );
    expect_handshake_refused(&broker, &id, "CERTIFICATE_EXPIRED");
}

// ---------- sessions belong to their identity ----------

fn persistent(client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: Some(3600),
            ..Default::default()
        },
    }
}

fn connect_as(
    b: &BrokerProcess,
    id: &(String, String),
    connect: Connect,
) -> Result<(tls_client::Client, bool), Failure> {
    let ca = std::fs::read(b.dir.0.join("tls/default-ca.pem")).unwrap();
    let config = tls_client::config(&ca, Some((id.0.as_bytes(), id.1.as_bytes())))?;
    tls_client::connect_packet(b.addr("mqtt-tls"), config, connect)
}

fn mosquitto_anonymous(b: &BrokerProcess, client_id: &str, extra: &[&str]) -> std::process::Output {
    run(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &b.port("mqtt-tcp"), "-V", "mqttv5"])
            .args(["-i", client_id])
            .args(extra),
        LIMIT,
    )
}

#[test]
fn another_identity_cannot_take_over_or_resume_a_devices_session() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let ca = ca("Session CA");
    register(&api, &ca, json!({}));
    let owner = device(&ca, "owner");
    let other = device(&ca, "other");
    let owner_id = certmq_pki::fingerprint(&der_of(&owner.0));
    let other_id = certmq_pki::fingerprint(&der_of(&other.0));

    let (mut a, present) = connect_as(&broker, &owner, persistent("dev-1", true)).unwrap();
    assert!(!present);
    a.send(&Packet::Subscribe(certmq_codec::Subscribe {
        packet_id: 1,
        filters: vec![(
            "cmd/dev-1".into(),
            certmq_codec::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        properties: Properties::default(),
    }))
    .unwrap();
    assert!(matches!(a.recv(LIMIT).unwrap(), Packet::SubAck(_)));

    // While the owner is connected: another certificate of the same CA,
    // and an anonymous client on the loopback TCP listener.
    for clean in [true, false] {
        match connect_as(&broker, &other, persistent("dev-1", clean)) {
            Err(Failure::Refused(0x87)) => {}
            r => panic!("another certificate: {:?}", r.map(|_| "connected")),
        }
        let r = &api.rejections()[0];
        assert_eq!(r["reason"], "CLIENT_ID_IN_USE_BY_ANOTHER_IDENTITY");
        assert_eq!(r["certificate_id"], other_id.as_str());
        assert_eq!(r["client_id"], "dev-1");
    }
    let out = mosquitto_anonymous(&broker, "dev-1", &["-t", "t", "-m", "m"]);
    assert!(
        !out.status.success(),
        "an anonymous client took the session"
    );
    let r = &api.rejections()[0];
    assert_eq!(r["reason"], "CLIENT_ID_IN_USE_BY_ANOTHER_IDENTITY");
    assert!(r["certificate_id"].is_null());
    assert!(a.alive(), "the owner was kicked");

    // The owner goes offline; its session keeps a queued command.
    a.send(&Packet::Disconnect(certmq_codec::Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }))
    .unwrap();
    drop(a);
    let out = mosquitto_anonymous(
        &broker,
        "commander",
        &["-t", "cmd/dev-1", "-m", "open", "-q", "1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match connect_as(&broker, &other, persistent("dev-1", false)) {
        Err(Failure::Refused(0x87)) => {}
        r => panic!("another certificate resumed: {:?}", r.map(|_| "connected")),
    }
    let out = mosquitto_anonymous(&broker, "dev-1", &["-t", "t", "-m", "m", "-c", "-x", "60"]);
    assert!(
        !out.status.success(),
        "an anonymous client resumed the session"
    );

    // The owner resumes and gets its command.
    let (mut a, present) = connect_as(&broker, &owner, persistent("dev-1", false)).unwrap();
    assert!(present, "the owner's session is gone");
    match a.recv(LIMIT).unwrap() {
        Packet::Publish(p) => {
            assert_eq!(&p.payload[..], b"open");
            a.send(&Packet::PubAck(PubResponse {
                packet_id: p.packet_id,
                reason: ReasonCode::SUCCESS,
                properties: Properties::default(),
            }))
            .unwrap();
        }
        p => panic!("expected the queued command, got {}", p.name()),
    }
    let conns = api.ok("GET", "/connections", None)["items"].clone();
    assert!(conns
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["client_id"] == "dev-1" && c["certificate_id"] == owner_id.as_str()));
}

// ---------- one node per data directory ----------

#[test]
fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let first = BrokerProcess::start(&[]);
    let started = Instant::now();
    let out = run(
        Command::new(bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(&first.dir.0)
            .args(["--listen-tcp", "127.0.0.1:0", "--listen-ws", "off"])
            .args(["--listen-tls", "off", "--listen-wss", "off"])
            .args(["--listen-admin", "off"]),
        LIMIT,
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("in use by certmq process {}", first.pid())),
        "{err}"
    );
    assert!(!err.contains("listening protocol="), "{err}");
    // kill -9 leaves the lock file, but not the lock: a restart works.
    let ((), dir) = first.kill9_keep_dir();
    let again = restart(dir);
    assert!(again.addrs.contains_key("mqtt-tls"));
}
