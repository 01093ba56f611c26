//! Certificate lifecycle beyond the registry (SPEC 14), as the binary runs
//! it: the event sink (`$SYS/certmq/events/<kind>` and webhooks), webhook
//! delivery (signed, retried with backoff, bounded queues, counted), the
//! alarm evaluation task, and fetching CRLs from their distribution URLs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_lc_rs::hmac;
use bytes::Bytes;
use certmq_core::{Broker, Event, EventSink, Message};
use certmq_registry::{AlarmInput, Alarms, Severity};
use serde::{Deserialize, Serialize};

/// The topic prefix events are published under.
pub const EVENT_TOPIC: &str = "$SYS/certmq/events/";

/// One `[[webhooks]]` entry of the configuration file.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The HMAC-SHA256 key of the `X-Certmq-Signature` header.
    pub secret: String,
    /// Event kinds sent: `*` (all), a kind (`device.revoked`) or a family
    /// (`device.*`).
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Events waiting for delivery, at most (beyond, new ones are dropped
    /// and counted).
    #[serde(default = "default_queue")]
    pub queue_size: usize,
    /// Attempts per event (the first included) before it is given up.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles it (at most 60 s).
    #[serde(default = "default_retry_ms")]
    pub retry_initial_ms: u64,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// PEM file of the CAs an `https://` receiver's certificate is checked
    /// against (default: the system's, `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}
fn default_queue() -> usize {
    10_000
}
fn default_attempts() -> u32 {
    6
}
fn default_retry_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    5_000
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &shown_url(&self.url))
            .field("secret", &"<set>")
            .field("events", &self.events)
            .field("queue_size", &self.queue_size)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            bail!(
                "webhook url {:?} must start with http:// or https://",
                shown_url(&self.url)
            );
        }
        if self.secret.len() < 16 {
            bail!(
                "webhook {}: secret must be at least 16 characters",
                shown_url(&self.url)
            );
        }
        for e in &self.events {
            let family = e.strip_suffix(".*");
            let known = e == "*"
                || certmq_core::EVENT_KINDS.contains(&e.as_str())
                || family.is_some_and(|f| {
                    certmq_core::EVENT_KINDS
                        .iter()
                        .any(|k| k.split('.').next() == Some(f))
                });
            if !known {
                bail!(
                    "webhook {}: unknown event {e:?}; known: *, {}",
                    shown_url(&self.url),
                    certmq_core::EVENT_KINDS.join(", ")
                );
            }
        }
        if self.queue_size == 0 || self.max_attempts == 0 {
            bail!(
                "webhook {}: queue_size and max_attempts must be at least 1",
                shown_url(&self.url)
            );
        }
        Ok(())
    }

    fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|e| {
            e == "*"
                || e == kind
                || e.strip_suffix(".*")
                    .is_some_and(|f| kind.split('.').next() == Some(f))
        })
    }
}

/// A URL as logs and metrics show it: without user information, query or
/// fragment (they may hold credentials).
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let path = tail.split(['?', '#']).next().unwrap_or("");
    format!("{scheme}://{host}{path}")
}

/// Delivery counters of one webhook.
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Events given up after the last attempt.
    pub given_up: AtomicU64,
    /// Events not queued because the queue was full.
    pub dropped: AtomicU64,
    pub queued: AtomicU64,
}

struct Webhook {
    config: WebhookConfig,
    tx: std::sync::mpsc::SyncSender<Delivery>,
    stats: Arc<WebhookStats>,
}

struct Delivery {
    kind: &'static str,
    id: String,
    body: Arc<Vec<u8>>,
}

/// The one event sink: every event is published on
/// `$SYS/certmq/events/<kind>` (QoS 1, through the cluster like any
/// publish) and queued for each webhook that wants it.
pub struct Hub {
    broker: Arc<Broker>,
    node: String,
    webhooks: Vec<Webhook>,
    seq: AtomicU64,
    boot: String,
}

