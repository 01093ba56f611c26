//! SQLite behind [`Store`]: one connection under a mutex (writes are rare
//! and small), WAL, full synchronous commits, migrations by `user_version`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::{AuditEntry, AuditRecord, ServerCertRecord, Store, StoreError};

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
];

pub struct SqliteStore {
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
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
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
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
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
        tx.commit()?;
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn server_certs(&self) -> Result<Vec<ServerCertRecord>, StoreError> {
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

    fn insert_server_cert(
        &self,
        rec: &ServerCertRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.write(audit, |tx| {
            let exists: Option<String> = tx
                .query_row(
                    "SELECT id FROM server_certificates WHERE id = ?1",
                    [&rec.id],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_some() {
                return Err(StoreError::Exists(format!("server certificate {}", rec.id)));
            }
            tx.execute(
                "INSERT INTO server_certificates (id, name, chain_pem, key_pem, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![rec.id, rec.name, rec.chain_pem, rec.key_pem, rec.created_at],
            )?;
            Ok(())
        })
    }

    fn delete_server_cert(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        self.write(audit, |tx| {
            let n = tx.execute("DELETE FROM server_certificates WHERE id = ?1", [id])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("server certificate {id}")));
            }
            Ok(())
        })
    }

    fn default_cert_enabled(&self) -> Result<bool, StoreError> {
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

    fn set_default_cert_enabled(
        &self,
        enabled: bool,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.write(audit, |tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('default_server_cert_enabled', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [if enabled { "true" } else { "false" }],
            )?;
            Ok(())
        })
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at, actor, action, target, before, after FROM audit_log ORDER BY seq DESC LIMIT ?1",
        )?;
        let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        let rows = stmt.query_map([limit as i64], |r| {
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
