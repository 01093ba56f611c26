//! PostgreSQL behind [`Store`] and [`AccessStore`]: the registry a cluster
//! shares (SPEC 13).
//!
//! - Every write is one transaction that takes one cluster-wide lock
//!   (`pg_advisory_xact_lock`), so the checks inside it (a code spent once,
//!   the CA limit, a serial used once) hold across nodes as they do in one
//!   SQLite file, and change versions commit in their own order.
//! - Every write appends a row to `changes` (a version from a sequence, the
//!   node, what changed) and notifies `certmq_changes`. Each node listens
//!   ([`PgStore::listen`]) and reads the rows after the last version it saw:
//!   on every notification, every half second anyway, and after a
//!   reconnection, so a change is never missed, only heard late.
//! - The driver is the synchronous `postgres` crate (tokio-postgres
//!   underneath) on a small pool. Its calls block; called from inside the
//!   async runtime they run on a scoped thread of their own, as the SQLite
//!   store's calls block the caller for the length of a write.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod access;
mod state;

use parking_lot::Mutex;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Transaction};

use certmq_pki::{CaStatus, DeviceStatus, Provisioning};
use certmq_registry::store::{
    AuditEntry, AuditRecord, CaRecord, CrlRecord, DeviceFilter, DeviceRecord, RevokedRecord,
    ServerCertRecord, Store, StoreError,
};

#[derive(Debug)]
enum Error {
    Db(postgres::Error),
    Domain(StoreError),
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::Db(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Domain(e)
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            // No answer from the server (refused, reset, timed out): the
            // change was not made.
            Error::Db(e) if e.as_db_error().is_none() && is_link_error(&e) => {
                StoreError::Unavailable(format!(
                    "the cluster's shared registry (PostgreSQL) cannot be reached ({}); nothing was changed: try again when it is back. Connected clients are still served",
                    describe(&e)
                ))
            }
            Error::Db(e) => StoreError::Backend(describe(&e)),
            Error::Domain(e) => e,
        }
    }
}

/// The driver's error with its cause (the server's message, or why the
/// connection failed); never the URL, which may hold a password.
pub(crate) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("PostgreSQL: {}", db.message());
    }
    match std::error::Error::source(e) {
        Some(src) => format!("PostgreSQL: {e}: {src}"),
        None => format!("PostgreSQL: {e}"),
    }
}

/// Whether the server could not be reached or the connection broke (as
/// against a statement or a value that failed).
fn is_link_error(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()) {
        return true;
    }
    let s = e.to_string();
    s.starts_with("error connecting") || s.contains("timeout") || s.contains("connection closed")
}

fn fail<T>(e: StoreError) -> Result<T, Error> {
    Err(Error::Domain(e))
}

fn typed<T>(row: &Row, idx: usize, parse: fn(&str) -> Option<T>) -> Result<T, Error> {
    let s: String = row.try_get(idx)?;
    parse(&s).ok_or_else(|| {
        Error::Domain(StoreError::Corrupt(format!(
            "unknown value {s:?} in column {idx}"
        )))
    })
}

/// The lock every write takes (any constant; `certmq` in ASCII).
pub(crate) const WRITE_LOCK: i64 = 0x6365_7274_6d71;

/// The channel changes are announced on.
pub const CHANNEL: &str = "certmq_changes";

