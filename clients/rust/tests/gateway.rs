//! The client against a real wsgate process (`target/debug/wsgate`, build it with
//! `cargo build -p wsgate`) in front of in-test echo backends.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::time::{Instant, sleep, timeout};
use wsgate_client::{
    BoxError, CloseReason, Disconnect, Heartbeat, State, TokenContext, TokenPlacement,
};

fn reconnecting(s: &State) -> bool {
    matches!(s, State::Reconnecting { .. })
}

#[tokio::test]
async fn reconnects_after_backend_killed_and_revived() {
    let mut backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let b = fast(&gw.url("/echo")).max_retries(None);
    let mut states = b.state_changes();
    let (client, mut incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("one").unwrap();
    assert_eq!(next_text(&mut incoming).await, "one");

    backend.kill();
    wait_state(&mut states, "Reconnecting", reconnecting).await;
    // The gateway reports the dead backend link with 1014; tungstenite alone would
    // have turned it into 1002 (= stop).
    assert_eq!(
        client.last_disconnect().map(|d| d.code()),
        Some(1014),
        "{:?}",
        client.last_disconnect()
    );
    // While the backend is down the gateway answers 502 and the client keeps trying.
    wait_state(
        &mut states,
        "a second attempt",
        |s| matches!(s, State::Reconnecting { attempt, .. } if *attempt >= 2),
    )
    .await;
    assert!(
        matches!(
            client.last_disconnect(),
            Some(Disconnect::Http { status: 502, .. })
        ),
        "{:?}",
        client.last_disconnect()
    );

    backend.revive().await;
    wait_open(&mut states).await;
    client.send("two").unwrap();
    assert_eq!(next_text(&mut incoming).await, "two");
    client.close().await;
    assert_eq!(
        client.state(),
        State::Closed {
            reason: CloseReason::Client
        }
    );
}

#[tokio::test]
async fn no_reconnect_on_4001() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let b = fast(&gw.url("/"));
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("close:4001:authentication failed").unwrap();
    let seen = wait_closed(&mut states).await;
    assert_eq!(
        seen.last(),
        Some(&State::Closed {
            reason: CloseReason::Terminal(Disconnect::Close {
                code: 4001,
                reason: "authentication failed".into()
            })
        })
    );
    sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.log.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http_401_at_the_handshake_stops() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let b = fast(&gw.url("/")).token_provider(
        TokenPlacement::Query("token".into()),
        move |_ctx: TokenContext| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>("bad-1".to_owned()) }
        },
    );
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_closed(&mut states).await;
    assert!(
        matches!(
            client.wait_closed().await,
            CloseReason::Terminal(Disconnect::Http { status: 401, .. })
        ),
        "{:?}",
        client.state()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn normal_close_1000_ends_quietly() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let b = fast(&gw.url("/"));
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("close:1000:bye").unwrap();
    wait_closed(&mut states).await;
    assert_eq!(
        client.wait_closed().await,
        CloseReason::Normal {
            reason: "bye".into()
        }
    );
    assert!(!client.wait_closed().await.is_error());
}

/// 4029 waits the long backoff (from half the cap); a 1012 right after uses the
/// normal one.
#[tokio::test]
async fn long_backoff_on_4029() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let b = fast(&gw.url("/"))
        .backoff(Duration::from_millis(100), Duration::from_secs(4))
        .reset_after(Duration::from_secs(30));
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_open(&mut states).await;

    client.send("close:4029:rate limit exceeded").unwrap();
    let seen = wait_state(&mut states, "Reconnecting", reconnecting).await;
    assert_eq!(
        seen.last(),
        Some(&State::Reconnecting {
            attempt: 1,
            delay: Duration::from_secs(2) // max(cap/2, base) * (0.5 + 0.5)
        })
    );
    let t0 = Instant::now();
    wait_open(&mut states).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "reconnected after {:?}",
        t0.elapsed()
    );

    client.send("close:1012:restart").unwrap();
    let seen = wait_state(&mut states, "Reconnecting", reconnecting).await;
    assert_eq!(
        seen.last(),
        Some(&State::Reconnecting {
            attempt: 2,
            delay: Duration::from_millis(200) // base * 2^1
        })
    );
    wait_open(&mut states).await;
    client.close().await;
}

type Seen = Arc<Mutex<Vec<TokenContext>>>;

/// A provider that records its calls and returns `tokens[i]` (the last one repeated).
fn provider(tokens: &'static [&'static str], seen: Seen) -> impl wsgate_client::TokenProvider {
    move |ctx: TokenContext| {
        let mut s = seen.lock().unwrap();
        s.push(ctx);
        let t = tokens[(s.len() - 1).min(tokens.len() - 1)].to_owned();
        async move { Ok::<_, BoxError>(t) }
    }
}

