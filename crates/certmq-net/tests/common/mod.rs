//! An in-process broker on 127.0.0.1:0 and a raw MQTT client built on the
//! codec, for protocol cases no off-the-shelf client can produce.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use certmq_codec::*;
use certmq_core::{Broker, BrokerConfig};
use certmq_net::{ListenerConfig, NetConfig, Protocol as Listen, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestBroker {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub broker: std::sync::Arc<Broker>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::with(BrokerConfig::default(), NetConfig::default()).await
    }

    pub async fn with(config: BrokerConfig, mut net: NetConfig) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        net.listeners = vec![
            ListenerConfig {
                protocol: Listen::MqttTcp,
                addr: any,
                allow_anonymous: None,
                authentication: None,
                client_auth: Default::default(),
            },
            ListenerConfig {
                protocol: Listen::MqttWs,
                addr: any,
                allow_anonymous: None,
                authentication: None,
                client_auth: Default::default(),
            },
        ];
        let broker = Broker::new(config);
        let server = Server::bind(broker.clone(), net, None).await.unwrap();
        let addrs = server.local_addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self {
            tcp: addrs[0].addr,
            ws: addrs[1].addr,
            broker,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
    }
}

pub struct Client {
    pub stream: TcpStream,
    pub protocol: Protocol,
    buf: BytesMut,
}

pub fn connect_packet(protocol: Protocol, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

impl Client {
    pub async fn raw(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            protocol: Protocol::V5,
            buf: BytesMut::new(),
        }
    }

    /// Connects and expects a successful CONNACK.
    pub async fn connect(addr: SocketAddr, protocol: Protocol, client_id: &str) -> Client {
        let (c, ack) = Self::connect_with(addr, connect_packet(protocol, client_id, true)).await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS, "CONNACK {ack:?}");
        c
    }

    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Client, ConnAck) {
        let mut c = Client::raw(addr).await;
        c.protocol = connect.protocol;
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => (c, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, self.protocol, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet, or None when the broker closed the connection.
    /// Panics when nothing arrives in time.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("no packet from the broker in time")
    }

    /// The next packet if one arrives within `d`.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Packet> {
        tokio::time::timeout(d, self.recv_inner())
            .await
            .ok()
            .flatten()
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, Some(self.protocol), usize::MAX)
                .expect("broker sent a malformed packet")
            {
                return Some(p);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(
            filter,
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
            Properties::default(),
        )
        .await
    }

    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        properties: Properties,
    ) -> SubAck {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), options)],
            properties,
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(a)) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        packet_id: u16,
    ) {
        self.send(&Packet::Publish(publish(
            topic, payload, qos, retain, packet_id,
        )))
        .await;
    }

    /// The next PUBLISH, skipping nothing: any other packet fails the test.
    pub async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts the broker closes the connection, after an optional DISCONNECT;
    /// returns the DISCONNECT reason if one was sent.
    pub async fn expect_close(&mut self) -> Option<ReasonCode> {
        let mut reason = None;
        loop {
            match self.recv().await {
                None => return reason,
                Some(Packet::Disconnect(d)) => reason = Some(d.reason),
                Some(other) => panic!("expected the connection to close, got {other:?}"),
            }
        }
    }

    pub async fn expect_silence(&mut self, d: Duration) {
        if let Some(p) = self.try_recv(d).await {
            panic!("expected nothing, got {p:?}");
        }
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, retain: bool, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
        payload: Bytes::copy_from_slice(payload),
        properties: Properties::default(),
    }
}
