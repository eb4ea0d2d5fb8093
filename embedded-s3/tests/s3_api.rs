//! The embedded server driven by the real `aws-sdk-s3` client (and reqwest
//! for presigned URLs), one server, data dir and port per test.

use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use wharf_embedded_s3::{EmbeddedConfig, EmbeddedError, EmbeddedS3, KeyPair};

const AK: &str = "wharf-test-ak";
const SK: &str = "wharf-test-secret";
const RO_AK: &str = "wharf-test-read-only";
const RO_SK: &str = "wharf-test-read-only-secret";
const BUCKET: &str = "blobs";
const MIB: usize = 1024 * 1024;

struct Server {
    s3: EmbeddedS3,
    client: Client,
    dir: tempfile::TempDir,
}

fn config(root: &std::path::Path) -> EmbeddedConfig {
    EmbeddedConfig {
        root: root.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        access_key: AK.into(),
        secret_key: SK.into(),
        region: "us-east-1".into(),
        buckets: vec![BUCKET.into()],
        read_only: Some(KeyPair {
            access_key: RO_AK.into(),
            secret_key: RO_SK.into(),
        }),
        header_read_timeout: wharf_embedded_s3::DEFAULT_HEADER_READ_TIMEOUT,
    }
}

fn client(endpoint: &str, ak: &str, sk: &str) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(ak, sk, None, None, "static"))
        .build();
    Client::from_conf(conf)
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let s3 = EmbeddedS3::start(config(dir.path())).await.unwrap();
    let client = client(&s3.endpoint(), AK, SK);
    Server { s3, client, dir }
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn status<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> u16 {
    err.raw_response().map(|r| r.status().as_u16()).unwrap_or(0)
}

fn code<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.code())
        .unwrap_or("")
        .to_owned()
}

async fn put(c: &Client, key: &str, body: Vec<u8>) -> String {
    c.put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap()
        .e_tag
        .unwrap()
}

async fn get(c: &Client, key: &str, range: Option<&str>) -> Vec<u8> {
    let out = c
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .set_range(range.map(str::to_owned));
    out.send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}

/// All files (not directories) under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test]
async fn put_get_head_delete_round_trip_keeps_content_type_and_metadata() {
    let srv = start().await;
    let c = &srv.client;
    let body = data(100_000, 1);
    let put_out = c
        .put_object()
        .bucket(BUCKET)
        .key("blobs/sha256:abc")
        .content_type("application/vnd.oci.image.layer.v1.tar+gzip")
        .metadata("digest", "sha256:abc")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    let md5 = etag_of(&body);
    assert_eq!(put_out.e_tag.as_deref(), Some(md5.as_str()));

    let got = c
        .get_object()
        .bucket(BUCKET)
        .key("blobs/sha256:abc")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.content_type(),
        Some("application/vnd.oci.image.layer.v1.tar+gzip")
    );
    assert_eq!(got.content_length(), Some(100_000));
    assert_eq!(got.e_tag(), Some(md5.as_str()));
    assert_eq!(
        got.metadata().unwrap().get("digest").map(String::as_str),
        Some("sha256:abc")
    );
    assert!(got.last_modified().is_some());
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        &body[..]
    );

    let head = c
        .head_object()
        .bucket(BUCKET)
        .key("blobs/sha256:abc")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(100_000));
    assert_eq!(head.e_tag(), Some(md5.as_str()));
    assert_eq!(
        head.metadata().unwrap().get("digest").map(String::as_str),
        Some("sha256:abc")
    );

    c.head_bucket().bucket(BUCKET).send().await.unwrap();
    let buckets = c.list_buckets().send().await.unwrap();
    let names: Vec<_> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["blobs"]);

    c.delete_object()
        .bucket(BUCKET)
        .key("blobs/sha256:abc")
        .send()
        .await
        .unwrap();
    let err = c
        .head_object()
        .bucket(BUCKET)
        .key("blobs/sha256:abc")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), 404);
    let err = c
        .get_object()
        .bucket(BUCKET)
        .key("blobs/sha256:abc")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "NoSuchKey");
    let err = c
        .get_object()
        .bucket("nope")
        .key("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "NoSuchBucket");
    // Deleting removed the now-empty key directory too.
    assert!(files_under(&srv.dir.path().join(BUCKET).join("objects")).is_empty());

    // Content-MD5 is verified when sent.
    use base64::Engine as _;
    let b64 = |b: &[u8]| {
        use md5::{Digest, Md5};
        base64::engine::general_purpose::STANDARD.encode(Md5::digest(b))
    };
    let with_md5 = |md5: String| {
        c.put_object()
            .bucket(BUCKET)
            .key("md5")
            .content_md5(md5)
            .body(ByteStream::from_static(b"checked"))
            .send()
    };
    with_md5(b64(b"checked")).await.unwrap();
    let err = with_md5(b64(b"something else")).await.unwrap_err();
    assert_eq!(code(&err), "BadDigest");
    assert_eq!(get(c, "md5", None).await, b"checked");

    // Empty objects work.
    put(c, "empty", Vec::new()).await;
    assert!(get(c, "empty", None).await.is_empty());
    srv.s3.shutdown().await;
}

