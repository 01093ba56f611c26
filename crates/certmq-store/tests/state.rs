//! The broker's durable state through the real core and the real SQLite
//! store: changes recorded by the broker, a stop (or a "crash": the store
//! closed while connections still live), the state read back and
//! restored into a new broker. Plain tests: time is a value, no sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certmq_codec::*;
use certmq_core::*;
use certmq_store::{PersistenceConfig, PersistenceMode, StateStore};

struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("certmq-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const T0: u64 = 1_700_000_000_000;

fn at(secs: u64) -> Time {
    Time::from_unix_millis(T0) + Duration::from_secs(secs)
}

fn config(mode: PersistenceMode) -> PersistenceConfig {
    PersistenceConfig {
        mode,
        flush_interval_ms: 5,
        max_size_mb: 0,
    }
}

/// A broker over the state in `dir`, restored at `now`.
fn start(
    dir: &std::path::Path,
    now: Time,
) -> (Arc<Broker>, Arc<StateStore>, persist::RestoreReport) {
    let (store, restored, _) = StateStore::open(dir, &config(PersistenceMode::Async)).unwrap();
    let broker = Broker::new(BrokerConfig::default());
    assert!(broker.set_persist(store.clone()));
    let report = broker.restore(restored, now);
    (broker, store, report)
}

fn connect(b: &Arc<Broker>, id: &str, expiry: u32, will: Option<(&str, u32)>, now: Time) -> Conn {
    b.connect(
        Connect {
            protocol: Protocol::V5,
            clean_start: false,
            keep_alive: 60,
            client_id: id.into(),
            will: will.map(|(topic, delay)| Will {
                topic: topic.into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties {
                    will_delay_interval: Some(delay),
                    ..Properties::default()
                },
            }),
            username: None,
            password: None,
            properties: Properties {
                session_expiry_interval: Some(expiry),
                ..Properties::default()
            },
        },
        &ConnectContext {
            authorized: true,
            identity: Identity::Certificate(id.into()),
            ..ConnectContext::default()
        },
        now,
    )
    .unwrap()
}

fn session_present(c: &mut Conn) -> bool {
    match c.output().first() {
        Some(Packet::ConnAck(a)) => a.session_present,
        other => panic!("{other:?}"),
    }
}

fn subscribe(c: &mut Conn, filter: &str, qos: QoS, id: Option<u32>, now: Time) {
    c.handle(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Properties {
                subscription_identifiers: id.into_iter().collect(),
                ..Properties::default()
            },
        }),
        now,
    )
    .unwrap();
}

fn publish(
    c: &mut Conn,
    topic: &str,
    payload: &'static [u8],
    qos: QoS,
    retain: bool,
    pid: u16,
    now: Time,
) {
    c.handle(
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: pid,
            payload: Bytes::from_static(payload),
            properties: Properties::default(),
        }),
        now,
    )
    .unwrap();
}

