//! `certmq-bench sweep`: throughput and latency against offered load.
//!
//! First each broker's maximum rate (unthrottled), then every broker at half
//! of mosquitto's best maximum (the latency target's operating point), then
//! each offered load in turn, brokers alternating at every point. Writes the
//! table, JSON lines on request, and an SVG plot ([`crate::plot`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::compare::{start, Bins, BrokerKind, Brokers};
use crate::plot::{self, Series};
use crate::scenario::{self, Report};
use crate::tls::TlsMode;
use crate::LoadArgs;

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Offered loads, messages/s, in plot order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,20000,40000,60000,80000,120000,160000"
    )]
    loads: Vec<u64>,
    #[command(flatten)]
    brokers: Brokers,
    #[command(flatten)]
    bins: Bins,
    /// Write the plot here (SVG).
    #[arg(long, default_value = "target/bench-load.svg")]
    svg: PathBuf,
}

struct Point {
    offered: u64,
    report: Report,
}

async fn measure(kind: BrokerKind, args: &SweepArgs, rate: u64) -> anyhow::Result<Report> {
    let mut load = args.load.clone();
    load.rate = rate;
    if kind == BrokerKind::Rumqttd {
        load.mqtt = 3;
    }
    anyhow::ensure!(
        load.tls == TlsMode::None,
        "sweep measures plain TCP; use compare for TLS"
    );
    let running = start(kind, &args.bins, TlsMode::None, None)?;
    let opts = scenario::Options {
        progress: false,
        ..load.options(running.addr, Some(running.pid()))?
    };
    let offered = if rate == 0 {
        "max".to_string()
    } else {
        rate.to_string()
    };
    eprintln!("{} at {offered} msg/s ...", kind.label());
    let report = scenario::run(load.scenario, opts).await;
    drop(running);
    report.with_context(|| format!("{} at {offered} msg/s", kind.label()))
}

fn p99_ms(r: &Report) -> Option<f64> {
    r.latency.as_ref().map(|l| l.p99_us / 1000.0)
}

pub async fn run(args: SweepArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.loads.is_empty() && args.loads.len() <= 20,
        "--loads takes 1 to 20 rates"
    );
    anyhow::ensure!(
        args.loads.iter().all(|r| *r > 0),
        "--loads must be positive"
    );
    let mut max = Vec::new();
    for kind in &args.brokers.brokers {
        max.push((*kind, measure(*kind, &args, 0).await?));
    }
    let mosquitto_max = max
        .iter()
        .filter(|(k, _)| matches!(k, BrokerKind::Mosquitto | BrokerKind::MosquittoNagle))
        .map(|(_, r)| r.units_per_s)
        .fold(0.0, f64::max);
    let half = (mosquitto_max / 2.0).round() as u64;
    let mut at_half = Vec::new();
    if half > 0 {
        for kind in &args.brokers.brokers {
            at_half.push((*kind, measure(*kind, &args, half).await?));
        }
    }
    let mut points: Vec<(BrokerKind, Vec<Point>)> = args
        .brokers
        .brokers
        .iter()
        .map(|k| (*k, Vec::new()))
        .collect();
    for offered in &args.loads {
        for (kind, pts) in points.iter_mut() {
            let report = measure(*kind, &args, *offered).await?;
            pts.push(Point {
                offered: *offered,
                report,
            });
        }
    }

    println!("maximum rate (unthrottled), delivered/s:");
    for (kind, r) in &max {
        println!("  {:<28} {:>10.0}", kind.label(), r.units_per_s);
    }
    if half > 0 {
        println!("at half of mosquitto's best maximum ({half} msg/s):");
        for (kind, r) in &at_half {
            println!(
                "  {:<28} delivered {:>10.0}/s  p99 {:>9} ms  cpu {:>7} µs/msg",
                kind.label(),
                r.units_per_s,
                p99_ms(r).map_or("-".into(), |v| format!("{v:.2}")),
                r.broker_cpu_us_per_unit
                    .map_or("-".into(), |v| format!("{v:.2}")),
            );
        }
    }
    println!(
        "{:<28} {:>10} {:>12} {:>10} {:>12}",
        "broker", "offered", "delivered/s", "p99 ms", "cpu µs/msg"
    );
    for (kind, pts) in &points {
        for p in pts {
            println!(
                "{:<28} {:>10} {:>12.0} {:>10} {:>12}",
                kind.label(),
                p.offered,
                p.report.units_per_s,
                p99_ms(&p.report).map_or("-".into(), |v| format!("{v:.2}")),
                p.report
                    .broker_cpu_us_per_unit
                    .map_or("-".into(), |v| format!("{v:.2}")),
            );
        }
    }

    let series: Vec<Series> = points
        .iter()
        .map(|(kind, pts)| Series {
            label: kind.label().to_string(),
            points: pts
                .iter()
                .map(|p| (p.offered as f64, p.report.units_per_s, p99_ms(&p.report)))
                .collect(),
        })
        .collect();
    let title = format!(
        "{:?} QoS {}, {} connections, {}-byte payloads, MQTT {}",
        args.load.scenario,
        args.load.qos,
        args.load.connections,
        args.load.payload,
        if args.load.mqtt == 5 { "5" } else { "3.1.1" }
    );
    let svg = plot::render(&title, &series);
    if let Some(dir) = args.svg.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(&args.svg, svg)
        .with_context(|| format!("cannot write {}", args.svg.display()))?;
    eprintln!("plot written to {}", args.svg.display());
    Ok(())
}
