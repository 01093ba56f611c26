//! The broker state (SPEC 10) of a cluster in PostgreSQL (SPEC 13).
//!
//! Each node commits its changes in batches through the same writer as
//! `state.db` (`crate::state`), here in one PostgreSQL transaction per
//! batch. A session belongs to the node that last wrote its settings
//! (`state_sessions.node`): a node restores its own sessions at start, and
//! takes one in when its client connects there ([`PgStore::load_session`]).
//! Ending a session deletes its records only while no other node owns it,
//! so a late end from the node a client left never deletes what the new
//! node wrote. Retained messages are shared by every node. Delivery keys
//! and connection numbers come from a range per node incarnation
//! ([`PgStore::open_state`]), so nodes never write over each other's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use certmq_core::persist::RestoredSession;
use certmq_core::persist::{encode_identity, encode_message, encode_options, Change};
use certmq_core::{Message, Restored, Time};
use postgres::{Client, GenericClient, NoTls, Statement, Transaction};

use super::{describe, PgStore};
use crate::state::load::Assembler;
use crate::state::{
    Backend, Batch, LoadReport, Pending, PersistenceConfig, StateError, StateStore,
};
use certmq_registry::store::StoreError;

/// Ids of one node incarnation: 2^40 of them.
const INCARNATION_SHIFT: u32 = 40;

fn ms(t: Option<Time>) -> Option<i64> {
    t.map(|t| i64::try_from(t.unix_millis()).unwrap_or(i64::MAX))
}

fn key(k: u64) -> i64 {
    i64::try_from(k).unwrap_or(i64::MAX)
}

struct Stmts {
    retained_put: Statement,
    retained_del: Statement,
    session_put: Statement,
    session_del: Statement,
    subs_del_all: Statement,
    qos2_del_all: Statement,
    deliveries_del_all: Statement,
    sub_put: Statement,
    sub_del: Statement,
    message_put: Statement,
    message_gc: Statement,
    delivery_put: Statement,
    sent: Statement,
    released: Statement,
    done: Statement,
    qos2_put: Statement,
    qos2_del: Statement,
    will_put: Statement,
    will_del: Statement,
}

/// Another node does not own the session `$1` (`$2`: this node).
const NOT_ELSEWHERE: &str =
    "NOT EXISTS (SELECT 1 FROM state_sessions s WHERE s.client_id = $1 AND s.node <> $2)";

