//! Authorization policies with real clients (SPEC 11): devices confined to
//! their own certificate's CN with one `${cert.cn}` policy (paho-mqtt 3.1.1
//! and 5.0, mosquitto_pub over mutual TLS), SUBACK refusals, retained
//! messages filtered, priority and first match, the CLI, a policy change
//! applied to a live subscription within 1 s, and the Paho interoperability
//! suite's `test/nosubscribe` refusal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access_helpers;
mod common;
mod device_helpers;
mod tls_client;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use access_helpers::*;
use common::*;
use device_helpers::{cli, Api};
use serde_json::json;

/// Writes a device certificate and key for CN `cn` under `dir`.
fn device_files(dir: &Path, ca: &device_helpers::Ca, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = device_helpers::device(ca, cn);
    let c = dir.join(format!("{cn}.crt"));
    let k = dir.join(format!("{cn}.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

fn ok(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn devices_are_confined_to_their_own_cn_and_policy_changes_reach_live_subscriptions() {
    let files = TempDir::new("policies");
    let config = files.0.join("certmq.toml");
    std::fs::write(&config, "[authorization]\ndeny_action = \"disconnect\"\n").unwrap();
    let b = BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    let api = Api::of(&b);
    let ca = device_helpers::ca("Policy Test CA");
    let ca_id = device_helpers::register(&api, &ca, json!({}));
    let cafile = b.dir.0.join("tls/default-ca.pem");
    let dev1 = device_files(&files.0, &ca, "dev1");
    let dev2 = device_files(&files.0, &ca, "dev2");
    let dev3 = device_files(&files.0, &ca, "dev3");
    fn tls<'a>(cafile: &'a Path, d: &'a (PathBuf, PathBuf)) -> Tls<'a> {
        Tls {
            cafile,
            cert: Some((d.0.as_path(), d.1.as_path())),
        }
    }
    let cafile = cafile.as_path();
    let port = b.addr("mqtt-tls").port();

    // One policy confines every device; everything else is denied.
    ok(&cli(
        &b,
        &[
            "policy",
            "add",
            "--id",
            "own",
            "--priority",
            "10",
            "--effect",
            "allow",
            "--action",
            "publish,subscribe",
            "--topic",
            "devices/${cert.cn}/#",
            "--ca-id",
            &ca_id,
        ],
    ));
    ok(&cli(
        &b,
        &[
            "policy",
            "add",
            "--id",
            "rest",
            "--priority",
            "100",
            "--effect",
            "deny",
            "--action",
            "publish,subscribe",
            "--topic",
            "#",
        ],
    ));
    let listed = ok(&cli(&b, &["policy", "list"]));
    assert!(
        listed.contains("devices/${cert.cn}/#") && listed.contains("rest"),
        "{listed}"
    );

    // MQTT 5: PUBACK 0x87 on another device's topic; SUBACK 0x87 on '#'.
    let v5 = paho(
        port,
        "5",
        Some(&tls(cafile, &dev1)),
        &[
            "--client-id",
            "d1",
            "--publish",
            "devices/dev1/t",
            "--publish",
            "devices/dev2/t",
            "--subscribe",
            "#",
        ],
    );
    // (The driver subscribes first, then publishes.)
    assert_eq!(
        v5,
        ["connack 0", "suback 135", "puback 16", "puback 135", "done"]
    );
    // MQTT 3.1.1: SUBACK 0x80; a denied PUBLISH closes the connection
    // (deny_action = "disconnect").
    let v3 = paho(
        port,
        "311",
        Some(&tls(cafile, &dev1)),
        &["--client-id", "d1", "--subscribe", "#"],
    );
    assert_eq!(v3, ["connack 0", "suback 128", "done"]);
    let v3 = paho(
        port,
        "311",
        Some(&tls(cafile, &dev1)),
        &["--client-id", "d1", "--publish", "devices/dev2/t"],
    );
    assert_eq!(v3.first().map(String::as_str), Some("connack 0"));
    assert!(
        v3.get(1).is_some_and(|l| l.starts_with("disconnect")),
        "{v3:?}"
    );
    // mosquitto_pub over mutual TLS sees the 0x87 too.
    let (_, out) = mosquitto_pub(&[
        "-h",
        "localhost",
        "-p",
        &port.to_string(),
        "--cafile",
        cafile.to_str().unwrap(),
        "--cert",
        dev1.0.to_str().unwrap(),
        "--key",
        dev1.1.to_str().unwrap(),
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-d",
        "-t",
        "devices/dev2/x",
        "-m",
        "x",
    ]);
    assert!(out.contains("RC:135"), "{out}");

    // The dry run names the deciding policy, by certificate id.
    let dev1_id = certmq_pki::fingerprint(
        &certmq_pki::single_cert_der(&std::fs::read(&dev1.0).unwrap()).unwrap(),
    );
    let explained = api.ok(
        "POST",
        "/policies/evaluate",
        Some(json!({"client_id": "d1", "certificate_id": dev1_id, "action": "publish", "topic": "devices/dev1/x"})),
    );
    assert_eq!(explained["decision"], "allow");
    assert_eq!(explained["policy_id"], "own");
    let explained = ok(&cli(
        &b,
        &[
            "policy",
            "evaluate",
            "--client-id",
            "d1",
            "--certificate",
            dev1.0.to_str().unwrap(),
            "--action",
            "subscribe",
            "--topic",
            "#",
        ],
    ));
    assert!(
        explained.contains("deny") && explained.contains("rest"),
        "{explained}"
    );

    // Priority, first match: a narrower allow before the deny.
    ok(&cli(
        &b,
        &[
            "policy",
            "add",
            "--id",
            "shared",
            "--priority",
            "5",
            "--effect",
            "allow",
            "--action",
            "publish",
            "--topic",
            "devices/dev2/inbox",
            "--client-id",
            "d1",
        ],
    ));
    let shared = paho(
        port,
        "5",
        Some(&tls(cafile, &dev1)),
        &[
            "--client-id",
            "d1",
            "--publish",
            "devices/dev2/inbox",
            "--publish",
            "devices/dev2/other",
        ],
    );
    assert_eq!(shared, ["connack 0", "puback 16", "puback 135", "done"]);

    // An observer may read every device but dev2: its subscription to
    // `devices/#` is allowed and each delivery is checked, retained
    // messages included.
    ok(&cli(
        &b,
        &[
            "policy",
            "add",
            "--id",
            "hide-dev2",
            "--priority",
            "1",
            "--effect",
            "deny",
            "--action",
            "subscribe",
            "--topic",
            "devices/dev2/#",
            "--client-id",
            "observer*",
        ],
    ));
    ok(&cli(
        &b,
        &[
            "policy",
            "add",
            "--id",
            "observe",
            "--priority",
            "2",
            "--effect",
            "allow",
            "--action",
            "subscribe",
            "--topic",
            "devices/#",
            "--client-id",
            "observer*",
        ],
    ));
    let retain = |d: &(PathBuf, PathBuf), id: &str, topic: &str| {
        let out = paho(
            port,
            "5",
            Some(&tls(cafile, d)),
            &["--client-id", id, "--retain", "--publish", topic],
        );
        assert_eq!(out[1], "puback 16", "{out:?}");
    };
    retain(&dev1, "d1", "devices/dev1/state=one");
    retain(&dev2, "d2", "devices/dev2/state=two");
    let (mut observer, rx) = paho_spawn(
        port,
        "5",
        Some(&tls(cafile, &dev3)),
        &[
            "--client-id",
            "observer-1",
            "--subscribe",
            "devices/#",
            "--hold",
            "30",
        ],
    );
    // The retained message may be printed before the SUBACK line (paho
    // calls back from its network thread).
    let mut first = Vec::new();
    while !(first.iter().any(|l| l == "suback 1")
        && first.iter().any(|l: &String| l.starts_with("msg")))
    {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(l) => first.push(l),
            Err(_) => {
                let log: Vec<String> = b.log.try_iter().collect();
                panic!(
                    "observer printed {first:?}; broker log:\n{}",
                    log.join("\n")
                );
            }
        }
    }
    let msgs: Vec<&String> = first.iter().filter(|l| l.starts_with("msg")).collect();
    assert_eq!(msgs, ["msg devices/dev1/state one"], "{first:?}");
    let p = |d: &(PathBuf, PathBuf), id: &str, topic: &str| {
        paho(
            port,
            "5",
            Some(&tls(cafile, d)),
            &["--client-id", id, "--publish", topic],
        );
    };
    p(&dev2, "d2", "devices/dev2/live=hidden");
    p(&dev1, "d1", "devices/dev1/live=seen");
    assert_eq!(expect_line(&rx, "msg", LIMIT), "msg devices/dev1/live seen");
    assert!(api.metric("certmq_authorization_denied_total{action=\"delivery\"}") >= 1.0);

    // A policy change reaches the live subscription within 1 s: the
    // observer's allow becomes a deny and its subscription stops receiving.
    let changed = Instant::now();
    let (status, _) = api.call(
        "PUT",
        "/policies/observe",
        Some(json!({"priority": 2, "effect": "deny", "actions": ["subscribe"], "topics": ["devices/#"], "client_ids": ["observer*"]})),
    );
    assert_eq!(status, 200);
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed.elapsed()
    );
    p(&dev1, "d1", "devices/dev1/live=after");
    let after = lines_for(&rx, Duration::from_secs(1));
    assert!(after.iter().all(|l| !l.starts_with("msg")), "{after:?}");
    assert!(api.metric("certmq_authorization_denied_total{action=\"subscribe\"}") >= 1.0);
    observer.kill().ok();
    observer.wait().ok();
    let audit = api.ok("GET", "/audit-log", None).to_string();
    assert!(audit.contains("policy.add") && audit.contains("policy.update"));
    assert!(ok(&cli(&b, &["policy", "delete", "observe"])).contains("deleted"));
    assert_eq!(api.call("GET", "/policies/observe", None).0, 404);
}

#[test]
fn a_deny_on_test_nosubscribe_fails_that_subscribe_as_the_paho_suite_expects() {
    let b = BrokerProcess::start(&[]);
    let api = Api::of(&b);
    api.ok(
        "POST",
        "/policies",
        Some(json!({"priority": 1, "effect": "deny", "actions": ["subscribe"], "topics": ["test/nosubscribe"]})),
    );
    let tcp = b.addr("mqtt-tcp").port();
    let v3 = paho(
        tcp,
        "311",
        None,
        &[
            "--subscribe",
            "test/nosubscribe",
            "--subscribe",
            "test/other",
        ],
    );
    assert_eq!(v3, ["connack 0", "suback 128", "suback 1", "done"]);
    let v5 = paho(tcp, "5", None, &["--subscribe", "test/nosubscribe"]);
    assert_eq!(v5, ["connack 0", "suback 135", "done"]);
    // Everything else the paho suite checks still passes.
    let out = run(
        std::process::Command::new("python3")
            .arg(repo_root().join("tests/interop/paho_suite.py"))
            .arg("127.0.0.1")
            .arg(tcp.to_string()),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "{stdout}"
    );
}

#[test]
fn invalid_policies_are_refused_with_the_reason() {
    let b = BrokerProcess::start(&[]);
    let api = Api::of(&b);
    for (body, needle) in [
        (
            json!({"priority": 1, "effect": "allow", "actions": []}),
            "actions",
        ),
        (
            json!({"priority": 1, "effect": "allow", "actions": ["publish"], "topics": ["a/#/b"]}),
            "'#' must be the last level",
        ),
        (
            json!({"priority": 1, "effect": "allow", "actions": ["publish"], "topics": ["a/${cert.nope}"]}),
            "unknown variable",
        ),
        (
            json!({"priority": 1, "effect": "allow", "actions": ["publish"], "source_cidrs": ["10.0.0.0/33"]}),
            "source_cidrs",
        ),
        (
            json!({"priority": 1, "effect": "allow", "actions": ["publish"], "qos": [3]}),
            "qos",
        ),
        (
            json!({"priority": 1, "effect": "maybe", "actions": ["publish"]}),
            "effect",
        ),
        (
            json!({"priority": 1, "effect": "allow", "actions": ["publish"], "colour": "red"}),
            "colour",
        ),
    ] {
        let (status, v) = api.call("POST", "/policies", Some(body.clone()));
        assert_eq!(status, 400, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    api.ok(
        "POST",
        "/policies",
        Some(json!({"id": "p", "priority": 1, "effect": "allow", "actions": ["connect"]})),
    );
    let (status, v) = api.call(
        "POST",
        "/policies",
        Some(json!({"id": "p", "priority": 1, "effect": "allow", "actions": ["connect"]})),
    );
    assert_eq!(status, 409, "{v}");
    assert_eq!(api.call("DELETE", "/policies/nope", None).0, 404);
}

#[test]
fn connect_policies_refuse_by_client_id_address_and_will_topic() {
    let b = BrokerProcess::start(&[]);
    let api = Api::of(&b);
    for body in [
        json!({"priority": 1, "effect": "deny", "actions": ["connect"], "client_ids": ["blocked-*"]}),
        json!({"priority": 2, "effect": "deny", "actions": ["connect"], "source_cidrs": ["127.0.0.2/32"]}),
        json!({"priority": 3, "effect": "deny", "actions": ["publish"], "topics": ["wills/forbidden"]}),
    ] {
        api.ok("POST", "/policies", Some(body));
    }
    let port = b.port("mqtt-tcp");
    let publish = |extra: &[&str]| {
        let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-t", "t", "-m", "x"];
        args.extend_from_slice(extra);
        mosquitto_pub(&args).0
    };
    assert!(publish(&["-i", "fine-1"]));
    assert!(!publish(&["-i", "blocked-1"]));
    assert!(!publish(&["-i", "fine-2", "-A", "127.0.0.2"]));
    assert!(!publish(&[
        "-i",
        "fine-3",
        "--will-topic",
        "wills/forbidden",
        "--will-payload",
        "x"
    ]));
    assert!(publish(&[
        "-i",
        "fine-4",
        "--will-topic",
        "wills/ok",
        "--will-payload",
        "x"
    ]));
    let reasons: Vec<String> = api
        .rejections()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "CONNECT_DENIED_BY_POLICY")
            .count(),
        2,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "WILL_DENIED_BY_POLICY"),
        "{reasons:?}"
    );
}

#[test]
fn a_connect_policy_naming_client_ids_lets_another_identity_take_a_session_over() {
    let b = BrokerProcess::start(&[]);
    let api = Api::of(&b);
    api.ok(
        "POST",
        "/users",
        Some(json!({"username": "installer", "password": "installer-pass-1"})),
    );
    let port = b.port("mqtt-tcp");
    let publish = |extra: &[&str]| {
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "t",
            "-m",
            "x",
            "-i",
            "gateway-7",
            "-c",
            "-q",
            "1",
        ];
        args.extend_from_slice(extra);
        mosquitto_pub(&args).0
    };
    // The installer's persistent session holds the client id.
    assert!(publish(&["-u", "installer", "-P", "installer-pass-1"]));
    assert!(
        !publish(&[]),
        "an anonymous client took another identity's session"
    );
    api.ok(
        "POST",
        "/policies",
        Some(json!({"priority": 1, "effect": "allow", "actions": ["connect"], "client_ids": ["gateway-*"]})),
    );
    assert!(
        publish(&[]),
        "the policy lets the anonymous gateway take the session over"
    );
}
