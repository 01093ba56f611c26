//! Console sessions, the sign-in rate limit, and the message-rate history
//! the Overview draws. Sessions live in memory (a restart signs everyone
//! out); a session id and its CSRF token are 256 random bits each.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use parking_lot::Mutex;
use serde::Serialize;

use certmq_access::{ConsoleUsers, Role};

use crate::error::{ApiError, Kind};

/// The session cookie's name.
pub const COOKIE: &str = "certmq_session";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// Failed sign-ins allowed per user name, and per address, within
/// [`FAILURE_WINDOW`]; the next ones are refused (429) until the oldest
/// failure leaves the window. An address gets more (several people may
/// share one).
pub const MAX_FAILURES: usize = 5;
pub const MAX_FAILURES_PER_ADDRESS: usize = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Samples of the message counters kept for the Overview chart (one every
/// [`SAMPLE_EVERY`]: 10 minutes).
pub const SAMPLES: usize = 120;
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub username: String,
    pub role: Role,
    pub csrf_token: String,
}

struct Session {
    view: SessionView,
    last: Instant,
}

/// One point of the Overview chart.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    pub received_per_s: f64,
    pub delivered_per_s: f64,
}

pub struct Console {
    pub users: Arc<ConsoleUsers>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    history: Mutex<History>,
}

/// The samples, and the counters last read (when, received, delivered).
type History = (VecDeque<Sample>, Option<(Instant, u64, u64)>);

fn random_hex() -> Option<String> {
    certmq_pki::random_hex(32).ok()
}

impl Console {
    pub fn new(users: Arc<ConsoleUsers>) -> Arc<Self> {
        Arc::new(Self {
            users,
            sessions: Mutex::default(),
            failures: Mutex::default(),
            history: Mutex::default(),
        })
    }

    /// Opens a session; its id (the cookie) and what the page may know.
    /// None when the random generator failed.
    pub fn create(&self, username: &str, role: Role) -> Option<(String, SessionView)> {
        let sid = random_hex()?;
        let view = SessionView {
            username: username.to_owned(),
            role,
            csrf_token: random_hex()?,
        };
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.last) < IDLE);
        sessions.insert(
            sid.clone(),
            Session {
                view: view.clone(),
                last: now,
            },
        );
        Some((sid, view))
    }

    /// The live session `sid` (its idle time starts again).
    pub fn session(&self, sid: &str) -> Option<SessionView> {
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        let s = sessions.get_mut(sid)?;
        if now.duration_since(s.last) >= IDLE {
            sessions.remove(sid);
            return None;
        }
        s.last = now;
        Some(s.view.clone())
    }

    pub fn destroy(&self, sid: &str) {
        self.sessions.lock().remove(sid);
    }

    /// Ends every session of `username` (deleted, or its role changed).
    pub fn sign_out(&self, username: &str) {
        self.sessions
            .lock()
            .retain(|_, s| s.view.username != username);
    }

    /// How long until a sign-in for any of `keys` is allowed again, when
    /// one of them failed too often.
    pub fn limited(&self, keys: &[String]) -> Option<Duration> {
        let mut f = self.failures.lock();
        let now = Instant::now();
        let mut wait = None;
        for k in keys {
            if let Some(q) = f.get_mut(k) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
                {
                    q.pop_front();
                }
                let max = if k.starts_with("ip:") {
                    MAX_FAILURES_PER_ADDRESS
                } else {
                    MAX_FAILURES
                };
                if q.len() >= max {
                    let left = q
                        .front()
                        .map(|t| FAILURE_WINDOW.saturating_sub(now.duration_since(*t)))
                        .unwrap_or(FAILURE_WINDOW);
                    wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, keys: &[String]) {
        let mut f = self.failures.lock();
        if f.len() > 100_000 {
            f.clear();
        }
        let now = Instant::now();
        for k in keys {
            let q = f.entry(k.clone()).or_default();
            q.push_back(now);
            while q.len() > MAX_FAILURES_PER_ADDRESS {
                q.pop_front();
            }
        }
    }

    /// Records the message counters (called every [`SAMPLE_EVERY`]).
    pub fn sample(&self, at: i64, received: u64, delivered: u64) {
        let mut h = self.history.lock();
        let now = Instant::now();
        if let Some((t, r, d)) = h.1 {
            let secs = now.duration_since(t).as_secs_f64().max(0.001);
            let s = Sample {
                at,
                received_per_s: received.saturating_sub(r) as f64 / secs,
                delivered_per_s: delivered.saturating_sub(d) as f64 / secs,
            };
            h.0.push_back(s);
            while h.0.len() > SAMPLES {
                h.0.pop_front();
            }
        }
        h.1 = Some((now, received, delivered));
    }

    pub fn history(&self) -> Vec<Sample> {
        self.history.lock().0.iter().copied().collect()
    }
}

/// A state-changing request with a session must carry its CSRF token.
pub fn check_csrf(headers: &HeaderMap, s: &SessionView) -> Result<(), ApiError> {
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if given.is_empty() {
        return Err(ApiError::new(
            Kind::Forbidden,
            "CsrfTokenMissing",
            "a state-changing request from the console needs its X-CSRF-Token header",
        ));
    }
    if !crate::auth::constant_time_eq(given.as_bytes(), s.csrf_token.as_bytes()) {
        return Err(ApiError::new(
            Kind::Forbidden,
            "CsrfTokenInvalid",
            "the X-CSRF-Token header does not match the session",
        ));
    }
    Ok(())
}
