//! `wharf-edge`: Wharf's Cloudflare Worker (Rust → wasm32), the part clients
//! talk to. It answers the registry API's cheap, latency-critical requests
//! itself and never carries blob bytes:
//!
//! * `/v2/` → `401` with a Bearer challenge whose realm is the host the client
//!   used; `/token` → HS256 tokens (anonymous for public rules, Basic-auth users
//!   for private ones) that every hostname and every origin accept.
//! * manifests → from the isolate's memory, the location's Cache API, then
//!   KV, with the core's tag
//!   freshness policy (stale served at once while a revalidation runs in
//!   `wait_until`; stale served when the origin is down); misses are fetched
//!   from the region's origin, byte-exact and digest-checked.
//! * blobs → `307` to a presigned SigV4 URL on the region's bucket when the
//!   blob is there and linked to the repository (learned with presigned
//!   `HEAD`s, remembered per location and, for a minute, per isolate), else
//!   `307` to the region's origin with an HMAC ticket.
//!
//! # Layout
//!
//! Dependencies run one way: this file → [`routes`] → the operations →
//! [`failover`] → [`health`] → [`origin`]; below them all, [`ctx`],
//! [`http`], [`memo`], [`store`], [`config`], [`error`] (none of which
//! imports an operation).
//!
//! * this file — events only: `start` (logging, panic hook), `fetch` (route,
//!   then map the one [`error::Error`] to an OCI response, once) and
//!   `scheduled` (the cron's probes).
//! * [`routes`] — one pass per request: parse (core), plan the regions
//!   (`wharf_core::region::plan`), resolve and authorize the name once, then
//!   one module per operation: [`token`] (with [`signin`]: the password check and the
//!   failed-sign-in throttle), [`manifest`], [`blob`], [`forward`] (tags
//!   list, referrers).
//! * [`ctx`] — the request context, resolved once per request and immutable;
//!   [`http`] — building responses (and the OCI error response).
//! * [`failover`] — the one loop over the plan's regions and replicas
//!   ("try the next one"), recording a region that failed.
//! * [`config`] — `[vars]` and secrets; [`health`] — region health records,
//!   probes and the cron trigger;
//!   [`origin`] — requests to the region's origin; [`store`] — the Cache API
//!   and KV tiers; [`memo`] — what an isolate remembers between requests
//!   (health records, blob presence, manifests: keyed, bounded, seconds to a
//!   minute); [`error`] — the one error type; [`log`] — JSON log lines.

pub mod blob;
pub mod config;
pub mod ctx;
pub mod error;
pub mod failover;
pub mod forward;
pub mod health;
pub mod http;
pub mod log;
pub mod manifest;
pub mod memo;
pub mod origin;
pub mod routes;
pub mod signin;
pub mod store;
pub mod token;

use worker::{Context, Env, Request, Response, ScheduleContext, ScheduledEvent, event};

/// Registry API version header, on every response (clients check it on `/v2/`).
pub const API_VERSION: (&str, &str) = (
    wharf_core::headers::DOCKER_DISTRIBUTION_API_VERSION,
    wharf_core::headers::API_VERSION_VALUE,
);

#[event(start)]
fn start() {
    log::init();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let method = req.method().to_string();
    let path = req.path();
    let response = match routes::handle(req, &env, &ctx).await {
        Ok(response) => response,
        Err(e) => {
            tracing::info!(%method, %path, status = e.status(), code = %e.code(), blame = e.blame(), error = %e, "request failed");
            http::error_response(&e)
        }
    };
    let _ = response.headers().set(API_VERSION.0, API_VERSION.1);
    Ok(response)
}

/// The cron trigger (`[triggers] crons` in `wrangler.toml`): probes every
/// region's origins and publishes their health to KV.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    routes::scheduled(&env).await;
}
