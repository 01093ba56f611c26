//! Route handlers. Every route (base `/api/v1`):
//!
//! | route | does |
//! | --- | --- |
//! | `GET /health` | liveness (no token) |
//! | `GET /openapi.json` | the OpenAPI document of these routes |
//! | `GET /server-certificates` | list, the default one included |
//! | `POST /server-certificates` | bind `{name?, certificate_chain, private_key}` |
//! | `GET /server-certificates/{id}` | one |
//! | `DELETE /server-certificates/{id}` | unbind |
//! | `POST /server-certificates/default/enable` · `/disable` | the default certificate |
//! | `POST /ca-certificates/registration-code` | a new registration code |
//! | `GET /ca-certificates` · `POST /ca-certificates` | list · register |
//! | `GET` · `DELETE` · `PATCH /ca-certificates/{id}` | detail (counts) · delete · provisioning |
//! | `POST /ca-certificates/{id}/activate` · `/deactivate` | CA state |
//! | `GET /device-certificates` · `POST /device-certificates` | filtered, paged list · register |
//! | `GET` · `DELETE /device-certificates/{id}` · `GET .../{id}/pem` | detail · delete · download |
//! | `POST /device-certificates/{id}/activate` · `/deactivate` · `/revoke` | device state |
//! | `GET /connection-rejections` | recent refusals with reasons |
//! | `GET /connections` | live clients, with certificate id |
//! | `DELETE /connections/{client_id}` | kick (MQTT 5: DISCONNECT 0x98) |
//! | `GET /audit-log` | the newest audit records |
//! | `GET /users` · `POST /users` | MQTT users · add `{username, password}` |
//! | `DELETE /users/{username}` · `PUT /users/{username}/password` | delete (closes its connections) · new password |
//! | `GET /policies` · `POST /policies` | authorization policies in evaluation order · add |
//! | `GET` · `PUT` · `DELETE /policies/{id}` | one · replace · delete |
//! | `POST /policies/evaluate` | dry run: which policy decides |
//! | `GET /metrics` | Prometheus text format |

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Kind};
use crate::AdminState;
use certmq_registry::rfc3339;

use crate::dto::ServerCertDto;

/// `Json` whose rejections are API errors (400, 413) in the API's format.
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// `Query` whose rejections are API errors (400) in the API's format.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let Query(v) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::new(Kind::BadRequest, "InvalidQuery", r.body_text()))?;
        Ok(ApiQuery(v))
    }
}

#[derive(Serialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// Liveness: `ok` while the node serves; in a cluster also the state of
/// its links (`up`/`down`), which do not stop it serving.
pub async fn health(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let mut v = serde_json::json!({"status": "ok"});
    if let Some(c) = s.cluster.health() {
        v["cluster"] = c;
    }
    Json(v)
}

/// A client-supplied string cut for a log line.
pub(crate) fn bounded(s: &str) -> String {
    s.chars().take(64).flat_map(char::escape_debug).collect()
}

/// Runs a registry call (SQLite, certificate parsing) off the async
/// workers, as the request's principal (its audit records name it).
pub(crate) async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    let actor = crate::auth::actor();
    tokio::task::spawn_blocking(move || certmq_registry::with_actor(&actor, f))
        .await
        .map_err(|_| ApiError::new(Kind::Internal, "Internal", "the request task failed"))?
        .map_err(Into::into)
}

pub async fn list_server_certs(State(s): State<AdminState>) -> Json<Items<ServerCertDto>> {
    Json(Items {
        items: s
            .server_certs
            .list()
            .iter()
            .map(ServerCertDto::of)
            .collect(),
    })
}

