//! The cluster's admin API, served on the admin listener (`admin` checks
//! the token first: every POST needs it):
//!
//! - `GET /clients/{id}`: where a client ID is connected, cluster-wide;
//! - `POST /clients/{id}/disconnect` `{"code": 4001, "reason": "..."}`;
//! - `POST /clients/{id}/send` `{"text": "..."}` or `{"binary": "<base64>"}`;
//! - `POST /clients/{id}/topics` `{"subscribe": [...], "unsubscribe": [...]}`;
//! - `POST /topics/{name}/publish` `{"text": "..."}` or `{"binary": "..."}`.
//!
//! IDs and topic names in the path are percent-decoded. Every answer is
//! JSON; a Redis that is down or slow gives 503 with the reason.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use redis::aio::MultiplexedConnection;
use serde::Deserialize;

use crate::cluster::metrics::{Cmd, CmdResult};
use crate::cluster::registry::{Presence, now_ms, parse_topics, valid_topic};
use crate::cluster::wire::{Command, Message, now_us};
use crate::cluster::{Cluster, Unavailable, node_of};
use crate::ws::close::valid_on_wire;

/// The largest request body (a message of up to about 1.5 MiB as base64).
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// A close reason must fit a control frame with its code.
const MAX_REASON: usize = 123;

/// Whether a path belongs to this API.
pub fn owns(path: &str) -> bool {
    path.starts_with("/clients/") || path.starts_with("/topics/")
}

type Resp = Response<Full<Bytes>>;

/// An answer with its metric result.
struct Answer {
    result: CmdResult,
    /// Boxed: it travels in `Err` through the validation steps.
    resp: Box<Resp>,
}

fn json(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(result: CmdResult, message: &str) -> Answer {
    let status = match result {
        CmdResult::Ok => StatusCode::OK,
        CmdResult::NotFound => StatusCode::NOT_FOUND,
        CmdResult::Invalid => StatusCode::BAD_REQUEST,
        CmdResult::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    Answer {
        result,
        resp: Box::new(json(status, serde_json::json!({ "error": message }))),
    }
}

impl From<Unavailable> for Answer {
    fn from(e: Unavailable) -> Answer {
        error(CmdResult::Unavailable, &e.to_string())
    }
}

fn ok(body: serde_json::Value) -> Answer {
    Answer {
        result: CmdResult::Ok,
        resp: Box::new(json(StatusCode::OK, body)),
    }
}

/// `%XX` decoding of one path segment; `None` if malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

/// The API's routes.
enum Route {
    Lookup(String),
    Disconnect(String),
    Send(String),
    Topics(String),
    Publish(String),
}

impl Route {
    fn cmd(&self) -> Cmd {
        match self {
            Route::Lookup(_) => Cmd::Lookup,
            Route::Disconnect(_) => Cmd::Disconnect,
            Route::Send(_) => Cmd::Send,
            Route::Topics(_) => Cmd::Topics,
            Route::Publish(_) => Cmd::Publish,
        }
    }
}

fn parse_route(method: &Method, path: &str) -> Option<Route> {
    if let Some(rest) = path.strip_prefix("/clients/") {
        let (id, action) = match rest.split_once('/') {
            Some((id, action)) => (id, Some(action)),
            None => (rest, None),
        };
        let id = percent_decode(id)?;
        return match (method, action) {
            (&Method::GET, None) => Some(Route::Lookup(id)),
            (&Method::POST, Some("disconnect")) => Some(Route::Disconnect(id)),
            (&Method::POST, Some("send")) => Some(Route::Send(id)),
            (&Method::POST, Some("topics")) => Some(Route::Topics(id)),
            _ => None,
        };
    }
    let name = path.strip_prefix("/topics/")?.strip_suffix("/publish")?;
    let name = percent_decode(name)?;
    (method == Method::POST).then_some(Route::Publish(name))
}

/// Answers one request of this API (the caller checked access).
pub async fn route<B>(c: &Arc<Cluster>, req: Request<B>) -> Resp
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(route) = parse_route(req.method(), req.uri().path()) else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        );
    };
    let cmd = route.cmd();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let a = error(
                CmdResult::Invalid,
                &format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
            );
            c.metrics.command(cmd, a.result);
            return *a.resp;
        }
    };
    let a = answer(c, route, &body).await;
    c.metrics.command(cmd, a.result);
    *a.resp
}

