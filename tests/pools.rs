//! Per-pool settings (`[pools.NAME]`, issue 15): each pool routes, checks
//! health and limits with its own settings, through the real gateway in
//! front of real hyper backends that serve plain HTTP and WebSocket
//! upgrades on one port (as apps do), and `wsgate check` through the real
//! binary.
//!
//! Shows: a message size one pool accepts and another closes with 1009; a
//! request body one pool proxies and another answers with 413; client ID
//! sources per pool; health check paths and kinds per pool; panic mode
//! judged per pool (one pool all down is in panic, the other is not and
//! keeps routing around its down backend); `host_header` both ways for
//! plain HTTP and upgrades; a reload that changes a pool's limit for new
//! connections while an open one keeps its own; and check errors naming
//! the key and line.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::named::{backend_entry, close_code, echo_ok, greeting};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use wsgate::Config;

/// One request a backend got.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    client_id: String,
    upgrade: bool,
}

/// A backend app: plain HTTP answers `NAME host=H xfh=H bytes=N` (the
/// request body read whole); an upgrade greets with `NAME host=H`, then
/// echoes `NAME:TEXT`. Records every request head.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl App {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn saw_path(&self, path: &str) -> bool {
        self.seen().iter().any(|s| s.path == path)
    }
}

async fn app(name: &'static str) -> App {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(serve(name, req, s).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    App { addr, seen }
}

async fn serve(
    name: &'static str,
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<Full<Bytes>> {
    let get = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (host, xfh) = (get("host"), get("x-forwarded-host"));
    let upgrade = get("upgrade").eq_ignore_ascii_case("websocket");
    seen.lock().unwrap().push(Seen {
        path: req.uri().path().to_string(),
        client_id: get("x-client-id"),
        upgrade,
    });
    if !upgrade {
        let n = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => 0,
        };
        return Response::new(Full::new(Bytes::from(format!(
            "{name} host={host} xfh={xfh} bytes={n}"
        ))));
    }
    let accept = derive_accept_key(get("sec-websocket-key").as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = on_upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
        if ws
            .send(Message::text(format!("{name} host={host}")))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m
                && ws
                    .send(Message::text(format!("{name}:{}", t.as_str())))
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept.parse().unwrap());
    resp
}

