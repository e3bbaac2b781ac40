//! Reload against real backends: in-process through `Gateway::reload` (what
//! SIGHUP does), and through the real binary with SIGHUP for a config file
//! that fails to parse. Added backends take new clients, removed ones close
//! theirs with 1012 within `shutdown_grace`, weights apply, and a bad config
//! changes nothing. Every wait is bounded.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;
use wsgate::Config;

use common::named::*;

async fn start_backends(names: &[&str]) -> Vec<TestBackend> {
    let mut v = Vec::new();
    for n in names {
        v.push(TestBackend::start(n).await);
    }
    v
}

fn list(bs: &[TestBackend]) -> Vec<(&str, SocketAddr, u32)> {
    bs.iter().map(|b| (b.st.name.as_str(), b.addr, 1)).collect()
}

fn reload(g: &TestGateway, text: &str) {
    let c = Config::parse(text).unwrap_or_else(|e| panic!("reload config: {e}\n{text}"));
    g.gw.reload(c)
        .unwrap_or_else(|e| panic!("reload refused: {e}"));
}

#[tokio::test]
async fn reload_adds_a_backend_for_new_connections() {
    let bs = start_backends(&["b1", "b2", "b3"]).await;
    let g = gateway(&cfg(&list(&bs[..2]), "", "")).await;
    let mut before = HashMap::new();
    for i in 0..60 {
        let id = format!("add-{i}");
        let (_c, b) = open(&g, &id).await;
        before.insert(id, b);
    }
    let mut open_clients = Vec::new();
    for i in 0..6 {
        let (c, b) = open(&g, &format!("add-{i}")).await;
        open_clients.push((c, b));
    }

    reload(&g, &cfg(&list(&bs), "", ""));
    assert_eq!(
        metric(g.admin, "wsgate_config_reloads_total{result=\"ok\"}").await,
        1.0
    );
    let v = backends(g.admin).await;
    assert_eq!(v["backends"].as_array().unwrap().len(), 3, "{v}");

    let mut to_b3 = 0;
    for (id, old) in &before {
        let (mut c, b) = open(&g, id).await;
        if b == "b3" {
            to_b3 += 1;
        } else {
            assert_eq!(&b, old, "{id} moved between backends that were kept");
        }
        echo_ok(&mut c, &b, "new").await;
    }
    assert!(
        (8..=35).contains(&to_b3),
        "{to_b3} of 60 IDs moved to the added b3 (expect about 1/3)"
    );
    // Connections opened before the reload are untouched.
    for (c, b) in &mut open_clients {
        echo_ok(c, b, "old").await;
    }
}

#[tokio::test]
async fn reload_removing_a_backend_closes_its_connections_with_1012() {
    let bs = start_backends(&["b1", "b2", "b3"]).await;
    let server = "shutdown_grace = \"1s\"";
    let g = gateway(&cfg(&list(&bs), server, "")).await;
    let mut clients = Vec::new();
    for i in 0..30 {
        let id = format!("rm-{i}");
        let (c, b) = open(&g, &id).await;
        clients.push((id, c, b));
    }
    let (removed, mut kept): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(_, _, b)| b == "b3");
    assert!(
        !removed.is_empty() && !kept.is_empty(),
        "{} of 30 on b3",
        removed.len()
    );

    let t0 = Instant::now();
    let waits: Vec<_> = removed
        .into_iter()
        .map(|(id, mut c, _)| tokio::spawn(async move { (id, close_code(&mut c).await) }))
        .collect();
    reload(&g, &cfg(&list(&bs[..2]), server, ""));
    for w in waits {
        let (id, (code, at)) = w.await.unwrap();
        assert_eq!(code, Some(1012), "{id} on the removed b3");
        let after = at - t0;
        assert!(
            after <= Duration::from_millis(2000),
            "{id} closed {after:?} after the reload (grace 1s)"
        );
    }
    // The kept backends' connections stay open past the grace and still echo.
    let left = Duration::from_millis(1300).saturating_sub(t0.elapsed());
    tokio::time::sleep(left).await;
    for (id, c, b) in &mut kept {
        echo_ok(c, b, &format!("kept-{id}")).await;
    }
    let v = backends(g.admin).await;
    assert!(
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["name"] != "b3"),
        "{v}"
    );
    // b3's clients come back on b1/b2.
    for i in 0..30 {
        let (_c, b) = open(&g, &format!("rm-{i}")).await;
        assert_ne!(b, "b3");
    }
}

