//! Sticky routing through the real gateway: the client ID sources, the
//! spread over backends, a backend dying and coming back, bounded loads.
//! Backends are real tokio-tungstenite servers in-process that greet with
//! their name, so a client knows where it landed. Every wait is bounded.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wsgate::routing::Ring;

use common::named::*;

/// Three backends b1..b3 and a gateway in front, with `extra` config.
async fn three(extra: &str) -> (Vec<TestBackend>, TestGateway) {
    let mut bs = Vec::new();
    for n in ["b1", "b2", "b3"] {
        bs.push(TestBackend::start(n).await);
    }
    let list: Vec<_> = bs.iter().map(|b| (b.st.name.as_str(), b.addr, 1)).collect();
    let g = gateway(&cfg(&list, "", extra)).await;
    (bs, g)
}

/// Connects with one extra request header; returns the backend's name.
async fn open_with_header(
    g: &TestGateway,
    path: &str,
    name: &str,
    value: &str,
) -> (Client, String) {
    let mut req = g.url(path).into_client_request().unwrap();
    req.headers_mut().insert(
        tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    let (mut c, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect with {name}: {value}: {e}"));
    let b = greeting(&mut c).await;
    (c, b)
}

/// Waits until the gateway has closed `c` (close frame, error or EOF).
async fn closed(c: &mut Client) -> bool {
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match c.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    end.is_ok()
}

#[tokio::test]
async fn same_client_id_lands_on_same_backend_across_reconnects() {
    let (bs, g) = three("").await;
    let mut used = HashMap::new();
    for i in 0..12 {
        let id = format!("sticky-{i}");
        let (_c, first) = open(&g, &id).await;
        for round in 0..3 {
            let (mut c, again) = open(&g, &id).await;
            assert_eq!(again, first, "{id} moved on reconnect {round}");
            echo_ok(&mut c, &again, "hi").await;
        }
        *used.entry(first).or_insert(0) += 1;
    }
    assert!(used.len() >= 2, "12 IDs all on one backend: {used:?}");
    // The backend was told the client ID.
    for b in &bs {
        for id in b.seen_ids() {
            assert!(
                id.starts_with("sticky-"),
                "{} saw X-Client-Id {id}",
                b.st.name
            );
        }
    }
}

#[tokio::test]
async fn client_id_from_header_and_cookie() {
    let (bs, g) = three("").await;
    let seen_by = |name: &str| bs.iter().find(|b| b.st.name == name).unwrap().seen_ids();
    for i in 0..10 {
        // Header x-client-id routes exactly like the same ID in the query.
        let id = format!("hdr-{i}");
        let (_q, by_query) = open(&g, &id).await;
        let (_h, by_header) = open_with_header(&g, "/", "x-client-id", &id).await;
        let (_h2, again) = open_with_header(&g, "/", "x-client-id", &id).await;
        assert_eq!(
            by_header, by_query,
            "header ID {id} routed differently from the query ID"
        );
        assert_eq!(again, by_header, "header ID {id} moved on reconnect");
        assert_eq!(
            seen_by(&by_header).last().map(String::as_str),
            Some(id.as_str())
        );

        // Cookie client_id, among other cookies.
        let id = format!("ck-{i}");
        let (_q, by_query) = open(&g, &id).await;
        let cookie = format!("theme=dark; client_id={id}; x=1");
        let (_k, by_cookie) = open_with_header(&g, "/", "cookie", &cookie).await;
        let (_k2, again) = open_with_header(&g, "/", "cookie", &cookie).await;
        assert_eq!(
            by_cookie, by_query,
            "cookie ID {id} routed differently from the query ID"
        );
        assert_eq!(again, by_cookie, "cookie ID {id} moved on reconnect");
        assert_eq!(
            seen_by(&by_cookie).last().map(String::as_str),
            Some(id.as_str())
        );
    }
    // The query source comes first in the default list.
    let (_c, b) =
        open_with_header(&g, "/?client_id=from-query", "x-client-id", "from-header").await;
    assert_eq!(seen_by(&b).last().map(String::as_str), Some("from-query"));
}

#[tokio::test]
async fn no_client_id_falls_back_to_peer_ip() {
    let (bs, g) = three("").await;
    let (_c, by_ip_as_id) = open(&g, "127.0.0.1").await;
    for _ in 0..5 {
        let mut c = connect(&g.url("/")).await;
        let b = greeting(&mut c).await;
        assert_eq!(
            b, by_ip_as_id,
            "a client without an ID was not routed by its peer IP"
        );
        let seen = bs.iter().find(|x| x.st.name == b).unwrap().seen_ids();
        assert_eq!(seen.last().map(String::as_str), Some("127.0.0.1"));
    }
}

#[tokio::test]
async fn three_hundred_ids_spread_over_three_backends() {
    let (_bs, g) = three("").await;
    let g = &g;
    let names: Vec<String> = futures_util::stream::iter(0..300)
        .map(|i| async move {
            let (c, b) = open(g, &format!("spread-{i}")).await;
            drop(c);
            b
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for n in names {
        *counts.entry(n).or_default() += 1;
    }
    for n in ["b1", "b2", "b3"] {
        let c = counts.get(n).copied().unwrap_or(0);
        assert!(
            (60..=141).contains(&c),
            "{n} got {c} of 300 (want 20%-47%): {counts:?}"
        );
    }
}

#[tokio::test]
async fn killed_backend_loses_only_its_clients() {
    let (bs, g) = three("[routing]\nconnect_retries = 1").await;
    let mut clients = Vec::new();
    for i in 0..30 {
        let id = format!("kill-{i}");
        let (c, b) = open(&g, &id).await;
        clients.push((id, c, b));
    }
    let victim = "b2";
    let on_victim = clients.iter().filter(|(_, _, b)| b == victim).count();
    assert!(
        on_victim > 0 && on_victim < 30,
        "{on_victim} of 30 on {victim}"
    );
    bs[1].kill().await;

    let (mut gone, mut kept): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(_, _, b)| b == victim);
    for (id, c, _) in &mut gone {
        assert!(closed(c).await, "{id} on the killed backend was not closed");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (id, c, b) in &mut kept {
        echo_ok(c, b, &format!("still-{id}")).await;
    }
    // The killed backend's clients come back and land on the others.
    for (id, _, _) in &gone {
        let (mut c, b) = open(&g, id).await;
        assert_ne!(b, victim, "{id} routed to the dead backend");
        echo_ok(&mut c, &b, "back").await;
    }
    // Clients of the living backends were never disturbed.
    for (id, c, b) in &mut kept {
        echo_ok(c, b, &format!("later-{id}")).await;
    }
}

#[tokio::test]
async fn revived_backend_gets_its_ids_back_after_rise_checks() {
    let health = "[health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\nfall = 1\nrise = 2\n\
                  http_path = \"\"\nws_path = \"/\"\nroute_on = \"ws\"";
    let (bs, g) = three(health).await;
    let mut mine = Vec::new();
    for i in 0..40 {
        let id = format!("rev-{i}");
        let (_c, b) = open(&g, &id).await;
        if b == "b1" {
            mine.push(id);
        }
    }
    assert!(!mine.is_empty(), "no ID of 40 on b1");
    bs[0].kill().await;
    eventually("b1 down after its health check fails", || async {
        backend_entry(g.admin, "b1").await["up"] == false
    })
    .await;
    assert_eq!(
        metric(g.admin, "wsgate_backend_up{backend=\"b1\",check=\"ws\"}").await,
        0.0
    );
    for id in &mine {
        let (_c, b) = open(&g, id).await;
        assert_ne!(b, "b1", "{id} routed to a down backend");
    }

    bs[0].revive();
    let revived = Instant::now();
    assert_eq!(
        backend_entry(g.admin, "b1").await["up"],
        false,
        "b1 up before any check passed"
    );
    eventually("b1 up again after rise = 2 checks", || async {
        backend_entry(g.admin, "b1").await["up"] == true
    })
    .await;
    let took = revived.elapsed();
    assert!(
        took >= Duration::from_millis(150),
        "b1 up after {took:?}: fewer than rise = 2 checks"
    );
    assert_eq!(
        metric(g.admin, "wsgate_backend_up{backend=\"b1\",check=\"ws\"}").await,
        1.0
    );
    for id in &mine {
        let (mut c, b) = open(&g, id).await;
        assert_eq!(b, "b1", "{id} did not return to the revived b1");
        echo_ok(&mut c, &b, "home").await;
    }
}

#[tokio::test]
async fn bounded_loads_keep_every_backend_under_the_bound() {
    // Two hot IDs that plain consistent hashing puts on the same backend.
    let ring = Ring::new([("b1", 1), ("b2", 1), ("b3", 1)], 160);
    let owner = |k: &str| ring.pick(k, 1, |_| true, |_| 0, 0.0)[0];
    let first = owner("hot-0");
    let hot: Vec<String> = std::iter::once("hot-0".to_string())
        .chain(
            (1..1000)
                .map(|i| format!("hot-{i}"))
                .filter(|k| owner(k) == first)
                .take(1),
        )
        .collect();
    assert_eq!(hot.len(), 2);

    let (_bs, g) = three("[routing]\nload_factor = 1.25").await;
    let mut clients = Vec::new();
    let mut per_greeting: HashMap<String, usize> = HashMap::new();
    for i in 0..60 {
        let (c, b) = open(&g, &hot[i % 2]).await;
        *per_greeting.entry(b).or_default() += 1;
        clients.push(c);
        if i % 10 == 9 {
            let v = backends(g.admin).await;
            let active: Vec<u64> = v["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["active_connections"].as_u64().unwrap())
                .collect();
            let total: u64 = active.iter().sum();
            assert_eq!(total, i as u64 + 1, "active connections {active:?}");
            let bound = (1.25 * total as f64 / 3.0).ceil() as u64;
            assert!(
                active.iter().all(|&a| a <= bound),
                "after {total}: {active:?} over bound {bound}"
            );
        }
    }
    assert_eq!(
        per_greeting.len(),
        3,
        "bounded loads used only {per_greeting:?}"
    );
}

#[tokio::test]
async fn passive_failure_takes_a_dead_backend_out_before_the_next_check() {
    // Checks are on but far apart: only the failed dial can mark b2 down.
    let extra = "[routing]\nconnect_retries = 0\n[health]\ninterval = \"60s\"\nfall = 1\nrise = 2\n\
                 http_path = \"\"\nws_path = \"/\"";
    let (bs, g) = three(extra).await;
    let mut mine = Vec::new();
    for i in 0..40 {
        let id = format!("pf-{i}");
        if open(&g, &id).await.1 == "b2" {
            mine.push(id);
        }
    }
    assert!(mine.len() >= 2, "{} of 40 IDs on b2", mine.len());
    bs[1].kill().await;

    // No retries: the first client of the dead backend gets 502 ...
    match try_connect(&g.url(&format!("/?client_id={}", mine[0]))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 502),
        Err(e) => panic!("expected HTTP 502, got {e}"),
        Ok(_) => panic!("upgrade through a dead backend with connect_retries = 0"),
    }
    // ... which counts as a failed check (fall = 1): b2 is down at once and
    // the next clients go straight to the others.
    let e2 = backend_entry(g.admin, "b2").await;
    assert_eq!(e2["up"], false, "{e2}");
    assert_eq!(e2["checks"]["ws"], "down", "{e2}");
    for id in &mine {
        let (mut c, b) = open(&g, id).await;
        assert_ne!(b, "b2");
        echo_ok(&mut c, &b, "elsewhere").await;
    }
    assert!(
        metric(
            g.admin,
            "wsgate_connections_total{result=\"backend_error\"}"
        )
        .await
            >= 1.0
    );
}
