//! A blocking MQTT-over-TLS test client (rustls, the project's codec), with
//! or without a client certificate, that reports TLS failures, CONNACK
//! reason codes and DISCONNECT reason codes exactly.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use certmq_codec::{
    decode, encode, Connect, Packet, Properties, Protocol, QoS, Subscribe, SubscriptionOptions,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub struct Client {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: BytesMut,
    protocol: Protocol,
}

#[derive(Debug)]
pub enum Failure {
    /// The TLS handshake failed (the text is rustls's error).
    Tls(String),
    /// CONNACK with this reason code (MQTT 5) / return code (MQTT 3).
    Refused(u8),
    Other(String),
}

fn other(e: impl std::fmt::Display) -> Failure {
    Failure::Other(e.to_string())
}

/// A client configuration (kept to resume sessions across connections).
pub fn config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, Failure> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.map_err(other)?).map_err(other)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(other)?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(other)?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(other)?;
            b.with_client_auth_cert(chain, key).map_err(other)?
        }
        None => b.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

pub fn connect(
    addr: SocketAddr,
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    client_id: &str,
    protocol: Protocol,
) -> Result<Client, Failure> {
    connect_with(addr, config(ca_pem, identity)?, client_id, protocol)
}

pub fn connect_with(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    client_id: &str,
    protocol: Protocol,
) -> Result<Client, Failure> {
    let connect = Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    connect_packet(addr, config, connect).map(|(c, _)| c)
}

/// Connects with `connect` as the CONNECT packet; returns the client and
/// whether the broker had a session for it (CONNACK session present).
pub fn connect_packet(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    connect: Connect,
) -> Result<(Client, bool), Failure> {
    let protocol = connect.protocol;
    let name = ServerName::try_from("localhost").map_err(other)?;
    let conn = rustls::ClientConnection::new(config, name).map_err(other)?;
    let tcp = TcpStream::connect(addr).map_err(other)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(other)?;
    let mut c = Client {
        s: rustls::StreamOwned::new(conn, tcp),
        buf: BytesMut::new(),
        protocol,
    };
    while c.s.conn.is_handshaking() {
        c.s.conn
            .complete_io(&mut c.s.sock)
            .map_err(|e| Failure::Tls(e.to_string()))?;
    }
    // With TLS 1.3 a refused client certificate arrives as an alert on the
    // first read after the client's handshake completed.
    c.send(&Packet::Connect(Box::new(connect)))
        .map_err(Failure::Tls)?;
    match c.recv(Duration::from_secs(10)) {
        Ok(Packet::ConnAck(a)) if a.reason.0 == 0 => Ok((c, a.session_present)),
        Ok(Packet::ConnAck(a)) => Err(Failure::Refused(a.reason.0)),
        Ok(p) => Err(Failure::Other(format!(
            "expected CONNACK, got {}",
            p.name()
        ))),
        Err(e) => Err(Failure::Tls(e)),
    }
}

impl Client {
    /// Whether the TLS session was resumed.
    pub fn resumed(&self) -> bool {
        self.s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    pub fn send(&mut self, p: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        encode(p, self.protocol, &mut out);
        self.s.write_all(&out).map_err(|e| e.to_string())?;
        self.s.flush().map_err(|e| e.to_string())
    }

    pub fn recv(&mut self, limit: Duration) -> Result<Packet, String> {
        self.s
            .sock
            .set_read_timeout(Some(limit))
            .map_err(|e| e.to_string())?;
        loop {
            if let Some(p) =
                decode(&mut self.buf, Some(self.protocol), 1 << 20).map_err(|e| e.to_string())?
            {
                return Ok(p);
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn subscribe(&mut self, filter: &str) -> Result<(), String> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        }))?;
        match self.recv(Duration::from_secs(10))? {
            Packet::SubAck(_) => Ok(()),
            p => Err(format!("expected SUBACK, got {}", p.name())),
        }
    }

    /// Waits for the broker's DISCONNECT and returns its reason code.
    pub fn disconnected(&mut self, limit: Duration) -> Result<u8, String> {
        loop {
            if let Packet::Disconnect(d) = self.recv(limit)? {
                return Ok(d.reason.0);
            }
        }
    }

    /// Waits for the broker's DISCONNECT and returns its reason code and
    /// reason string.
    pub fn disconnect_packet(&mut self, limit: Duration) -> Result<(u8, Option<String>), String> {
        loop {
            if let Packet::Disconnect(d) = self.recv(limit)? {
                return Ok((d.reason.0, d.properties.reason_string));
            }
        }
    }

    /// Still connected: a PINGREQ gets its PINGRESP.
    pub fn alive(&mut self) -> bool {
        self.send(&Packet::PingReq).is_ok()
            && matches!(self.recv(Duration::from_secs(5)), Ok(Packet::PingResp))
    }
}
