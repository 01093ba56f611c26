//! MQTT users: user names with argon2id password hashes (SPEC 11).
//!
//! The connect path reads an immutable snapshot (swapped on every change).
//! Checking a password costs an argon2id hash (about 20 ms of one core
//! with the default parameters), so checks run on the blocking pool, at
//! most `max_concurrent_hashes` at once: a storm of CONNECTs with
//! passwords queues (up to [`HASH_WAIT`], then is refused
//! `AUTHENTICATION_BUSY`) instead of taking every core from the clients
//! already connected. A successful check is remembered as a keyed
//! SHA-256 of (user, password) under a per-process random key, until the
//! user changes: a fleet reconnecting with the right password costs one
//! HMAC each, not one argon2id hash each. Wrong passwords are never
//! remembered, so guessing always pays the full price.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use certmq_net::CredentialCheck;
use certmq_registry::store::AuditEntry;

use crate::error::{AccessError, ErrorKind};
use crate::store::{AccessStore, UserRecord};

/// How long a CONNECT waits for a free hashing slot.
pub const HASH_WAIT: Duration = Duration::from_secs(5);
/// Remembered successful checks, at most (the cache is emptied when full).
const CACHE_MAX: usize = 100_000;

/// argon2id parameters for new hashes. The default is OWASP's second
/// recommended setting (19 MiB, 2 passes, 1 lane): about 20 ms per check
/// on one core here, 19 MiB of memory per check in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl HashParams {
    pub fn validate(&self) -> Result<(), String> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map(|_| ())
            .map_err(|e| format!("authentication.password_hash: {e}"))
    }
}

/// A user as the API shows it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub username: String,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug)]
struct Entry {
    hash: String,
    created_at: i64,
    updated_at: i64,
    /// Changes with every password change: remembered checks of an older
    /// password stop counting.
    generation: u64,
}

pub struct Users {
    store: Arc<dyn AccessStore>,
    snapshot: ArcSwap<HashMap<String, Arc<Entry>>>,
    params: HashParams,
    writes: Mutex<u64>,
    gate: tokio::sync::Semaphore,
    cache: Mutex<HashMap<String, (u64, [u8; 32])>>,
    cache_key: aws_lc_rs::hmac::Key,
    /// A hash checked for unknown user names, so that they cost what a
    /// known name with a wrong password costs (no user enumeration by
    /// timing).
    dummy: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.snapshot.load().len())
            .finish_non_exhaustive()
    }
}

use certmq_registry::now_unix;

/// 1 to 128 characters, no control characters.
pub(crate) fn validate_username(name: &str) -> Result<(), AccessError> {
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(AccessError::invalid(
            "InvalidUsername",
            "username: 1 to 128 characters, no control characters",
        ));
    }
    Ok(())
}

pub(crate) fn validate_password(password: &str) -> Result<(), AccessError> {
    if password.len() < 8 || password.len() > 1024 {
        return Err(AccessError::invalid(
            "InvalidPassword",
            "password: 8 to 1024 bytes",
        ));
    }
    Ok(())
}

