//! The configuration file: its TOML schema and defaults (`schema`), the
//! value types (`types`), the rules across keys (`validate`) and the key
//! lines for error messages (`spans`). Every error names the key and the
//! line it is on, in one sentence.
//!
//! This module only turns text into a checked [`Config`]; it opens no socket
//! and reads no file other than the config itself (certificate and key files
//! are read by `tls`, so a reload re-reads them too).

pub mod cluster;
mod pools;
mod schema;
mod spans;
mod types;
mod validate;

use std::fmt;
use std::path::Path;

pub use pools::PoolSettings;
pub use schema::{
    AdminConfig, AuthConfig, AuthMode, BackendConfig, Config, DEFAULT_POOL, DeflateMode,
    HealthConfig, HeartbeatConfig, HostHeader, LimitsConfig, LogConfig, LogFormat, RejectWith,
    ResumeConfig, RouteConfig, RouteOn, RoutingConfig, Serve, ServerConfig, TlsConfig,
};
pub use types::{BackendUrl, Dur, Listen, Source, parse_duration};
pub use validate::MIN_REQUEST_HEAD_BYTES;

use spans::{Seg, Spans};

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

impl ConfigError {
    /// An error blamed on `section.key` (of the `index`th array entry) of
    /// `text`, with that key's line: for problems found after parsing, such
    /// as a file the key names that cannot be read.
    pub fn at(
        text: &str,
        section: &'static str,
        index: Option<usize>,
        key: &'static str,
        message: String,
    ) -> ConfigError {
        from_invalid(
            text,
            validate::Invalid {
                section,
                index,
                key,
                message,
            },
        )
    }
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

    /// Reads a config file, returning its text too (for [`ConfigError::at`]).
    pub fn load_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            line: None,
            key: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Ok((Config::parse(&text)?, text))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| from_toml(text, &e))?;
        validate::config(&config).map_err(|inv| from_invalid(text, inv))?;
        // After the top-level sections: a pool's settings start from them.
        pools::resolve(text, &mut config)?;
        Ok(config)
    }

    /// Settings that are valid but switch a promise off: `wsgate check`
    /// prints these (one sentence each) and still succeeds.
    pub fn warnings(&self) -> Vec<String> {
        // The top level, and each pool that sets the mode itself (the
        // others inherit the top level's and its warning).
        let mut sections = vec![("limits".to_string(), &self.limits)];
        sections.extend(self.pool_overrides.iter().filter_map(|(name, p)| {
            let written = self
                .pools
                .get(name)?
                .get("limits")?
                .get("permessage_deflate");
            written.map(|_| (format!("pools.{name}.limits"), &p.limits))
        }));
        let mut w = Vec::new();
        for (section, l) in sections {
            if l.permessage_deflate != DeflateMode::Passthrough {
                continue;
            }
            let mut off = vec!["max_message_bytes counts compressed bytes"];
            if l.validate_utf8 {
                off.push("validate_utf8");
            }
            if l.validate_json {
                off.push("validate_json");
            }
            if !self.heartbeat.app_ping.is_empty() {
                off.push("app_ping");
            }
            w.push(format!(
                "config key `{section}.permessage_deflate` is \"passthrough\": for compressed messages {} {} off",
                off.join(", "),
                if off.len() == 1 { "is the only limit, the inflated size is" } else { "are" },
            ));
        }
        w
    }
}

/// A toml/serde error, with the line and dotted key its span points at.
fn from_toml(text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let line = span.as_ref().map(|s| Spans::line_at(text, s.start));
    let key = span.and_then(|s| Spans::parse(text).and_then(|sp| sp.key_at(s.start)));
    ConfigError {
        line,
        key,
        message: e.message().trim().to_string(),
    }
}

/// A broken rule, with the line of the key it blames.
fn from_invalid(text: &str, inv: validate::Invalid) -> ConfigError {
    let mut path = Vec::with_capacity(4);
    // A nested section ("server.tls") is one table per dotted part.
    path.extend(
        inv.section
            .split('.')
            .filter(|s| !s.is_empty())
            .map(Seg::Key),
    );
    if let Some(i) = inv.index {
        path.push(Seg::Index(i));
    }
    path.push(Seg::Key(inv.key));
    let line = Spans::parse(text).and_then(|s| s.line_of(&path));
    ConfigError {
        line,
        key: Some(if inv.section.is_empty() {
            inv.key.to_string()
        } else {
            format!("{}.{}", inv.section, inv.key)
        }),
        message: inv.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        assert_eq!(c.limits.permessage_deflate, DeflateMode::Inspect);
        assert!(c.warnings().is_empty());
        assert_eq!(c.auth.mode, AuthMode::None);
        assert_eq!(c.admin.listen.0[0].to_string(), "127.0.0.1:9090");
        assert_eq!(c.backends[0].url.port, 9001);
    }

    #[test]
    fn passthrough_deflate_warns_which_promises_are_off() {
        let c = Config::parse(&format!(
            "{MIN}[limits]\npermessage_deflate = \"passthrough\"\n"
        ))
        .unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("validate_utf8") && w[0].contains("max_message_bytes"),
            "{w:?}"
        );
        let c = Config::parse(&format!("{MIN}[limits]\npermessage_deflate = \"off\"\n")).unwrap();
        assert!(c.warnings().is_empty());
        let e =
            Config::parse(&format!("{MIN}[limits]\npermessage_deflate = \"zip\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.permessage_deflate"), "{e}");
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
        let text = include_str!("../../gateway.toml.example");
        Config::parse(text).unwrap();
    }
}

