//! The TOML schema: one struct per section, every key with its default
//! (SPEC.md and gateway.toml.example list the same). Unknown keys are errors
//! (`deny_unknown_fields`), so a typo never silently falls back to a
//! default. Cross-key rules live in `validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::pools::PoolSettings;
use crate::config::types::{BackendUrl, Dur, Listen, Source};

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
    /// Host and path prefix -> pool. None: everything goes to the default pool.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub resume: ResumeConfig,
    #[serde(default)]
    pub cluster: crate::config::cluster::ClusterConfig,
    /// `[pools.NAME]` as written: per pool, sub-tables named like the
    /// top-level sections whose keys override theirs (`config::pools`
    /// checks them; raw here, so every error can name `pools.NAME.x.y`).
    #[serde(default)]
    pub pools: BTreeMap<String, toml::Table>,
    /// The settings in effect of each pool that has a `[pools.NAME]`
    /// section, filled by `Config::parse`; other pools use the top-level
    /// sections as they are ([`Config::pool_settings`]).
    #[serde(skip)]
    pub pool_overrides: BTreeMap<String, PoolSettings>,
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
    /// Largest plain-HTTP request body proxied; over it: 413. 0 = no limit.
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: u64,
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
    /// Bearer token every state-changing endpoint (every POST) requires.
    #[serde(default)]
    pub token: String,
    /// A file holding the token (a Kubernetes Secret mount); trailing
    /// whitespace is ignored. At most one of `token` / `token_file`.
    #[serde(default)]
    pub token_file: String,
    /// `/metrics` needs the token too.
    #[serde(default)]
    pub protect_metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: String::new(),
            token_file: String::new(),
            protect_metrics: false,
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
    /// Plain HTTP: the backend's response head must arrive within this; else 504.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Dur,
    /// Name of the affinity cookie the gateway issues; "" = no cookie.
    #[serde(default = "default_affinity_cookie")]
    pub affinity_cookie: String,
    /// Secret signing the affinity cookie; "" = a random key per process.
    #[serde(default)]
    pub affinity_key: String,
    /// The `Host` header toward the backend.
    #[serde(default)]
    pub host_header: HostHeader,
}

/// The `Host` header the backend gets (`[routing] host_header`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostHeader {
    /// Plain HTTP: the client's `Host`; upgrades: the backend URL's
    /// `host:port` (what wsgate did before the key existed).
    #[default]
    Auto,
    /// The client's `Host` (nginx: `proxy_set_header Host $host`), for
    /// plain HTTP and upgrades.
    Client,
    /// The backend URL's `host:port` (nginx's default for `proxy_pass`):
    /// virtual-hosted backends.
    Backend,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            client_id: default_client_id_sources(),
            vnodes: default_vnodes(),
            load_factor: 0.0,
            connect_timeout: default_connect_timeout(),
            connect_retries: default_connect_retries(),
            response_timeout: default_response_timeout(),
            affinity_cookie: default_affinity_cookie(),
            affinity_key: String::new(),
            host_header: HostHeader::Auto,
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
    /// The pool this backend belongs to; routes name pools.
    #[serde(default = "default_pool")]
    pub pool: String,
}

/// What a route carries: WebSocket upgrades, plain HTTP, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Serve {
    #[default]
    Both,
    Ws,
    Http,
}

/// One `[[routes]]` entry: requests whose host and path match go to `pool`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The `route` label of the HTTP metrics and the access log; "" = the pool's name.
    #[serde(default)]
    pub name: String,
    /// "" = any host; "app.example.com" exactly; "*.example.com" any subdomain.
    #[serde(default)]
    pub host: String,
    /// Path prefix, matched at a segment boundary.
    #[serde(default = "default_route_path")]
    pub path: String,
    #[serde(default = "default_pool")]
    pub pool: String,
    #[serde(default)]
    pub serve: Serve,
}

impl RouteConfig {
    /// The route's metric label.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.pool
        } else {
            &self.name
        }
    }
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
    /// Envoy's panic mode: when fewer than this share of the backends pass
    /// their checks, route to all of them as if up (0 turns it off).
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: f64,
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
            panic_threshold: default_panic_threshold(),
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
    #[serde(default)]
    pub permessage_deflate: DeflateMode,
}

/// What the gateway does with permessage-deflate (RFC 7692).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeflateMode {
    /// Negotiated end to end; the gateway inflates compressed messages to
    /// enforce its limits and validation (and asks the sides it inspects to
    /// compress without context takeover).
    #[default]
    Inspect,
    /// Negotiated end to end, compressed messages pass unjudged: their
    /// size counts compressed bytes, UTF-8, JSON and `app_ping` are off.
    Passthrough,
    /// The gateway removes the extension from the upgrade.
    Off,
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
            permessage_deflate: DeflateMode::Inspect,
        }
    }
}

/// `[resume]`: lossless reconnect for clients that ask for it (the
/// `resume` module). Off by default: nothing changes for anyone then.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeConfig {
    #[serde(default)]
    pub enabled: bool,
    /// How long a backend link is held after its client vanished.
    #[serde(default = "default_resume_window")]
    pub window: Dur,
    /// What one session may hold toward its client (sent, not yet
    /// acknowledged), in payload bytes.
    #[serde(default = "default_resume_buffer")]
    pub max_buffered_bytes: usize,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            enabled: false,
            window: default_resume_window(),
            max_buffered_bytes: default_resume_buffer(),
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
fn default_response_timeout() -> Dur {
    // Long-polling transports hold a request for up to ~25-60 s.
    Dur::secs(60)
}
fn default_affinity_cookie() -> String {
    "wsgate_affinity".into()
}
pub(super) fn default_max_request_body_bytes() -> u64 {
    10 << 20
}
/// The pool of backends without a `pool` key, and of requests no route matches.
pub const DEFAULT_POOL: &str = "default";
fn default_pool() -> String {
    DEFAULT_POOL.into()
}
fn default_route_path() -> String {
    "/".into()
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
fn default_panic_threshold() -> f64 {
    0.5
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
fn default_resume_window() -> Dur {
    Dur::secs(30)
}
fn default_resume_buffer() -> usize {
    1 << 20
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