fn crc64(bytes: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, bytes)
}

/// The server's documented single-PUT ETag.
fn etag_of(bytes: &[u8]) -> String {
    format!("\"crc64nvme-{:016x}\"", crc64(bytes))
}

#[tokio::test]
async fn ranged_gets_cover_closed_open_and_suffix_ranges() {
    let srv = start().await;
    let c = &srv.client;
    let body = data(1000, 2);
    put(c, "r", body.clone()).await;
    assert_eq!(get(c, "r", Some("bytes=0-9")).await, &body[..10]);
    assert_eq!(get(c, "r", Some("bytes=10-")).await, &body[10..]);
    assert_eq!(get(c, "r", Some("bytes=-5")).await, &body[995..]);
    assert_eq!(get(c, "r", Some("bytes=990-5000")).await, &body[990..]);
    assert_eq!(get(c, "r", Some("bytes=-5000")).await, &body[..]);

    let out = c
        .get_object()
        .bucket(BUCKET)
        .key("r")
        .range("bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_range(), Some("bytes 0-9/1000"));
    assert_eq!(out.content_length(), Some(10));

    for bad in [
        "bytes=1000-",
        "bytes=5000-6000",
        "bytes=999999999999999-",
        "bytes=-0",
    ] {
        let err = c
            .get_object()
            .bucket(BUCKET)
            .key("r")
            .range(bad)
            .send()
            .await
            .unwrap_err();
        assert_eq!(status(&err), 416, "{bad}");
        assert_eq!(code(&err), "InvalidRange", "{bad}");
    }
}

#[tokio::test]
async fn multipart_upload_completes_and_reads_back_byte_exact() {
    let srv = start().await;
    let c = &srv.client;
    let body = data(20 * MIB + 12345, 3);
    let key = "blobs/sha256:big";
    let up = c
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .content_type("application/octet-stream")
        .metadata("digest", "sha256:big")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let chunks = [
        &body[..8 * MIB],
        &body[8 * MIB..16 * MIB],
        &body[16 * MIB..],
    ];
    let mut parts = Vec::new();
    let mut part_etags = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let n = i32::try_from(i + 1).unwrap();
        let out = c
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(out.e_tag(), Some(etag_of(chunk).as_str()));
        part_etags.push_str(out.e_tag().unwrap().trim_matches('"'));
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().unwrap())
                .build(),
        );
    }
    let listed = c
        .list_parts()
        .bucket(BUCKET)
        .key(key)
        .upload_id(id)
        .send()
        .await
        .unwrap();
    let sizes: Vec<_> = listed.parts().iter().map(|p| p.size().unwrap()).collect();
    assert_eq!(
        sizes,
        [8 * MIB as i64, 8 * MIB as i64, (4 * MIB + 12345) as i64]
    );

    // Nothing is visible before completion.
    let err = c
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), 404);

    let done = c
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let want_etag = format!("\"crc64nvme-{:016x}-3\"", crc64(part_etags.as_bytes()));
    assert_eq!(done.e_tag(), Some(want_etag.as_str()));

    let got = c.get_object().bucket(BUCKET).key(key).send().await.unwrap();
    assert_eq!(got.e_tag(), Some(want_etag.as_str()));
    assert_eq!(
        got.metadata().unwrap().get("digest").map(String::as_str),
        Some("sha256:big")
    );
    let bytes = got.body.collect().await.unwrap().into_bytes();
    assert!(bytes.as_ref() == &body[..], "multipart object differs");
    // The parts are gone.
    assert!(files_under(&srv.dir.path().join(BUCKET).join("uploads")).is_empty());
}

