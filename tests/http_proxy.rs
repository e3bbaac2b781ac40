//! Plain HTTP through the gateway: real hyper backends on 127.0.0.1, a real
//! hyper client (keep-alive connections, source addresses of our choice).
//! Shows: keep-alive both ways, Host and X-Forwarded-* as documented,
//! hop-by-hop headers dropped, bodies streamed (first chunk before the
//! end), 413 / 502 / 504, a connect failure retried on the next backend,
//! and the affinity cookie steering HTTP requests and upgrades.

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::named::TestBackend;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;

/// A plain HTTP backend: `/who` answers its name and what it saw,
/// `/echo` streams the request body back, `/stream` sends one chunk then
/// waits for `release`, `/slow` answers after 2 s. Counts TCP connections.
struct HttpBackend {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
}

type Chunks = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

async fn http_backend(name: &'static str, release: Option<mpsc::Receiver<()>>) -> HttpBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Mutex::new(release));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let release = release.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let release = release.clone();
                    async move { Ok::<_, Infallible>(serve(name, req, release).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    HttpBackend { addr, conns }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn serve(
    name: &str,
    req: Request<Incoming>,
    release: Arc<tokio::sync::Mutex<Option<mpsc::Receiver<()>>>>,
) -> Response<AnyBody> {
    let full = |s: String| Full::new(Bytes::from(s)).boxed();
    match req.uri().path() {
        "/who" => {
            let h = req.headers();
            let get = |n: &str| {
                h.get(n)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            };
            Response::builder()
                .header("x-backend", name)
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "secret")
                .body(full(format!(
                    "name={name}\nhost={}\nxff={}\nxfp={}\nxfh={}\nhop={}\nquery={}\n",
                    get("host"),
                    get("x-forwarded-for"),
                    get("x-forwarded-proto"),
                    get("x-forwarded-host"),
                    get("x-hop"),
                    req.uri().query().unwrap_or("")
                )))
                .unwrap()
        }
        "/echo" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(full(format!("{name}:{}", String::from_utf8_lossy(&body))))
        }
        "/stream" => {
            let (tx, rx): (Chunks, _) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("first\n")))).await;
                if let Some(mut r) = release.lock().await.take() {
                    let _ = tokio::time::timeout(WAIT, r.recv()).await;
                }
                let _ = tx.send(Ok(Frame::data(Bytes::from("last\n")))).await;
            });
            let stream = tokio_stream_from(rx);
            Response::new(StreamBody::new(stream).boxed())
        }
        "/trailers" => {
            let (tx, rx): (Chunks, _) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("payload")))).await;
                let mut t = hyper::HeaderMap::new();
                t.insert("x-checksum", "abc123".parse().unwrap());
                let _ = tx.send(Ok(Frame::trailers(t))).await;
            });
            Response::builder()
                .header("trailer", "x-checksum")
                .body(StreamBody::new(tokio_stream_from(rx)).boxed())
                .unwrap()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(full("late".into()))
        }
        _ => Response::builder()
            .status(404)
            .header("x-backend", name)
            .body(full(String::new()))
            .unwrap(),
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// One keep-alive client connection to the gateway from `local`.
struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    async fn open(gw: SocketAddr, local: IpAddr) -> Conn {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(local, 0)).unwrap();
        let tcp = tokio::time::timeout(WAIT, s.connect(gw))
            .await
            .unwrap()
            .unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn(send)
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        tokio::time::timeout(WAIT, async {
            self.0.ready().await.unwrap();
            self.0.send_request(req).await.unwrap()
        })
        .await
        .expect("response within WAIT")
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> (Response<()>, String) {
        let mut b = Request::get(path).header("host", "app.example:8080");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.send(b.body(Full::default()).unwrap()).await;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        (
            Response::from_parts(parts, ()),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }
}

