//! The load scenarios. Each is bounded in time (and optionally in message
//! count), measures only inside its window (after a warm-up), and reports
//! rates, latency percentiles and the broker's CPU time per unit of work.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use certmq_codec::{Protocol, PubResponse, QoS, ReasonCode};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{self, Client};
use crate::procstat;
use crate::tls::{TlsMode, TlsSetup};
use crate::wire;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N publishers to N subscribers, one topic per pair.
    P2p,
    /// One publisher, one topic, N subscribers.
    FanOut,
    /// N publishers to one subscriber.
    FanIn,
    /// N publishers to a shared subscription of 4 members.
    FanInShared,
    /// Hold N idle connections; report the broker's memory per connection.
    Idle,
    /// Connect (TCP, TLS or mutual TLS), CONNACK, DISCONNECT in a loop from N workers.
    ConnectRate,
    /// One publisher, one topic, N reading subscribers and one that is
    /// connected and subscribed but never reads (flow control: it must
    /// neither hold back the readers nor grow the broker's memory).
    Stalled,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    /// Where subscribers connect (another node of a cluster); `addr` when
    /// unset.
    pub sub_addr: Option<SocketAddr>,
    /// connect-rate: workers spread over these addresses (a cluster's
    /// nodes); `addr` alone when empty.
    pub spread: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub qos: QoS,
    pub payload: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop each publisher after this many messages (still bounded by time).
    pub messages: Option<u64>,
    /// Total publish rate in messages/s; 0 = as fast as the broker takes them.
    pub rate: u64,
    /// QoS 1/2 messages each publisher keeps in flight.
    pub inflight: usize,
    pub sources: Vec<IpAddr>,
    pub broker_pid: Option<u32>,
    /// Subscribers keep their sessions (clean start off).
    pub persistent_sessions: bool,
    pub progress: bool,
    pub tls: Option<Arc<TlsSetup>>,
    pub tls_mode: TlsMode,
    pub tls_resume: bool,
    /// connect-rate: user names and password to log in with.
    pub credentials: Option<Credentials>,
}

/// Users a connect-rate run logs in as: `{prefix}-{k}`, k cycling below
/// `users`.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub prefix: String,
    pub password: String,
    pub users: usize,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub tls: TlsMode,
    pub tls_resume: bool,
    pub qos: u8,
    pub protocol: u8,
    pub connections: usize,
    pub payload: usize,
    pub target_rate: u64,
    pub window_s: f64,
    /// What one unit of work is: "delivery", "connection" or "idle connection".
    pub unit: &'static str,
    pub sent: u64,
    pub units: u64,
    pub units_per_s: f64,
    pub latency: Option<Latency>,
    pub errors: u64,
    pub broker_cpu_s: Option<f64>,
    pub broker_cpu_us_per_unit: Option<f64>,
    pub broker_rss_bytes: Option<u64>,
    pub broker_bytes_per_connection: Option<f64>,
    /// Deliveries the reading subscribers should have had over the whole
    /// run (warm-up and drain included) but did not; `None` where a
    /// message has no fixed number of recipients (shared subscriptions).
    pub lost: Option<u64>,
    /// The broker's peak resident memory during the run minus its memory
    /// once every client was connected and subscribed.
    pub broker_rss_growth_bytes: Option<u64>,
}

