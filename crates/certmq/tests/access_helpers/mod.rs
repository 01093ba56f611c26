//! Helpers of the authentication and authorization tests: the paho-mqtt
//! driver script (`tests/interop/paho_access.py`), MQTT.js and
//! mosquitto_pub, each a real third-party client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::common::*;

pub const LIMIT: Duration = Duration::from_secs(60);

/// TLS material for paho: the broker's CA, and a client certificate.
pub struct Tls<'a> {
    pub cafile: &'a Path,
    pub cert: Option<(&'a Path, &'a Path)>,
}

fn paho_command(port: u16, version: &str, tls: Option<&Tls<'_>>, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("tests/interop/paho_access.py"))
        .args(["localhost", &port.to_string(), version]);
    if let Some(t) = tls {
        cmd.arg("--cafile").arg(t.cafile);
        if let Some((c, k)) = t.cert {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        }
    }
    cmd.args(args);
    cmd
}

/// Runs the paho driver to its end; its event lines.
pub fn paho(port: u16, version: &str, tls: Option<&Tls<'_>>, args: &[&str]) -> Vec<String> {
    let out = run(&mut paho_command(port, version, tls, args), LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "paho_access.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// Starts the paho driver (a subscriber that holds); its child and lines.
pub fn paho_spawn(
    port: u16,
    version: &str,
    tls: Option<&Tls<'_>>,
    args: &[&str],
) -> (Child, Receiver<String>) {
    let mut child = spawn_piped(&mut paho_command(port, version, tls, args));
    let rx = stdout_lines(&mut child);
    (child, rx)
}

/// The next line starting with `prefix` within `wait`, skipping others.
pub fn expect_line(rx: &Receiver<String>, prefix: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line '{prefix}...' within {wait:?}; saw {seen:?}"),
        }
    }
}

/// Every line within `wait`.
pub fn lines_for(rx: &Receiver<String>, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        out.push(l);
    }
    out
}

/// One MQTT.js connection attempt over WebSocket: `connack 0`,
/// `refused CODE` or `error ...`.
pub fn mqttjs(url: &str, credentials: Option<(&str, &str)>) -> String {
    let dir = repo_root().join("tests/interop/mqttjs");
    assert!(
        dir.join("node_modules/mqtt").exists(),
        "MQTT.js is not installed: run `npm ci --prefix tests/interop/mqttjs` (.ci/run does)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("connect.mjs")).arg(url);
    if let Some((u, p)) = credentials {
        cmd.args([u, p]);
    }
    let out = run(&mut cmd, LIMIT);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// mosquitto_pub with `args`; (succeeded, stdout + stderr).
pub fn mosquitto_pub(args: &[&str]) -> (bool, String) {
    let out = run(Command::new("mosquitto_pub").args(args), LIMIT);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Waits until `f` holds (bounded), polling every 20 ms.
pub fn eventually(what: &str, wait: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {wait:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
