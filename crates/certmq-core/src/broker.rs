//! The broker's shared state: the session registry, the subscription trie,
//! retained messages and the timers of offline sessions.
//!
//! Lock order, always: `sessions` -> a session's `state` -> `tree` ->
//! `retained` -> `congested` -> a mailbox. The publish path takes only the
//! trie's read lock and each target mailbox's own lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::Time;

use certmq_codec::{Properties, QoS};
use parking_lot::{Mutex, RwLock};

use crate::retained::RetainedStore;
use crate::session::{Deadline, SessionState, Timer};
use crate::topic::{parse_filter, ParsedFilter};
use crate::tree::{Match, Subscriber, SubscriptionTree};

/// Index nodes one SUBSCRIBE (all its filters together) may visit looking
/// for retained messages: a bound on one client's work per packet, under
/// the store's read lock, on a runtime worker.
pub const RETAINED_VISIT_BUDGET: usize = 100_000;
use crate::{BrokerConfig, Delivery, Mailbox, Message, SessionEntry, SessionId};

/// Counters readable at any time (metrics come from these).
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_received: AtomicU64,
    pub messages_delivered: AtomicU64,
    /// Every drop, whatever the reason (the sum of the four below).
    pub messages_dropped: AtomicU64,
    /// QoS 0 messages for an offline session (never queued).
    pub dropped_offline_qos0: AtomicU64,
    /// Messages for an offline session whose queue was full (or from a
    /// will or timer, which cannot wait for room).
    pub dropped_queue_full: AtomicU64,
    /// Messages for an online session whose full queue made no progress
    /// for `slow_consumer_timeout_ms`.
    pub dropped_slow_consumer: AtomicU64,
    /// Times a publishing connection stopped taking publishes because a
    /// subscriber's queue was full (flow control).
    pub flow_control_pauses: AtomicU64,
    /// Retained messages a SUBSCRIBE matched beyond the queue limit or the
    /// index's visit budget.
    pub dropped_retained_limit: AtomicU64,
    /// PUBLISHes (and deliveries) an authorization policy refused.
    pub publish_denied: AtomicU64,
    /// Subscriptions an authorization policy refused (at SUBSCRIBE, or
    /// removed from a live session when a policy changed).
    pub subscribe_denied: AtomicU64,
    /// Deliveries not made because a policy forbids the subscriber to
    /// read the topic.
    pub delivery_denied: AtomicU64,
}

impl Stats {
    pub(crate) fn dropped(&self, reason: &AtomicU64, n: u64) {
        self.messages_dropped.fetch_add(n, Ordering::Relaxed);
        reason.fetch_add(n, Ordering::Relaxed);
    }
}

thread_local! {
    /// Changes deferred during one `Conn` call, recorded at its end.
    static DEFERRED: std::cell::RefCell<Vec<crate::persist::Change>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Debug)]
pub struct Broker {
    /// Swapped whole by [`Broker::set_config`] (SIGHUP).
    config: arc_swap::ArcSwap<BrokerConfig>,
    pub(crate) sessions: Mutex<HashMap<Arc<str>, Arc<SessionEntry>>>,
    pub(crate) tree: RwLock<SubscriptionTree>,
    pub(crate) retained: RwLock<RetainedStore>,
    timers: Mutex<BTreeMap<Deadline, Timer>>,
    pub(crate) next_id: AtomicU64,
    pub stats: Stats,
    /// The `auth` seam; none: everything is allowed.
    authorizer: std::sync::OnceLock<Arc<dyn crate::Authorizer>>,
    /// The `cluster` seam; none: a single node.
    forwarder: std::sync::OnceLock<Arc<dyn crate::Forwarder>>,
    /// The `persist` seam; none: nothing outlives the process.
    persist: std::sync::OnceLock<Arc<dyn crate::Persist>>,
    /// Local subscriptions per raw filter, for the forwarder's route
    /// changes (kept under the trie's write lock).
    routes: Mutex<HashMap<Box<str>, usize>>,
    /// Full queues that publishers wait on (flow control), checked every
    /// [`CONGESTION_CHECK`] while any is listed.
    congested: Mutex<Vec<Arc<Mailbox>>>,
}

