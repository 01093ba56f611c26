//! Flow control (SPEC 2) against the real binary: a publisher faster than
//! its subscriber is slowed, not dropped (mosquitto_pub into a paho-mqtt
//! subscriber, QoS 0 and 1, default settings); a subscriber that never
//! reads is dropped for after the slow-consumer timeout and does not hold
//! back a reading one; a waiting publisher still gets PINGRESP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod device_helpers;
mod raw;
mod tls_client;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certmq_codec::{Packet, Protocol, QoS};
use common::*;
use device_helpers::Api;
use raw::Raw;

/// `certmq serve` with TCP and admin listeners and a `[broker]` section.
fn serve(broker_section: &str) -> BrokerProcess {
    let dir = TempDir::new("flow");
    let config = dir.0.join("certmq.toml");
    std::fs::write(&config, format!("[broker]\n{broker_section}\n")).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&dir.0)
        .args([
            "--listen-tcp",
            "127.0.0.1:0",
            "--listen-admin",
            "127.0.0.1:0",
        ])
        .args([
            "--listen-tls",
            "off",
            "--listen-ws",
            "off",
            "--listen-wss",
            "off",
        ])
        .args(["--persistence", "off"]);
    BrokerProcess::spawn(cmd, dir, 2)
}

/// Starts the paho-mqtt counter on `topic` and waits for its SUBACK.
fn paho_count(
    b: &BrokerProcess,
    topic: &str,
    qos: u8,
    count: usize,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = spawn_piped(
        Command::new("python3")
            .arg(repo_root().join("tests/interop/paho_count.py"))
            .args(["127.0.0.1", &b.port("mqtt-tcp"), topic])
            .args([qos.to_string(), count.to_string(), "15".into()]),
    );
    let rx = stdout_lines(&mut child);
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(first, "subscribed");
    (child, rx)
}

/// mosquitto_pub -l: one message per stdin line (its sequence number,
/// then `pad` bytes), as fast as it can.
fn mosquitto_pub_lines(b: &BrokerProcess, topic: &str, qos: u8, count: usize, pad: usize) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &b.port("mqtt-tcp"), "-V", "mqttv5"])
        .args(["-t", topic, "-q", &qos.to_string(), "-l"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed");
    let mut stdin = child.stdin.take().unwrap();
    let padding = "x".repeat(pad);
    let lines: String = (0..count).map(|i| format!("{i} {padding}\n")).collect();
    stdin.write_all(lines.as_bytes()).unwrap();
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "mosquitto_pub failed");
            return;
        }
        assert!(Instant::now() < deadline, "mosquitto_pub never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finished(mut child: std::process::Child, rx: std::sync::mpsc::Receiver<String>) -> String {
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the subscriber reported nothing");
    let _ = child.wait();
    line
}

/// A fast C publisher into a Python subscriber: the broker reads the
/// publisher at the subscriber's pace, and every message arrives in order.
fn fast_publisher_slow_subscriber(qos: u8, count: usize) {
    let b = serve("");
    let api = Api::of(&b);
    let (sub, rx) = paho_count(&b, "flow/t", qos, count);
    mosquitto_pub_lines(&b, "flow/t", qos, count, 0);
    assert_eq!(
        finished(sub, rx),
        format!("received {count} in_order=True"),
        "a subscriber that reads lost messages"
    );
    assert_eq!(
        api.metric("certmq_messages_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
    assert_eq!(
        api.metric("certmq_messages_dropped_total{reason=\"slow_consumer\"}"),
        0.0
    );
    assert!(
        api.metric("certmq_flow_control_pauses_total") > 0.0,
        "the publisher was never paused: the test did not overload the subscriber"
    );
    b.terminate();
}

#[test]
fn qos0_a_reading_subscriber_loses_nothing_to_a_faster_publisher() {
    fast_publisher_slow_subscriber(0, 100_000);
}

#[test]
fn qos1_a_reading_subscriber_loses_nothing_to_a_faster_publisher() {
    fast_publisher_slow_subscriber(1, 30_000);
}

/// A raw subscriber that subscribes and then never reads.
fn stalled_subscriber(b: &BrokerProcess, topic: &str, qos: QoS) -> Raw {
    let (mut s, _) = Raw::connect(b.addr("mqtt-tcp"), "stalled", Protocol::V5);
    s.subscribe(topic, qos);
    s
}

#[test]
fn a_stalled_subscriber_is_dropped_for_and_does_not_hold_back_a_reading_one() {
    let b = serve("slow_consumer_timeout_ms = 300");
    let api = Api::of(&b);
    // 40 MB: more than the stalled subscriber's socket buffers hold.
    let count = 40_000;
    let _stalled = stalled_subscriber(&b, "flow/s", QoS::AtMostOnce);
    let (sub, rx) = paho_count(&b, "flow/s", 0, count);
    let started = Instant::now();
    mosquitto_pub_lines(&b, "flow/s", 0, count, 1000);
    assert_eq!(finished(sub, rx), format!("received {count} in_order=True"));
    let dropped = api.metric("certmq_messages_dropped_total{reason=\"slow_consumer\"}");
    assert!(
        dropped > 0.0,
        "nothing was dropped for the stalled subscriber"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the stalled subscriber held the publisher back"
    );
    b.terminate();
}

#[test]
fn a_waiting_publisher_still_gets_pingresp_and_resumes_when_the_subscriber_goes() {
    // A long timeout: the publisher waits for as long as the test needs.
    let b = serve("slow_consumer_timeout_ms = 60000\nmax_queued_messages = 100");
    let api = Api::of(&b);
    let stalled = stalled_subscriber(&b, "flow/p", QoS::AtLeastOnce);
    let (mut publ, _) = Raw::connect(b.addr("mqtt-tcp"), "publisher", Protocol::V5);
    publ.set_read_timeout(Duration::from_millis(1000));
    let payload = vec![b'x'; 1024];
    // QoS 1, one at a time: acknowledged until the stalled subscriber's
    // socket, window and queue are full; then the next one waits.
    let mut waiting_id = None;
    for id in 1..=20_000u16 {
        publ.publish("flow/p", &payload, QoS::AtLeastOnce, id, false);
        match publ.try_recv() {
            Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, id),
            None => {
                waiting_id = Some(id);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let id = waiting_id.expect("the publisher was never paused");
    assert_eq!(api.metric("certmq_flow_control_pauses_total"), 1.0);
    publ.send(Packet::PingReq);
    assert!(
        matches!(publ.try_recv(), Some(Packet::PingResp)),
        "no PINGRESP while waiting"
    );
    // The subscriber goes away: the waiting publish is routed and acknowledged.
    drop(stalled);
    publ.set_read_timeout(Duration::from_secs(10));
    match publ.try_recv() {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, id),
        other => panic!("{other:?}"),
    }
    b.terminate();
}

#[test]
fn the_slow_consumer_timeout_is_in_the_default_configuration() {
    let out = run(
        Command::new(bin()).args(["config", "default"]),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        BufReader::new(text.as_bytes())
            .lines()
            .map_while(Result::ok)
            .any(|l| l.trim() == "slow_consumer_timeout_ms = 2000"),
        "{text}"
    );
}
