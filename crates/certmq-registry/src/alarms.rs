//! Alarms (SPEC 14): conditions an operator must act on, raised and
//! cleared as they begin and end — certificates (server, CA, device,
//! intermediate) expiring within the configured windows, CRLs past their
//! next update or failing to fetch, persistence errors, cluster links down.
//! `GET /alarms`, metrics and the console read them; raising and clearing
//! are events (`alarm.raised`, `alarm.cleared`; a certificate entering an
//! expiry window is also `certificate.expiring`).
//!
//! Each source replaces its whole set at once ([`Alarms::sync`]): what is
//! new is raised, what is gone is cleared, what stays keeps its time.

use std::collections::BTreeMap;

use certmq_core::Events;
use certmq_pki::{CaStatus, DeviceStatus, RegistrySnapshot};
use parking_lot::Mutex;
use serde::Serialize;

use crate::server_certs::{rfc3339, ServerCert};

/// What `[alarms]` in the configuration file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmConfig {
    /// Days before a certificate's end at which an alarm is raised (and
    /// raised again, more severe, at each smaller window).
    pub expiry_windows_days: Vec<u32>,
    /// Device certificates listed one by one (the soonest first); beyond,
    /// one alarm counts the rest.
    pub max_device_alarms: usize,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        Self {
            expiry_windows_days: vec![30, 7, 1],
            max_device_alarms: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Major,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Warning => "warning",
        }
    }
}

/// One active alarm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    /// Stable while the condition lasts: `<kind>:<subject>[:<window>]`.
    pub id: String,
    pub kind: &'static str,
    pub severity: Severity,
    /// What it is about (`device:<id>`, `ca:<id>`, `server:<id>`, ...).
    pub subject: String,
    pub message: String,
    /// Unix seconds.
    pub raised_at: i64,
    pub details: serde_json::Value,
}

/// An alarm as a source reports it (its time is the set's to keep).
#[derive(Debug, Clone)]
pub struct AlarmInput {
    pub id: String,
    pub kind: &'static str,
    pub severity: Severity,
    pub subject: String,
    pub message: String,
    pub details: serde_json::Value,
}

/// The active alarms, by source.
#[derive(Default)]
pub struct Alarms {
    by_source: Mutex<BTreeMap<&'static str, BTreeMap<String, Alarm>>>,
    events: Events,
    /// Whether `certificate.expiring` events are emitted here (in a
    /// cluster, by one node only).
    expiring_events: std::sync::atomic::AtomicBool,
}

impl Alarms {
    pub fn new(events: Events) -> Self {
        Self {
            by_source: Mutex::new(BTreeMap::new()),
            events,
            expiring_events: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Whether this node emits `certificate.expiring` events.
    pub fn set_expiring_events(&self, on: bool) {
        self.expiring_events
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Replaces `source`'s alarms with `current`: raises the new ones,
    /// clears those gone.
    pub fn sync(&self, source: &'static str, now: i64, current: Vec<AlarmInput>) {
        let mut raised = Vec::new();
        let mut cleared = Vec::new();
        {
            let mut all = self.by_source.lock();
            let set = all.entry(source).or_default();
            let mut next = BTreeMap::new();
            for a in current {
                let alarm = match set.remove(&a.id) {
                    Some(old) => Alarm {
                        severity: a.severity,
                        message: a.message,
                        details: a.details,
                        ..old
                    },
                    None => {
                        let alarm = Alarm {
                            id: a.id,
                            kind: a.kind,
                            severity: a.severity,
                            subject: a.subject,
                            message: a.message,
                            raised_at: now,
                            details: a.details,
                        };
                        raised.push(alarm.clone());
                        alarm
                    }
                };
                next.insert(alarm.id.clone(), alarm);
            }
            cleared.extend(std::mem::take(set).into_values());
            *set = next;
        }
        for a in raised {
            tracing::warn!(alarm = %a.id, severity = a.severity.as_str(), "{}", a.message);
            if a.kind == "certificate_expiring"
                && self
                    .expiring_events
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.events.emit("certificate.expiring", a.details.clone());
            }
            self.events.emit("alarm.raised", alarm_json(&a));
        }
        for a in cleared {
            tracing::info!(alarm = %a.id, "alarm cleared");
            self.events.emit("alarm.cleared", alarm_json(&a));
        }
    }

    /// Every active alarm, the most severe first, then the oldest.
    pub fn list(&self) -> Vec<Alarm> {
        let mut out: Vec<Alarm> = self
            .by_source
            .lock()
            .values()
            .flat_map(|s| s.values().cloned())
            .collect();
        out.sort_by(|a, b| (a.severity, a.raised_at, &a.id).cmp(&(b.severity, b.raised_at, &b.id)));
        out
    }
}

fn alarm_json(a: &Alarm) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "kind": a.kind,
        "severity": a.severity,
        "subject": a.subject,
        "message": a.message,
        "raised_at": rfc3339(a.raised_at),
        "details": a.details,
    })
}

/// The smallest configured window (days) that `left` seconds fall in.
fn window_of(windows: &[u32], left: i64) -> Option<u32> {
    windows
        .iter()
        .copied()
        .filter(|d| left <= i64::from(*d) * 86_400)
        .min()
}

fn severity_of(window_days: u32) -> Severity {
    match window_days {
        0..=1 => Severity::Critical,
        2..=7 => Severity::Major,
        _ => Severity::Warning,
    }
}

