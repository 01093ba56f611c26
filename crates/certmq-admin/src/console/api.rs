//! API routes the console needs beyond the certificate plane: console
//! users and the Overview's figures (both in the contract table).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use certmq_access::Role;
use certmq_registry::{rfc3339, DeviceFilter};

use crate::error::{ApiError, Kind};
use crate::routes::{blocking, ApiJson, Items};
use crate::AdminState;

#[derive(Serialize)]
pub struct ConsoleUserDto {
    username: String,
    role: Role,
    created_at: String,
}

pub async fn list_console_users(State(s): State<AdminState>) -> Json<Items<ConsoleUserDto>> {
    Json(Items {
        items: s
            .console
            .users
            .list()
            .into_iter()
            .map(|u| ConsoleUserDto {
                username: u.username,
                role: u.role,
                created_at: rfc3339(u.created_at),
            })
            .collect(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConsoleUser {
    username: String,
    password: String,
    role: String,
}

/// Adds a console user or replaces its password and role (its sessions
/// end).
pub async fn put_console_user(
    State(s): State<AdminState>,
    ApiJson(req): ApiJson<NewConsoleUser>,
) -> Result<impl IntoResponse, ApiError> {
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::new(
            Kind::BadRequest,
            "InvalidRole",
            "role: administrator or viewer",
        )
    })?;
    let users = s.console.users.clone();
    let name = req.username.clone();
    let view = blocking(move || {
        users.put(
            &req.username,
            &req.password,
            role,
            &certmq_registry::current_actor(),
        )
    })
    .await?;
    s.console.sign_out(&name);
    Ok((
        StatusCode::CREATED,
        Json(ConsoleUserDto {
            username: view.username,
            role: view.role,
            created_at: rfc3339(view.created_at),
        }),
    ))
}

pub async fn delete_console_user(
    State(s): State<AdminState>,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let users = s.console.users.clone();
    let name = username.clone();
    blocking(move || users.delete(&name, &certmq_registry::current_actor())).await?;
    s.console.sign_out(&username);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct ListenerDto {
    protocol: String,
    address: String,
}

#[derive(Serialize)]
pub struct Expiring {
    kind: &'static str,
    id: String,
    name: Option<String>,
    not_after: String,
}

#[derive(Serialize)]
pub struct Overview {
    listeners: Vec<ListenerDto>,
    connections: usize,
    sessions: usize,
    messages_received_total: u64,
    messages_delivered_total: u64,
    refusals_total: u64,
    /// Messages per second, one point every 5 s over the last 10 minutes.
    history: Vec<crate::console::Sample>,
    /// Server, CA and device certificates expiring within 30 days.
    expiring_within_30_days: Vec<Expiring>,
    expiring_devices: u64,
}

const THIRTY_DAYS: i64 = 30 * 86_400;

pub async fn overview(State(s): State<AdminState>) -> Result<Json<Overview>, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let now = certmq_registry::now_unix();
    let mut expiring: Vec<Expiring> = s
        .server_certs
        .list()
        .into_iter()
        .filter(|c| c.enabled && c.info.not_after - now < THIRTY_DAYS)
        .map(|c| Expiring {
            kind: "server",
            id: c.id.clone(),
            name: c.name.clone().or(c.info.subject_cn.clone()),
            not_after: rfc3339(c.info.not_after),
        })
        .collect();
    let d = s.devices.clone();
    let (cas, devices) = blocking(move || {
        let cas = d.list_cas()?;
        let filter = DeviceFilter {
            status: Some(certmq_pki::DeviceStatus::Active),
            expires_before: Some(now + THIRTY_DAYS),
            limit: 20,
            ..DeviceFilter::default()
        };
        let devices = d.list_devices(&filter)?;
        Ok::<_, certmq_registry::RegistryError>((cas, devices))
    })
    .await?;
    expiring.extend(
        cas.into_iter()
            .filter(|c| c.not_after - now < THIRTY_DAYS)
            .map(|c| Expiring {
                kind: "ca",
                id: c.id,
                name: c.subject_cn,
                not_after: rfc3339(c.not_after),
            }),
    );
    expiring.extend(devices.0.into_iter().map(|d| Expiring {
        kind: "device",
        id: d.id,
        name: d.subject_cn,
        not_after: rfc3339(d.not_after),
    }));
    let stats = &s.broker.stats;
    Ok(Json(Overview {
        listeners: s
            .listeners
            .iter()
            .map(|(p, a)| ListenerDto {
                protocol: p.clone(),
                address: a.clone(),
            })
            .collect(),
        connections: s.control.connections().len(),
        sessions: s.broker.session_count(),
        messages_received_total: stats.messages_received.load(Relaxed),
        messages_delivered_total: stats.messages_delivered.load(Relaxed),
        refusals_total: s.control.refusal_counts().iter().map(|(_, n)| n).sum(),
        history: s.console.history(),
        expiring_within_30_days: expiring,
        expiring_devices: devices.1,
    }))
}
