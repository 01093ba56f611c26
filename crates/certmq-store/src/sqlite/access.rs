//! Users and policies (`certmq-access`) in the registry's database, each
//! write in one transaction with its audit record.

use certmq_access::store::{AccessStore, ConsoleUserRecord, PolicyRecord, UserRecord};
use certmq_registry::store::{AuditEntry, StoreError};
use rusqlite::params;

use super::{fail, Db, Error, SqliteStore};

impl Db {
    fn users(&self) -> Result<Vec<UserRecord>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT username, password_hash, created_at, updated_at FROM mqtt_users ORDER BY username",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(UserRecord {
                username: r.get(0)?,
                password_hash: r.get(1)?,
                created_at: r.get(2)?,
                updated_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_user(&self, rec: &UserRecord, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let n = tx.execute(
                "INSERT INTO mqtt_users (username, password_hash, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT(username) DO NOTHING",
                params![
                    rec.username,
                    rec.password_hash,
                    rec.created_at,
                    rec.updated_at
                ],
            )?;
            if n == 0 {
                return fail(StoreError::Exists(format!("user {}", rec.username)));
            }
            Ok(())
        })
    }

    fn update_user(&self, rec: &UserRecord, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let n = tx.execute(
                "UPDATE mqtt_users SET password_hash = ?2, updated_at = ?3 WHERE username = ?1",
                params![rec.username, rec.password_hash, rec.updated_at],
            )?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("user {}", rec.username)));
            }
            Ok(())
        })
    }

    fn delete_user(&self, username: &str, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let n = tx.execute("DELETE FROM mqtt_users WHERE username = ?1", [username])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("user {username}")));
            }
            Ok(())
        })
    }

    fn policies(&self) -> Result<Vec<PolicyRecord>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, seq, document, created_at, updated_at FROM policies ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PolicyRecord {
                id: r.get(0)?,
                seq: r.get(1)?,
                document: r.get(2)?,
                created_at: r.get(3)?,
                updated_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_policy(&self, rec: &PolicyRecord, audit: &AuditEntry) -> Result<i64, Error> {
        self.write(audit, |tx| {
            let n = tx.execute(
                "INSERT INTO policies (id, document, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO NOTHING",
                params![rec.id, rec.document, rec.created_at, rec.updated_at],
            )?;
            if n == 0 {
                return fail(StoreError::Exists(format!("policy {}", rec.id)));
            }
            Ok(tx.last_insert_rowid())
        })
    }

    fn update_policy(&self, rec: &PolicyRecord, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let n = tx.execute(
                "UPDATE policies SET document = ?2, updated_at = ?3 WHERE id = ?1",
                params![rec.id, rec.document, rec.updated_at],
            )?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("policy {}", rec.id)));
            }
            Ok(())
        })
    }

    fn delete_policy(&self, id: &str, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let n = tx.execute("DELETE FROM policies WHERE id = ?1", [id])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("policy {id}")));
            }
            Ok(())
        })
    }
}

impl Db {
    fn console_users(&self) -> Result<Vec<ConsoleUserRecord>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT username, password_hash, role, created_at FROM console_users ORDER BY username",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ConsoleUserRecord {
                username: r.get(0)?,
                password_hash: r.get(1)?,
                role: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_console_user(&self, rec: &ConsoleUserRecord, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            tx.execute(
                "INSERT INTO console_users (username, password_hash, role, created_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(username) DO UPDATE SET password_hash = excluded.password_hash,
                 role = excluded.role",
                params![rec.username, rec.password_hash, rec.role, rec.created_at],
            )?;
            Ok(())
        })
    }

    fn delete_console_user(&self, username: &str, audit: &AuditEntry) -> Result<(), Error> {
        self.write(audit, |tx| {
            let n = tx.execute("DELETE FROM console_users WHERE username = ?1", [username])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("console user {username}")));
            }
            Ok(())
        })
    }
}

impl AccessStore for SqliteStore {
    fn console_users(&self) -> Result<Vec<ConsoleUserRecord>, StoreError> {
        Ok(self.0.console_users()?)
    }
    fn put_console_user(
        &self,
        rec: &ConsoleUserRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        Ok(self.0.put_console_user(rec, audit)?)
    }
    fn delete_console_user(&self, username: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.delete_console_user(username, audit)?)
    }
    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        Ok(self.0.users()?)
    }
    fn insert_user(&self, rec: &UserRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.insert_user(rec, audit)?)
    }
    fn update_user(&self, rec: &UserRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.update_user(rec, audit)?)
    }
    fn delete_user(&self, username: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.delete_user(username, audit)?)
    }
    fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        Ok(self.0.policies()?)
    }
    fn insert_policy(&self, rec: &PolicyRecord, audit: &AuditEntry) -> Result<i64, StoreError> {
        Ok(self.0.insert_policy(rec, audit)?)
    }
    fn update_policy(&self, rec: &PolicyRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.update_policy(rec, audit)?)
    }
    fn delete_policy(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.0.delete_policy(id, audit)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use certmq_registry::store::Store;

    fn audit(action: &str) -> AuditEntry {
        AuditEntry {
            actor: "test".into(),
            action: action.into(),
            target: "t".into(),
            before: None,
            after: None,
        }
    }

    #[test]
    fn users_and_policies_survive_reopen_and_are_audited() {
        let dir = std::env::temp_dir().join(format!("certmq-store-access-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let user = UserRecord {
            username: "alice".into(),
            password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA".into(),
            created_at: 1,
            updated_at: 1,
        };
        let policy = |id: &str| PolicyRecord {
            id: id.into(),
            seq: 0,
            document: "{}".into(),
            created_at: 1,
            updated_at: 1,
        };
        {
            let s = SqliteStore::open(&dir).unwrap();
            s.insert_user(&user, &audit("user.add")).unwrap();
            assert!(matches!(
                s.insert_user(&user, &audit("user.add")),
                Err(StoreError::Exists(_))
            ));
            let a = s.insert_policy(&policy("a"), &audit("policy.add")).unwrap();
            let b = s.insert_policy(&policy("b"), &audit("policy.add")).unwrap();
            assert!(b > a);
            assert!(matches!(
                s.insert_policy(&policy("a"), &audit("policy.add")),
                Err(StoreError::Exists(_))
            ));
            s.delete_policy("a", &audit("policy.delete")).unwrap();
            assert!(matches!(
                s.delete_user("bob", &audit("user.delete")),
                Err(StoreError::NotFound(_))
            ));
        }
        let s = SqliteStore::open(&dir).unwrap();
        assert_eq!(s.users().unwrap(), vec![user]);
        let ids: Vec<String> = s.policies().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["b"]);
        let actions: Vec<String> = s
            .audit_log(10)
            .unwrap()
            .into_iter()
            .map(|r| r.action)
            .collect();
        assert_eq!(
            actions,
            ["policy.delete", "policy.add", "policy.add", "user.add"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