/// Issue 13 item 5: values the runtime assumes are refused at load, with
/// key and line, instead of reaching a panic or a broken frame.
#[cfg(test)]
mod load_time_rules {
    use super::*;

    const MIN: &str = "[server]\nlisten = \"127.0.0.1:8080\"\n[[backends]]\nname = \"b1\"\nurl = \"ws://127.0.0.1:9001\"\n";

    /// A TOML basic-string body for `s`: control characters as \uXXXX.
    fn toml_escape(s: &str) -> String {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    format!("\\u{:04X}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    fn refused(extra: &str, key: &str, line: usize) {
        let text = format!("{MIN}{extra}");
        let e = Config::parse(&text).expect_err(&text);
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some(key), Some(line)),
            "{e}\n{text}"
        );
    }

    #[test]
    fn app_pong_over_125_bytes() {
        let pong = "p".repeat(126);
        refused(
            &format!("[heartbeat]\napp_ping = \"x\"\napp_pong = \"{pong}\"\n"),
            "heartbeat.app_pong",
            8,
        );
        let ok = "p".repeat(125);
        Config::parse(&format!(
            "{MIN}[heartbeat]\napp_ping = \"x\"\napp_pong = \"{ok}\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn paths_that_are_not_request_targets() {
        for bad in ["/a b", "/caf\u{e9}", "/x\u{1}", "/tab\there"] {
            let text = MIN.replace("9001\"", &format!("9001{}\"", toml_escape(bad)));
            let e = Config::parse(&text).expect_err(bad);
            assert_eq!(
                (e.key.as_deref(), e.line),
                (Some("backends.url"), Some(5)),
                "{e}"
            );
            for key in ["http_path", "ws_path"] {
                refused(
                    &format!("[health]\n{key} = \"{}\"\n", toml_escape(bad)),
                    &format!("health.{key}"),
                    7,
                );
            }
        }
        Config::parse(&format!(
            "{MIN}[health]\nws_path = \"/socket.io/?EIO=4&transport=websocket\"\n"
        ))
        .unwrap();
        refused("[health]\nws_path = \"/ws#frag\"\n", "health.ws_path", 7);
    }

    #[test]
    fn zero_durations_that_break_connections() {
        let text = MIN.replace(
            "listen = \"127.0.0.1:8080\"\n",
            "listen = \"127.0.0.1:8080\"\nhandshake_timeout = \"0s\"\n",
        );
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("server.handshake_timeout"), Some(3)),
            "{e}"
        );
        refused(
            "[limits]\nslow_consumer_timeout = \"0s\"\n",
            "limits.slow_consumer_timeout",
            7,
        );
        refused(
            "[auth]\nforward_timeout = \"0s\"\n",
            "auth.forward_timeout",
            7,
        );
        refused(
            "[auth]\nfirst_message_timeout = \"0\"\n",
            "auth.first_message_timeout",
            7,
        );
    }

    #[test]
    fn origin_with_a_path() {
        let text = MIN.replace(
            "listen = \"127.0.0.1:8080\"\n",
            "listen = \"127.0.0.1:8080\"\nallowed_origins = [\"https://a.example/app\"]\n",
        );
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("server.allowed_origins"), Some(3)),
            "{e}"
        );
        let text = MIN.replace(
            "listen = \"127.0.0.1:8080\"\n",
            "listen = \"127.0.0.1:8080\"\nallowed_origins = [\"https://a.example/\", \"http://*.b.example:8080\"]\n",
        );
        Config::parse(&text).unwrap();
    }

    #[test]
    fn admin_token_rules_and_panic_threshold() {
        refused(
            "[admin]\ntoken = \"0123456789abcdef\"\ntoken_file = \"/x\"\n",
            "admin.token_file",
            8,
        );
        refused("[admin]\ntoken = \"short\"\n", "admin.token", 7);
        refused(
            "[admin]\nprotect_metrics = true\n",
            "admin.protect_metrics",
            7,
        );
        // Found by tests/proptest_config.rs: 4294967295 retries sized a
        // Vec of 32 GiB per upgrade (an abort, not even a panic).
        refused(
            "[routing]\nconnect_retries = 4294967295\n",
            "routing.connect_retries",
            7,
        );
        refused(
            "[health]\npanic_threshold = 1.5\n",
            "health.panic_threshold",
            7,
        );
        let c = Config::parse(MIN).unwrap();
        assert_eq!(c.health.panic_threshold, 0.5);
        assert!(c.admin.token.is_empty() && !c.admin.protect_metrics);
    }
}
