//! certmq's network side: listeners (MQTT over TCP, TLS, WebSocket and
//! WebSocket over TLS), one task
//! per connection driving a core [`certmq_core::Conn`], the housekeeping
//! task that runs the broker's timers, and the one shutdown path.
//!
//! What it does not do: parse configuration files, install signal handlers
//! or set up logging (the `certmq` binary does), or decide broker semantics
//! (`certmq-core` does).
//!
//! Shutdown: [`Server::run`] returns when its shutdown future completes;
//! listeners stop accepting, every connection is told (MQTT 5 DISCONNECT
//! 0x8B) and closed, and the server waits up to the grace period for them.

#![forbid(unsafe_code)]

mod authn;
pub mod clock;
mod config;
mod driver;
mod listener;
mod live;
mod logstr;
mod transport;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use certmq_core::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use authn::{looks_like_jwt, AuthMethod, Authenticator, CredentialCheck, PasswordCheck};
pub use config::{ClientAuth, ListenerConfig, NetConfig, Protocol};
pub use driver::PeerInfo;
pub use live::{CertIds, ConnInfo, Live, RejectionRecord, RejectionSource, REJECTIONS_KEPT};
pub use logstr::{bounded, LogStr};

pub use certmq_pki::ConnectAuthorizer;

/// The single-node [`certmq_core::Control`]: this node's live connections
/// (from [`Live`]) and kicks through the broker's session mailboxes.
pub struct LocalControl {
    pub broker: Arc<Broker>,
    pub live: Arc<Live>,
}

impl certmq_core::Control for LocalControl {
    fn connections(&self) -> Vec<certmq_core::LiveConnection> {
        self.live
            .connections()
            .into_iter()
            .map(|c| certmq_core::LiveConnection {
                certificate_id: c.certificate.as_ref().map(|i| i.certificate_id.clone()),
                ca_id: c.certificate.as_ref().map(|i| i.ca_id.clone()),
                client_id: c.client_id,
                listener: c.protocol.name(),
                peer: c.peer,
                connected_at: c.connected_at,
                username: c.username,
            })
            .collect()
    }

    fn kick(&self, client_id: &str, reason: certmq_codec::ReasonCode) -> bool {
        self.broker.kick(client_id, reason)
    }

    fn refusals(&self, limit: usize) -> Vec<certmq_core::Refusal> {
        self.live
            .rejections()
            .into_iter()
            .take(limit)
            .map(|r| certmq_core::Refusal {
                at: r.at,
                reason: r.reason,
                listener: r.protocol.name(),
                peer: r.peer,
                client_id: r.client_id,
                certificate_id: r.certificate_id,
                ca_id: r.ca_id,
                username: r.username,
            })
            .collect()
    }

    fn refusal_counts(&self) -> Vec<(&'static str, u64)> {
        self.live.rejection_counts()
    }

    fn refusal_sources(&self, limit: usize) -> Vec<certmq_core::RefusalSource> {
        self.live
            .rejection_sources(limit)
            .into_iter()
            .map(|r| certmq_core::RefusalSource {
                reason: r.reason,
                source: r.source,
                count: r.count,
            })
            .collect()
    }

    fn traffic(&self) -> certmq_core::Traffic {
        use std::sync::atomic::Ordering::Relaxed;
        let l = &self.live;
        certmq_core::Traffic {
            bytes_in: l.bytes_in.load(Relaxed),
            bytes_out: l.bytes_out.load(Relaxed),
            packets_in: l.packets_in.load(Relaxed),
            packets_out: l.packets_out.load(Relaxed),
            open: l
                .open_by_protocol()
                .into_iter()
                .map(|(p, n)| (p.name(), n))
                .collect(),
            tls_failures: l.tls_failures(),
        }
    }
}
pub use transport::{StreamTransport, TcpTransport, Transport, WsTransport};

/// What TLS listeners need: the SNI resolver shared by all of them (its
/// snapshot is swapped on every server-certificate change) and the
/// crypto provider.
#[derive(Clone)]
pub struct TlsContext {
    pub resolver: Arc<certmq_pki::SniResolver>,
    pub provider: Arc<rustls::crypto::CryptoProvider>,
    /// The registry snapshot client certificates are verified against.
    pub registry: certmq_pki::SharedRegistry,
    /// The CONNECT-time decision for clients with a certificate.
    pub authorizer: Arc<dyn ConnectAuthorizer>,
}

