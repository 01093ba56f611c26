//! One client id, one session, wherever the client connects (SPEC 13):
//! before a CONNECT that resumes a session is accepted, the session comes
//! to this node. The node that has it hands it over (its connection there
//! closes with 0x8E, its records are written to PostgreSQL); when that
//! node is gone, the records it last wrote are read as they are.

use std::sync::Arc;

use certmq_core::{Broker, Time};
use certmq_store::PgStore;

use crate::Bridge;

pub struct Claims {
    pub broker: Arc<Broker>,
    pub store: Arc<PgStore>,
    pub bridge: Arc<Bridge>,
    pub node: String,
    pub now: fn() -> Time,
}

impl Claims {
    async fn bring(&self, client_id: &str, clean_start: bool) {
        if client_id.is_empty()
            || clean_start
            || self.broker.session(client_id).is_some_and(|e| e.is_live())
        {
            // A new id; a session discarded anyway (the node that has it
            // ends it when it hears of this connection); or a session here
            // already (the core resumes it).
            return;
        }
        // The node that has it (connected or not) hands it over; a node
        // that is gone cannot, and what it last wrote is read instead.
        let others = self.others_up().await;
        let released = self.bridge.request_release(client_id, others).await;
        let store = self.store.clone();
        let id = client_id.to_owned();
        match tokio::task::spawn_blocking(move || store.load_session(&id)).await {
            Ok(Ok(Some(s))) => {
                let queued = s.deliveries.len();
                if self.broker.adopt_session(s, (self.now)()) {
                    tracing::info!(
                        client_id,
                        released,
                        queued,
                        "session taken in from the cluster"
                    );
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(client_id, error = %e, "cannot read the kept session; starting here without it")
            }
            Err(_) => {}
        }
    }

    /// Other nodes heard from lately (their heartbeats), when the store
    /// answers.
    async fn others_up(&self) -> Option<usize> {
        let store = self.store.clone();
        let nodes = tokio::task::spawn_blocking(move || store.nodes())
            .await
            .ok()?
            .ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Some(
            nodes
                .iter()
                .filter(|n| n.id != self.node && now - n.seen_at <= UP_WITHIN_SECS)
                .count(),
        )
    }
}

/// A node whose heartbeat is older than this is taken for gone.
pub const UP_WITHIN_SECS: i64 = 6;

impl certmq_net::SessionClaims for Claims {
    fn claim<'a>(
        &'a self,
        client_id: &'a str,
        clean_start: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.bring(client_id, clean_start))
    }
}
