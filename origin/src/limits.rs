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
//! Here a blob's permit travels inside its response body (`Permitted`) and
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
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wharf_core::ApiRequest;

use crate::error::Error;
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
    /// When a cold blob request hydrates, and when it passes through.
    pub hydration: HydrationLimits,
    /// Memory for manifests served lately (0: none kept).
    pub manifest_cache_bytes: usize,
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
            hydration: HydrationLimits::default(),
            manifest_cache_bytes: 32 << 20,
        }
    }
}

/// The limits' run-time state, shared by every request.
#[derive(Debug)]
pub struct Limits {
    api: Semaphore,
    api_timeout: Duration,
    blobs: Arc<Semaphore>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(settings: &LimitSettings) -> Self {
        Limits {
            api: Semaphore::new(settings.api_concurrency),
            api_timeout: settings.api_timeout,
            blobs: Arc::new(Semaphore::new(settings.blob_concurrency)),
        }
    }
}

/// Which limit a parsed `/v2/…` request falls under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `/v2/` itself: never limited.
    Free,
    /// A blob: a permit for as long as its body streams.
    Blob,
    /// A manifest, tag list or referrers list (named for its metrics): a
    /// permit and the timeout.
    Api(&'static str),
}

impl Class {
    pub fn of(request: &ApiRequest) -> Class {
        match request {
            ApiRequest::Base => Class::Free,
            ApiRequest::Blob { .. } => Class::Blob,
            ApiRequest::Manifest { .. }
            | ApiRequest::TagsList { .. }
            | ApiRequest::Referrers { .. } => Class::Api(request.kind()),
        }
    }
}

impl Limits {
    /// Runs the rest of the request (`next`) within `class`'s limit: the
    /// last step of [`crate::handlers::admit`], which parsed the request
    /// (a function it calls rather than a layer of its own: each axum layer
    /// costs a boxed future and a clone of the route per request, measured
    /// on the warm-manifest path).
    pub async fn run(&self, class: Class, request: Request, next: Next) -> Response {
        match class {
            Class::Free => next.run(request).await,
            Class::Blob => {
                let Ok(permit) = self.blobs.clone().try_acquire_owned() else {
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
            Class::Api(what) => {
                let Ok(_permit) = self.api.try_acquire() else {
                    return shed(what);
                };
                match tokio::time::timeout(self.api_timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => {
                        metrics::request(what, "error");
                        Error::TimedOut {
                            what,
                            after: self.api_timeout,
                        }
                        .into_response()
                    }
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

/// Bounds on blob downloads: past them a cold request is served as a
/// pass-through (streamed from the upstream, verified, not stored; see
/// [`crate::passthrough`]) instead of starting a hydration.
///
/// Pass-through rather than `503`: the client's pull still succeeds at
/// upstream speed, warm requests are untouched, and nothing is written to
/// the spool or the store, which is what the bounds protect. It costs the
/// later pulls of that blob another upstream fetch each until a hydration
/// is admitted again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HydrationLimits {
    /// Hydrations in flight at once, all upstreams together.
    pub max: usize,
    /// Hydrations in flight at once from one upstream.
    pub per_upstream: usize,
    /// Bytes the spool files of hydrations in flight may take together.
    pub spool_bytes: u64,
    /// Free bytes below which the spool's or the store's filesystem is
    /// under pressure: no new hydration until space returns.
    pub min_free_bytes: u64,
}

impl Default for HydrationLimits {
    fn default() -> Self {
        HydrationLimits {
            max: 256,
            per_upstream: 64,
            spool_bytes: 64 << 30,
            min_free_bytes: 1 << 30,
        }
    }
}

/// What a cold blob request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColdPath {
    /// Start a hydration (stream, verify, store).
    Hydrate,
    /// Pass the blob through, for this reason (a metric label).
    PassThrough(&'static str),
}

/// What the origin has in flight when a cold request arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Hydrations in flight.
    pub hydrations: usize,
    /// Of those, from the request's upstream.
    pub upstream_hydrations: usize,
    /// Bytes in spool files now.
    pub spool_bytes: u64,
    /// Free bytes on the spool's and the store's filesystems (the smaller),
    /// when known.
    pub free_bytes: Option<u64>,
}

impl HydrationLimits {
    /// Whether a cold request may start a hydration. Unknown free space
    /// does not block (fail open: the write itself reports a full disk).
    pub fn cold_path(&self, now: InFlight) -> ColdPath {
        if now.free_bytes.is_some_and(|f| f < self.min_free_bytes) {
            ColdPath::PassThrough("disk")
        } else if now.hydrations >= self.max {
            ColdPath::PassThrough("hydrations")
        } else if now.upstream_hydrations >= self.per_upstream {
            ColdPath::PassThrough("upstream")
        } else if now.spool_bytes >= self.spool_bytes {
            ColdPath::PassThrough("spool")
        } else {
            ColdPath::Hydrate
        }
    }
}

/// Free bytes on the filesystem holding `path` (what an unprivileged writer
/// may use), or `None` if it cannot be asked.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_requests_hydrate_until_a_bound_is_reached() {
        let l = HydrationLimits {
            max: 4,
            per_upstream: 2,
            spool_bytes: 1000,
            min_free_bytes: 100,
        };
        let at = |hydrations, upstream_hydrations, spool_bytes, free_bytes| InFlight {
            hydrations,
            upstream_hydrations,
            spool_bytes,
            free_bytes,
        };
        let cases = [
            (at(0, 0, 0, None), ColdPath::Hydrate),
            (at(3, 1, 999, Some(100)), ColdPath::Hydrate),
            (at(3, 1, 999, Some(99)), ColdPath::PassThrough("disk")),
            (
                at(4, 1, 0, Some(1 << 40)),
                ColdPath::PassThrough("hydrations"),
            ),
            (at(2, 2, 0, None), ColdPath::PassThrough("upstream")),
            (at(1, 1, 1000, None), ColdPath::PassThrough("spool")),
            // The disk comes first: it is what recovers by itself.
            (at(9, 9, 9999, Some(0)), ColdPath::PassThrough("disk")),
        ];
        for (now, want) in cases {
            assert_eq!(l.cold_path(now), want, "{now:?}");
        }
    }

    #[test]
    fn free_space_is_read_from_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|f| f > 0));
        assert_eq!(free_bytes(&dir.path().join("missing")), None);
    }
}
