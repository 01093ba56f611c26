//! [`Access`]: the access plane as the broker sees it. The listeners'
//! authentication chains ask it about passwords and tokens
//! ([`certmq_net::Authenticator`]); the core asks it about CONNECT,
//! PUBLISH, SUBSCRIBE and deliveries ([`certmq_core::Authorizer`]); the
//! admin API manages users and policies through it. Every policy change is
//! written (with its audit record), compiled into a new [`PolicySet`],
//! swapped in, and handed to the broker's reauthorization hook, so live
//! subscriptions answer to it before the API call returns.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

use certmq_codec::QoS;
use certmq_core::{ClientFacts, DenyAction, SubscribeVerdict};
use certmq_net::{CredentialCheck, PasswordCheck};
use certmq_registry::store::AuditEntry;

use crate::config::{AccessConfig, AuthorizationConfig};
use crate::error::{AccessError, ErrorKind};
use crate::policy::{Action, Policy, PolicyInput};
use crate::set::{Explained, PolicySet};
use crate::store::{AccessStore, PolicyRecord};
use crate::{Jwt, Users};

/// A policy as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyView {
    #[serde(flatten)]
    pub policy: Policy,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// Policies held at most: SUBSCRIBE and CONNECT scan them in order, and a
/// change asks every live subscription again.
pub const MAX_POLICIES: usize = 10_000;

pub struct Access {
    pub users: Arc<Users>,
    jwt: Jwt,
    store: Arc<dyn AccessStore>,
    set: ArcSwap<PolicySet>,
    records: Mutex<Vec<PolicyRecord>>,
    authorization: Mutex<AuthorizationConfig>,
    on_change: OnceLock<Hook>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("users", &self.users.len())
            .field("policies", &self.set.load().len())
            .field("jwt", &self.jwt)
            .finish()
    }
}

fn parse_record(r: &PolicyRecord) -> Result<Policy, AccessError> {
    serde_json::from_str::<Policy>(&r.document).map_err(|e| {
        AccessError::new(
            ErrorKind::Store,
            "StorageError",
            format!("stored policy {} does not parse: {e}", r.id),
        )
    })
}

impl Access {
    /// Loads users and policies and reads the JWT keys. Errors name the
    /// setting or record at fault.
    pub fn load(
        store: Arc<dyn AccessStore>,
        config: &AccessConfig,
    ) -> Result<Arc<Self>, AccessError> {
        let auth = &config.authentication;
        let users = Users::load(
            store.clone(),
            auth.password_hash,
            auth.max_concurrent_hashes,
        )?;
        let jwt = Jwt::load(&auth.jwt).map_err(|m| AccessError::invalid("InvalidConfig", m))?;
        let access = Arc::new(Self {
            users,
            jwt,
            store,
            set: ArcSwap::from_pointee(PolicySet::default()),
            records: Mutex::new(Vec::new()),
            authorization: Mutex::new(config.authorization.clone()),
            on_change: OnceLock::new(),
        });
        access.reload_policies()?;
        Ok(access)
    }

