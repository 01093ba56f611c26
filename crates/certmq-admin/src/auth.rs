//! Authentication for every route but `/health`: the bearer token
//! (scripts, the CLI), or a console session cookie (with its CSRF token on
//! state-changing requests, and the administrator role for them). The
//! acting principal (`admin-api`, `console:<user>`) is kept for the
//! request's audit records.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::{ApiError, Kind};
use crate::AdminState;

tokio::task_local! {
    static ACTOR: String;
}

/// The principal of the request being served: `admin-api` for the token,
/// `console:<user>` for a console session.
pub fn actor() -> String {
    ACTOR
        .try_with(|a| a.clone())
        .unwrap_or_else(|_| "admin-api".to_string())
}

/// Compares in time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_token(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = v.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), state.token.as_bytes()) => {
            Ok(ACTOR.scope("admin-api".to_string(), next.run(req)).await)
        }
        Some(_) => Err(ApiError::new(
            Kind::Unauthorized,
            "Unauthorized",
            "the bearer token is not valid",
        )),
        None => {
            let session = crate::console::session_cookie(req.headers())
                .and_then(|sid| state.console.session(&sid));
            let Some(session) = session else {
                return Err(ApiError::new(
                    Kind::Unauthorized,
                    "Unauthorized",
                    "missing 'Authorization: Bearer <token>' (the token is in <data-dir>/admin.token) or a console session",
                ));
            };
            let reads = matches!(
                *req.method(),
                axum::http::Method::GET | axum::http::Method::HEAD
            );
            if !reads {
                crate::console::check_csrf(req.headers(), &session)?;
                if session.role != certmq_access::Role::Administrator {
                    return Err(ApiError::new(
                        Kind::Forbidden,
                        "ReadOnlyRole",
                        "the viewer role can look, not change",
                    ));
                }
            }
            let actor = format!("console:{}", session.username);
            Ok(ACTOR.scope(actor, next.run(req)).await)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
