//! What the README and SPEC 9 promise of the admin API, checked against
//! the real binary: Prometheus text metrics with message counters, RFC 3339
//! times in the audit log and in error messages, a case-insensitive bearer
//! scheme, and paging offsets that never wrap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod device_helpers;
mod tls_client;

use std::process::Command;

use common::*;
use device_helpers::*;
use serde_json::json;

fn get(b: &BrokerProcess, path: &str, auth: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(format!("http://{}/api/v1{path}", b.addr("admin-http")))
        .header("authorization", auth)
        .call()
        .unwrap();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (
        r.status().as_u16(),
        ct,
        r.body_mut().read_to_string().unwrap(),
    )
}

fn is_rfc3339(s: &str) -> bool {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

#[test]
fn metrics_are_prometheus_text_with_message_counters() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let auth = format!("Bearer {}", api.token);
    // One subscriber, one message.
    let mut sub = spawn_piped(Command::new("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port("mqtt-tcp"),
        "-t",
        "m/#",
        "-C",
        "1",
        "-W",
        "30",
    ]));
    let lines = stdout_lines(&mut sub);
    // Until the subscription is in place, publish again (bounded).
    let mut got = None;
    for _ in 0..50 {
        let out = run(
            Command::new("mosquitto_pub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port("mqtt-tcp"),
                "-t",
                "m/x",
                "-m",
                "hello",
            ]),
            LIMIT,
        );
        assert!(out.status.success());
        if let Ok(l) = lines.recv_timeout(std::time::Duration::from_millis(200)) {
            got = Some(l);
            break;
        }
    }
    assert_eq!(got.as_deref(), Some("hello"));
    let _ = sub.wait();

    let (status, ct, text) = get(&broker, "/metrics", &auth);
    assert_eq!(status, 200);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "OpenMetrics, not Prometheus text");
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(value("certmq_messages_received_total") >= 1.0);
    assert!(value("certmq_messages_delivered_total") >= 1.0);
    assert!(text.contains("certmq_messages_dropped_total{reason=\"queue_full\"} "));
    assert!(text.contains("# TYPE certmq_messages_received_total counter"));
    // Every sample line is `name{labels} value`, every family typed (a
    // histogram's samples are its name with `_bucket`, `_sum`, `_count`).
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let base = name.split('{').next().unwrap();
        let typed = text.contains(&format!("# TYPE {base} "))
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                base.strip_suffix(suffix)
                    .is_some_and(|h| text.contains(&format!("# TYPE {h} histogram")))
            });
        assert!(typed, "{base} has no TYPE line");
    }
    // The persistence families, a histogram among them, with its +Inf
    // bucket equal to its count.
    assert!(text.contains("# TYPE certmq_persistence_commit_seconds histogram"));
    let inf = value("certmq_persistence_commit_seconds_bucket{le=\"+Inf\"}");
    assert_eq!(inf, value("certmq_persistence_commit_seconds_count"));
}

