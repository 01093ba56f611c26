//! Helpers shared by the core's integration tests: CONNECT, an accepted
//! connection, SUBSCRIBE.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use certmq_codec::*;
use certmq_core::*;

pub fn connect(protocol: Protocol, id: &str, clean: bool, expiry: Option<u32>) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: expiry,
            ..Default::default()
        },
    }
}

pub fn open(b: &Arc<Broker>, c: Connect, now: Time) -> Conn {
    b.connect(
        c,
        &ConnectContext {
            authorized: true,
            ..Default::default()
        },
        now,
    )
    .unwrap()
}

pub fn subscribe(conn: &mut Conn, filter: &str, qos: QoS, now: Time) {
    let s = Subscribe {
        packet_id: 1,
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
        properties: Properties::default(),
    };
    conn.handle(Packet::Subscribe(s), now).unwrap();
    assert!(matches!(conn.output().pop(), Some(Packet::SubAck(_))));
}
