//! `/healthz` (the process answers), `/readyz` (deep: the object store and
//! each upstream's last result, as JSON) and `/metrics` (Prometheus text).
//!
//! Peer regions' buckets are listed for operators but never affect
//! readiness. Readiness fails only when the object store is unreachable: without it
//! nothing can be served or cached. A failing upstream degrades the region
//! (cold content errors, warm content is still served) but does not make it
//! unready, so a load balancer keeps sending it warm traffic.

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
    let started = Instant::now();
    let store = match tokio::time::timeout(Duration::from_secs(2), state.store.check()).await {
        Ok(Ok(())) => {
            json!({ "ok": true, "bucket": state.store.bucket(), "latency_ms": started.elapsed().as_millis() as u64 })
        }
        Ok(Err(e)) => {
            json!({ "ok": false, "bucket": state.store.bucket(), "error": e.to_string() })
        }
        Err(_) => {
            json!({ "ok": false, "bucket": state.store.bucket(), "error": "no answer within 2s" })
        }
    };
    let store_ok = store["ok"].as_bool().unwrap_or(false);
    let upstreams: serde_json::Map<String, serde_json::Value> = state
        .runtimes
        .iter()
        .map(|r| {
            (
                r.upstream.registry().to_owned(),
                serde_json::to_value(r.upstream.health()).unwrap_or_default(),
            )
        })
        .collect();
    let upstreams_ok = upstreams
        .values()
        .all(|u| u["ok"].as_bool().unwrap_or(true));
    let status = match (store_ok, upstreams_ok) {
        (false, _) => "down",
        (true, false) => "degraded",
        (true, true) => "ok",
    };
    // Peer regions' buckets: informational only (a peer being down costs
    // cross-region copies, never this region's readiness).
    let mut peers = serde_json::Map::new();
    if let Some(geo) = &state.geo {
        let checks = geo.peers.iter().map(|p| async move {
            let started = Instant::now();
            let v = match tokio::time::timeout(Duration::from_secs(2), p.store.check()).await {
                Ok(Ok(())) => json!({ "ok": true, "bucket": p.store.bucket(), "latency_ms": started.elapsed().as_millis() as u64 }),
                Ok(Err(e)) => json!({ "ok": false, "bucket": p.store.bucket(), "error": e.to_string() }),
                Err(_) => json!({ "ok": false, "bucket": p.store.bucket(), "error": "no answer within 2s" }),
            };
            (p.name.clone(), v)
        });
        peers.extend(futures::future::join_all(checks).await);
    }
    let body = json!({
        "status": status,
        "region": state.geo.as_ref().map(|g| g.region.clone()),
        "replica": state.geo.as_ref().and_then(|g| g.advertise.clone()),
        "checks": { "store": store, "upstreams": upstreams, "peer_regions": peers },
        "hydrations_in_flight": state.blobs.in_flight_count(),
    });
    let code = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
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