fn publishes(c: &mut Conn, now: Time) -> Vec<Publish> {
    c.output().clear();
    c.poll_deliveries(1000, now).unwrap();
    c.output()
        .drain(..)
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn topics(p: &[Publish]) -> Vec<String> {
    p.iter().map(|p| p.topic.to_string()).collect()
}

#[test]
fn sessions_queues_and_retained_messages_survive_a_restart() {
    let dir = Scratch::new("restart");
    {
        let (b, store, report) = start(&dir.0, at(0));
        assert_eq!(report, persist::RestoreReport::default());
        let mut sub = connect(&b, "sub", 3600, None, at(0));
        subscribe(&mut sub, "t/#", QoS::AtLeastOnce, Some(7), at(0));
        subscribe(&mut sub, "x/+", QoS::ExactlyOnce, None, at(0));
        sub.close(CloseCause::ConnectionLost, at(1));
        let mut publ = connect(&b, "pub", 0, None, at(2));
        publish(&mut publ, "t/1", b"one", QoS::AtLeastOnce, false, 1, at(2));
        publish(&mut publ, "t/r", b"kept", QoS::AtLeastOnce, true, 2, at(2));
        publish(&mut publ, "x/1", b"two", QoS::ExactlyOnce, false, 3, at(2));
        // A QoS 0 message for an offline session is not queued (as before).
        publish(&mut publ, "t/0", b"zero", QoS::AtMostOnce, false, 0, at(2));
        publ.close(
            CloseCause::ClientDisconnect {
                publish_will: false,
            },
            at(3),
        );
        store.close();
    }
    let (b, _store, report) = start(&dir.0, at(10));
    assert_eq!(report.retained, 1);
    assert_eq!(
        report.sessions, 1,
        "the session of `pub` (expiry 0) is not kept"
    );
    assert_eq!(report.subscriptions, 2);
    assert_eq!(report.queued, 3);
    assert_eq!(report.skipped, 0);
    assert_eq!(b.retained_count(), 1);
    let mut sub = connect(&b, "sub", 3600, None, at(11));
    assert!(session_present(&mut sub));
    let got = publishes(&mut sub, at(11));
    assert_eq!(topics(&got), ["t/1", "t/r", "x/1"]);
    assert_eq!(got[0].properties.subscription_identifiers, [7]);
    assert_eq!(got[2].qos, QoS::ExactlyOnce);
    assert_eq!(&got[1].payload[..], b"kept");
}

#[test]
fn messages_in_flight_are_resent_with_dup_and_qos2_state_is_kept() {
    let dir = Scratch::new("inflight");
    let pids = {
        let (b, store, _) = start(&dir.0, at(0));
        let mut sub = connect(&b, "sub", 600, None, at(0));
        subscribe(&mut sub, "a", QoS::ExactlyOnce, None, at(0));
        let mut publ = connect(&b, "pub", 600, None, at(0));
        publish(&mut publ, "a", b"1", QoS::AtLeastOnce, false, 1, at(1));
        // An incoming QoS 2 id awaiting PUBREL.
        publish(&mut publ, "a", b"2", QoS::ExactlyOnce, false, 9, at(1));
        let got = publishes(&mut sub, at(1));
        assert_eq!(got.len(), 2);
        // PUBREC for the QoS 2 one: it is released, awaiting PUBCOMP.
        sub.handle(
            Packet::PubRec(PubResponse::new(got[1].packet_id, ReasonCode::SUCCESS)),
            at(1),
        )
        .unwrap();
        // The broker dies: nothing is closed.
        store.close();
        (got[0].packet_id, got[1].packet_id)
    };
    let (b, _store, report) = start(&dir.0, at(5));
    assert_eq!(report.inflight, 2);
    let mut sub = connect(&b, "sub", 600, None, at(6));
    assert!(session_present(&mut sub));
    let out: Vec<Packet> = sub.output().drain(1..).collect();
    match &out[..] {
        [Packet::Publish(p), Packet::PubRel(r)] => {
            assert!(p.dup);
            assert_eq!((p.packet_id, &p.payload[..]), (pids.0, &b"1"[..]));
            assert_eq!(r.packet_id, pids.1);
        }
        other => panic!("{other:?}"),
    }
    // The publisher's QoS 2 id still awaits PUBREL: a resent PUBLISH is
    // not routed again.
    let mut publ = connect(&b, "pub", 600, None, at(6));
    publ.output().clear();
    publish(&mut publ, "a", b"2", QoS::ExactlyOnce, false, 9, at(6));
    assert!(publishes(&mut sub, at(6)).is_empty());
}

#[test]
fn wills_of_connections_that_died_with_the_broker_go_out_after_restart() {
    let dir = Scratch::new("wills");
    {
        let (b, store, _) = start(&dir.0, at(0));
        let mut watcher = connect(&b, "watcher", 3600, None, at(0));
        subscribe(&mut watcher, "will/#", QoS::AtLeastOnce, None, at(0));
        watcher.close(CloseCause::ConnectionLost, at(0));
        // Connected at the crash: one whose session ends with it, one
        // whose session is kept and whose will waits 30 s.
        let _a = connect(&b, "a", 0, Some(("will/a", 0)), at(1));
        let _k = connect(&b, "k", 3600, Some(("will/k", 30)), at(1));
        store.close();
    }
    let (b, _store, report) = start(&dir.0, at(100));
    assert_eq!((report.wills_published, report.wills_pending), (1, 1));
    b.tick(at(110));
    let mut watcher = connect(&b, "watcher", 3600, None, at(110));
    assert_eq!(topics(&publishes(&mut watcher, at(110))), ["will/a"]);
    // The kept session's will waits for its delay, counted from restart.
    b.tick(at(131));
    assert_eq!(topics(&publishes(&mut watcher, at(131))), ["will/k"]);
}

#[test]
fn session_expiry_runs_across_downtime() {
    let dir = Scratch::new("expiry");
    {
        let (b, store, _) = start(&dir.0, at(0));
        let mut s = connect(&b, "short", 10, None, at(0));
        subscribe(&mut s, "t", QoS::AtLeastOnce, None, at(0));
        s.close(CloseCause::ConnectionLost, at(0));
        let mut l = connect(&b, "long", 1000, None, at(0));
        subscribe(&mut l, "t", QoS::AtLeastOnce, None, at(0));
        l.close(CloseCause::ConnectionLost, at(0));
        store.close();
    }
    // Down for 60 s: `short` expired meanwhile (it is gone before any
    // client could resume it), `long` did not.
    let (b, store, report) = start(&dir.0, at(60));
    assert_eq!((report.sessions, report.sessions_expired), (1, 1));
    assert!(b.session("short").is_none());
    assert!(b.session("long").is_some());
    store.close();
    drop(b);
    // And the expired one's records are gone for good.
    let (_b, _store, report) = start(&dir.0, at(61));
    assert_eq!(report.sessions, 1);
}

#[test]
fn a_damaged_state_file_is_refused_with_what_to_do() {
    let dir = Scratch::new("corrupt");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("state.db"), vec![0x5a; 8192]).unwrap();
    let e = StateStore::open(&dir.0, &config(PersistenceMode::Async)).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("state.db") && text.contains("damaged"),
        "{text}"
    );
    assert!(text.contains("move the file"), "{text}");
}

