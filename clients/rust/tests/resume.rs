//! Resumable sessions: the client against a real wsgate process with `[resume]`
//! enabled, through a TCP proxy that cuts the link (no close frame) mid-stream,
//! in front of a plain backend that knows nothing about resumption.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsgate_client::{Message, State};

/// A TCP proxy whose links can be cut at once: both sockets are dropped with
/// SO_LINGER 0 (a reset), so neither end sees a close frame.
struct CuttingProxy {
    port: u16,
    links: Arc<Mutex<JoinSet<()>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn start(target: String) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let l = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                l.lock().unwrap().spawn(async move {
                    let Ok(upstream) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    // Reset, not FIN, when the task is aborted and the sockets dropped.
                    // (Deprecated because a non-zero linger blocks on drop; zero does not.)
                    #[allow(deprecated)]
                    let _ = client.set_linger(Some(Duration::ZERO));
                    #[allow(deprecated)]
                    let _ = upstream.set_linger(Some(Duration::ZERO));
                    let (mut a, mut b) = (client, upstream);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
            }
        });
        CuttingProxy {
            port,
            links,
            _accept: accept,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Drops every current link mid-stream.
    fn cut(&self) -> usize {
        let mut links = self.links.lock().unwrap();
        let n = links.len();
        links.abort_all();
        n
    }
}

/// A plain backend: echoes what it gets, and sends its own numbered
/// messages `b<N>` every `tick`, recording what it received.
struct TickingBackend {
    port: u16,
    received: Arc<Mutex<Vec<String>>>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl TickingBackend {
    async fn start(tick: Duration) -> TickingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let closes: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
        let (r, s, st, c, cl) = (
            received.clone(),
            sent.clone(),
            stop.clone(),
            connections.clone(),
            closes.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, s, st, cl) = (r.clone(), s.clone(), st.clone(), cl.clone());
                tokio::spawn(async move {
                    let (mut tx, mut rx) = ws.split();
                    let mut ticker = tokio::time::interval(tick);
                    loop {
                        tokio::select! {
                            _ = ticker.tick(), if !st.load(Ordering::SeqCst) => {
                                let n = s.fetch_add(1, Ordering::SeqCst) + 1;
                                if tx.send(WsMessage::text(format!("b{n}"))).await.is_err() {
                                    return;
                                }
                            }
                            m = rx.next() => match m {
                                Some(Ok(WsMessage::Text(t))) => {
                                    r.lock().unwrap().push(t.to_string());
                                    if tx.send(WsMessage::Text(t)).await.is_err() {
                                        return;
                                    }
                                }
                                Some(Ok(WsMessage::Close(f))) => {
                                    let f = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                                    cl.lock().unwrap().push(f.unwrap_or((1005, String::new())));
                                    return;
                                }
                                Some(Ok(_)) => {}
                                _ => return,
                            },
                        }
                    }
                });
            }
        });
        TickingBackend {
            port,
            received,
            sent,
            stop,
            connections,
            closes,
            _task: task,
        }
    }
}

/// Checks that `got` is exactly `prefix1..=n` in order.
fn assert_sequence(what: &str, got: &[String], prefix: &str, n: u64) {
    let want: Vec<String> = (1..=n).map(|i| format!("{prefix}{i}")).collect();
    if got != want {
        let first_bad = got
            .iter()
            .zip(&want)
            .position(|(g, w)| g != w)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} messages, want {n}; first difference at {first_bad}: got {:?}, want {:?}",
            got.len(),
            got.get(first_bad),
            want.get(first_bad)
        );
    }
}

