//! Serve now, hydrate for later: blobs stream from the upstream to clients
//! while the same bytes are hashed and written to the object store.
//!
//! # How a miss flows
//!
//! The blob handler resolves the repository once (a `Target`, turned into
//! a [`BlobRequest`]) and looks the blob up in the store once
//! ([`Blobs::lookup`]); on a miss, unless another replica owns it
//! ([`crate::cluster`]), [`Blobs::open`] gets what was found. The first
//! request for a blob that the store lacks starts one detached leader task;
//! every concurrent request joins it through [`Flights`]. The leader
//! re-checks the store once (a race, see `leader.rs`), opens the source
//! (`source.rs`) and reads its body once through the shared verify loop
//! ([`crate::verify::copy`]), whose sink is the spool file: each batch
//! appended bumps a `watch` channel. Clients (the first one included) follow the spool as it
//! grows, so any number of them cost one upstream GET, and a client that
//! disconnects does not stop the download. The newest chunks also stay in
//! memory (`spool::Window`): a client that keeps up with the upstream (the usual
//! case) is handed the very buffers the leader wrote, so the tee costs one
//! write of each byte and no read back; only a client that falls more than
//! `WINDOW` bytes behind reads the spool file. The leader does not pace
//! itself to the clients: reading ahead at upstream speed measured faster
//! for skopeo's concurrent layer pulls (bench item 2: 1.05× direct against
//! 1.40× when paced), though a slower client then reads back from the
//! file. A separate uploader task (`upload.rs`) follows the same channel
//! and feeds the store's [`FileSink`](crate::store::FileSink), which ships
//! full parts of the spool file to a multipart upload (or, on the embedded
//! store, publishes the file itself at the end); the object is committed
//! (made visible) only after the whole body matched its digest and length. A mismatch or truncation marks the flight
//! failed: the uploader aborts the multipart upload, readers end their
//! responses with an error (the connection is reset, never completed with
//! wrong bytes), and `wharf_integrity_failures_total` is bumped.
//!
//! Once the blob is committed its spool file is removed at once: readers
//! still behind (a slow client) read the rest from the store, so no reader
//! pins a spool copy of a committed blob.
//!
//! Readers hold back the final byte of a blob until it is verified, so a
//! client can never receive a complete body that later turns out to be
//! wrong; a `Range` that ends before the blob does holds back its own last
//! byte the same way, so a `206` never completes from unverified bytes.
//!
//! The source is the nearest peer region's store when one has the blob
//! ([`crate::geo`]), else the upstream: both go through the same loop, so a
//! cross-region copy is verified exactly like an upstream fetch. A committed
//! blob of a `replicate = true` rule is queued for the peer regions
//! ([`crate::replicate`]).
//!
//! Memory is flat in blob size: the leader batches at most `BATCH` bytes,
//! a flight keeps at most `WINDOW` bytes in memory, readers read
//! `READ_CHUNK` at a time, and parts are streamed from the spool file to
//! the store.
//!
//! Spool I/O is plain `std::fs` in `spawn_blocking` (the leader `writev`s
//! the received chunks as they are; a lagging reader reads into an
//! unzeroed buffer) rather than `tokio::fs`, whose files copy every buffer
//! into a buffer of their own before the system call.
//!
//! # Layout
//!
//! - `mod.rs`: [`Blobs`] (open a blob: the store, or join/start its flight;
//!   the access gate), [`Hydration`] and its [`Progress`].
//! - `source.rs`: where a leader's bytes come from (the nearest peer
//!   region's store, else the upstream) and how their failures are named.
//! - `leader.rs`: the leader task (re-check, open the source, copy through
//!   the verify loop, wait for the commit) and the guard that ends its
//!   flight however it ends.
//! - `spool.rs`: the spool file — its writer (the leader's verify-loop
//!   sink), the in-memory `Window` — and [`spool_stream`], which clients
//!   read.
//! - `upload.rs`: the uploader that follows the flight into the store's
//!   blob sink and commits it once verified.

