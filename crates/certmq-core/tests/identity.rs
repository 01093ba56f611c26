//! Session ownership (SPEC 2): a session belongs to the identity that
//! created it, through the core alone.

#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use certmq_core::Time;

use certmq_codec::*;
use certmq_core::*;

fn connect(id: &str, clean: bool) -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start: clean,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: Some(600),
            ..Default::default()
        },
    }
}

fn as_(identity: Identity) -> ConnectContext {
    ConnectContext {
        authorized: true,
        identity,
        ..ConnectContext::default()
    }
}

fn cert(id: &str) -> Identity {
    Identity::Certificate(id.into())
}

#[test]
fn another_identity_can_neither_take_over_nor_resume_nor_discard() {
    let b = Broker::new(BrokerConfig::default());
    let t0 = Time::from_unix_millis(1_700_000_000_000);
    let owner = b
        .connect(connect("dev", false), &as_(cert("a")), t0)
        .unwrap();
    for (who, clean) in [
        (cert("b"), false),
        (cert("b"), true),
        (Identity::Anonymous, true),
        (Identity::User("dev".into()), false),
    ] {
        assert_eq!(
            b.connect(connect("dev", clean), &as_(who), t0).err(),
            Some(ConnectRefused::ClientIdInUseByAnotherIdentity)
        );
    }
    assert!(owner.owns_session(), "a refused CONNECT kicked the owner");
    // Offline, the persisted session is still the owner's.
    owner.close(CloseCause::ConnectionLost, t0);
    assert!(b
        .connect(connect("dev", true), &as_(cert("b")), t0)
        .is_err());
    // The owner resumes it.
    let mut again = b
        .connect(connect("dev", false), &as_(cert("a")), t0)
        .unwrap();
    match again.output().remove(0) {
        Packet::ConnAck(a) => assert!(a.session_present),
        p => panic!("{p:?}"),
    }
    // Once the session has expired, anyone may use the client id.
    again.close(CloseCause::ConnectionLost, t0);
    let later = t0 + Duration::from_secs(601);
    b.tick(later);
    assert!(b
        .connect(connect("dev", false), &as_(cert("b")), later)
        .is_ok());
}

/// Lets clients whose id starts with `gateway-` take sessions over.
#[derive(Debug)]
struct Handover;

impl Authorizer for Handover {
    fn may_connect(&self, _: &ClientFacts) -> bool {
        true
    }
    fn may_publish(&self, _: &ClientFacts, _: &str, _: QoS, _: bool) -> bool {
        true
    }
    fn may_subscribe(&self, _: &ClientFacts, _: &str, _: QoS) -> SubscribeVerdict {
        SubscribeVerdict::Allow
    }
    fn may_read(&self, _: &ClientFacts, _: &str) -> bool {
        true
    }
    fn may_take_over(&self, c: &ClientFacts) -> bool {
        c.client_id.starts_with("gateway-")
    }
}

#[test]
fn a_policy_can_let_another_identity_take_a_session_over() {
    let b = Broker::new(BrokerConfig::default());
    assert!(b.set_authorizer(std::sync::Arc::new(Handover)));
    let t0 = Time::from_unix_millis(1_700_000_000_000);
    let first = b
        .connect(connect("gateway-1", false), &as_(cert("a")), t0)
        .unwrap();
    let second = b
        .connect(connect("gateway-1", false), &as_(cert("b")), t0)
        .unwrap();
    assert!(second.owns_session() && !first.owns_session());
    let _other = b
        .connect(connect("dev", false), &as_(cert("a")), t0)
        .unwrap();
    assert_eq!(
        b.connect(connect("dev", false), &as_(cert("b")), t0).err(),
        Some(ConnectRefused::ClientIdInUseByAnotherIdentity)
    );
}
