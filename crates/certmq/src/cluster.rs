//! The cluster as this node's admin API shows it (SPEC 13): the nodes from
//! the shared store's heartbeats, and the links' metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use certmq_admin::cluster::{Address, BoxFuture, ClusterMetric, ClusterView, NodeView};
use certmq_admin::error::{ApiError, Kind};
use certmq_admin::routes::ConnectionView;

/// How often a node writes its heartbeat, and after how long without one
/// it shows as down.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
const DOWN_AFTER_SECS: i64 = 6;

pub struct Cluster {
    pub node_id: String,
    pub pg: Option<Arc<certmq_store::PgStore>>,
    pub follow: Option<Arc<certmq_cluster::FollowStats>>,
    pub bridge: Option<Arc<certmq_cluster::Bridge>>,
}

impl Cluster {
    /// How many other nodes are up, when the shared store knows.
    async fn others_up(pg: Option<Arc<certmq_store::PgStore>>, me: String) -> Option<usize> {
        let pg = pg?;
        let nodes = tokio::task::spawn_blocking(move || pg.nodes())
            .await
            .ok()?
            .ok()?;
        let now = certmq_registry::now_unix();
        Some(
            nodes
                .iter()
                .filter(|n| n.id != me && now - n.seen_at <= DOWN_AFTER_SECS)
                .count(),
        )
    }
}

impl ClusterView for Cluster {
    fn connections(&self, node: Option<String>) -> BoxFuture<Vec<ConnectionView>> {
        let (bridge, pg, me) = (self.bridge.clone(), self.pg.clone(), self.node_id.clone());
        Box::pin(async move {
            let Some(bridge) = bridge else {
                return Vec::new();
            };
            let others = if node.is_none() {
                Self::others_up(pg, me).await
            } else {
                None
            };
            bridge
                .connections(node.as_deref(), others)
                .await
                .into_iter()
                .map(|c| ConnectionView {
                    node: c.node,
                    client_id: c.client_id,
                    listener: c.listener,
                    peer_address: c.peer_address,
                    certificate_id: c.certificate_id,
                    connected_at: certmq_registry::rfc3339(c.connected_at),
                    username: c.username,
                })
                .collect()
        })
    }

    fn kick(&self, client_id: String) -> BoxFuture<bool> {
        let (bridge, pg, me) = (self.bridge.clone(), self.pg.clone(), self.node_id.clone());
        Box::pin(async move {
            let Some(bridge) = bridge else {
                return false;
            };
            let others = Self::others_up(pg, me).await;
            bridge.kick_elsewhere(&client_id, others).await
        })
    }

    fn nodes(&self, this: NodeView) -> Result<Vec<NodeView>, ApiError> {
        let Some(pg) = &self.pg else {
            return Ok(vec![this]);
        };
        let records = pg
            .nodes()
            .map_err(|e| ApiError::new(Kind::Unavailable, "RegistryUnavailable", e.to_string()))?;
        let now = certmq_registry::now_unix();
        let mut out: Vec<NodeView> = records
            .into_iter()
            .filter(|r| r.id != this.id)
            .map(|r| {
                let addresses: Vec<Address> =
                    serde_json::from_value(r.info["addresses"].clone()).unwrap_or_default();
                NodeView {
                    id: r.id,
                    this: false,
                    health: if now - r.seen_at <= DOWN_AFTER_SECS {
                        "up"
                    } else {
                        "down"
                    },
                    addresses,
                    connections: r.info["connections"].as_u64().unwrap_or(0),
                    started_at: certmq_registry::rfc3339(r.started_at),
                    last_seen: certmq_registry::rfc3339(r.seen_at),
                }
            })
            .collect();
        out.push(this);
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn health(&self) -> Option<serde_json::Value> {
        if self.follow.is_none() && self.bridge.is_none() {
            return None;
        }
        let state = |up: bool| if up { "up" } else { "down" };
        let mut v = serde_json::json!({"node": self.node_id});
        if let Some(f) = &self.follow {
            v["registry"] = state(f.up.load(Ordering::Relaxed)).into();
        }
        if let Some(b) = &self.bridge {
            v["nats"] = state(b.is_connected()).into();
        }
        Some(v)
    }

    fn metrics(&self) -> Vec<ClusterMetric> {
        let mut m = Vec::new();
        let mut one = |name, kind, help, value: f64| {
            m.push(ClusterMetric {
                name,
                kind,
                help,
                labels: Vec::new(),
                value,
            })
        };
        if let Some(f) = &self.follow {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
            one(
                "cluster_registry_up",
                "gauge",
                "Whether the shared registry (PostgreSQL) is reachable (1) or not (0)",
                if f.up.load(Ordering::Relaxed) {
                    1.0
                } else {
                    0.0
                },
            );
            one(
                "cluster_registry_changes_applied_total",
                "counter",
                "Registry changes made by other nodes and applied here",
                load(&f.applied),
            );
            one(
                "cluster_registry_full_reloads_total",
                "counter",
                "Times the whole registry was read again (after an outage or a missed change)",
                load(&f.full_reloads),
            );
        }
        if let Some(b) = &self.bridge {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
            one(
                "cluster_nats_up",
                "gauge",
                "Whether the NATS link between nodes is connected (1) or not (0)",
                if b.is_connected() { 1.0 } else { 0.0 },
            );
            one(
                "cluster_messages_forwarded_total",
                "counter",
                "Messages published here and handed to NATS for other nodes",
                load(&b.stats.forwarded),
            );
            one(
                "cluster_messages_received_total",
                "counter",
                "Messages from other nodes routed to this node's subscribers",
                load(&b.stats.received),
            );
            one(
                "cluster_messages_not_forwarded_total",
                "counter",
                "Messages not forwarded because the queue to NATS was full",
                load(&b.stats.dropped),
            );
        }
        m
    }
}

/// Writes this node's heartbeat to the shared store every [`HEARTBEAT`]
/// (its addresses and connection count), until the process ends.
pub async fn heartbeat(
    pg: Arc<certmq_store::PgStore>,
    started_at: i64,
    listeners: Arc<Vec<(String, String)>>,
    control: Arc<dyn certmq_core::Control>,
) {
    let addresses: Vec<Address> = listeners
        .iter()
        .map(|(p, a)| Address {
            protocol: p.clone(),
            address: a.clone(),
        })
        .collect();
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut failing = false;
    loop {
        tick.tick().await;
        let connections: usize = control.traffic().open.iter().map(|(_, n)| *n).sum();
        let info = serde_json::json!({
            "addresses": addresses,
            "connections": connections,
            "version": env!("CARGO_PKG_VERSION"),
        });
        let pg = pg.clone();
        let r = tokio::task::spawn_blocking(move || pg.heartbeat(started_at, &info)).await;
        match r {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cluster heartbeat not written");
            }
            _ => {}
        }
    }
}