mod leader;
mod source;
mod spool;
mod upload;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wharf_core::access::{DigestAccess, Held, digest_access};
use wharf_core::{Digest, RepositoryName};

use crate::coalesce::Flights;
use crate::error::Error;
use crate::geo::Geo;
use crate::limits::{ColdPath, HydrationLimits, InFlight, free_bytes};
use crate::links::{self, Links};
use crate::metrics;
use crate::passthrough::PassError;
use crate::replicate::Replicator;
use crate::store::{self, ObjectMeta, Store};
use crate::upstream::Upstream;

pub use spool::spool_stream;

/// Where a hydration stands.
#[derive(Clone, Debug)]
pub enum Phase {
    /// Asking the upstream.
    Connecting,
    /// Bytes are arriving in the spool file.
    Streaming,
    /// All bytes arrived and matched the digest.
    Verified,
    /// The blob is committed to the store and its spool file is gone:
    /// readers still behind read the rest from the store.
    Committed,
    /// The store already had the blob (found on the leader's re-check).
    InStore(ObjectMeta),
    /// The hydration failed; nothing was stored.
    Failed(Arc<Error>),
}

/// Progress of one hydration, published by the leader.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Bytes in the spool file, readable by followers.
    pub written: u64,
    /// Length announced by the upstream, if it sent one.
    pub total: Option<u64>,
    /// Where the hydration stands.
    pub phase: Phase,
}

/// One in-flight blob download, shared by every client that wants it.
pub struct Hydration {
    /// Where readers go once the blob is committed.
    store: Store,
    /// The upstream it is fetched from (its rule prefix), for the
    /// per-upstream bound.
    registry: String,
    digest: Digest,
    /// The repository the download was started for: its upstream's answer
    /// decides for every request through the same name.
    canonical: RepositoryName,
    spool: PathBuf,
    progress: watch::Receiver<Progress>,
    window: std::sync::Mutex<spool::Window>,
}

impl Hydration {
    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Current progress.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Follows its progress.
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }
}

impl Drop for Hydration {
    // The last holder (leader or reader) removes the spool file.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.spool);
    }
}

/// How long a commit is remembered for the leader's check (far longer than
/// the race it closes: a request's lookup and its joining a flight).
const RECENT_FOR: Duration = Duration::from_secs(60);
/// Memory for that: about 10,000 digests.
const RECENT_BYTES: usize = 1 << 20;

/// A pass-through body (see [`crate::passthrough`]).
pub type PassBody =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, PassError>> + Send>>;

/// Where a blob request will be answered from.
pub enum BlobSource {
    /// The store has it.
    Store(ObjectMeta),
    /// Past a download bound ([`HydrationLimits`]): streamed from the
    /// source, verified, not stored.
    PassThrough {
        /// The length the source announced.
        total: Option<u64>,
        /// The verified body.
        body: PassBody,
    },
    /// It is being hydrated; stream it from the spool.
    Hydrating {
        /// The flight to follow.
        hydration: Arc<Hydration>,
        /// Its progress when the upstream answered.
        progress: Progress,
        /// Whether this request started the flight.
        leader: bool,
    },
}

/// What a blob request needs to know about its rule.
#[derive(Clone)]
pub struct BlobRequest {
    /// The rule's upstream.
    pub upstream: Arc<Upstream>,
    /// Repository name at the upstream.
    pub upstream_repo: RepositoryName,
    /// Repository name in the cache (rule prefix + upstream name).
    pub canonical: RepositoryName,
    /// The blob.
    pub digest: Digest,
    /// Queue the committed blob for the peer regions.
    pub replicate: bool,
    /// Whether `canonical` is linked to the digest (else what is held for
    /// other repositories is served only after its upstream confirms it).
    pub linked: bool,
}

