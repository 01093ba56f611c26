//! The per-session queue that publishers push deliveries into.
//!
//! Publishers on any thread call [`Mailbox::push`]; the session's connection
//! drains it. Each mailbox has its own small lock, so there is no global lock
//! on the publish path.
//!
//! Flow control (SPEC 2): when a live subscriber's queue reaches `limit`
//! and is *draining* (the subscriber made progress within
//! [`DRAIN_WINDOW_MS`]), a push is reported [`Pushed::Full`] or
//! [`Pushed::Over`]: the publishing connection then stops taking new
//! publishes until [`Mailbox::poll_room`] says the queue drained (an `Over`
//! push is accepted, so the queue passes the limit by at most one delivery
//! per waiting publisher). A queue that is not draining pauses nobody until
//! it has caught up (down to three quarters of the limit): it takes up to
//! `limit` more deliveries as a reserve while its subscriber may still
//! recover; past the reserve, or once the subscriber made no progress for
//! the slow-consumer timeout, new deliveries are dropped (`SlowConsumer`).
//! Offline sessions drop at the limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use certmq_codec::{QoS, ReasonCode};
use parking_lot::Mutex;

use crate::{Delivery, SessionId};

/// Why a mailbox refused a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The session is offline and the message is QoS 0 (not queued, as mosquitto).
    OfflineQos0,
    /// The queue holds `max_queued_messages` already and the session is
    /// offline.
    QueueFull,
    /// The subscriber is online and not draining its full queue: its
    /// reserve is used up too, or it made no progress for
    /// `slow_consumer_timeout_ms`.
    SlowConsumer,
}

/// A delivery the mailbox accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and this draining queue reached its limit: a publisher that
    /// can wait should, until [`Mailbox::poll_room`] is ready.
    Full,
    /// Queued past the limit (the subscriber is draining its queue and the
    /// publisher can wait): the publisher must wait.
    Over,
}

/// A full queue counts as draining while its subscriber made progress
/// within this many milliseconds: only then does it pause publishers. A
/// subscriber that reads makes progress far more often (its connection
/// reports every write that empties its buffer or takes 4 KiB); one that
/// stopped reading pauses its publishers for at most about this long (plus
/// the broker's congestion check interval).
pub const DRAIN_WINDOW_MS: u64 = 100;

/// How a publish pushes: the time, the slow-consumer timeout and whether
/// the publisher can wait for room (a client connection can; a will or a
/// timer cannot, so for them a full queue goes on into its reserve).
#[derive(Debug, Clone, Copy)]
pub struct PushMode {
    pub now_ms: u64,
    pub stall_ms: u64,
    pub can_wait: bool,
}

/// A request for the current connection of a session to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kick {
    /// The connection generation being closed; newer connections ignore it.
    pub generation: u64,
    pub reason: ReasonCode,
    /// MQTT 5 reason string of the DISCONNECT, if any.
    pub text: Option<&'static str>,
}

/// Bits of [`Mailbox::flags`].
const ONLINE: u8 = 1;
/// The session outlives its connection (expiry above 0) and a `persist`
/// seam is installed: its QoS 1/2 deliveries are recorded.
const PERSISTENT: u8 = 2;
/// The queue is at its limit (a hint for shared-subscription picks).
const FULL: u8 = 4;
/// A push found that the subscriber made no progress for the slow-consumer
/// timeout; cleared by its next progress.
const STALLED: u8 = 8;
/// Pushes are being dropped: the episode was logged once.
const DROPPING: u8 = 16;
/// This session's own connection waits for room in other queues: the
/// keep-alive sweep does not count the silence the broker caused.
const WAITING: u8 = 32;
/// Publishers wait on this queue: it is on the broker's congestion list.
const CONGESTED: u8 = 64;
/// The subscriber fell behind: its full queue stopped draining for
/// [`DRAIN_WINDOW_MS`]. Until it catches up (its queue down to three
/// quarters of the limit) it pauses nobody, whatever trickle of progress
/// it makes.
const BEHIND: u8 = 128;

#[derive(Debug)]
pub struct Mailbox {
    id: SessionId,
    client_id: Arc<str>,
    limit: usize,
    flags: AtomicU8,
    dropped: AtomicU64,
    /// When the client was last heard from (Unix milliseconds).
    last_heard_ms: AtomicU64,
    /// Silence allowed before the keep-alive sweep closes the connection
    /// (1.5 x keep alive, in ms); 0 = not enforced.
    keep_alive_ms: AtomicU64,
    /// When the subscriber last made progress: its connection reported
    /// writes, it came online, or it had nothing queued (Unix ms).
    progress_ms: AtomicU64,
    inner: Mutex<Inner>,
}

