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
    // Every sample line is `name{labels} value`, every family typed.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let base = name.split('{').next().unwrap();
        assert!(
            text.contains(&format!("# TYPE {base} ")),
            "{base} has no TYPE line"
        );
    }
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
