//! SQLite behind [`Store`]: one connection under a mutex (writes are rare
//! and small), WAL, full synchronous commits, migrations by `user_version`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod access;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use certmq_pki::{CaStatus, DeviceStatus, Provisioning};
use certmq_registry::store::{
    AuditEntry, AuditRecord, CaRecord, CrlRecord, DeviceFilter, DeviceRecord, RevokedRecord,
    ServerCertRecord, Store, StoreError,
};

/// SQLite's failures and the domain's refusals, inside this module; the
/// [`Store`] methods hand out [`StoreError`] only.
#[derive(Debug)]
enum Error {
    Db(rusqlite::Error),
    Domain(StoreError),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
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
            Error::Db(e @ rusqlite::Error::FromSqlConversionFailure(..)) => {
                StoreError::Corrupt(e.to_string())
            }
            Error::Db(e) => StoreError::Backend(e.to_string()),
            Error::Domain(e) => e,
        }
    }
}

fn fail<T>(e: StoreError) -> Result<T, Error> {
    Err(Error::Domain(e))
}

/// A stored status or source as its type; a value no certmq writes is a
/// conversion error (reported as corrupt data, not a panic).
fn typed<T>(
    idx: usize,
    parse: fn(&str) -> Option<T>,
) -> impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T> {
    move |r| {
        let s: String = r.get(idx)?;
        parse(&s).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                idx,
                rusqlite::types::Type::Text,
                format!("unknown value {s:?}").into(),
            )
        })
    }
}

/// Each entry moves the schema one version up; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: server certificates, settings, audit log.
    "CREATE TABLE server_certificates (
        id TEXT PRIMARY KEY,
        name TEXT,
        chain_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        before TEXT,
        after TEXT
    );",
    // 2: CA and device certificates.
    "CREATE TABLE ca_certificates (
        id TEXT PRIMARY KEY,
        serial TEXT NOT NULL,
        subject_cn TEXT,
        issuer_cn TEXT,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        status TEXT NOT NULL,
        pem TEXT NOT NULL,
        verification_pem TEXT NOT NULL,
        provisioning TEXT NOT NULL,
        automatic_activation INTEGER NOT NULL,
        registered_at INTEGER NOT NULL,
        last_activated_at INTEGER,
        last_deactivated_at INTEGER
    );
    CREATE TABLE device_certificates (
        id TEXT PRIMARY KEY,
        ca_id TEXT NOT NULL REFERENCES ca_certificates(id) ON DELETE CASCADE,
        serial TEXT NOT NULL,
        subject_cn TEXT,
        subject_ou TEXT,
        client_id TEXT,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        pem TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_connected_at INTEGER
    );
    CREATE INDEX device_by_ca ON device_certificates(ca_id, status);
    CREATE INDEX device_by_client_id ON device_certificates(client_id);",
    // 3: identity by what the CA signed; revocations outlive records and CAs.
    "ALTER TABLE device_certificates ADD COLUMN signed_id TEXT;
    ALTER TABLE device_certificates ADD COLUMN issuer_key TEXT;
    CREATE INDEX device_by_signed_id ON device_certificates(signed_id);
    CREATE INDEX device_by_serial ON device_certificates(ca_id, serial);
    CREATE TABLE revoked_certificates (
        signed_id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        issuer_key TEXT NOT NULL,
        serial TEXT NOT NULL,
        ca_id TEXT NOT NULL,
        revoked_at INTEGER NOT NULL
    );
    CREATE INDEX revoked_by_serial ON revoked_certificates(issuer_key, serial);",
    // 4: MQTT users (argon2id hashes) and authorization policies.
    "CREATE TABLE mqtt_users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE policies (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        document TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // 5: web-console users.
    "CREATE TABLE console_users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
    // 6: intermediates of device certificates, CRLs and where to fetch them.
    "ALTER TABLE device_certificates ADD COLUMN chain_pem TEXT;
    ALTER TABLE ca_certificates ADD COLUMN crl_url TEXT;
    CREATE TABLE crls (
        ca_id TEXT PRIMARY KEY REFERENCES ca_certificates(id) ON DELETE CASCADE,
        der BLOB NOT NULL,
        this_update INTEGER NOT NULL,
        next_update INTEGER,
        revoked_count INTEGER NOT NULL,
        number TEXT,
        source TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );",
];

