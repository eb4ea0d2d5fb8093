//! [`S3`]: the S3 client wrapper with the handful of operations the cache
//! needs, and [`MultipartUpload`], the multipart upload the blob sinks
//! ([`super::sink`]) write through.

use std::path::Path;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::error::Error;

/// What a HEAD learned about an object.
#[derive(Clone, Debug)]
pub struct ObjectMeta {
    /// Length in bytes.
    pub len: u64,
    /// `Content-Type` stored with the object.
    pub content_type: Option<String>,
}

/// One object as a listing names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Length in bytes.
    pub len: u64,
    /// When it was last written (unix milliseconds; 0 if the store did not
    /// say).
    pub modified_ms: u64,
}

/// An object's bytes as a stream of chunks.
pub type BodyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static>>;

/// One bucket through the S3 API.
#[derive(Clone)]
pub struct S3 {
    client: Client,
    bucket: String,
    part_size: u64,
}

/// How to reach an S3-compatible store.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// Endpoint URL, e.g. `http://127.0.0.1:3900`.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Signing region.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Multipart part size in bytes (blobs larger than this use multipart).
    pub part_size: u64,
}

impl S3 {
    /// A store client for `settings` (no request is made).
    pub fn new(settings: &S3Settings) -> Self {
        let credentials = Credentials::new(
            &settings.access_key,
            &settings.secret_key,
            None,
            None,
            "wharf-config",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(Region::new(settings.region.clone()))
            .endpoint_url(&settings.endpoint)
            .force_path_style(true)
            .credentials_provider(credentials)
            // Blobs are verified by their sha256 digest already; extra CRCs on
            // every part would cost CPU and some S3-compatible stores (Garage,
            // older MinIO) reject the trailing-checksum encoding.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            bucket: settings.bucket.clone(),
            part_size: settings.part_size,
        }
    }

    /// Multipart part size.
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Checks that the bucket is reachable (for `/readyz`).
    pub async fn check(&self) -> Result<(), Error> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::sdk("HeadBucket", &self.bucket, e))
    }

    /// Metadata of `key`, or `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, Error> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                len: out.content_length().unwrap_or(0).max(0) as u64,
                content_type: out.content_type().map(str::to_owned),
            })),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(Error::sdk("HeadObject", key, e)),
        }
    }

    /// Streams `key` (optionally a byte range, inclusive end), or `None` if it
    /// does not exist.
    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, Error> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some((start, end)) = range {
            request = request.range(format!("bytes={start}-{end}"));
        }
        match request.send().await {
            Ok(out) => {
                let meta = ObjectMeta {
                    len: out.content_length().unwrap_or(0).max(0) as u64,
                    content_type: out.content_type().map(str::to_owned),
                };
                Ok(Some((meta, out.body)))
            }
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => Ok(None),
            Err(e) => Err(Error::sdk("GetObject", key, e)),
        }
    }

    /// Like [`S3::get`], as a stream of chunks for an HTTP body.
    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<(ObjectMeta, BodyStream)>, Error> {
        let Some((meta, body)) = self.get(key, range).await? else {
            return Ok(None);
        };
        let stream =
            tokio_util::io::ReaderStream::with_capacity(body.into_async_read(), 256 * 1024);
        Ok(Some((meta, Box::pin(stream))))
    }

    /// Writes a small object whole.
    pub async fn put_bytes(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), Error> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::sdk("PutObject", key, e))
    }

    /// Uploads `len` bytes of `path` from `offset` as one object, streaming
    /// from the file.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        offset: u64,
        len: u64,
        content_type: &str,
    ) -> Result<(), Error> {
        let body = file_stream(path, offset, len)
            .await
            .map_err(|e| Error::new("PutObject", key, e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::sdk("PutObject", key, e))
    }

    /// Deletes `key` (absent keys are not an error).
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::sdk("DeleteObject", key, e))
    }

    /// Every object under `prefix`, in key order (ListObjectsV2, paginated):
    /// the retention pass's inventory.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, Error> {
        let mut out = Vec::new();
        let mut token = None::<String>;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| Error::sdk("ListObjectsV2", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                out.push(Listed {
                    key: key.to_owned(),
                    len: object.size().unwrap_or(0).max(0) as u64,
                    modified_ms: object
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0)
                        .max(0) as u64,
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Starts a multipart upload to `key`; nothing is visible until
    /// [`MultipartUpload::complete`].
    pub async fn multipart(&self, key: &str, content_type: &str) -> Result<MultipartUpload, Error> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| Error::sdk("CreateMultipartUpload", key, e))?;
        let upload_id = out.upload_id().unwrap_or_default().to_owned();
        Ok(MultipartUpload {
            store: self.clone(),
            key: key.to_owned(),
            upload_id,
            parts: Vec::new(),
        })
    }

    /// Aborts the multipart uploads under `prefix` that were started more
    /// than `older_than` ago: uploads left by a process that died (a
    /// completed or aborted upload is gone from the list). Younger ones may
    /// belong to a replica writing them now, in a bucket several replicas
    /// share, and an upload whose start is unknown is left alone too.
    pub async fn abort_orphan_uploads(
        &self,
        prefix: &str,
        older_than: Duration,
    ) -> Result<usize, Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let cutoff = now.saturating_sub(older_than.as_secs() as i64);
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        let mut aborted = 0;
        loop {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| Error::sdk("ListMultipartUploads", prefix, e))?;
            for upload in out.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                if upload.initiated().is_none_or(|t| t.secs() > cutoff) {
                    continue;
                }
                let result = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
                match result {
                    Ok(_) => aborted += 1,
                    Err(e) => {
                        tracing::warn!(key, error = %Error::sdk("AbortMultipartUpload", key, e), "orphan upload not aborted")
                    }
                }
            }
            if out.is_truncated() != Some(true) {
                return Ok(aborted);
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            id_marker = out.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                return Ok(aborted);
            }
        }
    }

    /// A presigned GET URL for `key`, valid for `ttl`.
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, Error> {
        let config =
            PresigningConfig::expires_in(ttl).map_err(|e| Error::new("Presign", key, e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| Error::sdk("Presign", key, e))?;
        Ok(request.uri().to_owned())
    }
}

