//! One network connection's protocol state machine, from an accepted CONNECT
//! to its close. Sans-I/O: packets come in through [`Conn::handle`], packets
//! to send collect in [`Conn::output`], time is passed in as `now`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::Time;

use certmq_codec::{
    encoded_len, ConnAck, Connect, Packet, Properties, Protocol, PubResponse, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

use crate::broker::message_from;
use crate::session::Timer;
use crate::topic::{level_count, parse_filter, parse_filter_within};
use crate::tree::Subscriber;
use crate::{Broker, Delivery, Mailbox, Message, SessionEntry};

mod flow;

/// What the caller does after a packet was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The client sent DISCONNECT; close after flushing the output.
    Disconnect {
        publish_will: bool,
    },
}

/// Why a connection ends; decides the will and what is sent last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The client sent DISCONNECT (reason 0x04 asks for the will).
    ClientDisconnect { publish_will: bool },
    /// The broker closes for this reason (protocol error, kick, timeout...).
    Server(ReasonCode),
    /// Closed by a kick through the session's mailbox (takeover, keep
    /// alive, an administrative action), with its reason string.
    Kicked(crate::Kick),
    /// The network connection went away without DISCONNECT.
    ConnectionLost,
}

/// Who is connecting, as established by the transport.
#[derive(Debug, Clone, Default)]
pub struct ConnectContext {
    /// The client may connect (anonymous allowed, or a credential checked).
    pub authorized: bool,
    /// The identity the client authenticated as. A session belongs to the
    /// identity that created it.
    pub identity: Identity,
    /// What authorization policies may speak of (the client id is added
    /// by the core once known).
    pub username: Option<Arc<str>>,
    pub cert: Option<Arc<crate::CertFacts>>,
    pub peer_ip: Option<std::net::IpAddr>,
}

/// Who a client is, for session ownership: another identity may not take
/// over or resume a session (SPEC 2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Identity {
    /// No credentials (a listener that allows anonymous clients).
    #[default]
    Anonymous,
    /// A device certificate, by its certificate id.
    Certificate(Arc<str>),
    /// An MQTT user, by user name.
    User(Arc<str>),
}

/// Why CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefused {
    /// Refused with this CONNACK reason code.
    Code(ReasonCode),
    /// A live or persisted session with this client id belongs to another
    /// identity (CONNACK "not authorized").
    ClientIdInUseByAnotherIdentity,
    /// An authorization policy denies the client `connect` (CONNACK "not
    /// authorized").
    DeniedByPolicy,
    /// An authorization policy denies publishing the will's topic.
    WillDeniedByPolicy,
}

impl ConnectRefused {
    /// The CONNACK reason code to send.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            ConnectRefused::Code(c) => c,
            ConnectRefused::ClientIdInUseByAnotherIdentity
            | ConnectRefused::DeniedByPolicy
            | ConnectRefused::WillDeniedByPolicy => ReasonCode::NOT_AUTHORIZED,
        }
    }

    /// The refusal's name in the refusal log, when it is an authorization
    /// outcome worth recording (not a protocol error).
    pub fn record_name(self) -> Option<&'static str> {
        match self {
            ConnectRefused::Code(_) => None,
            ConnectRefused::ClientIdInUseByAnotherIdentity => {
                Some("CLIENT_ID_IN_USE_BY_ANOTHER_IDENTITY")
            }
            ConnectRefused::DeniedByPolicy => Some("CONNECT_DENIED_BY_POLICY"),
            ConnectRefused::WillDeniedByPolicy => Some("WILL_DENIED_BY_POLICY"),
        }
    }
}

impl From<ReasonCode> for ConnectRefused {
    fn from(c: ReasonCode) -> Self {
        ConnectRefused::Code(c)
    }
}

pub struct Conn {
    broker: Arc<Broker>,
    entry: Arc<SessionEntry>,
    generation: u64,
    protocol: Protocol,
    keep_alive: u16,
    /// QoS 1/2 deliveries in flight at most: the client's Receive Maximum
    /// capped by `max_inflight` as it was when the connection started.
    window: u16,
    client_max_packet_size: u32,
    client_topic_alias_maximum: u16,
    /// The largest packet accepted from the client (the broker's limit
    /// when the connection started, as CONNACK announced it).
    max_packet_size: u32,
    /// Topic aliases and flow-control state, allocated on first use (most
    /// connections never need them): boxed so an idle connection holds 8
    /// bytes, not two empty maps and a queue.
    extra: Option<Box<Extra>>,
    /// Boxed: the connection task's size is a memory target.
    will: Option<Box<LastWill>>,
    expiry_was_zero: bool,
    out: Vec<Packet>,
}

