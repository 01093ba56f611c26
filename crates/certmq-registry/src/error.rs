//! The registry's one error type: which rule a request broke (or that
//! storage failed), as a kind and a stable code. It knows nothing of HTTP;
//! the admin API maps kinds to statuses in one place.

/// Who is to blame, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A malformed value (an unknown status, an empty client id).
    BadRequest,
    NotFound,
    /// The request conflicts with the current state (a revoked
    /// certificate, the CA limit, an ACTIVE CA to delete).
    Conflict,
    /// Well-formed, but the content breaks a rule (a certificate refused).
    Invalid,
    /// Ours: storage failed.
    Internal,
    /// The shared store cannot be reached now (503): try again later.
    Unavailable,
}

/// A refused or failed registry operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    pub kind: ErrorKind,
    /// Stable, PascalCase (`CaHasActiveDevices`, `CertificateRevoked`).
    pub code: &'static str,
    pub message: String,
}

impl RegistryError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for RegistryError {}

impl From<crate::store::StoreError> for RegistryError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as E;
        match &e {
            E::Exists(_) => RegistryError::new(ErrorKind::Conflict, "AlreadyExists", e.to_string()),
            E::NotFound(_) => RegistryError::new(ErrorKind::NotFound, "NotFound", e.to_string()),
            E::Conflict(_) => {
                RegistryError::new(ErrorKind::Conflict, "RegistrationCodeUsed", e.to_string())
            }
            E::Limit(_) => RegistryError::new(ErrorKind::Conflict, "CaLimitReached", e.to_string()),
            E::Revoked(_) => {
                RegistryError::new(ErrorKind::Conflict, "CertificateRevoked", e.to_string())
            }
            E::SerialInUse(_) => {
                RegistryError::new(ErrorKind::Conflict, "CertificateSerialInUse", e.to_string())
            }
            E::Unavailable(_) => {
                RegistryError::new(ErrorKind::Unavailable, "RegistryUnavailable", e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "store failure");
                RegistryError::new(
                    ErrorKind::Internal,
                    "StorageError",
                    "the registry could not be written; see the broker log",
                )
            }
        }
    }
}

impl From<certmq_pki::ServerCertError> for RegistryError {
    fn from(e: certmq_pki::ServerCertError) -> Self {
        RegistryError::new(ErrorKind::Invalid, e.code(), e.to_string())
    }
}