/// The HMAC-SHA256 of `body` under `secret`, lower-case hex.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, body);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Hub {
    /// Starts one delivery thread per webhook.
    pub fn start(
        broker: Arc<Broker>,
        node: String,
        webhooks: &[WebhookConfig],
    ) -> anyhow::Result<Arc<Self>> {
        let mut hooks = Vec::new();
        for (i, config) in webhooks.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Delivery>(config.queue_size);
            let stats = Arc::new(WebhookStats::default());
            let agent = agent_for(config)?;
            let c = config.clone();
            let s = stats.clone();
            std::thread::Builder::new()
                .name(format!("certmq-webhook-{i}"))
                .spawn(move || deliver_loop(c, agent, rx, s))
                .context("cannot start a webhook thread")?;
            hooks.push(Webhook {
                config: config.clone(),
                tx,
                stats,
            });
        }
        Ok(Arc::new(Self {
            broker,
            node,
            webhooks: hooks,
            seq: AtomicU64::new(0),
            boot: certmq_pki::random_hex(4).unwrap_or_default(),
        }))
    }

    /// Counters of every webhook, by URL.
    pub fn stats(&self) -> Vec<(String, Arc<WebhookStats>)> {
        self.webhooks
            .iter()
            .map(|w| (shown_url(&w.config.url), w.stats.clone()))
            .collect()
    }
}

impl EventSink for Hub {
    fn emit(&self, event: Event) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}-{}-{n}", self.node, self.boot);
        let body = serde_json::json!({
            "id": id,
            "kind": event.kind,
            "at": certmq_registry::rfc3339(certmq_registry::now_unix()),
            "node": self.node,
            "data": event.data,
        });
        let body = Arc::new(serde_json::to_vec(&body).unwrap_or_default());
        let message = Message {
            topic: format!("{EVENT_TOPIC}{}", event.kind).into(),
            payload: Bytes::from(body.as_ref().clone()),
            qos: certmq_codec::QoS::AtLeastOnce,
            retain: false,
            properties: certmq_codec::Properties {
                content_type: Some("application/json".into()),
                payload_format_indicator: Some(1),
                ..Default::default()
            },
            expires_at: None,
            origin: None,
        };
        self.broker
            .publish(Arc::new(message), certmq_net::clock::now());
        for w in self.webhooks.iter().filter(|w| w.config.wants(event.kind)) {
            let d = Delivery {
                kind: event.kind,
                id: id.clone(),
                body: body.clone(),
            };
            match w.tx.try_send(d) {
                Ok(()) => {
                    w.stats.queued.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    w.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The system's CA bundle (Debian's ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An HTTP client for one webhook: the configured or system CAs for
/// `https://`.
fn agent_for(c: &WebhookConfig) -> anyhow::Result<ureq::Agent> {
    let roots = c.url.starts_with("https://").then(|| {
        c.ca_file
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(SYSTEM_CAS))
    });
    http_agent(roots.as_deref(), Duration::from_millis(c.timeout_ms))
        .with_context(|| format!("webhook {}", shown_url(&c.url)))
}

/// An HTTP client: rustls with aws-lc-rs, `https://` checked against the
/// CAs of the PEM file `roots` (without it, plain HTTP only), no redirects,
/// non-2xx answers returned rather than errors.
fn http_agent(roots: Option<&Path>, timeout: Duration) -> anyhow::Result<ureq::Agent> {
    let mut tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(certmq_pki::provider());
    if let Some(path) = roots {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read CA file {}", path.display()))?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            bail!("{} holds no certificates", path.display());
        }
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
    }
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .tls_config(tls.build())
        .build()
        .into())
}

