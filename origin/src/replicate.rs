//! Eager replication: after a rule with `replicate = true` hydrates a blob
//! (or stores a manifest), copy it to every peer region's store in the
//! background, so the first pull there is already warm.
//!
//! A bounded queue feeds a few workers. Each copy streams the local object
//! through the shared verify loop ([`crate::verify`]) into the peer's
//! [`PartSink`](crate::store::PartSink) (one `PutObject` up to one part,
//! else a multipart upload fed one part at a time: memory is bounded by the
//! part size), and completes only when the digest matched — a peer never
//! holds an unverified object. A peer that already has the object is skipped.
//! Failures are retried with exponential backoff; what is still failing
//! after the last attempt is logged and counted (a later pull in that region
//! copies it on demand anyway). Queue depth and lag are metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wharf_core::Digest;

use crate::geo::Peer;
use crate::metrics;
use crate::store::Store;
use crate::verify::{self, CopyError};

/// Objects waiting beyond this are dropped (and counted as failed).
const QUEUE: usize = 10_000;
/// Concurrent copies.
const WORKERS: usize = 4;
/// Attempts per peer before giving up.
const ATTEMPTS: u32 = 5;

struct Job {
    key: String,
    digest: Digest,
    queued: Instant,
}

/// The handle hydrations queue copies on.
#[derive(Clone)]
pub struct Replicator {
    tx: mpsc::Sender<Job>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Digests queued or being copied, with how many jobs each (the
    /// retention pass leaves them alone).
    pending: Arc<std::sync::Mutex<HashMap<Digest, usize>>>,
}

/// Counts a digest's jobs in `pending`.
fn pending_add(pending: &std::sync::Mutex<HashMap<Digest, usize>>, digest: &Digest, up: bool) {
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    if up {
        *p.entry(digest.clone()).or_default() += 1;
    } else if let Some(n) = p.get_mut(digest) {
        *n -= 1;
        if *n == 0 {
            p.remove(digest);
        }
    }
}

impl Replicator {
    /// Starts the workers copying from `local` to `peers`.
    pub fn start(local: Store, peers: Vec<Peer>) -> Self {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let pending = Arc::new(std::sync::Mutex::new(HashMap::new()));
        for _ in 0..WORKERS {
            let (rx, local, peers, cancel, pending) = (
                rx.clone(),
                local.clone(),
                peers.clone(),
                cancel.clone(),
                pending.clone(),
            );
            tracker.spawn(async move {
                loop {
                    let job = tokio::select! {
                        _ = cancel.cancelled() => return,
                        job = async { rx.lock().await.recv().await } => job,
                    };
                    let Some(job) = job else { return };
                    for peer in &peers {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = replicate(&local, peer, &job) => {}
                        }
                    }
                    pending_add(&pending, &job.digest, false);
                    metrics::replication_backlog(-1.0);
                }
            });
        }
        tracker.close();
        Self {
            tx,
            tracker,
            cancel,
            pending,
        }
    }

    /// The digests queued or being copied now.
    pub fn pending(&self) -> std::collections::BTreeSet<Digest> {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.keys().cloned().collect()
    }

    /// Gives queued copies up to `grace` to finish, then stops the workers
    /// (an unfinished multipart upload is aborted at the peer's next start,
    /// or by its lifecycle rules; nothing unverified is completed).
    pub async fn shutdown(&self, grace: Duration) {
        let _ = tokio::time::timeout(grace, async {
            while !self.tx.is_closed() && self.tx.capacity() < QUEUE {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        self.cancel.cancel();
        self.tracker.wait().await;
    }

    /// Queues `key` (whose content has `digest`) for every peer region.
    pub fn enqueue(&self, key: String, digest: Digest) {
        pending_add(&self.pending, &digest, true);
        let job = Job {
            key,
            digest,
            queued: Instant::now(),
        };
        match self.tx.try_send(job) {
            Ok(()) => metrics::replication_backlog(1.0),
            Err(e) => {
                let job = match e {
                    mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
                };
                pending_add(&self.pending, &job.digest, false);
                tracing::warn!(
                    key = job.key,
                    "replication queue full; the object is copied on demand instead"
                );
                metrics::replication_done("all", "failed", 0.0);
            }
        }
    }
}

async fn replicate(local: &Store, peer: &Peer, job: &Job) {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        match copy(local, &peer.store, job).await {
            Ok(result) => {
                tracing::info!(key = job.key, peer = %peer.name, result, "replicated");
                metrics::replication_done(&peer.name, result, job.queued.elapsed().as_secs_f64());
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(key = job.key, peer = %peer.name, attempt, error = %e, "replication failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(key = job.key, peer = %peer.name, error = %e, "replication failed; giving up (pulls there copy on demand)");
                metrics::replication_done(&peer.name, "failed", job.queued.elapsed().as_secs_f64());
            }
        }
    }
}

/// Copies one object through the shared verify loop; `Ok("present")` when
/// the peer already had it.
async fn copy(local: &Store, peer: &Store, job: &Job) -> Result<&'static str, String> {
    if peer
        .head(&job.key)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok("present");
    }
    let found = local
        .get_stream(&job.key, None)
        .await
        .map_err(|e| e.to_string())?;
    let Some((meta, body)) = found else {
        return Err(format!("{} is no longer in the local store", job.key));
    };
    let content_type = meta
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let sink = peer.part_sink(&job.key, content_type);
    match verify::copy(body, &job.digest, Some(meta.len), sink).await {
        Ok(_) => Ok("copied"),
        Err(CopyError::Body { at, source }) => {
            Err(format!("reading {} after {at} bytes: {source}", job.key))
        }
        Err(CopyError::Sink(e)) => Err(e.to_string()),
        Err(CopyError::Mismatch { got }) => Err(format!(
            "local copy of {} does not match its digest ({got}); not replicated",
            job.key
        )),
    }
}
