//! The cluster task: one per gateway, on the main runtime. It owns the
//! Redis connections (one multiplexed connection for commands, one for
//! pub/sub), reconnects with exponential backoff and jitter, mirrors the
//! registry's changes into Redis (presence, the per-client cap), refreshes
//! this gateway's presence every third of `presence_ttl`, and hands what
//! arrives on its channels to the local connections through the registry
//! (`try_send`, never waiting on a connection).
//!
//! While Redis is down the task still drains the registry's events (so
//! that queue never grows) and re-publishes everything from the registry
//! once Redis is back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::registry::{Delivered, Event, now_ms, parse_topics};
use crate::cluster::wire::{Command, Message, now_us};
use crate::cluster::{CAP_CLOSE_CODE, CAP_CLOSE_REASON, Cluster, Unavailable, node_of};
use crate::relay::push::Push;
use crate::ws::close::valid_on_wire;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Events mirrored per Redis round trip at most.
const BATCH: usize = 1024;
/// Entries per pipeline when everything is re-published.
const CHUNK: usize = 1000;
/// A client's `conns` set outlives its last change by this (bounds what a
/// crashed gateway leaves behind; live entries are filtered by `nodes`).
const CONNS_TTL_MS: u64 = 24 * 3600 * 1000;

enum Ended {
    Shutdown,
    Lost(Unavailable),
}

pub async fn run(
    c: Arc<Cluster>,
    mut events: mpsc::UnboundedReceiver<Event>,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connect(&c) => r,
        };
        match attempt {
            Ok((conn, pubsub)) => {
                c.metrics.connects_ok.inc();
                backoff = MIN_BACKOFF;
                tracing::info!(node = %c.node, "cluster: connected to Redis");
                let ended = session(&c, conn, pubsub, &mut events, &shutdown).await;
                c.set_conn(None);
                match ended {
                    Ended::Shutdown => return,
                    Ended::Lost(e) => {
                        tracing::warn!(error = %e, "cluster: lost Redis; WebSocket traffic continues, cluster commands answer 503")
                    }
                }
            }
            Err(e) => {
                c.metrics.connects_error.inc();
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cluster: cannot reach Redis");
            }
        }
        // Half fixed, half random: gateways that lost Redis together do
        // not all come back in the same instant.
        let delay = backoff.mul_f64(0.5 + 0.5 * fastrand::f64());
        backoff = (backoff * 2).min(MAX_BACKOFF);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = shutdown.cancelled() => return,
                // Dropped: the re-publish on reconnect covers them.
                ev = events.recv() => if ev.is_none() { return },
            }
        }
    }
}

async fn connect(c: &Cluster) -> Result<(MultiplexedConnection, PubSub), Unavailable> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(c.command_timeout))
        .set_response_timeout(Some(c.command_timeout));
    let conn = c
        .client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    let mut pubsub = c.call(c.client.get_async_pubsub()).await?;
    c.call(pubsub.subscribe(c.channel_cmd(&c.node))).await?;
    c.call(pubsub.psubscribe(format!("{}topic:*", c.prefix)))
        .await?;
    Ok((conn, pubsub))
}