const CA_COLS: &str = "id, serial, subject_cn, issuer_cn, not_before, not_after, status, pem, verification_pem, provisioning, automatic_activation, registered_at, last_activated_at, last_deactivated_at, crl_url";
const DEVICE_COLS: &str = "id, ca_id, serial, subject_cn, subject_ou, client_id, not_before, not_after, status, source, pem, created_at, updated_at, last_connected_at, signed_id, issuer_key, chain_pem";
const DEVICE_VALUES: &str =
    "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17";

fn ca_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CaRecord> {
    Ok(CaRecord {
        id: r.get(0)?,
        serial: r.get(1)?,
        subject_cn: r.get(2)?,
        issuer_cn: r.get(3)?,
        not_before: r.get(4)?,
        not_after: r.get(5)?,
        status: typed(6, CaStatus::parse)(r)?,
        pem: r.get(7)?,
        verification_pem: r.get(8)?,
        provisioning: typed(9, Provisioning::parse)(r)?,
        automatic_activation: r.get(10)?,
        registered_at: r.get(11)?,
        last_activated_at: r.get(12)?,
        last_deactivated_at: r.get(13)?,
        crl_url: r.get(14)?,
    })
}

const CRL_COLS: &str =
    "ca_id, der, this_update, next_update, revoked_count, number, source, updated_at";

fn crl_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CrlRecord> {
    Ok(CrlRecord {
        ca_id: r.get(0)?,
        der: r.get(1)?,
        this_update: r.get(2)?,
        next_update: r.get(3)?,
        revoked_count: r.get::<_, i64>(4)?.max(0) as u64,
        number: r.get(5)?,
        source: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: r.get(0)?,
        ca_id: r.get(1)?,
        serial: r.get(2)?,
        subject_cn: r.get(3)?,
        subject_ou: r.get(4)?,
        client_id: r.get(5)?,
        not_before: r.get(6)?,
        not_after: r.get(7)?,
        status: typed(8, DeviceStatus::parse)(r)?,
        source: typed(9, Provisioning::parse)(r)?,
        pem: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        last_connected_at: r.get(13)?,
        signed_id: r.get::<_, Option<String>>(14)?.unwrap_or_default(),
        issuer_key: r.get::<_, Option<String>>(15)?.unwrap_or_default(),
        chain_pem: r.get::<_, Option<String>>(16)?.unwrap_or_default(),
    })
}

fn device_params(rec: &DeviceRecord) -> rusqlite::ParamsFromIter<[rusqlite::types::Value; 17]> {
    use rusqlite::types::Value;
    let text = |s: &Option<String>| s.clone().map_or(Value::Null, Value::Text);
    rusqlite::params_from_iter([
        Value::Text(rec.id.clone()),
        Value::Text(rec.ca_id.clone()),
        Value::Text(rec.serial.clone()),
        text(&rec.subject_cn),
        text(&rec.subject_ou),
        text(&rec.client_id),
        Value::Integer(rec.not_before),
        Value::Integer(rec.not_after),
        Value::Text(rec.status.as_str().into()),
        Value::Text(rec.source.as_str().into()),
        Value::Text(rec.pem.clone()),
        Value::Integer(rec.created_at),
        Value::Integer(rec.updated_at),
        rec.last_connected_at.map_or(Value::Null, Value::Integer),
        Value::Text(rec.signed_id.clone()),
        Value::Text(rec.issuer_key.clone()),
        if rec.chain_pem.is_empty() {
            Value::Null
        } else {
            Value::Text(rec.chain_pem.clone())
        },
    ])
}

fn audit_insert(tx: &Transaction<'_>, audit: &AuditEntry) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO audit_log (at, actor, action, target, before, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            now(),
            audit.actor,
            audit.action,
            audit.target,
            audit.before.as_ref().map(|v| v.to_string()),
            audit.after.as_ref().map(|v| v.to_string()),
        ],
    )?;
    Ok(())
}

fn revoke_in(tx: &Transaction<'_>, rec: &DeviceRecord, at: i64) -> Result<(), Error> {
    tx.execute(
        "INSERT OR IGNORE INTO revoked_certificates (signed_id, fingerprint, issuer_key, serial, ca_id, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![rec.signed_id, rec.id, rec.issuer_key, rec.serial, rec.ca_id, at],
    )?;
    Ok(())
}

