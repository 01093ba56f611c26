//! A node following the registry the cluster shares (SPEC 13): what the
//! PostgreSQL store's listener hears from other nodes becomes the same
//! snapshot changes and connection closings a local write makes.
//!
//! Runs on the listener's thread. A change that cannot be applied (the
//! store went away while reading it) is not lost: the node reads the whole
//! registry again once the store answers, and closes what it no longer
//! admits.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use certmq_access::{Access, ConsoleUsers};
use certmq_codec::ReasonCode;
use certmq_core::Control;
use certmq_registry::store::Store;
use certmq_registry::{CaId, Change, Devices, ServerCerts};
use certmq_store::{Heard, PgStore};

/// What a node follows: its snapshots and its connections.
pub struct Targets {
    pub store: Arc<dyn Store>,
    pub devices: Arc<Devices>,
    pub server_certs: Arc<ServerCerts>,
    pub access: Arc<Access>,
    pub console_users: Arc<ConsoleUsers>,
    pub control: Arc<dyn Control>,
    /// Unix seconds now.
    pub now: fn() -> i64,
}

/// The link to the shared store, for health, alarms and metrics.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Whether the listener is connected.
    pub up: AtomicBool,
    /// Changes of other nodes applied.
    pub applied: AtomicU64,
    /// Times the whole registry was read again.
    pub full_reloads: AtomicU64,
    /// Unix seconds of the last change applied (0: none yet).
    pub last_applied_at: AtomicI64,
}

/// Starts following `store` from `from` (its version read before the
/// snapshots were loaded).
pub fn follow(
    store: &Arc<PgStore>,
    from: i64,
    targets: Targets,
) -> std::io::Result<Arc<FollowStats>> {
    let stats = Arc::new(FollowStats::default());
    stats.up.store(true, Ordering::Relaxed);
    let s = stats.clone();
    store.listen(from, Duration::from_millis(500), move |heard| {
        targets.on(&s, heard);
        true
    })?;
    Ok(stats)
}

impl Targets {
    fn on(&self, stats: &FollowStats, heard: Heard) {
        match heard {
            Heard::Link(up) => {
                stats.up.store(up, Ordering::Relaxed);
                if up {
                    // What was missed is in the log; a full read as well
                    // covers changes whose application failed.
                    self.full_reload(stats);
                }
            }
            Heard::Gap => self.full_reload(stats),
            Heard::Changes(notes) => {
                // One application per record, however often it changed.
                let mut seen = BTreeSet::new();
                let mut failed = false;
                for n in &notes {
                    if !seen.insert((n.kind.as_str(), n.key.as_str())) {
                        continue;
                    }
                    if let Err(e) = self.apply(&n.kind, &n.key) {
                        tracing::error!(kind = %n.kind, key = %n.key, error = %e, "a registry change from another node was not applied; reading everything again");
                        failed = true;
                        break;
                    }
                }
                if failed {
                    self.full_reload(stats);
                } else {
                    stats
                        .applied
                        .fetch_add(seen.len() as u64, Ordering::Relaxed);
                    stats.last_applied_at.store((self.now)(), Ordering::Relaxed);
                }
            }
        }
    }

    fn apply(&self, kind: &str, key: &str) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match kind {
            "ca" => {
                let id = CaId::parse(key).map_err(|x| x.message)?;
                self.devices.apply(Change::Ca { id }).map_err(|x| x.message)
            }
            "device" => match self.store.device(key).map_err(|x| e(&x))? {
                Some(rec) => self
                    .devices
                    .apply(Change::DeviceStored(rec))
                    .map_err(|x| x.message),
                None => self
                    .devices
                    .apply(Change::DeviceGone { id: key.to_owned() })
                    .map_err(|x| x.message),
            },
            "devices" => self.devices.reload().map_err(|x| x.message),
            "crl" => {
                let ca_id = CaId::parse(key).map_err(|x| x.message)?;
                self.devices
                    .apply(Change::Crl { ca_id })
                    .map_err(|x| x.message)
            }
            "server_cert" => self.server_certs.reload().map_err(|x| x.message),
            "user" => {
                self.access.users.reload().map_err(|x| x.message)?;
                if self.access.users.get(key).is_none() {
                    self.kick_user(key);
                }
                Ok(())
            }
            "policy" => self
                .access
                .reload_policies_and_apply()
                .map_err(|x| x.message),
            "console_user" => self.console_users.reload().map_err(|x| x.message),
            other => {
                tracing::warn!(
                    kind = other,
                    "unknown registry change kind (a newer node?); reading everything again"
                );
                Err(format!("unknown change kind {other}"))
            }
        }
    }

    fn kick_user(&self, username: &str) {
        for c in self.control.connections() {
            if c.username.as_deref() == Some(username) {
                self.control.kick(&c.client_id, ReasonCode::NOT_AUTHORIZED);
            }
        }
    }

    /// Reads the whole registry again (retrying until the store answers)
    /// and closes what it no longer admits.
    fn full_reload(&self, stats: &FollowStats) {
        let mut pause = Duration::from_millis(200);
        loop {
            match self.reload_all() {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the shared registry; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        stats.full_reloads.fetch_add(1, Ordering::Relaxed);
    }

    fn reload_all(&self) -> Result<(), String> {
        self.server_certs.reload().map_err(|x| x.message)?;
        self.access.users.reload().map_err(|x| x.message)?;
        let users: Vec<String> = self
            .control
            .connections()
            .iter()
            .filter_map(|c| c.username.as_deref().map(str::to_owned))
            .filter(|u| self.access.users.get(u).is_none())
            .collect();
        for u in users {
            self.kick_user(&u);
        }
        self.access
            .reload_policies_and_apply()
            .map_err(|x| x.message)?;
        self.console_users.reload().map_err(|x| x.message)?;
        self.devices
            .reload_and_enforce((self.now)(), 30)
            .map_err(|x| x.message)?;
        Ok(())
    }
}
