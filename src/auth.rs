//! Credentials: find the token (query, header, cookie, or the first
//! message), verify it as a JWT (HS256, RS256, ES256 through jsonwebtoken;
//! no hand-rolled crypto) or ask a forward-auth endpoint, and turn the
//! result into an [`Admitted`]: client ID, headers for the backend, expiry.
//!
//! Never logs a token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::time::Instant;

use crate::config::{AuthConfig, AuthMode, RejectWith, Source};
use crate::error::{Reject, close_code};
use crate::handshake;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What admission learned about the client.
#[derive(Debug, Default, Clone)]
pub struct Admitted {
    /// Routing client ID from a token claim; empty = use `[routing]` sources.
    pub client_id: String,
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

struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

/// The `[auth]` section, ready to use.
pub struct Auth {
    mode: AuthMode,
    sources: Vec<Source>,
    strip_token: bool,
    jwt: Option<Jwt>,
    forward: Option<Uri>,
    forward_headers: Vec<HeaderName>,
    forward_timeout: Duration,
    client_id_claim: String,
    reject_with: RejectWith,
    pub first_message_timeout: Duration,
}

impl Auth {
    pub fn new(c: &AuthConfig) -> Result<Auth, AuthSetupError> {
        let jwt = match c.mode {
            AuthMode::Jwt => Some(jwt(c)?),
            _ => None,
        };
        let forward = match c.mode {
            AuthMode::Forward => Some(
                c.forward_url
                    .parse::<Uri>()
                    .ok()
                    .filter(|u| u.host().is_some())
                    .ok_or_else(|| {
                        AuthSetupError::ForwardUrl(format!("{:?} is not a URL", c.forward_url))
                    })?,
            ),
            _ => None,
        };
        Ok(Auth {
            mode: c.mode,
            sources: c.token_from.clone(),
            strip_token: c.strip_token,
            jwt,
            forward,
            forward_headers: c
                .forward_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
                .collect(),
            forward_timeout: c.forward_timeout.get(),
            client_id_claim: c.client_id_claim.clone(),
            reject_with: c.reject_with,
            first_message_timeout: c.first_message_timeout.get(),
        })
    }

    /// Handshake-time admission.
    pub async fn admit<B>(&self, req: &Request<B>) -> Result<Admitted, Reject> {
        match self.mode {
            AuthMode::None => Ok(Admitted::default()),
            AuthMode::Jwt if self.sources == [Source::FirstMessage] => Ok(Admitted {
                token_in_first_message: true,
                ..Admitted::default()
            }),
            AuthMode::Jwt => {
                let found = handshake::find_value(req, &self.sources);
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
            AuthMode::Forward => match self.forward(req).await {
                Ok(a) => Ok(a),
                Err(why) => self.refuse(why),
            },
        }
    }

    fn refuse(&self, why: String) -> Result<Admitted, Reject> {
        match self.reject_with {
            RejectWith::Status => Err(Reject::Unauthorized(why)),
            RejectWith::Close => Ok(Admitted {
                refuse_with_close: Some(why),
                ..Admitted::default()
            }),
        }
    }

    /// Verifies a JWT: signature, `exp`, `nbf`, and issuer/audience when
    /// configured. The reason on failure is safe to log (no token in it).
    pub fn verify(&self, token: &str) -> Result<Admitted, String> {
        let jwt = self.jwt.as_ref().ok_or("JWT auth is not configured")?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &jwt.key,
            &jwt.validation,
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
            Instant::now() + Duration::from_secs(exp.saturating_sub(now)) + jwt.leeway()
        });
        Ok(Admitted {
            client_id,
            expires_at,
            ..Admitted::default()
        })
    }