impl Stmts {
    fn prepare(tx: &mut Transaction<'_>) -> Result<Self, postgres::Error> {
        Ok(Self {
            retained_put: tx.prepare(
                "INSERT INTO state_retained (topic, publish, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (topic) DO UPDATE SET publish = excluded.publish, expires_at = excluded.expires_at",
            )?,
            retained_del: tx.prepare("DELETE FROM state_retained WHERE topic = $1")?,
            session_put: tx.prepare(
                "INSERT INTO state_sessions (client_id, node, identity, expiry_interval, offline_since)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (client_id) DO UPDATE SET node = excluded.node, identity = excluded.identity,
                 expiry_interval = excluded.expiry_interval, offline_since = excluded.offline_since",
            )?,
            session_del: tx
                .prepare("DELETE FROM state_sessions WHERE client_id = $1 AND node = $2")?,
            subs_del_all: tx.prepare(&format!(
                "DELETE FROM state_subscriptions WHERE client_id = $1 AND {NOT_ELSEWHERE}"
            ))?,
            qos2_del_all: tx.prepare(&format!(
                "DELETE FROM state_incoming_qos2 WHERE client_id = $1 AND {NOT_ELSEWHERE}"
            ))?,
            deliveries_del_all: tx.prepare(&format!(
                "DELETE FROM state_deliveries WHERE client_id = $1 AND {NOT_ELSEWHERE} RETURNING message_id"
            ))?,
            sub_put: tx.prepare(
                "INSERT INTO state_subscriptions (client_id, filter, options, subscription_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (client_id, filter) DO UPDATE SET options = excluded.options,
                 subscription_id = excluded.subscription_id",
            )?,
            sub_del: tx
                .prepare("DELETE FROM state_subscriptions WHERE client_id = $1 AND filter = $2")?,
            message_put: tx.prepare(
                "INSERT INTO state_messages (id, publish, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET publish = excluded.publish, expires_at = excluded.expires_at",
            )?,
            message_gc: tx.prepare(
                "DELETE FROM state_messages WHERE id = $1
                 AND NOT EXISTS (SELECT 1 FROM state_deliveries WHERE message_id = $1)",
            )?,
            delivery_put: tx.prepare(
                "INSERT INTO state_deliveries
                 (key, client_id, message_id, qos, retain, subscription_ids, packet_id, released)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (key) DO UPDATE SET client_id = excluded.client_id,
                 message_id = excluded.message_id, qos = excluded.qos, retain = excluded.retain,
                 subscription_ids = excluded.subscription_ids, packet_id = excluded.packet_id,
                 released = excluded.released",
            )?,
            sent: tx.prepare(
                "UPDATE state_deliveries SET packet_id = $2, released = false WHERE key = $1",
            )?,
            released: tx.prepare("UPDATE state_deliveries SET released = true WHERE key = $1")?,
            done: tx.prepare("DELETE FROM state_deliveries WHERE key = $1 RETURNING message_id")?,
            qos2_put: tx.prepare(
                "INSERT INTO state_incoming_qos2 (client_id, packet_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )?,
            qos2_del: tx.prepare(
                "DELETE FROM state_incoming_qos2 WHERE client_id = $1 AND packet_id = $2",
            )?,
            will_put: tx.prepare(
                "INSERT INTO state_wills (client_id, generation, node, publish, expires_at, delay, publish_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (client_id, generation) DO UPDATE SET node = excluded.node,
                 publish = excluded.publish, expires_at = excluded.expires_at,
                 delay = excluded.delay, publish_at = excluded.publish_at",
            )?,
            will_del: tx
                .prepare("DELETE FROM state_wills WHERE client_id = $1 AND generation = $2")?,
        })
    }
}

/// Messages stored in this transaction, by their `Arc`'s address.
type Stored = HashMap<*const Message, i64>;

fn commit(c: &mut Client, node: &str, batches: &[Batch]) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    let st = Stmts::prepare(&mut tx)?;
    let mut unreferenced: HashSet<i64> = HashSet::new();
    let mut stored = Stored::new();
    for batch in batches {
        for change in &batch.changes {
            apply(&mut tx, &st, node, change, &mut unreferenced, &mut stored)?;
        }
        let mut keys: Vec<&u64> = batch.queued.keys().collect();
        keys.sort_unstable();
        for k in keys {
            if let Some(p) = batch.queued.get(k) {
                insert_delivery(&mut tx, &st, *k, p, &mut stored)?;
            }
        }
    }
    for id in unreferenced {
        tx.execute(&st.message_gc, &[&id])?;
    }
    tx.commit()
}

fn insert_delivery(
    tx: &mut Transaction<'_>,
    st: &Stmts,
    k: u64,
    p: &Pending,
    stored: &mut Stored,
) -> Result<(), postgres::Error> {
    let message_id = match stored.get(&Arc::as_ptr(&p.delivery.message)) {
        Some(id) => *id,
        None => {
            let id = key(k);
            tx.execute(
                &st.message_put,
                &[
                    &id,
                    &encode_message(&p.delivery.message),
                    &ms(p.delivery.message.expires_at),
                ],
            )?;
            stored.insert(Arc::as_ptr(&p.delivery.message), id);
            id
        }
    };
    let ids: Vec<String> = p
        .delivery
        .subscription_ids
        .iter()
        .map(u32::to_string)
        .collect();
    tx.execute(
        &st.delivery_put,
        &[
            &key(k),
            &&*p.client_id,
            &message_id,
            &(p.delivery.qos as u8 as i64),
            &p.delivery.retain,
            &ids.join(","),
            &p.packet_id.map(i64::from),
            &p.released,
        ],
    )?;
    Ok(())
}

