//! certmq's admin REST API (SPEC section 7), on axum.
//!
//! What it does: serves `/api/v1` (route list in [`routes`]) with bearer
//! token authentication (constant-time comparison; only `/health` is open),
//! one JSON error format (`{"error":{"code","message"}}`) mapped to statuses
//! in one place ([`error::ApiError::status`]), a request-size limit, an
//! OpenAPI document built from the same route table the router uses, and
//! Prometheus metrics.
//!
//! What it does not do: touch sockets of the broker or decide certificate
//! rules itself; it talks to the broker through handles (`Broker`, `Live`,
//! the SNI resolver) and to storage through `certmq_store::Store`.

#![forbid(unsafe_code)]

mod auth;
mod ca_routes;
pub mod devices;
pub mod error;
mod metrics;
mod serve;
pub use serve::ServeLimits;
pub mod openapi;
pub mod routes;
mod server_certs;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

pub use devices::{Devices, RegistryConfig};
pub use server_certs::{ServerCertView, ServerCerts, DEFAULT_ID};

/// Largest request body accepted (a chain file is at most 16 KiB; keys
/// and JSON escaping fit easily).
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AdminState {
    pub token: Arc<str>,
    pub store: Arc<dyn certmq_store::Store>,
    pub server_certs: Arc<ServerCerts>,
    pub broker: Arc<certmq_core::Broker>,
    pub live: Arc<certmq_net::Live>,
    pub devices: Arc<Devices>,
}

/// The API router, every route under `/api/v1`.
pub fn router(state: AdminState) -> Router {
    use routes::*;
    let protected = Router::new()
        .route("/openapi.json", get(openapi::document))
        .route(
            "/server-certificates",
            get(list_server_certs).post(bind_server_cert),
        )
        .route("/server-certificates/default/enable", post(enable_default))
        .route(
            "/server-certificates/default/disable",
            post(disable_default),
        )
        .route(
            "/server-certificates/{id}",
            get(get_server_cert).delete(unbind_server_cert),
        )
        .route(
            "/ca-certificates/registration-code",
            post(ca_routes::registration_code),
        )
        .route(
            "/ca-certificates",
            get(ca_routes::list_cas).post(ca_routes::register_ca),
        )
        .route(
            "/ca-certificates/{id}",
            get(ca_routes::get_ca)
                .delete(ca_routes::delete_ca)
                .patch(ca_routes::patch_ca),
        )
        .route(
            "/ca-certificates/{id}/activate",
            post(ca_routes::activate_ca),
        )
        .route(
            "/ca-certificates/{id}/deactivate",
            post(ca_routes::deactivate_ca),
        )
        .route(
            "/device-certificates",
            get(ca_routes::list_devices).post(ca_routes::register_device),
        )
        .route(
            "/device-certificates/{id}",
            get(ca_routes::get_device).delete(ca_routes::delete_device),
        )
        .route("/device-certificates/{id}/pem", get(ca_routes::device_pem))
        .route(
            "/device-certificates/{id}/activate",
            post(ca_routes::activate_device),
        )
        .route(
            "/device-certificates/{id}/deactivate",
            post(ca_routes::deactivate_device),
        )
        .route(
            "/device-certificates/{id}/revoke",
            post(ca_routes::revoke_device),
        )
        .route("/connection-rejections", get(ca_routes::rejections))
        .route("/connections", get(list_connections))
        .route("/connections/{client_id}", delete(kick_connection))
        .route("/audit-log", get(audit_log))
        .route("/metrics", get(metrics::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let api = Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, within
/// `limits` (connections, header and read timeouts).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    limits: ServeLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve::serve(listener, router(state), limits, shutdown).await
}
