//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/backends` and
//! `POST /backends/{name}/drain`. Reads gateway state; changes nothing but
//! a backend's draining flag.
//!
//! Access (SPEC "Hardening rules"): with `[admin] token` (or `token_file`)
//! set, every POST needs `Authorization: Bearer <token>` (401 otherwise),
//! and `/metrics` too with `protect_metrics`; with no token, a POST is
//! refused (403) unless this listener is bound to a loopback address.
//! `/healthz` and `/readyz` are always open (probes carry no token).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Check;
use crate::state::Shared;

pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, loopback, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The cluster's routes (`cluster::admin`: they read a body and call
/// Redis) when `[cluster]` is on, after the same access check; else
/// [`route`].
async fn respond(
    shared: &Shared,
    loopback: bool,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(c) = shared
        .cluster
        .get()
        .filter(|_| crate::cluster::admin::owns(path))
    {
        if let Some(refused) = access(&req, loopback, &shared.snapshot.load()) {
            return refused;
        }
        return crate::cluster::admin::route(c, req).await;
    }
    route(shared, loopback, &req)
}

/// Answers one admin request. `loopback`: whether the listener is bound to
/// a loopback address (state changes without a token are allowed there).
fn route<B>(shared: &Shared, loopback: bool, req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(refused) = access(req, loopback, &shared.snapshot.load()) {
        return refused;
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if shared.ready() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        (&Method::GET, "/backends") => {
            text(StatusCode::OK, "application/json", backends_json(shared))
        }
        (&Method::POST, p) => match p
            .strip_prefix("/backends/")
            .and_then(|rest| rest.strip_suffix("/drain"))
        {
            // No slicing by offsets: "/backends/drain" (the prefix and
            // suffix overlap) has no name and is simply not found.
            Some(name) => drain(shared, name),
            None => not_found(),
        },
        (_, "/metrics" | "/healthz" | "/readyz" | "/backends") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => not_found(),
    }
}

fn not_found() -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into())
}

/// `Some(refusal)` when the request may not proceed: a POST without the
/// right token (or, with no token configured, on a non-loopback listener),
/// or `/metrics` without it under `protect_metrics`.
fn access<B>(
    req: &Request<B>,
    loopback: bool,
    snap: &crate::state::Snapshot,
) -> Option<Response<Full<Bytes>>> {
    let token = snap.admin_token.as_deref();
    let needs_token = req.method() == Method::POST
        || (req.uri().path() == "/metrics" && snap.config.admin.protect_metrics);
    if !needs_token {
        return None;
    }
    match token {
        Some(t) if bearer_matches(req, t) => None,
        Some(_) => {
            let mut r = json_error(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs Authorization: Bearer <[admin] token>",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wsgate-admin\""),
            );
            Some(r)
        }
        None if loopback => None,
        None => Some(json_error(
            StatusCode::FORBIDDEN,
            "state-changing admin endpoints are refused on a non-loopback admin listener \
             without a token: set [admin] token or token_file, or listen on 127.0.0.1",
        )),
    }
}

/// Whether the request carries `Authorization: Bearer <token>`, compared
/// in constant time (a fold over every byte, so the time taken does not
/// depend on where the first difference is; only on the lengths, which an
/// attacker learns nothing secret from).
fn bearer_matches<B>(req: &Request<B>, token: &[u8]) -> bool {
    let Some(got) = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
    else {
        return false;
    };
    let Some(got) = got
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case(b"bearer "))
        .and_then(|_| got.get(7..))
    else {
        return false;
    };
    constant_time_eq(got, token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // black_box: keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    text(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

fn backends_json(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let list: Vec<_> = snap
        .backends
        .iter()
        .zip(&snap.config.backends)
        .zip(&snap.routes.pool_of)
        .map(|((b, bc), &p)| {
            // Each backend under its own pool's health settings.
            let health = &snap.pool(p).settings.health;
            serde_json::json!({
                "name": b.name,
                "url": b.url.raw,
                "weight": bc.weight,
                "pool": bc.pool,
                "pool_panic": snap.panic_mode(p),
                "up": b.routable(health),
                "checks": {"ws": b.check_label(health, Check::Ws), "http": b.check_label(health, Check::Http)},
                "draining": b.is_draining(),
                "active_connections": b.active(),
            })
        })
        .collect();
    serde_json::json!({ "backends": list }).to_string()
}

/// The backend leaves the ring at once; its connections close with 1012,
/// each at a random moment within `shutdown_grace` (see `relay`).
fn drain(shared: &Shared, name: &str) -> Response<Full<Bytes>> {
    let snap = shared.snapshot.load();
    let Some(b) = snap.backends.iter().find(|b| b.name == name) else {
        // serde_json escapes the name: it comes from the request path.
        return json_error(StatusCode::NOT_FOUND, &format!("no backend {name:?}"));
    };
    b.drain();
    tracing::info!(backend = %b.name, connections = b.active(), "backend draining");
    text(
        StatusCode::OK,
        "application/json",
        serde_json::json!({"backend": b.name, "draining": true,
            "active_connections": b.active(),
            "spread_seconds": snap.config.server.shutdown_grace.get().as_secs_f64()})
        .to_string(),
    )
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
