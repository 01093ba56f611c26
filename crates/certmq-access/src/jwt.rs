//! JSON Web Tokens in the CONNECT password field (SPEC 11): HS256 with a
//! shared secret, RS256 and ES256 with public keys, all from the
//! configuration. `exp` is required and `nbf` is checked; a connection
//! authenticated by a token is closed when the token expires (the
//! transport does that with the `expires_at` it is handed).

use jsonwebtoken::{decode, decode_header, errors::ErrorKind as JwtError, Algorithm, DecodingKey};
use jsonwebtoken::{TokenData, Validation};
use serde_json::Value;

use certmq_net::CredentialCheck;

use crate::config::JwtConfig;

pub struct Jwt {
    hs256: Option<DecodingKey>,
    rsa: Vec<DecodingKey>,
    ec: Vec<DecodingKey>,
    config: JwtConfig,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("hs256", &self.hs256.is_some())
            .field("rsa_keys", &self.rsa.len())
            .field("ec_keys", &self.ec.len())
            .finish()
    }
}

impl Jwt {
    /// Reads the keys the configuration names. An error says which file or
    /// setting is wrong.
    pub fn load(config: &JwtConfig) -> Result<Self, String> {
        let secret = match (&config.secret, &config.secret_file) {
            (Some(_), Some(_)) => {
                return Err("authentication.jwt: set secret or secret_file, not both".into())
            }
            (Some(s), None) => Some(s.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("authentication.jwt.secret_file {}: {e}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err("authentication.jwt: the HS256 secret must be at least 32 bytes".into());
        }
        let mut rsa = Vec::new();
        let mut ec = Vec::new();
        for path in &config.public_key_files {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "authentication.jwt.public_key_files {}: {e}",
                    path.display()
                )
            })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                rsa.push(k);
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                ec.push(k);
            } else {
                return Err(format!(
                    "authentication.jwt.public_key_files {}: not an RSA or EC public key (PEM)",
                    path.display()
                ));
            }
        }
        Ok(Self {
            hs256: match secret {
                Some(s) => Some(
                    DecodingKey::from_secret(s.as_bytes())
                        .map_err(|e| format!("authentication.jwt secret: {e}"))?,
                ),
                None => None,
            },
            rsa,
            ec,
            config: config.clone(),
        })
    }

    /// Whether any key is configured (without one, tokens are not checked
    /// and the `jwt` method passes every client on).
    pub fn is_configured(&self) -> bool {
        self.hs256.is_some() || !self.rsa.is_empty() || !self.ec.is_empty()
    }

    fn keys(&self, alg: Algorithm) -> &[DecodingKey] {
        match alg {
            Algorithm::HS256 => self.hs256.as_slice(),
            Algorithm::RS256 => &self.rsa,
            Algorithm::ES256 => &self.ec,
            _ => &[],
        }
    }

    /// Checks a token for a CONNECT of `client_id` (and `username`, when
    /// given), at `now` (unix seconds).
    pub fn check(
        &self,
        token: &[u8],
        client_id: &str,
        username: Option<&str>,
        now: i64,
    ) -> CredentialCheck {
        if !self.is_configured() {
            return CredentialCheck::Pass(None);
        }
        let Ok(token) = std::str::from_utf8(token) else {
            return CredentialCheck::Refused("TOKEN_INVALID");
        };
        let Ok(header) = decode_header(token) else {
            return CredentialCheck::Refused("TOKEN_INVALID");
        };
        let keys = self.keys(header.alg);
        if keys.is_empty() {
            return CredentialCheck::Refused("TOKEN_ALGORITHM_NOT_ALLOWED");
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.config.leeway_secs;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &self.config.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.config.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        let mut outcome = CredentialCheck::Refused("TOKEN_BAD_SIGNATURE");
        for key in keys {
            let data: TokenData<Value> = match decode(token, key, &v) {
                Ok(d) => d,
                Err(e) => {
                    outcome = CredentialCheck::Refused(match e.kind() {
                        JwtError::InvalidSignature => "TOKEN_BAD_SIGNATURE",
                        JwtError::ExpiredSignature => "TOKEN_EXPIRED",
                        JwtError::ImmatureSignature => "TOKEN_NOT_YET_VALID",
                        JwtError::InvalidIssuer => "TOKEN_WRONG_ISSUER",
                        JwtError::InvalidAudience => "TOKEN_WRONG_AUDIENCE",
                        JwtError::MissingRequiredClaim(_) => "TOKEN_INVALID",
                        _ => "TOKEN_INVALID",
                    });
                    if matches!(e.kind(), JwtError::InvalidSignature) {
                        continue;
                    }
                    return outcome;
                }
            };
            return self.claims(&data.claims, client_id, username, now);
        }
        outcome
    }

    fn claims(
        &self,
        claims: &Value,
        client_id: &str,
        username: Option<&str>,
        now: i64,
    ) -> CredentialCheck {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if let Some(cid) = text(&self.config.client_id_claim) {
            if cid != client_id {
                return CredentialCheck::Refused("TOKEN_CLIENT_ID_MISMATCH");
            }
        }
        let user = text(&self.config.username_claim)
            .or_else(|| text("sub"))
            .or_else(|| text(&self.config.client_id_claim));
        let Some(user) = user.filter(|u| !u.is_empty()) else {
            return CredentialCheck::Refused("TOKEN_INVALID");
        };
        if username.is_some_and(|u| u != user) {
            return CredentialCheck::Refused("TOKEN_USERNAME_MISMATCH");
        }
        let exp = claims.get("exp").and_then(Value::as_i64);
        if exp.is_some_and(|e| e <= now.saturating_sub(self.config.leeway_secs as i64)) {
            return CredentialCheck::Refused("TOKEN_EXPIRED");
        }
        CredentialCheck::Accepted {
            username: user.into(),
            expires_at: exp.map(|e| e.saturating_add(self.config.leeway_secs as i64)),
        }
    }
}
