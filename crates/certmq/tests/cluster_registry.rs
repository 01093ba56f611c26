//! Three nodes sharing one registry in PostgreSQL (SPEC 13): a change made
//! through any node takes effect on every node within a second, live
//! connections included; limits hold for the cluster; losing PostgreSQL
//! refuses changes with a clear error while clients are still served, and
//! a node catches up on what it missed. PostgreSQL and nats-server are
//! started by the test on free loopback ports and stopped by their PIDs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod components;
mod device_helpers;
mod raw;
mod tls_client;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use components::{Nats, Postgres};
use device_helpers::*;
use serde_json::{json, Value};

fn node(pg: &Postgres, nats: &Nats, id: &str, extra: &[&str]) -> BrokerProcess {
    let (pg, nats) = (pg.url(), nats.url());
    let mut args = vec![
        "--node-id",
        id,
        "--cluster-postgres",
        &pg,
        "--cluster-nats",
        &nats,
    ];
    args.extend_from_slice(extra);
    BrokerProcess::start(&args)
}

/// Waits (bounded) until `f` holds; returns how long it took.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn registry_changes_made_on_one_node_take_effect_on_every_node_within_a_second() {
    let pg = Postgres::start();
    let nats = Nats::start();
    let n1 = node(&pg, &nats, "n1", &[]);
    let n2 = node(&pg, &nats, "n2", &[]);
    let n3 = node(&pg, &nats, "n3", &[]);
    let (a1, a2, a3) = (Api::of(&n1), Api::of(&n2), Api::of(&n3));

    // Every node lists the three.
    within(Duration::from_secs(10), "three nodes listed", || {
        let v = a2.ok("GET", "/cluster/nodes", None);
        let items = v["items"].as_array().unwrap();
        items.len() == 3 && items.iter().all(|n| n["health"] == "up")
    });
    let v = a3.ok("GET", "/cluster/nodes", None);
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    let n1_view = &v["items"][0];
    assert_eq!(n1_view["this"], false);
    assert!(n1_view["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["protocol"] == "mqtt-tls" && a["address"] == n1.addr("mqtt-tls").to_string()));

    // A CA registered through node 1's CLI.
    let work = TempDir::new("cluster-ca");
    let root = ca("Cluster Root");
    let out = cli(&n1, &["ca", "registration-code"]);
    assert!(out.status.success());
    let code = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (verification, _) = leaf(&root, &code, -1, 30);
    let ca_file = write(&work.0, "ca.pem", &root.cert.pem());
    let ver_file = write(&work.0, "verification.pem", &verification);
    let out = cli(
        &n1,
        &[
            "ca",
            "register",
            "--ca",
            &ca_file,
            "--verification",
            &ver_file,
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
    // Node 3 knows it at once: a device connects there (JITP).
    let dev = device(&root, "sensor-1");
    let took = within(Duration::from_secs(5), "CA known on node 3", || {
        mtls(&n3, Some(&dev), "sensor-1").is_ok()
    });
    eprintln!("CA registered on n1 -> usable on n3: {took:?}");
    let mut live = mtls(&n3, Some(&dev), "sensor-1").expect("device connects on node 3");
    live.subscribe("plant/#").unwrap();
    let found = within(
        Duration::from_secs(5),
        "JITP record visible on node 2",
        || {
            a2.ok("GET", &format!("/device-certificates?ca_id={ca_id}"), None)["items"]
                .as_array()
                .unwrap()
                .len()
                == 1
        },
    );
    eprintln!("JITP on n3 -> listed on n2: {found:?}");
    let device_id = a2.ok("GET", &format!("/device-certificates?ca_id={ca_id}"), None)["items"][0]
        ["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Any node's API shows every node's connections, and closes one
    // anywhere.
    let all = a1.ok("GET", "/connections", None);
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == "sensor-1" && c["node"] == "n3"),
        "{all}"
    );
    let only_n2 = a1.ok("GET", "/connections?node=n2", None);
    assert_eq!(only_n2["items"].as_array().unwrap().len(), 0, "{only_n2}");
    let only_n3 = a1.ok("GET", "/connections?node=n3", None);
    assert_eq!(only_n3["items"][0]["client_id"], "sensor-1", "{only_n3}");
    let mut other = mtls(&n2, Some(&device(&root, "sensor-2")), "sensor-2").expect("second device");
    let out = cli(&n1, &["connections", "kick", "sensor-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(other.disconnected(Duration::from_secs(5)).unwrap(), 0x98);
    let (s, _) = a3.call("DELETE", "/connections/nobody-here", None);
    assert_eq!(s, 404);

    // Revoked through node 2: the connection on node 3 closes with 0x98
    // within a second, and node 1 refuses the certificate.
    let t0 = Instant::now();
    a2.ok(
        "POST",
        &format!("/device-certificates/{device_id}/revoke"),
        None,
    );
    assert_eq!(live.disconnected(Duration::from_secs(5)).unwrap(), 0x98);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    eprintln!("revoke on n2 -> DISCONNECT 0x98 on n3: {took:?}");
    expect_refused(&n1, &dev, "sensor-1", "CERTIFICATE_REVOKED");

    // A CRL given to node 1 closes a listed device's connection on node 3
    // within a second, and node 2 refuses it at the handshake (SPEC 14).
    let listed = device(&root, "sensor-3");
    let mut on_n3 = mtls(&n3, Some(&listed), "sensor-3").expect("sensor-3 connects on node 3");
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(listed.0.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.as_ref().to_vec())
        .unwrap();
    let serial_hex = certmq_pki::subject_facts(&der).unwrap().info.serial;
    let serial: Vec<u8> = (0..serial_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&serial_hex[i..i + 2], 16).unwrap())
        .collect();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: days(0),
        next_update: days(7),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&serial),
            revocation_time: days(0),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&root.cert, &root.key)
    .unwrap();
    let t0 = Instant::now();
    let r = ureq::put(format!("{}/ca-certificates/{ca_id}/crl", a1.url))
        .header("authorization", format!("Bearer {}", a1.token))
        .content_type("application/pkix-crl")
        .send(crl.der().as_ref())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(on_n3.disconnected(Duration::from_secs(5)).unwrap(), 0x98);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "CRL on n1 -> n3 closed after {took:?}"
    );
    eprintln!("CRL on n1 -> DISCONNECT 0x98 on n3: {took:?}");
    expect_handshake_refused(&n2, &listed, "CERTIFICATE_REVOKED_BY_CRL");

    // A server certificate bound on node 1 is served by node 2's next
    // handshake within a second.
    let sc = ca("Server Root");
    let (chain, key) = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["cluster.example.com".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "cluster.example.com");
        p.not_before = days(-1);
        p.not_after = days(90);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let c = p.signed_by(&key, &sc.cert, &sc.key).unwrap();
        (c.pem(), key.serialize_pem())
    };
    let sc_ca = write(&work.0, "server-ca.pem", &sc.cert.pem());
    let t0 = Instant::now();
    a1.ok(
        "POST",
        "/server-certificates",
        Some(json!({"certificate_chain": chain, "private_key": key})),
    );
    within(
        Duration::from_secs(5),
        "bound certificate served by node 2",
        || served_subject(&n2.port("mqtt-tls"), "cluster.example.com", &sc_ca),
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "bind on n1 -> served on n2 took {took:?}"
    );
    eprintln!("bind on n1 -> served by n2: {took:?}");

    // The 32-CA limit holds for the cluster: 31 more through nodes 2 and
    // 3 in turn, and the 33rd is refused on any node.
    for i in 0..31 {
        let api = if i % 2 == 0 { &a2 } else { &a3 };
        register(api, &ca(&format!("CA {i}")), json!({}));
    }
    let extra = ca("CA 33");
    let code = a1.code();
    let (v, _) = leaf(&extra, &code, -1, 30);
    let (s, body) = a1.call(
        "POST",
        "/ca-certificates",
        Some(json!({"ca_certificate": extra.cert.pem(), "verification_certificate": v})),
    );
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (409, Some("CaLimitReached")),
        "{body}"
    );
    assert_eq!(
        a3.ok("GET", "/ca-certificates", None)["items"]
            .as_array()
            .unwrap()
            .len(),
        32
    );

    // One audit log: node 3 shows what node 2 did.
    let log = a3.ok("GET", "/audit-log?limit=200", None);
    assert!(
        log["items"].as_array().unwrap().iter().any(
            |r| r["action"] == "device_certificate.revoke" && r["target"] == device_id.as_str()
        ),
        "{log}"
    );
}

