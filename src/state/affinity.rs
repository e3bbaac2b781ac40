//! The affinity cookie: which backend a client without a client ID stays
//! on, for its HTTP requests and its upgrade.
//!
//! The cookie's value is an HMAC-SHA256 tag over the backend's name (cut
//! to 128 bits, base64url): it names no backend and no address, and a
//! client cannot make up the tag of a backend it was never sent to. The key
//! is `[routing] affinity_key` when set (gateways behind one load balancer
//! share it, and cookies survive restarts), else random per process (a
//! restart re-spreads cookie holders by peer address, as without cookies).

use std::sync::OnceLock;

use base64::Engine;
use hyper::header::{self, HeaderMap, HeaderValue};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Config;

/// Tag bytes kept: 128 bits is beyond guessing, and keeps the cookie short.
const TAG_BYTES: usize = 16;

/// The cookie's name and the tag of each backend, by config index.
pub struct Affinity {
    /// Empty: no cookie is issued or read.
    name: String,
    tags: Vec<String>,
}

/// The per-process key, drawn once, so every snapshot (reloads) agrees.
fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        if SystemRandom::new().fill(&mut k).is_err() {
            // No system randomness is not a reason to refuse traffic; the
            // clock still makes the key unknown to clients in practice.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            k[..16].copy_from_slice(&t.to_le_bytes());
        }
        k
    })
}

impl Affinity {
    pub fn new(config: &Config) -> Affinity {
        let r = &config.routing;
        let key = if r.affinity_key.is_empty() {
            hmac::Key::new(hmac::HMAC_SHA256, process_key())
        } else {
            hmac::Key::new(hmac::HMAC_SHA256, r.affinity_key.as_bytes())
        };
        let tags = config
            .backends
            .iter()
            .map(|b| {
                let tag = hmac::sign(&key, b.name.as_bytes());
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..TAG_BYTES])
            })
            .collect();
        Affinity {
            name: r.affinity_cookie.clone(),
            tags,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.name.is_empty()
    }

    /// The backend index a valid affinity cookie in `h` names.
    pub fn backend_of(&self, h: &HeaderMap) -> Option<usize> {
        if !self.enabled() {
            return None;
        }
        let value = h.get_all(header::COOKIE).iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k.trim() == self.name).then(|| v.trim().trim_matches('"'))
            })
        })?;
        self.tags.iter().position(|t| t == value)
    }

    /// `Set-Cookie` for backend `index`: a session cookie for the whole
    /// site, invisible to scripts, sent on top-level navigations but not on
    /// cross-site subrequests, and only over TLS when the client came over TLS.
    pub fn set_cookie(&self, index: usize, tls: bool) -> Option<HeaderValue> {
        let tag = self.tags.get(index)?;
        let secure = if tls { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={tag}; Path=/; HttpOnly; SameSite=Lax{secure}",
            self.name
        ))
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[routing]\n{extra}\n\
             [[backends]]\nname = \"alpha\"\nurl = \"ws://127.0.0.1:1\"\n\
             [[backends]]\nname = \"beta\"\nurl = \"ws://127.0.0.1:2\"\n"
        ))
        .unwrap()
    }

    fn cookie(v: &HeaderValue) -> HeaderMap {
        let pair = v.to_str().unwrap().split(';').next().unwrap().to_string();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("other=1; {pair}").parse().unwrap());
        h
    }

    #[test]
    fn cookie_round_trips_and_reveals_no_name() {
        let a = Affinity::new(&config(""));
        for i in 0..2 {
            let v = a.set_cookie(i, false).unwrap();
            let s = v.to_str().unwrap();
            assert!(s.starts_with("wsgate_affinity="), "{s}");
            assert!(s.contains("HttpOnly") && s.contains("SameSite=Lax"), "{s}");
            assert!(!s.contains("Secure"), "{s}");
            assert!(!s.contains("alpha") && !s.contains("beta") && !s.contains("127.0.0.1"));
            assert_eq!(a.backend_of(&cookie(&v)), Some(i));
        }
        assert!(
            a.set_cookie(0, true)
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
    }

    #[test]
    fn forged_or_foreign_cookies_are_ignored() {
        let a = Affinity::new(&config("affinity_key = \"one\""));
        let b = Affinity::new(&config("affinity_key = \"two\""));
        let from_b = b.set_cookie(1, false).unwrap();
        assert_eq!(a.backend_of(&cookie(&from_b)), None, "other key");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "wsgate_affinity=beta".parse().unwrap());
        assert_eq!(a.backend_of(&h), None, "a backend name is not a tag");
        // Same configured key: same tags (gateways behind one balancer).
        let a2 = Affinity::new(&config("affinity_key = \"one\""));
        assert_eq!(
            a2.backend_of(&cookie(&a.set_cookie(1, false).unwrap())),
            Some(1)
        );
        let off = Affinity::new(&config("affinity_cookie = \"\""));
        assert_eq!(
            off.backend_of(&cookie(&a.set_cookie(1, false).unwrap())),
            None
        );
        assert!(off.set_cookie(0, false).is_some() && !off.enabled());
    }
}