#[tokio::test]
async fn token_expired_refreshes_once() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let seen: Seen = Arc::default();
    let b = fast(&gw.url("/")).token_provider(
        TokenPlacement::Query("token".into()),
        provider(&["expired-1", "good-2"], seen.clone()),
    );
    let mut states = b.state_changes();
    let (client, mut incoming) = b.connect();
    let mut all = wait_open(&mut states).await;
    all.extend(wait_open(&mut states).await);
    assert_eq!(
        all,
        vec![
            State::Connecting,
            State::Open,
            State::Reconnecting {
                attempt: 1,
                delay: Duration::ZERO
            },
            State::Connecting,
            State::Open
        ]
    );
    assert_eq!(
        *backend.log.tokens.lock().unwrap(),
        vec!["expired-1", "good-2"]
    );
    let ctx = seen.lock().unwrap().clone();
    assert!(!ctx[0].refresh);
    assert!(ctx[1].refresh);
    assert_eq!(ctx[1].refused, vec!["expired-1".to_owned()]);
    assert_eq!(
        ctx[1].last,
        Some(Disconnect::Close {
            code: 4001,
            reason: "token expired".into()
        })
    );
    client.send("hi").unwrap();
    assert_eq!(next_text(&mut incoming).await, "hi");
    client.close().await;
}

#[tokio::test]
async fn token_expired_twice_stops() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let seen: Seen = Arc::default();
    let b = fast(&gw.url("/")).token_provider(
        TokenPlacement::Query("token".into()),
        provider(&["expired-1", "expired-2", "good-3"], seen.clone()),
    );
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_closed(&mut states).await;
    assert_eq!(
        client.wait_closed().await,
        CloseReason::Terminal(Disconnect::Close {
            code: 4001,
            reason: "token expired".into()
        })
    );
    assert_eq!(
        *backend.log.tokens.lock().unwrap(),
        vec!["expired-1", "expired-2"]
    );
}

/// A provider that hands back the token the server just refused is not used again.
#[tokio::test]
async fn refused_token_is_never_reused() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let seen: Seen = Arc::default();
    let b = fast(&gw.url("/")).token_provider(
        TokenPlacement::Query("token".into()),
        provider(&["expired-1"], seen.clone()),
    );
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_closed(&mut states).await;
    assert_eq!(
        client.wait_closed().await,
        CloseReason::Terminal(Disconnect::StaleToken)
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(*backend.log.tokens.lock().unwrap(), vec!["expired-1"]);
}

/// Messages sent before the first successful connect are flushed in order.
#[tokio::test]
async fn queue_flushed_in_order_on_open() {
    let port = free_port();
    let gw = Gateway::start(&[("b1", port)], "").await;
    let b = fast(&gw.url("/")).max_retries(None);
    let mut states = b.state_changes();
    let (client, mut incoming) = b.connect();
    wait_state(&mut states, "Reconnecting", reconnecting).await; // backend down: 502
    for i in 0..50 {
        client.send(format!("m{i}")).unwrap();
    }
    assert_eq!(client.queued().messages, 50);
    assert_ne!(client.state(), State::Open);

    let backend = Backend::start_on(port).await;
    wait_open(&mut states).await;
    for i in 0..50 {
        assert_eq!(next_text(&mut incoming).await, format!("m{i}"));
    }
    assert_eq!(client.queued().messages, 0);
    assert_eq!(
        *backend.log.received.lock().unwrap(),
        (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    client.close().await;
}

/// The gateway answers the app ping itself (pongs are swallowed); frozen with SIGSTOP
/// it stops answering and the client declares the link dead within interval + timeout.
#[tokio::test]
async fn heartbeat_detects_a_frozen_gateway() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let b = fast(&gw.url("/"))
        .max_retries(None)
        .connect_timeout(Duration::from_millis(500))
        .heartbeat(Some(Heartbeat {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(300),
            ..Heartbeat::default()
        }));
    let mut states = b.state_changes();
    let (client, mut incoming) = b.connect();
    wait_open(&mut states).await;
    // Several ping/pong rounds: nothing delivered, still open, nothing reached the backend.
    assert!(
        timeout(Duration::from_millis(1200), incoming.recv())
            .await
            .is_err()
    );
    assert!(
        states.try_recv().is_err(),
        "state changed while the gateway was answering pings"
    );
    assert!(backend.log.received.lock().unwrap().is_empty());

    gw.freeze();
    let t0 = Instant::now();
    wait_state(&mut states, "Reconnecting", reconnecting).await;
    let took = t0.elapsed();
    assert_eq!(client.last_disconnect(), Some(Disconnect::HeartbeatTimeout));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // Frozen: the upgrade is never answered, the connect watchdog fires.
    wait_state(
        &mut states,
        "a second attempt",
        |s| matches!(s, State::Reconnecting { attempt, .. } if *attempt >= 2),
    )
    .await;
    assert_eq!(client.last_disconnect(), Some(Disconnect::ConnectTimeout));

    gw.thaw();
    wait_open(&mut states).await;
    client.close().await;
}

/// The exact sequence of states, including the attempt counter's reset after
/// `reset_after` of uptime.
#[tokio::test]
async fn state_stream_sequence() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&[("b1", backend.port)], "").await;
    let b = fast(&gw.url("/")).reset_after(Duration::from_millis(300));
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    let mut all = wait_open(&mut states).await;
    sleep(Duration::from_millis(400)).await;
    client.send("close:1012:restart").unwrap();
    all.extend(wait_open(&mut states).await);
    client.send("close:1001:going away").unwrap(); // within reset_after: attempt 2
    all.extend(wait_open(&mut states).await);
    sleep(Duration::from_millis(400)).await;
    client.send("close:1011:oops").unwrap(); // after reset_after: attempt 1 again
    all.extend(wait_open(&mut states).await);
    client.close().await;
    all.extend(wait_closed(&mut states).await);
    let r = |attempt, ms| State::Reconnecting {
        attempt,
        delay: Duration::from_millis(ms),
    };
    assert_eq!(
        all,
        vec![
            State::Connecting,
            State::Open,
            r(1, 50),
            State::Connecting,
            State::Open,
            r(2, 100),
            State::Connecting,
            State::Open,
            r(1, 50),
            State::Connecting,
            State::Open,
            State::Closed {
                reason: CloseReason::Client
            },
        ]
    );
    assert_eq!(backend.log.handshakes.load(Ordering::SeqCst), 4);
}

