//! An S3-compatible server over a local directory, started inside the origin
//! process (`wharf-origin --data DIR`) so that local runs and production use
//! the same code path: the origin only ever talks `aws-sdk-s3`, and presigned
//! URLs for this server work from any HTTP client.
//!
//! # What it owns
//!
//! * [`EmbeddedS3`] — a running server on a loopback port: `start`,
//!   `endpoint`, `shutdown`. One server per data directory (enforced with a
//!   lock file).
//! * `backend` — `impl s3s::S3` over the filesystem: buckets, objects
//!   (PUT/GET with ranges/HEAD/DELETE/DeleteObjects/Copy), ListObjects(V2),
//!   and multipart uploads (create/upload/complete/abort/list uploads/list
//!   parts). s3s does HTTP, XML, SigV4 (headers, presigned URLs, aws-chunked
//!   bodies) and error rendering.
//! * `layout` — directory layout and key encoding; `store` — the one-file
//!   object format and atomic publish; `list` — ordered listing;
//!   `stream` — body ↔ file streaming.
//!
//! # Key decisions
//!
//! * **Two keys: read/write and read-only.** The origin writes with the
//!   first; the edge presigns with the second, which may only `GetObject`
//!   and `HeadObject` (everything else answers `AccessDenied`), so a
//!   presigning key that leaks cannot write, delete or list the store.
//! * **Header-read and idle timeouts** ([`EmbeddedConfig::header_read_timeout`]):
//!   presigned URLs point the internet at this server, so a client that opens
//!   connections and sends nothing (or half a request line) is cut off. It is
//!   one timer: hyper starts it whenever the connection waits for a request
//!   head, which covers an idle keep-alive connection too. HTTP/1 only: no
//!   S3 client needs h2c, and h2 would need timers of its own.
//! * **Own backend, not `s3s-fs`.** s3s-fs streams files in 4 KiB reads
//!   (~160 MB/s), writes objects in place (a crash or a concurrent PUT leaves
//!   a torn object visible) and keeps metadata in a separate file. Here reads
//!   are 1 MiB, uploads are coalesced into 1 MiB writes on a dedicated
//!   thread with hashing on another, and every object is published by
//!   `rename`.
//! * **Metadata lives in the object file** (a JSON trailer), so one atomic
//!   rename publishes bytes and metadata together; see `store`.
//! * **Crash consistency:** stage in `root/.wharf-tmp`, fsync, rename, fsync
//!   the directory. Staging leftovers are deleted at start.
//! * **ETag is not MD5**: `"crc64nvme-<16 hex>"` for single PUTs and
//!   `"crc64nvme-<16 hex>-N"` for N-part uploads (CRC over the part ETags);
//!   CopyObject keeps the source ETag. MD5 runs at ~0.5 GB/s per core and
//!   would cap PUT throughput; CRC-64/NVME (SIMD) is an order of magnitude
//!   faster and still identifies content. The `-` makes tools that equate a
//!   32-hex ETag with MD5 treat it as opaque. `Content-MD5`, when sent, is
//!   still verified (then MD5 is computed for that request).
//! * **Writeback overlaps the upload**: every 64 MiB a helper thread
//!   `fdatasync`s the staging file, so the final sync is short.
//!
//! # Client notes
//!
//! * Path-style addressing (`force_path_style(true)`); requests signed for
//!   any region are accepted.
//! * Default `aws-sdk-s3` checksum settings work (s3s decodes `aws-chunked`
//!   bodies and verifies their chunk signatures), but over plain HTTP the SDK
//!   then SHA-256-signs every chunk on both sides; prefer
//!   `request_checksum_calculation(WhenRequired)` (unsigned payload), which
//!   was ~1.5x faster for large PUTs here. `x-amz-checksum-*` values are
//!   accepted but neither verified nor stored; `Content-MD5` is verified.
//! * Multipart: parts 1..=10000, every part but the last ≥ 5 MiB
//!   (`EntityTooSmall`), ETags checked at completion (`InvalidPart`).
//! * `If-None-Match: *` on PUT is an atomic create (`412` if the key exists);
//!   `If-Match` on PUT is not supported. GET/HEAD honour `If-Match`,
//!   `If-None-Match`, `If-(Un)Modified-Since`.
//! * Keys: ≤ 1024 bytes; each `/`-separated segment must fit 255 bytes after
//!   encoding (see `layout`), else `KeyTooLongError`.
//! * Not implemented: versioning, ACLs/policies, tagging, SSE, UploadPartCopy,
//!   `encoding-type=url` in listings (keys are returned raw), delimiters in
//!   ListMultipartUploads.

mod backend;
mod layout;
mod list;
mod local;
mod store;
mod stream;

pub use local::{LocalBucket, LocalObject};

use std::fs::{self, File, TryLockError};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3Result, s3_error};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::backend::FsBackend;
use crate::layout::{LOCK_FILE, Layout, valid_bucket_name};

/// How long [`EmbeddedS3::shutdown`] lets in-flight requests run before
/// cutting their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How to start an [`EmbeddedS3`].
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Data directory; created if missing.
    pub root: PathBuf,
    /// Address to bind; `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// The one access key accepted (SigV4).
    pub access_key: String,
    /// Its secret.
    pub secret_key: String,
    /// Region reported by HeadBucket/GetBucketLocation. Requests signed for
    /// any region are accepted.
    pub region: String,
    /// Buckets created at start if missing.
    pub buckets: Vec<String>,
    /// A second key that may only read objects (`GetObject`, `HeadObject`):
    /// the edge presigns with it.
    pub read_only: Option<KeyPair>,
    /// How long a connection may take to send a request's head, and how long
    /// it may sit idle between requests ([`DEFAULT_HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
}

