//! Admission beyond the handshake itself: the Origin allow-list
//! (`origin`), credentials from the request (`jwt`, `forward`) or from the
//! first message (`first_message`), and what they yield: an [`Admitted`]
//! (client ID, headers for the backend, expiry) or an [`AuthError`].
//!
//! Never logs a token.

pub mod first_message;
pub mod forward;
pub mod jwt;
pub mod origin;

use hyper::Request;
use hyper::header::{HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::config::{AuthConfig, AuthMode, RejectWith, Source};
use crate::request;

pub use origin::OriginPolicy;

/// What admission learned about the client.
#[derive(Debug, Default, Clone)]
pub struct Admitted {
    /// Routing client ID from a token claim; empty = use `[routing]` sources.
    pub client_id: String,
    /// No claim and no `[routing]` source gave an ID: `client_id` is the
    /// peer's address (an affinity cookie may then choose the backend).
    pub id_from_peer: bool,
    /// Query parameter to remove before forwarding (`strip_token`).
    pub strip_query: Option<String>,
    /// Headers to set on the upstream request (from forward auth).
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// The JWT's `exp`: the link is closed with 4001 "token expired" then.
    pub expires_at: Option<Instant>,
    /// The token is the first message after the upgrade (not checked yet).
    pub token_in_first_message: bool,
    /// Handshake-time auth failed and `reject_with = "close"`: accept the
    /// upgrade and close with 4001 at once.
    pub refuse_with_close: Option<String>,
}

/// An upgrade refused by admission.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("origin not allowed")]
    OriginForbidden,
    /// The reason is safe to log: it never holds the token.
    #[error("authentication failed: {0}")]
    Unauthorized(String),
}

/// Why `[auth]` could not be set up from the config.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth.jwt_public_key: cannot read {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.jwt_public_key: {path} is neither an RSA nor an EC public key PEM")]
    BadKey { path: String },
    #[error("auth.forward_url: {0}")]
    ForwardUrl(String),
}

/// The `[auth]` section, ready to use.
pub struct Auth {
    mode: AuthMode,
    sources: Vec<Source>,
    strip_token: bool,
    jwt: Option<jwt::Jwt>,
    forward: Option<forward::Forward>,
    reject_with: RejectWith,
    pub first_message_timeout: std::time::Duration,
}

impl Auth {
    pub fn new(c: &AuthConfig) -> Result<Auth, AuthSetupError> {
        Ok(Auth {
            mode: c.mode,
            sources: c.token_from.clone(),
            strip_token: c.strip_token,
            jwt: match c.mode {
                AuthMode::Jwt => Some(jwt::Jwt::new(c)?),
                _ => None,
            },
            forward: match c.mode {
                AuthMode::Forward => Some(forward::Forward::new(c)?),
                _ => None,
            },
            reject_with: c.reject_with,
            first_message_timeout: c.first_message_timeout.get(),
        })
    }

    /// Handshake-time admission.
    pub async fn admit<B>(&self, req: &Request<B>) -> Result<Admitted, AuthError> {
        match self.mode {
            AuthMode::None => Ok(Admitted::default()),
            AuthMode::Jwt if self.sources == [Source::FirstMessage] => Ok(Admitted {
                token_in_first_message: true,
                ..Admitted::default()
            }),
            AuthMode::Jwt => {
                let found = request::find_value(req, &self.sources);
                let result = match &found {
                    None => Err("no token".to_string()),
                    Some((_, token)) => self.verify(bearer(token)),
                };
                match result {
                    Ok(mut a) => {
                        if let Some((Source::Query(name), _)) = &found
                            && self.strip_token
                        {
                            a.strip_query = Some(name.clone());
                        }
                        Ok(a)
                    }
                    Err(why) => self.refuse(why),
                }
            }
            AuthMode::Forward => {
                let checked = match &self.forward {
                    Some(f) => f.check(req).await,
                    None => Err("forward auth is not configured".to_string()),
                };
                checked.or_else(|why| self.refuse(why))
            }
        }
    }

    fn refuse(&self, why: String) -> Result<Admitted, AuthError> {
        match self.reject_with {
            RejectWith::Status => Err(AuthError::Unauthorized(why)),
            RejectWith::Close => Ok(Admitted {
                refuse_with_close: Some(why),
                ..Admitted::default()
            }),
        }
    }

    /// Verifies a JWT (handshake-time or first-message). The reason on
    /// failure is safe to log (no token in it).
    pub fn verify(&self, token: &str) -> Result<Admitted, String> {
        self.jwt
            .as_ref()
            .ok_or("JWT auth is not configured")?
            .verify(token)
    }
}

/// `Bearer xyz` -> `xyz`; anything else as is.
fn bearer(v: &str) -> &str {
    let t = v.trim();
    match t.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => t[7..].trim(),
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn auth(extra: impl FnOnce(&mut AuthConfig)) -> Auth {
        let mut c = AuthConfig {
            mode: AuthMode::Jwt,
            jwt_secret: "s3cret".into(),
            ..AuthConfig::default()
        };
        extra(&mut c);
        Auth::new(&c).unwrap()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn hs256_valid_and_claim_becomes_client_id() {
        let a = auth(|_| {});
        let t = token(
            serde_json::json!({"sub": "alice", "exp": now() + 60}),
            "s3cret",
        );
        let ad = a.verify(&t).unwrap();
        assert_eq!(ad.client_id, "alice");
        assert!(ad.expires_at.is_some());
    }

    #[test]
    fn rejects_bad_signature_expired_nbf_issuer_audience() {
        let a = auth(|c| {
            c.jwt_issuer = "iss1".into();
            c.jwt_audience = "aud1".into();
        });
        let good = serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "iss1", "aud": "aud1"});
        assert!(a.verify(&token(good.clone(), "s3cret")).is_ok());
        assert!(a.verify(&token(good, "wrong")).is_err());
        let expired =
            serde_json::json!({"sub": "a", "exp": now() - 10, "iss": "iss1", "aud": "aud1"});
        assert!(a.verify(&token(expired, "s3cret")).is_err());
        let future = serde_json::json!({"sub": "a", "exp": now() + 60, "nbf": now() + 30, "iss": "iss1", "aud": "aud1"});
        assert!(a.verify(&token(future, "s3cret")).is_err());
        let wrong_iss =
            serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "x", "aud": "aud1"});
        assert!(a.verify(&token(wrong_iss, "s3cret")).is_err());
        let wrong_aud =
            serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "iss1", "aud": "x"});
        assert!(a.verify(&token(wrong_aud, "s3cret")).is_err());
        assert!(a.verify("not.a.jwt").is_err());
    }

    #[test]
    fn token_helpers() {
        assert_eq!(bearer("Bearer abc"), "abc");
        assert_eq!(bearer("abc"), "abc");
        assert_eq!(first_message::token(r#"{"token":"abc.def"}"#), "abc.def");
        assert_eq!(first_message::token(r#"{"token":"a\u002fb"}"#), "a/b");
        assert_eq!(first_message::token("abc.def"), "abc.def");
    }
}
