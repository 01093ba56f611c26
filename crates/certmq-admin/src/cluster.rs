//! `GET /cluster/nodes` (SPEC 13): the nodes of the cluster as any node
//! sees them. The binary plugs in a [`ClusterView`] over the shared store;
//! a node on its own is a cluster of one.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::error::ApiError;
use crate::routes::{ConnectionView, Items};
use crate::AdminState;

/// A listener of a node.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Address {
    pub protocol: String,
    pub address: String,
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeView {
    pub id: String,
    /// Whether this is the node answering.
    pub this: bool,
    /// `up` (heard from within the last few seconds) or `down`.
    pub health: &'static str,
    pub addresses: Vec<Address>,
    /// Its live MQTT connections.
    pub connections: u64,
    pub started_at: String,
    pub last_seen: String,
}

/// A metric of the cluster's links.
#[derive(Debug, Clone)]
pub struct ClusterMetric {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What the cluster knows beyond this node.
pub trait ClusterView: Send + Sync + 'static {
    /// Every node, given this one as it stands (blocking: it may read the
    /// shared store).
    fn nodes(&self, this: NodeView) -> Result<Vec<NodeView>, ApiError>;
    /// The links' metrics (cheap: counters only).
    fn metrics(&self) -> Vec<ClusterMetric>;
    /// The links' state for `GET /health` (`None`: a node on its own).
    fn health(&self) -> Option<serde_json::Value> {
        None
    }
    /// Live connections of the other nodes (`node`: of that one only).
    fn connections(&self, _node: Option<String>) -> BoxFuture<Vec<ConnectionView>> {
        Box::pin(async { Vec::new() })
    }
    /// Closes `client_id`'s connection on another node; whether one had it.
    fn kick(&self, _client_id: String) -> BoxFuture<bool> {
        Box::pin(async { false })
    }
}

/// A node on its own: a cluster of one.
#[derive(Debug, Default)]
pub struct SingleNode;

impl ClusterView for SingleNode {
    fn nodes(&self, this: NodeView) -> Result<Vec<NodeView>, ApiError> {
        Ok(vec![this])
    }
    fn metrics(&self) -> Vec<ClusterMetric> {
        Vec::new()
    }
}

/// This node as it stands now.
pub fn this_node(s: &AdminState) -> NodeView {
    let now = certmq_registry::rfc3339(certmq_registry::now_unix());
    NodeView {
        id: s.node_id.to_string(),
        this: true,
        health: "up",
        addresses: s
            .listeners
            .iter()
            .map(|(p, a)| Address {
                protocol: p.clone(),
                address: a.clone(),
            })
            .collect(),
        connections: s
            .control
            .traffic()
            .open
            .iter()
            .map(|(_, n)| *n as u64)
            .sum(),
        started_at: certmq_registry::rfc3339(s.started_at),
        last_seen: now,
    }
}

pub async fn list_nodes(State(s): State<AdminState>) -> Result<Json<Items<NodeView>>, ApiError> {
    let this = this_node(&s);
    let cluster = s.cluster.clone();
    let items = crate::routes::blocking(move || cluster.nodes(this)).await?;
    Ok(Json(Items { items }))
}
