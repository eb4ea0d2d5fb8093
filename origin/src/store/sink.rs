//! Blob sinks: a blob being written, invisible until committed.
//!
//! - [`FileSink`]: a blob that is being spooled to a local file (a
//!   hydration). On S3 it ships full parts of the file as it grows and
//!   completes the multipart upload on commit; on the embedded store it
//!   ships nothing and publishes the file itself on commit (no copy).
//! - [`PartSink`]: a blob written from memory (replication to a peer
//!   region): one `PutObject` up to one part, else a multipart upload fed one
//!   part at a time, so memory is bounded by the part size. It is the
//!   [`crate::verify::Sink`] of the shared verify loop.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use wharf_embedded_s3::LocalBucket;

use super::Error;
use super::local;
use super::s3::{MultipartUpload, S3};

/// A blob written from a file that grows (see the module doc).
pub struct FileSink {
    key: String,
    path: PathBuf,
    content_type: String,
    to: To,
}

/// Where a [`FileSink`] writes.
enum To {
    /// Multipart upload of the file's full parts as they appear (started
    /// at the first full part; `uploaded` bytes of the file shipped).
    S3 {
        s3: S3,
        upload: Option<MultipartUpload>,
        uploaded: u64,
    },
    /// The embedded store: the verified file becomes the object.
    Local(LocalBucket),
}

impl FileSink {
    pub(super) fn new(
        s3: &S3,
        local: Option<&LocalBucket>,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Self {
        let to = match local {
            Some(local) => To::Local(local.clone()),
            None => To::S3 {
                s3: s3.clone(),
                upload: None,
                uploaded: 0,
            },
        };
        Self {
            key: key.to_owned(),
            path: path.to_owned(),
            content_type: content_type.to_owned(),
            to,
        }
    }

    /// The file now holds `len` bytes and more may follow: ships every full
    /// part but the last (the last part may be short, so one full part is
    /// kept until more bytes or the commit come).
    pub async fn grown(&mut self, len: u64) -> Result<(), Error> {
        let To::S3 {
            s3,
            upload,
            uploaded,
        } = &mut self.to
        else {
            return Ok(());
        };
        let part_size = s3.part_size();
        while len - *uploaded > part_size {
            if upload.is_none() {
                *upload = Some(s3.multipart(&self.key, &self.content_type).await?);
            }
            if let Some(upload) = upload.as_mut() {
                upload
                    .upload_part_from_file(&self.path, *uploaded, part_size)
                    .await?;
            }
            *uploaded += part_size;
        }
        Ok(())
    }

    /// Makes the file's first `len` bytes (verified) the object.
    pub async fn commit(self, len: u64) -> Result<(), Error> {
        let (key, path, content_type) = (&self.key, &self.path, &self.content_type);
        match self.to {
            To::Local(local) => local::publish(local, key, path, len, content_type).await,
            To::S3 {
                s3, upload: None, ..
            } => s3.put_file(key, path, 0, len, content_type).await,
            To::S3 {
                upload: Some(mut upload),
                uploaded,
                ..
            } => {
                if len > uploaded {
                    let rest = upload
                        .upload_part_from_file(path, uploaded, len - uploaded)
                        .await;
                    if let Err(e) = rest {
                        let _ = upload.abort().await;
                        return Err(e);
                    }
                }
                upload.complete().await
            }
        }
    }

    /// Discards the parts shipped; nothing becomes visible.
    pub async fn abort(self) -> Result<(), Error> {
        match self.to {
            To::S3 {
                upload: Some(upload),
                ..
            } => upload.abort().await,
            _ => Ok(()),
        }
    }
}

/// A blob written from memory, one part at a time (see the module doc).
pub struct PartSink {
    s3: S3,
    key: String,
    content_type: String,
    buf: BytesMut,
    upload: Option<MultipartUpload>,
}

impl PartSink {
    pub(super) fn new(s3: &S3, key: &str, content_type: &str) -> Self {
        Self {
            s3: s3.clone(),
            key: key.to_owned(),
            content_type: content_type.to_owned(),
            buf: BytesMut::new(),
            upload: None,
        }
    }

    async fn ship(&mut self, part: Bytes) -> Result<(), Error> {
        if self.upload.is_none() {
            self.upload = Some(self.s3.multipart(&self.key, &self.content_type).await?);
        }
        match self.upload.as_mut() {
            Some(upload) => upload.upload_part_bytes(part).await,
            None => Ok(()),
        }
    }
}

impl crate::verify::Sink for PartSink {
    type Error = Error;

    async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        let part = self.s3.part_size() as usize;
        self.buf.extend_from_slice(&chunk);
        while self.buf.len() >= part {
            let next = self.buf.split_to(part).freeze();
            self.ship(next).await?;
        }
        Ok(())
    }

    async fn commit(mut self, _len: u64) -> Result<(), Error> {
        let rest = std::mem::take(&mut self.buf).freeze();
        if self.upload.is_none() {
            return self.s3.put_bytes(&self.key, rest, &self.content_type).await;
        }
        if !rest.is_empty()
            && let Err(e) = self.ship(rest).await
        {
            crate::verify::Sink::abort(self).await;
            return Err(e);
        }
        match self.upload.take() {
            Some(upload) => upload.complete().await,
            None => Ok(()),
        }
    }

    async fn abort(self) {
        if let Some(upload) = self.upload {
            let _ = upload.abort().await;
        }
    }
}
