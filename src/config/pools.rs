//! `[pools.NAME]`: one pool's own routing, health checks and limits.
//!
//! A pool section has sub-tables named like the top-level sections
//! (`[pools.api.routing]`, `.health`, `.limits`, `.server`); each key
//! written there overrides the top-level key of the same name for that pool
//! only, and every key not written is inherited. The settings in effect are
//! the top-level table with the pool's keys laid over it, read by the same
//! serde schema and checked by the same `validate` functions as the
//! top-level section, so a pool can hold nothing the top level could not.
//!
//! Some keys hold for the whole process and are refused in a pool section
//! ([`PROCESS_WIDE`]): they act before a request's route is known, or they
//! are one thing per listener or per process.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::config::ConfigError;
use crate::config::schema::{
    Config, HealthConfig, LimitsConfig, RoutingConfig, default_max_request_body_bytes,
};
use crate::config::spans::{Seg, Spans};
use crate::config::validate::{self, Invalid};

/// The settings one pool runs with: its `[pools.NAME]` keys over the
/// top-level sections.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub routing: RoutingConfig,
    pub health: HealthConfig,
    pub limits: LimitsConfig,
    /// `[server] max_request_body_bytes`, the one per-pool key of `[server]`.
    pub max_request_body_bytes: u64,
}

impl PoolSettings {
    /// The top-level sections as they are: a pool without `[pools.NAME]`.
    pub fn top(c: &Config) -> PoolSettings {
        PoolSettings {
            routing: c.routing.clone(),
            health: c.health.clone(),
            limits: c.limits.clone(),
            max_request_body_bytes: c.server.max_request_body_bytes,
        }
    }
}

impl Config {
    /// The settings in effect for pool `name`.
    pub fn pool_settings(&self, name: &str) -> PoolSettings {
        self.pool_overrides
            .get(name)
            .cloned()
            .unwrap_or_else(|| PoolSettings::top(self))
    }
}

/// The sections a pool may set keys of.
const SECTIONS: [&str; 4] = ["server", "routing", "health", "limits"];

/// Keys of those sections that hold for the whole gateway, and why.
const PROCESS_WIDE: &[(&str, &[&str], &str)] = &[
    (
        "server",
        &[
            "listen",
            "tls",
            "max_connections",
            "max_connections_per_ip",
            "handshake_timeout",
            "max_request_head_bytes",
        ],
        "it acts on the client connection before any request names a route",
    ),
    (
        "server",
        &["allowed_origins", "require_origin", "shutdown_grace"],
        "it holds for the whole gateway (set it in [server])",
    ),
    (
        "routing",
        &["affinity_cookie", "affinity_key"],
        "a browser sends one affinity cookie for the whole host, whichever route it reaches, \
         and it names backends of every pool (set it in [routing])",
    ),
];

/// `[pools.NAME.server]`: its one per-pool key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolServer {
    #[serde(default = "default_max_request_body_bytes")]
    max_request_body_bytes: u64,
}

/// Where an error points: a key path under `[pools.NAME]`.
struct At<'a> {
    spans: Option<&'a Spans<'a>>,
    pool: &'a str,
}

impl At<'_> {
    fn error(&self, rest: &[&str], message: String) -> ConfigError {
        let mut path = vec![Seg::Key("pools"), Seg::Key(self.pool)];
        path.extend(rest.iter().map(|k| Seg::Key(k)));
        let mut key = format!("pools.{}", self.pool);
        for k in rest {
            key.push('.');
            key.push_str(k);
        }
        ConfigError {
            line: self.spans.and_then(|s| s.line_of(&path)),
            key: Some(key),
            message,
        }
    }

    /// A broken `validate` rule of the pool's effective section: blamed on
    /// the pool's key (or its section, when the key is inherited).
    fn invalid(&self, inv: Invalid) -> ConfigError {
        self.error(&[inv.section, inv.key], inv.message)
    }
}

