//! The broker's durable state (SPEC 10): retained messages and persistent
//! sessions in `<data>/state.db`, an SQLite database of its own (apart
//! from the registry's `certmq.db`).
//!
//! The broker records changes through the core's `persist` seam
//! ([`Persist::record`] appends to a queue under a short lock and never
//! touches the disk); one writer thread commits them in batches, one
//! transaction and one fsync per batch (WAL, `synchronous = FULL`):
//!
//! - `async`: a batch every `flush_interval_ms`. A crash loses at most the
//!   changes of that window.
//! - `sync`: a batch as soon as there is something to write, and while one
//!   commits the next accumulates: group commit. Connections hold their
//!   acknowledgements until [`Durability`] says their changes are on disk.
//!
//! A batch that fails (full disk, I/O error, the size quota) is reported
//! (log, metrics, and in `sync` mode as failed acknowledgements) and kept
//! to be written again with the next batch.

mod apply;
pub(crate) mod load;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certmq_core::persist::{Change, PersistStats};
use certmq_core::{Delivery, Durability, Persist, Restored};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

/// `[persistence]`: what outlives the process, and how safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// `off`, `async` (the default) or `sync`.
    pub mode: PersistenceMode,
    /// `async`: the most time between a change and its commit (the most a
    /// crash can lose), milliseconds.
    pub flush_interval_ms: u64,
    /// The largest `state.db` may grow, MiB (0: no limit). Beyond it,
    /// writes fail as on a full disk.
    pub max_size_mb: u64,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        Self {
            mode: PersistenceMode::Async,
            flush_interval_ms: 100,
            max_size_mb: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersistenceMode {
    /// Everything in memory; nothing survives a restart.
    Off,
    /// Committed in batches every `flush_interval_ms`.
    Async,
    /// Acknowledgements wait for the commit of what they acknowledge.
    Sync,
}

impl PersistenceMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "async" => Some(Self::Async),
            "sync" => Some(Self::Sync),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Async => "async",
            Self::Sync => "sync",
        }
    }
}

/// Why the state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the broker state {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "the broker state {path} is damaged ({reason}). To start anyway, move the file \
         away (retained messages and persistent sessions are then lost) or restore it from \
         a backup; `--persistence off` starts without reading it"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("the broker state {path} has schema version {found}; this certmq knows up to {known}")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

/// What a load found and left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Records that did not decode or referred to nothing, left out (and
    /// logged).
    pub dropped: usize,
    pub elapsed: Duration,
}

struct Queue {
    seq: u64,
    batch: Batch,
    stopping: bool,
    /// Commit now rather than at the end of the interval.
    flush: bool,
}

/// The changes gathered for one commit. A delivery queued in this batch
/// waits in `queued` (its `Sent`, `Released` and `Done` change it there, so
/// one that is over before the commit, the usual case for an online
/// subscriber, is never written); everything else is kept in order in
/// `changes`, and `queued` is written after them.
#[derive(Default)]
pub(crate) struct Batch {
    pub changes: Vec<Change>,
    pub queued: HashMap<u64, Pending, KeyHash>,
}

/// Delivery keys come from a counter: one multiply spreads them well
/// enough, several times cheaper than SipHash on the publish path (the
/// map is not exposed to keys a client chooses).
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHash;

impl std::hash::BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A delivery queued in the batch, as it stands.
pub(crate) struct Pending {
    pub client_id: Arc<str>,
    pub delivery: Delivery,
    pub packet_id: Option<u16>,
    pub released: bool,
}

impl Batch {
    fn len(&self) -> usize {
        self.changes.len() + self.queued.len()
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.queued.is_empty()
    }

    fn add(&mut self, change: Change) {
        match change {
            Change::Queued {
                client_id,
                key,
                delivery,
            } => {
                self.queued.insert(
                    key,
                    Pending {
                        client_id,
                        delivery,
                        packet_id: None,
                        released: false,
                    },
                );
            }
            Change::Sent { key, packet_id } => match self.queued.get_mut(&key) {
                Some(p) => {
                    p.packet_id = Some(packet_id);
                    p.released = false;
                }
                None => self.changes.push(change),
            },
            Change::Released { key } => match self.queued.get_mut(&key) {
                Some(p) => p.released = true,
                None => self.changes.push(change),
            },
            Change::Done { key } => {
                if self.queued.remove(&key).is_none() {
                    self.changes.push(change);
                }
            }
            Change::SessionEnded { ref client_id } => {
                self.queued.retain(|_, p| p.client_id != *client_id);
                self.changes.push(change);
            }
            other => self.changes.push(other),
        }
    }
}

