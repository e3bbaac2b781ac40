//! `[resume]`: resumable sessions at the protocol level, with a hand-driven
//! tungstenite client against the in-process gateway and a plain backend:
//! the offer is removed before dialing (plain clients untouched), a lost
//! link is resumed with what the backend sent meanwhile, and expiry,
//! overflow, a replayed credential and a credential from another client ID
//! each give their documented outcome (backend close 1001 with a reason,
//! hello `lost:<why>` to the client, `wsgate_resume_total{result}`).

// The upgrade callback's error type is tungstenite's.
#![allow(clippy::result_large_err)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// What the test backend saw: upgrade subprotocol offers, texts, closes.
#[derive(Default)]
struct Log {
    offers: Vec<Option<String>>,
    extensions: Vec<Option<String>>,
    texts: Vec<String>,
    closes: Vec<(u16, String)>,
}

/// A plain backend: echoes texts; `later:N:SIZE` makes it send N texts of
/// SIZE bytes (`d1...`, padded) after 300 ms, when the client that asked is
/// gone. Knows nothing about resumption.
async fn backend() -> (SocketAddr, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Arc<Mutex<Log>> = Arc::default();
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = l.clone();
            tokio::spawn(async move {
                let log2 = log.clone();
                let cb = move |req: &Request, mut resp: Response| {
                    let get = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap().to_string())
                    };
                    let offer = get("sec-websocket-protocol");
                    // Speaks "chat" when offered, else no subprotocol.
                    if offer
                        .as_deref()
                        .is_some_and(|o| o.split(", ").any(|p| p == "chat"))
                    {
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
                    }
                    let mut log = log2.lock().unwrap();
                    log.offers.push(offer);
                    log.extensions.push(get("sec-websocket-extensions"));
                    Ok(resp)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
                tokio::spawn(async move {
                    while let Some(m) = out_rx.recv().await {
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(m)) = rx.next().await {
                    match m {
                        Message::Text(t) => {
                            log.lock().unwrap().texts.push(t.to_string());
                            if let Some(rest) = t.strip_prefix("later:") {
                                let (n, size) = rest.split_once(':').unwrap();
                                let (n, size): (usize, usize) =
                                    (n.parse().unwrap(), size.parse().unwrap());
                                let out = out.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                    for i in 1..=n {
                                        let mut s = format!("d{i}");
                                        while s.len() < size {
                                            s.push('.');
                                        }
                                        let _ = out.send(Message::text(s));
                                    }
                                });
                            } else {
                                let _ = out.send(Message::Text(t));
                            }
                        }
                        Message::Close(f) => {
                            let f = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                            log.lock()
                                .unwrap()
                                .closes
                                .push(f.unwrap_or((1005, String::new())));
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, log)
}

/// Connects offering `protocols`; returns the link and the 101's subprotocol.
async fn connect_offering(url: &str, protocols: &str) -> (Client, Option<String>) {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(protocols).unwrap(),
    );
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
        .expect("upgrade");
    let p = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    (ws, p)
}

/// The hello: (credential, gateway's received count, state).
async fn hello(ws: &mut Client) -> (String, u64, String) {
    let Some(Message::Text(t)) = next_msg(ws).await else {
        panic!("no hello");
    };
    let rest = t.strip_prefix("\0hello ").expect("a hello first");
    let mut p = rest.split(' ');
    let cred = p.next().unwrap().to_string();
    let n = p.next().unwrap().parse().unwrap();
    (cred, n, p.next().unwrap().to_string())
}

/// Next app text, skipping acks.
async fn next_text(ws: &mut Client) -> String {
    loop {
        match next_msg(ws).await {
            Some(Message::Text(t)) if t.starts_with("\0ack ") => continue,
            Some(Message::Text(t)) => return t.to_string(),
            other => panic!("expected a text, got {other:?}"),
        }
    }
}

fn resume_offer(cred: &str, received: u64) -> String {
    format!("wsgate.resume.v1, wsgate.resume.v1.{cred}.{received}")
}

fn cfg(backend: SocketAddr, resume: &str) -> String {
    config_for(&[backend], resume)
}

const ON: &str = "[resume]\nenabled = true\nwindow = \"10s\"\n";

#[tokio::test]
async fn the_offer_never_reaches_the_backend_and_plain_clients_are_untouched() {
    let (b, log) = backend().await;
    // Off (the default): the offer is an ordinary subprotocol, passed on.
    let off = gateway(&cfg(b, "")).await;
    let (mut ws, _) = connect_offering(&off.url("/"), "chat, wsgate.resume.v1").await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "x");
    assert_eq!(
        log.lock().unwrap().offers[0].as_deref(),
        Some("chat, wsgate.resume.v1")
    );

    let on = gateway(&cfg(b, ON)).await;
    // A plain client: its offer goes through as sent, no hello.
    let (mut ws, _) = connect_offering(&on.url("/"), "chat").await;
    ws.send(Message::text("\0plain")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "\0plain");
    assert_eq!(log.lock().unwrap().offers[1].as_deref(), Some("chat"));

    // A resuming client: the backend sees the app's subprotocols only, and
    // no extensions; the first message is the hello.
    let mut req = on.url("/").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("chat, wsgate.resume.v1"),
    );
    req.headers_mut().insert(
        "sec-websocket-extensions",
        HeaderValue::from_static("permessage-deflate"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    // The app's subprotocol was agreed end to end.
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chat"
    );
    let (cred, n, state) = hello(&mut ws).await;
    assert_eq!((cred.len(), n, state.as_str()), (48, 0, "new"));
    assert_eq!(log.lock().unwrap().offers[2].as_deref(), Some("chat"));
    assert_eq!(log.lock().unwrap().extensions[2], None);
    // An app text that starts with NUL is escaped on the resumable link
    // only: the backend gets it as the app sent it.
    ws.send(Message::text("\0\0app")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "\0\0app");
    assert_eq!(log.lock().unwrap().texts.last().unwrap(), "\0app");
    // An ack is control: it never reaches the backend.
    ws.send(Message::text("\0ack 1")).await.unwrap();
    ws.send(Message::text("end")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "end");
    assert!(!log.lock().unwrap().texts.iter().any(|t| t.contains("ack")));
}

#[tokio::test]
async fn a_lost_link_resumes_with_what_the_backend_sent_meanwhile() {
    let (b, log) = backend().await;
    let g = gateway(&cfg(b, ON)).await;
    let (mut ws, p) = connect_offering(&g.url("/?client_id=alice"), "wsgate.resume.v1").await;
    // The backend chose no subprotocol: the 101 names the resume one.
    assert_eq!(p.as_deref(), Some("wsgate.resume.v1"));
    let (cred, _, _) = hello(&mut ws).await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "one");
    // Ask for three messages later, then lose the link without a close frame.
    ws.send(Message::text("later:3:10")).await.unwrap();
    drop(ws);
    eventually("the session waits", || async {
        metric(g.admin, "wsgate_resume_sessions_waiting").await == 1.0
    })
    .await;
    eventually("the backend sent while the client was away", || async {
        metric(g.admin, "wsgate_resume_buffered_bytes").await >= 30.0
    })
    .await;

    // We received 1 ("one"); the gateway says it received 2 of ours.
    let (mut ws, _) = connect_offering(&g.url("/?client_id=alice"), &resume_offer(&cred, 1)).await;
    let (cred2, n, state) = hello(&mut ws).await;
    assert_eq!((n, state.as_str()), (2, "resumed"));
    assert_ne!(cred, cred2, "a new credential with every hello");
    for i in 1..=3 {
        assert_eq!(next_text(&mut ws).await, format!("d{i}........"));
    }
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "two");
    {
        let l = log.lock().unwrap();
        assert_eq!(l.offers.len(), 1, "the backend saw one connection");
        assert!(l.closes.is_empty(), "the backend noticed nothing");
        assert_eq!(l.texts, ["one", "later:3:10", "two"]);
    }
    assert_eq!(
        metric(g.admin, "wsgate_resume_total{result=\"resumed\"}").await,
        1.0
    );
    assert_eq!(metric(g.admin, "wsgate_resume_sessions_waiting").await, 0.0);

    // The spent credential again: unknown, a fresh session, state lost.
    let (mut ws2, _) = connect_offering(&g.url("/?client_id=alice"), &resume_offer(&cred, 1)).await;
    let (_, n, state) = hello(&mut ws2).await;
    assert_eq!((n, state.as_str()), (0, "lost:unknown"));
    assert_eq!(log.lock().unwrap().offers.len(), 2);
    assert_eq!(
        metric(g.admin, "wsgate_resume_total{result=\"unknown\"}").await,
        1.0
    );
    // The live session was not disturbed.
    ws.send(Message::text("three")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "three");
}