#[tokio::test]
async fn complete_validates_part_etags_order_and_sizes() {
    let srv = start().await;
    let c = &srv.client;
    let key = "k";
    let id = c
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = id.upload_id().unwrap();
    let mut etags = Vec::new();
    for (n, len) in [(1, MIB), (2, MIB)] {
        let out = c
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(data(len, n as u64)))
            .send()
            .await
            .unwrap();
        etags.push(out.e_tag.unwrap());
    }
    let complete = |parts: Vec<(i32, &str)>| {
        let parts = parts
            .into_iter()
            .map(|(n, e)| CompletedPart::builder().part_number(n).e_tag(e).build())
            .collect();
        c.complete_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
    };
    let err = complete(vec![(1, "\"00000000000000000000000000000000\"")])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidPart");
    let err = complete(vec![(3, &etags[0])]).await.unwrap_err();
    assert_eq!(code(&err), "InvalidPart");
    let err = complete(vec![(2, &etags[1]), (1, &etags[0])])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidPartOrder");
    let err = complete(vec![(1, &etags[0]), (2, &etags[1])])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "EntityTooSmall");
    // A single (last) part may be small.
    complete(vec![(2, &etags[1])]).await.unwrap();
    assert_eq!(get(c, key, None).await, data(MIB, 2));
    let err = complete(vec![(2, &etags[1])]).await.unwrap_err();
    assert_eq!(code(&err), "NoSuchUpload");
}

#[tokio::test]
async fn abort_leaves_no_object_and_no_part_files() {
    let srv = start().await;
    let c = &srv.client;
    let id = c
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("gone")
        .send()
        .await
        .unwrap();
    let id = id.upload_id().unwrap();
    c.upload_part()
        .bucket(BUCKET)
        .key("gone")
        .upload_id(id)
        .part_number(1)
        .body(ByteStream::from(data(MIB, 4)))
        .send()
        .await
        .unwrap();
    assert!(!files_under(&srv.dir.path().join(BUCKET).join("uploads")).is_empty());
    c.abort_multipart_upload()
        .bucket(BUCKET)
        .key("gone")
        .upload_id(id)
        .send()
        .await
        .unwrap();
    assert!(files_under(&srv.dir.path().join(BUCKET).join("uploads")).is_empty());
    assert!(files_under(&srv.dir.path().join(BUCKET).join("objects")).is_empty());
    let err = c
        .head_object()
        .bucket(BUCKET)
        .key("gone")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), 404);
    let err = c
        .upload_part()
        .bucket(BUCKET)
        .key("gone")
        .upload_id(id)
        .part_number(2)
        .body(ByteStream::from(data(10, 4)))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "NoSuchUpload");
    let err = c
        .abort_multipart_upload()
        .bucket(BUCKET)
        .key("gone")
        .upload_id(id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "NoSuchUpload");
    // Upload ids are never paths.
    let err = c
        .abort_multipart_upload()
        .bucket(BUCKET)
        .key("gone")
        .upload_id("../../objects")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "NoSuchUpload");
}

#[tokio::test]
async fn list_multipart_uploads_shows_open_uploads() {
    let srv = start().await;
    let c = &srv.client;
    let a = c
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("up/a")
        .send()
        .await
        .unwrap();
    let b = c
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("up/b")
        .send()
        .await
        .unwrap();
    c.create_multipart_upload()
        .bucket(BUCKET)
        .key("other")
        .send()
        .await
        .unwrap();
    let out = c
        .list_multipart_uploads()
        .bucket(BUCKET)
        .prefix("up/")
        .send()
        .await
        .unwrap();
    let got: Vec<_> = out
        .uploads()
        .iter()
        .map(|u| (u.key().unwrap(), u.upload_id().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("up/a", a.upload_id().unwrap()),
            ("up/b", b.upload_id().unwrap())
        ]
    );
    assert!(out.uploads().iter().all(|u| u.initiated().is_some()));
    let all = c
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert_eq!(all.uploads().len(), 3);
    c.abort_multipart_upload()
        .bucket(BUCKET)
        .key("up/a")
        .upload_id(a.upload_id().unwrap())
        .send()
        .await
        .unwrap();
    let out = c
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert_eq!(out.uploads().len(), 2);
}

