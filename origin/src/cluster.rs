//! Several replicas of one region behind one address, one fetch per blob.
//!
//! Every replica shares the region's bucket, so a stored blob is served by
//! whichever replica the client reached. A **miss** is owned by one replica:
//! the first of `rendezvous(digest, replicas)` (the core's highest-random-
//! weight hashing over the region's `origins`). A replica that is not the
//! owner forwards the request to it and streams the answer back, so
//! concurrent misses on different replicas join the owner's single
//! hydration. If the owner cannot be reached, the next replica in rendezvous
//! order is tried, and finally this replica hydrates itself (correctness
//! never depends on the owner being up; only the fetch count does).
//!
//! A forwarded request carries `X-Wharf-Forwarded`, signed with the
//! region's shared key (`wharf_core::peer`), and is never forwarded again, so
//! two replicas with different replica lists cannot loop. A header that does
//! not verify (a client's own) is ignored: the request is routed like any
//! other, so no client can make a replica skip its owner.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Response, StatusCode, Uri};
use futures::TryStreamExt;
use wharf_core::Digest;
use wharf_core::headers;
use wharf_core::region::rendezvous;

use crate::auth::now_secs;
use crate::metrics;
use crate::state::AppState;

/// Marks a request one replica forwarded to another (value: signed sender).
pub const FORWARDED_HEADER: &str = headers::X_WHARF_FORWARDED;

/// The sending replica, when `headers` carry a valid forwarded-request
/// signature for this `GET` of `path` (path and query).
pub fn forwarded_by<'h>(state: &AppState, headers: &'h HeaderMap, path: &str) -> Option<&'h str> {
    let value = headers.get(FORWARDED_HEADER)?.to_str().ok()?;
    let key = state.geo.as_ref()?.peer_key.as_ref()?;
    match wharf_core::peer::verify(key, value, "GET", path, now_secs()) {
        Ok(sender) => Some(sender),
        Err(e) => {
            metrics::forwarded("forged");
            tracing::warn!(error = %e, "ignoring a forwarded-request header that does not verify");
            None
        }
    }
}

/// Request headers passed on to the owner.
const PASSED: [&str; 4] = ["authorization", "range", "accept", "user-agent"];
/// Response headers passed back to the client.
const RETURNED: [&str; 8] = [
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    headers::DOCKER_CONTENT_DIGEST,
    headers::DOCKER_DISTRIBUTION_API_VERSION,
    headers::X_WHARF_CACHE,
    "www-authenticate",
];

/// The owner's answer to a blob `GET` that missed this replica's store
/// (the caller looked it up: this asks the store nothing) when this replica
/// does not own the miss; `None` when this replica should serve it itself
/// (single replica, already forwarded, in flight here, it is the owner, or
/// every replica before it in rendezvous order is down).
///
/// The edge already sends a miss to its owner first (the same rendezvous
/// order, `wharf_core::region`), so there the check below finds this
/// replica is the owner and costs no I/O; it matters for clients that
/// reach the replicas through a plain load balancer.
pub async fn forward_miss(
    state: &AppState,
    digest: &Digest,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    let geo = state.geo.as_ref()?;
    let me = geo.advertise.as_deref()?;
    let key = geo.peer_key.as_ref()?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    if geo.replicas.len() < 2 || forwarded_by(state, headers, path).is_some() {
        return None;
    }
    if state.blobs.in_flight(digest).is_some() {
        return None;
    }
    for i in rendezvous(&digest.to_string(), &geo.replicas) {
        let owner = &geo.replicas[i];
        if owner == me {
            return None;
        }
        let mut request = state.replicas.get(format!("{owner}{path}")).header(
            FORWARDED_HEADER,
            wharf_core::peer::sign(key, me, "GET", path, now_secs()),
        );
        for name in PASSED {
            if let Some(v) = headers.get(name) {
                request = request.header(name, v.clone());
            }
        }
        match request.send().await {
            Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE => {
                metrics::forwarded("forwarded");
                tracing::debug!(%digest, owner, "blob miss forwarded to its owner");
                let mut response = Response::builder().status(r.status());
                for name in RETURNED {
                    if let Some(v) = r.headers().get(name) {
                        response = response.header(HeaderName::from_static(name), v.clone());
                    }
                }
                let body = r
                    .bytes_stream()
                    .inspect_ok(|chunk| metrics::served_bytes("replica", chunk.len() as u64));
                return response.body(Body::from_stream(body)).ok();
            }
            Ok(r) => {
                metrics::forwarded("owner_down");
                tracing::warn!(%digest, owner, status = r.status().as_u16(), "owner replica unavailable; trying the next");
            }
            Err(e) => {
                metrics::forwarded("owner_down");
                tracing::warn!(%digest, owner, error = %e, "owner replica unreachable; trying the next");
            }
        }
    }
    None
}
