//! certmq-bench: a load generator that speaks plain MQTT, so it measures any
//! broker the same way, and a `compare` command that runs certmq and
//! mosquitto (and rumqttd, when installed) side by side on loopback.
//!
//! Every run is bounded in time and, optionally, in message count. Figures
//! are the rate of units of work (deliveries, connections), latency
//! percentiles, and the broker's CPU time per unit read from /proc.

mod client;
mod cluster;
mod compare;
mod enforce;
mod plot;
mod procstat;
mod restart;
mod scenario;
mod sweep;
mod tls;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use certmq_codec::{Protocol, QoS};
use clap::{Args, Parser, Subcommand};

use scenario::{Options, Scenario};

#[derive(Parser)]
#[command(
    name = "certmq-bench",
    about = "MQTT load generator and broker comparison"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario against a running broker.
    Run {
        #[command(flatten)]
        load: LoadArgs,
        /// Broker address.
        #[arg(long, default_value = "127.0.0.1:1883")]
        addr: SocketAddr,
        /// PID of the broker, for its CPU time and memory.
        #[arg(long)]
        broker_pid: Option<u32>,
    },
    /// Start certmq and mosquitto (and rumqttd if found) in turn, run the same
    /// scenario against each over several alternating rounds, print medians and ratios.
    Compare(compare::CompareArgs),
    /// Throughput and p99 latency against offered load for each broker, the
    /// p99 at half of mosquitto's maximum rate, and an SVG plot.
    Sweep(sweep::SweepArgs),
    /// certmq's live enforcement at scale: N mutual-TLS connections under one
    /// CA, the CA deactivated, the time until each is closed.
    Enforce(enforce::EnforceArgs),
    /// Restart with state: N retained messages and M persistent sessions,
    /// SIGTERM, start again; time to listen, to CONNACK, and until every
    /// retained message is back (certmq and mosquitto with persistence).
    Restart(restart::RestartArgs),
    /// Three certmq nodes on PostgreSQL and NATS against one node, in the
    /// same run: p2p across nodes, connect rate, revocation over 10,000
    /// connections spread over the nodes.
    Cluster(cluster::ClusterArgs),
}

#[derive(Args, Clone)]
pub struct LoadArgs {
    #[arg(long, value_enum, default_value = "p2p")]
    scenario: Scenario,
    /// 0, 1 or 2.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Connections: publisher/subscriber pairs (p2p), subscribers (fan-out),
    /// publishers (fan-in), held connections (idle), workers (connect-rate).
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Measuring window, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up before the window, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Messages per run in total (each publisher sends its share, then idles).
    #[arg(long)]
    messages: Option<u64>,
    /// Total publish rate, messages/s; 0 = as fast as the broker accepts.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// QoS 1/2 messages in flight per publisher.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Subscribers keep their sessions (clean start off; MQTT 5: expiry
    /// 1 hour), so a broker that persists state persists their messages.
    #[arg(long)]
    persistent_sessions: bool,
    /// Subscribers connect here instead (another node of a cluster).
    #[arg(long)]
    sub_addr: Option<SocketAddr>,
    /// MQTT version: 3 (3.1.1) or 5.
    #[arg(long, default_value_t = 5)]
    mqtt: u8,
    /// Source addresses to spread connections over, e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// TLS: none, server (one-way) or mutual (client certificate).
    #[arg(long, value_enum, default_value = "none")]
    tls: tls::TlsMode,
    /// Resume TLS sessions (tickets); off means a full handshake every time.
    #[arg(long)]
    tls_resume: bool,
    /// CA certificate(s) to trust (PEM). `compare` mints one when not given.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM), for --tls mutual.
    #[arg(long)]
    cert: Option<std::path::PathBuf>,
    /// Client private key (PEM), for --tls mutual.
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// The SNI name and the name the server certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// connect-rate: log in as users PREFIX-0 .. PREFIX-(N-1) (`--users`),
    /// one after another, with `--password`.
    #[arg(long, value_name = "PREFIX", requires = "password")]
    username: Option<String>,
    #[arg(long)]
    password: Option<String>,
    /// How many distinct users connect-rate cycles through.
    #[arg(long, default_value_t = 1)]
    users: usize,
}

impl LoadArgs {
    fn options(&self, addr: SocketAddr, broker_pid: Option<u32>) -> anyhow::Result<Options> {
        let protocol = match self.mqtt {
            3 | 4 => Protocol::V3_1_1,
            5 => Protocol::V5,
            v => anyhow::bail!("--mqtt must be 3 or 5, not {v}"),
        };
        anyhow::ensure!(
            self.duration > 0.0 && self.duration <= 3600.0,
            "--duration must be in (0, 3600] seconds"
        );
        anyhow::ensure!(
            self.connections <= 19_500,
            "--connections above 19,500 would exceed the 20,000 open-file limit"
        );
        let tls = match self.tls {
            tls::TlsMode::None => None,
            mode => {
                let Some(ca) = &self.ca else {
                    anyhow::bail!(
                        "--tls {mode:?} needs --ca (the CA that signed the broker's certificate)"
                    );
                };
                let files = tls::TlsFiles {
                    ca: ca.clone(),
                    server_cert: None,
                    server_key: None,
                    client_cert: self.cert.clone(),
                    client_key: self.key.clone(),
                    ca_key: None,
                };
                Some(std::sync::Arc::new(tls::TlsSetup::new(
                    mode,
                    &files,
                    &self.server_name,
                    self.tls_resume,
                )?))
            }
        };
        Ok(Options {
            credentials: self.username.as_ref().map(|u| scenario::Credentials {
                prefix: u.clone(),
                password: self.password.clone().unwrap_or_default(),
                users: self.users.max(1),
            }),
            tls,
            tls_mode: self.tls,
            tls_resume: self.tls_resume,
            addr,
            sub_addr: self.sub_addr,
            spread: Vec::new(),
            protocol,
            qos: QoS::from_u8(self.qos).unwrap_or_default(),
            payload: self.payload,
            connections: self.connections,
            warmup: Duration::from_secs_f64(self.warmup.max(0.0)),
            duration: Duration::from_secs_f64(self.duration),
            messages: self.messages,
            rate: self.rate,
            inflight: self.inflight,
            sources: self.sources.clone(),
            broker_pid,
            persistent_sessions: self.persistent_sessions,
            progress: !self.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("certmq-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run {
                load,
                addr,
                broker_pid,
            } => {
                let report = scenario::run(load.scenario, load.options(addr, broker_pid)?).await?;
                if load.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    compare::print_report(&report);
                }
                anyhow::Ok(())
            }
            Command::Compare(args) => compare::run(args).await,
            Command::Sweep(args) => sweep::run(args).await,
            Command::Enforce(args) => enforce::run(args).await,
            Command::Restart(args) => restart::run(args).await,
            Command::Cluster(args) => cluster::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certmq-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
