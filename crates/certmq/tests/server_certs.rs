//! The server-certificate manual page end to end: its OpenSSL commands run
//! at test time, certificates bound through the CLI, SNI selection checked
//! with `openssl s_client -servername`, mosquitto_pub over TLS and MQTT.js
//! over WSS trusting the operator's CA, every refusal, hot swap under a
//! live TLS client, kill -9 durability, and the API's auth and size limits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The CA manual page's commands (subject given on the line instead of at
/// the prompt).
fn make_ca(dir: &Path) {
    seed_ca(dir, "/C=CN/ST=ZJ/L=HZ/O=Example/CN=Example Root CA");
}

struct Admin {
    url: String,
    token: String,
}

impl Admin {
    fn of(b: &BrokerProcess) -> Admin {
        Admin {
            url: format!("http://{}", b.addr("admin-http")),
            token: std::fs::read_to_string(b.dir.0.join("admin.token"))
                .unwrap()
                .trim()
                .to_string(),
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        run(
            Command::new(bin())
                .args(args)
                .args(["--url", &self.url, "--token", &self.token]),
            LIMIT,
        )
    }

    fn bind(&self, dir: &Path) -> Output {
        let chain = dir.join("server.chain.crt");
        let key = dir.join("server.key");
        self.cli(&[
            "server-cert",
            "bind",
            "--chain",
            chain.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--json",
        ])
    }

    fn ids(&self) -> Vec<String> {
        let out = ok(self.cli(&["server-cert", "list", "--json"]), "list");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The subject line `openssl s_client` shows, and whether it verified.
fn served(port: &str, sni: Option<&str>, ca: &Path) -> (String, bool) {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-CAfile",
    ])
    .arg(ca);
    match sni {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = run(cmd.stdin(Stdio::null()), LIMIT);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let subject = text
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string();
    (subject, text.contains("Verify return code: 0 (ok)"))
}

fn tls_broker() -> BrokerProcess {
    BrokerProcess::start(&["--tls-client-auth", "none", "--wss-client-auth", "none"])
}

#[test]
fn manual_page_flow_sni_selection_and_clients() {
    let work = TempDir::new("seed-server");
    make_ca(&work.0);
    // The page's server.conf, plus `localhost` so that local clients can
    // reach the broker by a name the certificate carries.
    let conf = server_conf(|c| c + "DNS.5 = localhost\n");
    let ec = make_server(&work.0, "ec", &conf, Key::Ec);
    let rsa_conf = server_conf(|c| {
        c.replace("mqtt.example.com", "rsa.example.net")
            .replace("DNS.4 = *.example.com\n", "")
    });
    let rsa = make_server(&work.0, "rsa", &rsa_conf, Key::Rsa4096);
    // OpenSSL 3 writes PKCS#8; the PKCS#1 form older OpenSSL (and
    // `-traditional`) writes must bind too.
    openssl(
        &rsa,
        &[
            "rsa",
            "-in",
            "server.key",
            "-out",
            "server.key",
            "-traditional",
        ],
    );
    assert!(std::fs::read_to_string(rsa.join("server.key"))
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    let cn_conf = server_conf(|c| {
        c.replace("CN = mqtt.example.com", "CN = cn-only.example.org")
            .replace("DNS.1 = mqtt.example.com\nDNS.2 = www.example.com\nDNS.3 = api.example.com\nDNS.4 = *.example.com\n", "DNS.1 = unrelated.example.io\n")
    });
    let cn_only = make_server(&work.0, "cn", &cn_conf, Key::Ec);
    assert!(std::fs::read_to_string(ec.join("server.key"))
        .unwrap()
        .contains("BEGIN EC PARAMETERS"));

    let broker = tls_broker();
    let admin = Admin::of(&broker);
    for dir in [&ec, &rsa, &cn_only] {
        let out = ok(admin.bind(dir), "bind");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["id"].as_str().unwrap().len(), 64);
    }
    assert_eq!(admin.ids().len(), 4, "default + 3 bound");
    let ca = work.0.join("CA.crt");
    let tls = broker.port("mqtt-tls");
    let wss = broker.port("mqtt-wss");
    for port in [&tls, &wss] {
        let (s, verified) = served(port, Some("mqtt.example.com"), &ca);
        assert!(
            s.contains("CN = mqtt.example.com") && verified,
            "exact SAN: {s}"
        );
        let (s, verified) = served(port, Some("anything.example.com"), &ca);
        assert!(
            s.contains("CN = mqtt.example.com") && verified,
            "wildcard SAN: {s}"
        );
        let (s, verified) = served(port, Some("rsa.example.net"), &ca);
        assert!(
            s.contains("CN = rsa.example.net") && verified,
            "RSA 4096: {s}"
        );
        let (s, _) = served(port, Some("cn-only.example.org"), &ca);
        assert!(s.contains("CN = cn-only.example.org"), "CN match: {s}");
        let (s, verified) = served(port, None, &ca);
        assert!(
            s.contains("CN = localhost") && !verified,
            "no SNI gets the default: {s}"
        );
    }
    // SPEC 4: with the default disabled, a client that connects by IP
    // address (no SNI) or names nothing bound gets the certificate bound
    // last, on TLS and WSS.
    ok(
        admin.cli(&["server-cert", "default", "disable"]),
        "disable the default",
    );
    for port in [&tls, &wss] {
        let (s, _) = served(port, None, &ca);
        assert!(
            s.contains("CN = cn-only.example.org"),
            "no SNI, default disabled: the last bound: {s}"
        );
        let (s, _) = served(port, Some("nothing.example.invalid"), &ca);
        assert!(
            s.contains("CN = cn-only.example.org"),
            "unmatched SNI, default disabled: the last bound: {s}"
        );
        let (s, verified) = served(port, Some("mqtt.example.com"), &ca);
        assert!(s.contains("CN = mqtt.example.com") && verified, "{s}");
    }
    ok(
        admin.cli(&["server-cert", "default", "enable"]),
        "enable the default",
    );
    let (s, _) = served(&tls, None, &ca);
    assert!(s.contains("CN = localhost"), "default again: {s}");

    // mosquitto_pub with the operator's CA file, by name.
    let mut sub = spawn_piped(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "localhost",
                "-p",
                &tls,
                "-t",
                "seed/t",
                "-C",
                "1",
                "-W",
                "20",
                "--cafile",
            ])
            .arg(&ca),
    );
    let rx = stdout_lines(&mut sub);
    let got = loop {
        ok(
            run(
                Command::new("mosquitto_pub")
                    .args([
                        "-h",
                        "localhost",
                        "-p",
                        &tls,
                        "-t",
                        "seed/t",
                        "-m",
                        "custom-cert",
                        "--cafile",
                    ])
                    .arg(&ca),
                LIMIT,
            ),
            "mosquitto_pub over TLS",
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            break l;
        }
    };
    assert_eq!(got, "custom-cert");
    assert!(sub.wait().unwrap().success());

