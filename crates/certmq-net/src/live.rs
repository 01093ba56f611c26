//! What the admin API sees of the network side: live connections (with the
//! certificate each authenticated with), counts per listener, traffic
//! counters and TLS handshake failures by reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::Protocol;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIds {
    pub certificate_id: String,
    pub ca_id: String,
    /// The certificate's not-after (unix seconds): the connection is
    /// closed then (SPEC 6).
    pub not_after: i64,
}

/// One live (CONNECT accepted) connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client_id: Arc<str>,
    pub protocol: Protocol,
    pub peer: SocketAddr,
    /// The client certificate's id and its CA's id (SHA-256 fingerprints),
    /// when one was presented; boxed, as most connections of a plain
    /// listener have none (memory per idle connection is a target).
    pub certificate: Option<Box<CertIds>>,
    /// Unix seconds.
    pub connected_at: i64,
    /// The user a password or token proved.
    pub username: Option<Arc<str>>,
    /// When the token the client authenticated with expires (unix
    /// seconds): the connection is closed then (SPEC 11).
    pub token_expires_at: Option<i64>,
}

impl ConnInfo {
    /// When the connection must close: its certificate's or its token's
    /// end, whichever comes first.
    pub fn expires_at(&self) -> Option<i64> {
        let cert = self.certificate.as_ref().map(|c| c.not_after);
        match (cert, self.token_expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Default)]
pub struct Live {
    next: AtomicU64,
    /// Boxed: a map slot then costs 16 bytes, and the map's spare capacity
    /// (up to half of it after growth) is paid in slots, per connection.
    conns: Mutex<HashMap<u64, Box<ConnInfo>>>,
    /// (not-after, live id) of connections that authenticated with a
    /// certificate, soonest first.
    expiries: Mutex<BTreeSet<(i64, u64)>>,
    open: [AtomicUsize; 4],
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    tls_failures: Mutex<BTreeMap<&'static str, u64>>,
    rejections: Mutex<Rejections>,
    /// `connection.refused` events go here (as many a second as are logged).
    events: certmq_core::Events,
}

/// A refused handshake or CONNECT.
#[derive(Debug, Clone)]
pub struct RejectionRecord {
    /// Unix seconds.
    pub at: i64,
    /// `CERTIFICATE_REVOKED`, `BAD_PASSWORD`, ... ([`certmq_pki::Rejection`]
    /// names and the authentication chain's).
    pub reason: &'static str,
    pub protocol: Protocol,
    pub peer: SocketAddr,
    /// None when refused during the TLS handshake (before CONNECT).
    pub client_id: Option<String>,
    pub certificate_id: Option<String>,
    pub ca_id: Option<String>,
    /// The user name the client gave, when it gave one (bounded).
    pub username: Option<String>,
}

/// Refusals: the newest of each reason, counts by reason, and counts by
/// (reason, source) so that a flood of one kind (1,000 handshakes without a
/// certificate) cannot push the one refusal that matters out of view.
#[derive(Debug, Default)]
struct Rejections {
    seq: u64,
    recent: HashMap<&'static str, std::collections::VecDeque<(u64, RejectionRecord)>>,
    counts: BTreeMap<&'static str, u64>,
    /// (reason, source) -> (count, last seq); bounded by [`SOURCES_KEPT`].
    by_source: HashMap<(&'static str, String), (u64, u64)>,
    /// Log lines written in the current second, and refusals not logged.
    log_second: i64,
    logged: u32,
    unlogged: u64,
}

/// Refusals kept for `GET /connection-rejections`, at most.
pub const REJECTIONS_KEPT: usize = 1000;
/// The newest refusals kept per reason.
const KEPT_PER_REASON: usize = 200;
/// Distinct (reason, source) pairs counted; later sources count as "other".
const SOURCES_KEPT: usize = 10_000;
/// Refusals logged per second; the rest are counted and summarised.
const LOGGED_PER_SECOND: u32 = 20;

/// How often one source was refused for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionSource {
    pub reason: &'static str,
    /// `certificate:<id>`, or `address:<ip>` for a client without one.
    pub source: String,
    pub count: u64,
}

fn slot(p: Protocol) -> usize {
    match p {
        Protocol::MqttTcp => 0,
        Protocol::MqttTls => 1,
        Protocol::MqttWs => 2,
        Protocol::MqttWss => 3,
    }
}

impl Live {
    /// The handle `connection.refused` events are emitted through.
    pub fn events(&self) -> &certmq_core::Events {
        &self.events
    }

    pub(crate) fn register(&self, info: ConnInfo) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(at) = info.expires_at() {
            self.expiries.lock().insert((at, id));
        }
        self.conns.lock().insert(id, Box::new(info));
        id
    }

    pub(crate) fn unregister(&self, id: u64) {
        let removed = self.conns.lock().remove(&id);
        if let Some(at) = removed.and_then(|c| c.expires_at()) {
            self.expiries.lock().remove(&(at, id));
        }
    }

    /// Live connections whose certificate's not-after is at or before
    /// `now` (unix seconds); each is returned once.
    pub fn take_expired(&self, now: i64) -> Vec<ConnInfo> {
        let due: Vec<u64> = {
            let mut e = self.expiries.lock();
            let mut due = Vec::new();
            while let Some(&(t, id)) = e.first() {
                if t > now {
                    break;
                }
                e.pop_first();
                due.push(id);
            }
            due
        };
        if due.is_empty() {
            return Vec::new();
        }
        let conns = self.conns.lock();
        due.iter()
            .filter_map(|id| conns.get(id).map(|c| ConnInfo::clone(c)))
            .collect()
    }

