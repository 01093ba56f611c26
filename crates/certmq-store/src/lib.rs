//! Storage implementations.
//!
//! What it does: keeps the broker's durable state (retained messages,
//! persistent sessions) behind the core's `persist` seam ([`StateStore`],
//! `<data>/state.db`), and implements the registry's storage trait
//! ([`certmq_registry::store::Store`]) over an embedded SQLite database in
//! the data directory (WAL, `synchronous = FULL`: a change is on disk
//! before the call returns), applies versioned migrations at open, and
//! appends an audit record for every state change in the same transaction.
//!
//! What it does not do: decide. Validation and state rules live in
//! `certmq-pki` and `certmq-registry`; the broker never reads the database
//! on the connect path (it reads snapshots built from it).

#![forbid(unsafe_code)]

mod postgres;
mod sqlite;
mod state;

pub use postgres::{ChangeNote, Heard, NodeRecord, PgStore};
pub use sqlite::SqliteStore;
pub use state::{LoadReport, PersistenceConfig, PersistenceMode, StateError, StateStore};
