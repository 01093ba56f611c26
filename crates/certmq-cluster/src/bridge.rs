//! The NATS bridge: the core's `cluster` seam ([`certmq_core::Forwarder`])
//! over NATS core (SPEC 13, first part: routing between nodes).
//!
//! A message published on this node goes to NATS on its topic's subject
//! ([`crate::subject`]) with its QoS, retain flag, remaining expiry and
//! application properties in headers. This node subscribes on NATS to the
//! subjects of the filters its sessions hold (the core reports the first
//! subscriber of a filter and the last one leaving), so a message crosses
//! to a node only when someone there wants it. A message from NATS is
//! routed to the local sessions only (`Broker::route`, never forwarded
//! again), the connection is `no_echo` (a node never hears itself), and a
//! message matched by several of this node's subscriptions (NATS delivers
//! it once per subscription) is routed once, by its id.
//!
//! The seam's calls must not block (they run under the trie lock): they
//! queue commands for one task that owns the NATS client.
//!
//! Publishes wait for NATS in a bounded queue ([`QUEUE`]); while NATS is
//! away and the queue is full, further publishes are not forwarded
//! (counted in [`BridgeStats::dropped`], the first of each run logged):
//! local subscribers still get them, and the node's memory stays bounded.
//! Route changes are never dropped (there are as many as filters).
//!
//! Not yet: shared subscriptions across nodes (they stay per node), and
//! retained messages across nodes (a retained message is kept on the node
//! it was published on).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use certmq_core::{Broker, Delivery, Mailbox, Message, PushMode, Pushed, Time};

use crate::subject::{filter_subjects, topic_subject};

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
}

enum Command {
    /// Local publishes wait in the queue.
    Drain,
    Add(String),
    Remove(String),
    /// A client connected here (at unix ms): other nodes drop their
    /// session of it.
    Opened(String, u64),
}

/// Where a node announces the clients that connected to it (payload: the
/// client id).
pub const OPENED: &str = "certmq_ctl.opened";

/// Retained messages go to every node as well (each keeps the retained
/// store whole), under this prefix; they are routed to subscribers through
/// their plain subject like any other message.
pub const RETAINED: &str = "certmq_retained";

/// Publishes waiting for NATS: publishers that can wait do beyond it (as
/// for a subscriber's queue), others have a reserve of as many again.
pub const QUEUE: usize = 8_192;

/// The `Forwarder` the broker holds.
pub struct Bridge {
    node: Arc<str>,
    /// Local publishes on their way to NATS: a core queue, so the broker's
    /// flow control holds publishers while NATS takes less than they send.
    queue: Arc<Mailbox>,
    routes: mpsc::UnboundedSender<Command>,
    /// Messages forwarded, received from NATS, and dropped as duplicates.
    pub stats: Arc<BridgeStats>,
    client: async_nats::Client,
    shared: async_nats::Client,
}

impl Bridge {
    /// Whether the NATS connection is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }
}

#[derive(Debug, Default)]
pub struct BridgeStats {
    pub forwarded: AtomicU64,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    /// Publishes not forwarded because the queue to NATS was full.
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").field("node", &self.node).finish()
    }
}

