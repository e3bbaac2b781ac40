//! Property test (issue 13 item 5): arbitrary values for every config key
//! go through `Config::parse`; nothing panics, and for a bounded number of
//! the configs it accepts, a real gateway starts (`Gateway::bind` on port
//! 0) in front of a real echo backend and one client upgrades, sends a
//! message (the `app_ping` when one is set) and reads the answer, with no
//! panic on any thread (a panic hook counts them: a connection task's panic
//! would otherwise only be logged by tokio). Every wait is bounded.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::Message;
use wsgate::{Config, Gateway};

/// Gateways started per run: each costs two shard threads and some time.
const MAX_STARTS: usize = 24;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// A TOML basic string holding `s` exactly.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Clone, Copy)]
enum Kind {
    Str(&'static [&'static str]),
    Dur,
    Int,
    Float,
    Bool,
    StrList(&'static [&'static str]),
}

use Kind::*;

/// Just over the 125-byte control-size limit, and past the frame buffer.
const PONG_126: &str = concat!(
    "1234567890123456789012345678901234567890123456789012345678901234567890",
    "12345678901234567890123456789012345678901234567890123456"
);
const PONG_140: &str = concat!(
    "1234567890123456789012345678901234567890123456789012345678901234567890",
    "1234567890123456789012345678901234567890123456789012345678901234567890"
);

const SOURCES: &[&str] = &[
    "query:client_id",
    "header:x-client-id",
    "cookie:client_id",
    "query:token",
    "header:authorization",
    "first_message",
    "nope",
];

/// Every key of every section (except listen addresses, which the test
/// sets to port 0, and `[server.tls]`, whose files tests/check_files.rs
/// covers), with plausible values to mix with arbitrary ones.
const KEYS: &[(&str, &str, Kind)] = &[
    (
        "server",
        "allowed_origins",
        StrList(&[
            "*",
            "https://a.example",
            "http://*.b.example:8080",
            "https://a.example/app",
            "ftp://x",
        ]),
    ),
    ("server", "require_origin", Bool),
    ("server", "max_connections", Int),
    ("server", "max_connections_per_ip", Int),
    ("server", "handshake_timeout", Dur),
    ("server", "shutdown_grace", Dur),
    ("server", "max_request_head_bytes", Int),
    (
        "admin",
        "token",
        Str(&["", "0123456789abcdef0123", "short"]),
    ),
    ("admin", "protect_metrics", Bool),
    ("log", "format", Str(&["text", "json", "xml"])),
    ("routing", "client_id", StrList(SOURCES)),
    ("routing", "vnodes", Int),
    ("routing", "load_factor", Float),
    ("routing", "connect_timeout", Dur),
    ("routing", "connect_retries", Int),
    ("health", "interval", Dur),
    ("health", "timeout", Dur),
    ("health", "fall", Int),
    ("health", "rise", Int),
    (
        "health",
        "http_path",
        Str(&["", "/healthz", "/a b", "/caf\u{e9}", "healthz"]),
    ),
    (
        "health",
        "ws_path",
        Str(&[
            "",
            "/",
            "/ws",
            "/socket.io/?EIO=4&transport=websocket",
            "/x\u{1}",
            "/#f",
        ]),
    ),
    ("health", "ws_send", Str(&["", "ping", "\u{0}"])),
    ("health", "ws_expect", Str(&["", "pong"])),
    (
        "health",
        "ws_subprotocol",
        Str(&["", "chat", "a, b", "bad\u{7f}"]),
    ),
    ("health", "route_on", Str(&["ws", "http", "both", "none"])),
    ("health", "panic_threshold", Float),
    ("heartbeat", "client_interval", Dur),
    ("heartbeat", "client_timeout", Dur),
    ("heartbeat", "backend_interval", Dur),
    ("heartbeat", "backend_timeout", Dur),
    (
        "heartbeat",
        "app_ping",
        Str(&["ping", "ping", "{\"type\":\"ping\"}"]),
    ),
    (
        "heartbeat",
        "app_pong",
        Str(&["pong", "{\"type\":\"pong\"}", PONG_126, PONG_140]),
    ),
    ("limits", "max_message_bytes", Int),
    ("limits", "messages_per_sec", Int),
    ("limits", "burst", Int),
    ("limits", "bytes_per_sec", Int),
    ("limits", "max_buffered_bytes", Int),
    ("limits", "slow_consumer_timeout", Dur),
    ("limits", "validate_utf8", Bool),
    ("limits", "validate_json", Bool),
    ("auth", "mode", Str(&["none", "jwt", "forward", "basic"])),
    ("auth", "token_from", StrList(SOURCES)),
    ("auth", "strip_token", Bool),
    ("auth", "jwt_secret", Str(&["", "secret"])),
    ("auth", "jwt_issuer", Str(&["", "me"])),
    ("auth", "jwt_audience", Str(&["", "you"])),
    ("auth", "jwt_leeway", Dur),
    ("auth", "client_id_claim", Str(&["sub", "", "x"])),
    (
        "auth",
        "forward_url",
        Str(&["", "http://127.0.0.1:9/auth", "http://", "https://x/"]),
    ),
    (
        "auth",
        "forward_headers",
        StrList(&["cookie", "x-a", "bad header", ""]),
    ),
    ("auth", "forward_timeout", Dur),
    ("auth", "first_message_timeout", Dur),
    ("auth", "reject_with", Str(&["status", "close", "both"])),
];