/// All blob hydrations of this process.
pub struct Blobs {
    store: Store,
    /// Blobs this process committed lately (see [`Blobs::recently_committed`]).
    recent: std::sync::Mutex<crate::bounded::ByteLru<(ObjectMeta, std::time::Instant)>>,
    /// Where finished hydrations are told.
    events: Arc<crate::events::Events>,
    /// This process's own spool directory (see [`Spool`]).
    spool: Spool,
    limits: HydrationLimits,
    /// Filesystems whose free space bounds new hydrations: the spool's,
    /// and the embedded store's.
    disks: Vec<(&'static str, PathBuf)>,
    flights: Flights<Digest, Hydration>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    closing: AtomicBool,
    links: Arc<Links>,
    geo: Option<Arc<Geo>>,
    replicator: Option<Replicator>,
}

impl Blobs {
    /// Blob hydrations writing to `store`, spooling under `spool_dir`.
    pub fn new(
        store: Store,
        spool_dir: PathBuf,
        links: Arc<Links>,
        geo: Option<Arc<Geo>>,
        replicator: Option<Replicator>,
    ) -> io::Result<Self> {
        let spool = Spool::claim(&spool_dir)?;
        Ok(Self {
            store,
            recent: std::sync::Mutex::new(crate::bounded::ByteLru::new(RECENT_BYTES)),
            events: Arc::default(),
            disks: vec![("spool", spool_dir)],
            spool,
            limits: HydrationLimits::default(),
            flights: Flights::default(),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            closing: AtomicBool::new(false),
            links,
            geo,
            replicator,
        })
    }

    /// The same, bounded by `limits`; `store_dir` is the embedded store's
    /// directory, whose filesystem is watched too.
    pub fn with_limits(mut self, limits: HydrationLimits, store_dir: Option<PathBuf>) -> Self {
        self.limits = limits;
        self.disks.extend(store_dir.map(|d| ("store", d)));
        self
    }

    /// Free bytes on each watched filesystem, and whether it is above
    /// `limits.min_free_bytes` (`None`: it could not be asked).
    pub fn disks(&self) -> Vec<(&'static str, Option<u64>, bool)> {
        self.disks
            .iter()
            .map(|(name, dir)| {
                let free = free_bytes(dir);
                if let Some(f) = free {
                    metrics::disk_free(name, f);
                }
                (
                    *name,
                    free,
                    free.is_none_or(|f| f >= self.limits.min_free_bytes),
                )
            })
            .collect()
    }

    /// Whether a new cold request for `request` may hydrate, from what is in
    /// flight now.
    /// Tells `events` about every hydration that ends.
    pub fn with_events(mut self, events: Arc<crate::events::Events>) -> Self {
        self.events = events;
        self
    }

    /// Whether a new hydration for `request` would start now rather than
    /// pass the blob through (a prewarm waits for room instead).
    pub fn has_room(&self, request: &BlobRequest) -> bool {
        matches!(self.cold_path(request), ColdPath::Hydrate)
    }

    fn cold_path(&self, request: &BlobRequest) -> ColdPath {
        let flights = self.flights.values();
        let registry = request.upstream.registry();
        let now = InFlight {
            hydrations: flights.len(),
            upstream_hydrations: flights.iter().filter(|h| h.registry == registry).count(),
            spool_bytes: flights.iter().map(|h| h.progress.borrow().written).sum(),
            free_bytes: self.disks().iter().filter_map(|(_, free, _)| *free).min(),
        };
        self.limits.cold_path(now)
    }

    /// Streams the blob from its source to this one client, verified and
    /// not stored (`reason`: the bound that was reached).
    async fn pass_through(
        &self,
        request: &BlobRequest,
        reason: &'static str,
    ) -> Result<BlobSource, Error> {
        self.gate(request, Held::Absent).await?;
        let source = self.source(request).await?;
        metrics::passthrough(reason);
        tracing::info!(digest = %request.digest, reason, "cold blob passed through, not stored");
        let from = source.from;
        let body = crate::passthrough::verified(source.body, request.digest.clone(), source.total);
        let body = body.inspect_err(move |e| {
            if let PassError::Mismatch { .. } = e
                && let source::Via::Upstream(registry) = &from
            {
                metrics::integrity_failure(registry);
            }
        });
        Ok(BlobSource::PassThrough {
            total: source.total,
            body: Box::pin(body),
        })
    }

