//! `[cluster]`: several gateways acting as one system through Redis
//! (presence, commands by client ID, topics, a per-client cap). Off unless
//! `redis_url` is set; a single gateway needs no Redis.

use serde::Deserialize;

use crate::config::types::Dur;
use crate::config::validate::Invalid;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS).
    /// Empty: cluster features off.
    #[serde(default)]
    pub redis_url: String,
    /// A PEM file of the CA(s) that signed the Redis server's certificate
    /// (`rediss://` only), trusted instead of the system roots.
    #[serde(default)]
    pub redis_ca: String,
    /// This gateway's name in the cluster; empty: the host name. Must be
    /// unique per gateway.
    #[serde(default)]
    pub node: String,
    /// Prefix of every Redis key and channel, so several clusters (or other
    /// applications) can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Connections one client ID may hold across all gateways; over it the
    /// oldest are closed with 4009. 0 = no cap.
    #[serde(default)]
    pub max_connections_per_client: usize,
    /// A gateway's presence expires this long after its last refresh (it
    /// refreshes every third of it), so a crashed gateway's entries vanish.
    #[serde(default = "default_presence_ttl")]
    pub presence_ttl: Dur,
    /// A cluster admin call that needs Redis fails (503) after this.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Dur,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            redis_ca: String::new(),
            node: String::new(),
            key_prefix: default_key_prefix(),
            max_connections_per_client: 0,
            presence_ttl: default_presence_ttl(),
            command_timeout: default_command_timeout(),
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    /// `node`, else the host name (from the kernel), else "wsgate".
    pub fn node_name(&self) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::env::var("HOSTNAME"))
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| valid_name(h))
            .unwrap_or_else(|| "wsgate".to_string())
    }
}

fn default_key_prefix() -> String {
    "wsgate:".into()
}

fn default_presence_ttl() -> Dur {
    Dur::secs(30)
}

fn default_command_timeout() -> Dur {
    Dur::secs(2)
}

/// Node names and key prefixes go into Redis keys, channel names and
/// member strings (`node/conn`): visible ASCII without `/` or `*`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'*' | b'?' | b'[' | b']'))
}

fn invalid(key: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        section: "cluster",
        index: None,
        key,
        message: message.into(),
    }
}

pub fn validate(c: &ClusterConfig) -> Result<(), Invalid> {
    if !c.enabled() {
        if c.max_connections_per_client > 0 {
            return Err(invalid(
                "max_connections_per_client",
                "a cap across gateways needs [cluster] redis_url",
            ));
        }
        return Ok(());
    }
    if !(c.redis_url.starts_with("redis://") || c.redis_url.starts_with("rediss://")) {
        return Err(invalid(
            "redis_url",
            "must start with redis:// or rediss:// (TLS)",
        ));
    }
    // Parsing only: no connection is made here.
    if let Err(e) = redis::Client::open(c.redis_url.as_str()) {
        return Err(invalid("redis_url", format!("not a Redis URL: {e}")));
    }
    if !c.redis_ca.is_empty() && !c.redis_url.starts_with("rediss://") {
        return Err(invalid("redis_ca", "needs a rediss:// (TLS) redis_url"));
    }
    if !c.node.is_empty() && !valid_name(&c.node) {
        return Err(invalid(
            "node",
            "1 to 128 visible ASCII characters, without / * ? [ ]",
        ));
    }
    if !valid_name(&c.key_prefix) {
        return Err(invalid(
            "key_prefix",
            "1 to 128 visible ASCII characters, without / * ? [ ]",
        ));
    }
    if c.presence_ttl.get() < std::time::Duration::from_secs(1) {
        return Err(invalid("presence_ttl", "must be at least 1s"));
    }
    if c.command_timeout.is_zero() {
        return Err(invalid("command_timeout", "must be more than 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn parse(cluster: &str) -> Result<Config, String> {
        Config::parse(&format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[[backends]]\nname = \"a\"\nurl = \"ws://127.0.0.1:1\"\n[cluster]\n{cluster}"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_and_cap_needs_redis() {
        let c = parse("").unwrap();
        assert!(!c.cluster.enabled());
        let e = parse("max_connections_per_client = 2").unwrap_err();
        assert!(e.contains("cluster.max_connections_per_client"), "{e}");
    }

    #[test]
    fn urls_and_names() {
        assert!(parse("redis_url = \"redis://:pw@127.0.0.1:6379/0\"").is_ok());
        assert!(parse("redis_url = \"rediss://user:pw@redis.example:6380\"").is_ok());
        let e = parse("redis_url = \"http://x\"").unwrap_err();
        assert!(e.contains("cluster.redis_url"), "{e}");
        let e = parse("redis_url = \"redis://x\"\nnode = \"a/b\"").unwrap_err();
        assert!(e.contains("cluster.node"), "{e}");
        let e = parse("redis_url = \"redis://x\"\nkey_prefix = \"\"").unwrap_err();
        assert!(e.contains("cluster.key_prefix"), "{e}");
        let e = parse("redis_url = \"redis://x\"\nredis_ca = \"/ca.pem\"").unwrap_err();
        assert!(e.contains("cluster.redis_ca"), "{e}");
        let e = parse("redis_url = \"redis://x\"\npresence_ttl = \"100ms\"").unwrap_err();
        assert!(e.contains("cluster.presence_ttl"), "{e}");
    }
}
