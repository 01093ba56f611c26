//! certmq's admin REST API (SPEC section 7), on axum.
//!
//! What it does: serves `/api/v1` from one contract table
//! ([`openapi::OPERATIONS`], which also builds the OpenAPI document and the
//! CLI's calls) with bearer token authentication (constant-time
//! comparison; only `/health` is open), one JSON error format
//! (`{"error":{"code","message"}}`) mapped to statuses in one place
//! ([`error::ApiError::status`]; registry errors through one `From`), a
//! request-size limit, connection limits and timeouts ([`ServeLimits`]),
//! and Prometheus metrics.
//!
//! What it does not do: decide certificate rules (`certmq-registry` does:
//! CA, device and server certificates) or touch the broker's sockets. It
//! still reads live connections, refusals and counters from
//! `certmq_net::Live`; that is to move behind the core's seams.

#![forbid(unsafe_code)]

mod access_routes;
mod auth;
mod ca_routes;
pub mod cluster;
pub mod console;
pub mod dto;
pub mod error;
mod metrics;
mod serve;
pub use serve::ServeLimits;
pub mod openapi;
pub mod routes;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;

use axum::Router;

pub use certmq_registry::{
    Devices, RegistryConfig, RegistryError, ServerCert, ServerCerts, DEFAULT_ID,
};

/// Largest request body accepted (a chain file is at most 16 KiB; keys
/// and JSON escaping fit easily).
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AdminState {
    pub token: Arc<str>,
    pub server_certs: Arc<ServerCerts>,
    pub broker: Arc<certmq_core::Broker>,
    /// Live connections, refusals and traffic (the core's `control` seam).
    pub control: Arc<dyn certmq_core::Control>,
    pub devices: Arc<Devices>,
    /// MQTT users and authorization policies.
    pub access: Arc<certmq_access::Access>,
    /// Console users, sessions and the Overview's history.
    pub console: Arc<console::Console>,
    /// (protocol, address) of every listener, for the Overview.
    pub listeners: Arc<Vec<(String, String)>>,
    /// This node's id (`--node-id`; the host name's stand-in `local` for
    /// a node on its own) and start time (unix seconds).
    pub node_id: Arc<str>,
    pub started_at: i64,
    /// The other nodes (SPEC 13); [`cluster::SingleNode`] on its own.
    pub cluster: Arc<dyn cluster::ClusterView>,
    /// Active alarms (SPEC 14).
    pub alarms: Arc<certmq_registry::Alarms>,
    /// More metrics from the binary's parts (webhook deliveries).
    pub extra_metrics: Vec<Arc<dyn Fn() -> Vec<cluster::ClusterMetric> + Send + Sync>>,
}

/// The handler of the operation named `id` in [`openapi::OPERATIONS`].
fn handler(id: &str) -> Option<axum::routing::MethodRouter<AdminState>> {
    use access_routes as a;
    use axum::routing::{delete, get, patch, post, put};
    use ca_routes as c;
    use routes::*;
    Some(match id {
        "health" => get(health),
        "openapi" => get(openapi::document),
        "list_server_certificates" => get(list_server_certs),
        "bind_server_certificate" => post(bind_server_cert),
        "get_server_certificate" => get(get_server_cert),
        "unbind_server_certificate" => delete(unbind_server_cert),
        "enable_default_server_certificate" => post(enable_default),
        "disable_default_server_certificate" => post(disable_default),
        "new_registration_code" => post(c::registration_code),
        "list_ca_certificates" => get(c::list_cas),
        "register_ca_certificate" => post(c::register_ca),
        "get_ca_certificate" => get(c::get_ca),
        "update_ca_certificate" => patch(c::patch_ca),
        "delete_ca_certificate" => delete(c::delete_ca),
        "activate_ca_certificate" => post(c::activate_ca),
        "deactivate_ca_certificate" => post(c::deactivate_ca),
        "get_ca_crl" => get(c::get_crl),
        "put_ca_crl" => put(c::put_crl).layer(DefaultBodyLimit::max(certmq_pki::MAX_CRL_BYTES)),
        "list_alarms" => get(c::list_alarms),
        "list_device_certificates" => get(c::list_devices),
        "register_device_certificate" => post(c::register_device),
        "get_device_certificate" => get(c::get_device),
        "delete_device_certificate" => delete(c::delete_device),
        "download_device_certificate" => get(c::device_pem),
        "activate_device_certificate" => post(c::activate_device),
        "deactivate_device_certificate" => post(c::deactivate_device),
        "revoke_device_certificate" => post(c::revoke_device),
        "list_connection_rejections" => get(c::rejections),
        "list_connections" => get(list_connections),
        "kick_connection" => delete(kick_connection),
        "audit_log" => get(audit_log),
        "list_users" => get(a::list_users),
        "add_user" => post(a::add_user),
        "delete_user" => delete(a::delete_user),
        "set_user_password" => put(a::set_password),
        "list_policies" => get(a::list_policies),
        "add_policy" => post(a::add_policy),
        "get_policy" => get(a::get_policy),
        "replace_policy" => put(a::replace_policy),
        "delete_policy" => delete(a::delete_policy),
        "evaluate_policies" => post(a::evaluate),
        "list_console_users" => get(console::api::list_console_users),
        "put_console_user" => post(console::api::put_console_user),
        "delete_console_user" => delete(console::api::delete_console_user),
        "overview" => get(console::api::overview),
        "list_cluster_nodes" => get(cluster::list_nodes),
        "metrics" => get(metrics::metrics),
        _ => return None,
    })
}

/// Whether every operation of the contract has a handler (a test checks
/// it; the router skips none silently).
pub fn missing_handlers() -> Vec<&'static str> {
    openapi::OPERATIONS
        .iter()
        .filter(|o| handler(o.id).is_none())
        .map(|o| o.id)
        .collect()
}

/// The API router, every route under `/api/v1`, built from
/// [`openapi::OPERATIONS`].
pub fn router(state: AdminState) -> Router {
    let mut open = Router::new();
    let mut protected = Router::new();
    for o in openapi::OPERATIONS {
        let Some(h) = handler(o.id) else { continue };
        if o.auth {
            protected = protected.route(o.path, h);
        } else {
            open = open.route(o.path, h);
        }
    }
    let protected = protected.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    let api = open
        .merge(protected)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .route("/", axum::routing::get(console::index))
        .route("/login", axum::routing::get(console::login_page))
        .route(
            "/favicon.ico",
            axum::routing::get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route("/assets/{name}", axum::routing::get(console::asset))
        .route("/console/login", axum::routing::post(console::login))
        .route("/console/logout", axum::routing::post(console::logout))
        .route("/console/session", axum::routing::get(console::current))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, within
/// `limits` (connections, header and read timeouts).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    limits: ServeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve::serve(listener, router(state), limits, tls, shutdown).await
}

/// Samples the message counters for the console's Overview chart every
/// [`console::SAMPLE_EVERY`], until the process ends.
pub async fn sample_history(state: AdminState) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval(console::SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let stats = &state.broker.stats;
        state.console.sample(
            certmq_registry::now_unix(),
            stats.messages_received.load(Relaxed),
            stats.messages_delivered.load(Relaxed),
        );
    }
}
