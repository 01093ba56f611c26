//! TLS and WSS listeners with the default server certificate: real clients
//! (mosquitto_pub/sub, openssl s_client) against the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(30);

fn s_client(port: &str, servername: Option<&str>, ca: &std::path::Path) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(ca);
    if let Some(n) = servername {
        cmd.args(["-servername", n]);
    } else {
        cmd.arg("-noservername");
    }
    let out = run(cmd.stdin(Stdio::null()), LIMIT);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn default_certificate_serves_tls_and_wss_and_survives_restart() {
    let broker = BrokerProcess::start(&["--tls-client-auth", "none", "--wss-client-auth", "none"]);
    let ca = broker.dir.0.join("tls/default-ca.pem");
    let tls = broker.port("mqtt-tls");

    // mosquitto clients over TLS, trusting the default CA file.
    let mut sub = spawn_piped(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "localhost",
                "-p",
                &tls,
                "-t",
                "tls/t",
                "-C",
                "1",
                "-W",
                "20",
            ])
            .arg("--cafile")
            .arg(&ca),
    );
    let rx = stdout_lines(&mut sub);
    let got = loop {
        let p = run(
            Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "localhost",
                    "-p",
                    &tls,
                    "-t",
                    "tls/t",
                    "-m",
                    "over-tls",
                ])
                .arg("--cafile")
                .arg(&ca),
            LIMIT,
        );
        assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            break l;
        }
    };
    assert_eq!(got, "over-tls");
    assert!(sub.wait().unwrap().success());

    // The certificate verifies by name and by IP, with and without SNI, on both listeners.
    for port in [tls.clone(), broker.port("mqtt-wss")] {
        for sni in [Some("localhost"), None] {
            let text = s_client(&port, sni, &ca);
            assert!(
                text.contains("Verify return code: 0 (ok)"),
                "{sni:?}: {text}"
            );
            assert!(
                text.contains("CN=localhost") || text.contains("CN = localhost"),
                "{text}"
            );
        }
    }
    let before = std::fs::read(broker.dir.0.join("tls/default.pem")).unwrap();
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(broker.dir.0.join("tls/default.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);

    // Restart on the same data directory: the same certificate is served.
    let (status, dir) = broker.terminate_keep_dir();
    assert!(status.success());
    let pem = dir.0.join("tls/default.pem");
    let again = serve_tls_only(dir, false);
    assert_eq!(std::fs::read(pem).unwrap(), before);
    let text = s_client(&again.port("mqtt-tls"), Some("localhost"), &ca);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[test]
fn required_client_auth_refuses_clients_without_a_certificate() {
    let broker = BrokerProcess::start(&[]);
    let ca = broker.dir.0.join("tls/default-ca.pem");
    let out = run(
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "localhost",
                "-p",
                &broker.port("mqtt-tls"),
                "-t",
                "t",
                "-m",
                "x",
            ])
            .arg("--cafile")
            .arg(&ca),
        LIMIT,
    );
    assert!(
        !out.status.success(),
        "a client without a certificate got in"
    );
    // Plain TCP on loopback is unaffected.
    let ok = run(
        Command::new("mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port("mqtt-tcp"),
            "-t",
            "t",
            "-m",
            "x",
        ]),
        LIMIT,
    );
    assert!(ok.status.success());
}
