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
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// Well-formed, but the content breaks a rule (a certificate refused).
    Invalid,
    TooLarge,
    MethodNotAllowed,
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
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
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

impl From<certmq_store::StoreError> for ApiError {
    fn from(e: certmq_store::StoreError) -> Self {
        use certmq_store::StoreError as E;
        match &e {
            E::Exists(_) => ApiError::new(Kind::Conflict, "AlreadyExists", e.to_string()),
            E::NotFound(_) => ApiError::new(Kind::NotFound, "NotFound", e.to_string()),
            E::Conflict(_) => ApiError::new(Kind::Conflict, "RegistrationCodeUsed", e.to_string()),
            E::Limit(_) => ApiError::new(Kind::Conflict, "CaLimitReached", e.to_string()),
            E::Revoked(_) => ApiError::new(Kind::Conflict, "CertificateRevoked", e.to_string()),
            E::SerialInUse(_) => {
                ApiError::new(Kind::Conflict, "CertificateSerialInUse", e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "store failure");
                ApiError::new(
                    Kind::Internal,
                    "StorageError",
                    "the registry could not be written; see the broker log",
                )
            }
        }
    }
}

impl From<certmq_pki::ServerCertError> for ApiError {
    fn from(e: certmq_pki::ServerCertError) -> Self {
        ApiError::new(Kind::Invalid, e.code(), e.to_string())
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