#[tokio::test]
async fn a_credential_from_another_client_id_is_refused() {
    let (b, log) = backend().await;
    let g = gateway(&cfg(b, ON)).await;
    let (mut ws, _) = connect_offering(&g.url("/?client_id=alice"), "wsgate.resume.v1").await;
    let (cred, _, _) = hello(&mut ws).await;
    drop(ws);
    eventually("the session waits", || async {
        metric(g.admin, "wsgate_resume_sessions_waiting").await == 1.0
    })
    .await;
    let (mut m, _) = connect_offering(&g.url("/?client_id=mallory"), &resume_offer(&cred, 0)).await;
    let (_, _, state) = hello(&mut m).await;
    assert_eq!(state, "lost:refused");
    assert_eq!(
        metric(g.admin, "wsgate_resume_total{result=\"refused\"}").await,
        1.0
    );
    // The owner can still resume: the refused attempt spent nothing.
    let (mut ws, _) = connect_offering(&g.url("/?client_id=alice"), &resume_offer(&cred, 0)).await;
    let (_, _, state) = hello(&mut ws).await;
    assert_eq!(state, "resumed");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hi");
    assert!(log.lock().unwrap().closes.is_empty());
}

#[tokio::test]
async fn the_window_passes_the_backend_gets_1001_and_the_client_learns_expired() {
    let (b, log) = backend().await;
    let g = gateway(&cfg(b, "[resume]\nenabled = true\nwindow = \"300ms\"\n")).await;
    let (mut ws, _) = connect_offering(&g.url("/"), "wsgate.resume.v1").await;
    let (cred, _, _) = hello(&mut ws).await;
    drop(ws);
    eventually("the backend is closed", || async {
        !log.lock().unwrap().closes.is_empty()
    })
    .await;
    assert_eq!(
        log.lock().unwrap().closes[0],
        (1001, "resume window expired".to_string())
    );
    assert_eq!(
        metric(g.admin, "wsgate_resume_total{result=\"expired\"}").await,
        1.0
    );
    assert_eq!(metric(g.admin, "wsgate_resume_sessions_waiting").await, 0.0);
    let (mut ws, _) = connect_offering(&g.url("/"), &resume_offer(&cred, 0)).await;
    let (_, _, state) = hello(&mut ws).await;
    assert_eq!(state, "lost:expired");
}

