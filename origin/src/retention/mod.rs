//! Retention and garbage collection: what leaves the store, when, and how
//! it leaves without breaking a pull.
//!
//! The decisions are the core's (`wharf_core::retention`: what an image is,
//! which are evicted, which objects may go); this module feeds them the
//! bucket's listing and carries them out.
//!
//! # A pass, step by step ([`Retention::run`])
//!
//! 1. Flush the last-pull records ([`Pulls`]): a pulled image's manifest
//!    link is rewritten, batched, so the link's `LastModified` is its last
//!    pull.
//! 2. Take the lease (`gc/lease`, a record in the bucket with an expiry,
//!    written, left to settle for half a second, read back): replicas
//!    sharing the bucket do not run two passes at once. The lease
//!    saves work; safety does not depend on it — two passes decide the same
//!    things from the same records, and deletes are idempotent.
//! 3. List links, manifests, blobs; read every stored manifest's
//!    references; build the images and evict (keep windows, then quota).
//!    Evicting deletes the image's manifest links and the tag records that
//!    point at it.
//! 4. Sweep, in two phases recorded in `gc/candidates.json`: an object no
//!    kept image references becomes a candidate and loses its repository
//!    links at once; it is deleted at a later pass, once it has stayed
//!    unreferenced and unlinked for the grace window. A candidate that got a
//!    link again (a repository's upstream served it meanwhile) starts over.
//!    Just before deleting, the links are listed once more.
//! 5. Record the candidates, delete, release the lease.
//!
//! A crash at any point leaves records a later pass completes: links go
//! before bytes, and bytes go only for candidates recorded a grace window
//! ago and still unreferenced.
//!
//! # Why a pull never breaks
//!
//! * The origin treats a missing object behind a tag record, a link or its
//!   own memory as a miss and fetches it again.
//! * The edge redirects to the bucket only after a presigned `HEAD` saw the
//!   link and the blob, and remembers that for `WHARF_PRESENCE_TTL` (1 h by
//!   default). Links go one grace window before the bytes, so `grace` must
//!   exceed the edge's presence TTL (the default, 2 h, does).
//! * A blob this process is hydrating, or copying to a peer region, is never
//!   deleted; one a peer or replica is writing is not listed until
//!   committed, then is younger than the grace window.
//!
//! # Layout
//!
//! - `mod.rs`: [`Retention`], its settings, the schedule, the [`Report`].
//! - `pulls.rs`: [`Pulls`], the batched last-pull records.
//! - `collect.rs`: one pass.
//! - `purge.rs`: one image out now (`wharf purge`), the way a pass evicts.

mod collect;
mod pulls;
mod purge;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wharf_core::CacheRules;

use crate::hydrate::Blobs;
use crate::links::Links;
use crate::manifests::Manifests;
use crate::replicate::Replicator;
use crate::store::Store;

pub use pulls::Pulls;
pub use purge::PurgeReport;
pub use wharf_core::admin::{Evicted, GcReport as Report};

/// `[retention]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Keep window per rule prefix (rules without one keep until the quota
    /// needs the room).
    pub keep: BTreeMap<String, Duration>,
    /// Above this many bytes, evict least recently pulled first...
    pub quota_high: Option<u64>,
    /// ...until at or below this many.
    pub quota_low: Option<u64>,
    /// How long an object stays unreferenced and unlinked before it is
    /// deleted (must exceed the edge's `WHARF_PRESENCE_TTL`).
    pub grace: Duration,
    /// How often a pass runs on its own; `None`: only when asked (admin API).
    pub interval: Option<Duration>,
    /// How often last-pull records are written.
    pub record_interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            keep: BTreeMap::new(),
            quota_high: None,
            quota_low: None,
            grace: Duration::from_secs(2 * 3600),
            interval: None,
            record_interval: Duration::from_secs(60),
        }
    }
}

/// Why a pass did not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Another replica holds the lease (or this process runs a pass now).
    #[error("a retention pass is running (replica {holder}); try again in a minute")]
    Busy {
        /// Its id.
        holder: String,
        /// When its lease expires.
        until_ms: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// What retention works with: the store and the services whose memory a
/// pass keeps true (links, tags, recent commits) or asks (downloads and
/// copies in flight).
pub struct Services {
    /// The region's bucket.
    pub store: Store,
    /// The cache rules (an image's rule).
    pub rules: Arc<CacheRules>,
    /// Links (forgotten when deleted).
    pub links: Arc<Links>,
    /// Manifests (deleted tag records forgotten).
    pub manifests: Arc<Manifests>,
    /// Hydrations (in flight; deleted blobs forgotten).
    pub blobs: Arc<Blobs>,
    /// Copies to the peer regions (in flight).
    pub replicator: Option<Replicator>,
    /// Where evictions are told.
    pub events: Arc<crate::events::Events>,
}

/// The retention machinery of one origin process.
pub struct Retention {
    services: Services,
    settings: RetentionSettings,
    /// Recorded on every manifest served.
    pub pulls: Pulls,
    /// This process, in the lease.
    holder: String,
    /// One pass at a time in this process (the lease is per process).
    running: tokio::sync::Mutex<()>,
}

impl Retention {
    /// Retention with `services` under `settings`.
    pub fn new(services: Services, settings: RetentionSettings) -> Self {
        Self {
            pulls: Pulls::new(services.store.clone()),
            services,
            settings,
            holder: uuid::Uuid::new_v4().to_string(),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// What this process is writing or copying now: the pass leaves it
    /// alone (what other replicas and regions write is not listed until
    /// committed, then younger than the grace window).
    fn in_flight(&self) -> std::collections::BTreeSet<wharf_core::Digest> {
        let mut busy = self.services.blobs.in_flight_digests();
        if let Some(r) = &self.services.replicator {
            busy.extend(r.pending());
        }
        busy
    }

    /// The settings in force.
    pub fn settings(&self) -> &RetentionSettings {
        &self.settings
    }

    /// Flushes last-pull records every `record_interval`, and runs a pass
    /// every `interval` when one is set. Stops with the runtime.
    pub fn spawn(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(this.settings.record_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                this.pulls.flush().await;
            }
        });
        if let Some(interval) = self.settings.interval {
            let this = self.clone();
            tokio::spawn(async move {
                let mut every =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    match this.run(false).await {
                        Ok(report) => tracing::info!(
                            evicted = report.evicted.len(),
                            deleted = report.deleted.len(),
                            deleted_bytes = report.deleted_bytes,
                            candidates = report.candidates,
                            duration_ms = report.duration_ms,
                            "retention pass"
                        ),
                        Err(GcError::Busy { holder, .. }) => {
                            tracing::info!(%holder, "retention pass skipped: another replica runs one")
                        }
                        Err(e) => tracing::warn!(error = %e, "retention pass failed"),
                    }
                }
            });
        }
    }

    /// Runs one pass now; `dry_run` writes and deletes nothing.
    pub async fn run(&self, dry_run: bool) -> Result<Report, GcError> {
        let started = std::time::Instant::now();
        let mode = if dry_run { "dry_run" } else { "run" };
        let result = match self.running.try_lock() {
            Ok(_one) => self.collect(dry_run).await,
            Err(_) => Err(GcError::Busy {
                holder: self.holder.clone(),
                until_ms: 0,
            }),
        };
        let secs = started.elapsed().as_secs_f64();
        let label = match &result {
            Ok(_) => "ok",
            Err(GcError::Busy { .. }) => "busy",
            Err(_) => "failed",
        };
        crate::metrics::gc_run(mode, label, secs);
        result.map(|mut r| {
            r.duration_ms = (secs * 1000.0) as u64;
            r
        })
    }
}