fn apply(
    tx: &mut Transaction<'_>,
    st: &Stmts,
    node: &str,
    change: &Change,
    unreferenced: &mut HashSet<i64>,
    stored: &mut Stored,
) -> Result<(), postgres::Error> {
    match change {
        Change::Retained {
            topic,
            message: Some(m),
        } => {
            tx.execute(
                &st.retained_put,
                &[&&**topic, &encode_message(m), &ms(m.expires_at)],
            )?;
        }
        Change::Retained {
            topic,
            message: None,
        } => {
            tx.execute(&st.retained_del, &[&&**topic])?;
        }
        Change::Session {
            client_id,
            identity,
            expiry_interval,
            offline_since,
        } => {
            tx.execute(
                &st.session_put,
                &[
                    &&**client_id,
                    &node,
                    &encode_identity(identity),
                    &i64::from(*expiry_interval),
                    &ms(*offline_since),
                ],
            )?;
        }
        Change::SessionEnded { client_id } => {
            // Whatever another node owns now stays.
            tx.execute(&st.subs_del_all, &[&&**client_id, &node])?;
            tx.execute(&st.qos2_del_all, &[&&**client_id, &node])?;
            for row in tx.query(&st.deliveries_del_all, &[&&**client_id, &node])? {
                unreferenced.insert(row.try_get(0)?);
            }
            tx.execute(&st.session_del, &[&&**client_id, &node])?;
        }
        Change::Subscribed {
            client_id,
            filter,
            options,
            subscription_id,
        } => {
            tx.execute(
                &st.sub_put,
                &[
                    &&**client_id,
                    &&**filter,
                    &i64::from(encode_options(options)),
                    &subscription_id.map(i64::from),
                ],
            )?;
        }
        Change::Unsubscribed { client_id, filter } => {
            tx.execute(&st.sub_del, &[&&**client_id, &&**filter])?;
        }
        Change::Queued {
            client_id,
            key: k,
            delivery,
        } => {
            let p = Pending {
                client_id: client_id.clone(),
                delivery: delivery.clone(),
                packet_id: None,
                released: false,
            };
            insert_delivery(tx, st, *k, &p, stored)?;
        }
        Change::Sent { key: k, packet_id } => {
            tx.execute(&st.sent, &[&key(*k), &i64::from(*packet_id)])?;
        }
        Change::Released { key: k } => {
            tx.execute(&st.released, &[&key(*k)])?;
        }
        Change::Done { key: k } => {
            for row in tx.query(&st.done, &[&key(*k)])? {
                unreferenced.insert(row.try_get(0)?);
            }
        }
        Change::Qos2Received {
            client_id,
            packet_id,
        } => {
            tx.execute(&st.qos2_put, &[&&**client_id, &i64::from(*packet_id)])?;
        }
        Change::Qos2Released {
            client_id,
            packet_id,
        } => {
            tx.execute(&st.qos2_del, &[&&**client_id, &i64::from(*packet_id)])?;
        }
        Change::Will {
            client_id,
            generation,
            will: Some(w),
        } => {
            tx.execute(
                &st.will_put,
                &[
                    &&**client_id,
                    &key(*generation),
                    &node,
                    &encode_message(&w.message),
                    &ms(w.message.expires_at),
                    &i64::from(w.delay),
                    &ms(w.publish_at),
                ],
            )?;
        }
        Change::Will {
            client_id,
            generation,
            will: None,
        } => {
            tx.execute(&st.will_del, &[&&**client_id, &key(*generation)])?;
        }
    }
    Ok(())
}