pub async fn get_server_cert(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<ServerCertDto>, ApiError> {
    s.server_certs
        .get(&id)
        .map(|c| Json(ServerCertDto::of(&c)))
        .ok_or_else(|| {
            ApiError::new(
                Kind::NotFound,
                "NotFound",
                format!("server certificate {id} not found"),
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    pub name: Option<String>,
    pub certificate_chain: String,
    pub private_key: String,
}

pub async fn bind_server_cert(
    State(s): State<AdminState>,
    ApiJson(req): ApiJson<BindRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if req.name.as_ref().is_some_and(|n| n.len() > 128) {
        return Err(ApiError::new(
            Kind::BadRequest,
            "InvalidName",
            "name: at most 128 bytes",
        ));
    }
    let certs = s.server_certs.clone();
    let (view, warnings) = blocking(move || {
        certs.bind(
            req.name,
            &req.certificate_chain,
            &req.private_key,
            &certmq_registry::current_actor(),
        )
    })
    .await?;
    tracing::info!(id = %view.id, warnings = warnings.len(), "server certificate bound");
    Ok((
        StatusCode::CREATED,
        Json(ServerCertDto {
            warnings: Some(warnings),
            ..ServerCertDto::of(&view)
        }),
    ))
}

pub async fn unbind_server_cert(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let certs = s.server_certs.clone();
    let id2 = id.clone();
    blocking(move || certs.unbind(&id2, &certmq_registry::current_actor())).await?;
    tracing::info!(%id, "server certificate unbound");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn enable_default(State(s): State<AdminState>) -> Result<Json<ServerCertDto>, ApiError> {
    let certs = s.server_certs.clone();
    Ok(Json(ServerCertDto::of(
        &blocking(move || certs.set_default_enabled(true, &certmq_registry::current_actor()))
            .await?,
    )))
}

pub async fn disable_default(State(s): State<AdminState>) -> Result<Json<ServerCertDto>, ApiError> {
    let certs = s.server_certs.clone();
    Ok(Json(ServerCertDto::of(
        &blocking(move || certs.set_default_enabled(false, &certmq_registry::current_actor()))
            .await?,
    )))
}

#[derive(Serialize, Debug, Clone)]
pub struct ConnectionView {
    /// The node it is connected to.
    pub node: String,
    pub client_id: String,
    pub listener: String,
    pub peer_address: String,
    pub certificate_id: Option<String>,
    pub connected_at: String,
    pub username: Option<String>,
}

#[derive(Deserialize)]
pub struct NodeQuery {
    pub node: Option<String>,
}

/// Live connections of every node, or of `?node=` only.
pub async fn list_connections(
    State(s): State<AdminState>,
    Query(q): Query<NodeQuery>,
) -> Json<Items<ConnectionView>> {
    let here = q.node.as_deref().is_none_or(|n| n == &*s.node_id);
    let mut items: Vec<ConnectionView> = if here {
        s.control
            .connections()
            .into_iter()
            .map(|c| ConnectionView {
                node: s.node_id.to_string(),
                client_id: c.client_id.to_string(),
                listener: c.listener.to_string(),
                peer_address: c.peer.to_string(),
                certificate_id: c.certificate_id,
                connected_at: rfc3339(c.connected_at),
                username: c.username.map(|u| u.to_string()),
            })
            .collect()
    } else {
        Vec::new()
    };
    if q.node.as_deref() != Some(&*s.node_id) {
        items.extend(s.cluster.connections(q.node).await);
    }
    Json(Items { items })
}

pub async fn kick_connection(
    State(s): State<AdminState>,
    Path(client_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.control
        .kick(&client_id, certmq_codec::ReasonCode::ADMINISTRATIVE_ACTION)
    {
        tracing::info!(%client_id, "connection closed by the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else if s.cluster.kick(client_id.clone()).await {
        tracing::info!(%client_id, "connection closed on another node by the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            Kind::NotFound,
            "NotFound",
            format!("no live connection with client id {client_id}"),
        ))
    }
}

#[derive(Deserialize)]
pub struct Limit {
    pub limit: Option<usize>,
}

/// An audit record as the API shows it (times in RFC 3339, SPEC 9).
#[derive(Serialize)]
pub struct AuditView {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

pub async fn audit_log(
    State(s): State<AdminState>,
    ApiQuery(q): ApiQuery<Limit>,
) -> Result<Json<Items<AuditView>>, ApiError> {
    let devices = s.devices.clone();
    let limit = q.limit.unwrap_or(100).min(1000);
    let records = blocking(move || devices.audit_log(limit)).await?;
    let items = records
        .into_iter()
        .map(|r| AuditView {
            seq: r.seq,
            at: rfc3339(r.at),
            actor: r.actor,
            action: r.action,
            target: r.target,
            before: r.before,
            after: r.after,
        })
        .collect();
    Ok(Json(Items { items }))
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        Kind::MethodNotAllowed,
        "MethodNotAllowed",
        "this route does not take that method; see /api/v1/openapi.json",
    )
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        Kind::NotFound,
        "NotFound",
        "no such route; see /api/v1/openapi.json",
    )
}
