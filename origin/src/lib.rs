//! Wharf's regional origin: a pull-through cache for container registries.
//!
//! It serves the OCI distribution pull API, fetches what it lacks from the
//! upstream registry named by a cache rule, verifies every byte against its
//! digest while streaming it to the client, and keeps it in an S3 bucket.
//!
//! # Layout
//!
//! * [`config`] — the typed configuration (file, environment, flags).
//! * [`state`] — [`state::AppState`], the shared handles of a running origin.
//! * [`app`] — the router and its layers; [`handlers`] — admission (parse,
//!   resolve once, authorize) and one file per operation; [`limits`] —
//!   timeouts, load shedding, the blob concurrency limit, and the download
//!   bounds past which a cold blob is passed through ([`passthrough`]).
//! * [`manifests`] — tag freshness and revalidation, immutable digests;
//!   [`tags`] — tag lists, cached briefly; [`referrers`] — the referrers
//!   API and its fallback tag.
//! * [`hydrate`] — blob misses: one upstream fetch, streamed to every waiting
//!   client while it is verified and uploaded; [`coalesce`] — the in-flight map;
//!   [`verify`] — the one stream → hash → sink → verify → commit loop that
//!   hydration and replication share.
//! * [`upstream`] — upstream registries (token dance, redirects, rate limits,
//!   the circuit breaker).
//! * [`store`] — the S3 bucket, and the embedded S3 server for `--data`.
//! * [`auth`] — the edge's tokens and blob tickets, when a key is set;
//!   [`links`] — which repositories may read which digests.
//! * [`geo`] — peer regions' stores (cross-region hydration);
//!   [`replicate`] — eager copies to them; [`cluster`] — replicas of one
//!   region sending each blob miss to its owner (rendezvous hashing).
//! * [`warm`] — prewarming jobs (`wharf warm`).
//! * [`prefetch`] — hot tags revalidated ahead of their clients; a moved one's
//!   platforms pulled before are hydrated before the tag switches.
//! * [`retention`] — keep windows, quota, last-pull records and the
//!   two-phase collection of what no kept image needs.
//! * [`events`] — what happened (hydrations, evictions, moved tags, health
//!   changes), for the status page and [`outbox`] — the durable, signed
//!   CloudEvents webhook.
//! * [`metrics`] — every metric name; [`error`] — the one error type;
//!   [`bounded`] — maps bounded in bytes.

pub mod app;
pub mod auth;
pub mod bounded;
pub mod cluster;
pub mod coalesce;
pub mod config;
pub mod error;
pub mod events;
pub mod geo;
pub mod handlers;
pub mod hydrate;
pub mod limits;
pub mod links;
pub mod manifests;
pub mod metrics;
pub mod outbox;
pub mod passthrough;
pub mod prefetch;
pub mod referrers;
pub mod replicate;
pub mod retention;
pub mod state;
pub mod store;
pub mod tags;
pub mod upstream;
pub mod verify;
pub mod warm;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::{Config, Storage};
use crate::state::AppState;
use crate::store::Store;

/// A multipart upload this old was left by a process that died: the
/// longest hydration a live one completes or aborts is far shorter.
const ORPHAN_AGE: Duration = Duration::from_secs(6 * 3600);

/// Evaluates this region's readiness every 10 s, so that a change is
/// told (status page, webhook) even when nobody asks `/readyz`.
fn watch_health(state: AppState) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            every.tick().await;
            handlers::health::readiness(&state).await;
        }
    });
}

/// Runs the origin on `listener` until `shutdown` resolves, then drains:
/// open requests and in-flight hydrations get `config.shutdown_grace` to
/// finish, after which hydrations are aborted (their uploads too, so nothing
/// half-written is ever visible) and the embedded store stops.
pub async fn run(
    listener: TcpListener,
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (embedded, settings) = match &config.storage {
        Storage::Embedded(settings) => {
            let (server, s3) = store::embedded::start(settings).await?;
            tracing::info!(endpoint = %s3.endpoint, data = %settings.data.display(), "embedded object store started");
            (Some(server), s3)
        }
        Storage::S3(s3) => (None, s3.clone()),
    };
    let store = match &config.storage {
        // This process embeds the store: read and commit on disk directly.
        Storage::Embedded(e) => Store::new(&settings).with_local(
            wharf_embedded_s3::LocalBucket::new(store::embedded::root(e), &e.bucket),
        ),
        Storage::S3(_) => Store::new(&settings),
    };
    match store.check().await {
        Ok(()) => {
            // At start and every hour: uploads older than ORPHAN_AGE were
            // left by a process that died. Younger ones may be another
            // replica's, writing now into the same bucket.
            let store = store.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    every.tick().await;
                    match store.abort_orphan_uploads("blobs/", ORPHAN_AGE).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            aborted = n,
                            "aborted uploads left by a process that died"
                        ),
                        Err(e) => tracing::warn!(error = %e, "could not list orphaned uploads"),
                    }
                }
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "object store is not reachable; /readyz reports it until it is")
        }
    }

    let state = AppState::new(&config, store, metrics)?;
    crate::metrics::register(
        &config
            .rules
            .iter()
            .map(|r| r.prefix.clone())
            .collect::<Vec<_>>(),
        &state
            .geo
            .as_ref()
            .map(|g| g.peers.iter().map(|p| p.name.clone()).collect::<Vec<_>>())
            .unwrap_or_default(),
        state.geo.as_ref().map_or(1, |g| g.replicas.len()),
    );
    // The free-space gauges from the start, not from the first cold pull.
    state.blobs.disks();
    watch_health(state.clone());
    prefetch::start(state.clone());
    state.retention.spawn();
    let retention = state.retention.clone();
    let blobs = state.blobs.clone();
    let links = state.links.clone();
    let replicator = state.replicator.clone();
    let router = app::app(state);
    tracing::info!(listen = %listener.local_addr()?, rules = config.rules.len(), "wharf origin serving");

    let stopping = Arc::new(Notify::new());
    let notify = stopping.clone();
    let service = axum::ServiceExt::<axum::extract::Request>::into_make_service(router);
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections");
        notify.notify_waiters();
    });
    let grace = config.shutdown_grace;
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => result?,
        _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "connections still open after the shutdown grace; closing them");
        }
    }
    blobs.shutdown(grace).await;
    // Last-pull records not yet written would make their images look
    // older than they are.
    if tokio::time::timeout(grace, retention.pulls.flush())
        .await
        .is_err()
    {
        tracing::warn!("last-pull records still being written after the shutdown grace");
    }
    // Link records written in the background (and queued for the peers)
    // before the replicator and the store stop; a lost one would only cost
    // an upstream HEAD later.
    if tokio::time::timeout(grace, links.flush()).await.is_err() {
        tracing::warn!("link records still being written after the shutdown grace");
    }
    if let Some(r) = replicator {
        r.shutdown(grace).await;
    }
    if let Some(embedded) = embedded {
        embedded.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}
