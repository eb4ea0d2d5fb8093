//! Serve now, hydrate for later: blobs stream from the upstream to clients
//! while the same bytes are hashed and written to the object store.
//!
//! # How a miss flows
//!
//! The first request for a blob that the store lacks starts one detached
//! leader task ([`Blobs::open`]); every concurrent request joins it through
//! [`Flights`]. The leader reads the upstream body once and, in one loop,
//! hashes it and appends it to a spool file; each append bumps a
//! `watch` channel. Clients (the first one included) read the spool file as
//! it grows, so any number of them cost one upstream GET, and a client that
//! disconnects does not stop the download. A separate uploader task follows
//! the same channel and ships full parts of the spool file to a multipart
//! upload; the object is completed (made visible) only after the whole body
//! matched its digest and length. A mismatch or truncation marks the flight
//! failed: the uploader aborts the multipart upload, readers end their
//! responses with an error (the connection is reset, never completed with
//! wrong bytes), and `wharf_integrity_failures_total` is bumped.
//!
//! Readers hold back the final byte of a blob until it is verified, so a
//! client can never receive a complete body that later turns out to be
//! wrong.
//!
//! The source is the nearest peer region's store when one has the blob
//! ([`crate::geo`]), else the upstream: both go through the same loop, so a
//! cross-region copy is verified exactly like an upstream fetch. A committed
//! blob of a `replicate = true` rule is queued for the peer regions
//! ([`crate::replicate`]).
//!
//! Memory is flat in blob size: the leader batches at most [`BATCH`] bytes,
//! readers read [`READ_CHUNK`] at a time, and parts are streamed from the
//! spool file to the store.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wharf_core::{Digest, RepositoryName};

use crate::coalesce::Flights;
use crate::error::Error;
use crate::geo::Geo;
use crate::metrics;
use crate::replicate::Replicator;
use crate::store::{self, MultipartUpload, ObjectMeta, Store, StoreError};
use crate::upstream::{Upstream, UpstreamError};

/// The leader writes the spool file in batches of this many bytes.
const BATCH: usize = 512 * 1024;
/// A hydration's source body: the upstream's or a peer store's.
type BodyStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;
/// The uploader task of one hydration (see [`upload`]).
type Uploader = tokio::task::JoinHandle<Result<(), StoreError>>;
/// Readers read the spool file this many bytes at a time.
const READ_CHUNK: usize = 256 * 1024;
const OCTET_STREAM: &str = "application/octet-stream";

/// Where a hydration stands.
#[derive(Clone, Debug)]
pub enum Phase {
    /// Asking the upstream.
    Connecting,
    /// Bytes are arriving in the spool file.
    Streaming,
    /// All bytes arrived and matched the digest.
    Verified,
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
    digest: Digest,
    spool: PathBuf,
    progress: watch::Receiver<Progress>,
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
}

impl Drop for Hydration {
    // The last holder (leader or reader) removes the spool file.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.spool);
    }
}

/// Where a blob request will be answered from.
pub enum BlobSource {
    /// The store has it.
    Store(ObjectMeta),
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
}

/// All blob hydrations of this process.
pub struct Blobs {
    store: Store,
    spool_dir: PathBuf,
    flights: Flights<Digest, Hydration>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    closing: AtomicBool,
    links: std::sync::Mutex<std::collections::HashSet<String>>,
    geo: Option<Arc<Geo>>,
    replicator: Option<Replicator>,
}

