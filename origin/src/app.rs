//! The router and its layers, stacked in one place.
//!
//! Outer to inner:
//! 1. [`Respond`] — one plain tower service around the whole router: a
//!    `debug` span per request (method, path; at the default `info` it
//!    costs nothing, and `RUST_LOG=debug` turns it on), `X-Wharf-Region` /
//!    `X-Wharf-Replica` on every response (who answered, rendered once),
//!    and every response that carries a [`LoggedError`] logged with its
//!    method, path and status, so every OCI error is visible in the logs
//!    at any level. One hand-written service rather than three axum
//!    layers: each `Router::layer` boxes the route again and costs a
//!    clone and a boxed future per request, which the warm-manifest bench
//!    (item 8) measured;
//! 2. routes — `/v2/…` (the registry API), `/healthz`, `/readyz`,
//!    `/metrics`, `/status` (the page: [`handlers::status_page`]),
//!    `/admin/…` (its own token: [`handlers::admin`]); on
//!    `/v2/…` only:
//!    1. admit ([`handlers::admit`]) — the core parses the request, the
//!       repository is resolved once, the token or ticket is checked, and
//!       the rest runs within the kind's limit ([`crate::limits`]: timeout
//!       and load shedding for manifests, tag lists and referrers, a
//!       concurrency limit for blobs);
//!    2. [`handlers::registry`] — dispatch to one handler per operation.
//!
//! Request metrics are counted by the handlers, labelled by request kind and
//! cache result (never by raw path).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, Uri};
use axum::response::Response;
use axum::routing::{any, get, post};
use tower::Service;
use tracing::Instrument as _;
use tracing::instrument::Instrumented;
use wharf_core::headers::{X_WHARF_REGION, X_WHARF_REPLICA};

use crate::error::LoggedError;
use crate::handlers;
use crate::state::AppState;

/// The origin's HTTP service.
pub type App = Respond<Router>;

/// Builds the origin's HTTP service.
pub fn app(state: AppState) -> App {
    let registry = Router::new()
        .route("/v2", any(handlers::registry))
        .route("/v2/", any(handlers::registry))
        .route("/v2/{*rest}", any(handlers::registry))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::admit,
        ));
    let router = Router::new()
        .merge(registry)
        .route("/healthz", get(handlers::health::healthz))
        .route("/readyz", get(handlers::health::readyz))
        .route("/metrics", get(handlers::health::metrics))
        .route("/status", get(handlers::status_page::page))
        .route("/admin/gc", post(handlers::admin::gc))
        .route("/admin/status", get(handlers::admin::status))
        .route("/admin/purge", post(handlers::admin::purge))
        .route(
            "/admin/jobs",
            get(handlers::admin::jobs).post(handlers::admin::start_job),
        )
        .route(
            "/admin/jobs/{id}",
            get(handlers::admin::job).delete(handlers::admin::cancel_job),
        )
        .with_state(state.clone());
    Respond::new(router, &state)
}

/// The outermost service: span, who-answered headers, error log (see the
/// module's doc).
#[derive(Clone)]
pub struct Respond<S> {
    inner: S,
    /// `X-Wharf-Region` and `X-Wharf-Replica`, when this origin has them.
    region: Option<HeaderValue>,
    replica: Option<HeaderValue>,
}

impl<S> Respond<S> {
    fn new(inner: S, state: &AppState) -> Self {
        let geo = state.geo.as_ref();
        let header = |v: Option<&str>| v.and_then(|v| HeaderValue::from_str(v).ok());
        Respond {
            inner,
            region: header(geo.map(|g| g.region.as_str())),
            replica: header(geo.and_then(|g| g.advertise.as_deref())),
        }
    }
}

impl<S> Service<Request> for Respond<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Responding<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let span = tracing::debug_span!("request", method = %request.method(), path = %request.uri().path());
        // Cheap clones (shared bytes), kept for an error's log line.
        let (method, uri) = (request.method().clone(), request.uri().clone());
        Responding {
            inner: self.inner.call(request).instrument(span),
            method,
            uri,
            region: self.region.clone(),
            replica: self.replica.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Respond`]'s future: the inner answer, stamped and logged.
    pub struct Responding<F> {
        #[pin]
        inner: Instrumented<F>,
        method: Method,
        uri: Uri,
        region: Option<HeaderValue>,
        replica: Option<HeaderValue>,
    }
}

impl<F> Future for Responding<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        let h = response.headers_mut();
        if let Some(v) = this.region.take() {
            h.insert(X_WHARF_REGION, v);
        }
        if let Some(v) = this.replica.take() {
            h.insert(X_WHARF_REPLICA, v);
        }
        if let Some(LoggedError(message)) = response.extensions().get::<LoggedError>() {
            let (method, path) = (&*this.method, this.uri.path());
            let status = response.status().as_u16();
            if response.status().is_server_error() {
                tracing::warn!(%method, path, status, error = %message, "request failed");
            } else {
                tracing::info!(%method, path, status, error = %message, "request refused");
            }
        }
        Poll::Ready(Ok(response))
    }
}