/// How often the queues publishers wait on are checked for a subscriber
/// that stopped draining (see [`crate::mailbox::DRAIN_WINDOW_MS`]).
pub const CONGESTION_CHECK: Duration = Duration::from_millis(50);

impl Broker {
    pub fn new(config: BrokerConfig) -> Arc<Self> {
        Arc::new(Self {
            config: arc_swap::ArcSwap::from_pointee(config),
            sessions: Mutex::default(),
            tree: RwLock::default(),
            retained: RwLock::default(),
            timers: Mutex::default(),
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
            authorizer: std::sync::OnceLock::new(),
            forwarder: std::sync::OnceLock::new(),
            persist: std::sync::OnceLock::new(),
            routes: Mutex::default(),
            congested: Mutex::default(),
        })
    }

    /// Installs the authorizer (once; false if one was installed already).
    pub fn set_authorizer(&self, a: Arc<dyn crate::Authorizer>) -> bool {
        self.authorizer.set(a).is_ok()
    }

    pub(crate) fn authorizer(&self) -> Option<&Arc<dyn crate::Authorizer>> {
        self.authorizer.get()
    }

    /// Installs the cluster forwarder (once; false if one was installed).
    pub fn set_forwarder(&self, f: Arc<dyn crate::Forwarder>) -> bool {
        self.forwarder.set(f).is_ok()
    }

    /// Installs the persistence seam (once; false if one was installed).
    /// Install it before [`Broker::restore`] and before any connection.
    pub fn set_persist(&self, p: Arc<dyn crate::Persist>) -> bool {
        self.persist.set(p).is_ok()
    }

    /// The persistence seam, if one is installed.
    pub fn persist(&self) -> Option<&Arc<dyn crate::Persist>> {
        self.persist.get()
    }

    /// Records a change of durable state, if anything keeps it.
    pub(crate) fn record(&self, change: impl FnOnce() -> crate::persist::Change) {
        if let Some(p) = self.persist.get() {
            p.record(change());
        }
    }

    /// Records a change that follows one already recorded for the same
    /// delivery (sent, released, done) at the end of the current packet or
    /// delivery batch ([`Broker::record_deferred`]): one lock for many.
    pub(crate) fn defer(&self, change: impl FnOnce() -> crate::persist::Change) {
        if self.persist.get().is_some() {
            DEFERRED.with(|d| d.borrow_mut().push(change()));
        }
    }

    /// Records what [`Broker::defer`] gathered on this thread.
    pub(crate) fn record_deferred(&self) {
        if let Some(p) = self.persist.get() {
            DEFERRED.with(|d| {
                let mut d = d.borrow_mut();
                if !d.is_empty() {
                    p.record_many(&mut d);
                }
            });
        }
    }

    /// Whether a session with this expiry is kept across restarts.
    pub(crate) fn keeps(&self, expiry_interval: u32) -> bool {
        expiry_interval > 0 && self.persist.get().is_some()
    }

    /// Records a persistent session's settings.
    pub(crate) fn record_session(
        &self,
        entry: &SessionEntry,
        state: &SessionState,
        offline_since: Option<Time>,
    ) {
        if entry.mailbox.is_persistent() {
            self.record(|| crate::persist::Change::Session {
                client_id: entry.client_id.clone(),
                identity: state.identity.clone().unwrap_or_default(),
                expiry_interval: state.expiry_interval,
                offline_since,
            });
        }
    }

    /// Records that the will of connection `generation` is no longer kept
    /// (published or cancelled).
    pub(crate) fn record_will_gone(&self, client_id: &Arc<str>, generation: u64) {
        self.record(|| crate::persist::Change::Will {
            client_id: client_id.clone(),
            generation,
            will: None,
        });
    }

    /// Adds a session's subscription to the trie: the one place the trie
    /// gains subscriptions. Returns whether it replaced one of the session's.
    pub(crate) fn add_subscription(
        &self,
        raw: &str,
        parsed: &ParsedFilter<'_>,
        sub: Subscriber,
    ) -> bool {
        let mut tree = self.tree.write();
        let existed = tree.insert(parsed, sub);
        if !existed {
            let mut routes = self.routes.lock();
            let n = routes.entry(raw.into()).or_insert(0);
            *n += 1;
            if *n == 1 {
                if let Some(f) = self.forwarder.get() {
                    f.route_added(raw);
                }
            }
        }
        existed
    }

