//! `certmq-bench cluster`: three certmq nodes on PostgreSQL and NATS
//! (SPEC 13) against one node, in the same run. Starts PostgreSQL (initdb
//! in a scratch directory, `pg_ctl` on a free loopback port; as the
//! `postgres` user when run as root) and nats-server, then measures:
//!
//! - p2p QoS 0 and QoS 1: publishers on node 1, subscribers on node 2,
//!   against publishers and subscribers on one node: throughput and p99;
//! - connect rate: workers spread over the three nodes against one node;
//! - revocation: N mutual-TLS connections spread over the three nodes, one
//!   device certificate revoked through node 2: the time until each
//!   connection is closed.
//!
//! Every process started is stopped by its PID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use certmq_codec::Protocol;
use clap::Args;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::Client;
use crate::compare::{default_certmq_bin, free_port, median, scratch, Bins, ScratchDir};
use crate::scenario::{self, Scenario};
use crate::tls::{TlsMode, TlsSetup};
use crate::LoadArgs;

#[derive(Args)]
pub struct ClusterArgs {
    /// Alternating rounds per measurement (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Mutual-TLS connections spread over the nodes for the revocation
    /// measurement (below the 20,000 open-file limit).
    #[arg(long, default_value_t = 10_000)]
    enforce_connections: usize,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    bins: Bins,
}