/// Each entry moves the schema one version up; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: the registry, the access plane, the change log, the nodes.
    "CREATE TABLE server_certificates (
        id TEXT PRIMARY KEY,
        ord BIGSERIAL,
        name TEXT,
        chain_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE audit_log (
        seq BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        node TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        before TEXT,
        after TEXT
    );
    CREATE TABLE ca_certificates (
        id TEXT PRIMARY KEY,
        ord BIGSERIAL,
        serial TEXT NOT NULL,
        subject_cn TEXT,
        issuer_cn TEXT,
        not_before BIGINT NOT NULL,
        not_after BIGINT NOT NULL,
        status TEXT NOT NULL,
        pem TEXT NOT NULL,
        verification_pem TEXT NOT NULL,
        provisioning TEXT NOT NULL,
        automatic_activation BOOLEAN NOT NULL,
        registered_at BIGINT NOT NULL,
        last_activated_at BIGINT,
        last_deactivated_at BIGINT
    );
    CREATE TABLE device_certificates (
        id TEXT PRIMARY KEY,
        ord BIGSERIAL,
        ca_id TEXT NOT NULL REFERENCES ca_certificates(id) ON DELETE CASCADE,
        serial TEXT NOT NULL,
        subject_cn TEXT,
        subject_ou TEXT,
        client_id TEXT,
        not_before BIGINT NOT NULL,
        not_after BIGINT NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        pem TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        last_connected_at BIGINT,
        signed_id TEXT,
        issuer_key TEXT
    );
    CREATE INDEX device_by_ca ON device_certificates(ca_id, status);
    CREATE INDEX device_by_client_id ON device_certificates(client_id);
    CREATE INDEX device_by_signed_id ON device_certificates(signed_id);
    CREATE INDEX device_by_serial ON device_certificates(ca_id, serial);
    CREATE TABLE revoked_certificates (
        signed_id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        issuer_key TEXT NOT NULL,
        serial TEXT NOT NULL,
        ca_id TEXT NOT NULL,
        revoked_at BIGINT NOT NULL
    );
    CREATE INDEX revoked_by_serial ON revoked_certificates(issuer_key, serial);
    CREATE TABLE mqtt_users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE policies (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        document TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE console_users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE changes (
        version BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL
    );
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        started_at BIGINT NOT NULL,
        seen_at BIGINT NOT NULL,
        info TEXT NOT NULL
    );",
    // 2: the broker state of SPEC 10, shared: retained messages, sessions
    // (each owned by the node that last wrote it) and what hangs off them.
    // Keys come from per-incarnation ranges, so nodes never collide.
    "CREATE SEQUENCE state_incarnations;
    CREATE TABLE state_retained (
        topic TEXT PRIMARY KEY,
        publish BYTEA NOT NULL,
        expires_at BIGINT
    );
    CREATE TABLE state_sessions (
        client_id TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        identity TEXT NOT NULL,
        expiry_interval BIGINT NOT NULL,
        offline_since BIGINT
    );
    CREATE INDEX state_sessions_by_node ON state_sessions(node);
    CREATE TABLE state_subscriptions (
        client_id TEXT NOT NULL,
        filter TEXT NOT NULL,
        options BIGINT NOT NULL,
        subscription_id BIGINT,
        PRIMARY KEY (client_id, filter)
    );
    CREATE TABLE state_messages (
        id BIGINT PRIMARY KEY,
        publish BYTEA NOT NULL,
        expires_at BIGINT
    );
    CREATE TABLE state_deliveries (
        key BIGINT PRIMARY KEY,
        client_id TEXT NOT NULL,
        message_id BIGINT NOT NULL,
        qos BIGINT NOT NULL,
        retain BOOLEAN NOT NULL,
        subscription_ids TEXT NOT NULL,
        packet_id BIGINT,
        released BOOLEAN NOT NULL
    );
    CREATE INDEX state_deliveries_by_client ON state_deliveries(client_id);
    CREATE INDEX state_deliveries_by_message ON state_deliveries(message_id);
    CREATE TABLE state_incoming_qos2 (
        client_id TEXT NOT NULL,
        packet_id BIGINT NOT NULL,
        PRIMARY KEY (client_id, packet_id)
    );
    CREATE TABLE state_wills (
        client_id TEXT NOT NULL,
        generation BIGINT NOT NULL,
        node TEXT NOT NULL,
        publish BYTEA NOT NULL,
        expires_at BIGINT,
        delay BIGINT NOT NULL,
        publish_at BIGINT,
        PRIMARY KEY (client_id, generation)
    );",
    // 3: intermediates of device certificates, CRLs and where to fetch them.
    "ALTER TABLE device_certificates ADD COLUMN chain_pem TEXT;
    ALTER TABLE ca_certificates ADD COLUMN crl_url TEXT;
    CREATE TABLE crls (
        ca_id TEXT PRIMARY KEY REFERENCES ca_certificates(id) ON DELETE CASCADE,
        der BYTEA NOT NULL,
        this_update BIGINT NOT NULL,
        next_update BIGINT,
        revoked_count BIGINT NOT NULL,
        number TEXT,
        source TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );",
];

const CA_COLS: &str = "id, serial, subject_cn, issuer_cn, not_before, not_after, status, pem, verification_pem, provisioning, automatic_activation, registered_at, last_activated_at, last_deactivated_at, crl_url";
const DEVICE_COLS: &str = "id, ca_id, serial, subject_cn, subject_ou, client_id, not_before, not_after, status, source, pem, created_at, updated_at, last_connected_at, signed_id, issuer_key, chain_pem";
const DEVICE_VALUES: &str =
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17";

fn ca_row(r: &Row) -> Result<CaRecord, Error> {
    Ok(CaRecord {
        id: r.try_get(0)?,
        serial: r.try_get(1)?,
        subject_cn: r.try_get(2)?,
        issuer_cn: r.try_get(3)?,
        not_before: r.try_get(4)?,
        not_after: r.try_get(5)?,
        status: typed(r, 6, CaStatus::parse)?,
        pem: r.try_get(7)?,
        verification_pem: r.try_get(8)?,
        provisioning: typed(r, 9, Provisioning::parse)?,
        automatic_activation: r.try_get(10)?,
        registered_at: r.try_get(11)?,
        last_activated_at: r.try_get(12)?,
        last_deactivated_at: r.try_get(13)?,
        crl_url: r.try_get(14)?,
    })
}

const CRL_COLS: &str =
    "ca_id, der, this_update, next_update, revoked_count, number, source, updated_at";

fn crl_row(r: &Row) -> Result<CrlRecord, Error> {
    Ok(CrlRecord {
        ca_id: r.try_get(0)?,
        der: r.try_get(1)?,
        this_update: r.try_get(2)?,
        next_update: r.try_get(3)?,
        revoked_count: r.try_get::<_, i64>(4)?.max(0) as u64,
        number: r.try_get(5)?,
        source: r.try_get(6)?,
        updated_at: r.try_get(7)?,
    })
}

