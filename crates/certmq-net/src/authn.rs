//! Authentication at CONNECT: each listener's ordered chain of methods
//! (SPEC 11) turns what the client presented (a certificate, a user name
//! and password, a token in the password field, or nothing) into an
//! identity, or into a refusal with a recorded reason.
//!
//! Each method either accepts the client, refuses it (a credential it
//! recognised and found wrong: a revoked certificate, a bad password, an
//! expired token; the chain stops there), or passes it on (nothing for it
//! here: no certificate, a user name it does not know, a password that is
//! not a token). `anonymous`, when present, is last and lets in what
//! nothing refused. Users and tokens are checked by an [`Authenticator`]
//! (`certmq-access`); certificates by the registry
//! ([`certmq_pki::ConnectAuthorizer`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One authentication method of a listener's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A client certificate, decided by the device registry.
    Certificate,
    /// An MQTT user name and password held by certmq.
    Password,
    /// A JSON Web Token in the password field.
    Jwt,
    /// No credentials.
    Anonymous,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Certificate => "certificate",
            AuthMethod::Password => "password",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Anonymous => "anonymous",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "certificate" => AuthMethod::Certificate,
            "password" => AuthMethod::Password,
            "jwt" => AuthMethod::Jwt,
            "anonymous" => AuthMethod::Anonymous,
            _ => return None,
        })
    }
}

/// What a user or token check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialCheck {
    /// Not for this method; the reason is recorded if nothing else
    /// accepts the client (`UNKNOWN_USER`).
    Pass(Option<&'static str>),
    /// The client is this user; a token's expiry closes the connection.
    Accepted {
        username: Arc<str>,
        /// Unix seconds.
        expires_at: Option<i64>,
    },
    /// Refused, with the reason recorded (`BAD_PASSWORD`, `TOKEN_EXPIRED`).
    Refused(&'static str),
}

/// The future of a password check (hashing takes milliseconds of CPU: it
/// runs off the connection's task, bounded).
pub type PasswordCheck<'a> = Pin<Box<dyn Future<Output = CredentialCheck> + Send + 'a>>;

/// Checks user names with passwords and tokens.
pub trait Authenticator: Send + Sync + 'static {
    fn password<'a>(&'a self, username: &'a str, password: &'a [u8]) -> PasswordCheck<'a>;
    /// `token` is the CONNECT password; `client_id` and `username` as in
    /// CONNECT; `now` in unix seconds.
    fn token(
        &self,
        token: &[u8],
        client_id: &str,
        username: Option<&str>,
        now: i64,
    ) -> CredentialCheck;
}

/// Whether `password` has the shape of a JWT (three base64url parts): only
/// such passwords are offered to the `jwt` method.
pub fn looks_like_jwt(password: &[u8]) -> bool {
    let parts = password.split(|b| *b == b'.').count();
    parts == 3
        && password.len() > 10
        && password
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}
