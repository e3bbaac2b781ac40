//! The access log of the real binary: one JSON line per finished
//! connection with peer, client ID, backend, duration, traffic each way,
//! close code and initiator, and never the token from the query.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Kills the gateway process when the test ends, pass or fail.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let stdout = child.0.stdout.take().unwrap();
    let addr = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("wsgate listening on ws://")
                    .map(str::to_string)
            })
            .expect("listening line")
    })
    .await
    .unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

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