    pub(crate) fn opened(&self, p: Protocol) {
        if let Some(c) = self.open.get(slot(p)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn closed(&self, p: Protocol) {
        if let Some(c) = self.open.get(slot(p)) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn reject(&self, r: RejectionRecord) {
        let reason = r.reason;
        let mut g = self.rejections.lock();
        let now = r.at;
        if now != g.log_second {
            if g.unlogged > 0 {
                tracing::info!(
                    refusals = g.unlogged,
                    "further connection refusals not logged (rate limit); see GET /api/v1/connection-rejections"
                );
            }
            g.log_second = now;
            g.logged = 0;
            g.unlogged = 0;
        }
        let emit = g.logged < LOGGED_PER_SECOND;
        if emit {
            g.logged += 1;
            tracing::info!(
                reason,
                peer = %r.peer,
                client_id = %crate::LogStr(r.client_id.as_deref().unwrap_or("-")),
                certificate_id = r.certificate_id.as_deref().unwrap_or("-"),
                "connection refused"
            );
        } else {
            g.unlogged += 1;
        }
        *g.counts.entry(reason).or_insert(0) += 1;
        g.seq += 1;
        let seq = g.seq;
        let source = match (&r.certificate_id, &r.username) {
            (Some(id), _) => format!("certificate:{id}"),
            (None, Some(user)) => format!("user:{user}"),
            (None, None) => format!("address:{}", r.peer.ip()),
        };
        let key = if g.by_source.len() < SOURCES_KEPT
            || g.by_source.contains_key(&(reason, source.clone()))
        {
            (reason, source)
        } else {
            (reason, "other".to_string())
        };
        let e = g.by_source.entry(key).or_insert((0, 0));
        e.0 += 1;
        e.1 = seq;
        let event = (emit && self.events.is_on()).then(|| {
            serde_json::json!({
                "reason": reason,
                "protocol": r.protocol.name(),
                "peer": r.peer.to_string(),
                "client_id": r.client_id,
                "certificate_id": r.certificate_id,
                "ca_id": r.ca_id,
                "username": r.username,
            })
        });
        let q = g.recent.entry(reason).or_default();
        if q.len() >= KEPT_PER_REASON {
            q.pop_front();
        }
        q.push_back((seq, r));
        drop(g);
        if let Some(data) = event {
            self.events.emit("connection.refused", data);
        }
    }

    /// The newest refusals, newest first: the newest of every reason, so
    /// a flood of one reason leaves the others in view.
    pub fn rejections(&self) -> Vec<RejectionRecord> {
        let g = self.rejections.lock();
        let mut all: Vec<&(u64, RejectionRecord)> = g.recent.values().flatten().collect();
        all.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        all.into_iter()
            .take(REJECTIONS_KEPT)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The sources refused most often, with their reasons.
    pub fn rejection_sources(&self, limit: usize) -> Vec<RejectionSource> {
        let g = self.rejections.lock();
        let mut v: Vec<_> = g.by_source.iter().collect();
        v.sort_by_key(|(_, (count, last))| std::cmp::Reverse((*count, *last)));
        v.into_iter()
            .take(limit)
            .map(|((reason, source), (count, _))| RejectionSource {
                reason,
                source: source.clone(),
                count: *count,
            })
            .collect()
    }

    pub fn rejection_counts(&self) -> Vec<(&'static str, u64)> {
        self.rejections
            .lock()
            .counts
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    pub(crate) fn tls_failure(&self, reason: &'static str) {
        *self.tls_failures.lock().entry(reason).or_insert(0) += 1;
    }

    /// Live connections, oldest first.
    pub fn connections(&self) -> Vec<ConnInfo> {
        let mut v: Vec<(u64, ConnInfo)> = self
            .conns
            .lock()
            .iter()
            .map(|(k, c)| (*k, ConnInfo::clone(c)))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, c)| c).collect()
    }

    /// Open sockets (TLS and WebSocket handshakes included) per listener protocol.
    pub fn open_by_protocol(&self) -> Vec<(Protocol, usize)> {
        [
            Protocol::MqttTcp,
            Protocol::MqttTls,
            Protocol::MqttWs,
            Protocol::MqttWss,
        ]
        .into_iter()
        .map(|p| {
            let n = self
                .open
                .get(slot(p))
                .map_or(0, |c| c.load(Ordering::Relaxed));
            (p, n)
        })
        .collect()
    }

    pub fn tls_failures(&self) -> Vec<(&'static str, u64)> {
        self.tls_failures
            .lock()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

/// A handshake error's reason label for metrics.
pub(crate) fn tls_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match rustls_error(e) {
        Some(E::NoCertificatesPresented) => "no_client_certificate",
        Some(E::InvalidCertificate(_)) => "client_certificate_refused",
        Some(E::AlertReceived(_)) => "alert_received",
        Some(E::General(m)) if m.contains("no server certificate") => "no_server_certificate",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
        None => "io",
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The rustls error inside a handshake's I/O error, however deeply wrapped.
pub(crate) fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    let mut cur: &(dyn std::error::Error + 'static) = e.get_ref()?;
    for _ in 0..4 {
        if let Some(r) = cur.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            cur = io.get_ref()?;
            continue;
        }
        cur = cur.source()?;
    }
    None
}
