//! Mode "forward": the upgrade request's headers go to `forward_url` as a
//! GET (like nginx's `auth_request`); a 2xx allows, and the answer's
//! `forward_headers` are set on the request to the backend.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Uri};

use crate::auth::{Admitted, AuthSetupError};
use crate::backend::http1;
use crate::config::AuthConfig;

/// A configured forward-auth endpoint.
pub struct Forward {
    uri: Uri,
    /// Answer headers copied onto the upstream request.
    headers: Vec<HeaderName>,
    timeout: Duration,
}

impl Forward {
    pub fn new(c: &AuthConfig) -> Result<Forward, AuthSetupError> {
        let uri = c
            .forward_url
            .parse::<Uri>()
            .ok()
            .filter(|u| u.host().is_some())
            .ok_or_else(|| {
                AuthSetupError::ForwardUrl(format!("{:?} is not a URL", c.forward_url))
            })?;
        Ok(Forward {
            uri,
            headers: c
                .forward_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
                .collect(),
            timeout: c.forward_timeout.get(),
        })
    }

    /// Asks the endpoint about `req`. The reason on failure is safe to log.
    pub async fn check<B>(&self, req: &Request<B>) -> Result<Admitted, String> {
        let uri = &self.uri;
        let call = async {
            let host = uri.host().unwrap_or("127.0.0.1");
            let port = uri.port_u16().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("forward auth unreachable: {e}"))?;
            let mut fwd = Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("forward auth: {e}"))?;
            for (name, value) in req.headers() {
                if !matches!(
                    name.as_str(),
                    "connection" | "upgrade" | "host" | "content-length" | "transfer-encoding"
                ) && !name.as_str().starts_with("sec-websocket-")
                {
                    fwd.headers_mut().append(name.clone(), value.clone());
                }
            }
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
            fwd.headers_mut().insert(
                header::HOST,
                HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
            );
            if let Some(pq) = req.uri().path_and_query()
                && let Ok(v) = HeaderValue::from_str(pq.as_str())
            {
                fwd.headers_mut()
                    .insert(HeaderName::from_static("x-forwarded-uri"), v);
            }
            let exchange = http1::send::<tokio::net::TcpStream>(tcp, fwd)
                .await
                .map_err(|e| format!("forward auth: {e}"))?;
            Ok::<_, String>(exchange.into_response())
        };
        let resp = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| "forward auth timed out".to_string())??;
        if !resp.status().is_success() {
            return Err(format!("forward auth answered {}", resp.status().as_u16()));
        }
        let extra_headers: Vec<_> = self
            .headers
            .iter()
            .filter_map(|n| resp.headers().get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        let client_id = extra_headers
            .iter()
            .find(|(n, _)| n == "x-client-id")
            .and_then(|(_, v)| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(Admitted {
            client_id,
            extra_headers,
            ..Admitted::default()
        })
    }
}
