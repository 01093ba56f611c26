//! Policy changes reach live sessions: every subscription is asked again,
//! with the facts of the connection that owns (or last owned) its session.
//! A subscription no longer allowed is removed (it stops receiving at
//! once); one now allowed only in part has its deliveries checked.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::session::SessionState;
use crate::topic::parse_filter;
use crate::tree::Subscriber;
use crate::{Broker, SessionEntry, SubscribeVerdict};

/// What [`Broker::reauthorize`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reauthorized {
    pub sessions: usize,
    /// Subscriptions removed: the policies no longer allow them.
    pub removed: usize,
    /// Subscriptions whose deliveries are checked one by one now, or no
    /// longer.
    pub rechecked: usize,
}

impl Broker {
    /// Asks the authorizer again about every subscription of every session
    /// whose client's facts are known (call after the policies changed).
    pub fn reauthorize(&self) -> Reauthorized {
        let entries: Vec<Arc<SessionEntry>> = self.sessions.lock().values().cloned().collect();
        let mut total = Reauthorized::default();
        for entry in entries {
            let mut state = entry.state.lock();
            if state.ended || state.facts.is_none() {
                continue;
            }
            let r = self.reauthorize_session(&entry, &mut state);
            total.sessions += 1;
            total.removed += r.removed;
            total.rechecked += r.rechecked;
        }
        total
    }

    /// One session's subscriptions, asked again with its current facts.
    pub(crate) fn reauthorize_session(
        &self,
        entry: &Arc<SessionEntry>,
        state: &mut SessionState,
    ) -> Reauthorized {
        let mut r = Reauthorized::default();
        let (Some(a), Some(facts)) = (self.authorizer(), state.facts.clone()) else {
            return r;
        };
        let filters: Vec<String> = state.subscriptions.iter().cloned().collect();
        for raw in filters {
            let Ok(parsed) = parse_filter(&raw) else {
                continue;
            };
            let current = self.tree.read().get(&parsed, entry.mailbox.id()).cloned();
            let Some(sub) = current else { continue };
            match a.may_subscribe(&facts, parsed.filter, sub.options.qos) {
                SubscribeVerdict::Deny => {
                    self.remove_subscription(&raw, &parsed, entry.mailbox.id());
                    state.unsubscribed(&raw);
                    if entry.mailbox.is_persistent() {
                        self.record(|| crate::persist::Change::Unsubscribed {
                            client_id: entry.client_id.clone(),
                            filter: raw.as_str().into(),
                        });
                    }
                    self.stats.subscribe_denied.fetch_add(1, Ordering::Relaxed);
                    r.removed += 1;
                    tracing::info!(
                        client_id = %entry.client_id.escape_debug(),
                        filter = %raw.escape_debug(),
                        "subscription removed: a policy no longer allows it"
                    );
                }
                verdict => {
                    let check = (verdict == SubscribeVerdict::Checked).then(|| facts.clone());
                    if check.is_some() != sub.check.is_some()
                        || check
                            .as_ref()
                            .zip(sub.check.as_ref())
                            .is_some_and(|(a, b)| !Arc::ptr_eq(a, b))
                    {
                        self.add_subscription(&raw, &parsed, Subscriber { check, ..sub });
                        r.rechecked += 1;
                    }
                }
            }
        }
        r
    }
}
