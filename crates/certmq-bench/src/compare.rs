//! `certmq-bench compare`: starts each broker on a free loopback port with
//! equivalent settings, runs the same scenario against each in turn,
//! alternating A B A B over several rounds, and prints medians and the
//! ratio certmq/mosquitto. Everything it starts, it stops (by PID).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::scenario::{self, Report};
use crate::tls::{TlsFiles, TlsMode};
use crate::LoadArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    /// certmq as it ships (persistence `async`).
    Certmq,
    /// certmq with `--persistence off`.
    CertmqOff,
    /// certmq with `--persistence sync`.
    CertmqSync,
    /// certmq with `--policies` authorization policies (variables included).
    CertmqPolicies,
    /// mosquitto with set_tcp_nodelay true (like certmq).
    Mosquitto,
    /// mosquitto with its default set_tcp_nodelay false.
    MosquittoNagle,
    /// mosquitto (nodelay) with `persistence true`.
    MosquittoPersistent,
    Rumqttd,
}

impl BrokerKind {
    pub fn label(self) -> &'static str {
        match self {
            BrokerKind::Certmq => "certmq",
            BrokerKind::CertmqOff => "certmq (persistence off)",
            BrokerKind::CertmqSync => "certmq (persistence sync)",
            BrokerKind::CertmqPolicies => "certmq (with policies)",
            BrokerKind::Mosquitto => "mosquitto (nodelay)",
            BrokerKind::MosquittoNagle => "mosquitto (default, Nagle)",
            BrokerKind::MosquittoPersistent => "mosquitto (persistence)",
            BrokerKind::Rumqttd => "rumqttd",
        }
    }

    pub fn is_certmq(self) -> bool {
        matches!(
            self,
            BrokerKind::Certmq
                | BrokerKind::CertmqOff
                | BrokerKind::CertmqSync
                | BrokerKind::CertmqPolicies
        )
    }
}

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Rounds; each round runs every broker once, in order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[command(flatten)]
    brokers: Brokers,
    #[command(flatten)]
    bins: Bins,
    /// certmq with mutual TLS: device certificates in its registry before
    /// the run (imported into its store, then certmq restarted).
    #[arg(long, default_value_t = 0)]
    registered_devices: usize,
    /// Authorization policies given to `certmq-policies` (written into its
    /// store, then certmq restarted): a mix of device, wildcard and
    /// variable policies, the bench's own topics allowed by the last.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Append every run's report, one JSON object per line, to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Which brokers a run compares.
#[derive(Args, Clone)]
pub struct Brokers {
    /// Brokers to compare, in run order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "certmq,mosquitto,mosquitto-nagle"
    )]
    pub brokers: Vec<BrokerKind>,
}

/// Where the brokers' programs are.
#[derive(Args, Clone)]
pub struct Bins {
    /// The certmq binary (default: `certmq` next to this program).
    #[arg(long)]
    pub(crate) certmq_bin: Option<PathBuf>,
    #[arg(long, default_value = "mosquitto")]
    mosquitto_bin: PathBuf,
    #[arg(long, default_value = "rumqttd")]
    rumqttd_bin: PathBuf,
}

pub struct Running {
    child: Child,
    pub addr: SocketAddr,
    /// certmq's admin API, when started with one.
    admin: Option<SocketAddr>,
    /// The bench CA's id in certmq, once registered.
    ca_id: Option<String>,
    /// How it was started, for a restart.
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    _dir: ScratchDir,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// certmq's admin API address and token, when it runs one.
    pub fn admin_access(&self) -> Option<(SocketAddr, String)> {
        let token = std::fs::read_to_string(self._dir.0.join("data/admin.token")).ok()?;
        Some((self.admin?, token.trim().to_string()))
    }

    pub fn ca_id(&self) -> Option<String> {
        self.ca_id.clone()
    }

    /// certmq's default server CA, for TLS runs against it.
    pub fn certmq_ca(&self) -> PathBuf {
        self._dir.0.join("data/tls/default-ca.pem")
    }

