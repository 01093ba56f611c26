//! Opening `state.db` (schema by `user_version`) and reading it back into
//! the core's [`Restored`].

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use certmq_codec::QoS;
use certmq_core::persist::{
    decode_identity, decode_message, decode_options, DeliveryState, RestoredDelivery,
    RestoredSession, RestoredWill, WillRecord,
};
use certmq_core::{Delivery, Message, Restored, Time};
use rusqlite::Connection;

use super::StateError;

/// Each entry moves the schema one version up; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: retained messages, sessions and what hangs off them, wills.
    "CREATE TABLE retained (
        topic TEXT PRIMARY KEY,
        publish BLOB NOT NULL,
        expires_at INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE sessions (
        client_id TEXT PRIMARY KEY,
        identity TEXT NOT NULL,
        expiry_interval INTEGER NOT NULL,
        offline_since INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE subscriptions (
        client_id TEXT NOT NULL,
        filter TEXT NOT NULL,
        options INTEGER NOT NULL,
        subscription_id INTEGER,
        PRIMARY KEY (client_id, filter)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        publish BLOB NOT NULL,
        expires_at INTEGER
    );
    CREATE TABLE deliveries (
        key INTEGER PRIMARY KEY,
        client_id TEXT NOT NULL,
        message_id INTEGER NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        subscription_ids TEXT NOT NULL,
        packet_id INTEGER,
        released INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX deliveries_by_client ON deliveries(client_id);
    CREATE INDEX deliveries_by_message ON deliveries(message_id);
    CREATE TABLE incoming_qos2 (
        client_id TEXT NOT NULL,
        packet_id INTEGER NOT NULL,
        PRIMARY KEY (client_id, packet_id)
    ) WITHOUT ROWID;
    CREATE TABLE wills (
        client_id TEXT NOT NULL,
        generation INTEGER NOT NULL,
        publish BLOB NOT NULL,
        expires_at INTEGER,
        delay INTEGER NOT NULL,
        publish_at INTEGER,
        PRIMARY KEY (client_id, generation)
    ) WITHOUT ROWID;",
];

pub(super) fn open(path: &Path, max_size_mb: u64) -> Result<Connection, StateError> {
    let open_err = |reason: String| StateError::Open {
        path: path.to_path_buf(),
        reason,
    };
    let corrupt = |e: rusqlite::Error| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    }
    let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
    // Payloads may be sensitive: the owner only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| open_err(e.to_string()))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(corrupt)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(corrupt)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(corrupt)?;
    if max_size_mb > 0 {
        let page: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(corrupt)?;
        let pages = (max_size_mb as i64).saturating_mul(1 << 20) / page.max(512);
        conn.pragma_update(None, "max_page_count", pages)
            .map_err(corrupt)?;
    }
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(corrupt)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StateError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    let mut conn = conn;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction().map_err(corrupt)?;
        tx.execute_batch(sql).map_err(corrupt)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(corrupt)?;
        tx.commit().map_err(corrupt)?;
    }
    Ok(conn)
}

fn time(ms: Option<i64>) -> Option<Time> {
    ms.map(|m| Time::from_unix_millis(m.max(0) as u64))
}

