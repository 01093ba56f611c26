//! Decode and encode costs of the packets on the hot path: PUBLISH (both
//! protocol levels, QoS 0 and 1), PUBACK, and a CONNECT.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use certmq_codec::{
    decode, encode, Connect, Packet, Properties, Protocol, PubResponse, Publish, QoS, ReasonCode,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn publish(qos: QoS, payload: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from("site/7/device/12345/telemetry"),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 42 },
        payload: Bytes::from(vec![0xA5; payload]),
        properties: Properties::default(),
    })
}

fn bytes_of(p: &Packet, protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, protocol, &mut out);
    out
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    for (name, protocol) in [("v5", Protocol::V5), ("v3", Protocol::V3_1_1)] {
        for (qname, qos) in [("qos0", QoS::AtMostOnce), ("qos1", QoS::AtLeastOnce)] {
            let p = publish(qos, 64);
            let wire = bytes_of(&p, protocol);
            g.bench_function(format!("decode publish {name} {qname} 64B"), |b| {
                b.iter_batched_ref(
                    || wire.clone(),
                    |buf| black_box(decode(buf, Some(protocol), 1 << 20).unwrap()),
                    BatchSize::SmallInput,
                )
            });
            let mut out = BytesMut::with_capacity(256);
            g.bench_function(format!("encode publish {name} {qname} 64B"), |b| {
                b.iter(|| {
                    out.clear();
                    encode(black_box(&p), protocol, &mut out);
                    black_box(out.len())
                })
            });
        }
    }
    let ack = Packet::PubAck(PubResponse::new(42, ReasonCode::SUCCESS));
    let wire = bytes_of(&ack, Protocol::V5);
    g.bench_function("decode puback v5", |b| {
        b.iter_batched_ref(
            || wire.clone(),
            |buf| black_box(decode(buf, Some(Protocol::V5), 1 << 20).unwrap()),
            BatchSize::SmallInput,
        )
    });
    let connect = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "device-12345".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    let wire = bytes_of(&connect, Protocol::V5);
    g.bench_function("decode connect v5", |b| {
        b.iter_batched_ref(
            || wire.clone(),
            |buf| black_box(decode(buf, None, 1 << 20).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(codec, benches);
criterion_main!(codec);