    /// Removes a session's subscription from the trie: the one place the
    /// trie loses subscriptions. Returns whether it existed.
    pub(crate) fn remove_subscription(
        &self,
        raw: &str,
        parsed: &ParsedFilter<'_>,
        session: SessionId,
    ) -> bool {
        let mut tree = self.tree.write();
        let removed = tree.remove(parsed, session);
        if removed {
            let mut routes = self.routes.lock();
            if let Some(n) = routes.get_mut(raw) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    routes.remove(raw);
                    if let Some(f) = self.forwarder.get() {
                        f.route_removed(raw);
                    }
                }
            }
        }
        removed
    }

    /// The limits in force now (a cheap, lock-free load).
    pub fn config(&self) -> arc_swap::Guard<Arc<BrokerConfig>> {
        self.config.load()
    }

    /// Replaces the limits (SIGHUP). They apply from the next packet on;
    /// a session's queue limit and a connection's maximum packet size and
    /// in-flight window are taken when the session or connection starts.
    pub fn set_config(&self, config: BrokerConfig) {
        self.config.store(Arc::new(config));
    }

    /// A fresh number for sessions, connection generations and timers.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_session(&self, client_id: Arc<str>) -> Arc<SessionEntry> {
        let id = SessionId(self.next_id());
        Arc::new(SessionEntry {
            mailbox: Arc::new(Mailbox::new(
                id,
                client_id.clone(),
                self.config().max_queued_messages,
            )),
            client_id,
            state: Mutex::new(SessionState::default()),
        })
    }

    /// Number of sessions, online and offline.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.tree.read().len()
    }

    /// The entry of a session by client id.
    pub fn session(&self, client_id: &str) -> Option<Arc<SessionEntry>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Stores or clears (empty payload) the retained message of its topic.
    /// The stored copy owns its payload: a routed message's payload is a
    /// slice of the publisher's read buffer, which a long-lived retained
    /// message must not keep alive.
    pub fn retain(&self, message: &Arc<Message>) {
        if message.payload.is_empty() {
            self.retained.write().remove(&message.topic);
            self.record(|| crate::persist::Change::Retained {
                topic: message.topic.clone(),
                message: None,
            });
            return;
        }
        let owned = Arc::new(Message {
            topic: message.topic.clone(),
            payload: bytes::Bytes::copy_from_slice(&message.payload),
            qos: message.qos,
            retain: true,
            properties: message.properties.clone(),
            expires_at: message.expires_at,
            origin: message.origin,
        });
        self.record(|| crate::persist::Change::Retained {
            topic: owned.topic.clone(),
            message: Some(owned.clone()),
        });
        self.retained.write().insert(owned);
    }

    /// Retained messages matching a filter (without `$share/`), unexpired:
    /// at most `limit`, visiting at most `budget` nodes of the index.
    pub(crate) fn retained_matching(
        &self,
        filter: &str,
        now: Time,
        limit: usize,
        budget: usize,
    ) -> crate::retained::Found {
        self.retained.read().matching(filter, now, limit, budget)
    }

    /// Publishes a message from this node: stores it if retained, routes
    /// it to local sessions, and hands it to the cluster forwarder (if any).
    /// Messages from other nodes go through [`Broker::route`] (and
    /// [`Broker::retain`]) instead, so nothing is forwarded twice. The
    /// caller cannot wait for room: a full queue drops (wills, timers).
    pub fn publish(&self, message: Arc<Message>, now: Time) -> usize {
        self.publish_from(message, now, None)
    }

    /// [`Broker::publish`] by a publisher that can wait: the mailboxes it
    /// filled to their limit are appended to `full` (flow control).
    pub(crate) fn publish_from(
        &self,
        message: Arc<Message>,
        now: Time,
        mut full: Option<&mut Vec<Arc<Mailbox>>>,
    ) -> usize {
        if message.retain && self.config().retain_available {
            self.retain(&message);
        }
        let delivered = self.route_from(&message, now, full.as_deref_mut());
        if let Some(f) = self.forwarder.get() {
            let mode = crate::mailbox::PushMode {
                now_ms: self.millis(now),
                stall_ms: self.config().slow_consumer_timeout_ms,
                can_wait: full.is_some(),
            };
            // The queue to other nodes is a queue like a subscriber's: a
            // publisher that can wait waits for it.
            if let (Some(queue), Some(full)) = (f.forward(&message, mode), full) {
                full.push(queue);
            }
        }
        delivered
    }

    /// Queues `message` for every matching session; returns how many.
    pub fn route(&self, message: &Arc<Message>, now: Time) -> usize {
        self.route_from(message, now, None)
    }

    /// [`Broker::route`] by a caller that can wait (a cluster's receiving
    /// end): the queues it filled to their limit are appended to `full`
    /// and watched; wait for each with [`Mailbox::poll_room`] before
    /// routing more.
    pub fn route_or_wait(
        &self,
        message: &Arc<Message>,
        now: Time,
        full: &mut Vec<Arc<Mailbox>>,
    ) -> usize {
        let n = self.route_from(message, now, Some(full));
        if !full.is_empty() {
            self.watch_congested(full);
        }
        n
    }

    /// Queues `message` for one member of the shared subscription
    /// `raw_filter` (`$share/group/filter`) here: the cluster chose this
    /// node for it. Returns how many (0 or 1).
    pub fn route_shared(&self, raw_filter: &str, message: &Arc<Message>, now: Time) -> usize {
        let Ok(parsed) = parse_filter(raw_filter) else {
            return 0;
        };
        if parsed.share_group.is_none() || message.is_expired(now) {
            return 0;
        }
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        let tree = self.tree.read();
        let Some(sub) = tree.pick_shared(&parsed) else {
            return 0;
        };
        if let Some(a) = self.authorizer() {
            if !sub
                .check
                .as_ref()
                .is_none_or(|f| a.may_read(f, &message.topic))
            {
                self.stats.delivery_denied.fetch_add(1, Ordering::Relaxed);
                return 0;
            }
        }
        let found = vec![(sub, true)];
        self.deliver(message, found, now, None)
    }

    fn route_from(
        &self,
        message: &Arc<Message>,
        now: Time,
        full: Option<&mut Vec<Arc<Mailbox>>>,
    ) -> usize {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        if message.is_expired(now) {
            return 0;
        }
        let tree = self.tree.read();
        let mut found: Vec<Match<'_>> = Vec::new();
        let overlapping = tree.matches(&message.topic, &mut found);
        // Shared groups spread over the cluster get theirs from it.
        let cluster_shares = self.forwarder.get().is_some_and(|f| f.routes_shared());
        found.retain(|(s, shared)| {
            if *shared {
                !cluster_shares
            } else {
                !(s.options.no_local && message.origin == Some(s.session()))
            }
        });
        if let Some(a) = self.authorizer() {
            let before = found.len();
            found.retain(|(s, _)| {
                s.check
                    .as_ref()
                    .is_none_or(|f| a.may_read(f, &message.topic))
            });
            let denied = before - found.len();
            if denied > 0 {
                self.stats
                    .delivery_denied
                    .fetch_add(denied as u64, Ordering::Relaxed);
            }
        }
        if overlapping {
            // One delivery per session for its ordinary subscriptions (MQTT 5
            // §3.3.4): highest QoS, every subscription identifier.
            found.sort_by_key(|(s, shared)| (*shared, s.session()));
        }
        self.deliver(message, found, now, full)
    }

    /// Pushes `message` to the matches in `found` (sorted by session for
    /// ordinary subscriptions); returns how many queues took it.
    fn deliver(
        &self,
        message: &Arc<Message>,
        found: Vec<Match<'_>>,
        now: Time,
        mut full: Option<&mut Vec<Arc<Mailbox>>>,
    ) -> usize {
        let mode = crate::mailbox::PushMode {
            now_ms: self.millis(now),
            stall_ms: self.config().slow_consumer_timeout_ms,
            can_wait: full.is_some(),
        };
        let mut delivered = 0;
        let mut i = 0;
        while let Some(&(first, shared)) = found.get(i) {
            let mut qos = first.options.qos;
            let mut rap = first.options.retain_as_published;
            let mut ids: Vec<u32> = first.subscription_id.into_iter().collect();
            i += 1;
            while let Some(&(next, false)) = found.get(i) {
                if shared || next.session() != first.session() {
                    break;
                }
                qos = qos.max(next.options.qos);
                rap |= next.options.retain_as_published;
                ids.extend(next.subscription_id);
                i += 1;
            }
            let mut delivery = Delivery {
                message: message.clone(),
                qos: qos.min(message.qos),
                retain: message.retain && rap,
                subscription_ids: ids,
                key: 0,
            };
            let mailbox = &first.mailbox;
            if delivery.qos != QoS::AtMostOnce && mailbox.is_persistent() {
                // Recorded before it is in the queue, so that its `Sent`
                // can never be recorded first.
                delivery.key = self.next_id();
                self.record(|| crate::persist::Change::Queued {
                    client_id: mailbox.client_id().clone(),
                    key: delivery.key,
                    delivery: delivery.clone(),
                });
            }
            let key = delivery.key;
            let result = mailbox.push(delivery, mode);
            if result.is_err() && key != 0 {
                self.record(|| crate::persist::Change::Done { key });
            }
            match result {
                Ok(pushed) => {
                    delivered += 1;
                    // A shared group's next message goes to a member with
                    // room: its publisher waits only when none had any.
                    let wait = match pushed {
                        crate::Pushed::Queued => false,
                        crate::Pushed::Full => !shared,
                        crate::Pushed::Over => true,
                    };
                    if wait {
                        if let Some(full) = full.as_deref_mut() {
                            full.push(mailbox.clone());
                        }
                    }
                }
                Err(crate::Dropped::OfflineQos0) => {
                    self.stats.dropped(&self.stats.dropped_offline_qos0, 1);
                }
                Err(crate::Dropped::QueueFull) => {
                    self.stats.dropped(&self.stats.dropped_queue_full, 1);
                }
                Err(crate::Dropped::SlowConsumer) => {
                    self.stats.dropped(&self.stats.dropped_slow_consumer, 1);
                }
            }
        }
        delivered
    }

    /// Watches queues a publisher now waits on (flow control).
    pub(crate) fn watch_congested(&self, full: &[Arc<Mailbox>]) {
        for m in full {
            if m.mark_congested() {
                self.congested.lock().push(m.clone());
            }
        }
    }

    /// Whether publishers wait on full queues: the caller then runs
    /// [`Broker::check_congestion`] every [`CONGESTION_CHECK`].
    pub fn is_congested(&self) -> bool {
        !self.congested.lock().is_empty()
    }

    /// Releases the publishers waiting on queues whose subscribers stopped
    /// draining them.
    pub fn check_congestion(&self, now: Time) {
        let now_ms = self.millis(now);
        self.congested.lock().retain(|m| m.check_congestion(now_ms));
    }

    pub(crate) fn add_timer(&self, at: Time, timer: Timer) {
        let seq = self.next_id();
        self.timers.lock().insert((at, seq), timer);
    }

    /// The earliest pending timer, so a driver can sleep until then.
    pub fn next_deadline(&self) -> Option<Time> {
        self.timers.lock().keys().next().map(|(at, _)| *at)
    }

    /// `now` as the mailboxes' keep-alive clock reads it.
    pub(crate) fn millis(&self, now: Time) -> u64 {
        now.unix_millis()
    }

    /// Closes (kicks) every live connection with `reason`; returns how many.
    pub fn kick_all(&self, reason: certmq_codec::ReasonCode) -> usize {
        let sessions = self.sessions.lock();
        let mut kicked = 0;
        for entry in sessions.values() {
            let owner = entry.state.lock().owner;
            if owner != 0 {
                entry.mailbox.kick(owner, reason);
                kicked += 1;
            }
        }
        kicked
    }

    /// Closes connections silent for longer than 1.5 x their keep alive
    /// (MQTT 5 §3.1.2.10). One pass over the sessions; call it about twice
    /// a second, as `tick` does.
    fn sweep_keep_alive(&self, now: Time) {
        let now_ms = self.millis(now);
        let sessions = self.sessions.lock();
        for entry in sessions.values() {
            if entry.mailbox.keep_alive_expired(now_ms) {
                let owner = entry.state.lock().owner;
                if owner != 0 {
                    entry
                        .mailbox
                        .kick(owner, certmq_codec::ReasonCode::KEEP_ALIVE_TIMEOUT);
                }
            }
        }
    }

    /// Runs what is due at `now`: the keep-alive sweep, delayed wills and
    /// session expiry.
    pub fn tick(&self, now: Time) {
        self.sweep_keep_alive(now);
        loop {
            let due = {
                let mut timers = self.timers.lock();
                match timers.first_key_value() {
                    Some((key, _)) if key.0 <= now => timers.pop_first().map(|(_, t)| t),
                    _ => None,
                }
            };
            let Some(timer) = due else { break };
            match timer {
                Timer::Will(entry, generation) => {
                    let will = {
                        let mut state = entry.state.lock();
                        if state.owner == 0 && state.last_owner == generation {
                            state.take_pending_will()
                        } else {
                            None
                        }
                    };
                    if let Some(will) = will {
                        self.publish(will, now);
                        self.record_will_gone(&entry.client_id, generation);
                    }
                }
                Timer::Expire(entry, generation) => {
                    let expired = {
                        let state = entry.state.lock();
                        state.owner == 0 && state.last_owner == generation && !state.ended
                    };
                    if expired {
                        self.end_session(&entry, now);
                    }
                }
            }
        }
    }

    /// Discards a session: its subscriptions, queue and registry entry. A
    /// will still pending is published, as the session's end ends its delay.
    pub(crate) fn end_session(&self, entry: &Arc<SessionEntry>, now: Time) {
        let (will, generation) = {
            let mut state = entry.state.lock();
            if state.ended {
                return;
            }
            (self.discard_state(entry, &mut state), state.last_owner)
        };
        {
            let mut sessions = self.sessions.lock();
            if sessions
                .get(&entry.client_id)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
            {
                sessions.remove(&entry.client_id);
            }
        }
        if let Some(will) = will {
            self.publish(will, now);
            self.record_will_gone(&entry.client_id, generation);
        }
    }

    /// Removes a session's subscriptions and marks it ended (state
    /// locked); the records of a persistent session go too. Returns a will
    /// that was waiting for its delay (its record stays until the caller
    /// publishes or drops it).
    pub(crate) fn discard_state(
        &self,
        entry: &SessionEntry,
        state: &mut SessionState,
    ) -> Option<Arc<Message>> {
        let session = entry.mailbox.id();
        for filter in &state.subscriptions {
            if let Ok(parsed) = parse_filter(filter) {
                self.remove_subscription(filter, &parsed, session);
            }
        }
        let will = state.end();
        let mut drained = Vec::new();
        entry.mailbox.take(usize::MAX, &mut drained);
        if entry.mailbox.is_persistent() {
            entry.mailbox.set_persistent(false);
            self.record(|| crate::persist::Change::SessionEnded {
                client_id: entry.client_id.clone(),
            });
        }
        will
    }

    /// Ids (session ids, connection numbers, delivery keys) go on from
    /// `base` at least: nodes sharing one store take disjoint ranges.
    pub fn reserve_ids_from(&self, base: u64) {
        self.next_id.fetch_max(base.max(1), Ordering::Relaxed);
    }

    /// Takes in a session another node kept (SPEC 13: a takeover, or its
    /// node died): offline, with its subscriptions, queue and messages in
    /// flight, as a restart would bring it back; its delivery keys are
    /// kept as they are. Refused (false) when a session of that id is here.
    pub fn adopt_session(&self, s: crate::persist::RestoredSession, now: Time) -> bool {
        if self
            .session(&s.client_id)
            .is_some_and(|e| !e.state.lock().ended)
        {
            return false;
        }
        let mut report = crate::persist::RestoreReport::default();
        self.restore_session(s, now, &mut report);
        report.sessions == 1
    }

    /// Hands a session over to another node (SPEC 13): its connection here
    /// closes with DISCONNECT 0x8E and the session leaves this node without
    /// its records being ended (the other node reads them and carries on).
    /// Its will does not go out (the client lives on). Wait for
    /// [`Broker::state_written`] before telling the other node.
    pub fn release_session(&self, client_id: &str, now: Time) -> bool {
        let Some(entry) = self.session(client_id) else {
            return false;
        };
        {
            let mut state = entry.state.lock();
            if state.ended {
                return false;
            }
            if state.owner != 0 {
                entry
                    .mailbox
                    .kick(state.owner, certmq_codec::ReasonCode::SESSION_TAKEN_OVER);
                // The closing connection sees a takeover of a resumed
                // session: a delayed will is cancelled.
                state.owner = 0;
            }
            if state.take_pending_will().is_some() {
                self.record_will_gone(&entry.client_id, state.last_owner);
            }
            state.moved = true;
            // Not ended in the store: the records stay for the new node.
            entry.mailbox.set_persistent(false);
        }
        self.end_session(&entry, now);
        true
    }

    /// Waits until every change recorded so far is written (true) or failed
    /// (false). Without a store that tells, true at once.
    pub async fn state_written(&self) -> bool {
        let Some(p) = self.persist() else {
            return true;
        };
        let Some(d) = p.durability() else {
            return true;
        };
        let to = p.recorded();
        p.flush_soon();
        std::future::poll_fn(|cx| d.poll_settled(cx, to.saturating_sub(1), to)).await
    }

    /// The installed cluster forwarder, if any.
    pub(crate) fn forwarder(&self) -> Option<&Arc<dyn crate::Forwarder>> {
        self.forwarder.get()
    }

    /// Another node took `client_id` over (SPEC 13) with a connection
    /// made at `at_ms` (unix milliseconds): the connection here closes with
    /// DISCONNECT 0x8E (Session taken over) and the session here ends,
    /// without a delayed will (the client lives on there). A connection
    /// here that came later stays. Returns whether there was a session.
    pub fn session_moved(&self, client_id: &str, at_ms: u64, now: Time) -> bool {
        let Some(entry) = self.session(client_id) else {
            return false;
        };
        {
            let mut state = entry.state.lock();
            if state.ended || state.since_ms > at_ms {
                return false;
            }
            if state.owner != 0 {
                entry
                    .mailbox
                    .kick(state.owner, certmq_codec::ReasonCode::SESSION_TAKEN_OVER);
            }
            if state.take_pending_will().is_some() {
                self.record_will_gone(&entry.client_id, state.last_owner);
            }
        }
        self.end_session(&entry, now);
        true
    }

    /// Closes the live connection of a client, if any (administrative kick).
    pub fn kick(&self, client_id: &str, reason: certmq_codec::ReasonCode) -> bool {
        self.kick_with_text(client_id, reason, None)
    }

    /// [`Broker::kick`] with a reason string for MQTT 5 clients.
    pub fn kick_with_text(
        &self,
        client_id: &str,
        reason: certmq_codec::ReasonCode,
        text: Option<&'static str>,
    ) -> bool {
        let Some(entry) = self.session(client_id) else {
            return false;
        };
        let owner = entry.state.lock().owner;
        if owner == 0 {
            return false;
        }
        entry.mailbox.kick_with_text(owner, reason, text);
        true
    }
}

/// Builds the message a PUBLISH or will carries into the broker.
pub fn message_from(
    topic: Arc<str>,
    payload: bytes::Bytes,
    qos: QoS,
    retain: bool,
    props: &Properties,
    origin: Option<SessionId>,
    now: Time,
) -> Message {
    Message {
        topic,
        payload,
        qos,
        retain,
        properties: Properties {
            payload_format_indicator: props.payload_format_indicator,
            content_type: props.content_type.clone(),
            response_topic: props.response_topic.clone(),
            correlation_data: props.correlation_data.clone(),
            user_properties: props.user_properties.clone(),
            ..Properties::default()
        },
        expires_at: props
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s))),
        origin,
    }
}
