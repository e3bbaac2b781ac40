//! JWT verification through `jsonwebtoken` (HS256 with a secret, RS256 or
//! ES256 with a public key PEM): signature, `exp`, `nbf`, and issuer and
//! audience when configured. No hand-rolled crypto. The reason for a
//! refusal never contains the token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::time::Instant;

use crate::auth::{Admitted, AuthSetupError};
use crate::config::AuthConfig;

/// A configured verifier.
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
    /// This claim becomes the routing client ID.
    client_id_claim: String,
}

impl Jwt {
    /// Reads the key (a file for RS256/ES256) and sets the checks up.
    pub fn new(c: &AuthConfig) -> Result<Jwt, AuthSetupError> {
        let (key, alg) = if !c.jwt_secret.is_empty() {
            (
                DecodingKey::from_secret(c.jwt_secret.as_bytes()),
                Algorithm::HS256,
            )
        } else {
            let pem =
                std::fs::read(&c.jwt_public_key).map_err(|source| AuthSetupError::ReadKey {
                    path: c.jwt_public_key.clone(),
                    source,
                })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (k, Algorithm::RS256)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, Algorithm::ES256)
            } else {
                return Err(AuthSetupError::BadKey {
                    path: c.jwt_public_key.clone(),
                });
            }
        };
        let mut v = Validation::new(alg);
        v.leeway = c.jwt_leeway.get().as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        if !c.jwt_issuer.is_empty() {
            v.set_issuer(&[c.jwt_issuer.as_str()]);
        }
        if c.jwt_audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[c.jwt_audience.as_str()]);
        }
        Ok(Jwt {
            key,
            validation: v,
            client_id_claim: c.client_id_claim.clone(),
        })
    }

    fn leeway(&self) -> Duration {
        Duration::from_secs(self.validation.leeway)
    }

    /// Verifies a token. The reason on failure is safe to log.
    pub fn verify(&self, token: &str) -> Result<Admitted, String> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| format!("invalid token: {e}"))?;
        let claims = data.claims;
        let client_id = match claims.get(&self.client_id_claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let expires_at = claims.get("exp").and_then(|v| v.as_u64()).map(|exp| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            Instant::now() + Duration::from_secs(exp.saturating_sub(now)) + self.leeway()
        });
        Ok(Admitted {
            client_id,
            expires_at,
            ..Admitted::default()
        })
    }
}
