//! Same-process access to a bucket's objects, for the process that embeds
//! the server (Wharf's origin with `--data`).
//!
//! Going through the S3 API over loopback costs a SigV4 signature, an HTTP
//! exchange and two copies per chunk on both sides; the embedding process
//! can instead read an object file directly, and publish a file it already
//! has on the same filesystem (a verified spool file) by hard-linking it
//! into staging, appending the trailer and renaming it into place — the
//! bytes are never copied. Both go through the same object format and
//! atomic publish as the S3 API ([`crate::store`]), so S3 clients (presigned
//! URLs, other origins) see exactly the same objects.

use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::layout::Layout;
use crate::store::{Headers, ObjectMeta, Place, TempFile, now_ms, open_object, publish};
use crate::stream::FileBody;

/// One bucket of an embedded store, on disk.
#[derive(Debug, Clone)]
pub struct LocalBucket {
    layout: Layout,
    bucket: String,
}

/// What [`LocalBucket::open`] found: an open object file (a consistent
/// snapshot even if the key is replaced meanwhile).
#[derive(Debug)]
pub struct LocalObject {
    file: fs::File,
    /// The object file (data first, then the trailer).
    pub path: PathBuf,
    /// Data length.
    pub size: u64,
    /// The stored `Content-Type`.
    pub content_type: Option<String>,
}

impl LocalObject {
    /// Streams `len` data bytes from `start` (the caller checked the range):
    /// one reader thread, 1 MiB reads into unzeroed buffers, a few chunks
    /// in flight — the embedded S3 server's own GET path.
    pub fn into_stream(
        self,
        start: u64,
        len: u64,
    ) -> impl futures::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static {
        use futures::StreamExt as _;
        FileBody::spawn(self.file, start, len).map(|r| r.map_err(io::Error::other))
    }
}

impl LocalBucket {
    /// `bucket` of the store rooted at `root` (the `EmbeddedConfig::root`).
    pub fn new(root: PathBuf, bucket: &str) -> Self {
        Self {
            layout: Layout::new(root),
            bucket: bucket.to_owned(),
        }
    }

    /// The object `key`, if it exists (blocking).
    pub fn open(&self, key: &str) -> io::Result<Option<LocalObject>> {
        let path = self.layout.object_path(&self.bucket, key).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("key {key:?}: {e:?}"))
        })?;
        Ok(open_object(&path)?.map(|(file, meta)| LocalObject {
            file,
            path,
            size: meta.size,
            content_type: meta.headers.content_type,
        }))
    }

    /// Publishes the first `len` bytes of `data` (exactly its length) as
    /// `key`, replacing any object there (blocking). `data` is hard-linked
    /// into staging when it is on the same filesystem (no copy; its contents
    /// must not change afterwards), else copied. Readers of `data` are not
    /// disturbed: the trailer is appended after byte `len`.
    pub fn publish_file(
        &self,
        key: &str,
        data: &Path,
        len: u64,
        content_type: &str,
        etag: &str,
    ) -> io::Result<()> {
        let dest = self.layout.object_path(&self.bucket, key).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("key {key:?}: {e:?}"))
        })?;
        fs::create_dir_all(self.layout.tmp_dir())?;
        let tmp = TempFile::new(self.layout.tmp_path());
        let mut file = match fs::hard_link(data, tmp.path()) {
            Ok(()) => OpenOptions::new().write(true).open(tmp.path())?,
            Err(_) => {
                // Another filesystem: copy (copy_file_range on Linux).
                let mut out = tmp.create()?;
                let mut src = fs::File::open(data)?;
                io::copy(&mut io::Read::take(&mut src, len), &mut out)?;
                out
            }
        };
        let actual = file.metadata()?.len();
        if actual != len {
            return Err(io::Error::other(format!(
                "{} holds {actual} bytes, expected {len}",
                data.display()
            )));
        }
        file.seek(SeekFrom::End(0))?;
        let meta = ObjectMeta {
            etag: etag.to_owned(),
            size: len,
            last_modified_ms: now_ms(),
            parts_count: None,
            headers: Headers {
                content_type: Some(content_type.to_owned()),
                ..Headers::default()
            },
        };
        publish(tmp, file, &meta, &dest, Place::Replace)
    }
}