fn body<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, Answer> {
    serde_json::from_slice(raw)
        .map_err(|e| error(CmdResult::Invalid, &format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    #[serde(default = "normal")]
    code: u16,
    #[serde(default)]
    reason: String,
}

fn normal() -> u16 {
    1000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsBody {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    unsubscribe: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    text: Option<String>,
    binary: Option<String>,
}

impl MessageBody {
    fn into_message(self) -> Result<Message, Answer> {
        let m = Message {
            text: self.text,
            binary: self.binary,
            ts_us: now_us(),
        };
        m.frame()
            .map_err(|e| error(CmdResult::Invalid, &e.to_string()))?;
        Ok(m)
    }
}

async fn answer(c: &Arc<Cluster>, route: Route, raw: &[u8]) -> Answer {
    match run(c, route, raw).await {
        Ok(a) | Err(a) => a,
    }
}

async fn run(c: &Arc<Cluster>, route: Route, raw: &[u8]) -> Result<Answer, Answer> {
    // Validate first: a bad request is 400 whether or not Redis is up.
    let (id, cmd) = match route {
        Route::Lookup(id) => {
            let mut conn = c.connection()?;
            return lookup(c, &mut conn, &id).await;
        }
        Route::Publish(topic) => {
            if !valid_topic(&topic) {
                return Err(error(
                    CmdResult::Invalid,
                    "a topic name is 1 to 256 visible ASCII characters",
                ));
            }
            let m = body::<MessageBody>(raw)?.into_message()?;
            let mut conn = c.connection()?;
            let payload = serde_json::to_string(&m).unwrap_or_default();
            let gateways: usize = c
                .call(
                    redis::cmd("PUBLISH")
                        .arg(c.channel_topic(&topic))
                        .arg(payload)
                        .query_async(&mut conn),
                )
                .await?;
            c.metrics.publish_topic.inc();
            return Ok(ok(
                serde_json::json!({"topic": topic, "gateways": gateways}),
            ));
        }
        Route::Disconnect(id) => {
            let b: DisconnectBody = body(raw)?;
            if !valid_on_wire(b.code) {
                return Err(error(
                    CmdResult::Invalid,
                    "code must be a close code allowed on the wire (1000-1003, 1007-1014, 3000-4999)",
                ));
            }
            if b.reason.len() > MAX_REASON {
                return Err(error(
                    CmdResult::Invalid,
                    "reason must be at most 123 bytes",
                ));
            }
            let cmd = Command::Disconnect {
                client: id.clone(),
                code: b.code,
                reason: b.reason,
            };
            (id, cmd)
        }
        Route::Send(id) => {
            let message = body::<MessageBody>(raw)?.into_message()?;
            let cmd = Command::Send {
                client: id.clone(),
                message,
            };
            (id, cmd)
        }
        Route::Topics(id) => {
            let b: TopicsBody = body(raw)?;
            let all = b.subscribe.iter().chain(&b.unsubscribe);
            if all.clone().any(|t| !valid_topic(t)) {
                return Err(error(
                    CmdResult::Invalid,
                    "a topic name is 1 to 256 visible ASCII characters",
                ));
            }
            let cmd = Command::Topics {
                client: id.clone(),
                subscribe: parse_topics(b.subscribe.iter().map(String::as_str))
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
                unsubscribe: b.unsubscribe,
            };
            (id, cmd)
        }
    };
    let mut conn = c.connection()?;
    let found = locate(c, &mut conn, &id).await?;
    if found.is_empty() {
        return Err(not_connected(&id));
    }
    let payload = serde_json::to_string(&cmd).unwrap_or_default();
    let mut pipe = redis::pipe();
    for (node, _) in &found {
        pipe.cmd("PUBLISH").arg(c.channel_cmd(node)).arg(&payload);
    }
    let receivers: Vec<usize> = c.call(pipe.query_async(&mut conn)).await?;
    c.metrics.publish_node.inc_by(found.len() as u64);
    Ok(ok(serde_json::json!({
        "client_id": id,
        "gateways": receivers.iter().filter(|&&n| n > 0).count(),
        "connections": found.iter().map(|(_, p)| p.connections).sum::<usize>(),
    })))
}

fn not_connected(id: &str) -> Answer {
    error(
        CmdResult::NotFound,
        &format!("client {id:?} is not connected to any gateway"),
    )
}

/// The live gateways holding a client ID, with their presence entries.
async fn locate(
    c: &Cluster,
    conn: &mut MultiplexedConnection,
    id: &str,
) -> Result<Vec<(String, Presence)>, Unavailable> {
    let mut nodes: Vec<String> = c
        .live_nodes(conn)
        .await?
        .iter()
        .map(|m| node_of(m).to_string())
        .collect();
    nodes.sort();
    nodes.dedup();
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for n in &nodes {
        pipe.cmd("HGET").arg(c.key_node(n)).arg(id);
    }
    let entries: Vec<Option<String>> = c.call(pipe.query_async(conn)).await?;
    Ok(nodes
        .into_iter()
        .zip(entries)
        .filter_map(|(n, e)| Some((n, serde_json::from_str::<Presence>(&e?).ok()?)))
        .collect())
}

async fn lookup(c: &Cluster, conn: &mut MultiplexedConnection, id: &str) -> Result<Answer, Answer> {
    let found = locate(c, conn, id).await?;
    if found.is_empty() {
        return Err(not_connected(id));
    }
    let now = now_ms();
    let gateways: Vec<_> = found
        .iter()
        .map(|(node, p)| {
            serde_json::json!({
                "gateway": node,
                "backend": p.backend,
                "since_ms": p.since_ms,
                "connected_seconds": now.saturating_sub(p.since_ms) / 1000,
                "connections": p.connections,
            })
        })
        .collect();
    Ok(ok(serde_json::json!({
        "client_id": id,
        "connections": found.iter().map(|(_, p)| p.connections).sum::<usize>(),
        "gateways": gateways,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_percent_decoding() {
        assert!(
            matches!(parse_route(&Method::GET, "/clients/a%2Fb"), Some(Route::Lookup(id)) if id == "a/b")
        );
        assert!(matches!(
            parse_route(&Method::POST, "/clients/alice/disconnect"),
            Some(Route::Disconnect(_))
        ));
        assert!(
            matches!(parse_route(&Method::POST, "/topics/room%3A1/publish"), Some(Route::Publish(t)) if t == "room:1")
        );
        assert!(parse_route(&Method::GET, "/clients/alice/send").is_none());
        assert!(parse_route(&Method::POST, "/clients//send").is_none());
        assert!(parse_route(&Method::POST, "/clients/%zz/send").is_none());
        assert!(parse_route(&Method::POST, "/clients/%ff/send").is_none());
        assert!(parse_route(&Method::POST, "/topics/publish").is_none());
        assert!(parse_route(&Method::POST, "/clients/a/b/c").is_none());
    }
}
