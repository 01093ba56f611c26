//! The policy evaluators against naive oracles: the compiled trie against
//! an ordered scan of every policy, and the filter relations against
//! brute force over a small topic universe.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use certmq_codec::QoS;
use certmq_core::{CertFacts, ClientFacts, DenyAction, SubscribeVerdict};
use proptest::prelude::*;

use crate::config::NoMatch;
use crate::policy::{filters, Action, Effect, Policy};
use crate::set::PolicySet;

fn policy(id: &str, priority: i64, effect: Effect, actions: &[Action], topics: &[&str]) -> Policy {
    Policy {
        id: id.into(),
        priority,
        effect,
        actions: actions.to_vec(),
        topics: Some(topics.iter().map(|t| t.to_string()).collect()),
        client_ids: None,
        usernames: None,
        ca_ids: None,
        source_cidrs: None,
        qos: None,
        retain: None,
        description: None,
    }
}

fn device(client_id: &str, cn: &str) -> ClientFacts {
    ClientFacts {
        client_id: client_id.into(),
        username: None,
        cert: Some(Arc::new(CertFacts {
            cn: Some(cn.into()),
            ou: Some("fleet".into()),
            serial: "0a".into(),
            fingerprint: "ff".into(),
            san_dns: vec![format!("{cn}.example.com")],
            ca_id: "ca1".into(),
        })),
        peer_ip: Some("10.1.2.3".parse().unwrap()),
    }
}

fn set(policies: Vec<Policy>, no_match: NoMatch) -> PolicySet {
    PolicySet::new(
        policies.into_iter().map(Arc::new).collect(),
        no_match,
        DenyAction::Ignore,
    )
}

use Action::{Publish, Subscribe};
use Effect::{Allow, Deny};

#[test]
fn a_device_is_confined_to_its_own_cn() {
    let s = set(
        vec![
            policy(
                "own",
                10,
                Allow,
                &[Publish, Subscribe],
                &["devices/${cert.cn}/#"],
            ),
            policy("rest", 20, Deny, &[Publish, Subscribe], &["#"]),
        ],
        NoMatch::Allow,
    );
    let d = device("c1", "dev1");
    let q = Some(QoS::AtLeastOnce);
    assert!(
        s.decide_topic(Publish, &d, "devices/dev1/t", q, Some(false))
            .allow
    );
    assert!(
        s.decide_topic(Publish, &d, "devices/dev1", q, Some(false))
            .allow
    );
    assert!(
        !s.decide_topic(Publish, &d, "devices/dev2/t", q, Some(false))
            .allow
    );
    assert_eq!(
        s.decide_subscribe(&d, "devices/dev1/#", QoS::AtMostOnce).0,
        SubscribeVerdict::Allow
    );
    assert_eq!(
        s.decide_subscribe(&d, "#", QoS::AtMostOnce).0,
        SubscribeVerdict::Deny
    );
    assert_eq!(
        s.decide_subscribe(&d, "devices/+/t", QoS::AtMostOnce).0,
        SubscribeVerdict::Deny
    );
    // A client without a certificate has no ${cert.cn}: the allow matches nothing.
    let anon = ClientFacts {
        client_id: "x".into(),
        ..ClientFacts::default()
    };
    assert!(
        !s.decide_topic(Publish, &anon, "devices/dev1/t", q, Some(false))
            .allow
    );
}

#[test]
fn priority_then_creation_order_decides_first_match() {
    let s = set(
        vec![
            policy("late-allow", 5, Allow, &[Publish], &["a/#"]),
            policy("deny", 5, Deny, &[Publish], &["a/b"]),
            policy("early", 1, Deny, &[Publish], &["a/c"]),
        ],
        NoMatch::Deny,
    );
    let c = device("c", "n");
    let d = |t: &str| s.decide_topic(Publish, &c, t, Some(QoS::AtMostOnce), Some(false));
    assert_eq!(d("a/c").policy.unwrap().id, "early");
    assert_eq!(
        d("a/b").policy.unwrap().id,
        "late-allow",
        "equal priority: created first wins"
    );
    assert!(d("a/b").allow);
    assert!(!d("z").allow && d("z").policy.is_none(), "no_match = deny");
}

