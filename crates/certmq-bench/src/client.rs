//! A minimal MQTT client on the certmq codec, built for load: one buffer
//! per direction, batched writes, no per-message allocation beyond the codec.

use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use certmq_codec::{
    decode, encode, Connect, Packet, Properties, Protocol, PubResponse, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::tls::{Stream, TlsSetup};

pub struct Client {
    stream: Stream,
    pub protocol: Protocol,
    rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// CONNACK's session present flag.
    pub session_present: bool,
}

/// Opens a TCP connection, from `source` when given (several 127.0.0.x
/// sources get past the ephemeral-port limit of one address).
pub async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Client {
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        protocol: Protocol,
        client_id: &str,
        keep_alive: u16,
        tls: Option<&TlsSetup>,
    ) -> anyhow::Result<Client> {
        Self::connect_as(addr, source, protocol, client_id, keep_alive, tls, None).await
    }

    /// [`Client::connect`] with a user name and password.
    pub async fn connect_as(
        addr: SocketAddr,
        source: Option<IpAddr>,
        protocol: Protocol,
        client_id: &str,
        keep_alive: u16,
        tls: Option<&TlsSetup>,
        login: Option<(String, String)>,
    ) -> anyhow::Result<Client> {
        let tcp = tcp(addr, source).await?;
        let stream = match tls {
            Some(tls) => tls.connect(tcp).await?,
            None => Stream::Tcp(tcp),
        };
        let mut c = Client {
            stream,
            protocol,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(16 * 1024),
            session_present: false,
        };
        c.handshake(client_id, keep_alive, true, login).await?;
        Ok(c)
    }

    /// A plain TCP connection that resumes (or starts) a session kept
    /// after it closes (clean session off; MQTT 5: expiry 1 hour).
    pub async fn connect_persistent(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: &str,
    ) -> anyhow::Result<Client> {
        let mut c = Client {
            stream: Stream::Tcp(tcp(addr, None).await?),
            protocol,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(16 * 1024),
            session_present: false,
        };
        c.handshake(client_id, 60, false, None).await?;
        Ok(c)
    }

    async fn handshake(
        &mut self,
        client_id: &str,
        keep_alive: u16,
        clean_start: bool,
        login: Option<(String, String)>,
    ) -> anyhow::Result<()> {
        let mut properties = Properties::default();
        if !clean_start && self.protocol.is_v5() {
            properties.session_expiry_interval = Some(3600);
        }
        let connect = Connect {
            protocol: self.protocol,
            clean_start,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: login.as_ref().map(|l| l.0.clone()),
            password: login.map(|l| bytes::Bytes::from(l.1.into_bytes())),
            properties,
        };
        self.send(&Packet::Connect(Box::new(connect))).await?;
        match self.recv().await? {
            Packet::ConnAck(a) if a.reason == ReasonCode::SUCCESS => {
                self.session_present = a.session_present;
                Ok(())
            }
            Packet::ConnAck(a) => bail!("CONNACK refused: {}", a.reason),
            other => bail!("expected CONNACK, got {}", other.name()),
        }
    }

    pub fn queue(&mut self, p: &Packet) {
        encode(p, self.protocol, &mut self.wbuf);
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    pub async fn send(&mut self, p: &Packet) -> anyhow::Result<()> {
        self.queue(p);
        self.flush().await
    }

    /// The next packet, waiting for it.
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.try_decode()? {
                return Ok(p);
            }
            self.read_more().await?;
        }
    }

    /// A packet already buffered, if any.
    pub fn try_decode(&mut self) -> anyhow::Result<Option<Packet>> {
        decode(&mut self.rbuf, Some(self.protocol), usize::MAX)
            .map_err(|e| anyhow!("broker sent a bad packet: {e}"))
    }

    pub fn rbuf_mut(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    /// Reads whatever arrived; cancel-safe.
    pub async fn read_more(&mut self) -> anyhow::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => bail!("broker closed the connection"),
            _ => Ok(()),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let s = Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        };
        self.send(&Packet::Subscribe(s)).await?;
        loop {
            match self.recv().await? {
                Packet::SubAck(a) if a.reasons.iter().all(|r| !r.is_error()) => return Ok(()),
                Packet::SubAck(a) => bail!("subscription refused: {:?}", a.reasons),
                _ => continue,
            }
        }
    }

    pub async fn disconnect(mut self) -> anyhow::Result<()> {
        self.send(&Packet::Disconnect(Default::default())).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

pub fn ack(kind: fn(PubResponse) -> Packet, packet_id: u16) -> Packet {
    kind(PubResponse::new(packet_id, ReasonCode::SUCCESS))
}