    /// Called after every policy change (the broker's reauthorization).
    pub fn on_policy_change(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(hook));
    }

    /// The compiled policies in force.
    pub fn policy_set(&self) -> Arc<PolicySet> {
        self.set.load_full()
    }

    /// Whether tokens can be checked (a key is configured).
    pub fn jwt_configured(&self) -> bool {
        self.jwt.is_configured()
    }

    fn rebuild(&self, records: &[PolicyRecord]) -> Result<(), AccessError> {
        let mut policies = Vec::with_capacity(records.len());
        let mut sorted: Vec<&PolicyRecord> = records.iter().collect();
        sorted.sort_by_key(|r| r.seq);
        for r in sorted {
            policies.push(Arc::new(parse_record(r)?));
        }
        let a = self.authorization.lock().clone();
        self.set.store(Arc::new(PolicySet::new(
            policies,
            a.no_match,
            a.deny_action(),
        )));
        Ok(())
    }

    fn changed(&self) {
        if let Some(hook) = self.on_change.get() {
            hook();
        }
    }

    /// Reads every policy from the store again and applies them.
    pub fn reload_policies(&self) -> Result<(), AccessError> {
        let mut records = self.records.lock();
        *records = self.store.policies()?;
        self.rebuild(&records)
    }

    /// Reads every policy again and applies them to live sessions (a
    /// change another node made).
    pub fn reload_policies_and_apply(&self) -> Result<(), AccessError> {
        self.reload_policies()?;
        self.changed();
        Ok(())
    }

    /// Applies new `[authorization]` settings (SIGHUP). Returns whether
    /// they changed.
    pub fn set_authorization(&self, config: AuthorizationConfig) -> Result<bool, AccessError> {
        {
            let mut a = self.authorization.lock();
            if *a == config {
                return Ok(false);
            }
            *a = config;
        }
        let records = self.records.lock();
        self.rebuild(&records)?;
        drop(records);
        self.changed();
        Ok(true)
    }

    fn view(r: &PolicyRecord) -> Result<PolicyView, AccessError> {
        Ok(PolicyView {
            policy: parse_record(r)?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }

    /// Every policy, in evaluation order.
    pub fn policies(&self) -> Result<Vec<PolicyView>, AccessError> {
        let records = self.records.lock();
        let mut views = records
            .iter()
            .map(|r| Ok((r.seq, Self::view(r)?)))
            .collect::<Result<Vec<_>, AccessError>>()?;
        views.sort_by_key(|(seq, v)| (v.policy.priority, *seq));
        Ok(views.into_iter().map(|(_, v)| v).collect())
    }

    pub fn policy(&self, id: &str) -> Result<PolicyView, AccessError> {
        let records = self.records.lock();
        let r = records
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| policy_not_found(id))?;
        Self::view(r)
    }

    /// Adds a policy (blocking: writes).
    pub fn create_policy(
        &self,
        input: PolicyInput,
        actor: &str,
    ) -> Result<PolicyView, AccessError> {
        let view = {
            let mut records = self.records.lock();
            if records.len() >= MAX_POLICIES {
                return Err(AccessError::invalid(
                    "TooManyPolicies",
                    format!("at most {MAX_POLICIES} policies; delete one first"),
                ));
            }
            let next = records.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
            let mut n = next;
            let generated = loop {
                let id = format!("policy-{n}");
                if !records.iter().any(|r| r.id == id) {
                    break id;
                }
                n += 1;
            };
            let policy = Policy::from_input(input, generated)?;
            if records.iter().any(|r| r.id == policy.id) {
                return Err(AccessError::new(
                    ErrorKind::Exists,
                    "PolicyExists",
                    format!("policy {} exists already", policy.id),
                ));
            }
            let now = certmq_registry::now_unix();
            let document = serde_json::to_string(&policy)
                .map_err(|e| AccessError::new(ErrorKind::Store, "Internal", e.to_string()))?;
            let mut rec = PolicyRecord {
                id: policy.id.clone(),
                seq: 0,
                document,
                created_at: now,
                updated_at: now,
            };
            let audit = AuditEntry {
                actor: actor.to_owned(),
                action: "policy.add".into(),
                target: policy.id.clone(),
                before: None,
                after: serde_json::to_value(&policy).ok(),
            };
            rec.seq = self.store.insert_policy(&rec, &audit)?;
            records.push(rec.clone());
            self.rebuild(&records)?;
            Self::view(&rec)?
        };
        self.changed();
        Ok(view)
    }

    /// Replaces a policy (blocking: writes). Its order among equal
    /// priorities is kept.
    pub fn replace_policy(
        &self,
        id: &str,
        input: PolicyInput,
        actor: &str,
    ) -> Result<PolicyView, AccessError> {
        if input.id.as_deref().is_some_and(|i| i != id) {
            return Err(AccessError::invalid(
                "InvalidPolicy",
                "id: the body's id differs from the path's",
            ));
        }
        let view = {
            let mut records = self.records.lock();
            let Some(pos) = records.iter().position(|r| r.id == id) else {
                return Err(policy_not_found(id));
            };
            let old = records
                .get(pos)
                .cloned()
                .ok_or_else(|| policy_not_found(id))?;
            let policy = Policy::from_input(input, id.to_owned())?;
            let document = serde_json::to_string(&policy)
                .map_err(|e| AccessError::new(ErrorKind::Store, "Internal", e.to_string()))?;
            let rec = PolicyRecord {
                document,
                updated_at: certmq_registry::now_unix(),
                ..old.clone()
            };
            let audit = AuditEntry {
                actor: actor.to_owned(),
                action: "policy.update".into(),
                target: id.to_owned(),
                before: serde_json::from_str(&old.document).ok(),
                after: serde_json::to_value(&policy).ok(),
            };
            self.store.update_policy(&rec, &audit)?;
            if let Some(slot) = records.get_mut(pos) {
                *slot = rec.clone();
            }
            self.rebuild(&records)?;
            Self::view(&rec)?
        };
        self.changed();
        Ok(view)
    }

    /// Deletes a policy (blocking: writes).
    pub fn delete_policy(&self, id: &str, actor: &str) -> Result<(), AccessError> {
        {
            let mut records = self.records.lock();
            let Some(pos) = records.iter().position(|r| r.id == id) else {
                return Err(policy_not_found(id));
            };
            let before = records
                .get(pos)
                .and_then(|r| serde_json::from_str(&r.document).ok());
            let audit = AuditEntry {
                actor: actor.to_owned(),
                action: "policy.delete".into(),
                target: id.to_owned(),
                before,
                after: None,
            };
            self.store.delete_policy(id, &audit)?;
            records.remove(pos);
            self.rebuild(&records)?;
        }
        self.changed();
        Ok(())
    }

    /// The dry run (`POST /policies/evaluate`).
    pub fn explain(
        &self,
        client: &ClientFacts,
        action: Action,
        topic: Option<&str>,
        qos: QoS,
        retain: bool,
    ) -> Explained {
        self.set.load().explain(client, action, topic, qos, retain)
    }
}