/// An address nothing listens on (bound, then closed).
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Config text: backends as (name, address, pool) ("" = the default
/// pool), a route `/POOL` for every other pool, then `extra`. Health
/// checks are off unless `extra` has a `[health]` section.
fn config(backends: &[(&str, SocketAddr, &str)], extra: &str) -> String {
    let mut s = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
    if !extra.contains("[health]") {
        s.push_str("[health]\nhttp_path = \"\"\nws_path = \"\"\n");
    }
    let mut pools: Vec<&str> = Vec::new();
    for (name, addr, pool) in backends {
        s.push_str(&format!(
            "[[backends]]\nname = \"{name}\"\nurl = \"ws://{addr}\"\n"
        ));
        if !pool.is_empty() {
            s.push_str(&format!("pool = \"{pool}\"\n"));
            if !pools.contains(pool) {
                pools.push(pool);
            }
        }
    }
    for p in pools {
        s.push_str(&format!("[[routes]]\npath = \"/{p}\"\npool = \"{p}\"\n"));
    }
    s.push_str(extra);
    s
}

/// An upgrade with extra request headers.
async fn connect_with(url: &str, headers: &[(&'static str, &str)]) -> Client {
    let mut req = url.into_client_request().unwrap();
    for (n, v) in headers {
        req.headers_mut().insert(*n, v.parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// One plain HTTP request with a body, on a connection of its own:
/// (status, body).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    body: usize,
) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::from(vec![b'a'; body])))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("no answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("no body in time")
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_and_body_limits_are_per_pool() {
    let (d, s) = (app("d").await, app("s").await);
    let g = gateway(&config(
        &[("d", d.addr, ""), ("s", s.addr, "small")],
        "[pools.small.limits]\nmax_message_bytes = 1000\n\
         [pools.small.server]\nmax_request_body_bytes = 1000\n",
    ))
    .await;
    let text = "x".repeat(2000);

    // The default pool inherits [limits] (1 MiB): 2000 bytes pass.
    let mut c = connect(&g.url("/")).await;
    assert_eq!(greeting(&mut c).await, format!("d host={}", d.addr));
    echo_ok(&mut c, "d", &text).await;
    // The small pool: 1000 bytes pass, 2000 close with 1009.
    let mut c = connect(&g.url("/small")).await;
    greeting(&mut c).await;
    echo_ok(&mut c, "s", &"y".repeat(990)).await;
    c.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(close_code(&mut c).await.0, Some(1009));

    // Plain HTTP: the default pool's limit is [server]'s (10 MiB).
    let (status, body) = request(g.addr, "POST", "/", "x", 2000).await;
    assert_eq!((status, body.as_str()), (200, "d host=x xfh=x bytes=2000"));
    let (status, _) = request(g.addr, "POST", "/small/up", "x", 2000).await;
    assert_eq!(status, 413);
    let (status, body) = request(g.addr, "POST", "/small/up", "x", 1000).await;
    assert_eq!((status, body.as_str()), (200, "s host=x xfh=x bytes=1000"));
    let reached = s.seen().iter().filter(|r| r.path == "/small/up").count();
    assert_eq!(
        reached,
        1,
        "the 413 never reached the backend: {:?}",
        s.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_sources_are_per_pool() {
    let (a, b) = (app("a").await, app("b").await);
    let g = gateway(&config(
        &[("a", a.addr, "pa"), ("b", b.addr, "pb")],
        "[routing]\nclient_id = [\"header:x-user\"]\n\
         [pools.pb.routing]\nclient_id = [\"query:uid\"]\n",
    ))
    .await;
    for path in ["/pa/ws?uid=bob", "/pb/ws?uid=bob"] {
        let mut c = connect_with(&g.url(path), &[("x-user", "alice")]).await;
        greeting(&mut c).await;
    }
    let id = |app: &App| app.seen().last().map(|s| s.client_id.clone());
    assert_eq!(id(&a).as_deref(), Some("alice"), "pa: [routing] client_id");
    assert_eq!(id(&b).as_deref(), Some("bob"), "pb: its own client_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_run_with_their_pools_paths() {
    let (d, api) = (app("d").await, app("api").await);
    let g = gateway(&config(
        &[("d", d.addr, ""), ("api", api.addr, "api")],
        "[health]\ninterval = \"100ms\"\nhttp_path = \"/hc\"\nws_path = \"\"\n\
         [pools.api.health]\nhttp_path = \"/hc-api\"\nws_path = \"/ws-hc\"\nroute_on = \"both\"\n",
    ))
    .await;
    eventually("each backend checked on its pool's paths", || async {
        d.saw_path("/hc") && api.saw_path("/hc-api") && api.saw_path("/ws-hc")
    })
    .await;
    // A few more rounds: never another pool's path or kind.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        d.seen().iter().all(|s| s.path == "/hc" && !s.upgrade),
        "{:?}",
        d.seen()
    );
    let api_seen = api.seen();
    assert!(
        api_seen
            .iter()
            .all(|s| (s.path == "/hc-api" && !s.upgrade) || (s.path == "/ws-hc" && s.upgrade)),
        "{api_seen:?}"
    );
    let e = backend_entry(g.admin, "api").await;
    assert_eq!(
        (e["checks"]["ws"].as_str(), e["up"].as_bool()),
        (Some("up"), Some(true))
    );
    let e = backend_entry(g.admin, "d").await;
    assert_eq!(e["checks"]["ws"].as_str(), Some("off"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_is_judged_per_pool() {
    let live = app("b1").await;
    let (a1, a2, b2) = (dead_addr().await, dead_addr().await, dead_addr().await);
    // Pool a: all down. Pool b: one of two down. Over all four backends
    // only one passes (under 0.5): a gateway-wide judgement would put
    // pool b in panic too, and send some of its clients to b2.
    let g = gateway(&config(
        &[
            ("a1", a1, "a"),
            ("a2", a2, "a"),
            ("b1", live.addr, "b"),
            ("b2", b2, "b"),
        ],
        "[health]\ninterval = \"100ms\"\nhttp_path = \"/hc\"\nws_path = \"\"\n\
         route_on = \"http\"\nfall = 1\nrise = 1\n\
         [routing]\nconnect_retries = 0\n",
    ))
    .await;
    eventually("the dead backends are down", || async {
        let mut down = 0;
        for n in ["a1", "a2", "b2"] {
            down += (backend_entry(g.admin, n).await["up"] == false) as usize;
        }
        down == 3
    })
    .await;
    for (name, panic) in [("a1", true), ("a2", true), ("b1", false), ("b2", false)] {
        let e = backend_entry(g.admin, name).await;
        assert_eq!(e["pool_panic"].as_bool(), Some(panic), "{name}: {e}");
    }
    assert_eq!(backend_entry(g.admin, "b1").await["up"], true);
    // Pool b routes around b2: every client ID reaches b1.
    for i in 0..20 {
        let mut c = connect(&g.url(&format!("/b?client_id=u{i}"))).await;
        assert_eq!(greeting(&mut c).await, format!("b1 host={}", live.addr));
    }
    // Pool a routes in panic: it dials its down backends (502), where a
    // pool with no routable backend and no panic answers 503.
    match try_connect(&g.url("/a?client_id=u1")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 502),
        other => panic!(
            "expected 502 from a pool in panic, got {:?}",
            other.map(|_| ())
        ),
    }
    let (status, _, _) = common::http(g.admin, "GET", "/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_client_or_backend_for_http_and_upgrades() {
    let (d, vh) = (app("d").await, app("vh").await);
    let g = gateway(&config(
        &[("d", d.addr, ""), ("vh", vh.addr, "vh")],
        "[routing]\nhost_header = \"client\"\n\
         [pools.vh.routing]\nhost_header = \"backend\"\n",
    ))
    .await;
    let host = "app.example:8080";
    let (status, body) = request(g.addr, "GET", "/page", host, 0).await;
    assert_eq!(
        (status, body),
        (200, format!("d host={host} xfh={host} bytes=0"))
    );
    let (status, body) = request(g.addr, "GET", "/vh/page", host, 0).await;
    assert_eq!(
        (status, body),
        (200, format!("vh host={} xfh={host} bytes=0", vh.addr))
    );

    let mut c = connect_with(&g.url("/ws"), &[("host", host)]).await;
    assert_eq!(greeting(&mut c).await, format!("d host={host}"));
    let mut c = connect_with(&g.url("/vh/ws"), &[("host", host)]).await;
    assert_eq!(greeting(&mut c).await, format!("vh host={}", vh.addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_a_pools_limit_for_new_connections_only() {
    let (d, s) = (app("d").await, app("s").await);
    let backends = [("d", d.addr, ""), ("s", s.addr, "small")];
    let g = gateway(&config(
        &backends,
        "[pools.small.limits]\nmax_message_bytes = 1000\n",
    ))
    .await;
    let mut open = connect(&g.url("/small")).await;
    greeting(&mut open).await;
    let text = "z".repeat(500);
    echo_ok(&mut open, "s", &text).await;

    let next = config(&backends, "[pools.small.limits]\nmax_message_bytes = 100\n");
    g.gw.reload(Config::parse(&next).unwrap()).unwrap();

    // A new connection gets the new limit.
    let mut fresh = connect(&g.url("/small")).await;
    greeting(&mut fresh).await;
    fresh.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(close_code(&mut fresh).await.0, Some(1009));
    // The open one stays open, under the limit it started with.
    echo_ok(&mut open, "s", &text).await;
    // The default pool never had the small limit.
    let mut c = connect(&g.url("/")).await;
    greeting(&mut c).await;
    echo_ok(&mut c, "d", &text).await;
}

/// Runs `wsgate check -c FILE`; (exit code, stdout + stderr).
fn check(text: &str, tag: &str) -> (i32, String) {
    let path = std::env::temp_dir().join(format!("wsgate-pools-{tag}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let out = common::binary::check(&path);
    let _ = std::fs::remove_file(&path);
    out
}

/// The 1-based line of the first line of `text` that is `line`.
fn line_of(text: &str, line: &str) -> usize {
    text.lines().position(|l| l == line).expect(line) + 1
}

#[test]
fn check_names_the_key_and_line_of_a_bad_pool_section() {
    let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let base = config(&[("d", a, ""), ("s", a, "small")], "");
    let ok = format!(
        "{base}[pools.small.limits]\nmax_message_bytes = 100\n\
         [pools.small.routing]\nhost_header = \"backend\"\n"
    );
    let (code, out) = check(&ok, "ok");
    assert_eq!(code, 0, "{out}");

    for (tag, extra, key, bad_line, says) in [
        (
            "unknown",
            "[pools.big.limits]\nmax_message_bytes = 100\n",
            "pools.big",
            "[pools.big.limits]",
            "no [[backends]] entry has pool = \"big\"",
        ),
        (
            "process-wide",
            "[pools.small.server]\nmax_connections = 5\n",
            "pools.small.server.max_connections",
            "max_connections = 5",
            "not a per-pool key",
        ),
        (
            "cookie",
            "[pools.small.routing]\naffinity_cookie = \"s\"\n",
            "pools.small.routing.affinity_cookie",
            "affinity_cookie = \"s\"",
            "not a per-pool key",
        ),
        (
            "bad-value",
            "[pools.small.limits]\nmax_buffered_bytes = 10\n",
            "pools.small.limits.max_buffered_bytes",
            "max_buffered_bytes = 10",
            "must be at least 1024",
        ),
        (
            "bad-type",
            "[pools.small.health]\ninterval = \"often\"\n",
            "pools.small.health.interval",
            "interval = \"often\"",
            "duration \"often\"",
        ),
    ] {
        let text = format!("{base}{extra}");
        let (code, out) = check(&text, tag);
        assert_ne!(code, 0, "{tag}: {out}");
        let want = format!("`{key}` (line {})", line_of(&text, bad_line));
        assert!(
            out.contains(&want) && out.contains(says),
            "{tag}: want {want} and {says:?}: {out}"
        );
    }
}
