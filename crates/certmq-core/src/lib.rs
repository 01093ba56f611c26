//! MQTT broker semantics, without I/O.
//!
//! What it does: the session registry (clean start, resume, takeover,
//! expiry), the subscription trie (`+`, `#`, `$`-topics, shared
//! subscriptions), retained messages, will messages with delay, QoS 0/1/2
//! flows with packet-id bookkeeping and redelivery, topic aliases, receive
//! maximum and maximum packet size in both directions, message expiry.
//! Time comes in as a value (`now`), so every case is a plain unit test.
//!
//! What it does not do: sockets, TLS, timers or tasks (`certmq-net` drives
//! a [`Conn`] from a network connection and calls [`Broker::tick`]),
//! authentication decisions (the transport passes them in
//! [`ConnectContext`]).

#![forbid(unsafe_code)]

mod auth;
mod broker;
mod cluster;
mod config;
mod conn;
mod control;
mod events;
mod fuzz;
mod levels;
mod mailbox;
mod message;
pub mod persist;
mod reauthorize;
mod restore;
mod retained;
mod session;
mod time;
pub mod topic;
mod tree;

pub use auth::{Authorizer, CertFacts, ClientFacts, DenyAction, SubscribeVerdict};
pub use broker::{message_from, Broker, Stats, CONGESTION_CHECK};
pub use cluster::Forwarder;
pub use config::BrokerConfig;
pub use conn::{CloseCause, Conn, ConnectContext, ConnectRefused, Flow, Identity};
pub use control::{Control, LiveConnection, Refusal, RefusalSource, Traffic};
pub use events::{Event, EventSink, Events, EVENT_KINDS};
pub use fuzz::fuzz_tree;
pub use mailbox::{Dropped, Kick, Mailbox, PushMode, Pushed, Ready, DRAIN_WINDOW_MS};
pub use message::{Delivery, Message};
pub use persist::{Change, Durability, Persist, Restored};
pub use reauthorize::Reauthorized;
pub use session::{SessionEntry, SessionId};
pub use time::Time;
pub use tree::{Subscriber, SubscriptionTree};
