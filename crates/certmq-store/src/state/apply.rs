//! Batches of changes, one transaction.
//!
//! A delivery queued and finished within a batch (the common case for an
//! online subscriber) never reaches this module (see `Batch::add`). A
//! message is stored once per transaction however many sessions it is
//! queued for (under the key of its first delivery), and deleted with its
//! last delivery. Nothing is kept between transactions, so failed batches
//! are simply written again, first, with the next one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use certmq_core::persist::{encode_identity, encode_message, encode_options, Change};
use certmq_core::{Message, Time};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{Batch, Pending};

fn ms(t: Option<Time>) -> Option<i64> {
    t.map(|t| i64::try_from(t.unix_millis()).unwrap_or(i64::MAX))
}

fn key(k: u64) -> i64 {
    i64::try_from(k).unwrap_or(i64::MAX)
}

/// Messages stored in this transaction, by their `Arc`'s address (the
/// `Arc`s live in the batches, so no address is reused meanwhile).
type Stored = HashMap<*const Message, i64>;

/// Writes `batches` in order, in one transaction.
pub(super) fn commit(conn: &mut Connection, batches: &[Batch]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut unreferenced: HashSet<i64> = HashSet::new();
    let mut stored = Stored::new();
    for batch in batches {
        for change in &batch.changes {
            apply(&tx, change, &mut unreferenced, &mut stored)?;
        }
        let mut keys: Vec<&u64> = batch.queued.keys().collect();
        keys.sort_unstable();
        for k in keys {
            if let Some(p) = batch.queued.get(k) {
                insert_delivery(&tx, *k, p, &mut stored)?;
            }
        }
    }
    for id in unreferenced {
        tx.prepare_cached(
            "DELETE FROM messages WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?1)",
        )?
        .execute([id])?;
    }
    tx.commit()
}

fn insert_delivery(
    tx: &Transaction<'_>,
    k: u64,
    p: &Pending,
    stored: &mut Stored,
) -> rusqlite::Result<()> {
    let message_id = match stored.get(&Arc::as_ptr(&p.delivery.message)) {
        Some(id) => *id,
        None => {
            let id = key(k);
            tx.prepare_cached(
                "INSERT OR REPLACE INTO messages (id, publish, expires_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                id,
                encode_message(&p.delivery.message),
                ms(p.delivery.message.expires_at)
            ])?;
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
    tx.prepare_cached(
        "INSERT OR REPLACE INTO deliveries
         (key, client_id, message_id, qos, retain, subscription_ids, packet_id, released)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        key(k),
        &*p.client_id,
        message_id,
        p.delivery.qos as u8,
        p.delivery.retain,
        ids.join(","),
        p.packet_id,
        p.released
    ])?;
    Ok(())
}

fn apply(
    tx: &Transaction<'_>,
    change: &Change,
    unreferenced: &mut HashSet<i64>,
    stored: &mut Stored,
) -> rusqlite::Result<()> {
    match change {
        Change::Retained {
            topic,
            message: Some(m),
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO retained (topic, publish, expires_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![&**topic, encode_message(m), ms(m.expires_at)])?;
        }
        Change::Retained {
            topic,
            message: None,
        } => {
            tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                .execute([&**topic])?;
        }
        Change::Session {
            client_id,
            identity,
            expiry_interval,
            offline_since,
        } => {
            tx.prepare_cached(
                "INSERT INTO sessions (client_id, identity, expiry_interval, offline_since)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (client_id) DO UPDATE SET identity = ?2, expiry_interval = ?3,
                 offline_since = ?4",
            )?
            .execute(params![
                &**client_id,
                encode_identity(identity),
                expiry_interval,
                ms(*offline_since)
            ])?;
        }
        Change::SessionEnded { client_id } => {
            for table in ["sessions", "subscriptions", "incoming_qos2"] {
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE client_id = ?1"))?
                    .execute([&**client_id])?;
            }
            let mut stmt = tx.prepare_cached(
                "DELETE FROM deliveries WHERE client_id = ?1 RETURNING message_id",
            )?;
            let ids = stmt.query_map([&**client_id], |r| r.get::<_, i64>(0))?;
            for id in ids {
                unreferenced.insert(id?);
            }
        }
        Change::Subscribed {
            client_id,
            filter,
            options,
            subscription_id,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO subscriptions (client_id, filter, options, subscription_id)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                &**client_id,
                &**filter,
                encode_options(options),
                subscription_id
            ])?;
        }
        Change::Unsubscribed { client_id, filter } => {
            tx.prepare_cached("DELETE FROM subscriptions WHERE client_id = ?1 AND filter = ?2")?
                .execute([&**client_id, &**filter])?;
        }
        Change::Queued {
            client_id,
            key: k,
            delivery,
        } => {
            // Batches keep queued deliveries apart; one here is written as is.
            let p = Pending {
                client_id: client_id.clone(),
                delivery: delivery.clone(),
                packet_id: None,
                released: false,
            };
            insert_delivery(tx, *k, &p, stored)?;
        }
        Change::Sent { key: k, packet_id } => {
            tx.prepare_cached("UPDATE deliveries SET packet_id = ?2, released = 0 WHERE key = ?1")?
                .execute(params![key(*k), packet_id])?;
        }
        Change::Released { key: k } => {
            tx.prepare_cached("UPDATE deliveries SET released = 1 WHERE key = ?1")?
                .execute([key(*k)])?;
        }
        Change::Done { key: k } => {
            let id: Option<i64> = tx
                .prepare_cached("DELETE FROM deliveries WHERE key = ?1 RETURNING message_id")?
                .query_row([key(*k)], |r| r.get(0))
                .optional()?;
            unreferenced.extend(id);
        }
        Change::Qos2Received {
            client_id,
            packet_id,
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO incoming_qos2 (client_id, packet_id) VALUES (?1, ?2)",
            )?
            .execute(params![&**client_id, packet_id])?;
        }
        Change::Qos2Released {
            client_id,
            packet_id,
        } => {
            tx.prepare_cached("DELETE FROM incoming_qos2 WHERE client_id = ?1 AND packet_id = ?2")?
                .execute(params![&**client_id, packet_id])?;
        }
        Change::Will {
            client_id,
            generation,
            will: Some(w),
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO wills
                 (client_id, generation, publish, expires_at, delay, publish_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                &**client_id,
                key(*generation),
                encode_message(&w.message),
                ms(w.message.expires_at),
                w.delay,
                ms(w.publish_at)
            ])?;
        }
        Change::Will {
            client_id,
            generation,
            will: None,
        } => {
            tx.prepare_cached("DELETE FROM wills WHERE client_id = ?1 AND generation = ?2")?
                .execute(params![&**client_id, key(*generation)])?;
        }
    }
    Ok(())
}