async fn session(
    c: &Arc<Cluster>,
    mut conn: MultiplexedConnection,
    mut pubsub: PubSub,
    events: &mut mpsc::UnboundedReceiver<Event>,
    shutdown: &CancellationToken,
) -> Ended {
    // Everything in the registry is re-published below; events already
    // queued describe changes the registry holds already.
    while events.try_recv().is_ok() {}
    if let Err(e) = republish(c, &mut conn).await {
        return Ended::Lost(e);
    }
    if let Err(e) = recheck_caps(c, &mut conn).await {
        return Ended::Lost(e);
    }
    c.set_conn(Some(conn.clone()));
    let messages = pubsub.on_message();
    tokio::pin!(messages);
    let mut tick = tokio::time::interval(c.ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let step = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                withdraw(c, &mut conn).await;
                return Ended::Shutdown;
            }
            m = messages.next() => match m {
                Some(m) => {
                    on_message(c, m.get_channel_name(), m.get_payload_bytes());
                    Ok(())
                }
                None => Err(Unavailable::PubSubClosed),
            },
            ev = events.recv() => match ev {
                Some(ev) => {
                    let mut batch = vec![ev];
                    while batch.len() < BATCH {
                        match events.try_recv() {
                            Ok(ev) => batch.push(ev),
                            Err(_) => break,
                        }
                    }
                    mirror(c, &mut conn, batch).await
                }
                None => return Ended::Shutdown,
            },
            _ = tick.tick() => refresh(c, &mut conn).await,
        };
        if let Err(e) = step {
            return Ended::Lost(e);
        }
    }
}

fn conn_member(c: &Cluster, conn: u64) -> String {
    format!("{}/{}/{conn}", c.node, c.incarnation)
}

/// This gateway is alive: its `nodes` score and its presence hash's expiry.
fn add_alive(c: &Cluster, pipe: &mut redis::Pipeline) {
    pipe.cmd("ZADD")
        .arg(c.key_nodes())
        .arg(now_ms())
        .arg(c.member())
        .ignore();
    pipe.cmd("PEXPIRE")
        .arg(c.key_node(&c.node))
        .arg(c.ttl.as_millis() as u64)
        .ignore();
}

async fn run_pipe(
    c: &Cluster,
    conn: &mut MultiplexedConnection,
    pipe: &redis::Pipeline,
) -> Result<(), Unavailable> {
    // Redis refuses an empty pipeline ("empty command").
    if pipe.is_empty() {
        return Ok(());
    }
    c.call(pipe.exec_async(conn)).await
}

/// Everything from the registry, after a (re)connect: Redis may have lost
/// it (a restart without persistence) or missed changes while down.
async fn republish(c: &Cluster, conn: &mut MultiplexedConnection) -> Result<(), Unavailable> {
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(c.key_node(&c.node)).ignore();
    add_alive(c, &mut pipe);
    run_pipe(c, conn, &pipe).await?;
    for chunk in c.registry.all_presence().chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for (id, p) in chunk {
            pipe.cmd("HSET")
                .arg(c.key_node(&c.node))
                .arg(&**id)
                .arg(serde_json::to_string(p).unwrap_or_default())
                .ignore();
        }
        add_alive(c, &mut pipe);
        run_pipe(c, conn, &pipe).await?;
    }
    for chunk in c.registry.all_connections().chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for (id, client_id, since) in chunk {
            add_conn(c, &mut pipe, *id, client_id, *since);
        }
        run_pipe(c, conn, &pipe).await?;
    }
    Ok(())
}

fn add_conn(c: &Cluster, pipe: &mut redis::Pipeline, conn: u64, client_id: &str, since: u64) {
    if c.cap == 0 {
        return;
    }
    let key = c.key_conns(client_id);
    pipe.cmd("ZADD")
        .arg(&key)
        .arg(since)
        .arg(conn_member(c, conn))
        .ignore();
    pipe.cmd("PEXPIRE").arg(&key).arg(CONNS_TTL_MS).ignore();
}

