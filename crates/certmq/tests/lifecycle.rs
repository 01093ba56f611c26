//! Certificate lifecycle beyond the clouds (SPEC 14), end to end against
//! the real binary with a PKI made by OpenSSL at test time: device chains
//! through intermediates (mosquitto, paho-mqtt), CRLs made with
//! `openssl ca -gencrl` (live connections closed within 1 s, refusals on
//! TLS and WSS, stale CRLs in both modes), lifecycle events on
//! `$SYS/certmq/events/...` and to a signed webhook on loopback (retried
//! after a 500), alarms for certificates about to expire, and registration
//! findings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod device_helpers;
mod tls_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use device_helpers::{cli, mtls, Api, LIMIT};
use serde_json::{json, Value};

/// A device certificate's extensions (v3, fit for client authentication).
const DEVICE_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";
/// `openssl ca`'s configuration, for `-revoke` and `-gencrl`.
const CA_CNF: &str = "[ ca ]\ndefault_ca = CA_default\n[ CA_default ]\ndir = .\ndatabase = index.txt\n\
new_certs_dir = .\ncertificate = CA.crt\nprivate_key = CA.key\nserial = CA.srl\ncrlnumber = crlnumber\n\
default_md = sha256\ndefault_crl_days = 7\npolicy = any\n[ any ]\ncommonName = supplied\n";

