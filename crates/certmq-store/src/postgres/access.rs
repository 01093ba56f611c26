//! The access plane's tables in PostgreSQL.

use certmq_access::store::{AccessStore, ConsoleUserRecord, PolicyRecord, UserRecord};
use certmq_registry::store::{AuditEntry, StoreError};

use super::{fail, PgStore};

impl AccessStore for PgStore {
    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        Ok(self.read(|c| {
            let rows = c.query(
                "SELECT username, password_hash, created_at, updated_at FROM mqtt_users ORDER BY username",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(UserRecord {
                        username: r.try_get(0)?,
                        password_hash: r.try_get(1)?,
                        created_at: r.try_get(2)?,
                        updated_at: r.try_get(3)?,
                    })
                })
                .collect()
        })?)
    }

    fn insert_user(&self, rec: &UserRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(
            self.write(Some(audit), Some(("user", &rec.username)), |tx| {
                let n = tx.execute(
                    "INSERT INTO mqtt_users (username, password_hash, created_at, updated_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (username) DO NOTHING",
                    &[
                        &rec.username,
                        &rec.password_hash,
                        &rec.created_at,
                        &rec.updated_at,
                    ],
                )?;
                if n == 0 {
                    return fail(StoreError::Exists(format!("user {}", rec.username)));
                }
                Ok(())
            })?,
        )
    }

    fn update_user(&self, rec: &UserRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(
            self.write(Some(audit), Some(("user", &rec.username)), |tx| {
                let n = tx.execute(
                    "UPDATE mqtt_users SET password_hash = $2, updated_at = $3 WHERE username = $1",
                    &[&rec.username, &rec.password_hash, &rec.updated_at],
                )?;
                if n == 0 {
                    return fail(StoreError::NotFound(format!("user {}", rec.username)));
                }
                Ok(())
            })?,
        )
    }

    fn delete_user(&self, username: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.write(Some(audit), Some(("user", username)), |tx| {
            let n = tx.execute("DELETE FROM mqtt_users WHERE username = $1", &[&username])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("user {username}")));
            }
            Ok(())
        })?)
    }

    fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        Ok(self.read(|c| {
            let rows = c.query(
                "SELECT id, seq, document, created_at, updated_at FROM policies ORDER BY seq",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(PolicyRecord {
                        id: r.try_get(0)?,
                        seq: r.try_get(1)?,
                        document: r.try_get(2)?,
                        created_at: r.try_get(3)?,
                        updated_at: r.try_get(4)?,
                    })
                })
                .collect()
        })?)
    }

    fn insert_policy(&self, rec: &PolicyRecord, audit: &AuditEntry) -> Result<i64, StoreError> {
        Ok(self.write(Some(audit), Some(("policy", &rec.id)), |tx| {
            let row = tx.query_opt(
                "INSERT INTO policies (id, document, created_at, updated_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING RETURNING seq",
                &[&rec.id, &rec.document, &rec.created_at, &rec.updated_at],
            )?;
            match row {
                Some(r) => Ok(r.try_get(0)?),
                None => fail(StoreError::Exists(format!("policy {}", rec.id))),
            }
        })?)
    }

    fn update_policy(&self, rec: &PolicyRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.write(Some(audit), Some(("policy", &rec.id)), |tx| {
            let n = tx.execute(
                "UPDATE policies SET document = $2, updated_at = $3 WHERE id = $1",
                &[&rec.id, &rec.document, &rec.updated_at],
            )?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("policy {}", rec.id)));
            }
            Ok(())
        })?)
    }

    fn delete_policy(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.write(Some(audit), Some(("policy", id)), |tx| {
            let n = tx.execute("DELETE FROM policies WHERE id = $1", &[&id])?;
            if n == 0 {
                return fail(StoreError::NotFound(format!("policy {id}")));
            }
            Ok(())
        })?)
    }

    fn console_users(&self) -> Result<Vec<ConsoleUserRecord>, StoreError> {
        Ok(self.read(|c| {
            let rows = c.query(
                "SELECT username, password_hash, role, created_at FROM console_users ORDER BY username",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(ConsoleUserRecord {
                        username: r.try_get(0)?,
                        password_hash: r.try_get(1)?,
                        role: r.try_get(2)?,
                        created_at: r.try_get(3)?,
                    })
                })
                .collect()
        })?)
    }

    fn put_console_user(
        &self,
        rec: &ConsoleUserRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        Ok(
            self.write(Some(audit), Some(("console_user", &rec.username)), |tx| {
                tx.execute(
                    "INSERT INTO console_users (username, password_hash, role, created_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash,
                 role = excluded.role",
                    &[
                        &rec.username,
                        &rec.password_hash,
                        &rec.role,
                        &rec.created_at,
                    ],
                )?;
                Ok(())
            })?,
        )
    }

    fn delete_console_user(&self, username: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        Ok(
            self.write(Some(audit), Some(("console_user", username)), |tx| {
                let n = tx.execute(
                    "DELETE FROM console_users WHERE username = $1",
                    &[&username],
                )?;
                if n == 0 {
                    return fail(StoreError::NotFound(format!("console user {username}")));
                }
                Ok(())
            })?,
        )
    }
}