/// The writer's end: a connection of its own (the writer is a thread of
/// its own, outside the async runtime), reconnected after a failure.
struct PgBackend {
    config: postgres::Config,
    node: String,
    client: Option<Client>,
}

impl Backend for PgBackend {
    fn commit(&mut self, batches: &[Batch]) -> Result<(), String> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.config.connect(NoTls).map_err(|e| describe(&e))?);
        }
        let Some(c) = self.client.as_mut() else {
            return Err("no connection".into());
        };
        commit(c, &self.node, batches).map_err(|e| {
            if e.as_db_error().is_none() {
                self.client = None;
            }
            describe(&e)
        })
    }

    fn bytes(&self) -> u64 {
        0
    }

    fn describe(&self) -> String {
        "the cluster's PostgreSQL".into()
    }
}

/// Which sessions a load reads.
enum Scope<'a> {
    /// Those a node owns, with the retained messages and its wills.
    Node(&'a str),
    /// Those a node that is gone owned, with its wills.
    Orphans(&'a str),
    /// One client's.
    Client(&'a str),
}

fn load(
    c: &mut impl GenericClient,
    scope: Scope<'_>,
) -> Result<(Restored, usize), postgres::Error> {
    let (col, arg) = match scope {
        Scope::Node(n) | Scope::Orphans(n) => ("node", n),
        Scope::Client(id) => ("client_id", id),
    };
    let mut a = Assembler::default();
    if matches!(scope, Scope::Node(_)) {
        for r in c.query("SELECT topic, publish, expires_at FROM state_retained", &[])? {
            let publish: Vec<u8> = r.try_get(1)?;
            a.retained(r.try_get(0)?, &publish, r.try_get(2)?);
        }
    }
    for r in c.query(
        &format!("SELECT client_id, identity, expiry_interval, offline_since FROM state_sessions WHERE {col} = $1"),
        &[&arg],
    )? {
        let identity: String = r.try_get(1)?;
        a.session(r.try_get(0)?, &identity, r.try_get(2)?, r.try_get(3)?);
    }
    let owned = format!("client_id IN (SELECT client_id FROM state_sessions WHERE {col} = $1)");
    for r in c.query(
        &format!("SELECT client_id, filter, options, subscription_id FROM state_subscriptions WHERE {owned}"),
        &[&arg],
    )? {
        let client_id: String = r.try_get(0)?;
        a.subscription(&client_id, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
    }
    for r in c.query(
        &format!("SELECT id, publish, expires_at FROM state_messages WHERE id IN (SELECT message_id FROM state_deliveries WHERE {owned})"),
        &[&arg],
    )? {
        let publish: Vec<u8> = r.try_get(1)?;
        a.message(r.try_get(0)?, &publish, r.try_get(2)?);
    }
    for r in c.query(
        &format!("SELECT key, client_id, message_id, qos, retain, subscription_ids, packet_id, released FROM state_deliveries WHERE {owned} ORDER BY key"),
        &[&arg],
    )? {
        let client_id: String = r.try_get(1)?;
        let ids: String = r.try_get(5)?;
        a.delivery(
            r.try_get(0)?,
            &client_id,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
            &ids,
            r.try_get(6)?,
            r.try_get(7)?,
        );
    }
    for r in c.query(
        &format!("SELECT client_id, packet_id FROM state_incoming_qos2 WHERE {owned}"),
        &[&arg],
    )? {
        let client_id: String = r.try_get(0)?;
        a.incoming_qos2(&client_id, r.try_get(1)?);
    }
    if let Scope::Node(n) | Scope::Orphans(n) = scope {
        for r in c.query(
            "SELECT client_id, generation, publish, expires_at, delay, publish_at FROM state_wills WHERE node = $1",
            &[&n],
        )? {
            let publish: Vec<u8> = r.try_get(2)?;
            a.will(
                r.try_get(0)?,
                r.try_get(1)?,
                &publish,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
            );
        }
    }
    Ok(a.finish())
}

impl PgStore {
    /// Opens this node's broker state in the shared store: reads the
    /// retained messages and the sessions this node owns, starts the
    /// writer, and returns the first id of this incarnation's range (give
    /// it to `Broker::reserve_ids_from` before restoring).
    pub fn open_state(
        &self,
        config: &PersistenceConfig,
    ) -> Result<(Arc<StateStore>, Restored, LoadReport, u64), StateError> {
        let where_ = || std::path::PathBuf::from(super::target(&self.config));
        let err = |e: postgres::Error| StateError::Open {
            path: where_(),
            reason: describe(&e),
        };
        let started = Instant::now();
        let mut client = self.config.connect(NoTls).map_err(err)?;
        let n: i64 = client
            .query_one("SELECT nextval('state_incarnations')", &[])
            .and_then(|r| r.try_get(0))
            .map_err(err)?;
        let base = u64::try_from(n).unwrap_or(1) << INCARNATION_SHIFT;
        let (restored, dropped) = load(&mut client, Scope::Node(&self.node)).map_err(err)?;
        let report = LoadReport {
            dropped,
            elapsed: started.elapsed(),
        };
        let store = StateStore::start(
            Box::new(PgBackend {
                config: self.config.clone(),
                node: self.node.clone(),
                client: Some(client),
            }),
            config,
        )
        .map_err(|e| StateError::Open {
            path: where_(),
            reason: e.to_string(),
        })?;
        Ok((store, restored, report, base))
    }

    /// Nodes other than this one that own sessions or wills and are gone:
    /// no heartbeat for `stale_secs`, or not listed at all.
    pub fn orphan_owners(&self, stale_secs: i64) -> Result<Vec<String>, StoreError> {
        let me = self.node.as_str();
        let before = super::now() - stale_secs;
        Ok(self.read(|c| {
            let rows = c.query(
                "SELECT owner FROM (SELECT DISTINCT node AS owner FROM state_sessions
                   UNION SELECT DISTINCT node FROM state_wills) o
                 LEFT JOIN nodes n ON n.id = o.owner
                 WHERE o.owner <> $1 AND (n.id IS NULL OR n.seen_at < $2)",
                &[&me, &before],
            )?;
            rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
        })?)
    }

    /// Takes over what `gone` kept: its sessions (now this node's) and its
    /// wills, read in one transaction that also moves their ownership here
    /// (so no other node takes them too). Give the result to
    /// `Broker::adopt`.
    pub fn adopt_node(&self, gone: &str) -> Result<(Restored, usize), StoreError> {
        let me = self.node.as_str();
        Ok(self.with(move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&(super::WRITE_LOCK + 1)],
            )?;
            let out = load(&mut tx, Scope::Orphans(gone))?;
            tx.execute(
                "UPDATE state_sessions SET node = $1 WHERE node = $2",
                &[&me, &gone],
            )?;
            tx.execute(
                "UPDATE state_wills SET node = $1 WHERE node = $2",
                &[&me, &gone],
            )?;
            tx.commit()?;
            Ok(out)
        })?)
    }

    /// The node that owns `client_id`'s persistent session, if one is kept.
    pub fn session_owner(&self, client_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.read(|c| {
            Ok(c.query_opt(
                "SELECT node FROM state_sessions WHERE client_id = $1",
                &[&client_id],
            )?
            .map(|r| r.try_get(0))
            .transpose()?)
        })?)
    }

    /// `client_id`'s kept session, as the node that had it last wrote it.
    pub fn load_session(&self, client_id: &str) -> Result<Option<RestoredSession>, StoreError> {
        Ok(self.read(|c| {
            let (restored, dropped) = load(c, Scope::Client(client_id))?;
            if dropped > 0 {
                tracing::warn!(
                    client_id,
                    dropped,
                    "records of a kept session did not decode"
                );
            }
            Ok(restored.sessions.into_iter().next())
        })?)
    }
}
