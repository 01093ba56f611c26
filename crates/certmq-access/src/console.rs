//! Web-console users (SPEC 12): user names with argon2id passwords and a
//! role, `administrator` (everything) or `viewer` (read only). Logins are
//! checked off the async workers, one hash at a time; an unknown user
//! name costs the same hash as a known one (against a dummy), so timing
//! does not tell which names exist.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use serde::Serialize;

use certmq_registry::store::AuditEntry;

use crate::error::{AccessError, ErrorKind};
use crate::store::{AccessStore, ConsoleUserRecord};
use crate::users::{hash_password, validate_password, validate_username, HashParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Administrator,
    Viewer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "administrator" => Some(Role::Administrator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsoleUserView {
    pub username: String,
    pub role: Role,
    /// Unix seconds.
    pub created_at: i64,
}

pub struct ConsoleUsers {
    store: Arc<dyn AccessStore>,
    snapshot: ArcSwap<HashMap<String, (String, Role, i64)>>,
    params: HashParams,
    gate: tokio::sync::Semaphore,
    /// The hash an unknown user name is checked against (made at the first
    /// such sign-in, not at start-up).
    dummy: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for ConsoleUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleUsers")
            .field("count", &self.snapshot.load().len())
            .finish_non_exhaustive()
    }
}

impl ConsoleUsers {
    pub fn load(store: Arc<dyn AccessStore>, params: HashParams) -> Result<Arc<Self>, AccessError> {
        let users = Arc::new(Self {
            store,
            snapshot: ArcSwap::from_pointee(HashMap::new()),
            params,
            gate: tokio::sync::Semaphore::new(1),
            dummy: std::sync::OnceLock::new(),
        });
        users.reload()?;
        Ok(users)
    }

    /// Reads every console user from the store again.
    pub fn reload(&self) -> Result<(), AccessError> {
        let mut map = HashMap::new();
        for r in self.store.console_users()? {
            let role = Role::parse(&r.role).ok_or_else(|| {
                AccessError::new(
                    ErrorKind::Store,
                    "StorageError",
                    format!("console user {} has an unknown role {}", r.username, r.role),
                )
            })?;
            map.insert(r.username, (r.password_hash, role, r.created_at));
        }
        self.snapshot.store(Arc::new(map));
        Ok(())
    }

    pub fn list(&self) -> Vec<ConsoleUserView> {
        let mut out: Vec<ConsoleUserView> = self
            .snapshot
            .load()
            .iter()
            .map(|(name, (_, role, at))| ConsoleUserView {
                username: name.clone(),
                role: *role,
                created_at: *at,
            })
            .collect();
        out.sort_by(|a, b| a.username.cmp(&b.username));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot.load().is_empty()
    }

    /// Adds a console user, or replaces its password and role (blocking).
    pub fn put(
        &self,
        username: &str,
        password: &str,
        role: Role,
        actor: &str,
    ) -> Result<ConsoleUserView, AccessError> {
        validate_username(username)?;
        validate_password(password)?;
        let created_at = self
            .snapshot
            .load()
            .get(username)
            .map(|(_, _, at)| *at)
            .unwrap_or_else(certmq_registry::now_unix);
        let rec = ConsoleUserRecord {
            username: username.to_owned(),
            password_hash: hash_password(password, self.params)?,
            role: role.as_str().to_owned(),
            created_at,
        };
        let audit = AuditEntry {
            actor: actor.to_owned(),
            action: "console_user.put".into(),
            target: username.to_owned(),
            before: None,
            after: Some(serde_json::json!({"username": username, "role": role.as_str()})),
        };
        self.store.put_console_user(&rec, &audit)?;
        self.reload()?;
        Ok(ConsoleUserView {
            username: username.to_owned(),
            role,
            created_at,
        })
    }

    pub fn delete(&self, username: &str, actor: &str) -> Result<(), AccessError> {
        let audit = AuditEntry {
            actor: actor.to_owned(),
            action: "console_user.delete".into(),
            target: username.to_owned(),
            before: None,
            after: None,
        };
        self.store
            .delete_console_user(username, &audit)
            .map_err(|e| match AccessError::from(e) {
                e if e.kind == ErrorKind::NotFound => AccessError::new(
                    ErrorKind::NotFound,
                    "ConsoleUserNotFound",
                    format!("no console user {username}"),
                ),
                e => e,
            })?;
        self.reload()
    }

    /// The role of `username` when `password` is right.
    pub async fn verify(&self, username: &str, password: &str) -> Option<Role> {
        let found = self.snapshot.load().get(username).cloned();
        let _permit = self.gate.acquire().await.ok()?;
        let (hash, role) = match &found {
            Some((h, r, _)) => (h.clone(), Some(*r)),
            None => match self.dummy.get() {
                Some(d) => (d.clone(), None),
                None => {
                    let params = self.params;
                    let made = tokio::task::spawn_blocking(move || {
                        hash_password("certmq-console-dummy", params).ok()
                    })
                    .await
                    .ok()
                    .flatten()?;
                    (self.dummy.get_or_init(|| made).clone(), None)
                }
            },
        };
        let pw = password.as_bytes().to_vec();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|p| Argon2::default().verify_password(&pw, &p).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok {
            role
        } else {
            None
        }
    }
}