/// What a connection rarely needs.
#[derive(Debug, Default)]
struct Extra {
    aliases: Aliases,
    /// Set while a publish of this connection waits for room (flow control).
    throttle: Option<flow::Throttle>,
}

/// The will of the connection and its delay (seconds).
#[derive(Debug)]
struct LastWill {
    message: Arc<Message>,
    delay: u32,
}

/// A connection's topic aliases in both directions (MQTT 5).
#[derive(Debug, Default)]
struct Aliases {
    incoming: HashMap<u16, Arc<str>>,
    outgoing: HashMap<Arc<str>, u16>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("client_id", &self.entry.client_id)
            .field("generation", &self.generation)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Handles CONNECT: authorizes, resolves the session (clean start,
    /// resume, takeover of a live connection) and returns the connection with
    /// its CONNACK (and any redeliveries) queued in its output. A refused
    /// CONNECT returns the CONNACK reason code to send before closing.
    pub fn connect(
        self: &Arc<Self>,
        connect: Connect,
        ctx: &ConnectContext,
        now: Time,
    ) -> Result<Conn, ConnectRefused> {
        let v5 = connect.protocol.is_v5();
        let props = &connect.properties;
        if props.authentication_method.is_some() {
            return Err(ReasonCode::BAD_AUTHENTICATION_METHOD.into());
        }
        if !ctx.authorized {
            return Err(ReasonCode::NOT_AUTHORIZED.into());
        }
        if connect
            .will
            .as_ref()
            .is_some_and(|w| level_count(&w.topic) > self.config().max_topic_levels)
        {
            return Err(ReasonCode::TOPIC_NAME_INVALID.into());
        }
        let mut assigned = None;
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            let allowed = match connect.protocol {
                Protocol::V5 => true,
                Protocol::V3_1_1 => connect.clean_start,
                Protocol::V3_1 => false,
            };
            if !allowed {
                return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID.into());
            }
            let id: Arc<str> = format!("auto-{:016x}", self.next_id() ^ random_salt()).into();
            assigned = Some(id.to_string());
            id
        } else {
            connect.client_id.as_str().into()
        };
        let facts = Arc::new(crate::ClientFacts {
            client_id: client_id.clone(),
            username: ctx.username.clone(),
            cert: ctx.cert.clone(),
            peer_ip: ctx.peer_ip,
        });
        if let Some(a) = self.authorizer() {
            if !a.may_connect(&facts) {
                return Err(ConnectRefused::DeniedByPolicy);
            }
            if let Some(w) = &connect.will {
                if !a.may_publish(&facts, &w.topic, w.qos, w.retain) {
                    return Err(ConnectRefused::WillDeniedByPolicy);
                }
            }
        }

