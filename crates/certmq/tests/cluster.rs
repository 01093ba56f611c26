//! Nodes joined by NATS (SPEC 13, routing): a publish on one node reaches
//! the subscribers on the others exactly once, whatever filters match it,
//! with mosquitto clients, and nothing loops back. nats-server is started
//! by the test on a free loopback port and stopped by its PID.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access_helpers;
mod common;
mod components;
mod device_helpers;
mod raw;
mod tls_client;

use std::process::Command;
use std::time::Duration;

use certmq_codec::{Packet, Protocol, ReasonCode};
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

/// `mosquitto_pub` on node `n` with extra arguments; asserts it worked.
fn publish(n: &BrokerProcess, args: &[&str]) {
    let port = n.port("mqtt-tcp");
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5"];
    all.extend_from_slice(args);
    let (ok, out) = access_helpers::mosquitto_pub(&all);
    assert!(ok, "{out}");
}

#[test]
fn shared_groups_span_nodes_retained_messages_reach_every_node_and_a_client_id_is_one_session() {
    let nats = Nats::start();
    let a = node(&nats, "sa");
    let b = node(&nats, "sb");
    let c = node(&nats, "sc");

    // A shared group with a member on b and one on c; an ordinary
    // subscriber on c.
    let (mut w_b, rx_wb) = subscriber(&b, "worker-b", &["$share/workers/jobs/#"]);
    let (mut w_c, rx_wc) = subscriber(&c, "worker-c", &["$share/workers/jobs/#"]);
    let (mut all_c, rx_all) = subscriber(&c, "audit-c", &["jobs/#"]);
    // Until the subscriptions have crossed (bounded): markers.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        publish(&a, &["-q", "1", "-t", "jobs/marker", "-m", "m"]);
        let got_all = rx_all.recv_timeout(Duration::from_millis(300)).is_ok();
        let got_group = rx_wb.try_recv().is_ok() || rx_wc.try_recv().is_ok();
        if got_all && got_group {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "routes did not cross");
    }
    // The markers' second member too: the group is complete once each
    // has one route in NATS; let both subscriptions settle.
    std::thread::sleep(Duration::from_millis(500));
    while rx_wb.try_recv().is_ok() || rx_wc.try_recv().is_ok() || rx_all.try_recv().is_ok() {}

    // 40 jobs, QoS 1 and 2, published on a: the group gets each once in
    // all, spread over both nodes; the ordinary subscriber gets all.
    for i in 0..40 {
        let qos = if i % 2 == 0 { "1" } else { "2" };
        publish(
            &a,
            &[
                "-q",
                qos,
                "-t",
                &format!("jobs/{i}"),
                "-m",
                &format!("job-{i}"),
            ],
        );
    }
    let wait = Duration::from_secs(2);
    let on_b = access_helpers::lines_for(&rx_wb, wait);
    let on_c = access_helpers::lines_for(&rx_wc, Duration::from_millis(300));
    let mut group: Vec<String> = on_b.iter().chain(on_c.iter()).cloned().collect();
    group.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("jobs/{i} job-{i}")).collect();
    expected.sort();
    assert_eq!(group, expected, "each job once in the group");
    assert!(
        !on_b.is_empty() && !on_c.is_empty(),
        "spread over both nodes: b {} c {}",
        on_b.len(),
        on_c.len()
    );
    let mut everything = access_helpers::lines_for(&rx_all, Duration::from_millis(300));
    everything.sort();
    assert_eq!(
        everything, expected,
        "the ordinary subscriber gets every job once"
    );
    eprintln!(
        "shared group over two nodes: b {} c {}",
        on_b.len(),
        on_c.len()
    );

    // A retained message set on a is delivered on c to a new subscriber.
    publish(
        &a,
        &["-q", "1", "-r", "-t", "status/line-1", "-m", "running"],
    );
    let mut got = None;
    for _ in 0..50 {
        let out = run(
            Command::new("mosquitto_sub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &c.port("mqtt-tcp"),
                "-t",
                "status/#",
                "-v",
                "-C",
                "1",
                "-W",
                "1",
            ]),
            Duration::from_secs(10),
        );
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !text.is_empty() {
            got = Some(text);
            break;
        }
    }
    assert_eq!(got.as_deref(), Some("status/line-1 running"));

    // One client id, one session in the cluster: connecting on b takes the
    // session over from a (DISCONNECT 0x8E there).
    let (mut first, _) = raw::Raw::connect(a.addr("mqtt-tcp"), "device-7", Protocol::V5);
    first.subscribe("cmd/device-7", certmq_codec::QoS::AtLeastOnce);
    let (mut second, _) = raw::Raw::connect(b.addr("mqtt-tcp"), "device-7", Protocol::V5);
    match first.recv() {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    // Node a forgot it: a command published there reaches the client on b
    // only once it subscribes there, and a lists no connection of it.
    let api_a = device_helpers::Api::of(&a);
    access_helpers::eventually("node a forgot device-7", Duration::from_secs(5), || {
        !api_a
            .ok("GET", "/connections?node=sa", None)
            .to_string()
            .contains("device-7")
    });
    assert_eq!(
        api_a.metric("certmq_sessions"),
        0.0,
        "no session of device-7 left on a"
    );
    second.subscribe("cmd/device-7", certmq_codec::QoS::AtLeastOnce);
    for ch in [&mut w_b, &mut w_c, &mut all_c] {
        let _ = ch.kill();
        let _ = ch.wait();
    }
}