impl Blobs {
    /// Blob hydrations writing to `store`, spooling under `spool_dir`.
    pub fn new(
        store: Store,
        spool_dir: PathBuf,
        geo: Option<Arc<Geo>>,
        replicator: Option<Replicator>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&spool_dir)?;
        // Spool files of a previous process are garbage: their flights died
        // with it (and their uploads are aborted at start).
        if let Ok(entries) = std::fs::read_dir(&spool_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            store,
            spool_dir,
            flights: Flights::default(),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            closing: AtomicBool::new(false),
            links: std::sync::Mutex::new(std::collections::HashSet::new()),
            geo,
            replicator,
        })
    }

    /// The flight for `digest`, if one is running.
    pub fn in_flight(&self, digest: &Digest) -> Option<Arc<Hydration>> {
        self.flights.get(digest)
    }

    /// Number of hydrations in flight.
    pub fn in_flight_count(&self) -> usize {
        self.flights.len()
    }

    /// Finds the blob in the store or joins (or starts) its hydration, and
    /// waits until the upstream has answered.
    pub async fn open(self: &Arc<Self>, request: BlobRequest) -> Result<BlobSource, Error> {
        let key = store::blob_key(&request.digest);
        match self.store.head(&key).await {
            Ok(Some(meta)) => {
                self.link(&request.canonical, &request.digest);
                return Ok(BlobSource::Store(meta));
            }
            Ok(None) => {}
            // Store down: still serve from the upstream; the commit will fail
            // and be logged, the client is served either way.
            Err(e) => tracing::warn!(error = %e, "store lookup failed; fetching from the upstream"),
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
                self.spool_dir
                    .join(format!("{}-{}", request.digest.hex(), uuid::Uuid::new_v4()));
            Arc::new(Hydration {
                digest: request.digest.clone(),
                spool,
                progress: rx,
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

    /// Records (once per process) that `repo` refers to `digest`.
    fn link(&self, repo: &RepositoryName, digest: &Digest) {
        let key = store::blob_link_key(repo, digest);
        {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            if links.len() > 100_000 {
                links.clear();
            }
            if !links.insert(key.clone()) {
                return;
            }
        }
        let store = self.store.clone();
        self.tracker.spawn(async move {
            if let Err(e) = store.put_bytes(&key, Bytes::new(), OCTET_STREAM).await {
                tracing::warn!(error = %e, "repository link not recorded");
            }
        });
    }

    /// The leader: fetch once, spool, verify, let the uploader commit.
    async fn lead(
        self: Arc<Self>,
        request: BlobRequest,
        hydration: Arc<Hydration>,
        tx: watch::Sender<Progress>,
    ) {
        let registry = request.upstream.registry().to_owned();
        let started = Instant::now();
        metrics::hydrations_in_flight(1.0);
        let outcome = self.fetch_and_spool(&request, &hydration, &tx).await;
        let committed = match outcome {
            Ok(Some(uploader)) => match uploader.await {
                Ok(Ok(())) => {
                    self.link(&request.canonical, &request.digest);
                    if request.replicate
                        && let Some(r) = &self.replicator
                    {
                        r.enqueue(store::blob_key(&request.digest), request.digest.clone());
                    }
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
            },
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
        self.flights.finish(&request.digest, &hydration);
    }

    /// Returns the uploader to wait for on success (`None` when the store
    /// already had the blob), or the error and the uploader to wait for.
    async fn fetch_and_spool(
        &self,
        request: &BlobRequest,
        hydration: &Hydration,
        tx: &watch::Sender<Progress>,
    ) -> Result<Option<Uploader>, (Error, Option<Uploader>)> {
        let digest = &request.digest;
        let registry = request.upstream.registry().to_owned();
        let key = store::blob_key(digest);
        // Re-check: a flight for this digest may have committed between the
        // caller's lookup and this flight's start.
        if let Ok(Some(meta)) = self.store.head(&key).await {
            tx.send_modify(|p| p.phase = Phase::InStore(meta));
            return Ok(None);
        }
        let upstream_error = |source: UpstreamError| Error::Upstream {
            registry: registry.clone(),
            source,
        };
        // The nearest peer region that has the blob, else the upstream.
        let peer = match &self.geo {
            Some(geo) => geo.find(&key, Some(digest)).await,
            None => None,
        };
        let (total, mut body, from): (Option<u64>, BodyStream, Option<String>) = match peer {
            Some((peer, meta)) => match peer.store.get(&key, None).await {
                Ok(Some((_, stream))) => {
                    let stream = tokio_util::io::ReaderStream::with_capacity(
                        stream.into_async_read(),
                        BATCH,
                    )
                    .map(|r| r.map_err(|e| e.to_string()));
                    (Some(meta.len), Box::pin(stream), Some(peer.name))
                }
                Ok(None) | Err(_) => {
                    return Err((
                        Error::Store(StoreError {
                            op: "GetObject",
                            key: format!("{} (peer region {})", key, peer.name),
                            message: "the peer's copy vanished between HEAD and GET; retry".into(),
                        }),
                        None,
                    ));
                }
            },
            None => {
                let response = request
                    .upstream
                    .send(
                        Method::GET,
                        &request.upstream_repo,
                        &format!("blobs/{digest}"),
                        HeaderMap::new(),
                    )
                    .await
                    .map_err(|e| (upstream_error(e), None))?;
                if response.status() == reqwest::StatusCode::NOT_FOUND {
                    return Err((
                        Error::BlobUnknown {
                            name: request.canonical.to_string(),
                            digest: digest.clone(),
                            registry,
                        },
                        None,
                    ));
                }
                let total = response.content_length();
                let stream = response
                    .bytes_stream()
                    .map(|r| r.map_err(|e| e.to_string()));
                (total, Box::pin(stream), None)
            }
        };
        let spool_error = |e: io::Error| {
            Error::Store(StoreError {
                op: "Spool",
                key: hydration.spool.display().to_string(),
                message: e.to_string(),
            })
        };
        let mut file = tokio::fs::File::create(&hydration.spool)
            .await
            .map_err(|e| (spool_error(e), None))?;
        tx.send_modify(|p| {
            p.total = total;
            p.phase = Phase::Streaming;
        });
        let uploader = tokio::spawn(upload(
            self.store.clone(),
            key.clone(),
            hydration.spool.clone(),
            tx.subscribe(),
        ));

        let mut verifier = digest.verifier();
        let mut written = 0u64;
        let mut batch = BytesMut::with_capacity(BATCH);
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return Err((Error::ShuttingDown, Some(uploader))),
                next = body.next() => next,
            };
            let chunk = match next {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    let at = written + batch.len() as u64;
                    let err = match &from {
                        None => {
                            upstream_error(UpstreamError::Body(format!("after {at} bytes: {e}")))
                        }
                        Some(peer) => Error::Store(StoreError {
                            op: "GetObject",
                            key: format!("{key} (peer region {peer})"),
                            message: format!("after {at} bytes: {e}"),
                        }),
                    };
                    return Err((err, Some(uploader)));
                }
            };
            if from.is_none() {
                metrics::upstream_bytes(&registry, chunk.len() as u64);
            }
            verifier.update(&chunk);
            batch.extend_from_slice(&chunk);
            if batch.len() >= BATCH {
                written += flush(&mut file, &mut batch)
                    .await
                    .map_err(|e| (spool_error(e), None))?;
                tx.send_modify(|p| p.written = written);
            }
        }
        if !batch.is_empty() {
            written += flush(&mut file, &mut batch)
                .await
                .map_err(|e| (spool_error(e), None))?;
            tx.send_modify(|p| p.written = written);
        }
        let got = verifier.finish();
        let mismatch = match total {
            Some(total) if total != written => Some(format!("{written} of {total} bytes")),
            _ if &got != digest => Some(format!("{got} ({written} bytes)")),
            _ => None,
        };
        if let Some(got) = mismatch {
            if let (Some(peer), Some(geo)) = (&from, &self.geo) {
                metrics::integrity_failure(&format!("peer:{peer}"));
                tracing::error!(digest = %digest, %got, peer, "peer region's copy failed verification; not stored, the next attempt goes upstream");
                geo.distrust(digest);
                return Err((
                    Error::DigestMismatch {
                        registry: format!("peer region {peer}"),
                        want: digest.clone(),
                        got,
                    },
                    Some(uploader),
                ));
            }
            metrics::integrity_failure(&registry);
            tracing::error!(digest = %digest, %got, registry, "upstream blob failed verification; not stored");
            let err = Error::DigestMismatch {
                registry,
                want: digest.clone(),
                got,
            };
            return Err((err, Some(uploader)));
        }
        if let Some(peer) = &from {
            tracing::info!(digest = %digest, peer, bytes = written, "blob copied from a peer region");
        }
        tx.send_modify(|p| p.phase = Phase::Verified);
        Ok(Some(uploader))
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

async fn flush(file: &mut tokio::fs::File, batch: &mut BytesMut) -> io::Result<u64> {
    file.write_all(batch).await?;
    // tokio's File completes writes in the background; flush so the bytes
    // are in the file before followers are told they are.
    file.flush().await?;
    let n = batch.len() as u64;
    batch.clear();
    Ok(n)
}

/// Follows the leader's progress and uploads full parts; completes the
/// upload once the blob is verified, aborts it if the flight fails.
async fn upload(
    store: Store,
    key: String,
    spool: PathBuf,
    mut rx: watch::Receiver<Progress>,
) -> Result<(), StoreError> {
    if let Some(local) = store.local().cloned() {
        return commit_local(local, key, spool, rx).await;
    }
    let part_size = store.part_size();
    let mut multipart: Option<MultipartUpload> = None;
    let mut uploaded = 0u64;
    let result: Result<(), StoreError> = async {
        loop {
            let progress = rx.borrow_and_update().clone();
            match progress.phase {
                Phase::Failed(_) => {
                    return Err(StoreError {
                        op: "Upload",
                        key: key.clone(),
                        message: "hydration failed".into(),
                    });
                }
                Phase::Verified => {
                    let written = progress.written;
                    match multipart.take() {
                        None => {
                            store
                                .put_file(&key, &spool, 0, written, OCTET_STREAM)
                                .await?
                        }
                        Some(mut upload) => {
                            if written > uploaded {
                                upload
                                    .upload_part_from_file(&spool, uploaded, written - uploaded)
                                    .await?;
                            }
                            upload.complete().await?;
                        }
                    }
                    return Ok(());
                }
                _ => {}
            }
            // A part is shipped only when a full part is spooled and more
            // bytes follow (or may follow): the last part may be short.
            if progress.written - uploaded > part_size {
                if multipart.is_none() {
                    multipart = Some(store.multipart(&key, OCTET_STREAM).await?);
                }
                if let Some(upload) = multipart.as_mut() {
                    upload
                        .upload_part_from_file(&spool, uploaded, part_size)
                        .await?;
                }
                uploaded += part_size;
                continue;
            }
            if rx.changed().await.is_err() {
                return Err(StoreError {
                    op: "Upload",
                    key: key.clone(),
                    message: "hydration stopped".into(),
                });
            }
        }
    }
    .await;
    if result.is_err()
        && let Some(upload) = multipart.take()
    {
        upload.abort().await?;
    }
    // A failed flight is not a store error: the abort above succeeded.
    match result {
        Err(e) if e.op == "Upload" => Ok(()),
        other => other,
    }
}

/// The uploader of an embedded store: nothing to ship while the blob
/// arrives; once it is verified, the spool file itself becomes the object
/// (hard link + trailer + rename: no copy of the bytes).
async fn commit_local(
    local: wharf_embedded_s3::LocalBucket,
    key: String,
    spool: PathBuf,
    mut rx: watch::Receiver<Progress>,
) -> Result<(), StoreError> {
    let written = loop {
        let progress = rx.borrow_and_update().clone();
        match progress.phase {
            // A failed flight is not a store error: nothing was written.
            Phase::Failed(_) => return Ok(()),
            Phase::Verified => break progress.written,
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Ok(());
        }
    };
    // The digest is the content's name: a perfect ETag.
    let etag = key.rsplit('/').next().unwrap_or_default().to_owned();
    let k = key.clone();
    tokio::task::spawn_blocking(move || {
        local.publish_file(&k, &spool, written, OCTET_STREAM, &etag)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    .map_err(|message| StoreError {
        op: "Publish",
        key,
        message,
    })
}

/// The bytes `[start, end)` of a hydrating blob, as they arrive; `end` is
/// the announced length when `None`. Ends with an error if the hydration
/// fails, so the client's connection is reset rather than completed.
pub fn spool_stream(
    hydration: Arc<Hydration>,
    start: u64,
    end: Option<u64>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    struct Reader {
        hydration: Arc<Hydration>,
        rx: watch::Receiver<Progress>,
        file: Option<tokio::fs::File>,
        pos: u64,
        end: Option<u64>,
    }
    let rx = hydration.progress.clone();
    let reader = Reader {
        hydration,
        rx,
        file: None,
        pos: start,
        end,
    };
    futures::stream::unfold(reader, |mut r| async move {
        loop {
            let progress = r.rx.borrow_and_update().clone();
            let verified = match &progress.phase {
                Phase::Failed(err) => {
                    let e = io::Error::other(format!("blob {} failed: {err}", r.hydration.digest));
                    r.end = Some(r.pos); // end the stream after this error
                    return Some((Err(e), r));
                }
                Phase::Verified => true,
                _ => false,
            };
            // Hold back the last byte until the digest is verified.
            let servable = match progress.total {
                _ if verified => progress.written,
                Some(total) if progress.written < total => progress.written,
                _ => progress.written.saturating_sub(1),
            };
            let limit = r.end.map_or(servable, |end| end.min(servable));
            if r.pos < limit {
                let want = (limit - r.pos).min(READ_CHUNK as u64) as usize;
                let read = read_at(&mut r.file, &r.hydration.spool, r.pos, want).await;
                return match read {
                    Ok(bytes) if bytes.is_empty() => {
                        let e = io::Error::other("spool file is shorter than announced");
                        r.end = Some(r.pos);
                        Some((Err(e), r))
                    }
                    Ok(bytes) => {
                        r.pos += bytes.len() as u64;
                        Some((Ok(bytes), r))
                    }
                    Err(e) => {
                        r.end = Some(r.pos);
                        Some((Err(e), r))
                    }
                };
            }
            if r.end.is_some_and(|end| r.pos >= end) || (verified && r.pos >= progress.written) {
                return None;
            }
            if r.rx.changed().await.is_err() {
                r.end = Some(r.pos);
                return Some((
                    Err(io::Error::other(
                        "hydration stopped before the blob was complete",
                    )),
                    r,
                ));
            }
        }
    })
}

async fn read_at(
    file: &mut Option<tokio::fs::File>,
    path: &std::path::Path,
    pos: u64,
    want: usize,
) -> io::Result<Bytes> {
    if file.is_none() {
        let mut f = tokio::fs::File::open(path).await?;
        f.seek(io::SeekFrom::Start(pos)).await?;
        *file = Some(f);
    }
    let Some(f) = file.as_mut() else {
        return Err(io::Error::other("spool file not open"));
    };
    // Exactly `want` bytes at most: the file may already hold bytes past
    // what this reader is allowed to serve.
    let mut buf = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        let n = f.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}
