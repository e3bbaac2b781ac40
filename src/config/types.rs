//! The config's own value types and how each is read from TOML: human
//! durations, one-or-many listen addresses, value sources (`query:NAME`, ...)
//! and backend URLs. Each rejects a bad value with a sentence that says
//! what a good one looks like; serde attaches the key and line.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written like `"250ms"`, `"10s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub fn get(self) -> Duration {
        self.0
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

/// Parses `"250ms"`, `"10s"`, `"1.5s"`, `"5m"`, `"1h"`, `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} has no unit (use ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// `listen = "addr"` or `listen = ["addr", "addr"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen(pub Vec<SocketAddr>);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        if list.is_empty() {
            return Err(serde::de::Error::custom("needs at least one address"));
        }
        list.iter()
            .map(|s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not an address like \"0.0.0.0:8080\" or \"[::]:8080\""
                    ))
                })
            })
            .collect::<Result<_, _>>()
            .map(Listen)
    }
}

/// Where a value (client ID or token) is read from in the upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Query(String),
    Header(String),
    Cookie(String),
    /// Only for `auth.token_from`: the first text message after the upgrade.
    FirstMessage,
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "first_message" {
            return Ok(Source::FirstMessage);
        }
        let bad = || {
            serde::de::Error::custom(format!(
                "{s:?} is not a source: use \"query:NAME\", \"header:NAME\", \"cookie:NAME\" or \"first_message\""
            ))
        };
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "query" => Ok(Source::Query(name.to_string())),
            "header" => Ok(Source::Header(name.to_ascii_lowercase())),
            "cookie" => Ok(Source::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }
}

/// A backend URL: `ws://host:port/prefix` or `wss://...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    pub raw: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub prefix: String,
}

impl BackendUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("ws://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("wss://") {
            (true, r)
        } else {
            return Err(format!("{s:?} must start with ws:// or wss://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if path.contains('?') || path.contains('#') {
            return Err(format!("{s:?} must not have a query or fragment"));
        }
        // The path goes into every upgrade's request line as is: anything
        // that is not a valid request target would fail there, per request.
        if !super::validate::is_request_target(path, false) {
            return Err(format!(
                "{s:?} has a path that is not a valid request target: use visible ASCII only (percent-encode spaces and non-ASCII)"
            ));
        }
        let uri: hyper::http::uri::Authority = authority
            .parse()
            .map_err(|_| format!("{s:?} has no valid host[:port]"))?;
        let host = uri.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(BackendUrl {
            raw: s.to_string(),
            tls,
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port` as written in a Host header.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl<'de> Deserialize<'de> for BackendUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BackendUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}
