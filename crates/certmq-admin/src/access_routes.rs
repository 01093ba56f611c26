//! MQTT users and authorization policies (SPEC 11; the route table is in
//! [`crate::routes`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use certmq_access::{Action, Explained, PolicyInput, PolicyView, UserView};
use certmq_core::{CertFacts, ClientFacts};
use certmq_registry::{rfc3339, CertId};

use crate::error::{ApiError, Kind};
use crate::routes::{blocking, ApiJson, Items};
use crate::AdminState;

#[derive(Serialize)]
pub struct UserDto {
    username: String,
    created_at: String,
    updated_at: String,
}

impl UserDto {
    fn of(u: &UserView) -> Self {
        Self {
            username: u.username.clone(),
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

pub async fn list_users(State(s): State<AdminState>) -> Json<Items<UserDto>> {
    Json(Items {
        items: s.access.users.list().iter().map(UserDto::of).collect(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    username: String,
    password: String,
}

pub async fn add_user(
    State(s): State<AdminState>,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<impl IntoResponse, ApiError> {
    let users = s.access.users.clone();
    let view = blocking(move || {
        users.add(
            &req.username,
            &req.password,
            &certmq_registry::current_actor(),
        )
    })
    .await?;
    tracing::info!(username = %view.username.escape_debug(), "MQTT user added");
    Ok((StatusCode::CREATED, Json(UserDto::of(&view))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    password: String,
}

pub async fn set_password(
    State(s): State<AdminState>,
    Path(username): Path<String>,
    ApiJson(req): ApiJson<NewPassword>,
) -> Result<Json<UserDto>, ApiError> {
    let users = s.access.users.clone();
    let view = blocking(move || {
        users.set_password(&username, &req.password, &certmq_registry::current_actor())
    })
    .await?;
    tracing::info!(username = %view.username.escape_debug(), "MQTT user password changed");
    Ok(Json(UserDto::of(&view)))
}

/// Deletes the user and closes its live connections (MQTT 5: DISCONNECT
/// 0x98).
pub async fn delete_user(
    State(s): State<AdminState>,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let users = s.access.users.clone();
    let name = username.clone();
    blocking(move || users.delete(&name, &certmq_registry::current_actor())).await?;
    let mut closed = 0;
    for c in s.control.connections() {
        if c.username.as_deref() == Some(username.as_str())
            && s.control.kick(
                &c.client_id,
                certmq_codec::ReasonCode::ADMINISTRATIVE_ACTION,
            )
        {
            closed += 1;
        }
    }
    tracing::info!(username = %username.escape_debug(), closed, "MQTT user deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct PolicyDto {
    #[serde(flatten)]
    policy: certmq_access::Policy,
    created_at: String,
    updated_at: String,
}

impl PolicyDto {
    fn of(v: PolicyView) -> Self {
        Self {
            policy: v.policy,
            created_at: rfc3339(v.created_at),
            updated_at: rfc3339(v.updated_at),
        }
    }
}

pub async fn list_policies(
    State(s): State<AdminState>,
) -> Result<Json<Items<PolicyDto>>, ApiError> {
    let items = s
        .access
        .policies()?
        .into_iter()
        .map(PolicyDto::of)
        .collect();
    Ok(Json(Items { items }))
}

pub async fn get_policy(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<PolicyDto>, ApiError> {
    Ok(Json(PolicyDto::of(s.access.policy(&id)?)))
}

pub async fn add_policy(
    State(s): State<AdminState>,
    ApiJson(req): ApiJson<PolicyInput>,
) -> Result<impl IntoResponse, ApiError> {
    let access = s.access.clone();
    let view =
        blocking(move || access.create_policy(req, &certmq_registry::current_actor())).await?;
    tracing::info!(id = %view.policy.id, "authorization policy added");
    Ok((StatusCode::CREATED, Json(PolicyDto::of(view))))
}

pub async fn replace_policy(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PolicyInput>,
) -> Result<Json<PolicyDto>, ApiError> {
    let access = s.access.clone();
    let view = blocking(move || access.replace_policy(&id, req, &certmq_registry::current_actor()))
        .await?;
    tracing::info!(id = %view.policy.id, "authorization policy replaced");
    Ok(Json(PolicyDto::of(view)))
}

pub async fn delete_policy(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let access = s.access.clone();
    let id2 = id.clone();
    blocking(move || access.delete_policy(&id2, &certmq_registry::current_actor())).await?;
    tracing::info!(%id, "authorization policy deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A client's certificate facts, given directly.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CertInput {
    cn: Option<String>,
    ou: Option<String>,
    serial: Option<String>,
    fingerprint: Option<String>,
    #[serde(default)]
    san_dns: Vec<String>,
    ca_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    client_id: String,
    username: Option<String>,
    /// A registered device certificate whose facts the client has.
    certificate_id: Option<String>,
    /// Or the certificate's facts themselves.
    cert: Option<CertInput>,
    source_ip: Option<String>,
    action: Action,
    /// The topic (publish), the filter (subscribe); not for connect.
    topic: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

pub async fn evaluate(
    State(s): State<AdminState>,
    ApiJson(req): ApiJson<EvaluateRequest>,
) -> Result<Json<Explained>, ApiError> {
    let bad = |m: &str| ApiError::new(Kind::BadRequest, "InvalidRequest", m.to_owned());
    let qos = certmq_codec::QoS::from_u8(req.qos).ok_or_else(|| bad("qos: 0, 1 or 2"))?;
    if req.action != Action::Connect && req.topic.is_none() {
        return Err(bad("topic: required for publish and subscribe"));
    }
    let peer_ip = match &req.source_ip {
        Some(ip) => Some(
            ip.parse()
                .map_err(|_| bad("source_ip: not an IP address"))?,
        ),
        None => None,
    };
    let cert = match (&req.certificate_id, req.cert) {
        (Some(_), Some(_)) => return Err(bad("give certificate_id or cert, not both")),
        (Some(id), None) => {
            let id = CertId::parse(id)?;
            let d = s.devices.clone();
            let rec = blocking(move || d.device(&id)).await?;
            let san_dns = certmq_pki::single_cert_der(rec.pem.as_bytes())
                .ok()
                .and_then(|der| certmq_pki::subject_facts(&der))
                .map(|f| f.info.dns_names)
                .unwrap_or_default();
            Some(Arc::new(CertFacts {
                cn: rec.subject_cn,
                ou: rec.subject_ou,
                serial: rec.serial,
                fingerprint: rec.id,
                san_dns,
                ca_id: rec.ca_id,
            }))
        }
        (None, Some(c)) => Some(Arc::new(CertFacts {
            cn: c.cn,
            ou: c.ou,
            serial: c
                .serial
                .unwrap_or_default()
                .to_ascii_lowercase()
                .replace(':', ""),
            fingerprint: c.fingerprint.unwrap_or_default().to_ascii_lowercase(),
            san_dns: c.san_dns,
            ca_id: c.ca_id.unwrap_or_default().to_ascii_lowercase(),
        })),
        (None, None) => None,
    };
    let facts = ClientFacts {
        client_id: req.client_id.into(),
        username: req.username.map(Into::into),
        cert,
        peer_ip,
    };
    Ok(Json(s.access.explain(
        &facts,
        req.action,
        req.topic.as_deref(),
        qos,
        req.retain,
    )))
}

/// The one mapping from the access plane's errors to HTTP statuses.
impl From<certmq_access::AccessError> for ApiError {
    fn from(e: certmq_access::AccessError) -> Self {
        use certmq_access::ErrorKind as E;
        let kind = match e.kind {
            E::Invalid => Kind::BadRequest,
            E::NotFound => Kind::NotFound,
            E::Exists => Kind::Conflict,
            E::Store => Kind::Internal,
            E::Unavailable => Kind::Unavailable,
        };
        ApiError::new(kind, e.code, e.message)
    }
}
