//! The clock the core is given (`now` in every `certmq_core` call).
//!
//! Wall-clock time, read once at the first call and advanced from then on
//! by the monotonic clock: the moments the core stores (session expiry,
//! will delay, message expiry) are absolute and survive a restart, and
//! within one process time never runs backwards, even if the system clock
//! is stepped (the broker then keeps the old offset until it restarts).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use certmq_core::Time;

fn anchor() -> &'static (Instant, SystemTime) {
    static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    ANCHOR.get_or_init(|| (Instant::now(), SystemTime::now()))
}

/// Now, for the core.
pub fn now() -> Time {
    let (mono, wall) = anchor();
    Time::from_system(*wall) + mono.elapsed()
}

/// When tokio should wake for the core's moment `at` (now, if it passed).
pub(crate) fn wake_at(at: Time) -> tokio::time::Instant {
    tokio::time::Instant::now() + at.saturating_duration_since(now())
}