/// The store: SQLite behind [`Store`].
pub struct SqliteStore(Db);

/// The connection and the operations on it, returning this module's error.
struct Db {
    conn: Mutex<Connection>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating) `<dir>/certmq.db`, mode 0600, and migrates it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("certmq.db");
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let conn = Connection::open(&path).map_err(|e| open_err(e.to_string()))?;
        // The file holds private keys.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| open_err(e.to_string()))?;
        let setup = |conn: &Connection| -> rusqlite::Result<()> {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
        };
        setup(&conn).map_err(|e| open_err(e.to_string()))?;
        let db = Db {
            conn: Mutex::new(conn),
        };
        db.migrate()?;
        Ok(SqliteStore(db))
    }
}

impl Db {
    fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.conn.lock();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return fail(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    fn write<T>(
        &self,
        audit: &AuditEntry,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        audit_insert(&tx, audit)?;
        tx.commit()?;
        Ok(out)
    }
}

impl Db {
    fn server_certs(&self) -> Result<Vec<ServerCertRecord>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, name, chain_pem, key_pem, created_at FROM server_certificates ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ServerCertRecord {
                id: r.get(0)?,
                name: r.get(1)?,
                chain_pem: r.get(2)?,
                key_pem: r.get(3)?,
                created_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_server_cert(&self, rec: &ServerCertRecord, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let exists: Option<String> = tx
                .query_row(
                    "SELECT id FROM server_certificates WHERE id = ?1",
                    [&rec.id],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_some() {
                return fail(StoreError::Exists(format!("server certificate {}", rec.id)));
            }
            tx.execute(
                "INSERT INTO server_certificates (id, name, chain_pem, key_pem, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![rec.id, rec.name, rec.chain_pem, rec.key_pem, rec.created_at],
            )?;
            Ok(())
        })
    }

