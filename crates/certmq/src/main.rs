//! The `certmq` binary: the broker (`certmq serve`) and its tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod client;
mod cluster;
mod config;
mod lifecycle;
mod lock;
mod reload;
mod tls;

use config::{ClientAuthSetting, Config, ListenAddr};

#[derive(Parser)]
#[command(
    name = "certmq",
    version,
    about = "An MQTT broker with first-class X.509 certificate management"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: client::Global,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker node.
    Serve(Box<ServeArgs>),
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration (TOML).
    Default,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Configuration file (TOML); see `certmq config default`.
    #[arg(long, env = "CERTMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the node's state (default ./data).
    #[arg(long, env = "CERTMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// MQTT over TCP listener address, or `off` (default 127.0.0.1:1883).
    #[arg(long, env = "CERTMQ_LISTEN_TCP", value_name = "ADDR")]
    listen_tcp: Option<ListenAddr>,
    /// MQTT over TLS listener address, or `off` (default 0.0.0.0:8883).
    #[arg(long, env = "CERTMQ_LISTEN_TLS", value_name = "ADDR")]
    listen_tls: Option<ListenAddr>,
    /// MQTT over WebSocket listener address, or `off` (default 127.0.0.1:8083).
    #[arg(long, env = "CERTMQ_LISTEN_WS", value_name = "ADDR")]
    listen_ws: Option<ListenAddr>,
    /// MQTT over WebSocket-Secure listener address, or `off` (default 0.0.0.0:8084).
    #[arg(long, env = "CERTMQ_LISTEN_WSS", value_name = "ADDR")]
    listen_wss: Option<ListenAddr>,
    /// Client certificates on the TLS listener: none, optional, required (default).
    #[arg(long, env = "CERTMQ_TLS_CLIENT_AUTH", value_enum)]
    tls_client_auth: Option<ClientAuthSetting>,
    /// Client certificates on the WSS listener: none, optional, required (default).
    #[arg(long, env = "CERTMQ_WSS_CLIENT_AUTH", value_enum)]
    wss_client_auth: Option<ClientAuthSetting>,
    /// Let clients without credentials in on every listener (default: only
    /// on listeners bound to loopback); `--allow-anonymous=false` on none
    /// that does not say otherwise.
    #[arg(long, env = "CERTMQ_ALLOW_ANONYMOUS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    allow_anonymous: Option<bool>,
    /// Admin HTTP API address, or `off` (default 127.0.0.1:18083).
    #[arg(long, env = "CERTMQ_LISTEN_ADMIN", value_name = "ADDR")]
    listen_admin: Option<ListenAddr>,
    /// Admin API and console over HTTPS (the MQTT/TLS server certificates,
    /// chosen by SNI), or `off` (the default).
    #[arg(long, env = "CERTMQ_LISTEN_ADMIN_TLS", value_name = "ADDR")]
    listen_admin_tls: Option<ListenAddr>,
    /// Log filter, as RUST_LOG (default `info`; reloaded on SIGHUP from the
    /// config file when not given here).
    #[arg(long, env = "CERTMQ_LOG")]
    log: Option<String>,
    /// This node's name in a cluster.
    #[arg(long, env = "CERTMQ_NODE_ID", value_name = "NAME")]
    node_id: Option<String>,
    /// NATS URL: route publishes between the nodes of a cluster.
    #[arg(long, env = "CERTMQ_CLUSTER_NATS", value_name = "URL")]
    cluster_nats: Option<String>,
    /// PostgreSQL URL: the cluster's shared registry and state (not yet).
    #[arg(long, env = "CERTMQ_CLUSTER_POSTGRES", value_name = "URL")]
    cluster_postgres: Option<String>,
    /// What survives a restart: off, async (default: committed every
    /// flush_interval_ms) or sync (acknowledged only once on disk).
    #[arg(long, env = "CERTMQ_PERSISTENCE", value_name = "MODE", value_parser = ["off", "async", "sync"])]
    persistence: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Config {
            command: ConfigCommand::Default,
        } => Config::default_toml().map(|t| {
            let _ = std::io::Write::write_all(&mut std::io::stdout(), t.as_bytes());
        }),
        Command::Client(c) => client::run(c, &cli.global),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certmq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration in force: the file, then `CERTMQ_*` variables and
