//! The lifecycle-event seam (SPEC 14): the planes that change certificates
//! (registry), refuse connections (net) or raise alarms emit an [`Event`]
//! through an [`Events`] handle; the binary installs the one sink that
//! publishes it on `$SYS/certmq/events/<kind>` and hands it to webhooks.
//! Nothing installed: events go nowhere. Emitting never blocks.

use std::sync::{Arc, OnceLock};

/// One event: its kind (`device.revoked`, ...) and what it is about, a
/// JSON object without secrets.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub data: serde_json::Value,
}

/// Receives every event. Must not block (it runs on API, connect and
/// housekeeping paths).
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: Event);
}

/// A cheap, cloneable handle; the sink is installed once, after the
/// emitters are built.
#[derive(Clone, Default)]
pub struct Events {
    sink: Arc<OnceLock<Arc<dyn EventSink>>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("installed", &self.sink.get().is_some())
            .finish()
    }
}

impl Events {
    /// Installs the sink; false if one was installed already.
    pub fn install(&self, sink: Arc<dyn EventSink>) -> bool {
        self.sink.set(sink).is_ok()
    }

    pub fn emit(&self, kind: &'static str, data: serde_json::Value) {
        if let Some(s) = self.sink.get() {
            s.emit(Event { kind, data });
        }
    }

    /// Whether a sink listens (callers may skip building costly data).
    pub fn is_on(&self) -> bool {
        self.sink.get().is_some()
    }
}

/// Every kind certmq emits, for documentation, webhook filters and tests.
pub const EVENT_KINDS: &[&str] = &[
    "ca.registered",
    "ca.activated",
    "ca.deactivated",
    "ca.deleted",
    "ca.crl_updated",
    "device.registered",
    "device.activated",
    "device.deactivated",
    "device.revoked",
    "device.deleted",
    "connection.refused",
    "certificate.expiring",
    "server_certificate.bound",
    "server_certificate.unbound",
    "server_certificate.default_toggled",
    "alarm.raised",
    "alarm.cleared",
];