        let requested_expiry = if v5 {
            props.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested_expiry.min(self.config().max_session_expiry);
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if v5
            && (keep_alive > self.config().max_keep_alive
                || (keep_alive == 0 && self.config().max_keep_alive < u16::MAX))
        {
            keep_alive = self.config().max_keep_alive;
            server_keep_alive = Some(keep_alive);
        }

        let generation = self.next_id();
        let (entry, session_present) = {
            let mut sessions = self.sessions.lock();
            let existing = sessions.get(&client_id).cloned();
            let resumed = match existing {
                Some(entry) => {
                    let mut state = entry.state.lock();
                    if !state.ended
                        && state.identity.as_ref() != Some(&ctx.identity)
                        && !self.authorizer().is_some_and(|a| a.may_take_over(&facts))
                    {
                        // Neither a takeover nor a resume (nor a clean
                        // start that would discard it) by someone else,
                        // unless a policy lets this client take it.
                        return Err(ConnectRefused::ClientIdInUseByAnotherIdentity);
                    }
                    if state.owner != 0 {
                        entry
                            .mailbox
                            .kick(state.owner, ReasonCode::SESSION_TAKEN_OVER);
                    }
                    if connect.clean_start || state.ended {
                        // A new connection: a delayed will of the old
                        // session is not sent (MQTT 5 §3.1.3.2.2).
                        if self.discard_state(&entry, &mut state).is_some() {
                            self.record_will_gone(&entry.client_id, state.last_owner);
                        }
                        None
                    } else {
                        // Cancels a delayed will of the previous connection.
                        if state.take_ownership(generation, expiry, ctx.identity.clone()) {
                            self.record_will_gone(&entry.client_id, state.last_owner);
                        }
                        state.facts = Some(facts.clone());
                        // The subscriptions it kept answer to the policies
                        // as this connection's facts decide.
                        self.reauthorize_session(&entry, &mut state);
                        self.keep_or_forget(&entry, &state);
                        drop(state);
                        Some(entry)
                    }
                }
                None => None,
            };
            match resumed {
                Some(entry) => (entry, true),
                None => {
                    let entry = self.new_session(client_id.clone());
                    {
                        let mut state = entry.state.lock();
                        state.take_ownership(generation, expiry, ctx.identity.clone());
                        state.facts = Some(facts);
                        self.keep_or_forget(&entry, &state);
                    }
                    sessions.insert(client_id.clone(), entry.clone());
                    (entry, false)
                }
            }
        };
        entry.mailbox.set_online(true, self.millis(now));
        entry.state.lock().since_ms = self.millis(now);
        if let Some(f) = self.forwarder() {
            f.session_opened(&client_id, self.millis(now));
        }
        let limit_ms = u64::from(keep_alive) * 1500;
        entry.mailbox.set_keep_alive(limit_ms, self.millis(now));

        let (will, will_delay) = match &connect.will {
            Some(w) => (
                Some(Arc::new(message_from(
                    w.topic.as_str().into(),
                    // Owned: the will lives as long as the connection, and
                    // must not pin the read buffer its CONNECT came in.
                    bytes::Bytes::copy_from_slice(&w.payload),
                    w.qos,
                    w.retain,
                    &w.properties,
                    Some(entry.mailbox.id()),
                    now,
                ))),
                w.properties.will_delay_interval.unwrap_or(0),
            ),
            None => (None, 0),
        };
        if let Some(will) = &will {
            // Kept while the connection lives: if the broker dies with it,
            // the will still goes out after the restart.
            self.record(|| crate::persist::Change::Will {
                client_id: entry.client_id.clone(),
                generation,
                will: Some(crate::persist::WillRecord {
                    message: will.clone(),
                    delay: will_delay,
                    publish_at: None,
                }),
            });
        }

        let mut conn = Conn {
            broker: self.clone(),
            entry,
            generation,
            protocol: connect.protocol,
            keep_alive,
            window: props
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(self.config().max_inflight),
            client_max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            client_topic_alias_maximum: props.topic_alias_maximum.unwrap_or(0),
            max_packet_size: self.config().max_packet_size,
            extra: None,
            will: will.map(|message| {
                Box::new(LastWill {
                    message,
                    delay: will_delay,
                })
            }),
            expiry_was_zero: expiry == 0,
            out: Vec::new(),
        };
        let mut properties = Properties::default();
        if v5 {
            let c = self.config();
            properties.assigned_client_identifier = assigned;
            if expiry != requested_expiry {
                properties.session_expiry_interval = Some(expiry);
            }
            properties.server_keep_alive = server_keep_alive;
            properties.receive_maximum = Some(c.receive_maximum);
            properties.maximum_packet_size = Some(c.max_packet_size);
            properties.topic_alias_maximum = Some(c.topic_alias_maximum);
            if !c.retain_available {
                properties.retain_available = Some(0);
            }
        }
        conn.out.push(Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties,
        }));
        if session_present {
            conn.resend_inflight(now);
        }
        Ok(conn)
    }
}

impl Broker {
    /// After a connection took a session: a session that outlives its
    /// connection is recorded (online); one that no longer does loses its
    /// records.
    fn keep_or_forget(&self, entry: &SessionEntry, state: &crate::session::SessionState) {
        if self.keeps(state.expiry_interval) {
            entry.mailbox.set_persistent(true);
            self.record_session(entry, state, None);
        } else if entry.mailbox.is_persistent() {
            entry.mailbox.set_persistent(false);
            self.record(|| crate::persist::Change::SessionEnded {
                client_id: entry.client_id.clone(),
            });
        }
    }
}

