//! Sessions of a node that is gone (SPEC 13): one surviving node, the
//! first by id among those up, takes in the persistent sessions and wills
//! of a node silent for [`GONE_AFTER_SECS`], so that their subscriptions
//! queue again, their expiry runs and their wills go out, until each client
//! comes back (to any node: the session is then handed over as usual).

use std::sync::Arc;
use std::time::Duration;

use certmq_core::{Broker, Time};
use certmq_store::PgStore;

/// A node without a heartbeat for this long has its sessions taken over.
pub const GONE_AFTER_SECS: i64 = 15;

/// Whether `me` is the first by id of the nodes up (this one counts as
/// up): the one node that does what only one should (adopting the
/// sessions of gone nodes, announcing certificate expiry).
pub fn is_first_up(store: &PgStore, me: &str) -> Result<bool, String> {
    let nodes = store.nodes().map_err(|e| e.to_string())?;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let first_up = nodes
        .iter()
        .filter(|n| n.id == me || wall - n.seen_at <= crate::claims::UP_WITHIN_SECS)
        .map(|n| n.id.as_str())
        .chain(std::iter::once(me))
        .min();
    Ok(first_up == Some(me))
}

/// Looks for sessions of gone nodes every `every`, until the process ends.
pub async fn adopt_orphans(
    broker: Arc<Broker>,
    store: Arc<PgStore>,
    node: String,
    now: fn() -> Time,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let s = store.clone();
        let me = node.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
            if !is_first_up(&s, &me)? {
                return Ok(Vec::new());
            }
            s.orphan_owners(GONE_AFTER_SECS).map_err(|e| e.to_string())
        })
        .await;
        let owners = match found {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot look for sessions of gone nodes");
                continue;
            }
            Err(_) => continue,
        };
        for gone in owners {
            let s = store.clone();
            let g = gone.clone();
            match tokio::task::spawn_blocking(move || s.adopt_node(&g)).await {
                Ok(Ok((restored, dropped))) => {
                    let r = broker.adopt(restored, now());
                    tracing::warn!(
                        node = %gone,
                        sessions = r.sessions,
                        queued = r.queued,
                        wills_published = r.wills_published,
                        wills_pending = r.wills_pending,
                        expired = r.sessions_expired,
                        dropped,
                        "took in the sessions of a node that is gone"
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %gone, error = %e, "cannot take in the sessions of a gone node")
                }
                Err(_) => {}
            }
        }
    }
}
