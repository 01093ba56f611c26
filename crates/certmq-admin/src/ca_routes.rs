//! Handlers for CA certificates, device certificates and connection
//! rejections (the route table is in [`crate::routes`]).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use certmq_pki::DeviceStatus;

use crate::error::Kind;
use serde::{Deserialize, Serialize};

use crate::dto::{CaDto, CrlDto, DeviceDto};
use crate::error::ApiError;
use crate::routes::{blocking, ApiJson, ApiQuery, Items};
use crate::AdminState;
use certmq_registry::rfc3339;
use certmq_registry::{CaId, CertId};

#[derive(Serialize)]
pub struct RegistrationCode {
    registration_code: String,
    expires_at: String,
}

pub async fn registration_code(State(s): State<AdminState>) -> Result<impl IntoResponse, ApiError> {
    let d = s.devices.clone();
    let (code, expires) = blocking(move || d.new_registration_code()).await?;
    Ok((
        StatusCode::CREATED,
        Json(RegistrationCode {
            registration_code: code,
            expires_at: rfc3339(expires),
        }),
    ))
}

pub async fn list_cas(State(s): State<AdminState>) -> Result<Json<Items<CaDto>>, ApiError> {
    let d = s.devices.clone();
    let cas = blocking(move || d.list_cas()).await?;
    Ok(Json(Items {
        items: cas.iter().map(CaDto::of).collect(),
    }))
}