impl TlsContext {
    fn server_config(&self, auth: ClientAuth) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Required => {
                builder.with_client_cert_verifier(Arc::new(certmq_pki::RegistryVerifier::new(
                    auth == ClientAuth::Required,
                    self.provider.clone(),
                    self.registry.clone(),
                )))
            }
        };
        let mut config = builder.with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = Vec::new();
        // The provider's suite order (cheapest hash first) decides.
        config.ignore_client_order = true;
        // One resumption ticket per handshake: MQTT clients hold one
        // connection and resume it once; rustls's default of two doubles
        // the ticket work of every full handshake.
        config.send_tls13_tickets = 1;
        Ok(Arc::new(config))
    }
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub broker: Arc<Broker>,
    pub authorizer: Option<Arc<dyn ConnectAuthorizer>>,
    pub config: NetConfig,
    pub connections: AtomicUsize,
    pub live: Arc<Live>,
    pub sync_acks: std::sync::OnceLock<SyncAcks>,
    /// Password and token checks (`certmq-access`); none: only
    /// certificates and anonymous clients get in.
    pub authenticator: std::sync::OnceLock<Arc<dyn Authenticator>>,
    /// Each listener's authentication chain, swapped by [`AuthChains`]
    /// (SIGHUP): read at every accept.
    pub chains: AuthChains,
    /// A cluster's session hand-over, before CONNECT is accepted.
    pub claims: std::sync::OnceLock<Arc<dyn SessionClaims>>,
}

/// Brings a client's kept session to this node before its CONNECT is
/// accepted (a cluster, SPEC 13: the node that has it hands it over, or it
/// is read from the shared store when that node is gone). Bounded in time
/// by the implementation; the connection proceeds whatever it finds.
pub trait SessionClaims: Send + Sync + 'static {
    fn claim<'a>(
        &'a self,
        client_id: &'a str,
        clean_start: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// The authentication chain of every listener, changeable while the
/// server runs (new connections use the new chain).
#[derive(Clone, Default)]
pub struct AuthChains(
    Arc<parking_lot::RwLock<std::collections::HashMap<Protocol, Arc<[AuthMethod]>>>>,
);

impl AuthChains {
    pub fn set(&self, protocol: Protocol, methods: Vec<AuthMethod>) {
        self.0.write().insert(protocol, methods.into());
    }

    pub fn get(&self, protocol: Protocol) -> Arc<[AuthMethod]> {
        self.0
            .read()
            .get(&protocol)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }
}

/// `sync` persistence: acknowledgements (PUBACK, PUBREC, SUBACK, UNSUBACK)
/// go out only once the changes they acknowledge are on disk. A failed
/// write turns them into "unspecified error" (MQTT 5) or closes the
/// connection (MQTT 3, which has no negative PUBACK).
#[derive(Clone)]
pub struct SyncAcks {
    pub persist: Arc<dyn certmq_core::Persist>,
    pub durability: Arc<certmq_core::Durability>,
}

/// A bound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundListener {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({protocol})")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("the {0} listener needs TLS set up (server certificates)")]
    NoTls(&'static str),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<(
        ListenerConfig,
        TcpListener,
        Option<Arc<rustls::ServerConfig>>,
    )>,
}

impl Server {
    /// Binds every listener, so that the real addresses (port 0) are known
    /// before [`Server::run`].
    pub async fn bind(
        broker: Arc<Broker>,
        config: NetConfig,
        tls: Option<TlsContext>,
    ) -> Result<Self, ServerError> {
        Self::bind_with(broker, config, tls, Arc::new(Live::default())).await
    }