impl certmq_core::Forwarder for Bridge {
    fn forward(&self, message: &Arc<Message>, mode: PushMode) -> Option<Arc<Mailbox>> {
        let delivery = Delivery {
            message: message.clone(),
            qos: message.qos,
            retain: message.retain,
            subscription_ids: Vec::new(),
            key: 0,
        };
        match self.queue.push(delivery, mode) {
            Ok(Pushed::Queued) => None,
            // Full: a publisher that can wait waits for NATS to take more.
            Ok(_) => Some(self.queue.clone()),
            Err(_) => {
                // The queue logs the first of an episode.
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
    fn route_added(&self, filter: &str) {
        let _ = self.routes.send(Command::Add(filter.to_owned()));
    }
    fn route_removed(&self, filter: &str) {
        let _ = self.routes.send(Command::Remove(filter.to_owned()));
    }
    fn routes_shared(&self) -> bool {
        // While NATS is away, shared groups are served here alone.
        self.is_connected()
            && self.shared.connection_state() == async_nats::connection::State::Connected
    }
    fn session_opened(&self, client_id: &str, at_ms: u64) {
        let _ = self
            .routes
            .send(Command::Opened(client_id.to_owned(), at_ms));
    }
}

const H_AT: &str = "certmq-at";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Connects to NATS and starts the bridge task; install the result with
/// `Broker::set_forwarder`. Call inside the runtime.
pub async fn connect(
    url: &str,
    node: &str,
    broker: Arc<Broker>,
    now: fn() -> Time,
) -> Result<Arc<Bridge>, BridgeError> {
    let client = async_nats::ConnectOptions::new()
        .no_echo()
        .name(format!("certmq-{node}"))
        .retry_on_initial_connect()
        .connect(url)
        .await
        .map_err(|e| BridgeError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    // Shared subscriptions are NATS queue groups on a second connection
    // that hears this node's own publishes too (a group member here may be
    // the one NATS picks).
    let shared = async_nats::ConnectOptions::new()
        .name(format!("certmq-{node}-shared"))
        .retry_on_initial_connect()
        .connect(url)
        .await
        .map_err(|e| BridgeError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let queue = Arc::new(Mailbox::channel("cluster:nats", QUEUE));
    let (routes, route_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(BridgeStats::default());
    let node: Arc<str> = node.into();
    tokio::spawn(run(
        (client.clone(), shared.clone()),
        (queue.clone(), route_rx),
        broker,
        node.clone(),
        stats.clone(),
        now,
    ));
    Ok(Arc::new(Bridge {
        node,
        queue,
        routes,
        stats,
        client,
        shared,
    }))
}

/// Message ids routed lately (a message matched by several subscriptions
/// of this node arrives once per subscription).
struct Seen {
    set: HashSet<u128>,
    order: VecDeque<u128>,
}

impl Seen {
    fn first(&mut self, id: u128) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        if self.order.len() >= 16_384 {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id);
        true
    }
}

/// The high half of this process's message ids: differs between nodes
/// and between starts of one node.
fn id_prefix(node: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.hash(&mut h);
    std::process::id().hash(&mut h);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .hash(&mut h);
    h.finish()
}

/// The NATS queue group of a shared subscription (`$share/group/filter`):
/// the same on every node, within NATS's limits on a name.
fn queue_group(raw_filter: &str) -> String {
    if raw_filter.len() <= 200 {
        format!("q{}", hex(raw_filter.as_bytes()))
    } else {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        raw_filter.hash(&mut h);
        format!("h{:016x}{}", h.finish(), raw_filter.len())
    }
}

async fn run(
    (client, shared): (async_nats::Client, async_nats::Client),
    (queue, mut route_rx): (Arc<Mailbox>, mpsc::UnboundedReceiver<Command>),
    broker: Arc<Broker>,
    node: Arc<str>,
    stats: Arc<BridgeStats>,
    now: fn() -> Time,
) {
    let seq = AtomicU64::new(0);
    let prefix = id_prefix(&node);
    let mut batch: Vec<Delivery> = Vec::with_capacity(256);
    let seen = Arc::new(parking_lot::Mutex::new(Seen {
        set: HashSet::new(),
        order: VecDeque::new(),
    }));
    let mut subs: HashMap<String, Vec<tokio::task::JoinHandle<()>>> = HashMap::new();
    // Cluster-wide client ids: a client connected elsewhere is taken over.
    match client.subscribe(OPENED).await {
        Ok(mut sub) => {
            let broker = broker.clone();
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let at_ms = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(H_AT))
                        .and_then(|v| v.as_str().parse::<u64>().ok())
                        .unwrap_or(u64::MAX);
                    if let Ok(client_id) = std::str::from_utf8(&msg.payload) {
                        if broker.session_moved(client_id, at_ms, now()) {
                            tracing::info!(client_id, "session taken over by another node");
                        }
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cluster: cannot follow takeovers"),
    }
    // Sessions handed to another node: the connection here closes, the
    // session's records are written, then the other node is told.
    match client.subscribe(RELEASE).await {
        Ok(mut sub) => {
            let (broker, client) = (broker.clone(), client.clone());
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let Ok(client_id) = std::str::from_utf8(&msg.payload) else {
                        continue;
                    };
                    let released = broker.release_session(client_id, now());
                    let written = !released || broker.state_written().await;
                    if released {
                        tracing::info!(client_id, written, "session handed to another node");
                    }
                    if let Some(reply) = msg.reply {
                        let answer = if released && written { "1" } else { "0" };
                        let _ = client.publish(reply, answer.into()).await;
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cluster: cannot hand sessions over"),
    }
    // Retained messages of every node.
    match client.subscribe(format!("{RETAINED}.>")).await {
        Ok(mut sub) => {
            let broker = broker.clone();
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let Some((_, m)) = decode(&msg.payload, now()) else {
                        continue;
                    };
                    if broker.config().retain_available {
                        broker.retain(&Arc::new(m));
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cluster: cannot follow retained messages"),
    }
    loop {
        // Route changes first: a subscription is in place before the
        // publishes that follow it.
        let cmd = tokio::select! {
            biased;
            c = route_rx.recv() => c,
            _ = std::future::poll_fn(|cx| queue.poll_ready(cx, u64::MAX, true)) => Some(Command::Drain),
        };
        let Some(cmd) = cmd else { break };
        match cmd {
            Command::Drain => {
                queue.take(256, &mut batch);
                for d in batch.drain(..) {
                    let m = d.message;
                    let id = (u128::from(prefix) << 64)
                        | u128::from(seq.fetch_add(1, Ordering::Relaxed));
                    let subject = topic_subject(&m.topic);
                    let bytes = encode(&m, id, now());
                    if m.retain {
                        // Kept by every node (routed through the plain subject).
                        if let Err(e) = client
                            .publish(format!("{RETAINED}.{subject}"), bytes.clone())
                            .await
                        {
                            tracing::warn!(error = %e, "cluster: retained message not sent to NATS");
                        }
                    }
                    match client.publish(subject, bytes).await {
                        Ok(()) => {
                            stats.forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!(error = %e, "cluster: publish to NATS failed"),
                    }
                }
                // Taken by NATS: publishers waiting for room may go on.
                queue.progress(now().unix_millis());
            }
            Command::Add(filter) if filter.starts_with("$share/") => {
                if subs.contains_key(&filter) {
                    continue;
                }
                let Some(plain) = filter
                    .strip_prefix("$share/")
                    .and_then(|r| r.split_once('/'))
                    .map(|(_, f)| f.to_owned())
                else {
                    continue;
                };
                let group = queue_group(&filter);
                let mut tasks = Vec::new();
                for subject in filter_subjects(&plain) {
                    match shared.queue_subscribe(subject.clone(), group.clone()).await {
                        Ok(mut sub) => {
                            let broker = broker.clone();
                            let stats = stats.clone();
                            let raw = filter.clone();
                            tasks.push(tokio::spawn(async move {
                                while let Some(msg) = sub.next().await {
                                    let Some((_, m)) = decode(&msg.payload, now()) else {
                                        continue;
                                    };
                                    stats.received.fetch_add(1, Ordering::Relaxed);
                                    broker.route_shared(&raw, &Arc::new(m), now());
                                }
                            }));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, %subject, "cluster: NATS queue subscribe failed")
                        }
                    }
                }
                subs.insert(filter, tasks);
            }
            Command::Add(filter) => {
                if subs.contains_key(&filter) {
                    continue;
                }
                let mut tasks = Vec::new();
                for subject in filter_subjects(&filter) {
                    match client.subscribe(subject.clone()).await {
                        Ok(mut sub) => {
                            let broker = broker.clone();
                            let seen = seen.clone();
                            let stats = stats.clone();
                            tasks.push(tokio::spawn(async move {
                                let mut full = Vec::new();
                                while let Some(msg) = sub.next().await {
                                    let Some((id, m)) = decode(&msg.payload, now()) else {
                                        continue;
                                    };
                                    if !seen.lock().first(id) {
                                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                    stats.received.fetch_add(1, Ordering::Relaxed);
                                    // A subscriber's full queue holds this
                                    // subscription (NATS buffers meanwhile)
                                    // rather than dropping: flow control
                                    // across the node boundary.
                                    broker.route_or_wait(&Arc::new(m), now(), &mut full);
                                    for q in full.drain(..) {
                                        std::future::poll_fn(|cx| {
                                            q.poll_room(cx, now().unix_millis())
                                        })
                                        .await;
                                    }
                                }
                            }));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, %subject, "cluster: NATS subscribe failed")
                        }
                    }
                }
                subs.insert(filter, tasks);
            }
            Command::Opened(client_id, at_ms) => {
                let mut h = HeaderMap::new();
                h.insert(H_AT, at_ms.to_string().as_str());
                if let Err(e) = client
                    .publish_with_headers(OPENED, h, client_id.into_bytes().into())
                    .await
                {
                    tracing::warn!(error = %e, "cluster: takeover not announced");
                }
            }
            Command::Remove(filter) => {
                // Dropping a subscription's stream unsubscribes it.
                for t in subs.remove(&filter).into_iter().flatten() {
                    t.abort();
                }
            }
        }
    }
}

/// The bytes a message crosses NATS as: a tag, the id, the seconds of
/// expiry left (`u32::MAX`: none), then the MQTT 5 PUBLISH the durable
/// state uses (`persist::encode_message`: topic, QoS, retain flag,
/// properties, payload; the codec's own, fuzzed format). No NATS headers:
/// each costs an allocation on both ends.
const WIRE_TAG: &[u8; 3] = b"CQ1";

fn encode(m: &Message, id: u128, now: Time) -> Bytes {
    let publish = certmq_core::persist::encode_message(m);
    let mut out = Vec::with_capacity(3 + 16 + 4 + publish.len());
    out.extend_from_slice(WIRE_TAG);
    out.extend_from_slice(&id.to_be_bytes());
    let left = m.remaining_expiry(now).unwrap_or(u32::MAX);
    out.extend_from_slice(&left.to_be_bytes());
    out.extend_from_slice(&publish);
    Bytes::from(out)
}

fn decode(bytes: &[u8], now: Time) -> Option<(u128, Message)> {
    let rest = bytes.strip_prefix(WIRE_TAG)?;
    let id = u128::from_be_bytes(rest.get(..16)?.try_into().ok()?);
    let left = u32::from_be_bytes(rest.get(16..20)?.try_into().ok()?);
    let expires_at =
        (left != u32::MAX).then(|| now + std::time::Duration::from_secs(u64::from(left)));
    let m = certmq_core::persist::decode_message(rest.get(20..)?, expires_at)?;
    Some((id, m))
}

/// Requests about connections: every node answers on `CONNECTIONS`, one
/// node on `certmq_ctl.node.<id>.connections`; `KICK` closes a client's
/// connection wherever it is.
pub const CONNECTIONS: &str = "certmq_ctl.connections";
/// A node where a client resumes its session asks every other node to
/// hand it over (payload: the client id); the one that has it answers
/// `1` once its records are written, the others `0`.
pub const RELEASE: &str = "certmq_ctl.release";
pub const KICK: &str = "certmq_ctl.kick";

fn node_connections_subject(node: &str) -> String {
    format!("certmq_ctl.node.{node}.connections")
}

/// A connection of another node, as it answered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RemoteConnection {
    pub node: String,
    pub client_id: String,
    pub listener: String,
    pub peer_address: String,
    pub certificate_id: Option<String>,
    pub ca_id: Option<String>,
    /// Unix seconds.
    pub connected_at: i64,
    pub username: Option<String>,
}

impl Bridge {
    /// Answers other nodes' requests about this node's connections (list,
    /// kick) from `control`, until the process ends.
    pub async fn serve_control(
        self: &Arc<Self>,
        control: Arc<dyn certmq_core::Control>,
    ) -> Result<(), BridgeError> {
        let subscribe_err = |e: async_nats::SubscribeError| BridgeError::Connect {
            url: "NATS".into(),
            reason: e.to_string(),
        };
        let all = self
            .client
            .subscribe(CONNECTIONS)
            .await
            .map_err(subscribe_err)?;
        let mine = self
            .client
            .subscribe(node_connections_subject(&self.node))
            .await
            .map_err(subscribe_err)?;
        let kicks = self.client.subscribe(KICK).await.map_err(subscribe_err)?;
        let mut lists = futures_util::stream::select(all, mine);
        let (client, node, c) = (self.client.clone(), self.node.clone(), control.clone());
        tokio::spawn(async move {
            while let Some(msg) = lists.next().await {
                let Some(reply) = msg.reply else { continue };
                let items: Vec<RemoteConnection> = c
                    .connections()
                    .into_iter()
                    .map(|x| RemoteConnection {
                        node: node.to_string(),
                        client_id: x.client_id.to_string(),
                        listener: x.listener.to_string(),
                        peer_address: x.peer.to_string(),
                        certificate_id: x.certificate_id,
                        ca_id: x.ca_id,
                        connected_at: x.connected_at,
                        username: x.username.map(|u| u.to_string()),
                    })
                    .collect();
                let body = serde_json::to_vec(&items).unwrap_or_default();
                let _ = client.publish(reply, body.into()).await;
            }
        });
        let (client, mut kicks) = (self.client.clone(), kicks);
        tokio::spawn(async move {
            while let Some(msg) = kicks.next().await {
                let Ok(client_id) = std::str::from_utf8(&msg.payload) else {
                    continue;
                };
                let done = control.kick(client_id, certmq_codec::ReasonCode::ADMINISTRATIVE_ACTION);
                if done {
                    tracing::info!(client_id, "connection closed at another node's request");
                }
                if let Some(reply) = msg.reply {
                    let _ = client
                        .publish(reply, if done { "1" } else { "0" }.into())
                        .await;
                }
            }
        });
        Ok(())
    }

    /// Asks every other node to hand `client_id`'s session over (its
    /// connection there closes, its records are written); whether one did.
    /// Done when one did, when `others` answered, or after 2 s.
    pub async fn request_release(&self, client_id: &str, others: Option<usize>) -> bool {
        if others == Some(0) {
            return false;
        }
        let answers = self
            .gather_until(
                RELEASE.to_string(),
                bytes::Bytes::copy_from_slice(client_id.as_bytes()),
                others,
                std::time::Duration::from_secs(2),
                |m| m.payload.as_ref() == b"1",
            )
            .await;
        answers.iter().any(|m| m.payload.as_ref() == b"1")
    }

    /// Asks on `subject` and gathers answers until `expect` came or `wait`
    /// passed.
    async fn gather(
        &self,
        subject: String,
        payload: bytes::Bytes,
        expect: Option<usize>,
        wait: std::time::Duration,
    ) -> Vec<async_nats::Message> {
        self.gather_until(subject, payload, expect, wait, |_| false)
            .await
    }

    /// [`Self::gather`], done early at the first answer `done` accepts.
    async fn gather_until(
        &self,
        subject: String,
        payload: bytes::Bytes,
        expect: Option<usize>,
        wait: std::time::Duration,
        done: impl Fn(&async_nats::Message) -> bool,
    ) -> Vec<async_nats::Message> {
        let inbox = self.client.new_inbox();
        let Ok(mut sub) = self.client.subscribe(inbox.clone()).await else {
            return Vec::new();
        };
        if self
            .client
            .publish_with_reply(subject, inbox, payload)
            .await
            .is_err()
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while expect.is_none_or(|n| out.len() < n) {
            match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(m)) => {
                    let finished = done(&m);
                    out.push(m);
                    if finished {
                        break;
                    }
                }
                _ => break,
            }
        }
        out
    }

    /// Connections of the other nodes (`node`: of that one only).
    /// `others`: how many other nodes are up, when known (the answer is
    /// then complete as soon as each answered).
    pub async fn connections(
        &self,
        node: Option<&str>,
        others: Option<usize>,
    ) -> Vec<RemoteConnection> {
        let (subject, expect) = match node {
            Some(n) => (node_connections_subject(n), Some(1)),
            None => (CONNECTIONS.to_string(), others),
        };
        self.gather(
            subject,
            bytes::Bytes::new(),
            expect,
            std::time::Duration::from_millis(if expect.is_some() { 2000 } else { 500 }),
        )
        .await
        .iter()
        .filter_map(|m| serde_json::from_slice::<Vec<RemoteConnection>>(&m.payload).ok())
        .flatten()
        .collect()
    }

    /// Closes `client_id`'s connection on whichever other node holds it;
    /// whether one did.
    pub async fn kick_elsewhere(&self, client_id: &str, others: Option<usize>) -> bool {
        let answers = self
            .gather(
                KICK.to_string(),
                bytes::Bytes::copy_from_slice(client_id.as_bytes()),
                others,
                std::time::Duration::from_millis(if others.is_some() { 2000 } else { 500 }),
            )
            .await;
        answers.iter().any(|m| m.payload.as_ref() == b"1")
    }
}