#[test]
fn nats_restarted_under_load_nothing_crashes_and_routing_resumes() {
    let nats = Nats::start();
    let a = node(&nats, "la");
    let b = node(&nats, "lb");
    let (mut on_b, rx_b) = subscriber(&b, "far", &["load/#"]);
    let (mut on_a, rx_a) = subscriber(&a, "near", &["load/#"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        publish(&a, &["-q", "1", "-t", "load/marker", "-m", "m"]);
        if rx_b.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "routes did not cross");
    }
    // A publisher on a: at most 30,000 QoS 0 messages, at most 6 s.
    let addr = a.addr("mqtt-tcp");
    let load = std::thread::spawn(move || {
        let (mut p, _) = raw::Raw::connect(addr, "loader", Protocol::V5);
        let t0 = std::time::Instant::now();
        let mut sent = 0u32;
        while sent < 30_000 && t0.elapsed() < Duration::from_secs(6) {
            p.publish("load/x", b"tick", certmq_codec::QoS::AtMostOnce, 0, false);
            sent += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        sent
    });
    std::thread::sleep(Duration::from_secs(1));
    nats.stop();
    let api_a = device_helpers::Api::of(&a);
    access_helpers::eventually("NATS link reported down", Duration::from_secs(10), || {
        api_a.metric("certmq_cluster_nats_up") == 0.0
    });
    // Local clients are served meanwhile.
    while rx_a.try_recv().is_ok() {}
    assert!(
        rx_a.recv_timeout(Duration::from_secs(2)).is_ok(),
        "the local subscriber still gets the load"
    );
    nats.restart();
    let sent = load.join().unwrap();
    assert!(sent > 1000, "the publisher kept going: {sent}");
    access_helpers::eventually("NATS link back", Duration::from_secs(15), || {
        api_a.metric("certmq_cluster_nats_up") == 1.0
    });
    // Routing resumes: the subscriptions are in place again.
    while rx_b.try_recv().is_ok() {}
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        publish(&a, &["-q", "1", "-t", "load/after", "-m", "back"]);
        if rx_b
            .recv_timeout(Duration::from_millis(300))
            .is_ok_and(|l| l == "load/after back")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "routing did not resume after NATS came back"
        );
    }
    for n in [&a, &b] {
        let api = device_helpers::Api::of(n);
        assert_eq!(api.ok("GET", "/health", None)["status"], "ok");
    }
    for ch in [&mut on_a, &mut on_b] {
        let _ = ch.kill();
        let _ = ch.wait();
    }
}
