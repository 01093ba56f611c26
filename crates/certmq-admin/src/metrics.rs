//! `GET /metrics`: the Prometheus text exposition format 0.0.4
//! (`text/plain; version=0.0.4`), built from the live counters at scrape
//! time (nothing is kept between scrapes but the counters themselves).
//! Names follow Prometheus conventions: `certmq_*`, counters end in
//! `_total`, base units (`_bytes`, `_seconds`).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AdminState;

/// One metric family being written.
struct Exposition(String);

impl Exposition {
    /// Writes a family: HELP, TYPE and one sample per label set.
    fn family<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>,
    ) {
        let _ = writeln!(self.0, "# HELP certmq_{name} {help}");
        let _ = writeln!(self.0, "# TYPE certmq_{name} {kind}");
        for (labels, value) in samples {
            let _ = write!(self.0, "certmq_{name}");
            if !labels.is_empty() {
                self.0.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.0.push(',');
                    }
                    let _ = write!(self.0, "{k}=\"{}\"", escape(v));
                }
                self.0.push('}');
            }
            let _ = writeln!(self.0, " {value}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help, [(Vec::new(), value)]);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &certmq_core::persist::Histogram) {
        let (buckets, sum, count) = h.snapshot();
        let _ = writeln!(self.0, "# HELP certmq_{name} {help}");
        let _ = writeln!(self.0, "# TYPE certmq_{name} histogram");
        for (le, n) in buckets {
            let le = if le.is_infinite() {
                "+Inf".to_string()
            } else {
                le.to_string()
            };
            let _ = writeln!(self.0, "certmq_{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(self.0, "certmq_{name}_sum {sum}");
        let _ = writeln!(self.0, "certmq_{name}_count {count}");
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let mut m = Exposition(String::new());
    let traffic = s.control.traffic();
    let stats = &s.broker.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    let now = certmq_registry::now_unix();

    m.family(
        "connections",
        "gauge",
        "Open connections by listener",
        traffic
            .open
            .iter()
            .map(|(p, n)| (vec![("listener", p.to_string())], *n as f64)),
    );
    m.one(
        "sessions",
        "gauge",
        "Sessions held (online and persistent)",
        s.broker.session_count() as f64,
    );
    m.one(
        "retained_messages",
        "gauge",
        "Retained messages held",
        s.broker.retained_count() as f64,
    );
    m.one(
        "messages_received_total",
        "counter",
        "PUBLISH messages received from clients and routed (wills included)",
        load(&stats.messages_received),
    );
    m.one(
        "messages_delivered_total",
        "counter",
        "PUBLISH messages sent to subscribers",
        load(&stats.messages_delivered),
    );
    m.family(
        "messages_dropped_total",
        "counter",
        "Messages dropped by the drop policy, by reason",
        [
            ("offline_qos0", &stats.dropped_offline_qos0),
            ("queue_full", &stats.dropped_queue_full),
            ("slow_consumer", &stats.dropped_slow_consumer),
            ("retained_limit", &stats.dropped_retained_limit),
        ]
        .into_iter()
        .map(|(r, c)| (vec![("reason", r.to_string())], load(c))),
    );
    m.one(
        "flow_control_pauses_total",
        "counter",
        "Times a publisher was paused because a subscriber's queue was full",
        load(&stats.flow_control_pauses),
    );
    m.family(
        "authorization_denied_total",
        "counter",
        "Requests an authorization policy refused: PUBLISHes, subscriptions (at SUBSCRIBE or removed by a policy change), deliveries",
        [
            ("publish", &stats.publish_denied),
            ("subscribe", &stats.subscribe_denied),
            ("delivery", &stats.delivery_denied),
        ]
        .into_iter()
        .map(|(a, c)| (vec![("action", a.to_string())], load(c))),
    );
    m.one(
        "authorization_policies",
        "gauge",
        "Authorization policies in force",
        s.access.policy_set().len() as f64,
    );
    m.one(
        "mqtt_users",
        "gauge",
        "MQTT users (password authentication)",
        s.access.users.len() as f64,
    );
    m.one(
        "received_bytes_total",
        "counter",
        "Bytes received from MQTT clients",
        traffic.bytes_in as f64,
    );
    m.one(
        "sent_bytes_total",
        "counter",
        "Bytes sent to MQTT clients",
        traffic.bytes_out as f64,
    );
    m.one(
        "received_packets_total",
        "counter",
        "MQTT packets received",
        traffic.packets_in as f64,
    );
    m.one(
        "sent_packets_total",
        "counter",
        "MQTT packets sent",
        traffic.packets_out as f64,
    );
    m.family(
        "tls_handshake_failures_total",
        "counter",
        "Failed TLS handshakes by reason",
        traffic
            .tls_failures
            .clone()
            .into_iter()
            .map(|(r, n)| (vec![("reason", r.to_string())], n as f64)),
    );
    m.family(
        "connection_rejections_total",
        "counter",
        "Refused handshakes and CONNECTs by reason",
        s.control
            .refusal_counts()
            .into_iter()
            .map(|(r, n)| (vec![("reason", r.to_string())], n as f64)),
    );
    m.family(
        "server_certificate_expiry_seconds",
        "gauge",
        "Seconds until each server certificate expires",
        s.server_certs.list().into_iter().map(|c| {
            (
                vec![
                    ("id", c.id.clone()),
                    ("subject_cn", c.info.subject_cn.clone().unwrap_or_default()),
                ],
                (c.info.not_after - now) as f64,
            )
        }),
    );
    m.family(
        "ca_certificate_expiry_seconds",
        "gauge",
        "Seconds until each CA certificate expires",
        s.devices
            .list_cas()
            .unwrap_or_default()
            .into_iter()
            .map(|ca| {
                (
                    vec![
                        ("id", ca.id.clone()),
                        ("subject_cn", ca.subject_cn.clone().unwrap_or_default()),
                    ],
                    (ca.not_after - now) as f64,
                )
            }),
    );
    if let Some(p) = s.broker.persist() {
        m.one(
            "persistence_changes_recorded_total",
            "counter",
            "State changes recorded by the broker (written ones are counted below)",
            p.recorded() as f64,
        );
        let p = p.stats();
        m.one(
            "persistence_batches_total",
            "counter",
            "Batches of state changes committed to disk",
            load(&p.batches),
        );
        m.one(
            "persistence_changes_written_total",
            "counter",
            "State changes committed to disk",
            load(&p.changes_written),
        );
        m.one(
            "persistence_write_errors_total",
            "counter",
            "Batches of state changes that failed to commit (kept and tried again)",
            load(&p.write_errors),
        );
        m.one(
            "persistence_changes_dropped_total",
            "counter",
            "State changes given up on after failing to commit for too long",
            load(&p.changes_dropped),
        );
        m.one(
            "persistence_pending_changes",
            "gauge",
            "State changes taken by the writer and not yet committed",
            load(&p.pending),
        );
        m.one(
            "persistence_state_bytes",
            "gauge",
            "Bytes the kept broker state takes on disk (state.db and its log)",
            load(&p.state_bytes),
        );
        m.histogram(
            "persistence_commit_seconds",
            "Time of each commit of a batch of state changes (transaction and fsync)",
            &p.commit_seconds,
        );
        m.histogram(
            "persistence_batch_changes",
            "State changes in each committed batch",
            &p.batch_changes,
        );
    }
    m.family(
        "device_certificates",
        "gauge",
        "Device certificates by status",
        s.devices
            .device_counts_by_status()
            .into_iter()
            .map(|(st, n)| (vec![("status", st.to_string())], n as f64)),
    );
    // Alarms (SPEC 14): active ones by kind and severity; every kind
    // certmq raises is listed (0 when none is active).
    let mut active: std::collections::BTreeMap<(&str, &str), f64> = [
        "certificate_expiring",
        "certificate_expired",
        "certificates_expiring",
        "crl_stale",
        "crl_fetch_failed",
        "persistence_error",
        "cluster_link_down",
    ]
    .into_iter()
    .map(|k| ((k, "any"), 0.0))
    .collect();
    for a in s.alarms.list() {
        *active.entry((a.kind, "any")).or_insert(0.0) += 1.0;
    }
    m.family(
        "alarms_active",
        "gauge",
        "Active alarms by kind (GET /api/v1/alarms lists them)",
        active
            .into_iter()
            .map(|((kind, _), n)| (vec![("kind", kind.to_string())], n)),
    );
    let crls = s.devices.snapshot();
    m.family(
        "crl_next_update_seconds",
        "gauge",
        "Seconds until each CA's CRL is due for renewal (negative: stale)",
        crls.crls().filter_map(|(ca, c)| {
            Some((vec![("ca_id", ca.clone())], (c.next_update? - now) as f64))
        }),
    );
    // The cluster's links (SPEC 13) and the binary's parts (webhooks), one
    // family per name.
    let mut cluster = s.cluster.metrics();
    for extra in &s.extra_metrics {
        cluster.extend(extra());
    }
    cluster.sort_by_key(|c| c.name);
    for group in cluster.chunk_by(|a, b| a.name == b.name) {
        if let Some(first) = group.first() {
            m.family(
                first.name,
                first.kind,
                first.help,
                group.iter().map(|c| (c.labels.clone(), c.value)),
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.0,
    )
}
