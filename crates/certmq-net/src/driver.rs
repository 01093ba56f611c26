//! Drives one client connection: reads and decodes packets, hands them to
//! the core's [`Conn`], writes what it produces, delivers queued messages,
//! enforces the connect timeout and keep alive, and closes cleanly.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::Poll;
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
            send_and_close(t, BytesMut::new()).await;
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
            send_and_close(t, wbuf).await;
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
            send_and_close(t, wbuf).await;
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
    send_and_close(&mut t, wbuf).await;
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

/// What woke the connected phase.
enum Event {
    Mailbox(Ready),
    Read(std::io::Result<usize>),
    /// Buffered output went out completely.
    Written,
    WriteFailed,
}

/// The connected phase. Kept small on purpose: it is what an idle
/// connection's task holds. One poll step makes write progress, checks the
/// mailbox (deliveries, kicks: keep alive and shutdown arrive this way too)
/// and reads, so no timer, channel or stored sub-future is held here.
async fn session_loop<T: Transport>(
    t: &mut T,
    conn: &mut Conn,
    rbuf: &mut BytesMut,
    max_in: usize,
) -> CloseCause {
    let protocol: Protocol = conn.protocol();
    let mailbox = conn.mailbox().clone();
    let generation = conn.generation();
    let mut wbuf = BytesMut::new();
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
        if wbuf.len() < HIGH_WATER && conn.window_open() && !mailbox.is_empty() {
            if let Err(reason) = conn.poll_deliveries(DELIVERY_BATCH, Instant::now()) {
                return CloseCause::Server(reason);
            }
        }
        drain_output(conn, &mut wbuf);
        let backed_up = wbuf.len() >= HIGH_WATER;
        let want_deliveries = !backed_up && conn.window_open();
        let event = poll_fn(|cx| {
            if !wbuf.is_empty() {
                match t.poll_write_from(cx, &mut wbuf) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Event::Written),
                    Poll::Ready(Err(_)) => return Poll::Ready(Event::WriteFailed),
                    Poll::Pending => {}
                }
            }
            if let Poll::Ready(r) = mailbox.poll_ready(cx, generation, want_deliveries) {
                return Poll::Ready(Event::Mailbox(r));
            }
            if !backed_up {
                if let Poll::Ready(r) = t.poll_read_into(cx, rbuf) {
                    return Poll::Ready(Event::Read(r));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Mailbox(Ready::Kicked(k)) => return CloseCause::Server(k.reason),
            Event::Mailbox(Ready::Deliveries) => {
                if let Err(reason) = conn.poll_deliveries(DELIVERY_BATCH, Instant::now()) {
                    return CloseCause::Server(reason);
                }
            }
            Event::Read(Ok(0) | Err(_)) | Event::WriteFailed => return CloseCause::ConnectionLost,
            Event::Read(Ok(_)) => {
                conn.touch(Instant::now());
                pending_input = true;
            }
            Event::Written => {}
        }
        if wbuf.is_empty() && wbuf.capacity() > 0 {
            // All sent: give the memory back while idle.
            wbuf = BytesMut::new();
        }
        if rbuf.is_empty() && rbuf.capacity() > 0 && !pending_input {
            *rbuf = BytesMut::new();
        }
    }
}
