//! The access plane's configuration: `[authentication]` (password hashing,
//! JWT keys) and `[authorization]` (what no policy decides, what a denied
//! MQTT 3 publisher gets).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::users::HashParams;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub authentication: AuthenticationConfig,
    pub authorization: AuthorizationConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthenticationConfig {
    /// Every listener lets clients without credentials in (as
    /// `--allow-anonymous`); unset: per listener (loopback only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// Password hashes checked at once, at most (0: half the CPU cores,
    /// at least 1). A CONNECT storm with passwords queues here instead of
    /// taking every core.
    pub max_concurrent_hashes: usize,
    /// argon2id parameters of new hashes (stored hashes keep their own).
    pub password_hash: HashParams,
    pub jwt: JwtConfig,
}

/// `[authentication.jwt]`: tokens in the CONNECT password field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HS256 shared secret (at least 32 bytes). Prefer `secret_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A file holding the HS256 secret (trailing newline ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// PEM public keys (RSA for RS256, P-256 for ES256); a token is
    /// accepted when one of them verifies it.
    pub public_key_files: Vec<PathBuf>,
    /// The claim naming the client id the token is for; when present it
    /// must equal the CONNECT client id.
    pub client_id_claim: String,
    /// The claim naming the user (falls back to `sub`); when the CONNECT
    /// has a user name it must equal it.
    pub username_claim: String,
    /// Required `iss`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf` at CONNECT.
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            secret_file: None,
            public_key_files: Vec::new(),
            client_id_claim: "client_id".into(),
            username_claim: "username".into(),
            issuer: None,
            audience: None,
            leeway_secs: 0,
        }
    }
}

/// What decides when no policy matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoMatch {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DenyActionSetting {
    #[default]
    Ignore,
    Disconnect,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationConfig {
    pub no_match: NoMatch,
    /// A denied PUBLISH of an MQTT 3 client: `ignore` (dropped, acknowledged
    /// as usual) or `disconnect`. MQTT 5 clients get PUBACK/PUBREC 0x87.
    pub deny_action: DenyActionSetting,
}

impl AuthorizationConfig {
    pub fn deny_action(&self) -> certmq_core::DenyAction {
        match self.deny_action {
            DenyActionSetting::Ignore => certmq_core::DenyAction::Ignore,
            DenyActionSetting::Disconnect => certmq_core::DenyAction::Disconnect,
        }
    }
}
