//! The admin listener's connection handling: HTTP/1.1 with a header
//! timeout (which also closes idle keep-alive connections), a read
//! timeout for slow bodies, and a connection limit, so that idle or
//! slow clients cannot hold sockets for ever or exhaust file descriptors.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};

/// Limits of the admin listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
    /// A request's headers must arrive within this; an idle keep-alive
    /// connection is closed after it too.
    pub header_timeout: Duration,
    /// A connection that sends nothing for this long while a read is
    /// pending (a stalled body) is closed.
    pub read_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then lets open
/// requests finish (up to 5 s). With `tls`, every connection is a TLS
/// server handshake first (within the header timeout). Each request
/// carries the peer address (`ConnectInfo`) and whether it came over TLS
/// (`console::Https`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ServeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: back off, keep serving.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection limit reached; connection closed");
            drop(stream);
            continue;
        };
        let https = acceptor.is_some();
        let app = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::extract::Request<_>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req.extensions_mut().insert(crate::console::Https(https));
                req
            },
        );
        let service = TowerToHyperService::new(app);
        let mut closing = closing.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream: Box<dyn Io> = match acceptor {
                None => Box::new(stream),
                Some(a) => {
                    match tokio::time::timeout(limits.header_timeout, a.accept(stream)).await {
                        Ok(Ok(s)) => Box::new(s),
                        _ => return,
                    }
                }
            };
            let io = TokioIo::new(ReadTimeout::new(stream, limits.read_timeout));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(io, service);
            let mut conn = pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    let _ = closing_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(6), slots.acquire_many(all)).await;
    Ok(())
}

/// A plain or TLS admin connection.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream whose pending reads fail after `limit` without progress.
struct ReadTimeout {
    inner: Box<dyn Io>,
    limit: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl ReadTimeout {
    fn new(inner: Box<dyn Io>, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl AsyncRead for ReadTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let next = Instant::now() + this.limit;
                this.sleep.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(this.sleep.as_mut().poll(cx));
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
        }
    }
}

impl AsyncWrite for ReadTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = ready!(Pin::new(&mut this.inner).poll_write(cx, buf));
        // Writing a response is progress too.
        let next = Instant::now() + this.limit;
        this.sleep.as_mut().reset(next);
        Poll::Ready(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