    fn delete_server_cert(&self, id: &str, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let n = tx.execute("DELETE FROM server_certificates WHERE id = ?1", [id])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("server certificate {id}")));
            }
            Ok(())
        })
    }

    fn default_cert_enabled(&self) -> Result<bool, Error> {
        let conn = self.conn.lock();
        let v: Option<String> = conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'default_server_cert_enabled'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.as_deref() != Some("false"))
    }

    fn set_default_cert_enabled(&self, enabled: bool, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('default_server_cert_enabled', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [if enabled { "true" } else { "false" }],
            )?;
            Ok(())
        })
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at, actor, action, target, before, after FROM audit_log ORDER BY seq DESC LIMIT ?1",
        )?;
        let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(AuditRecord {
                seq: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                before: parse(r.get(5)?),
                after: parse(r.get(6)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn registration_code(&self) -> Result<Option<(String, i64)>, Error> {
        let conn = self.conn.lock();
        let v: Option<String> = conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'registration_code'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.and_then(|v| {
            let (code, exp) = v.split_once(' ')?;
            Some((code.to_string(), exp.parse().ok()?))
        }))
    }

    fn set_registration_code(
        &self,
        code: &str,
        expires_at: i64,
        audit: &AuditEntry,
    ) -> Result<(), Error> {
        self.write(audit, |tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('registration_code', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [format!("{code} {expires_at}")],
            )?;
            Ok(())
        })
    }

    fn cas(&self) -> Result<Vec<CaRecord>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CA_COLS} FROM ca_certificates ORDER BY registered_at, rowid"
        ))?;
        let rows = stmt.query_map([], ca_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_ca(
        &self,
        rec: &CaRecord,
        code: &str,
        max_cas: usize,
        audit: &AuditEntry,
    ) -> Result<(), Error> {
        self.write(audit, |tx| {
            let current: Option<String> = tx
                .query_row("SELECT value FROM settings WHERE key = 'registration_code'", [], |r| r.get(0))
                .optional()?;
            if current.as_deref().and_then(|v| v.split(' ').next()) != Some(code) {
                return fail(StoreError::Conflict(
                    "the registration code was used or replaced meanwhile; request a new one".into(),
                ));
            }
            let exists: Option<String> = tx
                .query_row("SELECT id FROM ca_certificates WHERE id = ?1", [&rec.id], |r| r.get(0))
                .optional()?;
            if exists.is_some() {
                return fail(StoreError::Exists(format!("CA certificate {}", rec.id)));
            }
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM ca_certificates", [], |r| r.get(0))?;
            if count as usize >= max_cas {
                return fail(StoreError::Limit(format!(
                    "{count} CA certificates are registered, the most allowed; delete one first"
                )));
            }
            tx.execute(
                &format!("INSERT INTO ca_certificates ({CA_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
                params![
                    rec.id, rec.serial, rec.subject_cn, rec.issuer_cn, rec.not_before, rec.not_after,
                    rec.status.as_str(), rec.pem, rec.verification_pem, rec.provisioning.as_str(), rec.automatic_activation,
                    rec.registered_at, rec.last_activated_at, rec.last_deactivated_at, rec.crl_url
                ],
            )?;
            // Single use: the code that proved possession is spent.
            tx.execute("DELETE FROM settings WHERE key = 'registration_code'", [])?;
            Ok(())
        })
    }

    fn update_ca(&self, rec: &CaRecord, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let n = tx.execute(
                "UPDATE ca_certificates SET status = ?2, provisioning = ?3, automatic_activation = ?4,
                 last_activated_at = ?5, last_deactivated_at = ?6, crl_url = ?7 WHERE id = ?1",
                params![
                    rec.id, rec.status.as_str(), rec.provisioning.as_str(), rec.automatic_activation,
                    rec.last_activated_at, rec.last_deactivated_at, rec.crl_url
                ],
            )?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("CA certificate {}", rec.id)));
            }
            Ok(())
        })
    }

    fn delete_ca(&self, id: &str, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            tx.execute("DELETE FROM device_certificates WHERE ca_id = ?1", [id])?;
            tx.execute("DELETE FROM crls WHERE ca_id = ?1", [id])?;
            let n = tx.execute("DELETE FROM ca_certificates WHERE id = ?1", [id])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("CA certificate {id}")));
            }
            Ok(())
        })
    }

    fn device_counts(&self, ca_id: &str) -> Result<Vec<(DeviceStatus, u64)>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT status, COUNT(*) FROM device_certificates WHERE ca_id = ?1 GROUP BY status",
        )?;
        let rows = stmt.query_map([ca_id], |r| {
            Ok((
                typed(0, DeviceStatus::parse)(r)?,
                r.get::<_, i64>(1)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn devices(&self, f: &DeviceFilter) -> Result<(Vec<DeviceRecord>, u64), Error> {
        let mut clauses: Vec<&str> = Vec::new();
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut text = |clause: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                clauses.push(clause);
                args.push(v.clone().into());
            }
        };
        text("ca_id = ?", &f.ca_id);
        text("client_id = ?", &f.client_id);
        text("subject_cn = ?", &f.subject_cn);
        text("subject_ou = ?", &f.subject_ou);
        text("serial = ?", &f.serial);
        text("status = ?", &f.status.map(|s| s.as_str().to_string()));
        if let Some(t) = f.expires_after {
            clauses.push("not_after >= ?");
            args.push(t.into());
        }
        if let Some(t) = f.expires_before {
            clauses.push("not_after < ?");
            args.push(t.into());
        }
        let where_ = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let conn = self.conn.lock();
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM device_certificates {where_}"),
            rusqlite::params_from_iter(args.iter()),
            |r| r.get(0),
        )?;
        let mut page_args = args.clone();
        // Beyond i64::MAX is past every row (never a wrap to the first page).
        page_args.push(i64::try_from(f.limit).unwrap_or(i64::MAX).into());
        page_args.push(i64::try_from(f.offset).unwrap_or(i64::MAX).into());
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEVICE_COLS} FROM device_certificates {where_} ORDER BY created_at, rowid LIMIT ? OFFSET ?"
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(page_args.iter()), device_row)?;
        Ok((rows.collect::<Result<_, _>>()?, total as u64))
    }

    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, Error> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("SELECT {DEVICE_COLS} FROM device_certificates WHERE id = ?1"),
                [id],
                device_row,
            )
            .optional()?)
    }

    fn insert_device(&self, rec: &DeviceRecord, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let exists: Option<String> = tx
                .query_row(
                    "SELECT id FROM device_certificates WHERE id = ?1 OR signed_id = ?2",
                    [&rec.id, &rec.signed_id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = exists {
                return fail(StoreError::Exists(format!("device certificate {id}")));
            }
            let revoked: Option<String> = tx
                .query_row(
                    "SELECT fingerprint FROM revoked_certificates WHERE signed_id = ?1 OR (issuer_key = ?2 AND serial = ?3)",
                    [&rec.signed_id, &rec.issuer_key, &rec.serial],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = revoked {
                return fail(StoreError::Revoked(format!(
                    "this certificate (serial {}) was revoked as {id}; REVOKED is final",
                    rec.serial
                )));
            }
            let same_serial: Option<String> = tx
                .query_row(
                    "SELECT id FROM device_certificates WHERE ca_id = ?1 AND serial = ?2",
                    [&rec.ca_id, &rec.serial],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = same_serial {
                return fail(StoreError::SerialInUse(format!(
                    "the CA already has device certificate {id} with serial {}",
                    rec.serial
                )));
            }
            tx.execute(
                &format!("INSERT INTO device_certificates ({DEVICE_COLS}) VALUES ({DEVICE_VALUES})"),
                device_params(rec),
            )?;
            Ok(())
        })
    }

    fn import_devices(&self, recs: &[DeviceRecord], audit: &AuditEntry) -> Result<usize, Error> {
        self.write(audit, |tx| {
            let mut stmt = tx.prepare(&format!(
                "INSERT OR IGNORE INTO device_certificates ({DEVICE_COLS}) VALUES ({DEVICE_VALUES})"
            ))?;
            let mut n = 0;
            for rec in recs {
                n += stmt.execute(device_params(rec))?;
            }
            Ok(n)
        })
    }

    fn transition_device(
        &self,
        id: &str,
        status: DeviceStatus,
        at: i64,
        actor: &str,
        action: &str,
    ) -> Result<(DeviceRecord, DeviceRecord), Error> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let before = tx
            .query_row(
                &format!("SELECT {DEVICE_COLS} FROM device_certificates WHERE id = ?1"),
                [id],
                device_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("device certificate {id}")))?;
        if before.status == DeviceStatus::Revoked {
            return fail(StoreError::Revoked(
                "a REVOKED certificate stays revoked; register a new one".into(),
            ));
        }
        // Conditional on what was read, in the same transaction.
        let n = tx.execute(
            "UPDATE device_certificates SET status = ?2, updated_at = ?3 WHERE id = ?1 AND status = ?4",
            params![id, status.as_str(), at, before.status.as_str()],
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
            revoke_in(&tx, &after, at)?;
        }
        audit_insert(
            &tx,
            &AuditEntry {
                actor: actor.into(),
                action: action.into(),
                target: id.into(),
                before: Some(serde_json::json!({"status": before.status.as_str()})),
                after: Some(serde_json::json!({"status": after.status.as_str()})),
            },
        )?;
        tx.commit()?;
        Ok((before, after))
    }

    fn revoked(&self) -> Result<Vec<RevokedRecord>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT signed_id, fingerprint, issuer_key, serial, ca_id, revoked_at FROM revoked_certificates",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RevokedRecord {
                signed_id: r.get(0)?,
                fingerprint: r.get(1)?,
                issuer_key: r.get(2)?,
                serial: r.get(3)?,
                ca_id: r.get(4)?,
                revoked_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn backfill_identity(
        &self,
        identity: &dyn Fn(&DeviceRecord) -> Option<(String, String)>,
    ) -> Result<usize, Error> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let rows: Vec<DeviceRecord> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {DEVICE_COLS} FROM device_certificates WHERE signed_id IS NULL OR issuer_key IS NULL"
            ))?;
            let rows = stmt.query_map([], device_row)?;
            rows.collect::<Result<_, _>>()?
        };
        let mut n = 0;
        for mut rec in rows {
            let Some((signed_id, issuer_key)) = identity(&rec) else {
                continue;
            };
            tx.execute(
                "UPDATE device_certificates SET signed_id = ?2, issuer_key = ?3 WHERE id = ?1",
                params![rec.id, signed_id, issuer_key],
            )?;
            rec.signed_id = signed_id;
            rec.issuer_key = issuer_key;
            if rec.status == DeviceStatus::Revoked {
                revoke_in(&tx, &rec, rec.updated_at)?;
            }
            n += 1;
        }
        tx.commit()?;
        Ok(n)
    }

    fn delete_device(&self, id: &str, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let n = tx.execute("DELETE FROM device_certificates WHERE id = ?1", [id])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("device certificate {id}")));
            }
            Ok(())
        })
    }

    fn all_devices(&self) -> Result<Vec<DeviceRecord>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, ca_id, serial, subject_cn, subject_ou, client_id, not_before, not_after, status, source, '' AS pem, created_at, updated_at, last_connected_at, signed_id, issuer_key, chain_pem FROM device_certificates",
        )?;
        let rows = stmt.query_map([], device_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn crls(&self) -> Result<Vec<CrlRecord>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!("SELECT {CRL_COLS} FROM crls"))?;
        let rows = stmt.query_map([], crl_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn crl(&self, ca_id: &str) -> Result<Option<CrlRecord>, Error> {
        Ok(self
            .conn
            .lock()
            .query_row(
                &format!("SELECT {CRL_COLS} FROM crls WHERE ca_id = ?1"),
                [ca_id],
                crl_row,
            )
            .optional()?)
    }

    fn put_crl(&self, rec: &CrlRecord, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let ca: Option<String> = tx
                .query_row("SELECT id FROM ca_certificates WHERE id = ?1", [&rec.ca_id], |r| r.get(0))
                .optional()?;
            if ca.is_none() {
                return fail(StoreError::NotFound(format!("CA certificate {}", rec.ca_id)));
            }
            tx.execute(
                "INSERT OR REPLACE INTO crls (ca_id, der, this_update, next_update, revoked_count, number, source, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    rec.ca_id, rec.der, rec.this_update, rec.next_update,
                    i64::try_from(rec.revoked_count).unwrap_or(i64::MAX), rec.number, rec.source, rec.updated_at
                ],
            )?;
            Ok(())
        })
    }
}