#[tokio::test]
async fn too_much_for_a_missing_client_overflows() {
    let (b, log) = backend().await;
    let g = gateway(&cfg(
        b,
        "[resume]\nenabled = true\nwindow = \"10s\"\nmax_buffered_bytes = 1024\n",
    ))
    .await;
    let (mut ws, _) = connect_offering(&g.url("/"), "wsgate.resume.v1").await;
    let (cred, _, _) = hello(&mut ws).await;
    ws.send(Message::text("later:3:500")).await.unwrap();
    drop(ws);
    eventually("the backend is closed", || async {
        !log.lock().unwrap().closes.is_empty()
    })
    .await;
    assert_eq!(
        log.lock().unwrap().closes[0],
        (1001, "resume buffer overflow".to_string())
    );
    assert_eq!(
        metric(g.admin, "wsgate_resume_total{result=\"overflow\"}").await,
        1.0
    );
    assert_eq!(metric(g.admin, "wsgate_resume_buffered_bytes").await, 0.0);
    let (mut ws, _) = connect_offering(&g.url("/"), &resume_offer(&cred, 0)).await;
    let (_, _, state) = hello(&mut ws).await;
    assert_eq!(state, "lost:overflow");
}

#[tokio::test]
async fn shutdown_closes_a_waiting_session_with_1001() {
    let (b, log) = backend().await;
    let g = gateway(&cfg(b, ON)).await;
    let (mut ws, _) = connect_offering(&g.url("/"), "wsgate.resume.v1").await;
    hello(&mut ws).await;
    drop(ws);
    eventually("the session waits", || async {
        metric(g.admin, "wsgate_resume_sessions_waiting").await == 1.0
    })
    .await;
    tokio::time::timeout(WAIT, g.gw.shutdown())
        .await
        .expect("shutdown in time");
    eventually("the backend is closed", || async {
        !log.lock().unwrap().closes.is_empty()
    })
    .await;
    assert_eq!(
        log.lock().unwrap().closes[0],
        (1001, "gateway shutting down".to_string())
    );
}