/// Where batches are committed: `state.db`, or the cluster's PostgreSQL.
pub(crate) trait Backend: Send + 'static {
    /// Writes `batches` in order, in one transaction.
    fn commit(&mut self, batches: &[Batch]) -> Result<(), String>;
    /// Bytes the kept state takes (0 when unknown).
    fn bytes(&self) -> u64;
    /// Where, for messages.
    fn describe(&self) -> String;
}

struct SqliteBackend {
    conn: rusqlite::Connection,
    path: PathBuf,
}

impl Backend for SqliteBackend {
    fn commit(&mut self, batches: &[Batch]) -> Result<(), String> {
        apply::commit(&mut self.conn, batches).map_err(|e| e.to_string())
    }
    fn bytes(&self) -> u64 {
        size_of(&self.path)
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    recorded: AtomicU64,
    durability: Arc<Durability>,
    stats: PersistStats,
    mode: PersistenceMode,
    flush_interval: Duration,
}

/// The state store: the core's [`Persist`], and the writer behind it.
pub struct StateStore {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("mode", &self.shared.mode)
            .finish_non_exhaustive()
    }
}

/// Changes kept for another try after failed writes, at most; beyond it
/// they are dropped (logged, counted): memory is not given up to a disk
/// that stays full.
const RETRY_LIMIT: usize = 1_000_000;

/// `sync`: how long failed changes wait for another try when nothing new
/// comes.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

impl StateStore {
    /// Opens (creating) `<dir>/state.db`, mode 0600, reads what it keeps
    /// and starts the writer. `mode` must not be `off`.
    pub fn open(
        dir: &Path,
        config: &PersistenceConfig,
    ) -> Result<(Arc<StateStore>, Restored, LoadReport), StateError> {
        let path = dir.join("state.db");
        let started = Instant::now();
        let conn = load::open(&path, config.max_size_mb)?;
        let (restored, dropped) = load::read(&conn, &path)?;
        let report = LoadReport {
            dropped,
            elapsed: started.elapsed(),
        };
        let store = Self::start(
            Box::new(SqliteBackend {
                conn,
                path: path.clone(),
            }),
            config,
        )
        .map_err(|e| StateError::Open {
            path,
            reason: e.to_string(),
        })?;
        Ok((store, restored, report))
    }

