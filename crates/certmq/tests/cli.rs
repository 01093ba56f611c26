//! The binary's command line: start-up lines, flags, variables, config
//! file, `config default`, and a clean exit on SIGTERM.

// Test code: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn serve_reports_listeners_and_exits_cleanly_on_sigterm() {
    let broker = BrokerProcess::start(&[]);
    assert!(broker.addr("mqtt-tcp").ip().is_loopback());
    assert_ne!(broker.addr("mqtt-tcp").port(), 0);
    assert_ne!(broker.addr("mqtt-ws").port(), 0);
    let status = broker.terminate();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn environment_variables_and_off() {
    let dir = TempDir::new("env");
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .env("CERTMQ_DATA_DIR", &dir.0)
        .env("CERTMQ_LISTEN_TCP", "127.0.0.1:0")
        .env("CERTMQ_LISTEN_WS", "off")
        .env("CERTMQ_LISTEN_TLS", "off")
        .env("CERTMQ_LISTEN_WSS", "off")
        .env("CERTMQ_LISTEN_ADMIN", "off");
    let broker = BrokerProcess::spawn(cmd, dir, 1);
    assert!(broker.addrs.contains_key("mqtt-tcp"));
    assert!(!broker.addrs.contains_key("mqtt-ws"));
    // Nothing else is announced.
    std::thread::sleep(Duration::from_millis(200));
    let extra: Vec<String> = broker
        .log
        .try_iter()
        .filter(|l| l.contains("listening protocol="))
        .collect();
    assert!(extra.is_empty(), "{extra:?}");
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let dir = TempDir::new("cfg");
    let file = dir.0.join("certmq.toml");
    std::fs::write(
        &file,
        "[listeners.tcp]\nenabled = true\naddr = \"127.0.0.1:0\"\n\n[listeners.ws]\nenabled = false\naddr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .args(["--listen-ws", "127.0.0.1:0"])
        .args([
            "--listen-tls",
            "off",
            "--listen-wss",
            "off",
            "--listen-admin",
            "off",
        ]);
    let broker = BrokerProcess::spawn(cmd, dir, 2);
    assert!(
        broker.addrs.contains_key("mqtt-ws"),
        "the flag enabled the WS listener"
    );
}

#[test]
fn bad_configuration_is_refused_before_binding() {
    let dir = TempDir::new("bad");
    let file = dir.0.join("bad.toml");
    std::fs::write(&file, "[broker]\nmax_pakcet_size = 10\n").unwrap();
    let out = run(
        Command::new(bin()).arg("serve").arg("--config").arg(&file),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_pakcet_size"), "{err}");
    assert!(!err.contains("listening"), "{err}");

    let out = run(
        Command::new(bin()).args(["serve", "--listen-tcp", "nonsense"]),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("IP:PORT"));
}

#[test]
fn config_default_prints_a_loadable_config() {
    let out = run(
        Command::new(bin()).args(["config", "default"]),
        Duration::from_secs(20),
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for key in [
        "max_packet_size",
        "max_queued_messages",
        "[listeners.tcp]",
        "[listeners.ws]",
        "[listeners.tls]",
        "[listeners.wss]",
        "client_auth = \"required\"",
        "server_names",
        "[admin]",
        "connect_timeout_secs",
    ] {
        assert!(text.contains(key), "missing {key} in:\n{text}");
    }
    // Loading the printed defaults works (with ports moved to 0).
    let dir = TempDir::new("default");
    let file = dir.0.join("default.toml");
    let local = text
        .replace("0.0.0.0", "127.0.0.1")
        .replace(":1883", ":0")
        .replace(":8083", ":0")
        .replace(":8883", ":0")
        .replace(":8084", ":0")
        .replace(":18083", ":0");
    std::fs::write(&file, local).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.0.join("d"));
    let broker = BrokerProcess::spawn(cmd, dir, 5);
    assert!(broker.terminate().success());
}

/// The CLI takes method and path from the API contract and percent-encodes
/// path segments: a client id with `/`, spaces, `?` and `#` is kicked.
#[test]
fn kick_works_for_any_client_id() {
    let broker = BrokerProcess::start(&[]);
    let token = std::fs::read_to_string(broker.dir.0.join("admin.token")).unwrap();
    let id = "site/a b?c#1";
    let mut sub = spawn_piped(Command::new("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port("mqtt-tcp"),
        "-i",
        id,
        "-t",
        "x",
        "-V",
        "mqttv5",
    ]));
    let cli = |args: &[&str]| {
        run(
            Command::new(bin()).args(args).args([
                "--url",
                &format!("http://{}", broker.addr("admin-http")),
                "--token",
                token.trim(),
            ]),
            Duration::from_secs(30),
        )
    };
    // Until the subscriber is connected (bounded).
    let mut listed = false;
    for _ in 0..100 {
        let out = cli(&["connections", "list", "--json"]);
        if String::from_utf8_lossy(&out.stdout).contains("site/a b?c#1") {
            listed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(listed, "the subscriber never connected");
    let out = cli(&["connections", "kick", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // mosquitto_sub exits when kicked with DISCONNECT 0x98.
    let start = std::time::Instant::now();
    loop {
        if sub.try_wait().unwrap().is_some() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not kicked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = cli(&["connections", "kick", "no/such client"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    // `certmq config default | head -1`, and a client command the same way:
    // the reader goes away before the output is written.
    let broker = BrokerProcess::start(&[]);
    let token = std::fs::read_to_string(broker.dir.0.join("admin.token")).unwrap();
    let url = format!("http://{}", broker.addr("admin-http"));
    for args in [
        vec!["config", "default"],
        vec![
            "server-cert",
            "list",
            "--url",
            &url,
            "--token",
            token.trim(),
        ],
    ] {
        let mut child = Command::new(bin())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {err}");
    }
}
