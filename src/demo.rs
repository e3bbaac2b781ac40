//! `wsgate demo`: two in-process WebSocket echo backends and the embedded
//! config in front of them, so the gateway runs with no file and no other
//! program. The backends echo text and binary messages and say which
//! backend answered on connect.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::config::Config;

/// Starts an echo backend named `name` on `127.0.0.1:0`; returns its address.
pub async fn echo_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let hello = format!("{{\"type\":\"hello\",\"backend\":\"{name}\"}}");
                if ws.send(Message::text(hello)).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(_) | Message::Binary(_) => msg,
                        // Keep reading: tungstenite answers the close and
                        // then ends the stream.
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// The embedded default of `wsgate demo`: the gateway in front of the echo
/// backends at `backend_addrs`, with the app-level ping answered by the
/// gateway. Kept as TOML text so it goes through the same parse and
/// validation as any file.
pub fn config(backend_addrs: &[SocketAddr]) -> Config {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[admin]\nlisten = \"127.0.0.1:9090\"\n\n\
         [heartbeat]\napp_ping = '{\"type\":\"ping\"}'\napp_pong = '{\"type\":\"pong\"}'\n\n\
         [health]\nhttp_path = \"\"\ninterval = \"2s\"\n",
    );
    for (i, a) in backend_addrs.iter().enumerate() {
        text.push_str(&format!(
            "\n[[backends]]\nname = \"demo-{}\"\nurl = \"ws://{a}\"\n",
            i + 1
        ));
    }
    Config::parse(&text).expect("the embedded demo config is valid")
}
