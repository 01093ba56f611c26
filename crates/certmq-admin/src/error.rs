//! The API's one error type and its one mapping to HTTP statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// What went wrong, with the party to blame in the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed request (bad JSON, missing fields).
    BadRequest,
    /// No or wrong bearer token.
    Unauthorized,
    /// Authenticated, but not allowed (a viewer changing something, a
    /// console request without its CSRF token).
    Forbidden,
    /// Too many failed sign-ins.
    TooManyRequests,
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// Well-formed, but the content breaks a rule (a certificate refused).
    Invalid,
    TooLarge,
    MethodNotAllowed,
    /// A store the request needs cannot be reached now (503).
    Unavailable,
    /// Our fault.
    Internal,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status(), Json(body)).into_response();
        if self.kind == Kind::Unauthorized {
            if let Ok(v) = "Bearer".parse() {
                resp.headers_mut().insert("www-authenticate", v);
            }
        }
        resp
    }
}

/// The one mapping from the registry's errors to HTTP statuses.
impl From<certmq_registry::RegistryError> for ApiError {
    fn from(e: certmq_registry::RegistryError) -> Self {
        use certmq_registry::ErrorKind as E;
        let kind = match e.kind {
            E::BadRequest => Kind::BadRequest,
            E::NotFound => Kind::NotFound,
            E::Conflict => Kind::Conflict,
            E::Invalid => Kind::Invalid,
            E::Internal => Kind::Internal,
            E::Unavailable => Kind::Unavailable,
        };
        ApiError::new(kind, e.code, e.message)
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                Kind::TooLarge,
                "PayloadTooLarge",
                "the request body exceeds the limit",
            );
        }
        ApiError::new(Kind::BadRequest, "InvalidRequest", r.body_text())
    }
}
