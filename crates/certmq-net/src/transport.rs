//! The seam between byte transports and the connection driver. MQTT over
//! TCP (and, later, TLS) is a byte stream; MQTT over WebSocket carries the
//! same bytes in binary messages. Both look the same to the driver.

use std::future::Future;
use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What the driver needs from a transport. Reads must be cancel-safe: the
/// driver selects on them together with its mailbox and timers.
pub trait Transport: Send {
    /// Appends received bytes to `buf`; `Ok(0)` at end of stream.
    fn read_into(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
    /// Sends `data` and flushes it.
    fn send(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the write side, best effort.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// Bytes read per read call at most; the buffer exists only while reading.
const READ_CHUNK: usize = 8 * 1024;

/// Plain TCP. A busy connection keeps its read buffer; one that has to wait
/// for data gives an empty buffer back first, so an idle connection holds
/// no read buffer at all.
pub struct TcpTransport(pub tokio::net::TcpStream);

impl Transport for TcpTransport {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            if buf.capacity() - buf.len() >= READ_CHUNK / 4 {
                match self.0.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => return other,
                }
            }
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
            // poll_read_ready keeps no waiter state in this future.
            std::future::poll_fn(|cx| self.0.poll_read_ready(cx)).await?;
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            match self.0.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        self.0.write_all(&data).await
    }

    async fn shutdown(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// A byte stream (TLS, later); buffers as the stream does.
pub struct StreamTransport<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for StreamTransport<S> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        self.0.read_buf(buf).await
    }

    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        self.0.write_all(&data).await?;
        self.0.flush().await
    }

    async fn shutdown(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// MQTT over WebSocket (MQTT 5 §6): binary messages, packets may span them.
pub struct WsTransport<S>(pub WebSocketStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for WsTransport<S> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.0.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(0),
                Some(Ok(Message::Binary(data))) => {
                    if data.is_empty() {
                        continue;
                    }
                    buf.extend_from_slice(&data);
                    return Ok(data.len());
                }
                Some(Ok(Message::Text(_))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket requires binary frames",
                    ))
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
    }

    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        self.0
            .send(Message::Binary(data))
            .await
            .map_err(io::Error::other)
    }

    async fn shutdown(&mut self) {
        let _ = self.0.close(None).await;
    }
}
