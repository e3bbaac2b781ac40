//! The configuration file: its TOML schema, defaults, human durations, and
//! validation whose every error names the key and the line it is on.
//!
//! This module only turns text into a checked [`Config`]; it opens no socket
//! and reads no file other than the config itself (certificate and key files
//! are read by `tls`, so a reload re-reads them too).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A configuration error, phrased as one sentence that names the key and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line in the file, when the error can be pinned to one.
    pub line: Option<usize>,
    /// Dotted key, e.g. `heartbeat.client_interval`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.key, self.line) {
            (Some(k), Some(l)) => write!(f, "config key `{k}` (line {l}): {}", self.message),
            (Some(k), None) => write!(f, "config key `{k}`: {}", self.message),
            (None, Some(l)) => write!(f, "config line {l}: {}", self.message),
            (None, None) => write!(f, "config: {}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

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
        let uri: http_authority::Authority = authority
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

mod http_authority {
    pub use hyper::http::uri::Authority;
}

impl<'de> Deserialize<'de> for BackendUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BackendUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: Listen,
    #[serde(default = "default_origins")]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub require_origin: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub max_connections_per_ip: usize,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
    /// Largest request head (request line + headers) accepted; over it: 431.
    #[serde(default = "default_max_request_head_bytes")]
    pub max_request_head_bytes: usize,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: Listen,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default = "default_client_id_sources")]
    pub client_id: Vec<Source>,
    #[serde(default = "default_vnodes")]
    pub vnodes: u32,
    #[serde(default)]
    pub load_factor: f64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_connect_retries")]
    pub connect_retries: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            client_id: default_client_id_sources(),
            vnodes: default_vnodes(),
            load_factor: 0.0,
            connect_timeout: default_connect_timeout(),
            connect_retries: default_connect_retries(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub url: BackendUrl,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// wss:// only: PEM file of the CA(s) to trust instead of the system roots.
    #[serde(default)]
    pub ca: String,
    /// wss:// only, for testing: accept any certificate. Never in production.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteOn {
    #[default]
    Ws,
    Http,
    Both,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_two")]
    pub fall: u32,
    #[serde(default = "default_two")]
    pub rise: u32,
    #[serde(default = "default_http_path")]
    pub http_path: String,
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
    #[serde(default)]
    pub ws_send: String,
    #[serde(default)]
    pub ws_expect: String,
    #[serde(default)]
    pub ws_subprotocol: String,
    #[serde(default)]
    pub route_on: RouteOn,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            fall: 2,
            rise: 2,
            http_path: default_http_path(),
            ws_path: default_ws_path(),
            ws_send: String::new(),
            ws_expect: String::new(),
            ws_subprotocol: String::new(),
            route_on: RouteOn::Ws,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    #[serde(default = "default_hb_interval")]
    pub client_interval: Dur,
    #[serde(default = "default_hb_timeout")]
    pub client_timeout: Dur,
    #[serde(default = "default_hb_interval")]
    pub backend_interval: Dur,
    #[serde(default = "default_hb_timeout")]
    pub backend_timeout: Dur,
    #[serde(default)]
    pub app_ping: String,
    #[serde(default)]
    pub app_pong: String,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            client_interval: default_hb_interval(),
            client_timeout: default_hb_timeout(),
            backend_interval: default_hb_interval(),
            backend_timeout: default_hb_timeout(),
            app_ping: String::new(),
            app_pong: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
    #[serde(default)]
    pub messages_per_sec: u32,
    #[serde(default)]
    pub burst: u32,
    #[serde(default)]
    pub bytes_per_sec: u64,
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    #[serde(default = "default_slow_consumer_timeout")]
    pub slow_consumer_timeout: Dur,
    #[serde(default = "default_true")]
    pub validate_utf8: bool,
    #[serde(default)]
    pub validate_json: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: default_max_message_bytes(),
            messages_per_sec: 0,
            burst: 0,
            bytes_per_sec: 0,
            max_buffered_bytes: default_max_buffered_bytes(),
            slow_consumer_timeout: default_slow_consumer_timeout(),
            validate_utf8: true,
            validate_json: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
    Forward,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectWith {
    #[default]
    Status,
    Close,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    #[serde(default = "default_token_sources")]
    pub token_from: Vec<Source>,
    #[serde(default = "default_true")]
    pub strip_token: bool,
    #[serde(default)]
    pub jwt_secret: String,
    #[serde(default)]
    pub jwt_public_key: String,
    #[serde(default)]
    pub jwt_issuer: String,
    #[serde(default)]
    pub jwt_audience: String,
    #[serde(default)]
    pub jwt_leeway: Dur,
    #[serde(default = "default_client_id_claim")]
    pub client_id_claim: String,
    #[serde(default)]
    pub forward_url: String,
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// How long the forward-auth call may take; past it the upgrade is refused.
    #[serde(default = "default_forward_timeout")]
    pub forward_timeout: Dur,
    #[serde(default = "default_first_message_timeout")]
    pub first_message_timeout: Dur,
    #[serde(default)]
    pub reject_with: RejectWith,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            token_from: default_token_sources(),
            strip_token: true,
            jwt_secret: String::new(),
            jwt_public_key: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_leeway: Dur::default(),
            client_id_claim: default_client_id_claim(),
            forward_url: String::new(),
            forward_headers: Vec::new(),
            forward_timeout: default_forward_timeout(),
            first_message_timeout: default_first_message_timeout(),
            reject_with: RejectWith::Status,
        }
    }
}

