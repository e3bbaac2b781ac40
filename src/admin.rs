//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/backends` and
//! `POST /backends/{name}/drain`. Reads gateway state; changes nothing but
//! a backend's draining flag.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Check;
use crate::state::Shared;

pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn route(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
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
        (&Method::POST, p) if p.starts_with("/backends/") && p.ends_with("/drain") => {
            let name = &p["/backends/".len()..p.len() - "/drain".len()];
            drain(shared, name)
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/backends") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn backends_json(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let health = &snap.config.health;
    let list: Vec<_> = snap
        .backends
        .iter()
        .zip(&snap.config.backends)
        .map(|(b, bc)| {
            serde_json::json!({
                "name": b.name,
                "url": b.url.raw,
                "weight": bc.weight,
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
        return text(
            StatusCode::NOT_FOUND,
            "application/json",
            format!("{{\"error\":\"no backend {name:?}\"}}"),
        );
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