pub async fn get_ca(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<CaDto>, ApiError> {
    let id = CaId::parse(&id)?;
    let d = s.devices.clone();
    let (ca, counts) = blocking(move || d.get_ca(&id)).await?;
    Ok(Json(CaDto::with_counts(&ca, &counts)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterCa {
    ca_certificate: String,
    verification_certificate: String,
    status: Option<String>,
    device_provisioning: Option<String>,
    automatic_activation: Option<bool>,
}

pub async fn register_ca(
    State(s): State<AdminState>,
    ApiJson(r): ApiJson<RegisterCa>,
) -> Result<impl IntoResponse, ApiError> {
    let d = s.devices.clone();
    let view = blocking(move || {
        d.register_ca(
            &r.ca_certificate,
            &r.verification_certificate,
            r.status.as_deref(),
            r.device_provisioning.as_deref(),
            r.automatic_activation,
        )
    })
    .await?;
    tracing::info!(id = %view.id, "CA certificate registered");
    Ok((
        StatusCode::CREATED,
        Json(CaDto {
            warnings: Some(certmq_registry::Devices::ca_findings(&view)),
            ..CaDto::of(&view)
        }),
    ))
}

pub async fn activate_ca(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<CaDto>, ApiError> {
    let id = CaId::parse(&id)?;
    let d = s.devices.clone();
    Ok(Json(CaDto::of(
        &blocking(move || d.set_ca_status(&id, true)).await?,
    )))
}

pub async fn deactivate_ca(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<CaDto>, ApiError> {
    let id = CaId::parse(&id)?;
    let d = s.devices.clone();
    Ok(Json(CaDto::of(
        &blocking(move || d.set_ca_status(&id, false)).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchCa {
    device_provisioning: Option<String>,
    automatic_activation: Option<bool>,
    /// A URL sets where the CRL is fetched from; null clears it (absent:
    /// unchanged).
    #[serde(default, deserialize_with = "present")]
    crl_url: Option<Option<String>>,
}

/// A field that is present (null included) is `Some`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

pub async fn patch_ca(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<PatchCa>,
) -> Result<Json<CaDto>, ApiError> {
    let id = CaId::parse(&id)?;
    let d = s.devices.clone();
    let crl_url = p.crl_url;
    let ca = blocking(move || {
        let mut ca = None;
        if p.device_provisioning.is_some() || p.automatic_activation.is_some() {
            ca = Some(d.update_ca_provisioning(
                &id,
                p.device_provisioning.as_deref(),
                p.automatic_activation,
            )?);
        }
        if let Some(url) = crl_url {
            ca = Some(d.set_crl_url(&id, url.as_deref())?);
        }
        match ca {
            Some(ca) => Ok(ca),
            None => d.get_ca(&id).map(|(ca, _)| ca),
        }
    })
    .await?;
    Ok(Json(CaDto::of(&ca)))
}

pub async fn delete_ca(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = CaId::parse(&id)?;
    let d = s.devices.clone();
    blocking(move || d.delete_ca(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    ca_id: Option<String>,
    client_id: Option<String>,
    common_name: Option<String>,
    ou: Option<String>,
    serial_number: Option<String>,
    status: Option<String>,
    /// Unix seconds: certificates expiring before this.
    expires_before: Option<i64>,
    expires_after: Option<i64>,
    limit: Option<usize>,
    offset: Option<usize>,
}

#[derive(Serialize)]
pub struct Page<T> {
    items: Vec<T>,
    total: u64,
    limit: usize,
    offset: usize,
}

pub async fn list_devices(
    State(s): State<AdminState>,
    ApiQuery(q): ApiQuery<DeviceQuery>,
) -> Result<Json<Page<DeviceDto>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0);
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(DeviceStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                Kind::BadRequest,
                "InvalidStatus",
                format!(
                    "status must be one of ACTIVE, INACTIVE, REVOKED, PENDING_ACTIVATION, not {s}"
                ),
            )
        })?),
    };
    let f = certmq_registry::DeviceFilter {
        ca_id: q.ca_id,
        client_id: q.client_id,
        subject_cn: q.common_name,
        subject_ou: q.ou,
        serial: q
            .serial_number
            .map(|s| s.replace(':', "").to_ascii_lowercase()),
        status,
        expires_after: q.expires_after,
        expires_before: q.expires_before,
        limit,
        offset,
    };
    let d = s.devices.clone();
    let (rows, total) = blocking(move || d.list_devices(&f)).await?;
    let items = rows.iter().map(DeviceDto::of).collect();
    Ok(Json(Page {
        items,
        total,
        limit,
        offset,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    device_certificate: String,
    client_id: Option<String>,
    status: Option<String>,
}

pub async fn register_device(
    State(s): State<AdminState>,
    ApiJson(r): ApiJson<RegisterDevice>,
) -> Result<impl IntoResponse, ApiError> {
    let d = s.devices.clone();
    let view = blocking(move || {
        d.register_device(&r.device_certificate, r.client_id, r.status.as_deref())
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(DeviceDto {
            warnings: Some(certmq_registry::Devices::device_findings(&view)),
            ..DeviceDto::of(&view)
        }),
    ))
}

pub async fn get_device(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>, ApiError> {
    let id = CertId::parse(&id)?;
    let d = s.devices.clone();
    Ok(Json(DeviceDto::of(&blocking(move || d.device(&id)).await?)))
}

pub async fn device_pem(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = CertId::parse(&id)?;
    let d = s.devices.clone();
    let rec = blocking(move || d.device(&id)).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], rec.pem))
}

pub async fn delete_device(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = CertId::parse(&id)?;
    let d = s.devices.clone();
    blocking(move || d.delete_device(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_status(
    s: AdminState,
    id: String,
    status: DeviceStatus,
) -> Result<Json<DeviceDto>, ApiError> {
    let id = CertId::parse(&id)?;
    let d = s.devices.clone();
    Ok(Json(DeviceDto::of(
        &blocking(move || d.set_device_status(&id, status)).await?,
    )))
}

pub async fn activate_device(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>, ApiError> {
    set_status(s, id, DeviceStatus::Active).await
}

pub async fn deactivate_device(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>, ApiError> {
    set_status(s, id, DeviceStatus::Inactive).await
}

pub async fn revoke_device(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>, ApiError> {
    set_status(s, id, DeviceStatus::Revoked).await
}

#[derive(Serialize)]
pub struct RejectionView {
    at: String,
    reason: &'static str,
    listener: &'static str,
    peer_address: String,
    client_id: Option<String>,
    certificate_id: Option<String>,
    ca_id: Option<String>,
    username: Option<String>,
}

#[derive(Deserialize)]
pub struct Limit {
    limit: Option<usize>,
}

/// Refusals listed at most (`?limit=`).
const REJECTIONS_SHOWN: usize = 1000;

/// Recent refusals (the newest of every reason), with counts by reason and
/// the sources refused most often.
#[derive(Serialize)]
pub struct RejectionsView {
    items: Vec<RejectionView>,
    counts_by_reason: std::collections::BTreeMap<&'static str, u64>,
    top_sources: Vec<RejectionSourceView>,
}

#[derive(Serialize)]
pub struct RejectionSourceView {
    reason: &'static str,
    source: String,
    count: u64,
}

pub async fn rejections(
    State(s): State<AdminState>,
    ApiQuery(q): ApiQuery<Limit>,
) -> Json<RejectionsView> {
    let limit = q.limit.unwrap_or(100).min(REJECTIONS_SHOWN);
    let items = s
        .control
        .refusals(limit)
        .into_iter()
        .map(|r| RejectionView {
            at: rfc3339(r.at),
            reason: r.reason,
            listener: r.listener,
            peer_address: r.peer.to_string(),
            client_id: r.client_id,
            certificate_id: r.certificate_id,
            ca_id: r.ca_id,
            username: r.username,
        })
        .collect();
    Json(RejectionsView {
        items,
        counts_by_reason: s.control.refusal_counts().into_iter().collect(),
        top_sources: s
            .control
            .refusal_sources(20)
            .into_iter()
            .map(|r| RejectionSourceView {
                reason: r.reason,
                source: r.source,
                count: r.count,
            })
            .collect(),
    })
}

/// `GET /ca-certificates/{id}/crl`.
pub async fn get_crl(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<CrlDto>, ApiError> {
    let id = CaId::parse(&id)?;
    let d = s.devices.clone();
    let crl = blocking(move || d.crl(&id)).await?;
    match crl {
        Some(v) => Ok(Json(CrlDto::of(&v.record, v.issuer_cn))),
        None => Err(ApiError::new(
            Kind::NotFound,
            "NoCrl",
            "this CA has no CRL; upload one with PUT (PEM or DER)",
        )),
    }
}

/// `PUT /ca-certificates/{id}/crl`: the body is the CRL itself, PEM
/// (`application/x-pem-file`) or DER (`application/pkix-crl`).
pub async fn put_crl(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<CrlDto>, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                Kind::TooLarge,
                "CrlTooLarge",
                format!("a CRL may be at most {} bytes", certmq_pki::MAX_CRL_BYTES),
            )
        } else {
            ApiError::new(Kind::BadRequest, "InvalidRequest", r.body_text())
        }
    })?;
    let id = CaId::parse(&id)?;
    let d = s.devices.clone();
    let (v, changed) = blocking(move || d.put_crl(&id, &body, "API")).await?;
    if changed {
        tracing::info!(ca_id = %v.record.ca_id, revoked = v.record.revoked_count, "CRL updated");
    }
    Ok(Json(CrlDto::of(&v.record, v.issuer_cn)))
}

#[derive(Serialize)]
pub struct AlarmList {
    items: Vec<AlarmDto>,
}

#[derive(Serialize)]
pub struct AlarmDto {
    id: String,
    kind: &'static str,
    severity: &'static str,
    subject: String,
    message: String,
    raised_at: String,
    details: serde_json::Value,
}

/// `GET /alarms`.
pub async fn list_alarms(State(s): State<AdminState>) -> Json<AlarmList> {
    Json(AlarmList {
        items: s
            .alarms
            .list()
            .into_iter()
            .map(|a| AlarmDto {
                id: a.id,
                kind: a.kind,
                severity: a.severity.as_str(),
                subject: a.subject,
                message: a.message,
                raised_at: rfc3339(a.raised_at),
                details: a.details,
            })
            .collect(),
    })
}
