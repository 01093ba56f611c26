//! Drives one client connection: reads and decodes packets, hands them to
//! the core's [`Conn`], writes what it produces, delivers queued messages,
//! enforces the connect timeout and keep alive, and closes cleanly.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use certmq_codec::{
    decode, encode, encoded_len, ConnAck, DecodeError, Disconnect, Packet, Properties, Protocol,
    ReasonCode,
};
use certmq_core::{CloseCause, Conn, ConnectContext, Flow, Ready};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::listener::ConnectionGuard;
use crate::transport::Transport;
use crate::Shared;

/// Deliveries moved from the mailbox per round before writing.
const DELIVERY_BATCH: usize = 256;

/// Facts about the connection established by the listener.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub allow_anonymous: bool,
    /// The client's certificate chain (DER), leaf first, when TLS presented one.
    pub certificates: Vec<bytes::Bytes>,
}

pub(crate) async fn run<T: Transport>(
    mut t: T,
    guard: ConnectionGuard,
    peer: Box<PeerInfo>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = &guard.shared;
    let max_in = shared.broker.config().max_packet_size as usize;
    // The CONNECT phase and the close are boxed: their timers and buffers are
    // short-lived, and the task of an idle connection should not be sized by
    // them (memory per idle connection is a product target).
    let accepted = Box::pin(accept(&mut t, shared, peer, max_in, &mut shutdown)).await;
    let Some((mut conn, mut rbuf)) = accepted else {
        return;
    };
    // Shutdown reaches live sessions through their mailbox (a kick); one
    // that connected while the kicks went out is closed here.
    let cause = if *shutdown.borrow() {
        CloseCause::Server(ReasonCode::SERVER_SHUTTING_DOWN)
    } else {
        session_loop(&mut t, &mut conn, &mut rbuf, max_in).await
    };
    drop(rbuf);
    Box::pin(finish(t, conn, cause)).await;
}

/// Reads CONNECT within the connect timeout and asks the broker to accept
/// it. Returns the connection and any bytes that followed CONNECT.
async fn accept<T: Transport>(
    t: &mut T,
    shared: &Shared,
    peer: Box<PeerInfo>,
    max_in: usize,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(Conn, BytesMut)> {
    let mut rbuf = BytesMut::new();
    let read = timeout(
        shared.config.connect_timeout,
        read_connect(t, &mut rbuf, max_in),
    );
    let connect = tokio::select! {
        r = read => r,
        _ = shutdown.changed() => return None,
    };
    let connect = match connect {
        Err(_) => {
            tracing::debug!(peer = %peer.addr, "no CONNECT within the connect timeout");
            t.shutdown().await;
            return None;
        }
        Ok(Err(ConnectError::Io)) => return None,
        Ok(Err(ConnectError::Decode(e))) => {
            tracing::debug!(peer = %peer.addr, error = %e, "bad CONNECT");
            if let DecodeError::UnsupportedVersion(_) = e {
                // The MQTT 3 CONNACK "unacceptable protocol version".
                let _ = t
                    .send(bytes::Bytes::from_static(&[0x20, 0x02, 0x00, 0x01]))
                    .await;
            }
            t.shutdown().await;
            return None;
        }
        Ok(Ok(c)) => c,
    };
    let protocol = connect.protocol;
    let ctx = ConnectContext {
        authorized: peer.allow_anonymous,
    };
    match shared.broker.connect(connect, &ctx, Instant::now()) {
        Ok(conn) => {
            tracing::debug!(peer = %peer.addr, client_id = %conn.client_id(), "connected");
            Some((conn, rbuf))
        }
        Err(reason) => {
            tracing::info!(peer = %peer.addr, %reason, "CONNECT refused");
            let connack = ConnAck {
                session_present: false,
                reason,
                properties: Properties::default(),
            };
            let mut wbuf = BytesMut::new();
            encode(&Packet::ConnAck(connack), protocol, &mut wbuf);
            let _ = t.send(wbuf.freeze()).await;
            t.shutdown().await;
            None
        }
    }
}

/// Settles the session, then sends what is left (and, for MQTT 5, the
/// DISCONNECT of a broker-side close) and closes the transport.
async fn finish<T: Transport>(mut t: T, mut conn: Conn, cause: CloseCause) {
    tracing::debug!(client_id = %conn.client_id(), ?cause, "closed");
    let protocol = conn.protocol();
    let mut wbuf = BytesMut::new();
    // The session is settled (ended, or kept with its expiry; will sent or
    // scheduled) before the last bytes go out, so a client that reconnects
    // right after its DISCONNECT finds the session in its final state.
    drain_output(&mut conn, &mut wbuf);
    conn.close(cause, Instant::now());
    if let CloseCause::Server(reason) = cause {
        if protocol.is_v5() {
            let d = Packet::Disconnect(Disconnect {
                reason,
                properties: Properties::default(),
            });
            encode(&d, protocol, &mut wbuf);
        }
    }
    if !wbuf.is_empty() {
        let _ = t.send(wbuf.freeze()).await;
    }
    t.shutdown().await;
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
        match t.read_into(rbuf).await {
            Ok(0) | Err(_) => return Err(ConnectError::Io),
            Ok(_) => {}
        }
    }
}

