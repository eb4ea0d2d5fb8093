//! `impl s3s::S3` over the directory layout in [`crate::layout`], using the
//! file format and atomic publish steps in [`crate::store`].
//!
//! Every filesystem call runs on the blocking pool; request bodies and
//! response bodies stream through [`crate::stream`]. Operations not
//! implemented here get s3s's default `NotImplemented` error.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use base64::Engine as _;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::layout::{KeyError, Layout, UPLOAD_META, valid_bucket_name};
use crate::list::{Item, ListQuery, list};
use crate::store::{
    Headers, ObjectMeta, Place, TempFile, UploadMeta, now_ms, open_object, publish, remove_object,
};
use crate::stream::{FileBody, stage_body};

/// S3's minimum size for every part but the last.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_NUMBER: i32 = 10_000;
const DEFAULT_MAX_KEYS: i32 = 1000;

/// The filesystem-backed S3 implementation.
#[derive(Debug, Clone)]
pub struct FsBackend {
    layout: Layout,
    region: String,
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    tracing::error!(error = %e, "embedded s3 internal error");
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T, F>(f: F) -> S3Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> S3Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

fn ts(ms: i64) -> Timestamp {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .into()
}

/// ETags are `crc64nvme-<16 hex>` (single PUT) and
/// `crc64nvme-<16 hex>-<parts>` (multipart, CRC over the part ETags), not
/// MD5: MD5 runs at ~0.5-0.7 GB/s and would cap upload throughput. The `-`
/// makes tools that check "32-hex ETag == MD5" (rclone, s3cmd) treat it as
/// opaque, as they do for multipart ETags.
const ETAG_PREFIX: &str = "crc64nvme-";

fn single_etag(crc64: u64) -> String {
    format!("{ETAG_PREFIX}{crc64:016x}")
}

fn etag(s: &str) -> ETag {
    ETag::Strong(s.to_owned())
}

fn to_map(m: std::collections::BTreeMap<String, String>) -> Option<Metadata> {
    (!m.is_empty()).then(|| m.into_iter().collect::<HashMap<_, _>>())
}

fn key_error(e: KeyError) -> S3Error {
    match e {
        KeyError::Empty => s3_error!(InvalidArgument, "empty object key"),
        KeyError::TooLong => s3_error!(KeyTooLongError, "key or key segment too long"),
    }
}

fn parse_upload_id(id: &str) -> S3Result<String> {
    uuid::Uuid::try_parse(id)
        .map(|u| u.simple().to_string())
        .map_err(|_| s3_error!(NoSuchUpload))
}

fn decode_token(t: &str) -> S3Result<String> {
    hex::decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "invalid continuation token"))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Evaluates conditional request headers (RFC 9110 §13.2.2 order).