/// State shared by the tasks of one run.
struct Shared {
    epoch: Instant,
    measuring: AtomicBool,
    stop: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    /// Whole-run counts (not only the window), for losses.
    total_sent: AtomicU64,
    total_received: AtomicU64,
    /// The broker's peak RSS sampled during the run.
    rss_max: AtomicU64,
    /// connect-rate logins so far (which user is next).
    logins: AtomicU64,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Shared {
            epoch: Instant::now(),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            total_sent: AtomicU64::new(0),
            total_received: AtomicU64::new(0),
            rss_max: AtomicU64::new(0),
            logins: AtomicU64::new(0),
        })
    }

    fn stamp(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

fn source(opts: &Options, i: usize) -> Option<IpAddr> {
    if opts.sources.is_empty() {
        None
    } else {
        opts.sources.get(i % opts.sources.len()).copied()
    }
}

pub async fn run(scenario: Scenario, opts: Options) -> anyhow::Result<Report> {
    match scenario {
        Scenario::Idle => idle(opts).await,
        Scenario::ConnectRate => connect_rate(opts).await,
        _ => messaging(scenario, opts).await,
    }
}

/// Publishers and subscribers wired per scenario.
async fn messaging(scenario: Scenario, opts: Options) -> anyhow::Result<Report> {
    let n = opts.connections.max(1);
    let shared = Shared::new();
    let run_id = format!(
        "{:x}",
        shared.epoch.elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    // (subscriber filters, publisher topics)
    let (filters, topics): (Vec<String>, Vec<String>) = match scenario {
        Scenario::P2p => (
            (0..n).map(|i| format!("bench/{run_id}/p2p/{i}")).collect(),
            (0..n).map(|i| format!("bench/{run_id}/p2p/{i}")).collect(),
        ),
        Scenario::FanOut => (
            (0..n).map(|_| format!("bench/{run_id}/fanout")).collect(),
            vec![format!("bench/{run_id}/fanout")],
        ),
        Scenario::FanIn => (
            vec![format!("bench/{run_id}/fanin/+")],
            (0..n)
                .map(|i| format!("bench/{run_id}/fanin/{i}"))
                .collect(),
        ),
        Scenario::FanInShared => (
            (0..4)
                .map(|_| format!("$share/g/bench/{run_id}/fanin/+"))
                .collect(),
            (0..n)
                .map(|i| format!("bench/{run_id}/fanin/{i}"))
                .collect(),
        ),
        Scenario::Stalled => (
            (0..n).map(|_| format!("bench/{run_id}/stalled")).collect(),
            vec![format!("bench/{run_id}/stalled")],
        ),
        Scenario::Idle | Scenario::ConnectRate => unreachable_scenario()?,
    };
    // Recipients of each message among the reading subscribers.
    let fan = match scenario {
        Scenario::P2p | Scenario::FanIn => Some(1),
        Scenario::FanOut | Scenario::Stalled => Some(n as u64),
        _ => None,
    };
    // Stalled: one more subscriber on the topic that never reads.
    let stalled = if scenario == Scenario::Stalled {
        let mut c = Client::connect(
            opts.addr,
            source(&opts, n),
            opts.protocol,
            "bench-stalled",
            600,
            opts.tls.as_deref(),
        )
        .await?;
        c.subscribe(&format!("bench/{run_id}/stalled"), opts.qos)
            .await?;
        Some(c)
    } else {
        None
    };

    let mut subscribers = JoinSet::new();
    let setup = Arc::new(Semaphore::new(64));
    let mut subs = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let permit = setup.clone().acquire_owned().await?;
        let opts2 = opts.clone();
        let f = f.clone();
        subs.push(tokio::spawn(async move {
            let id = format!("bench-sub-{i}");
            let mut c = if opts2.persistent_sessions {
                anyhow::ensure!(
                    opts2.tls.is_none(),
                    "--persistent-sessions runs over plain TCP"
                );
                Client::connect_persistent(
                    opts2.sub_addr.unwrap_or(opts2.addr),
                    opts2.protocol,
                    &id,
                )
                .await?
            } else {
                Client::connect(
                    opts2.sub_addr.unwrap_or(opts2.addr),
                    source(&opts2, i),
                    opts2.protocol,
                    &id,
                    600,
                    opts2.tls.as_deref(),
                )
                .await?
            };
            c.subscribe(&f, opts2.qos).await?;
            drop(permit);
            anyhow::Ok(c)
        }));
    }
    let mut publishers = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let permit = setup.clone().acquire_owned().await?;
        let opts2 = opts.clone();
        let t = t.clone();
        publishers.push(tokio::spawn(async move {
            let c = Client::connect(
                opts2.addr,
                source(&opts2, i + 7),
                opts2.protocol,
                &format!("bench-pub-{i}"),
                600,
                opts2.tls.as_deref(),
            )
            .await?;
            drop(permit);
            anyhow::Ok((c, t))
        }));
    }
    let mut hists = Vec::new();
    for s in subs {
        let c = s.await?.context("subscriber setup")?;
        let shared = shared.clone();
        let qos = opts.qos;
        subscribers.spawn(subscriber(c, shared, qos));
    }
    let per_pub_rate = if opts.rate == 0 {
        0.0
    } else {
        opts.rate as f64 / topics.len() as f64
    };
    let per_pub_limit = opts.messages.map(|m| m.div_ceil(topics.len() as u64));
    let mut pubs = JoinSet::new();
    for p in publishers {
        let (c, t) = p.await?.context("publisher setup")?;
        pubs.spawn(publisher(
            c,
            t,
            shared.clone(),
            opts.clone(),
            per_pub_rate,
            per_pub_limit,
        ));
    }

    let rss0 = opts.broker_pid.and_then(procstat::rss_bytes);
    let sampler = opts.broker_pid.map(|pid| {
        let shared = shared.clone();
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                if let Some(rss) = procstat::rss_bytes(pid) {
                    shared.rss_max.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let (window, cpu, sent) = measure_window(&opts, &shared).await;
    if let Some(s) = sampler {
        let _ = s.await;
    }

    while let Some(r) = pubs.join_next().await {
        if matches!(r, Ok(Err(_)) | Err(_)) {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Subscribers stop on their own once the stop flag is seen.
    while let Some(r) = subscribers.join_next().await {
        match r {
            Ok(Ok(h)) => hists.push(h),
            _ => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    drop(stalled);
    let mut all = new_hist();
    for h in &hists {
        let _ = all.add(h);
    }
    let units = shared.received.load(Ordering::Relaxed);
    let lost = fan.map(|f| {
        (shared.total_sent.load(Ordering::Relaxed) * f)
            .saturating_sub(shared.total_received.load(Ordering::Relaxed))
    });
    let rss_max = shared.rss_max.load(Ordering::Relaxed);
    let rss_growth = rss0.map(|r| rss_max.saturating_sub(r));
    Ok(Report {
        tls: opts.tls_mode,
        tls_resume: opts.tls_resume,
        scenario,
        qos: opts.qos as u8,
        protocol: opts.protocol.level(),
        connections: n,
        payload: opts.payload.max(8),
        target_rate: opts.rate,
        window_s: window,
        unit: "delivery",
        sent,
        units,
        units_per_s: units as f64 / window,
        latency: latency(&all),
        errors: shared.errors.load(Ordering::Relaxed),
        broker_cpu_s: cpu,
        broker_cpu_us_per_unit: cpu.filter(|_| units > 0).map(|c| c * 1e6 / units as f64),
        broker_rss_bytes: opts.broker_pid.and_then(procstat::rss_bytes),
        broker_bytes_per_connection: None,
        lost,
        broker_rss_growth_bytes: rss_growth,
    })
}

fn unreachable_scenario<T>() -> anyhow::Result<T> {
    anyhow::bail!("not a messaging scenario")
}

/// Percentiles of a histogram of nanoseconds, in microseconds.
fn latency(h: &Histogram<u64>) -> Option<Latency> {
    (!h.is_empty()).then(|| Latency {
        p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        p999_us: h.value_at_quantile(0.999) as f64 / 1000.0,
        max_us: h.max() as f64 / 1000.0,
    })
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s in nanoseconds, 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_hist()))
}

fn unreachable_hist() -> Histogram<u64> {
    // Histogram::new(3) only fails for sigfig > 5; never reached.
    std::process::abort()
}

/// Warm-up, then the measuring window: returns its length in seconds, the
/// broker's CPU seconds spent in it (when its PID is known) and the messages
/// sent in it. Tells every task to stop at the end.
async fn measure_window(opts: &Options, shared: &Shared) -> (f64, Option<f64>, u64) {
    tokio::time::sleep(opts.warmup).await;
    let cpu0 = opts.broker_pid.and_then(procstat::cpu_seconds);
    let sent0 = shared.sent.load(Ordering::Relaxed);
    shared.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    progress_wait(opts, shared, t0).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = opts.broker_pid.and_then(procstat::cpu_seconds);
    let sent = shared.sent.load(Ordering::Relaxed) - sent0;
    shared.stop.store(true, Ordering::Relaxed);
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    (window, cpu, sent)
}

/// Waits out the measuring window, drawing a progress bar on a terminal.
async fn progress_wait(opts: &Options, shared: &Shared, t0: Instant) {
    let total = opts.duration;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let e = t0.elapsed();
        if opts.progress {
            let frac = (e.as_secs_f64() / total.as_secs_f64()).min(1.0);
            let bar = (frac * 30.0) as usize;
            let rate = shared.received.load(Ordering::Relaxed) as f64 / e.as_secs_f64().max(0.001);
            eprint!(
                "\r[{}{}] {:5.1}s {:>12.0} units/s",
                "#".repeat(bar),
                " ".repeat(30 - bar),
                e.as_secs_f64(),
                rate
            );
        }
        if e >= total {
            break;
        }
    }
    if opts.progress {
        eprintln!();
    }
}

async fn publisher(
    mut c: Client,
    topic: String,
    shared: Arc<Shared>,
    opts: Options,
    rate: f64,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let window = if opts.qos == QoS::AtMostOnce {
        usize::MAX
    } else {
        opts.inflight.max(1)
    };
    let mut inflight = 0usize;
    let mut next_id: u16 = 0;
    let mut count = 0u64;
    let mut credits = 0.0f64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let protocol = c.protocol;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if rate > 0.0 {
            let now = Instant::now();
            credits = (credits + rate * now.duration_since(last).as_secs_f64())
                .min(rate.max(1.0) * 0.01 + 1.0);
            last = now;
        }
        let mut batch = 0;
        while inflight < window
            && batch < 64
            && (rate == 0.0 || credits >= 1.0)
            && limit.is_none_or(|l| count < l)
        {
            let id = if opts.qos == QoS::AtMostOnce {
                0
            } else {
                next_id = next_id.checked_add(1).unwrap_or(1);
                inflight += 1;
                next_id
            };
            wire::put_publish(
                &mut c.wbuf,
                protocol,
                &topic,
                opts.qos,
                id,
                shared.stamp(),
                opts.payload,
            );
            credits -= 1.0;
            batch += 1;
            count += 1;
        }
        if batch > 0 {
            c.flush().await?;
            shared.total_sent.fetch_add(batch, Ordering::Relaxed);
            if shared.measuring.load(Ordering::Relaxed) {
                shared.sent.fetch_add(batch, Ordering::Relaxed);
            }
        }
        let can_send_more =
            inflight < window && (rate == 0.0 || credits >= 1.0) && limit.is_none_or(|l| count < l);
        if opts.qos == QoS::AtMostOnce {
            if can_send_more {
                tokio::task::yield_now().await;
            } else if limit.is_some_and(|l| count >= l) {
                // Done: idle until the run stops.
                tokio::time::sleep(Duration::from_millis(20)).await;
            } else {
                tick.tick().await;
            }
            continue;
        }
        if can_send_more && batch > 0 {
            // Pick up acknowledgements already here, without waiting.
            while let Some((first, _, id)) =
                wire::next_frame(c.rbuf_mut(), protocol).map_err(anyhow::Error::msg)?
            {
                handle_ack(&mut c, first, id, &mut inflight);
            }
            continue;
        }
        tokio::select! {
            r = c.read_more() => r?,
            _ = tick.tick(), if rate > 0.0 || limit.is_some_and(|l| count >= l) => {}
        }
        while let Some((first, _, id)) =
            wire::next_frame(c.rbuf_mut(), protocol).map_err(anyhow::Error::msg)?
        {
            handle_ack(&mut c, first, id, &mut inflight);
        }
        c.flush().await?;
    }
    let _ = c.disconnect().await;
    Ok(())
}

fn handle_ack(c: &mut Client, first: u8, id: u16, inflight: &mut usize) {
    match first >> 4 {
        4 | 7 => *inflight = inflight.saturating_sub(1),
        5 => c.queue(&certmq_codec::Packet::PubRel(PubResponse::new(
            id,
            ReasonCode::SUCCESS,
        ))),
        _ => {}
    }
}

async fn subscriber(
    mut c: Client,
    shared: Arc<Shared>,
    _qos: QoS,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = new_hist();
    let protocol = c.protocol;
    let mut idle_checks = 0;
    loop {
        tokio::select! {
            r = c.read_more() => { r?; idle_checks = 0; }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if shared.stop.load(Ordering::Relaxed) {
                    idle_checks += 1;
                    if idle_checks >= 2 { break; }
                }
            }
        }
        let measuring = shared.measuring.load(Ordering::Relaxed);
        let now = shared.stamp();
        let mut got = 0;
        while let Some((first, incoming, id)) =
            wire::next_frame(c.rbuf_mut(), protocol).map_err(anyhow::Error::msg)?
        {
            match (first >> 4, incoming) {
                (3, Some(m)) => {
                    got += 1;
                    if measuring {
                        if let Some(stamp) = m.stamp {
                            let _ = hist.record(now.saturating_sub(stamp).max(1_000));
                        }
                    }
                    match m.qos {
                        1 => c.queue(&client::ack(certmq_codec::Packet::PubAck, m.packet_id)),
                        2 => c.queue(&client::ack(certmq_codec::Packet::PubRec, m.packet_id)),
                        _ => {}
                    }
                }
                (6, _) => c.queue(&client::ack(certmq_codec::Packet::PubComp, id)),
                _ => {}
            }
        }
        shared.total_received.fetch_add(got, Ordering::Relaxed);
        if measuring {
            shared.received.fetch_add(got, Ordering::Relaxed);
        }
        c.flush().await?;
    }
    Ok(hist)
}

/// Hold N connections; report the broker's resident memory per connection.
async fn idle(opts: Options) -> anyhow::Result<Report> {
    let pid = opts.broker_pid;
    let before = pid.and_then(procstat::rss_bytes);
    let limit = Arc::new(Semaphore::new(256));
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for i in 0..opts.connections {
        let permit = limit.clone().acquire_owned().await?;
        let o = opts.clone();
        set.spawn(async move {
            let c = Client::connect(
                o.addr,
                source(&o, i),
                o.protocol,
                &format!("idle-{i}"),
                0,
                o.tls.as_deref(),
            )
            .await;
            drop(permit);
            c
        });
    }
    let mut clients = Vec::with_capacity(opts.connections);
    let mut errors = 0u64;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(c)) => clients.push(c),
            _ => errors += 1,
        }
    }
    let connect_time = t0.elapsed().as_secs_f64();
    // Let the broker settle, then hold for the window.
    tokio::time::sleep(opts.warmup.max(Duration::from_millis(500))).await;
    let after = pid.and_then(procstat::rss_bytes);
    let held = clients.len() as u64;
    if opts.progress {
        eprintln!(
            "holding {held} connections ({errors} failed) for {:?}",
            opts.duration
        );
    }
    tokio::time::sleep(opts.duration).await;
    // Shrink our read buffers' footprint is irrelevant; just close.
    drop(clients);
    Ok(Report {
        tls: opts.tls_mode,
        tls_resume: opts.tls_resume,
        scenario: Scenario::Idle,
        qos: 0,
        protocol: opts.protocol.level(),
        connections: opts.connections,
        payload: 0,
        target_rate: 0,
        window_s: connect_time,
        unit: "idle connection",
        sent: 0,
        units: held,
        units_per_s: held as f64 / connect_time.max(1e-9),
        latency: None,
        errors,
        broker_cpu_s: None,
        broker_cpu_us_per_unit: None,
        broker_rss_bytes: after,
        broker_bytes_per_connection: match (before, after) {
            (Some(b), Some(a)) if held > 0 => Some((a as f64 - b as f64) / held as f64),
            _ => None,
        },
        lost: None,
        broker_rss_growth_bytes: None,
    })
}

