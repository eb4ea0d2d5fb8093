//! The leader of a flight: one detached task per hydrating blob that
//! re-checks the store, opens the [`Source`](super::source::Source), spools
//! and hashes its body, verifies it, and lets the uploader commit.
//! [`LeaderGuard`] ends the flight however the task ends.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use wharf_core::Digest;
use wharf_core::access::Held;

use super::source::{Source, Via};
use super::spool::SpoolWriter;
use super::upload::{Uploader, upload};
use super::{BlobRequest, Blobs, Hydration, Phase, Progress};
use crate::coalesce::Flights;
use crate::error::Error;
use crate::events::Event;
use crate::links;
use crate::metrics;
use crate::store;
use crate::verify::{self, CopyError};

impl Blobs {
    /// The leader: fetch once, spool, verify, let the uploader commit.
    pub(super) async fn lead(
        self: Arc<Self>,
        request: BlobRequest,
        hydration: Arc<Hydration>,
        tx: watch::Sender<Progress>,
    ) {
        let registry = request.upstream.registry().to_owned();
        let started = Instant::now();
        metrics::hydrations_in_flight(1.0);
        // Ends the flight when this function ends in any way, a panic included.
        let guard = LeaderGuard {
            flights: &self.flights,
            hydration: hydration.clone(),
            tx,
        };
        let tx = &guard.tx;
        let committed = match self.fetch_and_spool(&request, &hydration, tx).await {
            Ok(Some(uploader)) => {
                let committed = self.committed(&request, uploader, started).await;
                if committed {
                    let len = tx.borrow().written;
                    self.committed_now(
                        &request.digest,
                        store::ObjectMeta {
                            len,
                            content_type: Some("application/octet-stream".into()),
                        },
                    );
                    // Readers still behind move to the store, and the
                    // spool's disk space is released now, not when the
                    // slowest of them finishes.
                    tx.send_modify(|p| p.phase = Phase::Committed);
                    let _ = std::fs::remove_file(&hydration.spool);
                }
                committed
            }
            Ok(None) => false,
            Err((err, uploader)) => {
                let err = Arc::new(err);
                tracing::warn!(digest = %request.digest, registry, error = %err, "hydration failed");
                tx.send_modify(|p| p.phase = Phase::Failed(err.clone()));
                if let Some(uploader) = uploader {
                    match uploader.await {
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "aborting the upload failed; it is aborted at next start")
                        }
                        Err(e) => tracing::warn!(error = %e, "blob uploader task failed"),
                        Ok(Ok(())) => {}
                    }
                }
                false
            }
        };
        metrics::hydration_seconds(
            &registry,
            if committed { "committed" } else { "failed" },
            started.elapsed().as_secs_f64(),
        );
        self.events.emit(Event::Hydration {
            at_ms: crate::events::now_ms(),
            rule: registry.clone(),
            repository: request.canonical.to_string(),
            digest: request.digest.to_string(),
            size: guard.tx.borrow().written,
            duration_ms: started.elapsed().as_millis() as u64,
            ok: committed,
        });
        metrics::hydrations_in_flight(-1.0);
        drop(guard);
    }

    /// Waits for the uploader of a verified blob; once it committed, links
    /// the blob to the repository and queues it for the peer regions.
    async fn committed(&self, request: &BlobRequest, uploader: Uploader, started: Instant) -> bool {
        match uploader.await {
            Ok(Ok(())) => {
                self.links
                    .record_now(
                        links::Kind::Blob,
                        &request.canonical,
                        &request.digest,
                        request.replicate,
                    )
                    .await;
                if request.replicate
                    && let Some(r) = &self.replicator
                {
                    r.enqueue(store::blob_key(&request.digest), request.digest.clone());
                }
                let registry = request.upstream.registry();
                tracing::info!(digest = %request.digest, registry, elapsed = ?started.elapsed(), "blob hydrated");
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(digest = %request.digest, error = %e, "blob served but not cached: store write failed");
                false
            }
            Err(e) => {
                tracing::warn!(digest = %request.digest, error = %e, "blob uploader task failed");
                false
            }
        }
    }

    /// Returns the uploader to wait for on success (`None` when the store
    /// already had the blob), or the error and the uploader to wait for.
    async fn fetch_and_spool(
        &self,
        request: &BlobRequest,
        hydration: &Hydration,
        tx: &watch::Sender<Progress>,
    ) -> Result<Option<Uploader>, (Error, Option<Uploader>)> {
        if self.in_store(request, tx).await.map_err(|e| (e, None))? {
            return Ok(None);
        }
        let Source { total, body, from } = self.source(request).await.map_err(|e| (e, None))?;
        let sink = SpoolWriter::create(hydration, tx)
            .await
            .map_err(|e| (Error::Spool(e), None))?;
        tx.send_modify(|p| {
            p.total = total;
            p.phase = Phase::Streaming;
        });
        let uploader = tokio::spawn(upload(
            self.store.clone(),
            store::blob_key(&request.digest),
            hydration.spool.clone(),
            tx.subscribe(),
        ));
        // Commit here is the spool's: the flight turns `Verified`, and the
        // uploader then commits the store's sink.
        let copied = tokio::select! {
            _ = self.cancel.cancelled() => Err(Error::ShuttingDown),
            copied = verify::copy(body, &request.digest, total, sink) => {
                copied.map_err(|e| self.copy_failed(&request.digest, &from, e))
            }
        };
        match copied {
            Ok(len) => {
                if let Via::Peer(peer) = &from {
                    tracing::info!(digest = %request.digest, peer, bytes = len, "blob copied from a peer region");
                }
                Ok(Some(uploader))
            }
            Err(e) => Err((e, Some(uploader))),
        }
    }

    /// Re-checks, without asking the store, just before fetching. It guards
    /// a race: the request's lookup ([`Blobs::lookup`]) missed, then the
    /// previous flight for this digest committed and left [`Flights`]
    /// before this request joined, so it started a new flight for a stored
    /// blob. Without the re-check that costs a second upstream fetch; this
    /// process remembers what it committed lately, which is exactly that
    /// case (another replica's misses go to their owner, not here). `true`
    /// (and [`Phase::InStore`]) when the blob was committed.
    async fn in_store(
        &self,
        request: &BlobRequest,
        tx: &watch::Sender<Progress>,
    ) -> Result<bool, Error> {
        let Some(meta) = self.recently_committed(&request.digest) else {
            return Ok(false);
        };
        self.gate(request, Held::Stored).await?;
        tx.send_modify(|p| p.phase = Phase::InStore(meta));
        Ok(true)
    }

    /// Names why a copy from `from` failed; a mismatch is counted, and a
    /// peer region's bad copy distrusted (the retry goes upstream).
    fn copy_failed(&self, digest: &Digest, from: &Via, e: CopyError<std::io::Error>) -> Error {
        let got = match e {
            CopyError::Body { at, source } => return from.body_error(at, source),
            CopyError::Sink(e) => return Error::Spool(e),
            CopyError::Mismatch { got } => got,
        };
        let registry = match from {
            Via::Peer(peer) => {
                metrics::integrity_failure(&format!("peer:{peer}"));
                tracing::error!(digest = %digest, %got, peer, "peer region's copy failed verification; not stored, the next attempt goes upstream");
                if let Some(geo) = &self.geo {
                    geo.distrust(digest);
                }
                format!("peer region {peer}")
            }
            Via::Upstream(registry) => {
                metrics::integrity_failure(registry);
                tracing::error!(digest = %digest, %got, registry, "upstream blob failed verification; not stored");
                registry.clone()
            }
        };
        Error::DigestMismatch {
            registry,
            want: digest.clone(),
            got,
        }
    }
}