/// Mirrors a batch of registry changes: presence of each client ID
/// touched, its connections for the cap; then enforces the cap.
async fn mirror(
    c: &Cluster,
    conn: &mut MultiplexedConnection,
    batch: Vec<Event>,
) -> Result<(), Unavailable> {
    let mut dirty: HashSet<Arc<str>> = HashSet::new();
    let mut added: Vec<Arc<str>> = Vec::new();
    let mut pipe = redis::pipe();
    for ev in batch {
        match ev {
            Event::Added {
                conn,
                client_id,
                since_ms,
            } => {
                add_conn(c, &mut pipe, conn, &client_id, since_ms);
                dirty.insert(client_id.clone());
                added.push(client_id);
            }
            Event::Removed { conn, client_id } => {
                if c.cap > 0 {
                    pipe.cmd("ZREM")
                        .arg(c.key_conns(&client_id))
                        .arg(conn_member(c, conn))
                        .ignore();
                }
                dirty.insert(client_id);
            }
        }
    }
    for id in &dirty {
        match c.registry.presence(id) {
            Some(p) => pipe
                .cmd("HSET")
                .arg(c.key_node(&c.node))
                .arg(&**id)
                .arg(serde_json::to_string(&p).unwrap_or_default())
                .ignore(),
            None => pipe
                .cmd("HDEL")
                .arg(c.key_node(&c.node))
                .arg(&**id)
                .ignore(),
        };
    }
    add_alive(c, &mut pipe);
    run_pipe(c, conn, &pipe).await?;
    if c.cap > 0 {
        let mut seen = HashSet::new();
        for id in added {
            if seen.insert(id.clone()) {
                enforce_cap(c, conn, &id).await?;
            }
        }
    }
    Ok(())
}

/// Closes the oldest connections of a client ID beyond the cap, wherever
/// they are. Entries of gateways that are no longer alive are removed and
/// do not count. Deterministic (oldest first, then by member), so two
/// gateways enforcing at once pick the same victims.
async fn enforce_cap(
    c: &Cluster,
    conn: &mut MultiplexedConnection,
    client_id: &str,
) -> Result<(), Unavailable> {
    let key = c.key_conns(client_id);
    let members: Vec<(String, f64)> = c
        .call(
            redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(conn),
        )
        .await?;
    if members.len() <= c.cap {
        return Ok(());
    }
    let live: HashSet<String> = c.live_nodes(conn).await?.into_iter().collect();
    let mut alive = Vec::new();
    let mut gone = Vec::new();
    for (m, _) in members {
        match m.rsplit_once('/') {
            Some((node, n)) if live.contains(node) && n.parse::<u64>().is_ok() => alive.push(m),
            _ => gone.push(m),
        }
    }
    let excess = alive.len().saturating_sub(c.cap);
    let evict: Vec<String> = alive.into_iter().take(excess).collect();
    let mut pipe = redis::pipe();
    for m in gone.iter().chain(&evict) {
        pipe.cmd("ZREM").arg(&key).arg(m).ignore();
    }
    for m in &evict {
        let Some((node_inc, n)) = m.rsplit_once('/') else {
            continue;
        };
        let conn_id: u64 = n.parse().unwrap_or(0);
        if node_inc == c.member() {
            let d = c.registry.to_conn(
                conn_id,
                Push::Close {
                    code: CAP_CLOSE_CODE,
                    reason: CAP_CLOSE_REASON.into(),
                },
            );
            account(c, d, 0);
            continue;
        }
        let incarnation = node_inc.rsplit_once('/').map_or("", |(_, i)| i);
        let cmd = Command::CloseConn {
            incarnation: incarnation.to_string(),
            conn: conn_id,
            code: CAP_CLOSE_CODE,
            reason: CAP_CLOSE_REASON.to_string(),
        };
        pipe.cmd("PUBLISH")
            .arg(c.channel_cmd(node_of(node_inc)))
            .arg(serde_json::to_string(&cmd).unwrap_or_default())
            .ignore();
        c.metrics.publish_node.inc();
    }
    if !gone.is_empty() || !evict.is_empty() {
        tracing::info!(
            client_id,
            closed = evict.len(),
            "cluster: max_connections_per_client"
        );
        run_pipe(c, conn, &pipe).await?;
    }
    Ok(())
}