    /// SIGTERM and the wait for the exit (a broker saving its state on
    /// the way out takes longer); returns how long it took.
    pub fn stop_timed(&mut self) -> Duration {
        let t = Instant::now();
        stop(&mut self.child);
        t.elapsed()
    }

    /// Starts the same command on the same data again and returns the time
    /// until it accepts TCP connections (within `limit`).
    pub fn restart_timed(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot restart the broker")?;
        loop {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return Ok(t.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the broker exited at restart with {status}");
            }
            if t.elapsed() > limit {
                bail!("the broker did not listen within {limit:?} of its restart");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

pub(crate) struct ScratchDir(pub PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) fn scratch(tag: &str) -> anyhow::Result<ScratchDir> {
    let dir = std::env::temp_dir().join(format!(
        "certmq-bench-{tag}-{}-{}",
        std::process::id(),
        free_port()?
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(ScratchDir(dir))
}

pub(crate) fn default_certmq_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("certmq")))
        .unwrap_or_else(|| PathBuf::from("certmq"))
}

/// Starts a broker on a free loopback port and waits until it listens.
pub fn start(
    kind: BrokerKind,
    args: &Bins,
    tls: TlsMode,
    files: Option<&TlsFiles>,
) -> anyhow::Result<Running> {
    start_with(kind, args, tls, files, false)
}

/// As [`start`]; `persist`: mosquitto keeps its state too (`persistence
/// true`, written at exit; certmq keeps it by default).
pub fn start_with(
    kind: BrokerKind,
    args: &Bins,
    tls: TlsMode,
    files: Option<&TlsFiles>,
    persist: bool,
) -> anyhow::Result<Running> {
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = scratch(match kind {
        k if k.is_certmq() => "certmq",
        BrokerKind::Rumqttd => "rumqttd",
        _ => "mosquitto",
    })?;
    let mut admin_addr: Option<SocketAddr> = None;
    let mut cmd = match kind {
        BrokerKind::Certmq
        | BrokerKind::CertmqOff
        | BrokerKind::CertmqSync
        | BrokerKind::CertmqPolicies => {
            let mode = match kind {
                BrokerKind::CertmqOff => "off",
                BrokerKind::CertmqSync => "sync",
                _ => "async",
            };
            let bin = args.certmq_bin.clone().unwrap_or_else(default_certmq_bin);
            let mut c = Command::new(bin);
            let addr = addr.to_string();
            // One listener on the port; TLS runs use certmq's default server
            // certificate (its CA is in the data directory, see `ca_file`).
            let (tcp, tls_addr) = match tls {
                TlsMode::None => (addr.as_str(), "off"),
                _ => ("off", addr.as_str()),
            };
            // Mutual TLS: the minted CA is registered through the admin
            // API once certmq listens (see `prepare_certmq`).
            let (auth, admin) = match tls {
                TlsMode::Mutual => ("required", format!("127.0.0.1:{}", free_port()?)),
                _ => ("none", "off".to_string()),
            };
            c.arg("serve")
                .arg("--data-dir")
                .arg(dir.0.join("data"))
                .args(["--listen-tcp", tcp, "--listen-tls", tls_addr])
                .args(["--tls-client-auth", auth, "--listen-ws", "off"])
                .args(["--listen-wss", "off", "--listen-admin", &admin])
                .args(["--log", "warn", "--persistence", mode]);
            admin_addr = admin.parse().ok();
            c
        }
        BrokerKind::Mosquitto | BrokerKind::MosquittoNagle | BrokerKind::MosquittoPersistent => {
            let conf = dir.0.join("mosquitto.conf");
            let nodelay = kind != BrokerKind::MosquittoNagle;
            let persist = persist || kind == BrokerKind::MosquittoPersistent;
            // Limits as certmq's defaults: queue 1000, 1024 in flight, 1 MiB packets.
            let persistence = if persist {
                // Run as root, mosquitto drops to its own user: its state
                // directory must be writable to that user.
                let state = dir.0.join("mosquitto-state");
                std::fs::create_dir_all(&state)?;
                std::fs::set_permissions(
                    &state,
                    std::os::unix::fs::PermissionsExt::from_mode(0o777),
                )?;
                format!(
                    "persistence true\npersistence_location {}/\nautosave_interval 0\n",
                    state.display()
                )
            } else {
                "persistence false\n".to_string()
            };
            let mut text = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
                 max_queued_messages 1000\nmax_inflight_messages 1024\nmessage_size_limit 1048576\n\
                 set_tcp_nodelay {nodelay}\nlog_dest stderr\nlog_type error\n"
            );
            if let (TlsMode::Server | TlsMode::Mutual, Some(f)) = (tls, files) {
                let path = |p: &Option<PathBuf>| {
                    p.as_ref()
                        .map(|p| p.display().to_string())
                        .ok_or_else(|| anyhow::anyhow!("server certificate files missing"))
                };
                text.push_str(&format!(
                    "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                    f.ca.display(),
                    path(&f.server_cert)?,
                    path(&f.server_key)?,
                    tls == TlsMode::Mutual
                ));
            }
            std::fs::write(&conf, text)?;
            let mut c = Command::new(&args.mosquitto_bin);
            c.arg("-c").arg(&conf);
            c
        }
        BrokerKind::Rumqttd if tls != TlsMode::None => {
            bail!("TLS comparisons run against certmq and mosquitto only")
        }
        BrokerKind::Rumqttd => {
            let conf = dir.0.join("rumqttd.toml");
            std::fs::write(&conf, rumqttd_config(addr))?;
            let mut c = Command::new(&args.rumqttd_bin);
            c.arg("--config").arg(&conf);
            c
        }
    };
    let program = cmd.get_program().to_owned();
    let cmd_args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", kind.label()))?;
    let mut running = Running {
        child,
        addr,
        _dir: dir,
        admin: admin_addr,
        ca_id: None,
        program,
        args: cmd_args,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            if let (Some(admin), Some(f)) = (running.admin, files) {
                running.ca_id = Some(register_bench_ca(&running, admin, f)?);
            }
            return Ok(running);
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            bail!("{} exited at start-up with {status}", kind.label());
        }
        if Instant::now() > deadline {
            bail!("{} did not listen on {addr} within 15 s", kind.label());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops certmq, imports `n` device records under its (only) CA into its
/// store, and starts it again on the same data directory and port.
fn import_devices(mut r: Running, n: usize) -> anyhow::Result<Running> {
    use certmq_registry::store::{AuditEntry, DeviceRecord, Store};
    let ca_id = r
        .ca_id
        .clone()
        .context("no CA registered (use --tls mutual)")?;
    stop(&mut r.child);
    let data = r._dir.0.join("data");
    let store = certmq_store::SqliteStore::open(&data)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let recs: Vec<DeviceRecord> = (0..n)
        .map(|i| {
            // Ids spread like SHA-256 digests (the registry shards by them).
            let id = format!(
                "{:016x}{:048x}",
                (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                i
            );
            DeviceRecord {
                signed_id: id.clone(),
                issuer_key: "certmq-bench".into(),
                id,
                ca_id: ca_id.clone(),
                serial: format!("{i:x}"),
                subject_cn: Some(format!("bench-imported-{i}")),
                subject_ou: None,
                client_id: None,
                not_before: now - 86_400,
                not_after: now + 86_400 * 365,
                status: certmq_pki::DeviceStatus::Active,
                source: certmq_pki::Provisioning::Api,
                pem: String::new(),
                created_at: now,
                updated_at: now,
                last_connected_at: None,
                chain_pem: String::new(),
            }
        })
        .collect();
    let audit = AuditEntry {
        actor: "certmq-bench".into(),
        action: "device_certificate.import".into(),
        target: ca_id.clone(),
        before: None,
        after: Some(serde_json::json!({"count": n})),
    };
    let added = store.import_devices(&recs, &audit)?;
    drop(store);
    eprintln!("imported {added} device certificates under {ca_id}");
    restart_in_place(r)
}

/// Starts certmq again with the arguments it had, and waits until it
/// listens.
fn restart_in_place(mut r: Running) -> anyhow::Result<Running> {
    let mut cmd = Command::new(r.program.clone());
    cmd.args(&r.args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    r.child = cmd.spawn().context("cannot restart certmq")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&r.addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("certmq did not listen again within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(r)
}

/// The policies of a `certmq-policies` run: `n - 1` policies that other
/// clients would have (per-device topics with `${client_id}`, `+` levels
/// with `${cert.cn}`, client-id patterns, literal subtrees), none of which
/// decides the bench's topics, and a last one that allows `bench/#`. So
/// every PUBLISH and SUBSCRIBE of the run is decided by an explicit policy
/// among `n`, with `no_match` never reached.
pub fn bench_policies(n: usize) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = (0..n.saturating_sub(1))
        .map(|i| {
            let (effect, actions, topic, clients) = match i % 4 {
                0 => (
                    "allow",
                    vec!["publish", "subscribe"],
                    format!("devices/${{client_id}}/t{i}/#"),
                    None,
                ),
                1 => (
                    "deny",
                    vec!["publish"],
                    format!("+/${{cert.cn}}/x{i}"),
                    None,
                ),
                2 => (
                    "allow",
                    vec!["subscribe"],
                    format!("bench/+/s{i}"),
                    Some(format!("sensor-{i}-*")),
                ),
                _ => (
                    "deny",
                    vec!["publish", "subscribe"],
                    format!("alerts/{i}/#"),
                    None,
                ),
            };
            serde_json::json!({
                "id": format!("p{i}"), "priority": i, "effect": effect, "actions": actions,
                "topics": [topic], "client_ids": clients.map(|c| vec![c]),
            })
        })
        .collect();
    out.push(serde_json::json!({
        "id": "bench", "priority": n, "effect": "allow",
        "actions": ["publish", "subscribe"], "topics": ["bench/#"],
    }));
    out
}

/// Stops certmq, writes [`bench_policies`] into its store, starts it again.
fn import_policies(mut r: Running, n: usize) -> anyhow::Result<Running> {
    use certmq_access::store::{AccessStore, PolicyRecord};
    stop(&mut r.child);
    let store = certmq_store::SqliteStore::open(&r._dir.0.join("data"))?;
    for p in bench_policies(n) {
        let id = p["id"].as_str().unwrap_or_default().to_string();
        let rec = PolicyRecord {
            id: id.clone(),
            seq: 0,
            document: p.to_string(),
            created_at: 0,
            updated_at: 0,
        };
        let audit = certmq_registry::store::AuditEntry {
            actor: "certmq-bench".into(),
            action: "policy.add".into(),
            target: id,
            before: None,
            after: None,
        };
        store.insert_policy(&rec, &audit)?;
    }
    drop(store);
    eprintln!("wrote {n} authorization policies");
    restart_in_place(r)
}

/// Stops certmq, writes users `{prefix}-0` .. `{prefix}-{n-1}` with
/// `password` (one argon2id hash, with certmq's default parameters, shared
/// by all: checking it costs the same) into its store, starts it again.
fn import_users(mut r: Running, prefix: &str, password: &str, n: usize) -> anyhow::Result<Running> {
    use certmq_access::store::{AccessStore, UserRecord};
    anyhow::ensure!(n <= 100_000, "--users: at most 100000");
    let hash = certmq_access::hash_password(password, Default::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    stop(&mut r.child);
    let store = certmq_store::SqliteStore::open(&r._dir.0.join("data"))?;
    for k in 0..n {
        let rec = UserRecord {
            username: format!("{prefix}-{k}"),
            password_hash: hash.clone(),
            created_at: 0,
            updated_at: 0,
        };
        let audit = certmq_registry::store::AuditEntry {
            actor: "certmq-bench".into(),
            action: "user.add".into(),
            target: rec.username.clone(),
            before: None,
            after: None,
        };
        store.insert_user(&rec, &audit)?;
    }
    drop(store);
    eprintln!("wrote {n} users");
    restart_in_place(r)
}

/// Registers the minted CA with certmq (proof of possession through the
/// admin API), so its client certificates pass mutual TLS.
fn register_bench_ca(r: &Running, admin: SocketAddr, files: &TlsFiles) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(r._dir.0.join("data/admin.token"))?;
    register_ca_at(admin, token.trim(), files)
}

/// Registers the minted CA through the admin API at `admin`.
pub(crate) fn register_ca_at(
    admin: SocketAddr,
    token: &str,
    files: &TlsFiles,
) -> anyhow::Result<String> {
    let auth = format!("Bearer {token}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("http://{admin}/api/v1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        match agent
            .post(&format!("{base}/ca-certificates/registration-code"))
            .header("authorization", &auth)
            .send_empty()
        {
            Ok(mut resp) if resp.status().is_success() => {
                let v: serde_json::Value =
                    serde_json::from_str(&resp.body_mut().read_to_string()?)?;
                break v["registration_code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => bail!(
                "certmq's admin API did not answer: {:?}",
                other.map(|r| r.status())
            ),
        }
    };
    let body = serde_json::json!({
        "ca_certificate": std::fs::read_to_string(&files.ca)?,
        "verification_certificate": crate::tls::verification_cert(files, &code)?,
    });
    let mut resp = agent
        .post(&format!("{base}/ca-certificates"))
        .header("authorization", &auth)
        .content_type("application/json")
        .send(body.to_string())?;
    let text = resp.body_mut().read_to_string()?;
    if !resp.status().is_success() {
        bail!("CA registration refused: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

fn rumqttd_config(addr: SocketAddr) -> String {
    format!(
        "id = 0\n\n[router]\nid = 0\nmax_connections = 20000\nmax_outgoing_packet_count = 1024\n\
         max_segment_size = 104857600\nmax_segment_count = 10\n\n\
         [v4.1]\nname = \"v4-1\"\nlisten = \"{addr}\"\nnext_connection_delay_ms = 0\n\
         [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 1048576\n\
         max_inflight_count = 1024\ndynamic_filters = true\n"
    )
}

pub async fn run(mut args: CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=20).contains(&args.rounds), "--rounds must be 1..=20");
    // TLS runs: certificates are minted once for the whole comparison.
    let _certs_dir;
    let tls_files = match args.load.tls {
        TlsMode::None => None,
        _ => {
            let dir = scratch("certs")?;
            let files = crate::tls::mint(&dir.0)?;
            args.load.ca = Some(files.ca.clone());
            args.load.cert = files.client_cert.clone();
            args.load.key = files.client_key.clone();
            _certs_dir = dir;
            Some(files)
        }
    };
    let mut results: Vec<(BrokerKind, Vec<Report>)> = args
        .brokers
        .brokers
        .iter()
        .map(|b| (*b, Vec::new()))
        .collect();
    for round in 1..=args.rounds {
        for (kind, reports) in results.iter_mut() {
            let mut load = args.load.clone();
            if *kind == BrokerKind::Rumqttd {
                // rumqttd's v4 listener serves MQTT 3.1.1.
                load.mqtt = 3;
            }
            let mut running = start(*kind, &args.bins, args.load.tls, tls_files.as_ref())?;
            if kind.is_certmq() && args.registered_devices > 0 {
                running = import_devices(running, args.registered_devices)?;
            }
            if *kind == BrokerKind::CertmqPolicies {
                running = import_policies(running, args.policies)?;
            }
            if let (true, Some(prefix), Some(pw)) =
                (kind.is_certmq(), &args.load.username, &args.load.password)
            {
                running = import_users(running, prefix, pw, args.load.users.max(1))?;
            }
            if kind.is_certmq() && args.load.tls != TlsMode::None {
                load.ca = Some(running.certmq_ca());
            }
            let opts = load.options(running.addr, Some(running.child.id()))?;
            let opts = scenario::Options {
                progress: false,
                ..opts
            };
            eprintln!("round {round}/{}: {} ...", args.rounds, kind.label());
            let report = scenario::run(load.scenario, opts).await;
            drop(running);
            let report = report.with_context(|| format!("{} round {round}", kind.label()))?;
            if let Some(path) = &args.out {
                append_json(path, *kind, round, &report)?;
            }
            reports.push(report);
        }
    }
    let summary = summarize(&results);
    if args.load.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn append_json(path: &Path, kind: BrokerKind, round: usize, report: &Report) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let line = serde_json::json!({ "broker": kind, "round": round, "report": report });
    writeln!(f, "{line}")?;
    Ok(())
}

#[derive(serde::Serialize)]
pub struct BrokerSummary {
    broker: BrokerKind,
    label: &'static str,
    runs: usize,
    units_per_s: f64,
    broker_cpu_us_per_unit: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    bytes_per_connection: Option<f64>,
    errors: u64,
    /// Deliveries lost over all runs (where the scenario counts them).
    lost: Option<u64>,
    /// Median peak RSS growth during a run.
    rss_growth_bytes: Option<f64>,
}

#[derive(serde::Serialize)]
pub struct Summary {
    scenario: scenario::Scenario,
    unit: &'static str,
    brokers: Vec<BrokerSummary>,
    /// certmq / mosquitto (nodelay) for each figure.
    ratios: Option<Ratios>,
}

#[derive(serde::Serialize)]
pub struct Ratios {
    rate: f64,
    cpu_per_unit: Option<f64>,
    p99: Option<f64>,
    bytes_per_connection: Option<f64>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn summarize(results: &[(BrokerKind, Vec<Report>)]) -> Summary {
    let brokers: Vec<BrokerSummary> = results
        .iter()
        .map(|(kind, reports)| BrokerSummary {
            broker: *kind,
            label: kind.label(),
            runs: reports.len(),
            units_per_s: median(reports.iter().map(|r| r.units_per_s).collect()).unwrap_or(0.0),
            broker_cpu_us_per_unit: median(
                reports
                    .iter()
                    .filter_map(|r| r.broker_cpu_us_per_unit)
                    .collect(),
            ),
            p50_us: median(
                reports
                    .iter()
                    .filter_map(|r| r.latency.as_ref().map(|l| l.p50_us))
                    .collect(),
            ),
            p99_us: median(
                reports
                    .iter()
                    .filter_map(|r| r.latency.as_ref().map(|l| l.p99_us))
                    .collect(),
            ),
            p999_us: median(
                reports
                    .iter()
                    .filter_map(|r| r.latency.as_ref().map(|l| l.p999_us))
                    .collect(),
            ),
            bytes_per_connection: median(
                reports
                    .iter()
                    .filter_map(|r| r.broker_bytes_per_connection)
                    .collect(),
            ),
            errors: reports.iter().map(|r| r.errors).sum(),
            lost: reports
                .iter()
                .map(|r| r.lost)
                .try_fold(0u64, |a, l| l.map(|l| a + l)),
            rss_growth_bytes: median(
                reports
                    .iter()
                    .filter_map(|r| r.broker_rss_growth_bytes.map(|b| b as f64))
                    .collect(),
            ),
        })
        .collect();
    let find = |k| brokers.iter().find(|b| b.broker == k);
    let ratios = match (find(BrokerKind::Certmq), find(BrokerKind::Mosquitto)) {
        (Some(c), Some(m)) => {
            let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            Some(Ratios {
                rate: if m.units_per_s > 0.0 {
                    c.units_per_s / m.units_per_s
                } else {
                    f64::NAN
                },
                cpu_per_unit: div(c.broker_cpu_us_per_unit, m.broker_cpu_us_per_unit),
                p99: div(c.p99_us, m.p99_us),
                bytes_per_connection: div(c.bytes_per_connection, m.bytes_per_connection),
            })
        }
        _ => None,
    };
    let first = results.iter().flat_map(|(_, r)| r.first()).next();
    Summary {
        scenario: first.map(|r| r.scenario).unwrap_or(scenario::Scenario::P2p),
        unit: first.map(|r| r.unit).unwrap_or("delivery"),
        brokers,
        ratios,
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_summary(s: &Summary) {
    println!("scenario {:?}, unit = {} (medians)", s.scenario, s.unit);
    println!(
        "{:<28} {:>12} {:>14} {:>10} {:>10} {:>10} {:>12} {:>6} {:>9} {:>11}",
        "broker",
        "units/s",
        "cpu µs/unit",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "bytes/conn",
        "errors",
        "lost",
        "rss+ MiB"
    );
    for b in &s.brokers {
        println!(
            "{:<28} {:>12.0} {:>14} {:>10} {:>10} {:>10} {:>12} {:>6} {:>9} {:>11}",
            b.label,
            b.units_per_s,
            fmt_opt(b.broker_cpu_us_per_unit, 2),
            fmt_opt(b.p50_us, 0),
            fmt_opt(b.p99_us, 0),
            fmt_opt(b.p999_us, 0),
            fmt_opt(b.bytes_per_connection, 0),
            b.errors,
            b.lost.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            fmt_opt(b.rss_growth_bytes.map(|b| b / 1048576.0), 1),
        );
    }
    if let Some(r) = &s.ratios {
        println!(
            "certmq / mosquitto (nodelay): rate {:.2}x, cpu per unit {}x, p99 {}x, bytes per connection {}x",
            r.rate,
            fmt_opt(r.cpu_per_unit, 2),
            fmt_opt(r.p99, 2),
            fmt_opt(r.bytes_per_connection, 2)
        );
    }
    // The cost of persistence, against certmq with it off in the same run.
    if let Some(off) = s.brokers.iter().find(|b| b.broker == BrokerKind::CertmqOff) {
        for b in s
            .brokers
            .iter()
            .filter(|b| b.broker != BrokerKind::CertmqOff)
        {
            let p99 = match (b.p99_us, off.p99_us) {
                (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
                _ => "-".into(),
            };
            println!(
                "{} / certmq (persistence off): rate {:.2}x, p99 {p99}x",
                b.label,
                if off.units_per_s > 0.0 {
                    b.units_per_s / off.units_per_s
                } else {
                    f64::NAN
                },
            );
        }
    }
}

pub fn print_report(r: &Report) {
    println!(
        "scenario {:?} qos {} mqtt {} connections {} payload {}",
        r.scenario, r.qos, r.protocol, r.connections, r.payload
    );
    println!(
        "  window {:.2} s, sent {}, {} {}s ({:.0}/s), errors {}",
        r.window_s, r.sent, r.units, r.unit, r.units_per_s, r.errors
    );
    if let Some(l) = &r.latency {
        println!(
            "  latency p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
            l.p50_us, l.p99_us, l.p999_us, l.max_us
        );
    }
    if let Some(c) = r.broker_cpu_us_per_unit {
        println!("  broker CPU {:.2} µs per {}", c, r.unit);
    }
    if let Some(l) = r.lost {
        println!("  lost {l} deliveries over the whole run");
    }
    if let Some(g) = r.broker_rss_growth_bytes {
        println!(
            "  broker RSS grew by {:.1} MiB at most",
            g as f64 / 1048576.0
        );
    }
    if let Some(b) = r.broker_bytes_per_connection {
        println!("  broker memory {b:.0} bytes per connection");
    }
}
