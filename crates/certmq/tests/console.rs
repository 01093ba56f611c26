//! The web console in a real browser (SPEC 12): Debian's Chromium driven by
//! playwright-core (`tests/interop/console/console.mjs`, installed by
//! `scripts/test`), walking the seeds' flows through the UI with the seeds'
//! OpenSSL commands, a real mosquitto device over mutual TLS, the viewer
//! role refused by the server, the HTTP security properties, and MQTT over
//! WSS from the same browser. Screenshots of every page are written to
//! `target/console-screenshots/`. A missing Chromium fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn console_user(b: &BrokerProcess, name: &str, role: &str, password: &str) {
    let token = std::fs::read_to_string(b.dir.0.join("admin.token")).unwrap();
    let mut child = Command::new(bin())
        .args(["console-user", "add", name, "--role", role])
        .args(["--url", &format!("http://{}", b.addr("admin-http"))])
        .args(["--token", token.trim()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "console-user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_seed_flows_in_a_real_browser() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed: `apt-get install chromium` (scripts/test does)"
    );
    let console = repo_root().join("tests/interop/console");
    assert!(
        console.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: `npm ci --prefix tests/interop/console` (scripts/test does)"
    );
    let dir = TempDir::new("console");
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(&dir.0)
        .args(["--listen-tcp", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0"])
        .args(["--listen-tls", "127.0.0.1:0", "--listen-wss", "127.0.0.1:0"])
        .args([
            "--listen-admin",
            "127.0.0.1:0",
            "--listen-admin-tls",
            "127.0.0.1:0",
        ])
        .args(["--wss-client-auth", "none"]);
    let b = BrokerProcess::spawn(cmd, dir, 6);
    console_user(&b, "operator", "administrator", "operator-password-1");
    console_user(&b, "auditor", "viewer", "auditor-password-1");
    let work = TempDir::new("console-work");
    let artifacts = repo_root().join("target/console-screenshots");
    let config = serde_json::json!({
        "http": format!("http://{}", b.addr("admin-http")),
        "https": format!("https://localhost:{}", b.port("admin-https")),
        "tls_port": b.addr("mqtt-tls").port(),
        "wss": format!("wss://localhost:{}/mqtt", b.port("mqtt-wss")),
        "data_dir": b.dir.0,
        "work": work.0,
        "artifacts": artifacts,
        "admin": ["operator", "operator-password-1"],
        "viewer": ["auditor", "auditor-password-1"],
    });
    let config_file = work.0.join("console.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let out = run(
        Command::new("node")
            .arg(console.join("console.mjs"))
            .arg(&config_file)
            .current_dir(&console)
            .env("NODE_EXTRA_CA_CERTS", b.dir.0.join("tls/default-ca.pem")),
        Duration::from_secs(240),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "console checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