#[test]
fn a_failing_write_is_reported_to_sync_acknowledgements() {
    let dir = Scratch::new("full");
    let (store, _, _) = StateStore::open(
        &dir.0,
        &PersistenceConfig {
            mode: PersistenceMode::Sync,
            flush_interval_ms: 5,
            max_size_mb: 1,
        },
    )
    .unwrap();
    let b = Broker::new(BrokerConfig::default());
    b.set_persist(store.clone());
    let durability = store.durability();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut c = connect(&b, "big", 0, None, at(0));
    // Retained messages of 64 KiB each: the 1 MiB quota is hit soon.
    static PAYLOAD: [u8; 65536] = [7; 65536];
    let mut failed = false;
    for i in 0..64 {
        let before = Persist::recorded(&*store);
        publish(
            &mut c,
            &format!("r/{i}"),
            &PAYLOAD,
            QoS::AtLeastOnce,
            true,
            1,
            at(0),
        );
        let after = Persist::recorded(&*store);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let ok = loop {
            if let std::task::Poll::Ready(ok) = durability.poll_settled(&mut cx, before, after) {
                break ok;
            }
            assert!(std::time::Instant::now() < deadline, "never settled");
            std::thread::sleep(Duration::from_millis(1));
        };
        if !ok {
            failed = true;
            break;
        }
    }
    assert!(failed, "the quota was never hit");
    assert!(
        Persist::stats(&*store)
            .write_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    store.close();
}

#[test]
fn changes_that_cancel_out_before_the_commit_still_settle_in_sync_mode() {
    // A delivery queued, sent and acknowledged before the writer looks:
    // nothing is written, and whoever waits for those changes is answered.
    let dir = Scratch::new("cancel");
    let (store, _, _) = StateStore::open(
        &dir.0,
        &PersistenceConfig {
            mode: PersistenceMode::Sync,
            flush_interval_ms: 5,
            max_size_mb: 0,
        },
    )
    .unwrap();
    let durability = store.durability();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for round in 0..50u64 {
        let key = round + 1;
        let message = Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            origin: None,
        });
        let before = Persist::recorded(&*store);
        let mut changes = vec![
            persist::Change::Queued {
                client_id: "c".into(),
                key,
                delivery: Delivery {
                    message,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                    key,
                },
            },
            persist::Change::Sent { key, packet_id: 1 },
            persist::Change::Done { key },
        ];
        let after = store.record_many(&mut changes);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let std::task::Poll::Ready(ok) = durability.poll_settled(&mut cx, before, after) {
                assert!(ok);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: never settled"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    store.close();
}