/// Encodes the connection's pending output into `wbuf`, leaving out packets
/// larger than the client accepts. The output list's memory goes with it.
fn drain_output(conn: &mut Conn, wbuf: &mut BytesMut) {
    let protocol = conn.protocol();
    let max = conn.client_max_packet_size() as usize;
    for packet in std::mem::take(conn.output()) {
        if protocol.is_v5() && encoded_len(&packet, protocol) > max {
            continue;
        }
        encode(&packet, protocol, wbuf);
    }
}

/// The connected phase. Kept small on purpose: it is what an idle
/// connection's task holds. Keep alive and shutdown arrive as mailbox kicks
/// (the broker sweeps keep alives), so no timer or channel is held here.
async fn session_loop<T: Transport>(
    t: &mut T,
    conn: &mut Conn,
    rbuf: &mut BytesMut,
    max_in: usize,
) -> CloseCause {
    let protocol: Protocol = conn.protocol();
    let mailbox = conn.mailbox().clone();
    let generation = conn.generation();
    // Packets that arrived together with CONNECT.
    let mut pending_input = !rbuf.is_empty();
    loop {
        if pending_input {
            pending_input = false;
            loop {
                match decode(rbuf, Some(protocol), max_in) {
                    Ok(Some(packet)) => match conn.handle(packet, Instant::now()) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Disconnect { publish_will }) => {
                            return CloseCause::ClientDisconnect { publish_will };
                        }
                        Err(reason) => return CloseCause::Server(reason),
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client_id = %conn.client_id(), error = %e, "malformed input");
                        return CloseCause::Server(e.reason_code());
                    }
                }
            }
        }
        if conn.window_open() && !mailbox.is_empty() {
            if let Err(reason) = conn.poll_deliveries(DELIVERY_BATCH, Instant::now()) {
                return CloseCause::Server(reason);
            }
        }
        let mut wbuf = BytesMut::new();
        drain_output(conn, &mut wbuf);
        if !wbuf.is_empty() && t.send(wbuf.freeze()).await.is_err() {
            return CloseCause::ConnectionLost;
        }
        let want_deliveries = conn.window_open();
        tokio::select! {
            biased;
            ready = poll_fn(|cx| mailbox.poll_ready(cx, generation, want_deliveries)) => {
                match ready {
                    Ready::Kicked(k) => return CloseCause::Server(k.reason),
                    Ready::Deliveries => {
                        if let Err(reason) = conn.poll_deliveries(DELIVERY_BATCH, Instant::now()) {
                            return CloseCause::Server(reason);
                        }
                    }
                }
            }
            read = t.read_into(rbuf) => match read {
                Ok(0) | Err(_) => return CloseCause::ConnectionLost,
                Ok(_) => {
                    conn.touch(Instant::now());
                    pending_input = true;
                }
            },
        }
    }
}