/// Whether a TLS handshake with `sni` on `port` gets a certificate that
/// verifies against `ca` (openssl s_client).
fn served_subject(port: &str, sni: &str, ca: &str) -> bool {
    let out = run(
        std::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", sni, "-CAfile", ca, "-verify_hostname", sni])
            .stdin(std::process::Stdio::null()),
        LIMIT,
    );
    String::from_utf8_lossy(&out.stdout).contains("Verify return code: 0 (ok)")
}

#[test]
fn users_and_policies_are_shared_and_postgres_loss_refuses_changes_but_serves_clients() {
    let pg = Postgres::start();
    let nats = Nats::start();
    let n1 = node(&pg, &nats, "p1", &["--allow-anonymous=false"]);
    let n2 = node(&pg, &nats, "p2", &["--allow-anonymous=false"]);
    let (a1, a2) = (Api::of(&n1), Api::of(&n2));

    // A user added on node 1 signs in on node 2.
    a1.ok(
        "POST",
        "/users",
        Some(json!({"username": "alice", "password": "correct horse battery"})),
    );
    let pub_as = |b: &BrokerProcess, user: &str, pass: &str| {
        let out = run(
            std::process::Command::new("mosquitto_pub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &b.port("mqtt-tcp"),
                "-u",
                user,
                "-P",
                pass,
                "-t",
                "t/1",
                "-m",
                "x",
                "-q",
                "1",
            ]),
            LIMIT,
        );
        out.status.success()
    };
    within(Duration::from_secs(2), "user known on node 2", || {
        a2.ok("GET", "/users", None)["items"]
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    assert!(pub_as(&n2, "alice", "correct horse battery"));
    assert!(!pub_as(&n2, "alice", "wrong password"));

    // A policy created on node 2 applies on node 1: a deny of publishing
    // under secret/ for everyone.
    a2.ok(
        "POST",
        "/policies",
        Some(
            json!({"id": "no-secrets", "effect": "deny", "actions": ["publish", "subscribe"],
                    "topics": ["secret/#"], "priority": 10}),
        ),
    );
    let took = within(Duration::from_secs(1), "policy in force on node 1", || {
        a1.ok(
            "POST",
            "/policies/evaluate",
            Some(json!({"client_id": "c1", "username": "alice", "action": "publish", "topic": "secret/x"})),
        )["decision"]
            == "deny"
    });
    eprintln!("policy on n2 -> in force on n1: {took:?}");

    // PostgreSQL goes away: changes are refused with 503 and a clear
    // error; connected and new clients are still served, across nodes too.
    let mut sub = spawn_piped(std::process::Command::new("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &n2.port("mqtt-tcp"),
        "-t",
        "during/#",
        "-C",
        "1",
        "-W",
        "30",
        "-v",
        "-u",
        "alice",
        "-P",
        "correct horse battery",
    ]));
    let got = stdout_lines(&mut sub);
    pg.stop();
    within(
        Duration::from_secs(10),
        "registry link reported down",
        || a1.metric("certmq_cluster_registry_up") == 0.0,
    );
    let (s, v) = a1.call(
        "POST",
        "/users",
        Some(json!({"username": "bob", "password": "another long password"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("RegistryUnavailable")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL"),
        "{v}"
    );
    assert!(
        pub_as(&n1, "alice", "correct horse battery"),
        "a known user still signs in"
    );
    // Until the subscription has crossed (bounded): retried.
    let mut line = None;
    for _ in 0..100 {
        let out = run(
            std::process::Command::new("mosquitto_pub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &n1.port("mqtt-tcp"),
                "-u",
                "alice",
                "-P",
                "correct horse battery",
                "-t",
                "during/outage",
                "-m",
                "still-routed",
                "-q",
                "1",
            ]),
            LIMIT,
        );
        assert!(out.status.success());
        if let Ok(l) = got.recv_timeout(Duration::from_millis(100)) {
            line = Some(l);
            break;
        }
    }
    assert_eq!(line.as_deref(), Some("during/outage still-routed"));
    let _ = sub.wait();
    let health = a1.ok("GET", "/health", None);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["cluster"]["registry"], "down", "{health}");
    assert_eq!(health["cluster"]["nats"], "up", "{health}");

    // Back: node 2 made no change meanwhile (it could not); a change made
    // after the restart reaches node 1, which caught up.
    pg.restart();
    within(Duration::from_secs(15), "registry link back", || {
        a1.metric("certmq_cluster_registry_up") == 1.0
    });
    a2.ok(
        "POST",
        "/users",
        Some(json!({"username": "bob", "password": "another long password"})),
    );
    within(Duration::from_secs(2), "bob known on node 1", || {
        pub_as(&n1, "bob", "another long password")
    });
    a2.ok("DELETE", "/users/alice", None);
    within(Duration::from_secs(2), "alice gone on node 1", || {
        !pub_as(&n1, "alice", "correct horse battery")
    });
}

/// `mosquitto_pub` of one QoS 1 message on node `n`.
fn pub1(n: &BrokerProcess, topic: &str, msg: &str) {
    let out = run(
        std::process::Command::new("mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &n.port("mqtt-tcp"),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            msg,
            "-V",
            "mqttv5",
        ]),
        LIMIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until node `n` has written every state change it recorded.
fn state_written(n: &BrokerProcess) {
    let api = Api::of(n);
    within(Duration::from_secs(10), "state written", || {
        api.metric("certmq_persistence_pending_changes") == 0.0
            && api.metric("certmq_persistence_changes_written_total")
                >= api.metric("certmq_persistence_changes_recorded_total")
    });
}

#[test]
fn a_session_moves_with_its_client_and_outlives_its_node() {
    use certmq_codec::{Packet, Protocol, QoS, ReasonCode};
    let pg = Postgres::start();
    let nats = Nats::start();
    let n1 = node(&pg, &nats, "s1", &[]);
    let n2 = node(&pg, &nats, "s2", &[]);
    let n3 = node(&pg, &nats, "s3", &[]);

    // A persistent session on node 1, subscribed; a marker from node 2
    // shows the route is in place.
    let (mut c, present) = raw::Raw::connect(n1.addr("mqtt-tcp"), "dev-1", Protocol::V5);
    assert!(!present);
    c.subscribe("cmd/dev-1/#", QoS::AtLeastOnce);
    c.set_read_timeout(Duration::from_millis(300));
    let mut crossed = false;
    for _ in 0..50 {
        pub1(&n2, "cmd/dev-1/marker", "m");
        if let Some(Packet::Publish(p)) = c.try_recv() {
            if p.qos == QoS::AtLeastOnce {
                c.send(Packet::PubAck(certmq_codec::PubResponse::new(
                    p.packet_id,
                    ReasonCode::SUCCESS,
                )));
            }
            crossed = true;
            break;
        }
    }
    assert!(crossed, "route from node 2 to node 1");
    // Drain the other markers, then leave (no DISCONNECT: the session stays).
    while let Some(Packet::Publish(p)) = c.try_recv() {
        c.send(Packet::PubAck(certmq_codec::PubResponse::new(
            p.packet_id,
            ReasonCode::SUCCESS,
        )));
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    for i in 1..=3 {
        pub1(&n2, "cmd/dev-1/set", &format!("q{i}"));
    }
    state_written(&n1);

    // The client comes back on node 3: its session, subscription and the
    // three messages queued on node 1 are there.
    let (mut c, present) = raw::Raw::connect(n3.addr("mqtt-tcp"), "dev-1", Protocol::V5);
    assert!(present, "the session moved with the client");
    let got: Vec<String> = (0..3)
        .map(|_| String::from_utf8(c.next_message().1).unwrap())
        .collect();
    assert_eq!(got, ["q1", "q2", "q3"]);
    drop(c);

    // Live takeover: connected on node 1, connecting on node 2 closes the
    // first with 0x8E; the subscription works on node 2.
    let (mut first, _) = raw::Raw::connect(n1.addr("mqtt-tcp"), "dev-2", Protocol::V5);
    first.subscribe("cmd/dev-2/#", QoS::AtLeastOnce);
    let (mut second, present) = raw::Raw::connect(n2.addr("mqtt-tcp"), "dev-2", Protocol::V5);
    assert!(present);
    match first.recv() {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    second.set_read_timeout(Duration::from_millis(300));
    let mut delivered = false;
    for _ in 0..50 {
        pub1(&n3, "cmd/dev-2/x", "to-dev-2");
        if let Some(Packet::Publish(p)) = second.try_recv() {
            assert_eq!(&p.payload[..], b"to-dev-2");
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the moved subscription receives on node 2");

    // Node death: dev-1's session is on node 3 with two messages queued;
    // kill -9 node 3, and the client resumes on node 2.
    std::thread::sleep(Duration::from_millis(200));
    pub1(&n1, "cmd/dev-1/set", "after-1");
    pub1(&n1, "cmd/dev-1/set", "after-2");
    let api3 = Api::of(&n3);
    within(Duration::from_secs(10), "queued on node 3", || {
        api3.metric("certmq_cluster_messages_received_total") >= 2.0
    });
    state_written(&n3);
    let _ = n3.kill9_keep_dir();
    let (mut c, present) = raw::Raw::connect(n2.addr("mqtt-tcp"), "dev-1", Protocol::V5);
    assert!(present, "resumed from what node 3 wrote");
    let got: Vec<String> = (0..2)
        .map(|_| String::from_utf8(c.next_message().1).unwrap())
        .collect();
    assert_eq!(got, ["after-1", "after-2"]);
}

#[test]
fn sessions_of_a_dead_node_are_taken_in_and_keep_queueing_until_their_client_returns() {
    use certmq_codec::{Protocol, QoS};
    let pg = Postgres::start();
    let nats = Nats::start();
    let n1 = node(&pg, &nats, "o1", &[]);
    let n2 = node(&pg, &nats, "o2", &[]);
    let n3 = node(&pg, &nats, "o3", &[]);
    // A persistent session on node 3, offline.
    let (mut c, _) = raw::Raw::connect(n3.addr("mqtt-tcp"), "dev-3", Protocol::V5);
    c.subscribe("cmd/dev-3/#", QoS::AtLeastOnce);
    drop(c);
    state_written(&n3);
    let _ = n3.kill9_keep_dir();
    // Node 1 (the first by id of those up) takes it in once node 3 has been
    // silent for 15 s: its subscription is live again.
    let a1 = Api::of(&n1);
    let took = within(Duration::from_secs(40), "dev-3 taken in by node 1", || {
        a1.metric("certmq_sessions") >= 1.0
    });
    eprintln!("kill -9 -> sessions taken in: {took:?}");
    // A command published on node 2 while dev-3 is away is kept for it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while a1.metric("certmq_cluster_messages_received_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the adopted subscription did not cross"
        );
        pub1(&n2, "cmd/dev-3/reboot", "now");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut c, present) = raw::Raw::connect(n2.addr("mqtt-tcp"), "dev-3", Protocol::V5);
    assert!(present, "dev-3 resumes on node 2");
    let (topic, payload) = c.next_message();
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("cmd/dev-3/reboot", &b"now"[..])
    );
}
