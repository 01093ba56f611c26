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

/// `certmq serve` on `dir` with TCP and admin listeners on port 0.
fn serve(dir: TempDir, extra: &[&str]) -> BrokerProcess {
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
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
        .args(extra);
    BrokerProcess::spawn(cmd, dir, 2)
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
    let text = ureq::get(format!("{}/metrics", api.url))
        .header("authorization", format!("Bearer {}", api.token))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
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
    let b = serve(TempDir::new("persist-restart"), &[]);
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
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.0.join("state.db"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let b = serve(dir, &[]);
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
    let b = serve(TempDir::new("persist-async"), &[]);
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
    let b = serve(dir, &[]);
    let got = collect(&b, "crash-a", "a/#", 20);
    let want: Vec<String> = (0..20).map(|i| format!("a/{i} m{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn sync_mode_never_loses_an_acknowledged_message_to_a_kill_9() {
    let b = serve(TempDir::new("persist-sync"), &["--persistence", "sync"]);
    park_subscriber(&b, "crash-s", "s/#");
    for i in 0..20 {
        // mosquitto_pub returns once it has the PUBACK.
        publish(
            &b,
            &["-q", "1", "-t", &format!("s/{i}"), "-m", &format!("m{i}")],
        );
    }
    let ((), dir) = b.kill9_keep_dir();
    let b = serve(dir, &["--persistence", "sync"]);
    let got = collect(&b, "crash-s", "s/#", 20);
    let want: Vec<String> = (0..20).map(|i| format!("s/{i} m{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn a_will_of_a_client_connected_at_a_crash_is_published_after_restart() {
    let b = serve(TempDir::new("persist-will"), &[]);
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
    let b = serve(dir, &[]);
    assert_eq!(
        collect(&b, "watcher", "wills/#", 1),
        ["wills/device-7 offline"]
    );
}

#[test]
fn messages_in_flight_are_resent_with_dup_after_a_restart() {
    let b = serve(TempDir::new("persist-inflight"), &[]);
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
    let b = serve(dir, &[]);
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
    let b = serve(dir, &["--persistence", "off"]);
    publish(&b, &["-t", "x", "-m", "up"]);
}

#[test]
fn persistence_off_keeps_nothing_across_a_restart() {
    let b = serve(TempDir::new("persist-off"), &["--persistence", "off"]);
    publish(&b, &["-q", "1", "-r", "-t", "gone/r", "-m", "retained"]);
    let (status, dir) = b.terminate_keep_dir();
    assert!(status.success());
    assert!(!dir.0.join("state.db").exists());
    let b = serve(dir, &["--persistence", "off"]);
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
    let b = serve(dir, &["--config", conf.to_str().unwrap()]);
    let api = Api::of(&b);
    // MQTT 5: 64 KiB retained messages until the 1 MiB quota is hit; the
    // PUBACKs turn from success to 0x80 (unspecified error).
    let out = run(
        Command::new("python3")
            .arg(repo_root().join("tests/interop/paho_persist.py"))
            .args([
                "puback-codes",
                "127.0.0.1",
                &b.port("mqtt-tcp"),
                "big",
                "65536",
                "40",
            ]),
        WAIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let codes: Vec<u8> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    // 0x10: success, no matching subscribers.
    assert_eq!(codes.first(), Some(&0x10), "{codes:?}");
    assert_eq!(codes.last(), Some(&0x80), "{codes:?}");
    assert!(metric(&api, "certmq_persistence_write_errors_total") > 0.0);
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