/// A per-process value mixed into assigned client ids so they differ
/// between runs of the broker.
fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

impl Conn {
    pub fn client_id(&self) -> &Arc<str> {
        &self.entry.client_id
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.entry.mailbox
    }

    /// How long the connection may stay silent: 1.5 times the keep alive.
    /// [`Broker::tick`] enforces it; the transport reports activity with
    /// [`Conn::touch`].
    pub fn keep_alive_timeout(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// Records that the client was heard from at `now`.
    pub fn touch(&self, now: Time) {
        self.entry.mailbox.touch(self.broker.millis(now));
    }

    /// The largest packet the client accepts.
    pub fn client_max_packet_size(&self) -> u32 {
        self.client_max_packet_size
    }

    /// The largest packet accepted from the client.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Packets waiting to be sent, in order. The caller drains it.
    pub fn output(&mut self) -> &mut Vec<Packet> {
        &mut self.out
    }

    /// Whether a QoS 1/2 delivery could be sent now (the window is open).
    pub fn window_open(&self) -> bool {
        let state = self.entry.state.lock();
        state.inflight.len() < self.window()
    }

    fn window(&self) -> usize {
        usize::from(self.window)
    }

    /// Whether this connection still owns its session (not taken over).
    pub fn owns_session(&self) -> bool {
        self.entry.state.lock().owner == self.generation
    }

    /// Acknowledges a client's PUBLISH: PUBACK for QoS 1, PUBREC for QoS 2.
    fn ack_publish(&mut self, qos: QoS, packet_id: u16, code: ReasonCode) {
        let ack = self.response(packet_id, code);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.out.push(Packet::PubAck(ack)),
            QoS::ExactlyOnce => self.out.push(Packet::PubRec(ack)),
        }
    }

    /// A PUBACK/PUBREC/PUBREL/PUBCOMP body; MQTT 3 has no reason codes.
    fn response(&self, packet_id: u16, code: ReasonCode) -> PubResponse {
        let code = if self.protocol.is_v5() {
            code
        } else {
            ReasonCode::SUCCESS
        };
        PubResponse::new(packet_id, code)
    }

    /// Handles one packet from the client. `Err(reason)` means the broker
    /// closes the connection (with DISCONNECT `reason` for MQTT 5).
    /// While a publish waits for room (flow control), packets that must
    /// keep their order behind it are parked and handled by
    /// [`Conn::poll_resume`].
    pub fn handle(&mut self, packet: Packet, now: Time) -> Result<Flow, ReasonCode> {
        match self.park(packet) {
            Some(packet) => self.handle_now(packet, now),
            None => Ok(Flow::Continue),
        }
    }

    /// Handles a packet that need not (or no longer) wait, and records
    /// the durable changes it deferred.
    fn handle_now(&mut self, packet: Packet, now: Time) -> Result<Flow, ReasonCode> {
        let flow = self.handle_packet(packet, now);
        self.broker.record_deferred();
        flow
    }