fn deliver_loop(
    c: WebhookConfig,
    agent: ureq::Agent,
    rx: std::sync::mpsc::Receiver<Delivery>,
    stats: Arc<WebhookStats>,
) {
    while let Ok(d) = rx.recv() {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        let sig = format!("sha256={}", signature(&c.secret, &d.body));
        let mut delay = Duration::from_millis(c.retry_initial_ms);
        let mut delivered = false;
        for attempt in 1..=c.max_attempts {
            let result = agent
                .post(&c.url)
                .header("content-type", "application/json")
                .header("user-agent", concat!("certmq/", env!("CARGO_PKG_VERSION")))
                .header("x-certmq-event", d.kind)
                .header("x-certmq-delivery", &d.id)
                .header("x-certmq-attempt", attempt.to_string())
                .header("x-certmq-signature", &sig)
                .send(d.body.as_slice());
            match result {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(r) => {
                    tracing::warn!(url = %shown_url(&c.url), status = r.status().as_u16(), attempt, kind = d.kind, "webhook delivery refused");
                }
                Err(e) => {
                    tracing::warn!(url = %shown_url(&c.url), error = %e, attempt, kind = d.kind, "webhook delivery failed");
                }
            }
            stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            if attempt < c.max_attempts {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
        if delivered {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.given_up.fetch_add(1, Ordering::Relaxed);
            tracing::error!(url = %shown_url(&c.url), kind = d.kind, id = %d.id, "webhook delivery given up");
        }
    }
}

/// The webhook counters as Prometheus metrics.
pub fn webhook_metrics(hub: &Hub) -> Vec<certmq_admin::cluster::ClusterMetric> {
    let mut m = Vec::new();
    for (url, s) in hub.stats() {
        let labels = vec![("url", url)];
        let mut one = |name, kind, help, value: &AtomicU64| {
            m.push(certmq_admin::cluster::ClusterMetric {
                name,
                kind,
                help,
                labels: labels.clone(),
                value: value.load(Ordering::Relaxed) as f64,
            })
        };
        one(
            "webhook_deliveries_total",
            "counter",
            "Events delivered to a webhook (a 2xx answer)",
            &s.delivered,
        );
        one(
            "webhook_failed_attempts_total",
            "counter",
            "Webhook delivery attempts that failed (each retry counts)",
            &s.failed_attempts,
        );
        one(
            "webhook_given_up_total",
            "counter",
            "Events given up after the last attempt",
            &s.given_up,
        );
        one(
            "webhook_dropped_total",
            "counter",
            "Events not queued for a webhook because its queue was full",
            &s.dropped,
        );
        one(
            "webhook_queue_depth",
            "gauge",
            "Events waiting for delivery to a webhook",
            &s.queued,
        );
    }
    m
}

/// What the alarm task reads besides the registry.
pub struct AlarmSources {
    pub alarms: Arc<Alarms>,
    pub config: certmq_registry::AlarmConfig,
    pub devices: Arc<certmq_admin::Devices>,
    pub server_certs: Arc<certmq_admin::ServerCerts>,
    pub persist: Option<Arc<dyn certmq_core::Persist>>,
    pub cluster: Arc<dyn certmq_admin::cluster::ClusterView>,
    /// In a cluster, whether this node emits `certificate.expiring`
    /// (the first node up, by id).
    pub expiring_leader: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

/// Evaluates the alarms every `every` (certificates, CRLs, persistence,
/// cluster links), until the process ends.
pub async fn alarm_task(s: AlarmSources, every: Duration) {
    loop {
        let now = certmq_registry::now_unix();
        if let Some(leader) = &s.expiring_leader {
            let l = leader.clone();
            let first = tokio::task::spawn_blocking(move || l())
                .await
                .unwrap_or(false);
            s.alarms.set_expiring_events(first);
        }
        let snapshot = s.devices.snapshot();
        let certs = s.server_certs.list();
        let found = certmq_registry::alarms::certificate_alarms(
            &s.config,
            now,
            &snapshot,
            &certs,
            s.devices.crl_fail_closed(),
        );
        s.alarms.sync("certificates", now, found);
        let mut persistence = Vec::new();
        if let Some(p) = &s.persist {
            let st = p.stats();
            if st.failing.load(Ordering::Relaxed) {
                persistence.push(AlarmInput {
                    id: "persistence_error:state".into(),
                    kind: "persistence_error",
                    severity: Severity::Critical,
                    subject: "persistence:state".into(),
                    message: "broker state writes are failing (full disk or I/O error); \
                              changes wait in memory and are tried again"
                        .into(),
                    details: serde_json::json!({
                        "write_errors": st.write_errors.load(Ordering::Relaxed),
                        "changes_dropped": st.changes_dropped.load(Ordering::Relaxed),
                    }),
                });
            }
        }
        s.alarms.sync("persistence", now, persistence);
        let mut links = Vec::new();
        if let Some(h) = s.cluster.health() {
            for link in ["registry", "nats"] {
                if h[link] == "down" {
                    links.push(AlarmInput {
                        id: format!("cluster_link_down:{link}"),
                        kind: "cluster_link_down",
                        severity: Severity::Critical,
                        subject: format!("cluster:{link}"),
                        message: match link {
                            "registry" => "the cluster's PostgreSQL cannot be reached: registry changes are refused; clients are served from the last state".into(),
                            _ => "the cluster's NATS cannot be reached: publishes do not cross to other nodes".into(),
                        },
                        details: serde_json::json!({"link": link}),
                    });
                }
            }
        }
        s.alarms.sync("cluster", now, links);
        tokio::time::sleep(every).await;
    }
}

/// Fetches each CA's CRL from its distribution URL: at start (for CAs
/// that have one), every `interval`, and sooner (every 30 s) while the
/// CRL in use is past its next update. Failures raise `crl_fetch_failed`.
pub async fn crl_fetch_task(
    devices: Arc<certmq_admin::Devices>,
    alarms: Arc<Alarms>,
    interval: Duration,
) {
    // Without the system's CAs, plain http:// CRL URLs still work.
    let timeout = Duration::from_secs(10);
    let agent = match http_agent(Some(Path::new(SYSTEM_CAS)), timeout) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "https:// CRL URLs cannot be fetched");
            match http_agent(None, timeout) {
                Ok(a) => a,
                Err(_) => return,
            }
        }
    };
    let mut last: HashMap<String, (String, Instant)> = HashMap::new();
    let mut failures: HashMap<String, AlarmInput> = HashMap::new();
    loop {
        let cas = {
            let d = devices.clone();
            tokio::task::spawn_blocking(move || d.list_cas())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        };
        let snapshot = devices.snapshot();
        let now = certmq_registry::now_unix();
        failures.retain(|id, _| cas.iter().any(|c| &c.id == id && c.crl_url.is_some()));
        for ca in &cas {
            let Some(url) = ca.crl_url.clone() else {
                continue;
            };
            let stale = snapshot.crl(&ca.id).is_none_or(|c| c.is_stale(now));
            let due = match last.get(&ca.id) {
                None => true,
                Some((u, _)) if *u != url => true,
                Some((_, at)) => {
                    at.elapsed() >= interval || (stale && at.elapsed() >= Duration::from_secs(30))
                }
            };
            if !due {
                continue;
            }
            last.insert(ca.id.clone(), (url.clone(), Instant::now()));
            let (a, u, d, id) = (agent.clone(), url.clone(), devices.clone(), ca.id.clone());
            let result = tokio::task::spawn_blocking(move || -> Result<bool, String> {
                let mut r = a.get(&u).call().map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("HTTP {}", r.status().as_u16()));
                }
                let body = r
                    .body_mut()
                    .with_config()
                    .limit(certmq_pki::MAX_CRL_BYTES as u64)
                    .read_to_vec()
                    .map_err(|e| e.to_string())?;
                let ca = certmq_registry::CaId::parse(&id).map_err(|e| e.message)?;
                d.put_crl(&ca, &body, &u)
                    .map(|(_, changed)| changed)
                    .map_err(|e| e.message)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match result {
                Ok(changed) => {
                    failures.remove(&ca.id);
                    if changed {
                        tracing::info!(ca_id = %ca.id, url = %shown_url(&url), "CRL fetched");
                    }
                }
                Err(e) => {
                    tracing::warn!(ca_id = %ca.id, url = %shown_url(&url), error = %e, "CRL fetch failed");
                    failures.insert(
                        ca.id.clone(),
                        AlarmInput {
                            id: format!("crl_fetch_failed:ca:{}", ca.id),
                            kind: "crl_fetch_failed",
                            severity: Severity::Major,
                            subject: format!("ca:{}", ca.id),
                            message: format!(
                                "the CRL of CA {} cannot be fetched from {}: {e}",
                                ca.id,
                                shown_url(&url)
                            ),
                            details: serde_json::json!({"ca_id": ca.id, "url": shown_url(&url), "error": e}),
                        },
                    );
                }
            }
        }
        alarms.sync("crl_fetch", now, failures.values().cloned().collect());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters() {
        let w = WebhookConfig {
            url: "http://127.0.0.1:1/h".into(),
            secret: "0123456789abcdef".into(),
            events: vec!["device.*".into(), "ca.registered".into()],
            queue_size: 1,
            max_attempts: 1,
            retry_initial_ms: 1,
            timeout_ms: 1,
            ca_file: None,
        };
        assert!(w.validate().is_ok());
        assert!(w.wants("device.revoked"));
        assert!(w.wants("ca.registered"));
        assert!(!w.wants("ca.deleted"));
        let bad = WebhookConfig {
            events: vec!["nope".into()],
            ..w.clone()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            shown_url("https://user:pw@ops.example.com:8443/hook?token=x#f"),
            "https://ops.example.com:8443/hook"
        );
        assert_eq!(shown_url("http://127.0.0.1:9/h"), "http://127.0.0.1:9/h");
        assert_eq!(shown_url("http://h?k=v"), "http://h");
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