fn default_origins() -> Vec<String> {
    vec!["*".to_string()]
}
fn default_max_connections() -> usize {
    100_000
}
fn default_handshake_timeout() -> Dur {
    Dur::secs(10)
}
fn default_shutdown_grace() -> Dur {
    Dur::secs(30)
}
fn default_max_request_head_bytes() -> usize {
    // Browsers send 1-2 KiB; cookies can add a few more. nginx's default
    // large_client_header_buffers is 4 x 8 KiB.
    16 * 1024
}
fn default_admin_listen() -> Listen {
    Listen(vec!["127.0.0.1:9090".parse().expect("constant address")])
}
fn default_client_id_sources() -> Vec<Source> {
    vec![
        Source::Query("client_id".into()),
        Source::Header("x-client-id".into()),
        Source::Cookie("client_id".into()),
    ]
}
fn default_vnodes() -> u32 {
    160
}
fn default_connect_timeout() -> Dur {
    Dur::secs(5)
}
fn default_connect_retries() -> u32 {
    1
}
fn default_weight() -> u32 {
    1
}
fn default_health_interval() -> Dur {
    Dur::secs(5)
}
fn default_health_timeout() -> Dur {
    Dur::secs(2)
}
fn default_two() -> u32 {
    2
}
fn default_http_path() -> String {
    "/healthz".into()
}
fn default_ws_path() -> String {
    "/".into()
}
fn default_hb_interval() -> Dur {
    Dur::secs(30)
}
fn default_hb_timeout() -> Dur {
    Dur::secs(10)
}
fn default_max_message_bytes() -> u64 {
    1 << 20
}
fn default_max_buffered_bytes() -> usize {
    1 << 20
}
fn default_slow_consumer_timeout() -> Dur {
    Dur::secs(30)
}
fn default_true() -> bool {
    true
}
fn default_token_sources() -> Vec<Source> {
    vec![
        Source::Query("token".into()),
        Source::Header("authorization".into()),
        Source::Cookie("token".into()),
    ]
}
fn default_client_id_claim() -> String {
    "sub".into()
}
fn default_forward_timeout() -> Dur {
    Dur::secs(5)
}
fn default_first_message_timeout() -> Dur {
    Dur::secs(5)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            line: None,
            key: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| from_toml(text, &e))?;
        config.validate(text)?;
        Ok(config)
    }

    /// Checks that span keys: things serde cannot see one field at a time.
    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let err = |section: &str, key: &str, index: Option<usize>, message: String| {
            let line = locate(text, section, key, index);
            Err(ConfigError {
                line,
                key: Some(if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                }),
                message,
            })
        };
        if self.backends.is_empty() {
            return Err(ConfigError {
                line: None,
                key: Some("backends".into()),
                message: "at least one [[backends]] entry is required".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            if b.name.is_empty()
                || !b
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return err(
                    "backends",
                    "name",
                    Some(i),
                    format!(
                        "backend name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                        b.name
                    ),
                );
            }
            if !names.insert(b.name.as_str()) {
                return err(
                    "backends",
                    "name",
                    Some(i),
                    format!("backend name {:?} is used twice", b.name),
                );
            }
            if b.weight == 0 || b.weight > 1000 {
                return err(
                    "backends",
                    "weight",
                    Some(i),
                    format!("weight {} must be between 1 and 1000", b.weight),
                );
            }
            if (!b.ca.is_empty() || b.tls_insecure_skip_verify) && !b.url.tls {
                return err(
                    "backends",
                    if b.ca.is_empty() {
                        "tls_insecure_skip_verify"
                    } else {
                        "ca"
                    },
                    Some(i),
                    "only applies to a wss:// backend".into(),
                );
            }
        }
        for o in &self.server.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return err(
                    "server",
                    "allowed_origins",
                    None,
                    format!("origin {o:?} must be \"*\" or start with http:// or https://"),
                );
            }
        }
        if self.server.max_connections == 0 {
            return err(
                "server",
                "max_connections",
                None,
                "must be at least 1".into(),
            );
        }
        if self.server.max_request_head_bytes < 8192 {
            return err(
                "server",
                "max_request_head_bytes",
                None,
                "must be at least 8192 (hyper's smallest read buffer)".into(),
            );
        }
        let r = &self.routing;
        if r.client_id.contains(&Source::FirstMessage) {
            return err(
                "routing",
                "client_id",
                None,
                "\"first_message\" is only a token source ([auth] token_from)".into(),
            );
        }
        if r.vnodes == 0 || r.vnodes > 10_000 {
            return err(
                "routing",
                "vnodes",
                None,
                format!("{} must be between 1 and 10000", r.vnodes),
            );
        }
        if !(r.load_factor == 0.0 || (r.load_factor > 1.0 && r.load_factor.is_finite())) {
            return err(
                "routing",
                "load_factor",
                None,
                format!(
                    "{} must be 0 (off) or greater than 1 (e.g. 1.25)",
                    r.load_factor
                ),
            );
        }
        if r.connect_timeout.is_zero() {
            return err(
                "routing",
                "connect_timeout",
                None,
                "must be greater than 0".into(),
            );
        }
        let h = &self.health;
        if h.fall == 0 || h.rise == 0 {
            return err(
                "health",
                if h.fall == 0 { "fall" } else { "rise" },
                None,
                "must be at least 1".into(),
            );
        }
        if h.interval.is_zero() || h.timeout.is_zero() {
            return err(
                "health",
                if h.interval.is_zero() {
                    "interval"
                } else {
                    "timeout"
                },
                None,
                "must be greater than 0".into(),
            );
        }
        for (key, p) in [("http_path", &h.http_path), ("ws_path", &h.ws_path)] {
            if !p.is_empty() && !p.starts_with('/') {
                return err(
                    "health",
                    key,
                    None,
                    format!("{p:?} must be empty or start with '/'"),
                );
            }
        }
        if !h.ws_expect.is_empty() && h.ws_send.is_empty() {
            return err(
                "health",
                "ws_expect",
                None,
                "needs ws_send (the message whose reply is checked)".into(),
            );
        }
        let hb = &self.heartbeat;
        for (key, iv, to) in [
            ("client_timeout", hb.client_interval, hb.client_timeout),
            ("backend_timeout", hb.backend_interval, hb.backend_timeout),
        ] {
            if !iv.is_zero() && to.is_zero() {
                return err(
                    "heartbeat",
                    key,
                    None,
                    "must be greater than 0 while its interval is on".into(),
                );
            }
        }
        if hb.app_ping.is_empty() != hb.app_pong.is_empty() {
            return err(
                "heartbeat",
                if hb.app_ping.is_empty() {
                    "app_ping"
                } else {
                    "app_pong"
                },
                None,
                "app_ping and app_pong must be set together".into(),
            );
        }
        if hb.app_ping.len() > 125 {
            return err(
                "heartbeat",
                "app_ping",
                None,
                "must be at most 125 bytes".into(),
            );
        }
        let l = &self.limits;
        if l.max_message_bytes == 0 {
            return err(
                "limits",
                "max_message_bytes",
                None,
                "must be at least 1".into(),
            );
        }
        if l.max_buffered_bytes < 1024 {
            return err(
                "limits",
                "max_buffered_bytes",
                None,
                "must be at least 1024".into(),
            );
        }
        if l.burst > 0 && l.messages_per_sec == 0 {
            return err("limits", "burst", None, "needs messages_per_sec".into());
        }
        let a = &self.auth;
        match a.mode {
            AuthMode::None => {}
            AuthMode::Jwt => {
                if a.jwt_secret.is_empty() == a.jwt_public_key.is_empty() {
                    return err("auth", "jwt_secret", None,
                        "mode \"jwt\" needs exactly one of jwt_secret (HS256) or jwt_public_key (RS256/ES256)".into());
                }
            }
            AuthMode::Forward => {
                if !a.forward_url.starts_with("http://") {
                    return err("auth", "forward_url", None,
                        "mode \"forward\" needs an http:// URL (e.g. \"http://127.0.0.1:8000/auth\")".into());
                }
            }
        }
        if a.mode != AuthMode::None && a.token_from.is_empty() && a.mode == AuthMode::Jwt {
            return err(
                "auth",
                "token_from",
                None,
                "needs at least one source".into(),
            );
        }
        if a.token_from.contains(&Source::FirstMessage) && a.token_from.len() > 1 {
            return err(
                "auth",
                "token_from",
                None,
                "\"first_message\" cannot be combined with other sources".into(),
            );
        }
        if a.token_from.contains(&Source::FirstMessage) && a.mode == AuthMode::Forward {
            return err(
                "auth",
                "token_from",
                None,
                "\"first_message\" needs mode \"jwt\"".into(),
            );
        }
        Ok(())
    }
}

