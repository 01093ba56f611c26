//! The storage the access plane needs; `certmq-store` implements it
//! (SQLite now, PostgreSQL next). Every write carries its audit entry and
//! commits with it.

use certmq_registry::store::{AuditEntry, StoreError};

/// An MQTT user as stored. `password_hash` is an argon2id PHC string:
/// never logged, never returned by the API.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub username: String,
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("username", &self.username)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A policy as stored: its document (the API's JSON) and its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    pub id: String,
    /// Creation order: ties of priority are decided by it.
    pub seq: i64,
    pub document: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A web-console user (SPEC 12): `role` is `administrator` or `viewer`;
/// `password_hash` an argon2id PHC string, never returned.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleUserRecord {
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub created_at: i64,
}

impl std::fmt::Debug for ConsoleUserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleUserRecord")
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

pub trait AccessStore: Send + Sync + 'static {
    fn users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// `Exists` when the user name is taken.
    fn insert_user(&self, rec: &UserRecord, audit: &AuditEntry) -> Result<(), StoreError>;
    /// `NotFound` when there is no such user.
    fn update_user(&self, rec: &UserRecord, audit: &AuditEntry) -> Result<(), StoreError>;
    fn delete_user(&self, username: &str, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Every policy, in creation order.
    fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError>;
    /// Adds a policy (its `seq` is assigned by the store and returned);
    /// `Exists` when the id is taken.
    fn insert_policy(&self, rec: &PolicyRecord, audit: &AuditEntry) -> Result<i64, StoreError>;
    fn update_policy(&self, rec: &PolicyRecord, audit: &AuditEntry) -> Result<(), StoreError>;
    fn delete_policy(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError>;
    fn console_users(&self) -> Result<Vec<ConsoleUserRecord>, StoreError>;
    /// Adds or replaces (same user name) a console user.
    fn put_console_user(
        &self,
        rec: &ConsoleUserRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    fn delete_console_user(&self, username: &str, audit: &AuditEntry) -> Result<(), StoreError>;
}