fn policy_not_found(id: &str) -> AccessError {
    AccessError::new(
        ErrorKind::NotFound,
        "PolicyNotFound",
        format!("no policy {id}"),
    )
}

impl certmq_net::Authenticator for Access {
    fn password<'a>(&'a self, username: &'a str, password: &'a [u8]) -> PasswordCheck<'a> {
        Box::pin(self.users.verify(username, password))
    }

    fn token(
        &self,
        token: &[u8],
        client_id: &str,
        username: Option<&str>,
        now: i64,
    ) -> CredentialCheck {
        self.jwt.check(token, client_id, username, now)
    }
}

impl certmq_core::Authorizer for Access {
    fn may_connect(&self, client: &ClientFacts) -> bool {
        self.set.load().decide_connect(client).allow
    }

    fn may_publish(&self, client: &ClientFacts, topic: &str, qos: QoS, retain: bool) -> bool {
        self.set
            .load()
            .decide_topic(Action::Publish, client, topic, Some(qos), Some(retain))
            .allow
    }

    fn may_subscribe(&self, client: &ClientFacts, filter: &str, qos: QoS) -> SubscribeVerdict {
        self.set.load().decide_subscribe(client, filter, qos).0
    }

    fn may_read(&self, client: &ClientFacts, topic: &str) -> bool {
        self.set
            .load()
            .decide_topic(Action::Subscribe, client, topic, None, None)
            .allow
    }

    fn deny_action(&self) -> DenyAction {
        self.set.load().deny_action()
    }

    /// An explicit `connect` allow that names client ids lets its clients
    /// take a session another identity holds under that client id (the
    /// `no_match` default never does).
    fn may_take_over(&self, client: &ClientFacts) -> bool {
        let d = self.set.load().decide_connect(client);
        d.allow && d.policy.as_ref().is_some_and(|p| p.client_ids.is_some())
    }
}