    /// As [`Server::bind`], reporting into `live` (made first when other
    /// parts, like the device registry, need it before the server exists).
    pub async fn bind_with(
        broker: Arc<Broker>,
        config: NetConfig,
        tls: Option<TlsContext>,
        live: Arc<Live>,
    ) -> Result<Self, ServerError> {
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let tls_config = if l.protocol.is_tls() {
                let ctx = tls.as_ref().ok_or(ServerError::NoTls(l.protocol.name()))?;
                Some(ctx.server_config(l.client_auth)?)
            } else {
                None
            };
            let socket = TcpListener::bind(l.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    protocol: l.protocol.name(),
                    addr: l.addr,
                    source,
                })?;
            listeners.push((l.clone(), socket, tls_config));
        }
        let chains = AuthChains::default();
        for l in &config.listeners {
            chains.set(l.protocol, l.methods());
        }
        Ok(Self {
            shared: Arc::new(Shared {
                chains,
                authorizer: tls.as_ref().map(|t| t.authorizer.clone()),
                broker,
                config,
                connections: AtomicUsize::new(0),
                live,
                sync_acks: std::sync::OnceLock::new(),
                authenticator: std::sync::OnceLock::new(),
                claims: std::sync::OnceLock::new(),
            }),
            listeners,
        })
    }

    /// Makes acknowledgements wait for durability (`sync` persistence).
    /// Call before [`Server::run`]; false if already set.
    pub fn set_sync_acks(&self, acks: SyncAcks) -> bool {
        self.shared.sync_acks.set(acks).is_ok()
    }

    /// Installs the password and token checks. Call before
    /// [`Server::run`]; false if already set.
    pub fn set_authenticator(&self, a: Arc<dyn Authenticator>) -> bool {
        self.shared.authenticator.set(a).is_ok()
    }

    /// Installs a cluster's session hand-over. Call before [`Server::run`];
    /// false if already set.
    pub fn set_session_claims(&self, c: Arc<dyn SessionClaims>) -> bool {
        self.shared.claims.set(c).is_ok()
    }

    /// The listeners' authentication chains, to change them while the
    /// server runs.
    pub fn auth_chains(&self) -> AuthChains {
        self.shared.chains.clone()
    }

    pub fn local_addrs(&self) -> Vec<BoundListener> {
        self.listeners
            .iter()
            .filter_map(|(c, l, _)| {
                Some(BoundListener {
                    protocol: c.protocol,
                    addr: l.local_addr().ok()?,
                })
            })
            .collect()
    }

    /// Live connections and counters, for the admin API and metrics.
    pub fn live(&self) -> Arc<Live> {
        self.shared.live.clone()
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.shared.broker
    }

    /// Serves until `shutdown` completes, then drains every connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        for (config, socket, tls) in self.listeners {
            let shared = self.shared.clone();
            tokio::spawn(listener::accept_loop(
                socket,
                config,
                tls,
                shared,
                stop_rx.clone(),
            ));
        }
        let housekeeping = tokio::spawn(housekeeping(
            self.shared.broker.clone(),
            self.shared.live.clone(),
            stop_rx.clone(),
        ));
        shutdown.await;
        tracing::info!("shutting down: closing connections");
        let _ = stop_tx.send(true);
        let kicked = self
            .shared
            .broker
            .kick_all(certmq_codec::ReasonCode::SERVER_SHUTTING_DOWN);
        tracing::debug!(kicked, "connections told to close");
        let grace = self.shared.config.shutdown_grace;
        // Each connection task holds a guard counted in `connections`
        // (a counter, not a channel sender per task: idle tasks stay small).
        let deadline = tokio::time::Instant::now() + grace;
        while self
            .shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(?grace, "connections still open after the grace period");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        housekeeping.abort();
    }
}

/// How often the keep-alive sweep runs at least.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Runs the broker's timers (keep-alive sweep, delayed wills, session
/// expiry) when they fall due, closes connections whose client
/// certificate expired (MQTT 5: DISCONNECT 0x98 "client certificate
/// expired"), and, while publishers wait on full queues, checks those
/// queues every [`certmq_core::CONGESTION_CHECK`].
async fn housekeeping(broker: Arc<Broker>, live: Arc<Live>, mut stop: watch::Receiver<bool>) {
    loop {
        let now = tokio::time::Instant::now();
        let tick_at = broker
            .next_deadline()
            .map(clock::wake_at)
            .unwrap_or(now + SWEEP_INTERVAL)
            .min(now + SWEEP_INTERVAL);
        let next = if broker.is_congested() {
            tick_at.min(now + certmq_core::CONGESTION_CHECK)
        } else {
            tick_at
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(next) => {
                broker.check_congestion(clock::now());
                if tokio::time::Instant::now() < tick_at {
                    continue;
                }
                broker.tick(clock::now());
                let now = live::now_unix();
                for c in live.take_expired(now) {
                    let what = if c.token_expires_at.is_some_and(|t| t <= now) {
                        "token expired"
                    } else {
                        "client certificate expired"
                    };
                    tracing::info!(client_id = %LogStr(&c.client_id), "{what}: closing");
                    broker.kick_with_text(
                        &c.client_id,
                        certmq_codec::ReasonCode::ADMINISTRATIVE_ACTION,
                        Some(what),
                    );
                }
            }
        }
    }
}
