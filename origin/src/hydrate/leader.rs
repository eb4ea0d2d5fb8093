//! The leader of a flight: one detached task per hydrating blob that
//! re-checks the store, opens the [`Source`](super::source::Source), spools
//! and hashes its body, verifies it, and lets the uploader commit.
//! [`LeaderGuard`] ends the flight however the task ends.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::watch;
use wharf_core::Digest;
use wharf_core::access::Held;

use super::source::{Source, Via};
use super::spool::{self, Batch, append};
use super::upload::{Uploader, upload};
use super::{BlobRequest, Blobs, Hydration, Phase, Progress};
use crate::coalesce::Flights;
use crate::error::Error;
use crate::links;
use crate::metrics;
use crate::store;

/// The leader writes the spool file in batches of this many bytes.
const BATCH: usize = 512 * 1024;

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
            Ok(Some(uploader)) => self.committed(&request, uploader, started).await,
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
        let source = self.source(request).await.map_err(|e| (e, None))?;
        let file = spool::create(&hydration.spool)
            .await
            .map_err(|e| (Error::Spool(e), None))?;
        tx.send_modify(|p| {
            p.total = source.total;
            p.phase = Phase::Streaming;
        });
        let uploader = tokio::spawn(upload(
            self.store.clone(),
            store::blob_key(&request.digest),
            hydration.spool.clone(),
            tx.subscribe(),
        ));
        match self
            .spool_verified(request, hydration, tx, source, &file)
            .await
        {
            Ok(()) => {
                tx.send_modify(|p| p.phase = Phase::Verified);
                Ok(Some(uploader))
            }
            Err(e) => Err((e, Some(uploader))),
        }
    }

    /// Re-checks the store just before fetching: a flight for this digest
    /// may have committed between the caller's lookup and this flight's
    /// start. `true` (and [`Phase::InStore`]) when it did.
    async fn in_store(
        &self,
        request: &BlobRequest,
        tx: &watch::Sender<Progress>,
    ) -> Result<bool, Error> {
        let key = store::blob_key(&request.digest);
        let Ok(Some(meta)) = self.store.head(&key).await else {
            return Ok(false);
        };
        self.gate(request, Held::Stored).await?;
        tx.send_modify(|p| p.phase = Phase::InStore(meta));
        Ok(true)
    }

    /// Reads `source` to its end, hashing it and appending it to the spool
    /// file in batches (each one published to the followers), then checks
    /// its length and digest.
    async fn spool_verified(
        &self,
        request: &BlobRequest,
        hydration: &Hydration,
        tx: &watch::Sender<Progress>,
        source: Source,
        file: &Arc<std::fs::File>,
    ) -> Result<(), Error> {
        let Source {
            total,
            mut body,
            from,
        } = source;
        let mut verifier = request.digest.verifier();
        let mut written = 0u64;
        // The chunks received since the last write, written together.
        let mut batch = Batch::default();
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return Err(Error::ShuttingDown),
                next = body.next() => next,
            };
            let chunk = match next {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Err(from.body_error(written + batch.len as u64, e)),
            };
            if let Via::Upstream(registry) = &from {
                metrics::upstream_bytes(registry, chunk.len() as u64);
            }
            verifier.update(&chunk);
            batch.push(chunk);
            if batch.len >= BATCH {
                written = append(file, hydration, &mut batch, written)
                    .await
                    .map_err(Error::Spool)?;
                tx.send_modify(|p| p.written = written);
            }
        }
        if batch.len > 0 {
            written = append(file, hydration, &mut batch, written)
                .await
                .map_err(Error::Spool)?;
            tx.send_modify(|p| p.written = written);
        }
        self.verify(&request.digest, &from, total, written, verifier.finish())
    }

    /// Checks what was spooled (`written` bytes hashing to `got`) against
    /// the digest and the announced length; a mismatch is counted, and a
    /// peer region's bad copy distrusted (the retry goes upstream).
    fn verify(
        &self,
        digest: &Digest,
        from: &Via,
        total: Option<u64>,
        written: u64,
        got: Digest,
    ) -> Result<(), Error> {
        let mismatch = match total {
            Some(total) if total != written => Some(format!("{written} of {total} bytes")),
            _ if &got != digest => Some(format!("{got} ({written} bytes)")),
            _ => None,
        };
        let Some(got) = mismatch else {
            if let Via::Peer(peer) = from {
                tracing::info!(digest = %digest, peer, bytes = written, "blob copied from a peer region");
            }
            return Ok(());
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
        Err(Error::DigestMismatch {
            registry,
            want: digest.clone(),
            got,
        })
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
            Phase::Verified | Phase::InStore(_) | Phase::Failed(_)
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
