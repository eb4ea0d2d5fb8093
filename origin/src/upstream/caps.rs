//! Per-upstream caps (issue 16): how many requests may be open to one
//! upstream at once, and how many bytes per second its bodies may bring in,
//! so that one cache cannot saturate a private registry.
//!
//! * **Connections.** A request takes a permit before it is sent and keeps
//!   it, through redirects, until its response body is read to the end or
//!   dropped: with HTTP/1.1 that is exactly one connection in use. A request
//!   that finds every permit taken waits up to the response timeout and
//!   then fails like an unreachable upstream (`503`, stale tags are served).
//! * **Bandwidth.** One token bucket (`wharf_core::ratelimit::Bandwidth`) is
//!   shared by every body from the upstream; a body that read past the rate
//!   waits before its next read, so TCP slows the sender down.
//!
//! A response is wrapped only when its upstream has a cap: uncapped rules
//! pay nothing. The wrapper forwards the body's size hint, so callers still
//! see `Content-Length`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wharf_core::ratelimit::Bandwidth;

use crate::metrics;

/// The caps of one upstream.
#[derive(Clone, Default)]
pub struct Caps {
    connections: Option<(Arc<Semaphore>, usize)>,
    bandwidth: Option<Arc<Shared>>,
}

/// A bandwidth cap and its clock.
struct Shared {
    bucket: Mutex<Bandwidth>,
    epoch: Instant,
}

impl Shared {
    fn take(&self, bytes: u64) -> Duration {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let wait = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(bytes, now);
        Duration::from_micros(wait)
    }
}

/// Every permit of an upstream stayed taken for the whole wait.
#[derive(Debug)]
pub struct Busy {
    /// The cap.
    pub connections: usize,
    /// How long the request waited.
    pub waited: Duration,
}

impl Caps {
    /// At most `connections` requests at once (`None`: no cap).
    pub fn with_connections(self, connections: Option<usize>) -> Self {
        Caps {
            connections: connections.map(|n| (Arc::new(Semaphore::new(n.max(1))), n.max(1))),
            ..self
        }
    }

    /// At most `bytes_per_sec` of bodies (`None`: no cap).
    pub fn with_bandwidth(self, bytes_per_sec: Option<u64>) -> Self {
        let epoch = Instant::now();
        Caps {
            bandwidth: bytes_per_sec.map(|rate| {
                Arc::new(Shared {
                    bucket: Mutex::new(Bandwidth::new(rate, 0)),
                    epoch,
                })
            }),
            ..self
        }
    }

    /// Whether any cap is set.
    pub fn any(&self) -> bool {
        self.connections.is_some() || self.bandwidth.is_some()
    }

    /// Requests open to the upstream now (0 without a connection cap).
    pub fn in_use(&self) -> usize {
        self.connections
            .as_ref()
            .map_or(0, |(s, n)| n.saturating_sub(s.available_permits()))
    }

    /// Waits (up to `patience`) for a permit; `None` without a cap.
    pub async fn admit(
        &self,
        registry: &str,
        patience: Duration,
    ) -> Result<Option<OwnedSemaphorePermit>, Busy> {
        let Some((semaphore, n)) = &self.connections else {
            return Ok(None);
        };
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            metrics::upstream_connections(registry, self.in_use());
            return Ok(Some(permit));
        }
        metrics::upstream_connection_waits(registry);
        let start = Instant::now();
        match tokio::time::timeout(patience, semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                metrics::upstream_connections(registry, self.in_use());
                Ok(Some(permit))
            }
            // The semaphore is never closed; treat it like a timeout.
            Ok(Err(_)) | Err(_) => Err(Busy {
                connections: *n,
                waited: start.elapsed(),
            }),
        }
    }

    /// `response`, its body holding `permit` and paced by the bandwidth cap.
    pub fn wrap(
        &self,
        registry: &str,
        response: reqwest::Response,
        permit: Option<OwnedSemaphorePermit>,
    ) -> reqwest::Response {
        if permit.is_none() && self.bandwidth.is_none() {
            return response;
        }
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let body = Capped {
            inner: body,
            permit: permit.map(|p| Held {
                _permit: p,
                registry: registry.to_owned(),
                caps: self.clone(),
            }),
            bandwidth: self.bandwidth.clone(),
            pause: None,
        };
        reqwest::Response::from(http::Response::from_parts(parts, reqwest::Body::wrap(body)))
    }
}

/// A permit that updates the in-use gauge when let go.
struct Held {
    _permit: OwnedSemaphorePermit,
    registry: String,
    caps: Caps,
}

impl Drop for Held {
    fn drop(&mut self) {
        // The permit field drops after this body: one more is free then.
        metrics::upstream_connections(&self.registry, self.caps.in_use().saturating_sub(1));
    }
}

pin_project_lite::pin_project! {
    /// A response body under the upstream's caps.
    struct Capped {
        #[pin]
        inner: reqwest::Body,
        permit: Option<Held>,
        bandwidth: Option<Arc<Shared>>,
        #[pin]
        pause: Option<tokio::time::Sleep>,
    }
}

impl Body for Capped {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, reqwest::Error>>> {
        let mut this = self.project();
        if let Some(pause) = this.pause.as_mut().as_pin_mut() {
            ready!(pause.poll(cx));
            this.pause.set(None);
        }
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(bw)) = (f.data_ref(), this.bandwidth.as_ref()) {
                    let wait = bw.take(data.len() as u64);
                    if !wait.is_zero() {
                        this.pause.set(Some(tokio::time::sleep(wait)));
                    }
                }
            }
            // The end, or a broken body: the connection is free.
            None | Some(Err(_)) => {
                this.permit.take();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