    /// Mode "forward": the upgrade request's headers go to `forward_url` as a
    /// GET; 2xx allows, and `forward_headers` of the answer are kept.
    async fn forward<B>(&self, req: &Request<B>) -> Result<Admitted, String> {
        let uri = self
            .forward
            .as_ref()
            .ok_or("forward auth is not configured")?;
        let call = async {
            let host = uri.host().unwrap_or("127.0.0.1");
            let port = uri.port_u16().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("forward auth unreachable: {e}"))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("forward auth: {e}"))?;
            let mut fwd = Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                .body(Empty::new())
                .expect("valid request");
            for (name, value) in req.headers() {
                if !matches!(
                    name.as_str(),
                    "connection" | "upgrade" | "host" | "content-length" | "transfer-encoding"
                ) && !name.as_str().starts_with("sec-websocket-")
                {
                    fwd.headers_mut().append(name.clone(), value.clone());
                }
            }
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
            fwd.headers_mut().insert(
                header::HOST,
                HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
            );
            if let Some(pq) = req.uri().path_and_query()
                && let Ok(v) = HeaderValue::from_str(pq.as_str())
            {
                fwd.headers_mut()
                    .insert(HeaderName::from_static("x-forwarded-uri"), v);
            }
            // The connection may end right after the answer; drive it on its
            // own so that race cannot turn a 200 into a failure.
            tokio::spawn(conn);
            let resp = sender
                .send_request(fwd)
                .await
                .map_err(|e| format!("forward auth: {e}"))?;
            Ok::<_, String>(resp)
        };
        let resp = tokio::time::timeout(self.forward_timeout, call)
            .await
            .map_err(|_| "forward auth timed out".to_string())??;
        if !resp.status().is_success() {
            return Err(format!("forward auth answered {}", resp.status().as_u16()));
        }
        let extra_headers: Vec<_> = self
            .forward_headers
            .iter()
            .filter_map(|n| resp.headers().get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        let client_id = extra_headers
            .iter()
            .find(|(n, _)| n == "x-client-id")
            .and_then(|(_, v)| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(Admitted {
            client_id,
            extra_headers,
            ..Admitted::default()
        })
    }
}

impl Jwt {
    fn leeway(&self) -> Duration {
        Duration::from_secs(self.validation.leeway)
    }
}

fn jwt(c: &AuthConfig) -> Result<Jwt, AuthSetupError> {
    let (key, alg) = if !c.jwt_secret.is_empty() {
        (
            DecodingKey::from_secret(c.jwt_secret.as_bytes()),
            Algorithm::HS256,
        )
    } else {
        let pem = std::fs::read(&c.jwt_public_key).map_err(|source| AuthSetupError::ReadKey {
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
    Ok(Jwt { key, validation: v })
}

/// `Bearer xyz` -> `xyz`; anything else as is.
fn bearer(v: &str) -> &str {
    let t = v.trim();
    match t.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => t[7..].trim(),
        _ => t,
    }
}

/// Extracts the token from a first message: the whole text, or its JSON
/// field `token`.
pub fn first_message_token(text: &str) -> String {
    let t = text.trim();
    if t.starts_with('{')
        && let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(t)
        && let Some(serde_json::Value::String(s)) = m.get("token")
    {
        return s.clone();
    }
    t.to_string()
}

/// Largest first message accepted as a token.
const MAX_FIRST_MESSAGE: usize = 16 * 1024;

/// Reads the client's first message (one masked text frame; pings before it
/// are ignored) within `timeout`. Returns its text and any bytes read past
/// it, or the close code to send: 4008 on silence, 4001 otherwise.
pub async fn read_first_message<S: AsyncRead + Unpin>(
    io: &mut S,
    pre: Bytes,
    timeout: Duration,
) -> Result<(String, Bytes), u16> {
    use crate::frame::{apply_mask, opcode, parse_header};
    let mut buf = pre.to_vec();
    let read = async {
        loop {
            while let Ok(Some(h)) = parse_header(&buf) {
                let total = h.header_len + h.payload_len as usize;
                if h.payload_len as usize > MAX_FIRST_MESSAGE || h.mask.is_none() {
                    return Err(close_code::AUTH_FAILED);
                }
                if buf.len() < total {
                    break;
                }
                let mut payload = buf[h.header_len..total].to_vec();
                apply_mask(&mut payload, h.mask.expect("checked"), 0);
                let rest = Bytes::copy_from_slice(&buf[total..]);
                buf.drain(..total);
                match h.opcode {
                    opcode::PING | opcode::PONG => continue,
                    opcode::TEXT if h.fin && h.rsv == 0 => {
                        let text =
                            String::from_utf8(payload).map_err(|_| close_code::AUTH_FAILED)?;
                        return Ok((text, rest));
                    }
                    _ => return Err(close_code::AUTH_FAILED),
                }
            }
            if parse_header(&buf).is_err() {
                return Err(close_code::AUTH_FAILED);
            }
            let mut chunk = [0u8; 4096];
            let n = io
                .read(&mut chunk)
                .await
                .map_err(|_| close_code::AUTH_FAILED)?;
            if n == 0 {
                return Err(close_code::AUTH_FAILED);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(close_code::AUTH_TIMEOUT))
}

/// Sends a close frame and ends the connection (bounded: the peer may be
/// gone).
pub async fn close_now<S: AsyncWrite + Unpin>(io: &mut S, code: u16, reason: &str) {
    let f = crate::frame::ControlFrame::close(code, reason, None);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        io.write_all(f.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

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
        assert_eq!(first_message_token(r#"{"token":"abc.def"}"#), "abc.def");
        assert_eq!(first_message_token(r#"{"token":"a\u002fb"}"#), "a/b");
        assert_eq!(first_message_token("abc.def"), "abc.def");
    }
}