fn qos(n: i64) -> Option<QoS> {
    match n {
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

/// Runs `sql` and hands each row, as `map` reads it, to `each`. A row or
/// statement SQLite cannot read makes the file `Corrupt`.
fn each_row<T>(
    conn: &Connection,
    path: &Path,
    sql: &str,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    mut each: impl FnMut(T),
) -> Result<(), StateError> {
    let corrupt = |e: rusqlite::Error| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut stmt = conn.prepare(sql).map_err(corrupt)?;
    for row in stmt.query_map([], map).map_err(corrupt)? {
        each(row.map_err(corrupt)?);
    }
    Ok(())
}

/// Reads everything kept. Rows that do not decode or refer to nothing are
/// left out and counted (logged by the caller); a database that cannot be
/// read is `Corrupt`.
/// Builds a [`Restored`] from rows, one table at a time in the order
/// below (sessions before what hangs off them, messages before the
/// deliveries that use them): the same for every engine. Rows that do not
/// decode or refer to nothing are counted as dropped.
#[derive(Default)]
pub(crate) struct Assembler {
    restored: Restored,
    sessions: HashMap<Arc<str>, RestoredSession>,
    messages: HashMap<i64, Arc<Message>>,
    dropped: usize,
}

impl Assembler {
    pub(crate) fn retained(&mut self, topic: String, publish: &[u8], expires_at: Option<i64>) {
        match decode_message(publish, time(expires_at)) {
            Some(m) if *m.topic == *topic => self.restored.retained.push(Arc::new(m)),
            _ => self.dropped += 1,
        }
    }

    pub(crate) fn session(
        &mut self,
        client_id: String,
        identity: &str,
        expiry: i64,
        offline_since: Option<i64>,
    ) {
        let (Some(identity), Ok(expiry_interval)) =
            (decode_identity(identity), u32::try_from(expiry))
        else {
            self.dropped += 1;
            return;
        };
        let client_id: Arc<str> = client_id.into();
        self.sessions.insert(
            client_id.clone(),
            RestoredSession {
                client_id,
                identity,
                expiry_interval,
                offline_since: time(offline_since),
                subscriptions: Vec::new(),
                deliveries: Vec::new(),
                incoming_qos2: Vec::new(),
            },
        );
    }

    pub(crate) fn subscription(
        &mut self,
        client_id: &str,
        filter: String,
        options: i64,
        id: Option<i64>,
    ) {
        let options = u8::try_from(options).ok().and_then(decode_options);
        let id = id.map(u32::try_from);
        match (self.sessions.get_mut(client_id), options, id) {
            (Some(s), Some(o), None) => s.subscriptions.push((filter.into(), o, None)),
            (Some(s), Some(o), Some(Ok(id))) => s.subscriptions.push((filter.into(), o, Some(id))),
            _ => self.dropped += 1,
        }
    }

    pub(crate) fn message(&mut self, id: i64, publish: &[u8], expires_at: Option<i64>) {
        match decode_message(publish, time(expires_at)) {
            Some(m) => {
                self.messages.insert(id, Arc::new(m));
            }
            None => self.dropped += 1,
        }
    }

    /// In key order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn delivery(
        &mut self,
        key: i64,
        client_id: &str,
        message_id: i64,
        q: i64,
        retain: bool,
        ids: &str,
        packet_id: Option<i64>,
        released: bool,
    ) {
        let ids: Option<Vec<u32>> = if ids.is_empty() {
            Some(Vec::new())
        } else {
            ids.split(',').map(|n| n.parse().ok()).collect()
        };
        let state = match packet_id.map(u16::try_from) {
            None => Some(DeliveryState::Queued),
            Some(Ok(p)) if p != 0 && released => Some(DeliveryState::Released(p)),
            Some(Ok(p)) if p != 0 => Some(DeliveryState::Sent(p)),
            Some(_) => None,
        };
        let found = (
            self.sessions.get_mut(client_id),
            self.messages.get(&message_id),
            qos(q),
            ids,
            state,
            u64::try_from(key).ok().filter(|k| *k != 0),
        );
        let (Some(s), Some(message), Some(qos), Some(subscription_ids), Some(state), Some(key)) =
            found
        else {
            self.dropped += 1;
            return;
        };
        s.deliveries.push(RestoredDelivery {
            key,
            delivery: Delivery {
                message: message.clone(),
                qos,
                retain,
                subscription_ids,
                key,
            },
            state,
        });
    }

    pub(crate) fn incoming_qos2(&mut self, client_id: &str, packet_id: i64) {
        match (self.sessions.get_mut(client_id), u16::try_from(packet_id)) {
            (Some(s), Ok(p)) if p != 0 => s.incoming_qos2.push(p),
            _ => self.dropped += 1,
        }
    }

    pub(crate) fn will(
        &mut self,
        client_id: String,
        generation: i64,
        publish: &[u8],
        expires_at: Option<i64>,
        delay: i64,
        publish_at: Option<i64>,
    ) {
        let found = (
            decode_message(publish, time(expires_at)),
            u64::try_from(generation),
            u32::try_from(delay),
        );
        let (Some(message), Ok(generation), Ok(delay)) = found else {
            self.dropped += 1;
            return;
        };
        self.restored.wills.push(RestoredWill {
            client_id: client_id.into(),
            generation,
            will: WillRecord {
                message: Arc::new(message),
                delay,
                publish_at: time(publish_at),
            },
        });
    }

    pub(crate) fn finish(self) -> (Restored, usize) {
        let mut restored = self.restored;
        let mut sessions: Vec<RestoredSession> = self.sessions.into_values().collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        restored.sessions = sessions;
        (restored, self.dropped)
    }
}

pub(super) fn read(conn: &Connection, path: &Path) -> Result<(Restored, usize), StateError> {
    let mut a = Assembler::default();
    each_row(
        conn,
        path,
        "SELECT topic, publish, expires_at FROM retained",
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?)),
        |(topic, publish, expires_at)| a.retained(topic, &publish, expires_at),
    )?;
    each_row(
        conn,
        path,
        "SELECT client_id, identity, expiry_interval, offline_since FROM sessions",
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get(3)?,
            ))
        },
        |(client_id, identity, expiry, offline_since)| {
            a.session(client_id, &identity, expiry, offline_since)
        },
    )?;
    each_row(
        conn,
        path,
        "SELECT client_id, filter, options, subscription_id FROM subscriptions",
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        },
        |(client_id, filter, options, id)| a.subscription(&client_id, filter, options, id),
    )?;
    each_row(
        conn,
        path,
        "SELECT id, publish, expires_at FROM messages",
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?)),
        |(id, publish, expires_at)| a.message(id, &publish, expires_at),
    )?;
    each_row(
        conn,
        path,
        "SELECT key, client_id, message_id, qos, retain, subscription_ids, packet_id, released
         FROM deliveries ORDER BY key",
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, bool>(7)?,
            ))
        },
        |(key, client_id, message_id, q, retain, ids, packet_id, released)| {
            a.delivery(
                key, &client_id, message_id, q, retain, &ids, packet_id, released,
            )
        },
    )?;
    each_row(
        conn,
        path,
        "SELECT client_id, packet_id FROM incoming_qos2",
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        |(client_id, packet_id)| a.incoming_qos2(&client_id, packet_id),
    )?;
    each_row(
        conn,
        path,
        "SELECT client_id, generation, publish, expires_at, delay, publish_at FROM wills",
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get(3)?,
                r.get::<_, i64>(4)?,
                r.get(5)?,
            ))
        },
        |(client_id, generation, publish, expires_at, delay, publish_at)| {
            a.will(
                client_id, generation, &publish, expires_at, delay, publish_at,
            )
        },
    )?;
    Ok(a.finish())
}
