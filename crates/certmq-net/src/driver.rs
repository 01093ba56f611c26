//! Drives one client connection: reads and decodes packets, hands them to
//! the core's [`Conn`], writes what it produces, delivers queued messages,
//! enforces the connect timeout and keep alive, and closes cleanly.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use certmq_codec::{
    decode, encode, encoded_len, ConnAck, DecodeError, Disconnect, Packet, Properties, Protocol,
    ReasonCode,
};
use certmq_core::{CloseCause, Conn, ConnectContext, Flow, Identity, Ready};
use certmq_pki::{Decision, Rejection};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::clock;
use crate::listener::ConnectionGuard;
use crate::transport::Transport;
use crate::{Shared, SyncAcks};

/// Deliveries moved from the mailbox per round before writing.
const DELIVERY_BATCH: usize = 256;

/// Facts about the connection established by the listener.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub protocol: crate::Protocol,
    /// The listener's authentication chain.
    pub methods: Arc<[crate::AuthMethod]>,
    /// The client's certificate chain (DER), leaf first, when TLS presented one.
    pub certificates: Vec<bytes::Bytes>,
}

/// One connection's task, written out as a state machine so that what an
/// idle connection holds is exactly [`Session`] and the guard (memory per
/// idle connection is a product target). The CONNECT phase and the close
/// are boxed: their timers and buffers are short-lived.
pub(crate) struct ConnTask<T> {
    phase: Phase<T>,
    _guard: ConnectionGuard,
}

type BoxedPhase<O> = Pin<Box<dyn Future<Output = O> + Send>>;

enum Phase<T> {
    Accepting(BoxedPhase<Option<Accepted<T>>>),
    Connected(Session<T>),
    Closing(BoxedPhase<()>),
    Done,
}

struct Accepted<T> {
    session: Session<T>,
    live_id: u64,
    /// Shutdown reaches live sessions through their mailbox (a kick); one
    /// that connected while the kicks went out is closed at once.
    shutting_down: bool,
}

pub(crate) fn run<T: Transport + 'static>(
    t: T,
    guard: ConnectionGuard,
    peer: Box<PeerInfo>,
    shutdown: watch::Receiver<bool>,
) -> ConnTask<T> {
    let shared = guard.shared.clone();
    ConnTask {
        phase: Phase::Accepting(Box::pin(accept(t, shared, peer, shutdown))),
        _guard: guard,
    }
}

