//! Nodes joined by NATS (SPEC 13, routing): a publish on one node reaches
//! the subscribers on the others exactly once, whatever filters match it,
//! with mosquitto clients, and nothing loops back. nats-server is started
//! by the test on a free loopback port and stopped by its PID.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access_helpers;
mod common;
mod components;

use std::process::Command;
use std::time::Duration;

use common::*;
use components::Nats;

fn node(nats: &Nats, id: &str) -> BrokerProcess {
    let dir = TempDir::new(&format!("node-{id}"));
    let mut cmd = Command::new(bin());
    cmd.args(tcp_admin_args(&dir))
        .args(["--node-id", id, "--cluster-nats", &nats.url()]);
    BrokerProcess::spawn(cmd, dir, 2)
}

fn subscriber(
    b: &BrokerProcess,
    id: &str,
    filters: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let port = b.port("mqtt-tcp");
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        id,
        "-q",
        "1",
        "-v",
        "-W",
        "30",
        "-V",
        "mqttv5",
    ];
    for f in filters {
        args.extend_from_slice(&["-t", f]);
    }
    let mut child = spawn_piped(Command::new("mosquitto_sub").args(&args));
    let rx = stdout_lines(&mut child);
    (child, rx)
}

#[test]
fn a_publish_crosses_to_every_node_with_subscribers_exactly_once() {
    let nats = Nats::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let c = node(&nats, "c");
    let (mut on_b, rx_b) = subscriber(
        &b,
        "sub-b",
        &["plant/#", "plant/+/temp", "plant/line1/temp"],
    );
    let (mut on_c, rx_c) = subscriber(&c, "sub-c", &["plant/+/temp"]);
    let (mut on_a, rx_a) = subscriber(&a, "sub-a", &["plant/#"]);
    // Until the subscriptions have crossed (bounded): a marker is retried.
    let pub_on = |n: &BrokerProcess, topic: &str, msg: &str| {
        let port = n.port("mqtt-tcp");
        let (ok, out) = access_helpers::mosquitto_pub(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            msg,
        ]);
        assert!(ok, "{out}");
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        pub_on(&a, "plant/marker/temp", "m");
        let got_b = rx_b.recv_timeout(Duration::from_millis(300)).is_ok();
        let got_c = rx_c.recv_timeout(Duration::from_millis(300)).is_ok();
        if got_b && got_c {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "subscriptions did not cross to node a"
        );
    }
    // Drain what the markers left.
    std::thread::sleep(Duration::from_millis(500));
    while rx_a.try_recv().is_ok() || rx_b.try_recv().is_ok() || rx_c.try_recv().is_ok() {}

    pub_on(&a, "plant/line1/temp", "21.5");
    pub_on(&b, "plant/line2/pressure", "1.2");
    let wait = Duration::from_secs(2);
    // Two publishers on two nodes: no order between their messages.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let b_lines = sorted(access_helpers::lines_for(&rx_b, wait));
    let c_lines = sorted(access_helpers::lines_for(&rx_c, Duration::from_millis(200)));
    let a_lines = sorted(access_helpers::lines_for(&rx_a, Duration::from_millis(200)));
    // Node b's subscriber: three of its filters match the first message,
    // one the second; each arrives once.
    assert_eq!(
        b_lines,
        ["plant/line1/temp 21.5", "plant/line2/pressure 1.2"],
        "node b"
    );
    assert_eq!(c_lines, ["plant/line1/temp 21.5"], "node c");
    assert_eq!(
        a_lines,
        ["plant/line1/temp 21.5", "plant/line2/pressure 1.2"],
        "node a"
    );
    for ch in [&mut on_a, &mut on_b, &mut on_c] {
        let _ = ch.kill();
        let _ = ch.wait();
    }
}
