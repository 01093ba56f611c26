//! The seam between byte transports and the connection driver. MQTT over
//! TCP (and TLS) is a byte stream; MQTT over WebSocket carries the same bytes
//! in binary messages. The driver polls both the same way, reading and
//! writing in one event step, so a client that stops reading can neither
//! block the broker's kicks nor its own close.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes read per read call at most.
const READ_CHUNK: usize = 16 * 1024;

/// What the driver needs from a transport.
pub trait Transport: Send + Unpin {
    /// Appends received bytes to `buf`; `Ok(0)` at end of stream.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>>;
    /// Writes and flushes all of `buf`, consuming it as it goes.
    fn poll_write_from(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut)
        -> Poll<io::Result<()>>;
    /// Closes the write side.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Reads into a stack chunk and copies only what arrived into `buf`, so
/// buffers are sized to the data: an idle connection holds none, and a
/// queued message's payload never pins a large read chunk.
fn poll_read_chunked<S: AsyncRead + Unpin>(
    s: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    // Uninitialised: zeroing 16 KiB on every poll showed in fan-out
    // profiles, where most polls find nothing to read.
    let mut chunk = [const { MaybeUninit::<u8>::uninit() }; READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut chunk);
    ready!(Pin::new(s).poll_read(cx, &mut rb))?;
    let got = rb.filled();
    buf.extend_from_slice(got);
    Ok(got.len()).into()
}

fn poll_write_all<S: AsyncWrite + Unpin>(
    s: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<()>> {
    while !buf.is_empty() {
        let n = ready!(Pin::new(&mut *s).poll_write(cx, buf))?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into()).into();
        }
        buf.advance(n);
    }
    Pin::new(s).poll_flush(cx)
}

/// Plain TCP.
pub type TcpTransport = StreamTransport<tokio::net::TcpStream>;

/// Any byte stream (TCP, TLS).
pub struct StreamTransport<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for StreamTransport<S> {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        poll_read_chunked(&mut self.0, cx, buf)
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<()>> {
        poll_write_all(&mut self.0, cx, buf)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// MQTT over WebSocket (MQTT 5 §6): binary messages, packets may span them.
pub struct WsTransport<S> {
    ws: WebSocketStream<S>,
    /// A message was handed to the sink and still needs flushing.
    flushing: bool,
    /// Our Close frame is out; waiting for the peer's.
    closing: bool,
}

impl<S> WsTransport<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            flushing: false,
            closing: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for WsTransport<S> {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        loop {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Ok(0).into(),
                Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                    buf.extend_from_slice(&data);
                    return Ok(data.len()).into();
                }
                Some(Ok(Message::Text(_))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket requires binary frames",
                    ))
                    .into()
                }
                // Empty binary frames; pings are answered by tungstenite itself.
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(io::Error::other(e)).into(),
            }
        }
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<()>> {
        if !buf.is_empty() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io::Error::other)?;
            let data = buf.split().freeze();
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(data))
                .map_err(io::Error::other)?;
            self.flushing = true;
        }
        if self.flushing {
            ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(io::Error::other)?;
            self.flushing = false;
        }
        Ok(()).into()
    }

    /// Sends Close, then waits for the peer's Close (the end of the
    /// stream), so the peer's reply does not meet a closed socket. The
    /// driver bounds the wait.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing {
            ready!(Pin::new(&mut self.ws).poll_close(cx)).map_err(io::Error::other)?;
            self.closing = true;
        }
        loop {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Err(_)) => return Ok(()).into(),
                Some(Ok(_)) => continue,
            }
        }
    }
}