/// The trait, over the inherent methods above (their errors mapped).
impl Store for SqliteStore {
    fn backfill_identity(
        &self,
        identity: &dyn Fn(&DeviceRecord) -> Option<(String, String)>,
    ) -> Result<usize, StoreError> {
        Ok(self.0.backfill_identity(identity)?)
    }
    fn server_certs(&self) -> Result<Vec<ServerCertRecord>, StoreError> {
        Ok(self.0.server_certs()?)
    }
    fn insert_server_cert(
        &self,
        rec: &ServerCertRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        Ok(self.0.insert_server_cert(rec, audit)?)
    }
    fn delete_server_cert(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.delete_server_cert(id, audit)?)
    }
    fn default_cert_enabled(&self) -> Result<bool, StoreError> {
        Ok(self.0.default_cert_enabled()?)
    }
    fn set_default_cert_enabled(
        &self,
        enabled: bool,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        Ok(self.0.set_default_cert_enabled(enabled, audit)?)
    }
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self.0.audit_log(limit)?)
    }
    fn registration_code(&self) -> Result<Option<(String, i64)>, StoreError> {
        Ok(self.0.registration_code()?)
    }
    fn set_registration_code(
        &self,
        code: &str,
        expires_at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        Ok(self.0.set_registration_code(code, expires_at, audit)?)
    }
    fn cas(&self) -> Result<Vec<CaRecord>, StoreError> {
        Ok(self.0.cas()?)
    }
    fn insert_ca(
        &self,
        rec: &CaRecord,
        code: &str,
        max_cas: usize,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        Ok(self.0.insert_ca(rec, code, max_cas, audit)?)
    }
    fn update_ca(&self, rec: &CaRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.update_ca(rec, audit)?)
    }
    fn delete_ca(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.delete_ca(id, audit)?)
    }
    fn device_counts(&self, ca_id: &str) -> Result<Vec<(DeviceStatus, u64)>, StoreError> {
        Ok(self.0.device_counts(ca_id)?)
    }
    fn devices(&self, f: &DeviceFilter) -> Result<(Vec<DeviceRecord>, u64), StoreError> {
        Ok(self.0.devices(f)?)
    }
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.0.device(id)?)
    }
    fn insert_device(&self, rec: &DeviceRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.insert_device(rec, audit)?)
    }
    fn import_devices(
        &self,
        recs: &[DeviceRecord],
        audit: &AuditEntry,
    ) -> Result<usize, StoreError> {
        Ok(self.0.import_devices(recs, audit)?)
    }
    fn transition_device(
        &self,
        id: &str,
        status: DeviceStatus,
        at: i64,
        actor: &str,
        action: &str,
    ) -> Result<(DeviceRecord, DeviceRecord), StoreError> {
        Ok(self.0.transition_device(id, status, at, actor, action)?)
    }
    fn revoked(&self) -> Result<Vec<RevokedRecord>, StoreError> {
        Ok(self.0.revoked()?)
    }
    fn delete_device(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.delete_device(id, audit)?)
    }
    fn all_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self.0.all_devices()?)
    }
    fn crls(&self) -> Result<Vec<CrlRecord>, StoreError> {
        Ok(self.0.crls()?)
    }
    fn crl(&self, ca_id: &str) -> Result<Option<CrlRecord>, StoreError> {
        Ok(self.0.crl(ca_id)?)
    }
    fn put_crl(&self, rec: &CrlRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.put_crl(rec, audit)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn audit(action: &str) -> AuditEntry {
        AuditEntry {
            actor: "test".into(),
            action: action.into(),
            target: "x".into(),
            before: None,
            after: Some(serde_json::json!({"k": 1})),
        }
    }

    #[test]
    fn a_registration_code_is_spent_once_and_the_ca_limit_holds() {
        let dir = std::env::temp_dir().join(format!("certmq-store-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = SqliteStore::open(&dir).unwrap();
        let ca = |id: &str| CaRecord {
            id: id.into(),
            serial: "1".into(),
            subject_cn: None,
            issuer_cn: None,
            not_before: 0,
            not_after: 1,
            status: CaStatus::Active,
            pem: String::new(),
            verification_pem: String::new(),
            provisioning: Provisioning::Jitp,
            automatic_activation: true,
            registered_at: 0,
            last_activated_at: None,
            last_deactivated_at: None,
            crl_url: None,
        };
        s.set_registration_code("c1", i64::MAX, &audit("code"))
            .unwrap();
        assert!(matches!(
            s.insert_ca(&ca("a"), "other", 2, &audit("r")),
            Err(StoreError::Conflict(_))
        ));
        s.insert_ca(&ca("a"), "c1", 2, &audit("r")).unwrap();
        assert!(
            matches!(
                s.insert_ca(&ca("b"), "c1", 2, &audit("r")),
                Err(StoreError::Conflict(_))
            ),
            "spent"
        );
        s.set_registration_code("c2", i64::MAX, &audit("code"))
            .unwrap();
        assert!(matches!(
            s.insert_ca(&ca("b"), "c2", 1, &audit("r")),
            Err(StoreError::Limit(_))
        ));
        assert_eq!(s.cas().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn changes_survive_reopen_and_are_audited() {
        let dir = std::env::temp_dir().join(format!("certmq-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = SqliteStore::open(&dir).unwrap();
            assert!(s.default_cert_enabled().unwrap());
            let rec = ServerCertRecord {
                id: "abc".into(),
                name: Some("n".into()),
                chain_pem: "chain".into(),
                key_pem: "secret".into(),
                created_at: 1,
            };
            s.insert_server_cert(&rec, &audit("bind")).unwrap();
            assert!(matches!(
                s.insert_server_cert(&rec, &audit("bind")),
                Err(StoreError::Exists(_))
            ));
            s.set_default_cert_enabled(false, &audit("disable"))
                .unwrap();
        }
        let s = SqliteStore::open(&dir).unwrap();
        assert_eq!(s.server_certs().unwrap().len(), 1);
        assert!(!s.default_cert_enabled().unwrap());
        let log = s.audit_log(10).unwrap();
        // The refused duplicate left no record.
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].action, "disable");
        assert!(!format!("{log:?}").contains("secret"));
        let mode = std::fs::metadata(dir.join("certmq.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        s.delete_server_cert("abc", &audit("unbind")).unwrap();
        assert!(matches!(
            s.delete_server_cert("abc", &audit("unbind")),
            Err(StoreError::NotFound(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
