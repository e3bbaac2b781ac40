mod common;
use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn harness_echo_through_gateway() {
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let mut c = connect(&g.url("/")).await;
    c.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Some(Message::text("hi")));
}
