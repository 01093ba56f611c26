//! `certmq-bench enforce`: live enforcement at scale. Starts certmq with
//! mutual TLS, registers a minted CA, holds N device connections (one
//! certificate, N client ids), deactivates the CA through the admin API (or,
//! `--by crl`, uploads a CRL of the CA that lists the certificate) and
//! measures, per connection, the time from the API call to the broker's
//! DISCONNECT (or close). certmq only: it is certmq's registry being measured.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use certmq_codec::{Packet, Protocol};
use clap::Args;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::Client;
use crate::compare::{scratch, start, Bins, BrokerKind};
use crate::tls::{TlsMode, TlsSetup};

#[derive(Args)]
pub struct EnforceArgs {
    /// Live connections under the CA (below the 20,000 open-file limit).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Source addresses to spread connections over.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    #[command(flatten)]
    bins: Bins,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// What closes the connections: deactivating the CA, or a CRL.
    #[arg(long, value_enum, default_value_t = By::Ca)]
    by: By,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum By {
    Ca,
    Crl,
}

#[derive(serde::Serialize)]
struct Report {
    by: By,
    connections: usize,
    connected: usize,
    closed: usize,
    disconnect_0x98: usize,
    setup_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

pub async fn run(args: EnforceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=19_000).contains(&args.connections),
        "--connections must be 1..=19000 (20,000 open files per process)"
    );
    let certs = scratch("enforce-certs")?;
    let files = crate::tls::mint(&certs.0)?;
    let running = start(
        BrokerKind::Certmq,
        &args.bins,
        TlsMode::Mutual,
        Some(&files),
    )?;
    let (admin, token) = running
        .admin_access()
        .context("certmq started without its admin API")?;
    let ca_id = running.ca_id().context("the CA was not registered")?;
    let setup_files = crate::tls::TlsFiles {
        ca: running.certmq_ca(),
        ..files.clone()
    };
    let tls = Arc::new(TlsSetup::new(
        TlsMode::Mutual,
        &setup_files,
        "localhost",
        true,
    )?);
    let addr = running.addr;
    let t0 = Instant::now();
    let limit = Arc::new(Semaphore::new(64));
    let mut opening = JoinSet::new();
    for i in 0..args.connections {
        let permit = limit.clone().acquire_owned().await?;
        let tls = tls.clone();
        let source = (!args.sources.is_empty()).then(|| args.sources[i % args.sources.len()]);
        opening.spawn(async move {
            let c = Client::connect(
                addr,
                source,
                Protocol::V5,
                &format!("enforce-{i}"),
                0,
                Some(&tls),
            )
            .await;
            drop(permit);
            c
        });
    }
    let mut clients = Vec::with_capacity(args.connections);
    while let Some(r) = opening.join_next().await {
        if let Ok(Ok(c)) = r {
            clients.push(c);
        }
    }
    let setup_s = t0.elapsed().as_secs_f64();
    let connected = clients.len();
    let crl = match args.by {
        By::Crl => Some(crate::tls::client_crl(&files)?),
        By::Ca => None,
    };
    eprintln!(
        "{connected} connections held ({setup_s:.1} s); {}",
        if crl.is_some() {
            "uploading a CRL that lists their certificate"
        } else {
            "deactivating the CA"
        }
    );
    let start_at = Instant::now();
    let waiting = watch_closes(clients, start_at);
    let status = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let auth = format!("Bearer {token}");
        match crl {
            Some(der) => agent
                .put(&format!(
                    "http://{admin}/api/v1/ca-certificates/{ca_id}/crl"
                ))
                .header("authorization", &auth)
                .content_type("application/pkix-crl")
                .send(&der[..]),
            None => agent
                .post(&format!(
                    "http://{admin}/api/v1/ca-certificates/{ca_id}/deactivate"
                ))
                .header("authorization", &auth)
                .send_empty(),
        }
        .map(|r| r.status().as_u16())
    })
    .await??;
    anyhow::ensure!(status == 200, "the change answered {status}");
    let closes = Closes::gather(waiting).await;
    let report = Report {
        by: args.by,
        connections: args.connections,
        connected,
        closed: closes.times.len(),
        disconnect_0x98: closes.with_reason,
        setup_s,
        p50_ms: closes.pct(0.5),
        p99_ms: closes.pct(0.99),
        max_ms: closes.max(),
    };
    drop(running);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} of {} connections held; after {} {} closed ({} with DISCONNECT 0x98): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            report.connected, report.connections,
            if args.by == By::Crl { "the CRL upload" } else { "CA deactivation" },
            report.closed, report.disconnect_0x98, report.p50_ms, report.p99_ms, report.max_ms
        );
    }
    Ok(())
}

/// Watches each client for the broker's DISCONNECT (or close), from
/// `start_at`, for 30 s at most: (time, whether it was 0x98) each.
pub(crate) fn watch_closes(clients: Vec<Client>, start_at: Instant) -> JoinSet<(Duration, bool)> {
    let mut waiting = JoinSet::new();
    for mut c in clients {
        waiting.spawn(async move {
            let deadline = start_at + Duration::from_secs(30);
            loop {
                if let Ok(Some(Packet::Disconnect(d))) = c.try_decode() {
                    return (start_at.elapsed(), d.reason.0 == 0x98);
                }
                match tokio::time::timeout_at(deadline.into(), c.read_more()).await {
                    Ok(Ok(())) => continue,
                    _ => return (start_at.elapsed(), false),
                }
            }
        });
    }
    waiting
}

/// What [`watch_closes`] saw: close times (ms, ascending) and how many
/// closes carried DISCONNECT 0x98.
pub(crate) struct Closes {
    pub times: Vec<f64>,
    pub with_reason: usize,
}

impl Closes {
    pub async fn gather(mut waiting: JoinSet<(Duration, bool)>) -> Self {
        let mut times = Vec::with_capacity(waiting.len());
        let mut with_reason = 0;
        while let Some(r) = waiting.join_next().await {
            if let Ok((t, ok)) = r {
                times.push(t.as_secs_f64() * 1000.0);
                with_reason += usize::from(ok);
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Self { times, with_reason }
    }

    /// The `p` quantile (0..1) in ms; NaN when nothing closed.
    pub fn pct(&self, p: f64) -> f64 {
        let t = &self.times;
        t.get(((t.len() as f64 * p) as usize).min(t.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.times.last().copied().unwrap_or(f64::NAN)
    }
}
