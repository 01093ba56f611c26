//! Flow control (SPEC 2) against the real binary: a publisher faster than
//! its subscriber is slowed, not dropped (mosquitto_pub into a paho-mqtt
//! subscriber, QoS 0 and 1, default settings); a subscriber that never
//! reads pauses nobody for long, is dropped for past its queue's reserve,
//! and does not hold back a reading one; a waiting publisher still gets
//! PINGRESP.

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

/// The load tests run one at a time: flow control is judged on the
/// subscriber's progress, and two floods at once would starve one
/// subscriber of CPU (on 2 cores) long enough to count as not draining.
static LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn load_test() -> std::sync::MutexGuard<'static, ()> {
    LOAD.lock().unwrap_or_else(|e| e.into_inner())
}

/// `certmq serve` with TCP and admin listeners, no persistence, and a
/// `[broker]` section.
fn serve(broker_section: &str) -> BrokerProcess {
    let dir = TempDir::new("flow");
    let config = dir.0.join("certmq.toml");
    std::fs::write(&config, format!("[broker]\n{broker_section}\n")).unwrap();
    let config = config.to_string_lossy().into_owned();
    serve_tcp_admin(dir, &["--config", &config, "--persistence", "off"])
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
    let _one_at_a_time = load_test();
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
    let _one_at_a_time = load_test();
    let b = serve("");
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
    // A subscriber that drains slowly: QoS 1 with 10 in flight, one
    // acknowledgement every 20 ms; its queue of 100 stays full, so its
    // publisher waits about half a second for each quarter to drain.
    let b = serve("max_queued_messages = 100\nmax_inflight = 10");
    let api = Api::of(&b);
    let (mut sub, _) = Raw::connect(b.addr("mqtt-tcp"), "slow", Protocol::V5);
    sub.subscribe("flow/p", QoS::AtLeastOnce);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match sub.try_recv() {
                Some(Packet::Publish(p)) => {
                    std::thread::sleep(Duration::from_millis(20));
                    let ack = certmq_codec::PubResponse::new(
                        p.packet_id,
                        certmq_codec::ReasonCode::SUCCESS,
                    );
                    if sub.try_send(Packet::PubAck(ack)).is_err() {
                        return;
                    }
                }
                Some(_) => {}
                None => return,
            }
        }
    });
    let (mut publ, _) = Raw::connect(b.addr("mqtt-tcp"), "publisher", Protocol::V5);
    publ.set_read_timeout(Duration::from_millis(300));
    // QoS 1, one at a time, until one is not acknowledged at once.
    let mut waiting_id = None;
    for id in 1..=1_000u16 {
        publ.publish("flow/p", b"m", QoS::AtLeastOnce, id, false);
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
    assert!(api.metric("certmq_flow_control_pauses_total") >= 1.0);
    // A PINGREQ is answered while the publish waits.
    let sent = Instant::now();
    publ.send(Packet::PingReq);
    let mut acked = false;
    loop {
        match publ.try_recv() {
            Some(Packet::PingResp) => break,
            Some(Packet::PubAck(a)) if a.packet_id == id => acked = true,
            other => panic!("{other:?} instead of PINGRESP"),
        }
    }
    assert!(
        sent.elapsed() < Duration::from_millis(300),
        "PINGRESP came late"
    );
    // The waiting publish is routed and acknowledged once the queue drains.
    publ.set_read_timeout(Duration::from_secs(10));
    if !acked {
        match publ.try_recv() {
            Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        api.metric("certmq_messages_dropped_total{reason=\"slow_consumer\"}"),
        0.0,
        "a subscriber that drains lost messages"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(publ);
    b.terminate();
    let _ = reader.join();
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