    /// Starts the writer over `backend`.
    pub(crate) fn start(
        backend: Box<dyn Backend>,
        config: &PersistenceConfig,
    ) -> std::io::Result<Arc<StateStore>> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                seq: 0,
                batch: Batch::default(),
                stopping: false,
                flush: false,
            }),
            wake: Condvar::new(),
            recorded: AtomicU64::new(0),
            durability: Arc::new(Durability::default()),
            stats: PersistStats::default(),
            mode: config.mode,
            flush_interval: Duration::from_millis(config.flush_interval_ms.max(1)),
        });
        shared
            .stats
            .state_bytes
            .store(backend.bytes(), Ordering::Relaxed);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("certmq-state".into())
            .spawn(move || writer(backend, &writer_shared))?;
        Ok(Arc::new(StateStore {
            shared,
            writer: Mutex::new(Some(writer)),
        }))
    }

    pub fn mode(&self) -> PersistenceMode {
        self.shared.mode
    }

    /// How far writes got, for `sync` acknowledgements.
    pub fn durability(&self) -> Arc<Durability> {
        self.shared.durability.clone()
    }

    /// Writes what is pending and stops the writer (at shutdown, after
    /// the last connection closed). Later changes are not written.
    pub fn close(&self) {
        {
            let mut q = self.shared.queue.lock();
            q.stopping = true;
        }
        self.shared.wake.notify_one();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl StateStore {
    /// Appends `changes` to the batch in order, under one lock; returns the
    /// last sequence number. After `close` nothing is taken.
    fn append(&self, changes: impl IntoIterator<Item = Change>) -> u64 {
        let mut q = self.shared.queue.lock();
        if q.stopping {
            return q.seq;
        }
        for c in changes {
            q.seq += 1;
            q.batch.add(c);
        }
        let seq = q.seq;
        self.shared.recorded.store(seq, Ordering::Release);
        drop(q);
        if self.shared.mode == PersistenceMode::Sync {
            self.shared.wake.notify_one();
        }
        seq
    }
}

impl Persist for StateStore {
    fn record(&self, change: Change) -> u64 {
        self.append(std::iter::once(change))
    }

    fn record_many(&self, changes: &mut Vec<Change>) -> u64 {
        self.append(changes.drain(..))
    }

    fn recorded(&self) -> u64 {
        self.shared.recorded.load(Ordering::Acquire)
    }

    fn stats(&self) -> &PersistStats {
        &self.shared.stats
    }

    fn flush_soon(&self) {
        self.shared.queue.lock().flush = true;
        self.shared.wake.notify_one();
    }

    fn durability(&self) -> Option<Arc<Durability>> {
        Some(self.shared.durability.clone())
    }
}

/// Bytes of the database and its write-ahead log.
fn size_of(db: &Path) -> u64 {
    let wal = db.with_extension("db-wal");
    [db, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The writer thread: takes the queue in batches and commits them.
fn writer(mut backend: Box<dyn Backend>, shared: &Shared) {
    // Batches that failed, written again (first, in order) with the next.
    let mut retry: Vec<Batch> = Vec::new();
    let mut written_to = 0u64;
    let mut last_error_log: Option<Instant> = None;
    loop {
        let (batch, seq, stopping) = {
            let mut q = shared.queue.lock();
            match shared.mode {
                PersistenceMode::Sync => {
                    // New changes, even ones that cancelled out in the batch
                    // (queued and finished before this look), must be
                    // settled: connections wait for their sequence numbers.
                    while q.seq == written_to && !q.stopping {
                        if retry.is_empty() {
                            shared.wake.wait(&mut q);
                        } else if shared.wake.wait_for(&mut q, RETRY_PAUSE).timed_out() {
                            // Failed changes are tried again now and then.
                            break;
                        }
                    }
                }
                _ => {
                    if !q.stopping {
                        // Changes gather for one interval; a stop ends it.
                        let deadline = Instant::now() + shared.flush_interval;
                        while !q.stopping && !q.flush {
                            if shared.wake.wait_until(&mut q, deadline).timed_out() {
                                break;
                            }
                        }
                    }
                }
            }
            q.flush = false;
            (std::mem::take(&mut q.batch), q.seq, q.stopping)
        };
        if !batch.is_empty() {
            retry.push(batch);
        }
        let n: usize = retry.iter().map(Batch::len).sum();
        shared.stats.pending.store(n as u64, Ordering::Relaxed);
        if n > 0 {
            let started = Instant::now();
            match backend.commit(&retry) {
                Ok(()) => {
                    retry.clear();
                    let stats = &shared.stats;
                    stats
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    stats.batch_changes.observe(n as f64);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    // Every change recorded up to `seq` is on disk.
                    stats.changes_written.fetch_max(seq, Ordering::Relaxed);
                    stats.state_bytes.store(backend.bytes(), Ordering::Relaxed);
                    stats.failing.store(false, Ordering::Relaxed);
                    shared.durability.settle(written_to, seq, true);
                }
                Err(e) => {
                    shared.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    shared.stats.failing.store(true, Ordering::Relaxed);
                    shared.durability.settle(written_to, seq, false);
                    if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::error!(error = %e, changes = n, at = %backend.describe(), "broker state not written; will try again");
                        last_error_log = Some(Instant::now());
                    }
                    if n > RETRY_LIMIT || stopping {
                        retry.clear();
                        shared
                            .stats
                            .changes_dropped
                            .fetch_add(n as u64, Ordering::Relaxed);
                        tracing::error!(
                            changes = n,
                            "broker state writes kept failing: changes dropped; the kept state is behind"
                        );
                    }
                }
            }
        } else {
            shared.durability.settle(written_to, seq, true);
            shared
                .stats
                .changes_written
                .fetch_max(seq, Ordering::Relaxed);
        }
        written_to = seq;
        shared.stats.pending.store(0, Ordering::Relaxed);
        if stopping {
            return;
        }
    }
}