#[tokio::test]
async fn list_objects_v2_honours_prefix_delimiter_and_pagination() {
    let srv = start().await;
    let c = &srv.client;
    let keys = ["a", "a.txt", "a/1", "a/2", "a/b/3", "a/b/4", "b/5"];
    for k in keys.iter().rev() {
        put(c, k, k.as_bytes().to_vec()).await;
    }
    let list =
        |prefix: Option<&str>, delim: Option<&str>, max: Option<i32>, token: Option<String>| {
            c.list_objects_v2()
                .bucket(BUCKET)
                .set_prefix(prefix.map(str::to_owned))
                .set_delimiter(delim.map(str::to_owned))
                .set_max_keys(max)
                .set_continuation_token(token)
                .send()
        };
    let names = |o: &aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output| {
        let mut v: Vec<String> = o
            .contents()
            .iter()
            .map(|o| o.key().unwrap().to_owned())
            .collect();
        v.extend(
            o.common_prefixes()
                .iter()
                .map(|p| format!("P:{}", p.prefix().unwrap())),
        );
        v
    };

    let all = list(None, None, None, None).await.unwrap();
    assert_eq!(names(&all), keys);
    assert_eq!(all.contents()[0].size(), Some(1));
    assert!(all.contents()[0].e_tag().is_some());

    let out = list(Some("a/"), None, None, None).await.unwrap();
    assert_eq!(names(&out), ["a/1", "a/2", "a/b/3", "a/b/4"]);
    let out = list(Some("a/"), Some("/"), None, None).await.unwrap();
    assert_eq!(names(&out), ["a/1", "a/2", "P:a/b/"]);
    let out = list(None, Some("/"), None, None).await.unwrap();
    assert_eq!(names(&out), ["a", "a.txt", "P:a/", "P:b/"]);
    let out = list(Some("a/b"), None, None, None).await.unwrap();
    assert_eq!(names(&out), ["a/b/3", "a/b/4"]);
    let out = list(Some("zzz"), None, None, None).await.unwrap();
    assert!(names(&out).is_empty());

    // Pagination, with and without a delimiter.
    for (delim, max, want) in [
        (
            None,
            2,
            keys.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        ),
        (
            Some("/"),
            1,
            vec!["a".into(), "a.txt".into(), "P:a/".into(), "P:b/".into()],
        ),
    ] {
        let mut seen = Vec::new();
        let mut token = None;
        let mut pages = 0;
        loop {
            let page = list(None, delim, Some(max), token.take()).await.unwrap();
            pages += 1;
            assert!(names(&page).len() <= max as usize);
            seen.extend(names(&page));
            match page.next_continuation_token() {
                Some(t) => {
                    assert_eq!(page.is_truncated(), Some(true));
                    token = Some(t.to_owned());
                }
                None => break,
            }
            assert!(pages < 20, "pagination does not terminate");
        }
        assert_eq!(seen, want, "delimiter {delim:?}");
    }

    // The SDK paginator agrees.
    let mut pages = c
        .list_objects_v2()
        .bucket(BUCKET)
        .max_keys(3)
        .into_paginator()
        .send();
    let mut n = 0;
    while let Some(page) = pages.next().await {
        n += page.unwrap().contents().len();
    }
    assert_eq!(n, keys.len());
}

#[tokio::test]
async fn presigned_get_works_and_tampered_or_expired_urls_are_refused() {
    let srv = start().await;
    let c = &srv.client;
    let body = data(5000, 5);
    put(c, "blobs/sha256:p", body.clone()).await;
    put(c, "blobs/sha256:q", b"other".to_vec()).await;
    let presign = |key: &'static str, secs| {
        c.get_object()
            .bucket(BUCKET)
            .key(key)
            .presigned(PresigningConfig::expires_in(Duration::from_secs(secs)).unwrap())
    };
    let url = presign("blobs/sha256:p", 300)
        .await
        .unwrap()
        .uri()
        .to_owned();
    let http = reqwest::Client::new();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[..]);
    // Range requests through a presigned URL (what docker/containerd do on resume).
    let resp = http
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[10..20]);

    let other_key = url
        .replacen("sha256:p", "sha256:q", 1)
        .replacen("sha256%3Ap", "sha256%3Aq", 1);
    assert_ne!(other_key, url);
    assert_eq!(http.get(&other_key).send().await.unwrap().status(), 403);

    let i = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut bad_sig = url.clone().into_bytes();
    bad_sig[i] = if bad_sig[i] == b'0' { b'1' } else { b'0' };
    let bad_sig = String::from_utf8(bad_sig).unwrap();
    assert_eq!(http.get(&bad_sig).send().await.unwrap().status(), 403);

    let short = presign("blobs/sha256:p", 1).await.unwrap().uri().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resp = http.get(&short).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("AccessDenied"));
}

