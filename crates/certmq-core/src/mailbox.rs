//! The per-session queue that publishers push deliveries into.
//!
//! Publishers on any thread call [`Mailbox::push`]; the session's connection
//! drains it. Each mailbox has its own small lock, so there is no global lock
//! on the publish path. The queue is bounded: see [`Mailbox::push`] for the
//! drop policy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// The queue holds `max_queued_messages` already.
    QueueFull,
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

#[derive(Debug)]
pub struct Mailbox {
    id: SessionId,
    client_id: Arc<str>,
    limit: usize,
    online: AtomicBool,
    /// The session outlives its connection (expiry above 0) and a
    /// `persist` seam is installed: its QoS 1/2 deliveries are recorded.
    persistent: AtomicBool,
    dropped: AtomicU64,
    /// When the client was last heard from (Unix milliseconds).
    last_heard_ms: AtomicU64,
    /// Silence allowed before the keep-alive sweep closes the connection
    /// (1.5 x keep alive, in ms); 0 = not enforced.
    keep_alive_ms: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Delivery>,
    waker: Option<Waker>,
    kick: Option<Kick>,
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
            limit,
            online: AtomicBool::new(false),
            persistent: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            last_heard_ms: AtomicU64::new(0),
            keep_alive_ms: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// Whether the session's deliveries are recorded for a restart.
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    pub(crate) fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Relaxed);
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    pub(crate) fn set_keep_alive(&self, limit_ms: u64, now_ms: u64) {
        self.last_heard_ms.store(now_ms, Ordering::Relaxed);
        self.keep_alive_ms.store(limit_ms, Ordering::Relaxed);
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_heard_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether the keep-alive limit has passed at `now_ms`; reports it once.
    pub(crate) fn keep_alive_expired(&self, now_ms: u64) -> bool {
        let limit = self.keep_alive_ms.load(Ordering::Relaxed);
        if limit == 0 || now_ms.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed)) < limit {
            return false;
        }
        self.keep_alive_ms.store(0, Ordering::Relaxed);
        true
    }

    /// Messages refused so far by the drop policy.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues a delivery. Drop policy: QoS 0 messages for an offline session
    /// are dropped; any message arriving while `limit` deliveries are queued
    /// is dropped (the newest is lost, the queued ones keep their order).
    pub fn push(&self, delivery: Delivery) -> Result<(), Dropped> {
        if delivery.qos == QoS::AtMostOnce && !self.is_online() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(Dropped::OfflineQos0);
        }
        let waker = {
            let mut inner = self.inner.lock();
            if inner.queue.len() >= self.limit {
                drop(inner);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(Dropped::QueueFull);
            }
            inner.queue.push_back(delivery);
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
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
            inner.kick = Some(Kick {
                generation,
                reason,
                text,
            });
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
        if let Some(k) = inner.kick {
            if k.generation == generation {
                return Poll::Ready(Ready::Kicked(k));
            }
        }
        if want_deliveries && !inner.queue.is_empty() {
            return Poll::Ready(Ready::Deliveries);
        }
        inner.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Takes up to `max` deliveries from the front.
    pub(crate) fn take(&self, max: usize, out: &mut Vec<Delivery>) {
        let mut inner = self.inner.lock();
        let n = max.min(inner.queue.len());
        out.extend(inner.queue.drain(..n));
    }

    /// Puts deliveries back at the front, in order (the window closed).
    pub(crate) fn unshift(&self, back: impl DoubleEndedIterator<Item = Delivery>) {
        let mut inner = self.inner.lock();
        for d in back.rev() {
            inner.queue.push_front(d);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