fn device_row(r: &Row) -> Result<DeviceRecord, Error> {
    Ok(DeviceRecord {
        id: r.try_get(0)?,
        ca_id: r.try_get(1)?,
        serial: r.try_get(2)?,
        subject_cn: r.try_get(3)?,
        subject_ou: r.try_get(4)?,
        client_id: r.try_get(5)?,
        not_before: r.try_get(6)?,
        not_after: r.try_get(7)?,
        status: typed(r, 8, DeviceStatus::parse)?,
        source: typed(r, 9, Provisioning::parse)?,
        pem: r.try_get(10)?,
        created_at: r.try_get(11)?,
        updated_at: r.try_get(12)?,
        last_connected_at: r.try_get(13)?,
        signed_id: r.try_get::<_, Option<String>>(14)?.unwrap_or_default(),
        issuer_key: r.try_get::<_, Option<String>>(15)?.unwrap_or_default(),
        chain_pem: r.try_get::<_, Option<String>>(16)?.unwrap_or_default(),
    })
}

fn rows<T>(rows: Vec<Row>, f: fn(&Row) -> Result<T, Error>) -> Result<Vec<T>, Error> {
    rows.iter().map(f).collect()
}

fn insert_device_in(
    tx: &mut Transaction<'_>,
    rec: &DeviceRecord,
    or_ignore: bool,
) -> Result<u64, Error> {
    let status = rec.status.as_str();
    let source = rec.source.as_str();
    let chain = Some(rec.chain_pem.as_str()).filter(|c| !c.is_empty());
    let conflict = if or_ignore {
        " ON CONFLICT DO NOTHING"
    } else {
        ""
    };
    Ok(tx.execute(
        &format!(
            "INSERT INTO device_certificates ({DEVICE_COLS}) VALUES ({DEVICE_VALUES}){conflict}"
        ),
        &[
            &rec.id,
            &rec.ca_id,
            &rec.serial,
            &rec.subject_cn,
            &rec.subject_ou,
            &rec.client_id,
            &rec.not_before,
            &rec.not_after,
            &status,
            &source,
            &rec.pem,
            &rec.created_at,
            &rec.updated_at,
            &rec.last_connected_at,
            &rec.signed_id,
            &rec.issuer_key,
            &chain,
        ],
    )?)
}

fn revoke_in(tx: &mut Transaction<'_>, rec: &DeviceRecord, at: i64) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO revoked_certificates (signed_id, fingerprint, issuer_key, serial, ca_id, revoked_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &[&rec.signed_id, &rec.id, &rec.issuer_key, &rec.serial, &rec.ca_id, &at],
    )?;
    Ok(())
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What changed, as a node hears it: `kind` is `ca`, `device`,
/// `server_cert`, `user`, `policy` or `console_user`, `key` the record's
/// id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeNote {
    pub version: i64,
    pub node: String,
    pub kind: String,
    pub key: String,
}

/// What the listener reports.
#[derive(Debug, Clone)]
pub enum Heard {
    /// Changes by other nodes, in version order.
    Changes(Vec<ChangeNote>),
    /// The change log no longer holds what this node missed: everything
    /// must be read again.
    Gap,
    /// The connection to PostgreSQL was lost (`false`) or is back (`true`).
    Link(bool),
}

/// A node as the cluster sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    pub started_at: i64,
    pub seen_at: i64,
    pub info: serde_json::Value,
}

/// Connections the pool keeps.
const POOL: usize = 4;

/// The store: PostgreSQL behind [`Store`] and [`AccessStore`].
pub struct PgStore {
    config: postgres::Config,
    node: String,
    pool: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
    /// Whether the last use of PostgreSQL worked.
    up: AtomicBool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Where the URL points, for messages (never its password).
pub(crate) fn target(c: &postgres::Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        c.get_dbname().unwrap_or(c.get_user().unwrap_or("postgres"))
    )
}

