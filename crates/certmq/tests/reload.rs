//! SIGHUP reloads what can change without a restart (the log filter and
//! the broker limits), names what needs a restart, never drops a
//! connection, and leaves everything as it was when the new configuration
//! is invalid.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use certmq_codec::*;
use common::*;

struct Raw {
    s: TcpStream,
    buf: bytes::BytesMut,
}

impl Raw {
    fn connect(b: &BrokerProcess, id: &str) -> Raw {
        let s = TcpStream::connect(b.addr("mqtt-tcp")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = Raw {
            s,
            buf: bytes::BytesMut::new(),
        };
        r.send(&Packet::Connect(Box::new(Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 60,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })));
        assert!(matches!(r.recv(), Packet::ConnAck(a) if a.reason.0 == 0));
        r
    }

    fn send(&mut self, p: &Packet) {
        let mut out = bytes::BytesMut::new();
        encode(p, Protocol::V5, &mut out);
        self.s.write_all(&out).unwrap();
    }

    fn recv(&mut self) -> Packet {
        loop {
            if let Some(p) = decode(&mut self.buf, Some(Protocol::V5), 1 << 20).unwrap() {
                return p;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn subscribe(&mut self, filter: &str) -> u8 {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), SubscriptionOptions::default())],
            properties: Properties::default(),
        }));
        match self.recv() {
            Packet::SubAck(a) => a.reasons[0].0,
            p => panic!("expected SUBACK, got {}", p.name()),
        }
    }

    fn alive(&mut self) -> bool {
        self.send(&Packet::PingReq);
        matches!(self.recv(), Packet::PingResp)
    }
}

fn hup(b: &BrokerProcess) {
    let ok = Command::new("kill")
        .args(["-HUP", &b.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Log lines until one contains `what` (bounded).
fn wait_for(b: &BrokerProcess, what: &str) -> String {
    let mut seen = Vec::new();
    while let Ok(line) = b.log.recv_timeout(Duration::from_secs(10)) {
        if line.contains(what) {
            return line;
        }
        seen.push(line);
    }
    panic!("no log line with {what:?}; saw:\n{}", seen.join("\n"));
}

#[test]
fn sighup_reloads_limits_and_log_filter_without_dropping_connections() {
    let w = TempDir::new("reload");
    let conf = w.0.join("certmq.toml");
    std::fs::write(&conf, "[broker]\nmax_topic_levels = 128\n").unwrap();
    let broker = BrokerProcess::start(&["--config", conf.to_str().unwrap()]);
    let mut live = Raw::connect(&broker, "live");
    assert_eq!(live.subscribe("a/b/c/d/e"), 0);

    std::fs::write(
        &conf,
        "log = \"info,certmq=debug\"\n[broker]\nmax_topic_levels = 4\n[connections]\nconnect_timeout_secs = 3\n",
    )
    .unwrap();
    hup(&broker);
    let line = wait_for(&broker, "SIGHUP: configuration reloaded");
    assert!(
        line.contains("broker.max_topic_levels") && line.contains("log"),
        "{line}"
    );
    let line = wait_for(&broker, "need a restart");
    assert!(line.contains("connections.connect_timeout_secs"), "{line}");
    // The connection is still there, and the new limit applies to it.
    assert!(live.alive(), "SIGHUP dropped a connection");
    assert_eq!(live.subscribe("a/b/c/d/e"), 0x8F);
    assert_eq!(live.subscribe("a/b/c/d"), 0);

    // An invalid file changes nothing.
    std::fs::write(&conf, "[broker]\nmax_topic_levels = \"many\"\n").unwrap();
    hup(&broker);
    wait_for(&broker, "the configuration was not reloaded");
    assert!(live.alive());
    assert_eq!(live.subscribe("a/b/c/d/e"), 0x8F);
    assert!(Raw::connect(&broker, "after").alive());
    let status = broker.terminate();
    assert!(status.success(), "{status}");
}

/// A CONNECT without credentials: the CONNACK reason code.
fn anonymous_connack(b: &BrokerProcess) -> u8 {
    let mut r = Raw {
        s: TcpStream::connect(b.addr("mqtt-tcp")).unwrap(),
        buf: bytes::BytesMut::new(),
    };
    r.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    r.send(&Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "anon".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    })));
    match r.recv() {
        Packet::ConnAck(a) => a.reason.0,
        p => panic!("expected CONNACK, got {}", p.name()),
    }
}

#[test]
fn sighup_applies_anonymous_access_and_authorization_defaults() {
    let w = TempDir::new("reload-auth");
    let conf = w.0.join("certmq.toml");
    std::fs::write(&conf, "").unwrap();
    let broker = BrokerProcess::start(&["--config", conf.to_str().unwrap()]);
    let mut live = Raw::connect(&broker, "live");
    assert_eq!(live.subscribe("a/#"), 0);

    // Anonymous access off on TCP, and no policy means deny.
    std::fs::write(
        &conf,
        "[listeners.tcp]\nallow_anonymous = false\n[authorization]\nno_match = \"deny\"\n",
    )
    .unwrap();
    hup(&broker);
    let line = wait_for(&broker, "SIGHUP: configuration reloaded");
    assert!(
        line.contains("listeners.tcp.allow_anonymous") && line.contains("authorization.no_match"),
        "{line}"
    );
    assert_eq!(anonymous_connack(&broker), 0x87);
    // The live connection stays, and its subscription answers to the new
    // default: it was removed.
    assert!(live.alive(), "SIGHUP dropped a connection");
    assert_eq!(live.subscribe("b/#"), 0x87);

    std::fs::write(&conf, "").unwrap();
    hup(&broker);
    wait_for(&broker, "SIGHUP: configuration reloaded");
    assert_eq!(anonymous_connack(&broker), 0);
    assert_eq!(live.subscribe("b/#"), 0);
    assert!(broker.terminate().success());
}
