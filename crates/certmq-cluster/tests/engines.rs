//! The cluster's real components start and stop inside the tests, as CI
//! runs them: PostgreSQL 15 and nats-server on free loopback ports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../certmq/tests/components/mod.rs"]
mod components;

use components::{Nats, Postgres};

#[test]
fn postgresql_and_nats_start_on_loopback_and_stop_by_pid() {
    let pg = Postgres::start();
    assert!(
        pg.ready(),
        "PostgreSQL does not accept connections at {}",
        pg.url()
    );
    let nats = Nats::start();
    let info = nats.info().unwrap();
    assert!(info.contains("\"server_id\""), "{info}");
    let nats_port = nats.port;
    drop(nats);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_err(),
        "nats-server still listens"
    );
    let port = pg.port;
    drop(pg);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "PostgreSQL still listens"
    );
}