/// Maps a toml/serde error to a [`ConfigError`] with the line and dotted key.
fn from_toml(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let key = line.and_then(|l| key_at_line(text, l));
    ConfigError {
        line,
        key,
        message: e.message().trim().to_string(),
    }
}

/// The dotted key whose value sits on `line` (1-based), from the nearest
/// table header above it and the `key =` on the line itself.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line - 1)?.trim();
    let header = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    if here.starts_with('[') {
        return Some(
            here.trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        );
    }
    let key = here.split('=').next()?.trim();
    if key.is_empty() {
        return header;
    }
    Some(match header {
        Some(h) => format!("{h}.{key}"),
        None => key.to_string(),
    })
}

/// Finds the line of `key` in table `section` (the `index`th of an array of
/// tables), or of the section header when the key is not written.
fn locate(text: &str, section: &str, key: &str, index: Option<usize>) -> Option<usize> {
    let mut current = String::new();
    let mut seen = 0usize;
    let mut header_line = None;
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.starts_with('[') {
            current = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == section {
                seen += 1;
                if index.is_none_or(|ix| ix + 1 == seen) {
                    header_line = Some(i + 1);
                }
            }
            continue;
        }
        let in_target = current == section && index.is_none_or(|ix| ix + 1 == seen);
        if in_target && l.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    header_line
}

