//! A stand-in for the CDN Docker Hub redirects blob downloads to: an HTTP
//! server on another loopback address (127.0.0.2, so another host than the
//! registry's 127.0.0.1) that serves blobs it fetches from the registry with
//! its own credentials, and records every `Authorization` header clients
//! send it — which must be none: credentials for the registry must never be
//! forwarded to another host.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

struct Ctx {
    registry: String,
    authorization: Option<String>,
    seen: Mutex<Vec<Option<String>>>,
    http: reqwest::Client,
}

/// A running CDN.
pub struct Cdn {
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    task: JoinHandle<()>,
}

impl Cdn {
    /// Serves `GET /v2/<repo>/blobs/<digest>` from `registry` (a base URL),
    /// fetching with `authorization` when given.
    pub async fn start(registry: String, authorization: Option<String>) -> Result<Cdn> {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .context("binding 127.0.0.2 (the loopback range) for the CDN")?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(Ctx {
            registry,
            authorization,
            seen: Mutex::new(Vec::new()),
            http: crate::http_client(),
        });
        let app = Router::new().fallback(serve).with_state(ctx.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Cdn { addr, ctx, task })
    }

    /// `http://127.0.0.2:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `Authorization` header of every request served, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.ctx.seen.lock().unwrap().clone()
    }
}

impl Drop for Cdn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(State(ctx): State<Arc<Ctx>>, request: Request) -> Response {
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    ctx.seen.lock().unwrap().push(auth);
    let url = format!("{}{}", ctx.registry, request.uri().path());
    let mut get = ctx.http.get(url);
    if let Some(a) = &ctx.authorization {
        get = get.header("authorization", a);
    }
    match get.send().await {
        Ok(r) if r.status().is_success() => {
            let len = r.content_length();
            let mut resp = Response::new(Body::from_stream(r.bytes_stream()));
            if let Some(len) = len {
                resp.headers_mut().insert("content-length", len.into());
            }
            resp
        }
        Ok(r) => (
            StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            "cdn: registry refused",
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("cdn: {e}")).into_response(),
    }
}