    /// Remembers that this process committed `digest` (as `meta`).
    fn committed_now(&self, digest: &Digest, meta: ObjectMeta) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.put(digest.to_string(), (meta, std::time::Instant::now()), 96);
    }

    /// Forgets that this process committed `digest` (the object left the
    /// store: the next request fetches it again).
    pub fn forget_committed(&self, digest: &Digest) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.remove(&digest.to_string());
    }

    /// What this process committed for `digest` within [`RECENT_FOR`].
    fn recently_committed(&self, digest: &Digest) -> Option<ObjectMeta> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .get(&digest.to_string())
            .filter(|(_, at)| at.elapsed() < RECENT_FOR)
            .map(|(meta, _)| meta.clone())
    }

    /// The flight for `digest`, if one is running.
    pub fn in_flight(&self, digest: &Digest) -> Option<Arc<Hydration>> {
        self.flights.get(digest)
    }

    /// The blobs being hydrated now (the retention pass leaves them alone).
    pub fn in_flight_digests(&self) -> std::collections::BTreeSet<Digest> {
        self.flights
            .values()
            .iter()
            .map(|h| h.digest().clone())
            .collect()
    }

    /// How many hydrations are in flight.
    pub fn in_flight_count(&self) -> usize {
        self.flights.len()
    }

    /// The one store lookup of a blob request. A store that cannot be read
    /// counts as a miss: the blob is still served from the upstream (the
    /// commit will fail and be logged, the client is served either way).
    pub async fn lookup(&self, digest: &Digest) -> Option<ObjectMeta> {
        match self.store.head(&store::blob_key(digest)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "store lookup failed; fetching from the upstream");
                None
            }
        }
    }

    /// Serves the blob from the store when the request's [`Blobs::lookup`]
    /// found it (`stored`), else joins (or starts) its hydration and waits
    /// until the upstream has answered. What is held for another repository
    /// is served only once `request.canonical` is linked to it or its
    /// upstream confirms it (`wharf_core::access`).
    pub async fn open(
        self: &Arc<Self>,
        request: BlobRequest,
        stored: Option<ObjectMeta>,
    ) -> Result<BlobSource, Error> {
        if let Some(meta) = stored {
            self.gate(&request, Held::Stored).await?;
            return Ok(BlobSource::Store(meta));
        }
        // A request that would start a hydration past a bound passes the
        // blob through instead (joining a running flight costs nothing).
        if self.flights.get(&request.digest).is_none()
            && let ColdPath::PassThrough(reason) = self.cold_path(&request)
        {
            return self.pass_through(&request, reason).await;
        }
        let mut sender = None;
        let (hydration, leader) = self.flights.join_or_start(&request.digest, || {
            let (tx, rx) = watch::channel(Progress {
                written: 0,
                total: None,
                phase: Phase::Connecting,
            });
            sender = Some(tx);
            let spool =
                self.spool
                    .dir
                    .join(format!("{}-{}", request.digest.hex(), uuid::Uuid::new_v4()));
            Arc::new(Hydration {
                store: self.store.clone(),
                registry: request.upstream.registry().to_owned(),
                digest: request.digest.clone(),
                canonical: request.canonical.clone(),
                spool,
                progress: rx,
                window: Default::default(),
            })
        });
        if let (true, Some(tx)) = (leader, sender) {
            if self.closing.load(Ordering::SeqCst) {
                let err = Arc::new(Error::ShuttingDown);
                tx.send_modify(|p| p.phase = Phase::Failed(err));
                self.flights.finish(&request.digest, &hydration);
            } else {
                let blobs = self.clone();
                let flight = hydration.clone();
                self.tracker
                    .spawn(async move { blobs.lead(request, flight, tx).await });
            }
        } else {
            let held = if hydration.canonical == request.canonical {
                Held::InFlightSameName
            } else {
                Held::InFlightOtherName
            };
            self.gate(&request, held).await?;
            metrics::coalesced("blob");
        }
        let mut rx = hydration.progress.clone();
        let progress = match rx.wait_for(|p| !matches!(p.phase, Phase::Connecting)).await {
            Ok(p) => p.clone(),
            Err(_) => return Err(Error::ShuttingDown),
        };
        match &progress.phase {
            Phase::Failed(err) => Err(Error::Joined(err.clone())),
            Phase::InStore(meta) => Ok(BlobSource::Store(meta.clone())),
            _ => Ok(BlobSource::Hydrating {
                hydration,
                progress,
                leader,
            }),
        }
    }

    /// Serves what is `held` for `request` only as `wharf_core::access`
    /// allows: linked, or confirmed by the repository's upstream now.
    async fn gate(&self, request: &BlobRequest, held: Held) -> Result<(), Error> {
        match digest_access(request.linked, held) {
            DigestAccess::Serve | DigestAccess::Fetch => Ok(()),
            DigestAccess::Confirm => {
                self.links
                    .confirm(
                        links::Kind::Blob,
                        links::Through {
                            upstream: &request.upstream,
                            upstream_repo: &request.upstream_repo,
                            repo: &request.canonical,
                            replicate: request.replicate,
                        },
                        &request.digest,
                        || Error::BlobUnknown {
                            name: request.canonical.to_string(),
                            digest: request.digest.clone(),
                            registry: request.upstream.registry().to_owned(),
                        },
                    )
                    .await
            }
        }
    }

    /// Stops taking new hydrations, waits up to `grace` for running ones,
    /// then aborts what is left (their uploads are aborted, nothing partial
    /// becomes visible).
    pub async fn shutdown(&self, grace: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.flights.len(),
                "shutdown grace expired; aborting hydrations"
            );
            self.cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await;
        }
    }
}

