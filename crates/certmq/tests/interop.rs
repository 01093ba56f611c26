//! The real binary with real third-party clients: mosquitto_pub/sub (MQTT
//! 3.1, 3.1.1, 5.0 over TCP), paho-mqtt 2.x (Python, 3.1.1 and 5.0) and
//! MQTT.js (Node.js, over WebSocket). A missing client fails the test.

// Test code: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Starts mosquitto_sub, waits until its subscription is in place (it
/// prints nothing until then, so a retained marker message is used), and
/// returns it.
fn mosquitto_sub(
    port: &str,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = spawn_piped(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", port, "-W", "30"])
            .args(args),
    );
    let rx = stdout_lines(&mut child);
    (child, rx)
}

fn mosquitto_pub(port: &str, args: &[&str]) {
    let out = run(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", port])
            .args(args),
        LIMIT,
    );
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn line(rx: &std::sync::mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("mosquitto_sub printed nothing in time")
}

#[test]
fn mosquitto_clients_every_version_and_qos() {
    let broker = BrokerProcess::start(&[]);
    let port = broker.port("mqtt-tcp");
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        // Subscribe to a marker topic first so we know the subscription is live.
        let (mut sub, rx) = mosquitto_sub(
            &port,
            &[
                "-V", version, "-t", "ready", "-t", "m/#", "-q", "2", "-v", "-C", "4",
            ],
        );
        loop {
            mosquitto_pub(&port, &["-V", version, "-t", "ready", "-m", "r"]);
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
                assert_eq!(l, "ready r");
                break;
            }
        }
        for qos in ["0", "1", "2"] {
            mosquitto_pub(
                &port,
                &[
                    "-V",
                    version,
                    "-t",
                    &format!("m/{qos}"),
                    "-m",
                    &format!("hello {qos}"),
                    "-q",
                    qos,
                ],
            );
            assert_eq!(
                line(&rx),
                format!("m/{qos} hello {qos}"),
                "{version} qos {qos}"
            );
        }
        let status = sub.wait().unwrap();
        assert!(
            status.success(),
            "{version}: mosquitto_sub exited with {status}"
        );
    }
}

#[test]
fn mosquitto_retained_and_will() {
    let broker = BrokerProcess::start(&[]);
    let port = broker.port("mqtt-tcp");
    mosquitto_pub(
        &port,
        &["-t", "cfg/a", "-m", "retained-value", "-r", "-q", "1"],
    );
    let out = run(
        Command::new("mosquitto_sub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "cfg/#",
            "-v",
            "-C",
            "1",
            "-W",
            "10",
            "-V",
            "mqttv5",
        ]),
        LIMIT,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "cfg/a retained-value"
    );

    // A will from a mosquitto_sub killed with SIGKILL.
    let (mut watcher, rx) = mosquitto_sub(&port, &["-t", "ready", "-t", "wills/#", "-v"]);
    loop {
        mosquitto_pub(&port, &["-t", "ready", "-m", "r"]);
        if rx.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
    }
    let (mut dying, dying_rx) = mosquitto_sub(
        &port,
        &[
            "-t",
            "ready2",
            "--will-topic",
            "wills/x",
            "--will-payload",
            "died",
            "-v",
        ],
    );
    loop {
        mosquitto_pub(&port, &["-t", "ready2", "-m", "r"]);
        if dying_rx.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
    }
    dying.kill().unwrap();
    dying.wait().unwrap();
    assert_eq!(line(&rx), "wills/x died");
    watcher.kill().unwrap();
    watcher.wait().unwrap();
}

#[test]
fn paho_mqtt_suite() {
    let broker = BrokerProcess::start(&[]);
    let script = repo_root().join("tests/interop/paho_suite.py");
    let out = run(
        Command::new("python3")
            .arg(script)
            .arg("127.0.0.1")
            .arg(broker.port("mqtt-tcp")),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "paho suite failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn mqttjs_suite_over_websocket() {
    let broker = BrokerProcess::start(&[]);
    let dir = repo_root().join("tests/interop/mqttjs");
    assert!(
        dir.join("node_modules/mqtt").exists(),
        "MQTT.js is not installed: run `npm ci --prefix tests/interop/mqttjs` (.ci/run does)"
    );
    let url = format!("ws://{}/mqtt", broker.addr("mqtt-ws"));
    let out = run(
        Command::new("node").arg(dir.join("suite.mjs")).arg(url),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "MQTT.js suite failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