fn lo() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// `config_for`, with `server` keys added to its `[server]` table.
fn http_config(backends: &[SocketAddr], extra: &str) -> String {
    let (server, rest) = match extra.strip_prefix("[server]\n") {
        Some(keys) => keys
            .split_once("\n[")
            .map_or((keys.to_string(), String::new()), |(k, r)| {
                (format!("{k}\n"), format!("[{r}"))
            }),
        None => (String::new(), extra.to_string()),
    };
    config_for(backends, &rest).replacen(
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\n{server}"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_both_ways_with_forwarded_headers_and_no_hop_by_hop() {
    let b = http_backend("one", None).await;
    let g = gateway(&http_config(&[b.addr], "")).await;
    let mut c = Conn::open(g.addr, lo()).await;
    for i in 0..3 {
        let (resp, body) = c
            .get(
                &format!("/who?token=t{i}"),
                &[
                    ("connection", "keep-alive, x-hop"),
                    ("x-hop", "client-secret"),
                ],
            )
            .await;
        assert_eq!(resp.status(), 200, "{body}");
        assert!(
            body.contains("host=app.example:8080\n"),
            "Host as sent: {body}"
        );
        assert!(body.contains("xff=127.0.0.1\n"), "{body}");
        assert!(body.contains("xfp=http\n"), "{body}");
        assert!(body.contains("xfh=app.example:8080\n"), "{body}");
        assert!(
            body.contains("hop=\n"),
            "header named in Connection dropped: {body}"
        );
        assert!(body.contains(&format!("query=token=t{i}\n")), "{body}");
        assert!(
            resp.headers().get("x-hop").is_none(),
            "response hop-by-hop dropped"
        );
        assert_eq!(resp.headers()["x-backend"], "one");
    }
    // Three requests on one client connection went over one pooled
    // backend connection.
    assert_eq!(b.conns.load(Ordering::SeqCst), 1);
    assert_eq!(
        metric(
            g.admin,
            "wsgate_http_requests_total{code_class=\"2xx\",route=\"default\"}"
        )
        .await,
        3.0
    );
    assert_eq!(metric(g.admin, "wsgate_http_connections_active").await, 1.0);
    drop(c);
    eventually("http connection gauge back to 0", || async {
        metric(g.admin, "wsgate_http_connections_active").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_streams_before_it_ends() {
    let (release, rx) = mpsc::channel(1);
    let b = http_backend("one", Some(rx)).await;
    let g = gateway(&http_config(&[b.addr], "")).await;
    let mut c = Conn::open(g.addr, lo()).await;
    let req = Request::get("/stream")
        .header("host", "x")
        .body(Full::default())
        .unwrap();
    let mut body = c.send(req).await.into_body();
    // The backend holds the rest until released: the first chunk must
    // arrive on its own.
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first chunk before the response ends")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first\n");
    release.send(()).await.unwrap();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.to_bytes(), "last\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_to_a_client_that_accepts_them() {
    let b = http_backend("one", None).await;
    let g = gateway(&http_config(&[b.addr], "")).await;
    let mut c = Conn::open(g.addr, lo()).await;
    let req = Request::get("/trailers")
        .header("host", "x")
        .header("te", "trailers")
        .body(Full::default())
        .unwrap();
    let body = c.send(req).await.into_body();
    let all = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.trailers().expect("trailers")["x-checksum"], "abc123");
    assert_eq!(all.to_bytes(), "payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_counts_http_connections_and_refusals_close() {
    let b = http_backend("one", None).await;
    let g = gateway(&http_config(
        &[b.addr],
        "[server]\nmax_connections_per_ip = 1\n",
    ))
    .await;
    let mut first = Conn::open(g.addr, lo()).await;
    assert_eq!(first.get("/who", &[]).await.0.status(), 200);
    let mut second = Conn::open(g.addr, lo()).await;
    let (resp, _) = second.get("/who", &[]).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["connection"], "close");
    // The first connection is still served.
    assert_eq!(first.get("/who", &[]).await.0.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_and_the_limit_answers_413() {
    let b = http_backend("one", None).await;
    let g = gateway(&http_config(
        &[b.addr],
        "[server]\nmax_request_body_bytes = 1000\n",
    ))
    .await;
    let mut c = Conn::open(g.addr, lo()).await;
    // Chunked (a streamed body of unknown length), with Expect: 100-continue.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let (mut send, conn) = {
        let tcp = tokio::net::TcpStream::connect(g.addr).await.unwrap();
        hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap()
    };
    tokio::spawn(conn);
    tokio::spawn(async move {
        for part in ["hello ", "streamed ", "body"] {
            tx.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
        }
    });
    let req = Request::post("/echo")
        .header("host", "x")
        .header("expect", "100-continue")
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "one:hello streamed body");

    // Declared too large: 413 before any byte goes to the backend.
    let req = Request::post("/echo")
        .header("host", "x")
        .body(Full::new(Bytes::from(vec![b'a'; 1001])))
        .unwrap();
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["connection"], "close");

    // Chunked and growing past the limit: 413 too.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let tcp = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tokio::spawn(async move {
        for _ in 0..3 {
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b'a'; 600]))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let req = Request::post("/echo")
        .header("host", "x")
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_is_502_retried_on_the_next_backend_and_slow_is_504() {
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let g = gateway(&http_config(&[dead], "")).await;
    let mut c = Conn::open(g.addr, lo()).await;
    let (resp, _) = c.get("/who", &[]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["connection"], "close");

    // Two backends, one dead: every request is answered by the live one,
    // whichever the ring tried first.
    let live = http_backend("live", None).await;
    let g = gateway(&http_config(
        &[dead, live.addr],
        "[routing]\nconnect_retries = 1\n",
    ))
    .await;
    for i in 0..8u8 {
        let mut c = Conn::open(g.addr, IpAddr::from([127, 0, 0, 10 + i])).await;
        let (resp, body) = c.get("/who", &[]).await;
        assert_eq!(resp.status(), 200, "{body}");
        assert!(body.starts_with("name=live"), "{body}");
    }

    let slow = http_backend("slow", None).await;
    let g = gateway(&http_config(
        &[slow.addr],
        "[routing]\nresponse_timeout = \"300ms\"\n",
    ))
    .await;
    let mut c = Conn::open(g.addr, lo()).await;
    let (resp, _) = c.get("/slow", &[]).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(
        metric(
            g.admin,
            "wsgate_http_requests_total{code_class=\"5xx\",route=\"default\"}"
        )
        .await,
        1.0
    );
}