#[test]
fn times_are_rfc3339_the_bearer_scheme_is_case_insensitive_and_offsets_never_wrap() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    // A lower-case scheme is the same scheme (RFC 9110).
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let (s, _, _) = get(&broker, "/connections", &format!("{scheme} {}", api.token));
        assert_eq!(s, 200, "{scheme}");
    }
    let (s, _, body) = get(&broker, "/connections", "Basic abc");
    assert_eq!(s, 401, "{body}");

    // Audit times.
    let ca = ca("Contract CA");
    register(&api, &ca, json!({}));
    let log = api.ok("GET", "/audit-log", None);
    let items = log["items"].as_array().unwrap();
    assert!(!items.is_empty());
    for r in items {
        assert!(is_rfc3339(r["at"].as_str().unwrap_or("")), "{r}");
    }

    // An offset past i64::MAX is past every row, not the first page.
    api.ok(
        "POST",
        "/device-certificates",
        Some(json!({"device_certificate": device(&ca, "paged").0})),
    );
    let page = api.ok(
        "GET",
        "/device-certificates?offset=9223372036854775808",
        None,
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    assert_eq!(page["total"], 1);

    // Error messages name times in RFC 3339.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["old.example.com".to_string()]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "old.example.com");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = days(-30);
    p.not_after = days(-1);
    let cert = p.self_signed(&key).unwrap();
    let (s, v) = api.call(
        "POST",
        "/server-certificates",
        Some(json!({"certificate_chain": cert.pem(), "private_key": key.serialize_pem()})),
    );
    assert_eq!(s, 422, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(!msg.contains("unix seconds"), "{msg}");
    let stamp = msg
        .split_whitespace()
        .find(|w| w.len() >= 20 && w.contains('T'))
        .map(|w| w.trim_end_matches([';', '.', ',']))
        .unwrap_or_else(|| panic!("no time in {msg}"));
    assert!(is_rfc3339(stamp), "{msg}");
}

/// A plain-TCP MQTT 5 CONNECT; returns the CONNACK reason code.
fn tcp_connect(b: &BrokerProcess, client_id: &str) -> u8 {
    use certmq_codec::{decode, encode, Connect, Packet, Properties, Protocol};
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(b.addr("mqtt-tcp")).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut out = bytes::BytesMut::new();
    encode(
        &Packet::Connect(Box::new(Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })),
        Protocol::V5,
        &mut out,
    );
    s.write_all(&out).unwrap();
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(Packet::ConnAck(a)) = decode(&mut buf, Some(Protocol::V5), 1 << 20).unwrap() {
            return a.reason.0;
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before CONNACK");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A flood of one refusal keeps the others in view; client-supplied strings
/// in the log are cut and escaped (no forged start-up line, no 64 KiB
/// lines); the log is rate-limited.
#[test]
fn refusal_floods_hide_nothing_and_cannot_forge_or_flood_the_log() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let ca = ca("Flood CA");
    register(&api, &ca, json!({}));
    // The refusal that matters: a revoked device.
    let dev = device(&ca, "victim");
    let id = certmq_pki::fingerprint(&certmq_pki::single_cert_der(dev.0.as_bytes()).unwrap());
    drop(mtls(&broker, Some(&dev), "victim").unwrap());
    // JITP stores the record a moment after the CONNECT (bounded wait).
    for _ in 0..250 {
        if api
            .call("GET", &format!("/device-certificates/{id}"), None)
            .0
            == 200
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    api.ok("POST", &format!("/device-certificates/{id}/revoke"), None);
    assert!(matches!(
        mtls(&broker, Some(&dev), "victim"),
        Err(tls_client::Failure::Refused(0x87))
    ));
    // A device holds two client ids; anonymous clients that ask for them
    // are refused (a session belongs to its identity).
    let forged = "x listening protocol=admin-http addr=6.6.6.6:1";
    let huge = "h".repeat(65_000);
    let holder = device(&ca, "holder");
    let _a = mtls(&broker, Some(&holder), forged).unwrap();
    let _b = mtls(&broker, Some(&holder), &huge).unwrap();
    assert_eq!(tcp_connect(&broker, forged), 0x87);
    assert_eq!(tcp_connect(&broker, &huge), 0x87);
    // The flood: 1,100 more refusals of one kind.
    let _c = mtls(&broker, Some(&holder), "flooded").unwrap();
    for _ in 0..1_100 {
        assert_eq!(tcp_connect(&broker, "flooded"), 0x87);
    }
    let v = api.ok("GET", "/connection-rejections?limit=1000", None);
    let items = v["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|r| r["reason"] == "CERTIFICATE_REVOKED" && r["certificate_id"] == id.as_str()),
        "the revoked device's refusal was pushed out"
    );
    assert!(items
        .iter()
        .all(|r| r["client_id"].as_str().map_or(0, str::len) <= 256));
    assert_eq!(
        v["counts_by_reason"]["CLIENT_ID_IN_USE_BY_ANOTHER_IDENTITY"],
        1_102
    );
    let top = &v["top_sources"][0];
    assert_eq!(top["reason"], "CLIENT_ID_IN_USE_BY_ANOTHER_IDENTITY");
    assert_eq!(top["source"], "address:127.0.0.1");
    assert_eq!(top["count"], 1_102);

    // One more refusal a second later writes the rate limiter's summary.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(tcp_connect(&broker, "flooded"), 0x87);
    let mut log = Vec::new();
    while let Ok(line) = broker
        .log
        .recv_timeout(std::time::Duration::from_millis(500))
    {
        log.push(line);
    }
    // (The real start-up lines were read before: none may follow.)
    let forged_lines: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("listening protocol="))
        .collect();
    assert!(
        forged_lines.is_empty(),
        "a client id forged a start-up line: {forged_lines:?}"
    );
    let longest = log.iter().map(String::len).max().unwrap_or(0);
    assert!(longest < 1_000, "a log line of {longest} bytes");
    let refused = log
        .iter()
        .filter(|l| l.contains("connection refused"))
        .count();
    assert!(refused < 200, "{refused} refusals logged one by one");
    assert!(
        log.iter()
            .any(|l| l.contains("further connection refusals not logged")),
        "no summary of the refusals not logged"
    );
}

/// The admin listener closes connections that send no request, or stall
/// in the headers, and holds no more than `[admin] max_connections`: idle
/// sockets cannot exhaust file descriptors, and the API answers after.
#[test]
fn the_admin_listener_times_out_idle_and_slow_clients_and_limits_connections() {
    use std::io::{Read, Write};
    let w = TempDir::new("admin-limits");
    let conf = w.0.join("certmq.toml");
    std::fs::write(
        &conf,
        "[admin]\nmax_connections = 8\nheader_timeout_secs = 3\nread_timeout_secs = 3\n",
    )
    .unwrap();
    let broker = BrokerProcess::start(&["--config", conf.to_str().unwrap()]);
    let addr = broker.addr("admin-http");
    let closed_within = |s: &mut std::net::TcpStream, secs: u64| -> bool {
        s.set_read_timeout(Some(std::time::Duration::from_secs(secs)))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue, // a 408 or similar, then the close
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    };
    // 20 idle connections: 8 are held, 12 closed at once.
    let mut idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut closed_at_once = 0;
    for s in &mut idle {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => closed_at_once += 1,
        }
        s.set_nonblocking(false).unwrap();
    }
    assert_eq!(
        closed_at_once, 12,
        "over the limit of 8, each is closed at once"
    );
    // The held ones are closed by the header timeout.
    for s in &mut idle {
        assert!(closed_within(s, 10), "an idle admin connection was kept");
    }
    // A slow request head is cut off too.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(
        closed_within(&mut slow, 10),
        "a stalled request head was kept"
    );
    // And the API answers.
    let api = Api::of(&broker);
    assert_eq!(api.call("GET", "/health", None).0, 200);
}

