//! The object store: every byte the origin keeps lives in one S3 bucket.
//!
//! Every deployment speaks S3, over `aws-sdk-s3`: the default `--data DIR`
//! starts an S3 server inside this process ([`embedded`]) and points the
//! same client at it, so the local demo, the tests and production (Garage,
//! AWS S3, R2) share the write path and presigned URLs work everywhere.
//! When this process embeds the store, reads and blob commits go to its
//! files directly instead (`local.rs`): same objects, no loopback HTTP or
//! second copy.
//!
//! The key layout is the core's (`wharf_core::keys`), shared with the edge.
//!
//! Visibility: a blob is written through a sink ([`FileSink`],
//! [`PartSink`]) that is write / commit / abort and invisible until commit
//! — one `PutObject` (small), a multipart upload completed only after the
//! digest matched, or the embedded store's atomic publish of the verified
//! spool file. An aborted copy aborts its multipart upload, and uploads
//! orphaned by a crash are aborted at start.
//!
//! # Layout
//!
//! - `mod.rs`: [`Store`], the one type callers use; the only place that
//!   chooses between the two backends.
//! - `s3.rs`: the S3 API ([`MultipartUpload`], [`S3Settings`]).
//! - `local.rs`: the embedded store's files, read and published directly.
//! - `sink.rs`: the blob sinks.
//! - `error.rs`: [`Error`] and its [`ErrorKind`].
//! - `embedded.rs`: starting the embedded S3 server.
//!
//! Key decision: the two backends sit behind one struct with an
//! `Option<LocalBucket>` and one `match` per operation that differs (`head`,
//! `get_stream`, [`Store::file_sink`]), all here, rather than behind a
//! trait. Only those three differ — every write, presign and listing is S3
//! for both — so a trait would need both implementations of a dozen
//! methods of which nine are the same code, and `async fn` in a trait
//! object needs boxed futures on the hot read path.

pub mod embedded;
mod error;
mod local;
mod s3;
mod sink;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use wharf_embedded_s3::LocalBucket;

pub use error::{Error, ErrorKind};
pub use s3::{BodyStream, Listed, MultipartUpload, ObjectMeta, S3Settings};
pub use sink::{FileSink, PartSink};
pub use wharf_core::keys::{blob_key, blob_link_key, manifest_key, manifest_link_key, tag_key};

/// The bucket every object of this region lives in.
#[derive(Clone)]
pub struct Store {
    s3: s3::S3,
    /// The embedded store's files, when this process embeds it: reads and
    /// blob commits go to disk directly.
    local: Option<LocalBucket>,
}

impl Store {
    /// A store client for `settings` (no request is made).
    pub fn new(settings: &S3Settings) -> Self {
        Self {
            s3: s3::S3::new(settings),
            local: None,
        }
    }

    /// Reads and commits blobs through `local` (the same bucket, on this
    /// machine's disk) instead of the S3 API.
    pub fn with_local(mut self, local: LocalBucket) -> Self {
        self.local = Some(local);
        self
    }

    /// Metadata of `key`, or `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, Error> {
        match &self.local {
            Some(local) => local::head(local, key).await,
            None => self.s3.head(key).await,
        }
    }

    /// Streams `key` (optionally a byte range, inclusive end), or `None` if
    /// it does not exist: from the embedded store's file directly when this
    /// process embeds it, else from the S3 response.
    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<(ObjectMeta, BodyStream)>, Error> {
        match &self.local {
            Some(local) => local::get_stream(local, key, range).await,
            None => self.s3.get_stream(key, range).await,
        }
    }

    /// A sink for the blob `key` that is being spooled to `path`.
    pub fn file_sink(&self, key: &str, path: &Path, content_type: &str) -> FileSink {
        FileSink::new(&self.s3, self.local.as_ref(), key, path, content_type)
    }

    /// A sink for an object written from memory, one part at a time.
    pub fn part_sink(&self, key: &str, content_type: &str) -> PartSink {
        PartSink::new(&self.s3, key, content_type)
    }

    /// Reads a small object (manifest, record) whole.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<(ObjectMeta, Bytes)>, Error> {
        use futures::TryStreamExt;
        let Some((meta, body)) = self.get_stream(key, None).await? else {
            return Ok(None);
        };
        let chunks: Vec<Bytes> = body
            .try_collect()
            .await
            .map_err(|e| Error::new("GetObject", key, e))?;
        Ok(Some((meta, chunks.concat().into())))
    }

    /// Writes a small object whole.
    pub async fn put_bytes(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), Error> {
        self.s3.put_bytes(key, body, content_type).await
    }

    /// Deletes `key` (absent keys are not an error).
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.s3.delete(key).await
    }

    /// Every object under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, Error> {
        self.s3.list(prefix).await
    }

    /// Checks that the bucket is reachable (for `/readyz`).
    pub async fn check(&self) -> Result<(), Error> {
        self.s3.check().await
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        self.s3.bucket()
    }

    /// Aborts the multipart uploads under `prefix` started more than
    /// `older_than` ago (left behind by a crash: a live process completes
    /// or aborts its own within its blob's download). Returns how many.
    pub async fn abort_orphan_uploads(
        &self,
        prefix: &str,
        older_than: Duration,
    ) -> Result<usize, Error> {
        self.s3.abort_orphan_uploads(prefix, older_than).await
    }

    /// A presigned GET URL for `key`, valid for `ttl`.
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, Error> {
        self.s3.presign_get(key, ttl).await
    }
}
