//! The embedded store read and written on this machine's disk
//! ([`wharf_embedded_s3::LocalBucket`]): the same files and atomic publish
//! as its S3 API, without loopback HTTP or a second copy of the bytes.

use std::path::Path;

use wharf_embedded_s3::{LocalBucket, LocalObject};

use super::error::{Error, ErrorKind};
use super::{BodyStream, ObjectMeta};

/// The object `key`, opened (a consistent snapshot), if it exists.
async fn open(local: &LocalBucket, key: &str) -> Result<Option<LocalObject>, Error> {
    let (local, owned) = (local.clone(), key.to_owned());
    tokio::task::spawn_blocking(move || local.open(&owned))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| Error::new("Open", key, e))
}

/// Metadata of `key`, or `None` if it does not exist.
pub(super) async fn head(local: &LocalBucket, key: &str) -> Result<Option<ObjectMeta>, Error> {
    Ok(open(local, key).await?.map(|o| ObjectMeta {
        len: o.size,
        content_type: o.content_type,
    }))
}

/// Streams `key` (optionally a byte range, inclusive end) from its file.
pub(super) async fn get_stream(
    local: &LocalBucket,
    key: &str,
    range: Option<(u64, u64)>,
) -> Result<Option<(ObjectMeta, BodyStream)>, Error> {
    let Some(o) = open(local, key).await? else {
        return Ok(None);
    };
    let (start, len) = match range {
        Some((start, end)) if start <= end && end < o.size => (start, end - start + 1),
        Some(_) => {
            let kind = ErrorKind::RangeOutside { len: o.size };
            return Err(Error::new("GetObject", key, kind));
        }
        None => (0, o.size),
    };
    let meta = ObjectMeta {
        len,
        content_type: o.content_type.clone(),
    };
    Ok(Some((meta, Box::pin(o.into_stream(start, len)))))
}

/// Makes the first `len` bytes of `path` (exactly its length) the object
/// `key`: hard link + trailer + rename, no copy of the bytes. The digest is
/// the content's name, so the key's last segment is a perfect ETag.
pub(super) async fn publish(
    local: LocalBucket,
    key: &str,
    path: &Path,
    len: u64,
    content_type: &str,
) -> Result<(), Error> {
    let etag = key.rsplit('/').next().unwrap_or_default().to_owned();
    let (k, path, ct) = (key.to_owned(), path.to_owned(), content_type.to_owned());
    tokio::task::spawn_blocking(move || local.publish_file(&k, &path, len, &ct, &etag))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| Error::new("Publish", key, e))
}