/// Kicks and waiting publishers are rare: boxed, so that every session's
/// mailbox holds two pointers for them rather than 64 bytes.
#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Delivery>,
    waker: Option<Waker>,
    kick: Option<Box<Kick>>,
    /// Publishers waiting for room in this queue.
    #[allow(clippy::box_collection)]
    waiters: Option<Box<Vec<Waker>>>,
}

impl Inner {
    fn take_waiters(&mut self) -> Vec<Waker> {
        self.waiters.take().map(|w| *w).unwrap_or_default()
    }

    fn has_waiters(&self) -> bool {
        self.waiters.as_ref().is_some_and(|w| !w.is_empty())
    }
}

/// What a connection finds when it polls its mailbox.
pub enum Ready {
    Deliveries,
    Kicked(Kick),
}

impl Mailbox {
    pub fn new(id: SessionId, client_id: Arc<str>, limit: usize) -> Self {
        Self {
            id,
            client_id,
            limit: limit.max(1),
            flags: AtomicU8::new(0),
            dropped: AtomicU64::new(0),
            last_heard_ms: AtomicU64::new(0),
            keep_alive_ms: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A queue read by something other than a connection (the cluster's
    /// queue to NATS): always online, with the same limits, flow control
    /// and drop policy as a subscriber's. Its reader takes with
    /// [`Mailbox::take`] after [`Mailbox::poll_ready`], and reports
    /// [`Mailbox::progress`].
    pub fn channel(name: &str, limit: usize) -> Self {
        let m = Self::new(SessionId(0), name.into(), limit);
        m.set_online(true, 0);
        m
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    fn flag(&self, bit: u8) -> bool {
        self.flags.load(Ordering::Relaxed) & bit != 0
    }

    /// Sets or clears `bit` (or, clearing, every bit of a mask).
    fn set_flag(&self, bit: u8, on: bool) {
        // Skip the atomic read-modify-write when nothing changes: these
        // are read on every publish, written rarely.
        if self.flag(bit) != on {
            if on {
                self.flags.fetch_or(bit, Ordering::Relaxed);
            } else {
                self.flags.fetch_and(!bit, Ordering::Relaxed);
            }
        }
    }

    /// Whether the session's deliveries are recorded for a restart.
    pub fn is_persistent(&self) -> bool {
        self.flag(PERSISTENT)
    }

    pub(crate) fn set_persistent(&self, persistent: bool) {
        self.set_flag(PERSISTENT, persistent);
    }

    pub fn is_online(&self) -> bool {
        self.flag(ONLINE)
    }

    /// Online, neither stalled nor behind, and below its limit: a shared
    /// subscription prefers such members.
    pub(crate) fn has_room(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & (ONLINE | FULL | STALLED | BEHIND) == ONLINE
    }

    /// Online and not stalled.
    pub(crate) fn is_live(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & (ONLINE | STALLED) == ONLINE
    }

    /// A connection came (`now_ms`) or went. Going offline releases the
    /// publishers waiting for room: offline sessions get the drop policy.
    pub(crate) fn set_online(&self, online: bool, now_ms: u64) {
        self.set_flag(ONLINE, online);
        if online {
            self.progress_ms.store(now_ms, Ordering::Relaxed);
            self.set_flag(STALLED | DROPPING | WAITING | BEHIND, false);
        } else {
            self.set_flag(WAITING, false);
            let waiters = self.inner.lock().take_waiters();
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    pub(crate) fn set_keep_alive(&self, limit_ms: u64, now_ms: u64) {
        self.last_heard_ms.store(now_ms, Ordering::Relaxed);
        self.keep_alive_ms.store(limit_ms, Ordering::Relaxed);
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_heard_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Marks this session's connection as waiting for room elsewhere (the
    /// broker stopped reading it) or done waiting (`now_ms`: heard now).
    pub(crate) fn set_waiting(&self, waiting: bool, now_ms: u64) {
        self.set_flag(WAITING, waiting);
        self.touch(now_ms);
    }

    /// Whether the keep-alive limit has passed at `now_ms`; reports it once.
    /// A connection the broker stopped reading is not judged.
    pub(crate) fn keep_alive_expired(&self, now_ms: u64) -> bool {
        let limit = self.keep_alive_ms.load(Ordering::Relaxed);
        if limit == 0
            || self.flag(WAITING)
            || now_ms.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed)) < limit
        {
            return false;
        }
        self.keep_alive_ms.store(0, Ordering::Relaxed);
        true
    }

    /// Messages refused so far by the drop policy.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the subscriber made no progress for `stall_ms` at `now_ms`.
    fn stalled_at(&self, now_ms: u64, stall_ms: u64) -> bool {
        now_ms.saturating_sub(self.progress_ms.load(Ordering::Relaxed)) >= stall_ms
    }

    /// Whether the subscriber made progress within [`DRAIN_WINDOW_MS`].
    fn draining_at(&self, now_ms: u64) -> bool {
        !self.stalled_at(now_ms, DRAIN_WINDOW_MS)
    }

    /// The subscriber made progress at `now_ms`: its connection wrote out
    /// everything it had buffered, or a good amount of it (the caller
    /// decides). A subscriber that fell behind must also catch up (see
    /// `take`) before it pauses publishers again.
    pub fn progress(&self, now_ms: u64) {
        self.progress_ms.store(now_ms, Ordering::Relaxed);
        self.set_flag(STALLED, false);
    }

    /// Counts a refusal; the first of an episode is logged.
    fn refuse(&self, why: Dropped) -> Dropped {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if why != Dropped::OfflineQos0 && !self.flag(DROPPING) {
            self.set_flag(DROPPING, true);
            tracing::warn!(
                client_id = %self.client_id.escape_debug(),
                reason = ?why,
                limit = self.limit,
                "queue full: dropping messages for this client until it makes progress"
            );
        }
        why
    }

    /// Queues a delivery (see the module docs for flow control). Drop
    /// policy: QoS 0 messages for an offline session are dropped; so is a
    /// message for a full queue whose session is offline, or stalled, or
    /// not draining with its reserve used up (the newest is lost, the
    /// queued ones keep their order).
    pub fn push(&self, delivery: Delivery, mode: PushMode) -> Result<Pushed, Dropped> {
        let online = self.is_online();
        if delivery.qos == QoS::AtMostOnce && !online {
            return Err(self.refuse(Dropped::OfflineQos0));
        }
        let (waker, pushed, at_limit) = {
            let mut inner = self.inner.lock();
            let len = inner.queue.len();
            if len == 0 {
                // Nothing waiting for the subscriber: it is caught up.
                self.progress_ms.store(mode.now_ms, Ordering::Relaxed);
            }
            let full = len >= self.limit;
            let draining = online && !self.flag(BEHIND) && self.draining_at(mode.now_ms);
            if online && !draining && full {
                self.set_flag(BEHIND, true);
            }
            let why = if !online {
                full.then_some(Dropped::QueueFull)
            } else if !full || (mode.can_wait && draining) {
                None
            } else if self.flag(STALLED) || self.stalled_at(mode.now_ms, mode.stall_ms) {
                self.set_flag(STALLED, true);
                Some(Dropped::SlowConsumer)
            } else {
                // Not draining: the reserve, then drops.
                (len >= 2 * self.limit).then_some(Dropped::SlowConsumer)
            };
            if let Some(why) = why {
                drop(inner);
                return Err(self.refuse(why));
            }
            inner.queue.push_back(delivery);
            let pushed = if !(draining && mode.can_wait) || len + 1 < self.limit {
                Pushed::Queued
            } else if full {
                Pushed::Over
            } else {
                Pushed::Full
            };
            (inner.waker.take(), pushed, len + 1 >= self.limit)
        };
        if at_limit {
            self.set_flag(FULL, true);
        }
        if let Some(w) = waker {
            w.wake();
        }
        Ok(pushed)
    }

    /// Ready when a publisher need not wait for this queue any more: it
    /// has room again, its session went offline, or it stopped draining
    /// (see [`DRAIN_WINDOW_MS`]). Otherwise registers the task to be woken
    /// by the subscriber's progress or the broker's congestion check.
    pub fn poll_room(&self, cx: &mut Context<'_>, now_ms: u64) -> Poll<()> {
        let mut inner = self.inner.lock();
        if !self.is_online()
            || self.flag(BEHIND)
            || self.room_for_waiters(inner.queue.len())
            || !self.draining_at(now_ms)
        {
            return Poll::Ready(());
        }
        let waiters = inner.waiters.get_or_insert_with(Box::default);
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Whether a queue of `len` has room enough to release its waiting
    /// publishers: a quarter of the limit free, so they resume in batches
    /// rather than one message at a time.
    fn room_for_waiters(&self, len: usize) -> bool {
        len + (self.limit / 4).max(1) <= self.limit
    }

    /// Marks the queue as watched by the broker's congestion check;
    /// false if it was already.
    pub(crate) fn mark_congested(&self) -> bool {
        if self.flag(CONGESTED) {
            return false;
        }
        self.flags.fetch_or(CONGESTED, Ordering::Relaxed) & CONGESTED == 0
    }

    /// The broker's congestion check: releases the waiting publishers once
    /// the queue stopped draining (or has no waiters left). Returns whether
    /// to keep watching it.
    pub(crate) fn check_congestion(&self, now_ms: u64) -> bool {
        let waiters = {
            let mut inner = self.inner.lock();
            if inner.has_waiters() && self.draining_at(now_ms) && self.is_online() {
                return true;
            }
            self.set_flag(CONGESTED, false);
            if inner.has_waiters() && self.is_online() {
                self.set_flag(BEHIND, true);
            }
            inner.take_waiters()
        };
        if !waiters.is_empty() && !self.flag(DROPPING) {
            tracing::info!(
                client_id = %self.client_id.escape_debug(),
                publishers = waiters.len(),
                "subscriber stopped draining its full queue: its publishers carry on"
            );
        }
        waiters.into_iter().for_each(Waker::wake);
        false
    }

    /// Counts `n` deliveries refused before they reached the queue.
    pub(crate) fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Queues deliveries the session asked for itself (retained messages on
    /// subscribe); the caller keeps them within the limit.
    pub(crate) fn push_own(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        let waker = {
            let mut inner = self.inner.lock();
            inner.queue.extend(deliveries);
            if inner.queue.len() >= self.limit {
                self.set_flag(FULL, true);
            }
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Asks the connection of `generation` to close with `reason`.
    pub fn kick(&self, generation: u64, reason: ReasonCode) {
        self.kick_with_text(generation, reason, None)
    }

    /// [`Mailbox::kick`] with a reason string for MQTT 5 clients.
    pub fn kick_with_text(&self, generation: u64, reason: ReasonCode, text: Option<&'static str>) {
        let waker = {
            let mut inner = self.inner.lock();
            inner.kick = Some(Box::new(Kick {
                generation,
                reason,
                text,
            }));
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready when a kick for `generation` arrived, or (if `want_deliveries`)
    /// when deliveries are queued; otherwise registers the task to be woken.
    pub fn poll_ready(
        &self,
        cx: &mut Context<'_>,
        generation: u64,
        want_deliveries: bool,
    ) -> Poll<Ready> {
        let mut inner = self.inner.lock();
        if let Some(k) = inner.kick.as_deref() {
            if k.generation == generation {
                return Poll::Ready(Ready::Kicked(*k));
            }
        }
        if want_deliveries && !inner.queue.is_empty() {
            return Poll::Ready(Ready::Deliveries);
        }
        // Most polls come from the same task: keep its waker rather than
        // swapping in a clone (two atomic operations on the task).
        if !inner
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Takes up to `max` deliveries from the front. Wakes the waiting
    /// publishers once there is room for them. (Taking is not progress by
    /// itself: a connection takes whenever its output buffer has room, and
    /// a client that stopped reading still frees a few bytes of it now and
    /// then; the connection reports progress, see [`Mailbox::progress`].)
    pub fn take(&self, max: usize, out: &mut Vec<Delivery>) {
        let waiters = {
            let mut inner = self.inner.lock();
            let n = max.min(inner.queue.len());
            if n == 0 {
                return;
            }
            out.extend(inner.queue.drain(..n));
            let len = inner.queue.len();
            if len < self.limit {
                self.set_flag(FULL, false);
            }
            if self.room_for_waiters(len) {
                // Caught up: the episode, if any, is over.
                self.set_flag(BEHIND | DROPPING, false);
            }
            if !inner.has_waiters() || !self.room_for_waiters(len) {
                return;
            }
            inner.take_waiters()
        };
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Puts deliveries back at the front, in order (the window closed).
    pub(crate) fn unshift(&self, back: impl DoubleEndedIterator<Item = Delivery>) {
        let mut inner = self.inner.lock();
        for d in back.rev() {
            inner.queue.push_front(d);
        }
        if inner.queue.len() >= self.limit {
            self.set_flag(FULL, true);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
