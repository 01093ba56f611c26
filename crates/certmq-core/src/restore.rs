//! Bringing kept state back: [`Broker::restore`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use certmq_codec::QoS;

use crate::persist::{
    Change, DeliveryState, RestoreReport, Restored, RestoredSession, RestoredWill, WillRecord,
};
use crate::session::Timer;
use crate::topic::parse_filter;
use crate::tree::Subscriber;
use crate::{Broker, SessionEntry, Time};

impl Broker {
    /// Restores what a store kept, at startup, before any connection: the
    /// retained messages; every session, offline, with its subscriptions,
    /// queue, messages in flight (resent with DUP when it resumes) and
    /// incoming QoS 2 ids; and the wills, on the clock they were on. A
    /// session that had a connection when the broker stopped went offline
    /// now, so its expiry and its will's delay start now. A will of a
    /// session that did not outlive its connection goes out at once.
    ///
    /// Install the [`crate::Persist`] first: what restoring changes is
    /// recorded (a session's offline time, wills under their new
    /// connection numbers, messages the published wills queue).
    pub fn restore(&self, restored: Restored, now: Time) -> RestoreReport {
        // Ids go on above every kept one, so that no key or connection
        // number is reused.
        let kept = restored
            .sessions
            .iter()
            .flat_map(|s| s.deliveries.iter().map(|d| d.key))
            .chain(restored.wills.iter().map(|w| w.generation))
            .max()
            .unwrap_or(0);
        self.next_id
            .fetch_max(kept.saturating_add(1), Ordering::Relaxed);
        self.restore_kept(restored, now)
    }

    /// Takes in what another node kept (SPEC 13: a node that died and
    /// whose clients have not come back): as [`Broker::restore`], while
    /// running, keeping this node's ids in their own range (the kept keys
    /// are from another node's range), and leaving out sessions this node
    /// has already.
    pub fn adopt(&self, mut restored: Restored, now: Time) -> RestoreReport {
        restored.sessions.retain(|s| {
            self.session(&s.client_id)
                .is_none_or(|e| e.state.lock().ended)
        });
        self.restore_kept(restored, now)
    }

    fn restore_kept(&self, restored: Restored, now: Time) -> RestoreReport {
        let mut report = RestoreReport::default();
        let mut expired = Vec::new();
        {
            let mut retained = self.retained.write();
            for m in restored.retained {
                if !m.is_expired(now) && !m.payload.is_empty() {
                    retained.insert(m);
                    report.retained += 1;
                } else {
                    expired.push(m.topic.clone());
                }
            }
        }
        // Expired while the broker was down: their records go too.
        for topic in expired {
            self.record(|| Change::Retained {
                topic,
                message: None,
            });
        }
        for s in restored.sessions {
            self.restore_session(s, now, &mut report);
        }
        for w in restored.wills {
            self.restore_will(w, now, &mut report);
        }
        report
    }

    pub(crate) fn restore_session(
        &self,
        s: RestoredSession,
        now: Time,
        report: &mut RestoreReport,
    ) {
        let offline_since = s.offline_since.unwrap_or(now);
        let ends_at = (s.expiry_interval != u32::MAX)
            .then(|| offline_since + Duration::from_secs(u64::from(s.expiry_interval)));
        if ends_at.is_some_and(|at| at <= now) {
            // Expired while the broker was down: gone before anyone can
            // resume it (its will, if kept, goes out with the wills).
            self.record(|| Change::SessionEnded {
                client_id: s.client_id.clone(),
            });
            report.sessions_expired += 1;
            return;
        }
        let entry = self.new_session(s.client_id.clone());
        let generation = self.next_id();
        {
            let mut state = entry.state.lock();
            state.take_ownership(generation, s.expiry_interval, s.identity);
            state.release_ownership(generation);
            entry.mailbox.set_persistent(self.keeps(s.expiry_interval));
            for (filter, options, subscription_id) in s.subscriptions {
                let Ok(parsed) = parse_filter(&filter) else {
                    report.skipped += 1;
                    continue;
                };
                self.add_subscription(
                    &filter,
                    &parsed,
                    Subscriber {
                        mailbox: entry.mailbox.clone(),
                        options,
                        subscription_id,
                        check: None,
                    },
                );
                state.subscribed(&filter);
                report.subscriptions += 1;
            }
            let mut queued = Vec::new();
            for d in s.deliveries {
                let mut delivery = d.delivery;
                delivery.key = d.key;
                match d.state {
                    DeliveryState::Queued => queued.push(delivery),
                    DeliveryState::Sent(packet_id) | DeliveryState::Released(packet_id)
                        if packet_id != 0
                            && delivery.qos != QoS::AtMostOnce
                            && !state.inflight.contains_key(&packet_id) =>
                    {
                        state.sent(packet_id, delivery);
                        if matches!(d.state, DeliveryState::Released(_)) {
                            state.received(packet_id);
                        }
                        report.inflight += 1;
                    }
                    _ => report.skipped += 1,
                }
            }
            report.queued += queued.len();
            entry.mailbox.push_own(queued);
            for packet_id in s.incoming_qos2 {
                state.incoming_qos2_routed(packet_id);
            }
            if s.offline_since.is_none() {
                self.record_session(&entry, &state, Some(offline_since));
            }
        }
        if let Some(at) = ends_at {
            self.add_timer(at, Timer::Expire(entry.clone(), generation));
        }
        self.sessions.lock().insert(s.client_id, entry);
        report.sessions += 1;
    }

    fn restore_will(&self, w: RestoredWill, now: Time, report: &mut RestoreReport) {
        let RestoredWill {
            client_id,
            generation: old,
            will,
        } = w;
        let entry: Option<Arc<SessionEntry>> = self
            .session(&client_id)
            .filter(|e| e.mailbox.is_persistent());
        let Some(entry) = entry else {
            // Its session ended with its connection: the will goes now.
            self.publish(will.message, now);
            self.record_will_gone(&client_id, old);
            report.wills_published += 1;
            return;
        };
        let mut state = entry.state.lock();
        let generation = state.last_owner;
        let at = will.publish_at.unwrap_or_else(|| {
            let delay = will.delay.min(state.expiry_interval);
            now + Duration::from_secs(u64::from(delay))
        });
        if let Some(older) = state.take_pending_will() {
            // Two kept wills for one session (cannot happen unless records
            // were damaged): the older goes out now.
            self.publish(older, now);
            report.wills_published += 1;
        }
        state.set_pending_will(Some(will.message.clone()));
        drop(state);
        self.record(|| Change::Will {
            client_id: client_id.clone(),
            generation,
            will: Some(WillRecord {
                message: will.message,
                delay: will.delay,
                publish_at: Some(at),
            }),
        });
        self.record_will_gone(&client_id, old);
        self.add_timer(at, Timer::Will(entry, generation));
        report.wills_pending += 1;
    }
}