/// A process stopped by its PID when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PostgreSQL in a scratch directory, stopped by its postmaster's PID.
struct Postgres {
    port: u16,
    pid: u32,
    _dir: ScratchDir,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    fn start() -> anyhow::Result<Postgres> {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is not installed (apt-get install postgresql)")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().context("no initdb under /usr/lib/postgresql")?;
        let dir = scratch("pg")?;
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir.0)
                .status()?;
        }
        let data = dir.0.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "certmq", "--auth=trust", "-E", "UTF8"])
            .output()?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let out = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200",
                dir.0.display()
            ))
            .arg("-l")
            .arg(dir.0.join("pg.log"))
            .args(["-w", "start"])
            .output()?;
        if !out.status.success() {
            bail!("pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        }
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .parse()?;
        Ok(Postgres {
            port,
            pid,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("postgres://certmq@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A certmq node: TCP, mutual TLS and admin listeners.
struct Node {
    tcp: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
    dir: ScratchDir,
    proc: Proc,
}

fn wait_listening(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("certmq exited with {status}");
        }
        if Instant::now() > deadline {
            bail!("certmq did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Node {
    /// `cluster`: (node id, PostgreSQL URL, NATS URL); none: one node.
    fn start(bin: &Path, cluster: Option<(&str, &str, &str)>) -> anyhow::Result<Node> {
        let dir = scratch("node")?;
        let port = |_| -> anyhow::Result<SocketAddr> { Ok(([127, 0, 0, 1], free_port()?).into()) };
        let (tcp, tls, admin) = (port(0)?, port(1)?, port(2)?);
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .args([
                "--listen-tcp",
                &tcp.to_string(),
                "--listen-tls",
                &tls.to_string(),
            ])
            .args(["--listen-ws", "off", "--listen-wss", "off"])
            .args(["--listen-admin", &admin.to_string(), "--log", "warn"]);
        if let Some((id, pg, nats)) = cluster {
            cmd.args([
                "--node-id",
                id,
                "--cluster-postgres",
                pg,
                "--cluster-nats",
                nats,
            ]);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start certmq")?;
        wait_listening(admin, &mut child)?;
        wait_listening(tcp, &mut child)?;
        Ok(Node {
            tcp,
            tls,
            admin,
            dir,
            proc: Proc(child),
        })
    }

    fn token(&self) -> anyhow::Result<String> {
        Ok(
            std::fs::read_to_string(self.dir.0.join("data/admin.token"))?
                .trim()
                .to_string(),
        )
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

fn api(node: &Node, method: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{}/api/v1{path}", node.admin);
    let auth = format!("Bearer {}", node.token()?);
    let mut resp = match method {
        "POST" => agent
            .post(&url)
            .header("authorization", &auth)
            .send_empty()?,
        _ => agent.get(&url).header("authorization", &auth).call()?,
    };
    let text = resp.body_mut().read_to_string()?;
    if !resp.status().is_success() {
        bail!("{method} {path}: {} {text}", resp.status());
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

#[derive(serde::Serialize)]
struct Figure {
    what: String,
    one_node: f64,
    cluster: f64,
    ratio: f64,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let bin = args
        .bins
        .certmq_bin
        .clone()
        .unwrap_or_else(default_certmq_bin);
    let pg = Postgres::start()?;
    let nats_port = free_port()?;
    let mut nats_child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &nats_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run nats-server (apt-get install nats-server)")?;
    wait_listening(([127, 0, 0, 1], nats_port).into(), &mut nats_child)?;
    let _nats = Proc(nats_child);
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let pg_url = pg.url();
    let nodes: Vec<Node> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| Node::start(&bin, Some((id, &pg_url, &nats_url))))
        .collect::<anyhow::Result<_>>()?;
    let single = Node::start(&bin, None)?;
    eprintln!("PostgreSQL, NATS, three nodes and one single node up");

    let mut figures = Vec::new();
    for qos in [0u8, 1] {
        let mut load = args.load.clone();
        load.qos = qos;
        let base = load.options(single.tcp, Some(single.pid()))?;
        let (mut one, mut many, mut one_p99, mut many_p99) = (vec![], vec![], vec![], vec![]);
        let mut lost = 0u64;
        for round in 0..args.rounds.max(1) {
            let r = scenario::run(Scenario::P2p, base.clone()).await?;
            one.push(r.units_per_s);
            one_p99.push(r.latency.as_ref().map_or(f64::NAN, |l| l.p99_us));
            let mut o = load.options(nodes[0].tcp, Some(nodes[0].pid()))?;
            o.sub_addr = Some(nodes[1].tcp);
            let r = scenario::run(Scenario::P2p, o).await?;
            many.push(r.units_per_s);
            many_p99.push(r.latency.as_ref().map_or(f64::NAN, |l| l.p99_us));
            lost += r.lost.unwrap_or(0);
            eprintln!(
                "p2p QoS {qos} round {}: one node {:.0}/s, across nodes {:.0}/s ({} lost across nodes)",
                round + 1,
                one.last().copied().unwrap_or_default(),
                many.last().copied().unwrap_or_default(),
                r.lost.unwrap_or(0)
            );
        }
        println!("p2p QoS {qos}: {lost} deliveries lost across nodes in all rounds");
        for (what, a, b) in [
            (format!("p2p QoS {qos} deliveries/s"), one, many),
            (format!("p2p QoS {qos} p99 latency (us)"), one_p99, many_p99),
        ] {
            let (a, b) = (median(a).unwrap_or(f64::NAN), median(b).unwrap_or(f64::NAN));
            figures.push(Figure {
                what,
                one_node: a,
                cluster: b,
                ratio: b / a,
            });
        }
    }
    {
        let mut load = args.load.clone();
        load.connections = load.connections.max(1);
        let (mut one, mut many) = (vec![], vec![]);
        for _ in 0..args.rounds.max(1) {
            let o = load.options(single.tcp, Some(single.pid()))?;
            one.push(scenario::run(Scenario::ConnectRate, o).await?.units_per_s);
            let mut o = load.options(nodes[0].tcp, None)?;
            o.spread = nodes.iter().map(|n| n.tcp).collect();
            many.push(scenario::run(Scenario::ConnectRate, o).await?.units_per_s);
        }
        let (a, b) = (
            median(one).unwrap_or(f64::NAN),
            median(many).unwrap_or(f64::NAN),
        );
        figures.push(Figure {
            what: "connects/s (three nodes: workers spread over them)".into(),
            one_node: a,
            cluster: b,
            ratio: b / a,
        });
    }
    let revocation = revocation(&nodes, args.enforce_connections).await?;

    println!(
        "{:<52} {:>14} {:>14} {:>8}",
        "", "one node", "three nodes", "ratio"
    );
    for f in &figures {
        println!(
            "{:<52} {:>14.1} {:>14.1} {:>7.2}x",
            f.what, f.one_node, f.cluster, f.ratio
        );
    }
    println!("{revocation}");
    if args.load.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    }
    drop(single);
    drop(nodes);
    drop(pg);
    Ok(())
}

/// N mutual-TLS connections (one device certificate, N client ids) spread
/// over the nodes; the certificate revoked through node 2; the time until
/// each connection is closed.
async fn revocation(nodes: &[Node], n: usize) -> anyhow::Result<String> {
    anyhow::ensure!(
        (1..=19_000).contains(&n),
        "--enforce-connections must be 1..=19000"
    );
    let certs = scratch("cluster-certs")?;
    let files = crate::tls::mint(&certs.0)?;
    crate::compare::register_ca_at(nodes[0].admin, &nodes[0].token()?, &files)?;
    // Each node's own default server certificate: trust all three.
    let mut bundle = String::new();
    for node in nodes {
        bundle.push_str(&std::fs::read_to_string(
            node.dir.0.join("data/tls/default-ca.pem"),
        )?);
    }
    let ca = certs.0.join("nodes-ca.pem");
    std::fs::write(&ca, bundle)?;
    let tls = Arc::new(TlsSetup::new(
        TlsMode::Mutual,
        &crate::tls::TlsFiles {
            ca,
            ..files.clone()
        },
        "localhost",
        true,
    )?);
    let t0 = Instant::now();
    let limit = Arc::new(Semaphore::new(64));
    let mut opening = JoinSet::new();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await?;
        let (tls, addr) = (tls.clone(), nodes[i % nodes.len()].tls);
        opening.spawn(async move {
            let c =
                Client::connect(addr, None, Protocol::V5, &format!("rev-{i}"), 0, Some(&tls)).await;
            drop(permit);
            c
        });
    }
    let mut clients = Vec::with_capacity(n);
    while let Some(r) = opening.join_next().await {
        if let Ok(Ok(c)) = r {
            clients.push(c);
        }
    }
    let connected = clients.len();
    eprintln!(
        "{connected} connections over {} nodes ({:.1} s)",
        nodes.len(),
        t0.elapsed().as_secs_f64()
    );
    let devices = api(&nodes[1], "GET", "/device-certificates?limit=1")?;
    let id = devices["items"][0]["id"]
        .as_str()
        .context("no device record (JITP)")?
        .to_string();
    let start_at = Instant::now();
    let waiting = crate::enforce::watch_closes(clients, start_at);
    let node2 = (nodes[1].admin, nodes[1].token()?);
    let path = format!("/device-certificates/{id}/revoke");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .post(&format!("http://{}/api/v1{path}", node2.0))
            .header("authorization", &format!("Bearer {}", node2.1))
            .send_empty()
            .map(|r| r.status().as_u16())
    })
    .await??;
    let closes = crate::enforce::Closes::gather(waiting).await;
    Ok(format!(
        "revocation through node 2: {connected} of {n} connections over {} nodes; {} closed ({} with DISCONNECT 0x98): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        nodes.len(),
        closes.times.len(),
        closes.with_reason,
        closes.pct(0.5),
        closes.pct(0.99),
        closes.max()
    ))
}