async fn file_stream(path: &Path, offset: u64, len: u64) -> std::io::Result<ByteStream> {
    ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .buffer_size(1 << 20)
        .build()
        .await
        .map_err(|e| std::io::Error::other(format!("reading {}: {e}", path.display())))
}

/// A multipart upload: the object appears only on
/// [`complete`](Self::complete). Dropping it without
/// completing leaves an upload that [`super::Store::abort_orphan_uploads`] cleans at
/// the next start; callers abort explicitly.
pub struct MultipartUpload {
    store: S3,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
}

impl MultipartUpload {
    /// Uploads the next part from `len` bytes of `path` at `offset`.
    pub async fn upload_part_from_file(
        &mut self,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> Result<(), Error> {
        let body = file_stream(path, offset, len)
            .await
            .map_err(|e| Error::new("UploadPart", &self.key, e))?;
        self.upload_part(body, len).await
    }

    /// Uploads the next part from memory (replication: one part at a time,
    /// so memory is bounded by the part size).
    pub async fn upload_part_bytes(&mut self, bytes: Bytes) -> Result<(), Error> {
        let len = bytes.len() as u64;
        self.upload_part(ByteStream::from(bytes), len).await
    }

    async fn upload_part(&mut self, body: ByteStream, len: u64) -> Result<(), Error> {
        let number = self.parts.len() as i32 + 1;
        let out = self
            .store
            .client
            .upload_part()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| Error::sdk("UploadPart", &self.key, e))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
        Ok(())
    }

    /// Makes the object visible.
    pub async fn complete(self) -> Result<(), Error> {
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(self.parts))
            .build();
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(parts)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::sdk("CompleteMultipartUpload", &self.key, e))
    }

    /// Discards the parts; nothing becomes visible.
    pub async fn abort(self) -> Result<(), Error> {
        self.store
            .client
            .abort_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::sdk("AbortMultipartUpload", &self.key, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::{self, EmbeddedSettings};

    #[tokio::test]
    async fn only_uploads_older_than_the_cutoff_are_aborted_as_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, settings) = embedded::start(&EmbeddedSettings {
            data: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            access_key: None,
            secret_key: None,
            read_only: None,
            bucket: "wharf".into(),
            part_size: 5 << 20,
        })
        .await
        .unwrap();
        let s3 = S3::new(&settings);
        // Another replica's upload in progress, started just now.
        let _upload = s3
            .multipart("blobs/sha256/aa", "application/octet-stream")
            .await
            .unwrap();
        let hours = Duration::from_secs(6 * 3600);
        assert_eq!(s3.abort_orphan_uploads("blobs/", hours).await.unwrap(), 0);
        // Old enough (any age counts with a zero cutoff): aborted.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            s3.abort_orphan_uploads("blobs/", Duration::ZERO)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s3.abort_orphan_uploads("blobs/", Duration::ZERO)
                .await
                .unwrap(),
            0
        );
    }
}