/// Checks every `[pools.NAME]` of `config` (parsed from `text`) and fills
/// `config.pool_overrides` with the settings in effect.
pub(super) fn resolve(text: &str, config: &mut Config) -> Result<(), ConfigError> {
    if config.pools.is_empty() {
        return Ok(());
    }
    let raw: Table = toml::from_str(text).map_err(|e| ConfigError {
        line: None,
        key: None,
        message: e.message().trim().to_string(),
    })?;
    let spans = Spans::parse(text);
    let mut overrides = std::collections::BTreeMap::new();
    for (name, table) in &config.pools {
        let at = At {
            spans: spans.as_ref(),
            pool: name,
        };
        if !config.backends.iter().any(|b| &b.pool == name) {
            return Err(at.error(&[], format!("no [[backends]] entry has pool = {name:?}")));
        }
        check_keys(&at, table)?;
        let routing: RoutingConfig = merged(&at, &raw, table, "routing")?;
        let health: HealthConfig = merged(&at, &raw, table, "health")?;
        let limits: LimitsConfig = merged(&at, &raw, table, "limits")?;
        let max_request_body_bytes = match table.get("server") {
            Some(server) => {
                let s: PoolServer = typed(server.clone()).map_err(|m| at.error(&["server"], m))?;
                s.max_request_body_bytes
            }
            None => config.server.max_request_body_bytes,
        };
        validate::routing(&routing).map_err(|i| at.invalid(i))?;
        validate::health(&health).map_err(|i| at.invalid(i))?;
        validate::limits(&limits).map_err(|i| at.invalid(i))?;
        overrides.insert(
            name.clone(),
            PoolSettings {
                routing,
                health,
                limits,
                max_request_body_bytes,
            },
        );
    }
    config.pool_overrides = overrides;
    Ok(())
}

/// Every sub-table is a per-pool section, every key in it a per-pool key
/// of the right type.
fn check_keys(at: &At<'_>, table: &Table) -> Result<(), ConfigError> {
    for (section, value) in table {
        if !SECTIONS.contains(&section.as_str()) {
            return Err(at.error(
                &[section],
                format!(
                    "not a per-pool key: a pool section holds the sub-tables {} only",
                    SECTIONS.join(", ")
                ),
            ));
        }
        let Some(keys) = value.as_table() else {
            return Err(at.error(
                &[section],
                format!("must be a table ([pools.{}.{section}])", at.pool),
            ));
        };
        for (key, value) in keys {
            if let Some((_, _, why)) = PROCESS_WIDE
                .iter()
                .find(|(s, ks, _)| s == section && ks.contains(&key.as_str()))
            {
                return Err(at.error(&[section, key], format!("not a per-pool key: {why}")));
            }
            // One key at a time, so a type error names its key.
            let one = Value::Table(Table::from_iter([(key.clone(), value.clone())]));
            let checked = match section.as_str() {
                "server" => typed::<PoolServer>(one).map(drop),
                "routing" => typed::<RoutingConfig>(one).map(drop),
                "health" => typed::<HealthConfig>(one).map(drop),
                _ => typed::<LimitsConfig>(one).map(drop),
            };
            checked.map_err(|m| at.error(&[section, key], m))?;
        }
    }
    Ok(())
}