#[tokio::test]
async fn the_access_log_marks_a_resumed_connection_and_never_names_the_credential() {
    let (b, _) = backend().await;
    let dir = std::env::temp_dir().join(format!("wsgate-resume-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    let config = cfg(
        b,
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n{ON}"),
    );
    std::fs::write(&path, config).unwrap();
    let mut gw = binary::Binary::run(&path, "debug").await;
    let addr = gw.addr.clone();
    let rx = &mut gw.stderr;

    let url = format!("ws://{addr}/?client_id=carol");
    let (mut ws, _) = connect_offering(&url, "wsgate.resume.v1").await;
    let (cred, _, _) = hello(&mut ws).await;
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "a");
    drop(ws);
    // Resume until the gateway has noticed the lost link (a reconnect that
    // wins the race against the EOF takes over the live session all the same).
    let (mut ws, _) = connect_offering(&url, &resume_offer(&cred, 1)).await;
    let (cred2, _, state) = hello(&mut ws).await;
    assert_eq!(state, "resumed");
    ws.send(Message::text("b")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "b");
    ws.close(None).await.unwrap();
    while next_msg(&mut ws).await.is_some() {}

    let line = tokio::time::timeout(WAIT, async {
        loop {
            let l = rx.recv().await.expect("gateway stderr ended");
            assert!(
                !l.contains(&cred) && !l.contains(&cred2),
                "a credential reached the log: {l}"
            );
            if l.contains("wsgate::access") {
                return l;
            }
        }
    })
    .await
    .expect("an access-log line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(f["client_id"], "carol");
    assert_eq!(f["resumable"], true);
    assert_eq!(f["resumes"], 1);
    assert_eq!(f["c2b_messages"], 2);
    assert_eq!(f["b2c_messages"], 2);
    assert_eq!(f["initiator"], "client");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_waiting_session_counts_under_the_per_ip_cap() {
    let (b, _) = backend().await;
    let config = cfg(b, ON).replace("[server]\n", "[server]\nmax_connections_per_ip = 2\n");
    let g = gateway(&config).await;
    let (mut ws, _) = connect_offering(&g.url("/"), "wsgate.resume.v1").await;
    let (cred, _, _) = hello(&mut ws).await;
    drop(ws);
    eventually("the session waits", || async {
        metric(g.admin, "wsgate_resume_sessions_waiting").await == 1.0
    })
    .await;
    // The waiting session holds one place: one more link fits, not two.
    let _other = connect(&g.url("/")).await;
    let (status, _) = raw_request(g.addr, "/", "").await;
    assert_eq!(status, 429);
    drop(_other);
    // The reconnect takes the free place; the session gives back the old one.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ws = loop {
        let mut req = g.url("/").into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&resume_offer(&cred, 0)).unwrap(),
        );
        match tokio_tungstenite::connect_async(req).await {
            Ok((c, _)) => break c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no place came free: {e}"),
        }
    };
    let (_, _, state) = hello(&mut ws).await;
    assert_eq!(state, "resumed");
    // Two links: the resumed one and this one.
    let _third = connect(&g.url("/")).await;
    let (status, _) = raw_request(g.addr, "/", "").await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn a_drain_closes_a_waiting_session_and_an_attached_one_with_the_spec_codes() {
    let (b, log) = backend().await;
    let config = cfg(b, ON).replace("[server]\n", "[server]\nshutdown_grace = \"200ms\"\n");
    let g = gateway(&config).await;
    // One session waits (its client vanished), one is attached.
    let (mut gone, _) = connect_offering(&g.url("/"), "wsgate.resume.v1").await;
    hello(&mut gone).await;
    drop(gone);
    let (mut here, _) = connect_offering(&g.url("/"), "wsgate.resume.v1").await;
    hello(&mut here).await;
    eventually("one session waits", || async {
        metric(g.admin, "wsgate_resume_sessions_waiting").await == 1.0
    })
    .await;
    let (status, _, body) = http(g.admin, "POST", "/backends/b1/drain").await;
    assert_eq!(status, 200, "drain: {body}");
    // The attached client gets 1012 (reconnect elsewhere), like a relayed one.
    let close = loop {
        match next_msg(&mut here).await {
            Some(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Some(_) => continue,
            None => break None,
        }
    };
    assert_eq!(close, Some(1012));
    // Both backend links get 1001.
    eventually("both backend links are closed", || async {
        log.lock().unwrap().closes.len() == 2
    })
    .await;
    for (code, _) in log.lock().unwrap().closes.iter() {
        assert_eq!(*code, 1001);
    }
    assert_eq!(metric(g.admin, "wsgate_resume_sessions_waiting").await, 0.0);
}