/// Errors that name the real problem: a chain with the CA first is out of
/// order (not a leaf without serverAuth), an encrypted key is named as
/// such, and DER files are accepted by the CLI where PEM is expected.
#[test]
fn certificate_errors_name_the_real_problem_and_der_files_are_accepted() {
    let broker = BrokerProcess::start(&[]);
    let api = Api::of(&broker);
    let w = TempDir::new("errors");
    let d = &w.0;
    seed_ca(d, "/C=CN/O=Example/CN=Errors Root CA");
    let server = make_server(d, "server", &server_conf(|c| c), Key::Ec);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let ca_first = read(&d.join("CA.crt")) + &read(&server.join("server.crt"));
    let (s, v) = api.call(
        "POST",
        "/server-certificates",
        Some(
            json!({"certificate_chain": ca_first, "private_key": read(&server.join("server.key"))}),
        ),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("ChainOutOfOrder")),
        "{v}"
    );

    openssl(
        &server,
        &[
            "pkey",
            "-in",
            "server.key",
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            "enc8.key",
        ],
    );
    openssl(
        &server,
        &[
            "ec",
            "-in",
            "server.key",
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            "enc1.key",
        ],
    );
    for key in ["enc8.key", "enc1.key"] {
        let (s, v) = api.call(
            "POST",
            "/server-certificates",
            Some(json!({
                "certificate_chain": read(&server.join("server.chain.crt")),
                "private_key": read(&server.join(key)),
            })),
        );
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some("EncryptedPrivateKey")),
            "{key}: {v}"
        );
    }

    // DER certificate and key files through the CLI.
    openssl(
        &server,
        &[
            "x509",
            "-in",
            "server.crt",
            "-outform",
            "DER",
            "-out",
            "server.der",
        ],
    );
    openssl(
        &server,
        &[
            "pkey",
            "-in",
            "server.key",
            "-outform",
            "DER",
            "-out",
            "server.key.der",
        ],
    );
    let out = cli(
        &broker,
        &[
            "server-cert",
            "bind",
            "--chain",
            server.join("server.der").to_str().unwrap(),
            "--key",
            server.join("server.key.der").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file that is neither says so.
    std::fs::write(server.join("junk.der"), [0x30, 0x03, 0x01, 0x01]).unwrap();
    let out = cli(
        &broker,
        &[
            "device",
            "register",
            "--cert",
            server.join("junk.der").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither a PEM nor a DER certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