impl Users {
    /// Loads every user; `max_concurrent` 0 means half the cores.
    pub fn load(
        store: Arc<dyn AccessStore>,
        params: HashParams,
        max_concurrent: usize,
    ) -> Result<Arc<Self>, AccessError> {
        params
            .validate()
            .map_err(|m| AccessError::invalid("InvalidConfig", m))?;
        let slots = if max_concurrent == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get() / 2)
                .unwrap_or(1)
                .max(1)
        } else {
            max_concurrent
        };
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key)
            .map_err(|_| AccessError::new(ErrorKind::Store, "Internal", "no randomness"))?;
        let users = Arc::new(Self {
            store,
            snapshot: ArcSwap::from_pointee(HashMap::new()),
            params,
            writes: Mutex::new(0),
            gate: tokio::sync::Semaphore::new(slots),
            cache: Mutex::new(HashMap::new()),
            cache_key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
            dummy: std::sync::OnceLock::new(),
        });
        users.reload()?;
        Ok(users)
    }

    /// Reads every user from the store again.
    pub fn reload(&self) -> Result<(), AccessError> {
        let mut gen = self.writes.lock();
        let records = self.store.users()?;
        let map = records
            .into_iter()
            .map(|r| {
                *gen += 1;
                (
                    r.username,
                    Arc::new(Entry {
                        hash: r.password_hash,
                        created_at: r.created_at,
                        updated_at: r.updated_at,
                        generation: *gen,
                    }),
                )
            })
            .collect();
        self.snapshot.store(Arc::new(map));
        Ok(())
    }

    pub fn list(&self) -> Vec<UserView> {
        let snap = self.snapshot.load();
        let mut out: Vec<UserView> = snap
            .iter()
            .map(|(name, e)| UserView {
                username: name.clone(),
                created_at: e.created_at,
                updated_at: e.updated_at,
            })
            .collect();
        out.sort_by(|a, b| a.username.cmp(&b.username));
        out
    }

    pub fn get(&self, username: &str) -> Option<UserView> {
        self.snapshot.load().get(username).map(|e| UserView {
            username: username.to_owned(),
            created_at: e.created_at,
            updated_at: e.updated_at,
        })
    }

    pub fn len(&self) -> usize {
        self.snapshot.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hash(&self, password: &str) -> Result<String, AccessError> {
        hash_password(password, self.params)
    }

    /// Adds a user (blocking: hashes and writes).
    pub fn add(
        &self,
        username: &str,
        password: &str,
        actor: &str,
    ) -> Result<UserView, AccessError> {
        validate_username(username)?;
        validate_password(password)?;
        let hash = self.hash(password)?;
        let now = now_unix();
        let rec = UserRecord {
            username: username.to_owned(),
            password_hash: hash,
            created_at: now,
            updated_at: now,
        };
        let audit = AuditEntry {
            actor: actor.to_owned(),
            action: "user.add".into(),
            target: username.to_owned(),
            before: None,
            after: Some(serde_json::json!({"username": username})),
        };
        let _w = self.writes.lock();
        self.store
            .insert_user(&rec, &audit)
            .map_err(|e| match AccessError::from(e) {
                e if e.kind == ErrorKind::Exists => AccessError::new(
                    ErrorKind::Exists,
                    "UserExists",
                    format!("user {username} exists already"),
                ),
                e => e,
            })?;
        drop(_w);
        self.reload()?;
        self.get(username)
            .ok_or_else(|| AccessError::new(ErrorKind::Store, "Internal", "user vanished"))
    }

    /// Sets a user's password (blocking). Live connections stay; the old
    /// password no longer lets anyone in.
    pub fn set_password(
        &self,
        username: &str,
        password: &str,
        actor: &str,
    ) -> Result<UserView, AccessError> {
        validate_password(password)?;
        let Some(old) = self.snapshot.load().get(username).cloned() else {
            return Err(not_found(username));
        };
        let hash = self.hash(password)?;
        let rec = UserRecord {
            username: username.to_owned(),
            password_hash: hash,
            created_at: old.created_at,
            updated_at: now_unix(),
        };
        let audit = AuditEntry {
            actor: actor.to_owned(),
            action: "user.password".into(),
            target: username.to_owned(),
            before: None,
            after: None,
        };
        self.store
            .update_user(&rec, &audit)
            .map_err(|e| match AccessError::from(e) {
                e if e.kind == ErrorKind::NotFound => not_found(username),
                e => e,
            })?;
        self.reload()?;
        self.cache.lock().remove(username);
        self.get(username).ok_or_else(|| not_found(username))
    }

    /// Deletes a user (blocking). The caller closes its live connections.
    pub fn delete(&self, username: &str, actor: &str) -> Result<(), AccessError> {
        if !self.snapshot.load().contains_key(username) {
            return Err(not_found(username));
        }
        let audit = AuditEntry {
            actor: actor.to_owned(),
            action: "user.delete".into(),
            target: username.to_owned(),
            before: Some(serde_json::json!({"username": username})),
            after: None,
        };
        self.store
            .delete_user(username, &audit)
            .map_err(|e| match AccessError::from(e) {
                e if e.kind == ErrorKind::NotFound => not_found(username),
                e => e,
            })?;
        self.reload()?;
        self.cache.lock().remove(username);
        Ok(())
    }

    fn remembered(&self, username: &str, password: &[u8]) -> [u8; 32] {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.cache_key);
        ctx.update(username.as_bytes());
        ctx.update(&[0]);
        ctx.update(password);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref().get(..32).unwrap_or(&[0u8; 32]));
        out
    }

    /// The password check of the `password` method.
    pub async fn verify(&self, username: &str, password: &[u8]) -> CredentialCheck {
        let Some(entry) = self.snapshot.load().get(username).cloned() else {
            // As long as a wrong password of a known user takes.
            let Ok(Ok(_permit)) = tokio::time::timeout(HASH_WAIT, self.gate.acquire()).await else {
                return CredentialCheck::Refused("AUTHENTICATION_BUSY");
            };
            let dummy = match self.dummy.get() {
                Some(d) => d.clone(),
                None => {
                    let params = self.params;
                    let made = tokio::task::spawn_blocking(move || {
                        hash_password("certmq-unknown-user", params).ok()
                    })
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                    self.dummy.get_or_init(|| made).clone()
                }
            };
            let pw = password.to_vec();
            let _ = tokio::task::spawn_blocking(move || {
                PasswordHash::new(&dummy)
                    .map(|parsed| Argon2::default().verify_password(&pw, &parsed).is_ok())
                    .unwrap_or(false)
            })
            .await;
            return CredentialCheck::Pass(Some("UNKNOWN_USER"));
        };
        let accepted = || CredentialCheck::Accepted {
            username: username.into(),
            expires_at: None,
        };
        let tag = self.remembered(username, password);
        if let Some((gen, known)) = self.cache.lock().get(username) {
            if *gen == entry.generation
                && aws_lc_rs::constant_time::verify_slices_are_equal(known, &tag).is_ok()
            {
                return accepted();
            }
        }
        let permit = match tokio::time::timeout(HASH_WAIT, self.gate.acquire()).await {
            Ok(Ok(p)) => p,
            _ => return CredentialCheck::Refused("AUTHENTICATION_BUSY"),
        };
        let hash = entry.hash.clone();
        let pw = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| Argon2::default().verify_password(&pw, &parsed).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        drop(permit);
        if !ok {
            return CredentialCheck::Refused("BAD_PASSWORD");
        }
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(username.to_owned(), (entry.generation, tag));
        accepted()
    }
}

/// An argon2id PHC string of `password` with a fresh random salt.
pub fn hash_password(password: &str, p: HashParams) -> Result<String, AccessError> {
    let internal = |what: &str| AccessError::new(ErrorKind::Store, "Internal", what.to_owned());
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| internal("no randomness"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| internal("salt"))?;
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
        .map_err(|e| AccessError::invalid("InvalidConfig", e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| internal(&format!("hashing failed: {e}")))
}

fn not_found(username: &str) -> AccessError {
    AccessError::new(
        ErrorKind::NotFound,
        "UserNotFound",
        format!("no user {username}"),
    )
}
