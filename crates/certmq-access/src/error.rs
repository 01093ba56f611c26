//! The access plane's one error type: which rule was broken, for the admin
//! API to map to a status once.

use certmq_registry::store::StoreError;

/// What kind of failure, for the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or breaks a rule (400).
    Invalid,
    NotFound,
    /// It exists already (409).
    Exists,
    /// The store failed (500).
    Store,
    /// The shared store cannot be reached now (503).
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AccessError {
    pub kind: ErrorKind,
    /// PascalCase, for the API's `error.code`.
    pub code: &'static str,
    pub message: String,
}

impl AccessError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code, message)
    }
}

impl From<StoreError> for AccessError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(what) => Self::new(
                ErrorKind::Exists,
                "AlreadyExists",
                format!("{what} already exists"),
            ),
            StoreError::NotFound(what) => {
                Self::new(ErrorKind::NotFound, "NotFound", format!("{what} not found"))
            }
            StoreError::Unavailable(m) => {
                Self::new(ErrorKind::Unavailable, "RegistryUnavailable", m)
            }
            other => Self::new(ErrorKind::Store, "StorageError", other.to_string()),
        }
    }
}
