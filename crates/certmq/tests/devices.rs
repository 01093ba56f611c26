//! CA registration with proof of possession, device certificates and
//! mutual TLS, end to end against the real binary: the CA manual page's
//! OpenSSL commands with certmq's CLI in place of the console, mosquitto and
//! paho-mqtt with device certificates, the bad-certificate matrix (each
//! refusal recorded with its reason, other clients unaffected), the delete
//! rules, JITP, and live enforcement measured against the 1-second bound.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod device_helpers;
mod tls_client;

use std::process::Command;
use std::time::{Duration, Instant};

use certmq_codec::Protocol;
use common::*;
use device_helpers::*;
use rcgen::KeyPair;
use serde_json::{json, Value};
use tls_client::Failure;

// ---------- the manual page ----------

#[test]
fn manual_page_flow_with_openssl_mosquitto_and_paho() {
    let broker = BrokerProcess::start(&[]);
    let w = TempDir::new("seed-ca");
    let d = &w.0;
    // Step 2-5: the CA (subject on the line instead of the prompt).
    seed_ca(d, "/C=CN/ST=ZJ/L=HZ/O=Example/OU=IoT/CN=*.mqtt.example.com");
    // The verification certificate: the registration code as CN, -sha512.
    let out = cli(&broker, &["ca", "registration-code"]);
    assert!(out.status.success());
    let code = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(code.len(), 32, "{code}");
    let verification = |name: &str, code: &str| {
        openssl(d, &["genrsa", "-out", &format!("{name}.key"), "2048"]);
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
                &format!("/C=CN/O=Example/CN={code}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "CA.crt",
                "-CAkey",
                "CA.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "600",
                "-sha512",
            ],
        );
    };
    verification("VerificationCert", &code);
    // Closing the dialog (a new code) makes that verification certificate fail.
    let new_code = String::from_utf8(cli(&broker, &["ca", "registration-code"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(new_code, code);
    let ca = d.join("CA.crt");
    let out = cli(
        &broker,
        &[
            "ca",
            "register",
            "--ca",
            ca.to_str().unwrap(),
            "--verification",
            d.join("VerificationCert.crt").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RegistrationCodeMismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verification("VerificationCert", &new_code);
    let out = cli(
        &broker,
        &[
            "ca",
            "register",
            "--ca",
            ca.to_str().unwrap(),
            "--verification",
            d.join("VerificationCert.crt").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca_id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Provisioning settings change through the CLI (PATCH).
    let out = cli(
        &broker,
        &[
            "ca",
            "update",
            &ca_id,
            "--automatic-activation",
            "true",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "ca update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["device_provisioning"].as_str(),
            v["automatic_activation"].as_bool()
        ),
        (Some("JITP"), Some(true))
    );

    // Device certificates signed by the CA, as OpenSSL does without
    // -extfile (X.509 v1), RSA.
    for dev in ["device-1", "device-2"] {
        openssl(d, &["genrsa", "-out", &format!("{dev}.key"), "2048"]);
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                &format!("{dev}.key"),
                "-out",
                &format!("{dev}.csr"),
                "-subj",
                &format!("/O=Example/OU=sensors/CN={dev}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{dev}.csr"),
                "-CA",
                "CA.crt",
                "-CAkey",
                "CA.key",
                "-CAcreateserial",
                "-out",
                &format!("{dev}.crt"),
                "-days",
                "365",
                "-sha256",
            ],
        );
    }
    let server_ca = broker.dir.0.join("tls/default-ca.pem");
    let tls = broker.port("mqtt-tls");
    let mosq = |dev: &str| {
        let mut c = Command::new("mosquitto_pub");
        c.args(["-h", "localhost", "-p", &tls, "-i", dev, "--cafile"])
            .arg(&server_ca)
            .arg("--cert")
            .arg(d.join(format!("{dev}.crt")))
            .arg("--key")
            .arg(d.join(format!("{dev}.key")));
        c
    };
    let mut sub = spawn_piped(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "localhost",
                "-p",
                &tls,
                "-i",
                "device-2",
                "-t",
                "seed/#",
                "-C",
                "1",
                "-W",
                "20",
                "-v",
                "--cafile",
            ])
            .arg(&server_ca)
            .arg("--cert")
            .arg(d.join("device-2.crt"))
            .arg("--key")
            .arg(d.join("device-2.key")),
    );
    let rx = stdout_lines(&mut sub);
    let line = loop {
        let out = run(
            mosq("device-1").args(["-t", "seed/t", "-m", "over-mtls"]),
            LIMIT,
        );
        assert!(
            out.status.success(),
            "mosquitto_pub over mTLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            break l;
        }
    };
    assert_eq!(line, "seed/t over-mtls");
    assert!(sub.wait().unwrap().success());
    // paho-mqtt with the same files.
    let paho = format!(
        "import ssl, sys, paho.mqtt.client as m\n\
         c = m.Client(m.CallbackAPIVersion.VERSION2, client_id='paho-device', protocol=m.MQTTv5)\n\
         c.tls_set(ca_certs='{}', certfile='{}', keyfile='{}')\n\
         rc = c.connect('localhost', {tls})\n\
         c.loop_start(); i = c.publish('seed/paho', b'x', qos=1); i.wait_for_publish(10); c.disconnect(); c.loop_stop()\n\
         sys.exit(0 if i.is_published() else 1)\n",
        server_ca.display(),
        d.join("device-1.crt").display(),
        d.join("device-1.key").display()
    );
    let out = run(Command::new("python3").args(["-c", &paho]), LIMIT);
    assert!(
        out.status.success(),
        "paho-mqtt over mTLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // JITP registered them under the CA, visible in the CLI.
    let out = cli(&broker, &["device", "list", "--ca", &ca_id, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], 2, "{v}");
    let out = cli(&broker, &["ca", "get", &ca_id, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["device_certificate_counts"]["ACTIVE"], 2, "{v}");
    // Download round trip.
    let id =
        String::from_utf8(cli(&broker, &["device", "list", "--cn", "device-1", "--json"]).stdout)
            .unwrap();
    let id = serde_json::from_str::<Value>(&id).unwrap()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pem = cli(&broker, &["device", "pem", &id]);
    let downloaded = String::from_utf8(pem.stdout).unwrap();
    let original = std::fs::read_to_string(d.join("device-1.crt")).unwrap();
    assert_eq!(downloaded.trim(), original.trim());
}

// ---------- the bad-certificate matrix ----------

#[test]
fn bad_certificate_matrix_each_refused_with_its_reason() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let good_ca = ca("Good CA");
    let good_id = register(&api, &good_ca, json!({}));
    let inactive_ca = ca("Inactive CA");
    let _inactive_id = register(&api, &inactive_ca, json!({"status": "INACTIVE"}));
    let api_ca = ca("API-only CA");
    let api_ca_id = register(&api, &api_ca, json!({"device_provisioning": "API"}));

    // A bystander that must stay connected through everything.
    let bystander_cert = device(&good_ca, "bystander");
    let mut bystander = mtls(&broker, Some(&bystander_cert), "bystander").unwrap();

    let handshake_refused =
        |id: &(String, String), reason: &str| expect_handshake_refused(&broker, id, reason);
    let connect_refused = |id: &(String, String), client_id: &str, reason: &str| {
        expect_refused(&broker, id, client_id, reason)
    };

    // Unknown CA, and a rogue CA with the registered CA's subject.
    handshake_refused(&device(&ca("Unknown CA"), "d"), "UNKNOWN_CA");
    handshake_refused(&device(&ca("Good CA"), "d"), "UNKNOWN_CA");
    // Expired and not yet valid.
    handshake_refused(&leaf(&good_ca, "old", -30, -1), "CERTIFICATE_EXPIRED");
    handshake_refused(
        &leaf(&good_ca, "future", 1, 30),
        "CERTIFICATE_NOT_YET_VALID",
    );
    // Inactive CA.
    handshake_refused(&device(&inactive_ca, "d"), "CA_INACTIVE");
    // No client certificate on a `required` listener.
    let before = api.rejections().len();
    assert!(matches!(
        mtls(&broker, None, "nocert"),
        Err(Failure::Tls(_))
    ));
    let r = api.rejections();
    assert!(r.len() > before);
    assert_eq!(r[0]["reason"], "NO_CERTIFICATE");

    // Registered devices in each refused state.
    let reg = |cert: &(String, String), body: Value| -> String {
        let mut b = json!({"device_certificate": cert.0});
        if let (Some(o), Some(e)) = (b.as_object_mut(), body.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        api.ok("POST", "/device-certificates", Some(b))["id"]
            .as_str()
            .unwrap()
            .into()
    };
    let revoked = device(&good_ca, "revoked");
    let id = reg(&revoked, json!({}));
    api.ok("POST", &format!("/device-certificates/{id}/revoke"), None);
    connect_refused(&revoked, "revoked", "CERTIFICATE_REVOKED");
    let (s, v) = api.call("POST", &format!("/device-certificates/{id}/activate"), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("CertificateRevoked")),
        "REVOKED is final"
    );
    let inactive = device(&good_ca, "inactive");
    reg(&inactive, json!({"status": "INACTIVE"}));
    connect_refused(&inactive, "inactive", "CERTIFICATE_INACTIVE");
    let pending = device(&good_ca, "pending");
    reg(&pending, json!({"status": "PENDING_ACTIVATION"}));
    connect_refused(&pending, "pending", "CERTIFICATE_PENDING_ACTIVATION");
    // Client-id binding.
    let bound = device(&good_ca, "bound");
    reg(&bound, json!({"client_id": "the-bound-id"}));
    connect_refused(&bound, "another-id", "CLIENT_ID_MISMATCH");
    mtls(&broker, Some(&bound), "the-bound-id").expect("the bound client id connects");
    // API provisioning: an unregistered certificate is refused, a registered one gets in.
    let unregistered = device(&api_ca, "unregistered");
    connect_refused(&unregistered, "unregistered", "CERTIFICATE_NOT_REGISTERED");
    let registered = device(&api_ca, "registered");
    reg(&registered, json!({}));
    mtls(&broker, Some(&registered), "registered").expect("a registered device connects");

    // Wrong verification certificates, a non-CA, a duplicate, the 33rd CA.
    let try_register = |ca_pem: String, ver: String| -> (u16, String) {
        let (s, v) = api.call(
            "POST",
            "/ca-certificates",
            Some(json!({"ca_certificate": ca_pem, "verification_certificate": ver})),
        );
        (s, v["error"]["code"].as_str().unwrap_or("").to_string())
    };
    let c = ca("Candidate CA");
    let code = api.code();
    let other_code = leaf(&c, "not-the-code", -1, 30).0;
    assert_eq!(
        try_register(c.cert.pem(), other_code),
        (422, "RegistrationCodeMismatch".into())
    );
    let code = {
        let _ = code;
        api.code()
    };
    let stranger = ca("Candidate CA");
    let other_key = leaf(&stranger, &code, -1, 30).0;
    assert_eq!(
        try_register(c.cert.pem(), other_key),
        (422, "VerificationSignatureInvalid".into())
    );
    let unrelated = ca("Someone Else");
    let not_signed = leaf(&unrelated, &code, -1, 30).0;
    assert_eq!(
        try_register(c.cert.pem(), not_signed),
        (422, "VerificationIssuerMismatch".into())
    );
    let not_ca = rcgen_ca("Not A CA", KeyPair::generate().unwrap(), false);
    let v = leaf(&not_ca, &code, -1, 30).0;
    assert_eq!(
        try_register(not_ca.cert.pem(), v),
        (422, "NotACaCertificate".into())
    );
    let code = api.code();
    let v = leaf(&good_ca, &code, -1, 30).0;
    assert_eq!(
        try_register(good_ca.cert.pem(), v),
        (409, "CaAlreadyRegistered".into())
    );
    let registered_now = api.ok("GET", "/ca-certificates", None)["items"]
        .as_array()
        .unwrap()
        .len();
    for i in registered_now..32 {
        register(&api, &ca(&format!("Filler CA {i}")), json!({}));
    }
    let c33 = ca("The 33rd CA");
    let code = api.code();
    let v = leaf(&c33, &code, -1, 30).0;
    assert_eq!(
        try_register(c33.cert.pem(), v),
        (409, "CaLimitReached".into())
    );
    assert_eq!(
        api.ok("GET", "/ca-certificates", None)["items"]
            .as_array()
            .unwrap()
            .len(),
        32
    );

    // Through all of it the bystander stayed connected, and the good CA's
    // devices still get in.
    assert!(bystander.alive(), "the bystander was disturbed");
    mtls(&broker, Some(&device(&good_ca, "late")), "late").expect("a good device connects");
    let _ = (good_id, api_ca_id);
}

// ---------- delete rules, JITP, live enforcement ----------

#[test]
fn delete_rules_jitp_and_live_enforcement_within_a_second() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let auto = ca("Auto CA");
    let auto_id = register(&api, &auto, json!({}));
    let manual = ca("Manual CA");
    let manual_id = register(&api, &manual, json!({"automatic_activation": false}));

    // JITP with automatic activation: in at once, registered ACTIVE.
    let a = device(&auto, "jitp-auto");
    let mut sub = mtls(&broker, Some(&a), "jitp-auto").expect("JITP device connects");
    sub.subscribe("live/#").unwrap();
    let list = devices_eventually(&api, &auto_id, 1);
    assert_eq!(list[0]["status"], "ACTIVE");
    assert_eq!(list[0]["source"], "JITP");
    // Without: registered PENDING_ACTIVATION and refused until activated.
    let m = device(&manual, "jitp-manual");
    assert!(matches!(
        mtls(&broker, Some(&m), "jitp-manual"),
        Err(Failure::Refused(0x87))
    ));
    // JITP records are stored a moment after the CONNECT.
    let list = devices_eventually(&api, &manual_id, 1);
    assert_eq!(list[0]["status"], "PENDING_ACTIVATION");
    let mid = list[0]["id"].as_str().unwrap().to_string();
    api.ok(
        "POST",
        &format!("/device-certificates/{mid}/activate"),
        None,
    );
    let mut manual_client =
        mtls(&broker, Some(&m), "jitp-manual").expect("activated device connects");

    // Revocation closes the live connection with 0x98 within a second.
    let aid = api.ok(
        "GET",
        &format!("/device-certificates?ca_id={auto_id}"),
        None,
    )["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    api.ok("POST", &format!("/device-certificates/{aid}/revoke"), None);
    assert_eq!(sub.disconnected(Duration::from_secs(5)).unwrap(), 0x98);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    eprintln!("revoke -> DISCONNECT 0x98: {took:?}");

    // Deactivating the CA closes its devices' connections too.
    let t0 = Instant::now();
    api.ok(
        "POST",
        &format!("/ca-certificates/{manual_id}/deactivate"),
        None,
    );
    assert_eq!(
        manual_client.disconnected(Duration::from_secs(5)).unwrap(),
        0x98
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "CA deactivation took {took:?}"
    );
    eprintln!("CA deactivate -> DISCONNECT 0x98: {took:?}");

    // Delete rules: not while ACTIVE; not while an ACTIVE device remains.
    let (s, v) = api.call("DELETE", &format!("/ca-certificates/{auto_id}"), None);
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("CaActive")));
    let b = device(&auto, "still-active");
    api.ok(
        "POST",
        "/device-certificates",
        Some(json!({"device_certificate": b.0})),
    );
    api.ok(
        "POST",
        &format!("/ca-certificates/{auto_id}/deactivate"),
        None,
    );
    let (s, v) = api.call("DELETE", &format!("/ca-certificates/{auto_id}"), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("CaHasActiveDevices")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with('1'),
        "{v}"
    );
    let bid = api.ok(
        "GET",
        &format!("/device-certificates?ca_id={auto_id}&status=ACTIVE"),
        None,
    )["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok(
        "POST",
        &format!("/device-certificates/{bid}/deactivate"),
        None,
    );
    let (s, _) = api.call("DELETE", &format!("/ca-certificates/{auto_id}"), None);
    assert_eq!(s, 204);
    assert_eq!(
        api.ok(
            "GET",
            &format!("/device-certificates?ca_id={auto_id}"),
            None
        )["total"],
        0
    );
    // The audit log kept the history.
    let audit = api.ok("GET", "/audit-log?limit=1000", None);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    for a in [
        "ca_certificate.register",
        "device_certificate.jitp",
        "device_certificate.revoke",
        "ca_certificate.deactivate",
        "ca_certificate.delete",
    ] {
        assert!(
            actions.contains(&a),
            "{a} missing from the audit log: {actions:?}"
        );
    }
    assert!(!audit.to_string().contains("PRIVATE KEY"));
}

// ---------- optional client auth, WSS, the client id = CN policy ----------

#[test]
fn optional_client_auth_wss_with_device_certificates_and_cn_policy() {
    let w = TempDir::new("cn-policy");
    let conf = w.0.join("certmq.toml");
    std::fs::write(&conf, "[registry]\nclient_id_must_match_cn = true\n").unwrap();
    let broker = BrokerProcess::start(&[
        "--tls-client-auth",
        "optional",
        "--config",
        conf.to_str().unwrap(),
    ]);
    let api = Api::of(&broker);
    let good = ca("Policy CA");
    register(&api, &good, json!({}));

    // optional: no certificate is a plain (loopback, anonymous-allowed) client...
    mtls(&broker, None, "no-cert")
        .expect("optional listener lets a client without a certificate in");
    // ...but a presented certificate must pass the registry.
    assert!(matches!(
        mtls(&broker, Some(&device(&ca("Stranger"), "x")), "x"),
        Err(Failure::Tls(_))
    ));
    assert_eq!(api.rejections()[0]["reason"], "UNKNOWN_CA");

    // client id = CN policy.
    let dev = device(&good, "sensor-7");
    assert!(matches!(
        mtls(&broker, Some(&dev), "not-sensor-7"),
        Err(Failure::Refused(0x87))
    ));
    assert_eq!(api.rejections()[0]["reason"], "CLIENT_ID_MISMATCH");
    mtls(&broker, Some(&dev), "sensor-7").expect("CN as client id connects");

    // WSS (client_auth required): MQTT.js with and without a device certificate.
    let js = repo_root().join("tests/interop/mqttjs");
    assert!(
        js.join("node_modules/mqtt").exists(),
        "MQTT.js is not installed: run scripts/test"
    );
    let (cert, key) = (w.0.join("dev.crt"), w.0.join("dev.key"));
    // MQTT.js connects with its own client id (`wss-<pid>`), not the CN:
    // the policy refuses it at CONNECT, over WSS as over TLS.
    std::fs::write(&cert, &dev.0).unwrap();
    std::fs::write(&key, &dev.1).unwrap();
    let url = format!("wss://localhost:{}/mqtt", broker.port("mqtt-wss"));
    let ca_file = broker.dir.0.join("tls/default-ca.pem");
    let with_cert = run(
        Command::new("node")
            .arg(js.join("wss.mjs"))
            .arg(&url)
            .arg(&ca_file)
            .arg(&cert)
            .arg(&key),
        LIMIT,
    );
    assert!(
        !with_cert.status.success(),
        "the CN policy should refuse MQTT.js's own client id"
    );
    assert_eq!(api.rejections()[0]["reason"], "CLIENT_ID_MISMATCH");
    assert_eq!(api.rejections()[0]["listener"], "mqtt-wss");
    let without = run(
        Command::new("node")
            .arg(js.join("wss.mjs"))
            .arg(&url)
            .arg(&ca_file),
        LIMIT,
    );
    assert!(
        !without.status.success(),
        "WSS requires a client certificate"
    );
}

#[test]
fn mqttjs_over_wss_with_a_device_certificate() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let good = ca("WSS CA");
    register(&api, &good, json!({}));
    let w = TempDir::new("wss-dev");
    let dev = device(&good, "browser-device");
    let (cert, key) = (w.0.join("dev.crt"), w.0.join("dev.key"));
    std::fs::write(&cert, &dev.0).unwrap();
    std::fs::write(&key, &dev.1).unwrap();
    let js = repo_root().join("tests/interop/mqttjs");
    let out = run(
        Command::new("node")
            .arg(js.join("wss.mjs"))
            .arg(format!("wss://localhost:{}/mqtt", broker.port("mqtt-wss")))
            .arg(broker.dir.0.join("tls/default-ca.pem"))
            .arg(&cert)
            .arg(&key),
        LIMIT,
    );
    assert!(
        out.status.success(),
        "MQTT.js over WSS with a device certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conns = api.ok("GET", "/device-certificates", None);
    assert_eq!(conns["items"][0]["source"], "JITP");
}

#[test]
fn a_resumed_tls_session_is_still_checked_at_connect() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let good = ca("Resumption CA");
    register(&api, &good, json!({}));
    let dev = device(&good, "resumer");
    let ca_pem = std::fs::read(broker.dir.0.join("tls/default-ca.pem")).unwrap();
    let config = tls_client::config(&ca_pem, Some((dev.0.as_bytes(), dev.1.as_bytes()))).unwrap();
    let addr = broker.addr("mqtt-tls");
    let mut first =
        tls_client::connect_with(addr, config.clone(), "resumer", Protocol::V5).unwrap();
    assert!(!first.resumed());
    assert!(first.alive());
    drop(first);
    let again = tls_client::connect_with(addr, config.clone(), "resumer", Protocol::V5).unwrap();
    assert!(
        again.resumed(),
        "the second connection should resume the TLS session"
    );
    drop(again);
    // Revoke, then resume: the verifier is skipped, CONNECT is not.
    let id = matching_eventually(&api, "common_name=resumer", 1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok("POST", &format!("/device-certificates/{id}/revoke"), None);
    match tls_client::connect_with(addr, config, "resumer", Protocol::V5) {
        Err(Failure::Refused(0x87)) => {}
        other => panic!(
            "a resumed session of a revoked certificate: {:?}",
            other.map(|c| c.resumed())
        ),
    }
    assert_eq!(api.rejections()[0]["reason"], "CERTIFICATE_REVOKED");
}
