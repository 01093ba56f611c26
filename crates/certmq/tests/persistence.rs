//! SPEC 10 against the real binary and real clients (mosquitto_pub and
//! mosquitto_sub, paho-mqtt): what survives a restart (SIGTERM), a crash
//! (kill -9) in `async` and `sync` mode, wills of clients connected at the
//! crash, a damaged state file, `off`, and a failing write in `sync` mode.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod device_helpers;
mod tls_client;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use device_helpers::Api;

const WAIT: Duration = Duration::from_secs(20);

/// PUBACK reason codes of `count` retained QoS 1 messages of 64 KiB (MQTT
/// 5, paho), one per message.
fn puback_codes(b: &BrokerProcess, count: usize) -> Vec<u8> {
    let out = run(
        Command::new("python3")
            .arg(repo_root().join("tests/interop/paho_persist.py"))
            .args([
                "puback-codes",
                "127.0.0.1",
                &b.port("mqtt-tcp"),
                "big",
                "65536",
            ])
            .arg(count.to_string()),
        WAIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn mosquitto(tool: &str, b: &BrokerProcess, args: &[&str]) -> std::process::Output {
    let out = run(
        Command::new(tool)
            .args(["-h", "127.0.0.1", "-p", &b.port("mqtt-tcp")])
            .args(args),
        WAIT,
    );
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn publish(b: &BrokerProcess, args: &[&str]) {
    mosquitto("mosquitto_pub", b, args);
}

/// A persistent session (MQTT 3.1.1, clean session off) subscribed to
/// `filter` at QoS 1, then offline.
fn park_subscriber(b: &BrokerProcess, id: &str, filter: &str) {
    mosquitto(
        "mosquitto_sub",
        b,
        &["-i", id, "-c", "-q", "1", "-t", filter, "-E"],
    );
}

/// Resumes the session and returns the `topic payload` lines of `n`
/// messages.
fn collect(b: &BrokerProcess, id: &str, filter: &str, n: usize) -> Vec<String> {
    let out = mosquitto(
        "mosquitto_sub",
        b,
        &[
            "-i",
            id,
            "-c",
            "-q",
            "1",
            "-t",
            filter,
            "-v",
            "-C",
            &n.to_string(),
            "-W",
            "10",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A counter of the Prometheus text at `/metrics`.
fn metric(api: &Api, name: &str) -> f64 {
    api.metric(name)
}

/// Waits until the writer has committed every change recorded so far.
fn committed(api: &Api) {
    let recorded = metric(api, "certmq_persistence_changes_recorded_total");
    let deadline = Instant::now() + WAIT;
    while metric(api, "certmq_persistence_changes_written_total") < recorded {
        assert!(Instant::now() < deadline, "changes never committed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_connection(api: &Api, client_id: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, v) = api.call("GET", "/connections", None);
        if v.to_string().contains(&format!("\"{client_id}\"")) {
            return;
        }
        assert!(Instant::now() < deadline, "{client_id} never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restart_keeps_retained_messages_sessions_and_queued_messages() {
    restart_keeps_state(&[]);
}

#[test]
fn a_restart_in_sync_mode_keeps_them_too() {
    restart_keeps_state(&["--persistence", "sync"]);
}

fn restart_keeps_state(mode: &[&str]) {
    let b = serve_tcp_admin(TempDir::new("persist-restart"), mode);
    park_subscriber(&b, "keeper", "k/#");
    publish(&b, &["-q", "1", "-t", "k/1", "-m", "queued"]);
    publish(&b, &["-q", "1", "-r", "-t", "k/r", "-m", "retained"]);
    publish(
        &b,
        &["-q", "1", "-r", "-t", "other/r", "-m", "also-retained"],
    );
    let (status, dir) = b.terminate_keep_dir();
    assert!(status.success());
    assert!(dir.0.join("state.db").exists());
    let file_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.0.join("state.db"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(file_mode & 0o777, 0o600);

    let b = serve_tcp_admin(dir, mode);
    assert_eq!(
        collect(&b, "keeper", "k/#", 2),
        ["k/1 queued", "k/r retained"]
    );
    // A new subscriber gets the retained messages.
    let out = mosquitto(
        "mosquitto_sub",
        &b,
        &["-t", "other/#", "-v", "-C", "1", "-W", "10"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "other/r also-retained"
    );
}

#[test]
fn async_mode_keeps_what_was_committed_through_a_kill_9() {
    let b = serve_tcp_admin(TempDir::new("persist-async"), &[]);
    let api = Api::of(&b);
    park_subscriber(&b, "crash-a", "a/#");
    for i in 0..20 {
        publish(
            &b,
            &["-q", "1", "-t", &format!("a/{i}"), "-m", &format!("m{i}")],
        );
    }
    // The batch holding them is committed within flush_interval_ms.
    committed(&api);
    let ((), dir) = b.kill9_keep_dir();
    let b = serve_tcp_admin(dir, &[]);
    let got = collect(&b, "crash-a", "a/#", 20);
    let want: Vec<String> = (0..20).map(|i| format!("a/{i} m{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn sync_mode_never_loses_an_acknowledged_message_to_a_kill_9() {
    let b = serve_tcp_admin(TempDir::new("persist-sync"), &["--persistence", "sync"]);
    park_subscriber(&b, "crash-s", "s/#");
    for i in 0..20 {
        // mosquitto_pub returns once it has the PUBACK.
        publish(
            &b,
            &["-q", "1", "-t", &format!("s/{i}"), "-m", &format!("m{i}")],
        );
    }
    let ((), dir) = b.kill9_keep_dir();
    let b = serve_tcp_admin(dir, &["--persistence", "sync"]);
    let got = collect(&b, "crash-s", "s/#", 20);
    let want: Vec<String> = (0..20).map(|i| format!("s/{i} m{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn a_will_of_a_client_connected_at_a_crash_is_published_after_restart() {
    let b = serve_tcp_admin(TempDir::new("persist-will"), &[]);
    let api = Api::of(&b);
    park_subscriber(&b, "watcher", "wills/#");
    let mut device = spawn_piped(Command::new("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &b.port("mqtt-tcp"),
        "-i",
        "device-7",
        "-t",
        "commands/device-7",
        "--will-topic",
        "wills/device-7",
        "--will-payload",
        "offline",
        "--will-qos",
        "1",
    ]));
    // The will is kept once the connection is up and its record committed.
    wait_for_connection(&api, "device-7");
    committed(&api);
    let ((), dir) = b.kill9_keep_dir();
    let _ = device.kill();
    let _ = device.wait();
    let b = serve_tcp_admin(dir, &[]);
    assert_eq!(
        collect(&b, "watcher", "wills/#", 1),
        ["wills/device-7 offline"]
    );
}

#[test]
fn messages_in_flight_are_resent_with_dup_after_a_restart() {
    let b = serve_tcp_admin(TempDir::new("persist-inflight"), &[]);
    let script = repo_root().join("tests/interop/paho_persist.py");
    let port = b.port("mqtt-tcp");
    let mut taker = spawn_piped(Command::new("python3").arg(&script).args([
        "take-unacked",
        "127.0.0.1",
        &port,
        "paho-inflight",
        "f/1",
    ]));
    let lines = stdout_lines(&mut taker);
    assert_eq!(
        lines.recv_timeout(WAIT).unwrap(),
        "subscribed",
        "paho did not subscribe"
    );
    publish(&b, &["-q", "1", "-t", "f/1", "-m", "in-flight"]);
    assert_eq!(lines.recv_timeout(WAIT).unwrap(), "in-flight");
    assert!(taker.wait().unwrap().success());
    let (status, dir) = b.terminate_keep_dir();
    assert!(status.success());
    let b = serve_tcp_admin(dir, &[]);
    let out = run(
        Command::new("python3").arg(&script).args([
            "resume",
            "127.0.0.1",
            &b.port("mqtt-tcp"),
            "paho-inflight",
        ]),
        WAIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "in-flight dup=1"
    );
}

#[test]
fn a_damaged_state_file_stops_the_broker_with_what_to_do() {
    let dir = TempDir::new("persist-damaged");
    std::fs::write(dir.0.join("state.db"), vec![0x42; 16384]).unwrap();
    let out = run(
        Command::new(bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(&dir.0)
            .args(["--listen-tcp", "127.0.0.1:0", "--listen-admin", "off"])
            .args([
                "--listen-tls",
                "off",
                "--listen-ws",
                "off",
                "--listen-wss",
                "off",
            ]),
        WAIT,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state.db") && err.contains("damaged"), "{err}");
    assert!(err.contains("move the file away"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // `--persistence off` starts without reading it.
    let b = serve_tcp_admin(dir, &["--persistence", "off"]);
    publish(&b, &["-t", "x", "-m", "up"]);
}

#[test]
fn persistence_off_keeps_nothing_across_a_restart() {
    let b = serve_tcp_admin(TempDir::new("persist-off"), &["--persistence", "off"]);
    publish(&b, &["-q", "1", "-r", "-t", "gone/r", "-m", "retained"]);
    let (status, dir) = b.terminate_keep_dir();
    assert!(status.success());
    assert!(!dir.0.join("state.db").exists());
    let b = serve_tcp_admin(dir, &["--persistence", "off"]);
    let out = run(
        Command::new("mosquitto_sub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port("mqtt-tcp"),
            "-t",
            "gone/#",
            "-C",
            "1",
            "-W",
            "1",
        ]),
        WAIT,
    );
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

#[test]
fn a_failing_write_in_sync_mode_is_not_acknowledged() {
    let dir = TempDir::new("persist-full");
    let conf = dir.0.join("certmq.toml");
    std::fs::write(&conf, "[persistence]\nmode = \"sync\"\nmax_size_mb = 1\n").unwrap();
    let b = serve_tcp_admin(dir, &["--config", conf.to_str().unwrap()]);
    let api = Api::of(&b);
    // MQTT 5: 64 KiB retained messages until the 1 MiB quota is hit; the
    // PUBACKs turn from success to 0x80 (unspecified error).
    let codes = puback_codes(&b, 40);
    // 0x10: success, no matching subscribers.
    assert_eq!(codes.first(), Some(&0x10), "{codes:?}");
    assert_eq!(codes.last(), Some(&0x80), "{codes:?}");
    assert!(metric(&api, "certmq_persistence_write_errors_total") > 0.0);
    // ... and an alarm while writes fail (SPEC 14).
    let alarm = (0..100).find_map(|_| {
        let found = api.ok("GET", "/alarms", None)["items"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["kind"] == "persistence_error").cloned());
        if found.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        found
    });
    assert_eq!(
        alarm.map(|a| a["severity"].clone()),
        Some(serde_json::json!("critical")),
        "a persistence_error alarm"
    );
    // MQTT 3.1.1 has no negative PUBACK: the connection is closed instead.
    let big = b.dir.0.join("big.bin");
    std::fs::write(&big, vec![b'x'; 65536]).unwrap();
    let out = run(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &b.port("mqtt-tcp")])
            .args(["-q", "1", "-r", "-t", "big/v3", "-f"])
            .arg(&big),
        WAIT,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connection was lost"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_write_error_below_the_engine_is_never_acknowledged() {
    // A file size limit on the broker process: the kernel refuses writes
    // past 3 MB with EFBIG, under SQLite, as a full disk would.
    let dir = TempDir::new("persist-efbig");
    let mut cmd = Command::new("prlimit");
    cmd.arg("--fsize=3000000")
        .arg(bin())
        .args(tcp_admin_args(&dir))
        .args(["--persistence", "sync"]);
    let b = BrokerProcess::spawn(cmd, dir, 2);
    let api = Api::of(&b);
    let codes = puback_codes(&b, 80);
    assert_eq!(codes.first(), Some(&0x10), "{codes:?}");
    assert_eq!(codes.last(), Some(&0x80), "{codes:?}");
    assert!(metric(&api, "certmq_persistence_write_errors_total") > 0.0);
    // The broker carries on (in memory): a retained QoS 0 message is
    // still served.
    publish(&b, &["-r", "-t", "alive", "-m", "yes"]);
    let out = mosquitto("mosquitto_sub", &b, &["-t", "alive", "-C", "1", "-W", "10"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
}

// ---------- raw MQTT, for what no client library lets a test control ----------

mod raw;

use certmq_codec::{Packet, Protocol, PubResponse, QoS, ReasonCode};
use raw::Raw;

#[test]
fn qos2_in_both_directions_completes_exactly_once_across_a_kill_9() {
    let b = serve_tcp_admin(TempDir::new("persist-qos2"), &["--persistence", "sync"]);
    let api = Api::of(&b);
    let (mut sub, _) = Raw::connect(b.addr("mqtt-tcp"), "q2-sub", Protocol::V5);
    sub.subscribe("q/#", QoS::ExactlyOnce);
    let (mut publ, _) = Raw::connect(b.addr("mqtt-tcp"), "q2-pub", Protocol::V5);
    publ.publish("q/1", b"one", QoS::AtLeastOnce, 1, false);
    assert!(matches!(publ.recv(), Packet::PubAck(r) if r.packet_id == 1));
    // Incoming QoS 2: PUBREC received, PUBREL not sent before the crash.
    publ.publish("q/2", b"two", QoS::ExactlyOnce, 2, false);
    assert!(matches!(publ.recv(), Packet::PubRec(r) if r.packet_id == 2));
    // Outgoing: q/1 in flight unacknowledged, q/2 released by our PUBREC.
    let (a, bq) = match (sub.recv(), sub.recv()) {
        (Packet::Publish(x), Packet::Publish(y)) => {
            assert_eq!((&*x.topic, &*y.topic), ("q/1", "q/2"));
            (x.packet_id, y.packet_id)
        }
        other => panic!("{other:?}"),
    };
    sub.send(Packet::PubRec(PubResponse::new(bq, ReasonCode::SUCCESS)));
    assert!(matches!(sub.recv(), Packet::PubRel(r) if r.packet_id == bq));
    committed(&api);
    let ((), dir) = b.kill9_keep_dir();
    drop((sub, publ));

    let b = serve_tcp_admin(dir, &["--persistence", "sync"]);
    // The publisher resends its QoS 2 PUBLISH: acknowledged, not routed
    // again; PUBREL completes it.
    let (mut publ, present) = Raw::connect(b.addr("mqtt-tcp"), "q2-pub", Protocol::V5);
    assert!(present);
    publ.publish("q/2", b"two", QoS::ExactlyOnce, 2, true);
    assert!(matches!(publ.recv(), Packet::PubRec(r) if r.packet_id == 2));
    publ.send(Packet::PubRel(PubResponse::new(2, ReasonCode::SUCCESS)));
    assert!(
        matches!(publ.recv(), Packet::PubComp(r) if r.packet_id == 2 && r.reason == ReasonCode::SUCCESS)
    );
    // The subscriber gets q/1 again with DUP and the same packet id, and
    // the PUBREL of q/2; then nothing but the next message.
    let (mut sub, present) = Raw::connect(b.addr("mqtt-tcp"), "q2-sub", Protocol::V5);
    assert!(present);
    match sub.recv() {
        Packet::Publish(p) => {
            assert!(p.dup);
            assert_eq!(
                (&*p.topic, p.packet_id, &p.payload[..]),
                ("q/1", a, &b"one"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(sub.recv(), Packet::PubRel(r) if r.packet_id == bq));
    sub.send(Packet::PubAck(PubResponse::new(a, ReasonCode::SUCCESS)));
    sub.send(Packet::PubComp(PubResponse::new(bq, ReasonCode::SUCCESS)));
    publ.publish("q/fence", b"", QoS::AtLeastOnce, 3, false);
    assert!(matches!(publ.recv(), Packet::PubAck(_)));
    match sub.recv() {
        Packet::Publish(p) => assert_eq!(&*p.topic, "q/fence", "q/2 came twice"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sync_mode_loses_no_acknowledged_message_in_20_random_crashes() {
    let mut dir = TempDir::new("persist-crashloop");
    let mut acked: Vec<u32> = Vec::new();
    let mut seq = 0u32;
    let seed = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(1);
        h.finish()
    };
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..20 {
        let b = serve_tcp_admin(dir, &["--persistence", "sync"]);
        if round == 0 {
            let (mut sub, _) = Raw::connect(b.addr("mqtt-tcp"), "loop-sub", Protocol::V3_1_1);
            sub.subscribe("loop/#", QoS::AtLeastOnce);
        }
        let (mut publ, _) = Raw::connect(b.addr("mqtt-tcp"), "loop-pub", Protocol::V3_1_1);
        let pid = b.pid();
        let delay = Duration::from_millis(5 + next() % 60);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        });
        // At most 45 a round: 20 rounds stay under the queue limit (1,000).
        for _ in 0..45 {
            seq += 1;
            let id = (seq % 65535 + 1) as u16;
            let p = raw::publish("loop/m", &seq.to_be_bytes(), QoS::AtLeastOnce, id, false);
            if publ.try_send(p).is_err() {
                break;
            }
            match publ.try_recv() {
                Some(Packet::PubAck(r)) if r.packet_id == id => acked.push(seq),
                _ => break,
            }
        }
        killer.join().unwrap();
        let ((), d) = b.kill9_keep_dir();
        dir = d;
    }
    assert!(
        acked.len() >= 20,
        "too few messages acknowledged: {}",
        acked.len()
    );
    let b = serve_tcp_admin(dir, &["--persistence", "sync"]);
    let (mut publ, _) = Raw::connect(b.addr("mqtt-tcp"), "loop-pub", Protocol::V3_1_1);
    publ.publish("loop/fence", b"", QoS::AtLeastOnce, 1, false);
    assert!(matches!(publ.recv(), Packet::PubAck(_)));
    let (mut sub, present) = Raw::connect(b.addr("mqtt-tcp"), "loop-sub", Protocol::V3_1_1);
    assert!(present);
    let mut got: Vec<u32> = Vec::new();
    loop {
        match sub.recv() {
            Packet::Publish(p) if &*p.topic == "loop/fence" => break,
            Packet::Publish(p) => {
                got.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                sub.send(Packet::PubAck(PubResponse::new(
                    p.packet_id,
                    ReasonCode::SUCCESS,
                )));
            }
            _ => {}
        }
    }
    let missing: Vec<u32> = acked.iter().filter(|s| !got.contains(s)).copied().collect();
    assert!(
        missing.is_empty(),
        "acknowledged and lost: {missing:?} (seed {seed})"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
}