const RESUME: &str = "\n[resume]\nenabled = true\nwindow = \"10s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_cuts_lose_duplicate_and_reorder_nothing() {
    let backend = TickingBackend::start(Duration::from_millis(3)).await;
    let gw = Gateway::start(&[("b1", backend.port)], RESUME).await;
    let proxy = CuttingProxy::start(gw.ws.trim_start_matches("ws://").to_owned()).await;
    let b = fast(&proxy.url("/chat"))
        .resume(true)
        .max_retries(None)
        .reset_after(Duration::from_millis(1))
        .backoff(Duration::from_millis(10), Duration::from_millis(40));
    let mut states = b.state_changes();
    let (client, mut incoming) = b.connect();
    wait_open(&mut states).await;

    // The client sends c1, c2, ... every 3 ms; the backend echoes them and sends
    // b1, b2, ... every 3 ms.
    let sent = Arc::new(AtomicU64::new(0));
    let sending = Arc::new(AtomicBool::new(true));
    let (s, go, c) = (sent.clone(), sending.clone(), client.clone());
    let sender = tokio::spawn(async move {
        while go.load(Ordering::SeqCst) {
            let n = s.load(Ordering::SeqCst) + 1;
            c.send(format!("c{n}")).unwrap();
            s.store(n, Ordering::SeqCst);
            sleep(Duration::from_millis(3)).await;
        }
    });
    let got_b: Arc<Mutex<Vec<String>>> = Arc::default();
    let got_c: Arc<Mutex<Vec<String>>> = Arc::default();
    let (gb, gc) = (got_b.clone(), got_c.clone());
    let receiver = tokio::spawn(async move {
        while let Some(m) = incoming.recv().await {
            let Message::Text(t) = m else { continue };
            if t.starts_with('b') {
                gb.lock().unwrap().push(t.to_string());
            } else {
                gc.lock().unwrap().push(t.to_string());
            }
        }
    });
    let lost = Arc::new(AtomicBool::new(false));
    // Links lost, counted from the stream of changes: a reconnect can finish
    // before a watcher of the current state looks.
    let drops = Arc::new(AtomicU64::new(0));
    let (l, d) = (lost.clone(), drops.clone());
    let watcher = tokio::spawn(async move {
        while let Ok(s) = states.recv().await {
            match s {
                State::StateLost { .. } => l.store(true, Ordering::SeqCst),
                State::Reconnecting { .. } => {
                    d.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });

    let mut cuts = 0;
    let mut opens = client.watch_state();
    for _ in 0..100 {
        // Let traffic flow on the new link, then cut it mid-stream.
        timeout(WAIT, opens.wait_for(|s| matches!(s, State::Open)))
            .await
            .expect("the client came back in time")
            .unwrap();
        sleep(Duration::from_millis(40)).await;
        let before = drops.load(Ordering::SeqCst);
        if proxy.cut() > 0 {
            cuts += 1;
        }
        timeout(WAIT, async {
            while drops.load(Ordering::SeqCst) == before {
                sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the client noticed the cut");
    }
    timeout(WAIT, opens.wait_for(|s| matches!(s, State::Open)))
        .await
        .unwrap()
        .unwrap();
    sending.store(false, Ordering::SeqCst);
    sender.await.unwrap();
    backend.stop.store(true, Ordering::SeqCst);
    // A tick already past the flag still counts: let it finish.
    sleep(Duration::from_millis(50)).await;
    let n_c = sent.load(Ordering::SeqCst);
    let n_b = backend.sent.load(Ordering::SeqCst);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline
        && (backend.received.lock().unwrap().len() < n_c as usize
            || got_b.lock().unwrap().len() < n_b as usize
            || got_c.lock().unwrap().len() < n_c as usize)
    {
        sleep(Duration::from_millis(20)).await;
    }
    // A little longer: a duplicate would arrive now.
    sleep(Duration::from_millis(200)).await;
    assert_eq!(cuts, 100);
    assert!(!lost.load(Ordering::SeqCst), "no state was lost");
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "the backend saw one connection for all 100 cuts"
    );
    assert_sequence(
        "backend received",
        &backend.received.lock().unwrap(),
        "c",
        n_c,
    );
    assert_sequence("client received", &got_b.lock().unwrap(), "b", n_b);
    assert_sequence("client received echoes", &got_c.lock().unwrap(), "c", n_c);
    eprintln!("100 cuts: {n_c} messages up, {n_b} + {n_c} down, each exactly once and in order");
    assert!(backend.closes.lock().unwrap().is_empty());
    client.close().await;
    receiver.abort();
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_is_reported_once_as_state_lost() {
    let backend = Backend::start().await;
    let mut gw = Gateway::start(&[("b1", backend.port)], RESUME).await;
    let port: u16 = gw.ws.rsplit(':').next().unwrap().parse().unwrap();
    let b = fast(&gw.url("/chat")).resume(true).max_retries(None);
    let mut states = b.state_changes();
    let (client, mut incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("before").unwrap();
    assert_eq!(next_text(&mut incoming).await, "before");

    // Killed (no close frame): the session is gone with the process.
    gw.child.as_mut().unwrap().kill().await.unwrap();
    let mut gw = Gateway::start_on(port, &[("b1", backend.port)], RESUME).await;
    let seen = wait_state(&mut states, "StateLost", |s| {
        matches!(s, State::StateLost { .. })
    })
    .await;
    assert_eq!(
        seen.last(),
        Some(&State::StateLost {
            reason: "unknown".into()
        })
    );
    client.send("after a kill").unwrap();
    assert_eq!(next_text(&mut incoming).await, "after a kill");

    // Stopped gracefully (1001 to the client): reported the same way.
    gw.terminate().await;
    let _gw = Gateway::start_on(port, &[("b1", backend.port)], RESUME).await;
    let seen = wait_state(&mut states, "StateLost", |s| {
        matches!(s, State::StateLost { .. })
    })
    .await;
    assert_eq!(
        seen.iter()
            .filter(|s| matches!(s, State::StateLost { .. }))
            .count(),
        1,
        "{seen:?}"
    );
    client.send("after a restart").unwrap();
    assert_eq!(next_text(&mut incoming).await, "after a restart");
    client.close().await;
}
