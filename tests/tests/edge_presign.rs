//! The core's SigV4 presigner against a real S3 server: the origin's embedded
//! store, holding blobs the origin hydrated. A presigned GET fetches the
//! exact bytes, a presigned HEAD answers; any tampering (signature, key,
//! method, expiry, another secret) is refused with 403 (issue 4).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wharf_core::ApiMethod;
use wharf_core::Digest;
use wharf_core::keys::blob_key;
use wharf_core::sigv4::{Addressing, Credentials, PresignRequest, S3Endpoint, presign};
use wharf_tests::edge::{BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY};
use wharf_tests::{ImageSpec, OriginOpts, Stack, UpstreamAuth, free_port, http_client, wait_until};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn creds(secret: &str) -> Credentials {
    Credentials {
        access_key: S3_ACCESS_KEY.into(),
        secret_key: secret.into(),
        session_token: None,
    }
}

fn url(
    endpoint: &S3Endpoint,
    method: ApiMethod,
    key: &str,
    creds: &Credentials,
    at: u64,
    ttl: u64,
) -> String {
    presign(&PresignRequest {
        method,
        endpoint,
        addressing: Addressing::Path,
        bucket: BUCKET,
        key,
        region: "us-east-1",
        credentials: creds,
        now_unix_secs: at,
        expires_in_secs: ttl,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_fetch_from_the_real_store_and_tampering_is_refused() {
    let s3_port = free_port();
    let opts = OriginOpts {
        config_toml: Some(format!(
            "[embedded]\nlisten = \"127.0.0.1:{s3_port}\"\naccess_key = \"{S3_ACCESS_KEY}\"\nsecret_key = \"{S3_SECRET_KEY}\"\nbucket = \"{BUCKET}\"\n"
        )),
        ..OriginOpts::default()
    };
    let stack = Stack::start_with("edge-presign", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let image = ImageSpec::docker(&[40_000])
        .push(&stack.upstream, "presign/app", "v1")
        .await
        .unwrap();
    // Pulling through the origin hydrates the blobs into its store.
    stack.pull("presign/app", "v1").await.unwrap();
    let (layer, size) = image.blobs()[1].clone();
    let digest: Digest = Digest::parse(&layer).unwrap();
    let key = blob_key(&digest);
    let endpoint = S3Endpoint::parse(&format!("http://127.0.0.1:{s3_port}")).unwrap();
    let good = creds(S3_SECRET_KEY);
    let client = http_client();

    let get = url(&endpoint, ApiMethod::Get, &key, &good, now(), 300);
    wait_until(
        "the layer to be committed to the store",
        Duration::from_secs(30),
        || {
            let (client, get) = (client.clone(), get.clone());
            async move { Ok(client.get(&get).send().await?.status() == 200) }
        },
    )
    .await
    .unwrap();
    let body = client
        .get(&get)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len() as u64, size);
    assert_eq!(
        Digest::sha256_of(&body),
        digest,
        "the presigned GET returns the exact blob"
    );

    let head = url(&endpoint, ApiMethod::Head, &key, &good, now(), 300);
    let r = client.head(&head).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        size.to_string()
    );

    let missing = url(
        &endpoint,
        ApiMethod::Head,
        &blob_key(&Digest::sha256_of(b"absent")),
        &good,
        now(),
        300,
    );
    assert_eq!(
        client.head(&missing).send().await.unwrap().status(),
        404,
        "absent blobs are 404 (the edge's presence check)"
    );

    let flip_last = |u: &str| {
        let mut s = u.to_owned();
        let last = s.pop().unwrap();
        s.push(if last == '0' { '1' } else { '0' });
        s
    };
    let other_key = blob_key(&Digest::sha256_of(b"other"));
    let tampered = [
        ("signature changed", flip_last(&get)),
        ("key changed", get.replace(&key, &other_key)),
        (
            "expiry extended",
            get.replace("X-Amz-Expires=300", "X-Amz-Expires=600"),
        ),
        (
            "signed by another secret",
            url(
                &endpoint,
                ApiMethod::Get,
                &key,
                &creds("not-the-secret-key"),
                now(),
                300,
            ),
        ),
        (
            "expired",
            url(&endpoint, ApiMethod::Get, &key, &good, now() - 3600, 60),
        ),
    ];
    for (what, u) in tampered {
        let r = client.get(&u).send().await.unwrap();
        assert_eq!(r.status(), 403, "{what}: {u}");
    }
    // A URL signed for HEAD does not GET (the method is signed).
    assert_eq!(
        client.get(&head).send().await.unwrap().status(),
        403,
        "HEAD URL used for GET"
    );
}