    fn handle_packet(&mut self, packet: Packet, now: Time) -> Result<Flow, ReasonCode> {
        match packet {
            Packet::Publish(p) => self.handle_publish(p, now),
            Packet::PubAck(r) => {
                let key =
                    self.entry
                        .state
                        .lock()
                        .acknowledged(r.packet_id, QoS::AtLeastOnce, false);
                self.record_done(key);
                Ok(Flow::Continue)
            }
            Packet::PubRec(r) => {
                let reply = {
                    let mut state = self.entry.state.lock();
                    if r.reason.is_error() {
                        // Refused by the client: the delivery ends here.
                        match state.refused(r.packet_id) {
                            Some(key) => {
                                self.record_done(Some(key));
                                None
                            }
                            None => Some(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
                        }
                    } else {
                        match state.received(r.packet_id) {
                            Some(key) => {
                                if key != 0 {
                                    self.broker
                                        .defer(|| crate::persist::Change::Released { key });
                                }
                                Some(ReasonCode::SUCCESS)
                            }
                            None => Some(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
                        }
                    }
                };
                if let Some(code) = reply {
                    let p = self.response(r.packet_id, code);
                    self.out.push(Packet::PubRel(p));
                }
                Ok(Flow::Continue)
            }
            Packet::PubRel(r) => {
                let found = self.entry.state.lock().incoming_qos2_released(r.packet_id);
                if found && self.entry.mailbox.is_persistent() {
                    self.broker.record(|| crate::persist::Change::Qos2Released {
                        client_id: self.entry.client_id.clone(),
                        packet_id: r.packet_id,
                    });
                }
                let code = if found {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                let p = self.response(r.packet_id, code);
                self.out.push(Packet::PubComp(p));
                Ok(Flow::Continue)
            }
            Packet::PubComp(r) => {
                let key = self
                    .entry
                    .state
                    .lock()
                    .acknowledged(r.packet_id, QoS::ExactlyOnce, true);
                self.record_done(key);
                Ok(Flow::Continue)
            }
            Packet::Subscribe(s) => self.handle_subscribe(s, now),
            Packet::Unsubscribe(u) => {
                self.handle_unsubscribe(u);
                Ok(Flow::Continue)
            }
            Packet::PingReq => {
                self.out.push(Packet::PingResp);
                Ok(Flow::Continue)
            }
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.properties.session_expiry_interval {
                    if self.expiry_was_zero && expiry != 0 {
                        return Err(ReasonCode::PROTOCOL_ERROR);
                    }
                    let expiry = expiry.min(self.broker.config().max_session_expiry);
                    let mut state = self.entry.state.lock();
                    state.set_expiry(expiry);
                    self.broker.record_session(&self.entry, &state, None);
                }
                Ok(Flow::Disconnect {
                    publish_will: d.reason != ReasonCode::NORMAL_DISCONNECTION,
                })
            }
            // Enhanced authentication is not offered; a client never sends
            // CONNACK, SUBACK, UNSUBACK or PINGRESP.
            _ => Err(ReasonCode::PROTOCOL_ERROR),
        }
    }

    fn handle_publish(&mut self, p: Publish, now: Time) -> Result<Flow, ReasonCode> {
        let v5 = self.protocol.is_v5();
        let config = self.broker.config();
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(ReasonCode::PROTOCOL_ERROR);
        }
        let topic = match p.properties.topic_alias {
            Some(alias) => {
                if !v5 || alias == 0 || alias > config.topic_alias_maximum {
                    return Err(ReasonCode::TOPIC_ALIAS_INVALID);
                }
                if p.topic.is_empty() {
                    self.extra
                        .as_ref()
                        .and_then(|e| e.aliases.incoming.get(&alias))
                        .cloned()
                        .ok_or(ReasonCode::PROTOCOL_ERROR)?
                } else {
                    self.extra
                        .get_or_insert_with(Box::default)
                        .aliases
                        .incoming
                        .insert(alias, p.topic.clone());
                    p.topic
                }
            }
            None if p.topic.is_empty() => return Err(ReasonCode::PROTOCOL_ERROR),
            None => p.topic,
        };
        if level_count(&topic) > config.max_topic_levels {
            return Err(ReasonCode::TOPIC_NAME_INVALID);
        }
        if p.retain && !config.retain_available {
            return Err(ReasonCode::RETAIN_NOT_SUPPORTED);
        }
        if p.qos == QoS::ExactlyOnce {
            let state = self.entry.state.lock();
            if state.incoming_qos2.contains(&p.packet_id) {
                // A resent QoS 2 PUBLISH: already routed once.
                drop(state);
                self.ack_publish(QoS::ExactlyOnce, p.packet_id, ReasonCode::SUCCESS);
                return Ok(Flow::Continue);
            }
            if state.incoming_qos2.len() >= usize::from(config.receive_maximum) {
                return Err(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
            }
        }
        if let Some(a) = self.broker.authorizer() {
            let facts = self.entry.state.lock().facts.clone();
            if let Some(facts) = facts {
                if !a.may_publish(&facts, &topic, p.qos, p.retain) {
                    let stats = &self.broker.stats;
                    stats.publish_denied.fetch_add(1, Ordering::Relaxed);
                    if !self.protocol.is_v5() && a.deny_action() == crate::DenyAction::Disconnect {
                        return Err(ReasonCode::NOT_AUTHORIZED);
                    }
                    // Not routed; QoS 1/2 are answered "not authorized"
                    // (MQTT 5; MQTT 3 has no negative acknowledgement).
                    self.ack_publish(p.qos, p.packet_id, ReasonCode::NOT_AUTHORIZED);
                    return Ok(Flow::Continue);
                }
            }
        }
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            self.ack_publish(p.qos, p.packet_id, ReasonCode::PAYLOAD_FORMAT_INVALID);
            return Ok(Flow::Continue);
        }
        let message = Arc::new(message_from(
            topic,
            p.payload,
            p.qos,
            p.retain,
            &p.properties,
            Some(self.entry.mailbox.id()),
            now,
        ));
        let mut full = Vec::new();
        let delivered = self.broker.publish_from(message, now, Some(&mut full));
        if !full.is_empty() {
            self.wait_for(full, now);
        }
        let code = if delivered == 0 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        if p.qos == QoS::ExactlyOnce {
            self.entry.state.lock().incoming_qos2_routed(p.packet_id);
            if self.entry.mailbox.is_persistent() {
                self.broker.record(|| crate::persist::Change::Qos2Received {
                    client_id: self.entry.client_id.clone(),
                    packet_id: p.packet_id,
                });
            }
        }
        self.ack_publish(p.qos, p.packet_id, code);
        Ok(Flow::Continue)
    }

    fn handle_subscribe(&mut self, s: Subscribe, now: Time) -> Result<Flow, ReasonCode> {
        let v5 = self.protocol.is_v5();
        let subscription_id = s.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut retained_dropped = false;
        let queued = self.entry.mailbox.len();
        // One walk budget for the whole SUBSCRIBE, however many filters.
        let mut budget = crate::broker::RETAINED_VISIT_BUDGET;
        {
            let mut state = self.entry.state.lock();
            let facts = state.facts.clone();
            for (raw, options) in &s.filters {
                let parsed = match parse_filter_within(raw, self.broker.config().max_topic_levels) {
                    Ok(p) => p,
                    Err(_) => {
                        reasons.push(if v5 {
                            ReasonCode::TOPIC_FILTER_INVALID
                        } else {
                            ReasonCode::UNSPECIFIED_ERROR
                        });
                        continue;
                    }
                };
                if parsed.share_group.is_some() && options.no_local {
                    return Err(ReasonCode::PROTOCOL_ERROR);
                }
                let mut check = None;
                if let (Some(a), Some(facts)) = (self.broker.authorizer(), &facts) {
                    match a.may_subscribe(facts, parsed.filter, options.qos) {
                        crate::SubscribeVerdict::Allow => {}
                        crate::SubscribeVerdict::Checked => check = Some(facts.clone()),
                        crate::SubscribeVerdict::Deny => {
                            let stats = &self.broker.stats;
                            stats.subscribe_denied.fetch_add(1, Ordering::Relaxed);
                            reasons.push(if v5 {
                                ReasonCode::NOT_AUTHORIZED
                            } else {
                                ReasonCode::UNSPECIFIED_ERROR
                            });
                            continue;
                        }
                    }
                }
                let existed = self.broker.add_subscription(
                    raw,
                    &parsed,
                    Subscriber {
                        mailbox: self.entry.mailbox.clone(),
                        options: *options,
                        subscription_id,
                        check: check.clone(),
                    },
                );
                state.subscribed(raw);
                if self.entry.mailbox.is_persistent() {
                    self.broker.record(|| crate::persist::Change::Subscribed {
                        client_id: self.entry.client_id.clone(),
                        filter: raw.as_str().into(),
                        options: *options,
                        subscription_id,
                    });
                }
                reasons.push(ReasonCode(options.qos as u8));
                let send_retained = parsed.share_group.is_none()
                    && match options.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                if send_retained {
                    // Within the queue limit, for the whole SUBSCRIBE.
                    let room = self
                        .broker
                        .config()
                        .max_queued_messages
                        .saturating_sub(queued + retained.len());
                    let found = self
                        .broker
                        .retained_matching(parsed.filter, now, room, budget);
                    budget = budget.saturating_sub(found.visits);
                    if found.truncated {
                        retained_dropped = true;
                    }
                    for message in found.messages {
                        if let (Some(facts), Some(a)) = (&check, self.broker.authorizer()) {
                            if !a.may_read(facts, &message.topic) {
                                continue;
                            }
                        }
                        retained.push(Delivery {
                            qos: message.qos.min(options.qos),
                            message,
                            retain: true,
                            subscription_ids: subscription_id.into_iter().collect(),
                            key: 0,
                        });
                    }
                }
            }
        }
        self.out.push(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: Properties::default(),
        }));
        if retained_dropped {
            self.entry.mailbox.count_dropped(1);
            let stats = &self.broker.stats;
            stats.dropped(&stats.dropped_retained_limit, 1);
        }
        if !retained.is_empty() {
            if self.entry.mailbox.is_persistent() {
                for d in retained.iter_mut().filter(|d| d.qos != QoS::AtMostOnce) {
                    d.key = self.broker.next_id();
                    self.broker.record(|| crate::persist::Change::Queued {
                        client_id: self.entry.client_id.clone(),
                        key: d.key,
                        delivery: d.clone(),
                    });
                }
            }
            self.entry.mailbox.push_own(retained);
        }
        Ok(Flow::Continue)
    }

    fn handle_unsubscribe(&mut self, u: Unsubscribe) {
        let v5 = self.protocol.is_v5();
        let mut reasons = Vec::new();
        {
            let mut state = self.entry.state.lock();
            for raw in &u.filters {
                let removed = match parse_filter(raw) {
                    Ok(parsed) => {
                        state.unsubscribed(raw);
                        if self.entry.mailbox.is_persistent() {
                            self.broker.record(|| crate::persist::Change::Unsubscribed {
                                client_id: self.entry.client_id.clone(),
                                filter: raw.as_str().into(),
                            });
                        }
                        self.broker
                            .remove_subscription(raw, &parsed, self.entry.mailbox.id())
                    }
                    Err(_) => false,
                };
                reasons.push(if removed {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                });
            }
        }
        self.out.push(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons: if v5 { reasons } else { Vec::new() },
            properties: Properties::default(),
        }));
    }

    /// Moves up to `max` queued deliveries into the output, as far as the
    /// client's receive window allows. `Err` when the session was taken over.
    pub fn poll_deliveries(&mut self, max: usize, now: Time) -> Result<usize, ReasonCode> {
        let sent = self.take_deliveries(max, now);
        self.broker.record_deferred();
        sent
    }

    fn take_deliveries(&mut self, max: usize, now: Time) -> Result<usize, ReasonCode> {
        let entry = self.entry.clone();
        let mut state = entry.state.lock();
        if state.owner != self.generation {
            return Err(ReasonCode::SESSION_TAKEN_OVER);
        }
        let window = self.window();
        let mut batch = Vec::new();
        entry.mailbox.take(max, &mut batch);
        let mut sent = 0;
        let mut rest = batch.drain(..);
        while let Some(d) = rest.next() {
            if d.message.is_expired(now) {
                self.record_done(Some(d.key));
                continue;
            }
            if d.qos != QoS::AtMostOnce && state.inflight.len() >= window {
                entry
                    .mailbox
                    .unshift(std::iter::once(d).chain(rest.by_ref()));
                break;
            }
            let packet_id = if d.qos == QoS::AtMostOnce {
                0
            } else {
                match state.allocate_packet_id() {
                    Some(id) => id,
                    None => break,
                }
            };
            let publish = self.publish_packet(&d, packet_id, false, now);
            if encoded_len(&publish, self.protocol) > self.client_max_packet_size as usize {
                // Too large for this client: discarded as if delivered (MQTT 5 §3.1.2.11.4).
                self.record_done(Some(d.key));
                continue;
            }
            if d.qos != QoS::AtMostOnce {
                let key = d.key;
                state.sent(packet_id, d);
                if key != 0 {
                    self.broker
                        .defer(|| crate::persist::Change::Sent { key, packet_id });
                }
            }
            self.out.push(publish);
            sent += 1;
        }
        drop(rest);
        self.broker
            .stats
            .messages_delivered
            .fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(sent)
    }

    fn publish_packet(&mut self, d: &Delivery, packet_id: u16, dup: bool, now: Time) -> Packet {
        let m = &d.message;
        let mut topic = m.topic.clone();
        let properties = if self.protocol.is_v5() {
            let mut p = m.properties.clone();
            p.message_expiry_interval = m.remaining_expiry(now);
            p.subscription_identifiers = d.subscription_ids.clone();
            if !dup && self.client_topic_alias_maximum > 0 {
                let aliases = &mut self.extra.get_or_insert_with(Box::default).aliases.outgoing;
                if let Some(alias) = aliases.get(&m.topic) {
                    p.topic_alias = Some(*alias);
                    topic = "".into();
                } else if aliases.len() < usize::from(self.client_topic_alias_maximum) {
                    let alias = aliases.len() as u16 + 1;
                    aliases.insert(m.topic.clone(), alias);
                    p.topic_alias = Some(alias);
                }
            }
            p
        } else {
            Properties::default()
        };
        Packet::Publish(Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            payload: m.payload.clone(),
            properties,
        })
    }

    /// Resends unacknowledged messages of a resumed session, in order:
    /// PUBLISH with DUP for those awaiting PUBACK/PUBREC, PUBREL for the rest.
    fn resend_inflight(&mut self, now: Time) {
        let inflight = self.entry.state.lock().inflight_in_order();
        for (packet_id, i) in inflight {
            if i.released {
                self.out.push(Packet::PubRel(PubResponse::new(
                    packet_id,
                    ReasonCode::SUCCESS,
                )));
            } else {
                let p = self.publish_packet(&i.delivery, packet_id, true, now);
                self.out.push(p);
            }
        }
    }

    /// Ends the connection: publishes or schedules the will, and keeps the
    /// session for its expiry interval or discards it.
    pub fn close(self, cause: CloseCause, now: Time) {
        let publish_will = !matches!(
            cause,
            CloseCause::ClientDisconnect {
                publish_will: false
            }
        );
        // A will is recorded for as long as its connection lives.
        let had_will = self.will.is_some();
        let will_delay = self.will.as_ref().map_or(0, |w| w.delay);
        let will = if publish_will {
            self.will.map(|w| w.message)
        } else {
            None
        };
        let generation = self.generation;
        let broker = self.broker;
        let entry = self.entry;
        let will_gone = || {
            if had_will {
                broker.record_will_gone(&entry.client_id, generation);
            }
        };
        let mut state = entry.state.lock();
        if state.owner != generation {
            // Taken over: a resumed session cancels a delayed will; otherwise
            // the will goes out now.
            let resumed = !state.ended || state.moved;
            drop(state);
            if let Some(will) = will {
                if will_delay == 0 || !resumed {
                    broker.publish(will, now);
                }
            }
            will_gone();
            return;
        }
        state.release_ownership(generation);
        entry.mailbox.set_online(false, 0);
        entry.mailbox.set_keep_alive(0, 0);
        let expiry = state.expiry_interval;
        if expiry == 0 {
            drop(state);
            broker.end_session(&entry, now);
            if let Some(will) = will {
                broker.publish(will, now);
            }
            will_gone();
            return;
        }
        broker.record_session(&entry, &state, Some(now));
        if expiry != u32::MAX {
            broker.add_timer(
                now + Duration::from_secs(u64::from(expiry)),
                Timer::Expire(entry.clone(), generation),
            );
        }
        match will {
            Some(will) if will_delay > 0 => {
                let at = now + Duration::from_secs(u64::from(will_delay.min(expiry)));
                state.set_pending_will(Some(will.clone()));
                drop(state);
                broker.record(|| crate::persist::Change::Will {
                    client_id: entry.client_id.clone(),
                    generation,
                    will: Some(crate::persist::WillRecord {
                        message: will,
                        delay: will_delay,
                        publish_at: Some(at),
                    }),
                });
                broker.add_timer(at, Timer::Will(entry.clone(), generation));
            }
            Some(will) => {
                drop(state);
                broker.publish(will, now);
                will_gone();
            }
            None => {
                drop(state);
                will_gone();
            }
        }
    }

    /// Records that a kept delivery is over (`key` 0: it was not kept).
    fn record_done(&self, key: Option<u64>) {
        if let Some(key) = key.filter(|k| *k != 0) {
            self.broker.defer(|| crate::persist::Change::Done { key });
        }
    }
}