#[tokio::test]
async fn wrong_credentials_and_unsigned_requests_get_403() {
    let srv = start().await;
    put(&srv.client, "k", b"v".to_vec()).await;
    for (ak, sk) in [(AK, "wrong-secret"), ("wrong-ak", SK)] {
        let bad = client(&srv.s3.endpoint(), ak, sk);
        let err = bad
            .get_object()
            .bucket(BUCKET)
            .key("k")
            .send()
            .await
            .unwrap_err();
        assert_eq!(status(&err), 403, "{ak}/{sk}");
        let err = bad
            .put_object()
            .bucket(BUCKET)
            .key("k2")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(status(&err), 403, "{ak}/{sk}");
    }
    let url = format!("{}/{BUCKET}/k", srv.s3.endpoint());
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("AccessDenied"));
    let resp = reqwest::Client::new()
        .put(&url)
        .body("evil")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(get(&srv.client, "k", None).await, b"v");
}

/// The edge presigns with the read-only key (issue 12): it reads objects
/// and nothing else.
#[tokio::test]
async fn the_read_only_key_reads_objects_and_may_not_write_delete_or_list() {
    let srv = start().await;
    let body = data(3000, 9);
    put(&srv.client, "blobs/sha256:ro", body.clone()).await;
    let ro = client(&srv.s3.endpoint(), RO_AK, RO_SK);

    assert_eq!(get(&ro, "blobs/sha256:ro", None).await, body);
    assert_eq!(
        get(&ro, "blobs/sha256:ro", Some("bytes=1-2")).await,
        &body[1..3]
    );
    let head = ro
        .head_object()
        .bucket(BUCKET)
        .key("blobs/sha256:ro")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(3000));
    // Presigned GET and HEAD, as the edge hands them out.
    let presign = PresigningConfig::expires_in(Duration::from_secs(60)).unwrap();
    let url = ro
        .get_object()
        .bucket(BUCKET)
        .key("blobs/sha256:ro")
        .presigned(presign.clone())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let resp = http.get(url.uri()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[..]);
    let url = ro
        .head_object()
        .bucket(BUCKET)
        .key("blobs/sha256:ro")
        .presigned(presign.clone())
        .await
        .unwrap();
    assert_eq!(http.head(url.uri()).send().await.unwrap().status(), 200);

    fn denied<E: aws_sdk_s3::error::ProvideErrorMetadata>(
        what: &str,
        r: Result<impl std::fmt::Debug, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    ) {
        let err = r.expect_err(what);
        assert_eq!(
            (status(&err), code(&err).as_str()),
            (403, "AccessDenied"),
            "{what}"
        );
    }
    denied(
        "PutObject",
        ro.put_object()
            .bucket(BUCKET)
            .key("blobs/sha256:evil")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
    );
    denied(
        "DeleteObject",
        ro.delete_object()
            .bucket(BUCKET)
            .key("blobs/sha256:ro")
            .send()
            .await,
    );
    denied(
        "CopyObject",
        ro.copy_object()
            .bucket(BUCKET)
            .key("blobs/sha256:copy")
            .copy_source(format!("{BUCKET}/blobs/sha256:ro"))
            .send()
            .await,
    );
    denied(
        "CreateMultipartUpload",
        ro.create_multipart_upload()
            .bucket(BUCKET)
            .key("blobs/sha256:mp")
            .send()
            .await,
    );
    let upload = srv
        .client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("blobs/sha256:mp")
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    denied(
        "UploadPart",
        ro.upload_part()
            .bucket(BUCKET)
            .key("blobs/sha256:mp")
            .upload_id(upload_id)
            .part_number(1)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
    );
    denied(
        "AbortMultipartUpload",
        ro.abort_multipart_upload()
            .bucket(BUCKET)
            .key("blobs/sha256:mp")
            .upload_id(upload_id)
            .send()
            .await,
    );
    denied(
        "ListMultipartUploads",
        ro.list_multipart_uploads().bucket(BUCKET).send().await,
    );
    denied(
        "ListObjectsV2",
        ro.list_objects_v2().bucket(BUCKET).send().await,
    );
    denied(
        "CreateBucket",
        ro.create_bucket().bucket("evil").send().await,
    );
    // A presigned PUT with the read-only key is refused too.
    let url = ro
        .put_object()
        .bucket(BUCKET)
        .key("blobs/sha256:evil")
        .presigned(presign)
        .await
        .unwrap();
    let resp = http.put(url.uri()).body("evil").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("AccessDenied"));

    // Nothing was written or deleted.
    assert_eq!(get(&srv.client, "blobs/sha256:ro", None).await, body);
    let listed = srv
        .client
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["blobs/sha256:ro"]);
}