/// The top-level `section` with the pool's keys of it laid over.
fn merged<T: DeserializeOwned>(
    at: &At<'_>,
    raw: &Table,
    pool: &Table,
    section: &str,
) -> Result<T, ConfigError> {
    let mut t = raw
        .get(section)
        .and_then(Value::as_table)
        .cloned()
        .unwrap_or_default();
    if let Some(over) = pool.get(section).and_then(Value::as_table) {
        t.extend(over.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    typed(Value::Table(t)).map_err(|m| at.error(&[section], m))
}

/// `v` read by the schema; the error's sentence (the values' own
/// parsers phrase theirs as sentences).
fn typed<T: DeserializeOwned>(v: Value) -> Result<T, String> {
    v.try_into()
        .map_err(|e: toml::de::Error| e.message().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DeflateMode, HostHeader};

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:8080\"\n\
        [[backends]]\nname = \"d\"\nurl = \"ws://127.0.0.1:9001\"\n\
        [[backends]]\nname = \"a\"\nurl = \"ws://127.0.0.1:9002\"\npool = \"api\"\n\
        [[routes]]\npath = \"/api\"\npool = \"api\"\n\
        [limits]\nmax_message_bytes = 1000\nmessages_per_sec = 10\nburst = 20\n";

    #[test]
    fn a_pool_key_overrides_one_key_and_inherits_the_rest() {
        let c = Config::parse(&format!(
            "{BASE}[pools.api.limits]\nmax_message_bytes = 50\n\
             [pools.api.routing]\nhost_header = \"backend\"\nclient_id = [\"header:x-user\"]\n\
             [pools.api.server]\nmax_request_body_bytes = 7\n"
        ))
        .unwrap();
        let api = c.pool_settings("api");
        assert_eq!(api.limits.max_message_bytes, 50);
        assert_eq!((api.limits.messages_per_sec, api.limits.burst), (10, 20));
        assert_eq!(api.limits.permessage_deflate, DeflateMode::Inspect);
        assert_eq!(api.routing.host_header, HostHeader::Backend);
        assert_eq!(api.routing.vnodes, 160);
        assert_eq!(api.max_request_body_bytes, 7);
        let d = c.pool_settings("default");
        assert_eq!(d.limits.max_message_bytes, 1000);
        assert_eq!(d.routing.host_header, HostHeader::Auto);
        assert_eq!(d.max_request_body_bytes, 10 << 20);
    }

    #[test]
    fn errors_name_the_pool_key_and_its_line() {
        // BASE has 16 lines; the extra starts on line 17.
        let cases = [
            (
                "[pools.nope.limits]\nmax_message_bytes = 5\n",
                "pools.nope",
                17,
                "no [[backends]]",
            ),
            (
                "[pools.api.server]\nmax_connections = 5\n",
                "pools.api.server.max_connections",
                18,
                "not a per-pool key",
            ),
            (
                "[pools.api.routing]\nvnodes = 1\naffinity_cookie = \"x\"\n",
                "pools.api.routing.affinity_cookie",
                19,
                "not a per-pool key",
            ),
            (
                "[pools.api.auth]\nmode = \"jwt\"\n",
                "pools.api.auth",
                17,
                "not a per-pool key",
            ),
            // A bad value: the top-level section's own rule and message.
            (
                "[pools.api.routing]\nload_factor = 0.5\n",
                "pools.api.routing.load_factor",
                18,
                "greater than 1",
            ),
            // A type error, or a typo, names its key.
            (
                "[pools.api.health]\ninterval = \"soon\"\n",
                "pools.api.health.interval",
                18,
                "does not start with a number",
            ),
            (
                "[pools.api.limits]\nmax_mesage_bytes = 5\n",
                "pools.api.limits.max_mesage_bytes",
                18,
                "unknown field",
            ),
            // A rule across keys, `burst` inherited from [limits]: the pool's section.
            (
                "[pools.api.limits]\nmessages_per_sec = 0\n",
                "pools.api.limits.burst",
                17,
                "needs messages_per_sec",
            ),
        ];
        for (extra, key, line, says) in cases {
            let e = Config::parse(&format!("{BASE}{extra}")).expect_err(extra);
            assert_eq!((e.key.as_deref(), e.line), (Some(key), Some(line)), "{e}");
            assert!(e.message.contains(says), "{e}");
        }
        // A pool that sets passthrough itself warns under its own key.
        let c = Config::parse(&format!(
            "{BASE}[pools.api.limits]\npermessage_deflate = \"passthrough\"\n"
        ))
        .unwrap();
        let w = c.warnings();
        assert!(
            w.len() == 1 && w[0].contains("pools.api.limits.permessage_deflate"),
            "{w:?}"
        );
    }
}