/// The backend name a source address lands on without a cookie.
async fn landing(g: SocketAddr, local: IpAddr) -> (String, String) {
    let mut c = Conn::open(g, local).await;
    let (resp, _) = c.get("/who", &[]).await;
    let name = resp.headers()["x-backend"].to_str().unwrap().to_string();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .expect("first response issues the affinity cookie")
        .to_str()
        .unwrap()
        .to_string();
    (name, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_cookie_keeps_a_client_on_its_backend() {
    let (a, b) = (http_backend("a", None).await, http_backend("b", None).await);
    let g = gateway(&http_config(&[a.addr, b.addr], "")).await;
    // Two source addresses that land on different backends.
    let (first, cookie) = landing(g.addr, lo()).await;
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // (That the value names no backend is the unit test's, with names long
    // enough not to occur in a random tag by chance.)
    let mut other = None;
    for i in 2..60u8 {
        let ip = IpAddr::from([127, 0, 0, i]);
        if landing(g.addr, ip).await.0 != first {
            other = Some(ip);
            break;
        }
    }
    let other = other.expect("some address lands on the other backend");
    let pair = cookie.split(';').next().unwrap().to_string();
    // From that address, with the first backend's cookie: the first backend.
    let mut c = Conn::open(g.addr, other).await;
    for _ in 0..3 {
        let (resp, _) = c.get("/who", &[("cookie", &pair)]).await;
        assert_eq!(resp.headers()["x-backend"], first.as_str());
        assert!(
            resp.headers().get("set-cookie").is_none(),
            "cookie already right"
        );
    }
    // A forged value is ignored: the peer address decides, a new cookie comes.
    let (resp, _) = c.get("/who", &[("cookie", "wsgate_affinity=a")]).await;
    assert_ne!(resp.headers()["x-backend"], first.as_str());
    assert!(resp.headers().get("set-cookie").is_some());
    // An explicit client ID wins over the cookie and gets no cookie.
    let (resp, _) = c.get("/who?client_id=x", &[("cookie", &pair)]).await;
    assert!(resp.headers().get("set-cookie").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_cookie_steers_the_upgrade_too() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let cfg = config_for(&[a.addr, b.addr], "[routing]\naffinity_key = \"k\"\n");
    let g = gateway(&cfg).await;
    let tags = wsgate::state::affinity::Affinity::new(&wsgate::Config::parse(&cfg).unwrap());
    for (i, name) in ["b1", "b2"].iter().enumerate() {
        let v = tags.set_cookie(i, false).unwrap();
        let pair = v.to_str().unwrap().split(';').next().unwrap().to_string();
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                g.url("/"),
            )
            .unwrap();
        req.headers_mut().insert("cookie", pair.parse().unwrap());
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .unwrap()
            .unwrap();
        let greeting = next_msg(&mut ws).await.unwrap();
        let want = if *name == "b1" { "a" } else { "b" };
        assert_eq!(greeting.to_text().unwrap(), want, "cookie of {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_log_line_per_http_request_without_the_query() {
    let b = http_backend("one", None).await;
    let dir = std::env::temp_dir().join(format!("wsgate-http-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n\
             [health]\nhttp_path = \"\"\nws_path = \"\"\n[[backends]]\nname = \"b1\"\nurl = \"ws://{}\"\n",
            b.addr
        ),
    )
    .unwrap();
    let mut gw = binary::Binary::run(&cfg, "info").await;
    let addr: SocketAddr = gw.addr.trim_end_matches('/').parse().unwrap();
    let rx = &mut gw.stderr;
    let secret = "sekret-token-value";
    let mut c = Conn::open(addr, lo()).await;
    let (resp, body) = c.get(&format!("/who?token={secret}"), &[]).await;
    assert_eq!(resp.status(), 200);
    let line = tokio::time::timeout(WAIT, async {
        loop {
            let l = rx.recv().await.expect("gateway stderr ended");
            assert!(!l.contains(secret), "the query reached the log: {l}");
            if l.contains("wsgate::access") {
                return l;
            }
        }
    })
    .await
    .expect("an access-log line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(f["method"], "GET");
    assert_eq!(f["route"], "default");
    assert_eq!(f["status"], 200);
    assert_eq!(f["bytes"], body.len() as u64);
    assert_eq!(f["backend"], "b1");
    assert!(f["duration_ms"].is_u64());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_with_ws_only_and_http_only_routes() {
    let d = http_backend("d", None).await;
    let a = http_backend("a", None).await;
    let live = TestBackend::start("live").await;
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[health]\nhttp_path = \"\"\nws_path = \"\"\n\
         [[routes]]\npath = \"/api\"\npool = \"api\"\nserve = \"http\"\n\
         [[routes]]\npath = \"/live\"\npool = \"live\"\nserve = \"ws\"\n\
         [[routes]]\nhost = \"*.example.com\"\npool = \"api\"\nname = \"sites\"\n\
         [[backends]]\nname = \"d1\"\nurl = \"ws://{}\"\n\
         [[backends]]\nname = \"a1\"\nurl = \"ws://{}\"\npool = \"api\"\n\
         [[backends]]\nname = \"l1\"\nurl = \"ws://{}\"\npool = \"live\"\n",
        d.addr, a.addr, live.addr
    );
    let g = gateway(&cfg).await;
    let mut c = Conn::open(g.addr, lo()).await;
    let on = |resp: &Response<()>| {
        resp.headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (resp, _) = c.get("/who", &[]).await;
    assert_eq!(
        on(&resp).as_deref(),
        Some("d"),
        "no route matches: default pool"
    );
    let (resp, _) = c.get("/api/users", &[]).await;
    assert_eq!(on(&resp).as_deref(), Some("a"), "path prefix");
    let (resp, _) = c.get("/apix", &[]).await;
    assert_eq!(
        on(&resp).as_deref(),
        Some("d"),
        "prefix at a segment boundary"
    );
    let mut sub = Conn::open(g.addr, lo()).await;
    let req = Request::get("/who")
        .header("host", "shop.example.com:8080")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        sub.send(req).await.headers()["x-backend"],
        "a",
        "host pattern"
    );
    // Plain HTTP on a WebSocket-only route: 426.
    let (resp, _) = c.get("/live", &[]).await;
    assert_eq!(resp.status(), 426);
    // Upgrades: the ws route's pool; the HTTP-only route refuses (404).
    let mut ws = connect(&g.url("/live")).await;
    assert_eq!(next_msg(&mut ws).await.unwrap().to_text().unwrap(), "live");
    let (status, _) = raw_request(g.addr, "/api/socket", "").await;
    assert_eq!(status, 404);
    assert_eq!(
        metric(
            g.admin,
            "wsgate_http_requests_total{code_class=\"4xx\",route=\"live\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            g.admin,
            "wsgate_http_requests_total{code_class=\"4xx\",route=\"api\"}"
        )
        .await,
        1.0,
        "the backend's 404 for /api/users, counted on the api route"
    );
}

#[test]
fn check_rejects_unknown_pools_and_duplicate_routes_with_key_and_line() {
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n[[backends]]\nname = \"d\"\nurl = \"ws://127.0.0.1:1\"\n";
    let refused = |extra: &str| {
        wsgate::Config::parse(&format!("{base}{extra}"))
            .unwrap_err()
            .to_string()
    };
    let e = refused("[[routes]]\npath = \"/x\"\npool = \"nope\"\n");
    assert!(
        e.contains("routes") && e.contains("pool") && e.contains("line 8"),
        "{e}"
    );
    let e = refused("[[routes]]\npath = \"/x\"\n[[routes]]\npath = \"/x/\"\n");
    assert!(
        e.contains("path") && e.contains("line 9") && e.contains("route 1"),
        "{e}"
    );
    let e = refused("[[backends]]\nname = \"o\"\nurl = \"ws://127.0.0.1:2\"\npool = \"orphan\"\n");
    assert!(e.contains("orphan") && e.contains("line 9"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_routes_and_open_connections_stay() {
    use common::named::{echo_ok, greeting};
    let d = TestBackend::start("d").await;
    let live = TestBackend::start("live").await;
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [health]\nhttp_path = \"\"\nws_path = \"\"\n\
         [[backends]]\nname = \"d1\"\nurl = \"ws://{}\"\n",
        d.addr
    );
    let g = gateway(&base).await;
    let mut before = connect(&g.url("/live")).await;
    assert_eq!(
        greeting(&mut before).await,
        "d",
        "no routes: the default pool"
    );
    let with_route = format!(
        "{base}[[backends]]\nname = \"l1\"\nurl = \"ws://{}\"\npool = \"live\"\n\
         [[routes]]\npath = \"/live\"\npool = \"live\"\nserve = \"ws\"\n",
        live.addr
    );
    g.gw.reload(wsgate::Config::parse(&with_route).unwrap())
        .expect("reload applies");
    let mut after = connect(&g.url("/live")).await;
    assert_eq!(greeting(&mut after).await, "live", "the new route");
    // The connection opened before the reload is still relayed where it was.
    echo_ok(&mut before, "d", "still here").await;
    let (status, _) = raw_request(g.addr, "/", "").await;
    assert_eq!(status, 101, "other paths still reach the default pool");
}