/// This process's spool directory: `<spool_dir>/proc-<uuid>/`, with a
/// `.lock` file this process holds locked (`flock`) while it runs.
///
/// Several processes may share one spool directory (replicas on one host,
/// an operator's own files): at start a process removes only the
/// directories of processes that are gone — whose lock it can take — and
/// never a file it does not own.
struct Spool {
    dir: PathBuf,
    /// Holds the lock for the life of the process.
    _lock: std::fs::File,
}

impl Spool {
    fn claim(spool_dir: &std::path::Path) -> io::Result<Spool> {
        std::fs::create_dir_all(spool_dir)?;
        for entry in std::fs::read_dir(spool_dir)?.flatten() {
            let path = entry.path();
            let ours = entry.file_name().to_string_lossy().starts_with("proc-");
            if !ours || !path.is_dir() {
                continue;
            }
            // Its owner is gone when its lock can be taken.
            let Ok(lock) = std::fs::File::open(path.join(".lock")) else {
                continue;
            };
            if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_ok()
            {
                // Spool files of a dead process are garbage: their flights
                // died with it (and their uploads are aborted at start).
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        let dir = spool_dir.join(format!("proc-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir)?;
        let lock = std::fs::File::create(dir.join(".lock"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        Ok(Spool { dir, _lock: lock })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_removes_only_the_spool_of_processes_that_are_gone() {
        let root = tempfile::tempdir().unwrap();
        let live = Spool::claim(root.path()).unwrap();
        std::fs::write(live.dir.join("a-spool-file"), b"x").unwrap();
        // A dead process's directory: its lock is free.
        let dead = root.path().join("proc-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(".lock"), b"").unwrap();
        std::fs::write(dead.join("old-spool-file"), b"x").unwrap();
        // Someone else's files.
        std::fs::write(root.path().join("operator-notes"), b"x").unwrap();
        std::fs::create_dir(root.path().join("other-tool")).unwrap();

        let second = Spool::claim(root.path()).unwrap();
        assert!(!dead.exists(), "a dead process's spool stays");
        assert!(
            live.dir.join("a-spool-file").exists(),
            "a live process's spool was removed"
        );
        assert!(root.path().join("operator-notes").exists());
        assert!(root.path().join("other-tool").exists());
        assert_ne!(second.dir, live.dir);
        // A process that stops cleanly removes its own.
        let dir = live.dir.clone();
        drop(live);
        assert!(!dir.exists());
    }
}