#[tokio::test]
async fn the_read_only_key_must_differ_from_the_read_write_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.read_only = Some(KeyPair {
        access_key: AK.into(),
        secret_key: "other".into(),
    });
    let err = EmbeddedS3::start(cfg).await.unwrap_err();
    assert!(matches!(err, EmbeddedError::SameKeys), "{err}");
}

/// Presigned URLs point the internet at this server: a client that sends
/// half a request line, or nothing at all, or idles after a request, is
/// disconnected once the header-read timeout passes (issue 12).
#[tokio::test]
async fn slow_and_idle_connections_are_cut_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(1);
    let s3 = EmbeddedS3::start(EmbeddedConfig {
        header_read_timeout: timeout,
        ..config(dir.path())
    })
    .await
    .unwrap();
    put(&client(&s3.endpoint(), AK, SK), "k", b"v".to_vec()).await;

    /// Waits for the server to close the connection; returns the time taken
    /// and whatever it sent before closing.
    async fn closed_after(conn: &mut tokio::net::TcpStream) -> (Duration, Vec<u8>) {
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                .await
                .expect("the server should close the connection within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return (started.elapsed(), got);
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    // Half a request line.
    let mut half = tokio::net::TcpStream::connect(s3.local_addr())
        .await
        .unwrap();
    half.write_all(b"GET /blobs/k HT").await.unwrap();
    // Nothing at all.
    let mut silent = tokio::net::TcpStream::connect(s3.local_addr())
        .await
        .unwrap();
    // One complete request, then idle on the kept-alive connection.
    let mut idle = tokio::net::TcpStream::connect(s3.local_addr())
        .await
        .unwrap();
    idle.write_all(b"GET /blobs/k HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for (name, conn) in [
        ("half", &mut half),
        ("silent", &mut silent),
        ("idle", &mut idle),
    ] {
        let (took, got) = closed_after(conn).await;
        assert!(
            took <= timeout + Duration::from_secs(3),
            "{name}: closed after {took:?}"
        );
        if name == "idle" {
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        }
    }
    // The server still serves.
    assert_eq!(get(&client(&s3.endpoint(), AK, SK), "k", None).await, b"v");
    s3.shutdown().await;
}

#[tokio::test]
async fn concurrent_puts_of_the_same_key_never_produce_a_torn_object() {
    let srv = start().await;
    let c = &srv.client;
    let len = 3 * MIB + 7;
    let bodies: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; len]).collect();
    let md5s: Vec<String> = bodies.iter().map(|b| etag_of(b)).collect();
    put(c, "race", bodies[0].clone()).await;

    let writers = bodies.iter().map(|b| {
        let c = c.clone();
        let b = b.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                put(&c, "race", b.clone()).await;
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            let md5s = md5s.clone();
            tokio::spawn(async move {
                for _ in 0..8 {
                    let out = c
                        .get_object()
                        .bucket(BUCKET)
                        .key("race")
                        .send()
                        .await
                        .unwrap();
                    let etag = out.e_tag().unwrap().to_owned();
                    let bytes = out.body.collect().await.unwrap().into_bytes();
                    assert_eq!(bytes.len(), len);
                    assert!(bytes.iter().all(|&b| b == bytes[0]), "torn object");
                    assert_eq!(
                        etag,
                        md5s[usize::from(bytes[0])],
                        "metadata from another PUT"
                    );
                }
            })
        })
        .collect();
    for t in writers.into_iter().chain(readers) {
        t.await.unwrap();
    }
    let bytes = get(c, "race", None).await;
    assert!(bytes.len() == len && bytes.iter().all(|&b| b == bytes[0]));
    // No staging files left behind.
    assert!(files_under(&srv.dir.path().join(".wharf-tmp")).is_empty());
}