    // MQTT.js over WSS, trusting only the operator's CA.
    let js = repo_root().join("tests/interop/mqttjs");
    assert!(
        js.join("node_modules/mqtt").exists(),
        "MQTT.js is not installed: run scripts/test"
    );
    ok(
        run(
            Command::new("node")
                .arg(js.join("wss.mjs"))
                .arg(format!("wss://localhost:{wss}/mqtt"))
                .arg(&ca),
            LIMIT,
        ),
        "MQTT.js over WSS",
    );
}

#[test]
fn every_refusal_leaves_the_registry_unchanged() {
    let work = TempDir::new("seed-refusals");
    make_ca(&work.0);
    let good = make_server(&work.0, "good", &server_conf(|c| c), Key::Ec);
    let broker = tls_broker();
    let admin = Admin::of(&broker);
    let before = admin.ids();

    let expect = |dir: &Path, code: &str| {
        let out = admin.bind(dir);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{code}: bind succeeded");
        assert!(err.contains(code), "expected {code}, got: {err}");
        assert_eq!(admin.ids(), before, "{code}: registry changed");
    };
    let no_eku = make_server(
        &work.0,
        "no-eku",
        &server_conf(|c| c.replace("extendedKeyUsage = serverAuth\n", "")),
        Key::Ec,
    );
    expect(&no_eku, "MissingServerAuthUsage");
    let client_eku = make_server(
        &work.0,
        "client-eku",
        &server_conf(|c| {
            c.replace(
                "extendedKeyUsage = serverAuth",
                "extendedKeyUsage = clientAuth",
            )
        }),
        Key::Ec,
    );
    expect(&client_eku, "MissingServerAuthUsage");
    let no_san = make_server(
        &work.0,
        "no-san",
        &server_conf(|c| c.replace("subjectAltName = @alt_names\n", "")),
        Key::Ec,
    );
    expect(&no_san, "MissingSubjectAltName");
    let no_cn = make_server(
        &work.0,
        "no-cn",
        &server_conf(|c| c.replace("CN = mqtt.example.com\n", "")),
        Key::Ec,
    );
    expect(&no_cn, "MissingCommonName");

    // Six certificates in the chain.
    let six = work.0.join("six");
    std::fs::create_dir_all(&six).unwrap();
    let mut chain = std::fs::read(good.join("server.crt")).unwrap();
    for _ in 0..5 {
        chain.extend(std::fs::read(work.0.join("CA.crt")).unwrap());
    }
    std::fs::write(six.join("server.chain.crt"), &chain).unwrap();
    std::fs::copy(good.join("server.key"), six.join("server.key")).unwrap();
    expect(&six, "ChainTooLong");
    // A chain file over 16 KiB (comments between blocks are legal PEM).
    let big = work.0.join("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut text = std::fs::read_to_string(good.join("server.chain.crt")).unwrap();
    while text.len() <= 16 * 1024 {
        text.push_str("padding line to push the chain file past sixteen kibibytes\n");
    }
    std::fs::write(big.join("server.chain.crt"), text).unwrap();
    std::fs::copy(good.join("server.key"), big.join("server.key")).unwrap();
    expect(&big, "ChainTooLarge");
    // A key that does not match.
    let other = make_server(&work.0, "other", &server_conf(|c| c), Key::Ec);
    let mismatch = work.0.join("mismatch");
    std::fs::create_dir_all(&mismatch).unwrap();
    std::fs::copy(
        good.join("server.chain.crt"),
        mismatch.join("server.chain.crt"),
    )
    .unwrap();
    std::fs::copy(other.join("server.key"), mismatch.join("server.key")).unwrap();
    expect(&mismatch, "KeyMismatch");
    // Garbage PEM.
    let garbage = work.0.join("garbage");
    std::fs::create_dir_all(&garbage).unwrap();
    std::fs::write(
        garbage.join("server.chain.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::copy(good.join("server.key"), garbage.join("server.key")).unwrap();
    expect(&garbage, "InvalidCertificatePem");
    // An expired leaf (rcgen: OpenSSL 3.0 cannot backdate with x509 -req).
    let expired = work.0.join("expired");
    std::fs::create_dir_all(&expired).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["mqtt.example.com".to_string()]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "mqtt.example.com");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    p.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(expired.join("server.chain.crt"), cert.pem()).unwrap();
    std::fs::write(expired.join("server.key"), key.serialize_pem()).unwrap();
    expect(&expired, "CertificateExpired");

    // Disabling the default with nothing bound is refused too.
    let out = admin.cli(&["server-cert", "default", "disable"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoCustomCertificate"));
    // And the good one binds.
    ok(admin.bind(&good), "bind good");
}

#[test]
fn hot_swap_under_a_live_tls_client_and_kill_9_durability() {
    let work = TempDir::new("seed-swap");
    make_ca(&work.0);
    let conf = server_conf(|c| c + "DNS.5 = localhost\n");
    let a = make_server(&work.0, "a", &conf, Key::Ec);
    let b = make_server(&work.0, "b", &conf, Key::Rsa4096);
    let broker = tls_broker();
    let admin = Admin::of(&broker);
    let tls = broker.port("mqtt-tls");
    let default_ca = broker.dir.0.join("tls/default-ca.pem");

    // A live subscriber and a live publisher (one connection each, `-l`
    // publishes a line at a time) on the default certificate.
    let mut sub = spawn_piped(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "localhost",
                "-p",
                &tls,
                "-t",
                "swap/t",
                "-q",
                "1",
                "-W",
                "60",
                "--cafile",
            ])
            .arg(&default_ca),
    );
    let rx = stdout_lines(&mut sub);
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &tls,
            "-t",
            "swap/t",
            "-q",
            "1",
            "-l",
            "--cafile",
        ])
        .arg(&default_ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    // Wait for the subscription to be live.
    let mut i = 0;
    loop {
        writeln!(stdin, "warm-{i}").unwrap();
        i += 1;
        if rx.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
        assert!(i < 50, "the live TLS subscriber never got a message");
    }
    while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
    let id_a = {
        let out = ok(admin.bind(&a), "bind a");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let steps: Vec<Vec<String>> = vec![
        vec!["server-cert".into(), "default".into(), "disable".into()],
        vec!["server-cert".into(), "default".into(), "enable".into()],
        vec!["server-cert".into(), "unbind".into(), id_a.clone()],
    ];
    let mut sent = 0;
    for (n, step) in steps.iter().enumerate() {
        let args: Vec<&str> = step.iter().map(String::as_str).collect();
        ok(admin.cli(&args), &format!("{args:?}"));
        // New handshakes see the change at once.
        let (s, _) = served(&tls, Some("localhost"), &work.0.join("CA.crt"));
        let expect_custom = n == 0 || n == 1;
        assert_eq!(
            s.contains("CN = mqtt.example.com"),
            expect_custom,
            "step {args:?}: {s}"
        );
        for _ in 0..10 {
            writeln!(stdin, "live-{n}-{sent}").unwrap();
            sent += 1;
        }
        stdin.flush().unwrap();
    }
    let mut got = 0;
    while got < sent {
        let l = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the live client's messages stopped");
        if l.starts_with("live-") {
            got += 1;
        }
    }
    drop(stdin);
    assert!(
        publisher.wait().unwrap().success(),
        "the live publisher's connection failed"
    );

    // kill -9 right after a bind answered: the certificate is there after restart.
    ok(admin.bind(&b), "bind b");
    let (_, dir) = broker.kill9_keep_dir();
    let again = serve_tls_only(dir, true);
    let (s, verified) = served(
        &again.port("mqtt-tls"),
        Some("mqtt.example.com"),
        &work.0.join("CA.crt"),
    );
    assert!(
        s.contains("CN = mqtt.example.com") && verified,
        "after kill -9: {s}"
    );
    assert_eq!(Admin::of(&again).ids().len(), 2);
    drop(sub);
}

#[test]
fn api_without_token_wrong_token_or_oversized_body_changes_nothing() {
    let broker = tls_broker();
    let admin = Admin::of(&broker);
    let before = admin.ids();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/api/v1/server-certificates", admin.url);
    let body = serde_json::json!({"certificate_chain": "x", "private_key": "y"}).to_string();

    let r = agent
        .post(&url)
        .content_type("application/json")
        .send(body.clone())
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = agent
        .post(&url)
        .header("authorization", "Bearer wrong-token")
        .content_type("application/json")
        .send(body)
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let mut r = agent.get(&url).call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "Unauthorized");
    let huge = serde_json::json!({"certificate_chain": "A".repeat(100 * 1024), "private_key": "y"})
        .to_string();
    let mut r = agent
        .post(&url)
        .header("authorization", &format!("Bearer {}", admin.token))
        .content_type("application/json")
        .send(huge)
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "PayloadTooLarge");
    // Health needs no token; the OpenAPI document lists every route.
    let r = agent
        .get(&format!("{}/api/v1/health", admin.url))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut r = agent
        .get(&format!("{}/api/v1/openapi.json", admin.url))
        .header("authorization", &format!("Bearer {}", admin.token))
        .call()
        .unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(doc["paths"]["/server-certificates/{id}"]["delete"].is_object());
    assert_eq!(admin.ids(), before);

    // A failed handshake (plain text on the TLS port) is counted by reason.
    {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(broker.addr("mqtt-tls")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no TLS failure counted"
        );
        let mut r = agent
            .get(&format!("{}/api/v1/metrics", admin.url))
            .header("authorization", &format!("Bearer {}", admin.token))
            .call()
            .unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        if text.contains("certmq_tls_handshake_failures_total{reason=") {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        metrics.contains("certmq_server_certificate_expiry_seconds{id=\"default\""),
        "{metrics}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(broker.dir.0.join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