impl PgStore {
    /// Connects to `url` (a `postgres://` URL or key=value string) and
    /// migrates the schema. `node` names this node in the change log.
    pub fn open(url: &str, node: &str) -> Result<Arc<Self>, StoreError> {
        let mut config: postgres::Config =
            url.parse().map_err(|e: postgres::Error| StoreError::Open {
                path: "the PostgreSQL URL".into(),
                reason: describe(&e),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives_idle(Duration::from_secs(10));
        config.application_name(&format!("certmq {node}"));
        let store = Arc::new(PgStore {
            config,
            node: node.to_owned(),
            pool: (0..POOL).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            up: AtomicBool::new(false),
        });
        store.migrate().map_err(|e| match e {
            Error::Db(e) => StoreError::Open {
                path: target(&store.config),
                reason: describe(&e),
            },
            Error::Domain(d) => d,
        })?;
        Ok(store)
    }

    /// Whether the last use of PostgreSQL worked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn connect(&self) -> Result<Client, Error> {
        Ok(self.config.connect(NoTls)?)
    }

    /// Runs `f` on a pooled connection (connecting it when needed). Inside
    /// the async runtime, on a scoped thread: the driver blocks on its own
    /// runtime, which must not run inside another.
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, Error> + Send,
    ) -> Result<T, Error> {
        let run = || {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
            let Some(slot) = self.pool.get(i) else {
                return fail(StoreError::Backend("no connection".into()));
            };
            let mut slot = slot.lock();
            if slot.as_ref().is_none_or(|c| c.is_closed()) {
                match self.connect() {
                    Ok(c) => *slot = Some(c),
                    Err(e) => {
                        self.up.store(false, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            let Some(client) = slot.as_mut() else {
                return fail(StoreError::Backend("no connection".into()));
            };
            let out = f(client);
            match &out {
                Err(Error::Db(e)) if is_link_error(e) => {
                    // The connection failed (not the statement): a new one
                    // next time.
                    *slot = None;
                    self.up.store(false, Ordering::Relaxed);
                }
                _ => self.up.store(true, Ordering::Relaxed),
            }
            out
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(run).join().unwrap_or_else(|_| {
                    fail(StoreError::Backend("the PostgreSQL call failed".into()))
                })
            })
        } else {
            run()
        }
    }

    fn read<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, Error> + Send,
    ) -> Result<T, Error> {
        self.with(f)
    }

    /// One write: the cluster-wide lock, `f`, the audit record, the change
    /// record and its notification, one commit.
    fn write<T: Send>(
        &self,
        audit: Option<&AuditEntry>,
        change: Option<(&str, &str)>,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, Error> + Send,
    ) -> Result<T, Error> {
        let node = self.node.as_str();
        self.with(move |c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            let out = f(&mut tx)?;
            if let Some(a) = audit {
                let before = a.before.as_ref().map(|v| v.to_string());
                let after = a.after.as_ref().map(|v| v.to_string());
                tx.execute(
                    "INSERT INTO audit_log (at, node, actor, action, target, before, after) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&now(), &node, &a.actor, &a.action, &a.target, &before, &after],
                )?;
            }
            if let Some((kind, key)) = change {
                let row = tx.query_one(
                    "INSERT INTO changes (at, node, kind, key) VALUES ($1, $2, $3, $4) RETURNING version",
                    &[&now(), &node, &kind, &key],
                )?;
                let version: i64 = row.try_get(0)?;
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&CHANNEL, &version.to_string()],
                )?;
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn migrate(&self) -> Result<(), Error> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // Nodes starting together migrate one after the other.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS certmq_schema (version BIGINT NOT NULL)")?;
            let version: i64 = match tx.query_opt("SELECT version FROM certmq_schema", &[])? {
                Some(r) => r.try_get(0)?,
                None => {
                    tx.execute("INSERT INTO certmq_schema (version) VALUES (0)", &[])?;
                    0
                }
            };
            let known = MIGRATIONS.len() as i64;
            if version > known {
                return fail(StoreError::TooNew {
                    found: version,
                    known,
                });
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.batch_execute(sql)?;
                let v = i as i64 + 1;
                tx.execute("UPDATE certmq_schema SET version = $1", &[&v])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The newest change version (0 when nothing changed yet). Read before
    /// loading the snapshots: listening from it replays (harmlessly) what
    /// the load already saw, and misses nothing.
    pub fn version(&self) -> Result<i64, StoreError> {
        Ok(self.read(|c| {
            let r = c.query_one("SELECT COALESCE(MAX(version), 0) FROM changes", &[])?;
            Ok(r.try_get::<_, i64>(0)?)
        })?)
    }

    /// Records this node as alive, with what it reports of itself.
    pub fn heartbeat(&self, started_at: i64, info: &serde_json::Value) -> Result<(), StoreError> {
        let node = self.node.as_str();
        let info = info.to_string();
        Ok(self.with(move |c| {
            c.execute(
                "INSERT INTO nodes (id, started_at, seen_at, info) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at,
                 seen_at = excluded.seen_at, info = excluded.info",
                &[&node, &started_at, &now(), &info],
            )?;
            Ok(())
        })?)
    }

    /// Every node that ever joined, by id.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(self.read(|c| {
            let rows = c.query(
                "SELECT id, started_at, seen_at, info FROM nodes ORDER BY id",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    let info: String = r.try_get(3)?;
                    Ok(NodeRecord {
                        id: r.try_get(0)?,
                        started_at: r.try_get(1)?,
                        seen_at: r.try_get(2)?,
                        info: serde_json::from_str(&info).unwrap_or(serde_json::Value::Null),
                    })
                })
                .collect()
        })?)
    }

    /// Takes this node off the node list (a clean shutdown).
    pub fn leave(&self) -> Result<(), StoreError> {
        let node = self.node.as_str();
        Ok(self.with(|c| {
            c.execute("DELETE FROM nodes WHERE id = $1", &[&node])?;
            Ok(())
        })?)
    }

    /// Follows the change log from `from` on a thread of its own, for as
    /// long as `on` returns true: every notification, every `poll` anyway,
    /// and after each reconnection (then from the last version heard).
    pub fn listen(
        self: &Arc<Self>,
        from: i64,
        poll: Duration,
        on: impl Fn(Heard) -> bool + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let this = self.clone();
        std::thread::Builder::new()
            .name("certmq-pg-listen".into())
            .spawn(move || this.follow(from, poll, on))
    }

    fn follow(&self, mut last: i64, poll: Duration, on: impl Fn(Heard) -> bool) {
        let mut backoff = Duration::from_millis(200);
        let mut was_up = true;
        let mut last_prune = Instant::now();
        loop {
            let mut client = match self.connect().and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
                Ok(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    if was_up {
                        tracing::error!(error = %StoreError::from(e), "lost PostgreSQL: registry changes of other nodes wait; retrying");
                        was_up = false;
                        if !on(Heard::Link(false)) {
                            return;
                        }
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            if !was_up {
                tracing::info!("PostgreSQL is back: catching up on registry changes");
                if !on(Heard::Link(true)) {
                    return;
                }
            }
            loop {
                match self.catch_up(&mut client, last) {
                    Ok((notes, gap, newest)) => {
                        if gap {
                            tracing::warn!(from = last, "the change log no longer reaches back to this node's last version: reading everything again");
                            if !on(Heard::Gap) {
                                return;
                            }
                        }
                        last = newest.max(last);
                        if !notes.is_empty() && !on(Heard::Changes(notes)) {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %StoreError::from(e), "lost PostgreSQL: registry changes of other nodes wait; retrying");
                        was_up = false;
                        if !on(Heard::Link(false)) {
                            return;
                        }
                        break;
                    }
                }
                if last_prune.elapsed() > Duration::from_secs(3600) {
                    last_prune = Instant::now();
                    // A week of changes is kept: a node away longer reads
                    // everything again (a gap).
                    let _ = client.execute(
                        "DELETE FROM changes WHERE at < $1 AND version < (SELECT MAX(version) FROM changes)",
                        &[&(now() - 7 * 86_400)],
                    );
                }
                // Wait for a notification (or the poll interval); what it
                // says does not matter, the log is read from `last`.
                let mut n = client.notifications();
                let mut it = n.timeout_iter(poll);
                match it.next() {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %describe(&e), "lost PostgreSQL: registry changes of other nodes wait; retrying");
                        was_up = false;
                        if !on(Heard::Link(false)) {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Changes after `last` by other nodes; whether some were pruned before
    /// being heard; the newest version.
    fn catch_up(&self, c: &mut Client, last: i64) -> Result<(Vec<ChangeNote>, bool, i64), Error> {
        let rows = c.query(
            "SELECT version, node, kind, key FROM changes WHERE version > $1 ORDER BY version LIMIT 10000",
            &[&last],
        )?;
        let mut notes = Vec::with_capacity(rows.len());
        let mut newest = last;
        let mut gap = false;
        for (i, r) in rows.iter().enumerate() {
            let version: i64 = r.try_get(0)?;
            if i == 0 && version > last + 1 && last > 0 {
                // A version skipped: rolled back, or pruned. Pruned when the
                // oldest kept is newer than what we saw.
                let oldest: i64 = c
                    .query_one("SELECT COALESCE(MIN(version), 0) FROM changes", &[])?
                    .try_get(0)?;
                gap = oldest > last + 1;
            }
            newest = version;
            let node: String = r.try_get(1)?;
            if node == self.node {
                continue;
            }
            notes.push(ChangeNote {
                version,
                node,
                kind: r.try_get(2)?,
                key: r.try_get(3)?,
            });
        }
        Ok((notes, gap, newest))
    }
}

impl Store for PgStore {
    fn server_certs(&self) -> Result<Vec<ServerCertRecord>, StoreError> {
        Ok(self.read(|c| {
            let rows = c.query(
                "SELECT id, name, chain_pem, key_pem, created_at FROM server_certificates ORDER BY created_at, ord",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(ServerCertRecord {
                        id: r.try_get(0)?,
                        name: r.try_get(1)?,
                        chain_pem: r.try_get(2)?,
                        key_pem: r.try_get(3)?,
                        created_at: r.try_get(4)?,
                    })
                })
                .collect()
        })?)
    }

    fn insert_server_cert(
        &self,
        rec: &ServerCertRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        Ok(self.write(Some(audit), Some(("server_cert", &rec.id)), |tx| {
            let n = tx.execute(
                "INSERT INTO server_certificates (id, name, chain_pem, key_pem, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
                &[&rec.id, &rec.name, &rec.chain_pem, &rec.key_pem, &rec.created_at],
            )?;
            if n == 0 {
                return fail(StoreError::Exists(format!("server certificate {}", rec.id)));
            }
            Ok(())
        })?)
    }

    fn delete_server_cert(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.write(Some(audit), Some(("server_cert", id)), |tx| {
            let n = tx.execute("DELETE FROM server_certificates WHERE id = $1", &[&id])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("server certificate {id}")));
            }
            Ok(())
        })?)
    }

    fn default_cert_enabled(&self) -> Result<bool, StoreError> {
        Ok(self.read(|c| {
            let v: Option<String> = c
                .query_opt(
                    "SELECT value FROM settings WHERE key = 'default_server_cert_enabled'",
                    &[],
                )?
                .map(|r| r.try_get(0))
                .transpose()?;
            Ok(v.as_deref() != Some("false"))
        })?)
    }

    fn set_default_cert_enabled(
        &self,
        enabled: bool,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let v = if enabled { "true" } else { "false" };
        Ok(
            self.write(Some(audit), Some(("server_cert", "default")), |tx| {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES ('default_server_cert_enabled', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&v],
                )?;
                Ok(())
            })?,
        )
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self.read(|c| {
            let rows = c.query(
                "SELECT seq, at, actor, action, target, before, after FROM audit_log ORDER BY seq DESC LIMIT $1",
                &[&limit],
            )?;
            let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
            rows.iter()
                .map(|r| {
                    Ok(AuditRecord {
                        seq: r.try_get(0)?,
                        at: r.try_get(1)?,
                        actor: r.try_get(2)?,
                        action: r.try_get(3)?,
                        target: r.try_get(4)?,
                        before: parse(r.try_get(5)?),
                        after: parse(r.try_get(6)?),
                    })
                })
                .collect()
        })?)
    }

    fn registration_code(&self) -> Result<Option<(String, i64)>, StoreError> {
        Ok(self.read(|c| {
            let v: Option<String> = c
                .query_opt(
                    "SELECT value FROM settings WHERE key = 'registration_code'",
                    &[],
                )?
                .map(|r| r.try_get(0))
                .transpose()?;
            Ok(v.and_then(|v| {
                let (code, exp) = v.split_once(' ')?;
                Some((code.to_string(), exp.parse().ok()?))
            }))
        })?)
    }

    fn set_registration_code(
        &self,
        code: &str,
        expires_at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let v = format!("{code} {expires_at}");
        Ok(self.write(Some(audit), None, |tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('registration_code', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&v],
            )?;
            Ok(())
        })?)
    }

    fn cas(&self) -> Result<Vec<CaRecord>, StoreError> {
        Ok(self.read(|c| {
            rows(
                c.query(
                    &format!("SELECT {CA_COLS} FROM ca_certificates ORDER BY registered_at, ord"),
                    &[],
                )?,
                ca_row,
            )
        })?)
    }

    fn insert_ca(
        &self,
        rec: &CaRecord,
        code: &str,
        max_cas: usize,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        Ok(self.write(Some(audit), Some(("ca", &rec.id)), |tx| {
            let current: Option<String> = tx
                .query_opt("SELECT value FROM settings WHERE key = 'registration_code'", &[])?
                .map(|r| r.try_get(0))
                .transpose()?;
            if current.as_deref().and_then(|v| v.split(' ').next()) != Some(code) {
                return fail(StoreError::Conflict(
                    "the registration code was used or replaced meanwhile; request a new one".into(),
                ));
            }
            if tx
                .query_opt("SELECT id FROM ca_certificates WHERE id = $1", &[&rec.id])?
                .is_some()
            {
                return fail(StoreError::Exists(format!("CA certificate {}", rec.id)));
            }
            let count: i64 = tx
                .query_one("SELECT COUNT(*) FROM ca_certificates", &[])?
                .try_get(0)?;
            if count as usize >= max_cas {
                return fail(StoreError::Limit(format!(
                    "{count} CA certificates are registered in the cluster, the most allowed; delete one first"
                )));
            }
            let status = rec.status.as_str();
            let provisioning = rec.provisioning.as_str();
            tx.execute(
                &format!("INSERT INTO ca_certificates ({CA_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"),
                &[
                    &rec.id, &rec.serial, &rec.subject_cn, &rec.issuer_cn, &rec.not_before, &rec.not_after,
                    &status, &rec.pem, &rec.verification_pem, &provisioning, &rec.automatic_activation,
                    &rec.registered_at, &rec.last_activated_at, &rec.last_deactivated_at, &rec.crl_url,
                ],
            )?;
            tx.execute("DELETE FROM settings WHERE key = 'registration_code'", &[])?;
            Ok(())
        })?)
    }

    fn update_ca(&self, rec: &CaRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        let status = rec.status.as_str();
        let provisioning = rec.provisioning.as_str();
        Ok(self.write(Some(audit), Some(("ca", &rec.id)), |tx| {
            let n = tx.execute(
                "UPDATE ca_certificates SET status = $2, provisioning = $3, automatic_activation = $4,
                 last_activated_at = $5, last_deactivated_at = $6, crl_url = $7 WHERE id = $1",
                &[
                    &rec.id, &status, &provisioning, &rec.automatic_activation,
                    &rec.last_activated_at, &rec.last_deactivated_at, &rec.crl_url,
                ],
            )?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("CA certificate {}", rec.id)));
            }
            Ok(())
        })?)
    }

    fn delete_ca(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.write(Some(audit), Some(("ca", id)), |tx| {
            tx.execute("DELETE FROM device_certificates WHERE ca_id = $1", &[&id])?;
            tx.execute("DELETE FROM crls WHERE ca_id = $1", &[&id])?;
            let n = tx.execute("DELETE FROM ca_certificates WHERE id = $1", &[&id])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("CA certificate {id}")));
            }
            Ok(())
        })?)
    }

    fn device_counts(&self, ca_id: &str) -> Result<Vec<(DeviceStatus, u64)>, StoreError> {
        Ok(self.read(|c| {
            let rows = c.query(
                "SELECT status, COUNT(*) FROM device_certificates WHERE ca_id = $1 GROUP BY status",
                &[&ca_id],
            )?;
            rows.iter()
                .map(|r| {
                    Ok((
                        typed(r, 0, DeviceStatus::parse)?,
                        r.try_get::<_, i64>(1)? as u64,
                    ))
                })
                .collect()
        })?)
    }

    fn devices(&self, f: &DeviceFilter) -> Result<(Vec<DeviceRecord>, u64), StoreError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut text = |col: &str, v: &Option<String>| {
            if let Some(v) = v {
                args.push(Box::new(v.clone()));
                clauses.push(format!("{col} = ${}", args.len()));
            }
        };
        text("ca_id", &f.ca_id);
        text("client_id", &f.client_id);
        text("subject_cn", &f.subject_cn);
        text("subject_ou", &f.subject_ou);
        text("serial", &f.serial);
        text("status", &f.status.map(|s| s.as_str().to_string()));
        if let Some(t) = f.expires_after {
            args.push(Box::new(t));
            clauses.push(format!("not_after >= ${}", args.len()));
        }
        if let Some(t) = f.expires_before {
            args.push(Box::new(t));
            clauses.push(format!("not_after < ${}", args.len()));
        }
        let where_ = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
        let offset = i64::try_from(f.offset).unwrap_or(i64::MAX);
        let n = args.len();
        Ok(self.read(move |c| {
            let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
            let total: i64 = c
                .query_one(&format!("SELECT COUNT(*) FROM device_certificates {where_}"), &params)?
                .try_get(0)?;
            let mut page = params.clone();
            page.push(&limit);
            page.push(&offset);
            let found = c.query(
                &format!(
                    "SELECT {DEVICE_COLS} FROM device_certificates {where_} ORDER BY created_at, ord LIMIT ${} OFFSET ${}",
                    n + 1,
                    n + 2
                ),
                &page,
            )?;
            Ok((rows(found, device_row)?, total as u64))
        })?)
    }

    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.read(|c| {
            c.query_opt(
                &format!("SELECT {DEVICE_COLS} FROM device_certificates WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(device_row)
            .transpose()
        })?)
    }

    fn insert_device(&self, rec: &DeviceRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.write(Some(audit), Some(("device", &rec.id)), |tx| {
            if let Some(r) = tx.query_opt(
                "SELECT id FROM device_certificates WHERE id = $1 OR signed_id = $2",
                &[&rec.id, &rec.signed_id],
            )? {
                let id: String = r.try_get(0)?;
                return fail(StoreError::Exists(format!("device certificate {id}")));
            }
            if let Some(r) = tx.query_opt(
                "SELECT fingerprint FROM revoked_certificates WHERE signed_id = $1 OR (issuer_key = $2 AND serial = $3)",
                &[&rec.signed_id, &rec.issuer_key, &rec.serial],
            )? {
                let id: String = r.try_get(0)?;
                return fail(StoreError::Revoked(format!(
                    "this certificate (serial {}) was revoked as {id}; REVOKED is final",
                    rec.serial
                )));
            }
            if let Some(r) = tx.query_opt(
                "SELECT id FROM device_certificates WHERE ca_id = $1 AND serial = $2",
                &[&rec.ca_id, &rec.serial],
            )? {
                let id: String = r.try_get(0)?;
                return fail(StoreError::SerialInUse(format!(
                    "the CA already has device certificate {id} with serial {}",
                    rec.serial
                )));
            }
            insert_device_in(tx, rec, false)?;
            Ok(())
        })?)
    }

    fn import_devices(
        &self,
        recs: &[DeviceRecord],
        audit: &AuditEntry,
    ) -> Result<usize, StoreError> {
        // Imported devices are ACTIVE or not as given; other nodes read the
        // whole registry again (one change for the batch).
        Ok(self.write(Some(audit), Some(("devices", "import")), |tx| {
            let mut n = 0;
            for rec in recs {
                n += insert_device_in(tx, rec, true)? as usize;
            }
            Ok(n)
        })?)
    }

    fn transition_device(
        &self,
        id: &str,
        status: DeviceStatus,
        at: i64,
        actor: &str,
        action: &str,
    ) -> Result<(DeviceRecord, DeviceRecord), StoreError> {
        let out = self.write(None, Some(("device", id)), |tx| {
            let before = tx
                .query_opt(
                    &format!("SELECT {DEVICE_COLS} FROM device_certificates WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )?
                .as_ref()
                .map(device_row)
                .transpose()?
                .ok_or_else(|| StoreError::NotFound(format!("device certificate {id}")))?;
            if before.status == DeviceStatus::Revoked {
                return fail(StoreError::Revoked(
                    "a REVOKED certificate stays revoked; register a new one".into(),
                ));
            }
            let new_status = status.as_str();
            let n = tx.execute(
                "UPDATE device_certificates SET status = $2, updated_at = $3 WHERE id = $1",
                &[&id, &new_status, &at],
            )?;
            if n != 1 {
                return fail(StoreError::Conflict(format!(
                    "device certificate {id} changed meanwhile; try again"
                )));
            }
            let after = DeviceRecord {
                status,
                updated_at: at,
                ..before.clone()
            };
            if status == DeviceStatus::Revoked {
                revoke_in(tx, &after, at)?;
            }
            let b = serde_json::json!({"status": before.status.as_str()}).to_string();
            let a = serde_json::json!({"status": after.status.as_str()}).to_string();
            tx.execute(
                "INSERT INTO audit_log (at, node, actor, action, target, before, after) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&now(), &self.node, &actor, &action, &id, &b, &a],
            )?;
            Ok((before, after))
        })?;
        Ok(out)
    }

    fn revoked(&self) -> Result<Vec<RevokedRecord>, StoreError> {
        Ok(self.read(|c| {
            let found = c.query(
                "SELECT signed_id, fingerprint, issuer_key, serial, ca_id, revoked_at FROM revoked_certificates",
                &[],
            )?;
            found
                .iter()
                .map(|r| {
                    Ok(RevokedRecord {
                        signed_id: r.try_get(0)?,
                        fingerprint: r.try_get(1)?,
                        issuer_key: r.try_get(2)?,
                        serial: r.try_get(3)?,
                        ca_id: r.try_get(4)?,
                        revoked_at: r.try_get(5)?,
                    })
                })
                .collect()
        })?)
    }

    fn backfill_identity(
        &self,
        identity: &dyn Fn(&DeviceRecord) -> Option<(String, String)>,
    ) -> Result<usize, StoreError> {
        // Every record the PostgreSQL store writes has its identity; only
        // records copied in from elsewhere could lack it.
        let missing: Vec<DeviceRecord> = self.read(|c| {
            rows(
                c.query(
                    &format!("SELECT {DEVICE_COLS} FROM device_certificates WHERE signed_id IS NULL OR issuer_key IS NULL"),
                    &[],
                )?,
                device_row,
            )
        })?;
        let fixed: Vec<DeviceRecord> = missing
            .into_iter()
            .filter_map(|mut r| {
                let (s, k) = identity(&r)?;
                r.signed_id = s;
                r.issuer_key = k;
                Some(r)
            })
            .collect();
        if fixed.is_empty() {
            return Ok(0);
        }
        Ok(self.write(None, Some(("devices", "backfill")), |tx| {
            for rec in &fixed {
                tx.execute(
                    "UPDATE device_certificates SET signed_id = $2, issuer_key = $3 WHERE id = $1",
                    &[&rec.id, &rec.signed_id, &rec.issuer_key],
                )?;
                if rec.status == DeviceStatus::Revoked {
                    revoke_in(tx, rec, rec.updated_at)?;
                }
            }
            Ok(fixed.len())
        })?)
    }

    fn delete_device(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.write(Some(audit), Some(("device", id)), |tx| {
            let n = tx.execute("DELETE FROM device_certificates WHERE id = $1", &[&id])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("device certificate {id}")));
            }
            Ok(())
        })?)
    }

    fn all_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self.read(|c| {
            rows(
                c.query(
                    "SELECT id, ca_id, serial, subject_cn, subject_ou, client_id, not_before, not_after, status, source, '' AS pem, created_at, updated_at, last_connected_at, signed_id, issuer_key, chain_pem FROM device_certificates",
                    &[],
                )?,
                device_row,
            )
        })?)
    }

    fn crls(&self) -> Result<Vec<CrlRecord>, StoreError> {
        Ok(self.read(|c| {
            rows(
                c.query(&format!("SELECT {CRL_COLS} FROM crls"), &[])?,
                crl_row,
            )
        })?)
    }

    fn crl(&self, ca_id: &str) -> Result<Option<CrlRecord>, StoreError> {
        Ok(self.read(|c| {
            c.query_opt(
                &format!("SELECT {CRL_COLS} FROM crls WHERE ca_id = $1"),
                &[&ca_id],
            )?
            .as_ref()
            .map(crl_row)
            .transpose()
        })?)
    }

    fn put_crl(&self, rec: &CrlRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        let count = i64::try_from(rec.revoked_count).unwrap_or(i64::MAX);
        Ok(self.write(Some(audit), Some(("crl", &rec.ca_id)), |tx| {
            if tx
                .query_opt("SELECT id FROM ca_certificates WHERE id = $1", &[&rec.ca_id])?
                .is_none()
            {
                return fail(StoreError::NotFound(format!("CA certificate {}", rec.ca_id)));
            }
            tx.execute(
                "INSERT INTO crls (ca_id, der, this_update, next_update, revoked_count, number, source, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (ca_id) DO UPDATE SET der = $2, this_update = $3, next_update = $4,
                 revoked_count = $5, number = $6, source = $7, updated_at = $8",
                &[
                    &rec.ca_id, &rec.der, &rec.this_update, &rec.next_update, &count,
                    &rec.number, &rec.source, &rec.updated_at,
                ],
            )?;
            Ok(())
        })?)
    }
}