/// Any TOML value at all, of any type.
fn any_value() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            format!("{f:?}")
        } else {
            "nan".into()
        }),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<String>().prop_map(|s| quote(&s)),
        "[ -~]{0,200}".prop_map(|s| quote(&s)),
        prop::collection::vec(any::<String>(), 0..3).prop_map(|v| format!(
            "[{}]",
            v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
        )),
    ]
    .boxed()
}

fn typed(kind: Kind) -> BoxedStrategy<String> {
    match kind {
        Str(list) => prop_oneof![
            6 => prop::sample::select(list).prop_map(quote),
            1 => "[ -~]{0,140}".prop_map(|s| quote(&s)),
        ]
        .boxed(),
        StrList(list) => prop::collection::vec(prop::sample::select(list), 0..3)
            .prop_map(|v| {
                format!(
                    "[{}]",
                    v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
                )
            })
            .boxed(),
        Dur => prop::sample::select(
            &[
                "0s", "0", "1ms", "50ms", "250ms", "1s", "30s", "1h", "8760h", "1.5s", "3x",
            ][..],
        )
        .prop_map(quote)
        .boxed(),
        Int => prop::sample::select(
            &[
                0i64,
                1,
                2,
                3,
                125,
                126,
                1000,
                1024,
                8192,
                65536,
                1 << 20,
                u32::MAX as i64,
                -1,
                i64::MAX,
            ][..],
        )
        .prop_map(|n| n.to_string())
        .boxed(),
        Float => prop::sample::select(&[0.0f64, 0.3, 0.5, 1.0, 1.25, 2.0, -1.0, 1e308][..])
            .prop_map(|f| format!("{f:?}"))
            .boxed(),
        Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
    }
}

fn value(kind: Kind) -> BoxedStrategy<String> {
    prop_oneof![9 => typed(kind), 1 => any_value()].boxed()
}

/// Which keys are set, and to what; plus the backend URL's path.
fn config_parts() -> impl Strategy<Value = (Vec<Option<String>>, String)> {
    let keys: Vec<_> = KEYS
        .iter()
        .map(|(_, _, k)| prop::option::weighted(0.1, value(*k)))
        .collect();
    let path = prop_oneof![
        6 => Just(String::new()),
        1 => Just("/prefix".to_string()),
        1 => prop::sample::select(&["/a b", "/caf\u{e9}", "/x\u{7f}"][..]).prop_map(String::from),
        1 => any::<String>().prop_map(|s| format!("/{s}")),
    ];
    (keys, path)
}