#[tokio::test]
async fn reload_weight_change_applies_to_new_connections() {
    let bs = start_backends(&["b1", "b2"]).await;
    let g = gateway(&cfg(&list(&bs), "", "")).await;
    let (mut old, old_b) = open(&g, "w-old").await;

    reload(
        &g,
        &cfg(&[("b1", bs[0].addr, 3), ("b2", bs[1].addr, 1)], "", ""),
    );
    assert_eq!(backend_entry(g.admin, "b1").await["weight"], 3);
    let g = &g;
    let names: Vec<String> = futures_util::stream::iter(0..200)
        .map(|i| async move { open(g, &format!("w-{i}")).await.1 })
        .buffer_unordered(8)
        .collect()
        .await;
    let b1 = names.iter().filter(|n| *n == "b1").count();
    assert!(
        (130..=176).contains(&b1),
        "weight 3 vs 1: b1 got {b1} of 200 (expect about 150)"
    );
    echo_ok(&mut old, &old_b, "still here").await;
}

// ---- the real binary and SIGHUP ----

struct Proc(tokio::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Says whether the gateway had exited (and by which signal).
            eprintln!("wsgate process state: {:?}", self.0.try_wait());
        }
        let _ = self.0.start_kill();
    }
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The gateway's stderr, shown only when the test fails.
struct StderrLog(std::path::PathBuf);

impl Drop for StderrLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("---- wsgate stderr ----\n{log}---- end of wsgate stderr ----");
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

fn binary_config(backends: &[(&str, SocketAddr)], server_extra: &str) -> String {
    let mut s = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [health]\nhttp_path = \"\"\nws_path = \"\"\n"
    );
    for (n, a) in backends {
        s.push_str(&format!(
            "[[backends]]\nname = \"{n}\"\nurl = \"ws://{a}\"\n"
        ));
    }
    s
}

fn sighup(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -HUP {pid}");
}

#[tokio::test]
async fn sighup_with_invalid_config_keeps_the_old_one_then_valid_applies() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let path = std::env::temp_dir().join(format!("wsgate-reload-test-{}.toml", std::process::id()));
    let _tmp = TempFile(path.clone());
    let log_path = path.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _log = StderrLog(log_path);
    std::fs::write(&path, binary_config(&[("b1", b1.addr)], "")).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsgate");
    let pid = child.id().expect("pid");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let _proc = Proc(child);
    let (mut listen, mut admin) = (None::<SocketAddr>, None::<SocketAddr>);
    tokio::time::timeout(Duration::from_secs(20), async {
        while listen.is_none() || admin.is_none() {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("wsgate exited before announcing");
            if let Some(a) = line.strip_prefix("wsgate listening on ws://") {
                listen = Some(a.trim().parse().unwrap());
            } else if let Some(a) = line.strip_prefix("wsgate admin on http://") {
                admin = Some(a.trim().parse().unwrap());
            }
        }
    })
    .await
    .expect("wsgate did not announce its addresses");
    let (listen, admin) = (listen.unwrap(), admin.unwrap());
    let url = |id: &str| format!("ws://{listen}/?client_id={id}");

    let mut existing = connect(&url("keep")).await;
    let name = greeting(&mut existing).await;
    assert_eq!(name, "b1");
    echo_ok(&mut existing, "b1", "before").await;

    // An unknown key: refused, counted, the old config keeps serving.
    std::fs::write(
        &path,
        binary_config(&[("b1", b1.addr), ("b2", b2.addr)], "bogus_key = true"),
    )
    .unwrap();
    sighup(pid);
    eventually("reload error counted", || async {
        metric(admin, "wsgate_config_reloads_total{result=\"error\"}").await == 1.0
    })
    .await;
    assert_eq!(
        metric(admin, "wsgate_config_reloads_total{result=\"ok\"}").await,
        0.0
    );
    echo_ok(&mut existing, "b1", "after bad reload").await;
    let mut fresh = connect(&url("fresh")).await;
    assert_eq!(greeting(&mut fresh).await, "b1");
    echo_ok(&mut fresh, "b1", "new after bad reload").await;
    let v = backends(admin).await;
    assert_eq!(
        v["backends"].as_array().unwrap().len(),
        1,
        "bad config applied: {v}"
    );

    // A valid change applies.
    std::fs::write(
        &path,
        binary_config(&[("b1", b1.addr), ("b2", b2.addr)], ""),
    )
    .unwrap();
    sighup(pid);
    eventually("reload ok counted", || async {
        metric(admin, "wsgate_config_reloads_total{result=\"ok\"}").await == 1.0
    })
    .await;
    assert_eq!(
        metric(admin, "wsgate_config_reloads_total{result=\"error\"}").await,
        1.0
    );
    let v = backends(admin).await;
    assert_eq!(
        v["backends"].as_array().unwrap().len(),
        2,
        "valid config not applied: {v}"
    );
    echo_ok(&mut existing, "b1", "after good reload").await;
    let mut on_b2 = 0;
    for i in 0..20 {
        let mut c = connect(&url(&format!("hup-{i}"))).await;
        let b = greeting(&mut c).await;
        on_b2 += usize::from(b == "b2");
        echo_ok(&mut c, &b, "x").await;
    }
    assert!(on_b2 > 0, "no new client reached the added b2");
}
