//! The subscription trie: matching a topic against 10,000 and 100,000
//! filters (exact, `+` and `#`), and subscribe/unsubscribe.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use certmq_codec::SubscriptionOptions;
use certmq_core::topic::parse_filter;
use certmq_core::{Mailbox, SessionId, Subscriber, SubscriptionTree};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn subscriber(id: u64) -> Subscriber {
    Subscriber {
        mailbox: Arc::new(Mailbox::new(SessionId(id), "bench".into(), 16)),
        options: SubscriptionOptions::default(),
        subscription_id: None,
        check: None,
    }
}

/// `n` devices, each with its own exact filter, plus every tenth with a
/// `+` filter, every hundredth with a `#` filter, and one `$share` group.
fn tree(n: u64) -> SubscriptionTree {
    let mut t = SubscriptionTree::new();
    for i in 0..n {
        let f = format!("site/{}/device/{i}/telemetry", i % 100);
        t.insert(&parse_filter(&f).unwrap(), subscriber(i));
        if i % 10 == 0 {
            let f = format!("site/{}/device/+/status", i % 100);
            t.insert(&parse_filter(&f).unwrap(), subscriber(n + i));
        }
        if i % 100 == 0 {
            let f = format!("site/{}/#", i % 100);
            t.insert(&parse_filter(&f).unwrap(), subscriber(2 * n + i));
        }
    }
    for i in 0..4 {
        t.insert(
            &parse_filter("$share/g/site/+/device/+/telemetry").unwrap(),
            subscriber(3 * n + i),
        );
    }
    t
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("tree");
    g.throughput(Throughput::Elements(1));
    for n in [10_000u64, 100_000] {
        let t = tree(n);
        let mut out = Vec::new();
        g.bench_function(format!("match exact of {n}"), |b| {
            b.iter(|| {
                out.clear();
                t.matches(black_box("site/42/device/4242/telemetry"), &mut out);
                black_box(out.len())
            })
        });
        g.bench_function(format!("match none of {n}"), |b| {
            b.iter(|| {
                out.clear();
                t.matches(black_box("other/42/device/4242/telemetry"), &mut out);
                black_box(out.len())
            })
        });
        g.bench_function(format!("match wildcard of {n}"), |b| {
            b.iter(|| {
                out.clear();
                t.matches(black_box("site/7/device/1/status"), &mut out);
                black_box(out.len())
            })
        });
    }
    let mut t = tree(10_000);
    let filter = parse_filter("site/5/device/+/config/#").unwrap();
    let mut id = 1_000_000;
    g.bench_function("subscribe+unsubscribe in 10000", |b| {
        b.iter(|| {
            id += 1;
            t.insert(&filter, subscriber(id));
            black_box(t.remove(&filter, SessionId(id)))
        })
    });
    g.finish();
}

criterion_group!(tree_benches, benches);
criterion_main!(tree_benches);