/// The embedded default of `wsgate demo`: two in-process echo backends whose
/// ports are filled in at start.
pub fn demo_config(backend_addrs: &[SocketAddr]) -> Config {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[admin]\nlisten = \"127.0.0.1:9090\"\n\n\
         [heartbeat]\napp_ping = '{\"type\":\"ping\"}'\napp_pong = '{\"type\":\"pong\"}'\n\n\
         [health]\nhttp_path = \"\"\ninterval = \"2s\"\n",
    );
    for (i, a) in backend_addrs.iter().enumerate() {
        text.push_str(&format!(
            "\n[[backends]]\nname = \"demo-{}\"\nurl = \"ws://{a}\"\n",
            i + 1
        ));
    }
    Config::parse(&text).expect("the embedded demo config is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[server]\nlisten = \"127.0.0.1:8080\"\n[[backends]]\nname = \"b1\"\nurl = \"ws://127.0.0.1:9001\"\n";

    #[test]
    fn minimal_config_gets_spec_defaults() {
        let c = Config::parse(MIN).unwrap();
        assert_eq!(c.server.max_connections, 100_000);
        assert_eq!(c.server.handshake_timeout.get(), Duration::from_secs(10));
        assert_eq!(c.routing.vnodes, 160);
        assert_eq!(c.health.route_on, RouteOn::Ws);
        assert_eq!(c.heartbeat.client_interval.get(), Duration::from_secs(30));
        assert_eq!(c.limits.max_message_bytes, 1 << 20);
        assert_eq!(c.auth.mode, AuthMode::None);
        assert_eq!(c.admin.listen.0[0].to_string(), "127.0.0.1:9090");
        assert_eq!(c.backends[0].url.port, 9001);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3x").is_err());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = format!("{MIN}[heartbeat]\nclient_intervall = \"3s\"\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert_eq!(e.key.as_deref(), Some("heartbeat.client_intervall"));
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_and_line() {
        let text = format!("{MIN}[heartbeat]\nclient_interval = \"3 parsecs\"\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.line, Some(7));
        assert_eq!(e.key.as_deref(), Some("heartbeat.client_interval"));
    }

    #[test]
    fn cross_field_errors_name_key_and_line() {
        let text = format!("{MIN}[[backends]]\nname = \"b1\"\nurl = \"ws://127.0.0.1:9002\"\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backends.name"));
        assert_eq!(e.line, Some(7), "{e}");
        let text = format!("{MIN}[routing]\nload_factor = 0.5\n");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("routing.load_factor"), Some(7))
        );
    }

    #[test]
    fn missing_backends_and_listen_are_errors() {
        assert!(Config::parse("[server]\nlisten = \"127.0.0.1:1\"\n").is_err());
        let e = Config::parse("[[backends]]\nname=\"a\"\nurl=\"ws://a:1\"\n").unwrap_err();
        assert!(e.message.contains("server"), "{e}");
    }

    #[test]
    fn backend_urls() {
        let u = BackendUrl::parse("wss://api.example.com/socket/").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("api.example.com", 443, "/socket")
        );
        assert_eq!(u.authority(), "api.example.com");
        assert!(BackendUrl::parse("http://x").is_err());
        assert_eq!(
            BackendUrl::parse("ws://[::1]:9000").unwrap().authority(),
            "[::1]:9000"
        );
    }

    #[test]
    fn example_file_is_valid() {
        let text = include_str!("../gateway.toml.example");
        Config::parse(text).unwrap();
    }
}
