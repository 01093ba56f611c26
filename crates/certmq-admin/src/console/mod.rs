//! The web console (SPEC 12): a few hand-written ES-module assets compiled
//! into the binary (no JavaScript toolchain at build time), served by the
//! admin listener at `/`, talking to the same `/api/v1` as scripts do.
//!
//! Who may use it: console users (`certmq_access::ConsoleUsers`, roles
//! `administrator` and `viewer`). A login (`POST /console/login`, rate
//! limited per address and per user name) opens a server-side session
//! named by a random cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over
//! HTTPS) with an idle timeout; the API accepts that cookie instead of the
//! bearer token. A state-changing request with a session cookie must carry
//! the session's CSRF token in `X-CSRF-Token`, and only an administrator
//! may make one: the server refuses the viewer, not only the page.

pub(crate) mod api;
mod assets;
mod session;

pub use session::{check_csrf, Console, Sample, SessionView, COOKIE, SAMPLE_EVERY};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;

use crate::error::{ApiError, Kind};
use crate::routes::ApiJson;
use crate::AdminState;

/// Whether the request came over the HTTPS admin listener.
#[derive(Debug, Clone, Copy)]
pub struct Https(pub bool);

/// The session cookie's value in `headers`, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

fn html(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the console, or the login page without a live session.
pub async fn index(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    match session_cookie(&headers).and_then(|sid| s.console.session(&sid)) {
        Some(_) => html(assets::INDEX),
        None => Redirect::to("/login").into_response(),
    }
}

pub async fn login_page() -> Response {
    html(assets::LOGIN)
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match assets::get(&name) {
        Some((mime, body)) => (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

fn cookie(value: &str, https: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
    if https {
        c.push_str("; Secure");
    }
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    c
}

/// `POST /console/login`.
pub async fn login(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    https: Option<axum::Extension<Https>>,
    ApiJson(req): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let https = https.is_some_and(|h| h.0 .0);
    let keys = [
        format!("ip:{}", peer.ip()),
        format!("user:{}", req.username),
    ];
    if let Some(wait) = s.console.limited(&keys) {
        let mut resp = ApiError::new(
            Kind::TooManyRequests,
            "TooManyLoginAttempts",
            format!(
                "too many failed sign-ins; try again in {} s",
                wait.as_secs().max(1)
            ),
        )
        .into_response();
        if let Ok(v) = wait.as_secs().max(1).to_string().parse() {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(resp);
    }
    match s.console.users.verify(&req.username, &req.password).await {
        Some(role) => {
            let (sid, view) = s.console.create(&req.username, role).ok_or_else(|| {
                ApiError::new(Kind::Internal, "Internal", "no randomness for a session")
            })?;
            tracing::info!(username = %req.username.escape_debug(), role = role.as_str(), "console sign-in");
            let mut resp = Json(view).into_response();
            if let Ok(v) = cookie(&sid, https, None).parse() {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            Ok(resp)
        }
        None => {
            s.console.failed(&keys);
            tracing::info!(username = %crate::routes::bounded(&req.username), peer = %peer, "console sign-in refused");
            Err(ApiError::new(
                Kind::Unauthorized,
                "BadCredentials",
                "wrong user name or password",
            ))
        }
    }
}

/// `POST /console/logout` (needs the CSRF token).
pub async fn logout(
    State(s): State<AdminState>,
    https: Option<axum::Extension<Https>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let https = https.is_some_and(|h| h.0 .0);
    let sid = session_cookie(&headers)
        .ok_or_else(|| ApiError::new(Kind::Unauthorized, "NoSession", "not signed in"))?;
    let view = s
        .console
        .session(&sid)
        .ok_or_else(|| ApiError::new(Kind::Unauthorized, "NoSession", "not signed in"))?;
    check_csrf(&headers, &view)?;
    s.console.destroy(&sid);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = cookie("", https, Some(0)).parse() {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `GET /console/session`: who is signed in, and the CSRF token.
pub async fn current(
    State(s): State<AdminState>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    session_cookie(&headers)
        .and_then(|sid| s.console.session(&sid))
        .map(Json)
        .ok_or_else(|| ApiError::new(Kind::Unauthorized, "NoSession", "not signed in"))
}