#[tokio::test]
async fn hostile_keys_stay_inside_the_bucket_and_odd_inputs_get_errors() {
    let srv = start().await;
    let c = &srv.client;
    let keys = [
        "../../escape",
        "a/../../b",
        "./x",
        "sha256:ab/..",
        "trailing/",
        "a//b",
        "%2e%2e",
    ];
    for k in keys {
        put(c, k, k.as_bytes().to_vec()).await;
        assert_eq!(get(c, k, None).await, k.as_bytes(), "{k}");
    }
    let root = srv.dir.path();
    let objects = root.join(BUCKET).join("objects");
    let all = files_under(root);
    let stored: Vec<_> = all.iter().filter(|p| !p.ends_with(".lock")).collect();
    assert_eq!(stored.len(), keys.len());
    assert!(stored.iter().all(|p| p.starts_with(&objects)), "{stored:?}");
    let listed = c.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    let mut want: Vec<_> = keys.to_vec();
    want.sort();
    let got: Vec<_> = listed.contents().iter().map(|o| o.key().unwrap()).collect();
    assert_eq!(got, want);

    let long = "k".repeat(1025);
    let err = c
        .put_object()
        .bucket(BUCKET)
        .key(&long)
        .body(ByteStream::from_static(b"x"));
    assert_eq!(status(&err.send().await.unwrap_err()), 400);
    let err = c
        .put_object()
        .bucket(BUCKET)
        .key("x".repeat(400))
        .body(ByteStream::from_static(b"x"));
    assert_eq!(code(&err.send().await.unwrap_err()), "KeyTooLongError");
    let err = c
        .list_objects_v2()
        .bucket(BUCKET)
        .continuation_token("not-hex!")
        .send()
        .await;
    assert_eq!(status(&err.unwrap_err()), 400);
    let err = c
        .put_object()
        .bucket("missing")
        .key("k")
        .body(ByteStream::from_static(b"x"));
    assert_eq!(code(&err.send().await.unwrap_err()), "NoSuchBucket");
}