fn config_text(backend: std::net::SocketAddr, values: &[Option<String>], path: &str) -> String {
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
    for section in [
        "server",
        "admin",
        "log",
        "routing",
        "health",
        "heartbeat",
        "limits",
        "auth",
    ] {
        if section != "server" {
            text.push_str(&format!("[{section}]\n"));
        }
        for ((s, k, _), v) in KEYS.iter().zip(values) {
            if *s == section
                && let Some(v) = v
            {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        // app_ping and app_pong must come together: when the generator set
        // one, set the other too, so the pong path is reached.
        if section == "heartbeat" {
            let set = |key: &str| {
                KEYS.iter()
                    .zip(values)
                    .any(|((s, k, _), v)| *s == "heartbeat" && *k == key && v.is_some())
            };
            match (set("app_ping"), set("app_pong")) {
                (true, false) => text.push_str("app_pong = \"pong\"\n"),
                (false, true) => text.push_str("app_ping = \"ping\"\n"),
                _ => {}
            }
        }
    }
    text.push_str(&format!(
        "[[backends]]\nname = \"b1\"\nurl = {}\n",
        quote(&format!("ws://{backend}{path}"))
    ));
    text
}

/// Starts a gateway on `config` and runs one upgrade and one message
/// through it; what the gateway answers does not matter, only that it
/// answers without panicking.
async fn one_upgrade(mut config: Config) {
    config.server.listen = loopback_port_0();
    config.admin.listen = loopback_port_0();
    let ping = config.heartbeat.app_ping.clone();
    let Ok(gw) = Gateway::bind(config, SHARDS).await else {
        return;
    };
    let url = format!("ws://{}/?client_id=c1&token=t", gw.addrs()[0]);
    let exchange = async {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            return;
        };
        let msg = if ping.is_empty() {
            "hello".to_string()
        } else {
            ping
        };
        if ws.send(Message::text(msg)).await.is_ok() {
            let _ = ws.next().await;
        }
        let _ = ws.close(None).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), exchange).await;
    drop(gw);
}

#[test]
fn arbitrary_config_values_never_panic_check_or_the_gateway() {
    // First, deterministically (and before the hook: a failure here is a
    // plain test failure, not a counted panic).
    the_known_panicking_configs_are_refused();
    count_panics();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(echo_backend()).0;
    let (accepted, started) = (Arc::new(AtomicUsize::new(0)), AtomicUsize::new(0));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&config_parts(), |(values, path)| {
            let text = config_text(backend, &values, &path);
            let before = PANICS.load(Ordering::SeqCst);
            let parsed = Config::parse(&text);
            prop_assert_eq!(
                PANICS.load(Ordering::SeqCst),
                before,
                "parse panicked on:\n{}",
                text
            );
            let Ok(config) = parsed else { return Ok(()) };
            accepted.fetch_add(1, Ordering::SeqCst);
            if started.fetch_add(1, Ordering::SeqCst) >= MAX_STARTS {
                return Ok(());
            }
            rt.block_on(one_upgrade(config));
            // Let the shard threads finish the connection's last steps.
            std::thread::sleep(Duration::from_millis(20));
            prop_assert_eq!(
                PANICS.load(Ordering::SeqCst),
                before,
                "the gateway panicked with this accepted config:\n{}",
                text
            );
            Ok(())
        })
        .unwrap();
    let accepted = accepted.load(Ordering::SeqCst);
    eprintln!(
        "{accepted} of 512 configs accepted; {} gateways started",
        started.load(Ordering::SeqCst).min(MAX_STARTS)
    );
    assert!(
        accepted >= 10,
        "only {accepted} of 512 configs accepted: the generator is too hostile"
    );
}

/// The defects of issue 13 item 5, as configs a property run may or may
/// not hit: each is now refused at load (so it can never reach a gateway).
fn the_known_panicking_configs_are_refused() {
    let backend = "127.0.0.1:9";
    for (values, path) in [
        (
            vec![
                ("heartbeat", "app_ping", "\"p\""),
                ("heartbeat", "app_pong", &*quote(&"x".repeat(140))),
            ],
            "",
        ),
        (vec![], "/a b"),
        (vec![("health", "ws_path", "\"/caf\u{e9}\"")], ""),
        (vec![("health", "http_path", "\"/a b\"")], ""),
    ] {
        let mut vs: Vec<Option<String>> = vec![None; KEYS.len()];
        for (s, k, v) in values {
            let i = KEYS
                .iter()
                .position(|(ks, kk, _)| *ks == s && *kk == k)
                .unwrap();
            vs[i] = Some(v.to_string());
        }
        let text = config_text(backend.parse().unwrap(), &vs, path);
        assert!(Config::parse(&text).is_err(), "accepted:\n{text}");
    }
}
