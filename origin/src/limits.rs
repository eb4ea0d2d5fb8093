//! Limits on the registry API, by request kind (`../shared/STYLE.md` §3):
//! manifests, tag lists and referrers get a timeout and load shedding; blobs
//! get a concurrency limit.
//!
//! # Why a middleware and not tower's `ConcurrencyLimit` / `LoadShed`
//!
//! Every `/v2/…` request reaches one route (repository names carry slashes,
//! so the kind is known only once the core has parsed the path — see
//! [`crate::handlers::admit`]), so per-kind tower stacks would need a
//! dispatcher of their own. And tower's `ConcurrencyLimit` releases its
//! permit when the response's headers are ready, which for a blob is long
//! before its body has streamed: it would not bound what it is meant to.
//! Here a blob's permit travels inside its response body ([`Permitted`]) and
//! is released when the body ends or the client goes away.
//!
//! # Decisions
//!
//! * Past a limit the request is refused at once (`503 UNAVAILABLE` with
//!   `Retry-After: 1`) instead of queued: a queued request holds a
//!   connection and its client's timeout while it waits, and every client
//!   the cache serves (docker, containerd, skopeo, podman) retries a 503.
//! * The timeout covers the handler's answer, not the work behind it:
//!   upstream fetches run in detached flights
//!   ([`crate::coalesce::SharedFlights`]), so a timed-out request leaves
//!   the fetch running and the client's retry joins it.
//! * `/v2/` itself (the API version check) is never limited: it does no I/O.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wharf_core::ApiRequest;

use crate::error::Error;
use crate::handlers::Admitted;
use crate::metrics;

/// How many requests of each kind the origin serves at once, and how long a
/// manifest-class answer may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    /// Manifest, tag-list and referrer requests in progress at once; more
    /// are shed.
    pub api_concurrency: usize,
    /// Longest a manifest, tag-list or referrer answer may take.
    pub api_timeout: Duration,
    /// Blob responses (headers and body) in progress at once; more are
    /// shed.
    pub blob_concurrency: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        // Generous: a limit a healthy region never reaches, there to keep a
        // flood from exhausting file descriptors and memory. A blob stream
        // holds two descriptors (socket, spool or store file); 4096 of them
        // fit the 65536-descriptor limit of the shipped systemd unit with
        // room for upstream and store connections.
        LimitSettings {
            api_concurrency: 1024,
            api_timeout: Duration::from_secs(60),
            blob_concurrency: 4096,
        }
    }
}

/// The limits' run-time state, shared by every request.
#[derive(Debug)]
pub struct Limits {
    api: Arc<Semaphore>,
    api_timeout: Duration,
    blobs: Arc<Semaphore>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(settings: &LimitSettings) -> Self {
        Limits {
            api: Arc::new(Semaphore::new(settings.api_concurrency)),
            api_timeout: settings.api_timeout,
            blobs: Arc::new(Semaphore::new(settings.blob_concurrency)),
        }
    }
}

/// The limits layer: runs inside [`crate::handlers::admit`], which has put
/// the parsed request in the extensions.
pub async fn limit(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let kind = match request.extensions().get::<Admitted>() {
        Some(admitted) => &admitted.request,
        None => return next.run(request).await,
    };
    match kind {
        ApiRequest::Base => next.run(request).await,
        ApiRequest::Blob { .. } => {
            let Ok(permit) = limits.blobs.clone().try_acquire_owned() else {
                return shed("blob");
            };
            let response = next.run(request).await;
            response.map(|body| {
                Body::new(Permitted {
                    body,
                    _permit: permit,
                })
            })
        }
        ApiRequest::Manifest { .. }
        | ApiRequest::TagsList { .. }
        | ApiRequest::Referrers { .. } => {
            let what = kind.kind();
            let Ok(_permit) = limits.api.clone().try_acquire_owned() else {
                return shed(what);
            };
            match tokio::time::timeout(limits.api_timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => {
                    metrics::request(what, "error");
                    Error::TimedOut {
                        what,
                        after: limits.api_timeout,
                    }
                    .into_response()
                }
            }
        }
    }
}

fn shed(what: &'static str) -> Response {
    metrics::request(what, "shed");
    Error::Overloaded { what }.into_response()
}

/// A response body that holds its request's permit until it ends or is
/// dropped (the client went away).
struct Permitted {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Permitted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