impl<T: Transport + 'static> Future for ConnTask<T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Accepting(f) => match ready!(f.as_mut().poll(cx)) {
                    None => this.phase = Phase::Done,
                    Some(Accepted {
                        session,
                        live_id,
                        shutting_down: false,
                    }) => {
                        this._guard.live_id = live_id;
                        this.phase = Phase::Connected(session);
                    }
                    Some(Accepted {
                        session, live_id, ..
                    }) => {
                        this._guard.live_id = live_id;
                        let cause = CloseCause::Server(ReasonCode::SERVER_SHUTTING_DOWN);
                        this.phase = Phase::Closing(Box::pin(session.finish(cause, None)));
                    }
                },
                Phase::Connected(session) => {
                    let cause = ready!(session.poll_step(cx, &this._guard.shared));
                    if let Phase::Connected(session) =
                        std::mem::replace(&mut this.phase, Phase::Done)
                    {
                        let acks = this._guard.shared.sync_acks.get().cloned();
                        this.phase = Phase::Closing(Box::pin(session.finish(cause, acks)));
                    }
                }
                Phase::Closing(f) => {
                    ready!(f.as_mut().poll(cx));
                    this.phase = Phase::Done;
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Reads CONNECT within the connect timeout and asks the broker to accept
/// it. Returns the connection and any bytes that followed CONNECT.
async fn accept<T: Transport>(
    mut t: T,
    shared: Arc<Shared>,
    peer: Box<PeerInfo>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Accepted<T>> {
    let max_in = shared.broker.config().max_packet_size as usize;
    let mut rbuf = BytesMut::new();
    let read = timeout(
        shared.config.connect_timeout,
        read_connect(&mut t, &mut rbuf, max_in),
    );
    let connect = tokio::select! {
        r = read => r,
        _ = shutdown.changed() => return None,
    };
    let connect = match connect {
        Err(_) => {
            tracing::debug!(peer = %peer.addr, "no CONNECT within the connect timeout");
            send_and_close(&mut t, BytesMut::new()).await;
            return None;
        }
        Ok(Err(ConnectError::Io)) => return None,
        Ok(Err(ConnectError::Decode(e))) => {
            tracing::debug!(peer = %peer.addr, error = %e, "bad CONNECT");
            let mut wbuf = BytesMut::new();
            if let DecodeError::UnsupportedVersion(_) = e {
                // The MQTT 3 CONNACK "unacceptable protocol version".
                wbuf.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
            }
            send_and_close(&mut t, wbuf).await;
            return None;
        }
        Ok(Ok(c)) => c,
    };
    let protocol = connect.protocol;
    let login = match authenticate(&shared, &peer, &connect).await {
        Ok(login) => login,
        Err(refusal) => {
            shared.live.reject(crate::RejectionRecord {
                at: crate::live::now_unix(),
                reason: refusal.reason,
                protocol: peer.protocol,
                peer: peer.addr,
                client_id: Some(crate::bounded(&connect.client_id)),
                certificate_id: refusal.device_id,
                ca_id: refusal.ca_id,
                username: connect.username.as_deref().map(crate::bounded),
            });
            let connack = ConnAck {
                session_present: false,
                reason: ReasonCode::NOT_AUTHORIZED,
                properties: Properties::default(),
            };
            let mut wbuf = BytesMut::new();
            encode(&Packet::ConnAck(connack), protocol, &mut wbuf);
            send_and_close(&mut t, wbuf).await;
            return None;
        }
    };
    let certificate = login.certificate;
    let identity = match (&certificate, &login.username) {
        (Some(c), _) => Identity::Certificate(c.certificate_id.as_str().into()),
        (None, Some(user)) => Identity::User(user.clone()),
        (None, None) => Identity::Anonymous,
    };
    let ctx = ConnectContext {
        authorized: true,
        identity,
        username: login.username.clone(),
        cert: login.cert_facts,
        peer_ip: Some(peer.addr.ip()),
    };
    if let Some(claims) = shared.claims.get() {
        claims.claim(&connect.client_id, connect.clean_start).await;
    }
    let username_given = connect.username.as_deref().map(crate::bounded);
    // Kept (bounded) for the refusal record; CONNECT moves into the core.
    let client_id = crate::bounded(&connect.client_id);
    match shared.broker.connect(connect, &ctx, clock::now()) {
        Ok(conn) => {
            tracing::debug!(peer = %peer.addr, client_id = %crate::LogStr(conn.client_id()), "connected");
            let shutting_down = *shutdown.borrow();
            let live_id = shared.live.register(crate::ConnInfo {
                client_id: conn.client_id().clone(),
                protocol: peer.protocol,
                peer: peer.addr,
                certificate,
                connected_at: crate::live::now_unix(),
                username: login.username,
                token_expires_at: login.token_expires_at,
            });
            Some(Accepted {
                live_id,
                session: Session {
                    t,
                    conn,
                    io: (!rbuf.is_empty()).then(|| {
                        Box::new(Io {
                            pending_input: true,
                            rbuf,
                            ..Io::default()
                        })
                    }),
                },
                shutting_down,
            })
        }
        Err(refused) => {
            let reason = refused.reason_code();
            if let Some(name) = refused.record_name() {
                shared.live.reject(crate::RejectionRecord {
                    at: crate::live::now_unix(),
                    reason: name,
                    protocol: peer.protocol,
                    peer: peer.addr,
                    client_id: Some(client_id),
                    certificate_id: certificate.as_ref().map(|c| c.certificate_id.clone()),
                    ca_id: certificate.as_ref().map(|c| c.ca_id.clone()),
                    username: username_given,
                });
            } else {
                tracing::info!(peer = %peer.addr, %reason, "CONNECT refused");
            }
            let connack = ConnAck {
                session_present: false,
                reason,
                properties: Properties::default(),
            };
            let mut wbuf = BytesMut::new();
            encode(&Packet::ConnAck(connack), protocol, &mut wbuf);
            send_and_close(&mut t, wbuf).await;
            None
        }
    }
}

/// Who the client proved to be.
#[derive(Default)]
struct Login {
    certificate: Option<Box<crate::CertIds>>,
    cert_facts: Option<Arc<certmq_core::CertFacts>>,
    username: Option<Arc<str>>,
    token_expires_at: Option<i64>,
}

/// A refused CONNECT, with what is recorded of it.
struct AuthRefusal {
    reason: &'static str,
    device_id: Option<String>,
    ca_id: Option<String>,
}

impl AuthRefusal {
    fn because(reason: &'static str) -> Self {
        Self {
            reason,
            device_id: None,
            ca_id: None,
        }
    }
}

/// Runs the listener's authentication chain (see [`crate::authn`]).
async fn authenticate(
    shared: &Shared,
    peer: &PeerInfo,
    connect: &certmq_codec::Connect,
) -> Result<Login, AuthRefusal> {
    let authn = shared.authenticator.get();
    let password = connect.password.as_deref();
    let mut passed: Option<&'static str> = None;
    let user_login = |check: crate::CredentialCheck, passed: &mut Option<&'static str>| match check
    {
        crate::CredentialCheck::Accepted {
            username,
            expires_at,
        } => Some(Ok(Login {
            username: Some(username),
            token_expires_at: expires_at,
            ..Login::default()
        })),
        crate::CredentialCheck::Refused(r) => Some(Err(AuthRefusal::because(r))),
        crate::CredentialCheck::Pass(r) => {
            *passed = passed.or(r);
            None
        }
    };
    for method in peer.methods.iter() {
        match method {
            crate::AuthMethod::Certificate => {
                // A client certificate decides, every time (a resumed TLS
                // session skipped the verifier): registry state, client-id
                // binding, CA state.
                let (Some(leaf), Some(authz)) = (peer.certificates.first(), &shared.authorizer)
                else {
                    continue;
                };
                let chain: Vec<&[u8]> = peer.certificates.iter().map(|c| c.as_ref()).collect();
                return certificate_login(authz.as_ref(), leaf, &chain, &connect.client_id);
            }
            crate::AuthMethod::Password => {
                let (Some(user), Some(pass), Some(a)) = (&connect.username, password, authn) else {
                    continue;
                };
                if let Some(done) = user_login(a.password(user, pass).await, &mut passed) {
                    return done;
                }
            }
            crate::AuthMethod::Jwt => {
                let (Some(token), Some(a)) = (password, authn) else {
                    continue;
                };
                if !crate::looks_like_jwt(token) {
                    continue;
                }
                let now = crate::live::now_unix();
                let check = a.token(token, &connect.client_id, connect.username.as_deref(), now);
                if let Some(done) = user_login(check, &mut passed) {
                    return done;
                }
            }
            crate::AuthMethod::Anonymous => return Ok(Login::default()),
        }
    }
    let presented_nothing =
        peer.certificates.is_empty() && connect.username.is_none() && password.is_none();
    Err(AuthRefusal::because(match passed {
        Some(r) => r,
        None if presented_nothing => "ANONYMOUS_NOT_ALLOWED",
        None if !peer.certificates.is_empty() => "CERTIFICATE_NOT_ACCEPTED_HERE",
        None => "CREDENTIALS_NOT_ACCEPTED",
    }))
}

/// The `certificate` method: the registry's decision on the leaf.
fn certificate_login(
    authz: &dyn crate::ConnectAuthorizer,
    leaf: &[u8],
    chain: &[&[u8]],
    client_id: &str,
) -> Result<Login, AuthRefusal> {
    let ids = match authz.authorize(chain, client_id) {
        Decision::Allow {
            device_id,
            ca_id,
            not_after,
        } => crate::CertIds {
            certificate_id: device_id,
            ca_id,
            not_after,
        },
        Decision::Provision { chained, activate } => {
            // The authorizer registered it; only activated ones get in.
            let expires_at = chained.expires_at();
            let (d, c) = (chained.device_id, chained.ca_id);
            if !activate {
                return Err(AuthRefusal {
                    reason: Rejection::CertificatePending.as_str(),
                    device_id: Some(d),
                    ca_id: Some(c),
                });
            }
            crate::CertIds {
                certificate_id: d,
                ca_id: c,
                not_after: expires_at,
            }
        }
        Decision::Reject {
            reason,
            device_id,
            ca_id,
        } => {
            return Err(AuthRefusal {
                reason: reason.as_str(),
                device_id,
                ca_id,
            })
        }
    };
    let facts = certmq_pki::subject_facts(leaf).map(|f| {
        Arc::new(certmq_core::CertFacts {
            cn: f.info.subject_cn,
            ou: f.subject_ou,
            serial: f.info.serial,
            fingerprint: f.info.id,
            san_dns: f.info.dns_names,
            ca_id: ids.ca_id.clone(),
        })
    });
    Ok(Login {
        certificate: Some(Box::new(ids)),
        cert_facts: facts,
        ..Login::default()
    })
}

impl<T: Transport> Session<T> {
    /// Settles the session, then sends what is left (and, for MQTT 5, the
    /// DISCONNECT of a broker-side close) and closes the transport.
    async fn finish(self, cause: CloseCause, acks: Option<SyncAcks>) {
        let Session {
            mut t,
            mut conn,
            io,
        } = self;
        let (mut wbuf, held) = match io {
            Some(io) => (io.wbuf, io.held),
            None => (BytesMut::new(), (0, 0)),
        };
        if let ((from, to @ 1..), Some(acks)) = (held, acks) {
            // Acknowledgements still wait for their changes to be on disk.
            let ok = poll_fn(|cx| acks.durability.poll_settled(cx, from, to)).await;
            if !ok {
                fail_acks(&mut conn);
            }
        }
        tracing::debug!(client_id = %crate::LogStr(conn.client_id()), ?cause, "closed");
        let protocol = conn.protocol();
        // The session is settled (ended, or kept with its expiry; will sent
        // or scheduled) before the last bytes go out, so a client that
        // reconnects right after its DISCONNECT finds the session in its
        // final state.
        drain_output(&mut conn, &mut wbuf);
        conn.close(cause, clock::now());
        let server_close = match cause {
            CloseCause::Server(reason) => Some((reason, None)),
            CloseCause::Kicked(k) => Some((k.reason, k.text)),
            _ => None,
        };
        if let Some((reason, text)) = server_close {
            if protocol.is_v5() {
                let d = Packet::Disconnect(Disconnect {
                    reason,
                    properties: Properties {
                        reason_string: text.map(str::to_owned),
                        ..Properties::default()
                    },
                });
                encode(&d, protocol, &mut wbuf);
            }
        }
        if wbuf.is_empty() && matches!(cause, CloseCause::ClientDisconnect { .. }) {
            // A client that sent DISCONNECT usually closes at once: when its
            // end of stream is already here, closing our side (TLS
            // close_notify, TCP shutdown) would only write to a closed peer.
            let mut scratch = BytesMut::new();
            let peer_gone = poll_fn(|cx| {
                Poll::Ready(matches!(
                    t.poll_read_into(cx, &mut scratch),
                    Poll::Ready(Ok(0) | Err(_))
                ))
            })
            .await;
            if peer_gone {
                return;
            }
        }
        send_and_close(&mut t, wbuf).await;
    }
}

/// A payload shares its read buffer only while it is at least this
/// fraction of it: a queued message then pins at most this many times its
/// own size. Smaller payloads (and correlation data) are copied out.
const PIN_FACTOR: usize = 4;

/// Copies a PUBLISH's payload and correlation data out of the read buffer
/// (`alloc` bytes) when sharing it would pin much more than their size: a
/// 4-byte message queued for an offline session must not keep the 1 MiB
/// buffer of the publish before it alive.
fn unpin(packet: &mut Packet, alloc: usize) {
    let Packet::Publish(p) = packet else { return };
    let copy = |b: &bytes::Bytes| b.len().saturating_mul(PIN_FACTOR) < alloc;
    if copy(&p.payload) {
        p.payload = bytes::Bytes::copy_from_slice(&p.payload);
    }
    if let Some(c) = p.properties.correlation_data.as_mut() {
        if copy(c) {
            *c = bytes::Bytes::copy_from_slice(c);
        }
    }
}

/// How long the last bytes of a closing connection may take to go out.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Output buffered beyond this stops reading input and taking deliveries
/// until the client catches up (its queue then fills and drops, by policy).
const HIGH_WATER: usize = 64 * 1024;

/// Sends `wbuf` and closes the transport, giving up after [`CLOSE_GRACE`]
/// each: a client that stopped reading cannot hold its task.
async fn send_and_close<T: Transport>(t: &mut T, mut wbuf: BytesMut) {
    if !wbuf.is_empty() {
        let _ = timeout(CLOSE_GRACE, poll_fn(|cx| t.poll_write_from(cx, &mut wbuf))).await;
    }
    let _ = timeout(CLOSE_GRACE, poll_fn(|cx| t.poll_close(cx))).await;
}

enum ConnectError {
    Io,
    Decode(DecodeError),
}

async fn read_connect<T: Transport>(
    t: &mut T,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<certmq_codec::Connect, ConnectError> {
    loop {
        match decode(rbuf, None, max) {
            Ok(Some(Packet::Connect(c))) => return Ok(*c),
            Ok(Some(_)) => {
                return Err(ConnectError::Decode(DecodeError::Protocol(
                    "first packet must be CONNECT",
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(ConnectError::Decode(e)),
        }
        match poll_fn(|cx| t.poll_read_into(cx, rbuf)).await {
            Ok(0) | Err(_) => return Err(ConnectError::Io),
            Ok(_) => {}
        }
    }
}

/// Encodes the connection's pending output into `wbuf`, leaving out packets
/// larger than the client accepts. The output list's memory goes with it.
fn drain_output(conn: &mut Conn, wbuf: &mut BytesMut) -> u64 {
    let protocol = conn.protocol();
    let max = conn.client_max_packet_size() as usize;
    let mut n = 0;
    for packet in std::mem::take(conn.output()) {
        if protocol.is_v5() && encoded_len(&packet, protocol) > max {
            continue;
        }
        encode(&packet, protocol, wbuf);
        n += 1;
    }
    n
}

/// What woke the connected phase.
enum Event {
    Mailbox(Ready),
    Read(std::io::Result<usize>),
    /// Buffered output went out completely.
    Written,
    WriteFailed,
}

/// The connected phase: what an idle connection's task holds, so it is
/// kept small. One poll step makes write progress, checks the mailbox
/// (deliveries, kicks: keep alive and shutdown arrive this way too) and
/// reads; no timer, channel or stored sub-future is held here.
struct Session<T> {
    t: T,
    conn: Conn,
    /// Buffers and progress of a connection with work in hand; `None`
    /// while idle, so an idle task holds one pointer for them.
    io: Option<Box<Io>>,
}

#[derive(Default)]
struct Io {
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// `rbuf` may hold complete packets not yet decoded.
    pending_input: bool,
    /// `sync` persistence: the output holds acknowledgements of changes
    /// `(from, to]`, sent once those are on disk; `to` 0: nothing held.
    held: (u64, u64),
    /// Bytes written since flow-control progress was last reported.
    unreported: usize,
}

/// Flow control counts a subscriber as making progress when its socket
/// took everything buffered for it, or at least this much: a client that
/// stopped reading lets the kernel free a few bytes now and then, which
/// must not count as reading.
const PROGRESS_BYTES: usize = 4096;

impl Io {
    /// Nothing buffered, nothing waiting: the box can go.
    fn is_idle(&self) -> bool {
        self.rbuf.is_empty() && self.wbuf.is_empty() && !self.pending_input && self.held.1 == 0
    }
}

/// Whether acknowledging `packet` waits for durability in `sync` mode.
fn acknowledged_durably(packet: &Packet) -> bool {
    match packet {
        Packet::Publish(p) => p.qos != certmq_codec::QoS::AtMostOnce,
        Packet::Subscribe(_) | Packet::Unsubscribe(_) => true,
        _ => false,
    }
}

/// The changes acknowledged in the output were not written: MQTT 5 gets
/// "unspecified error" in each acknowledgement; MQTT 3 has no negative
/// PUBACK, so they are withheld and the connection closes.
fn fail_acks(conn: &mut Conn) -> bool {
    use certmq_codec::ReasonCode as R;
    let v5 = conn.protocol().is_v5();
    if !v5 {
        conn.output().retain(|p| {
            !matches!(
                p,
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::SubAck(_) | Packet::UnsubAck(_)
            )
        });
        return false;
    }
    for p in conn.output().iter_mut() {
        match p {
            Packet::PubAck(r) | Packet::PubRec(r) if !r.reason.is_error() => {
                r.reason = R::UNSPECIFIED_ERROR;
            }
            Packet::SubAck(a) => a
                .reasons
                .iter_mut()
                .filter(|c| !c.is_error())
                .for_each(|c| *c = R::UNSPECIFIED_ERROR),
            Packet::UnsubAck(a) => a
                .reasons
                .iter_mut()
                .filter(|c| !c.is_error())
                .for_each(|c| *c = R::UNSPECIFIED_ERROR),
            _ => {}
        }
    }
    true
}

/// The close that handling a packet asks for, if any.
fn close_for(handled: Result<Flow, ReasonCode>) -> Option<CloseCause> {
    match handled {
        Ok(Flow::Continue) => None,
        Ok(Flow::Disconnect { publish_will }) => {
            Some(CloseCause::ClientDisconnect { publish_will })
        }
        Err(reason) => Some(CloseCause::Server(reason)),
    }
}

/// `sync` persistence: the output now acknowledges changes up to `after`
/// (recorded since `before`); it is held until they are on disk.
fn hold_until_durable(held: &mut (u64, u64), before: u64, after: u64) {
    if after > before {
        let from = if held.1 == 0 {
            before
        } else {
            held.0.min(before)
        };
        *held = (from, after);
    }
}

impl<T: Transport> Session<T> {
    /// Runs until every source is pending, or the connection must close;
    /// an idle connection then gives its buffers back.
    fn poll_step(&mut self, cx: &mut Context<'_>, shared: &crate::Shared) -> Poll<CloseCause> {
        let io = self.io.get_or_insert_with(Box::default);
        let step = step(&mut self.t, &mut self.conn, io, cx, shared);
        if step.is_pending() && io.is_idle() {
            self.io = None;
        }
        step
    }
}

/// One poll of the connected phase (see [`Session::poll_step`]).
fn step<T: Transport>(
    t: &mut T,
    conn: &mut Conn,
    io: &mut Io,
    cx: &mut Context<'_>,
    shared: &crate::Shared,
) -> Poll<CloseCause> {
    let Io {
        rbuf,
        wbuf,
        pending_input,
        held,
        unreported,
    } = io;
    let max_in = conn.max_packet_size() as usize;
    let live = &*shared.live;
    let acks = shared.sync_acks.get();
    use std::sync::atomic::Ordering::Relaxed;
    let protocol: Protocol = conn.protocol();
    let generation = conn.generation();
    loop {
        if *pending_input && conn.accepts_input() {
            *pending_input = false;
            // Decoded payloads are slices of this allocation (rbuf starts
            // each batch in a buffer of its own, see below).
            let alloc = rbuf.capacity();
            let mut decoded = false;
            loop {
                if !conn.accepts_input() {
                    // Waiting, with enough parked: the rest stays in
                    // `rbuf` (and the socket) until there is room.
                    *pending_input = true;
                    break;
                }
                match decode(rbuf, Some(protocol), max_in) {
                    Ok(Some(mut packet)) => {
                        live.packets_in.fetch_add(1, Relaxed);
                        unpin(&mut packet, alloc);
                        decoded = true;
                        let durable = match acks {
                            Some(a) if acknowledged_durably(&packet) => {
                                Some((a, a.persist.recorded()))
                            }
                            _ => None,
                        };
                        let handled = conn.handle(packet, clock::now());
                        if let Some((a, before)) = durable {
                            hold_until_durable(held, before, a.persist.recorded());
                        }
                        if let Some(cause) = close_for(handled) {
                            return Poll::Ready(cause);
                        }
                    }
                    Ok(None) => {
                        if decoded {
                            // Decoded payloads may share this allocation:
                            // the next reads go to a buffer of their own
                            // (with any partial packet moved there), so
                            // they cannot pin it, nor it them.
                            *rbuf = if rbuf.is_empty() {
                                BytesMut::new()
                            } else {
                                BytesMut::from(&rbuf[..])
                            };
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(client_id = %crate::LogStr(conn.client_id()), error = %e, "malformed input");
                        return Poll::Ready(CloseCause::Server(e.reason_code()));
                    }
                }
            }
        }
        // Flow control: a publish filled a subscriber's queue; the
        // parked packets go on once it has room.
        if conn.is_waiting() {
            let before = acks.map(|a| a.persist.recorded());
            let resumed = conn.poll_resume(cx, clock::now());
            if let (Some(a), Some(before)) = (acks, before) {
                hold_until_durable(held, before, a.persist.recorded());
            }
            if let Poll::Ready(handled) = resumed {
                if let Some(cause) = close_for(handled) {
                    return Poll::Ready(cause);
                }
                if *pending_input && conn.accepts_input() {
                    // Room again: decode what waited in `rbuf`.
                    continue;
                }
            }
        }
        if !*pending_input && conn.input_finished() {
            return Poll::Ready(CloseCause::ConnectionLost);
        }
        // `sync`: output waits while it acknowledges changes not yet
        // on disk (the writer's commit wakes this task).
        let mut waiting = false;
        if let ((from, to @ 1..), Some(a)) = (*held, acks) {
            match a.durability.poll_settled(cx, from, to) {
                Poll::Pending => waiting = true,
                Poll::Ready(ok) => {
                    *held = (0, 0);
                    if !ok && !fail_acks(conn) {
                        return Poll::Ready(CloseCause::Server(
                            certmq_codec::ReasonCode::UNSPECIFIED_ERROR,
                        ));
                    }
                }
            }
        }
        if !waiting {
            if !conn.mailbox().is_empty() && wbuf.len() < HIGH_WATER && conn.window_open() {
                if let Err(reason) = conn.poll_deliveries(DELIVERY_BATCH, clock::now()) {
                    return Poll::Ready(CloseCause::Server(reason));
                }
            }
            let packets = drain_output(conn, wbuf);
            if packets > 0 {
                live.packets_out.fetch_add(packets, Relaxed);
            }
        }
        let backed_up = wbuf.len() >= HIGH_WATER || waiting;
        let want_deliveries = !backed_up && conn.window_open();
        let event = 'event: {
            if !wbuf.is_empty() {
                let before = wbuf.len();
                let r = t.poll_write_from(cx, wbuf);
                let written = before - wbuf.len();
                if written > 0 {
                    live.bytes_out.fetch_add(written as u64, Relaxed);
                    *unreported += written;
                    if wbuf.is_empty() || *unreported >= PROGRESS_BYTES {
                        // Flow control's measure of a subscriber that
                        // keeps reading.
                        conn.mailbox().progress(clock::now().unix_millis());
                        *unreported = 0;
                    }
                }
                match r {
                    Poll::Ready(Ok(())) => break 'event Event::Written,
                    Poll::Ready(Err(_)) => break 'event Event::WriteFailed,
                    Poll::Pending => {}
                }
            }
            if let Poll::Ready(r) = conn.mailbox().poll_ready(cx, generation, want_deliveries) {
                break 'event Event::Mailbox(r);
            }
            if !backed_up && conn.wants_read() {
                if let Poll::Ready(r) = t.poll_read_into(cx, rbuf) {
                    break 'event Event::Read(r);
                }
            }
            return Poll::Pending;
        };
        match event {
            Event::Mailbox(Ready::Kicked(k)) => return Poll::Ready(CloseCause::Kicked(k)),
            Event::Mailbox(Ready::Deliveries) => {
                if let Err(reason) = conn.poll_deliveries(DELIVERY_BATCH, clock::now()) {
                    return Poll::Ready(CloseCause::Server(reason));
                }
            }
            // The client closed while publishes wait for room: they
            // are handled first (as a broker that stopped reading
            // finds them in its socket), then the connection ends.
            Event::Read(Ok(0)) if conn.end_input() => {}
            Event::Read(Ok(0) | Err(_)) | Event::WriteFailed => {
                return Poll::Ready(CloseCause::ConnectionLost)
            }
            Event::Read(Ok(n)) => {
                live.bytes_in.fetch_add(n as u64, Relaxed);
                conn.touch(clock::now());
                *pending_input = true;
            }
            Event::Written => {}
        }
        if wbuf.is_empty() && wbuf.capacity() > 0 {
            // All sent: give the memory back while idle.
            *wbuf = BytesMut::new();
        }
        if rbuf.is_empty() && rbuf.capacity() > 0 && !*pending_input {
            *rbuf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle TCP connection's task stores inline, beyond tokio's own
    /// header: memory per idle connection is a product target, so growth
    /// here should be a decision, not an accident. tokio puts each task in
    /// a 128-byte-aligned cell with about 100 bytes of its own: up to 152
    /// bytes of future, the cell is 256 bytes; above, 384.
    #[test]
    fn idle_task_stays_small() {
        let size = std::mem::size_of::<ConnTask<crate::TcpTransport>>();
        assert!(size <= 152, "ConnTask<TcpTransport> is {size} bytes");
    }
}