/// The CA manual page's root (`CA.key`, `CA.crt`) in `d`, registered with a
/// verification certificate made as the page says; returns the CA id.
fn register_root(broker: &BrokerProcess, d: &Path, subject: &str) -> String {
    seed_ca(d, subject);
    std::fs::write(d.join("dev.ext"), DEVICE_EXT).unwrap();
    std::fs::write(d.join("ca.cnf"), CA_CNF).unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("crlnumber"), "1000\n").unwrap();
    let code = String::from_utf8(cli(broker, &["ca", "registration-code"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    openssl(d, &["genrsa", "-out", "v.key", "2048"]);
    let subj = format!("/CN={code}");
    openssl(
        d,
        &[
            "req", "-new", "-key", "v.key", "-out", "v.csr", "-subj", &subj,
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "v.csr",
            "-CA",
            "CA.crt",
            "-CAkey",
            "CA.key",
            "-CAcreateserial",
            "-out",
            "v.crt",
            "-days",
            "500",
            "-sha256",
        ],
    );
    let out = cli(
        broker,
        &[
            "ca",
            "register",
            "--ca",
            d.join("CA.crt").to_str().unwrap(),
            "--verification",
            d.join("v.crt").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "register: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["warnings"].is_array(), "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Issues `<name>.crt` (and `<name>.key`) in `d`, signed by
/// `<issuer>.crt`/`<issuer>.key`, with `serial` (hex) and the extensions
/// of `ext`: `Some("v3_ca")` for an intermediate, `Some("device")` for a
/// device, None for an X.509 v1 certificate.
fn issue(
    d: &Path,
    name: &str,
    cn: &str,
    issuer: &str,
    serial: &str,
    days: &str,
    ext: Option<&str>,
) {
    openssl(d, &["genrsa", "-out", &format!("{name}.key"), "2048"]);
    let subj = format!("/O=Lifecycle/CN={cn}");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &subj,
        ],
    );
    let mut args: Vec<String> = [
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        &format!("{issuer}.crt"),
        "-CAkey",
        &format!("{issuer}.key"),
        "-set_serial",
        &format!("0x{serial}"),
        "-days",
        days,
        "-sha256",
        "-out",
        &format!("{name}.crt"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match ext {
        Some("device") => args.extend(["-extfile".into(), "dev.ext".into()]),
        Some(section) => args.extend([
            "-extfile".into(),
            "/etc/ssl/openssl.cnf".into(),
            "-extensions".into(),
            section.into(),
        ]),
        None => {}
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(d, &args);
}

/// `<name>-chain.crt`: the device's certificate, then its intermediates.
fn chain(d: &Path, name: &str, intermediates: &[&str]) -> std::path::PathBuf {
    let mut pem = std::fs::read_to_string(d.join(format!("{name}.crt"))).unwrap();
    for i in intermediates {
        pem.push_str(&std::fs::read_to_string(d.join(format!("{i}.crt"))).unwrap());
    }
    let path = d.join(format!("{name}-chain.crt"));
    std::fs::write(&path, pem).unwrap();
    path
}

/// mosquitto_pub over TLS with a certificate file (maybe a chain).
fn mosquitto_pub(broker: &BrokerProcess, cert: &Path, key: &Path, client_id: &str) -> bool {
    run(
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "localhost",
                "-p",
                &broker.port("mqtt-tls"),
                "-i",
                client_id,
            ])
            .args(["-t", "lifecycle/t", "-m", "x", "-q", "1", "--cafile"])
            .arg(broker.dir.0.join("tls/default-ca.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key),
        LIMIT,
    )
    .status
    .success()
}

fn pem_pair(d: &Path, cert: &str, key: &str) -> (String, String) {
    (
        std::fs::read_to_string(d.join(cert)).unwrap(),
        std::fs::read_to_string(d.join(key)).unwrap(),
    )
}

/// The newest refusal with `reason` on `listener`, waiting a little (the
/// handshake's refusal is recorded as the socket closes).
fn refused_with(api: &Api, listener: &str, reason: &str) -> Value {
    for _ in 0..100 {
        if let Some(r) = api
            .rejections()
            .into_iter()
            .find(|r| r["reason"] == reason && r["listener"] == listener)
        {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {reason} refusal on {listener}: {:?}", api.rejections());
}

/// The first active alarm `pick` accepts, waiting up to 10 s for it (the
/// alarm task runs every 2 s).
fn alarm_eventually(api: &Api, pick: impl Fn(&Value) -> bool) -> Option<Value> {
    (0..100).find_map(|_| {
        let found = api.ok("GET", "/alarms", None)["items"]
            .as_array()
            .and_then(|a| a.iter().find(|a| pick(a)).cloned());
        if found.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        found
    })
}

/// MQTT.js over WSS with a device certificate (`tests/interop/mqttjs/wss.mjs`).
fn mqttjs_wss(broker: &BrokerProcess, cert: &Path, key: &Path) -> std::process::Output {
    let js = repo_root().join("tests/interop/mqttjs");
    assert!(
        js.join("node_modules/mqtt").exists(),
        "MQTT.js is not installed: run scripts/test"
    );
    run(
        Command::new("node")
            .arg(js.join("wss.mjs"))
            .arg(format!("wss://localhost:{}/mqtt", broker.port("mqtt-wss")))
            .arg(broker.dir.0.join("tls/default-ca.pem"))
            .arg(cert)
            .arg(key),
        LIMIT,
    )
}

/// `certmq ca crl CA --file FILE [--json]`.
fn upload_crl(
    broker: &BrokerProcess,
    ca_id: &str,
    file: &Path,
    json: bool,
) -> std::process::Output {
    let mut args = vec!["ca", "crl", ca_id, "--file", file.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    cli(broker, &args)
}

#[test]
fn device_chains_through_intermediates_with_mosquitto_and_paho() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let w = TempDir::new("lc-chain");
    let d = &w.0;
    let ca_id = register_root(&broker, d, "/O=Lifecycle/CN=Lifecycle Root");
    // root -> intermediate -> device, as a real PKI issues them.
    issue(
        d,
        "int",
        "Lifecycle Intermediate",
        "CA",
        "1001",
        "365",
        Some("v3_ca"),
    );
    issue(
        d,
        "dev",
        "chained-device",
        "int",
        "2001",
        "90",
        Some("device"),
    );
    let dev_chain = chain(d, "dev", &["int"]);
    assert!(
        mosquitto_pub(&broker, &dev_chain, &d.join("dev.key"), "chained-device"),
        "mosquitto_pub with the device and its intermediate"
    );
    // Listed under the registered root, with its intermediate.
    let list = device_helpers::devices_eventually(&api, &ca_id, 1);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["subject_cn"], "chained-device");
    assert_eq!(list[0]["intermediates"][0]["serial_number"], "1001");
    assert_eq!(
        list[0]["intermediates"][0]["subject_cn"],
        "Lifecycle Intermediate"
    );
    // paho-mqtt with the same files (a second device, two intermediates).
    issue(
        d,
        "int2",
        "Lifecycle Issuing CA",
        "int",
        "1002",
        "365",
        Some("v3_ca"),
    );
    issue(
        d,
        "dev2",
        "paho-chained",
        "int2",
        "2002",
        "90",
        Some("device"),
    );
    let dev2_chain = chain(d, "dev2", &["int2", "int"]);
    let paho = format!(
        "import ssl, sys, paho.mqtt.client as m\n\
         c = m.Client(m.CallbackAPIVersion.VERSION2, client_id='paho-chained', protocol=m.MQTTv5)\n\
         c.tls_set(ca_certs='{}', certfile='{}', keyfile='{}')\n\
         c.connect('localhost', {})\n\
         c.loop_start(); i = c.publish('lifecycle/paho', b'x', qos=1); i.wait_for_publish(10); c.disconnect(); c.loop_stop()\n\
         sys.exit(0 if i.is_published() else 1)\n",
        broker.dir.0.join("tls/default-ca.pem").display(),
        dev2_chain.display(),
        d.join("dev2.key").display(),
        broker.port("mqtt-tls"),
    );
    let out = run(Command::new("python3").args(["-c", &paho]), LIMIT);
    assert!(
        out.status.success(),
        "paho-mqtt with a chain of two intermediates: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = device_helpers::devices_eventually(&api, &ca_id, 2);
    let paho_dev = list
        .iter()
        .find(|v| v["subject_cn"] == "paho-chained")
        .expect("paho's device listed under the root");
    assert_eq!(paho_dev["intermediates"].as_array().unwrap().len(), 2);

    // A new device without its intermediate chains to nothing registered.
    issue(d, "dev6", "lone-leaf", "int", "2006", "90", Some("device"));
    assert!(!mosquitto_pub(
        &broker,
        &d.join("dev6.crt"),
        &d.join("dev6.key"),
        "lone-leaf"
    ));
    refused_with(&api, "mqtt-tls", "UNKNOWN_CA");
    // An "intermediate" that is not a CA (X.509 v1, no basicConstraints).
    issue(d, "fake", "Not A CA", "CA", "1003", "365", None);
    issue(
        d,
        "dev3",
        "under-fake",
        "fake",
        "2003",
        "90",
        Some("device"),
    );
    let dev3_chain = chain(d, "dev3", &["fake"]);
    assert!(!mosquitto_pub(
        &broker,
        &dev3_chain,
        &d.join("dev3.key"),
        "under-fake"
    ));
    refused_with(&api, "mqtt-tls", "INTERMEDIATE_INVALID");
    // An intermediate past its validity.
    openssl(d, &["genrsa", "-out", "old.key", "2048"]);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "old.key",
            "-out",
            "old.csr",
            "-subj",
            "/CN=Old Intermediate",
        ],
    );
    openssl(
        d,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-batch",
            "-notext",
            "-in",
            "old.csr",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20210101000000Z",
            "-extfile",
            "/etc/ssl/openssl.cnf",
            "-extensions",
            "v3_ca",
            "-out",
            "old.crt",
        ],
    );
    issue(d, "dev4", "under-old", "old", "2004", "90", Some("device"));
    let dev4_chain = chain(d, "dev4", &["old"]);
    assert!(!mosquitto_pub(
        &broker,
        &dev4_chain,
        &d.join("dev4.key"),
        "under-old"
    ));
    refused_with(&api, "mqtt-tls", "INTERMEDIATE_EXPIRED");

    // Registered through the API with its chain (device first).
    issue(
        d,
        "dev5",
        "api-chained",
        "int",
        "2005",
        "90",
        Some("device"),
    );
    let pem = std::fs::read_to_string(chain(d, "dev5", &["int"])).unwrap();
    let v = api.ok(
        "POST",
        "/device-certificates",
        Some(json!({"device_certificate": pem, "client_id": "api-chained"})),
    );
    assert_eq!(v["ca_id"], ca_id.as_str());
    assert_eq!(v["intermediates"][0]["serial_number"], "1001");
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
    // ... and the leaf alone is refused with a reason.
    let leaf = std::fs::read_to_string(d.join("dev6.crt")).unwrap();
    let (status, v) = api.call(
        "POST",
        "/device-certificates",
        Some(json!({"device_certificate": leaf})),
    );
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "CertificateNotAccepted", "{v}");

    // Registration findings: a CA signed with SHA-1 is accepted, with a warning.
    let w2 = TempDir::new("lc-sha1");
    let d2 = &w2.0;
    openssl(d2, &["genrsa", "-out", "CA.key", "2048"]);
    openssl(
        d2,
        &[
            "req",
            "-new",
            "-key",
            "CA.key",
            "-out",
            "CA.csr",
            "-subj",
            "/CN=Old SHA-1 Root",
        ],
    );
    openssl(
        d2,
        &[
            "x509",
            "-req",
            "-extfile",
            "/etc/ssl/openssl.cnf",
            "-extensions",
            "v3_ca",
            "-in",
            "CA.csr",
            "-out",
            "CA.crt",
            "-signkey",
            "CA.key",
            "-days",
            "3650",
            "-sha1",
        ],
    );
    let code = api.code();
    openssl(d2, &["genrsa", "-out", "v.key", "2048"]);
    openssl(
        d2,
        &[
            "req",
            "-new",
            "-key",
            "v.key",
            "-out",
            "v.csr",
            "-subj",
            &format!("/CN={code}"),
        ],
    );
    openssl(
        d2,
        &[
            "x509",
            "-req",
            "-in",
            "v.csr",
            "-CA",
            "CA.crt",
            "-CAkey",
            "CA.key",
            "-CAcreateserial",
            "-out",
            "v.crt",
            "-days",
            "30",
            "-sha256",
        ],
    );
    let out = cli(
        &broker,
        &[
            "ca",
            "register",
            "--ca",
            d2.join("CA.crt").to_str().unwrap(),
            "--verification",
            d2.join("v.crt").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: SHA1_SIGNATURE"),
        "the CLI shows the finding: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crls_close_live_connections_and_refuse_on_tls_and_wss() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let w = TempDir::new("lc-crl");
    let d = &w.0;
    let ca_id = register_root(&broker, d, "/O=Lifecycle/CN=CRL Root");
    issue(
        d,
        "direct",
        "direct-device",
        "CA",
        "3001",
        "90",
        Some("device"),
    );
    issue(
        d,
        "int",
        "CRL Intermediate",
        "CA",
        "1001",
        "365",
        Some("v3_ca"),
    );
    issue(
        d,
        "via",
        "via-intermediate",
        "int",
        "3002",
        "90",
        Some("device"),
    );
    issue(d, "keep", "kept-device", "CA", "3003", "90", Some("device"));
    chain(d, "via", &["int"]);
    let direct = pem_pair(d, "direct.crt", "direct.key");
    let via = pem_pair(d, "via-chain.crt", "via.key");
    let keep = pem_pair(d, "keep.crt", "keep.key");
    let mut c_direct = mtls(&broker, Some(&direct), "direct-device").unwrap();
    let mut c_via = mtls(&broker, Some(&via), "via-intermediate").unwrap();
    let mut c_keep = mtls(&broker, Some(&keep), "kept-device").unwrap();

    // The CA revokes the direct device and the intermediate (so every
    // device under it); OpenSSL writes the CRL.
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "direct.crt"]);
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "int.crt"]);
    openssl(
        d,
        &["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"],
    );
    let t0 = Instant::now();
    let out = upload_crl(&broker, &ca_id, &d.join("crl.pem"), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["revoked_count"], 2, "{v}");
    assert_eq!(v["issuer_cn"], "CRL Root");
    assert_eq!(v["stale"], false);
    for (name, c) in [("direct", &mut c_direct), ("via intermediate", &mut c_via)] {
        let (reason, _) = c
            .disconnect_packet(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(reason, 0x98, "{name}");
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{name}: closed {:?} after the CRL",
            t0.elapsed()
        );
    }
    assert!(c_keep.alive(), "a device the CRL does not list stays");

    // Reconnecting is refused at the handshake, on TLS ...
    assert!(!mosquitto_pub(
        &broker,
        &d.join("direct.crt"),
        &d.join("direct.key"),
        "direct-device"
    ));
    let r = refused_with(&api, "mqtt-tls", "CERTIFICATE_REVOKED_BY_CRL");
    assert_eq!(r["ca_id"], ca_id.as_str(), "recorded with its CA: {r}");
    assert_eq!(
        r["certificate_id"].as_str().map(str::len),
        Some(64),
        "recorded with the certificate's id: {r}"
    );
    // ... and on WSS (MQTT.js).
    let out = mqttjs_wss(&broker, &d.join("via-chain.crt"), &d.join("via.key"));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("error"),
        "MQTT.js over WSS must be refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused_with(&api, "mqtt-wss", "CERTIFICATE_REVOKED_BY_CRL");
    // A device the CRL does not list still connects over WSS.
    let out = mqttjs_wss(&broker, &d.join("keep.crt"), &d.join("keep.key"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same CRL as DER is the same CRL; GET shows it.
    openssl(
        d,
        &[
            "crl", "-in", "crl.pem", "-outform", "DER", "-out", "crl.der",
        ],
    );
    let out = upload_crl(&broker, &ca_id, &d.join("crl.der"), false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = api.ok("GET", &format!("/ca-certificates/{ca_id}/crl"), None);
    assert_eq!(v["revoked_count"], 2);
    assert_eq!(v["source"], "API");
    // An older CRL never replaces a newer one.
    openssl(
        d,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-gencrl",
            "-crl_lastupdate",
            "20240101000000Z",
            "-crl_nextupdate",
            "20240108000000Z",
            "-out",
            "old.pem",
        ],
    );
    let out = upload_crl(&broker, &ca_id, &d.join("old.pem"), false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CrlOlder"));
    // A CRL another CA signed is refused; so is garbage.
    let other = TempDir::new("lc-crl-other");
    seed_ca(&other.0, "/O=Lifecycle/CN=CRL Root");
    std::fs::write(other.0.join("ca.cnf"), CA_CNF).unwrap();
    std::fs::write(other.0.join("index.txt"), "").unwrap();
    std::fs::write(other.0.join("crlnumber"), "2000\n").unwrap();
    openssl(
        &other.0,
        &["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"],
    );
    let out = upload_crl(&broker, &ca_id, &other.0.join("crl.pem"), false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CrlBadSignature"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = upload_crl(&broker, &ca_id, &d.join("CA.crt"), false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidCrl"));
    // Too large: refused in the API's error format (the broker answers once
    // the limit is passed and closes; the rest of the body is not read, so
    // the sender's write may fail).
    let mut s = std::net::TcpStream::connect(broker.addr("admin-http")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let (token, path) = (
        api.token.clone(),
        format!("/api/v1/ca-certificates/{ca_id}/crl"),
    );
    let sender = std::thread::spawn(move || {
        let head = format!(
            "PUT {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
             content-type: application/pkix-crl\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            4 * 1024 * 1024 + 1024
        );
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&vec![0u8; 4 * 1024 * 1024 + 1024]);
    });
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let _ = sender.join();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"CrlTooLarge\""), "{answer}");
    // A newer CRL without the direct device lets it in again.
    // (openssl ca keeps revocations; a CRL without them is made from a
    // fresh database.)
    std::fs::write(d.join("index.txt"), "").unwrap();
    openssl(
        d,
        &["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl2.pem"],
    );
    let out = upload_crl(&broker, &ca_id, &d.join("crl2.pem"), false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mosquitto_pub(
        &broker,
        &d.join("direct.crt"),
        &d.join("direct.key"),
        "direct-device"
    ));
}

/// A CA whose CRL is past its next update, under `[crl] stale = mode`.
fn stale_crl(mode: &str) {
    let w = TempDir::new("lc-stale");
    let d = &w.0;
    let config = d.join("certmq.toml");
    std::fs::write(&config, format!("[crl]\nstale = \"{mode}\"\n")).unwrap();
    let broker = BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    let api = Api::of(&broker);
    let ca_id = register_root(&broker, d, "/O=Lifecycle/CN=Stale Root");
    issue(d, "dev", "stale-device", "CA", "4001", "90", Some("device"));
    openssl(
        d,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-gencrl",
            "-crl_lastupdate",
            "20250101000000Z",
            "-crl_nextupdate",
            "20250108000000Z",
            "-out",
            "stale.pem",
        ],
    );
    let out = upload_crl(&broker, &ca_id, &d.join("stale.pem"), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stale"], true);
    let connected = mosquitto_pub(
        &broker,
        &d.join("dev.crt"),
        &d.join("dev.key"),
        "stale-device",
    );
    let alarm = alarm_eventually(&api, |a| a["kind"] == "crl_stale").expect("a crl_stale alarm");
    assert_eq!(alarm["subject"], format!("ca:{ca_id}"));
    if mode == "fail-open" {
        assert!(connected, "fail-open admits the CA's devices");
        assert_eq!(alarm["severity"], "major");
        // SIGHUP switches the mode without a restart.
        std::fs::write(&config, "[crl]\nstale = \"fail-closed\"\n").unwrap();
        let ok = Command::new("kill")
            .args(["-HUP", &broker.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let reloaded = (0..200).any(|_| {
            while let Ok(line) = broker.log.recv_timeout(Duration::from_millis(50)) {
                if line.contains("SIGHUP: configuration reloaded") && line.contains("crl.stale") {
                    return true;
                }
            }
            false
        });
        assert!(reloaded, "SIGHUP applies crl.stale");
        assert!(!mosquitto_pub(
            &broker,
            &d.join("dev.crt"),
            &d.join("dev.key"),
            "stale-device"
        ));
        refused_with(&api, "mqtt-tls", "CRL_STALE");
    } else {
        assert!(!connected, "fail-closed refuses them");
        refused_with(&api, "mqtt-tls", "CRL_STALE");
        assert_eq!(alarm["severity"], "critical");
    }
    assert!(api.metric("certmq_alarms_active{kind=\"crl_stale\"}") >= 1.0);
}

#[test]
fn a_stale_crl_fails_open_with_an_alarm() {
    stale_crl("fail-open");
}

#[test]
fn a_stale_crl_fails_closed_when_configured() {
    stale_crl("fail-closed");
}

/// A webhook receiver on loopback: answers 500 to the first request and
/// 200 to the rest; hands over (headers, body) of each.
/// One request a webhook receiver got: its headers (lower-case names) and body.
type Hooked = (Vec<(String, String)>, Vec<u8>);

fn webhook_receiver() -> (u16, mpsc::Receiver<Hooked>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.trim().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = s.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
            if tx.send((headers, body)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn events_reach_mqtt_subscribers_and_signed_webhooks_and_alarms_warn_of_expiry() {
    const SECRET: &str = "lifecycle-webhook-secret";
    let (port, hooks) = webhook_receiver();
    let w = TempDir::new("lc-events");
    let d = &w.0;
    let config = d.join("certmq.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nurl = \"http://127.0.0.1:{port}/certmq\"\nsecret = \"{SECRET}\"\n\
             events = [\"ca.*\", \"device.*\", \"certificate.expiring\"]\nretry_initial_ms = 100\n"
        ),
    )
    .unwrap();
    let broker = BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    let api = Api::of(&broker);
    // Events are readable only where a policy allows.
    api.ok(
        "POST",
        "/policies",
        Some(
            json!({"id": "ops-events", "priority": 10, "effect": "allow",
            "actions": ["subscribe"], "topics": ["$SYS/certmq/events/#"], "client_ids": ["ops-*"]}),
        ),
    );
    let tcp = broker.port("mqtt-tcp");
    let denied = run(
        Command::new("mosquitto_sub")
            .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", &tcp, "-i", "nosy"])
            .args(["-t", "$SYS/certmq/events/#", "-d", "-W", "2"]),
        LIMIT,
    );
    assert!(
        String::from_utf8_lossy(&denied.stdout).contains("Subscribed (mid: 1): 135"),
        "a subscriber without a policy is refused (0x87): {}",
        String::from_utf8_lossy(&denied.stdout)
    );
    let mut sub = spawn_piped(
        Command::new("mosquitto_sub")
            .args([
                "-V",
                "mqttv5",
                "-h",
                "127.0.0.1",
                "-p",
                &tcp,
                "-i",
                "ops-1",
                "-q",
                "1",
            ])
            .args(["-t", "$SYS/certmq/events/#", "-v", "-W", "60"]),
    );
    let events = stdout_lines(&mut sub);
    // Its SUBSCRIBE follows its CONNECT; what follows takes longer.
    for _ in 0..250 {
        let c = api.ok("GET", "/connections", None);
        if c["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == "ops-1")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Nobody may publish there without a policy: no forged events.
    let forged = run(
        Command::new("mosquitto_pub")
            .args([
                "-V",
                "mqttv5",
                "-h",
                "127.0.0.1",
                "-p",
                &tcp,
                "-i",
                "forger",
                "-q",
                "1",
            ])
            .args([
                "-t",
                "$SYS/certmq/events/ca.registered",
                "-m",
                "forged",
                "-d",
            ]),
        LIMIT,
    );
    assert!(
        String::from_utf8_lossy(&forged.stdout).contains("RC:135"),
        "a forged event is refused (PUBACK 0x87): {}",
        String::from_utf8_lossy(&forged.stdout)
    );
    let ca_id = register_root(&broker, d, "/O=Lifecycle/CN=Events Root");
    issue(d, "soon", "expires-soon", "CA", "5001", "2", Some("device"));
    assert!(mosquitto_pub(
        &broker,
        &d.join("soon.crt"),
        &d.join("soon.key"),
        "expires-soon"
    ));
    // MQTT: every kind, with its data.
    let mut seen: Vec<(String, Value)> = Vec::new();
    let wait_for = |wanted: &[&str], seen: &mut Vec<(String, Value)>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !wanted
            .iter()
            .all(|k| seen.iter().any(|(t, _)| t.ends_with(k)))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = events.recv_timeout(left) else {
                panic!(
                    "events seen: {:?}",
                    seen.iter().map(|s| &s.0).collect::<Vec<_>>()
                );
            };
            let (topic, body) = line.split_once(' ').unwrap();
            seen.push((topic.to_string(), serde_json::from_str(body).unwrap()));
        }
    };
    // Registered, and expiring within 7 days (the alarm task's next round).
    wait_for(
        &["ca.registered", "device.registered", "certificate.expiring"],
        &mut seen,
    );
    let dev = device_helpers::devices_eventually(&api, &ca_id, 1);
    let dev_id = dev[0]["id"].as_str().unwrap().to_string();
    api.ok(
        "POST",
        &format!("/device-certificates/{dev_id}/revoke"),
        None,
    );
    assert!(!mosquitto_pub(
        &broker,
        &d.join("soon.crt"),
        &d.join("soon.key"),
        "expires-soon"
    ));
    wait_for(&["device.revoked", "connection.refused"], &mut seen);
    let get = |k: &str| {
        seen.iter()
            .find(|(t, _)| t == &format!("$SYS/certmq/events/{k}"))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("ca.registered")["data"]["id"], ca_id.as_str());
    assert_eq!(get("device.registered")["data"]["source"], "JITP");
    assert_eq!(get("device.revoked")["data"]["id"], dev_id.as_str());
    assert_eq!(
        get("connection.refused")["data"]["reason"],
        "CERTIFICATE_REVOKED"
    );
    let expiring = get("certificate.expiring");
    assert_eq!(expiring["data"]["id"], dev_id.as_str());
    assert_eq!(expiring["data"]["window_days"], 7);
    let _ = sub.kill();
    let _ = sub.wait();

    // The alarm for the device expiring in 2 days ... (revoked now: gone)
    // is shown while it lasts; a second device keeps one.
    issue(
        d,
        "soon2",
        "expires-soon-too",
        "CA",
        "5002",
        "2",
        Some("device"),
    );
    assert!(mosquitto_pub(
        &broker,
        &d.join("soon2.crt"),
        &d.join("soon2.key"),
        "expires-soon-too"
    ));
    let alarm = alarm_eventually(&api, |a| {
        a["kind"] == "certificate_expiring" && a["details"]["name"] == "expires-soon-too"
    })
    .expect("an alarm for the certificate expiring in 2 days");
    assert_eq!(alarm["severity"], "major");
    assert_eq!(alarm["details"]["window_days"], 7);
    assert!(
        api.ok("GET", "/alarms", None)["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["details"]["name"] != "expires-soon"),
        "a revoked certificate raises no expiry alarm"
    );
    let out = cli(&broker, &["alarms"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("expires-soon-too"));
    assert!(api.metric("certmq_alarms_active{kind=\"certificate_expiring\"}") >= 1.0);

    // Webhooks: signed, the first answer (500) retried, filtered by kind.
    let mut got: Vec<Hooked> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !["ca.registered", "device.revoked", "certificate.expiring"]
        .iter()
        .all(|k| {
            got.iter()
                .any(|(h, _)| h.iter().any(|(n, v)| n == "x-certmq-event" && v == k))
        })
    {
        let left = deadline.saturating_duration_since(Instant::now());
        got.push(hooks.recv_timeout(left).expect("webhook deliveries"));
    }
    let header = |h: &[(String, String)], n: &str| {
        h.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for (h, body) in &got {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(header(h, "x-certmq-signature"), format!("sha256={hex}"));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["kind"], header(h, "x-certmq-event").as_str());
        assert_ne!(
            header(h, "x-certmq-event"),
            "connection.refused",
            "filtered out"
        );
    }
    let first = &got[0];
    let again = &got[1];
    assert_eq!(header(&first.0, "x-certmq-attempt"), "1");
    assert_eq!(
        header(&again.0, "x-certmq-delivery"),
        header(&first.0, "x-certmq-delivery"),
        "the delivery answered 500 is retried"
    );
    assert_eq!(header(&again.0, "x-certmq-attempt"), "2");
    assert!(
        api.metric(&format!(
            "certmq_webhook_failed_attempts_total{{url=\"http://127.0.0.1:{port}/certmq\"}}"
        )) >= 1.0
    );
}

#[test]
fn binding_reports_findings_long_validity_and_uncovered_host_names() {
    let w = TempDir::new("lc-findings");
    let d = &w.0;
    let config = d.join("certmq.toml");
    std::fs::write(
        &config,
        "[tls]\nserver_names = [\"mqtt.example.com\", \"broker.example.net\"]\n",
    )
    .unwrap();
    let broker = BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    seed_ca(d, "/O=Lifecycle/CN=Findings Root");
    let dir = make_server(d, "long", &server_conf(|c| c), Key::Ec);
    // Valid for 1000 days: more than the 825 clients accept.
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "CA.crt",
            "-CAkey",
            "CA.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1000",
            "-sha256",
            "-extensions",
            "v3_req",
            "-extfile",
            "server.conf",
        ],
    );
    let out = cli(
        &broker,
        &[
            "server-cert",
            "bind",
            "--chain",
            dir.join("server.crt").to_str().unwrap(),
            "--key",
            dir.join("server.key").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["LONG_VALIDITY", "SAN_DOES_NOT_COVER_HOST"], "{v}");
    let san = &v["warnings"][1]["message"];
    assert!(
        san.as_str().unwrap().contains("broker.example.net")
            && !san.as_str().unwrap().contains("mqtt.example.com"),
        "{san}"
    );
    // The human output says so too (stderr, one line each).
    let dir2 = make_server(d, "fine", &server_conf(|c| c), Key::Ec);
    let out = cli(
        &broker,
        &[
            "server-cert",
            "bind",
            "--chain",
            dir2.join("server.chain.crt").to_str().unwrap(),
            "--key",
            dir2.join("server.key").to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: SAN_DOES_NOT_COVER_HOST") && !err.contains("LONG_VALIDITY"),
        "{err}"
    );
}

/// Serves whatever `body` holds to every GET, on loopback.
fn crl_server(body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let b = body.lock().unwrap().clone();
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/pkix-crl\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            );
            let _ = s.write_all(&b);
        }
    });
    port
}

#[test]
fn a_crl_distribution_url_is_fetched_and_enforced() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let w = TempDir::new("lc-crl-url");
    let d = &w.0;
    let ca_id = register_root(&broker, d, "/O=Lifecycle/CN=Fetched CRL Root");
    issue(
        d,
        "dev",
        "fetched-device",
        "CA",
        "6001",
        "90",
        Some("device"),
    );
    let mut c = mtls(
        &broker,
        Some(&pem_pair(d, "dev.crt", "dev.key")),
        "fetched-device",
    )
    .unwrap();
    // Where the CA publishes its CRL (DER, as CDP URLs usually serve it).
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "dev.crt"]);
    openssl(
        d,
        &["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"],
    );
    openssl(
        d,
        &[
            "crl", "-in", "crl.pem", "-outform", "DER", "-out", "crl.der",
        ],
    );
    let body = std::sync::Arc::new(std::sync::Mutex::new(
        std::fs::read(d.join("crl.der")).unwrap(),
    ));
    let port = crl_server(body);
    let url = format!("http://127.0.0.1:{port}/root.crl");
    let out = cli(
        &broker,
        &["ca", "update", &ca_id, "--crl-url", &url, "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["crl_url"], url.as_str());
    // Fetched within the fetcher's round (2 s), and enforced on the live
    // connection.
    let (reason, _) = c.disconnect_packet(Duration::from_secs(10)).unwrap();
    assert_eq!(reason, 0x98);
    let v = api.ok("GET", &format!("/ca-certificates/{ca_id}/crl"), None);
    assert_eq!(v["source"], url.as_str());
    assert_eq!(v["revoked_count"], 1);
    // A URL that answers nothing raises an alarm; clearing it ends the alarm.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!(
        "http://127.0.0.1:{}/gone.crl",
        dead.local_addr().unwrap().port()
    );
    drop(dead);
    let out = cli(&broker, &["ca", "update", &ca_id, "--crl-url", &dead_url]);
    assert!(out.status.success());
    assert!(
        alarm_eventually(&api, |a| a["kind"] == "crl_fetch_failed").is_some(),
        "a crl_fetch_failed alarm"
    );
    let out = cli(&broker, &["ca", "update", &ca_id, "--no-crl-url"]);
    assert!(out.status.success());
    let cleared = (0..100).any(|_| {
        let fetch_failed = |a: &Value| a["kind"] == "crl_fetch_failed";
        let active = api.ok("GET", "/alarms", None)["items"]
            .as_array()
            .is_some_and(|l| l.iter().any(fetch_failed));
        if active {
            std::thread::sleep(Duration::from_millis(100));
        }
        !active
    });
    assert!(cleared, "the alarm clears once the URL is removed");
}