fn check_conditions(
    meta: &ObjectMeta,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let etag_matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == meta.etag,
    };
    let modified_s = meta.last_modified_ms.div_euclid(1000);
    let secs = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
    if let Some(c) = if_match {
        if !etag_matches(c) {
            return Err(s3_error!(PreconditionFailed));
        }
    } else if let Some(t) = if_unmodified_since
        && modified_s > secs(t)
    {
        return Err(s3_error!(PreconditionFailed));
    }
    if let Some(c) = if_none_match {
        if etag_matches(c) {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = if_modified_since
        && modified_s <= secs(t)
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

impl FsBackend {
    pub fn new(layout: Layout, region: String) -> Self {
        Self { layout, region }
    }

    fn object_path(&self, bucket: &str, key: &str) -> S3Result<PathBuf> {
        self.layout.object_path(bucket, key).map_err(key_error)
    }

    fn tmp(&self) -> TempFile {
        TempFile::new(self.layout.tmp_path())
    }

    async fn bucket_exists(&self, bucket: &str) -> S3Result<bool> {
        if !valid_bucket_name(bucket) {
            return Ok(false);
        }
        let dir = self.layout.objects_dir(bucket);
        blocking(move || Ok(dir.is_dir())).await
    }

    async fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        if self.bucket_exists(bucket).await? {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    /// The error for a missing object: `NoSuchBucket` or `NoSuchKey`.
    async fn missing(&self, bucket: &str) -> S3Error {
        match self.bucket_exists(bucket).await {
            Ok(true) => s3_error!(NoSuchKey),
            Ok(false) => s3_error!(NoSuchBucket),
            Err(e) => e,
        }
    }

    async fn open(&self, bucket: &str, key: &str) -> S3Result<(fs::File, ObjectMeta)> {
        let path = self.object_path(bucket, key)?;
        match blocking(move || open_object(&path).map_err(internal)).await? {
            Some(found) => Ok(found),
            None => Err(self.missing(bucket).await),
        }
    }

    /// Creates a bucket's directories; `false` if it already existed.
    pub fn create_bucket_dirs(layout: &Layout, bucket: &str) -> io::Result<bool> {
        fs::create_dir_all(layout.uploads_dir(bucket))?;
        match fs::create_dir(layout.objects_dir(bucket)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn load_upload(&self, bucket: &str, upload_id: &str, key: &str) -> S3Result<String> {
        self.require_bucket(bucket).await?;
        let id = parse_upload_id(upload_id)?;
        let path = self.layout.upload_dir(bucket, &id).join(UPLOAD_META);
        let meta = blocking(move || match read_json::<UploadMeta>(&path) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(internal(e)),
        })
        .await?;
        match meta {
            Some(m) if m.key == key => Ok(id),
            _ => Err(s3_error!(NoSuchUpload)),
        }
    }

    /// Streams a request body into a published file at `dest`.
    async fn write_body(
        &self,
        body: Option<StreamingBlob>,
        content_md5: Option<&str>,
        dest: PathBuf,
        place: Place,
        mut meta: ObjectMeta,
    ) -> S3Result<ObjectMeta> {
        let body = body.unwrap_or_else(|| StreamingBlob::from(s3s::Body::empty()));
        let staged = stage_body(self.tmp(), body, content_md5.is_some()).await?;
        if let Some(want) = content_md5 {
            let want = base64::engine::general_purpose::STANDARD
                .decode(want.trim())
                .map_err(|_| s3_error!(InvalidDigest))?;
            if Some(want.as_slice()) != staged.md5.as_ref().map(|m| m.as_slice()) {
                return Err(s3_error!(BadDigest));
            }
        }
        meta.etag = single_etag(staged.crc64);
        meta.size = staged.len;
        meta.last_modified_ms = now_ms();
        let m = meta.clone();
        blocking(move || {
            publish(staged.tmp, staged.file, &m, &dest, place).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => s3_error!(PreconditionFailed),
                io::ErrorKind::NotFound if place == Place::ReplaceInExisting => {
                    s3_error!(NoSuchUpload)
                }
                _ => internal(e),
            })
        })
        .await?;
        Ok(meta)
    }

    async fn list_impl(
        &self,
        bucket: String,
        prefix: String,
        delimiter: Option<String>,
        cursor: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<(Vec<Item>, bool)> {
        self.require_bucket(&bucket).await?;
        let max = usize::try_from(max_keys.unwrap_or(DEFAULT_MAX_KEYS).clamp(0, 1000)).unwrap_or(0);
        let layout = self.layout.clone();
        blocking(move || {
            let q = ListQuery {
                prefix: &prefix,
                delimiter: delimiter.as_deref(),
                cursor: cursor.as_deref(),
                max,
            };
            list(&layout, &bucket, &q).map_err(internal)
        })
        .await
    }
}

fn split_items(items: Vec<Item>) -> (Vec<Object>, Vec<CommonPrefix>) {
    let mut objects = Vec::new();
    let mut prefixes = Vec::new();
    for item in items {
        match item {
            Item::Object { key, meta } => objects.push(Object {
                key: Some(key),
                e_tag: Some(etag(&meta.etag)),
                size: i64::try_from(meta.size).ok(),
                last_modified: Some(ts(meta.last_modified_ms)),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                ..Default::default()
            }),
            Item::Prefix(p) => prefixes.push(CommonPrefix { prefix: Some(p) }),
        }
    }
    (objects, prefixes)
}

fn headers_of(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    metadata: Option<Metadata>,
) -> Headers {
    Headers {
        content_type,
        content_encoding,
        content_disposition,
        content_language,
        cache_control,
        metadata: metadata.unwrap_or_default().into_iter().collect(),
    }
}

fn blank_meta(headers: Headers) -> ObjectMeta {
    ObjectMeta {
        etag: String::new(),
        size: 0,
        last_modified_ms: 0,
        parts_count: None,
        headers,
    }
}

#[async_trait::async_trait]
impl S3 for FsBackend {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket;
        if !valid_bucket_name(&bucket) {
            return Err(s3_error!(InvalidBucketName));
        }
        let layout = self.layout.clone();
        let b = bucket.clone();
        let created =
            blocking(move || FsBackend::create_bucket_dirs(&layout, &b).map_err(internal)).await?;
        if !created {
            return Err(s3_error!(BucketAlreadyOwnedByYou));
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        self.require_bucket(&bucket).await?;
        let objects = self.layout.objects_dir(&bucket);
        let dir = self.layout.bucket_dir(&bucket);
        blocking(move || {
            let empty = fs::read_dir(&objects).map_err(internal)?.next().is_none();
            if !empty {
                return Err(s3_error!(BucketNotEmpty));
            }
            fs::remove_dir_all(&dir).map_err(internal)
        })
        .await?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        // us-east-1 is spelled as an empty constraint.
        let location_constraint = (self.region != "us-east-1")
            .then(|| BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint,
        }))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let layout = self.layout.clone();
        let buckets = blocking(move || {
            let mut out = Vec::new();
            for entry in fs::read_dir(layout.root()).map_err(internal)? {
                let entry = entry.map_err(internal)?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if !valid_bucket_name(&name) {
                    continue;
                }
                let Ok(md) = fs::metadata(layout.objects_dir(&name)) else {
                    continue;
                };
                let created = md
                    .created()
                    .or_else(|_| md.modified())
                    .ok()
                    .map(Timestamp::from);
                out.push(Bucket {
                    name: Some(name),
                    creation_date: created,
                    bucket_region: None,
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await?;
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let dest = self.object_path(&input.bucket, &input.key)?;
        let place = match &input.if_none_match {
            None => Place::Replace,
            Some(ETagCondition::Any) => Place::CreateNew,
            Some(ETagCondition::ETag(_)) => {
                return Err(s3_error!(
                    NotImplemented,
                    "If-None-Match on PUT supports only *"
                ));
            }
        };
        if input.if_match.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "If-Match on PUT is not supported"
            ));
        }
        let headers = headers_of(
            input.content_type,
            input.content_encoding,
            input.content_disposition,
            input.content_language,
            input.cache_control,
            input.metadata,
        );
        let meta = self
            .write_body(
                input.body,
                input.content_md5.as_deref(),
                dest,
                place,
                blank_meta(headers),
            )
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&meta.etag)),
            size: i64::try_from(meta.size).ok(),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (file, meta) = self.open(&input.bucket, &input.key).await?;
        check_conditions(
            &meta,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (start, len, content_range) = match input.range {
            None => (0, meta.size, None),
            Some(range) => {
                let r = range.check(meta.size)?;
                if r.is_empty() {
                    return Err(s3_error!(InvalidRange));
                }
                let cr = format!("bytes {}-{}/{}", r.start, r.end - 1, meta.size);
                (r.start, r.end - r.start, Some(cr))
            }
        };
        let body = FileBody::spawn(file, start, len).into_blob();
        let h = meta.headers;
        Ok(S3Response::new(GetObjectOutput {
            body: Some(body),
            content_length: i64::try_from(len).ok(),
            content_range,
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(ts(meta.last_modified_ms)),
            content_type: Some(
                h.content_type
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
            ),
            content_encoding: h.content_encoding,
            content_disposition: h.content_disposition,
            content_language: h.content_language,
            cache_control: h.cache_control,
            metadata: to_map(h.metadata),
            parts_count: meta.parts_count,
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let (_file, meta) = self.open(&input.bucket, &input.key).await?;
        check_conditions(
            &meta,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let h = meta.headers;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: i64::try_from(meta.size).ok(),
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(ts(meta.last_modified_ms)),
            content_type: Some(
                h.content_type
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
            ),
            content_encoding: h.content_encoding,
            content_disposition: h.content_disposition,
            content_language: h.content_language,
            cache_control: h.cache_control,
            metadata: to_map(h.metadata),
            parts_count: meta.parts_count,
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let path = self.object_path(&input.bucket, &input.key)?;
        let stop = self.layout.objects_dir(&input.bucket);
        // Deleting a missing key succeeds, as in S3.
        blocking(move || remove_object(&path, &stop).map_err(internal)).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let stop = self.layout.objects_dir(&input.bucket);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for obj in input.delete.objects {
            let res = match self.object_path(&input.bucket, &obj.key) {
                Ok(path) => {
                    let stop = stop.clone();
                    blocking(move || remove_object(&path, &stop).map_err(internal)).await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(_) if quiet => {}
                Ok(_) => deleted.push(DeletedObject {
                    key: Some(obj.key),
                    ..Default::default()
                }),
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_owned()),
                    key: Some(obj.key),
                    message: e.message().map(str::to_owned),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            ..
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "access point copy sources"));
        };
        self.require_bucket(&input.bucket).await?;
        let dest = self.object_path(&input.bucket, &input.key)?;
        let (src, src_meta) = self.open(src_bucket, src_key).await?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let headers = if replace {
            headers_of(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.content_language,
                input.cache_control,
                input.metadata,
            )
        } else {
            src_meta.headers.clone()
        };
        // The ETag is carried over (the bytes are identical), including a
        // multipart source's `-N` form; S3 would recompute an MD5 here.
        let meta = ObjectMeta {
            last_modified_ms: now_ms(),
            headers,
            ..src_meta
        };
        let tmp = self.tmp();
        let m = meta.clone();
        blocking(move || {
            let mut out = tmp.create().map_err(internal)?;
            let copied = io::copy(&mut (&src).take(m.size), &mut out).map_err(internal)?;
            if copied != m.size {
                return Err(internal("source object shrank while copying"));
            }
            publish(tmp, out, &m, &dest, Place::Replace).map_err(internal)
        })
        .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&meta.etag)),
                last_modified: Some(ts(meta.last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let cursor = match &input.continuation_token {
            Some(t) => Some(decode_token(t)?),
            None => input.start_after.clone(),
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let (items, truncated) = self
            .list_impl(
                input.bucket.clone(),
                prefix,
                input.delimiter.clone(),
                cursor,
                input.max_keys,
            )
            .await?;
        let next = truncated
            .then(|| items.last().map(|i| hex::encode(i.name())))
            .flatten();
        let key_count = i32::try_from(items.len()).unwrap_or(i32::MAX);
        let (objects, prefixes) = split_items(items);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(input.max_keys.unwrap_or(DEFAULT_MAX_KEYS)),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            next_continuation_token: next,
            is_truncated: Some(truncated),
            start_after: input.start_after,
            contents: Some(objects),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let (items, truncated) = self
            .list_impl(
                input.bucket.clone(),
                input.prefix.clone().unwrap_or_default(),
                input.delimiter.clone(),
                input.marker.clone(),
                input.max_keys,
            )
            .await?;
        let next_marker = truncated
            .then(|| items.last().map(|i| i.name().to_owned()))
            .flatten();
        let (objects, prefixes) = split_items(items);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            marker: input.marker,
            next_marker,
            max_keys: Some(input.max_keys.unwrap_or(DEFAULT_MAX_KEYS)),
            is_truncated: Some(truncated),
            contents: Some(objects),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        self.object_path(&input.bucket, &input.key)?; // reject bad keys now, not at completion
        let id = uuid::Uuid::new_v4().simple().to_string();
        let meta = UploadMeta {
            key: input.key.clone(),
            initiated_ms: now_ms(),
            headers: headers_of(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.content_language,
                input.cache_control,
                input.metadata,
            ),
        };
        let json = serde_json::to_vec(&meta).map_err(internal)?;
        let staging = self.layout.tmp_path();
        let uploads = self.layout.uploads_dir(&input.bucket);
        let dest = uploads.join(&id);
        // Stage a whole directory and rename it in, so an upload id is either
        // fully usable or absent.
        blocking(move || {
            let res = (|| -> io::Result<()> {
                fs::create_dir(&staging)?;
                let mut f = fs::File::create(staging.join(UPLOAD_META))?;
                f.write_all(&json)?;
                f.sync_data()?;
                fs::create_dir_all(&uploads)?;
                fs::rename(&staging, &dest)
            })();
            if res.is_err() {
                let _ = fs::remove_dir_all(&staging);
            }
            res.map_err(internal)
        })
        .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        if !(1..=MAX_PART_NUMBER).contains(&input.part_number) {
            return Err(s3_error!(InvalidArgument, "part number must be 1..=10000"));
        }
        let id = self
            .load_upload(&input.bucket, &input.upload_id, &input.key)
            .await?;
        let dest = self.layout.part_path(&input.bucket, &id, input.part_number);
        let meta = self
            .write_body(
                input.body,
                input.content_md5.as_deref(),
                dest,
                Place::ReplaceInExisting,
                blank_meta(Headers::default()),
            )
            .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&meta.etag)),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let id = self
            .load_upload(&input.bucket, &input.upload_id, &input.key)
            .await?;
        let wanted: Vec<(i32, Option<String>)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.part_number.unwrap_or(0),
                    p.e_tag.map(|e| e.value().to_owned()),
                )
            })
            .collect();
        if wanted.is_empty() {
            return Err(s3_error!(MalformedXML, "at least one part is required"));
        }
        let dest = self.object_path(&input.bucket, &input.key)?;
        let upload_dir = self.layout.upload_dir(&input.bucket, &id);
        let meta_path = upload_dir.join(UPLOAD_META);
        let layout = self.layout.clone();
        let bucket = input.bucket.clone();
        let tmp = self.tmp();
        let meta = blocking(move || {
            let upload: UploadMeta = read_json(&meta_path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    s3_error!(NoSuchUpload)
                } else {
                    internal(e)
                }
            })?;
            if wanted.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(s3_error!(InvalidPartOrder));
            }
            let mut parts = Vec::with_capacity(wanted.len());
            for (i, (number, want_etag)) in wanted.iter().enumerate() {
                let path = layout.part_path(&bucket, &id, *number);
                let Some((file, meta)) = open_object(&path).map_err(internal)? else {
                    return Err(s3_error!(InvalidPart, "part {number} was not uploaded"));
                };
                if want_etag
                    .as_deref()
                    .is_some_and(|w| w.trim_matches('"') != meta.etag)
                {
                    return Err(s3_error!(InvalidPart, "part {number}: ETag does not match"));
                }
                if meta.size < MIN_PART_SIZE && i + 1 < wanted.len() {
                    return Err(s3_error!(EntityTooSmall, "part {number} is below 5 MiB"));
                }
                parts.push((file, meta));
            }
            let mut out = tmp.create().map_err(internal)?;
            let mut etags = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
            let mut size = 0u64;
            for (file, meta) in &parts {
                // `io::copy` from a `Take<&File>` to a `File` uses
                // copy_file_range on Linux: no bytes pass through userspace.
                let n = io::copy(&mut file.take(meta.size), &mut out).map_err(internal)?;
                if n != meta.size {
                    return Err(internal("part shrank while completing"));
                }
                size += n;
                etags.update(meta.etag.as_bytes());
            }
            let meta = ObjectMeta {
                etag: format!("{ETAG_PREFIX}{:016x}-{}", etags.finalize(), parts.len()),
                size,
                last_modified_ms: now_ms(),
                parts_count: i32::try_from(parts.len()).ok(),
                headers: upload.headers,
            };
            publish(tmp, out, &meta, &dest, Place::Replace).map_err(internal)?;
            if let Err(e) = fs::remove_dir_all(&upload_dir) {
                tracing::warn!(dir = %upload_dir.display(), error = %e, "could not remove parts");
            }
            Ok(meta)
        })
        .await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag(&meta.etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let id = self
            .load_upload(&input.bucket, &input.upload_id, &input.key)
            .await?;
        let dir = self.layout.upload_dir(&input.bucket, &id);
        blocking(move || match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(s3_error!(NoSuchUpload)),
            Err(e) => Err(internal(e)),
        })
        .await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let dir = self.layout.uploads_dir(&input.bucket);
        let mut uploads = blocking(move || {
            let mut out = Vec::new();
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(internal(e)),
            };
            for entry in entries {
                let entry = entry.map_err(internal)?;
                let Ok(id) = entry.file_name().into_string() else {
                    continue;
                };
                // Gone (completed/aborted) or half-written: not listed.
                if let Ok(m) = read_json::<UploadMeta>(&entry.path().join(UPLOAD_META)) {
                    out.push((m.key, m.initiated_ms, id));
                }
            }
            Ok(out)
        })
        .await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        uploads.retain(|(key, ..)| key.starts_with(&prefix));
        uploads.sort();
        if let Some(km) = &input.key_marker {
            let idm = input.upload_id_marker.as_deref();
            uploads.retain(|(key, _, id)| {
                key > km || (key == km && idm.is_some_and(|idm| id.as_str() > idm))
            });
        }
        let max = usize::try_from(input.max_uploads.unwrap_or(1000).clamp(0, 1000)).unwrap_or(0);
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let (next_key_marker, next_upload_id_marker) = match uploads.last() {
            Some((k, _, id)) if truncated => (Some(k.clone()), Some(id.clone())),
            _ => (None, None),
        };
        let list = uploads
            .into_iter()
            .map(|(key, initiated, id)| MultipartUpload {
                key: Some(key),
                upload_id: Some(id),
                initiated: Some(ts(initiated)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(input.max_uploads.unwrap_or(1000)),
            is_truncated: Some(truncated),
            next_key_marker,
            next_upload_id_marker,
            uploads: Some(list),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let id = self
            .load_upload(&input.bucket, &input.upload_id, &input.key)
            .await?;
        let dir = self.layout.upload_dir(&input.bucket, &id);
        let mut parts = blocking(move || {
            let mut out = Vec::new();
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(s3_error!(NoSuchUpload));
                }
                Err(e) => return Err(internal(e)),
            };
            for entry in entries {
                let entry = entry.map_err(internal)?;
                let name = entry.file_name();
                let Some(n) = name.to_str().and_then(|n| n.strip_prefix("part-")) else {
                    continue;
                };
                let Ok(n) = n.parse::<i32>() else { continue };
                if let Ok(Some((_, meta))) = open_object(&entry.path()) {
                    out.push((n, meta));
                }
            }
            Ok(out)
        })
        .await?;
        parts.sort_by_key(|(n, _)| *n);
        let marker = input.part_number_marker.unwrap_or(0);
        parts.retain(|(n, _)| *n > marker);
        let max = usize::try_from(input.max_parts.unwrap_or(1000).clamp(0, 1000)).unwrap_or(0);
        let truncated = parts.len() > max;
        parts.truncate(max);
        let next = if truncated {
            parts.last().map(|(n, _)| *n)
        } else {
            None
        };
        let list = parts
            .into_iter()
            .map(|(n, meta)| Part {
                part_number: Some(n),
                e_tag: Some(etag(&meta.etag)),
                size: i64::try_from(meta.size).ok(),
                last_modified: Some(ts(meta.last_modified_ms)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            max_parts: Some(input.max_parts.unwrap_or(1000)),
            is_truncated: Some(truncated),
            parts: Some(list),
            ..Default::default()
        }))
    }
}