#[test]
fn a_partial_deny_makes_a_subscription_checked() {
    let s = set(
        vec![
            policy("secret", 1, Deny, &[Subscribe], &["devices/secret/#"]),
            policy("all", 2, Allow, &[Subscribe], &["devices/#"]),
        ],
        NoMatch::Deny,
    );
    let c = device("c", "n");
    assert_eq!(
        s.decide_subscribe(&c, "devices/#", QoS::AtMostOnce).0,
        SubscribeVerdict::Checked
    );
    assert_eq!(
        s.decide_subscribe(&c, "devices/open/#", QoS::AtMostOnce).0,
        SubscribeVerdict::Allow
    );
    assert_eq!(
        s.decide_subscribe(&c, "devices/secret/x", QoS::AtMostOnce)
            .0,
        SubscribeVerdict::Deny
    );
    assert!(
        !s.decide_topic(Subscribe, &c, "devices/secret/x", None, None)
            .allow
    );
    assert!(
        s.decide_topic(Subscribe, &c, "devices/open/x", None, None)
            .allow
    );
}

#[test]
fn a_value_with_wildcards_or_slashes_matches_nothing() {
    let s = set(
        vec![policy(
            "own",
            1,
            Allow,
            &[Publish],
            &["devices/${client_id}/#"],
        )],
        NoMatch::Deny,
    );
    for id in ["+", "#", "a/b", ""] {
        let c = ClientFacts {
            client_id: id.into(),
            ..ClientFacts::default()
        };
        assert!(
            !s.decide_topic(Publish, &c, "devices/x/y", None, Some(false))
                .allow,
            "{id}"
        );
        assert_eq!(
            s.decide_subscribe(&c, "devices/x/#", QoS::AtMostOnce).0,
            SubscribeVerdict::Deny
        );
    }
}

#[test]
fn conditions_client_ids_usernames_cidrs_qos_retain() {
    let mut p = policy("p", 1, Deny, &[Publish], &["t"]);
    p.client_ids = Some(vec!["sensor-*".into()]);
    p.source_cidrs = Some(vec!["10.0.0.0/8".into()]);
    p.qos = Some(vec![2]);
    p.retain = Some(true);
    let s = set(vec![p], NoMatch::Allow);
    let c = device("sensor-7", "n");
    let d = |c: &ClientFacts, q, r| s.decide_topic(Publish, c, "t", Some(q), Some(r)).allow;
    assert!(!d(&c, QoS::ExactlyOnce, true));
    assert!(d(&c, QoS::AtLeastOnce, true), "qos not listed");
    assert!(d(&c, QoS::ExactlyOnce, false), "retain differs");
    assert!(
        d(&device("meter-1", "n"), QoS::ExactlyOnce, true),
        "client id"
    );
    let mut other = device("sensor-7", "n");
    other.peer_ip = Some("192.168.1.1".parse().unwrap());
    assert!(d(&other, QoS::ExactlyOnce, true), "address");
}

#[test]
fn san_dns_names_each_count() {
    let s = set(
        vec![policy(
            "san",
            1,
            Allow,
            &[Publish],
            &["sites/${cert.san.dns}/#"],
        )],
        NoMatch::Deny,
    );
    let mut c = device("c", "n");
    if let Some(cert) = c.cert.as_mut() {
        Arc::make_mut(cert).san_dns = vec!["a.example".into(), "b.example".into()];
    }
    let d = |t| s.decide_topic(Publish, &c, t, None, Some(false)).allow;
    assert!(d("sites/a.example/x") && d("sites/b.example/x") && !d("sites/c.example/x"));
}

// --- property tests -------------------------------------------------------

const LEVELS: &[&str] = &["a", "b", "$s", "c1", "u1", "dev-c1", "n.example", "+", "#"];
const VAR_LEVELS: &[&str] = &[
    "${client_id}",
    "${username}",
    "${cert.cn}",
    "${cert.san.dns}",
    "dev-${client_id}",
    "${cert.ou}",
];
const TOPIC_LEVELS: &[&str] = &[
    "a",
    "b",
    "$s",
    "c1",
    "u1",
    "dev-c1",
    "n.example",
    "fleet",
    "",
];

fn filter_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(LEVELS),
            1 => prop::sample::select(VAR_LEVELS),
        ],
        1..4,
    )
    .prop_map(|levels| {
        // '#' only last.
        let mut out: Vec<&str> = Vec::new();
        for (i, l) in levels.iter().enumerate() {
            if *l == "#" && i + 1 != levels.len() {
                out.push("+");
            } else {
                out.push(l);
            }
        }
        out.join("/")
    })
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        0i64..4,
        any::<bool>(),
        prop::sample::subsequence(vec![Action::Connect, Publish, Subscribe], 1..=3),
        prop::option::weighted(0.85, prop::collection::vec(filter_strategy(), 1..3)),
        prop::option::weighted(0.2, prop::sample::select(vec!["c*", "c1", "*", "x"])),
        prop::option::weighted(0.2, prop::sample::select(vec!["u1", "*"])),
        prop::option::weighted(0.15, prop::sample::select(vec!["10.0.0.0/8", "127.0.0.1"])),
        prop::option::weighted(0.2, prop::sample::subsequence(vec![0u8, 1, 2], 1..=2)),
        prop::option::weighted(0.2, any::<bool>()),
    )
        .prop_map(
            |(priority, allow, actions, topics, cid, user, cidr, qos, retain)| Policy {
                id: String::new(),
                priority,
                effect: if allow { Allow } else { Deny },
                actions,
                topics,
                client_ids: cid.map(|c| vec![c.to_string()]),
                usernames: user.map(|u| vec![u.to_string()]),
                ca_ids: None,
                source_cidrs: cidr.map(|c| vec![c.to_string()]),
                qos,
                retain,
                description: None,
            },
        )
}