/// A chat-like session survives a gateway restart on its own: SIGTERM (graceful,
/// close 1001), then a new wsgate process on the same port. The client reconnects
/// with backoff; a message sent during the downtime is queued and delivered, in
/// order, between the ones sent before and after.
#[tokio::test]
async fn survives_a_gateway_restart() {
    if std::env::var_os("WSGATE_CLIENT_DIRECT").is_some() {
        return; // no gateway process to restart
    }
    let backend = Backend::start().await;
    let port = free_port();
    let mut gw = Gateway::start_on(port, &[("b1", backend.port)], "").await;
    let url = gw.url("/chat");
    let b = fast(&url).max_retries(None);
    let mut states = b.state_changes();
    let (client, mut incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("before").unwrap();
    assert_eq!(next_text(&mut incoming).await, "before");

    let status = gw.terminate().await;
    assert!(status.success(), "wsgate exited with {status}");
    wait_state(&mut states, "Reconnecting", reconnecting).await;
    assert!(
        matches!(
            client.last_disconnect(),
            Some(Disconnect::Close { code: 1001, .. })
        ),
        "{:?}",
        client.last_disconnect()
    );
    // Down: the message waits in the queue while attempts fail (connection refused).
    client.send("during").unwrap();
    wait_state(
        &mut states,
        "a failed attempt during the downtime",
        |s| matches!(s, State::Reconnecting { attempt, .. } if *attempt >= 2),
    )
    .await;
    assert_ne!(client.state(), State::Open);
    assert_eq!(client.queued().messages, 1);

    let gw2 = Gateway::start_on(port, &[("b1", backend.port)], "").await;
    assert_eq!(
        gw2.url("/chat"),
        url,
        "the new gateway took over the same address"
    );
    wait_open(&mut states).await;
    assert_eq!(next_text(&mut incoming).await, "during");
    client.send("after").unwrap();
    assert_eq!(next_text(&mut incoming).await, "after");
    assert_eq!(client.queued().messages, 0);
    assert_eq!(
        *backend.log.received.lock().unwrap(),
        vec!["before", "during", "after"]
    );
    assert_eq!(backend.log.handshakes.load(Ordering::SeqCst), 2);
    client.close().await;
}

/// Generates a CA and a leaf certificate for 127.0.0.1 with the openssl CLI; returns
/// (ca.pem, cert.pem, key.pem).
#[cfg(feature = "rustls-tls")]
fn make_certs(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=wsgate test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// wss:// through a gateway terminating TLS, trusting a test CA.
#[cfg(feature = "rustls-tls")]
#[tokio::test]
async fn wss_through_a_tls_gateway() {
    use wsgate_client::rustls;
    use wsgate_client::rustls::pki_types::CertificateDer;
    use wsgate_client::rustls::pki_types::pem::PemObject;

    let dir = std::env::temp_dir().join(format!("wsgate-client-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = make_certs(&dir);
    let backend = Backend::start().await;
    let gw = Gateway::start(
        &[("b1", backend.port)],
        &format!(
            "\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let addr = gw
        .ws
        .split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .to_owned();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let b = fast(&format!("wss://{addr}/secure")).tls_config(Arc::new(tls));
    let mut states = b.state_changes();
    let (client, mut incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("over tls").unwrap();
    assert_eq!(next_text(&mut incoming).await, "over tls");
    client.close().await;

    // Without the test CA the default (webpki roots) refuses the certificate.
    let b = fast(&format!("wss://{addr}/secure")).max_retries(Some(0));
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_closed(&mut states).await;
    assert!(
        matches!(&client.last_disconnect(), Some(Disconnect::Abnormal { error }) if error.contains("TLS")),
        "{:?}",
        client.last_disconnect()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