/// Full MQTT connects (TCP + CONNECT/CONNACK + DISCONNECT) from N workers.
async fn connect_rate(opts: Options) -> anyhow::Result<Report> {
    let shared = Shared::new();
    let mut set = JoinSet::new();
    for w in 0..opts.connections.max(1) {
        let o = opts.clone();
        let shared = shared.clone();
        set.spawn(async move {
            let mut i = 0u64;
            let mut hist = new_hist();
            while !shared.stop.load(Ordering::Relaxed) {
                let start = shared.stamp();
                let id = format!("cr-{w}-{i}");
                i += 1;
                let tls = o.tls.as_deref();
                let login = o.credentials.as_ref().map(|c| {
                    let k = shared.logins.fetch_add(1, Ordering::Relaxed) % c.users as u64;
                    (format!("{}-{k}", c.prefix), c.password.clone())
                });
                let src = source(&o, w + i as usize);
                let addr = o
                    .spread
                    .get(w % o.spread.len().max(1))
                    .copied()
                    .unwrap_or(o.addr);
                match Client::connect_as(addr, src, o.protocol, &id, 60, tls, login).await {
                    Ok(c) => {
                        let _ = c.disconnect().await;
                        if shared.measuring.load(Ordering::Relaxed) {
                            shared.received.fetch_add(1, Ordering::Relaxed);
                            let _ = hist.record(shared.stamp().saturating_sub(start).max(1_000));
                        }
                    }
                    Err(_) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            hist
        });
    }
    let (window, cpu, _) = measure_window(&opts, &shared).await;
    let mut all = new_hist();
    while let Some(r) = set.join_next().await {
        if let Ok(h) = r {
            let _ = all.add(&h);
        }
    }
    let units = shared.received.load(Ordering::Relaxed);
    Ok(Report {
        tls: opts.tls_mode,
        tls_resume: opts.tls_resume,
        scenario: Scenario::ConnectRate,
        qos: 0,
        protocol: opts.protocol.level(),
        connections: opts.connections,
        payload: 0,
        target_rate: 0,
        window_s: window,
        unit: "connection",
        sent: units,
        units,
        units_per_s: units as f64 / window,
        latency: latency(&all),
        errors: shared.errors.load(Ordering::Relaxed),
        broker_cpu_s: cpu,
        broker_cpu_us_per_unit: cpu.filter(|_| units > 0).map(|c| c * 1e6 / units as f64),
        broker_rss_bytes: opts.broker_pid.and_then(procstat::rss_bytes),
        broker_bytes_per_connection: None,
        lost: None,
        broker_rss_growth_bytes: None,
    })
}