/// An access key and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The access key id.
    pub access_key: String,
    /// The secret key.
    pub secret_key: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Default of [`EmbeddedConfig::header_read_timeout`]: long enough for a
/// slow client on a bad link, short enough that idle sockets do not pile up.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The operations the read-only key may perform.
const READ_ONLY_OPS: &[&str] = &["GetObject", "HeadObject"];

/// Signed requests only; the read-only key only reads objects.
struct KeyAccess {
    read_only_key: Option<String>,
}

#[async_trait::async_trait]
impl S3Access for KeyAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        if self.read_only_key.as_deref() == Some(creds.access_key.as_str())
            && !READ_ONLY_OPS.contains(&cx.s3_op().name())
        {
            return Err(s3_error!(
                AccessDenied,
                "This key is read-only: it may only GET and HEAD objects"
            ));
        }
        Ok(())
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A filesystem or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another server (in this or another process) uses the data directory.
    #[error("data directory {0} is in use by another embedded S3 server")]
    Locked(PathBuf),
    /// A configured bucket name is not a valid S3 bucket name.
    #[error("invalid bucket name {0:?} (3-63 chars of a-z, 0-9, '-', '.')")]
    InvalidBucket(String),
    /// Empty credentials.
    #[error("access key and secret key must not be empty")]
    MissingCredentials,
    /// The read-only key is the read/write key.
    #[error("the read-only access key must differ from the read/write one")]
    SameKeys,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let what = what.into();
    move |source| EmbeddedError::Io { what, source }
}

/// A running embedded S3 server. Dropping it stops accepting connections;
/// [`EmbeddedS3::shutdown`] also waits for in-flight requests.
#[derive(Debug)]
pub struct EmbeddedS3 {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl EmbeddedS3 {
    /// Prepares `cfg.root`, binds `cfg.listen`, and spawns the accept loop on
    /// the current tokio runtime.
    pub async fn start(cfg: EmbeddedConfig) -> Result<EmbeddedS3, EmbeddedError> {
        if cfg.access_key.is_empty()
            || cfg.secret_key.is_empty()
            || cfg
                .read_only
                .as_ref()
                .is_some_and(|k| k.access_key.is_empty() || k.secret_key.is_empty())
        {
            return Err(EmbeddedError::MissingCredentials);
        }
        if cfg
            .read_only
            .as_ref()
            .is_some_and(|k| k.access_key == cfg.access_key)
        {
            return Err(EmbeddedError::SameKeys);
        }
        if let Some(bad) = cfg.buckets.iter().find(|b| !valid_bucket_name(b)) {
            return Err(EmbeddedError::InvalidBucket(bad.clone()));
        }
        let layout = Layout::new(cfg.root.clone());
        let (lock, layout) = tokio::task::spawn_blocking(move || prepare(layout, &cfg.buckets))
            .await
            .map_err(|e| io_err("preparing the data directory")(io::Error::other(e)))??;

        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(io_err(format!("binding {}", cfg.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("reading the bound address"))?;

        let mut builder = S3ServiceBuilder::new(FsBackend::new(layout.clone(), cfg.region));
        let mut auth = SimpleAuth::from_single(cfg.access_key, cfg.secret_key.as_str());
        if let Some(ro) = &cfg.read_only {
            auth.register(ro.access_key.clone(), ro.secret_key.as_str().into());
        }
        builder.set_auth(auth);
        builder.set_access(KeyAccess {
            read_only_key: cfg.read_only.map(|k| k.access_key),
        });
        let service = builder.build();

        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            service,
            cancel.clone(),
            lock,
            cfg.header_read_timeout,
        ));
        tracing::info!(endpoint = %format!("http://{addr}"), root = %layout.root().display(), "embedded S3 started");
        Ok(EmbeddedS3 {
            addr,
            cancel,
            task: Some(task),
        })
    }

    /// `http://IP:PORT`, for `aws_sdk_s3::config::Builder::endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish (at most
    /// [`SHUTDOWN_GRACE`]), then returns. The data directory lock is released.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Locks the root, clears staging leftovers, creates configured buckets.
fn prepare(layout: Layout, buckets: &[String]) -> Result<(File, Layout), EmbeddedError> {
    let root = layout.root().to_owned();
    fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
    let lock_path = root.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("opening {}", lock_path.display())))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(EmbeddedError::Locked(root)),
        Err(TryLockError::Error(e)) => return Err(io_err("locking the data directory")(e)),
    }
    let tmp = layout.tmp_dir();
    match fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("clearing {}", tmp.display()))(e)),
    }
    fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    for bucket in buckets {
        FsBackend::create_bucket_dirs(&layout, bucket)
            .map_err(io_err(format!("creating bucket {bucket}")))?;
    }
    Ok((lock, layout))
}

async fn serve(
    listener: TcpListener,
    service: S3Service,
    cancel: CancellationToken,
    lock: File,
    header_read_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
                    let conn = graceful.watch(conn.into_owned());
                    conns.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "embedded S3 connection ended");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "embedded S3 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("embedded S3: requests still running after the grace period, cutting them");
    }
    conns.shutdown().await;
    drop(lock);
    tracing::info!("embedded S3 stopped");
}
