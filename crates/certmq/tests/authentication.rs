//! Authentication chains with real clients (SPEC 11): MQTT users with
//! passwords (mosquitto_pub, paho-mqtt 3.1.1 and 5.0, MQTT.js), JSON Web
//! Tokens (HS256 and ES256; valid, expired, wrong key, expiring while
//! connected), anonymous access per listener and `--allow-anonymous`.
//! Every refusal is checked in `GET /connection-rejections` with its
//! reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access_helpers;
mod common;
mod device_helpers;
mod tls_client;

use std::process::Command;
use std::time::Duration;

use access_helpers::*;
use common::*;
use device_helpers::Api;
use serde_json::json;

fn reasons(api: &Api) -> Vec<String> {
    api.rejections()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn password_users_with_every_client_and_deletion_closes_live_connections() {
    let b = BrokerProcess::start(&["--tls-client-auth", "none", "--allow-anonymous=false"]);
    let api = Api::of(&b);
    api.ok(
        "POST",
        "/users",
        Some(json!({"username": "alice", "password": "correct-horse"})),
    );
    let ca = b.dir.0.join("tls/default-ca.pem");
    let ca = ca.to_str().unwrap();
    let tls = b.port("mqtt-tls");
    let tcp = b.addr("mqtt-tcp").port();
    let pub_tls = |creds: &[&str]| {
        let mut args = vec![
            "-h",
            "localhost",
            "-p",
            &tls,
            "--cafile",
            ca,
            "-t",
            "t",
            "-m",
            "x",
        ];
        args.extend_from_slice(creds);
        mosquitto_pub(&args)
    };
    // The README's one-way TLS, with a user.
    assert!(pub_tls(&["-u", "alice", "-P", "correct-horse"]).0);
    assert!(!pub_tls(&["-u", "alice", "-P", "wrong-horse"]).0);
    assert!(!pub_tls(&["-u", "bob", "-P", "correct-horse"]).0);
    assert!(!pub_tls(&[]).0);
    let r = reasons(&api);
    for reason in ["BAD_PASSWORD", "UNKNOWN_USER", "ANONYMOUS_NOT_ALLOWED"] {
        assert!(r.iter().any(|x| x == reason), "{reason} not in {r:?}");
    }
    assert!(api.metric("certmq_connection_rejections_total{reason=\"BAD_PASSWORD\"}") >= 1.0);

    // paho-mqtt, both versions, over TCP.
    for (version, refused) in [("311", "connack 5"), ("5", "connack 134")] {
        let ok = paho(
            tcp,
            version,
            None,
            &["--user", "alice", "--password", "correct-horse"],
        );
        assert_eq!(ok.first().map(String::as_str), Some("connack 0"), "{ok:?}");
        let no = paho(
            tcp,
            version,
            None,
            &["--user", "alice", "--password", "nope-nope"],
        );
        assert!(
            no.first()
                .is_some_and(|l| l == refused || l == "connack 135"),
            "{version}: {no:?}"
        );
    }
    // MQTT.js over WebSocket.
    let ws = format!("ws://{}/mqtt", b.addr("mqtt-ws"));
    assert_eq!(mqttjs(&ws, Some(("alice", "correct-horse"))), "connack 0");
    assert!(mqttjs(&ws, Some(("alice", "wrong"))).starts_with("refused"));
    assert!(mqttjs(&ws, None).starts_with("refused"));

    // Deleted while connected: the live connection is closed (0x98).
    let (mut child, rx) = paho_spawn(
        tcp,
        "5",
        None,
        &[
            "--user",
            "alice",
            "--password",
            "correct-horse",
            "--client-id",
            "alice-1",
            "--hold",
            "20",
        ],
    );
    expect_line(&rx, "connack 0", LIMIT);
    let live = api.ok("GET", "/connections", None);
    assert!(live["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["client_id"] == "alice-1" && c["username"] == "alice"));
    assert_eq!(api.call("DELETE", "/users/alice", None).0, 204);
    let line = expect_line(&rx, "disconnect", Duration::from_secs(2));
    assert!(line.starts_with("disconnect 152"), "{line}");
    child.wait().unwrap();
    assert!(!pub_tls(&["-u", "alice", "-P", "correct-horse"]).0);
    let audit = api.ok("GET", "/audit-log", None).to_string();
    assert!(audit.contains("user.add") && audit.contains("user.delete"));
    assert!(!audit.contains("correct-horse") && !audit.contains("argon2"));
    let users = api.ok("GET", "/users", None).to_string();
    assert!(!users.contains("argon2"));
}

#[test]
fn user_cli_reads_the_password_from_stdin_and_changes_it() {
    let b = BrokerProcess::start(&["--allow-anonymous=false"]);
    let token = std::fs::read_to_string(b.dir.0.join("admin.token")).unwrap();
    let url = format!("http://{}", b.addr("admin-http"));
    let cli = |args: &[&str], stdin: &str| {
        let mut child = Command::new(bin())
            .args(args)
            .args(["--url", &url, "--token", token.trim()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert!(cli(&["user", "add", "meter"], "first-password\n").0);
    let (ok, out) = cli(&["user", "add", "meter"], "first-password\n");
    assert!(!ok && out.contains("UserExists"), "{out}");
    let (ok, out) = cli(&["user", "add", "short"], "short\n");
    assert!(!ok && out.contains("InvalidPassword"), "{out}");
    let (ok, out) = cli(&["user", "list"], "");
    assert!(ok && out.contains("meter"), "{out}");
    let tcp = b.addr("mqtt-tcp").port();
    let login = |pw: &str| paho(tcp, "5", None, &["--user", "meter", "--password", pw]);
    assert_eq!(login("first-password")[0], "connack 0");
    assert!(cli(&["user", "passwd", "meter"], "second-password\n").0);
    assert_ne!(login("first-password")[0], "connack 0");
    assert_eq!(login("second-password")[0], "connack 0");
    assert!(cli(&["user", "delete", "meter"], "").0);
    assert_ne!(login("second-password")[0], "connack 0");
}

fn hs256(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[test]
fn json_web_tokens_valid_expired_wrong_key_and_expiring_while_connected() {
    let keys = TempDir::new("jwt");
    let secret = "a-shared-secret-of-at-least-32-bytes!";
    std::fs::write(keys.0.join("jwt.secret"), format!("{secret}\n")).unwrap();
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(keys.0.join("es256.pub.pem"), es.public_key_pem()).unwrap();
    let config = keys.0.join("certmq.toml");
    std::fs::write(
        &config,
        format!(
            "[authentication]\nallow_anonymous = false\n[authentication.jwt]\nsecret_file = {:?}\npublic_key_files = [{:?}]\n",
            keys.0.join("jwt.secret"),
            keys.0.join("es256.pub.pem")
        ),
    )
    .unwrap();
    let b = BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    let api = Api::of(&b);
    let tcp = b.addr("mqtt-tcp").port();
    let login = |client_id: &str, token: &str, version: &str| {
        paho(
            tcp,
            version,
            None,
            &[
                "--client-id",
                client_id,
                "--user",
                "meter-7",
                "--password",
                token,
            ],
        )
    };
    let valid = hs256(
        secret,
        json!({"sub": "meter-7", "client_id": "m7", "exp": now() + 600}),
    );
    for version in ["311", "5"] {
        assert_eq!(login("m7", &valid, version)[0], "connack 0", "{version}");
    }
    assert_ne!(login("other", &valid, "5")[0], "connack 0");
    let expired = hs256(secret, json!({"sub": "meter-7", "exp": now() - 60}));
    assert_ne!(login("m7", &expired, "5")[0], "connack 0");
    let wrong = hs256(
        "another-secret-that-is-32-bytes-long!",
        json!({"sub": "meter-7", "exp": now() + 600}),
    );
    assert_ne!(login("m7", &wrong, "5")[0], "connack 0");
    let r = reasons(&api);
    for reason in [
        "TOKEN_CLIENT_ID_MISMATCH",
        "TOKEN_EXPIRED",
        "TOKEN_BAD_SIGNATURE",
    ] {
        assert!(r.iter().any(|x| x == reason), "{reason} not in {r:?}");
    }
    // ES256 with a public key from the configuration, through mosquitto_pub.
    let es_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &json!({"sub": "meter-7", "exp": now() + 600}),
        &jsonwebtoken::EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let port = tcp.to_string();
    let (ok, out) = mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-u",
        "meter-7",
        "-P",
        &es_token,
        "-t",
        "t",
        "-m",
        "x",
    ]);
    assert!(ok, "{out}");
    // MQTT.js over WebSocket.
    let ws = format!("ws://{}/mqtt", b.addr("mqtt-ws"));
    assert_eq!(mqttjs(&ws, Some(("meter-7", &es_token))), "connack 0");
    // Expiring while connected: closed at `exp` with 0x98 "token expired".
    let soon = hs256(secret, json!({"sub": "meter-7", "exp": now() + 2}));
    let (mut child, rx) = paho_spawn(
        tcp,
        "5",
        None,
        &[
            "--client-id",
            "m8",
            "--user",
            "meter-7",
            "--password",
            &soon,
            "--hold",
            "20",
        ],
    );
    expect_line(&rx, "connack 0", LIMIT);
    let line = expect_line(&rx, "disconnect", Duration::from_secs(5));
    assert_eq!(line, "disconnect 152 token expired");
    child.wait().unwrap();
}

#[test]
fn anonymous_access_per_listener_and_by_flag() {
    // TLS one-way on every interface (anonymous off by default there),
    // TCP on loopback with anonymous switched off in the file.
    let files = TempDir::new("anon");
    let config = files.0.join("certmq.toml");
    std::fs::write(&config, "[listeners.tcp]\nallow_anonymous = false\n").unwrap();
    let start = |env: Option<(&str, &str)>| {
        let dir = TempDir::new("anon-serve");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&dir.0)
            .arg("--config")
            .arg(&config)
            .args(["--listen-tcp", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0"])
            .args(["--listen-tls", "0.0.0.0:0", "--tls-client-auth", "none"])
            .args(["--listen-wss", "off", "--listen-admin", "127.0.0.1:0"]);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        BrokerProcess::spawn(cmd, dir, 4)
    };
    let try_all = |b: &BrokerProcess| {
        let ca = b.dir.0.join("tls/default-ca.pem");
        let tls = b.port("mqtt-tls");
        let tcp = b.port("mqtt-tcp");
        let tls_ok = mosquitto_pub(&[
            "-h",
            "localhost",
            "-p",
            &tls,
            "--cafile",
            ca.to_str().unwrap(),
            "-t",
            "t",
            "-m",
            "x",
        ])
        .0;
        let tcp_ok = mosquitto_pub(&["-h", "127.0.0.1", "-p", &tcp, "-t", "t", "-m", "x"]).0;
        let ws_ok = mqttjs(&format!("ws://{}/mqtt", b.addr("mqtt-ws")), None) == "connack 0";
        (tls_ok, tcp_ok, ws_ok)
    };
    let b = start(None);
    assert_eq!(
        try_all(&b),
        (false, false, true),
        "defaults: loopback WS only"
    );
    let r = reasons(&Api::of(&b));
    assert!(
        r.iter().filter(|x| *x == "ANONYMOUS_NOT_ALLOWED").count() >= 2,
        "{r:?}"
    );
    drop(b);
    let b = start(Some(("CERTMQ_ALLOW_ANONYMOUS", "true")));
    assert_eq!(
        try_all(&b),
        (true, false, true),
        "CERTMQ_ALLOW_ANONYMOUS opens TLS; the file's explicit false on TCP stays"
    );
}
