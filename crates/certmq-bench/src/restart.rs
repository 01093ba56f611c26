//! `certmq-bench restart`: how long a broker takes to come back with its
//! state. Each broker (certmq with its default persistence, mosquitto with
//! `persistence true`) gets N retained messages and M persistent sessions
//! (clean session off, one QoS 1 subscription each), is stopped with
//! SIGTERM, and started again on the same data. Measured: the stop, the
//! time until it accepts TCP, until a CONNACK, and until a subscriber to
//! `r/#` has received every retained message back (which also checks that
//! nothing was lost); and a persistent session resumes with
//! `session present`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use certmq_codec::{Packet, Protocol, Publish, QoS};
use clap::Args;

use crate::client::Client;
use crate::compare::{start_with, Bins, BrokerKind};
use crate::tls::TlsMode;

#[derive(Args)]
pub struct RestartArgs {
    /// Retained messages to keep (under r/<i/1000>/<i%1000>).
    #[arg(long, default_value_t = 100_000)]
    retained: usize,
    /// Persistent sessions to keep.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Payload bytes of each retained message.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Brokers, in run order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "certmq,mosquitto"
    )]
    brokers: Vec<BrokerKind>,
    #[command(flatten)]
    bins: Bins,
    /// Print the reports as JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    broker: &'static str,
    retained: usize,
    sessions: usize,
    fill_s: f64,
    stop_s: f64,
    listen_s: f64,
    connack_s: f64,
    /// From the restart until the last retained message arrived.
    retained_back_s: f64,
    retained_back: usize,
    session_present: bool,
}

const LIMIT: Duration = Duration::from_secs(300);

pub async fn run(args: RestartArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.retained <= 1_000_000 && args.sessions <= 100_000,
        "--retained at most 1,000,000 and --sessions at most 100,000"
    );
    let mut reports = Vec::new();
    for kind in &args.brokers {
        let r = one(*kind, &args).await?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{:<28} fill {:>6.2} s  stop {:>6.3} s  listening {:>6.3} s  CONNACK {:>6.3} s  \
                 {} retained back in {:>6.3} s  session present: {}",
                r.broker,
                r.fill_s,
                r.stop_s,
                r.listen_s,
                r.connack_s,
                r.retained_back,
                r.retained_back_s,
                r.session_present
            );
        }
        reports.push(r);
    }
    if let [a, b, ..] = &reports[..] {
        let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
        println!(
            "ratio {}/{}: stop {:.2}x, listening {:.2}x, CONNACK {:.2}x, retained back {:.2}x",
            a.broker,
            b.broker,
            ratio(a.stop_s, b.stop_s),
            ratio(a.listen_s, b.listen_s),
            ratio(a.connack_s, b.connack_s),
            ratio(a.retained_back_s, b.retained_back_s),
        );
    }
    Ok(())
}

async fn one(kind: BrokerKind, args: &RestartArgs) -> anyhow::Result<Report> {
    let mut running = start_with(kind, &args.bins, TlsMode::None, None, true)?;
    let addr = running.addr;
    let t = Instant::now();
    fill(addr, args)
        .await
        .with_context(|| format!("{}: filling", kind.label()))?;
    let fill_s = t.elapsed().as_secs_f64();
    let stop_s = running.stop_timed().as_secs_f64();
    let restarted = Instant::now();
    let listen_s = running.restart_timed(LIMIT)?.as_secs_f64();
    let mut sub = loop {
        match Client::connect(addr, None, Protocol::V3_1_1, "restart-reader", 60, None).await {
            Ok(c) => break c,
            Err(_) if restarted.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_millis(2)).await
            }
            Err(e) => return Err(e),
        }
    };
    let connack_s = restarted.elapsed().as_secs_f64();
    // One block of (at most) 1,000 at a time: both brokers cap what one
    // SUBSCRIBE sends at the queue limit (1,000).
    let mut back = 0;
    let deadline = restarted + LIMIT;
    for block in 0..args.retained.div_ceil(1000) {
        let want = (args.retained - block * 1000).min(1000);
        sub.subscribe(&format!("r/{block}/#"), QoS::AtMostOnce)
            .await
            .context("subscribing to the retained messages")?;
        let mut got = 0;
        while got < want {
            let p = tokio::time::timeout_at(deadline.into(), sub.recv())
                .await
                .with_context(|| format!("{back} of {} retained messages back", args.retained))?
                .with_context(|| format!("{back} of {} retained messages back", args.retained))?;
            if matches!(&p, Packet::Publish(p) if p.retain) {
                got += 1;
            }
        }
        back += got;
    }
    let retained_back_s = restarted.elapsed().as_secs_f64();
    let session_present = resumes(addr, "restart-s-0")
        .await
        .context("resuming a session")?;
    drop(running);
    Ok(Report {
        broker: kind.label(),
        retained: args.retained,
        sessions: args.sessions,
        fill_s,
        stop_s,
        listen_s,
        connack_s,
        retained_back_s,
        retained_back: back,
        session_present,
    })
}

/// Retained messages from one connection (QoS 0, pipelined, then one QoS
/// 1 publish whose PUBACK says all before it were handled), then the
/// persistent sessions, a few hundred at a time.
async fn fill(addr: SocketAddr, args: &RestartArgs) -> anyhow::Result<()> {
    let mut c = Client::connect(addr, None, Protocol::V3_1_1, "restart-filler", 60, None).await?;
    let payload = Bytes::from(vec![b'r'; args.payload]);
    for i in 0..args.retained {
        c.queue(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: format!("r/{}/{}", i / 1000, i % 1000).into(),
            packet_id: 0,
            payload: payload.clone(),
            properties: Default::default(),
        }));
        if c.wbuf.len() > 64 * 1024 {
            c.flush().await?;
        }
    }
    c.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "restart/fence".into(),
        packet_id: 1,
        payload: Bytes::new(),
        properties: Default::default(),
    }))
    .await?;
    loop {
        match tokio::time::timeout(LIMIT, c.recv())
            .await
            .context("no PUBACK")?
            .context("waiting for the PUBACK after the retained messages")?
        {
            Packet::PubAck(_) => break,
            _ => continue,
        }
    }
    c.disconnect().await?;
    let mut set = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    for i in 0..args.sessions {
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let _permit = permit;
            let id = format!("restart-s-{i}");
            let mut c = Client::connect_persistent(addr, Protocol::V3_1_1, &id)
                .await
                .with_context(|| format!("connecting {id}"))?;
            c.subscribe(&format!("s/{i}"), QoS::AtLeastOnce)
                .await
                .with_context(|| format!("subscribing {id}"))?;
            c.disconnect().await
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// Whether the session `id` is still there (CONNACK session present).
async fn resumes(addr: SocketAddr, id: &str) -> anyhow::Result<bool> {
    let c = Client::connect_persistent(addr, Protocol::V3_1_1, id).await;
    match c {
        Ok(c) => {
            let present = c.session_present;
            c.disconnect().await?;
            Ok(present)
        }
        Err(e) => bail!("cannot resume {id}: {e:#}"),
    }
}
