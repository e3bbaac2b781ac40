//! `POST /backends/{name}/drain` against real backends: the backend leaves
//! the ring at once, and its open connections get close 1012 spread over
//! `shutdown_grace`, while other backends' connections stay. Every wait is
//! bounded.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::time::Instant;

use common::named::*;

/// `wsgate_closes_total` for one initiator and code, whatever the label order.
async fn closes(admin: SocketAddr, initiator: &str, code: &str) -> f64 {
    let (_, _, body) = http(admin, "GET", "/metrics").await;
    let (i, c) = (
        format!("initiator=\"{initiator}\""),
        format!("code=\"{code}\""),
    );
    body.lines()
        .filter(|l| l.starts_with("wsgate_closes_total{") && l.contains(&i) && l.contains(&c))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn three(server: &str) -> (Vec<TestBackend>, TestGateway) {
    let mut bs = Vec::new();
    for n in ["b1", "b2", "b3"] {
        bs.push(TestBackend::start(n).await);
    }
    let list: Vec<_> = bs.iter().map(|b| (b.st.name.as_str(), b.addr, 1)).collect();
    let g = gateway(&cfg(&list, server, "")).await;
    (bs, g)
}

#[tokio::test]
async fn drain_leaves_the_ring_at_once_and_spreads_1012_over_grace() {
    let (_bs, g) = three("shutdown_grace = \"2s\"").await;
    // 20 connections on b1, and a few on the others.
    let (mut on_b1, mut others) = (Vec::new(), Vec::new());
    for i in 0..400 {
        if on_b1.len() == 20 && others.len() >= 6 {
            break;
        }
        let id = format!("drain-{i}");
        let (c, b) = open(&g, &id).await;
        if b == "b1" && on_b1.len() < 20 {
            on_b1.push((id, c));
        } else if b != "b1" && others.len() < 6 {
            others.push((id, c, b));
        }
    }
    assert_eq!(on_b1.len(), 20, "not 20 IDs of 400 on b1");
    assert_eq!(backend_entry(g.admin, "b1").await["active_connections"], 20);
    let ids: Vec<String> = on_b1.iter().map(|(id, _)| id.clone()).collect();

    let t0 = Instant::now();
    let waits: Vec<_> = on_b1
        .into_iter()
        .map(|(id, mut c)| tokio::spawn(async move { (id, close_code(&mut c).await) }))
        .collect();
    let (status, _, body) = http(g.admin, "POST", "/backends/b1/drain").await;
    assert_eq!(status, 200, "drain: {body}");

    // Out of the ring at once.
    let e1 = backend_entry(g.admin, "b1").await;
    assert_eq!(e1["draining"], true, "{e1}");
    assert_eq!(e1["up"], false, "{e1}");
    for id in ids.iter().take(5) {
        let (mut c, b) = open(&g, id).await;
        assert_ne!(b, "b1", "{id} routed to the draining b1");
        echo_ok(&mut c, &b, "moved").await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "test too slow to check 'at once'"
    );

    let mut times = Vec::new();
    for w in waits {
        let (id, (code, at)) = w.await.unwrap();
        assert_eq!(code, Some(1012), "{id} on the drained b1");
        times.push(at - t0);
    }
    times.sort();
    let (first, last) = (times[0], times[times.len() - 1]);
    assert!(
        last <= Duration::from_millis(3000),
        "last close {last:?} after the drain (grace 2s)"
    );
    assert!(
        last - first >= Duration::from_millis(500),
        "closes not spread over the grace: first {first:?}, last {last:?}"
    );
    eventually("b1 has no connections left", || async {
        backend_entry(g.admin, "b1").await["active_connections"] == 0
    })
    .await;

    assert_eq!(
        closes(g.admin, "gateway", "1012").await,
        20.0,
        "1012 closes counted"
    );

    // Other backends' clients were never touched.
    for (id, c, b) in &mut others {
        echo_ok(c, b, &format!("after-drain-{id}")).await;
    }
    assert_eq!(backend_entry(g.admin, "b1").await["draining"], true);
}

#[tokio::test]
async fn drain_of_an_unknown_backend_is_404_and_changes_nothing() {
    let (_bs, g) = three("").await;
    let (status, _, _) = http(g.admin, "POST", "/backends/nope/drain").await;
    assert_eq!(status, 404);
    let v = backends(g.admin).await;
    for b in v["backends"].as_array().unwrap() {
        assert_eq!(b["draining"], false, "{v}");
        assert_eq!(b["up"], true, "{v}");
    }
    let (status, _, _) = http(g.admin, "GET", "/backends/b1/drain").await;
    assert_ne!(status, 200, "drain needs POST");
    assert_eq!(backend_entry(g.admin, "b1").await["draining"], false);
}

#[tokio::test]
async fn draining_every_backend_leaves_no_route_503_and_readyz_503() {
    let (_bs, g) = three("shutdown_grace = \"1s\"").await;
    let (mut c, b) = open(&g, "last").await;
    echo_ok(&mut c, &b, "x").await;
    for n in ["b1", "b2", "b3"] {
        let (status, _, body) = http(g.admin, "POST", &format!("/backends/{n}/drain")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (s, _, _) = http(g.admin, "GET", "/readyz").await;
    assert_eq!(s, 503, "/readyz with every backend draining");
    match try_connect(&g.url("/?client_id=any")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 503);
            assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
        }
        Err(e) => panic!("expected HTTP 503, got {e}"),
        Ok(_) => panic!("upgrade routed to a draining backend"),
    }
    let (code, _) = close_code(&mut c).await;
    assert_eq!(code, Some(1012));
}