/// Owned by a flight's leader: when the leader ends, however it ends (a
/// panic or an abort included), the flight leaves [`Flights`] and, if it had
/// not reached an outcome, is marked failed, so followers stop waiting and the
/// next request for the digest starts afresh instead of joining a dead
/// flight forever (issue 12).
struct LeaderGuard<'a> {
    flights: &'a Flights<Digest, Hydration>,
    hydration: Arc<Hydration>,
    tx: watch::Sender<Progress>,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let done = matches!(
            self.tx.borrow().phase,
            Phase::Verified | Phase::Committed | Phase::InStore(_) | Phase::Failed(_)
        );
        if !done {
            let err = Arc::new(Error::Lost("blob download"));
            self.tx.send_modify(|p| p.phase = Phase::Failed(err));
        }
        self.flights.finish(&self.hydration.digest, &self.hydration);
    }
}

#[cfg(test)]
mod tests {
    use wharf_core::RepositoryName;

    use super::*;

    #[test]
    fn a_leader_that_panics_ends_its_flight() {
        let flights: Flights<Digest, Hydration> = Flights::default();
        let digest = Digest::sha256_of(b"x");
        let (tx, rx) = watch::channel(Progress {
            written: 0,
            total: None,
            phase: Phase::Streaming,
        });
        let (hydration, leader) = flights.join_or_start(&digest, || {
            Arc::new(Hydration {
                store: crate::store::Store::new(&crate::store::S3Settings {
                    endpoint: "http://127.0.0.1:9".into(),
                    bucket: "wharf".into(),
                    region: "us-east-1".into(),
                    access_key: "a".into(),
                    secret_key: "b".into(),
                    part_size: 5 << 20,
                }),
                registry: "up".into(),
                digest: digest.clone(),
                canonical: RepositoryName::parse("up/app").unwrap(),
                spool: std::env::temp_dir().join(format!("wharf-test-{}", uuid::Uuid::new_v4())),
                progress: rx,
                window: Default::default(),
            })
        });
        assert!(leader);
        let follower = hydration.progress.clone();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = LeaderGuard {
                flights: &flights,
                hydration: hydration.clone(),
                tx,
            };
            panic!("hostile upstream");
        }));
        assert!(panicked.is_err());
        assert!(flights.is_empty(), "a dead flight stayed in the map");
        assert!(matches!(follower.borrow().phase, Phase::Failed(_)));
        let (_, leader) = flights.join_or_start(&digest, || hydration.clone());
        assert!(leader, "the next request starts afresh");
    }
}
