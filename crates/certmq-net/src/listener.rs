//! Accept loops: one per listener, one task per accepted connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use crate::driver::{self, PeerInfo};
use crate::transport::{StreamTransport, WsTransport};
use crate::{ListenerConfig, Protocol, Shared};

pub(crate) async fn accept_loop(
    socket: TcpListener,
    config: ListenerConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.changed() => return,
            accepted = socket.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let count = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        if count > shared.config.max_connections {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(peer = %addr, "maximum connections reached; connection refused");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let peer = Box::new(PeerInfo {
            addr,
            protocol: config.protocol,
            methods: shared.chains.get(config.protocol),
            certificates: Vec::new(),
        });
        shared.live.opened(config.protocol);
        let guard = ConnectionGuard {
            shared: shared.clone(),
            protocol: config.protocol,
            live_id: 0,
        };
        // The driver future is spawned as is (no wrapping async block), so
        // what it captures is stored once per connection.
        match config.protocol {
            Protocol::MqttTcp => {
                tokio::spawn(driver::run(
                    StreamTransport(stream),
                    guard,
                    peer,
                    stop.clone(),
                ));
            }
            Protocol::MqttWs => {
                tokio::spawn(serve_ws(stream, guard, peer, stop.clone()));
            }
            Protocol::MqttTls | Protocol::MqttWss => {
                let Some(tls) = tls.clone() else {
                    // Server::bind refuses TLS listeners without a config.
                    continue;
                };
                let ws = config.protocol.is_websocket();
                let required = config.client_auth == crate::ClientAuth::Required;
                tokio::spawn(serve_tls(
                    stream,
                    tls,
                    (ws, required),
                    guard,
                    peer,
                    stop.clone(),
                ));
            }
        }
    }
}

/// Records a client refused before CONNECT (no client id yet), with the
/// certificate it presented when there was one.
fn refused_at_handshake(guard: &ConnectionGuard, peer: &PeerInfo, refused: certmq_pki::Refused) {
    guard.shared.live.reject(crate::RejectionRecord {
        at: crate::live::now_unix(),
        reason: refused.reason.as_str(),
        protocol: peer.protocol,
        peer: peer.addr,
        client_id: None,
        certificate_id: refused.certificate_id,
        ca_id: refused.ca_id,
        username: None,
    });
}

/// The TLS handshake (within the connect timeout), then MQTT or WebSocket
/// over it. The peer's certificate chain goes to the driver in `PeerInfo`.
async fn serve_tls(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    (ws, cert_required): (bool, bool),
    guard: ConnectionGuard,
    mut peer: Box<PeerInfo>,
    stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake =
        tokio::time::timeout(guard.shared.config.connect_timeout, acceptor.accept(stream));
    let tls_stream = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            guard
                .shared
                .live
                .tls_failure(crate::live::tls_failure_reason(&e));
            tracing::debug!(peer = %peer.addr, error = %e, "TLS handshake failed");
            if let Some(reason) = crate::live::rustls_error(&e).and_then(certmq_pki::rejection_of) {
                refused_at_handshake(&guard, &peer, reason);
            }
            return;
        }
        Err(_) => {
            guard.shared.live.tls_failure("timeout");
            tracing::debug!(peer = %peer.addr, "TLS handshake timed out");
            return;
        }
    };
    if let Some(chain) = tls_stream.get_ref().1.peer_certificates() {
        peer.certificates = chain
            .iter()
            .map(|c| bytes::Bytes::copy_from_slice(c.as_ref()))
            .collect();
    }
    if cert_required && peer.certificates.is_empty() {
        // rustls enforces this during the handshake; a resumed session must
        // carry the certificate too, or the client is not let through.
        refused_at_handshake(
            &guard,
            &peer,
            certmq_pki::Refused {
                reason: certmq_pki::Rejection::NoCertificate,
                certificate_id: None,
                ca_id: None,
            },
        );
        return;
    }
    if ws {
        Box::pin(serve_ws(tls_stream, guard, peer, stop)).await;
    } else {
        // Boxed: the TLS state is large, and only TLS tasks pay for it.
        Box::pin(driver::run(StreamTransport(tls_stream), guard, peer, stop)).await;
    }
}

/// Held by every connection task: counts it, and keeps the server's
/// shutdown from completing until the task ends.
pub(crate) struct ConnectionGuard {
    pub shared: Arc<Shared>,
    pub protocol: Protocol,
    /// The connection's entry in the live list, once CONNECT is accepted.
    pub live_id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        self.shared.live.closed(self.protocol);
        if self.live_id != 0 {
            self.shared.live.unregister(self.live_id);
        }
    }
}

/// The WebSocket handshake: path `/mqtt`, subprotocol `mqtt` when offered.
// The callback's error type is fixed by tungstenite.
#[allow(clippy::result_large_err)]
async fn serve_ws<S>(
    stream: S,
    guard: ConnectionGuard,
    peer: Box<PeerInfo>,
    stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/mqtt" {
            let mut err = ErrorResponse::new(Some("MQTT is served at /mqtt".into()));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| matches!(*p, "mqtt" | "mqttv3.1"))
            .map(str::to_owned);
        if let Some(p) = offered {
            if let Ok(v) = HeaderValue::from_str(&p) {
                resp.headers_mut().insert("sec-websocket-protocol", v);
            }
        }
        Ok(resp)
    };
    // A WebSocket message or frame larger than one maximum-size MQTT packet
    // (plus a little for packets sharing it) is refused as it arrives,
    // before it is buffered: tungstenite's default is 64 MiB.
    let max_in = (guard.shared.broker.config().max_packet_size as usize).saturating_add(4096);
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_in))
        .max_frame_size(Some(max_in));
    let handshake = tokio::time::timeout(
        guard.shared.config.connect_timeout,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config)),
    );
    match handshake.await {
        // Boxed: the WebSocket state is large, and only WS tasks pay for it.
        Ok(Ok(ws)) => Box::pin(driver::run(WsTransport::new(ws), guard, peer, stop)).await,
        Ok(Err(e)) => tracing::debug!(peer = %peer.addr, error = %e, "WebSocket handshake failed"),
        Err(_) => tracing::debug!(peer = %peer.addr, "WebSocket handshake timed out"),
    }
}