#[tokio::test]
async fn conditional_requests_and_copy() {
    let srv = start().await;
    let c = &srv.client;
    let etag = put(c, "src", b"hello".to_vec()).await;
    // If-None-Match: * creates only once.
    let again = c
        .put_object()
        .bucket(BUCKET)
        .key("src")
        .if_none_match("*")
        .body(ByteStream::from_static(b"clobber"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&again), 412);
    c.put_object()
        .bucket(BUCKET)
        .key("fresh/new")
        .if_none_match("*")
        .body(ByteStream::from_static(b"new"))
        .send()
        .await
        .unwrap();
    assert_eq!(get(c, "src", None).await, b"hello");

    let err = c
        .get_object()
        .bucket(BUCKET)
        .key("src")
        .if_none_match(&etag)
        .send()
        .await;
    assert_eq!(status(&err.unwrap_err()), 304);
    let err = c
        .get_object()
        .bucket(BUCKET)
        .key("src")
        .if_match("\"nope\"")
        .send()
        .await;
    assert_eq!(status(&err.unwrap_err()), 412);
    c.get_object()
        .bucket(BUCKET)
        .key("src")
        .if_match(&etag)
        .send()
        .await
        .unwrap();

    c.create_bucket().bucket("mirror").send().await.unwrap();
    let err = c.create_bucket().bucket("mirror").send().await.unwrap_err();
    assert_eq!(status(&err), 409);
    let out = c
        .copy_object()
        .bucket("mirror")
        .key("dst/copy")
        .copy_source(format!("{BUCKET}/src"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.copy_object_result().unwrap().e_tag(),
        Some(etag.as_str())
    );
    let got = c
        .get_object()
        .bucket("mirror")
        .key("dst/copy")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        b"hello"
    );

    let del = c
        .delete_objects()
        .bucket(BUCKET)
        .delete(
            aws_sdk_s3::types::Delete::builder()
                .objects(
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key("src")
                        .build()
                        .unwrap(),
                )
                .objects(
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key("nope")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(del.deleted().len(), 2);
    assert!(
        c.head_object()
            .bucket(BUCKET)
            .key("src")
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn data_survives_restart_and_a_data_dir_has_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = EmbeddedS3::start(config(dir.path())).await.unwrap();
    let second = EmbeddedS3::start(config(dir.path())).await.unwrap_err();
    assert!(matches!(second, EmbeddedError::Locked(_)), "{second}");
    put(&client(&s3.endpoint(), AK, SK), "keep", b"me".to_vec()).await;
    // A staging file from a "crash" is cleared at the next start.
    std::fs::write(dir.path().join(".wharf-tmp").join("leftover"), b"partial").unwrap();
    s3.shutdown().await;

    let s3 = EmbeddedS3::start(config(dir.path())).await.unwrap();
    assert!(files_under(&dir.path().join(".wharf-tmp")).is_empty());
    assert_eq!(
        get(&client(&s3.endpoint(), AK, SK), "keep", None).await,
        b"me"
    );
    s3.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_download_finish() {
    let srv = start().await;
    let body = data(64 * MIB, 9);
    put(&srv.client, "big", body.clone()).await;
    let out = srv
        .client
        .get_object()
        .bucket(BUCKET)
        .key("big")
        .send()
        .await
        .unwrap();
    let reader =
        tokio::spawn(async move { out.body.collect().await.map(|b| b.into_bytes().len()) });
    let endpoint = srv.s3.endpoint();
    srv.s3.shutdown().await;
    assert_eq!(reader.await.unwrap().unwrap(), body.len());
    // And new connections are refused.
    assert!(reqwest::get(&endpoint).await.is_err());
}

/// Prints MB/s for 1 GiB PUT and GET through aws-sdk-s3 (default checksum
/// settings and `WhenRequired`) and through presigned URLs with reqwest:
/// `cargo test -p wharf-embedded-s3 --release -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "throughput figures, not a pass/fail test"]
async fn throughput_of_1_gib_put_and_get() {
    use aws_sdk_s3::config::RequestChecksumCalculation;
    use std::io::Write;
    let srv = start().await;
    let size = 1024 * MIB;
    let src = tempfile::NamedTempFile::new().unwrap();
    {
        let mut f = std::io::BufWriter::new(src.as_file());
        let block = data(MIB, 7);
        for _ in 0..size / MIB {
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
    }
    let mb = size as f64 / 1e6;
    let report = |what: &str, t: std::time::Instant| {
        let s = t.elapsed().as_secs_f64();
        println!("{what:<44} {:>6.0} MB/s ({s:.2} s)", mb / s);
    };
    let when_required = srv
        .client
        .config()
        .to_builder()
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    let when_required = Client::from_conf(when_required);

    for (name, c) in [("default", &srv.client), ("WhenRequired", &when_required)] {
        let t = std::time::Instant::now();
        c.put_object()
            .bucket(BUCKET)
            .key("gib")
            // The SDK's default file buffer is 4 KiB; the origin streams
            // upstream bodies in larger chunks than that.
            .body(
                ByteStream::read_from()
                    .path(src.path())
                    .buffer_size(MIB)
                    .build()
                    .await
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        report(&format!("aws-sdk-s3 PUT ({name} checksums)"), t);
    }

    let t = std::time::Instant::now();
    let mut body = srv
        .client
        .get_object()
        .bucket(BUCKET)
        .key("gib")
        .send()
        .await
        .unwrap()
        .body;
    let mut n = 0;
    while let Some(chunk) = body.try_next().await.unwrap() {
        n += chunk.len();
    }
    assert_eq!(n, size);
    report("aws-sdk-s3 GET", t);

    let presign = PresigningConfig::expires_in(Duration::from_secs(300)).unwrap();
    let put_url = srv
        .client
        .put_object()
        .bucket(BUCKET)
        .key("gib2")
        .presigned(presign.clone());
    let put_url = put_url.await.unwrap().uri().to_owned();
    let block = bytes::Bytes::from(data(MIB, 8));
    let blocks = (0..size / MIB).map(move |_| Ok::<_, std::io::Error>(block.clone()));
    let http = reqwest::Client::new();
    let t = std::time::Instant::now();
    let resp = http
        .put(&put_url)
        .header("content-length", size.to_string())
        .body(reqwest::Body::wrap_stream(futures::stream::iter(blocks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    report("presigned PUT (reqwest)", t);

    let get_url = srv
        .client
        .get_object()
        .bucket(BUCKET)
        .key("gib2")
        .presigned(presign);
    let get_url = get_url.await.unwrap().uri().to_owned();
    let t = std::time::Instant::now();
    let mut resp = http.get(&get_url).send().await.unwrap();
    let mut n = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        n += chunk.len();
    }
    assert_eq!(n, size);
    report("presigned GET (reqwest)", t);
}
