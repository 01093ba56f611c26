//! A minimal blocking MQTT client over TCP for tests that need exact
//! control of the packets sent and read (the broker's own codec).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use certmq_codec::*;

pub struct Raw {
    s: TcpStream,
    buf: BytesMut,
    protocol: Protocol,
}

impl Raw {
    /// Connects (clean start off, session expiry 1 h for MQTT 5) and
    /// returns the client and CONNACK's session present flag.
    pub fn connect(addr: SocketAddr, id: &str, protocol: Protocol) -> (Raw, bool) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Raw {
            s,
            buf: BytesMut::new(),
            protocol,
        };
        let mut properties = Properties::default();
        if protocol.is_v5() {
            properties.session_expiry_interval = Some(3600);
        }
        c.send(Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: false,
            keep_alive: 60,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties,
        })));
        match c.recv() {
            Packet::ConnAck(a) if a.reason == ReasonCode::SUCCESS => {
                let present = a.session_present;
                (c, present)
            }
            other => panic!("{other:?}"),
        }
    }

    /// A second handle on the socket (e.g. for a writer thread).
    pub fn stream(&self) -> TcpStream {
        self.s.try_clone().unwrap()
    }

    pub fn set_read_timeout(&self, limit: Duration) {
        self.s.set_read_timeout(Some(limit)).unwrap();
    }

    pub fn try_send(&mut self, p: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        encode(&p, self.protocol, &mut out);
        self.s.write_all(&out)
    }

    pub fn send(&mut self, p: Packet) {
        self.try_send(p).unwrap();
    }

    /// The next packet; `None` when the connection ended.
    pub fn try_recv(&mut self) -> Option<Packet> {
        loop {
            match decode(&mut self.buf, Some(self.protocol), 1 << 20) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("bad packet from the broker: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn recv(&mut self) -> Packet {
        self.try_recv().expect("the broker closed the connection")
    }

    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        }));
        match self.recv() {
            Packet::SubAck(a) => assert!(!a.reasons[0].is_error(), "{a:?}"),
            other => panic!("{other:?}"),
        }
    }

    /// The next PUBLISH (acknowledged when QoS 1): (topic, payload).
    pub fn next_message(&mut self) -> (String, Vec<u8>) {
        loop {
            if let Packet::Publish(p) = self.recv() {
                if p.qos == QoS::AtLeastOnce {
                    self.send(Packet::PubAck(PubResponse {
                        packet_id: p.packet_id,
                        reason: ReasonCode::SUCCESS,
                        properties: Properties::default(),
                    }));
                }
                return (p.topic.to_string(), p.payload.to_vec());
            }
        }
    }

    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, packet_id: u16, dup: bool) {
        self.send(publish(topic, payload, qos, packet_id, dup));
    }
}

/// `p` as bytes on the wire.
pub fn encoded(p: &Packet, protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, protocol, &mut out);
    out
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, packet_id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        payload: bytes::Bytes::copy_from_slice(payload),
        properties: Properties::default(),
    })
}