/// flags over it, validated. Read at start and again on SIGHUP.
fn resolve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(log) = &args.log {
        config.log = log.clone();
    }
    config.listeners.tcp.apply(args.listen_tcp.as_ref());
    config.listeners.tls.apply(args.listen_tls.as_ref());
    config.listeners.ws.apply(args.listen_ws.as_ref());
    config.listeners.wss.apply(args.listen_wss.as_ref());
    config
        .admin
        .apply(args.listen_admin.as_ref(), args.listen_admin_tls.as_ref());
    if let Some(a) = args.tls_client_auth {
        config.listeners.tls.client_auth = Some(a);
    }
    if let Some(a) = args.wss_client_auth {
        config.listeners.wss.client_auth = Some(a);
    }
    if let Some(v) = &args.node_id {
        config.cluster.node_id = Some(v.clone());
    }
    if let Some(v) = &args.cluster_nats {
        config.cluster.nats = Some(v.clone());
    }
    if let Some(v) = &args.cluster_postgres {
        config.cluster.postgres = Some(v.clone());
    }
    if let Some(a) = args.allow_anonymous {
        config.authentication.allow_anonymous = Some(a);
    }
    if let Some(m) = args
        .persistence
        .as_deref()
        .and_then(certmq_store::PersistenceMode::parse)
    {
        config.persistence.mode = m;
    }
    config.validate()?;
    tracing_subscriber::EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid log filter '{}'", config.log))?;
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let config = resolve_config(&args)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid log filter '{}'", config.log))?;
    let (filter, log_handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    if let Some(path) = args
        .config
        .as_deref()
        .filter(|_| !config.webhooks.is_empty())
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o077);
        if mode.is_ok_and(|m| m != 0) {
            tracing::warn!(
                file = %path.display(),
                "the configuration file holds webhook secrets and others can read it; chmod 600 it"
            );
        }
    }

    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    std::fs::set_permissions(
        &config.data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| {
        format!(
            "cannot secure the data directory {}",
            config.data_dir.display()
        )
    })?;
    // Before any state is read or written: one node per data directory.
    let _lock = lock::lock_data_dir(&config.data_dir)?;
    let default_cert = tls::load_or_mint_default(&config.data_dir, &config.tls.server_names)?;
    let token = match &config.admin.token {
        Some(t) => t.clone(),
        None => tls::load_or_create_token(&config.data_dir)?,
    };
    // The registry: the cluster's PostgreSQL, or certmq.db in the data
    // directory. The change version is read before anything is loaded, so
    // following from it misses nothing.
    let shared = match (&config.cluster.postgres, &config.cluster.node_id) {
        (Some(url), Some(node)) => {
            let pg = certmq_store::PgStore::open(url, node)
                .context("cannot open the cluster's PostgreSQL store")?;
            let version = pg
                .version()
                .context("cannot read the cluster's PostgreSQL store")?;
            // Listed before anything is restored: a node taking in the
            // sessions of gone nodes must not take this one's.
            pg.heartbeat(
                certmq_registry::now_unix(),
                &serde_json::json!({"addresses": [], "connections": 0}),
            )
            .context("cannot write to the cluster's PostgreSQL store")?;
            tracing::info!(node = %node, version, "joined the cluster's shared registry (PostgreSQL)");
            Some((pg, version))
        }
        _ => None,
    };
    let (store, access_store): (
        Arc<dyn certmq_registry::store::Store>,
        Arc<dyn certmq_access::store::AccessStore>,
    ) = match &shared {
        Some((pg, _)) => (pg.clone(), pg.clone()),
        None => {
            let sqlite = Arc::new(
                certmq_store::SqliteStore::open(&config.data_dir)
                    .context("cannot open the registry")?,
            );
            (sqlite.clone(), sqlite)
        }
    };
    let access = certmq_access::Access::load(
        access_store.clone(),
        &certmq_access::AccessConfig {
            authentication: config.authentication.clone(),
            authorization: config.authorization.clone(),
        },
    )
    .map_err(|e| anyhow::anyhow!("cannot load users and policies: {}", e.message))?;
    tracing::info!(
        id = %default_cert.info.id,
        not_after = default_cert.info.not_after,
        "default server certificate"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // A file size limit (`ulimit -f`) must fail writes (reported like a
    // full disk), not kill the broker with SIGXFSZ: a handler replaces
    // the default action for the life of the process.
    let _xfsz = runtime
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ))
        })
        .context("cannot handle SIGXFSZ")?;
    let (state, restored, id_base) = match open_state(&config, shared.as_ref().map(|(pg, _)| pg))? {
        Some((store, restored, base)) => (Some(store), Some(restored), base),
        None => (None, None, 0),
    };

    runtime.block_on(async move {
        // Handlers first: a script that reads the `listening` lines may send
        // SIGTERM at once, and must get a clean shutdown, not the default kill.
        let shutdown = shutdown_signal()?;
        let started_at = certmq_registry::now_unix();
        let broker = certmq_core::Broker::new(config.broker_config());
        // Nodes sharing a store take disjoint ranges of ids.
        broker.reserve_ids_from(id_base);
        broker.set_authorizer(access.clone());
        // The cluster bridge first: restored subscriptions are routes too.
        let bridge = match (&config.cluster.nats, &config.cluster.node_id) {
            (Some(url), Some(node)) => {
                let bridge =
                    certmq_cluster::connect(url, node, broker.clone(), certmq_net::clock::now)
                        .await?;
                broker.set_forwarder(bridge.clone());
                tracing::info!(node = %node, "joined the cluster's NATS routing");
                Some(bridge)
            }
            _ => None,
        };
        {
            // A policy change reaches live subscriptions before the API answers.
            let broker = broker.clone();
            access.on_policy_change(move || {
                let r = broker.reauthorize();
                tracing::info!(
                    sessions = r.sessions,
                    removed = r.removed,
                    rechecked = r.rechecked,
                    "policies applied to live sessions"
                );
            });
        }
        // Kept state is back before any listener accepts.
        if let (Some(store), Some(restored)) = (&state, restored) {
            broker.set_persist(store.clone());
            let r = broker.restore(restored, certmq_net::clock::now());
            tracing::info!(
                retained = r.retained,
                sessions = r.sessions,
                subscriptions = r.subscriptions,
                queued = r.queued,
                inflight = r.inflight,
                wills_published = r.wills_published,
                wills_pending = r.wills_pending,
                expired = r.sessions_expired,
                skipped = r.skipped,
                "broker state restored"
            );
        }

        let resolver = Arc::new(certmq_pki::SniResolver::new(Default::default()));
        let server_certs = certmq_admin::ServerCerts::load(
            store.clone(),
            resolver.clone(),
            default_cert.info.clone(),
            default_cert.certified.clone(),
        )
        .map_err(|e| anyhow::anyhow!("cannot load server certificates: {}", e.message))?;
        let live = Arc::new(certmq_net::Live::default());
        let live_events = live.clone();
        // This node's connections, as the registry and the admin API see them.
        let control: Arc<dyn certmq_core::Control> = Arc::new(certmq_net::LocalControl {
            broker: broker.clone(),
            live: live.clone(),
        });
        let registry: certmq_pki::SharedRegistry = Default::default();
        let devices = certmq_admin::Devices::load(
            store.clone(),
            registry.clone(),
            control.clone(),
            config.registry.clone(),
        )
        .map_err(|e| anyhow::anyhow!("cannot load the device registry: {}", e.message))?;
        devices
            .set_crl_stale(config.crl.stale)
            .map_err(|e| anyhow::anyhow!("cannot load the device registry: {}", e.message))?;
        server_certs.set_server_names(config.tls.server_names.clone());
        // Lifecycle events (SPEC 14): `$SYS/certmq/events/<kind>` and webhooks.
        let node_name = config
            .cluster
            .node_id
            .clone()
            .unwrap_or_else(|| "local".to_string());
        let hub = lifecycle::Hub::start(broker.clone(), node_name.clone(), &config.webhooks)?;
        let alarm_events = certmq_core::Events::default();
        for e in [devices.events(), server_certs.events(), live_events.events(), &alarm_events] {
            e.install(hub.clone());
        }
        let alarms = Arc::new(certmq_registry::Alarms::new(alarm_events));
        for w in &config.webhooks {
            tracing::info!(url = %lifecycle::shown_url(&w.url), events = %w.events.join(","), "webhook");
        }
        let provider = certmq_pki::provider();
        // The admin listener over HTTPS: the same certificates and SNI as
        // MQTT/TLS, no client certificates.
        let admin_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS configuration of the admin listener")?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        let admin_tls = Arc::new(admin_tls);
        let tls = certmq_net::TlsContext {
            resolver,
            provider,
            registry,
            authorizer: devices.clone(),
        };
        let server =
            certmq_net::Server::bind_with(broker.clone(), config.net_config(), Some(tls), live)
                .await?;
        server.set_authenticator(access.clone());
        if let (Some((pg, _)), Some(b)) = (&shared, &bridge) {
            if state.is_some() {
                server.set_session_claims(Arc::new(certmq_cluster::Claims {
                    broker: broker.clone(),
                    store: pg.clone(),
                    bridge: b.clone(),
                    node: config.cluster.node_id.clone().unwrap_or_default(),
                    now: certmq_net::clock::now,
                }));
            }
        }
        reload::spawn(
            args.clone(),
            config.clone(),
            reload::Live {
                broker: broker.clone(),
                log: log_handle,
                access: access.clone(),
                chains: server.auth_chains(),
                devices: devices.clone(),
            },
        )?;
        for l in config.net_config().listeners {
            let methods: Vec<&str> = l.methods().iter().map(|m| m.as_str()).collect();
            tracing::info!(listener = l.protocol.name(), methods = %methods.join(","), "authentication");
        }
        let admin_listener = if config.admin.enabled {
            let l = tokio::net::TcpListener::bind(config.admin.addr)
                .await
                .with_context(|| format!("cannot listen on {} (admin-http)", config.admin.addr))?;
            Some(l)
        } else {
            None
        };
        let admin_tls_listener = if config.admin.tls_enabled {
            let l = tokio::net::TcpListener::bind(config.admin.tls_addr)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (admin-https)", config.admin.tls_addr)
                })?;
            Some(l)
        } else {
            None
        };
        if let Some(store) = &state {
            if store.mode() == certmq_store::PersistenceMode::Sync {
                server.set_sync_acks(certmq_net::SyncAcks {
                    persist: store.clone(),
                    durability: store.durability(),
                });
            }
        }
        let console_users = certmq_access::ConsoleUsers::load(
            access_store,
            config.authentication.password_hash,
        )
        .map_err(|e| anyhow::anyhow!("cannot load console users: {}", e.message))?;
        // Changes other nodes make reach this node's snapshots and
        // connections.
        let follow_stats = match &shared {
            Some((pg, version)) => Some(
                certmq_cluster::follow(
                    pg,
                    *version,
                    certmq_cluster::Targets {
                        store: store.clone(),
                        devices: devices.clone(),
                        server_certs: server_certs.clone(),
                        access: access.clone(),
                        console_users: console_users.clone(),
                        control: control.clone(),
                        now: certmq_registry::now_unix,
                    },
                )
                .context("cannot follow the shared registry")?,
            ),
            None => None,
        };
        for l in server.local_addrs() {
            tracing::info!("listening protocol={} addr={}", l.protocol.name(), l.addr);
        }
        // One shutdown signal, fanned out to the broker and the admin API.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let admin_limits = config.admin.limits();
        let mut listeners: Vec<(String, String)> = server
            .local_addrs()
            .iter()
            .map(|l| (l.protocol.name().to_string(), l.addr.to_string()))
            .collect();
        for (name, l) in [("admin-http", &admin_listener), ("admin-https", &admin_tls_listener)] {
            if let Some(addr) = l.as_ref().and_then(|l| l.local_addr().ok()) {
                tracing::info!("listening protocol={name} addr={addr}");
                listeners.push((name.to_string(), addr.to_string()));
            }
        }
        let listeners = Arc::new(listeners);
        let admin_state = certmq_admin::AdminState {
            token: token.into(),
            server_certs,
            broker,
            control,
            devices,
            access,
            console: certmq_admin::console::Console::new(console_users),
            listeners: listeners.clone(),
            node_id: config
                .cluster
                .node_id
                .clone()
                .unwrap_or_else(|| "local".to_string())
                .into(),
            started_at,
            cluster: Arc::new(cluster::Cluster {
                node_id: config.cluster.node_id.clone().unwrap_or_default(),
                pg: shared.as_ref().map(|(pg, _)| pg.clone()),
                follow: follow_stats,
                bridge: bridge.clone(),
            }),
            alarms: alarms.clone(),
            extra_metrics: vec![{
                let hub = hub.clone();
                Arc::new(move || lifecycle::webhook_metrics(&hub))
            }],
        };
        tokio::spawn(lifecycle::alarm_task(
            lifecycle::AlarmSources {
                alarms: alarms.clone(),
                config: config.alarms.clone(),
                devices: admin_state.devices.clone(),
                server_certs: admin_state.server_certs.clone(),
                persist: admin_state.broker.persist().cloned(),
                cluster: admin_state.cluster.clone(),
                expiring_leader: shared.as_ref().map(|(pg, _)| {
                    let (pg, me) = (pg.clone(), node_name.clone());
                    Arc::new(move || certmq_cluster::adopt::is_first_up(&pg, &me).unwrap_or(false))
                        as Arc<dyn Fn() -> bool + Send + Sync>
                }),
            },
            std::time::Duration::from_secs(2),
        ));
        tokio::spawn(lifecycle::crl_fetch_task(
            admin_state.devices.clone(),
            alarms,
            std::time::Duration::from_secs(config.crl.refresh_interval_secs),
        ));
        if let Some(b) = &bridge {
            // Other nodes list and close this node's connections.
            b.serve_control(admin_state.control.clone()).await?;
        }
        if let (Some((pg, _)), Some(_)) = (&shared, &state) {
            tokio::spawn(certmq_cluster::adopt::adopt_orphans(
                admin_state.broker.clone(),
                pg.clone(),
                config.cluster.node_id.clone().unwrap_or_default(),
                certmq_net::clock::now,
                std::time::Duration::from_secs(5),
            ));
        }
        if let Some((pg, _)) = &shared {
            tokio::spawn(cluster::heartbeat(
                pg.clone(),
                started_at,
                listeners,
                admin_state.control.clone(),
            ));
        }
        tokio::spawn(certmq_admin::sample_history(admin_state.clone()));
        let mut admin = Vec::new();
        for (l, tls) in [(admin_listener, None), (admin_tls_listener, Some(admin_tls))] {
            if let Some(l) = l {
                let stop = stopped(stop_rx.clone());
                admin.push(tokio::spawn(certmq_admin::serve(
                    l,
                    admin_state.clone(),
                    admin_limits,
                    tls,
                    stop,
                )));
            }
        }
        server.run(stopped(stop_rx)).await;
        for a in admin {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), a).await;
        }
        if let Some((pg, _)) = shared {
            // Left on purpose: no longer listed (a node that died is listed
            // as down).
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = pg.leave() {
                    tracing::warn!(error = %e, "could not leave the cluster's node list");
                }
            })
            .await;
        }
        if let Some(store) = state {
            // Every connection closed: what they changed is written last.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGXFSZ on Linux (x86-64, aarch64).
const SIGXFSZ: i32 = 25;

/// Opens and reads `<data>/state.db` unless persistence is off.
#[allow(clippy::type_complexity)]
fn open_state(
    config: &Config,
    shared: Option<&Arc<certmq_store::PgStore>>,
) -> anyhow::Result<Option<(Arc<certmq_store::StateStore>, certmq_core::Restored, u64)>> {
    let p = &config.persistence;
    if p.mode == certmq_store::PersistenceMode::Off {
        tracing::info!("persistence off: retained messages and sessions live in memory only");
        return Ok(None);
    }
    // A cluster's state is in its PostgreSQL: sessions move between nodes.
    let (store, restored, report, base) = match shared {
        Some(pg) => pg.open_state(p)?,
        None => {
            let (store, restored, report) = certmq_store::StateStore::open(&config.data_dir, p)?;
            (store, restored, report, 0)
        }
    };
    if report.dropped > 0 {
        tracing::warn!(
            records = report.dropped,
            "broker state: damaged or orphaned records left out; the rest was recovered"
        );
    }
    tracing::info!(
        mode = p.mode.as_str(),
        flush_interval_ms = p.flush_interval_ms,
        load_ms = report.elapsed.as_millis() as u64,
        shared = shared.is_some(),
        "broker state opened"
    );
    Ok(Some((store, restored, base)))
}

/// Registers the SIGINT and SIGTERM handlers now and returns a future that
/// completes on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