/// One certificate's expiry alarm, if it falls in a window.
fn expiring(
    windows: &[u32],
    now: i64,
    kind: &str,
    id: &str,
    name: Option<&str>,
    not_after: i64,
) -> Option<AlarmInput> {
    let left = not_after - now;
    if left <= 0 {
        return Some(AlarmInput {
            id: format!("certificate_expired:{kind}:{id}"),
            kind: "certificate_expired",
            severity: Severity::Critical,
            subject: format!("{kind}:{id}"),
            message: format!(
                "{kind} certificate {} expired at {}",
                name.unwrap_or(id),
                rfc3339(not_after)
            ),
            details: serde_json::json!({"certificate_kind": kind, "id": id, "name": name, "not_after": rfc3339(not_after)}),
        });
    }
    let window = window_of(windows, left)?;
    Some(AlarmInput {
        id: format!("certificate_expiring:{kind}:{id}:{window}d"),
        kind: "certificate_expiring",
        severity: severity_of(window),
        subject: format!("{kind}:{id}"),
        message: format!(
            "{kind} certificate {} expires within {window} day(s), at {}",
            name.unwrap_or(id),
            rfc3339(not_after)
        ),
        details: serde_json::json!({
            "certificate_kind": kind, "id": id, "name": name,
            "not_after": rfc3339(not_after), "window_days": window,
            "seconds_to_expiry": left,
        }),
    })
}

/// The certificate plane's alarms at `now`: expiring server certificates
/// (enabled ones), CAs (ACTIVE ones), device certificates (ACTIVE ones,
/// their intermediates counted), and CRLs past their next update.
pub fn certificate_alarms(
    config: &AlarmConfig,
    now: i64,
    snapshot: &RegistrySnapshot,
    server_certs: &[ServerCert],
    crl_fail_closed: bool,
) -> Vec<AlarmInput> {
    let w = &config.expiry_windows_days;
    let mut out = Vec::new();
    for c in server_certs.iter().filter(|c| c.enabled) {
        let name = c.name.as_deref().or(c.info.subject_cn.as_deref());
        out.extend(expiring(w, now, "server", &c.id, name, c.info.not_after));
    }
    for ca in snapshot.cas().filter(|c| c.status == CaStatus::Active) {
        out.extend(expiring(w, now, "ca", &ca.id, None, ca.not_after));
    }
    let mut devices: Vec<(i64, &certmq_pki::DeviceEntry)> = snapshot
        .devices()
        .filter(|d| d.status == DeviceStatus::Active)
        .filter(|d| {
            // A certificate its CA's CRL revokes is refused anyway.
            snapshot
                .crl(&d.ca_id)
                .is_none_or(|crl| !crl.serials.contains(d.ca_signed_serial()))
        })
        .map(|d| (d.expires_at(), d))
        .filter(|(at, _)| *at > now && window_of(w, *at - now).is_some())
        .collect();
    devices.sort_by_key(|(at, _)| *at);
    let shown = devices.len().min(config.max_device_alarms);
    for (at, d) in devices.iter().take(shown) {
        out.extend(expiring(
            w,
            now,
            "device",
            &d.id,
            d.subject_cn.as_deref(),
            *at,
        ));
    }
    if devices.len() > shown {
        let more = devices.len() - shown;
        out.push(AlarmInput {
            id: "certificates_expiring:device:more".into(),
            kind: "certificates_expiring",
            severity: Severity::Warning,
            subject: "device:*".into(),
            message: format!(
                "{more} more ACTIVE device certificate(s) expire within {} days",
                w.iter().max().copied().unwrap_or(0)
            ),
            details: serde_json::json!({"count": more}),
        });
    }
    for (ca_id, crl) in snapshot.crls() {
        if let Some(next) = crl.next_update.filter(|_| crl.is_stale(now)) {
            out.push(AlarmInput {
                id: format!("crl_stale:ca:{ca_id}"),
                kind: "crl_stale",
                severity: if crl_fail_closed {
                    Severity::Critical
                } else {
                    Severity::Major
                },
                subject: format!("ca:{ca_id}"),
                message: format!(
                    "the CRL of CA {ca_id} was due for renewal at {}; {}",
                    rfc3339(next),
                    if crl_fail_closed {
                        "its certificates are refused ([crl] stale = \"fail-closed\")"
                    } else {
                        "its certificates are still admitted ([crl] stale = \"fail-open\")"
                    }
                ),
                details: serde_json::json!({"ca_id": ca_id, "next_update": rfc3339(next)}),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_pick_the_smallest_that_holds() {
        let w = [30, 7, 1];
        assert_eq!(window_of(&w, 2 * 86_400), Some(7));
        assert_eq!(window_of(&w, 3_600), Some(1));
        assert_eq!(window_of(&w, 20 * 86_400), Some(30));
        assert_eq!(window_of(&w, 40 * 86_400), None);
    }

    #[test]
    fn sync_raises_once_and_clears() {
        let alarms = Alarms::new(Events::default());
        let a = |id: &str| AlarmInput {
            id: id.into(),
            kind: "x",
            severity: Severity::Major,
            subject: "s".into(),
            message: "m".into(),
            details: serde_json::Value::Null,
        };
        alarms.sync("t", 10, vec![a("one")]);
        alarms.sync("t", 20, vec![a("one"), a("two")]);
        let l = alarms.list();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.iter().find(|x| x.id == "one").map(|x| x.raised_at),
            Some(10)
        );
        alarms.sync("t", 30, vec![]);
        assert!(alarms.list().is_empty());
    }
}