/// After a reconnect: connections made while Redis was down were never
/// counted against the cap. Asks the sizes of this gateway's client IDs a
/// chunk at a time and enforces the cap on those over it.
async fn recheck_caps(c: &Cluster, conn: &mut MultiplexedConnection) -> Result<(), Unavailable> {
    if c.cap == 0 {
        return Ok(());
    }
    let ids: Vec<Arc<str>> = c
        .registry
        .all_presence()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for chunk in ids.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("ZCARD").arg(c.key_conns(id));
        }
        let sizes: Vec<usize> = c.call(pipe.query_async(conn)).await?;
        for (id, n) in chunk.iter().zip(sizes) {
            if n > c.cap {
                enforce_cap(c, conn, id).await?;
            }
        }
    }
    Ok(())
}

async fn refresh(c: &Cluster, conn: &mut MultiplexedConnection) -> Result<(), Unavailable> {
    let mut pipe = redis::pipe();
    add_alive(c, &mut pipe);
    // Gateways gone for long: keep `nodes` from growing with dead names.
    let old = now_ms().saturating_sub(10 * c.ttl.as_millis() as u64);
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(c.key_nodes())
        .arg("-inf")
        .arg(old)
        .ignore();
    run_pipe(c, conn, &pipe).await
}

/// Graceful shutdown: this gateway's presence goes at once rather than at
/// its expiry.
async fn withdraw(c: &Cluster, conn: &mut MultiplexedConnection) {
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(c.key_node(&c.node)).ignore();
    pipe.cmd("ZREM").arg(c.key_nodes()).arg(c.member()).ignore();
    let _ = run_pipe(c, conn, &pipe).await;
}

fn account(c: &Cluster, d: Delivered, ts_us: u64) {
    if d.delivered > 0 {
        c.metrics.delivered.inc_by(d.delivered);
    }
    if d.dropped > 0 {
        c.metrics.dropped.inc_by(d.dropped);
    }
    if ts_us > 0 {
        let secs = now_us().saturating_sub(ts_us) as f64 / 1e6;
        c.metrics.delivery_seconds.observe(secs);
    }
}

/// One pub/sub message: a topic message or a command to this gateway.
/// Malformed payloads are logged and skipped (anyone with Redis access
/// can publish).
pub fn on_message(c: &Cluster, channel: &str, payload: &[u8]) {
    let topic_prefix = format!("{}topic:", c.prefix);
    if let Some(topic) = channel.strip_prefix(&topic_prefix) {
        let Ok(m) = serde_json::from_slice::<Message>(payload) else {
            tracing::debug!(topic, "cluster: malformed topic message skipped");
            return;
        };
        if let Ok(frame) = m.frame() {
            let d = c.registry.to_topic(topic, &Push::Frame(frame));
            account(c, d, m.ts_us);
        }
        return;
    }
    let Ok(cmd) = serde_json::from_slice::<Command>(payload) else {
        tracing::debug!(channel, "cluster: malformed command skipped");
        return;
    };
    match cmd {
        Command::Send { client, message } => {
            if let Ok(frame) = message.frame() {
                let d = c.registry.to_client(&client, &Push::Frame(frame));
                account(c, d, message.ts_us);
            }
        }
        Command::Disconnect {
            client,
            code,
            reason,
        } if valid_on_wire(code) => {
            let push = Push::Close {
                code,
                reason: reason.into(),
            };
            account(c, c.registry.to_client(&client, &push), 0);
        }
        Command::CloseConn {
            incarnation,
            conn,
            code,
            reason,
        } if incarnation == c.incarnation && valid_on_wire(code) => {
            let push = Push::Close {
                code,
                reason: reason.into(),
            };
            account(c, c.registry.to_conn(conn, push), 0);
        }
        Command::Topics {
            client,
            subscribe,
            unsubscribe,
        } => {
            let add = parse_topics(subscribe.iter().map(String::as_str));
            let remove = parse_topics(unsubscribe.iter().map(String::as_str));
            c.registry.set_topics(&client, &add, &remove);
        }
        Command::Disconnect { .. } | Command::CloseConn { .. } => {}
    }
}