fn client_strategy() -> impl Strategy<Value = ClientFacts> {
    (
        prop::sample::select(vec!["c1", "c2", "a", "+", "$s"]),
        prop::option::of(prop::sample::select(vec!["u1", "a"])),
        prop::option::of(prop::sample::select(vec!["n", "a", "c1"])),
        any::<bool>(),
    )
        .prop_map(|(cid, user, cn, local)| ClientFacts {
            client_id: cid.into(),
            username: user.map(Into::into),
            cert: cn.map(|cn| {
                Arc::new(CertFacts {
                    cn: Some(cn.into()),
                    ou: Some("fleet".into()),
                    serial: "01".into(),
                    fingerprint: "ab".into(),
                    san_dns: vec!["n.example".into(), "a".into()],
                    ca_id: "ca".into(),
                })
            }),
            peer_ip: Some(
                if local { "127.0.0.1" } else { "10.9.9.9" }
                    .parse()
                    .unwrap(),
            ),
        })
}

fn topic_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..5).prop_map(|l| l.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_compiled_set_decides_as_a_naive_ordered_scan(
        mut policies in prop::collection::vec(policy_strategy(), 0..12),
        deny_default in any::<bool>(),
        client in client_strategy(),
        topics in prop::collection::vec(topic_strategy(), 1..8),
        qos in 0u8..3,
        retain in any::<bool>(),
    ) {
        for (i, p) in policies.iter_mut().enumerate() {
            p.id = format!("p{i}");
            p.validate().unwrap();
        }
        let no_match = if deny_default { NoMatch::Deny } else { NoMatch::Allow };
        let s = set(policies, no_match);
        let q = QoS::from_u8(qos);
        for t in &topics {
            let fast = s.decide_topic(Publish, &client, t, q, Some(retain));
            let slow = s.decide_topic_naive(Publish, &client, t, q, Some(retain));
            prop_assert_eq!(fast, slow, "publish {}", t);
            let fast = s.decide_topic(Subscribe, &client, t, None, None);
            let slow = s.decide_topic_naive(Subscribe, &client, t, None, None);
            prop_assert_eq!(fast, slow, "read {}", t);
        }
    }

    #[test]
    fn covers_and_intersect_agree_with_brute_force(
        f in filter_levels(), s in filter_levels()
    ) {
        let universe = universe();
        let fm: Vec<bool> = universe.iter().map(|t| filters::matches(&f, t)).collect();
        let sm: Vec<bool> = universe.iter().map(|t| filters::matches(&s, t)).collect();
        let covers = sm.iter().zip(&fm).all(|(s, f)| !s || *f);
        let intersect = sm.iter().zip(&fm).any(|(s, f)| *s && *f);
        prop_assert_eq!(filters::covers(&f, &s), covers, "covers {} {}", f, s);
        prop_assert_eq!(filters::intersect(&f, &s), intersect, "intersect {} {}", f, s);
    }
}

fn filter_levels() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "$s", "+", "#"]), 1..4).prop_map(
        |levels| {
            let n = levels.len();
            levels
                .iter()
                .enumerate()
                .map(|(i, l)| if *l == "#" && i + 1 != n { "+" } else { l })
                .collect::<Vec<_>>()
                .join("/")
        },
    )
}

/// Every topic of 1 to 4 levels over `a`, `b`, `$s` and a level no filter
/// names (`z`), plus the empty level.
fn universe() -> Vec<String> {
    let symbols = ["a", "b", "$s", "z", ""];
    let mut out: Vec<String> = Vec::new();
    let mut layer: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
    for _ in 0..4 {
        out.extend(layer.iter().cloned());
        layer = layer
            .iter()
            .flat_map(|t| symbols.iter().map(move |s| format!("{t}/{s}")))
            .collect();
    }
    out
}
