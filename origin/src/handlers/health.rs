//! `/healthz` (the process answers), `/readyz` (deep: the object store and
//! each upstream's last result, as JSON) and `/metrics` (Prometheus text).
//!
//! Peer regions' buckets are listed for operators but never affect
//! readiness. Readiness fails only when the object store is unreachable: without it
//! nothing can be served or cached. A failing upstream degrades the region
//! (cold content errors, warm content is still served) but does not make it
//! unready, so a load balancer keeps sending it warm traffic.
//!
//! `/readyz` is reachable by anyone who can reach the origin (the edge probes
//! it), so it says *whether* each dependency works, never *what* it is:
//! no bucket names, endpoints, paths or error text from the store or an
//! upstream. Those go to the log (a `warn` line per failing check).

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (store_ok, body) = readiness(&state).await;
    let code = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// The readiness document (`/readyz`'s body, the admin status's `health`)
/// and whether the store answered. Every evaluation is also an observation
/// of the region's health: a change is an event.
pub async fn readiness(state: &AppState) -> (bool, serde_json::Value) {
    let store = check_store(&state.store, "this region's object store", None).await;
    let store_ok = store["ok"].as_bool().unwrap_or(false);
    let upstreams: serde_json::Map<String, serde_json::Value> = state
        .runtimes
        .iter()
        .map(|r| {
            (
                r.upstream.registry().to_owned(),
                public_upstream_health(r.upstream.health()),
            )
        })
        .collect();
    let upstreams_ok = upstreams
        .values()
        .all(|u| u["ok"].as_bool().unwrap_or(true) && u["circuit"] == "closed");
    // Disk pressure: cold pulls pass through (not stored) until space
    // returns; the edge's health then prefers another region.
    let disks: serde_json::Map<String, serde_json::Value> = state
        .blobs
        .disks()
        .into_iter()
        .map(|(name, free, ok)| (name.to_owned(), json!({ "ok": ok, "free_bytes": free })))
        .collect();
    let disks_ok = disks.values().all(|d| d["ok"].as_bool().unwrap_or(true));
    let status = match (store_ok, upstreams_ok && disks_ok) {
        (false, _) => "down",
        (true, false) => "degraded",
        (true, true) => "ok",
    };
    // Peer regions' buckets: informational only (a peer being down costs
    // cross-region copies, never this region's readiness).
    let mut peers = serde_json::Map::new();
    if let Some(geo) = &state.geo {
        let checks = geo.peers.iter().map(|p| async move {
            let v = check_store(&p.store, "a peer region's object store", Some(&p.name)).await;
            (p.name.clone(), v)
        });
        peers.extend(futures::future::join_all(checks).await);
    }
    let body = json!({
        "status": status,
        "region": state.geo.as_ref().map(|g| g.region.clone()),
        "replica": state.geo.as_ref().and_then(|g| g.advertise.clone()),
        "checks": { "store": store, "upstreams": upstreams, "peer_regions": peers, "disk": disks },
        "hydrations_in_flight": state.blobs.in_flight_count(),
    });
    state
        .events
        .observe_health(state.geo.as_ref().map(|g| g.region.clone()), status);
    (store_ok, body)
}

/// One store check as published: `ok` and latency, or `ok: false` with a
/// generic reason; the store's own error (bucket, endpoint, text) is logged.
async fn check_store(
    store: &crate::store::Store,
    what: &str,
    peer: Option<&str>,
) -> serde_json::Value {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(2), store.check()).await {
        Ok(Ok(())) => {
            json!({ "ok": true, "latency_ms": started.elapsed().as_millis() as u64 })
        }
        Ok(Err(e)) => {
            tracing::warn!(bucket = store.bucket(), peer, error = %e, "readiness: {what} failed its check");
            json!({ "ok": false, "error": "the object store is unavailable" })
        }
        Err(_) => {
            tracing::warn!(
                bucket = store.bucket(),
                peer,
                "readiness: {what} did not answer within 2s"
            );
            json!({ "ok": false, "error": "no answer within 2s" })
        }
    }
}

/// An upstream's health without its last error's text (which names URLs
/// and carries what the upstream said); the text is in the log already.
fn public_upstream_health(h: crate::upstream::UpstreamHealth) -> serde_json::Value {
    json!({
        "ok": h.ok,
        "status": h.status,
        "at": h.at,
        "ratelimit_remaining": h.ratelimit_remaining,
        "circuit": h.circuit,
    })
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
