//! `GET /metrics`: Prometheus text, built from the live counters at scrape
//! time (nothing is kept between scrapes but the counters themselves).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::{ApiError, Kind};
use crate::AdminState;

type Labels = Vec<(String, String)>;

fn counter(v: u64) -> Counter<u64, AtomicU64> {
    let c = Counter::<u64, AtomicU64>::default();
    c.inc_by(v);
    c
}

pub async fn metrics(State(s): State<AdminState>) -> Result<impl IntoResponse, ApiError> {
    let mut r = Registry::with_prefix("certmq");
    let conns = Family::<Labels, Gauge>::default();
    for (p, n) in s.live.open_by_protocol() {
        conns
            .get_or_create(&vec![("listener".into(), p.name().into())])
            .set(n as i64);
    }
    r.register("connections", "Open connections by listener", conns);
    let sessions = Gauge::<i64>::default();
    sessions.set(s.broker.session_count() as i64);
    r.register(
        "sessions",
        "Sessions held (online and persistent)",
        sessions,
    );
    let live = &s.live;
    r.register(
        "received_bytes",
        "Bytes received from MQTT clients",
        counter(live.bytes_in.load(Ordering::Relaxed)),
    );
    r.register(
        "sent_bytes",
        "Bytes sent to MQTT clients",
        counter(live.bytes_out.load(Ordering::Relaxed)),
    );
    r.register(
        "received_packets",
        "MQTT packets received",
        counter(live.packets_in.load(Ordering::Relaxed)),
    );
    r.register(
        "sent_packets",
        "MQTT packets sent",
        counter(live.packets_out.load(Ordering::Relaxed)),
    );
    let failures = Family::<Labels, Counter<u64, AtomicU64>>::default();
    for (reason, n) in live.tls_failures() {
        failures
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc_by(n);
    }
    r.register(
        "tls_handshake_failures",
        "Failed TLS handshakes by reason",
        failures,
    );
    let expiry = Family::<Labels, Gauge>::default();
    for c in s.server_certs.list() {
        expiry
            .get_or_create(&vec![
                ("id".into(), c.id.clone()),
                (
                    "subject_cn".into(),
                    c.subject_cn.clone().unwrap_or_default(),
                ),
            ])
            .set(c.seconds_to_expiry);
    }
    r.register(
        "server_certificate_expiry_seconds",
        "Seconds until each server certificate expires",
        expiry,
    );
    let by_state = Family::<Labels, Gauge>::default();
    let cas = s.devices.list_cas().unwrap_or_default();
    let ca_expiry = Family::<Labels, Gauge>::default();
    for ca in &cas {
        ca_expiry
            .get_or_create(&vec![
                ("id".into(), ca.id.clone()),
                (
                    "subject_cn".into(),
                    ca.subject_cn.clone().unwrap_or_default(),
                ),
            ])
            .set(ca.seconds_to_expiry);
    }
    for (status, n) in s.devices.device_counts_by_status() {
        by_state
            .get_or_create(&vec![("status".into(), status.to_string())])
            .set(n as i64);
    }
    r.register(
        "device_certificates",
        "Device certificates by status",
        by_state,
    );
    r.register(
        "ca_certificate_expiry_seconds",
        "Seconds until each CA certificate expires",
        ca_expiry,
    );
    let rejected = Family::<Labels, Counter<u64, AtomicU64>>::default();
    for (reason, n) in live.rejection_counts() {
        rejected
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc_by(n);
    }
    r.register(
        "connection_rejections",
        "Refused handshakes and CONNECTs by reason",
        rejected,
    );
    let mut text = String::new();
    encode(&mut text, &r)
        .map_err(|_| ApiError::new(Kind::Internal, "Internal", "metrics encoding failed"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}
