//! The access log of the real binary: one JSON line per finished
//! connection with peer, client ID, backend, duration, traffic each way,
//! close code and initiator, and never the token from the query.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[tokio::test]
async fn json_access_log_line_per_connection_without_tokens() {
    let (b, _) = echo_backend().await;
    let dir = std::env::temp_dir().join(format!("wsgate-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n\
             [health]\nhttp_path = \"\"\nws_path = \"\"\n[[backends]]\nname = \"b1\"\nurl = \"ws://{b}\"\n"
        ),
    )
    .unwrap();
    let mut gw = binary::Binary::run(&cfg, "info").await;
    let addr = gw.addr.clone();
    let rx = &mut gw.stderr;

    let secret = "sekret-token-value";
    let mut c = connect(&format!("ws://{addr}/room?client_id=alice&token={secret}")).await;
    for _ in 0..3 {
        c.send(Message::text("hello")).await.unwrap();
        next_msg(&mut c).await;
    }
    c.close(Some(CloseFrame {
        code: 1000.into(),
        reason: "".into(),
    }))
    .await
    .unwrap();
    while next_msg(&mut c).await.is_some() {}

    let line = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let l = rx.recv().await.expect("gateway stderr ended");
            assert!(!l.contains(secret), "a token reached the log: {l}");
            if l.contains("wsgate::access") {
                return l;
            }
        }
    })
    .await
    .expect("an access-log line");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let f = &v["fields"];
    assert_eq!(f["client_id"], "alice");
    assert_eq!(f["backend"], "b1");
    assert_eq!(f["c2b_messages"], 3);
    assert_eq!(f["b2c_messages"], 3);
    assert_eq!(f["c2b_bytes"], 15);
    assert_eq!(f["close_code"], 1000);
    assert_eq!(f["initiator"], "client");
    assert!(f["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(f["duration_ms"].is_u64());
    let _ = std::fs::remove_dir_all(&dir);
}
