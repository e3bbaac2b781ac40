//! Client behaviour against in-test backends directly (no gateway): the parts that
//! need a peer misbehaving in ways the gateway would hide.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use wsgate_client::{
    CloseDecision, CloseReason, Disconnect, Heartbeat, Message, Overflow, QueueLimits, SendError,
    State, TokenContext, TokenPlacement,
};

/// tungstenite reports a received 1014 as 1002 (which would mean "stop"); the client
/// reads the raw close frame, reports 1014 and reconnects with the normal backoff.
#[tokio::test]
async fn close_1014_is_reported_as_1014_and_retried() {
    let backend = Backend::start().await;
    let b = fast(&backend.url());
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("close:1014:backend gone").unwrap();
    let seen = wait_state(&mut states, "Reconnecting", |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    assert_eq!(
        seen.last(),
        Some(&State::Reconnecting {
            attempt: 1,
            delay: Duration::from_millis(50)
        })
    );
    assert_eq!(
        client.last_disconnect(),
        Some(Disconnect::Close {
            code: 1014,
            reason: "backend gone".into()
        })
    );
    wait_open(&mut states).await;
    client.close().await;
}

/// 1002 really is terminal.
#[tokio::test]
async fn close_1002_stops() {
    let backend = Backend::start().await;
    let b = fast(&backend.url());
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("close:1002:bad frame").unwrap();
    wait_closed(&mut states).await;
    assert_eq!(
        client.wait_closed().await,
        CloseReason::Terminal(Disconnect::Close {
            code: 1002,
            reason: "bad frame".into()
        })
    );
    assert_eq!(backend.log.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unknown_4xxx_asks_the_app() {
    let backend = Backend::start().await;
    // Default: stop.
    let b = fast(&backend.url());
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("close:4100:custom").unwrap();
    wait_closed(&mut states).await;
    assert!(client.wait_closed().await.is_error());

    // With a callback that says reconnect.
    let asked = Arc::new(Mutex::new(Vec::new()));
    let a = asked.clone();
    let b = fast(&backend.url()).on_close_code(move |code, reason| {
        a.lock().unwrap().push((code, reason.to_owned()));
        CloseDecision::Reconnect
    });
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_open(&mut states).await;
    client.send("close:4100:custom").unwrap();
    wait_state(&mut states, "Reconnecting", |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    wait_open(&mut states).await;
    assert_eq!(*asked.lock().unwrap(), vec![(4100, "custom".to_owned())]);
    client.close().await;
}

#[tokio::test]
async fn retries_exhausted_stops_and_reports() {
    let port = free_port(); // nothing listens: connection refused
    let b = fast(&format!("ws://127.0.0.1:{port}/")).max_retries(Some(2));
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    let seen = wait_closed(&mut states).await;
    assert_eq!(
        seen.iter()
            .filter_map(|s| match s {
                State::Reconnecting { attempt, delay } => Some((*attempt, delay.as_millis())),
                _ => None,
            })
            .collect::<Vec<_>>(),
        vec![(1, 50), (2, 100)]
    );
    match client.wait_closed().await {
        CloseReason::RetriesExhausted {
            attempts: 2,
            last: Disconnect::Abnormal { .. },
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(client.send("x"), Err(SendError::Closed(_))));
}

#[tokio::test]
async fn bounded_queue_policies() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/");
    // Reject: by count, then by bytes.
    let (client, _i) = fast(&url)
        .max_retries(None)
        .queue(QueueLimits {
            max_messages: 3,
            max_bytes: 10,
            overflow: Overflow::Reject,
        })
        .connect();
    client.send("aa").unwrap();
    client.send("bb").unwrap();
    client.send("cc").unwrap();
    assert_eq!(
        client.send("dd"),
        Err(SendError::QueueFull(Message::text("dd")))
    );
    assert_eq!(client.queued().messages, 3);
    assert_eq!(client.queued().bytes, 6);
    assert_eq!(
        client.clear_queue(),
        vec![
            Message::text("aa"),
            Message::text("bb"),
            Message::text("cc")
        ]
    );
    client.send("12345678").unwrap();
    assert_eq!(
        client.send("123"),
        Err(SendError::QueueFull(Message::text("123")))
    );
    assert_eq!(
        client.send("12345678901"),
        Err(SendError::TooLarge(Message::text("12345678901")))
    );
    // send_wait waits for room.
    let c2 = client.clone();
    let waiter = tokio::spawn(async move { c2.send_wait("xyz").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    client.clear_queue();
    tokio::time::timeout(WAIT, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(client.queued_messages(), vec![Message::text("xyz")]);
    client.close().await;
    assert!(matches!(client.send("late"), Err(SendError::Closed(_))));
    // The queue survives close for inspection.
    assert_eq!(client.queued().messages, 1);

    // DropOldest.
    let (client, _i) = fast(&url)
        .max_retries(None)
        .queue(QueueLimits {
            max_messages: 3,
            max_bytes: 1000,
            overflow: Overflow::DropOldest,
        })
        .connect();
    for i in 0..5 {
        client.send(format!("m{i}")).unwrap();
    }
    assert_eq!(
        client.queued_messages(),
        vec![
            Message::text("m2"),
            Message::text("m3"),
            Message::text("m4")
        ]
    );
    assert_eq!(client.queued().dropped, 2);
    client.close().await;
}

/// A peer that accepts and never reads: the bytes the client holds stay bounded
/// (queue limit + write high-water mark + one frame) and `send` starts refusing.
#[tokio::test]
async fn backpressure_bounds_memory_on_a_stalled_link() {
    let backend = Backend::start().await;
    backend.log.silent.store(true, Ordering::SeqCst);
    let high = 128 * 1024;
    let msg = 16 * 1024;
    let b = fast(&backend.url())
        .write_water_marks(high, 32 * 1024)
        .queue(QueueLimits {
            max_messages: 10_000,
            max_bytes: 512 * 1024,
            overflow: Overflow::Reject,
        });
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_open(&mut states).await;
    let payload = vec![7u8; msg];
    let mut accepted = 0usize;
    let mut full_since: Option<tokio::time::Instant> = None;
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match client.send(payload.clone()) {
                Ok(()) => {
                    accepted += msg;
                    full_since = None;
                    tokio::task::yield_now().await;
                }
                Err(SendError::QueueFull(_)) => {
                    let since = *full_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > Duration::from_millis(500) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(accepted < 256 << 20, "send never pushed back");
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "the queue never stayed full (accepted {accepted} bytes)"
    );
    assert!(
        client.unwritten() <= high + msg + 14,
        "unwritten {} over the high-water mark",
        client.unwritten()
    );
    assert!(client.queued().bytes <= 512 * 1024);
    assert_eq!(client.state(), State::Open);
    eprintln!(
        "stalled link: accepted {} KiB before push-back (kernel buffers included), unwritten {} KiB",
        accepted / 1024,
        client.unwritten() / 1024
    );
    client.clear_queue();
}

/// A peer that accepts and then never answers: the heartbeat declares the link dead
/// within interval + timeout and reconnects.
#[tokio::test]
async fn heartbeat_detects_a_silent_peer() {
    let backend = Backend::start().await;
    backend.log.silent.store(true, Ordering::SeqCst);
    let b = fast(&backend.url()).heartbeat(Some(Heartbeat {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
        ..Heartbeat::default()
    }));
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    wait_open(&mut states).await;
    let t0 = tokio::time::Instant::now();
    wait_state(&mut states, "Reconnecting", |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert_eq!(client.last_disconnect(), Some(Disconnect::HeartbeatTimeout));
    // The peer received the pings.
    wait_open(&mut states).await;
    client.close().await;
}

/// The pong text is consumed; other messages are delivered; token as first message.
#[tokio::test]
async fn pong_consumed_and_first_message_token() {
    let backend = Backend::start().await;
    let b = fast(&backend.url())
        .heartbeat(Some(Heartbeat::default()))
        .token_provider(TokenPlacement::FirstMessage, |_ctx: TokenContext| async {
            Ok::<_, wsgate_client::BoxError>("tok-1".to_owned())
        });
    let (client, mut incoming) = b.connect();
    client.send(r#"{"type":"pong"}"#).unwrap(); // the echo backend sends it back
    client.send("after").unwrap();
    assert_eq!(next_text(&mut incoming).await, "tok-1"); // echoed token
    assert_eq!(next_text(&mut incoming).await, "after");
    assert_eq!(backend.log.received.lock().unwrap()[0], "tok-1");
    client.close().await;
}

/// The default schedule (1 s base, 30 s cap, 10 retries) under tokio's paused clock:
/// about three minutes of backoff run in an instant.
#[tokio::test(start_paused = true)]
async fn default_backoff_schedule_with_paused_clock() {
    let port = free_port();
    let b = wsgate_client::Client::builder(format!("ws://127.0.0.1:{port}/"))
        .random(Arc::new(|| 0.5))
        .heartbeat(None);
    let mut states = b.state_changes();
    let (client, _incoming) = b.connect();
    // Virtual time: ~181 s of backoff.
    let seen = wait_state_for(&mut states, "Closed", Duration::from_secs(600), |s| {
        matches!(s, State::Closed { .. })
    })
    .await;
    let delays: Vec<u64> = seen
        .iter()
        .filter_map(|s| match s {
            State::Reconnecting { delay, .. } => Some(delay.as_secs()),
            _ => None,
        })
        .collect();
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30, 30, 30]);
    assert!(matches!(
        client.wait_closed().await,
        CloseReason::RetriesExhausted { attempts: 10, .. }
    ));
}

/// reconnect() replaces a live link at once, and restarts a stopped client (queue kept).
#[tokio::test]
async fn reconnect_replaces_a_live_link_and_restarts_a_stopped_client() {
    let backend = Backend::start().await;
    let b = fast(&backend.url());
    let mut states = b.state_changes();
    let (client, mut incoming) = b.connect();
    wait_open(&mut states).await;
    assert!(client.reconnect().is_none());
    let seen = wait_open(&mut states).await;
    assert_eq!(seen, vec![State::Connecting, State::Open]);
    eventually("second handshake", || {
        backend.log.handshakes.load(Ordering::SeqCst) == 2
    })
    .await;

    // Stopped by the server (1000): the old Incoming ends, queued messages wait.
    client.send("close:1000:bye").unwrap();
    wait_closed(&mut states).await;
    assert_eq!(
        tokio::time::timeout(WAIT, incoming.recv()).await.unwrap(),
        None
    );
    assert!(matches!(client.send("x"), Err(SendError::Closed(_))));
    let mut incoming = client.reconnect().expect("a new Incoming after Closed");
    client.send("queued before open").unwrap();
    assert_eq!(next_text(&mut incoming).await, "queued before open");
    assert_eq!(client.state(), State::Open);
    client.close().await;
}
